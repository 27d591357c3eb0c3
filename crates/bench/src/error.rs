//! What can stop a bench run.

use std::time::Duration;

use pushcenter_stomp::{DecodeError, EncodeError};

/// A bench failure. The texts are those the run prints on stderr.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket, pipe or child process call failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The server sent bytes the STOMP codec cannot read.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A frame the scenario built cannot be written.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The Kafka producer of `--publish kafka` could not be created.
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A child's share or report line that is not the JSON expected.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// The server's WebSocket stream is broken (reserved bits, a frame too large).
    #[error("{0}")]
    WebSocket(&'static str),
    /// A STOMP frame the fan-out scanner cannot delimit.
    #[error("{0}")]
    Stomp(&'static str),
    /// A target or publish URL the bench cannot use.
    #[error("{0}")]
    Url(&'static str),
    /// A child process of `connections` did not take or report its share.
    #[error("{0}")]
    Child(&'static str),
    /// A connection's handshake, CONNECT and SUBSCRIBE got no answer in time.
    #[error("no answer in {0:?}")]
    Timeout(Duration),
    /// The run's handshake gate was closed under a waiting connection.
    #[error("the connection gate closed")]
    GateClosed(#[from] tokio::sync::AcquireError),
    /// The options ask for what this run cannot do.
    #[error("{0}")]
    Options(&'static str),
    /// A task of the run panicked or was cancelled.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
    /// The server did not do what the scenario expects: a refused handshake, an ERROR
    /// or unexpected frame, a close, an HTTP status.
    #[error("{0}")]
    Protocol(String),
    /// The plot could not be drawn.
    #[error("plot: {0}")]
    Plot(String),
    /// One of the others, with the address it happened on: a bare "Connection
    /// refused" does not say which of the run's URLs is wrong.
    #[error("{addr}: {error}")]
    At { addr: String, error: Box<Error> },
}

impl Error {
    /// This error, naming `addr` (once: an error that names one already keeps it).
    pub(crate) fn at(self, addr: &str) -> Error {
        match self {
            Error::At { .. } => self,
            error => Error::At {
                addr: addr.to_owned(),
                error: Box::new(error),
            },
        }
    }
}

/// `.at(addr)` on results, for [`Error::at`].
pub(crate) trait At<T> {
    fn at(self, addr: &str) -> Result<T>;
}

impl<T, E: Into<Error>> At<T> for std::result::Result<T, E> {
    fn at(self, addr: &str) -> Result<T> {
        self.map_err(|e| e.into().at(addr))
    }
}

impl From<&str> for Error {
    fn from(complaint: &str) -> Error {
        Error::Protocol(complaint.to_owned())
    }
}

impl From<String> for Error {
    fn from(complaint: String) -> Error {
        Error::Protocol(complaint)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_form_complaints_are_protocol_errors_and_keep_their_text() {
        let e = Error::from("bad HTTP status line");
        assert!(matches!(&e, Error::Protocol(_)), "{e:?}");
        assert_eq!(e.to_string(), "bad HTTP status line");
        let e = Error::from(format!("expected {}, got {}", "RECEIPT", "ERROR"));
        assert_eq!(e.to_string(), "expected RECEIPT, got ERROR");
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::from(io);
        assert!(matches!(&e, Error::Io(_)), "{e:?}");
        assert_eq!(e.to_string(), "refused");
        assert_eq!(
            Error::Timeout(Duration::from_secs(30)).to_string(),
            "no answer in 30s"
        );
    }

    #[test]
    fn an_error_names_its_address_once() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Err::<(), _>(refused).at("ws://127.0.0.1:9/ws").unwrap_err();
        assert_eq!(e.to_string(), "ws://127.0.0.1:9/ws: refused");
        assert_eq!(
            e.at("http://other").to_string(),
            "ws://127.0.0.1:9/ws: refused"
        );
    }
}
