//! Connections: ramp N idle subscribed connections and measure the server's memory per
//! connection as the RSS slope between a first mark (1,000) and N. A process may hold
//! only so many file descriptors, so counts above `per_process` are spread over child
//! processes of this program, each holding a share until its stdin closes.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::{Error, Result, Server, Target, open_range, own_cpu};

/// How to start this program as a child that runs [`child`].
#[derive(Clone, Debug)]
pub struct ChildCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct ConnectionsOpts {
    pub target: Target,
    pub count: usize,
    pub topics: usize,
    /// Handshakes in flight at once (over all processes).
    pub concurrency: usize,
    /// How long to hold them idle before the last reading and closing.
    pub hold: Duration,
    pub server: Server,
    /// The slope's first mark: connections opened before the first memory reading.
    pub slope_from: usize,
    /// Pause at the mark before reading, for the server to settle.
    pub settle: Duration,
    /// Connections one process may hold (its file descriptors).
    pub per_process: usize,
    /// Needed when `count` is above `per_process`.
    pub child: Option<ChildCommand>,
}

#[derive(Debug, Serialize)]
pub struct ConnectionsReport {
    pub scenario: &'static str,
    pub url: String,
    pub requested: usize,
    pub connected: usize,
    pub failed: usize,
    /// Generator processes that held connections (this one and its children).
    pub processes: usize,
    /// The whole ramp, the pause at the slope's first mark included.
    pub ramp_seconds: f64,
    /// Connections (WebSocket + CONNECT + SUBSCRIBE with receipt) per second over
    /// `ramp_seconds`.
    pub connect_rate: f64,
    pub pause_seconds: f64,
    pub connect_rate_excluding_pause: f64,
    pub server_rss_before_bytes: Option<u64>,
    pub server_rss_after_bytes: Option<u64>,
    pub server_rss_per_connection_bytes: Option<u64>,
    /// Connections open at the slope's first mark (when `requested` is above it).
    pub slope_from_connections: Option<usize>,
    pub server_rss_at_slope_from_bytes: Option<u64>,
    pub server_rss_at_n_bytes: Option<u64>,
    /// (RSS at N − RSS at the mark) / (N − mark): memory per idle connection with one
    /// subscription, without the process's fixed cost.
    pub server_rss_slope_bytes_per_connection: Option<i64>,
    /// The server's user + system CPU from the first connection to the end of the hold.
    pub server_cpu_seconds: Option<f64>,
    /// This process and its children, the whole run.
    pub generator_cpu_seconds: f64,
}

/// A child's share of the connections, sent as one JSON line on its stdin.
#[derive(Serialize, Deserialize)]
struct Share {
    target: Target,
    first: usize,
    count: usize,
    topics: usize,
    concurrency: usize,
}

/// A child's one JSON line on stdout once its share is open.
#[derive(Serialize, Deserialize)]
struct Ready {
    connected: usize,
    failed: usize,
    seconds: f64,
}

struct Worker {
    process: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    async fn start(cmd: &ChildCommand, share: &Share) -> Result<Worker> {
        let mut process = tokio::process::Command::new(&cmd.program)
            .args(&cmd.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let mut stdin = process
            .stdin
            .take()
            .ok_or(Error::Child("child without stdin"))?;
        let stdout = process
            .stdout
            .take()
            .ok_or(Error::Child("child without stdout"))?;
        let mut line = serde_json::to_vec(share)?;
        line.push(b'\n');
        stdin.write_all(&line).await?;
        Ok(Worker {
            process,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout).lines(),
        })
    }

    async fn ready(&mut self) -> Result<Ready> {
        let line = self.stdout.next_line().await?.ok_or(Error::Child(
            "a child process ended before its connections were up",
        ))?;
        Ok(serde_json::from_str(&line)?)
    }

    /// Closes its stdin (the signal to close its connections and exit) and waits.
    async fn finish(mut self) {
        self.stdin = None;
        if tokio::time::timeout(Duration::from_secs(10), self.process.wait())
            .await
            .is_err()
        {
            let _ = self.process.kill().await;
        }
    }
}

