//! Trine's storage seam.
//!
//! Layout:
//! - [`Store`]: the one trait every adapter implements — named key spaces of ordered byte keys,
//!   atomic batches, point reads and prefix scans. Everything above it (state records, insertion
//!   order, trigger outbox, dead letters) is encoded by the engine into these spaces.
//! - [`memory`]: [`MemoryStore`], `BTreeMap`s behind a lock; nothing survives a restart.
//! - [`file`]: [`FileStore`], the embedded durable default on redb (see `docs/storage.md` for the
//!   engine choice): a batch committed with `sync = true` is on stable storage when `commit`
//!   returns.
//! - [`wal`]: the file store's write-ahead log (batches since its last checkpoint).
//! - [`redis`]: [`RedisStore`], the spaces kept on a Redis server under a key prefix (a sorted
//!   set of keys and a hash of values per space); durable only as far as the server's
//!   persistence settings make it.
//! - [`conformance`]: the suite every adapter must pass (run by each adapter's tests; the Redis
//!   adapter's need a server, see [`redis`]; `tests/crash.rs` adds a kill -9 test of
//!   [`FileStore`]).
//!
//! Invariants every adapter keeps:
//! - a batch is atomic: readers see all of it or none of it, also after a crash;
//! - reads never wait for a writer's fsync (they see the last committed state);
//! - `commit(.., true)` returns only once the batch (and every batch before it) is durable, for
//!   adapters whose [`StoreInfo::durable`] is true.
//!
//! Calls are blocking: the engine makes them from a dedicated committer thread (writes) or for
//! point reads served from the adapter's cache.

pub mod conformance;
pub mod file;
pub mod memory;
pub mod redis;
pub mod testing;
pub mod wal;

pub use file::{FileStore, FileStoreOptions};
pub use memory::MemoryStore;
pub use redis::{Fence, LeaseKey, OwnerLease, RedisStore, RedisStoreOptions};

/// A named key space (a table / partition in the storage engine). The set is closed so adapters
/// can open every space up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// Engine-wide counters (last commit sequence, ...).
    Meta,
    /// State records: `(scope, key)` → version, insertion order and JSON value.
    StateData,
    /// Insertion order of keys within a scope: `(scope, order)` → key.
    StateOrder,
    /// Non-empty scopes: scope → key count and next insertion order.
    StateGroups,
    /// Change events waiting for delivery to state triggers: sequence → event.
    OutboxEvents,
    /// Deliveries still owed: `(sequence, trigger id)` → target description.
    OutboxTargets,
    /// Deliveries that exhausted their attempts: `(sequence, trigger id)` → record.
    DeadLetters,
    /// Stream items: `(stream, group, item)` → version, insertion order and JSON value.
    StreamData,
    /// Insertion order of items within a stream group.
    StreamOrder,
    /// Non-empty stream groups: `(stream, group)` → item count and next insertion order.
    StreamGroups,
    /// Queue jobs waiting, delayed or in flight: `(queue, sequence)` → job record.
    QueueJobs,
    /// Attempts made on a job so far (written without a forced fsync): `(queue, sequence)` →
    /// attempt count and last error.
    QueueAttempts,
    /// Dead-lettered jobs: `(queue, sequence)` → dead-letter record.
    QueueDead,
    /// Durable topic subscriptions: `(topic, function id)` → subscription settings.
    QueueTopics,
    /// Last fired tick of each cron schedule: schedule key → tick time.
    CronTicks,
}

impl Space {
    /// Every space, in a fixed order.
    pub const ALL: [Space; 15] = [
        Space::Meta,
        Space::StateData,
        Space::StateOrder,
        Space::StateGroups,
        Space::OutboxEvents,
        Space::OutboxTargets,
        Space::DeadLetters,
        Space::StreamData,
        Space::StreamOrder,
        Space::StreamGroups,
        Space::QueueJobs,
        Space::QueueAttempts,
        Space::QueueDead,
        Space::QueueTopics,
        Space::CronTicks,
    ];

