//! The reader against RFC 6455, case by case (the node's own conformance suite runs
//! against the real binary: crates/cli/tests/websocket_conformance.rs).

use bytes::BytesMut;
use pushcenter_websocket::frame::{
    BINARY, CLOSE, CLOSE_INVALID_DATA, CLOSE_PROTOCOL, CLOSE_TOO_BIG, CONTINUATION, PING, PONG,
    TEXT,
};
use pushcenter_websocket::{Got, Reader, put_header, unmask};

const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

/// The bytes of a client frame (masked with `mask`).
fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut b = BytesMut::new();
    put_header(&mut b, fin, opcode, payload.len(), Some(mask));
    let start = b.len();
    b.extend_from_slice(payload);
    unmask(&mut b[start..], mask);
    b.to_vec()
}

fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    put_header(&mut b, true, opcode, payload.len(), None);
    b.extend_from_slice(payload);
    b.to_vec()
}

#[test]
fn a_masked_text_frame_becomes_stream_bytes() {
    let mut r = Reader::server(1024);
    let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
    let f = client_frame(true, TEXT, b"CONNECT\n\n\0", MASK);
    assert_eq!(r.consume(&f, &mut buf, &mut out), Ok(Got::Data));
    assert_eq!(&buf[..], b"CONNECT\n\n\0");
    assert!(out.is_empty());
}

#[test]
fn any_split_of_the_input_gives_the_same_bytes() {
    let mut input = client_frame(false, TEXT, "SEND\nä".as_bytes(), MASK);
    input.extend(client_frame(true, PING, b"ping", MASK));
    input.extend(client_frame(
        true,
        CONTINUATION,
        "ö\n\n\0".as_bytes(),
        [9, 8, 7, 6],
    ));
    input.extend(client_frame(true, BINARY, &[0u8; 300], MASK));
    input.extend(client_frame(true, BINARY, &[7u8; 70_000], MASK));
    let mut want = "SEND\näö\n\n\0".as_bytes().to_vec();
    want.extend([0u8; 300]);
    want.extend([7u8; 70_000]);
    for split in [1, 2, 3, 7, 100, 4096] {
        let mut r = Reader::server(100_000);
        let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
        for chunk in input.chunks(split) {
            r.consume(chunk, &mut buf, &mut out).expect("valid input");
        }
        assert_eq!(&buf[..], &want[..], "split {split}");
        assert_eq!(&out[..], b"\x8a\x04ping", "split {split}");
        assert_eq!(r.held(), 0);
    }
}

#[test]
fn bytes_sent_with_the_handshake_are_read_first() {
    let f = client_frame(true, TEXT, b"CONNECT\n\n\0", MASK);
    let mut r = Reader::server(1024).with_pending(&f);
    let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
    assert_eq!(r.consume(&[], &mut buf, &mut out), Ok(Got::Data));
    assert_eq!(&buf[..], b"CONNECT\n\n\0");
}

#[test]
fn a_close_frame_ends_the_input_after_the_data_before_it() {
    let mut r = Reader::server(1024);
    let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
    let f = client_frame(true, CLOSE, &[0x03, 0xE8, b'b', b'y', b'e'], MASK);
    assert_eq!(r.consume(&f, &mut buf, &mut out), Ok(Got::Close));
    assert_eq!(r.closed(), Some(1000));
    // Data then the close in one read: the data first, the close on the next call.
    let mut r = Reader::server(1024);
    let mut input = client_frame(true, TEXT, b"SEND\n\n\0", MASK);
    input.extend(client_frame(true, CLOSE, &[0x03, 0xE9], MASK));
    input.extend(client_frame(true, TEXT, b"after", MASK));
    assert_eq!(r.consume(&input, &mut buf, &mut out), Ok(Got::Data));
    assert_eq!(&buf[..], b"SEND\n\n\0");
    assert_eq!(r.closed(), Some(1001));
    assert_eq!(r.consume(b"more", &mut buf, &mut out), Ok(Got::Close));
    assert_eq!(&buf[..], b"SEND\n\n\0", "nothing after the close is read");
    assert!(
        out.is_empty(),
        "the echo is the caller's to send, after the replies"
    );
}

#[test]
fn close_codes_are_checked() {
    for (code, ok) in [
        (1000, true),
        (1001, true),
        (1003, true),
        (1007, true),
        (1011, true),
        (1012, true),
        (3000, true),
        (4999, true),
        (0, false),
        (999, false),
        (1004, false),
        (1005, false),
        (1006, false),
        (1015, false),
        (1016, false),
        (2999, false),
        (5000, false),
        (65535, false),
    ] {
        let mut r = Reader::server(1024);
        let f = client_frame(true, CLOSE, &u16::to_be_bytes(code), MASK);
        let got = r.consume(&f, &mut BytesMut::new(), &mut BytesMut::new());
        if ok {
            assert_eq!(got, Ok(Got::Close), "{code}");
        } else {
            assert_eq!(got.map_err(|e| e.code), Err(CLOSE_PROTOCOL), "{code}");
        }
    }
    let mut r = Reader::server(1024);
    let f = client_frame(true, CLOSE, &[0x03, 0xE8, 0xFF], MASK);
    let got = r.consume(&f, &mut BytesMut::new(), &mut BytesMut::new());
    assert_eq!(got.map_err(|e| e.code), Err(CLOSE_INVALID_DATA));
}

