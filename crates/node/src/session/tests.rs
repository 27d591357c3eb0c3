use super::*;

fn session() -> Session {
    Session::new(SessionConfig {
        max_subscriptions: 2,
        max_patterns: 1,
        ack_window: 2,
        client_send: true,
        heart_beat: HeartBeat {
            send_ms: 10_000,
            recv_ms: 10_000,
        },
        session_id: "n1-1".into(),
        insecure_login_as_user: true,
        auth: None,
        url_token: None,
    })
}

fn run(s: &mut Session, frame: Frame) -> Vec<Action> {
    let mut out = Vec::new();
    s.on_frame(frame, &mut out);
    out
}

fn connected() -> Session {
    let mut s = session();
    run(
        &mut s,
        Frame::new(Command::Connect).header("accept-version", "1.1,1.2"),
    );
    s
}

fn error_message(actions: &[Action]) -> Option<String> {
    actions.iter().find_map(|a| match a {
        Action::Reply(f) if f.command == Command::Error => f.get("message").map(str::to_owned),
        _ => None,
    })
}

fn closes(actions: &[Action]) -> bool {
    matches!(actions.last(), Some(Action::Close))
}

#[test]
fn connect_asks_for_position_updates_only_with_the_header() {
    for (value, wanted) in [(Some("on"), true), (Some("off"), false), (None, false)] {
        let mut s = session();
        let mut f = Frame::new(Command::Connect).header("accept-version", "1.2");
        if let Some(v) = value {
            f.push_header("position-updates", v);
        }
        let out = run(&mut s, f);
        assert!(
            matches!(out[0], Action::Connected { positions, .. } if positions == wanted),
            "{value:?}"
        );
    }
}

#[test]
fn connect_negotiates_version_and_heart_beats() {
    let mut s = session();
    let out = run(
        &mut s,
        Frame::new(Command::Stomp)
            .header("accept-version", "1.0,1.1")
            .header("heart-beat", "5000,20000"),
    );
    assert!(matches!(
        out[0],
        Action::Connected {
            version: Version::V1_1,
            send_ms: 20_000,
            recv_ms: 10_000,
            user: None,
            expires_at: None,
            positions: false,
        }
    ));
    let Action::Reply(f) = &out[1] else { panic!() };
    assert_eq!(f.command, Command::Connected);
    assert_eq!(f.get("version"), Some("1.1"));
    assert_eq!(f.get("heart-beat"), Some("10000,10000"));
}

#[test]
fn no_common_version_is_an_error_with_a_version_header() {
    let mut s = session();
    let out = run(
        &mut s,
        Frame::new(Command::Connect).header("accept-version", "2.0"),
    );
    let Action::Reply(f) = &out[0] else { panic!() };
    assert_eq!(f.command, Command::Error);
    assert_eq!(f.get("version"), Some("1.0,1.1,1.2"));
    assert!(closes(&out));
}

#[test]
fn frames_before_connect_are_errors() {
    let mut s = session();
    let out = run(&mut s, Frame::new(Command::Send).header("receipt", "r1"));
    assert!(error_message(&out).unwrap().contains("expected CONNECT"));
    let Action::Reply(f) = &out[0] else { panic!() };
    assert_eq!(f.get("receipt-id"), Some("r1"));
    assert!(closes(&out));
}

#[test]
fn subscribe_unsubscribe_and_receipts() {
    let mut s = connected();
    let out = run(
        &mut s,
        Frame::new(Command::Subscribe)
            .header("id", "0")
            .header("destination", "/topic/a")
            .header("receipt", "r"),
    );
    assert!(matches!(&out[0], Action::Subscribe { destination, .. } if destination == "/topic/a"));
    let Action::Reply(r) = &out[1] else { panic!() };
    assert_eq!(r.get("receipt-id"), Some("r"));
    let dup = run(
        &mut s,
        Frame::new(Command::Subscribe)
            .header("id", "0")
            .header("destination", "/topic/b"),
    );
    assert!(error_message(&dup).unwrap().contains("already in use"));
}

