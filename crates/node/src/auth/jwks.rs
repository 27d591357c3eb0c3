//! Identity providers: signing keys fetched from a JWKS URL (or found by OpenID
//! Connect discovery), indexed by `kid`, refreshed in the background.
//!
//! Verification reads the current key set through a lock held only to clone an `Arc`;
//! one task per provider does every fetch, so no lock is held across network I/O and
//! many tokens with unknown `kid`s cause one fetch at most per `min_refresh_interval`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use reqwest::Url;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{AuthConfig, ConfigError, ProviderConfig};

/// A JWKS or discovery document larger than this is refused.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Keys kept from one JWKS; the rest are ignored.
const MAX_KEYS: usize = 64;
/// One fetch (connect, request, body) ends after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a CONNECT with an unknown `kid` waits for the fetch it triggered.
pub(crate) const UNKNOWN_KID_WAIT: Duration = Duration::from_secs(2);

/// Algorithms a provider may be configured to accept (never `none`, never HS*).
const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

fn bad(p: &ProviderConfig, m: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("auth.providers ({}): {m}", p.issuer))
}

/// `https://`, or `http://` on a loopback host when `http` (the configured URL is
/// itself `http://` on loopback: a URL it leads to, by discovery or a redirect, may
/// never be weaker than the one configured); no credentials in the URL.
fn allowed_url(url: &Url, http: bool) -> Result<(), String> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL are not accepted".into());
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if !is_loopback(url) => {
            Err("http:// only on a loopback host (127.0.0.1, ::1, localhost)".into())
        }
        "http" if http => Ok(()),
        "http" => Err("http:// where the configured URL is https:// (a downgrade)".into()),
        s => Err(format!("unsupported scheme {s}")),
    }
}

fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || ip.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// A configured URL: `https://`, or `http://` on loopback.
fn parse_url(p: &ProviderConfig, what: &str, s: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(s).map_err(|e| bad(p, format_args!("{what} {s}: {e}")))?;
    allowed_url(&url, true).map_err(|e| bad(p, format_args!("{what} {s}: {e}")))?;
    Ok(url)
}

fn algorithms(p: &ProviderConfig) -> Result<Vec<Algorithm>, ConfigError> {
    let mut out = Vec::new();
    for name in &p.algorithms {
        let alg = Algorithm::from_str(name)
            .ok()
            .filter(|a| ASYMMETRIC.contains(a))
            .ok_or_else(|| {
                bad(
                    p,
                    format_args!(
                        "algorithm {name} not accepted (RS256/384/512, PS256/384/512, ES256, ES384, EdDSA)"
                    ),
                )
            })?;
        out.push(alg);
    }
    if out.is_empty() {
        return Err(bad(p, "algorithms must not be empty"));
    }
    Ok(out)
}

/// The values of one provider entry (what `validate()` checks; no I/O).
pub(crate) fn check_provider(p: &ProviderConfig) -> Result<(), ConfigError> {
    if p.issuer.is_empty() {
        return Err(ConfigError(
            "auth.providers: issuer must not be empty".into(),
        ));
    }
    if p.audience.is_empty() || p.audience.iter().any(String::is_empty) {
        return Err(bad(
            p,
            "audience is required: a token issued for another application must not work here",
        ));
    }
    match &p.jwks_url {
        Some(u) => parse_url(p, "jwks_url", u).map(drop)?,
        None => parse_url(p, "issuer", &p.issuer).map(drop)?,
    }
    if p.refresh_interval < Duration::from_secs(1) {
        return Err(bad(p, "refresh_interval must be at least 1s"));
    }
    // Zero would let every token with a random `kid` cause a fetch.
    if p.min_refresh_interval < Duration::from_secs(1) {
        return Err(bad(
            p,
            "min_refresh_interval must be at least 1s (it rate-limits fetches for unknown kids)",
        ));
    }
    if p.min_refresh_interval > p.refresh_interval {
        return Err(bad(
            p,
            "min_refresh_interval must be at most refresh_interval",
        ));
    }
    if p.user_prefix.contains(|c: char| c.is_control()) {
        return Err(bad(p, "user_prefix must not hold control characters"));
    }
    algorithms(p).map(drop)
}

