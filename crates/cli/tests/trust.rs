//! Trust: only the right party completes a request, and nobody inherits another's
//! pushes. Each test plays a hostile but authenticated user against the real binary
//! (docs/security.md, "Threats and answers").

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::broker::Broker;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use pushcenter_stomp::{Command, Frame};
use rdkafka::ClientConfig;
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

const SECRET: &str = "trust-secret-0123456789abcdef-0123456789";
const API_KEY: &str = "trust-backend-key-0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn token(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

fn client_token(user: &str) -> String {
    token(&json!({"sub": user, "exp": now() + 600}))
}

type Config = TempConfig;

fn secured_config(name: &str) -> Config {
    Config::write(
        &format!("trust-{name}"),
        &format!(
            "callback_timeout = \"2s\"\n[auth]\nhs256_secret = \"{SECRET}\"\napi_keys = [\"{API_KEY}\"]\nleeway = \"0s\"\n"
        ),
    )
}

use common::post_bearer as call;

/// CONNECT with a token; returns the client and its CONNECTED or ERROR.
async fn connect_token(url: &str, token: &str) -> (WsClient, Frame) {
    let mut c = WsClient::open(url, Some("v12.stomp")).await;
    c.send(
        &Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("passcode", token),
    )
    .await;
    let f = c.frame().await.expect("an answer to CONNECT");
    (c, f)
}

async fn login_token(url: &str, user: &str) -> WsClient {
    let (c, f) = connect_token(url, &client_token(user)).await;
    assert_eq!(f.command, Command::Connected, "{f:?}");
    c
}

fn answer(reply_to: &str, id: &str, body: &str) -> Frame {
    Frame::new(Command::Send)
        .header("destination", reply_to)
        .header("correlation-id", id)
        .header("receipt", "answered")
        .body(body.as_bytes().to_vec())
}

/// SUBSCRIBE with a receipt and `resume-from`; waits for the RECEIPT.
async fn subscribe_from(c: &mut WsClient, id: &str, dest: &str, resume: &str) {
    c.send(
        &Frame::new(Command::Subscribe)
            .header("id", id)
            .header("destination", dest)
            .header("resume-from", resume)
            .header("receipt", format!("sub-{id}")),
    )
    .await;
    match c.event_within(TIMEOUT).await {
        Event::Frame(f) if f.command == Command::Receipt => {}
        other => panic!("expected the RECEIPT, got {other:?}"),
    }
}

/// The next MESSAGE's body (the connection must deliver one).
async fn next_body(c: &mut WsClient) -> String {
    match c.event_within(TIMEOUT).await {
        Event::Frame(f) if f.command == Command::Message => {
            String::from_utf8_lossy(&f.body).into_owned()
        }
        other => panic!("expected a MESSAGE, got {other:?}"),
    }
}

