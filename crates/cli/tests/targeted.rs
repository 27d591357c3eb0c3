//! Targeted traffic on a real Kafka-protocol broker (Tansu): a node fetches only the
//! targeted records of its users and only the replies for its own waiters, and a user
//! who moves to a node that did not read their partition still gets everything.

mod common;

use std::time::Duration;

use common::broker::Broker;
use common::*;
use pushcenter_node::placement::{partition_of, reply_partition};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

const PARTITIONS: u32 = 12;
const REPLIES: u32 = 4;
const CONFIG: &str = "insecure_login_as_user = true\n\
    [kafka]\ntargeted_partitions = 12\nreplies_partitions = 4\n";

fn nodes(broker: &Broker, cfg: &TempConfig, ids: &[&str]) -> Vec<Node> {
    ids.iter()
        .map(|id| Node::cluster(id, &broker.brokers(), &["--config", cfg.path()]))
        .collect()
}

/// Users whose partitions differ from each other and from every node's home partition.
fn users(n: usize, nodes: &[&str]) -> Vec<String> {
    let mut taken: Vec<u32> = nodes.iter().map(|n| partition_of(n, PARTITIONS)).collect();
    let mut out = Vec::new();
    for i in 0.. {
        let u = format!("user{i}");
        let p = partition_of(&u, PARTITIONS);
        if !taken.contains(&p) {
            taken.push(p);
            out.push(u);
            if out.len() == n {
                break;
            }
        }
    }
    out
}

async fn push(node: &Node, user: &str, body: &str) {
    let (status, b) = http(
        node.http,
        "POST",
        "/v1/publish",
        &json!({"destination": "/user/queue/q", "user": user, "body": body}).to_string(),
    )
    .await;
    assert_eq!(status, 202, "{b}");
}

