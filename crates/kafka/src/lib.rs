//! The node's [`Bus`] on Kafka. Publishing is one producer. Receiving is one consumer
//! per node that reads every partition of the messages and replies topics: it assigns
//! them itself (no group rebalance to wait for; the group `pushcenter.<node_id>` only
//! holds committed offsets), starts at the current end, and adds partitions created
//! later.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod record;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pushcenter_node::{
    BoxFuture, Bus, BusError, DeliverFn, Delivery, Record, Reply, ReplyFn, StartedFn, Stats,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

pub use record::{delivery_from, message_id, reply_from};

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

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka config: {0}")]
    Config(String),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

/// What the consumer thread and `ready()` share.
struct State {
    assigned: AtomicBool,
    reachable: AtomicBool,
    /// The history read at start reached the live edge: the node delivers live.
    caught_up: AtomicBool,
    stop: AtomicBool,
}

/// Marks the broker unreachable as soon as librdkafka says all brokers are down; the
/// consumer's also keeps the node's lag per partition from librdkafka's statistics.
struct Ctx {
    state: Arc<State>,
    stats: Option<Arc<Stats>>,
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
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown)
            && self.state.reachable.swap(false, Ordering::Relaxed)
        {
            warn!(%reason, "kafka unreachable");
        }
        debug!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for Ctx {}

pub struct KafkaBus {
    cfg: KafkaConfig,
    node_id: String,
    publish_timeout: Duration,
    producer: FutureProducer<Ctx>,
    state: Arc<State>,
    history: Duration,
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
        let mut pc = ClientConfig::new();
        pc.set("bootstrap.servers", &cfg.brokers)
            .set("client.id", format!("pushcenter-{node_id}"))
            .set("message.timeout.ms", millis(publish_timeout))
            .set("linger.ms", "1")
            .set("reconnect.backoff.max.ms", "1000");
        for (k, v) in &cfg.producer {
            pc.set(k, v);
        }
        let state = Arc::new(State::default());
        let producer = pc.create_with_context(Ctx {
            state: state.clone(),
            stats: None,
        })?;
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

