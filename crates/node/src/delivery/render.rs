//! The frame one subscriber gets for a queued item: `MESSAGE`, its own `subscription`
//! (and `ack`) line, then the shared part, copied straight into the connection's output.

use bytes::BufMut;
use pushcenter_stomp::Version;

use crate::delivery::outbox::Out;
use crate::session::{Head, Session};
use crate::transport::link::Sink;

/// What one queued item becomes for this connection.
pub(crate) enum Rendered {
    /// A whole MESSAGE frame, framed onto the sink.
    Frame,
    /// The subscription is gone: nothing to send.
    Gone,
    /// The connection's STOMP version cannot carry the message's headers.
    Unsendable,
    /// The subscription's ack window is full.
    WindowFull,
    /// A request whose caller's deadline has passed: nobody gets it.
    Expired,
}

/// Turns a queued item into the frame this subscriber gets: `MESSAGE`, its own
/// `subscription` (and `ack`) line, then the shared part encoded once for everyone,
/// copied straight into the connection's output.
pub(crate) fn render(
    out: Out,
    session: &mut Session,
    version: Version,
    sink: &mut impl Sink,
) -> Rendered {
    let (sub, msg) = match out {
        Out::Message { sub, msg } => {
            if session.replayed_before(sub, msg.id()) {
                return Rendered::Gone;
            }
            (sub, msg)
        }
        Out::Replay { sub, msg } => (sub, msg),
        // Written by the connection itself (one RECEIPT per subscription).
        Out::Position { .. } | Out::Close { .. } | Out::Unsubscribed { .. } => {
            return Rendered::Gone;
        }
    };
    let Some((shared, shared_text)) = msg.for_version(version) else {
        return Rendered::Unsendable;
    };
    // Only requests pay for the clock.
    let now_ms = msg.request().map(|_| crate::bus::unix_ms());
    if let (Some(r), Some(now)) = (msg.request(), now_ms) {
        if r.deadline_ms.is_some_and(|d| d <= now) {
            return Rendered::Expired;
        }
    }
    let rendered = match session.message_head(sub, || msg.id().to_string()) {
        Head::Gone => Rendered::Gone,
        Head::WindowFull => Rendered::WindowFull,
        Head::Lines { subscription, ack } => {
            // The ack line, formatted on the stack: no allocation per message.
            let mut ack_line = [0u8; 32];
            let ack_len = match ack {
                Some(seq) => {
                    let mut w = &mut ack_line[..];
                    let _ = std::io::Write::write_fmt(&mut w, format_args!("ack:{seq}\n"));
                    32 - w.len()
                }
                None => 0,
            };
            let len = PREFIX.len() + subscription.len() + ack_len + shared.len();
            // Header lines are UTF-8 (they are made of `str`s).
            let b = sink.frame(len, shared_text);
            b.put_slice(PREFIX);
            b.put_slice(subscription);
            b.put_slice(&ack_line[..ack_len]);
            b.put_slice(shared);
            Rendered::Frame
        }
    };
    if let (Rendered::Frame, Some(r), Some(now)) = (&rendered, msg.request(), now_ms) {
        session.note_request(r, now);
    }
    rendered
}

const PREFIX: &[u8] = b"MESSAGE\n";
