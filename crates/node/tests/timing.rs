//! The node's timing rules, run in-process with paused time: heart-beats both ways, the
//! CONNECT timeout, the idle limit, `write_delay` and the drain grace. Each test runs on
//! a current-thread runtime (`#[tokio::test]`'s default) with the clock paused, so a
//! rule measured in seconds takes milliseconds and its timing is exact: when every
//! task waits, tokio moves the clock to the next timer. The node's own tasks are kept on
//! that runtime because `Server::bind` and `Server::run` are called inside it: every
//! `tokio::spawn` of the node (listeners, connections, report loop) lands there, and the
//! in-memory bus delivers on the publisher's task. Clients speak raw STOMP over the
//! node's TCP listener (and one over WebSocket) on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pushcenter_node::{MemoryBus, MemoryRegistrar, NodeConfig, Server};
use pushcenter_stomp::{Command, Frame, Item, Limits, Version, decode, encode};
use pushcenter_websocket::frame::BINARY;
use pushcenter_websocket::{Got, Reader, put_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A node serving on loopback; dropping `stop` (or sending on it) starts its drain.
struct Node {
    tcp: SocketAddr,
    http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    run: JoinHandle<()>,
}

async fn start(tune: impl FnOnce(&mut NodeConfig)) -> Node {
    let mut cfg = NodeConfig {
        node_id: "t1".into(),
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        tcp_addr: Some("127.0.0.1:0".parse().expect("addr")),
        client_send: true,
        ..NodeConfig::default()
    };
    tune(&mut cfg);
    let bus = Arc::new(MemoryBus::new("t1"));
    let server = Server::bind(cfg, bus, Arc::new(MemoryRegistrar::default()))
        .await
        .expect("bind");
    let tcp = server.tcp_addr().expect("tcp");
    let http = server.http_addr().expect("http");
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        server
            .run(async {
                let _ = stopped.await;
            })
            .await
            .expect("run");
    });
    Node {
        tcp,
        http,
        stop: Some(stop),
        run,
    }
}

/// The clock's largest jump past a socket event. With the clock paused, an idle runtime
/// moves it straight to the next timer, and a socket event that came meanwhile is only
/// handled after the jump: a timer at least every tick keeps each jump short.
const TICK: Duration = Duration::from_millis(5);

/// Reads once (`Some(0)`: the stream ended or failed), or `None` at `deadline`.
async fn read_by_ticks(s: &mut TcpStream, buf: &mut BytesMut, deadline: Instant) -> Option<usize> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        let tick = tokio::time::sleep_until(deadline.min(now + TICK));
        tokio::select! {
            r = s.read_buf(buf) => return Some(r.unwrap_or(0)),
            () = tick => {}
        }
    }
}

/// What a read brought: a frame, a heart-beat, the end of the stream, or nothing
/// before the deadline (the socket still open).
#[derive(Debug)]
enum Seen {
    Frame(Frame),
    HeartBeat,
    Closed,
    Silent,
}

struct Client {
    s: TcpStream,
    buf: BytesMut,
}

impl Client {
    async fn open(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.expect("connect");
        // Nagle would hold a small write until the last one is acknowledged, which
        // takes real milliseconds: an age on the paused clock.
        s.set_nodelay(true).expect("nodelay");
        Client {
            s,
            buf: BytesMut::new(),
        }
    }

    /// Opens and sends CONNECT with `heart_beat` ("cx,cy"); returns after CONNECTED.
    async fn connect(addr: SocketAddr, heart_beat: &str) -> Client {
        let mut c = Client::open(addr).await;
        c.send(
            &Frame::new(Command::Connect)
                .header("accept-version", "1.2")
                .header("host", "t")
                .header("heart-beat", heart_beat),
        )
        .await;
        match c.next(Duration::from_secs(1)).await {
            Seen::Frame(f) if f.command == Command::Connected => c,
            other => panic!("expected CONNECTED, got {other:?}"),
        }
    }

