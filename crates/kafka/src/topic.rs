//! The two topics a node reads and writes, and a value kept for each of them.

use std::ops::{Index, IndexMut};

use crate::config::KafkaConfig;

/// Messages for clients, or clients' replies for request/reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Topic {
    Messages,
    Replies,
}

impl Topic {
    /// In the order the node reads, creates and reports them.
    pub(crate) const ALL: [Topic; 2] = [Topic::Messages, Topic::Replies];

    /// The topic's name as configured.
    pub(crate) fn name(self, cfg: &KafkaConfig) -> &str {
        match self {
            Topic::Messages => &cfg.messages_topic,
            Topic::Replies => &cfg.replies_topic,
        }
    }
}

/// One `T` per topic, indexed by [`Topic`].
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct PerTopic<T> {
    pub(crate) messages: T,
    pub(crate) replies: T,
}

impl<T> Index<Topic> for PerTopic<T> {
    type Output = T;

    fn index(&self, topic: Topic) -> &T {
        match topic {
            Topic::Messages => &self.messages,
            Topic::Replies => &self.replies,
        }
    }
}

impl<T> IndexMut<Topic> for PerTopic<T> {
    fn index_mut(&mut self, topic: Topic) -> &mut T {
        match topic {
            Topic::Messages => &mut self.messages,
            Topic::Replies => &mut self.replies,
        }
    }
}
