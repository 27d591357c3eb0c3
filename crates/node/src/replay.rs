//! The replay window: the records this node saw recently, in arrival order, so a client
//! that reconnects (here, or to any node: message ids are the same everywhere) can
//! resume after the last message id it saw per stream. A stream is a Kafka partition,
//! or the node itself on the in-memory bus; a message id is `<stream>-<offset>`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bus::Delivery;
use crate::router::{is_pattern, matches};

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

struct Entry {
    at: Instant,
    cost: usize,
    stream: Arc<str>,
    offset: i64,
    delivery: Arc<Delivery>,
}

#[derive(Clone, Copy)]
struct Stream {
    /// The window holds every record of the stream after this offset (-1: from the
    /// stream's start).
    base: i64,
    /// The last offset seen (`base` when none since).
    last: i64,
}

/// Who is resuming: a subscription's destination and the connection's identity.
pub(crate) struct Subscriber<'a> {
    pub(crate) destination: &'a str,
    pub(crate) user: Option<&'a str>,
    pub(crate) session: &'a str,
}

impl Subscriber<'_> {
    /// The router's rule: untargeted records to `/topic/...` subscriptions, targeted
    /// ones (to this user or session) to any matching subscription.
    pub(crate) fn wants(&self, d: &Delivery) -> bool {
        let r = &d.record;
        let dest_ok = self.destination == r.destination
            || (is_pattern(self.destination) && matches(self.destination, &r.destination));
        if !dest_ok {
            return false;
        }
        match (&r.user, &r.session) {
            (None, None) => !self.destination.starts_with("/user/"),
            (_, Some(s)) if s != self.session => false,
            (Some(u), _) => self.user == Some(u.as_str()),
            (None, Some(_)) => true,
        }
    }
}

/// What a resume found.
pub(crate) struct Resume {
    /// Records to send before anything live, oldest first.
    pub(crate) replay: Vec<Arc<Delivery>>,
    /// Streams whose records after the client's position are no longer all here, with
    /// the client's position: these need the bus's log, or are lost.
    pub(crate) gaps: Vec<(String, i64, i64)>,
}

pub(crate) struct Window {
    max_age: Duration,
    max_bytes: usize,
    bytes: usize,
    entries: VecDeque<Entry>,
    streams: HashMap<Arc<str>, Stream>,
}

impl Window {
    pub(crate) fn new(max_age: Duration, max_bytes: usize) -> Window {
        Window {
            max_age,
            max_bytes,
            bytes: 0,
            entries: VecDeque::new(),
            streams: HashMap::new(),
        }
    }

    /// The bus starts reading `stream` at `next` (everything before is not here).
    pub(crate) fn started(&mut self, stream: &str, next: i64) {
        let s = self.streams.entry(Arc::from(stream)).or_insert(Stream {
            base: next - 1,
            last: next - 1,
        });
        // Read again from further back (a broker that lost its log): keep what is here.
        if next - 1 > s.last {
            *s = Stream {
                base: next - 1,
                last: next - 1,
            };
        }
    }

    /// A record from the bus, before it is routed.
    pub(crate) fn push(&mut self, d: Arc<Delivery>, now: Instant) {
        let Some((stream, offset)) = parse_id(&d.id) else {
            return;
        };
        let key: Arc<str> = match self.streams.get_key_value(stream) {
            Some((k, _)) => k.clone(),
            None => Arc::from(stream),
        };
        let s = self.streams.entry(key.clone()).or_insert(Stream {
            base: offset - 1,
            last: offset - 1,
        });
        if offset <= s.last {
            // Not newer than what is here (the bus read again): keep the window ordered.
            if offset < s.base {
                // Read again from before the window (a broker that lost its log): the
                // stream starts over, so its old entries go.
                *s = Stream {
                    base: offset - 1,
                    last: offset - 1,
                };
                let mut freed = 0;
                self.entries.retain(|e| {
                    let keep = e.stream != key;
                    if !keep {
                        freed += e.cost;
                    }
                    keep
                });
                self.bytes -= freed;
            } else {
                return;
            }
        }
        s.last = offset;
        let cost = d.record.body.len()
            + d.record.destination.len()
            + d.record
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + 128;
        self.bytes += cost;
        self.entries.push_back(Entry {
            at: now,
            cost,
            stream: key,
            offset,
            delivery: d,
        });
        self.evict(now);
    }

