//! A real etcd (Debian's etcd-server) on free loopback ports, data in a temp dir.

use std::net::{SocketAddr, TcpStream};

use super::free_port;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Etcd {
    child: Option<Child>,
    pub client: SocketAddr,
    peer: SocketAddr,
    dir: PathBuf,
}

impl Etcd {
    pub fn start() -> Etcd {
        let client = free_port();
        let dir = std::env::temp_dir().join(format!(
            "pushcenter-etcd-{}-{}",
            std::process::id(),
            client.port()
        ));
        let mut e = Etcd {
            child: None,
            client,
            peer: free_port(),
            dir,
        };
        e.restart();
        e
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.client)
    }

    /// Starts etcd (again) with the same data directory.
    pub fn restart(&mut self) {
        self.stop();
        let client = self.endpoint();
        let peer = format!("http://{}", self.peer);
        let child = Command::new("etcd")
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.dir.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd (make test installs etcd-server): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(self.client).is_err() {
            assert!(Instant::now() < deadline, "etcd did not listen");
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

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
