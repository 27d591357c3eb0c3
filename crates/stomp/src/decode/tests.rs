use super::*;

fn lim() -> Limits {
    Limits::default()
}

fn decode_all(input: &[u8], version: Version, limits: &Limits) -> Result<Vec<Item>> {
    let mut buf = BytesMut::from(input);
    let mut items = Vec::new();
    while let Some(item) = decode_version(&mut buf, version, limits)? {
        items.push(item);
    }
    Ok(items)
}

fn one_frame(input: &[u8], version: Version) -> Frame {
    match decode_all(input, version, &lim()).unwrap().as_slice() {
        [Item::Frame(f)] => f.clone(),
        other => panic!("expected one frame, got {other:?}"),
    }
}

fn malformed(input: &[u8], version: Version) -> String {
    match decode_all(input, version, &lim()) {
        Err(e @ DecodeError::Malformed(_)) => e.to_string(),
        other => panic!("expected malformed, got {other:?}"),
    }
}

#[test]
fn decodes_every_command() {
    for c in Command::ALL {
        let text = format!("{}\nreceipt:7\n\n\0", c.as_str());
        let f = one_frame(text.as_bytes(), Version::V1_2);
        assert_eq!(f.command, c);
        assert_eq!(f.get("receipt"), Some("7"));
        assert!(f.body.is_empty());
    }
}

#[test]
fn lf_and_crlf_line_endings() {
    let lf = one_frame(b"SEND\ndestination:/q\n\nbody\0", Version::V1_2);
    let crlf = one_frame(b"SEND\r\ndestination:/q\r\n\r\nbody\0", Version::V1_2);
    assert_eq!(lf, crlf);
    assert_eq!(lf.get("destination"), Some("/q"));
    assert_eq!(&lf.body[..], b"body");
}

#[test]
fn eols_after_nul_are_heart_beats() {
    let items = decode_all(b"\nSEND\n\n\0\n\r\n\nSEND\n\n\0", Version::V1_2, &lim()).unwrap();
    let kinds: Vec<bool> = items.iter().map(|i| matches!(i, Item::Frame(_))).collect();
    assert_eq!(kinds, [false, true, false, false, false, true]);
}

#[test]
fn stray_nul_before_command_is_tolerated() {
    let items = decode_all(b"\0\0CONNECT\n\n\0", Version::V1_2, &lim()).unwrap();
    assert!(matches!(items.as_slice(), [Item::Frame(f)] if f.command == Command::Connect));
}

#[test]
fn content_length_body_may_hold_nul() {
    let f = one_frame(b"SEND\ncontent-length:5\n\na\0b\0c\0", Version::V1_2);
    assert_eq!(&f.body[..], b"a\0b\0c");
    assert_eq!(f.get("content-length"), Some("5"));
}

#[test]
fn content_length_lies_are_errors() {
    // Shorter than the body: the byte after it is not NUL.
    let e = malformed(b"SEND\ncontent-length:2\n\nabcd\0", Version::V1_2);
    assert!(e.contains("NUL"), "{e}");
    // Not a number.
    let e = malformed(b"SEND\ncontent-length:-1\n\n\0", Version::V1_2);
    assert!(e.contains("content-length"), "{e}");
    let e = malformed(b"SEND\ncontent-length: 1\n\na\0", Version::V1_2);
    assert!(e.contains("content-length"), "{e}");
    // Longer than the body: waits for more bytes, leaving the buffer alone.
    let waiting = b"SEND\ncontent-length:10\n\nabc\0";
    let mut buf = BytesMut::from(&waiting[..]);
    assert_eq!(decode(&mut buf, &lim()), Ok(None));
    assert_eq!(&buf[..], waiting);
}

#[test]
fn nul_terminated_body() {
    let f = one_frame(b"MESSAGE\ndestination:/t\n\nhello world\0", Version::V1_2);
    assert_eq!(&f.body[..], b"hello world");
}

#[test]
fn body_only_where_allowed() {
    for c in Command::ALL {
        let text = format!("{}\n\nxyz\0", c.as_str());
        let r = decode_all(text.as_bytes(), Version::V1_2, &lim());
        if c.allows_body() {
            assert!(r.is_ok(), "{c}");
        } else {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("must not have a body"), "{c}: {e}");
        }
    }
    let e = malformed(b"SUBSCRIBE\ncontent-length:1\n\nx\0", Version::V1_2);
    assert!(e.contains("must not have a body"));
    // Detected before the NUL arrives.
    let mut buf = BytesMut::from(&b"ACK\nid:1\n\nxx"[..]);
    assert!(decode(&mut buf, &lim()).is_err());
}

