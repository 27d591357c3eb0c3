//! Certificates are renewed without a restart: a node and the registry serve a new
//! pair once its files change; a pair that does not load leaves the one in use. The
//! registry serves https like the nodes.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn cert_der(name: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(fixture(name)).expect("test certificate")
}

/// A directory holding `cert.pem` / `key.pem`, which the test swaps.
struct CertDir(PathBuf);

impl CertDir {
    fn new(tag: &str) -> CertDir {
        let d = std::env::temp_dir().join(format!("pushcenter-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        let dir = CertDir(d);
        dir.put("tls-test-cert.pem", "tls-test-key.pem");
        dir
    }

    /// Replaces the pair the way a renewal does: new files renamed over the old.
    fn put(&self, cert: &str, key: &str) {
        for (from, to) in [(cert, "cert.pem"), (key, "key.pem")] {
            let tmp = self.0.join(format!("{to}.new"));
            std::fs::copy(fixture(from), &tmp).expect("copy");
            std::fs::rename(&tmp, self.0.join(to)).expect("rename");
        }
    }

    fn config(&self) -> String {
        format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\nreload_interval = \"1s\"\n",
            self.0.join("cert.pem"),
            self.0.join("key.pem")
        )
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Takes any certificate whose handshake signature is valid.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS connection to `addr` trusting both test certificates, and the certificate it
/// was served.
async fn open(addr: std::net::SocketAddr) -> (Tls, CertificateDer<'static>) {
    // The test compares the certificate served with the files, byte for byte; webpki
    // would refuse the self-signed test certificates as end entities (they are CAs).
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let cert = tls.get_ref().1.peer_certificates().expect("a certificate")[0].clone();
    (tls, cert)
}

/// GET `path` on an open connection (kept alive): the status line.
async fn get(tls: &mut Tls, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    tls.write_all(req.as_bytes()).await.expect("write");
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .expect("an answer within 5 s")
        .expect("read");
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The certificate a fresh handshake is served, and the status of a GET of `path`.
async fn served(addr: std::net::SocketAddr, path: &str) -> (CertificateDer<'static>, String) {
    let (mut tls, cert) = open(addr).await;
    let status = get(&mut tls, path).await;
    (cert, status)
}

/// Waits (up to 10 s) until fresh handshakes are served `want`.
async fn until_served(addr: std::net::SocketAddr, want: &CertificateDer<'static>) {
    let t0 = Instant::now();
    while served(addr, "/healthz").await.0 != *want {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the new certificate was not served within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_a_renewed_certificate_without_a_restart() {
    let dir = CertDir::new("tls-reload-node");
    let cfg = TempConfig::write("tls-reload-node", &dir.config());
    let node = Node::standalone(&["--config", cfg.path()]);
    let (first, answer) = served(node.http, "/healthz").await;
    assert_eq!(first, cert_der("tls-test-cert.pem"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Kept open across the renewal: connections already made are not cut.
    let (mut before, _) = open(node.http).await;

    dir.put("tls-test-cert-2.pem", "tls-test-key-2.pem");
    until_served(node.http, &cert_der("tls-test-cert-2.pem")).await;

    // A broken renewal (a key that does not match its certificate) is refused: the
    // pair in use stays.
    dir.put("tls-test-cert.pem", "tls-test-key-2.pem");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (still, answer) = served(node.http, "/healthz").await;
    assert_eq!(still, cert_der("tls-test-cert-2.pem"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(get(&mut before, "/healthz").await, "HTTP/1.1 200 OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_serves_https_and_reloads_its_certificate() {
    let etcd = Etcd::start();
    let dir = CertDir::new("tls-reload-registry");
    let cfg = TempConfig::write("tls-reload-registry", &dir.config());
    let registry = Node::spawn(&[
        "registry",
        "--http-addr",
        "127.0.0.1:0",
        "--etcd-endpoints",
        &etcd.endpoint(),
        "--config",
        cfg.path(),
    ]);
    // A peer that connects and says nothing holds its own task, not the accept loop.
    let _silent = tokio::net::TcpStream::connect(registry.http)
        .await
        .expect("connect");
    tokio::time::timeout(Duration::from_secs(5), open(registry.http))
        .await
        .expect("a handshake behind a silent peer within 5 s");
    let t0 = Instant::now();
    loop {
        let (cert, answer) = served(registry.http, "/v1/nodes").await;
        assert_eq!(cert, cert_der("tls-test-cert.pem"));
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Plain HTTP on the https port gets no answer.
    let mut plain = tokio::net::TcpStream::connect(registry.http)
        .await
        .expect("connect");
    plain
        .write_all(b"GET /v1/nodes HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "plain HTTP answered");
    dir.put("tls-test-cert-2.pem", "tls-test-key-2.pem");
    until_served(registry.http, &cert_der("tls-test-cert-2.pem")).await;
}
