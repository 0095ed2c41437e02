//! The Redis adapter: the [`Store`] seam kept on a Redis server (tested with Redis 7.0).
//!
//! ## Layout
//!
//! Every Redis key a store touches starts with its [`RedisStoreOptions::key_prefix`], so several
//! data sets (or test runs) share one server without colliding:
//!
//! | Redis key | type | holds |
//! |---|---|---|
//! | `<key_prefix>:<space>:keys` | sorted set, every score 0 | the space's keys (members) |
//! | `<key_prefix>:<space>:values` | hash | key (field) → value |
//! | `<key_prefix>:commit-token:<id>` | string, 5 min TTL | number of the last batch sent over connection `<id>` (*Reconnection*) |
//!
//! `<space>` is [`Space::name`] (snake_case, so it never contains `-` and cannot collide with
//! `commit-token`). Keys and values are stored as they are: Redis strings are binary safe. An
//! empty space has no Redis keys at all (Redis deletes empty sets and hashes).
//!
//! With equal scores Redis orders sorted-set members by their bytes (`memcmp`, shorter first on a
//! common prefix), which is exactly the [`Store`] order, so a scan is one `ZRANGEBYLEX`:
//! - lower bound: `(start_after` when `start_after >= prefix`, else `[prefix` (`-` for the empty
//!   prefix);
//! - upper bound: `(end`, where `end` is the smallest key above every key starting with `prefix`
//!   (drop trailing 0xFF bytes, add one to the last byte); `+` when there is none (empty prefix,
//!   or a prefix of only 0xFF bytes);
//! - `LIMIT 0 limit` (`-1` when `limit` does not fit an `i64`).
//!
//! ## Atomicity
//!
//! Each call is one round trip and one atomic step on the server, so readers never see half a
//! batch:
//! - [`Store::commit`] is one Lua script (`EVALSHA`; loaded on first use and after a server
//!   restart): it applies the ops in order (`ZADD`+`HSET` or `ZREM`+`HDEL`; a later op on a key
//!   wins) and then writes the connection's commit token. Redis runs a script without
//!   interleaving other clients' commands. It is also all or nothing: the script first checks
//!   that none of its keys holds a foreign type (the only runtime error its commands can hit), and
//!   Redis refuses a script for lack of memory (`maxmemory`) only at its first write. A script was
//!   chosen over `MULTI`/`EXEC`, which keeps running the rest of a transaction after a failed
//!   command.
//! - [`Store::get`] is one `HGET`.
//! - [`Store::scan`] is one read-only Lua script: `ZRANGEBYLEX`, then `HMGET` of those keys (in
//!   chunks of 1,000, under Lua's argument limit). Run apart, a batch could land between the two
//!   and the scan would return a mix of two states; inside the script every key found has its
//!   value, and a key without one means the data set was altered behind the store's back
//!   ([`StoreError::Corrupt`]). A scan with a huge `limit` blocks the server while it runs, as
//!   any big Redis command does; the engine pages its scans ([`crate::for_each`]).
//!
//! ## Durability
//!
//! What survives a crash is decided by the server's configuration, not by the client, so
//! `commit(.., sync)` and [`Store::sync`] send nothing extra. [`StoreInfo::durable`] is true only
//! if, when the store opens, `CONFIG GET` reports `appendonly yes` and `appendfsync always`: Redis
//! then writes and fsyncs the append-only file before it sends the replies of the commands it
//! ran, so a batch acknowledged to the caller is on stable storage (Redis 7 logs a script's
//! effects as one `MULTI`/`EXEC` and drops an unfinished one at reload, so a crash mid-write
//! loses the last batch whole). Anything else (`appendfsync everysec` loses up to about a second,
//! RDB snapshots lose everything since the last one, no persistence loses everything), or a
//! server that refuses `CONFIG` (managed services often do), makes the store report
//! `durable: false`, with a warning at open. The settings are read once: changing them later
//! with `CONFIG SET` is not noticed. Replication is not considered: a failover to a replica can
//! lose acknowledged batches whatever the primary's settings (Redis's `WAIT` would be the tool;
//! not used).
//!
//! ## Connections
//!
//! A small pool of synchronous `redis::Connection`s behind a mutex and a condvar, hand-written
//! rather than `r2d2`: `r2d2` brings its own dependencies and a background thread, and the pool
//! needed here is about a hundred lines. The `Store` calls are blocking, so the client is built
//! without its async (tokio) side. Up to [`RedisStoreOptions::max_connections`] connections are
//! open at once (so readers on several threads do not queue behind the committer); a caller
//! finding them all busy waits at most the I/O timeout, then gets an error. Every socket has
//! `TCP_NODELAY`, a connect timeout and read/write timeouts, so a dead or hung server gives an
//! error instead of hanging a caller forever.
//!
//! ## Reconnection
//!
//! A connection that fails at the connection level (I/O error, timeout, protocol error) is closed,
//! never reused: after a timeout, a late reply could be read as the answer to the next command.
//! When the failure shows that the server's end of the connection is gone (EOF, reset, broken
//! pipe: the server restarted, or killed the client), the idle connections are closed too (they
//! are likely gone as well) and:
//! - a read is retried once, on a new connection;
//! - a commit is resolved, not retried blindly. Its script ends by writing the connection's
//!   commit token, in the same atomic step as the batch; once the server has closed a connection
//!   it runs nothing more from it, so reading the token over a new connection tells whether the
//!   batch applied. If it did, `commit` succeeds; if not, the batch is sent once more on the new
//!   connection. (This assumes a direct connection: a proxy in between could lose the client's
//!   side while the server's side stays open with the request still to run.)
//! - A timeout is not resolved: the server may be slow rather than gone, and may still run the
//!   request later. `commit` then fails saying the outcome is unknown; the batch applied entirely
//!   or not at all.
//!
//! Errors map to [`StoreError::Engine`] with the cause. Redis Cluster and TLS are not supported
//! (the client is built without them).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use redis::io::tcp::TcpSettings;
use redis::{IntoConnectionInfo, RedisError, RedisResult, Script};

use crate::file::prefix_end;
use crate::{Batch, BatchOp, Entry, Space, Store, StoreError, StoreInfo};

/// Applies a batch. KEYS[1]: this connection's commit token, KEYS[2]: the fence key; then each
/// space used, as a pair (sorted set, hash). ARGV[1]: the token, ARGV[2]: its TTL in ms,
/// ARGV[3]: the fence token (empty: no fence), then the ops: `p, slot, key, value` or
/// `d, slot, key` (`slot`: index in KEYS of the space's sorted set). With a fence, the batch
/// applies only while the fence key holds the fence token.
const COMMIT_SCRIPT: &str = r#"
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return redis.error_reply('TRINEFENCED this engine no longer holds ' .. KEYS[2] .. '; batch not applied')
end
for i = 3, #KEYS, 2 do
  local z = redis.call('TYPE', KEYS[i]).ok
  local h = redis.call('TYPE', KEYS[i + 1]).ok
  if (z ~= 'none' and z ~= 'zset') or (h ~= 'none' and h ~= 'hash') then
    return redis.error_reply('trine: ' .. KEYS[i] .. ' or ' .. KEYS[i + 1] ..
      ' holds a value of another type; batch not applied')
  end