#[test]
fn subscription_limit_and_bad_destinations() {
    let mut s = connected();
    for id in ["a", "b"] {
        let out = run(
            &mut s,
            Frame::new(Command::Subscribe)
                .header("id", id)
                .header("destination", "/topic/x"),
        );
        assert!(error_message(&out).is_none());
    }
    let out = run(
        &mut s,
        Frame::new(Command::Subscribe)
            .header("id", "c")
            .header("destination", "/topic/x"),
    );
    assert!(
        error_message(&out)
            .unwrap()
            .contains("too many subscriptions")
    );
    let mut s = connected();
    let out = run(
        &mut s,
        Frame::new(Command::Subscribe)
            .header("id", "c")
            .header("destination", "/queue/x"),
    );
    assert!(error_message(&out).is_some());
    let mut s = connected();
    let out = run(
        &mut s,
        Frame::new(Command::Subscribe).header("destination", "/topic/x"),
    );
    assert_eq!(error_message(&out).unwrap(), "missing header: id");
    let mut s = connected();
    let out = run(
        &mut s,
        Frame::new(Command::Unsubscribe).header("id", "nope"),
    );
    assert!(
        error_message(&out)
            .unwrap()
            .contains("unknown subscription")
    );
}

#[test]
fn transactions_hold_sends_until_commit() {
    let mut s = connected();
    run(
        &mut s,
        Frame::new(Command::Begin).header("transaction", "t"),
    );
    let send = Frame::new(Command::Send)
        .header("destination", "/topic/a")
        .header("transaction", "t")
        .body("x");
    assert!(run(&mut s, send.clone()).is_empty());
    let out = run(
        &mut s,
        Frame::new(Command::Commit).header("transaction", "t"),
    );
    assert!(matches!(&out[0], Action::Publish(r) if r.destination == "/topic/a"));
    run(
        &mut s,
        Frame::new(Command::Begin).header("transaction", "t"),
    );
    run(&mut s, send);
    let out = run(
        &mut s,
        Frame::new(Command::Abort).header("transaction", "t"),
    );
    assert!(out.is_empty());
    let out = run(
        &mut s,
        Frame::new(Command::Commit).header("transaction", "t"),
    );
    assert!(error_message(&out).unwrap().contains("unknown transaction"));
}

#[test]
fn client_individual_acks_and_window() {
    let mut s = connected();
    let out = run(
        &mut s,
        Frame::new(Command::Subscribe)
            .header("id", "s")
            .header("destination", "/topic/a")
            .header("ack", "client-individual"),
    );
    let Action::Subscribe { slot, .. } = out[0] else {
        panic!()
    };
    let ack = |s: &mut Session| match s.message_head(slot, String::new) {
        Head::Lines { ack, .. } => ack,
        Head::WindowFull => None,
        Head::Gone => panic!("gone"),
    };
    let a0 = ack(&mut s).unwrap();
    let a1 = ack(&mut s).unwrap();
    assert!(matches!(
        s.message_head(slot, String::new),
        Head::WindowFull
    ));
    let out = run(
        &mut s,
        Frame::new(Command::Ack).header("id", a1.to_string()),
    );
    assert!(out.is_empty());
    assert!(ack(&mut s).is_some());
    let out = run(
        &mut s,
        Frame::new(Command::Nack).header("id", a0.to_string()),
    );
    assert!(out.is_empty());
    assert_eq!(s.take_nacks(), 1);
    let out = run(&mut s, Frame::new(Command::Ack).header("id", "999"));
    assert!(error_message(&out).unwrap().contains("unknown ack id"));
}

#[test]
fn disconnect_sends_receipt_then_closes() {
    let mut s = connected();
    let out = run(
        &mut s,
        Frame::new(Command::Disconnect).header("receipt", "bye"),
    );
    let Action::Reply(r) = &out[0] else { panic!() };
    assert_eq!(
        (r.command, r.get("receipt-id")),
        (Command::Receipt, Some("bye"))
    );
    assert!(closes(&out));
}

#[test]
fn send_passes_headers_but_not_transport_ones() {
    let mut s = connected();
    let out = run(
        &mut s,
        Frame::new(Command::Send)
            .header("destination", "/topic/a")
            .header("receipt", "r")
            .header("x-k", "1")
            .header("x-k", "2")
            .header("message-id", "forged")
            .header("user", "victim")
            .header("a:b", "escaped colon in the name"),
    );
    let Action::Publish(r) = &out[0] else {
        panic!()
    };
    assert_eq!(r.headers, vec![("x-k".to_string(), "1".to_string())]);
    let out = run(
        &mut s,
        Frame::new(Command::Send).header("destination", "/topic/a.*"),
    );
    assert!(error_message(&out).is_some());
}

