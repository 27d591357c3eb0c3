//! Targeted pushes and request/reply across three `pushcenter node` processes on a real
//! Kafka-protocol broker (Tansu): clients on one node, callers and callbacks on others.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::broker::Broker;
use common::*;
use pushcenter_stomp::{Command, Frame};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

struct Cluster {
    nodes: Vec<Node>,
    broker: Broker,
    _config: TempConfig,
}

async fn cluster(name: &str) -> Cluster {
    let path = std::env::temp_dir().join(format!("pushcenter-{name}-{}.toml", std::process::id()));
    // A 1 MiB replay window: the flood test measures the waiters' memory, not the window's.
    // 30 s to publish: a broker slowed by a busy machine must not turn the flood's
    // requests into 503s (it measures waiters and memory, not the broker's pace).
    std::fs::write(
        &path,
        "insecure_login_as_user = true\nreplay_window_bytes = 1048576\npublish_timeout = \"30s\"\n",
    )
    .expect("write config");
    let config = TempConfig(path);
    let broker = Broker::start();
    let cfg = config.0.to_str().expect("utf-8 path");
    let nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| Node::cluster(id, &broker.brokers(), &["--config", cfg]))
        .collect();
    for n in &nodes {
        let start = Instant::now();
        while http(n.http, "GET", "/readyz", "").await.0 != 200 {
            assert!(start.elapsed() < Duration::from_secs(30), "node not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Cluster {
        nodes,
        broker,
        _config: config,
    }
}

async fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = http(addr, "POST", path, &body.to_string()).await;
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_one_node_is_answered_by_a_client_on_another() {
    let c = cluster("rr-basic").await;
    let (mut alice, _) = WsClient::login(&c.nodes[0].ws_url(), Some("alice")).await;
    alice.subscribe("r", "/user/queue/requests").await;
    let responder = alice.answer_requests("alice".into());

    let (status, v) = post(
        c.nodes[1].http,
        "/v1/requests",
        &json!({"user": "alice", "destination": "/user/queue/requests",
                "body": "ping", "headers": {"order": "7"}, "timeout_ms": 5000}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["reply"]["body"], "alice:ping", "{v}");
    assert_eq!(v["reply"]["headers"]["answered-by"], "alice", "{v}");
    assert!(
        v["correlation_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("n2-")),
        "{v}"
    );
    stat_becomes(c.nodes[1].http, "waiters", 0).await;
    assert_eq!(stat(c.nodes[0].http, "requests_delivered_total").await, 1);
    responder.abort();
}

/// Seeds 002/003: the backend called a third party itself and blocks on its order
/// number; the third party's notification lands on another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_on_any_node_completes_the_waiting_call() {
    let c = cluster("rr-callback").await;
    let caller = c.nodes[1].http;
    let call = tokio::spawn(async move {
        post(
            caller,
            "/v1/requests",
            &json!({"correlation_id": "order-1001", "timeout_ms": 10000}),
        )
        .await
    });
    stat_becomes(caller, "waiters", 1).await;
    // The same key cannot wait twice.
    let (status, v) = post(
        caller,
        "/v1/requests",
        &json!({"correlation_id": "order-1001", "timeout_ms": 1000}),
    )
    .await;
    assert_eq!(status, 409, "{v}");

    let addr = c.nodes[2].http;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = r#"{"order":"1001","paid":true}"#;
    let req = format!(
        "POST /v1/requests/order-1001/reply HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(req.as_bytes()).await.expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.expect("read");
    // 200 once the waiting node confirmed it took the callback.
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    let (status, v) = call.await.expect("call");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["correlation_id"], "order-1001");
    assert_eq!(v["reply"]["body"], body);
    assert_eq!(v["reply"]["headers"]["content-type"], "application/json");
    stat_becomes(caller, "waiters", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_each_get_their_own_clients_answer() {
    let c = cluster("rr-thousand").await;
    let mut responders = Vec::new();
    for i in 0..100 {
        let user = format!("u{i}");
        let (mut client, _) = WsClient::login(&c.nodes[i % 3].ws_url(), Some(&user)).await;
        client.subscribe("r", "/user/queue/requests").await;
        responders.push(client.answer_requests(user));
    }
    let start = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for j in 0..1000usize {
        let addr = c.nodes[j % 3].http;
        calls.spawn(async move {
            let body = json!({"user": format!("u{}", j % 100),
                              "destination": "/user/queue/requests",
                              "body": format!("req-{j}"), "timeout_ms": 30000});
            (j, post(addr, "/v1/requests", &body).await)
        });
    }
    let mut crossed = 0;
    while let Some(r) = calls.join_next().await {
        let (j, (status, v)) = r.expect("call");
        assert_eq!(status, 200, "request {j}: {v}");
        if v["reply"]["body"] != format!("u{}:req-{j}", j % 100) {
            crossed += 1;
        }
    }
    eprintln!(
        "1,000 concurrent requests answered in {:?}",
        start.elapsed()
    );
    assert_eq!(crossed, 0, "answers that reached the wrong caller");
    for n in &c.nodes {
        stat_becomes(n.http, "waiters", 0).await;
    }
    let answered: i64 = {
        let mut sum = 0;
        for n in &c.nodes {
            sum += stat(n.http, "requests_answered_total").await;
        }
        sum
    };
    assert_eq!(answered, 1000);
    for r in responders {
        r.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_request_times_out_at_its_deadline_and_a_late_reply_is_dropped() {
    let c = cluster("rr-timeout").await;
    let (mut bob, _) = WsClient::login(&c.nodes[0].ws_url(), Some("bob")).await;
    bob.subscribe("r", "/user/queue/requests").await;

    let caller = c.nodes[1].http;
    let call = tokio::spawn(async move {
        let start = Instant::now();
        let r = post(
            caller,
            "/v1/requests",
            &json!({"user": "bob", "destination": "/user/queue/requests",
                    "body": "anyone?", "timeout_ms": 1000}),
        )
        .await;
        (start.elapsed(), r)
    });
    // Bob receives the request and keeps quiet.
    let m = bob.frame().await.expect("the request");
    assert_eq!(m.command, Command::Message);
    let (took, (status, v)) = call.await.expect("call");
    assert_eq!(status, 504, "{v}");
    assert_eq!(v["delivered"], true, "{v}");
    eprintln!("504 after {took:?} for timeout_ms 1000");
    assert!(
        took >= Duration::from_millis(1000) && took <= Duration::from_millis(1100),
        "504 after {took:?}"
    );

    // Too late now: counted and dropped on the node that waited.
    let late = Frame::new(Command::Send)
        .header("destination", m.get("reply-to").expect("reply-to"))
        .header(
            "correlation-id",
            m.get("correlation-id").expect("correlation-id"),
        )
        .body("sorry".as_bytes().to_vec());
    bob.send(&late).await;
    stat_becomes(caller, "replies_late_total", 1).await;
    assert_eq!(stat(caller, "waiters").await, 0);

    // Nobody of that user anywhere: nobody received it.
    let (status, v) = post(
        caller,
        "/v1/requests",
        &json!({"user": "nobody", "destination": "/user/queue/requests", "timeout_ms": 500}),
    )
    .await;
    assert_eq!((status, &v["delivered"]), (504, &json!(false)), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_timed_out_requests_leaves_no_waiters_and_flat_memory() {
    let c = cluster("rr-flood").await;
    let node = &c.nodes[0];
    let addr = node.http;
    let gate = Arc::new(tokio::sync::Semaphore::new(1000));
    let wave = |n: usize, from: usize| {
        let gate = gate.clone();
        async move {
            let mut calls = tokio::task::JoinSet::new();
            for i in from..from + n {
                let permit = gate.clone().acquire_owned().await.expect("gate");
                calls.spawn(async move {
                    let body = json!({"user": format!("ghost{i}"),
                                      "destination": "/user/queue/requests",
                                      "body": "x".repeat(200), "timeout_ms": 300});
                    let (status, v) = post(addr, "/v1/requests", &body).await;
                    drop(permit);
                    assert_eq!(status, 504, "{v}");
                });
            }
            while let Some(r) = calls.join_next().await {
                r.expect("call");
            }
        }
    };
    // The first flood sets the allocator's high-water mark; two more must not add
    // to it more than noise (a leak of 600 bytes per request would).
    let mut rss = Vec::new();
    for flood in 0..3 {
        let start = Instant::now();
        wave(10_000, flood * 10_000).await;
        stat_becomes(addr, "waiters", 0).await;
        rss.push(node.rss_kib());
        eprintln!(
            "flood {flood}: 10,000 timed-out requests in {:?}, node RSS {} KiB",
            start.elapsed(),
            rss[flood]
        );
    }
    assert_eq!(stat(addr, "requests_timed_out_total").await, 30_000);
    assert!(
        rss[2] < rss[0] + 12 * 1024,
        "RSS grew from {} KiB to {} KiB",
        rss[0],
        rss[2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_pushes_reach_every_session_of_the_user_and_session_pushes_one() {
    let c = cluster("targets").await;
    let (mut carol1, _) = WsClient::login(&c.nodes[0].ws_url(), Some("carol")).await;
    let (mut carol2, carol2_session) = WsClient::login(&c.nodes[1].ws_url(), Some("carol")).await;
    let (mut dave, _) = WsClient::login(&c.nodes[2].ws_url(), Some("dave")).await;
    for client in [&mut carol1, &mut carol2, &mut dave] {
        client.subscribe("n", "/user/queue/news").await;
    }
    let quiet = Duration::from_millis(500);

    // A user push over HTTP, made on a node where carol is not connected.
    let (status, v) = post(
        c.nodes[2].http,
        "/v1/publish",
        &json!({"destination": "/user/queue/news", "user": "carol", "body": "for carol"}),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    for client in [&mut carol1, &mut carol2] {
        let m = client.frame().await.expect("carol's push");
        assert_eq!(&m.body[..], b"for carol");
        assert_eq!(m.get("destination"), Some("/user/queue/news"));
    }
    assert!(
        dave.frame_within(quiet).await.is_none(),
        "dave got carol's push"
    );

    // A session push: only that one of carol's sessions.
    let (status, v) = post(
        c.nodes[0].http,
        "/v1/publish",
        &json!({"destination": "/user/queue/news", "session": carol2_session, "body": "one"}),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let m = carol2.frame().await.expect("session push");
    assert_eq!(&m.body[..], b"one");
    assert!(
        carol1.frame_within(quiet).await.is_none(),
        "the other session got it"
    );

    // A backend writing straight to Kafka targets users the same way.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", c.broker.brokers())
        .create()
        .expect("producer");
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "destination",
            value: Some("/user/queue/news"),
        })
        .insert(Header {
            key: "user",
            value: Some("dave"),
        });
    producer
        .send(
            FutureRecord::to("pushcenter.messages")
                .key("dave")
                .payload("from kafka")
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
    let m = dave.frame().await.expect("dave's push");
    assert_eq!(&m.body[..], b"from kafka");
    assert!(carol1.frame_within(quiet).await.is_none());

    // A broadcast never lands in user queues; a user queue needs a target.
    let (status, v) = post(
        c.nodes[0].http,
        "/v1/publish",
        &json!({"destination": "/user/queue/news", "body": "everyone?"}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_with_a_reason() {
    let c = cluster("rr-bad").await;
    let addr = c.nodes[0].http;
    let cases = [
        json!({"destination": "/user/queue/r", "body": "no target"}),
        json!({"user": "u", "body": "no destination"}),
        json!({"user": "u", "destination": "/topic/x", "timeout_ms": 0}),
        json!({"user": "u", "destination": "/topic/x", "timeout_ms": 3_600_000}),
        json!({"user": "u", "destination": "/queue/x"}),
        json!({"correlation_id": "has space"}),
        json!({"user": "u", "destination": "/topic/x", "headers": {"reply-to": "/reply/x"}}),
        json!({"user": "u", "destination": "/topic/x", "surprise": 1}),
    ];
    for body in cases {
        let (status, v) = post(addr, "/v1/requests", &body).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }
    let (status, v) = post(addr, "/v1/requests/a%20b/reply", &json!({})).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(stat(addr, "waiters").await, 0);
}
