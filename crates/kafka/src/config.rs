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
    Ok(())
}

/// How long one poll of a consumer waits: the live reader's and a log read's.
pub(crate) const POLL: Duration = Duration::from_millis(100);
