//! Counters and gauges of one node, shown by `/v1/stats` and `/metrics`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

macro_rules! stats {
    ($( $(#[$doc:meta])* $kind:ident $name:ident : $help:literal ),* $(,)?) => {
        /// Every counter and gauge; all atomics, updated from any task.
        #[derive(Debug, Default)]
        pub struct Stats {
            $( $(#[$doc])* pub $name: stats!(@ty $kind), )*
            /// The bus's consumer lag per (topic, partition): records not yet read.
            pub consumer_lag: std::sync::Mutex<std::collections::BTreeMap<(String, i32), i64>>,
            /// Items a connection's writer found queued when it woke: how far behind
            /// clients are.
            pub outbound_queue_depth: QueueDepth,
            /// `POST /v1/requests`, from accepted to answered or timed out.
            pub request_duration: RequestDuration,
            /// How long the routing lock (a record's way into the window and to its
            /// subscribers) and the replay window's lock are held each time.
            pub routing_lock_hold: LockHold,
            pub window_lock_hold: LockHold,
            /// Publish (the record's timestamp) to the socket write, per delivery.
            pub delivery_latency: Latency,
            /// A routed record's way into the window and every subscriber's queue.
            pub fanout_duration: FanoutDuration,
            /// A record's timestamp to its fetch by this node.
            pub kafka_fetch_lag: Latency,
            /// Records replayed per resume.
            pub resume_records: ResumeSize,
        }

        impl Stats {
            /// `/metrics`: OpenMetrics text, encoded by prometheus-client.
            pub fn render_prometheus(&self) -> String {
                use crate::metrics::{Family, Sample, Snapshot};
                let mut f = vec![
                    $( Family::one(stringify!($name), $help, stats!(@sample $kind, self.$name.load(Ordering::Relaxed))), )*
                ];
                f.push(self.outbound_queue_depth.family(
                    "outbound_queue_depth",
                    "Items queued for a connection when its writer woke.",
                ));
                f.push(self.request_duration.family(
                    "request_duration_seconds",
                    "POST /v1/requests from accepted to answered or timed out.",
                ));
                f.push(self.delivery_latency.family(
                    "delivery_latency_seconds",
                    "From a record's timestamp (its publish) to its MESSAGE's write to the client's socket, per delivery.",
                ));
                f.push(self.fanout_duration.family(
                    "fanout_duration_seconds",
                    "Routing one record that reached a local subscriber: into the replay window and every subscriber's queue.",
                ));
                f.push(self.kafka_fetch_lag.family(
                    "kafka_fetch_lag_seconds",
                    "From a record's timestamp to its fetch by this node's consumer.",
                ));
                f.push(self.resume_records.family(
                    "resume_records",
                    "Records replayed per resume (SUBSCRIBE with resume-from).",
                ));
                let locks = [("routing", &self.routing_lock_hold), ("window", &self.window_lock_hold)];
                f.push(Family {
                    name: "lock_hold_seconds".into(),
                    help: "How long the routing and window locks are held each time.".into(),
                    samples: locks.iter().map(|(l, h)| (vec![("lock".to_string(), l.to_string())], h.histogram.sample())).collect(),
                });
                f.push(Family {
                    name: "lock_hold_max_seconds".into(),
                    help: "The longest hold of the lock since start.".into(),
                    samples: locks.iter().map(|(l, h)| (vec![("lock".to_string(), l.to_string())], Sample::GaugeF(h.max_ns.load(Ordering::Relaxed) as f64 / 1e9))).collect(),
                });
                let lag = self.consumer_lag.lock().unwrap_or_else(|e| e.into_inner());
                if !lag.is_empty() {
                    f.push(Family {
                        name: "kafka_consumer_lag_records".into(),
                        help: "Records of a partition not yet read by this node.".into(),
                        samples: lag.iter().map(|((topic, partition), n)| (
                            vec![("topic".to_string(), topic.clone()), ("partition".to_string(), partition.to_string())],
                            Sample::Gauge(*n),
                        )).collect(),
                    });
                }
                drop(lag);
                crate::metrics::encode(Snapshot(f))
            }

            /// Name → value, for `/v1/stats`.
            pub fn snapshot(&self) -> serde_json::Map<String, serde_json::Value> {
                let mut m = serde_json::Map::new();
                $( m.insert(stringify!($name).to_string(), self.$name.load(Ordering::Relaxed).into()); )*
                // The name before /metrics had a gauge of the same stem.
                m.insert("connections_total".into(), self.connections_accepted_total.load(Ordering::Relaxed).into());
                m.insert("routing_lock_hold_max_us".into(), self.routing_lock_hold.max_us().into());
                m.insert("window_lock_hold_max_us".into(), self.window_lock_hold.max_us().into());
                m.insert("routing_lock_hold_recent_max_us".into(), self.routing_lock_hold.recent_max_us().into());
                m.insert("window_lock_hold_recent_max_us".into(), self.window_lock_hold.recent_max_us().into());
                let lag = self.consumer_lag.lock().unwrap_or_else(|e| e.into_inner());
                let mut by_topic = serde_json::Map::new();
                for ((topic, partition), n) in lag.iter() {
                    let t = by_topic
                        .entry(topic.clone())
                        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
                    if let Some(t) = t.as_object_mut() {
                        t.insert(partition.to_string(), (*n).into());
                    }
                }
                m.insert("kafka_consumer_lag".to_string(), by_topic.into());
                m
            }
        }
    };
    (@ty counter) => { AtomicU64 };
    (@ty gauge) => { AtomicI64 };
    (@sample counter, $v:expr) => { Sample::Counter($v) };
    (@sample gauge, $v:expr) => { Sample::Gauge($v) };
}

stats! {
    gauge connections: "Open client connections (STOMP sessions and connections still in CONNECT).",
    gauge subscriptions: "Active subscriptions.",
    gauge queued_messages: "Messages waiting in outbound queues.",
    gauge http_connections: "Open HTTP connections (API calls, WebSocket handshakes not yet upgraded).",
    counter http_connections_refused_total: "HTTP connections closed at once by max_http_connections.",
    counter connections_accepted_total: "Connections accepted (WebSocket and TCP).",
    counter connections_refused_total: "Connections refused by max_connections or max_connections_per_ip.",
    counter connections_refused_user_total: "CONNECTs refused by max_connections_per_user.",
    counter connections_refused_banned_total: "CONNECTs refused because an operator banned the user.",
    counter admin_disconnects_total: "Sessions closed here by an operator (POST /v1/disconnect).",
    counter admin_unsubscribes_total: "Subscriptions ended here by an operator (POST /v1/unsubscribe).",
    counter auth_failures_total: "CONNECTs and HTTP API calls refused for a missing or bad credential.",
    counter api_requests_limited_total: "HTTP API calls refused with 429 by limits.api_requests_per_second.",
    counter forbidden_total: "SUBSCRIBEs and SENDs refused by the connection's rights.",
    counter patterns_refused_total: "SUBSCRIBEs refused: a new wildcard pattern past max_patterns (node) or max_patterns_per_connection.",
    counter frames_in_total: "STOMP frames received from clients.",
    counter frames_out_total: "STOMP frames sent to clients.",
    counter messages_published_total: "Messages accepted for publishing (HTTP and client SEND).",
    counter messages_published_http_total: "Of those, through POST /v1/publish.",
    counter messages_published_send_total: "Of those, by client SEND frames.",
    counter messages_received_total: "Messages received from the bus.",
    counter bus_records_fetched_messages_total: "Records this node's consumer fetched from the messages topic (whether or not any local subscriber wanted them): its share of the cluster's Kafka egress.",
    counter bus_records_fetched_targeted_total: "Records this node's consumer fetched from the targeted topic (the partitions its users hash to, and its home partition).",
    counter bus_records_fetched_replies_total: "Records this node's consumer fetched from the replies topic (its own partition: replies and delivery notes for its waiters, and for nodes that share the partition).",
    counter bus_records_fetched_admin_total: "Admin commands and nodes' reports this node's consumer fetched from the replies topic (counted apart from replies).",
    gauge bus_partitions_read_targeted: "Partitions of the targeted topic this node reads now.",
    gauge targeted_partitions: "Partitions of the targeted topic as the node last saw them (the registry places users with it; 0: not known).",
    counter messages_delivered_total: "MESSAGE frames queued to subscribers.",
    counter bus_records_skipped_total: "Records from the bus skipped as malformed (no destination, bad header).",
    counter bus_records_oversized_total: "Records from the bus skipped as too large: body over limits.max_body_bytes, or body and headers over limits.max_frame_bytes.",
    counter bus_records_repeated_total: "Records the bus handed out again after they were delivered: skipped.",
    counter bus_consumer_restarts_total: "Times the bus's consumer thread died (a panic) and was started again.",
    counter bus_gaps_reread_total: "Gaps in a partition's offsets read again before they were accepted.",
    counter messages_unrouted_total: "Messages from the bus that matched no local subscriber.",
    counter messages_dropped_total: "Messages dropped by the drop-oldest policy or a closed connection.",
    counter resumes_total: "SUBSCRIBEs with resume-from.",
    counter resumes_lost_total: "Resumes that could not replay everything after the client's position.",
    counter messages_history_total: "Records read at start into the replay window (history: not routed).",
    counter resumes_refused_total: "Resumes refused by max_resumes_per_minute (ERROR, close).",
    counter resume_log_reads_refused_total: "Resume gaps not read from the log: no reader free within publish_timeout (max_log_reads); answered lost.",
    counter resume_log_reads_total: "Resume gaps older than the replay window read back from the bus's log.",
    counter messages_replayed_total: "MESSAGEs replayed to resuming subscriptions.",
    counter slow_consumer_disconnects_total: "Connections closed because their outbound queue or ack window was full.",
    counter nacks_total: "NACKed messages (dropped: a push center has no queue to return them to).",
    counter protocol_errors_total: "Connections closed with an ERROR for a protocol violation or limit.",
    counter heartbeat_timeouts_total: "Connections closed because the peer fell silent.",
    counter idle_timeouts_total: "Connections without client heart-beats closed after idle_timeout of silence.",
    gauge waiters: "Requests (POST /v1/requests) waiting for their reply on this node.",
    counter requests_total: "Requests accepted by POST /v1/requests on this node.",
    counter requests_answered_total: "Requests completed with a reply.",
    counter requests_timed_out_total: "Requests that reached their deadline without a reply (504).",
    counter requests_delivered_total: "Requests this node handed to at least one local client.",
    counter replies_late_total: "Replies for no waiting request (late, duplicate or unknown): counted and dropped.",
    counter replies_refused_total: "Answers refused: a client answered a request it was not sent (here, or vouched for by its node), or any client answered a rendezvous-only wait.",
    counter requests_expired_total: "Requests past their caller's deadline: delivered to nobody (live or in a resume).",
    counter callbacks_total: "Callbacks (POST /v1/requests/{id}/reply) received on this node.",
    counter callbacks_unclaimed_total: "Callbacks answered 404: no waiting request took them.",
}

impl Stats {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(gauge: &AtomicI64, n: i64) {
        gauge.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(gauge: &AtomicI64, n: i64) {
        gauge.store(n, Ordering::Relaxed);
    }
}

/// A histogram with fixed upper bounds; observing is three relaxed atomic additions.
#[derive(Debug)]
pub struct Histogram {
    bounds: Box<[f64]>,
    /// Per bound, then +Inf; not cumulative.
    buckets: Vec<AtomicU64>,
    /// The sum, in units of 1/`scale`.
    sum: AtomicU64,
    scale: f64,
}

impl Histogram {
    fn new(bounds: &[f64], scale: f64) -> Histogram {
        Histogram {
            bounds: bounds.into(),
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            scale,
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum
            .fetch_add((v.max(0.0) * self.scale) as u64, Ordering::Relaxed);
    }

    /// The upper bounds (without +Inf).
    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    fn sample(&self) -> crate::metrics::Sample {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let bounds = self.bounds.iter().copied().chain(std::iter::once(f64::MAX));
        let count = counts.iter().sum();
        let sum = self.sum.load(Ordering::Relaxed) as f64 / self.scale;
        crate::metrics::Sample::Histogram(sum, count, bounds.zip(counts).collect())
    }

    fn family(&self, name: &str, help: &str) -> crate::metrics::Family {
        crate::metrics::Family::one(name, help, self.sample())
    }
}

/// Seconds from a record's timestamp: buckets at most 1.2× apart from 1 ms to 10 s
/// (a quantile read from it is within 20 % of the truth), and 0.5 ms below them.
#[derive(Debug)]
pub struct Latency(pub Histogram);

impl Default for Latency {
    fn default() -> Latency {
        let mut bounds = vec![0.0005];
        bounds.extend(crate::metrics::exponential(0.001, 1.19, 10.0));
        // Microseconds in the sum.
        Latency(Histogram::new(&bounds, 1e6))
    }
}

impl std::ops::Deref for Latency {
    type Target = Histogram;
    fn deref(&self) -> &Histogram {
        &self.0
    }
}

/// Seconds per routed record: 1 µs to about 1 s, doubling.
#[derive(Debug)]
pub struct FanoutDuration(pub Histogram);

impl Default for FanoutDuration {
    fn default() -> FanoutDuration {
        // Nanoseconds in the sum.
        FanoutDuration(Histogram::new(
            &crate::metrics::exponential(0.000_001, 2.0, 1.0),
            1e9,
        ))
    }
}

impl std::ops::Deref for FanoutDuration {
    type Target = Histogram;
    fn deref(&self) -> &Histogram {
        &self.0
    }
}

/// Records per resume.
#[derive(Debug)]
pub struct ResumeSize(pub Histogram);

impl Default for ResumeSize {
    fn default() -> ResumeSize {
        const BOUNDS: &[f64] = &[0.0, 1.0, 10.0, 100.0, 1000.0, 10_000.0, 100_000.0];
        ResumeSize(Histogram::new(BOUNDS, 1.0))
    }
}

impl std::ops::Deref for ResumeSize {
    type Target = Histogram;
    fn deref(&self) -> &Histogram {
        &self.0
    }
}

/// Items found queued per writer wake-up.
#[derive(Debug)]
pub struct QueueDepth(pub Histogram);

impl Default for QueueDepth {
    fn default() -> QueueDepth {
        const BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0];
        QueueDepth(Histogram::new(BOUNDS, 1.0))
    }
}

impl std::ops::Deref for QueueDepth {
    type Target = Histogram;
    fn deref(&self) -> &Histogram {
        &self.0
    }
}

/// Seconds per request/reply call.
#[derive(Debug)]
pub struct RequestDuration(pub Histogram);

impl Default for RequestDuration {
    fn default() -> RequestDuration {
        const BOUNDS: &[f64] = &[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        // Microseconds in the sum.
        RequestDuration(Histogram::new(BOUNDS, 1e6))
    }
}

impl std::ops::Deref for RequestDuration {
    type Target = Histogram;
    fn deref(&self) -> &Histogram {
        &self.0
    }
}

/// Lock hold times: a histogram (seconds), the longest since start, and the longest
/// of the last 10 to 20 seconds (two 10-second periods).
#[derive(Debug)]
pub struct LockHold {
    histogram: Histogram,
    max_ns: AtomicU64,
    /// The period (10 s since start) that `recent_ns[period % 2]` covers.
    period: AtomicU64,
    recent_ns: [AtomicU64; 2],
    start: std::time::Instant,
}

const PERIOD_SECS: u64 = 10;

impl Default for LockHold {
    fn default() -> LockHold {
        const BOUNDS: &[f64] = &[
            0.000_01, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05,
            0.1, 0.5,
        ];
        // Nanoseconds in the sum.
        LockHold {
            histogram: Histogram::new(BOUNDS, 1e9),
            max_ns: AtomicU64::new(0),
            period: AtomicU64::new(0),
            recent_ns: [AtomicU64::new(0), AtomicU64::new(0)],
            start: std::time::Instant::now(),
        }
    }
}

impl LockHold {
    pub fn observe(&self, held: std::time::Duration) {
        self.observe_until(held, std::time::Instant::now());
    }

    /// A hold that ended at `end` (one clock reading serves both).
    fn observe_until(&self, held: std::time::Duration, end: std::time::Instant) {
        self.histogram.observe(held.as_secs_f64());
        let ns = u64::try_from(held.as_nanos()).unwrap_or(u64::MAX);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
        let now = end.saturating_duration_since(self.start).as_secs() / PERIOD_SECS;
        let was = self.period.load(Ordering::Relaxed);
        if now != was
            && self
                .period
                .compare_exchange(was, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // A new period starts empty (and so does the one before, if it was skipped).
            self.recent_ns[(now % 2) as usize].store(0, Ordering::Relaxed);
            if now > was + 1 {
                self.recent_ns[((now + 1) % 2) as usize].store(0, Ordering::Relaxed);
            }
        }
        self.recent_ns[(now % 2) as usize].fetch_max(ns, Ordering::Relaxed);
    }

    /// The longest hold since start, in microseconds.
    pub fn max_us(&self) -> u64 {
        self.max_ns.load(Ordering::Relaxed) / 1000
    }

    /// The longest hold of the last 10 to 20 seconds, in microseconds.
    pub fn recent_max_us(&self) -> u64 {
        let now = self.start.elapsed().as_secs() / PERIOD_SECS;
        let at = self.period.load(Ordering::Relaxed);
        let cur = self.recent_ns[(at % 2) as usize].load(Ordering::Relaxed);
        let prev = self.recent_ns[((at + 1) % 2) as usize].load(Ordering::Relaxed);
        let ns = match now.saturating_sub(at) {
            0 => cur.max(prev),
            1 => cur,
            _ => 0,
        };
        ns / 1000
    }
}

/// A lock guard that records how long it was held.
pub(crate) struct Held<'a, G> {
    guard: G,
    since: std::time::Instant,
    into: &'a LockHold,
    /// A histogram the same hold also goes into (seconds).
    also: Option<&'a Histogram>,
}

impl<'a, G> Held<'a, G> {
    pub(crate) fn new(guard: G, into: &'a LockHold) -> Held<'a, G> {
        Held {
            guard,
            since: std::time::Instant::now(),
            into,
            also: None,
        }
    }
}

impl<'a, G> Held<'a, G> {
    /// When the lock was taken: a clock reading its holder may reuse.
    pub(crate) fn since(&self) -> std::time::Instant {
        self.since
    }

    /// This hold goes into `h` too, with no clock reading of its own.
    pub(crate) fn also(&mut self, h: &'a Histogram) {
        self.also = Some(h);
    }
}

impl<G> Drop for Held<'_, G> {
    fn drop(&mut self) {
        let end = std::time::Instant::now();
        let held = end.saturating_duration_since(self.since);
        self.into.observe_until(held, end);
        if let Some(h) = self.also {
            h.observe(held.as_secs_f64());
        }
    }
}

impl<G: std::ops::Deref> std::ops::Deref for Held<'_, G> {
    type Target = G::Target;
    fn deref(&self) -> &G::Target {
        &self.guard
    }
}

impl<G: std::ops::DerefMut> std::ops::DerefMut for Held<'_, G> {
    fn deref_mut(&mut self) -> &mut G::Target {
        &mut self.guard
    }
}

#[cfg(test)]
mod lock_hold_tests {
    use super::*;

    #[test]
    fn the_longest_holds_are_kept_since_start_and_for_the_last_period() {
        let stats = Stats::default();
        let h = &stats.window_lock_hold;
        h.observe(std::time::Duration::from_micros(300));
        h.observe(std::time::Duration::from_micros(1200));
        h.observe(std::time::Duration::from_micros(20));
        assert_eq!((h.max_us(), h.recent_max_us()), (1200, 1200));
        let out = stats.render_prometheus();
        assert!(
            out.contains("pushcenter_lock_hold_seconds_count{lock=\"window\"} 3"),
            "{out}"
        );
        assert!(
            out.contains("pushcenter_lock_hold_max_seconds{lock=\"window\"} 0.0012"),
            "{out}"
        );
    }
}
