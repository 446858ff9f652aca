//! The client: dial `ws://ADDR/server`, keep the connection up, correlate
//! requests with replies, and run the original Go client's loop.
//!
//! - [`connect`] dials once and gives a [`Connection`] (the same persistent
//!   loop the server runs), for callers who manage reconnects themselves.
//! - [`Client`] is the reconnecting client: one supervisor task keeps a
//!   connection up with exponential backoff and jitter, one [`Session`]
//!   outlives every connection (so messages queued while disconnected go out
//!   after the reconnect, and request ids never repeat), and
//!   [`Client::request`] resolves when the reply with its `requestID` comes.
//! - [`run`] is the seed client on top of it: a select loop over a timer (or
//!   stdin lines), the replies coming back, and commands the server pushes.
//!
//! Requests in flight when a connection drops fail with
//! [`RequestError::ConnectionLost`]; they are not re-sent, because the
//! server may already have executed them. Requests still queued (not yet
//! written) are sent after the reconnect.
//!
//! A complete round trip, runnable as it stands: a server on a free port,
//! a client that requests and answers pushes, and a push from the server's
//! hub back to the client.
//!
//! ```
//! use wsloop::client::{Client, ClientOptions};
//! use wsloop::{Config, Message, Peer, Server};
//!
//! // Both sides answer the way the Go program does.
//! let seed = |_: &Peer, m: Message| Some(m.seed_reply());
//! let ex = smol::Executor::new();
//! smol::block_on(ex.run(async {
//!     let server = Server::bind("127.0.0.1:0", Config::default()).await?;
//!     let address = server.local_addr()?.to_string();
//!     let hub = server.hub();
//!     let mut outcome = Ok(());
//!     let demo = async {
//!         outcome = async {
//!             let client = Client::connect(&ex, ClientOptions::new(address), seed).await?;
//!
//!             // Client -> server: the reply is matched by its requestID.
//!             let reply = client.request("Eject the hot dog 1.").await.expect("reply");
//!             assert_eq!(reply.some_other_thing, "Command 'Eject the hot dog 1.' processed successfully.");
//!
//!             // Server -> client: push through the hub, await the answer.
//!             for (_, pending) in hub.broadcast_request("Restock the buns") {
//!                 let answer = pending.expect("queued").wait().await.expect("answer");
//!                 assert!(answer.success);
//!             }
//!             client.close().await
//!         }
//!         .await;
//!     };
//!     // The server runs until its shutdown future (here: the demo) is done.
//!     server.run(&ex, seed, demo).await?;
//!     outcome
//! }))?;
//! # Ok::<(), wsloop::Error>(())
//! ```

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use async_io::{Async, Timer};
use async_tungstenite::tungstenite::protocol::Role;
use futures_lite::io::BufReader;
use futures_lite::{future, AsyncBufReadExt, StreamExt};
use smol::{Executor, Task};

use crate::handshake;
use crate::server::WEBSOCKET_PATH;
use crate::session::{PendingReply, RequestError, SendError, Session};
use crate::tcp::Tcp;
use crate::time::{human, timeout};
use crate::{Config, Connection, Ended, Error, Handler, Message, SeedHandler, CLOSE_NORMAL};

/// The original client's request interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// First wait before reconnecting; doubles per failed attempt.
pub const DEFAULT_RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// Longest wait between reconnect attempts.
pub const DEFAULT_MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// Server-pushed commands [`run`] may hold before it stops reading.
const PUSH_QUEUE: usize = 64;

/// A connection dialled over TCP.
pub type TcpConnection = Connection<Tcp>;

/// Dials `ws://{address}/server` once, with `Origin: http://{address}/` (as
/// the Go client does), within the handshake timeout.
pub async fn connect(address: &str, config: &Config) -> Result<TcpConnection, Error> {
    connect_to(address, WEBSOCKET_PATH, config).await
}

/// [`connect`] to another endpoint: `ws://{address}{path}`, where `path`
/// starts with `/` and may carry a query (`/runCase?case=1`).
pub async fn connect_to(
    address: &str,
    path: &str,
    config: &Config,
) -> Result<TcpConnection, Error> {
    config.validate()?;
    let (stream, leftover, addr) = dial(address, path, config, None).await?;
    Ok(Connection::new(stream, Role::Client, leftover, Some(addr), config).await)
}

