//! `pushcenter bench`: a STOMP-over-WebSocket load generator that speaks through the
//! project's own codec, so it can target this node or any other STOMP broker.
//!
//! Scenarios: `connections` (ramp N idle subscribed connections, report the connect
//! rate and the server's memory per connection) and `fanout` (S subscribers over T
//! topics, HTTP publishes at a fixed rate, deliveries per second and end-to-end
//! latency). Each returns a report that serialises to JSON.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use pushcenter_stomp::{Command, Frame, Item, Limits, Version, decode, encode};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Where connections go and where they come from.
#[derive(Clone, Debug)]
pub struct Target {
    /// `ws://host:port/path`.
    pub url: String,
    /// Local addresses to connect from, round robin: 127.0.0.x spreads past the ~28k
    /// ephemeral ports of one address (empty: the system picks).
    pub sources: Vec<IpAddr>,
}

/// One subscribed STOMP connection.
struct Conn {
    ws: WebSocketStream<TcpStream>,
    buf: BytesMut,
    /// The CONNECTED frame's `session` (pushcenter: targets session pushes).
    session: Option<String>,
}

impl Conn {
    async fn open(t: &Target, i: usize, destination: &str) -> Result<Conn, Error> {
        let mut req = t.url.as_str().into_client_request()?;
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("v12.stomp"),
        );
        let host = req.uri().host().ok_or("url without host")?.to_string();
        let port = req.uri().port_u16().unwrap_or(80);
        let server: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .ok_or("host did not resolve")?;
        let socket = if server.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(src) = t.sources.get(i % t.sources.len().max(1)) {
            socket.bind(SocketAddr::new(*src, 0))?;
        }
        let stream = socket.connect(server).await?;
        let (ws, _) = tokio_tungstenite::client_async(req, stream).await?;
        let mut c = Conn {
            ws,
            buf: BytesMut::new(),
            session: None,
        };
        c.send(
            &Frame::new(Command::Connect)
                .header("accept-version", "1.2")
                .header("host", host.as_str())
                .header("heart-beat", "0,0"),
        )
        .await?;
        let connected = c.expect(Command::Connected).await?;
        c.session = connected.get("session").map(str::to_owned);
        c.send(
            &Frame::new(Command::Subscribe)
                .header("id", "0")
                .header("destination", destination)
                .header("receipt", "0"),
        )
        .await?;
        c.expect(Command::Receipt).await?;
        Ok(c)
    }

    async fn send(&mut self, f: &Frame) -> Result<(), Error> {
        let mut b = BytesMut::new();
        encode(f, Version::V1_2, &mut b)?;
        self.ws.send(Message::Binary(b.freeze())).await?;
        Ok(())
    }

    async fn frame(&mut self) -> Result<Option<Frame>, Error> {
        loop {
            match decode(&mut self.buf, &Limits::default())? {
                Some(Item::Frame(f)) => return Ok(Some(f)),
                Some(Item::HeartBeat) => continue,
                None => {}
            }
            match self.ws.next().await {
                Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                Some(Ok(Message::Text(t))) => self.buf.extend_from_slice(t.as_bytes()),
                Some(Ok(Message::Close(_))) | None => return Ok(None),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    async fn expect(&mut self, want: Command) -> Result<Frame, Error> {
        match self.frame().await? {
            Some(f) if f.command == want => Ok(f),
            Some(f) => {
                Err(format!("expected {want}, got {} {:?}", f.command, f.get("message")).into())
            }
            None => Err(format!("closed while waiting for {want}").into()),
        }
    }
}

/// A progress line on stderr, rewritten in place.
fn progress(what: &str, done: u64, of: u64) {
    eprint!("\r{what} {done}/{of}   ");
}

/// Opens `count` connections, at most `concurrency` handshakes at once, each subscribed
/// to `/topic/bench.<i % topics>`; returns them with the number that failed.
async fn open_all(
    t: &Target,
    count: usize,
    topics: usize,
    concurrency: usize,
) -> (Vec<Conn>, usize, Duration) {
    let start = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let (t, gate, done) = (t.clone(), gate.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let dest = format!("/topic/bench.{}", i % topics.max(1));
            let c = Conn::open(&t, i, &dest).await;
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if n % 500 == 0 || n == count as u64 {
                progress("connected", n, count as u64);
            }
            c.ok()
        }));
    }
    let mut conns = Vec::with_capacity(count);
    let mut failed = 0;
    for task in tasks {
        match task.await {
            Ok(Some(c)) => conns.push(c),
            _ => failed += 1,
        }
    }
    eprintln!();
    (conns, failed, start.elapsed())
}

