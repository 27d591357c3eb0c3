//! A connection's bounded outbound queue. Fan-out only ever pushes without waiting;
//! a full queue applies the slow-consumer policy and is counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::config::SlowConsumerPolicy;
use crate::delivery::message::Shared;
use crate::stats::Stats;

/// One queued item.
#[derive(Debug)]
pub(crate) enum Out {
    /// A MESSAGE for the connection's subscription slot `sub`.
    Message { sub: u32, msg: Arc<Shared> },
    /// A MESSAGE the subscription missed, replayed on resume.
    Replay { sub: u32, msg: Arc<Shared> },
    /// Everything up to `position` that these subscriptions take was queued before
    /// this: each may resume from here (docs/delivery.md, "Position updates").
    Position {
        subs: Box<[u32]>,
        position: Arc<str>,
    },
}

impl Out {
    fn cost(&self) -> usize {
        match self {
            Out::Message { msg, .. } | Out::Replay { msg, .. } => msg.len() + 64,
            Out::Position { subs, position } => (position.len() + 64) * subs.len(),
        }
    }
}

pub(crate) struct Outbox {
    queue: Mutex<Queue>,
    notify: Notify,
    max_messages: usize,
    max_bytes: usize,
    policy: SlowConsumerPolicy,
    /// Set when the queue overflowed under the disconnect policy.
    slow: AtomicBool,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Out>,
    bytes: usize,
    /// Items pushed ever: a [`Outbox::mark`].
    pushed: u64,
}

impl Outbox {
    pub(crate) fn new(
        max_messages: usize,
        max_bytes: usize,
        policy: SlowConsumerPolicy,
        stats: Arc<Stats>,
    ) -> Outbox {
        Outbox {
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            max_messages,
            max_bytes,
            policy,
            slow: AtomicBool::new(false),
            stats,
        }
    }

    /// Queues `out` without waiting. Returns false when it was not queued.
    pub(crate) fn push(&self, out: Out) -> bool {
        if self.slow.load(Ordering::Relaxed) {
            Stats::inc(&self.stats.messages_dropped_total);
            return false;
        }
        let cost = out.cost();
        let Ok(mut q) = self.queue.lock() else {
            return false;
        };
        while q.items.len() >= self.max_messages || q.bytes + cost > self.max_bytes {
            match self.policy {
                SlowConsumerPolicy::Disconnect => {
                    drop(q);
                    self.mark_slow();
                    Stats::inc(&self.stats.messages_dropped_total);
                    return false;
                }
                SlowConsumerPolicy::DropOldest => match q.items.pop_front() {
                    Some(old) => {
                        q.bytes -= old.cost();
                        Stats::add(&self.stats.queued_messages, -1);
                        Stats::inc(&self.stats.messages_dropped_total);
                    }
                    None => break,
                },
            }
        }
        q.bytes += cost;
        q.pushed += 1;
        q.items.push_back(out);
        drop(q);
        Stats::add(&self.stats.queued_messages, 1);
        self.notify.notify_one();
        true
    }

    /// Where the queue stands now, for [`Outbox::insert_at`].
    pub(crate) fn mark(&self) -> u64 {
        self.queue.lock().map_or(0, |q| q.pushed)
    }

    /// Queues `items` ahead of everything pushed since `mark` (a resume's replay goes
    /// before the live messages that came while it was encoded). Only the connection's
    /// own task drains the queue, and it does not between the mark and this. The
    /// items were cut to the room there was at the mark.
    pub(crate) fn insert_at(&self, mark: u64, items: Vec<Out>) {
        if items.is_empty() {
            return;
        }
        let Ok(mut q) = self.queue.lock() else {
            return;
        };
        let after = usize::try_from(q.pushed.saturating_sub(mark)).unwrap_or(usize::MAX);
        let at = q.items.len().saturating_sub(after);
        let n = items.len();
        let cost: usize = items.iter().map(Out::cost).sum();
        let tail = q.items.split_off(at);
        q.items.extend(items);
        q.items.extend(tail);
        q.bytes += cost;
        q.pushed += n as u64;
        drop(q);
        Stats::add(&self.stats.queued_messages, n as i64);
        self.notify.notify_one();
    }

    /// What still fits: (messages, bytes).
    pub(crate) fn room(&self) -> (usize, usize) {
        match self.queue.lock() {
            Ok(q) => (
                self.max_messages.saturating_sub(q.items.len()),
                self.max_bytes.saturating_sub(q.bytes),
            ),
            Err(_) => (0, 0),
        }
    }

    /// Flags the connection as a slow consumer; its task closes it.
    pub(crate) fn mark_slow(&self) {
        if !self.slow.swap(true, Ordering::Relaxed) {
            self.notify.notify_one();
        }
    }

    pub(crate) fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }

    /// Moves everything queued into `into`.
    pub(crate) fn drain(&self, into: &mut Vec<Out>) {
        if let Ok(mut q) = self.queue.lock() {
            let n = q.items.len();
            into.extend(q.items.drain(..));
            // A burst must not leave a large queue allocated on a quiet connection.
            if q.items.capacity() > 16 {
                q.items = VecDeque::new();
            }
            q.bytes = 0;
            Stats::add(&self.stats.queued_messages, -(n as i64));
        }
    }

    pub(crate) async fn notified(&self) {
        self.notify.notified().await
    }

    /// Forgets what is still queued (the connection is gone).
    pub(crate) fn clear(&self) {
        let mut rest = Vec::new();
        self.drain(&mut rest);
    }
}
