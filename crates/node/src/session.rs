//! The STOMP session state machine: frames in, actions out. No I/O: the connection task
//! carries the actions out, in order.

use std::collections::{HashMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};
use pushcenter_stomp::{Command, Frame, HeartBeat, Version};

use std::sync::Arc;

use crate::auth::{Auth, Identity, TOKEN_DESTINATION};
use crate::bus::{
    Answerer, REPLY_HEADERS, REPLY_PREFIX, REQUEST_HEADERS, Record, Reply, RequestInfo,
    check_correlation_id, check_publish_destination, sanitize, unix_ms,
};

#[derive(Debug, Clone)]
pub(crate) struct SessionConfig {
    pub(crate) max_subscriptions: usize,
    /// Wildcard subscriptions this session may hold.
    pub(crate) max_patterns: usize,
    pub(crate) ack_window: usize,
    pub(crate) client_send: bool,
    /// What the server offers: send every `send_ms`, wants to hear every `recv_ms`.
    pub(crate) heart_beat: HeartBeat,
    pub(crate) session_id: String,
    /// Take the user from CONNECT's `login` header, unchecked (no token auth).
    pub(crate) insecure_login_as_user: bool,
    /// Token authentication, when configured.
    pub(crate) auth: Option<Arc<Auth>>,
    /// The token of the WebSocket URL (`?access_token=`), if any.
    pub(crate) url_token: Option<String>,
}

/// Transactions one session may have open, and frames one transaction may hold.
const MAX_TRANSACTIONS: usize = 16;
const MAX_TRANSACTION_FRAMES: usize = 1000;
/// Bytes (bodies and headers) all of a connection's open transactions may hold.
const MAX_TRANSACTION_BYTES: usize = 1024 * 1024;

/// Requests a session remembers having received, so it may answer them: the oldest
/// is forgotten past this many.
const MAX_DELIVERED_REQUESTS: usize = 1024;
/// A delivered request stays answerable this long after its deadline (the answer is
/// then late: the waiting node counts it), or this long after delivery without one.
const ANSWER_GRACE_MS: u64 = 60_000;
const NO_DEADLINE_KEEP_MS: u64 = 600_000;

/// A request delivered to this session: it may answer it until `until` (unix ms).
#[derive(Debug)]
struct DeliveredRequest {
    correlation_id: String,
    node: String,
    until: u64,
    /// Answered once: later answers are late (dropped here, not forwarded).
    answered: bool,
}

/// Whether a session may answer a request.
enum MayAnswer {
    Yes,
    /// It did already: the answer is dropped and counted late.
    Again,
    No,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckMode {
    Auto,
    Client,
    ClientIndividual,
}

#[derive(Debug)]
pub(crate) enum Action {
    /// Send this frame to the client.
    Reply(Frame),
    /// The session is established: the connection adopts version and heart-beats.
    Connected {
        version: Version,
        send_ms: u32,
        recv_ms: u32,
        user: Option<String>,
        /// Unix seconds when the token runs out.
        expires_at: Option<u64>,
        /// CONNECT asked for position updates (`position-updates:on`).
        positions: bool,
    },
    /// A refreshed token: the connection now ends at this time (unix seconds).
    Expires(Option<u64>),
    Subscribe {
        slot: u32,
        destination: String,
        /// `resume-from`: the last message id the client saw per stream.
        resume: Option<Vec<(String, i64)>>,
    },
    Unsubscribe {
        slot: u32,
        destination: String,
    },
    /// Publish; a failure ends the session with an ERROR.
    Publish(Record),
    /// Answer a request (SEND to its `reply-to`); a failure ends the session too.
    Answer(Reply),
    /// Close the connection (after any replies queued before it).
    Close,
}

#[derive(Debug)]
struct Subscription {
    slot: u32,
    /// The client's `id`.
    id: String,
    destination: String,
    ack: AckMode,
    /// The `subscription:<id>\n` line, escaped for the session's version.
    header_line: Bytes,
    /// Delivered, not yet acknowledged: (ack sequence, message id).
    unacked: VecDeque<(u64, String)>,
    /// After a resume: live messages at or below these offsets per stream were
    /// replayed (or came before), so they are skipped.
    floor: Option<std::collections::HashMap<String, i64>>,
}

/// A session's subscriptions in slot order (slots grow, so a new one goes at the
/// end): a binary search per delivery, and no hash table per connection.
#[derive(Default)]
struct Subs(Vec<Subscription>);

impl Subs {
    fn get(&self, slot: u32) -> Option<&Subscription> {
        let i = self.0.binary_search_by_key(&slot, |s| s.slot).ok()?;
        Some(&self.0[i])
    }

