//! The persistent loop: one task per WebSocket connection that keeps
//! receiving and sending until the peer closes.
//!
//! [`Connection::run`] is that task. It alone owns the socket: at most one
//! reader and one writer, ever. Each turn of its loop waits for whichever
//! comes first of
//!
//! - the next inbound frame (decoded and handed to the [`Handler`], whose
//!   reply is sent straight back),
//! - the next outbound message queued through a [`Peer`] handle by any task,
//! - the heartbeat timer (ping a quiet peer, drop a silent one),
//!
//! and only a Close frame, EOF, a local [`Peer::close`], the idle timeout or
//! a broken socket ends it. There is no code path that returns after one
//! message. When it ends, the TCP stream is shut down (the `defer ws.Close()`
//! of the original Go program).
//!
//! Under tungstenite sits the read guard (`guard.rs`): it bounds what one
//! poll reads, counts every frame and byte the peer sends and caps the
//! fragments of a message. It also tells the loop when everything read ends
//! at a message boundary, which is when the loop may rebuild tungstenite
//! around the same stream to shed buffers a large message grew.
//!
//! The rest of the layer sits next to this file: `handler.rs` (the
//! [`Handler`] the application plugs in), `peer.rs` (the [`Peer`] handle any
//! task holds), `session.rs` (the outbound queue and the routing of replies
//! to our own requests) and `guard.rs` (the read guard).

pub(crate) mod guard;
mod handler;
mod peer;
pub(crate) mod session;

pub use handler::{Handler, SeedHandler};
pub use peer::{Peer, ReplyRoute};

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};
use std::{fmt, io};

use async_io::Timer;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use async_tungstenite::tungstenite::{self, Message as Frame};
use async_tungstenite::WebSocketStream;
use futures_lite::{future, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Stream, StreamExt};
use futures_sink::Sink;

use crate::config::{CLOSE_TIMEOUT, READ_BUDGET_BYTES};
use crate::connection::guard::{Guarded, Limits, Violation};
use crate::connection::session::{Outgoing, Session};
use crate::server::metrics::Metrics;
use crate::time::{human, timeout};
use crate::{Config, Error, Protocol, Seed};

/// Most events one connection handles back to back before it flushes and
/// yields to the executor: large enough to batch a pipelining peer's
/// replies into one write, small enough that one busy connection cannot
/// keep the others waiting (the probe saw 120–170 ms stalls without it).
const MAX_BATCH: usize = 64;

/// Most bytes read and written by one batch before the loop flushes and
/// yields, whatever the event count: 64 events of 1 MiB each would be 64 MiB
/// of work in one turn. Two read budgets, so that small messages still batch
/// fully (64 of ours are ~4 KiB) while large ones end a batch each.
const MAX_BATCH_BYTES: usize = 2 * READ_BUDGET_BYTES;

/// Close code for a normal, local close (RFC 6455 §7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code when the server shuts down or drops an idle peer.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a protocol violation by the peer.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code for a text frame that is not valid UTF-8.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code for a policy violation (for example a peer too slow to keep up).
pub const CLOSE_POLICY: u16 = 1008;
/// Close code for a message over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// How a connection ended normally. Failures are [`Error`]s instead.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ended {
    /// The peer sent a Close frame (with its code and reason, if any).
    PeerClosed(Option<(u16, String)>),
    /// The peer sent a Close frame whose code RFC 6455 §7.4 does not allow
    /// (this code, e.g. 999); we answered 1002.
    InvalidClose(u16),
    /// The peer closed the TCP stream without a Close frame.
    Eof,
    /// This side closed with the given code ([`Peer::close`] or shutdown).
    Closed(u16),
    /// The peer sent nothing for [`Config::idle_timeout`].
    IdleTimeout,
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::PeerClosed(Some((code, reason))) if reason.is_empty() => {
                write!(f, "peer closed ({code})")
            }
            Ended::PeerClosed(Some((code, reason))) => write!(
                f,
                "peer closed ({code} {:?})",
                crate::log_safe::quote(reason)
            ),
            Ended::PeerClosed(None) => write!(f, "peer closed"),
            Ended::InvalidClose(code) => write!(
                f,
                "peer sent invalid close code {code} (we answered {CLOSE_PROTOCOL_ERROR})"
            ),
            Ended::Eof => write!(f, "peer went away (EOF)"),
            Ended::Closed(code) => write!(f, "closed by us ({code})"),
            Ended::IdleTimeout => write!(f, "idle timeout"),
        }
    }
}

