//! The topic map: destination → local subscribers. Fan-out encodes the shared part of
//! a MESSAGE once and only ever pushes into bounded per-connection queues.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::bus::Delivery;
use crate::delivery::message::Shared;
use crate::delivery::outbox::{Out, Outbox};
use crate::routing::rule::{self, is_pattern, matches};
use crate::stats::Stats;

pub(crate) type ConnId = u64;

#[derive(Clone)]
struct SubRef {
    conn: ConnId,
    sub: u32,
    outbox: Arc<Outbox>,
}

/// A connection that completed CONNECT, for targeted pushes.
struct Conn {
    outbox: Arc<Outbox>,
    session: String,
    /// Unix milliseconds when it connected.
    since: u64,
    user: Option<String>,
    /// Every subscription of the connection: (slot, destination).
    subs: Vec<(u32, String)>,
    /// It asked for position updates.
    positions: bool,
}

/// One destination's (or pattern's) subscribers: a Vec to fan out over, and where each
/// one sits in it, so that an unsubscribe is O(1) however many share the destination.
#[derive(Default)]
struct SubList {
    list: Vec<SubRef>,
    at: HashMap<(ConnId, u32), usize>,
}

impl SubList {
    fn push(&mut self, r: SubRef) {
        self.at.insert((r.conn, r.sub), self.list.len());
        self.list.push(r);
    }

    /// True when it was there.
    fn remove(&mut self, conn: ConnId, sub: u32) -> bool {
        let Some(i) = self.at.remove(&(conn, sub)) else {
            return false;
        };
        self.list.swap_remove(i);
        if let Some(moved) = self.list.get(i) {
            self.at.insert((moved.conn, moved.sub), i);
        }
        true
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[derive(Default)]
struct Topics {
    exact: HashMap<String, SubList>,
    /// Pattern → its subscribers: a message tests each distinct pattern once.
    patterns: HashMap<String, SubList>,
    conns: HashMap<ConnId, Conn>,
    /// Session id → connection, user → connections: a targeted record costs one
    /// lookup on every node, and nothing more on the nodes that do not hold it.
    sessions: HashMap<String, ConnId>,
    users: HashMap<String, Vec<ConnId>>,
}

impl Topics {
    fn map(&mut self, destination: &str) -> &mut HashMap<String, SubList> {
        if is_pattern(destination) {
            &mut self.patterns
        } else {
            &mut self.exact
        }
    }
}

/// Whom an operator's order is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    User(String),
    Session(String),
}

/// A session as presence shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Presence {
    pub(crate) session: String,
    pub(crate) since: u64,
    pub(crate) subscriptions: Vec<String>,
}

pub(crate) struct Router {
    topics: RwLock<Topics>,
    stats: Arc<Stats>,
    /// Distinct wildcard patterns the node holds at most: each costs a match per
    /// record on the consumer's thread.
    max_patterns: usize,
}

impl Router {
    pub(crate) fn new(stats: Arc<Stats>) -> Router {
        Router {
            topics: RwLock::new(Topics::default()),
            stats,
            max_patterns: usize::MAX,
        }
    }

    /// At most `n` distinct wildcard patterns on this node.
    pub(crate) fn limit_patterns(mut self, n: usize) -> Router {
        self.max_patterns = n;
        self
    }

    // A panic under these locks leaves the maps consistent (every change is one map
    // operation), so a poisoned lock is taken over rather than skipped.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Topics> {
        self.topics.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Topics> {
        self.topics.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes a connection reachable by its session id and user; refused when its user
    /// holds `per_user` connections here already (0: no limit).
    pub(crate) fn attach(
        &self,
        conn: ConnId,
        session: &str,
        user: Option<&str>,
        positions: bool,
        outbox: Arc<Outbox>,
        per_user: usize,
    ) -> Result<(), usize> {
        let mut t = self.write();
        if let Some(u) = user {
            let held = t.users.get(u).map_or(0, Vec::len);
            if per_user > 0 && held >= per_user {
                return Err(held);
            }
            t.users.entry(u.to_owned()).or_default().push(conn);
        }
        t.sessions.insert(session.to_owned(), conn);
        t.conns.insert(
            conn,
            Conn {
                outbox,
                session: session.to_owned(),
                since: crate::bus::unix_ms(),
                user: user.map(str::to_owned),
                subs: Vec::new(),
                positions,
            },
        );
        Ok(())
    }

    /// The connections an operator's order is for: a session, or every session of a user.
    fn targets<'t>(t: &'t Topics, target: &Target) -> Vec<(ConnId, &'t Conn)> {
        let ids: &[ConnId] = match target {
            Target::Session(s) => t.sessions.get(s).map_or(&[], std::slice::from_ref),
            Target::User(u) => t.users.get(u).map_or(&[], Vec::as_slice),
        };
        ids.iter()
            .filter_map(|id| Some((*id, t.conns.get(id)?)))
            .collect()
    }

