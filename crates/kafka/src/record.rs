//! A Kafka record as the node sees it. The format backends write is in docs/kafka.md.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;
use pushcenter_node::{
    Answerer, Delivery, NODE_HEADERS, REPLY_HEADERS, Record, Reply, ReplyKind,
    check_correlation_id, check_publish_destination, header_value,
};
use rdkafka::Message;
use rdkafka::message::Headers;

use crate::topic::Topic;

/// `<stream>-<offset>` (`<partition>` on the messages topic, `t<partition>` on the
/// targeted one): the same on every node for the same record.
pub(crate) fn message_id(topic: Topic, partition: i32, offset: i64) -> String {
    format!("{}{partition}-{offset}", topic.stream_prefix())
}

/// Headers a record may have: more than a STOMP frame may carry (64 by default).
const MAX_HEADERS: usize = 256;

/// Calls `each(name, value)` for every header, first occurrence of a name only; fails
/// on a header that cannot become a STOMP header.
fn headers<M: Message>(m: &M, mut each: impl FnMut(&str, &str)) -> Result<(), &'static str> {
    let Some(hs) = m.headers() else {
        return Ok(());
    };
    // The duplicate check below is quadratic: a record of a million tiny headers would
    // hold the consumer thread for minutes.
    if hs.count() > MAX_HEADERS {
        return Err("too many headers");
    }
    // Most records have a few headers: their names are kept on the stack.
    let mut first = [""; 8];
    let mut more: Vec<&str> = Vec::new();
    let mut n = 0;
    for i in 0..hs.count() {
        // rdkafka unwraps header names as UTF-8 and panics on anything else.
        let h =
            catch_unwind(AssertUnwindSafe(|| hs.get(i))).map_err(|_| "header name is not UTF-8")?;
        let value = std::str::from_utf8(h.value.unwrap_or_default())
            .map_err(|_| "header value is not UTF-8")?;
        if h.key.is_empty() || h.key.contains([':', '\r', '\n', '\0']) {
            return Err("bad header name");
        }
        if first[..n.min(first.len())].contains(&h.key) || more.contains(&h.key) {
            continue;
        }
        match first.get_mut(n) {
            Some(slot) => *slot = h.key,
            None => more.push(h.key),
        }
        n += 1;
        each(h.key, value);
    }
    Ok(())
}

/// The delivery a record of `topic` (messages or targeted) stands for, or why it
/// cannot be delivered.
pub(crate) fn delivery_from<M: Message>(m: &M, topic: Topic) -> Result<Delivery, &'static str> {
    let mut record = Record::default();
    let mut destination = None;
    headers(m, |k, value| match k {
        "destination" => destination = Some(value.to_owned()),
        "user" => record.user = Some(value.to_owned()),
        "session" => record.session = Some(value.to_owned()),
        // The node writes these itself.
        k if NODE_HEADERS.contains(&k) => {}
        k => record.headers.push((k.to_owned(), header_value(value))),
    })?;
    let destination = destination.ok_or("no destination header")?;
    let targeted = record.user.is_some() || record.session.is_some();
    check_publish_destination(&destination, targeted).map_err(|_| "bad destination")?;
    record.destination = destination;
    record.body = Bytes::copy_from_slice(m.payload().unwrap_or_default());
    // Whole milliseconds: counted from the middle of the millisecond, so the latency
    // histogram is neither early nor late on average.
    record.at_us = match timestamp_ms(m) {
        0 => 0,
        ms => ms.saturating_mul(1000).saturating_add(500),
    };
    Ok(Delivery {
        id: message_id(topic, m.partition(), m.offset()),
        record,
    })
}

/// The record's timestamp (its producer's create time, or the broker's append time),
/// unix ms; 0 when it has none.
pub(crate) fn timestamp_ms<M: Message>(m: &M) -> u64 {
    m.timestamp()
        .to_millis()
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or(0)
}

