//! The server: one TCP port that serves static files at `/` and upgrades to
//! the persistent WebSocket loop at `/server`.
//!
//! Accepting is a task of its own on the caller's executor, so any of its
//! threads can take new connections however busy the others are. It admits
//! or refuses each connection by its peer's IP at once (the connection
//! limits), and turns each admitted one into one more task. That task reads
//! one HTTP request head (bounded in size and time), then either answers it
//! as plain HTTP and closes, or completes the WebSocket handshake and runs
//! [`Connection::run`] until the peer leaves.
//!
//! ```no_run
//! # use wsloop::{Config, Message, Peer, Server};
//! let ex = std::sync::Arc::new(smol::Executor::new());
//! smol::block_on(ex.run(async {
//!     let server = Server::bind("127.0.0.1:8080", Config::default()).await?;
//!     server.run(&ex, |_: &Peer, m: Message| Some(m.seed_reply()), std::future::pending()).await
//! }))?;
//! # Ok::<(), wsloop::Error>(())
//! ```

pub(crate) mod fd_limit;
pub(crate) mod hub;
pub mod metrics;

use std::borrow::Cow;
use std::future::Future;
use std::io::Write;
use std::marker::PhantomData;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_channel::Sender;
use async_io::{Async, Timer};
use async_tungstenite::tungstenite::protocol::Role;
use futures_lite::{future, AsyncWrite, AsyncWriteExt};

use crate::config::CLOSE_TIMEOUT;
use crate::http::access::{AccessPolicy, Admission, Ticket};
#[cfg(feature = "trusted-proxy")]
use crate::http::forwarded::TrustedProxies;
use crate::http::handshake;
use crate::http::{
    read_request_head, reason_phrase, write_response, HeadError, Request, StaticFiles, WriteTimeout,
};
use crate::log_safe::quote;
use crate::server::metrics::Refusal;
use crate::spawn::{SharedSpawn, Spawn};
use crate::tcp::Tcp;
use crate::time::timeout;
#[cfg(feature = "tls")]
use crate::tls::server::ServerTls;
use crate::{Config, Connection, Ended, Error, Handler, Hub, Protocol, Seed, CLOSE_GOING_AWAY};

/// The path of the WebSocket endpoint, as in the original program.
pub const WEBSOCKET_PATH: &str = "/server";

/// The path of the JSON status document (live clients, message totals,
/// uptime) that the browser console polls.
pub const STATS_PATH: &str = "/stats";

/// The first byte of every TLS record that opens a handshake (RFC 8446
/// 5.1, `handshake(22)`); a plain HTTP request starts with a letter.
#[cfg(feature = "tls")]
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The path of the Prometheus metrics (feature `metrics`).
pub const METRICS_PATH: &str = "/metrics";

/// What a connection task can run on: TCP, or TLS over it.
trait Stream: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + Send + 'static {
    /// The TCP stream itself when no TLS is layered on it (a plain port
    /// looks for TLS clients that came to the wrong place).
    #[cfg(feature = "tls")]
    fn plain_tcp(&self) -> Option<&Tcp>;
}

impl Stream for Tcp {
    #[cfg(feature = "tls")]
    fn plain_tcp(&self) -> Option<&Tcp> {
        Some(self)
    }
}

#[cfg(feature = "tls")]
impl Stream for Box<crate::tls::stream::TlsStream<Tcp>> {
    fn plain_tcp(&self) -> Option<&Tcp> {
        None
    }
}

/// How long shutdown waits for connections to finish their close handshake.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Pause after a failed `accept` (for example out of file descriptors), so
/// the accept loop does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Most connections the accept task takes in one go before it yields, so
/// that a connection flood shares its executor thread with the connections
/// already running.
const ACCEPT_BATCH: usize = 64;

/// Longest one accept batch runs before the accept task yields (each
/// accept is a syscall plus a spawn; 64 of them take well under this).
const ACCEPT_BATCH_TIME: Duration = Duration::from_millis(2);

/// A bound listening socket with its settings, ready to [`run`](Server::run),
/// speaking the [`Protocol`] `P` on its WebSocket connections ([`Seed`]
/// unless [`speaking`](Server::speaking) says otherwise).
pub struct Server<P = Seed> {
    listener: Async<TcpListener>,
    shared: Arc<Shared>,
    /// The hub seen in `P`, made once: [`hub`](Server::hub) hands out
    /// clones of this `Arc` rather than a new view per call.
    hub: Arc<Hub<P>>,
}

