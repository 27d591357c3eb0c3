//! The security matrix on the real binary: tokens, rights, limits, origins. Every case
//! gets its documented answer, nothing reaches the wrong party, and a witness client
//! keeps receiving after each case.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use pushcenter_stomp::{Command, Frame};
use serde_json::{Value, json};

const SECRET: &str = "test-secret-0123456789abcdef-0123456789";
const API_KEY: &str = "backend-key-0123456789";
/// base64url of `{"alg":"none","typ":"JWT"}`.
const NONE_HEADER: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hs256(claims: &Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

fn rs256(claims: &Value) -> String {
    let pem = std::fs::read(fixture("jwt-test-rsa.pem")).expect("test key");
    let key = EncodingKey::from_rsa_pem(&pem).expect("rsa key");
    encode(&Header::new(Algorithm::RS256), claims, &key).expect("sign")
}

fn user(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 3600})
}

struct Secured {
    node: Node,
    _config: std::path::PathBuf,
}

impl Drop for Secured {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self._config);
    }
}

fn secured(name: &str, extra: &str) -> Secured {
    let path =
        std::env::temp_dir().join(format!("pushcenter-sec-{name}-{}.toml", std::process::id()));
    let text = format!(
        r#"max_subscriptions = 2
max_frames_per_second = 20
connect_timeout = "1s"
allowed_origins = ["https://app.example.com"]
{extra}
[auth]
hs256_secret = "{SECRET}"
rs256_public_key_file = "{}"
leeway = "0s"
api_keys = ["{API_KEY}"]
subscribe = ["/topic/#"]
send = ["/topic/chat.#"]
"#,
        fixture("jwt-test-rsa.pub.pem")
    );
    std::fs::write(&path, text).expect("write config");
    let node = Node::standalone(&["--config", path.to_str().expect("utf-8 path")]);
    Secured {
        node,
        _config: path,
    }
}

/// Opens a WebSocket and sends CONNECT with `headers`; returns the client and the
/// server's first frame (CONNECTED or ERROR).
async fn connect_with(url: &str, headers: &[(&str, &str)]) -> (WsClient, Frame) {
    let mut c = WsClient::open(url, Some("v12.stomp")).await;
    let mut f = Frame::new(Command::Connect).header("accept-version", "1.2");
    for (k, v) in headers {
        f.push_header(k, v);
    }
    c.send(&f).await;
    let first = c.frame().await.expect("an answer to CONNECT");
    (c, first)
}

async fn login(url: &str, token: &str) -> WsClient {
    let (c, f) = connect_with(url, &[("passcode", token)]).await;
    assert_eq!(f.command, Command::Connected, "{f:?}");
    c
}

/// The ERROR a client got, then the close.
async fn refused(mut c: WsClient, f: Frame, message: &str) {
    assert_eq!(f.command, Command::Error, "{f:?}");
    let got = f.get("message").unwrap_or_default().to_string();
    assert!(got.contains(message), "ERROR {got:?}, expected {message:?}");
    assert!(c.frame().await.is_none(), "not closed after ERROR");
}

use common::post_bearer as post;

