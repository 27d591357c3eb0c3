//! The node's own WebSocket implementation against independent client implementations:
//! headless Chromium (playwright-core), Node's `ws` package, Python's `websockets` and
//! tungstenite (Rust). Each speaks STOMP over `v12.stomp` and exchanges messages of every
//! length class both ways: client to node messages whose WebSocket payload is exactly
//! 0 (accepted and ignored), 125, 126, 65535, 65536 bytes and the node's limit
//! (`limits.max_frame_bytes`), and node to client MESSAGE frames that straddle the same
//! boundaries (124 to 127, 65535 to 65537, the limit and one under it), checked byte for
//! byte by the client.
//!
//! One plan, built here, drives all four: the exact bytes to send (frame heads and body
//! lengths; bodies follow `text_body`, which each script has too) and the length of
//! every MESSAGE that must come back. A MESSAGE's length depends on its message-id, so
//! the plan is made for a fresh node after one calibrating publish: the node numbers
//! records one by one and the client's SENDs are the only records after it.
//! The scripts live in `tests/clients/` (`install.sh` installs their packages).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

/// The node's message limit, `limits.max_frame_bytes` (its default, set explicitly).
const LIMIT: usize = 131_072;
const TOPIC: &str = "/topic/interop.lengths";

/// Client to node: WebSocket payload lengths.
const CLIENT_LENGTHS: [usize; 6] = [0, 125, 126, 65_535, 65_536, LIMIT];
/// Node to client: MESSAGE lengths on both sides of each boundary of the length
/// encoding (7-bit up to 125, 16-bit up to 65535, 64-bit) and at the limit.
const NODE_LENGTHS: [usize; 9] = [124, 125, 126, 127, 65_535, 65_536, 65_537, LIMIT - 1, LIMIT];

/// What the scripts get (as JSON) and the Rust client runs.
#[derive(Serialize)]
struct Plan {
    connect: String,
    subscribe: String,
    disconnect: String,
    steps: Vec<Step>,
}

/// One case: messages to send, then the receipts and MESSAGEs (in order) to wait for.
#[derive(Serialize)]
struct Step {
    name: String,
    send: Vec<Outgoing>,
    receipts: Vec<String>,
    expect: Vec<Incoming>,
}

/// One WebSocket message of `len` bytes: STOMP frames, each `head`, a body of `body`
/// bytes (`text_body`) and a NUL.
#[derive(Serialize)]
struct Outgoing {
    len: usize,
    frames: Vec<Part>,
}

#[derive(Serialize)]
struct Part {
    head: String,
    body: usize,
}

/// A MESSAGE: the WebSocket payload's length and its body's (`text_body`).
#[derive(Serialize)]
struct Incoming {
    len: usize,
    body: usize,
}

/// Bodies: printable ASCII that moves along with the position; the scripts compute
/// the same.
fn text_body(n: usize) -> Vec<u8> {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|i| ALNUM[(i * 7 + (i >> 8) + n) % ALNUM.len()])
        .collect()
}

fn digits(n: usize) -> usize {
    n.to_string().len()
}

/// `(pad, body)` with `pad + digits(body) + body == rest`; pad 0 or at least 4.
fn solve(rest: usize) -> (usize, usize) {
    [0, 4, 5, 6, 7, 8, 9, 10]
        .into_iter()
        .find_map(|pad| {
            let r = rest.checked_sub(pad)?;
            (1..=7)
                .filter(|d| r >= *d)
                .find(|d| digits(r - d) == *d)
                .map(|d| (pad, r - d))
        })
        .expect("a body size")
}

fn pad_header(len: usize) -> String {
    match len {
        0 => String::new(),
        n => format!("p:{}\n", "x".repeat(n - 3)),
    }
}

/// What a MESSAGE to the subscription costs besides its id, content-length value and
/// body (measured), and the ids the node gives next.
struct Ids {
    base: usize,
    prefix: String,
    next: u64,
}

impl Ids {
    /// The length of the MESSAGE for the next SEND (pad header and body as given).
    fn message_len(&mut self, pad: usize, body: usize) -> usize {
        let id = format!("{}{}", self.prefix, self.next);
        self.next += 1;
        self.base + id.len() + pad + digits(body) + body
    }

