//! The store shared by several nodes (`wsloop server --redis URL`, feature
//! `redis`): records, per-client queues and id counters in Redis, plus the
//! connection to Redis that the cluster code ([`super::cluster`]) shares.
//!
//! The layout, for client NAME (every key under [`PREFIX`]):
//!
//! | key | type | what |
//! |---|---|---|
//! | `wsloop:clients` | set | every known client name |
//! | `wsloop:ids:NAME` | string | last requestID handed out (INCR) |
//! | `wsloop:records:NAME` | hash | requestID → the record's JSON |
//! | `wsloop:pending:NAME` | sorted set | requestIDs not yet final, scored by id: the queue |
//! | `wsloop:finals:NAME` | sorted set | final requestIDs, oldest first, to forget past [`KEEP_FINAL`] |
//!
//! Why this layout: one hash per client rather than one key per record
//! keeps the key count at a few per device (300 devices, 1,500 keys)
//! however many commands they had, and lets the "forget the oldest final"
//! step delete fields rather than keys; the pending set is sorted by
//! requestID, which *is* the delivery order, so `ZRANGE` is the queue in
//! order and `ZCARD` the `--max-queued` check; an INCR counter per client
//! makes ids unique across nodes (they all increment the one counter) and
//! restarts (Redis persists it). Like the memory store's, a new counter
//! starts at the creation time in ms × [`IDS_PER_MS`], so even a wiped
//! Redis never hands a device a requestID it already ran.
//!
//! Atomicity: each multi-key update is one Lua script (Redis runs a script
//! alone, all or nothing as far as other clients see): `enqueue` checks the
//! queue bound, increments the counter and writes the record and its queue
//! entry; `transition` refuses to overwrite a final record (membership of
//! the pending set says "not final"), writes, moves a final one out of the
//! queue, forgets old finals, and publishes `NAME ID` on [`DONE_CHANNEL`]
//! in the same step, so that a node with a `?wait` caller learns of the
//! completion (the cluster code subscribes).
//!
//! "Acknowledged" means the script's reply came back: the write is in
//! Redis, and as durable as Redis's own persistence is set to be (the
//! cluster test and the README run it with `appendonly yes`,
//! `appendfsync always`: fsync before the reply).
//!
//! The `redis` crate (1.0, `smol-comp`) runs the driver task of each
//! connection it opens on smol's global executor (`smol::spawn`); its
//! pub/sub connection offers no way to hand it a spawner, so this is the
//! one task in wsloop's tree that does not run on the caller's executor.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Script};

use super::memory::{IDS_PER_MS, KEEP_FINAL};
use super::record::{now_ms, Record};
use super::store::{NewCommand, Store, StoreError, StoreFuture};

/// Every key and channel of wsloop starts with this.
pub const PREFIX: &str = "wsloop:";

/// Where final transitions are announced: `NAME REQUESTID`.
pub const DONE_CHANNEL: &str = "wsloop:done";

/// How long one Redis call may take before it counts as a failure: long
/// enough for an fsync'ing Redis under load, short enough that an API call
/// answers 503 rather than hang when Redis stops answering.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The first reconnect delay after Redis failed, doubled per failure up to
/// [`MAX_BACKOFF`]: quick after a blip, gentle on a Redis that is down.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// `enqueue`. KEYS: pending, ids, records, clients; ARGV: max queued,
/// counter start, record JSON, name. The id goes through `%d`: a Lua
/// number passed to `redis.call` as is would be printed with 14 digits.
const ENQUEUE: &str = r"
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return -1 end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SET', KEYS[2], ARGV[2]) end
local id = string.format('%d', redis.call('INCR', KEYS[2]))
redis.call('HSET', KEYS[3], id, ARGV[3])
redis.call('ZADD', KEYS[1], id, id)
redis.call('SADD', KEYS[4], ARGV[4])
return tonumber(id)
";

/// `transition`. KEYS: records, pending, finals; ARGV: id, record JSON,
/// "1" if final, final records to keep, name.
const TRANSITION: &str = r"
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], ARGV[1], ARGV[1])
  local extra = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[4])
  if extra > 0 then
    for _, old in ipairs(redis.call('ZRANGE', KEYS[3], 0, extra - 1)) do
      redis.call('HDEL', KEYS[1], old)
    end
    redis.call('ZREMRANGEBYRANK', KEYS[3], 0, extra - 1)
  end
  redis.call('PUBLISH', 'wsloop:done', ARGV[5] .. ' ' .. ARGV[1])
end
return 1
";

/// The connection to Redis, shared by the store and the cluster code:
/// one multiplexed connection (every call pipelined on it), dropped on a
/// failure and re-opened with backoff; each change between reachable and
/// unreachable is logged once.
pub(crate) struct Link {
    client: ::redis::Client,
    /// The URL, for messages (without a password: see [`redacted`]).
    url: String,
    conn: Mutex<Option<MultiplexedConnection>>,
    retry: Mutex<Retry>,
    /// Whether the last call reached Redis (for logging changes once).
    up: AtomicBool,
}

