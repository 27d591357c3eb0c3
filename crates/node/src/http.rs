//! The HTTP side of a node: WebSocket upgrade, the `/v1` API, health, metrics, demo.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pushcenter_stomp::Version;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Node;
use crate::bus::{BusError, Record, check_header_name, check_publish_destination, sanitize};
use crate::connection::{WsLink, serve};
use crate::registrar::NodeInfo;
use crate::stats::Stats;

pub(crate) fn routes(node: Arc<Node>) -> Router {
    let mut r = Router::new()
        .route("/ws", get(ws))
        .route("/v1/publish", post(publish))
        .route("/v1/stats", get(stats))
        .route("/v1/connect", get(connect))
        .route("/v1/nodes", get(nodes))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if node.config.demo_page {
        r = r.route("/", get(|| async { Html(DEMO_PAGE) })).route(
            "/assets/stomp.umd.min.js",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                        (header::CACHE_CONTROL, "public, max-age=3600"),
                    ],
                    STOMPJS,
                )
            }),
        );
    }
    r.fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(node)
}

const DEMO_PAGE: &str = include_str!("../assets/demo.html");
/// @stomp/stompjs, vendored: see assets/README.md.
const STOMPJS: &str = include_str!("../assets/stomp.umd.min.js");

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// The highest STOMP subprotocol the client offered, if any.
fn pick_subprotocol(headers: &HeaderMap) -> Option<&'static str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(Version::from_subprotocol)
        .max()
        .map(Version::subprotocol)
}

async fn ws(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let limit = node.config.limits.max_frame_bytes;
    let mut upgrade = upgrade
        .max_frame_size(limit)
        .max_message_size(limit)
        // tungstenite allocates its read buffer up front (128 KiB by default): per
        // connection that is most of the node's memory. Writes batch up to 8 KiB
        // between flushes.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024);
    if let Some(p) = pick_subprotocol(&headers) {
        upgrade = upgrade.protocols([p]);
    }
    upgrade
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| serve(WsLink(socket), node, Some(peer)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    destination: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    headers: serde_json::Map<String, Value>,
    user: Option<String>,
    session: Option<String>,
    /// Ordering key on a partitioned bus (Kafka); the destination when absent.
    key: Option<String>,
}

fn record_from(req: PublishRequest) -> Result<Record, String> {
    check_publish_destination(&req.destination)?;
    if req.user.is_some() || req.session.is_some() {
        return Err("user and session targeting are not supported yet".into());
    }
    let mut headers = Vec::new();
    for (k, v) in req.headers {
        let value = match v {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                return Err(format!(
                    "header {k}: value must be a string, number or boolean"
                ));
            }
        };
        check_header_name(&k)?;
        headers.push((k, sanitize(&value)));
    }
    Ok(Record {
        destination: req.destination,
        headers,
        body: Bytes::from(req.body.into_bytes()),
        key: req.key,
        ..Record::default()
    })
}

async fn publish(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let req: PublishRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")),
    };
    let record = match record_from(req) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    if record.body.len() > node.config.limits.max_body_bytes {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body larger than limits.max_body_bytes",
        );
    }
    match node.publish(record).await {
        Ok(id) => {
            Stats::inc(&node.stats.messages_published_total);
            (StatusCode::ACCEPTED, Json(json!({"id": id}))).into_response()
        }
        Err(e @ BusError::Unavailable(_)) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        Err(e @ BusError::Rejected(_)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

async fn stats(State(node): State<Arc<Node>>) -> Response {
    let mut m = node.stats.snapshot();
    m.insert("node_id".into(), node.config.node_id.clone().into());
    m.insert("draining".into(), (*node.shutdown.borrow()).into());
    Json(Value::Object(m)).into_response()
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    let draining = *node.shutdown.borrow();
    let bus = node.bus.ready();
    let status = if bus && !draining {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": status == StatusCode::OK, "bus": bus, "draining": draining})),
    )
        .into_response()
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let mut r = node.stats.render_prometheus().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn cors(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

async fn connect(State(node): State<Arc<Node>>) -> Response {
    let live: Vec<NodeInfo> = node
        .registrar
        .nodes()
        .into_iter()
        .filter(|n| !n.draining)
        .collect();
    match live.into_iter().min_by_key(|n| n.connections) {
        Some(n) => cors(Json(json!({"node_id": n.node_id, "ws_url": n.ws_url, "tcp_url": n.tcp_url, "stale": false})).into_response()),
        None => cors(error(StatusCode::SERVICE_UNAVAILABLE, "no live node")),
    }
}

async fn nodes(State(node): State<Arc<Node>>) -> Response {
    let nodes = node.registrar.nodes();
    let connections: u64 = nodes.iter().map(|n| n.connections).sum();
    let subscriptions: u64 = nodes.iter().map(|n| n.subscriptions).sum();
    cors(
        Json(json!({
            "nodes": nodes,
            "totals": {"nodes": nodes.len(), "connections": connections, "subscriptions": subscriptions},
            "stale": false,
        }))
        .into_response(),
    )
}
