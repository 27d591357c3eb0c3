//! Node configuration: one serde struct, defaults in code, `validate()` before start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pushcenter_stomp::Limits;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What happens when a connection's outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SlowConsumerPolicy {
    /// Send ERROR `message:slow consumer` and close the connection.
    #[default]
    Disconnect,
    /// Drop the oldest queued message to make room, and count it.
    DropOldest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Identifies the node in message ids and the registry.
    pub node_id: String,
    /// HTTP + WebSocket listener; port 0 picks a free port.
    pub http_addr: SocketAddr,
    /// Optional plain STOMP-over-TCP listener.
    pub tcp_addr: Option<SocketAddr>,
    /// The URL clients use to reach this node's WebSocket endpoint (registry).
    pub advertise_url: Option<String>,
    /// The STOMP codec's limits.
    pub limits: LimitsConfig,
    /// Subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Distinct wildcard patterns (`*`, `#`) on one node, and wildcard subscriptions of
    /// one connection: every record is matched against each distinct pattern.
    pub max_patterns: usize,
    /// Wildcard subscriptions one connection may hold.
    pub max_patterns_per_connection: usize,
    /// Unacknowledged messages per `client`/`client-individual` subscription.
    pub ack_window: usize,
    /// Outbound queue per connection: messages ...
    pub outbound_max_messages: usize,
    /// ... and bytes (at least `limits.max_frame_bytes`).
    pub outbound_max_bytes: usize,
    /// A full outbound queue: `disconnect` (ERROR, then close) or `drop-oldest`.
    pub slow_consumer: SlowConsumerPolicy,
    /// Heart-beat interval the server offers to send; 0 disables.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub heartbeat_send: Duration,
    /// Heart-beat interval the server wants from clients (a client silent twice as
    /// long is closed); 0 disables.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub heartbeat_receive: Duration,
    /// A connection without heart-beats from the client (it asked for none) that sends
    /// nothing for this long is closed; 0 turns it off.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle_timeout: Duration,
    /// TCP keepalive on every accepted socket: probes start after this much silence
    /// (then every 10 s, 5 of them), so a vanished peer's socket goes; 0 turns it off.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub tcp_keepalive: Duration,
    /// Time a new connection has to complete the WebSocket handshake and send CONNECT.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// How long a publish (HTTP or client SEND) waits for the bus before failing.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub publish_timeout: Duration,
    /// A socket write the peer does not take within this closes the connection.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub write_timeout: Duration,
    /// At most one socket write per connection per this interval: messages that
    /// arrive sooner wait and go out together, one syscall for several (0: write at
    /// once). A connection that was quiet for this long writes at once.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub write_delay: Duration,
    /// How often the node reports its load to the registry.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub report_interval: Duration,
    /// How long shutdown waits for connections to close.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub shutdown_grace: Duration,
    /// Clients may SEND to `/topic/...`.
    pub client_send: bool,
    /// Serve the demo page at `/`.
    pub demo_page: bool,
    /// INSECURE: take a connection's user from CONNECT's `login` header, unchecked.
    /// Anyone can then claim any user; for trusted networks and tests until token
    /// authentication is configured.
    pub insecure_login_as_user: bool,
    /// `POST /v1/requests`: the wait when the request names none.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout_default: Duration,
    /// `POST /v1/requests`: the longest wait a request may ask for.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout_max: Duration,
    /// Requests one node may have waiting at once; more get 503.
    pub max_waiters: usize,
    /// How long a callback (`POST /v1/requests/{id}/reply`) waits for the waiting node
    /// to say it took it; then 404.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub callback_timeout: Duration,
    /// Resumes (`resume-from` on SUBSCRIBE) one connection may ask for per minute (a
    /// burst of as many); 0 is off.
    pub max_resumes_per_minute: u32,
    /// Reads of the bus's log for resumes running at once on one node; more wait.
    pub max_log_reads: usize,
    /// The replay window (resume after reconnect): records kept at most this long ...
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub replay_window: Duration,
    /// ... and at most this many bytes (bodies, headers, and a little per record).
    pub replay_window_bytes: usize,
    /// How often connections that ask (`position-updates:on` on CONNECT) hear every
    /// subscription's position; `0s`: never.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub position_updates: Duration,
    /// STOMP connections (WebSocket and TCP) one node accepts; more are refused.
    pub max_connections: usize,
    /// HTTP connections (API calls, handshakes before the upgrade) one node holds at
    /// once; more are closed at once.
    pub max_http_connections: usize,
    /// STOMP connections from one IP address; 0 turns the limit off (behind a proxy
    /// that hides client addresses every client has the proxy's).
    pub max_connections_per_ip: usize,
    /// STOMP sessions one user may hold on one node; more CONNECTs get an ERROR. 0
    /// turns the limit off.
    pub max_connections_per_user: usize,
    /// How long an admin call (`/v1/disconnect`, `/v1/presence`, ...) waits for every
    /// node's report; then it answers with the nodes that did not report.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub admin_timeout: Duration,
    /// Frames a client may send per second (a burst of as many is allowed); 0 is off.
    pub max_frames_per_second: u32,
    /// WebSocket handshakes carrying an `Origin` must name one of these; empty allows
    /// any. Requests without `Origin` (not from a browser) are not affected.
    pub allowed_origins: Vec<String>,
    pub auth: AuthConfig,
    /// TLS on both listeners (https/wss and stomp+ssl) when set.
    pub tls: Option<TlsConfig>,
}

