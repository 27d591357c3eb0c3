//! A real Kafka-protocol broker for tests: the Tansu binary (`make test` installs it)
//! on a free loopback port, in-memory storage, stopped when dropped.

use std::net::{SocketAddr, TcpStream};

use super::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// What clients connect to when it differs from `addr` (see [`Broker::behind_link`]).
    advertised: SocketAddr,
    /// Started with `--authentication`: every client must pass SASL.
    authenticating: bool,
}

impl Broker {
    pub fn start() -> Broker {
        let addr = free_port();
        Broker::start_advertising(addr, addr)
    }

    fn start_advertising(addr: SocketAddr, advertised: SocketAddr) -> Broker {
        let mut b = Broker {
            child: None,
            addr,
            advertised,
            authenticating: false,
        };
        b.restart();
        b
    }

    /// A broker reachable only through a [`Link`] the test can cut and restore: an
    /// outage as clients see it, while the broker keeps its log. (Restarting the
    /// in-memory broker instead would lose the topics; re-created under the same
    /// names they get new topic ids, which is a different scenario.)
    pub async fn behind_link() -> (Broker, Link) {
        let link_addr = free_port();
        let broker = Broker::start_advertising(free_port(), link_addr);
        let link = Link::open(link_addr, broker.addr).await;
        (broker, link)
    }

    /// A broker that speaks TLS with the test certificate (`tests/fixtures/`). The
    /// pinned Tansu (0.6.0) cannot serve TLS itself: its `--cert` and `--key` share a
    /// clap group that admits only one of them. A TLS-terminating forwarder in front of
    /// it stands in, and the broker advertises the forwarder, so every connection a
    /// client makes is TLS.
    pub async fn behind_tls() -> (Broker, tokio::task::JoinHandle<()>) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let tls_addr = free_port();
        let broker = Broker::start_advertising(free_port(), tls_addr);
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let certs = CertificateDer::pem_file_iter(fixtures.join("tls-test-cert.pem"))
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .expect("test certificate");
        let key = PrivateKeyDer::from_pem_file(fixtures.join("tls-test-key.pem")).expect("key");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
        let listener = tokio::net::TcpListener::bind(tls_addr)
            .await
            .expect("tls forwarder listens");
        let to = broker.addr;
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return;
                    };
                    if let Ok(mut broker) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
                    }
                });
            }
        });
        (broker, task)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        self.advertised.to_string()
    }

    /// Starts the broker (again) on the same port, with empty storage.
    pub fn restart(&mut self) {
        self.stop();
        wait_bindable(self.addr);
        let url = format!("tcp://{}", self.addr);
        let advertised = format!("tcp://{}", self.advertised);
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
                "--storage-engine",
                "memory://tansu/",
            ])
            .args(self.authenticating.then_some("--authentication"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tansu (make test installs it): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Tansu binds without SO_REUSEADDR, so after a kill it cannot listen again on a port
/// whose old connections sit in TIME_WAIT (up to a minute): wait for the port.
fn wait_bindable(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // Unlike std's, tokio's TcpSocket does not set SO_REUSEADDR.
        let bound = tokio::net::TcpSocket::new_v4().and_then(|s| s.bind(addr));
        if bound.is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "port {addr} stayed in use");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `TANSU` when set, else `tansu` on PATH, else cargo's bin directory.
fn tansu() -> String {
    if let Ok(t) = std::env::var("TANSU") {
        return t;
    }
    let on_path = Command::new("tansu")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if on_path {
        return "tansu".into();
    }
    let home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    format!("{home}/bin/tansu")
}

/// A TCP forwarder between clients and the broker that can be cut (every connection
/// dropped, new ones refused) and restored on the same port.
pub struct Link {
    addr: SocketAddr,
    to: SocketAddr,
    tasks: tokio::task::JoinSet<()>,
}

impl Link {
    async fn open(addr: SocketAddr, to: SocketAddr) -> Link {
        let mut link = Link {
            addr,
            to,
            tasks: tokio::task::JoinSet::new(),
        };
        link.restore().await;
        link
    }

    /// Drops every connection and stops listening: clients get "connection refused".
    pub async fn cut(&mut self) {
        self.tasks.shutdown().await;
    }

    /// Listens again (tokio sets SO_REUSEADDR: no wait for TIME_WAIT).
    pub async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("link listens");
        let to = self.to;
        self.tasks.spawn(async move {
            // Connections live in a set owned by this task: aborting it drops them all.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut broker) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                    }
                });
            }
        });
    }
}

/// The SCRAM hashes Kafka stores a credential for.
#[derive(Clone, Copy, Debug)]
pub enum Scram {
    Sha256,
    Sha512,
}

impl Broker {
    /// A broker that requires SASL authentication (`tansu broker --authentication`).
    pub fn start_authenticating() -> Broker {
        let addr = free_port();
        let mut b = Broker {
            child: None,
            addr,
            advertised: addr,
            authenticating: true,
        };
        b.restart();
        b
    }

    /// Stores a SCRAM credential for `user` through Kafka's AlterUserScramCredentials,
    /// the way an operator's admin tool does. The pinned Tansu takes the request from a
    /// connection authenticated with SASL PLAIN, whose password it does not check.
    pub async fn add_scram_user(&self, user: &str, password: &str, mechanism: Scram) {
        scram::add_user(self.addr, user, password, mechanism).await;
    }
}

