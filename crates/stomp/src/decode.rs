//! The streaming decoder.
//!
//! `decode` looks at the front of a buffer. When a whole item is there it removes it and
//! returns it; when more bytes are needed it returns `Ok(None)` and leaves the buffer
//! alone, but only after checking what is already buffered against the limits, so a
//! caller that reads, decodes and repeats never holds more than one frame's limit.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use bytes::{Buf, BytesMut};
use nom::bytes::streaming::{tag, take, take_till};
use nom::sequence::terminated;
use nom::{IResult, Parser};

use crate::frame::{Command, Entry, Frame, Item, Span, Version};

/// Decoder limits. Every one is enforced on partial input too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Whole frame: command line, headers, body and the closing NUL.
    pub max_frame_bytes: usize,
    /// Number of header lines.
    pub max_headers: usize,
    /// One header line, without its EOL.
    pub max_header_line: usize,
    /// Body bytes, with or without `content-length`.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_frame_bytes: 128 * 1024,
            max_headers: 64,
            max_header_line: 8 * 1024,
            max_body_bytes: 64 * 1024,
        }
    }
}

/// Which limit a frame broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    FrameBytes,
    HeaderCount,
    HeaderLine,
    BodyBytes,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::FrameBytes => "frame too large",
            Limit::HeaderCount => "too many headers",
            Limit::HeaderLine => "header line too long",
            Limit::BodyBytes => "body too large",
        })
    }
}

/// Why a byte stream cannot be decoded. After an error the stream is unusable: the
/// caller sends an ERROR frame whose `message` is `err.to_string()` and closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A configured limit was exceeded; `max` is the limit.
    #[error("{limit} (limit {max})")]
    LimitExceeded { limit: Limit, max: usize },
    /// The bytes are not a STOMP frame.
    #[error("malformed frame: {0}")]
    Malformed(Cow<'static, str>),
}

impl DecodeError {
    /// True when a limit, not the syntax, was the problem.
    pub fn is_limit(&self) -> bool {
        matches!(self, DecodeError::LimitExceeded { .. })
    }

    fn limit(limit: Limit, max: usize) -> DecodeError {
        DecodeError::LimitExceeded { limit, max }
    }

    fn malformed(msg: &'static str) -> DecodeError {
        DecodeError::Malformed(Cow::Borrowed(msg))
    }
}

type Result<T, E = DecodeError> = std::result::Result<T, E>;

