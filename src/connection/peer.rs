//! [`Peer`]: the cloneable handle to one live connection, and the record
//! behind it (id, address, counters, its [`Session`]). Any task may hold one;
//! the connection loop in `connection/mod.rs` is what acts on it.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use async_tungstenite::tungstenite::{Bytes, Message as Frame};

use super::session::{PendingReply, RequestError, SendError, Session};
use super::Connection;
use crate::server::metrics::Metrics;
use crate::{Message, Protocol, Seed};

/// A cloneable handle to one live connection: any task may use it to send
/// to that peer or to close it. It owns nothing of the socket itself.
///
/// `P` is the [`Protocol`] the connection speaks ([`Seed`] unless said
/// otherwise): [`send`](Self::send) encodes in it. The handle is only a
/// typed view of an untyped record (the queue carries encoded frames), so
/// raw frames go through [`send_text`](Self::send_text) and
/// [`send_binary`](Self::send_binary) beside typed messages.
pub struct Peer<P = Seed> {
    pub(super) inner: Arc<PeerInner>,
    protocol: PhantomData<fn() -> P>,
}

impl<P> Clone for Peer<P> {
    fn clone(&self) -> Self {
        Peer {
            inner: self.inner.clone(),
            protocol: PhantomData,
        }
    }
}

/// The record behind every handle; the loop updates its counters.
pub(super) struct PeerInner {
    pub(super) id: u64,
    pub(super) addr: Option<SocketAddr>,
    pub(super) connected_at: SystemTime,
    pub(super) session: Session,
    pub(super) received: AtomicU64,
    pub(super) sent: AtomicU64,
    /// Where payload bytes are counted (a server's `/metrics`), if
    /// anywhere. Here rather than in the connection's future: this record
    /// is allocated anyway, the future is what idle connections cost.
    pub(super) metrics: Option<Arc<Metrics>>,
    /// The client's name and who takes its replies, for a named client
    /// (`/server?client=NAME` under the forwarder); boxed, so an anonymous
    /// connection pays one pointer for it. Feature `forwarder` only.
    #[cfg(feature = "forwarder")]
    pub(super) named: Option<Box<Named>>,
}

/// What a named connection carries besides the rest of its record.
#[cfg(feature = "forwarder")]
pub(super) struct Named {
    pub(super) name: Box<str>,
    pub(super) route: Arc<dyn ReplyRoute>,
}

/// The explicit reply-routing hook: on a connection that has one, every
/// inbound reply is offered to [`take_reply`](ReplyRoute::take_reply)
/// *before* the session's table of outstanding requests (whose entries
/// give up after [`Config::request_timeout`](crate::Config::request_timeout)
/// and drop late replies). The forwarder installs it on named connections
/// so that a reply to one of its commands completes the command's record
/// however late it comes.
pub trait ReplyRoute: Send + Sync + 'static {
    /// Takes `reply` (returns `None`) when it answers one of the hook's
    /// own commands; gives it back otherwise, for the session to route.
    fn take_reply(&self, peer: &Peer, reply: Message) -> Option<Message>;
}

/// Source of ids for connections outside a server (clients, a bare
/// [`Connection::new`]); a server numbers its own from its [`Hub`].
///
/// [`Hub`]: crate::Hub
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl<P> Peer<P> {
    /// A fresh handle for a new connection over `session`, with the next id.
    pub(super) fn new(addr: Option<SocketAddr>, session: Session) -> Peer<P> {
        Peer {
            protocol: PhantomData,
            inner: Arc::new(PeerInner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                addr,
                connected_at: SystemTime::now(),
                session,
                received: AtomicU64::new(0),
                sent: AtomicU64::new(0),
                metrics: None,
                #[cfg(feature = "forwarder")]
                named: None,
            }),
        }
    }

    /// This connection's id: on a server, unique within that server (its
    /// [`Hub`](crate::Hub) counts 1, 2, 3, ... whatever else the process
    /// dials); elsewhere (a client's connections, a bare
    /// [`Connection::new`]), unique among those, process-wide.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The remote address, when the stream has one. Behind a trusted proxy
    /// (`Server::with_trusted_proxies`) it is the client's address the proxy
    /// forwarded, with port 0.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.inner.addr
    }

    /// The client's name, for a named connection (`/server?client=NAME`;
    /// always `None` in a build without the `forwarder` feature).
    pub fn name(&self) -> Option<&str> {
        #[cfg(feature = "forwarder")]
        return self.inner.named.as_ref().map(|named| &*named.name);
        #[cfg(not(feature = "forwarder"))]
        None
    }

    /// The same connection seen in protocol `Q` (the forwarder, which
    /// speaks the seed's, takes any server's peers).
    pub(crate) fn retyped<Q>(&self) -> Peer<Q> {
        Peer {
            inner: self.inner.clone(),
            protocol: PhantomData,
        }
    }

    /// The reply-routing hook of a named connection, if any.
    #[cfg(feature = "forwarder")]
    pub(crate) fn reply_route(&self) -> Option<&dyn ReplyRoute> {
        self.inner.named.as_ref().map(|named| &*named.route)
    }

    /// When the connection was established.
    pub fn connected_at(&self) -> SystemTime {
        self.inner.connected_at
    }

    /// Messages received from the peer so far.
    pub fn received(&self) -> u64 {
        self.inner.received.load(Ordering::Relaxed)
    }

    /// Messages sent to the peer so far (replies and queued messages).
    pub fn sent(&self) -> u64 {
        self.inner.sent.load(Ordering::Relaxed)
    }

    /// Queues one text frame for the peer as is, without waiting, beside
    /// the typed messages (same queue, same bound as [`send`](Peer::send)).
    pub fn send_text(&self, text: impl Into<String>) -> Result<(), SendError<Frame>> {
        self.inner.session.send_frame(Frame::text(text.into()))
    }

    /// Queues one binary frame for the peer as is, without waiting (a
    /// `Vec<u8>`, a `&'static [u8]` or [`Bytes`]).
    pub fn send_binary(&self, bytes: impl Into<Bytes>) -> Result<(), SendError<Frame>> {
        self.inner.session.send_frame(Frame::Binary(bytes.into()))
    }

    /// Asks the connection to close with `code` (for example
    /// [`CLOSE_NORMAL`](crate::CLOSE_NORMAL)) and `reason` (sent in the
    /// Close frame; may be empty; cut at
    /// [`MAX_CLOSE_REASON`](crate::MAX_CLOSE_REASON) bytes) once the
    /// messages already queued are sent.
    pub fn close(&self, code: u16, reason: &str) {
        self.inner.session.close(code, reason);
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.session.is_shut()
    }

    /// The queue and outstanding requests behind this connection.
    pub fn session(&self) -> &Session {
        &self.inner.session
    }
}

