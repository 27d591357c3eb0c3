//! The registry on etcd. Nodes keep a key each under a lease
//! (`/pushcenter/<cluster>/nodes/<node_id>` → JSON [`NodeInfo`]); the registry
//! service watches the prefix and tells clients which node to connect to.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod error;
mod registrar;
mod service;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use error::{Error, Result};
pub use pushcenter_node::NodeInfo;
pub use registrar::EtcdRegistrar;
pub use service::router;

/// The `[etcd]` section of node and registry configs.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// `http://host:port` (or `https://host:port`) of each etcd member.
    pub endpoints: Vec<String>,
    /// Several clusters can share one etcd: keys live under `/pushcenter/<cluster>/`.
    pub cluster: String,
    /// Lease TTL of a node's key: a node that dies vanishes within this.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub ttl: Duration,
    /// How long to wait for etcd on connect and on each request.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// PEM bundle of the CAs that sign etcd's server certificate (`https://`
    /// endpoints); without it the system's roots are trusted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for an etcd started with `--client-cert-auth`;
    /// needs `key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// etcd user, for an etcd with authentication enabled; needs `password` or
    /// `password_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The user's password; never logged, `(redacted)` in `check-config`. Prefer
    /// `password_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A file holding the user's password (a trailing newline is dropped); read at
    /// every connect, so a rotated password is picked up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

impl Default for EtcdConfig {
    fn default() -> EtcdConfig {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            cluster: "default".into(),
            ttl: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            ca_file: None,
            cert_file: None,
            key_file: None,
            user: None,
            password: None,
            password_file: None,
        }
    }
}

/// Debug output ends up in logs: the password never does.
impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("cluster", &self.cluster)
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("password_file", &self.password_file)
            .finish()
    }
}

const REDACTED: &str = "(redacted)";

impl EtcdConfig {
    /// Rejects a section the registrar and the service cannot work with, and reads
    /// the files it names as a connect would.
    pub fn check(&self) -> Result<()> {
        if self.endpoints.is_empty() || self.endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(Error::Config(
                "etcd.endpoints must list at least one endpoint",
            ));
        }
        if self.cluster.is_empty() || self.cluster.contains('/') {
            return Err(Error::Config(
                "etcd.cluster must be non-empty and hold no '/'",
            ));
        }
        if self.ttl < Duration::from_secs(2) || self.timeout.is_zero() {
            return Err(Error::Config(
                "etcd.ttl must be at least 2s and etcd.timeout positive",
            ));
        }
        let https = self.endpoints.iter().filter(|e| is_https(e)).count();
        if https != 0 && https != self.endpoints.len() {
            return Err(Error::Config(
                "etcd.endpoints must be all https:// or all http://",
            ));
        }
        let tls_files = self.ca_file.is_some() || self.cert_file.is_some();
        if tls_files && https == 0 {
            return Err(Error::Config(
                "etcd.ca_file and etcd.cert_file need https:// endpoints",
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(Error::Config(
                "etcd.cert_file and etcd.key_file go together",
            ));
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err(Error::Config(
                "etcd.password and etcd.password_file: give one, not both",
            ));
        }
        let has_password = self.password.is_some() || self.password_file.is_some();
        if self.user.is_some() != has_password {
            return Err(Error::Config(
                "etcd.user needs etcd.password or etcd.password_file, and they need etcd.user",
            ));
        }
        if self.user.as_deref().is_some_and(str::is_empty) {
            return Err(Error::Config("etcd.user must not be empty"));
        }
        self.connect_options().map(|_| ())
    }

    pub fn nodes_prefix(&self) -> String {
        format!("/pushcenter/{}/nodes/", self.cluster)
    }

    pub fn node_key(&self, node_id: &str) -> String {
        format!("{}{node_id}", self.nodes_prefix())
    }

    /// The endpoints as one string, for log lines.
    pub(crate) fn endpoint_list(&self) -> String {
        self.endpoints.join(",")
    }

    /// Reads the CA, the client certificate and the password file: at every connect,
    /// so files replaced on disk (rotated certificates, passwords) are picked up.
    pub(crate) fn connect_options(&self) -> Result<ConnectOptions> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_timeout(self.timeout)
            .with_keep_alive(self.timeout, self.timeout);
        if self.endpoints.iter().any(|e| is_https(e)) {
            // etcd speaks gRPC: no need to wait for ALPN to say h2.
            let mut tls = TlsOptions::new().assume_http2(true);
            tls = match &self.ca_file {
                Some(p) => tls.ca_certificate(Certificate::from_pem(read_pem(
                    "ca_file",
                    p,
                    "CERTIFICATE",
                )?)),
                None => tls.with_native_roots(),
            };
            if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
                tls = tls.identity(Identity::from_pem(
                    read_pem("cert_file", cert, "CERTIFICATE")?,
                    read_pem("key_file", key, "PRIVATE KEY")?,
                ));
            }
            options = options.with_tls(tls);
        }
        if let Some(user) = &self.user {
            let password = match (&self.password, &self.password_file) {
                (Some(p), _) => p.clone(),
                (None, Some(path)) => read_password(path)?,
                (None, None) => String::new(),
            };
            // Tokens expire (`--auth-token-ttl`, JWT lifetimes): a call refused for an
            // expired token authenticates again and is retried once.
            options = options
                .with_user(user.clone(), password)
                .with_auto_token_refresh(true);
        }
        Ok(options)
    }
}