    /// Tells the target's connections to close with `message`; how many were told.
    pub(crate) fn close(&self, target: &Target, message: &str, reconnect: bool) -> usize {
        let t = self.read();
        let conns = Router::targets(&t, target);
        let message: Arc<str> = Arc::from(message);
        for (_, c) in &conns {
            c.outbox.push_control(Out::Close {
                message: message.clone(),
                reconnect,
            });
        }
        conns.len()
    }

    /// Ends the target's subscriptions to exactly `destination` (as subscribed, pattern
    /// or not); how many ended.
    pub(crate) fn end_subscriptions(&self, target: &Target, destination: &str) -> usize {
        let ended: Vec<(ConnId, u32, Arc<Outbox>)> = {
            let t = self.read();
            Router::targets(&t, target)
                .into_iter()
                .flat_map(|(id, c)| {
                    c.subs
                        .iter()
                        .filter(|(_, d)| d == destination)
                        .map(move |(slot, _)| (id, *slot, c.outbox.clone()))
                })
                .collect()
        };
        for (conn, slot, outbox) in &ended {
            self.unsubscribe(destination, *conn, *slot);
            outbox.push_control(Out::Unsubscribed { sub: *slot });
        }
        ended.len()
    }

    /// The sessions of `user` here.
    pub(crate) fn presence(&self, user: &str) -> Vec<Presence> {
        let t = self.read();
        Router::targets(&t, &Target::User(user.to_owned()))
            .into_iter()
            .map(|(_, c)| Presence {
                session: c.session.clone(),
                since: c.since,
                subscriptions: c.subs.iter().map(|(_, d)| d.clone()).collect(),
            })
            .collect()
    }

    /// Subscriptions here that a broadcast to `destination` reaches: (exact,
    /// through a pattern).
    pub(crate) fn reach(&self, destination: &str) -> (usize, usize) {
        let t = self.read();
        let exact = t.exact.get(destination).map_or(0, |l| l.list.len());
        let wild = t
            .patterns
            .iter()
            .filter(|(p, _)| matches(p, destination))
            .map(|(_, l)| l.list.len())
            .sum();
        (exact, wild)
    }

    /// Forgets a connection (its subscriptions go with [`Router::unsubscribe`]).
    pub(crate) fn detach(&self, conn: ConnId, session: &str) {
        let mut t = self.write();
        t.sessions.remove(session);
        let Some(c) = t.conns.remove(&conn) else {
            return;
        };
        if let Some(u) = c.user {
            if let Some(list) = t.users.get_mut(&u) {
                list.retain(|&c| c != conn);
                if list.is_empty() {
                    t.users.remove(&u);
                }
            }
        }
    }

    /// Why `destination` cannot be subscribed to now, if it cannot: a new wildcard
    /// pattern past the node's limit.
    pub(crate) fn can_subscribe(&self, destination: &str) -> Result<(), String> {
        if !is_pattern(destination) || !rule::takes_broadcast(destination) {
            return Ok(());
        }
        let t = self.read();
        if t.patterns.contains_key(destination) || t.patterns.len() < self.max_patterns {
            return Ok(());
        }
        drop(t);
        Stats::inc(&self.stats.patterns_refused_total);
        Err(format!(
            "too many distinct wildcard patterns on this node (limit {})",
            self.max_patterns
        ))
    }

    /// Registers a subscription; refused when it would be a new wildcard pattern past
    /// the node's limit.
    pub(crate) fn subscribe(
        &self,
        destination: &str,
        conn: ConnId,
        sub: u32,
        outbox: Arc<Outbox>,
    ) -> Result<(), String> {
        let r = SubRef { conn, sub, outbox };
        let mut t = self.write();
        let pattern = is_pattern(destination) && rule::takes_broadcast(destination);
        if pattern && !t.patterns.contains_key(destination) && t.patterns.len() >= self.max_patterns
        {
            Stats::inc(&self.stats.patterns_refused_total);
            return Err(format!(
                "too many distinct wildcard patterns on this node (limit {})",
                self.max_patterns
            ));
        }
        if let Some(c) = t.conns.get_mut(&conn) {
            c.subs.push((sub, destination.to_owned()));
        }
        // `/user/queue/...` only ever receives targeted records.
        if rule::takes_broadcast(destination) {
            let map = t.map(destination);
            match map.get_mut(destination) {
                Some(list) => list.push(r),
                None => {
                    let mut list = SubList::default();
                    list.push(r);
                    map.insert(destination.to_string(), list);
                }
            }
        }
        drop(t);
        Stats::add(&self.stats.subscriptions, 1);
        Ok(())
    }

