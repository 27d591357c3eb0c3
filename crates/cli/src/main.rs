//! `pushcenter`: the one binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod bench;
mod publish;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use pushcenter_kafka::{KafkaBus, KafkaConfig};
use pushcenter_node::{Bus, MemoryBus, MemoryRegistrar, NodeConfig, Registrar, Server};
use pushcenter_registry::{EtcdConfig, EtcdRegistrar};
use serde::Deserialize;
use tokio::sync::watch;

#[derive(Parser)]
#[command(name = "pushcenter", version, about = "A STOMP push center cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One node with an in-process bus and registry: same protocol, same HTTP API.
    Standalone(NodeArgs),
    /// A cluster node: records travel through Kafka, so every node sees every publish.
    Node(ClusterArgs),
    /// The discovery service: watches the nodes in etcd, hands clients a node.
    Registry(RegistryArgs),
    /// Validate a config file and print the effective config.
    CheckConfig(ClusterArgs),
    /// Publish one message through a node's HTTP API.
    Publish(publish::PublishArgs),
    /// The load generator: `connections`, `fanout` or `request`.
    Bench(bench::BenchArgs),
}

#[derive(clap::Args)]
struct RegistryArgs {
    /// TOML config file: `http_addr` and an `[etcd]` section.
    #[arg(long, env = "PUSHCENTER_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP listen address; port 0 picks a free port.
    #[arg(long, env = "PUSHCENTER_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// etcd endpoints, comma-separated: `http://host:2379,...`.
    #[arg(long, env = "PUSHCENTER_ETCD_ENDPOINTS", value_delimiter = ',')]
    etcd_endpoints: Option<Vec<String>>,
    /// Log format: human or json.
    #[arg(long, env = "PUSHCENTER_LOG_FORMAT", default_value = "human")]
    log_format: String,
}

#[derive(Debug, serde::Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RegistryConfig {
    http_addr: SocketAddr,
    etcd: EtcdConfig,
}

impl Default for RegistryConfig {
    fn default() -> RegistryConfig {
        RegistryConfig {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8090)),
            etcd: EtcdConfig::default(),
        }
    }
}

impl RegistryArgs {
    fn config(&self) -> Result<RegistryConfig> {
        let mut cfg: RegistryConfig = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => RegistryConfig::default(),
        };
        if let Some(a) = self.http_addr {
            cfg.http_addr = a;
        }
        if let Some(e) = &self.etcd_endpoints {
            cfg.etcd.endpoints = e.clone();
        }
        cfg.etcd.check().map_err(anyhow::Error::msg)?;
        Ok(cfg)
    }
}

#[derive(clap::Args)]
struct ClusterArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Kafka bootstrap servers, `host:port[,host:port]`.
    #[arg(long, env = "PUSHCENTER_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// The WebSocket URL clients use to reach this node (handed out by the registry).
    #[arg(long, env = "PUSHCENTER_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// etcd endpoints, comma-separated; without them (and without `[etcd]`) the node
    /// registers nowhere.
    #[arg(long, env = "PUSHCENTER_ETCD_ENDPOINTS", value_delimiter = ',')]
    etcd_endpoints: Option<Vec<String>>,
}

/// A config file: the node's keys at the top level, the bus in `[kafka]`, the
/// registry in `[etcd]`.
struct FileConfig {
    node: NodeConfig,
    kafka: Option<KafkaConfig>,
    etcd: Option<EtcdConfig>,
    /// `[kafka]` names `brokers` (its default is only a placeholder).
    brokers_given: bool,
}

