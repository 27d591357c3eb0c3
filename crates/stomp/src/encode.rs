//! The encoder: writes frames straight into the caller's buffer.

use bytes::{BufMut, BytesMut};

use crate::frame::{Command, Frame, Version};

/// A frame this version cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{0} frame must not have a body")]
    BodyNotAllowed(Command),
    #[error("empty header name")]
    EmptyHeaderName,
    #[error("header {name:?} cannot be written unescaped in STOMP {version} {command}")]
    Unrepresentable {
        name: String,
        version: Version,
        command: Command,
    },
}

/// Writes `frame` into `dst` with the header escaping of `version`.
///
/// `content-length` is always written true: a `content-length` header of the frame gets
/// the body's length, and a frame with a body but no such header gets one appended, so
/// bodies may hold NULs. Nothing is allocated per header; `dst` grows at most once
/// for a frame without escapes.
pub fn encode(frame: &Frame, version: Version, dst: &mut BytesMut) -> Result<(), EncodeError> {
    let command = frame.command;
    if !frame.body.is_empty() && !command.allows_body() {
        return Err(EncodeError::BodyNotAllowed(command));
    }
    let escape = if command.escapes_headers() {
        Escape::for_version(version)
    } else {
        Escape::None
    };

    // Enough for every header unescaped (a decoded frame's source holds its lines).
    let lines = frame.text.len() + frame.source.len() + 2 * frame.entries.len();
    dst.reserve(command.as_str().len() + lines + frame.body.len() + 40);

    dst.put_slice(command.as_str().as_bytes());
    dst.put_u8(b'\n');
    let mut wrote_length = false;
    for (name, value) in frame.headers() {
        if name.is_empty() {
            return Err(EncodeError::EmptyHeaderName);
        }
        let unrepresentable = || EncodeError::Unrepresentable {
            name: String::from_utf8_lossy(name).into_owned(),
            version,
            command,
        };
        if !wrote_length && name == b"content-length" {
            wrote_length = true;
            put_content_length(dst, frame.body.len());
            continue;
        }
        escape.put(dst, name, true).ok_or_else(unrepresentable)?;
        dst.put_u8(b':');
        escape.put(dst, value, false).ok_or_else(unrepresentable)?;
        dst.put_u8(b'\n');
    }
    if !wrote_length && !frame.body.is_empty() {
        put_content_length(dst, frame.body.len());
    }
    dst.put_u8(b'\n');
    dst.put_slice(&frame.body);
    dst.put_u8(0);
    Ok(())
}

fn put_content_length(dst: &mut BytesMut, len: usize) {
    dst.put_slice(b"content-length:");
    put_decimal(dst, len);
    dst.put_u8(b'\n');
}

/// Writes `n` in decimal without going through `fmt`.
pub(crate) fn put_decimal(dst: &mut BytesMut, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    dst.put_slice(&digits[i..]);
}

/// Bytes that need escaping: bit 1 in STOMP 1.1, bit 2 in 1.2.
const SPECIAL: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b'\n' as usize] = 3;
    t[b':' as usize] = 3;
    t[b'\\' as usize] = 3;
    t[b'\r' as usize] = 2;
    t
};

#[derive(Clone, Copy)]
enum Escape {
    /// STOMP 1.0 and the CONNECT family: nothing is escaped.
    None,
    /// STOMP 1.1: `\n`, `\c`, `\\`.
    V11,
    /// STOMP 1.2: also `\r`.
    V12,
}

impl Escape {
    fn for_version(version: Version) -> Escape {
        match version {
            Version::V1_0 => Escape::None,
            Version::V1_1 => Escape::V11,
            Version::V1_2 => Escape::V12,
        }
    }

    /// The bit of [`SPECIAL`] that marks bytes this escaping rewrites.
    fn mask(self) -> u8 {
        match self {
            Escape::None => 0,
            Escape::V11 => 1,
            Escape::V12 => 2,
        }
    }

