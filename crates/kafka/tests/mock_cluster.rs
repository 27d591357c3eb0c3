//! Fast checks of the adapter on librdkafka's in-process mock cluster. The behaviour
//! users see is tested on a real broker process in crates/cli/tests/kafka.rs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pushcenter_kafka::{KafkaBus, KafkaConfig};
use pushcenter_node::{Bus, Delivery, Record, Reply, ReplyKind, Stats};
use rdkafka::mocking::MockCluster;

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(20), "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_reply_come_back_through_the_consumer() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    for topic in [
        "pushcenter.messages",
        "pushcenter.targeted",
        "pushcenter.replies",
    ] {
        cluster.create_topic(topic, 3, 1).expect("topic");
    }
    let cfg = KafkaConfig {
        brokers: cluster.bootstrap_servers(),
        partitions: 3,
        ..KafkaConfig::default()
    };
    let bus = KafkaBus::new(cfg, "t1", Duration::from_secs(5)).expect("bus");
    let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let replies: Arc<Mutex<Vec<Reply>>> = Arc::default();
    let (sink, reply_sink) = (got.clone(), replies.clone());
    let starts: Arc<Mutex<Vec<String>>> = Arc::default();
    let starts_sink = starts.clone();
    bus.start(
        Arc::new(move |d| sink.lock().expect("lock").push(d)),
        Arc::new(move |r| reply_sink.lock().expect("lock").push(r)),
        Arc::new(move |stream: &str, _from: i64, _live: i64| {
            starts_sink.lock().expect("lock").push(stream.to_owned())
        }),
        Arc::new(Stats::default()),
    );
    until("bus ready", || bus.ready()).await;
    // Every partition of the messages topic is a stream of the replay window, and the
    // node's home partition of the targeted topic (where pushes to its sessions land).
    let home = pushcenter_node::placement::partition_of("t1", 3);
    assert_eq!(
        *starts.lock().expect("lock"),
        ["0".to_string(), "1".into(), "2".into(), format!("t{home}")]
    );

    let id = bus
        .publish(Record {
            destination: "/topic/mock".into(),
            headers: vec![("content-type".into(), "text/plain".into())],
            body: "hello".into(),
            ..Record::default()
        })
        .await
        .expect("published");
    until("delivery", || !got.lock().expect("lock").is_empty()).await;
    let d = got.lock().expect("lock")[0].clone();
    assert_eq!(d.id, id);
    assert_eq!(d.record.destination, "/topic/mock");
    assert_eq!(&d.record.body[..], b"hello");
    assert_eq!(
        d.record.headers,
        vec![("content-type".to_string(), "text/plain".to_string())]
    );

    let sent = Reply {
        correlation_id: "t1-42".into(),
        node: Some("t1".into()),
        kind: ReplyKind::Delivered,
        headers: vec![("status".into(), "ok".into())],
        body: "done".into(),
        ..Reply::default()
    };
    bus.reply(sent.clone()).await.expect("reply sent");
    // A client's answer, with a callback's confirmation address: all of it arrives.
    let answer = Reply {
        correlation_id: "t1-43".into(),
        kind: ReplyKind::Answer,
        answerer: Some(pushcenter_node::Answerer {
            session: "t1-ab-7".into(),
            user: Some("alice".into()),
        }),
        confirm: Some(("t2".into(), "c9".into())),
        ..sent.clone()
    };
    bus.reply(answer.clone()).await.expect("reply sent");
    until("replies", || replies.lock().expect("lock").len() == 2).await;
    // Keyed by correlation id: the two may come from different partitions.
    let got = replies.lock().expect("lock").clone();
    assert!(got.contains(&sent) && got.contains(&answer), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_fails_within_the_timeout_when_the_broker_is_down() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    for topic in [
        "pushcenter.messages",
        "pushcenter.targeted",
        "pushcenter.replies",
    ] {
        cluster.create_topic(topic, 3, 1).expect("topic");
    }
    let cfg = KafkaConfig {
        brokers: cluster.bootstrap_servers(),
        ..KafkaConfig::default()
    };
    let bus = KafkaBus::new(cfg, "t2", Duration::from_secs(1)).expect("bus");
    bus.start(
        Arc::new(|_| {}),
        Arc::new(|_| {}),
        Arc::new(|_: &str, _: i64, _: i64| {}),
        Arc::new(Stats::default()),
    );
    until("bus ready", || bus.ready()).await;
    cluster.broker_down(1).expect("broker down");
    let start = Instant::now();
    let r = bus
        .publish(Record {
            destination: "/topic/mock".into(),
            ..Record::default()
        })
        .await;
    assert!(r.is_err(), "{r:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    until("not ready", || !bus.ready()).await;
}

/// A reader that panics (here: the node's callback, on the first record) is started
/// again from where it was: the next record still arrives, none is delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_reader_goes_on_from_where_it_was() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    for topic in [
        "pushcenter.messages",
        "pushcenter.targeted",
        "pushcenter.replies",
    ] {
        cluster.create_topic(topic, 1, 1).expect("topic");
    }
    let cfg = KafkaConfig {
        brokers: cluster.bootstrap_servers(),
        partitions: 1,
        ..KafkaConfig::default()
    };
    let bus = KafkaBus::new(cfg, "t3", Duration::from_secs(5)).expect("bus");
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = got.clone();
    let stats = Arc::new(Stats::default());
    bus.start(
        Arc::new(move |d: Delivery| {
            let body = String::from_utf8_lossy(&d.record.body).into_owned();
            assert_ne!(body, "boom", "the node's callback fails on this one");
            sink.lock().expect("lock").push(body);
        }),
        Arc::new(|_| {}),
        Arc::new(|_: &str, _: i64, _: i64| {}),
        stats.clone(),
    );
    until("bus ready", || bus.ready()).await;
    for body in ["one", "boom", "two"] {
        bus.publish(Record {
            destination: "/topic/mock".into(),
            body: body.into(),
            ..Record::default()
        })
        .await
        .expect("published");
    }
    until("the record after the panic", || {
        got.lock().expect("lock").len() == 2
    })
    .await;
    assert_eq!(*got.lock().expect("lock"), ["one", "two"]);
    assert_eq!(
        stats
            .bus_consumer_restarts_total
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}
