//! The command forwarder: commands for *named* clients
//! (`/server?client=NAME`) that are recorded before they are acknowledged,
//! wait while their client is offline, go out in order once it is
//! connected, and always end in a known final state (see [`Record`]).
//!
//! ```text
//!  operator API ─▶ submit ─▶ Store::enqueue (durable: the acknowledgement)
//!                              │
//!                              ▼
//!  named client connects ─▶ deliver: every pending command not yet on
//!                           this connection, in requestID order
//!  its reply ─▶ ReplyRoute::take_reply ─▶ record final ─▶ waiters, store
//!  a tick every second ─▶ expire what outlived --command-ttl
//! ```
//!
//! The forwarder keeps each client's pending commands in memory (loaded
//! from the [`Store`] at start) and writes every state change through to
//! the store from one task ([`Forwarder::run`]), in order. Replies reach it
//! through the connection's explicit reply hook ([`ReplyRoute`]), ahead of
//! the session's timed table of outstanding requests: a reply that comes
//! after every waiting caller gave up still completes its record.
//!
//! Delivery is *at least once* on the wire and *at most once* in effect: a
//! command written to a connection that then dropped is written again,
//! under the same requestID, on the client's next connection; the device
//! answers a requestID it has already answered with its stored reply, and
//! one it started but never finished with `success:false` and
//! `someOtherThing` starting with [`INTERRUPTED_PREFIX`].
//!
//! In a cluster (feature `redis`, `Forwarder::open_cluster`) the store
//! is Redis and a client's pending commands are in this node's memory only
//! while it is connected here: loaded when it connects, forgotten when it
//! leaves; a command for a client held by another node is handed to that
//! node (see the `cluster` module).

pub(crate) mod api;
#[cfg(feature = "redis")]
mod cluster;
mod memory;
mod record;
mod redb;
#[cfg(feature = "redis")]
mod redis;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_channel::{Receiver, Sender};
use async_io::Timer;
use futures_lite::{future, StreamExt};
use serde::Serialize;

pub use memory::{MemoryStore, KEEP_FINAL};
pub use record::{now_ms, Record, Reply, Status, INTERRUPTED_PREFIX};
pub use redb::{RedbStore, FILE_NAME};
pub use store::{NewCommand, Store, StoreError, StoreFuture};
#[cfg(feature = "redis")]
pub use {
    cluster::{valid_node_id, Cluster, HEARTBEAT, HOLD_TTL, MAX_NODE_ID_LEN},
    redis::RedisStore,
};

use crate::http::access::{constant_time_eq, presented_tokens, query_param};
use crate::http::Request;
use crate::log_safe::quote;
use crate::{Message, Peer, ReplyRoute};

/// Commands a client may have pending (queued or sent) by default
/// (`--max-queued`): enough for any sane backlog, small enough that a
/// runaway script is refused (429) long before memory suffers.
pub const DEFAULT_MAX_QUEUED: usize = 1_000;

/// How long a command may wait for its final state by default
/// (`--command-ttl`): a device off for a day is presumed gone.
pub const DEFAULT_COMMAND_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest client name (`?client=`).
pub const MAX_NAME_LEN: usize = 64;

/// The close code an older connection gets when a newer one takes its
/// name (a private-use code, RFC 6455 7.4.2).
pub const CLOSE_REPLACED: u16 = 4000;

/// How often commands are checked against their time to live.
const EXPIRY_TICK: Duration = Duration::from_secs(1);

/// How the forwarder is set up.
#[derive(Debug, Clone)]
pub struct ForwarderOptions {
    /// Pending commands per client before submits are refused.
    pub max_queued: usize,
    /// Time to live of a command, from its acknowledgement.
    pub command_ttl: Duration,
    /// Per-client tokens (`--tokens`): when non-empty, a named connection
    /// must present the token listed for its name.
    pub tokens: HashMap<String, String>,
    /// The operator API's token; `None` disables the API.
    pub operator_token: Option<String>,
}

impl Default for ForwarderOptions {
    fn default() -> Self {
        ForwarderOptions {
            max_queued: DEFAULT_MAX_QUEUED,
            command_ttl: DEFAULT_COMMAND_TTL,
            tokens: HashMap::new(),
            operator_token: None,
        }
    }
}

