//! What a node refuses before it starts, and what `check-config` says: a config that
//! the node would refuse at start is refused by `check-config` too, with the reason, and
//! secrets never reach the output.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn check_config(toml: &str) -> Output {
    let cfg = TempConfig::write("startup-check", toml);
    Command::new(env!("CARGO_BIN_EXE_pushcenter"))
        .args(["check-config", "--config", cfg.path()])
        .output()
        .expect("run check-config")
}

fn refused(out: &Output, why: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted; stderr: {stderr}");
    assert!(stderr.contains(why), "refused without {why:?}: {stderr}");
}

#[test]
fn a_node_without_kafka_brokers_refuses_to_start_and_says_why() {
    let t0 = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pushcenter"))
        .args(["node", "--node-id", "n1", "--http-addr", "127.0.0.1:0"])
        .env_remove("PUSHCENTER_KAFKA_BROKERS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pushcenter");
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("a node without brokers is still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    refused(&out, "--kafka-brokers");
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "it listened"
    );
}

#[test]
fn check_config_refuses_what_the_node_would_refuse_at_start() {
    // RFC 7518 3.2: an HS256 key at least as long as the hash.
    refused(
        &check_config("[auth]\nhs256_secret = \"12345\"\n"),
        "at least 32 bytes",
    );
    refused(
        &check_config(
            "[tls]\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n",
        ),
        "tls.cert_file",
    );
    refused(
        &check_config("[auth]\nrs256_public_key_file = \"/nonexistent/key.pub.pem\"\n"),
        "rs256_public_key_file",
    );
}

#[test]
fn check_config_never_prints_a_secret() {
    let secret = "a-secret-of-forty-bytes-0123456789abcdef";
    let key = "an-api-key-nobody-may-read-0123456789";
    let out = check_config(&format!(
        "[auth]\nhs256_secret = \"{secret}\"\napi_keys = [\"{key}\"]\n\n[kafka]\nbrokers = \"127.0.0.1:9\"\n"
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stdout.contains(secret) && !stderr.contains(secret),
        "{stdout}"
    );
    assert!(!stdout.contains(key) && !stderr.contains(key), "{stdout}");
    assert!(stdout.contains("(redacted)"), "{stdout}");
    // Brokers were given: no note about them.
    assert!(!stderr.contains("no Kafka brokers"), "{stderr}");
}

#[test]
fn kafka_properties_reach_librdkafka_and_their_secrets_stay_hidden() {
    // librdkafka itself refuses a value it does not know, and says which property.
    refused(
        &check_config(
            "[kafka]\nbrokers = \"127.0.0.1:9\"\n[kafka.properties]\n\"security.protocol\" = \"bogus\"\n",
        ),
        "security.protocol",
    );
    // The adapter's own keys cannot be overridden.
    refused(
        &check_config(
            "[kafka]\nbrokers = \"127.0.0.1:9\"\n[kafka.properties]\n\"group.id\" = \"shared\"\n",
        ),
        "group_prefix",
    );
    let password = "a-sasl-password-nobody-may-read";
    let out = check_config(&format!(
        "[kafka]\nbrokers = \"127.0.0.1:9\"\n[kafka.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\
         \"sasl.mechanism\" = \"PLAIN\"\n\"sasl.username\" = \"node\"\n\"sasl.password\" = \"{password}\"\n"
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("SASL_PLAINTEXT") && stdout.contains("(redacted)"),
        "{stdout}"
    );
    assert!(!stdout.contains(password), "{stdout}");
}

/// The node's stderr lines until one contains `want` (10 s at most), then the node is
/// stopped; with `--http-addr 127.0.0.1:0 <extra>`.
fn startup_log(extra: &[&str], want: &str) -> (String, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_pushcenter"))
        .args(["standalone", "--http-addr", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pushcenter");
    let mut listening = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut listening)
        .expect("listening line");
    let stderr = child.stderr.take().expect("stderr");
    let want = want.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(&want) {
                break;
            }
        }
        let _ = tx.send(seen);
    });
    let seen = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    (listening, seen)
}

#[test]
fn a_standalone_node_names_its_demo_page_and_websocket_urls() {
    let (listening, log) = startup_log(&[], "WebSocket");
    let addr = listening
        .trim()
        .strip_prefix("listening http=")
        .unwrap_or_else(|| panic!("listening line {listening:?}"));
    assert!(log.contains(&format!("demo page: http://{addr}/")), "{log}");
    assert!(
        log.contains(&format!("WebSocket (STOMP): ws://{addr}/ws")),
        "{log}"
    );
    // Without the page, no URL of it.
    let (_, log) = startup_log(&["--set", "demo_page=false"], "WebSocket");
    assert!(log.contains("WebSocket (STOMP): ws://"), "{log}");
    assert!(!log.contains("demo page"), "{log}");
}
