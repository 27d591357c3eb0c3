//! Frames, commands, headers and protocol versions.

use std::fmt;

use bytes::Bytes;

/// A STOMP protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V1_0,
    V1_1,
    V1_2,
}

impl Version {
    /// All versions, lowest first.
    pub const ALL: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

    /// The value used in `accept-version` and `version` headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// The WebSocket subprotocol name (`v12.stomp`, ...).
    pub fn subprotocol(self) -> &'static str {
        match self {
            Version::V1_0 => "v10.stomp",
            Version::V1_1 => "v11.stomp",
            Version::V1_2 => "v12.stomp",
        }
    }

    /// Parses `1.0`, `1.1` or `1.2`.
    pub fn parse(s: &str) -> Option<Version> {
        match s.trim() {
            "1.0" => Some(Version::V1_0),
            "1.1" => Some(Version::V1_1),
            "1.2" => Some(Version::V1_2),
            _ => None,
        }
    }

    /// Parses a WebSocket subprotocol name.
    pub fn from_subprotocol(s: &str) -> Option<Version> {
        Version::ALL
            .into_iter()
            .find(|v| v.subprotocol() == s.trim())
    }

    /// The highest version in an `accept-version` header value (comma separated) that
    /// is also in `supported`. A CONNECT without `accept-version` means 1.0.
    pub fn negotiate(accept_version: Option<&str>, supported: &[Version]) -> Option<Version> {
        match accept_version {
            None => supported.contains(&Version::V1_0).then_some(Version::V1_0),
            Some(list) => list
                .split(',')
                .filter_map(Version::parse)
                .filter(|v| supported.contains(v))
                .max(),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every STOMP command, client and server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Command {
    // client
    Connect,
    Stomp,
    #[default]
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    // server
    Connected,
    Message,
    Receipt,
    Error,
}

impl Command {
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Connected,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Connected => "CONNECTED",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    pub fn from_bytes(b: &[u8]) -> Option<Command> {
        Some(match b {
            b"CONNECT" => Command::Connect,
            b"STOMP" => Command::Stomp,
            b"SEND" => Command::Send,
            b"SUBSCRIBE" => Command::Subscribe,
            b"UNSUBSCRIBE" => Command::Unsubscribe,
            b"ACK" => Command::Ack,
            b"NACK" => Command::Nack,
            b"BEGIN" => Command::Begin,
            b"COMMIT" => Command::Commit,
            b"ABORT" => Command::Abort,
            b"DISCONNECT" => Command::Disconnect,
            b"CONNECTED" => Command::Connected,
            b"MESSAGE" => Command::Message,
            b"RECEIPT" => Command::Receipt,
            b"ERROR" => Command::Error,
            _ => return None,
        })
    }

    /// Only SEND, MESSAGE and ERROR may carry a body.
    pub fn allows_body(self) -> bool {
        matches!(self, Command::Send | Command::Message | Command::Error)
    }

    /// CONNECT, STOMP and CONNECTED headers are never escaped, in any version, so that
    /// version negotiation works before a version is known.
    pub fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }

    /// Frames a client sends.
    pub fn is_client(self) -> bool {
        !matches!(
            self,
            Command::Connected | Command::Message | Command::Receipt | Command::Error
        )
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one name or value sits: in the frame's source bytes (decoded, zero-copy) or in
/// its own text (built, or unescaped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) owned: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub(crate) name: Span,
    pub(crate) value: Span,
}

/// A STOMP frame: command, ordered headers (repeats kept, the first one wins), body.
///
/// Headers are spans into two buffers: the decoded frame's bytes, shared and never
/// copied, and the frame's own text for headers that were built or unescaped. Reading a
/// header therefore costs no reference count and no allocation.
#[derive(Clone, Default)]
pub struct Frame {
    pub command: Command,
    pub body: Bytes,
    pub(crate) source: Bytes,
    pub(crate) text: Vec<u8>,
    pub(crate) entries: Vec<Entry>,
}

impl Frame {
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            ..Frame::default()
        }
    }

    /// Appends a header (builder style).
    pub fn header(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Frame {
        self.push_header(name, value);
        self
    }

    /// Sets the body (builder style).
    pub fn body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// Appends a header.
    pub fn push_header(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let name = self.own(name.as_ref());
        let value = self.own(value.as_ref());
        self.entries.push(Entry { name, value });
    }

    pub(crate) fn own(&mut self, bytes: &[u8]) -> Span {
        let start = self.text.len();
        self.text.extend_from_slice(bytes);
        Span {
            start,
            end: self.text.len(),
            owned: true,
        }
    }

    fn resolve(&self, span: Span) -> &[u8] {
        let buf = if span.owned {
            &self.text[..]
        } else {
            &self.source[..]
        };
        buf.get(span.start..span.end).unwrap_or_default()
    }

    /// The headers in order, as raw bytes (decoded frames: unescaped, valid UTF-8).
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> + '_ {
        self.entries
            .iter()
            .map(|e| (self.resolve(e.name), self.resolve(e.value)))
    }

    /// The first header with this name, as raw bytes.
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// The first header with this name, as text. A value that is not UTF-8 reads as
    /// absent; decoded frames never have one.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Number of header lines.
    pub fn header_count(&self) -> usize {
        self.entries.len()
    }
}

