//! The `Bus` port: how records reach every node. The in-memory bus serves standalone
//! mode; the Kafka adapter lives in its own crate.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::stats::Stats;

/// A message as backends and clients publish it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub destination: String,
    /// Extra headers passed to subscribers (already sanitised).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Deliver only to this user's sessions (targeted push).
    pub user: Option<String>,
    /// Deliver only to this session.
    pub session: Option<String>,
    /// Ordering key on a partitioned bus; the destination when absent.
    pub key: Option<String>,
    /// When it was published, unix microseconds (0: not known): the delivery latency
    /// histogram counts from here.
    pub at_us: u64,
}

/// Headers only the node writes on a MESSAGE: a publisher cannot set them.
pub const NODE_HEADERS: [&str; 7] = [
    "destination",
    "message-id",
    "subscription",
    "ack",
    "content-length",
    "session",
    // On Kafka `user` is the record's target: a publisher names it in its own field.
    "user",
];

/// Headers that make a message a request (`POST /v1/requests` sets them): plain
/// publishes and client SENDs cannot carry them. `request-deadline` is the caller's
/// deadline in unix milliseconds: an expired request is delivered to nobody.
pub const REQUEST_HEADERS: [&str; 3] = ["correlation-id", "reply-to", "request-deadline"];

/// Headers of a reply record that the node writes and reads itself (who answered,
/// where to confirm a callback): a client's answer cannot carry them.
pub const REPLY_HEADERS: [&str; 7] = [
    "correlation-id",
    "reply-node",
    "reply-kind",
    "reply-session",
    "reply-user",
    "confirm-node",
    "confirm-id",
];

/// Milliseconds since the unix epoch.
pub fn unix_ms() -> u64 {
    unix_us() / 1000
}

/// Now, unix microseconds.
pub(crate) fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A request that a targeted record carries: its correlation id, the node whose
/// caller waits, and the caller's deadline (unix ms) when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    pub correlation_id: String,
    pub node: String,
    pub deadline_ms: Option<u64>,
}

