//! Resume planning, sans I/O: which parts of the bus's log a resuming subscription needs
//! read, whether what was read covers the window's gaps, and how the replay is put
//! together within the room the connection's queue has. The connection does the reads
//! and holds the locks; everything it decides with is here.

use crate::bus::Delivery;
use crate::routing::window::{Gap, Resume, parse_id, replay_cost};

/// A read of the log to make: the records of `stream` from offset `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogRead {
    pub(crate) stream: String,
    pub(crate) from: i64,
    pub(crate) to: i64,
}

/// What was read of one stream: its records from `from` to `to` that the subscriber
/// wants.
#[derive(Debug)]
struct LogPart {
    stream: String,
    from: i64,
    to: i64,
    records: Vec<Delivery>,
}

/// The log reads of one resume. The window moves on while the log is read (live
/// records push its oldest out), so the connection asks for reads again until what it
/// read covers the window's gaps, or gives up (a stream the log could not give from the
/// client's position is lost and not read again).
#[derive(Debug, Default)]
pub(crate) struct FromLog {
    parts: Vec<LogPart>,
    gone: Vec<String>,
}

impl FromLog {
    /// The reads still needed for `gaps`, each after what was read of its stream.
    pub(crate) fn reads(&self, gaps: &[Gap]) -> Vec<LogRead> {
        gaps.iter()
            .filter(|g| !self.gone.contains(&g.stream))
            .filter_map(|g| {
                let have = self.parts.iter().find(|p| p.stream == g.stream);
                let from = have.map_or(g.after + 1, |p| p.to + 1);
                (from <= g.base).then(|| LogRead {
                    stream: g.stream.clone(),
                    from,
                    to: g.base,
                })
            })
            .collect()
    }

    /// Takes the result of `read`: the offset the log read from and the records, or
    /// `None` when nothing could be read. A read that could not start at `read.from`
    /// (only the newest part was read) makes the stream lost.
    pub(crate) fn read_done(&mut self, read: LogRead, got: Option<(i64, Vec<Delivery>)>) {
        match got {
            Some((from, records)) if from == read.from => {
                match self.parts.iter_mut().find(|p| p.stream == read.stream) {
                    Some(p) => {
                        p.to = read.to;
                        p.records.extend(records);
                    }
                    None => self.parts.push(LogPart {
                        stream: read.stream,
                        from,
                        to: read.to,
                        records,
                    }),
                }
            }
            _ => self.gone.push(read.stream),
        }
    }

    /// Whether every gap is read whole or given up on.
    pub(crate) fn covers(&self, gaps: &[Gap]) -> bool {
        gaps.iter()
            .all(|g| self.gone.contains(&g.stream) || self.part_for(g).is_some())
    }

    /// What was read of `g`'s stream, when it covers all of `g`.
    fn part_for(&self, g: &Gap) -> Option<&LogPart> {
        self.parts
            .iter()
            .find(|p| p.stream == g.stream && p.from <= g.after + 1 && p.to >= g.base)
    }
}

/// What a connection's queue can take now.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Room {
    pub(crate) messages: usize,
    pub(crate) bytes: usize,
}

/// A resume put together: the part read from the log to replay (oldest first; the
/// window's part follows it) and the streams it could not give whole.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    pub(crate) from_log: Vec<&'a Delivery>,
    pub(crate) lost: Vec<String>,
}

/// Puts the window's part `window` and the log's part together within `room`: the
/// window's part is chosen first (it is the newest); what it leaves goes to the log's
/// part, newest first. A gap the log did not cover, or whose oldest records did not
/// fit, is a lost stream.
pub(crate) fn plan<'a>(window: &Resume, log: &'a FromLog, room: Room) -> Plan<'a> {
    let mut lost = window.cut.clone();
    let (mut messages, mut bytes) = (room.messages, room.bytes);
    for e in &window.replay {
        messages = messages.saturating_sub(1);
        bytes = bytes.saturating_sub(e.cost());
    }
    let mut older: Vec<&Delivery> = Vec::new();
    for g in &window.gaps {
        match log.part_for(g) {
            Some(p) => older.extend(
                p.records
                    .iter()
                    .filter(|d| parse_id(&d.id).is_some_and(|(_, o)| o > g.after && o <= g.base)),
            ),
            None => lost.push(g.stream.clone()),
        }
    }
    let mut start = older.len();
    while start > 0 {
        let cost = replay_cost(older[start - 1]);
        if messages == 0 || cost > bytes {
            break;
        }
        messages -= 1;
        bytes -= cost;
        start -= 1;
    }
    for d in &older[..start] {
        if let Some((stream, _)) = parse_id(&d.id) {
            lost.push(stream.to_string());
        }
    }
    older.drain(..start);
    lost.sort();
    lost.dedup();
    Plan {
        from_log: older,
        lost,
    }
}

