//! The backend API: `POST /v1/publish`, `POST /v1/requests` and the callbacks that
//! complete a waiting request.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::bus::{
    BusError, REPLY_PREFIX, Record, Reply, check_correlation_id, check_header_name,
    check_publish_destination, sanitize,
};
use crate::http::respond::error;
use crate::node::Node;
use crate::requests::waiters::{Completion, RegisterError, Target};
use crate::stats::Stats;

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

/// A backend call's JSON body: the credentials checked first, then the body read within
/// its limits and parsed; the refusal (401, 4xx with a JSON error) otherwise.
async fn backend_json<T: serde::de::DeserializeOwned>(
    node: &Node,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<T, Response> {
    if let Some(r) = check_backend(node, headers) {
        return Err(r);
    }
    let limit = node.config.limits.max_frame_bytes;
    let body = read_body(node, headers, body, limit, true).await?;
    serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")))
}

pub(crate) async fn publish(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let req: PublishRequest = match backend_json(&node, &headers, body).await {
        Ok(r) => r,
        Err(r) => return r,
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
pub(crate) async fn request(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let req: RequestRequest = match backend_json(&node, &headers, body).await {
        Ok(r) => r,
        Err(r) => return r,
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
pub(crate) async fn callback(
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
    let confirm_id = crate::node::random_hex::<16>();
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
