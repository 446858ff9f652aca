//! The client: dial the server, keep the connection up, correlate
//! requests with replies, and run the original Go client's loop.
//!
//! Where to: [`ClientOptions::address`] is `HOST:PORT` (the Go program's
//! form: `ws://HOST:PORT/server`) or, with feature `urls`, a URL,
//! `ws://HOST[:PORT][/PATH][?QUERY]` or `wss://...` (see [`Target`]).
//! Headers of the caller's own ([`ClientOptions::header`]) need feature
//! `headers`, a device's name ([`ClientOptions::with_id`]) feature
//! `client-id` (these three are default features, left out of the small
//! build). `wss://` (feature `tls`, which turns `urls` on) verifies the
//! server's certificate against the system's trust store plus
//! [`ClientOptions::ca`]; an HTTP `CONNECT` proxy (feature `proxy`) comes
//! from the environment or [`ClientOptions::proxy`]. The layers of one
//! dial are in `dial.rs`.
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
//! - `run_device` (feature `exec`) is the client as a device: each pushed
//!   command runs a program (`exec.rs`), one at a time by default, and a
//!   named device ([`ClientOptions::id`], `?client=NAME` on the upgrade)
//!   runs each `requestID` at most once, kept in redb with `--state`
//!   (`record.rs`); `device.rs` ties them to the connection.
//!
//! A server that cannot be reached (at start, or after a drop) is retried
//! with the [`Reconnect`] backoff; a refusal that will stand (401, 403,
//! 404, a certificate that fails verification: [`Error::is_transient`] is
//! false) ends the client at once with that error.
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
//! let ex = std::sync::Arc::new(smol::Executor::new());
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
//!
//! The same over TLS, with a private CA and a header of one's own (not run
//! here: it needs such a server):
//!
//! ```no_run
//! # #[cfg(all(feature = "tls", feature = "headers"))] {
//! use wsloop::client::{Client, ClientOptions};
//! use wsloop::{Message, Peer};
//!
//! let options = ClientOptions::new("wss://device-hub.example:8443/server?site=7")
//!     .with_ca("/etc/wsloop/ca.pem")
//!     .header("X-Device-Id", "hotdog-17")?;
//! let ex = smol::Executor::new();
//! smol::block_on(ex.run(async {
//!     let answer = |_: &Peer, m: Message| Some(m.seed_reply());
//!     let client = Client::connect(&ex, options, answer).await?;
//!     client.close().await
//! }))?;
//! # }
//! # Ok::<(), wsloop::Error>(())
//! ```

#[cfg(feature = "exec")]
mod device;
mod dial;
#[cfg(feature = "exec")]
mod exec;
#[cfg(feature = "proxy")]
mod proxy;
#[cfg(feature = "exec")]
mod record;
mod stream;
mod url;

use std::net::SocketAddr;
#[cfg(feature = "tls")]
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_io::Timer;
use async_tungstenite::tungstenite::protocol::Role;
use async_tungstenite::tungstenite::{Bytes, Message as Frame};
use futures_lite::io::BufReader;
use futures_lite::{future, ready, AsyncBufReadExt, Stream};

use crate::connection::session::{PendingReply, RequestError, SendError, Session};
use crate::spawn::{BoxTask, Spawn};
use crate::time::human;
use crate::{
    Config, Connection, Ended, Error, Handler, Message, Protocol, Seed, SeedHandler, CLOSE_NORMAL,
};
use dial::Dialer;

#[cfg(feature = "exec")]
pub use device::{run_device, DeviceOptions, DEFAULT_EXEC_CONCURRENCY};
#[cfg(feature = "exec")]
pub use exec::{DEFAULT_EXEC_TIMEOUT, STDERR_TAIL, STDOUT_CAP};
#[cfg(feature = "proxy")]
pub use proxy::Proxy;
#[cfg(feature = "exec")]
pub use record::{interrupted_reply, REMEMBERED_COMMANDS};
pub use stream::ClientStream;
pub use url::Target;

/// The original client's request interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// First wait before reconnecting; doubles per failed attempt.
pub const DEFAULT_RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// Longest wait between reconnect attempts.
pub const DEFAULT_MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// Server-pushed commands [`run`] may hold before it stops reading.
const PUSH_QUEUE: usize = 64;

/// A connection the client dialled: over TCP, or TLS for `wss://`.
pub type ClientConnection = Connection<ClientStream>;

