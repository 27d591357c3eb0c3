//! Counters and gauges of one node, shown by `/v1/stats` and `/metrics`.

use std::fmt::Write;
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
        }

        impl Stats {
            /// Prometheus text exposition format.
            pub fn render_prometheus(&self) -> String {
                let mut out = String::new();
                $(
                    let name = concat!("pushcenter_", stringify!($name));
                    let _ = writeln!(out, "# HELP {name} {}", $help);
                    let _ = writeln!(out, "# TYPE {name} {}", stats!(@prom $kind));
                    let _ = writeln!(out, "{name} {}", self.$name.load(Ordering::Relaxed));
                )*
                self.outbound_queue_depth.render(
                    &mut out,
                    "pushcenter_outbound_queue_depth",
                    "Items queued for a connection when its writer woke.",
                );
                self.request_duration.render(
                    &mut out,
                    "pushcenter_request_duration_seconds",
                    "POST /v1/requests from accepted to answered or timed out.",
                );
                for (lock, h) in [("routing", &self.routing_lock_hold), ("window", &self.window_lock_hold)] {
                    h.render(&mut out, lock);
                }
                let lag = self.consumer_lag.lock().unwrap_or_else(|e| e.into_inner());
                if !lag.is_empty() {
                    let name = "pushcenter_kafka_consumer_lag";
                    let _ = writeln!(out, "# HELP {name} Records of a partition not yet read by this node.");
                    let _ = writeln!(out, "# TYPE {name} gauge");
                    for ((topic, partition), n) in lag.iter() {
                        let _ = writeln!(out, "{name}{{topic=\"{topic}\",partition=\"{partition}\"}} {n}");
                    }
                }
                out
            }

            /// Name → value, for `/v1/stats`.
            pub fn snapshot(&self) -> serde_json::Map<String, serde_json::Value> {
                let mut m = serde_json::Map::new();
                $( m.insert(stringify!($name).to_string(), self.$name.load(Ordering::Relaxed).into()); )*
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
    (@prom counter) => { "counter" };
    (@prom gauge) => { "gauge" };
}

stats! {
    gauge connections: "Open client connections (STOMP sessions and connections still in CONNECT).",
    gauge subscriptions: "Active subscriptions.",
    gauge queued_messages: "Messages waiting in outbound queues.",
    gauge http_connections: "Open HTTP connections (API calls, WebSocket handshakes not yet upgraded).",
    counter http_connections_refused_total: "HTTP connections closed at once by max_http_connections.",
    counter connections_total: "Connections accepted.",
    counter connections_refused_total: "Connections refused by max_connections or max_connections_per_ip.",
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

/// A Prometheus histogram with fixed upper bounds; observing is three relaxed atomic
/// additions.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bound, then +Inf; not cumulative (summed when rendered).
    buckets: Vec<AtomicU64>,
    /// The sum, in units of 1/`scale`.
    sum: AtomicU64,
    scale: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64], scale: f64) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            scale,
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum
            .fetch_add((v.max(0.0) * self.scale) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut total = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            total += b.load(Ordering::Relaxed);
            match self.bounds.get(i) {
                Some(le) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {total}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
                }
            }
        }
        let sum = self.sum.load(Ordering::Relaxed) as f64 / self.scale;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {total}");
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

    fn render(&self, out: &mut String, lock: &str) {
        let name = format!("pushcenter_{lock}_lock_hold_seconds");
        self.histogram.render(
            out,
            &name,
            &format!("How long the {lock} lock is held each time."),
        );
        let name = format!("pushcenter_{lock}_lock_hold_max_seconds");
        let _ = writeln!(
            out,
            "# HELP {name} The longest hold of the {lock} lock since start."
        );
        let _ = writeln!(out, "# TYPE {name} gauge");
        let max = self.max_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name} {max}");
    }
}

/// A lock guard that records how long it was held.
pub(crate) struct Held<'a, G> {
    guard: G,
    since: std::time::Instant,
    into: &'a LockHold,
}

impl<'a, G> Held<'a, G> {
    pub(crate) fn new(guard: G, into: &'a LockHold) -> Held<'a, G> {
        Held {
            guard,
            since: std::time::Instant::now(),
            into,
        }
    }
}

impl<G> Held<'_, G> {
    /// When the lock was taken: a clock reading its holder may reuse.
    pub(crate) fn since(&self) -> std::time::Instant {
        self.since
    }
}

impl<G> Drop for Held<'_, G> {
    fn drop(&mut self) {
        let end = std::time::Instant::now();
        self.into
            .observe_until(end.saturating_duration_since(self.since), end);
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
        let h = LockHold::default();
        h.observe(std::time::Duration::from_micros(300));
        h.observe(std::time::Duration::from_micros(1200));
        h.observe(std::time::Duration::from_micros(20));
        assert_eq!((h.max_us(), h.recent_max_us()), (1200, 1200));
        let mut out = String::new();
        h.render(&mut out, "window");
        assert!(
            out.contains("pushcenter_window_lock_hold_seconds_count 3"),
            "{out}"
        );
        assert!(
            out.contains("pushcenter_window_lock_hold_max_seconds 0.0012"),
            "{out}"
        );
    }
}
