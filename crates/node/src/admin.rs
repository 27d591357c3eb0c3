//! Operators' commands to the whole cluster (docs/http-api.md, "Admin"). The node an
//! operator calls sends the command on the replies stream to every node (a reply that
//! names no node); each node carries it out on its own sessions and reports to the
//! node that asked, which answers once every node the registry lists has reported or
//! `admin_timeout` passed, naming the nodes that did not.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::bus::{BusError, Reply, ReplyKind, unix_ms};
use crate::node::Node;
use crate::routing::router::Target;
use crate::stats::Stats;

/// What a command asks of every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Command {
    /// Close the target's sessions with an ERROR; ban the user until `ban_until`
    /// (unix ms) when given.
    Disconnect {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<String>,
        reason: String,
        reconnect: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ban_until: Option<u64>,
    },
    /// End the target's subscriptions to `destination`.
    Unsubscribe {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<String>,
        destination: String,
    },
    /// The user's sessions.
    Presence { user: String },
    /// Subscriptions a broadcast to `destination` reaches.
    Destination { destination: String },
    /// The bans a node holds (a starting node asks its peers).
    Bans,
}

/// A command on the bus: who asked, and what.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    from: String,
    command: Command,
}

/// A node's report on the bus.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    node: String,
    result: Value,
}

/// What the node that asked gathered.
#[derive(Debug)]
pub(crate) struct Gathered {
    /// Each node's result, by node id.
    pub(crate) results: BTreeMap<String, Value>,
    /// Nodes the registry lists that did not report in time.
    pub(crate) missing: Vec<String>,
    /// Why the registry could not list the nodes (then only reports that came count).
    pub(crate) registry_error: Option<String>,
}

/// Commands in flight from this node at most: each holds a collector until it ends.
const MAX_IN_FLIGHT: usize = 256;
/// Bans a node keeps at most (expired ones go first).
pub(crate) const MAX_BANS: usize = 100_000;
/// Texts in commands (ids, destinations, reasons), in bytes at most.
pub(crate) const MAX_TEXT: usize = 512;

#[derive(Default)]
pub(crate) struct Admin {
    /// User → banned until (unix ms).
    bans: Mutex<HashMap<String, u64>>,
    /// Command id → where its reports go.
    waiting: Mutex<HashMap<String, mpsc::UnboundedSender<(String, Value)>>>,
}

impl Admin {
    /// Until when `user` is banned, if it is now.
    pub(crate) fn banned(&self, user: &str) -> Option<u64> {
        let bans = self.bans.lock().unwrap_or_else(|e| e.into_inner());
        bans.get(user).copied().filter(|&until| until > unix_ms())
    }

    fn ban(&self, user: &str, until: u64) {
        let now = unix_ms();
        if until <= now {
            return;
        }
        let mut bans = self.bans.lock().unwrap_or_else(|e| e.into_inner());
        if bans.len() >= MAX_BANS && !bans.contains_key(user) {
            bans.retain(|_, &mut t| t > now);
            if bans.len() >= MAX_BANS {
                tracing::warn!(user, "ban list full ({MAX_BANS}): ban not kept");
                return;
            }
        }
        let at = bans.entry(user.to_owned()).or_insert(0);
        *at = (*at).max(until);
    }

    fn bans(&self) -> Vec<(String, u64)> {
        let now = unix_ms();
        let mut bans = self.bans.lock().unwrap_or_else(|e| e.into_inner());
        bans.retain(|_, &mut t| t > now);
        bans.iter().map(|(u, t)| (u.clone(), *t)).collect()
    }
}

/// Removes a command's collector however the gathering ends.
struct Collecting<'a> {
    admin: &'a Admin,
    id: String,
}

impl Drop for Collecting<'_> {
    fn drop(&mut self) {
        self.admin
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// Sends `command` to every node and gathers their reports.
pub(crate) async fn gather(node: &Arc<Node>, command: Command) -> Result<Gathered, BusError> {
    let me = node.config.node_id.clone();
    let deadline = tokio::time::Instant::now() + node.config.admin_timeout;
    // The registry's list now: a node that died is listed until its lease ends, and
    // then named missing.
    let listed = tokio::time::timeout_at(deadline, node.registrar.peers()).await;
    let (peers, registry_error) = match listed {
        Ok(Ok(peers)) => (peers, None),
        Ok(Err(e)) => (Vec::new(), Some(e)),
        Err(_) => (
            Vec::new(),
            Some("the registry did not answer in time".to_string()),
        ),
    };
    let expected: BTreeSet<String> = peers
        .into_iter()
        .chain(std::iter::once(me.clone()))
        .collect();
    let id = node.next_correlation_id();
    let (tx, mut rx) = mpsc::unbounded_channel();
    {
        let mut waiting = node.admin.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if waiting.len() >= MAX_IN_FLIGHT {
            return Err(BusError::Unavailable(format!(
                "{MAX_IN_FLIGHT} admin commands are in flight on this node"
            )));
        }
        waiting.insert(id.clone(), tx);
    }
    let _collecting = Collecting {
        admin: &node.admin,
        id: id.clone(),
    };
    let envelope = Envelope { from: me, command };
    let body = serde_json::to_vec(&envelope).map_err(|e| BusError::Rejected(e.to_string()))?;
    tokio::time::timeout_at(
        deadline,
        node.send_reply(Reply {
            correlation_id: id,
            node: None,
            kind: ReplyKind::Command,
            body: Bytes::from(body),
            ..Reply::default()
        }),
    )
    .await
    .map_err(|_| BusError::Unavailable("timed out".into()))??;
    let mut results = BTreeMap::new();
    while !expected.iter().all(|n| results.contains_key(n)) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((from, result))) => {
                results.insert(from, result);
            }
            Ok(None) | Err(_) => break,
        }
    }
    let missing = expected
        .into_iter()
        .filter(|n| !results.contains_key(n))
        .collect();
    Ok(Gathered {
        results,
        missing,
        registry_error,
    })
}