/// What every connection task of one server reads.
struct Shared {
    config: Config,
    files: StaticFiles,
    hub: Arc<Hub>,
    /// Where upgrades are accepted; `None` means at any path.
    endpoint: Option<String>,
    started: Instant,
    access: AccessPolicy,
    admission: Arc<Admission>,
    /// The bound address, which a request's `Host` must name.
    local: SocketAddr,
    /// Whose forwarding headers name the client (`--trusted-proxy`).
    #[cfg(feature = "trusted-proxy")]
    proxies: TrustedProxies,
    /// Serve `/metrics` without the token.
    public_metrics: bool,
    #[cfg(feature = "tls")]
    tls: Option<ServerTls>,
    /// Named clients' commands and the operator API.
    #[cfg(feature = "forwarder")]
    forwarder: Option<crate::forwarder::Forwarder>,
}

impl Server {
    /// Binds `address` (for example `127.0.0.1:8080`; port 0 picks a free
    /// port) after checking `config`. Serves the built-in page at `/` until
    /// [`with_static_files`](Self::with_static_files) says otherwise.
    pub async fn bind(address: &str, config: Config) -> Result<Server, Error> {
        config.validate()?;
        let addr = resolve(address).await?;
        let listener = Async::<TcpListener>::bind(addr)?;
        let local = listener.get_ref().local_addr()?;
        let hub = Arc::new(Hub::new());
        Ok(Server {
            listener,
            hub: hub.clone(),
            shared: Arc::new(Shared {
                config,
                files: StaticFiles::builtin(),
                hub,
                endpoint: Some(WEBSOCKET_PATH.to_string()),
                started: Instant::now(),
                access: AccessPolicy::default(),
                admission: Arc::new(Admission::default()),
                local,
                #[cfg(feature = "trusted-proxy")]
                proxies: TrustedProxies::new(),
                public_metrics: false,
                #[cfg(feature = "tls")]
                tls: None,
                #[cfg(feature = "forwarder")]
                forwarder: None,
            }),
        })
    }

    /// The same server, speaking protocol `Q` (for example
    /// [`Json<T>`](crate::Json) of the application's own types): its
    /// [`hub`](Server::hub) and handler are `Q`'s. The HTTP side and every
    /// limit stay as they are.
    pub fn speaking<Q: Protocol>(self) -> Server<Q> {
        Server {
            listener: self.listener,
            hub: Arc::new(self.hub.retyped()),
            shared: self.shared,
        }
    }
}

impl<P: Protocol> Server<P> {
    /// Serves `files` at `/` instead of the built-in page.
    pub fn with_static_files(mut self, files: StaticFiles) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.files = files;
        }
        self
    }

    /// Accepts WebSocket upgrades at `path` instead of [`WEBSOCKET_PATH`];
    /// `None` accepts them at any path (the echo example uses this).
    pub fn with_websocket_path(mut self, path: Option<&str>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.endpoint = path.map(str::to_string);
        }
        self
    }

    /// Sets who may connect: Host and origin checks, token, connection limits.
    pub fn with_access(mut self, access: AccessPolicy) -> Self {
        if access.allow_any_origin {
            log::warn!("origin check disabled: any web page may open a socket to this server");
        }
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.access = access;
        }
        self
    }

    /// Serves `https://` and `wss://` instead of plain HTTP on this port
    /// (see [`ServerTls`] for an example and for certificate renewal). The
    /// TLS handshake counts against the handshake timeout.
    #[cfg(feature = "tls")]
    pub fn with_tls(mut self, tls: ServerTls) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.tls = Some(tls);
        }
        self
    }

    /// Believes the forwarding headers (`X-Forwarded-For`, `X-Real-IP`,
    /// `Forwarded`) of connections from these proxies: the client address
    /// they name is the one limits, logs, [`Peer::addr`](crate::Peer::addr)
    /// and `/stats` use.
    #[cfg(feature = "trusted-proxy")]
    pub fn with_trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.proxies = proxies;
        }
        self
    }

    /// Runs `forwarder` for named clients (`/server?client=NAME`) and
    /// serves its operator API under `/api/`. Spawn its
    /// [`run`](crate::forwarder::Forwarder::run) task beside the server.
    #[cfg(feature = "forwarder")]
    pub fn with_forwarder(mut self, forwarder: crate::forwarder::Forwarder) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.forwarder = Some(forwarder);
        }
        self
    }

    /// Serves `/metrics` to anyone, even when a token is set.
    pub fn with_public_metrics(mut self, public: bool) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.public_metrics = public;
        }
        self
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.listener.get_ref().local_addr()?)
    }

    /// The registry of live WebSocket connections, for pushing and listing.
    /// Every call returns the same `Arc` (nothing is allocated).
    pub fn hub(&self) -> Arc<Hub<P>> {
        self.hub.clone()
    }

    /// Accepts connections until `shutdown` completes, on a task of its
    /// own on `spawner`, spawning one more task per connection there. Then
    /// it stops accepting, sends Close 1001 to every peer and waits up to
    /// [`SHUTDOWN_GRACE`] for them to finish.
    ///
    /// `spawner` is any [`Spawn`]: an `Arc<smol::Executor>` (the accept
    /// task keeps a clone of it, hence `Clone` and `'static`), or a closure
    /// such as `|task| { tokio::spawn(task); }`.
    pub async fn run<S, H>(
        self,
        spawner: &S,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error>
    where
        S: Spawn + Clone + Send + Sync + 'static,
        H: Handler<P>,
    {
        self.run_on(Arc::new(spawner.clone()), handler, shutdown)
            .await
    }

    /// [`run`](Self::run) with the spawner shared: one copy of this code
    /// whatever spawner type the callers use.
    async fn run_on<H: Handler<P>>(
        self,
        spawner: SharedSpawn,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        // Every connection task holds a clone of `alive`; when the last one
        // is dropped, `all_done` reports the channel closed.
        let (alive, all_done) = async_channel::bounded::<()>(1);
        log::info!("listening on {}", self.local_addr()?);
        let shared = self.shared.clone();
        // The accept task runs until `stop` is dropped, then drops the
        // listener and `accepted`, which `accepting` observes.
        let (stop, stopping) = async_channel::bounded::<()>(1);
        let (accepted, accepting) = async_channel::bounded::<()>(1);
        let acceptor = Acceptor {
            listener: self.listener,
            shared: self.shared,
            handler: Arc::new(handler),
            alive,
            spawner: spawner.clone(),
            protocol: PhantomData,
        };
        spawner.spawn(Box::pin(async move {
            future::or(acceptor.run(), async {
                let _ = stopping.recv().await;
            })
            .await;
            drop(accepted);
        }));
        shutdown.await;

        // Stop accepting (the task owns the listener), then ask every live
        // connection to go away.
        drop(stop);
        let _ = accepting.recv().await;
        let hub = &shared.hub;
        log::info!("shutting down: closing {} connection(s)", hub.len());
        hub.close_all(CLOSE_GOING_AWAY);
        let _ = timeout(SHUTDOWN_GRACE, all_done.recv()).await;
        Ok(())
    }
}

