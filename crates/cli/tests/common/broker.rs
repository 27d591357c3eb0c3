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
    /// Tansu's `--storage-engine`.
    storage: String,
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
            storage: "memory://tansu/".into(),
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
                &self.storage,
            ])
            .args(self.authenticating.then_some("--authentication"))
            .env("RUST_LOG", "warn")
            .current_dir(std::env::temp_dir())
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

/// `TANSU` when set, else the one `make test` installs in cargo's bin directory (built
/// with the storage engines the tests use), else `tansu` on PATH.
fn tansu() -> String {
    if let Ok(t) = std::env::var("TANSU") {
        return t;
    }
    let home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    let installed = format!("{home}/bin/tansu");
    if std::path::Path::new(&installed).is_file() {
        return installed;
    }
    "tansu".into()
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
    /// A broker that requires SASL (`tansu broker --authentication`) and knows these
    /// SCRAM users. The pinned Tansu offers only SCRAM-SHA-256/512 (and an OAUTHBEARER
    /// that refuses every token), and takes AlterUserScramCredentials only from an
    /// authenticated connection: the users are created first, on a broker without
    /// `--authentication` over the same SQLite storage, which then restarts requiring it.
    pub fn start_authenticating(users: &[(&str, &str, Scram)]) -> Broker {
        let addr = free_port();
        // Tansu resolves sqlite:// paths against its working directory (the temp dir).
        let db = format!("pushcenter-tansu-{}-{}.db", std::process::id(), addr.port());
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(std::env::temp_dir().join(format!("{db}{suffix}")));
        }
        let mut b = Broker {
            child: None,
            addr,
            advertised: addr,
            authenticating: false,
            storage: format!("sqlite://{db}"),
        };
        b.restart();
        for (user, password, mechanism) in users {
            let mechanism = match mechanism {
                Scram::Sha256 => "scram256",
                Scram::Sha512 => "scram512",
            };
            let out = Command::new(tansu())
                .args(["user", "create", "--broker", &format!("tcp://{addr}")])
                .args(["--mechanism", mechanism, user, password])
                .output()
                .expect("run tansu user create");
            assert!(
                out.status.success(),
                "tansu user create {user}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        b.authenticating = true;
        b.restart();
        b
    }
}
