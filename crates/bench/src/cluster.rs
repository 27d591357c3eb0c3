//! `cluster`: a whole pushcenter cluster on this machine (a Tansu broker, an etcd,
//! `pushcenter registry` and N `pushcenter node`s, every one a child process on free
//! loopback ports with its data in a temp dir), users connected through the registry,
//! targeted and broadcast publishes at fixed rates; what each node fetched from Kafka,
//! delivered and spent in CPU, and whether every targeted record reached its user once.
//!
//! The processes here are shared with `consume` (one broker, one node): [`Proc`] kills
//! its child when dropped, [`Scratch`] removes its directory, so a run that fails or is
//! interrupted leaves nothing behind.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::ProgressBar;
use pushcenter_stomp::{Command as Cmd, Frame};
use serde::Serialize;
use serde_json::Value;

use crate::progress::{bar, note};
use crate::{Conn, Error, Http, OPEN_TIMEOUT, Result, Target, own_cpu, procfs};

/// What `cluster` runs.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    /// The `pushcenter` executable the registry and the nodes run (this one).
    pub program: PathBuf,
    pub nodes: usize,
    pub users: usize,
    /// Partitions of the targeted topic (`kafka.targeted_partitions`).
    pub targeted_partitions: u32,
    /// Targeted publishes per second, to the users in turn.
    pub targeted_rate: u64,
    /// Broadcast publishes per second, to the topics in turn.
    pub broadcast_rate: u64,
    /// How long the publishing lasts.
    pub seconds: u64,
    /// Topics `/topic/bench.b<k>`; user `u<i>` subscribes to `b<i % topics>`.
    pub broadcast_topics: usize,
}

#[derive(Debug, Serialize)]
pub struct ClusterParameters {
    pub nodes: usize,
    pub users: usize,
    pub targeted_partitions: u32,
    pub replies_partitions: u32,
    pub targeted_rate: u64,
    pub broadcast_rate: u64,
    pub seconds: u64,
    pub broadcast_topics: usize,
    pub body_bytes: usize,
    /// HTTP publisher connections (each waits for its answer before the next).
    pub targeted_publishers: usize,
    pub broadcast_publishers: usize,
}

