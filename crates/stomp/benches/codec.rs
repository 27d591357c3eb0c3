//! Decode and encode of a typical MESSAGE: 6 headers, ~200-byte body.

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pushcenter_stomp::{Command, Frame, Item, Limits, Version, decode, encode};

const FRAMES_PER_BATCH: usize = 1000;

fn typical_message() -> Frame {
    Frame::new(Command::Message)
        .header("destination", "/topic/orders.42")
        .header("message-id", "3-1048576")
        .header("subscription", "sub-0")
        .header("content-type", "application/json")
        .header("timestamp", "1795000000000")
        .body(format!(
            "{{\"order\":42,\"status\":\"shipped\",\"note\":\"{}\"}}",
            "x".repeat(158)
        ))
}

fn codec(c: &mut Criterion) {
    let frame = typical_message();
    let mut one = BytesMut::new();
    encode(&frame, Version::V1_2, &mut one).expect("encodable");
    assert_eq!(
        frame.header_count() + 1,
        6,
        "five headers plus content-length"
    );

    let mut stream = BytesMut::new();
    for _ in 0..FRAMES_PER_BATCH {
        stream.extend_from_slice(&one);
    }
    let limits = Limits::default();

    let mut group = c.benchmark_group("message");
    group.throughput(Throughput::Elements(FRAMES_PER_BATCH as u64));
    group.bench_function("decode", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&stream[..]),
            |buf| {
                let mut n = 0;
                while let Ok(Some(Item::Frame(f))) = decode(buf, &limits) {
                    n += f.body.len();
                }
                n
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("encode", |b| {
        let mut out = BytesMut::with_capacity(one.len() * FRAMES_PER_BATCH);
        b.iter(|| {
            out.clear();
            for _ in 0..FRAMES_PER_BATCH {
                let _ = encode(&frame, Version::V1_2, &mut out);
            }
            out.len()
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
