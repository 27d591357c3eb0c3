//! No client or record can make a node stall, hoard memory or lose data: each test plays
//! a hostile (or careless) client, backend or record against the real binary
//! (docs/security.md, "Threat model: stalls, memory, lost data").

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::broker::Broker;
use common::*;
use pushcenter_stomp::{Command, Frame, Item, Limits, Version, decode_version};
use rdkafka::ClientConfig;
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A test's config file; its node.
struct Config(TempConfig);

impl Config {
    fn write(name: &str, text: &str) -> Config {
        Config(TempConfig::write(&format!("budgets-{name}"), text))
    }

    fn path(&self) -> &str {
        self.0.path()
    }

    fn node(&self) -> Node {
        Node::standalone(&["--config", self.path()])
    }
}

/// What a raw WebSocket peer reads.
#[derive(Debug, PartialEq)]
enum Ws {
    Text(Vec<u8>),
    Close(Option<u16>),
    /// The socket ended without a close frame.
    Eof,
    Silent,
}

/// A WebSocket client written by hand, so frames can be put on the wire exactly.
struct RawWs {
    s: TcpStream,
    buf: Vec<u8>,
    stomp: bytes::BytesMut,
    /// How STOMP frames from the server are decoded.
    version: Version,
}

impl RawWs {
    async fn open(addr: SocketAddr) -> RawWs {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "GET /ws HTTP/1.1\r\nhost: {addr}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
             sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             sec-websocket-protocol: v12.stomp\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("handshake");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        RawWs {
            s,
            buf: buf[end..].to_vec(),
            stomp: bytes::BytesMut::new(),
            version: Version::V1_2,
        }
    }

    /// A masked client frame.
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    fn text(stomp: &[u8]) -> Vec<u8> {
        RawWs::frame(0x1, stomp)
    }

    fn close(code: u16) -> Vec<u8> {
        RawWs::frame(0x8, &code.to_be_bytes())
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
    }

    /// The next data or close frame (pongs skipped), or silence within `t`.
    async fn next(&mut self, t: Duration) -> Ws {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            if self.buf.len() >= 2 {
                let (op, len0) = (self.buf[0] & 0x0f, usize::from(self.buf[1] & 0x7f));
                let (head, len) = match len0 {
                    126 if self.buf.len() >= 4 => (
                        4,
                        usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                    ),
                    127 if self.buf.len() >= 10 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.buf[2..10]);
                        (10, u64::from_be_bytes(b) as usize)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (2, n),
                };
                if head != usize::MAX && self.buf.len() >= head + len {
                    let payload = self.buf[head..head + len].to_vec();
                    self.buf.drain(..head + len);
                    match op {
                        0x1 | 0x2 => return Ws::Text(payload),
                        0x8 => {
                            let code = (payload.len() >= 2)
                                .then(|| u16::from_be_bytes([payload[0], payload[1]]));
                            return Ws::Close(code);
                        }
                        _ => continue,
                    }
                }
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Err(_) => return Ws::Silent,
                Ok(Ok(0)) | Ok(Err(_)) => return Ws::Eof,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next STOMP frame (heart-beats skipped); panics on anything else.
    async fn stomp(&mut self) -> Frame {
        loop {
            let limits = Limits::default();
            if let Some(Item::Frame(f)) =
                decode_version(&mut self.stomp, self.version, &limits).expect("a valid frame")
            {
                return f;
            }
            match self.next(TIMEOUT).await {
                Ws::Text(t) => self.stomp.extend_from_slice(&t),
                other => panic!("expected a STOMP frame, got {other:?}"),
            }
        }
    }

    async fn connect(addr: SocketAddr, heart_beat: &str) -> RawWs {
        let mut ws = RawWs::open(addr).await;
        let connect = format!("CONNECT\naccept-version:1.2\nheart-beat:{heart_beat}\n\n\0");
        ws.write(&RawWs::text(connect.as_bytes())).await;
        let f = ws.stomp().await;
        assert_eq!(f.command, Command::Connected, "{f:?}");
        ws
    }
}

/// A SEND (and a DISCONNECT with a receipt) followed by the close frame in the same TCP
/// write is carried out and answered before the close is echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_that_comes_with_the_close_frame_is_answered_first() {
    let cfg = Config::write("close-data", "");
    let node = cfg.node();
    let mut watcher = WsClient::connect(&node.ws_url()).await;
    watcher.subscribe("w", "/topic/last-words").await;