/// How the loop ends, decided without an await so that the loop has one
/// exit: what is still written, and what [`Connection::run`] returns.
struct Exit {
    /// Our Close frame (code, reason, whether to wait for the peer's).
    close: Option<(u16, Box<str>, bool)>,
    /// Write out the replies still buffered (the peer only went quiet).
    flush: bool,
    result: Result<Ended, Error>,
}

impl Exit {
    /// The peer's stream ended between frames: a normal end.
    fn eof() -> Self {
        Exit {
            close: None,
            flush: true,
            result: Ok(Ended::Eof),
        }
    }

    /// We close with `code` and `reason` (waiting for the peer's Close if
    /// `await_reply`), then return `result`.
    fn closing(
        code: u16,
        reason: Box<str>,
        await_reply: bool,
        result: Result<Ended, Error>,
    ) -> Self {
        Exit {
            close: Some((code, reason, await_reply)),
            flush: false,
            result,
        }
    }
}

/// One established WebSocket connection and its outbound queue, ready to
/// [`run`](Connection::run). Works on any `futures-io` stream; speaks the
/// [`Protocol`] `P` ([`Seed`] unless [`speaking`](Connection::speaking)
/// says otherwise).
pub struct Connection<S, P = Seed> {
    /// `None` only for the instant [`release_buffers`](Self::release_buffers)
    /// swaps it for a fresh one.
    ws: Option<WebSocketStream<Guarded<S>>>,
    peer: Peer<P>,
    settings: LoopSettings,
    /// Whether the session ends with this connection (server side) or
    /// outlives it (the reconnecting client).
    owns_session: bool,
    /// Frames are buffered in tungstenite but not yet flushed.
    unflushed: bool,
}

/// Shuts the stream down. With `lingering`, we closed on a peer that is
/// still sending: closing the socket with its input unread would make the
/// kernel send a reset, which can destroy our Close frame before the peer
/// reads it, so its input is discarded for a moment first.
async fn release(stream: &mut (impl AsyncRead + AsyncWrite + Unpin), lingering: bool) {
    let _ = timeout(CLOSE_TIMEOUT, stream.close()).await;
    if lingering {
        let _ = timeout(CLOSE_TIMEOUT, discard_input(stream)).await;
    }
}

/// Heartbeat deadlines are rounded up to this grid, so the timers of many
/// connections fire together and one reactor wake-up serves them all
/// (each wake-up costs async-io several syscalls). A quarter second is
/// nothing next to a heartbeat of at least one second.
const TIMER_GRANULARITY: Duration = Duration::from_millis(250);

/// `deadline` rounded up to the [`TIMER_GRANULARITY`] grid.
fn coarse(deadline: Instant) -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let since = deadline.saturating_duration_since(epoch).as_nanos();
    let grid = TIMER_GRANULARITY.as_nanos();
    let rounded = since.div_ceil(grid) * grid;
    epoch + Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
}

/// Most bytes a closing connection discards while it waits for the peer to
/// see its Close: the rest of one largest message. A peer still sending
/// past that is flooding, and its socket is closed at once rather than read
/// for [`CLOSE_TIMEOUT`] at loopback speed (~500 MB of work).
const MAX_DISCARD_BYTES: usize = 1 << 20;