fn is_https(endpoint: &str) -> bool {
    endpoint.trim().starts_with("https://")
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::File {
        key,
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// A PEM file holding at least one `label` block (`-----BEGIN ...label-----`):
/// a swapped or truncated file is refused here rather than in a TLS handshake.
fn read_pem(key: &'static str, path: &Path, label: &str) -> Result<Vec<u8>> {
    let bytes = read_file(key, path)?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{label}-----")));
    if !found {
        return Err(Error::File {
            key,
            path: path.to_owned(),
            reason: format!("no PEM {label} in it"),
        });
    }
    Ok(bytes)
}

fn read_password(path: &Path) -> Result<String> {
    let bytes = read_file("password_file", path)?;
    let text = String::from_utf8(bytes).map_err(|_| Error::File {
        key: "password_file",
        path: path.to_owned(),
        reason: "not UTF-8".into(),
    })?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_the_bad_key() {
        assert!(EtcdConfig::default().check().is_ok());
        let cases = [
            (
                EtcdConfig {
                    endpoints: vec![" ".into()],
                    ..EtcdConfig::default()
                },
                "etcd.endpoints must list at least one endpoint",
            ),
            (
                EtcdConfig {
                    cluster: "a/b".into(),
                    ..EtcdConfig::default()
                },
                "etcd.cluster must be non-empty and hold no '/'",
            ),
            (
                EtcdConfig {
                    ttl: Duration::from_secs(1),
                    ..EtcdConfig::default()
                },
                "etcd.ttl must be at least 2s and etcd.timeout positive",
            ),
        ];
        for (cfg, message) in cases {
            let e = cfg.check().unwrap_err();
            assert!(matches!(e, Error::Config(_)), "{e:?}");
            assert_eq!(e.to_string(), message);
        }
    }
    /// A file in the temp dir, removed when dropped.
    struct Temp(PathBuf);

    impl Temp {
        fn new(name: &str, text: &str) -> Temp {
            let p = std::env::temp_dir()
                .join(format!("pushcenter-registry-{}-{name}", std::process::id()));
            std::fs::write(&p, text).unwrap();
            Temp(p)
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n";

    fn https() -> EtcdConfig {
        EtcdConfig {
            endpoints: vec!["https://127.0.0.1:2379".into()],
            ..EtcdConfig::default()
        }
    }

    #[test]
    fn tls_and_user_settings_are_checked_together() {
        let ca = Temp::new("ca.pem", CERT);
        let key = Temp::new("key.pem", KEY);
        // https with the system's roots, with a CA, with a client certificate.
        assert!(https().check().is_ok());
        let mtls = EtcdConfig {
            ca_file: Some(ca.0.clone()),
            cert_file: Some(ca.0.clone()),
            key_file: Some(key.0.clone()),
            ..https()
        };
        mtls.check().unwrap();
        let cases = [
            (
                EtcdConfig {
                    ca_file: Some(ca.0.clone()),
                    ..EtcdConfig::default()
                },
                "etcd.ca_file and etcd.cert_file need https:// endpoints",
            ),
            (
                EtcdConfig {
                    endpoints: vec!["https://a:2379".into(), "http://b:2379".into()],
                    ..EtcdConfig::default()
                },
                "etcd.endpoints must be all https:// or all http://",
            ),
            (
                EtcdConfig {
                    cert_file: Some(ca.0.clone()),
                    ..https()
                },
                "etcd.cert_file and etcd.key_file go together",
            ),
            (
                EtcdConfig {
                    user: Some("u".into()),
                    ..EtcdConfig::default()
                },
                "etcd.user needs etcd.password or etcd.password_file, and they need etcd.user",
            ),
            (
                EtcdConfig {
                    password: Some("p".into()),
                    ..EtcdConfig::default()
                },
                "etcd.user needs etcd.password or etcd.password_file, and they need etcd.user",
            ),
            (
                EtcdConfig {
                    user: Some("u".into()),
                    password: Some("p".into()),
                    password_file: Some(key.0.clone()),
                    ..EtcdConfig::default()
                },
                "etcd.password and etcd.password_file: give one, not both",
            ),
        ];
        for (cfg, message) in cases {
            assert_eq!(cfg.check().unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn files_that_cannot_be_used_name_the_key_and_the_path() {
        let key = Temp::new("key2.pem", KEY);
        let missing = std::env::temp_dir().join("pushcenter-registry-no-such-file.pem");
        let e = EtcdConfig {
            ca_file: Some(missing.clone()),
            ..https()
        }
        .check()
        .unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("etcd.ca_file: "), "{text}");
        assert!(text.contains(&missing.display().to_string()), "{text}");
        // A key where the certificate belongs.
        let e = EtcdConfig {
            cert_file: Some(key.0.clone()),
            key_file: Some(key.0.clone()),
            ..https()
        }
        .check()
        .unwrap_err();
        assert!(
            e.to_string().starts_with("etcd.cert_file: ")
                && e.to_string().contains("no PEM CERTIFICATE"),
            "{e}"
        );
        let e = EtcdConfig {
            user: Some("u".into()),
            password_file: Some(missing.clone()),
            ..EtcdConfig::default()
        }
        .check()
        .unwrap_err();
        assert!(e.to_string().starts_with("etcd.password_file: "), "{e}");
    }

    #[test]
    fn the_password_file_loses_its_trailing_newline() {
        let f = Temp::new("password", "s3cret\n");
        assert_eq!(read_password(&f.0).unwrap(), "s3cret");
        let f = Temp::new("password-crlf", "s3 cret\r\n");
        assert_eq!(read_password(&f.0).unwrap(), "s3 cret");
    }

    #[test]
    fn the_password_is_never_shown() {
        let cfg = EtcdConfig {
            user: Some("pushcenter".into()),
            password: Some("hunter2".into()),
            ..EtcdConfig::default()
        };
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }
}
