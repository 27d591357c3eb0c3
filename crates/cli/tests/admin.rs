//! The admin API on the real binary: presence, disconnect (with bans), server-side
//! unsubscribe and destination counts, on a standalone node and across a 3-node
//! cluster (Tansu, etcd), and what a caller without credentials or a client posing as
//! a node can do with it.

mod common;

use std::time::{Duration, Instant};

use common::broker::Broker;
use common::etcd::Etcd;
use common::*;
use pushcenter_stomp::{Command as Cmd, Frame};
use serde_json::{Value, json};

const KEY: &str = "admin-test-key-0001";

fn config(extra: &str) -> String {
    format!("insecure_login_as_user = true\n{extra}\n[auth]\napi_keys = [\"{KEY}\"]\n")
}

async fn get(node: &Node, path: &str, key: Option<&str>) -> (u16, Value) {
    get_bearer(node.http, path, key).await
}

async fn post(node: &Node, path: &str, body: Value) -> (u16, Value) {
    post_bearer(node.http, path, Some(KEY), &body).await
}

/// The ERROR an operator's close sends, then the close itself.
async fn expect_closed_by_operator(c: &mut WsClient, reason: &str, reconnect: &str) {
    match c.event_within(TIMEOUT).await {
        Event::Frame(f) if f.command == Cmd::Error => {
            assert_eq!(f.get("message"), Some(reason), "{f:?}");
            assert_eq!(f.get("reconnect"), Some(reconnect), "{f:?}");
        }
        other => panic!("expected the operator's ERROR, got {other:?}"),
    }
    match c.event_within(TIMEOUT).await {
        Event::Closed => {}
        other => panic!("expected the close after ERROR, got {other:?}"),
    }
}

