//! `pushcenter bench` as a newcomer runs it: the HTTP URLs follow `--url`, a failure
//! names the address it tried, stdout holds only the JSON report, and `--plot` writes a
//! chart with axes, a legend and the run's parameters.

mod common;

use std::process::Output;

use common::*;

async fn bench(args: &[&str]) -> Output {
    run_bench(args).await
}

/// The report, after checking the run succeeded and stdout is nothing but it.
fn report(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // stderr is a pipe here: no progress bar is drawn into it.
    assert!(
        !stderr.contains('\r'),
        "progress drawn into a pipe: {stderr:?}"
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// `args` with a short, slow schedule.
fn short<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend(["--rate", "10", "--duration", "1s"]);
    all
}

/// The run failed, and its error names `addr`.
fn failed_naming(out: &Output, addr: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {out:?}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("Error:") && l.contains(addr)),
        "the error does not name {addr}: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_without_publish_url_publishes_to_the_node_of_url() {
    let node = Node::standalone(&[]);
    let out = bench(&[
        "fanout",
        "--url",
        &node.ws_url(),
        "--subscribers",
        "10",
        "--topics",
        "2",
        "--rate",
        "50",
        "--duration",
        "1s",
    ])
    .await;
    let r = report(&out);
    // Not 127.0.0.1:8080: the node behind --url took every publish and delivered it.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let publishing = format!("publishing to http://{}/v1/publish", node.http);
    assert!(stderr.contains(&publishing), "{stderr}");
    assert_eq!(
        (r["published"].as_u64(), r["publish_failed"].as_u64()),
        (Some(50), Some(0)),
        "{r}"
    );
    assert_eq!(r["expected_deliveries"], 250, "{r}");
    assert_eq!(r["deliveries"], 250, "{r}");
    assert_eq!(stat(node.http, "messages_published_total").await, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_without_http_url_calls_the_node_of_url() {
    let node = Node::standalone(&[]);
    let out = bench(&[
        "request",
        "--url",
        &node.ws_url(),
        "--clients",
        "4",
        "--rate",
        "20",
        "--duration",
        "1s",
    ])
    .await;
    let r = report(&out);
    assert_eq!(
        (r["requests"].as_u64(), r["answered"].as_u64()),
        (Some(20), Some(20)),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bench_against_a_closed_port_fails_naming_the_address() {
    // Bound and let go: nothing listens there.
    let closed = free_port();
    let ws = format!("ws://{closed}/ws");

    let out = bench(&short(&["fanout", "--url", &ws, "--subscribers", "3"])).await;
    failed_naming(&out, &ws);
    let stomp = ["--publish", "stomp", "--subscribers", "3"];
    let out = bench(&short(&[&["fanout", "--url", &ws][..], &stomp].concat())).await;
    failed_naming(&out, &ws);
    let out = bench(&short(&["request", "--url", &ws, "--clients", "2"])).await;
    failed_naming(&out, &ws);

    // Subscribers on a live node, publishes to the closed port.
    let node = Node::standalone(&[]);
    let (url, http) = (node.ws_url(), format!("http://{closed}"));
    let out = bench(&short(&[
        "fanout",
        "--url",
        &url,
        "--subscribers",
        "3",
        "--publish-url",
        &http,
    ]))
    .await;
    failed_naming(&out, &http);

    // `connections` reports what failed instead of failing; its note names the address.
    let out = bench(&["connections", "--url", &ws, "--count", "5", "--hold", "0s"]).await;
    let r = report(&out);
    assert_eq!(r["failed"], 5, "{r}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("the first: {ws}: ")),
        "the failure does not name {ws}: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plot_has_axes_a_legend_and_the_runs_parameters() {
    let node = Node::standalone(&[]);
    let plot = std::env::temp_dir().join(format!("pushcenter-plot-{}.svg", std::process::id()));
    let out = bench(&[
        "fanout",
        "--url",
        &node.ws_url(),
        "--subscribers",
        "12",
        "--topics",
        "3",
        "--rate",
        "40",
        "--duration",
        "2s",
        "--body-size",
        "64",
        "--plot",
        plot.to_str().expect("utf-8"),
    ])
    .await;
    let r = report(&out);
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    let _ = std::fs::remove_file(&plot);
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    // Each text element's content is a line of its own.
    let texts: Vec<&str> = svg.lines().map(str::trim).collect();
    for text in [
        // The title: what was run.
        "fan-out: 12 subscribers, 3 topics, 40 publishes/s (HTTP), 64-byte bodies, 2 s",
        // The two panels, their axes and their legends.
        "latency over the run",
        "seconds since the first publish (by publish time)",
        "latency by percentile",
        "percentile of all deliveries (%)",
        "latency (ms)",
        "p50",
        "p99",
        "320 deliveries",
        // Percentile ticks on the stretched tail.
        "90",
        "99.9",
    ] {
        assert!(texts.contains(&text), "no {text:?} in the plot: {svg}");
    }
    // Its data: every second of publishing, every delivery counted once.
    // 80 publishes, each to one topic's 4 subscribers.
    assert_eq!(r["deliveries"], 320, "{r}");
    let seconds = r["latency_ms_per_second"].as_array().expect("per second");
    assert!(matches!(seconds.len(), 2 | 3), "{r}");
    let counted: u64 = seconds
        .iter()
        .map(|s| s["deliveries"].as_u64().expect("deliveries"))
        .sum();
    assert_eq!(counted, 320, "{r}");
    for s in seconds {
        let (p50, p99) = (s["p50"].as_f64(), s["p99"].as_f64());
        assert!(p50 > Some(0.0) && p50 <= p99, "{s}");
    }
}
