//! The client side of WebSocket framing (RFC 6455), sans-IO: enough for a load generator
//! that reads server frames straight from its socket buffer instead of allocating one
//! message per frame.

use bytes::{BufMut, BytesMut};

pub(crate) const CONTINUATION: u8 = 0x0;
pub(crate) const TEXT: u8 = 0x1;
pub(crate) const BINARY: u8 = 0x2;
pub(crate) const CLOSE: u8 = 0x8;
pub(crate) const PING: u8 = 0x9;
pub(crate) const PONG: u8 = 0xA;

/// No server frame the bench expects is anywhere near this; a larger length is a broken
/// stream, not a reason to buffer.
const MAX_PAYLOAD: u64 = 16 << 20;

/// One frame's header, parsed from the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) opcode: u8,
    /// Bytes before the payload (2 to 14).
    pub(crate) header_len: usize,
    pub(crate) payload_len: usize,
    pub(crate) mask: Option<[u8; 4]>,
}

impl Head {
    pub(crate) fn total(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Parses a frame header at the start of `buf`: `Ok(None)` until the header is complete
/// (the payload may still be short; compare `total()` with the buffer).
pub(crate) fn head(buf: &[u8]) -> Result<Option<Head>, &'static str> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err("WebSocket frame with reserved bits set");
    }
    let opcode = b0 & 0x0F;
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            (u64::from_be_bytes(a), 10)
        }
        n => (u64::from(n), 2),
    };
    if len > MAX_PAYLOAD {
        return Err("WebSocket frame too large");
    }
    let mask = if masked {
        let Some(m) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    Ok(Some(Head {
        opcode,
        header_len: at,
        payload_len: len as usize,
        mask,
    }))
}

/// XORs `data` with a frame's mask (servers do not mask, but the RFC allows reading one).
pub(crate) fn unmask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Appends one final client frame (clients must mask) carrying `payload`.
pub(crate) fn put_frame(dst: &mut BytesMut, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    dst.reserve(payload.len() + 14);
    dst.put_u8(0x80 | opcode);
    match payload.len() {
        n if n < 126 => dst.put_u8(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            dst.put_u8(0x80 | 126);
            dst.put_u16(n as u16);
        }
        n => {
            dst.put_u8(0x80 | 127);
            dst.put_u64(n as u64);
        }
    }
    dst.put_slice(&mask);
    let start = dst.len();
    dst.put_slice(payload);
    unmask(&mut dst[start..], mask);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_three_length_forms_and_waits_for_a_whole_header() {
        assert_eq!(head(&[0x82]), Ok(None));
        let h = head(&[0x81, 5, b'h']).unwrap().unwrap();
        assert_eq!((h.opcode, h.header_len, h.payload_len), (TEXT, 2, 5));
        assert_eq!(head(&[0x82, 126, 1]), Ok(None));
        let h = head(&[0x02, 126, 1, 0]).unwrap().unwrap();
        assert_eq!((h.opcode, h.header_len, h.payload_len), (BINARY, 4, 256));
        let mut long = vec![0x82, 127];
        long.extend_from_slice(&70_000u64.to_be_bytes());
        let h = head(&long).unwrap().unwrap();
        assert_eq!((h.header_len, h.total()), (10, 70_010));
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(head(&huge).is_err());
    }

    #[test]
    fn a_client_frame_is_masked_and_reads_back() {
        for n in [0usize, 5, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let mut b = BytesMut::new();
            put_frame(&mut b, BINARY, &payload, [1, 2, 3, 4]);
            let h = head(&b).unwrap().unwrap();
            assert_eq!((h.opcode, h.payload_len, h.total()), (BINARY, n, b.len()));
            let mut got = b[h.header_len..].to_vec();
            unmask(&mut got, h.mask.unwrap());
            assert_eq!(got, payload);
        }
    }
}
