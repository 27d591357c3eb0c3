//! The crate's one error type: a config that cannot work, or librdkafka's refusal.

use rdkafka::error::KafkaError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka config: {0}")]
    Config(String),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}
