//! `/metrics` of a node and of the registry, read by a strict parser of the
//! OpenMetrics text format (what prometheus-client writes, and Prometheus reads): each
//! sample's family has a TYPE line before it and no family is described twice, names
//! and label sets are well-formed, values are numbers, counter samples are named
//! `<family>_total` and never go down, no series repeats, `# EOF` ends it. Then the
//! counters move as the traffic says.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::broker::Broker;
use common::etcd::Etcd;
use common::*;

/// Series name (with labels) -> value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = HashSet::new();
    let mut series = BTreeMap::new();
    let body = text
        .strip_suffix("# EOF\n")
        .unwrap_or_else(|| panic!("exposition must end with # EOF: {text}"));
    for line in body.lines() {
        assert!(!line.is_empty(), "empty line in OpenMetrics text");
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name, arg) = (parts.next(), parts.next(), parts.next());
            let name = name.unwrap_or_else(|| panic!("bad comment line {line:?}"));
            assert!(valid_name(name), "bad name in {line:?}");
            match kw {
                Some("HELP") => assert!(helped.insert(name.to_string()), "HELP twice: {name}"),
                Some("TYPE") => {
                    let t = arg.unwrap_or_default();
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "unknown",
                            "info"
                        ]
                        .contains(&t),
                        "bad type in {line:?}"
                    );
                    assert!(
                        types.insert(name.to_string(), t.to_string()).is_none(),
                        "TYPE twice: {name}"
                    );
                    if t == "counter" {
                        assert!(
                            !name.ends_with("_total"),
                            "counter family named _total: {name}"
                        );
                    }
                }
                Some("UNIT") => {}
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name = key.split('{').next().unwrap_or_default();
        assert!(valid_name(name), "bad metric name in {line:?}");
        if let Some(labels) = key.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("bad labels in {line:?}"));
            for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
                assert!(valid_name(k), "bad label name in {line:?}");
                assert!(!v.trim_end_matches('"').contains('\n'), "{line:?}");
            }
        }
        let (family, t) = ["_bucket", "_sum", "_count", "_total", "_created"]
            .iter()
            .find_map(|s| {
                let f = name.strip_suffix(s)?;
                types.get(f).map(|t| (f, t))
            })
            .or_else(|| types.get(name).map(|t| (name, t)))
            .unwrap_or_else(|| panic!("sample before its TYPE: {line:?}"));
        if t == "counter" {
            assert_eq!(
                name,
                format!("{family}_total"),
                "counter sample not _total: {line:?}"
            );
            assert!(value >= 0.0, "negative counter: {line:?}");
        }
        assert!(
            series.insert(key.to_string(), value).is_none(),
            "series twice: {key}"
        );
    }
    series
}

