//! A named device's record of the commands it has started and the replies
//! it sent, which makes it run each command at most once: the server may
//! re-send a command after a drop (it cannot know whether it arrived), and
//! a duplicate `requestID` gets the stored reply again, never a second run.
//!
//! With `--state DIR` the record is kept in `DIR/device.redb` (redb: pure
//! Rust, ACID, crash-safe), written *before* the program starts (started)
//! and *before* the reply is sent (replied), so a restart cannot make the
//! device run a command twice: a command found started but not replied at
//! start is answered [`interrupted`](interrupted_reply) from then on.
//! Without `--state` the same record is kept in memory: across reconnects,
//! not restarts.
//!
//! Only the last [`REMEMBERED_COMMANDS`] finished commands are kept; an id
//! at or below the highest one forgotten is refused rather than run (it
//! may have run already).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::{Database, ReadableTable, TableDefinition};

use crate::wire::codec;
use crate::{Error, Message};

/// Finished commands a device remembers (a few hundred bytes each): far
/// more than a server has in flight for one device (the server side's
/// queue bound is 1,000), so a re-send always finds its record.
pub const REMEMBERED_COMMANDS: usize = 10_000;

/// The state file in `--state DIR`.
const STATE_FILE: &str = "device.redb";

/// Started (`S`) and replied (`R`) commands by `requestID`; the value is
/// the tag, then the reply as JSON with the original command in `command`.
const COMMANDS: TableDefinition<i64, &[u8]> = TableDefinition::new("commands");

/// `client` (whose record this is) and `floor` (the highest id forgotten).
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// Where one command stands on this device.
#[derive(Debug, Clone)]
enum Entry {
    /// Accepted, waiting for a free slot. Not recorded: a restart forgets
    /// it, and the server's re-send runs it then.
    Queued(String),
    /// Recorded as started; its program runs (or ran, before a restart).
    Running(String),
    /// Finished; the reply, sent again for a duplicate.
    Replied(String, Message),
}

impl Entry {
    fn command(&self) -> &str {
        match self {
            Entry::Queued(c) | Entry::Running(c) | Entry::Replied(c, _) => c,
        }
    }
}

/// What to do with a command that has just arrived.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// New: queued; run it.
    Run,
    /// Seen before: send this (the stored reply, or a refusal). Not run.
    Answer(Message),
    /// Already queued or running: its reply goes out when it finishes.
    Wait,
}

/// The commands and the highest id forgotten.
#[derive(Debug, Default)]
struct Entries {
    map: BTreeMap<i64, Entry>,
    floor: Option<i64>,
}

/// The device's record; shared by the handler and the workers.
pub(crate) struct Record {
    entries: Mutex<Entries>,
    /// `None`: in memory only.
    db: Option<Database>,
}

/// The reply for a command that was started but never finished: the
/// device stopped (crashed, was killed) while it ran. The server maps it
/// to the final state `interrupted`.
pub fn interrupted_reply(id: i64) -> Message {
    let why =
        "the device stopped while the command ran (found started but not finished at restart)";
    Message {
        request_id: id,
        some_other_thing: format!("interrupted: {why}"),
        success: false,
        error: "interrupted".into(),
        ..Message::default()
    }
}

impl Record {
    /// A record in memory only.
    pub fn in_memory() -> Record {
        Record {
            entries: Mutex::default(),
            db: None,
        }
    }