    fn evict(&mut self, now: Instant) {
        while let Some(e) = self.entries.front() {
            let old = now.duration_since(e.at) > self.max_age;
            if !old && self.bytes <= self.max_bytes {
                break;
            }
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= e.cost;
                if let Some(s) = self.streams.get_mut(&e.stream) {
                    s.base = s.base.max(e.offset);
                }
            }
        }
    }

    /// The last offset of every stream: where a new subscription starts.
    pub(crate) fn frontier(&self) -> Vec<(String, i64)> {
        let mut v: Vec<(String, i64)> = self
            .streams
            .iter()
            .map(|(k, s)| (k.to_string(), s.last))
            .collect();
        v.sort();
        v
    }

    /// Streams whose records after `positions` are no longer all here: (stream, the
    /// client's position, the window's base). Cheap: one entry per stream.
    pub(crate) fn gaps(
        &mut self,
        positions: &[(String, i64)],
        now: Instant,
    ) -> Vec<(String, i64, i64)> {
        self.evict(now);
        let mut gaps: Vec<(String, i64, i64)> = self
            .streams
            .iter()
            .map(|(name, s)| (name.to_string(), after(positions, name), s.base))
            .filter(|(_, from, base)| from < base)
            .collect();
        gaps.sort();
        gaps
    }

    /// The records `who` missed after `positions` (streams not named: from their start).
    /// Scans from the newest record back and stops once every stream is behind its
    /// position: a resume costs what was missed, not the window's size.
    pub(crate) fn resume(
        &mut self,
        who: &Subscriber<'_>,
        positions: &[(String, i64)],
        now: Instant,
    ) -> Resume {
        let gaps = self.gaps(positions, now);
        let floor: HashMap<&str, i64> = self
            .streams
            .keys()
            .map(|name| (&**name, after(positions, name)))
            .collect();
        // Within a stream, offsets grow along the window: once one entry is at or
        // below its stream's floor, so is every older entry of that stream.
        let mut passed: HashSet<&str> = HashSet::new();
        let mut replay = Vec::new();
        for e in self.entries.iter().rev() {
            if passed.len() == floor.len() {
                break;
            }
            let f = floor.get(&*e.stream).copied().unwrap_or(-1);
            if e.offset <= f {
                passed.insert(&*e.stream);
            } else if who.wants(&e.delivery) {
                replay.push(e.delivery.clone());
            }
        }
        replay.reverse();
        Resume { replay, gaps }
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
        r.replay.iter().map(|d| d.id.as_str()).collect()
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
    fn resume_replays_what_came_after_each_position_in_arrival_order() {
        let now = Instant::now();
        let mut w = Window::new(Duration::from_secs(60), 1 << 20);
        w.started("0", 10);
        w.started("1", 0);
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
        assert_eq!(r.gaps, vec![("0".into(), 5, 9)]);
        assert_eq!(ids(&r), ["0-10", "0-12"]);
    }

    #[test]
    fn eviction_by_age_and_bytes_moves_the_base() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(10), 1 << 20);
        w.started("0", 0);
        w.push(d("0-0", "/topic/a"), t0);
        w.push(d("0-1", "/topic/a"), t0 + Duration::from_secs(5));
        w.push(d("0-2", "/topic/a"), t0 + Duration::from_secs(11));
        assert_eq!(w.len(), 2);
        let r = w.resume(&topic("/topic/a"), &[], t0 + Duration::from_secs(11));
        assert_eq!(r.gaps, vec![("0".into(), -1, 0)]);
        assert_eq!(ids(&r), ["0-1", "0-2"]);

        let mut w = Window::new(Duration::from_secs(60), 600);
        w.started("0", 0);
        for i in 0..10 {
            w.push(d(&format!("0-{i}"), "/topic/a"), t0);
        }
        assert!(w.bytes <= 600 && w.len() < 10);
        let r = w.resume(&topic("/topic/a"), &[("0".into(), 9)], t0);
        assert!(r.gaps.is_empty() && r.replay.is_empty());
    }

    #[test]
    fn targeted_records_replay_only_to_their_user_or_session() {
        let now = Instant::now();
        let mut w = Window::new(Duration::from_secs(60), 1 << 20);
        w.started("0", 0);
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
                    .filter(|e| topic(who).wants(&e.delivery))
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
        w.started("0", 100);
        w.push(d("0-100", "/topic/a"), now);
        w.push(d("0-101", "/topic/a"), now);
        // The broker lost its log and the partition is read from 0 again.
        w.push(d("0-0", "/topic/a"), now);
        w.push(d("0-1", "/topic/a"), now);
        assert_eq!(w.len(), 2);
        let r = w.resume(&topic("/topic/a"), &[], now);
        assert_eq!(ids(&r), ["0-0", "0-1"]);
        assert_eq!(w.frontier(), vec![("0".into(), 1)]);
    }

    #[test]
    fn a_stream_read_again_does_not_reorder_the_window() {
        let now = Instant::now();
        let mut w = Window::new(Duration::from_secs(60), 1 << 20);
        w.started("0", 0);
        w.push(d("0-0", "/topic/a"), now);
        w.push(d("0-1", "/topic/a"), now);
        w.push(d("0-1", "/topic/a"), now);
        assert_eq!(w.len(), 2);
    }
}
