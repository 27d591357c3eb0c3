//! The handle the node holds: the config, the producer, and the state the consumer
//! thread shares with `ready()`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;

use crate::config::{self, KafkaConfig};
use crate::context::{Ctx, State};
use crate::error::Error;
use crate::producer::Producer;

/// The node's bus on Kafka; dropping it stops the consumer thread.
pub struct KafkaBus {
    pub(crate) cfg: KafkaConfig,
    pub(crate) node_id: String,
    pub(crate) publish_timeout: Duration,
    pub(crate) producer: Producer,
    pub(crate) state: Arc<State>,
    pub(crate) history: Duration,
}

impl KafkaBus {
    /// Builds the producer; nothing waits for the broker here (a node starts, and
    /// serves its clients, while Kafka is down).
    pub fn new(
        cfg: KafkaConfig,
        node_id: &str,
        publish_timeout: Duration,
    ) -> Result<KafkaBus, Error> {
        KafkaBus::check(&cfg)?;
        let cfg = crate::config::read_property_files(cfg)?;
        let state = Arc::new(State::default());
        let producer = Producer::new(&cfg, node_id, publish_timeout, state.clone())?;
        Ok(KafkaBus {
            cfg,
            node_id: node_id.to_string(),
            publish_timeout,
            producer,
            state,
            history: Duration::ZERO,
        })
    }

    /// At start, reads the messages of the last `history` (the node's replay window)
    /// into the window before going live, so clients that move here after another
    /// node went away resume from the window, not from the log.
    pub fn with_history(mut self, history: Duration) -> KafkaBus {
        self.history = history;
        self
    }

    /// Why the broker refused this node's credentials, when it did: a failed TLS
    /// handshake or SASL authentication, naming the brokers, the security protocol
    /// and the SASL mechanism with librdkafka's reason.
    pub fn refused(&self) -> Option<String> {
        let reason = self
            .state
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let prop = |k: &str| {
            self.cfg
                .properties
                .get(k)
                .or_else(|| self.cfg.consumer.get(k))
                .map_or("", String::as_str)
        };
        let protocol = match prop("security.protocol") {
            "" => "PLAINTEXT",
            p => p,
        };
        let mechanism = match prop("sasl.mechanism") {
            "" => String::new(),
            m => format!(", sasl.mechanism {m}"),
        };
        Some(format!(
            "kafka at {} refused this node's credentials (security.protocol {protocol}{mechanism}): {reason}",
            self.cfg.brokers
        ))
    }

    /// Checks values that cannot work (librdkafka checks its own properties).
    pub fn check(cfg: &KafkaConfig) -> Result<(), Error> {
        config::check(cfg)
    }

    /// Lets librdkafka check the consumer properties (the producer's were checked by
    /// [`KafkaBus::new`]) without connecting anywhere.
    pub fn check_consumer(&self) -> Result<(), Error> {
        let _: BaseConsumer<Ctx> = self.consumer_config().create_with_context(Ctx {
            state: self.state.clone(),
            stats: None,
        })?;
        Ok(())
    }

    /// The properties of the node's consumers: the live reader, its admin client and
    /// the log reads for resumes.
    pub(crate) fn consumer_config(&self) -> ClientConfig {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &self.cfg.brokers)
            .set("client.id", format!("pushcenter-{}", self.node_id))
            .set(
                "group.id",
                format!("{}{}", self.cfg.group_prefix, self.node_id),
            )
            // A broker that lost its log (offsets went back): read the new log whole.
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // Apache Kafka answers a fetch as soon as data arrives: the wait bounds only
            // the idle fetch rate (10/s per broker) and how soon a newly assigned
            // partition joins the fetch. Tansu answers only when the wait ends: its
            // users set 5 (docs/kafka.md).
            .set("fetch.wait.max.ms", "100")
            .set("reconnect.backoff.max.ms", "1000");
        for (k, v) in self.cfg.properties.iter().chain(&self.cfg.consumer) {
            cc.set(k, v);
        }
        cc
    }
}

impl Drop for KafkaBus {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
    }
}
