//! Several nodes, one forwarder (`wsloop server --redis URL --node-id ID`,
//! feature `redis`): the registry of which node holds which named client,
//! routing between nodes, and the cluster-wide views of `/api/clients`
//! and `/metrics`. The records and queues themselves are the
//! [`RedisStore`]'s.
//!
//! ```text
//!  device connects to A ─▶ A claims NAME (registry, CLAIMS message) ─▶
//!                          A loads NAME's queue from Redis, delivers
//!  API on B accepts a command for NAME ─▶ enqueue in Redis ─▶ route:
//!     the registry says A ─▶ PUBLISH A's inbox "deliver NAME" ─▶
//!     A reloads NAME's queue, delivers;  nobody ─▶ it waits in Redis
//!  reply reaches A ─▶ record final in Redis ─▶ DONE message ─▶
//!     B (waiting caller) reads the record, answers
//!  every HEARTBEAT ─▶ A rewrites its registry entry (expires after
//!     HOLD_TTL unless renewed), reloads its clients' queues, re-checks
//!     its waiters (what a lost pub/sub message would have missed)
//! ```
//!
//! Keys and channels, besides the store's (see [`super::redis`]):
//!
//! | key | type | what |
//! |---|---|---|
//! | `wsloop:node:ID` | hash, expiring | NAME → `{"address","since"}` for each named client node ID holds; gone [`HOLD_TTL`] after the node's last heartbeat |
//! | `wsloop:holder` | hash | NAME → the node that claimed it last (valid while that node's hash lists NAME) |
//! | `wsloop:beats` | hash | node id → time of its last heartbeat (ms): alive while younger than [`HOLD_TTL`] |
//! | `wsloop:claimseq` | string | INCR: orders claims of one name across nodes |
//! | channel `wsloop:claims` | | `NAME NODE SEQ`: the newest claim wins; an older holder closes with 4000 |
//! | channel `wsloop:inbox:ID` | | `deliver NAME`: node ID should reload NAME's queue |
//! | channel `wsloop:done` | | `NAME REQUESTID`: a record became final |
//!
//! Completions reach a waiting caller on another node by subscription
//! (the DONE channel), backed by the heartbeat's re-check: a `?wait` on
//! any node sees the final state at most one [`HEARTBEAT`] late even if
//! the message was lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ::redis::Script;
use async_channel::{Receiver, Sender};
use async_io::Timer;
use futures_lite::StreamExt;
use serde::{Deserialize, Serialize};

use super::record::{now_ms, Record};
use super::redis::{key, Link, RedisStore, DONE_CHANNEL, PREFIX};
use super::store::{Store, StoreError};
use super::{ClientInfo, Inner, CLOSE_REPLACED};
use crate::log_safe::quote;

/// How often a node renews its registry entry and re-syncs: the bound on
/// how stale a lost pub/sub message can leave a queue or a waiter.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// How long a node's registry entry outlives its last heartbeat: five
/// missed beats, so a busy node is not declared dead, while a `kill -9`'d
/// one's clients count as offline within ten seconds.
pub const HOLD_TTL: Duration = Duration::from_secs(10);

/// Where claims are announced.
const CLAIMS_CHANNEL: &str = "wsloop:claims";

/// The first pause before re-subscribing after the pub/sub connection
/// failed, doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Longest node id; the same characters as a client name, plus `:`.
pub const MAX_NODE_ID_LEN: usize = 100;

/// `claim`. KEYS: this node's hash, holder, claimseq; ARGV: name, node,
/// info, TTL in ms.
const CLAIM: &str = r"
local seq = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PUBLISH', 'wsloop:claims', ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. string.format('%d', seq))
return seq
";

/// `release`. KEYS: this node's hash, holder; ARGV: name, node.
const RELEASE: &str = r"
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[2], ARGV[1]) end
return 1
";