/// The accept task: it alone owns the listening socket, and decides for
/// each new connection whether it is admitted (see [`Shared::admit`]).
struct Acceptor<P, H> {
    listener: Async<TcpListener>,
    shared: Arc<Shared>,
    handler: Arc<H>,
    /// Cloned into every connection task, for the shutdown wait.
    alive: Sender<()>,
    spawner: SharedSpawn,
    protocol: PhantomData<fn() -> P>,
}

impl<P: Protocol, H: Handler<P>> Acceptor<P, H> {
    /// Accepts until cancelled.
    async fn run(self) {
        loop {
            // Wait for readiness first, then accept what is pending.
            // (`Async::accept` would try the syscall on every poll.)
            if let Err(err) = self.listener.readable().await {
                log::warn!("listener failed: {err}");
                Timer::after(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
            self.accept_batch().await;
        }
    }

    /// Accepts pending connections until none is left, or for at most
    /// [`ACCEPT_BATCH`] connections or [`ACCEPT_BATCH_TIME`], then yields so
    /// that the connections already running get their turn.
    async fn accept_batch(&self) {
        let started = Instant::now();
        for _ in 0..ACCEPT_BATCH {
            match self.listener.get_ref().accept() {
                Ok((stream, addr)) => self.take(stream, addr),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(err) => {
                    // For example out of file descriptors: back off.
                    log::warn!("accept failed: {err}");
                    Timer::after(ACCEPT_ERROR_BACKOFF).await;
                    return;
                }
            }
            if started.elapsed() >= ACCEPT_BATCH_TIME {
                break;
            }
        }
        future::yield_now().await;
    }

    /// Admits one accepted connection and spawns its task, or refuses it
    /// at once, so that a refused peer holds no descriptor afterwards.
    fn take(&self, stream: TcpStream, addr: SocketAddr) {
        self.shared.hub.metrics.accepted();
        let early = match self.shared.admit(addr) {
            Ok(early) => early,
            Err(why) => {
                self.shared.hub.metrics.refused(Refusal::Limit);
                crate::log_safe::refused(addr, 503, why);
                return refuse_at_accept(stream, why);
            }
        };
        match Async::new(stream).and_then(Tcp::new) {
            Ok(stream) => self.spawn_connection(stream, addr, early),
            Err(err) => log::warn!("cannot register a connection: {err}"),
        }
    }

    /// Spawns the task of one admitted TCP connection: on a TLS server the
    /// TLS handshake comes first, in a task type of its own, so that a
    /// plain connection's future holds no room for TLS state.
    fn spawn_connection(&self, stream: Tcp, addr: SocketAddr, early: Option<Ticket>) {
        // The handshake timeout covers TLS and the HTTP head together.
        let started = Instant::now();
        let (shared, handler) = (self.shared.clone(), self.handler.clone());
        let alive = self.alive.clone();
        #[cfg(feature = "tls")]
        if shared.tls.is_some() {
            let task = serve_tls::<P, H>(stream, addr, started, early, shared, handler, alive);
            self.spawner.spawn(Box::pin(task));
            return;
        }
        let task = serve::<Tcp, P, H>(stream, addr, started, early, shared, handler, alive);
        self.spawner.spawn(Box::pin(task));
    }
}

/// Answers a connection refused at accept with a canned 503 and closes it.
/// The write is one non-blocking attempt (a fresh socket's buffer always
/// takes it) and nothing is read: the peer is never waited for. Best
/// effort: a peer whose request had already arrived may see a reset
/// (closing with unread data sends RST) instead of the 503.
fn refuse_at_accept(stream: TcpStream, why: &str) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let body = format!("{why}\n");
    let response = format!(
        "HTTP/1.1 503 {}\r\nContent-Length: {}\r\nConnection: close\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{body}",
        reason_phrase(503),
        body.len()
    );
    let _ = (&stream).write(response.as_bytes());
    let _ = stream.shutdown(Shutdown::Write);
}

impl Shared {
    /// The one place a connection is admitted or refused at accept: by its
    /// peer's IP, against the total and per-IP limits. The ticket frees the
    /// slot when the connection ends. A trusted proxy's connections get
    /// `Ok(None)`: their slot is taken after the head, by the client
    /// address the proxy forwards ([`client_addr`]).
    fn admit(&self, peer: SocketAddr) -> Result<Option<Ticket>, &'static str> {
        #[cfg(feature = "trusted-proxy")]
        if self.proxies.contains(peer.ip()) {
            return Ok(None);
        }
        self.admission.admit(peer.ip(), &self.access).map(Some)
    }