/// Certificate chain and private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: std::path::PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: std::path::PathBuf,
    /// How often the files are checked: a changed pair is loaded and served to new
    /// connections without a restart (one that fails to load keeps the old pair).
    #[serde(default = "TlsConfig::default_reload", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub reload_interval: Duration,
}

impl TlsConfig {
    fn default_reload() -> Duration {
        Duration::from_secs(10)
    }
}

/// Messages one `POST /v1/publish` call may carry.
pub(crate) const MAX_PUBLISH_BATCH: usize = 100;

/// The codec limits and the HTTP API's rate, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// The largest STOMP frame a client may send (and a WebSocket message).
    pub max_frame_bytes: usize,
    /// Headers in one frame.
    pub max_headers: usize,
    /// Bytes in one header line.
    pub max_header_line: usize,
    /// Bytes in one frame's body (less than `max_frame_bytes`).
    pub max_body_bytes: usize,
    /// HTTP API calls one credential may make per second on this node (each message
    /// of a batch publish counts); more get 429. Only with `[auth]`; 0 turns it off.
    pub api_requests_per_second: u32,
    /// Calls a credential may make at once above that rate (at least 100, the largest
    /// batch).
    pub api_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        let l = Limits::default();
        LimitsConfig {
            max_frame_bytes: l.max_frame_bytes,
            max_headers: l.max_headers,
            max_header_line: l.max_header_line,
            max_body_bytes: l.max_body_bytes,
            api_requests_per_second: 1000,
            api_burst: 2000,
        }
    }
}

impl From<LimitsConfig> for Limits {
    fn from(c: LimitsConfig) -> Limits {
        Limits {
            max_frame_bytes: c.max_frame_bytes,
            max_headers: c.max_headers,
            max_header_line: c.max_header_line,
            max_body_bytes: c.max_body_bytes,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            node_id: "node-1".into(),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tcp_addr: None,
            advertise_url: None,
            limits: LimitsConfig::default(),
            max_subscriptions: 256,
            max_patterns: 1000,
            max_patterns_per_connection: 16,
            ack_window: 1000,
            outbound_max_messages: 1024,
            outbound_max_bytes: 4 * 1024 * 1024,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            heartbeat_send: Duration::from_secs(10),
            heartbeat_receive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            tcp_keepalive: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            write_delay: Duration::ZERO,
            report_interval: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(10),
            client_send: true,
            demo_page: true,
            insecure_login_as_user: false,
            request_timeout_default: Duration::from_secs(10),
            request_timeout_max: Duration::from_secs(60),
            max_waiters: 100_000,
            callback_timeout: Duration::from_secs(5),
            max_resumes_per_minute: 600,
            max_log_reads: 4,
            replay_window: Duration::from_secs(300),
            replay_window_bytes: 64 * 1024 * 1024,
            position_updates: Duration::from_secs(10),
            max_connections: 1_000_000,
            max_connections_per_ip: 10_000,
            max_http_connections: 50_000,
            max_connections_per_user: 100,
            admin_timeout: Duration::from_secs(2),
            max_frames_per_second: 100,
            allowed_origins: Vec::new(),
            auth: AuthConfig::default(),
            tls: None,
        }
    }
}

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl NodeConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError(m.to_string()));
        let id_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if self.node_id.is_empty() || !self.node_id.chars().all(id_ok) {
            return bad("node_id must be non-empty and use only A-Z a-z 0-9 - _ .");
        }
        let l = &self.limits;
        if l.max_frame_bytes < 256 || l.max_headers == 0 || l.max_header_line < 64 {
            return bad(
                "limits too small: max_frame_bytes >= 256, max_headers >= 1, max_header_line >= 64",
            );
        }
        if l.max_body_bytes >= l.max_frame_bytes {
            return bad("limits.max_body_bytes must be smaller than limits.max_frame_bytes");
        }
        // A batch takes all its calls at once: a smaller burst could never serve it.
        if l.api_requests_per_second > 0 && (l.api_burst as usize) < MAX_PUBLISH_BATCH {
            return bad(
                "limits.api_burst must be at least 100 (the largest publish batch) when limits.api_requests_per_second is on",
            );
        }
        if self.max_subscriptions == 0 || self.ack_window == 0 {
            return bad("max_subscriptions and ack_window must be at least 1");
        }
        if self.outbound_max_messages == 0 || self.outbound_max_bytes < l.max_frame_bytes {
            return bad(
                "outbound_max_messages >= 1 and outbound_max_bytes >= limits.max_frame_bytes",
            );
        }
        if self.connect_timeout.is_zero()
            || self.write_timeout.is_zero()
            || self.publish_timeout.is_zero()
            || self.report_interval.is_zero()
            || self.admin_timeout.is_zero()
        {
            return bad(
                "connect_timeout, write_timeout, publish_timeout, report_interval and admin_timeout must be positive",
            );
        }
        // The connection reads nothing while it waits: keep it short of heart-beats.
        if self.write_delay > Duration::from_secs(1) {
            return bad("write_delay must be at most 1s");
        }
        let tokens = self.auth.hs256_secret.is_some()
            || self.auth.hs256_secret_file.is_some()
            || self.auth.rs256_public_key_file.is_some()
            || !self.auth.providers.is_empty();
        if self.insecure_login_as_user && tokens {
            return bad("insecure_login_as_user cannot be combined with token authentication");
        }
        if self
            .tls
            .as_ref()
            .is_some_and(|t| t.reload_interval < Duration::from_secs(1))
        {
            return bad("tls.reload_interval must be at least 1s");
        }
        if self.max_log_reads == 0 {
            return bad("max_log_reads must be at least 1");
        }
        if self.callback_timeout.is_zero() {
            return bad("callback_timeout must be positive");
        }
        let role = self.auth.backend_role.as_str();
        if role.is_empty() || role == "client" || role == "callback" {
            return bad("auth.backend_role must be non-empty and neither client nor callback");
        }
        if self.max_connections == 0 || self.max_http_connections == 0 {
            return bad("max_connections and max_http_connections must be at least 1");
        }
        if self.request_timeout_default.is_zero()
            || self.request_timeout_default > self.request_timeout_max
            || self.max_waiters == 0
        {
            return bad(
                "request_timeout_default must be positive and at most request_timeout_max; max_waiters >= 1",
            );
        }
        Ok(())
    }
}

