//! The node on a Kafka that only speaks TLS, and on one that requires SASL:
//! `[kafka.properties]` carry `security.protocol`, the CA to trust and the credentials,
//! and a record published on the node reaches a subscriber through the broker.

mod common;

use std::time::Duration;

use common::broker::{Broker, Scram};
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
    let (status, stderr) = node_exit("tls2", &broker.brokers(), cfg.path());
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
    let properties = [
        "security.protocol=SSL".to_string(),
        format!("ssl.ca.location={ca}"),
    ];
    let properties: Vec<&str> = properties.iter().map(String::as_str).collect();
    let r = bench_fanout(&node, &broker.brokers(), &properties).await;
    assert_eq!(r["published"], 50, "{r}");
    assert_eq!(r["publish_failed"], 0, "{r}");
    assert_eq!(r["deliveries"], 200, "{r}");
    assert_eq!(r["missed"], 0, "{r}");
}

/// Starts a node that must give up: its exit status and stderr, within 10 s.
fn node_exit(id: &str, brokers: &str, config: &str) -> (std::process::ExitStatus, String) {
    let t0 = std::time::Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pushcenter"))
        .args(["node", "--node-id", id, "--http-addr", "127.0.0.1:0"])
        .args(["--kafka-brokers", brokers, "--config", config])
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
    (status, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn sasl_config(tag: &str, mechanism: &str, user: &str, password: &str) -> TempConfig {
    TempConfig::write(
        tag,
        &format!(
            "[kafka.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\
             \"sasl.mechanism\" = {mechanism:?}\n\"sasl.username\" = {user:?}\n\
             \"sasl.password\" = {password:?}\n"
        ),
    )
}

/// SASL against `tansu broker --authentication`: SCRAM-SHA-256 and SCRAM-SHA-512 with
/// credentials stored in the broker; a record travels end to end in each mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reads_and_writes_kafka_with_sasl() {
    let broker = Broker::start_authenticating(&[
        ("alice", "alice-secret", Scram::Sha256),
        ("bob", "bob-secret", Scram::Sha512),
    ]);
    let modes = [
        ("SCRAM-SHA-256", "alice", "alice-secret"),
        ("SCRAM-SHA-512", "bob", "bob-secret"),
    ];
    for (i, (mechanism, user, password)) in modes.into_iter().enumerate() {
        let cfg = sasl_config(&format!("kafka-sasl-{i}"), mechanism, user, password);
        let node = Node::cluster(
            &format!("sasl{i}"),
            &broker.brokers(),
            &["--config", cfg.path()],
        );
        ready(&node).await;
        let mut c = WsClient::connect(&node.ws_url()).await;
        let topic = format!("/topic/sasl{i}");
        c.subscribe("s1", &topic).await;
        let (status, body) = publish(node.http, &topic, mechanism).await;
        assert_eq!(status, 202, "{mechanism}: {body}");
        let m = c
            .frame_within(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("{mechanism}: the record through the broker"));
        assert_eq!(&m.body[..], mechanism.as_bytes(), "{mechanism}: {m:?}");
    }
}

/// A wrong SCRAM password, a user the broker does not know, and a mechanism it does not
/// offer (the pinned Tansu has no PLAIN) each end the node within 10 s, naming the
/// brokers and the mechanism; librdkafka alone retries forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sasl_credential_ends_the_node_saying_why() {
    let broker = Broker::start_authenticating(&[("alice", "alice-secret", Scram::Sha256)]);
    for (tag, mechanism, user, password) in [
        (
            "wrong-password",
            "SCRAM-SHA-256",
            "alice",
            "guess-wrong-pw-7",
        ),
        ("no-such-user", "SCRAM-SHA-256", "mallory", "mallory-pw-9"),
        ("not-offered", "PLAIN", "alice", "alice-secret"),
    ] {
        let cfg = sasl_config(tag, mechanism, user, password);
        let brokers = broker.brokers();
        let path = cfg.path().to_string();
        let (status, stderr) =
            tokio::task::spawn_blocking(move || node_exit("sasl-bad", &brokers, &path))
                .await
                .expect("join");
        assert!(!status.success(), "{tag}: {stderr}");
        assert!(stderr.contains(&broker.brokers()), "{tag}: {stderr}");
        assert!(
            stderr.contains("security.protocol SASL_PLAINTEXT"),
            "{tag}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("sasl.mechanism {mechanism}")),
            "{tag}: {stderr}"
        );
        assert!(
            !stderr.contains(password),
            "{tag}: the password is never printed: {stderr}"
        );
    }
}

/// The bench's Kafka publisher authenticates with SCRAM like the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_produces_to_a_sasl_kafka() {
    let broker = Broker::start_authenticating(&[("alice", "alice-secret", Scram::Sha256)]);
    let cfg = sasl_config("kafka-sasl-bench", "SCRAM-SHA-256", "alice", "alice-secret");
    let node = Node::cluster("sasl-b", &broker.brokers(), &["--config", cfg.path()]);
    ready(&node).await;
    let r = bench_fanout(
        &node,
        &broker.brokers(),
        &[
            "security.protocol=SASL_PLAINTEXT",
            "sasl.mechanism=SCRAM-SHA-256",
            "sasl.username=alice",
            "sasl.password=alice-secret",
        ],
    )
    .await;
    assert_eq!(r["published"], 50, "{r}");
    assert_eq!(r["publish_failed"], 0, "{r}");
    assert_eq!(r["deliveries"], 200, "{r}");
    assert_eq!(r["missed"], 0, "{r}");
}

/// `pushcenter bench fanout --publish kafka` with these librdkafka properties: its
/// JSON report.
async fn bench_fanout(node: &Node, brokers: &str, properties: &[&str]) -> serde_json::Value {
    let mut args: Vec<String> = [
        "bench",
        "fanout",
        "--url",
        &node.ws_url(),
        "--publish",
        "kafka",
        "--kafka-brokers",
        brokers,
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
    for p in properties {
        args.push("--kafka-property".into());
        args.push(p.to_string());
    }
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
    serde_json::from_slice(&out.stdout).expect("JSON report")
}