    pub(crate) fn unsubscribe(&self, destination: &str, conn: ConnId, sub: u32) {
        let mut t = self.write();
        let mut was = false;
        if let Some(c) = t.conns.get_mut(&conn) {
            let before = c.subs.len();
            c.subs.retain(|(s, _)| *s != sub);
            was = c.subs.len() < before;
        }
        if rule::takes_broadcast(destination) {
            let map = t.map(destination);
            if let Some(list) = map.get_mut(destination) {
                was |= list.remove(conn, sub);
                if list.is_empty() {
                    map.remove(destination);
                }
            }
        }
        drop(t);
        if was {
            Stats::add(&self.stats.subscriptions, -1);
        }
    }

    /// Queues `position` for every subscription of the connections that asked for
    /// position updates. The caller holds the replay window's lock, and every record
    /// up to `position` has been routed: so each of these subscriptions has everything
    /// up to it queued before this (a resuming one registers under the same lock,
    /// after its replay).
    pub(crate) fn position_update(&self, mut position: impl FnMut(Option<&str>) -> Arc<str>) {
        let t = self.read();
        for c in t
            .conns
            .values()
            .filter(|c| c.positions && !c.subs.is_empty())
        {
            let subs = c.subs.iter().map(|(slot, _)| *slot).collect();
            c.outbox.push(Out::Position {
                subs,
                position: position(c.user.as_deref()),
            });
        }
    }

    /// Pushes a record to every local subscriber of its destination (of its user's or
    /// session's connections only, when it names one); returns how many got it.
    pub(crate) fn deliver(&self, d: &Delivery) -> u64 {
        Stats::inc(&self.stats.messages_received_total);
        let t = self.read();
        if d.record.user.is_some() || d.record.session.is_some() {
            return self.deliver_targeted(&t, d);
        }
        let dest = d.record.destination.as_str();
        let exact = t.exact.get(dest).map_or(&[][..], |l| l.list.as_slice());
        let mut wild = t
            .patterns
            .iter()
            .filter(|(p, _)| matches(p, dest))
            .map(|(_, l)| l.list.as_slice())
            .peekable();
        if exact.is_empty() && wild.peek().is_none() {
            drop(t);
            Stats::inc(&self.stats.messages_unrouted_total);
            return 0;
        }
        // Encoded once, and only when someone is there to receive it: every node
        // sees every record, and most have no subscriber for most of them.
        let Some(shared) = Shared::new(d).map(Arc::new) else {
            return 0;
        };
        let mut n = 0u64;
        for list in std::iter::once(exact).chain(wild) {
            for r in list {
                let out = Out::Message {
                    sub: r.sub,
                    msg: shared.clone(),
                };
                if r.outbox.push_held(out) {
                    n += 1;
                }
            }
        }
        drop(t);
        if n == 0 {
            Stats::inc(&self.stats.messages_unrouted_total);
        }
        self.stats
            .messages_delivered_total
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        n
    }

