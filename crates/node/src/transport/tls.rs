//! TLS for both listeners (rustls with the ring provider): https/wss on the HTTP port,
//! stomp+ssl on the TCP port.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfigError, TlsConfig};

pub(crate) fn acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor, ConfigError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| ConfigError(format!("tls.{what}: {e}"));
    let certs = CertificateDer::pem_file_iter(&cfg.cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("cert_file", &e))?;
    if certs.is_empty() {
        return Err(ConfigError("tls.cert_file holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key_file).map_err(|e| bad("key_file", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("cert_file/key_file", &e))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}
