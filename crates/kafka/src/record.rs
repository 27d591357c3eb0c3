//! A Kafka record as the node sees it. The format backends write is in docs/kafka.md.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;
use pushcenter_node::{Delivery, NODE_HEADERS, Record, check_publish_destination, sanitize};
use rdkafka::Message;
use rdkafka::message::Headers;

/// `<partition>-<offset>`: the same on every node for the same record.
pub fn message_id(partition: i32, offset: i64) -> String {
    format!("{partition}-{offset}")
}

/// The delivery a record stands for, or why it cannot be delivered.
pub fn delivery_from<M: Message>(m: &M) -> Result<Delivery, &'static str> {
    let mut record = Record::default();
    let mut destination = None;
    if let Some(hs) = m.headers() {
        for i in 0..hs.count() {
            // rdkafka unwraps header names as UTF-8 and panics on anything else.
            let h = catch_unwind(AssertUnwindSafe(|| hs.get(i)))
                .map_err(|_| "header name is not UTF-8")?;
            let value = std::str::from_utf8(h.value.unwrap_or_default())
                .map_err(|_| "header value is not UTF-8")?;
            if h.key.is_empty() || h.key.contains([':', '\r', '\n', '\0']) {
                return Err("bad header name");
            }
            match h.key {
                "destination" => {
                    destination.get_or_insert(value);
                }
                "user" => {
                    record.user.get_or_insert_with(|| value.to_owned());
                }
                "session" => {
                    record.session.get_or_insert_with(|| value.to_owned());
                }
                // The node writes these itself.
                k if NODE_HEADERS.contains(&k) => {}
                k if record.headers.iter().any(|(n, _)| n == k) => {}
                k => record.headers.push((k.to_owned(), sanitize(value))),
            }
        }
    }
    let destination = destination.ok_or("no destination header")?;
    check_publish_destination(destination).map_err(|_| "bad destination")?;
    record.destination = destination.to_owned();
    record.body = Bytes::copy_from_slice(m.payload().unwrap_or_default());
    Ok(Delivery {
        id: message_id(m.partition(), m.offset()),
        record,
    })
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
        let d = delivery_from(&m).expect("delivery");
        assert_eq!(d.id, "3-42");
        assert_eq!(d.record.destination, "/topic/orders.7");
        assert_eq!(&d.record.body[..], b"{}");
        assert_eq!(d.record.user.as_deref(), Some("u1"));
        assert_eq!(
            d.record.headers,
            vec![
                ("content-type".to_string(), "application/json".to_string()),
                ("priority".to_string(), "high level".to_string()),
            ]
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
            assert_eq!(delivery_from(&message(headers, b"")).map(|_| ()), Err(why));
        }
    }
}