pub async fn connections(o: ConnectionsOpts) -> Result<ConnectionsReport> {
    let per_process = o.per_process.max(1);
    let slope = o.count > o.slope_from;
    // This process opens the first part itself: the slope's mark, or everything.
    let first = if slope { o.slope_from } else { o.count }.min(per_process);
    let before = o.server.rss().await;
    let cpu0 = (o.server.cpu(), own_cpu());
    let (mut conns, mut failed, _, first_took) =
        open_range(&o.target, 0, first, o.topics, o.concurrency, true).await;
    let rest = o.count - first;
    let (mut pause, mut at_mark, mut at_mark_connected) = (Duration::ZERO, None, None);
    if slope && rest > 0 {
        tokio::time::sleep(o.settle).await;
        pause = o.settle;
        at_mark = o.server.rss().await;
        at_mark_connected = Some(conns.len());
    }
    let rest_start = Instant::now();
    let mut workers = Vec::new();
    let mut connected_elsewhere = 0;
    if rest > 0 && o.count <= per_process {
        let (more, f, _, _) =
            open_range(&o.target, first, rest, o.topics, o.concurrency, true).await;
        conns.extend(more);
        failed += f;
    } else if rest > 0 {
        let cmd = o.child.as_ref().ok_or(Error::Options(
            "more connections than one process may hold, and no way to start child processes",
        ))?;
        let n = rest.div_ceil(per_process);
        let mut at = first;
        for k in 0..n {
            let count = rest / n + usize::from(k < rest % n);
            let share = Share {
                target: o.target.clone(),
                first: at,
                count,
                topics: o.topics,
                concurrency: o.concurrency.div_ceil(n),
            };
            workers.push(Worker::start(cmd, &share).await?);
            at += count;
        }
        // A failing child ends the run; the others are killed when dropped.
        for (k, w) in workers.iter_mut().enumerate() {
            let r = w.ready().await?;
            connected_elsewhere += r.connected;
            failed += r.failed;
            eprintln!(
                "process {}/{n}: {} connected, {} failed in {:.1} s",
                k + 1,
                r.connected,
                r.failed,
                r.seconds
            );
        }
    }
    let rest_took = rest_start.elapsed();
    tokio::time::sleep(o.hold).await;
    let after = o.server.rss().await;
    let server_cpu1 = o.server.cpu();
    let connected = conns.len() + connected_elsewhere;
    drop(conns);
    for w in workers.drain(..) {
        w.finish().await;
    }
    let ramp = first_took + pause + rest_took;
    let slope_bytes = match (at_mark, after, at_mark_connected) {
        (Some(a), Some(b), Some(m)) if connected > m => {
            Some((b as i64 - a as i64) / (connected - m) as i64)
        }
        _ => None,
    };
    Ok(ConnectionsReport {
        scenario: "connections",
        url: o.target.url.clone(),
        requested: o.count,
        connected,
        failed,
        processes: 1 + rest.div_ceil(per_process) * usize::from(o.count > per_process),
        ramp_seconds: ramp.as_secs_f64(),
        connect_rate: connected as f64 / ramp.as_secs_f64().max(1e-9),
        pause_seconds: pause.as_secs_f64(),
        connect_rate_excluding_pause: connected as f64 / (ramp - pause).as_secs_f64().max(1e-9),
        server_rss_before_bytes: before,
        server_rss_after_bytes: after,
        server_rss_per_connection_bytes: match (before, after) {
            (Some(b), Some(a)) if connected > 0 => Some(a.saturating_sub(b) / connected as u64),
            _ => None,
        },
        slope_from_connections: at_mark_connected,
        server_rss_at_slope_from_bytes: at_mark,
        server_rss_at_n_bytes: after.filter(|_| at_mark.is_some()),
        server_rss_slope_bytes_per_connection: slope_bytes,
        server_cpu_seconds: cpu0.0.zip(server_cpu1).map(|(a, b)| b - a),
        generator_cpu_seconds: own_cpu() - cpu0.1,
    })
}

/// A child process's part of `connections`: reads its share from stdin, opens it,
/// prints one `Ready` line, holds the connections until stdin closes or a line arrives
/// (the parent is done, or gone), then closes them.
pub async fn child() -> Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let line = lines
        .next_line()
        .await?
        .ok_or(Error::Child("no share on stdin"))?;
    let share: Share = serde_json::from_str(&line)?;
    let finish = async move {
        let _ = lines.next_line().await;
    };
    tokio::pin!(finish);
    let open = open_range(
        &share.target,
        share.first,
        share.count,
        share.topics,
        share.concurrency,
        false,
    );
    let (conns, failed, _, took) = tokio::select! {
        r = open => r,
        _ = &mut finish => return Ok(()),
    };
    let ready = Ready {
        connected: conns.len(),
        failed,
        seconds: took.as_secs_f64(),
    };
    println!("{}", serde_json::to_string(&ready)?);
    finish.await;
    drop(conns);
    Ok(())
}