impl<P: Protocol> Peer<P> {
    /// Queues `message` for the peer without waiting, encoded in `P`.
    ///
    /// The queue is bounded by [`Config::outbound_capacity`](crate::Config::outbound_capacity); when it is full
    /// the message comes back in [`SendError::Full`] and the caller decides
    /// (retry, drop, or [`close`](Self::close) the slow peer).
    pub fn send(&self, message: P::Message) -> Result<(), SendError<P::Message>> {
        self.inner.session.send_message::<P>(message)
    }

    /// Sends `request` under a fresh correlation id (stamped through
    /// [`Protocol::set_correlation_id`]) and waits for the reply with that
    /// id, at most [`Config::request_timeout`](crate::Config::request_timeout).
    pub async fn request_message(&self, request: P::Message) -> Result<P::Message, RequestError> {
        self.start_request_message(request)?.wait().await
    }

    /// Routes `frame` to the outstanding request it answers, if it is a
    /// reply in `P` to one of this side's requests ([`request`](Peer::request),
    /// [`Hub::request`](crate::Hub::request)): then it is consumed and
    /// `None` comes back; any other frame comes back untouched.
    ///
    /// The default [`Handler::on_frame`](crate::Handler::on_frame) routes
    /// replies itself. A handler that overrides it and still sends
    /// requests calls this first, or their replies never arrive (they time
    /// out):
    ///
    /// ```
    /// # use wsloop::{Frame, Message, Peer};
    /// # struct Raw;
    /// # impl wsloop::Handler for Raw {
    /// # async fn on_message(&self, _: &Peer, _: Message) -> Option<Message> { None }
    /// async fn on_frame(&self, peer: &Peer, frame: Frame) -> Option<Frame> {
    ///     let frame = peer.route_reply(frame)?;
    ///     // ... the handler's own frames from here on
    /// #   Some(frame)
    /// }
    /// # }
    /// ```
    ///
    /// While nothing is awaited it costs one atomic load (the frame is not
    /// decoded).
    pub fn route_reply(&self, frame: Frame) -> Option<Frame> {
        self.inner.session.route_frame(frame, self)
    }

    /// Queues `request` under a fresh correlation id now; await
    /// [`PendingReply::wait`] for the reply.
    pub fn start_request_message(
        &self,
        request: P::Message,
    ) -> Result<PendingReply<P>, RequestError> {
        self.inner.session.start_request_message::<P>(request)
    }
}

impl Peer {
    /// Sends `command` to the peer under a fresh `requestID` and waits for
    /// its reply, at most [`Config::request_timeout`](crate::Config::request_timeout).
    pub async fn request(&self, command: impl Into<String>) -> Result<Message, RequestError> {
        self.inner.session.request(command).await
    }

    /// Queues a request now; await [`PendingReply::wait`] for the reply.
    pub fn start_request(&self, command: impl Into<String>) -> Result<PendingReply, RequestError> {
        self.inner.session.start_request(command)
    }
}

impl<P> fmt::Debug for Peer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.inner.id)
            .field("addr", &self.inner.addr)
            .field("name", &self.name())
            .finish_non_exhaustive()
    }
}

impl<S, P> Connection<S, P> {
    /// Gives this connection the id `id` (a server's own numbering). Call
    /// it before the [`Peer`] is cloned (no other handle may see the
    /// change).
    pub(crate) fn with_id(mut self, id: u64) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.peer.inner) {
            inner.id = id;
        }
        self
    }
}
