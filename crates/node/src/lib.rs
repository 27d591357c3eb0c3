//! The pushcenter broker node: STOMP over WebSocket and TCP, the topic map, the HTTP
//! API. It knows the cluster only through two ports, [`Bus`] and [`Registrar`], each with
//! an in-memory implementation for standalone mode.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![allow(async_fn_in_trait)]

mod admin;
mod auth;
mod bus;
mod config;
mod connection;
mod delivery;
mod error;
mod http;
pub mod metrics;
mod node;
pub mod placement;
mod registrar;
mod requests;
mod routing;
mod server;
mod session;
mod stats;
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub mod testing;
mod transport;

pub use bus::{
    Answerer, BoxFuture, Bus, BusError, DeliverFn, Delivery, MemoryBus, NODE_HEADERS,
    REPLY_HEADERS, REPLY_PREFIX, REQUEST_HEADERS, Record, Reply, ReplyFn, ReplyKind, RequestInfo,
    StartedFn, check_correlation_id, check_header_name, check_publish_destination, header_value,
    sanitize, unix_ms,
};
pub use config::{
    AuthConfig, ConfigError, LimitsConfig, NodeConfig, ProviderConfig, SlowConsumerPolicy,
    TlsConfig,
};
pub use delivery::outbox::{hold_wakes, release_wakes};
pub use error::{Error, Result};
pub use http::{discovery, web};
pub use registrar::{MemoryRegistrar, NodeInfo, Registrar};
pub use server::{Server, check_config};
pub use stats::Stats;
pub use transport::tls::{TlsCerts, serve_https};
