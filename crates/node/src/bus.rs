//! The `Bus` port: how records reach every node. The in-memory bus serves standalone
//! mode; the Kafka adapter lives in its own crate.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

/// A message as backends and clients publish it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub destination: String,
    /// Extra headers passed to subscribers (already sanitised).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Deliver only to this user's sessions (targeted push).
    pub user: Option<String>,
    /// Deliver only to this session.
    pub session: Option<String>,
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

/// Publish records; receive the cluster stream.
pub trait Bus: Send + Sync + 'static {
    /// Starts delivering the cluster stream to `deliver`. Called once.
    fn start(&self, deliver: DeliverFn);
    /// Publishes; resolves with the record's id once the bus accepted it.
    fn publish(&self, record: Record) -> BoxFuture<Result<String, BusError>>;
    /// True when publishing and receiving work.
    fn ready(&self) -> bool;
}

/// In-process bus: a publish is delivered at once; ids are `<node>-<seq>`.
pub struct MemoryBus {
    node_id: String,
    seq: AtomicU64,
    deliver: OnceLock<DeliverFn>,
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
    fn start(&self, deliver: DeliverFn) {
        let _ = self.deliver.set(deliver);
    }

    fn publish(&self, record: Record) -> BoxFuture<Result<String, BusError>> {
        let result = match self.deliver.get() {
            Some(deliver) => {
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

    fn ready(&self) -> bool {
        self.deliver.get().is_some()
    }
}
