//! Fan-out of one MESSAGE to 10,000 local subscribers, in deliveries per second.
//!
//! `deliver`: routing, encoding the shared part once and pushing into 10,000 bounded
//! outboxes. `deliver_write`: that, then what each connection task does with it:
//! drain its outbox and render the subscriber's MESSAGE frame (its `subscription`
//! and `ack` lines and the shared bytes), up to the socket write.
//! Subscribers are on the exact topic or on a `*` pattern matching it.
//! `fanout_unrouted`: the cost of a record no local subscriber wants.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pushcenter_node::testing::Fanout;
use pushcenter_node::{Delivery, Record};

const SUBSCRIBERS: usize = 10_000;
const TOPIC: &str = "/topic/orders.42";

/// The message of the codec bench: with `destination`, `message-id`,
/// `subscription` and `content-length`, 6 headers and a 200-byte JSON body.
fn typical_delivery() -> Delivery {
    Delivery {
        id: "3-1048576".into(),
        record: Record {
            destination: TOPIC.into(),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("timestamp".into(), "1795000000000".into()),
            ],
            body: Bytes::from(format!(
                "{{\"order\":42,\"status\":\"shipped\",\"note\":\"{}\"}}",
                "x".repeat(158)
            )),
            ..Record::default()
        },
    }
}

fn fanout(c: &mut Criterion) {
    let d = typical_delivery();
    let cases = [
        ("exact", TOPIC, "auto"),
        ("wildcard", "/topic/orders.*", "auto"),
        ("exact_client_ack", TOPIC, "client-individual"),
    ];
    let mut group = c.benchmark_group("fanout_10k");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    for (name, destination, ack) in cases {
        let mut f = Fanout::new(SUBSCRIBERS, destination, ack).expect("bench subscriptions");
        let before = f.delivered();
        f.deliver(&d);
        assert_eq!(
            f.delivered() - before,
            SUBSCRIBERS as u64,
            "{name}: every subscriber"
        );
        assert!(
            f.write_all() > 300 * SUBSCRIBERS,
            "{name}: a whole MESSAGE each"
        );
        f.ack_all();

        if ack == "auto" {
            group.bench_function(format!("deliver/{name}"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        f.deliver(black_box(&d));
                        total += start.elapsed();
                        f.clear();
                    }
                    total
                })
            });
        }
        group.bench_function(format!("deliver_write/{name}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    f.deliver(black_box(&d));
                    black_box(f.write_all());
                    total += start.elapsed();
                    f.ack_all();
                }
                total
            })
        });
    }
    group.finish();

    // A record nobody here subscribes to: the common case on a node of a cluster,
    // where every node receives every record.
    let mut group = c.benchmark_group("fanout_unrouted");
    group.throughput(Throughput::Elements(1));
    let f = Fanout::new(SUBSCRIBERS, TOPIC, "auto").expect("bench subscriptions");
    let mut elsewhere = d.clone();
    elsewhere.record.destination = "/topic/orders.43".into();
    group.bench_function("deliver", |b| b.iter(|| f.deliver(black_box(&elsewhere))));
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