/// One node over the publishing phase (counters are what grew in it).
#[derive(Debug, Serialize)]
pub struct ClusterNodeReport {
    pub node_id: String,
    /// Users the registry sent here.
    pub users: u64,
    /// Open connections as the node counts them, after the run.
    pub connections: u64,
    pub fetched_targeted: u64,
    pub fetched_messages: u64,
    pub fetched_replies: u64,
    /// Partitions of the targeted topic the node reads, after the run.
    pub partitions_read_targeted: u64,
    /// `fetched_targeted` over an even share of what was published
    /// (`targeted_published / nodes`).
    pub targeted_share: f64,
    /// MESSAGEs the generator's subscribers on this node read.
    pub deliveries: u64,
    /// The node's own `messages_delivered_total` and `messages_received_total`.
    pub messages_delivered: u64,
    pub messages_received: u64,
    pub gaps_reread: u64,
    pub records_repeated: u64,
    pub cpu_seconds: f64,
    pub cpu_per_second: f64,
    pub rss_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct ClusterTotals {
    /// Targeted publishes the node accepted (202).
    pub targeted_published: u64,
    pub targeted_publish_failed: u64,
    pub broadcast_published: u64,
    pub broadcast_publish_failed: u64,
    /// Targeted MESSAGEs read by their own user (a repeat counts again).
    pub targeted_delivered: u64,
    /// Accepted targeted records no subscriber read.
    pub targeted_missing: u64,
    /// Deliveries of a targeted record beyond its first.
    pub targeted_duplicates: u64,
    /// Deliveries of records whose publish was not accepted (a timeout that went
    /// through after all).
    pub targeted_delivered_unaccepted: u64,
    /// MESSAGEs read by a user they were not for (wrong user or wrong topic).
    pub misrouted: u64,
    /// Broadcast deliveries due: each topic's publishes times its subscribers.
    pub broadcast_expected: u64,
    pub broadcast_delivered: u64,
    /// Subscriptions that read a different number of broadcasts than their topic got.
    pub broadcast_subscriptions_off: u64,
    /// Subscribers whose connection closed or failed before the end.
    pub subscribers_lost: u64,
    /// Publishes per second achieved.
    pub targeted_publish_rate: f64,
    pub broadcast_publish_rate: f64,
    pub connect_seconds: f64,
    pub publish_seconds: f64,
    /// From the first publish until the last readings (deliveries stopped growing).
    pub measured_seconds: f64,
    pub broker_cpu_seconds: Option<f64>,
    pub registry_cpu_seconds: Option<f64>,
    pub generator_cpu_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct ClusterReport {
    pub scenario: &'static str,
    pub parameters: ClusterParameters,
    pub nodes: Vec<ClusterNodeReport>,
    pub totals: ClusterTotals,
    /// The largest `targeted_share` of any node: 1.0 when every node fetched exactly
    /// its share of the targeted records.
    pub max_targeted_share: f64,
}

/// Every body is padded to this many bytes.
const BODY_BYTES: usize = 64;

pub async fn cluster(o: ClusterOpts) -> Result<ClusterReport> {
    if o.nodes == 0 || o.users == 0 || o.seconds == 0 || o.broadcast_topics == 0 {
        return Err(Error::Options(
            "--nodes, --users, --seconds and --broadcast-topics must be at least 1",
        ));
    }
    if o.targeted_partitions == 0 {
        return Err(Error::Options("--targeted-partitions must be at least 1"));
    }
    interruptible(run_cluster(o)).await
}

/// Runs `f` unless SIGINT, SIGTERM or SIGHUP comes first; either way whatever `f`
/// started is dropped (its processes killed, its directories removed) before this
/// returns.
pub(crate) async fn interruptible<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::select! {
        r = f => r,
        _ = int.recv() => Err("interrupted (SIGINT); the processes of the run are stopped".into()),
        _ = term.recv() => Err("terminated (SIGTERM); the processes of the run are stopped".into()),
        _ = hup.recv() => Err("hung up (SIGHUP); the processes of the run are stopped".into()),
    }
}

/// The processes of one cluster run; fields drop in order: nodes first, the broker and
/// the directory last.
struct Cluster {
    nodes: Vec<ClusterNode>,
    registry: Proc,
    registry_api: Api,
    _etcd: Service,
    broker: Service,
    _scratch: Scratch,
}

struct ClusterNode {
    id: String,
    proc: Proc,
    http: SocketAddr,
    api: Api,
}

async fn run_cluster(o: ClusterOpts) -> Result<ClusterReport> {
    let n = o.nodes;
    let partitions = o.targeted_partitions;
    let replies = u32::try_from(n + 1).unwrap_or(u32::MAX).max(16);
    let scratch = Scratch::create("cluster")?;
    let dir = scratch.path().to_path_buf();
    eprintln!(
        "starting tansu, etcd, the registry and {n} node(s); data and logs in {}",
        dir.display()
    );
    let broker = start_broker(&dir).await?;
    let etcd = start_etcd(&dir).await?;
    let etcd_url = format!("http://{}", etcd.addr);
    let mut nodes = Vec::with_capacity(n);
    for k in 1..=n {
        let id = format!("n{k}");
        let config = dir.join(format!("{id}.toml"));
        std::fs::write(
            &config,
            format!(
                "node_id = \"{id}\"\nhttp_addr = \"127.0.0.1:0\"\n\
                 insecure_login_as_user = true\nreport_interval = \"500ms\"\n\n\
                 [kafka]\nbrokers = \"{}\"\ntargeted_partitions = {partitions}\n\
                 replies_partitions = {replies}\n\n[kafka.consumer]\n\"fetch.wait.max.ms\" = \"5\"\n\n\
                 [etcd]\nendpoints = [\"{etcd_url}\"]\n",
                broker.addr
            ),
        )?;
        let config = config.display().to_string();
        let log = dir.join(format!("{id}.log"));
        let (proc, http) =
            start_pushcenter(&o.program, &id, &["node", "--config", &config], log).await?;
        nodes.push(ClusterNode {
            id,
            proc,
            http,
            api: Api::new(http),
        });
    }
    let (registry, registry_http) = start_pushcenter(
        &o.program,
        "registry",
        &[
            "registry",
            "--http-addr",
            "127.0.0.1:0",
            "--etcd-endpoints",
            &etcd_url,
        ],
        dir.join("registry.log"),
    )
    .await?;
    let mut c = Cluster {
        nodes,
        registry,
        registry_api: Api::new(registry_http),
        _etcd: etcd,
        broker,
        _scratch: scratch,
    };
    c.wait_ready(partitions).await?;
    measure(&mut c, &o, replies).await
}

impl Cluster {
    /// Every node ready, and listed by the registry with the targeted topic's partitions.
    async fn wait_ready(&mut self, partitions: u32) -> Result<()> {
        let started = Instant::now();
        let within = Duration::from_secs(60 + 5 * self.nodes.len() as u64);
        let mut ready = vec![false; self.nodes.len()];
        loop {
            for (i, node) in self.nodes.iter_mut().enumerate() {
                if !ready[i] {
                    if let Some(why) = node.proc.exited() {
                        return Err(why.into());
                    }
                    ready[i] = matches!(node.api.get("/readyz").await, Ok((200, _)));
                }
            }
            if let Some(why) = self.registry.exited() {
                return Err(why.into());
            }
            let listed = match self.registry_api.get("/v1/nodes").await {
                Ok((200, v)) => v["nodes"].as_array().cloned().unwrap_or_default(),
                _ => Vec::new(),
            };
            let placed: Vec<(String, u64)> = listed
                .iter()
                .filter_map(|v| {
                    let id = v["node_id"].as_str()?;
                    let p = v["targeted_partitions"].as_u64().unwrap_or(0);
                    (p > 0).then(|| (id.to_string(), p))
                })
                .collect();
            let all_listed = self
                .nodes
                .iter()
                .all(|node| placed.iter().any(|(id, _)| *id == node.id));
            if ready.iter().all(|&r| r) && all_listed && listed.len() == self.nodes.len() {
                if let Some((id, p)) = placed.iter().find(|(_, p)| *p != u64::from(partitions)) {
                    return Err(format!(
                        "node {id} sees {p} partitions of the targeted topic, not {partitions}"
                    )
                    .into());
                }
                eprintln!(
                    "{} node(s) ready and listed after {:.1} s",
                    self.nodes.len(),
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if started.elapsed() > within {
                let waiting: Vec<&str> = self
                    .nodes
                    .iter()
                    .zip(&ready)
                    .filter(|(_, r)| !**r)
                    .map(|(node, _)| node.id.as_str())
                    .collect();
                return Err(format!(
                    "the cluster did not come up within {within:?}: not ready: {waiting:?}; \
                     the registry lists {} node(s) with targeted partitions ({placed:?})",
                    placed.len()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A node's counters at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct NodeStats {
    pub(crate) fetched_messages: u64,
    pub(crate) fetched_targeted: u64,
    pub(crate) fetched_replies: u64,
    pub(crate) partitions_read_targeted: u64,
    pub(crate) delivered: u64,
    pub(crate) received: u64,
    pub(crate) connections: u64,
    pub(crate) gaps_reread: u64,
    pub(crate) repeated: u64,
    pub(crate) rss_bytes: Option<u64>,
}

impl NodeStats {
    pub(crate) fn from_json(v: &Value) -> NodeStats {
        let n = |name: &str| {
            v[name]
                .as_u64()
                .or_else(|| v[name].as_i64().map(|i| i.max(0) as u64))
                .unwrap_or(0)
        };
        NodeStats {
            fetched_messages: n("bus_records_fetched_messages_total"),
            fetched_targeted: n("bus_records_fetched_targeted_total"),
            fetched_replies: n("bus_records_fetched_replies_total"),
            partitions_read_targeted: n("bus_partitions_read_targeted"),
            delivered: n("messages_delivered_total"),
            received: n("messages_received_total"),
            connections: n("connections"),
            gaps_reread: n("bus_gaps_reread_total"),
            repeated: n("bus_records_repeated_total"),
            rss_bytes: v["rss_bytes"].as_u64(),
        }
    }
}

/// `/v1/stats` of a node.
pub(crate) async fn stats(api: &mut Api) -> Result<NodeStats> {
    match api.get("/v1/stats").await? {
        (200, v) => Ok(NodeStats::from_json(&v)),
        (status, v) => Err(format!("{}/v1/stats answered {status}: {v}", api.base).into()),
    }
}

/// A node's counters and CPU at one moment.
struct Reading {
    stats: NodeStats,
    cpu: Option<f64>,
}

async fn read_nodes(c: &mut Cluster) -> Result<Vec<Reading>> {
    let mut out = Vec::with_capacity(c.nodes.len());
    for node in &mut c.nodes {
        let cpu = node.proc.cpu();
        let stats = match stats(&mut node.api).await {
            Ok(s) => s,
            // A node that died says more than its silence.
            Err(e) => return Err(node.proc.exited().map_or(e, Error::from)),
        };
        out.push(Reading { stats, cpu });
    }
    Ok(out)
}

/// What the subscribers saw, shared by their reader tasks.
struct Seen {
    /// Per targeted publish (by sequence number): deliveries to its user.
    targeted: Vec<AtomicU32>,
    targeted_total: AtomicU64,
    broadcast_total: AtomicU64,
    misrouted: AtomicU64,
    /// Per node: MESSAGEs read from its connections.
    per_node: Vec<AtomicU64>,
}

/// A body: `T<seq> <user index>` or `B<seq> <topic index>`, padded with `x`.
fn body(kind: char, seq: u64, to: usize) -> String {
    let mut b = format!("{kind}{seq} {to} ");
    if b.len() < BODY_BYTES {
        b.extend(std::iter::repeat_n('x', BODY_BYTES - b.len()));
    }
    b
}

/// (kind, seq, to) of a body [`body`] wrote.
fn parse_body(b: &[u8]) -> Option<(u8, u64, usize)> {
    let (&kind, rest) = b.split_first()?;
    let mut fields = rest.split(|&c| c == b' ');
    let number = |f: Option<&[u8]>| -> Option<u64> {
        let f = f?;
        if f.is_empty() || f.len() > 19 || !f.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(f.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
    };
    let seq = number(fields.next())?;
    let to = usize::try_from(number(fields.next())?).ok()?;
    Some((kind, seq, to))
}

/// One user's connection, as the registry placed it.
struct User {
    index: usize,
    node: usize,
    conn: Conn,
}

async fn subscribe(c: &mut Conn, id: &str, destination: &str) -> Result<()> {
    c.send(
        &Frame::new(Cmd::Subscribe)
            .header("id", id)
            .header("destination", destination)
            .header("receipt", id),
    )
    .await?;
    c.expect(Cmd::Receipt).await?;
    Ok(())
}

/// Connects every user through the registry: `GET /v1/connect?user=u<i>`, then the
/// WebSocket, CONNECT with `login:u<i>`, and both subscriptions with receipts.
async fn connect_users(c: &Cluster, users: usize, topics: usize) -> Result<Vec<User>> {
    let ids: Arc<Vec<String>> = Arc::new(c.nodes.iter().map(|n| n.id.clone()).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let done = bar("connected", users as u64, true);
    let registry = c.registry_api.base.clone();
    // A set: a failed run aborts the workers still connecting.
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..users.min(32) {
        let (ids, next, done, registry) =
            (ids.clone(), next.clone(), done.clone(), registry.clone());
        workers.spawn(async move {
            let mut api = Api::with_base(registry);
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= users {
                    return Ok::<_, Error>(out);
                }
                let user = format!("u{i}");
                let (status, v) = api.get(&format!("/v1/connect?user={user}")).await?;
                if status != 200 {
                    return Err(format!("the registry's /v1/connect answered {status}: {v}").into());
                }
                let (Some(ws_url), Some(id)) = (v["ws_url"].as_str(), v["node_id"].as_str()) else {
                    return Err(format!("/v1/connect without ws_url or node_id: {v}").into());
                };
                let node = ids
                    .iter()
                    .position(|n| n == id)
                    .ok_or_else(|| format!("the registry named a node not started here: {id}"))?;
                let target = Target {
                    url: ws_url.to_string(),
                    login: Some(user.clone()),
                    ..Target::default()
                };
                let open = async {
                    let mut conn = Conn::connect(&target, i).await?;
                    subscribe(&mut conn, "q", "/user/queue/bench").await?;
                    subscribe(&mut conn, "b", &format!("/topic/bench.b{}", i % topics)).await?;
                    Ok::<_, Error>(conn)
                };
                let mut conn = tokio::time::timeout(OPEN_TIMEOUT, open)
                    .await
                    .map_err(|_| Error::Timeout(OPEN_TIMEOUT).at(ws_url))
                    .and_then(|r| r)
                    .map_err(|e| format!("{user} on {id}: {e}"))?;
                conn.idle();
                out.push(User {
                    index: i,
                    node,
                    conn,
                });
                done.inc(1);
            }
        });
    }
    let mut all = Vec::with_capacity(users);
    while let Some(w) = workers.join_next().await {
        all.extend(w??);
    }
    done.finish();
    Ok(all)
}

/// Publisher connections for `rate`: one per 50/s (at least `min`, at most `max`),
/// rounded up to a multiple of the nodes so each node takes as many.
fn publisher_count(rate: u64, min: u64, max: u64, nodes: usize) -> usize {
    let w = (rate / 50).clamp(min, max).max(1) as usize;
    w.div_ceil(nodes) * nodes
}

/// What each publisher did: accepted, failed, and per topic (broadcast) accepted; a
/// set, so a failed run aborts the publishers.
type Published = tokio::task::JoinSet<Result<(u64, u64, Vec<u64>)>>;

/// `POST /v1/publish` on a keep-alive connection, connecting again after a failure.
async fn post(conn: &mut Option<Http>, base: &str, json: &str) -> Result<(u16, String)> {
    let mut h = match conn.take() {
        Some(h) => h,
        None => Http::connect(base).await?,
    };
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        h.request("POST", "/v1/publish", json),
    )
    .await
    .map_err(|_| Error::Timeout(Duration::from_secs(30)).at(&format!("{base}/v1/publish")))??;
    *conn = Some(h);
    Ok(answer)
}

struct Schedule {
    start: Instant,
    rate: u64,
    total: u64,
    /// Counts the publishes done.
    progress: ProgressBar,
}

impl Schedule {
    fn due(&self, seq: u64) -> Instant {
        self.start + Duration::from_micros(seq * 1_000_000 / self.rate.max(1))
    }
}

fn publish(
    kind: char,
    schedule: Arc<Schedule>,
    bases: Arc<Vec<String>>,
    publishers: usize,
    fanout: usize,
    accepted: Option<Arc<Vec<AtomicBool>>>,
    first_failure: Arc<AtomicBool>,
) -> Published {
    let mut set = tokio::task::JoinSet::new();
    for p in 0..publishers {
        let (schedule, bases, accepted, first_failure) = (
            schedule.clone(),
            bases.clone(),
            accepted.clone(),
            first_failure.clone(),
        );
        set.spawn(async move {
            let base = &bases[p % bases.len()];
            let mut conn = None;
            let (mut ok, mut bad) = (0u64, 0u64);
            let mut per_topic = vec![0u64; if kind == 'B' { fanout } else { 0 }];
            let mut seq = p as u64;
            while seq < schedule.total {
                tokio::time::sleep_until(schedule.due(seq).into()).await;
                let to = (seq % fanout as u64) as usize;
                let json = if kind == 'T' {
                    format!(
                        r#"{{"destination":"/user/queue/bench","user":"u{to}","body":"{}"}}"#,
                        body('T', seq, to)
                    )
                } else {
                    format!(
                        r#"{{"destination":"/topic/bench.b{to}","body":"{}"}}"#,
                        body('B', seq, to)
                    )
                };
                match post(&mut conn, base, &json).await {
                    Ok((202, _)) => {
                        ok += 1;
                        if let Some(a) = accepted.as_ref().and_then(|a| a.get(seq as usize)) {
                            a.store(true, Ordering::Relaxed);
                        }
                        if let Some(t) = per_topic.get_mut(to) {
                            *t += 1;
                        }
                    }
                    other => {
                        bad += 1;
                        if !first_failure.swap(true, Ordering::Relaxed) {
                            let why = other.map_or_else(|e| e.to_string(), |a| format!("{a:?}"));
                            note(format_args!("first failed publish on {base}: {why}"));
                        }
                    }
                }
                schedule.progress.inc(1);
                seq += publishers as u64;
            }
            Ok((ok, bad, per_topic))
        });
    }
    set
}

async fn measure(c: &mut Cluster, o: &ClusterOpts, replies: u32) -> Result<ClusterReport> {
    let n = c.nodes.len();
    let topics = o.broadcast_topics;
    let connect_start = Instant::now();
    let users = connect_users(c, o.users, topics).await?;
    let connect_seconds = connect_start.elapsed().as_secs_f64();
    let mut users_per_node = vec![0u64; n];
    let mut subscribers_per_topic = vec![0u64; topics];
    for u in &users {
        users_per_node[u.node] += 1;
        subscribers_per_topic[u.index % topics] += 1;
    }
    eprintln!(
        "{} users connected in {connect_seconds:.1} s; per node: {users_per_node:?}",
        users.len()
    );

    let targeted_total = o.targeted_rate * o.seconds;
    let broadcast_total = o.broadcast_rate * o.seconds;
    let seen = Arc::new(Seen {
        targeted: (0..targeted_total).map(|_| AtomicU32::new(0)).collect(),
        targeted_total: AtomicU64::new(0),
        broadcast_total: AtomicU64::new(0),
        misrouted: AtomicU64::new(0),
        per_node: (0..n).map(|_| AtomicU64::new(0)).collect(),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut readers = tokio::task::JoinSet::new();
    for u in users {
        let (seen, mut stop) = (seen.clone(), stop_rx.clone());
        readers.spawn(async move {
            let User {
                index,
                node,
                mut conn,
            } = u;
            let topic = index % topics;
            let mut broadcasts = 0u64;
            loop {
                let (mut t, mut b, mut wrong) = (0u64, 0u64, 0u64);
                let r = tokio::select! {
                    biased;
                    _ = stop.changed() => return (topic, broadcasts, false),
                    r = conn.messages(|body| match parse_body(body) {
                        Some((b'T', seq, to)) if to == index => {
                            if let Some(s) = seen.targeted.get(seq as usize) {
                                s.fetch_add(1, Ordering::Relaxed);
                            }
                            t += 1;
                        }
                        Some((b'B', _, to)) if to == topic => b += 1,
                        _ => wrong += 1,
                    }) => r,
                };
                if t + b + wrong > 0 {
                    seen.targeted_total.fetch_add(t, Ordering::Relaxed);
                    seen.broadcast_total.fetch_add(b, Ordering::Relaxed);
                    seen.misrouted.fetch_add(wrong, Ordering::Relaxed);
                    seen.per_node[node].fetch_add(t + b + wrong, Ordering::Relaxed);
                    broadcasts += b;
                }
                if !matches!(r, Ok(true)) {
                    if let Err(e) = r {
                        note(format_args!("subscriber u{index}: {e}"));
                    }
                    return (topic, broadcasts, true);
                }
            }
        });
    }

    let before = read_nodes(c).await?;
    let broker_cpu0 = c.broker.proc.cpu();
    let registry_cpu0 = c.registry.cpu();
    let own0 = own_cpu();
    let bases: Arc<Vec<String>> = Arc::new(
        c.nodes
            .iter()
            .map(|node| format!("http://{}", node.http))
            .collect(),
    );
    let start = Instant::now() + Duration::from_millis(50);
    let accepted: Arc<Vec<AtomicBool>> = Arc::new(
        (0..targeted_total)
            .map(|_| AtomicBool::new(false))
            .collect(),
    );
    let first_failure = Arc::new(AtomicBool::new(false));
    let tp = publisher_count(o.targeted_rate, 8, 128, n);
    let bp = publisher_count(o.broadcast_rate, 1, 32, n);
    eprintln!(
        "publishing for {} s: {}/s targeted over {tp} connections, {}/s broadcast over {bp}",
        o.seconds, o.targeted_rate, o.broadcast_rate
    );
    let targeted_bar = bar("published (targeted)", targeted_total, true);
    let mut targeted_pubs = publish(
        'T',
        Arc::new(Schedule {
            start,
            rate: o.targeted_rate,
            total: targeted_total,
            progress: targeted_bar.clone(),
        }),
        bases.clone(),
        tp,
        o.users,
        Some(accepted.clone()),
        first_failure.clone(),
    );
    let mut broadcast_pubs = publish(
        'B',
        Arc::new(Schedule {
            start,
            rate: o.broadcast_rate,
            total: broadcast_total,
            progress: ProgressBar::hidden(),
        }),
        bases,
        bp,
        topics,
        None,
        first_failure,
    );
    let (mut t_ok, mut t_bad) = (0u64, 0u64);
    while let Some(p) = targeted_pubs.join_next().await {
        let (ok, bad, _) = p??;
        t_ok += ok;
        t_bad += bad;
    }
    targeted_bar.finish();
    let (mut b_ok, mut b_bad) = (0u64, 0u64);
    let mut sent_per_topic = vec![0u64; topics];
    while let Some(p) = broadcast_pubs.join_next().await {
        let (ok, bad, per_topic) = p??;
        b_ok += ok;
        b_bad += bad;
        for (a, b) in sent_per_topic.iter_mut().zip(per_topic) {
            *a += b;
        }
    }
    let publish_seconds = start.elapsed().as_secs_f64();
    let broadcast_expected: u64 = sent_per_topic
        .iter()
        .zip(&subscribers_per_topic)
        .map(|(m, s)| m * s)
        .sum();

    // Until every delivery is in (and a moment for the counters of records nobody
    // here wanted), or deliveries stopped growing for 2 s; 10 s at most.
    let waited = Instant::now();
    let delivered = || {
        (
            seen.targeted_total.load(Ordering::Relaxed),
            seen.broadcast_total.load(Ordering::Relaxed),
        )
    };
    let (mut last, mut since) = (delivered(), Instant::now());
    while waited.elapsed() < Duration::from_secs(10) {
        let now = delivered();
        if now.0 >= t_ok && now.1 >= broadcast_expected {
            tokio::time::sleep(Duration::from_millis(300)).await;
            break;
        }
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() > Duration::from_secs(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = read_nodes(c).await?;
    let measured_seconds = start.elapsed().as_secs_f64();
    let broker_cpu = broker_cpu0.zip(c.broker.proc.cpu()).map(|(a, b)| b - a);
    let registry_cpu = registry_cpu0.zip(c.registry.cpu()).map(|(a, b)| b - a);
    let generator_cpu = own_cpu() - own0;
    let _ = stop_tx.send(true);

    let mut received_per_sub = Vec::with_capacity(readers.len());
    let mut lost = 0u64;
    while let Some(r) = readers.join_next().await {
        let (topic, broadcasts, gone) = r?;
        received_per_sub.push((topic, broadcasts));
        lost += u64::from(gone);
    }
    let broadcast_subscriptions_off = received_per_sub
        .iter()
        .filter(|(topic, got)| sent_per_topic.get(*topic) != Some(got))
        .count() as u64;
    let (mut missing, mut duplicates, mut unaccepted) = (0u64, 0u64, 0u64);
    for (count, ok) in seen.targeted.iter().zip(accepted.iter()) {
        let count = u64::from(count.load(Ordering::Relaxed));
        if ok.load(Ordering::Relaxed) {
            if count == 0 {
                missing += 1;
            }
            duplicates += count.saturating_sub(1);
        } else {
            unaccepted += count;
        }
    }

    let fair = t_ok as f64 / n as f64;
    let nodes: Vec<ClusterNodeReport> = c
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let (a, b) = (&after[i].stats, &before[i].stats);
            let cpu = cpu_between(&before[i], &after[i]);
            let fetched_targeted = a.fetched_targeted.saturating_sub(b.fetched_targeted);
            ClusterNodeReport {
                node_id: node.id.clone(),
                users: users_per_node[i],
                connections: a.connections,
                fetched_targeted,
                fetched_messages: a.fetched_messages.saturating_sub(b.fetched_messages),
                fetched_replies: a.fetched_replies.saturating_sub(b.fetched_replies),
                partitions_read_targeted: a.partitions_read_targeted,
                targeted_share: if fair > 0.0 {
                    fetched_targeted as f64 / fair
                } else {
                    0.0
                },
                deliveries: seen.per_node[i].load(Ordering::Relaxed),
                messages_delivered: a.delivered.saturating_sub(b.delivered),
                messages_received: a.received.saturating_sub(b.received),
                gaps_reread: a.gaps_reread.saturating_sub(b.gaps_reread),
                records_repeated: a.repeated.saturating_sub(b.repeated),
                cpu_seconds: cpu,
                cpu_per_second: cpu / measured_seconds.max(1e-9),
                rss_bytes: a.rss_bytes.or_else(|| node.proc.rss()),
            }
        })
        .collect();
    let max_targeted_share = nodes
        .iter()
        .map(|node| node.targeted_share)
        .fold(0.0f64, f64::max);
    Ok(ClusterReport {
        scenario: "cluster",
        parameters: ClusterParameters {
            nodes: n,
            users: o.users,
            targeted_partitions: o.targeted_partitions,
            replies_partitions: replies,
            targeted_rate: o.targeted_rate,
            broadcast_rate: o.broadcast_rate,
            seconds: o.seconds,
            broadcast_topics: topics,
            body_bytes: BODY_BYTES,
            targeted_publishers: tp,
            broadcast_publishers: bp,
        },
        nodes,
        totals: ClusterTotals {
            targeted_published: t_ok,
            targeted_publish_failed: t_bad,
            broadcast_published: b_ok,
            broadcast_publish_failed: b_bad,
            targeted_delivered: seen.targeted_total.load(Ordering::Relaxed),
            targeted_missing: missing,
            targeted_duplicates: duplicates,
            targeted_delivered_unaccepted: unaccepted,
            misrouted: seen.misrouted.load(Ordering::Relaxed),
            broadcast_expected,
            broadcast_delivered: seen.broadcast_total.load(Ordering::Relaxed),
            broadcast_subscriptions_off,
            subscribers_lost: lost,
            targeted_publish_rate: t_ok as f64 / publish_seconds.max(1e-9),
            broadcast_publish_rate: b_ok as f64 / publish_seconds.max(1e-9),
            connect_seconds,
            publish_seconds,
            measured_seconds,
            broker_cpu_seconds: broker_cpu,
            registry_cpu_seconds: registry_cpu,
            generator_cpu_seconds: generator_cpu,
        },
        max_targeted_share,
    })
}

/// CPU seconds between two readings (0 when /proc had none).
fn cpu_between(before: &Reading, after: &Reading) -> f64 {
    before
        .cpu
        .zip(after.cpu)
        .map_or(0.0, |(a, b)| (b - a).max(0.0))
}

// ---------------------------------------------------------------------------------
// Processes, ports, directories: shared with `consume`.

/// A temp directory of one run, removed when dropped.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    pub(crate) fn create(tag: &str) -> Result<Scratch> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "pushcenter-bench-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process, killed (and waited for) when dropped; its stderr (and stdout, when
/// not read) in a log file of the run's directory.
pub(crate) struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd`; `install` says how to get the program when it is missing.
    fn spawn(
        name: &str,
        mut cmd: Command,
        log: PathBuf,
        read_stdout: bool,
        install: &str,
    ) -> Result<(Proc, Option<ChildStdout>)> {
        let err = std::fs::File::create(&log)?;
        let out = if read_stdout {
            Stdio::piped()
        } else {
            Stdio::from(err.try_clone()?)
        };
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::from(err));
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} (`{program}`): {e}; {install}"))?;
        let stdout = child.stdout.take();
        Ok((
            Proc {
                name: name.to_string(),
                child,
                log,
            },
            stdout,
        ))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// user + system CPU seconds so far.
    pub(crate) fn cpu(&self) -> Option<f64> {
        Some(procfs::sample(Some(self.pid()), false)?.cpu_seconds)
    }

    pub(crate) fn rss(&self) -> Option<u64> {
        procfs::sample(Some(self.pid()), false)?.rss_bytes
    }

    /// When the process has exited: what to tell (its status and its log's end).
    pub(crate) fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "{} exited ({status}); the end of its log:\n{}",
                self.name,
                self.log_tail()
            )),
            _ => None,
        }
    }

    /// The last lines of the process's log.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) with kill(1).
    pub(crate) fn signal(&self, signal: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()?;
        if !status.success() {
            return Err(format!("kill -{signal} {} failed: {status}", self.pid()).into());
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A broker or etcd: its process and the address it serves.
pub(crate) struct Service {
    pub(crate) proc: Proc,
    pub(crate) addr: SocketAddr,
}

/// A free loopback port below the ephemeral range (32768+ on Linux), so no client's
/// source port takes it before the child binds it.
fn free_port() -> Result<SocketAddr> {
    let seed = u64::from(std::process::id())
        ^ SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    for i in 0..2000u64 {
        let port = 20_000
            + ((seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(i * 7_919))
                % 12_000) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return Ok(l.local_addr()?);
        }
    }
    Err("no free loopback port in 20000..32000".into())
}

/// Waits until `addr` accepts connections (the process must stay up meanwhile).
async fn wait_listening(proc: &mut Proc, addr: SocketAddr, within: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        if let Some(why) = proc.exited() {
            return Err(why.into());
        }
        let probe = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        if matches!(probe, Ok(Ok(_))) {
            return Ok(());
        }
        if started.elapsed() > within {
            return Err(format!(
                "{} did not listen on {addr} within {within:?}; the end of its log:\n{}",
                proc.name,
                proc.log_tail()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `TANSU` when set, else the one `make test` installs in cargo's bin directory, else
/// `tansu` on PATH.
fn tansu_program() -> String {
    if let Ok(t) = std::env::var("TANSU") {
        return t;
    }
    let home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    let installed = format!("{home}/bin/tansu");
    if Path::new(&installed).is_file() {
        return installed;
    }
    "tansu".into()
}

/// A Tansu broker, in-memory storage, on a free loopback port.
pub(crate) async fn start_broker(dir: &Path) -> Result<Service> {
    let addr = free_port()?;
    let url = format!("tcp://{addr}");
    let mut cmd = Command::new(tansu_program());
    cmd.args([
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
        "--storage-engine",
        "memory://tansu/",
    ])
    .env("RUST_LOG", "warn")
    .current_dir(dir);
    let (mut proc, _) = Proc::spawn(
        "tansu",
        cmd,
        dir.join("tansu.log"),
        false,
        "`make test` installs it in $CARGO_HOME/bin; or set TANSU to its path",
    )?;
    wait_listening(&mut proc, addr, Duration::from_secs(20)).await?;
    Ok(Service { proc, addr })
}

/// An etcd on free loopback ports, its data in `dir`.
async fn start_etcd(dir: &Path) -> Result<Service> {
    let (client, peer) = (free_port()?, free_port()?);
    let program = std::env::var("ETCD").unwrap_or_else(|_| "etcd".into());
    let (client_url, peer_url) = (format!("http://{client}"), format!("http://{peer}"));
    let mut cmd = Command::new(program);
    cmd.arg("--name=bench")
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=bench={peer_url}"))
        .arg("--log-level=error")
        .current_dir(dir);
    let (mut proc, _) = Proc::spawn(
        "etcd",
        cmd,
        dir.join("etcd.log"),
        false,
        "install etcd (Debian: etcd-server; `make test` does) or set ETCD to its path",
    )?;
    wait_listening(&mut proc, client, Duration::from_secs(20)).await?;
    Ok(Service { proc, addr: client })
}

/// `program args...` (a `pushcenter` subcommand), without the caller's `PUSHCENTER_*`
/// settings; returns once it printed its `listening http=...` line.
pub(crate) async fn start_pushcenter(
    program: &Path,
    name: &str,
    args: &[&str],
    log: PathBuf,
) -> Result<(Proc, SocketAddr)> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PUSHCENTER_") {
            cmd.env_remove(key);
        }
    }
    // PUSHCENTER_BENCH_LOG: a RUST_LOG filter for the processes the run starts.
    cmd.env(
        "RUST_LOG",
        std::env::var("PUSHCENTER_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
    );
    let (mut proc, stdout) = Proc::spawn(name, cmd, log, true, "it is this executable")?;
    let stdout = stdout.ok_or("no stdout pipe")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    // The first line is the address; whatever follows is drained so a write never
    // blocks on a full pipe.
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        if r.read_line(&mut line).is_ok() {
            let _ = tx.send(line);
        }
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    });
    let within = Duration::from_secs(30);
    let line = tokio::task::spawn_blocking(move || rx.recv_timeout(within)).await?;
    let line = match line {
        Ok(line) => line,
        Err(_) => {
            let why = proc.exited().unwrap_or_else(|| {
                format!(
                    "{name} printed no `listening` line within {within:?}; the end of its log:\n{}",
                    proc.log_tail()
                )
            });
            return Err(why.into());
        }
    };
    let http = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("{name}: no http address in {line:?}"))?;
    Ok((proc, http))
}

/// JSON GETs on one keep-alive connection, connecting again when it broke.
pub(crate) struct Api {
    base: String,
    conn: Option<Http>,
}

impl Api {
    pub(crate) fn new(addr: SocketAddr) -> Api {
        Api::with_base(format!("http://{addr}"))
    }

    fn with_base(base: String) -> Api {
        Api { base, conn: None }
    }

    /// (status, the answer as JSON: `Null` when it is not JSON).
    pub(crate) async fn get(&mut self, path: &str) -> Result<(u16, Value)> {
        const WITHIN: Duration = Duration::from_secs(10);
        let mut last = None;
        // A kept connection the server closed fails once: then a fresh one.
        for _ in 0..2 {
            let mut h = match self.conn.take() {
                Some(h) => h,
                None => match Http::connect(&self.base).await {
                    Ok(h) => h,
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                },
            };
            match tokio::time::timeout(WITHIN, h.request("GET", path, "")).await {
                Ok(Ok((status, body))) => {
                    self.conn = Some(h);
                    let v = serde_json::from_str(&body).unwrap_or(Value::Null);
                    return Ok((status, v));
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(Error::Timeout(WITHIN).at(&format!("{}{path}", self.base))),
            }
        }
        Err(last.unwrap_or_else(|| "no answer".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_read_back_and_others_do_not() {
        let b = body('T', 12345, 77);
        assert_eq!(b.len(), BODY_BYTES);
        assert_eq!(parse_body(b.as_bytes()), Some((b'T', 12345, 77)));
        assert_eq!(parse_body(b"B7 3 "), Some((b'B', 7, 3)));
        assert_eq!(parse_body(b"B7 3"), Some((b'B', 7, 3)));
        assert_eq!(parse_body(b""), None);
        assert_eq!(parse_body(b"T 3 "), None);
        assert_eq!(parse_body(b"Tx 3 "), None);
    }

    #[test]
    fn publishers_split_evenly_over_the_nodes() {
        assert_eq!(publisher_count(2000, 8, 128, 3), 42);
        assert_eq!(publisher_count(100, 1, 32, 4), 4);
        assert_eq!(publisher_count(0, 8, 128, 1), 8);
        assert_eq!(publisher_count(1_000_000, 8, 128, 6), 132);
    }

    #[test]
    fn stats_read_counters_and_gauges() {
        let v: Value = serde_json::json!({
            "bus_records_fetched_targeted_total": 5,
            "bus_partitions_read_targeted": 3,
            "connections": -1,
        });
        let s = NodeStats::from_json(&v);
        assert_eq!(
            (
                s.fetched_targeted,
                s.partitions_read_targeted,
                s.connections
            ),
            (5, 3, 0)
        );
    }
}