/// Reads and drops everything until EOF, an error or [`MAX_DISCARD_BYTES`].
async fn discard_input(stream: &mut (impl AsyncRead + Unpin)) {
    // On the heap: a stack array would live in every connection's future.
    let mut sink = vec![0u8; 1024];
    let (mut total, mut since_yield) = (0, 0);
    while let Ok(n @ 1..) = stream.read(&mut sink).await {
        total += n;
        if total >= MAX_DISCARD_BYTES {
            return;
        }
        // A peer sending faster than we discard would keep this read ready
        // throughout: yield now and then, so the other tasks run.
        since_yield += n;
        if since_yield >= READ_BUDGET_BYTES {
            since_yield = 0;
            future::yield_now().await;
        }
    }
}

/// The part of [`Config`] the loop reads, kept per connection (the whole
/// config would cost every connection its size again).
struct LoopSettings {
    heartbeat: Duration,
    idle_timeout: Duration,
    write_timeout: Duration,
    /// The side we play, for rebuilding the reader
    /// ([`Connection::release_buffers`]); tungstenite does not say.
    role: Role,
}

impl LoopSettings {
    fn new(config: &Config, role: Role) -> Self {
        LoopSettings {
            // Saturated, so that `Instant + heartbeat` cannot overflow.
            heartbeat: crate::config::saturate(config.heartbeat),
            idle_timeout: config.idle_timeout(),
            write_timeout: config.write_timeout,
            role,
        }
    }
}

/// When the peer was last heard from. The clock is read once per batch of
/// events (when a batch that heard the peer ends, or at a tick), not per
/// frame: a pipelining peer's 64 frames cost one read instead of 64. The
/// time kept is at or a little after the last frame (by at most the
/// batch's own handling time), so the idle timeout can only err late.
struct LastSeen {
    at: Instant,
    /// A frame came in since `at` was taken.
    heard: bool,
}

impl LastSeen {
    fn new() -> Self {
        LastSeen {
            at: Instant::now(),
            heard: false,
        }
    }

    /// A frame came in (the clock is read later, at the batch's end).
    fn heard(&mut self) {
        self.heard = true;
    }

    /// The batch ends: the time of the frames it heard, if any.
    fn settle_now(&mut self) {
        if self.heard {
            self.settle(Instant::now());
        }
    }

    /// When the peer was last heard from, `now` standing for frames heard
    /// since the last reading.
    fn settle(&mut self, now: Instant) -> Instant {
        if std::mem::take(&mut self.heard) {
            self.at = now;
        }
        self.at
    }
}

/// Pending once, then ready: waits for the task's next wake-up without
/// polling anything (for when every source already holds the task's waker).
#[derive(Default)]
struct Woken(bool);

impl Future for Woken {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<()> {
        if std::mem::replace(&mut self.0, true) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// What woke the loop.
enum Event {
    /// Errors are boxed: they are rare, and inline they would double the
    /// size of every connection's future.
    Inbound(Option<Result<Frame, Box<tungstenite::Error>>>),
    Outbound(Option<Outgoing>),
    Tick,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    /// Takes over a stream whose opening handshake is done. `leftover` is
    /// what was read past the handshake (frames the peer sent right after
    /// it; often empty), `role` the side we play, `addr` the remote address
    /// for logs and [`Peer::addr`].
    ///
    /// The connection builds tungstenite itself, on top of its read guard:
    /// that is why it takes the raw stream and not a `WebSocketStream`
    /// (which could not be unwrapped without losing the bytes it buffered).
    /// After tungstenite's own handshake (`accept_async`, `client_async`),
    /// pass `ws.into_inner()` with no leftover, as long as the peer waits
    /// for the handshake's answer before it sends (clients do).
    pub fn new(
        stream: S,
        role: Role,
        leftover: Vec<u8>,
        addr: Option<SocketAddr>,
        config: &Config,
    ) -> impl Future<Output = Self> + Send {
        Self::open(stream, role, leftover, addr, config, None)
    }