/// Every provider entry, and the rules between them: one entry per issuer, and when
/// tokens come from more than one source (several providers, or a provider and the
/// static keys) each provider's users are kept apart by a `user_prefix` of its own.
pub(crate) fn check_providers(cfg: &AuthConfig) -> Result<(), ConfigError> {
    let providers = &cfg.providers;
    for p in providers {
        check_provider(p)?;
    }
    for (i, p) in providers.iter().enumerate() {
        if providers[..i].iter().any(|q| q.issuer == p.issuer) {
            return Err(bad(
                p,
                "the issuer is configured twice (one entry per issuer: a token's iss picks it)",
            ));
        }
    }
    let static_keys = cfg.hs256_secret.is_some()
        || cfg.hs256_secret_file.is_some()
        || cfg.rs256_public_key_file.is_some();
    if providers.len() + usize::from(static_keys) < 2 {
        return Ok(());
    }
    let others = if static_keys {
        "identity providers and static keys"
    } else {
        "several identity providers"
    };
    for (i, p) in providers.iter().enumerate() {
        if p.user_prefix.is_empty() {
            return Err(bad(
                p,
                format_args!(
                    "user_prefix is required with {others}: without one, the same sub from \
                     two sources would be one user (each other's pushes and requests)"
                ),
            ));
        }
        if let Some(q) = providers
            .iter()
            .enumerate()
            .find_map(|(j, q)| (j != i && q.user_prefix.starts_with(&p.user_prefix)).then_some(q))
        {
            return Err(bad(
                p,
                format_args!(
                    "user_prefix {:?} is also the start of {}'s {:?}: their users could meet",
                    p.user_prefix, q.issuer, q.user_prefix
                ),
            ));
        }
    }
    Ok(())
}

/// A usable key and the algorithms it may verify.
struct Key {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// The keys of one fetch, by `kid`.
#[derive(Default)]
pub(crate) struct KeySet {
    keys: HashMap<String, Key>,
}

impl KeySet {
    /// The key `kid` if it may verify `alg`: `Err(true)` when no key has that `kid`,
    /// `Err(false)` when it exists but is not for `alg`.
    pub(crate) fn get(&self, kid: &str, alg: Algorithm) -> Result<&DecodingKey, bool> {
        let k = self.keys.get(kid).ok_or(true)?;
        if k.algorithms.contains(&alg) {
            Ok(&k.key)
        } else {
            Err(false)
        }
    }

    fn ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    }

    /// Parses a JWKS document, keeping the signing keys this provider may use. Keys it
    /// cannot use (encryption keys, symmetric keys, unknown types) are skipped.
    pub(crate) fn parse(body: &[u8], accepted: &[Algorithm]) -> Result<KeySet, String> {
        #[derive(Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc =
            serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut set = KeySet::default();
        for value in doc.keys {
            if set.keys.len() == MAX_KEYS {
                warn!("JWKS holds more than {MAX_KEYS} keys; the rest are ignored");
                break;
            }
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            let Some(kid) = jwk.common.key_id.clone().filter(|k| !k.is_empty()) else {
                continue;
            };
            let Some(algorithms) = usable(&jwk, accepted) else {
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            set.keys.entry(kid).or_insert(Key { key, algorithms });
        }
        Ok(set)
    }
}

/// The algorithms `jwk` may verify here: by its type and curve, narrowed by its own
/// `alg` and the provider's list. `None` for keys that are not for signatures here.
fn usable(jwk: &Jwk, accepted: &[Algorithm]) -> Option<Vec<Algorithm>> {
    let c = &jwk.common;
    if c.public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    if c.key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return None;
    }
    use Algorithm::*;
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[ES256],
            EllipticCurve::P384 => &[ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => &[EdDSA],
        // Symmetric keys never come from a public document.
        _ => return None,
    };
    // A key's own `alg` binds it to that one (an encryption `alg` makes it unusable).
    let own = match c.key_algorithm {
        Some(a) => Some(Algorithm::from_str(&a.to_string()).ok()?),
        None => None,
    };
    let algs: Vec<Algorithm> = by_type
        .iter()
        .copied()
        .filter(|a| accepted.contains(a) && own.is_none_or(|o| o == *a))
        .collect();
    (!algs.is_empty()).then_some(algs)
}

/// Where the keys come from.
#[derive(Debug, Clone)]
enum Source {
    Jwks(Url),
    /// The issuer's discovery document, which names the JWKS.
    Discovery(Url),
}

impl Source {
    fn url(&self) -> &Url {
        match self {
            Source::Jwks(u) | Source::Discovery(u) => u,
        }
    }
}

