//! Test and bench hooks, only with the `test-support` feature (production builds never
//! enable it): the fan-out path as the node runs it, minus the sockets, for
//! `benches/fanout.rs`, and the `session` fuzz target's oracle. Not a stable API.

use std::sync::Arc;

use bytes::BytesMut;

use pushcenter_stomp::{Command, Frame, HeartBeat, Version};

use crate::bus::Delivery;
use crate::config::NodeConfig;
use crate::delivery::outbox::{Out, Outbox};
use crate::delivery::render::{Rendered, render};
use crate::routing::router::Router;
use crate::session::{Action, Session, SessionConfig};
use crate::stats::Stats;
use crate::transport::link::Sink;
use crate::transport::websocket::header;

/// Frames for the fan-out benchmark: no socket, the bytes are counted.
#[derive(Default)]
struct NullLink {
    out: BytesMut,
}

impl Sink for NullLink {
    fn frame(&mut self, len: usize, text: bool) -> &mut BytesMut {
        header(&mut self.out, text, len)
    }
}

/// One router and `n` connections, each with one subscription, as
/// `connection.rs` sets them up: a STOMP 1.2 session, a bounded outbox.
pub struct Fanout {
    router: Router,
    conns: Vec<Conn>,
    stats: Arc<Stats>,
    client_ack: bool,
}

struct Conn {
    session: Session,
    outbox: Arc<Outbox>,
    queued: Vec<Out>,
    sink: NullLink,
    /// MESSAGE frames rendered so far.
    rendered: u64,
    /// Of those, acknowledged (client ack modes only).
    acked: u64,
}

impl Fanout {
    /// `subscribers` connections subscribed to `destination` (a topic or a wildcard
    /// pattern) with ack mode `ack` (`auto`, `client`, `client-individual`), with the
    /// default node configuration. Fails when a session refuses the subscription.
    pub fn new(subscribers: usize, destination: &str, ack: &str) -> Result<Fanout, String> {
        let cfg = NodeConfig::default();
        let stats = Arc::new(Stats::default());
        let router = Router::new(stats.clone());
        let mut conns = Vec::with_capacity(subscribers);
        let mut actions = Vec::new();
        for conn_id in 1..=subscribers as u64 {
            let mut session = Session::new(SessionConfig {
                max_subscriptions: cfg.max_subscriptions,
                max_patterns: cfg.max_patterns_per_connection,
                ack_window: cfg.ack_window,
                client_send: cfg.client_send,
                heart_beat: HeartBeat::default(),
                session_id: format!("bench-{conn_id}"),
                insecure_login_as_user: false,
                auth: None,
                url_token: None,
            });
            let outbox = Arc::new(Outbox::new(
                cfg.outbound_max_messages,
                cfg.outbound_max_bytes,
                cfg.slow_consumer,
                stats.clone(),
            ));
            let connect = Frame::new(Command::Connect).header("accept-version", "1.2");
            session.on_frame(connect, &mut actions);
            let subscribe = Frame::new(Command::Subscribe)
                .header("id", "sub-0")
                .header("destination", destination)
                .header("ack", ack);
            session.on_frame(subscribe, &mut actions);
            for action in actions.drain(..) {
                match action {
                    Action::Subscribe {
                        slot, destination, ..
                    } => {
                        let _ = router.subscribe(&destination, conn_id, slot, outbox.clone());
                    }
                    Action::Reply(f) if f.command == Command::Error => {
                        return Err(format!("subscription refused: {:?}", f.get("message")));
                    }
                    _ => {}
                }
            }
            conns.push(Conn {
                session,
                outbox,
                queued: Vec::new(),
                sink: NullLink::default(),
                rendered: 0,
                acked: 0,
            });
        }
        Ok(Fanout {
            router,
            conns,
            stats,
            client_ack: ack != "auto",
        })
    }

    /// What the bus consumer does with each record: route it, encode its shared
    /// part once and push it into every matching outbox.
    pub fn deliver(&self, d: &Delivery) {
        self.router.deliver(d);
    }