/// `route`. KEYS: holder; ARGV: name. The holder's inbox gets `deliver
/// NAME` if the holder is alive and still lists NAME.
const ROUTE: &str = r"
local node = redis.call('HGET', KEYS[1], ARGV[1])
if not node then return false end
if redis.call('HEXISTS', 'wsloop:node:' .. node, ARGV[1]) == 0 then return false end
redis.call('PUBLISH', 'wsloop:inbox:' .. node, 'deliver ' .. ARGV[1])
return node
";

/// `heartbeat`. KEYS: this node's hash, holder, beats; ARGV: node, TTL in
/// ms, now in ms, then NAME INFO pairs of every client held. A holder entry that
/// points at a node no longer listing the name is taken over (after an
/// outage of Redis, or a restart of it without persistence).
const HEARTBEAT_SCRIPT: &str = r"
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('DEL', KEYS[1])
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  local h = redis.call('HGET', KEYS[2], ARGV[i])
  if not h or (h ~= ARGV[1] and redis.call('HEXISTS', 'wsloop:node:' .. h, ARGV[i]) == 0) then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[1])
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// A held client as the registry lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Held {
    address: Option<String>,
    since: Option<u64>,
}

/// Work for the cluster task, done in order.
pub(super) enum Job {
    /// Connection `peer` of NAME is up here: claim it, then load its queue.
    Claim(Box<str>, u64),
    /// Connection `peer` of NAME ended: unless another holds NAME here now,
    /// leave the registry.
    Release(Box<str>, u64),
    /// Reload NAME's queue from Redis (a command for it came in elsewhere).
    Load(Box<str>),
    /// A record became final somewhere: wake the callers waiting for it.
    Wake(Box<str>, i64),
}

/// A node's part in the cluster: its id, the link to Redis, the scripts,
/// and the cluster task's queue. See the module docs.
pub struct Cluster {
    node: String,
    link: Arc<Link>,
    store: RedisStore,
    claim: Script,
    release: Script,
    route: Script,
    heartbeat: Script,
    pub(super) jobs: Sender<Job>,
    jobs_rx: Receiver<Job>,
    /// The newest claim seen per name (ours or another node's).
    latest: Mutex<HashMap<Box<str>, u64>>,
    /// The live nodes and the named clients each holds, as of the last
    /// heartbeat (for `/metrics`, which must answer without Redis).
    census: Mutex<Vec<(String, usize)>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Whether `id` is a usable node id: 1 to [`MAX_NODE_ID_LEN`] of
/// `A-Za-z0-9._-:` (it appears in keys, channel names and metric labels).
pub fn valid_node_id(id: &str) -> bool {
    let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':');
    (1..=MAX_NODE_ID_LEN).contains(&id.len()) && id.bytes().all(ok)
}

