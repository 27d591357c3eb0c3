//! A client that stops reading must not hold up anyone else or grow the node's memory.
//! 1,000 subscribers and one stuck client share a topic; the stuck client also gets a
//! flood of large messages nobody else wants, far more than its queue and socket hold.

mod common;

use std::time::Duration;

use common::*;
use pushcenter_stomp::Command;

const SUBSCRIBERS: usize = 1_000;
const ROUNDS: usize = 50;
/// Large messages per round for the stuck client: 50 × 40 × 48 KiB ≈ 94 MiB in all.
const HEAVY_PER_ROUND: usize = 40;
const HEAVY_BYTES: usize = 48 * 1024;
/// What the node may grow by while the flood goes to a client that reads nothing.
const RSS_GROWTH_LIMIT_KIB: u64 = 32 * 1024;

fn config(policy: &str, write_timeout: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "pushcenter-slow-{policy}-{}.toml",
        std::process::id()
    ));
    std::fs::write(
        &path,
        // A 1 MiB replay window, so the growth measured is the outboxes' alone.
        format!(
            "slow_consumer = \"{policy}\"\nwrite_timeout = \"{write_timeout}\"\n\
             replay_window_bytes = 1048576\n"
        ),
    )
    .expect("write config");
    path
}

async fn stat(node: &Node, name: &str) -> u64 {
    let (status, body) = http(node.http, "GET", "/v1/stats", "").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("stats json");
    v[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

struct Run {
    node: Node,
    slow: WsClient,
    _others: Vec<WsClient>,
    baseline_kib: u64,
    peak_kib: u64,
}

/// Connects everyone, floods, and checks that all 1,000 subscribers got every shared
/// message in order.
async fn flood(policy: &str, write_timeout: &str) -> Run {
    let cfg = config(policy, write_timeout);
    let node = Node::standalone(&["--config", cfg.to_str().expect("utf-8 path")]);

    let mut readers = Vec::with_capacity(SUBSCRIBERS);
    for i in 0..SUBSCRIBERS {
        let mut c = WsClient::connect(&node.ws_url()).await;
        c.subscribe(&format!("s{i}"), "/topic/all").await;
        readers.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(ROUNDS);
            while got.len() < ROUNDS {
                let Some(f) = c.frame_within(Duration::from_secs(30)).await else {
                    break;
                };
                assert_eq!(f.command, Command::Message, "{f:?}");
                got.push(String::from_utf8_lossy(&f.body).into_owned());
            }
            (got, c)
        }));
    }
    let mut slow = WsClient::connect(&node.ws_url()).await;
    slow.subscribe("all", "/topic/all").await;
    slow.subscribe("heavy", "/topic/heavy").await;
    // From here on the stuck client reads nothing.

    let baseline_kib = node.rss_kib();
    let mut peak_kib = baseline_kib;
    let heavy = "x".repeat(HEAVY_BYTES);
    for round in 0..ROUNDS {
        for _ in 0..HEAVY_PER_ROUND {
            let (status, body) = publish(node.http, "/topic/heavy", &heavy).await;
            assert_eq!(status, 202, "{body}");
        }
        let (status, body) = publish(node.http, "/topic/all", &format!("m{round}")).await;
        assert_eq!(status, 202, "{body}");
        peak_kib = peak_kib.max(node.rss_kib());
    }

    let want: Vec<String> = (0..ROUNDS).map(|r| format!("m{r}")).collect();
    let mut others = Vec::with_capacity(SUBSCRIBERS);
    for (i, r) in readers.into_iter().enumerate() {
        let (got, c) = r.await.expect("reader task");
        assert_eq!(got, want, "subscriber {i} missed or reordered messages");
        others.push(c);
    }
    let _ = std::fs::remove_file(cfg);
    Run {
        node,
        slow,
        _others: others,
        baseline_kib,
        peak_kib,
    }
}

fn assert_bounded(run: &Run) {
    let growth = run.peak_kib.saturating_sub(run.baseline_kib);
    eprintln!(
        "node RSS: {} KiB with {SUBSCRIBERS} subscribers, peak {} KiB during the flood (+{growth} KiB)",
        run.baseline_kib, run.peak_kib
    );
    assert!(
        growth < RSS_GROWTH_LIMIT_KIB,
        "RSS grew by {growth} KiB while flooding a stuck client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_client_is_disconnected_and_others_get_everything() {
    let mut run = flood("disconnect", "2s").await;
    assert_bounded(&run);
    assert_eq!(stat(&run.node, "slow_consumer_disconnects_total").await, 1);

    // What the stuck client finds when it reads again: what its socket held, possibly
    // the ERROR, then the end of the connection.
    let mut frames = 0;
    loop {
        match run.slow.frame_within(Duration::from_secs(10)).await {
            Some(f) if f.command == Command::Message => frames += 1,
            Some(f) => {
                assert_eq!(f.command, Command::Error, "{f:?}");
                assert_eq!(f.get("message"), Some("slow consumer"));
            }
            None => break,
        }
    }
    assert!(
        frames < ROUNDS * (HEAVY_PER_ROUND + 1),
        "the stuck client was not cut off"
    );
    // Only the stuck client was dropped.
    assert_eq!(stat(&run.node, "connections").await, SUBSCRIBERS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_keeps_the_stuck_client_with_the_newest_messages() {
    let mut run = flood("drop-oldest", "120s").await;
    assert_bounded(&run);
    assert!(stat(&run.node, "messages_dropped_total").await > 0);
    assert_eq!(stat(&run.node, "slow_consumer_disconnects_total").await, 0);

    // Reading again, the client catches up to the newest shared message and stays.
    let last = format!("m{}", ROUNDS - 1);
    loop {
        let f = run
            .slow
            .frame_within(Duration::from_secs(10))
            .await
            .expect("still connected and catching up");
        if f.get("subscription") == Some("all") && f.body[..] == *last.as_bytes() {
            break;
        }
    }
    let (status, body) = publish(run.node.http, "/topic/all", "after").await;
    assert_eq!(status, 202, "{body}");
    let f = run.slow.frame().await.expect("live again");
    assert_eq!(&f.body[..], b"after");
}