    /// What every connection task does when woken: drain its outbox and render each
    /// MESSAGE frame. Returns the number of bytes rendered.
    pub fn write_all(&mut self) -> usize {
        let mut bytes = 0;
        for c in &mut self.conns {
            c.outbox.drain(&mut c.queued);
            for out in c.queued.drain(..) {
                if let Rendered::Frame = render(out, &mut c.session, Version::V1_2, &mut c.sink) {
                    bytes += c.sink.out.len();
                    c.sink.out.clear();
                    c.rendered += 1;
                }
            }
        }
        bytes
    }

    /// Empties every outbox without rendering.
    pub fn clear(&self) {
        for c in &self.conns {
            c.outbox.clear();
        }
    }

    /// Acknowledges everything rendered so far in client ack modes, as a client
    /// would, so that no ack window fills up.
    pub fn ack_all(&mut self) {
        if !self.client_ack {
            return;
        }
        let mut actions = Vec::new();
        for c in &mut self.conns {
            // One subscription per session: its ack ids are 0, 1, 2, …
            while c.acked < c.rendered {
                let ack = Frame::new(Command::Ack).header("id", c.acked.to_string());
                c.session.on_frame(ack, &mut actions);
                c.acked += 1;
            }
            actions.clear();
        }
    }

    /// MESSAGE frames queued to subscribers so far.
    pub fn delivered(&self) -> u64 {
        self.stats
            .messages_delivered_total
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Feeds the STOMP stream in `data` to one session the way a connection does, with a
/// delivery to every subscription after each frame, and checks the session's promises:
/// every ERROR has a `message`, nothing follows a close, a MESSAGE head only ever names
/// a live subscription. For the `session` fuzz target: frames in any order.
// A broken promise is a panic: that is how the fuzzer hears of it.
#[allow(clippy::panic)]
pub fn fuzz_session(data: &[u8]) {
    use pushcenter_stomp::{Item, Limits, decode_version};

    use crate::session::Head;

    let Some((&knobs, stream)) = data.split_first() else {
        return;
    };
    let mut session = Session::new(SessionConfig {
        max_subscriptions: 4,
        max_patterns: 4,
        ack_window: usize::from(knobs % 4) + 1,
        client_send: knobs & 0x10 != 0,
        heart_beat: HeartBeat {
            send_ms: 1000,
            recv_ms: 1000,
        },
        session_id: "fuzz-1".into(),
        insecure_login_as_user: knobs & 0x20 != 0,
        auth: None,
        url_token: None,
    });
    let limits = Limits {
        max_frame_bytes: 4096,
        max_headers: 16,
        max_header_line: 512,
        max_body_bytes: 1024,
    };
    let mut buf = BytesMut::from(stream);
    let mut version = Version::V1_2;
    let mut slots: Vec<u32> = Vec::new();
    let mut actions = Vec::new();
    let mut closed = false;
    // A decode error leaves the bad bytes in the buffer; the connection closes on it.
    let mut undecodable = false;
    while !undecodable {
        match decode_version(&mut buf, version, &limits) {
            Ok(Some(Item::Frame(f))) => session.on_frame(f, &mut actions),
            Ok(Some(Item::HeartBeat)) => continue,
            Ok(None) => break,
            Err(e) => {
                session.fail(&e.to_string(), None, &mut actions);
                undecodable = true;
            }
        }
        if closed {
            assert!(actions.is_empty(), "actions after close: {actions:?}");
        }
        for a in actions.drain(..) {
            assert!(!closed, "an action after Close");
            match a {
                Action::Reply(f) if f.command == Command::Error => {
                    assert!(f.get("message").is_some(), "ERROR without message");
                }
                Action::Connected { version: v, .. } => version = v,
                Action::Subscribe { slot, .. } => slots.push(slot),
                Action::Unsubscribe { slot, .. } => slots.retain(|s| *s != slot),
                Action::Close => closed = true,
                _ => {}
            }
        }
        if closed {
            continue;
        }
        for &slot in &slots {
            if let Head::Gone = session.message_head(slot, || "0-1".into()) {
                panic!("subscription {slot} is live but its head is gone");
            }
        }
    }
}
