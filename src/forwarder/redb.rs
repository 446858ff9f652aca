//! The durable store behind `wsloop server --state DIR`: one redb file,
//! `DIR/wsloop.redb`. Every call is one redb transaction, run on smol's
//! blocking pool (redb's API is synchronous) so executor threads never
//! wait for the disk.
//!
//! Durability per call: [`enqueue`](Store::enqueue) and final states
//! commit with `Durability::Immediate` (fsync before the future resolves:
//! the acknowledgement point). The `queued → sent` step commits with
//! `Durability::Eventual`: a crash may forget it, which only means the
//! command is sent again under the same requestID, which the device
//! recognises — so that step need not pay an fsync.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadableTable, TableDefinition};

use super::record::{Record, Status};
use super::store::{NewCommand, Store, StoreError, StoreFuture};

/// The file inside `--state DIR`.
pub const FILE_NAME: &str = "wsloop.redb";

/// Last requestID handed out, per client.
const COUNTERS: TableDefinition<&str, i64> = TableDefinition::new("counters");
/// Every record as JSON, by (client, requestID).
const RECORDS: TableDefinition<(&str, i64), &[u8]> = TableDefinition::new("records");
/// The records not yet final, by (client, requestID): the queues.
const PENDING: TableDefinition<(&str, i64), ()> = TableDefinition::new("pending");
/// Every known client name.
const CLIENTS: TableDefinition<&str, ()> = TableDefinition::new("clients");

/// The redb-backed [`Store`].
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

/// Any redb failure, as the store reports it.
fn backend(err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(err.to_string())
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`, creating the directory if
    /// need be. Fails if another process holds it open.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let db = Database::create(dir.join(FILE_NAME)).map_err(backend)?;
        // Every table exists from the start, so reads never meet a missing one.
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(COUNTERS).map_err(backend)?;
        txn.open_table(RECORDS).map_err(backend)?;
        txn.open_table(PENDING).map_err(backend)?;
        txn.open_table(CLIENTS).map_err(backend)?;
        txn.commit().map_err(backend)?;
        Ok(RedbStore { db: Arc::new(db) })
    }

    /// Runs `work` on the blocking pool with this store's database.
    fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let db = self.db.clone();
        Box::pin(blocking::unblock(move || work(&db)))
    }
}

fn encode(record: &Record) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record).map_err(backend)
}

fn decode(bytes: &[u8]) -> Result<Record, StoreError> {
    serde_json::from_slice(bytes).map_err(backend)
}

impl Store for RedbStore {
    fn enqueue(&self, new: NewCommand) -> StoreFuture<'_, Record> {
        self.blocking(move |db| {
            let mut txn = db.begin_write().map_err(backend)?;
            let record = {
                let mut pending = txn.open_table(PENDING).map_err(backend)?;
                let key = new.client.as_str();
                let open = pending
                    .range((key, i64::MIN)..=(key, i64::MAX))
                    .map_err(backend)?
                    .count();
                if open >= new.max_queued {
                    return Err(StoreError::Full(new.max_queued));
                }
                let mut counters = txn.open_table(COUNTERS).map_err(backend)?;
                let last = counters.get(key).map_err(backend)?.map_or(0, |v| v.value());
                let record = new.queued(last + 1);
                counters.insert(key, record.request_id).map_err(backend)?;
                let mut records = txn.open_table(RECORDS).map_err(backend)?;
                let bytes = encode(&record)?;
                records
                    .insert((key, record.request_id), bytes.as_slice())
                    .map_err(backend)?;
                pending
                    .insert((key, record.request_id), ())
                    .map_err(backend)?;
                let mut clients = txn.open_table(CLIENTS).map_err(backend)?;
                clients.insert(key, ()).map_err(backend)?;
                record
            };
            // The acknowledgement point: on disk before the caller hears "queued".
            txn.set_durability(Durability::Immediate);
            txn.commit().map_err(backend)?;
            Ok(record)
        })
    }

    fn transition(&self, record: Record) -> StoreFuture<'_, bool> {
        self.blocking(move |db| {
            let mut txn = db.begin_write().map_err(backend)?;
            let key = (record.client.as_str(), record.request_id);
            let written = {
                let mut records = txn.open_table(RECORDS).map_err(backend)?;
                let old = match records.get(key).map_err(backend)? {
                    Some(bytes) => Some(decode(bytes.value())?),
                    None => None,
                };
                if old.is_some_and(|old| old.status.is_final()) {
                    false
                } else {
                    let bytes = encode(&record)?;
                    records.insert(key, bytes.as_slice()).map_err(backend)?;
                    if record.status.is_final() {
                        let mut pending = txn.open_table(PENDING).map_err(backend)?;
                        pending.remove(key).map_err(backend)?;
                    }
                    true
                }
            };
            // See the module docs: only `sent` may be forgotten by a crash.
            let durability = match record.status {
                Status::Sent => Durability::Eventual,
                _ => Durability::Immediate,
            };
            txn.set_durability(durability);
            txn.commit().map_err(backend)?;
            Ok(written)
        })
    }

    fn get(&self, client: String, request_id: i64) -> StoreFuture<'_, Option<Record>> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let records = txn.open_table(RECORDS).map_err(backend)?;
            let found = records
                .get((client.as_str(), request_id))
                .map_err(backend)?;
            found.map(|bytes| decode(bytes.value())).transpose()
        })
    }

    fn pending(&self, client: String) -> StoreFuture<'_, Vec<Record>> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let pending = txn.open_table(PENDING).map_err(backend)?;
            let records = txn.open_table(RECORDS).map_err(backend)?;
            let key = client.as_str();
            let mut out = Vec::new();
            for entry in pending
                .range((key, i64::MIN)..=(key, i64::MAX))
                .map_err(backend)?
            {
                let (id, _) = entry.map_err(backend)?;
                if let Some(bytes) = records.get(id.value()).map_err(backend)? {
                    out.push(decode(bytes.value())?);
                }
            }
            Ok(out)
        })
    }

    fn clients(&self) -> StoreFuture<'_, Vec<String>> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let clients = txn.open_table(CLIENTS).map_err(backend)?;
            let mut names = Vec::new();
            for entry in clients.iter().map_err(backend)? {
                let (name, _) = entry.map_err(backend)?;
                names.push(name.value().to_string());
            }
            Ok(names)
        })
    }

    fn add_client(&self, client: String) -> StoreFuture<'_, ()> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            txn.open_table(CLIENTS)
                .map_err(backend)?
                .insert(client.as_str(), ())
                .map_err(backend)?;
            txn.commit().map_err(backend)
        })
    }
}
