//! # Heartbeat: ping/pong, and dropping a dead peer
//!
//! What it shows: a persistent loop must also notice peers that vanish
//! without a word — a frozen process, a laptop that went to sleep, a cable
//! pulled out. TCP alone may not tell you for hours. So the server pings
//! every `HEARTBEAT`, and drops a peer it has heard nothing from (no message,
//! no pong) for `IDLE_TIMEOUT`.
//!
//! The demo runs a wsloop server with `Config { heartbeat: 1 s, .. }` and
//! two peers:
//!
//! - a **live client** that sends nothing at all, but keeps reading. Reading
//!   is enough: tungstenite answers each Ping with a Pong while it reads, so
//!   the server keeps hearing from it and it stays connected;
//! - a **dead peer** that completes the WebSocket handshake and then never
//!   reads or writes again (we simply never poll its stream). It answers no
//!   ping, so the server drops it once `IDLE_TIMEOUT` has passed.
//!
//! How to run it:
//!
//! ```sh
//! cargo run --example heartbeat
//! ```
//!
//! What to watch for, in the timestamps on the left: the live client gets a
//! ping about every second and stays; the dead peer leaves the server's list
//! of connections about 2 s after it connected; then the dead peer "wakes
//! up" and finds what it missed: a Ping, and the server's Close 1001 "idle
//! timeout". The demo exits with status 0 when both happened as expected.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_io::Timer;
use async_tungstenite::tungstenite::Message as Frame;
use async_tungstenite::{client_async, WebSocketStream};
use futures_lite::{future, StreamExt};
use smol::net::TcpStream;
use wsloop::{Config, Hub, Message, Peer, Server};

/// How often the server pings. wsloop's minimum; the default is 30 s.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long a peer may stay silent (no frame, no pong) before the server
/// drops it. Two heartbeats, as in wsloop's default: one lost pong is
/// forgiven, two are not.
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the live client stays connected before it leaves politely.
const LIVE_FOR: Duration = Duration::from_millis(3500);

/// Pings the live client should see in `LIVE_FOR`: one per `HEARTBEAT`.
const EXPECTED_PINGS: u32 = 3;

/// Grace on top of `IDLE_TIMEOUT` for the drop to count as on time.
const DROP_SLACK: Duration = Duration::from_secs(1);

/// How often the demo looks at the server's list of connections.
const WATCH_EVERY: Duration = Duration::from_millis(20);

fn main() {
    let ex = std::sync::Arc::new(smol::Executor::new());
    match smol::block_on(ex.run(demo(&ex))) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(err) => {
            eprintln!("error: {err}");
            std::process::exit(2);
        }
    }
}

/// Runs the server with a 1-second heartbeat until the scenario is over.
async fn demo(ex: &std::sync::Arc<smol::Executor<'static>>) -> Result<bool, wsloop::Error> {
    let start = Instant::now();
    let config = Config::default()
        .with_heartbeat(HEARTBEAT)
        .with_idle_timeout(IDLE_TIMEOUT);
    let server = Server::bind("127.0.0.1:0", config).await?;
    let address = server.local_addr()?;
    println!(
        "{} server: listening on {address}, heartbeat {HEARTBEAT:?}, idle timeout {IDLE_TIMEOUT:?}",
        at(start)
    );

    // The hub is the server's list of live connections: our window into it.
    let hub = server.hub();
    let handler = |_: &Peer, request: Message| Some(request.seed_reply());
    // The server stops when the scenario is done (the channel closes).
    let (done, stop) = async_channel::bounded::<()>(1);
    let shutdown = async move {
        let _ = stop.recv().await;
    };
    let watch = async move {
        let outcome = scenario(address, &hub, start).await;
        drop(done);
        outcome
    };
    // Run the server and the scenario side by side until both are done.
    let (served, outcome) = future::zip(server.run(ex, handler, shutdown), watch).await;
    served?;
    outcome
}