/// The forwarder: cloneable handle; see the module docs.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

struct Inner {
    store: Box<dyn Store>,
    options: ForwarderOptions,
    state: Mutex<State>,
    /// State changes for the store, written in order by [`Forwarder::run`].
    saves: Sender<Save>,
    saves_rx: Receiver<Save>,
    /// With `--redis`: this node's part in the cluster.
    #[cfg(feature = "redis")]
    cluster: Option<Arc<cluster::Cluster>>,
}

/// One write for the store task.
enum Save {
    Record(Record),
    Client(String),
}

#[derive(Default)]
struct State {
    clients: HashMap<Box<str>, Client>,
    /// Callers waiting for a record's final state.
    waiters: HashMap<(Box<str>, i64), Vec<Sender<Record>>>,
    /// Final records the store task has not written yet (so that a GET
    /// between the two sees the final state).
    unsaved: HashMap<(Box<str>, i64), Record>,
}

/// What the forwarder knows of one named client.
#[derive(Default)]
struct Client {
    /// Its current connection.
    peer: Option<Peer>,
    address: Option<SocketAddr>,
    connected_since: Option<u64>,
    last_seen: Option<u64>,
    /// Its commands not yet final, by requestID.
    pending: BTreeMap<i64, Pending>,
    /// Submits between their queue check and their enqueue.
    reserved: usize,
    /// With `--redis`: the sequence number of this node's claim of the
    /// name for the current connection (`None` while it is in flight).
    #[cfg(feature = "redis")]
    claim: Option<u64>,
}

struct Pending {
    record: Record,
    /// Written to the current connection.
    on_wire: bool,
}

/// One client as `GET /api/clients` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ClientInfo {
    /// Its name.
    pub name: String,
    /// Whether it is connected now.
    pub connected: bool,
    /// Its address, while connected.
    pub address: Option<String>,
    /// Since when (ms since the epoch), while connected.
    pub connected_since: Option<u64>,
    /// When it last connected, disconnected or replied.
    pub last_seen: Option<u64>,
    /// Its commands not yet final.
    pub queued: usize,
    /// With `--redis`: the node it is connected to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Why a command was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitError {
    /// No such client (never connected, not in `--tokens`).
    UnknownClient,
    /// Its queue holds `--max-queued` commands.
    Full(usize),
    /// The store failed; nothing was acknowledged.
    Store(String),
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::UnknownClient => f.write_str("no such client"),
            SubmitError::Full(max) => {
                write!(
                    f,
                    "the client's queue is full ({max} commands not yet final)"
                )
            }
            SubmitError::Store(why) => write!(f, "command store failed: {why}"),
        }
    }
}

impl std::error::Error for SubmitError {}

/// Why a command was not cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelError {
    /// No such client or command.
    NotFound,
    /// It is no longer queued: it stands here.
    NotQueued(Status),
    /// The store failed.
    Store(String),
}

impl Forwarder {
    /// A forwarder over `store`, with every known client and its pending
    /// commands loaded from it. Spawn [`run`](Self::run) next to it.
    pub async fn open(
        store: Box<dyn Store>,
        options: ForwarderOptions,
    ) -> Result<Self, StoreError> {
        Self::open_inner(store, options, None).await
    }

    /// A forwarder that is one node of a cluster sharing `store` (the
    /// cluster's [`RedisStore`]): a client's pending commands are loaded
    /// when it connects here, not at start (they belong to whichever node
    /// holds it). Spawn [`run`](Self::run) next to it.
    #[cfg(feature = "redis")]
    pub async fn open_cluster(
        cluster: Cluster,
        store: RedisStore,
        options: ForwarderOptions,
    ) -> Result<Self, StoreError> {
        Self::open_inner(Box::new(store), options, Some(Arc::new(cluster))).await
    }

