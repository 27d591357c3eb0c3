//! Nodes and the registry on a secured etcd: https with client certificates, and
//! etcd users with passwords whose tokens expire. A refused credential is an ERROR
//! line naming the endpoints and a 503 `/readyz` saying why; the node keeps serving.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::broker::Broker;
use common::etcd::{Etcd, PASSWORD, USER, fixture};
use common::*;
use serde_json::Value;

/// A `pushcenter` process whose JSON log lines (stderr) the test reads.
struct Logged {
    child: Child,
    http: SocketAddr,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Logged {
    fn spawn(args: &[&str]) -> Logged {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pushcenter"))
            .args(args)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pushcenter");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                }
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("listening line");
        let http = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http="))
            .unwrap_or_else(|| panic!("no http address in {line:?}"))
            .parse()
            .expect("address");
        Logged { child, http, lines }
    }

    fn node(id: &str, broker: &Broker, config: &TempConfig) -> Logged {
        Logged::spawn(&[
            "node",
            "--node-id",
            id,
            "--kafka-brokers",
            &broker.brokers(),
            "--http-addr",
            "127.0.0.1:0",
            "--config",
            config.path(),
        ])
    }

    fn registry(config: &TempConfig) -> Logged {
        Logged::spawn(&[
            "registry",
            "--http-addr",
            "127.0.0.1:0",
            "--config",
            config.path(),
        ])
    }

    /// Waits for an ERROR line; returns its fields.
    async fn error_line(&self) -> Value {
        let start = Instant::now();
        loop {
            let found = self
                .lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|l| l["level"] == "ERROR")
                .map(|l| l["fields"].clone());
            if let Some(f) = found {
                return f;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no ERROR line within 20s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let (status, body) = http(self.http, "GET", path, "").await;
        let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        (status, v)
    }

    /// Polls `path` until `pred` holds on (status, body); panics with the last answer.
    async fn until(&self, path: &str, what: &str, pred: impl Fn(u16, &Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let (status, v) = self.get(path).await;
            if pred(status, &v) {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{what}: {path} answered {status} {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `[etcd]` section on `etcd` with the extra keys (TLS files, user).
fn etcd_section(etcd: &Etcd, extra: &str) -> String {
    format!(
        "[etcd]\nendpoints = [{:?}]\nttl = \"3s\"\n{extra}",
        etcd.endpoint()
    )
}

fn tls_keys(ca: Option<&str>, cert: Option<(&str, &str)>) -> String {
    let mut out = String::new();
    if let Some(ca) = ca {
        out.push_str(&format!("ca_file = {:?}\n", fixture(ca)));
    }
    if let Some((cert, key)) = cert {
        out.push_str(&format!(
            "cert_file = {:?}\nkey_file = {:?}\n",
            fixture(cert),
            fixture(key)
        ));
    }
    out
}

const CLIENT: (&str, &str) = ("etcd-test-client-cert.pem", "etcd-test-client-key.pem");
const OTHER_CA_CLIENT: (&str, &str) = ("etcd-other-client-cert.pem", "etcd-other-client-key.pem");

/// The node lists in the registry's `/v1/nodes` and is what `/v1/connect` hands out.
async fn registered_and_handed_out(registry: &Logged, node: &Logged, id: &str) {
    registry
        .until("/v1/nodes", "the node listed", |_, v| {
            v["nodes"]
                .as_array()
                .is_some_and(|a| a.iter().any(|n| n["node_id"] == id))
        })
        .await;
    let (status, pick) = registry.get("/v1/connect").await;
    assert_eq!(status, 200, "{pick}");
    assert_eq!(pick["node_id"], id, "{pick}");
    assert_eq!(pick["ws_url"], format!("ws://{}/ws", node.http), "{pick}");
    registry
        .until("/readyz", "the registry ready", |s, _| s == 200)
        .await;
    node.until("/readyz", "the node ready", |s, _| s == 200)
        .await;
}

/// A refused process: an ERROR line naming the endpoints with a reason holding one
/// of `expected`, and `/readyz` 503 with that reason in `field`. Returns the reason.
async fn refused(p: &mut Logged, etcd: &Etcd, field: &str, expected: &[&str]) -> String {
    let line = p.error_line().await;
    assert_eq!(line["endpoints"], etcd.endpoint(), "{line}");
    let reason = line["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        expected.iter().any(|e| reason.contains(e)),
        "reason {reason:?}, expected one of {expected:?}"
    );
    let v = p
        .until("/readyz", "503 with the reason", |s, v| {
            s == 503 && v[field].as_str().is_some_and(|r| r.contains(&reason))
        })
        .await;
    assert_eq!(v["ready"], false, "{v}");
    // /readyz is as public as the port: it says why, not where etcd is.
    assert!(!v.to_string().contains(&etcd.endpoint()), "{v}");
    assert!(p.alive(), "a refused process keeps running");
    reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_etcd_admits_nodes_and_a_registry_with_client_certificates() {
    let etcd = Etcd::start_tls(true);
    let broker = Broker::start();
    let keys = tls_keys(Some("etcd-test-ca.pem"), Some(CLIENT));
    let node_cfg = TempConfig::write(
        "etcd-mtls-node",
        &format!(
            "report_interval = \"500ms\"\n{}",
            etcd_section(&etcd, &keys)
        ),
    );
    let registry_cfg = TempConfig::write("etcd-mtls-registry", &etcd_section(&etcd, &keys));
    let node = Logged::node("m1", &broker, &node_cfg);
    let registry = Logged::registry(&registry_cfg);
    registered_and_handed_out(&registry, &node, "m1").await;
    // Load reports keep flowing over the TLS connection.
    let _ws = WsClient::connect(&format!("ws://{}/ws", node.http)).await;
    registry
        .until("/v1/nodes", "one connection", |_, v| {
            v["totals"]["connections"] == 1
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_etcd_refuses_a_missing_or_foreign_client_certificate_and_an_untrusted_server() {
    let etcd = Etcd::start_tls(true);
    let broker = Broker::start();
    let config = |tag: &str, keys: String| {
        TempConfig::write(
            tag,
            &format!(
                "report_interval = \"500ms\"\n{}",
                etcd_section(&etcd, &keys)
            ),
        )
    };
    let no_cert = config("etcd-no-cert", tls_keys(Some("etcd-test-ca.pem"), None));
    let other_ca = config(
        "etcd-other-ca",
        tls_keys(Some("etcd-test-ca.pem"), Some(OTHER_CA_CLIENT)),
    );
    // The system's roots do not know the test CA.
    let untrusted = config("etcd-untrusted", tls_keys(None, Some(CLIENT)));
    let registry_cfg = TempConfig::write(
        "etcd-no-cert-registry",
        &etcd_section(&etcd, &tls_keys(Some("etcd-test-ca.pem"), None)),
    );
    let mut a = Logged::node("r1", &broker, &no_cert);
    let mut b = Logged::node("r2", &broker, &other_ca);
    let mut c = Logged::node("r3", &broker, &untrusted);
    let mut registry = Logged::registry(&registry_cfg);

    let tls = ["certificate", "Certificate", "handshake", "alert"];
    let why = refused(&mut a, &etcd, "registry", &tls).await;
    eprintln!("no client certificate: {why}");
    let why = refused(&mut b, &etcd, "registry", &tls).await;
    eprintln!("client certificate of another CA: {why}");
    let why = refused(&mut c, &etcd, "registry", &["UnknownIssuer", "certificate"]).await;
    eprintln!("untrusted server certificate: {why}");
    let why = refused(&mut registry, &etcd, "problem", &tls).await;
    eprintln!("registry without a client certificate: {why}");

    // Refused nodes still serve their clients.
    let mut ws = WsClient::connect(&format!("ws://{}/ws", a.http)).await;
    ws.subscribe("s", "/topic/refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_users_are_admitted_and_a_wrong_password_is_refused_saying_why() {
    let etcd = Etcd::start_with_auth(Duration::from_secs(300));
    let broker = Broker::start();
    // The fixture holds PASSWORD and a newline.
    let password_file = fixture("etcd-test-password");
    let good = TempConfig::write(
        "etcd-user-node",
        &format!(
            "report_interval = \"500ms\"\n{}",
            etcd_section(
                &etcd,
                &format!("user = {USER:?}\npassword_file = {:?}\n", password_file)
            )
        ),
    );
    let registry_cfg = TempConfig::write(
        "etcd-user-registry",
        &etcd_section(
            &etcd,
            &format!("user = {USER:?}\npassword = {PASSWORD:?}\n"),
        ),
    );
    let wrong = format!("user = {USER:?}\npassword = \"not-the-password\"\n");
    let bad = TempConfig::write(
        "etcd-wrong-password-node",
        &format!(
            "report_interval = \"500ms\"\n{}",
            etcd_section(&etcd, &wrong)
        ),
    );
    let bad_registry_cfg =
        TempConfig::write("etcd-wrong-password-registry", &etcd_section(&etcd, &wrong));

    let node = Logged::node("u1", &broker, &good);
    let registry = Logged::registry(&registry_cfg);
    registered_and_handed_out(&registry, &node, "u1").await;

    let mut bad_node = Logged::node("u2", &broker, &bad);
    let mut bad_registry = Logged::registry(&bad_registry_cfg);
    let why = refused(&mut bad_node, &etcd, "registry", &["authentication failed"]).await;
    eprintln!("wrong password: {why}");
    refused(
        &mut bad_registry,
        &etcd,
        "problem",
        &["authentication failed"],
    )
    .await;
    // The password itself is in no log line.
    for p in [&bad_node, &bad_registry] {
        let lines = p.lines.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            lines
                .iter()
                .all(|l| !l.to_string().contains("not-the-password")),
            "a log line holds the password"
        );
    }
    // The registry never lists the refused node.
    let (_, v) = registry.get("/v1/nodes").await;
    assert_eq!(v["totals"]["nodes"], 1, "{v}");
}

/// Simple tokens expire after `--auth-token-ttl` unused; the node re-puts its load only
/// every 4 s, so each put finds its token expired. The key keeps its lease and its
/// create revision (never re-registered), and each put lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_keeps_its_key_over_several_token_ttls() {
    let etcd = Etcd::start_with_auth(Duration::from_secs(2));
    let broker = Broker::start();
    let user = format!("user = {USER:?}\npassword = {PASSWORD:?}\n");
    let node_cfg = TempConfig::write(
        "etcd-token-node",
        &format!("report_interval = \"4s\"\n{}", etcd_section(&etcd, &user)),
    );
    let registry_cfg = TempConfig::write("etcd-token-registry", &etcd_section(&etcd, &user));
    let node = Logged::node("t1", &broker, &node_cfg);
    let registry = Logged::registry(&registry_cfg);
    registered_and_handed_out(&registry, &node, "t1").await;

    let key = "/pushcenter/default/nodes/t1";
    let first = etcd.entry(key).expect("the node's key");
    let start = Instant::now();
    let mut puts = 0;
    let mut last_mod = first["mod_revision"].clone();
    let mut ws = None;
    // 14 s: seven token TTLs, three puts each after an expired token.
    while start.elapsed() < Duration::from_secs(14) {
        let now = etcd.entry(key).expect("the key stays");
        assert_eq!(now["lease"], first["lease"], "same lease: {now}");
        assert_eq!(now["create_revision"], first["create_revision"], "{now}");
        if now["mod_revision"] != last_mod {
            puts += 1;
            last_mod = now["mod_revision"].clone();
        }
        let (status, ready) = node.get("/readyz").await;
        assert_eq!(status, 200, "{ready}");
        if ws.is_none() && start.elapsed() > Duration::from_secs(5) {
            ws = Some(WsClient::connect(&format!("ws://{}/ws", node.http)).await);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(puts >= 2, "only {puts} puts landed over 14s");
    // The registry's watch, opened with a token that has long expired, still follows.
    registry
        .until("/v1/nodes", "the connection counted", |_, v| {
            v["totals"]["connections"] == 1 && v["stale"] == false
        })
        .await;
    let lines = node.lines.lock().unwrap_or_else(|e| e.into_inner());
    let trouble: Vec<_> = lines
        .iter()
        .filter(|l| {
            l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("pushcenter_registry"))
        })
        .collect();
    assert!(
        trouble.is_empty(),
        "the registrar logged trouble: {trouble:?}"
    );
}

/// `check-config` shows the `[etcd]` password as `(redacted)`, and names a missing file.
#[test]
fn check_config_redacts_the_password_and_names_missing_files() {
    let cfg = TempConfig::write(
        "etcd-check",
        "[etcd]\nendpoints = [\"https://127.0.0.1:2379\"]\nuser = \"pushcenter\"\npassword = \"hunter2\"\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_pushcenter"))
        .args(["check-config", "--config", cfg.path()])
        .output()
        .expect("check-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("password = \"(redacted)\""), "{stdout}");
    assert!(!stdout.contains("hunter2"), "{stdout}");

    let missing = std::env::temp_dir().join("pushcenter-no-such-ca.pem");
    let cfg = TempConfig::write(
        "etcd-check-missing",
        &format!("[etcd]\nendpoints = [\"https://127.0.0.1:2379\"]\nca_file = {missing:?}\n"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_pushcenter"))
        .args(["check-config", "--config", cfg.path()])
        .output()
        .expect("check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("etcd.ca_file"), "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}