    /// Stable on-disk name of the space.
    pub fn name(self) -> &'static str {
        match self {
            Space::Meta => "meta",
            Space::StateData => "state_data",
            Space::StateOrder => "state_order",
            Space::StateGroups => "state_groups",
            Space::OutboxEvents => "outbox_events",
            Space::OutboxTargets => "outbox_targets",
            Space::DeadLetters => "dead_letters",
            Space::StreamData => "stream_data",
            Space::StreamOrder => "stream_order",
            Space::StreamGroups => "stream_groups",
            Space::QueueJobs => "queue_jobs",
            Space::QueueAttempts => "queue_attempts",
            Space::QueueDead => "queue_dead",
            Space::QueueTopics => "queue_topics",
            Space::CronTicks => "cron_ticks",
        }
    }
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    Put {
        space: Space,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        space: Space,
        key: Vec<u8>,
    },
}

/// Writes applied together, atomically, in order (a later op on the same key wins).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub ops: Vec<BatchOp>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, space: Space, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Put {
            space,
            key: key.into(),
            value: value.into(),
        });
    }

    pub fn delete(&mut self, space: Space, key: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Delete {
            space,
            key: key.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// A key and its value, as returned by scans.
pub type Entry = (Vec<u8>, Vec<u8>);

/// What an adapter is, for logs and `engine::state::stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreInfo {
    /// Adapter name (`in_memory`, `file_based`, `redis`).
    pub adapter: &'static str,
    /// Whether `commit(.., true)` survives a crash.
    pub durable: bool,
    /// Where the data lives, if on disk.
    pub path: Option<std::path::PathBuf>,
}

/// Failures of a storage adapter. Messages carry the underlying cause; the engine logs it once
/// and answers clients with its own stable code.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("storage engine failed: {0}")]
    Engine(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the store is closed")]
    Closed,
}

/// Visits every entry of `space` whose key starts with `prefix`, in key order, reading
/// `page` entries at a time, until `f` answers `false` (stop) or the entries run out.
pub fn for_each(
    store: &dyn Store,
    space: Space,
    prefix: &[u8],
    page: usize,
    mut f: impl FnMut(Vec<u8>, Vec<u8>) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let page = page.max(1);
    let mut after: Option<Vec<u8>> = None;
    loop {
        let chunk = store.scan(space, prefix, after.as_deref(), page)?;
        let done = chunk.len() < page;
        for (k, v) in chunk {
            after = Some(k.clone());
            if !f(k, v)? {
                return Ok(());
            }
        }
        if done {
            return Ok(());
        }
    }
}

/// The storage seam: ordered byte keys in a fixed set of spaces.
/// A store read that can be awaited on the async runtime without blocking it.
pub type StoreFuture<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send + 'static>>;

pub trait Store: Send + Sync + 'static {
    /// Applies `batch` atomically. With `sync`, returns only after the batch and all earlier ones
    /// are on stable storage (durable adapters); without it, durability may lag (the batch is
    /// still atomic and visible to readers at once).
    fn commit(&self, batch: Batch, sync: bool) -> Result<(), StoreError>;

    /// The value stored under `key`, if any.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// The values of several keys of one space, in order. Adapters behind a network round trip
    /// read them at once; the default reads them one by one.
    fn get_many(&self, space: Space, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        keys.iter().map(|k| self.get(space, k)).collect()
    }

    /// [`get_many`](Store::get_many) over several spaces at once (one round trip for remote
    /// adapters): one answer list per `(space, keys)` request, in order.
    fn get_many_spaces(
        &self,
        reads: &[(Space, Vec<Vec<u8>>)],
    ) -> Result<Vec<Vec<Option<Vec<u8>>>>, StoreError> {
        reads
            .iter()
            .map(|(space, keys)| self.get_many(*space, keys))
            .collect()
    }

    /// [`get`](Store::get) for a caller on the async runtime. Adapters behind a network round
    /// trip answer over an async connection (many concurrent reads share it); the default
    /// reads synchronously, which local adapters do in microseconds.
    fn get_async(&self, space: Space, key: Vec<u8>) -> StoreFuture<Option<Vec<u8>>> {
        let read = self.get(space, &key);
        Box::pin(std::future::ready(read))
    }

    /// Whether reads cross a network (the engine then batches the reads of a commit).
    fn is_remote(&self) -> bool {
        false
    }

    /// Entries whose key starts with `prefix`, in ascending key order, strictly after
    /// `start_after` when given, at most `limit` of them.
    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;

    /// Makes every committed batch durable (used at shutdown).
    fn sync(&self) -> Result<(), StoreError>;

    /// Describes the adapter.
    fn info(&self) -> StoreInfo;

    /// Bytes the adapter occupies on disk (0 for adapters that keep nothing on disk).
    fn disk_bytes(&self) -> u64 {
        0
    }
}
