//! The replay window: the records this node saw recently, in arrival order, so a client
//! that reconnects (here, or to any node: message ids are the same everywhere) can
//! resume after the last message id it saw per stream. A stream is a Kafka partition,
//! or the node itself on the in-memory bus; a message id is `<stream>-<offset>`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bus::Delivery;
use crate::routing::rule::{Subscriber, is_pattern};

/// The position `positions` names for `stream` (-1: none, from the stream's start).
fn after(positions: &[(String, i64)], stream: &str) -> i64 {
    positions
        .iter()
        .find(|(s, _)| s == stream)
        .map_or(-1, |(_, o)| *o)
}

/// `<stream>-<offset>` → (stream, offset).
pub(crate) fn parse_id(id: &str) -> Option<(&str, i64)> {
    let (stream, offset) = id.rsplit_once('-')?;
    let offset: i64 = offset.parse().ok()?;
    (!stream.is_empty() && offset >= 0).then_some((stream, offset))
}

/// A `resume-from` header: message ids, comma-separated (empty: nothing seen yet).
pub(crate) fn parse_positions(header: &str) -> Result<Vec<(String, i64)>, String> {
    const MAX: usize = 4096;
    let mut out = Vec::new();
    for id in header.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (s, o) = parse_id(id).ok_or_else(|| format!("resume-from: bad message id {id:?}"))?;
        out.push((s.to_owned(), o));
        if out.len() > MAX {
            return Err(format!("resume-from: more than {MAX} positions"));
        }
    }
    Ok(out)
}

/// Positions as a header value.
pub(crate) fn format_positions(p: &[(String, i64)]) -> String {
    let mut s = String::new();
    for (stream, offset) in p {
        if *offset < 0 {
            continue;
        }
        if !s.is_empty() {
            s.push(',');
        }
        s.push_str(stream);
        s.push('-');
        s.push_str(&offset.to_string());
    }
    s
}

pub(crate) struct Entry {
    at: Instant,
    seq: u64,
    cost: usize,
    stream: Arc<str>,
    offset: i64,
    /// The record's destination, shared by every entry of it (the `by_dest` key): a
    /// resume matches each distinct destination once, by pointer.
    dest: Arc<str>,
    /// The record names a user or a session.
    targeted: bool,
    delivery: Arc<Delivery>,
}

impl Entry {
    pub(crate) fn delivery(&self) -> &Arc<Delivery> {
        &self.delivery
    }

    /// What it costs in the window (and, near enough, in a connection's queue).
    pub(crate) fn cost(&self) -> usize {
        self.cost
    }
}

#[derive(Clone, Copy)]
struct Stream {
    /// The window holds every record of the stream after this offset (-1: from the
    /// stream's start).
    base: i64,
    /// The last offset seen (`base` when none since).
    last: i64,
    /// Records from here on are routed live; older ones are history, read at start to
    /// fill the window.
    live: i64,
}

impl Stream {
    /// Still reading its history: what lies between `last` and `live` is not here yet.
    fn loading(&self) -> bool {
        self.last < self.live - 1
    }

    /// What a resume needs from elsewhere after `after`: up to the window's start, or
    /// while the history loads, up to where live routing starts.
    fn missing_up_to(&self) -> i64 {
        if self.loading() {
            self.live - 1
        } else {
            self.base
        }
    }
}

/// Records of a stream a resume needs that the window does not hold: those after the
/// client's position `after` up to `base` (the window's oldest offset, or while the
/// stream's history loads, the offset before live routing).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Gap {
    pub(crate) stream: String,
    pub(crate) after: i64,
    pub(crate) base: i64,
}

/// What a resume found.
pub(crate) struct Resume {
    /// Records to send before anything live, oldest first (window entries: chosen
    /// under the lock without touching the records themselves).
    pub(crate) replay: Vec<Arc<Entry>>,
    /// Streams whose records after the client's position are no longer all here, with
    /// the client's position: these need the bus's log, or are lost.
    pub(crate) gaps: Vec<Gap>,
    /// Streams the budget cut: their older records were not looked at (lost).
    pub(crate) cut: Vec<String>,
}