/// Dials `address` once (`HOST:PORT` for `ws://HOST:PORT/server`, or a
/// `ws://`/`wss://` URL with feature `urls`), with `Origin: http://{address}/` (as the Go
/// client does), within the handshake timeout. Proxies come from the
/// environment; for more, see [`connect_with`].
pub async fn connect(address: &str, config: &Config) -> Result<ClientConnection, Error> {
    let options = ClientOptions {
        config: config.clone(),
        ..ClientOptions::new(address)
    };
    connect_with(&options).await
}

/// [`connect`] to another endpoint: `path` (starting with `/`, maybe with
/// a query: `/runCase?case=1`) instead of the address's own.
pub async fn connect_to(
    address: &str,
    path: &str,
    config: &Config,
) -> Result<ClientConnection, Error> {
    let options = ClientOptions {
        config: config.clone(),
        ..ClientOptions::new(address)
    };
    options.config.validate()?;
    let (stream, leftover, addr) = Dialer::new(&options, Some(path))?.dial().await?;
    Ok(Connection::new(stream, Role::Client, leftover, Some(addr), &options.config).await)
}

/// [`connect`] with everything [`ClientOptions`] says about the dial
/// (token, headers, CA, proxy); its reconnect policy is not used.
pub async fn connect_with(options: &ClientOptions) -> Result<ClientConnection, Error> {
    options.config.validate()?;
    let (stream, leftover, addr) = Dialer::new(options, None)?.dial().await?;
    Ok(Connection::new(stream, Role::Client, leftover, Some(addr), &options.config).await)
}

/// Dials for the reconnecting client: the connection sends from (and routes
/// replies into) `session`, which outlives it.
async fn dial_session<P: Protocol>(
    dialer: &Dialer,
    session: &Session,
) -> Result<Connection<ClientStream, P>, Error> {
    let (stream, leftover, addr) = dialer.dial().await?;
    let session = Some(session.clone());
    let config = &dialer.config;
    Ok(Connection::open(stream, Role::Client, leftover, Some(addr), config, session).await)
}

/// When and how often [`Client`] reconnects.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
        // In whole nanoseconds: integer jitter, no float code for it.
        let full = u64::try_from(full.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(full / 2 + fastrand::u64(..=full - full / 2))
    }
}

/// What a [`Client`] (and [`run`]) does.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// The server: `HOST:PORT` (path `/server`) or, with feature `urls`, a
    /// `ws://`/`wss://` URL (see [`Target::parse`]).
    pub address: String,
    /// Connection settings.
    pub config: Config,
    /// Reconnect policy.
    pub reconnect: Reconnect,
    /// Shared secret sent as `Authorization: Bearer` (see [`AccessPolicy`](crate::AccessPolicy)).
    pub token: Option<String>,
    /// The device's name, asked for as `?client=NAME` on the upgrade (set
    /// it with [`with_id`](Self::with_id), which checks it); `None`:
    /// anonymous. Feature `client-id`.
    #[cfg(feature = "client-id")]
    pub id: Option<String>,
    /// More handshake headers (auth, routing); add them with
    /// [`header`](Self::header), which checks them. An `Origin` here
    /// replaces the default one. Feature `headers`.
    #[cfg(feature = "headers")]
    pub headers: Vec<(String, String)>,
    /// `wss://`: a PEM file of CA certificates to trust besides the
    /// system's (a private CA).
    #[cfg(feature = "tls")]
    pub ca: Option<PathBuf>,
    /// Which HTTP `CONNECT` proxy to go through ([`Proxy::Environment`]).
    #[cfg(feature = "proxy")]
    pub proxy: Proxy,
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
            #[cfg(feature = "client-id")]
            id: None,
            #[cfg(feature = "headers")]
            headers: Vec::new(),
            #[cfg(feature = "tls")]
            ca: None,
            #[cfg(feature = "proxy")]
            proxy: Proxy::default(),
            interval: DEFAULT_INTERVAL,
            count: None,
            stdin: false,
        }
    }

    /// Adds the handshake header `name: value`, refusing a malformed name,
    /// a value with a line break or other control character (it would end
    /// the header and start another), and the headers the handshake itself
    /// sets (`Host`, `Upgrade`, `Connection`, `Sec-WebSocket-*`, ...).
    /// Feature `headers`.
    #[cfg(feature = "headers")]
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, Error> {
        check_header(name, value)?;
        self.headers.push((name.to_string(), value.to_string()));
        Ok(self)
    }

    /// Names the device `id` (1 to [`MAX_ID_LEN`] characters of
    /// `A-Za-z0-9._-`): it dials with `?client=ID` added to the query.
    /// Feature `client-id`.
    #[cfg(feature = "client-id")]
    pub fn with_id(mut self, id: &str) -> Result<Self, Error> {
        check_id(id)?;
        self.id = Some(id.to_string());
        Ok(self)
    }

    /// Trusts the CA certificates in the PEM file `ca` for `wss://`,
    /// besides the system's.
    #[cfg(feature = "tls")]
    pub fn with_ca(mut self, ca: impl Into<PathBuf>) -> Self {
        self.ca = Some(ca.into());
        self
    }
}