#[test]
fn subscription_header_line_is_escaped_per_version() {
    assert_eq!(
        &header_line(Version::V1_2, "subscription", "a:b")[..],
        b"subscription:a\\cb\n"
    );
    assert_eq!(
        &header_line(Version::V1_0, "subscription", "a:b")[..],
        b"subscription:a:b\n"
    );
    assert_eq!(
        &header_line(Version::V1_0, "subscription", "a\nb")[..],
        b"subscription:a b\n"
    );
}

#[test]
fn login_names_the_user_only_when_configured() {
    let connect = || {
        Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("login", "alice")
    };
    let mut s = session();
    let out = run(&mut s, connect());
    assert!(matches!(&out[0], Action::Connected { user: Some(u), .. } if u == "alice"));
    let Action::Reply(f) = &out[1] else { panic!() };
    assert_eq!(f.get("user-name"), Some("alice"));

    let mut cfg = session().cfg;
    cfg.insecure_login_as_user = false;
    let mut s = Session::new(cfg);
    let out = run(&mut s, connect());
    assert!(matches!(&out[0], Action::Connected { user: None, .. }));
    let Action::Reply(f) = &out[1] else { panic!() };
    assert_eq!(f.get("user-name"), None);
}

#[test]
fn user_queues_can_be_subscribed_but_not_sent_to() {
    let mut s = connected();
    let out = run(
        &mut s,
        Frame::new(Command::Subscribe)
            .header("id", "q")
            .header("destination", "/user/queue/orders"),
    );
    assert!(
        matches!(&out[0], Action::Subscribe { destination, .. } if destination == "/user/queue/orders")
    );
    let out = run(
        &mut s,
        Frame::new(Command::Send).header("destination", "/user/queue/orders"),
    );
    assert!(error_message(&out).unwrap().contains("cannot send"));
    let mut s = connected();
    let out = run(
        &mut s,
        Frame::new(Command::Subscribe)
            .header("id", "q")
            .header("destination", "/user/queue/"),
    );
    assert!(error_message(&out).unwrap().contains("cannot subscribe"));
}

fn request(id: &str, node: &str, deadline_ms: Option<u64>) -> RequestInfo {
    RequestInfo {
        correlation_id: id.into(),
        node: node.into(),
        deadline_ms,
    }
}

fn answer(id: &str, node: &str) -> Frame {
    Frame::new(Command::Send)
        .header("destination", format!("/reply/{node}"))
        .header("correlation-id", id)
}

#[test]
fn only_a_request_delivered_to_the_session_can_be_answered() {
    let now = unix_ms();
    let mut s = connected();
    // Never delivered here: ERROR, close, counted.
    let out = run(&mut s, answer("order-1001", "n2"));
    let m = error_message(&out).expect("refused");
    assert!(m.starts_with("forbidden: no request order-1001"), "{m}");
    assert!(closes(&out));
    assert_eq!(s.take_refused_answers(), 1);

    let mut s = connected();
    s.note_request(&request("n2-abc", "n2", Some(now + 10_000)), now);
    // The same id from another node: refused.
    let mut other = connected();
    other.note_request(&request("n2-abc", "n2", Some(now + 10_000)), now);
    assert!(error_message(&run(&mut other, answer("n2-abc", "n3"))).is_some());
    let out = run(&mut s, answer("n2-abc", "n2"));
    let Action::Answer(r) = &out[0] else {
        panic!("{out:?}")
    };
    let a = r.answerer.as_ref().expect("the answering session");
    assert_eq!(a.session, "n1-1");
    // A second answer is late, not forbidden: dropped here and counted.
    let out = run(&mut s, answer("n2-abc", "n2"));
    assert!(
        out.iter().all(|a| !matches!(a, Action::Answer(_))),
        "{out:?}"
    );
    assert!(error_message(&out).is_none(), "{out:?}");
    assert_eq!(s.take_late_answers(), 1);
    assert!(error_message(&run(&mut s, answer("n2-other", "n2"))).is_some());

    // Long past its deadline (and the grace for late answers): forgotten.
    let mut s = connected();
    s.note_request(&request("old", "n2", Some(now - ANSWER_GRACE_MS - 1)), now);
    assert!(error_message(&run(&mut s, answer("old", "n2"))).is_some());
}

