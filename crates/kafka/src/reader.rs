//! The consumer thread: one consumer that reads every partition of the messages topic,
//! the targeted partitions this node's users need and its own replies partition,
//! assigned by the node itself, kept in order, and restarted by a supervisor when it
//! panics.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pushcenter_node::placement::{partition_of, reply_partition};
use pushcenter_node::{DeliverFn, ReplyFn, StartedFn, Stats};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use std::sync::mpsc::{SyncSender, TryRecvError};
use tracing::{debug, info, warn};

use crate::bus::KafkaBus;
use crate::config::{KafkaConfig, POLL};
use crate::context::{Ctx, State};
use crate::ordering::{NOT_READ, Order, Verdict};
use crate::record::{delivery_from, reply_from};
use crate::topic::{PerTopic, Topic};

/// A node whose history has not reached the live edge by then goes ready anyway
/// (trailing transaction markers leave offsets no record ever shows).
const HISTORY_WAIT: Duration = Duration::from_secs(30);

/// Records between two readings of the clock by the consumer loop (and after every
/// empty poll): at 20 records a second that is still a check within a second.
const CLOCK_EVERY: u32 = 16;

/// How far back a targeted partition started for a connecting user is read into the
/// replay window.
const TARGETED_HISTORY: Duration = Duration::from_secs(30);

/// Most records of one partition read at start into the replay window.
const MAX_HISTORY: i64 = 100_000;

