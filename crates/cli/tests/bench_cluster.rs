//! `pushcenter bench cluster` and `bench consume` on real processes (Tansu, etcd, the
//! registry and nodes, which the bench starts itself): the reports say every targeted
//! record reached its user exactly once, no node fetched much more than its share of
//! the targeted topic, and a routing node delivered every record it consumed. Without
//! `tansu` or `etcd` the bench fails, and so do these tests: they never skip.

use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

/// One bench at a time: each runs a whole cluster on the machine's two cores.
static RUNS: Mutex<()> = Mutex::new(());

fn bench(args: &[&str]) -> Value {
    let _serial = RUNS.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(env!("CARGO_BIN_EXE_pushcenter"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run pushcenter bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pushcenter bench {args:?} failed ({}):\n{stderr}",
        out.status
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout)))
}

fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn two_nodes_deliver_every_targeted_record_once_and_fetch_about_their_share() {
    let r = bench(&[
        "cluster",
        "--nodes",
        "2",
        "--users",
        "200",
        "--seconds",
        "4",
        "--targeted-rate",
        "500",
        "--broadcast-rate",
        "50",
    ]);
    assert_eq!(r["scenario"], "cluster", "{r}");
    let t = &r["totals"];
    let published = n(t, "targeted_published");
    assert_eq!(published, 2000, "every targeted publish accepted: {r}");
    assert_eq!(n(t, "targeted_delivered"), published, "{r}");
    assert_eq!(n(t, "targeted_missing"), 0, "{r}");
    assert_eq!(n(t, "targeted_duplicates"), 0, "{r}");
    assert_eq!(n(t, "misrouted"), 0, "{r}");
    assert_eq!(n(t, "subscribers_lost"), 0, "{r}");
    assert_eq!(
        n(t, "broadcast_delivered"),
        n(t, "broadcast_expected"),
        "{r}"
    );
    assert!(n(t, "broadcast_expected") > 0, "{r}");

    let nodes = r["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "{r}");
    let users: u64 = nodes.iter().map(|node| n(node, "users")).sum();
    assert_eq!(users, 200, "{r}");
    let bound = 1.25 * published as f64 / 2.0;
    for node in nodes {
        assert!(n(node, "users") > 0, "a node without users: {r}");
        let fetched = n(node, "fetched_targeted");
        assert!(
            fetched as f64 <= bound,
            "{} fetched {fetched} targeted records, more than 1.25 times its share \
             ({bound}): {r}",
            node["node_id"]
        );
        assert!(n(node, "partitions_read_targeted") > 0, "{r}");
    }
}

#[test]
fn a_routing_node_delivers_every_record_it_consumes() {
    let r = bench(&["consume", "--records", "20000", "--mode", "route"]);
    assert_eq!(r["scenario"], "consume", "{r}");
    assert_eq!(r["mode"], "route", "{r}");
    assert_eq!(n(&r, "deliveries"), 20000, "{r}");
    assert!(n(&r, "fetched") >= 20000, "{r}");
    assert!(r["node_cpu_seconds"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
}

#[test]
fn a_node_fed_by_the_mock_cluster_fetches_every_record_and_routes_none() {
    let r = bench(&[
        "consume",
        "--records",
        "20000",
        "--mode",
        "drop",
        "--broker",
        "mock",
    ]);
    assert_eq!(
        (&r["broker"], &r["mode"]),
        (&"mock".into(), &"drop".into()),
        "{r}"
    );
    assert_eq!(n(&r, "partitions"), 16, "{r}");
    assert!(n(&r, "fetched") >= 20000, "{r}");
    assert_eq!(
        (n(&r, "deliveries"), n(&r, "messages_delivered")),
        (0, 0),
        "{r}"
    );
    let too_many = std::process::Command::new(env!("CARGO_BIN_EXE_pushcenter"))
        .args([
            "bench",
            "consume",
            "--records",
            "400001",
            "--broker",
            "mock",
        ])
        .output()
        .expect("run the bench");
    assert!(!too_many.status.success());
    let err = String::from_utf8_lossy(&too_many.stderr);
    assert!(err.contains("at most 400000"), "{err}");
}