/// Headers the handshake writes itself (or that would change how the
/// request is framed); a caller's copy would contradict them.
#[cfg(feature = "headers")]
const RESERVED_HEADERS: [&str; 6] = [
    "Host",
    "Upgrade",
    "Connection",
    "Content-Length",
    "Transfer-Encoding",
    "Proxy-Authorization",
];

/// The longest device name (`--id`), as the server accepts it.
#[cfg(feature = "client-id")]
pub const MAX_ID_LEN: usize = 64;

/// Checks a device name: 1 to [`MAX_ID_LEN`] of `A-Za-z0-9._-`, so it
/// goes into the query as it is, with nothing to escape.
#[cfg(feature = "client-id")]
pub fn check_id(id: &str) -> Result<(), Error> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.chars().all(allowed) {
        return Err(Error::Config(format!(
            "client id {id:?}: 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 . _ -"
        )));
    }
    Ok(())
}

/// Checks one caller-given handshake header (see [`ClientOptions::header`]).
#[cfg(feature = "headers")]
pub(crate) fn check_header(name: &str, value: &str) -> Result<(), Error> {
    // A field name is an RFC 9110 token: no spaces, colons or controls.
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(tchar) {
        return Err(Error::Config(format!("{name:?} is not a header name")));
    }
    if RESERVED_HEADERS
        .iter()
        .any(|reserved| reserved.eq_ignore_ascii_case(name))
        || name.to_ascii_lowercase().starts_with("sec-websocket-")
    {
        return Err(Error::Config(format!(
            "header {name} is the handshake's own"
        )));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(Error::Config(format!(
            "header {name}: the value has a line break or control character"
        )));
    }
    Ok(())
}

/// A client that keeps one logical connection up across reconnects.
/// Dropping it stops the supervisor task; [`close`](Self::close) does so
/// gracefully. It speaks the [`Protocol`] `P` of its handler ([`Seed`] by
/// default).
pub struct Client<P = Seed> {
    session: Session,
    addr: Option<SocketAddr>,
    /// The supervisor's verdict, sent once when it ends.
    verdict: async_channel::Receiver<Result<(), Error>>,
    /// Dropped (with the client) to cancel the supervisor task.
    _cancel: async_channel::Sender<()>,
    /// Dropped to interrupt a reconnect wait when closing.
    stop: async_channel::Sender<()>,
    /// Reports closed once the supervisor has finished.
    finished: async_channel::Receiver<()>,
    protocol: std::marker::PhantomData<fn() -> P>,
}

impl<P: Protocol> Client<P> {
    /// Connects to `options.address`, then keeps the connection up from a
    /// task spawned on `spawner` (any [`Spawn`]: a smol `Executor` or
    /// `LocalExecutor`, an `Arc` of one, `|task| { tokio::spawn(task); }`).
    /// `handler` answers what the server pushes; replies to this client's
    /// own requests never reach it. Dropping the client cancels that task.
    ///
    /// A server that cannot be reached yet (a device that boots before
    /// the network) is retried with the [`Reconnect`] backoff, up to its
    /// `max_attempts`; with reconnecting off, the first failure is
    /// returned. A refusal that will stand ([`Error::is_transient`] is
    /// false: a 401, a bad certificate) is returned at once.
    pub async fn connect(
        spawner: &impl Spawn,
        options: ClientOptions,
        handler: impl Handler<P>,
    ) -> Result<Client<P>, Error> {
        let (client, supervisor) = Client::start(options, handler).await?;
        spawner.spawn(supervisor);
        Ok(client)
    }

