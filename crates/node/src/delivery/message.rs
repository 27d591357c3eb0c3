//! The part of a MESSAGE every subscriber shares, encoded once per STOMP version.

use bytes::{Bytes, BytesMut};
use pushcenter_stomp::{Command, Frame, Version, encode};

use crate::bus::{Delivery, RequestInfo};

/// The part of a MESSAGE that every subscriber shares: every header but `subscription`
/// and `ack`, the body and the NUL, encoded once per STOMP version that needs its own.
#[derive(Debug)]
pub(crate) struct Shared {
    id: String,
    /// STOMP 1.2: every header value as it is, escaped.
    escaped: Bytes,
    /// STOMP 1.1 when it differs (1.1 has no escape for CR: CR becomes a space).
    v11: Option<Bytes>,
    /// STOMP 1.0, with CR and LF in values as spaces; `None` when 1.0 cannot carry the
    /// headers at all.
    plain: Option<Bytes>,
    /// Whether each is UTF-8 (then it goes out as a WebSocket text message).
    escaped_text: bool,
    v11_text: bool,
    plain_text: bool,
    /// Set when the message is a request: who may answer it, and until when it may
    /// be delivered.
    request: Option<Box<RequestInfo>>,
    /// When it was published (unix µs, 0: not known).
    at_us: u64,
}

const PREFIX: &[u8] = b"MESSAGE\n";

impl Shared {
    pub(crate) fn new(d: &Delivery) -> Option<Shared> {
        let r = &d.record;
        let frame = |rewrite: fn(&str) -> std::borrow::Cow<'_, str>| {
            let mut frame = Frame::new(Command::Message)
                .header("destination", &r.destination)
                .header("message-id", &d.id);
            for (k, v) in &r.headers {
                frame.push_header(k, rewrite(v).as_ref());
            }
            frame.body(r.body.clone())
        };
        let encoded = |frame: &Frame, v| {
            let mut buf = BytesMut::new();
            encode(frame, v, &mut buf).ok()?;
            Some(buf.freeze().slice(PREFIX.len()..))
        };
        let lossless = frame(|v| std::borrow::Cow::Borrowed(v));
        let escaped = encoded(&lossless, Version::V1_2)?;
        let has = |c: char| r.headers.iter().any(|(_, v)| v.contains(c));
        let (cr, lf) = (has('\r'), has('\n'));
        let v11 = if cr {
            let f = frame(|v| std::borrow::Cow::Owned(v.replace('\r', " ")));
            encoded(&f, Version::V1_1)
        } else {
            None
        };
        let plain = if cr || lf {
            encoded(
                &frame(|v| std::borrow::Cow::Owned(crate::bus::sanitize(v))),
                Version::V1_0,
            )
        } else {
            match encoded(&lossless, Version::V1_0) {
                Some(p) if p == escaped => Some(escaped.clone()),
                other => other,
            }
        };
        let utf8 = |b: &[u8]| std::str::from_utf8(b).is_ok();
        Some(Shared {
            request: r.request().map(Box::new),
            at_us: r.at_us,
            id: d.id.clone(),
            escaped_text: utf8(&escaped),
            v11_text: v11.as_deref().is_some_and(utf8),
            plain_text: plain.as_deref().is_some_and(utf8),
            escaped,
            v11,
            plain,
        })
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn len(&self) -> usize {
        self.escaped.len()
    }

    pub(crate) fn request(&self) -> Option<&RequestInfo> {
        self.request.as_deref()
    }

    /// When it was published (unix ms, 0: not known).
    pub(crate) fn at_us(&self) -> u64 {
        self.at_us
    }

    /// The bytes that follow this connection's `subscription`/`ack` headers, and
    /// whether they are UTF-8.
    pub(crate) fn for_version(&self, v: Version) -> Option<(&Bytes, bool)> {
        match v {
            Version::V1_0 => self.plain.as_ref().map(|p| (p, self.plain_text)),
            Version::V1_1 => match &self.v11 {
                Some(b) => Some((b, self.v11_text)),
                None => Some((&self.escaped, self.escaped_text)),
            },
            Version::V1_2 => Some((&self.escaped, self.escaped_text)),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};
    use pushcenter_stomp::Version;

    use super::*;

    #[test]
    fn headers_reach_each_version_as_losslessly_as_it_can_carry_them() {
        use crate::bus::Record;
        let d = Delivery {
            id: "0-7".into(),
            record: Record {
                destination: "/topic/t".into(),
                headers: vec![("note".into(), "a:b\\c\nd\re".into())],
                body: Bytes::from_static(b"x"),
                ..Record::default()
            },
        };
        let shared = Shared::new(&d).expect("encodable");
        let note = |v: Version| {
            let (bytes, _) = shared.for_version(v).expect("sendable");
            let mut b = BytesMut::from(&b"MESSAGE\nsubscription:s\n"[..]);
            b.extend_from_slice(bytes);
            let limits = pushcenter_stomp::Limits::default();
            match pushcenter_stomp::decode_version(&mut b, v, &limits) {
                Ok(Some(pushcenter_stomp::Item::Frame(f))) => f.get("note").map(str::to_owned),
                other => panic!("{v:?}: {other:?}"),
            }
        };
        assert_eq!(note(Version::V1_2).as_deref(), Some("a:b\\c\nd\re"));
        assert_eq!(note(Version::V1_1).as_deref(), Some("a:b\\c\nd e"));
        assert_eq!(note(Version::V1_0).as_deref(), Some("a:b\\c d e"));
    }
}
