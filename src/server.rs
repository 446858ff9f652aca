//! The server: one TCP port that serves static files at `/` and upgrades to
//! the persistent WebSocket loop at `/server`.
//!
//! Each accepted TCP connection becomes one task on the caller's executor.
//! That task reads one HTTP request head (bounded in size and time), then
//! either answers it as plain HTTP and closes, or completes the WebSocket
//! handshake and runs [`Connection::run`] until the peer leaves.
//!
//! ```no_run
//! # use wsloop::{Config, Message, Peer, Server};
//! let ex = smol::Executor::new();
//! smol::block_on(ex.run(async {
//!     let server = Server::bind("127.0.0.1:8080", Config::default()).await?;
//!     server.run(&ex, |_: &Peer, m: Message| Some(m.seed_reply()), std::future::pending()).await
//! }))?;
//! # Ok::<(), wsloop::Error>(())
//! ```

use std::future::Future;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_channel::Sender;
use async_io::{Async, Timer};
use async_tungstenite::tungstenite::protocol::Role;
use async_tungstenite::WebSocketStream;
use futures_lite::{future, AsyncWriteExt};
use smol::Executor;

use crate::access::{AccessPolicy, Admission, Ticket};
use crate::config::{CLOSE_TIMEOUT, MAX_REQUEST_HEAD_SIZE};
#[cfg(feature = "trusted-proxy")]
use crate::forwarded::TrustedProxies;
use crate::handshake;
use crate::http::{
    read_request_head, write_error, write_response, HeadError, Request, StaticFiles,
};
use crate::metrics::Refusal;
use crate::tcp::Tcp;
use crate::time::timeout;
#[cfg(feature = "tls")]
use crate::tls::server::ServerTls;
use crate::{Config, Connection, Ended, Error, Handler, Hub, CLOSE_GOING_AWAY};

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
impl Stream for futures_rustls::server::TlsStream<Tcp> {
    fn plain_tcp(&self) -> Option<&Tcp> {
        None
    }
}

/// How long shutdown waits for connections to finish their close handshake.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Pause after a failed `accept` (for example out of file descriptors), so
/// the accept loop does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// A bound listening socket with its settings, ready to [`run`](Server::run).
pub struct Server {
    listener: Async<TcpListener>,
    shared: Arc<Shared>,
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
    /// Whose forwarding headers name the client (`--trusted-proxy`).
    #[cfg(feature = "trusted-proxy")]
    proxies: TrustedProxies,
    /// Serve `/metrics` without the token.
    public_metrics: bool,
    #[cfg(feature = "tls")]
    tls: Option<ServerTls>,
}

