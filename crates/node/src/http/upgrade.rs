//! `GET /ws`: the WebSocket opening handshake (RFC 6455 4.2), then the connection runs
//! on the upgraded socket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use pushcenter_stomp::Version;

use crate::connection::serve;
use crate::http::respond::error;
use crate::node::{Node, Refused};
use crate::transport::websocket::WsLink;

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

pub(crate) async fn ws(
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
    let accept = match websocket_accept(req.version(), headers) {
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
fn websocket_accept(
    version: axum::http::Version,
    headers: &HeaderMap,
) -> Result<HeaderValue, Box<Response>> {
    // An opening handshake is an HTTP/1.1 GET with a Host (RFC 6455 4.1, 4.2.1).
    if version < axum::http::Version::HTTP_11 {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "the WebSocket handshake needs HTTP/1.1",
        )));
    }
    if !headers.contains_key(header::HOST) {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "the WebSocket handshake needs a Host header",
        )));
    }
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
    if !pushcenter_websocket::handshake::valid_key(key.as_bytes()) {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "bad Sec-WebSocket-Key: 16 bytes in base64 expected",
        )));
    }
    HeaderValue::from_str(&pushcenter_websocket::handshake::accept_key(key.as_bytes()))
        .map_err(|_| Box::new(error(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key")))
}