/// When the next connection attempt may start.
struct Retry {
    not_before: Instant,
    backoff: Duration,
}

impl Link {
    /// A link to `url` (`redis://HOST:PORT[/DB]`); connects on first use.
    pub(crate) fn new(url: &str) -> Result<Arc<Link>, StoreError> {
        let client = ::redis::Client::open(url).map_err(|e| backend(&e))?;
        Ok(Arc::new(Link {
            client,
            url: redacted(url),
            conn: Mutex::new(None),
            retry: Mutex::new(Retry {
                not_before: Instant::now(),
                backoff: FIRST_BACKOFF,
            }),
            up: AtomicBool::new(true),
        }))
    }

    /// The client, for a pub/sub connection of its own.
    pub(crate) fn client(&self) -> &::redis::Client {
        &self.client
    }

    /// The URL as logged.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        // Each critical section is a plain assignment.
        mutex.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open connection, or a new one unless the backoff says wait.
    pub(crate) async fn conn(&self) -> Result<MultiplexedConnection, StoreError> {
        if let Some(conn) = Self::lock(&self.conn).clone() {
            return Ok(conn);
        }
        {
            // Claim this attempt: callers meanwhile fail at once (503)
            // rather than pile up connection attempts.
            let mut retry = Self::lock(&self.retry);
            if Instant::now() < retry.not_before {
                return Err(unreachable_error());
            }
            retry.not_before = Instant::now() + retry.backoff;
            retry.backoff = (retry.backoff * 2).min(MAX_BACKOFF);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => {
                *Self::lock(&self.conn) = Some(conn.clone());
                *Self::lock(&self.retry) = Retry {
                    not_before: Instant::now(),
                    backoff: FIRST_BACKOFF,
                };
                self.reached();
                Ok(conn)
            }
            Err(err) => Err(self.failed(err)),
        }
    }

    /// Notes a call that reached Redis.
    pub(crate) fn reached(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            log::info!("Redis {}: reachable again", self.url);
        }
    }

    /// Notes a failed call: a connection-level failure drops the
    /// connection (the next call re-opens it, after the backoff). Returns
    /// the error as the store reports it.
    pub(crate) fn failed(&self, err: ::redis::RedisError) -> StoreError {
        let connection_lost = err.is_io_error()
            || err.is_connection_dropped()
            || err.is_timeout()
            || err.is_connection_refusal()
            || err.is_unrecoverable_error();
        if !connection_lost {
            return backend(&err);
        }
        *Self::lock(&self.conn) = None;
        if self.up.swap(false, Ordering::Relaxed) {
            log::warn!(
                "Redis {}: unreachable ({err}); connected devices stay, API calls that need the \
                 store answer 503, reconnecting with backoff",
                self.url
            );
        }
        StoreError::Backend(format!("Redis unreachable: {err}"))
    }

    /// Runs one command or script on the connection, noting the outcome.
    pub(crate) async fn query<T: ::redis::FromRedisValue>(
        &self,
        call: impl AsyncFnOnce(&mut MultiplexedConnection) -> ::redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        match call(&mut conn).await {
            Ok(value) => {
                self.reached();
                Ok(value)
            }
            Err(err) => Err(self.failed(err)),
        }
    }
}

/// The error of a call made while the link waits to reconnect.
fn unreachable_error() -> StoreError {
    StoreError::Backend("Redis unreachable (reconnecting)".into())
}

fn backend(err: &::redis::RedisError) -> StoreError {
    StoreError::Backend(format!("Redis: {err}"))
}

/// `url` without its password, if it has one.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// The key `wsloop:KIND:NAME`.
pub(crate) fn key(kind: &str, name: &str) -> String {
    format!("{PREFIX}{kind}:{name}")
}

/// The Redis-backed [`Store`]; see the module docs for its layout.
pub struct RedisStore {
    link: Arc<Link>,
    enqueue: Script,
    transition: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.link.url)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://HOST:PORT[/DB]`), and
    /// checks that it answers.
    pub async fn open(url: &str) -> Result<RedisStore, StoreError> {
        let store = RedisStore::over(Link::new(url)?);
        store
            .link
            .query(async |c| ::redis::cmd("PING").query_async::<String>(c).await)
            .await?;
        Ok(store)
    }

    /// A store over an existing link.
    pub(crate) fn over(link: Arc<Link>) -> RedisStore {
        RedisStore {
            link,
            enqueue: Script::new(ENQUEUE),
            transition: Script::new(TRANSITION),
        }
    }

    /// The link, for the cluster code.
    pub(crate) fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// Whether `name` is a known client (SISMEMBER).
    pub(crate) async fn is_client(&self, name: &str) -> Result<bool, StoreError> {
        let clients = format!("{PREFIX}clients");
        self.link
            .query(async |c| {
                ::redis::cmd("SISMEMBER")
                    .arg(&clients)
                    .arg(name)
                    .query_async(c)
                    .await
            })
            .await
    }
}

