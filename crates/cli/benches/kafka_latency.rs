//! Kafka publish → STOMP client delivery latency at a fixed rate, on real processes:
//! a Tansu broker, one `pushcenter node`, one WebSocket subscriber; a plain rdkafka
//! producer stamps each record with its send time.
//!
//! cargo bench -p pushcenter --bench kafka_latency [-- RATE SECONDS [NODE_CONFIG.toml]]
//! `LINGER_MS` sets the producer's `linger.ms` (default 5).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::broker::Broker;
use common::{Node, WsClient, http};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let rate: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let total = rate * seconds;

    let broker = Broker::start();
    let extra: Vec<&str> = match args.get(2) {
        Some(path) => vec!["--config", path.as_str()],
        None => vec![],
    };
    let node = Node::cluster("bench", &broker.brokers(), &extra);
    let start = Instant::now();
    while http(node.http, "GET", "/readyz", "").await.0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(30), "node not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = WsClient::connect(&node.ws_url()).await;
    client.subscribe("s", "/topic/bench").await;

    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set(
            "linger.ms",
            std::env::var("LINGER_MS").unwrap_or_else(|_| "5".into()),
        )
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let done = done.clone();
        std::thread::spawn(move || {
            // 1 ms ticks; each tick sends what the schedule says is due.
            let begin = Instant::now();
            let mut sent = 0u64;
            let body = "x".repeat(200);
            while sent < total {
                let due = (begin.elapsed().as_micros() as u64 * rate / 1_000_000).min(total);
                while sent < due {
                    let ts = now_micros().to_string();
                    let headers = OwnedHeaders::new()
                        .insert(Header {
                            key: "destination",
                            value: Some("/topic/bench"),
                        })
                        .insert(Header {
                            key: "ts",
                            value: Some(ts.as_str()),
                        });
                    let key = (sent % 64).to_string();
                    let rec = BaseRecord::to("pushcenter.messages")
                        .key(&key)
                        .payload(&body)
                        .headers(headers);
                    if producer.send(rec).is_err() {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = producer.flush(Duration::from_secs(10));
            done.store(true, Ordering::Relaxed);
        })
    };

    let mut latencies = Vec::with_capacity(total as usize);
    while (latencies.len() as u64) < total {
        let Some(f) = client.frame_within(Duration::from_secs(10)).await else {
            break;
        };
        if let Some(ts) = f.get("ts").and_then(|t| t.parse::<u64>().ok()) {
            latencies.push(now_micros().saturating_sub(ts));
        }
    }
    let _ = sender.join();
    latencies.sort_unstable();
    let got = latencies.len() as u64;
    println!(
        "kafka -> client: rate {rate}/s for {seconds} s, received {got}/{total}; latency ms p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        percentile(&latencies, 1.0),
    );
    assert!(done.load(Ordering::Relaxed));
}
