//! Accept loops. Each accepted socket gets one task that owns it from the first byte:
//! the HTTP request head (and so the WebSocket handshake) is read under
//! `connect_timeout` there, and the STOMP session that follows keeps the same task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use std::sync::atomic::Ordering;

use crate::connection;
use crate::node::Node;
use crate::stats::Stats;

/// Gives the HTTP connection's place back however its task ends.
struct HttpSlot(Arc<Node>);

impl Drop for HttpSlot {
    fn drop(&mut self) {
        Stats::add(&self.0.stats.http_connections, -1);
    }
}

/// Serves HTTP (and WebSocket upgrades) until the node shuts down.
pub(crate) async fn http(listener: TcpListener, app: Router, node: Arc<Node>) {
    accept(listener, node, move |stream, peer, node| {
        // HTTP connections (requests, handshakes not yet upgraded) have their own limit:
        // over it the socket is closed at once.
        let open = node.stats.http_connections.load(Ordering::Relaxed);
        if usize::try_from(open).unwrap_or(usize::MAX) >= node.config.max_http_connections {
            Stats::inc(&node.stats.http_connections_refused_total);
            drop(stream);
            return;
        }
        let app = app.clone();
        tokio::spawn(async move {
            Stats::add(&node.stats.http_connections, 1);
            let _open = HttpSlot(node.clone());
            match node.tls.clone() {
                None => http_conn(stream, peer, app, node).await,
                Some(tls) => {
                    if let Some(s) = handshake(&tls, stream, peer, &node).await {
                        http_conn(s, peer, app, node).await;
                    }
                }
            }
        });
    })
    .await;
}

/// The TLS handshake, under `connect_timeout` like the rest of the opening.
async fn handshake(
    tls: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    node: &Node,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(node.config.connect_timeout, tls.accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "tls handshake failed");
            None
        }
        Err(_) => {
            debug!(%peer, "tls handshake timed out");
            None
        }
    }
}

/// Serves STOMP over TCP (or TLS) until the node shuts down.
pub(crate) async fn tcp(listener: TcpListener, node: Arc<Node>) {
    accept(listener, node, |stream, peer, node| {
        match node.admit(Some(peer.ip())) {
            Ok(slot) => {
                tokio::spawn(async move {
                    match node.tls.clone() {
                        None => {
                            let link = crate::transport::tcp::TcpLink::new(stream);
                            connection::serve(link, node, Some(peer), slot, None).await;
                        }
                        Some(tls) => {
                            if let Some(s) = handshake(&tls, stream, peer, &node).await {
                                let link = crate::transport::tcp::TcpLink::new(s);
                                connection::serve(link, node, Some(peer), slot, None).await;
                            }
                        }
                    }
                });
            }
            // Over TLS the refusal would need a handshake first: just close.
            Err(_) if node.tls.is_some() => drop(stream),
            Err(why) => {
                tokio::spawn(connection::refuse(stream, why.message()));
            }
        }
    })
    .await;
}

/// Accepts until shutdown; each socket goes to `spawn`, which starts its task.
async fn accept(
    listener: TcpListener,
    node: Arc<Node>,
    spawn: impl Fn(TcpStream, SocketAddr, Arc<Node>),
) {
    let mut shutdown = node.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                keepalive(&stream, node.config.tcp_keepalive);
                spawn(stream, peer, node.clone());
            }
            // Out of descriptors and the like: back off instead of spinning.
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// TCP keepalive: a peer that vanished (half-open socket) is found within about
/// `idle` + 50 s even when the protocol above is silent.
fn keepalive(stream: &TcpStream, idle: Duration) {
    if idle.is_zero() {
        return;
    }
    let ka = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(Duration::from_secs(10))
        .with_retries(5);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        debug!(error = %e, "cannot set tcp keepalive");
    }
}

async fn http_conn<S>(stream: S, peer: SocketAddr, app: Router, node: Arc<Node>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        tower_service::Service::call(&mut app.clone(), req)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(node.config.connect_timeout)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut shutdown = node.shutdown.clone();
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(%peer, error = %e, "http connection ended");
            }
            return;
        }
        _ = shutdown.wait_for(|s| *s) => {}
    }
    // Finish the request in flight, then close; upgraded sockets drain on their own.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}
