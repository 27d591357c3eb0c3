//! The `[kafka]` section of a node's config and the checks librdkafka does not do.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The `[kafka]` section of a node's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: `host:port[,host:port...]`.
    pub brokers: String,
    /// Where backends and nodes write messages for clients.
    pub messages_topic: String,
    /// Where nodes write clients' replies for request/reply.
    pub replies_topic: String,
    /// Consumer group of a node: this prefix and the node id.
    pub group_prefix: String,
    /// Partitions and replication factor of topics the node creates when missing.
    pub partitions: i32,
    pub replication_factor: i32,
    /// How often the consumer checks the broker: reachability, topics, new partitions.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// librdkafka properties for every client of the node (producer, consumers, log
    /// reads): security (`security.protocol`, `sasl.*`, `ssl.*`) and anything else
    /// librdkafka supports. `producer` and `consumer` override them for one kind.
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties passed through to the producer and the consumer.
    pub producer: BTreeMap<String, String>,
    pub consumer: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> KafkaConfig {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            messages_topic: "pushcenter.messages".into(),
            replies_topic: "pushcenter.replies".into(),
            group_prefix: "pushcenter.".into(),
            partitions: 6,
            replication_factor: 1,
            check_interval: Duration::from_secs(1),
            properties: BTreeMap::new(),
            producer: BTreeMap::new(),
            consumer: BTreeMap::new(),
        }
    }
}

/// Checks values that cannot work (librdkafka checks its own properties).
pub(crate) fn check(cfg: &KafkaConfig) -> Result<(), Error> {
    if cfg.brokers.trim().is_empty() {
        return Err(Error::Config("brokers must not be empty".into()));
    }
    if cfg.partitions < 1 || cfg.replication_factor < 1 || cfg.check_interval.is_zero() {
        return Err(Error::Config(
            "partitions, replication_factor and check_interval must be positive".into(),
        ));
    }
    if cfg.messages_topic.is_empty() || cfg.replies_topic.is_empty() {
        return Err(Error::Config("topic names must not be empty".into()));
    }
    // The adapter owns these: the brokers have their key, and a node's group must be its
    // own (every node reads every record).
    for (key, instead) in [
        ("bootstrap.servers", "brokers"),
        ("group.id", "group_prefix"),
    ] {
        let set = [&cfg.properties, &cfg.producer, &cfg.consumer]
            .iter()
            .any(|m| m.contains_key(key));
        if set {
            return Err(Error::Config(format!(
                "{key} cannot be passed through: set `{instead}` in [kafka]"
            )));
        }
    }
    Ok(())
}

impl KafkaConfig {
    /// A copy to show (`check-config`): every secret property's value replaced.
    pub fn redacted(&self) -> KafkaConfig {
        let mut shown = self.clone();
        for map in [
            &mut shown.properties,
            &mut shown.producer,
            &mut shown.consumer,
        ] {
            for (k, v) in map.iter_mut() {
                if is_secret_property(k) {
                    *v = "(redacted)".into();
                }
            }
        }
        shown
    }
}

/// Whether a librdkafka property holds a secret (a password, a private key, a client
/// secret): printed redacted, never logged.
pub(crate) fn is_secret_property(key: &str) -> bool {
    key.contains("password") || key.contains("secret") || key.ends_with(".key.pem")
}

/// How long one poll of a consumer waits: the live reader's and a log read's.
pub(crate) const POLL: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_properties_are_refused_and_secrets_known() {
        let mut cfg = KafkaConfig::default();
        cfg.properties
            .insert("security.protocol".into(), "SASL_PLAINTEXT".into());
        assert!(check(&cfg).is_ok());
        cfg.consumer.insert("group.id".into(), "shared".into());
        let e = check(&cfg).expect_err("group.id").to_string();
        assert!(e.contains("group_prefix"), "{e}");
        assert!(is_secret_property("sasl.password"));
        assert!(is_secret_property("ssl.key.password"));
        assert!(is_secret_property("ssl.key.pem"));
        assert!(is_secret_property("sasl.oauthbearer.client.secret"));
        assert!(!is_secret_property("sasl.username"));
    }
}
