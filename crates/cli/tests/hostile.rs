//! Malformed and hostile frames on raw sockets: every one gets an ERROR with a
//! `message` header and then the connection is closed, while another client on the
//! same node keeps receiving throughout.

mod common;

use std::time::Duration;

use common::*;
use pushcenter_stomp::Command;

/// Small limits so the oversized cases stay small.
const CONFIG: &str = "connect_timeout = \"1s\"\n\
[limits]\n\
max_frame_bytes = 2048\n\
max_headers = 8\n\
max_header_line = 256\n\
max_body_bytes = 1024\n";

const CONNECT: &[u8] = b"CONNECT\naccept-version:1.2\nhost:x\n\n\0";

struct Case {
    name: &'static str,
    /// Whether the bytes come after a successful CONNECT.
    connected: bool,
    bytes: Vec<u8>,
    /// A word the ERROR's `message` must hold.
    says: &'static str,
    receipt_id: Option<&'static str>,
}

fn case(
    name: &'static str,
    connected: bool,
    bytes: impl Into<Vec<u8>>,
    says: &'static str,
) -> Case {
    Case {
        name,
        connected,
        bytes: bytes.into(),
        says,
        receipt_id: None,
    }
}

fn cases() -> Vec<Case> {
    let long = "v".repeat(300);
    let headers: String = (0..10).map(|i| format!("h{i}:x\n")).collect();
    let wide: String = (0..7)
        .map(|i| format!("h{i}:{}\n", "w".repeat(240)))
        .collect();
    let body = "b".repeat(1500);
    vec![
        case("bad command", true, "FOO\n\n\0", "command"),
        case(
            "undefined escape",
            true,
            "SUBSCRIBE\nid:1\ndestination:/topic/a\\t\n\n\0",
            "escape",
        ),
        case(
            "oversized frame",
            true,
            format!("SEND\ndestination:/topic/a\n{wide}\n{}\0", "b".repeat(600)),
            "frame",
        ),
        case(
            "oversized header line",
            true,
            format!("SEND\ndestination:/topic/a\nx:{long}\n\n\0"),
            "header",
        ),
        case(
            "too many headers",
            true,
            format!("SEND\ndestination:/topic/a\n{headers}\n\0"),
            "headers",
        ),
        case(
            "oversized body",
            true,
            format!("SEND\ndestination:/topic/a\ncontent-length:1500\n\n{body}\0"),
            "body",
        ),
        case(
            "content-length longer than the body",
            true,
            "SEND\ndestination:/topic/a\ncontent-length:10\n\nabc\0garbage!!\0",
            "",
        ),
        case(
            "content-length shorter than the body",
            true,
            "SEND\ndestination:/topic/a\ncontent-length:2\n\nabcdef\0",
            "",
        ),
        case(
            "SEND without destination",
            true,
            "SEND\n\nx\0",
            "destination",
        ),
        case(
            "SUBSCRIBE without destination",
            true,
            "SUBSCRIBE\nid:1\n\n\0",
            "destination",
        ),
        case(
            "SUBSCRIBE without id",
            true,
            "SUBSCRIBE\ndestination:/topic/a\n\n\0",
            "id",
        ),
        case(
            "duplicate subscription id",
            true,
            "SUBSCRIBE\nid:1\ndestination:/topic/a\n\n\0SUBSCRIBE\nid:1\ndestination:/topic/b\n\n\0",
            "1",
        ),
        case(
            "SEND before CONNECT",
            false,
            "SEND\ndestination:/topic/a\n\nx\0",
            "",
        ),
        case(
            "SUBSCRIBE before CONNECT",
            false,
            "SUBSCRIBE\nid:1\ndestination:/topic/a\n\n\0",
            "",
        ),
        case(
            "UNSUBSCRIBE of an unknown id",
            true,
            "UNSUBSCRIBE\nid:nope\n\n\0",
            "nope",
        ),
        case("ACK of an unknown id", true, "ACK\nid:12345\n\n\0", "12345"),
        case(
            "NUL in a header line",
            true,
            "SEND\ndestination:/topic/a\0b\n\nx\0",
            "",
        ),
        Case {
            receipt_id: Some("r-77"),
            ..case(
                "bad frame asking for a receipt",
                true,
                "SUBSCRIBE\nid:1\nreceipt:r-77\n\n\0",
                "destination",
            )
        },
    ]
}