impl Server {
    /// Binds `address` (for example `127.0.0.1:8080`; port 0 picks a free
    /// port) after checking `config`. Serves the built-in page at `/` until
    /// [`with_static_files`](Self::with_static_files) says otherwise.
    pub async fn bind(address: &str, config: Config) -> Result<Server, Error> {
        config.validate()?;
        let addr = resolve(address)?;
        let listener = Async::<TcpListener>::bind(addr)?;
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                config,
                files: StaticFiles::builtin(),
                hub: Arc::new(Hub::new()),
                endpoint: Some(WEBSOCKET_PATH.to_string()),
                started: Instant::now(),
                access: AccessPolicy::default(),
                admission: Arc::new(Admission::default()),
                #[cfg(feature = "trusted-proxy")]
                proxies: TrustedProxies::new(),
                public_metrics: false,
                #[cfg(feature = "tls")]
                tls: None,
            }),
        })
    }

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

    /// Sets who may connect: origin check, token, connection limits.
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
    pub fn hub(&self) -> Arc<Hub> {
        self.shared.hub.clone()
    }

    /// Accepts connections until `shutdown` completes, spawning one task per
    /// connection on `ex`. Then it stops accepting, sends Close 1001 to every
    /// peer and waits up to [`SHUTDOWN_GRACE`] for them to finish.
    pub async fn run<H: Handler>(
        self,
        ex: &Executor<'_>,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let handler = Arc::new(handler);
        // Every connection task holds a clone of `alive`; when the last one
        // is dropped, `all_done` reports the channel closed.
        let (alive, all_done) = async_channel::bounded::<()>(1);
        log::info!("listening on {}", self.local_addr()?);

        let accept = async {
            loop {
                // Wait for readiness first, then accept everything pending.
                // (`Async::accept` would try the syscall on every poll of
                // this future, and it is polled whenever the caller's
                // executor wakes it, not only when a client arrives.)
                if let Err(err) = self.listener.readable().await {
                    log::warn!("listener failed: {err}");
                    Timer::after(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
                loop {
                    match self.listener.get_ref().accept() {
                        Ok((stream, addr)) => match Async::new(stream).and_then(Tcp::new) {
                            Ok(stream) => {
                                spawn_connection(ex, stream, addr, &self.shared, &handler, &alive)
                            }
                            Err(err) => log::warn!("cannot register a connection: {err}"),
                        },
                        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(err) => {
                            // For example out of file descriptors: back off.
                            log::warn!("accept failed: {err}");
                            Timer::after(ACCEPT_ERROR_BACKOFF).await;
                            break;
                        }
                    }
                }
            }
        };
        future::or(accept, shutdown).await;

        // Stop accepting, then ask every live connection to go away.
        drop(self.listener);
        let hub = &self.shared.hub;
        log::info!("shutting down: closing {} connection(s)", hub.len());
        hub.close_all(CLOSE_GOING_AWAY);
        drop(alive);
        let _ = timeout(SHUTDOWN_GRACE, all_done.recv()).await;
        Ok(())
    }
}

impl Shared {
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
fn resolve(address: &str) -> Result<SocketAddr, Error> {
    address
        .to_socket_addrs()
        .map_err(|e| Error::Config(format!("bad address {address:?}: {e}")))?
        .next()
        .ok_or_else(|| Error::Config(format!("address {address:?} resolves to nothing")))
}

/// Spawns the task of one accepted TCP connection: on a TLS server the
/// TLS handshake comes first, in a task type of its own, so that a plain
/// connection's future holds no room for TLS state.
fn spawn_connection<H: Handler>(
    ex: &Executor<'_>,
    stream: Tcp,
    addr: SocketAddr,
    shared: &Arc<Shared>,
    handler: &Arc<H>,
    alive: &Sender<()>,
) {
    shared.hub.metrics.accepted();
    // The handshake timeout covers TLS and the HTTP head together.
    let started = Instant::now();
    let (shared, handler, alive) = (shared.clone(), handler.clone(), alive.clone());
    #[cfg(feature = "tls")]
    if shared.tls.is_some() {
        ex.spawn(serve_tls(stream, addr, started, shared, handler, alive))
            .detach();
        return;
    }
    ex.spawn(serve(stream, addr, started, shared, handler, alive))
        .detach();
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

/// On a plain port: one log line when the peer opens with a TLS
/// ClientHello (the head read then answers 400, which a TLS client reports
/// as a protocol error). False only when the peer closed before sending
/// anything; a peer silent for the whole timeout gets its 408 from the head
/// read.
#[cfg(feature = "tls")]
async fn speaks_plain(stream: &Tcp, addr: SocketAddr, budget: Duration) -> bool {
    match timeout(budget, first_byte(stream)).await {
        Some(Some(TLS_HANDSHAKE_RECORD)) => {
            log::warn!(
                "{addr}: TLS handshake on a plain-HTTP port; use http:// and ws:// here \
                 (or serve TLS with --cert/--key)"
            );
            true
        }
        Some(None) => false,
        _ => true,
    }
}

/// On the TLS port: the TLS stream, once its handshake is done within the
/// handshake timeout. A plain HTTP request gets one log line and a 400 in
/// plain HTTP; other failures are counted and logged at debug level.
#[cfg(feature = "tls")]
async fn accept_tls(
    mut stream: Tcp,
    addr: SocketAddr,
    shared: &Shared,
) -> Option<futures_rustls::server::TlsStream<Tcp>> {
    let tls = shared.tls.as_ref()?;
    let budget = shared.config.handshake_timeout;
    let started = Instant::now();
    let metrics = &shared.hub.metrics;
    match timeout(budget, first_byte(&stream)).await {
        Some(Some(TLS_HANDSHAKE_RECORD)) => {}
        Some(Some(_)) => {
            metrics.tls_failed();
            log::warn!("{addr}: plain HTTP on the TLS port; use https:// and wss:// here");
            // Read the head first: closing with it unread would reset the
            // connection and lose the answer.
            let _ = timeout(
                budget,
                read_request_head(&mut stream, MAX_REQUEST_HEAD_SIZE),
            )
            .await;
            return refuse(
                &mut stream,
                400,
                "this port speaks TLS: use https:// or wss://",
            )
            .await;
        }
        _ => return None,
    }
    let left = budget.saturating_sub(started.elapsed());
    match timeout(left, tls.acceptor().accept(stream)).await {
        Some(Ok(stream)) => Some(stream),
        Some(Err(err)) => {
            metrics.tls_failed();
            log::debug!("{addr}: TLS handshake failed: {err}");
            None
        }
        None => {
            metrics.tls_failed();
            log::debug!("{addr}: no TLS handshake within the handshake timeout");
            None
        }
    }
}

/// A connection on the TLS port: the TLS handshake, then [`serve`].
#[cfg(feature = "tls")]
async fn serve_tls<H: Handler>(
    stream: Tcp,
    addr: SocketAddr,
    started: Instant,
    shared: Arc<Shared>,
    handler: Arc<H>,
    alive: Sender<()>,
) {
    // Its own statement: the box (the size of the whole TLS handshake's
    // state) is freed here, not held for the connection's life by an
    // `if let` around the connection.
    let accepted = Box::pin(accept_tls(stream, addr, &shared)).await;
    if let Some(stream) = accepted {
        serve(stream, addr, started, shared, handler, alive).await;
    }
}

/// One connection over `stream` (TCP, or TLS once its handshake is done),
/// from its request head to its close. `started` is when it was accepted:
/// the handshake timeout counts from then. `alive` marks the task as
/// running for the shutdown wait.
///
/// A plain fn returning an `async move` block, not an `async fn`: the
/// latter copies its arguments into a second set of locals, and this future
/// lives as long as the connection.
#[allow(clippy::manual_async_fn)]
fn serve<S: Stream, H: Handler>(
    mut stream: S,
    addr: SocketAddr,
    started: Instant,
    shared: Arc<Shared>,
    handler: Arc<H>,
    alive: Sender<()>,
) -> impl Future<Output = ()> + Send {
    async move {
        let _alive = alive;
        // In a block, so that what only the handshake needs is dead (and
        // its room in this future reused) while the connection runs.
        let (ws, client, _ticket) = {
            let early = admit_early(addr, &shared);
            let budget = shared
                .config
                .handshake_timeout
                .saturating_sub(started.elapsed());
            // The handshake's buffers live in this boxed future only until
            // it ends, so the long-lived connection future stays small.
            let handshake = Box::pin(handshake(&mut stream, addr, &shared, early, budget));
            // The ticket holds the connection's slot until the end.
            let Some((leftover, client, ticket)) = handshake.await else {
                return;
            };
            let websocket = Some(shared.config.websocket());
            let ws =
                WebSocketStream::from_partially_read(stream, leftover, Role::Server, websocket);
            let ws = Box::pin(ws);
            (ws.await, client, ticket)
        };
        connected(ws, client, &shared, handler).await;
    }
}

/// A connection slot taken before the request head: a direct peer's, by its
/// own address (past a limit the request still gets its 503). `None` for a
/// trusted proxy's connections: their slot is taken by the client address
/// the head names ([`client_addr`]).
fn admit_early(addr: SocketAddr, shared: &Shared) -> Early {
    #[cfg(feature = "trusted-proxy")]
    if shared.proxies.contains(addr.ip()) {
        return None;
    }
    let admitted = shared.admission.admit(addr.ip(), &shared.access);
    #[cfg(feature = "trusted-proxy")]
    let admitted = Some(admitted);
    admitted
}

/// What [`admit_early`] returns: a slot or why not; with trusted proxies,
/// `None` until the head names the client.
#[cfg(feature = "trusted-proxy")]
type Early = Option<Result<Ticket, &'static str>>;
#[cfg(not(feature = "trusted-proxy"))]
type Early = Result<Ticket, &'static str>;

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
/// followed by its removal from the hub.
fn connected<S: Stream, H: Handler>(
    ws: WebSocketStream<S>,
    addr: SocketAddr,
    shared: &Shared,
    handler: Arc<H>,
) -> impl Future<Output = ()> + Send {
    let metrics = shared.hub.metrics.clone();
    metrics.upgraded();
    let conn = Connection::new(ws, Some(addr), &shared.config).with_metrics(metrics);
    let id = conn.peer().id();
    shared.hub.insert(conn.peer().clone());
    log::info!("client {id} connected from {addr}");
    handler.on_connect(conn.peer());
    let hub = shared.hub.clone();
    // `Finish` rather than an async block, which would hold the
    // connection's future twice (as a captured value and as the awaitee).
    Finish {
        fut: conn.run(handler),
        then: Some(move |ended: Result<Ended, Error>| {
            hub.metrics.ended(&ended);
            match ended {
                Ok(ended) => log::info!("client {id} disconnected: {ended}"),
                Err(err) => log::warn!("client {id} dropped: {err}"),
            }
            hub.remove(id);
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
/// head, the client's address and its connection slot when the connection
/// was upgraded to WebSocket; `None` when it was answered as plain HTTP (or
/// the peer failed) and should be closed. `early` is the slot taken before
/// the head ([`admit_early`]); `budget` what is left of the handshake time.
async fn handshake<S: Stream>(
    stream: &mut S,
    addr: SocketAddr,
    shared: &Shared,
    early: Early,
    budget: Duration,
) -> Option<(Vec<u8>, SocketAddr, Ticket)> {
    let metrics = &shared.hub.metrics;
    // Only a build that can serve TLS looks for TLS clients on a plain
    // port (its one log line names --cert); the small build reads at once.
    #[cfg(feature = "tls")]
    let budget = match stream.plain_tcp() {
        Some(tcp) => {
            let started = Instant::now();
            if !speaks_plain(tcp, addr, budget).await {
                return None;
            }
            budget.saturating_sub(started.elapsed())
        }
        None => budget,
    };
    let head = timeout(budget, read_request_head(stream, MAX_REQUEST_HEAD_SIZE)).await;
    let (request, leftover) = match head {
        Some(Ok(parsed)) => parsed,
        Some(Err(HeadError::TooLarge)) => {
            metrics.refused(Refusal::BadRequest);
            return refuse(stream, 431, "request head too large").await;
        }
        Some(Err(HeadError::Malformed(why))) => {
            metrics.refused(Refusal::BadRequest);
            log::debug!("{addr}: bad request: {why}");
            return refuse(stream, 400, &format!("bad request: {why}")).await;
        }
        Some(Err(HeadError::Closed | HeadError::Io(_))) => return None,
        None => {
            metrics.refused(Refusal::BadRequest);
            log::debug!("{addr}: no request head within the handshake timeout");
            return refuse(stream, 408, "request timeout").await;
        }
    };

    let client = client_addr(addr, &request, shared);
    // (Without trusted proxies every slot was taken before the head.)
    #[cfg(feature = "trusted-proxy")]
    let early = early.unwrap_or_else(|| shared.admission.admit(client.ip(), &shared.access));
    let admitted = early;
    let ticket = match admitted {
        Ok(ticket) => ticket,
        Err(why) => {
            metrics.refused(Refusal::Limit);
            log::warn!("{client}: refused: {why}");
            return refuse(stream, 503, why).await;
        }
    };
    if request.wants_upgrade() {
        let upgraded = upgrade(stream, &request, shared).await;
        return upgraded.map(|()| (leftover, client, ticket));
    }
    let answer = match request.method.as_str() {
        _ if shared.is_endpoint(request.path()) => {
            refuse(stream, 426, "this endpoint speaks WebSocket only").await
        }
        "GET" | "HEAD" if request.path() == STATS_PATH => {
            let body = shared.stats_json();
            let headers = [
                ("Content-Type", "application/json"),
                ("Cache-Control", "no-store"),
            ];
            let head_only = request.method == "HEAD";
            answer(stream, 200, &headers, body.as_bytes(), head_only).await;
            None
        }
        #[cfg(feature = "metrics")]
        "GET" | "HEAD" if request.path() == METRICS_PATH => {
            serve_metrics(stream, &request, shared).await;
            None
        }
        "GET" | "HEAD" => {
            match shared.files.serve(&request, stream).await {
                // The path only: a query string might carry a token.
                Ok(status) => {
                    log::debug!("{client}: {} {} {status}", request.method, request.path())
                }
                Err(err) => log::debug!("{client}: {} failed: {err}", request.path()),
            }
            let _ = timeout(CLOSE_TIMEOUT, stream.close()).await;
            None
        }
        _ => refuse(stream, 405, "only GET and HEAD are supported").await,
    };
    answer
}

/// `GET /metrics`: the Prometheus text, behind the token unless public.
#[cfg(feature = "metrics")]
async fn serve_metrics<S: Stream>(stream: &mut S, request: &Request, shared: &Shared) {
    if !shared.public_metrics && !shared.access.check_token(request) {
        return unauthorized(stream).await;
    }
    let body = shared.hub.metrics.render(&shared.hub);
    let headers = [
        ("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
        ("Cache-Control", "no-store"),
    ];
    answer(
        stream,
        200,
        &headers,
        body.as_bytes(),
        request.method == "HEAD",
    )
    .await;
}

/// The 401 for a missing or wrong token.
async fn unauthorized<S: Stream>(stream: &mut S) {
    let body = b"missing or wrong token (Authorization: Bearer, or ?token=)\n";
    let headers = [
        ("WWW-Authenticate", "Bearer"),
        ("Content-Type", "text/plain"),
    ];
    answer(stream, 401, &headers, body, false).await;
}

/// Validates a WebSocket upgrade request and, when it is good, writes the
/// 101 response. `None` when it was refused (the refusal is already sent).
async fn upgrade<S: Stream>(stream: &mut S, request: &Request, shared: &Shared) -> Option<()> {
    let metrics = &shared.hub.metrics;
    if !shared.is_endpoint(request.path()) {
        metrics.refused(Refusal::BadRequest);
        return refuse(stream, 404, "no WebSocket endpoint here; use /server").await;
    }
    let key = match handshake::check_request(request) {
        Ok(key) => key,
        Err((status, why)) => {
            metrics.refused(Refusal::BadRequest);
            return refuse(stream, status, why).await;
        }
    };
    if let Err(why) = shared.access.check_origin(request) {
        metrics.refused(Refusal::Origin);
        log::warn!("refused upgrade: {why}");
        return refuse(stream, 403, &why).await;
    }
    if !shared.access.check_token(request) {
        metrics.refused(Refusal::Token);
        log::warn!("refused upgrade: missing or wrong token");
        unauthorized(stream).await;
        return None;
    }
    let response = handshake::switching_protocols(key);
    let written = async {
        stream.write_all(response.as_bytes()).await?;
        stream.flush().await
    };
    match timeout(CLOSE_TIMEOUT, written).await {
        Some(Ok(())) => Some(()),
        _ => None,
    }
}

/// Answers with an error status and a one-line reason, then closes. Always
/// `None`, so callers can `return refuse(..).await`.
async fn refuse<S: Stream, T>(stream: &mut S, status: u16, why: &str) -> Option<T> {
    let answer = async {
        write_error(stream, status, why).await?;
        stream.close().await
    };
    // A peer that does not read its answer is not waited for.
    let _ = timeout(CLOSE_TIMEOUT, answer).await;
    None
}

/// Writes one whole response, then closes. A peer that does not read its
/// answer is not waited for.
async fn answer<S: Stream>(
    stream: &mut S,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
) {
    let answer = async {
        write_response(stream, status, headers, body, head_only).await?;
        stream.close().await
    };
    let _ = timeout(CLOSE_TIMEOUT, answer).await;
}
