//! `pushcenter bench`: the load generator (crates/bench). Prints progress on stderr and
//! the result as one JSON object on stdout. Targets loopback by default; every run
//! stops by itself.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use pushcenter_bench::{
    ChildCommand, ClusterOpts, ConnectionsOpts, ConsumeBroker, ConsumeMode, ConsumeOpts,
    FanoutOpts, Publish, Server, Target,
};

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
    /// CONNECT `login` (RabbitMQ: guest).
    #[arg(long)]
    login: Option<String>,
    /// CONNECT `passcode` (RabbitMQ: guest).
    #[arg(long)]
    passcode: Option<String>,
    /// CONNECT `host` header (RabbitMQ: the virtual host, `/`); default: the url's host.
    #[arg(long)]
    vhost: Option<String>,
    /// The server's process id (any broker on this machine): its CPU time and RSS from
    /// /proc over the measured phase.
    #[arg(long)]
    server_pid: Option<u32>,
}

impl Common {
    fn target(&self) -> Target {
        Target {
            url: self.url.clone(),
            sources: self.sources.clone(),
            login: self.login.clone(),
            passcode: self.passcode.clone(),
            vhost: self.vhost.clone(),
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PublishVia {
    /// `POST /v1/publish` on a pushcenter node (`--publish-url`).
    Http,
    /// STOMP SEND over WebSocket to `--url`: works with any broker.
    Stomp,
    /// Records produced to Kafka (`--kafka-brokers`), as a backend would.
    Kafka,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ConsumeVia {
    /// Nobody subscribes: each record is read, kept in the replay window, dropped.
    Drop,
    /// One subscriber of `/topic/consume` reads every record.
    Route,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ConsumeFrom {
    /// A Tansu process.
    Tansu,
    /// librdkafka's mock cluster in the bench's process.
    Mock,
}

#[derive(clap::Subcommand)]
enum Scenario {
    /// Ramp N subscribed connections (over several processes when one may not hold
    /// them all), hold them idle, report the connect rate and the server's memory per
    /// connection as the RSS slope between 1,000 and N.
    Connections {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// How long to hold them before closing.
        #[arg(long, default_value = "5s", value_parser = humantime)]
        hold: Duration,
        /// The node's HTTP base for its memory (`/v1/stats`); `--server-pid` works
        /// for any broker.
        #[arg(long)]
        stats_url: Option<String>,
        /// Connections per generator process; more are spread over child processes.
        /// Default: this process's open-files limit less 200.
        #[arg(long)]
        per_process: Option<usize>,
        /// The RSS slope's first mark: connections open at the first reading.
        #[arg(long, default_value_t = 1000, hide = true)]
        slope_from: usize,
        /// Pause at the slope's first mark before reading the server's memory.
        #[arg(long, default_value = "1s", value_parser = humantime)]
        settle: Duration,
    },
    /// A child process of `connections` (reads its share on stdin).
    #[command(hide = true)]
    Child,
    /// S subscribers over T topics; HTTP, STOMP or Kafka publishes at a fixed rate; deliveries
    /// per second, end-to-end latency, missed messages, CPU per delivery.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// How to publish.
        #[arg(long, value_enum, default_value = "http")]
        publish: PublishVia,
        /// A node's HTTP base to publish through (`--publish http`, `--prefill`).
        /// Default: `--url`'s host and port (ws → http, wss → https).
        #[arg(long)]
        publish_url: Option<String>,
        /// Kafka bootstrap servers (`--publish kafka`).
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka_brokers: String,
        /// The topic the nodes read (`kafka.messages_topic`).
        #[arg(long, default_value = "pushcenter.messages")]
        kafka_topic: String,
        /// A librdkafka property for the producer, `KEY=VALUE`, as in a node's
        /// `[kafka.properties]` (e.g. `security.protocol=SSL`); repeatable.
        #[arg(long = "kafka-property", value_parser = key_value)]
        kafka_properties: Vec<(String, String)>,
        /// Message body size: the publish time in unix µs, padded to this many bytes.
        #[arg(long, default_value_t = 0)]
        body_size: usize,
        /// Publisher connections. Default: HTTP one per 250/s (4 to 64); STOMP one per
        /// 50/s (1 to 64), under pushcenter's 100 frames/s per connection.
        #[arg(long)]
        publishers: Option<u64>,
        /// Publishes per second.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value = "10s", value_parser = humantime)]
        duration: Duration,
        /// Also write an SVG chart here: p50 and p99 latency per second of the run
        /// beside latency by percentile, the run's parameters in its title.
        #[arg(long)]
        plot: Option<std::path::PathBuf>,
        /// Records to publish over `--publish-url` before the run (fills the replay
        /// window).
        #[arg(long, default_value_t = 0)]
        prefill: u64,
        /// Connections that resume `/topic/#` from the start of the window over and over
        /// during the run (live delivery under a resume wave).
        #[arg(long, default_value_t = 0)]
        resumers: usize,
    },
    /// Request/reply round trips (`POST /v1/requests` on a pushcenter node) answered by
    /// clients; round trips per second and latency.
    Request {
        #[command(flatten)]
        common: Common,
        /// Answering clients (each request targets one client's session, in turn).
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// The node's HTTP base to call. Default: `--url`'s host and port (ws → http,
        /// wss → https).
        #[arg(long)]
        http_url: Option<String>,
        /// Requests per second.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value = "10s", value_parser = humantime)]
        duration: Duration,
        /// Each request's `timeout_ms`.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// A whole cluster on this machine under targeted and broadcast load: what each
    /// node fetches from Kafka, delivers and spends in CPU.
    ///
    /// Starts a Tansu broker, an etcd, `pushcenter registry` and N `pushcenter node`s
    /// (this executable), each on free loopback ports with its data in a temp dir; U users connected through the registry, each subscribed to
    /// `/user/queue/bench` and one of `/topic/bench.b<k>`; targeted and broadcast
    /// publishes (`POST /v1/publish` on the nodes in turn) at fixed rates. Reports
    /// what each node fetched from Kafka, delivered and spent in CPU, and whether every
    /// targeted record reached its user exactly once. The nodes run with
    /// `insecure_login_as_user = true` (CONNECT's `login` is the user, unchecked): only
    /// for this loopback benchmark. Every process it starts stops with the run. Needs
    /// `tansu` ($TANSU, $CARGO_HOME/bin or PATH) and `etcd` ($ETCD or PATH).
    Cluster {
        /// Nodes `n1`..`nN`.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Users `u0`..: one connection each, placed by the registry.
        #[arg(long, default_value_t = 1200)]
        users: usize,
        /// Partitions of the targeted topic; default 16 per node.
        #[arg(long)]
        targeted_partitions: Option<u32>,
        /// Targeted publishes per second, to the users in turn.
        #[arg(long, default_value_t = 2000)]
        targeted_rate: u64,
        /// Broadcast publishes per second, to the topics in turn.
        #[arg(long, default_value_t = 100)]
        broadcast_rate: u64,
        /// How long to publish.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Topics `/topic/bench.b<k>`; user `u<i>` subscribes to `b<i % topics>`.
        #[arg(long, default_value_t = 10)]
        broadcast_topics: usize,
    },
    /// A node's CPU to consume records from Kafka, per 100,000.
    ///
    /// Starts a Tansu broker and one `pushcenter node`
    /// (this executable) on loopback; the node is stopped (SIGSTOP) while the records
    /// are produced to `pushcenter.messages` (header `destination: /topic/consume`,
    /// 100-byte bodies, every partition), then continued; its CPU counts from then
    /// until it has fetched them all (routing: until the subscriber read them all).
    /// Every process it starts stops with the run. Needs `tansu` ($TANSU,
    /// $CARGO_HOME/bin or PATH).
    Consume {
        /// Records to produce while the node is stopped.
        #[arg(long, default_value_t = 200_000)]
        records: u64,
        /// `drop`: nobody subscribes; `route`: one subscriber reads every record.
        #[arg(long, value_enum, default_value = "drop")]
        mode: ConsumeVia,
        /// `tansu`: a Tansu process; `mock`: librdkafka's mock cluster in this
        /// process (fetches served from memory, so the node is the limit; at most
        /// 400,000 records).
        #[arg(long, value_enum, default_value = "tansu")]
        broker: ConsumeFrom,
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

/// Connections one process may hold: its open-files limit less a margin for the
/// runtime, pipes and the HTTP client.
fn default_per_process() -> usize {
    let (soft, hard) = pushcenter_bench::nofile_limit();
    if let (Some(s), Some(h)) = (soft, hard) {
        if s < h {
            eprintln!(
                "open-files limit {s} (hard {h}): `ulimit -n {h}` lets one process hold more"
            );
        }
    }
    soft.map_or(1_000, |s| s.saturating_sub(200).max(100) as usize)
}

pub(crate) async fn run(a: BenchArgs) -> Result<()> {
    let json = match a.scenario {
        Scenario::Connections {
            common,
            count,
            hold,
            stats_url,
            per_process,
            slope_from,
            settle,
        } => {
            let report = pushcenter_bench::connections(ConnectionsOpts {
                target: common.target(),
                count,
                topics: common.topics,
                concurrency: common.concurrency,
                hold,
                server: Server {
                    pid: common.server_pid,
                    stats_url,
                },
                slope_from,
                settle,
                per_process: per_process.unwrap_or_else(default_per_process),
                child: Some(ChildCommand {
                    program: std::env::current_exe()?,
                    args: vec!["bench".into(), "child".into()],
                }),
            })
            .await
            .map_err(|e| anyhow!("{e}"))?;
            serde_json::to_string_pretty(&report)?
        }
        Scenario::Child => {
            return pushcenter_bench::child().await.map_err(|e| anyhow!("{e}"));
        }
        Scenario::Fanout {
            common,
            subscribers,
            publish,
            publish_url,
            kafka_brokers,
            kafka_topic,
            kafka_properties,
            body_size,
            publishers,
            rate,
            duration,
            plot,
            prefill,
            resumers,
        } => {
            let needs_http = matches!(publish, PublishVia::Http) || prefill > 0;
            let publish_url = match publish_url {
                Some(u) => u,
                None if needs_http => http_base(&common.url, "--publish-url")?,
                None => String::new(),
            };
            if needs_http {
                eprintln!("publishing to {publish_url}/v1/publish");
            }
            let report = pushcenter_bench::fanout(FanoutOpts {
                prefill,
                resumers,
                target: common.target(),
                publish: match publish {
                    PublishVia::Http => Publish::Http,
                    PublishVia::Stomp => Publish::Stomp,
                    PublishVia::Kafka => Publish::Kafka,
                },
                publish_url,
                kafka_brokers,
                kafka_topic,
                kafka_properties,
                subscribers,
                topics: common.topics,
                rate,
                duration,
                concurrency: common.concurrency,
                body_size,
                publishers,
                server: Server {
                    pid: common.server_pid,
                    stats_url: None,
                },
            })
            .await
            .map_err(|e| anyhow!("{e}"))?;
            if let Some(path) = plot {
                let svg = pushcenter_bench::latency_svg(&report).map_err(|e| anyhow!("{e}"))?;
                std::fs::write(&path, svg)
                    .with_context(|| format!("writing the plot to {}", path.display()))?;
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
            let http_url = match http_url {
                Some(u) => u,
                None => http_base(&common.url, "--http-url")?,
            };
            let report = pushcenter_bench::request(pushcenter_bench::RequestOpts {
                target: common.target(),
                http_url,
                clients,
                rate,
                duration,
                timeout_ms,
                concurrency: common.concurrency,
                server: Server {
                    pid: common.server_pid,
                    stats_url: None,
                },
            })
            .await
            .map_err(|e| anyhow!("{e}"))?;
            serde_json::to_string_pretty(&report)?
        }
        Scenario::Cluster {
            nodes,
            users,
            targeted_partitions,
            targeted_rate,
            broadcast_rate,
            seconds,
            broadcast_topics,
        } => {
            let per_node = u32::try_from(nodes).unwrap_or(u32::MAX).saturating_mul(16);
            let report = pushcenter_bench::cluster(ClusterOpts {
                program: std::env::current_exe()?,
                nodes,
                users,
                targeted_partitions: targeted_partitions.unwrap_or(per_node),
                targeted_rate,
                broadcast_rate,
                seconds,
                broadcast_topics,
            })
            .await
            .map_err(|e| anyhow!("{e}"))?;
            serde_json::to_string_pretty(&report)?
        }
        Scenario::Consume {
            records,
            mode,
            broker,
        } => {
            let report = pushcenter_bench::consume(ConsumeOpts {
                program: std::env::current_exe()?,
                records,
                mode: match mode {
                    ConsumeVia::Drop => ConsumeMode::Drop,
                    ConsumeVia::Route => ConsumeMode::Route,
                },
                broker: match broker {
                    ConsumeFrom::Tansu => ConsumeBroker::Tansu,
                    ConsumeFrom::Mock => ConsumeBroker::Mock,
                },
            })
            .await
            .map_err(|e| anyhow!("{e}"))?;
            serde_json::to_string_pretty(&report)?
        }
    };
    println!("{json}");
    Ok(())
}

/// The node's HTTP base behind `--url`, for an HTTP url option left out.
fn http_base(url: &str, option: &str) -> Result<String> {
    pushcenter_bench::http_base(url)
        .ok_or_else(|| anyhow!("--url {url} is not ws:// or wss://: give {option}"))
}

/// `KEY=VALUE`, for `--kafka-property`.
fn key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected KEY=VALUE"))?;
    if k.trim().is_empty() {
        return Err(format!("`{s}`: the key is empty"));
    }
    Ok((k.trim().to_string(), v.to_string()))
}