    /// Like [`new`](Self::new), but sends from (and routes replies into) an
    /// existing `session` that outlives this connection: what is queued and
    /// not yet sent when it drops stays queued for the next one.
    pub fn with_session(
        stream: S,
        role: Role,
        leftover: Vec<u8>,
        addr: Option<SocketAddr>,
        config: &Config,
        session: Session,
    ) -> impl Future<Output = Self> + Send {
        Self::open(stream, role, leftover, addr, config, Some(session))
    }

    /// The same connection, speaking protocol `Q` (before it runs): its
    /// [`Peer`] encodes in `Q`, and [`run`](Connection::run) takes a
    /// `Handler<Q>`.
    pub fn speaking<Q: Protocol>(self) -> Connection<S, Q> {
        Connection {
            ws: self.ws,
            peer: self.peer.retyped(),
            settings: self.settings,
            owns_session: self.owns_session,
            unflushed: self.unflushed,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send, P: Protocol> Connection<S, P> {
    /// [`new`](Connection::new) (no `session`: one of its own, which ends
    /// with it) or [`with_session`](Connection::with_session), in any
    /// protocol: what the server and the client build theirs with.
    pub(crate) fn open(
        stream: S,
        role: Role,
        leftover: Vec<u8>,
        addr: Option<SocketAddr>,
        config: &Config,
        session: Option<Session>,
    ) -> impl Future<Output = Self> + Send {
        let owns_session = session.is_none();
        let session = session
            .unwrap_or_else(|| Session::new(config.outbound_capacity, config.request_timeout));
        let guarded = Guarded::new(stream, Limits::from(config), &leftover);
        let websocket = Some(config.websocket());
        let ws = WebSocketStream::from_partially_read(guarded, leftover, role, websocket);
        let settings = LoopSettings::new(config, role);
        let peer = Peer::new(addr, session);
        async move {
            Connection {
                ws: Some(ws.await),
                peer,
                settings,
                owns_session,
                unflushed: false,
            }
        }
    }

    /// Counts this connection's payload bytes in `metrics`. Call it before
    /// the [`Peer`] is cloned (no other handle may see the change).
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.peer.inner) {
            inner.metrics = Some(metrics);
        }
        self
    }

    /// Names the connection's peer and installs its reply-routing hook
    /// (see [`ReplyRoute`](peer::ReplyRoute)); before [`run`](Self::run).
    #[cfg(feature = "forwarder")]
    pub(crate) fn with_name(mut self, name: Box<str>, route: Arc<dyn peer::ReplyRoute>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.peer.inner) {
            inner.named = Some(Box::new(peer::Named { name, route }));
        }
        self
    }

    /// The WebSocket; see the field for why it is an `Option`.
    fn ws(&mut self) -> &mut WebSocketStream<Guarded<S>> {
        self.ws
            .as_mut()
            .expect("the WebSocket is only absent inside release_buffers")
    }

    /// The read guard under tungstenite.
    fn guard(&mut self) -> &mut Guarded<S> {
        self.ws().get_mut()
    }

    /// The handle other tasks use to send to this peer or close it.
    pub fn peer(&self) -> &Peer<P> {
        &self.peer
    }

    /// Runs the loop until the connection ends, then shuts the stream down.
    ///
    /// `Ok` is a normal end (the peer closed, EOF, a local close, idle
    /// timeout); `Err` is a failure (I/O error, protocol violation, oversized
    /// message — the peer was sent the matching close code first).
    // Not an `async fn` on purpose; see the comment inside.
    #[allow(clippy::manual_async_fn)]
    pub fn run(
        mut self,
        handler: impl Handler<P>,
    ) -> impl Future<Output = Result<Ended, Error>> + Send {
        // A plain fn returning an `async move` block: an `async fn` taking
        // `mut self` would keep two copies of the connection in its future.
        async move {
            let result = self.serve(&handler).await;
            // Requests written to this connection can no longer be answered.
            let session = &self.peer.inner.session;
            if self.owns_session {
                session.shut();
            } else {
                session.connection_lost();
            }
            // Always release the socket, however the loop ended.
            let lingering = matches!(result, Err(Error::Policy(_) | Error::WebSocket(_)));
            // Around the guard: a peer past its limits is still discarded.
            Box::pin(release(self.guard().get_mut(), lingering)).await;
            result
        }
    }