end
local i, n = 4, #ARGV
while i <= n do
  local slot, key = tonumber(ARGV[i + 1]), ARGV[i + 2]
  if ARGV[i] == 'p' then
    redis.call('ZADD', KEYS[slot], 0, key)
    redis.call('HSET', KEYS[slot + 1], key, ARGV[i + 3])
    i = i + 4
  else
    redis.call('ZREM', KEYS[slot], key)
    redis.call('HDEL', KEYS[slot + 1], key)
    i = i + 3
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// Reads a range. KEYS[1]: sorted set, KEYS[2]: hash; ARGV: `ZRANGEBYLEX` min, max, count.
/// Returns key, value, key, value, ... (a missing value as nil).
const SCAN_SCRIPT: &str = r#"
local keys = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, ARGV[3])
local out, n = {}, 0
for i = 1, #keys, 1000 do
  local values = redis.call('HMGET', KEYS[2], unpack(keys, i, math.min(i + 999, #keys)))
  for j = 1, #values do
    out[n + 1] = keys[i + j - 1]
    out[n + 2] = values[j]
    n = n + 2
  end
end
return out
"#;

/// Lifetime of a commit token: far longer than the time between a dropped connection and the
/// check of its token, which follows at once.
const TOKEN_TTL_MS: u64 = 5 * 60 * 1000;

/// Settings of the Redis adapter.
#[derive(Debug, Clone)]
pub struct RedisStoreOptions {
    /// Prefix of every Redis key the store uses (`<key_prefix>:<space>:...`); data sets with
    /// different prefixes on one server never see each other.
    pub key_prefix: String,
    /// Bound on establishing a connection (TCP connect and handshake).
    pub connect_timeout: Duration,
    /// Bound on each read and write of a request, and on waiting for a free connection.
    pub io_timeout: Duration,
    /// Connections open at most at once.
    pub max_connections: usize,
    /// When set, a batch applies only while Redis key `fence.key` holds `fence.token` (an
    /// ownership lease): an engine that lost its lease can never overwrite the data.
    pub fence: Option<Fence>,
}

/// A fencing condition on commits: the Redis key (full name) and the value it must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub token: String,
}

impl Default for RedisStoreOptions {
    fn default() -> Self {
        Self {
            key_prefix: "trine".into(),
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(5),
            max_connections: 16,
            fence: None,
        }
    }
}

/// Names of a space's two Redis keys.
struct SpaceKeys {
    /// Sorted set of the keys.
    keys: String,
    /// Hash of key → value.
    values: String,
}

/// Counts of recoveries from dropped connections (each is also logged; tests read them).
#[derive(Default)]
struct Recoveries {
    /// Reads retried on a new connection.
    reads_retried: AtomicU64,
    /// Commits whose connection dropped after the batch had applied.
    commits_found_applied: AtomicU64,
    /// Commits whose connection dropped before the batch applied, sent again.
    commits_retried: AtomicU64,
}

/// A [`Store`] on a Redis server; see the module docs for the layout and guarantees.
pub struct RedisStore {
    pool: Pool,
    /// The async connection of [`Store::get_async`]: one multiplexed connection that pipelines
    /// concurrent reads and reconnects by itself; opened on first use.
    reads: Arc<tokio::sync::OnceCell<redis::aio::ConnectionManager>>,
    /// Indexed by `space as usize` (the position in [`Space::ALL`]).
    spaces: Vec<SpaceKeys>,
    durable: bool,
    fence: Option<Fence>,
    commit_script: Script,
    scan_script: Script,
    recoveries: Recoveries,
}

/// A client for the server at `url` whose connections set TCP_NODELAY (requests are small and
/// must not wait for ACKs). Every Redis connection of Trine is made through one of these.
pub fn nodelay_client(url: &str) -> RedisResult<redis::Client> {
    let info = url
        .into_connection_info()?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    redis::Client::open(info)
}

impl RedisStore {
    /// Connects to the server at `url` (`redis://[user:password@]host[:port][/db]` or
    /// `redis+unix:///path`), checks that it answers and reads its persistence settings.
    pub fn open(url: &str, options: RedisStoreOptions) -> Result<Self, StoreError> {
        if options.connect_timeout.is_zero() || options.io_timeout.is_zero() {
            return Err(StoreError::Engine(
                "redis store: timeouts must be greater than zero".into(),
            ));
        }
        let client = nodelay_client(url)
            .map_err(|e| StoreError::Engine(format!("redis store: invalid URL: {e}")))?;
        let prefix = &options.key_prefix;
        let pool = Pool {
            client,
            connect_timeout: options.connect_timeout,
            io_timeout: options.io_timeout,
            max: options.max_connections.max(1),
            token_base: format!("{prefix}:commit-token:{:016x}-", random_u64()),
            next_id: AtomicU64::new(0),
            state: Mutex::new(PoolState::default()),
            freed: Condvar::new(),
        };
        let durable = {
            let mut lease = pool.lease(false)?;
            lease
                .run(|c| redis::cmd("PING").query::<()>(c))
                .map_err(|e| error("ping", &e))?;
            match persistence(&mut lease) {
                Ok((appendonly, appendfsync)) => {
                    let durable = is_durable(&appendonly, &appendfsync);
                    if !durable {
                        tracing::warn!(
                            appendonly,
                            appendfsync,
                            "redis store: acknowledged writes can be lost in a server crash \
                             (durable only with appendonly yes and appendfsync always)"
                        );
                    }
                    durable
                }
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "redis store: cannot read the server's persistence settings; \
                         treating it as not durable"
                    );
                    false
                }
            }
        };
        let spaces = Space::ALL
            .iter()
            .map(|space| SpaceKeys {
                keys: format!("{prefix}:{}:keys", space.name()),
                values: format!("{prefix}:{}:values", space.name()),
            })
            .collect();
        Ok(Self {
            pool,
            reads: Arc::default(),
            spaces,
            durable,
            fence: options.fence.clone(),
            commit_script: Script::new(COMMIT_SCRIPT),
            scan_script: Script::new(SCAN_SCRIPT),
            recoveries: Recoveries::default(),
        })
    }

    fn space(&self, space: Space) -> &SpaceKeys {
        // `Space` is fieldless and `ALL` lists the variants in declaration order.
        &self.spaces[space as usize]
    }

    /// Runs a read; if the connection turns out to be dropped, once more on a new one.
    fn read<T>(
        &self,
        what: &str,
        f: impl Fn(&mut redis::Connection) -> RedisResult<T>,
    ) -> Result<T, StoreError> {
        let mut lease = self.pool.lease(false)?;
        match lease.run(&f) {
            Ok(v) => Ok(v),
            Err(e) if is_dropped(&e) => {
                drop(lease);
                self.pool.close_idle();
                self.recoveries
                    .reads_retried
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "redis store: connection dropped; retrying a {what}");
                let mut lease = self.pool.lease(true)?;
                lease.run(&f).map_err(|e| error(what, &e))
            }
            Err(e) => Err(error(what, &e)),
        }
    }

    /// Sends `batch` over the leased connection, as the next commit of that connection.
    fn apply(&self, lease: &mut Lease<'_>, batch: &Batch) -> RedisResult<()> {
        let conn = lease.conn();
        conn.commits += 1;
        let mut call = self.commit_script.prepare_invoke();
        let (fence_key, fence_token) = match &self.fence {
            Some(f) => (f.key.as_str(), f.token.as_str()),
            None => (conn.token_key.as_str(), ""),
        };
        call.key(conn.token_key.as_str())
            .key(fence_key)
            .arg(conn.commits)
            .arg(TOKEN_TTL_MS)
            .arg(fence_token);
        // KEYS index of each space's sorted set, once the space is used.
        let mut slots = [0usize; Space::ALL.len()];
        let mut next_slot = 3;
        for op in &batch.ops {
            let (BatchOp::Put { space, key, .. } | BatchOp::Delete { space, key }) = op;
            let slot = &mut slots[*space as usize];
            if *slot == 0 {
                *slot = next_slot;
                next_slot += 2;
                let names = self.space(*space);
                call.key(names.keys.as_str()).key(names.values.as_str());
            }
            match op {
                BatchOp::Put { value, .. } => {
                    call.arg("p")
                        .arg(*slot)
                        .arg(key.as_slice())
                        .arg(value.as_slice());
                }
                BatchOp::Delete { .. } => {
                    call.arg("d").arg(*slot).arg(key.as_slice());
                }
            }
        }
        lease.run(|c| call.invoke::<()>(c))
    }

    /// After a commit's connection dropped: whether the commit numbered `token` on the
    /// connection with `token_key` applied, asked over `lease`.
    fn applied(&self, lease: &mut Lease<'_>, token_key: &str, token: u64) -> RedisResult<bool> {
        let stored: Option<u64> = lease.run(|c| redis::cmd("GET").arg(token_key).query(c))?;
        Ok(stored == Some(token))
    }
}

