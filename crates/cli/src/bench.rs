//! `pushcenter bench`: the load generator (crates/bench). Prints progress on stderr and
//! the result as one JSON object on stdout. Targets loopback by default; every run
//! stops by itself.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Result, anyhow};
use pushcenter_bench::{ConnectionsOpts, FanoutOpts, Target};

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(clap::Args)]
struct Common {
    /// A STOMP-over-WebSocket endpoint (this node's, or any broker's).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Connect from these local addresses in turn (e.g. 127.0.0.1,127.0.0.2,...): each
    /// address has its own ~28k ephemeral ports.
    #[arg(long, value_delimiter = ',')]
    sources: Vec<IpAddr>,
    /// Topics the connections subscribe to, `/topic/bench.<i % topics>`.
    #[arg(long, default_value_t = 100)]
    topics: usize,
    /// WebSocket + STOMP handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
}

#[derive(clap::Subcommand)]
enum Scenario {
    /// Ramp N subscribed connections, hold them idle, report the connect rate and the
    /// server's memory per connection.
    Connections {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// How long to hold them before closing.
        #[arg(long, default_value = "5s", value_parser = humantime)]
        hold: Duration,
        /// The node's HTTP base for its memory (`/v1/stats`); omit for other brokers.
        #[arg(long)]
        stats_url: Option<String>,
    },
    /// S subscribers over T topics; HTTP publishes at a fixed rate; deliveries per
    /// second, end-to-end latency, missed messages.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// A node's HTTP base to publish through.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        publish_url: String,
        /// Publishes per second.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value = "10s", value_parser = humantime)]
        duration: Duration,
        /// Also write the latency by percentile as an SVG chart here.
        #[arg(long)]
        plot: Option<std::path::PathBuf>,
    },
    /// Request/reply round trips (`POST /v1/requests` on a pushcenter node) answered by
    /// clients; round trips per second and latency.
    Request {
        #[command(flatten)]
        common: Common,
        /// Answering clients (each request targets one client's session, in turn).
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// The node's HTTP base to call.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        http_url: String,
        /// Requests per second.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value = "10s", value_parser = humantime)]
        duration: Duration,
        /// Each request's `timeout_ms`.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
}

fn humantime(s: &str) -> Result<Duration, String> {
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = n.parse().map_err(|_| format!("bad duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration {s:?}: use ms, s or m")),
    }
}

pub(crate) async fn run(a: BenchArgs) -> Result<()> {
    let json = match a.scenario {
        Scenario::Connections {
            common,
            count,
            hold,
            stats_url,
        } => {
            let report = pushcenter_bench::connections(ConnectionsOpts {
                target: Target {
                    url: common.url,
                    sources: common.sources,
                },
                count,
                topics: common.topics,
                concurrency: common.concurrency,
                hold,
                stats_url,
            })
            .await;
            serde_json::to_string_pretty(&report)?
        }
        Scenario::Fanout {
            common,
            subscribers,
            publish_url,
            rate,
            duration,
            plot,
        } => {
            let report = pushcenter_bench::fanout(FanoutOpts {
                target: Target {
                    url: common.url,
                    sources: common.sources,
                },
                publish_url,
                subscribers,
                topics: common.topics,
                rate,
                duration,
                concurrency: common.concurrency,
            })
            .await
            .map_err(|e| anyhow!("{e}"))?;
            if let Some(path) = plot {
                std::fs::write(&path, pushcenter_bench::latency_svg(&report))?;
                eprintln!("plot: {}", path.display());
            }
            serde_json::to_string_pretty(&report)?
        }
        Scenario::Request {
            common,
            clients,
            http_url,
            rate,
            duration,
            timeout_ms,
        } => {
            let report = pushcenter_bench::request(pushcenter_bench::RequestOpts {
                target: Target {
                    url: common.url,
                    sources: common.sources,
                },
                http_url,
                clients,
                rate,
                duration,
                timeout_ms,
                concurrency: common.concurrency,
            })
            .await
            .map_err(|e| anyhow!("{e}"))?;
            serde_json::to_string_pretty(&report)?
        }
    };
    println!("{json}");
    Ok(())
}