    /// The loop itself. Returns only when the connection is over.
    async fn serve(&mut self, handler: &impl Handler<P>) -> Result<Ended, Error> {
        let heartbeat = self.settings.heartbeat;
        let idle_timeout = self.settings.idle_timeout;
        let mut seen = LastSeen::new();
        let mut next_ping = seen.at + heartbeat;
        // One timer for both deadlines; it is re-armed only when it fires, so
        // busy connections cost no timer syscalls per message.
        let mut timer = Timer::at(coarse(next_ping.min(seen.at + idle_timeout)));
        let mut outbound_first = false;

        let mut batch = 0;

        let exit = loop {
            // Alternate which source is polled first so neither can starve
            // the other.
            outbound_first = !outbound_first;
            let event = self
                .next_batched(&mut timer, outbound_first, &mut batch, &mut seen)
                .await?;
            match event {
                Event::Inbound(Some(Ok(frame))) => {
                    seen.heard();
                    if let Frame::Close(frame) = frame {
                        // tungstenite has queued our Close reply; keep reading
                        // so it is flushed, until the stream reports the end.
                        let ended = self.peer_closed(frame);
                        Box::pin(self.drain()).await;
                        return Ok(ended);
                    }
                    // Boxed: a message's handling state lives only while it
                    // is handled; inline it would enlarge every idle
                    // connection's future.
                    Box::pin(self.on_frame(frame, handler)).await?;
                }
                Event::Inbound(Some(Err(err))) => {
                    break self.failed(*err);
                }
                Event::Inbound(None) => break Exit::eof(),
                Event::Outbound(Some(outgoing)) => {
                    let (frame, request) = match outgoing {
                        Outgoing::Frame(frame) => (frame, None),
                        Outgoing::Request(id, frame) => (frame, Some(id)),
                        Outgoing::Close(code, reason) => {
                            // Every message queued before Peer::close has
                            // been sent.
                            let ended = Ok(Ended::Closed(code));
                            break Exit::closing(code, reason, true, ended);
                        }
                    };
                    // One send for frames and requests alike.
                    Box::pin(self.send_queued(frame)).await?;
                    if let Some(id) = request {
                        self.peer.inner.session.mark_in_flight(id);
                    }
                }
                Event::Outbound(None) => {
                    // The session was shut from elsewhere.
                    let ended = Ok(Ended::Closed(CLOSE_NORMAL));
                    break Exit::closing(CLOSE_NORMAL, "".into(), true, ended);
                }
                Event::Tick => {
                    let now = Instant::now();
                    let last_seen = seen.settle(now);
                    if let Some(exit) = self.expired(now, last_seen + idle_timeout) {
                        break exit;
                    }
                    if now >= next_ping {
                        // Boxed, as the other rare sends: inline, a write's
                        // state would be in every idle connection's future.
                        let ping = Frame::Ping(Default::default());
                        Box::pin(self.send_frame(ping)).await?;
                        // From the scheduled time, so that rounding to the
                        // timer grid does not accumulate into drift.
                        next_ping += heartbeat;
                        if next_ping <= now {
                            next_ping = now + heartbeat;
                        }
                    }
                    timer.set_at(coarse(next_ping.min(last_seen + idle_timeout)));
                }
            }
        };
        // Every other end of the loop leaves through this one await.
        Box::pin(self.end(exit)).await
    }

    /// On a tick: the end of a peer whose message stalled or that has been
    /// silent past `idle_deadline`, if either holds.
    #[cold]
    fn expired(&mut self, now: Instant, idle_deadline: Instant) -> Option<Exit> {
        if self.guard().message_stalled() {
            // Pings keep the connection alive; they must not keep a
            // half-sent message's buffers alive with it.
            let reason = "fragmented message unfinished for too long";
            let result = Err(Error::Policy(reason.into()));
            return Some(Exit::closing(CLOSE_POLICY, reason.into(), false, result));
        }
        if now >= idle_deadline {
            let idle = human(self.settings.idle_timeout);
            debug!("peer {} silent for {idle}", self.peer.id());
            // A silent peer will not answer our Close either: send it, but
            // do not wait for a reply.
            let (reason, result) = ("idle timeout".into(), Ok(Ended::IdleTimeout));
            return Some(Exit::closing(CLOSE_GOING_AWAY, reason, false, result));
        }
        None
    }

