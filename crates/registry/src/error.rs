//! What can go wrong in the registry crate.

/// A registry failure: a config that does not hold together, or etcd not answering.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `[etcd]` section is unusable; the text names the key.
    #[error("{0}")]
    Config(&'static str),
    /// No etcd endpoint accepted a connection within `etcd.timeout`.
    #[error("etcd connect: {0}")]
    EtcdConnect(#[source] etcd_client::Error),
    /// An etcd call (`op`: lease grant, put, watch, ...) failed on a live connection.
    #[error("etcd {op}: {source}")]
    EtcdRequest {
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    /// etcd no longer knows the node's lease (restarted without its data, or the node
    /// was away past the TTL): the registration starts over with a new lease.
    #[error("lease keep alive error: lease expired")]
    LeaseExpired,
    /// etcd ended or cancelled the watch of the node prefix.
    #[error("watch error: watch stream ended")]
    WatchEnded,
}

impl Error {
    /// Wraps an etcd call's error, naming the call.
    pub(crate) fn request(op: &'static str) -> impl FnOnce(etcd_client::Error) -> Error {
        move |source| Error::EtcdRequest { op, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
