//! The `[kafka]` section of a node's config and the checks librdkafka does not do.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The `[kafka]` section of a node's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: `host:port[,host:port...]`.
    pub brokers: String,
    /// Where backends and nodes write broadcast messages for clients (every node reads
    /// every partition). Targeted records written here are still delivered.
    pub messages_topic: String,
    /// Where nodes (and backends, keyed by user) write targeted records: user and
    /// session pushes, requests. A node reads only the partitions of its users.
    pub targeted_topic: String,
    /// Where nodes write clients' replies for request/reply.
    pub replies_topic: String,
    /// Consumer group of a node: this prefix and the node id.
    pub group_prefix: String,
    /// Partitions of the messages topic when the node creates it.
    pub partitions: i32,
    /// Partitions of the targeted topic when the node creates it: at least 8 per node
    /// keeps every node's share within an eighth of the others'.
    pub targeted_partitions: i32,
    /// Partitions of the replies topic when the node creates it: each node reads one
    /// (the number its id ends with, modulo these), so at least as many as nodes.
    pub replies_partitions: i32,
    /// Replication factor of the topics the node creates.
    pub replication_factor: i32,
    /// Threads that parse and route the records the consumer reads (each partition on
    /// one of them, so its order holds): 1 routes on the consumer's own thread (about
    /// 4 µs a record on a 2.6 GHz core); more when that thread is the limit.
    pub routing_threads: usize,
    /// How often the consumer checks the broker: reachability, topics, new partitions.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub check_interval: Duration,
    /// librdkafka properties for every client of the node (producer, consumers, log
    /// reads): security (`security.protocol`, `sasl.*`, `ssl.*`) and anything else
    /// librdkafka supports. `producer` and `consumer` override them for one kind.
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the producer only.
    pub producer: BTreeMap<String, String>,
    /// librdkafka properties for the consumers only (the live reader and log reads).
    pub consumer: BTreeMap<String, String>,
    /// librdkafka properties for every client whose value is a file's content (a
    /// trailing newline dropped): secrets out of the config file, e.g.
    /// `"sasl.password" = "/run/secrets/kafka-password"`.
    pub property_files: BTreeMap<String, PathBuf>,
}

impl Default for KafkaConfig {
    fn default() -> KafkaConfig {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            messages_topic: "pushcenter.messages".into(),
            targeted_topic: "pushcenter.targeted".into(),
            replies_topic: "pushcenter.replies".into(),
            group_prefix: "pushcenter.".into(),
            partitions: 6,
            targeted_partitions: 64,
            replies_partitions: 16,
            replication_factor: 1,
            routing_threads: 1,
            check_interval: Duration::from_secs(1),
            properties: BTreeMap::new(),
            producer: BTreeMap::new(),
            consumer: BTreeMap::new(),
            property_files: BTreeMap::new(),
        }
    }
}

/// Checks values that cannot work (librdkafka checks its own properties).
pub(crate) fn check(cfg: &KafkaConfig) -> Result<(), Error> {
    if cfg.routing_threads == 0 || cfg.routing_threads > 64 {
        return Err(Error::Config("routing_threads must be 1 to 64".into()));
    }
    if cfg.brokers.trim().is_empty() {
        return Err(Error::Config("brokers must not be empty".into()));
    }
    if cfg.partitions < 1
        || cfg.targeted_partitions < 1
        || cfg.replies_partitions < 1
        || cfg.replication_factor < 1
        || cfg.check_interval.is_zero()
    {
        return Err(Error::Config(
            "partitions, targeted_partitions, replies_partitions, replication_factor and \
             check_interval must be positive"
                .into(),
        ));
    }
    let names = [&cfg.messages_topic, &cfg.targeted_topic, &cfg.replies_topic];
    if names.iter().any(|n| n.is_empty()) {
        return Err(Error::Config("topic names must not be empty".into()));
    }
    if names[0] == names[1] || names[0] == names[2] || names[1] == names[2] {
        return Err(Error::Config(
            "messages_topic, targeted_topic and replies_topic must differ".into(),
        ));
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

/// `property_files` read into `properties` (a property given both ways is an error).
pub(crate) fn read_property_files(mut cfg: KafkaConfig) -> Result<KafkaConfig, Error> {
    for (key, path) in std::mem::take(&mut cfg.property_files) {
        if cfg.properties.contains_key(&key) {
            return Err(Error::Config(format!(
                "{key} is in both properties and property_files"
            )));
        }
        let mut value = std::fs::read_to_string(&path).map_err(|e| {
            Error::Config(format!("property_files.{key:?}: {}: {e}", path.display()))
        })?;
        while value.ends_with('\n') || value.ends_with('\r') {
            value.pop();
        }
        cfg.properties.insert(key, value);
    }
    Ok(cfg)
}

/// How long one poll of a consumer waits: the live reader's and a log read's.
pub(crate) const POLL: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_properties_are_refused() {
        let mut cfg = KafkaConfig::default();
        cfg.properties
            .insert("security.protocol".into(), "SASL_PLAINTEXT".into());
        assert!(check(&cfg).is_ok());
        cfg.consumer.insert("group.id".into(), "shared".into());
        let e = check(&cfg).expect_err("group.id").to_string();
        assert!(e.contains("group_prefix"), "{e}");
    }
}