fn numbered(from: usize, to: usize) -> Vec<String> {
    (from..to).map(|i| i.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_fetches_only_the_targeted_records_of_its_own_users() {
    let broker = Broker::start();
    // Routed on three threads: each user's records still in order.
    let cfg = TempConfig::write("targeted", &format!("{CONFIG}routing_threads = 3\n"));
    let ids = ["n1", "n2", "n3"];
    let nodes = nodes(&broker, &cfg, &ids);
    for n in &nodes {
        ready(n).await;
    }
    let u = users(2, &ids);
    let (mut alice, _) = WsClient::login(&nodes[0].ws_url(), Some(&u[0])).await;
    let (mut bob, _) = WsClient::login(&nodes[1].ws_url(), Some(&u[1])).await;
    alice.subscribe_resuming("q", "/user/queue/q", None).await;
    bob.subscribe_resuming("q", "/user/queue/q", None).await;
    // Published on the node that holds neither.
    for i in 0..20 {
        push(&nodes[2], &u[0], &i.to_string()).await;
        push(&nodes[2], &u[1], &i.to_string()).await;
    }
    let (got, last) = alice.bodies(20).await;
    assert_eq!(got, numbered(0, 20));
    let p = partition_of(&u[0], PARTITIONS);
    assert_eq!(last, format!("t{p}-19"), "ids name the targeted partition");
    assert_eq!(bob.bodies(20).await.0, numbered(0, 20));
    // Each node fetched its own user's records only; the third none.
    assert_eq!(
        stat(nodes[0].http, "bus_records_fetched_targeted_total").await,
        20
    );
    assert_eq!(
        stat(nodes[1].http, "bus_records_fetched_targeted_total").await,
        20
    );
    assert_eq!(
        stat(nodes[2].http, "bus_records_fetched_targeted_total").await,
        0
    );
    assert_eq!(
        stat(nodes[2].http, "bus_records_fetched_messages_total").await,
        0
    );
    // A node reads its users' partitions and its home partition, no more.
    assert_eq!(stat(nodes[0].http, "bus_partitions_read_targeted").await, 2);
    assert_eq!(stat(nodes[2].http, "bus_partitions_read_targeted").await, 1);

    // A backend that still writes targeted records to the messages topic: delivered
    // (every node fetches those).
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .create()
        .expect("producer");
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "destination",
            value: Some("/user/queue/q"),
        })
        .insert(Header {
            key: "user",
            value: Some(u[0].as_str()),
        });
    producer
        .send(
            FutureRecord::to("pushcenter.messages")
                .key(&u[0])
                .payload("old-style")
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
    assert_eq!(alice.bodies(1).await.0, ["old-style"]);
    bob.expect_silence(Duration::from_millis(300)).await;
    for n in &nodes {
        stat_becomes(n.http, "bus_records_fetched_messages_total", 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_moves_to_a_node_that_did_not_read_their_partition_gets_everything() {
    let broker = Broker::start();
    let cfg = TempConfig::write("targeted-move", CONFIG);
    let ids = ["n1", "n2"];
    let nodes = nodes(&broker, &cfg, &ids);
    for n in &nodes {
        ready(n).await;
    }
    let both = users(2, &ids);
    let (user, mallory) = (&both[0], &both[1]);
    let (mut ws, _) = WsClient::login(&nodes[0].ws_url(), Some(user)).await;
    ws.subscribe_resuming("q", "/user/queue/q", None).await;
    for i in 0..5 {
        push(&nodes[1], user, &i.to_string()).await;
    }
    let (got, last) = ws.bodies(5).await;
    assert_eq!(got, numbered(0, 5));
    drop(ws);
    // Away: n1 still reads the partition for a while, n2 never has.
    for i in 5..15 {
        push(&nodes[0], user, &i.to_string()).await;
    }
    assert_eq!(
        stat(nodes[1].http, "bus_records_fetched_targeted_total").await,
        0
    );
    let (mut ws, _) = WsClient::login(&nodes[1].ws_url(), Some(user)).await;
    let r = ws
        .subscribe_resuming("q", "/user/queue/q", Some(&last))
        .await;
    assert_eq!(r.get("resume"), Some("ok"), "{r:?}");
    assert_eq!(ws.bodies(10).await.0, numbered(5, 15));
    // Then live from n2's own read of the partition, nothing twice.
    push(&nodes[0], user, "15").await;
    assert_eq!(ws.bodies(1).await.0, ["15"]);
    ws.expect_silence(Duration::from_millis(300)).await;
    assert!(stat(nodes[1].http, "bus_records_fetched_targeted_total").await >= 1);
    // n2 read the partition's recent history before CONNECTED: the resume came from its
    // window, not from the log.
    assert_eq!(stat(nodes[1].http, "resume_log_reads_total").await, 0);
    assert!(stat(nodes[1].http, "messages_history_total").await >= 15);

    // Another user names that partition from its start in a resume, on the node that
    // reads it now: nothing of it, nothing read from the log, nothing reported lost.
    let (mut m, _) = WsClient::login(&nodes[1].ws_url(), Some(mallory)).await;
    let stream = last.rsplit_once('-').expect("an id").0.to_string();
    let r = m
        .subscribe_resuming("q", "/user/queue/q", Some(&format!("{stream}-0")))
        .await;
    assert_eq!(r.get("resume"), Some("ok"), "{r:?}");
    m.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(stat(nodes[1].http, "resume_log_reads_total").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_and_delivery_notes_reach_only_the_waiting_node() {
    let broker = Broker::start();
    let cfg = TempConfig::write("targeted-replies", CONFIG);
    let ids = ["n1", "n2", "n3"];
    // Each its own replies partition.
    let parts: Vec<u32> = ids.iter().map(|n| reply_partition(n, REPLIES)).collect();
    assert!(parts[0] != parts[1] && parts[1] != parts[2] && parts[0] != parts[2]);
    let nodes = nodes(&broker, &cfg, &ids);
    for n in &nodes {
        ready(n).await;
    }
    let user = users(1, &ids).remove(0);
    let (mut ws, _) = WsClient::login(&nodes[0].ws_url(), Some(&user)).await;
    ws.subscribe_resuming("q", "/user/queue/requests", None)
        .await;
    let answering = ws.answer_requests("n1".into());
    // Called on n2, answered by the client on n1, 5 times.
    for i in 0..5 {
        let (status, body) = http(
            nodes[1].http,
            "POST",
            "/v1/requests",
            &json!({"user": user, "destination": "/user/queue/requests",
                    "body": format!("q{i}"), "timeout_ms": 5000})
            .to_string(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&format!("n1:q{i}")), "{body}");
    }
    // n2 fetched its 5 answers and 5 delivery notes; n1 and n3 none of them.
    stat_becomes(nodes[1].http, "bus_records_fetched_replies_total", 10).await;
    assert_eq!(
        stat(nodes[0].http, "bus_records_fetched_replies_total").await,
        0
    );
    assert_eq!(
        stat(nodes[2].http, "bus_records_fetched_replies_total").await,
        0
    );
    answering.abort();
}
