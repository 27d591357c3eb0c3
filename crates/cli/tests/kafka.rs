//! Cluster nodes on a real Kafka-protocol broker (Tansu), driven as users would: a
//! backend producing straight to Kafka, HTTP publishes, STOMP subscribers.

mod common;

use std::time::{Duration, Instant};

use common::broker::Broker;
use common::*;
use pushcenter_stomp::Command;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

const TOPIC: &str = "pushcenter.messages";

/// A backend's producer: plain rdkafka, nothing of pushcenter.
fn producer(broker: &Broker) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer")
}

async fn produce(p: &FutureProducer, key: &str, headers: &[(&str, &[u8])], body: &str) {
    let mut hs = OwnedHeaders::new();
    for (k, v) in headers {
        hs = hs.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let record = FutureRecord::to(TOPIC).key(key).payload(body).headers(hs);
    p.send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
}

/// Waits for `/readyz` to say 200; returns how long that took.
async fn ready(node: &Node, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (status, body) = http(node.http, "GET", "/readyz", "").await;
        if status == 200 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "not ready after {within:?}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stat(node: &Node, name: &str) -> u64 {
    let (_, body) = http(node.http, "GET", "/v1/stats", "").await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("stats json");
    v[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

fn config_file(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("pushcenter-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write config");
    path.to_str().expect("utf-8 path").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_delivers_each_record_once_with_the_same_id() {
    let broker = Broker::start();
    let nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| Node::cluster(id, &broker.brokers(), &[]))
        .collect();
    let mut clients = Vec::new();
    for n in &nodes {
        ready(n, Duration::from_secs(30)).await;
        let mut c = WsClient::connect(&n.ws_url()).await;
        c.subscribe("s", "/topic/kafka.orders").await;
        clients.push(c);
    }

    let p = producer(&broker);
    let headers: [(&str, &[u8]); 3] = [
        ("destination", b"/topic/kafka.orders"),
        ("content-type", b"application/json"),
        ("trace", b"abc"),
    ];
    produce(&p, "order-1", &headers, r#"{"n":1}"#).await;
    produce(&p, "order-1", &headers, "marker").await;
    let mut ids = Vec::new();
    for c in &mut clients {
        let m = c.frame().await.expect("MESSAGE from kafka");
        assert_eq!(m.command, Command::Message);
        assert_eq!(&m.body[..], br#"{"n":1}"#);
        assert_eq!(m.get("content-type"), Some("application/json"));
        assert_eq!(m.get("trace"), Some("abc"));
        ids.push(m.get("message-id").expect("message-id").to_string());
        // Same key, same partition: the next frame is the marker, not a duplicate.
        let next = c.frame().await.expect("marker");
        assert_eq!(&next.body[..], b"marker");
    }
    assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
    let (p_part, offset) = ids[0].split_once('-').expect("<partition>-<offset>");
    assert!(
        p_part.parse::<i32>().is_ok() && offset.parse::<i64>().is_ok(),
        "{ids:?}"
    );

    let (status, body) = publish(nodes[0].http, "/topic/kafka.orders", "over http").await;
    assert_eq!(status, 202, "{body}");
    let id: serde_json::Value = serde_json::from_str(&body).expect("json");
    for c in &mut clients {
        let m = c.frame().await.expect("MESSAGE from http");
        assert_eq!(&m.body[..], b"over http");
        assert_eq!(m.get("message-id"), id["id"].as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_is_ready_within_5s_and_then_receives() {
    let broker = Broker::start();
    // A first node creates the topics, as in a running cluster.
    let first = Node::cluster("first", &broker.brokers(), &[]);
    ready(&first, Duration::from_secs(30)).await;

    let node = Node::cluster("late", &broker.brokers(), &[]);
    let took = ready(&node, Duration::from_secs(5)).await;
    eprintln!("node ready {took:?} after start");
    let mut c = WsClient::connect(&node.ws_url()).await;
    c.subscribe("s", "/topic/late").await;
    let p = producer(&broker);
    produce(&p, "k", &[("destination", b"/topic/late")], "hello").await;
    let m = c.frame().await.expect("MESSAGE");
    assert_eq!(&m.body[..], b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_counted_and_skipped() {
    let broker = Broker::start();
    let node = Node::cluster("n1", &broker.brokers(), &[]);
    ready(&node, Duration::from_secs(30)).await;
    let mut c = WsClient::connect(&node.ws_url()).await;
    c.subscribe("s", "/topic/good").await;

    let p = producer(&broker);
    let bad: [&[(&str, &[u8])]; 5] = [
        &[],
        &[("content-type", b"text/plain")],
        &[
            ("destination", b"/topic/good"),
            ("x", b"\xff\xfe\x00garbage"),
        ],
        &[("destination", b"/topic/good"), ("bad:name", b"v")],
        &[("destination", b"/queue/not-a-topic")],
    ];
    for headers in bad {
        produce(&p, "k", headers, "bad").await;
    }
    produce(&p, "k", &[("destination", b"/topic/good")], "good").await;
    let m = c.frame().await.expect("the good record");
    assert_eq!(&m.body[..], b"good");
    assert_eq!(stat(&node, "bus_records_skipped_total").await, 5);
    // Every record the consumer fetched counts, skipped or delivered.
    assert_eq!(stat(&node, "bus_records_fetched_messages_total").await, 6);
    assert_eq!(stat(&node, "bus_records_fetched_replies_total").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_gives_503_keeps_clients_and_recovers() {
    let (broker, mut link) = Broker::behind_link().await;
    let cfg = config_file("outage", "publish_timeout = \"2s\"\n");
    let node = Node::cluster("n1", &broker.brokers(), &["--config", &cfg]);
    ready(&node, Duration::from_secs(30)).await;
    let mut c = WsClient::connect(&node.ws_url()).await;
    c.subscribe("s", "/topic/outage").await;

    link.cut().await;
    let start = Instant::now();
    let (status, body) = publish(node.http, "/topic/outage", "lost").await;
    let took = start.elapsed();
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json error");
    assert!(v["error"].is_string(), "{body}");
    assert!(took < Duration::from_secs(3), "503 after {took:?}");
    // Not ready while the broker is gone; the client is still served.
    let deadline = Instant::now() + Duration::from_secs(10);
    while http(node.http, "GET", "/readyz", "").await.0 != 503 {
        assert!(
            Instant::now() < deadline,
            "/readyz still 200 without a broker"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.subscribe("s2", "/topic/other").await;

    link.restore().await;
    let took = ready(&node, Duration::from_secs(30)).await;
    eprintln!("ready again {took:?} after the broker came back");
    let (status, body) = publish(node.http, "/topic/outage", "back").await;
    assert_eq!(status, 202, "{body}");
    let m = c.frame().await.expect("MESSAGE after recovery");
    assert_eq!(&m.body[..], b"back");
    let _ = std::fs::remove_file(cfg);
}
