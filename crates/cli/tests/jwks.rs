//! Identity providers: tokens signed by keys a JWKS URL serves (docs/security.md,
//! "Identity providers"). The provider is a small HTTP server in the test, on
//! loopback, whose key set the test swaps and whose requests it counts.

mod common;

use std::net::SocketAddr;
use std::process::Command as Process;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::routing::get;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use pushcenter_stomp::{Command, Frame};
use serde_json::{Value, json};

const AUDIENCE: &str = "pushcenter-app";

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The public JWK of a fixture key.
fn jwk(name: &str) -> Value {
    serde_json::from_slice(&fixture(&format!("jwks-{name}.json"))).expect("jwk json")
}

/// A signing key of the fixtures: its algorithm, `kid` and private key.
struct Signer {
    alg: Algorithm,
    kid: &'static str,
    key: EncodingKey,
}

fn signer(name: &str) -> Signer {
    let pem = fixture(&format!("jwks-{name}.pem"));
    let (alg, kid, key) = match name {
        "rsa-1" => (Algorithm::RS256, "rsa-1", EncodingKey::from_rsa_pem(&pem)),
        "rsa-2" => (Algorithm::RS256, "rsa-2", EncodingKey::from_rsa_pem(&pem)),
        "ec-p256" => (Algorithm::ES256, "ec-1", EncodingKey::from_ec_pem(&pem)),
        "ed25519" => (Algorithm::EdDSA, "ed-1", EncodingKey::from_ed_pem(&pem)),
        other => panic!("no fixture key {other}"),
    };
    Signer {
        alg,
        kid,
        key: key.expect("private key"),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Signer {
    fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.kid, claims)
    }

    fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(kid.into());
        encode(&h, claims, &self.key).expect("sign")
    }
}

/// The identity provider: `/jwks.json` and `/.well-known/openid-configuration`.
struct Idp {
    addr: SocketAddr,
    keys: Arc<Mutex<Value>>,
    jwks_hits: Arc<AtomicUsize>,
    discovery_hits: Arc<AtomicUsize>,
    stop_tx: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Clone)]
struct IdpState {
    issuer: String,
    keys: Arc<Mutex<Value>>,
    jwks_hits: Arc<AtomicUsize>,
    discovery_hits: Arc<AtomicUsize>,
}

async fn serve_jwks(State(s): State<IdpState>) -> axum::Json<Value> {
    s.jwks_hits.fetch_add(1, Ordering::SeqCst);
    let keys = s.keys.lock().expect("keys").clone();
    axum::Json(keys)
}

