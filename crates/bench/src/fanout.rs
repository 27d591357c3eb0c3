//! Fan-out: S subscribers over T topics, publishes at a fixed rate over HTTP or STOMP,
//! deliveries per second, end-to-end latency, and what each delivery costs the server
//! and the generator in CPU.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use pushcenter_stomp::{Command, Frame};
use serde::Serialize;

use crate::progress::{bar, note};
use crate::scan::leading_micros;
use crate::{
    At, Conn, Error, Http, Result, Server, Target, open_range, own_cpu, percentile_ms, unix_micros,
};

/// How publishes reach the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Publish {
    /// `POST /v1/publish` on a pushcenter node (`publish_url`).
    Http,
    /// STOMP SEND over WebSocket connections to the target url: any broker.
    Stomp,
    /// Records produced straight to Kafka, as a backend would (pushcenter's record
    /// format: a `destination` header, the body as the value).
    Kafka,
}

#[derive(Clone, Debug)]
pub struct FanoutOpts {
    pub target: Target,
    pub publish: Publish,
    /// For `Publish::Http`: a node's HTTP base, `http://host:port`.
    pub publish_url: String,
    /// For `Publish::Kafka`: bootstrap servers and the messages topic.
    pub kafka_brokers: String,
    pub kafka_topic: String,
    /// librdkafka properties for the producer, as a node's `[kafka.properties]`
    /// (security and the like).
    pub kafka_properties: Vec<(String, String)>,
    pub subscribers: usize,
    pub topics: usize,
    /// Publishes per second, spread over the topics in turn.
    pub rate: u64,
    pub duration: Duration,
    pub concurrency: usize,
    /// Body size: the publish time in unix µs, padded to this many bytes.
    pub body_size: usize,
    /// Publisher connections; `None`: HTTP one per 250/s (4 to 64), STOMP one per 50/s
    /// (1 to 64: pushcenter's default `max_frames_per_second` is 100 per connection).
    pub publishers: Option<u64>,
    pub server: Server,
    /// Records published (over `publish_url`) before the run, to fill a node's replay
    /// window.
    pub prefill: u64,
    /// Connections that, over and over during the run, connect, subscribe `/topic/#`
    /// resuming from the start of the window, read the replay and leave: live
    /// delivery under a resume wave.
    pub resumers: usize,
}

#[derive(Debug, Serialize)]
pub struct FanoutReport {
    pub scenario: &'static str,
    pub url: String,
    pub publish: Publish,
    pub subscribers: usize,
    pub topics: usize,
    /// Publishes per second asked for, and for how long.
    pub rate: u64,
    pub duration_seconds: u64,
    pub body_bytes: usize,
    pub published: u64,
    pub publish_failed: u64,
    /// Publishes per second achieved (below `rate` when the target could not take more).
    pub publish_rate: f64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub missed: u64,
    /// Subscribers whose connection closed or failed before the end.
    pub subscribers_lost: u64,
    pub deliveries_per_second: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub latency_ms_max: f64,
    /// Latency at each percentile 0, 1, ..., 99, 99.9, 99.99 (ms): the plot's data.
    pub latency_ms_by_percentile: Vec<(f64, f64)>,
    /// Latency of the messages published in each second of the run: the plot's other
    /// half.
    pub latency_ms_per_second: Vec<SecondLatency>,
    /// Seconds from the first publish until the last delivery came in (or stopped
    /// coming): the span the CPU figures cover.
    pub measured_seconds: f64,
    /// The server process's user + system CPU over the measured span (`--server-pid`).
    pub server_cpu_seconds: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    pub server_rss_bytes: Option<u64>,
    /// The generator's own CPU (publishers and subscribers) over the same span.
    pub generator_cpu_seconds: f64,
    pub generator_cpu_us_per_delivery: f64,
    /// With `resumers`: resumes done, and messages replayed to them.
    pub resumes: u64,
    pub replayed: u64,
    /// The node's longest routing and window lock holds of the last 10-20 s of the run
    /// (`/v1/stats`, µs), when publishing through a pushcenter node's HTTP API.
    pub routing_lock_hold_max_us: Option<u64>,
    pub window_lock_hold_max_us: Option<u64>,
}