    /// The client name an upgrade claims, checked by the forwarder
    /// (`Err((status, why))` refuses it); always `None` without one.
    fn client_name(&self, request: &Request) -> Result<Option<Box<str>>, (u16, String)> {
        #[cfg(feature = "forwarder")]
        if let Some(forwarder) = &self.forwarder {
            return forwarder.check_name(request);
        }
        let _ = request;
        Ok(None)
    }

    /// Whether this upgrade must pass the shared token check: named
    /// clients whose own token proved their name need not.
    fn needs_shared_token(&self, named: bool) -> bool {
        #[cfg(feature = "forwarder")]
        if let Some(forwarder) = &self.forwarder {
            return forwarder.needs_shared_token(named);
        }
        let _ = named;
        true
    }

    /// Whether `path` is where WebSocket upgrades are accepted.
    fn is_endpoint(&self, path: &str) -> bool {
        self.endpoint
            .as_deref()
            .is_none_or(|endpoint| endpoint == path)
    }

    /// The `/stats` document: live clients, message totals, uptime.
    fn stats_json(&self) -> String {
        let stats = self.hub.stats();
        format!(
            "{{\"clients\":{},\"received\":{},\"sent\":{},\"uptime_secs\":{}}}",
            stats.clients,
            stats.received,
            stats.sent,
            self.started.elapsed().as_secs()
        )
    }
}

/// Resolves `host:port` to the first address it names.
async fn resolve(address: &str) -> Result<SocketAddr, Error> {
    crate::resolve::resolve(address)
        .await
        .map_err(|e| Error::Config(format!("bad address {address:?}: {e}")))?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Config(format!("address {address:?} resolves to nothing")))
}

/// The first byte the peer sent, without taking it from the stream; `None`
/// if it closed (or failed) first.
#[cfg(feature = "tls")]
async fn first_byte(stream: &Tcp) -> Option<u8> {
    let mut byte = [0u8];
    match stream.0.peek(&mut byte).await {
        Ok(1) => Some(byte[0]),
        _ => None,
    }
}

/// On a plain port: whether the peer opens with a TLS ClientHello (it
/// then gets a 400 that says so, its one log line). `None` only when the
/// peer closed before sending anything; a peer silent for the whole budget
/// gets its 408 from the head read.
#[cfg(feature = "tls")]
async fn opens_with_tls(stream: &Tcp, budget: Duration) -> Option<bool> {
    match timeout(budget, first_byte(stream)).await {
        Some(Some(byte)) => Some(byte == TLS_HANDSHAKE_RECORD),
        Some(None) => None,
        None => Some(false),
    }
}

/// The reason a TLS client gets on a plain port.
#[cfg(feature = "tls")]
const TLS_ON_PLAIN_PORT: &str =
    "TLS handshake on a plain-HTTP port; use http:// and ws:// here (or serve TLS with --cert/--key)";