/// Whether a replies record is admin traffic (a command or a node's report), counted
/// apart from replies and delivery notes.
pub(crate) fn is_admin<M: Message>(m: &M) -> bool {
    let Some(hs) = m.headers() else {
        return false;
    };
    (0..hs.count().min(MAX_HEADERS)).any(|i| {
        hs.try_get(i).is_some_and(|h| {
            h.key == "reply-kind" && matches!(h.value, Some(b"command") | Some(b"report"))
        })
    })
}

/// The reply a record of the replies topic stands for, or why it is none.
pub(crate) fn reply_from<M: Message>(m: &M) -> Result<Reply, &'static str> {
    let mut reply = Reply::default();
    let mut id = None;
    let mut kind = Ok(ReplyKind::Answer);
    let (mut session, mut user) = (None, None);
    let (mut confirm_node, mut confirm_id) = (None, None);
    headers(m, |k, value| match k {
        "correlation-id" => id = Some(value.to_owned()),
        "reply-node" => reply.node = Some(value.to_owned()),
        "reply-kind" => kind = ReplyKind::parse(value).ok_or("unknown reply-kind"),
        "reply-session" => session = Some(value.to_owned()),
        "reply-user" => user = Some(value.to_owned()),
        "confirm-node" => confirm_node = Some(value.to_owned()),
        "confirm-id" => confirm_id = Some(value.to_owned()),
        k if NODE_HEADERS.contains(&k) || REPLY_HEADERS.contains(&k) => {}
        k => reply.headers.push((k.to_owned(), header_value(value))),
    })?;
    reply.kind = kind?;
    // A client's answer, as its node vouches: the waiting node checks it.
    reply.answerer = session.map(|session| Answerer { session, user });
    reply.confirm = confirm_node.zip(confirm_id);
    let id = id.ok_or("no correlation-id header")?;
    check_correlation_id(&id).map_err(|_| "bad correlation-id")?;
    reply.correlation_id = id;
    reply.body = Bytes::copy_from_slice(m.payload().unwrap_or_default());
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};

    use super::*;

    type Headers<'a> = &'a [(&'a str, &'a [u8])];

    fn message(headers: Headers<'_>, body: &[u8]) -> OwnedMessage {
        let mut hs = OwnedHeaders::new();
        for (k, v) in headers {
            hs = hs.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        OwnedMessage::new(
            Some(body.to_vec()),
            None,
            "pushcenter.messages".into(),
            Timestamp::NotAvailable,
            3,
            42,
            Some(hs),
        )
    }

    #[test]
    fn record_becomes_a_delivery() {
        let m = message(
            &[
                ("destination", b"/topic/orders.7"),
                ("content-type", b"application/json"),
                ("priority", b"high\nlevel"),
                ("message-id", b"forged"),
                ("user", b"u1"),
            ],
            b"{}",
        );
        let d = delivery_from(&m, Topic::Messages).expect("delivery");
        assert_eq!(d.id, "3-42");
        assert_eq!(d.record.destination, "/topic/orders.7");
        assert_eq!(&d.record.body[..], b"{}");
        assert_eq!(d.record.user.as_deref(), Some("u1"));
        assert_eq!(
            d.record.headers,
            vec![
                ("content-type".to_string(), "application/json".to_string()),
                ("priority".to_string(), "high\nlevel".to_string()),
            ]
        );
    }

    #[test]
    fn reply_records() {
        let m = message(
            &[
                ("correlation-id", b"n2-abc"),
                ("reply-node", b"n2"),
                ("status", b"ok"),
            ],
            b"yes",
        );
        let r = reply_from(&m).expect("reply");
        assert_eq!(
            (r.correlation_id.as_str(), r.node.as_deref(), r.kind),
            ("n2-abc", Some("n2"), ReplyKind::Answer)
        );
        assert_eq!(r.headers, vec![("status".to_string(), "ok".to_string())]);
        assert_eq!(&r.body[..], b"yes");
        let m = message(
            &[("correlation-id", b"order-7"), ("reply-kind", b"delivered")],
            b"",
        );
        let r = reply_from(&m).expect("delivery note");
        assert_eq!((r.node, r.kind), (None, ReplyKind::Delivered));
        for (headers, why) in [
            (&[][..], "no correlation-id header"),
            (&[("correlation-id", &b"a b"[..])][..], "bad correlation-id"),
            (
                &[("correlation-id", &b"a"[..]), ("reply-kind", b"x")][..],
                "unknown reply-kind",
            ),
        ] {
            assert_eq!(reply_from(&message(headers, b"")).map(|_| ()), Err(why));
        }
    }

    #[test]
    fn reply_records_say_who_answered_and_where_to_confirm() {
        let m = message(
            &[
                ("correlation-id", b"order-7"),
                ("reply-kind", b"answer"),
                ("reply-session", b"n1-ab12-3"),
                ("reply-user", b"alice"),
                ("confirm-node", b"n3"),
                ("confirm-id", b"c1"),
                ("reply-kind", b"taken"),
            ],
            b"",
        );
        let r = reply_from(&m).expect("answer");
        assert_eq!(r.kind, ReplyKind::Answer, "the first reply-kind wins");
        let a = r.answerer.expect("answerer");
        assert_eq!(
            (a.session.as_str(), a.user.as_deref()),
            ("n1-ab12-3", Some("alice"))
        );
        assert_eq!(r.confirm, Some(("n3".to_string(), "c1".to_string())));
        assert!(r.headers.is_empty(), "{:?}", r.headers);
        let m = message(
            &[("correlation-id", b"c1"), ("reply-kind", b"no-waiter")],
            b"",
        );
        assert_eq!(reply_from(&m).map(|r| r.kind), Ok(ReplyKind::NoWaiter));
    }

    #[test]
    fn targeted_records() {
        let m = message(
            &[("destination", b"/user/queue/orders"), ("session", b"n1-4")],
            b"",
        );
        let d = delivery_from(&m, Topic::Messages).expect("session-targeted");
        assert_eq!(d.record.session.as_deref(), Some("n1-4"));
        // On the targeted topic the id names it: `t<partition>-<offset>`.
        let d = delivery_from(&m, Topic::Targeted).expect("on the targeted topic");
        assert_eq!(d.id, "t3-42");
        let m = message(&[("destination", b"/user/queue/orders")], b"");
        assert_eq!(
            delivery_from(&m, Topic::Messages).map(|_| ()),
            Err("bad destination")
        );
    }

    #[test]
    fn bad_records_say_why() {
        let cases: [(Headers<'_>, &str); 5] = [
            (&[], "no destination header"),
            (&[("content-type", b"x")], "no destination header"),
            (&[("destination", b"/queue/x")], "bad destination"),
            (&[("destination", b"/topic/a.*")], "bad destination"),
            (
                &[("destination", b"/topic/a"), ("x", b"\xff\xfe")],
                "header value is not UTF-8",
            ),
        ];
        for (headers, why) in cases {
            assert_eq!(
                delivery_from(&message(headers, b""), Topic::Messages).map(|_| ()),
                Err(why)
            );
        }
    }

    #[test]
    fn the_first_of_each_header_name_counts_however_many_there_are() {
        let names: Vec<String> = (0..20).map(|i| format!("h{i}")).collect();
        let mut headers: Vec<(&str, &[u8])> = vec![("destination", b"/topic/a")];
        for round in [&b"first"[..], b"again"] {
            headers.extend(names.iter().map(|n| (n.as_str(), round)));
        }
        let d = delivery_from(&message(&headers, b""), Topic::Messages).expect("delivery");
        let got: Vec<(&str, &str)> = d
            .record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let want: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "first")).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_record_with_too_many_headers_is_skipped() {
        let names: Vec<String> = (0..MAX_HEADERS).map(|i| format!("h{i}")).collect();
        let mut headers: Vec<(&str, &[u8])> = vec![("destination", b"/topic/a")];
        headers.extend(names.iter().map(|n| (n.as_str(), &b""[..])));
        assert_eq!(
            delivery_from(&message(&headers, b""), Topic::Messages).map(|_| ()),
            Err("too many headers")
        );
        headers.pop();
        assert!(delivery_from(&message(&headers, b""), Topic::Messages).is_ok());
    }
}
