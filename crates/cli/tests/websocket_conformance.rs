//! WebSocket server conformance of the node's own RFC 6455 implementation (the sans-IO
//! framing of `crates/websocket`, its transport and HTTP upgrade in `crates/node`),
//! driven through the real binary case by case, organised like the case categories of
//! Autobahn|Testsuite, which needs Python 2 and cannot run here: 0 opening handshake,
//! 1 framing, 2 ping/pong, 3 reserved bits, 4 opcodes, 5 fragmentation, 6 UTF-8,
//! 7 close handling, 9 limits, 10 masking.
//!
//! The node is a STOMP server, not an echo server: data goes in as SEND frames to a
//! topic the sending connection subscribes to, sized so that the WebSocket message has
//! exactly the length under test, and comes back as MESSAGE frames whose bodies are
//! checked byte for byte. The client is written by hand on a raw socket so every frame
//! goes on the wire exactly as a case says (masked unless the case says otherwise), and
//! every read tells a frame, a close frame (with its code), the end of the stream and
//! silence apart. Every frame the node sends is checked too: unmasked, RSV bits clear,
//! shortest length encoding, control frames unfragmented and at most 125 bytes.
//!
//! One node per category (one test function each); its cases run concurrently. Each
//! case prints `ok <id> <what>` (`--nocapture` shows them) and each category a line
//! `websocket conformance | <category> | <cases> cases | <passed> passed`.
//! A case that passes in a way the RFC allows but Autobahn calls non-strict says so.

mod common;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use common::{Node, TIMEOUT, TempConfig, node_at_message_limit};
use pushcenter_stomp::{Command, Frame, Item, Limits, Version, decode_version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The node's message limit, `limits.max_frame_bytes` (its default, set explicitly).
const LIMIT: usize = 131_072;
/// How long a case waits to be sure that nothing comes.
const QUIET: Duration = Duration::from_millis(400);
/// A case that has no verdict by then fails.
const CASE_TIMEOUT: Duration = Duration::from_secs(20);

const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

const RSV1: u8 = 0x4;
const RSV2: u8 = 0x2;
const RSV3: u8 = 0x1;

/// The node under test: messages up to the limit (see `node_at_message_limit`).
fn start_node(category: &str) -> (Node, TempConfig) {
    node_at_message_limit(&format!("ws-conformance-{category}"), LIMIT)
}

// ---------------------------------------------------------------------------------------
// Cases and their runner.

/// `Ok(None)`: passed as the RFC has it; `Ok(Some(note))`: passed in a way the RFC
/// allows but Autobahn calls non-strict; `Err(why)`: failed.
type Outcome = Result<Option<String>, String>;

macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

struct Case {
    id: String,
    what: String,
    run: Pin<Box<dyn Future<Output = Outcome> + Send>>,
}

fn case(
    id: impl Into<String>,
    what: impl Into<String>,
    run: impl Future<Output = Outcome> + Send + 'static,
) -> Case {
    Case {
        id: id.into(),
        what: what.into(),
        run: Box::pin(run),
    }
}

/// Runs a category's cases concurrently, prints one line per case and the count, and
/// fails naming every case that failed.
async fn run_category(category: &str, cases: Vec<Case>) {
    let total = cases.len();
    let mut ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), total, "{category}: case ids are not unique");
    let started = std::time::Instant::now();
    let running: Vec<_> = cases
        .into_iter()
        .map(|c| {
            let task = tokio::spawn(tokio::time::timeout(CASE_TIMEOUT, c.run));
            (c.id, c.what, task)
        })
        .collect();
    let mut failed = Vec::new();
    let mut non_strict = 0;
    for (id, what, task) in running {
        let got = match task.await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(format!("no verdict within {CASE_TIMEOUT:?}")),
            Err(e) => Err(format!("the case panicked: {e}")),
        };
        match got {
            Ok(None) => println!("ok {id} {what}"),
            Ok(Some(note)) => {
                non_strict += 1;
                println!("ok {id} {what} (non-strict: {note})");
            }
            Err(why) => {
                println!("FAIL {id} {what}: {why}");
                failed.push(format!("  {id} {what}: {why}"));
            }
        }
    }
    println!(
        "websocket conformance | {category} | {total} cases | {} passed | {non_strict} non-strict | {:.1} s",
        total - failed.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "{category}: {} of {total} cases failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Client frames, built byte by byte.

static MASK_SEED: AtomicU64 = AtomicU64::new(0x5eed);

/// A fresh masking key per frame (some of them with zero bytes, as real keys have).
fn next_mask() -> [u8; 4] {
    let x = MASK_SEED
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let b = (x >> 32) as u32;
    b.to_be_bytes()
}

/// A frame header: FIN, RSV bits (RSV1 = 4, RSV2 = 2, RSV3 = 1), opcode, the length in
/// the shortest encoding, and the masking key when there is one.
fn header(fin: bool, rsv: u8, opcode: u8, len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match len {
        n if n < 126 => f.push(m | n as u8),
        n if n < 65_536 => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&n.to_be_bytes());
        }
    }
    if let Some(k) = mask {
        f.extend_from_slice(&k);
    }
    f
}

fn raw_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = header(fin, rsv, opcode, payload.len() as u64, mask);
    match mask {
        Some(k) => f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4])),
        None => f.extend_from_slice(payload),
    }
    f
}

/// A masked frame.
fn frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(fin, rsv, opcode, payload, Some(next_mask()))
}

fn text(payload: &[u8]) -> Vec<u8> {
    frame(true, 0, TEXT, payload)
}

fn binary(payload: &[u8]) -> Vec<u8> {
    frame(true, 0, BINARY, payload)
}

fn ping(payload: &[u8]) -> Vec<u8> {
    frame(true, 0, PING, payload)
}

fn pong(payload: &[u8]) -> Vec<u8> {
    frame(true, 0, PONG, payload)
}

fn close(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    frame(true, 0, CLOSE, &p)
}

/// The header alone (with its masking key) of a masked frame claiming `len` bytes.
fn header_only(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
    header(fin, 0, opcode, len, Some(next_mask()))
}

/// `bytes` as a fragmented message: the first fragment carries `opcode`, the cuts are
/// byte offsets into `bytes`.
fn fragments(opcode: u8, bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(bytes.len());
    let pieces: Vec<&[u8]> = bounds.windows(2).map(|w| &bytes[w[0]..w[1]]).collect();
    let last = pieces.len() - 1;
    pieces
        .iter()
        .enumerate()
        .map(|(i, p)| frame(i == last, 0, if i == 0 { opcode } else { CONT }, p))
        .collect()
}

// ---------------------------------------------------------------------------------------
// STOMP payloads of exact sizes.

fn topic(id: &str) -> String {
    format!("/topic/ws.{id}")
}

/// A SEND of `body` to `topic`, without content-length (`body` holds no NUL).
fn send_frame(topic: &str, body: &[u8]) -> Vec<u8> {
    let mut f = format!("SEND\ndestination:{topic}\n\n").into_bytes();
    f.extend_from_slice(body);
    f.push(0);
    f
}

fn digits(n: usize) -> usize {
    n.to_string().len()
}

/// Text bodies: printable ASCII that moves along with the position.
fn text_body(n: usize) -> Vec<u8> {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|i| ALNUM[(i * 7 + (i >> 8) + n) % ALNUM.len()])
        .collect()
}

/// Binary bodies: every byte value, NUL and bytes that are never UTF-8 included.
fn binary_body(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| ((i * 7 + (i >> 8) + n) % 256) as u8)
        .collect()
}

/// A pad header (`p:xxx\n`) of `len` bytes: 0 or at least 4.
fn pad_header(len: usize) -> String {
    match len {
        0 => String::new(),
        n => format!("p:{}\n", "x".repeat(n - 3)),
    }
}

/// `(pad, body)` lengths with `pad + digits(body) + body == rest`, pad 0 when possible.
fn solve_with_length_digits(rest: usize) -> Option<(usize, usize)> {
    [0, 4, 5, 6, 7, 8, 9, 10, 11, 12]
        .into_iter()
        .find_map(|pad| {
            let r = rest.checked_sub(pad)?;
            (1..=7)
                .filter(|d| r >= *d)
                .find(|d| digits(r - d) == *d)
                .map(|d| (pad, r - d))
        })
}

/// One SEND frame to `topic` of exactly `total` bytes (its NUL included) and its body.
/// Binary ones carry content-length and bodies with every byte value.
fn send_of_len(topic: &str, total: usize, binary: bool) -> (Vec<u8>, Vec<u8>) {
    let start = format!("SEND\ndestination:{topic}\n");
    let (pad, n) = if binary {
        let fixed = start.len() + "content-length:\n".len() + 2;
        solve_with_length_digits(total - fixed).expect("a SEND of that length")
    } else {
        (0, total - start.len() - 2)
    };
    let body = if binary { binary_body(n) } else { text_body(n) };
    let mut f = start.into_bytes();
    f.extend_from_slice(pad_header(pad).as_bytes());
    if binary {
        f.extend_from_slice(format!("content-length:{n}\n").as_bytes());
    }
    f.push(b'\n');
    f.extend_from_slice(&body);
    f.push(0);
    assert_eq!(f.len(), total, "SEND sizing");
    (f, body)
}

/// STOMP bytes of exactly `len` bytes (none for 0): SEND frames to `topic`, each small
/// enough for its MESSAGE to stay under the limit, and the bodies that come back.
fn sends_of_len(topic: &str, len: usize, binary: bool) -> (Vec<u8>, Vec<Vec<u8>>) {
    let (mut bytes, mut bodies) = (Vec::new(), Vec::new());
    let k = len.div_ceil(60_000);
    for i in 0..k {
        let size = len / k + usize::from(i < len % k);
        let (f, b) = send_of_len(topic, size, binary);
        bytes.extend(f);
        bodies.push(b);
    }
    assert_eq!(bytes.len(), len);
    (bytes, bodies)
}

fn parse_stomp(data: &[u8]) -> Result<Frame, String> {
    let mut buf = BytesMut::from(data);
    match decode_version(&mut buf, Version::V1_2, &big_limits()) {
        Ok(Some(Item::Frame(f))) if buf.is_empty() => Ok(f),
        other => Err(format!("not one STOMP frame: {other:?}")),
    }
}

fn big_limits() -> Limits {
    Limits {
        max_frame_bytes: 1 << 20,
        max_body_bytes: (1 << 20) - 1,
        ..Limits::default()
    }
}

// ---------------------------------------------------------------------------------------
// The accept key, computed here: SHA-1 (FIPS 180-4) and base64 (RFC 4648).

fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, c) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            (e, d, c, b, a) = (d, c, b.rotate_left(30), a, t);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (o, x) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn base64(data: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn accept_key(key: &str) -> String {
    base64(&sha1(
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    ))
}

/// A fresh client key: 16 bytes, base64.
fn new_key() -> String {
    let a = MASK_SEED.fetch_add(1, Ordering::Relaxed) ^ now_nanos();
    let b = a.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let c = b.rotate_left(29).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut bytes = b.to_be_bytes().to_vec();
    bytes.extend_from_slice(&c.to_be_bytes());
    base64(&bytes)
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

// ---------------------------------------------------------------------------------------
// The opening handshake.

/// A handshake request, header by header, so a case can leave one out or change it.
struct Req {
    line: String,
    headers: Vec<(String, String)>,
}

impl Req {
    fn new(addr: SocketAddr, key: &str) -> Req {
        Req {
            line: "GET /ws HTTP/1.1".into(),
            headers: vec![
                ("Host".into(), addr.to_string()),
                ("Upgrade".into(), "websocket".into()),
                ("Connection".into(), "Upgrade".into()),
                ("Sec-WebSocket-Key".into(), key.into()),
                ("Sec-WebSocket-Version".into(), "13".into()),
            ],
        }
    }

    fn line(mut self, line: &str) -> Req {
        self.line = line.into();
        self
    }

    fn without(mut self, name: &str) -> Req {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    fn set(self, name: &str, value: &str) -> Req {
        self.without(name).add(name, value)
    }

    fn add(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut s = format!("{}\r\n", self.line);
        for (n, v) in &self.headers {
            s.push_str(&format!("{n}: {v}\r\n"));
        }
        s.push_str("\r\n");
        s.into_bytes()
    }
}

/// The status line and headers of the node's answer.
#[derive(Debug)]
struct Resp {
    status_line: String,
    status: u16,
    headers: Vec<(String, String)>,
}

impl Resp {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Comma-separated tokens of every `name` header, lowercased.
    fn tokens(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// The raw client.

/// One frame from the node.
struct WsFrame {
    fin: bool,
    opcode: u8,
    /// Header bytes (2, 4 or 10: the node never masks).
    head: usize,
    payload: Vec<u8>,
}

impl fmt::Debug for WsFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.payload[..self.payload.len().min(80)];
        write!(
            f,
            "frame(opcode {:#x}, fin {}, {} bytes: {:?})",
            self.opcode,
            self.fin,
            self.payload.len(),
            String::from_utf8_lossy(shown)
        )
    }
}

/// What a read brought.
enum Got {
    /// A data or control frame other than close.
    Frame(WsFrame),
    /// A close frame: its code (none for an empty payload) and reason.
    Close(Option<u16>, String),
    /// The TCP stream ended (or was reset) with no further frame.
    Eof,
    /// Nothing within the time given: the connection is open and quiet.
    Timeout,
    /// The node sent something RFC 6455 forbids a server to send.
    Bad(String),
}

impl fmt::Debug for Got {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Got::Frame(frame) => write!(f, "{frame:?}"),
            Got::Close(None, _) => write!(f, "close frame without a code"),
            Got::Close(Some(code), reason) => write!(f, "close frame {code} {reason:?}"),
            Got::Eof => write!(f, "the end of the stream (no close frame)"),
            Got::Timeout => write!(f, "silence"),
            Got::Bad(why) => write!(f, "a frame RFC 6455 forbids: {why}"),
        }
    }
}

/// Parses one server frame at the start of `buf`, checking what RFC 6455 requires of
/// a server's frames; `None` until it is all there.
fn parse_server_frame(buf: &[u8]) -> Result<Option<(WsFrame, usize)>, String> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let (fin, rsv, opcode) = (b0 & 0x80 != 0, (b0 >> 4) & 0x7, b0 & 0x0F);
    if rsv != 0 {
        return Err(format!("server frame with RSV bits {rsv:#05b}"));
    }
    if b1 & 0x80 != 0 {
        return Err("server frame is masked (RFC 6455 5.1)".into());
    }
    let (ext, len) = match b1 & 0x7F {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            let n = u64::from(u16::from_be_bytes([b[0], b[1]]));
            if n < 126 {
                return Err(format!("length {n} not in the shortest form (16-bit)"));
            }
            (2, n)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let n = u64::from_be_bytes(b.try_into().expect("8 bytes"));
            if n >> 63 != 0 || n < 65_536 {
                return Err(format!("length {n} not in the shortest form (64-bit)"));
            }
            (8, n)
        }
        n => (0, u64::from(n)),
    };
    match opcode {
        CONT | TEXT | BINARY => {}
        CLOSE | PING | PONG if fin && len <= 125 => {}
        CLOSE | PING | PONG => return Err(format!("bad control frame {opcode:#x}")),
        _ => return Err(format!("server frame with reserved opcode {opcode:#x}")),
    }
    let head = 2 + ext;
    let total = head + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let frame = WsFrame {
        fin,
        opcode,
        head,
        payload: buf[head..total].to_vec(),
    };
    Ok(Some((frame, total)))
}

fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A data message from the node: its opcode, bytes, and each frame's header length.
struct Msg {
    opcode: u8,
    data: Vec<u8>,
    heads: Vec<usize>,
}

/// A WebSocket client written by hand.
struct Ws {
    s: TcpStream,
    rx: Vec<u8>,
    /// STOMP bytes from data messages, not decoded yet.
    stomp: BytesMut,
    /// The opcode of the last data message read.
    last_opcode: u8,
}

impl Ws {
    /// Sends `req` (and `after` in the same write) and reads the answer's head.
    async fn handshake(addr: SocketAddr, req: &Req, after: &[u8]) -> Result<(Ws, Resp), String> {
        let s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        let mut ws = Ws {
            s,
            rx: Vec::new(),
            stomp: BytesMut::new(),
            last_opcode: 0,
        };
        let mut bytes = req.bytes();
        bytes.extend_from_slice(after);
        ws.send(&bytes).await;
        let end = loop {
            if let Some(p) = ws.rx.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            ws.rx.reserve(4096);
            match tokio::time::timeout(TIMEOUT, ws.s.read_buf(&mut ws.rx)).await {
                Err(_) => return Err("no handshake answer".into()),
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return Err(format!(
                        "closed during the handshake: {:?}",
                        String::from_utf8_lossy(&ws.rx)
                    ));
                }
                Ok(Ok(_)) => {}
            }
        };
        let head = String::from_utf8_lossy(&ws.rx[..end]).into_owned();
        ws.rx.drain(..end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default().to_string();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no status in {status_line:?}"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let resp = Resp {
            status_line,
            status,
            headers,
        };
        Ok((ws, resp))
    }

    /// A checked handshake offering `v12.stomp`.
    async fn open(addr: SocketAddr) -> Result<Ws, String> {
        let key = new_key();
        let req = Req::new(addr, &key).add("Sec-WebSocket-Protocol", "v12.stomp");
        let (ws, resp) = Ws::handshake(addr, &req, &[]).await?;
        check_upgrade(&resp, &key)?;
        ensure!(
            resp.get("sec-websocket-protocol") == Some("v12.stomp"),
            "subprotocol {:?}",
            resp.get("sec-websocket-protocol")
        );
        Ok(ws)
    }

    /// Open, CONNECTed (no heart-beats) and subscribed to `topic` (id 0).
    async fn stomp(addr: SocketAddr, topic: &str) -> Result<Ws, String> {
        let mut ws = Ws::open(addr).await?;
        ws.connect().await?;
        ws.subscribe(topic).await?;
        Ok(ws)
    }

    async fn connect(&mut self) -> Result<(), String> {
        self.send(&text(
            b"CONNECT\naccept-version:1.2\nhost:x\nheart-beat:0,0\n\n\0",
        ))
        .await;
        let (_, f) = self.stomp_frame().await?;
        ensure!(
            f.command == Command::Connected,
            "expected CONNECTED, got {:?} {:?}",
            f.command,
            f.get("message")
        );
        Ok(())
    }

    async fn subscribe(&mut self, topic: &str) -> Result<(), String> {
        let sub = format!("SUBSCRIBE\nid:0\ndestination:{topic}\nreceipt:sub\n\n\0");
        self.send(&text(sub.as_bytes())).await;
        let (_, f) = self.stomp_frame().await?;
        ensure!(
            f.command == Command::Receipt && f.get("receipt-id") == Some("sub"),
            "expected the SUBSCRIBE's RECEIPT, got {:?} {:?}",
            f.command,
            f.get("message")
        );
        Ok(())
    }

    /// Writes `bytes`. A write error is not a verdict: the node may have closed on
    /// purpose, and the reads that follow tell what it did.
    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes).await;
    }

    /// Writes `bytes` in pieces of `chunk` bytes, each its own TCP segment.
    async fn send_chunked(&mut self, bytes: &[u8], chunk: usize) {
        for piece in bytes.chunks(chunk) {
            self.send(piece).await;
            tokio::task::yield_now().await;
        }
    }

    /// The next frame, close, end of stream or silence within `t`.
    async fn next(&mut self, t: Duration) -> Got {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            match parse_server_frame(&self.rx) {
                Ok(Some((f, used))) => {
                    self.rx.drain(..used);
                    return close_or_frame(f);
                }
                Ok(None) => {}
                Err(e) => return Got::Bad(e),
            }
            self.rx.reserve(64 * 1024);
            match tokio::time::timeout_at(deadline, self.s.read_buf(&mut self.rx)).await {
                Err(_) => return Got::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) if self.rx.is_empty() => return Got::Eof,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return Got::Bad(format!(
                        "the stream ended inside a frame ({} bytes of it)",
                        self.rx.len()
                    ));
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next data message, fragments joined; anything else is an error.
    async fn message(&mut self) -> Result<Msg, String> {
        let mut msg: Option<Msg> = None;
        loop {
            let f = match self.next(TIMEOUT).await {
                Got::Frame(f) if matches!(f.opcode, CONT | TEXT | BINARY) => f,
                other => return Err(format!("expected a data message, got {other:?}")),
            };
            match (&mut msg, f.opcode) {
                (None, CONT) => return Err("continuation frame with no message started".into()),
                (Some(_), TEXT | BINARY) => {
                    return Err("a new message inside a fragmented one".into());
                }
                (None, op) => {
                    msg = Some(Msg {
                        opcode: op,
                        data: f.payload,
                        heads: vec![f.head],
                    });
                }
                (Some(m), _) => {
                    m.data.extend_from_slice(&f.payload);
                    m.heads.push(f.head);
                }
            }
            if f.fin {
                let m = msg.take().expect("a message");
                ensure!(
                    m.opcode != TEXT || std::str::from_utf8(&m.data).is_ok(),
                    "the node sent a text message that is not UTF-8"
                );
                return Ok(m);
            }
        }
    }

    /// The next STOMP frame (heart-beats skipped) and the opcode of its message.
    async fn stomp_frame(&mut self) -> Result<(u8, Frame), String> {
        loop {
            match decode_version(&mut self.stomp, Version::V1_2, &big_limits()) {
                Ok(Some(Item::Frame(f))) => return Ok((self.last_opcode, f)),
                Ok(Some(Item::HeartBeat)) => continue,
                Ok(None) => {}
                Err(e) => return Err(format!("bad STOMP from the node: {e}")),
            }
            let m = self.message().await?;
            self.last_opcode = m.opcode;
            self.stomp.extend_from_slice(&m.data);
        }
    }

    /// The next STOMP frame is a MESSAGE to `topic` with `body`; its opcode.
    async fn expect_message(&mut self, topic: &str, body: &[u8]) -> Result<u8, String> {
        let (op, f) = self.stomp_frame().await?;
        ensure!(
            f.command == Command::Message,
            "expected MESSAGE, got {:?} {:?}",
            f.command,
            f.get("message")
        );
        ensure!(
            f.get("destination") == Some(topic),
            "MESSAGE to {:?}, expected {topic}",
            f.get("destination")
        );
        if f.body[..] != body[..] {
            let at = f.body.iter().zip(body).position(|(a, b)| a != b);
            return Err(format!(
                "MESSAGE body of {} bytes differs from the {} sent (first difference at {at:?})",
                f.body.len(),
                body.len()
            ));
        }
        Ok(op)
    }

    /// A MESSAGE with `body` in a message of `opcode`.
    async fn expect_message_op(&mut self, topic: &str, body: &[u8], opcode: u8) -> Outcome {
        let op = self.expect_message(topic, body).await?;
        ensure!(
            op == opcode,
            "MESSAGE came in opcode {op:#x}, expected {opcode:#x}"
        );
        Ok(None)
    }

    async fn expect_pong(&mut self, payload: &[u8]) -> Outcome {
        match self.next(TIMEOUT).await {
            Got::Frame(f) if f.opcode == PONG && f.payload == payload => Ok(None),
            other => Err(format!(
                "expected a pong with {:?}, got {other:?}",
                String::from_utf8_lossy(payload)
            )),
        }
    }

    /// A close frame with `code`, then the end of the stream.
    async fn expect_close(&mut self, code: u16) -> Outcome {
        match self.next(TIMEOUT).await {
            Got::Close(Some(c), _) if c == code => self.expect_eof().await,
            other => Err(format!("expected close {code}, got {other:?}")),
        }
    }

    /// A STOMP ERROR whose message holds `message`, then close `code`, then the end.
    async fn expect_error_close(&mut self, message: &str, code: u16) -> Outcome {
        let (_, f) = self.stomp_frame().await?;
        ensure!(
            f.command == Command::Error && f.get("message").unwrap_or_default().contains(message),
            "expected ERROR {message:?}, got {:?} {:?}",
            f.command,
            f.get("message")
        );
        self.expect_close(code).await
    }

    async fn expect_eof(&mut self) -> Outcome {
        match self.next(TIMEOUT).await {
            Got::Eof => Ok(None),
            other => Err(format!(
                "after the close frame, expected the TCP close, got {other:?}"
            )),
        }
    }

    async fn expect_quiet(&mut self, t: Duration) -> Outcome {
        match self.next(t).await {
            Got::Timeout => Ok(None),
            other => Err(format!("expected nothing for {t:?}, got {other:?}")),
        }
    }

    /// A SEND comes back as a MESSAGE: the connection is usable.
    async fn roundtrip(&mut self, topic: &str) -> Outcome {
        self.send(&text(&send_frame(topic, b"still usable"))).await;
        self.expect_message_op(topic, b"still usable", TEXT).await
    }

    /// The closing handshake started by the client: close 1000 echoed, then the end.
    async fn close_clean(&mut self) -> Outcome {
        self.send(&close(1000, b"")).await;
        self.expect_close(1000).await
    }
}

