//! One client connection: the only place that does socket I/O. Reads feed the codec and
//! the session; the session's actions are carried out in order; the outbox is written
//! in batches; heart-beats and deadlines are kept here.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use pushcenter_stomp::{
    DecodeError, Frame, HeartBeat, Item, Limits, Version, decode_version, encode,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span, trace};

use crate::delivery::message::Shared;
use crate::delivery::outbox::{Out, Outbox};
use crate::delivery::render::{Rendered, render};
use crate::node::{Admission, Node};
use crate::routing::resume::{self, FromLog, Room};
use crate::routing::rule::Subscriber;
use crate::routing::window::{Budget, Window, format_positions};
use crate::session::{Action, Session, SessionConfig, error_frame};
use crate::stats::Stats;
use crate::transport::link::Link;

/// Entries of the replay window one resume may look at, and how many per hold of the
/// window's lock.
const RESUME_SCAN: usize = 32_768;
const RESUME_STEP: usize = 128;
/// Records one resume reads from the bus's log per stream, at most: the newest ones.
const MAX_LOG_RECORDS: i64 = 10_000;
/// How long a resume waits for a stream's history to reach the window before it
/// reads the gap from the log instead (a busy broker may take longer than the
/// CONNECT's wait, and a log read there may time out).
const HISTORY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a connection ended, for the log.
#[derive(Debug)]
enum End {
    Closed,
    Shutdown,
}

/// Serves one STOMP connection; `slot` (its place under the connection limits) is
/// held until it ends. The connection is built before the task starts and lives in
/// the task's future once, not as an argument plus a copy.
pub(crate) fn serve<L: Link>(
    link: L,
    node: Arc<Node>,
    peer: Option<SocketAddr>,
    slot: Admission,
    url_token: Option<String>,
) -> impl Future<Output = ()> {
    let conn_id = node.next_conn_id.fetch_add(1, Ordering::Relaxed) + 1;
    // `user` and `session` are filled in at CONNECT: every event of the connection
    // names them from then on.
    let span = info_span!(
        "conn",
        conn_id,
        peer = ?peer,
        user = tracing::field::Empty,
        session = tracing::field::Empty
    );
    Stats::add(&node.stats.connections, 1);
    Stats::inc(&node.stats.connections_accepted_total);
    let mut conn = Connection::new(link, node, conn_id, url_token);
    conn.span = span;
    async move {
        // The connection's cleanup runs when it is dropped: after `run`, and also when
        // the task unwinds from a panic (router entries and counts never leak).
        let end = conn.run().await;
        drop(slot);
        conn.span.in_scope(|| debug!(?end, "connection closed"));
    }
}

/// Refuses a STOMP-over-TCP connection over the limits: ERROR, then close.
pub(crate) async fn refuse(mut stream: TcpStream, why: &str) {
    let mut buf = BytesMut::new();
    if encode(&error_frame(why, None), Version::V1_2, &mut buf).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = stream.write_all(&buf).await;
            let _ = stream.shutdown().await;
        })
        .await;
    }
}

struct Connection<L> {
    link: L,
    /// Entered around what may log (client frames, the end), not around every
    /// delivery: entering a span on each poll costs more than writing a message.
    span: tracing::Span,
    /// MESSAGE frames written since the counter was last updated (once per batch:
    /// a shared atomic per delivery costs cache-line traffic between cores).
    frames_out: u64,
    /// When queued messages were last written (for `write_delay`).
    last_write: Instant,
    /// Unix ms when the writer last woke: the delivery latency of what it writes.
    woke_us: u64,
    node: Arc<Node>,
    conn_id: u64,
    session: Session,
    outbox: Arc<Outbox>,
    limits: Limits,
    version: Version,
    send_every: Option<Duration>,
    recv_within: Option<Duration>,
    /// Reachable by session id and user (after CONNECT).
    attached: bool,
    /// The bus follows this session's user (`Bus::follow`).
    following: bool,
    /// When the client's token runs out.
    expires: Option<Instant>,
    /// Frames the client may still send now (refilled at `max_frames_per_second`).
    frames: Bucket,
    /// Resumes the client may still ask for (refilled at `max_resumes_per_minute`).
    resumes: Bucket,
}

