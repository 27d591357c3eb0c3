//! `pushcenter`: the one binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod bench;
mod config;
mod publish;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use config::Keys;
use pushcenter_kafka::{KafkaBus, KafkaConfig};
use pushcenter_node::{Bus, MemoryBus, MemoryRegistrar, NodeConfig, Registrar, Server, TlsConfig};
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
    /// Print every configuration key: its env variable, type, default and meaning
    /// (the reference in docs/configuration.md).
    ConfigKeys,
    /// Publish one message through a node's HTTP API.
    Publish(publish::PublishArgs),
    /// The load generator: `connections`, `fanout`, `request`, `cluster` or `consume`.
    Bench(bench::BenchArgs),
}

#[derive(clap::Args)]
struct RegistryArgs {
    /// TOML config file: `http_addr` and an `[etcd]` section.
    #[arg(long, env = "PUSHCENTER_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP listen address; port 0 picks a free port.
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// etcd endpoints, comma-separated: `http://host:2379,...`.
    #[arg(long)]
    etcd_endpoints: Option<String>,
    /// Any configuration key: `--set etcd.ttl=5s` (repeatable; docs/configuration.md).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = config::key_value)]
    set: Vec<(String, String)>,
    /// Log format: human or json.
    #[arg(long, env = "PUSHCENTER_LOG_FORMAT", default_value = "human")]
    log_format: String,
}

#[derive(Debug, serde::Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
struct RegistryConfig {
    /// HTTP listener of the discovery service; port 0 picks a free port.
    http_addr: SocketAddr,
    /// Serve https with this certificate (reloaded when its files change).
    tls: Option<TlsConfig>,
    etcd: EtcdConfig,
}

impl Default for RegistryConfig {
    fn default() -> RegistryConfig {
        RegistryConfig {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8090)),
            tls: None,
            etcd: EtcdConfig::default(),
        }
    }
}

/// The registry's keys: its file, `PUSHCENTER_...` and flags.
fn registry_keys() -> Keys {
    Keys::new()
        .with::<RegistryConfig>("")
        .flag("http_addr", "--http-addr")
        .flag("etcd.endpoints", "--etcd-endpoints")
}

/// A node's keys: the node's at the top level, the bus in `[kafka]`, the registry in
/// `[etcd]`.
fn node_keys() -> Keys {
    Keys::new()
        .with::<NodeConfig>("")
        .with::<KafkaConfig>("kafka")
        .with::<EtcdConfig>("etcd")
        .flag("http_addr", "--http-addr")
        .flag("tcp_addr", "--tcp-addr")
        .flag("node_id", "--node-id")
        .flag("advertise_url", "--advertise-url")
        .flag("kafka.brokers", "--kafka-brokers")
        .flag("etcd.endpoints", "--etcd-endpoints")
}

/// The flags' values as `--set` pairs: the common flags after `--set`, so they win.
fn flag_sets(sets: &[(String, String)], flags: &[(&str, Option<String>)]) -> Vec<(String, String)> {
    let mut out = sets.to_vec();
    for (path, value) in flags {
        if let Some(v) = value {
            out.push((path.to_string(), v.clone()));
        }
    }
    out
}

impl RegistryArgs {
    fn config(&self) -> Result<RegistryConfig> {
        let file = config::read_table(self.config.as_deref())?;
        let sets = flag_sets(
            &self.set,
            &[
                ("http_addr", self.http_addr.map(|a| a.to_string())),
                ("etcd.endpoints", self.etcd_endpoints.clone()),
            ],
        );
        let keys = registry_keys().tolerating(node_keys());
        let table = keys.layer(file, &config::env_vars(), &sets)?;
        let cfg = RegistryConfig::deserialize(toml::Value::Table(table))
            .map_err(config::without_secrets)
            .context("the registry's configuration")?;
        cfg.etcd.check().map_err(anyhow::Error::msg)?;
        if cfg
            .tls
            .as_ref()
            .is_some_and(|t| t.reload_interval < Duration::from_secs(1))
        {
            anyhow::bail!("tls.reload_interval must be at least 1s");
        }
        Ok(cfg)
    }
}

