//! The store without `--state`: the same rules in memory, kept across a
//! client's reconnects but not across restarts. Final records are kept up
//! to [`KEEP_FINAL`] per client, oldest dropped first, so a long-lived
//! server does not grow without bound.
//!
//! requestIDs still never repeat across restarts: each store's counters
//! start at its creation time in milliseconds × [`IDS_PER_MS`], so a
//! restarted server's ids are above any its predecessor handed out (unless
//! that one issued more than 1,000 commands to one client per millisecond
//! of its life, or the clock went back). A device that remembers the
//! requestIDs it ran therefore never mistakes a new command for an old one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use super::record::Record;
use super::store::{NewCommand, Store, StoreError, StoreFuture};

/// Final records kept per client, by this store and by
/// [`RedbStore`](super::RedbStore) alike; older ones are forgotten (their
/// GET answers 404), so neither grows without bound on a long-lived
/// server. Pending ones are bounded by `--max-queued` instead.
pub const KEEP_FINAL: usize = 1_000;

/// requestIDs a store may hand out per millisecond of its life before its
/// successor's could meet them; ids stay below 2^53 (exact in JavaScript)
/// until the year 2255.
pub const IDS_PER_MS: i64 = 1_000;

/// The in-memory [`Store`].
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    /// Where every client's counter starts (see the module docs).
    base: i64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        let now = i64::try_from(super::record::now_ms()).unwrap_or(0);
        MemoryStore {
            state: Mutex::default(),
            base: now.saturating_mul(IDS_PER_MS),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Last requestID handed out, per client.
    counters: HashMap<String, i64>,
    /// Every kept record, per client, by requestID.
    records: HashMap<String, BTreeMap<i64, Record>>,
    clients: BTreeSet<String>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each critical section leaves the maps consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MemoryStore {
    fn enqueue(&self, new: NewCommand) -> StoreFuture<'_, Record> {
        let mut state = self.lock();
        let records = state.records.entry(new.client.clone()).or_default();
        let pending = records.values().filter(|r| !r.status.is_final()).count();
        if pending >= new.max_queued {
            return Box::pin(std::future::ready(Err(StoreError::Full(new.max_queued))));
        }
        let counter = state
            .counters
            .entry(new.client.clone())
            .or_insert(self.base);
        *counter += 1;
        let record = new.queued(*counter);
        let records = state.records.entry(new.client.clone()).or_default();
        records.insert(record.request_id, record.clone());
        state.clients.insert(new.client);
        Box::pin(std::future::ready(Ok(record)))
    }

    fn transition(&self, record: Record) -> StoreFuture<'_, bool> {
        let mut state = self.lock();
        let records = state.records.entry(record.client.clone()).or_default();
        let written = match records.get(&record.request_id) {
            Some(old) if old.status.is_final() => false,
            _ => {
                records.insert(record.request_id, record);
                true
            }
        };
        forget_old_finals(records);
        Box::pin(std::future::ready(Ok(written)))
    }

    fn get(&self, client: String, request_id: i64) -> StoreFuture<'_, Option<Record>> {
        let state = self.lock();
        let found = state
            .records
            .get(&client)
            .and_then(|records| records.get(&request_id))
            .cloned();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn pending(&self, client: String) -> StoreFuture<'_, Vec<Record>> {
        let state = self.lock();
        let pending = state.records.get(&client).map_or_else(Vec::new, |records| {
            let open = records.values().filter(|r| !r.status.is_final());
            open.cloned().collect()
        });
        Box::pin(std::future::ready(Ok(pending)))
    }

    fn clients(&self) -> StoreFuture<'_, Vec<String>> {
        let names = self.lock().clients.iter().cloned().collect();
        Box::pin(std::future::ready(Ok(names)))
    }

    fn add_client(&self, client: String) -> StoreFuture<'_, ()> {
        self.lock().clients.insert(client);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Drops the oldest final records past [`KEEP_FINAL`].
fn forget_old_finals(records: &mut BTreeMap<i64, Record>) {
    let finals = records.values().filter(|r| r.status.is_final()).count();
    if finals <= KEEP_FINAL {
        return;
    }
    let mut extra = finals - KEEP_FINAL;
    records.retain(|_, r| {
        let drop = extra > 0 && r.status.is_final();
        extra -= usize::from(drop);
        !drop
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(client: &str) -> NewCommand {
        NewCommand {
            client: client.into(),
            command: "x".into(),
            now: 0,
            expires_at: u64::MAX,
            max_queued: 2,
        }
    }

    #[test]
    fn ids_climb_from_the_start_time_and_the_queue_is_bounded() {
        let first = MemoryStore::new();
        let a = smol::block_on(first.enqueue(command("a"))).map(|r| r.request_id);
        let b = smol::block_on(first.enqueue(command("a"))).map(|r| r.request_id);
        assert_eq!(b, a.clone().map(|a| a + 1));
        assert_eq!(
            smol::block_on(first.enqueue(command("a"))).err(),
            Some(StoreError::Full(2))
        );
        // A successor (a restarted server) starts above.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = MemoryStore::new();
        let c = smol::block_on(second.enqueue(command("a"))).map(|r| r.request_id);
        assert!(c.clone().ok() > b.clone().ok(), "{c:?} after {b:?}");
    }
}