/// A token bucket; its rate and burst come from the config at each use (a
/// connection keeps only what changes).
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64) -> Bucket {
        Bucket {
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Takes a token, refilled at `per_second` up to `burst`; false when none is left.
    /// A rate of 0 is no limit.
    fn take(&mut self, per_second: f64, burst: f64) -> bool {
        if per_second == 0.0 {
            return true;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * per_second;
        self.tokens = (self.tokens + refill).min(burst);
        self.at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

impl<L: Link> Connection<L> {
    fn new(link: L, node: Arc<Node>, conn_id: u64, url_token: Option<String>) -> Connection<L> {
        let cfg = &node.config;
        let hb = HeartBeat {
            send_ms: duration_ms(cfg.heartbeat_send),
            recv_ms: duration_ms(cfg.heartbeat_receive),
        };
        let session = Session::new(SessionConfig {
            max_subscriptions: cfg.max_subscriptions,
            max_patterns: cfg.max_patterns_per_connection,
            ack_window: cfg.ack_window,
            client_send: cfg.client_send,
            heart_beat: hb,
            session_id: format!("{}-{}-{}", cfg.node_id, node.boot_id, conn_id),
            insecure_login_as_user: cfg.insecure_login_as_user,
            auth: node.auth.clone(),
            url_token,
        });
        let budget = f64::from(cfg.max_frames_per_second);
        let resumes = f64::from(cfg.max_resumes_per_minute);
        let outbox = Arc::new(Outbox::new(
            cfg.outbound_max_messages,
            cfg.outbound_max_bytes,
            cfg.slow_consumer,
            node.stats.clone(),
        ));
        Connection {
            link,
            span: tracing::Span::none(),
            frames_out: 0,
            last_write: Instant::now(),
            woke_us: 0,
            limits: cfg.limits.into(),
            node,
            conn_id,
            session,
            outbox,
            version: Version::V1_2,
            send_every: None,
            recv_within: None,
            attached: false,
            following: false,
            expires: None,
            frames: Bucket::full(budget),
            resumes: Bucket::full(resumes),
        }
    }

    /// A frame whose token's key may be new: waits (bounded) for the key set, then
    /// hands the frame to the session.
    async fn frame_after_keys(&mut self, frame: Frame, actions: &mut Vec<Action>) {
        if let Some(auth) = self.node.auth.clone()
            && let Some(wait) = auth.await_keys_for(&frame)
        {
            wait.await;
        }
        self.session.on_frame(frame, actions);
    }

    /// The WebSocket URL's token, when its key may be new (see `Auth::await_keys`).
    fn url_keys(&self) -> Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>> {
        let auth = self
            .node
            .auth
            .as_ref()
            .filter(|a| !a.providers().is_empty())?;
        let token = self.session.url_token()?;
        Some(Box::pin(auth.await_keys(token)))
    }

    async fn run(&mut self) -> End {
        if let Some(wait) = self.url_keys() {
            wait.await;
        }
        // Holds memory only while a frame is partly read.
        let mut inbuf = BytesMut::new();
        let mut actions = Vec::new();
        let mut queued = Vec::new();
        let mut shutdown = self.node.shutdown.clone();
        // Deadlines: CONNECT (then the peer's heart-beats), our heart-beats, the token.
        let mut read_deadline = Some(Instant::now() + self.node.config.connect_timeout);
        let mut write_deadline: Option<Instant> = None;
        // One timer for all three, armed for the earliest and re-armed only when it
        // fires or a deadline comes earlier: deadlines that move later on every read
        // or write cost no timer update.
        let mut timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let mut armed: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                return Box::pin(self.finish(
                    Some("server shutting down: reconnect to another node"),
                    true,
                ))
                .await;
            }
            let next = [read_deadline, write_deadline, self.expires]
                .into_iter()
                .flatten()
                .min();
            match (next, armed) {
                (Some(n), Some(a)) if n >= a => {}
                (Some(n), _) => {
                    timer.as_mut().reset(n);
                    armed = Some(n);
                }
                (None, _) => armed = None,
            }
            tokio::select! {
                got = self.link.recv(&mut inbuf) => {
                    match got {
                        Ok(true) => {}
                        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                            let limit = self.limits.max_frame_bytes;
                            let message = format!(
                                "frame too large: the limit is {limit} bytes per WebSocket message"
                            );
                            return Box::pin(self.finish(Some(&message), false)).await;
                        }
                        Ok(false) | Err(_) => return End::Closed,
                    }
                    if self.session.is_connected() {
                        read_deadline = self.read_window().map(|d| Instant::now() + d);
                    }
                    // Pings, pongs and heart-beat-only messages each cost a frame of
                    // the rate too (as does a read of nothing but heart-beats, where the
                    // link counts no messages: plain TCP); EOLs after a frame are free.
                    let mut free = self.link.take_controls();
                    let counted = free > 0;
                    let mut frames = 0u32;
                    let mut beats = false;
                    loop {
                        if free > 0 {
                            let n = std::mem::take(&mut free);
                            if self.session_closed_by_rate(n, &mut actions) {
                                let span = self.span.clone();
                                Box::pin(self.apply(&mut actions).instrument(span)).await;
                                let _ = self.flush().await;
                                return Box::pin(self.finish(None, false)).await;
                            }
                        }
                        match decode_version(&mut inbuf, self.version, &self.limits) {
                            Ok(None) if frames == 0 && beats && !counted => {
                                beats = false;
                                free = 1;
                                continue;
                            }
                            Ok(None) => break,
                            Ok(Some(Item::HeartBeat)) => {
                                beats = true;
                                continue;
                            }
                            Ok(Some(Item::Frame(frame))) => {
                                frames += 1;
                                Stats::inc(&self.node.stats.frames_in_total);
                                if !self.session_closed_by_rate(1, &mut actions) {
                                    self.span.in_scope(|| {
                                        trace!(command = %frame.command, "frame in");
                                    });
                                    let auth = self.node.auth.as_ref();
                                    if auth.is_some_and(|a| a.may_wait_for_keys(&frame)) {
                                        // Rare (a token of a key rotated in since the
                                        // last fetch): boxed with its frame, so the
                                        // task does not keep a frame's room.
                                        Box::pin(self.frame_after_keys(frame, &mut actions))
                                            .await;
                                    } else {
                                        self.session.on_frame(frame, &mut actions);
                                    }
                                }
                            }
                            Err(e) => {
                                self.protocol_error(&e, &mut actions);
                            }
                        }
                        // Boxed: the actions' futures (publish, resume) are large and
                        // rare; a connection's task stays small while it waits.
                        let span = self.span.clone();
                        if Box::pin(self.apply(&mut actions).instrument(span)).await {
                            let _ = self.flush().await;
                            return Box::pin(self.finish(None, false)).await;
                        }
                        if self.session.is_connected() {
                            read_deadline = self.read_window().map(|d| Instant::now() + d);
                            if let Some(d) = self.send_every {
                                write_deadline = Some(Instant::now() + d);
                            }
                        }
                    }
                    // Idle connections keep no buffers.
                    if inbuf.is_empty() {
                        inbuf = BytesMut::new();
                    }
                    actions = Vec::new();
                    if self.flush().await.is_err() {
                        return End::Closed;
                    }
                }
                _ = self.outbox.notified() => {
                    if self.outbox.is_slow() {
                        Stats::inc(&self.node.stats.slow_consumer_disconnects_total);
                        return Box::pin(self.finish(Some("slow consumer"), false)).await;
                    }
                    let delay = self.node.config.write_delay;
                    if !delay.is_zero() {
                        // Wait out the interval since the last write: what arrives
                        // meanwhile goes out in the same syscall.
                        let at = self.last_write + delay;
                        if at > Instant::now() {
                            tokio::time::sleep_until(at).await;
                        }
                    }
                    self.outbox.drain(&mut queued);
                    self.woke_us = crate::bus::unix_us();
                    if !queued.is_empty() {
                        self.node
                            .stats
                            .outbound_queue_depth
                            .observe(queued.len() as f64);
                    }
                    let mut written = Ok(true);
                    // An operator's close: what was queued before it goes out first.
                    let mut close = None;
                    for out in queued.drain(..) {
                        match out {
                            Out::Close { message, reconnect } => {
                                close.get_or_insert((message, reconnect));
                            }
                            out if close.is_none() && matches!(written, Ok(true)) => {
                                written = self.write_out(out).await;
                            }
                            _ => {}
                        }
                    }
                    if let Some((message, reconnect)) = close {
                        let mut error = error_frame(&message, None);
                        error.push_header("reconnect", if reconnect { "true" } else { "false" });
                        let _ = self.write_frame(&error).await;
                        let _ = self.flush().await;
                        self.link.close(false).await;
                        return End::Closed;
                    }
                    // Small batches reuse it; after a burst it goes.
                    if queued.capacity() > 8 {
                        queued = Vec::new();
                    }
                    let n = std::mem::take(&mut self.frames_out);
                    self.node.stats.frames_out_total.fetch_add(n, Ordering::Relaxed);
                    let written = match written {
                        Ok(true) => self.flush().await.map(|()| true),
                        other => other,
                    };
                    match written {
                        Ok(true) => {}
                        // The socket took nothing for `write_timeout`: an ERROR
                        // would not get through either.
                        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                            Stats::inc(&self.node.stats.slow_consumer_disconnects_total);
                            return Box::pin(self.finish(None, false)).await;
                        }
                        Err(_) => return End::Closed,
                        // The ack window is full: the client stopped acknowledging.
                        Ok(false) => {
                            Stats::inc(&self.node.stats.slow_consumer_disconnects_total);
                            return Box::pin(self.finish(Some("slow consumer"), false)).await;
                        }
                    }
                    let now = Instant::now();
                    self.last_write = now;
                    if let Some(d) = self.send_every {
                        write_deadline = Some(now + d);
                    }
                }
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    let now = Instant::now();
                    if self.expires.is_some_and(|t| t <= now) {
                        Stats::inc(&self.node.stats.auth_failures_total);
                        return Box::pin(self.finish(Some("unauthorized: token expired"), false))
                            .await;
                    }
                    if read_deadline.is_some_and(|t| t <= now) {
                        let why = if !self.session.is_connected() {
                            "timed out waiting for CONNECT"
                        } else if self.recv_within.is_some() {
                            Stats::inc(&self.node.stats.heartbeat_timeouts_total);
                            "heart-beat timeout: no data from client"
                        } else {
                            Stats::inc(&self.node.stats.idle_timeouts_total);
                            "idle timeout: nothing from client (no heart-beats); reconnect"
                        };
                        return Box::pin(self.finish(Some(why), false)).await;
                    }
                    if write_deadline.is_some_and(|t| t <= now) {
                        if self.feed(b"\n").await.is_err() || self.flush().await.is_err() {
                            return End::Closed;
                        }
                        write_deadline = self.send_every.map(|d| now + d);
                    }
                }
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Ends the connection: an ERROR with `error` if given, then the close.
    async fn finish(&mut self, error: Option<&str>, restart: bool) -> End {
        let span = self.span.clone();
        async {
            if let Some(message) = error {
                self.send_error(message).await;
            }
            self.link.close(restart).await;
            if restart { End::Shutdown } else { End::Closed }
        }
        .instrument(span)
        .await
    }

    /// How long the client may stay silent: twice its heart-beat, or the idle limit
    /// when it sends none.
    fn read_window(&self) -> Option<Duration> {
        let idle = self.node.config.idle_timeout;
        self.recv_within.or((!idle.is_zero()).then_some(idle))
    }

    /// Takes `n` frames' worth (a frame, or pings and heart-beat-only reads) from the
    /// budget; true, with the session failed into `actions`, when it is spent.
    fn session_closed_by_rate(&mut self, n: u32, actions: &mut Vec<Action>) -> bool {
        for _ in 0..n {
            if !self.frame_allowed() {
                let limit = self.node.config.max_frames_per_second;
                Stats::inc(&self.node.stats.protocol_errors_total);
                self.session.fail(
                    &format!("too many frames: the limit is {limit} per second"),
                    None,
                    actions,
                );
                return true;
            }
        }
        false
    }

    /// Takes one frame from the per-second budget; false when it is spent.
    fn frame_allowed(&mut self) -> bool {
        let rate = f64::from(self.node.config.max_frames_per_second);
        self.frames.take(rate, rate)
    }

    fn protocol_error(&mut self, e: &DecodeError, actions: &mut Vec<Action>) {
        Stats::inc(&self.node.stats.protocol_errors_total);
        self.session.fail(&e.to_string(), None, actions);
    }

    /// Carries out the session's actions; true when the connection must close.
    async fn apply(&mut self, actions: &mut Vec<Action>) -> bool {
        let mut close = false;
        // Headers for the RECEIPT that follows a SUBSCRIBE (its position, its resume).
        let mut receipt_extra: Option<Vec<(&'static str, String)>> = None;
        let mut i = 0;
        while i < actions.len() {
            let action = std::mem::replace(&mut actions[i], Action::Close);
            i += 1;
            match action {
                Action::Reply(mut frame) => {
                    if frame.command == pushcenter_stomp::Command::Receipt {
                        for (k, v) in receipt_extra.take().unwrap_or_default() {
                            frame.push_header(k, &v);
                        }
                    }
                    if frame.command == pushcenter_stomp::Command::Error {
                        let stats = &self.node.stats;
                        Stats::inc(&stats.protocol_errors_total);
                        match frame.get("message") {
                            Some(m) if m.starts_with("unauthorized") => {
                                Stats::inc(&stats.auth_failures_total);
                            }
                            Some(m) if m.starts_with("forbidden") => {
                                Stats::inc(&stats.forbidden_total);
                            }
                            _ => {}
                        }
                    }
                    let _ = self.write_frame(&frame).await;
                }
                Action::Connected {
                    version,
                    send_ms,
                    recv_ms,
                    user,
                    expires_at,
                    positions,
                } => {
                    self.expires = expires_at.map(instant_of);
                    self.span.record("session", self.session.id());
                    if let Some(u) = user.as_deref() {
                        self.span.record("user", u);
                        // Before CONNECTED: what is published to the user from then on
                        // reaches this node. Boxed by the bus: no room in every task.
                        // Counted at once: a connection dropped while it waits is
                        // uncounted on drop.
                        let wait = self.node.bus.follow(u);
                        self.following = true;
                        wait.await;
                    }
                    let cfg = &self.node.config;
                    let refused = match user.as_deref() {
                        Some(u) => match self.node.admin.banned(u) {
                            Some(until) => {
                                Stats::inc(&self.node.stats.connections_refused_banned_total);
                                let left = until.saturating_sub(crate::bus::unix_ms()) / 1000;
                                Some((
                                    format!("forbidden: banned for {} more seconds", left + 1),
                                    Some("false"),
                                ))
                            }
                            None => None,
                        },
                        None => None,
                    };
                    let refused = refused.or_else(|| {
                        self.node
                            .router
                            .attach(
                                self.conn_id,
                                self.session.id(),
                                user.as_deref(),
                                positions && !cfg.position_updates.is_zero(),
                                self.outbox.clone(),
                                cfg.max_connections_per_user,
                            )
                            .err()
                            .map(|held| {
                                Stats::inc(&self.node.stats.connections_refused_user_total);
                                (
                                    format!(
                                        "too many connections for this user on this node ({held}, max_connections_per_user)"
                                    ),
                                    // The usual backoff: another of the user's sessions may go.
                                    None,
                                )
                            })
                    });
                    if let Some((message, reconnect)) = refused {
                        let mut frame = error_frame(&message, None);
                        if let Some(r) = reconnect {
                            frame.push_header("reconnect", r);
                        }
                        self.fail_with(frame, actions, i);
                        continue;
                    }
                    self.attached = true;
                    self.version = version;
                    self.send_every = (send_ms > 0).then(|| Duration::from_millis(send_ms.into()));
                    // A peer silent for twice its interval is gone.
                    self.recv_within =
                        (recv_ms > 0).then(|| Duration::from_millis(u64::from(recv_ms) * 2));
                }
                Action::Subscribe {
                    slot,
                    destination,
                    resume,
                } => {
                    let done = match self.node.router.can_subscribe(&destination) {
                        Ok(()) => self.subscribe(slot, &destination, resume.as_deref()).await,
                        Err(message) => Err(message),
                    };
                    match done {
                        Ok(extra) => receipt_extra = Some(extra),
                        Err(message) => {
                            self.session.forget(slot);
                            self.fail_at(&message, actions, i);
                        }
                    }
                }
                Action::Unsubscribe { slot, destination } => {
                    self.node
                        .router
                        .unsubscribe(&destination, self.conn_id, slot);
                }
                Action::Publish(record) => {
                    if let Err(e) = self.node.publish(record).await {
                        self.fail_at(&format!("publish failed: {e}"), actions, i);
                    } else {
                        Stats::inc(&self.node.stats.messages_published_total);
                        Stats::inc(&self.node.stats.messages_published_send_total);
                    }
                }
                Action::Answer(reply) => {
                    if let Err(e) = self.node.reply(reply).await {
                        self.fail_at(&format!("reply failed: {e}"), actions, i);
                    }
                }
                Action::Expires(at) => self.expires = at.map(instant_of),
                Action::Close => close = true,
            }
            if close {
                break;
            }
        }
        actions.clear();
        // What the session counted while it handled these frames.
        let stats = &self.node.stats;
        for (n, counter) in [
            (self.session.take_late_answers(), &stats.replies_late_total),
            (
                self.session.take_refused_answers(),
                &stats.replies_refused_total,
            ),
            (self.session.take_nacks(), &stats.nacks_total),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        close
    }

    /// Replaces the actions after `i` with ERROR then close.
    fn fail_at(&mut self, message: &str, actions: &mut Vec<Action>, i: usize) {
        self.fail_with(error_frame(message, None), actions, i);
    }

    /// Replaces the actions after `i` with this ERROR frame then close.
    fn fail_with(&mut self, error: Frame, actions: &mut Vec<Action>, i: usize) {
        let mut rest = Vec::new();
        self.session.fail_with(error, &mut rest);
        actions.truncate(i);
        actions.extend(rest);
    }

    async fn write_frame(&mut self, frame: &Frame) -> io::Result<()> {
        let mut b = BytesMut::new();
        // Before CONNECTED the client cannot know the version, and clients (stompjs) only
        // unescape headers once they do: an early ERROR goes out unescaped (1.0) when it can.
        let early = !self.attached && encode(frame, Version::V1_0, &mut b).is_ok();
        if !early {
            b.clear();
            if encode(frame, self.version, &mut b).is_err() {
                return Ok(());
            }
        }
        Stats::inc(&self.node.stats.frames_out_total);
        self.feed(&b).await
    }

    /// Frames `bytes`; writes once a batch is large.
    async fn feed(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.link.put(bytes);
        self.flush_if_large().await
    }

    async fn flush_if_large(&mut self) -> io::Result<()> {
        if self.link.buffered() >= 64 * 1024 {
            self.flush().await
        } else {
            Ok(())
        }
    }

    /// Socket writes are bounded: a peer that does not take a write within
    /// `write_timeout` is a slow consumer, and the task must not hang on it.
    async fn flush(&mut self) -> io::Result<()> {
        let t = self.node.config.write_timeout;
        tokio::time::timeout(t, self.link.flush())
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    }

    async fn send_error(&mut self, message: &str) {
        Stats::inc(&self.node.stats.protocol_errors_total);
        let _ = self.write_frame(&error_frame(message, None)).await;
        let _ = self.flush().await;
    }

    /// Writes one queued item; false when the subscription's ack window is full.
    async fn write_out(&mut self, out: Out) -> io::Result<bool> {
        if let Out::Unsubscribed { sub } = &out {
            // The session keeps the subscription: the client's own UNSUBSCRIBE of it
            // later is no error.
            let Some(line) = self.session.subscription_line(*sub) else {
                return Ok(true);
            };
            let mut b = BytesMut::with_capacity(64 + line.len());
            b.put_slice(b"RECEIPT\nreceipt-id:unsubscribed\n");
            b.put_slice(line);
            b.put_slice(b"\n\0");
            Stats::inc(&self.node.stats.frames_out_total);
            self.feed(&b).await?;
            return Ok(true);
        }
        if let Out::Position { subs, position } = &out {
            for slot in subs.iter() {
                let Some(line) = self.session.subscription_line(*slot) else {
                    continue;
                };
                let mut b = BytesMut::with_capacity(64 + line.len() + position.len());
                b.put_slice(b"RECEIPT\nreceipt-id:position\n");
                b.put_slice(line);
                b.put_slice(b"position:");
                b.put_slice(position.as_bytes());
                b.put_slice(b"\n\n\0");
                Stats::inc(&self.node.stats.frames_out_total);
                self.feed(&b).await?;
            }
            return Ok(true);
        }
        let stats = &self.node.stats;
        // Replays are old by design: only live messages count in the latency.
        let at_us = match &out {
            Out::Message { msg, .. } => msg.at_us(),
            _ => 0,
        };
        match render(out, &mut self.session, self.version, &mut self.link) {
            Rendered::Frame => {
                self.frames_out += 1;
                if at_us > 0 {
                    let us = self.woke_us.saturating_sub(at_us);
                    stats.delivery_latency.observe(us as f64 / 1e6);
                }
                self.flush_if_large().await.map(|()| true)
            }
            Rendered::Gone => Ok(true),
            Rendered::Expired => {
                Stats::inc(&stats.requests_expired_total);
                Ok(true)
            }
            Rendered::Unsendable => {
                Stats::inc(&stats.messages_dropped_total);
                Ok(true)
            }
            Rendered::WindowFull => {
                Stats::inc(&stats.messages_dropped_total);
                Ok(false)
            }
        }
    }

    /// Reads the records of `stream` after `after` up to `base` from the bus's log for
    /// a resume: at most [`MAX_LOG_RECORDS`] of the newest (the older part is then
    /// lost), under the node's limit on concurrent log reads, keeping only what `who`
    /// wants. `None`: not read (the log no longer has them, or no reader was free).
    async fn read_gap(
        node: &Node,
        who: &Subscriber<'_>,
        stream: &str,
        from: i64,
        base: i64,
    ) -> Option<(i64, Vec<crate::bus::Delivery>)> {
        let from = from.max(base - MAX_LOG_RECORDS + 1);
        let permit =
            tokio::time::timeout(node.config.publish_timeout, node.log_reads.acquire()).await;
        let Ok(Ok(_permit)) = permit else {
            Stats::inc(&node.stats.resume_log_reads_refused_total);
            debug!(stream, "no log reader free for a resume gap");
            return None;
        };
        match node.bus.read(stream, from, base).await {
            Ok(Some(mut records)) => {
                Stats::inc(&node.stats.resume_log_reads_total);
                records.retain(|d| who.wants(d.record.addressed()));
                Some((from, records))
            }
            Ok(None) => {
                debug!(stream, from, base, "resume gap no longer in the log");
                None
            }
            Err(e) => {
                debug!(error = %e, stream, "cannot read a resume gap");
                None
            }
        }
    }

    /// Takes one resume from the connection's per-minute allowance.
    fn resume_allowed(&mut self) -> bool {
        let per_minute = f64::from(self.node.config.max_resumes_per_minute);
        self.resumes.take(per_minute / 60.0, per_minute)
    }

    /// Registers a subscription; with `resume`, first queues what it missed: from the
    /// bus's log what is older than the replay window, then from the window, at most
    /// what the connection's queue can take (the newest part: the streams cut are
    /// answered lost). Under the window's lock only the window part is chosen (its cost
    /// bounded by that budget) and the subscription registered: a record enters the
    /// window before it is routed, so each one is either in the replay or arrives live
    /// after it (live ones the replay covered are skipped by the session's floor). The
    /// replay is encoded after the lock and queued ahead of anything live that came
    /// meanwhile. Returns the RECEIPT's extra headers, or why it was refused.
    async fn subscribe(
        &mut self,
        slot: u32,
        destination: &str,
        resume: Option<&[(String, i64)]>,
    ) -> Result<Vec<(&'static str, String)>, String> {
        let node = self.node.clone();
        let stats = &node.stats;
        if resume.is_some() && !self.resume_allowed() {
            Stats::inc(&stats.resumes_refused_total);
            let limit = node.config.max_resumes_per_minute;
            return Err(format!("too many resumes: the limit is {limit} per minute"));
        }
        let mut extra = Vec::new();
        let (messages, bytes) = self.outbox.room();
        let room = Room { messages, bytes };
        let mut from_log = FromLog::default();
        let user = self.session.user();
        let bus = &*node.bus;
        // Streams that cannot carry this subscription's records (another user's targeted
        // partitions) count as seen to their end: neither read from the log nor lost.
        // Taken from the window each time: a partition the node starts to read meanwhile
        // (another user connecting) is one of them too.
        let own = |window: &Window, positions: &[(String, i64)]| {
            let mut own = window.known(positions);
            for (stream, _) in window.frontier() {
                if bus.carries(&stream, user) {
                    continue;
                }
                match own.iter_mut().find(|(s, _)| *s == stream) {
                    Some(p) => p.1 = i64::MAX,
                    None => own.push((stream, i64::MAX)),
                }
            }
            own
        };
        let gaps = |positions: &[(String, i64)]| {
            let mut window = node.window();
            let own = own(&window, positions);
            window.gaps(&own, std::time::Instant::now())
        };
        // The window moves on while the log is read: read what it lost meanwhile too,
        // a few times, before a gap counts as lost.
        let mut reads = 0;
        if let Some(positions) = resume {
            let deadline = tokio::time::Instant::now() + HISTORY_WAIT;
            // A look per 50 ms, and only the streams' state while none loads: many
            // waiting connections cost the window's lock little.
            while tokio::time::Instant::now() < deadline && {
                let mut window = node.window();
                window.any_loading() && {
                    let own = own(&window, positions);
                    let gaps = window.gaps(&own, std::time::Instant::now());
                    window.loading(&gaps)
                }
            } {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        loop {
            if let Some(positions) = resume {
                for read in from_log.reads(&gaps(positions)) {
                    let who = self.subscriber(destination);
                    let got = Self::read_gap(&node, &who, &read.stream, read.from, read.to).await;
                    from_log.read_done(read, got);
                }
            }
            reads += 1;
            let covered = resume.is_none_or(|positions| from_log.covers(&gaps(positions)));
            if covered || reads == 3 {
                break;
            }
        }
        // Registered first, then the replay chosen under the window's lock: a record
        // routed in between is both live and in the replay (the floor skips the live
        // copy), one pushed into the window after it is live only. The window's lock
        // covers only the choice (bounded by the budget) and the frontier: live
        // delivery never waits on the router's write lock or on a replay's size.
        let mark = self.outbox.mark();
        let registered = node
            .router
            .subscribe(destination, self.conn_id, slot, self.outbox.clone())
            .is_ok();
        let (scan, frontier) = {
            let mut window = node.window();
            let mut scan = None;
            if let (Some(positions), true) = (resume, registered) {
                let positions = own(&window, positions);
                let who = self.subscriber(destination);
                let budget = Budget {
                    messages: room.messages,
                    bytes: room.bytes,
                    scan: RESUME_SCAN,
                };
                scan =
                    Some(window.start_resume(&who, &positions, std::time::Instant::now(), budget));
            }
            (scan, window.frontier())
        };
        // The scan, a step per hold of the lock, letting live delivery in between.
        let chosen = match scan {
            Some(mut scan) => loop {
                let finished = {
                    let who = self.subscriber(destination);
                    let mut window = node.window();
                    window.resume_step(&mut scan, &who, RESUME_STEP)
                };
                if finished {
                    break Some(scan.finish());
                }
                tokio::task::yield_now().await;
            },
            None => None,
        };
        if !registered {
            // Another connection took the last pattern meanwhile: this one stays
            // unregistered, so nothing is delivered to it.
            self.session.forget(slot);
            let limit = node.config.max_patterns;
            return Err(format!(
                "too many distinct wildcard patterns on this node (limit {limit})"
            ));
        }
        if let (Some(positions), Some(window_part)) = (resume, chosen) {
            Stats::inc(&stats.resumes_total);
            let plan = resume::plan(&window_part, &from_log, room);
            // Encoded here, outside every lock.
            let replay: Vec<Out> = plan
                .from_log
                .iter()
                .copied()
                .chain(window_part.replay.iter().map(|e| &**e.delivery()))
                .filter_map(|d| Shared::new(d).map(Arc::new))
                .map(|msg| Out::Replay { sub: slot, msg })
                .collect();
            stats
                .messages_replayed_total
                .fetch_add(replay.len() as u64, Ordering::Relaxed);
            stats.resume_records.observe(replay.len() as f64);
            self.outbox.insert_at(mark, replay);
            if !plan.lost.is_empty() {
                Stats::inc(&stats.resumes_lost_total);
            }
            extra.extend(plan.outcome());
            self.session
                .set_floor(slot, &resume::floor(&frontier, positions));
        }
        // Only the streams that can carry this subscription's records.
        let user = self.session.user();
        let own: Vec<(String, i64)> = frontier
            .into_iter()
            .filter(|(stream, _)| node.bus.carries(stream, user))
            .collect();
        extra.push(("position", format_positions(&own)));
        Ok(extra)
    }

    fn subscriber<'a>(&'a self, destination: &'a str) -> Subscriber<'a> {
        Subscriber {
            destination,
            user: self.session.user(),
            session: self.session.id(),
        }
    }
}

impl<L> Drop for Connection<L> {
    fn drop(&mut self) {
        for (slot, destination) in self.session.subscriptions() {
            self.node
                .router
                .unsubscribe(destination, self.conn_id, slot);
        }
        if self.attached {
            self.node.router.detach(self.conn_id, self.session.id());
        }
        if self.following {
            if let Some(u) = self.session.user() {
                self.node.bus.unfollow(u);
            }
        }
        self.outbox.clear();
        Stats::add(&self.node.stats.connections, -1);
    }
}

fn duration_ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// The instant of a unix time in seconds (now when it has passed).
fn instant_of(unix_secs: u64) -> Instant {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Instant::now() + Duration::from_secs(unix_secs.saturating_sub(now))
}
