//! `pushcenter`: the one binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use pushcenter_kafka::{KafkaBus, KafkaConfig};
use pushcenter_node::{Bus, MemoryBus, MemoryRegistrar, NodeConfig, Server};
use serde::Deserialize;

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
    /// Validate a config file and print the effective config.
    CheckConfig(ClusterArgs),
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
}

/// A config file: the node's keys at the top level, the bus in `[kafka]`.
struct FileConfig {
    node: NodeConfig,
    kafka: Option<KafkaConfig>,
}

fn read_config(path: Option<&PathBuf>) -> Result<FileConfig> {
    let Some(path) = path else {
        return Ok(FileConfig {
            node: NodeConfig::default(),
            kafka: None,
        });
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let kafka = match table.remove("kafka") {
        Some(v) => Some(
            KafkaConfig::deserialize(v).with_context(|| format!("{}: [kafka]", path.display()))?,
        ),
        None => None,
    };
    let node = NodeConfig::deserialize(toml::Value::Table(table))
        .with_context(|| format!("parsing {}", path.display()))?;
    Ok(FileConfig { node, kafka })
}

impl ClusterArgs {
    fn config(&self) -> Result<(NodeConfig, KafkaConfig)> {
        let file = read_config(self.node.config.as_ref())?;
        let mut node = self.node.apply(file.node)?;
        let mut kafka = file.kafka.unwrap_or_default();
        if let Some(b) = &self.kafka_brokers {
            kafka.brokers = b.clone();
        }
        if let Some(u) = &self.advertise_url {
            node.advertise_url = Some(u.clone());
        }
        Ok((node, kafka))
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

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Binds, prints the `listening` line scripts wait for, serves until a signal.
async fn serve(cfg: NodeConfig, bus: Arc<dyn Bus>) -> Result<()> {
    let server = Server::bind(cfg, bus, Arc::new(MemoryRegistrar::default())).await?;
    let mut line = String::from("listening");
    if let Some(a) = server.http_addr() {
        line.push_str(&format!(" http={a}"));
    }
    if let Some(a) = server.tcp_addr() {
        line.push_str(&format!(" tcp={a}"));
    }
    println!("{line}");
    server.run(shutdown_signal()).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Standalone(args) => {
            init_tracing(&args.log_format);
            let cfg = args.node_config()?;
            let bus = Arc::new(MemoryBus::new(&cfg.node_id));
            serve(cfg, bus).await?;
        }
        Command::Node(args) => {
            init_tracing(&args.node.log_format);
            let (cfg, kafka) = args.config()?;
            let bus = KafkaBus::new(kafka, &cfg.node_id, cfg.publish_timeout)?;
            serve(cfg, Arc::new(bus)).await?;
        }
        Command::CheckConfig(args) => {
            let (cfg, kafka) = args.config()?;
            KafkaBus::new(kafka.clone(), &cfg.node_id, cfg.publish_timeout)?.check_consumer()?;
            let mut text = toml::to_string_pretty(&cfg)?;
            text.push_str("\n[kafka]\n");
            text.push_str(&toml::to_string_pretty(&kafka)?);
            println!("{text}");
        }
    }
    Ok(())
}