    fn get_mut(&mut self, slot: u32) -> Option<&mut Subscription> {
        let i = self.0.binary_search_by_key(&slot, |s| s.slot).ok()?;
        Some(&mut self.0[i])
    }

    fn push(&mut self, s: Subscription) {
        // At the end, unless the slot counter wrapped.
        let i = self.0.partition_point(|x| x.slot < s.slot);
        self.0.insert(i, s);
    }

    fn remove(&mut self, slot: u32) -> Option<Subscription> {
        let i = self.0.binary_search_by_key(&slot, |s| s.slot).ok()?;
        Some(self.0.remove(i))
    }

    /// The slot of the subscription with the client's `id`.
    fn by_id(&self, id: &str) -> Option<u32> {
        self.0.iter().find(|s| s.id == id).map(|s| s.slot)
    }

    fn values(&self) -> impl Iterator<Item = &Subscription> {
        self.0.iter()
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    AwaitConnect,
    Connected,
    Closed,
}

pub(crate) struct Session {
    cfg: SessionConfig,
    state: State,
    version: Version,
    /// By slot: a MESSAGE names its subscription by slot, once per subscriber.
    subs: Subs,
    next_slot: u32,
    next_ack: u64,
    transactions: HashMap<String, Vec<Frame>>,
    /// What the open transactions hold, in bytes (see [`held_cost`]).
    held_bytes: usize,
    nacks: u64,
    /// Answers refused since the last call (no such request was delivered here), and
    /// repeated answers dropped.
    refused_answers: u64,
    late_answers: u64,
    identity: Identity,
    /// Requests delivered to this session, oldest first; boxed: most sessions never
    /// get one, and an idle session pays one pointer.
    #[allow(clippy::box_collection)] // 8 bytes per idle session instead of 32
    delivered: Option<Box<VecDeque<DeliveredRequest>>>,
}

/// The per-subscriber head of a MESSAGE, or why it cannot be sent.
pub(crate) enum Head<'s> {
    /// `subscription:…\n` and, in client ack modes, `ack:…\n`.
    Lines {
        subscription: &'s [u8],
        ack: Option<u64>,
    },
    /// The subscription is gone (unsubscribed while the message was queued).
    Gone,
    /// The subscription's window of unacknowledged messages is full.
    WindowFull,
}

type Outcome = Result<(), String>;

impl Session {
    /// The token the WebSocket URL carried (`?access_token=`), if any.
    pub(crate) fn url_token(&self) -> Option<&str> {
        self.cfg.url_token.as_deref()
    }

    pub(crate) fn new(cfg: SessionConfig) -> Session {
        Session {
            cfg,
            state: State::AwaitConnect,
            version: Version::V1_2,
            subs: Subs::default(),
            next_slot: 0,
            next_ack: 0,
            transactions: HashMap::new(),
            held_bytes: 0,
            nacks: 0,
            refused_answers: 0,
            late_answers: 0,
            identity: Identity::default(),
            delivered: None,
        }
    }

