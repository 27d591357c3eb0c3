//! Who a client or a backend is, and what it may do. Clients present a JWT (HS256 or
//! RS256 with the static keys, or signed by an identity provider's JWKS key) whose
//! `sub` is the user (after the provider's `user_prefix`) and whose `subscribe`/`send`
//! claims may narrow what it may reach; backends present an API key or a JWT with the
//! backend role.

pub(crate) mod jwks;

use std::path::PathBuf;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, errors::ErrorKind};
use pushcenter_stomp::{Command, Frame};
use serde::Deserialize;

use crate::config::{AuthConfig, ConfigError};
use jwks::Provider;

/// Where a client sends a fresh token before its current one expires.
pub(crate) const TOKEN_DESTINATION: &str = "/session/token";

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    exp: u64,
    #[serde(default)]
    subscribe: Option<Vec<String>>,
    #[serde(default)]
    send: Option<Vec<String>>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    /// A callback token may name the node whose caller waits.
    #[serde(default)]
    node: Option<String>,
}

/// `aud`: one string or a list (RFC 7519 4.1.3).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn names(&self, want: &str) -> bool {
        match self {
            Audience::One(a) => a == want,
            Audience::Many(list) => list.iter().any(|a| a == want),
        }
    }
}

/// What a token was issued for: its `role` decides, its `aud` must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Client,
    Backend,
    Callback,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Client => "client",
            Kind::Backend => "backend",
            Kind::Callback => "callback",
        }
    }
}

/// A connection's identity and rights.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The token's `sub`, after its provider's `user_prefix`.
    pub(crate) user: Option<String>,
    /// The issuer of the provider whose token this is; `None` for the static keys
    /// (and without a token).
    pub(crate) source: Option<Arc<str>>,
    /// `None`: no restriction (authentication is off).
    pub(crate) subscribe: Option<Vec<String>>,
    pub(crate) send: Option<Vec<String>>,
    /// Unix seconds after which the connection is closed unless the token is refreshed.
    pub(crate) expires_at: Option<u64>,
}

impl Identity {
    /// Authentication off: anyone, anything.
    pub(crate) fn open(user: Option<String>) -> Identity {
        Identity {
            user,
            ..Identity::default()
        }
    }

    pub(crate) fn may_subscribe(&self, destination: &str) -> bool {
        destination.starts_with("/user/queue/") || allowed(self.subscribe.as_deref(), destination)
    }

    pub(crate) fn may_send(&self, destination: &str) -> bool {
        allowed(self.send.as_deref(), destination)
    }

    /// The same user from the same token source: what a token refresh must keep.
    pub(crate) fn same_principal(&self, other: &Identity) -> bool {
        self.user == other.user && self.source == other.source
    }
}

fn allowed(patterns: Option<&[String]>, destination: &str) -> bool {
    patterns.is_none_or(|ps| ps.iter().any(|p| covers(p, destination)))
}