    /// [`connect`](Self::connect) up to the spawn: the client and its
    /// supervisor task, one copy of this code whatever the spawner type.
    async fn start(
        options: ClientOptions,
        handler: impl Handler<P>,
    ) -> Result<(Client<P>, BoxTask), Error> {
        let config = &options.config;
        config.validate()?;
        let dialer = Dialer::new(&options, None)?;
        let session = Session::new(config.outbound_capacity, config.request_timeout);
        let (stop, stopped) = async_channel::bounded(1);
        let first = match dial_session::<P>(&dialer, &session).await {
            // Said here only: `redial` says it for a connection it makes.
            Ok(conn) => {
                log::info!("connected to {}", dialer.target.url());
                conn
            }
            Err(err) if !err.is_transient() || !options.reconnect.enabled => return Err(err),
            Err(err) => {
                log::warn!("cannot reach {} yet: {err}", dialer.target.url());
                let retry = redial(&dialer, &session, &options.reconnect, &stopped, Some(err));
                match retry.await {
                    Some(result) => result?,
                    // Nothing closes `stop` before the client exists.
                    None => return Err(Error::ConnectionClosed("closed while connecting".into())),
                }
            }
        };
        let addr = first.peer().addr();
        let (finished_tx, finished) = async_channel::bounded(1);
        let supervisor = Supervisor {
            options,
            dialer,
            session: session.clone(),
            handler: Arc::new(handler),
            stopped,
            _finished: finished_tx,
            protocol: std::marker::PhantomData,
        };
        let (verdict_tx, verdict) = async_channel::bounded(1);
        let (cancel, cancelled) = async_channel::bounded::<()>(1);
        let task = Box::pin(async move {
            // Either the supervisor's verdict, or nothing when the client
            // was dropped (which drops the supervisor and its connection).
            let run = async { Some(supervisor.run(first).await) };
            let cancel = async {
                let _ = cancelled.recv().await;
                None
            };
            if let Some(result) = future::or(run, cancel).await {
                let _ = verdict_tx.try_send(result);
            }
        });
        let client = Client {
            session,
            addr,
            verdict,
            _cancel: cancel,
            stop,
            finished,
            protocol: std::marker::PhantomData,
        };
        Ok((client, task))
    }

    /// The server's address, as first connected (the proxy's, through one).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Queues `message` (fire and forget), encoded in `P`. While
    /// disconnected it waits in the queue and goes out after the reconnect.
    pub fn send(&self, message: P::Message) -> Result<(), SendError<P::Message>> {
        self.session.send_message::<P>(message)
    }

    /// Queues one raw text frame, as [`send`](Self::send) does a message.
    pub fn send_text(&self, text: impl Into<String>) -> Result<(), SendError<Frame>> {
        self.session.send_frame(Frame::text(text.into()))
    }

    /// Queues one raw binary frame, as [`send`](Self::send) does a message.
    pub fn send_binary(&self, bytes: impl Into<Bytes>) -> Result<(), SendError<Frame>> {
        self.session.send_frame(Frame::Binary(bytes.into()))
    }

    /// Sends `request` under a fresh correlation id and waits for its reply.
    pub async fn request_message(&self, request: P::Message) -> Result<P::Message, RequestError> {
        self.start_request_message(request)?.wait().await
    }

    /// Queues `request` under a fresh correlation id now; await
    /// [`PendingReply::wait`] for the reply.
    pub fn start_request_message(
        &self,
        request: P::Message,
    ) -> Result<PendingReply<P>, RequestError> {
        self.session.start_request_message::<P>(request)
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
        self.session.close(CLOSE_NORMAL, "");
        drop(self.stop);
        // `self._cancel` lives until the verdict is in: this is no cancel.
        let result = match self.verdict.recv().await {
            Ok(result) => result,
            // The spawner dropped the task (its executor is gone).
            Err(_) => Err(Error::ConnectionClosed("client task dropped".into())),
        };
        self.session.shut();
        result
    }
}

impl Client {
    /// Sends `command` under a fresh `requestID` and waits for its reply.
    pub async fn request(&self, command: impl Into<String>) -> Result<Message, RequestError> {
        self.session.request(command).await
    }

    /// Queues a request now; await [`PendingReply::wait`] for the reply.
    pub fn start_request(&self, command: impl Into<String>) -> Result<PendingReply, RequestError> {
        self.session.start_request(command)
    }
}