/// The live client and the dead peer, side by side. `Ok(true)` when the
/// live one stayed and the dead one was dropped on time.
async fn scenario(address: SocketAddr, hub: &Hub, start: Instant) -> Result<bool, wsloop::Error> {
    // The live client runs as a task of its own, for `LIVE_FOR`.
    let live = smol::spawn(live_client(address, start));

    // The dead peer: connect, then freeze.
    let dead = connect(address).await?;
    let dead_addr = dead.get_ref().local_addr()?;
    let connected_at = Instant::now();
    println!("{} dead peer: connected, and now goes silent", at(start));

    // Watch the server's hub: first the dead peer appears, then it goes.
    let give_up = IDLE_TIMEOUT + DROP_SLACK + Duration::from_secs(2);
    wait_for(hub, dead_addr, true, give_up).await;
    let dropped = wait_for(hub, dead_addr, false, give_up).await;
    let dropped_after = dropped.then(|| connected_at.elapsed());
    match dropped_after {
        Some(after) => println!(
            "{} server: dropped the dead peer ({:.2} s after it connected)",
            at(start),
            after.as_secs_f64()
        ),
        None => println!("{} server: still holds the dead peer!", at(start)),
    }

    // Let the dead peer read what it missed, to see how the server left.
    wake_up(dead, start).await;

    let (pings, stayed) = live.await?;
    if stayed {
        println!(
            "summary: live client stayed connected for {} and answered {pings} pings",
            format_secs(LIVE_FOR)
        );
    } else {
        println!("summary: live client was disconnected after {pings} pings");
    }
    match dropped_after {
        Some(after) => println!(
            "summary: dead peer dropped after {:.2} s of silence (idle timeout {})",
            after.as_secs_f64(),
            format_secs(IDLE_TIMEOUT)
        ),
        None => println!("summary: dead peer NOT dropped"),
    }

    let live_ok = stayed && pings >= EXPECTED_PINGS;
    let dead_ok = dropped_after.is_some_and(|after| after <= IDLE_TIMEOUT + DROP_SLACK);
    Ok(live_ok && dead_ok)
}

/// Opens a WebSocket to the server's `/server` endpoint.
async fn connect(address: SocketAddr) -> Result<WebSocketStream<TcpStream>, wsloop::Error> {
    let stream = TcpStream::connect(address).await?;
    let (ws, _) = client_async(format!("ws://{address}/server"), stream).await?;
    Ok(ws)
}

/// A healthy but quiet client: it never sends a message, it only reads.
/// Returns how many pings it saw, and whether it stayed for all of
/// `LIVE_FOR`.
async fn live_client(address: SocketAddr, start: Instant) -> Result<(u32, bool), wsloop::Error> {
    let mut ws = connect(address).await?;
    println!(
        "{} live client: connected; sends nothing, keeps reading",
        at(start)
    );
    let leave_at = Instant::now() + LIVE_FOR;
    let mut pings = 0;

    loop {
        // Read the next frame, unless it is time to leave.
        let next = future::or(async { Some(ws.next().await) }, async {
            Timer::at(leave_at).await;
            None
        })
        .await;
        match next {
            None => break,
            Some(Some(Ok(Frame::Ping(_)))) => {
                pings += 1;
                // The Pong goes out on our next read: tungstenite sends it.
                println!(
                    "{} live client: ping {pings}, answered with a pong",
                    at(start)
                );
            }
            Some(Some(Ok(Frame::Close(frame)))) => {
                println!("{} live client: server closed: {frame:?}", at(start));
                return Ok((pings, false));
            }
            Some(Some(Ok(_))) => {}
            Some(Some(Err(err))) => {
                println!("{} live client: connection failed: {err}", at(start));
                return Ok((pings, false));
            }
            Some(None) => {
                println!("{} live client: connection closed", at(start));
                return Ok((pings, false));
            }
        }
    }

    println!(
        "{} live client: still connected; leaving politely",
        at(start)
    );
    // Close frame, then read until the server's Close reply ends the stream.
    let _ = ws.close(None).await;
    while let Some(Ok(_)) = ws.next().await {}
    Ok((pings, true))
}

/// Polls the hub until the connection from `addr` is (or is no longer)
/// there. Returns whether that happened within `limit`.
async fn wait_for(hub: &Hub, addr: SocketAddr, present: bool, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let found = hub.peers().iter().any(|peer| peer.addr() == Some(addr));
        if found == present {
            return true;
        }
        Timer::after(WATCH_EVERY).await;
    }
    false
}

/// The frozen peer finally reads its socket: everything the server sent
/// while it was silent, then the end of the stream.
async fn wake_up(mut ws: WebSocketStream<TcpStream>, start: Instant) {
    println!(
        "{} dead peer: wakes up and reads what it missed:",
        at(start)
    );
    loop {
        match wsloop::timeout(Duration::from_secs(1), ws.next()).await {
            Some(Some(Ok(Frame::Ping(_)))) => println!("        a Ping (never answered)"),
            Some(Some(Ok(Frame::Close(Some(close))))) => println!(
                "        a Close frame: {} {:?}",
                u16::from(close.code),
                close.reason.as_str()
            ),
            Some(Some(Ok(frame))) => println!("        {frame:?}"),
            // Its late Pong and Close reply hit a socket the server closed.
            Some(Some(Err(err))) => return println!("        then: {err}"),
            Some(None) => return println!("        then: end of stream"),
            None => return println!("        then: nothing more"),
        }
    }
}

/// The time since `start`, as a column for the log: `[ 1.02s]`.
fn at(start: Instant) -> String {
    format!("[{:5.2}s]", start.elapsed().as_secs_f64())
}

/// A duration in seconds with two decimals: `3.50 s`.
fn format_secs(duration: Duration) -> String {
    format!("{:.2} s", duration.as_secs_f64())
}