async fn scrape(addr: std::net::SocketAddr) -> BTreeMap<String, f64> {
    let (status, body) = http(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    parse(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_metrics_parse_and_follow_the_traffic() {
    let node = Node::standalone(&[]);
    let before = scrape(node.http).await;
    assert_eq!(before["pushcenter_connections"], 0.0);

    let mut ws = WsClient::connect(&node.ws_url()).await;
    ws.subscribe("s1", "/topic/metrics").await;
    for i in 0..3 {
        let (status, _) = publish(node.http, "/topic/metrics", &format!("m{i}")).await;
        assert_eq!(status, 202);
    }
    for _ in 0..3 {
        ws.frame().await.expect("MESSAGE");
    }
    let (status, _) = http(node.http, "POST", "/v1/publish", "not json").await;
    assert_eq!(status, 400);
    // A request nobody answers: one observation of at least its timeout.
    let (status, _) = http(
        node.http,
        "POST",
        "/v1/requests",
        r#"{"user":"nobody","destination":"/user/queue/q","timeout_ms":100}"#,
    )
    .await;
    assert_eq!(status, 504);

    let during = scrape(node.http).await;
    assert_eq!(during["pushcenter_connections"], 1.0);
    assert_eq!(during["pushcenter_subscriptions"], 1.0);
    let moved = |k: &str| during[k] - before[k];
    assert_eq!(moved("pushcenter_connections_accepted_total"), 1.0);
    assert_eq!(moved("pushcenter_messages_published_total"), 3.0);
    assert_eq!(moved("pushcenter_messages_published_http_total"), 3.0);
    assert_eq!(moved("pushcenter_messages_published_send_total"), 0.0);
    // The three publishes and the request's record.
    assert_eq!(moved("pushcenter_messages_received_total"), 4.0);
    assert_eq!(moved("pushcenter_messages_delivered_total"), 3.0);
    assert!(
        moved("pushcenter_frames_in_total") >= 2.0,
        "CONNECT, SUBSCRIBE"
    );
    assert!(
        moved("pushcenter_frames_out_total") >= 4.0,
        "CONNECTED, 3 MESSAGEs"
    );
    // Histograms: cumulative buckets ending in +Inf = count.
    let depth = "pushcenter_outbound_queue_depth";
    assert!(moved(&format!("{depth}_count")) >= 1.0, "the writer woke");
    assert_eq!(
        during[&format!("{depth}_bucket{{le=\"+Inf\"}}")],
        during[&format!("{depth}_count")]
    );
    let rr = "pushcenter_request_duration_seconds";
    assert_eq!(moved(&format!("{rr}_count")), 1.0);
    assert!(moved(&format!("{rr}_sum")) >= 0.1, "at least its timeout");
    assert_eq!(moved(&format!("{rr}_bucket{{le=\"0.05\"}}")), 0.0);
    assert_eq!(moved(&format!("{rr}_bucket{{le=\"0.25\"}}")), 1.0);
    // Each of the three MESSAGEs: publish to socket write, and its fan-out; on one
    // idle machine well under a second.
    for h in [
        "pushcenter_delivery_latency_seconds",
        "pushcenter_fanout_duration_seconds",
    ] {
        assert_eq!(moved(&format!("{h}_count")), 3.0, "{h}");
        assert!(moved(&format!("{h}_sum")) < 3.0, "{h}");
    }
    // Counted in microseconds: a delivery within the same millisecond is not 0.
    assert!(moved("pushcenter_delivery_latency_seconds_sum") > 0.0);
    assert_eq!(
        moved("pushcenter_kafka_fetch_lag_seconds_count"),
        0.0,
        "no Kafka here"
    );

    drop(ws);
    let mut after = scrape(node.http).await;
    for _ in 0..50 {
        if after["pushcenter_connections"] == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = scrape(node.http).await;
    }
    assert_eq!(after["pushcenter_connections"], 0.0);
    assert_eq!(after["pushcenter_subscriptions"], 0.0);
    for (k, v) in &after {
        if k.ends_with("_total") {
            assert!(*v >= during[k], "{k} went down");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_metrics_parse_and_follow_the_traffic() {
    let etcd = Etcd::start();
    let registry = Node::registry(&etcd.endpoint());
    let broker = Broker::start();
    let _node = Node::cluster(
        "m1",
        &broker.brokers(),
        &["--etcd-endpoints", &etcd.endpoint()],
    );
    let mut m = scrape(registry.http).await;
    for _ in 0..100 {
        if m["pushcenter_registry_nodes"] == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = scrape(registry.http).await;
    }
    assert_eq!(m["pushcenter_registry_nodes"], 1.0);
    assert_eq!(m["pushcenter_registry_live_nodes"], 1.0);
    assert_eq!(m["pushcenter_registry_stale"], 0.0);
    let before = m["pushcenter_registry_connect_requests_total"];
    for _ in 0..5 {
        let (status, _) = http(registry.http, "GET", "/v1/connect", "").await;
        assert_eq!(status, 200);
    }
    let after = scrape(registry.http).await;
    assert_eq!(
        after["pushcenter_registry_connect_requests_total"] - before,
        5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_node_reports_its_lag_per_partition() {
    let broker = Broker::start();
    let config = std::env::temp_dir().join(format!("pushcenter-lag-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        "[kafka.consumer]\n\"statistics.interval.ms\" = \"300\"\n",
    )
    .expect("config");
    let node = Node::cluster(
        "n1",
        &broker.brokers(),
        &["--config", config.to_str().expect("utf-8")],
    );
    for i in 0..20 {
        let dest = format!("/topic/lag.{i}");
        let mut status = 0;
        for _ in 0..100 {
            status = publish(node.http, &dest, "x").await.0;
            if status == 202 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(status, 202);
    }
    let _ = std::fs::remove_file(&config);
    // Every partition the node reads, caught up: the 6 of the messages topic, its own
    // replies partition and its home partition of the targeted topic.
    let lag = |m: &BTreeMap<String, f64>| -> Vec<(String, f64)> {
        m.iter()
            .filter(|(k, _)| k.starts_with("pushcenter_kafka_consumer_lag_records{"))
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    };
    let mut m = scrape(node.http).await;
    for _ in 0..100 {
        let l = lag(&m);
        if l.len() == 8 && l.iter().all(|(_, v)| *v == 0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = scrape(node.http).await;
    }
    let l = lag(&m);
    assert_eq!(l.len(), 8, "6 + 1 + 1 partitions: {l:?}");
    let home = pushcenter_node::placement::partition_of("n1", 64);
    let read = |topic: &str, p: u32| {
        let key =
            format!("pushcenter_kafka_consumer_lag_records{{topic=\"{topic}\",partition=\"{p}\"}}");
        l.iter().any(|(k, _)| *k == key)
    };
    assert!(
        read("pushcenter.targeted", home) && read("pushcenter.replies", 1),
        "{l:?}"
    );
    assert!(
        l.iter().any(|(k, _)| k
            == "pushcenter_kafka_consumer_lag_records{topic=\"pushcenter.messages\",partition=\"0\"}"),
        "{l:?}"
    );
    assert!(l.iter().all(|(_, v)| *v == 0.0), "caught up: {l:?}");
    let (_, stats) = http(node.http, "GET", "/v1/stats", "").await;
    let v: serde_json::Value = serde_json::from_str(&stats).expect("json");
    assert_eq!(
        v["kafka_consumer_lag"]["pushcenter.messages"]["0"], 0,
        "{stats}"
    );
}