/// The task that alone owns the client's connections, one at a time.
struct Supervisor<P, H> {
    options: ClientOptions,
    /// The prepared dial: address, proxy, TLS roots, headers.
    dialer: Dialer,
    session: Session,
    handler: Arc<H>,
    /// Closed when the client is closing: stop waiting to reconnect.
    stopped: async_channel::Receiver<()>,
    /// Dropped when this task ends, which [`Client::stopped`] observes.
    _finished: async_channel::Sender<()>,
    protocol: std::marker::PhantomData<fn() -> P>,
}

impl<P: Protocol, H: Handler<P>> Supervisor<P, H> {
    /// Runs connections until the client closes or reconnecting gives up.
    async fn run(self, first: Connection<ClientStream, P>) -> Result<(), Error> {
        let mut conn = first;
        loop {
            // The hooks bracket every connection, the first and each
            // reconnect alike.
            let peer = conn.peer().clone();
            self.handler.on_connect(&peer);
            let ended = conn.run(self.handler.clone()).await;
            self.handler.on_disconnect(&peer, &ended);
            if let Ok(Ended::Closed(_)) = ended {
                return Ok(()); // we closed it: Client::close
            }
            let why = match ended {
                Ok(ended) => ended.to_string(),
                Err(err) => err.to_string(),
            };
            log::warn!(
                "connection to {} lost: {}",
                self.options.address,
                crate::log_safe::quote(&why)
            );
            if !self.options.reconnect.enabled {
                self.session.shut();
                return Err(Error::ConnectionClosed(why));
            }
            let policy = &self.options.reconnect;
            conn = match redial(&self.dialer, &self.session, policy, &self.stopped, None).await {
                Some(Ok(conn)) => conn,
                Some(Err(err)) => {
                    self.session.shut();
                    return Err(err);
                }
                None => return Ok(()), // closed while waiting
            };
        }
    }
}

/// Dials with `policy`'s backoff until it works (`Some(Ok)`), attempts run
/// out or the server refuses for good (`Some(Err)`), or `stopped` closes
/// (`None`). `first_failure` is the first dial's at start, which counts
/// as an attempt; after a drop there is none.
async fn redial<P: Protocol>(
    dialer: &Dialer,
    session: &Session,
    policy: &Reconnect,
    stopped: &async_channel::Receiver<()>,
    first_failure: Option<Error>,
) -> Option<Result<Connection<ClientStream, P>, Error>> {
    let url = dialer.target.url();
    let (verb, noun, mut attempt) = match first_failure {
        Some(_) => ("connecting", "connect", 1),
        None => ("reconnecting", "reconnect", 0),
    };
    let give_up = |attempt: u32, err: &Error| {
        let why = format!("gave up {verb} after {attempt} attempts: {err}");
        Error::ConnectionClosed(why)
    };
    if let Some(err) = &first_failure {
        if policy.max_attempts.is_some_and(|max| attempt >= max) {
            return Some(Err(give_up(attempt, err)));
        }
    }
    loop {
        attempt += 1;
        let delay = policy.delay(attempt);
        log::info!("{verb} to {url} in {} (attempt {attempt})", human(delay));
        let wait = async {
            Timer::after(delay).await;
            true
        };
        let closing = async {
            let _ = stopped.recv().await;
            false
        };
        if !future::or(wait, closing).await {
            return None;
        }
        match dial_session(dialer, session).await {
            Ok(conn) => {
                log::info!("connected to {url}");
                return Some(Ok(conn));
            }
            // Asking again will not change the answer.
            Err(err) if !err.is_transient() => return Some(Err(err)),
            Err(err) if policy.max_attempts.is_some_and(|max| attempt >= max) => {
                return Some(Err(give_up(attempt, &err)));
            }
            Err(err) => log::warn!(
                "{noun} attempt {attempt} failed: {}",
                crate::log_safe::quote(&err.to_string())
            ),
        }
    }
}

/// Something [`run`] reports as it happens.
#[derive(Debug)]
#[non_exhaustive]
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
    /// The caller's `stop` completed.
    Stop,
}