fn encode(record: &Record) -> Result<String, StoreError> {
    serde_json::to_string(record).map_err(|e| StoreError::Backend(e.to_string()))
}

/// A stored record; the hash field is its requestID (the JSON written by
/// `enqueue` carries a placeholder, the id being chosen inside the script).
fn decode(json: &str, request_id: i64) -> Result<Record, StoreError> {
    let mut record: Record =
        serde_json::from_str(json).map_err(|e| StoreError::Backend(format!("bad record: {e}")))?;
    record.request_id = request_id;
    Ok(record)
}

impl Store for RedisStore {
    fn enqueue(&self, new: NewCommand) -> StoreFuture<'_, Record> {
        Box::pin(async move {
            let json = encode(&new.queued(0))?;
            let start = i64::try_from(now_ms())
                .unwrap_or(0)
                .saturating_mul(IDS_PER_MS);
            let mut call = self.enqueue.prepare_invoke();
            call.key(key("pending", &new.client))
                .key(key("ids", &new.client))
                .key(key("records", &new.client))
                .key(format!("{PREFIX}clients"))
                .arg(new.max_queued)
                .arg(start)
                .arg(json)
                .arg(&new.client);
            let id: i64 = self
                .link
                .query(async |c| call.invoke_async(c).await)
                .await?;
            if id < 0 {
                return Err(StoreError::Full(new.max_queued));
            }
            Ok(new.queued(id))
        })
    }

    fn transition(&self, record: Record) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let json = encode(&record)?;
            let mut call = self.transition.prepare_invoke();
            call.key(key("records", &record.client))
                .key(key("pending", &record.client))
                .key(key("finals", &record.client))
                .arg(record.request_id)
                .arg(json)
                .arg(if record.status.is_final() { "1" } else { "0" })
                .arg(KEEP_FINAL)
                .arg(&record.client);
            let written: i64 = self
                .link
                .query(async |c| call.invoke_async(c).await)
                .await?;
            Ok(written == 1)
        })
    }

    fn get(&self, client: String, request_id: i64) -> StoreFuture<'_, Option<Record>> {
        Box::pin(async move {
            let records = key("records", &client);
            let json: Option<String> = self
                .link
                .query(async |c| {
                    ::redis::cmd("HGET")
                        .arg(&records)
                        .arg(request_id)
                        .query_async(c)
                        .await
                })
                .await?;
            json.map(|json| decode(&json, request_id)).transpose()
        })
    }

    fn pending(&self, client: String) -> StoreFuture<'_, Vec<Record>> {
        Box::pin(async move {
            let queue = key("pending", &client);
            let ids: Vec<i64> = self
                .link
                .query(async |c| {
                    ::redis::cmd("ZRANGE")
                        .arg(&queue)
                        .arg(0)
                        .arg(-1)
                        .query_async(c)
                        .await
                })
                .await?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let records = key("records", &client);
            let jsons: Vec<Option<String>> = self
                .link
                .query(async |c| {
                    ::redis::cmd("HMGET")
                        .arg(&records)
                        .arg(&ids)
                        .query_async(c)
                        .await
                })
                .await?;
            // Two reads, not one snapshot: a record that became final (or
            // was forgotten) in between is left out, as it should be.
            let mut pending = Vec::with_capacity(ids.len());
            for (id, json) in ids.into_iter().zip(jsons) {
                if let Some(json) = json {
                    let record = decode(&json, id)?;
                    if !record.status.is_final() {
                        pending.push(record);
                    }
                }
            }
            Ok(pending)
        })
    }

    fn clients(&self) -> StoreFuture<'_, Vec<String>> {
        Box::pin(async move {
            let clients = format!("{PREFIX}clients");
            self.link
                .query(async |c| ::redis::cmd("SMEMBERS").arg(&clients).query_async(c).await)
                .await
        })
    }

    fn add_client(&self, client: String) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let clients = format!("{PREFIX}clients");
            self.link
                .query(async |c| {
                    ::redis::cmd("SADD")
                        .arg(&clients)
                        .arg(&client)
                        .query_async::<i64>(c)
                        .await
                })
                .await
                .map(drop)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_the_logs() {
        assert_eq!(redacted("redis://:s3cret@db:6379/1"), "redis://…@db:6379/1");
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn a_record_takes_its_id_from_the_hash_field() {
        let new = NewCommand {
            client: "dev".into(),
            command: "x".into(),
            now: 1,
            expires_at: 2,
            max_queued: 1,
        };
        let json = encode(&new.queued(0)).unwrap_or_default();
        let record = decode(&json, 1_796_126_390_017_001).map(|r| r.request_id);
        assert_eq!(record, Ok(1_796_126_390_017_001));
    }
}