    /// Carries out `exit`: flushes or sends our Close as it says, then
    /// gives its result.
    async fn end(&mut self, exit: Exit) -> Result<Ended, Error> {
        if exit.flush {
            let _ = self.flush().await;
        }
        if let Some((code, reason, await_reply)) = exit.close {
            self.close(code, &reason, await_reply).await;
        }
        exit.result
    }

    /// The next event, flushing buffered replies first when none is ready.
    /// Replies are only buffered while more work is ready at once; they are
    /// written out together when the loop would wait, so a pipelining peer
    /// costs one write per batch, not per message.
    ///
    /// The batch also bounds how often the clock is read: `seen` takes the
    /// time once, when a batch that heard the peer ends, not per frame.
    async fn next_batched(
        &mut self,
        timer: &mut Timer,
        outbound_first: bool,
        batch: &mut usize,
        seen: &mut LastSeen,
    ) -> Result<Event, Error> {
        // The timer is polled after the other sources (each poll of it reads
        // the clock), except right after a batch cut short: then a source was
        // ready throughout and the timer goes first once, so pings, the idle
        // timeout and a stalled message are still seen under a flood.
        let mut timer_first = false;
        if *batch >= MAX_BATCH || self.guard().moved() >= MAX_BATCH_BYTES {
            // A long batch (in events or in bytes): flush and let other
            // tasks run, so one busy connection cannot stall the rest.
            seen.settle_now();
            self.flush().await?;
            future::yield_now().await;
            *batch = 0;
            self.guard().new_batch();
            timer_first = true;
        }
        let next = self.next_event(timer, outbound_first, timer_first);
        if let Some(event) = future::poll_once(next).await {
            *batch += 1;
            return Ok(event);
        }
        seen.settle_now();
        // Every source was just polled and holds this task's waker: unless
        // a wake-up is spent on something else before we wait (a flush
        // that had to wait, a rebuild, a yield), there is nothing to poll
        // again until one of them wakes the task. One poll of all three
        // fewer per wait, for a peer that does not pipeline.
        let mut polled = !self.flush().await?;
        *batch = 0;
        self.guard().new_batch();
        if self.guard().worth_releasing() {
            Box::pin(self.release_buffers()).await?;
            polled = false;
        }
        if self.guard().take_budget_spent() {
            // The guard stopped tungstenite on its read budget, not for
            // want of data: really yield, rather than read on in this poll.
            future::yield_now().await;
            polled = false;
        }
        if polled {
            Woken::default().await;
        }
        Ok(self.next_event(timer, outbound_first, false).await)
    }

    /// Rebuilds tungstenite around the same stream, dropping the buffers a
    /// large message grew (it keeps their capacity forever, with no way to
    /// shrink them). Called only when the loop is idle and the guard has
    /// seen everything read end at a message boundary, so tungstenite's read
    /// side holds nothing; its write side is flushed first, or the rebuild
    /// waits for another idle moment.
    async fn release_buffers(&mut self) -> Result<(), Error> {
        let ws = self.ws();
        match future::poll_once(future::poll_fn(|cx| Pin::new(&mut *ws).poll_flush(cx))).await {
            Some(Ok(())) => {}
            Some(Err(err)) => return Err(err.into()),
            None => return Ok(()),
        }
        let Some(ws) = self.ws.take() else {
            return Ok(());
        };
        let websocket = *ws.get_config();
        let mut stream = ws.into_inner();
        stream.buffers_released();
        let role = self.settings.role;
        self.ws = Some(WebSocketStream::from_raw_socket(stream, role, Some(websocket)).await);
        debug!("peer {}: buffers released", self.peer.id());
        Ok(())
    }

