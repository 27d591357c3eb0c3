//! TLS for both listeners (rustls with the ring provider): https/wss on the HTTP port,
//! stomp+ssl on the TCP port; the registry serves https with the same code. The
//! certificate is reloaded when its files change (a renewed certificate needs no
//! restart); a pair that does not load keeps the one in use, and says why.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info};

use crate::config::{ConfigError, TlsConfig};

/// The files' modification times and sizes: a change of either is a new certificate.
type Stamp = Option<[(SystemTime, u64); 2]>;

fn stamp(cfg: &TlsConfig) -> Stamp {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    Some([one(&cfg.cert_file)?, one(&cfg.key_file)?])
}

/// The certificate in use, swapped when the files change.
pub struct TlsCerts {
    cfg: TlsConfig,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    loaded: std::sync::Mutex<Stamp>,
}

impl std::fmt::Debug for TlsCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCerts")
            .field("cert_file", &self.cfg.cert_file)
            .finish()
    }
}

impl ResolvesServerCert for TlsCerts {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn load_pair(cfg: &TlsConfig, provider: &CryptoProvider) -> Result<CertifiedKey, ConfigError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| ConfigError(format!("tls.{what}: {e}"));
    let certs = CertificateDer::pem_file_iter(&cfg.cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("cert_file", &e))?;
    if certs.is_empty() {
        return Err(ConfigError("tls.cert_file holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key_file).map_err(|e| bad("key_file", &e))?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| bad("cert_file/key_file", &e))
}

impl TlsCerts {
    /// Loads the pair; an error names the key and the file.
    pub fn load(cfg: &TlsConfig) -> Result<Arc<TlsCerts>, ConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let before = stamp(cfg);
        let pair = load_pair(cfg, &provider)?;
        Ok(Arc::new(TlsCerts {
            cfg: cfg.clone(),
            provider,
            current: RwLock::new(Arc::new(pair)),
            loaded: std::sync::Mutex::new(before),
        }))
    }

    /// A TLS acceptor that always serves the current certificate.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, ConfigError> {
        let mut server = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError(format!("tls protocol versions: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(server)))
    }

    /// Loads the pair again if its files changed since the last load: `Ok(true)` when
    /// a new certificate is in use. A pair that fails to load leaves the old one.
    pub fn reload_if_changed(&self) -> Result<bool, ConfigError> {
        let now = stamp(&self.cfg);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if now == *loaded {
            return Ok(false);
        }
        // A half-written renewal fails here and is tried again once it changes again.
        *loaded = now;
        let pair = load_pair(&self.cfg, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
        Ok(true)
    }

    /// Checks the files every `every` for the life of the process.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let certs = self.clone();
            // File reads stay off the runtime's workers.
            let r = tokio::task::spawn_blocking(move || certs.reload_if_changed()).await;
            match r {
                Ok(Ok(true)) => {
                    info!(cert_file = %self.cfg.cert_file.display(), "tls certificate reloaded")
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    error!(error = %e, "tls certificate not reloaded; the previous one stays in use")
                }
                Err(e) => error!(error = %e, "tls reload task failed"),
            }
        }
    }
}

/// Serves `app` over https on `listener` until `stop` resolves: each connection's TLS
/// handshake and request head run in its own task under `timeout` (a slow client
/// holds only its own task, never the accept loop).
pub async fn serve_https(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    timeout: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => return,
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return debug!(%peer, error = %e, "tls handshake failed"),
                Err(_) => return debug!(%peer, "tls handshake timed out"),
            };
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo::<SocketAddr>(peer));
                tower_service::Service::call(&mut app.clone(), req)
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(TokioIo::new(tls), svc);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "https connection ended");
            }
        });
    }
}
