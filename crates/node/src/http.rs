//! The HTTP side of a node: WebSocket upgrade, the `/v1` API, health, metrics, demo.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pushcenter_stomp::Version;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::bus::{
    BusError, REPLY_PREFIX, Record, Reply, check_correlation_id, check_header_name,
    check_publish_destination, sanitize,
};
use crate::connection::serve;
use crate::link::WsLink;
use crate::registrar::NodeInfo;
use crate::stats::Stats;
use crate::waiters::{Completion, RegisterError, Target};
use crate::{Node, Refused};
use hyper_util::rt::TokioIo;

pub(crate) fn routes(node: Arc<Node>) -> Router {
    let mut r = Router::new()
        .route("/ws", get(ws))
        .route("/v1/publish", post(publish))
        .route("/v1/requests", post(request))
        .route("/v1/requests/{correlation_id}/reply", post(callback))
        .route("/v1/stats", get(stats))
        .route("/v1/connect", get(connect))
        .route("/v1/nodes", get(nodes))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if node.config.demo_page {
        r = r
            .route("/", get(crate::web::demo_page))
            .route(crate::web::CLIENT_JS_PATH, get(crate::web::client_js));
    }
    r.fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(node)
}

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
    Query(query): Query<HashMap<String, String>>,
    mut req: Request,
) -> Response {
    let headers = req.headers();
    // Browsers always send Origin; a page on another site must not open sessions with
    // its visitors' cookies or tokens.
    let origins = &node.config.allowed_origins;
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ok = origin
            .to_str()
            .is_ok_and(|o| origins.is_empty() || origins.iter().any(|a| a == o));
        if !ok {
            return error(StatusCode::FORBIDDEN, "origin not allowed");
        }
    }
    let accept = match websocket_accept(headers) {
        Ok(a) => a,
        Err(resp) => return *resp,
    };
    let protocol = pick_subprotocol(headers);
    let slot = match node.admit(Some(peer.ip())) {
        Ok(s) => s,
        Err(why @ Refused::NodeFull) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, why.message());
        }
        Err(why @ Refused::IpFull) => return error(StatusCode::TOO_MANY_REQUESTS, why.message()),
    };
    let url_token = query.get("access_token").cloned();
    let limit = node.config.limits.max_frame_bytes;
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                // Plain TCP: the socket itself, without the upgrade's boxed wrapper.
                match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
                    Ok(parts) => {
                        let link = WsLink::new(parts.io.into_inner(), limit, &parts.read_buf);
                        drop(parts.read_buf);
                        serve(link, node, Some(peer), slot, url_token).await;
                    }
                    Err(upgraded) => {
                        let link = WsLink::new(TokioIo::new(upgraded), limit, &[]);
                        serve(link, node, Some(peer), slot, url_token).await;
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let mut resp = Response::new(axum::body::Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    resp
}

/// Checks a WebSocket opening handshake (RFC 6455 4.2.1); the `Sec-WebSocket-Accept`
/// value, or the response that refuses it.
fn websocket_accept(headers: &HeaderMap) -> Result<HeaderValue, Box<Response>> {
    let has_token = |name, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err(Box::new(error(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket: send Connection: upgrade, Upgrade: websocket",
        )));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut resp = error(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version: 13 is supported",
        );
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(Box::new(resp));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "missing Sec-WebSocket-Key",
        )));
    };
    HeaderValue::from_str(&tungstenite::handshake::derive_accept_key(key.as_bytes()))
        .map_err(|_| Box::new(error(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key")))
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

/// JSON header values: strings, numbers and booleans, sanitised.
fn headers_from(map: serde_json::Map<String, Value>) -> Result<Vec<(String, String)>, String> {
    let mut headers = Vec::new();
    for (k, v) in map {
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
        headers.push((k, crate::bus::header_value(&value)));
    }
    Ok(headers)
}

/// A user or session a record may be targeted at.
fn check_target(user: Option<&str>, session: Option<&str>) -> Result<(), String> {
    for (what, v) in [("user", user), ("session", session)] {
        if v.is_some_and(|v| v.is_empty() || v.contains(['\r', '\n', '\0'])) {
            return Err(format!("{what} must be non-empty, without CR, LF or NUL"));
        }
    }
    Ok(())
}

fn record_from(req: PublishRequest) -> Result<Record, String> {
    check_target(req.user.as_deref(), req.session.as_deref())?;
    let targeted = req.user.is_some() || req.session.is_some();
    check_publish_destination(&req.destination, targeted)?;
    Ok(Record {
        destination: req.destination,
        headers: headers_from(req.headers)?,
        body: Bytes::from(req.body.into_bytes()),
        key: req.key,
        user: req.user,
        session: req.session,
    })
}

/// The token or key of an `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn unauthorized(node: &Node, message: &str) -> Response {
    Stats::inc(&node.stats.auth_failures_total);
    let mut r = error(StatusCode::UNAUTHORIZED, message);
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// The backend API (publish, requests) needs an API key or a backend token when
/// authentication is configured: the refusal, if refused.
fn check_backend(node: &Node, headers: &HeaderMap) -> Option<Response> {
    match &node.auth {
        Some(a) if !a.backend(bearer(headers)) => Some(unauthorized(
            node,
            "unauthorized: an API key or a backend token is required",
        )),
        _ => None,
    }
}

/// Reads a request body after its credentials were checked: at most `limit` bytes
/// (413 JSON past it, told by `content-length` before anything is read), within
/// `connect_timeout` (408 JSON); with `json`, only a JSON content type (415 JSON: a
/// browser's cross-site "simple request" cannot send one without a CORS preflight).
async fn read_body(
    node: &Node,
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
    json: bool,
) -> Result<Bytes, Response> {
    if json {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let essence = ct.split(';').next().unwrap_or_default().trim();
        let is_json = essence.eq_ignore_ascii_case("application/json")
            || essence.to_ascii_lowercase().ends_with("+json");
        if !is_json {
            return Err(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content-type must be application/json",
            ));
        }
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(body_too_large(limit));
    }
    use http_body_util::BodyExt;
    let read = http_body_util::Limited::new(body, limit).collect();
    match tokio::time::timeout(node.config.connect_timeout, read).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(body_too_large(limit))
        }
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("cannot read the request body: {e}"),
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive within connect_timeout",
        )),
    }
}

