//! The registry service: a view of the live nodes kept by an etcd watch, and the
//! discovery endpoints clients call before connecting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
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
    /// The dashboard's last gather of node stats, shared by every caller.
    gathered: tokio::sync::Mutex<Option<(Instant, Bytes)>>,
    /// None when no HTTP client could be built: the dashboard endpoints answer 500.
    http: Option<reqwest::Client>,
    admin_calls: tokio::sync::Semaphore,
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
            gathered: tokio::sync::Mutex::new(None),
            http: node_client()
                .map_err(|e| error!(error = %e, "no HTTP client: the dashboard cannot reach nodes"))
                .ok(),
            admin_calls: tokio::sync::Semaphore::new(ADMIN_CONCURRENCY),
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
        .route("/", get(dashboard_page))
        .route("/assets/dashboard.js", get(dashboard_js))
        .route("/assets/uPlot.iife.min.js", get(uplot_js))
        .route("/assets/uPlot.min.css", get(uplot_css))
        .route("/v1/dashboard", get(dashboard))
        .route("/v1/admin/disconnect", post(admin_disconnect))
        .route("/v1/admin/unsubscribe", post(admin_unsubscribe))
        .route("/v1/admin/presence", get(admin_presence))
        .route("/demo", get(web::demo_page))
        .route(web::CLIENT_JS_PATH, get(web::client_js))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { discovery::not_found() })
        .with_state(registry)
}

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

// The dashboard: the page, every node's numbers gathered here (a node's API is not
// CORS-open to the page), and the node admin API relayed for the page.

const DASHBOARD_HTML: &str = include_str!("../assets/dashboard.html");
const DASHBOARD_JS: &str = include_str!("../assets/dashboard.js");
/// uPlot (MIT) with its license in front, as the license asks of every copy.
const UPLOT_JS: &str = concat!(
    "/*!\n",
    include_str!("../assets/uPlot.LICENSE"),
    "*/\n",
    include_str!("../assets/uPlot.iife.min.js")
);
const UPLOT_CSS: &str = include_str!("../assets/uPlot.min.css");

/// The page holds an operator's API key: scripts only from here, no framing.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One gather answers every dashboard for this long from its start: however many are
/// open, a node gets about one `/v1/stats` and one `/metrics` a second from the
/// registry. Under the page's 1 s poll, so each poll gets a new sample.
const GATHER_TTL: Duration = Duration::from_millis(900);
/// A node slower than this shows as unreachable in that sample.
const NODE_FETCH_TIMEOUT: Duration = Duration::from_millis(800);
const GATHER_CONCURRENCY: usize = 16;
/// The most the registry reads of one node's answer.
const MAX_NODE_ANSWER: usize = 1 << 20;
/// Admin calls relayed at once; more get 429.
const ADMIN_CONCURRENCY: usize = 4;
/// A node answers an admin call within its `admin_timeout` (2 s by default).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_ADMIN_BODY: usize = 64 * 1024;

