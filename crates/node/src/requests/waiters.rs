//! Requests waiting for their reply, keyed by correlation id. Each waiter removes
//! itself at its own deadline (or when its caller goes away): nothing sweeps the map.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::bus::{Reply, ReplyKind};
use crate::stats::Stats;

/// Whom a request went to, and so which client may answer it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) user: Option<String>,
    pub(crate) session: Option<String>,
}

impl Target {
    /// True when `reply` may complete a request sent to this target: callbacks and
    /// backends (no answerer) always; a client only when it is the target, and never
    /// for a rendezvous-only wait (no target).
    fn accepts(&self, reply: &Reply) -> bool {
        let Some(a) = &reply.answerer else {
            return true;
        };
        if self.user.is_none() && self.session.is_none() {
            return false;
        }
        self.user
            .as_ref()
            .is_none_or(|u| a.user.as_ref() == Some(u))
            && self.session.as_ref().is_none_or(|s| &a.session == s)
    }
}

struct Entry {
    /// Tells this registration from a later one under the same id.
    token: u64,
    tx: oneshot::Sender<Reply>,
    delivered: bool,
    target: Target,
}

/// What became of a reply handed to [`Waiters::complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Completion {
    /// A waiter here took it (or noted the delivery).
    Taken,
    /// Nobody here waits for it: counted late.
    NoWaiter,
    /// A client that may not answer this request: counted, the waiter keeps waiting.
    Refused,
}

pub(crate) struct Waiters {
    map: Mutex<HashMap<String, Entry>>,
    next_token: AtomicU64,
    max: usize,
    stats: Arc<Stats>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RegisterError {
    /// A request with this correlation id is already waiting here.
    Pending,
    /// `max_waiters` requests are waiting.
    Full,
}

/// How a wait ended without a reply.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TimedOut {
    /// Some node reported that a client received the request.
    pub(crate) delivered: bool,
}

/// One registered waiter; dropping it (caller gone, timeout) removes the entry.
pub(crate) struct Pending {
    waiters: Arc<Waiters>,
    id: String,
    token: u64,
    rx: oneshot::Receiver<Reply>,
}

