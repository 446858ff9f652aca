//! TLS, behind the `tls` Cargo feature: rustls (with its `ring` provider)
//! through futures-rustls, so it wraps any futures-io stream on any
//! executor. The connection loop never knows: the stream is wrapped before
//! wsloop's own HTTP/WebSocket handshake.

pub mod client;
pub mod server;
