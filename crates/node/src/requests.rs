//! Synchronous calls to clients: the waiters that hold a backend's call until the
//! client's answer, a callback or the deadline.

pub(crate) mod waiters;
