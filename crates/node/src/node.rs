//! The state every connection task and HTTP handler shares, and what the node does
//! with each record and reply the bus hands it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use tokio::sync::watch;

use crate::auth;
use crate::bus::{Bus, BusError, Delivery, Record, Reply, ReplyKind};
use crate::config::NodeConfig;
use crate::registrar::{NodeInfo, Registrar};
use crate::requests::waiters::{Completion, Waiters};
use crate::routing::router::Router;
use crate::routing::window;
use crate::stats::{self, Stats};

/// What every connection task and HTTP handler shares.
pub(crate) struct Node {
    pub(crate) config: NodeConfig,
    pub(crate) router: Router,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) registrar: Arc<dyn Registrar>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) next_conn_id: AtomicU64,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) started_at: u64,
    pub(crate) http_bound: SocketAddr,
    pub(crate) tcp_bound: Option<SocketAddr>,
    pub(crate) waiters: Arc<Waiters>,
    /// The HTTP API's rate per credential.
    pub(crate) api_limits: crate::http::limit::ApiLimits,
    /// Callbacks received here that wait to hear whether a waiter (on some node) took
    /// them: confirmation id -> the HTTP handler.
    pub(crate) confirms:
        std::sync::Mutex<std::collections::HashMap<String, tokio::sync::oneshot::Sender<bool>>>,
    /// Bans, and the admin commands this node waits on.
    pub(crate) admin: crate::admin::Admin,
    /// Reads of the bus's log for resumes that may run at once.
    pub(crate) log_reads: tokio::sync::Semaphore,
    /// Random, fresh at every start: session ids never repeat across restarts.
    pub(crate) boot_id: String,
    /// Recent records, for clients that resume (`resume-from` on SUBSCRIBE).
    pub(crate) window: std::sync::Mutex<window::Window>,
    /// Held from a record's entry into the window until it is routed (and a position
    /// update after it): a position update never names a record not yet routed, even
    /// when a bus delivers from several threads.
    pub(crate) routing: std::sync::Mutex<()>,

    /// Delivery reports are sent from the bus's thread, outside the runtime.
    pub(crate) runtime: tokio::runtime::Handle,
    /// `None`: authentication is off.
    pub(crate) auth: Option<Arc<auth::Auth>>,
    /// `None`: plain TCP.
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    /// Open STOMP connections per client address.
    pub(crate) per_ip: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// A connection slot; given back when dropped.
pub(crate) struct Admission {
    node: Arc<Node>,
    ip: Option<std::net::IpAddr>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut m = self.node.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = m.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        }
    }
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    NodeFull,
    IpFull,
}

impl Refused {
    pub(crate) fn message(self) -> &'static str {
        match self {
            Refused::NodeFull => "too many connections on this node",
            Refused::IpFull => "too many connections from this address",
        }
    }
}

