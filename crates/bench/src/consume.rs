//! `consume`: what one node spends in CPU to consume records. A Tansu broker and one
//! `pushcenter node` (Kafka, no registry) start on loopback; the node is stopped
//! (SIGSTOP) while the records are produced straight to the messages topic, then
//! continued, and its CPU is read from /proc until its consumer has fetched them all
//! (and, routing, until the one subscriber has read them all).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::{Api, Scratch, interruptible, start_broker, start_pushcenter, stats};
use crate::progress::bar;
use crate::{At, Conn, Error, OPEN_TIMEOUT, Result, Target};

/// Which broker holds the records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsumeBroker {
    /// A Tansu process: a real broker, which on two shared cores is the pace.
    Tansu,
    /// librdkafka's mock cluster in this process: it serves fetches from memory, so
    /// the node's own cost is the limit. It keeps at most 5 MiB per partition.
    Mock,
}

/// Messages partitions on the mock cluster: room for [`MOCK_MAX_RECORDS`].
const MOCK_PARTITIONS: usize = 16;
/// What the mock cluster keeps of 100-byte records (5 MiB per partition, with room).
const MOCK_MAX_RECORDS: u64 = 400_000;

/// Whether anyone wants the records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsumeMode {
    /// Nobody subscribes: each record is read, put into the replay window and dropped
    /// after one lookup.
    Drop,
    /// One subscriber of `/topic/consume` reads every record.
    Route,
}

#[derive(Clone, Debug)]
pub struct ConsumeOpts {
    /// The `pushcenter` executable the node runs (this one).
    pub program: PathBuf,
    pub records: u64,
    pub mode: ConsumeMode,
    pub broker: ConsumeBroker,
}

#[derive(Debug, Serialize)]
pub struct ConsumeReport {
    pub scenario: &'static str,
    pub records: u64,
    pub mode: ConsumeMode,
    pub broker: ConsumeBroker,
    pub body_bytes: usize,
    /// Partitions of the messages topic the records were spread over.
    pub partitions: usize,
    /// Producing them while the node was stopped.
    pub produce_seconds: f64,
    /// From SIGCONT until the node fetched every record (and, routing, the subscriber
    /// read every one).
    pub seconds: f64,
    pub records_per_second: f64,
    pub node_cpu_seconds: f64,
    pub cpu_seconds_per_100k: f64,
    /// MESSAGEs the subscriber read (route mode).
    pub deliveries: u64,
    /// What the node's counters say it fetched and queued to subscribers meanwhile.
    pub fetched: u64,
    pub messages_delivered: u64,
    pub node_rss_bytes: Option<u64>,
    /// Settings of the node beyond the defaults.
    pub node_settings: Vec<&'static str>,
}

const BODY_BYTES: usize = 100;
const TOPIC: &str = "pushcenter.messages";
const DESTINATION: &str = "/topic/consume";

/// The node's outbox holds the whole burst: a subscriber on the same two cores may
/// fall behind for a moment, and the default slow-consumer policy would close it.
const NODE_SETTINGS: [&str; 2] = [
    "outbound_max_messages = 1000000",
    "outbound_max_bytes = 1073741824",
];

pub async fn consume(o: ConsumeOpts) -> Result<ConsumeReport> {
    if o.records == 0 {
        return Err(Error::Options("--records must be at least 1"));
    }
    if o.broker == ConsumeBroker::Mock && o.records > MOCK_MAX_RECORDS {
        return Err(Error::Options(
            "--broker mock keeps 5 MiB per partition: --records at most 400000",
        ));
    }
    interruptible(run(o)).await
}

