//! The library's error type. A peer closing the connection (Close frame or
//! EOF) is not an error: see [`Ended`](crate::Ended).
//!
//! [`Error::is_transient`] sorts the errors for a reconnecting client: a
//! server that is down or restarting may answer next time; a refusal (a
//! 401, a certificate that fails verification) will not, however often it
//! is asked.

use std::{fmt, io};

use async_tungstenite::tungstenite;

/// What went wrong in wsloop.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A socket operation failed.
    Io(io::Error),
    /// The WebSocket protocol failed (bad frame, oversized message, ...).
    WebSocket(tungstenite::Error),
    /// The HTTP/WebSocket handshake was malformed (the answer was not a
    /// valid `101`, or not HTTP at all).
    Handshake(String),
    /// The server, or the proxy on the way, answered the upgrade (or the
    /// `CONNECT`) with an HTTP status other than success.
    Refused {
        /// The HTTP status, e.g. `401`, `403`, `404`, `503`.
        status: u16,
        /// Who answered what: `the server answered 401 Unauthorized:
        /// missing or wrong token` (with the first line of the body).
        reason: String,
    },
    /// TLS failed: most often the server's certificate did not verify
    /// (unknown issuer, expired, not valid for the host name).
    Tls(String),
    /// An operation did not finish in time; says which.
    Timeout(&'static str),
    /// A [`Config`](crate::Config) or option value is invalid.
    Config(String),
    /// The peer broke a limit (for example the message rate) and was closed
    /// with 1008; says which.
    Policy(String),
    /// The peer broke the WebSocket protocol where wsloop's read guard
    /// checks it, before tungstenite (a 64-bit frame length with its top
    /// bit set, RFC 6455 §5.2), and was closed with 1002; says how. The
    /// faults tungstenite finds are [`WebSocket`](Error::WebSocket) errors.
    ProtocolViolation(&'static str),
    /// The connection ended while the caller still expected data; says how.
    ConnectionClosed(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "i/o error: {e}"),
            Error::WebSocket(e) => write!(f, "websocket error: {e}"),
            Error::Handshake(why) => write!(f, "handshake failed: {why}"),
            Error::Refused { reason, .. } => write!(f, "refused: {reason}"),
            Error::Tls(why) => write!(f, "TLS failed: {why}"),
            Error::Timeout(what) => write!(f, "timed out: {what}"),
            Error::Config(why) => write!(f, "invalid configuration: {why}"),
            Error::Policy(why) => write!(f, "policy violation: {why}"),
            Error::ProtocolViolation(how) => write!(f, "protocol violation: {how}"),
            Error::ConnectionClosed(how) => write!(f, "connection ended unexpectedly: {how}"),
        }
    }
}

impl Error {
    /// Whether trying again later may succeed: the server was unreachable,
    /// timed out, dropped the connection, or answered a status that says
    /// "later" (408, 429, 5xx, e.g. a 503 past its connection limit or a
    /// proxy's 502). False for a refusal that will stand (401, 403, 404 and
    /// every other status), a TLS failure (a certificate that does not
    /// verify will not start to), and invalid configuration.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Refused { status, .. } => matches!(status, 408 | 429 | 500..=599),
            Error::Tls(_) | Error::Config(_) => false,
            // A malformed answer is most likely something restarting (or a
            // proxy in between); retrying is bounded by the reconnect policy.
            Error::Io(_)
            | Error::WebSocket(_)
            | Error::Handshake(_)
            | Error::Timeout(_)
            | Error::Policy(_)
            | Error::ProtocolViolation(_)
            | Error::ConnectionClosed(_) => true,
        }
    }

    /// The HTTP status of a [`Refused`](Error::Refused) handshake.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::WebSocket(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<tungstenite::Error> for Error {
    fn from(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::Io(e) => Error::Io(e),
            other => Error::WebSocket(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16) -> Error {
        Error::Refused {
            status,
            reason: format!("the server answered {status}"),
        }
    }

    #[test]
    fn refusals_stand_but_later_statuses_and_io_do_not() {
        for status in [400, 401, 403, 404, 407, 426, 200, 302] {
            assert!(!refused(status).is_transient(), "{status}");
            assert_eq!(refused(status).status(), Some(status));
        }
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(refused(status).is_transient(), "{status}");
        }
        assert!(!Error::Tls("invalid peer certificate: UnknownIssuer".into()).is_transient());
        assert!(!Error::Config("bad".into()).is_transient());
        let refused_io = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(Error::Io(refused_io).is_transient());
        assert!(Error::Timeout("connecting to the server").is_transient());
        assert_eq!(Error::Timeout("x").status(), None);
    }
}