    /// Eight bytes at a time: most names and values need nothing.
    fn needs_escape(self, text: &[u8]) -> bool {
        const LO: u64 = 0x0101_0101_0101_0101;
        const HI: u64 = 0x8080_8080_8080_8080;
        // Non-zero when some byte of `x` equals `b` (exact for "any").
        fn has(x: u64, b: u8) -> u64 {
            let y = x ^ (LO * u64::from(b));
            y.wrapping_sub(LO) & !y & HI
        }
        let cr = matches!(self, Escape::V12);
        let mut chunks = text.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let x = u64::from_le_bytes(word);
            let mut hit = has(x, b'\n') | has(x, b':') | has(x, b'\\');
            if cr {
                hit |= has(x, b'\r');
            }
            if hit != 0 {
                return true;
            }
        }
        let mask = self.mask();
        chunks
            .remainder()
            .iter()
            .any(|&b| SPECIAL[usize::from(b)] & mask != 0)
    }

    /// Writes one name or value; `None` when it cannot be represented.
    fn put(self, dst: &mut BytesMut, text: &[u8], is_name: bool) -> Option<()> {
        if let Escape::None = self {
            // Lines split on the first colon and end at LF; CR may only end a line.
            let bad_colon = is_name && text.contains(&b':');
            if bad_colon || text.contains(&b'\n') || text.contains(&b'\r') {
                return None;
            }
            dst.put_slice(text);
            return Some(());
        }
        if let Escape::V11 = self {
            // 1.1 has no escape for CR, and CR may only end a line.
            if text.contains(&b'\r') {
                return None;
            }
        }
        if !self.needs_escape(text) {
            dst.put_slice(text);
            return Some(());
        }
        let mask = self.mask();
        let mut rest = text;
        while let Some(i) = rest
            .iter()
            .position(|&b| SPECIAL[usize::from(b)] & mask != 0)
        {
            dst.put_slice(&rest[..i]);
            dst.put_slice(match rest[i] {
                b'\n' => b"\\n",
                b':' => b"\\c",
                b'\\' => b"\\\\",
                _ => b"\\r",
            });
            rest = &rest[i + 1..];
        }
        dst.put_slice(rest);
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;

    fn enc(frame: &Frame, version: Version) -> Result<String, EncodeError> {
        let mut buf = BytesMut::new();
        encode(frame, version, &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    #[test]
    fn writes_message_with_content_length() {
        let f = Frame::new(Command::Message)
            .header("destination", "/topic/a")
            .header("message-id", "0-1")
            .body("hello");
        assert_eq!(
            enc(&f, Version::V1_2).unwrap(),
            "MESSAGE\ndestination:/topic/a\nmessage-id:0-1\ncontent-length:5\n\nhello\0"
        );
    }

    #[test]
    fn replaces_a_wrong_content_length() {
        let f = Frame::new(Command::Send)
            .header("content-length", "99")
            .header("destination", "/q")
            .body("ab");
        assert_eq!(
            enc(&f, Version::V1_2).unwrap(),
            "SEND\ncontent-length:2\ndestination:/q\n\nab\0"
        );
    }

    #[test]
    fn escapes_by_version() {
        let f = Frame::new(Command::Message).header("k:1", "a\nb:c\\d\re");
        assert_eq!(
            enc(&f, Version::V1_2).unwrap(),
            "MESSAGE\nk\\c1:a\\nb\\cc\\\\d\\re\n\n\0"
        );
        assert!(enc(&f, Version::V1_1).is_err(), "1.1 cannot carry a CR");
        let f11 = Frame::new(Command::Message).header("k:1", "a\nb:c\\d");
        assert_eq!(
            enc(&f11, Version::V1_1).unwrap(),
            "MESSAGE\nk\\c1:a\\nb\\cc\\\\d\n\n\0"
        );
        assert!(matches!(
            enc(&f, Version::V1_0),
            Err(EncodeError::Unrepresentable { .. })
        ));
    }

    #[test]
    fn connect_family_is_never_escaped() {
        let f = Frame::new(Command::Connect).header("passcode", "a:b\\c");
        assert_eq!(
            enc(&f, Version::V1_2).unwrap(),
            "CONNECT\npasscode:a:b\\c\n\n\0"
        );
        let f = Frame::new(Command::Connected).header("x", "a\nb");
        assert!(enc(&f, Version::V1_2).is_err());
    }

    #[test]
    fn refuses_body_where_not_allowed() {
        let f = Frame::new(Command::Subscribe).body("x");
        assert_eq!(
            enc(&f, Version::V1_2),
            Err(EncodeError::BodyNotAllowed(Command::Subscribe))
        );
        let f = Frame::new(Command::Send).header("", "x");
        assert_eq!(enc(&f, Version::V1_2), Err(EncodeError::EmptyHeaderName));
    }

    #[test]
    fn decimal() {
        for n in [0usize, 7, 10, 12345, usize::MAX] {
            let mut b = BytesMut::new();
            put_decimal(&mut b, n);
            assert_eq!(&b[..], n.to_string().as_bytes());
        }
    }
}
