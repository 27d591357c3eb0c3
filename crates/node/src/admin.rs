//! Operators' commands to the whole cluster (docs/http-api.md, "Admin"). The node an
//! operator calls sends the command on the replies stream to every node (a reply that
//! names no node); each node carries it out on its own sessions and reports to the
//! node that asked, which answers once every node the registry lists has reported or
//! `admin_timeout` passed, naming the nodes that did not.

pub(crate) mod gather;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::bus::{BusError, Reply, ReplyKind, unix_ms};
use crate::routing::router::{Router, Target};
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
pub(crate) struct Collecting<'a> {
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

impl Admin {
    /// A command or a report from the bus, on node `me`: a command is carried out on
    /// this node's sessions; the report to send back, if it goes to another node.
    pub(crate) fn handle(
        &self,
        reply: Reply,
        me: &str,
        router: &Router,
        stats: &Stats,
    ) -> Option<Reply> {
        match reply.kind {
            ReplyKind::Command => {
                let Ok(Envelope { from, command }) =
                    serde_json::from_slice::<Envelope>(&reply.body)
                else {
                    Stats::inc(&stats.bus_records_skipped_total);
                    tracing::debug!(id = %reply.correlation_id, "unreadable admin command skipped");
                    return None;
                };
                tracing::debug!(id = %reply.correlation_id, from, ?command, "admin command");
                let result = self.carry_out(command, router, stats);
                if from == me {
                    self.collect(&reply.correlation_id, me.to_string(), result);
                    return None;
                }
                let report = Report {
                    node: me.to_string(),
                    result,
                };
                let body = serde_json::to_vec(&report).ok()?;
                Some(Reply {
                    correlation_id: reply.correlation_id,
                    node: Some(from),
                    kind: ReplyKind::Report,
                    body: Bytes::from(body),
                    ..Reply::default()
                })
            }
            ReplyKind::Report => {
                if reply.node.as_deref() != Some(me) {
                    return None;
                }
                match serde_json::from_slice::<Report>(&reply.body) {
                    Ok(r) => self.collect(&reply.correlation_id, r.node, r.result),
                    Err(_) => Stats::inc(&stats.bus_records_skipped_total),
                }
                None
            }
            _ => None,
        }
    }

    fn collect(&self, id: &str, from: String, result: Value) {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = waiting.get(id) {
            let _ = tx.send((from, result));
        }
    }

    /// Waits for the reports of command `id`: their receiver, and a guard that stops
    /// the waiting when dropped.
    pub(crate) fn wait_for(
        &self,
        id: &str,
    ) -> Result<(Collecting<'_>, mpsc::UnboundedReceiver<(String, Value)>), BusError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if waiting.len() >= MAX_IN_FLIGHT {
            return Err(BusError::Unavailable(format!(
                "{MAX_IN_FLIGHT} admin commands are in flight on this node"
            )));
        }
        waiting.insert(id.to_string(), tx);
        let guard = Collecting {
            admin: self,
            id: id.to_string(),
        };
        Ok((guard, rx))
    }

    /// The command record for every node.
    pub(crate) fn command(id: String, from: &str, command: Command) -> Result<Reply, BusError> {
        let envelope = Envelope {
            from: from.to_string(),
            command,
        };
        let body = serde_json::to_vec(&envelope).map_err(|e| BusError::Rejected(e.to_string()))?;
        Ok(Reply {
            correlation_id: id,
            node: None,
            kind: ReplyKind::Command,
            body: Bytes::from(body),
            ..Reply::default()
        })
    }

    /// Takes over bans that another node reported.
    pub(crate) fn take_bans(&self, result: &Value) -> usize {
        let mut n = 0;
        for b in result["bans"].as_array().into_iter().flatten() {
            if let (Some(u), Some(until)) = (b["user"].as_str(), b["until_ms"].as_u64()) {
                self.ban(u, until);
                n += 1;
            }
        }
        n
    }
}

fn target(user: Option<String>, session: Option<String>) -> Option<Target> {
    match (user, session) {
        (_, Some(s)) => Some(Target::Session(s)),
        (Some(u), None) => Some(Target::User(u)),
        (None, None) => None,
    }
}

impl Admin {
    /// Carries out a command on this node's sessions; what it did.
    fn carry_out(&self, command: Command, router: &Router, stats: &Stats) -> Value {
        match command {
            Command::Disconnect {
                user,
                session,
                reason,
                reconnect,
                ban_until,
            } => {
                if let (Some(u), Some(until)) = (&user, ban_until) {
                    self.ban(u, until);
                }
                let closed = target(user, session).map_or(0, |t| {
                    router.close(&t, &crate::bus::sanitize(&reason), reconnect)
                });
                stats
                    .admin_disconnects_total
                    .fetch_add(closed as u64, std::sync::atomic::Ordering::Relaxed);
                json!({"closed": closed})
            }
            Command::Unsubscribe {
                user,
                session,
                destination,
            } => {
                let ended =
                    target(user, session).map_or(0, |t| router.end_subscriptions(&t, &destination));
                stats
                    .admin_unsubscribes_total
                    .fetch_add(ended as u64, std::sync::atomic::Ordering::Relaxed);
                json!({"unsubscribed": ended})
            }
            Command::Presence { user } => {
                let sessions: Vec<Value> = router
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
                let (exact, patterns) = router.reach(&destination);
                json!({"subscribers": exact + patterns, "exact": exact, "patterns": patterns})
            }
            Command::Bans => {
                let bans: Vec<Value> = self
                    .bans()
                    .into_iter()
                    .map(|(user, until)| json!({"user": user, "until_ms": until}))
                    .collect();
                json!({"bans": bans})
            }
        }
    }
}
