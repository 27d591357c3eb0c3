//! `pushcenter bench`: a STOMP-over-WebSocket load generator that speaks through the
//! project's own codec, so it can target this node or any other STOMP broker.
//!
//! Scenarios: `connections` (ramp N idle subscribed connections, over several
//! processes when one process's file descriptors do not suffice; report the connect
//! rate and the server's memory per connection), `fanout` (S subscribers over T topics,
//! HTTP or STOMP publishes at a fixed rate, deliveries per second, end-to-end latency,
//! server and generator CPU per delivery), `request` (request/reply round trips),
//! `cluster` (a whole local cluster: Tansu, etcd, the registry and N nodes, users placed
//! through the registry, targeted and broadcast traffic; records fetched, deliveries and
//! CPU per node) and `consume` (a node's CPU per 100,000 records of a pre-filled topic).
//! Each returns a report that serialises to JSON.

mod cluster;
mod conn;
mod connections;
mod consume;
mod error;
mod fanout;
mod plot;
mod procfs;
mod progress;
mod request;
mod scan;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use conn::Conn;
use error::At;
use progress::note;

pub use cluster::{
    ClusterNodeReport, ClusterOpts, ClusterParameters, ClusterReport, ClusterTotals, cluster,
};
pub use connections::{ChildCommand, ConnectionsOpts, ConnectionsReport, child, connections};
pub use consume::{ConsumeBroker, ConsumeMode, ConsumeOpts, ConsumeReport, consume};
pub use error::{Error, Result};
pub use fanout::{FanoutOpts, FanoutReport, Publish, SecondLatency, fanout};
pub use plot::latency_svg;
pub use procfs::nofile_limit;
pub use request::{RequestOpts, RequestReport, request};

/// Where connections go, where they come from and how they log in.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Target {
    /// `ws://host:port/path`.
    pub url: String,
    /// Local addresses to connect from, round robin by connection index: 127.0.0.x
    /// spreads past the ~28k ephemeral ports of one address (empty: the system picks).
    pub sources: Vec<IpAddr>,
    /// CONNECT `login` and `passcode` (RabbitMQ: guest/guest).
    pub login: Option<String>,
    pub passcode: Option<String>,
    /// CONNECT `host` (RabbitMQ: the virtual host, `/`); default: the url's host.
    pub vhost: Option<String>,
}

/// What the generator can learn about the server under test.
#[derive(Clone, Debug, Default)]
pub struct Server {
    /// Its process, for CPU time and RSS from /proc (any broker on this machine).
    pub pid: Option<u32>,
    /// A pushcenter node's HTTP base, for `rss_bytes` from `/v1/stats`.
    pub stats_url: Option<String>,
}

impl Server {
    /// Resident memory: /proc when the pid is known, else the node's `/v1/stats`.
    async fn rss(&self) -> Option<u64> {
        if let Some(rss) = self
            .pid
            .and_then(|p| procfs::sample(Some(p), false)?.rss_bytes)
        {
            return Some(rss);
        }
        stats_rss(self.stats_url.as_deref()).await
    }

    /// user + system CPU seconds so far.
    fn cpu(&self) -> Option<f64> {
        Some(procfs::sample(Some(self.pid?), false)?.cpu_seconds)
    }
}

/// CPU seconds this process (and the children it has waited for) used so far.
fn own_cpu() -> f64 {
    procfs::sample(None, true).map_or(0.0, |s| s.cpu_seconds)
}

/// The HTTP base of a WebSocket URL's server: `ws://host:port/path` →
/// `http://host:port`, `wss://` → `https://`; `None` for any other scheme.
pub fn http_base(ws_url: &str) -> Option<String> {
    let (scheme, rest) = if let Some(rest) = ws_url.strip_prefix("ws://") {
        ("http", rest)
    } else {
        ("https", ws_url.strip_prefix("wss://")?)
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    (!authority.is_empty()).then(|| format!("{scheme}://{authority}"))
}

const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens connections `first..first + count` (the global index picks the source address
/// and the topic `/topic/bench.<i % topics>`), at most `concurrency` handshakes at once;
/// returns them with the number that failed, the first failure and the time it took.
async fn open_range(
    t: &Target,
    first: usize,
    count: usize,
    topics: usize,
    concurrency: usize,
    show: bool,
) -> (Vec<Conn>, usize, Option<Error>, Duration) {
    let start = Instant::now();
    let t = Arc::new(t.clone());
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let bar = progress::bar("connected", count as u64, show);
    let mut tasks = Vec::with_capacity(count);
    for i in first..first + count {
        let (t, gate, bar) = (t.clone(), gate.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let dest = format!("/topic/bench.{}", i % topics.max(1));
            // A server that stops answering fails the connection instead of the run.
            let c = match tokio::time::timeout(OPEN_TIMEOUT, Conn::open(&t, i, &dest)).await {
                Ok(c) => c,
                Err(_) => Err(Error::Timeout(OPEN_TIMEOUT).at(&t.url)),
            };
            bar.inc(1);
            c
        }));
    }
    let mut conns = Vec::with_capacity(count);
    let mut failed = 0;
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(c)) => conns.push(c),
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(Error::Task(e));
            }
        }
    }
    bar.finish();
    if let Some(e) = &first_error {
        note(format_args!(
            "{failed} of {count} connections failed; the first: {e}"
        ));
    }
    (conns, failed, first_error, start.elapsed())
}

/// A minimal keep-alive HTTP/1.1 client: the bench must not spend its ephemeral ports
/// on one connection per publish.
struct Http {
    stream: TcpStream,
    authority: String,
    buf: Vec<u8>,
}

impl Http {
    async fn connect(base: &str) -> Result<Http> {
        let authority = base
            .strip_prefix("http://")
            .ok_or(Error::Url("the HTTP url must start with http://"))
            .at(base)?
            .trim_end_matches('/')
            .to_string();
        let stream = TcpStream::connect(authority.as_str()).await.at(base)?;
        stream.set_nodelay(true).at(base)?;
        Ok(Http {
            stream,
            authority,
            buf: Vec::new(),
        })
    }

    /// Returns (status, body); a failure names the URL.
    async fn request(&mut self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        let answer = self.exchange(method, path, body).await;
        answer.map_err(|e| e.at(&format!("http://{}{path}", self.authority)))
    }

    async fn exchange(&mut self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
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
async fn stats_rss(stats_url: Option<&str>) -> Option<u64> {
    let mut h = Http::connect(stats_url?).await.ok()?;
    let (status, body) = h.request("GET", "/v1/stats", "").await.ok()?;
    if status != 200 {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(&body).ok()?["rss_bytes"].as_u64()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_base_of_a_websocket_url_keeps_host_and_port() {
        let base = |u| http_base(u);
        assert_eq!(
            base("ws://10.0.0.5:9000/ws").as_deref(),
            Some("http://10.0.0.5:9000")
        );
        assert_eq!(
            base("wss://push.example:443/ws").as_deref(),
            Some("https://push.example:443")
        );
        assert_eq!(
            base("ws://[::1]:8080/ws?x=1").as_deref(),
            Some("http://[::1]:8080")
        );
        assert_eq!(base("ws://localhost").as_deref(), Some("http://localhost"));
        assert_eq!(base("ws:///ws"), None);
        assert_eq!(base("http://h:1"), None);
    }
}