/// The `[auth]` section of a node's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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
    #[schemars(with = "String")]
    pub leeway: Duration,
    /// HTTP API credentials: static keys (`Authorization: Bearer <key>`), inline or one
    /// per line in a file, or a token whose `role` claim is `backend_role`.
    pub api_keys: Vec<String>,
    pub api_keys_file: Option<PathBuf>,
    pub backend_role: String,
    /// The `aud` each kind of token must name when it carries one (and always, with
    /// `require_audience`): a token issued for one use is refused for the others.
    pub client_audience: String,
    pub backend_audience: String,
    pub callback_audience: String,
    pub require_audience: bool,
    /// Identity providers (OpenID Connect / JWKS) whose tokens are accepted besides the
    /// static keys above; a token is theirs when its `iss` names one (security.md).
    pub providers: Vec<ProviderConfig>,
}

/// One `[[auth.providers]]` entry: an issuer whose signing keys come from a JWKS URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The issuer: a token's `iss` must be exactly this; also the base of OpenID
    /// Connect discovery (`{issuer}/.well-known/openid-configuration`).
    pub issuer: String,
    /// Required, one string or a list: a token's `aud` must name one of them, so a
    /// token the same provider issued for another application is refused here.
    #[serde(deserialize_with = "one_or_many")]
    pub audience: Vec<String>,
    /// The JWKS document; when absent, the `jwks_uri` of the issuer's discovery
    /// document. `https://` only, `http://` on a loopback host.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// How often the key set is fetched again.
    #[serde(default = "ProviderConfig::default_refresh", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub refresh_interval: Duration,
    /// The soonest a token with an unknown `kid` may make the node fetch again (after
    /// any fetch): random `kid`s cannot make the node flood the provider.
    #[serde(
        default = "ProviderConfig::default_min_refresh",
        with = "humantime_serde"
    )]
    #[schemars(with = "String")]
    pub min_refresh_interval: Duration,
    /// PEM CA bundle to trust instead of the system's roots (a private provider).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Signature algorithms accepted from this provider: RS256/384/512, PS256/384/512,
    /// ES256, ES384, EdDSA. Never `none` or HS*: a JWKS is public.
    #[serde(default = "ProviderConfig::default_algorithms")]
    pub algorithms: Vec<String>,
    /// Put before the token's `sub` to make the connection's user (`"google:"` and
    /// `sub: alice` is user `google:alice`), so users of different token sources never
    /// meet. Required, distinct, and none the start of another, when more than one
    /// source is configured (several providers, or a provider and static keys).
    #[serde(default)]
    pub user_prefix: String,
}

impl ProviderConfig {
    fn default_refresh() -> Duration {
        Duration::from_secs(600)
    }

    fn default_min_refresh() -> Duration {
        Duration::from_secs(30)
    }

    fn default_algorithms() -> Vec<String> {
        vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
    }
}

/// `"a"` or `["a", "b"]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(a) => vec![a],
        OneOrMany::Many(list) => list,
    })
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
            client_audience: "pushcenter-client".into(),
            backend_audience: "pushcenter-backend".into(),
            callback_audience: "pushcenter-callback".into(),
            require_audience: false,
            providers: Vec::new(),
        }
    }
}
