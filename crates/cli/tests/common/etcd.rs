//! A real etcd (Debian's etcd-server) on free loopback ports, data in a temp dir:
//! plain, over TLS with the test certificates (`tests/fixtures/etcd-*`), or with
//! authentication enabled.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::free_port;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The root user of an etcd started by [`Etcd::start_with_auth`].
pub const ROOT_PASSWORD: &str = "root-test-password";
/// The user nodes and registries connect as, with read-write on `/pushcenter/`.
pub const USER: &str = "pushcenter";
pub const PASSWORD: &str = "pushcenter-test-password";

pub struct Etcd {
    child: Option<Child>,
    pub client: SocketAddr,
    peer: SocketAddr,
    dir: PathBuf,
    /// `https` when started with TLS.
    scheme: &'static str,
    /// Flags beyond the addresses (TLS files, auth token TTL).
    flags: Vec<String>,
}

/// A file of `tests/fixtures/`.
pub fn fixture(name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

impl Etcd {
    pub fn start() -> Etcd {
        Etcd::start_with("http", Vec::new())
    }

    /// etcd on https with the test server certificate (`etcd-test-server-*.pem`,
    /// signed by `etcd-test-ca.pem`); with `client_cert_auth` it also requires a
    /// client certificate signed by that CA (`--client-cert-auth`).
    pub fn start_tls(client_cert_auth: bool) -> Etcd {
        let mut flags = vec![
            format!("--cert-file={}", fixture("etcd-test-server-cert.pem")),
            format!("--key-file={}", fixture("etcd-test-server-key.pem")),
        ];
        if client_cert_auth {
            flags.push("--client-cert-auth".into());
            flags.push(format!("--trusted-ca-file={}", fixture("etcd-test-ca.pem")));
        }
        Etcd::start_with("https", flags)
    }

    /// etcd with authentication enabled: users `root` ([`ROOT_PASSWORD`]) and
    /// [`USER`] ([`PASSWORD`], read-write on `/pushcenter/`); simple tokens expire
    /// after `token_ttl` unused.
    pub fn start_with_auth(token_ttl: Duration) -> Etcd {
        let flags = vec![format!("--auth-token-ttl={}", token_ttl.as_secs().max(1))];
        let e = Etcd::start_with("http", flags);
        let calls = [
            (
                "/v3/auth/user/add",
                format!(r#"{{"name":"root","password":"{ROOT_PASSWORD}"}}"#),
            ),
            ("/v3/auth/role/add", r#"{"name":"root"}"#.into()),
            (
                "/v3/auth/user/grant",
                r#"{"user":"root","role":"root"}"#.into(),
            ),
            (
                "/v3/auth/user/add",
                format!(r#"{{"name":"{USER}","password":"{PASSWORD}"}}"#),
            ),
            ("/v3/auth/role/add", r#"{"name":"pushcenter"}"#.into()),
            (
                "/v3/auth/role/grant",
                format!(
                    r#"{{"name":"pushcenter","perm":{{"permType":"READWRITE","key":"{}","range_end":"{}"}}}}"#,
                    base64("/pushcenter/"),
                    base64("/pushcenter0")
                ),
            ),
            (
                "/v3/auth/user/grant",
                format!(r#"{{"user":"{USER}","role":"pushcenter"}}"#),
            ),
            ("/v3/auth/enable", "{}".into()),
        ];
        for (path, body) in calls {
            let (status, answer) = e.gateway(path, None, &body);
            assert_eq!(status, 200, "{path}: {answer}");
        }
        e
    }

    fn start_with(scheme: &'static str, flags: Vec<String>) -> Etcd {
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
            scheme,
            flags,
        };
        e.restart();
        e
    }

    /// `http://127.0.0.1:port`, or `https://127.0.0.1:port` (an address the test
    /// server certificate names).
    pub fn endpoint(&self) -> String {
        format!("{}://{}", self.scheme, self.client)
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
            .args(&self.flags)
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

    /// A call to etcd's JSON gateway (`/v3/...`, plain http only), with a token from
    /// `/v3/auth/authenticate` when given: (status, body).
    pub fn gateway(&self, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
        let auth = token.map_or(String::new(), |t| format!("authorization: {t}\r\n"));
        let req = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.client,
            body.len()
        );
        // etcd may answer before its server is ready for requests: retry a little.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut text = String::new();
            let sent = TcpStream::connect(self.client).and_then(|mut s| {
                s.write_all(req.as_bytes())?;
                s.read_to_string(&mut text)
            });
            let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok());
            match (sent, status) {
                (Ok(_), Some(status)) if status != 503 || Instant::now() > deadline => {
                    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
                    return (status, body.to_string());
                }
                _ => {
                    assert!(Instant::now() < deadline, "etcd gateway {path}: {text}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// A fresh root token (tokens expire: take one per call).
    pub fn root_token(&self) -> String {
        let body = format!(r#"{{"name":"root","password":"{ROOT_PASSWORD}"}}"#);
        let (status, answer) = self.gateway("/v3/auth/authenticate", None, &body);
        assert_eq!(status, 200, "{answer}");
        let v: serde_json::Value = serde_json::from_str(&answer).expect("authenticate json");
        v["token"].as_str().expect("token").to_string()
    }

    /// The `key`'s entry as the gateway shows it (`lease`, `create_revision`,
    /// `mod_revision`, `value` in base64), read as root; None when absent.
    pub fn entry(&self, key: &str) -> Option<serde_json::Value> {
        let token = self.root_token();
        let body = format!(r#"{{"key":"{}"}}"#, base64(key));
        let (status, answer) = self.gateway("/v3/kv/range", Some(&token), &body);
        assert_eq!(status, 200, "{answer}");
        let v: serde_json::Value = serde_json::from_str(&answer).expect("range json");
        v["kvs"].get(0).cloned()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Standard base64 with padding: the gateway's JSON carries keys as bytes.
pub fn base64(text: &str) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
