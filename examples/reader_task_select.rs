//! # The client pattern: a reader task, a channel and a select loop
//!
//! What it shows: how a client sends on a timer and receives at the same
//! time on one connection, as the article's Go client does:
//!
//! ```go
//! go readClientMessages(ws, incomingMessages)   // the reader goroutine
//! for {
//!     select {
//!     case <-time.After(2 * time.Second):      // time to send a request
//!         websocket.JSON.Send(ws, request)
//!     case message := <-incomingMessages:       // a reply arrived
//!         fmt.Printf("Received from server: %+v\n", message)
//!     }
//! }
//! ```
//!
//! In Rust: the WebSocket is split into a receiving half, owned by a reader
//! task that forwards every message into an `async_channel`, and a sending
//! half, owned by the select loop. The select loop waits for whichever comes
//! first — the timer or the channel — with `futures_lite::future::or`.
//! The reader task is the only reader, the select loop the only writer, and
//! neither ever blocks the other.
//!
//! wsloop's `client::run` is this same loop, with wsloop's `Connection::run`
//! as the reader task (an `async_channel::Sender<Message>` is a `Handler`).
//!
//! How to run it:
//!
//! ```sh
//! # Self-contained demo: starts a wsloop server in-process, then exits.
//! cargo run --example reader_task_select
//!
//! # Or talk to a server that is already running:
//! cargo run -- server --address 127.0.0.1:8080
//! cargo run --example reader_task_select -- --address 127.0.0.1:8080
//! ```
//!
//! What to watch for: "tick" lines (the select loop sends) interleave with
//! "reader task" lines (a reply went into the channel) and "channel" lines
//! (the select loop took it out). The demo exits with status 0 when all
//! replies came through the channel and matched their requests.

use std::time::{Duration, Instant};

use async_channel::Sender;
use async_io::Timer;
use async_tungstenite::tungstenite::Message as Frame;
use async_tungstenite::{client_async, WebSocketReceiver};
use futures_lite::{future, StreamExt};
use smol::net::TcpStream;
use wsloop::{decode, encode, Config, Message, Peer, Server};

/// Time between requests: the Go client's `time.After(2 s)`, shortened so
/// the demo finishes quickly.
const REQUEST_INTERVAL: Duration = Duration::from_millis(200);

/// How many requests the client sends before it says goodbye.
const REQUESTS: i64 = 5;

/// Messages the channel holds. When the select loop falls behind, the reader
/// task waits, stops reading, and TCP slows the server down: a bounded
/// channel is back-pressure for free.
const INCOMING_QUEUE: usize = 16;

/// If the server stays silent this long, something is wrong: give up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

fn main() {
    let outcome = match address_argument() {
        // Client only, against a running server.
        Some(address) => smol::block_on(run_client(&address)),
        // Demo: a wsloop server in-process, and the client against it.
        None => demo(),
    };
    match outcome {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(err) => {
            eprintln!("error: {err}");
            std::process::exit(2);
        }
    }
}

/// `--address HOST:PORT` selects the client-only mode.
fn address_argument() -> Option<String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => None,
        [flag, address] if flag == "--address" => Some(address.clone()),
        _ => {
            eprintln!("usage: reader_task_select [--address HOST:PORT]");
            std::process::exit(2);
        }
    }
}

/// What woke the select loop.
enum Event {
    /// The timer fired: time to send the next request.
    Tick,
    /// The reader task forwarded a message; `None` means it has ended.
    Incoming(Option<Message>),
}