    let mut ws = RawWs::connect(node.http, "0,0").await;
    let mut bytes = RawWs::text(b"SEND\ndestination:/topic/last-words\nreceipt:r1\n\ngoodbye\0");
    bytes.extend(RawWs::close(1000));
    ws.write(&bytes).await;
    let r = ws.stomp().await;
    assert_eq!(
        (r.command, r.get("receipt-id")),
        (Command::Receipt, Some("r1"))
    );
    assert_eq!(ws.next(TIMEOUT).await, Ws::Close(Some(1000)));
    let m = watcher.frame().await.expect("the SEND was published");
    assert_eq!(&m.body[..], b"goodbye");

    let mut ws = RawWs::connect(node.http, "0,0").await;
    let mut bytes = RawWs::text(b"DISCONNECT\nreceipt:bye\n\n\0");
    bytes.extend(RawWs::close(1001));
    ws.write(&bytes).await;
    let r = ws.stomp().await;
    assert_eq!(
        (r.command, r.get("receipt-id")),
        (Command::Receipt, Some("bye"))
    );
    assert_eq!(ws.next(TIMEOUT).await, Ws::Close(Some(1001)));
}

/// A close code no peer may send is answered 1002 (protocol error), not echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_close_codes_are_answered_with_a_protocol_error() {
    let cfg = Config::write("close-codes", "");
    let node = cfg.node();
    for (code, answer) in [
        (1005, 1002),
        (1006, 1002),
        (999, 1002),
        (2999, 1002),
        (5000, 1002),
        (3000, 3000),
        (1000, 1000),
    ] {
        let mut ws = RawWs::connect(node.http, "0,0").await;
        ws.write(&RawWs::close(code)).await;
        assert_eq!(ws.next(TIMEOUT).await, Ws::Close(Some(answer)), "{code}");
    }
}

/// Pings, and WebSocket messages of nothing but heart-beat EOLs, cost a frame of
/// `max_frames_per_second` each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_and_bare_heart_beats_count_against_the_frame_rate() {
    let cfg = Config::write("rate", "max_frames_per_second = 20\n");
    let node = cfg.node();
    for flood in [RawWs::frame(0x9, b"p"), RawWs::text(b"\n")] {
        let mut ws = RawWs::connect(node.http, "0,0").await;
        let bytes: Vec<u8> = (0..200).flat_map(|_| flood.clone()).collect();
        ws.write(&bytes).await;
        let e = ws.stomp().await;
        assert_eq!(e.command, Command::Error, "{e:?}");
        assert!(
            e.get("message")
                .unwrap_or_default()
                .contains("too many frames"),
            "{e:?}"
        );
        assert!(matches!(ws.next(TIMEOUT).await, Ws::Close(_)));
    }
    // A few are fine.
    let mut ws = RawWs::connect(node.http, "0,0").await;
    let bytes: Vec<u8> = (0..5).flat_map(|_| RawWs::frame(0x9, b"p")).collect();
    ws.write(&bytes).await;
    assert_eq!(ws.next(Duration::from_millis(300)).await, Ws::Silent);
}

/// A client that asked for no heart-beats and went silent is closed after
/// `idle_timeout`; every accepted socket has TCP keepalive on (a vanished peer's
/// socket goes even when nothing is written to it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_without_heart_beats_is_closed_and_sockets_keep_alive() {
    let cfg = Config::write("idle", "idle_timeout = \"1s\"\ntcp_keepalive = \"30s\"\n");
    let node = cfg.node();
    let mut ws = RawWs::connect(node.http, "0,0").await;
    let local = ws.s.local_addr().expect("local addr");
    // Once nothing is in flight the socket's timer is the keepalive one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ss = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established"])
        .output()
        .expect("ss (iproute2; make test installs it)");
    let sockets = String::from_utf8_lossy(&ss.stdout);
    let server_side = sockets
        .lines()
        .find(|l| {
            // Recv-Q Send-Q Local Peer ...: the server's end is local = the node.
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(2) == Some(&node.http.to_string().as_str())
                && f.get(3) == Some(&local.to_string().as_str())
        })
        .unwrap_or_else(|| panic!("the server's socket is not in\n{sockets}"));
    assert!(server_side.contains("timer:(keepalive"), "{server_side}");

    let start = Instant::now();
    let e = ws.stomp().await;
    assert_eq!(e.command, Command::Error, "{e:?}");
    assert!(
        e.get("message")
            .unwrap_or_default()
            .contains("idle timeout"),
        "{e:?}"
    );
    assert!(matches!(ws.next(TIMEOUT).await, Ws::Close(_)));
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(stat(node.http, "idle_timeouts_total").await, 1);
}

