//! The node on a Kafka that only speaks TLS: `[kafka.properties]` carry
//! `security.protocol = SSL` and the CA to trust, and a record published on the node
//! reaches a subscriber through the broker.

mod common;

use std::time::Duration;

use common::broker::Broker;
use common::*;

fn fixture(name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reads_and_writes_kafka_over_tls() {
    let (broker, _tls) = Broker::behind_tls().await;
    let cfg = TempConfig::write(
        "kafka-tls",
        &format!(
            "[kafka.properties]\n\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = {:?}\n",
            fixture("tls-test-cert.pem")
        ),
    );
    let node = Node::cluster("tls1", &broker.brokers(), &["--config", cfg.path()]);
    ready(&node).await;
    let mut c = WsClient::connect(&node.ws_url()).await;
    c.subscribe("s1", "/topic/tls").await;
    let (status, body) = publish(node.http, "/topic/tls", "over tls").await;
    assert_eq!(status, 202, "{body}");
    let m = c
        .frame_within(Duration::from_secs(20))
        .await
        .expect("the record through the TLS broker");
    assert_eq!(&m.body[..], b"over tls", "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_trust_the_brokers_certificate_never_becomes_ready() {
    let (broker, _tls) = Broker::behind_tls().await;
    // The system's CAs do not know the test certificate.
    let cfg = TempConfig::write(
        "kafka-tls-untrusted",
        "[kafka.properties]\n\"security.protocol\" = \"SSL\"\n",
    );
    let node = Node::cluster("tls2", &broker.brokers(), &["--config", cfg.path()]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, body) = http(node.http, "GET", "/readyz", "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"bus\":false"), "{body}");
}
