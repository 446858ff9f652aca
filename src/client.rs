//! The client: dial `ws://ADDR/server` and talk to it the way the original
//! Go client does.
//!
//! [`connect`] gives a [`Connection`] (the same persistent loop the server
//! runs). [`run`] is the seed client on top of it: the connection task is
//! the *reader task* feeding an async-channel, and a select loop races that
//! channel against a timer (or stdin lines) to send requests and report
//! replies.
//!
//! ```no_run
//! use wsloop::client::{self, ClientOptions, Event};
//! let ex = smol::Executor::new();
//! let options = ClientOptions { count: Some(3), ..ClientOptions::new("127.0.0.1:8080") };
//! let summary = smol::block_on(ex.run(client::run(&ex, &options, |event| {
//!     if let Event::Received(reply) = event {
//!         println!("{reply:?}");
//!     }
//! })))?;
//! assert!(summary.all_ok());
//! # Ok::<(), wsloop::Error>(())
//! ```

use std::collections::HashSet;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use async_io::{Async, Timer};
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::HeaderValue;
use futures_lite::io::BufReader;
use futures_lite::{future, AsyncBufReadExt, StreamExt};
use smol::Executor;

use crate::time::timeout;
use crate::{Config, Connection, Ended, Error, Message, CLOSE_NORMAL};

/// The original client's request interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// Inbound messages the reader task may hold before it stops reading and
/// lets TCP push back on the server.
const INBOUND_QUEUE: usize = 64;

/// A connection dialled over TCP.
pub type TcpConnection = Connection<Async<TcpStream>>;

/// Dials `ws://{address}/server` with `Origin: http://{address}/` (as the Go
/// client does), within the handshake timeout.
pub async fn connect(address: &str, config: &Config) -> Result<TcpConnection, Error> {
    config.validate()?;
    let dial = async {
        let addr = first_addr(address).await?;
        let stream = Async::<TcpStream>::connect(addr).await?;
        let mut request = format!("ws://{address}/server").into_client_request()?;
        let origin = HeaderValue::from_str(&format!("http://{address}/"))
            .map_err(|e| Error::Config(format!("bad address {address:?}: {e}")))?;
        request.headers_mut().insert("Origin", origin);
        let (ws, _response) =
            async_tungstenite::client_async_with_config(request, stream, Some(config.websocket()))
                .await?;
        Ok::<_, Error>(Connection::new(ws, Some(addr), config))
    };
    timeout(config.handshake_timeout, dial)
        .await
        .unwrap_or(Err(Error::Timeout("connecting to the server")))
}

async fn first_addr(address: &str) -> Result<SocketAddr, Error> {
    smol::net::resolve(address)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Config(format!("address {address:?} resolves to nothing")))
}

/// What [`run`] does.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `HOST:PORT` of the server.
    pub address: String,
    /// Time between requests ([`DEFAULT_INTERVAL`]); unused with `stdin`.
    pub interval: Duration,
    /// Stop after this many replies.
    pub count: Option<u64>,
    /// Send one request per line of standard input instead of on a timer;
    /// end (after the last reply) at end of input.
    pub stdin: bool,
    /// Connection settings.
    pub config: Config,
}

impl ClientOptions {
    /// The original client's behaviour against `address`.
    pub fn new(address: impl Into<String>) -> Self {
        ClientOptions {
            address: address.into(),
            interval: DEFAULT_INTERVAL,
            count: None,
            stdin: false,
            config: Config::default(),
        }
    }
}

/// Something [`run`] reports as it happens.
#[derive(Debug)]
pub enum Event<'a> {
    /// Connected to this address.
    Connected(SocketAddr),
    /// A request was queued for sending.
    Sent(&'a Message),
    /// A message arrived from the server.
    Received(&'a Message),
}

/// What a finished [`run`] saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Requests sent.
    pub sent: u64,
    /// Messages received.
    pub received: u64,
    /// Received messages that answered an outstanding request with success.
    pub matched: u64,
}

impl Summary {
    /// True when every message received answered a request successfully.
    pub fn all_ok(&self) -> bool {
        self.matched == self.received
    }
}