/// A resume in progress (see [`Window::start_resume`]).
pub(crate) struct Scan {
    pattern: bool,
    budget: Budget,
    gaps: Vec<Gap>,
    /// Per stream: its floor, whether the scan is done with it, and where the window
    /// began for it at the start (a handful of streams: a Vec found by pointer costs
    /// less than a hash per entry).
    streams: Vec<(Arc<str>, i64, bool, i64)>,
    /// Streams whose unread part left the window while the lock was let go.
    cut: Vec<String>,
    /// Destinations seen, and whether an untargeted record there is wanted.
    dests: Vec<(Arc<str>, bool)>,
    /// Entries older than this sequence number are still to be looked at.
    before: u64,
    evictions: u64,
    replay: Vec<Arc<Entry>>,
    messages: usize,
    bytes: usize,
    scanned: usize,
    spent: bool,
    done: bool,
}

impl Scan {
    /// What the resume found: the records oldest first, and the streams it cut.
    pub(crate) fn finish(mut self) -> Resume {
        self.replay.reverse();
        let mut cut = std::mem::take(&mut self.cut);
        if self.spent {
            cut.extend(
                self.streams
                    .iter()
                    .filter(|(_, _, done, _)| !done)
                    .map(|(k, ..)| k.to_string()),
            );
        }
        cut.sort();
        cut.dedup();
        Resume {
            replay: self.replay,
            gaps: self.gaps,
            cut,
        }
    }
}

/// How much one resume may take from the window: what the connection's queue can
/// hold (messages, bytes), and how many entries it may look at (a pattern that
/// matches little would otherwise scan the whole window under its lock).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub(crate) messages: usize,
    pub(crate) bytes: usize,
    pub(crate) scan: usize,
}

#[cfg(test)]
impl Budget {
    pub(crate) const UNLIMITED: Budget = Budget {
        messages: usize::MAX,
        bytes: usize::MAX,
        scan: usize::MAX,
    };
}

/// What a replayed record costs in a connection's queue (its encoded size is not
/// known before it is encoded: this errs on the large side).
pub(crate) fn replay_cost(d: &Delivery) -> usize {
    let r = &d.record;
    let headers: usize = r
        .headers
        .iter()
        .map(|(k, v)| 2 * (k.len() + v.len()) + 2)
        .sum();
    r.body.len() + r.destination.len() + d.id.len() + headers + 128
}

pub(crate) struct Window {
    max_age: Duration,
    max_bytes: usize,
    bytes: usize,
    entries: VecDeque<Arc<Entry>>,
    /// The same entries by destination, in arrival order: a resume of one destination
    /// costs that destination's records, however old the client's other positions are.
    by_dest: HashMap<Arc<str>, VecDeque<Arc<Entry>>>,
    streams: HashMap<Arc<str>, Stream>,
    /// The next entry's sequence number: entries are ordered by it, in every deque.
    next_seq: u64,
    /// Entries evicted so far (a resume in steps sees whether its unread part went).
    evictions: u64,
}

impl Window {
    pub(crate) fn new(max_age: Duration, max_bytes: usize) -> Window {
        Window {
            max_age,
            max_bytes,
            bytes: 0,
            entries: VecDeque::new(),
            by_dest: HashMap::new(),
            streams: HashMap::new(),
            next_seq: 0,
            evictions: 0,
        }
    }

    /// The bus starts reading `stream` at `from` (everything before is not here) and
    /// routes records from `live` on.
    pub(crate) fn started(&mut self, stream: &str, from: i64, live: i64) {
        let s = self.streams.entry(Arc::from(stream)).or_insert(Stream {
            base: from - 1,
            last: from - 1,
            live,
        });
        s.live = live;
        // Read again from further back (a broker that lost its log): keep what is here.
        if from - 1 > s.last {
            // Read again after a hole (a partition let go and read again later): what
            // is here of it is older than the hole, and goes, so that a resume reads
            // the hole from the log and nothing twice.
            *s = Stream {
                base: from - 1,
                last: from - 1,
                live,
            };
            let key: Arc<str> = Arc::from(stream);
            self.drop_stream(&key);
        }
    }

