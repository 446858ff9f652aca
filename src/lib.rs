//! # wsloop — persistent WebSocket messaging
//!
//! A classic bug: a WebSocket handler that returns after one message closes
//! the connection, and the peer's next read fails with EOF. The fix is the
//! *persistent loop*: one task per connection that keeps receiving and
//! sending until the peer closes. wsloop is that loop, plus a server and a
//! client around it, speaking the JSON protocol of the original Go program.
//!
//! ```text
//!                        one task per connection (Connection::run)
//!                  ┌──────────────────────────────────────────────────┐
//!  peer ──frames──▶│ inbound frame ─▶ decode ─▶ Handler ─▶ reply ─────┼──▶ peer
//!                  │                                                  │
//!  any task ──────▶│ Peer::send ─▶ encode ─▶ outbound queue ──────────┼──▶ peer
//!                  │                                                  │
//!                  │ heartbeat timer ─▶ ping quiet peer / drop silent │
//!                  │                                                  │
//!                  │ ends on: Close frame · EOF · Peer::close ·       │
//!                  │          idle timeout · socket error             │
//!                  │ then: TCP shutdown (the Go `defer ws.Close()`)   │
//!                  └──────────────────────────────────────────────────┘
//! ```
//!
//! The layers, one folder each under `src/` and one file per concern, data
//! flowing top to bottom:
//!
//! - `wire/` — the wire format ([`Message`]); `codec`, JSON to and from it;
//!   `json_check`, the small codec's strict check; `protocol`, the
//!   [`Protocol`] trait the layers below are generic over ([`Seed`] by
//!   default; [`Json<T>`](Json) for your own serde types).
//! - `connection/` — the loop above ([`Connection`]: heartbeat, batching,
//!   close), generic over any `futures-io` stream; `handler` ([`Handler`]),
//!   `peer` ([`Peer`]), `session` (outbound queue, reply routing), `guard`
//!   (the read guard under tungstenite).
//! - [`http`] — `request` and `response` heads; `forwarded` (feature
//!   `trusted-proxy`) finds the client behind a proxy; `access` checks
//!   origin, Host and token and admits connections; `handshake` is the
//!   WebSocket opening handshake, both sides; `static_files` serves `/`.
//! - [`server`] — accept, route, upgrade at `/server`, shut down cleanly;
//!   `hub` knows every live peer, [`metrics`] counts for `/metrics`,
//!   `fd_limit` raises the open-file limit.
//! - [`forwarder`] (feature `forwarder`) — named clients' durable command
//!   queues, records and delivery, and the operator API under `/api/`;
//!   with feature `redis`, the store in Redis (`redis`) and several nodes
//!   sharing it (`cluster`: registry, routing, cluster-wide views).
//! - `tls/` — rustls around the TCP stream, before the handshake (`wss://`),
//!   on both sides.
//! - [`client`] — dial `ws://`/`wss://` (through a proxy if need be), keep
//!   the connection up, and run the seed client's loop; with feature
//!   `exec`, the device that runs a program per command (`device`, `exec`)
//!   at most once (`record`).
//! - The binary is a package of its own (`cli/` in the repository: `cli`
//!   for arguments and `--help`, `logger` for how log lines are printed,
//!   `main`), so depending on this crate never compiles its argument
//!   parser or signal handling.
//!
//! Shared by all of them, at the top: `config` ([`Config`]), `error`
//! ([`Error`]), `time`, `tcp` and `log_safe`.
//!
//! Embedding a server in a smol application takes a few lines; the handler
//! is any closure from a request to an optional reply:
//!
//! ```no_run
//! use std::sync::Arc;
//! use wsloop::{Config, Message, Peer, Server};
//!
//! let ex = Arc::new(smol::Executor::new());
//! smol::block_on(ex.run(async {
//!     let server = Server::bind("127.0.0.1:8080", Config::default()).await?;
//!     let handler = |_: &Peer, request: Message| Some(request.seed_reply());
//!     server.run(&ex, handler, std::future::pending()).await
//! }))?;
//! # Ok::<(), wsloop::Error>(())
//! ```
//!
//! Your own message types instead of [`Message`]: implement [`Correlated`]
//! on a serde type and speak [`Json<T>`](Json) (`Server::speaking`, a
//! `Handler<Json<T>>`); `examples/typed_chat.rs` is a whole program.
//!
//! Nothing is spawned behind your back: functions that spawn tasks take a
//! [`Spawn`]er (a smol executor, or a closure such as
//! `|task| { tokio::spawn(task); }`), and the core ([`Connection`]) is a
//! plain future you can run on any executor. A single-threaded application
//! (smol's `LocalExecutor`, state in `Rc<RefCell<..>>`) serves a handler
//! that is not `Send` through [`Local`], a [`LocalHandler`]'s bridge.
#![deny(missing_docs)]
// The docs link to the items of every feature (`Json`, `NanoJson`,
// `forwarder`, the TLS and proxy options, `Metrics::render`); with some
// features off those links have nothing to point at. `--all-features`
// checks every link.
#![cfg_attr(
    not(all(
        feature = "serde",
        feature = "nanoserde",
        feature = "forwarder",
        feature = "tls",
        feature = "proxy",
        feature = "metrics"
    )),
    allow(rustdoc::broken_intra_doc_links)
)]