/// On the TLS port: the TLS stream, once its handshake is done within the
/// handshake timeout. A plain HTTP request gets one log line and a 400 in
/// plain HTTP; other failures are counted and logged at debug level.
#[cfg(feature = "tls")]
async fn accept_tls(
    mut stream: Tcp,
    addr: SocketAddr,
    shared: &Shared,
) -> Option<Box<crate::tls::stream::TlsStream<Tcp>>> {
    let tls = shared.tls.as_ref()?;
    let budget = shared.config.handshake_timeout;
    let started = Instant::now();
    let metrics = &shared.hub.metrics;
    match timeout(budget, first_byte(&stream)).await {
        Some(Some(TLS_HANDSHAKE_RECORD)) => {}
        Some(Some(_)) => {
            metrics.tls_failed();
            // Read the head first: closing with it unread would reset the
            // connection and lose the answer.
            let _ = timeout(
                budget,
                read_request_head(&mut stream, shared.config.max_request_head_size),
            )
            .await;
            let why = "plain HTTP on the TLS port; use https:// and wss:// here";
            return send(&mut stream, addr, Answer::Refuse(400, Cow::Borrowed(why))).await;
        }
        _ => return None,
    }
    let left = budget.saturating_sub(started.elapsed());
    match timeout(left, crate::tls::stream::accept(stream, tls.config())).await {
        Some(Ok(stream)) => Some(stream),
        Some(Err(err)) => {
            metrics.tls_failed();
            debug!("{addr}: TLS handshake failed: {err}");
            None
        }
        None => {
            metrics.tls_failed();
            debug!("{addr}: no TLS handshake within the handshake timeout");
            None
        }
    }
}

/// A connection on the TLS port: the TLS handshake, then [`serve`]. The
/// handshake's future (the size of the whole TLS handshake's state, and
/// the arguments only it needs) is boxed and freed when it ends; [`Then`]
/// puts the connection's own future in its place.
#[cfg(feature = "tls")]
fn serve_tls<P: Protocol, H: Handler<P>>(
    stream: Tcp,
    addr: SocketAddr,
    started: Instant,
    early: Option<Ticket>,
    shared: Arc<Shared>,
    handler: Arc<H>,
    alive: Sender<()>,
) -> impl Future<Output = ()> + Send {
    let accepting = Box::pin(async move {
        let accepted = accept_tls(stream, addr, &shared).await?;
        Some((accepted, early, shared, handler, alive))
    });
    Then::new(accepting, move |accepted| {
        let (stream, early, shared, handler, alive) = accepted?;
        Some(serve::<_, P, H>(
            stream, addr, started, early, shared, handler, alive,
        ))
    })
}

/// One connection over `stream` (TCP, or TLS once its handshake is done),
/// from its request head to its close. `started` is when it was accepted:
/// the handshake timeout counts from then. `early` is its connection slot
/// when it was taken at accept (`None` for a trusted proxy's connections).
/// `alive` marks the task as running for the shutdown wait.
///
/// Two stages in one place ([`Then`]): the opening (the HTTP handshake and
/// the connection's set-up), boxed with the arguments only it needs, and
/// then the connection's loop. As one `async` block, the arguments (128
/// bytes) would stay in the future for the connection's whole life.
fn serve<S: Stream, P: Protocol, H: Handler<P>>(
    mut stream: S,
    addr: SocketAddr,
    started: Instant,
    early: Option<Ticket>,
    shared: Arc<Shared>,
    handler: Arc<H>,
    alive: Sender<()>,
) -> impl Future<Output = ()> + Send {
    let opening = Box::pin(async move {
        let budget = shared
            .config
            .handshake_timeout
            .saturating_sub(started.elapsed());
        // Not boxed on their own: this whole stage is a box, freed when
        // the connection's loop takes its place.
        let handshake = handshake(&mut stream, addr, &shared, early, budget);
        // The ticket holds the connection's slot until the end.
        let (leftover, client, ticket, name) = handshake.await?;
        // The read guard goes under tungstenite, above TLS.
        let config = &shared.config;
        let conn =
            Connection::<S, P>::open(stream, Role::Server, leftover, Some(client), config, None);
        let conn = named(conn.await, name, &shared);
        Some((conn, client, (ticket, alive), shared, handler))
    });
    Then::new(opening, |opened| {
        let (conn, client, keep, shared, handler) = opened?;
        Some(connected(conn, client, &shared, handler, keep))
    })
}

pin_project_lite::pin_project! {
    /// Runs `first`; then, if `then` makes a second future of its output,
    /// that one. `first` is a box, dropped when it is done: the two stages
    /// share the future's room but for a pointer.
    struct Then<A, B, G> {
        first: Option<A>,
        then: Option<G>,
        #[pin]
        second: Option<B>,
    }
}

impl<A: Future, B, G: FnOnce(A::Output) -> Option<B>> Then<A, B, G> {
    fn new(first: A, then: G) -> Self {
        Then {
            first: Some(first),
            then: Some(then),
            second: None,
        }
    }
}

