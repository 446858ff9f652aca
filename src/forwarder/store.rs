//! The one small trait every command store implements: in memory
//! ([`MemoryStore`](super::MemoryStore)), on disk in redb
//! ([`RedbStore`](super::RedbStore), `--state DIR`), and in Redis, shared
//! by several nodes (`RedisStore`, feature `redis`, `--redis URL`). Async, owned arguments, boxed futures (so it is
//! object-safe) and no backend's types in it.
//!
//! The rules every implementation keeps:
//! - [`enqueue`](Store::enqueue) is the acknowledgement point: once its
//!   future resolves `Ok`, the command survives whatever the store promises
//!   to survive (a durable store: `kill -9`, power loss).
//! - requestIDs come from a per-client counter kept in the store, so they
//!   never repeat for one client, across restarts for a durable store.
//! - [`transition`](Store::transition) only moves forward: a record that
//!   is already final is never overwritten (two writers may race; the
//!   first final state wins).

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use super::record::Record;

/// What a store call returns: a boxed future, so that `dyn Store` works.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The client already has this many commands not yet final.
    Full(usize),
    /// The backend failed (I/O, corruption, unreachable); its description.
    Backend(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Full(max) => write!(f, "the client's queue is full ({max} commands)"),
            StoreError::Backend(why) => write!(f, "command store failed: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// A command to record, as [`Store::enqueue`] takes it.
#[derive(Debug, Clone)]
pub struct NewCommand {
    /// The client's name.
    pub client: String,
    /// The command text.
    pub command: String,
    /// Now, in ms since the epoch (the record's `queued_at`).
    pub now: u64,
    /// When it expires, in ms since the epoch.
    pub expires_at: u64,
    /// Refuse with [`StoreError::Full`] when the client already has this
    /// many commands not yet final.
    pub max_queued: usize,
}

impl NewCommand {
    /// Its record as first stored, under `request_id`: `queued`, nothing
    /// sent or finished yet. Both stores start every record here.
    pub fn queued(&self, request_id: i64) -> Record {
        Record {
            request_id,
            client: self.client.clone(),
            command: self.command.clone(),
            status: super::record::Status::Queued,
            reply: None,
            queued_at: self.now,
            sent_at: None,
            finished_at: None,
            expires_at: self.expires_at,
        }
    }
}

/// Where queued commands, their records, the id counters and the names of
/// known clients live. See the module docs for the rules.
pub trait Store: Send + Sync + 'static {
    /// Allocates the client's next requestID and records the command as
    /// `queued`, atomically; durable when the future resolves.
    fn enqueue(&self, new: NewCommand) -> StoreFuture<'_, Record>;

    /// Stores `record`'s new state unless the stored one is already final;
    /// `Ok(false)` when it was. A final state also takes the command off
    /// the client's list of [`pending`](Store::pending) ones.
    fn transition(&self, record: Record) -> StoreFuture<'_, bool>;

    /// One record, if there is one.
    fn get(&self, client: String, request_id: i64) -> StoreFuture<'_, Option<Record>>;

    /// The client's commands not yet final, in requestID order.
    fn pending(&self, client: String) -> StoreFuture<'_, Vec<Record>>;

    /// Every client name the store knows.
    fn clients(&self) -> StoreFuture<'_, Vec<String>>;

    /// Remembers `client` as known (a no-op when it already is).
    fn add_client(&self, client: String) -> StoreFuture<'_, ()>;
}