/// wsloop's own DEBUG lines (what `-v` adds: each message in and out,
/// closes, silent peers, unmatched replies): `log::debug!` with the
/// `debug-logs` feature, compiled out without it (each site costs the
/// small build about 250 B). Defined before the modules, which use it as
/// `debug!`.
#[cfg(feature = "debug-logs")]
macro_rules! debug {
    ($($arg:tt)+) => {
        log::debug!($($arg)+)
    };
}

/// Without `debug-logs`: nothing. The `if false` keeps the arguments
/// type-checked and used, so a build without the feature warns about
/// nothing the one with it would not.
#[cfg(not(feature = "debug-logs"))]
macro_rules! debug {
    ($($arg:tt)+) => {
        if false {
            log::debug!($($arg)+)
        }
    };
}

pub mod client;
mod config;
mod connection;
mod error;
#[cfg(feature = "forwarder")]
pub mod forwarder;
pub mod http;
mod local;
mod log_safe;
mod resolve;
pub mod server;
mod setters;
mod spawn;
mod tcp;
mod time;
#[cfg(feature = "tls")]
pub mod tls;
mod wire;

#[cfg(feature = "trusted-proxy")]
pub use http::forwarded;
pub use server::metrics;

pub use config::*;
pub use connection::session::{PendingReply, RequestError, SendError, Session, MAX_CLOSE_REASON};
pub use connection::{
    Connection, Ended, Handler, Peer, ReplyRoute, SeedHandler, CLOSE_GOING_AWAY,
    CLOSE_INVALID_DATA, CLOSE_NORMAL, CLOSE_POLICY, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG,
};
pub use error::Error;
pub use http::access::{
    AccessPolicy, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP, TOKEN_ENV,
};
pub use local::{Local, LocalHandler, LocalSpawner};
pub use metrics::Metrics;
pub use server::fd_limit::{raise_file_limit, FileLimit, RESERVED_FDS};
pub use server::hub::{Hub, HubStats};
pub use server::Server;
pub use spawn::{BoxTask, Spawn};
pub use tcp::Tcp;
pub use time::{parse_duration, timeout, Timeout};
pub use wire::codec::{decode, encode, DecodeError};
pub use wire::message::Message;
#[cfg(feature = "serde")]
pub use wire::protocol::Json;
#[cfg(feature = "nanoserde")]
pub use wire::protocol::NanoJson;
pub use wire::protocol::{Correlated, Protocol, Seed};

/// One WebSocket frame (tungstenite's message type), as seen by
/// [`Handler::on_frame`].
pub use async_tungstenite::tungstenite::Message as Frame;

/// Which side of a connection we play, as [`Connection::new`] takes it.
pub use async_tungstenite::tungstenite::protocol::Role;

/// The WebSocket protocol crate wsloop is built on, for callers that need
/// its types (for example to build a [`Connection`] from their own stream).
pub use async_tungstenite;
