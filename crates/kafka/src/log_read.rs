//! Reads a range of the messages or targeted log back for a client's resume that the
//! node's replay window no longer holds.

use std::time::{Duration, Instant};

use pushcenter_node::{BoxFuture, BusError, Delivery};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use tracing::debug;

use crate::bus::KafkaBus;
use crate::config::POLL;
use crate::record::delivery_from;
use crate::topic::Topic;

/// Most records one resume may read back from the log; more is answered as lost.
const MAX_READ: i64 = 100_000;

/// `from..=to` of the messages or targeted partition `stream` names; `None` when the
/// log no longer holds all of it (or `stream` is no partition).
pub(crate) fn read(
    bus: &KafkaBus,
    stream: &str,
    from: i64,
    to: i64,
) -> BoxFuture<Result<Option<Vec<Delivery>>, BusError>> {
    let Some((topic, partition)) = Topic::of_stream(stream) else {
        return Box::pin(std::future::ready(Ok(None)));
    };
    let mut cc = bus.consumer_config();
    // Its own group, never committed: the node's offsets stay the reader's.
    cc.set(
        "group.id",
        format!("{}{}.replay", bus.cfg.group_prefix, bus.node_id),
    )
    .set("enable.auto.commit", "false");
    let name = topic.name(&bus.cfg).to_owned();
    let timeout = bus.publish_timeout;
    Box::pin(async move {
        tokio::task::spawn_blocking(move || {
            read_range(&cc, (topic, &name), partition, from, to, timeout)
        })
        .await
        .map_err(|e| BusError::Unavailable(e.to_string()))?
    })
}

/// Reads `from..=to` of one partition with a throwaway consumer (assign + seek).
fn read_range(
    cc: &ClientConfig,
    (kind, topic): (Topic, &str),
    partition: i32,
    from: i64,
    to: i64,
    timeout: Duration,
) -> Result<Option<Vec<Delivery>>, BusError> {
    let unavailable = |e: KafkaError| BusError::Unavailable(e.to_string());
    if to < from {
        return Ok(Some(Vec::new()));
    }
    if to - from >= MAX_READ {
        return Ok(None);
    }
    let consumer: BaseConsumer = cc.create().map_err(unavailable)?;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, timeout)
        .map_err(unavailable)?;
    // Retention took the start, or the log is shorter than asked (it was recreated).
    if low > from || high <= to {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(unavailable)?;
    consumer.assign(&tpl).map_err(unavailable)?;
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while Instant::now() < deadline {
        match consumer.poll(POLL) {
            Some(Ok(m)) if m.partition() == partition => {
                if m.offset() > to {
                    return Ok(Some(out));
                }
                if m.offset() >= from {
                    // A malformed record was skipped live too.
                    if let Ok(d) = delivery_from(&m, kind) {
                        out.push(d);
                    }
                }
                if m.offset() == to {
                    return Ok(Some(out));
                }
            }
            Some(Err(e)) => debug!(error = %e, "kafka read error"),
            _ => {}
        }
    }
    Err(BusError::Unavailable(format!(
        "reading {topic}/{partition} {from}..={to} timed out"
    )))
}