#[derive(clap::Args)]
struct ClusterArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Kafka bootstrap servers, `host:port[,host:port]`.
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// The WebSocket URL clients use to reach this node (handed out by the registry).
    #[arg(long)]
    advertise_url: Option<String>,
    /// etcd endpoints, comma-separated; without them (and without `[etcd]`) the node
    /// registers nowhere.
    #[arg(long)]
    etcd_endpoints: Option<String>,
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

/// Splits a layered node table into the node's keys and its `[kafka]` and `[etcd]`.
fn sections(
    mut table: toml::Table,
) -> Result<(NodeConfig, Option<KafkaConfig>, Option<EtcdConfig>)> {
    let kafka = match table.remove("kafka") {
        Some(v) => Some(
            KafkaConfig::deserialize(v)
                .map_err(config::without_secrets)
                .context("[kafka]")?,
        ),
        None => None,
    };
    let etcd = match table.remove("etcd") {
        Some(v) => Some(
            EtcdConfig::deserialize(v)
                .map_err(config::without_secrets)
                .context("[etcd]")?,
        ),
        None => None,
    };
    let node = NodeConfig::deserialize(toml::Value::Table(table))
        .map_err(config::without_secrets)
        .context("the node's keys")?;
    Ok((node, kafka, etcd))
}

impl ClusterArgs {
    fn config(&self) -> Result<ClusterConfig> {
        let file = config::read_table(self.node.config.as_deref())?;
        let sets = flag_sets(
            &self.node.set,
            &[
                ("http_addr", self.node.http_addr.map(|a| a.to_string())),
                ("tcp_addr", self.node.tcp_addr.map(|a| a.to_string())),
                ("node_id", self.node.node_id.clone()),
                ("advertise_url", self.advertise_url.clone()),
                ("kafka.brokers", self.kafka_brokers.clone()),
                ("etcd.endpoints", self.etcd_endpoints.clone()),
            ],
        );
        let table =
            node_keys()
                .tolerating(registry_keys())
                .layer(file, &config::env_vars(), &sets)?;
        let brokers_given = table
            .get("kafka")
            .and_then(toml::Value::as_table)
            .is_some_and(|k| k.contains_key("brokers"));
        let (node, kafka, etcd) = sections(table)?;
        if let Some(e) = &etcd {
            e.check().map_err(anyhow::Error::msg)?;
        }
        node.validate()?;
        Ok(ClusterConfig {
            node,
            kafka: kafka.unwrap_or_default(),
            etcd,
            brokers_given,
        })
    }
}

#[derive(clap::Args)]
struct NodeArgs {
    /// TOML config file; environment variables and flags override it.
    #[arg(long, env = "PUSHCENTER_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP + WebSocket listen address; port 0 picks a free port.
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// STOMP-over-TCP listen address (off unless given).
    #[arg(long)]
    tcp_addr: Option<SocketAddr>,
    #[arg(long)]
    node_id: Option<String>,
    /// Any configuration key: `--set auth.anonymous=true` (repeatable;
    /// docs/configuration.md).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = config::key_value)]
    set: Vec<(String, String)>,
    /// Log format: human or json.
    #[arg(long, env = "PUSHCENTER_LOG_FORMAT", default_value = "human")]
    log_format: String,
}

