//! Property tests: encode/decode round trips and split-invariance of the decoder.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use pushcenter_stomp::{Command, Frame, Item, Limits, Version, decode_version, encode};

fn version() -> impl Strategy<Value = Version> {
    prop::sample::select(Version::ALL.to_vec())
}

fn command() -> impl Strategy<Value = Command> {
    prop::sample::select(Command::ALL.to_vec())
}

/// Text with every character that needs escaping somewhere, plus some non-ASCII.
fn text(version: Version, escaping: bool, is_name: bool) -> impl Strategy<Value = String> {
    // CR is only representable where 1.2 escapes it.
    let chars = match (escaping, version) {
        (true, Version::V1_2) => "[a-z0-9:\\\\\n\r é中-]",
        (true, _) => "[a-z0-9:\\\\\n é中-]",
        (false, _) if is_name => "[a-z0-9\\\\ é中-]",
        (false, _) => "[a-z0-9:\\\\ é中-]",
    };
    let min = usize::from(is_name);
    prop::collection::vec(prop::string::string_regex(chars).expect("regex"), min..8)
        .prop_map(|parts| parts.concat())
}

/// A frame that `version` can carry, in the canonical form the encoder writes:
/// a true `content-length` last whenever there is a body.
fn frame_for(version: Version) -> impl Strategy<Value = Frame> {
    command().prop_flat_map(move |command| {
        let escaping = version > Version::V1_0 && command.escapes_headers();
        let header = (
            text(version, escaping, true),
            text(version, escaping, false),
        )
            .prop_filter("content-length is set below", |(name, _)| {
                name != "content-length"
            });
        let body = if command.allows_body() {
            prop::collection::vec(any::<u8>(), 0..300).boxed()
        } else {
            Just(Vec::new()).boxed()
        };
        (prop::collection::vec(header, 0..6), body).prop_map(move |(headers, body)| {
            let mut f = Frame::new(command);
            for (n, v) in headers {
                f.push_header(n, v);
            }
            if !body.is_empty() {
                f.push_header("content-length", body.len().to_string());
            }
            f.body(body)
        })
    })
}

fn decode_all(bytes: &[u8], version: Version) -> Vec<Item> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(item) = decode_version(&mut buf, version, &Limits::default()).expect("valid") {
        out.push(item);
    }
    assert!(buf.is_empty(), "left over: {buf:?}");
    out
}

/// Feeds `bytes` in the given chunk sizes, decoding after each chunk.
fn decode_chunked(bytes: &[u8], version: Version, cuts: &[usize]) -> Vec<Item> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&bytes.len())) {
        buf.extend_from_slice(&bytes[start..end]);
        start = end;
        while let Some(item) = decode_version(&mut buf, version, &Limits::default()).expect("valid")
        {
            out.push(item);
        }
    }
    assert!(buf.is_empty(), "left over: {buf:?}");
    out
}

#[derive(Debug, Clone)]
enum Piece {
    Frame(Frame),
    HeartBeat(&'static str),
    StrayNul,
}

fn stream() -> impl Strategy<Value = (Version, Vec<Piece>)> {
    version().prop_flat_map(|v| {
        let piece = prop_oneof![
            4 => frame_for(v).prop_map(Piece::Frame),
            1 => prop::sample::select(vec!["\n", "\r\n"]).prop_map(Piece::HeartBeat),
            1 => Just(Piece::StrayNul),
        ];
        (Just(v), prop::collection::vec(piece, 1..6))
    })
}

fn encode_stream(version: Version, pieces: &[Piece]) -> (BytesMut, Vec<Item>) {
    let mut bytes = BytesMut::new();
    let mut items = Vec::new();
    for p in pieces {
        match p {
            Piece::Frame(f) => {
                encode(f, version, &mut bytes).expect("encodable");
                items.push(Item::Frame(f.clone()));
            }
            Piece::HeartBeat(eol) => {
                bytes.extend_from_slice(eol.as_bytes());
                items.push(Item::HeartBeat);
            }
            Piece::StrayNul => bytes.extend_from_slice(b"\0"),
        }
    }
    (bytes, items)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_of_encode_is_identity((version, frame) in version().prop_flat_map(|v| (Just(v), frame_for(v)))) {
        let mut buf = BytesMut::new();
        encode(&frame, version, &mut buf).expect("encodable");
        let items = decode_all(&buf, version);
        prop_assert_eq!(items, vec![Item::Frame(frame)]);
    }

    #[test]
    fn a_stream_decodes_to_its_items((version, pieces) in stream()) {
        let (bytes, items) = encode_stream(version, &pieces);
        prop_assert_eq!(decode_all(&bytes, version), items);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn splitting_the_stream_anywhere_yields_the_same_items((version, pieces) in stream()) {
        let (bytes, items) = encode_stream(version, &pieces);
        for cut in 0..=bytes.len() {
            prop_assert_eq!(&decode_chunked(&bytes, version, &[cut]), &items, "cut at {}", cut);
        }
        let every_byte: Vec<usize> = (1..bytes.len()).collect();
        prop_assert_eq!(&decode_chunked(&bytes, version, &every_byte), &items);
    }
}

#[test]
fn round_trips_every_escapable_character_in_each_version() {
    let nasty = "a:b\nc\\d\re";
    for version in Version::ALL {
        for command in Command::ALL {
            let escaping = version > Version::V1_0 && command.escapes_headers();
            let mut f = Frame::new(command);
            if escaping && version == Version::V1_2 {
                f.push_header(nasty, nasty);
            } else if escaping {
                f.push_header("a:b\nc\\d", "a:b\nc\\de\\");
            } else {
                f.push_header("a\\b", "x:y\\zw");
            }
            if command.allows_body() {
                f.push_header("content-length", "3");
                f.body = Bytes::from_static(b"\0\n\0");
            }
            let mut buf = BytesMut::new();
            encode(&f, version, &mut buf).expect("encodable");
            assert_eq!(
                decode_all(&buf, version),
                vec![Item::Frame(f)],
                "{version} {command}"
            );
        }
    }
}