/// True when every destination `sub` matches is matched by `pattern` (`sub` may itself
/// be a pattern): `*` is one segment, a final `#` any number of them.
pub(crate) fn covers(pattern: &str, sub: &str) -> bool {
    let mut p = pattern.split(['.', '/']);
    let mut s = sub.split(['.', '/']);
    loop {
        match (p.next(), s.next()) {
            (Some("#"), _) => return p.next().is_none(),
            (Some("*"), Some(x)) if x != "#" => {}
            (Some(a), Some(b)) if a == b && a != "*" && a != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

pub(crate) struct Auth {
    cfg: AuthConfig,
    hs: Option<DecodingKey>,
    rs: Option<DecodingKey>,
    api_keys: Vec<String>,
    providers: Vec<Arc<Provider>>,
}

impl std::fmt::Debug for Auth {
    // Never the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("hs256", &self.hs.is_some())
            .field("rs256", &self.rs.is_some())
            .field("api_keys", &self.api_keys.len())
            .field("providers", &self.providers)
            .finish()
    }
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError(format!("{what} {}: {e}", path.display())))
}

impl Auth {
    /// The loaded keys; `None` when nothing is configured (authentication off).
    pub(crate) fn load(cfg: &AuthConfig) -> Result<Option<Auth>, ConfigError> {
        // The providers' rules live with the providers (config.rs stays below auth).
        jwks::check_providers(cfg)?;
        let secret = match (&cfg.hs256_secret, &cfg.hs256_secret_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError(
                    "auth: give hs256_secret or hs256_secret_file, not both".into(),
                ));
            }
            (Some(s), None) => Some(s.as_bytes().to_vec()),
            (None, Some(f)) => {
                let mut b = read(f, "auth.hs256_secret_file")?;
                while b.last().is_some_and(|c| matches!(c, b'\n' | b'\r')) {
                    b.pop();
                }
                Some(b)
            }
            (None, None) => None,
        };
        if secret.as_ref().is_some_and(|s| s.len() < 32) {
            return Err(ConfigError(
                "auth: the HS256 secret must be at least 32 bytes".into(),
            ));
        }
        let rs = match &cfg.rs256_public_key_file {
            Some(f) => Some(
                DecodingKey::from_rsa_pem(&read(f, "auth.rs256_public_key_file")?)
                    .map_err(|e| ConfigError(format!("auth.rs256_public_key_file: {e}")))?,
            ),
            None => None,
        };
        let mut api_keys = cfg.api_keys.clone();
        if let Some(f) = &cfg.api_keys_file {
            let text = String::from_utf8(read(f, "auth.api_keys_file")?)
                .map_err(|_| ConfigError("auth.api_keys_file is not UTF-8".into()))?;
            api_keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        if api_keys.iter().any(|k| k.len() < 16) {
            return Err(ConfigError(
                "auth: API keys must be at least 16 characters".into(),
            ));
        }
        let hs = secret.map(|s| DecodingKey::from_secret(&s));
        let providers = cfg
            .providers
            .iter()
            .map(|p| Provider::load(p).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        if hs.is_none() && rs.is_none() && api_keys.is_empty() && providers.is_empty() {
            return Ok(None);
        }
        Ok(Some(Auth {
            cfg: cfg.clone(),
            hs,
            rs,
            api_keys,
            providers,
        }))
    }

    /// Starts each identity provider's key refresh (the node runs this at start; the
    /// keys arrive in the background, a provider that cannot be reached delays nothing).
    pub(crate) fn start(&self) {
        for p in &self.providers {
            p.start();
        }
    }

    pub(crate) fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    pub(crate) fn clients_need_tokens(&self) -> bool {
        self.hs.is_some() || self.rs.is_some() || !self.providers.is_empty()
    }

    /// The provider whose issuer the token's (unverified) `iss` names.
    fn provider_of(&self, token: &str) -> Option<&Provider> {
        if self.providers.is_empty() {
            return None;
        }
        #[derive(Deserialize)]
        struct Issuer {
            #[serde(default)]
            iss: Option<serde_json::Value>,
        }
        let peek = jsonwebtoken::dangerous::insecure_decode::<Issuer>(token).ok()?;
        let iss = peek.claims.iss?;
        let iss = iss.as_str()?;
        self.providers
            .iter()
            .find(|p| p.issuer == iss)
            .map(|p| &**p)
    }

    /// Before a frame's token is checked: when it is a provider's token whose `kid` the
    /// key set lacks (a key rotated in since the last fetch), waits for the fetch this
    /// asks for, at most [`jwks::UNKNOWN_KID_WAIT`]. Rate-limited: when the provider
    /// was fetched less than `min_refresh_interval` ago it returns at once.
    /// `None` (at once, no allocation) for every other frame.
    /// Whether [`Auth::await_keys_for`] may wait for this frame (cheap, no decoding).
    pub(crate) fn may_wait_for_keys(&self, frame: &Frame) -> bool {
        !self.providers.is_empty()
            && match frame.command {
                Command::Connect | Command::Stomp => true,
                Command::Send => frame.get("destination") == Some(TOKEN_DESTINATION),
                _ => false,
            }
    }

    pub(crate) fn await_keys_for<'a>(
        &'a self,
        frame: &'a Frame,
    ) -> Option<impl Future<Output = ()> + 'a> {
        if !self.may_wait_for_keys(frame) {
            return None;
        }
        Some(self.await_keys(frame_token(frame)?))
    }

    /// [`Auth::await_keys_for`] for a token given some other way (the WebSocket URL).
    pub(crate) async fn await_keys(&self, token: &str) {
        let Some(p) = self.provider_of(token) else {
            return;
        };
        let Ok(h) = decode_header(token) else { return };
        let Some(kid) = h.kid else { return };
        if !matches!(p.keys().get(&kid, h.alg), Err(true)) {
            return;
        }
        if let Some(mut fetched) = p.unknown_kid() {
            let _ = tokio::time::timeout(jwks::UNKNOWN_KID_WAIT, fetched.changed()).await;
        }
    }

    /// The token's claims if it verifies and was issued as a `kind` token. A provider's
    /// token: its `role` decides the kind as for any token, and the provider's audience
    /// (checked in `verify_provider`) replaces the kind's audience.
    fn verify_as(&self, token: &str, kind: Kind) -> Result<(Claims, Option<&Provider>), String> {
        let provider = self.provider_of(token);
        let c = match provider {
            Some(p) => verify_provider(p, token, self.cfg.leeway.as_secs())?,
            None => self.verify(token)?,
        };
        let role = c.role.as_deref();
        let is = if role == Some(self.cfg.backend_role.as_str()) {
            Kind::Backend
        } else {
            match role {
                None | Some("client") => Kind::Client,
                Some("callback") => Kind::Callback,
                Some(_) => return Err("unauthorized: unknown token role".into()),
            }
        };
        if is != kind {
            return Err(format!(
                "unauthorized: a {} token cannot be used as a {} token",
                is.name(),
                kind.name()
            ));
        }
        let audience = match kind {
            Kind::Client => &self.cfg.client_audience,
            Kind::Backend => &self.cfg.backend_audience,
            Kind::Callback => &self.cfg.callback_audience,
        };
        match &c.aud {
            _ if provider.is_some() => Ok((c, provider)),
            Some(aud) if !aud.names(audience) => {
                Err(format!("unauthorized: token audience is not {audience}"))
            }
            None if self.cfg.require_audience => Err(format!(
                "unauthorized: token has no audience ({audience} required)"
            )),
            _ => Ok((c, provider)),
        }
    }

    fn verify(&self, token: &str) -> Result<Claims, String> {
        let header = decode_header(token).map_err(|e| reason(e.kind()))?;
        // The key follows from the algorithm, and each key only serves its own: an
        // HS256 token can never be checked against the RSA public key.
        let key = match header.alg {
            Algorithm::HS256 => self.hs.as_ref(),
            Algorithm::RS256 => self.rs.as_ref(),
            _ => None,
        }
        .ok_or("unauthorized: token algorithm not accepted")?;
        let mut v = Validation::new(header.alg);
        v.leeway = self.cfg.leeway.as_secs();
        v.validate_nbf = true;
        // Checked by `verify_as`, per kind of token.
        v.validate_aud = false;
        decode::<Claims>(token, key, &v)
            .map(|d| d.claims)
            .map_err(|e| reason(e.kind()))
    }

    /// A client's identity from its token (CONNECT `passcode`, an `authorization:
    /// Bearer` header, or the WebSocket URL's `access_token`).
    pub(crate) fn client(&self, token: Option<&str>) -> Result<Identity, String> {
        if !self.clients_need_tokens() {
            return Ok(Identity::open(None));
        }
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            if self.cfg.anonymous {
                return Ok(Identity {
                    user: None,
                    source: None,
                    subscribe: Some(self.cfg.anonymous_subscribe.clone()),
                    send: Some(self.cfg.anonymous_send.clone()),
                    expires_at: None,
                });
            }
            return Err("unauthorized: a token is required".into());
        };
        let (c, provider) = self.verify_as(token, Kind::Client)?;
        let sub = c
            .sub
            .filter(|s| !s.is_empty() && !s.contains(['\r', '\n', '\0']))
            .ok_or("unauthorized: the token has no usable sub")?;
        let (user, source) = match provider {
            Some(p) => (
                format!("{}{sub}", p.user_prefix),
                Some(p.issuer.as_str().into()),
            ),
            // The static keys' users never enter a provider's namespace (check-config
            // makes every provider's prefix non-empty when static keys are configured).
            None if self
                .providers
                .iter()
                .any(|p| !p.user_prefix.is_empty() && sub.starts_with(&p.user_prefix)) =>
            {
                return Err(
                    "unauthorized: the token's sub starts with an identity provider's user_prefix"
                        .into(),
                );
            }
            None => (sub, None),
        };
        Ok(Identity {
            user: Some(user),
            source,
            subscribe: Some(c.subscribe.unwrap_or_else(|| self.cfg.subscribe.clone())),
            send: Some(c.send.unwrap_or_else(|| self.cfg.send.clone())),
            expires_at: Some(c.exp.saturating_add(self.cfg.leeway.as_secs())),
        })
    }

    /// True when `bearer` may use the backend HTTP API.
    pub(crate) fn backend(&self, bearer: Option<&str>) -> bool {
        let Some(b) = bearer else { return false };
        if self
            .api_keys
            .iter()
            .any(|k| same(k.as_bytes(), b.as_bytes()))
        {
            return true;
        }
        self.verify_as(b, Kind::Backend).is_ok()
    }

    /// Whether `bearer` may complete request `id`: a backend credential, or a token
    /// with `role: callback` and `sub` = the correlation id (what a backend hands a
    /// third party in the callback URL). `Some(node)` when the token names the node
    /// whose caller waits; `None` when it may complete the request but names no node;
    /// `Err` when it may not.
    pub(crate) fn callback(&self, bearer: Option<&str>, id: &str) -> Result<Option<String>, ()> {
        if self.backend(bearer) {
            return Ok(None);
        }
        let (c, _) = bearer
            .and_then(|b| self.verify_as(b, Kind::Callback).ok())
            .ok_or(())?;
        if c.sub.as_deref() != Some(id) {
            return Err(());
        }
        Ok(c.node.filter(|n| !n.is_empty()))
    }
}