/// A minimal keep-alive HTTP/1.1 client: the bench must not spend its ephemeral ports
/// on one connection per publish.
struct Http {
    stream: TcpStream,
    authority: String,
    buf: Vec<u8>,
}

impl Http {
    async fn connect(base: &str) -> Result<Http, Error> {
        let authority = base
            .strip_prefix("http://")
            .ok_or("the HTTP url must start with http://")?
            .trim_end_matches('/')
            .to_string();
        let stream = TcpStream::connect(authority.as_str()).await?;
        stream.set_nodelay(true)?;
        Ok(Http {
            stream,
            authority,
            buf: Vec::new(),
        })
    }

    /// Returns (status, body).
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, String), Error> {
        // One write: a request split in two waits on the peer's delayed ACK.
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            self.authority,
            body.len()
        );
        self.stream.write_all(req.as_bytes()).await?;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let status: u16 = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or("bad HTTP status line")?;
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let body =
                        String::from_utf8_lossy(&self.buf[end + 4..end + 4 + len]).into_owned();
                    self.buf.drain(..end + 4 + len);
                    return Ok((status, body));
                }
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err("HTTP connection closed".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The server's resident memory from `/v1/stats` (`rss_bytes`), when it says.
async fn server_rss(stats_url: Option<&str>) -> Option<u64> {
    let mut h = Http::connect(stats_url?).await.ok()?;
    let (status, body) = h.request("GET", "/v1/stats", "").await.ok()?;
    if status != 200 {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(&body).ok()?["rss_bytes"].as_u64()
}

#[derive(Clone, Debug)]
pub struct ConnectionsOpts {
    pub target: Target,
    pub count: usize,
    pub topics: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// How long to hold them idle before closing.
    pub hold: Duration,
    /// The node's HTTP base (`http://host:port`) for its memory, if it is a pushcenter node.
    pub stats_url: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ConnectionsReport {
    pub scenario: &'static str,
    pub url: String,
    pub requested: usize,
    pub connected: usize,
    pub failed: usize,
    pub ramp_seconds: f64,
    /// Connections (WebSocket + CONNECT + SUBSCRIBE with receipt) per second.
    pub connect_rate: f64,
    pub server_rss_before_bytes: Option<u64>,
    pub server_rss_after_bytes: Option<u64>,
    pub server_rss_per_connection_bytes: Option<u64>,
}

pub async fn connections(o: ConnectionsOpts) -> ConnectionsReport {
    let before = server_rss(o.stats_url.as_deref()).await;
    let (conns, failed, ramp) = open_all(&o.target, o.count, o.topics, o.concurrency).await;
    tokio::time::sleep(o.hold).await;
    let after = server_rss(o.stats_url.as_deref()).await;
    let per = match (before, after) {
        (Some(b), Some(a)) if !conns.is_empty() => Some(a.saturating_sub(b) / conns.len() as u64),
        _ => None,
    };
    let report = ConnectionsReport {
        scenario: "connections",
        url: o.target.url.clone(),
        requested: o.count,
        connected: conns.len(),
        failed,
        ramp_seconds: ramp.as_secs_f64(),
        connect_rate: conns.len() as f64 / ramp.as_secs_f64().max(1e-9),
        server_rss_before_bytes: before,
        server_rss_after_bytes: after,
        server_rss_per_connection_bytes: per,
    };
    drop(conns);
    report
}

#[derive(Clone, Debug)]
pub struct FanoutOpts {
    pub target: Target,
    /// Where to publish: a node's HTTP base, `http://host:port`.
    pub publish_url: String,
    pub subscribers: usize,
    pub topics: usize,
    /// Publishes per second, spread over the topics in turn.
    pub rate: u64,
    pub duration: Duration,
    pub concurrency: usize,
}

#[derive(Debug, Serialize)]
pub struct FanoutReport {
    pub scenario: &'static str,
    pub url: String,
    pub subscribers: usize,
    pub topics: usize,
    pub published: u64,
    pub publish_failed: u64,
    /// Publishes per second achieved (below `rate` when the target could not take more).
    pub publish_rate: f64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub missed: u64,
    pub deliveries_per_second: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub latency_ms_max: f64,
    /// Latency at each percentile 0, 1, ..., 99, 99.9, 99.99 (ms): the plot's data.
    pub latency_ms_by_percentile: Vec<(f64, f64)>,
}

/// An SVG line chart of latency by percentile (log-scaled tail on the x axis: 0 to 99 in
/// steps of 1, then 99.9 and 99.99), self-contained, no dependency.
pub fn latency_svg(r: &FanoutReport) -> String {
    const W: f64 = 640.0;
    const H: f64 = 360.0;
    const PAD: f64 = 48.0;
    let pts = &r.latency_ms_by_percentile;
    let max = pts.iter().map(|p| p.1).fold(0.0f64, f64::max).max(0.001);
    let n = pts.len().max(2) as f64 - 1.0;
    let x = |i: usize| PAD + (W - 2.0 * PAD) * i as f64 / n;
    let y = |v: f64| H - PAD - (H - 2.0 * PAD) * v / max;
    let line: Vec<String> = pts
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{:.1},{:.1}", x(i), y(p.1)))
        .collect();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{PAD}\" y=\"24\">fanout: {} subscribers, {} topics, {:.0} deliveries/s, \
         {} missed</text>\n\
         <line x1=\"{PAD}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <text x=\"{r}\" y=\"{t}\" text-anchor=\"end\">percentile (0 .. 99, 99.9, 99.99)</text>\n\
         <text x=\"4\" y=\"{PAD}\">{max:.1} ms</text>\n\
         <text x=\"4\" y=\"{b}\">0 ms</text>\n",
        r.subscribers,
        r.topics,
        r.deliveries_per_second,
        r.missed,
        b = H - PAD,
        r = W - PAD,
        t = H - PAD + 20.0,
    );
    svg.push_str(&format!(
        "<polyline fill=\"none\" stroke=\"#1f6feb\" stroke-width=\"2\" points=\"{}\"/>\n</svg>\n",
        line.join(" ")
    ));
    svg
}

#[derive(Clone, Debug)]
pub struct RequestOpts {
    pub target: Target,
    /// A pushcenter node's HTTP base for `POST /v1/requests`.
    pub http_url: String,
    /// Clients that answer; each request goes to one client's session, in turn.
    pub clients: usize,
    pub rate: u64,
    pub duration: Duration,
    pub timeout_ms: u64,
    pub concurrency: usize,
}

#[derive(Debug, Serialize)]
pub struct RequestReport {
    pub scenario: &'static str,
    pub url: String,
    pub clients: usize,
    pub requests: u64,
    pub answered: u64,
    pub timed_out: u64,
    pub failed: u64,
    /// Answered round trips per second.
    pub answered_per_second: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub latency_ms_max: f64,
}

/// Request/reply (pushcenter's `POST /v1/requests`): clients subscribed to
/// `/user/queue/bench` answer every request at once; callers post at a fixed rate, each
/// to one client's session, and time the round trip.
pub async fn request(o: RequestOpts) -> Result<RequestReport, Error> {
    let mut sessions = Vec::with_capacity(o.clients);
    let gate = Arc::new(tokio::sync::Semaphore::new(o.concurrency.max(1)));
    let mut opening = Vec::new();
    for i in 0..o.clients {
        let (t, gate) = (o.target.clone(), gate.clone());
        opening.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            Conn::open(&t, i, "/user/queue/bench").await
        }));
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut answerers = Vec::new();
    for c in opening {
        let mut c = c.await??;
        sessions.push(
            c.session
                .clone()
                .ok_or("CONNECTED without a session header")?,
        );
        let stop = stop.clone();
        answerers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), c.frame()).await {
                    Ok(Ok(Some(m))) if m.command == Command::Message => {
                        let (Some(to), Some(id)) = (m.get("reply-to"), m.get("correlation-id"))
                        else {
                            continue;
                        };
                        let reply = Frame::new(Command::Send)
                            .header("destination", to)
                            .header("correlation-id", id)
                            .body(m.body.clone());
                        if c.send(&reply).await.is_err() {
                            break;
                        }
                    }
                    Ok(Ok(Some(_))) | Err(_) => {}
                    Ok(Ok(None)) | Ok(Err(_)) => break,
                }
            }
        }));
    }
    let sessions = Arc::new(sessions);
    let total = o.rate * o.duration.as_secs().max(1);
    // Each caller connection waits for its answer: enough of them for the rate.
    let callers = (o.rate / 20).clamp(16, 256);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let (url, sessions) = (o.http_url.clone(), sessions.clone());
        let (rate, timeout_ms) = (o.rate.max(1), o.timeout_ms);
        tasks.push(tokio::spawn(async move {
            let mut h = Http::connect(&url).await?;
            let (mut lat, mut timed_out, mut failed) = (Vec::new(), 0u64, 0u64);
            let mut seq = c;
            while seq < total {
                let due = start + Duration::from_micros(seq * 1_000_000 / rate);
                tokio::time::sleep_until(due.into()).await;
                let session = &sessions[(seq as usize) % sessions.len()];
                let body = format!(
                    r#"{{"session":"{session}","destination":"/user/queue/bench","body":"{seq}","timeout_ms":{timeout_ms}}}"#
                );
                let sent = Instant::now();
                match h.request("POST", "/v1/requests", &body).await {
                    Ok((200, _)) => lat.push(sent.elapsed().as_micros() as u32),
                    Ok((504, _)) => timed_out += 1,
                    _ => failed += 1,
                }
                if seq % 1000 == 0 {
                    progress("requested", seq, total);
                }
                seq += callers;
            }
            Ok::<_, Error>((lat, timed_out, failed))
        }));
    }
    let (mut lat, mut timed_out, mut failed) = (Vec::new(), 0, 0);
    for t in tasks {
        let (l, to, f) = t.await??;
        lat.extend(l);
        timed_out += to;
        failed += f;
    }
    let elapsed = start.elapsed();
    eprintln!();
    stop.store(true, Ordering::Relaxed);
    for a in answerers {
        let _ = a.await;
    }
    lat.sort_unstable();
    let q = |p: f64| percentile_ms(&lat, p);
    Ok(RequestReport {
        scenario: "request",
        url: o.target.url,
        clients: o.clients,
        requests: total,
        answered: lat.len() as u64,
        timed_out,
        failed,
        answered_per_second: lat.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        latency_ms_p50: q(0.5),
        latency_ms_p99: q(0.99),
        latency_ms_p999: q(0.999),
        latency_ms_max: q(1.0),
    })
}

