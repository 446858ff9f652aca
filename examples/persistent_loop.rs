//! # The persistent loop: the fix for the one-shot bug
//!
//! What it shows: the smallest correct WebSocket server loop. One task per
//! connection keeps receiving and replying until the peer leaves. It reads
//! top to bottom like the article's Go `WSHandler`:
//!
//! ```go
//! func WSHandler(ws *websocket.Conn) {
//!     defer ws.Close()
//!     for {
//!         var message Message
//!         err := websocket.JSON.Receive(ws, &message)
//!         if err != nil { return }
//!         ...
//!         websocket.JSON.Send(ws, response)
//!     }
//! }
//! ```
//!
//! Here the `for {}` is `while let Some(frame) = ws.next().await`, and
//! `defer ws.Close()` is Rust's drop at the end of the function. The
//! difference from `examples/one_shot_bug.rs` is only *when* the function
//! returns: after the peer leaves, not after the first message.
//!
//! The demo then runs the same client against wsloop's own `Server` with a
//! one-line handler closure. That is this very loop (in `Connection::run`)
//! plus what a production loop also needs: heartbeat pings, an idle timeout,
//! a proper Close handshake, size limits and pushing from other tasks.
//!
//! How to run it:
//!
//! ```sh
//! # Self-contained demo: both servers, one client each, then exits.
//! cargo run --example persistent_loop
//!
//! # Or run only the hand-written loop, and point the real client at it:
//! cargo run --example persistent_loop -- --address 127.0.0.1:8080
//! cargo run -- client --address 127.0.0.1:8080 --interval 0.5 --count 5
//! ```
//!
//! What to watch for: every request on the single connection gets its
//! reply ("5 of 5 replies matched"), for both servers. The demo exits with
//! status 0 only if all replies matched.

use async_tungstenite::tungstenite::Message as Frame;
use async_tungstenite::{accept_async, client_async, WebSocketStream};
use futures_lite::{future, StreamExt};
use smol::net::{TcpListener, TcpStream};
use wsloop::{decode, encode, Config, Message, Peer, Server};

/// How many requests the demo client sends, all on ONE connection. The
/// one-shot server fails at the second; the loop answers them all.
const REQUESTS: i64 = 5;

fn main() {
    let outcome = match address_argument() {
        // Server only: serve until killed.
        Some(address) => smol::block_on(serve(&address)),
        // Demo: both servers, one client each.
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

/// `--address HOST:PORT` selects the server-only mode.
fn address_argument() -> Option<String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => None,
        [flag, address] if flag == "--address" => Some(address.clone()),
        _ => {
            eprintln!("usage: persistent_loop [--address HOST:PORT]");
            std::process::exit(2);
        }
    }
}

// ---------------------------------------------------------------------------
// Part 1: the loop, written by hand.
// ---------------------------------------------------------------------------

/// THE FIX. One task per connection; it returns only when the peer is gone.
async fn ws_handler(stream: TcpStream) {
    // The WebSocket handshake: the HTTP Upgrade request and the 101 reply.
    let mut ws = match accept_async(stream).await {
        Ok(ws) => ws,
        Err(err) => return println!("server: handshake failed: {err}"),
    };
    // Go's `defer ws.Close()`: `ws` is dropped when this function returns,
    // however it returns, and that closes the socket.
    println!("server: client connected");

    // Go's `for {}`: receive, reply, repeat. `None` means the peer closed.
    while let Some(frame) = ws.next().await {
        let frame = match frame {
            Ok(frame) => frame,
            // A broken connection: the only other reason to stop.
            Err(err) => {
                println!("server: error receiving message: {err}");
                break;
            }
        };
        // Pings and the Close handshake are answered by tungstenite inside
        // `next()`; only text and binary frames carry our messages.
        if !(frame.is_text() || frame.is_binary()) {
            continue;
        }
        // A malformed message gets an error reply; it is no reason to hang up.
        let reply = match decode(&frame.into_data()) {
            Ok(request) => request.seed_reply(),
            Err(err) => Message::error_reply(err.request_id.unwrap_or(0), err.to_string()),
        };
        if let Err(err) = ws.send(Frame::text(encode(&reply))).await {
            println!("server: error sending response: {err}");
            break;
        }
    }
    println!("server: client left, the handler returns");
}

