//! The node's one producer: records for clients and clients' replies, each resolved
//! with where it landed.

use std::sync::Arc;
use std::time::Duration;

use pushcenter_node::{BoxFuture, BusError, Record, Reply};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use pushcenter_node::placement::{partition_of, reply_partition, target_key};

use crate::config::KafkaConfig;
use crate::context::{Ctx, State};
use crate::record::message_id;
use crate::topic::{PerTopic, Topic};

pub(crate) struct Producer {
    producer: FutureProducer<Ctx>,
    /// How long a record may wait for the broker's acknowledgement.
    timeout: Duration,
    topics: PerTopic<String>,
    /// The partition counts the reader saw.
    state: Arc<State>,
}

impl Producer {
    /// Nothing waits for the broker here: librdkafka connects in the background.
    pub(crate) fn new(
        cfg: &KafkaConfig,
        node_id: &str,
        timeout: Duration,
        state: Arc<State>,
    ) -> Result<Producer, KafkaError> {
        let mut pc = ClientConfig::new();
        pc.set("bootstrap.servers", &cfg.brokers)
            .set("client.id", format!("pushcenter-{node_id}"))
            .set("message.timeout.ms", millis(timeout))
            .set("linger.ms", "1")
            .set("reconnect.backoff.max.ms", "1000");
        for (k, v) in cfg.properties.iter().chain(&cfg.producer) {
            pc.set(k, v);
        }
        let producer = pc.create_with_context(Ctx {
            state: state.clone(),
            stats: None,
        })?;
        let topics = PerTopic {
            messages: cfg.messages_topic.clone(),
            targeted: cfg.targeted_topic.clone(),
            replies: cfg.replies_topic.clone(),
        };
        Ok(Producer {
            producer,
            timeout,
            topics,
            state,
        })
    }

    /// Partitions of `topic` as the reader last saw them.
    fn partitions(&self, topic: Topic) -> Result<u32, BusError> {
        match self.state.partitions[topic].load(std::sync::atomic::Ordering::Relaxed) {
            0 => Err(BusError::Unavailable(format!(
                "partitions of {} not known yet",
                self.topics[topic]
            ))),
            n => Ok(n),
        }
    }

    /// Writes a record for clients: a broadcast to the messages topic, a targeted one
    /// to the targeted topic's partition of its user (or its session's node), keyed by
    /// it. Resolves with its message id.
    pub(crate) fn publish(&self, record: Record) -> BoxFuture<Result<String, BusError>> {
        let mut headers = Vec::with_capacity(record.headers.len() + 3);
        headers.push(("destination", record.destination.as_str()));
        if let Some(u) = &record.user {
            headers.push(("user", u));
        }
        if let Some(s) = &record.session {
            headers.push(("session", s));
        }
        for (k, v) in &record.headers {
            headers.push((k, v));
        }
        let (topic, key, partition) =
            match target_key(record.user.as_deref(), record.session.as_deref()) {
                Some(target) => match self.partitions(Topic::Targeted) {
                    Ok(n) => (Topic::Targeted, target, Some(partition_of(target, n))),
                    Err(e) => return Box::pin(std::future::ready(Err(e))),
                },
                None => (
                    Topic::Messages,
                    record.key.as_deref().unwrap_or(&record.destination),
                    None,
                ),
            };
        let sent = self.produce(&self.topics[topic], key, partition, &headers, &record.body);
        Box::pin(async move { sent.await.map(|(p, o)| message_id(topic, p, o)) })
    }

    /// Writes a client's reply to the replies topic: to the waiting node's partition, or
    /// when the waiting node is not known (a callback whose token names none), to every
    /// partition, so each node sees it once.
    pub(crate) fn reply(&self, reply: Reply) -> BoxFuture<Result<(), BusError>> {
        let mut headers = Vec::with_capacity(reply.headers.len() + 7);
        headers.push(("correlation-id", reply.correlation_id.as_str()));
        if let Some(n) = &reply.node {
            headers.push(("reply-node", n));
        }
        // Always written: the first of a name wins when read, and these come first.
        headers.push(("reply-kind", reply.kind.as_str()));
        if let Some(a) = &reply.answerer {
            headers.push(("reply-session", &a.session));
            if let Some(u) = &a.user {
                headers.push(("reply-user", u));
            }
        }
        if let Some((node, id)) = &reply.confirm {
            headers.push(("confirm-node", node));
            headers.push(("confirm-id", id));
        }
        for (k, v) in &reply.headers {
            headers.push((k, v));
        }
        let n = match self.partitions(Topic::Replies) {
            Ok(n) => n,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let partitions: Vec<u32> = match &reply.node {
            Some(node) => vec![reply_partition(node, n)],
            None => (0..n).collect(),
        };
        let topic = &self.topics[Topic::Replies];
        let sent: Vec<_> = partitions
            .into_iter()
            .map(|p| self.produce(topic, &reply.correlation_id, Some(p), &headers, &reply.body))
            .collect();
        Box::pin(async move {
            for s in sent {
                s.await?;
            }
            Ok(())
        })
    }

    /// Produces one record (to `partition`, or where the key hashes); resolves with its
    /// (partition, offset).
    fn produce(
        &self,
        topic: &str,
        key: &str,
        partition: Option<u32>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> impl std::future::Future<Output = Result<(i32, i64), BusError>> + Send + 'static {
        let mut hs = OwnedHeaders::new_with_capacity(headers.len());
        for (key, value) in headers {
            hs = hs.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut fr = FutureRecord::to(topic).key(key).payload(body).headers(hs);
        if let Some(p) = partition.and_then(|p| i32::try_from(p).ok()) {
            fr = fr.partition(p);
        }
        // `send_result` enqueues now (so the record borrows end here).
        let queued = self.producer.send_result(fr).map_err(|(e, _)| e);
        let timeout = self.timeout;
        async move {
            let result = match queued {
                Ok(delivery) => match tokio::time::timeout(timeout, delivery).await {
                    Ok(Ok(Ok(d))) => return Ok((d.partition, d.offset)),
                    Ok(Ok(Err((e, _)))) => e,
                    Ok(Err(_canceled)) => {
                        return Err(BusError::Unavailable("producer closed".into()));
                    }
                    Err(_) => return Err(BusError::Unavailable("timed out".into())),
                },
                Err(e) => e,
            };
            Err(match result.rdkafka_error_code() {
                Some(
                    RDKafkaErrorCode::MessageSizeTooLarge
                    | RDKafkaErrorCode::InvalidRecord
                    | RDKafkaErrorCode::InvalidMessage,
                ) => BusError::Rejected(result.to_string()),
                _ => BusError::Unavailable(result.to_string()),
            })
        }
    }
}

fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}