impl Record {
    /// Where it is addressed, as the routing rule reads it.
    pub(crate) fn addressed(&self) -> crate::routing::rule::Addressed<'_> {
        crate::routing::rule::Addressed {
            destination: &self.destination,
            user: self.user.as_deref(),
            session: self.session.as_deref(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The request this record is, if it is one: only targeted records are (a
    /// broadcast that names a correlation id is an ordinary message).
    pub fn request(&self) -> Option<RequestInfo> {
        if self.user.is_none() && self.session.is_none() {
            return None;
        }
        let id = self.header("correlation-id")?;
        let node = self.header("reply-to")?.strip_prefix(REPLY_PREFIX)?;
        Some(RequestInfo {
            correlation_id: id.to_owned(),
            node: node.to_owned(),
            deadline_ms: self.header("request-deadline").and_then(|d| d.parse().ok()),
        })
    }
}

/// Where a client's answer to a request goes: `/reply/<node that waits>`.
pub const REPLY_PREFIX: &str = "/reply/";

/// Why a destination cannot be published to, if it cannot. `/user/queue/<name>` needs
/// a target (`targeted`: the record names a user or a session).
pub fn check_publish_destination(d: &str, targeted: bool) -> Result<(), String> {
    let name = d
        .strip_prefix("/topic/")
        .or_else(|| d.strip_prefix("/user/queue/").filter(|_| targeted));
    if name.is_none_or(str::is_empty) {
        return Err(if targeted {
            "destination must be /topic/<name> or /user/queue/<name>".into()
        } else if d.starts_with("/user/") {
            "a /user/queue/<name> destination needs a user or a session".into()
        } else {
            "destination must be /topic/<name>".into()
        });
    }
    if crate::routing::rule::is_pattern(d) {
        return Err("destination must not hold wildcards".into());
    }
    if d.contains(['\r', '\n', '\0']) {
        return Err("destination must not hold CR, LF or NUL".into());
    }
    Ok(())
}

/// Why a header cannot travel on a record, if it cannot.
pub fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains([':', '\r', '\n', '\0']) {
        return Err(format!("invalid header name {name:?}"));
    }
    if NODE_HEADERS.contains(&name) || REQUEST_HEADERS.contains(&name) {
        return Err(format!("header {name} is set by the node"));
    }
    Ok(())
}

/// CR and LF replaced by spaces: for STOMP 1.0, which cannot carry them in a header,
/// and for texts that go out before a version is known.
pub fn sanitize(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// A header value as a record keeps it: as given (1.1 and 1.2 subscribers get it
/// escaped, losslessly; 1.0 ones get CR and LF as spaces), but NUL, which ends a STOMP
/// frame, becomes a space.
pub fn header_value(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', " ")
    } else {
        s.to_owned()
    }
}

/// What travels on the replies stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplyKind {
    /// The answer (a client's SEND to `reply-to`, or a third party's callback).
    #[default]
    Answer,
    /// Not an answer: a client received the request (so a timeout can say so).
    Delivered,
    /// To the node that received a callback: a waiter took it (`correlation_id` is
    /// the callback's confirmation id).
    Taken,
    /// To the node that received a callback addressed to one node: nobody waits for it.
    NoWaiter,
    /// An operator's command to every node (the admin API); the body says what.
    Command,
    /// A node's answer to a command, to the node that sent it.
    Report,
}

impl ReplyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyKind::Answer => "answer",
            ReplyKind::Delivered => "delivered",
            ReplyKind::Taken => "taken",
            ReplyKind::NoWaiter => "no-waiter",
            ReplyKind::Command => "command",
            ReplyKind::Report => "report",
        }
    }

    pub fn parse(s: &str) -> Option<ReplyKind> {
        [
            ReplyKind::Answer,
            ReplyKind::Delivered,
            ReplyKind::Taken,
            ReplyKind::NoWaiter,
            ReplyKind::Command,
            ReplyKind::Report,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// The client session that answered a request (a STOMP SEND to `reply-to`), as the
/// node that holds it vouches: the waiting node checks it against the request's target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answerer {
    pub session: String,
    pub user: Option<String>,
}

/// A reply on its way to the waiting caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    pub correlation_id: String,
    /// The node whose caller waits; `None` when unknown (a callback): every node looks.
    pub node: Option<String>,
    pub kind: ReplyKind,
    /// `Some` for a client's answer; `None` for a callback or a backend's record.
    pub answerer: Option<Answerer>,
    /// A callback that wants to hear whether a waiter took it: (node, confirmation id).
    pub confirm: Option<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// Why a correlation id cannot be used, if it cannot. It travels in STOMP headers,
/// Kafka headers and URL paths, so it keeps to a plain alphabet.
pub fn check_correlation_id(id: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@');
    if id.is_empty() || id.len() > 200 || !id.chars().all(ok) {
        return Err("correlation id must be 1-200 characters of A-Z a-z 0-9 - _ . : @".into());
    }
    Ok(())
}

/// A record as the cluster stream hands it to a node, with its cluster-wide id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: String,
    pub record: Record,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("record rejected: {0}")]
    Rejected(String),
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Where the bus hands every record of the cluster stream.
pub type DeliverFn = Arc<dyn Fn(Delivery) + Send + Sync>;
/// Where the bus hands every reply of the cluster.
pub type ReplyFn = Arc<dyn Fn(Reply) + Send + Sync>;
/// Where the bus says it reads a stream (partition) from offset `from` on, and that
/// records before `live` are history: they fill the node's replay window (so clients
/// that move here can resume) but reach no subscriber. What came before `from` is not
/// in the window.
pub type StartedFn = Arc<dyn Fn(&str, i64, i64) + Send + Sync>;