fn read_config(path: Option<&PathBuf>) -> Result<FileConfig> {
    let Some(path) = path else {
        return Ok(FileConfig {
            node: NodeConfig::default(),
            kafka: None,
            etcd: None,
            brokers_given: false,
        });
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let brokers_given = table
        .get("kafka")
        .and_then(toml::Value::as_table)
        .is_some_and(|k| k.contains_key("brokers"));
    let kafka = match table.remove("kafka") {
        Some(v) => Some(
            KafkaConfig::deserialize(v).with_context(|| format!("{}: [kafka]", path.display()))?,
        ),
        None => None,
    };
    let etcd = match table.remove("etcd") {
        Some(v) => Some(
            EtcdConfig::deserialize(v).with_context(|| format!("{}: [etcd]", path.display()))?,
        ),
        None => None,
    };
    let node = NodeConfig::deserialize(toml::Value::Table(table))
        .with_context(|| format!("parsing {}", path.display()))?;
    Ok(FileConfig {
        node,
        kafka,
        etcd,
        brokers_given,
    })
}

/// A cluster node's whole configuration.
struct ClusterConfig {
    node: NodeConfig,
    kafka: KafkaConfig,
    etcd: Option<EtcdConfig>,
    /// Brokers came from a flag, the environment or the file.
    brokers_given: bool,
}

/// Why `pushcenter node` refuses a config without brokers: an in-memory bus, or a
/// default broker address that is not there, would leave this node out of the cluster.
const NO_BROKERS: &str = "no Kafka brokers given: pass --kafka-brokers HOST:PORT[,HOST:PORT] \
(or PUSHCENTER_KAFKA_BROKERS, or `brokers` in the config's [kafka]); a cluster node reads \
the cluster's Kafka (one node without Kafka: `pushcenter standalone`)";

impl ClusterArgs {
    fn config(&self) -> Result<ClusterConfig> {
        let file = read_config(self.node.config.as_ref())?;
        let brokers_given = file.brokers_given || self.kafka_brokers.is_some();
        let mut etcd = file.etcd;
        if let Some(e) = &self.etcd_endpoints {
            etcd.get_or_insert_with(EtcdConfig::default).endpoints = e.clone();
        }
        if let Some(e) = &etcd {
            e.check().map_err(anyhow::Error::msg)?;
        }
        let mut node = self.node.apply(file.node)?;
        let mut kafka = file.kafka.unwrap_or_default();
        if let Some(b) = &self.kafka_brokers {
            kafka.brokers = b.clone();
        }
        if let Some(u) = &self.advertise_url {
            node.advertise_url = Some(u.clone());
        }
        Ok(ClusterConfig {
            node,
            kafka,
            etcd,
            brokers_given,
        })
    }
}

#[derive(clap::Args)]
struct NodeArgs {
    /// TOML config file; flags and environment variables override it.
    #[arg(long, env = "PUSHCENTER_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP + WebSocket listen address; port 0 picks a free port.
    #[arg(long, env = "PUSHCENTER_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// STOMP-over-TCP listen address (off unless given).
    #[arg(long, env = "PUSHCENTER_TCP_ADDR")]
    tcp_addr: Option<SocketAddr>,
    #[arg(long, env = "PUSHCENTER_NODE_ID")]
    node_id: Option<String>,
    /// Log format: human or json.
    #[arg(long, env = "PUSHCENTER_LOG_FORMAT", default_value = "human")]
    log_format: String,
}

impl NodeArgs {
    /// The standalone config: a `[kafka]` section there is a mistake worth saying.
    fn node_config(&self) -> Result<NodeConfig> {
        let file = read_config(self.config.as_ref())?;
        if file.kafka.is_some() {
            anyhow::bail!(
                "[kafka] is for `pushcenter node`; standalone has its own in-process bus"
            );
        }
        self.apply(file.node)
    }

    /// Flags and environment over the file.
    fn apply(&self, mut cfg: NodeConfig) -> Result<NodeConfig> {
        if let Some(a) = self.http_addr {
            cfg.http_addr = a;
        }
        if let Some(a) = self.tcp_addr {
            cfg.tcp_addr = Some(a);
        }
        if let Some(id) = &self.node_id {
            cfg.node_id = id.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// How far the operator's signals have asked the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stop {
    Running,
    /// SIGTERM: drain (clients are told to reconnect elsewhere; up to `shutdown_grace`).
    Drain,
    /// SIGINT, also in the middle of a drain: exit at once.
    Now,
}

/// Installs the SIGTERM and SIGINT handlers and follows them for the rest of the run.
/// Called before the `listening` line: a signal sent once it is printed is never met
/// by the default action.
fn stop_signals() -> Result<watch::Receiver<Stop>> {
    let (stop_tx, stop_rx) = watch::channel(Stop::Running);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = term.recv() => {
                        stop_tx.send_if_modified(|s| {
                            let first = *s == Stop::Running;
                            if first {
                                *s = Stop::Drain;
                            }
                            first
                        });
                    }
                    Some(()) = int.recv() => {
                        stop_tx.send_replace(Stop::Now);
                    }
                    else => break,
                }
            }
            // Keep the sender: a closed channel must not read as a signal.
            std::future::pending::<()>().await;
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        // Ctrl-C, the one signal there, is SIGINT's fast stop.
        if tokio::signal::ctrl_c().await.is_ok() {
            stop_tx.send_replace(Stop::Now);
        }
        std::future::pending::<()>().await;
    });
    Ok(stop_rx)
}