    /// Removes every entry of `stream` (the stream itself stays).
    fn drop_stream(&mut self, stream: &Arc<str>) {
        if !self.entries.iter().any(|e| e.stream == *stream) {
            return;
        }
        let mut freed = 0;
        self.entries.retain(|e| {
            let keep = e.stream != *stream;
            if !keep {
                freed += e.cost;
            }
            keep
        });
        self.bytes -= freed;
        self.by_dest.clear();
        for e in &self.entries {
            self.by_dest
                .entry(e.dest.clone())
                .or_default()
                .push_back(e.clone());
        }
    }

    /// A record from the bus, before it is routed. False: history, not to be routed.
    pub(crate) fn push(&mut self, d: Arc<Delivery>, now: Instant) -> bool {
        let Some((stream, offset)) = parse_id(&d.id) else {
            return true;
        };
        let key: Arc<str> = match self.streams.get_key_value(stream) {
            Some((k, _)) => k.clone(),
            None => Arc::from(stream),
        };
        let s = self.streams.entry(key.clone()).or_insert(Stream {
            base: offset - 1,
            last: offset - 1,
            live: offset,
        });
        let live = offset >= s.live;
        if offset <= s.last {
            // Not newer than what is here (the bus read again): keep the window ordered.
            if offset < s.base {
                // Read again from before the window (a broker that lost its log): the
                // stream starts over, so its old entries go.
                *s = Stream {
                    base: offset - 1,
                    last: offset - 1,
                    live: s.live.min(offset),
                };
                self.drop_stream(&key);
            } else {
                return live;
            }
        }
        if let Some(s) = self.streams.get_mut(&key) {
            s.last = offset;
        }
        let cost = d.record.body.len()
            + d.record.destination.len()
            + d.record
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + 128;
        self.bytes += cost;
        let dest: Arc<str> = match self.by_dest.get_key_value(d.record.destination.as_str()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(d.record.destination.as_str()),
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = Arc::new(Entry {
            at: now,
            seq,
            cost,
            stream: key,
            offset,
            dest: dest.clone(),
            targeted: d.record.user.is_some() || d.record.session.is_some(),
            delivery: d,
        });
        self.by_dest
            .entry(dest)
            .or_default()
            .push_back(entry.clone());
        self.entries.push_back(entry);
        self.evict(now);
        live
    }

    fn evict(&mut self, now: Instant) {
        while let Some(e) = self.entries.front() {
            let old = now.duration_since(e.at) > self.max_age;
            if !old && self.bytes <= self.max_bytes {
                break;
            }
            if let Some(e) = self.entries.pop_front() {
                self.evictions += 1;
                self.bytes -= e.cost;
                if let Some(s) = self.streams.get_mut(&e.stream) {
                    s.base = s.base.max(e.offset);
                }
                // The oldest entry is also the oldest of its destination.
                let dest = e.delivery.record.destination.as_str();
                if let Some(list) = self.by_dest.get_mut(dest) {
                    list.pop_front();
                    if list.is_empty() {
                        self.by_dest.remove(dest);
                    }
                }
            }
        }
    }

    /// The last offset of every stream: where a new subscription starts.
    pub(crate) fn frontier(&self) -> Vec<(String, i64)> {
        let mut v: Vec<(String, i64)> = self
            .streams
            .iter()
            // While history loads, a new subscription starts where live routing does.
            .map(|(k, s)| (k.to_string(), s.last.max(s.live - 1)))
            .collect();
        v.sort();
        v
    }

    /// Streams whose records after `positions` are not all here: (stream, the client's
    /// position, the last offset missing: the window's base, or while the stream's
    /// history loads, the offset before live routing). Cheap: one entry per stream.
    pub(crate) fn gaps(&mut self, positions: &[(String, i64)], now: Instant) -> Vec<Gap> {
        self.evict(now);
        let mut gaps: Vec<Gap> = self
            .streams
            .iter()
            .map(|(name, s)| Gap {
                stream: name.to_string(),
                after: after(positions, name),
                base: s.missing_up_to(),
            })
            .filter(|g| g.after < g.base)
            .collect();
        gaps.sort();
        gaps
    }

    /// The positions of streams the window holds, the first of each (as [`after`]
    /// reads them): the rest cannot matter to a resume here, and a `resume-from` of
    /// thousands of made-up ids would otherwise be scanned once per stream under the
    /// window's lock.
    pub(crate) fn known(&self, positions: &[(String, i64)]) -> Vec<(String, i64)> {
        let mut out: Vec<(String, i64)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (stream, offset) in positions {
            if self.streams.contains_key(stream.as_str()) && seen.insert(stream.as_str()) {
                out.push((stream.clone(), *offset));
            }
        }
        out
    }

    /// Whether any stream is still reading its history.
    pub(crate) fn any_loading(&self) -> bool {
        self.streams.values().any(Stream::loading)
    }

    /// Whether one of `gaps` is a stream still reading its history: the records it
    /// misses are on their way into the window.
    pub(crate) fn loading(&self, gaps: &[Gap]) -> bool {
        gaps.iter().any(|g| {
            self.streams
                .get(g.stream.as_str())
                .is_some_and(Stream::loading)
        })
    }

    /// The records `who` missed after `positions` (streams not named: from their start).
    #[cfg(test)]
    pub(crate) fn resume(
        &mut self,
        who: &Subscriber<'_>,
        positions: &[(String, i64)],
        now: Instant,
    ) -> Resume {
        self.resume_within(who, positions, now, Budget::UNLIMITED)
    }

    /// The newest records `who` missed after `positions`, within `budget`, in one go
    /// (see [`Window::start_resume`]).
    #[cfg(test)]
    pub(crate) fn resume_within(
        &mut self,
        who: &Subscriber<'_>,
        positions: &[(String, i64)],
        now: Instant,
        budget: Budget,
    ) -> Resume {
        let mut scan = self.start_resume(who, positions, now, budget);
        while !self.resume_step(&mut scan, who, usize::MAX) {}
        scan.finish()
    }

    /// Starts a resume of `who` after `positions`: a scan from the newest record back
    /// (one destination: its own records; a pattern: all) that stops once every stream
    /// is behind its position, or `budget` is spent; the streams not finished then are
    /// cut. It goes in steps ([`Window::resume_step`]) so that the window's lock is
    /// held for a step at a time, never for the whole scan.
    pub(crate) fn start_resume(
        &mut self,
        who: &Subscriber<'_>,
        positions: &[(String, i64)],
        now: Instant,
        budget: Budget,
    ) -> Scan {
        let gaps = self.gaps(positions, now);
        // A stream still loading its history: what the window holds of it now comes
        // with the gap read from the log, so only live records are replayed from here.
        let streams = self
            .streams
            .iter()
            .map(|(name, s)| {
                let f = after(positions, name);
                let floor = if s.loading() { f.max(s.live - 1) } else { f };
                // Nothing here above the floor: done before it starts (a stream the
                // subscription cannot receive is given as seen to its end).
                (name.clone(), floor, floor >= s.last, s.base)
            })
            .collect();
        Scan {
            pattern: is_pattern(who.destination),
            budget,
            gaps,
            streams,
            dests: Vec::new(),
            before: self.next_seq,
            evictions: self.evictions,
            replay: Vec::new(),
            messages: 0,
            bytes: 0,
            scanned: 0,
            spent: false,
            done: false,
            cut: Vec::new(),
        }
    }

    /// Looks at up to `entries` more entries of `scan`; true once it is finished.
    pub(crate) fn resume_step(
        &mut self,
        scan: &mut Scan,
        who: &Subscriber<'_>,
        entries: usize,
    ) -> bool {
        if scan.done {
            return true;
        }
        if self.evictions != scan.evictions {
            // Entries went while the lock was let go: the oldest, so the part not read
            // yet. A stream not finished whose start moved past its floor lost records
            // the scan had still to reach: it is cut (and not read further).
            for st in scan.streams.iter_mut().filter(|s| !s.2) {
                let base = self.streams.get(&st.0).map_or(i64::MAX, |s| s.base);
                if base > st.1.max(st.3) {
                    st.2 = true;
                    scan.cut.push(st.0.to_string());
                }
            }
            scan.evictions = self.evictions;
        }
        let list = if scan.pattern {
            Some(&self.entries)
        } else {
            self.by_dest.get(who.destination)
        };
        let Some(list) = list else {
            scan.done = true;
            return true;
        };
        let start = list.partition_point(|e| e.seq < scan.before);
        for (looked, e) in list.range(..start).rev().enumerate() {
            if scan.streams.iter().all(|s| s.2) {
                scan.done = true;
                return true;
            }
            if looked == entries {
                return false;
            }
            scan.before = e.seq;
            scan.scanned += 1;
            if scan.scanned > scan.budget.scan {
                scan.spent = true;
                scan.done = true;
                return true;
            }
            let Some(st) = scan
                .streams
                .iter_mut()
                .find(|(k, ..)| Arc::ptr_eq(k, &e.stream) || **k == *e.stream)
            else {
                continue;
            };
            if st.2 {
                continue;
            }
            if e.offset <= st.1 {
                // Within a stream offsets grow along the window: every older entry of
                // this stream is at or below its floor too.
                st.2 = true;
                continue;
            }
            let wanted = if e.targeted {
                who.wants(e.delivery.record.addressed())
            } else {
                match scan.dests.iter().find(|(d, _)| Arc::ptr_eq(d, &e.dest)) {
                    Some((_, w)) => *w,
                    None => {
                        let w = who.wants(e.delivery.record.addressed());
                        if scan.dests.len() < 256 {
                            scan.dests.push((e.dest.clone(), w));
                        }
                        w
                    }
                }
            };
            if !wanted {
                continue;
            }
            let cost = e.cost;
            if scan.messages + 1 > scan.budget.messages
                || scan.bytes.saturating_add(cost) > scan.budget.bytes
            {
                scan.spent = true;
                scan.done = true;
                return true;
            }
            scan.messages += 1;
            scan.bytes += cost;
            scan.replay.push(e.clone());
        }
        scan.done = true;
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Record;

    fn d(id: &str, dest: &str) -> Arc<Delivery> {
        Arc::new(Delivery {
            id: id.into(),
            record: Record {
                destination: dest.into(),
                body: bytes::Bytes::from(id.to_owned()),
                ..Record::default()
            },
        })
    }

    fn ids(r: &Resume) -> Vec<&str> {
        r.replay.iter().map(|e| e.delivery().id.as_str()).collect()
    }

    fn topic(destination: &str) -> Subscriber<'_> {
        Subscriber {
            destination,
            user: None,
            session: "n1-1",
        }
    }

    #[test]
    fn ids_and_positions_parse() {
        assert_eq!(parse_id("3-17"), Some(("3", 17)));
        assert_eq!(parse_id("node-a-5"), Some(("node-a", 5)));
        assert_eq!(parse_id("17"), None);
        assert_eq!(parse_id("-5"), None);
        assert_eq!(parse_id("3-x"), None);
        assert_eq!(
            parse_positions(" 0-4, 1-9 ,").unwrap(),
            vec![("0".into(), 4), ("1".into(), 9)]
        );
        assert!(parse_positions("0-x").is_err());
        assert_eq!(parse_positions("").unwrap(), vec![]);
        assert_eq!(
            format_positions(&[("0".into(), 4), ("1".into(), -1), ("2".into(), 0)]),
            "0-4,2-0"
        );
    }

    #[test]
    fn a_resume_takes_the_newest_records_its_budget_allows_and_names_what_it_cut() {
        let now = Instant::now();
        let mut w = Window::new(Duration::from_secs(60), 1 << 24);
        w.started("0", 0, 0);
        w.started("1", 0, 0);
        for i in 0..1000 {
            w.push(d(&format!("0-{i}"), "/topic/a"), now);
            w.push(d(&format!("1-{i}"), "/topic/b"), now);
        }
        let budget = Budget {
            messages: 10,
            bytes: usize::MAX,
            scan: usize::MAX,
        };
        for who in ["/topic/#", "/topic/a"] {
            let r = w.resume_within(&topic(who), &[], now, budget);
            assert_eq!(r.replay.len(), 10, "{who}");
            assert!(!r.cut.is_empty(), "{who}");
        }
        // Newest first, oldest first in the answer.
        let r = w.resume_within(&topic("/topic/a"), &[], now, budget);
        assert_eq!(ids(&r)[0], "0-990");
        assert_eq!(ids(&r)[9], "0-999");
        assert_eq!(r.cut, ["0", "1"]);
        // Enough room: nothing cut, what is complete is complete.
        let r = w.resume_within(
            &topic("/topic/a"),
            &[("0".into(), 995), ("1".into(), 999)],
            now,
            budget,
        );
        assert_eq!(ids(&r), ["0-996", "0-997", "0-998", "0-999"]);
        assert!(r.cut.is_empty(), "{:?}", r.cut);
        // A scan budget bounds a pattern that matches little.
        let scan = Budget {
            messages: usize::MAX,
            bytes: usize::MAX,
            scan: 100,
        };
        let r = w.resume_within(&topic("/topic/zzz.#"), &[], now, scan);
        assert!(r.replay.is_empty());
        assert_eq!(r.cut, ["0", "1"]);
    }

    #[test]
    fn a_resume_in_steps_sees_what_came_and_went_between_them() {
        let now = Instant::now();
        // Room for about 300 records.
        let mut w = Window::new(Duration::from_secs(60), 300 * (128 + 20));
        w.started("0", 0, 0);
        w.started("1", 0, 0);
        for i in 0..200 {
            w.push(d(&format!("0-{i}"), "/topic/a"), now);
        }
        let who = topic("/topic/#");
        let mut scan = w.start_resume(&who, &[("0".into(), 150)], now, Budget::UNLIMITED);
        assert!(!w.resume_step(&mut scan, &who, 10));
        // A newer record comes between steps: not part of this replay (it goes live).
        w.push(d("0-200", "/topic/a"), now);
        while !w.resume_step(&mut scan, &who, 10) {}
        let r = scan.finish();
        assert_eq!(r.replay.len(), 49, "{:?}", ids(&r));
        assert_eq!(ids(&r)[0], "0-151");
        assert!(r.cut.is_empty(), "{:?}", r.cut);

        // Records of an unfinished stream leave the window between steps: it is cut.
        let mut scan = w.start_resume(&who, &[("0".into(), 10)], now, Budget::UNLIMITED);
        assert!(!w.resume_step(&mut scan, &who, 5));
        for i in 0..150 {
            w.push(d(&format!("1-{i}"), "/topic/b"), now);
        }
        while !w.resume_step(&mut scan, &who, 50) {}
        let r = scan.finish();
        assert_eq!(r.cut, ["0"]);
    }

    #[test]
    fn resume_replays_what_came_after_each_position_in_arrival_order() {
        let now = Instant::now();
        let mut w = Window::new(Duration::from_secs(60), 1 << 20);
        w.started("0", 10, 10);
        w.started("1", 0, 0);
        for (id, dest) in [
            ("0-10", "/topic/a"),
            ("1-0", "/topic/a"),
            ("0-11", "/topic/b"),
            ("0-12", "/topic/a"),
            ("1-1", "/topic/a"),
        ] {
            w.push(d(id, dest), now);
        }
        assert_eq!(w.frontier(), vec![("0".into(), 12), ("1".into(), 1)]);
        let r = w.resume(&topic("/topic/a"), &[("0".into(), 10)], now);
        // Stream 1 not named: from its start.
        assert_eq!(ids(&r), ["1-0", "0-12", "1-1"]);
        assert!(r.gaps.is_empty());
        let r = w.resume(
            &topic("/topic/#"),
            &[("0".into(), 11), ("1".into(), 1)],
            now,
        );
        assert_eq!(ids(&r), ["0-12"]);
        // Before what this node read: a gap on stream 0.
        let r = w.resume(&topic("/topic/a"), &[("0".into(), 5), ("1".into(), 1)], now);
        assert_eq!(
            r.gaps,
            vec![Gap {
                stream: "0".into(),
                after: 5,
                base: 9
            }]
        );
        assert_eq!(ids(&r), ["0-10", "0-12"]);
    }

    #[test]
    fn eviction_by_age_and_bytes_moves_the_base() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(10), 1 << 20);
        w.started("0", 0, 0);
        w.push(d("0-0", "/topic/a"), t0);
        w.push(d("0-1", "/topic/a"), t0 + Duration::from_secs(5));
        w.push(d("0-2", "/topic/a"), t0 + Duration::from_secs(11));
        assert_eq!(w.len(), 2);
        let r = w.resume(&topic("/topic/a"), &[], t0 + Duration::from_secs(11));
        assert_eq!(
            r.gaps,
            vec![Gap {
                stream: "0".into(),
                after: -1,
                base: 0
            }]
        );
        assert_eq!(ids(&r), ["0-1", "0-2"]);