/// The node still serves: the witness gets a fresh publish.
async fn still_serving(node: &Node, witness: &mut WsClient, n: usize) {
    let body = format!("witness {n}");
    let (status, v) = post(
        node.http,
        "/v1/publish",
        Some(API_KEY),
        &json!({"destination": "/topic/witness", "body": body}),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let m = witness.frame().await.expect("witness message");
    assert_eq!(String::from_utf8_lossy(&m.body), body);
}

#[tokio::test]
async fn every_bad_credential_and_forbidden_act_gets_its_answer() {
    let s = secured("matrix", "");
    let node = &s.node;
    let url = node.ws_url();
    let mut witness = login(&url, &hs256(&user("witness"), SECRET.as_bytes())).await;
    witness.subscribe("w", "/topic/witness").await;
    let mut n = 0;
    macro_rules! check {
        () => {
            n += 1;
            still_serving(node, &mut witness, n).await;
        };
    }

    // No token.
    let (c, f) = connect_with(&url, &[]).await;
    refused(c, f, "unauthorized: a token is required").await;
    check!();

    // Expired.
    let expired = hs256(&json!({"sub": "a", "exp": now() - 60}), SECRET.as_bytes());
    let (c, f) = connect_with(&url, &[("passcode", &expired)]).await;
    refused(c, f, "unauthorized: token expired").await;
    check!();

    // Bad signature.
    let forged = hs256(&user("a"), b"another-secret-0123456789abcdef-0123");
    let (c, f) = connect_with(&url, &[("passcode", &forged)]).await;
    refused(c, f, "unauthorized: invalid token signature").await;
    check!();

    // alg: none (the signature part empty).
    let valid = hs256(&user("a"), SECRET.as_bytes());
    let payload = valid.split('.').nth(1).expect("payload");
    let none = format!("{NONE_HEADER}.{payload}.");
    let (c, f) = connect_with(&url, &[("passcode", &none)]).await;
    refused(c, f, "unauthorized").await;
    check!();

    // HS/RS confusion: HS256 signed with the RSA public key as the secret.
    let public = std::fs::read(fixture("jwt-test-rsa.pub.pem")).expect("public key");
    let confused = hs256(&user("a"), &public);
    let (c, f) = connect_with(&url, &[("passcode", &confused)]).await;
    refused(c, f, "unauthorized: invalid token signature").await;
    check!();

    // A valid token limited to public topics: another user's queue, a forbidden topic.
    let limited = hs256(
        &json!({"sub": "alice", "exp": now() + 3600, "subscribe": ["/topic/public.#"]}),
        SECRET.as_bytes(),
    );
    for destination in ["/user/bob/queue/inbox", "/topic/private"] {
        let mut c = login(&url, &limited).await;
        c.send(
            &Frame::new(Command::Subscribe)
                .header("id", "1")
                .header("destination", destination),
        )
        .await;
        let f = c.frame().await.expect("ERROR");
        let want = if destination.starts_with("/user/") {
            "cannot subscribe to /user/bob/queue/inbox"
        } else {
            "forbidden: cannot subscribe to /topic/private"
        };
        refused(c, f, want).await;
        check!();
    }

    // SEND outside the token's send patterns.
    let mut c = login(&url, &hs256(&user("alice"), SECRET.as_bytes())).await;
    c.send(&Frame::new(Command::Send).header("destination", "/topic/witness"))
        .await;
    let f = c.frame().await.expect("ERROR");
    refused(c, f, "forbidden: cannot send to /topic/witness").await;
    check!();

    // Too many subscriptions (limit 2).
    let mut c = login(&url, &hs256(&user("alice"), SECRET.as_bytes())).await;
    c.subscribe("1", "/topic/a").await;
    c.subscribe("2", "/topic/b").await;
    c.send(
        &Frame::new(Command::Subscribe)
            .header("id", "3")
            .header("destination", "/topic/c"),
    )
    .await;
    let f = c.frame().await.expect("ERROR");
    refused(c, f, "too many subscriptions (limit 2)").await;
    check!();

    // Too many frames per second (limit 20): 60 BEGIN/ABORT frames at once.
    let mut c = login(&url, &hs256(&user("alice"), SECRET.as_bytes())).await;
    for i in 0..30 {
        let tx = format!("t{i}");
        c.send(&Frame::new(Command::Begin).header("transaction", &tx))
            .await;
        c.send(&Frame::new(Command::Abort).header("transaction", &tx))
            .await;
    }
    let f = c.frame().await.expect("ERROR");
    refused(c, f, "too many frames: the limit is 20 per second").await;
    check!();

    // A handshake from a page on another site.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .expect("request");
    req.headers_mut().insert(
        "origin",
        "https://evil.example.net".parse().expect("header"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 403);
        }
        other => panic!("forbidden origin got {other:?}"),
    }
    check!();

    // An idle socket that never sends CONNECT: closed after connect_timeout (1 s).
    let mut idle = WsClient::open(&url, Some("v12.stomp")).await;
    let start = Instant::now();
    let f = idle
        .frame_within(Duration::from_secs(5))
        .await
        .expect("ERROR");
    refused(idle, f, "timed out waiting for CONNECT").await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    check!();

    let (_, text) = http(node.http, "GET", "/v1/stats", "").await;
    let stats: Value = serde_json::from_str(&text).expect("stats");
    assert_eq!(stats["auth_failures_total"], 5, "{stats}");
    assert_eq!(stats["forbidden_total"], 2, "{stats}");
}