    /// Waits for the first of: the heartbeat timer, an outbound message, an
    /// inbound frame. Each source keeps its own waker registration between
    /// calls, so nothing is allocated per turn. The timer is polled first
    /// only with `timer_first`; otherwise only when neither other source is
    /// ready, which is also before every wait, so its wake-up is never lost.
    async fn next_event(
        &mut self,
        timer: &mut Timer,
        outbound_first: bool,
        timer_first: bool,
    ) -> Event {
        future::poll_fn(|cx| {
            if timer_first && Pin::new(&mut *timer).poll(cx).is_ready() {
                return Poll::Ready(Event::Tick);
            }
            for turn in [outbound_first, !outbound_first] {
                let ready = if turn {
                    self.peer
                        .inner
                        .session
                        .poll_outgoing(cx)
                        .map(Event::Outbound)
                } else {
                    Pin::new(self.ws.as_mut().expect("present between rebuilds"))
                        .poll_next(cx)
                        .map(|frame| Event::Inbound(frame.map(|f| f.map_err(Box::new))))
                };
                if ready.is_ready() {
                    return ready;
                }
            }
            if !timer_first && Pin::new(&mut *timer).poll(cx).is_ready() {
                return Poll::Ready(Event::Tick);
            }
            Poll::Pending
        })
        .await
    }

    /// Handles one data or control frame from the peer.
    async fn on_frame(&mut self, frame: Frame, handler: &impl Handler<P>) -> Result<(), Error> {
        // Pings are answered by tungstenite on the next read; pongs only
        // prove the peer is alive.
        if !matches!(frame, Frame::Text(_) | Frame::Binary(_)) {
            return Ok(());
        }
        self.peer.inner.received.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.peer.inner.metrics {
            m.received_bytes(frame.len())
        }
        match handler.on_frame(&self.peer, frame).await {
            Some(reply) => self.send_queued(reply).await,
            None => Ok(()),
        }
    }

    /// Sends one encoded frame (perhaps shared with other connections:
    /// tungstenite copies it into this connection's write buffer), counted.
    async fn send_queued(&mut self, frame: Frame) -> Result<(), Error> {
        if let Frame::Text(text) = &frame {
            let body = crate::log_safe::body(text.as_bytes());
            debug!("{} <- {body}", self.peer);
        }
        if let Some(m) = &self.peer.inner.metrics {
            m.sent_bytes(frame.len())
        }
        self.send_frame(frame).await?;
        self.peer.inner.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Queues one frame in tungstenite's write buffer; it goes out at the
    /// next [`flush`](Self::flush) (or earlier, once the buffer passes
    /// [`WRITE_BATCH_BYTES`](crate::WRITE_BATCH_BYTES)). A peer that does not take data within the
    /// write timeout is treated as gone: a stuck write must not stall the
    /// loop forever.
    async fn send_frame(&mut self, frame: Frame) -> Result<(), Error> {
        let write_timeout = self.settings.write_timeout;
        let ws = self.ws();
        let feed = async {
            future::poll_fn(|cx| Pin::new(&mut *ws).poll_ready(cx)).await?;
            Pin::new(&mut *ws).start_send(frame)
        };
        let result = timeout(write_timeout, feed).await;
        self.unflushed = true;
        match result {
            Some(result) => result.map_err(Error::from),
            None => Err(Error::Timeout("peer stopped reading (write timeout)")),
        }
    }

    /// Writes out everything queued by [`send_frame`](Self::send_frame).
    /// `Ok(true)` when it had to wait for the socket (and so spent a
    /// wake-up of this task).
    async fn flush(&mut self) -> Result<bool, Error> {
        if !self.unflushed {
            return Ok(false);
        }
        let write_timeout = self.settings.write_timeout;
        let ws = self.ws();
        let mut waited = false;
        let flush = future::poll_fn(|cx| {
            let flushed = Pin::new(&mut *ws).poll_flush(cx);
            waited |= flushed.is_pending();
            flushed
        });
        let result = timeout(write_timeout, flush).await;
        self.unflushed = false;
        match result {
            Some(result) => result.map(|()| waited).map_err(Error::from),
            None => Err(Error::Timeout("peer stopped reading (write timeout)")),
        }
    }

    /// Sends our Close frame and, if `await_reply`, waits (bounded) for the
    /// peer's Close in return. Only [`end`](Self::end) calls it, inside the
    /// loop's one boxed exit, so its state is not in every connection's
    /// future for its life.
    async fn close(&mut self, code: u16, reason: &str, await_reply: bool) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let close = async {
            if self.ws().close(Some(frame)).await.is_ok() && await_reply {
                self.drain_unbounded().await;
            }
        };
        let _ = timeout(CLOSE_TIMEOUT, close).await;
    }

