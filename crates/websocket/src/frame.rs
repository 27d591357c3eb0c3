//! Frame headers (RFC 6455 5.2), opcodes, close codes and masking.

use bytes::{BufMut, BytesMut};

pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// Close code 1000: normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code 1002: protocol error.
pub const CLOSE_PROTOCOL: u16 = 1002;
/// Close code 1007: a text message (or close reason) that is not UTF-8.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code 1009: a message over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code 1012: service restart (reconnect elsewhere).
pub const CLOSE_RESTART: u16 = 1012;

// The functions here run once per frame on the node's hot paths, from another crate:
// `#[inline]` lets them be inlined there without LTO.

/// Close codes a peer may send (RFC 6455 7.4.1, 7.4.2; 1012-1014 are registered since).
#[inline]
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// One frame's header, parsed from the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub fin: bool,
    /// RSV1-3 as the top bits of the first byte (0 unless an extension was negotiated).
    pub rsv: u8,
    pub opcode: u8,
    /// Bytes before the payload (2 to 14).
    pub header_len: usize,
    /// As the frame claims it: check it against a limit before buffering.
    pub payload_len: u64,
    pub mask: Option<[u8; 4]>,
}

impl Head {
    /// Header and payload bytes, when the payload length fits in memory.
    pub fn total(&self) -> Option<usize> {
        usize::try_from(self.payload_len)
            .ok()?
            .checked_add(self.header_len)
    }
}

/// Parses the frame header at the start of `buf`: `None` until the header is complete
/// (the payload may still be short). Nothing is checked here but the shape.
#[inline]
pub fn head(buf: &[u8]) -> Option<Head> {
    let [b0, b1, ..] = *buf else {
        return None;
    };
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            let b = buf.get(2..4)?;
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        127 => {
            let b = buf.get(2..10)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            (u64::from_be_bytes(a), 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = if b1 & 0x80 != 0 {
        let m = buf.get(at..at + 4)?;
        at += 4;
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    Some(Head {
        fin: b0 & 0x80 != 0,
        rsv: b0 & 0x70,
        opcode: b0 & 0x0F,
        header_len: at,
        payload_len: len,
        mask,
    })
}

/// Appends a frame header for `len` payload bytes, in the shortest length encoding;
/// masked (a client's frame) when `mask` is given. The caller appends the payload (and
/// masks it with [`unmask`], which is its own inverse).
#[inline]
pub fn put_header(out: &mut BytesMut, fin: bool, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    out.reserve(len + 14);
    out.put_u8(if fin { 0x80 } else { 0 } | opcode);
    let m = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.put_u8(m | len as u8);
    } else if let Ok(n) = u16::try_from(len) {
        out.put_u8(m | 126);
        out.put_u16(n);
    } else {
        out.put_u8(m | 127);
        out.put_u64(len as u64);
    }
    if let Some(k) = mask {
        out.put_slice(&k);
    }
}

/// Appends one whole final frame carrying `payload`, masked when `mask` is given.
#[inline]
pub fn put_frame(out: &mut BytesMut, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    put_header(out, true, opcode, payload.len(), mask);
    let start = out.len();
    out.put_slice(payload);
    if let Some(k) = mask {
        unmask(&mut out[start..], k);
    }
}

/// XORs `data` with a masking key, four bytes at a time.
#[inline]
pub fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let m = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ m;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(mask) {
        *b ^= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_use_the_shortest_length_encoding_and_read_back() {
        for (len, size) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let mut out = BytesMut::new();
            put_header(&mut out, true, TEXT, len, None);
            assert_eq!(out.len(), size, "{len}");
            assert_eq!(out[0], 0x81);
            let h = head(&out).unwrap();
            assert_eq!(
                (h.header_len, h.payload_len, h.mask),
                (size, len as u64, None)
            );
        }
        assert_eq!(head(&[0x82]), None);
        assert_eq!(head(&[0x82, 126, 1]), None);
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(head(&huge).unwrap().payload_len, u64::MAX);
    }

    #[test]
    fn a_masked_frame_reads_back() {
        for n in [0usize, 5, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let mut b = BytesMut::new();
            put_frame(&mut b, BINARY, &payload, Some([1, 2, 3, 4]));
            let h = head(&b).unwrap();
            assert_eq!((h.opcode, h.total()), (BINARY, Some(b.len())));
            let mut got = b[h.header_len..].to_vec();
            unmask(&mut got, h.mask.unwrap());
            assert_eq!(got, payload);
        }
    }
}
