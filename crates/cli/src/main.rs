//! `pushcenter`: the one binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use pushcenter_node::{MemoryBus, MemoryRegistrar, NodeConfig, Server};

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
    /// Validate a config file and print the effective config.
    CheckConfig(NodeArgs),
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
    fn node_config(&self) -> Result<NodeConfig> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => NodeConfig::default(),
        };
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

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Standalone(args) => {
            init_tracing(&args.log_format);
            let cfg = args.node_config()?;
            let bus = Arc::new(MemoryBus::new(&cfg.node_id));
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
        }
        Command::CheckConfig(args) => {
            let cfg = args.node_config()?;
            println!("{}", toml::to_string_pretty(&cfg)?);
        }
    }
    Ok(())
}
