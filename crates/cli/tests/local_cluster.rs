//! deploy/local-cluster.sh (what `make cluster` runs): etcd, Tansu, three nodes and a
//! registry come up, the registry lists the three nodes, a publish reaches a client on
//! another node, and SIGINT (Ctrl-C) stops every process.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Offsets of the script's ports from BASE_PORT: etcd client and peer, broker,
/// registry, nodes' HTTP and TCP.
const OFFSETS: [u16; 10] = [0, 1, 2, 10, 11, 12, 13, 21, 22, 23];

/// A base with all ten ports free, below the ephemeral range.
fn free_base() -> u16 {
    for _ in 0..200 {
        let base = free_port().port().min(31_900);
        if OFFSETS
            .iter()
            .all(|o| TcpListener::bind(("127.0.0.1", base + o)).is_ok())
        {
            return base;
        }
    }
    panic!("no free port range");
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Stops the script on the way out, whatever happens.
struct Script(Child);

impl Drop for Script {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-INT", &self.0.id().to_string()])
                .status();
        }
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_cluster_script_brings_up_five_processes_and_stops_them_all() {
    let base = free_base();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::temp_dir().join(format!("pushcenter-local-cluster-{base}"));
    let _ = std::fs::remove_dir_all(&dir);
    let mut script = Script(
        Command::new(root.join("deploy/local-cluster.sh"))
            .env("PUSHCENTER_BIN", env!("CARGO_BIN_EXE_pushcenter"))
            .env("BASE_PORT", base.to_string())
            .env("CLUSTER_DIR", &dir)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run deploy/local-cluster.sh"),
    );

    let registry: SocketAddr = ([127, 0, 0, 1], base + 10).into();
    let deadline = Instant::now() + Duration::from_secs(60);
    let nodes = loop {
        if let Ok(Some(status)) = script.0.try_wait() {
            panic!(
                "the script exited early ({status}); logs in {}",
                dir.display()
            );
        }
        if listening(registry.port()) {
            let (status, body) = http(registry, "GET", "/v1/nodes", "").await;
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            if status == 200 && v["totals"]["nodes"] == 3 {
                break v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "three nodes not listed within 60 s; logs in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut ids: Vec<&str> = nodes["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["node_id"].as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["n1", "n2", "n3"]);
    let (status, dashboard) = http(registry, "GET", "/", "").await;
    assert_eq!(status, 200);
    assert!(dashboard.contains("<html"), "{dashboard}");

    // The cluster works end to end: a client on n3, a publish on n1.
    let n1: SocketAddr = ([127, 0, 0, 1], base + 11).into();
    let mut ws = WsClient::connect(&format!("ws://127.0.0.1:{}/ws", base + 13)).await;
    ws.subscribe("s", "/topic/local").await;
    let (status, _) = publish(n1, "/topic/local", "through the local cluster").await;
    assert_eq!(status, 202);
    let m = ws.frame().await.expect("MESSAGE from n1 on n3");
    assert_eq!(&m.body[..], b"through the local cluster");
    drop(ws);

    // Ctrl-C stops everything.
    Command::new("kill")
        .args(["-INT", &script.0.id().to_string()])
        .status()
        .expect("kill");
    let status = script.0.wait().expect("wait");
    assert!(status.success(), "script exit: {status}");
    let still: Vec<u16> = OFFSETS
        .iter()
        .map(|o| base + o)
        .filter(|p| listening(*p))
        .collect();
    assert!(still.is_empty(), "still listening after Ctrl-C: {still:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