/// Renews a lease only while it still holds our token. KEYS[1]: lease key; ARGV: token, TTL ms.
const RENEW_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// Deletes a lease only while it still holds our token.
const RELEASE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Exclusive ownership of a data set: a Redis key holding this engine's token with a TTL,
/// renewed by a thread every `ttl / 5`. Pair it with a [`Fence`] on the store so that an engine
/// that lost the lease (paused past the TTL, cut off from Redis) can no longer commit.
pub struct OwnerLease {
    key: String,
    token: String,
    client: redis::Client,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set by the renewal thread when another engine holds the key.
    lost: Arc<std::sync::atomic::AtomicBool>,
    /// Cleared by [`OwnerLease::hand_over`]: the key is then left to expire or be adopted.
    release_on_drop: bool,
}

impl OwnerLease {
    /// Takes the lease `key` with `token`, waiting up to `wait` for a previous holder's lease to
    /// expire (an engine killed without releasing it). Fails with the holder's token otherwise.
    /// A key that already holds `token` (handed over by [`OwnerLease::hand_over`] to a process
    /// that continues with the same token) is adopted.
    pub fn acquire(
        url: &str,
        key: &str,
        token: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<OwnerLease, StoreError> {
        match Self::take(url, key, token, ttl, wait)? {
            Ok(lease) => Ok(lease),
            Err(holder) => Err(StoreError::Engine(format!(
                "{key} is held by another engine ({holder}); several engines on one data set \
                 need cluster mode (docs/cluster.md)"
            ))),
        }
    }

    /// Takes the lease if nobody holds it now: `Ok(None)` when another engine does.
    pub fn try_acquire(
        url: &str,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Option<OwnerLease>, StoreError> {
        LeaseKey::new(url, key)?.try_acquire(token, ttl)
    }

    /// The token of the current holder of `key`, if any.
    pub fn holder(url: &str, key: &str) -> Result<Option<String>, StoreError> {
        LeaseKey::new(url, key)?.holder()
    }

    fn take(
        url: &str,
        key: &str,
        token: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Result<OwnerLease, String>, StoreError> {
        LeaseKey::new(url, key)?.take(token, ttl, wait)
    }

    /// The token this lease holds the key with.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Whether the lease may be gone: another engine holds the key, or no renewal succeeded for
    /// a whole TTL (Redis unreachable: another engine may have taken it meanwhile). The fence
    /// refuses this engine's commits in the first case; the owner should step down in both.
    pub fn is_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The flag behind [`OwnerLease::is_lost`], for a watcher that does not hold the lease.
    pub fn lost_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.lost.clone()
    }

    /// Stops renewing without releasing the key, for a process that continues with the same
    /// token (it adopts the key with [`OwnerLease::acquire`] before the TTL runs out).
    pub fn hand_over(mut self) {
        self.release_on_drop = false;
    }

    /// The fence matching this lease, for [`RedisStoreOptions::fence`].
    pub fn fence(&self) -> Fence {
        Fence {
            key: self.key.clone(),
            token: self.token.clone(),
        }
    }
}

/// One lease key on one Redis server, with a connection kept between uses: an engine that
/// checks the lease every half second (to take it when its owner dies) does not connect anew
/// each time.
pub struct LeaseKey {
    client: redis::Client,
    key: String,
    conn: Option<redis::Connection>,
}

impl LeaseKey {
    /// Names the key; connects on first use.
    pub fn new(url: &str, key: &str) -> Result<LeaseKey, StoreError> {
        let client = nodelay_client(url)
            .map_err(|e| StoreError::Engine(format!("redis lease: invalid URL: {e}")))?;
        Ok(LeaseKey {
            client,
            key: key.to_owned(),
            conn: None,
        })
    }

    /// Runs `f` on the kept connection (opened if needed); a failed request drops it, so the
    /// next use connects again.
    fn with_conn<T>(
        &mut self,
        f: impl FnOnce(&mut redis::Connection, &str) -> RedisResult<T>,
    ) -> Result<T, StoreError> {
        if self.conn.is_none() {
            let c = self
                .client
                .get_connection_with_timeout(Duration::from_secs(5))
                .map_err(|e| error("lease", &e))?;
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            self.conn = Some(c);
        }
        let conn = self.conn.as_mut().expect("connected above");
        f(conn, &self.key).map_err(|e| {
            self.conn = None;
            error("lease", &e)
        })
    }

    /// The token of the current holder, if any.
    pub fn holder(&mut self) -> Result<Option<String>, StoreError> {
        self.with_conn(|c, key| redis::cmd("GET").arg(key).query(c))
    }

    /// Takes the lease if nobody holds it now: `Ok(None)` when another engine does.
    pub fn try_acquire(
        &mut self,
        token: &str,
        ttl: Duration,
    ) -> Result<Option<OwnerLease>, StoreError> {
        Ok(self.take(token, ttl, Duration::ZERO)?.ok())
    }

    /// `Ok(Err(holder))` when another engine still holds the key after `wait`.
    fn take(
        &mut self,
        token: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Result<OwnerLease, String>, StoreError> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let deadline = Instant::now() + wait;
        let mut logged = false;
        loop {
            // Free: take it. Ours already (handed over with this token): adopt it.
            let taken = self.with_conn(|c, key| {
                let set: Option<String> = redis::cmd("SET")
                    .arg(key)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query(c)?;
                if set.is_some() {
                    return Ok(None);
                }
                let held: i64 = Script::new(RENEW_SCRIPT)
                    .key(key)
                    .arg(token)
                    .arg(ttl_ms)
                    .invoke(c)?;
                if held == 1 {
                    tracing::info!(key, "redis lease: adopted (handed over with this token)");
                    return Ok(None);
                }
                let holder: Option<String> = redis::cmd("GET").arg(key).query(c)?;
                Ok(Some(holder.unwrap_or_default()))
            })?;
            let Some(holder) = taken else { break };
            if Instant::now() >= deadline {
                return Ok(Err(holder));
            }
            if !logged {
                tracing::info!(key = %self.key, holder, "redis lease: held by another engine; waiting for it to expire");
                logged = true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (client, key, token, stop, lost) = (
                self.client.clone(),
                self.key.clone(),
                token.to_owned(),
                stop.clone(),
                lost.clone(),
            );
            std::thread::Builder::new()
                .name("trine-redis-lease".into())
                .spawn(move || renew(client, &key, &token, ttl_ms, &stop, &lost))
                .map_err(StoreError::Io)?
        };
        Ok(Ok(OwnerLease {
            key: self.key.clone(),
            token: token.to_owned(),
            client: self.client.clone(),
            stop,
            thread: Some(thread),
            lost,
            release_on_drop: true,
        }))
    }
}

/// The renewal loop: every `ttl / 5`, extend the lease if it still holds our token.
fn renew(
    client: redis::Client,
    key: &str,
    token: &str,
    ttl_ms: u64,
    stop: &(Mutex<bool>, Condvar),
    lost_flag: &std::sync::atomic::AtomicBool,
) {
    let script = Script::new(RENEW_SCRIPT);
    let every = Duration::from_millis((ttl_ms / 5).max(1));
    let mut conn: Option<redis::Connection> = None;
    let mut lost = false;
    let mut renewed = Instant::now();
    loop {
        if renewed.elapsed() >= Duration::from_millis(ttl_ms)
            && !lost_flag.load(std::sync::atomic::Ordering::Acquire)
        {
            tracing::error!(
                key,
                "redis lease: not renewed for a whole TTL; it may belong to another engine now"
            );
            lost_flag.store(true, std::sync::atomic::Ordering::Release);
        }
        {
            let (lock, cv) = stop;
            let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            let (guard, _) = cv
                .wait_timeout_while(guard, every, |stopped| !*stopped)
                .unwrap_or_else(|e| e.into_inner());
            if *guard {
                return;
            }
        }
        if conn.is_none() {
            conn = client
                .get_connection_with_timeout(Duration::from_secs(2))
                .ok();
        }
        let Some(c) = conn.as_mut() else {
            tracing::warn!(
                key,
                "redis lease: cannot reach the server to renew the lease"
            );
            continue;
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
        match script.key(key).arg(token).arg(ttl_ms).invoke::<i64>(c) {
            Ok(1) => {
                renewed = Instant::now();
                if lost {
                    tracing::info!(key, "redis lease: held again");
                    lost = false;
                }
            }
            Ok(_) => {
                lost_flag.store(true, std::sync::atomic::Ordering::Release);
                if !lost {
                    tracing::error!(key, "redis lease: lost to another engine; this engine's writes are refused from now on (restart it)");
                    lost = true;
                }
            }
            Err(e) => {
                tracing::warn!(key, error = %e, "redis lease: renewal failed");
                conn = None;
            }
        }
    }
}

impl Drop for OwnerLease {
    fn drop(&mut self) {
        {
            let (lock, cv) = &*self.stop;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if !self.release_on_drop {
            return;
        }
        if let Ok(mut c) = self
            .client
            .get_connection_with_timeout(Duration::from_secs(2))
        {
            let _: RedisResult<i64> = Script::new(RELEASE_SCRIPT)
                .key(self.key.as_str())
                .arg(self.token.as_str())
                .invoke(&mut c);
        }
    }
}

/// Runs a network round trip. Called from a task of a multi-threaded Tokio runtime (engine
/// reads happen on callers' tasks), it tells the runtime first, so other tasks move to other
/// threads instead of waiting behind the socket; elsewhere (committer threads) it just runs.
fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl Store for RedisStore {
    fn commit(&self, batch: Batch, sync: bool) -> Result<(), StoreError> {
        off_runtime(|| self.commit_now(batch, sync))
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        off_runtime(|| self.get_now(space, key))
    }

    fn get_async(&self, space: Space, key: Vec<u8>) -> crate::StoreFuture<Option<Vec<u8>>> {
        let hash = self.space(space).values.clone();
        let cell = self.reads.clone();
        let client = self.pool.client.clone();
        let (connect, io) = (self.pool.connect_timeout, self.pool.io_timeout);
        Box::pin(async move {
            let manager = cell
                .get_or_try_init(|| {
                    let config = redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(connect))
                        .set_response_timeout(Some(io))
                        .set_number_of_retries(2);
                    redis::aio::ConnectionManager::new_with_config(client, config)
                })
                .await
                .map_err(|e| error("get", &e))?;
            let mut conn = manager.clone();
            redis::cmd("HGET")
                .arg(&hash)
                .arg(key)
                .query_async(&mut conn)
                .await
                .map_err(|e| error("get", &e))
        })
    }

    fn get_many(&self, space: Space, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let hash = &self.space(space).values;
        off_runtime(|| {
            self.read("get_many", |c| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(hash);
                for k in keys {
                    cmd.arg(k.as_slice());
                }
                cmd.query(c)
            })
        })
    }

    fn get_many_spaces(
        &self,
        reads: &[(Space, Vec<Vec<u8>>)],
    ) -> Result<Vec<Vec<Option<Vec<u8>>>>, StoreError> {
        let wanted: Vec<&(Space, Vec<Vec<u8>>)> =
            reads.iter().filter(|(_, keys)| !keys.is_empty()).collect();
        if wanted.is_empty() {
            return Ok(reads.iter().map(|_| Vec::new()).collect());
        }
        let answers: Vec<Vec<Option<Vec<u8>>>> = off_runtime(|| {
            self.read("get_many", |c| {
                let mut pipe = redis::pipe();
                for (space, keys) in &wanted {
                    let cmd = pipe.cmd("HMGET").arg(&self.space(*space).values);
                    for k in keys {
                        cmd.arg(k.as_slice());
                    }
                }
                pipe.query(c)
            })
        })?;
        let mut answers = answers.into_iter();
        Ok(reads
            .iter()
            .map(|(_, keys)| {
                if keys.is_empty() {
                    Vec::new()
                } else {
                    answers.next().unwrap_or_default()
                }
            })
            .collect())
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        off_runtime(|| self.scan_now(space, prefix, start_after, limit))
    }

    fn sync(&self) -> Result<(), StoreError> {
        // Durability is the server's (see the module docs): a durable server has fsync'd every
        // acknowledged batch already; for any other, the client cannot force it.
        Ok(())
    }

    fn info(&self) -> StoreInfo {
        StoreInfo {
            adapter: "redis",
            durable: self.durable,
            path: None,
        }
    }
}

impl RedisStore {
    fn commit_now(&self, batch: Batch, sync: bool) -> Result<(), StoreError> {
        if batch.is_empty() {
            return if sync { self.sync() } else { Ok(()) };
        }
        let mut lease = self.pool.lease(false)?;
        let first = match self.apply(&mut lease, &batch) {
            Ok(()) => return Ok(()),
            Err(e) if is_dropped(&e) => e,
            Err(e) => return Err(commit_error(&e)),
        };
        let (token_key, token) = {
            let conn = lease.conn();
            (conn.token_key.clone(), conn.commits)
        };
        drop(lease);
        self.pool.close_idle();
        let unknown = |e: StoreError| {
            StoreError::Engine(format!(
                "redis commit: connection dropped ({first}), and checking whether the batch \
                 applied failed ({e}); outcome unknown (the batch applied entirely or not at all)"
            ))
        };
        let mut lease = self.pool.lease(true).map_err(unknown)?;
        if self
            .applied(&mut lease, &token_key, token)
            .map_err(|e| unknown(error("check", &e)))?
        {
            self.recoveries
                .commits_found_applied
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                error = %first,
                "redis store: connection dropped after a batch applied; commit succeeded"
            );
            return Ok(());
        }
        self.recoveries
            .commits_retried
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            error = %first,
            "redis store: connection dropped before a batch applied; sending it again"
        );
        self.apply(&mut lease, &batch).map_err(|e| commit_error(&e))
    }

    fn get_now(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let hash = &self.space(space).values;
        self.read("get", |c| redis::cmd("HGET").arg(hash).arg(key).query(c))
    }

    fn scan_now(
        &self,
        space: Space,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let Some((min, max)) = lex_range(prefix, start_after) else {
            return Ok(Vec::new());
        };
        let count = i64::try_from(limit).unwrap_or(-1);
        let names = self.space(space);
        let flat: Vec<Option<Vec<u8>>> = self.read("scan", |c| {
            self.scan_script
                .key(names.keys.as_str())
                .key(names.values.as_str())
                .arg(min.as_slice())
                .arg(max.as_slice())
                .arg(count)
                .invoke(c)
        })?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        let mut items = flat.into_iter();
        while let (Some(key), Some(value)) = (items.next(), items.next()) {
            let key =
                key.ok_or_else(|| StoreError::Corrupt("redis scan returned a nil key".into()))?;
            let value = value.ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "{}: key {key:?} is listed but has no value in {}",
                    names.keys, names.values
                ))
            })?;
            out.push((key, value));
        }
        Ok(out)
    }
}

