//! A bound node and its lifecycle: bind, serve, drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::auth;
use crate::bus::{Bus, Delivery, Reply};
use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::node::{Node, random_hex};
use crate::registrar::Registrar;
use crate::requests::waiters::Waiters;
use crate::routing::router::Router;
use crate::routing::window;
use crate::stats::Stats;
use crate::transport::{listener, tls};

/// Accept queue length (the kernel caps it at `net.core.somaxconn`): bursts of new
/// connections (a reconnect wave after another node died) wait in it instead of being
/// dropped or reset.
const BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Everything [`Server::bind`] loads from `config` before it binds: the values, the
/// token keys, the TLS certificate and key. `check-config` runs it too.
/// An identity provider it cannot reach is a warning on stderr, not an error: the node
/// starts without its keys and keeps trying.
pub fn check_config(config: &NodeConfig) -> Result<()> {
    let (auth, _) = load(config)?;
    for w in auth
        .map(|a| auth::jwks::probe(a.providers()))
        .unwrap_or_default()
    {
        eprintln!("warning: {w}; the node starts without these keys and keeps trying");
    }
    Ok(())
}

type Loaded = (
    Option<Arc<auth::Auth>>,
    Option<(tokio_rustls::TlsAcceptor, Arc<tls::TlsCerts>)>,
);

fn load(config: &NodeConfig) -> Result<Loaded> {
    config.validate()?;
    let auth = auth::Auth::load(&config.auth)?.map(Arc::new);
    let tls = match &config.tls {
        Some(t) => {
            let certs = tls::TlsCerts::load(t)?;
            Some((certs.acceptor()?, certs))
        }
        None => None,
    };
    Ok((auth, tls))
}

/// A node whose listeners are bound; [`Server::run`] serves until shutdown.
pub struct Server {
    node: Arc<Node>,
    http: TcpListener,
    tcp: Option<TcpListener>,
    shutdown_tx: watch::Sender<bool>,
}

impl Server {
    /// Validates the config, binds the listeners and starts the bus.
    pub async fn bind(
        config: NodeConfig,
        bus: Arc<dyn Bus>,
        registrar: Arc<dyn Registrar>,
    ) -> Result<Server> {
        let (auth, tls) = load(&config)?;
        let tls = tls.map(|(acceptor, certs)| {
            let every = config
                .tls
                .as_ref()
                .map_or(Duration::from_secs(10), |t| t.reload_interval);
            tokio::spawn(certs.watch(every));
            acceptor
        });
        if let Some(a) = &auth {
            a.start();
        }
        if auth.is_none() {
            tracing::warn!(
                "no [auth] keys configured: clients connect anonymously and the HTTP API is open"
            );
        }
        let bind = |addr: SocketAddr| listen(addr).map_err(|source| Error::Bind { addr, source });
        let http = bind(config.http_addr)?;
        let tcp = match config.tcp_addr {
            Some(a) => Some(bind(a)?),
            None => None,
        };
        let stats = Arc::new(Stats::default());
        let (shutdown_tx, shutdown) = watch::channel(false);
        let started_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let http_bound = http.local_addr().map_err(|source| Error::Bind {
            addr: config.http_addr,
            source,
        })?;
        let tcp_bound = tcp.as_ref().and_then(|l| l.local_addr().ok());
        let node = Arc::new(Node {
            confirms: std::sync::Mutex::new(std::collections::HashMap::new()),
            admin: crate::admin::Admin::default(),
            boot_id: random_hex::<6>(),
            log_reads: tokio::sync::Semaphore::new(config.max_log_reads),
            http_bound,
            tcp_bound,
            waiters: Arc::new(Waiters::new(config.max_waiters, stats.clone())),
            api_limits: crate::http::limit::ApiLimits::new(
                config.limits.api_requests_per_second,
                config.limits.api_burst,
            ),
            routing: std::sync::Mutex::new(()),
            window: std::sync::Mutex::new(window::Window::new(
                config.replay_window,
                config.replay_window_bytes,
            )),
            auth,
            tls,
            per_ip: std::sync::Mutex::new(std::collections::HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
            router: Router::new(stats.clone()).limit_patterns(config.max_patterns),
            config,
            bus,
            registrar,
            stats,
            next_conn_id: AtomicU64::new(0),
            shutdown,
            started_at,
        });
        let weak = Arc::downgrade(&node);
        let weak2 = weak.clone();
        let weak3 = weak.clone();
        node.bus.start(
            Arc::new(move |d: Delivery| {
                if let Some(node) = weak.upgrade() {
                    node.on_delivery(d);
                }
            }),
            Arc::new(move |r: Reply| {
                if let Some(node) = weak2.upgrade() {
                    node.on_reply(r);
                }
            }),
            Arc::new(move |stream: &str, from: i64, live: i64| {
                if let Some(node) = weak3.upgrade() {
                    node.window().started(stream, from, live);
                }
            }),
            node.stats.clone(),
        );
        Ok(Server {
            node,
            http,
            tcp,
            shutdown_tx,
        })
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.local_addr().ok()
    }

    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The node's counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.node.stats.clone()
    }

    /// Serves until `shutdown` resolves, then drains: stop accepting, tell clients to
    /// reconnect elsewhere, wait up to the grace period for them to go.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send) -> Result<()> {
        let Server {
            node,
            http,
            tcp,
            shutdown_tx,
        } = self;
        let report = crate::node::report_loop(node.clone());
        let bans = node.clone();
        tokio::spawn(async move { crate::admin::gather::take_over_bans(&bans).await });
        let report = tokio::spawn(report);
        let positions = tokio::spawn(node.clone().position_updates());
        let tcp_task = tcp.map(|l| tokio::spawn(listener::tcp(l, node.clone())));
        let app = crate::http::routes(node.clone());
        let http_task = tokio::spawn(listener::http(http, app, node.clone()));

        shutdown.await;
        info!("shutting down: draining connections");
        // Discovery stops handing this node out before its clients are told to leave.
        let _ = tokio::time::timeout(Duration::from_secs(3), node.registrar.set_draining()).await;
        let _ = shutdown_tx.send(true);
        let grace = node.config.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        while node
            .stats
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = http_task.await;
        if let Some(t) = tcp_task {
            let _ = t.await;
        }
        report.abort();
        positions.abort();
        let _ = tokio::time::timeout(Duration::from_secs(3), node.registrar.deregister()).await;
        Ok(())
    }
}