/// A subscriber that must get every publish while others misbehave.
struct Witness {
    c: WsClient,
    n: u32,
}

impl Witness {
    async fn new(node: &Node) -> Witness {
        let mut c = WsClient::connect(&node.ws_url()).await;
        c.subscribe("w", "/topic/witness").await;
        Witness { c, n: 0 }
    }

    async fn still_served(&mut self, node: &Node, after: &str) {
        self.n += 1;
        let body = format!("ping {}", self.n);
        let (status, resp) = publish(node.http, "/topic/witness", &body).await;
        assert_eq!(status, 202, "after {after}: {resp}");
        let m = self
            .c
            .frame()
            .await
            .unwrap_or_else(|| panic!("witness lost after {after}"));
        assert_eq!(m.body[..], *body.as_bytes(), "after {after}");
    }
}

fn check_error(c: &Case, transport: &str, f: Option<pushcenter_stomp::Frame>) {
    let f = f.unwrap_or_else(|| panic!("{transport} {}: no ERROR", c.name));
    assert_eq!(f.command, Command::Error, "{transport} {}: {f:?}", c.name);
    let message = f.get("message").unwrap_or_default();
    assert!(
        !message.is_empty(),
        "{transport} {}: ERROR without message",
        c.name
    );
    assert!(
        message.contains(c.says),
        "{transport} {}: message {message:?} should mention {:?}",
        c.name,
        c.says
    );
    if let Some(r) = c.receipt_id {
        assert_eq!(f.get("receipt-id"), Some(r), "{transport} {}", c.name);
    }
}

fn config() -> (std::path::PathBuf, String) {
    let path = std::env::temp_dir().join(format!("pushcenter-hostile-{}.toml", std::process::id()));
    std::fs::write(&path, CONFIG).expect("config");
    let arg = path.to_str().expect("utf-8").to_string();
    (path, arg)
}

#[tokio::test]
async fn every_hostile_frame_gets_an_error_then_close_over_tcp() {
    let (path, cfg) = config();
    let node = Node::standalone(&["--config", &cfg]);
    let mut witness = Witness::new(&node).await;
    for c in cases() {
        let mut t = TcpClient::open(node.tcp.expect("tcp")).await;
        if c.connected {
            t.raw(CONNECT).await;
            let f = t.frame().await.expect("CONNECTED");
            assert_eq!(f.command, Command::Connected, "{}", c.name);
        }
        t.raw(&c.bytes).await;
        let mut f = t.frame().await;
        // A duplicate id is refused on the second SUBSCRIBE: skip nothing else.
        while f.as_ref().is_some_and(|f| f.command == Command::Receipt) {
            f = t.frame().await;
        }
        check_error(&c, "tcp", f);
        assert!(
            t.is_closed().await,
            "tcp {}: not closed after ERROR",
            c.name
        );
        witness.still_served(&node, c.name).await;
    }
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn every_hostile_frame_gets_an_error_then_close_over_websocket() {
    let (path, cfg) = config();
    let node = Node::standalone(&["--config", &cfg]);
    let mut witness = Witness::new(&node).await;
    for c in cases() {
        let mut ws = WsClient::open(&node.ws_url(), Some("v12.stomp")).await;
        if c.connected {
            ws.send_raw(CONNECT).await;
            let f = ws.frame().await.expect("CONNECTED");
            assert_eq!(f.command, Command::Connected, "{}", c.name);
        }
        ws.send_raw(&c.bytes).await;
        let f = ws.frame().await;
        check_error(&c, "ws", f);
        assert_eq!(
            ws.frame_within(Duration::from_secs(5)).await,
            None,
            "ws {}: not closed",
            c.name
        );
        witness.still_served(&node, c.name).await;
    }
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn a_silent_peer_is_dropped_after_the_connect_timeout() {
    let (path, cfg) = config();
    let node = Node::standalone(&["--config", &cfg]);
    let mut witness = Witness::new(&node).await;
    let mut t = TcpClient::open(node.tcp.expect("tcp")).await;
    let f = t.frame().await.expect("ERROR");
    assert_eq!(f.command, Command::Error);
    assert_eq!(f.get("message"), Some("timed out waiting for CONNECT"));
    assert!(t.is_closed().await);
    witness.still_served(&node, "a silent peer").await;
    let _ = std::fs::remove_file(path);
}