/// An HTTP request by hand: writes `head` (and `body`), reads the answer within `t`.
async fn raw_http(addr: SocketAddr, head: &str, body: &[u8], t: Duration) -> Option<(u16, Value)> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = tokio::time::timeout(t, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
            let text = String::from_utf8_lossy(&got);
            if let Some((h, b)) = text.split_once("\r\n\r\n") {
                let len = h
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse::<usize>().ok());
                if len.is_some_and(|n| b.len() >= n) {
                    break;
                }
            }
        }
    })
    .await;
    if read.is_err() && got.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    Some((status, json))
}

const API_KEY: &str = "budgets-backend-key-0123456789";

/// Credentials are checked before the body is read; the body has the API's own limit
/// (413 JSON, from `content-length` before reading), a deadline (408 JSON) and must be
/// JSON (415 JSON); plain HTTP connections count against `max_http_connections`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bodies_are_read_after_credentials_within_limits() {
    let cfg = Config::write(
        "http",
        &format!(
            "connect_timeout = \"1s\"\nmax_http_connections = 6\n[auth]\napi_keys = [\"{API_KEY}\"]\n"
        ),
    );
    let node = cfg.node();
    let addr = node.http;
    let head = |auth: bool, ct: &str, len: usize| {
        let auth = if auth {
            format!("authorization: Bearer {API_KEY}\r\n")
        } else {
            String::new()
        };
        format!(
            "POST /v1/publish HTTP/1.1\r\nhost: x\r\n{auth}content-type: {ct}\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
        )
    };
    let quick = Duration::from_millis(800);
    // No credentials, a body announced and never sent: refused from the head alone.
    let r = raw_http(
        addr,
        &head(false, "application/json", 10_000_000),
        b"",
        quick,
    )
    .await;
    let (status, v) = r.expect("an answer before any body byte");
    assert_eq!(status, 401, "{v}");
    // Credentials, too large: 413 JSON, from content-length.
    let r = raw_http(
        addr,
        &head(true, "application/json", 10_000_000),
        b"",
        quick,
    )
    .await;
    let (status, v) = r.expect("an answer before any body byte");
    assert_eq!(status, 413, "{v}");
    assert!(v["error"].is_string(), "{v}");
    // Chunked, past the limit as it arrives: 413 JSON too.
    let chunked = format!(
        "POST /v1/publish HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {API_KEY}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    let mut body = Vec::new();
    for _ in 0..40 {
        body.extend_from_slice(format!("{:x}\r\n", 8192).as_bytes());
        body.extend(std::iter::repeat_n(b' ', 8192));
        body.extend_from_slice(b"\r\n");
    }
    let (status, v) = raw_http(addr, &chunked, &body, TIMEOUT)
        .await
        .expect("answer");
    assert_eq!(status, 413, "{v}");
    assert!(v["error"].is_string(), "{v}");
    // JSON sent as text/plain (a cross-site "simple request"): 415.
    let json = br#"{"destination":"/topic/x","body":"hi"}"#;
    let (status, v) = raw_http(addr, &head(true, "text/plain", json.len()), json, TIMEOUT)
        .await
        .expect("answer");
    assert_eq!(status, 415, "{v}");
    assert!(v["error"].is_string(), "{v}");
    let (status, v) = raw_http(
        addr,
        &head(true, "application/json", json.len()),
        json,
        TIMEOUT,
    )
    .await
    .expect("answer");
    assert_eq!(status, 202, "{v}");
    // A body that stops half way: 408 JSON after connect_timeout.
    let (status, v) = raw_http(
        addr,
        &head(true, "application/json", 100),
        b"{\"dest",
        TIMEOUT,
    )
    .await
    .expect("answer");
    assert_eq!(status, 408, "{v}");

    // Idle HTTP connections up to the limit; the next is closed at once.
    let mut idle = Vec::new();
    for _ in 0..6 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(addr).await.expect("connect");
    let mut b = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_millis(500), extra.read(&mut b)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the connection past max_http_connections stayed open: {closed:?}"
    );
    drop(idle);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(stat(addr, "http_connections_refused_total").await >= 1);
}

