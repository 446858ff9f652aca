//! The registry of live connections on a server: list them, push to one,
//! broadcast to all, publish to a topic's subscribers (feature `topics`),
//! close them all at shutdown.
//!
//! The hub alone owns the list. Its lock is a plain mutex held only to copy
//! or change the list, never across an `.await`, and every push is a
//! non-blocking [`Peer::send`], so one stuck client cannot stall the others.
//! The list is untyped (what a connection queues is already encoded);
//! [`Hub<P>`](Hub) is the typed view a server speaking protocol `P` hands
//! out, so a broadcast encodes in `P` once and shares the bytes.

#[cfg(feature = "topics")]
use std::collections::BTreeSet;
#[cfg(feature = "topics")]
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
#[cfg(feature = "metrics")]
use std::time::Instant;

use async_tungstenite::tungstenite::Message as Frame;

use crate::connection::session::Refused;
use crate::server::metrics::Metrics;
use crate::{Message, Peer, PendingReply, Protocol, RequestError, Seed, CLOSE_POLICY};

/// Live connections of one server, by [`Peer::id`], seen in the protocol
/// `P` they speak ([`Seed`] by default). Cloning it shares the same list.
pub struct Hub<P = Seed> {
    core: Arc<HubCore>,
    /// The server's counters, for `/metrics` (request latency is counted
    /// here, where server-initiated requests start); every view shares them.
    pub(crate) metrics: Arc<Metrics>,
    protocol: PhantomData<fn() -> P>,
}

/// The list behind every view of one hub.
#[derive(Default)]
struct HubCore {
    /// Untyped views (`Peer<()>`): the records are the same whatever the
    /// protocol.
    peers: Mutex<Live>,
    /// Messages received from and sent to connections that have left.
    departed_received: AtomicU64,
    departed_sent: AtomicU64,
    /// Set by [`close_all`](Hub::close_all): connections that register
    /// afterwards are closed with this code at once (0 = not closing).
    closing: AtomicU16,
    /// The last connection id given out (ids start at 1).
    last_id: AtomicU64,
    /// Who subscribes to what. Locked before `peers` when both are.
    #[cfg(feature = "topics")]
    topics: Mutex<Topics>,
}

/// The live connections in id order, oldest first, as a broadcast goes
/// through them: in a map's random order the same broadcast to 10,000
/// peers cost 40% more server CPU (cache and TLB misses), and a map
/// sorted on every snapshot costs a sort's code and time. Ids grow, so a
/// new connection goes at (or next to) the end; the one that leaves is
/// found by binary search, and the rest move up (a pointer each, so
/// 80 KB at most at 10,000 connections: microseconds, under the lock).
#[derive(Default)]
struct Live(Vec<Peer<()>>);

impl Live {
    /// Where `id` is, or would go.
    fn find(&self, id: u64) -> Result<usize, usize> {
        self.0.binary_search_by_key(&id, Peer::id)
    }

    fn get(&self, id: &u64) -> Option<&Peer<()>> {
        self.find(*id).ok().map(|at| &self.0[at])
    }

    #[cfg(feature = "topics")]
    fn contains_key(&self, id: &u64) -> bool {
        self.find(*id).is_ok()
    }

    /// Adds `peer` in its place by id (ids are unique).
    fn insert(&mut self, peer: Peer<()>) {
        if let Err(at) = self.find(peer.id()) {
            self.0.insert(at, peer);
        }
    }

    fn remove(&mut self, id: &u64) -> Option<Peer<()>> {
        let at = self.find(*id).ok()?;
        Some(self.0.remove(at))
    }

    fn values(&self) -> std::slice::Iter<'_, Peer<()>> {
        self.0.iter()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Subscriptions, both ways: a topic's subscribers (in id order, oldest
/// first, as a broadcast goes), and a connection's topics (so that its
/// subscriptions end with it at the cost of its own topics only).
#[cfg(feature = "topics")]
#[derive(Default)]
struct Topics {
    by_topic: HashMap<Box<str>, BTreeSet<u64>>,
    by_peer: HashMap<u64, Vec<Box<str>>>,
}

impl<P> Clone for Hub<P> {
    fn clone(&self) -> Self {
        self.retyped()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl<P> fmt::Debug for Hub<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("clients", &self.len())
            .finish_non_exhaustive()
    }
}

/// Totals over a hub's lifetime, for `/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Live connections.
    pub clients: usize,
    /// Messages received from clients, live and departed.
    pub received: u64,
    /// Messages sent to clients, live and departed.
    pub sent: u64,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Hub {
            core: Arc::default(),
            metrics: Arc::default(),
            protocol: PhantomData,
        }
    }

    /// Sends `command` as a request to the connection `id` and waits for its
    /// reply (correlated by `requestID`, bounded by the request timeout).
    /// An id that names no live connection (never did, or has ended) is
    /// [`RequestError::UnknownPeer`].
    pub async fn request(&self, id: u64, command: &str) -> Result<Message, RequestError> {
        self.request_message(id, Message::request(0, command)).await
    }

    /// Queues `command` as a request to every live connection at once and
    /// returns each connection's pending reply, by id. A connection whose
    /// queue is full is closed with [`CLOSE_POLICY`], as in [`broadcast`](Self::broadcast).
    pub fn broadcast_request(
        &self,
        command: &str,
    ) -> Vec<(u64, Result<PendingReply, RequestError>)> {
        self.peers()
            .into_iter()
            .map(|peer| {
                let pending = peer.start_request(command);
                #[cfg(feature = "metrics")]
                let pending = pending.map(|p| p.observed_by(self.metrics.clone()));
                if let Err(RequestError::Full) = pending {
                    close_slow(&peer);
                }
                (peer.id(), pending)
            })
            .collect()
    }
}