fn body_too_large(limit: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body larger than {limit} bytes (limits.max_frame_bytes)"),
    )
}

async fn publish(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if let Some(r) = check_backend(&node, &headers) {
        return r;
    }
    let limit = node.config.limits.max_frame_bytes;
    let body = match read_body(&node, &headers, body, limit, true).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let req: PublishRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")),
    };
    let record = match record_from(req) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    if record.body.len() > node.config.limits.max_body_bytes {
        return too_large();
    }
    match node.publish(record).await {
        Ok(id) => {
            Stats::inc(&node.stats.messages_published_total);
            Stats::inc(&node.stats.messages_published_http_total);
            (StatusCode::ACCEPTED, Json(json!({"id": id}))).into_response()
        }
        Err(e) => bus_error(&e),
    }
}

fn too_large() -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body larger than limits.max_body_bytes",
    )
}

fn bus_error(e: &BusError) -> Response {
    match e {
        BusError::Unavailable(_) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        BusError::Rejected(_) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestRequest {
    user: Option<String>,
    session: Option<String>,
    destination: Option<String>,
    #[serde(default)]
    body: String,
    #[serde(default)]
    headers: serde_json::Map<String, Value>,
    timeout_ms: Option<u64>,
    /// The caller's own key (an order number a third party will call back with).
    correlation_id: Option<String>,
    key: Option<String>,
}

/// `POST /v1/requests`: hands the body to a client (or to nobody: a rendezvous with a
/// callback) and waits for the answer.
async fn request(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if let Some(r) = check_backend(&node, &headers) {
        return r;
    }
    let limit = node.config.limits.max_frame_bytes;
    let body = match read_body(&node, &headers, body, limit, true).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let req: RequestRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")),
    };
    let timeout = match req.timeout_ms {
        None => node.config.request_timeout_default,
        Some(0) => return error(StatusCode::BAD_REQUEST, "timeout_ms must be positive"),
        Some(ms) if Duration::from_millis(ms) > node.config.request_timeout_max => {
            let max = node.config.request_timeout_max.as_millis();
            return error(
                StatusCode::BAD_REQUEST,
                &format!("timeout_ms must be at most {max} (request_timeout_max)"),
            );
        }
        Some(ms) => Duration::from_millis(ms),
    };
    let targeted = req.user.is_some() || req.session.is_some();
    let id = match (&req.correlation_id, targeted) {
        (Some(id), _) => id.clone(),
        (None, true) => node.next_correlation_id(),
        (None, false) => {
            return error(
                StatusCode::BAD_REQUEST,
                "a request needs a user or a session to send to, or a correlation_id to wait for",
            );
        }
    };
    let record = if targeted {
        let Some(destination) = req.destination else {
            return error(StatusCode::BAD_REQUEST, "missing field `destination`");
        };
        let record = check_target(req.user.as_deref(), req.session.as_deref())
            .and_then(|()| check_publish_destination(&destination, true))
            .and_then(|()| check_correlation_id(&id))
            .and_then(|()| headers_from(req.headers));
        let mut headers = match record {
            Ok(h) => h,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
        headers.push(("correlation-id".into(), id.clone()));
        headers.push((
            "reply-to".into(),
            format!("{REPLY_PREFIX}{}", node.config.node_id),
        ));
        // No node delivers it past the caller's deadline (a client that resumes later
        // does not get it either).
        let deadline = crate::bus::unix_ms()
            .saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        headers.push(("request-deadline".into(), deadline.to_string()));
        Some(Record {
            destination,
            headers,
            body: Bytes::from(req.body.into_bytes()),
            user: req.user,
            session: req.session,
            key: req.key,
        })
    } else {
        if req.destination.is_some() || !req.body.is_empty() || !req.headers.is_empty() {
            return error(
                StatusCode::BAD_REQUEST,
                "destination, body and headers need a user or a session to send to",
            );
        }
        if let Err(e) = check_correlation_id(&id) {
            return error(StatusCode::BAD_REQUEST, &e);
        }
        None
    };
    if record
        .as_ref()
        .is_some_and(|r| r.body.len() > node.config.limits.max_body_bytes)
    {
        return too_large();
    }
    // Who may answer: the target's sessions, or (always) a callback or a backend.
    let target = Target {
        user: record.as_ref().and_then(|r| r.user.clone()),
        session: record.as_ref().and_then(|r| r.session.clone()),
    };
    // Registered before the request goes out: the answer cannot overtake it.
    let pending = match node.waiters.register(&id, target) {
        Ok(p) => p,
        Err(RegisterError::Pending) => {
            return error(
                StatusCode::CONFLICT,
                &format!("a request with correlation id {id} is already waiting"),
            );
        }
        Err(RegisterError::Full) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many requests waiting on this node (max_waiters)",
            );
        }
    };
    Stats::inc(&node.stats.requests_total);
    let started = std::time::Instant::now();
    if let Some(record) = record {
        if let Err(e) = node.publish(record).await {
            return bus_error(&e);
        }
    }
    let id = pending.id().to_owned();
    let outcome = pending.wait(timeout).await;
    node.stats
        .request_duration
        .observe(started.elapsed().as_secs_f64());
    match outcome {
        Ok(reply) => {
            Stats::inc(&node.stats.requests_answered_total);
            let headers: serde_json::Map<String, Value> = reply
                .headers
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            let mut r = json!({"headers": headers});
            match std::str::from_utf8(&reply.body) {
                Ok(text) => r["body"] = text.into(),
                Err(_) => r["body_base64"] = base64(&reply.body).into(),
            }
            Json(json!({"correlation_id": id, "reply": r})).into_response()
        }
        Err(t) => {
            Stats::inc(&node.stats.requests_timed_out_total);
            let ms = timeout.as_millis();
            (
                StatusCode::GATEWAY_TIMEOUT,
                Json(json!({
                    "error": format!("no reply within {ms} ms"),
                    "correlation_id": id,
                    "delivered": t.delivered,
                })),
            )
                .into_response()
        }
    }
}

