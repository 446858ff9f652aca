//! # The one-shot bug, reproduced on purpose
//!
//! What it shows: the bug from the original article. The server's handler
//! reads ONE message, replies, and returns. Returning drops the WebSocket,
//! and dropping it closes the TCP socket. The client's first request works;
//! its second one fails, because nobody is listening any more.
//!
//! Why it fails, step by step:
//!
//! 1. Each connection is owned by one task (`one_shot_handler` below).
//! 2. That task returns after the first reply, so `ws` goes out of scope.
//! 3. Dropping `ws` closes the TCP socket — without even a WebSocket Close
//!    frame.
//! 4. The client does not know yet. Its next send still "works" (the bytes
//!    go into its own kernel buffer), but its next read hits end of file.
//!    Go reports this as `EOF`; tungstenite as "Connection reset without
//!    closing handshake"; if the server's kernel saw unread data it may be
//!    "Connection reset by peer". All three mean the same thing here.
//!
//! The fix is to keep the task alive in a loop until the peer leaves: see
//! `examples/persistent_loop.rs`. wsloop's `Connection` is that loop, which is
//! why this example talks to async-tungstenite directly: with wsloop the bug
//! cannot be written.
//!
//! How to run it:
//!
//! ```sh
//! # Self-contained demo: starts the buggy server and a client, then exits.
//! cargo run --example one_shot_bug
//!
//! # Or run only the buggy server, and point the real client at it:
//! cargo run --example one_shot_bug -- --address 127.0.0.1:8080
//! cargo run -- client --address 127.0.0.1:8080 --interval 0.5 --no-reconnect
//! ```
//!
//! What to watch for: request 1 gets its reply; request 2 fails with the
//! error printed on the last lines. The demo exits with status 0 when the
//! bug reproduced as expected, and 1 if (surprisingly) it did not.
//!
//! With the real client, the failure shows up even before request 2:
//! `peer went away (EOF)` right after the first reply. wsloop's client has a
//! reader task that is always reading, so it notices the close at once.
//! (Without `--no-reconnect` it reconnects after each EOF: the buggy server
//! has turned one persistent connection into one connection per request.)

use std::time::Duration;

use async_io::Timer;
use async_tungstenite::tungstenite::Message as Frame;
use async_tungstenite::{accept_async, client_async, WebSocketStream};
use futures_lite::StreamExt;
use smol::net::{TcpListener, TcpStream};
use wsloop::{decode, encode, Message};

/// Pause between the client's two requests, like the Go client's 2-second
/// timer (shortened). It gives the server time to finish closing, so the
/// failure is the plain EOF the article describes.
const REQUEST_INTERVAL: Duration = Duration::from_millis(200);

/// Upper bound for the client's wait for each reply. The bug makes the read
/// fail quickly; this only guards against a hang.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

fn main() {
    let outcome = smol::block_on(async {
        match address_argument() {
            // Server only: serve until killed.
            Some(address) => serve(&address).await,
            // Demo: a server on a free port, and a client that talks to it.
            None => demo().await,
        }
    });
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
            eprintln!("usage: one_shot_bug [--address HOST:PORT]");
            std::process::exit(2);
        }
    }
}

/// Starts the buggy server and runs the client against it. `Ok(true)` when
/// the bug reproduced: request 1 answered, request 2 failed.
async fn demo() -> std::io::Result<bool> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    // The server runs as a task of its own; the client runs right here.
    smol::spawn(accept_loop(listener)).detach();
    println!("buggy server listening on {address}");
    report(client(&address).await)
}

/// Server-only mode: bind, say where, accept forever.
async fn serve(address: &str) -> std::io::Result<bool> {
    let listener = TcpListener::bind(address).await?;
    // The first line says where we listen (port 0 picks a free port).
    println!("listening on {}", listener.local_addr()?);
    accept_loop(listener).await;
    Ok(true)
}

