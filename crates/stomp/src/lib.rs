//! Sans-IO STOMP 1.0 / 1.1 / 1.2 codec.
//!
//! [`decode`] takes bytes off the front of a buffer and yields [`Item`]s (frames and
//! heart-beats); [`encode`] writes a [`Frame`] for a negotiated [`Version`]. No I/O, no
//! runtime: the node, the load generator and the tests all share this code.
//!
//! ```
//! use bytes::BytesMut;
//! use pushcenter_stomp::{decode, encode, Command, Frame, Item, Limits, Version};
//!
//! let frame = Frame::new(Command::Send).header("destination", "/topic/a").body("hi");
//! let mut buf = BytesMut::new();
//! encode(&frame, Version::V1_2, &mut buf).unwrap();
//! let Some(Item::Frame(back)) = decode(&mut buf, &Limits::default()).unwrap() else {
//!     panic!("expected a frame");
//! };
//! assert_eq!(back.get("destination"), Some("/topic/a"));
//! assert_eq!(&back.body[..], b"hi");
//! ```
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod decode;
mod encode;
mod frame;

pub use decode::{DecodeError, Limit, Limits, decode, decode_version};
pub use encode::{EncodeError, encode};
pub use frame::{Command, Frame, HeartBeat, Item, Version};
