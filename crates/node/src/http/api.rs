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
use crate::config::MAX_PUBLISH_BATCH;
use crate::http::respond::error;
use crate::node::Node;
use crate::requests::waiters::{Completion, RegisterError, Target};
use crate::stats::Stats;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    destination: String,
    body: Option<String>,
    /// A body that is not UTF-8, in standard base64; instead of `body`.
    body_base64: Option<String>,
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

/// `body` (UTF-8) or `body_base64` (any bytes), at most one of them; empty without.
fn body_from(body: Option<String>, body_base64: Option<String>) -> Result<Bytes, String> {
    use base64::Engine;
    match (body, body_base64) {
        (Some(_), Some(_)) => Err("give body or body_base64, not both".into()),
        (Some(text), None) => Ok(Bytes::from(text.into_bytes())),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map(Bytes::from)
            .map_err(|e| {
                format!("body_base64 is not standard base64 (A-Z a-z 0-9 + /, padded with =): {e}")
            }),
        (None, None) => Ok(Bytes::new()),
    }
}

fn record_from(req: PublishRequest) -> Result<Record, String> {
    check_target(req.user.as_deref(), req.session.as_deref())?;
    let targeted = req.user.is_some() || req.session.is_some();
    check_publish_destination(&req.destination, targeted)?;
    Ok(Record {
        destination: req.destination,
        headers: headers_from(req.headers)?,
        body: body_from(req.body, req.body_base64)?,
        key: req.key,
        user: req.user,
        session: req.session,
        at_us: 0,
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

/// The backend API (publish, requests, admin) needs an API key or a backend token
/// when authentication is configured, and takes one call of that credential's rate:
/// the refusal (401, 429), if refused.
pub(super) fn check_backend(node: &Node, headers: &HeaderMap) -> Option<Response> {
    let credential = bearer(headers);
    match &node.auth {
        Some(a) if !a.backend(credential) => Some(unauthorized(
            node,
            "unauthorized: an API key or a backend token is required",
        )),
        _ => check_rate(node, credential, 1),
    }
}

/// An authenticated call's turn: `cost` calls of its credential's rate; the 429 (with
/// `retry-after`) when it has too few. Called only once the credential was accepted,
/// so only valid credentials get a bucket; without `[auth]` there is no credential and
/// no limit.
pub(super) fn check_rate(node: &Node, credential: Option<&str>, cost: u32) -> Option<Response> {
    let (Some(_), Some(credential)) = (&node.auth, credential) else {
        return None;
    };
    let wait = node
        .api_limits
        .take(credential, cost, std::time::Instant::now())
        .err()?;
    Stats::inc(&node.stats.api_requests_limited_total);
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    let limit = node.config.limits.api_requests_per_second;
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        &format!(
            "too many API calls with this credential: at most {limit} per second on this node (limits.api_requests_per_second); retry in {seconds} s"
        ),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    Some(r)
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
pub(super) async fn backend_json<T: serde::de::DeserializeOwned>(
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
    // The delivery latency counts from the request's arrival.
    let arrived = crate::bus::unix_us();
    let mut call: serde_json::Map<String, Value> = match backend_json(&node, &headers, body).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some(messages) = call.remove("messages") else {
        let record = match publish_record(&node, Value::Object(call)) {
            Ok(r) => Record {
                at_us: arrived,
                ..r
            },
            Err((status, e)) => return error(status, &e),
        };
        return match node.publish(record).await {
            Ok(id) => {
                published(&node);
                (StatusCode::ACCEPTED, Json(json!({"id": id}))).into_response()
            }
            Err(e) => bus_error(&e),
        };
    };
    if !call.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "a batch has `messages` only: each message carries its own fields",
        );
    }
    let Value::Array(messages) = messages else {
        return error(StatusCode::BAD_REQUEST, "`messages` must be an array");
    };
    publish_batch(&node, &headers, messages, arrived).await
}

/// `{"messages": [...]}`: every message checked before any is published (an invalid
/// one publishes nothing and is named by its index), then all handed to the bus in
/// their order and awaited together; each one's result in `results`, in order.
async fn publish_batch(
    node: &Node,
    headers: &HeaderMap,
    messages: Vec<Value>,
    arrived: u64,
) -> Response {
    let n = messages.len();
    if n == 0 {
        return error(StatusCode::BAD_REQUEST, "`messages` is empty");
    }
    if n > MAX_PUBLISH_BATCH {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("{n} messages in one call: at most {MAX_PUBLISH_BATCH}"),
        );
    }
    // Each message is a call of the rate; check_backend took the first.
    if let Some(r) = check_rate(node, bearer(headers), (n - 1) as u32) {
        return r;
    }
    let mut records = Vec::with_capacity(n);
    for (i, m) in messages.into_iter().enumerate() {
        match publish_record(node, m) {
            Ok(r) => records.push(Record {
                at_us: arrived,
                ..r
            }),
            Err((status, e)) => {
                let body = json!({"error": format!("messages[{i}]: {e}"), "index": i});
                return (status, Json(body)).into_response();
            }
        }
    }
    // Handed over in order before any is awaited: records with one key keep the
    // batch's order, and the batch waits publish_timeout once, not once per message.
    let deadline = tokio::time::Instant::now() + node.config.publish_timeout;
    let sent: Vec<_> = records.into_iter().map(|r| node.bus.publish(r)).collect();
    let mut results = Vec::with_capacity(n);
    let mut failed = None;
    for s in sent {
        let outcome = tokio::time::timeout_at(deadline, s)
            .await
            .unwrap_or_else(|_| Err(BusError::Unavailable("timed out".into())));
        match outcome {
            Ok(id) => {
                published(node);
                results.push(json!({"id": id}));
            }
            Err(e) => {
                failed.get_or_insert_with(|| bus_status(&e));
                results.push(json!({"error": e.to_string()}));
            }
        }
    }
    let accepted = results.iter().filter(|r| r.get("id").is_some()).count();
    match failed {
        None => (StatusCode::ACCEPTED, Json(json!({"results": results}))).into_response(),
        Some(status) if accepted == 0 => {
            let body =
                json!({"error": "no message of the batch was published", "results": results});
            (status, Json(body)).into_response()
        }
        Some(_) => (StatusCode::MULTI_STATUS, Json(json!({"results": results}))).into_response(),
    }
}

/// One message of `POST /v1/publish`, checked: the record, or the status and why not.
fn publish_record(node: &Node, message: Value) -> Result<Record, (StatusCode, String)> {
    let req: PublishRequest = serde_json::from_value(message)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))?;
    let record = record_from(req).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    if record.body.len() > node.config.limits.max_body_bytes {
        return Err((StatusCode::PAYLOAD_TOO_LARGE, TOO_LARGE.into()));
    }
    Ok(record)
}

