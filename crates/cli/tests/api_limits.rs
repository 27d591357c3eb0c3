//! The HTTP API's limits and publish forms against the real binary: the rate per
//! credential (429 with `retry-after`), binary bodies as `body_base64`, and batches.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::*;
use pushcenter_stomp::Command as Cmd;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY_A: &str = "api-limits-key-a-0001";
const KEY_B: &str = "api-limits-key-b-0002";
const KEY_C: &str = "api-limits-key-c-0003";

/// `POST /v1/publish` with an optional bearer: status, headers (lower-case names), JSON.
async fn publish_call(
    addr: SocketAddr,
    bearer: Option<&str>,
    body: &Value,
) -> (u16, HashMap<String, String>, Value) {
    let body = body.to_string();
    let auth = bearer.map_or(String::new(), |b| format!("authorization: Bearer {b}\r\n"));
    let req = format!(
        "POST /v1/publish HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (
        status,
        headers,
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn message(dest: &str, body: &str) -> Value {
    json!({"destination": dest, "body": body})
}

#[tokio::test]
async fn a_flooding_credential_gets_429_while_another_is_served() {
    // One call per second after a burst of 100: the flood outruns the refill.
    let cfg = TempConfig::write(
        "api-limits-rate",
        &format!(
            "[limits]\napi_requests_per_second = 1\napi_burst = 100\n\n[auth]\napi_keys = [\"{KEY_A}\", \"{KEY_B}\", \"{KEY_C}\"]\n"
        ),
    );
    let node = Node::standalone(&["--config", cfg.path()]);
    let m = message("/topic/flood", "x");

    let (mut served, mut refused) = (0, 0);
    let mut first_refusal = None;
    for _ in 0..130 {
        match publish_call(node.http, Some(KEY_A), &m).await {
            (202, _, _) => served += 1,
            (429, headers, body) => {
                refused += 1;
                first_refusal.get_or_insert((headers, body));
            }
            (status, _, body) => panic!("unexpected {status} {body}"),
        }
    }
    assert!((100..=102).contains(&served), "served {served}");
    assert_eq!(served + refused, 130);
    let (headers, body) = first_refusal.expect("a 429");
    let retry: u64 = headers
        .get("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("retry-after in {headers:?}"));
    assert!(retry >= 1, "retry-after {retry}");
    let error = body["error"].as_str().expect("a JSON error");
    assert!(error.contains("api_requests_per_second"), "{error}");

    // Another credential has a bucket of its own.
    for _ in 0..20 {
        let (status, _, body) = publish_call(node.http, Some(KEY_B), &m).await;
        assert_eq!(status, 202, "{body}");
    }
    // A batch counts each message: 80 left of key B's burst cannot carry 100 ...
    let batch = json!({"messages": vec![m.clone(); 100]});
    let (status, headers, _) = publish_call(node.http, Some(KEY_B), &batch).await;
    assert_eq!(status, 429);
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    // ... and a full burst carries one batch of 100, then nothing more.
    let (status, _, body) = publish_call(node.http, Some(KEY_C), &batch).await;
    assert_eq!(status, 202, "{body}");
    let (status, _, _) = publish_call(node.http, Some(KEY_C), &m).await;
    assert_eq!(status, 429);

    // Wrong credentials are refused before any bucket: 401, never 429.
    for i in 0..150 {
        let (status, _, _) = publish_call(node.http, Some(&format!("wrong-{i}")), &m).await;
        assert_eq!(status, 401);
    }
    let (status, _, _) = publish_call(node.http, None, &m).await;
    assert_eq!(status, 401);
    assert_eq!(
        stat(node.http, "api_requests_limited_total").await,
        refused + 2
    );
}

#[tokio::test]
async fn a_binary_body_reaches_the_subscriber_byte_for_byte() {
    let node = Node::standalone(&[]);
    let mut sub = WsClient::connect(&node.ws_url()).await;
    sub.subscribe("s", "/topic/binary").await;

    // NUL, bytes that are never UTF-8, an invalid sequence, a newline.
    let bytes: Vec<u8> = vec![0x00, 0xff, 0xfe, b'\n', 0x80, b'a', 0x00, 0xc3, 0x28, 0xf5];
    let encoded = "AP/+CoBhAMMo9Q==";
    let (status, _, body) = publish_call(
        node.http,
        None,
        &json!({"destination": "/topic/binary", "body_base64": encoded}),
    )
    .await;
    assert_eq!(status, 202, "{body}");

    let f = sub.frame().await.expect("MESSAGE");
    assert_eq!(f.command, Cmd::Message, "{f:?}");
    assert_eq!(&f.body[..], &bytes[..]);
    assert_eq!(
        f.get("content-length"),
        Some(bytes.len().to_string().as_str())
    );
    assert_eq!(f.get("message-id"), body["id"].as_str());

    // Both forms at once, or base64 that is not, are refused and say why.
    let both = json!({"destination": "/topic/binary", "body": "x", "body_base64": "eA=="});
    let (status, _, body) = publish_call(node.http, None, &both).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not both"),
        "{body}"
    );
    let bad = json!({"destination": "/topic/binary", "body_base64": "not base64!"});
    let (status, _, body) = publish_call(node.http, None, &bad).await;
    assert_eq!(status, 400);
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("body_base64"), "{body}");
    sub.expect_silence(std::time::Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn a_batch_is_published_in_order_or_not_at_all() {
    let node = Node::standalone(&[]);
    let mut sub = WsClient::connect(&node.ws_url()).await;
    sub.subscribe("s", "/topic/batch").await;

    let bodies: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
    let batch =
        json!({"messages": bodies.iter().map(|b| message("/topic/batch", b)).collect::<Vec<_>>()});
    let (status, _, answer) = publish_call(node.http, None, &batch).await;
    assert_eq!(status, 202, "{answer}");
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), 5);
    for (i, body) in bodies.iter().enumerate() {
        let f = sub.frame().await.expect("MESSAGE");
        assert_eq!(String::from_utf8_lossy(&f.body), *body);
        assert_eq!(f.get("message-id"), results[i]["id"].as_str(), "{answer}");
    }

    // One bad message (a destination that is no topic) publishes nothing and is named.
    let mut messages: Vec<Value> = (0..4)
        .map(|i| message("/topic/batch", &format!("bad{i}")))
        .collect();
    messages[2] = message("/queue/nowhere", "bad2");
    let (status, _, answer) = publish_call(node.http, None, &json!({"messages": messages})).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["index"], 2, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("messages[2]"),
        "{answer}"
    );

    // Past 100 messages: refused whole.
    let long = json!({"messages": vec![message("/topic/batch", "long"); 101]});
    let (status, _, answer) = publish_call(node.http, None, &long).await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("at most 100"),
        "{answer}"
    );

    // Empty, or fields beside `messages`: 400.
    let (status, _, _) = publish_call(node.http, None, &json!({"messages": []})).await;
    assert_eq!(status, 400);
    let mixed = json!({"messages": [message("/topic/batch", "x")], "destination": "/topic/batch"});
    let (status, _, _) = publish_call(node.http, None, &mixed).await;
    assert_eq!(status, 400);

    // The next thing the subscriber sees is this, not a message of a refused batch.
    let (status, _, _) = publish_call(node.http, None, &message("/topic/batch", "after")).await;
    assert_eq!(status, 202);
    let f = sub.frame().await.expect("MESSAGE");
    assert_eq!(String::from_utf8_lossy(&f.body), "after");
    assert_eq!(stat(node.http, "messages_published_http_total").await, 6);
}