impl<A, B, G> Future for Then<A, B, G>
where
    A: Future + Unpin,
    B: Future<Output = ()>,
    G: FnOnce(A::Output) -> Option<B>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if let Some(first) = this.first {
            let output = std::task::ready!(Pin::new(first).poll(cx));
            *this.first = None;
            let second = this.then.take().and_then(|then| then(output));
            this.second.set(second);
        }
        match this.second.as_mut().as_pin_mut() {
            Some(second) => second.poll(cx),
            None => Poll::Ready(()),
        }
    }
}

/// Names a connection that claimed a name on its upgrade, and hands its
/// replies to the forwarder first (see [`ReplyRoute`](crate::ReplyRoute)).
fn named<S: Stream, P: Protocol>(
    conn: Connection<S, P>,
    name: Option<Box<str>>,
    shared: &Shared,
) -> Connection<S, P> {
    #[cfg(feature = "forwarder")]
    if let (Some(name), Some(forwarder)) = (name, &shared.forwarder) {
        return conn.with_name(name, forwarder.route());
    }
    #[cfg(not(feature = "forwarder"))]
    let _ = (name, shared);
    conn
}

/// The client's address: the peer's, or the one a trusted proxy forwarded.
fn client_addr(addr: SocketAddr, request: &Request, shared: &Shared) -> SocketAddr {
    #[cfg(feature = "trusted-proxy")]
    return shared.proxies.client_addr(addr, request);
    #[cfg(not(feature = "trusted-proxy"))]
    {
        let _ = (request, shared);
        addr
    }
}

/// Registers an upgraded connection with the hub, and returns its loop
/// followed by its removal from the hub. `keep` is held until then (the
/// connection's slot, the shutdown wait's mark).
fn connected<S: Stream, P: Protocol, H: Handler<P>>(
    conn: Connection<S, P>,
    addr: SocketAddr,
    shared: &Shared,
    handler: Arc<H>,
    keep: impl Send + 'static,
) -> impl Future<Output = ()> + Send {
    let metrics = shared.hub.metrics.clone();
    metrics.upgraded();
    // Ids count per server, not with the process's other connections.
    let conn = conn.with_metrics(metrics).with_id(shared.hub.next_id());
    let id = conn.peer().id();
    shared.hub.insert(conn.peer().clone());
    match conn.peer().name() {
        Some(name) => log::info!("client {id} {:?} connected from {addr}", quote(name)),
        None => log::info!("client {id} connected from {addr}"),
    }
    #[cfg(feature = "forwarder")]
    let forwarder = shared.forwarder.clone();
    #[cfg(feature = "forwarder")]
    if let Some(forwarder) = &forwarder {
        forwarder.connected(&conn.peer().retyped());
    }
    handler.on_connect(conn.peer());
    let hub = shared.hub.clone();
    let peer = conn.peer().clone();
    // `Finish` rather than an async block, which would hold the
    // connection's future twice (as a captured value and as the awaitee).
    Finish {
        fut: conn.run(handler.clone()),
        then: Some(move |ended: Result<Ended, Error>| {
            hub.metrics.ended(&ended);
            match &ended {
                Ok(ended) => log::info!("client {id} ({addr}) disconnected: {ended}"),
                Err(err) => log::warn!("client {id} ({addr}) dropped: {err}"),
            }
            hub.remove(id);
            #[cfg(feature = "forwarder")]
            if let Some(forwarder) = &forwarder {
                forwarder.disconnected(&peer.retyped());
            }
            handler.on_disconnect(&peer, &ended);
            drop(keep);
        }),
    }
}

pin_project_lite::pin_project! {
    /// Runs `fut`, then hands its output to `then` (a `map` that stores the
    /// future only once).
    struct Finish<F, C> {
        #[pin]
        fut: F,
        then: Option<C>,
    }
}

impl<F: Future, C: FnOnce(F::Output)> Future for Finish<F, C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let output = std::task::ready!(this.fut.poll(cx));
        if let Some(then) = this.then.take() {
            then(output);
        }
        Poll::Ready(())
    }
}