/// What woke the client's select loop.
enum Wake {
    Reply(Option<Message>),
    Send(Option<String>),
}

/// Runs the seed client: connect, then send a request every
/// `options.interval` (or per stdin line) and report each reply, until
/// `options.count` replies arrived or input ended. The reader task is
/// spawned on `ex`.
///
/// Returns an error when the server is unreachable or the connection ends
/// before the client is done.
pub async fn run(
    ex: &Executor<'_>,
    options: &ClientOptions,
    mut report: impl FnMut(Event<'_>),
) -> Result<Summary, Error> {
    let conn = connect(&options.address, &options.config).await?;
    let peer = conn.peer().clone();
    if let Some(addr) = peer.addr() {
        report(Event::Connected(addr));
    }
    // The reader task: the connection loop forwards every inbound message
    // into this channel; this function is its only consumer.
    let (inbound_tx, inbound) = async_channel::bounded(INBOUND_QUEUE);
    let reader = ex.spawn(conn.run(inbound_tx));

    let mut commands = Commands::new(options);
    let mut outstanding = HashSet::new();
    let mut summary = Summary::default();
    let done = |s: &Summary| options.count.is_some_and(|n| s.received >= n);

    while !done(&summary) {
        let wake = future::or(async { Wake::Reply(inbound.recv().await.ok()) }, async {
            Wake::Send(commands.next(summary.sent).await)
        })
        .await;
        match wake {
            Wake::Reply(Some(reply)) => {
                summary.received += 1;
                if reply.success && outstanding.remove(&reply.request_id) {
                    summary.matched += 1;
                }
                report(Event::Received(&reply));
            }
            Wake::Reply(None) => {
                // The reader task ended: the connection is gone.
                let ended = reader.await;
                return Err(unexpected_end(ended));
            }
            Wake::Send(Some(command)) => {
                if options.count.is_some_and(|n| summary.sent >= n) {
                    continue;
                }
                summary.sent += 1;
                let request = Message::request(summary.sent as i64, command);
                report(Event::Sent(&request));
                outstanding.insert(request.request_id);
                if peer.send(request).is_err() {
                    return Err(unexpected_end(reader.await));
                }
            }
            Wake::Send(None) if outstanding.is_empty() => break,
            Wake::Send(None) => {
                // Input ended; wait for the outstanding replies only.
                commands.finished = true;
            }
        }
    }
    peer.close(CLOSE_NORMAL);
    let _ = reader.await;
    Ok(summary)
}

/// The error for a connection that ended before the client was done.
fn unexpected_end(ended: Result<Ended, Error>) -> Error {
    match ended {
        Ok(why) => Error::ConnectionClosed(why.to_string()),
        Err(err) => err,
    }
}

/// Where the next command comes from: the interval timer or stdin lines.
struct Commands {
    timer: Option<Timer>,
    lines: Option<futures_lite::io::Lines<BufReader<smol::Unblock<std::io::Stdin>>>>,
    finished: bool,
}

impl Commands {
    fn new(options: &ClientOptions) -> Self {
        if options.stdin {
            let stdin = BufReader::new(smol::Unblock::new(std::io::stdin()));
            Commands {
                timer: None,
                lines: Some(stdin.lines()),
                finished: false,
            }
        } else {
            Commands {
                timer: Some(Timer::interval(options.interval)),
                lines: None,
                finished: false,
            }
        }
    }

    /// The next command to send; `None` once input has ended (then pending
    /// forever, so the select loop only waits for replies).
    async fn next(&mut self, sent: u64) -> Option<String> {
        if self.finished {
            return future::pending().await;
        }
        if let Some(timer) = &mut self.timer {
            timer.next().await;
            return Some(format!("Eject the hot dog {}.", sent + 1));
        }
        match &mut self.lines {
            Some(lines) => loop {
                match lines.next().await {
                    // Blank lines are not commands.
                    Some(Ok(line)) if line.trim().is_empty() => continue,
                    Some(Ok(line)) => return Some(line),
                    _ => return None,
                }
            },
            None => None,
        }
    }
}