/// Accepts TCP connections and gives each one its own task (on smol's
/// global executor), like Go's one goroutine per connection.
async fn accept_loop(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => smol::spawn(ws_handler(stream)).detach(),
            Err(err) => println!("server: accept failed: {err}"),
        }
    }
}

/// Server-only mode: bind, say where, accept forever.
async fn serve(address: &str) -> Result<bool, wsloop::Error> {
    let listener = TcpListener::bind(address).await?;
    // The first line says where we listen (port 0 picks a free port).
    println!("listening on {}", listener.local_addr()?);
    accept_loop(listener).await;
    Ok(true)
}

// ---------------------------------------------------------------------------
// Part 2: the same loop, as wsloop's Server runs it.
// ---------------------------------------------------------------------------

/// Runs wsloop's `Server` until `client` is done. Everything `ws_handler`
/// does is in there (`Connection::run`); we only say what to reply.
async fn with_wsloop_server(
    ex: &std::sync::Arc<smol::Executor<'static>>,
) -> Result<bool, wsloop::Error> {
    let server = Server::bind("127.0.0.1:0", Config::default()).await?;
    let address = server.local_addr()?.to_string();
    println!("wsloop server listening on {address}");

    // The handler: one request in, one reply out. The loop is not our job.
    let handler = |_: &Peer, request: Message| Some(request.seed_reply());
    // The server stops when the client is done (the channel closes).
    let (done, stop) = async_channel::bounded::<()>(1);
    let shutdown = async move {
        let _ = stop.recv().await;
    };
    let talk = async move {
        let all_matched = client(&address).await;
        drop(done);
        all_matched
    };
    // Run the server and the client side by side until both are done.
    let (served, all_matched) = future::zip(server.run(ex, handler, shutdown), talk).await;
    served?;
    Ok(all_matched?)
}

// ---------------------------------------------------------------------------
// The demo: one client, many requests, one connection.
// ---------------------------------------------------------------------------

/// Runs the client against part 1, then part 2. `Ok(true)` if every reply
/// matched its request both times.
fn demo() -> Result<bool, wsloop::Error> {
    println!("== part 1: the hand-written loop");
    let part1 = smol::block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        println!("server listening on {address}");
        smol::spawn(accept_loop(listener)).detach();
        client(&address).await
    })?;

    println!("== part 2: wsloop::Server with a handler closure");
    let ex = std::sync::Arc::new(smol::Executor::new());
    let part2 = smol::block_on(ex.run(with_wsloop_server(&ex)))?;

    Ok(part1 && part2)
}

/// Connects once, sends `REQUESTS` requests one after another, checks each
/// reply, then closes politely. `Ok(true)` when every reply matched.
async fn client(address: &str) -> std::io::Result<bool> {
    let stream = TcpStream::connect(address).await?;
    let url = format!("ws://{address}/server");
    let (mut ws, _) = client_async(url, stream)
        .await
        .map_err(std::io::Error::other)?;

    let mut matched = 0;
    for id in 1..=REQUESTS {
        let request = Message::request(id, format!("Eject the hot dog {id}."));
        match round_trip(&mut ws, &request).await {
            Ok(reply) if reply.request_id == id && reply.success => {
                println!("client: reply {id}: {}", reply.some_other_thing);
                matched += 1;
            }
            Ok(reply) => println!("client: unexpected reply to {id}: {reply:?}"),
            Err(err) => {
                println!("client: request {id} failed: {err}");
                break;
            }
        }
    }
    println!("client: {matched} of {REQUESTS} replies matched, on one connection");

    // Say goodbye with a Close frame, and wait for the server's Close reply
    // (`next()` returns `None` once the closing handshake is complete).
    let _ = ws.close(None).await;
    while let Some(Ok(_)) = ws.next().await {}
    Ok(matched == REQUESTS)
}

/// Sends one request and waits for the next message from the server.
async fn round_trip(
    ws: &mut WebSocketStream<TcpStream>,
    request: &Message,
) -> Result<Message, String> {
    ws.send(Frame::text(encode(request)))
        .await
        .map_err(|err| format!("send failed: {err}"))?;
    loop {
        match ws.next().await {
            Some(Ok(frame)) if frame.is_text() || frame.is_binary() => {
                return decode(&frame.into_data()).map_err(|err| err.to_string());
            }
            // A ping or pong: tungstenite handles it; keep waiting.
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(format!("read failed: {err}")),
            None => return Err("connection closed (EOF)".to_string()),
        }
    }
}
