//! The registry dashboard in real headless Chromium on a two-node cluster (etcd, a
//! Tansu broker, two `pushcenter node`s with an API key, `pushcenter registry`) while
//! `pushcenter bench fanout` and HTTP publishes run: the charts fill from
//! `/v1/dashboard` and an admin call goes from the page through the registry. The
//! browser side is tests/clients/dashboard.mjs.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::broker::Broker;
use common::etcd::Etcd;
use common::*;
use serde_json::{Value, json};

const KEY: &str = "dashboard-test-api-key";

/// Kills the bench when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn get(addr: std::net::SocketAddr, path: &str, key: Option<&str>) -> (u16, Value) {
    get_bearer(addr, path, key).await
}

/// Reads a subscriber's frames so its queue never fills.
fn drain(mut c: WsClient) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while c.frame_within(Duration::from_secs(3600)).await.is_some() {} })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_charts_every_node_and_relays_an_admin_call() {
    let etcd = Etcd::start();
    let broker = Broker::start();
    let cfg = TempConfig::write(
        "dashboard",
        &format!(
            "report_interval = \"500ms\"\ninsecure_login_as_user = true\n\
             max_connections_per_user = 1000\n[etcd]\nttl = \"3s\"\n\
             [auth]\napi_keys = [\"{KEY}\"]\n"
        ),
    );
    let nodes = start_cluster(
        &["n1", "n2"],
        &broker.brokers(),
        &etcd.endpoint(),
        cfg.path(),
    )
    .await;
    let registry = Node::registry(&etcd.endpoint());
    for _ in 0..100 {
        let (_, v) = get(registry.http, "/v1/nodes", None).await;
        if v["nodes"].as_array().is_some_and(|n| n.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The endpoint on its own: both nodes with numbers, and no admin call without a key.
    let (status, v) = get(registry.http, "/v1/dashboard", None).await;
    assert_eq!(status, 200, "{v}");
    let ids: Vec<&str> = v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["node_id"].as_str())
        .collect();
    assert_eq!(ids, ["n1", "n2"], "{v}");
    for n in v["nodes"].as_array().expect("nodes") {
        assert_eq!(n["error"], Value::Null, "{n}");
        assert!(n["stats"]["messages_delivered_total"].is_u64(), "{n}");
        assert!(
            n["latency"]["le"].as_array().is_some_and(|l| l.len() > 10),
            "{n}"
        );
        assert!(n["stats"]["kafka_consumer_lag_total"].is_i64(), "{n}");
    }
    let (status, v) = get(registry.http, "/v1/admin/presence?user=alice", None).await;
    assert_eq!(status, 401, "{v}");

    // Traffic: alice and bob subscribed on either node, HTTP publishes to both nodes,
    // and the bench's subscribers on n1 fed through Kafka.
    let (mut alice, _) = WsClient::login(&nodes[1].ws_url(), Some("alice")).await;
    alice.subscribe("1", "/topic/dash").await;
    let (mut bob, _) = WsClient::login(&nodes[0].ws_url(), Some("bob")).await;
    bob.subscribe("1", "/topic/dash").await;
    let readers = [drain(alice), drain(bob)];
    let bench = Running(
        Command::new(env!("CARGO_BIN_EXE_pushcenter"))
            .args([
                "bench",
                "fanout",
                "--url",
                &nodes[0].ws_url(),
                "--login",
                "bench",
            ])
            .args(["--publish", "kafka", "--kafka-brokers", &broker.brokers()])
            .args(["--subscribers", "100", "--topics", "5", "--rate", "100"])
            .args(["--duration", "120s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pushcenter bench"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = {
        let (stop, addrs) = (stop.clone(), [nodes[0].http, nodes[1].http]);
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let body = json!({"destination": "/topic/dash", "body": format!("tick {i}")});
                let (status, v) = post_bearer(addrs[i % 2], "/v1/publish", Some(KEY), &body).await;
                assert_eq!(status, 202, "{v}");
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            i
        })
    };

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    let shot = dir.join("registry-dashboard-charts.png");
    let _ = std::fs::remove_file(&shot);
    let clients = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let out = tokio::task::spawn_blocking({
        let (clients, shot, url) = (clients.clone(), shot.clone(), registry.http);
        move || {
            Command::new("node")
                .arg(clients.join("dashboard.mjs"))
                .arg(format!("http://{url}"))
                .arg(&shot)
                .env("NODES", "n1,n2")
                .env("BUSY", "n1,n2")
                .env("API_KEY", KEY)
                .env("PRESENCE", "alice=n2")
                .current_dir(&clients)
                .output()
                .expect("run node (make test installs it)")
        }
    })
    .await
    .expect("join");
    stop.store(true, Ordering::Relaxed);
    let published = publishing.await.expect("publisher");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "dashboard.mjs failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for check in [
        "ok - node list shows n1, n2 live",
        "ok - charts have data",
        "ok - p99 latency shown",
        "ok - Kafka lag shown",
        "ok - a wrong API key is refused (401)",
        "ok - presence of alice from the page: on n2",
        "ok - the key is in sessionStorage only",
        "ok - no page errors",
    ] {
        assert!(stdout.contains(check), "missing `{check}` in:\n{stdout}");
    }
    assert!(published > 10, "{published} publishes");
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
        "no screenshot at {}",
        shot.display()
    );
    eprintln!("dashboard screenshot: {}", shot.display());
    drop(bench);
    for r in readers {
        r.abort();
    }
    drop(registry);
    drop(nodes);
    drop(broker);
    drop(etcd);
}
