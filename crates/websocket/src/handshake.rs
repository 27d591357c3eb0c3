//! The opening handshake's one computation (RFC 6455 4.2.2).

use base64::Engine;
use sha1::{Digest, Sha1};

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Whether a client's `Sec-WebSocket-Key` is what RFC 6455 4.1 asks for: 16 bytes in
/// base64.
pub fn valid_key(key: &[u8]) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|k| k.len() == 16)
}

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_key_is_16_bytes_in_base64() {
        assert!(super::valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!super::valid_key(b"not base64!"));
        assert!(!super::valid_key(b"MTIzNDU2Nzg5MDEyMzQ1"));
        assert!(!super::valid_key(b"MTIzNDU2Nzg5MDEyMzQ1Njc="));
    }

    #[test]
    fn the_rfc_example() {
        // RFC 6455 1.3.
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
