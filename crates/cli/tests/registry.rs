//! The etcd registry on real processes: etcd, a Tansu broker, `pushcenter node`s and
//! `pushcenter registry`.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::broker::Broker;
use common::etcd::Etcd;
use common::*;
use serde_json::Value;

/// Short intervals so the tests see lease expiry and reports quickly.
const NODE_CONFIG: &str = "report_interval = \"500ms\"\n[etcd]\nttl = \"3s\"\n";

struct Cluster {
    etcd: Etcd,
    _broker: Broker,
    nodes: Vec<Node>,
    registry: Node,
    _config: TempFile,
}

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn cluster(n: usize) -> Cluster {
    let etcd = Etcd::start();
    let broker = Broker::start();
    let path = std::env::temp_dir().join(format!(
        "pushcenter-registry-{}-{}.toml",
        std::process::id(),
        etcd.client.port()
    ));
    std::fs::write(&path, NODE_CONFIG).expect("config");
    let cfg = path.to_str().expect("utf-8").to_string();
    let nodes = (1..=n)
        .map(|i| {
            Node::cluster(
                &format!("n{i}"),
                &broker.brokers(),
                &["--etcd-endpoints", &etcd.endpoint(), "--config", &cfg],
            )
        })
        .collect();
    let registry = Node::registry(&etcd.endpoint());
    Cluster {
        etcd,
        _broker: broker,
        nodes,
        registry,
        _config: TempFile(path),
    }
}

async fn get(node: &Node, path: &str) -> (u16, Value) {
    let (status, body) = http(node.http, "GET", path, "").await;
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, v)
}