    /// The session id (`<node>-<process start>-<connection>`), as CONNECTED tells the
    /// client.
    pub(crate) fn id(&self) -> &str {
        &self.cfg.session_id
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// NACKs seen since the last call.
    pub(crate) fn take_nacks(&mut self) -> u64 {
        std::mem::take(&mut self.nacks)
    }

    /// Answers refused since the last call.
    pub(crate) fn take_refused_answers(&mut self) -> u64 {
        std::mem::take(&mut self.refused_answers)
    }

    /// A request went out to this client: it may answer it from now on.
    pub(crate) fn note_request(&mut self, r: &RequestInfo, now_ms: u64) {
        let until = r
            .deadline_ms
            .map_or(now_ms.saturating_add(NO_DEADLINE_KEEP_MS), |d| {
                d.saturating_add(ANSWER_GRACE_MS)
            });
        let list = self.delivered.get_or_insert_with(Default::default);
        list.retain(|d| d.until >= now_ms);
        // Once per request, however many of the session's subscriptions it matched.
        if list
            .iter()
            .any(|d| d.correlation_id == r.correlation_id && d.node == r.node)
        {
            return;
        }
        if list.len() >= MAX_DELIVERED_REQUESTS {
            list.pop_front();
        }
        list.push_back(DeliveredRequest {
            correlation_id: r.correlation_id.clone(),
            node: r.node.clone(),
            until,
            answered: false,
        });
    }

    /// Whether request `id` of node `node` was delivered to this session and may still
    /// be answered (the first answer only goes on).
    fn may_answer(&mut self, id: &str, node: &str, now_ms: u64) -> MayAnswer {
        let Some(list) = self.delivered.as_mut() else {
            return MayAnswer::No;
        };
        list.retain(|d| d.until >= now_ms);
        let found = match list
            .iter_mut()
            .find(|d| d.correlation_id == id && d.node == node)
        {
            Some(d) if d.answered => MayAnswer::Again,
            Some(d) => {
                d.answered = true;
                MayAnswer::Yes
            }
            None => MayAnswer::No,
        };
        if list.is_empty() {
            self.delivered = None;
        }
        found
    }

    /// Repeated answers dropped since the last call.
    pub(crate) fn take_late_answers(&mut self) -> u64 {
        std::mem::take(&mut self.late_answers)
    }

    /// Subscriptions still open, for cleanup when the connection ends.
    pub(crate) fn subscriptions(&self) -> impl Iterator<Item = (u32, &str)> {
        self.subs.values().map(|s| (s.slot, s.destination.as_str()))
    }

    /// Handles one client frame.
    pub(crate) fn on_frame(&mut self, frame: Frame, out: &mut Vec<Action>) {
        if self.state == State::Closed {
            return;
        }
        let receipt = frame.get("receipt").map(str::to_owned);
        let start = out.len();
        let result = match (&self.state, frame.command) {
            (State::AwaitConnect, Command::Connect | Command::Stomp) => self.connect(&frame, out),
            (State::AwaitConnect, c) => Err(format!("expected CONNECT or STOMP, got {c}")),
            (_, Command::Connect | Command::Stomp) => Err("already connected".into()),
            (_, c) if !c.is_client() => Err(format!("{c} is a server frame")),
            (_, Command::Disconnect) => {
                if let Some(r) = &receipt {
                    out.push(Action::Reply(
                        Frame::new(Command::Receipt).header("receipt-id", r),
                    ));
                }
                self.state = State::Closed;
                out.push(Action::Close);
                return;
            }
            _ => self.command(frame, out),
        };
        match result {
            Ok(()) => {
                if let (Some(r), true) = (&receipt, self.state == State::Connected) {
                    out.push(Action::Reply(
                        Frame::new(Command::Receipt).header("receipt-id", r),
                    ));
                }
            }
            Err(message) => {
                out.truncate(start);
                self.fail(&message, receipt.as_deref(), out);
            }
        }
    }

    /// Ends the session with ERROR then close (once: a closed session says nothing).
    pub(crate) fn fail(&mut self, message: &str, receipt: Option<&str>, out: &mut Vec<Action>) {
        self.fail_with(error_frame(message, receipt), out);
    }

    /// Ends the session with this ERROR frame.
    pub(crate) fn fail_with(&mut self, error: Frame, out: &mut Vec<Action>) {
        if self.state == State::Closed {
            return;
        }
        out.push(Action::Reply(error));
        out.push(Action::Close);
        self.state = State::Closed;
    }

    fn connect(&mut self, frame: &Frame, out: &mut Vec<Action>) -> Outcome {
        let Some(version) = Version::negotiate(frame.get("accept-version"), &Version::ALL) else {
            let mut e = error_frame("supported protocol versions are 1.0,1.1,1.2", None);
            e.push_header("version", "1.0,1.1,1.2");
            out.push(Action::Reply(e));
            out.push(Action::Close);
            self.state = State::Closed;
            return Ok(());
        };
        let theirs = match frame.get("heart-beat") {
            None => HeartBeat::default(),
            Some(h) => HeartBeat::parse(h).ok_or("malformed heart-beat header")?,
        };
        let (send_ms, recv_ms) = HeartBeat::negotiate(self.cfg.heart_beat, theirs);
        self.identity = self.identify(frame)?;
        let user = self.identity.user.clone();
        self.version = version;
        self.state = State::Connected;
        out.push(Action::Connected {
            version,
            send_ms,
            recv_ms,
            user: user.clone(),
            expires_at: self.identity.expires_at,
            positions: frame.get("position-updates") == Some("on"),
        });
        let mut reply = Frame::new(Command::Connected)
            .header("version", version.as_str())
            .header("heart-beat", self.cfg.heart_beat.to_string())
            .header("server", concat!("pushcenter/", env!("CARGO_PKG_VERSION")));
        reply.push_header("session", &self.cfg.session_id);
        if let Some(u) = &user {
            reply.push_header("user-name", u);
        }
        out.push(Action::Reply(reply));
        Ok(())
    }

    /// Who the client is: from its token when tokens are required, else anonymous (or
    /// the `login` header when `insecure_login_as_user` is on).
    fn identify(&self, frame: &Frame) -> Result<Identity, String> {
        match self.cfg.auth.as_ref().filter(|a| a.clients_need_tokens()) {
            Some(auth) => auth.client(token_of(frame).or(self.cfg.url_token.as_deref())),
            None => Ok(Identity::open(
                frame
                    .get("login")
                    .filter(|l| self.cfg.insecure_login_as_user && !l.is_empty())
                    .map(str::to_owned),
            )),
        }
    }

    /// A fresh token for the same user replaces the current one (and its rights).
    fn refresh(&mut self, frame: &Frame, out: &mut Vec<Action>) -> Outcome {
        let Some(auth) = self.cfg.auth.as_ref().filter(|a| a.clients_need_tokens()) else {
            return Err("this node does not use tokens".into());
        };
        let token = token_of(frame).ok_or("missing header: passcode")?;
        let fresh = auth.client(Some(token))?;
        // The same user from the same source: a token of another provider (or of the
        // static keys) never takes over a connection, whatever its `sub`.
        if !fresh.same_principal(&self.identity) {
            return Err("unauthorized: the new token is for another user".into());
        }
        out.push(Action::Expires(fresh.expires_at));
        self.identity = fresh;
        Ok(())
    }

    fn command(&mut self, frame: Frame, out: &mut Vec<Action>) -> Outcome {
        match frame.command {
            Command::Send | Command::Ack | Command::Nack => {
                if let Some(tx) = frame.get("transaction") {
                    if !self.transactions.contains_key(tx) {
                        return Err(format!("unknown transaction {tx}"));
                    }
                    let cost = held_cost(&frame);
                    if self.held_bytes + cost > MAX_TRANSACTION_BYTES {
                        return Err(format!(
                            "transactions too large: at most {MAX_TRANSACTION_BYTES} bytes held per connection"
                        ));
                    }
                    let tx = tx.to_owned();
                    let held = self
                        .transactions
                        .get_mut(&tx)
                        .ok_or_else(|| format!("unknown transaction {tx}"))?;
                    if held.len() >= MAX_TRANSACTION_FRAMES {
                        return Err("too many frames in transaction".into());
                    }
                    // A copy of its own: a held frame must not keep the whole read
                    // buffer it was decoded from.
                    held.push(compact(&frame));
                    self.held_bytes += cost;
                    return Ok(());
                }
                self.apply(&frame, out)
            }
            Command::Subscribe => self.subscribe(&frame, out),
            Command::Unsubscribe => self.unsubscribe(&frame, out),
            Command::Begin => {
                let tx = required(&frame, "transaction")?;
                if self.transactions.contains_key(tx) {
                    return Err(format!("transaction {tx} already started"));
                }
                if self.transactions.len() >= MAX_TRANSACTIONS {
                    return Err("too many open transactions".into());
                }
                self.transactions.insert(tx.to_owned(), Vec::new());
                Ok(())
            }
            Command::Commit => {
                let tx = required(&frame, "transaction")?;
                let held = self
                    .transactions
                    .remove(tx)
                    .ok_or_else(|| format!("unknown transaction {tx}"))?;
                self.held_bytes -= held.iter().map(held_cost).sum::<usize>();
                held.iter().try_for_each(|f| self.apply(f, out))
            }
            Command::Abort => {
                let tx = required(&frame, "transaction")?;
                let held = self
                    .transactions
                    .remove(tx)
                    .ok_or_else(|| format!("unknown transaction {tx}"))?;
                self.held_bytes -= held.iter().map(held_cost).sum::<usize>();
                Ok(())
            }
            c => Err(format!("unexpected {c}")),
        }
    }

    /// SEND, ACK or NACK, now or at COMMIT.
    fn apply(&mut self, frame: &Frame, out: &mut Vec<Action>) -> Outcome {
        match frame.command {
            Command::Send => {
                let destination = required(frame, "destination")?;
                if let Some(node) = destination.strip_prefix(REPLY_PREFIX) {
                    let id = required(frame, "correlation-id")?;
                    check_correlation_id(id)?;
                    if node.is_empty() {
                        return Err(format!("cannot send to {destination}: no node"));
                    }
                    // Only the sessions a request went to may answer it: checked here,
                    // where the delivery is known (docs/request-reply.md).
                    match self.may_answer(id, node, unix_ms()) {
                        MayAnswer::Yes => {}
                        MayAnswer::Again => {
                            self.late_answers += 1;
                            return Ok(());
                        }
                        MayAnswer::No => {
                            self.refused_answers += 1;
                            return Err(format!(
                                "forbidden: no request {id} from {destination} was delivered to this session"
                            ));
                        }
                    }
                    out.push(Action::Answer(Reply {
                        correlation_id: id.to_owned(),
                        node: Some(node.to_owned()),
                        answerer: Some(Answerer {
                            session: self.cfg.session_id.clone(),
                            user: self.identity.user.clone(),
                        }),
                        headers: passed_headers(frame),
                        body: frame.body.clone(),
                        ..Reply::default()
                    }));
                    return Ok(());
                }
                if destination == TOKEN_DESTINATION {
                    return self.refresh(frame, out);
                }
                if !self.cfg.client_send {
                    return Err("SEND from clients is disabled on this node".into());
                }
                check_publish_destination(destination, false)
                    .map_err(|e| format!("cannot send to {destination}: {e}"))?;
                if !self.identity.may_send(destination) {
                    return Err(format!("forbidden: cannot send to {destination}"));
                }
                out.push(Action::Publish(Record {
                    destination: destination.to_owned(),
                    headers: passed_headers(frame),
                    body: frame.body.clone(),
                    ..Record::default()
                }));
                Ok(())
            }
            _ => self.ack(frame),
        }
    }

    fn subscribe(&mut self, frame: &Frame, out: &mut Vec<Action>) -> Outcome {
        let destination = required(frame, "destination")?;
        let id = match (frame.get("id"), self.version) {
            (Some(id), _) => id,
            (None, Version::V1_0) => destination,
            (None, _) => return Err("missing header: id".into()),
        };
        let name = destination
            .strip_prefix("/topic/")
            .or_else(|| destination.strip_prefix("/user/queue/"));
        if name.is_none_or(str::is_empty) {
            return Err(format!(
                "cannot subscribe to {destination}: use /topic/<name> or /user/queue/<name>"
            ));
        }
        if !self.identity.may_subscribe(destination) {
            return Err(format!("forbidden: cannot subscribe to {destination}"));
        }
        if self.subs.by_id(id).is_some() {
            return Err(format!("subscription id {id} already in use"));
        }
        let patterns = self
            .subs
            .values()
            .filter(|s| crate::routing::rule::is_pattern(&s.destination))
            .count();
        if crate::routing::rule::is_pattern(destination) && patterns >= self.cfg.max_patterns {
            return Err(format!(
                "too many wildcard subscriptions (limit {})",
                self.cfg.max_patterns
            ));
        }
        if self.subs.len() >= self.cfg.max_subscriptions {
            return Err(format!(
                "too many subscriptions (limit {})",
                self.cfg.max_subscriptions
            ));
        }
        let resume = frame
            .get("resume-from")
            .map(crate::routing::window::parse_positions)
            .transpose()?;
        let ack = match frame.get("ack").unwrap_or("auto") {
            "auto" => AckMode::Auto,
            "client" => AckMode::Client,
            "client-individual" => AckMode::ClientIndividual,
            other => return Err(format!("unknown ack mode {other}")),
        };
        let slot = self.next_slot;
        self.next_slot = self.next_slot.wrapping_add(1);
        let header_line = header_line(self.version, "subscription", id);
        self.subs.push(Subscription {
            slot,
            id: id.to_owned(),
            destination: destination.to_owned(),
            ack,
            header_line,
            unacked: VecDeque::new(),
            floor: None,
        });
        out.push(Action::Subscribe {
            slot,
            destination: destination.to_owned(),
            resume,
        });
        Ok(())
    }

    fn unsubscribe(&mut self, frame: &Frame, out: &mut Vec<Action>) -> Outcome {
        let id = match (frame.get("id"), self.version) {
            (Some(id), _) => id,
            (None, Version::V1_0) => required(frame, "destination")?,
            (None, _) => return Err("missing header: id".into()),
        };
        let sub = self
            .subs
            .by_id(id)
            .and_then(|slot| self.subs.remove(slot))
            .ok_or_else(|| format!("unknown subscription {id}"))?;
        out.push(Action::Unsubscribe {
            slot: sub.slot,
            destination: sub.destination,
        });
        Ok(())
    }

    fn ack(&mut self, frame: &Frame) -> Outcome {
        let nack = frame.command == Command::Nack;
        let (sub, pos) = if self.version == Version::V1_2 {
            let id = required(frame, "id")?;
            let seq: u64 = id.parse().map_err(|_| format!("unknown ack id {id}"))?;
            if seq >= self.next_ack {
                return Err(format!("unknown ack id {id}"));
            }
            match self.find_unacked(|(s, _)| *s == seq, None) {
                Some(found) => found,
                None => return Ok(()), // already acknowledged
            }
        } else {
            let message_id = required(frame, "message-id")?;
            let only = match frame.get("subscription") {
                Some(s) if self.subs.by_id(s).is_none() => {
                    return Err(format!("unknown subscription {s}"));
                }
                Some(s) => Some(s.to_owned()),
                None if self.version == Version::V1_1 => {
                    return Err("missing header: subscription".into());
                }
                None => None,
            };
            match self.find_unacked(|(_, m)| m == message_id, only.as_deref()) {
                Some(found) => found,
                None => return Ok(()),
            }
        };
        let Some(s) = self.subs.get_mut(sub) else {
            return Ok(());
        };
        let n = if s.ack == AckMode::Client {
            let n = pos + 1;
            s.unacked.drain(..n);
            n
        } else {
            s.unacked.remove(pos);
            1
        };
        if nack {
            self.nacks += n as u64;
        }
        Ok(())
    }

    fn find_unacked(
        &self,
        pred: impl Fn(&(u64, String)) -> bool,
        only: Option<&str>,
    ) -> Option<(u32, usize)> {
        self.subs
            .values()
            .filter(|s| only.is_none_or(|o| o == s.id))
            .find_map(|s| s.unacked.iter().position(&pred).map(|p| (s.slot, p)))
    }

    /// Prepares the per-subscriber head of a MESSAGE for subscription `slot`.
    /// The connection's user, if any.
    pub(crate) fn user(&self) -> Option<&str> {
        self.identity.user.as_deref()
    }

    /// Forgets a subscription the node could not register.
    pub(crate) fn forget(&mut self, slot: u32) {
        self.subs.remove(slot);
    }

    /// Live messages of `slot` at or below `floor` (per stream) are skipped from now on.
    pub(crate) fn set_floor(&mut self, slot: u32, floor: &[(String, i64)]) {
        if let Some(s) = self.subs.get_mut(slot) {
            s.floor = Some(floor.iter().cloned().collect());
        }
    }

    /// True when a live message for `slot` was already replayed to it.
    pub(crate) fn replayed_before(&self, slot: u32, message_id: &str) -> bool {
        let Some(floor) = self.subs.get(slot).and_then(|s| s.floor.as_ref()) else {
            return false;
        };
        crate::routing::window::parse_id(message_id)
            .is_some_and(|(stream, offset)| floor.get(stream).is_some_and(|&f| offset <= f))
    }

    /// The `subscription:<id>` line of a live subscription.
    pub(crate) fn subscription_line(&self, slot: u32) -> Option<&Bytes> {
        self.subs.get(slot).map(|s| &s.header_line)
    }

    pub(crate) fn message_head(
        &mut self,
        slot: u32,
        message_id: impl FnOnce() -> String,
    ) -> Head<'_> {
        let Some(s) = self.subs.get_mut(slot) else {
            return Head::Gone;
        };
        if s.ack == AckMode::Auto {
            return Head::Lines {
                subscription: &s.header_line,
                ack: None,
            };
        }
        if s.unacked.len() >= self.cfg.ack_window {
            return Head::WindowFull;
        }
        let seq = self.next_ack;
        self.next_ack += 1;
        let mid = if self.version == Version::V1_2 {
            String::new()
        } else {
            message_id()
        };
        s.unacked.push_back((seq, mid));
        Head::Lines {
            subscription: &s.header_line,
            ack: Some(seq),
        }
    }
}

/// A token on a frame: `passcode`, or `authorization: Bearer <token>`.
fn token_of(frame: &Frame) -> Option<&str> {
    frame.get("passcode").filter(|p| !p.is_empty()).or_else(|| {
        frame
            .get("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .map(str::trim)
    })
}

/// What a held frame costs: its body, its headers, a little for the rest.
fn held_cost(frame: &Frame) -> usize {
    let headers: usize = frame.headers().map(|(k, v)| k.len() + v.len() + 2).sum();
    frame.body.len() + headers + 64
}

/// The frame with headers and body in allocations of its own.
fn compact(frame: &Frame) -> Frame {
    let mut f = Frame::new(frame.command);
    for (k, v) in frame.headers() {
        f.push_header(k, v);
    }
    f.body(Bytes::copy_from_slice(&frame.body))
}

fn required<'f>(frame: &'f Frame, name: &str) -> Result<&'f str, String> {
    frame
        .get(name)
        .ok_or_else(|| format!("missing header: {name}"))
}

