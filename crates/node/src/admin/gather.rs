//! Sending a command to every node and gathering their reports: on top of the node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::admin::{Admin, Command, Gathered};
use crate::bus::BusError;
use crate::node::Node;

/// Sends `command` to every node and gathers their reports.
pub(crate) async fn gather(node: &Arc<Node>, command: Command) -> Result<Gathered, BusError> {
    let me = node.config.node_id.clone();
    let deadline = tokio::time::Instant::now() + node.config.admin_timeout;
    // The registry's list now: a node that died is listed until its lease ends, and
    // then named missing.
    let listed = tokio::time::timeout_at(deadline, node.registrar.peers()).await;
    let (peers, registry_error) = match listed {
        Ok(Ok(peers)) => (peers, None),
        Ok(Err(e)) => (Vec::new(), Some(e)),
        Err(_) => (
            Vec::new(),
            Some("the registry did not answer in time".to_string()),
        ),
    };
    let expected: BTreeSet<String> = peers
        .into_iter()
        .chain(std::iter::once(me.clone()))
        .collect();
    let id = node.next_correlation_id();
    let (_collecting, mut rx) = node.admin.wait_for(&id)?;
    let record = Admin::command(id, &me, command)?;
    tokio::time::timeout_at(deadline, node.send_reply(record))
        .await
        .map_err(|_| BusError::Unavailable("timed out".into()))??;
    let mut results = BTreeMap::new();
    while !expected.iter().all(|n| results.contains_key(n)) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((from, result))) => {
                results.insert(from, result);
            }
            Ok(None) | Err(_) => break,
        }
    }
    let missing = expected
        .into_iter()
        .filter(|n| !results.contains_key(n))
        .collect();
    Ok(Gathered {
        results,
        missing,
        registry_error,
    })
}

/// A starting node takes over the bans its peers hold (bans live in the nodes'
/// memory: docs/http-api.md).
pub(crate) async fn take_over_bans(node: &Arc<Node>) {
    if node.bus.is_local() {
        return;
    }
    // The reports come on the bus: it must be read first.
    while !node.bus.ready() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Alone in the registry: nobody to ask.
    let me = node.config.node_id.as_str();
    match node.registrar.peers().await {
        Ok(peers) if peers.iter().any(|p| p != me) => {}
        _ => return,
    }
    // Reports sent before this node's replies partition is read are missed: asked
    // again until another node answers (a few times at most).
    for _ in 0..5 {
        if let Ok(g) = gather(node, Command::Bans).await {
            if g.results.keys().any(|n| n != me) {
                let n: usize = g.results.values().map(|r| node.admin.take_bans(r)).sum();
                if n > 0 {
                    tracing::info!(bans = n, "bans taken over from the other nodes");
                }
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    tracing::warn!("no other node reported its bans: none taken over");
}
