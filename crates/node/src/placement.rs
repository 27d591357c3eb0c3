//! Where targeted traffic lives: which partition of the targeted topic a user's or a
//! session's records go to, which partition of the replies topic a node reads, and which
//! node the registry sends a user to (the one that reads the user's partition). Every
//! node, every registry and every backend must compute the same answers: the hash is
//! Kafka's own (the Java client's default partitioner, librdkafka's `murmur2_random`).

use std::hash::{Hash, Hasher};

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // Truncation as Java's `int` length does.
    let mut h: u32 = SEED ^ (data.len() as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(&b) = tail.first() {
        h ^= u32::from(b);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition of `key` among `partitions`, as Kafka's default partitioner puts it
/// (0 when there are none).
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    if partitions == 0 {
        return 0;
    }
    (murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions
}

/// The node a session id names: ids are `<node>-<boot>-<n>`.
pub fn session_node(session: &str) -> Option<&str> {
    let mut parts = session.rsplitn(3, '-');
    let (_n, _boot) = (parts.next()?, parts.next()?);
    parts.next().filter(|n| !n.is_empty())
}

/// What places a targeted record: its user, else the node its session lives on (the
/// session itself when it names none, so such a record still lands on one partition).
pub fn target_key<'a>(user: Option<&'a str>, session: Option<&'a str>) -> Option<&'a str> {
    user.or_else(|| session.map(|s| session_node(s).unwrap_or(s)))
}

/// The replies partition a node reads and every node writes its replies to: the number
/// a node id ends with, modulo the partitions (`pushcenter-0`, `pushcenter-1`, ... as a
/// StatefulSet names them get one each while there are enough partitions), else the
/// murmur2 partition of the id.
pub fn reply_partition(node_id: &str, partitions: u32) -> u32 {
    if partitions == 0 {
        return 0;
    }
    let digits = node_id.len() - node_id.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let tail = &node_id[node_id.len() - digits..];
    // At most 9 digits: always fits.
    match tail[tail.len().saturating_sub(9)..].parse::<u32>() {
        Ok(n) if digits > 0 => n % partitions,
        _ => partition_of(node_id, partitions),
    }
}

/// The rank of `node` for `partition` (rendezvous hashing): the same everywhere.
fn rank(partition: u32, node: &str) -> u64 {
    // Not std's DefaultHasher: its algorithm may change between Rust releases, and
    // registries built by different releases must agree.
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    partition.hash(&mut h);
    node.hash(&mut h);
    // A final mix: FNV's low bits are weak for short inputs.
    let mut x = h.0;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Which of `nodes` reads each of `partitions`: rendezvous hashing with bounded load.
/// Partitions are placed in order; each goes to the highest-ranked node that has fewer
/// than ⌈partitions / nodes⌉, so every node gets its even share (plain rendezvous leaves
/// some nodes half as many again), and a node joining or leaving moves few partitions.
/// Indices into `nodes`; empty when there are no nodes.
pub fn assign(partitions: u32, nodes: &[&str]) -> Vec<usize> {
    if nodes.is_empty() {
        return Vec::new();
    }
    let cap = (partitions as usize).div_ceil(nodes.len());
    let mut load = vec![0usize; nodes.len()];
    let mut owners = Vec::with_capacity(partitions as usize);
    let mut order: Vec<(u64, usize)> = Vec::with_capacity(nodes.len());
    for p in 0..partitions {
        order.clear();
        order.extend(nodes.iter().enumerate().map(|(i, n)| (rank(p, n), i)));
        order.sort_unstable_by(|a, b| b.cmp(a));
        let owner = order
            .iter()
            .map(|&(_, i)| i)
            .find(|&i| load[i] < cap)
            .unwrap_or(order[0].1);
        load[owner] += 1;
        owners.push(owner);
    }
    owners
}

/// The nodes in the order a user with no known partition prefers them (rendezvous of
/// the user over node ids): a user stays on one node while it lives.
pub fn user_rank(user: &str, node: &str) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    user.hash(&mut h);
    node.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_is_kafkas() {
        // Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 5] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
        ];
        for (data, want) in cases {
            assert_eq!(
                murmur2(data) as i32,
                want,
                "{:?}",
                std::str::from_utf8(data)
            );
        }
        assert_eq!(partition_of("x", 0), 0);
    }

    #[test]
    fn sessions_name_their_node_and_nodes_their_reply_partition() {
        assert_eq!(session_node("n1-ab12cd-3"), Some("n1"));
        assert_eq!(session_node("node-1-ab12cd-3"), Some("node-1"));
        assert_eq!(session_node("bare"), None);
        assert_eq!(session_node("-a-b"), None);
        assert_eq!(target_key(Some("alice"), Some("n1-a-1")), Some("alice"));
        assert_eq!(target_key(None, Some("n1-a-1")), Some("n1"));
        assert_eq!(target_key(None, None), None);
        assert_eq!(reply_partition("pushcenter-0", 16), 0);
        assert_eq!(reply_partition("n6", 16), 6);
        assert_eq!(reply_partition("n17", 16), 1);
        assert_eq!(
            reply_partition("n99999999999999999999", 16),
            99_999_999 % 16
        );
        assert_eq!(reply_partition("edge", 16), partition_of("edge", 16));
        assert_eq!(reply_partition("n1", 0), 0);
    }

    #[test]
    fn every_node_gets_its_even_share_and_few_partitions_move() {
        let names: Vec<String> = (1..=7).map(|i| format!("n{i}")).collect();
        for n in 1..=6 {
            let nodes: Vec<&str> = names[..n].iter().map(String::as_str).collect();
            let owners = assign(8 * n as u32, &nodes);
            for i in 0..n {
                assert_eq!(owners.iter().filter(|&&o| o == i).count(), 8, "{n} nodes");
            }
            assert_eq!(owners, assign(8 * n as u32, &nodes), "deterministic");
        }
        // A seventh node joins 48 partitions over 6: it takes its share, and most of the
        // others stay where they were.
        let six: Vec<&str> = names[..6].iter().map(String::as_str).collect();
        let seven: Vec<&str> = names.iter().map(String::as_str).collect();
        let (before, after) = (assign(48, &six), assign(48, &seven));
        let stayed = before.iter().zip(&after).filter(|(a, b)| a == b).count();
        assert!(stayed >= 30, "only {stayed} of 48 stayed");
        assert!(assign(4, &[]).is_empty());
    }
}