/// Publish records and replies; receive the cluster's streams of both.
pub trait Bus: Send + Sync + 'static {
    /// Starts delivering the cluster stream to `deliver` and replies to `reply`, telling
    /// `started` where it begins reading each stream; skipped records are counted in
    /// `stats`. Called once, inside the node's runtime.
    fn start(&self, deliver: DeliverFn, reply: ReplyFn, started: StartedFn, stats: Arc<Stats>);
    /// Publishes; resolves with the record's id once the bus accepted it.
    fn publish(&self, record: Record) -> BoxFuture<Result<String, BusError>>;
    /// Sends a reply towards the node whose caller waits.
    fn reply(&self, reply: Reply) -> BoxFuture<Result<(), BusError>>;
    /// True when publishing and receiving work.
    fn ready(&self) -> bool;
    /// A connection of `user` is here: resolves once the node reads what is published
    /// to that user (on Kafka: the targeted partition the user hashes to), or after a
    /// while anyway. Called before CONNECTED is sent.
    fn follow(&self, user: &str) -> BoxFuture<()> {
        let _ = user;
        Box::pin(std::future::ready(()))
    }
    /// A connection of `user` closed (each [`Bus::follow`] is matched by one of these).
    fn unfollow(&self, user: &str) {
        let _ = user;
    }
    /// Whether `stream` may carry records for a subscription of `user` (a resume looks
    /// only at those: on Kafka a targeted partition carries one user's records only if
    /// the user hashes to it, and a resumed subscription's session is new, so no
    /// earlier session push is for it).
    fn carries(&self, stream: &str, user: Option<&str>) -> bool {
        let _ = (stream, user);
        true
    }
    /// The one stream that carries records for `user` alone (on Kafka: the user's
    /// targeted partition), if the bus has such streams.
    fn stream_of(&self, user: &str) -> Option<String> {
        let _ = user;
        None
    }
    /// True when this node is the whole cluster (standalone): a reply for no local
    /// waiter has nobody else to reach.
    fn is_local(&self) -> bool {
        false
    }
    /// The records of `stream` with offsets `from..=to`, from the bus's log: for a
    /// client resuming from before the node's replay window. `Ok(None)` when the log
    /// no longer holds them all (retention), or when the bus keeps no log.
    fn read(
        &self,
        stream: &str,
        from: i64,
        to: i64,
    ) -> BoxFuture<Result<Option<Vec<Delivery>>, BusError>> {
        let _ = (stream, from, to);
        Box::pin(std::future::ready(Ok(None)))
    }
}

/// In-process bus: a publish is delivered at once; ids are `<node>-<seq>`.
pub struct MemoryBus {
    node_id: String,
    seq: AtomicU64,
    deliver: OnceLock<(DeliverFn, ReplyFn)>,
}

impl MemoryBus {
    pub fn new(node_id: &str) -> MemoryBus {
        MemoryBus {
            node_id: node_id.to_string(),
            seq: AtomicU64::new(0),
            deliver: OnceLock::new(),
        }
    }
}

impl Bus for MemoryBus {
    fn start(&self, deliver: DeliverFn, reply: ReplyFn, started: StartedFn, _stats: Arc<Stats>) {
        // One stream, the node itself; ids count from 1.
        let next = self.seq.load(Ordering::Relaxed) as i64 + 1;
        started(&self.node_id, next, next);
        let _ = self.deliver.set((deliver, reply));
    }

    fn publish(&self, record: Record) -> BoxFuture<Result<String, BusError>> {
        let result = match self.deliver.get() {
            Some((deliver, _)) => {
                let mut record = record;
                if record.at_us == 0 {
                    record.at_us = unix_us();
                }
                let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
                let id = format!("{}-{}", self.node_id, seq);
                deliver(Delivery {
                    id: id.clone(),
                    record,
                });
                Ok(id)
            }
            None => Err(BusError::Unavailable("bus not started".into())),
        };
        Box::pin(std::future::ready(result))
    }

    fn reply(&self, reply: Reply) -> BoxFuture<Result<(), BusError>> {
        let result = match self.deliver.get() {
            Some((_, on_reply)) => {
                on_reply(reply);
                Ok(())
            }
            None => Err(BusError::Unavailable("bus not started".into())),
        };
        Box::pin(std::future::ready(result))
    }

    fn ready(&self) -> bool {
        self.deliver.get().is_some()
    }

    fn is_local(&self) -> bool {
        true
    }
}