impl<P: Protocol> Hub<P> {
    /// Queues `message` for every live connection; returns how many took it.
    ///
    /// The message is encoded once and its bytes are shared by every queue
    /// (each connection only copies them into its own write buffer), so a
    /// broadcast to 10,000 peers costs one encoding, not 10,000.
    ///
    /// A peer whose queue is full is too slow to keep up: it is closed with
    /// [`CLOSE_POLICY`] (1008) rather than allowed to hold memory or the
    /// broadcast back.
    pub fn broadcast(&self, message: &P::Message) -> usize {
        self.broadcast_frame(P::encode(message))
    }

    /// Sends `request` (stamped with a fresh correlation id) to the
    /// connection `id` and waits for its reply, bounded by the request
    /// timeout; [`RequestError::UnknownPeer`] when no live connection has
    /// that id.
    pub async fn request_message(
        &self,
        id: u64,
        request: P::Message,
    ) -> Result<P::Message, RequestError> {
        match self.get(id) {
            #[cfg(feature = "metrics")]
            Some(peer) => {
                let started = Instant::now();
                let reply = peer.request_message(request).await;
                if reply.is_ok() {
                    self.metrics.request_latency(started.elapsed());
                }
                reply
            }
            #[cfg(not(feature = "metrics"))]
            Some(peer) => peer.request_message(request).await,
            None => Err(RequestError::UnknownPeer(id)),
        }
    }

    /// Publishes `message` to the subscribers of `topic` (see
    /// [`subscribe`](Self::subscribe)); returns how many took it. Encoded
    /// once and shared, with the slow-consumer policy of
    /// [`broadcast`](Self::broadcast).
    #[cfg(feature = "topics")]
    pub fn publish(&self, topic: &str, message: &P::Message) -> usize {
        self.publish_frame(topic, P::encode(message))
    }
}

impl<P> Hub<P> {
    /// The same hub seen in protocol `Q`.
    pub(crate) fn retyped<Q>(&self) -> Hub<Q> {
        Hub {
            core: self.core.clone(),
            metrics: self.metrics.clone(),
            protocol: PhantomData,
        }
    }