/// Reads the request head and answers it. Returns the bytes read past the
/// head, the client's address, its connection slot and the name it claimed
/// (if any) when the connection was upgraded to WebSocket; `None` when it was answered as plain HTTP (or
/// the peer failed) and should be closed. `early` is the slot taken at
/// accept ([`Shared::admit`]); `budget` what is left of the handshake time.
async fn handshake<S: Stream>(
    stream: &mut S,
    addr: SocketAddr,
    shared: &Shared,
    early: Option<Ticket>,
    budget: Duration,
) -> Option<(Vec<u8>, SocketAddr, Ticket, Option<Box<str>>)> {
    let metrics = &shared.hub.metrics;
    // Only a build that can serve TLS looks for TLS clients on a plain
    // port (its 400 names --cert); the small build reads at once.
    #[cfg(feature = "tls")]
    let (budget, tls_on_plain, tls) = match stream.plain_tcp() {
        Some(tcp) => {
            let started = Instant::now();
            let hello = opens_with_tls(tcp, budget).await?;
            (budget.saturating_sub(started.elapsed()), hello, false)
        }
        None => (budget, false, true),
    };
    #[cfg(not(feature = "tls"))]
    let tls = false;
    let head = timeout(
        budget,
        read_request_head(stream, shared.config.max_request_head_size),
    )
    .await;
    // Every response is written under the write timeout: a peer that stops
    // reading (a large static file, say) is dropped after it.
    let stream = &mut WriteTimeout::new(stream, shared.config.write_timeout);
    // The connection's slot, once taken here; held until the refusal is
    // written (as `early`, not yet moved, is), so that peers being refused
    // still count against the limits.
    let mut held: Option<Ticket> = None;
    // Every answer but an upgrade and a static file leaves this block with
    // whom it goes to and what it is, for the one `send` below: one await
    // point for all of them rather than one each in this state machine.
    let (peer, answer): (SocketAddr, Answer) = 'answered: {
        #[cfg(feature = "tls")]
        if tls_on_plain {
            metrics.refused(Refusal::BadRequest);
            break 'answered (addr, Answer::Refuse(400, Cow::Borrowed(TLS_ON_PLAIN_PORT)));
        }
        let (request, leftover) = match head {
            Some(Ok(parsed)) => parsed,
            Some(Err(HeadError::TooLarge)) => {
                metrics.refused(Refusal::BadRequest);
                let why = Cow::Borrowed("request head too large");
                break 'answered (addr, Answer::Refuse(431, why));
            }
            Some(Err(HeadError::Malformed(why))) => {
                metrics.refused(Refusal::BadRequest);
                let why = Cow::Owned(format!("bad request: {why}"));
                break 'answered (addr, Answer::Refuse(400, why));
            }
            Some(Err(HeadError::Closed | HeadError::Io(_))) => return None,
            None => {
                metrics.refused(Refusal::BadRequest);
                break 'answered (addr, Answer::Refuse(408, Cow::Borrowed("request timeout")));
            }
        };

        let client = client_addr(addr, &request, shared);
        // A trusted proxy's connection takes its slot by the forwarded address.
        let ticket =
            match early.map_or_else(|| shared.admission.admit(client.ip(), &shared.access), Ok) {
                Ok(ticket) => ticket,
                Err(why) => {
                    metrics.refused(Refusal::Limit);
                    break 'answered (client, Answer::Refuse(503, Cow::Borrowed(why)));
                }
            };
        held = Some(ticket);
        if let Err(why) = shared.access.check_host(&request, shared.local) {
            // The Host itself is not logged: it is the peer's string.
            metrics.refused(Refusal::BadRequest);
            break 'answered (client, Answer::Refuse(421, Cow::Owned(why)));
        }
        // The operator API, when a forwarder runs (else `/api/` is just a path).
        #[cfg(feature = "forwarder")]
        if let Some(forwarder) = &shared.forwarder {
            if crate::forwarder::api::is_api(request.path()) {
                let budget = shared.config.handshake_timeout;
                crate::forwarder::api::serve(stream, client, &request, leftover, forwarder, budget)
                    .await;
                return None;
            }
        }
        if request.wants_upgrade() {
            let (response, name) = match check_upgrade(&request, shared, tls) {
                Ok(accepted) => accepted,
                Err(answer) => break 'answered (client, answer),
            };
            let written = async {
                stream.write_all(response.as_bytes()).await?;
                stream.flush().await
            };
            let ticket = held.take()?;
            return match timeout(CLOSE_TIMEOUT, written).await {
                Some(Ok(())) => Some((leftover, client, ticket, name)),
                _ => None,
            };
        }
        match request.method.as_str() {
            _ if shared.is_endpoint(request.path()) => {
                let why = Cow::Borrowed("this endpoint speaks WebSocket only");
                break 'answered (client, Answer::Refuse(426, why));
            }
            "GET" | "HEAD" if request.path() == STATS_PATH => {
                if !shared.access.check_token(&request) {
                    break 'answered (client, Answer::Unauthorized);
                }
                let head_only = request.method == "HEAD";
                let page = Answer::Page(STATS_HEADERS, shared.stats_json(), head_only);
                break 'answered (client, page);
            }
            #[cfg(feature = "metrics")]
            "GET" | "HEAD" if request.path() == METRICS_PATH => {
                break 'answered (client, metrics_page(&request, shared));
            }
            "GET" | "HEAD" => {
                match shared.files.serve(&request, stream).await {
                    // The path only: a query string might carry a token.
                    Ok(status) => debug!(
                        "{client}: {} {:?} {status}",
                        request.method,
                        crate::log_safe::quote(request.path())
                    ),
                    Err(err) => debug!(
                        "{client}: {:?} failed: {err}",
                        crate::log_safe::quote(request.path())
                    ),
                }
                let _ = timeout(CLOSE_TIMEOUT, stream.close()).await;
            }
            _ => {
                let why = Cow::Borrowed("only GET and HEAD are supported");
                break 'answered (client, Answer::Refuse(405, why));
            }
        }
        return None;
    };
    let sent = send(stream, peer, answer).await;
    drop(held);
    sent
}

