//! The registry service: a view of the live nodes kept by an etcd watch, and the
//! discovery endpoints clients call before connecting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use pushcenter_node::discovery::{self, ConnectQuery};
use pushcenter_node::{NodeInfo, web};
use serde_json::json;
use tracing::{debug, error, info, warn};

use crate::{Error, EtcdConfig, Result};

/// The registry's picture of the cluster.
#[derive(Default)]
struct View {
    nodes: HashMap<String, NodeInfo>,
    /// Clients sent to a node since its last report: counts lag by a report interval,
    /// so without this a burst of discoveries would all go to one node.
    handed: HashMap<String, u64>,
    /// False while the watch is down: answers come from the last view.
    fresh: bool,
    synced_at: Option<Instant>,
    /// Why etcd refuses the registry's credentials, while it does.
    problem: Option<String>,
}

pub(crate) struct Registry {
    view: Mutex<View>,
    seed: AtomicU64,
    connects: AtomicU64,
    bad_values: AtomicU64,
    resyncs: AtomicU64,
}

impl Registry {
    fn new() -> Registry {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 | 1);
        Registry {
            view: Mutex::new(View::default()),
            seed: AtomicU64::new(seed),
            connects: AtomicU64::new(0),
            bad_values: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
        }
    }

    /// xorshift: ties between equally loaded nodes need a coin, not a CSPRNG.
    fn random(&self) -> u64 {
        let mut x = self.seed.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed.store(x, Ordering::Relaxed);
        x
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node for a client: [`discovery::choose`] over the view, the load counting
    /// the clients handed out since each node's last report, ties broken at random.
    fn choose(&self, user: Option<&str>, avoid: &[&str]) -> Option<NodeInfo> {
        let mut view = self.lock();
        let chosen = {
            let handed = &view.handed;
            let load = |n: &NodeInfo| n.connections + handed.get(&n.node_id).copied().unwrap_or(0);
            let tie = |n: usize| (self.random() % n as u64) as usize;
            discovery::choose(view.nodes.values(), user, avoid, load, tie).cloned()
        };
        if let Some(n) = &chosen {
            *view.handed.entry(n.node_id.clone()).or_default() += 1;
        }
        chosen
    }
}

/// Keeps the view: list the prefix, then watch it from the next revision; on any error
/// mark the view stale and start over.
async fn watch_loop(cfg: EtcdConfig, registry: Arc<Registry>) {
    let prefix = cfg.nodes_prefix();
    let mut logged_refusal: Option<String> = None;
    loop {
        let mut pause = Duration::from_millis(500);
        if let Err(e) = sync(&cfg, &prefix, &registry).await {
            let was_fresh = std::mem::replace(&mut registry.lock().fresh, false);
            if was_fresh {
                warn!(error = %e, "etcd watch lost: answering from the last view (stale)");
            }
            match e.refusal() {
                Some(reason) => {
                    if logged_refusal.as_ref() != Some(&reason) {
                        error!(
                            endpoints = %cfg.endpoint_list(),
                            %reason,
                            "etcd refused the registry's credentials: the view is not kept; \
                             retrying every 5s"
                        );
                        logged_refusal = Some(reason.clone());
                    }
                    registry.lock().problem =
                        Some(format!("etcd refused the credentials: {reason}"));
                    pause = Duration::from_secs(5);
                }
                None => debug!(error = %e, "etcd sync error"),
            }
        } else {
            logged_refusal = None;
        }
        tokio::time::sleep(pause).await;
    }
}

async fn sync(cfg: &EtcdConfig, prefix: &str, registry: &Registry) -> Result<()> {
    let mut client = Client::connect(&cfg.endpoints, Some(cfg.connect_options()?))
        .await
        .map_err(Error::EtcdConnect)?;
    let listing = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(Error::request("get"))?;
    let revision = listing.header().map_or(0, |h| h.revision());
    let mut nodes = HashMap::new();
    for kv in listing.kvs() {
        if let Some(n) = parse(registry, kv.value()) {
            nodes.insert(n.node_id.clone(), n);
        }
    }
    let mut stream = client
        .watch(
            prefix,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await
        .map_err(Error::request("watch"))?;
    {
        let mut view = registry.lock();
        view.handed.clear();
        view.nodes = nodes;
        view.fresh = true;
        view.synced_at = Some(Instant::now());
        view.problem = None;
    }
    registry.resyncs.fetch_add(1, Ordering::Relaxed);
    info!(
        nodes = registry.lock().nodes.len(),
        revision, "registry view synced from etcd"
    );
    while let Some(resp) = stream.message().await.map_err(Error::request("watch"))? {
        if resp.canceled() {
            // etcd cancels a watch it no longer permits (the role lost the prefix).
            return Err(Error::WatchCanceled(resp.cancel_reason().to_string()));
        }
        let mut view = registry.lock();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let id = kv
                .key_str()
                .ok()
                .and_then(|k| k.strip_prefix(prefix))
                .unwrap_or_default()
                .to_string();
            match ev.event_type() {
                EventType::Put => {
                    if let Some(n) = parse(registry, kv.value()) {
                        view.handed.remove(&n.node_id);
                        view.nodes.insert(n.node_id.clone(), n);
                    }
                }
                EventType::Delete => {
                    view.handed.remove(&id);
                    view.nodes.remove(&id);
                }
            }
        }
        view.synced_at = Some(Instant::now());
    }
    Err(Error::WatchEnded)
}

