//! Helpers: start the real `pushcenter` binary, speak STOMP over WebSocket and TCP with
//! the project's own codec, post HTTP by hand.
#![allow(dead_code, unreachable_pub)]

pub mod broker;
pub mod etcd;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use pushcenter_stomp::{Command as Cmd, Frame, Item, Limits, Version, decode, encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// A free port below the ephemeral range (32768+ on Linux): while the server is down
/// its clients keep reconnecting, and one of them could otherwise be handed this very
/// port as its source port and connect to itself, or another test could bind it.
pub fn free_port() -> SocketAddr {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    for i in 0..1000u64 {
        let port = 20_000
            + ((seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(i * 7_919))
                % 12_000) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().expect("local addr");
        }
    }
    panic!("no free port in 20000..32000");
}

pub struct Node {
    child: Child,
    /// Set once a test has waited for the exit it caused.
    reaped: bool,
    pub http: SocketAddr,
    pub tcp: Option<SocketAddr>,
}

impl Node {
    pub fn standalone(extra: &[&str]) -> Node {
        let mut args = vec![
            "standalone",
            "--http-addr",
            "127.0.0.1:0",
            "--tcp-addr",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        Node::spawn(&args)
    }

    /// `pushcenter node` against a Kafka-protocol broker.
    pub fn cluster(node_id: &str, brokers: &str, extra: &[&str]) -> Node {
        let mut args = vec![
            "node",
            "--node-id",
            node_id,
            "--kafka-brokers",
            brokers,
            "--http-addr",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        Node::spawn(&args)
    }

    /// `pushcenter registry` on etcd.
    pub fn registry(etcd: &str) -> Node {
        Node::spawn(&[
            "registry",
            "--http-addr",
            "127.0.0.1:0",
            "--etcd-endpoints",
            etcd,
        ])
    }

    /// Starts the binary and reads the `listening ...` line.
    pub fn spawn(args: &[&str]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pushcenter"))
            .args(args)
            // PUSHCENTER_TEST_LOG: a RUST_LOG filter for the processes under test.
            .env(
                "RUST_LOG",
                std::env::var("PUSHCENTER_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start pushcenter");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("listening line");
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(|a| a.parse().expect("address"))
        };
        Node {
            http: field("http=").unwrap_or_else(|| panic!("no http address in {line:?}")),
            tcp: field("tcp="),
            child,
            reaped: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    /// Sends a signal and waits for the process to exit.
    pub fn signal(&mut self, sig: &str) -> std::process::ExitStatus {
        Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        self.reaped = true;
        self.child.wait().expect("wait")
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A node that died on its own is the first thing to know when a test fails.
        if let (false, Ok(Some(status))) = (self.reaped, self.child.try_wait()) {
            eprintln!("pushcenter (pid {}) had exited: {status}", self.child.id());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the node's `/readyz` answers 200 (30 s at most).
pub async fn ready(n: &Node) {
    for _ in 0..300 {
        if http(n.http, "GET", "/readyz", "").await.0 == 200 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("node not ready");
}

/// A minimal HTTP/1.1 request; returns (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect http");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.expect("read");
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `POST path` with a JSON body and an optional `Authorization: Bearer`; the status
/// and the JSON answer (`Null` when it is not JSON).
pub async fn post_bearer(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let body = body.to_string();
    let auth = bearer.map_or(String::new(), |b| format!("authorization: Bearer {b}\r\n"));
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    json_exchange(addr, &req).await
}

/// `GET path` with an optional `Authorization: Bearer`; the status and the JSON answer
/// (`Null` when it is not JSON).
pub async fn get_bearer(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
) -> (u16, serde_json::Value) {
    let auth = bearer.map_or(String::new(), |b| format!("authorization: Bearer {b}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}connection: close\r\n\r\n");
    json_exchange(addr, &req).await
}

/// Sends one HTTP/1.1 request; the status and the JSON body.
async fn json_exchange(addr: SocketAddr, req: &str) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("read");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// A config file written for one test, removed when dropped.
pub struct TempConfig(pub std::path::PathBuf);

impl TempConfig {
    pub fn write(name: &str, text: &str) -> TempConfig {
        let path =
            std::env::temp_dir().join(format!("pushcenter-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write config");
        TempConfig(path)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One counter or gauge of `/v1/stats`.
pub async fn stat(addr: SocketAddr, name: &str) -> i64 {
    let (_, text) = http(addr, "GET", "/v1/stats", "").await;
    let v: serde_json::Value = serde_json::from_str(&text).expect("stats json");
    v[name]
        .as_i64()
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// Waits (up to 10 s) until `name` in `/v1/stats` equals `want`.
pub async fn stat_becomes(addr: SocketAddr, name: &str, want: i64) {
    let start = std::time::Instant::now();
    loop {
        let got = stat(addr, name).await;
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{name} stayed {got}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn publish(addr: SocketAddr, destination: &str, body: &str) -> (u16, String) {
    let json = serde_json::json!({"destination": destination, "body": body}).to_string();
    http(addr, "POST", "/v1/publish", &json).await
}

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// What a client saw next.
#[derive(Debug)]
pub enum Event {
    Frame(Frame),
    Closed,
    /// Nothing within the time given: the connection is still open.
    Silent,
}

/// A WebSocket client connection (tungstenite's).
pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket offering `protocols`: the socket and the subprotocol chosen.
pub async fn ws_open(url: &str, protocols: Option<&str>) -> (Ws, Option<String>) {
    let mut req = url.into_client_request().expect("request");
    if let Some(p) = protocols {
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(p).expect("header"),
        );
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("ws connect");
    let protocol = resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    (ws, protocol)
}

/// A standalone node whose WebSocket messages may reach `limit` bytes: the frame rate
/// off (pings and one-byte fragments are many frames), bodies up to one under the limit
/// so a single MESSAGE can reach it.
pub fn node_at_message_limit(tag: &str, limit: usize) -> (Node, TempConfig) {
    let cfg = TempConfig::write(
        tag,
        &format!(
            "max_frames_per_second = 0\n\n[limits]\nmax_frame_bytes = {limit}\nmax_body_bytes = {}\n",
            limit - 1
        ),
    );
    let node = Node::standalone(&["--config", cfg.path()]);
    (node, cfg)
}

/// A STOMP client over WebSocket using the project's codec.
pub struct WsClient {
    ws: Ws,
    buf: BytesMut,
    pub protocol: Option<String>,
}

impl WsClient {
    pub async fn open(url: &str, protocols: Option<&str>) -> WsClient {
        let (ws, protocol) = ws_open(url, protocols).await;
        WsClient {
            ws,
            buf: BytesMut::new(),
            protocol,
        }
    }

    pub async fn connect(url: &str) -> WsClient {
        WsClient::login(url, None).await.0
    }

    /// CONNECT with `login` (the user, on nodes with `insecure_login_as_user`);
    /// returns the client and its session id.
    pub async fn login(url: &str, user: Option<&str>) -> (WsClient, String) {
        let mut c = WsClient::open(url, Some("v12.stomp")).await;
        let mut connect = Frame::new(Cmd::Connect)
            .header("accept-version", "1.2")
            .header("host", "x");
        if let Some(u) = user {
            connect.push_header("login", u);
        }
        c.send(&connect).await;
        let f = c.frame().await.expect("CONNECTED");
        assert_eq!(f.command, Cmd::Connected, "{f:?}");
        let session = f.get("session").expect("session header").to_string();
        (c, session)
    }

    /// Answers every request it receives as a responder would: SEND to its
    /// `reply-to` with its `correlation-id`, body `<tag>:<request body>`.
    pub fn answer_requests(mut self, tag: String) -> tokio::task::JoinHandle<usize> {
        tokio::spawn(async move {
            let mut answered = 0;
            while let Some(m) = self.frame_within(Duration::from_secs(3600)).await {
                let (Some(to), Some(id)) = (m.get("reply-to"), m.get("correlation-id")) else {
                    continue;
                };
                let body = format!("{tag}:{}", String::from_utf8_lossy(&m.body));
                let reply = Frame::new(Cmd::Send)
                    .header("destination", to)
                    .header("correlation-id", id)
                    .header("answered-by", &tag)
                    .body(body.into_bytes());
                self.send(&reply).await;
                answered += 1;
            }
            answered
        })
    }

    pub async fn send(&mut self, f: &Frame) {
        let mut b = BytesMut::new();
        encode(f, Version::V1_2, &mut b).expect("encode");
        self.ws
            .send(Message::Binary(b.freeze()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.ws.send(Message::Binary(bytes.to_vec().into())).await;
    }

    /// The next frame, skipping heart-beats; None when closed or after TIMEOUT.
    pub async fn frame(&mut self) -> Option<Frame> {
        self.frame_within(TIMEOUT).await
    }

    pub async fn frame_within(&mut self, t: Duration) -> Option<Frame> {
        tokio::time::timeout(t, async {
            loop {
                match decode(&mut self.buf, &Limits::default()) {
                    Ok(Some(Item::Frame(f))) => return Some(f),
                    Ok(Some(Item::HeartBeat)) => continue,
                    Ok(None) => {}
                    Err(e) => panic!("bad frame from server: {e}"),
                }
                match self.ws.next().await? {
                    Ok(Message::Text(t)) => self.buf.extend_from_slice(t.as_bytes()),
                    Ok(Message::Binary(b)) => self.buf.extend_from_slice(&b),
                    Ok(Message::Close(_)) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// What comes next within `t`: a frame (heart-beats skipped), the close, or
    /// silence; unlike [`WsClient::frame_within`] a close and a timeout differ.
    pub async fn event_within(&mut self, t: Duration) -> Event {
        let got = tokio::time::timeout(t, async {
            loop {
                match decode(&mut self.buf, &Limits::default()) {
                    Ok(Some(Item::Frame(f))) => return Event::Frame(f),
                    Ok(Some(Item::HeartBeat)) => continue,
                    Ok(None) => {}
                    Err(e) => panic!("bad frame from server: {e}"),
                }
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => self.buf.extend_from_slice(t.as_bytes()),
                    Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return Event::Closed,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        got.unwrap_or(Event::Silent)
    }

    /// Asserts an ERROR whose `message` holds `message`, then the close (a timeout
    /// fails: it is not a close).
    pub async fn expect_error_then_close(&mut self, message: &str) {
        match self.event_within(TIMEOUT).await {
            Event::Frame(f) if f.command == Cmd::Error => {
                let got = f.get("message").unwrap_or_default();
                assert!(got.contains(message), "ERROR {got:?}, expected {message:?}");
            }
            other => panic!("expected ERROR {message:?}, got {other:?}"),
        }
        match self.event_within(TIMEOUT).await {
            Event::Closed => {}
            other => panic!("expected the close after ERROR, got {other:?}"),
        }
    }

    /// Asserts the connection stays open and quiet for `t`.
    pub async fn expect_silence(&mut self, t: Duration) {
        match self.event_within(t).await {
            Event::Silent => {}
            other => panic!("expected nothing for {t:?}, got {other:?}"),
        }
    }

    /// Waits for the close; returns the close code if any.
    pub async fn closed(&mut self) -> Option<u16> {
        tokio::time::timeout(TIMEOUT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(c))) => return c.map(|c| u16::from(c.code)),
                    Some(Ok(_)) => continue,
                    _ => return None,
                }
            }
        })
        .await
        .expect("closed within timeout")
    }

    pub async fn subscribe(&mut self, id: &str, destination: &str) {
        self.send(
            &Frame::new(Cmd::Subscribe)
                .header("id", id)
                .header("destination", destination)
                .header("receipt", format!("sub-{id}")),
        )
        .await;
        let r = self.frame().await.expect("RECEIPT");
        assert_eq!(r.command, Cmd::Receipt, "{r:?}");
    }

    /// SUBSCRIBE with a receipt (and `resume-from` when given); the RECEIPT, whatever
    /// came before it skipped.
    pub async fn subscribe_resuming(
        &mut self,
        id: &str,
        dest: &str,
        resume: Option<&str>,
    ) -> Frame {
        let mut f = Frame::new(Cmd::Subscribe)
            .header("id", id)
            .header("destination", dest)
            .header("receipt", format!("r-{id}"));
        if let Some(r) = resume {
            f.push_header("resume-from", r);
        }
        self.send(&f).await;
        loop {
            let r = self.frame().await.expect("RECEIPT");
            if r.command == Cmd::Receipt {
                return r;
            }
        }
    }

    /// The bodies of the next `n` MESSAGEs, with the last message id.
    pub async fn bodies(&mut self, n: usize) -> (Vec<String>, String) {
        let mut out = Vec::new();
        let mut last = String::new();
        while out.len() < n {
            let f = self
                .frame()
                .await
                .unwrap_or_else(|| panic!("message {} of {n}", out.len() + 1));
            if f.command != Cmd::Message {
                continue;
            }
            last = f.get("message-id").expect("message-id").to_string();
            out.push(String::from_utf8_lossy(&f.body).into_owned());
        }
        (out, last)
    }
}

/// A STOMP client over plain TCP.
pub struct TcpClient {
    pub s: TcpStream,
    buf: BytesMut,
}

impl TcpClient {
    pub async fn open(addr: SocketAddr) -> TcpClient {
        TcpClient {
            s: TcpStream::connect(addr).await.expect("tcp connect"),
            buf: BytesMut::new(),
        }
    }

    pub async fn raw(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes).await;
    }

    /// The next frame, None when the server closed.
    pub async fn frame(&mut self) -> Option<Frame> {
        tokio::time::timeout(TIMEOUT, async {
            loop {
                match decode(&mut self.buf, &Limits::default()) {
                    Ok(Some(Item::Frame(f))) => return Some(f),
                    Ok(Some(Item::HeartBeat)) => continue,
                    Ok(None) => {}
                    Err(e) => panic!("bad frame from server: {e}"),
                }
                self.buf.reserve(4096);
                match self.s.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("server answered within timeout")
    }

    /// True when the server closed the connection (EOF) within the timeout.
    pub async fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1024];
        tokio::time::timeout(TIMEOUT, async {
            loop {
                match self.s.read(&mut b).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => continue,
                }
            }
        })
        .await
        .unwrap_or(false)
    }
}

/// The repository's root.
pub fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A YAML file as JSON, through PyYAML (`make test` installs it).
pub fn yaml(path: &std::path::Path) -> serde_json::Value {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml\njson.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(path)
        .output()
        .expect("python3 with PyYAML (make test installs them)");
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// `pushcenter bench ARGS`, run to its end off the async runtime.
pub async fn run_bench(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_pushcenter"))
            .arg("bench")
            .args(args)
            .output()
            .expect("run pushcenter bench")
    })
    .await
    .expect("join")
}

/// Nodes `ids` on one broker and one etcd, each with `--config config`, ready.
pub async fn start_cluster(ids: &[&str], brokers: &str, etcd: &str, config: &str) -> Vec<Node> {
    let nodes: Vec<Node> = ids
        .iter()
        .map(|id| Node::cluster(id, brokers, &["--etcd-endpoints", etcd, "--config", config]))
        .collect();
    for n in &nodes {
        ready(n).await;
    }
    nodes
}