impl NodeArgs {
    /// The standalone config: a `[kafka]` section in its file is a mistake worth saying
    /// (the environment may be shared with cluster nodes: `PUSHCENTER_KAFKA_...` and
    /// `PUSHCENTER_ETCD_...` are ignored).
    fn node_config(&self) -> Result<NodeConfig> {
        let mut file = config::read_table(self.config.as_deref())?;
        if file.contains_key("kafka") {
            anyhow::bail!(
                "[kafka] is for `pushcenter node`; standalone has its own in-process bus"
            );
        }
        // Registration is for cluster nodes.
        file.remove("etcd");
        let sets = flag_sets(
            &self.set,
            &[
                ("http_addr", self.http_addr.map(|a| a.to_string())),
                ("tcp_addr", self.tcp_addr.map(|a| a.to_string())),
                ("node_id", self.node_id.clone()),
            ],
        );
        let mut table =
            node_keys()
                .tolerating(registry_keys())
                .layer(file, &config::env_vars(), &sets)?;
        table.remove("kafka");
        table.remove("etcd");
        let (node, _, _) = sections(table)?;
        node.validate()?;
        Ok(node)
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
    let (demo_page, tls) = (cfg.demo_page, cfg.tls.is_some());
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
    if let Some(a) = server.http_addr() {
        // The URLs to open: `listening` gives only the bound address.
        let (http, ws) = if tls {
            ("https", "wss")
        } else {
            ("http", "ws")
        };
        let host = browsable(a);
        if demo_page {
            tracing::info!("demo page: {http}://{host}/");
        }
        tracing::info!("WebSocket (STOMP): {ws}://{host}/ws");
    }
    tokio::select! {
        biased;
        () = stopped(stop.clone(), Stop::Now) => stop_now(Some(registrar.as_ref())).await,
        r = server.run(stopped(stop, Stop::Drain)) => r?,
    }
    Ok(())
}

/// `addr` as a browser can reach it: a wildcard bind is reached on loopback.
fn browsable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, addr.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
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

/// A config as `check-config` prints it: secrets replaced, never shown.
fn shown<T: serde::Serialize>(cfg: &T) -> Result<String> {
    let mut v = toml::Value::try_from(cfg)?;
    config::redact(&mut v);
    Ok(toml::to_string_pretty(&v)?)
}

// jemalloc for Rust and C (librdkafka) alike: glibc's malloc locks an arena when a
// thread frees what another allocated (a record is allocated on the consumer thread
// and freed on a connection's), and its per-record cost measured a third higher;
// mimalloc measured as fast but 18% more memory per connection (docs/benchmarks.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
            // Loaded before binding: a bad certificate is a clear error at start.
            let tls = match &cfg.tls {
                Some(t) => {
                    let certs = pushcenter_node::TlsCerts::load(t)?;
                    Some((certs.acceptor()?, certs, t.reload_interval))
                }
                None => None,
            };
            let listener = tokio::net::TcpListener::bind(cfg.http_addr)
                .await
                .with_context(|| format!("binding {}", cfg.http_addr))?;
            let stop = stop_signals()?;
            println!("listening http={}", listener.local_addr()?);
            let app = pushcenter_registry::router(cfg.etcd);
            let drained = stopped(stop.clone(), Stop::Drain);
            let serving: std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>>>> =
                match tls {
                    Some((acceptor, certs, every)) => {
                        tokio::spawn(certs.watch(every));
                        Box::pin(async move {
                            let timeout = Duration::from_secs(10);
                            pushcenter_node::serve_https(listener, acceptor, app, timeout, drained)
                                .await;
                            Ok(())
                        })
                    }
                    None => Box::pin(async move {
                        axum::serve(listener, app)
                            .with_graceful_shutdown(drained)
                            .await?;
                        Ok(())
                    }),
                };
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
            let mut all = toml::Table::try_from(&cfg)?;
            all.insert("kafka".into(), toml::Value::try_from(&kafka)?);
            if let Some(e) = etcd {
                all.insert("etcd".into(), toml::Value::try_from(&e)?);
            }
            println!("{}", shown(&all)?);
        }
        Command::ConfigKeys => {
            let (node, registry) = (node_keys(), registry_keys());
            print!(
                "{}",
                config::reference(&[
                    ("`pushcenter node`, `standalone` and `check-config`", &node),
                    ("`pushcenter registry`", &registry),
                ])
            );
        }
        Command::Publish(args) => publish::run(args).await?,
        Command::Bench(args) => bench::run(args).await?,
    }
    Ok(())
}