/// A command or a report from the bus.
pub(crate) fn on_reply(node: &Arc<Node>, reply: Reply) {
    match reply.kind {
        ReplyKind::Command => {
            let Ok(Envelope { from, command }) = serde_json::from_slice::<Envelope>(&reply.body)
            else {
                Stats::inc(&node.stats.bus_records_skipped_total);
                tracing::debug!(id = %reply.correlation_id, "unreadable admin command skipped");
                return;
            };
            tracing::debug!(id = %reply.correlation_id, from, ?command, "admin command");
            let result = carry_out(node, command);
            tracing::debug!(id = %reply.correlation_id, %result, "admin command carried out");
            let me = node.config.node_id.clone();
            if from == me {
                collect(node, &reply.correlation_id, me, result);
                return;
            }
            let report = Report { node: me, result };
            let Ok(body) = serde_json::to_vec(&report) else {
                return;
            };
            let node2 = node.clone();
            node.runtime.spawn(async move {
                let r = Reply {
                    correlation_id: reply.correlation_id,
                    node: Some(from),
                    kind: ReplyKind::Report,
                    body: Bytes::from(body),
                    ..Reply::default()
                };
                if let Err(e) = node2.send_reply(r).await {
                    tracing::debug!(error = %e, "cannot report on an admin command");
                }
            });
        }
        ReplyKind::Report => {
            if reply.node.as_deref() != Some(node.config.node_id.as_str()) {
                return;
            }
            match serde_json::from_slice::<Report>(&reply.body) {
                Ok(r) => collect(node, &reply.correlation_id, r.node, r.result),
                Err(_) => Stats::inc(&node.stats.bus_records_skipped_total),
            }
        }
        _ => {}
    }
}

fn collect(node: &Node, id: &str, from: String, result: Value) {
    let waiting = node.admin.waiting.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(tx) = waiting.get(id) {
        let _ = tx.send((from, result));
    }
}

fn target(user: Option<String>, session: Option<String>) -> Option<Target> {
    match (user, session) {
        (_, Some(s)) => Some(Target::Session(s)),
        (Some(u), None) => Some(Target::User(u)),
        (None, None) => None,
    }
}

/// Carries out a command on this node's sessions; what it did.
fn carry_out(node: &Node, command: Command) -> Value {
    match command {
        Command::Disconnect {
            user,
            session,
            reason,
            reconnect,
            ban_until,
        } => {
            if let (Some(u), Some(until)) = (&user, ban_until) {
                node.admin.ban(u, until);
            }
            let closed = target(user, session).map_or(0, |t| {
                node.router
                    .close(&t, &crate::bus::sanitize(&reason), reconnect)
            });
            node.stats
                .admin_disconnects_total
                .fetch_add(closed as u64, std::sync::atomic::Ordering::Relaxed);
            json!({"closed": closed})
        }
        Command::Unsubscribe {
            user,
            session,
            destination,
        } => {
            let ended = target(user, session)
                .map_or(0, |t| node.router.end_subscriptions(&t, &destination));
            node.stats
                .admin_unsubscribes_total
                .fetch_add(ended as u64, std::sync::atomic::Ordering::Relaxed);
            json!({"unsubscribed": ended})
        }
        Command::Presence { user } => {
            let sessions: Vec<Value> = node
                .router
                .presence(&user)
                .into_iter()
                .map(|p| {
                    json!({
                        "session": p.session,
                        "connected_since_ms": p.since,
                        "subscriptions": p.subscriptions,
                    })
                })
                .collect();
            json!({"sessions": sessions})
        }
        Command::Destination { destination } => {
            let (exact, patterns) = node.router.reach(&destination);
            json!({"subscribers": exact + patterns, "exact": exact, "patterns": patterns})
        }
        Command::Bans => {
            let bans: Vec<Value> = node
                .admin
                .bans()
                .into_iter()
                .map(|(user, until)| json!({"user": user, "until_ms": until}))
                .collect();
            json!({"bans": bans})
        }
    }
}

/// A starting node takes over the bans its peers hold (bans live in the nodes'
/// memory: docs/http-api.md).
pub(crate) async fn take_over_bans(node: &Arc<Node>) {
    if node.bus.is_local() {
        return;
    }
    let Ok(g) = gather(node, Command::Bans).await else {
        return;
    };
    let mut n = 0;
    for result in g.results.values() {
        for b in result["bans"].as_array().into_iter().flatten() {
            if let (Some(u), Some(until)) = (b["user"].as_str(), b["until_ms"].as_u64()) {
                node.admin.ban(u, until);
                n += 1;
            }
        }
    }
    if n > 0 {
        tracing::info!(bans = n, "bans taken over from the other nodes");
    }
}