/// Dials `ws://{address}{path}` and shakes hands with the token, if any.
async fn dial(
    address: &str,
    path: &str,
    config: &Config,
    token: Option<&str>,
) -> Result<(Tcp, Vec<u8>, SocketAddr), Error> {
    let attempt = async {
        let addr = first_addr(address).await?;
        let mut stream = Tcp::new(Async::<TcpStream>::connect(addr).await?)?;
        // The Go client sends this Origin; the server's origin check wants it.
        let origin = format!("http://{address}/");
        let bearer = token.map(|token| format!("Bearer {token}"));
        let mut headers = vec![("Origin", origin.as_str())];
        if let Some(bearer) = &bearer {
            headers.push(("Authorization", bearer));
        }
        let leftover = handshake::client(&mut stream, address, path, &headers).await?;
        Ok::<_, Error>((stream, leftover, addr))
    };
    timeout(config.handshake_timeout, attempt)
        .await
        .unwrap_or(Err(Error::Timeout("connecting to the server")))
}

/// Dials for the reconnecting client: the connection sends from (and routes
/// replies into) `session`, which outlives it.
async fn dial_session(options: &ClientOptions, session: &Session) -> Result<TcpConnection, Error> {
    let config = &options.config;
    let token = options.token.as_deref();
    let (stream, leftover, addr) = dial(&options.address, WEBSOCKET_PATH, config, token).await?;
    let session = session.clone();
    Ok(Connection::with_session(stream, Role::Client, leftover, Some(addr), config, session).await)
}

async fn first_addr(address: &str) -> Result<SocketAddr, Error> {
    smol::net::resolve(address)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Config(format!("address {address:?} resolves to nothing")))
}

/// When and how often [`Client`] reconnects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconnect {
    /// Reconnect at all after a connection drops.
    pub enabled: bool,
    /// First wait ([`DEFAULT_RECONNECT_DELAY`]); doubles per failed attempt.
    pub initial_delay: Duration,
    /// Cap on the wait ([`DEFAULT_MAX_RECONNECT_DELAY`]).
    pub max_delay: Duration,
    /// Give up after this many failed attempts in a row (`None`: never).
    pub max_attempts: Option<u32>,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            enabled: true,
            initial_delay: DEFAULT_RECONNECT_DELAY,
            max_delay: DEFAULT_MAX_RECONNECT_DELAY,
            max_attempts: None,
        }
    }
}

impl Reconnect {
    /// The wait before attempt `attempt` (1-based): exponential, capped,
    /// with "equal jitter" (between half and all of it) so that many
    /// clients dropped together do not reconnect in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doubling = 2u32.saturating_pow(attempt.saturating_sub(1));
        let full = self
            .initial_delay
            .saturating_mul(doubling)
            .min(self.max_delay);
        full.mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

/// What a [`Client`] (and [`run`]) does.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `HOST:PORT` of the server.
    pub address: String,
    /// Connection settings.
    pub config: Config,
    /// Reconnect policy.
    pub reconnect: Reconnect,
    /// Shared secret sent as `Authorization: Bearer` (see [`AccessPolicy`](crate::AccessPolicy)).
    pub token: Option<String>,
    /// [`run`]: time between requests ([`DEFAULT_INTERVAL`]); unused with `stdin`.
    pub interval: Duration,
    /// [`run`]: stop after this many replies.
    pub count: Option<u64>,
    /// [`run`]: send one request per line of standard input instead of on a
    /// timer; end (after the last reply) at end of input.
    pub stdin: bool,
}

impl ClientOptions {
    /// The original client's behaviour against `address`, reconnecting.
    pub fn new(address: impl Into<String>) -> Self {
        ClientOptions {
            address: address.into(),
            config: Config::default(),
            reconnect: Reconnect::default(),
            token: None,
            interval: DEFAULT_INTERVAL,
            count: None,
            stdin: false,
        }
    }
}

/// A client that keeps one logical connection up across reconnects.
/// Dropping it stops the supervisor task; [`close`](Self::close) does so
/// gracefully.
pub struct Client {
    session: Session,
    addr: Option<SocketAddr>,
    supervisor: Task<Result<(), Error>>,
    /// Dropped to interrupt a reconnect wait when closing.
    stop: async_channel::Sender<()>,
    /// Reports closed once the supervisor has finished.
    finished: async_channel::Receiver<()>,
}

impl Client {
    /// Connects to `options.address` (failing fast if the server is
    /// unreachable), then keeps the connection up from a task spawned on
    /// `ex`. `handler` answers what the server pushes; replies to this
    /// client's own requests never reach it.
    pub async fn connect(
        ex: &Executor<'_>,
        options: ClientOptions,
        handler: impl Handler,
    ) -> Result<Client, Error> {
        let config = &options.config;
        config.validate()?;
        let session = Session::new(config.outbound_capacity, config.request_timeout);
        let first = dial_session(&options, &session).await?;
        let addr = first.peer().addr();
        log::info!("connected to ws://{}/server", options.address);
        let (stop, stopped) = async_channel::bounded(1);
        let (finished_tx, finished) = async_channel::bounded(1);
        let supervisor = Supervisor {
            options,
            session: session.clone(),
            handler: Arc::new(handler),
            stopped,
            _finished: finished_tx,
        };
        Ok(Client {
            session,
            addr,
            supervisor: ex.spawn(supervisor.run(first)),
            stop,
            finished,
        })
    }

