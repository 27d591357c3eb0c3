//! The crate's one error type: a config that cannot work, or librdkafka's refusal.

use rdkafka::error::KafkaError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka config: {0}")]
    Config(String),
    #[error(transparent)]
    Kafka(KafkaError),
}

impl From<KafkaError> for Error {
    fn from(e: KafkaError) -> Error {
        match e {
            // librdkafka's message carries the value, which may be a password: name
            // the property and the reason only.
            KafkaError::ClientConfig(_, reason, key, _) => {
                Error::Config(format!("property {key:?}: {reason}"))
            }
            other => Error::Kafka(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_property_never_shows_its_value() {
        let refused = rdkafka::ClientConfig::new()
            .set("sasl.pasword", "TOPSECRET")
            .create::<rdkafka::producer::BaseProducer>()
            .err()
            .expect("an unknown property is refused");
        let e = Error::from(refused);
        let shown = e.to_string();
        assert!(!shown.contains("TOPSECRET"), "{shown}");
        assert!(shown.contains("sasl.pasword"), "{shown}");
    }
}