/// `POST /v1/requests/{correlation_id}/reply`: a third party's callback. The body and
/// its content type become the answer of the call waiting for this id, on any node.
/// 200 once a waiter took it; 404 when none did (none waits yet, or any more): the
/// caller may retry, nothing was kept.
async fn callback(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if let Err(e) = check_correlation_id(&id) {
        return error(StatusCode::BAD_REQUEST, &e);
    }
    // A third party gets a callback URL carrying a token for this one request; the
    // token may name the node whose caller waits.
    let credential = bearer(&headers).or(query.get("token").map(String::as_str));
    let waiting_node = match node.auth.as_ref().map(|a| a.callback(credential, &id)) {
        None => None,
        Some(Ok(n)) => n,
        Some(Err(())) => {
            return unauthorized(
                &node,
                "unauthorized: a callback token for this request is required",
            );
        }
    };
    // Any content type: the body is the third party's, passed on as it is.
    let body = match read_body(
        &node,
        &headers,
        body,
        node.config.limits.max_body_bytes,
        false,
    )
    .await
    {
        Ok(b) => b,
        Err(r) => return r,
    };
    Stats::inc(&node.stats.callbacks_total);
    let mut reply_headers = Vec::new();
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        reply_headers.push(("content-type".to_string(), sanitize(ct)));
    }
    let mut reply = Reply {
        correlation_id: id.clone(),
        node: waiting_node,
        headers: reply_headers,
        body,
        ..Reply::default()
    };
    let here = node.bus.is_local()
        || node.waiters.contains(&id)
        || reply.node.as_deref() == Some(node.config.node_id.as_str());
    if here {
        return match node.waiters.complete(reply) {
            Completion::Taken => callback_taken(&id),
            Completion::NoWaiter | Completion::Refused => callback_unclaimed(&node, &id),
        };
    }
    // Elsewhere: the waiting node says whether it took it.
    let confirm_id = crate::random_hex::<16>();
    let (tx, rx) = tokio::sync::oneshot::channel();
    {
        let mut confirms = node.confirms.lock().unwrap_or_else(|e| e.into_inner());
        if confirms.len() >= node.config.max_waiters {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many callbacks waiting for confirmation on this node (max_waiters)",
            );
        }
        confirms.insert(confirm_id.clone(), tx);
    }
    // Removed however this handler ends (a caller that hangs up drops it mid-wait).
    let _entry = ConfirmEntry(&node, &confirm_id);
    reply.confirm = Some((node.config.node_id.clone(), confirm_id.clone()));
    if let Err(e) = node.send_reply(reply).await {
        return bus_error(&e);
    }
    match tokio::time::timeout(node.config.callback_timeout, rx).await {
        Ok(Ok(true)) => callback_taken(&id),
        _ => callback_unclaimed(&node, &id),
    }
}

