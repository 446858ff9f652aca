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
use futures_lite::{future, AsyncWriteExt};
use smol::Executor;

use crate::access::{AccessPolicy, Admission};
use crate::config::{CLOSE_TIMEOUT, MAX_REQUEST_HEAD_SIZE};
use crate::handshake;
use crate::http::{
    read_request_head, write_error, write_response, HeadError, Request, StaticFiles,
};
use crate::tcp::Tcp;
use crate::time::timeout;
use crate::{Config, Connection, Ended, Error, Handler, Hub, CLOSE_GOING_AWAY};

/// The path of the WebSocket endpoint, as in the original program.
pub const WEBSOCKET_PATH: &str = "/server";

/// The path of the JSON status document (live clients, message totals,
/// uptime) that the browser console polls.
pub const STATS_PATH: &str = "/stats";

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
                                let task = serve(
                                    stream,
                                    addr,
                                    self.shared.clone(),
                                    handler.clone(),
                                    alive.clone(),
                                );
                                ex.spawn(task).detach();
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

/// One TCP connection, from its first byte to its close. `alive` marks the
/// task as running for the shutdown wait.
///
/// A plain fn returning an `async move` block, not an `async fn`: the
/// latter copies its arguments into a second set of locals, and this future
/// lives as long as the connection.
#[allow(clippy::manual_async_fn)]
fn serve<H: Handler>(
    mut stream: Tcp,
    addr: SocketAddr,
    shared: Arc<Shared>,
    handler: Arc<H>,
    alive: Sender<()>,
) -> impl Future<Output = ()> + Send {
    async move {
        // Take a connection slot; past a limit the request still gets its 503.
        let admitted = shared.admission.admit(addr.ip(), &shared.access);
        // The handshake's buffers live in this boxed future only until it
        // ends, so the long-lived connection future below stays small.
        let over_limit = admitted.as_ref().err().copied();
        let handshake = handshake(&mut stream, addr, &shared, over_limit);
        let leftover = match Box::pin(handshake).await {
            Some(leftover) => leftover,
            None => return,
        };
        let conn = Connection::new(stream, Role::Server, leftover, Some(addr), &shared.config);
        let conn = Box::pin(conn).await;
        connected(conn, addr, &shared, handler).await;
        drop((admitted, alive));
    }
}

/// Registers an upgraded connection with the hub, and returns its loop
/// followed by its removal from the hub.
fn connected<H: Handler>(
    conn: Connection<Tcp>,
    addr: SocketAddr,
    shared: &Shared,
    handler: Arc<H>,
) -> impl Future<Output = ()> + Send {
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
/// head when the connection was upgraded to WebSocket, `None` when it was
/// answered as plain HTTP (or the peer failed) and should be closed.
async fn handshake(
    stream: &mut Tcp,
    addr: SocketAddr,
    shared: &Shared,
    over_limit: Option<&str>,
) -> Option<Vec<u8>> {
    let head = timeout(
        shared.config.handshake_timeout,
        read_request_head(stream, MAX_REQUEST_HEAD_SIZE),
    )
    .await;
    let (request, leftover) = match head {
        Some(Ok(parsed)) => parsed,
        Some(Err(HeadError::TooLarge)) => {
            return refuse(stream, 431, "request head too large").await;
        }
        Some(Err(HeadError::Malformed(why))) => {
            log::debug!("{addr}: bad request: {why}");
            return refuse(stream, 400, &format!("bad request: {why}")).await;
        }
        Some(Err(HeadError::Closed | HeadError::Io(_))) => return None,
        None => {
            log::debug!("{addr}: no request head within the handshake timeout");
            return refuse(stream, 408, "request timeout").await;
        }
    };

    if let Some(why) = over_limit {
        log::warn!("{addr}: refused: {why}");
        return refuse(stream, 503, why).await;
    }
    if request.wants_upgrade() {
        return upgrade(stream, &request, shared).await.map(|()| leftover);
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
        "GET" | "HEAD" => {
            match shared.files.serve(&request, stream).await {
                // The path only: a query string might carry a token.
                Ok(status) => log::debug!("{addr}: {} {} {status}", request.method, request.path()),
                Err(err) => log::debug!("{addr}: {} failed: {err}", request.path()),
            }
            let _ = timeout(CLOSE_TIMEOUT, stream.close()).await;
            None
        }
        _ => refuse(stream, 405, "only GET and HEAD are supported").await,
    };
    answer
}

/// Validates a WebSocket upgrade request and, when it is good, writes the
/// 101 response. `None` when it was refused (the refusal is already sent).
async fn upgrade(stream: &mut Tcp, request: &Request, shared: &Shared) -> Option<()> {
    if !shared.is_endpoint(request.path()) {
        return refuse(stream, 404, "no WebSocket endpoint here; use /server").await;
    }
    let key = match handshake::check_request(request) {
        Ok(key) => key,
        Err((status, why)) => return refuse(stream, status, why).await,
    };
    if let Err(why) = shared.access.check_origin(request) {
        log::warn!("refused upgrade: {why}");
        return refuse(stream, 403, &why).await;
    }
    if !shared.access.check_token(request) {
        log::warn!("refused upgrade: missing or wrong token");
        let body = b"missing or wrong token (Authorization: Bearer, or ?token=)\n";
        let headers = [
            ("WWW-Authenticate", "Bearer"),
            ("Content-Type", "text/plain"),
        ];
        answer(stream, 401, &headers, body, false).await;
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
async fn refuse<T>(stream: &mut Tcp, status: u16, why: &str) -> Option<T> {
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
async fn answer(
    stream: &mut Tcp,
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
