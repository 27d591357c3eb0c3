//! The standalone node, driven as a user would: real binary, real sockets.

mod common;

use common::*;
use pushcenter_stomp::{Command, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn websocket_subscriber_receives_http_publish() {
    let node = Node::standalone(&[]);
    let mut c = WsClient::connect(&node.ws_url()).await;
    assert_eq!(c.protocol.as_deref(), Some("v12.stomp"));
    c.subscribe("s1", "/topic/orders.42").await;

    let (status, body) = publish(node.http, "/topic/orders.42", "hello").await;
    assert_eq!(status, 202, "{body}");
    let id: serde_json::Value = serde_json::from_str(&body).expect("json");

    let m = c.frame().await.expect("MESSAGE");
    assert_eq!(m.command, Command::Message);
    assert_eq!(m.get("subscription"), Some("s1"));
    assert_eq!(m.get("destination"), Some("/topic/orders.42"));
    assert_eq!(m.get("message-id"), id["id"].as_str());
    assert_eq!(&m.body[..], b"hello");
}

#[tokio::test]
async fn highest_offered_subprotocol_is_echoed_and_none_is_accepted() {
    let node = Node::standalone(&[]);
    let c = WsClient::open(&node.ws_url(), Some("v10.stomp, v12.stomp, v11.stomp")).await;
    assert_eq!(c.protocol.as_deref(), Some("v12.stomp"));
    let c = WsClient::open(&node.ws_url(), Some("v10.stomp")).await;
    assert_eq!(c.protocol.as_deref(), Some("v10.stomp"));
    let mut c = WsClient::open(&node.ws_url(), None).await;
    assert_eq!(c.protocol, None);
    c.send(&Frame::new(Command::Stomp).header("accept-version", "1.1"))
        .await;
    let f = c.frame().await.expect("CONNECTED");
    assert_eq!(f.get("version"), Some("1.1"));
}

#[tokio::test]
async fn frames_may_span_messages_and_share_one() {
    let node = Node::standalone(&[]);
    let mut c = WsClient::open(&node.ws_url(), None).await;
    c.send_raw(b"CONNECT\naccept-version:1.2\n\n\0SUBSCRIBE\nid:a\ndestination:/topic/x\nrec")
        .await;
    c.send_raw(b"eipt:r1\n\n\0").await;
    assert_eq!(c.frame().await.map(|f| f.command), Some(Command::Connected));
    let r = c.frame().await.expect("RECEIPT");
    assert_eq!(r.get("receipt-id"), Some("r1"));
}

#[tokio::test]
async fn tcp_clients_use_the_same_sessions() {
    let node = Node::standalone(&[]);
    let mut t = TcpClient::open(node.tcp.expect("tcp")).await;
    t.raw(b"CONNECT\naccept-version:1.2\nhost:x\n\n\0SUBSCRIBE\nid:0\ndestination:/topic/t\nreceipt:r\n\n\0")
        .await;
    assert_eq!(t.frame().await.map(|f| f.command), Some(Command::Connected));
    assert_eq!(t.frame().await.map(|f| f.command), Some(Command::Receipt));
    t.raw(b"SEND\ndestination:/topic/t\n\nfrom tcp\0").await;
    let m = t.frame().await.expect("MESSAGE");
    assert_eq!(&m.body[..], b"from tcp");
    t.raw(b"DISCONNECT\nreceipt:bye\n\n\0").await;
    let r = t.frame().await.expect("RECEIPT");
    assert_eq!(r.get("receipt-id"), Some("bye"));
    assert!(t.is_closed().await);
}

#[tokio::test]
async fn bad_http_input_gets_a_json_error() {
    let node = Node::standalone(&[]);
    for body in [
        "{not json",
        r#"{"body":"x"}"#,
        r#"{"destination":"/queue/x"}"#,
    ] {
        let (status, text) = http(node.http, "POST", "/v1/publish", body).await;
        assert_eq!(status, 400, "{body}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json error body");
        assert!(v["error"].is_string());
    }
}

#[tokio::test]
async fn sigterm_closes_clients_with_1012() {
    let mut node = Node::standalone(&[]);
    let mut c = WsClient::connect(&node.ws_url()).await;
    let pid = node.pid();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    let e = c.frame().await.expect("ERROR");
    assert_eq!(e.command, Command::Error);
    assert_eq!(c.closed().await, Some(1012));
    let status = node.signal("0");
    assert!(status.success(), "exit status {status}");
}

/// A peer that starts an HTTP request and never finishes its head (slowloris) is
/// dropped after `connect_timeout`, and so is one that upgrades but never sends CONNECT.
#[tokio::test]
async fn handshake_and_connect_run_under_the_connect_timeout() {
    let path = std::env::temp_dir().join(format!("pushcenter-ct-{}.toml", std::process::id()));
    std::fs::write(&path, "connect_timeout = \"1s\"\n").expect("write config");
    let node = Node::standalone(&["--config", path.to_str().expect("utf-8 path")]);

    let mut slow = tokio::net::TcpStream::connect(node.http)
        .await
        .expect("connect");
    slow.write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(TIMEOUT, slow.read(&mut buf))
        .await
        .expect("closed within the timeout");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "got a response instead of a close"
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));

    let mut silent = WsClient::open(&node.ws_url(), Some("v12.stomp")).await;
    let e = silent.frame().await.expect("ERROR");
    assert_eq!(e.command, Command::Error);
    assert_eq!(e.get("message"), Some("timed out waiting for CONNECT"));
    assert_eq!(silent.frame().await, None, "closed after the ERROR");

    // The node still serves.
    let mut c = WsClient::connect(&node.ws_url()).await;
    c.subscribe("s", "/topic/after").await;
    let _ = std::fs::remove_file(&path);
}

