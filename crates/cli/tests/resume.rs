//! Resume after reconnect (`resume-from` on SUBSCRIBE; docs/delivery.md): on one node,
//! and across nodes on a Kafka-protocol broker, with the replay window's limits.

mod common;

use std::time::Duration;

use common::broker::Broker;
use common::*;
use pushcenter_stomp::{Command, Frame};

/// SUBSCRIBE with a receipt (and `resume-from` when given); returns the RECEIPT.
async fn nothing_more(ws: &mut WsClient) {
    if let Some(f) = ws.frame_within(Duration::from_millis(500)).await {
        panic!(
            "unexpected {:?} {:?}",
            f.command,
            String::from_utf8_lossy(&f.body)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_the_same_node_replays_what_was_missed_once_then_goes_live() {
    let node = Node::standalone(&[]);
    let mut ws = WsClient::connect(&node.ws_url()).await;
    let r = ws.subscribe_resuming("a", "/topic/r.*", None).await;
    // The in-memory bus is one stream named after the node; ids count from 1.
    assert_eq!(r.get("position"), Some("node-1-0"), "{r:?}");
    for i in 0..3 {
        publish(node.http, "/topic/r.x", &format!("m{i}")).await;
    }
    publish(node.http, "/topic/other", "not mine").await;
    let (got, last) = ws.bodies(3).await;
    assert_eq!(got, ["m0", "m1", "m2"]);
    drop(ws);

    for i in 3..6 {
        publish(node.http, "/topic/r.y", &format!("m{i}")).await;
    }
    let mut ws = WsClient::connect(&node.ws_url()).await;
    let r = ws.subscribe_resuming("a", "/topic/r.*", Some(&last)).await;
    assert_eq!(r.get("resume"), Some("ok"), "{r:?}");
    publish(node.http, "/topic/r.x", "m6").await;
    let (got, _) = ws.bodies(4).await;
    assert_eq!(got, ["m3", "m4", "m5", "m6"]);
    nothing_more(&mut ws).await;
}

/// More missed than the connection's outbound queue holds: the newest part comes, the
/// rest is answered lost, and the client stays connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_larger_than_the_outbound_queue_keeps_the_newest_and_says_lost() {
    let config =
        std::env::temp_dir().join(format!("pushcenter-bigreplay-{}.toml", std::process::id()));
    std::fs::write(&config, "outbound_max_messages = 10\n").expect("config");
    let node = Node::standalone(&["--config", config.to_str().expect("utf-8")]);
    let _ = std::fs::remove_file(&config);
    let mut ws = WsClient::connect(&node.ws_url()).await;
    let r = ws.subscribe_resuming("a", "/topic/big", None).await;
    let start = r.get("position").unwrap_or_default().to_string();
    drop(ws);
    for i in 0..30 {
        publish(node.http, "/topic/big", &format!("m{i}")).await;
    }
    let mut ws = WsClient::connect(&node.ws_url()).await;
    let r = ws.subscribe_resuming("a", "/topic/big", Some(&start)).await;
    assert_eq!(r.get("resume"), Some("lost"), "{r:?}");
    assert_eq!(r.get("resume-lost"), Some("node-1"), "{r:?}");
    let (got, _) = ws.bodies(10).await;
    let want: Vec<String> = (20..30).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);
    publish(node.http, "/topic/big", "live").await;
    let (got, _) = ws.bodies(1).await;
    assert_eq!(got, ["live"]);
}

/// The node a client moves to may be behind the one it left: what the client's position
/// says it has must not come again when this node catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_ahead_of_the_node_is_not_delivered_again() {
    let node = Node::standalone(&[]);
    publish(node.http, "/topic/ahead", "m1").await;
    let mut ws = WsClient::connect(&node.ws_url()).await;
    // The client saw up to id 3 elsewhere; this node has only reached 1.
    let r = ws
        .subscribe_resuming("a", "/topic/ahead", Some("node-1-3"))
        .await;
    assert_eq!(r.get("resume"), Some("ok"), "{r:?}");
    for i in 2..=5 {
        publish(node.http, "/topic/ahead", &format!("m{i}")).await;
    }
    let (got, last) = ws.bodies(2).await;
    assert_eq!(got, ["m4", "m5"]);
    assert_eq!(last, "node-1-5");
    nothing_more(&mut ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_older_than_the_window_is_answered_lost() {
    let config =
        std::env::temp_dir().join(format!("pushcenter-resume-{}.toml", std::process::id()));
    std::fs::write(&config, "replay_window_bytes = 2000\n").expect("config");
    let node = Node::standalone(&["--config", config.to_str().expect("utf-8")]);
    let mut ws = WsClient::connect(&node.ws_url()).await;
    ws.subscribe_resuming("a", "/topic/lost", None).await;
    publish(node.http, "/topic/lost", "first").await;
    let (_, first) = ws.bodies(1).await;
    drop(ws);
    // Far more than 2,000 bytes: the window no longer reaches back to `first`.
    for i in 0..40 {
        publish(node.http, "/topic/lost", &format!("{i:0>100}")).await;
    }
    let mut ws = WsClient::connect(&node.ws_url()).await;
    let r = ws
        .subscribe_resuming("a", "/topic/lost", Some(&first))
        .await;
    let _ = std::fs::remove_file(&config);
    assert_eq!(r.get("resume"), Some("lost"), "{r:?}");
    assert_eq!(
        r.get("resume-lost"),
        Some(first.rsplit_once('-').unwrap().0)
    );
    // What the window still has comes, newest last.
    let (got, _) = ws.bodies(1).await;
    assert!(got[0].len() == 100, "{got:?}");

    // A malformed position is an ERROR, not a silent fresh start.
    let mut ws = WsClient::connect(&node.ws_url()).await;
    ws.send(
        &Frame::new(Command::Subscribe)
            .header("id", "b")
            .header("destination", "/topic/lost")
            .header("resume-from", "yesterday"),
    )
    .await;
    let e = ws.frame().await.expect("ERROR");
    assert_eq!(e.command, Command::Error);
    assert!(
        e.get("message")
            .unwrap_or_default()
            .starts_with("resume-from"),
        "{e:?}"
    );
}

/// Message ids a client saw, as the last offset per stream: what `resume-from` carries.
#[derive(Default)]
struct Positions(std::collections::BTreeMap<String, i64>);

impl Positions {
    fn see(&mut self, id: &str) {
        let (stream, offset) = id.rsplit_once('-').expect("stream-offset");
        let offset: i64 = offset.parse().expect("offset");
        let e = self.0.entry(stream.to_string()).or_insert(offset);
        *e = (*e).max(offset);
    }

    fn header(&self) -> String {
        let ids: Vec<String> = self.0.iter().map(|(s, o)| format!("{s}-{o}")).collect();
        ids.join(",")
    }
}

/// The next `n` MESSAGEs' bodies; their ids go into `pos`.
async fn track(ws: &mut WsClient, n: usize, pos: &mut Positions) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        let f = ws
            .frame()
            .await
            .unwrap_or_else(|| panic!("message {} of {n}", out.len() + 1));
        if f.command != Command::Message {
            continue;
        }
        pos.see(f.get("message-id").expect("message-id"));
        out.push(String::from_utf8_lossy(&f.body).into_owned());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_another_node_after_kill_9_loses_nothing_and_repeats_nothing() {
    let broker = Broker::start();
    let mut n1 = Node::cluster("n1", &broker.brokers(), &[]);
    let n2 = Node::cluster("n2", &broker.brokers(), &[]);
    ready(&n1).await;
    ready(&n2).await;
    let key = |i: usize| format!("/topic/fail.k{}", i % 4);
    let mut ws = WsClient::connect(&n1.ws_url()).await;
    let r = ws.subscribe_resuming("a", "/topic/fail.#", None).await;
    let mut pos = Positions::default();
    for id in r
        .get("position")
        .expect("position")
        .split(',')
        .filter(|s| !s.is_empty())
    {
        pos.see(id);
    }
    for i in 0..20 {
        assert_eq!(publish(n2.http, &key(i), &format!("m{i}")).await.0, 202);
    }
    let got = track(&mut ws, 20, &mut pos).await;
    assert_eq!(got.len(), 20);
    n1.signal("KILL");
    drop(ws);

    // Published while the client has no node.
    for i in 20..40 {
        assert_eq!(publish(n2.http, &key(i), &format!("m{i}")).await.0, 202);
    }
    let mut ws = WsClient::connect(&n2.ws_url()).await;
    let r = ws
        .subscribe_resuming("a", "/topic/fail.#", Some(&pos.header()))
        .await;
    assert_eq!(r.get("resume"), Some("ok"), "{r:?}");
    assert_eq!(publish(n2.http, &key(40), "m40").await.0, 202);
    let after = track(&mut ws, 21, &mut pos).await;
    nothing_more(&mut ws).await;

    // Exactly the 21 it had not seen, each key in publish order.
    let n = |b: &String| b[1..].parse::<usize>().expect("m<i>");
    let mut all: Vec<usize> = after.iter().map(n).collect();
    for k in 0..4 {
        let of_key: Vec<usize> = all.iter().copied().filter(|i| i % 4 == k).collect();
        assert!(
            of_key.windows(2).all(|w| w[0] < w[1]),
            "key {k} out of order: {of_key:?}"
        );
    }
    all.sort_unstable();
    assert_eq!(all, (20..=40).collect::<Vec<_>>());
}

/// n1 delivers m0..m9 and dies; m10..m19 are published while no node is up; n2 starts
/// after that (with `n2_config`) and the client resumes there. Returns n2's stats.
async fn resume_on_a_node_started_after_the_gap(n2_config: &str) -> String {
    let broker = Broker::start();
    let mut n1 = Node::cluster("n1", &broker.brokers(), &[]);
    ready(&n1).await;
    let mut ws = WsClient::connect(&n1.ws_url()).await;
    let r = ws.subscribe_resuming("a", "/topic/gap", None).await;
    let mut pos = Positions::default();
    for id in r
        .get("position")
        .expect("position")
        .split(',')
        .filter(|s| !s.is_empty())
    {
        pos.see(id);
    }
    for i in 0..10 {
        assert_eq!(
            publish(n1.http, "/topic/gap", &format!("m{i}")).await.0,
            202
        );
    }
    track(&mut ws, 10, &mut pos).await;
    n1.signal("KILL");
    drop(ws);

    // Published with no node up at all: n2, started after, never routed these.
    let producer = Node::cluster("p", &broker.brokers(), &[]);
    ready(&producer).await;
    for i in 10..20 {
        assert_eq!(
            publish(producer.http, "/topic/gap", &format!("m{i}"))
                .await
                .0,
            202
        );
    }
    let config = std::env::temp_dir().join(format!(
        "pushcenter-gap-{}-{}.toml",
        std::process::id(),
        n2_config.len()
    ));
    std::fs::write(&config, n2_config).expect("config");
    let n2 = Node::cluster(
        "n2",
        &broker.brokers(),
        &["--config", config.to_str().expect("utf-8")],
    );
    ready(&n2).await;
    let _ = std::fs::remove_file(&config);
    // A client that subscribes fresh on n2 gets nothing of the history.
    let mut fresh = WsClient::connect(&n2.ws_url()).await;
    fresh.subscribe_resuming("f", "/topic/gap", None).await;

    let mut ws = WsClient::connect(&n2.ws_url()).await;
    let r = ws
        .subscribe_resuming("a", "/topic/gap", Some(&pos.header()))
        .await;
    assert_eq!(r.get("resume"), Some("ok"), "{r:?}");
    assert_eq!(publish(n2.http, "/topic/gap", "m20").await.0, 202);
    let got = track(&mut ws, 11, &mut pos).await;
    let want: Vec<String> = (10..=20).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);
    nothing_more(&mut ws).await;
    let (got, _) = fresh.bodies(1).await;
    assert_eq!(got, ["m20"]);
    nothing_more(&mut fresh).await;
    let (_, stats) = http(n2.http, "GET", "/v1/stats", "").await;
    assert!(stats.contains("\"messages_replayed_total\":10"), "{stats}");
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reads_recent_history_at_start_so_a_resume_there_needs_no_log_read() {
    let stats = resume_on_a_node_started_after_the_gap("").await;
    // m0..m19 (and the records of the other test nodes' start) came as history.
    assert!(stats.contains("\"resume_log_reads_total\":0"), "{stats}");
    assert!(!stats.contains("\"messages_history_total\":0,"), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_before_the_window_is_read_back_from_kafka() {
    // A window of one record: the gap can only come from the log.
    let stats = resume_on_a_node_started_after_the_gap("replay_window_bytes = 200\n").await;
    assert!(!stats.contains("\"resume_log_reads_total\":0,"), "{stats}");
}

/// Tansu cannot drop old records (no retention, no DeleteRecords), so this one runs on
/// librdkafka's mock cluster: a Kafka-protocol broker in the test process, on a real TCP
/// port, which keeps at most 5 MiB per partition and drops the oldest batches beyond.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_kafka_no_longer_has_is_answered_lost() {
    use rdkafka::config::ClientConfig;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let cluster = MockCluster::new(1).expect("mock cluster");
    for topic in [
        "pushcenter.messages",
        "pushcenter.targeted",
        "pushcenter.replies",
    ] {
        cluster.create_topic(topic, 1, 1).expect("topic");
    }
    let brokers = cluster.bootstrap_servers();
    let config =
        std::env::temp_dir().join(format!("pushcenter-retention-{}.toml", std::process::id()));
    std::fs::write(&config, "replay_window_bytes = 2000\n").expect("config");
    let n1 = Node::cluster(
        "n1",
        &brokers,
        &["--config", config.to_str().expect("utf-8")],
    );
    ready(&n1).await;
    let mut ws = WsClient::connect(&n1.ws_url()).await;
    ws.subscribe_resuming("a", "/topic/old", None).await;
    assert_eq!(publish(n1.http, "/topic/old", "first").await.0, 202);
    let (_, first) = ws.bodies(1).await;
    assert_eq!(first, "0-0");
    drop(ws);
    // Beyond the 2,000-byte window but still in the broker's log: read back from it.
    for i in 0..30 {
        let body = format!("{i:0>100}");
        assert_eq!(publish(n1.http, "/topic/old", &body).await.0, 202);
    }
    let mut ws = WsClient::connect(&n1.ws_url()).await;
    let r = ws.subscribe_resuming("a", "/topic/old", Some(&first)).await;
    assert_eq!(r.get("resume"), Some("ok"), "{r:?}");
    let (got, _) = ws.bodies(30).await;
    assert_eq!(
        got.last().map(String::as_str),
        Some(&*format!("{:0>100}", 29))
    );
    drop(ws);

    // 8 MiB more on the partition: the broker drops its oldest records, `first` with them.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    let body = "x".repeat(64 * 1024);
    for _ in 0..128 {
        let headers = OwnedHeaders::new().insert(Header {
            key: "destination",
            value: Some("/topic/filler"),
        });
        producer
            .send(
                FutureRecord::<str, str>::to("pushcenter.messages")
                    .payload(&body)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .expect("produce");
    }

    let mut ws = WsClient::connect(&n1.ws_url()).await;
    let r = ws.subscribe_resuming("a", "/topic/old", Some(&first)).await;
    let _ = std::fs::remove_file(&config);
    assert_eq!(r.get("resume"), Some("lost"), "{r:?}");
    assert_eq!(r.get("resume-lost"), Some("0"), "{r:?}");
    // Then live, as after any subscription.
    assert_eq!(publish(n1.http, "/topic/old", "next").await.0, 202);
    let (got, _) = ws.bodies(1).await;
    assert_eq!(got, ["next"]);
    let (_, stats) = http(n1.http, "GET", "/v1/stats", "").await;
    assert!(stats.contains("\"resumes_lost_total\":1"), "{stats}");
    assert!(stats.contains("\"messages_replayed_total\":30"), "{stats}");
}

/// A subscription whose destination is quiet still moves its position forward through
/// position updates, so a resume elsewhere needs nothing from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn position_updates_keep_a_quiet_subscriptions_position_current() {
    let broker = Broker::start();
    let config =
        std::env::temp_dir().join(format!("pushcenter-positions-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        "position_updates = \"200ms\"\nreplay_window_bytes = 200\n",
    )
    .expect("config");
    let cfg = config.to_str().expect("utf-8").to_string();
    let mut n1 = Node::cluster("n1", &broker.brokers(), &["--config", &cfg]);
    ready(&n1).await;
    let mut ws = WsClient::open(&n1.ws_url(), Some("v12.stomp")).await;
    ws.send(
        &Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("host", "x")
            .header("position-updates", "on"),
    )
    .await;
    assert_eq!(
        ws.frame().await.expect("CONNECTED").command,
        Command::Connected
    );
    let r = ws.subscribe_resuming("q", "/topic/quiet", None).await;
    let mut pos = Positions::default();
    for id in r.get("position").unwrap_or_default().split(',') {
        if !id.is_empty() {
            pos.see(id);
        }
    }
    // Traffic on other destinations, so every partition moves on.
    const BUSY: i64 = 60;
    for i in 0..BUSY {
        let dest = format!("/topic/busy.{i}");
        assert_eq!(publish(n1.http, &dest, "x").await.0, 202);
    }
    // Offsets count from 0 in each partition: the last ones add up to BUSY.
    let seen = |pos: &Positions| pos.0.values().map(|o| o + 1).sum::<i64>();
    while seen(&pos) < BUSY {
        let f = ws
            .frame_within(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("no position update; positions {:?}", pos.0));
        assert_eq!(f.command, Command::Receipt, "{f:?}");
        assert_eq!(f.get("receipt-id"), Some("position"), "{f:?}");
        assert_eq!(f.get("subscription"), Some("q"), "{f:?}");
        for id in f.get("position").unwrap_or_default().split(',') {
            if !id.is_empty() {
                pos.see(id);
            }
        }
    }
    assert!(pos.0.len() > 1, "several partitions: {:?}", pos.0);
    n1.signal("KILL");
    drop(ws);

    // n2 keeps one record in its window: a stale position would need the log.
    let n2 = Node::cluster("n2", &broker.brokers(), &["--config", &cfg]);
    ready(&n2).await;
    let _ = std::fs::remove_file(&config);
    let mut ws = WsClient::connect(&n2.ws_url()).await;
    let r = ws
        .subscribe_resuming("q", "/topic/quiet", Some(&pos.header()))
        .await;
    assert_eq!(r.get("resume"), Some("ok"), "{r:?}");
    assert_eq!(publish(n2.http, "/topic/quiet", "now").await.0, 202);
    let (got, _) = ws.bodies(1).await;
    assert_eq!(got, ["now"]);
    nothing_more(&mut ws).await;
    let (_, stats) = http(n2.http, "GET", "/v1/stats", "").await;
    assert!(stats.contains("\"resume_log_reads_total\":0"), "{stats}");
    assert!(stats.contains("\"messages_replayed_total\":0"), "{stats}");
}