    fn deliver_targeted(&self, t: &Topics, d: &Delivery) -> u64 {
        let r = &d.record;
        let by_session = r.session.as_ref().map(|s| t.sessions.get(s).copied());
        let conns: &[ConnId] = match (&by_session, &r.user) {
            (Some(Some(c)), _) => std::slice::from_ref(c),
            (Some(None), _) => &[],
            (None, Some(u)) => t.users.get(u).map_or(&[][..], Vec::as_slice),
            (None, None) => &[],
        };
        let dest = r.destination.as_str();
        let mut shared = None;
        let mut n = 0u64;
        for c in conns.iter().filter_map(|id| t.conns.get(id)) {
            if !rule::user_allows(r.user.as_deref(), c.user.as_deref()) {
                continue;
            }
            for (slot, sub) in &c.subs {
                if !rule::covers(sub, dest) {
                    continue;
                }
                if shared.is_none() {
                    shared = Shared::new(d).map(Arc::new);
                }
                let Some(msg) = shared.clone() else {
                    return 0;
                };
                if c.outbox.push_held(Out::Message { sub: *slot, msg }) {
                    n += 1;
                }
            }
        }
        if n == 0 {
            Stats::inc(&self.stats.messages_unrouted_total);
        }
        self.stats
            .messages_delivered_total
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_subscriber_once_whatever_the_pattern() {
        use std::sync::atomic::Ordering::Relaxed;

        use crate::bus::Record;
        use crate::config::SlowConsumerPolicy;

        let stats = Arc::new(Stats::default());
        let router = Router::new(stats.clone());
        let outbox = || {
            let policy = SlowConsumerPolicy::Disconnect;
            Arc::new(Outbox::new(16, 1 << 20, policy, stats.clone()))
        };
        let (exact, wild, wild2, other) = (outbox(), outbox(), outbox(), outbox());
        for (dest, conn, sub, outbox) in [
            ("/topic/a.b", 1, 0, &exact),
            ("/topic/a.*", 2, 0, &wild),
            ("/topic/a.*", 3, 7, &wild2),
            ("/topic/x.*", 4, 0, &other),
        ] {
            router
                .subscribe(dest, conn, sub, outbox.clone())
                .expect("subscribed");
        }
        let to = |destination: &str| Delivery {
            id: "n-1".into(),
            record: Record {
                destination: destination.into(),
                ..Record::default()
            },
        };
        let drained = |o: &Outbox| {
            let mut v = Vec::new();
            o.drain(&mut v);
            v.iter()
                .filter_map(|o| match o {
                    Out::Message { sub, .. } | Out::Replay { sub, .. } => Some(*sub),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };

        router.deliver(&to("/topic/a.b"));
        assert_eq!(drained(&exact), [0]);
        assert_eq!(drained(&wild), [0]);
        assert_eq!(drained(&wild2), [7]);
        assert!(drained(&other).is_empty());
        assert_eq!(stats.messages_delivered_total.load(Relaxed), 3);

        router.unsubscribe("/topic/a.*", 3, 7);
        router.deliver(&to("/topic/a.c"));
        assert_eq!(drained(&wild), [0]);
        assert!(drained(&wild2).is_empty() && drained(&exact).is_empty());

        router.deliver(&to("/topic/none"));
        assert_eq!(stats.messages_unrouted_total.load(Relaxed), 1);
        assert_eq!(stats.subscriptions.load(Relaxed), 3);
    }

    #[test]
    fn targeted_records_reach_only_their_user_or_session() {
        use crate::bus::Record;
        use crate::config::SlowConsumerPolicy;

        let stats = Arc::new(Stats::default());
        let router = Router::new(stats.clone());
        let outbox = || {
            let policy = SlowConsumerPolicy::Disconnect;
            Arc::new(Outbox::new(16, 1 << 20, policy, stats.clone()))
        };
        // alice twice (conns 1, 2), bob once (3), an anonymous session (4).
        let boxes = [outbox(), outbox(), outbox(), outbox()];
        let users = [Some("alice"), Some("alice"), Some("bob"), None];
        for (i, (b, u)) in boxes.iter().zip(users).enumerate() {
            let conn = i as u64 + 1;
            let _ = router.attach(conn, &format!("n1-{conn}"), u, false, b.clone(), 0);
            router
                .subscribe("/user/queue/q", conn, 0, b.clone())
                .expect("subscribed");
            router
                .subscribe("/topic/t", conn, 1, b.clone())
                .expect("subscribed");
        }
        let count = |o: &Outbox| {
            let mut v = Vec::new();
            o.drain(&mut v);
            v.len()
        };
        let counts = || boxes.iter().map(|b| count(b)).collect::<Vec<_>>();
        let to = |dest: &str, user: Option<&str>, session: Option<&str>| Delivery {
            id: "n-1".into(),
            record: Record {
                destination: dest.into(),
                user: user.map(Into::into),
                session: session.map(Into::into),
                ..Record::default()
            },
        };

        assert_eq!(router.deliver(&to("/user/queue/q", Some("alice"), None)), 2);
        assert_eq!(counts(), [1, 1, 0, 0]);
        assert_eq!(router.deliver(&to("/user/queue/q", None, Some("n1-4"))), 1);
        assert_eq!(counts(), [0, 0, 0, 1]);
        // A session that is not the named user's gets nothing.
        assert_eq!(
            router.deliver(&to("/user/queue/q", Some("bob"), Some("n1-1"))),
            0
        );
        assert_eq!(router.deliver(&to("/topic/t", Some("bob"), None)), 1);
        assert_eq!(counts(), [0, 0, 1, 0]);
        // Nobody here: one lookup, nothing queued.
        assert_eq!(router.deliver(&to("/user/queue/q", Some("carol"), None)), 0);
        // A broadcast never reaches /user/queue subscriptions.
        assert_eq!(router.deliver(&to("/user/queue/q", None, None)), 0);
        assert_eq!(counts(), [0, 0, 0, 0]);

        router.unsubscribe("/user/queue/q", 1, 0);
        router.detach(2, "n1-2");
        assert_eq!(router.deliver(&to("/user/queue/q", Some("alice"), None)), 0);
        assert_eq!(
            stats
                .subscriptions
                .load(std::sync::atomic::Ordering::Relaxed),
            7
        );
    }
}