async fn ready_all(nodes: &[Node]) {
    for n in nodes {
        let start = Instant::now();
        while http(n.http, "GET", "/readyz", "").await.0 != 200 {
            assert!(start.elapsed() < Duration::from_secs(30), "node not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A client that guessed a caller-chosen key (and read the node id from `/v1/nodes`)
/// cannot answer a request that went to another user; the request's own user still
/// can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_answer_a_request_sent_to_another_user() {
    let cfg = secured_config("answer");
    let node = Node::standalone(&["--config", cfg.path()]);
    let url = node.ws_url();
    let mut alice = login_token(&url, "alice").await;
    alice.subscribe("r", "/user/queue/requests").await;
    let mut mallory = login_token(&url, "mallory").await;
    mallory.subscribe("r", "/user/queue/requests").await;

    let addr = node.http;
    let pending = tokio::spawn(async move {
        call(
            addr,
            "/v1/requests",
            Some(API_KEY),
            &json!({"user": "alice", "destination": "/user/queue/requests",
                    "correlation_id": "order-1001", "body": "pay?", "timeout_ms": 10000}),
        )
        .await
    });
    let request = alice.frame().await.expect("alice gets the request");
    let reply_to = request.get("reply-to").expect("reply-to").to_string();

    // Mallory learns the node from the public node list and guesses the key.
    let (_, nodes) = http(addr, "GET", "/v1/nodes", "").await;
    let node_id = serde_json::from_str::<Value>(&nodes).expect("json")["nodes"][0]["node_id"]
        .as_str()
        .expect("node id")
        .to_string();
    assert_eq!(reply_to, format!("/reply/{node_id}"));
    mallory
        .send(&answer(&reply_to, "order-1001", "paid (forged)"))
        .await;
    mallory
        .expect_error_then_close("forbidden: no request order-1001")
        .await;
    assert_eq!(stat(addr, "replies_refused_total").await, 1);
    assert_eq!(stat(addr, "waiters").await, 1, "the call still waits");

    alice.send(&answer(&reply_to, "order-1001", "paid")).await;
    let (status, v) = pending.await.expect("call");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["reply"]["body"], "paid", "{v}");
}

/// Seed 003 across three nodes: a caller-chosen key waits on n2; answers over STOMP
/// from any client (on the waiting node or another) are refused; a forged client
/// answer written to Kafka is refused by the waiting node too; the third party's
/// callback, with its token, posted to n3 completes the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rendezvous_wait_is_completed_only_by_its_callback() {
    let broker = Broker::start();
    let cfg = secured_config("rendezvous");
    let nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| Node::cluster(id, &broker.brokers(), &["--config", cfg.path()]))
        .collect();
    ready_all(&nodes).await;
    let caller = nodes[1].http;
    let pending = tokio::spawn(async move {
        call(
            caller,
            "/v1/requests",
            Some(API_KEY),
            &json!({"correlation_id": "order-1001", "timeout_ms": 20000}),
        )
        .await
    });
    stat_becomes(caller, "waiters", 1).await;

    // A customer's browser, on another node and on the waiting node itself.
    for n in [&nodes[0], &nodes[1]] {
        let mut customer = login_token(&n.ws_url(), "customer").await;
        customer
            .send(&answer("/reply/n2", "order-1001", "{\"paid\":true}"))
            .await;
        customer
            .expect_error_then_close("forbidden: no request order-1001")
            .await;
        assert_eq!(stat(n.http, "replies_refused_total").await, 1);
    }

    // A reply record as a node would write for a client's answer: the waiting node
    // refuses it for a rendezvous-only wait.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .create()
        .expect("producer");
    let headers = OwnedHeaders::new()
        .insert(KafkaHeader {
            key: "correlation-id",
            value: Some("order-1001"),
        })
        .insert(KafkaHeader {
            key: "reply-node",
            value: Some("n2"),
        })
        .insert(KafkaHeader {
            key: "reply-session",
            value: Some("n1-000000000000-1"),
        })
        .insert(KafkaHeader {
            key: "reply-user",
            value: Some("customer"),
        });
    producer
        .send(
            // Where the waiting node reads: n2's partition of the replies topic.
            FutureRecord::to("pushcenter.replies")
                .partition(2)
                .key("order-1001")
                .payload("{\"paid\":true}")
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
    stat_becomes(caller, "replies_refused_total", 2).await;
    assert_eq!(stat(caller, "waiters").await, 1, "the call still waits");

    // No token, a client's token, another request's token: 401.
    let body = json!({"order": "1001", "paid": true});
    let other = token(&json!({"sub": "order-1002", "role": "callback", "exp": now() + 600}));
    for bearer in [None, Some(client_token("order-1001")), Some(other)] {
        let (status, v) = call(
            nodes[2].http,
            "/v1/requests/order-1001/reply",
            bearer.as_deref(),
            &body,
        )
        .await;
        assert_eq!(status, 401, "{bearer:?}: {v}");
    }
    // The third party's callback with its token, on n3.
    let cb = token(&json!({"sub": "order-1001", "role": "callback", "exp": now() + 600}));
    let (status, v) = call(
        nodes[2].http,
        "/v1/requests/order-1001/reply",
        Some(&cb),
        &body,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["completed"], true, "{v}");
    let (status, v) = pending.await.expect("call");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["reply"]["body"], body.to_string(), "{v}");
}