    /// How the peer's Close ended the connection, logged. tungstenite turns
    /// a code that is not allowed into its own 1002 "Protocol violation"
    /// (and answers that); the guard kept the code the peer really sent, so
    /// our 1002 is not reported as the peer's.
    fn peer_closed(&mut self, frame: Option<tungstenite::protocol::CloseFrame>) -> Ended {
        let Some(frame) = frame else {
            return Ended::PeerClosed(None);
        };
        let (code, sent) = (u16::from(frame.code), self.guard().peer_close_code());
        if code == CLOSE_PROTOCOL_ERROR && sent != code {
            // Logged once, with the end (`Ended`'s Display says it all).
            return Ended::InvalidClose(sent);
        }
        let reason = frame.reason.to_string();
        let quoted = crate::log_safe::quote(&reason);
        debug!("{} sent close {code} \"{quoted}\"", self.peer);
        Ended::PeerClosed(Some((code, reason)))
    }

    /// Reads (and discards) until the stream ends, at most [`CLOSE_TIMEOUT`].
    async fn drain(&mut self) {
        let _ = timeout(CLOSE_TIMEOUT, self.drain_unbounded()).await;
    }

    async fn drain_unbounded(&mut self) {
        while let Some(Ok(_)) = self.ws().next().await {}
    }

    /// Turns a read error into the end it deserves: the close code the peer
    /// is sent when the socket still works, and the error for the caller.
    #[cold]
    fn failed(&mut self, err: tungstenite::Error) -> Exit {
        use tungstenite::error::Error as E;
        if let E::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) = err {
            // The peer closed TCP between frames without a Close: abrupt,
            // but a normal end (the Go client does this). Replies still
            // buffered go out first: it may only have closed its sending
            // half.
            return Exit::eof();
        }
        if let Some(violation) = match &err {
            E::Io(e) => Violation::of(e),
            _ => None,
        } {
            // The guard refused the peer's bytes; tungstenite is still open
            // for writing, so the peer learns why.
            let (reason, code) = (violation.reason(), violation.close_code());
            debug!("peer {} closed: {reason}", self.peer.id());
            let result = if code != CLOSE_POLICY {
                // A protocol error the guard caught before tungstenite could.
                Err(Error::ProtocolViolation(reason))
            } else {
                Err(Error::Policy(reason.into()))
            };
            return Exit::closing(code, reason.into(), false, result);
        }
        let close = match &err {
            E::Capacity(_) => Some((CLOSE_TOO_BIG, "message too big")),
            E::Utf8(_) => Some((CLOSE_INVALID_DATA, "invalid UTF-8")),
            E::Protocol(_) => Some((CLOSE_PROTOCOL_ERROR, "protocol error")),
            _ => None,
        };
        let result = Err(match err {
            E::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => Error::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer vanished mid-frame",
            )),
            other => other.into(),
        });
        // Best effort: the stream has already reported an error, and a peer
        // that broke the protocol is not waited for.
        Exit {
            close: close.map(|(code, reason)| (code, reason.into(), false)),
            flush: false,
            result,
        }
    }
}
