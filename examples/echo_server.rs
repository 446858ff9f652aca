//! An echo server on wsloop's own [`Server`] and connection loop: every text
//! and binary message comes back unchanged, at any path. It is the testee for
//! the Autobahn|Testsuite (`scripts/autobahn`), which checks the protocol
//! handling of the loop — framing, fragmentation, pings, UTF-8 validation,
//! close handshake, large messages — rather than wsloop's JSON protocol.
//!
//! What it shows: overriding [`Handler::on_frame`] to speak something other
//! than the JSON protocol (keeping reply routing with [`Peer::route_reply`]),
//! accepting upgrades at any path with
//! [`Server::with_websocket_path`]`(None)`, and raising the message limit
//! through [`Config`].
//!
//! Run it:
//!
//! ```sh
//! cargo run --release --example echo_server -- --address 127.0.0.1:9001
//! ```
//!
//! and talk to it with any WebSocket client at `ws://127.0.0.1:9001/` (any
//! path). What to watch for: each message you send comes back byte for byte;
//! a quiet connection is pinged every 30 s and dropped after 60 s without any
//! frame from the peer; a message over 16 MiB is refused with close code
//! 1009, invalid UTF-8 in a text message with 1007, any other protocol
//! violation with 1002. Ctrl-C closes every connection with 1001 and exits.

use std::process::ExitCode;

use wsloop::{Config, Frame, Handler, Message, Peer, Server};

/// Where the example listens unless `--address` says otherwise.
const DEFAULT_ADDRESS: &str = "127.0.0.1:9001";

/// The suite sends messages of up to 16 MiB; wsloop's small default read
/// buffer (512 B, sized for idle connections) would read them in tiny
/// pieces, since tungstenite reads at most this much per syscall.
const READ_BUFFER_SIZE: usize = 64 * 1024;

/// Largest message accepted: the suite's biggest cases (9.1.6, 9.2.6) send
/// 16 MiB messages, so the default 1 MiB limit is raised to exactly that.
const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Sends every data frame straight back.
struct Echo;

impl Handler for Echo {
    /// Never called: `on_frame` below replaces the JSON decoding that would
    /// call it. Required by the trait, so it answers nothing.
    async fn on_message(&self, _peer: &Peer, _message: Message) -> Option<Message> {
        None
    }

    /// Called with each complete text or binary message (fragments already
    /// joined, text already checked to be UTF-8 by the protocol layer);
    /// returning it queues the same message back to the peer.
    async fn on_frame(&self, peer: &Peer, frame: Frame) -> Option<Frame> {
        // An override replaces the default's routing of replies too: a
        // handler that also sends requests (`peer.request(..)`) hands each
        // frame to `route_reply` first, which keeps the replies to them
        // (None) and gives everything else back. The echo sends none, so
        // this costs one atomic load; it is here to show the pattern.
        let frame = peer.route_reply(frame)?;
        Some(frame)
    }
}

/// Completes on the first SIGINT or SIGTERM (never, if they cannot be
/// watched: then only SIGKILL stops the example).
async fn shutdown_signal() {
    use async_signal::{Signal, Signals};
    use futures_lite::StreamExt;
    match Signals::new([Signal::Int, Signal::Term]) {
        Ok(mut signals) => {
            signals.next().await;
        }
        Err(err) => {
            eprintln!("cannot watch for signals ({err}); stop me with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}

/// The command line: `--address HOST:PORT` (or `--address=HOST:PORT`).
fn parse_args() -> Result<String, String> {
    let mut address = DEFAULT_ADDRESS.to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--address" | "-a" => {
                address = args.next().ok_or("--address needs a value (HOST:PORT)")?;
            }
            "--help" | "-h" => {
                return Err(format!(
                    "usage: echo_server [--address HOST:PORT]   (default {DEFAULT_ADDRESS})"
                ))
            }
            other => match other.strip_prefix("--address=") {
                Some(value) => address = value.to_string(),
                None => return Err(format!("unknown argument {other:?}; try --help")),
            },
        }
    }
    Ok(address)
}

fn main() -> ExitCode {
    let address = match parse_args() {
        Ok(address) => address,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let config = Config::default()
        .with_max_message_size(MAX_MESSAGE_SIZE)
        .with_read_buffer_size(READ_BUFFER_SIZE)
        // The suite floods on purpose (16 MiB messages, 64-byte fragments
        // by the thousand): the per-peer abuse limits are off here.
        .with_max_bytes_per_second(0)
        .with_max_frames_per_second(0)
        .with_max_fragments(0);

    let ex = std::sync::Arc::new(smol::Executor::new());
    let result = smol::block_on(ex.run(async {
        let server = Server::bind(&address, config)
            .await?
            // Upgrade at any path: the suite dials `/runCase?...`-style URLs.
            .with_websocket_path(None);
        println!("echo server listening on ws://{}/", server.local_addr()?);
        // Stop on the first Ctrl-C (or SIGTERM): Server::run then closes
        // every connection with 1001 before it returns.
        server.run(&ex, Echo, shutdown_signal()).await
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("echo server: {err}");
            ExitCode::FAILURE
        }
    }
}