/// After a restart the replay window is refilled from Kafka; a new connection gets a
/// session id no earlier connection had, so it never resumes another session's pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_never_inherits_an_old_sessions_pushes() {
    let broker = Broker::start();
    let cfg = Config::write("trust-sessions", "insecure_login_as_user = true\n");
    let mut node = Node::cluster("n1", &broker.brokers(), &["--config", cfg.path()]);
    ready_all(std::slice::from_ref(&node)).await;
    let (mut a, session_a) = WsClient::login(&node.ws_url(), Some("alice")).await;
    a.subscribe("i", "/user/queue/inbox").await;
    let (status, v) = call(
        node.http,
        "/v1/publish",
        None,
        &json!({"destination": "/user/queue/inbox", "session": session_a, "body": "for A only"}),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(next_body(&mut a).await, "for A only");
    drop(a);

    node.signal("KILL");
    let node = Node::cluster("n1", &broker.brokers(), &["--config", cfg.path()]);
    ready_all(std::slice::from_ref(&node)).await;
    let (mut b, session_b) = WsClient::login(&node.ws_url(), Some("bob")).await;
    assert_ne!(
        session_a, session_b,
        "a session id came back after a restart"
    );
    assert!(session_b.starts_with("n1-"), "{session_b}");
    // From the start of the window: nothing of A's, then B's own push.
    subscribe_from(&mut b, "i", "/user/queue/inbox", "").await;
    let (status, v) = call(
        node.http,
        "/v1/publish",
        None,
        &json!({"destination": "/user/queue/inbox", "session": session_b, "body": "for B"}),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(next_body(&mut b).await, "for B");
    b.expect_silence(Duration::from_millis(300)).await;
}

/// Backend and callback tokens are not client logins; client tokens are not backend
/// credentials; a token not yet valid (`nbf`) or for another audience is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_one_kind_cannot_stand_in_for_another() {
    let cfg = secured_config("kinds");
    let node = Node::standalone(&["--config", cfg.path()]);
    let url = node.ws_url();
    let exp = now() + 600;
    let cases = [
        (
            json!({"sub": "svc", "exp": exp, "role": "backend"}),
            "a backend token cannot be used as a client token",
        ),
        (
            json!({"sub": "order-1", "exp": exp, "role": "callback"}),
            "a callback token cannot be used as a client token",
        ),
        (
            json!({"sub": "alice", "exp": exp, "nbf": now() + 300}),
            "unauthorized",
        ),
        (
            json!({"sub": "alice", "exp": exp, "aud": "pushcenter-backend"}),
            "audience",
        ),
    ];
    for (claims, message) in cases {
        let (mut c, f) = connect_token(&url, &token(&claims)).await;
        assert_eq!(f.command, Command::Error, "{claims}: {f:?}");
        let got = f.get("message").unwrap_or_default();
        assert!(got.contains(message), "{claims}: {got:?}");
        match c.event_within(TIMEOUT).await {
            Event::Closed => {}
            other => panic!("{claims}: expected the close, got {other:?}"),
        }
    }
    // The right kind still works.
    let (_, f) = connect_token(
        &url,
        &token(&json!({"sub": "alice", "exp": exp, "aud": "pushcenter-client"})),
    )
    .await;
    assert_eq!(f.command, Command::Connected, "{f:?}");

    let publish = json!({"destination": "/topic/x", "body": "hi"});
    let client = client_token("alice");
    let callback = token(&json!({"sub": "order-1", "exp": exp, "role": "callback"}));
    let wrong_aud =
        token(&json!({"sub": "svc", "exp": exp, "role": "backend", "aud": "pushcenter-client"}));
    for bearer in [&client, &callback, &wrong_aud] {
        let (status, v) = call(node.http, "/v1/publish", Some(bearer), &publish).await;
        assert_eq!(status, 401, "{v}");
    }
    let backend = token(&json!({"sub": "svc", "exp": exp, "role": "backend"}));
    let (status, v) = call(node.http, "/v1/publish", Some(&backend), &publish).await;
    assert_eq!(status, 202, "{v}");
    // A client token whose sub happens to be a correlation id completes nothing.
    let (status, v) = call(
        node.http,
        "/v1/requests/order-1/reply",
        Some(&client_token("order-1")),
        &json!({}),
    )
    .await;
    assert_eq!(status, 401, "{v}");
}