    async fn send(&mut self, f: &Frame) {
        let mut b = BytesMut::new();
        encode(f, Version::V1_2, &mut b).expect("encode");
        self.s.write_all(&b).await.expect("write");
    }

    async fn next(&mut self, within: Duration) -> Seen {
        let deadline = Instant::now() + within;
        loop {
            match decode(&mut self.buf, &Limits::default()) {
                Ok(Some(Item::Frame(f))) => return Seen::Frame(f),
                Ok(Some(Item::HeartBeat)) => return Seen::HeartBeat,
                Ok(None) => {}
                Err(e) => panic!("bad bytes from the node: {e}"),
            }
            if Instant::now() >= deadline {
                return Seen::Silent;
            }
            self.buf.reserve(64 * 1024);
            match read_by_ticks(&mut self.s, &mut self.buf, deadline).await {
                None => return Seen::Silent,
                Some(0) => return Seen::Closed,
                Some(_) => {}
            }
        }
    }

    async fn subscribe(&mut self, destination: &str) {
        self.send(
            &Frame::new(Command::Subscribe)
                .header("id", "s1")
                .header("destination", destination)
                .header("receipt", "r1"),
        )
        .await;
        match self.next(Duration::from_secs(1)).await {
            Seen::Frame(f) if f.command == Command::Receipt => {}
            other => panic!("expected RECEIPT, got {other:?}"),
        }
    }
}

fn expect_silent(seen: Seen) {
    assert!(
        matches!(seen, Seen::Silent),
        "expected silence, got {seen:?}"
    );
}

fn expect_error_then_close(seen: Seen, message: &str) -> Frame {
    match seen {
        Seen::Frame(f) if f.command == Command::Error => {
            let m = f.get("message").unwrap_or_default();
            assert!(m.contains(message), "ERROR message {m:?} lacks {message:?}");
            f
        }
        other => panic!("expected ERROR {message:?}, got {other:?}"),
    }
}