    async fn open_inner(
        store: Box<dyn Store>,
        options: ForwarderOptions,
        #[cfg(feature = "redis")] cluster: Option<Arc<cluster::Cluster>>,
        #[cfg(not(feature = "redis"))] _cluster: Option<()>,
    ) -> Result<Self, StoreError> {
        #[cfg(feature = "redis")]
        let shared = cluster.is_some();
        #[cfg(not(feature = "redis"))]
        let shared = false;
        let mut state = State::default();
        let mut names = store.clients().await?;
        names.extend(options.tokens.keys().cloned());
        for name in names {
            let mut client = Client::default();
            // In a cluster, the node that holds the client loads them.
            let pending = match shared {
                true => Vec::new(),
                false => store.pending(name.clone()).await?,
            };
            for record in pending {
                let pending = Pending {
                    record,
                    on_wire: false,
                };
                client.pending.insert(pending.record.request_id, pending);
            }
            state.clients.insert(name.into_boxed_str(), client);
        }
        let (saves, saves_rx) = async_channel::unbounded();
        let inner = Inner {
            store,
            options,
            state: Mutex::new(state),
            saves,
            saves_rx,
            #[cfg(feature = "redis")]
            cluster,
        };
        Ok(Forwarder {
            inner: Arc::new(inner),
        })
    }

    /// The forwarder's one task: writes every state change to the store,
    /// in order, and expires commands past their time to live. Runs until
    /// dropped.
    pub fn run(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let inner = self.inner.clone();
        #[cfg(feature = "redis")]
        let cluster = self.inner.clone().run_cluster();
        #[cfg(not(feature = "redis"))]
        let cluster = std::future::pending::<()>();
        let saves = async move {
            let mut tick = Timer::interval(EXPIRY_TICK);
            loop {
                let save = async { inner.saves_rx.recv().await.ok() };
                let expire = async {
                    tick.next().await;
                    None
                };
                match future::or(save, expire).await {
                    Some(save) => inner.save(save).await,
                    None => inner.expire(now_ms()),
                }
            }
        };
        future::or(saves, cluster)
    }

    /// The options it runs with.
    pub fn options(&self) -> &ForwarderOptions {
        &self.inner.options
    }

    /// The client name an upgrade request claims, checked: `Ok(None)` for
    /// an anonymous connection; `Err((status, why))` for a malformed name
    /// (400) or, under `--tokens`, a missing (401) or wrong (403) token.
    pub fn check_name(&self, request: &Request) -> Result<Option<Box<str>>, (u16, String)> {
        let Some(raw) = query_param(request, "client") else {
            return Ok(None);
        };
        let name = valid_name(&raw).ok_or_else(|| {
            let why = format!(
                "bad client name: 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ - expected"
            );
            (400, why)
        })?;
        let tokens = &self.inner.options.tokens;
        if tokens.is_empty() {
            return Ok(Some(name.into()));
        }
        let Some(expected) = tokens.get(name) else {
            return Err((403, "no token is listed for this client name".into()));
        };
        let presented = presented_tokens(request);
        if presented.iter().all(Option::is_none) {
            return Err((401, "this client name needs its token".into()));
        }
        let matches = presented
            .iter()
            .flatten()
            .any(|given| constant_time_eq(given, expected.as_bytes()));
        match matches {
            true => Ok(Some(name.into())),
            false => Err((403, "the token presented is not this client's".into())),
        }
    }

    /// Whether a connection must (also) pass the shared `--token-file`
    /// check: anonymous ones do, and named ones unless `--tokens` proved
    /// their name already.
    pub fn needs_shared_token(&self, named: bool) -> bool {
        !named || self.inner.options.tokens.is_empty()
    }

    /// The reply hook to install on a named connection.
    pub(crate) fn route(&self) -> Arc<dyn ReplyRoute> {
        self.inner.clone()
    }

    /// A named connection is up: it replaces an older one of that name
    /// (closed with [`CLOSE_REPLACED`]; its unanswered commands move here)
    /// and receives every pending command, in order.
    pub fn connected(&self, peer: &Peer) {
        let Some(name) = peer.name() else { return };
        let now = now_ms();
        let mut state = self.inner.lock();
        if !state.clients.contains_key(name) {
            let _ = self.inner.saves.try_send(Save::Client(name.to_string()));
        }
        let client = state.clients.entry(name.into()).or_default();
        if let Some(old) = client.peer.replace(peer.clone()) {
            if old.id() != peer.id() {
                log::info!(
                    "client {:?}: connection {} replaced by {}",
                    quote(name),
                    old.id(),
                    peer.id()
                );
                old.close(
                    CLOSE_REPLACED,
                    "replaced by a newer connection with this name",
                );
            }
        }
        client.address = peer.addr();
        client.connected_since = Some(now);
        client.last_seen = Some(now);
        // Nothing is on this connection yet: everything pending goes out.
        client.pending.values_mut().for_each(|p| p.on_wire = false);
        self.inner.deliver(client, now);
        // In a cluster: claim the name, then load its queue from Redis.
        #[cfg(feature = "redis")]
        if let Some(cluster) = &self.inner.cluster {
            client.claim = None;
            let _ = cluster
                .jobs
                .try_send(cluster::Job::Claim(name.into(), peer.id()));
        }
    }