async fn serve_discovery(State(s): State<IdpState>) -> axum::Json<Value> {
    s.discovery_hits.fetch_add(1, Ordering::SeqCst);
    axum::Json(json!({
        "issuer": s.issuer,
        "jwks_uri": format!("{}/jwks.json", s.issuer),
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
}

impl Idp {
    async fn start(keys: &[&str]) -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = IdpState {
            issuer: format!("http://{addr}"),
            keys: Arc::new(Mutex::new(Value::Null)),
            jwks_hits: Arc::new(AtomicUsize::new(0)),
            discovery_hits: Arc::new(AtomicUsize::new(0)),
        };
        let app = axum::Router::new()
            .route("/jwks.json", get(serve_jwks))
            .route("/.well-known/openid-configuration", get(serve_discovery))
            .with_state(state.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        let idp = Idp {
            addr,
            keys: state.keys,
            jwks_hits: state.jwks_hits,
            discovery_hits: state.discovery_hits,
            stop_tx: Some(stop_tx),
            task: Some(task),
        };
        idp.serve(keys);
        idp
    }

    fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on the JWKS holds these fixture keys.
    fn serve(&self, keys: &[&str]) {
        let keys: Vec<Value> = keys.iter().map(|k| jwk(k)).collect();
        *self.keys.lock().expect("keys") = json!({ "keys": keys });
    }

    fn jwks_hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }

    /// Stops listening and closes its connections: the provider is unreachable.
    async fn stop(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// A node whose only token keys come from `idp`; `provider` is extra lines for the
/// `[[auth.providers]]` entry (the JWKS URL is given unless it says `discovery`).
fn node(name: &str, idp: &Idp, provider: &str, discovery: bool) -> (Node, TempConfig) {
    let jwks_url = if discovery {
        String::new()
    } else {
        format!("jwks_url = \"{}/jwks.json\"\n", idp.issuer())
    };
    let cfg = TempConfig::write(
        &format!("jwks-{name}"),
        &format!(
            "[auth]\nleeway = \"0s\"\n\n[[auth.providers]]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\n{jwks_url}{provider}\n",
            idp.issuer()
        ),
    );
    let node = Node::standalone(&["--config", cfg.path()]);
    (node, cfg)
}

/// Claims of a client token of `idp`.
fn claims(idp: &Idp, user: &str) -> Value {
    json!({"sub": user, "exp": now() + 600, "iss": idp.issuer(), "aud": AUDIENCE})
}

/// Something with a WebSocket endpoint: a [`Node`], or a node started here with an
/// environment of the test's own ([`EnvNode`]).
trait Endpoint {
    fn ws(&self) -> String;
}

impl Endpoint for Node {
    fn ws(&self) -> String {
        self.ws_url()
    }
}

impl<T: Endpoint> Endpoint for Arc<T> {
    fn ws(&self) -> String {
        (**self).ws()
    }
}

/// CONNECT with `token` as the passcode: the client and the CONNECTED or ERROR.
async fn connect_token(node: &impl Endpoint, token: &str) -> (WsClient, Frame) {
    let mut c = WsClient::open(&node.ws(), Some("v12.stomp")).await;
    c.send(
        &Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("passcode", token),
    )
    .await;
    let f = c.frame().await.expect("an answer to CONNECT");
    (c, f)
}

async fn accepted(node: &impl Endpoint, token: &str, user: &str) {
    let (_c, f) = connect_token(node, token).await;
    assert_eq!(f.command, Command::Connected, "{f:?}");
    assert_eq!(f.get("user-name"), Some(user));
}

/// Refused with an ERROR whose message holds `why`.
async fn refused(node: &impl Endpoint, token: &str, why: &str) {
    let (_c, f) = connect_token(node, token).await;
    assert_eq!(f.command, Command::Error, "{f:?}");
    let message = f.get("message").unwrap_or_default();
    assert!(message.contains(why), "ERROR {message:?}, expected {why:?}");
}

/// Waits until the node fetched the JWKS at least once (it starts in the background).
async fn first_fetch(idp: &Idp) {
    let start = Instant::now();
    while idp.jwks_hits() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the node never fetched the JWKS"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (10 s at most) for the node's next fetch of the JWKS, and a moment for the
/// node to take in what it got.
async fn next_fetch(idp: &Idp) {
    let seen = idp.jwks_hits();
    let start = Instant::now();
    while idp.jwks_hits() < seen + 1 {
        assert!(start.elapsed() < Duration::from_secs(10), "no refresh");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A key rotation at the provider reaches a running node: tokens of the new key work
/// at once (the CONNECT waits for the fetch its unknown `kid` triggers), tokens of the
/// removed key stop working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_set_is_picked_up_without_a_restart() {
    let idp = Idp::start(&["rsa-1"]).await;
    let (node, _cfg) = node(
        "rotate",
        &idp,
        "refresh_interval = \"1h\"\nmin_refresh_interval = \"1s\"",
        false,
    );
    let (old, new) = (signer("rsa-1"), signer("rsa-2"));
    accepted(&node, &old.sign(&claims(&idp, "alice")), "alice").await;
    assert_eq!(idp.jwks_hits(), 1);

    idp.serve(&["rsa-2"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    accepted(&node, &new.sign(&claims(&idp, "bob")), "bob").await;
    assert_eq!(idp.jwks_hits(), 2, "one fetch for the new kid");
    refused(
        &node,
        &old.sign(&claims(&idp, "alice")),
        "unknown token signing key",
    )
    .await;
    // And the removed key stays refused: it cannot come back by asking again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    refused(
        &node,
        &old.sign(&claims(&idp, "alice")),
        "unknown token signing key",
    )
    .await;
    accepted(&node, &new.sign(&claims(&idp, "bob")), "bob").await;
}

/// The periodic refresh alone also drops a removed key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_refresh_drops_a_removed_key() {
    let idp = Idp::start(&["rsa-1", "rsa-2"]).await;
    let (node, _cfg) = node(
        "periodic",
        &idp,
        "refresh_interval = \"1s\"\nmin_refresh_interval = \"1s\"",
        false,
    );
    let old = signer("rsa-1");
    accepted(&node, &old.sign(&claims(&idp, "alice")), "alice").await;
    idp.serve(&["rsa-2"]);
    next_fetch(&idp).await;
    refused(
        &node,
        &old.sign(&claims(&idp, "alice")),
        "unknown token signing key",
    )
    .await;
}

/// Issuer, audience and algorithm are the provider's: anything else is refused,
/// including `alg: none` and an HS256 token whose `kid` names the RSA key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_issuer_audience_and_algorithm_are_refused() {
    let idp = Idp::start(&["rsa-1"]).await;
    let (node, _cfg) = node("refuse", &idp, "", false);
    first_fetch(&idp).await;
    let rsa = signer("rsa-1");
    accepted(&node, &rsa.sign(&claims(&idp, "alice")), "alice").await;

    let mut other_iss = claims(&idp, "alice");
    other_iss["iss"] = json!("https://other-idp.example.com");
    refused(&node, &rsa.sign(&other_iss), "unauthorized").await;

    let mut other_aud = claims(&idp, "alice");
    other_aud["aud"] = json!("another-app");
    refused(&node, &rsa.sign(&other_aud), "audience").await;
    let mut no_aud = claims(&idp, "alice");
    no_aud.as_object_mut().expect("object").remove("aud");
    refused(&node, &rsa.sign(&no_aud), "no aud").await;
    // The static per-kind audiences do not apply: the provider's one does.
    let mut list_aud = claims(&idp, "alice");
    list_aud["aud"] = json!(["x", AUDIENCE]);
    accepted(&node, &rsa.sign(&list_aud), "alice").await;

    // {"alg":"none","typ":"JWT","kid":"rsa-1"}, then a real token's claims, no signature.
    let signed = rsa.sign(&claims(&idp, "alice"));
    let payload = signed.split('.').nth(1).expect("payload");
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIiwia2lkIjoicnNhLTEifQ.{payload}.");
    refused(&node, &none, "unauthorized").await;

    // Algorithm confusion: the RSA key's public modulus as an HMAC secret.
    let modulus = jwk("rsa-1")["n"].as_str().expect("n").to_owned();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("rsa-1".into());
    let hs = encode(
        &h,
        &claims(&idp, "alice"),
        &EncodingKey::from_secret(modulus.as_bytes()),
    )
    .expect("sign");
    refused(&node, &hs, "algorithm not accepted").await;

    // A key of another type under the RSA key's kid.
    let ec = signer("ec-p256");
    refused(
        &node,
        &ec.sign_as("rsa-1", &claims(&idp, "alice")),
        "algorithm not accepted",
    )
    .await;
}

/// The `role` claim decides a provider token's kind as for any token: a backend token
/// of the provider calls the HTTP API and is no client login, and the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_token_serves_only_its_kind() {
    let idp = Idp::start(&["rsa-1"]).await;
    let (node, _cfg) = node("kinds", &idp, "", false);
    first_fetch(&idp).await;
    let rsa = signer("rsa-1");
    let mut backend = claims(&idp, "billing");
    backend["role"] = json!("backend");
    let backend = rsa.sign(&backend);
    let client = rsa.sign(&claims(&idp, "alice"));
    let publish = json!({"destination": "/topic/x", "body": "hi"});
    let (status, _) = post_bearer(node.http, "/v1/publish", Some(&backend), &publish).await;
    assert_eq!(status, 202);
    let (status, _) = post_bearer(node.http, "/v1/publish", Some(&client), &publish).await;
    assert_eq!(status, 401);
    refused(
        &node,
        &backend,
        "a backend token cannot be used as a client token",
    )
    .await;
}

/// One key of each type the providers default to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_es256_and_eddsa_keys_each_verify() {
    let idp = Idp::start(&["rsa-1", "ec-p256", "ed25519"]).await;
    let (node, _cfg) = node("algs", &idp, "", false);
    first_fetch(&idp).await;
    for (key, user) in [("rsa-1", "r"), ("ec-p256", "e"), ("ed25519", "d")] {
        accepted(&node, &signer(key).sign(&claims(&idp, user)), user).await;
    }
    // The Ed25519 key under the EC key's kid: each key verifies only its own algorithm.
    refused(
        &node,
        &signer("ed25519").sign_as("ec-1", &claims(&idp, "d")),
        "algorithm not accepted",
    )
    .await;
}

/// Without `jwks_url`, OpenID Connect discovery names the JWKS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_the_key_set() {
    let idp = Idp::start(&["ec-p256"]).await;
    let (node, _cfg) = node("discovery", &idp, "", true);
    first_fetch(&idp).await;
    accepted(&node, &signer("ec-p256").sign(&claims(&idp, "eve")), "eve").await;
    assert_eq!(idp.discovery_hits.load(Ordering::SeqCst), 1);
}

/// 200 tokens with random `kid`s, many at once, make the node fetch the JWKS at most
/// once per `min_refresh_interval`, not once per token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kids_cannot_make_the_node_hammer_the_provider() {
    let idp = Idp::start(&["ed25519"]).await;
    let (node, _cfg) = node(
        "flood",
        &idp,
        "refresh_interval = \"1h\"\nmin_refresh_interval = \"2s\"",
        false,
    );
    first_fetch(&idp).await;
    // Past the floor, so the flood may cause one fetch.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Signed up front (and with the fast key): only the node's side is timed.
    let ed = signer("ed25519");
    let batches: Vec<Vec<String>> = (0..10)
        .map(|batch| {
            (0..20)
                .map(|i| ed.sign_as(&format!("attacker-{batch}-{i}"), &claims(&idp, "mallory")))
                .collect()
        })
        .collect();
    let before = idp.jwks_hits();
    let start = Instant::now();
    let node = Arc::new(node);
    let mut tasks = Vec::new();
    for tokens in batches {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            for t in tokens {
                refused(&node, &t, "unknown token signing key").await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("flood task");
    }
    let elapsed = start.elapsed();
    let fetches = idp.jwks_hits() - before;
    let allowed = 1 + (elapsed.as_secs_f64() / 2.0).floor() as usize;
    eprintln!("{fetches} JWKS fetches for 200 unknown kids in {elapsed:?}");
    assert!(
        fetches <= allowed && fetches <= 3,
        "{fetches} fetches for 200 unknown kids in {elapsed:?}"
    );
    accepted(&node, &ed.sign(&claims(&idp, "alice")), "alice").await;
}

/// The provider goes away after the first fetch: the last good key set stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_good_key_set_stays_when_the_provider_is_unreachable() {
    let mut idp = Idp::start(&["rsa-1"]).await;
    let (node, _cfg) = node(
        "unreachable",
        &idp,
        "refresh_interval = \"1s\"\nmin_refresh_interval = \"1s\"",
        false,
    );
    let rsa = signer("rsa-1");
    first_fetch(&idp).await;
    accepted(&node, &rsa.sign(&claims(&idp, "alice")), "alice").await;
    idp.stop().await;
    // Several refreshes fail meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    accepted(&node, &rsa.sign(&claims(&idp, "alice")), "alice").await;
    let unknown = Instant::now();
    refused(
        &node,
        &rsa.sign_as("rotated", &claims(&idp, "alice")),
        "unknown token signing key",
    )
    .await;
    assert!(unknown.elapsed() < Duration::from_secs(4), "bounded wait");
}

/// A node whose provider is down at start starts anyway and takes the keys once the
/// provider answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_while_the_provider_is_down() {
    let port = free_port();
    let cfg = TempConfig::write(
        "jwks-down",
        &format!(
            "[auth]\n[[auth.providers]]\nissuer = \"http://{port}\"\naudience = \"{AUDIENCE}\"\n\
             jwks_url = \"http://{port}/jwks.json\"\nmin_refresh_interval = \"1s\"\n"
        ),
    );
    let node = Node::standalone(&["--config", cfg.path()]);
    ready(&node).await;
    let token = signer("rsa-1").sign(&json!({
        "sub": "alice", "exp": now() + 600, "iss": format!("http://{port}"), "aud": AUDIENCE
    }));
    refused(&node, &token, "unknown token signing key").await;
}