/// Headers a client's SEND passes on to subscribers.
fn passed_headers(frame: &Frame) -> Vec<(String, String)> {
    const RESERVED: [&str; 9] = [
        "destination",
        "content-length",
        "receipt",
        "transaction",
        "message-id",
        "subscription",
        "ack",
        "session",
        // A record's target on Kafka: a client's SEND cannot aim at one user.
        "user",
    ];
    let mut seen: Vec<&[u8]> = Vec::new();
    let mut out = Vec::new();
    for (name, value) in frame.headers() {
        if seen.contains(&name) {
            continue; // the first of repeated headers wins
        }
        seen.push(name);
        let (Ok(n), Ok(v)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else {
            continue;
        };
        // An escaped `\c` unescapes to `:`: such a name cannot travel on a record.
        if n.is_empty() || n.contains([':', '\r', '\n', '\0']) {
            continue;
        }
        if RESERVED.contains(&n) || REQUEST_HEADERS.contains(&n) || REPLY_HEADERS.contains(&n) {
            continue;
        }
        out.push((n.to_owned(), crate::bus::header_value(v)));
    }
    out
}

pub(crate) fn error_frame(message: &str, receipt: Option<&str>) -> Frame {
    let message = sanitize(message);
    let mut f = Frame::new(Command::Error).header("message", &message);
    if let Some(r) = receipt {
        f.push_header("receipt-id", r);
    }
    f.header("content-type", "text/plain")
        .body(Bytes::from(message.into_bytes()))
}

/// One encoded `name:value\n` line for `version`.
fn header_line(version: Version, name: &str, value: &str) -> Bytes {
    let f = Frame::new(Command::Message).header(name, value);
    let mut buf = BytesMut::new();
    if pushcenter_stomp::encode(&f, version, &mut buf).is_err() {
        // 1.0 cannot carry it escaped: send it with the awkward bytes replaced.
        buf.clear();
        buf.put_slice(b"MESSAGE\n");
        buf.put_slice(name.as_bytes());
        buf.put_u8(b':');
        buf.put_slice(sanitize(value).as_bytes());
        buf.put_slice(b"\n\n\0");
    }
    // Strip "MESSAGE\n" before and the blank line and NUL after.
    let b = buf.freeze();
    b.slice(8..b.len().saturating_sub(2).max(8))
}

#[cfg(test)]
mod tests;