    /// A named connection has ended; unless a newer one replaced it, its
    /// client is offline now and its commands wait for the next one.
    pub fn disconnected(&self, peer: &Peer) {
        let Some(name) = peer.name() else { return };
        let mut state = self.inner.lock();
        let Some(client) = state.clients.get_mut(name) else {
            return;
        };
        if client.peer.as_ref().is_some_and(|p| p.id() == peer.id()) {
            client.peer = None;
            client.connected_since = None;
            client.last_seen = Some(now_ms());
            client.pending.values_mut().for_each(|p| p.on_wire = false);
            // In a cluster the queue is Redis's: the next holder loads it.
            #[cfg(feature = "redis")]
            if let Some(cluster) = &self.inner.cluster {
                client.pending.clear();
                client.claim = None;
                let _ = cluster
                    .jobs
                    .try_send(cluster::Job::Release(name.into(), peer.id()));
            }
        }
    }

    /// Records `command` for `name` (durably, before returning) and sends
    /// it at once when the client is connected. Returns the record as it
    /// stands, and with `wait` a channel that receives its final state.
    pub async fn submit(
        &self,
        name: &str,
        command: &str,
        wait: bool,
    ) -> Result<(Record, Option<Receiver<Record>>), SubmitError> {
        let max = self.inner.options.max_queued;
        self.learn(name).await?;
        {
            let mut state = self.inner.lock();
            let client = state
                .clients
                .get_mut(name)
                .ok_or(SubmitError::UnknownClient)?;
            if client.pending.len() + client.reserved >= max {
                return Err(SubmitError::Full(max));
            }
            client.reserved += 1;
        }
        let now = now_ms();
        let ttl = u64::try_from(self.inner.options.command_ttl.as_millis()).unwrap_or(u64::MAX);
        let new = NewCommand {
            client: name.to_string(),
            command: command.to_string(),
            now,
            expires_at: now.saturating_add(ttl),
            max_queued: max,
        };
        let enqueued = self.inner.store.enqueue(new).await;
        let (record, waiter, elsewhere) = self.accepted(name, enqueued, wait, now)?;
        #[cfg(feature = "redis")]
        if let (Some(cluster), true) = (&self.inner.cluster, elsewhere) {
            self.route_to_holder(cluster, name).await;
        }
        #[cfg(not(feature = "redis"))]
        let _ = elsewhere;
        Ok((record, waiter))
    }

    /// The enqueued command (or the store's refusal) of `submit`: sent at
    /// once if its client is connected here, with a waiter if asked for.
    /// The flag says the client is not connected here and it is a
    /// cluster: the command is for whichever node holds the client.
    #[allow(clippy::type_complexity)]
    fn accepted(
        &self,
        name: &str,
        enqueued: Result<Record, StoreError>,
        wait: bool,
        now: u64,
    ) -> Result<(Record, Option<Receiver<Record>>, bool), SubmitError> {
        let mut state = self.inner.lock();
        let state = &mut *state;
        let Some(client) = state.clients.get_mut(name) else {
            return Err(SubmitError::UnknownClient);
        };
        client.reserved -= 1;
        let record = enqueued.map_err(store_error)?;
        let id = record.request_id;
        let waiter = wait.then(|| {
            let (tx, rx) = async_channel::bounded(1);
            let key = (Box::from(name), id);
            state.waiters.entry(key).or_default().push(tx);
            rx
        });
        // In a cluster, a client held elsewhere (or nowhere) gets it from
        // its holder, or from Redis on its next connect.
        #[cfg(feature = "redis")]
        if self.inner.cluster.is_some() && client.peer.is_none() {
            return Ok((record, waiter, true));
        }
        let pending = Pending {
            record,
            on_wire: false,
        };
        client.pending.insert(id, pending);
        self.inner.deliver(client, now);
        let record = match client.pending.get(&id) {
            Some(pending) => pending.record.clone(),
            None => return Err(SubmitError::Store("record vanished".into())),
        };
        Ok((record, waiter, false))
    }