#[test]
fn escapes_in_1_2() {
    let f = one_frame(b"SEND\na\\cb:x\\ny\\rz\\\\w\\c\n\n\0", Version::V1_2);
    let (name, value) = f.headers().next().unwrap();
    assert_eq!(name, b"a:b");
    assert_eq!(value, b"x\ny\rz\\w:");
}

#[test]
fn escapes_in_1_1() {
    let f = one_frame(b"MESSAGE\nk:x\\ny\\cz\\\\\n\n\0", Version::V1_1);
    assert_eq!(f.get("k"), Some("x\ny:z\\"));
    let e = malformed(b"MESSAGE\nk:a\\rb\n\n\0", Version::V1_1);
    assert!(e.contains("escape"), "{e}");
}

#[test]
fn no_escapes_in_1_0() {
    let f = one_frame(b"SEND\nk:a\\nb\\t:c\n\n\0", Version::V1_0);
    assert_eq!(f.get("k"), Some("a\\nb\\t:c"));
}

#[test]
fn connect_family_is_never_unescaped() {
    for cmd in ["CONNECT", "STOMP", "CONNECTED"] {
        let text = format!("{cmd}\nlogin:a\\tb\npasscode:x:y:z\n\n\0");
        let f = one_frame(text.as_bytes(), Version::V1_2);
        assert_eq!(f.get("login"), Some("a\\tb"));
        assert_eq!(f.get("passcode"), Some("x:y:z"));
    }
}

#[test]
fn undefined_escape_is_an_error() {
    for bad in [
        &b"SEND\nk:a\\tb\n\n\0"[..],
        b"SEND\nk:a\\\n\n\0",
        b"SEND\nk\\x:a\n\n\0",
    ] {
        let e = malformed(bad, Version::V1_2);
        assert!(e.contains("escape"), "{e}");
    }
}

#[test]
fn first_repeated_header_wins_and_all_are_kept() {
    let f = one_frame(b"MESSAGE\nfoo:World\nfoo:Hello\n\n\0", Version::V1_2);
    assert_eq!(f.get("foo"), Some("World"));
    assert_eq!(f.header_count(), 2);
    // Only the first content-length counts.
    let f = one_frame(
        b"SEND\ncontent-length:1\ncontent-length:9\n\na\0",
        Version::V1_2,
    );
    assert_eq!(&f.body[..], b"a");
}

#[test]
fn values_are_never_trimmed() {
    let f = one_frame(b"SEND\nk: spaced value \n\n\0", Version::V1_2);
    assert_eq!(f.get("k"), Some(" spaced value "));
    let f = one_frame(b"SEND\nempty:\n\n\0", Version::V1_2);
    assert_eq!(f.get("empty"), Some(""));
}

#[test]
fn malformed_lines() {
    assert!(malformed(b"SEND\nnocolon\n\n\0", Version::V1_2).contains("colon"));
    assert!(malformed(b"SEND\n:value\n\n\0", Version::V1_2).contains("empty header name"));
    assert!(malformed(b"SEND\nk:\xff\xfe\n\n\0", Version::V1_2).contains("UTF-8"));
    assert!(malformed(b"\rX", Version::V1_2).contains("CR"));
    for v in Version::ALL {
        assert!(malformed(b"SEND\nk:a\rb\n\n\0", v).contains("CR"));
        assert!(malformed(b"SEND\nk:ab\r\r\n\n\0", v).contains("CR"));
    }
}

#[test]
fn unknown_command_is_an_error_even_before_its_eol() {
    assert!(malformed(b"send\n\n\0", Version::V1_2).contains("unknown command"));
    assert!(malformed(b"SEND \n\n\0", Version::V1_2).contains("unknown command"));
    // An HTTP request on the STOMP port is refused at its first bytes.
    assert!(malformed(b"GET / HT", Version::V1_2).contains("unknown command"));
    // A prefix of a command is just incomplete.
    let mut buf = BytesMut::from(&b"SUBSCR"[..]);
    assert_eq!(decode(&mut buf, &lim()), Ok(None));
    let mut buf = BytesMut::from(&b"SEND\r"[..]);
    assert_eq!(decode(&mut buf, &lim()), Ok(None));
}

#[test]
fn incomplete_input_leaves_the_buffer_alone() {
    let full = b"SEND\ndestination:/q\n\nbody\0";
    for cut in 0..full.len() {
        let mut buf = BytesMut::from(&full[..cut]);
        assert_eq!(decode(&mut buf, &lim()), Ok(None), "cut at {cut}");
        assert_eq!(&buf[..], &full[..cut]);
    }
    let lone_cr = &mut BytesMut::from(&b"\r"[..]);
    assert_eq!(decode(lone_cr, &lim()), Ok(None));
}