        let mut w = Window::new(Duration::from_secs(60), 600);
        w.started("0", 0, 0);
        for i in 0..10 {
            w.push(d(&format!("0-{i}"), "/topic/a"), t0);
        }
        assert!(w.bytes <= 600 && w.len() < 10);
        // The index by destination holds exactly what the window holds.
        assert_eq!(
            w.by_dest.values().map(VecDeque::len).sum::<usize>(),
            w.len()
        );
        let r = w.resume(&topic("/topic/a"), &[("0".into(), 9)], t0);
        assert!(r.gaps.is_empty() && r.replay.is_empty());
    }

    #[test]
    fn targeted_records_replay_only_to_their_user_or_session() {
        let now = Instant::now();
        let mut w = Window::new(Duration::from_secs(60), 1 << 20);
        w.started("0", 0, 0);
        let mut to = |id: &str, user: Option<&str>, session: Option<&str>| {
            let mut x = (*d(id, "/user/queue/q")).clone();
            x.record.user = user.map(Into::into);
            x.record.session = session.map(Into::into);
            w.push(Arc::new(x), now);
        };
        to("0-0", Some("alice"), None);
        to("0-1", Some("bob"), None);
        to("0-2", None, Some("n1-1"));
        to("0-3", None, Some("n1-2"));
        w.push(d("0-4", "/user/queue/q"), now);
        let alice = Subscriber {
            destination: "/user/queue/q",
            user: Some("alice"),
            session: "n1-1",
        };
        assert_eq!(ids(&w.resume(&alice, &[], now)), ["0-0", "0-2"]);
    }

    #[test]
    fn resume_from_the_back_finds_what_a_full_scan_finds() {
        let now = Instant::now();
        let mut w = Window::new(Duration::from_secs(60), 1 << 20);
        let dests = ["/topic/a", "/topic/b", "/topic/c"];
        let mut next = [0i64; 3];
        // Three streams interleaved unevenly, as partitions arrive.
        for i in 0..600u64 {
            let stream = ((i * 7) % 11 % 3) as usize;
            let id = format!("{stream}-{}", next[stream]);
            next[stream] += 1;
            w.push(d(&id, dests[(i % 3) as usize]), now);
        }
        for (p0, p1, p2) in [(-1, -1, -1), (50, 10, 199), (199, 199, 199), (0, 150, 3)] {
            let positions = vec![("0".into(), p0), ("1".into(), p1), ("2".into(), p2)];
            for who in ["/topic/a", "/topic/#"] {
                let floor = |s: &str| positions.iter().find(|(n, _)| n == s).map_or(-1, |p| p.1);
                let naive: Vec<String> = w
                    .entries
                    .iter()
                    .filter(|e| e.offset > floor(&e.stream))
                    .filter(|e| topic(who).wants(e.delivery.record.addressed()))
                    .map(|e| e.delivery.id.clone())
                    .collect();
                let r = w.resume(&topic(who), &positions, now);
                assert_eq!(ids(&r), naive, "{who} after {positions:?}");
            }
        }
    }

    #[test]
    fn a_stream_read_from_before_its_window_starts_over() {
        let now = Instant::now();
        let mut w = Window::new(Duration::from_secs(60), 1 << 20);
        w.started("0", 100, 100);
        w.push(d("0-100", "/topic/a"), now);
        w.push(d("0-101", "/topic/a"), now);
        // The broker lost its log and the partition is read from 0 again.
        w.push(d("0-0", "/topic/a"), now);
        w.push(d("0-1", "/topic/a"), now);
        assert_eq!(w.len(), 2);
        assert_eq!(w.by_dest["/topic/a"].len(), 2);
        let r = w.resume(&topic("/topic/a"), &[], now);
        assert_eq!(ids(&r), ["0-0", "0-1"]);
        assert_eq!(w.frontier(), vec![("0".into(), 1)]);
    }

    #[test]
    fn history_fills_the_window_without_being_routed_and_a_resume_meanwhile_reads_the_log() {
        let now = Instant::now();
        let mut w = Window::new(Duration::from_secs(60), 1 << 20);
        // Read from 10, live from 20: 10..=19 are history.
        w.started("0", 10, 20);
        assert!(!w.push(d("0-10", "/topic/a"), now));
        assert!(!w.push(d("0-11", "/topic/a"), now));
        // Loading: a resume from 10 needs 11..=19 from the log, nothing from here.
        let r = w.resume(&topic("/topic/a"), &[("0".into(), 10)], now);
        assert_eq!(
            r.gaps,
            vec![Gap {
                stream: "0".into(),
                after: 10,
                base: 19
            }]
        );
        assert!(r.replay.is_empty());
        assert!(w.loading(&r.gaps) && w.any_loading());
        // A subscription that starts now starts at the live edge, not in the history.
        assert_eq!(w.frontier(), vec![("0".into(), 19)]);
        for i in 12..20 {
            assert!(!w.push(d(&format!("0-{i}"), "/topic/a"), now));
        }
        assert!(w.push(d("0-20", "/topic/a"), now));
        let loaded = [Gap {
            stream: "0".into(),
            after: 10,
            base: 10,
        }];
        assert!(!w.loading(&loaded) && !w.any_loading());
        // Loaded: the window serves the resume alone.
        let r = w.resume(&topic("/topic/a"), &[("0".into(), 17)], now);
        assert!(r.gaps.is_empty());
        assert_eq!(ids(&r), ["0-18", "0-19", "0-20"]);
    }

    #[test]
    fn only_the_first_position_of_each_stream_the_window_holds_counts() {
        let now = Instant::now();
        let mut w = Window::new(Duration::from_secs(60), 1 << 20);
        w.started("0", 0, 0);
        w.started("1", 0, 0);
        for i in 0..4 {
            w.push(d(&format!("0-{i}"), "/topic/a"), now);
            w.push(d(&format!("1-{i}"), "/topic/a"), now);
        }
        let mut positions: Vec<(String, i64)> = (0..4096).map(|i| (format!("x{i}"), 7)).collect();
        positions.insert(10, ("1".into(), 2));
        positions.push(("1".into(), 0));
        positions.push(("0".into(), 1));
        let known = w.known(&positions);
        assert_eq!(known, [("1".to_string(), 2), ("0".to_string(), 1)]);
        let a = w.resume(&topic("/topic/a"), &positions, now);
        let b = w.resume(&topic("/topic/a"), &known, now);
        assert_eq!(ids(&a), ids(&b));
        assert_eq!(ids(&b), ["0-2", "0-3", "1-3"]);
    }

    #[test]
    fn a_stream_read_again_does_not_reorder_the_window() {
        let now = Instant::now();
        let mut w = Window::new(Duration::from_secs(60), 1 << 20);
        w.started("0", 0, 0);
        w.push(d("0-0", "/topic/a"), now);
        w.push(d("0-1", "/topic/a"), now);
        w.push(d("0-1", "/topic/a"), now);
        assert_eq!(w.len(), 2);
    }
}