/// Decodes one item with STOMP 1.2 rules. See [`decode_version`].
pub fn decode(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Item>> {
    decode_version(buf, Version::V1_2, limits)
}

/// Decodes one item from the front of `buf`, with the header escaping of `version`
/// (CONNECT, STOMP and CONNECTED are never unescaped).
///
/// - `Ok(Some(item))`: the item's bytes were removed from `buf`.
/// - `Ok(None)`: more bytes are needed. Stray NULs before a command are dropped.
/// - `Err(_)`: the stream is malformed or over a limit.
pub fn decode_version(
    buf: &mut BytesMut,
    version: Version,
    limits: &Limits,
) -> Result<Option<Item>> {
    let nuls = buf.iter().take_while(|&&b| b == 0).count();
    buf.advance(nuls);
    if buf.is_empty() {
        return Ok(None);
    }
    match buf[0] {
        b'\n' => {
            buf.advance(1);
            return Ok(Some(Item::HeartBeat));
        }
        b'\r' => {
            return match buf.get(1) {
                None => Ok(None),
                Some(b'\n') => {
                    buf.advance(2);
                    Ok(Some(Item::HeartBeat))
                }
                Some(_) => Err(DecodeError::malformed("CR not followed by LF")),
            };
        }
        _ => {}
    }

    let mut frame = Frame::default();
    let Some(shape) = scan(buf, version, limits, &mut frame)? else {
        if buf.len() > limits.max_frame_bytes {
            return Err(DecodeError::limit(
                Limit::FrameBytes,
                limits.max_frame_bytes,
            ));
        }
        return Ok(None);
    };
    frame.command = shape.command;
    frame.source = buf.split_to(shape.frame_len).freeze();
    frame.body = frame.source.slice(shape.body);
    Ok(Some(Item::Frame(frame)))
}

/// Where the parts of a complete frame sit in the buffer.
struct Shape {
    command: Command,
    body: Range<usize>,
    frame_len: usize,
}

/// Parses a frame at the start of `input` (which is not a heart-beat). `Ok(None)` means
/// incomplete.
fn scan(
    input: &[u8],
    version: Version,
    limits: &Limits,
    frame: &mut Frame,
) -> Result<Option<Shape>> {
    let Some((mut rest, command_line)) = done(command_line(input))? else {
        let partial = strip_cr(input);
        if !COMMANDS.iter().any(|c| c.as_bytes().starts_with(partial)) {
            return Err(DecodeError::malformed("unknown command"));
        }
        return Ok(None);
    };
    let command = Command::from_bytes(strip_cr(command_line))
        .ok_or(DecodeError::malformed("unknown command"))?;
    let escaping = version > Version::V1_0 && command.escapes_headers();

    let mut content_length = None;
    loop {
        let offset = input.len() - rest.len();
        let Some((next, line)) = done(header_line(rest))? else {
            if rest.len() > limits.max_header_line {
                return Err(DecodeError::limit(
                    Limit::HeaderLine,
                    limits.max_header_line,
                ));
            }
            return Ok(None);
        };
        rest = next;
        if line.len == 0 {
            break;
        }
        if line.len > limits.max_header_line {
            return Err(DecodeError::limit(
                Limit::HeaderLine,
                limits.max_header_line,
            ));
        }
        if frame.entries.len() == limits.max_headers {
            return Err(DecodeError::limit(Limit::HeaderCount, limits.max_headers));
        }
        let text = &input[offset..offset + line.len];
        // CR only ever ends a line; inside a header it must be escaped (1.2) or absent.
        if memchr::memchr(b'\r', text).is_some() {
            return Err(DecodeError::malformed("CR inside a header line"));
        }
        let colon = match line.colon {
            Some(0) => return Err(DecodeError::malformed("empty header name")),
            Some(c) if c < line.len => c,
            _ => return Err(DecodeError::malformed("header line without a colon")),
        };
        if !line.ascii && std::str::from_utf8(text).is_err() {
            return Err(DecodeError::malformed("header is not valid UTF-8"));
        }
        let escaped = escaping && line.backslash;
        if escaped {
            check_escapes(text, version)?;
        }
        let (name, value) = (&text[..colon], &text[colon + 1..]);
        if content_length.is_none() && name == b"content-length" {
            let n = parse_content_length(value)?;
            if n > limits.max_body_bytes {
                return Err(DecodeError::limit(Limit::BodyBytes, limits.max_body_bytes));
            }
            content_length = Some(n);
        }
        let entry = if escaped {
            Entry {
                name: frame.own(&unescape(name, version)?),
                value: frame.own(&unescape(value, version)?),
            }
        } else {
            let span = |start, end| Span {
                start,
                end,
                owned: false,
            };
            Entry {
                name: span(offset, offset + colon),
                value: span(offset + colon + 1, offset + line.len),
            }
        };
        frame.entries.push(entry);
    }

    let body_start = input.len() - rest.len();
    if body_start >= limits.max_frame_bytes {
        return Err(DecodeError::limit(
            Limit::FrameBytes,
            limits.max_frame_bytes,
        ));
    }
    let body_len = match content_length {
        Some(n) => {
            if body_start + n + 1 > limits.max_frame_bytes {
                return Err(DecodeError::limit(
                    Limit::FrameBytes,
                    limits.max_frame_bytes,
                ));
            }
            if n > 0 && !command.allows_body() {
                return Err(body_not_allowed(command));
            }
            match sized_body(n, rest) {
                Ok(_) => n,
                Err(nom::Err::Incomplete(_)) => return Ok(None),
                Err(_) => {
                    return Err(DecodeError::malformed(
                        "body not terminated by NUL after content-length bytes",
                    ));
                }
            }
        }
        None => match memchr::memchr(0, rest) {
            Some(n) => {
                if n > limits.max_body_bytes {
                    return Err(DecodeError::limit(Limit::BodyBytes, limits.max_body_bytes));
                }
                if n > 0 && !command.allows_body() {
                    return Err(body_not_allowed(command));
                }
                n
            }
            None => {
                if rest.len() > limits.max_body_bytes {
                    return Err(DecodeError::limit(Limit::BodyBytes, limits.max_body_bytes));
                }
                if !rest.is_empty() && !command.allows_body() {
                    return Err(body_not_allowed(command));
                }
                return Ok(None);
            }
        },
    };
    let frame_len = body_start + body_len + 1;
    if frame_len > limits.max_frame_bytes {
        return Err(DecodeError::limit(
            Limit::FrameBytes,
            limits.max_frame_bytes,
        ));
    }
    Ok(Some(Shape {
        command,
        body: body_start..body_start + body_len,
        frame_len,
    }))
}

const COMMANDS: [&str; 15] = {
    let mut names = [""; 15];
    let mut i = 0;
    while i < 15 {
        names[i] = Command::ALL[i].as_str();
        i += 1;
    }
    names
};

fn body_not_allowed(command: Command) -> DecodeError {
    DecodeError::Malformed(Cow::Owned(format!("{command} frame must not have a body")))
}

/// The command line, up to and without its LF (streaming: incomplete without an LF).
fn command_line(input: &[u8]) -> IResult<&[u8], &[u8]> {
    terminated(take_till(|b| b == b'\n'), tag(&b"\n"[..])).parse(input)
}

/// What one pass over a header line found.
#[derive(Debug, Clone, Copy)]
struct Line {
    /// Length without the EOL (LF or CRLF).
    len: usize,
    colon: Option<usize>,
    backslash: bool,
    ascii: bool,
}

/// One header line: finds its end, its first colon, whether it holds a backslash and
/// whether it is plain ASCII (streaming: incomplete without an LF). `input` runs on past
/// the line, so the vectorised search pays off.
fn header_line(input: &[u8]) -> IResult<&[u8], Line> {
    let mut colon = None;
    let mut backslash = false;
    let mut pos = 0;
    while let Some(i) = memchr::memchr3(b'\n', b':', b'\\', &input[pos..]) {
        let at = pos + i;
        pos = at + 1;
        match input[at] {
            b'\n' => {
                let len = if at > 0 && input[at - 1] == b'\r' {
                    at - 1
                } else {
                    at
                };
                let line = Line {
                    len,
                    colon,
                    backslash,
                    ascii: input[..len].is_ascii(),
                };
                return Ok((&input[pos..], line));
            }
            b':' => {
                colon.get_or_insert(at);
            }
            _ => backslash = true,
        }
    }
    Err(nom::Err::Incomplete(nom::Needed::Unknown))
}

/// A body of exactly `n` bytes and its NUL.
fn sized_body(n: usize, input: &[u8]) -> IResult<&[u8], &[u8]> {
    terminated(take(n), tag(&b"\0"[..])).parse(input)
}

/// `Ok(None)` for incomplete input.
fn done<O>(r: IResult<&[u8], O>) -> Result<Option<(&[u8], O)>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(nom::Err::Incomplete(_)) => Ok(None),
        Err(_) => Err(DecodeError::malformed("bad line")),
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn parse_content_length(value: &[u8]) -> Result<usize> {
    let invalid = || DecodeError::malformed("invalid content-length");
    if value.is_empty() || value.len() > 19 {
        return Err(invalid());
    }
    value.iter().try_fold(0usize, |n, &b| {
        if b.is_ascii_digit() {
            Ok(n * 10 + usize::from(b - b'0'))
        } else {
            Err(invalid())
        }
    })
}

fn escape_target(b: u8, version: Version) -> Option<u8> {
    match b {
        b'n' => Some(b'\n'),
        b'c' => Some(b':'),
        b'\\' => Some(b'\\'),
        b'r' if version >= Version::V1_2 => Some(b'\r'),
        _ => None,
    }
}

fn check_escapes(raw: &[u8], version: Version) -> Result<()> {
    let mut rest = raw;
    while let Some(i) = memchr::memchr(b'\\', rest) {
        match rest.get(i + 1) {
            Some(&b) if escape_target(b, version).is_some() => rest = &rest[i + 2..],
            _ => {
                return Err(DecodeError::malformed(
                    "undefined escape sequence in header",
                ));
            }
        }
    }
    Ok(())
}

fn unescape(raw: &[u8], version: Version) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut iter = raw.iter();
    while let Some(&b) = iter.next() {
        if b == b'\\' {
            let target = iter.next().and_then(|&e| escape_target(e, version)).ok_or(
                DecodeError::malformed("undefined escape sequence in header"),
            )?;
            out.push(target);
        } else {
            out.push(b);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