#[tokio::test]
async fn tokens_name_the_user_and_user_pushes_reach_only_their_owner() {
    let s = secured("owners", "");
    let node = &s.node;
    let url = node.ws_url();
    // RS256 on CONNECT's passcode, HS256 in an authorization header, and a token in the
    // WebSocket URL.
    let mut alice = login(&url, &rs256(&user("alice"))).await;
    let bearer = format!("Bearer {}", hs256(&user("bob"), SECRET.as_bytes()));
    let (mut bob, f) = connect_with(&url, &[("authorization", &bearer)]).await;
    assert_eq!(f.get("user-name"), Some("bob"), "{f:?}");
    let in_url = format!(
        "{url}?access_token={}",
        hs256(&user("bob"), SECRET.as_bytes())
    );
    let (mut bob2, f) = connect_with(&in_url, &[]).await;
    assert_eq!(f.get("user-name"), Some("bob"), "{f:?}");
    for c in [&mut alice, &mut bob, &mut bob2] {
        c.subscribe("q", "/user/queue/inbox").await;
    }
    let (status, v) = post(
        node.http,
        "/v1/publish",
        Some(API_KEY),
        &json!({"destination": "/user/queue/inbox", "user": "bob", "body": "for bob"}),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    for c in [&mut bob, &mut bob2] {
        assert_eq!(&c.frame().await.expect("bob's push").body[..], b"for bob");
    }
    assert!(
        alice
            .frame_within(Duration::from_millis(500))
            .await
            .is_none(),
        "alice got bob's push"
    );
}

#[tokio::test]
async fn a_token_that_expires_closes_the_connection_unless_refreshed() {
    let s = secured("expiry", "");
    let url = s.node.ws_url();
    let short = |secs| {
        hs256(
            &json!({"sub": "carol", "exp": now() + secs}),
            SECRET.as_bytes(),
        )
    };

    let mut c = login(&url, &short(2)).await;
    let start = Instant::now();
    let f = c.frame_within(Duration::from_secs(6)).await.expect("ERROR");
    refused(c, f, "unauthorized: token expired").await;
    eprintln!(
        "closed {:?} after CONNECT with a 2 s token",
        start.elapsed()
    );

    let mut c = login(&url, &short(2)).await;
    c.send(
        &Frame::new(Command::Send)
            .header("destination", "/session/token")
            .header("passcode", short(3600))
            .header("receipt", "r"),
    )
    .await;
    let r = c.frame().await.expect("RECEIPT");
    assert_eq!(r.command, Command::Receipt, "{r:?}");
    assert!(
        c.frame_within(Duration::from_secs(4))
            .await
            .is_none_or(|f| f.command != Command::Error),
        "closed although refreshed"
    );
    // A fresh token for someone else is refused.
    c.send(
        &Frame::new(Command::Send)
            .header("destination", "/session/token")
            .header("passcode", hs256(&user("mallory"), SECRET.as_bytes())),
    )
    .await;
    let f = c.frame().await.expect("ERROR");
    refused(c, f, "the new token is for another user").await;
}

#[tokio::test]
async fn too_many_connections_from_one_address_are_refused() {
    let s = secured("per-ip", "max_connections_per_ip = 3");
    let url = s.node.ws_url();
    let token = hs256(&user("dave"), SECRET.as_bytes());
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(login(&url, &token).await);
    }
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        other => panic!("a fourth connection got {other:?}"),
    }
    // One leaves, the next one gets in.
    drop(held.pop());
    let start = Instant::now();
    loop {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok(_) => break,
            Err(_) if start.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no room after a client left: {e}"),
        }
    }
}

#[tokio::test]
async fn the_backend_api_needs_a_key_or_a_backend_token() {
    let s = secured("backend", "");
    let node = &s.node;
    let publish = json!({"destination": "/topic/x", "body": "b"});
    let backend = hs256(
        &json!({"sub": "svc", "exp": now() + 60, "role": "backend"}),
        SECRET.as_bytes(),
    );
    let client = hs256(&user("alice"), SECRET.as_bytes());
    for (bearer, want) in [
        (None, 401),
        (Some("wrong-key-0123456789"), 401),
        (Some(client.as_str()), 401),
        (Some(API_KEY), 202),
        (Some(backend.as_str()), 202),
    ] {
        let (status, v) = post(node.http, "/v1/publish", bearer, &publish).await;
        assert_eq!(status, want, "{bearer:?}: {v}");
        if want == 401 {
            assert!(v["error"].is_string(), "{v}");
        }
    }
    let (status, _) = post(
        node.http,
        "/v1/requests",
        None,
        &json!({"correlation_id": "o-1", "timeout_ms": 100}),
    )
    .await;
    assert_eq!(status, 401);

    // A callback needs a token for its own request (what the backend puts in the URL).
    let addr = node.http;
    let waiting = tokio::spawn(async move {
        let body = json!({"correlation_id": "o-2", "timeout_ms": 5000});
        post(addr, "/v1/requests", Some(API_KEY), &body).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let for_other = hs256(
        &json!({"sub": "o-3", "exp": now() + 60, "role": "callback"}),
        SECRET.as_bytes(),
    );
    let for_this = hs256(
        &json!({"sub": "o-2", "exp": now() + 60, "role": "callback"}),
        SECRET.as_bytes(),
    );
    let (status, _) = post(addr, "/v1/requests/o-2/reply", None, &json!({"paid": true})).await;
    assert_eq!(status, 401);
    let (status, _) = post(
        addr,
        &format!("/v1/requests/o-2/reply?token={for_other}"),
        None,
        &json!({"paid": true}),
    )
    .await;
    assert_eq!(status, 401);
    let (status, v) = post(
        addr,
        &format!("/v1/requests/o-2/reply?token={for_this}"),
        None,
        &json!({"paid": true}),
    )
    .await;
    // 200: the waiter took it (docs/request-reply.md).
    assert_eq!(status, 200, "{v}");
    let (status, v) = waiting.await.expect("call");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["reply"]["body"], r#"{"paid":true}"#);
}
