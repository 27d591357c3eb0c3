//! Real third-party STOMP clients against the real binary: @stomp/stompjs under Node
//! (with the `ws` package) and stomp.py's `WSConnection`. The scripts live in
//! `tests/clients/`; `make test` installs their packages (deploy/ensure-tools.sh).

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::*;

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Runs one client script against the node; fails the test with its output unless it
/// exited 0 having printed every expected check.
fn run_client(program: &str, script: &str, node: &Node) -> String {
    run_script(program, script, node, &[])
}

fn run_script(program: &str, script: &str, node: &Node, extra: &[&str]) -> String {
    let out: Output = Command::new(program)
        .arg(clients_dir().join(script))
        .arg(format!("http://{}", node.http))
        .args(extra)
        .current_dir(clients_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} (run deploy/ensure-tools.sh test first): {e}")
        });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

const CHECKS: [&str; 8] = [
    "ok - connect",
    "ok - subscribe with receipt",
    "ok - http publish reaches subscriber",
    "ok - send reaches own subscription",
    "ok - transaction abort drops sends",
    "ok - transaction commit delivers",
    "ok - client-individual ack",
    "ok - disconnect with receipt",
];

fn assert_all_checks(stdout: &str) {
    for check in CHECKS {
        assert!(
            stdout.lines().any(|l| l.starts_with(check)),
            "missing `{check}` in:\n{stdout}"
        );
    }
    assert!(!stdout.contains("not ok"), "{stdout}");
}

#[test]
fn stompjs_over_ws_package() {
    let node = Node::standalone(&[]);
    let stdout = run_client("node", "stompjs.mjs", &node);
    assert_all_checks(&stdout);
}

#[test]
fn stomp_py_ws_connection() {
    let node = Node::standalone(&[]);
    let stdout = run_client("python3", "stomp_py.py", &node);
    assert_all_checks(&stdout);
}

/// The demo page at `/` in real headless Chromium (Debian's, via playwright-core).
#[test]
fn demo_page_in_headless_chromium() {
    let node = Node::standalone(&[]);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    let shot = dir.join("demo-page.png");
    let stdout = run_script(
        "node",
        "demo_page.mjs",
        &node,
        &[shot.to_str().expect("utf-8 path")],
    );
    for check in [
        "ok - page connects over STOMP",
        "ok - page shows a message published over HTTP",
        "ok - publish form delivers to the page",
        "ok - no page errors",
    ] {
        assert!(stdout.contains(check), "missing `{check}` in:\n{stdout}");
    }
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000),
        "no screenshot"
    );
}

/// The test certificate (tests/fixtures/README.md) on both listeners.
fn tls_node() -> (Node, PathBuf) {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let config = std::env::temp_dir().join(format!("pushcenter-tls-{}.toml", std::process::id()));
    let text = format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        fixtures.join("tls-test-cert.pem"),
        fixtures.join("tls-test-key.pem")
    );
    std::fs::write(&config, text).expect("write config");
    let node = Node::standalone(&["--config", config.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_file(&config);
    (node, fixtures.join("tls-test-cert.pem"))
}

/// stompjs over wss://, the HTTP publish over https://, trusting the test CA.
#[test]
fn stompjs_over_wss() {
    let (node, ca) = tls_node();
    let out = Command::new("node")
        .arg(clients_dir().join("stompjs.mjs"))
        .arg(format!("https://{}", node.http))
        .env("NODE_EXTRA_CA_CERTS", &ca)
        .current_dir(clients_dir())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_all_checks(&stdout);
}

/// stomp.py's plain Connection over stomp+ssl (the TCP port with TLS).
#[test]
fn stomp_py_over_stomp_ssl() {
    let (node, ca) = tls_node();
    let tcp = node.tcp.expect("tcp listener");
    let out = Command::new("python3")
        .arg(clients_dir().join("stomp_py_ssl.py"))
        .arg(format!("https://{}", node.http))
        .arg(tcp.to_string())
        .arg(&ca)
        .current_dir(clients_dir())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in [
        "ok - connect over tls",
        "ok - subscribe with receipt",
        "ok - https publish reaches subscriber",
        "ok - disconnect",
    ] {
        assert!(stdout.contains(check), "missing `{check}` in:\n{stdout}");
    }
}