fn parse(registry: &Registry, value: &[u8]) -> Option<NodeInfo> {
    match serde_json::from_slice(value) {
        Ok(n) => Some(n),
        Err(e) => {
            registry.bad_values.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, "skipping a node entry that is not a node");
            None
        }
    }
}

/// Starts the watch and returns the HTTP routes.
pub fn router(cfg: EtcdConfig) -> Router {
    let registry = Arc::new(Registry::new());
    tokio::spawn(watch_loop(cfg, registry.clone()));
    Router::new()
        .route("/v1/connect", get(connect))
        .route("/v1/nodes", get(nodes))
        .route("/", get(|| async { Html(DASHBOARD) }))
        .route("/demo", get(web::demo_page))
        .route(web::CLIENT_JS_PATH, get(web::client_js))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { discovery::not_found() })
        .with_state(registry)
}

const DASHBOARD: &str = include_str!("../assets/dashboard.html");

async fn connect(State(r): State<Arc<Registry>>, Query(q): Query<ConnectQuery>) -> Response {
    r.connects.fetch_add(1, Ordering::Relaxed);
    let stale = !r.lock().fresh;
    let chosen = r.choose(q.user(), &q.avoid());
    discovery::connect_answer(chosen.as_ref(), stale)
}

/// Ready once the view was read from etcd, and not while etcd refuses the registry's
/// credentials (`problem` says why). An etcd that is only unreachable leaves it ready:
/// it answers from its last view, marked stale.
async fn readyz(State(r): State<Arc<Registry>>) -> Response {
    let view = r.lock();
    let synced = view.synced_at.is_some();
    let ready = synced && view.problem.is_none();
    let status = if ready {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "synced": synced,
        "stale": !view.fresh,
        "problem": view.problem,
    });
    (status, Json(body)).into_response()
}

async fn nodes(State(r): State<Arc<Registry>>) -> Response {
    let view = r.lock();
    let age_ms = view.synced_at.map(|t| t.elapsed().as_millis() as u64);
    discovery::nodes_answer(view.nodes.values().collect(), !view.fresh, Some(age_ms))
}

async fn metrics(State(r): State<Arc<Registry>>) -> Response {
    use pushcenter_node::metrics::{Family, Sample, Snapshot, encode};
    let view = r.lock();
    let live = view.nodes.values().filter(|n| !n.draining).count();
    let age = view.synced_at.map_or(-1.0, |t| t.elapsed().as_secs_f64());
    let count = |n: usize| Sample::Gauge(i64::try_from(n).unwrap_or(i64::MAX));
    let families = vec![
        Family::one(
            "registry_nodes",
            "Nodes in the view.",
            count(view.nodes.len()),
        ),
        Family::one(
            "registry_live_nodes",
            "Nodes in the view that are not draining.",
            count(live),
        ),
        Family::one(
            "registry_stale",
            "1 while the etcd watch is down.",
            Sample::Gauge(if view.fresh { 0 } else { 1 }),
        ),
        Family::one(
            "registry_view_age_seconds",
            "Time since the view last changed or was synced.",
            Sample::GaugeF(age),
        ),
        Family::one(
            "registry_connect_requests_total",
            "Discovery calls answered.",
            Sample::Counter(r.connects.load(Ordering::Relaxed)),
        ),
        Family::one(
            "registry_bad_values_total",
            "Node entries in etcd that could not be read.",
            Sample::Counter(r.bad_values.load(Ordering::Relaxed)),
        ),
        Family::one(
            "registry_resyncs_total",
            "Full reads of the node prefix (start and after watch errors).",
            Sample::Counter(r.resyncs.load(Ordering::Relaxed)),
        ),
    ];
    drop(view);
    let mut resp = encode(Snapshot(families)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}