/// Accepts TCP connections and gives each one its own task (on smol's
/// global executor), like Go's one goroutine per connection.
async fn accept_loop(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => smol::spawn(one_shot_handler(stream)).detach(),
            Err(err) => println!("server: accept failed: {err}"),
        }
    }
}

/// THE BUG. Handles one message, then returns — and returning ends the
/// connection.
async fn one_shot_handler(stream: TcpStream) {
    // The WebSocket handshake: the HTTP Upgrade request and the 101 reply.
    let mut ws = match accept_async(stream).await {
        Ok(ws) => ws,
        Err(err) => return println!("server: handshake failed: {err}"),
    };
    println!("server: client connected");

    // Receive one request (no loop!).
    let Some(Ok(frame)) = ws.next().await else {
        return println!("server: client left before sending anything");
    };
    let request = match decode(&frame.into_data()) {
        Ok(request) => request,
        Err(err) => return println!("server: malformed request: {err}"),
    };
    println!("server: received request {}", request.request_id);

    // Send the reply.
    let reply = encode(&request.seed_reply());
    if let Err(err) = ws.send(Frame::text(reply)).await {
        return println!("server: send failed: {err}");
    }
    println!("server: replied, and the handler returns (this drops the socket)");
    // `ws` is dropped here. Its TCP socket closes, with no Close frame.
}

/// Connects and sends two requests on the same connection. Returns whether
/// each one got its reply.
async fn client(address: &str) -> std::io::Result<[bool; 2]> {
    let stream = TcpStream::connect(address).await?;
    let url = format!("ws://{address}/server");
    let (mut ws, _) = client_async(url, stream)
        .await
        .map_err(std::io::Error::other)?;
    println!("client: connected");

    let first = request(&mut ws, 1).await;
    // Wait a moment, as the Go client does between requests.
    Timer::after(REQUEST_INTERVAL).await;
    let second = request(&mut ws, 2).await;
    Ok([first, second])
}

/// Sends one request, waits for its reply and prints what happened.
async fn request(ws: &mut WebSocketStream<TcpStream>, id: i64) -> bool {
    let request = Message::request(id, format!("Eject the hot dog {id}."));
    println!("client: sending request {id}");
    match send_and_receive(ws, &request).await {
        Ok(reply) => {
            println!("client: reply {id}: {}", reply.some_other_thing);
            true
        }
        Err(err) => {
            println!("client: request {id} failed: {err}");
            false
        }
    }
}

/// One round trip on the connection.
async fn send_and_receive(
    ws: &mut WebSocketStream<TcpStream>,
    request: &Message,
) -> Result<Message, String> {
    // Sending usually succeeds even on a dead connection: the bytes only go
    // into our own kernel's send buffer.
    ws.send(Frame::text(encode(request)))
        .await
        .map_err(|err| format!("send failed: {err}"))?;
    // Reading is where a closed connection shows up.
    let reply = wsloop::timeout(REPLY_TIMEOUT, ws.next())
        .await
        .ok_or("no reply within the timeout")?;
    match reply {
        Some(Ok(frame)) => decode(&frame.into_data()).map_err(|err| err.to_string()),
        Some(Err(err)) => Err(format!("read failed: {err}")),
        None => Err("read failed: connection closed (EOF)".to_string()),
    }
}

/// Says what the client saw; `Ok(true)` when the bug reproduced.
fn report(outcome: std::io::Result<[bool; 2]>) -> std::io::Result<bool> {
    let [first, second] = outcome?;
    let reproduced = first && !second;
    if reproduced {
        println!("bug reproduced: request 1 answered, request 2 failed");
        println!(
            "why: the server's task returned after one message, which closed the socket (EOF)"
        );
        println!("the fix: keep receiving in a loop (cargo run --example persistent_loop)");
    } else {
        println!("bug NOT reproduced (expected: request 1 answered, request 2 failed)");
    }
    Ok(reproduced)
}