/// A provider's token: a key of its set by `kid`, one of its algorithms, its issuer,
/// its audience.
fn verify_provider(p: &Provider, token: &str, leeway: u64) -> Result<Claims, String> {
    let header = decode_header(token).map_err(|e| reason(e.kind()))?;
    if !p.algorithms.contains(&header.alg) {
        return Err("unauthorized: token algorithm not accepted".into());
    }
    let kid = header
        .kid
        .filter(|k| !k.is_empty())
        .ok_or("unauthorized: the token has no kid")?;
    let keys = p.keys();
    let key = match keys.get(&kid, header.alg) {
        Ok(k) => k,
        Err(true) => {
            // Maybe rotated in since the last fetch: the next token may find it.
            let _ = p.unknown_kid();
            return Err("unauthorized: unknown token signing key".into());
        }
        Err(false) => return Err("unauthorized: token algorithm not accepted".into()),
    };
    let mut v = Validation::new(header.alg);
    v.leeway = leeway;
    v.validate_nbf = true;
    v.set_issuer(&[&p.issuer]);
    v.set_audience(&p.audience);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    decode::<Claims>(token, key, &v)
        .map(|d| d.claims)
        .map_err(|e| reason(e.kind()))
}

/// A token on a frame: `passcode`, or `authorization: Bearer <token>` (as the session
/// reads it).
fn frame_token(frame: &Frame) -> Option<&str> {
    frame.get("passcode").filter(|p| !p.is_empty()).or_else(|| {
        frame
            .get("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .map(str::trim)
    })
}

fn reason(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidIssuer => "unauthorized: token issuer not accepted".into(),
        ErrorKind::InvalidAudience => "unauthorized: token audience not accepted".into(),
        ErrorKind::ExpiredSignature => "unauthorized: token expired".into(),
        ErrorKind::InvalidSignature => "unauthorized: invalid token signature".into(),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "unauthorized: token algorithm not accepted".into()
        }
        ErrorKind::MissingRequiredClaim(c) => format!("unauthorized: invalid token: no {c}"),
        _ => "unauthorized: invalid token".into(),
    }
}

