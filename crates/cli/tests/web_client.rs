//! web-client/ (pushcenter-client) in real headless Chromium: the demo page served by
//! the registry, a two-node cluster (etcd, a Tansu broker, two `pushcenter node`s with
//! token auth, `pushcenter registry`); the page also stops when an operator disconnects
//! it with `reconnect: false`. The browser side is tests/clients/web_client.mjs.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::broker::Broker;
use common::etcd::Etcd;
use common::*;

const SECRET: &str = "web-client-test-secret-0123456789abcdef";
const API_KEY: &str = "web-client-test-api-key";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_reconnects_resubscribes_answers_and_stops_on_a_bad_token() {
    let etcd = Etcd::start();
    let broker = Broker::start();
    let config = std::env::temp_dir().join(format!("pushcenter-web-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "report_interval = \"500ms\"\n[etcd]\nttl = \"3s\"\n\
             [auth]\nhs256_secret = \"{SECRET}\"\napi_keys = [\"{API_KEY}\"]\n"
        ),
    )
    .expect("config");
    let cfg = config.to_str().expect("utf-8");
    let nodes: Vec<Node> = ["n1", "n2"]
        .iter()
        .map(|id| {
            Node::cluster(
                id,
                &broker.brokers(),
                &["--etcd-endpoints", &etcd.endpoint(), "--config", cfg],
            )
        })
        .collect();
    let registry = Node::registry(&etcd.endpoint());
    // Both nodes listed before the page asks.
    for _ in 0..100 {
        let (_, body) = http(registry.http, "GET", "/v1/nodes", "").await;
        if body.contains("\"n1\"") && body.contains("\"n2\"") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    let shot = dir.join("web-client-demo.png");
    let _ = std::fs::remove_file(&shot);
    let clients = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let node_env = ["n1", "n2"]
        .iter()
        .zip(&nodes)
        .map(|(id, n)| format!("{id}=http://{}={}", n.http, n.pid()))
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new("node")
        .arg(clients.join("web_client.mjs"))
        .arg(format!("http://{}", registry.http))
        .arg(&shot)
        .env("NODES", node_env)
        .env("JWT_SECRET", SECRET)
        .env("API_KEY", API_KEY)
        .current_dir(&clients)
        .output()
        .expect("run node (make test installs it)");
    let _ = std::fs::remove_file(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "web_client.mjs failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for check in [
        "ok - page connects through the registry",
        "ok - page shows a message published over HTTP",
        "ok - request/reply answered by the page",
        "ok - page reconnects to",
        "ok - restored subscription gets the next message",
        "ok - a message published while away arrives once (resume)",
        "ok - bad token stops the page with the reason",
        "ok - no further connection attempts",
        "ok - no page errors",
    ] {
        assert!(stdout.contains(check), "missing `{check}` in:\n{stdout}");
    }
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000),
        "no screenshot"
    );
    drop(registry);
    drop(nodes);
    drop(broker);
    drop(etcd);
}