/// The `ZRANGEBYLEX` bounds selecting keys that start with `prefix`, strictly after
/// `start_after`; `None` when no key can match.
fn lex_range(prefix: &[u8], start_after: Option<&[u8]>) -> Option<(Vec<u8>, Vec<u8>)> {
    let end = prefix_end(prefix);
    let min = match start_after {
        Some(after) if after >= prefix => {
            if end.as_deref().is_some_and(|end| after >= end) {
                return None;
            }
            [b"(", after].concat()
        }
        _ if prefix.is_empty() => b"-".to_vec(),
        _ => [b"[", prefix].concat(),
    };
    let max = match end {
        Some(end) => [b"(", end.as_slice()].concat(),
        None => b"+".to_vec(),
    };
    Some((min, max))
}

/// The server's `appendonly` and `appendfsync` settings.
fn persistence(lease: &mut Lease<'_>) -> RedisResult<(String, String)> {
    let mut setting = |name: &str| -> RedisResult<String> {
        let mut reply: HashMap<String, String> =
            lease.run(|c| redis::cmd("CONFIG").arg("GET").arg(name).query(c))?;
        Ok(reply.remove(name).unwrap_or_default())
    };
    Ok((setting("appendonly")?, setting("appendfsync")?))
}

/// Whether a server with these settings has fsync'd a write before acknowledging it.
fn is_durable(appendonly: &str, appendfsync: &str) -> bool {
    appendonly.eq_ignore_ascii_case("yes") && appendfsync.eq_ignore_ascii_case("always")
}