    /// Checks values that cannot work (librdkafka checks its own properties).
    pub fn check(cfg: &KafkaConfig) -> Result<(), Error> {
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

    /// Lets librdkafka check the consumer properties (the producer's were checked by
    /// [`KafkaBus::new`]) without connecting anywhere.
    pub fn check_consumer(&self) -> Result<(), Error> {
        let _: BaseConsumer<Ctx> = self.consumer_config().create_with_context(Ctx {
            state: self.state.clone(),
            stats: None,
        })?;
        Ok(())
    }

    fn consumer_config(&self) -> ClientConfig {
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
            // Brokers that answer a fetch only when its wait ends (Tansu) add this wait
            // to every delivery; Apache Kafka answers as soon as data arrives.
            .set("fetch.wait.max.ms", "5")
            .set("reconnect.backoff.max.ms", "1000");
        for (k, v) in &self.cfg.consumer {
            cc.set(k, v);
        }
        cc
    }
}

impl KafkaBus {
    /// Produces one record; resolves with its (partition, offset).
    fn produce(
        &self,
        topic: &str,
        key: &str,
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
        let fr = FutureRecord::to(topic).key(key).payload(body).headers(hs);
        // `send_result` enqueues now (so the record borrows end here).
        let queued = self.producer.send_result(fr).map_err(|(e, _)| e);
        let timeout = self.publish_timeout;
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

impl Drop for KafkaBus {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
    }
}

impl Bus for KafkaBus {
    fn start(&self, deliver: DeliverFn, reply: ReplyFn, started: StartedFn, stats: Arc<Stats>) {
        let mut cc = self.consumer_config();
        // librdkafka's statistics carry each partition's lag (`/metrics`).
        if !self.cfg.consumer.contains_key("statistics.interval.ms") {
            cc.set("statistics.interval.ms", "5000");
        }
        let admin_cc = self.consumer_config();
        let (cfg, state, history) = (self.cfg.clone(), self.state.clone(), self.history);
        let runtime = tokio::runtime::Handle::current();
        let consumer: Result<BaseConsumer<Ctx>, _> = cc.create_with_context(Ctx {
            state: state.clone(),
            stats: Some(stats.clone()),
        });
        let admin: Result<AdminClient<Ctx>, _> = admin_cc.create_with_context(Ctx {
            state: state.clone(),
            stats: None,
        });
        let (consumer, admin) = match (consumer, admin) {
            (Ok(c), Ok(a)) => (c, a),
            (Err(e), _) | (_, Err(e)) => {
                warn!(error = %e, "cannot create the kafka consumer: this node receives nothing");
                return;
            }
        };
        let mut reader = Reader {
            cfg,
            consumer,
            admin,
            runtime,
            state,
            deliver,
            reply,
            started,
            stats,
            next: [Vec::new(), Vec::new()],
            reread: [false; 2],
            rereads: HashMap::new(),
            history,
            live: Vec::new(),
            assigned_at: Instant::now(),
            reassign: false,
        };
        // A reader that panics (a broker's answer no one foresaw) goes on from the
        // positions it had reached: the node never silently stops receiving.
        let supervise = move || {
            let mut restarts = 0u32;
            loop {
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.run()));
                if ran.is_ok() {
                    return;
                }
                restarts = restarts.saturating_add(1);
                Stats::inc(&reader.stats.bus_consumer_restarts_total);
                reader.reassign = true;
                tracing::error!(
                    restarts,
                    "the kafka consumer panicked: reading on from where it was"
                );
                // At most one restart a second, slower after repeated ones.
                std::thread::sleep(Duration::from_secs(u64::from(restarts.min(10))));
            }
        };
        let spawned = std::thread::Builder::new()
            .name("kafka-consumer".into())
            .spawn(supervise);
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the kafka consumer thread");
        }
    }

    fn publish(&self, record: Record) -> BoxFuture<Result<String, BusError>> {
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
        let key = record.key.as_deref().unwrap_or(&record.destination);
        let sent = self.produce(&self.cfg.messages_topic, key, &headers, &record.body);
        Box::pin(async move { sent.await.map(|(p, o)| message_id(p, o)) })
    }

    fn reply(&self, reply: Reply) -> BoxFuture<Result<(), BusError>> {
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
        // Keyed by correlation id: a request's delivery note and answer keep their order.
        let sent = self.produce(
            &self.cfg.replies_topic,
            &reply.correlation_id,
            &headers,
            &reply.body,
        );
        Box::pin(async move { sent.await.map(drop) })
    }

    fn ready(&self) -> bool {
        self.state.assigned.load(Ordering::Relaxed)
            && self.state.reachable.load(Ordering::Relaxed)
            && self.state.caught_up.load(Ordering::Relaxed)
    }

    fn read(
        &self,
        stream: &str,
        from: i64,
        to: i64,
    ) -> BoxFuture<Result<Option<Vec<Delivery>>, BusError>> {
        let Ok(partition) = stream.parse::<i32>() else {
            return Box::pin(std::future::ready(Ok(None)));
        };
        let mut cc = self.consumer_config();
        // Its own group, never committed: the node's offsets stay the reader's.
        cc.set(
            "group.id",
            format!("{}{}.replay", self.cfg.group_prefix, self.node_id),
        )
        .set("enable.auto.commit", "false");
        let topic = self.cfg.messages_topic.clone();
        let timeout = self.publish_timeout;
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                read_range(&cc, &topic, partition, from, to, timeout)
            })
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?
        })
    }
}

impl Default for State {
    fn default() -> State {
        State {
            assigned: AtomicBool::new(false),
            reachable: AtomicBool::new(false),
            caught_up: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        }
    }
}

/// Most records one resume may read back from the log; more is answered as lost.
const MAX_READ: i64 = 100_000;