async fn dashboard_page() -> Response {
    let mut r = Html(DASHBOARD_HTML).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DASHBOARD_CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn dashboard_js() -> Response {
    asset(DASHBOARD_JS, "text/javascript; charset=utf-8")
}

async fn uplot_js() -> Response {
    asset(UPLOT_JS, "text/javascript; charset=utf-8")
}

async fn uplot_css() -> Response {
    asset(UPLOT_CSS, "text/css; charset=utf-8")
}

fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// For nodes: system roots for `https://` nodes; never through a proxy and never
/// following a redirect, since admin calls carry the operator's credential.
fn node_client() -> std::result::Result<reqwest::Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(NODE_FETCH_TIMEOUT)
        .user_agent(concat!("pushcenter-registry/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A node's `http_url` without its trailing slash; the view comes from etcd, so the
/// scheme is checked before anything is sent there.
fn node_base(n: &NodeInfo) -> std::result::Result<&str, String> {
    let url = n.http_url.trim_end_matches('/');
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url)
    } else {
        Err("its http_url is not an http(s) URL".into())
    }
}

async fn read_limited(mut resp: reqwest::Response) -> std::result::Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| error_chain(&e))? {
        if body.len() + chunk.len() > MAX_NODE_ANSWER {
            return Err(format!("answer over {MAX_NODE_ANSWER} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn get_ok(client: &reqwest::Client, url: String) -> std::result::Result<Vec<u8>, String> {
    let resp = client.get(&url).send().await.map_err(|e| error_chain(&e))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: {}", resp.status()));
    }
    read_limited(resp).await
}

/// `GET /v1/dashboard`: every node of the view with its numbers now. One gather at a
/// time; callers within [`GATHER_TTL`] of the last share its answer.
async fn dashboard(State(r): State<Arc<Registry>>) -> Response {
    let mut last = r.gathered.lock().await;
    let body = match &*last {
        Some((at, body)) if at.elapsed() < GATHER_TTL => body.clone(),
        _ => {
            let started = Instant::now();
            let body = Bytes::from(gather(&r).await.to_string());
            *last = Some((started, body.clone()));
            body
        }
    };
    drop(last);
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn gather(r: &Registry) -> serde_json::Value {
    let (mut nodes, stale, age_ms) = {
        let view = r.lock();
        let nodes: Vec<NodeInfo> = view.nodes.values().cloned().collect();
        let age_ms = view.synced_at.map(|t| t.elapsed().as_millis() as u64);
        (nodes, !view.fresh, age_ms)
    };
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let permits = Arc::new(tokio::sync::Semaphore::new(GATHER_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, n) in nodes.iter().enumerate() {
        let (client, permits) = (r.http.clone(), permits.clone());
        let (base, id) = (node_base(n).map(str::to_owned), n.node_id.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let sample = match (client, base) {
                (Some(client), Ok(base)) => node_sample(&client, &base, &id).await,
                (None, _) => json!({ "error": "the registry has no HTTP client" }),
                (_, Err(e)) => json!({ "error": e }),
            };
            (i, sample)
        });
    }
    let mut samples = vec![serde_json::Value::Null; nodes.len()];
    while let Some(done) = tasks.join_next().await {
        if let Ok((i, sample)) = done {
            samples[i] = sample;
        }
    }
    let nodes: Vec<serde_json::Value> = nodes
        .iter()
        .zip(samples)
        .map(|(n, sample)| {
            let mut v = json!({
                "node_id": n.node_id,
                "ws_url": n.ws_url,
                "http_url": n.http_url,
                "version": n.version,
                "started_at": n.started_at,
                "draining": n.draining,
                "connections": n.connections,
                "subscriptions": n.subscriptions,
            });
            if let (Some(v), serde_json::Value::Object(s)) = (v.as_object_mut(), sample) {
                v.extend(s);
            }
            v
        })
        .collect();
    json!({
        "at_ms": pushcenter_node::unix_ms(),
        "stale": stale,
        "view_age_ms": age_ms,
        "nodes": nodes,
    })
}

/// One node's `/v1/stats` (numbers only) and the delivery latency histogram of its
/// `/metrics`, or why not.
async fn node_sample(client: &reqwest::Client, base: &str, id: &str) -> serde_json::Value {
    let started = Instant::now();
    let at_ms = pushcenter_node::unix_ms();
    let fetch = async {
        let (stats, metrics) = tokio::join!(
            get_ok(client, format!("{base}/v1/stats")),
            get_ok(client, format!("{base}/metrics")),
        );
        Ok::<_, String>((stats_numbers(&stats?, id)?, latency_histogram(&metrics?)))
    };
    let got = tokio::time::timeout(NODE_FETCH_TIMEOUT, fetch)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {NODE_FETCH_TIMEOUT:?}")));
    let fetch_ms = started.elapsed().as_millis() as u64;
    match got {
        Ok((stats, latency)) => json!({
            "at_ms": at_ms, "fetch_ms": fetch_ms, "error": null,
            "stats": stats, "latency": latency,
        }),
        Err(e) => json!({ "at_ms": at_ms, "fetch_ms": fetch_ms, "error": e }),
    }
}

/// The numbers and flags of a node's `/v1/stats`, its consumer lag summed. Only those
/// pass: an entry in etcd pointing elsewhere cannot relay text to the page.
fn stats_numbers(body: &[u8], id: &str) -> std::result::Result<serde_json::Value, String> {
    use serde_json::Value;
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) else {
        return Err("/v1/stats is not a JSON object".into());
    };
    // Another process on a dead node's address, until that node's lease ends.
    if m.get("node_id").and_then(Value::as_str) != Some(id) {
        return Err("/v1/stats answers for another node".into());
    }
    let mut out: serde_json::Map<String, Value> = m
        .iter()
        .filter(|(_, v)| v.is_number() || v.is_boolean())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(Value::Object(topics)) = m.get("kafka_consumer_lag") {
        let lags = topics
            .values()
            .filter_map(Value::as_object)
            .flat_map(|parts| parts.values().filter_map(Value::as_i64));
        let (total, partitions) = lags.fold((0i64, 0u64), |(t, n), l| (t + l.max(0), n + 1));
        out.insert("kafka_consumer_lag_total".into(), total.into());
        out.insert("kafka_partitions".into(), partitions.into());
    }
    Ok(Value::Object(out))
}

/// `pushcenter_delivery_latency_seconds` of a node's `/metrics`: the finite bucket
/// bounds (seconds), their cumulative counts and the total count. The page charts p99
/// from the difference of two readings; null when the text has no such histogram.
fn latency_histogram(text: &[u8]) -> serde_json::Value {
    const BUCKET: &str = "pushcenter_delivery_latency_seconds_bucket{le=\"";
    const COUNT: &str = "pushcenter_delivery_latency_seconds_count ";
    let number = |v: &str| v.split_whitespace().next()?.parse::<f64>().ok();
    let (mut le, mut buckets, mut count) = (Vec::new(), Vec::new(), None);
    for line in String::from_utf8_lossy(text).lines() {
        if let Some(rest) = line.strip_prefix(BUCKET) {
            let Some((bound, value)) = rest.split_once("\"} ") else {
                continue;
            };
            if let (Ok(b), Some(c)) = (bound.parse::<f64>(), number(value)) {
                if b.is_finite() {
                    le.push(b);
                    buckets.push(c as u64);
                }
            }
        } else if let Some(rest) = line.strip_prefix(COUNT) {
            count = number(rest).map(|c| c as u64);
        }
    }
    match count {
        Some(count) if !le.is_empty() => json!({ "le": le, "buckets": buckets, "count": count }),
        _ => serde_json::Value::Null,
    }
}

async fn admin_disconnect(
    State(r): State<Arc<Registry>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    relay(&r, Method::POST, "/v1/disconnect", q, &headers, body).await
}

async fn admin_unsubscribe(
    State(r): State<Arc<Registry>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    relay(&r, Method::POST, "/v1/unsubscribe", q, &headers, body).await
}

async fn admin_presence(
    State(r): State<Arc<Registry>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    relay(&r, Method::GET, "/v1/presence", q, &headers, Bytes::new()).await
}

/// An admin call made for the page, to the node named by `?node=` or the least loaded
/// live one, only ever a node of the view. The caller's `Authorization` goes on as it
/// came and is kept nowhere; the node checks it. Its status and JSON come back.
async fn relay(
    r: &Registry,
    method: Method,
    path: &str,
    mut query: HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    // A call the node would refuse costs it nothing.
    let Some(auth) = headers.get(header::AUTHORIZATION) else {
        let mut resp = json_error(
            StatusCode::UNAUTHORIZED,
            "an Authorization: Bearer credential of the nodes' admin API is required",
        );
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    };
    if body.len() > MAX_ADMIN_BODY {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a body of at most {MAX_ADMIN_BODY} bytes"),
        );
    }
    let Ok(_permit) = r.admin_calls.try_acquire() else {
        let mut resp = json_error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{ADMIN_CONCURRENCY} admin calls are under way through the registry"),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return resp;
    };
    let Some(client) = &r.http else {
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the registry has no HTTP client",
        );
    };
    let wanted = query.remove("node");
    let node = {
        let view = r.lock();
        match &wanted {
            Some(id) => view.nodes.get(id).cloned(),
            None => view
                .nodes
                .values()
                .filter(|n| !n.draining)
                .min_by(|a, b| (a.connections, &a.node_id).cmp(&(b.connections, &b.node_id)))
                .cloned(),
        }
    };
    let Some(node) = node else {
        return match wanted {
            Some(id) => json_error(
                StatusCode::NOT_FOUND,
                format!("node {id:?} is not in the registry's view"),
            ),
            None => json_error(StatusCode::SERVICE_UNAVAILABLE, "no live node"),
        };
    };
    let id = &node.node_id;
    let base = match node_base(&node) {
        Ok(b) => b,
        Err(e) => return json_error(StatusCode::BAD_GATEWAY, format!("node {id}: {e}")),
    };
    let mut req = client
        .request(method.clone(), format!("{base}{path}"))
        .header(header::AUTHORIZATION, auth.clone())
        .timeout(ADMIN_TIMEOUT);
    if !query.is_empty() {
        req = req.query(&query);
    }
    if method == Method::POST {
        if let Some(ct) = headers.get(header::CONTENT_TYPE) {
            req = req.header(header::CONTENT_TYPE, ct.clone());
        }
        req = req.body(body);
    }
    let answer = match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
            read_limited(resp)
                .await
                .map(|body| (status, retry_after, body))
        }
        Err(e) if e.is_timeout() => {
            return json_error(
                StatusCode::GATEWAY_TIMEOUT,
                format!("node {id} did not answer within {ADMIN_TIMEOUT:?}"),
            );
        }
        Err(e) => Err(error_chain(&e)),
    };
    let (status, retry_after, body) = match answer {
        Ok(a) => a,
        Err(e) => return json_error(StatusCode::BAD_GATEWAY, format!("node {id}: {e}")),
    };
    if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
        return json_error(
            StatusCode::BAD_GATEWAY,
            format!("node {id} answered {status} without JSON"),
        );
    }
    info!(%method, path, node = %id, status = status.as_u16(), "admin call relayed");
    let mut resp = (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert("x-pushcenter-node", v);
    }
    if let Some(v) = retry_after {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latency_histogram_is_read_from_openmetrics_text() {
        let text = b"# TYPE pushcenter_delivery_latency_seconds histogram\n\
            pushcenter_delivery_latency_seconds_sum 0.5\n\
            pushcenter_delivery_latency_seconds_count 4\n\
            pushcenter_delivery_latency_seconds_bucket{le=\"0.0005\"} 1\n\
            pushcenter_delivery_latency_seconds_bucket{le=\"0.001\"} 3\n\
            pushcenter_delivery_latency_seconds_bucket{le=\"+Inf\"} 4\n\
            pushcenter_fanout_duration_seconds_bucket{le=\"0.001\"} 9\n\
            # EOF\n";
        assert_eq!(
            latency_histogram(text),
            json!({ "le": [0.0005, 0.001], "buckets": [1, 3], "count": 4 })
        );
        assert_eq!(latency_histogram(b"# EOF\n"), serde_json::Value::Null);
    }

    #[test]
    fn only_numbers_and_flags_of_the_named_node_pass() {
        let body = json!({
            "node_id": "n1", "connections": 3, "draining": false, "note": "<script>",
            "kafka_consumer_lag": { "t": { "0": 5, "1": 2 }, "u": { "0": -1 } },
        });
        let out = stats_numbers(body.to_string().as_bytes(), "n1").expect("numbers");
        assert_eq!(out["connections"], 3);
        assert_eq!(out["draining"], false);
        assert_eq!(out["kafka_consumer_lag_total"], 7);
        assert_eq!(out["kafka_partitions"], 3);
        assert!(
            out.get("note").is_none() && out.get("node_id").is_none(),
            "{out}"
        );
        assert!(stats_numbers(body.to_string().as_bytes(), "n2").is_err());
        assert!(stats_numbers(b"[1]", "n1").is_err());
    }
}
