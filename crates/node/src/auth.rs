//! Who a client or a backend is, and what it may do. Clients present a JWT (HS256 or
//! RS256) whose `sub` is the user and whose `subscribe`/`send` claims may narrow what it
//! may reach; backends present an API key or a JWT with the backend role.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// The `[auth]` section of a node's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 shared secret, inline or in a file (its bytes, a trailing newline removed).
    pub hs256_secret: Option<String>,
    pub hs256_secret_file: Option<PathBuf>,
    /// RS256 public key (PEM file).
    pub rs256_public_key_file: Option<PathBuf>,
    /// Accept clients without a token (they get the `anonymous_*` patterns).
    pub anonymous: bool,
    /// What an authenticated client may subscribe and send to when its token has no
    /// `subscribe`/`send` claim. `/user/queue/...` is always allowed: it only ever
    /// delivers the client's own pushes.
    pub subscribe: Vec<String>,
    pub send: Vec<String>,
    pub anonymous_subscribe: Vec<String>,
    pub anonymous_send: Vec<String>,
    /// Clock skew allowed on `exp`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// HTTP API credentials: static keys (`Authorization: Bearer <key>`), inline or one
    /// per line in a file, or a token whose `role` claim is `backend_role`.
    pub api_keys: Vec<String>,
    pub api_keys_file: Option<PathBuf>,
    pub backend_role: String,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            hs256_secret: None,
            hs256_secret_file: None,
            rs256_public_key_file: None,
            anonymous: false,
            subscribe: vec!["/topic/#".into()],
            send: Vec::new(),
            anonymous_subscribe: vec!["/topic/#".into()],
            anonymous_send: Vec::new(),
            leeway: Duration::from_secs(10),
            api_keys: Vec::new(),
            api_keys_file: None,
            backend_role: "backend".into(),
        }
    }
}

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
}

/// A connection's identity and rights.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) user: Option<String>,
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
}

impl std::fmt::Debug for Auth {
    // Never the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("hs256", &self.hs.is_some())
            .field("rs256", &self.rs.is_some())
            .field("api_keys", &self.api_keys.len())
            .finish()
    }
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError(format!("{what} {}: {e}", path.display())))
}

impl Auth {
    /// The loaded keys; `None` when nothing is configured (authentication off).
    pub(crate) fn load(cfg: &AuthConfig) -> Result<Option<Auth>, ConfigError> {
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
        if hs.is_none() && rs.is_none() && api_keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(Auth {
            cfg: cfg.clone(),
            hs,
            rs,
            api_keys,
        }))
    }

    pub(crate) fn clients_need_tokens(&self) -> bool {
        self.hs.is_some() || self.rs.is_some()
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
                    subscribe: Some(self.cfg.anonymous_subscribe.clone()),
                    send: Some(self.cfg.anonymous_send.clone()),
                    expires_at: None,
                });
            }
            return Err("unauthorized: a token is required".into());
        };
        let c = self.verify(token)?;
        let user = c
            .sub
            .filter(|s| !s.is_empty() && !s.contains(['\r', '\n', '\0']))
            .ok_or("unauthorized: the token has no usable sub")?;
        Ok(Identity {
            user: Some(user),
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
        self.verify(b)
            .is_ok_and(|c| c.role.as_deref() == Some(self.cfg.backend_role.as_str()))
    }

    /// True when `bearer` may complete request `id`: a backend credential, or a token
    /// with `role: callback` and `sub` = the correlation id (what a backend hands a
    /// third party in the callback URL).
    pub(crate) fn callback(&self, bearer: Option<&str>, id: &str) -> bool {
        self.backend(bearer)
            || bearer.is_some_and(|b| {
                self.verify(b).is_ok_and(|c| {
                    c.role.as_deref() == Some("callback") && c.sub.as_deref() == Some(id)
                })
            })
    }
}

fn reason(kind: &ErrorKind) -> String {
    match kind {
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
            subscribe: Some(vec![]),
            send: Some(vec![]),
            expires_at: None,
        };
        assert!(id.may_subscribe("/user/queue/x"));
        assert!(!id.may_subscribe("/topic/x"));
        assert!(!id.may_send("/topic/x"));
        assert!(Identity::open(None).may_send("/topic/x"));
    }

    #[test]
    fn keys_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }
}
