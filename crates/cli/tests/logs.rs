//! What an operator reads in the log: every event of a connection names its user and
//! session once it has them.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use pushcenter_stomp::{Command as Cmd, Frame};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connections_log_lines_name_its_user_and_session() {
    let cfg = TempConfig::write("logs-user", "insecure_login_as_user = true\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pushcenter"))
        .args([
            "standalone",
            "--http-addr",
            "127.0.0.1:0",
            "--config",
            cfg.path(),
        ])
        .env("RUST_LOG", "pushcenter_node=debug")
        .env("PUSHCENTER_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pushcenter");
    // The address comes on stdout, the log on stderr.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let out_tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if out_tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let http = loop {
        let line = rx.recv_timeout(TIMEOUT).expect("listening line");
        if let Some(a) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http="))
        {
            break a.to_string();
        }
    };
    let url = format!("ws://{http}/ws");
    let (mut c, session) = WsClient::login(&url, Some("alice")).await;
    c.send(&Frame::new(Cmd::Disconnect).header("receipt", "bye"))
        .await;
    assert!(c.frame().await.is_some_and(|f| f.command == Cmd::Receipt));
    let mut seen = Vec::new();
    let closed = loop {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) else {
            let _ = child.kill();
            panic!("no `connection closed` line in:\n{}", seen.join("\n"));
        };
        if line.contains("connection closed") {
            break line;
        }
        seen.push(line);
    };
    let _ = child.kill();
    let _ = child.wait();
    let line: serde_json::Value = serde_json::from_str(&closed).expect("a JSON log line");
    let span = &line["span"];
    assert_eq!(span["user"], "alice", "{closed}");
    assert_eq!(span["session"], session.as_str(), "{closed}");
}