/// Runs the seed client: connect, then send a request every
/// `options.interval` (or per stdin line) and report each reply, until
/// `options.count` requests have ended or input ended. Commands pushed by
/// the server are answered and reported. Tasks are spawned on `spawner`.
///
/// Returns an error when the server is unreachable, or when the connection
/// drops and reconnecting is off or gives up.
pub async fn run(
    spawner: &impl Spawn,
    options: &ClientOptions,
    report: impl FnMut(Event<'_>),
) -> Result<Summary, Error> {
    let (pushes_tx, pushes) = async_channel::bounded(PUSH_QUEUE);
    let handler = SeedHandler::forwarding(pushes_tx);
    run_with(
        spawner,
        options,
        handler,
        pushes,
        true,
        future::pending(),
        report,
    )
    .await
}

/// [`run`] with any `handler` that passes the commands it takes on to
/// `pushes`; without `requests` the client sends none of its own and
/// runs until it stops. When `stop` completes, the client closes (Close
/// 1000) and the summary so far is returned.
pub(crate) async fn run_with(
    spawner: &impl Spawn,
    options: &ClientOptions,
    handler: impl Handler,
    pushes: async_channel::Receiver<Message>,
    requests: bool,
    stop: impl std::future::Future<Output = ()>,
    mut report: impl FnMut(Event<'_>),
) -> Result<Summary, Error> {
    // Polled by every turn of the loop below, so pinned once here.
    let mut stop = std::pin::pin!(stop);
    let client = Client::connect(spawner, options.clone(), handler).await?;
    if let Some(addr) = client.addr() {
        report(Event::Connected(addr));
    }
    // Each request's wait runs in its own task and reports here, so replies
    // are printed as they arrive, in whatever order.
    let (outcomes_tx, outcomes) = async_channel::unbounded();
    let mut commands = Commands::new(options, requests);
    let mut summary = Summary::default();
    // Done after `count` outcomes, or once input has ended and every
    // request sent has its outcome.
    let done = |s: &Summary, input_ended: bool| {
        options.count.is_some_and(|n| s.finished() >= n) || (input_ended && s.finished() >= s.sent)
    };

    // Pinned once: the loop below polls them in place, turn after turn.
    let mut outcomes = std::pin::pin!(outcomes);
    let mut pushes = std::pin::pin!(pushes);
    let mut finished = std::pin::pin!(client.finished.clone());

    while !done(&summary, commands.finished) {
        // One hand-written poll over every source, in a fixed order: a
        // state machine of its own, not one per source (smaller code).
        let sent = summary.sent;
        let wake = future::poll_fn(|cx| {
            if let Poll::Ready(outcome) = outcomes.as_mut().poll_next(cx) {
                return Poll::Ready(outcome.map_or(Wake::Stopped, |(id, o)| Wake::Outcome(id, o)));
            }
            if let Poll::Ready(push) = pushes.as_mut().poll_next(cx) {
                return Poll::Ready(push.map_or(Wake::Stopped, Wake::Pushed));
            }
            if let Poll::Ready(command) = commands.poll_next(cx, sent) {
                return Poll::Ready(Wake::Send(command));
            }
            // Any message or the channel's close: the supervisor is done.
            if finished.as_mut().poll_next(cx).is_ready() {
                return Poll::Ready(Wake::Stopped);
            }
            stop.as_mut().poll(cx).map(|()| Wake::Stop)
        })
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
                spawner.spawn(Box::pin(async move {
                    let id = request.id();
                    let _ = outcomes.send((id, request.wait().await)).await;
                }));
            }
            Wake::Send(None) => commands.finished = true,
            Wake::Stop => break,
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
    lines: Option<futures_lite::io::Lines<BufReader<blocking::Unblock<std::io::Stdin>>>>,
    finished: bool,
}

impl Commands {
    /// Commands from `options`' source; none at all without `requests`.
    fn new(options: &ClientOptions, requests: bool) -> Self {
        let (timer, lines) = if !requests {
            (None, None)
        } else if options.stdin {
            let stdin = BufReader::new(blocking::Unblock::new(std::io::stdin()));
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
    fn poll_next(&mut self, cx: &mut Context<'_>, sent: u64) -> Poll<Option<String>> {
        if self.finished {
            return Poll::Pending;
        }
        if let Some(timer) = &mut self.timer {
            ready!(Pin::new(timer).poll_next(cx));
            return Poll::Ready(Some(format!("Eject the hot dog {}.", sent + 1)));
        }
        // No source (a device that only answers): nothing, ever.
        let Some(lines) = self.lines.as_mut() else {
            return Poll::Pending;
        };
        loop {
            match ready!(Pin::new(&mut *lines).poll_next(cx)) {
                // Blank lines are not commands.
                Some(Ok(line)) if line.trim().is_empty() => continue,
                Some(Ok(line)) => return Poll::Ready(Some(line)),
                _ => return Poll::Ready(None),
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