    /// Hands a new command of `name` to the node that holds it.
    #[cfg(feature = "redis")]
    async fn route_to_holder(&self, cluster: &Cluster, name: &str) {
        match cluster.route(name).await {
            Ok(Some(node)) => {
                debug!("client {:?}: command routed to node {node}", quote(name))
            }
            Ok(None) => debug!(
                "client {:?}: offline; the command waits in Redis",
                quote(name)
            ),
            // Its holder re-reads the queue at its next heartbeat anyway.
            Err(err) => debug!("client {:?}: routing failed: {err}", quote(name)),
        }
    }

    /// In a cluster, makes a client first seen by another node known here
    /// (Redis knows every name); elsewhere a no-op.
    async fn learn(&self, name: &str) -> Result<(), SubmitError> {
        #[cfg(feature = "redis")]
        if let Some(cluster) = &self.inner.cluster {
            if !self.is_known(name) && cluster.is_client(name).await.map_err(store_error)? {
                self.inner.lock().clients.entry(name.into()).or_default();
            }
        }
        #[cfg(not(feature = "redis"))]
        let _ = name;
        Ok(())
    }

    /// Whether `name` is a known client, asking Redis in a cluster.
    pub async fn knows(&self, name: &str) -> Result<bool, StoreError> {
        self.learn(name).await.map_err(|err| match err {
            SubmitError::Store(why) => StoreError::Backend(why),
            _ => StoreError::Backend(err.to_string()),
        })?;
        Ok(self.is_known(name))
    }

    /// The record of command `id` of client `name`, if there is one.
    pub async fn get(&self, name: &str, id: i64) -> Result<Option<Record>, StoreError> {
        {
            let state = self.inner.lock();
            let Some(client) = state.clients.get(name) else {
                return Ok(None);
            };
            if let Some(pending) = client.pending.get(&id) {
                return Ok(Some(pending.record.clone()));
            }
            if let Some(record) = state.unsaved.get(&(Box::from(name), id)) {
                return Ok(Some(record.clone()));
            }
        }
        let record = self.inner.store.get(name.to_string(), id).await?;
        #[cfg(feature = "redis")]
        if let (Some(_), Some(record)) = (&self.inner.cluster, &record) {
            return self.expire_stored(record.clone()).await.map(Some);
        }
        Ok(record)
    }

    /// In a cluster, a command for a client no node holds expires when it
    /// is read past its time to live (no node has it in memory to expire).
    #[cfg(feature = "redis")]
    async fn expire_stored(&self, mut record: Record) -> Result<Record, StoreError> {
        let now = now_ms();
        if record.status.is_final() || record.expires_at > now {
            return Ok(record);
        }
        record.finish(Status::Expired, now);
        if self.inner.store.transition(record.clone()).await? {
            return Ok(record);
        }
        let (client, id) = (record.client.clone(), record.request_id);
        Ok(self.inner.store.get(client, id).await?.unwrap_or(record))
    }

    /// Cancels command `id` of `name` if it is still queued (never written
    /// to the client); returns its final record.
    pub async fn cancel(&self, name: &str, id: i64) -> Result<Record, CancelError> {
        self.learn(name)
            .await
            .map_err(|err| CancelError::Store(err.to_string()))?;
        {
            let mut state = self.inner.lock();
            let state = &mut *state;
            let client = state.clients.get_mut(name).ok_or(CancelError::NotFound)?;
            if let Some(pending) = client.pending.get(&id) {
                if pending.record.status != Status::Queued {
                    return Err(CancelError::NotQueued(pending.record.status));
                }
                if let Some(pending) = client.pending.remove(&id) {
                    let mut record = pending.record;
                    record.finish(Status::Cancelled, now_ms());
                    self.inner.finished(state, record.clone());
                    return Ok(record);
                }
            }
        }
        match self.get(name, id).await {
            // In a cluster, a command no node has in memory is cancelled
            // in Redis (which refuses if it became final meanwhile).
            #[cfg(feature = "redis")]
            Ok(Some(mut record))
                if self.inner.cluster.is_some() && record.status == Status::Queued =>
            {
                record.finish(Status::Cancelled, now_ms());
                match self.inner.store.transition(record.clone()).await {
                    Ok(true) => Ok(record),
                    Ok(false) => Err(CancelError::NotQueued(Status::Sent)),
                    Err(err) => Err(CancelError::Store(err.to_string())),
                }
            }
            Ok(Some(record)) => Err(CancelError::NotQueued(record.status)),
            Ok(None) => Err(CancelError::NotFound),
            Err(err) => Err(CancelError::Store(err.to_string())),
        }
    }

