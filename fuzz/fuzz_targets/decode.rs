//! Feeds arbitrary bytes to the decoder in arbitrary chunks, with small limits so that
//! every limit is reached. Checks: no panic, the buffer never holds more than a frame's
//! limit plus one chunk, and every decoded frame re-encodes and decodes to itself
//! (but for `content-length`, which the encoder writes true).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pushcenter_stomp::{Item, Limits, Version, decode_version, encode};

fuzz_target!(|data: &[u8]| {
    let Some((&control, data)) = data.split_first() else {
        return;
    };
    let version = Version::ALL[usize::from(control % 3)];
    let chunk = usize::from(control / 3 % 64) + 1;
    let limits = Limits {
        max_frame_bytes: 512,
        max_headers: 8,
        max_header_line: 128,
        max_body_bytes: 256,
    };
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decode_version(&mut buf, version, &limits) {
                Ok(Some(Item::Frame(frame))) => {
                    // Whatever was decoded can be written back in the same version.
                    let mut out = BytesMut::new();
                    assert!(encode(&frame, version, &mut out).is_ok(), "{frame:?}");
                    // Re-encoding may add a content-length line, which can pass a limit.
                    let roomy = Limits::default();
                    let Ok(Some(Item::Frame(back))) = decode_version(&mut out, version, &roomy)
                    else {
                        panic!("re-encoded frame does not decode: {frame:?}");
                    };
                    let not_length = |h: &(&[u8], &[u8])| h.0 != b"content-length";
                    assert_eq!(back.command, frame.command);
                    assert_eq!(back.body, frame.body);
                    assert!(back.headers().filter(not_length).eq(frame.headers().filter(not_length)));
                }
                Ok(Some(Item::HeartBeat)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buf.len() <= limits.max_frame_bytes + chunk);
    }
});