/// Resolves once the signals have asked for `level` (or more).
async fn stopped(mut stop: watch::Receiver<Stop>, level: Stop) {
    if stop.wait_for(|s| *s >= level).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// SIGINT's stop: no drain and no grace period. The node's registration is withdrawn
/// if etcd takes that within half a second (else its lease runs out); the sockets
/// close as the process exits.
async fn stop_now(registrar: Option<&dyn Registrar>) -> ! {
    tracing::info!("SIGINT: stopping at once, without a drain");
    if let Some(r) = registrar {
        let _ = tokio::time::timeout(Duration::from_millis(500), r.deregister()).await;
    }
    std::process::exit(0)
}

/// Binds, prints the `listening` line scripts wait for, serves until a signal.
async fn serve(cfg: NodeConfig, bus: Arc<dyn Bus>, registrar: Arc<dyn Registrar>) -> Result<()> {
    let server = Server::bind(cfg, bus, registrar.clone()).await?;
    let stop = stop_signals()?;
    let mut line = String::from("listening");
    if let Some(a) = server.http_addr() {
        line.push_str(&format!(" http={a}"));
    }
    if let Some(a) = server.tcp_addr() {
        line.push_str(&format!(" tcp={a}"));
    }
    println!("{line}");
    tokio::select! {
        biased;
        () = stopped(stop.clone(), Stop::Now) => stop_now(Some(registrar.as_ref())).await,
        r = server.run(stopped(stop, Stop::Drain)) => r?,
    }
    Ok(())
}

/// librdkafka retries a connection the broker refused forever. Before the node is
/// ready, a refused credential (TLS handshake, SASL) is a configuration error: the node
/// exits non-zero with the reason. Once it runs, a refusal is logged and the node keeps
/// its clients while the broker is fixed.
async fn refused_at_start(bus: Arc<KafkaBus>) {
    loop {
        if bus.ready() {
            return;
        }
        if let Some(why) = bus.refused() {
            eprintln!("error: {why}");
            std::process::exit(1);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The config as `check-config` prints it: secrets replaced, never shown.
fn redacted(cfg: &NodeConfig) -> Result<toml::Value> {
    let mut v = toml::Value::try_from(cfg)?;
    if let Some(auth) = v.get_mut("auth").and_then(toml::Value::as_table_mut) {
        if auth.contains_key("hs256_secret") {
            auth.insert("hs256_secret".into(), "(redacted)".into());
        }
        if let Some(keys) = auth.get_mut("api_keys").and_then(toml::Value::as_array_mut) {
            for k in keys {
                *k = "(redacted)".into();
            }
        }
    }
    Ok(v)
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Standalone(args) => {
            init_tracing(&args.log_format);
            let cfg = args.node_config()?;
            let bus = Arc::new(MemoryBus::new(&cfg.node_id));
            serve(cfg, bus, Arc::new(MemoryRegistrar::default())).await?;
        }
        Command::Node(args) => {
            init_tracing(&args.node.log_format);
            let ClusterConfig {
                node: cfg,
                kafka,
                etcd,
                brokers_given,
            } = args.config()?;
            if !brokers_given {
                anyhow::bail!(NO_BROKERS);
            }
            let bus = Arc::new(
                KafkaBus::new(kafka, &cfg.node_id, cfg.publish_timeout)?
                    .with_history(cfg.replay_window),
            );
            tokio::spawn(refused_at_start(bus.clone()));
            let registrar: Arc<dyn Registrar> = match etcd {
                Some(e) => Arc::new(EtcdRegistrar::start(e, &cfg.node_id)),
                None => Arc::new(MemoryRegistrar::default()),
            };
            serve(cfg, bus, registrar).await?;
        }
        Command::Registry(args) => {
            init_tracing(&args.log_format);
            let cfg = args.config()?;
            let listener = tokio::net::TcpListener::bind(cfg.http_addr)
                .await
                .with_context(|| format!("binding {}", cfg.http_addr))?;
            let stop = stop_signals()?;
            println!("listening http={}", listener.local_addr()?);
            let app = pushcenter_registry::router(cfg.etcd);
            let serving = axum::serve(listener, app)
                .with_graceful_shutdown(stopped(stop.clone(), Stop::Drain))
                .into_future();
            tokio::select! {
                biased;
                () = stopped(stop, Stop::Now) => stop_now(None).await,
                r = serving => r?,
            }
        }
        Command::CheckConfig(args) => {
            let ClusterConfig {
                node: cfg,
                kafka,
                etcd,
                brokers_given,
            } = args.config()?;
            pushcenter_node::check_config(&cfg)?;
            KafkaBus::new(kafka.clone(), &cfg.node_id, cfg.publish_timeout)?.check_consumer()?;
            if !brokers_given {
                eprintln!(
                    "note: no Kafka brokers given: `pushcenter node` refuses this config \
                     (`pushcenter standalone` needs none)"
                );
            }
            let mut text = toml::to_string_pretty(&redacted(&cfg)?)?;
            text.push_str("\n[kafka]\n");
            text.push_str(&toml::to_string_pretty(&kafka.redacted())?);
            if let Some(e) = etcd {
                text.push_str("\n[etcd]\n");
                text.push_str(&toml::to_string_pretty(&e)?);
            }
            println!("{text}");
        }
        Command::Publish(args) => publish::run(args).await?,
        Command::Bench(args) => bench::run(args).await?,
    }
    Ok(())
}
