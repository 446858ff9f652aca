//! TLS, behind the `tls` Cargo feature: rustls (with its `ring` provider),
//! wrapping any futures-io stream on any executor. The client goes through
//! futures-rustls; the server through wsloop's own stream over rustls's
//! unbuffered API (`src/tls/stream.rs`), whose buffers are freed while a
//! connection is idle. The connection loop never knows: the stream is wrapped before
//! wsloop's own HTTP/WebSocket handshake.

pub mod client;
pub mod server;
pub(crate) mod stream;