/// Reads `from..=to` of one partition with a throwaway consumer (assign + seek).
fn read_range(
    cc: &ClientConfig,
    topic: &str,
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
                    if let Ok(d) = delivery_from(&m) {
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

/// The consumer thread: owns the consumer, polls, hands records to the node.
struct Reader {
    cfg: KafkaConfig,
    consumer: BaseConsumer<Ctx>,
    admin: AdminClient<Ctx>,
    runtime: tokio::runtime::Handle,
    state: Arc<State>,
    deliver: DeliverFn,
    reply: ReplyFn,
    started: StartedFn,
    stats: Arc<Stats>,
    /// Next offset to read, per topic (messages, replies) and partition (index).
    next: [Vec<i64>; 2],
    /// Per topic: it vanished and was created again, so read it from its start.
    reread: [bool; 2],
    /// (topic, partition) → (the offset a gap starts at, times read again).
    rereads: HashMap<(usize, i32), (i64, u32)>,
    /// How far back a fresh start reads the messages topic into the replay window.
    history: Duration,
    /// Per messages partition: the first offset routed live.
    live: Vec<i64>,
    assigned_at: Instant,
    /// Assign again from `next` (after a panic left the consumer's assignment unknown).
    reassign: bool,
}

/// A node whose history has not reached the live edge by then goes ready anyway
/// (trailing transaction markers leave offsets no record ever shows).
const HISTORY_WAIT: Duration = Duration::from_secs(30);

/// Most records of one partition read at start into the replay window.
const MAX_HISTORY: i64 = 100_000;

/// How often a gap in a partition's offsets is read again before it is accepted.
const GAP_REREADS: u32 = 3;

const POLL: Duration = Duration::from_millis(100);

impl Reader {
    fn run(&mut self) {
        let mut next_check = Instant::now();
        while !self.state.stop.load(Ordering::Relaxed) {
            if Instant::now() >= next_check {
                self.check();
                next_check = Instant::now() + self.cfg.check_interval;
            }
            if !self.state.assigned.load(Ordering::Relaxed) {
                std::thread::sleep(POLL);
                continue;
            }
            if !self.state.caught_up.load(Ordering::Relaxed) {
                self.check_caught_up();
            }
            match self.consumer.poll(POLL) {
                None => {}
                Some(Ok(m)) => {
                    self.state.reachable.store(true, Ordering::Relaxed);
                    let replies = m.topic() == self.cfg.replies_topic;
                    let place = (usize::from(replies), m.topic(), m.partition(), m.offset());
                    if !in_order(
                        &self.consumer,
                        &self.stats,
                        &mut self.next,
                        &mut self.rereads,
                        place,
                    ) {
                        continue;
                    }
                    let handled = if replies {
                        reply_from(&m).map(|r| (self.reply)(r))
                    } else {
                        delivery_from(&m).map(|d| (self.deliver)(d))
                    };
                    match handled {
                        Ok(()) => {}
                        Err(why) => {
                            Stats::inc(&self.stats.bus_records_skipped_total);
                            debug!(
                                topic = m.topic(),
                                partition = m.partition(),
                                offset = m.offset(),
                                why,
                                "record skipped"
                            );
                        }
                    }
                }
                Some(Err(e)) => debug!(error = %e, "kafka consume error"),
            }
        }
    }

    /// Checks the broker: reachable? topics there? more partitions than assigned?
    fn check(&mut self) {
        let timeout = self.cfg.check_interval.min(Duration::from_secs(2));
        let topics = [
            self.cfg.messages_topic.clone(),
            self.cfg.replies_topic.clone(),
        ];
        let mut counts = [0usize; 2];
        for (i, topic) in topics.iter().enumerate() {
            match self.consumer.fetch_metadata(Some(topic), timeout) {
                Ok(md) => match md.topics().iter().find(|t| t.name() == topic) {
                    None => counts[i] = 0,
                    Some(t) => match t.error() {
                        None => counts[i] = t.partitions().len(),
                        Some(e)
                            if RDKafkaErrorCode::from(e)
                                == RDKafkaErrorCode::UnknownTopicOrPartition =>
                        {
                            counts[i] = 0;
                        }
                        // Leader elections and the like pass: a transient error must not
                        // look like a lost topic (that would move the read position).
                        Some(e) => {
                            debug!(topic, error = ?e, "topic metadata error; checking later");
                            return;
                        }
                    },
                },
                Err(e) => {
                    if self.state.reachable.swap(false, Ordering::Relaxed) {
                        warn!(error = %e, "kafka unreachable");
                    }
                    return;
                }
            }
        }
        if !self.state.reachable.swap(true, Ordering::Relaxed) {
            info!(brokers = %self.cfg.brokers, "kafka reachable");
        }
        if counts.contains(&0) {
            // Missing (first start, or a broker that lost its topics): create, then
            // read the new topic from its start.
            self.create_topics();
            for (i, &n) in counts.iter().enumerate() {
                if n == 0 && !self.next[i].is_empty() {
                    self.next[i].clear();
                    self.reread[i] = true;
                    self.state.assigned.store(false, Ordering::Relaxed);
                }
            }
            return;
        }
        if counts[0] == self.next[0].len() && counts[1] == self.next[1].len() && !self.reassign {
            return;
        }
        let mut next: [Vec<i64>; 2] = Default::default();
        // Per messages partition: the first offset routed live (before it: history).
        let mut live: Vec<i64> = Vec::new();
        let mut tpl = TopicPartitionList::new();
        for (i, topic) in topics.iter().enumerate() {
            let fresh = self.next[i].is_empty();
            for p in 0..counts[i] {
                let Ok(pi) = i32::try_from(p) else { return };
                let (offset, from_live) = match self.next[i].get(p) {
                    Some(&n) => (n, self.live.get(p).copied().unwrap_or(n)),
                    // A topic the broker lost and that was created again: all of it.
                    None if self.reread[i] => (0, 0),
                    // At start: live from the current end, so the node delivers what
                    // is published from now on and nothing older; the messages of the
                    // last `history` are read first into the replay window.
                    None if fresh => match self.start_at(topic, pi, i == 0, timeout) {
                        Some(at) => at,
                        None => return,
                    },
                    // A partition added later: everything in it is new.
                    None => (0, 0),
                };
                if i == 0 {
                    live.push(from_live);
                }
                next[i].push(offset);
                if tpl
                    .add_partition_offset(topic, pi, Offset::Offset(offset))
                    .is_err()
                {
                    return;
                }
            }
        }
        match self.consumer.assign(&tpl) {
            Ok(()) => {
                info!(
                    messages = counts[0],
                    replies = counts[1],
                    "reading every partition"
                );
                // Message ids are `<partition>-<offset>`: partitions are the streams of
                // the node's replay window.
                for (p, (&offset, &from_live)) in next[0].iter().zip(&live).enumerate() {
                    (self.started)(&p.to_string(), offset, from_live);
                }
                self.next = next;
                self.live = live;
                self.assigned_at = Instant::now();
                self.check_caught_up();
                self.reread = [false; 2];
                self.reassign = false;
                self.state.assigned.store(true, Ordering::Relaxed);
            }
            Err(e) => warn!(error = %e, "cannot assign partitions"),
        }
    }

    /// Ready only once the history read at start reached the live edge: until then the
    /// node would deliver live records late.
    fn check_caught_up(&self) {
        let caught_up = self.next[0].iter().zip(&self.live).all(|(n, l)| n >= l)
            || self.assigned_at.elapsed() > HISTORY_WAIT;
        if caught_up && !self.state.caught_up.swap(true, Ordering::Relaxed) {
            info!(
                after = ?self.assigned_at.elapsed(),
                "history read; delivering live"
            );
        }
    }

    /// Where a fresh node starts reading a partition, and where live routing starts:
    /// the partition's end, and for the messages topic, as far back as `history` reaches
    /// (by record time, at most [`MAX_HISTORY`] records), so the replay window is full
    /// from the start and clients that move here resume without reading the log.
    fn start_at(
        &self,
        topic: &str,
        partition: i32,
        history: bool,
        timeout: Duration,
    ) -> Option<(i64, i64)> {
        let (low, high) = match self.consumer.fetch_watermarks(topic, partition, timeout) {
            Ok(w) => w,
            Err(e) => {
                debug!(error = %e, topic, partition, "watermarks unavailable");
                return None;
            }
        };
        if !history || self.history.is_zero() {
            return Some((high, high));
        }
        let since = std::time::SystemTime::now()
            .checked_sub(self.history)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .unwrap_or(0);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(since))
            .ok()?;
        let from = match self.consumer.offsets_for_times(tpl, timeout) {
            Ok(found) => match found.find_partition(topic, partition).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                // Nothing that recent: no history.
                _ => high,
            },
            Err(e) => {
                debug!(error = %e, topic, partition, "no offset by time; starting without history");
                high
            }
        };
        Some(history_start(low, high, from))
    }

    fn create_topics(&self) {
        let repl = || TopicReplication::Fixed(self.cfg.replication_factor);
        let topics = [
            NewTopic::new(&self.cfg.messages_topic, self.cfg.partitions, repl()),
            NewTopic::new(&self.cfg.replies_topic, self.cfg.partitions, repl()),
        ];
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
        match self
            .runtime
            .block_on(self.admin.create_topics(&topics, &opts))
        {
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(t) => info!(topic = t, "topic created"),
                        Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => {
                            debug!(topic = t, "topic exists")
                        }
                        Err((t, code)) => warn!(topic = t, %code, "cannot create topic"),
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot create topics"),
        }
    }
}