#[derive(Default)]
struct Refresh {
    /// When the last fetch started (any fetch: periodic, at start, or asked for).
    last: Option<Instant>,
    /// A fetch was asked for, or is running (the one at start too), and has not ended
    /// yet: tokens with unknown `kid`s wait for it instead of asking again.
    pending: bool,
}

/// One identity provider: its rules and its current key set.
pub(crate) struct Provider {
    pub(crate) issuer: String,
    /// Put before `sub` to make the user.
    pub(crate) user_prefix: String,
    pub(crate) audience: Vec<String>,
    pub(crate) algorithms: Vec<Algorithm>,
    source: Source,
    /// The configured URL is http:// (on loopback): discovery and redirects may lead
    /// to http:// (on loopback) too; otherwise https:// only.
    http: bool,
    refresh_interval: Duration,
    min_refresh_interval: Duration,
    client: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    refresh: Mutex<Refresh>,
    /// Wakes the provider's task for a fetch out of turn.
    wake: Arc<Notify>,
    /// Counts ended fetches: waiters watch it for the fetch they asked for.
    fetched_tx: watch::Sender<u64>,
    started: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.issuer)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Provider {
    /// Builds the provider (HTTP client, trust roots); fetches nothing yet.
    pub(crate) fn load(p: &ProviderConfig) -> Result<Provider, ConfigError> {
        check_provider(p)?;
        let source = match &p.jwks_url {
            Some(u) => Source::Jwks(parse_url(p, "jwks_url", u)?),
            None => {
                let base = p.issuer.trim_end_matches('/');
                let doc = format!("{base}/.well-known/openid-configuration");
                Source::Discovery(parse_url(p, "issuer", &doc)?)
            }
        };
        let mut roots = rustls::RootCertStore::empty();
        match &p.ca_file {
            Some(f) => {
                let certs = CertificateDer::pem_file_iter(f)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| bad(p, format_args!("ca_file {}: {e}", f.display())))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(bad(
                        p,
                        format_args!("ca_file {} holds no certificate", f.display()),
                    ));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(p, e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        // Only a URL configured as http:// (on loopback) may lead to http:// ones.
        let http = source.url().scheme() == "http";
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            // Never through HTTP_PROXY / HTTPS_PROXY / ALL_PROXY: whoever runs the
            // proxy would serve the signing keys (over http://) and forge any token.
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 3 {
                    attempt.error("too many redirects")
                } else if let Err(e) = allowed_url(attempt.url(), http) {
                    attempt.error(format!("redirect refused: {e}"))
                } else {
                    attempt.follow()
                }
            }))
            .user_agent(concat!("pushcenter/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| bad(p, format_args!("HTTP client: {e}")))?;
        let (fetched_tx, _) = watch::channel(0);
        Ok(Provider {
            issuer: p.issuer.clone(),
            user_prefix: p.user_prefix.clone(),
            http,
            audience: p.audience.clone(),
            algorithms: algorithms(p)?,
            source,
            refresh_interval: p.refresh_interval,
            min_refresh_interval: p.min_refresh_interval,
            client,
            keys: RwLock::new(Arc::new(KeySet::default())),
            refresh: Mutex::new(Refresh::default()),
            wake: Arc::new(Notify::new()),
            fetched_tx,
            started: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The URL named in logs and warnings.
    pub(crate) fn url(&self) -> &Url {
        self.source.url()
    }

    /// The current key set (a clone of an `Arc`, never waits on I/O).
    pub(crate) fn keys(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A token named a `kid` the set does not hold: asks the task for a fetch unless
    /// one ran less than `min_refresh_interval` ago. Returns a receiver that changes
    /// when the fetch asked for (or already under way) ends; `None` when no fetch
    /// will come soon (rate-limited, or the refresh task is not running).
    pub(crate) fn unknown_kid(&self) -> Option<watch::Receiver<u64>> {
        if !self.started.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let mut r = lock(&self.refresh);
        if r.pending {
            return Some(self.fetched_tx.subscribe());
        }
        if r.last
            .is_some_and(|t| t.elapsed() < self.min_refresh_interval)
        {
            return None;
        }
        r.pending = true;
        // Subscribed before the wake-up, so the fetch's end cannot be missed.
        let rx = self.fetched_tx.subscribe();
        self.wake.notify_one();
        Some(rx)
    }

    /// Starts the provider's refresh task: a fetch now, then every `refresh_interval`
    /// (after a failure sooner, backing off from `min_refresh_interval`), and when a
    /// token with an unknown `kid` asks. The task ends when the provider is dropped.
    pub(crate) fn start(self: &Arc<Provider>) {
        if self
            .started
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let weak: Weak<Provider> = Arc::downgrade(self);
        let wake = self.wake.clone();
        tokio::spawn(async move {
            let mut discovered: Option<Url> = None;
            let mut failures = 0u32;
            loop {
                let Some(p) = weak.upgrade() else { return };
                *lock(&p.refresh) = Refresh {
                    last: Some(Instant::now()),
                    pending: true,
                };
                let ok = match p.fetch(&mut discovered).await {
                    Ok(set) => {
                        if set.keys.is_empty() {
                            warn!(issuer = %p.issuer, url = %p.url(),
                                "identity provider: the key set holds no usable signing key; \
                                 its tokens are refused until it does");
                        }
                        p.install(set);
                        failures = 0;
                        true
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        let kept = p.keys().keys.len();
                        warn!(issuer = %p.issuer, url = %p.url(), error = %e, kept,
                            "identity provider: fetching keys failed; the last good set stays");
                        false
                    }
                };
                lock(&p.refresh).pending = false;
                p.fetched_tx.send_modify(|n| *n = n.wrapping_add(1));
                let next = if ok {
                    p.refresh_interval
                } else {
                    let base = p.min_refresh_interval.max(Duration::from_secs(1));
                    base.saturating_mul(1 << failures.min(10).saturating_sub(1))
                        .min(p.refresh_interval)
                };
                let floor = p.min_refresh_interval;
                drop(p);
                let start = Instant::now();
                tokio::select! {
                    () = tokio::time::sleep(next) => {}
                    () = wake.notified() => {
                        // Asked for sooner: still never faster than the floor.
                        tokio::time::sleep_until(start + floor.min(next)).await;
                    }
                }
            }
        });
    }

    fn install(&self, set: KeySet) {
        let new_ids = set.ids().join(",");
        let old = self.keys();
        if old.ids().join(",") != new_ids {
            info!(issuer = %self.issuer, keys = %new_ids, "identity provider: key set loaded");
        } else {
            debug!(issuer = %self.issuer, "identity provider: key set unchanged");
        }
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(set);
    }

    /// One fetch of the key set (through discovery when configured; the JWKS URL it
    /// names is remembered in `discovered` until a fetch fails).
    pub(crate) async fn fetch(&self, discovered: &mut Option<Url>) -> Result<KeySet, String> {
        let jwks = match (&self.source, discovered.as_ref()) {
            (Source::Jwks(u), _) => u.clone(),
            (Source::Discovery(_), Some(u)) => u.clone(),
            (Source::Discovery(doc), None) => {
                let u = self.discover(doc).await?;
                *discovered = Some(u.clone());
                u
            }
        };
        // A document that parses is the provider's word, even without a key this node
        // can use (`{"keys": []}`): the keys it no longer lists stop working. Only a
        // fetch that fails keeps the last good set.
        let result = async {
            let body = get(&self.client, &jwks).await?;
            KeySet::parse(&body, &self.algorithms).map_err(|e| format!("{jwks}: {e}"))
        }
        .await;
        if result.is_err() {
            *discovered = None;
        }
        result
    }

    async fn discover(&self, doc: &Url) -> Result<Url, String> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let body = get(&self.client, doc).await?;
        let d: Discovery = serde_json::from_slice(&body)
            .map_err(|e| format!("{doc}: not an OpenID configuration: {e}"))?;
        // OpenID Connect Discovery 4.3: the document must be the issuer's own.
        if d.issuer != self.issuer {
            return Err(format!(
                "{doc}: names issuer {}, not {}",
                d.issuer, self.issuer
            ));
        }
        let url = Url::parse(&d.jwks_uri).map_err(|e| format!("{doc}: jwks_uri: {e}"))?;
        allowed_url(&url, self.http).map_err(|e| format!("{doc}: jwks_uri {url}: {e}"))?;
        Ok(url)
    }
}

/// Fetches every provider's keys once, as `check-config` does: one line per provider
/// that cannot be reached or serves no usable key. Runs on a thread of its own, so it
/// may be called from inside or outside a runtime.
pub(crate) fn probe(providers: &[Arc<Provider>]) -> Vec<String> {
    if providers.is_empty() {
        return Vec::new();
    }
    let providers = providers.to_vec();
    let run = move || -> Vec<String> {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return vec![format!("cannot check identity providers: {e}")],
        };
        rt.block_on(async {
            let tasks: Vec<_> = providers
                .into_iter()
                .map(|p| tokio::spawn(async move { (p.fetch(&mut None).await, p) }))
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                match t.await {
                    Ok((Ok(set), p)) if set.keys.is_empty() => out.push(format!(
                        "auth.providers ({}): {}: no usable signing key",
                        p.issuer,
                        p.url()
                    )),
                    Ok((Ok(set), p)) => {
                        debug!(issuer = %p.issuer, keys = %set.ids().join(","), "reachable")
                    }
                    Ok((Err(e), p)) => out.push(format!("auth.providers ({}): {e}", p.issuer)),
                    Err(e) => out.push(format!("cannot check identity providers: {e}")),
                }
            }
            out
        })
    };
    std::thread::spawn(run)
        .join()
        .unwrap_or_else(|_| vec!["cannot check identity providers".into()])
}

/// GET `url`: the body, at most `MAX_DOCUMENT_BYTES`, on a 2xx answer.
async fn get(client: &reqwest::Client, url: &Url) -> Result<Vec<u8>, String> {
    let e = |e: reqwest::Error| format!("{url}: {}", error_chain(&e));
    let mut resp = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(e)?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(format!("{url}: larger than {MAX_DOCUMENT_BYTES} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(e)? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(format!("{url}: larger than {MAX_DOCUMENT_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The error and its causes on one line (reqwest's own text says only "error
/// sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(jwks_url: Option<&str>, issuer: &str) -> ProviderConfig {
        ProviderConfig {
            issuer: issuer.into(),
            audience: vec!["app".into()],
            jwks_url: jwks_url.map(str::to_owned),
            refresh_interval: Duration::from_secs(600),
            min_refresh_interval: Duration::from_secs(30),
            ca_file: None,
            algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
            user_prefix: String::new(),
        }
    }

    #[test]
    fn a_url_found_from_an_https_one_stays_https() {
        let url = |u: &str| Url::parse(u).expect("url");
        // Configured https://: discovery and redirects may not lead to http://.
        assert!(allowed_url(&url("https://idp.example.com/jwks"), false).is_ok());
        let e = allowed_url(&url("http://127.0.0.1:8080/jwks"), false).expect_err("downgrade");
        assert!(e.contains("downgrade"), "{e}");
        assert!(allowed_url(&url("http://localhost/jwks"), false).is_err());
        // Configured http:// on loopback: loopback http:// or https://.
        assert!(allowed_url(&url("http://127.0.0.1:8080/jwks"), true).is_ok());
        assert!(allowed_url(&url("https://idp.example.com/jwks"), true).is_ok());
        assert!(allowed_url(&url("http://10.0.0.1/jwks"), true).is_err());
        let p = Provider::load(&provider(None, "https://idp.example.com")).expect("load");
        assert!(!p.http);
        let p = Provider::load(&provider(None, "http://127.0.0.1:9")).expect("load");
        assert!(p.http);
        let p = Provider::load(&provider(
            Some("https://idp.example.com/jwks"),
            "http://127.0.0.1:9",
        ))
        .expect("load");
        assert!(!p.http, "the JWKS URL is what is fetched");
    }

    #[test]
    fn several_sources_need_distinct_prefixes() {
        let a = provider(None, "https://a.example.com");
        let b = provider(None, "https://b.example.com");
        let with = |p: &ProviderConfig, prefix: &str| ProviderConfig {
            user_prefix: prefix.into(),
            ..p.clone()
        };
        let check = |ps: Vec<ProviderConfig>, statics: bool| {
            check_providers(&AuthConfig {
                providers: ps,
                hs256_secret: statics.then(|| "s".repeat(32)),
                ..AuthConfig::default()
            })
        };
        assert!(check(vec![a.clone()], false).is_ok(), "one provider alone");
        let e = check(vec![a.clone(), b.clone()], false).expect_err("no prefixes");
        assert!(e.0.contains("user_prefix is required"), "{}", e.0);
        assert!(check(vec![with(&a, "a:"), b.clone()], false).is_err());
        assert!(check(vec![with(&a, "a:"), with(&b, "b:")], false).is_ok());
        assert!(check(vec![with(&a, "x:"), with(&b, "x:")], false).is_err());
        // One prefix the start of another: "a:" + "b:x" = "a:b:" + "x".
        let e = check(vec![with(&a, "a:"), with(&b, "a:b:")], false).expect_err("nested");
        assert!(e.0.contains("also the start of"), "{}", e.0);
        assert!(
            check(vec![a.clone()], true).is_err(),
            "a provider and static keys"
        );
        assert!(check(vec![with(&a, "a:")], true).is_ok());
        let e = check(vec![with(&a, "a:"), with(&a, "b:")], false).expect_err("same issuer");
        assert!(e.0.contains("configured twice"), "{}", e.0);
        assert!(check(vec![with(&a, "a\n")], false).is_err());
    }

    #[test]
    fn urls_are_https_or_loopback_http() {
        let ok = |u: &str| check_provider(&provider(Some(u), "https://idp.example.com")).is_ok();
        assert!(ok("https://idp.example.com/jwks"));
        assert!(ok("http://127.0.0.1:9000/jwks"));
        assert!(ok("http://[::1]:9000/jwks"));
        assert!(ok("http://localhost/jwks"));
        assert!(!ok("http://idp.example.com/jwks"));
        assert!(!ok("http://10.0.0.1/jwks"));
        assert!(!ok("https://user:pw@idp.example.com/jwks"));
        assert!(!ok("ftp://idp.example.com/jwks"));
        // Discovery goes to the issuer: the same rule.
        assert!(check_provider(&provider(None, "http://idp.example.com")).is_err());
        assert!(check_provider(&provider(None, "https://idp.example.com")).is_ok());
    }

    #[test]
    fn provider_values_are_checked() {
        let base = provider(None, "https://idp.example.com");
        let no_aud = ProviderConfig {
            audience: vec![],
            ..base.clone()
        };
        assert!(check_provider(&no_aud).is_err());
        for alg in ["HS256", "none", "RS257"] {
            let p = ProviderConfig {
                algorithms: vec![alg.into()],
                ..base.clone()
            };
            assert!(check_provider(&p).is_err(), "{alg}");
        }
        let fast = ProviderConfig {
            min_refresh_interval: Duration::from_secs(900),
            ..base.clone()
        };
        assert!(check_provider(&fast).is_err());
        let unlimited = ProviderConfig {
            min_refresh_interval: Duration::ZERO,
            ..base
        };
        assert!(check_provider(&unlimited).is_err());
    }

    #[test]
    fn only_signing_keys_of_accepted_algorithms_are_kept() {
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "kid": "rsa", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": "sXch", "e": "AQAB"},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},
            {"kty": "XYZ", "kid": "odd"},
            {"kty": "RSA", "n": "sXch", "e": "AQAB"},
        ]});
        let body = serde_json::to_vec(&doc).expect("json");
        let set = KeySet::parse(&body, &[Algorithm::RS256, Algorithm::ES256]).expect("parse");
        assert_eq!(set.ids(), vec!["rsa"]);
        assert!(set.get("rsa", Algorithm::RS256).is_ok());
        assert_eq!(set.get("rsa", Algorithm::HS256).err(), Some(false));
        assert_eq!(set.get("hmac", Algorithm::HS256).err(), Some(true));
        assert!(KeySet::parse(b"{}", &[Algorithm::RS256]).is_err());
    }

    #[tokio::test]
    async fn an_unknown_kid_asks_for_one_fetch_per_interval() {
        let p = Provider::load(&provider(
            Some("http://127.0.0.1:9/jwks"),
            "https://idp.example.com",
        ))
        .expect("load");
        // Not started: nothing to wait for.
        assert!(p.unknown_kid().is_none());
        p.started.store(true, std::sync::atomic::Ordering::Relaxed);
        let first = p.unknown_kid().expect("a fetch is asked for");
        // While it is pending, everyone waits for the same one.
        assert!(p.unknown_kid().is_some());
        assert!(lock(&p.refresh).pending);
        drop(first);
        // It ran just now: the next unknown kid waits for min_refresh_interval.
        *lock(&p.refresh) = Refresh {
            last: Some(Instant::now()),
            pending: false,
        };
        assert!(p.unknown_kid().is_none());
    }
}
