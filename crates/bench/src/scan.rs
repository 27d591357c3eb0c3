//! A STOMP frame scanner for the fan-out read path: finds where a frame ends and, for a
//! MESSAGE, where its body is, without building a `Frame`. It honours `content-length`
//! (the first one, as STOMP 1.2 says of repeated headers) and otherwise ends the body at
//! the NUL; EOLs between frames are heart-beats.

use std::ops::Range;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scanned {
    /// Need more bytes.
    Incomplete,
    /// A whole frame (or a heart-beat) of `len` bytes at the start of the buffer; the
    /// body's range when it is a MESSAGE.
    Frame {
        len: usize,
        message_body: Option<Range<usize>>,
        /// The command, when it is neither MESSAGE nor a heart-beat (an ERROR to report).
        other: bool,
    },
}

/// Header section limit: a server frame with more is broken, not a reason to buffer.
const MAX_HEAD: usize = 64 * 1024;

pub(crate) fn scan(buf: &[u8]) -> Result<Scanned, &'static str> {
    match buf {
        [] => return Ok(Scanned::Incomplete),
        [b'\n', ..] => return Ok(heart_beat(1)),
        [b'\r'] => return Ok(Scanned::Incomplete),
        [b'\r', b'\n', ..] => return Ok(heart_beat(2)),
        _ => {}
    }
    // The header section ends at the first empty line.
    let mut line_start = 0;
    let mut command_end = None;
    let mut content_length: Option<usize> = None;
    let body_start = loop {
        let Some(nl) = memchr::memchr(b'\n', &buf[line_start..]) else {
            if buf.len() > MAX_HEAD {
                return Err("STOMP header section too large");
            }
            return Ok(Scanned::Incomplete);
        };
        let end = line_start + nl;
        let line = trim_cr(&buf[line_start..end]);
        if command_end.is_none() {
            command_end = Some(line.len());
        } else if line.is_empty() {
            break end + 1;
        } else if content_length.is_none() {
            if let Some(v) = line.strip_prefix(b"content-length:") {
                content_length = Some(decimal(v).ok_or("bad content-length")?);
            }
        }
        line_start = end + 1;
    };
    let command = &buf[..command_end.unwrap_or(0)];
    let body_end = match content_length {
        Some(n) => {
            let Some(&nul) = buf.get(body_start + n) else {
                return Ok(Scanned::Incomplete);
            };
            if nul != 0 {
                return Err("STOMP body longer than its content-length");
            }
            body_start + n
        }
        None => match memchr::memchr(0, &buf[body_start..]) {
            Some(i) => body_start + i,
            None => return Ok(Scanned::Incomplete),
        },
    };
    let message = command == b"MESSAGE";
    Ok(Scanned::Frame {
        len: body_end + 1,
        message_body: message.then_some(body_start..body_end),
        other: !message,
    })
}

fn heart_beat(len: usize) -> Scanned {
    Scanned::Frame {
        len,
        message_body: None,
        other: false,
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn decimal(v: &[u8]) -> Option<usize> {
    if v.is_empty() || v.len() > 12 {
        return None;
    }
    v.iter().try_fold(0usize, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + usize::from(b - b'0'))
    })
}

/// The unix-µs timestamp the publisher wrote at the start of the body (digits, then any
/// padding).
pub(crate) fn leading_micros(body: &[u8]) -> u64 {
    body.iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |n, &b| {
            n.wrapping_mul(10).wrapping_add(u64::from(b - b'0'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use pushcenter_stomp::{Command, Frame, Version, encode};

    fn frame(len: usize, body: Option<Range<usize>>) -> Scanned {
        Scanned::Frame {
            len,
            other: body.is_none(),
            message_body: body,
        }
    }

    #[test]
    fn finds_the_body_of_a_message_the_codec_wrote_at_every_split() {
        let mut b = BytesMut::new();
        let body = b"1700000000000000 xxxx\0with a NUL";
        encode(
            &Frame::new(Command::Message)
                .header("destination", "/topic/bench.0")
                .header("message-id", "n-1")
                .header("subscription", "0")
                .body(&body[..]),
            Version::V1_2,
            &mut b,
        )
        .unwrap();
        let whole = scan(&b).unwrap();
        let Scanned::Frame {
            len,
            message_body: Some(r),
            other: false,
        } = whole
        else {
            panic!("{whole:?}");
        };
        assert_eq!((len, &b[r.clone()]), (b.len(), &body[..]));
        assert_eq!(leading_micros(&b[r]), 1_700_000_000_000_000);
        for cut in 0..b.len() {
            assert_eq!(scan(&b[..cut]), Ok(Scanned::Incomplete), "cut at {cut}");
        }
    }

    #[test]
    fn without_content_length_the_body_ends_at_the_nul_and_crlf_lines_are_read() {
        let b = b"MESSAGE\r\ndestination:/topic/a\r\n\r\n123\0\n";
        assert_eq!(scan(b), Ok(frame(b.len() - 1, Some(33..36))));
        assert_eq!(scan(b"\n"), Ok(frame(1, None).no_other()));
        assert_eq!(scan(b"\r\nMESSAGE"), Ok(frame(2, None).no_other()));
    }

    #[test]
    fn other_frames_are_skipped_and_a_lying_length_is_an_error() {
        let receipt = b"RECEIPT\nreceipt-id:0\n\n\0";
        assert_eq!(scan(receipt), Ok(frame(receipt.len(), None)));
        assert!(scan(b"MESSAGE\ncontent-length:2\n\nabc\0").is_err());
        assert!(scan(b"MESSAGE\ncontent-length:x\n\n\0").is_err());
    }

    impl Scanned {
        fn no_other(self) -> Scanned {
            match self {
                Scanned::Frame {
                    len, message_body, ..
                } => Scanned::Frame {
                    len,
                    message_body,
                    other: false,
                },
                s => s,
            }
        }
    }
}