impl Plan<'_> {
    /// The RECEIPT headers that say how the resume went.
    pub(crate) fn outcome(&self) -> Vec<(&'static str, String)> {
        if self.lost.is_empty() {
            vec![("resume", "ok".to_string())]
        } else {
            vec![
                ("resume", "lost".to_string()),
                ("resume-lost", self.lost.join(",")),
            ]
        }
    }
}

/// Where live delivery to a resumed subscription starts, per stream: records up to the
/// window's `frontier` were replayed, and those up to the client's own `positions` it
/// has already (the node it moves to may be behind the one it left).
pub(crate) fn floor(frontier: &[(String, i64)], positions: &[(String, i64)]) -> Vec<(String, i64)> {
    let mut floor = frontier.to_vec();
    for (stream, offset) in positions {
        match floor.iter_mut().find(|(s, _)| s == stream) {
            Some(f) => f.1 = f.1.max(*offset),
            None => floor.push((stream.clone(), *offset)),
        }
    }
    floor
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Record;

    fn d(id: &str) -> Delivery {
        Delivery {
            id: id.into(),
            record: Record {
                destination: "/topic/t".into(),
                body: bytes::Bytes::from_static(b"x"),
                ..Record::default()
            },
        }
    }

    fn gap(stream: &str, after: i64, base: i64) -> Gap {
        Gap {
            stream: stream.into(),
            after,
            base,
        }
    }

    fn window_part(gaps: Vec<Gap>) -> Resume {
        Resume {
            replay: Vec::new(),
            gaps,
            cut: Vec::new(),
        }
    }

    const ROOM: Room = Room {
        messages: 1000,
        bytes: 1 << 20,
    };

    #[test]
    fn reads_follow_what_was_read_and_stop_at_a_lost_stream() {
        let mut log = FromLog::default();
        let gaps = vec![gap("0", 4, 9), gap("1", -1, 2)];
        let reads = log.reads(&gaps);
        assert_eq!(reads.len(), 2);
        assert_eq!((reads[0].from, reads[0].to), (5, 9));
        assert!(!log.covers(&gaps));
        log.read_done(reads[0].clone(), Some((5, vec![d("0-5"), d("0-9")])));
        // Only the newest part of stream 1 was read: lost.
        log.read_done(reads[1].clone(), Some((1, vec![d("1-2")])));
        assert!(log.covers(&gaps));
        // The window moved on meanwhile: only what it lost since is read again.
        let moved = vec![gap("0", 4, 12), gap("1", -1, 5)];
        assert!(!log.covers(&moved));
        let again = log.reads(&moved);
        assert_eq!(
            again,
            vec![LogRead {
                stream: "0".into(),
                from: 10,
                to: 12
            }]
        );
        log.read_done(again[0].clone(), Some((10, vec![d("0-11")])));
        assert!(log.covers(&moved));
        let p = plan(&window_part(moved), &log, ROOM);
        let ids: Vec<&str> = p.from_log.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["0-5", "0-9", "0-11"]);
        assert_eq!(p.lost, ["1"]);
        assert_eq!(p.outcome()[1], ("resume-lost", "1".to_string()));
    }

    #[test]
    fn the_log_part_keeps_its_newest_records_within_the_room() {
        let mut log = FromLog::default();
        let gaps = vec![gap("0", -1, 3)];
        let read = log.reads(&gaps).remove(0);
        let records = (0..=3).map(|o| d(&format!("0-{o}"))).collect();
        log.read_done(read, Some((0, records)));
        let room = Room {
            messages: 2,
            bytes: 1 << 20,
        };
        let p = plan(&window_part(gaps.clone()), &log, room);
        let ids: Vec<&str> = p.from_log.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["0-2", "0-3"]);
        assert_eq!(p.lost, ["0"]);
        let p = plan(&window_part(gaps), &log, ROOM);
        assert_eq!(p.from_log.len(), 4);
        assert_eq!(p.outcome(), [("resume", "ok".to_string())]);
    }

    #[test]
    fn a_gap_nothing_was_read_for_is_lost() {
        let log = FromLog::default();
        let p = plan(&window_part(vec![gap("2", 0, 5)]), &log, ROOM);
        assert!(p.from_log.is_empty());
        assert_eq!(p.lost, ["2"]);
    }

    #[test]
    fn the_floor_is_the_later_of_the_frontier_and_the_clients_position() {
        let frontier = vec![("0".to_string(), 10), ("1".to_string(), 3)];
        let positions = vec![("1".to_string(), 7), ("2".to_string(), 1)];
        assert_eq!(
            floor(&frontier, &positions),
            [
                ("0".to_string(), 10),
                ("1".to_string(), 7),
                ("2".to_string(), 1)
            ]
        );
    }
}
