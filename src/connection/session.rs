//! What outlives one TCP connection: the outbound queue, the outstanding
//! requests awaiting replies, and the source of request ids.
//!
//! On the server every connection has its own [`Session`]. The reconnecting
//! client keeps one session across reconnects, so messages queued while it
//! is disconnected are sent once it is back, and request ids never repeat.
//!
//! The session is untyped: its queue carries encoded frames, its table of
//! outstanding requests is keyed by correlation id. The [`Protocol`] says
//! which inbound messages are replies (the seed's: no `command`, and a
//! result, `success` or an `error`) and reads their id. A reply completes
//! the outstanding request with its id; a reply that matches nothing is
//! logged and dropped, never handed to anyone else. Every other message is
//! a request for the [`Handler`](crate::Handler).

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use async_tungstenite::tungstenite::Message as Frame;

use crate::log_safe::{log_limited, LogLimit};
#[cfg(feature = "metrics")]
use crate::server::metrics::Metrics;
use crate::time::timeout;
use crate::{Message, Peer, Protocol, Seed};

/// A decoded reply on its way to the request that awaits it. Boxed as
/// `Any` so that the session stays untyped (one copy of it whatever the
/// protocol); the [`PendingReply`] of that protocol downcasts it back.
type AnyReply = Box<dyn Any + Send>;

/// Log lines about replies that match no outstanding request.
static UNMATCHED: LogLimit = LogLimit::new();

/// Longest Close reason, in bytes: a Close frame's payload is at most 125
/// bytes (RFC 6455 §5.5), two of which are the code.
pub const MAX_CLOSE_REASON: usize = 123;

/// `reason`, cut to at most [`MAX_CLOSE_REASON`] bytes at a character
/// boundary.
fn close_reason(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// One item in the outbound queue: frames already encoded (by
/// [`Peer::send`] for typed messages), so the queue is the same whatever
/// the protocol.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A frame to send as is; a broadcast's bytes are shared with the
    /// other queues (cloning a frame only counts a reference).
    Frame(Frame),
    /// A request registered as outstanding under this id; marked in flight
    /// once written.
    Request(i64, Frame),
    /// Close the connection with this code and reason once everything
    /// before it is sent. (Boxed: no bigger than a frame.)
    Close(u16, Box<str>),
}

/// Why a message could not be queued; the message (or frame) comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError<M = Message> {
    /// The outbound queue holds [`Config::outbound_capacity`](crate::Config::outbound_capacity) messages.
    Full(M),
    /// The connection (or client) is closed for good.
    Closed(M),
}

impl<M> fmt::Display for SendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Full(_) => write!(f, "outbound queue full"),
            SendError::Closed(_) => write!(f, "connection closed"),
        }
    }
}

impl<M: fmt::Debug> std::error::Error for SendError<M> {}

impl<M> SendError<M> {
    /// The same error around something else (the message a frame was
    /// encoded from).
    fn map<N>(self, f: impl FnOnce(M) -> N) -> SendError<N> {
        match self {
            SendError::Full(m) => SendError::Full(f(m)),
            SendError::Closed(m) => SendError::Closed(f(m)),
        }
    }
}

/// Why a request got no reply.
///
/// The variants that mean "not sent" ([`Full`](Self::Full),
/// [`Closed`](Self::Closed)) are named as [`SendError`]'s.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// The outbound queue was full; the request was not sent.
    Full,
    /// The connection (or client) is closed for good; not sent.
    Closed,
    /// The request was sent, but the connection dropped before its reply
    /// came. It is *not* re-sent (the command may have run); retry if safe.
    ConnectionLost,
    /// No reply within the request timeout.
    Timeout,
    /// [`Hub::request`](crate::Hub::request): no live connection has this
    /// id (it never existed, or has ended); not sent.
    UnknownPeer(u64),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestError::Full => "outbound queue full",
            RequestError::Closed => "connection closed",
            RequestError::ConnectionLost => "connection lost before the reply arrived",
            RequestError::Timeout => "no reply within the request timeout",
            RequestError::UnknownPeer(id) => return write!(f, "no connection with id {id}"),
        })
    }
}