    /// The id length the next SEND's MESSAGE gets, without taking it.
    fn next_id_len(&self) -> usize {
        self.prefix.len() + self.next.to_string().len()
    }
}

fn subscribe_frame() -> String {
    format!("SUBSCRIBE\nid:0\ndestination:{TOPIC}\nreceipt:sub\n\n\0")
}

/// The node: frame rate off, bodies up to the limit so a MESSAGE can reach it.
fn start_node(client: &str) -> (Node, TempConfig) {
    node_at_message_limit(&format!("ws-interop-{client}"), LIMIT)
}

async fn open(url: &str) -> (Ws, Option<String>) {
    ws_open(url, Some("v12.stomp")).await
}

/// The next data message's bytes.
async fn recv(ws: &mut Ws) -> Result<Vec<u8>, String> {
    loop {
        let next = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .map_err(|_| "nothing came within the timeout".to_string())?;
        match next {
            Some(Ok(Message::Text(t))) => return Ok(t.as_bytes().to_vec()),
            Some(Ok(Message::Binary(b))) => return Ok(b.to_vec()),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(c))) => return Err(format!("closed: {c:?}")),
            Some(Err(e)) => return Err(format!("error: {e}")),
            None => return Err("the stream ended".into()),
        }
    }
}

/// A STOMP frame from the node (one per WebSocket message).
#[derive(Debug)]
struct Stomp {
    command: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Stomp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn parse(data: &[u8]) -> Result<Stomp, String> {
    let end = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .filter(|_| data.last() == Some(&0))
        .ok_or_else(|| {
            format!(
                "not a STOMP frame: {:?}",
                String::from_utf8_lossy(&data[..data.len().min(80)])
            )
        })?;
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let mut lines = head.split('\n');
    let command = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok(Stomp {
        command,
        headers,
        body: data[end + 2..data.len() - 1].to_vec(),
    })
}

/// Publishes once over HTTP to a fresh node and measures the MESSAGE it makes: the
/// plan's sizes follow from it.
async fn calibrate(node: &Node) -> Ids {
    ready(node).await;
    let (mut ws, _) = open(&node.ws_url()).await;
    ws.send(Message::text(
        "CONNECT\naccept-version:1.2\nhost:x\nheart-beat:0,0\n\n\0",
    ))
    .await
    .expect("send");
    let f = parse(&recv(&mut ws).await.expect("CONNECTED")).expect("frame");
    assert_eq!(f.command, "CONNECTED");
    ws.send(Message::text(subscribe_frame()))
        .await
        .expect("send");
    let f = parse(&recv(&mut ws).await.expect("RECEIPT")).expect("frame");
    assert_eq!(f.command, "RECEIPT");
    let (status, answer) = publish(node.http, TOPIC, "probe").await;
    assert_eq!(status, 202, "{answer}");
    let id: serde_json::Value = serde_json::from_str(&answer).expect("json");
    let id = id["id"].as_str().expect("id").to_string();
    let data = recv(&mut ws).await.expect("MESSAGE");
    let f = parse(&data).expect("frame");
    assert_eq!(
        (f.command.as_str(), &f.body[..]),
        ("MESSAGE", &b"probe"[..])
    );
    assert_eq!(f.header("message-id"), Some(id.as_str()));
    let _ = ws.close(None).await;
    let (prefix, seq) = id.rsplit_once('-').expect("an id ending in a number");
    Ids {
        base: data.len() - id.len() - 1 - 5,
        prefix: format!("{prefix}-"),
        next: seq.parse::<u64>().expect("number") + 1,
    }
}

/// The plan for a node whose next ids `ids` tells.
fn plan(mut ids: Ids) -> Plan {
    let send_head = |receipt: Option<&str>, pad: usize| {
        let r = receipt.map_or(String::new(), |r| format!("receipt:{r}\n"));
        format!("SEND\ndestination:{TOPIC}\n{r}{}\n", pad_header(pad))
    };
    let mut steps = Vec::new();
    for len in CLIENT_LENGTHS {
        let name = format!("client to node {len}");
        let receipt = format!("c2n-{len}");
        let mut step = Step {
            name,
            send: Vec::new(),
            receipts: vec![receipt.clone()],
            expect: Vec::new(),
        };
        // Each SEND's MESSAGE stays under the limit: the limit takes two.
        let sizes: Vec<usize> = match len {
            0 => {
                step.send.push(Outgoing {
                    len: 0,
                    frames: Vec::new(),
                });
                // Then a small one: the connection is still usable.
                vec![send_head(Some(&receipt), 0).len() + 17]
            }
            LIMIT => vec![LIMIT / 2, LIMIT / 2],
            n => vec![n],
        };
        let mut frames = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            let last = i + 1 == sizes.len();
            let head = send_head(last.then_some(receipt.as_str()), 0);
            let body = size - head.len() - 1;
            step.expect.push(Incoming {
                len: ids.message_len(0, body),
                body,
            });
            frames.push(Part { head, body });
        }
        let total = sizes.iter().sum();
        step.send.push(Outgoing {
            len: if len == 0 { total } else { len },
            frames,
        });
        steps.push(step);
    }
    for len in NODE_LENGTHS {
        let receipt = format!("n2c-{len}");
        let (pad, body) = solve(len - ids.base - ids.next_id_len());
        let head = send_head(Some(&receipt), pad);
        let message = ids.message_len(pad, body);
        assert_eq!(message, len, "plan sizing");
        steps.push(Step {
            name: format!("node to client {len}"),
            send: vec![Outgoing {
                len: head.len() + body + 1,
                frames: vec![Part { head, body }],
            }],
            receipts: vec![receipt],
            expect: vec![Incoming { len, body }],
        });
    }
    Plan {
        connect: "CONNECT\naccept-version:1.2\nhost:x\nheart-beat:0,0\n\n\0".into(),
        subscribe: subscribe_frame(),
        disconnect: "DISCONNECT\nreceipt:bye\n\n\0".into(),
        steps,
    }
}

