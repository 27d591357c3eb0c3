//! The node's HTTP port: the WebSocket upgrade, the `/v1` API, discovery, the operator
//! endpoints and the demo page's assets.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::json;

use crate::node::Node;

mod admin;
mod api;
pub mod discovery;
pub(crate) mod limit;
mod ops;
mod respond;
mod upgrade;
pub mod web;

/// Every route a node serves.
pub(crate) fn routes(node: Arc<Node>) -> Router {
    let mut r = Router::new()
        .route("/ws", get(upgrade::ws))
        .route("/v1/publish", post(api::publish))
        .route("/v1/requests", post(api::request))
        .route("/v1/requests/{correlation_id}/reply", post(api::callback))
        .route("/v1/disconnect", post(admin::disconnect))
        .route("/v1/unsubscribe", post(admin::unsubscribe))
        .route("/v1/presence", get(admin::presence))
        .route("/v1/destinations/{*destination}", get(admin::destination))
        .route("/v1/stats", get(ops::stats))
        .route("/v1/connect", get(discovery::connect))
        .route("/v1/nodes", get(discovery::nodes))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics));
    if node.config.demo_page {
        r = r
            .route("/", get(web::demo_page))
            .route(web::CLIENT_JS_PATH, get(web::client_js));
    }
    r.fallback(|| async { respond::error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(node)
}
