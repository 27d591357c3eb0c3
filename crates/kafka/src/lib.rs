//! The node's [`Bus`] on Kafka. Publishing is one producer. Receiving is one consumer
//! per node that reads every partition of the messages topic, the partitions of the
//! targeted topic its users hash to, and its own partition of the replies topic: it
//! assigns them itself (no group rebalance to wait for; the group
//! `pushcenter.<node_id>` only holds committed offsets), starts at the current end, and
//! follows partitions added later and users who come and go.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod bus;
mod config;
mod context;
mod error;
mod interest;
mod log_read;
mod ordering;
mod producer;
mod reader;
mod record;
mod topic;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use pushcenter_node::{
    BoxFuture, Bus, BusError, DeliverFn, Delivery, Record, Reply, ReplyFn, StartedFn, Stats,
};

pub use bus::KafkaBus;
pub use config::KafkaConfig;
pub use error::Error;

use topic::Topic;

/// How long a new connection waits for the node to read its user's partition.
const FOLLOW_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Bus for KafkaBus {
    fn start(&self, deliver: DeliverFn, reply: ReplyFn, started: StartedFn, stats: Arc<Stats>) {
        reader::start(self, deliver, reply, started, stats);
    }

    fn publish(&self, record: Record) -> BoxFuture<Result<String, BusError>> {
        self.producer.publish(record)
    }

    fn reply(&self, reply: Reply) -> BoxFuture<Result<(), BusError>> {
        self.producer.reply(reply)
    }

    fn follow(&self, user: &str) -> BoxFuture<()> {
        let wait = {
            let mut interest = self.state.interest();
            let wait = interest.follow(user);
            if std::mem::take(&mut interest.changed) || wait.is_some() {
                self.state.interest_changed.store(true, Ordering::Relaxed);
            }
            wait
        };
        match wait {
            None => Box::pin(std::future::ready(())),
            // Kafka down or slow: the connection goes on after a while (its resume
            // reads the log, or says what it lost).
            Some(rx) => Box::pin(async move {
                let _ = tokio::time::timeout(FOLLOW_WAIT, rx).await;
            }),
        }
    }

    fn carries(&self, stream: &str, user: Option<&str>) -> bool {
        match Topic::of_stream(stream) {
            Some((Topic::Targeted, p)) => {
                let n = self.state.partitions.targeted.load(Ordering::Relaxed);
                n == 0
                    || user.is_some_and(|u| {
                        i64::from(pushcenter_node::placement::partition_of(u, n)) == i64::from(p)
                    })
            }
            _ => true,
        }
    }

    fn stream_of(&self, user: &str) -> Option<String> {
        let n = self.state.partitions.targeted.load(Ordering::Relaxed);
        let p = pushcenter_node::placement::partition_of(user, n);
        (n > 0).then(|| Topic::Targeted.stream(i32::try_from(p).unwrap_or(0)))
    }

    fn unfollow(&self, user: &str) {
        let mut interest = self.state.interest();
        interest.unfollow(user, std::time::Instant::now());
        if std::mem::take(&mut interest.changed) {
            self.state.interest_changed.store(true, Ordering::Relaxed);
        }
    }

    fn ready(&self) -> bool {
        self.state.assigned.load(Ordering::Relaxed)
            && self.state.reachable.load(Ordering::Relaxed)
            && self.state.caught_up.load(Ordering::Relaxed)
    }

    fn read(
        &self,
        stream: &str,
        from: i64,
        to: i64,
    ) -> BoxFuture<Result<Option<Vec<Delivery>>, BusError>> {
        log_read::read(self, stream, from, to)
    }
}
