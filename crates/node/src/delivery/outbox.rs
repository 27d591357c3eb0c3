//! A connection's bounded outbound queue. Fan-out only ever pushes without waiting;
//! a full queue applies the slow-consumer policy and is counted.

use std::cell::RefCell;
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
    /// An operator ended the session: ERROR with `message`, then close.
    Close { message: Arc<str>, reconnect: bool },
    /// An operator ended this subscription (the client hears of it in a RECEIPT).
    Unsubscribed { sub: u32 },
}

impl Out {
    fn cost(&self) -> usize {
        match self {
            Out::Message { msg, .. } | Out::Replay { msg, .. } => msg.len() + 64,
            Out::Position { subs, position } => (position.len() + 64) * subs.len(),
            Out::Close { .. } | Out::Unsubscribed { .. } => 0,
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

thread_local! {
    /// On a thread that holds wakes ([`hold_wakes`]): the outboxes that went from empty
    /// to not empty since the last [`release_wakes`].
    static HELD: RefCell<Option<Vec<Arc<Outbox>>>> = const { RefCell::new(None) };
}

/// From now on, fan-out on this thread wakes a connection only at the next
/// [`release_wakes`]: a burst of records becomes one wake-up and one socket write per
/// connection, not one per record. For the bus's consumer threads, which release
/// before they wait for more records and every few dozen records.
pub fn hold_wakes() {
    HELD.with(|h| {
        h.borrow_mut().get_or_insert_with(Vec::new);
    });
}

/// Wakes the connections this thread queued to since the last release.
pub fn release_wakes() {
    let held = HELD.with(|h| h.borrow_mut().as_mut().map(std::mem::take));
    for outbox in held.into_iter().flatten() {
        outbox.notify.notify_one();
    }
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
        self.queue_up(out).is_some_and(|_| {
            self.notify.notify_one();
            true
        })
    }

    /// Queues an operator's order whatever the queue's limits, and wakes the
    /// connection at once.
    pub(crate) fn push_control(&self, out: Out) {
        let mut q = self.queue();
        q.pushed += 1;
        q.items.push_back(out);
        drop(q);
        Stats::add(&self.stats.queued_messages, 1);
        self.notify.notify_one();
    }

    /// [`Outbox::push`] that leaves the wake-up to [`release_wakes`] on a thread that
    /// holds wakes.
    pub(crate) fn push_held(self: &Arc<Self>, out: Out) -> bool {
        let Some(was_empty) = self.queue_up(out) else {
            return false;
        };
        let held = HELD.with(|h| match h.borrow_mut().as_mut() {
            // Not empty: whoever queued the first item since the last drain wakes it.
            Some(held) => {
                if was_empty {
                    held.push(self.clone());
                }
                true
            }
            None => false,
        });
        if !held {
            self.notify.notify_one();
        }
        true
    }

    /// Queues `out`; None when it was not queued, else whether the queue was empty.
    fn queue_up(&self, out: Out) -> Option<bool> {
        if self.slow.load(Ordering::Relaxed) {
            Stats::inc(&self.stats.messages_dropped_total);
            return None;
        }
        let cost = out.cost();
        let mut q = self.queue();
        while q.items.len() >= self.max_messages || q.bytes + cost > self.max_bytes {
            match self.policy {
                SlowConsumerPolicy::Disconnect => {
                    drop(q);
                    self.mark_slow();
                    Stats::inc(&self.stats.messages_dropped_total);
                    return None;
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
        let was_empty = q.items.is_empty();
        q.bytes += cost;
        q.pushed += 1;
        q.items.push_back(out);
        drop(q);
        Stats::add(&self.stats.queued_messages, 1);
        Some(was_empty)
    }

    // A panic under this lock leaves the queue consistent (each change completes
    // before anything can panic), so a poisoned lock is taken over: skipping it would
    // lose messages or stall the connection.
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the queue stands now, for [`Outbox::insert_at`].
    pub(crate) fn mark(&self) -> u64 {
        self.queue().pushed
    }

    /// Queues `items` ahead of everything pushed since `mark` (a resume's replay goes
    /// before the live messages that came while it was encoded). Only the connection's
    /// own task drains the queue, and it does not between the mark and this. The
    /// items were cut to the room there was at the mark.
    pub(crate) fn insert_at(&self, mark: u64, items: Vec<Out>) {
        if items.is_empty() {
            return;
        }
        let mut q = self.queue();
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
        let q = self.queue();
        (
            self.max_messages.saturating_sub(q.items.len()),
            self.max_bytes.saturating_sub(q.bytes),
        )
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
        let mut q = self.queue();
        let n = q.items.len();
        into.extend(q.items.drain(..));
        // A burst must not leave a large queue allocated on a quiet connection.
        if q.items.capacity() > 16 {
            q.items = VecDeque::new();
        }
        q.bytes = 0;
        drop(q);
        Stats::add(&self.stats.queued_messages, -(n as i64));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn position(p: &str) -> Out {
        Out::Position {
            subs: Box::new([0]),
            position: p.into(),
        }
    }

    #[test]
    fn a_poisoned_queue_is_taken_over_not_skipped() {
        let outbox = Arc::new(Outbox::new(
            16,
            1 << 20,
            SlowConsumerPolicy::Disconnect,
            Arc::new(Stats::default()),
        ));
        assert!(outbox.push(position("0-1")));
        let o = outbox.clone();
        let panicked = std::thread::spawn(move || {
            let _q = o.queue.lock();
            panic!("a panic under the lock");
        })
        .join();
        assert!(panicked.is_err() && outbox.queue.is_poisoned());
        // Everything still works: nothing is lost, nothing stalls.
        assert!(outbox.push(position("0-2")));
        let mark = outbox.mark();
        assert!(outbox.push(position("0-4")));
        outbox.insert_at(mark, vec![position("0-3")]);
        assert_eq!(outbox.room().0, 12);
        let mut got = Vec::new();
        outbox.drain(&mut got);
        let names: Vec<String> = got
            .iter()
            .map(|o| match o {
                Out::Position { position, .. } => position.to_string(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(names, ["0-1", "0-2", "0-3", "0-4"]);
    }

    /// Whether the connection's task would wake now (a stored permit), within 20 ms.
    fn woken(rt: &tokio::runtime::Runtime, outbox: &Outbox) -> bool {
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_millis(20), outbox.notified())
                .await
                .is_ok()
        })
    }

    #[test]
    fn a_thread_that_holds_wakes_wakes_each_connection_once_at_release() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let outbox = |n| {
            Arc::new(Outbox::new(
                n,
                1 << 20,
                SlowConsumerPolicy::Disconnect,
                Arc::new(Stats::default()),
            ))
        };
        // Not held: each push wakes at once.
        let (a, b) = (outbox(16), outbox(1));
        let mut got = Vec::new();
        assert!(a.push_held(position("0-1")));
        assert!(woken(&rt, &a));
        a.drain(&mut got);
        hold_wakes();
        for i in 2..10 {
            assert!(a.push_held(position(&format!("0-{i}"))));
        }
        assert!(b.push_held(position("0-1")));
        assert!(
            !woken(&rt, &a) && !woken(&rt, &b),
            "woken before the release"
        );
        // A full queue under the disconnect policy: its connection is told at once.
        assert!(!b.push_held(position("0-2")));
        assert!(woken(&rt, &b) && b.is_slow());
        release_wakes();
        assert!(woken(&rt, &a) && woken(&rt, &b));
        // Once: nothing more is owed until the next push.
        assert!(!woken(&rt, &a));
        got.clear();
        a.drain(&mut got);
        assert_eq!(got.len(), 8);
        release_wakes();
        assert!(
            !woken(&rt, &a),
            "a release with nothing pushed wakes nobody"
        );
    }
}