impl std::error::Error for RequestError {}

/// A queue and a table of outstanding requests shared by the tasks that
/// talk to one peer (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
}

struct SessionInner {
    outbox: Outbox,
    capacity: usize,
    request_timeout: Duration,
    next_id: AtomicI64,
    /// Number of entries in `pending`, read without the lock so that
    /// connections with no outstanding requests skip it entirely.
    pending_len: AtomicUsize,
    pending: Mutex<Outstanding>,
}

/// The outbound queue: a locked deque and the waker of the one connection
/// loop that drains it. It allocates only while items wait; an
/// async-channel here cost every idle connection about 0.6 KiB (its
/// cache-padded queue) plus a listener allocation per wait.
#[derive(Default)]
struct Outbox {
    state: Mutex<OutboxState>,
}

#[derive(Default)]
struct OutboxState {
    items: VecDeque<Outgoing>,
    waker: Option<Waker>,
    closed: bool,
}

/// Why [`Outbox::push`] refused an item.
pub(crate) enum Refused {
    Full,
    Closed,
}

/// A queue that grew past this many slots is released once drained, so a
/// burst does not leave its memory behind on an idle connection.
const OUTBOX_KEEP_SLOTS: usize = 8;

impl Outbox {
    /// Queues `item`, refusing it past `capacity` (when given) or once
    /// closed, and wakes the loop.
    fn push(&self, item: Outgoing, capacity: Option<usize>) -> Result<(), (Outgoing, Refused)> {
        let waker = {
            let mut state = self.lock();
            if state.closed {
                return Err((item, Refused::Closed));
            }
            if capacity.is_some_and(|cap| state.items.len() >= cap) {
                return Err((item, Refused::Full));
            }
            state.items.push_back(item);
            state.waker.take()
        };
        // Wake outside the lock.
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<Outgoing>> {
        let mut state = self.lock();
        if let Some(item) = state.items.pop_front() {
            if state.items.is_empty() && state.items.capacity() > OUTBOX_KEEP_SLOTS {
                state.items = VecDeque::new();
            }
            return Poll::Ready(Some(item));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn len(&self) -> usize {
        self.lock().items.len()
    }

    fn close(&self) {
        let waker = {
            let mut state = self.lock();
            state.closed = true;
            state.items.clear();
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The outstanding requests by id, in id order. Ids are given out in
/// order, so a new one goes at (or next to) the back, and replies, which
/// mostly come in order too, are taken from near the front: a deque moves
/// only the shorter side on removal. Cheaper in code than a hash map, and
/// a session seldom has more than a few requests out.
#[derive(Default)]
struct Outstanding(VecDeque<(i64, Pending)>);

impl Outstanding {
    /// Where `id` is, or would go.
    fn find(&self, id: i64) -> Result<usize, usize> {
        self.0.binary_search_by_key(&id, |(id, _)| *id)
    }

    /// Adds the request `id` in its place (ids are unique).
    fn insert(&mut self, id: i64, pending: Pending) {
        if let Err(at) = self.find(id) {
            self.0.insert(at, (id, pending));
        }
    }

    fn get_mut(&mut self, id: &i64) -> Option<&mut Pending> {
        let at = self.find(*id).ok()?;
        self.0.get_mut(at).map(|(_, pending)| pending)
    }

    fn remove(&mut self, id: &i64) -> Option<Pending> {
        let at = self.find(*id).ok()?;
        self.0.remove(at).map(|(_, pending)| pending)
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// One outstanding request.
struct Pending {
    reply: Sender<AnyReply>,
    /// Written to a connection; lost with it if that connection drops.
    in_flight: bool,
}

impl Session {
    /// A session whose queue holds at most `capacity` messages and whose
    /// requests wait at most `request_timeout` for their reply.
    pub fn new(capacity: usize, request_timeout: Duration) -> Session {
        Session {
            inner: Arc::new(SessionInner {
                outbox: Outbox::default(),
                capacity,
                // Saturated: each request's deadline is `now + this`.
                request_timeout: crate::config::saturate(request_timeout),
                next_id: AtomicI64::new(1),
                pending_len: AtomicUsize::new(0),
                pending: Mutex::default(),
            }),
        }
    }

    /// Queues `message` without waiting (fire and forget).
    pub fn send(&self, message: Message) -> Result<(), SendError> {
        self.send_message::<Seed>(message)
    }

    /// Encodes `message` in protocol `P` and queues it without waiting;
    /// when it cannot be queued, the message comes back in the error.
    pub fn send_message<P: Protocol>(
        &self,
        message: P::Message,
    ) -> Result<(), SendError<P::Message>> {
        self.send_frame(P::encode(&message))
            .map_err(|err| err.map(|_| message))
    }

    /// Queues one raw frame (text or binary) without waiting, under the
    /// same bound as [`send`](Self::send).
    pub fn send_frame(&self, frame: Frame) -> Result<(), SendError<Frame>> {
        let capacity = Some(self.inner.capacity);
        match self.inner.outbox.push(Outgoing::Frame(frame), capacity) {
            Ok(()) => Ok(()),
            Err((Outgoing::Frame(f), Refused::Full)) => Err(SendError::Full(f)),
            Err((Outgoing::Frame(f), Refused::Closed)) => Err(SendError::Closed(f)),
            Err(_) => unreachable!("push returns what it was given"),
        }
    }

    /// Queues a frame whose bytes other queues share (a broadcast's),
    /// under the same bound as [`send`](Self::send).
    pub(crate) fn send_shared(&self, frame: Frame) -> Result<(), Refused> {
        let capacity = Some(self.inner.capacity);
        self.inner
            .outbox
            .push(Outgoing::Frame(frame), capacity)
            .map_err(|(_, refused)| refused)
    }

    /// Sends `command` under a fresh `requestID` and waits for the reply
    /// with that id, at most the request timeout.
    pub async fn request(&self, command: impl Into<String>) -> Result<Message, RequestError> {
        self.start_request(command)?.wait().await
    }

    /// Queues a request now and returns a handle to await its reply later,
    /// so many requests can be in flight at once (for example a broadcast).
    pub fn start_request(&self, command: impl Into<String>) -> Result<PendingReply, RequestError> {
        self.start_request_message::<Seed>(Message::request(0, command))
    }

    /// Stamps `request` with a fresh correlation id, queues it in protocol
    /// `P` and returns the handle to await its reply with.
    pub fn start_request_message<P: Protocol>(
        &self,
        mut request: P::Message,
    ) -> Result<PendingReply<P>, RequestError> {
        let inner = &self.inner;
        if inner.outbox.len() >= inner.capacity {
            return Err(RequestError::Full);
        }
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        P::set_correlation_id(&mut request, id);
        let (reply_tx, reply_rx) = async_channel::bounded(1);
        self.lock().insert(
            id,
            Pending {
                reply: reply_tx,
                in_flight: false,
            },
        );
        inner.pending_len.fetch_add(1, Ordering::Relaxed);
        // From here on the handle's drop removes the entry, whatever happens.
        let handle = PendingReply {
            id,
            session: self.clone(),
            reply: reply_rx,
            deadline: Instant::now() + inner.request_timeout,
            #[cfg(feature = "metrics")]
            metrics: None,
            protocol: PhantomData,
        };
        let request = Outgoing::Request(id, P::encode(&request));
        match inner.outbox.push(request, Some(inner.capacity)) {
            Ok(()) => Ok(handle),
            Err((_, Refused::Full)) => Err(RequestError::Full),
            Err((_, Refused::Closed)) => Err(RequestError::Closed),
        }
    }

    /// Asks the connection to close with `code` and `reason` once
    /// everything queued before this call is sent. Ignores the capacity
    /// bound, so a full queue cannot prevent a close. A reason over
    /// [`MAX_CLOSE_REASON`] bytes is cut there (at a character boundary).
    pub fn close(&self, code: u16, reason: &str) {
        let reason = close_reason(reason).into();
        let _ = self.inner.outbox.push(Outgoing::Close(code, reason), None);
    }

    /// Messages waiting in the queue.
    pub fn queued(&self) -> usize {
        self.inner.outbox.len()
    }

    /// Requests waiting for a reply.
    pub fn outstanding(&self) -> usize {
        self.inner.pending_len.load(Ordering::Relaxed)
    }

    /// The next queued item for the connection loop (only one loop drains
    /// a session at a time); `None` once the session is shut.
    pub(crate) fn poll_outgoing(&self, cx: &mut Context<'_>) -> Poll<Option<Outgoing>> {
        self.inner.outbox.poll_pop(cx)
    }

    /// Closes the queue for good: later sends fail with `Closed`, and every
    /// outstanding request fails too.
    pub(crate) fn shut(&self) {
        self.inner.outbox.close();
        self.fail(|_| true);
    }

    /// Whether the session is closed for good (its connection ended, or
    /// the client was closed): sends and requests fail from now on.
    pub fn is_shut(&self) -> bool {
        self.inner.outbox.is_closed()
    }

    /// Records that the request `id` was written to the current connection.
    pub(crate) fn mark_in_flight(&self, id: i64) {
        if let Some(pending) = self.lock().get_mut(&id) {
            pending.in_flight = true;
        }
    }

    /// Fails the requests written to a connection that has just dropped;
    /// requests still queued stay, to be sent on the next connection.
    pub(crate) fn connection_lost(&self) {
        self.fail(|pending| pending.in_flight);
    }

    /// [`Peer::route_reply`]: a frame that decodes as a reply in protocol
    /// `P` is routed here and consumed (`None`); anything else comes back.
    /// While no request is outstanding (and without a reply hook) nothing
    /// can match, so the frame is not even decoded.
    pub(crate) fn route_frame<P: Protocol>(&self, frame: Frame, peer: &Peer<P>) -> Option<Frame> {
        #[cfg(feature = "forwarder")]
        let hooked = peer.reply_route().is_some();
        #[cfg(not(feature = "forwarder"))]
        let hooked = false;
        if !hooked && self.inner.pending_len.load(Ordering::Relaxed) == 0 {
            return Some(frame);
        }
        let bytes: &[u8] = match &frame {
            Frame::Text(text) => text.as_bytes(),
            Frame::Binary(bytes) => bytes,
            _ => return Some(frame),
        };
        match P::decode(bytes).map(|message| self.route(message, peer)) {
            // A reply, routed (or the hook's, taken).
            Ok(None) => None,
            // A request, or something the handler reads its own way.
            Ok(Some(_)) | Err(_) => Some(frame),
        }
    }

    /// Routes an inbound message from `peer`. Returns it back when it is a
    /// request for the handler; consumes it when it is a reply (matched or
    /// dropped).
    pub(crate) fn route<P: Protocol>(
        &self,
        message: P::Message,
        peer: &Peer<P>,
    ) -> Option<P::Message> {
        // The connection's own reply hook (the forwarder's, on a named
        // client) comes first: its replies are never timed out here.
        // (Only the forwarder installs one: the small build skips it.)
        #[cfg(feature = "forwarder")]
        let message = offer_to_hook(message, peer)?;
        if !P::is_reply(&message) {
            return Some(message);
        }
        // Ids are given out from 1: a reply without one matches nothing.
        let id = P::correlation_id(&message).unwrap_or(0);
        let pending = match self.inner.pending_len.load(Ordering::Relaxed) {
            0 => None,
            _ => self.lock().remove(&id),
        };
        match pending {
            Some(pending) => {
                self.inner.pending_len.fetch_sub(1, Ordering::Relaxed);
                let _ = pending.reply.try_send(Box::new(message));
            }
            None => unmatched(peer, id),
        }
        None
    }

    /// Drops the reply channels of the requests `which` selects; their
    /// waiters see the channel closed.
    fn fail(&self, which: impl Fn(&Pending) -> bool) {
        let mut pending = self.lock();
        let before = pending.len();
        pending.0.retain(|(_, p)| !which(p));
        let failed = before - pending.len();
        self.inner.pending_len.fetch_sub(failed, Ordering::Relaxed);
    }

    fn forget(&self, id: i64) {
        if self.lock().remove(&id).is_some() {
            self.inner.pending_len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Outstanding> {
        // Every critical section is a single list operation; a poisoned
        // lock still holds a consistent list.
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("queued", &self.queued())
            .field("outstanding", &self.outstanding())
            .finish()
    }
}

/// Logs a reply that matches no outstanding request (it is dropped). The
/// peer decides how often this happens: debug, rate-limited. One copy,
/// whatever the protocol.
fn unmatched(peer: &dyn fmt::Display, id: i64) {
    // A DEBUG line, so only with `debug-logs` (see `debug!`).
    if !cfg!(feature = "debug-logs") {
        return;
    }
    log_limited!(
        UNMATCHED,
        log::Level::Debug,
        "{peer} sent a reply for id {id} that matches no outstanding request; dropped"
    );
}

/// Offers an inbound seed message without a `command` to the connection's
/// reply hook (see [`ReplyRoute`](crate::ReplyRoute)); it sees a reply
/// reporting failure (`success:false`, no `error`) too, and takes only
/// those answering its own requestIDs. Connections of other protocols
/// have no hook (the forwarder speaks the seed's).
#[cfg(feature = "forwarder")]
fn offer_to_hook<P: Protocol>(message: P::Message, peer: &Peer<P>) -> Option<P::Message> {
    let Some(route) = peer.reply_route() else {
        return Some(message);
    };
    let mut slot = Some(message);
    if let Some(seed) = (&mut slot as &mut dyn Any).downcast_mut::<Option<Message>>() {
        if let Some(message) = seed.take() {
            *seed = match message.command.is_empty() {
                true => route.take_reply(&peer.retyped(), message),
                false => Some(message),
            };
        }
    }
    slot
}

/// A request that has been queued; [`wait`](Self::wait) for its reply.
/// Dropping it forgets the request (a late reply is then dropped).
pub struct PendingReply<P: Protocol = Seed> {
    id: i64,
    session: Session,
    reply: Receiver<AnyReply>,
    deadline: Instant,
    /// Where the reply's latency is counted (a server's hub sets it).
    #[cfg(feature = "metrics")]
    metrics: Option<Arc<Metrics>>,
    protocol: PhantomData<fn() -> P>,
}

impl<P: Protocol> PendingReply<P> {
    /// The correlation id (`requestID`) the request was sent under.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Counts the reply's latency (measured when it is awaited) in `metrics`.
    #[cfg(feature = "metrics")]
    pub(crate) fn observed_by(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Waits for the reply, until the deadline set when it was queued.
    pub async fn wait(self) -> Result<P::Message, RequestError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        match timeout(left, self.reply.recv()).await {
            Some(Ok(reply)) => {
                #[cfg(feature = "metrics")]
                if let Some(metrics) = &self.metrics {
                    let left = self.deadline.saturating_duration_since(Instant::now());
                    metrics
                        .request_latency(self.session.inner.request_timeout.saturating_sub(left));
                }
                // The session's loop decodes replies in the protocol its
                // peer speaks, which is this one: the downcast holds.
                reply
                    .downcast::<P::Message>()
                    .map(|reply| *reply)
                    .map_err(|_| RequestError::ConnectionLost)
            }
            Some(Err(_)) => Err(RequestError::ConnectionLost),
            None => Err(RequestError::Timeout),
        }
    }
}

impl<P: Protocol> Drop for PendingReply<P> {
    fn drop(&mut self) {
        self.session.forget(self.id);
    }
}

impl<P: Protocol> fmt::Debug for PendingReply<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingReply")
            .field("id", &self.id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_close_reasons_are_cut_at_a_character_boundary() {
        assert_eq!(close_reason("bye"), "bye");
        let long = "é".repeat(100); // 200 bytes, 2 per character
        let cut = close_reason(&long);
        assert_eq!(cut.len(), MAX_CLOSE_REASON - 1);
        assert!(long.starts_with(cut));
    }
}