#[test]
fn the_delivered_requests_a_session_remembers_are_bounded() {
    let now = unix_ms();
    let mut s = connected();
    for i in 0..MAX_DELIVERED_REQUESTS + 10 {
        s.note_request(&request(&format!("r{i}"), "n2", Some(now + 60_000)), now);
    }
    assert_eq!(
        s.delivered.as_ref().map(|d| d.len()),
        Some(MAX_DELIVERED_REQUESTS)
    );
    // The same request again (another subscription it matched) is noted once.
    s.note_request(&request("r20", "n2", Some(now + 60_000)), now);
    assert_eq!(
        s.delivered.as_ref().map(|d| d.len()),
        Some(MAX_DELIVERED_REQUESTS)
    );
    assert!(matches!(
        run(&mut s, answer("r20", "n2"))[0],
        Action::Answer(_)
    ));
    // The oldest were forgotten.
    assert!(error_message(&run(&mut s, answer("r0", "n2"))).is_some());
}

#[test]
fn a_send_to_reply_to_answers_a_request() {
    let mut s = connected();
    s.note_request(&request("n2-abc", "n2", None), unix_ms());
    let out = run(
        &mut s,
        Frame::new(Command::Send)
            .header("destination", "/reply/n2")
            .header("correlation-id", "n2-abc")
            .header("status", "ok")
            .header("reply-session", "forged")
            .header("reply-kind", "taken")
            .body(Bytes::from_static(b"yes")),
    );
    let Action::Answer(r) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(r.correlation_id, "n2-abc");
    assert_eq!(r.node.as_deref(), Some("n2"));
    assert_eq!(r.headers, vec![("status".to_string(), "ok".to_string())]);
    assert_eq!(&r.body[..], b"yes");
    for bad in [
        Frame::new(Command::Send).header("destination", "/reply/n2"),
        Frame::new(Command::Send)
            .header("destination", "/reply/n2")
            .header("correlation-id", "a b"),
    ] {
        let out = run(&mut connected(), bad);
        assert!(
            error_message(&out).unwrap().contains("correlation"),
            "{out:?}"
        );
    }
}

#[test]
fn a_closed_session_says_nothing_more() {
    let mut s = connected();
    let out = run(&mut s, Frame::new(Command::Disconnect));
    assert!(closes(&out));
    let mut out = Vec::new();
    s.fail("malformed frame", None, &mut out);
    s.on_frame(
        Frame::new(Command::Send).header("destination", "/topic/a"),
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn transactions_hold_at_most_their_byte_budget() {
    let mut s = connected();
    run(
        &mut s,
        Frame::new(Command::Begin).header("transaction", "t1"),
    );
    run(
        &mut s,
        Frame::new(Command::Begin).header("transaction", "t2"),
    );
    let big = Bytes::from(vec![b'x'; 60_000]);
    let send = |tx: &str| {
        Frame::new(Command::Send)
            .header("destination", "/topic/a")
            .header("transaction", tx)
            .body(big.clone())
    };
    // Spread over two transactions: the budget is the connection's.
    for i in 0..17 {
        let out = run(&mut s, send(if i % 2 == 0 { "t1" } else { "t2" }));
        assert!(error_message(&out).is_none(), "frame {i}: {out:?}");
    }
    let out = run(&mut s, send("t1"));
    let m = error_message(&out).expect("over the budget");
    assert!(m.contains("transactions too large"), "{m}");
    assert!(closes(&out));

    // An abort gives its bytes back.
    let mut s = connected();
    run(
        &mut s,
        Frame::new(Command::Begin).header("transaction", "t"),
    );
    for _ in 0..17 {
        run(&mut s, send("t"));
    }
    run(
        &mut s,
        Frame::new(Command::Abort).header("transaction", "t"),
    );
    assert_eq!(s.held_bytes, 0);
    run(
        &mut s,
        Frame::new(Command::Begin).header("transaction", "t"),
    );
    for i in 0..17 {
        let out = run(&mut s, send("t"));
        assert!(
            error_message(&out).is_none(),
            "frame {i} after the abort: {out:?}"
        );
    }
}
