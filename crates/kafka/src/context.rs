//! What every client of the node shares: the state `ready()` reads, and the client
//! context that turns librdkafka's logs, statistics and errors into the node's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use pushcenter_node::Stats;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::{debug, error, warn};

use crate::interest::Interest;
use crate::topic::PerTopic;

/// What the consumer thread and `ready()` share.
pub(crate) struct State {
    pub(crate) assigned: AtomicBool,
    pub(crate) reachable: AtomicBool,
    /// The history read at start reached the live edge: the node delivers live.
    pub(crate) caught_up: AtomicBool,
    pub(crate) stop: AtomicBool,
    /// The broker refused this node's credentials (a failed TLS handshake or SASL
    /// authentication): librdkafka's first word on it. librdkafka retries such a
    /// connection forever; the node decides what to do with it.
    pub(crate) refused: std::sync::Mutex<Option<String>>,
    /// Partitions of each topic as the reader last saw them (0: not known yet): where
    /// the producer puts targeted records and replies.
    pub(crate) partitions: PerTopic<AtomicU32>,
    /// The targeted partitions this node's users need.
    pub(crate) interest: std::sync::Mutex<Interest>,
    /// `interest` wants another set of partitions: the reader assigns again.
    pub(crate) interest_changed: AtomicBool,
}

impl State {
    pub(crate) fn interest(&self) -> std::sync::MutexGuard<'_, Interest> {
        self.interest.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for State {
    fn default() -> State {
        State {
            assigned: AtomicBool::new(false),
            reachable: AtomicBool::new(false),
            caught_up: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            refused: std::sync::Mutex::new(None),
            partitions: PerTopic::default(),
            interest: std::sync::Mutex::new(Interest::default()),
            interest_changed: AtomicBool::new(false),
        }
    }
}

/// Marks the broker unreachable as soon as librdkafka says all brokers are down; the
/// consumer's also keeps the node's lag per partition from librdkafka's statistics.
pub(crate) struct Ctx {
    pub(crate) state: Arc<State>,
    pub(crate) stats: Option<Arc<Stats>>,
}

impl ClientContext for Ctx {
    // librdkafka reports every failed reconnect at error level; the node logs the
    // state changes (unreachable, reachable) once and keeps the rest at debug.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                error!(fac, message, "librdkafka");
            }
            _ => debug!(fac, message, "librdkafka"),
        }
    }

    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        let Some(stats) = &self.stats else { return };
        let mut lag = stats.consumer_lag.lock().unwrap_or_else(|e| e.into_inner());
        lag.clear();
        for (topic, t) in &statistics.topics {
            // -1 is librdkafka's internal "unassigned" partition.
            for p in t
                .partitions
                .values()
                .filter(|p| p.partition >= 0 && p.hi_offset >= 0)
            {
                let read = if p.app_offset >= 0 {
                    p.app_offset
                } else {
                    p.next_offset
                };
                if read >= 0 {
                    lag.insert((topic.clone(), p.partition), (p.hi_offset - read).max(0));
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Authentication
                    | RDKafkaErrorCode::SSL
                    | RDKafkaErrorCode::SaslAuthenticationFailed
            )
        ) {
            let mut refused = self.state.refused.lock().unwrap_or_else(|e| e.into_inner());
            if refused.is_none() {
                error!(%reason, "kafka refused the node's credentials");
                *refused = Some(reason.to_string());
            }
        }
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown)
            && self.state.reachable.swap(false, Ordering::Relaxed)
        {
            warn!(%reason, "kafka unreachable");
        }
        debug!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for Ctx {}
