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

/// Reads from a raw socket until `want` bytes arrived (or the peer closed).
async fn read_at_least(s: &mut tokio::net::TcpStream, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while got.len() < want {
        let n = tokio::time::timeout(TIMEOUT, s.read(&mut chunk))
            .await
            .expect("read in time")
            .expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

/// A client frame as the RFC wants it: masked.
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0xA5, 0x3C, 0x5A, 0xC3];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\
sec-websocket-protocol: v12.stomp\r\n\r\n";

/// The WebSocket side as a client sees it on the wire: the handshake's answers, a
/// CONNECT sent with the handshake request, ping/pong, a protocol violation's close code.
#[tokio::test]
async fn websocket_handshake_and_framing_on_the_wire() {
    let node = Node::standalone(&[]);

    // Not an upgrade, a wrong version, no key: HTTP answers with a JSON error.
    let (status, body) = http(node.http, "GET", "/ws", "").await;
    assert_eq!(status, 426, "{body}");
    assert!(serde_json::from_str::<serde_json::Value>(&body).expect("json")["error"].is_string());
    for (req, want) in [
        (UPGRADE.replace("version: 13", "version: 8"), "426"),
        (
            UPGRADE.replace("sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            "400",
        ),
    ] {
        let mut s = tokio::net::TcpStream::connect(node.http)
            .await
            .expect("connect");
        s.write_all(req.as_bytes()).await.expect("write");
        let head = String::from_utf8_lossy(&read_at_least(&mut s, 12).await).into_owned();
        assert!(head.starts_with(&format!("HTTP/1.1 {want}")), "{head}");
        if want == "426" {
            assert!(
                head.to_ascii_lowercase()
                    .contains("sec-websocket-version: 13"),
                "{head}"
            );
        }
    }

    // The RFC's example key, and a CONNECT that does not wait for the 101.
    let mut s = tokio::net::TcpStream::connect(node.http)
        .await
        .expect("connect");
    let mut first = UPGRADE.as_bytes().to_vec();
    first.extend(masked(0x1, b"CONNECT\naccept-version:1.2\nhost:x\n\n\0"));
    s.write_all(&first).await.expect("write");
    let mut got = read_at_least(&mut s, 1).await;
    while !String::from_utf8_lossy(&got).contains("\n\n\0") {
        let more = read_at_least(&mut s, 1).await;
        assert!(
            !more.is_empty(),
            "closed: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend(more);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{text}");
    assert!(text.contains("sec-websocket-protocol: v12.stomp"), "{text}");
    let frames = &got[text.find("\r\n\r\n").expect("head end") + 4..];
    // One unmasked text message holding CONNECTED.
    assert_eq!(frames[0], 0x81, "{frames:?}");
    assert!(String::from_utf8_lossy(frames).contains("CONNECTED\nversion:1.2"));

    // A ping is answered with a pong carrying the same bytes.
    s.write_all(&masked(0x9, b"are you there"))
        .await
        .expect("write");
    let pong = read_at_least(&mut s, 15).await;
    assert_eq!(&pong[..], b"\x8a\x0dare you there");

    // An unmasked frame breaks the protocol: close 1002, then the socket closes.
    s.write_all(b"\x81\x02hi").await.expect("write");
    let close = read_at_least(&mut s, usize::MAX).await;
    assert_eq!(close[0], 0x88, "{close:?}");
    assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1002, "{close:?}");
}

/// With `write_delay`, messages that arrive close together are written together: every
/// one still arrives, once, in order.
#[tokio::test]
async fn write_delay_batches_without_losing_or_reordering() {
    let path = std::env::temp_dir().join(format!("pushcenter-wd-{}.toml", std::process::id()));
    std::fs::write(&path, "write_delay = \"50ms\"\n").expect("write config");
    let node = Node::standalone(&["--config", path.to_str().expect("utf-8 path")]);
    let mut c = WsClient::connect(&node.ws_url()).await;
    c.subscribe("s", "/topic/batch").await;
    // In turn, so the publish order is the order the node sees.
    for i in 0..50 {
        let (status, body) = publish(node.http, "/topic/batch", &format!("m{i}")).await;
        assert_eq!(status, 202, "{body}");
    }
    for i in 0..50 {
        let m = c.frame().await.expect("MESSAGE");
        assert_eq!(m.command, Command::Message);
        assert_eq!(m.body[..], *format!("m{i}").as_bytes());
    }
}
