//! docs/openapi.yaml and docs/openapi-registry.yaml against the real routes: the set of
//! (method, path) in each file equals the routes the source registers, and every
//! documented operation reaches a handler on the running binary (not the 404 fallback,
//! not 405).

mod common;

use std::collections::BTreeSet;

use common::*;

type Routes = BTreeSet<(String, String)>;

fn documented(file: &str) -> Routes {
    let doc = yaml(&root().join("docs").join(file));
    assert_eq!(
        doc["openapi"].as_str().map(|v| &v[..2]),
        Some("3."),
        "{file}"
    );
    let mut out = Routes::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                out.insert((method.clone(), path.clone()));
            }
        }
    }
    out
}

/// `(method, path)` of every `.route(PATH, METHOD(...))` in a source file; a path given
/// as a constant is looked up in crates/node/src/http/web.rs.
fn registered(source: &str) -> Routes {
    let text = std::fs::read_to_string(root().join(source)).expect("source");
    let web = std::fs::read_to_string(root().join("crates/node/src/http/web.rs")).expect("web.rs");
    let mut out = Routes::new();
    for piece in text.split(".route(").skip(1) {
        let (arg, rest) = piece.split_once(',').expect("route arguments");
        let arg = arg.trim();
        let path = if let Some(lit) = arg.strip_prefix('"') {
            lit.trim_end_matches('"').to_string()
        } else {
            let name = arg.rsplit("::").next().expect("const name");
            let decl = format!("pub const {name}: &str = \"");
            let at = web
                .find(&decl)
                .unwrap_or_else(|| panic!("{name} not in web.rs"))
                + decl.len();
            web[at..]
                .split('"')
                .next()
                .expect("const value")
                .to_string()
        };
        let method = rest.trim_start().split('(').next().expect("method").trim();
        // axum's catch-all `{*name}` is OpenAPI's `{name}` (a value that may hold `/`).
        out.insert((method.to_string(), path.replace("{*", "{")));
    }
    assert!(out.len() > 3, "no routes found in {source}");
    out
}

/// Every documented operation answers from a handler.
async fn reachable(addr: std::net::SocketAddr, routes: &Routes) {
    for (method, path) in routes {
        let concrete = path.replace("{correlation_id}", "probe-1");
        let (status, body) = http(addr, &method.to_uppercase(), &concrete, "{}").await;
        assert!(
            !(status == 404 && body.contains("no such endpoint")) && status != 405,
            "{method} {path}: {status} {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_openapi_matches_the_routes() {
    let doc = documented("openapi.yaml");
    assert_eq!(doc, registered("crates/node/src/http.rs"));
    let node = Node::standalone(&[]);
    reachable(node.http, &doc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_openapi_matches_the_routes() {
    let doc = documented("openapi-registry.yaml");
    assert_eq!(doc, registered("crates/registry/src/service.rs"));
    // No etcd needed to serve: the registry answers from an empty (stale) view.
    let registry = Node::registry(&format!("http://{}", free_port()));
    reachable(registry.http, &doc).await;
}