impl PartialEq for Frame {
    fn eq(&self, other: &Frame) -> bool {
        self.command == other.command
            && self.body == other.body
            && self.headers().eq(other.headers())
    }
}

impl Eq for Frame {}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<_> = self
            .headers()
            .map(|(n, v)| (String::from_utf8_lossy(n), String::from_utf8_lossy(v)))
            .collect();
        f.debug_struct("Frame")
            .field("command", &self.command)
            .field("headers", &headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

/// What the decoder yields: a frame, or a heart-beat (a bare EOL between frames).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Frame(Frame),
    HeartBeat,
}

/// The `heart-beat` header: `cx,cy` in milliseconds (0 = none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeartBeat {
    /// The smallest interval at which the sender can send heart-beats.
    pub send_ms: u32,
    /// The interval at which the sender wants to receive heart-beats.
    pub recv_ms: u32,
}

impl HeartBeat {
    /// Parses `cx,cy`; `None` when malformed.
    pub fn parse(s: &str) -> Option<HeartBeat> {
        let (a, b) = s.split_once(',')?;
        Some(HeartBeat {
            send_ms: a.trim().parse().ok()?,
            recv_ms: b.trim().parse().ok()?,
        })
    }

    /// The negotiated intervals for one side, given what each side declared:
    /// `(we send every, we expect from the peer every)`, 0 meaning never.
    pub fn negotiate(ours: HeartBeat, theirs: HeartBeat) -> (u32, u32) {
        let send = if ours.send_ms == 0 || theirs.recv_ms == 0 {
            0
        } else {
            ours.send_ms.max(theirs.recv_ms)
        };
        let recv = if ours.recv_ms == 0 || theirs.send_ms == 0 {
            0
        } else {
            ours.recv_ms.max(theirs.send_ms)
        };
        (send, recv)
    }
}

impl fmt::Display for HeartBeat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.send_ms, self.recv_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_highest_common_version() {
        let all = &Version::ALL;
        assert_eq!(
            Version::negotiate(Some("1.0,1.1,1.2"), all),
            Some(Version::V1_2)
        );
        assert_eq!(
            Version::negotiate(Some("1.1,1.0"), all),
            Some(Version::V1_1)
        );
        assert_eq!(Version::negotiate(None, all), Some(Version::V1_0));
        assert_eq!(Version::negotiate(Some("2.0"), all), None);
        assert_eq!(Version::negotiate(Some("1.2"), &[Version::V1_0]), None);
    }

    #[test]
    fn heart_beat_negotiation() {
        let ours = HeartBeat {
            send_ms: 10_000,
            recv_ms: 10_000,
        };
        let theirs = HeartBeat::parse("0,5000").unwrap_or_default();
        assert_eq!(HeartBeat::negotiate(ours, theirs), (10_000, 0));
        let theirs = HeartBeat::parse("20000,20000").unwrap_or_default();
        assert_eq!(HeartBeat::negotiate(ours, theirs), (20_000, 20_000));
        assert_eq!(HeartBeat::parse("x,1"), None);
        assert_eq!(HeartBeat::parse("1"), None);
    }

    #[test]
    fn first_repeated_header_wins() {
        let f = Frame::new(Command::Send).header("a", "1").header("a", "2");
        assert_eq!(f.get("a"), Some("1"));
        assert_eq!(f.get("b"), None);
    }

    #[test]
    fn command_names_round_trip() {
        for c in Command::ALL {
            assert_eq!(Command::from_bytes(c.as_str().as_bytes()), Some(c));
        }
        assert_eq!(Command::from_bytes(b"send"), None);
    }
}
