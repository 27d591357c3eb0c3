//! Discovery: which node a client should connect to. The registry service and every
//! node answer `/v1/connect` and `/v1/nodes` with the same rule and the same body; the
//! registry from its view of etcd, a node from its registrar's view (in standalone
//! mode: itself).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::http::respond::{cors, error};
use crate::node::Node;
use crate::placement;
use crate::registrar::NodeInfo;

/// `GET /v1/connect`'s query.
#[derive(Debug, Default, Deserialize)]
pub struct ConnectQuery {
    /// The user who connects: the registry keeps a user on one node (rendezvous).
    pub user: Option<String>,
    /// Comma-separated node ids the client would rather not get.
    pub avoid: Option<String>,
}

impl ConnectQuery {
    /// The node ids to avoid.
    pub fn avoid(&self) -> Vec<&str> {
        self.avoid
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .filter(|a| !a.is_empty())
            .collect()
    }

    /// The user, when one is named.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref().filter(|u| !u.is_empty())
    }
}

/// A live, non-draining node. With `user`: the node that reads the user's partition of
/// the targeted topic ([`placement::assign`] over the live nodes, sorted by id), unless
/// that node carries more than twice the mean load and 100 connections more (then the
/// least loaded: a hot partition must not pile every user on one node); when the nodes
/// do not say how many targeted partitions there are, rendezvous hashing of the user
/// over the node ids. Without a user: the least loaded by `load`, ties broken by `tie`
/// (given how many tie, it picks one). Nodes in `avoid` (the client just lost them; a
/// killed node stays listed until its lease runs out) only when nothing else is.
pub fn choose<'a>(
    nodes: impl IntoIterator<Item = &'a NodeInfo>,
    user: Option<&str>,
    avoid: &[&str],
    load: impl Fn(&NodeInfo) -> u64,
    tie: impl FnOnce(usize) -> usize,
) -> Option<&'a NodeInfo> {
    let mut live: Vec<&NodeInfo> = nodes.into_iter().filter(|n| !n.draining).collect();
    if live.iter().any(|n| !avoid.contains(&n.node_id.as_str())) {
        live.retain(|n| !avoid.contains(&n.node_id.as_str()));
    }
    if let Some(u) = user {
        let partitions = live
            .iter()
            .map(|n| n.targeted_partitions)
            .max()
            .unwrap_or(0);
        // A count no topic has (a forged registry entry) would cost an assignment that
        // size on every connect: placed as if unknown.
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return live
                .into_iter()
                .max_by_key(|n| placement::user_rank(u, &n.node_id));
        }
        live.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let owner = owner_of(&live, partitions, placement::partition_of(u, partitions))?;
        let total: u64 = live.iter().map(|n| load(n)).sum();
        let mean = total / live.len() as u64;
        if load(owner) <= mean.saturating_mul(2).saturating_add(100) {
            return Some(owner);
        }
    }
    let least = live.iter().map(|n| load(n)).min()?;
    let ties: Vec<&NodeInfo> = live.into_iter().filter(|n| load(n) == least).collect();
    let i = tie(ties.len()).min(ties.len() - 1);
    ties.get(i).copied()
}

/// The node of `sorted` (by id) that [`placement::assign`] gives `partition`. The last
/// assignment is kept per thread: it changes only when the nodes do.
fn owner_of<'a>(sorted: &[&'a NodeInfo], partitions: u32, partition: u32) -> Option<&'a NodeInfo> {
    thread_local! {
        static LAST: std::cell::RefCell<(Vec<String>, u32, Vec<usize>)> =
            const { std::cell::RefCell::new((Vec::new(), 0, Vec::new())) };
    }
    let index = LAST.with(|last| {
        let mut last = last.borrow_mut();
        let same = last.1 == partitions
            && last.0.len() == sorted.len()
            && last.0.iter().zip(sorted).all(|(a, n)| *a == n.node_id);
        if !same {
            let ids: Vec<&str> = sorted.iter().map(|n| n.node_id.as_str()).collect();
            let owners = placement::assign(partitions, &ids);
            *last = (
                ids.iter().map(|s| s.to_string()).collect(),
                partitions,
                owners,
            );
        }
        last.2.get(partition as usize).copied()
    })?;
    sorted.get(index).copied()
}

/// More targeted partitions than any real topic has.
const MAX_PARTITIONS: u32 = 100_000;

/// The answer to `/v1/connect`: the chosen node, or 503 when there is none.
pub fn connect_answer(chosen: Option<&NodeInfo>, stale: bool) -> Response {
    match chosen {
        Some(n) => cors(
            Json(json!({
                "node_id": n.node_id,
                "ws_url": n.ws_url,
                "tcp_url": n.tcp_url,
                "http_url": n.http_url,
                "stale": stale,
            }))
            .into_response(),
        ),
        None => cors(error(StatusCode::SERVICE_UNAVAILABLE, "no live node")),
    }
}

