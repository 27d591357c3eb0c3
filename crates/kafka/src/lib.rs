//! The node's [`Bus`] on Kafka. Publishing is one producer. Receiving is one consumer
//! per node that reads every partition of the messages and replies topics: it assigns
//! them itself (no group rebalance to wait for; the group `pushcenter.<node_id>` only
//! holds committed offsets), starts at the current end, and adds partitions created
//! later.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod bus;
mod config;
mod context;
mod error;
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
pub use record::{delivery_from, message_id, reply_from};

use topic::Topic;

impl Bus for KafkaBus {
    fn start(&self, deliver: DeliverFn, reply: ReplyFn, started: StartedFn, stats: Arc<Stats>) {
        reader::start(self, deliver, reply, started, stats);
    }

    fn publish(&self, record: Record) -> BoxFuture<Result<String, BusError>> {
        self.producer
            .publish(Topic::Messages.name(&self.cfg), record)
    }

    fn reply(&self, reply: Reply) -> BoxFuture<Result<(), BusError>> {
        self.producer.reply(Topic::Replies.name(&self.cfg), reply)
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