async fn run(o: ConsumeOpts) -> Result<ConsumeReport> {
    let scratch = Scratch::create("consume")?;
    let dir = scratch.path().to_path_buf();
    eprintln!(
        "starting {:?} and one node; data and logs in {}",
        o.broker,
        dir.display()
    );
    // Held until the run ends: dropping either stops the broker.
    let (_tansu, _mock, brokers) = match o.broker {
        ConsumeBroker::Tansu => {
            let tansu = start_broker(&dir).await?;
            let addr = tansu.addr.to_string();
            (Some(tansu), None, addr)
        }
        ConsumeBroker::Mock => {
            let mock = rdkafka::mocking::MockCluster::new(1)?;
            for (topic, n) in [
                (TOPIC, MOCK_PARTITIONS),
                ("pushcenter.targeted", 64),
                ("pushcenter.replies", 16),
            ] {
                mock.create_topic(topic, i32::try_from(n).unwrap_or(1), 1)?;
            }
            let addr = mock.bootstrap_servers();
            (None, Some(mock), addr)
        }
    };
    let config = dir.join("n1.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = \"n1\"\nhttp_addr = \"127.0.0.1:0\"\n{}\n\n[kafka]\nbrokers = \"{}\"\n\n\
             [kafka.consumer]\n\"fetch.wait.max.ms\" = \"5\"\n",
            NODE_SETTINGS.join("\n"),
            brokers
        ),
    )?;
    let config = config.display().to_string();
    let (mut node, http) = start_pushcenter(
        &o.program,
        "n1",
        &["node", "--config", &config],
        dir.join("n1.log"),
    )
    .await?;
    let mut api = Api::new(http);
    let started = Instant::now();
    loop {
        if let Some(why) = node.exited() {
            return Err(why.into());
        }
        if matches!(api.get("/readyz").await, Ok((200, _))) {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "the node was not ready within 60 s; the end of its log:\n{}",
                node.log_tail()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let delivered = Arc::new(AtomicU64::new(0));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let reader = if o.mode == ConsumeMode::Route {
        let target = Target {
            url: format!("ws://{http}/ws"),
            ..Target::default()
        };
        let mut conn = tokio::time::timeout(OPEN_TIMEOUT, Conn::open(&target, 0, DESTINATION))
            .await
            .map_err(|_| Error::Timeout(OPEN_TIMEOUT))
            .at(&target.url)??;
        let delivered = delivered.clone();
        Some(tokio::spawn(async move {
            loop {
                let mut n = 0u64;
                let r = tokio::select! {
                    biased;
                    _ = stop_rx.changed() => return Ok(()),
                    r = conn.messages(|_| n += 1) => r,
                };
                delivered.fetch_add(n, Ordering::Relaxed);
                match r {
                    Ok(true) => {}
                    Ok(false) => return Err(Error::from("the subscriber's connection closed")),
                    Err(e) => return Err(e),
                }
            }
        }))
    } else {
        None
    };

    let base = stats(&mut api).await?;
    let kafka = format!("kafka {brokers}");
    let producer = producer(&brokers).at(&kafka)?;
    let partitions = partitions(&producer).at(&kafka)?;
    node.signal("STOP")?;
    eprintln!(
        "node stopped (SIGSTOP); producing {} records over {partitions} partitions",
        o.records
    );
    let produce_start = Instant::now();
    produce(&producer, o.records, partitions).await.at(&kafka)?;
    let produce_seconds = produce_start.elapsed().as_secs_f64();
    eprintln!("produced in {produce_seconds:.1} s; continuing the node (SIGCONT)");

    let cpu0 = node.cpu().ok_or("the node's /proc entry is gone")?;
    node.signal("CONT")?;
    let t0 = Instant::now();
    let within = Duration::from_secs(60 + o.records / 1000);
    let (mut fetched, mut queued);
    loop {
        let now = stats(&mut api).await?;
        fetched = now.fetched_messages.saturating_sub(base.fetched_messages);
        queued = now.delivered.saturating_sub(base.delivered);
        let got = delivered.load(Ordering::Relaxed);
        if fetched >= o.records && (o.mode == ConsumeMode::Drop || got >= o.records) {
            break;
        }
        // A subscriber that stopped reading: its error is the run's.
        if reader.as_ref().is_some_and(|r| r.is_finished()) {
            break;
        }
        if t0.elapsed() > within {
            return Err(format!(
                "after {within:?} the node fetched {fetched} of {} records, the subscriber read {got}",
                o.records
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu1 = node.cpu().ok_or("the node's /proc entry is gone")?;
    let node_rss_bytes = node.rss();
    let _ = stop_tx.send(true);
    if let Some(r) = reader {
        r.await??;
    }
    let deliveries = delivered.load(Ordering::Relaxed);
    let cpu = (cpu1 - cpu0).max(0.0);
    Ok(ConsumeReport {
        scenario: "consume",
        records: o.records,
        mode: o.mode,
        broker: o.broker,
        body_bytes: BODY_BYTES,
        partitions,
        produce_seconds,
        seconds,
        records_per_second: o.records as f64 / seconds.max(1e-9),
        node_cpu_seconds: cpu,
        cpu_seconds_per_100k: cpu * 100_000.0 / o.records as f64,
        deliveries,
        fetched,
        messages_delivered: queued,
        node_rss_bytes,
        node_settings: NODE_SETTINGS.to_vec(),
    })
}

type Producer = rdkafka::producer::FutureProducer;

fn producer(brokers: &str) -> Result<Producer> {
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "120000");
    Ok(config.create()?)
}

/// Partitions of the messages topic (the node created it before it was ready).
fn partitions(producer: &Producer) -> Result<usize> {
    use rdkafka::producer::Producer as _;
    let md = producer
        .client()
        .fetch_metadata(Some(TOPIC), Duration::from_secs(10))?;
    let n = md
        .topics()
        .iter()
        .find(|t| t.name() == TOPIC)
        .map_or(0, |t| t.partitions().len());
    if n == 0 {
        return Err(format!("the broker has no partitions of {TOPIC}").into());
    }
    Ok(n)
}

/// `records` records, in turn over the partitions, each acknowledged.
async fn produce(producer: &Producer, records: u64, partitions: usize) -> Result<()> {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{DeliveryFuture, FutureRecord};
    use std::collections::VecDeque;

    let produced = bar("produced", records, true);
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::new();
    let settle = |f: DeliveryFuture| async move {
        match f.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(Error::Kafka(e)),
            Err(_) => Err(Error::from("a produced record's acknowledgement was lost")),
        }
    };
    for seq in 0..records {
        let mut body = format!("{seq:010} ");
        body.extend(std::iter::repeat_n('x', BODY_BYTES - body.len()));
        let partition = i32::try_from(seq % partitions as u64).unwrap_or(0);
        let mut record = FutureRecord::<(), _>::to(TOPIC)
            .partition(partition)
            .payload(&body)
            .headers(OwnedHeaders::new().insert(Header {
                key: "destination",
                value: Some(DESTINATION),
            }));
        loop {
            match producer.send_result(record) {
                Ok(f) => {
                    pending.push_back(f);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    match pending.pop_front() {
                        Some(f) => settle(f).await?,
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                Err((e, _)) => return Err(Error::Kafka(e)),
            }
        }
        produced.inc(1);
    }
    produced.finish();
    let acknowledged = bar("acknowledged", pending.len() as u64, true);
    for f in pending {
        settle(f).await?;
        acknowledged.inc(1);
    }
    acknowledged.finish();
    Ok(())
}
