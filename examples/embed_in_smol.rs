//! Embedding wsloop in an existing smol application.
//!
//! The "application" here owns its executor and already runs a task of its
//! own (a clock that ticks every few seconds). It mounts a wsloop server on
//! the same executor and, whenever a client connects, pushes it a welcome
//! command and prints the client's reply — the server-push pattern of the
//! original article's command forwarder.
//!
//! Run it, then connect a client in another terminal:
//!
//! ```text
//! cargo run --example embed_in_smol -- --address 127.0.0.1:8080
//! cargo run -- client --address 127.0.0.1:8080
//! ```
//!
//! What to watch for: the application's own ticks keep going while clients
//! come and go (nothing blocks the shared executor), each client answers
//! the pushed command with "Command 'Welcome, client N!' processed
//! successfully.", and Ctrl-C stops everything cleanly. With `--once` the
//! example connects a client to itself, checks that round trip, and exits.

use std::sync::Arc;
use std::time::Duration;

use smol::{Executor, Timer};
use wsloop::client::{Client, ClientOptions};
use wsloop::{Config, Message, Peer, Server};

/// How often the application's own task ticks.
const TICK: Duration = Duration::from_secs(5);

/// The wsloop handler this application mounts: the seed's reply to every
/// request, plus a push to every new client.
struct App {
    /// The application's executor, for the per-client push tasks.
    ex: Arc<Executor<'static>>,
}

impl wsloop::Handler for App {
    async fn on_message(&self, _: &Peer, request: Message) -> Option<Message> {
        Some(request.seed_reply())
    }

    fn on_connect(&self, peer: &Peer) {
        // Push from a task of our own: the connection's loop must not wait.
        let peer = peer.clone();
        self.ex
            .spawn(async move {
                let command = format!("Welcome, client {}!", peer.id());
                match peer.request(command).await {
                    Ok(reply) => {
                        println!("client {} answered: {}", peer.id(), reply.some_other_thing)
                    }
                    Err(err) => println!("client {} did not answer: {err}", peer.id()),
                }
            })
            .detach();
    }
}

/// Connects a client that answers pushes like the Go client, sends one
/// request, and prints what came back.
async fn self_check(ex: &Executor<'static>, address: &str) {
    let answer = |_: &Peer, pushed: Message| Some(pushed.seed_reply());
    match Client::connect(ex, ClientOptions::new(address), answer).await {
        Ok(client) => {
            let reply = client.request("Eject the hot dog 1.").await;
            println!("reply: {reply:?}");
            let _ = client.close().await;
        }
        Err(err) => println!("self-check could not connect: {err}"),
    }
}

fn main() -> Result<(), wsloop::Error> {
    let mut args = std::env::args().skip(1);
    let mut address = "127.0.0.1:8080".to_string();
    let mut once = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--address" => address = args.next().unwrap_or(address),
            "--once" => once = true,
            other => eprintln!("ignoring unknown argument {other:?}"),
        }
    }

    // The application's executor: wsloop spawns onto it, never elsewhere.
    let ex = Arc::new(Executor::new());
    smol::block_on(ex.run(async {
        // The application's own work, already running before wsloop.
        ex.spawn(async {
            loop {
                Timer::after(TICK).await;
                println!("app: tick");
            }
        })
        .detach();

        // Mount the server on the same executor.
        let server = Server::bind(&address, Config::default()).await?;
        let addr = server.local_addr()?;
        println!("listening on ws://{addr}/server");
        let app = App { ex: ex.clone() };

        // The server runs until its shutdown future completes: Ctrl-C for
        // a real application, or the self-check with `--once`.
        let shutdown = async {
            if once {
                self_check(&ex, &addr.to_string()).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        server.run(&ex, app, shutdown).await
    }))
}