impl Cluster {
    /// Joins the cluster on the Redis at `url` as node `node`; fails when
    /// Redis does not answer (a node that cannot reach it at start is
    /// misconfigured more often than unlucky). Returns the cluster and its
    /// store, for [`Forwarder::open_cluster`](super::Forwarder::open_cluster).
    pub async fn open(url: &str, node: &str) -> Result<(Cluster, RedisStore), StoreError> {
        if !valid_node_id(node) {
            return Err(StoreError::Backend(format!(
                "bad node id {node:?}: 1 to {MAX_NODE_ID_LEN} characters of A-Z a-z 0-9 . _ - :"
            )));
        }
        let store = RedisStore::open(url).await?;
        let link = store.link().clone();
        let (jobs, jobs_rx) = async_channel::unbounded();
        let cluster = Cluster {
            node: node.to_string(),
            link: link.clone(),
            store: RedisStore::over(link.clone()),
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
            route: Script::new(ROUTE),
            heartbeat: Script::new(HEARTBEAT_SCRIPT),
            jobs,
            jobs_rx,
            latest: Mutex::default(),
            census: Mutex::default(),
        };
        Ok((cluster, store))
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        // Each critical section leaves its map whole.
        mutex.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims NAME for this node; returns the claim's sequence number.
    async fn claim(&self, name: &str, held: &Held) -> Result<u64, StoreError> {
        let info = serde_json::to_string(held).unwrap_or_default();
        let ttl = u64::try_from(HOLD_TTL.as_millis()).unwrap_or(u64::MAX);
        let mut call = self.claim.prepare_invoke();
        call.key(key("node", &self.node))
            .key(format!("{PREFIX}holder"))
            .key(format!("{PREFIX}claimseq"))
            .arg(name)
            .arg(&self.node)
            .arg(info)
            .arg(ttl);
        self.link.query(async |c| call.invoke_async(c).await).await
    }

    /// Leaves NAME's registry entry (and the holder mark, if it is ours).
    async fn release(&self, name: &str) -> Result<(), StoreError> {
        let mut call = self.release.prepare_invoke();
        call.key(key("node", &self.node))
            .key(format!("{PREFIX}holder"))
            .arg(name)
            .arg(&self.node);
        self.link
            .query(async |c| call.invoke_async::<i64>(c).await)
            .await
            .map(drop)
    }

    /// Tells NAME's holder, if another node holds it, to reload its queue;
    /// returns that node.
    pub(super) async fn route(&self, name: &str) -> Result<Option<String>, StoreError> {
        let mut call = self.route.prepare_invoke();
        call.key(format!("{PREFIX}holder")).arg(name);
        self.link.query(async |c| call.invoke_async(c).await).await
    }

    /// Whether Redis knows NAME (a client first seen by another node).
    pub(super) async fn is_client(&self, name: &str) -> Result<bool, StoreError> {
        self.store.is_client(name).await
    }

    /// Renews this node's registry entry with the clients it holds now.
    async fn beat(&self, held: &[(String, Held)]) -> Result<(), StoreError> {
        let ttl = u64::try_from(HOLD_TTL.as_millis()).unwrap_or(u64::MAX);
        let mut call = self.heartbeat.prepare_invoke();
        call.key(key("node", &self.node))
            .key(format!("{PREFIX}holder"))
            .key(format!("{PREFIX}beats"))
            .arg(&self.node)
            .arg(ttl)
            .arg(now_ms());
        for (name, info) in held {
            call.arg(name)
                .arg(serde_json::to_string(info).unwrap_or_default());
        }
        self.link
            .query(async |c| call.invoke_async::<i64>(c).await)
            .await
            .map(drop)
    }

    /// Every live node's registry entry: node → (name → what it holds).
    async fn registry(&self) -> Result<Vec<(String, HashMap<String, Held>)>, StoreError> {
        let beats_key = format!("{PREFIX}beats");
        let beats: HashMap<String, u64> = self
            .link
            .query(async |c| ::redis::cmd("HGETALL").arg(&beats_key).query_async(c).await)
            .await?;
        let ttl = u64::try_from(HOLD_TTL.as_millis()).unwrap_or(u64::MAX);
        let alive_since = now_ms().saturating_sub(ttl);
        let mut nodes: Vec<String> = beats
            .into_iter()
            .filter(|(_, beat)| *beat >= alive_since)
            .map(|(node, _)| node)
            .collect();
        nodes.sort();
        let mut pipe = ::redis::pipe();
        for node in &nodes {
            pipe.cmd("HGETALL").arg(key("node", node));
        }
        let entries: Vec<HashMap<String, String>> =
            self.link.query(async |c| pipe.query_async(c).await).await?;
        let parsed = nodes.into_iter().zip(entries).map(|(node, entry)| {
            let held = entry
                .into_iter()
                .filter_map(|(name, info)| Some((name, serde_json::from_str(&info).ok()?)))
                .collect();
            (node, held)
        });
        Ok(parsed.collect())
    }

    /// Every named client connected anywhere.
    pub(super) async fn connected_everywhere(&self) -> Result<Vec<String>, StoreError> {
        let registry = self.registry().await?;
        let mut names: Vec<String> = registry
            .into_iter()
            .flat_map(|(_, held)| held.into_keys())
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// `GET /api/clients` for the whole cluster: every known client, where
    /// it is connected, and its commands not yet final (from Redis).
    pub(super) async fn clients(&self, extra: &[String]) -> Result<Vec<ClientInfo>, StoreError> {
        let mut names = self.store.clients().await?;
        names.extend(extra.iter().cloned());
        names.sort();
        names.dedup();
        let mut holders: HashMap<String, (String, Held)> = HashMap::new();
        for (node, held) in self.registry().await? {
            for (name, info) in held {
                holders.insert(name, (node.clone(), info));
            }
        }
        let mut pipe = ::redis::pipe();
        for name in &names {
            pipe.cmd("ZCARD").arg(key("pending", name));
        }
        let queued: Vec<usize> = self.link.query(async |c| pipe.query_async(c).await).await?;
        let list = names.into_iter().zip(queued).map(|(name, queued)| {
            let holder = holders.remove(&name);
            let (node, info) = match holder {
                Some((node, info)) => (Some(node), Some(info)),
                None => (None, None),
            };
            ClientInfo {
                connected: node.is_some(),
                address: info.as_ref().and_then(|i| i.address.clone()),
                connected_since: info.as_ref().and_then(|i| i.since),
                last_seen: info.as_ref().and_then(|i| i.since),
                queued,
                node,
                name,
            }
        });
        Ok(list.collect())
    }

    /// The cluster's lines for `/metrics`, as of the last heartbeat.
    pub(super) fn metrics_text(&self) -> String {
        use std::fmt::Write;
        let census = Self::lock(&self.census);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP wsloop_cluster_nodes Nodes that sent a heartbeat within the last {} s (as of \
             this node's last heartbeat).\n# TYPE wsloop_cluster_nodes gauge\nwsloop_cluster_nodes {}",
            HOLD_TTL.as_secs(),
            census.len()
        );
        let _ = writeln!(
            out,
            "# HELP wsloop_cluster_named_clients Named clients connected, by the node that holds \
             them.\n# TYPE wsloop_cluster_named_clients gauge"
        );
        for (node, count) in census.iter() {
            let _ = writeln!(
                out,
                "wsloop_cluster_named_clients{{node=\"{node}\"}} {count}"
            );
        }
        out
    }
}

impl Inner {
    fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// The cluster's tasks: the jobs queue, the heartbeat and the pub/sub
    /// subscriber, for as long as the forwarder runs.
    pub(super) async fn run_cluster(self: Arc<Self>) {
        let Some(cluster) = self.cluster().cloned() else {
            return std::future::pending().await;
        };
        let beats = {
            let (inner, cluster) = (self.clone(), cluster.clone());
            async move {
                // At once, so that the node counts as alive from the start.
                inner.heartbeat(&cluster).await;
                let mut tick = Timer::interval(HEARTBEAT);
                loop {
                    tick.next().await;
                    inner.heartbeat(&cluster).await;
                }
            }
        };
        let jobs = {
            let (inner, cluster) = (self.clone(), cluster.clone());
            async move {
                while let Ok(job) = cluster.jobs_rx.recv().await {
                    inner.job(&cluster, job).await;
                }
            }
        };
        let subscriber = self.clone().subscribe(cluster);
        futures_lite::future::or(beats, futures_lite::future::or(jobs, subscriber)).await;
    }

    /// Does one job; a failure is logged (the heartbeat repairs what it
    /// left undone).
    async fn job(&self, cluster: &Cluster, job: Job) {
        let result = match job {
            Job::Claim(name, peer) => self.claim(cluster, name, peer).await,
            Job::Release(name, peer) => {
                let still = self
                    .lock()
                    .clients
                    .get(&name)
                    .is_some_and(|c| c.peer.is_some());
                match still {
                    // A newer connection of this name holds it here now.
                    true => Ok(()),
                    false => cluster.release(&name).await,
                }
                .map(|()| debug!("cluster: released {:?} (connection {peer})", quote(&name)))
            }
            Job::Load(name) => self.load(&name).await,
            Job::Wake(name, id) => self.wake(&name, id).await,
        };
        if let Err(err) = result {
            debug!("cluster: {err}");
        }
    }

    /// Claims NAME for connection `peer` (if still current), closes it
    /// when a newer claim elsewhere already won, and loads its queue.
    async fn claim(&self, cluster: &Cluster, name: Box<str>, peer: u64) -> Result<(), StoreError> {
        let held = {
            let state = self.lock();
            match state.clients.get(&name) {
                Some(c) if c.peer.as_ref().is_some_and(|p| p.id() == peer) => Held {
                    address: c.address.map(|a| a.to_string()),
                    since: c.connected_since,
                },
                _ => return Ok(()),
            }
        };
        let seq = cluster.claim(&name, &held).await?;
        let newest = {
            let mut latest = Cluster::lock(&cluster.latest);
            let newest = latest.entry(name.clone()).or_insert(seq);
            *newest = (*newest).max(seq);
            *newest
        };
        {
            let mut state = self.lock();
            let Some(client) = state.clients.get_mut(&name) else {
                return Ok(());
            };
            let Some(current) = client.peer.as_ref().filter(|p| p.id() == peer) else {
                return Ok(());
            };
            if newest > seq {
                log::info!(
                    "client {:?}: connection {peer} replaced by a newer one on another node",
                    quote(&name)
                );
                current.close(
                    CLOSE_REPLACED,
                    "replaced by a newer connection with this name",
                );
                return Ok(());
            }
            client.claim = Some(seq);
        }
        self.load(&name).await
    }

    /// Another node (or this one) announced a claim of NAME: an older
    /// connection of that name here closes with [`CLOSE_REPLACED`].
    fn claimed_elsewhere(&self, cluster: &Cluster, name: &str, node: &str, seq: u64) {
        {
            let mut latest = Cluster::lock(&cluster.latest);
            let newest = latest.entry(name.into()).or_insert(seq);
            *newest = (*newest).max(seq);
        }
        let mut state = self.lock();
        let client = state.clients.entry(name.into()).or_default();
        if node == cluster.node {
            return;
        }
        // A claim of ours still in flight is judged when it returns.
        let older = client.claim.is_some_and(|ours| ours < seq);
        if let (Some(peer), true) = (&client.peer, older) {
            log::info!(
                "client {:?}: connection {} replaced by a newer one on node {:?}",
                quote(name),
                peer.id(),
                quote(node)
            );
            peer.close(
                CLOSE_REPLACED,
                "replaced by a newer connection with this name",
            );
            client.claim = None;
        }
    }

    /// Reloads NAME's queue from Redis if NAME is connected here: new
    /// commands join the pending ones and go out.
    async fn load(&self, name: &str) -> Result<(), StoreError> {
        let held = self
            .lock()
            .clients
            .get(name)
            .is_some_and(|c| c.peer.is_some());
        if !held {
            return Ok(());
        }
        let records = self.store.pending(name.to_string()).await?;
        let now = now_ms();
        let mut state = self.lock();
        let state = &mut *state;
        let Some(client) = state.clients.get_mut(name) else {
            return Ok(());
        };
        for record in records {
            // Final here already, its save still on the way to Redis: not
            // to be sent again.
            if state
                .unsaved
                .contains_key(&(Box::from(name), record.request_id))
            {
                continue;
            }
            client
                .pending
                .entry(record.request_id)
                .or_insert(super::Pending {
                    record,
                    on_wire: false,
                });
        }
        self.deliver(client, now);
        Ok(())
    }

    /// Wakes the callers waiting for record ID of NAME once it is final.
    async fn wake(&self, name: &str, id: i64) -> Result<(), StoreError> {
        let key = (Box::from(name), id);
        if !self.lock().waiters.contains_key(&key) {
            return Ok(());
        }
        let Some(record) = self.store.get(name.to_string(), id).await? else {
            return Ok(());
        };
        if record.status.is_final() {
            self.wake_with(record);
        }
        Ok(())
    }

    fn wake_with(&self, record: Record) {
        let key = (Box::from(record.client.as_str()), record.request_id);
        for waiter in self.lock().waiters.remove(&key).unwrap_or_default() {
            let _ = waiter.try_send(record.clone());
        }
    }

    /// One heartbeat: renew the registry entry, refresh the census,
    /// re-sync every held client's queue and every waiter.
    async fn heartbeat(&self, cluster: &Cluster) {
        let (held, waiting) = {
            let state = self.lock();
            let held: Vec<(String, Held)> = state
                .clients
                .iter()
                .filter(|(_, c)| c.peer.is_some())
                .map(|(name, c)| {
                    let info = Held {
                        address: c.address.map(|a| a.to_string()),
                        since: c.connected_since,
                    };
                    (name.to_string(), info)
                })
                .collect();
            let waiting: Vec<(Box<str>, i64)> = state.waiters.keys().cloned().collect();
            (held, waiting)
        };
        if let Err(err) = cluster.beat(&held).await {
            debug!("cluster heartbeat: {err}");
            return;
        }
        if let Ok(registry) = cluster.registry().await {
            let census = registry.into_iter().map(|(n, h)| (n, h.len())).collect();
            *Cluster::lock(&cluster.census) = census;
        }
        for (name, _) in held {
            let _ = cluster.jobs.try_send(Job::Load(name.into()));
        }
        for (name, id) in waiting {
            let _ = cluster.jobs.try_send(Job::Wake(name, id));
        }
    }

    /// Follows the cluster's channels until the forwarder stops,
    /// re-subscribing with backoff when the connection drops.
    async fn subscribe(self: Arc<Self>, cluster: Arc<Cluster>) {
        let inbox = format!("{PREFIX}inbox:{}", cluster.node);
        let mut backoff = FIRST_BACKOFF;
        let mut was_up = true;
        loop {
            let subscribed = async {
                let mut pubsub = cluster.link.client().get_async_pubsub().await?;
                pubsub
                    .subscribe(&[CLAIMS_CHANNEL, DONE_CHANNEL, &inbox])
                    .await?;
                Ok::<_, ::redis::RedisError>(pubsub)
            };
            match subscribed.await {
                Ok(mut pubsub) => {
                    if !was_up {
                        log::info!("cluster: subscribed to Redis {} again", cluster.link.url());
                    }
                    backoff = FIRST_BACKOFF;
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let payload: String = message.get_payload().unwrap_or_default();
                        self.on_message(&cluster, message.get_channel_name(), &payload);
                    }
                    log::warn!(
                        "cluster: lost the subscription to Redis {}",
                        cluster.link.url()
                    );
                    was_up = false;
                }
                Err(err) => {
                    if was_up {
                        log::warn!(
                            "cluster: cannot subscribe to Redis {} ({err}); retrying with backoff",
                            cluster.link.url()
                        );
                    }
                    was_up = false;
                }
            }
            Timer::after(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One pub/sub message.
    fn on_message(&self, cluster: &Cluster, channel: &str, payload: &str) {
        let words: Vec<&str> = payload.split(' ').collect();
        match (channel, words.as_slice()) {
            (CLAIMS_CHANNEL, [name, node, seq]) => {
                if let Ok(seq) = seq.parse() {
                    self.claimed_elsewhere(cluster, name, node, seq);
                }
            }
            (DONE_CHANNEL, [name, id]) => {
                let Ok(id) = id.parse() else { return };
                let key = (Box::from(*name), id);
                if self.lock().waiters.contains_key(&key) {
                    let _ = cluster.jobs.try_send(Job::Wake(key.0, id));
                }
            }
            (_, ["deliver", name]) => {
                let _ = cluster.jobs.try_send(Job::Load((*name).into()));
            }
            _ => debug!(
                "cluster: unexpected message on {channel}: {:?}",
                quote(payload)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        assert!(valid_node_id("host-1.example:8080"));
        assert!(valid_node_id(&"a".repeat(MAX_NODE_ID_LEN)));
        assert!(!valid_node_id(&"a".repeat(MAX_NODE_ID_LEN + 1)));
        assert!(!valid_node_id(""));
        // A quote or a space would break a metric label or a message.
        assert!(!valid_node_id("a\"b"));
        assert!(!valid_node_id("a b"));
    }
}