    /// The server's address, as first connected.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Queues `message` (fire and forget). While disconnected it waits in
    /// the queue and goes out after the reconnect.
    pub fn send(&self, message: Message) -> Result<(), SendError> {
        self.session.send(message)
    }

    /// Sends `command` under a fresh `requestID` and waits for its reply.
    pub async fn request(&self, command: impl Into<String>) -> Result<Message, RequestError> {
        self.session.request(command).await
    }

    /// Queues a request now; await [`PendingReply::wait`] for the reply.
    pub fn start_request(&self, command: impl Into<String>) -> Result<PendingReply, RequestError> {
        self.session.start_request(command)
    }

    /// The queue and outstanding requests (shared by every connection).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Completes when the client has stopped for good: closed, or given up
    /// reconnecting ([`close`](Self::close) then returns why).
    pub async fn stopped(&self) {
        let _ = self.finished.recv().await;
    }

    /// Closes gracefully: queued messages are sent, then Close 1000. Returns
    /// the supervisor's verdict (an error if it had given up earlier).
    pub async fn close(self) -> Result<(), Error> {
        self.session.close(CLOSE_NORMAL);
        drop(self.stop);
        let result = self.supervisor.await;
        self.session.shut();
        result
    }
}

/// The task that alone owns the client's connections, one at a time.
struct Supervisor<H> {
    options: ClientOptions,
    session: Session,
    handler: Arc<H>,
    /// Closed when the client is closing: stop waiting to reconnect.
    stopped: async_channel::Receiver<()>,
    /// Dropped when this task ends, which [`Client::stopped`] observes.
    _finished: async_channel::Sender<()>,
}

impl<H: Handler> Supervisor<H> {
    /// Runs connections until the client closes or reconnecting gives up.
    async fn run(self, first: TcpConnection) -> Result<(), Error> {
        let mut conn = first;
        loop {
            let ended = conn.run(self.handler.clone()).await;
            if let Ok(Ended::Closed(_)) = ended {
                return Ok(()); // we closed it: Client::close
            }
            let why = match ended {
                Ok(ended) => ended.to_string(),
                Err(err) => err.to_string(),
            };
            log::warn!("connection to {} lost: {why}", self.options.address);
            if !self.options.reconnect.enabled {
                self.session.shut();
                return Err(Error::ConnectionClosed(why));
            }
            conn = match self.reconnect().await {
                Some(Ok(conn)) => conn,
                Some(Err(err)) => {
                    self.session.shut();
                    return Err(err);
                }
                None => return Ok(()), // closed while waiting
            };
        }
    }