/// Polls `/v1/nodes` until `pred` holds; panics with the last view after `within`.
async fn until(
    registry: &Node,
    within: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let (_, v) = get(registry, "/v1/nodes").await;
        if pred(&v) {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "{what} not seen within {within:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn connections(v: &Value) -> HashMap<String, u64> {
    v["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| {
                    (
                        n["node_id"].as_str().unwrap_or_default().to_string(),
                        n["connections"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_counts_follow_and_discovery_spreads() {
    let c = cluster(3);
    until(&c.registry, Duration::from_secs(20), "three nodes", |v| {
        v["totals"]["nodes"] == 3
    })
    .await;

    // Unequal loads: 2, 1, 0 connections.
    let mut clients = Vec::new();
    for (i, n) in [0, 0, 1].iter().enumerate() {
        let mut ws = WsClient::connect(&c.nodes[*n].ws_url()).await;
        ws.subscribe(&format!("s{i}"), "/topic/load").await;
        clients.push(ws);
    }
    let want: HashMap<String, u64> = [("n1", 2), ("n2", 1), ("n3", 0)]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    let v = until(&c.registry, Duration::from_secs(5), "counts 2/1/0", |v| {
        connections(v) == want
    })
    .await;
    assert_eq!(v["totals"]["connections"], 3);
    assert_eq!(v["totals"]["subscriptions"], 3);
    assert_eq!(v["stale"], false);
    let (status, pick) = get(&c.registry, "/v1/connect").await;
    assert_eq!(status, 200);
    assert_eq!(pick["node_id"], "n3", "least loaded first: {pick}");
    assert_eq!(pick["ws_url"], format!("ws://{}/ws", c.nodes[2].http));

    // Equal loads: 300 discoveries spread out.
    drop(clients);
    until(
        &c.registry,
        Duration::from_secs(5),
        "counts back to 0",
        |v| v["totals"]["connections"] == 0,
    )
    .await;
    let mut got: HashMap<String, u32> = HashMap::new();
    for _ in 0..300 {
        let (_, pick) = get(&c.registry, "/v1/connect").await;
        *got.entry(pick["node_id"].as_str().expect("node_id").to_string())
            .or_default() += 1;
    }
    eprintln!("300 discoveries: {got:?}");
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got.values().all(|&k| k <= 120),
        "a node got more than 40%: {got:?}"
    );

    // A user's reconnects land on the same node while it is healthy.
    let (_, a) = get(&c.registry, "/v1/connect?user=alice").await;
    for _ in 0..5 {
        let (_, b) = get(&c.registry, "/v1/connect?user=alice").await;
        assert_eq!(a["node_id"], b["node_id"]);
    }

    // A client that just lost a node asks for another one (a killed node stays listed
    // until its lease runs out); with the user's own node avoided too.
    let user_node = a["node_id"].as_str().expect("node_id").to_string();
    for _ in 0..30 {
        let (_, pick) = get(&c.registry, "/v1/connect?avoid=n1,n2").await;
        assert_eq!(pick["node_id"], "n3", "{pick}");
        let (_, pick) = get(
            &c.registry,
            &format!("/v1/connect?user=alice&avoid={user_node}"),
        )
        .await;
        assert_ne!(pick["node_id"], user_node.as_str(), "{pick}");
    }
    // Avoiding every node still gets one: better than none.
    let (status, pick) = get(&c.registry, "/v1/connect?avoid=n1,n2,n3").await;
    assert_eq!(status, 200, "{pick}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_nodes_vanish_and_draining_nodes_are_not_handed_out() {
    let mut c = cluster(3);
    until(&c.registry, Duration::from_secs(20), "three nodes", |v| {
        v["totals"]["nodes"] == 3
    })
    .await;

    // kill -9: the lease runs out (TTL 3 s) and the key goes.
    let killed = Instant::now();
    c.nodes[0].signal("KILL");
    until(
        &c.registry,
        Duration::from_secs(3 + 1 + 2),
        "n1 gone",
        |v| !connections(v).contains_key("n1"),
    )
    .await;
    eprintln!("killed node left the view after {:?}", killed.elapsed());

    // SIGTERM: draining at once (while it still serves), gone once it exited.
    let _ws = WsClient::connect(&c.nodes[1].ws_url()).await;
    let pid = c.nodes[1].pid();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    until(
        &c.registry,
        Duration::from_secs(2),
        "n2 draining or gone",
        |v| {
            v["nodes"].as_array().is_some_and(|a| {
                a.iter()
                    .all(|n| n["node_id"] != "n2" || n["draining"] == true)
            })
        },
    )
    .await;
    for _ in 0..20 {
        let (_, pick) = get(&c.registry, "/v1/connect").await;
        assert_eq!(pick["node_id"], "n3", "{pick}");
    }
    let status = c.nodes[1].signal("0");
    assert!(status.success(), "{status}");
    until(
        &c.registry,
        Duration::from_secs(2),
        "n2 gone after exit",
        |v| !connections(v).contains_key("n2"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_serves_a_stale_view_and_recovers() {
    let mut c = cluster(2);
    until(&c.registry, Duration::from_secs(20), "two nodes", |v| {
        v["totals"]["nodes"] == 2
    })
    .await;
    let mut ws = WsClient::connect(&c.nodes[0].ws_url()).await;
    ws.subscribe("s", "/topic/outage").await;

    c.etcd.stop();
    let v = until(&c.registry, Duration::from_secs(10), "stale view", |v| {
        v["stale"] == true
    })
    .await;
    assert_eq!(v["totals"]["nodes"], 2, "{v}");
    let (status, pick) = get(&c.registry, "/v1/connect").await;
    assert_eq!(status, 200, "{pick}");
    assert_eq!(pick["stale"], true);
    // Nodes keep serving their clients.
    let (status, body) = publish(c.nodes[1].http, "/topic/outage", "still here").await;
    assert_eq!(status, 202, "{body}");
    let m = ws.frame().await.expect("MESSAGE during the etcd outage");
    assert_eq!(&m.body[..], b"still here");

    c.etcd.restart();
    until(
        &c.registry,
        Duration::from_secs(20),
        "fresh view with both nodes",
        |v| v["stale"] == false && v["totals"]["nodes"] == 2,
    )
    .await;
}

/// Runs Debian's headless Chromium on `url` and returns the DOM once the page's
/// scripts have run (virtual time lets its fetches finish).
fn chromium(args: &[&str], url: &str) -> String {
    let profile = std::env::temp_dir().join(format!("pushcenter-chromium-{}", std::process::id()));
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run chromium (make test installs it): {e}"));
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the first `<td class="...{class}...">` after the row of `node`.
fn cell<'a>(dom: &'a str, node: &str, class: &str) -> Option<&'a str> {
    let row = &dom[dom.find(&format!("data-node=\"{node}\""))?..];
    let row = &row[..row.find("</tr>")?];
    let at = row.find(&format!("{class}\">"))? + class.len() + 2;
    row[at..].split('<').next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium_shows_every_node() {
    let c = cluster(3);
    let mut clients = Vec::new();
    for n in [0, 0, 2] {
        clients.push(WsClient::connect(&c.nodes[n].ws_url()).await);
    }
    until(&c.registry, Duration::from_secs(20), "counts 2/0/1", |v| {
        connections(v)
            == [("n1", 2), ("n2", 0), ("n3", 1)]
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect()
    })
    .await;

    let url = format!("http://{}/", c.registry.http);
    let dom = chromium(&["--dump-dom"], &url);
    for (node, count) in [("n1", "2"), ("n2", "0"), ("n3", "1")] {
        assert_eq!(
            cell(&dom, node, "connections"),
            Some(count),
            "{node} in:\n{dom}"
        );
        assert_eq!(cell(&dom, node, "state"), Some("live"), "{node} in:\n{dom}");
    }
    assert!(dom.contains("3 nodes"), "{dom}");

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    let shot = dir.join("registry-dashboard.png");
    chromium(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1000,420",
        ],
        &url,
    );
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 1000, "no screenshot at {}", shot.display());
    eprintln!("dashboard screenshot: {}", shot.display());
}
