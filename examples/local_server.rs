//! A single-threaded server: smol's `LocalExecutor`, and a handler whose
//! state is `Rc<RefCell<..>>` (not `Send`), served through the
//! `wsloop::Local` bridge.
//!
//! The application counts the requests each connection sent in a plain
//! `HashMap` behind a `RefCell`, and answers like the seed. Every task (the
//! accept loop, each connection, each handler call) runs on the one thread
//! that calls `block_on`.
//!
//! ```text
//! cargo run --release --example local_server -- --address 127.0.0.1:8080
//! cargo run --release --example loadgen -- throughput -a 127.0.0.1:8080 -c 32 -d 8 --duration 10s
//! ```
//!
//! `--plain` serves a `Send + Sync` handler instead (a closure, an atomic
//! counter), on the same executor and spawner: the bridge's cost is the
//! difference in round trips/s between the two runs (the README's
//! figure). Its first line is `listening on ADDR`; Ctrl-C stops the
//! server and prints the counts.

use std::cell::RefCell;
use std::collections::HashMap;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use smol::LocalExecutor;
use wsloop::{Config, Local, LocalSpawner, Message, Peer, Server};

/// Where the server listens unless told otherwise.
const DEFAULT_ADDRESS: &str = "127.0.0.1:8080";

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

/// The command line: `--address HOST:PORT` and `--plain`.
fn parse_args() -> Result<(String, bool), String> {
    let (mut address, mut plain) = (DEFAULT_ADDRESS.to_string(), false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--address" | "-a" => {
                address = args.next().ok_or("--address needs a value (HOST:PORT)")?;
            }
            "--plain" => plain = true,
            "--help" | "-h" => {
                return Err(format!(
                "usage: local_server [--address HOST:PORT] [--plain]   (default {DEFAULT_ADDRESS})"
            ))
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    Ok((address, plain))
}

fn main() -> ExitCode {
    let (address, plain) = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let ex = LocalExecutor::new();
    let result = smol::block_on(ex.run(async {
        // A benchmark target: a load generator floods on purpose, so the
        // per-peer flood limits (10,000 messages/s by default) are off.
        let config = Config::default()
            .with_max_messages_per_second(0)
            .with_max_frames_per_second(0)
            .with_max_bytes_per_second(0);
        let server = Server::bind(&address, config).await?;
        // The first line, as the other server examples' (tests read it).
        println!("listening on {}", server.local_addr()?);
        // The accept loop keeps its spawner: it must be shareable, which
        // the LocalExecutor is not; this one feeds it.
        let spawner = LocalSpawner::new(&ex);
        if plain {
            let answered = Arc::new(AtomicU64::new(0));
            let count = answered.clone();
            let handler = move |_: &Peer, request: Message| {
                count.fetch_add(1, Ordering::Relaxed);
                Some(request.seed_reply())
            };
            server.run(&spawner, handler, shutdown_signal()).await?;
            println!("answered {}", answered.load(Ordering::Relaxed));
        } else {
            // Single-threaded state: no lock, no atomics.
            let counts = Rc::new(RefCell::new(HashMap::<u64, u64>::new()));
            let state = counts.clone();
            let handler = move |peer: &Peer, request: Message| {
                *state.borrow_mut().entry(peer.id()).or_default() += 1;
                Some(request.seed_reply())
            };
            server
                .run(&spawner, Local::new(&ex, handler), shutdown_signal())
                .await?;
            println!("answered per connection {:?}", counts.borrow());
        }
        Ok::<(), wsloop::Error>(())
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("local server: {err}");
            ExitCode::FAILURE
        }
    }
}
