//! Sans-IO WebSocket (RFC 6455) framing: the node's server side and the bench's client
//! side share it. No socket, no runtime: bytes in, bytes out.
//!
//! - [`frame`]: opcodes, close codes, frame headers, masking.
//! - [`Reader`]: the receiving half of either role. Data payloads go straight onto the
//!   caller's stream buffer (STOMP does not follow message boundaries), replies to
//!   pings are framed onto the caller's output, every rule of the RFC is checked, and
//!   the message size limit is checked before a payload is buffered.
//! - [`handshake`]: the opening handshake's `Sec-WebSocket-Accept`.
//!
//! Compression (RFC 7692) is not negotiated: STOMP frames here are small and an idle
//! connection's inflate state would cost more memory than the whole connection does.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod frame;
pub mod handshake;
mod reader;

pub use frame::{Head, head, put_frame, put_header, unmask, valid_close_code};
pub use reader::{Got, Reader, Role, WsError};

#[cfg(feature = "fuzzing")]
pub use reader::fuzz_reader;
