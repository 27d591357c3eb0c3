//! A routed record on its way to one connection: the MESSAGE encoded once for every
//! subscriber, the per-connection outbound queue, and the frame each subscriber gets.

pub(crate) mod message;
pub(crate) mod outbox;
pub(crate) mod render;
