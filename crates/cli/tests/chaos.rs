//! Failover with resume on real processes: etcd, a Tansu broker, three nodes, the
//! registry; 300 clients (each its own user) found their node through the registry, each
//! subscribed to its own destination, to one of 20 shared ones and to its user queue; a
//! publisher at 300 records/s for 30 s, a third of them pushes to one user (the
//! targeted topic, read only by the nodes of its users);
//! one node killed (kill -9) or drained (SIGTERM) mid-run, or every node restarted in
//! turn (a rolling restart: SIGTERM, exit, start again). Their clients rediscover,
//! reconnect and resume. Every client must get every record of its destinations exactly
//! once, in Kafka order per key; the failover time (last message before the loss, first
//! after) is printed as p50/p99.
//!
//! `CHAOS_SECONDS` (default 30) and `CHAOS_RATE` (default 300) scale the run. Tansu's
//! in-memory storage spends time per stored batch on every fetch and produce: at 1,000
//! records/s its CPU grew to both cores within the run, the publisher fell to ~150/s
//! and the run took 3-4 minutes of starved nodes; at 300/s it keeps the schedule.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::broker::Broker;
use common::etcd::Etcd;
use common::*;
use futures_util::{SinkExt, StreamExt};
use pushcenter_stomp::{Command, Frame, Item, Limits, Version, decode, encode};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const CLIENTS: usize = 300;
const SHARED: usize = 20;
// Position updates often, so resumes start from them as much as from messages; records
// routed on two threads, so order per partition is checked across them.
const NODE_CONFIG: &str = "report_interval = \"500ms\"\nshutdown_grace = \"3s\"\n\
    position_updates = \"200ms\"\ninsecure_login_as_user = true\n[etcd]\nttl = \"3s\"\n\
    [kafka]\ntargeted_partitions = 24\nrouting_threads = 2\n";

/// One run at a time: each uses both cores.
static RUNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn own(i: usize) -> String {
    format!("/topic/chaos.c{i}")
}

fn shared(i: usize) -> String {
    format!("/topic/chaos.s{}", i % SHARED)
}

/// Client `i`'s user.
fn user(i: usize) -> String {
    format!("c{i}")
}

/// Where pushes to a user go.
const USER_QUEUE: &str = "/user/queue/chaos";

/// What a client's three subscriptions are kept under: its own destination, the shared
/// one, its user's pushes.
fn keys(i: usize) -> [String; 3] {
    [own(i), shared(i), format!("user:{}", user(i))]
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// Record sequence numbers per destination, in arrival order.
    seqs: HashMap<String, Vec<u64>>,
    /// Kafka offsets per destination (one key, one partition), in arrival order.
    offsets: HashMap<String, Vec<i64>>,
    /// Per destination, for each arrival: which connection (index into `nodes`) and
    /// whether it came before that connection's RECEIPT of the resuming SUBSCRIBE.
    via: HashMap<String, Vec<(usize, bool)>>,
    /// Time of each message.
    last_at: Option<Instant>,
    /// Failovers: (last message before, first message after).
    failovers: Vec<(Instant, Option<Instant>)>,
    lost_resumes: usize,
    position_updates: usize,
    nodes: Vec<String>,
    /// Every record body seen, and MESSAGEs whose destination was not their subscription's.
    all: HashSet<u64>,
    mismatched: Vec<(u64, String, String)>,
}

/// Positions per subscription id, as a resuming client keeps them.
#[derive(Default, Clone)]
struct Positions {
    map: BTreeMap<String, i64>,
    positioned: bool,
}

impl Positions {
    fn see(&mut self, id: &str) {
        if let Some((s, o)) = id.rsplit_once('-') {
            if let Ok(o) = o.parse::<i64>() {
                let e = self.map.entry(s.to_string()).or_insert(o);
                *e = (*e).max(o);
            }
        }
    }