    /// A fresh connection id for this server.
    pub(crate) fn next_id(&self) -> u64 {
        self.core.last_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Number of live connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no connection is live.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// A snapshot of the live connections, oldest first.
    pub fn peers(&self) -> Vec<Peer<P>> {
        self.lock().values().map(Peer::retyped).collect()
    }

    /// The live connection with this id, if any.
    pub fn get(&self, id: u64) -> Option<Peer<P>> {
        self.lock().get(&id).map(Peer::retyped)
    }

    /// Queues one raw frame (text or binary) for every live connection;
    /// returns how many took it. The frame's bytes are shared, not copied,
    /// and a peer too slow to take it is closed, as in
    /// [`broadcast`](Hub::broadcast).
    pub fn broadcast_frame(&self, frame: Frame) -> usize {
        // Oldest first (the list is in id order): connections then run in the
        // order they were accepted, which is also the order their tasks sit
        // in memory; in a hash map's random order the same broadcast to 10,000
        // peers cost 40% more server CPU (cache and TLB misses).
        let peers = self.peers();
        push_all(peers.iter(), &frame)
    }

    /// Subscribes the live connection `id` to `topic`; the subscription
    /// ends with [`unsubscribe`](Self::unsubscribe) or with the connection.
    /// False when no live connection has that id, or it was subscribed
    /// already.
    #[cfg(feature = "topics")]
    pub fn subscribe(&self, id: u64, topic: &str) -> bool {
        let mut topics = self.topics();
        // Checked under the topics lock: a connection that ends meanwhile
        // clears its subscriptions after this one is in.
        if !self.lock().contains_key(&id) {
            return false;
        }
        let fresh = topics.by_topic.entry(topic.into()).or_default().insert(id);
        if fresh {
            topics.by_peer.entry(id).or_default().push(topic.into());
        }
        fresh
    }

    /// Ends the subscription of `id` to `topic`; false when there was none.
    #[cfg(feature = "topics")]
    pub fn unsubscribe(&self, id: u64, topic: &str) -> bool {
        let mut topics = self.topics();
        let Some(subscribers) = topics.by_topic.get_mut(topic) else {
            return false;
        };
        let was = subscribers.remove(&id);
        if subscribers.is_empty() {
            topics.by_topic.remove(topic);
        }
        if let Some(own) = topics.by_peer.get_mut(&id) {
            own.retain(|t| &**t != topic);
            if own.is_empty() {
                topics.by_peer.remove(&id);
            }
        }
        was
    }

    /// The ids subscribed to `topic`, oldest first.
    #[cfg(feature = "topics")]
    pub fn subscribers(&self, topic: &str) -> Vec<u64> {
        let topics = self.topics();
        topics
            .by_topic
            .get(topic)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Publishes one raw frame to the subscribers of `topic`; returns how
    /// many took it (shared bytes, slow-consumer policy as in
    /// [`broadcast`](Hub::broadcast)).
    #[cfg(feature = "topics")]
    pub fn publish_frame(&self, topic: &str, frame: Frame) -> usize {
        let ids = self.subscribers(topic);
        let peers: Vec<Peer<()>> = {
            let live = self.lock();
            ids.iter().filter_map(|id| live.get(id).cloned()).collect()
        };
        push_all(peers.iter(), &frame)
    }

    /// Asks every live connection, and any that registers from now on, to
    /// close with `code`.
    pub fn close_all(&self, code: u16) {
        self.core.closing.store(code, Ordering::SeqCst);
        for peer in self.peers() {
            peer.close(code, "");
        }
    }

    /// The server's counters; [`Metrics::render`] writes what `/metrics`
    /// serves.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Live connections and message totals since the hub was created.
    pub fn stats(&self) -> HubStats {
        let peers = self.lock();
        let mut stats = HubStats {
            clients: peers.len(),
            received: self.core.departed_received.load(Ordering::Relaxed),
            sent: self.core.departed_sent.load(Ordering::Relaxed),
        };
        for peer in peers.values() {
            stats.received += peer.received();
            stats.sent += peer.sent();
        }
        stats
    }

    /// Live connections and the messages waiting in their outbound queues,
    /// for `/metrics`.
    #[cfg(feature = "metrics")]
    pub(crate) fn open_and_queued(&self) -> (usize, usize) {
        let peers = self.lock();
        let queued = peers.values().map(|p| p.session().queued()).sum();
        (peers.len(), queued)
    }

    /// Adds a connection; the server calls this once per upgrade.
    pub(crate) fn insert<Q>(&self, peer: Peer<Q>) {
        self.lock().insert(peer.retyped());
        // A connection upgraded just as shutdown began is told too.
        match self.core.closing.load(Ordering::SeqCst) {
            0 => {}
            code => peer.close(code, ""),
        }
    }

    /// Removes a connection, and its subscriptions; true the one time it
    /// was present.
    pub(crate) fn remove(&self, id: u64) -> bool {
        let removed = self.lock().remove(&id);
        // Keep its counts in the totals.
        if let Some(peer) = &removed {
            self.core
                .departed_received
                .fetch_add(peer.received(), Ordering::Relaxed);
            self.core
                .departed_sent
                .fetch_add(peer.sent(), Ordering::Relaxed);
        }
        #[cfg(feature = "topics")]
        self.forget_subscriptions(id);
        removed.is_some()
    }

    /// Ends every subscription of the connection `id`.
    #[cfg(feature = "topics")]
    fn forget_subscriptions(&self, id: u64) {
        let mut topics = self.topics();
        for topic in topics.by_peer.remove(&id).unwrap_or_default() {
            if let Some(subscribers) = topics.by_topic.get_mut(&topic) {
                subscribers.remove(&id);
                if subscribers.is_empty() {
                    topics.by_topic.remove(&topic);
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Live> {
        // A panic elsewhere while holding the lock cannot leave the list
        // half-updated (every operation is a single insert/remove/copy).
        self.core.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(feature = "topics")]
    fn topics(&self) -> MutexGuard<'_, Topics> {
        // Each operation leaves both maps consistent before it unlocks.
        self.core.topics.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Queues `frame` (its bytes shared) for each of `peers`; closes those too
/// slow to take it. Returns how many took it.
fn push_all<'a, Q: 'a>(peers: impl Iterator<Item = &'a Peer<Q>>, frame: &Frame) -> usize {
    let mut queued = 0;
    for peer in peers {
        match peer.session().send_shared(frame.clone()) {
            Ok(()) => queued += 1,
            Err(Refused::Full) => close_slow(peer),
            Err(Refused::Closed) => {}
        }
    }
    queued
}

/// The slow-consumer policy: a peer whose outbound queue is full is closed
/// with [`CLOSE_POLICY`] rather than allowed to hold memory or a push back.
fn close_slow<Q>(peer: &Peer<Q>) {
    log::warn!(
        "client {} too slow (outbound queue full); closing",
        peer.id()
    );
    peer.close(CLOSE_POLICY, "");
}