impl Node {
    /// Takes a connection slot for a client at `ip`, within the node's limits.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: Option<std::net::IpAddr>,
    ) -> Result<Admission, Refused> {
        let open = self
            .stats
            .connections
            .load(std::sync::atomic::Ordering::Relaxed);
        if usize::try_from(open).unwrap_or(0) >= self.config.max_connections {
            Stats::inc(&self.stats.connections_refused_total);
            return Err(Refused::NodeFull);
        }
        let limit = self.config.max_connections_per_ip;
        let ip = ip.filter(|_| limit > 0);
        if let Some(ip) = ip {
            let mut m = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = m.entry(ip).or_insert(0);
            if *n >= limit {
                drop(m);
                Stats::inc(&self.stats.connections_refused_total);
                return Err(Refused::IpFull);
            }
            *n += 1;
        }
        Ok(Admission {
            node: self.clone(),
            ip,
        })
    }

    pub(crate) async fn publish(&self, mut record: Record) -> Result<String, BusError> {
        if record.at_us == 0 {
            record.at_us = crate::bus::unix_us();
        }
        match tokio::time::timeout(self.config.publish_timeout, self.bus.publish(record)).await {
            Ok(r) => r,
            Err(_) => Err(BusError::Unavailable("timed out".into())),
        }
    }

    /// `<node>-<random>`: unique in the cluster (node ids are), and not guessable by
    /// another client that would like to answer in its place.
    pub(crate) fn next_correlation_id(&self) -> String {
        format!("{}-{}", self.config.node_id, random_hex::<16>())
    }

    /// Sends a reply to the node whose caller waits; straight to the waiter when that
    /// is this node (then `Some` says what became of it).
    pub(crate) async fn reply(&self, reply: Reply) -> Result<Option<Completion>, BusError> {
        let here = match reply.node.as_deref() {
            Some(n) => n == self.config.node_id,
            None => self.waiters.contains(&reply.correlation_id),
        };
        if here {
            return Ok(Some(self.waiters.complete(reply)));
        }
        self.send_reply(reply).await.map(|()| None)
    }

    pub(crate) async fn send_reply(&self, reply: Reply) -> Result<(), BusError> {
        match tokio::time::timeout(self.config.publish_timeout, self.bus.reply(reply)).await {
            Ok(r) => r,
            Err(_) => Err(BusError::Unavailable("timed out".into())),
        }
    }

    /// A record from the bus: to the local subscribers; when it is a request that
    /// reached one of them, the waiting node hears of it.
    pub(crate) fn window(&self) -> stats::Held<'_, std::sync::MutexGuard<'_, window::Window>> {
        let g = self.window.lock().unwrap_or_else(|e| e.into_inner());
        stats::Held::new(g, &self.stats.window_lock_hold)
    }

    /// The window's lock taken under the routing lock, whose hold time covers it:
    /// not timed again (two clock readings per record are a tenth of a record's cost).
    fn window_in_routing(&self) -> std::sync::MutexGuard<'_, window::Window> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn routing(&self) -> stats::Held<'_, std::sync::MutexGuard<'_, ()>> {
        let g = self.routing.lock().unwrap_or_else(|e| e.into_inner());
        stats::Held::new(g, &self.stats.routing_lock_hold)
    }

    pub(crate) fn on_delivery(self: &Arc<Self>, d: Delivery) {
        // A record larger than a client may be sent would fill every subscriber's
        // queue at once (and disconnect them all as slow): it is skipped, counted.
        let l = &self.config.limits;
        let headers: usize = d
            .record
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum();
        if d.record.body.len() > l.max_body_bytes
            || d.record.body.len() + headers > l.max_frame_bytes
        {
            Stats::inc(&self.stats.bus_records_oversized_total);
            tracing::debug!(id = %d.id, body = d.record.body.len(), headers, "oversized record skipped");
            return;
        }
        let d = Arc::new(d);
        let mut routing = self.routing();
        // Into the window first, then routed: a subscription that resumes under the
        // window's lock sees each record either in its replay or live (docs/delivery.md).
        let now = routing.since();
        if !self.window_in_routing().push(d.clone(), now) {
            Stats::inc(&self.stats.messages_history_total);
            return;
        }
        // A request whose caller gave up reaches nobody (nor does it in a resume).
        let request = d.record.request();
        if request
            .as_ref()
            .and_then(|r| r.deadline_ms)
            .is_some_and(|deadline| deadline <= crate::bus::unix_ms())
        {
            drop(routing);
            Stats::inc(&self.stats.requests_expired_total);
            return;
        }
        let n = self.router.deliver(&d);
        if n > 0 {
            // The lock's hold is the record's way into the window and every queue.
            routing.also(&self.stats.fanout_duration);
        }
        drop(routing);
        let r = &d.record;
        // `RUST_LOG=pushcenter::delivery=trace`: every record and how many got it.
        tracing::trace!(target: "pushcenter::delivery", node = %self.config.node_id,
            id = %d.id, destination = %r.destination, subscribers = n, "record routed");
        let Some(request) = request.filter(|_| n > 0) else {
            return;
        };
        Stats::inc(&self.stats.requests_delivered_total);
        let report = Reply {
            correlation_id: request.correlation_id,
            node: Some(request.node),
            kind: ReplyKind::Delivered,
            ..Reply::default()
        };
        let node = self.clone();
        self.runtime.spawn(async move {
            if let Err(e) = node.reply(report).await {
                tracing::debug!(error = %e, "cannot report a delivered request");
            }
        });
    }

    /// Every `position_updates`, when records came since the last time: the window's
    /// frontier to the connections that asked. Under the routing lock (every record in
    /// the window is routed) and the window's (see [`Router::position_update`]).
    pub(crate) async fn position_updates(self: Arc<Self>) {
        let every = self.config.position_updates;
        if every.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = String::new();
        loop {
            tick.tick().await;
            let _routing = self.routing();
            let window = self.window();
            let frontier = window.frontier();
            let position = window::format_positions(&frontier);
            if position != last {
                // A connection hears of the streams that can carry its records: the
                // shared ones, and its user's own (not every user's partition here).
                let (shared, own): (Vec<_>, Vec<_>) = frontier
                    .into_iter()
                    .partition(|(stream, _)| self.bus.carries(stream, None));
                let base: Arc<str> = Arc::from(window::format_positions(&shared));
                let mut with_own: std::collections::HashMap<String, Arc<str>> =
                    std::collections::HashMap::new();
                self.router.position_update(|user| {
                    let Some(stream) = user.and_then(|u| self.bus.stream_of(u)) else {
                        return base.clone();
                    };
                    let Some(at) = own.iter().find(|(s, _)| *s == stream) else {
                        return base.clone();
                    };
                    with_own
                        .entry(stream)
                        .or_insert_with(|| {
                            let mut v = shared.clone();
                            v.push(at.clone());
                            Arc::from(window::format_positions(&v))
                        })
                        .clone()
                });
                last = position;
            }
        }
    }

    /// A reply from the bus: for a waiter here, or for another node.
    pub(crate) fn on_reply(self: &Arc<Self>, reply: Reply) {
        if matches!(reply.kind, ReplyKind::Command | ReplyKind::Report) {
            let me = &self.config.node_id;
            if let Some(report) = self.admin.handle(reply, me, &self.router, &self.stats) {
                let node = self.clone();
                self.runtime.spawn(async move {
                    if let Err(e) = node.send_reply(report).await {
                        tracing::debug!(error = %e, "cannot report on an admin command");
                    }
                });
            }
            return;
        }
        let addressed = reply.node.as_deref() == Some(self.config.node_id.as_str());
        if !addressed && reply.node.is_some() {
            return;
        }
        match reply.kind {
            ReplyKind::Taken | ReplyKind::NoWaiter => {
                if addressed {
                    self.confirmed(&reply.correlation_id, reply.kind == ReplyKind::Taken);
                }
                return;
            }
            ReplyKind::Answer | ReplyKind::Delivered => {}
            ReplyKind::Command | ReplyKind::Report => return,
        }
        // A callback without a node goes to every node: only the one that waits takes
        // it (the others do not count it late, nor answer).
        if !addressed && !self.waiters.contains(&reply.correlation_id) {
            return;
        }
        let confirm = reply.confirm.clone();
        let outcome = self.waiters.complete(reply);
        if let Some((to, id)) = confirm {
            let kind = match outcome {
                Completion::Taken => ReplyKind::Taken,
                Completion::NoWaiter | Completion::Refused => ReplyKind::NoWaiter,
            };
            self.confirm(to, id, kind);
        }
    }

    /// Tells the node that received a callback what became of it.
    fn confirm(self: &Arc<Self>, to: String, id: String, kind: ReplyKind) {
        if to == self.config.node_id {
            self.confirmed(&id, kind == ReplyKind::Taken);
            return;
        }
        let node = self.clone();
        self.runtime.spawn(async move {
            let note = Reply {
                correlation_id: id,
                node: Some(to),
                kind,
                ..Reply::default()
            };
            if let Err(e) = node.send_reply(note).await {
                tracing::debug!(error = %e, "cannot confirm a callback");
            }
        });
    }

    /// A confirmation for a callback received here.
    fn confirmed(&self, id: &str, taken: bool) {
        let tx = self
            .confirms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(tx) = tx {
            let _ = tx.send(taken);
        }
    }
}

