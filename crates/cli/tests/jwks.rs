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

/// CONNECT with `token` as the passcode: the client and the CONNECTED or ERROR.
async fn connect_token(node: &Node, token: &str) -> (WsClient, Frame) {
    let mut c = WsClient::open(&node.ws_url(), Some("v12.stomp")).await;
    c.send(
        &Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("passcode", token),
    )
    .await;
    let f = c.frame().await.expect("an answer to CONNECT");
    (c, f)
}

async fn accepted(node: &Node, token: &str, user: &str) {
    let (_c, f) = connect_token(node, token).await;
    assert_eq!(f.command, Command::Connected, "{f:?}");
    assert_eq!(f.get("user-name"), Some(user));
}

/// Refused with an ERROR whose message holds `why`.
async fn refused(node: &Node, token: &str, why: &str) {
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
    let seen = idp.jwks_hits();
    let start = Instant::now();
    while idp.jwks_hits() < seen + 1 {
        assert!(start.elapsed() < Duration::from_secs(10), "no refresh");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
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
    ] {
        let out = check_config("jwks-bad", &format!("[[auth.providers]]\n{toml}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml} accepted");
        assert!(stderr.contains(why), "{toml}: {stderr}");
    }
}