/// The connection cannot be trusted any more (closed, or a reply may still be on its way).
fn is_broken(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

/// The server's end of the connection is gone: nothing more sent on it can run.
fn is_dropped(e: &RedisError) -> bool {
    e.is_connection_dropped() && !e.is_timeout()
}

fn error(what: &str, e: &RedisError) -> StoreError {
    StoreError::Engine(format!("redis {what}: {}", describe(e)))
}

/// The error's text, saying "timed out" for a timeout (which the OS may report as
/// "Resource temporarily unavailable").
fn describe(e: &RedisError) -> String {
    if e.is_timeout() {
        format!("timed out ({e})")
    } else {
        e.to_string()
    }
}

fn commit_error(e: &RedisError) -> StoreError {
    if is_broken(e) {
        StoreError::Engine(format!(
            "redis commit: {}; outcome unknown (the batch applied entirely or not at all)",
            describe(e)
        ))
    } else {
        // A reply came back: the script refused or failed before its first write.
        StoreError::Engine(format!("redis commit: {e}; batch not applied"))
    }
}

/// 64 random bits (std's per-process random hash keys, mixed with the process id and time).
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

// ---------------------------------------------------------------------------------------------
// The connection pool.

/// One pooled connection.
struct Conn {
    redis: redis::Connection,
    /// This connection's commit-token key (unique to it: the store's random id and a counter).
    token_key: String,
    /// Batches sent over this connection so far; the last one's number is the token.
    commits: u64,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Conn>,
    /// Connections open, idle or leased (or being connected).
    open: usize,
}

struct Pool {
    client: redis::Client,
    connect_timeout: Duration,
    io_timeout: Duration,
    max: usize,
    /// `<key_prefix>:commit-token:<store id>-`; a connection's number follows.
    token_base: String,
    next_id: AtomicU64,
    state: Mutex<PoolState>,
    /// Signalled when a connection is returned or closed.
    freed: Condvar,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection, or (with `fresh`, or when none is idle) a new one, waiting at most
    /// the I/O timeout while all are busy.
    fn lease(&self, fresh: bool) -> Result<Lease<'_>, StoreError> {
        let deadline = Instant::now() + self.io_timeout;
        let mut state = self.lock();
        // Closed outside the lock: the idle connection whose slot a fresh one takes.
        let mut replaced = None;
        loop {
            if !fresh {
                if let Some(conn) = state.idle.pop() {
                    return Ok(Lease {
                        pool: self,
                        conn: Some(conn),
                        broken: false,
                    });
                }
            }
            if state.open < self.max {
                state.open += 1;
                break;
            }
            if fresh && !state.idle.is_empty() {
                // Take the slot of the oldest idle connection.
                replaced = Some(state.idle.remove(0));
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::Engine(format!(
                    "redis store: all {} connections stayed busy for {:?}",
                    self.max, self.io_timeout
                )));
            }
            state = self
                .freed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(state);
        drop(replaced);
        // A slot is reserved; connect without holding the lock.
        match self.connect() {
            Ok(conn) => Ok(Lease {
                pool: self,
                conn: Some(conn),
                broken: false,
            }),
            Err(e) => {
                self.lock().open -= 1;
                self.freed.notify_one();
                Err(e)
            }
        }
    }

    fn connect(&self) -> Result<Conn, StoreError> {
        let redis = self
            .client
            .get_connection_with_timeout(self.connect_timeout)
            .map_err(|e| error("connect", &e))?;
        redis
            .set_read_timeout(Some(self.io_timeout))
            .and_then(|()| redis.set_write_timeout(Some(self.io_timeout)))
            .map_err(|e| error("connect", &e))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(Conn {
            redis,
            token_key: format!("{}{id}", self.token_base),
            commits: 0,
        })
    }

    /// Closes every idle connection (after one was found dropped, the others likely are too).
    fn close_idle(&self) {
        let idle = {
            let mut state = self.lock();
            let idle = std::mem::take(&mut state.idle);
            state.open -= idle.len();
            idle
        };
        if !idle.is_empty() {
            drop(idle);
            self.freed.notify_all();
        }
    }
}

/// A connection taken from the pool: returned on drop, or closed if it broke.
struct Lease<'a> {
    pool: &'a Pool,
    /// Always `Some` until dropped.
    conn: Option<Conn>,
    broken: bool,
}

