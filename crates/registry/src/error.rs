//! What can go wrong in the registry crate.

use std::path::PathBuf;

/// A registry failure: a config that does not hold together, or etcd not answering.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `[etcd]` section is unusable; the text names the key.
    #[error("{0}")]
    Config(&'static str),
    /// A file the `[etcd]` section names (`etcd.<key>`) cannot be used.
    #[error("etcd.{key}: {}: {reason}", path.display())]
    File {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// No etcd endpoint accepted a connection within `etcd.timeout`.
    #[error("etcd connect: {}", describe(.0))]
    EtcdConnect(#[source] etcd_client::Error),
    /// An etcd call (`op`: lease grant, put, watch, ...) failed on a live connection.
    #[error("etcd {op}: {}", describe(.source))]
    EtcdRequest {
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    /// etcd no longer knows the node's lease (restarted without its data, or the node
    /// was away past the TTL): the registration starts over with a new lease.
    #[error("lease keep alive error: lease expired")]
    LeaseExpired,
    /// etcd ended the watch of the node prefix.
    #[error("watch error: watch stream ended")]
    WatchEnded,
    /// etcd cancelled the watch of the node prefix, saying why.
    #[error("watch cancelled by etcd: {0}")]
    WatchCanceled(String),
}

impl Error {
    /// Wraps an etcd call's error, naming the call.
    pub(crate) fn request(op: &'static str) -> impl FnOnce(etcd_client::Error) -> Error {
        move |source| Error::EtcdRequest { op, source }
    }

    /// Why etcd (or its TLS layer) refused this client's credentials, when it did: a
    /// wrong user or password, a missing permission, a server certificate not trusted,
    /// a client certificate refused or missing. Retrying does not help until the
    /// configuration (or etcd's) changes; an unreachable etcd is not a refusal.
    pub fn refusal(&self) -> Option<String> {
        let source = match self {
            Error::EtcdConnect(source) | Error::EtcdRequest { source, .. } => source,
            Error::WatchCanceled(why) if why.contains("permission denied") => {
                return Some(why.clone());
            }
            _ => return None,
        };
        let etcd_client::Error::GRpcStatus(status) = source else {
            return None;
        };
        use grpc_code::*;
        match i32::from(status.code()) {
            // An expired token that could not be renewed in the call: the next session
            // authenticates afresh, and a wrong password shows there.
            UNAUTHENTICATED if status.message().contains("invalid auth token") => None,
            UNAUTHENTICATED | PERMISSION_DENIED => Some(status.message().to_string()),
            INVALID_ARGUMENT | FAILED_PRECONDITION if status.message().contains("authentic") => {
                Some(status.message().to_string())
            }
            _ => {
                let why = describe(source);
                is_tls_refusal(&why).then(|| with_hint(why))
            }
        }
    }
}

/// The gRPC status codes etcd refuses credentials with (tonic's `Code` as numbers,
/// without a dependency on tonic).
mod grpc_code {
    pub(super) const INVALID_ARGUMENT: i32 = 3;
    pub(super) const PERMISSION_DENIED: i32 = 7;
    pub(super) const FAILED_PRECONDITION: i32 = 9;
    pub(super) const UNAUTHENTICATED: i32 = 16;
}

/// What to look at, for the TLS failures whose words do not say it.
fn with_hint(why: String) -> String {
    let hint = if ["BadCertificate", "CertificateRequired", "UnknownCA"]
        .iter()
        .any(|a| why.contains(a))
    {
        "etcd refused this client's certificate, or it sent none: check etcd.cert_file \
         and etcd.key_file against etcd's --trusted-ca-file"
    } else if why.contains("invalid peer certificate") {
        "etcd's server certificate is not trusted: check etcd.ca_file"
    } else {
        return why;
    };
    format!("{why} ({hint})")
}

/// A TLS failure, as rustls and the peer's alerts word it.
fn is_tls_refusal(why: &str) -> bool {
    let why = why.to_ascii_lowercase();
    ["certificate", "handshake", "received fatal alert", "tls"]
        .iter()
        .any(|w| why.contains(w))
}

/// An etcd-client error with its causes: a gRPC status says only "transport error",
/// the reason (a refused handshake, a connection refused) is further down the chain.
pub(crate) fn describe(e: &etcd_client::Error) -> String {
    use std::error::Error as _;
    let (mut out, mut cause) = match e {
        etcd_client::Error::GRpcStatus(s) => (s.message().to_string(), s.source()),
        other => (other.to_string(), other.source()),
    };
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
