//! What carries STOMP bytes: WebSocket and plain TCP or TLS streams, and the listeners
//! that accept them.

pub(crate) mod link;
pub(crate) mod listener;
pub(crate) mod tcp;
pub(crate) mod tls;
pub(crate) mod websocket;
