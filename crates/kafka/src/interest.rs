//! Which partitions of the targeted topic this node must read: those its connected
//! users hash to, for a while after the last of them left (a reconnect does not make
//! the reader stop and start again), and its home partition (session pushes name the
//! session's node). Connections add and remove users here; the reader thread reads the
//! wanted set and says which partitions it reads.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pushcenter_node::placement::partition_of;
use tokio::sync::oneshot;

/// How long a partition is still read after its last local user left.
pub(crate) const LINGER: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(crate) struct Interest {
    /// Connections per local user.
    users: HashMap<Box<str>, u32>,
    /// The targeted topic's partitions (0: not known yet).
    partitions: u32,
    /// Per partition: local users that hash to it.
    per_partition: Vec<u32>,
    /// Per partition without users: since when.
    idle_since: HashMap<u32, Instant>,
    /// Per partition: the reader reads it (started, in the replay window).
    reading: Vec<bool>,
    /// Connections waiting until their user's partition is read.
    waiting: Vec<(u32, oneshot::Sender<()>)>,
    /// Users connected before the partitions were known.
    waiting_unplaced: Vec<(Box<str>, oneshot::Sender<()>)>,
    /// The wanted set changed since the reader last looked.
    pub(crate) changed: bool,
}

impl Interest {
    /// One more connection of `user`: `None` when its partition is read already, else
    /// what resolves once it is.
    pub(crate) fn follow(&mut self, user: &str) -> Option<oneshot::Receiver<()>> {
        let n = match self.users.get_mut(user) {
            Some(n) => n,
            None => self.users.entry(Box::from(user)).or_insert(0),
        };
        *n += 1;
        let first = *n == 1;
        if self.partitions == 0 {
            let (tx, rx) = oneshot::channel();
            self.waiting_unplaced.push((Box::from(user), tx));
            return Some(rx);
        }
        let p = partition_of(user, self.partitions);
        if first {
            self.add(p, 1);
        }
        if self.reading.get(p as usize).copied().unwrap_or(false) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.waiting.retain(|(_, tx)| !tx.is_closed());
        self.waiting.push((p, tx));
        Some(rx)
    }

    /// One connection of `user` fewer.
    pub(crate) fn unfollow(&mut self, user: &str, now: Instant) {
        let Some(n) = self.users.get_mut(user) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        self.users.remove(user);
        if self.partitions > 0 {
            let p = partition_of(user, self.partitions);
            if let Some(c) = self.per_partition.get_mut(p as usize) {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    self.idle_since.insert(p, now);
                    self.changed = true;
                }
            }
        }
    }

    fn add(&mut self, p: u32, n: u32) {
        if let Some(c) = self.per_partition.get_mut(p as usize) {
            if *c == 0 {
                self.changed = true;
            }
            *c += n;
            self.idle_since.remove(&p);
        }
    }

    /// The topic has `partitions` now: users are placed again (a partition count that
    /// grew moves some of them).
    pub(crate) fn set_partitions(&mut self, partitions: u32) {
        if partitions == self.partitions {
            return;
        }
        self.partitions = partitions;
        self.per_partition = vec![0; partitions as usize];
        self.reading = vec![false; partitions as usize];
        self.idle_since.clear();
        self.changed = true;
        let placed: Vec<u32> = self
            .users
            .keys()
            .map(|u| partition_of(u, partitions))
            .collect();
        for p in placed {
            if let Some(c) = self.per_partition.get_mut(p as usize) {
                *c += 1;
            }
        }
        for (user, tx) in std::mem::take(&mut self.waiting_unplaced) {
            if partitions > 0 {
                self.waiting.push((partition_of(&user, partitions), tx));
            }
        }
    }

    /// The partitions to read now: users' partitions, those left less than [`LINGER`]
    /// ago, and `home`.
    pub(crate) fn wanted(&mut self, home: u32, now: Instant) -> Vec<bool> {
        self.idle_since
            .retain(|_, since| now.duration_since(*since) < LINGER);
        let mut wanted: Vec<bool> = self.per_partition.iter().map(|&c| c > 0).collect();
        for &p in self.idle_since.keys() {
            if let Some(w) = wanted.get_mut(p as usize) {
                *w = true;
            }
        }
        if let Some(w) = wanted.get_mut(home as usize) {
            *w = true;
        }
        wanted
    }

    /// The reader reads exactly `reading` now: connections waiting for one of these
    /// partitions go on.
    pub(crate) fn reading(&mut self, reading: &[bool]) {
        if reading.len() != self.reading.len() {
            return;
        }
        self.reading.copy_from_slice(reading);
        let (ready, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(p, _)| reading.get(*p as usize).copied().unwrap_or(false));
        self.waiting = wait;
        for (_, tx) in ready {
            let _ = tx.send(());
        }
    }

    /// Users connected now (for the tests).
    #[cfg(test)]
    fn users(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_wanted_while_users_hold_it_and_a_while_after() {
        let mut i = Interest::default();
        let now = Instant::now();
        // Before the partitions are known: the connection waits.
        let mut early = i.follow("alice").expect("waits");
        i.set_partitions(8);
        let p = partition_of("alice", 8) as usize;
        let home = (p as u32 + 1) % 8;
        let wanted = i.wanted(home, now);
        assert_eq!(wanted.iter().filter(|&&w| w).count(), 2);
        assert!(wanted[p] && wanted[home as usize]);
        assert!(early.try_recv().is_err());
        i.reading(&wanted);
        assert!(early.try_recv().is_ok());
        // Read already: nothing to wait for.
        assert!(i.follow("alice").is_none());
        i.unfollow("alice", now);
        i.unfollow("alice", now);
        assert_eq!(i.users(), 0);
        assert!(i.wanted(home, now + LINGER / 2)[p], "lingers");
        assert!(!i.wanted(home, now + LINGER)[p], "then goes");
        assert!(i.wanted(home, now + LINGER)[home as usize], "home stays");
        // Unknown users leaving change nothing.
        i.unfollow("nobody", now);
    }

    #[test]
    fn more_partitions_place_users_again() {
        let mut i = Interest::default();
        i.set_partitions(4);
        let users: Vec<String> = (0..50).map(|n| format!("u{n}")).collect();
        for u in &users {
            i.follow(u);
        }
        i.set_partitions(16);
        let wanted = i.wanted(0, Instant::now());
        for u in &users {
            assert!(wanted[partition_of(u, 16) as usize], "{u}");
        }
        let mut waiting = i.follow("late").expect("not read yet");
        i.reading(&wanted);
        let p = partition_of("late", 16) as usize;
        assert_eq!(waiting.try_recv().is_ok(), wanted[p]);
    }
}