/// Creates the consumer and starts its thread under a supervisor; a consumer that
/// cannot be created leaves the node running, receiving nothing.
pub(crate) fn start(
    bus: &KafkaBus,
    deliver: DeliverFn,
    reply: ReplyFn,
    started: StartedFn,
    stats: Arc<Stats>,
) {
    let mut cc = bus.consumer_config();
    // librdkafka's statistics carry each partition's lag (`/metrics`).
    if !bus.cfg.consumer.contains_key("statistics.interval.ms") {
        cc.set("statistics.interval.ms", "5000");
    }
    let admin_cc = bus.consumer_config();
    let (cfg, state, history) = (bus.cfg.clone(), bus.state.clone(), bus.history);
    let node_id = bus.node_id.clone();
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
    let threads = cfg.routing_threads;
    let workers = (threads > 1)
        .then(|| start_workers(threads, &deliver, &reply, &stats))
        .filter(|w| !w.is_empty());
    let starter = bus
        .consumer_config()
        .create_with_context(Ctx {
            state: state.clone(),
            stats: None,
        })
        .ok()
        .and_then(|c| Starter::start(c, cfg.clone(), history));
    let mut reader = Reader {
        starter,
        workers,
        cfg,
        node_id,
        consumer,
        admin,
        runtime,
        state,
        deliver,
        reply,
        started,
        stats,
        order: Order::default(),
        reread: PerTopic::default(),
        history,
        live: PerTopic::default(),
        counts: PerTopic::default(),
        reading: PerTopic::default(),
        loaded: Vec::new(),
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

/// The consumer thread: owns the consumer, polls, hands records to the node.
struct Reader {
    /// Looks up where partitions start, off this thread; `None`: on it.
    starter: Option<Starter>,
    /// Routing threads (`kafka.routing_threads` > 1); `None`: routed on this thread.
    workers: Option<Vec<SyncSender<Work>>>,
    cfg: KafkaConfig,
    node_id: String,
    consumer: BaseConsumer<Ctx>,
    admin: AdminClient<Ctx>,
    runtime: tokio::runtime::Handle,
    state: Arc<State>,
    deliver: DeliverFn,
    reply: ReplyFn,
    started: StartedFn,
    stats: Arc<Stats>,
    /// Next offset to read per topic and partition, and the gaps being read again.
    order: Order,
    /// Per topic: it vanished and was created again, so read it from its start.
    reread: PerTopic<bool>,
    /// How far back a fresh start reads the messages topic into the replay window.
    history: Duration,
    /// Per partition: the first offset routed live ([`NOT_READ`]: not read).
    live: PerTopic<Vec<i64>>,
    /// Partitions per topic, as the last check found them.
    counts: PerTopic<usize>,
    /// Per partition: assigned now.
    reading: PerTopic<Vec<bool>>,
    /// Per targeted partition: read, and its history in the window.
    loaded: Vec<bool>,
    assigned_at: Instant,
    /// Assign again from `order.next` (after a panic left the consumer's assignment unknown).
    reassign: bool,
}

impl Reader {
    fn run(&mut self) {
        let mut next_check = Instant::now();
        // The clock is read every so many records, and whenever a poll comes back empty.
        let mut since_clock = CLOCK_EVERY;
        let mut since_wake = 0;
        // Wall-clock time, read with the monotonic one: records' fetch lag.
        let mut wall_ms = pushcenter_node::unix_ms();
        pushcenter_node::hold_wakes();
        while !self.state.stop.load(Ordering::Relaxed) {
            self.poll_starter();
            since_clock = since_clock.saturating_add(1);
            if since_clock >= CLOCK_EVERY {
                since_clock = 0;
                wall_ms = pushcenter_node::unix_ms();
                if Instant::now() >= next_check {
                    // What waits on the broker waits without holding deliveries back.
                    pushcenter_node::release_wakes();
                    self.check();
                    next_check = Instant::now() + self.cfg.check_interval;
                }
            }
            if !self.state.assigned.load(Ordering::Relaxed) {
                pushcenter_node::release_wakes();
                std::thread::sleep(POLL);
                since_clock = CLOCK_EVERY;
                continue;
            }
            if !self.state.caught_up.load(Ordering::Relaxed) {
                pushcenter_node::release_wakes();
                self.check_caught_up();
            }
            if self.state.interest_changed.swap(false, Ordering::Relaxed) {
                pushcenter_node::release_wakes();
                self.assign_wanted();
            }
            // What is queued is taken without waiting (nor reading the clock); before
            // waiting for more, the connections queued to are woken.
            let polled = match self.consumer.poll(Duration::ZERO) {
                None => {
                    pushcenter_node::release_wakes();
                    since_wake = 0;
                    self.consumer.poll(POLL)
                }
                polled => polled,
            };
            since_wake += 1;
            if since_wake >= WAKE_EVERY {
                pushcenter_node::release_wakes();
                since_wake = 0;
            }
            match polled {
                None => since_clock = CLOCK_EVERY,
                Some(Ok(m)) => {
                    self.state.reachable.store(true, Ordering::Relaxed);
                    // Only the three topics are assigned.
                    let topic = if m.topic() == self.cfg.replies_topic {
                        Topic::Replies
                    } else if m.topic() == self.cfg.targeted_topic {
                        Topic::Targeted
                    } else {
                        Topic::Messages
                    };
                    Stats::inc(match topic {
                        Topic::Replies if crate::record::is_admin(&m) => {
                            &self.stats.bus_records_fetched_admin_total
                        }
                        Topic::Replies => &self.stats.bus_records_fetched_replies_total,
                        Topic::Targeted => &self.stats.bus_records_fetched_targeted_total,
                        Topic::Messages => &self.stats.bus_records_fetched_messages_total,
                    });
                    // Live records only: a history read at start is old by design.
                    let p = usize::try_from(m.partition()).unwrap_or(usize::MAX);
                    let live = self.live[topic].get(p).is_some_and(|&l| m.offset() >= l);
                    let at = crate::record::timestamp_ms(&m);
                    if live && at > 0 {
                        let lag = wall_ms.saturating_sub(at) as f64 / 1000.0;
                        self.stats.kafka_fetch_lag.observe(lag);
                    }
                    let place = (topic, m.topic(), m.partition(), m.offset());
                    if !in_order(&self.consumer, &mut self.order, &self.stats, place) {
                        continue;
                    }
                    match &self.workers {
                        None => handle(&m, topic, &self.deliver, &self.reply, &self.stats),
                        // Parsed and routed on the partition's worker: one partition, one
                        // thread, so its order holds.
                        Some(workers) => {
                            let w = worker_of(topic, m.partition(), workers.len());
                            if let Some(tx) = workers.get(w) {
                                let _ = tx.send((topic, m.detach()));
                            }
                        }
                    }
                    if topic == Topic::Targeted {
                        let i = usize::try_from(m.partition()).unwrap_or(usize::MAX);
                        // The last record of its history is in the window now: the
                        // connections waiting for the partition go on.
                        if self.loaded.get(i) == Some(&false) && loaded(&self.order, &self.live, i)
                        {
                            self.loaded[i] = true;
                            self.state.interest().reading(&self.loaded);
                        }
                    }
                }
                Some(Err(e)) => debug!(error = %e, "kafka consume error"),
            }
        }
    }

    /// Checks the broker: reachable? topics there? more partitions than assigned? Then
    /// reads what is wanted now.
    fn check(&mut self) {
        let timeout = self.timeout();
        let mut counts = PerTopic::<usize>::default();
        for topic in Topic::ALL {
            let name = topic.name(&self.cfg);
            match self.consumer.fetch_metadata(Some(name), timeout) {
                Ok(md) => match md.topics().iter().find(|t| t.name() == name) {
                    None => counts[topic] = 0,
                    Some(t) => match t.error() {
                        None => counts[topic] = t.partitions().len(),
                        Some(e)
                            if RDKafkaErrorCode::from(e)
                                == RDKafkaErrorCode::UnknownTopicOrPartition =>
                        {
                            counts[topic] = 0;
                        }
                        // Leader elections and the like pass: a transient error must not
                        // look like a lost topic (that would move the read position).
                        Some(e) => {
                            debug!(topic = name, error = ?e, "topic metadata error; checking later");
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
        if Topic::ALL.iter().any(|&topic| counts[topic] == 0) {
            // Missing (first start, or a broker that lost its topics): create, then
            // read the new topic from its start.
            self.create_topics();
            for topic in Topic::ALL {
                if counts[topic] == 0 && !self.order.next[topic].is_empty() {
                    self.order.next[topic].clear();
                    self.reread[topic] = true;
                    self.state.assigned.store(false, Ordering::Relaxed);
                }
            }
            return;
        }
        for topic in Topic::ALL {
            let n = u32::try_from(counts[topic]).unwrap_or(u32::MAX);
            self.state.partitions[topic].store(n, Ordering::Relaxed);
        }
        let targeted = i64::try_from(counts.targeted).unwrap_or(i64::MAX);
        Stats::set(&self.stats.targeted_partitions, targeted);
        self.counts = counts;
        self.assign_wanted();
        self.refresh_loaded();
    }

    /// A targeted partition whose history ends in offsets no record shows (a
    /// transaction's commit marker) never hands over its last history record: it counts
    /// as loaded once the consumer's position passed where live routing starts.
    fn refresh_loaded(&mut self) {
        let waiting = self
            .loaded
            .iter()
            .zip(&self.reading.targeted)
            .any(|(&loaded, &read)| read && !loaded);
        if !waiting {
            return;
        }
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        let mut changed = false;
        for e in positions.elements_for_topic(Topic::Targeted.name(&self.cfg)) {
            let Ok(i) = usize::try_from(e.partition()) else {
                continue;
            };
            let (Offset::Offset(at), Some(&live)) = (e.offset(), self.live.targeted.get(i)) else {
                continue;
            };
            if self.loaded.get(i) == Some(&false)
                && self.reading.targeted.get(i) == Some(&true)
                && at >= live
            {
                self.loaded[i] = true;
                changed = true;
            }
        }
        if changed {
            self.state.interest().reading(&self.loaded);
        }
    }

    /// Takes the lookup thread's answer when there is one, and assigns with it.
    fn poll_starter(&mut self) {
        let Some(st) = self.starter.as_mut().filter(|st| st.pending) else {
            return;
        };
        match st.answers.try_recv() {
            Ok(found) => {
                st.pending = false;
                // Not found: asked again at the next check.
                if let Some(found) = found {
                    st.found.extend(found);
                    self.assign_wanted();
                }
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                warn!("the lookup thread ended: looking up on the consumer thread");
                self.starter = None;
            }
        }
    }

    fn timeout(&self) -> Duration {
        self.cfg.check_interval.min(Duration::from_secs(2))
    }

    /// What this node reads of each topic: every messages partition, its own replies
    /// partition, and the targeted partitions its users need.
    fn wanted(&self) -> PerTopic<Vec<bool>> {
        let count = |topic: Topic| u32::try_from(self.counts[topic]).unwrap_or(u32::MAX);
        let mut replies = vec![false; self.counts.replies];
        let mine = reply_partition(&self.node_id, count(Topic::Replies)) as usize;
        if let Some(r) = replies.get_mut(mine) {
            *r = true;
        }
        let targeted = {
            let mut interest = self.state.interest();
            interest.set_partitions(count(Topic::Targeted));
            let home = partition_of(&self.node_id, count(Topic::Targeted));
            interest.wanted(home, Instant::now())
        };
        PerTopic {
            messages: vec![true; self.counts.messages],
            targeted,
            replies,
        }
    }

    /// Assigns what [`Reader::wanted`] says when it is not what is read now: partitions
    /// read on keep their positions; new ones start at their end (targeted ones with
    /// the history that fills the replay window).
    fn assign_wanted(&mut self) {
        if self.counts.messages == 0 {
            return;
        }
        let wanted = self.wanted();
        if wanted == self.reading && !self.reassign {
            return;
        }
        let timeout = self.timeout();
        // The partitions that start now, looked up together.
        let mut starting = Vec::new();
        for topic in Topic::ALL {
            let fresh = self.order.next[topic].is_empty();
            for (p, &want) in wanted[topic].iter().enumerate() {
                let Ok(pi) = i32::try_from(p) else { return };
                let read_on = self.order.next[topic]
                    .get(p)
                    .is_some_and(|&n| n != NOT_READ);
                if want && !read_on && !self.reread[topic] && (fresh || topic != Topic::Messages) {
                    starting.push((topic, pi));
                }
            }
        }
        let mut wanted = wanted;
        let starts = match self.starter.as_mut() {
            None => {
                match look_up_starts(&self.consumer, &self.cfg, self.history, &starting, timeout) {
                    Some(s) => s,
                    None => return,
                }
            }
            Some(st) => {
                let missing: Vec<(Topic, i32)> = starting
                    .iter()
                    .filter(|p| !st.found.contains_key(p))
                    .copied()
                    .collect();
                // Asked for; assigned once the answer is here (`poll_starter`).
                if !missing.is_empty() && !st.pending {
                    st.pending = st.ask.send(missing.clone()).is_ok();
                }
                // The messages and replies partitions go together; targeted ones whose
                // answer is here go now, the others with a later answer.
                if missing.iter().any(|(t, _)| *t != Topic::Targeted) {
                    return;
                }
                for (_, p) in missing {
                    let i = usize::try_from(p).unwrap_or(usize::MAX);
                    if let Some(w) = wanted.targeted.get_mut(i) {
                        *w = false;
                    }
                }
                if wanted == self.reading && !self.reassign {
                    return;
                }
                std::mem::take(&mut st.found)
            }
        };
        let mut next = PerTopic::<Vec<i64>>::default();
        // Per partition: the first offset routed live (before it: history).
        let mut live = PerTopic::<Vec<i64>>::default();
        let mut started: Vec<(Topic, i32)> = Vec::new();
        let mut tpl = TopicPartitionList::new();
        for topic in Topic::ALL {
            let name = topic.name(&self.cfg);
            let fresh = self.order.next[topic].is_empty();
            for (p, &want) in wanted[topic].iter().enumerate() {
                let Ok(pi) = i32::try_from(p) else { return };
                if !want {
                    next[topic].push(NOT_READ);
                    live[topic].push(NOT_READ);
                    continue;
                }
                let read_on = self.order.next[topic]
                    .get(p)
                    .copied()
                    .filter(|&n| n != NOT_READ);
                let (offset, from_live) = match read_on {
                    Some(n) => (n, self.live[topic].get(p).copied().unwrap_or(n)),
                    // A topic the broker lost and that was created again: all of it.
                    None if self.reread[topic] => (0, 0),
                    // At start, and a targeted or replies partition wanted now: live
                    // from the current end, so the node delivers what is published from
                    // now on and nothing older; the messages of the last `history` are
                    // read first into the replay window.
                    None if fresh || topic != Topic::Messages => match starts.get(&(topic, pi)) {
                        Some(&at) => at,
                        None => return,
                    },
                    // A messages partition added later: everything in it is new.
                    None => (0, 0),
                };
                if read_on.is_none() {
                    started.push((topic, pi));
                }
                next[topic].push(offset);
                live[topic].push(from_live);
                if tpl
                    .add_partition_offset(name, pi, Offset::Offset(offset))
                    .is_err()
                {
                    return;
                }
            }
        }
        // Only targeted partitions come or go (users connecting and leaving): added and
        // removed without touching the others, whose fetches go on.
        let incremental = !self.reassign
            && wanted.messages == self.reading.messages
            && wanted.replies == self.reading.replies
            && wanted.targeted.len() == self.reading.targeted.len();
        let assigned = if incremental {
            let name = Topic::Targeted.name(&self.cfg);
            let (mut added, mut removed) = (TopicPartitionList::new(), TopicPartitionList::new());
            for (p, (&w, &r)) in wanted
                .targeted
                .iter()
                .zip(&self.reading.targeted)
                .enumerate()
            {
                let Ok(pi) = i32::try_from(p) else { return };
                let list = match (w, r) {
                    (true, false) => &mut added,
                    (false, true) => &mut removed,
                    _ => continue,
                };
                let offset = next.targeted.get(p).copied().filter(|&n| n != NOT_READ);
                let at = offset.map_or(Offset::Invalid, Offset::Offset);
                if list.add_partition_offset(name, pi, at).is_err() {
                    return;
                }
            }
            let unassigned = match removed.count() {
                0 => Ok(()),
                _ => self.consumer.incremental_unassign(&removed),
            };
            let done = unassigned.and_then(|()| match added.count() {
                0 => Ok(()),
                _ => self.consumer.incremental_assign(&added),
            });
            done.or_else(|e| {
                debug!(error = %e, "incremental assignment refused: assigning everything");
                self.consumer.assign(&tpl)
            })
        } else {
            self.consumer.assign(&tpl)
        };
        match assigned {
            Ok(()) => {
                let read = |t: Topic| wanted[t].iter().filter(|&&w| w).count();
                info!(
                    messages = read(Topic::Messages),
                    targeted = read(Topic::Targeted),
                    targeted_of = self.counts.targeted,
                    replies = read(Topic::Replies),
                    replies_of = self.counts.replies,
                    "reading partitions"
                );
                // Message ids are `<stream>-<offset>`: partitions are the streams of the
                // node's replay window.
                for (topic, p) in started {
                    if topic == Topic::Replies {
                        continue;
                    }
                    let i = usize::try_from(p).unwrap_or(usize::MAX);
                    if let (Some(&n), Some(&l)) = (next[topic].get(i), live[topic].get(i)) {
                        (self.started)(&topic.stream(p), n, l);
                    }
                }
                self.order.next = next;
                self.live = live;
                // A connection waiting for its user's partition goes on once the
                // partition's history is in the window: its resume finds it there.
                self.loaded = (0..wanted.targeted.len())
                    .map(|p| wanted.targeted[p] && loaded(&self.order, &self.live, p))
                    .collect();
                self.state.interest().reading(&self.loaded);
                Stats::set(
                    &self.stats.bus_partitions_read_targeted,
                    wanted.targeted.iter().filter(|&&w| w).count() as i64,
                );
                self.reading = wanted;
                if !self.state.assigned.load(Ordering::Relaxed) {
                    self.assigned_at = Instant::now();
                }
                self.check_caught_up();
                self.reread = PerTopic::default();
                self.reassign = false;
                self.state.assigned.store(true, Ordering::Relaxed);
            }
            Err(e) => warn!(error = %e, "cannot assign partitions"),
        }
    }

    /// Ready only once the history read at start reached the live edge: until then the
    /// node would deliver live records late.
    fn check_caught_up(&self) {
        let caught_up = self
            .order
            .next
            .messages
            .iter()
            .zip(&self.live.messages)
            .all(|(n, l)| n >= l)
            || self.assigned_at.elapsed() > HISTORY_WAIT;
        if caught_up && !self.state.caught_up.swap(true, Ordering::Relaxed) {
            info!(
                after = ?self.assigned_at.elapsed(),
                "history read; delivering live"
            );
        }
    }

    fn create_topics(&self) {
        let repl = || TopicReplication::Fixed(self.cfg.replication_factor);
        let topics =
            Topic::ALL.map(|t| NewTopic::new(t.name(&self.cfg), t.partitions(&self.cfg), repl()));
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

/// Where each of `parts` starts being read, and where its live routing starts: the
/// partition's end, and for the messages and targeted topics, as far back as
/// `history` reaches (by record time, at most [`MAX_HISTORY`] records), so the replay
/// window holds it and clients that move here resume without reading the log. Three
/// requests to the broker however many partitions start (a user's connection waits
/// for them). `None` when the broker cannot say.
fn look_up_starts(
    consumer: &BaseConsumer<Ctx>,
    cfg: &KafkaConfig,
    history: Duration,
    parts: &[(Topic, i32)],
    timeout: Duration,
) -> Option<Starts> {
    let mut out = HashMap::new();
    if parts.is_empty() {
        return Some(out);
    }
    // Offsets by time: -2 is a partition's start, -1 its end (Kafka's ListOffsets).
    let lookup = |at: &dyn Fn(Topic) -> Option<Offset>| -> Option<HashMap<(Topic, i32), i64>> {
        let mut tpl = TopicPartitionList::new();
        for &(topic, p) in parts {
            if let Some(o) = at(topic) {
                tpl.add_partition_offset(topic.name(cfg), p, o).ok()?;
            }
        }
        if tpl.count() == 0 {
            return Some(HashMap::new());
        }
        let found = match consumer.offsets_for_times(tpl, timeout) {
            Ok(found) => found,
            Err(e) => {
                debug!(error = %e, "offsets unavailable");
                return None;
            }
        };
        let mut got = HashMap::new();
        for e in found.elements() {
            let Some(topic) = Topic::ALL.into_iter().find(|t| t.name(cfg) == e.topic()) else {
                continue;
            };
            if let Offset::Offset(o) = e.offset() {
                got.insert((topic, e.partition()), o);
            }
        }
        Some(got)
    };
    let low = lookup(&|_| Some(Offset::Beginning))?;
    let high = lookup(&|_| Some(Offset::End))?;
    let since = lookup(&|topic| {
        // A targeted partition starts while its users wait to connect: a short
        // history covers those who just lost their node; who was away longer reads
        // the log.
        let history = match topic {
            Topic::Replies => return None,
            Topic::Targeted => history.min(TARGETED_HISTORY),
            Topic::Messages => history,
        };
        if history.is_zero() {
            return None;
        }
        let ms = std::time::SystemTime::now()
            .checked_sub(history)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .unwrap_or(0);
        Some(Offset::Offset(ms))
    })
    .unwrap_or_default();
    for &part in parts {
        let (Some(&l), Some(&h)) = (low.get(&part), high.get(&part)) else {
            debug!(topic = ?part.0, partition = part.1, "watermarks unavailable");
            return None;
        };
        // Nothing that recent, or no history wanted: from the end.
        let from = since.get(&part).copied().unwrap_or(h);
        out.insert(part, history_start(l, h, from));
    }
    Some(out)
}

/// Where partitions start being read, and where their live routing starts.
type Starts = HashMap<(Topic, i32), (i64, i64)>;

/// Looks starts up on a thread of its own, with a client of its own: the consumer
/// thread goes on delivering while the broker answers (a user who connects must not
/// hold up everyone's delivery).
struct Starter {
    ask: std::sync::mpsc::Sender<Vec<(Topic, i32)>>,
    answers: std::sync::mpsc::Receiver<Option<Starts>>,
    /// A question is out.
    pending: bool,
    /// Answers not used yet.
    found: Starts,
}

impl Starter {
    fn start(consumer: BaseConsumer<Ctx>, cfg: KafkaConfig, history: Duration) -> Option<Starter> {
        let (ask, questions) = std::sync::mpsc::channel::<Vec<(Topic, i32)>>();
        let (answer, answers) = std::sync::mpsc::channel();
        let timeout = cfg.check_interval.min(Duration::from_secs(2));
        let spawned = std::thread::Builder::new()
            .name("kafka-starts".into())
            .spawn(move || {
                while let Ok(parts) = questions.recv() {
                    let found = look_up_starts(&consumer, &cfg, history, &parts, timeout);
                    if answer.send(found).is_err() {
                        return;
                    }
                }
            });
        match spawned {
            Ok(_) => Some(Starter {
                ask,
                answers,
                pending: false,
                found: HashMap::new(),
            }),
            Err(e) => {
                warn!(error = %e, "cannot start the lookup thread: looking up on the consumer thread");
                None
            }
        }
    }
}

/// Whether targeted partition `p` is read up to where live routing starts.
fn loaded(order: &Order, live: &PerTopic<Vec<i64>>, p: usize) -> bool {
    match (order.next.targeted.get(p), live.targeted.get(p)) {
        (Some(&n), Some(&l)) => n != NOT_READ && n >= l,
        _ => false,
    }
}

/// Parses a record of `topic` and hands it to the node, or counts it skipped.
fn handle<M: Message>(m: &M, topic: Topic, deliver: &DeliverFn, reply: &ReplyFn, stats: &Stats) {
    let handled = match topic {
        Topic::Replies => reply_from(m).map(|r| reply(r)),
        _ => delivery_from(m, topic).map(|d| deliver(d)),
    };
    if let Err(why) = handled {
        Stats::inc(&stats.bus_records_skipped_total);
        debug!(
            topic = m.topic(),
            partition = m.partition(),
            offset = m.offset(),
            why,
            "record skipped"
        );
    }
}

/// Which of `n` workers parses and routes a partition's records.
fn worker_of(topic: Topic, partition: i32, n: usize) -> usize {
    let t = match topic {
        Topic::Messages => 0,
        Topic::Targeted => 1,
        Topic::Replies => 2,
    };
    (usize::try_from(partition).unwrap_or(0) + t) % n.max(1)
}

/// A record in order, on its way to a worker.
type Work = (Topic, OwnedMessage);

/// `n` threads that parse and route records (`kafka.routing_threads` > 1); each ends
/// when the reader drops its sender. Bounded queues: a slow worker slows the reader,
/// as routing inline would.
fn start_workers(
    n: usize,
    deliver: &DeliverFn,
    reply: &ReplyFn,
    stats: &Arc<Stats>,
) -> Vec<SyncSender<Work>> {
    let mut senders = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Work>(WORKER_QUEUE);
        let (deliver, reply, stats) = (deliver.clone(), reply.clone(), stats.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("kafka-route-{i}"))
            .spawn(move || {
                pushcenter_node::hold_wakes();
                let mut since_wake = 0;
                loop {
                    let (topic, m) = match rx.try_recv() {
                        Ok(work) => work,
                        Err(TryRecvError::Disconnected) => break,
                        Err(TryRecvError::Empty) => {
                            pushcenter_node::release_wakes();
                            since_wake = 0;
                            match rx.recv() {
                                Ok(work) => work,
                                Err(_) => break,
                            }
                        }
                    };
                    since_wake += 1;
                    if since_wake >= WAKE_EVERY {
                        pushcenter_node::release_wakes();
                        since_wake = 0;
                    }
                    // A panic in one record's routing must not end the worker.
                    let run = std::panic::AssertUnwindSafe(|| {
                        handle(&m, topic, &deliver, &reply, &stats)
                    });
                    if std::panic::catch_unwind(run).is_err() {
                        tracing::error!(offset = m.offset(), "routing a record panicked; skipped");
                    }
                }
            });
        match spawned {
            Ok(_) => senders.push(tx),
            Err(e) => {
                warn!(error = %e, "cannot start a routing thread: routing on the consumer thread");
                return Vec::new();
            }
        }
    }
    senders
}

/// Records routed at most before the connections they were queued to are woken: a
/// burst adds at most this many records' routing to a delivery's latency.
const WAKE_EVERY: u32 = 64;

/// Records queued per routing thread at most.
const WORKER_QUEUE: usize = 4096;

/// Asks `order` about a record and does the seek a gap calls for; a seek that fails
/// accepts the gap. False: do not deliver.
fn in_order(
    consumer: &BaseConsumer<Ctx>,
    order: &mut Order,
    stats: &Stats,
    place: (Topic, &str, i32, i64),
) -> bool {
    let (topic, name, partition, offset) = place;
    match order.check(stats, place) {
        Verdict::Deliver => true,
        Verdict::Skip => false,
        Verdict::ReadAgain(from) => {
            // The seek waits on the broker: what was routed goes out first.
            pushcenter_node::release_wakes();
            match consumer.seek(
                name,
                partition,
                Offset::Offset(from),
                Duration::from_secs(1),
            ) {
                Ok(()) => false,
                Err(e) => {
                    warn!(error = %e, topic = name, partition, "cannot seek; gap accepted");
                    order.accept(topic, partition, offset);
                    true
                }
            }
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
    use crate::ordering::GAP_REREADS;
    use rdkafka::config::ClientConfig;
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
        let mut order = Order::default();
        order.next.messages = vec![0];
        let mut check = |offset| {
            in_order(
                &consumer,
                &mut order,
                &stats,
                (Topic::Messages, "t", 0, offset),
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
        assert_eq!(order.next.messages, [5]);
        assert_eq!(stats.bus_records_repeated_total.load(Ordering::Relaxed), 1);
        assert_eq!(
            stats.bus_gaps_reread_total.load(Ordering::Relaxed),
            1 + u64::from(GAP_REREADS)
        );
    }
}
