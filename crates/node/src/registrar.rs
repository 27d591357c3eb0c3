//! The `Registrar` port: this node reports its address and load. The in-memory
//! registrar serves the registry endpoints of a standalone node.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::bus::BoxFuture;

/// One node as the registry shows it (etcd value in a cluster).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeInfo {
    pub node_id: String,
    pub ws_url: String,
    pub tcp_url: Option<String>,
    pub http_url: String,
    pub connections: u64,
    pub subscriptions: u64,
    pub draining: bool,
    pub version: String,
    pub started_at: u64,
    /// Partitions of the targeted topic as this node sees them (0 or absent: not
    /// known, or no Kafka): the registry sends a user to the node that reads the
    /// user's partition.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub targeted_partitions: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

pub trait Registrar: Send + Sync + 'static {
    /// The node's current address and load; called every report interval.
    fn report(&self, info: NodeInfo);
    /// Marks the node draining, so discovery stops handing it out; resolves once the
    /// registry has it (or it gave up trying).
    fn set_draining(&self) -> BoxFuture<()>;
    /// Removes the node from the registry on a clean exit.
    fn deregister(&self) -> BoxFuture<()> {
        Box::pin(std::future::ready(()))
    }
    /// Every live node known (standalone: this one).
    fn nodes(&self) -> Vec<NodeInfo>;
    /// The ids of every live node, read from the registry now (the nodes an admin
    /// command waits for); an error when the registry cannot say.
    fn peers(&self) -> BoxFuture<Result<Vec<String>, String>> {
        let ids = self.nodes().into_iter().map(|n| n.node_id).collect();
        Box::pin(std::future::ready(Ok(ids)))
    }
    /// Why the node cannot register, while that lasts (the registry refuses its
    /// credentials): `/readyz` answers 503 with it. `None` while registered, and while
    /// the registry is only unreachable: clients are still served then.
    fn problem(&self) -> Option<String> {
        None
    }
}

#[derive(Default)]
pub struct MemoryRegistrar {
    me: Mutex<Option<NodeInfo>>,
}

impl Registrar for MemoryRegistrar {
    fn report(&self, info: NodeInfo) {
        {
            let mut me = self.me.lock().unwrap_or_else(|e| e.into_inner());
            let draining = me.as_ref().is_some_and(|m| m.draining);
            *me = Some(NodeInfo { draining, ..info });
        }
    }

    fn set_draining(&self) -> BoxFuture<()> {
        {
            let mut me = self.me.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = me.as_mut() {
                m.draining = true;
            }
        }
        Box::pin(std::future::ready(()))
    }

    fn nodes(&self) -> Vec<NodeInfo> {
        self.me
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .into_iter()
            .collect()
    }
}