    /// Dials with backoff until it works (`Some(Ok)`), attempts run out
    /// (`Some(Err)`), or the client closes (`None`).
    async fn reconnect(&self) -> Option<Result<TcpConnection, Error>> {
        let policy = &self.options.reconnect;
        let address = &self.options.address;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let delay = policy.delay(attempt);
            log::info!(
                "reconnecting to {address} in {} (attempt {attempt})",
                human(delay)
            );
            let wait = async {
                Timer::after(delay).await;
                true
            };
            let closing = async {
                let _ = self.stopped.recv().await;
                false
            };
            if !future::or(wait, closing).await {
                return None;
            }
            match dial_session(&self.options, &self.session).await {
                Ok(conn) => {
                    log::info!("reconnected to ws://{address}/server");
                    return Some(Ok(conn));
                }
                Err(err) if policy.max_attempts.is_some_and(|max| attempt >= max) => {
                    let why = format!("gave up reconnecting after {attempt} attempts: {err}");
                    return Some(Err(Error::ConnectionClosed(why)));
                }
                Err(err) => log::warn!("reconnect attempt {attempt} failed: {err}"),
            }
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
    /// The reply to a request arrived.
    Received(&'a Message),
    /// A request ended without a reply (its id and why).
    Failed(i64, &'a RequestError),
    /// The server pushed this command; it has been answered.
    Pushed(&'a Message),
}

/// What a finished [`run`] saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Requests sent.
    pub sent: u64,
    /// Replies received.
    pub received: u64,
    /// Replies that reported success.
    pub succeeded: u64,
    /// Requests that ended without a reply.
    pub failed: u64,
}

impl Summary {
    /// True when every request got a successful reply.
    pub fn all_ok(&self) -> bool {
        self.failed == 0 && self.succeeded == self.received && self.received == self.sent
    }

    /// Requests that have ended, answered or not.
    pub fn finished(&self) -> u64 {
        self.received + self.failed
    }
}

/// What woke the seed client's select loop.
enum Wake {
    Outcome(i64, Result<Message, RequestError>),
    Pushed(Message),
    Send(Option<String>),
    Stopped,
}

/// Runs the seed client: connect, then send a request every
/// `options.interval` (or per stdin line) and report each reply, until
/// `options.count` requests have ended or input ended. Commands pushed by
/// the server are answered and reported. Tasks are spawned on `ex`.
///
/// Returns an error when the server is unreachable, or when the connection
/// drops and reconnecting is off or gives up.
pub async fn run(
    ex: &Executor<'_>,
    options: &ClientOptions,
    mut report: impl FnMut(Event<'_>),
) -> Result<Summary, Error> {
    let (pushes_tx, pushes) = async_channel::bounded(PUSH_QUEUE);
    let client = Client::connect(ex, options.clone(), SeedHandler::forwarding(pushes_tx)).await?;
    if let Some(addr) = client.addr() {
        report(Event::Connected(addr));
    }
    // Each request's wait runs in its own task and reports here, so replies
    // are printed as they arrive, in whatever order.
    let (outcomes_tx, outcomes) = async_channel::unbounded();
    let mut commands = Commands::new(options);
    let mut summary = Summary::default();
    // Done after `count` outcomes, or once input has ended and every
    // request sent has its outcome.
    let done = |s: &Summary, input_ended: bool| {
        options.count.is_some_and(|n| s.finished() >= n) || (input_ended && s.finished() >= s.sent)
    };

    while !done(&summary, commands.finished) {
        let wake = future::or(
            future::or(
                async {
                    match outcomes.recv().await {
                        Ok((id, outcome)) => Wake::Outcome(id, outcome),
                        Err(_) => Wake::Stopped,
                    }
                },
                async { pushes.recv().await.map_or(Wake::Stopped, Wake::Pushed) },
            ),
            future::or(
                async { Wake::Send(commands.next(summary.sent).await) },
                async {
                    client.stopped().await;
                    Wake::Stopped
                },
            ),
        )
        .await;
        match wake {
            Wake::Outcome(_, Ok(reply)) => {
                summary.received += 1;
                summary.succeeded += u64::from(reply.success);
                report(Event::Received(&reply));
            }
            Wake::Outcome(id, Err(err)) => {
                summary.failed += 1;
                report(Event::Failed(id, &err));
            }
            Wake::Pushed(command) => report(Event::Pushed(&command)),
            Wake::Send(Some(command)) => {
                if options.count.is_some_and(|n| summary.sent >= n) {
                    continue; // enough sent; wait for the outcomes
                }
                summary.sent += 1;
                let request = client.start_request(command.as_str());
                let request = match request {
                    Ok(pending) => pending,
                    Err(err) => {
                        summary.failed += 1;
                        report(Event::Failed(0, &err));
                        continue;
                    }
                };
                report(Event::Sent(&Message::request(request.id(), command)));
                let outcomes = outcomes_tx.clone();
                ex.spawn(async move {
                    let id = request.id();
                    let _ = outcomes.send((id, request.wait().await)).await;
                })
                .detach();
            }
            Wake::Send(None) => commands.finished = true,
            Wake::Stopped => {
                // The supervisor gave up; `close` returns why.
                client.close().await?;
                return Err(Error::ConnectionClosed("client stopped".into()));
            }
        }
    }
    client.close().await?;
    Ok(summary)
}

/// Where the next command comes from: the interval timer or stdin lines.
struct Commands {
    timer: Option<Timer>,
    lines: Option<futures_lite::io::Lines<BufReader<smol::Unblock<std::io::Stdin>>>>,
    finished: bool,
}

impl Commands {
    fn new(options: &ClientOptions) -> Self {
        let (timer, lines) = if options.stdin {
            let stdin = BufReader::new(smol::Unblock::new(std::io::stdin()));
            (None, Some(stdin.lines()))
        } else {
            (Some(Timer::interval(options.interval)), None)
        };
        Commands {
            timer,
            lines,
            finished: false,
        }
    }

    /// The next command to send; `None` once input has ended (after which
    /// it stays pending, so the select loop only waits for replies).
    async fn next(&mut self, sent: u64) -> Option<String> {
        if self.finished {
            return future::pending().await;
        }
        if let Some(timer) = &mut self.timer {
            timer.next().await;
            return Some(format!("Eject the hot dog {}.", sent + 1));
        }
        let lines = self.lines.as_mut()?;
        loop {
            match lines.next().await {
                // Blank lines are not commands.
                Some(Ok(line)) if line.trim().is_empty() => continue,
                Some(Ok(line)) => return Some(line),
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let policy = Reconnect {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..Reconnect::default()
        };
        for (attempt, full_ms) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let delay = policy.delay(attempt).as_secs_f64() * 1000.0;
            let full = full_ms as f64;
            assert!(
                delay >= full / 2.0 - 1.0 && delay <= full + 1.0,
                "attempt {attempt}: {delay}"
            );
        }
    }
}