mod scram {
    //! Just enough of the Kafka protocol for one admin call: SaslHandshake v1,
    //! SaslAuthenticate v1 (PLAIN), AlterUserScramCredentials v0 (a flexible version).

    use std::net::SocketAddr;

    use hmac::{Mac, SimpleHmac};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::Scram;

    const SASL_HANDSHAKE: i16 = 17;
    const SASL_AUTHENTICATE: i16 = 36;
    const ALTER_USER_SCRAM_CREDENTIALS: i16 = 51;

    pub(super) async fn add_user(addr: SocketAddr, user: &str, password: &str, m: Scram) {
        let mut s = TcpStream::connect(addr)
            .await
            .expect("connect to the broker");
        let mut body = Vec::new();
        string(&mut body, "PLAIN");
        let r = call(&mut s, SASL_HANDSHAKE, 1, 1, false, &body).await;
        assert_eq!(
            i16::from_be_bytes([r[0], r[1]]),
            0,
            "SaslHandshake refused PLAIN"
        );
        let mut body = Vec::new();
        let plain = b"\0admin\0admin";
        body.extend_from_slice(&(plain.len() as i32).to_be_bytes());
        body.extend_from_slice(plain);
        let r = call(&mut s, SASL_AUTHENTICATE, 1, 2, false, &body).await;
        assert_eq!(
            i16::from_be_bytes([r[0], r[1]]),
            0,
            "SaslAuthenticate failed"
        );

        let salt: Vec<u8> = (0..16u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(11))
            .collect();
        let iterations = 4096;
        let (code, salted) = match m {
            Scram::Sha256 => (1i8, pbkdf2::<sha2::Sha256>(password, &salt, iterations)),
            Scram::Sha512 => (2i8, pbkdf2::<sha2::Sha512>(password, &salt, iterations)),
        };
        let mut body = Vec::new();
        uvarint(&mut body, 1); // no deletions
        uvarint(&mut body, 2); // one upsertion
        compact_bytes(&mut body, user.as_bytes());
        body.push(code as u8);
        body.extend_from_slice(&iterations.to_be_bytes());
        compact_bytes(&mut body, &salt);
        compact_bytes(&mut body, &salted);
        uvarint(&mut body, 0); // the upsertion's tagged fields
        uvarint(&mut body, 0); // the request's
        let r = call(&mut s, ALTER_USER_SCRAM_CREDENTIALS, 0, 3, true, &body).await;
        // throttle_time_ms, then results: [user, error_code, error_message].
        let mut at = 4;
        let results = r[at] as usize - 1;
        at += 1;
        assert_eq!(results, 1, "one result for one upsertion: {r:?}");
        let name_len = r[at] as usize - 1;
        at += 1 + name_len;
        let error = i16::from_be_bytes([r[at], r[at + 1]]);
        assert_eq!(error, 0, "AlterUserScramCredentials failed: {r:?}");
    }

    /// One request and its response body (the response header taken off).
    async fn call(
        s: &mut TcpStream,
        api_key: i16,
        version: i16,
        correlation: i32,
        flexible: bool,
        body: &[u8],
    ) -> Vec<u8> {
        let mut req = Vec::new();
        req.extend_from_slice(&api_key.to_be_bytes());
        req.extend_from_slice(&version.to_be_bytes());
        req.extend_from_slice(&correlation.to_be_bytes());
        string(&mut req, "pushcenter-test");
        if flexible {
            uvarint(&mut req, 0);
        }
        req.extend_from_slice(body);
        let mut framed = (req.len() as i32).to_be_bytes().to_vec();
        framed.extend_from_slice(&req);
        s.write_all(&framed).await.expect("write a request");
        let len = s.read_i32().await.expect("a response") as usize;
        let mut resp = vec![0; len];
        s.read_exact(&mut resp).await.expect("the response");
        assert_eq!(
            i32::from_be_bytes([resp[0], resp[1], resp[2], resp[3]]),
            correlation
        );
        // Flexible responses carry tagged fields after the correlation id (none here).
        resp.split_off(if flexible { 5 } else { 4 })
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as i16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn compact_bytes(out: &mut Vec<u8>, b: &[u8]) {
        uvarint(out, b.len() as u32 + 1);
        out.extend_from_slice(b);
    }

    fn uvarint(out: &mut Vec<u8>, mut v: u32) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// RFC 5802's Hi(): PBKDF2 with HMAC, one block (the hash's length).
    fn pbkdf2<D>(password: &str, salt: &[u8], iterations: i32) -> Vec<u8>
    where
        D: sha2::Digest + hmac::digest::core_api::BlockSizeUser + Clone,
    {
        let mac = |data: &[&[u8]]| {
            let mut m =
                <SimpleHmac<D> as Mac>::new_from_slice(password.as_bytes()).expect("any key");
            for d in data {
                m.update(d);
            }
            m.finalize().into_bytes().to_vec()
        };
        let mut u = mac(&[salt, &1u32.to_be_bytes()]);
        let mut out = u.clone();
        for _ in 1..iterations {
            u = mac(&[&u]);
            for (o, x) in out.iter_mut().zip(&u) {
                *o ^= x;
            }
        }
        out
    }
}
