//! TLS, by rustls (ring), wrapped around the TCP stream before wsloop's own
//! HTTP/WebSocket handshake; the connection loop stays generic over any
//! futures-io stream.

#[cfg(feature = "tls")]
pub mod client;
