//! The admin API (backend credentials): `POST /v1/disconnect`, `POST /v1/unsubscribe`,
//! `GET /v1/presence`, `GET /v1/destinations/{destination}`. Each works on every node
//! of the cluster through the bus (crate::admin).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::admin::gather::gather;
use crate::admin::{Command, Gathered, MAX_TEXT};
use crate::bus::{BusError, unix_ms};
use crate::http::api::{backend_json, check_backend};
use crate::http::respond::error;
use crate::node::Node;

/// The longest ban one call may set: a year.
const MAX_BAN_SECONDS: u64 = 365 * 24 * 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    /// Whether the client should connect again (the ERROR's `reconnect` header).
    #[serde(default)]
    reconnect: Option<bool>,
    /// Seconds the user stays out, cluster-wide.
    #[serde(default)]
    ban_for: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeRequest {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    session: Option<String>,
    destination: String,
}

/// A text a command carries: non-empty, at most [`MAX_TEXT`] bytes, no control
/// characters (it goes into STOMP headers and logs).
fn check_text(what: &str, v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > MAX_TEXT || v.chars().any(char::is_control) {
        return Err(format!(
            "{what} must be 1-{MAX_TEXT} bytes without control characters"
        ));
    }
    Ok(())
}

/// Exactly one of `user` and `session`, each a valid text.
fn check_target(user: &Option<String>, session: &Option<String>) -> Result<(), String> {
    match (user, session) {
        (Some(u), None) => check_text("user", u),
        (None, Some(s)) => check_text("session", s),
        _ => Err("give exactly one of user and session".into()),
    }
}

/// What the nodes answered, with who did not.
fn answered(g: &Gathered) -> Value {
    let mut v = json!({
        "nodes_answered": g.results.keys().collect::<Vec<_>>(),
        "nodes_missing": g.missing,
    });
    if let Some(e) = &g.registry_error {
        v["registry_error"] = e.as_str().into();
    }
    v
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

fn bus_failed(e: &BusError) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("cannot reach the other nodes: {e}"),
    )
}

/// Sum of a number every node reported, and how many nodes reported more than 0.
fn total(g: &Gathered, field: &str) -> (u64, usize) {
    let counts: Vec<u64> = g
        .results
        .values()
        .map(|r| r[field].as_u64().unwrap_or(0))
        .collect();
    (
        counts.iter().sum(),
        counts.iter().filter(|&&n| n > 0).count(),
    )
}

pub(crate) async fn disconnect(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let req: DisconnectRequest = match backend_json(&node, &headers, body).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let reason = req
        .reason
        .unwrap_or_else(|| "disconnected by the operator".into());
    let checked = check_target(&req.user, &req.session)
        .and_then(|()| check_text("reason", &reason))
        .and_then(|()| match (req.ban_for, &req.user) {
            (Some(s), _) if s == 0 || s > MAX_BAN_SECONDS => {
                Err(format!("ban_for must be 1-{MAX_BAN_SECONDS} seconds"))
            }
            (Some(_), None) => Err("ban_for needs a user (a session has no next login)".into()),
            _ => Ok(()),
        });
    if let Err(e) = checked {
        return error(StatusCode::BAD_REQUEST, &e);
    }
    let ban_until = req.ban_for.map(|s| unix_ms() + s * 1000);
    // A banned user is told not to come back: it would be refused.
    let reconnect = req.reconnect.unwrap_or(true) && ban_until.is_none();
    let command = Command::Disconnect {
        user: req.user,
        session: req.session,
        reason,
        reconnect,
        ban_until,
    };
    match gather(&node, command).await {
        Ok(g) => {
            let (closed, nodes) = total(&g, "closed");
            let mut answer = json!({"closed": closed, "nodes": nodes, "reconnect": reconnect});
            if let Some(until) = ban_until {
                answer["banned_until_ms"] = until.into();
            }
            Json(merge(answer, answered(&g))).into_response()
        }
        Err(e) => bus_failed(&e),
    }
}

pub(crate) async fn unsubscribe(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let req: UnsubscribeRequest = match backend_json(&node, &headers, body).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Err(e) = check_target(&req.user, &req.session)
        .and_then(|()| check_text("destination", &req.destination))
    {
        return error(StatusCode::BAD_REQUEST, &e);
    }
    let command = Command::Unsubscribe {
        user: req.user,
        session: req.session,
        destination: req.destination,
    };
    match gather(&node, command).await {
        Ok(g) => {
            let (ended, nodes) = total(&g, "unsubscribed");
            Json(merge(
                json!({"unsubscribed": ended, "nodes": nodes}),
                answered(&g),
            ))
            .into_response()
        }
        Err(e) => bus_failed(&e),
    }
}

pub(crate) async fn presence(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = check_backend(&node, &headers) {
        return r;
    }
    let Some(user) = q.get("user").cloned() else {
        return error(
            StatusCode::BAD_REQUEST,
            "the user query parameter is required",
        );
    };
    if let Err(e) = check_text("user", &user) {
        return error(StatusCode::BAD_REQUEST, &e);
    }
    match gather(&node, Command::Presence { user: user.clone() }).await {
        Ok(g) => {
            let mut sessions = Vec::new();
            for (n, r) in &g.results {
                for s in r["sessions"].as_array().into_iter().flatten() {
                    sessions.push(merge(json!({"node": n}), s.clone()));
                }
            }
            let online = !sessions.is_empty();
            Json(merge(
                json!({"user": user, "online": online, "sessions": sessions}),
                answered(&g),
            ))
            .into_response()
        }
        Err(e) => bus_failed(&e),
    }
}

pub(crate) async fn destination(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path(rest): Path<String>,
) -> Response {
    if let Some(r) = check_backend(&node, &headers) {
        return r;
    }
    // `/v1/destinations//topic/a`, `/v1/destinations/topic/a` and `%2Ftopic%2Fa`
    // all name `/topic/a`.
    let destination = format!("/{}", rest.trim_start_matches('/'));
    if let Err(e) = check_text("destination", &destination) {
        return error(StatusCode::BAD_REQUEST, &e);
    }
    match gather(
        &node,
        Command::Destination {
            destination: destination.clone(),
        },
    )
    .await
    {
        Ok(g) => {
            let nodes: Vec<Value> = g
                .results
                .iter()
                .map(|(n, r)| merge(json!({"node": n}), r.clone()))
                .collect();
            let (subscribers, _) = total(&g, "subscribers");
            Json(merge(
                json!({"destination": destination, "subscribers": subscribers, "nodes": nodes}),
                answered(&g),
            ))
            .into_response()
        }
        Err(e) => bus_failed(&e),
    }
}