    fn header(&self) -> String {
        let v: Vec<String> = self.map.iter().map(|(s, o)| format!("{s}-{o}")).collect();
        v.join(",")
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(ws: &mut Ws, f: &Frame) -> bool {
    let mut b = BytesMut::new();
    encode(f, Version::V1_2, &mut b).expect("encode");
    ws.send(Message::Binary(b.freeze())).await.is_ok()
}

/// One client: discover, connect, subscribe (resuming), read until the connection ends
/// or `stop`; then again, avoiding the node it lost.
async fn client(i: usize, registry: SocketAddr, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let dests = [own(i), shared(i), USER_QUEUE.to_string()];
    let keys = keys(i);
    let mut pos: [Positions; 3] = Default::default();
    let mut avoid: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let path = match &avoid {
            Some(n) => format!("/v1/connect?user={}&avoid={n}", user(i)),
            None => format!("/v1/connect?user={}", user(i)),
        };
        let (status, body) = http(registry, "GET", &path, "").await;
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        let (Some(url), Some(node)) = (v["ws_url"].as_str(), v["node_id"].as_str()) else {
            assert!(status == 503, "registry: {status} {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let node = node.to_string();
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
                .expect("request");
        req.headers_mut().insert(
            "sec-websocket-protocol",
            "v12.stomp".parse().expect("header"),
        );
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(req).await else {
            avoid = Some(node);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        seen.lock().unwrap().nodes.push(node.clone());
        let mut ok = send(
            &mut ws,
            &Frame::new(Command::Connect)
                .header("accept-version", "1.2")
                .header("heart-beat", "0,0")
                .header("login", user(i))
                .header("position-updates", "on"),
        )
        .await;
        for (k, d) in dests.iter().enumerate() {
            let mut f = Frame::new(Command::Subscribe)
                .header("id", k.to_string())
                .header("destination", d)
                .header("receipt", format!("{k}"));
            if pos[k].positioned {
                f.push_header("resume-from", pos[k].header());
            }
            ok = ok && send(&mut ws, &f).await;
        }
        let mut buf = BytesMut::new();
        let mut resumed_first = true;
        let mut receipted = [false; 3];
        if !ok {
            avoid = Some(node);
            continue;
        }
        'read: loop {
            let next = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
            if stop.load(Ordering::Relaxed) {
                let _ = ws.close(None).await;
                return;
            }
            let data = match next {
                Err(_) => continue,
                Ok(Some(Ok(Message::Binary(b)))) => b.to_vec(),
                Ok(Some(Ok(Message::Text(t)))) => t.as_bytes().to_vec(),
                Ok(Some(Ok(Message::Close(_)) | Err(_))) | Ok(None) => break,
                Ok(Some(Ok(_))) => continue,
            };
            buf.extend_from_slice(&data);
            loop {
                let f = match decode(&mut buf, &Limits::default()) {
                    Ok(Some(Item::Frame(f))) => f,
                    Ok(Some(Item::HeartBeat)) => continue,
                    Ok(None) => break,
                    Err(e) => panic!("client {i}: bad frame: {e}"),
                };
                match f.command {
                    Command::Receipt if f.get("receipt-id") == Some("position") => {
                        let k: usize = f.get("subscription").unwrap_or("0").parse().unwrap_or(0);
                        if pos[k].positioned {
                            for id in f.get("position").unwrap_or_default().split(',') {
                                pos[k].see(id);
                            }
                            seen.lock().unwrap().position_updates += 1;
                        }
                    }
                    Command::Receipt => {
                        let k: usize = f.get("receipt-id").unwrap_or("0").parse().unwrap_or(0);
                        if k < 3 {
                            receipted[k] = true;
                        }
                        if !pos[k].positioned {
                            for id in f.get("position").unwrap_or_default().split(',') {
                                pos[k].see(id);
                            }
                            pos[k].positioned = true;
                        } else if f.get("resume") == Some("lost") {
                            let mut s = seen.lock().unwrap();
                            s.lost_resumes += 1;
                            eprintln!(
                                "client {i}: resume of {} on {:?} lost {:?}",
                                dests[k],
                                s.nodes.last(),
                                f.get("resume-lost")
                            );
                        }
                    }
                    Command::Message => {
                        let k: usize = f.get("subscription").unwrap_or("0").parse().unwrap_or(0);
                        let id = f.get("message-id").expect("message-id");
                        pos[k].see(id);
                        let offset: i64 = id
                            .rsplit_once('-')
                            .and_then(|(_, o)| o.parse().ok())
                            .unwrap_or(-1);
                        let seq: u64 = String::from_utf8_lossy(&f.body).parse().expect("seq body");
                        let now = Instant::now();
                        let mut s = seen.lock().unwrap();
                        if resumed_first {
                            resumed_first = false;
                            if let Some(f) = s.failovers.last_mut().filter(|f| f.1.is_none()) {
                                f.1 = Some(now);
                            }
                        }
                        s.last_at = Some(now);
                        s.all.insert(seq);
                        let d = f.get("destination").unwrap_or_default();
                        if d != dests[k] {
                            s.mismatched.push((seq, d.to_string(), dests[k].clone()));
                        }
                        s.seqs.entry(keys[k].clone()).or_default().push(seq);
                        s.offsets.entry(keys[k].clone()).or_default().push(offset);
                        let conn = s.nodes.len() - 1;
                        s.via
                            .entry(keys[k].clone())
                            .or_default()
                            .push((conn, !receipted[k]));
                    }
                    Command::Error => break 'read,
                    _ => {}
                }
            }
        }
        // Lost the node (or it drains): remember when the last message came.
        {
            let mut s = seen.lock().unwrap();
            if let Some(t) = s.last_at {
                s.failovers.push((t, None));
            }
        }
        avoid = Some(node);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn run(kill_signal: &str) {
    let _serial = RUNS.lock().await;
    let seconds = env_or("CHAOS_SECONDS", 30);
    let rate = env_or("CHAOS_RATE", 300);
    let etcd = Etcd::start();
    let broker = Broker::start();
    let config = std::env::temp_dir().join(format!("pushcenter-chaos-{}.toml", std::process::id()));
    std::fs::write(&config, NODE_CONFIG).expect("config");
    let cfg = config.to_str().expect("utf-8").to_string();
    let start_node = {
        let (brokers, etcd, cfg) = (broker.brokers(), etcd.endpoint(), cfg.clone());
        move |i: usize| {
            Node::cluster(
                &format!("n{i}"),
                &brokers,
                &["--etcd-endpoints", &etcd, "--config", &cfg],
            )
        }
    };
    let mut nodes: Vec<Node> = (1..=3).map(&start_node).collect();
    // Rolling: the publisher's own node, not registered, so no client lands on it.
    // Its Kafka acks may stall for seconds while the others restart and read their
    // history from the same broker on two cores: the run is about the clients' nodes,
    // so its publishes wait longer than the default 5 s instead of failing.
    let publisher_config = std::env::temp_dir().join(format!(
        "pushcenter-chaos-publisher-{}.toml",
        std::process::id()
    ));
    std::fs::write(&publisher_config, "publish_timeout = \"30s\"\n").expect("config");
    let publisher = (kill_signal == "ROLL").then(|| {
        let path = publisher_config.to_str().expect("utf-8");
        Node::cluster("p", &broker.brokers(), &["--config", path])
    });
    let registry = Node::registry(&etcd.endpoint());
    for n in nodes.iter().chain(&publisher) {
        ready(n).await;
    }
    for _ in 0..100 {
        let (_, b) = http(registry.http, "GET", "/v1/nodes", "").await;
        if serde_json::from_str::<Value>(&b).unwrap_or_default()["totals"]["nodes"] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let seen: Vec<Arc<Mutex<Seen>>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for (i, s) in seen.iter().enumerate() {
        tasks.push(tokio::spawn(client(
            i,
            registry.http,
            stop.clone(),
            s.clone(),
        )));
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Every client subscribed somewhere (and the registry spread them).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, b) = http(registry.http, "GET", "/v1/nodes", "").await;
        let v: Value = serde_json::from_str(&b).unwrap_or_default();
        if v["totals"]["subscriptions"] == 3 * CLIENTS as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "clients did not all subscribe: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let victim = 0;
    let on_victim = seen
        .iter()
        .filter(|s| s.lock().unwrap().nodes.last().map(String::as_str) == Some("n1"))
        .count();
    eprintln!("clients per node at start: n1 {on_victim} (the one to go)");

    // The publisher: a third each to own destinations, shared ones and users, through
    // n2 and n3 (a publish cut by the kill would leave its fate unknown).
    let published: Arc<Mutex<HashMap<String, HashSet<u64>>>> = Arc::default();
    let total = seconds * rate;
    let targets = match &publisher {
        Some(p) => [p.http, p.http],
        None => [nodes[1].http, nodes[2].http],
    };
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let started = Instant::now();
    let mut pubs = Vec::new();
    let mut killed_at = None;
    // Rolling: n1, n2, n3 in turn at 1/4, 2/4, 3/4 of the run: SIGTERM, wait for the
    // exit, start it again, wait until ready.
    let roller = (kill_signal == "ROLL").then(|| {
        let mut nodes = std::mem::take(&mut nodes);
        let run_for = Duration::from_secs(seconds);
        tokio::spawn(async move {
            for k in 0..nodes.len() {
                tokio::time::sleep_until((started + run_for * (k as u32 + 1) / 4).into()).await;
                let mut old = nodes.remove(k);
                let start_node = start_node.clone();
                let (status, new) = tokio::task::spawn_blocking(move || {
                    let status = old.signal("TERM");
                    (status, start_node(k + 1))
                })
                .await
                .expect("restart");
                assert!(status.success(), "n{} drain exit: {status}", k + 1);
                ready(&new).await;
                eprintln!("n{} restarted at {:?}", k + 1, started.elapsed());
                nodes.insert(k, new);
            }
            nodes
        })
    });
    for seq in 0..total {
        let due = started + Duration::from_micros(seq * 1_000_000 / rate);
        tokio::time::sleep_until(due.into()).await;
        if killed_at.is_none() && seq == total / 2 && roller.is_none() {
            killed_at = Some(Instant::now());
            match kill_signal {
                "KILL" => {
                    nodes[victim].signal("KILL");
                }
                sig => {
                    let pid = nodes[victim].pid().to_string();
                    std::process::Command::new("kill")
                        .args([format!("-{sig}"), pid])
                        .status()
                        .expect("kill");
                }
            }
        }
        let j = seq as usize / 3;
        let (key, body) = match seq % 3 {
            0 => (
                own(j % CLIENTS),
                serde_json::json!({"destination": own(j % CLIENTS), "body": seq.to_string()}),
            ),
            1 => (
                shared(j % SHARED),
                serde_json::json!({"destination": shared(j % SHARED), "body": seq.to_string()}),
            ),
            _ => (
                keys(j % CLIENTS)[2].clone(),
                serde_json::json!({"destination": USER_QUEUE, "user": user(j % CLIENTS),
                    "body": seq.to_string()}),
            ),
        };
        let permit = sem.clone().acquire_owned().await.expect("permit");
        let published = published.clone();
        let target = targets[(seq % 2) as usize];
        pubs.push(tokio::spawn(async move {
            let (status, body) = http(target, "POST", "/v1/publish", &body.to_string()).await;
            assert_eq!(status, 202, "publish {seq}: {body}");
            published
                .lock()
                .unwrap()
                .entry(key)
                .or_default()
                .insert(seq);
            drop(permit);
        }));
    }
    for p in pubs {
        p.await.expect("publisher");
    }
    if let Some(r) = roller {
        nodes = r.await.expect("rolling restart");
    }
    let publish_secs = started.elapsed().as_secs_f64();
    eprintln!("published {total} records in {publish_secs:.1} s");

    // Wait until every client has everything (or give up after 30 s and report).
    let published = published.lock().unwrap().clone();
    let expected = |i: usize| -> usize {
        keys(i)
            .iter()
            .map(|d| published.get(d).map_or(0, HashSet::len))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let behind = (0..CLIENTS)
            .filter(|&i| {
                let s = seen[i].lock().unwrap();
                s.seqs.values().map(Vec::len).sum::<usize>() < expected(i)
            })
            .count();
        if behind == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    if kill_signal == "TERM" {
        let status = nodes[victim].signal("0");
        assert!(status.success(), "drained node exit: {status}");
    }
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_file(&publisher_config);

    for (k, n) in nodes.iter().enumerate() {
        if k != victim || kill_signal == "ROLL" {
            let (_, stats) = http(n.http, "GET", "/v1/stats", "").await;
            eprintln!("n{} stats: {stats}", k + 1);
        }
    }
    // Misses across all clients first: one client or a whole node?
    let mut misses: BTreeMap<(String, u64), Vec<(usize, String)>> = BTreeMap::new();
    for (i, s) in seen.iter().enumerate() {
        let s = s.lock().unwrap();
        for d in keys(i) {
            let set: HashSet<u64> = s.seqs.get(&d).into_iter().flatten().copied().collect();
            for m in published.get(&d).into_iter().flatten() {
                if !set.contains(m) {
                    misses
                        .entry((d.clone(), *m))
                        .or_default()
                        .push((i, s.nodes.join(">")));
                }
            }
        }
    }
    for ((d, m), who) in misses.iter().take(20) {
        let anywhere: Vec<usize> = who
            .iter()
            .filter(|(i, _)| seen[*i].lock().unwrap().all.contains(m))
            .map(|(i, _)| *i)
            .collect();
        eprintln!(
            "missed {d} #{m} by {} clients: {who:?}; seen under another subscription by {anywhere:?}",
            who.len()
        );
    }
    for (i, s) in seen.iter().enumerate() {
        let s = s.lock().unwrap();
        if !s.mismatched.is_empty() {
            eprintln!(
                "client {i}: {} MESSAGEs on the wrong subscription, e.g. {:?}",
                s.mismatched.len(),
                &s.mismatched[..s.mismatched.len().min(3)]
            );
        }
    }
    eprintln!("{} records missed by someone", misses.len());

    // Exactly once, per-key order, failover times.
    let mut failovers = Vec::new();
    // Failover times by move (from>to), to see where the time goes.
    let mut hops: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut moved = 0;
    let mut lost_resumes = 0;
    let mut position_updates = 0;
    for (i, s) in seen.iter().enumerate() {
        let s = s.lock().unwrap();
        lost_resumes += s.lost_resumes;
        position_updates += s.position_updates;
        for d in keys(i) {
            let got = s.seqs.get(&d).cloned().unwrap_or_default();
            let set: HashSet<u64> = got.iter().copied().collect();
            if set.len() != got.len() {
                let offsets = s.offsets.get(&d).cloned().unwrap_or_default();
                let mut first: HashMap<u64, usize> = HashMap::new();
                for (k, seq) in got.iter().enumerate() {
                    if let Some(j) = first.insert(*seq, k) {
                        let via = s.via.get(&d).cloned().unwrap_or_default();
                        panic!(
                            "client {i} {d}: seq {seq} twice, at offsets {} and {} (arrivals {j}, {k} of {}); nodes {:?}; via (connection, before RECEIPT) {:?} and {:?}; arrivals around: {:?}",
                            offsets[j],
                            offsets[k],
                            got.len(),
                            s.nodes,
                            via.get(j),
                            via.get(k),
                            (j.saturating_sub(3)..(k + 3).min(got.len()))
                                .map(|a| (offsets[a], via.get(a)))
                                .collect::<Vec<_>>()
                        );
                    }
                }
            }
            let want = published.get(&d).cloned().unwrap_or_default();
            let missing: Vec<&u64> = want.difference(&set).take(5).collect();
            if let Some(&&m) = missing.first() {
                let offsets = s.offsets.get(&d).cloned().unwrap_or_default();
                let around: Vec<(u64, i64)> = got
                    .iter()
                    .zip(&offsets)
                    .filter(|(q, _)| q.abs_diff(m) < 200)
                    .map(|(q, o)| (*q, *o))
                    .collect();
                eprintln!("client {i} {d}: around missing {m}: {around:?}");
            }
            let extra: Vec<&u64> = set.difference(&want).take(5).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "client {i} {d}: {} of {} missing (e.g. {missing:?}), extra {extra:?}; nodes {:?}",
                want.len() - (set.len() - extra.len()).min(want.len()),
                want.len(),
                s.nodes
            );
            let offsets = s.offsets.get(&d).cloned().unwrap_or_default();
            assert!(
                offsets.windows(2).all(|w| w[0] < w[1]),
                "client {i} {d}: out of Kafka order"
            );
        }
        for (j, (before, after)) in s.failovers.iter().enumerate() {
            if let Some(after) = after {
                failovers.push(after.duration_since(*before));
                let hop = format!(
                    "{}>{}",
                    s.nodes.get(j).map_or("?", String::as_str),
                    s.nodes.get(j + 1).map_or("?", String::as_str)
                );
                hops.entry(hop)
                    .or_default()
                    .push(after.duration_since(*before));
            }
        }
        if s.nodes.len() > 1 {
            moved += 1;
        }
    }
    failovers.sort();
    for (hop, mut times) in hops {
        times.sort();
        eprintln!(
            "  {hop}: {} moves, p50 {:?} max {:?}",
            times.len(),
            percentile(&times, 0.5),
            times.last().copied().unwrap_or_default()
        );
    }
    eprintln!(
        "{kill_signal}: {moved} clients moved (of {on_victim} on n1); failover p50 {:?} p99 {:?} max {:?}; {lost_resumes} lost resumes",
        percentile(&failovers, 0.5),
        percentile(&failovers, 0.99),
        failovers.last().copied().unwrap_or_default(),
    );
    if kill_signal == "ROLL" {
        // Every node went once, so every client moved at least once.
        assert_eq!(moved, CLIENTS, "clients that moved");
    } else {
        assert!(moved >= on_victim, "{moved} moved, {on_victim} were on n1");
    }
    assert_eq!(lost_resumes, 0);
    assert!(position_updates > 0, "no position update reached a client");
    eprintln!("{position_updates} position updates applied");
    assert!(
        failovers.len() >= moved,
        "every moved client got messages again"
    );
    drop(registry);
    drop(nodes);
    drop(publisher);
    drop(broker);
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_loses_and_repeats_nothing_for_resuming_clients() {
    run("KILL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drain_mid_run_loses_and_repeats_nothing_for_resuming_clients() {
    run("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_every_node_loses_and_repeats_nothing_for_resuming_clients() {
    run("ROLL").await;
}