fn expected_lines(plan: &Plan) -> Vec<String> {
    let mut lines: Vec<String> = ["subprotocol v12.stomp", "connect", "subscribe"]
        .iter()
        .map(|s| format!("ok - {s}"))
        .collect();
    lines.extend(plan.steps.iter().map(|s| format!("ok - {}", s.name)));
    lines.push("ok - disconnect".into());
    lines
}

/// Every expected line, in order, and no failure.
fn check(client: &str, stdout: &str, plan: &Plan) {
    let got: Vec<&str> = stdout.lines().filter(|l| l.starts_with("ok - ")).collect();
    let want = expected_lines(plan);
    assert!(!stdout.contains("not ok"), "{client}:\n{stdout}");
    assert_eq!(got, want, "{client}:\n{stdout}");
    for line in stdout.lines() {
        println!("{client}: {line}");
    }
    let version = stdout
        .lines()
        .find_map(|l| l.strip_prefix("# client "))
        .unwrap_or(client);
    println!(
        "websocket interop | {version} | {} of {} cases",
        got.len(),
        want.len()
    );
}

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Runs a script with the node's URL and the plan; its stdout.
fn run_script(program: &str, script: &str, node: &Node, plan: &Plan) -> String {
    let plan = serde_json::to_string(plan).expect("plan json");
    let out = Command::new(program)
        .arg(clients_dir().join(script))
        .arg(node.ws_url())
        .arg(plan)
        .current_dir(clients_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} (run crates/cli/tests/clients/install.sh): {e}")
        });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn script_client(client: &str, program: &str, script: &str) {
    let (node, _cfg) = start_node(client);
    let plan = plan(calibrate(&node).await);
    let stdout = tokio::task::block_in_place(|| run_script(program, script, &node, &plan));
    check(client, &stdout, &plan);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_headless() {
    script_client("chromium", "node", "ws_lengths_chromium.mjs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ws_package() {
    script_client("ws", "node", "ws_lengths_ws.mjs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets() {
    script_client("websockets", "python3", "ws_lengths_websockets.py").await;
}

/// The same plan with tokio-tungstenite's client, in the test itself.
async fn run_tungstenite(url: &str, plan: &Plan) -> Result<Vec<String>, (Vec<String>, String)> {
    let mut lines = Vec::new();
    let (mut ws, protocol) = open(url).await;
    macro_rules! fail {
        ($case:expr, $($arg:tt)+) => {
            return Err((lines, format!("{}: {}", $case, format!($($arg)+))))
        };
    }
    macro_rules! tried {
        ($case:expr, $e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => fail!($case, "{e}"),
            }
        };
    }
    if protocol.as_deref() != Some("v12.stomp") {
        fail!("subprotocol", "{protocol:?}");
    }
    lines.push("ok - subprotocol v12.stomp".to_string());
    for (case, frame, want) in [
        ("connect", &plan.connect, "CONNECTED"),
        ("subscribe", &plan.subscribe, "RECEIPT"),
    ] {
        tried!(case, ws.send(Message::text(frame.clone())).await);
        let f = tried!(case, parse(&tried!(case, recv(&mut ws).await)));
        if f.command != want {
            fail!(case, "expected {want}, got {}", f.command);
        }
        lines.push(format!("ok - {case}"));
    }
    for step in &plan.steps {
        let case = &step.name;
        for out in &step.send {
            let mut data = Vec::new();
            for p in &out.frames {
                data.extend_from_slice(p.head.as_bytes());
                data.extend(text_body(p.body));
                data.push(0);
            }
            if data.len() != out.len {
                fail!(
                    case,
                    "built {} bytes, the plan says {}",
                    data.len(),
                    out.len
                );
            }
            let text = tried!(case, String::from_utf8(data));
            tried!(case, ws.send(Message::text(text)).await);
        }
        let mut receipts: Vec<&str> = step.receipts.iter().map(String::as_str).collect();
        let mut expect = step.expect.iter();
        let mut pending = step.expect.len();
        while !receipts.is_empty() || pending > 0 {
            let data = tried!(case, recv(&mut ws).await);
            let f = tried!(case, parse(&data));
            let receipt = f.header("receipt-id");
            if f.command == "RECEIPT" && receipt.is_some_and(|r| receipts.contains(&r)) {
                receipts.retain(|r| Some(*r) != receipt);
            } else if f.command == "MESSAGE" && pending > 0 {
                pending -= 1;
                let e = expect.next().expect("an expected MESSAGE");
                if data.len() != e.len {
                    fail!(case, "MESSAGE of {} bytes, expected {}", data.len(), e.len);
                }
                if f.body != text_body(e.body) {
                    fail!(
                        case,
                        "body of {} bytes differs from the {} expected",
                        f.body.len(),
                        e.body
                    );
                }
            } else {
                fail!(case, "unexpected {f:?}");
            }
        }
        lines.push(format!("ok - {case}"));
    }
    tried!(
        "disconnect",
        ws.send(Message::text(plan.disconnect.clone())).await
    );
    let f = tried!(
        "disconnect",
        parse(&tried!("disconnect", recv(&mut ws).await))
    );
    if f.command != "RECEIPT" {
        fail!("disconnect", "expected RECEIPT, got {}", f.command);
    }
    let _ = ws.close(None).await;
    lines.push("ok - disconnect".to_string());
    Ok(lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_tungstenite() {
    let (node, _cfg) = start_node("tungstenite");
    let plan = plan(calibrate(&node).await);
    let mut stdout = String::from("# client tungstenite (tokio-tungstenite 0.29)\n");
    match run_tungstenite(&node.ws_url(), &plan).await {
        Ok(lines) => stdout.extend(lines.iter().map(|l| format!("{l}\n"))),
        Err((lines, why)) => {
            stdout.extend(lines.iter().map(|l| format!("{l}\n")));
            stdout.push_str(&format!("not ok - {why}\n"));
        }
    }
    check("tungstenite", &stdout, &plan);
}

/// The plan's sizes add up (no node needed).
#[test]
fn the_plan_is_exact() {
    let plan = plan(Ids {
        base: 70,
        prefix: "node-1-".into(),
        next: 2,
    });
    for step in &plan.steps {
        for out in &step.send {
            let built: usize = out.frames.iter().map(|p| p.head.len() + p.body + 1).sum();
            assert_eq!(built, out.len, "{}", step.name);
        }
    }
    let lens: Vec<usize> = plan
        .steps
        .iter()
        .flat_map(|s| s.send.iter().map(|o| o.len))
        .collect();
    for len in CLIENT_LENGTHS {
        assert!(lens.contains(&len), "{len}");
    }
    let messages: Vec<usize> = plan
        .steps
        .iter()
        .flat_map(|s| s.expect.iter().map(|e| e.len))
        .collect();
    for len in NODE_LENGTHS {
        assert!(messages.contains(&len), "{len}");
    }
    assert!(messages.iter().all(|&m| m <= LIMIT));
}