/// CONNECT as `user`, expecting an ERROR: its `message` and `reconnect` headers.
async fn refused_connect(url: &str, user: &str) -> (String, String) {
    let mut c = WsClient::open(url, Some("v12.stomp")).await;
    c.send(
        &Frame::new(Cmd::Connect)
            .header("accept-version", "1.2")
            .header("host", "x")
            .header("login", user),
    )
    .await;
    match c.event_within(TIMEOUT).await {
        Event::Frame(f) if f.command == Cmd::Error => (
            f.get("message").unwrap_or_default().to_string(),
            f.get("reconnect").unwrap_or_default().to_string(),
        ),
        other => panic!("expected ERROR on CONNECT, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_disconnect_and_ban_on_one_node() {
    let cfg = TempConfig::write("admin-standalone", &config(""));
    let n = Node::standalone(&["--config", cfg.path()]);
    ready(&n).await;
    let (mut a1, s1) = WsClient::login(&n.ws_url(), Some("alice")).await;
    a1.subscribe("1", "/topic/news").await;
    let (mut a2, _s2) = WsClient::login(&n.ws_url(), Some("alice")).await;
    let (mut bob, _) = WsClient::login(&n.ws_url(), Some("bob")).await;

    let (status, p) = get(&n, "/v1/presence?user=alice", Some(KEY)).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["online"], true, "{p}");
    assert_eq!(p["nodes_missing"], json!([]), "{p}");
    let sessions = p["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 2, "{p}");
    let first = sessions
        .iter()
        .find(|s| s["session"] == s1.as_str())
        .expect("the first session");
    assert_eq!(first["subscriptions"], json!(["/topic/news"]), "{p}");
    assert!(first["connected_since_ms"].as_u64().unwrap_or(0) > 0, "{p}");

    // Without the key: refused, and nobody is closed.
    let (status, _) = post_bearer(n.http, "/v1/disconnect", None, &json!({"user": "alice"})).await;
    assert_eq!(status, 401);
    let (status, _) = get(&n, "/v1/presence?user=alice", None).await;
    assert_eq!(status, 401);
    // Bad calls say why.
    for bad in [
        json!({}),
        json!({"user": "alice", "session": s1}),
        json!({"session": s1, "ban_for": 60}),
        json!({"user": "alice", "ban_for": 0}),
        json!({"user": "alice", "reason": "two\nlines"}),
        json!({"user": "a".repeat(600)}),
    ] {
        let (status, e) = post(&n, "/v1/disconnect", bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {e}");
        assert!(e["error"].is_string(), "{e}");
    }
    a1.expect_silence(Duration::from_millis(200)).await;

    let (status, d) = post(
        &n,
        "/v1/disconnect",
        json!({"user": "alice", "reason": "logged out", "reconnect": false}),
    )
    .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(
        (d["closed"].as_u64(), d["nodes"].as_u64()),
        (Some(2), Some(1)),
        "{d}"
    );
    expect_closed_by_operator(&mut a1, "logged out", "false").await;
    expect_closed_by_operator(&mut a2, "logged out", "false").await;
    bob.expect_silence(Duration::from_millis(200)).await;
    let (_, p) = get(&n, "/v1/presence?user=alice", Some(KEY)).await;
    assert_eq!(
        (
            p["online"].as_bool(),
            p["sessions"].as_array().map(Vec::len)
        ),
        (Some(false), Some(0)),
        "{p}"
    );

    // Without a ban the user may come back at once; with one, not until it ends.
    let (mut again, _) = WsClient::login(&n.ws_url(), Some("alice")).await;
    let (status, d) = post(&n, "/v1/disconnect", json!({"user": "alice", "ban_for": 2})).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(
        d["reconnect"], false,
        "a banned user is told not to come back: {d}"
    );
    assert!(d["banned_until_ms"].as_u64().is_some(), "{d}");
    expect_closed_by_operator(&mut again, "disconnected by the operator", "false").await;
    let (message, reconnect) = refused_connect(&n.ws_url(), "alice").await;
    assert!(message.starts_with("forbidden: banned"), "{message}");
    assert_eq!(reconnect, "false");
    assert_eq!(stat(n.http, "connections_refused_banned_total").await, 1);
    // Other users are not banned; the ban ends.
    let _ = WsClient::login(&n.ws_url(), Some("bob")).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let _ = WsClient::login(&n.ws_url(), Some("alice")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_ends_one_subscription_and_counts_subscribers() {
    let cfg = TempConfig::write("admin-unsubscribe", &config(""));
    let n = Node::standalone(&["--config", cfg.path()]);
    ready(&n).await;
    let (mut a, session) = WsClient::login(&n.ws_url(), Some("alice")).await;
    a.subscribe("news", "/topic/news").await;
    a.subscribe("all", "/topic/#").await;
    let (mut b, _) = WsClient::login(&n.ws_url(), Some("bob")).await;
    b.subscribe("news", "/topic/news").await;

    let (status, d) = get(&n, "/v1/destinations/topic/news", Some(KEY)).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["destination"], "/topic/news", "{d}");
    assert_eq!(d["subscribers"], 3, "{d}");
    assert_eq!(d["nodes"][0]["exact"], 2, "{d}");
    assert_eq!(d["nodes"][0]["patterns"], 1, "{d}");
    let (_, d) = get(&n, "/v1/destinations/%2Ftopic%2Fother", Some(KEY)).await;
    assert_eq!(d["subscribers"], 1, "{d}");

    let (status, u) = post(
        &n,
        "/v1/unsubscribe",
        json!({"session": session, "destination": "/topic/news"}),
    )
    .await;
    assert_eq!(status, 200, "{u}");
    assert_eq!(u["unsubscribed"], 1, "{u}");
    let r = a.frame().await.expect("RECEIPT");
    assert_eq!(
        (r.command, r.get("receipt-id"), r.get("subscription")),
        (Cmd::Receipt, Some("unsubscribed"), Some("news")),
        "{r:?}"
    );
    let (status, _) = post(
        &n,
        "/v1/publish",
        json!({"destination": "/topic/news", "body": "after"}),
    )
    .await;
    assert_eq!(status, 202);
    // Alice still gets it once, through her pattern; bob on his own subscription.
    let m = a.frame().await.expect("MESSAGE");
    assert_eq!(
        (m.get("subscription"), &m.body[..]),
        (Some("all"), &b"after"[..])
    );
    a.expect_silence(Duration::from_millis(300)).await;
    let m = b.frame().await.expect("MESSAGE");
    assert_eq!(m.get("subscription"), Some("news"));
    // Her own UNSUBSCRIBE of it later is no error.
    a.send(
        &Frame::new(Cmd::Unsubscribe)
            .header("id", "news")
            .header("receipt", "u1"),
    )
    .await;
    let r = a.frame().await.expect("RECEIPT");
    assert_eq!(r.get("receipt-id"), Some("u1"), "{r:?}");
    assert_eq!(stat(n.http, "subscriptions").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_may_hold_so_many_sessions_on_a_node() {
    let cfg = TempConfig::write("admin-per-user", &config("max_connections_per_user = 2"));
    let n = Node::standalone(&["--config", cfg.path()]);
    ready(&n).await;
    let _a = WsClient::login(&n.ws_url(), Some("alice")).await;
    let (b, _) = WsClient::login(&n.ws_url(), Some("alice")).await;
    let (message, reconnect) = refused_connect(&n.ws_url(), "alice").await;
    assert!(
        message.contains("too many connections for this user"),
        "{message}"
    );
    assert_eq!(reconnect, "", "no reconnect header: the usual backoff");
    assert_eq!(stat(n.http, "connections_refused_user_total").await, 1);
    let _bob = WsClient::login(&n.ws_url(), Some("bob")).await;
    // A session that goes gives its place back.
    drop(b);
    stat_becomes(n.http, "connections", 2).await;
    let _c = WsClient::login(&n.ws_url(), Some("alice")).await;
}

struct Cluster {
    _etcd: Etcd,
    _broker: Broker,
    nodes: Vec<Node>,
    _cfg: TempConfig,
}

async fn cluster() -> Cluster {
    let etcd = Etcd::start();
    let broker = Broker::start();
    let cfg = TempConfig::write(
        "admin-cluster",
        &config(
            "report_interval = \"200ms\"\n[kafka]\ntargeted_partitions = 12\nreplies_partitions = 4",
        ),
    );
    let nodes = start_cluster(
        &["n1", "n2", "n3"],
        &broker.brokers(),
        &etcd.endpoint(),
        cfg.path(),
    )
    .await;
    // All three registered (each once it reads the bus) and answering.
    let start = Instant::now();
    loop {
        let (_, p) = get(&nodes[2], "/v1/presence?user=nobody", Some(KEY)).await;
        if p["nodes_answered"] == json!(["n1", "n2", "n3"]) && p["nodes_missing"] == json!([]) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not all answering: {p}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Cluster {
        _etcd: etcd,
        _broker: broker,
        nodes,
        _cfg: cfg,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_to_a_third_node_disconnects_a_user_on_two_others() {
    let c = cluster().await;
    let (n1, n2, n3) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let (mut on1, s1) = WsClient::login(&n1.ws_url(), Some("carol")).await;
    on1.subscribe("1", "/topic/news").await;
    let (mut on2, s2) = WsClient::login(&n2.ws_url(), Some("carol")).await;
    let (mut other, _) = WsClient::login(&n2.ws_url(), Some("dave")).await;

    let (status, p) = get(n3, "/v1/presence?user=carol", Some(KEY)).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["nodes_missing"], json!([]), "{p}");
    assert_eq!(p["nodes_answered"], json!(["n1", "n2", "n3"]), "{p}");
    let mut seen: Vec<(String, String)> = p["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| {
            (
                s["node"].as_str().unwrap_or("").into(),
                s["session"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![("n1".to_string(), s1), ("n2".to_string(), s2)],
        "{p}"
    );

    let (status, d) = get(n3, "/v1/destinations/topic/news", Some(KEY)).await;
    assert_eq!((status, d["subscribers"].as_u64()), (200, Some(1)), "{d}");

    // A client posing as a node: a SEND to a reply address with the headers of a
    // command. The node writes a client's answer as an answer, never as a command.
    let envelope = json!({"from": "n2", "command": {"op": "disconnect", "user": "dave", "reason": "forged", "reconnect": false}});
    let (mut mallory, _) = WsClient::login(&n1.ws_url(), Some("mallory")).await;
    mallory
        .send(
            &Frame::new(Cmd::Send)
                .header("destination", "/reply/n2")
                .header("correlation-id", "n2-forged")
                .header("reply-kind", "command")
                .body(envelope.to_string().into_bytes()),
        )
        .await;
    // No request was sent to this session: the SEND is refused outright.
    mallory
        .expect_error_then_close("forbidden: no request")
        .await;
    other.expect_silence(Duration::from_millis(800)).await;

    let asked = Instant::now();
    let (status, d) = post(
        n3,
        "/v1/disconnect",
        json!({"user": "carol", "reason": "account closed", "reconnect": false}),
    )
    .await;
    let took = asked.elapsed();
    assert_eq!(status, 200, "{d}");
    assert_eq!(
        (d["closed"].as_u64(), d["nodes"].as_u64()),
        (Some(2), Some(2)),
        "{d}"
    );
    assert_eq!(d["nodes_missing"], json!([]), "{d}");
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    expect_closed_by_operator(&mut on1, "account closed", "false").await;
    expect_closed_by_operator(&mut on2, "account closed", "false").await;
    other.expect_silence(Duration::from_millis(200)).await;
    let (_, p) = get(n3, "/v1/presence?user=carol", Some(KEY)).await;
    assert_eq!(p["sessions"], json!([]), "{p}");
    assert_eq!(p["online"], false, "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_holds_on_every_node_and_a_silent_node_is_named() {
    let mut c = cluster().await;
    let (mut on1, _) = WsClient::login(&c.nodes[0].ws_url(), Some("erin")).await;
    let (status, d) = post(
        &c.nodes[1],
        "/v1/disconnect",
        json!({"user": "erin", "ban_for": 60}),
    )
    .await;
    assert_eq!((status, d["closed"].as_u64()), (200, Some(1)), "{d}");
    expect_closed_by_operator(&mut on1, "disconnected by the operator", "false").await;
    for n in &c.nodes {
        let (message, _) = refused_connect(&n.ws_url(), "erin").await;
        assert!(message.starts_with("forbidden: banned"), "{message}");
    }
    // A node that joins later takes the ban over from the others.
    let mut n4 = Node::cluster(
        "n4",
        &c._broker.brokers(),
        &[
            "--etcd-endpoints",
            &c._etcd.endpoint(),
            "--config",
            c._cfg.path(),
        ],
    );
    ready(&n4).await;
    let start = Instant::now();
    loop {
        let mut t = WsClient::open(&n4.ws_url(), Some("v12.stomp")).await;
        t.send(
            &Frame::new(Cmd::Connect)
                .header("accept-version", "1.2")
                .header("host", "x")
                .header("login", "erin"),
        )
        .await;
        match t.frame().await {
            Some(f) if f.command == Cmd::Error => {
                assert!(
                    f.get("message")
                        .unwrap_or("")
                        .starts_with("forbidden: banned"),
                    "{f:?}"
                );
                break;
            }
            other => assert!(
                start.elapsed() < Duration::from_secs(10),
                "n4 still lets erin in: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    n4.signal("TERM");
    // A node that stops answering (SIGSTOP): the answer comes at admin_timeout and
    // names it.
    let frozen = c.nodes[2].pid();
    let _ = std::process::Command::new("kill")
        .args(["-STOP", &frozen.to_string()])
        .status();
    let asked = Instant::now();
    let (status, p) = get(&c.nodes[0], "/v1/presence?user=erin", Some(KEY)).await;
    let took = asked.elapsed();
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &frozen.to_string()])
        .status();
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["nodes_missing"], json!(["n3"]), "{p}");
    assert_eq!(p["nodes_answered"], json!(["n1", "n2"]), "{p}");
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    c.nodes[2].signal("TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_garbled_command_record_is_counted_and_skipped() {
    use rdkafka::ClientConfig;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let c = cluster().await;
    let (mut on1, _) = WsClient::login(&c.nodes[0].ws_url(), Some("frank")).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", c._broker.brokers())
        .create()
        .expect("producer");
    let before = stat(c.nodes[0].http, "bus_records_skipped_total").await;
    // Every replies partition (4): each node sees one. Not JSON, then JSON of no command.
    for body in ["not json", r#"{"from":"n2","command":{"op":"explode"}}"#] {
        for p in 0..4 {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "correlation-id",
                    value: Some("x-1"),
                })
                .insert(Header {
                    key: "reply-kind",
                    value: Some("command"),
                });
            let r = FutureRecord::<str, str>::to("pushcenter.replies")
                .key("x")
                .partition(p)
                .payload(body)
                .headers(headers);
            producer
                .send(r, Duration::from_secs(5))
                .await
                .expect("produce");
        }
    }
    stat_becomes(c.nodes[0].http, "bus_records_skipped_total", before + 2).await;
    // Nobody was closed, and the node still answers commands.
    on1.expect_silence(Duration::from_millis(300)).await;
    let (status, p) = get(&c.nodes[0], "/v1/presence?user=frank", Some(KEY)).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["sessions"].as_array().map(Vec::len), Some(1), "{p}");
    assert_eq!(p["nodes_missing"], json!([]), "{p}");
}
