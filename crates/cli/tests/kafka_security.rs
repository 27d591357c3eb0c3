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

/// librdkafka alone retries a refused TLS handshake forever: the node exits at start
/// instead, naming the brokers and the protocol.
#[test]
fn a_node_that_does_not_trust_the_brokers_certificate_exits_saying_why() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (broker, _tls) = rt.block_on(Broker::behind_tls());
    // The system's CAs do not know the test certificate.
    let cfg = TempConfig::write(
        "kafka-tls-untrusted",
        "[kafka.properties]\n\"security.protocol\" = \"SSL\"\n",
    );
    let t0 = std::time::Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pushcenter"))
        .args(["node", "--node-id", "tls2", "--http-addr", "127.0.0.1:0"])
        .args(["--kafka-brokers", &broker.brokers(), "--config", cfg.path()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pushcenter");
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the node still runs 10 s after the broker refused it");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains(&broker.brokers()), "{stderr}");
    assert!(stderr.contains("security.protocol SSL"), "{stderr}");
}

/// The bench's Kafka publisher takes the same properties (`--kafka-property`): it
/// produces to the TLS broker as a backend would, and every record is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_produces_to_a_tls_kafka_with_the_same_properties() {
    let (broker, _tls) = Broker::behind_tls().await;
    let ca = fixture("tls-test-cert.pem");
    let cfg = TempConfig::write(
        "kafka-tls-bench",
        &format!(
            "[kafka.properties]\n\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = {ca:?}\n"
        ),
    );
    let node = Node::cluster("tls3", &broker.brokers(), &["--config", cfg.path()]);
    ready(&node).await;
    let args: Vec<String> = [
        "bench",
        "fanout",
        "--url",
        &node.ws_url(),
        "--publish",
        "kafka",
        "--kafka-brokers",
        &broker.brokers(),
        "--kafka-property",
        "security.protocol=SSL",
        "--kafka-property",
        &format!("ssl.ca.location={ca}"),
        "--subscribers",
        "4",
        "--topics",
        "1",
        "--rate",
        "50",
        "--duration",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pushcenter"))
            .args(&args)
            .output()
            .expect("run the bench")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(r["published"], 50, "{r}");
    assert_eq!(r["publish_failed"], 0, "{r}");
    assert_eq!(r["deliveries"], 200, "{r}");
    assert_eq!(r["missed"], 0, "{r}");
}