fn published(node: &Node) {
    Stats::inc(&node.stats.messages_published_total);
    Stats::inc(&node.stats.messages_published_http_total);
}

const TOO_LARGE: &str = "body larger than limits.max_body_bytes";

fn too_large() -> Response {
    error(StatusCode::PAYLOAD_TOO_LARGE, TOO_LARGE)
}

fn bus_status(e: &BusError) -> StatusCode {
    match e {
        BusError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        BusError::Rejected(_) => StatusCode::BAD_REQUEST,
    }
}

fn bus_error(e: &BusError) -> Response {
    error(bus_status(e), &e.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestRequest {
    user: Option<String>,
    session: Option<String>,
    destination: Option<String>,
    body: Option<String>,
    body_base64: Option<String>,
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
    let body = match body_from(req.body, req.body_base64) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
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
            body,
            user: req.user,
            session: req.session,
            key: req.key,
            at_us: 0,
        })
    } else {
        if req.destination.is_some() || !body.is_empty() || !req.headers.is_empty() {
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
                Err(_) => {
                    use base64::Engine;
                    let encoded = base64::engine::general_purpose::STANDARD.encode(&reply.body);
                    r["body_base64"] = encoded.into();
                }
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
    if let Some(r) = check_rate(&node, credential, 1) {
        return r;
    }
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

#[cfg(test)]
mod tests {
    use super::body_from;

    #[test]
    fn a_body_comes_as_text_or_as_base64_never_both() {
        assert_eq!(body_from(None, None).as_deref(), Ok(&b""[..]));
        assert_eq!(
            body_from(Some("hi".into()), None).as_deref(),
            Ok(&b"hi"[..])
        );
        let bytes = body_from(None, Some("AP/+".into()));
        assert_eq!(bytes.as_deref(), Ok(&[0x00, 0xff, 0xfe][..]));
        assert!(body_from(Some("hi".into()), Some("aGk=".into())).is_err());
        for bad in ["AP/", "AP/+!", "aGk", "a-_b"] {
            let e = body_from(None, Some(bad.into())).expect_err(bad);
            assert!(e.contains("body_base64"), "{e}");
        }
    }
}