/// Within `d` of `want`: the clock is paused, so only scheduling slack (none) counts.
fn near(got: Duration, want: Duration) {
    let slack = Duration::from_millis(20);
    assert!(
        got + slack >= want && got <= want + slack,
        "took {got:?}, the rule says {want:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_node_sends_heart_beats_at_the_negotiated_interval() {
    let node = start(|c| c.heartbeat_send = Duration::from_secs(1)).await;
    // The client wants one every 3 s: the larger of the two wins (STOMP 1.2).
    let mut c = Client::connect(node.tcp, "0,3000").await;
    let t0 = Instant::now();
    expect_silent(c.next(Duration::from_millis(2900)).await);
    assert!(matches!(
        c.next(Duration::from_millis(200)).await,
        Seen::HeartBeat
    ));
    near(t0.elapsed(), Duration::from_secs(3));
    // And again, every 3 s while nothing else is written.
    assert!(matches!(
        c.next(Duration::from_millis(3100)).await,
        Seen::HeartBeat
    ));
    near(t0.elapsed(), Duration::from_secs(6));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_its_heart_beats_is_closed_after_twice_the_interval() {
    let node = start(|c| c.heartbeat_receive = Duration::from_secs(1)).await;
    // The client promises one every 2 s.
    let mut c = Client::connect(node.tcp, "2000,0").await;
    // Keeping the promise keeps the connection for as long as it is kept.
    for _ in 0..5 {
        expect_silent(c.next(Duration::from_millis(1900)).await);
        c.s.write_all(b"\n").await.expect("heart-beat");
    }
    let t0 = Instant::now();
    let seen = c.next(Duration::from_secs(10)).await;
    expect_error_then_close(seen, "heart-beat timeout");
    near(t0.elapsed(), Duration::from_secs(4));
    assert!(matches!(c.next(Duration::from_secs(1)).await, Seen::Closed));
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_sends_no_connect_is_closed_at_the_connect_timeout() {
    let node = start(|c| c.connect_timeout = Duration::from_secs(5)).await;
    let t0 = Instant::now();
    let mut c = Client::open(node.tcp).await;
    expect_silent(c.next(Duration::from_millis(4900)).await);
    match c.next(Duration::from_secs(1)).await {
        Seen::Closed => {}
        Seen::Frame(f) if f.command == Command::Error => {
            assert!(matches!(c.next(Duration::from_secs(1)).await, Seen::Closed));
        }
        other => panic!("expected the close, got {other:?}"),
    }
    near(t0.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_without_heart_beats_is_closed_at_the_idle_limit() {
    let node = start(|c| c.idle_timeout = Duration::from_secs(30)).await;
    let mut c = Client::connect(node.tcp, "0,0").await;
    // Anything the client sends restarts the limit.
    expect_silent(c.next(Duration::from_secs(20)).await);
    c.subscribe("/topic/a").await;
    let t0 = Instant::now();
    let seen = c.next(Duration::from_secs(60)).await;
    expect_error_then_close(seen, "idle timeout");
    near(t0.elapsed(), Duration::from_secs(30));
    assert!(matches!(c.next(Duration::from_secs(1)).await, Seen::Closed));
}

#[tokio::test(start_paused = true)]
async fn write_delay_batches_what_comes_within_it_and_a_quiet_connection_writes_at_once() {
    let delay = Duration::from_millis(200);
    let node = start(|c| c.write_delay = delay).await;
    let mut sub = Client::connect(node.tcp, "0,0").await;
    sub.subscribe("/topic/w").await;
    let mut publisher = Client::connect(node.tcp, "0,0").await;
    let send = |body: &'static str| {
        Frame::new(Command::Send)
            .header("destination", "/topic/w")
            .body(body.as_bytes().to_vec())
    };
    // Quiet for longer than the delay: the first message goes out at once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = Instant::now();
    publisher.send(&send("one")).await;
    match sub.next(Duration::from_millis(100)).await {
        Seen::Frame(f) if f.body == b"one"[..] => {}
        other => panic!("expected `one` at once, got {other:?}"),
    }
    near(t0.elapsed(), Duration::ZERO);
    // Two more within the delay: they wait for it and arrive in one write.
    tokio::time::sleep(Duration::from_millis(10)).await;
    publisher.send(&send("two")).await;
    publisher.send(&send("three")).await;
    expect_silent(sub.next(Duration::from_millis(150)).await);
    match sub.next(Duration::from_millis(100)).await {
        Seen::Frame(f) if f.body == b"two"[..] => {}
        other => panic!("expected `two` after the delay, got {other:?}"),
    }
    near(t0.elapsed(), delay);
    // `three` came with it: no second wait.
    match sub.next(Duration::from_millis(1)).await {
        Seen::Frame(f) if f.body == b"three"[..] => {}
        other => panic!("expected `three` in the same write, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn drain_tells_clients_to_leave_and_waits_at_most_the_grace_period() {
    let grace = Duration::from_secs(8);
    // Clients that read their ERROR are closed at once: the node stops long before the
    // grace is over.
    let mut node = start(|c| c.shutdown_grace = grace).await;
    let mut reads = Client::connect(node.tcp, "0,0").await;
    let t0 = Instant::now();
    drop(node.stop.take());
    let seen = reads.next(Duration::from_secs(1)).await;
    let f = expect_error_then_close(seen, "reconnect");
    assert!(f.get("message").is_some(), "{f:?}");
    assert!(matches!(
        reads.next(Duration::from_secs(1)).await,
        Seen::Closed
    ));
    let run = tokio::time::timeout(grace, &mut node.run).await;
    assert!(run.is_ok(), "run() waited although every client was gone");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert!(
        TcpStream::connect(node.tcp).await.is_err(),
        "still accepting"
    );

    // A client that reads nothing while the node has megabytes for it holds its
    // connection in a socket write: the node waits the grace for it, and no longer.
    let mut node = start(|c| {
        c.shutdown_grace = grace;
        c.write_timeout = Duration::from_secs(60);
        c.outbound_max_bytes = 64 << 20;
        c.max_frames_per_second = 0;
    })
    .await;
    let mut stuck = Client::connect(node.tcp, "0,0").await;
    stuck.subscribe("/topic/big").await;
    let mut publisher = Client::connect(node.tcp, "0,0").await;
    let body = vec![b'x'; 60_000];
    for _ in 0..600 {
        publisher
            .send(
                &Frame::new(Command::Send)
                    .header("destination", "/topic/big")
                    .body(body.clone()),
            )
            .await;
    }
    // Everything was routed (the publisher's socket is drained by the node).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    drop(node.stop.take());
    let run = tokio::time::timeout(grace * 2, &mut node.run).await;
    assert!(run.is_ok(), "run() did not return after the grace");
    near(t0.elapsed(), grace);
    drop(stuck);
}

/// The WebSocket transport keeps the same heart-beat rule: the node's heart-beat is a
/// `"\n"` data message, and a client that stops sending is closed with close code 1000
/// after the STOMP ERROR.
#[tokio::test(start_paused = true)]
async fn heart_beats_over_websocket_are_newline_messages() {
    let node = start(|c| {
        c.heartbeat_send = Duration::from_secs(1);
        c.heartbeat_receive = Duration::from_secs(1);
    })
    .await;
    let mut s = TcpStream::connect(node.http).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Protocol: v12.stomp\r\n\r\n",
    )
    .await
    .expect("handshake");
    let mut raw = Vec::new();
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut b = [0u8; 1024];
        let n = s.read(&mut b).await.expect("read");
        assert!(n > 0, "closed during the handshake");
        raw.extend_from_slice(&b[..n]);
    }
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end") + 4;
    assert!(
        raw.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    let mut rx = Reader::client(1 << 20, 1).with_pending(&raw[head_end..]);
    let mut out = BytesMut::new();
    let mut connect = BytesMut::new();
    encode(
        &Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("host", "t")
            .header("heart-beat", "2000,2000"),
        Version::V1_2,
        &mut connect,
    )
    .expect("encode");
    put_frame(&mut out, BINARY, &connect, Some([1, 2, 3, 4]));
    s.write_all(&out).await.expect("connect");
    // The next message's bytes (empty: none before the deadline); `None` once closed.
    let mut stream = BytesMut::new();
    let mut pending = Vec::new();
    let mut next = async |within: Duration| -> Option<BytesMut> {
        let deadline = Instant::now() + within;
        loop {
            let mut replies = BytesMut::new();
            let data = std::mem::take(&mut pending);
            match rx.consume(&data, &mut stream, &mut replies) {
                Ok(Got::Data) => return Some(stream.split()),
                Ok(Got::Close) => return None,
                Ok(Got::Nothing) => {}
                Err(e) => panic!("bad frame from the node: {e:?}"),
            }
            let mut b = BytesMut::with_capacity(4096);
            match read_by_ticks(&mut s, &mut b, deadline).await {
                None => return Some(BytesMut::new()),
                Some(0) => return None,
                Some(_) => pending = b.to_vec(),
            }
        }
    };
    let connected = next(Duration::from_secs(1)).await.expect("CONNECTED");
    assert!(connected.starts_with(b"CONNECTED"), "{connected:?}");
    let t0 = Instant::now();
    let beat = next(Duration::from_millis(2100)).await.expect("open");
    assert_eq!(&beat[..], b"\n");
    near(t0.elapsed(), Duration::from_secs(2));
    // Silent for twice the client's promise: ERROR, then the close frame.
    let mut saw_error = false;
    loop {
        match next(Duration::from_secs(10)).await {
            Some(m) if m.starts_with(b"ERROR") => saw_error = true,
            Some(m) if &m[..] == b"\n" => {}
            Some(m) if m.is_empty() => panic!("still open after the heart-beat limit"),
            Some(m) => panic!("unexpected {m:?}"),
            None => break,
        }
    }
    assert!(saw_error, "no ERROR before the close");
    near(t0.elapsed(), Duration::from_secs(4));
}
