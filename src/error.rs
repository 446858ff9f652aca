//! The library's error type. A peer closing the connection (Close frame or
//! EOF) is not an error: see [`Ended`](crate::Ended).

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
    /// The HTTP/WebSocket handshake was refused or malformed.
    Handshake(String),
    /// An operation did not finish in time; says which.
    Timeout(&'static str),
    /// A [`Config`](crate::Config) or option value is invalid.
    Config(String),
    /// The peer broke a limit (for example the message rate) and was closed
    /// with 1008; says which.
    Policy(String),
    /// The connection ended while the caller still expected data; says how.
    ConnectionClosed(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "i/o error: {e}"),
            Error::WebSocket(e) => write!(f, "websocket error: {e}"),
            Error::Handshake(why) => write!(f, "handshake failed: {why}"),
            Error::Timeout(what) => write!(f, "timed out: {what}"),
            Error::Config(why) => write!(f, "invalid configuration: {why}"),
            Error::Policy(why) => write!(f, "policy violation: {why}"),
            Error::ConnectionClosed(how) => write!(f, "connection ended unexpectedly: {how}"),
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