impl Waiters {
    pub(crate) fn new(max: usize, stats: Arc<Stats>) -> Waiters {
        Waiters {
            map: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(0),
            max,
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn register(
        self: &Arc<Self>,
        id: &str,
        target: Target,
    ) -> Result<Pending, RegisterError> {
        let (tx, rx) = oneshot::channel();
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let mut map = self.lock();
        if map.contains_key(id) {
            return Err(RegisterError::Pending);
        }
        if map.len() >= self.max {
            return Err(RegisterError::Full);
        }
        map.insert(
            id.to_owned(),
            Entry {
                token,
                tx,
                delivered: false,
                target,
            },
        );
        drop(map);
        Stats::add(&self.stats.waiters, 1);
        Ok(Pending {
            waiters: self.clone(),
            id: id.to_owned(),
            token,
            rx,
        })
    }

    /// Hands a reply to its waiter if its sender may answer it; one for nobody is
    /// counted and dropped, one from a client that may not answer is counted and
    /// refused (the waiter keeps waiting).
    pub(crate) fn complete(&self, reply: Reply) -> Completion {
        let mut map = self.lock();
        match reply.kind {
            ReplyKind::Delivered => match map.get_mut(&reply.correlation_id) {
                Some(e) => {
                    e.delivered = true;
                    Completion::Taken
                }
                None => Completion::NoWaiter,
            },
            ReplyKind::Answer => {
                let accepted = match map.get(&reply.correlation_id) {
                    Some(e) => e.target.accepts(&reply),
                    None => {
                        drop(map);
                        Stats::inc(&self.stats.replies_late_total);
                        return Completion::NoWaiter;
                    }
                };
                if !accepted {
                    drop(map);
                    Stats::inc(&self.stats.replies_refused_total);
                    tracing::warn!(correlation_id = %reply.correlation_id,
                        session = ?reply.answerer.as_ref().map(|a| &a.session),
                        "answer from a client the request was not sent to: refused");
                    return Completion::Refused;
                }
                let Some(e) = map.remove(&reply.correlation_id) else {
                    return Completion::NoWaiter;
                };
                drop(map);
                Stats::add(&self.stats.waiters, -1);
                // The caller may be gone this very moment: then the reply is late.
                if e.tx.send(reply).is_err() {
                    Stats::inc(&self.stats.replies_late_total);
                }
                Completion::Taken
            }
            // Confirmations and admin traffic are not for waiters.
            ReplyKind::Taken | ReplyKind::NoWaiter | ReplyKind::Command | ReplyKind::Report => {
                Completion::NoWaiter
            }
        }
    }

    /// True when a request with this id waits here.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// Removes this registration if it is still there; returns its `delivered` flag.
    fn remove(&self, id: &str, token: u64) -> Option<bool> {
        let mut map = self.lock();
        if map.get(id).is_some_and(|e| e.token == token) {
            let e = map.remove(id)?;
            drop(map);
            Stats::add(&self.stats.waiters, -1);
            return Some(e.delivered);
        }
        None
    }
}

impl Pending {
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Waits for the reply until `timeout`.
    pub(crate) async fn wait(mut self, timeout: Duration) -> Result<Reply, TimedOut> {
        if let Ok(Ok(reply)) = tokio::time::timeout(timeout, &mut self.rx).await {
            return Ok(reply);
        }
        match self.waiters.remove(&self.id, self.token) {
            Some(delivered) => Err(TimedOut { delivered }),
            // Completed between the deadline and the removal: the reply won.
            None => self.rx.try_recv().map_err(|_| TimedOut { delivered: true }),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.waiters.remove(&self.id, self.token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(id: &str, kind: ReplyKind) -> Reply {
        Reply {
            correlation_id: id.into(),
            kind,
            ..Reply::default()
        }
    }

    fn answer_from(id: &str, session: &str, user: Option<&str>) -> Reply {
        Reply {
            answerer: Some(crate::bus::Answerer {
                session: session.into(),
                user: user.map(Into::into),
            }),
            ..reply(id, ReplyKind::Answer)
        }
    }

    fn to_user(u: &str) -> Target {
        Target {
            user: Some(u.into()),
            session: None,
        }
    }

    #[tokio::test]
    async fn only_the_target_or_a_callback_completes_a_wait() {
        let w = Arc::new(Waiters::new(10, Arc::new(Stats::default())));
        let alice = w.register("a", to_user("alice")).expect("registered");
        let rendezvous = w.register("r", Target::default()).expect("registered");
        let one = w
            .register(
                "s",
                Target {
                    user: None,
                    session: Some("n1-x-1".into()),
                },
            )
            .expect("registered");
        let refused = Completion::Refused;
        assert_eq!(
            w.complete(answer_from("a", "n1-x-2", Some("mallory"))),
            refused
        );
        assert_eq!(w.complete(answer_from("a", "n1-x-3", None)), refused);
        assert_eq!(
            w.complete(answer_from("r", "n1-x-1", Some("alice"))),
            refused
        );
        assert_eq!(
            w.complete(answer_from("s", "n1-x-2", Some("alice"))),
            refused
        );
        assert_eq!(w.stats.replies_refused_total.load(Ordering::Relaxed), 4);
        assert!(w.contains("a") && w.contains("r") && w.contains("s"));
        let taken = Completion::Taken;
        assert_eq!(w.complete(answer_from("a", "n2-y-9", Some("alice"))), taken);
        assert_eq!(w.complete(reply("r", ReplyKind::Answer)), taken);
        assert_eq!(w.complete(answer_from("s", "n1-x-1", None)), taken);
        for p in [alice, rendezvous, one] {
            assert!(p.wait(Duration::from_secs(1)).await.is_ok());
        }
    }

    fn gauge(w: &Waiters) -> i64 {
        w.stats.waiters.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn a_reply_completes_its_waiter_once() {
        let w = Arc::new(Waiters::new(10, Arc::new(Stats::default())));
        let p = w.register("a", to_user("u")).expect("registered");
        assert_eq!(
            w.register("a", to_user("u")).err(),
            Some(RegisterError::Pending)
        );
        assert_eq!(
            w.complete(reply("a", ReplyKind::Delivered)),
            Completion::Taken
        );
        assert_eq!(w.complete(reply("a", ReplyKind::Answer)), Completion::Taken);
        assert!(p.wait(Duration::from_secs(1)).await.is_ok());
        assert_eq!(
            w.complete(reply("a", ReplyKind::Answer)),
            Completion::NoWaiter
        );
        assert_eq!(w.stats.replies_late_total.load(Ordering::Relaxed), 1);
        assert_eq!(gauge(&w), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_leaves_at_its_deadline_saying_whether_it_was_delivered() {
        let w = Arc::new(Waiters::new(10, Arc::new(Stats::default())));
        let a = w.register("a", to_user("u")).expect("registered");
        let b = w.register("b", to_user("u")).expect("registered");
        w.complete(reply("b", ReplyKind::Delivered));
        assert_eq!(
            a.wait(Duration::from_millis(5)).await.err(),
            Some(TimedOut { delivered: false })
        );
        assert_eq!(
            b.wait(Duration::from_millis(5)).await.err(),
            Some(TimedOut { delivered: true })
        );
        assert!(!w.contains("a") && !w.contains("b"));
        assert_eq!(gauge(&w), 0);
    }

    #[test]
    fn dropped_waiters_leave_and_the_map_is_bounded() {
        let w = Arc::new(Waiters::new(1, Arc::new(Stats::default())));
        let a = w.register("a", Target::default()).expect("registered");
        assert_eq!(
            w.register("b", Target::default()).err(),
            Some(RegisterError::Full)
        );
        drop(a);
        assert_eq!(gauge(&w), 0);
        let _b = w.register("b", Target::default()).expect("room again");
        assert_eq!(gauge(&w), 1);
    }
}
