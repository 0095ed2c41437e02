//! [`Error`]: everything a call or a connection attempt can fail with.

use trine_protocol::ErrorBody;

/// Failure of a [`Worker`](crate::Worker) operation.
///
/// Only [`Error::Remote`] comes from the engine (or from the worker that ran the function); every
/// other variant is decided on this side of the socket.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The engine answered with an error body (passed through unchanged: `code`, `message`,
    /// `stacktrace`).
    #[error("remote error {0}")]
    Remote(ErrorBody),
    /// No answer arrived within the call's timeout (client-side timer, default 30 s).
    #[error("invocation timed out")]
    Timeout,
    /// The connection the call was sent on dropped before the answer arrived. The call is not
    /// re-sent: the engine may or may not have run it.
    #[error("connection to the engine lost before the call completed")]
    Disconnected,
    /// The connection's outbound queue is full: the engine (or the network) is not keeping up.
    /// Nothing was sent; retrying later is safe.
    #[error("outbound queue is full")]
    Overloaded,
    /// The first connection could not be established within `connect_timeout`, or the URL is
    /// invalid.
    #[error("could not connect to the engine: {0}")]
    Connect(String),
    /// [`Worker::shutdown`](crate::Worker::shutdown) was called (or every handle was dropped).
    #[error("worker is shut down")]
    Shutdown,
}

impl Error {
    /// A stable code for logs and metrics: the remote body's `code`, or `TIMEOUT`, `DISCONNECTED`,
    /// `OVERLOADED`, `CONNECT`, `SHUTDOWN` for client-side failures (the first matches the other
    /// SDKs' client-side timeout code).
    pub fn code(&self) -> &str {
        match self {
            Error::Remote(body) => &body.code,
            Error::Timeout => "TIMEOUT",
            Error::Disconnected => "DISCONNECTED",
            Error::Overloaded => "OVERLOADED",
            Error::Connect(_) => "CONNECT",
            Error::Shutdown => "SHUTDOWN",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        let remote = Error::Remote(ErrorBody::new("function_not_found", "nope"));
        assert_eq!(remote.code(), "function_not_found");
        assert_eq!(remote.to_string(), "remote error function_not_found: nope");
        assert_eq!(Error::Timeout.code(), "TIMEOUT");
        assert_eq!(Error::Overloaded.code(), "OVERLOADED");
    }
}