/// Standalone: the request, the client's answer and the caller share one node, so the
/// answer goes straight to the waiter.
#[tokio::test]
async fn a_standalone_request_is_answered_by_its_client() {
    let path = std::env::temp_dir().join(format!("pushcenter-rr-{}.toml", std::process::id()));
    std::fs::write(&path, "insecure_login_as_user = true\n").expect("write config");
    let node = Node::standalone(&["--config", path.to_str().expect("utf-8 path")]);
    let (mut erin, session) = WsClient::login(&node.ws_url(), Some("erin")).await;
    erin.subscribe("r", "/user/queue/requests").await;
    let responder = erin.answer_requests("erin".into());
    for target in [
        serde_json::json!({"user": "erin"}),
        serde_json::json!({"session": session}),
    ] {
        let mut body = target.clone();
        body["destination"] = "/user/queue/requests".into();
        body["body"] = "hi".into();
        let (status, text) = http(node.http, "POST", "/v1/requests", &body.to_string()).await;
        assert_eq!(status, 200, "{target}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["reply"]["body"], "erin:hi", "{v}");
    }
    responder.abort();
    let _ = std::fs::remove_file(path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_command_reaches_a_subscriber_and_fails_on_a_refusal() {
    let node = Node::standalone(&[]);
    let mut ws = WsClient::connect(&node.ws_url()).await;
    ws.subscribe("s", "/topic/cli").await;
    let url = format!("http://{}", node.http);
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_pushcenter"))
                .arg("publish")
                .args(args)
                .output()
                .expect("run pushcenter publish")
        })
    };
    let out = run(vec![
        "--url".into(),
        url.clone(),
        "--destination".into(),
        "/topic/cli".into(),
        "--header".into(),
        "kind=greeting".into(),
        "hello".into(),
    ])
    .await
    .expect("join");
    assert!(out.status.success(), "{out:?}");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json answer");
    let m = ws.frame().await.expect("MESSAGE");
    assert_eq!(m.command, Command::Message);
    assert_eq!(&m.body[..], b"hello");
    assert_eq!(m.get("kind"), Some("greeting"));
    assert_eq!(
        Some(m.get("message-id").unwrap_or_default()),
        answer["id"].as_str()
    );

    // Refused by the node: the reason is printed and the exit status says so.
    let out = run(vec![
        "--url".into(),
        url,
        "--destination".into(),
        "nowhere".into(),
        "x".into(),
    ])
    .await
    .expect("join");
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("error"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP 400"),
        "{out:?}"
    );
}