/// `N` random bytes from the operating system, in hex.
pub(crate) fn random_hex<const N: usize>() -> String {
    let mut b = [0u8; N];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness (never seen on Linux): hash the clock with std's random keys.
        use std::hash::{BuildHasher, RandomState};
        for chunk in b.chunks_mut(8) {
            let h = RandomState::new().hash_one(std::time::SystemTime::now());
            let h = h.to_le_bytes();
            chunk.copy_from_slice(&h[..chunk.len()]);
        }
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// This node as discovery shows it.
pub(crate) fn info(node: &Node) -> NodeInfo {
    let cfg = &node.config;
    let http = node.http_bound;
    let (web, ws, tcp) = if node.tls.is_some() {
        ("https", "wss", "ssl")
    } else {
        ("http", "ws", "tcp")
    };
    let http_url = format!("{web}://{http}");
    let ws_url = cfg
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("{ws}://{http}/ws"));
    NodeInfo {
        node_id: cfg.node_id.clone(),
        ws_url,
        tcp_url: node.tcp_bound.map(|a| format!("{tcp}://{a}")),
        http_url,
        connections: node.stats.connections.load(Ordering::Relaxed).max(0) as u64,
        subscriptions: node.stats.subscriptions.load(Ordering::Relaxed).max(0) as u64,
        draining: *node.shutdown.borrow(),
        version: env!("CARGO_PKG_VERSION").into(),
        started_at: node.started_at,
        targeted_partitions: u32::try_from(node.stats.targeted_partitions.load(Ordering::Relaxed))
            .unwrap_or(0),
    }
}

/// Reports this node to the registrar every report interval.
pub(crate) async fn report_loop(node: Arc<Node>) {
    let mut tick = tokio::time::interval(node.config.report_interval);
    // Discovery hands out a node only once it receives the cluster stream; after that a
    // bus outage does not unregister it (its clients stay, and it recovers by itself).
    while !node.bus.ready() {
        tick.tick().await;
    }
    loop {
        node.registrar.report(info(&node));
        tick.tick().await;
    }
}
