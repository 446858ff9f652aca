//! HTTP/1.1 for the one port, and everything decided there before the
//! WebSocket loop starts, each in its own file, in the order a request meets
//! them:
//!
//! - `request` — reading and parsing request and response heads;
//! - `forwarded` (feature `trusted-proxy`) — the client behind a trusted proxy;
//! - `access` — the origin, Host and token checks, and connection admission;
//! - `handshake` — the WebSocket opening handshake, both sides;
//! - `static_files` — a directory or the built-in page at `/`;
//! - `body` (feature `forwarder`) — a request's body, by Content-Length,
//!   bounded in size (the operator API's JSON);
//! - `response` — writing responses and errors, bounded in time.
//!
//! Every response closes the connection, so there is no keep-alive or
//! pipelining to get wrong: one request head in, one response out.

pub(crate) mod access;
#[cfg(feature = "forwarder")]
pub(crate) mod body;
#[cfg(feature = "trusted-proxy")]
pub mod forwarded;
pub(crate) mod handshake;
mod request;
mod response;
mod static_files;

pub(crate) use request::percent_decode;
pub use request::{read_request_head, read_response_head, HeadError, Request, Response};
pub use response::{reason_phrase, write_error, write_response, WriteTimeout};
#[cfg(feature = "static-files")]
pub use static_files::content_type;
pub use static_files::{StaticFiles, BUILTIN_PAGE};