/// A callback that no waiter takes (none registered yet, or any more) is answered 404
/// with a reason, never 202-and-dropped; once the wait exists the same callback
/// completes it. With the waiting node named in its token it goes straight there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_no_waiter_takes_is_answered_404() {
    let broker = Broker::start();
    let cfg = secured_config("unclaimed");
    let nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| Node::cluster(id, &broker.brokers(), &["--config", cfg.path()]))
        .collect();
    ready_all(&nodes).await;
    let body = json!({"paid": true});
    let cb = |id: &str, node: Option<&str>| {
        let mut claims = json!({"sub": id, "role": "callback", "exp": now() + 600});
        if let Some(n) = node {
            claims["node"] = n.into();
        }
        token(&claims)
    };
    // Early: nobody waits anywhere yet.
    let path = "/v1/requests/order-7/reply";
    let (status, v) = call(nodes[2].http, path, Some(&cb("order-7", None)), &body).await;
    assert_eq!(status, 404, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("no request waits")),
        "{v}"
    );
    let (status, v) = call(nodes[2].http, path, Some(&cb("order-7", Some("n2"))), &body).await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(stat(nodes[2].http, "callbacks_unclaimed_total").await, 2);

    // Now the wait exists on n2: the same callback, retried, completes it.
    let caller = nodes[1].http;
    let pending = tokio::spawn(async move {
        call(
            caller,
            "/v1/requests",
            Some(API_KEY),
            &json!({"correlation_id": "order-7", "timeout_ms": 20000}),
        )
        .await
    });
    stat_becomes(caller, "waiters", 1).await;
    let (status, v) = call(nodes[2].http, path, Some(&cb("order-7", Some("n2"))), &body).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = pending.await.expect("call");
    assert_eq!(status, 200, "{v}");

    // Late: that wait is over.
    let (status, v) = call(nodes[0].http, path, Some(&cb("order-7", None)), &body).await;
    assert_eq!(status, 404, "{v}");

    // Standalone: nobody else could take it, so the answer comes at once.
    let scfg = secured_config("unclaimed-standalone");
    let single = Node::standalone(&["--config", scfg.path()]);
    let (status, v) = call(single.http, path, Some(&cb("order-7", None)), &body).await;
    assert_eq!(status, 404, "{v}");
}

/// A request whose caller gave up is delivered to nobody: not live (a record whose
/// `request-deadline` has passed, as a backend might produce it late), and not to a
/// client that resumes after the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_request_is_delivered_to_nobody() {
    // In a resume.
    let cfg = Config::write("trust-expired", "insecure_login_as_user = true\n");
    let node = Node::standalone(&["--config", cfg.path()]);
    let (mut bob, _) = WsClient::login(&node.ws_url(), Some("bob")).await;
    let (status, v) = call(
        node.http,
        "/v1/requests",
        None,
        &json!({"user": "bob", "destination": "/user/queue/requests", "body": "stale",
                "timeout_ms": 200}),
    )
    .await;
    assert_eq!(status, 504, "{v}");
    let (status, v) = call(
        node.http,
        "/v1/publish",
        None,
        &json!({"destination": "/user/queue/requests", "user": "bob", "body": "plain"}),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    subscribe_from(&mut bob, "r", "/user/queue/requests", "").await;
    assert_eq!(next_body(&mut bob).await, "plain");
    bob.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(stat(node.http, "requests_expired_total").await, 1);

    // Live, through Kafka.
    let broker = Broker::start();
    let kafka_node = Node::cluster("k1", &broker.brokers(), &["--config", cfg.path()]);
    ready_all(std::slice::from_ref(&kafka_node)).await;
    let (mut alice, _) = WsClient::login(&kafka_node.ws_url(), Some("alice")).await;
    alice.subscribe("r", "/user/queue/requests").await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .create()
        .expect("producer");
    let past = (now() - 60) * 1000;
    for (body, deadline) in [("gave-up", Some(past)), ("fresh", None)] {
        let deadline = deadline.map(|d| d.to_string());
        let mut headers = OwnedHeaders::new();
        for (k, v) in [
            ("destination", Some("/user/queue/requests")),
            ("user", Some("alice")),
            ("correlation-id", Some(body)),
            ("reply-to", Some("/reply/elsewhere")),
            ("request-deadline", deadline.as_deref()),
        ] {
            if let Some(v) = v {
                headers = headers.insert(KafkaHeader {
                    key: k,
                    value: Some(v),
                });
            }
        }
        producer
            .send(
                FutureRecord::to("pushcenter.messages")
                    .key("alice")
                    .payload(body)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
    assert_eq!(next_body(&mut alice).await, "fresh");
    alice.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(stat(kafka_node.http, "requests_expired_total").await, 1);
}