/// The `p` quantile (0..=1) of sorted microsecond latencies, in milliseconds.
fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Subscribers read MESSAGEs whose body is `<publish time in unix µs>`; the publisher
/// posts at a fixed schedule; latencies are publish → subscriber read.
pub async fn fanout(o: FanoutOpts) -> Result<FanoutReport, Error> {
    let (conns, failed, _) = open_all(&o.target, o.subscribers, o.topics, o.concurrency).await;
    if failed > 0 {
        return Err(format!(
            "{failed} of {} subscribers could not connect",
            o.subscribers
        )
        .into());
    }
    let topics = o.topics.max(1);
    let mut per_topic = vec![0u64; topics];
    for i in 0..o.subscribers {
        per_topic[i % topics] += 1;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::with_capacity(conns.len());
    for mut c in conns {
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), c.frame()).await {
                    Ok(Ok(Some(f))) if f.command == Command::Message => {
                        let sent: u64 = std::str::from_utf8(&f.body)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                        let us = unix_micros().saturating_sub(sent);
                        lat.push(u32::try_from(us).unwrap_or(u32::MAX));
                    }
                    Ok(Ok(Some(_))) | Err(_) => {}
                    Ok(Ok(None)) | Ok(Err(_)) => break,
                }
            }
            lat
        }));
    }
    // Publishers: keep-alive connections share the schedule, one per 250/s (a request
    // waits for its answer before the next).
    let publishers = (o.rate / 250).clamp(4, 64);
    let total = o.rate * o.duration.as_secs().max(1);
    let start = Instant::now();
    let mut pubs = Vec::new();
    for p in 0..publishers {
        let url = o.publish_url.clone();
        let rate = o.rate.max(1);
        pubs.push(tokio::spawn(async move {
            let mut h = Http::connect(&url).await?;
            let (mut ok, mut bad) = (0u64, 0u64);
            let mut sent = vec![0u64; topics];
            let mut seq = p;
            while seq < total {
                let due = start + Duration::from_micros(seq * 1_000_000 / rate);
                tokio::time::sleep_until(due.into()).await;
                let topic = (seq as usize) % topics;
                let body = format!(
                    r#"{{"destination":"/topic/bench.{topic}","body":"{}"}}"#,
                    unix_micros()
                );
                match h.request("POST", "/v1/publish", &body).await {
                    Ok((202, _)) => {
                        ok += 1;
                        sent[topic] += 1;
                    }
                    _ => bad += 1,
                }
                if seq % 1000 == 0 {
                    progress("published", seq, total);
                }
                seq += publishers;
            }
            Ok::<_, Error>((ok, bad, sent))
        }));
    }
    let (mut published, mut publish_failed) = (0, 0);
    let mut sent = vec![0u64; topics];
    for p in pubs {
        let (ok, bad, s) = p.await??;
        published += ok;
        publish_failed += bad;
        for (a, b) in sent.iter_mut().zip(s) {
            *a += b;
        }
    }
    let publish_time = start.elapsed();
    eprintln!();
    let expected: u64 = sent.iter().zip(&per_topic).map(|(m, s)| m * s).sum();
    // Let the last deliveries arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<u32> = Vec::new();
    for r in readers {
        lat.extend(r.await?);
    }
    lat.sort_unstable();
    let q = |p: f64| percentile_ms(&lat, p);
    let deliveries = lat.len() as u64;
    Ok(FanoutReport {
        scenario: "fanout",
        url: o.target.url,
        subscribers: o.subscribers,
        topics,
        published,
        publish_failed,
        publish_rate: published as f64 / publish_time.as_secs_f64().max(1e-9),
        expected_deliveries: expected,
        deliveries,
        missed: expected.saturating_sub(deliveries),
        deliveries_per_second: deliveries as f64 / publish_time.as_secs_f64().max(1e-9),
        latency_ms_p50: q(0.5),
        latency_ms_p99: q(0.99),
        latency_ms_p999: q(0.999),
        latency_ms_max: q(1.0),
        latency_ms_by_percentile: (0..100)
            .map(f64::from)
            .chain([99.9, 99.99])
            .map(|p| (p, q(p / 100.0)))
            .collect(),
    })
}