fn small() -> Limits {
    Limits {
        max_frame_bytes: 90,
        max_headers: 3,
        max_header_line: 20,
        max_body_bytes: 30,
    }
}

fn limit_of(input: &[u8], limits: &Limits) -> Limit {
    match decode_all(input, Version::V1_2, limits) {
        Err(DecodeError::LimitExceeded { limit, .. }) => limit,
        other => panic!("expected a limit error, got {other:?}"),
    }
}

#[test]
fn limits_on_complete_frames() {
    let l = small();
    assert_eq!(
        limit_of(b"SEND\na:1\nb:2\nc:3\nd:4\n\n\0", &l),
        Limit::HeaderCount
    );
    assert_eq!(
        limit_of(b"SEND\nk:012345678901234567890\n\n\0", &l),
        Limit::HeaderLine
    );
    let body = format!("SEND\n\n{}\0", "x".repeat(31));
    assert_eq!(limit_of(body.as_bytes(), &l), Limit::BodyBytes);
    assert_eq!(
        limit_of(b"SEND\ncontent-length:31\n\n", &l),
        Limit::BodyBytes
    );
    let big = format!(
        "SEND\na:{0}\nb:{0}\nc:{0}\n\n{1}\0",
        "y".repeat(17),
        "x".repeat(30)
    );
    assert_eq!(limit_of(big.as_bytes(), &l), Limit::FrameBytes);
    // Exactly at every limit is fine.
    let ok = format!(
        "SEND\na:1\nb:2\nk:{}\n\n{}\0",
        "y".repeat(18),
        "x".repeat(30)
    );
    assert!(decode_all(ok.as_bytes(), Version::V1_2, &l).is_ok());
}

#[test]
fn limits_are_checked_before_the_frame_is_complete() {
    let l = small();
    // No EOL yet, but the line is already too long.
    assert_eq!(
        limit_of(b"SEND\nk:0123456789012345678901", &l),
        Limit::HeaderLine
    );
    // Headers still coming, but there are already too many.
    assert_eq!(
        limit_of(b"SEND\na:1\nb:2\nc:3\nd:4\n", &l),
        Limit::HeaderCount
    );
    // Body still coming without content-length.
    let partial = format!("SEND\n\n{}", "x".repeat(31));
    assert_eq!(limit_of(partial.as_bytes(), &l), Limit::BodyBytes);
    // content-length larger than the body limit: refused before any body byte.
    assert_eq!(
        limit_of(b"SEND\ncontent-length:1000\n\n", &l),
        Limit::BodyBytes
    );
    // content-length within the body limit but the frame would be too large.
    let cl = format!("SEND\na:{0}\nb:{0}\ncontent-length:30\n\n", "y".repeat(18));
    assert_eq!(limit_of(cl.as_bytes(), &l), Limit::FrameBytes);
}

#[test]
fn errors_tell_limits_from_malformed_input_and_read_as_error_messages() {
    let e = decode_all(b"SEND\na:1\nb:2\nc:3\nd:4\n", Version::V1_2, &small()).unwrap_err();
    assert!(e.is_limit());
    assert_eq!(e.to_string(), "too many headers (limit 3)");
    let e = decode_all(b"BOGUS\n\n\0", Version::V1_2, &lim()).unwrap_err();
    assert!(!e.is_limit());
    assert_eq!(e.to_string(), "malformed frame: unknown command");
    for e in [e, DecodeError::limit(Limit::FrameBytes, 1)] {
        assert!(!e.to_string().contains('\n'));
    }
}

#[test]
fn header_values_are_slices_of_the_input() {
    let mut buf = BytesMut::from(&b"MESSAGE\ndestination:/topic/a\nk:a\\nb\n\nbody\0"[..]);
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let Some(Item::Frame(f)) = decode(&mut buf, &lim()).unwrap() else {
        panic!("no frame");
    };
    let inside = |b: &[u8]| (start..end).contains(&(b.as_ptr() as usize));
    let headers: Vec<_> = f.headers().collect();
    assert!(inside(headers[0].0));
    assert!(inside(headers[0].1));
    assert!(inside(&f.body));
    // An escaped value had to be copied.
    assert!(!inside(headers[1].1));
    assert_eq!(f.get("k"), Some("a\nb"));
}

#[test]
fn leaves_the_next_frame_in_the_buffer() {
    let mut buf = BytesMut::from(&b"SEND\n\na\0SEND\n\nb"[..]);
    let Some(Item::Frame(f)) = decode(&mut buf, &lim()).unwrap() else {
        panic!("no frame");
    };
    assert_eq!(&f.body[..], b"a");
    assert_eq!(&buf[..], b"SEND\n\nb");
    assert_eq!(decode(&mut buf, &lim()), Ok(None));
}