    /// Whether `name` is a known client.
    pub fn is_known(&self, name: &str) -> bool {
        self.inner.lock().clients.contains_key(name)
    }

    /// The names of the clients connected now.
    pub fn connected_names(&self) -> Vec<String> {
        let state = self.inner.lock();
        let connected = state.clients.iter().filter(|(_, c)| c.peer.is_some());
        connected.map(|(name, _)| name.to_string()).collect()
    }

    /// Every known client, by name.
    pub fn clients(&self) -> Vec<ClientInfo> {
        let state = self.inner.lock();
        let mut list: Vec<ClientInfo> = state
            .clients
            .iter()
            .map(|(name, c)| ClientInfo {
                name: name.to_string(),
                connected: c.peer.is_some(),
                address: c.peer.as_ref().and(c.address).map(|a| a.to_string()),
                connected_since: c.connected_since,
                last_seen: c.last_seen,
                queued: c.pending.len(),
                node: None,
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Every known client; in a cluster, of the whole cluster (from
    /// Redis), with the node that holds each connected one.
    pub async fn list_clients(&self) -> Result<Vec<ClientInfo>, StoreError> {
        #[cfg(feature = "redis")]
        if let Some(cluster) = &self.inner.cluster {
            let listed: Vec<String> = self.inner.options.tokens.keys().cloned().collect();
            return cluster.clients(&listed).await;
        }
        Ok(self.clients())
    }

    /// The names of the clients connected now; in a cluster, on any node.
    pub async fn connected_everywhere(&self) -> Result<Vec<String>, StoreError> {
        #[cfg(feature = "redis")]
        if let Some(cluster) = &self.inner.cluster {
            return cluster.connected_everywhere().await;
        }
        Ok(self.connected_names())
    }

    /// The forwarder's lines for `/metrics`: in a cluster, the cluster's
    /// nodes and where its named clients are; else nothing.
    pub fn metrics_text(&self) -> String {
        #[cfg(feature = "redis")]
        if let Some(cluster) = &self.inner.cluster {
            return cluster.metrics_text();
        }
        String::new()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes to `client`'s connection every pending command not on it
    /// yet, in requestID order, until its outbound queue is full (the rest
    /// go on the next tick or connection).
    fn deliver(&self, client: &mut Client, now: u64) {
        let Some(peer) = &client.peer else { return };
        for pending in client.pending.values_mut().filter(|p| !p.on_wire) {
            if peer.send(pending.record.message()).is_err() {
                break;
            }
            pending.on_wire = true;
            pending.record.status = Status::Sent;
            pending.record.sent_at = Some(now);
            let _ = self.saves.try_send(Save::Record(pending.record.clone()));
        }
    }

    /// A record has reached its final state: wake its waiters, keep it for
    /// GETs until it is saved, and save it.
    fn finished(&self, state: &mut State, record: Record) {
        let key = (Box::from(record.client.as_str()), record.request_id);
        for waiter in state.waiters.remove(&key).unwrap_or_default() {
            let _ = waiter.try_send(record.clone());
        }
        state.unsaved.insert(key, record.clone());
        let _ = self.saves.try_send(Save::Record(record));
    }

    /// Writes one change to the store; a failure is logged (the record in
    /// memory stays right; after a restart the command is simply re-sent).
    async fn save(&self, save: Save) {
        let result = match save {
            Save::Client(name) => self.store.add_client(name).await,
            Save::Record(record) => {
                let key = (Box::from(record.client.as_str()), record.request_id);
                let is_final = record.status.is_final();
                let saved = self.store.transition(record).await.map(drop);
                if is_final {
                    self.lock().unsaved.remove(&key);
                }
                saved
            }
        };
        if let Err(err) = result {
            log::warn!("forwarder: {err}");
        }
    }

    /// Ends every command past its time to live as `expired`, and retries
    /// delivery where an outbound queue was full.
    fn expire(&self, now: u64) {
        let mut state = self.lock();
        let state = &mut *state;
        let mut expired = Vec::new();
        for client in state.clients.values_mut() {
            let old: Vec<i64> = client
                .pending
                .iter()
                .filter(|(_, p)| p.record.expires_at <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in old {
                if let Some(pending) = client.pending.remove(&id) {
                    let mut record = pending.record;
                    record.finish(Status::Expired, now);
                    expired.push(record);
                }
            }
            if client.pending.values().any(|p| !p.on_wire) {
                self.deliver(client, now);
            }
        }
        for record in expired {
            self.finished(state, record);
        }
    }
}

impl ReplyRoute for Inner {
    /// A reply from a named client completes its pending command, however
    /// late; a reply for an id it has no pending command for goes back to
    /// the session (a request of its own, or a duplicate that is dropped).
    fn take_reply(&self, peer: &Peer, reply: Message) -> Option<Message> {
        let Some(name) = peer.name() else {
            return Some(reply);
        };
        let now = now_ms();
        let mut state = self.lock();
        let state = &mut *state;
        let Some(client) = state.clients.get_mut(name) else {
            return Some(reply);
        };
        let Some(pending) = client.pending.remove(&reply.request_id) else {
            return Some(reply);
        };
        client.last_seen = Some(now);
        // Room in the outbound queue again: what waited for it goes now.
        self.deliver(client, now);
        let mut record = pending.record;
        record.complete(&reply, now);
        self.finished(state, record);
        None
    }
}

/// A store failure as a submit error.
fn store_error(err: StoreError) -> SubmitError {
    match err {
        StoreError::Full(max) => SubmitError::Full(max),
        StoreError::Backend(why) => SubmitError::Store(why),
    }
}

/// `raw` as a client name, if it is one: 1 to [`MAX_NAME_LEN`] characters
/// of `A-Za-z0-9._-`.
fn valid_name(raw: &[u8]) -> Option<&str> {
    let ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    let fits = (1..=MAX_NAME_LEN).contains(&raw.len()) && raw.iter().all(ok);
    fits.then(|| std::str::from_utf8(raw).ok()).flatten()
}

/// Reads a `--tokens` file's text: one `NAME TOKEN` per line, `#`
/// comments and blank lines ignored. Names must be valid client names,
/// and each listed once.
pub fn parse_tokens(text: &str) -> Result<HashMap<String, String>, String> {
    let mut tokens = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(name), Some(token), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("line {}: expected NAME TOKEN", number + 1));
        };
        if valid_name(name.as_bytes()).is_none() {
            return Err(format!(
                "line {}: {name:?} is not a valid client name",
                number + 1
            ));
        }
        if tokens.insert(name.to_string(), token.to_string()).is_some() {
            return Err(format!("line {}: {name:?} is listed twice", number + 1));
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(valid_name(b"dev-1.a_b"), Some("dev-1.a_b"));
        assert_eq!(valid_name(&[b'a'; 64]).map(str::len), Some(64));
        assert!(valid_name(&[b'a'; 65]).is_none());
        assert!(valid_name(b"").is_none());
        assert!(valid_name(b"a b").is_none());
        assert!(valid_name("é".as_bytes()).is_none());
    }

    #[test]
    fn tokens_file() {
        let text = "# devices\ndev-1 s3cret\n\n  dev-2   other # trailing\n";
        let tokens = parse_tokens(text).unwrap_or_default();
        assert_eq!(tokens.get("dev-2").map(String::as_str), Some("other"));
        assert_eq!(tokens.len(), 2);
        assert!(parse_tokens("dev-1\n").is_err());
        assert!(parse_tokens("a b\na c\n").is_err());
        assert!(parse_tokens("bad/name x\n").is_err());
    }
}