/// The deliveries of the messages published in one second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct SecondLatency {
    /// Seconds since the first publish: this one covers `second..second + 1`.
    pub second: u64,
    pub deliveries: u64,
    pub p50: f64,
    pub p99: f64,
}

/// The publish time in unix µs, padded with `x` to `size` bytes.
fn body(size: usize) -> String {
    let mut b = unix_micros().to_string();
    if b.len() < size {
        b.extend(std::iter::repeat_n('x', size - b.len()));
    }
    b
}

/// Subscribers read MESSAGEs whose body starts with `<publish time in unix µs>`; the
/// publishers send on a fixed schedule; latencies are publish → subscriber read.
/// Publishes `n` records over HTTP as fast as 8 connections go.
async fn prefill(url: &str, n: u64) -> Result<()> {
    let mut tasks = Vec::new();
    let done = bar("prefilled", n, true);
    for p in 0..8u64 {
        let (url, done) = (url.to_string(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Http::connect(&url).await?;
            let mut seq = p;
            while seq < n {
                let json = format!(
                    r#"{{"destination":"/topic/prefill.{}","body":"{}"}}"#,
                    seq % 16,
                    "p".repeat(64)
                );
                match h.request("POST", "/v1/publish", &json).await? {
                    (202, _) => {}
                    (status, body) => {
                        return Err(
                            format!("prefill: {url}/v1/publish answered {status} {body}").into(),
                        );
                    }
                }
                done.inc(1);
                seq += 8;
            }
            Ok::<(), Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    done.finish();
    Ok(())
}

/// One resumer: connect, `SUBSCRIBE /topic/#` from the window's start, read the replay
/// until it stops, leave; again until `stop`. (resumes, messages replayed).
async fn resume_loop(
    target: Target,
    index: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (u64, u64) {
    let (mut resumes, mut replayed) = (0u64, 0u64);
    while !*stop.borrow() {
        let Ok(mut c) = Conn::connect(&target, index).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let sub = Frame::new(Command::Subscribe)
            .header("id", "wave")
            .header("destination", "/topic/#")
            .header("resume-from", "")
            .header("receipt", "wave");
        if c.send(&sub).await.is_err() || c.expect(Command::Receipt).await.is_err() {
            continue;
        }
        resumes += 1;
        // The replay: until 100 ms pass without a message, at most half a second (live
        // messages keep coming too), then leave and resume again.
        let leave = tokio::time::Instant::now() + Duration::from_millis(500);
        loop {
            let mut n = 0u64;
            let got = tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep_until(leave) => break,
                r = tokio::time::timeout(Duration::from_millis(100), c.messages(|_| n += 1)) => r,
            };
            replayed += n;
            if !matches!(got, Ok(Ok(true))) {
                break;
            }
        }
    }
    (resumes, replayed)
}

/// The node's longest lock holds so far, from `/v1/stats`.
async fn lock_holds(url: &str) -> (Option<u64>, Option<u64>) {
    let Ok(mut h) = Http::connect(url).await else {
        return (None, None);
    };
    let Ok((200, body)) = h.request("GET", "/v1/stats", "").await else {
        return (None, None);
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    // The last 10-20 s: the run, not the prefill before it.
    (
        v["routing_lock_hold_recent_max_us"].as_u64(),
        v["window_lock_hold_recent_max_us"].as_u64(),
    )
}

pub async fn fanout(o: FanoutOpts) -> Result<FanoutReport> {
    if o.prefill > 0 {
        prefill(&o.publish_url, o.prefill).await?;
    }
    let (conns, failed, first_error, _) =
        open_range(&o.target, 0, o.subscribers, o.topics, o.concurrency, true).await;
    if failed > 0 {
        let first = first_error.map_or_else(String::new, |e| format!("; the first: {e}"));
        return Err(format!(
            "{failed} of {} subscribers could not connect{first}",
            o.subscribers
        )
        .into());
    }
    let topics = o.topics.max(1);
    let mut per_topic = vec![0u64; topics];
    for i in 0..o.subscribers {
        per_topic[i % topics] += 1;
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(conns.len());
    // Latencies go by the second their message was published in; a body that is not a
    // timestamp from this run lands in the first or the last.
    let first_us = unix_micros();
    let last_second = o.duration.as_secs() + 60;
    for mut c in conns {
        let mut stop = stop_rx.clone();
        let delivered = delivered.clone();
        let url = o.target.url.clone();
        readers.push(tokio::spawn(async move {
            // One clock reading per socket read: every message in it arrived then.
            let mut lat: Vec<Vec<u32>> = Vec::new();
            loop {
                let (mut now, mut n) = (None, 0u64);
                let r = tokio::select! {
                    biased;
                    _ = stop.changed() => return (lat, false),
                    r = c.messages(|b| {
                        let now = *now.get_or_insert_with(unix_micros);
                        let sent = leading_micros(b);
                        let second = (sent.saturating_sub(first_us) / 1_000_000).min(last_second);
                        let second = second as usize;
                        if lat.len() <= second {
                            lat.resize_with(second + 1, Vec::new);
                        }
                        let us = now.saturating_sub(sent);
                        lat[second].push(u32::try_from(us).unwrap_or(u32::MAX));
                        n += 1;
                    }) => r,
                };
                if n > 0 {
                    delivered.fetch_add(n, Ordering::Relaxed);
                }
                if !matches!(r, Ok(true)) {
                    if let Err(e) = r {
                        note(format_args!("subscriber of {url}: {e}"));
                    }
                    return (lat, true);
                }
            }
        }));
    }
    let wave: Vec<_> = (0..o.resumers)
        .map(|i| {
            let index = o.subscribers + 1000 + i;
            tokio::spawn(resume_loop(o.target.clone(), index, stop_rx.clone()))
        })
        .collect();
    let cpu0 = (o.server.cpu(), own_cpu());
    let start = Instant::now();
    let published_bar = bar("published", total(&o), true);
    let pubs = match o.publish {
        Publish::Http => publish_http(&o, start, &published_bar),
        Publish::Stomp => publish_stomp(&o, start, &published_bar),
        Publish::Kafka => publish_kafka(&o, start, &published_bar)?,
    };
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
    published_bar.finish();
    let expected: u64 = sent.iter().zip(&per_topic).map(|(m, s)| m * s).sum();
    // Let the last deliveries arrive: until all are in or none came for 2 s.
    let (mut seen, mut since) = (delivered.load(Ordering::Relaxed), Instant::now());
    while seen < expected && since.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = delivered.load(Ordering::Relaxed);
        if now > seen {
            (seen, since) = (now, Instant::now());
        }
    }
    let measured = start.elapsed();
    let cpu1 = (o.server.cpu(), own_cpu());
    let server_rss_bytes = o.server.rss().await;
    let (routing_lock_hold_max_us, window_lock_hold_max_us) = match o.publish {
        Publish::Http => lock_holds(&o.publish_url).await,
        _ => (None, None),
    };
    let _ = stop_tx.send(true);
    let (mut resumes, mut replayed) = (0, 0);
    for w in wave {
        let (r, n) = w.await?;
        resumes += r;
        replayed += n;
    }
    let mut by_second: Vec<Vec<u32>> = Vec::new();
    let mut lost = 0;
    for r in readers {
        let (l, gone) = r.await?;
        if by_second.len() < l.len() {
            by_second.resize_with(l.len(), Vec::new);
        }
        for (all, one) in by_second.iter_mut().zip(l) {
            all.extend(one);
        }
        lost += u64::from(gone);
    }
    let mut lat: Vec<u32> = Vec::with_capacity(by_second.iter().map(Vec::len).sum());
    let mut per_second = Vec::new();
    for (second, mut l) in by_second.into_iter().enumerate() {
        if l.is_empty() {
            continue;
        }
        l.sort_unstable();
        per_second.push(SecondLatency {
            second: second as u64,
            deliveries: l.len() as u64,
            p50: percentile_ms(&l, 0.5),
            p99: percentile_ms(&l, 0.99),
        });
        lat.extend(l);
    }
    lat.sort_unstable();
    let q = |p: f64| percentile_ms(&lat, p);
    let deliveries = lat.len() as u64;
    let per_delivery = |s: f64| s * 1e6 / deliveries.max(1) as f64;
    let server_cpu = cpu0.0.zip(cpu1.0).map(|(a, b)| b - a);
    let generator_cpu = cpu1.1 - cpu0.1;
    Ok(FanoutReport {
        scenario: "fanout",
        url: o.target.url,
        publish: o.publish,
        subscribers: o.subscribers,
        topics,
        rate: o.rate,
        duration_seconds: o.duration.as_secs().max(1),
        body_bytes: body(o.body_size).len(),
        published,
        publish_failed,
        publish_rate: published as f64 / publish_time.as_secs_f64().max(1e-9),
        expected_deliveries: expected,
        deliveries,
        missed: expected.saturating_sub(deliveries),
        subscribers_lost: lost,
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
        latency_ms_per_second: per_second,
        measured_seconds: measured.as_secs_f64(),
        server_cpu_seconds: server_cpu,
        server_cpu_us_per_delivery: server_cpu.map(per_delivery),
        server_rss_bytes,
        generator_cpu_seconds: generator_cpu,
        generator_cpu_us_per_delivery: per_delivery(generator_cpu),
        resumes,
        replayed,
        routing_lock_hold_max_us,
        window_lock_hold_max_us,
    })
}

type Published = tokio::task::JoinHandle<Result<(u64, u64, Vec<u64>)>>;

/// The publish schedule: publish `seq` is due at `seq / rate` s and goes to topic
/// `seq % topics`; publisher `p` of `n` takes every n-th.
fn schedule(o: &FanoutOpts, start: Instant) -> impl Fn(u64) -> (Instant, usize) + Send + 'static {
    let (rate, topics) = (o.rate.max(1), o.topics.max(1));
    move |seq| {
        (
            start + Duration::from_micros(seq * 1_000_000 / rate),
            (seq as usize) % topics,
        )
    }
}

fn total(o: &FanoutOpts) -> u64 {
    o.rate * o.duration.as_secs().max(1)
}

/// Keep-alive HTTP connections share the schedule (a request waits for its answer
/// before the next).
fn publish_http(o: &FanoutOpts, start: Instant, done: &ProgressBar) -> Vec<Published> {
    let publishers = o.publishers.unwrap_or((o.rate / 250).clamp(4, 64)).max(1);
    let total = total(o);
    let first_failure = Arc::new(AtomicBool::new(false));
    (0..publishers)
        .map(|p| {
            let (url, topics, size) = (o.publish_url.clone(), o.topics.max(1), o.body_size);
            let due = schedule(o, start);
            let (done, first_failure) = (done.clone(), first_failure.clone());
            tokio::spawn(async move {
                let mut h = Http::connect(&url).await?;
                let (mut ok, mut bad) = (0u64, 0u64);
                let mut sent = vec![0u64; topics];
                let mut seq = p;
                while seq < total {
                    let (at, topic) = due(seq);
                    tokio::time::sleep_until(at.into()).await;
                    let json = format!(
                        r#"{{"destination":"/topic/bench.{topic}","body":"{}"}}"#,
                        body(size)
                    );
                    match h.request("POST", "/v1/publish", &json).await {
                        Ok((202, _)) => {
                            ok += 1;
                            sent[topic] += 1;
                        }
                        other => {
                            bad += 1;
                            if !first_failure.swap(true, Ordering::Relaxed) {
                                let why = other.map_or_else(
                                    |e| e.to_string(),
                                    |(status, body)| format!("{url}/v1/publish: {status} {body}"),
                                );
                                note(format_args!("first failed publish: {why}"));
                            }
                        }
                    }
                    done.inc(1);
                    seq += publishers;
                }
                Ok((ok, bad, sent))
            })
        })
        .collect()
}

/// One producer; a publish counts once the broker acknowledged it. Each topic's
/// records share a key, so they keep their order in one partition.
fn publish_kafka(o: &FanoutOpts, start: Instant, done: &ProgressBar) -> Result<Vec<Published>> {
    use rdkafka::ClientConfig;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &o.kafka_brokers)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "10000")
        .set("queue.buffering.max.messages", "1000000");
    for (k, v) in &o.kafka_properties {
        config.set(k, v);
    }
    let brokers = format!("kafka {}", o.kafka_brokers);
    let producer: FutureProducer = config.create().at(&brokers)?;
    let (topic, topics, size) = (o.kafka_topic.clone(), o.topics.max(1), o.body_size);
    let (total, due) = (total(o), schedule(o, start));
    let done = done.clone();
    Ok(vec![tokio::spawn(async move {
        let mut acks = Vec::with_capacity(total as usize);
        for seq in 0..total {
            let (at, t) = due(seq);
            tokio::time::sleep_until(at.into()).await;
            let destination = format!("/topic/bench.{t}");
            let key = t.to_string();
            let body = body(size);
            let headers = OwnedHeaders::new().insert(Header {
                key: "destination",
                value: Some(destination.as_str()),
            });
            let record = FutureRecord::to(&topic)
                .key(&key)
                .payload(&body)
                .headers(headers);
            acks.push((t, producer.send_result(record).map_err(|(e, _)| e)));
            done.inc(1);
        }
        let (mut ok, mut bad) = (0u64, 0u64);
        let mut sent = vec![0u64; topics];
        for (t, ack) in acks {
            let failure = match ack {
                Ok(f) => match f.await {
                    Ok(Ok(_)) => None,
                    Ok(Err((e, _))) => Some(e.to_string()),
                    Err(_) => Some("the acknowledgement was lost".to_owned()),
                },
                Err(e) => Some(e.to_string()),
            };
            match failure {
                None => {
                    ok += 1;
                    sent[t] += 1;
                }
                Some(why) => {
                    if bad == 0 {
                        note(format_args!("first failed publish to {brokers}: {why}"));
                    }
                    bad += 1;
                }
            }
        }
        Ok((ok, bad, sent))
    })])
}

/// STOMP SENDs need no answer, but a server may limit the frames per connection.
fn publish_stomp(o: &FanoutOpts, start: Instant, done: &ProgressBar) -> Vec<Published> {
    let publishers = o.publishers.unwrap_or((o.rate / 50).clamp(1, 64)).max(1);
    let total = total(o);
    (0..publishers)
        .map(|p| {
            let (target, topics, size) = (o.target.clone(), o.topics.max(1), o.body_size);
            let index = o.subscribers + p as usize;
            let due = schedule(o, start);
            let done = done.clone();
            tokio::spawn(async move {
                let mut c = Conn::connect(&target, index).await?;
                let (mut ok, mut bad) = (0u64, 0u64);
                let mut sent = vec![0u64; topics];
                let mut seq = p;
                while seq < total {
                    let (at, topic) = due(seq);
                    tokio::time::sleep_until(at.into()).await;
                    let send = Frame::new(Command::Send)
                        .header("destination", format!("/topic/bench.{topic}"))
                        .header("content-type", "text/plain")
                        .body(body(size));
                    match c.send(&send).await {
                        Ok(()) => {
                            ok += 1;
                            sent[topic] += 1;
                        }
                        Err(_) => bad += 1,
                    }
                    done.inc(1);
                    seq += publishers;
                }
                Ok((ok, bad, sent))
            })
        })
        .collect()
}