/// Connects, then runs the select loop until every request is answered.
/// `Ok(true)` when all replies matched their requests.
async fn run_client(address: &str) -> Result<bool, wsloop::Error> {
    let stream = TcpStream::connect(address).await?;
    let (ws, _) = client_async(format!("ws://{address}/server"), stream).await?;
    println!("connected to {address}");

    // One half to each task: the reader task only reads, we only write.
    let (mut sender, receiver) = ws.split();

    // Go: `go readClientMessages(ws, incomingMessages)`.
    let (incoming_tx, incoming) = async_channel::bounded(INCOMING_QUEUE);
    let reader = smol::spawn(read_messages(receiver, incoming_tx));

    // Go: `time.After(2 s)` in the select; an interval timer ticks forever.
    let mut ticker = Timer::interval(REQUEST_INTERVAL);
    let mut sent = 0;
    let mut matched = 0;
    let mut last_heard = Instant::now();

    while matched < REQUESTS {
        // Go: `select { ... }`. Both futures are safe to drop unfinished:
        // a tick or a message not taken now is still there next turn.
        let event = future::or(
            async { Event::Incoming(incoming.recv().await.ok()) },
            async {
                ticker.next().await;
                Event::Tick
            },
        )
        .await;

        match event {
            // The timer doubles as our watchdog.
            Event::Tick if last_heard.elapsed() > REPLY_TIMEOUT => {
                println!("no reply for {REPLY_TIMEOUT:?}; giving up");
                break;
            }
            Event::Tick if sent < REQUESTS => {
                sent += 1;
                println!("tick: sending request {sent}");
                let request = Message::request(sent, format!("Eject the hot dog {sent}."));
                sender.send(Frame::text(encode(&request))).await?;
            }
            // Every request is out; now we only wait for replies.
            Event::Tick => {}
            Event::Incoming(Some(reply)) => {
                last_heard = Instant::now();
                println!(
                    "channel: reply {} ({})",
                    reply.request_id, reply.some_other_thing
                );
                if reply.success && (1..=sent).contains(&reply.request_id) {
                    matched += 1;
                }
            }
            Event::Incoming(None) => {
                println!("channel closed: the reader task ended, so the connection is gone");
                break;
            }
        }
    }
    println!("{matched} of {REQUESTS} replies came through the channel and matched");

    // Goodbye: send a Close frame. The server answers with its own Close,
    // the reader task sees the stream end and returns.
    let _ = sender.close(None).await;
    let _ = wsloop::timeout(REPLY_TIMEOUT, reader).await;
    Ok(matched == REQUESTS)
}

/// The reader task (Go's `readClientMessages`): receive in a loop, forward
/// each message into the channel, stop when the connection ends.
async fn read_messages(mut receiver: WebSocketReceiver<TcpStream>, incoming: Sender<Message>) {
    while let Some(frame) = receiver.next().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(err) => {
                println!("reader task: error receiving message from server: {err}");
                break;
            }
        };
        // Pings are answered by tungstenite; only data frames are messages.
        if !(frame.is_text() || frame.is_binary()) {
            continue;
        }
        match decode(&frame.into_data()) {
            Ok(message) => {
                println!("reader task: got reply {} -> channel", message.request_id);
                // Waits while the channel is full; fails if nobody listens.
                if incoming.send(message).await.is_err() {
                    break;
                }
            }
            Err(err) => println!("reader task: malformed message: {err}"),
        }
    }
    // Returning drops `incoming`, which closes the channel: the select loop
    // sees `None` and knows the connection is gone.
}

/// Demo mode: a wsloop server on a free port, with the article's handler,
/// runs until the client is done.
fn demo() -> Result<bool, wsloop::Error> {
    let ex = std::sync::Arc::new(smol::Executor::new());
    smol::block_on(ex.run(async {
        let server = Server::bind("127.0.0.1:0", Config::default()).await?;
        let address = server.local_addr()?.to_string();
        println!("wsloop server listening on {address}");

        let handler = |_: &Peer, request: Message| Some(request.seed_reply());
        // The server stops when the client is done (the channel closes).
        let (done, stop) = async_channel::bounded::<()>(1);
        let shutdown = async move {
            let _ = stop.recv().await;
        };
        let talk = async move {
            let outcome = run_client(&address).await;
            drop(done);
            outcome
        };
        // Run the server and the client side by side until both are done.
        let (served, outcome) = future::zip(server.run(&ex, handler, shutdown), talk).await;
        served?;
        outcome
    }))
}