fn close_or_frame(f: WsFrame) -> Got {
    if f.opcode != CLOSE {
        return Got::Frame(f);
    }
    match f.payload.len() {
        0 => Got::Close(None, String::new()),
        1 => Got::Bad("close frame with a 1-byte payload".into()),
        _ => {
            let code = u16::from_be_bytes([f.payload[0], f.payload[1]]);
            let Ok(reason) = std::str::from_utf8(&f.payload[2..]) else {
                return Got::Bad("close reason is not UTF-8".into());
            };
            if !valid_close_code(code) {
                return Got::Bad(format!("the node sent close code {code}"));
            }
            Got::Close(Some(code), reason.to_string())
        }
    }
}

/// A 101 answer that upgrades to WebSocket with the accept key of `key`.
fn check_upgrade(resp: &Resp, key: &str) -> Result<(), String> {
    ensure!(
        resp.status == 101,
        "expected 101, got {:?}",
        resp.status_line
    );
    ensure!(
        resp.tokens("upgrade").contains(&"websocket".to_string()),
        "Upgrade: {:?}",
        resp.get("upgrade")
    );
    ensure!(
        resp.tokens("connection").contains(&"upgrade".to_string()),
        "Connection: {:?}",
        resp.get("connection")
    );
    let want = accept_key(key);
    ensure!(
        resp.get("sec-websocket-accept") == Some(want.as_str()),
        "Sec-WebSocket-Accept {:?}, expected {want}",
        resp.get("sec-websocket-accept")
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 0 Opening handshake.

/// A request that must be refused with a 4xx (`status`: that one exactly).
async fn refused(addr: SocketAddr, req: Req, status: Option<u16>) -> Outcome {
    let (_, resp) = Ws::handshake(addr, &req, &[]).await?;
    match status {
        Some(s) => ensure!(resp.status == s, "expected {s}, got {:?}", resp.status_line),
        None => ensure!(
            (400..500).contains(&resp.status),
            "expected a 4xx refusal, got {:?}",
            resp.status_line
        ),
    }
    Ok(None)
}

/// The subprotocol the node picks from `offers` (one header line each).
async fn picks(addr: SocketAddr, offers: &[&str], want: Option<&str>) -> Outcome {
    let key = new_key();
    let mut req = Req::new(addr, &key);
    for o in offers {
        req = req.add("Sec-WebSocket-Protocol", o);
    }
    let (mut ws, resp) = Ws::handshake(addr, &req, &[]).await?;
    check_upgrade(&resp, &key)?;
    let got = resp.get("sec-websocket-protocol");
    ensure!(
        got == want,
        "picked {got:?} from {offers:?}, expected {want:?}"
    );
    ensure!(
        resp.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-protocol"))
            .count()
            <= 1,
        "more than one Sec-WebSocket-Protocol in the answer"
    );
    // STOMP works on what was agreed.
    ws.connect().await?;
    ws.close_clean().await
}

fn handshake_cases(addr: SocketAddr) -> Vec<Case> {
    let k = new_key;
    vec![
        case(
            "0.1",
            "RFC 6455 sample key gets s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            async move {
                ensure!(
                    accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
                    "the test's own SHA-1/base64 is wrong"
                );
                let key = "dGhlIHNhbXBsZSBub25jZQ==";
                let (_, resp) = Ws::handshake(addr, &Req::new(addr, key), &[]).await?;
                check_upgrade(&resp, key)?;
                Ok(None)
            },
        ),
        case(
            "0.2",
            "eight random keys, each accept key computed here",
            async move {
                for _ in 0..8 {
                    let key = new_key();
                    let (_, resp) = Ws::handshake(addr, &Req::new(addr, &key), &[]).await?;
                    check_upgrade(&resp, &key)?;
                }
                Ok(None)
            },
        ),
        case(
            "0.3",
            "missing Sec-WebSocket-Key: 400",
            refused(
                addr,
                Req::new(addr, &k()).without("Sec-WebSocket-Key"),
                Some(400),
            ),
        ),
        case(
            "0.4",
            "Sec-WebSocket-Key not base64: 400 (RFC 6455 4.2.1 item 5)",
            refused(addr, Req::new(addr, "not a key!"), Some(400)),
        ),
        case(
            "0.5",
            "Sec-WebSocket-Key of 15 bytes: 400",
            refused(addr, Req::new(addr, &base64(&[7u8; 15])), Some(400)),
        ),
        case(
            "0.6",
            "Sec-WebSocket-Key of 17 bytes: 400",
            refused(addr, Req::new(addr, &base64(&[7u8; 17])), Some(400)),
        ),
        case(
            "0.7",
            "version 8: 426 with Sec-WebSocket-Version: 13",
            async move {
                let req = Req::new(addr, &new_key()).set("Sec-WebSocket-Version", "8");
                let (_, resp) = Ws::handshake(addr, &req, &[]).await?;
                ensure!(
                    resp.status == 426,
                    "expected 426, got {:?}",
                    resp.status_line
                );
                ensure!(
                    resp.tokens("sec-websocket-version")
                        .contains(&"13".to_string()),
                    "Sec-WebSocket-Version {:?}",
                    resp.get("sec-websocket-version")
                );
                Ok(None)
            },
        ),
        case(
            "0.8",
            "version 14: 426",
            refused(
                addr,
                Req::new(addr, &k()).set("Sec-WebSocket-Version", "14"),
                Some(426),
            ),
        ),
        case(
            "0.9",
            "no Sec-WebSocket-Version: 4xx",
            refused(
                addr,
                Req::new(addr, &k()).without("Sec-WebSocket-Version"),
                None,
            ),
        ),
        case(
            "0.10",
            "no Upgrade header: 4xx",
            refused(addr, Req::new(addr, &k()).without("Upgrade"), None),
        ),
        case(
            "0.11",
            "no Connection: Upgrade: 4xx",
            refused(
                addr,
                Req::new(addr, &k()).set("Connection", "keep-alive"),
                None,
            ),
        ),
        case(
            "0.12",
            "POST: 4xx",
            refused(
                addr,
                Req::new(addr, &k())
                    .line("POST /ws HTTP/1.1")
                    .add("Content-Length", "0"),
                None,
            ),
        ),
        case(
            "0.13",
            "HTTP/1.0: not upgraded (RFC 6455 4.2.1 item 1)",
            async move {
                let req = Req::new(addr, &new_key()).line("GET /ws HTTP/1.0");
                let (_, resp) = Ws::handshake(addr, &req, &[]).await?;
                ensure!(
                    resp.status != 101 && resp.status >= 400,
                    "an HTTP/1.0 request was answered {:?}",
                    resp.status_line
                );
                Ok(None)
            },
        ),
        case(
            "0.14",
            "no Host header: 400 (RFC 6455 4.2.1 item 2)",
            refused(addr, Req::new(addr, &k()).without("Host"), Some(400)),
        ),
        case(
            "0.15",
            "Connection: keep-alive, Upgrade and Upgrade: WebSocket (any case) upgrade",
            async move {
                let key = new_key();
                let req = Req::new(addr, &key)
                    .set("Connection", "keep-alive, Upgrade")
                    .set("Upgrade", "WebSocket");
                let (_, resp) = Ws::handshake(addr, &req, &[]).await?;
                check_upgrade(&resp, &key)?;
                Ok(None)
            },
        ),
        case(
            "0.16",
            "subprotocol v12.stomp offered: v12.stomp",
            picks(addr, &["v12.stomp"], Some("v12.stomp")),
        ),
        case(
            "0.17",
            "v10.stomp, v11.stomp, v12.stomp: the highest, v12.stomp",
            picks(
                addr,
                &["v10.stomp, v11.stomp, v12.stomp"],
                Some("v12.stomp"),
            ),
        ),
        case(
            "0.18",
            "v11.stomp, v10.stomp: v11.stomp",
            picks(addr, &["v11.stomp, v10.stomp"], Some("v11.stomp")),
        ),
        case(
            "0.19",
            "v10.stomp alone: v10.stomp",
            picks(addr, &["v10.stomp"], Some("v10.stomp")),
        ),
        case(
            "0.20",
            "offers on two header lines (v10.stomp; mqtt, v11.stomp): v11.stomp",
            picks(addr, &["v10.stomp", "mqtt, v11.stomp"], Some("v11.stomp")),
        ),
        case(
            "0.21",
            "no subprotocol offered: accepted, none in the answer, STOMP works",
            picks(addr, &[], None),
        ),
        case(
            "0.22",
            "only unknown subprotocols (mqtt, wamp): none selected",
            picks(addr, &["mqtt, wamp"], None),
        ),
        case(
            "0.23",
            "CONNECT sent in the same write as the handshake request",
            async move {
                let key = new_key();
                let req = Req::new(addr, &key).add("Sec-WebSocket-Protocol", "v12.stomp");
                let connect = text(b"CONNECT\naccept-version:1.2\nhost:x\nheart-beat:0,0\n\n\0");
                let (mut ws, resp) = Ws::handshake(addr, &req, &connect).await?;
                check_upgrade(&resp, &key)?;
                let (_, f) = ws.stomp_frame().await?;
                ensure!(f.command == Command::Connected, "got {:?}", f.command);
                ws.close_clean().await
            },
        ),
        case(
            "0.24",
            "permessage-deflate offered: no extension in the answer",
            async move {
                let key = new_key();
                let req = Req::new(addr, &key).add(
                    "Sec-WebSocket-Extensions",
                    "permessage-deflate; client_max_window_bits",
                );
                let (mut ws, resp) = Ws::handshake(addr, &req, &[]).await?;
                check_upgrade(&resp, &key)?;
                ensure!(
                    resp.get("sec-websocket-extensions").is_none(),
                    "extension accepted: {:?}",
                    resp.get("sec-websocket-extensions")
                );
                ws.connect().await?;
                ws.close_clean().await
            },
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn category_0_opening_handshake() {
    let (node, _cfg) = start_node("handshake");
    run_category("0 opening handshake", handshake_cases(node.http)).await;
}

// ---------------------------------------------------------------------------------------
// 1 Framing.

/// A message of exactly `len` bytes (`writes`: in TCP writes of that size) comes back
/// as MESSAGEs with the same bodies; an empty one is ignored and the connection stays
/// usable.
async fn data_case(
    addr: SocketAddr,
    id: String,
    len: usize,
    bin: bool,
    writes: Option<usize>,
) -> Outcome {
    let topic = topic(&id);
    let mut ws = Ws::stomp(addr, &topic).await?;
    let (bytes, bodies) = sends_of_len(&topic, len, bin);
    let f = if bin { binary(&bytes) } else { text(&bytes) };
    match writes {
        Some(n) => ws.send_chunked(&f, n).await,
        None => ws.send(&f).await,
    }
    let opcode = if bin { BINARY } else { TEXT };
    for body in &bodies {
        ws.expect_message_op(&topic, body, opcode).await?;
    }
    if bodies.is_empty() {
        ws.expect_quiet(Duration::from_millis(100)).await?;
        ws.roundtrip(&topic).await?;
    }
    ws.close_clean().await
}

/// Several messages of these lengths in one TCP write.
async fn data_batch_case(addr: SocketAddr, id: String, lens: &[usize], bin: bool) -> Outcome {
    let topic = topic(&id);
    let mut ws = Ws::stomp(addr, &topic).await?;
    let mut all = Vec::new();
    let mut want = Vec::new();
    for &len in lens {
        let (bytes, bodies) = sends_of_len(&topic, len, bin);
        all.extend(if bin { binary(&bytes) } else { text(&bytes) });
        want.extend(bodies);
    }
    ws.send(&all).await;
    for body in &want {
        ws.expect_message_op(&topic, body, if bin { BINARY } else { TEXT })
            .await?;
    }
    ws.roundtrip(&topic).await?;
    ws.close_clean().await
}

/// The node sends a message of exactly `target` bytes: its length in `head` header
/// bytes (the shortest encoding), unmasked, unfragmented, the body exact. The MESSAGE's
/// size depends on its message-id, which other connections' SENDs move on: the size is
/// predicted from the last id seen and tried again when another SEND came between.
async fn server_len_case(addr: SocketAddr, id: String, target: usize, head: usize) -> Outcome {
    let topic = topic(&id);
    let mut ws = Ws::stomp(addr, &topic).await?;
    ws.send(&text(&send_frame(&topic, b"probe"))).await;
    let m = ws.message().await?;
    let probe = parse_stomp(&m.data)?;
    let mut last_id = probe.get("message-id").ok_or("no message-id")?.to_string();
    // Everything but the id, the content-length value and the body.
    let base = m.data.len() - last_id.len() - 1 - 5;
    for _ in 0..5 {
        let (prefix, seq) = last_id.rsplit_once('-').ok_or("message-id without a -")?;
        let seq: u64 = seq.parse().map_err(|_| format!("message-id {last_id}"))?;
        let id_len = prefix.len() + 1 + (seq + 1).to_string().len();
        let (pad, n) = solve_with_length_digits(target - base - id_len).ok_or("no size")?;
        let body = text_body(n);
        let mut send = format!("SEND\ndestination:{topic}\n{}\n", pad_header(pad)).into_bytes();
        send.extend_from_slice(&body);
        send.push(0);
        ws.send(&text(&send)).await;
        let m = ws.message().await?;
        let f = parse_stomp(&m.data)?;
        ensure!(f.body[..] == body[..], "MESSAGE body differs");
        last_id = f.get("message-id").ok_or("no message-id")?.to_string();
        if m.data.len() == target {
            ensure!(m.opcode == TEXT, "opcode {:#x}", m.opcode);
            ensure!(
                m.heads == [head],
                "a {target}-byte message came with frame headers of {:?} bytes, expected [{head}]",
                m.heads
            );
            return ws.close_clean().await;
        }
    }
    Err(format!(
        "could not make a {target}-byte MESSAGE (other SENDs kept moving the id)"
    ))
}

fn framing_cases(addr: SocketAddr) -> Vec<Case> {
    let lens = [0, 125, 126, 127, 128, 65_535, 65_536, LIMIT];
    let mut cases = Vec::new();
    for (group, bin, kind) in [(1, false, "text"), (2, true, "binary")] {
        for (i, &len) in lens.iter().enumerate() {
            let id = format!("1.{group}.{}", i + 1);
            let what = format!("{kind} message of {len} bytes");
            cases.push(case(id.clone(), what, data_case(addr, id, len, bin, None)));
        }
        let id = format!("1.{group}.9");
        cases.push(case(
            id.clone(),
            format!("{kind} message of {LIMIT} bytes (the limit) in 997-byte writes"),
            data_case(addr, id, LIMIT, bin, Some(997)),
        ));
        let id = format!("1.{group}.10");
        cases.push(case(
            id.clone(),
            format!("{kind} message of 126 bytes, one byte per TCP write"),
            data_case(addr, id, 126, bin, Some(1)),
        ));
        let id = format!("1.{group}.11");
        cases.push(case(
            id.clone(),
            format!("{kind} messages of 126, 0, 125 and 65536 bytes in one TCP write"),
            data_batch_case(addr, id, &[126, 0, 125, 65_536], bin),
        ));
    }
    for (i, (len, head)) in [(125, 2), (126, 4), (65_535, 4), (65_536, 10), (LIMIT, 10)]
        .into_iter()
        .enumerate()
    {
        let id = format!("1.3.{}", i + 1);
        let what = format!("node to client: a {len}-byte message has a {head}-byte header");
        cases.push(case(id.clone(), what, server_len_case(addr, id, len, head)));
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn category_1_framing() {
    let (node, _cfg) = start_node("framing");
    run_category("1 framing", framing_cases(node.http)).await;
}

// ---------------------------------------------------------------------------------------
// 2 Ping/pong.

async fn ping_case(addr: SocketAddr, payload: Vec<u8>, writes: Option<usize>) -> Outcome {
    let mut ws = Ws::open(addr).await?;
    ws.connect().await?;
    let f = ping(&payload);
    match writes {
        Some(n) => ws.send_chunked(&f, n).await,
        None => ws.send(&f).await,
    }
    ws.expect_pong(&payload).await?;
    ws.close_clean().await
}

/// Pongs for the pings `sent`, in order; the RFC lets a busy endpoint answer only the
/// most recent of several pings (5.5.3), which is non-strict.
async fn expect_pongs(ws: &mut Ws, sent: &[Vec<u8>]) -> Outcome {
    let mut at = 0;
    let mut answered = 0;
    let last = sent.last().expect("pings");
    loop {
        match ws.next(TIMEOUT).await {
            Got::Frame(f) if f.opcode == PONG => {
                let Some(i) = sent[at..].iter().position(|p| *p == f.payload) else {
                    return Err(format!("a pong out of order or unknown: {f:?}"));
                };
                at += i + 1;
                answered += 1;
                if f.payload == *last {
                    break;
                }
            }
            other => return Err(format!("expected pongs, got {other:?}")),
        }
    }
    if answered == sent.len() {
        Ok(None)
    } else {
        Ok(Some(format!("{answered} pongs for {} pings", sent.len())))
    }
}

fn ping_pong_cases(addr: SocketAddr) -> Vec<Case> {
    vec![
        case(
            "2.1",
            "ping without payload: empty pong",
            ping_case(addr, vec![], None),
        ),
        case(
            "2.2",
            "ping with a text payload: pong echoes it",
            ping_case(addr, b"Hello, world!".to_vec(), None),
        ),
        case(
            "2.3",
            "ping with a binary payload: pong echoes it",
            ping_case(
                addr,
                vec![0x00, 0xFF, 0xFE, 0xFD, 0xFC, 0xFB, 0x00, 0xFF],
                None,
            ),
        ),
        case(
            "2.4",
            "ping with a 125-byte payload: pong echoes it",
            ping_case(addr, binary_body(125), None),
        ),
        case(
            "2.5",
            "ping with a 126-byte payload: close 1002",
            async move {
                let mut ws = Ws::open(addr).await?;
                ws.connect().await?;
                ws.send(&ping(&[b'x'; 126])).await;
                ws.expect_close(1002).await
            },
        ),
        case(
            "2.6",
            "ping with a 125-byte payload, one byte per TCP write",
            ping_case(addr, text_body(125), Some(1)),
        ),
        case(
            "2.7",
            "unsolicited empty pong: ignored, the connection stays usable",
            async move {
                let topic = topic("2.7");
                let mut ws = Ws::stomp(addr, &topic).await?;
                ws.send(&pong(b"")).await;
                ws.expect_quiet(QUIET).await?;
                ws.roundtrip(&topic).await?;
                ws.close_clean().await
            },
        ),
        case(
            "2.8",
            "unsolicited pong with payload, then a ping: only the ping is answered",
            async move {
                let mut ws = Ws::open(addr).await?;
                ws.connect().await?;
                let mut bytes = pong(b"unsolicited");
                bytes.extend(ping(b"solicited"));
                ws.send(&bytes).await;
                ws.expect_pong(b"solicited").await?;
                ws.expect_quiet(QUIET).await?;
                ws.close_clean().await
            },
        ),
        case(
            "2.9",
            "ten pings in one TCP write: pongs in order",
            async move {
                let mut ws = Ws::open(addr).await?;
                ws.connect().await?;
                let sent: Vec<Vec<u8>> =
                    (0..10).map(|i| format!("ping {i}").into_bytes()).collect();
                let bytes: Vec<u8> = sent.iter().flat_map(|p| ping(p)).collect();
                ws.send(&bytes).await;
                let note = expect_pongs(&mut ws, &sent).await?;
                ws.close_clean().await?;
                Ok(note)
            },
        ),
        case(
            "2.10",
            "ten pings 10 ms apart: ten pongs in order",
            async move {
                let mut ws = Ws::open(addr).await?;
                ws.connect().await?;
                for i in 0..10 {
                    let p = format!("slow ping {i}").into_bytes();
                    ws.send(&ping(&p)).await;
                    ws.expect_pong(&p).await?;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                ws.close_clean().await
            },
        ),
        case(
            "2.11",
            "ping, SEND, ping in one write: both pongs in order and the MESSAGE",
            async move {
                let topic = topic("2.11");
                let mut ws = Ws::stomp(addr, &topic).await?;
                let mut bytes = ping(b"first");
                bytes.extend(text(&send_frame(&topic, b"between the pings")));
                bytes.extend(ping(b"second"));
                ws.send(&bytes).await;
                let (mut pongs, mut message) = (Vec::new(), false);
                while pongs.len() < 2 || !message {
                    match ws.next(TIMEOUT).await {
                        Got::Frame(f) if f.opcode == PONG => pongs.push(f.payload),
                        Got::Frame(f) if f.opcode == TEXT && !message => {
                            let m = parse_stomp(&f.payload)?;
                            ensure!(&m.body[..] == b"between the pings", "MESSAGE {m:?}");
                            message = true;
                        }
                        other => return Err(format!("got {other:?}")),
                    }
                }
                ensure!(
                    pongs == [b"first".to_vec(), b"second".to_vec()],
                    "pongs {pongs:?}"
                );
                ws.close_clean().await
            },
        ),
        case(
            "2.12",
            "ping before CONNECT, right after the handshake: pong",
            async move {
                let mut ws = Ws::open(addr).await?;
                ws.send(&ping(b"early")).await;
                ws.expect_pong(b"early").await?;
                ws.connect().await?;
                ws.close_clean().await
            },
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn category_2_ping_pong() {
    let (node, _cfg) = start_node("ping-pong");
    run_category("2 ping/pong", ping_pong_cases(node.http)).await;
}

// ---------------------------------------------------------------------------------------
// 3 Reserved bits.

/// A connection that has exchanged one message, then gets `bad` (built for its topic):
/// close `code` is the next thing it sees.
async fn violation_after_message(
    addr: SocketAddr,
    id: &str,
    bad: impl FnOnce(&str) -> Vec<u8>,
    code: u16,
) -> Outcome {
    let topic = topic(id);
    let mut ws = Ws::stomp(addr, &topic).await?;
    ws.roundtrip(&topic).await?;
    ws.send(&bad(&topic)).await;
    ws.expect_close(code).await
}

/// A fresh CONNECTed connection gets `bad`: close `code` is the next thing it sees
/// (no MESSAGE, no pong).
async fn violation(
    addr: SocketAddr,
    id: &str,
    bad: impl FnOnce(&str) -> Vec<u8>,
    code: u16,
) -> Outcome {
    let topic = topic(id);
    let mut ws = Ws::stomp(addr, &topic).await?;
    ws.send(&bad(&topic)).await;
    ws.expect_close(code).await
}

/// A valid SEND, the violation and a ping in one TCP write (Autobahn's "one chop"):
/// the MESSAGE may or may not come (RFC 6455 does not say; Autobahn calls its absence
/// non-strict), then close `code`, and no pong.
async fn violation_in_one_write(
    addr: SocketAddr,
    id: &str,
    bad: impl FnOnce(&str) -> Vec<u8>,
    code: u16,
) -> Outcome {
    let topic = topic(id);
    let mut ws = Ws::stomp(addr, &topic).await?;
    let mut bytes = text(&send_frame(&topic, b"before the violation"));
    bytes.extend(bad(&topic));
    bytes.extend(ping(b"after the violation"));
    ws.send(&bytes).await;
    match ws.next(TIMEOUT).await {
        Got::Close(Some(c), _) if c == code => {
            ws.expect_eof().await?;
            Ok(Some(
                "the message before the violation in the same read was dropped".into(),
            ))
        }
        Got::Frame(f) if f.opcode == TEXT => {
            let m = parse_stomp(&f.payload)?;
            ensure!(&m.body[..] == b"before the violation", "got {m:?}");
            ws.expect_close(code).await
        }
        other => Err(format!(
            "expected the MESSAGE or close {code}, got {other:?}"
        )),
    }
}

fn reserved_bits_cases(addr: SocketAddr) -> Vec<Case> {
    let send_with = |op: u8, rsv: u8| move |t: &str| frame(true, rsv, op, &send_frame(t, b"rsv"));
    vec![
        case(
            "3.1",
            "text frame with RSV1 (no extension agreed): close 1002, not delivered",
            async move { violation(addr, "3.1", send_with(TEXT, RSV1), 1002).await },
        ),
        case(
            "3.2",
            "a message, then text with RSV2: MESSAGE, then close 1002",
            async move { violation_after_message(addr, "3.2", send_with(TEXT, RSV2), 1002).await },
        ),
        case(
            "3.3",
            "message, text with RSV1+RSV2 and ping in one write: close 1002, no pong",
            async move { violation_in_one_write(addr, "3.3", send_with(TEXT, RSV1 | RSV2), 1002).await },
        ),
        case(
            "3.4",
            "text frame with RSV3, one byte per write: close 1002",
            async move {
                let topic = topic("3.4");
                let mut ws = Ws::stomp(addr, &topic).await?;
                let f = frame(true, RSV3, TEXT, &send_frame(&topic, b"rsv"));
                ws.send_chunked(&f, 1).await;
                ws.expect_close(1002).await
            },
        ),
        case(
            "3.5",
            "binary frame with RSV1+RSV3: close 1002",
            async move { violation(addr, "3.5", send_with(BINARY, RSV1 | RSV3), 1002).await },
        ),
        case(
            "3.6",
            "ping with RSV2+RSV3: close 1002, no pong",
            async move {
                violation(
                    addr,
                    "3.6",
                    |_| frame(true, RSV2 | RSV3, PING, b"rsv"),
                    1002,
                )
                .await
            },
        ),
        case("3.7", "close with all RSV bits: close 1002", async move {
            let bad = |_: &str| frame(true, RSV1 | RSV2 | RSV3, CLOSE, &1000u16.to_be_bytes());
            violation(addr, "3.7", bad, 1002).await
        }),
        case(
            "3.8",
            "continuation frame with RSV1: close 1002",
            async move {
                let bad = |t: &str| {
                    let s = send_frame(t, b"rsv");
                    let mut b = frame(false, 0, TEXT, &s[..4]);
                    b.extend(frame(true, RSV1, CONT, &s[4..]));
                    b
                };
                violation(addr, "3.8", bad, 1002).await
            },
        ),
        case("3.9", "pong with RSV1: close 1002", async move {
            violation(addr, "3.9", |_| frame(true, RSV1, PONG, b""), 1002).await
        }),
        case(
            "3.10",
            "permessage-deflate offered, not agreed: a RSV1 (\"compressed\") frame gets 1002",
            async move {
                let key = new_key();
                let req =
                    Req::new(addr, &key).add("Sec-WebSocket-Extensions", "permessage-deflate");
                let (mut ws, resp) = Ws::handshake(addr, &req, &[]).await?;
                check_upgrade(&resp, &key)?;
                ensure!(
                    resp.get("sec-websocket-extensions").is_none(),
                    "extension agreed"
                );
                ws.connect().await?;
                ws.send(&frame(
                    true,
                    RSV1,
                    TEXT,
                    &send_frame("/topic/ws.3.10", b"x"),
                ))
                .await;
                ws.expect_close(1002).await
            },
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn category_3_reserved_bits() {
    let (node, _cfg) = start_node("reserved-bits");
    run_category("3 reserved bits", reserved_bits_cases(node.http)).await;
}

// ---------------------------------------------------------------------------------------
// 4 Opcodes.

fn opcode_cases(addr: SocketAddr) -> Vec<Case> {
    let mut cases = Vec::new();
    for (group, ops) in [(1, [3u8, 4, 5, 6, 7]), (2, [0xB, 0xC, 0xD, 0xE, 0xF])] {
        let kind = if group == 1 { "data" } else { "control" };
        for (i, op) in ops.into_iter().enumerate() {
            let id = format!("4.{group}.{}", i + 1);
            let (what, run): (String, Pin<Box<dyn Future<Output = Outcome> + Send>>) = match i {
                0 => (
                    format!("reserved {kind} opcode {op:#x}, empty: close 1002"),
                    Box::pin(async move {
                        violation(addr, &id, |_| frame(true, 0, op, b""), 1002).await
                    }),
                ),
                1 => (
                    format!("reserved {kind} opcode {op:#x} with a payload: close 1002"),
                    Box::pin(async move {
                        violation(
                            addr,
                            &id,
                            |t| frame(true, 0, op, &send_frame(t, b"x")),
                            1002,
                        )
                        .await
                    }),
                ),
                2 => (
                    format!("a message, then reserved {kind} opcode {op:#x}: close 1002"),
                    Box::pin(async move {
                        violation_after_message(addr, &id, |_| frame(true, 0, op, b"x"), 1002).await
                    }),
                ),
                3 => (
                    format!("message, reserved {kind} opcode {op:#x} and ping in one write"),
                    Box::pin(async move {
                        violation_in_one_write(addr, &id, |_| frame(true, 0, op, b"x"), 1002).await
                    }),
                ),
                _ => (
                    format!("reserved {kind} opcode {op:#x} with FIN clear: close 1002"),
                    Box::pin(async move {
                        violation(addr, &id, |_| frame(false, 0, op, b"x"), 1002).await
                    }),
                ),
            };
            let id = format!("4.{group}.{}", i + 1);
            cases.push(case(id, what, run));
        }
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn category_4_opcodes() {
    let (node, _cfg) = start_node("opcodes");
    run_category("4 opcodes", opcode_cases(node.http)).await;
}

// ---------------------------------------------------------------------------------------
// 5 Fragmentation.

/// A SEND to the case's topic in `cuts` fragments (byte offsets), `between` (if any)
/// put after the first fragment, every fragment its own write `gap` apart when given;
/// the MESSAGE comes back whole.
async fn fragmented_case(
    addr: SocketAddr,
    id: &str,
    opcode: u8,
    body: Vec<u8>,
    cuts: impl FnOnce(usize) -> Vec<usize>,
    between: Option<Vec<u8>>,
    gap: Option<Duration>,
) -> Outcome {
    let topic = topic(id);
    let mut ws = Ws::stomp(addr, &topic).await?;
    let bytes = if opcode == BINARY {
        let mut f = format!(
            "SEND\ndestination:{topic}\ncontent-length:{}\n\n",
            body.len()
        )
        .into_bytes();
        f.extend_from_slice(&body);
        f.push(0);
        f
    } else {
        send_frame(&topic, &body)
    };
    let mut frames = fragments(opcode, &bytes, &cuts(bytes.len()));
    if let Some(b) = between {
        frames.insert(1, b);
    }
    match gap {
        None => ws.send(&frames.concat()).await,
        Some(g) => {
            for f in frames {
                ws.send(&f).await;
                tokio::time::sleep(g).await;
            }
        }
    }
    ws.expect_message_op(&topic, &body, opcode).await?;
    ws.close_clean().await
}

fn fragmentation_cases(addr: SocketAddr) -> Vec<Case> {
    let body = || b"a fragmented message".to_vec();
    let halves = |n: usize| vec![n / 2];
    vec![
        case("5.1", "ping in two fragments: close 1002", async move {
            let bad = |_: &str| {
                let mut b = frame(false, 0, PING, b"frag");
                b.extend(frame(true, 0, CONT, b"ment"));
                b
            };
            violation(addr, "5.1", bad, 1002).await
        }),
        case("5.2", "pong in two fragments: close 1002", async move {
            let bad = |_: &str| {
                let mut b = frame(false, 0, PONG, b"frag");
                b.extend(frame(true, 0, CONT, b"ment"));
                b
            };
            violation(addr, "5.2", bad, 1002).await
        }),
        case(
            "5.3",
            "text in two fragments, one write",
            fragmented_case(addr, "5.3", TEXT, body(), halves, None, None),
        ),
        case(
            "5.4",
            "text in two fragments, separate writes 50 ms apart",
            fragmented_case(
                addr,
                "5.4",
                TEXT,
                body(),
                halves,
                None,
                Some(Duration::from_millis(50)),
            ),
        ),
        case(
            "5.5",
            "text in one-byte fragments",
            fragmented_case(addr, "5.5", TEXT, body(), |n| (1..n).collect(), None, None),
        ),
        case(
            "5.6",
            "text in two fragments with a ping between, one write: pong and MESSAGE",
            async move {
                let topic = topic("5.6");
                let mut ws = Ws::stomp(addr, &topic).await?;
                let bytes = send_frame(&topic, b"around a ping");
                let mut frames = fragments(TEXT, &bytes, &[10]);
                frames.insert(1, ping(b"between"));
                ws.send(&frames.concat()).await;
                ws.expect_pong(b"between").await?;
                ws.expect_message_op(&topic, b"around a ping", TEXT).await?;
                ws.close_clean().await
            },
        ),
        case(
            "5.7",
            "text in two fragments with a ping between, separate writes: pong before the end",
            async move {
                let topic = topic("5.7");
                let mut ws = Ws::stomp(addr, &topic).await?;
                let bytes = send_frame(&topic, b"around a ping");
                let frames = fragments(TEXT, &bytes, &[10]);
                ws.send(&frames[0]).await;
                ws.send(&ping(b"between")).await;
                ws.expect_pong(b"between").await?;
                ws.send(&frames[1]).await;
                ws.expect_message_op(&topic, b"around a ping", TEXT).await?;
                ws.close_clean().await
            },
        ),
        case(
            "5.8",
            "binary in three fragments (every byte value)",
            fragmented_case(
                addr,
                "5.8",
                BINARY,
                binary_body(3000),
                |n| vec![n / 3, 2 * n / 3],
                None,
                None,
            ),
        ),
        case(
            "5.9",
            "continuation (FIN) with nothing to continue: close 1002",
            async move {
                violation(
                    addr,
                    "5.9",
                    |t| frame(true, 0, CONT, &send_frame(t, b"x")),
                    1002,
                )
                .await
            },
        ),
        case(
            "5.10",
            "continuation (no FIN) with nothing to continue: close 1002",
            async move {
                violation(
                    addr,
                    "5.10",
                    |t| frame(false, 0, CONT, &send_frame(t, b"x")),
                    1002,
                )
                .await
            },
        ),
        case(
            "5.11",
            "a complete message, then a continuation: close 1002",
            async move {
                violation_after_message(addr, "5.11", |_| frame(true, 0, CONT, b"x"), 1002).await
            },
        ),
        case(
            "5.12",
            "a new text message while one is fragmented: close 1002",
            async move {
                let bad = |t: &str| {
                    let s = send_frame(t, b"x");
                    let mut b = frame(false, 0, TEXT, &s[..5]);
                    b.extend(frame(true, 0, TEXT, &s[5..]));
                    b
                };
                violation(addr, "5.12", bad, 1002).await
            },
        ),
        case(
            "5.13",
            "a new binary message while a text one is fragmented: close 1002",
            async move {
                let bad = |t: &str| {
                    let s = send_frame(t, b"x");
                    let mut b = frame(false, 0, TEXT, &s[..5]);
                    b.extend(frame(true, 0, BINARY, &s[5..]));
                    b
                };
                violation(addr, "5.13", bad, 1002).await
            },
        ),
        case(
            "5.14",
            "empty first and middle fragments, the whole frame in the last",
            async move {
                let topic = topic("5.14");
                let mut ws = Ws::stomp(addr, &topic).await?;
                let mut b = frame(false, 0, TEXT, b"");
                b.extend(frame(false, 0, CONT, b""));
                b.extend(frame(
                    true,
                    0,
                    CONT,
                    &send_frame(&topic, b"after empty fragments"),
                ));
                ws.send(&b).await;
                ws.expect_message_op(&topic, b"after empty fragments", TEXT)
                    .await?;
                ws.close_clean().await
            },
        ),
        case(
            "5.15",
            "close frame with FIN clear: close 1002",
            async move {
                violation(
                    addr,
                    "5.15",
                    |_| frame(false, 0, CLOSE, &1000u16.to_be_bytes()),
                    1002,
                )
                .await
            },
        ),
        case(
            "5.16",
            "unsolicited pong between fragments: ignored",
            fragmented_case(
                addr,
                "5.16",
                TEXT,
                body(),
                halves,
                Some(pong(b"stray")),
                None,
            ),
        ),
        case(
            "5.17",
            "close between the fragments of a message: echoed, then the end",
            async move {
                let topic = topic("5.17");
                let mut ws = Ws::stomp(addr, &topic).await?;
                let s = send_frame(&topic, b"never finished");
                let mut b = frame(false, 0, TEXT, &s[..8]);
                b.extend(close(1000, b""));
                ws.send(&b).await;
                ws.expect_close(1000).await
            },
        ),
        case(
            "5.18",
            "one STOMP frame across two unfragmented messages (the node reads a stream)",
            async move {
                let topic = topic("5.18");
                let mut ws = Ws::stomp(addr, &topic).await?;
                let s = send_frame(&topic, b"across two messages");
                ws.send(&text(&s[..12])).await;
                ws.send(&text(&s[12..])).await;
                ws.expect_message_op(&topic, b"across two messages", TEXT)
                    .await?;
                ws.close_clean().await
            },
        ),
        case(
            "5.19",
            "text of 100,000 bytes in 100 fragments of 1,000",
            async move {
                let topic = topic("5.19");
                let mut ws = Ws::stomp(addr, &topic).await?;
                let (bytes, bodies) = sends_of_len(&topic, 100_000, false);
                let cuts: Vec<usize> = (1..100).map(|i| i * 1000).collect();
                ws.send(&fragments(TEXT, &bytes, &cuts).concat()).await;
                for b in &bodies {
                    ws.expect_message_op(&topic, b, TEXT).await?;
                }
                ws.close_clean().await
            },
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn category_5_fragmentation() {
    let (node, _cfg) = start_node("fragmentation");
    run_category("5 fragmentation", fragmentation_cases(node.http)).await;
}

// ---------------------------------------------------------------------------------------
// 6 UTF-8.

/// Valid UTF-8 in a SEND's body, sent in text fragments cut at `cuts` (offsets into
/// the body), comes back byte for byte in a text message.
async fn utf8_valid_case(addr: SocketAddr, id: &str, body: Vec<u8>, cuts: Vec<usize>) -> Outcome {
    let topic = topic(id);
    let mut ws = Ws::stomp(addr, &topic).await?;
    let bytes = send_frame(&topic, &body);
    let head = bytes.len() - body.len() - 1;
    let cuts: Vec<usize> = cuts.iter().map(|c| head + c).collect();
    ws.send(&fragments(TEXT, &bytes, &cuts).concat()).await;
    ws.expect_message_op(&topic, &body, TEXT).await?;
    ws.close_clean().await
}

/// Invalid UTF-8 in a text message's body: close 1007, nothing delivered.
async fn utf8_invalid_case(addr: SocketAddr, id: &str, bad: &'static [u8]) -> Outcome {
    violation(
        addr,
        id,
        |t| {
            let mut body = b"invalid: ".to_vec();
            body.extend_from_slice(bad);
            body.extend_from_slice(b" end");
            text(&send_frame(t, &body))
        },
        1007,
    )
    .await
}

/// The byte offset of the first `c` in `s`.
fn at(s: &str, c: char) -> usize {
    s.find(c).expect("char in text")
}

fn utf8_cases(addr: SocketAddr) -> Vec<Case> {
    let mut cases = vec![
        case(
            "6.1.1",
            "two-byte sequences (κόσμε)",
            utf8_valid_case(addr, "6.1.1", "κόσμε".into(), vec![]),
        ),
        case(
            "6.1.2",
            "three-byte sequences (€, ∑, 中文)",
            utf8_valid_case(addr, "6.1.2", "€ ∑ 中文".into(), vec![]),
        ),
        case(
            "6.1.3",
            "four-byte sequences (𝄞, 😀)",
            utf8_valid_case(addr, "6.1.3", "𝄞 😀".into(), vec![]),
        ),
        case(
            "6.1.4",
            "boundary code points U+0080 U+07FF U+0800 U+FFFF U+10000 U+10FFFF",
            utf8_valid_case(
                addr,
                "6.1.4",
                "\u{80}\u{7FF}\u{800}\u{FFFF}\u{10000}\u{10FFFF}".into(),
                vec![],
            ),
        ),
        case(
            "6.1.5",
            "noncharacters and BOM (U+FFFE U+FDD0 U+FEFF) are valid UTF-8",
            utf8_valid_case(addr, "6.1.5", "\u{FFFE}\u{FDD0}\u{FEFF}".into(), vec![]),
        ),
        case(
            "6.1.6",
            "60,000 bytes of mixed one- to four-byte characters",
            utf8_valid_case(addr, "6.1.6", "aκ€𝄞".repeat(6000).into_bytes(), vec![]),
        ),
    ];
    let euro = "a€b";
    let split: [(&str, &str, String, Vec<usize>); 7] = [
        (
            "6.2.1",
            "two-byte κ split across fragments",
            "aκb".into(),
            vec![2],
        ),
        (
            "6.2.2",
            "three-byte € split after its first byte",
            euro.into(),
            vec![at(euro, '€') + 1],
        ),
        (
            "6.2.3",
            "three-byte € split after its second byte",
            euro.into(),
            vec![at(euro, '€') + 2],
        ),
        (
            "6.2.4",
            "four-byte 𝄞 in four one-byte fragments",
            "a𝄞b".into(),
            vec![2, 3, 4],
        ),
        (
            "6.2.5",
            "κόσμε one byte per fragment",
            "κόσμε".into(),
            (1..10).collect(),
        ),
        (
            "6.2.6",
            "every sequence of a mixed text cut in two",
            "aκ€𝄞z".repeat(3),
            (1..30).step_by(3).collect(),
        ),
        (
            "6.2.7",
            "a fragment boundary right after a whole sequence",
            "κ€".into(),
            vec![2],
        ),
    ];
    for (id, what, body, cuts) in split {
        cases.push(case(
            id,
            what,
            utf8_valid_case(addr, id, body.into_bytes(), cuts),
        ));
    }
    cases.push(case(
        "6.2.8",
        "€ split, with a ping between the fragments",
        async move {
            let topic = topic("6.2.8");
            let mut ws = Ws::stomp(addr, &topic).await?;
            let body = "x€y".as_bytes();
            let bytes = send_frame(&topic, body);
            let cut = bytes.len() - 1 - body.len() + 2;
            let mut frames = fragments(TEXT, &bytes, &[cut]);
            frames.insert(1, ping(b"mid-sequence"));
            ws.send(&frames.concat()).await;
            ws.expect_pong(b"mid-sequence").await?;
            ws.expect_message_op(&topic, body, TEXT).await?;
            ws.close_clean().await
        },
    ));
    cases.push(case(
        "6.2.9",
        "a fragment ending inside a sequence is valid so far: no close until it completes",
        async move {
            let topic = topic("6.2.9");
            let mut ws = Ws::stomp(addr, &topic).await?;
            let body = "x€y".as_bytes();
            let bytes = send_frame(&topic, body);
            let cut = bytes.len() - 1 - body.len() + 2;
            let frames = fragments(TEXT, &bytes, &[cut]);
            ws.send(&frames[0]).await;
            ws.expect_quiet(QUIET).await?;
            ws.send(&frames[1]).await;
            ws.expect_message_op(&topic, body, TEXT).await?;
            ws.close_clean().await
        },
    ));
    let invalid: [(&str, &str, &'static [u8]); 16] = [
        ("6.3.1", "0xFF", b"\xFF"),
        ("6.3.2", "0xFE", b"\xFE"),
        ("6.3.3", "a lone continuation byte 0x80", b"\x80"),
        ("6.3.4", "overlong two-byte / (C0 AF)", b"\xC0\xAF"),
        ("6.3.5", "overlong two-byte NUL (C0 80)", b"\xC0\x80"),
        ("6.3.6", "overlong two-byte C1 BF", b"\xC1\xBF"),
        ("6.3.7", "overlong three-byte / (E0 80 AF)", b"\xE0\x80\xAF"),
        (
            "6.3.8",
            "overlong four-byte / (F0 80 80 AF)",
            b"\xF0\x80\x80\xAF",
        ),
        ("6.3.9", "surrogate U+D800 (ED A0 80)", b"\xED\xA0\x80"),
        ("6.3.10", "surrogate U+DFFF (ED BF BF)", b"\xED\xBF\xBF"),
        (
            "6.3.11",
            "a surrogate pair in CESU form",
            b"\xED\xA0\x80\xED\xB0\x80",
        ),
        (
            "6.3.12",
            "above U+10FFFF (F4 90 80 80)",
            b"\xF4\x90\x80\x80",
        ),
        (
            "6.3.13",
            "five-byte form (F8 88 80 80 80)",
            b"\xF8\x88\x80\x80\x80",
        ),
        (
            "6.3.14",
            "a start byte followed by ASCII (E2 28 A1)",
            b"\xE2\x28\xA1",
        ),
        (
            "6.3.15",
            "a sequence cut short before ASCII (E2 82 20)",
            b"\xE2\x82 ",
        ),
        ("6.3.16", "0xC0 alone", b"\xC0"),
    ];
    for (id, what, bad) in invalid {
        cases.push(case(
            id,
            format!("invalid UTF-8 in a text message, {what}: close 1007"),
            utf8_invalid_case(addr, id, bad),
        ));
    }
    cases.push(case(
        "6.3.17",
        "a text message ending inside a sequence (E2 82 then FIN): close 1007",
        async move {
            violation(
                addr,
                "6.3.17",
                |t| {
                    let mut b = frame(false, 0, TEXT, &send_frame(t, b"whole")[..10]);
                    b.extend(frame(true, 0, CONT, b"\xE2\x82"));
                    b
                },
                1007,
            )
            .await
        },
    ));
    // Invalid in a fragment before FIN: the close comes without waiting for the rest.
    let before_fin: [(&str, &str, &'static [u8], &'static [u8]); 4] = [
        ("6.4.1", "in the first fragment", b"\xFF", b""),
        (
            "6.4.2",
            "in a middle fragment after a valid one",
            b"valid",
            b"\xC0\xAF",
        ),
        (
            "6.4.3",
            "a sequence begun in one fragment, broken in the next",
            b"\xE2",
            b"\x28\xA1",
        ),
        (
            "6.4.4",
            "a surrogate split across fragments",
            b"\xED",
            b"\xA0\x80",
        ),
    ];
    for (id, what, first, second) in before_fin {
        cases.push(case(
            id,
            format!("invalid UTF-8 {what}, no FIN yet: close 1007 at once"),
            async move {
                let topic = topic(id);
                let mut ws = Ws::stomp(addr, &topic).await?;
                let mut start = format!("SEND\ndestination:{topic}\n\n").into_bytes();
                start.extend_from_slice(first);
                let mut b = frame(false, 0, TEXT, &start);
                if !second.is_empty() {
                    b.extend(frame(false, 0, CONT, second));
                }
                ws.send(&b).await;
                ws.expect_close(1007).await
            },
        ));
    }
    cases.push(case(
        "6.5",
        "invalid UTF-8 in a binary message is data: delivered",
        fragmented_case(
            addr,
            "6.5",
            BINARY,
            b"\xFF\xFE\xC0\xAF\xED\xA0\x80".to_vec(),
            |_| vec![],
            None,
            None,
        ),
    ));
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn category_6_utf8() {
    let (node, _cfg) = start_node("utf8");
    run_category("6 UTF-8", utf8_cases(node.http)).await;
}

// ---------------------------------------------------------------------------------------
// 7 Close handling.

/// The client closes with `payload`: the node answers close `want` (any of them) and
/// ends the stream.
async fn close_case(addr: SocketAddr, payload: Vec<u8>, want: &'static [Option<u16>]) -> Outcome {
    let mut ws = Ws::open(addr).await?;
    ws.connect().await?;
    ws.send(&frame(true, 0, CLOSE, &payload)).await;
    match ws.next(TIMEOUT).await {
        Got::Close(code, _) if want.contains(&code) => ws.expect_eof().await,
        other => Err(format!("expected close {want:?}, got {other:?}")),
    }
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

fn close_cases(addr: SocketAddr) -> Vec<Case> {
    let mut cases = vec![
        case(
            "7.1.1",
            "close without payload: a close back (no code or 1000), then the end",
            close_case(addr, vec![], &[None, Some(1000)]),
        ),
        case(
            "7.1.2",
            "close 1000: echoed",
            close_case(addr, close_payload(1000, b""), &[Some(1000)]),
        ),
        case(
            "7.1.3",
            "close 1000 with a reason: code echoed",
            close_case(addr, close_payload(1000, b"bye"), &[Some(1000)]),
        ),
        case(
            "7.1.4",
            "close with a 123-byte reason (the most a control frame holds): code echoed",
            close_case(addr, close_payload(1000, &text_body(123)), &[Some(1000)]),
        ),
        case(
            "7.1.5",
            "close with a 1-byte payload: close 1002",
            close_case(addr, vec![0x03], &[Some(1002)]),
        ),
        case(
            "7.1.6",
            "close with a 124-byte reason (126-byte payload): close 1002",
            async move { violation(addr, "7.1.6", |_| close(1000, &text_body(124)), 1002).await },
        ),
        case(
            "7.1.7",
            "close reason that is not UTF-8: close 1007",
            close_case(
                addr,
                close_payload(1000, b"bad \xFF\xFE reason"),
                &[Some(1007)],
            ),
        ),
        case(
            "7.1.8",
            "close reason with a multi-byte character: code echoed",
            close_case(
                addr,
                close_payload(1001, "au revoir, κόσμε".as_bytes()),
                &[Some(1001)],
            ),
        ),
        case(
            "7.1.9",
            "nothing is processed after the close: SEND and ping in the same write go nowhere",
            async move {
                let watched = topic("7.1.9");
                let mut watcher = Ws::stomp(addr, &watched).await?;
                let mut ws = Ws::stomp(addr, &topic("7.1.9.own")).await?;
                let mut b = close(1000, b"");
                b.extend(text(&send_frame(&watched, b"after the close")));
                b.extend(ping(b"after the close"));
                ws.send(&b).await;
                ws.expect_close(1000).await?;
                watcher.expect_quiet(QUIET).await?;
                watcher.close_clean().await
            },
        ),
        case(
            "7.1.10",
            "nothing is processed after the close: a SEND in a later write goes nowhere",
            async move {
                let watched = topic("7.1.10");
                let mut watcher = Ws::stomp(addr, &watched).await?;
                let mut ws = Ws::stomp(addr, &topic("7.1.10.own")).await?;
                ws.send(&close(1000, b"")).await;
                ws.send(&text(&send_frame(&watched, b"after the close")))
                    .await;
                ws.expect_close(1000).await?;
                watcher.expect_quiet(QUIET).await?;
                watcher.close_clean().await
            },
        ),
        case(
            "7.1.11",
            "a SEND in the same write before the close is delivered, then the close echoed",
            async move {
                let watched = topic("7.1.11");
                let mut watcher = Ws::stomp(addr, &watched).await?;
                let mut ws = Ws::stomp(addr, &topic("7.1.11.own")).await?;
                let mut b = text(&send_frame(&watched, b"last words"));
                b.extend(close(1000, b""));
                ws.send(&b).await;
                ws.expect_close(1000).await?;
                watcher
                    .expect_message_op(&watched, b"last words", TEXT)
                    .await?;
                watcher.close_clean().await
            },
        ),
        case(
            "7.1.12",
            "two close frames: one echo, then the end",
            async move {
                let mut ws = Ws::open(addr).await?;
                ws.connect().await?;
                let mut b = close(1000, b"");
                b.extend(close(1001, b""));
                ws.send(&b).await;
                ws.expect_close(1000).await
            },
        ),
        case(
            "7.1.13",
            "close right after the handshake, before CONNECT: echoed",
            async move {
                let mut ws = Ws::open(addr).await?;
                ws.close_clean().await
            },
        ),
    ];
    let valid = [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000,
        4999,
    ];
    for (i, code) in valid.into_iter().enumerate() {
        cases.push(case(
            format!("7.2.{}", i + 1),
            format!("close code {code}: echoed"),
            async move {
                let mut ws = Ws::open(addr).await?;
                ws.connect().await?;
                ws.send(&close(code, b"")).await;
                ws.expect_close(code).await
            },
        ));
    }
    let invalid = [
        0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65_535,
    ];
    for (i, code) in invalid.into_iter().enumerate() {
        cases.push(case(
            format!("7.3.{}", i + 1),
            format!("close code {code} (not to be sent): close 1002"),
            async move {
                let mut ws = Ws::open(addr).await?;
                ws.connect().await?;
                ws.send(&close(code, b"")).await;
                ws.expect_close(1002).await
            },
        ));
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn category_7_close() {
    let (node, _cfg) = start_node("close");
    run_category("7 close", close_cases(node.http)).await;
}

// ---------------------------------------------------------------------------------------
// 9 Limits: a message over `limits.max_frame_bytes` gets a STOMP ERROR, then close
// 1009; the length is checked from the frame header, before any payload.

const TOO_LARGE: &str = "frame too large";

/// `bytes` (over the limit): ERROR then close 1009, without the node needing more.
/// The connection does not subscribe to the topic its SENDs go to: whole SENDs before
/// the point where the limit is passed are carried out, and bring nothing back.
async fn too_big_case(addr: SocketAddr, id: &str, bytes: impl FnOnce(&str) -> Vec<u8>) -> Outcome {
    let mut ws = Ws::open(addr).await?;
    ws.connect().await?;
    ws.send(&bytes(&topic(id))).await;
    ws.expect_error_close(TOO_LARGE, 1009).await
}

fn limit_cases(addr: SocketAddr) -> Vec<Case> {
    vec![
        case(
            "9.1",
            format!("text message of exactly {LIMIT} bytes: accepted"),
            data_case(addr, "9.1".into(), LIMIT, false, None),
        ),
        case(
            "9.2",
            format!("binary message of exactly {LIMIT} bytes: accepted"),
            data_case(addr, "9.2".into(), LIMIT, true, None),
        ),
        case(
            "9.3",
            format!(
                "text message of {} bytes, payload sent: ERROR, close 1009",
                LIMIT + 1
            ),
            too_big_case(addr, "9.3", |t| text(&sends_of_len(t, LIMIT + 1, false).0)),
        ),
        case(
            "9.4",
            format!(
                "only the header of a {}-byte text frame: ERROR, close 1009",
                LIMIT + 1
            ),
            too_big_case(addr, "9.4", |_| header_only(true, TEXT, LIMIT as u64 + 1)),
        ),
        case(
            "9.5",
            format!(
                "only the header of a {}-byte binary frame: ERROR, close 1009",
                LIMIT + 1
            ),
            too_big_case(addr, "9.5", |_| header_only(true, BINARY, LIMIT as u64 + 1)),
        ),
        case(
            "9.6",
            "only the header of a 4 GiB frame: ERROR, close 1009",
            too_big_case(addr, "9.6", |_| header_only(true, BINARY, 1 << 32)),
        ),
        case(
            "9.7",
            "only the header of a 2^63-1-byte frame: ERROR, close 1009",
            too_big_case(addr, "9.7", |_| header_only(true, TEXT, (1 << 63) - 1)),
        ),
        case(
            "9.8",
            "only the header of a 65535-byte first fragment (under the limit): waits, no close",
            async move {
                let topic = topic("9.8");
                let mut ws = Ws::stomp(addr, &topic).await?;
                ws.send(&header_only(false, TEXT, 65_535)).await;
                ws.expect_quiet(QUIET).await
            },
        ),
        case(
            "9.9",
            format!("two fragments adding up to exactly {LIMIT} bytes: accepted"),
            async move {
                let topic = topic("9.9");
                let mut ws = Ws::stomp(addr, &topic).await?;
                let (bytes, bodies) = sends_of_len(&topic, LIMIT, false);
                ws.send(&fragments(TEXT, &bytes, &[70_000]).concat()).await;
                for b in &bodies {
                    ws.expect_message_op(&topic, b, TEXT).await?;
                }
                ws.close_clean().await
            },
        ),
        case(
            "9.10",
            "a 70,000-byte fragment, then the header of a 70,000-byte continuation: 1009",
            too_big_case(addr, "9.10", |t| {
                let (bytes, _) = sends_of_len(t, 70_000, false);
                let mut b = frame(false, 0, TEXT, &bytes);
                b.extend(header_only(true, CONT, 70_000));
                b
            }),
        ),
        case(
            "9.11",
            "16 KiB fragments until the sum passes the limit: 1009 at the one that does",
            too_big_case(addr, "9.11", |t| {
                let (bytes, _) = sends_of_len(t, 9 * 16_384, false);
                let cuts: Vec<usize> = (1..9).map(|i| i * 16_384).collect();
                fragments(TEXT, &bytes, &cuts).concat()
            }),
        ),
        case(
            "9.12",
            "a ping between fragments does not reset the message's size: pong, then 1009",
            async move {
                let mut ws = Ws::open(addr).await?;
                ws.connect().await?;
                let (bytes, _) = sends_of_len(&topic("9.12"), 100_000, false);
                let mut b = frame(false, 0, TEXT, &bytes);
                b.extend(ping(b"in between"));
                b.extend(header_only(true, CONT, 40_000));
                ws.send(&b).await;
                ws.expect_pong(b"in between").await?;
                ws.expect_error_close(TOO_LARGE, 1009).await
            },
        ),
        case(
            "9.13",
            "64-bit length with the most significant bit set: the connection is failed",
            async move {
                let topic = topic("9.13");
                let mut ws = Ws::stomp(addr, &topic).await?;
                ws.send(&header_only(true, TEXT, (1 << 63) | 5)).await;
                // An ERROR may come first (the node counts it as too large).
                let next = match ws.next(TIMEOUT).await {
                    Got::Frame(f) if f.opcode == TEXT => {
                        let e = parse_stomp(&f.payload)?;
                        ensure!(e.command == Command::Error, "got {e:?}");
                        ws.next(TIMEOUT).await
                    }
                    other => other,
                };
                match next {
                    Got::Close(Some(1002 | 1009), _) => ws.expect_eof().await,
                    other => Err(format!("expected close 1002 or 1009, got {other:?}")),
                }
            },
        ),
        case(
            "9.14",
            format!(
                "a {LIMIT}-byte message, then a {}-byte one: the first delivered, then 1009",
                LIMIT + 1
            ),
            async move {
                let topic = topic("9.14");
                let mut ws = Ws::stomp(addr, &topic).await?;
                let (bytes, bodies) = sends_of_len(&topic, LIMIT, false);
                ws.send(&text(&bytes)).await;
                for b in &bodies {
                    ws.expect_message_op(&topic, b, TEXT).await?;
                }
                ws.send(&header_only(true, TEXT, LIMIT as u64 + 1)).await;
                ws.expect_error_close(TOO_LARGE, 1009).await
            },
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn category_9_limits() {
    let (node, _cfg) = start_node("limits");
    run_category("9 limits", limit_cases(node.http)).await;
}

// ---------------------------------------------------------------------------------------
// 10 Masking: client frames must be masked (RFC 6455 5.1, 5.3).

fn masking_cases(addr: SocketAddr) -> Vec<Case> {
    vec![
        case(
            "10.1",
            "unmasked text frame: close 1002, not delivered",
            async move {
                violation(
                    addr,
                    "10.1",
                    |t| raw_frame(true, 0, TEXT, &send_frame(t, b"x"), None),
                    1002,
                )
                .await
            },
        ),
        case("10.2", "unmasked binary frame: close 1002", async move {
            violation(
                addr,
                "10.2",
                |t| raw_frame(true, 0, BINARY, &send_frame(t, b"x"), None),
                1002,
            )
            .await
        }),
        case("10.3", "unmasked ping: close 1002, no pong", async move {
            violation(addr, "10.3", |_| raw_frame(true, 0, PING, b"x", None), 1002).await
        }),
        case("10.4", "unmasked close: close 1002", async move {
            violation(
                addr,
                "10.4",
                |_| raw_frame(true, 0, CLOSE, &1000u16.to_be_bytes(), None),
                1002,
            )
            .await
        }),
        case(
            "10.5",
            "an unmasked continuation in a masked message: close 1002",
            async move {
                let bad = |t: &str| {
                    let s = send_frame(t, b"x");
                    let mut b = frame(false, 0, TEXT, &s[..6]);
                    b.extend(raw_frame(true, 0, CONT, &s[6..], None));
                    b
                };
                violation(addr, "10.5", bad, 1002).await
            },
        ),
        case(
            "10.6",
            "a masked message, then an unmasked one: MESSAGE, then close 1002",
            async move {
                violation_after_message(
                    addr,
                    "10.6",
                    |t| raw_frame(true, 0, TEXT, &send_frame(t, b"x"), None),
                    1002,
                )
                .await
            },
        ),
        case(
            "10.7",
            "the all-zero masking key is a key: delivered",
            async move {
                let topic = topic("10.7");
                let mut ws = Ws::stomp(addr, &topic).await?;
                let f = raw_frame(
                    true,
                    0,
                    TEXT,
                    &send_frame(&topic, b"zero mask"),
                    Some([0; 4]),
                );
                ws.send(&f).await;
                ws.expect_message_op(&topic, b"zero mask", TEXT).await?;
                ws.close_clean().await
            },
        ),
        case(
            "10.8",
            "a different key on every fragment: delivered",
            fragmented_case(
                addr,
                "10.8",
                TEXT,
                text_body(64),
                |n| (1..n).step_by(7).collect(),
                None,
                None,
            ),
        ),
        case(
            "10.9",
            "an unmasked frame's header alone is enough: close 1002",
            async move {
                let topic = topic("10.9");
                let mut ws = Ws::stomp(addr, &topic).await?;
                ws.send(&header(true, 0, TEXT, 50, None)).await;
                ws.expect_close(1002).await
            },
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn category_10_masking() {
    let (node, _cfg) = start_node("masking");
    run_category("10 masking", masking_cases(node.http)).await;
}

#[test]
fn sha1_and_base64_match_their_test_vectors() {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(
        hex(&sha1(b"abc")),
        "a9993e364706816aba3e25717850c26c9cd0d89d"
    );
    assert_eq!(hex(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    assert_eq!(
        hex(&sha1(&[b'a'; 1_000])),
        "291e9a6c66994949b57ba5e650361e98fc36b1ba"
    );
    assert_eq!(base64(b"foob"), "Zm9vYg==");
    assert_eq!(base64(b"fooba"), "Zm9vYmE=");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    assert_eq!(
        accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}
