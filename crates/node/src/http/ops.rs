//! What operators and orchestrators read: stats, readiness, Prometheus metrics.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::node::Node;

pub(crate) async fn stats(State(node): State<Arc<Node>>) -> Response {
    let mut m = node.stats.snapshot();
    m.insert("node_id".into(), node.config.node_id.clone().into());
    m.insert("draining".into(), (*node.shutdown.borrow()).into());
    if let Some(rss) = rss_bytes() {
        m.insert("rss_bytes".into(), rss.into());
    }
    Json(Value::Object(m)).into_response()
}

/// This process's resident memory (Linux: `VmRSS` of /proc/self/status).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Ready: the bus is ready, the node is not draining and the registrar is not
/// refused (`registry` then says why, else it is null).
pub(crate) async fn readyz(State(node): State<Arc<Node>>) -> Response {
    let draining = *node.shutdown.borrow();
    let bus = node.bus.ready();
    let registry = node.registrar.problem();
    let status = if bus && !draining && registry.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": status == StatusCode::OK,
        "bus": bus,
        "draining": draining,
        "registry": registry,
    });
    (status, Json(body)).into_response()
}

pub(crate) async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let mut r = node.stats.render_prometheus().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}