/// A Kafka record larger than a client may be sent is skipped and counted; its
/// destination's subscribers stay connected and get the next record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_kafka_record_disconnects_nobody() {
    let broker = Broker::start();
    let cfg = Config::write("oversized", "outbound_max_bytes = 131072\n");
    let node = Node::cluster("big1", &broker.brokers(), &["--config", cfg.path()]);
    ready(&node).await;
    let mut sub = WsClient::connect(&node.ws_url()).await;
    sub.subscribe("b", "/topic/big").await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("message.max.bytes", "2000000")
        .create()
        .expect("producer");
    for body in [vec![b'x'; 300_000], b"small".to_vec()] {
        let headers = OwnedHeaders::new().insert(KafkaHeader {
            key: "destination",
            value: Some("/topic/big"),
        });
        producer
            .send(
                FutureRecord::to("pushcenter.messages")
                    .key("big")
                    .payload(&body)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
    match sub.event_within(TIMEOUT).await {
        Event::Frame(f) => {
            assert_eq!(f.command, Command::Message, "{f:?}");
            assert_eq!(&f.body[..], b"small");
        }
        other => panic!("expected the small record, got {other:?}"),
    }
    assert_eq!(stat(node.http, "bus_records_oversized_total").await, 1);
    assert_eq!(stat(node.http, "slow_consumer_disconnects_total").await, 0);
}

/// Open transactions hold at most 1 MiB per connection, whatever the frame counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_hold_a_byte_budget() {
    let cfg = Config::write("tx", "max_frames_per_second = 0\n");
    let node = cfg.node();
    let mut c = WsClient::connect(&node.ws_url()).await;
    c.send(&Frame::new(Command::Begin).header("transaction", "t1"))
        .await;
    let body = vec![b'x'; 60_000];
    for _ in 0..17 {
        c.send(
            &Frame::new(Command::Send)
                .header("destination", "/topic/x")
                .header("transaction", "t1")
                .body(body.clone()),
        )
        .await;
    }
    c.expect_silence(Duration::from_millis(300)).await;
    c.send(
        &Frame::new(Command::Send)
            .header("destination", "/topic/x")
            .header("transaction", "t1")
            .body(body.clone()),
    )
    .await;
    c.expect_error_then_close("transactions too large").await;
}

/// Distinct wildcard patterns are capped per node and per connection (each costs a
/// match per record on the consumer's thread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_patterns_are_capped() {
    let cfg = Config::write(
        "patterns",
        "max_patterns = 3\nmax_patterns_per_connection = 2\n",
    );
    let node = cfg.node();
    let url = node.ws_url();
    let mut a = WsClient::connect(&url).await;
    a.subscribe("1", "/topic/a.*").await;
    a.subscribe("2", "/topic/b.*").await;
    a.send(
        &Frame::new(Command::Subscribe)
            .header("id", "3")
            .header("destination", "/topic/c.*"),
    )
    .await;
    a.expect_error_then_close("too many wildcard subscriptions (limit 2)")
        .await;
    let mut b = WsClient::connect(&url).await;
    b.subscribe("1", "/topic/a.*").await;
    b.subscribe("2", "/topic/c.*").await;
    let mut c = WsClient::connect(&url).await;
    c.subscribe("1", "/topic/c.*").await;
    c.subscribe("2", "/topic/d.*").await;
    let mut d = WsClient::connect(&url).await;
    d.send(
        &Frame::new(Command::Subscribe)
            .header("id", "1")
            .header("destination", "/topic/e.#"),
    )
    .await;
    d.expect_error_then_close("too many distinct wildcard patterns on this node")
        .await;
    assert_eq!(stat(node.http, "patterns_refused_total").await, 1);
    // The patterns in use still work.
    let (status, v) = publish(node.http, "/topic/d.1", "to d").await;
    assert_eq!(status, 202, "{v}");
    let m = c.frame().await.expect("a message for /topic/d.*");
    assert_eq!(&m.body[..], b"to d");
}

/// A header value with `:` and a newline reaches a 1.2 subscriber as it was published
/// (escaped on the wire); a 1.0 subscriber, whose version cannot carry a newline, gets a
/// space instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_reach_subscribers_as_losslessly_as_their_version_allows() {
    let cfg = Config::write("headers", "");
    let node = cfg.node();
    let mut v12 = WsClient::connect(&node.ws_url()).await;
    v12.subscribe("s", "/topic/h").await;
    let mut v10 = RawWs::open(node.http).await;
    v10.version = Version::V1_0;
    v10.write(&RawWs::text(b"CONNECT\naccept-version:1.0\n\n\0"))
        .await;
    assert_eq!(v10.stomp().await.command, Command::Connected);
    v10.write(&RawWs::text(
        b"SUBSCRIBE\ndestination:/topic/h\nreceipt:s\n\n\0",
    ))
    .await;
    assert_eq!(v10.stomp().await.command, Command::Receipt);

    let body = json!({"destination": "/topic/h", "body": "x",
                      "headers": {"note": "a:b\nc\\d"}});
    let (status, v) = http(node.http, "POST", "/v1/publish", &body.to_string()).await;
    assert_eq!(status, 202, "{v}");
    let m = v12.frame().await.expect("1.2 message");
    assert_eq!(m.get("note"), Some("a:b\nc\\d"));
    // 1.0 has no escaping: the value as written, the newline a space.
    let m = v10.stomp().await;
    assert_eq!(m.command, Command::Message);
    assert_eq!(m.get("note"), Some("a:b c\\d"));
}