/// Where a fresh node reads a partition from (`from`: the first record of the history
/// wanted), and its live edge: at most [`MAX_HISTORY`] records back, never before the
/// low watermark. Brokers have answered a low watermark above the high one: nothing here
/// trusts their order (`clamp` would panic).
fn history_start(low: i64, high: i64, from: i64) -> (i64, i64) {
    let floor = low.max(high.saturating_sub(MAX_HISTORY)).min(high);
    (from.clamp(floor, high), high)
}

/// Keeps each partition's records in offset order, each once. A record before the
/// next expected offset was delivered already: skipped. A record after it leaves a
/// gap, which is real in Kafka (transaction markers, compaction) but may also be a
/// broker that shows its high watermark before the batch is readable (Tansu 0.6
/// does, under concurrent producers): the partition is read again from the gap, up
/// to [`GAP_REREADS`] times, before the gap is accepted. False: do not deliver.
fn in_order(
    consumer: &BaseConsumer<Ctx>,
    stats: &Stats,
    next: &mut [Vec<i64>; 2],
    rereads: &mut HashMap<(usize, i32), (i64, u32)>,
    (t, topic, partition, offset): (usize, &str, i32, i64),
) -> bool {
    let Some(n) = usize::try_from(partition)
        .ok()
        .and_then(|p| next[t].get_mut(p))
    else {
        return true;
    };
    let expected = *n;
    if offset < expected {
        Stats::inc(&stats.bus_records_repeated_total);
        debug!(
            topic,
            partition, offset, expected, "record read twice; skipped"
        );
        return false;
    }
    if offset > expected {
        let tries = rereads.entry((t, partition)).or_insert((expected, 0));
        if tries.0 != expected {
            *tries = (expected, 0);
        }
        if tries.1 < GAP_REREADS {
            tries.1 += 1;
            Stats::inc(&stats.bus_gaps_reread_total);
            debug!(
                topic,
                partition, offset, expected, "offset gap; reading again"
            );
            match consumer.seek(
                topic,
                partition,
                Offset::Offset(expected),
                Duration::from_secs(1),
            ) {
                Ok(()) => return false,
                Err(e) => warn!(error = %e, topic, partition, "cannot seek; gap accepted"),
            }
        }
    }
    if !rereads.is_empty() {
        rereads.remove(&(t, partition));
    }
    *n = offset + 1;
    true
}

fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

#[cfg(test)]
mod start_tests {
    use super::*;

    #[test]
    fn odd_watermarks_never_panic() {
        assert_eq!(history_start(0, 100, 40), (40, 100));
        assert_eq!(history_start(50, 100, 40), (50, 100));
        assert_eq!(history_start(0, 200_000, 0), (100_000, 200_000));
        // Low above high, from anywhere: the live edge, no history.
        assert_eq!(history_start(10, 5, 0), (5, 5));
        assert_eq!(history_start(10, 5, 99), (5, 5));
        assert_eq!(history_start(i64::MAX, i64::MIN, 0), (i64::MIN, i64::MIN));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    fn poll_offset(consumer: &BaseConsumer<Ctx>) -> i64 {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => m.offset(),
            Some(Err(e)) => panic!("consume: {e}"),
            None => panic!("no record within 10 s"),
        }
    }

    #[test]
    fn a_partition_is_delivered_in_order_once_and_a_gap_is_read_again() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("t", 1, 1).expect("topic");
        let brokers = cluster.bootstrap_servers();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .expect("producer");
        for i in 0..5 {
            let body = i.to_string();
            producer
                .send(BaseRecord::<str, str>::to("t").partition(0).payload(&body))
                .expect("send");
        }
        producer.flush(Duration::from_secs(10)).expect("flush");
        let state = Arc::new(State::default());
        let consumer: BaseConsumer<Ctx> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "g")
            .create_with_context(Ctx { state, stats: None })
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("t", 0, Offset::Offset(0))
            .expect("partition");
        consumer.assign(&tpl).expect("assign");
        let stats = Stats::default();
        let mut next = [vec![0], Vec::new()];
        let mut rereads = HashMap::new();
        let mut check = |offset| {
            in_order(
                &consumer,
                &stats,
                &mut next,
                &mut rereads,
                (0, "t", 0, offset),
            )
        };

        assert_eq!(poll_offset(&consumer), 0);
        assert!(check(0));
        // Handed out again: skipped.
        assert!(!check(0));
        // 3 where 1 is due: not delivered, and the partition is read again from 1.
        assert!(!check(3));
        assert_eq!(poll_offset(&consumer), 1);
        assert!(check(1));
        // A gap that stays after every re-read is real (a transaction marker): accepted.
        for _ in 0..GAP_REREADS {
            assert!(!check(4));
        }
        assert!(check(4));
        assert_eq!(next[0], [5]);
        assert_eq!(stats.bus_records_repeated_total.load(Ordering::Relaxed), 1);
        assert_eq!(
            stats.bus_gaps_reread_total.load(Ordering::Relaxed),
            1 + u64::from(GAP_REREADS)
        );
    }
}
