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

use std::time::Duration;

use etcd_client::ConnectOptions;
use serde::{Deserialize, Serialize};

pub use error::{Error, Result};
pub use pushcenter_node::NodeInfo;
pub use registrar::EtcdRegistrar;
pub use service::router;

/// The `[etcd]` section of node and registry configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// `http://host:port` of each etcd member.
    pub endpoints: Vec<String>,
    /// Several clusters can share one etcd: keys live under `/pushcenter/<cluster>/`.
    pub cluster: String,
    /// Lease TTL of a node's key: a node that dies vanishes within this.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long to wait for etcd on connect and on each request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> EtcdConfig {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            cluster: "default".into(),
            ttl: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
        }
    }
}

impl EtcdConfig {
    /// Rejects a section the registrar and the service cannot work with.
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
        Ok(())
    }

    pub fn nodes_prefix(&self) -> String {
        format!("/pushcenter/{}/nodes/", self.cluster)
    }

    pub fn node_key(&self, node_id: &str) -> String {
        format!("{}{node_id}", self.nodes_prefix())
    }

    fn connect_options(&self) -> ConnectOptions {
        ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_timeout(self.timeout)
            .with_keep_alive(self.timeout, self.timeout)
    }
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
}
