//! `pushcenter bench` against a standalone node: the load generator's reports say what
//! happened (every connection made, every publish delivered to every subscriber).

mod common;

use common::*;

async fn bench(args: &[&str]) -> serde_json::Value {
    let out = run_bench(args).await;
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_two_source_addresses_all_connect_and_cost_memory() {
    let node = Node::standalone(&[]);
    let url = node.ws_url();
    let stats = format!("http://{}", node.http);
    let r = bench(&[
        "connections",
        "--url",
        &url,
        "--count",
        "400",
        "--hold",
        "200ms",
        "--sources",
        "127.0.0.1,127.0.0.2",
        "--stats-url",
        &stats,
    ])
    .await;
    assert_eq!(r["scenario"], "connections");
    assert_eq!(
        (r["connected"].as_u64(), r["failed"].as_u64()),
        (Some(400), Some(0)),
        "{r}"
    );
    assert!(r["connect_rate"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    // Each connection holds some memory on the node, and not megabytes.
    let per = r["server_rss_per_connection_bytes"]
        .as_u64()
        .expect("rss per connection");
    assert!(per > 0 && per < 1 << 20, "{r}");
}

/// The node's open connections, from `/v1/stats`.
async fn open_connections(node: &Node) -> u64 {
    let (_, stats) = http(node.http, "GET", "/v1/stats", "").await;
    let v: serde_json::Value = serde_json::from_str(&stats).expect("stats json");
    v["connections"].as_u64().expect("connections")
}

/// Polls until the node holds `n` connections; false after 20 s.
async fn until_connections(node: &Node, n: u64) -> bool {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        if open_connections(node).await == n {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_above_one_process_share_are_held_by_child_processes() {
    let node = Node::standalone(&[]);
    let url = node.ws_url();
    let pid = node.pid().to_string();
    // 100 in the bench process up to the slope's mark, then 300 over two children.
    let r = bench(&[
        "connections",
        "--url",
        &url,
        "--count",
        "400",
        "--per-process",
        "150",
        "--slope-from",
        "100",
        "--settle",
        "100ms",
        "--hold",
        "200ms",
        "--server-pid",
        &pid,
    ])
    .await;
    assert_eq!(
        (r["connected"].as_u64(), r["failed"].as_u64()),
        (Some(400), Some(0)),
        "{r}"
    );
    assert_eq!(r["processes"], 3, "{r}");
    assert_eq!(r["slope_from_connections"], 100, "{r}");
    let at_mark = r["server_rss_at_slope_from_bytes"]
        .as_u64()
        .expect("rss at mark");
    let at_n = r["server_rss_at_n_bytes"].as_u64().expect("rss at n");
    assert!(at_mark > 0 && at_n > 0, "{r}");
    let slope = r["server_rss_slope_bytes_per_connection"]
        .as_i64()
        .expect("slope");
    assert!(slope.abs() < 1 << 20, "{r}");
    assert!(
        r["server_cpu_seconds"].as_f64().expect("server cpu") > 0.0,
        "{r}"
    );
    let rate = r["connect_rate"].as_f64().expect("rate");
    assert!(
        rate > 0.0 && rate <= r["connect_rate_excluding_pause"].as_f64().expect("rate"),
        "{r}"
    );
    // The children closed their connections when the run ended.
    assert!(until_connections(&node, 0).await, "connections left open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_processes_let_go_of_their_connections_when_the_bench_is_killed() {
    let node = Node::standalone(&[]);
    let url = node.ws_url();
    let mut run = std::process::Command::new(env!("CARGO_BIN_EXE_pushcenter"))
        .args(["bench", "connections", "--url", &url, "--count", "150"])
        .args(["--per-process", "50", "--slope-from", "50", "--hold", "10m"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run pushcenter bench");
    assert!(until_connections(&node, 150).await, "never reached 150");
    run.kill().expect("kill");
    run.wait().expect("wait");
    assert!(
        until_connections(&node, 0).await,
        "children still hold connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_published_over_stomp_reaches_every_subscriber_and_costs_server_cpu() {
    let node = Node::standalone(&[]);
    let url = node.ws_url();
    let pid = node.pid().to_string();
    let r = bench(&[
        "fanout",
        "--url",
        &url,
        "--publish",
        "stomp",
        "--body-size",
        "256",
        "--subscribers",
        "60",
        "--topics",
        "6",
        "--rate",
        "200",
        "--duration",
        "2s",
        "--server-pid",
        &pid,
    ])
    .await;
    assert_eq!(r["publish"], "stomp", "{r}");
    assert_eq!(r["body_bytes"], 256, "{r}");
    assert_eq!(
        (r["published"].as_u64(), r["publish_failed"].as_u64()),
        (Some(400), Some(0)),
        "{r}"
    );
    assert_eq!(r["expected_deliveries"], 4000, "{r}");
    assert_eq!(r["deliveries"], 4000, "{r}");
    assert_eq!(
        (r["missed"].as_u64(), r["subscribers_lost"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
    let p50 = r["latency_ms_p50"].as_f64().expect("p50");
    assert!(
        p50 > 0.0 && p50 <= r["latency_ms_p99"].as_f64().expect("p99"),
        "{r}"
    );
    assert!(
        r["server_cpu_seconds"].as_f64().expect("server cpu") > 0.0,
        "{r}"
    );
    assert!(
        r["server_cpu_us_per_delivery"]
            .as_f64()
            .expect("per delivery")
            > 0.0,
        "{r}"
    );
    assert!(
        r["generator_cpu_us_per_delivery"].as_f64().expect("own") > 0.0,
        "{r}"
    );
    assert!(r["server_rss_bytes"].as_u64().expect("rss") > 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_every_publish_to_every_subscriber_of_its_topic() {
    let node = Node::standalone(&[]);
    let url = node.ws_url();
    let publish = format!("http://{}", node.http);
    let plot = std::env::temp_dir().join(format!("pushcenter-bench-{}.svg", std::process::id()));
    let r = bench(&[
        "fanout",
        "--url",
        &url,
        "--publish-url",
        &publish,
        "--subscribers",
        "60",
        "--topics",
        "6",
        "--rate",
        "200",
        "--duration",
        "2s",
        "--plot",
        plot.to_str().expect("utf-8"),
    ])
    .await;
    assert_eq!(r["published"], 400, "{r}");
    assert_eq!(r["publish_failed"], 0, "{r}");
    // 6 topics of 10 subscribers each: every publish reaches 10.
    assert_eq!(r["expected_deliveries"], 4000, "{r}");
    assert_eq!(r["deliveries"], 4000, "{r}");
    assert_eq!(r["missed"], 0, "{r}");
    let p50 = r["latency_ms_p50"].as_f64().expect("p50");
    let p99 = r["latency_ms_p99"].as_f64().expect("p99");
    assert!(p50 > 0.0 && p50 <= p99, "{r}");
    // The chart: an SVG with a line through the 102 percentiles (its other lines, the
    // per-second ones, and its text: tests/bench_cli.rs).
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    let _ = std::fs::remove_file(&plot);
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    let lines: Vec<usize> = svg
        .split("points=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(|points| points.split_whitespace().count())
        .collect();
    assert!(lines.contains(&102), "polylines of {lines:?} points");
    assert_eq!(
        r["latency_ms_by_percentile"].as_array().map(Vec::len),
        Some(102)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_round_trips_are_all_answered_by_the_clients() {
    let node = Node::standalone(&[]);
    let url = node.ws_url();
    let api = format!("http://{}", node.http);
    let r = bench(&[
        "request",
        "--url",
        &url,
        "--http-url",
        &api,
        "--clients",
        "20",
        "--rate",
        "100",
        "--duration",
        "2s",
    ])
    .await;
    assert_eq!(r["requests"], 200, "{r}");
    assert_eq!(r["answered"], 200, "{r}");
    assert_eq!(
        (r["timed_out"].as_u64(), r["failed"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
    let p50 = r["latency_ms_p50"].as_f64().expect("p50");
    assert!(
        p50 > 0.0 && p50 <= r["latency_ms_p99"].as_f64().expect("p99"),
        "{r}"
    );
    // The node saw them as answered requests.
    let (_, stats) = http(node.http, "GET", "/v1/stats", "").await;
    assert!(stats.contains("\"requests_answered_total\":200"), "{stats}");
}

/// Publishing straight to Kafka, as a backend would: a node on a real broker delivers
/// every record to every subscriber of its topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_published_to_kafka_reaches_every_subscriber() {
    let broker = common::broker::Broker::start();
    let node = Node::cluster("bench-k", &broker.brokers(), &[]);
    ready(&node).await;
    let url = node.ws_url();
    let r = bench(&[
        "fanout",
        "--url",
        &url,
        "--publish",
        "kafka",
        "--kafka-brokers",
        &broker.brokers(),
        "--subscribers",
        "20",
        "--topics",
        "4",
        "--rate",
        "100",
        "--duration",
        "2s",
        "--body-size",
        "256",
    ])
    .await;
    assert_eq!(r["publish"], "kafka", "{r}");
    assert_eq!(r["published"], 200, "{r}");
    assert_eq!(r["publish_failed"], 0, "{r}");
    // 4 topics of 5 subscribers each: every record reaches 5.
    assert_eq!(r["expected_deliveries"], 1000, "{r}");
    assert_eq!(r["deliveries"], 1000, "{r}");
    assert_eq!(r["missed"], 0, "{r}");
    assert_eq!(r["body_bytes"], 256, "{r}");
}
