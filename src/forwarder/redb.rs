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
//!
//! Final records are kept up to [`KEEP_FINAL`] per client, as in memory:
//! the transaction that makes a record final also drops that client's
//! oldest final record past the bound (by requestID), so the file stops
//! growing once every client has its bound's worth (redb reuses the freed
//! pages). Pending records are never dropped: they are bounded by
//! `--max-queued`, and dropping one would lose an acknowledged command.

use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};

use super::memory::KEEP_FINAL;
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
/// The records that are final, by (client, requestID): the oldest go
/// first when a client has more than it keeps.
const FINALS: TableDefinition<(&str, i64), ()> = TableDefinition::new("finals");
/// How many entries of [`FINALS`] each client has (so the bound costs no
/// scan); a client with none has no entry.
const FINAL_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("final_counts");

/// The redb-backed [`Store`].
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
    /// Final records kept per client ([`KEEP_FINAL`] unless a test says).
    keep_final: u64,
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
        index_finals(&txn)?;
        txn.commit().map_err(backend)?;
        let store = RedbStore {
            db: Arc::new(db),
            keep_final: KEEP_FINAL as u64,
        };
        store.prune_all()?;
        Ok(store)
    }

    /// [`open`](Self::open) keeping `keep` final records per client (the
    /// tests' smaller bound; `open` keeps [`KEEP_FINAL`]).
    #[cfg(test)]
    fn open_keeping(dir: &Path, keep: usize) -> Result<RedbStore, StoreError> {
        let mut store = Self::open(dir)?;
        store.keep_final = keep as u64;
        store.prune_all()?;
        Ok(store)
    }

    /// Brings every client down to the bound (at open: a file written
    /// before the bound existed, or with a larger one).
    fn prune_all(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        let mut names = Vec::new();
        for entry in txn
            .open_table(FINAL_COUNTS)
            .map_err(backend)?
            .iter()
            .map_err(backend)?
        {
            let (name, count) = entry.map_err(backend)?;
            if count.value() > self.keep_final {
                names.push(name.value().to_string());
            }
        }
        for name in &names {
            prune(&txn, name, self.keep_final)?;
        }
        txn.commit().map_err(backend)
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

/// Adds `delta` to `client`'s count of final records; returns the new count.
fn add_final(txn: &WriteTransaction, client: &str, delta: i64) -> Result<u64, StoreError> {
    let mut counts = txn.open_table(FINAL_COUNTS).map_err(backend)?;
    let old = counts
        .get(client)
        .map_err(backend)?
        .map_or(0, |v| v.value());
    let new = old.saturating_add_signed(delta);
    match new {
        0 => counts.remove(client).map_err(backend).map(drop)?,
        _ => counts.insert(client, new).map_err(backend).map(drop)?,
    }
    Ok(new)
}

/// Drops `client`'s oldest final records (lowest requestIDs) until it has
/// at most `keep`. Only entries of [`FINALS`] are candidates, so a pending
/// record is never touched.
fn prune(txn: &WriteTransaction, client: &str, keep: u64) -> Result<(), StoreError> {
    let count = txn
        .open_table(FINAL_COUNTS)
        .map_err(backend)?
        .get(client)
        .map_err(backend)?
        .map_or(0, |v| v.value());
    let Some(extra) = count.checked_sub(keep).filter(|&n| n > 0) else {
        return Ok(());
    };
    let mut finals = txn.open_table(FINALS).map_err(backend)?;
    let mut records = txn.open_table(RECORDS).map_err(backend)?;
    let mut oldest = Vec::new();
    for entry in finals
        .range((client, i64::MIN)..=(client, i64::MAX))
        .map_err(backend)?
        .take(usize::try_from(extra).unwrap_or(usize::MAX))
    {
        oldest.push(entry.map_err(backend)?.0.value().1);
    }
    for id in &oldest {
        finals.remove((client, *id)).map_err(backend)?;
        records.remove((client, *id)).map_err(backend)?;
    }
    drop((finals, records));
    add_final(
        txn,
        client,
        -i64::try_from(oldest.len()).unwrap_or(i64::MAX),
    )?;
    Ok(())
}

/// Fills [`FINALS`] and [`FINAL_COUNTS`] from a file written before they
/// existed (once: when they are empty but final records are not). A
/// record not in [`PENDING`] is final: enqueue puts it in both tables,
/// and only a final state takes it out of `PENDING`.
fn index_finals(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut finals = txn.open_table(FINALS).map_err(backend)?;
    txn.open_table(FINAL_COUNTS).map_err(backend)?;
    let records = txn.open_table(RECORDS).map_err(backend)?;
    let pending = txn.open_table(PENDING).map_err(backend)?;
    let indexed = !finals.is_empty().map_err(backend)?;
    if indexed || records.len().map_err(backend)? == pending.len().map_err(backend)? {
        return Ok(());
    }
    let mut counts: std::collections::BTreeMap<String, i64> = Default::default();
    for entry in records.iter().map_err(backend)? {
        let (key, _) = entry.map_err(backend)?;
        let (client, id) = key.value();
        if pending.get((client, id)).map_err(backend)?.is_none() {
            finals.insert((client, id), ()).map_err(backend)?;
            *counts.entry(client.to_string()).or_default() += 1;
        }
    }
    drop((finals, records, pending));
    for (client, count) in counts {
        add_final(txn, &client, count)?;
    }
    Ok(())
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
        let keep = self.keep_final;
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
                    true
                }
            };
            if written && record.status.is_final() {
                txn.open_table(PENDING)
                    .map_err(backend)?
                    .remove(key)
                    .map_err(backend)?;
                // In the same transaction: the bound holds at every commit.
                txn.open_table(FINALS)
                    .map_err(backend)?
                    .insert(key, ())
                    .map_err(backend)?;
                add_final(&txn, key.0, 1)?;
                prune(&txn, key.0, keep)?;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory for one test's database.
    fn dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("wsloop-redb-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn command(text: &str) -> NewCommand {
        NewCommand {
            client: "dev".into(),
            command: text.into(),
            now: 1,
            expires_at: u64::MAX,
            max_queued: 1_000,
        }
    }

    /// How many records the file holds, in all.
    fn record_count(store: &RedbStore) -> u64 {
        let txn = store.db.begin_read().expect("read");
        txn.open_table(RECORDS).expect("table").len().expect("len")
    }

    /// Enqueues one command and makes it final at once.
    fn replied(store: &RedbStore, text: &str) -> i64 {
        let mut record = smol::block_on(store.enqueue(command(text))).expect("enqueue");
        record.complete(
            &crate::Message::request(record.request_id, text).seed_reply(),
            2,
        );
        assert_eq!(smol::block_on(store.transition(record.clone())), Ok(true));
        record.request_id
    }

    #[test]
    fn final_records_are_bounded_and_pending_ones_are_never_pruned() {
        const KEEP: usize = 20;
        let path = dir("prune");
        let store = RedbStore::open_keeping(&path, KEEP).expect("open");
        // Two that stay pending throughout: one queued, one sent.
        let queued = smol::block_on(store.enqueue(command("waits"))).expect("enqueue");
        let mut sent = smol::block_on(store.enqueue(command("on the wire"))).expect("enqueue");
        sent.status = Status::Sent;
        assert_eq!(smol::block_on(store.transition(sent.clone())), Ok(true));

        // Ten times the bound's worth of commands, each made final.
        let size = |_: ()| std::fs::metadata(path.join(FILE_NAME)).map_or(0, |m| m.len());
        let mut ids = Vec::new();
        let mut size_at_bound = 0;
        for n in 0..KEEP * 10 {
            ids.push(replied(&store, &format!("command {n}")));
            if n == KEEP * 2 {
                size_at_bound = size(());
            }
        }
        assert_eq!(
            record_count(&store),
            KEEP as u64 + 2,
            "the bound plus the pending"
        );
        // The newest final ones are kept, the older ones are gone.
        let get = |id| smol::block_on(store.get("dev".into(), id)).expect("get");
        let (old, kept) = ids.split_at(ids.len() - KEEP);
        assert!(
            kept.iter().all(|&id| get(id).is_some()),
            "the newest are kept"
        );
        assert!(
            old.iter().all(|&id| get(id).is_none()),
            "the oldest are gone"
        );
        // Neither pending record was touched.
        assert_eq!(get(queued.request_id), Some(queued.clone()));
        assert_eq!(get(sent.request_id), Some(sent.clone()));
        let pending = smol::block_on(store.pending("dev".into())).expect("pending");
        assert_eq!(pending, [queued, sent]);
        // The file stopped growing: freed pages are reused.
        let end = size(());
        assert!(
            end <= size_at_bound * 2,
            "{end} B after, {size_at_bound} B at twice the bound"
        );

        // Reopened with a smaller bound (the counts survived the restart),
        // and the ids go on.
        drop(store);
        let store = RedbStore::open_keeping(&path, 5).expect("reopen");
        assert_eq!(record_count(&store), 5 + 2);
        let next = replied(&store, "after the restart");
        assert_eq!(next, ids.last().map_or(0, |id| id + 1));
        assert_eq!(record_count(&store), 5 + 2);
        drop(store);
        let _ = std::fs::remove_dir_all(&path);
    }

    #[test]
    fn a_file_from_before_the_bound_is_indexed_and_pruned_at_open() {
        let path = dir("legacy");
        let store = RedbStore::open(&path).expect("open");
        let pending = smol::block_on(store.enqueue(command("waits"))).expect("enqueue");
        let ids: Vec<i64> = (0..10).map(|n| replied(&store, &format!("c{n}"))).collect();
        // Forget the index, as a file written before it existed.
        let txn = store.db.begin_write().expect("write");
        txn.delete_table(FINALS).expect("delete");
        txn.delete_table(FINAL_COUNTS).expect("delete");
        txn.commit().expect("commit");
        drop(store);
        let store = RedbStore::open_keeping(&path, 3).expect("reopen");
        assert_eq!(record_count(&store), 3 + 1);
        let get = |id| smol::block_on(store.get("dev".into(), id)).expect("get");
        assert!(get(pending.request_id).is_some());
        assert!(ids[7..].iter().all(|&id| get(id).is_some()));
        assert!(ids[..7].iter().all(|&id| get(id).is_none()));
        drop(store);
        let _ = std::fs::remove_dir_all(&path);
    }
}