/// A callback's place in `Node::confirms`, given back when dropped.
struct ConfirmEntry<'a>(&'a Node, &'a str);

impl Drop for ConfirmEntry<'_> {
    fn drop(&mut self) {
        self.0
            .confirms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(self.1);
    }
}

fn callback_taken(id: &str) -> Response {
    Json(json!({"correlation_id": id, "completed": true})).into_response()
}

fn callback_unclaimed(node: &Node, id: &str) -> Response {
    Stats::inc(&node.stats.callbacks_unclaimed_total);
    let ms = node.config.callback_timeout.as_millis();
    (
        StatusCode::NOT_FOUND,
        Json(json!({
            "error": format!("no request waits for {id}: no node took this callback within {ms} ms; nothing was kept, retry later"),
            "correlation_id": id,
            "completed": false,
        })),
    )
        .into_response()
}

/// Standard base64 with padding, for reply bodies that are not UTF-8.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn stats(State(node): State<Arc<Node>>) -> Response {
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

#[derive(Deserialize)]
struct ConnectQuery {
    /// (`user` is accepted and ignored: one node's view needs no rendezvous.)
    /// Comma-separated node ids the client would rather not get.
    avoid: Option<String>,
}

/// The registry's `/v1/connect` answered from this node's view (in standalone mode:
/// itself), so a client pointed at a node works the same.
async fn connect(State(node): State<Arc<Node>>, Query(q): Query<ConnectQuery>) -> Response {
    let avoid: Vec<&str> = q
        .avoid
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .filter(|a| !a.is_empty())
        .collect();
    let mut live: Vec<NodeInfo> = node
        .registrar
        .nodes()
        .into_iter()
        .filter(|n| !n.draining)
        .collect();
    if live.iter().any(|n| !avoid.contains(&n.node_id.as_str())) {
        live.retain(|n| !avoid.contains(&n.node_id.as_str()));
    }
    match live.into_iter().min_by_key(|n| n.connections) {
        Some(n) => cors(
            Json(json!({
                "node_id": n.node_id,
                "ws_url": n.ws_url,
                "tcp_url": n.tcp_url,
                "http_url": n.http_url,
                "stale": false,
            }))
            .into_response(),
        ),
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

#[cfg(test)]
mod tests {
    #[test]
    fn base64_pads_like_rfc_4648() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ];
        for (plain, encoded) in cases {
            assert_eq!(super::base64(plain.as_bytes()), encoded);
        }
        assert_eq!(super::base64(&[0xff, 0xfe]), "//4=");
    }
}