/// The answer to `/v1/nodes`: every node (sorted by id), the totals, and whether the
/// view is stale; with `view_age_ms` (a registry's copy of etcd), the copy's age, null
/// before the first sync.
pub fn nodes_answer(
    mut nodes: Vec<&NodeInfo>,
    stale: bool,
    view_age_ms: Option<Option<u64>>,
) -> Response {
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let connections: u64 = nodes.iter().map(|n| n.connections).sum();
    let subscriptions: u64 = nodes.iter().map(|n| n.subscriptions).sum();
    let mut body = json!({
        "nodes": nodes,
        "totals": {"nodes": nodes.len(), "connections": connections, "subscriptions": subscriptions},
        "stale": stale,
    });
    if let Some(age) = view_age_ms {
        body["view_age_ms"] = json!(age);
    }
    cors(Json(body).into_response())
}

/// A JSON error with the discovery endpoints' headers (for a registry's fallback).
pub fn not_found() -> Response {
    cors(error(StatusCode::NOT_FOUND, "no such endpoint"))
}

/// A node's own `/v1/connect`: one node's view needs no rendezvous, so `user` is
/// ignored and the least loaded node (the first of equals) is chosen.
pub(crate) async fn connect(
    State(node): State<Arc<Node>>,
    Query(q): Query<ConnectQuery>,
) -> Response {
    let nodes = node.registrar.nodes();
    let chosen = choose(&nodes, None, &q.avoid(), |n| n.connections, |_| 0);
    connect_answer(chosen, false)
}

pub(crate) async fn nodes(State(node): State<Arc<Node>>) -> Response {
    let nodes = node.registrar.nodes();
    nodes_answer(nodes.iter().collect(), false, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, connections: u64, draining: bool) -> NodeInfo {
        NodeInfo {
            node_id: id.into(),
            connections,
            draining,
            ..NodeInfo::default()
        }
    }

    #[test]
    fn the_least_loaded_live_node_unless_avoided_and_a_user_stays_put() {
        let nodes = [info("a", 5, false), info("b", 1, true), info("c", 3, false)];
        let pick = |avoid: &[&str]| choose(&nodes, None, avoid, |n| n.connections, |_| 0);
        assert_eq!(pick(&[]).map(|n| n.node_id.as_str()), Some("c"));
        assert_eq!(pick(&["c"]).map(|n| n.node_id.as_str()), Some("a"));
        // Everything avoided: avoided nodes are still better than none.
        assert_eq!(pick(&["a", "c"]).map(|n| n.node_id.as_str()), Some("c"));
        let u1 = choose(&nodes, Some("u1"), &[], |n| n.connections, |_| 0);
        let again = choose(&nodes, Some("u1"), &[], |n| n.connections + 100, |_| 0);
        assert_eq!(u1.map(|n| &n.node_id), again.map(|n| &n.node_id));
        assert!(choose(&[info("x", 0, true)], None, &[], |_| 0, |_| 0).is_none());
    }

    #[test]
    fn a_user_goes_to_the_node_that_reads_their_partition_unless_it_is_overloaded() {
        let mut nodes: Vec<NodeInfo> = ["n3", "n1", "n2"]
            .iter()
            .map(|id| NodeInfo {
                targeted_partitions: 24,
                ..info(id, 10, false)
            })
            .collect();
        let owners = placement::assign(24, &["n1", "n2", "n3"]);
        let pick = |nodes: &[NodeInfo], user: &str| {
            choose(nodes, Some(user), &[], |n| n.connections, |_| 0).map(|n| n.node_id.clone())
        };
        for i in 0..200 {
            let user = format!("u{i}");
            let p = placement::partition_of(&user, 24) as usize;
            let want = ["n1", "n2", "n3"][owners[p]];
            assert_eq!(pick(&nodes, &user).as_deref(), Some(want), "{user}");
        }
        // Every user of a partition on one node: each node owns 8 partitions.
        for k in 0..3 {
            assert_eq!(owners.iter().filter(|&&o| o == k).count(), 8);
        }
        // The owner past twice the mean and 100: the least loaded instead.
        let user = "u0";
        let p = placement::partition_of(user, 24) as usize;
        let owner = ["n1", "n2", "n3"][owners[p]];
        for n in &mut nodes {
            n.connections = if n.node_id == owner { 10_000 } else { 50 };
        }
        let other = pick(&nodes, user).expect("a node");
        assert_ne!(other, owner);
        // Nodes that do not know the partitions: rendezvous of the user, stable.
        for n in &mut nodes {
            n.targeted_partitions = 0;
        }
        assert_eq!(pick(&nodes, user), pick(&nodes, user));
        // An entry claiming more partitions than a topic can have (placing them would
        // hold billions of owners): ignored, the user's rendezvous as when unknown.
        nodes[0].targeted_partitions = u32::MAX;
        let unknown = pick(&nodes, user);
        nodes[0].targeted_partitions = 0;
        assert_eq!(unknown, pick(&nodes, user));
    }
}