fn check_config(name: &str, toml: &str) -> std::process::Output {
    let cfg = TempConfig::write(name, toml);
    Process::new(env!("CARGO_BIN_EXE_pushcenter"))
        .args(["check-config", "--config", cfg.path()])
        .output()
        .expect("run check-config")
}

/// `check-config` names a JWKS URL it cannot reach, and passes: the node would start.
#[test]
fn check_config_warns_about_an_unreachable_jwks_url() {
    let port = free_port();
    let url = format!("http://{port}/jwks.json");
    let out = check_config(
        "jwks-check",
        &format!(
            "[auth]\n[[auth.providers]]\nissuer = \"https://idp.example.com\"\naudience = [\"{AUDIENCE}\", \"other\"]\njwks_url = \"{url}\"\n"
        ),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains(&url),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[[auth.providers]]"), "{stdout}");
}

/// Provider entries that cannot be safe are config errors.
#[test]
fn unsafe_provider_entries_are_config_errors() {
    for (toml, why) in [
        (
            "issuer = \"https://idp.example.com\"\n",
            "missing field `audience`",
        ),
        (
            "issuer = \"https://idp.example.com\"\naudience = []\n",
            "audience is required",
        ),
        (
            "issuer = \"https://idp.example.com\"\naudience = \"a\"\njwks_url = \"http://idp.example.com/jwks\"\n",
            "loopback",
        ),
        (
            "issuer = \"https://idp.example.com\"\naudience = \"a\"\nalgorithms = [\"HS256\"]\n",
            "HS256 not accepted",
        ),
        (
            "issuer = \"https://idp.example.com\"\naudience = \"a\"\nrefresh_intervall = \"1m\"\n",
            "refresh_intervall",
        ),
        // No rate limit on unknown kids.
        (
            "issuer = \"https://idp.example.com\"\naudience = \"a\"\nmin_refresh_interval = \"0s\"\n",
            "min_refresh_interval must be at least 1s",
        ),
        // Which of the two would a token's iss pick?
        (
            "issuer = \"https://idp.example.com\"\naudience = \"a\"\nuser_prefix = \"a:\"\n\
             [[auth.providers]]\nissuer = \"https://idp.example.com\"\naudience = \"b\"\nuser_prefix = \"b:\"\n",
            "configured twice",
        ),
        // Two sources without prefixes: one sub would be one user of both.
        (
            "issuer = \"https://a.example.com\"\naudience = \"a\"\n\
             [[auth.providers]]\nissuer = \"https://b.example.com\"\naudience = \"a\"\n",
            "user_prefix is required with several identity providers",
        ),
        (
            "issuer = \"https://a.example.com\"\naudience = \"a\"\nuser_prefix = \"same:\"\n\
             [[auth.providers]]\nissuer = \"https://b.example.com\"\naudience = \"a\"\nuser_prefix = \"same:\"\n",
            "also the start of",
        ),
        (
            "issuer = \"https://a.example.com\"\naudience = \"a\"\n\
             [auth]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n",
            "user_prefix is required with identity providers and static keys",
        ),
    ] {
        let out = check_config("jwks-bad", &format!("[[auth.providers]]\n{toml}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml} accepted");
        assert!(stderr.contains(why), "{toml}: {stderr}");
    }
}

const API_KEY: &str = "jwks-test-backend-key";
const HS256_SECRET: &str = "jwks-test-hs256-secret-0123456789";

/// Two providers, the same `sub`: two users. A push to one provider's alice reaches
/// only her, and the other provider's alice cannot take her connection over with a
/// token refresh. The static keys' users stay out of the providers' namespaces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_providers_keep_their_users_apart() {
    let (a, b) = (Idp::start(&["rsa-1"]).await, Idp::start(&["rsa-2"]).await);
    let provider = |idp: &Idp, prefix: &str| {
        format!(
            "[[auth.providers]]\nissuer = \"{i}\"\naudience = \"{AUDIENCE}\"\n\
             jwks_url = \"{i}/jwks.json\"\nuser_prefix = \"{prefix}\"\n\n",
            i = idp.issuer()
        )
    };
    let cfg = TempConfig::write(
        "jwks-prefix",
        &format!(
            "[auth]\nleeway = \"0s\"\napi_keys = [\"{API_KEY}\"]\nhs256_secret = \"{HS256_SECRET}\"\n\n{}{}",
            provider(&a, "a:"),
            provider(&b, "b:")
        ),
    );
    let node = Node::standalone(&["--config", cfg.path()]);
    first_fetch(&a).await;
    first_fetch(&b).await;
    let (ka, kb) = (signer("rsa-1"), signer("rsa-2"));
    let (alice_a, f) = connect_token(&node, &ka.sign(&claims(&a, "alice"))).await;
    assert_eq!(f.get("user-name"), Some("a:alice"), "{f:?}");
    let (alice_b, f) = connect_token(&node, &kb.sign(&claims(&b, "alice"))).await;
    assert_eq!(f.get("user-name"), Some("b:alice"), "{f:?}");
    let hs = |sub: &str| {
        encode(
            &Header::default(),
            &json!({"sub": sub, "exp": now() + 600}),
            &EncodingKey::from_secret(HS256_SECRET.as_bytes()),
        )
        .expect("sign")
    };
    let (alice_static, f) = connect_token(&node, &hs("alice")).await;
    assert_eq!(f.get("user-name"), Some("alice"), "{f:?}");
    // A static-key token cannot name a provider's user.
    refused(&node, &hs("a:alice"), "user_prefix").await;
    let mut alices = [alice_a, alice_b, alice_static];
    for c in &mut alices {
        c.subscribe("n", "/user/queue/news").await;
    }

    let quiet = Duration::from_millis(500);
    for (to, user) in ["a:alice", "b:alice", "alice"].into_iter().enumerate() {
        let push = json!({"destination": "/user/queue/news", "user": user, "body": user});
        let (status, v) = post_bearer(node.http, "/v1/publish", Some(API_KEY), &push).await;
        assert_eq!(status, 202, "{v}");
        for (i, c) in alices.iter_mut().enumerate() {
            if i == to {
                let m = c.frame().await.expect("the push");
                assert_eq!(m.body, user.as_bytes(), "{m:?}");
            } else {
                let got = c.frame_within(quiet).await;
                assert!(got.is_none(), "another alice got {user}'s push: {got:?}");
            }
        }
    }
    let [mut alice_a, mut alice_b, _] = alices;

    // Provider b's alice, on provider a's alice's connection.
    alice_a
        .send(
            &Frame::new(Command::Send)
                .header("destination", "/session/token")
                .header("passcode", kb.sign(&claims(&b, "alice"))),
        )
        .await;
    let f = alice_a.frame().await.expect("ERROR");
    assert_eq!(f.command, Command::Error, "{f:?}");
    let message = f.get("message").unwrap_or_default();
    assert!(message.contains("another user"), "{message}");
    // Her own provider's fresh token is fine.
    alice_b
        .send(
            &Frame::new(Command::Send)
                .header("destination", "/session/token")
                .header("passcode", kb.sign(&claims(&b, "alice")))
                .header("receipt", "r"),
        )
        .await;
    let r = alice_b.frame().await.expect("RECEIPT");
    assert_eq!(r.command, Command::Receipt, "{r:?}");
}

/// A node started here, with environment variables of the test's own.
struct EnvNode {
    child: std::process::Child,
    http: SocketAddr,
}

impl EnvNode {
    fn standalone(config: &str, env: &[(&str, String)]) -> EnvNode {
        use std::io::BufRead;
        let mut cmd = Process::new(env!("CARGO_BIN_EXE_pushcenter"));
        cmd.args(["standalone", "--http-addr", "127.0.0.1:0"])
            .args(["--tcp-addr", "127.0.0.1:0", "--config", config])
            .env(
                "RUST_LOG",
                std::env::var("PUSHCENTER_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start pushcenter");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("listening line");
        let http = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no http address in {line:?}"));
        EnvNode { child, http }
    }
}

impl Endpoint for EnvNode {
    fn ws(&self) -> String {
        format!("ws://{}/ws", self.http)
    }
}

impl Drop for EnvNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A proxy in the node's environment never sees a JWKS fetch: it would serve its own
/// key set (here: the attacker's key) and so sign any token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_fetches_ignore_the_proxy_environment() {
    let idp = Idp::start(&["rsa-1"]).await;
    // The attacker's proxy: whatever is asked, its own key set.
    let mut forged = jwk("rsa-2");
    forged["kid"] = json!("attacker");
    let proxy_hits = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().fallback({
        let (hits, keys) = (proxy_hits.clone(), json!({ "keys": [forged] }));
        move || async move {
            hits.fetch_add(1, Ordering::SeqCst);
            axum::Json(keys)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let proxy = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let cfg = TempConfig::write(
        "jwks-proxy",
        &format!(
            "[auth]\nleeway = \"0s\"\n\n[[auth.providers]]\nissuer = \"{i}\"\naudience = \"{AUDIENCE}\"\n\
             jwks_url = \"{i}/jwks.json\"\nmin_refresh_interval = \"1s\"\n",
            i = idp.issuer()
        ),
    );
    let env: Vec<(&str, String)> = [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .into_iter()
    .map(|k| (k, proxy.clone()))
    .collect();
    let node = EnvNode::standalone(cfg.path(), &env);
    first_fetch(&idp).await;
    accepted(
        &node,
        &signer("rsa-1").sign(&claims(&idp, "alice")),
        "alice",
    )
    .await;
    // The attacker's kid is unknown: the node fetches again (directly) and still
    // does not find it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    refused(
        &node,
        &signer("rsa-2").sign_as("attacker", &claims(&idp, "mallory")),
        "unknown token signing key",
    )
    .await;
    assert_eq!(idp.jwks_hits(), 2, "both fetches went to the provider");
    assert_eq!(proxy_hits.load(Ordering::SeqCst), 0, "the proxy was asked");
}

/// An https:// provider (the etcd test CA's server certificate: `ca_file` trusts the
/// CA) whose discovery document names `jwks_uri`, whose `/moved.json` redirects to
/// `moved_to` and whose `/jwks.json` serves the rsa-1 key. Returns its address and the
/// number of requests it answered.
async fn tls_idp(jwks_uri: String, moved_to: String) -> (SocketAddr, Arc<AtomicUsize>) {
    use axum::http::{StatusCode, header};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    struct TlsListener {
        tcp: tokio::net::TcpListener,
        tls: tokio_rustls::TlsAcceptor,
    }
    impl axum::serve::Listener for TlsListener {
        type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
        type Addr = SocketAddr;
        async fn accept(&mut self) -> (Self::Io, SocketAddr) {
            loop {
                let Ok((tcp, addr)) = self.tcp.accept().await else {
                    continue;
                };
                if let Ok(tls) = self.tls.accept(tcp).await {
                    return (tls, addr);
                }
            }
        }
        fn local_addr(&self) -> std::io::Result<SocketAddr> {
            self.tcp.local_addr()
        }
    }

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let certs = CertificateDer::pem_file_iter(dir.join("etcd-test-server-cert.pem"))
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .expect("test certificate");
    let key = PrivateKeyDer::from_pem_file(dir.join("etcd-test-server-key.pem")).expect("key");
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let discovery = json!({"issuer": format!("https://{addr}"), "jwks_uri": jwks_uri});
    let keys = json!({"keys": [jwk("rsa-1")]});
    let count = |hits: &Arc<AtomicUsize>| {
        hits.fetch_add(1, Ordering::SeqCst);
    };
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            get({
                let hits = hits.clone();
                move || async move {
                    count(&hits);
                    axum::Json(discovery)
                }
            }),
        )
        .route(
            "/moved.json",
            get({
                let hits = hits.clone();
                move || async move {
                    count(&hits);
                    (StatusCode::FOUND, [(header::LOCATION, moved_to)])
                }
            }),
        )
        .route(
            "/jwks.json",
            get({
                let hits = hits.clone();
                move || async move {
                    count(&hits);
                    axum::Json(keys)
                }
            }),
        );
    let listener = TlsListener {
        tcp,
        tls: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
    };
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, hits)
}

/// An https:// provider cannot send the node to a plaintext loopback service (an
/// internal one), neither by its discovery document's `jwks_uri` nor by a redirect:
/// what the node fetches is never weaker than what it was configured with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_provider_cannot_downgrade_to_loopback_http() {
    // The "internal service": plaintext on loopback, serving a key set (rsa-2).
    let internal = Idp::start(&["rsa-2"]).await;
    let target = format!("{}/jwks.json", internal.issuer());
    let (addr, tls_hits) = tls_idp(target.clone(), target).await;
    let issuer = format!("https://{addr}");
    let ca =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/etcd-test-ca.pem");
    let ca = ca.display();
    let provider = |jwks: &str| {
        format!(
            "[auth]\nleeway = \"0s\"\n\n[[auth.providers]]\nissuer = \"{issuer}\"\n\
             audience = \"{AUDIENCE}\"\nca_file = \"{ca}\"\nmin_refresh_interval = \"1s\"\n{jwks}\n"
        )
    };
    let token = signer("rsa-2").sign(&json!({
        "sub": "mallory", "exp": now() + 600, "iss": issuer, "aud": AUDIENCE
    }));

    // The discovery document names the http:// service.
    let cfg = TempConfig::write("jwks-downgrade", &provider(""));
    let node = Node::standalone(&["--config", cfg.path()]);
    let start = Instant::now();
    while tls_hits.load(Ordering::SeqCst) == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "no discovery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    refused(&node, &token, "unknown token signing key").await;
    let out = check_config("jwks-downgrade-check", &provider(""));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("jwks_uri") && stderr.contains("downgrade"),
        "{stderr}"
    );

    // A redirect to it.
    let moved = provider(&format!("jwks_url = \"{issuer}/moved.json\""));
    let out = check_config("jwks-redirect-check", &moved);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("redirect refused") && stderr.contains("downgrade"),
        "{stderr}"
    );
    assert_eq!(
        internal.jwks_hits(),
        0,
        "the node fetched from plaintext http"
    );

    // The same provider's https:// key set works: the trust is right, only the
    // downgrade is refused.
    let cfg = TempConfig::write(
        "jwks-https",
        &provider(&format!("jwks_url = \"{issuer}/jwks.json\"")),
    );
    let node = Node::standalone(&["--config", cfg.path()]);
    let start = Instant::now();
    loop {
        let (_c, f) = connect_token(
            &node,
            &signer("rsa-1").sign(&json!({
                "sub": "alice", "exp": now() + 600, "iss": issuer, "aud": AUDIENCE
            })),
        )
        .await;
        if f.command == Command::Connected {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{f:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(internal.jwks_hits(), 0);
}

/// A provider that empties its key set (`{"keys": []}`) revokes every key: its tokens
/// are refused from the next fetch on (only a failed fetch keeps the last good set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_key_set_revokes_every_key() {
    let idp = Idp::start(&["rsa-1"]).await;
    let (node, _cfg) = node(
        "empty",
        &idp,
        "refresh_interval = \"1s\"\nmin_refresh_interval = \"1s\"",
        false,
    );
    let rsa = signer("rsa-1");
    first_fetch(&idp).await;
    accepted(&node, &rsa.sign(&claims(&idp, "alice")), "alice").await;
    idp.serve(&[]);
    next_fetch(&idp).await;
    refused(
        &node,
        &rsa.sign(&claims(&idp, "alice")),
        "unknown token signing key",
    )
    .await;
}
