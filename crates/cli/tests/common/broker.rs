//! A real Kafka-protocol broker for tests: the Tansu binary (`make test` installs it)
//! on a free loopback port, in-memory storage, stopped when dropped.

use std::net::{SocketAddr, TcpStream};

use super::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    child: Option<Child>,
    pub addr: SocketAddr,
}

impl Broker {
    pub fn start() -> Broker {
        let mut b = Broker {
            child: None,
            addr: free_port(),
        };
        b.restart();
        b
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        self.addr.to_string()
    }

    /// Starts the broker (again) on the same port, with empty storage.
    pub fn restart(&mut self) {
        self.stop();
        wait_bindable(self.addr);
        let url = format!("tcp://{}", self.addr);
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
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