impl Lease<'_> {
    fn conn(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }

    /// Runs `f` on the connection, marking it broken if the failure leaves it unusable.
    fn run<T>(
        &mut self,
        f: impl FnOnce(&mut redis::Connection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        let result = f(&mut self.conn().redis);
        if let Err(e) = &result {
            if is_broken(e) {
                self.broken = true;
            }
        }
        result
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.broken {
            drop(conn);
            self.pool.lock().open -= 1;
        } else {
            self.pool.lock().idle.push(conn);
        }
        self.pool.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::AtomicU8;
    use std::sync::Arc;

    use crate::testing::{redis_admin as admin, redis_url as url};

    /// A second admin connection, once [`admin`] found the server.
    fn admin_or_panic() -> redis::Connection {
        admin().expect("the server answered a moment ago")
    }

    /// Key prefixes handed out to stores; every key under them is deleted on drop (also when a
    /// check panics).
    struct Prefixes {
        admin: Mutex<redis::Connection>,
        used: Mutex<Vec<String>>,
    }

    impl Prefixes {
        fn new(admin: redis::Connection) -> Self {
            Self {
                admin: Mutex::new(admin),
                used: Mutex::new(Vec::new()),
            }
        }

        /// `trine-test-<pid>-<nanos>-<n>`, unique per test run and store.
        fn next(&self) -> String {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let prefix = format!(
                "trine-test-{}-{nanos}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            self.used.lock().unwrap().push(prefix.clone());
            prefix
        }

        /// Names of the Redis keys under `prefix`.
        fn keys_under(&self, prefix: &str) -> RedisResult<Vec<String>> {
            let mut admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
            let mut cursor = 0u64;
            let mut names = Vec::new();
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}:*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query(&mut *admin)?;
                names.extend(batch);
                if next == 0 {
                    names.sort();
                    names.dedup();
                    return Ok(names);
                }
                cursor = next;
            }
        }
    }

    impl Drop for Prefixes {
        // Runs while a failing test unwinds too, so it must not panic.
        fn drop(&mut self) {
            let used = std::mem::take(&mut *self.used.lock().unwrap_or_else(|e| e.into_inner()));
            for prefix in used {
                let Ok(names) = self.keys_under(&prefix) else {
                    eprintln!("could not list the test keys under {prefix}: left behind");
                    continue;
                };
                let mut admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
                for chunk in names.chunks(500) {
                    let _: RedisResult<()> = redis::cmd("UNLINK").arg(chunk).query(&mut *admin);
                }
            }
        }
    }

    fn open(url: &str, key_prefix: String) -> RedisStore {
        RedisStore::open(
            url,
            RedisStoreOptions {
                key_prefix,
                ..RedisStoreOptions::default()
            },
        )
        .expect("open the Redis store")
    }

    #[test]
    fn conformance() {
        let Some(admin) = admin() else { return };
        let prefixes = Prefixes::new(admin);
        let url = url();
        conformance::run_all(&|| Box::new(open(&url, prefixes.next())));
    }

    #[test]
    fn an_owner_lease_is_exclusive_renewed_and_released() {
        let Some(mut admin) = admin() else { return };
        let prefixes = Prefixes::new(admin_or_panic());
        let key = format!("{}:owner", prefixes.next());
        let ttl = Duration::from_millis(500);
        let a = OwnerLease::acquire(&url(), &key, "a", ttl, Duration::ZERO).unwrap();
        // Renewed past its TTL while held.
        std::thread::sleep(Duration::from_millis(1200));
        let e = OwnerLease::acquire(&url(), &key, "b", ttl, Duration::from_millis(300))
            .err()
            .expect("the lease is still held");
        assert!(e.to_string().contains("held by another engine (a)"), "{e}");
        let fence = a.fence();
        assert_eq!(
            (fence.key.as_str(), fence.token.as_str()),
            (key.as_str(), "a")
        );
        drop(a);
        let holder: Option<String> = redis::cmd("GET").arg(&key).query(&mut admin).unwrap();
        assert_eq!(holder, None, "released on drop");
        let b = OwnerLease::acquire(&url(), &key, "b", ttl, Duration::ZERO).unwrap();
        // An expired holder's lease is taken after the wait.
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("stale")
            .arg("PX")
            .arg(300)
            .query(&mut admin)
            .unwrap();
        drop(b);
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("stale")
            .arg("PX")
            .arg(300)
            .query(&mut admin)
            .unwrap();
        let c = OwnerLease::acquire(&url(), &key, "c", ttl, Duration::from_secs(3)).unwrap();
        drop(c);
    }

    #[test]
    fn a_lease_is_taken_only_when_free_handed_over_and_adopted() {
        let Some(mut admin) = admin() else { return };
        let prefixes = Prefixes::new(admin_or_panic());
        let key = format!("{}:owner", prefixes.next());
        let ttl = Duration::from_millis(600);
        let a = OwnerLease::try_acquire(&url(), &key, "a", ttl)
            .unwrap()
            .expect("free");
        assert!(OwnerLease::try_acquire(&url(), &key, "b", ttl)
            .unwrap()
            .is_none());
        assert_eq!(
            OwnerLease::holder(&url(), &key).unwrap().as_deref(),
            Some("a")
        );
        assert!(!a.is_lost());
        // Handed over: not released, and adopted by a process with the same token.
        a.hand_over();
        let holder: Option<String> = redis::cmd("GET").arg(&key).query(&mut admin).unwrap();
        assert_eq!(holder.as_deref(), Some("a"), "a hand-over keeps the key");
        let a2 = OwnerLease::try_acquire(&url(), &key, "a", ttl)
            .unwrap()
            .expect("adopted with the same token");
        // Taken by another engine behind its back: reported lost.
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("intruder")
            .query(&mut admin)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        while !a2.is_lost() {
            assert!(
                Instant::now() < deadline,
                "the loss is noticed within a renewal or two"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(a2);
        let holder: Option<String> = redis::cmd("GET").arg(&key).query(&mut admin).unwrap();
        assert_eq!(
            holder.as_deref(),
            Some("intruder"),
            "never releases another's lease"
        );
    }

    #[test]
    fn async_reads_answer_like_sync_reads() {
        let Some(admin) = admin() else { return };
        let prefixes = Prefixes::new(admin);
        let store = open(&url(), prefixes.next());
        let mut b = Batch::new();
        b.put(Space::StateData, b"k1".to_vec(), b"v1".to_vec());
        store.commit(b, true).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert_eq!(
                store
                    .get_async(Space::StateData, b"k1".to_vec())
                    .await
                    .unwrap(),
                Some(b"v1".to_vec())
            );
            assert_eq!(
                store
                    .get_async(Space::StateData, b"nope".to_vec())
                    .await
                    .unwrap(),
                None
            );
            // Many at once share the one async connection.
            let reads: Vec<_> = (0..200)
                .map(|_| store.get_async(Space::StateData, b"k1".to_vec()))
                .collect();
            for r in reads {
                assert_eq!(r.await.unwrap(), Some(b"v1".to_vec()));
            }
        });
        assert_eq!(
            store.get(Space::StateData, b"k1").unwrap(),
            Some(b"v1".to_vec())
        );
    }

    #[test]
    fn a_fenced_store_commits_only_while_it_holds_the_fence() {
        let Some(mut admin) = admin() else { return };
        let prefixes = Prefixes::new(admin_or_panic());
        let prefix = prefixes.next();
        let fence_key = format!("{prefix}:owner");
        let store = RedisStore::open(
            &url(),
            RedisStoreOptions {
                key_prefix: prefix.clone(),
                fence: Some(Fence {
                    key: fence_key.clone(),
                    token: "engine-a".into(),
                }),
                ..RedisStoreOptions::default()
            },
        )
        .unwrap();
        let put = |v: &[u8]| {
            let mut b = Batch::new();
            b.put(Space::StateData, b"k".to_vec(), v.to_vec());
            b
        };
        // Nobody holds the fence yet: refused.
        let e = store.commit(put(b"1"), true).unwrap_err();
        assert!(e.to_string().contains("no longer holds"), "{e}");
        let _: () = redis::cmd("SET")
            .arg(&fence_key)
            .arg("engine-a")
            .query(&mut admin)
            .unwrap();
        store.commit(put(b"2"), true).unwrap();
        assert_eq!(
            store.get(Space::StateData, b"k").unwrap(),
            Some(b"2".to_vec())
        );
        // Another engine took the lease: this one's batches are refused and change nothing.
        let _: () = redis::cmd("SET")
            .arg(&fence_key)
            .arg("engine-b")
            .query(&mut admin)
            .unwrap();
        let e = store.commit(put(b"3"), true).unwrap_err();
        assert!(e.to_string().contains("no longer holds"), "{e}");
        assert_eq!(
            store.get(Space::StateData, b"k").unwrap(),
            Some(b"2".to_vec())
        );
    }

    #[test]
    fn prefixes_isolate_data_sets() {
        let Some(admin) = admin() else { return };
        let prefixes = Prefixes::new(admin);
        let (pa, pb) = (prefixes.next(), prefixes.next());
        let (a, b) = (open(&url(), pa.clone()), open(&url(), pb.clone()));
        let mut batch = Batch::new();
        batch.put(Space::StateData, b"k".to_vec(), b"from a".to_vec());
        batch.put(Space::Meta, b"only-a".to_vec(), b"1".to_vec());
        a.commit(batch, true).unwrap();
        let mut batch = Batch::new();
        batch.put(Space::StateData, b"k".to_vec(), b"from b".to_vec());
        b.commit(batch, true).unwrap();

        assert_eq!(
            a.get(Space::StateData, b"k").unwrap(),
            Some(b"from a".to_vec())
        );
        assert_eq!(
            b.get(Space::StateData, b"k").unwrap(),
            Some(b"from b".to_vec())
        );
        assert_eq!(b.get(Space::Meta, b"only-a").unwrap(), None);
        assert!(b.scan(Space::Meta, b"", None, 10).unwrap().is_empty());
        let mut batch = Batch::new();
        batch.delete(Space::StateData, b"k".to_vec());
        b.commit(batch, true).unwrap();
        assert_eq!(
            a.get(Space::StateData, b"k").unwrap(),
            Some(b"from a".to_vec())
        );

        // Every Redis key a store made is under its prefix, in the documented layout.
        let names = prefixes.keys_under(&pa).unwrap();
        let mut data: Vec<&str> = names
            .iter()
            .map(|n| n.as_str())
            .filter(|n| !n.starts_with(&format!("{pa}:commit-token:")))
            .collect();
        data.sort();
        let want = [
            format!("{pa}:meta:keys"),
            format!("{pa}:meta:values"),
            format!("{pa}:state_data:keys"),
            format!("{pa}:state_data:values"),
        ];
        assert_eq!(data, want.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        assert_eq!(names.len(), data.len() + 1, "one commit token: {names:?}");
        // b deleted its only key: nothing but its token is left.
        let names = prefixes.keys_under(&pb).unwrap();
        assert!(
            names
                .iter()
                .all(|n| n.starts_with(&format!("{pb}:commit-token:"))),
            "{names:?}"
        );
    }

    /// The store's next leased connection's server-side id (the pool hands back the most
    /// recently returned idle connection first).
    fn next_client_id(store: &RedisStore) -> i64 {
        let mut lease = store.pool.lease(false).unwrap();
        lease
            .run(|c| redis::cmd("CLIENT").arg("ID").query(c))
            .unwrap()
    }

    fn kill(admin: &mut redis::Connection, id: i64) {
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query(admin)
            .unwrap();
        assert_eq!(killed, 1);
    }

    #[test]
    fn survives_killed_connections() {
        let Some(mut admin) = admin() else { return };
        let prefixes = Prefixes::new(admin_or_panic());
        let store = open(&url(), prefixes.next());
        let mut batch = Batch::new();
        batch.put(Space::StateData, b"k".to_vec(), b"v".to_vec());
        store.commit(batch, true).unwrap();

        // A read on a killed connection is retried on a new one.
        kill(&mut admin, next_client_id(&store));
        assert_eq!(
            store.get(Space::StateData, b"k").unwrap(),
            Some(b"v".to_vec())
        );
        kill(&mut admin, next_client_id(&store));
        assert_eq!(
            store.scan(Space::StateData, b"", None, 10).unwrap().len(),
            1
        );
        assert_eq!(store.recoveries.reads_retried.load(Ordering::Relaxed), 2);

        // A commit on a killed connection never reached the server: it is sent again.
        kill(&mut admin, next_client_id(&store));
        let mut batch = Batch::new();
        batch.put(Space::StateData, b"k2".to_vec(), b"v2".to_vec());
        batch.delete(Space::StateData, b"k".to_vec());
        store.commit(batch, true).unwrap();
        assert_eq!(store.recoveries.commits_retried.load(Ordering::Relaxed), 1);
        assert_eq!(
            store
                .recoveries
                .commits_found_applied
                .load(Ordering::Relaxed),
            0
        );
        assert_eq!(
            store.scan(Space::StateData, b"", None, 10).unwrap(),
            vec![(b"k2".to_vec(), b"v2".to_vec())]
        );
    }

    #[test]
    fn commit_token_tells_whether_a_batch_applied() {
        let Some(admin) = admin() else { return };
        let prefixes = Prefixes::new(admin);
        let store = open(&url(), prefixes.next());
        let mut lease = store.pool.lease(false).unwrap();
        let mut batch = Batch::new();
        batch.put(Space::Meta, b"x".to_vec(), b"1".to_vec());
        store.apply(&mut lease, &batch).unwrap();
        store.apply(&mut lease, &batch).unwrap();
        let (key, token) = (lease.conn().token_key.clone(), lease.conn().commits);
        assert_eq!(token, 2);
        let mut other = store.pool.lease(true).unwrap();
        assert!(store.applied(&mut other, &key, token).unwrap());
        assert!(!store.applied(&mut other, &key, token + 1).unwrap());
        assert!(!store
            .applied(&mut other, &format!("{key}-none"), 1)
            .unwrap());
    }

    // A TCP proxy in front of the test server, to make a connection hang or drop on cue.

    const FORWARD: u8 = 0;
    /// Requests are swallowed: callers time out.
    const SWALLOW: u8 = 1;
    /// The next reply is dropped and its connection closed (once).
    const CUT_NEXT_REPLY: u8 = 2;

    struct Proxy {
        url: String,
        mode: Arc<AtomicU8>,
    }

    /// `host:port` of a `redis://` URL, and the URL with that part replaced by `with`.
    fn split_authority(url: &str, with: &str) -> Option<(String, String)> {
        let rest = url.strip_prefix("redis://")?;
        let end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let (user, host) = match authority.rfind('@') {
            Some(at) => (&authority[..=at], &authority[at + 1..]),
            None => ("", authority),
        };
        let host = if host.contains(':') {
            host.to_string()
        } else {
            format!("{host}:6379")
        };
        Some((host, format!("redis://{user}{with}{path}")))
    }

    fn start_proxy() -> Option<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (upstream, url) = split_authority(&url(), &listener.local_addr().unwrap().to_string())?;
        let mode = Arc::new(AtomicU8::new(FORWARD));
        let modes = mode.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let (Ok(client), Ok(server)) = (client, TcpStream::connect(&upstream)) else {
                    continue;
                };
                let (mut c_in, mut c_out) = (client.try_clone().unwrap(), client);
                let (mut s_in, mut s_out) = (server.try_clone().unwrap(), server);
                let mode = modes.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0; 64 << 10];
                    while let Ok(n @ 1..) = c_in.read(&mut buf) {
                        if mode.load(Ordering::SeqCst) != SWALLOW
                            && s_out.write_all(&buf[..n]).is_err()
                        {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(Shutdown::Both);
                });
                let mode = modes.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0; 64 << 10];
                    while let Ok(n @ 1..) = s_in.read(&mut buf) {
                        if mode
                            .compare_exchange(
                                CUT_NEXT_REPLY,
                                FORWARD,
                                Ordering::SeqCst,
                                Ordering::SeqCst,
                            )
                            .is_ok()
                        {
                            break;
                        }
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_out.shutdown(Shutdown::Both);
                    let _ = s_in.shutdown(Shutdown::Both);
                });
            }
        });
        Some(Proxy { url, mode })
    }

    #[test]
    fn reply_lost_after_commit_is_not_applied_twice() {
        let Some(admin) = admin() else { return };
        let Some(proxy) = start_proxy() else {
            eprintln!("skipped: the proxy test needs a redis:// URL");
            return;
        };
        let prefixes = Prefixes::new(admin);
        let store = open(&proxy.url, prefixes.next());
        let mut batch = Batch::new();
        batch.put(Space::QueueJobs, b"job".to_vec(), b"1".to_vec());
        proxy.mode.store(CUT_NEXT_REPLY, Ordering::SeqCst);
        store.commit(batch, true).unwrap();
        assert_eq!(
            store
                .recoveries
                .commits_found_applied
                .load(Ordering::Relaxed),
            1
        );
        assert_eq!(store.recoveries.commits_retried.load(Ordering::Relaxed), 0);
        assert_eq!(
            store.get(Space::QueueJobs, b"job").unwrap(),
            Some(b"1".to_vec())
        );
    }

    #[test]
    fn hung_server_gives_errors_not_hangs() {
        let Some(admin) = admin() else { return };
        let Some(proxy) = start_proxy() else {
            eprintln!("skipped: the proxy test needs a redis:// URL");
            return;
        };
        let prefixes = Prefixes::new(admin);
        let timeout = Duration::from_millis(300);
        let store = RedisStore::open(
            &proxy.url,
            RedisStoreOptions {
                key_prefix: prefixes.next(),
                connect_timeout: timeout,
                io_timeout: timeout,
                max_connections: 2,
                fence: None,
            },
        )
        .unwrap();
        let mut batch = Batch::new();
        batch.put(Space::Meta, b"k".to_vec(), b"v".to_vec());
        store.commit(batch.clone(), true).unwrap();

        proxy.mode.store(SWALLOW, Ordering::SeqCst);
        let started = Instant::now();
        // The idle connection carries the commit, which times out with its outcome unknown; the
        // connection is closed, and the next calls' new connections time out in the handshake
        // (nothing sent). Each call waits one timeout: a timeout is not retried.
        let e = store.commit(batch.clone(), true).unwrap_err().to_string();
        assert!(
            e.contains("timed out") && e.contains("outcome unknown"),
            "{e}"
        );
        let e = store.get(Space::Meta, b"k").unwrap_err().to_string();
        assert!(e.contains("redis connect: timed out"), "{e}");
        let e = store
            .scan(Space::Meta, b"", None, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("redis connect: timed out"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );

        proxy.mode.store(FORWARD, Ordering::SeqCst);
        assert_eq!(store.get(Space::Meta, b"k").unwrap(), Some(b"v".to_vec()));
        store.commit(batch, true).unwrap();
    }

    #[test]
    fn no_server_is_an_error() {
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let e = RedisStore::open("redis://127.0.0.1:1/", RedisStoreOptions::default())
            .err()
            .expect("no server");
        assert!(e.to_string().contains("redis connect"), "{e}");
        assert!(RedisStore::open("http://x", RedisStoreOptions::default()).is_err());
    }

    #[test]
    fn reports_durability_from_server_settings() {
        assert!(is_durable("yes", "always"));
        assert!(!is_durable("yes", "everysec"));
        assert!(!is_durable("no", "always"));
        let Some(mut admin) = admin() else { return };
        let get = |admin: &mut redis::Connection, name: &str| -> RedisResult<String> {
            let mut m: HashMap<String, String> =
                redis::cmd("CONFIG").arg("GET").arg(name).query(admin)?;
            Ok(m.remove(name).unwrap_or_default())
        };
        // A server refusing CONFIG is reported as not durable.
        let want = match (
            get(&mut admin, "appendonly"),
            get(&mut admin, "appendfsync"),
        ) {
            (Ok(appendonly), Ok(appendfsync)) => is_durable(&appendonly, &appendfsync),
            _ => false,
        };
        let prefixes = Prefixes::new(admin);
        let info = open(&url(), prefixes.next()).info();
        assert_eq!(info.adapter, "redis");
        assert_eq!(info.durable, want);
        assert_eq!(info.path, None);
    }

    #[test]
    fn lex_ranges() {
        let range = |p: &[u8], a: Option<&[u8]>| lex_range(p, a);
        let pair = |a: &[u8], b: &[u8]| Some((a.to_vec(), b.to_vec()));
        assert_eq!(range(b"", None), pair(b"-", b"+"));
        assert_eq!(range(b"", Some(b"")), pair(b"(", b"+"));
        assert_eq!(range(b"ab", None), pair(b"[ab", b"(ac"));
        assert_eq!(range(b"ab", Some(b"a")), pair(b"[ab", b"(ac"));
        assert_eq!(range(b"ab", Some(b"ab1")), pair(b"(ab1", b"(ac"));
        assert_eq!(range(b"ab", Some(b"ac")), None);
        assert_eq!(range(&[1, 0xFF], None), pair(&[b'[', 1, 0xFF], &[b'(', 2]));
        assert_eq!(range(&[0xFF, 0xFF], None), pair(&[b'[', 0xFF, 0xFF], b"+"));
        assert_eq!(
            range(&[0xFF], Some(&[0xFF, 0xFE])),
            pair(&[b'(', 0xFF, 0xFE], b"+")
        );
    }

    #[test]
    fn spaces_map_to_their_names() {
        let Some(admin) = admin() else { return };
        let prefixes = Prefixes::new(admin);
        let p = prefixes.next();
        let store = open(&url(), p.clone());
        for space in Space::ALL {
            assert_eq!(
                store.space(space).keys,
                format!("{p}:{}:keys", space.name())
            );
            assert_eq!(
                store.space(space).values,
                format!("{p}:{}:values", space.name())
            );
        }
    }
}