#[test]
fn pings_and_pongs_are_counted() {
    let mut r = Reader::server(1024);
    let mut input = client_frame(true, PING, b"a", MASK);
    input.extend(client_frame(true, PONG, b"b", MASK));
    input.extend(client_frame(true, PING, b"c", MASK));
    let mut out = BytesMut::new();
    assert_eq!(
        r.consume(&input, &mut BytesMut::new(), &mut out),
        Ok(Got::Nothing)
    );
    assert_eq!(r.take_controls(), 3);
    assert_eq!(r.controls(), 0);
    assert_eq!(&out[..], b"\x8a\x01a\x8a\x01c");
}

#[test]
fn protocol_violations_are_refused_with_their_close_code() {
    let cases: Vec<(Vec<u8>, u16)> = vec![
        // Not masked.
        (b"\x81\x02hi".to_vec(), CLOSE_PROTOCOL),
        // Reserved bit.
        (
            {
                let mut f = client_frame(true, TEXT, b"x", MASK);
                f[0] |= 0x40;
                f
            },
            CLOSE_PROTOCOL,
        ),
        (client_frame(true, 0x3, b"x", MASK), CLOSE_PROTOCOL),
        (client_frame(true, CONTINUATION, b"x", MASK), CLOSE_PROTOCOL),
        (client_frame(false, PING, b"x", MASK), CLOSE_PROTOCOL),
        (client_frame(true, PING, &[0; 126], MASK), CLOSE_PROTOCOL),
        (
            client_frame(true, TEXT, &[0xFF, 0xFE], MASK),
            CLOSE_INVALID_DATA,
        ),
        (client_frame(true, BINARY, &[0; 65], MASK), CLOSE_TOO_BIG),
        (
            {
                let mut f = client_frame(false, TEXT, b"abc", MASK);
                f.extend(client_frame(true, TEXT, b"abc", MASK));
                f
            },
            CLOSE_PROTOCOL,
        ),
        (
            {
                let mut f = client_frame(false, BINARY, &[0; 40], MASK);
                f.extend(client_frame(true, CONTINUATION, &[0; 40], MASK));
                f
            },
            CLOSE_TOO_BIG,
        ),
    ];
    for (input, code) in cases {
        let mut r = Reader::server(64);
        let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
        let e = r.consume(&input, &mut buf, &mut out).expect_err("refused");
        assert_eq!(e.code, code, "{input:?}");
    }
}

#[test]
fn the_size_limit_is_checked_before_the_payload_arrives() {
    let mut r = Reader::server(1000);
    let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
    let f = client_frame(true, BINARY, &[0; 5000], MASK);
    // The header alone (2 + 2 length bytes) is enough to refuse it.
    let e = r.consume(&f[..4], &mut buf, &mut out).expect_err("too big");
    assert_eq!(e.code, CLOSE_TOO_BIG);
}

#[test]
fn a_utf8_sequence_split_across_fragments_is_accepted() {
    let mut r = Reader::server(1024);
    let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
    let s = "€".as_bytes();
    let mut f = client_frame(false, TEXT, &s[..1], MASK);
    f.extend(client_frame(false, CONTINUATION, &s[1..2], MASK));
    f.extend(client_frame(true, CONTINUATION, &s[2..], MASK));
    assert_eq!(r.consume(&f, &mut buf, &mut out), Ok(Got::Data));
    assert_eq!(&buf[..], s);
    // But a text message may not end inside one.
    let mut r = Reader::server(1024);
    let f = client_frame(true, TEXT, &s[..2], MASK);
    assert!(r.consume(&f, &mut BytesMut::new(), &mut out).is_err());
}

#[test]
fn a_client_reads_unmasked_frames_and_answers_masked() {
    let mut r = Reader::client(1 << 20, 7);
    let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
    let mut input = server_frame(TEXT, b"MESSAGE\n\n\0");
    input.extend(server_frame(PING, b"hi"));
    assert_eq!(r.consume(&input, &mut buf, &mut out), Ok(Got::Data));
    assert_eq!(&buf[..], b"MESSAGE\n\n\0");
    // The pong is masked: a server reads it back as "hi".
    let mut server = Reader::server(1024);
    assert_eq!(
        server.consume(&out, &mut BytesMut::new(), &mut BytesMut::new()),
        Ok(Got::Nothing)
    );
    assert_eq!(server.take_controls(), 1);
    assert_eq!(out[1] & 0x80, 0x80);
    // A masked frame from a server is a protocol error.
    let mut r = Reader::client(1024, 7);
    let masked = client_frame(true, TEXT, b"x", MASK);
    let e = r
        .consume(&masked, &mut BytesMut::new(), &mut BytesMut::new())
        .expect_err("masked");
    assert_eq!(e.code, CLOSE_PROTOCOL);
}