    /// Opens (or creates) `dir`'s record for the device `client`: commands
    /// found started but not replied become [`interrupted_reply`]s, written
    /// back before anything is sent. Blocking: call it off the executor.
    pub fn open(dir: &Path, client: &str) -> Result<Record, Error> {
        let fail = |e: &dyn std::fmt::Display| {
            Error::Io(std::io::Error::other(format!(
                "--state {}: {e}",
                dir.display()
            )))
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        let db = match Database::create(dir.join(STATE_FILE)) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(fail(&"in use by another wsloop client"))
            }
            Err(e) => return Err(fail(&e)),
        };
        let entries = load(&db, client).map_err(|e| match e {
            Load::Owner(other) => Error::Config(format!(
                "--state {} holds the record of device {other:?}, not {client:?}",
                dir.display()
            )),
            Load::Db(e) => fail(&e),
        })?;
        Ok(Record {
            entries: Mutex::new(entries),
            db: Some(db),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides what to do with `request`; a new one is queued (in memory).
    pub fn admit(&self, request: &Message) -> Verdict {
        let (id, command) = (request.request_id, &request.command);
        let mut entries = self.lock();
        match entries.map.get(&id) {
            Some(entry) if entry.command() != command => {
                Verdict::Answer(refusal(id, "was already used for another command"))
            }
            Some(Entry::Replied(_, reply)) => Verdict::Answer(reply.clone()),
            Some(_) => Verdict::Wait,
            None if entries.floor.is_some_and(|floor| id <= floor) => Verdict::Answer(refusal(
                id,
                "is older than the commands this device remembers; it may have run already",
            )),
            None => {
                entries.map.insert(id, Entry::Queued(command.clone()));
                Verdict::Run
            }
        }
    }

    /// Records `request` as started, durably with `--state`, before its
    /// program starts. On failure the command is forgotten (a re-send may
    /// try again) and must not run.
    pub async fn start(self: &Arc<Self>, request: &Message) -> Result<(), String> {
        let (id, command) = (request.request_id, request.command.clone());
        let write = match &self.db {
            Some(_) => {
                let record = Arc::clone(self);
                let value = encode(b'S', &command, &Message::default());
                blocking::unblock(move || record.write(id, &value, &[], None)).await
            }
            None => Ok(()),
        };
        let mut entries = self.lock();
        match write {
            Ok(()) => {
                entries.map.insert(id, Entry::Running(command));
                Ok(())
            }
            Err(e) => {
                entries.map.remove(&id);
                Err(format!("cannot record it as started: {e}"))
            }
        }
    }

    /// Records `reply` to `request`, durably with `--state`, before it is
    /// sent, and forgets the oldest finished commands past the bound.
    pub async fn finish(self: &Arc<Self>, request: &Message, reply: &Message) {
        let (id, command) = (request.request_id, request.command.clone());
        let (evict, floor) = self.to_forget();
        if self.db.is_some() {
            let record = Arc::clone(self);
            let value = encode(b'R', &command, reply);
            let gone = evict.clone();
            let write = blocking::unblock(move || record.write(id, &value, &gone, floor)).await;
            if let Err(e) = write {
                // It ran; a restart will call it interrupted, never rerun it.
                log::error!("requestID {id}: cannot record its reply: {e}");
            }
        }
        let mut entries = self.lock();
        entries
            .map
            .insert(id, Entry::Replied(command, reply.clone()));
        for old in &evict {
            entries.map.remove(old);
        }
        entries.floor = entries.floor.max(floor);
    }

    /// The oldest finished commands past [`REMEMBERED_COMMANDS`] (the one
    /// finishing now is in the map already: [`start`](Self::start) put it
    /// there), and the floor once they are gone.
    fn to_forget(&self) -> (Vec<i64>, Option<i64>) {
        let entries = self.lock();
        let excess = entries.map.len().saturating_sub(REMEMBERED_COMMANDS);
        let evict: Vec<i64> = entries
            .map
            .iter()
            .filter(|(_, entry)| matches!(entry, Entry::Replied(..)))
            .map(|(id, _)| *id)
            .take(excess)
            .collect();
        let floor = evict.last().copied().max(entries.floor);
        (evict, floor)
    }

    /// One transaction: `id` gets `value`, `evict` go, `floor` is stored.
    fn write(
        &self,
        id: i64,
        value: &[u8],
        evict: &[i64],
        floor: Option<i64>,
    ) -> Result<(), DbError> {
        let Some(db) = &self.db else { return Ok(()) };
        let txn = db.begin_write()?;
        {
            let mut commands = txn.open_table(COMMANDS)?;
            commands.insert(id, value)?;
            for old in evict {
                commands.remove(old)?;
            }
            if let Some(floor) = floor {
                txn.open_table(META)?
                    .insert("floor", floor.to_string().as_str())?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

/// A refusal: `success:false`, not run.
fn refusal(id: i64, why: &str) -> Message {
    let why = format!("not run: requestID {id} {why}");
    Message {
        request_id: id,
        some_other_thing: why.clone(),
        success: false,
        error: why,
        ..Message::default()
    }
}

/// A stored value: the tag, then `reply` as JSON carrying `command`.
fn encode(tag: u8, command: &str, reply: &Message) -> Vec<u8> {
    let stored = Message {
        command: command.to_string(),
        ..reply.clone()
    };
    let mut value = vec![tag];
    value.extend_from_slice(codec::encode(&stored).as_bytes());
    value
}

/// A failed redb operation, as text: all anyone does with it is say it
/// (and redb's error type is 160 bytes).
struct DbError(String);

impl<E: Into<redb::Error>> From<E> for DbError {
    fn from(e: E) -> Self {
        DbError(e.into().to_string())
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a record could not be loaded.
enum Load {
    /// It is another device's.
    Owner(String),
    Db(String),
}

impl<E: Into<redb::Error>> From<E> for Load {
    fn from(e: E) -> Self {
        Load::Db(e.into().to_string())
    }
}

/// Reads the record, claiming it for `client` if new, and turns every
/// started-but-not-replied command into an interrupted one, in one
/// transaction.
fn load(db: &Database, client: &str) -> Result<Entries, Load> {
    let txn = db.begin_write()?;
    let mut entries = Entries::default();
    {
        let mut meta = txn.open_table(META)?;
        let owner = meta.get("client")?.map(|v| v.value().to_string());
        match owner {
            Some(owner) if owner != client => return Err(Load::Owner(owner)),
            Some(_) => {}
            None => {
                meta.insert("client", client)?;
            }
        }
        entries.floor = meta
            .get("floor")?
            .and_then(|v| v.value().parse::<i64>().ok());
        let mut commands = txn.open_table(COMMANDS)?;
        let mut interrupted = Vec::new();
        for row in commands.iter()? {
            let (id, value) = row?;
            let (id, value) = (id.value(), value.value());
            let stored = value.get(1..).and_then(|json| codec::decode(json).ok());
            match (value.first(), stored) {
                (Some(b'R'), Some(stored)) => {
                    let reply = Message {
                        command: String::new(),
                        ..stored.clone()
                    };
                    entries
                        .map
                        .insert(id, Entry::Replied(stored.command, reply));
                }
                // Started and never replied (or unreadable: never rerun it).
                (_, stored) => {
                    let command = stored.map(|s| s.command).unwrap_or_default();
                    interrupted.push((id, command));
                }
            }
        }
        for (id, command) in interrupted {
            let reply = interrupted_reply(id);
            log::warn!("requestID {id} was started before a restart and never finished: it will be answered interrupted");
            commands.insert(id, encode(b'R', &command, &reply).as_slice())?;
            entries.map.insert(id, Entry::Replied(command, reply));
        }
    }
    txn.commit()?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duplicate_waits_then_gets_the_stored_reply() {
        let record = Arc::new(Record::in_memory());
        let request = Message::request(7, "open");
        assert!(matches!(record.admit(&request), Verdict::Run));
        assert!(matches!(record.admit(&request), Verdict::Wait));
        let reply = Message {
            request_id: 7,
            success: true,
            ..Message::default()
        };
        smol::block_on(async {
            record.start(&request).await.expect("in memory");
            assert!(matches!(record.admit(&request), Verdict::Wait));
            record.finish(&request, &reply).await;
        });
        match record.admit(&request) {
            Verdict::Answer(again) => assert_eq!(again, reply),
            other => panic!("{other:?}"),
        }
        // The same id for another command is refused, not run.
        match record.admit(&Message::request(7, "close")) {
            Verdict::Answer(refused) => assert!(!refused.success, "{refused:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn past_the_bound_the_oldest_are_forgotten_and_then_refused() {
        let record = Arc::new(Record::in_memory());
        let total = REMEMBERED_COMMANDS as i64 + 5;
        smol::block_on(async {
            for id in 1..=total {
                let request = Message::request(id, "go");
                assert!(matches!(record.admit(&request), Verdict::Run));
                record.start(&request).await.expect("in memory");
                record.finish(&request, &request.seed_reply()).await;
            }
        });
        assert_eq!(record.lock().map.len(), REMEMBERED_COMMANDS);
        // Forgotten: refused rather than run again.
        match record.admit(&Message::request(5, "go")) {
            Verdict::Answer(refused) => assert!(refused.some_other_thing.starts_with("not run:")),
            other => panic!("{other:?}"),
        }
        // Still remembered: its reply.
        match record.admit(&Message::request(6, "go")) {
            Verdict::Answer(reply) => assert!(reply.success),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_state_dir_belongs_to_one_device() {
        let dir = std::env::temp_dir().join(format!("wsloop-record-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        drop(Record::open(&dir, "one").expect("a new record"));
        let other = Record::open(&dir, "two").err().map(|e| e.to_string());
        assert!(other.is_some_and(|e| e.contains("\"one\"")), "refused");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
