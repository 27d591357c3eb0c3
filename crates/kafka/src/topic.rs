//! The three topics a node reads and writes, and a value kept for each of them.

use std::ops::{Index, IndexMut};

use crate::config::KafkaConfig;

/// Broadcast messages for clients (every node reads all of it), targeted ones (a node
/// reads the partitions of its users), or replies for request/reply (a node reads its
/// own partition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Topic {
    Messages,
    Targeted,
    Replies,
}

impl Topic {
    /// In the order the node reads, creates and reports them.
    pub(crate) const ALL: [Topic; 3] = [Topic::Messages, Topic::Targeted, Topic::Replies];

    /// The topic's name as configured.
    pub(crate) fn name(self, cfg: &KafkaConfig) -> &str {
        match self {
            Topic::Messages => &cfg.messages_topic,
            Topic::Targeted => &cfg.targeted_topic,
            Topic::Replies => &cfg.replies_topic,
        }
    }

    /// Partitions of the topic when the node creates it.
    pub(crate) fn partitions(self, cfg: &KafkaConfig) -> i32 {
        match self {
            Topic::Messages => cfg.partitions,
            Topic::Targeted => cfg.targeted_partitions,
            Topic::Replies => cfg.replies_partitions,
        }
    }

    /// The replay window's name for one of its partitions (messages topics only): the
    /// first part of a message id, `<partition>` or `t<partition>`.
    pub(crate) fn stream(self, partition: i32) -> String {
        format!("{}{partition}", self.stream_prefix())
    }

    /// What a stream name starts with before the partition number.
    pub(crate) fn stream_prefix(self) -> &'static str {
        match self {
            Topic::Targeted => "t",
            _ => "",
        }
    }

    /// The topic and partition a stream names (the inverse of [`Topic::stream`]).
    pub(crate) fn of_stream(stream: &str) -> Option<(Topic, i32)> {
        let (topic, p) = match stream.strip_prefix('t') {
            Some(p) => (Topic::Targeted, p),
            None => (Topic::Messages, stream),
        };
        // Digits only: `+1` or ` 1` would name a stream no record has.
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((topic, p.parse().ok()?))
    }
}

/// One `T` per topic, indexed by [`Topic`].
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct PerTopic<T> {
    pub(crate) messages: T,
    pub(crate) targeted: T,
    pub(crate) replies: T,
}

impl<T> Index<Topic> for PerTopic<T> {
    type Output = T;

    fn index(&self, topic: Topic) -> &T {
        match topic {
            Topic::Messages => &self.messages,
            Topic::Targeted => &self.targeted,
            Topic::Replies => &self.replies,
        }
    }
}

impl<T> IndexMut<Topic> for PerTopic<T> {
    fn index_mut(&mut self, topic: Topic) -> &mut T {
        match topic {
            Topic::Messages => &mut self.messages,
            Topic::Targeted => &mut self.targeted,
            Topic::Replies => &mut self.replies,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_name_their_topic_and_partition() {
        for (topic, p) in [
            (Topic::Messages, 3),
            (Topic::Targeted, 0),
            (Topic::Targeted, 41),
        ] {
            assert_eq!(Topic::of_stream(&topic.stream(p)), Some((topic, p)));
        }
        for bad in ["", "t", "t-1", "+1", "t+1", "x3", "n1", "99999999999"] {
            assert_eq!(Topic::of_stream(bad), None, "{bad}");
        }
    }
}
