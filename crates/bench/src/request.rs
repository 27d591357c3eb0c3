//! Request/reply (pushcenter's `POST /v1/requests`) round trips.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pushcenter_stomp::{Command, Frame};
use serde::Serialize;

use crate::progress::bar;
use crate::{Conn, Error, Http, Result, Server, Target, own_cpu, percentile_ms};

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
    pub server: Server,
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
    /// The server's user + system CPU while the requests ran (`--server-pid`).
    pub server_cpu_seconds: Option<f64>,
    pub server_cpu_us_per_request: Option<f64>,
    pub generator_cpu_seconds: f64,
}

/// Request/reply (pushcenter's `POST /v1/requests`): clients subscribed to
/// `/user/queue/bench` answer every request at once; callers post at a fixed rate, each
/// to one client's session, and time the round trip.
pub async fn request(o: RequestOpts) -> Result<RequestReport> {
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
    let cpu0 = (o.server.cpu(), own_cpu());
    let start = Instant::now();
    let done = bar("requested", total, true);
    let mut tasks = Vec::new();
    for c in 0..callers {
        let (url, sessions, done) = (o.http_url.clone(), sessions.clone(), done.clone());
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
                done.inc(1);
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
    let cpu1 = (o.server.cpu(), own_cpu());
    done.finish();
    stop.store(true, Ordering::Relaxed);
    for a in answerers {
        let _ = a.await;
    }
    lat.sort_unstable();
    let q = |p: f64| percentile_ms(&lat, p);
    let server_cpu = cpu0.0.zip(cpu1.0).map(|(a, b)| b - a);
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
        server_cpu_seconds: server_cpu,
        server_cpu_us_per_request: server_cpu.map(|s| s * 1e6 / total.max(1) as f64),
        generator_cpu_seconds: cpu1.1 - cpu0.1,
    })
}
