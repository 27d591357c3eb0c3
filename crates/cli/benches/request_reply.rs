//! Cross-node request/reply round trips at a fixed rate, on real processes: a Tansu
//! broker, two `pushcenter node`s, 100 responding WebSocket clients on node 1, and a
//! caller posting `POST /v1/requests` to node 2 (one HTTP/1.1 connection per request).
//!
//! cargo bench -p pushcenter --bench request_reply [-- RATE SECONDS]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::broker::Broker;
use common::{Node, WsClient, http};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let rate: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let total = rate * seconds;

    let path =
        std::env::temp_dir().join(format!("pushcenter-rr-bench-{}.toml", std::process::id()));
    std::fs::write(&path, "insecure_login_as_user = true\n").expect("write config");
    let cfg = path.to_str().expect("utf-8 path");
    let broker = Broker::start();
    let nodes: Vec<Node> = ["n1", "n2"]
        .iter()
        .map(|id| Node::cluster(id, &broker.brokers(), &["--config", cfg]))
        .collect();
    for n in &nodes {
        let start = Instant::now();
        while http(n.http, "GET", "/readyz", "").await.0 != 200 {
            assert!(start.elapsed() < Duration::from_secs(30), "node not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut responders = Vec::new();
    for i in 0..100 {
        let user = format!("u{i}");
        let (mut c, _) = WsClient::login(&nodes[0].ws_url(), Some(&user)).await;
        c.subscribe("r", "/user/queue/requests").await;
        responders.push(c.answer_requests(user));
    }

    let caller = nodes[1].http;
    let mut calls = tokio::task::JoinSet::new();
    let begin = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while sent < total {
        tick.tick().await;
        let due = (begin.elapsed().as_micros() as u64 * rate / 1_000_000).min(total);
        while sent < due {
            let body = serde_json::json!({
                "user": format!("u{}", sent % 100),
                "destination": "/user/queue/requests",
                "body": "x".repeat(100),
                "timeout_ms": 10_000,
            })
            .to_string();
            calls.spawn(async move {
                let start = Instant::now();
                let (status, _) = http(caller, "POST", "/v1/requests", &body).await;
                (status, start.elapsed())
            });
            sent += 1;
        }
    }
    let mut latencies = Vec::with_capacity(total as usize);
    let mut failed = 0u64;
    while let Some(r) = calls.join_next().await {
        match r {
            Ok((200, took)) => latencies.push(took),
            _ => failed += 1,
        }
    }
    latencies.sort_unstable();
    println!(
        "request/reply n2 -> client on n1 -> n2: rate {rate}/s for {seconds} s, answered {}/{total} ({failed} failed); round trip ms p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        percentile(&latencies, 1.0),
    );
    for r in responders {
        r.abort();
    }
    let _ = std::fs::remove_file(path);
}