/// `GET /metrics`: the Prometheus text, behind the token unless public.
#[cfg(feature = "metrics")]
fn metrics_page(request: &Request, shared: &Shared) -> Answer {
    if !shared.public_metrics && !shared.access.check_token(request) {
        return Answer::Unauthorized;
    }
    #[cfg_attr(not(feature = "forwarder"), allow(unused_mut))]
    let mut body = shared.hub.metrics.render(&shared.hub);
    // With `--redis`, the cluster's gauges too.
    #[cfg(feature = "forwarder")]
    if let Some(forwarder) = &shared.forwarder {
        body.push_str(&forwarder.metrics_text());
    }
    Answer::Page(METRICS_HEADERS, body, request.method == "HEAD")
}

/// `/stats`'s headers.
const STATS_HEADERS: &[(&str, &str)] = &[
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
];

/// `/metrics`'s headers.
#[cfg(feature = "metrics")]
const METRICS_HEADERS: &[(&str, &str)] = &[
    ("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
    ("Cache-Control", "no-store"),
];

/// A refusal's headers: its body is the one-line reason.
const REFUSAL_HEADERS: &[(&str, &str)] = &[("Content-Type", "text/plain; charset=utf-8")];

/// A 401's headers.
const UNAUTHORIZED_HEADERS: &[(&str, &str)] = &[
    ("WWW-Authenticate", "Bearer"),
    ("Content-Type", "text/plain"),
];

/// How a request that is not upgraded is answered: each kind ends in the
/// one [`send`].
enum Answer {
    /// An error status and a one-line reason (logged, and sent as the body).
    Refuse(u16, Cow<'static, str>),
    /// 401 for a missing or wrong token.
    Unauthorized,
    /// 200 with these headers and this body (left out when the bool says
    /// the request was `HEAD`).
    Page(&'static [(&'static str, &'static str)], String, bool),
}

/// Checks a WebSocket upgrade request: when it is good, the 101 response
/// to write and the client name it claimed (checked against `--tokens`);
/// otherwise how to refuse it. `tls` says whether this connection is TLS:
/// a same-host origin must use its scheme.
fn check_upgrade(
    request: &Request,
    shared: &Shared,
    tls: bool,
) -> Result<(String, Option<Box<str>>), Answer> {
    let metrics = &shared.hub.metrics;
    let refuse = |refusal, status, why| {
        metrics.refused(refusal);
        Answer::Refuse(status, why)
    };
    if !shared.is_endpoint(request.path()) {
        let why = Cow::Borrowed("no WebSocket endpoint here; use /server");
        return Err(refuse(Refusal::BadRequest, 404, why));
    }
    let key = handshake::check_request(request)
        .map_err(|(status, why)| refuse(Refusal::BadRequest, status, Cow::Borrowed(why)))?;
    if let Err(why) = shared.access.check_origin(request, tls) {
        return Err(refuse(Refusal::Origin, 403, Cow::Owned(why)));
    }
    let name = shared.client_name(request).map_err(|(status, why)| {
        let refusal = if status == 400 {
            Refusal::BadRequest
        } else {
            Refusal::Token
        };
        refuse(refusal, status, Cow::Owned(why))
    })?;
    if shared.needs_shared_token(name.is_some()) && !shared.access.check_token(request) {
        metrics.refused(Refusal::Token);
        return Err(Answer::Unauthorized);
    }
    Ok((handshake::switching_protocols(key), name))
}

/// Sends `answer` (a refusal is logged once, rate-limited), then closes.
/// A peer that does not read its answer is not waited for. Always `None`,
/// so callers can `return send(..).await`.
async fn send<T, W: AsyncWrite + Unpin>(
    stream: &mut W,
    client: SocketAddr,
    answer: Answer,
) -> Option<T> {
    let (status, headers, body, head_only) = match answer {
        Answer::Refuse(status, why) => {
            crate::log_safe::refused(client, status, &why);
            let body = format!("{why}\n").into_bytes();
            (status, REFUSAL_HEADERS, Cow::Owned(body), false)
        }
        Answer::Unauthorized => {
            crate::log_safe::refused(client, 401, "missing or wrong token");
            let body = b"missing or wrong token (Authorization: Bearer, or ?token=)\n";
            (401, UNAUTHORIZED_HEADERS, Cow::Borrowed(&body[..]), false)
        }
        Answer::Page(headers, body, head_only) => {
            (200, headers, Cow::Owned(body.into_bytes()), head_only)
        }
    };
    let answer = async {
        write_response(stream, status, headers, &body, head_only).await?;
        stream.close().await
    };
    let _ = timeout(CLOSE_TIMEOUT, answer).await;
    None
}
