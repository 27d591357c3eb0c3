//! Each partition's records in offset order, each once. No I/O here: the reader asks
//! about every record and does the seek a gap calls for.

use std::collections::HashMap;

use pushcenter_node::Stats;
use tracing::debug;

use crate::topic::{PerTopic, Topic};

/// The next offset of a partition the node does not read: its records are skipped
/// (one fetched before the partition was let go).
pub(crate) const NOT_READ: i64 = i64::MIN;

/// How often a gap in a partition's offsets is read again before it is accepted.
pub(crate) const GAP_REREADS: u32 = 3;

/// What the reader does with a record it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The partition's next record (or the first after a gap accepted): deliver it.
    Deliver,
    /// Before the next expected offset: delivered already.
    Skip,
    /// After the next expected offset: read the partition again from this offset, and
    /// do not deliver this record now.
    ReadAgain(i64),
}

/// Keeps each partition's records in offset order, each once. A record before the
/// next expected offset was delivered already: skipped. A record after it leaves a
/// gap, which is real in Kafka (transaction markers, compaction) but may also be a
/// broker that shows its high watermark before the batch is readable (Tansu 0.6
/// does, under concurrent producers): the partition is read again from the gap, up
/// to [`GAP_REREADS`] times, before the gap is accepted.
#[derive(Debug, Default)]
pub(crate) struct Order {
    /// Next offset to read, per topic and partition (index).
    pub(crate) next: PerTopic<Vec<i64>>,
    /// (topic, partition) → (the offset a gap starts at, times read again).
    rereads: HashMap<(Topic, i32), (i64, u32)>,
}

impl Order {
    /// The verdict on the record at `offset`; `name` is the topic's, for the logs. A
    /// partition not (yet) assigned is not kept in order.
    pub(crate) fn check(
        &mut self,
        stats: &Stats,
        (topic, name, partition, offset): (Topic, &str, i32, i64),
    ) -> Verdict {
        let Some(expected) = self.next_mut(topic, partition).map(|n| *n) else {
            return Verdict::Deliver;
        };
        if expected == NOT_READ {
            return Verdict::Skip;
        }
        if offset < expected {
            Stats::inc(&stats.bus_records_repeated_total);
            debug!(
                topic = name,
                partition, offset, expected, "record read twice; skipped"
            );
            return Verdict::Skip;
        }
        if offset > expected {
            let tries = self
                .rereads
                .entry((topic, partition))
                .or_insert((expected, 0));
            if tries.0 != expected {
                *tries = (expected, 0);
            }
            if tries.1 < GAP_REREADS {
                tries.1 += 1;
                Stats::inc(&stats.bus_gaps_reread_total);
                debug!(
                    topic = name,
                    partition, offset, expected, "offset gap; reading again"
                );
                return Verdict::ReadAgain(expected);
            }
        }
        self.accept(topic, partition, offset);
        Verdict::Deliver
    }

    /// Takes the record at `offset` as the partition's next, any gap before it
    /// accepted (also when the reader cannot read the partition again).
    pub(crate) fn accept(&mut self, topic: Topic, partition: i32, offset: i64) {
        if !self.rereads.is_empty() {
            self.rereads.remove(&(topic, partition));
        }
        if let Some(n) = self.next_mut(topic, partition).filter(|n| **n != NOT_READ) {
            *n = offset + 1;
        }
    }

    fn next_mut(&mut self, topic: Topic, partition: i32) -> Option<&mut i64> {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.next[topic].get_mut(p))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    fn order(messages: Vec<i64>, replies: Vec<i64>) -> Order {
        Order {
            next: PerTopic {
                messages,
                targeted: Vec::new(),
                replies,
            },
            ..Order::default()
        }
    }

    #[test]
    fn records_in_order_once_and_a_gap_read_again_before_it_is_accepted() {
        let stats = Stats::default();
        let mut order = order(vec![0], Vec::new());
        let mut check = |offset| order.check(&stats, (Topic::Messages, "t", 0, offset));
        assert_eq!(check(0), Verdict::Deliver);
        // Handed out again: skipped.
        assert_eq!(check(0), Verdict::Skip);
        // 3 where 1 is due: read again from 1.
        assert_eq!(check(3), Verdict::ReadAgain(1));
        assert_eq!(check(1), Verdict::Deliver);
        // A gap that stays after every re-read is real (a transaction marker): accepted.
        for _ in 0..GAP_REREADS {
            assert_eq!(check(4), Verdict::ReadAgain(2));
        }
        assert_eq!(check(4), Verdict::Deliver);
        assert_eq!(order.next.messages, [5]);
        assert!(order.rereads.is_empty());
        assert_eq!(stats.bus_records_repeated_total.load(Ordering::Relaxed), 1);
        assert_eq!(
            stats.bus_gaps_reread_total.load(Ordering::Relaxed),
            1 + u64::from(GAP_REREADS)
        );
    }

    #[test]
    fn a_gap_that_moves_is_read_again_afresh() {
        let stats = Stats::default();
        let mut order = order(vec![0], Vec::new());
        for _ in 0..GAP_REREADS {
            assert_eq!(
                order.check(&stats, (Topic::Messages, "t", 0, 5)),
                Verdict::ReadAgain(0)
            );
        }
        // Accepted (the reader could not seek, or the re-reads ran out) ...
        order.accept(Topic::Messages, 0, 5);
        assert_eq!(order.next.messages, [6]);
        // ... and the next gap gets its own re-reads.
        assert_eq!(
            order.check(&stats, (Topic::Messages, "t", 0, 9)),
            Verdict::ReadAgain(6)
        );
    }

    #[test]
    fn a_partition_let_go_delivers_nothing_more() {
        let stats = Stats::default();
        let mut order = order(vec![0], Vec::new());
        order.next.targeted = vec![NOT_READ, 4];
        // One fetched before the partition was let go: skipped, and the position stays.
        assert_eq!(
            order.check(&stats, (Topic::Targeted, "t", 0, 7)),
            Verdict::Skip
        );
        order.accept(Topic::Targeted, 0, 7);
        assert_eq!(order.next.targeted, [NOT_READ, 4]);
        assert_eq!(
            order.check(&stats, (Topic::Targeted, "t", 1, 4)),
            Verdict::Deliver
        );
        assert_eq!(order.next.targeted, [NOT_READ, 5]);
    }

    #[test]
    fn topics_and_partitions_keep_their_own_order() {
        let stats = Stats::default();
        let mut order = order(vec![0, 10], vec![0]);
        assert_eq!(
            order.check(&stats, (Topic::Messages, "m", 1, 10)),
            Verdict::Deliver
        );
        assert_eq!(
            order.check(&stats, (Topic::Replies, "r", 0, 0)),
            Verdict::Deliver
        );
        assert_eq!(
            order.check(&stats, (Topic::Messages, "m", 0, 0)),
            Verdict::Deliver
        );
        assert_eq!(
            order.next,
            PerTopic {
                messages: vec![1, 11],
                targeted: Vec::new(),
                replies: vec![1]
            }
        );
        // Partitions not assigned are not kept in order.
        for partition in [-1, 2] {
            assert_eq!(
                order.check(&stats, (Topic::Messages, "m", partition, 0)),
                Verdict::Deliver
            );
        }
        assert_eq!(
            order.next,
            PerTopic {
                messages: vec![1, 11],
                targeted: Vec::new(),
                replies: vec![1]
            }
        );
    }
}