/// Compares without an early exit, so the time taken does not tell how much matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn covers_checks_patterns_segment_by_segment() {
        assert!(covers("/topic/#", "/topic/a.b"));
        assert!(covers("/topic/#", "/topic/a.#"));
        assert!(covers("/topic/a.*", "/topic/a.b"));
        assert!(covers("/topic/a.*", "/topic/a.*"));
        assert!(!covers("/topic/a.*", "/topic/a.#"));
        assert!(!covers("/topic/a.*", "/topic/a.b.c"));
        assert!(!covers("/topic/a.b", "/topic/a.*"));
        assert!(!covers("/topic/public.#", "/topic/private"));
        assert!(covers("/topic/public.#", "/topic/public"));
    }

    #[test]
    fn user_queues_are_always_ones_own() {
        let id = Identity {
            user: Some("a".into()),
            source: None,
            subscribe: Some(vec![]),
            send: Some(vec![]),
            expires_at: None,
        };
        assert!(id.may_subscribe("/user/queue/x"));
        assert!(!id.may_subscribe("/topic/x"));
        assert!(!id.may_send("/topic/x"));
        assert!(Identity::open(None).may_send("/topic/x"));
    }

    fn auth() -> Auth {
        let cfg = AuthConfig {
            hs256_secret: Some("s".repeat(32)),
            leeway: Duration::ZERO,
            ..AuthConfig::default()
        };
        Auth::load(&cfg).expect("load").expect("auth on")
    }

    fn token(claims: serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret("s".repeat(32).as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("sign")
    }

    fn now() -> u64 {
        crate::bus::unix_ms() / 1000
    }

    #[test]
    fn each_kind_of_token_serves_only_its_own_use() {
        let a = auth();
        let exp = now() + 600;
        let client = token(serde_json::json!({"sub": "alice", "exp": exp}));
        let backend = token(serde_json::json!({"sub": "svc", "exp": exp, "role": "backend"}));
        let callback = token(serde_json::json!({"sub": "order-1", "exp": exp, "role": "callback"}));
        assert!(a.client(Some(&client)).is_ok());
        let e = a
            .client(Some(&backend))
            .expect_err("backend token as a login");
        assert!(
            e.contains("a backend token cannot be used as a client token"),
            "{e}"
        );
        assert!(a.client(Some(&callback)).is_err());
        assert!(a.backend(Some(&backend)) && !a.backend(Some(&client)));
        assert!(!a.backend(Some(&callback)));
        assert_eq!(a.callback(Some(&callback), "order-1"), Ok(None));
        assert_eq!(a.callback(Some(&callback), "order-2"), Err(()));
        assert_eq!(a.callback(Some(&client), "alice"), Err(()));
        let named = token(
            serde_json::json!({"sub": "order-1", "exp": exp, "role": "callback", "node": "n2"}),
        );
        assert_eq!(a.callback(Some(&named), "order-1"), Ok(Some("n2".into())));
        let odd = token(serde_json::json!({"sub": "x", "exp": exp, "role": "admin"}));
        assert!(a.client(Some(&odd)).is_err() && !a.backend(Some(&odd)));
    }

    #[test]
    fn audience_and_not_before_are_checked() {
        let a = auth();
        let exp = now() + 600;
        let aud =
            |aud: serde_json::Value| token(serde_json::json!({"sub": "u", "exp": exp, "aud": aud}));
        assert!(a.client(Some(&aud("pushcenter-client".into()))).is_ok());
        assert!(
            a.client(Some(&aud(serde_json::json!(["x", "pushcenter-client"]))))
                .is_ok()
        );
        let e = a
            .client(Some(&aud("pushcenter-backend".into())))
            .expect_err("wrong aud");
        assert!(e.contains("audience"), "{e}");
        let later = token(serde_json::json!({"sub": "u", "exp": exp, "nbf": now() + 300}));
        assert!(a.client(Some(&later)).is_err(), "nbf in the future");
        let strict = Auth::load(&AuthConfig {
            hs256_secret: Some("s".repeat(32)),
            require_audience: true,
            ..AuthConfig::default()
        })
        .expect("load")
        .expect("auth on");
        let plain = token(serde_json::json!({"sub": "u", "exp": exp}));
        assert!(strict.client(Some(&plain)).is_err());
        assert!(
            strict
                .client(Some(&aud("pushcenter-client".into())))
                .is_ok()
        );
    }

    #[test]
    fn keys_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }
}
