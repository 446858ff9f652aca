//! The benchmark's fan-out server: the `wsloop server` of `bench/run`
//! (the seed's reply to every request, the protective limits lifted), plus
//! one bench-only trigger: a request whose command is `fanout` makes the
//! server [`Hub::broadcast`] one message to every connected client.
//!
//! ```text
//! cargo run --release --example fanout_server -- --address 127.0.0.1:9002
//! cargo run --release --example loadgen -- idle -a 127.0.0.1:9002 -c 1000 --fanout 20
//! ```
//!
//! It exists for `bench/run` and `examples/loadgen.rs`'s `--fanout` only;
//! the product has no such endpoint (anyone could make a server flood its
//! clients). What to watch for: the broadcast message carries `requestID` 0
//! and the command `fanout`, which is how the generator tells it from the
//! trigger's own reply. Its first line is `listening on ADDR`, like the
//! other server examples.

use std::sync::Arc;

use smol::Executor;
use wsloop::{AccessPolicy, Config, Hub, Message, Peer, Server};

/// The command that asks for a broadcast, and the command it carries.
const FANOUT: &str = "fanout";

/// The seed's reply to every request; `fanout` broadcasts first.
struct Fanout {
    hub: Arc<Hub>,
}

impl wsloop::Handler for Fanout {
    async fn on_message(&self, _: &Peer, request: Message) -> Option<Message> {
        if request.command == FANOUT {
            let reached = self.hub.broadcast(&Message::request(0, FANOUT));
            log::debug!("fan-out to {reached} clients");
        }
        Some(request.seed_reply())
    }
}

fn main() -> Result<(), wsloop::Error> {
    let mut address = "127.0.0.1:9002".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--address", Some(value)) => address = value,
            _ => {
                eprintln!("usage: fanout_server [--address HOST:PORT]");
                std::process::exit(2);
            }
        }
    }
    // The benchmark's own load would trip the per-connection rate limits.
    let config = Config::default()
        .with_max_messages_per_second(0)
        .with_max_frames_per_second(0)
        .with_max_bytes_per_second(0);
    let access = AccessPolicy::default()
        .with_max_connections(0)
        .with_max_connections_per_ip(0);
    let _ = wsloop::raise_file_limit();
    let ex = Arc::new(Executor::new());
    smol::block_on(ex.run(async {
        let server = Server::bind(&address, config).await?.with_access(access);
        println!("listening on {}", server.local_addr()?);
        let handler = Fanout { hub: server.hub() };
        server.run(&ex, handler, future_never()).await
    }))
}

/// Runs until the process is killed (the script stops it by PID).
async fn future_never() {
    std::future::pending::<()>().await
}
