//! The stream mirror: the owner engine's hub frames, carried to the followers' hubs through a
//! Redis stream, so a stream client gets the same envelopes — with the same `seq` and `epoch` —
//! on whichever engine it is connected to, and can resume on any of them.
//!
//! The owner's committer hands each batch of frames to a [`MirrorWriter`], which queues them
//! (bounded) for its own thread; the thread appends what is queued as one entry of the Redis
//! stream (`XADD <key> MAXLEN ~ 100000 * f <frames joined by '\n'>`; a compact JSON frame never
//! holds a raw newline). On each follower a [`MirrorReader`] thread reads the entries after the
//! stream's last one at its start (`XREAD … BLOCK`) and applies every frame, in order, with
//! [`StreamHub::publish_mirrored`].
//!
//! The mirror never slows the owner down, and it never lets a follower skip a `seq` silently:
//! - writer queue full, or Redis unreachable or failing: the frames are dropped and counted
//!   (`dropped`), with a warning, and the writer reconnects with backoff (100 ms doubling to
//!   2 s). A follower sees the gap in `seq` on the group's next frame, resets the group and
//!   cuts its subscribers off; they reconnect and, finding no gap-free resume, get a snapshot
//!   (read from the shared store, so it is current). Until the group's next frame, its
//!   follower clients do not know what they missed. An `XADD` that timed out is counted as
//!   dropped although Redis may have appended it (then it simply arrives);
//! - a reader that loses its connection reconnects with backoff and continues after the last
//!   entry it applied; entries trimmed meanwhile (`MAXLEN`) show as a gap, as above;
//! - the owner restarts or the lease moves to another engine: the new owner's frames carry a
//!   new epoch, and each group resets on its first frame of that epoch;
//! - a frame seen twice is ignored (same epoch, `seq` already applied).
//!
//! The Redis client is blocking, so each side runs on a dedicated thread; every connection has
//! `TCP_NODELAY`, a 5 s connect timeout and read/write timeouts (longer than the read's `BLOCK`).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use redis::Value as RedisValue;
use serde_json::{json, Value};

use super::hub::StreamHub;
use crate::worker::lock;

/// Approximate length the Redis stream is trimmed to, in entries (one entry per written batch).
const MAX_STREAM_ENTRIES: u64 = 100_000;
/// Frames the writer queues at most before dropping new ones.
const MAX_QUEUED_FRAMES: usize = 100_000;
/// Bytes the writer queues at most before dropping new frames.
const MAX_QUEUED_BYTES: usize = 64 << 20;
/// Bytes appended as one stream entry at most (a larger backlog takes several entries).
const MAX_ENTRY_BYTES: usize = 1 << 20;
/// Entries one read takes at most.
const READ_COUNT: usize = 256;
/// How long one read waits for new entries; bounds how long stopping the reader takes.
const READ_BLOCK: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Read and write timeout of the connections (longer than [`READ_BLOCK`]).
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The stream entry's field that holds the frames.
const FIELD: &str = "f";

fn client(redis_url: &str) -> Result<redis::Client, String> {
    trine_store::redis::nodelay_client(redis_url)
        .map_err(|e| format!("stream mirror: invalid Redis URL: {e}"))
}

fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let conn = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(conn)
}

fn next_backoff(d: Duration) -> Duration {
    (d * 2).min(BACKOFF_MAX)
}

/// A stop flag a thread can sleep on.
#[derive(Default)]
struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
    fn stop(&self) {
        *lock(&self.stopped) = true;
        self.wake.notify_all();
    }

    fn is_stopped(&self) -> bool {
        *lock(&self.stopped)
    }

    /// Sleeps for `d` unless stopped first; returns whether it was stopped.
    fn sleep(&self, d: Duration) -> bool {
        let guard = lock(&self.stopped);
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, d, |stopped| !*stopped)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }
}

// ----- the writer (owner engine) ------------------------------------------------------------

/// Counters of a [`MirrorWriter`].
#[derive(Debug, Default)]
pub struct MirrorWriterStats {
    /// Frames appended to the Redis stream.
    pub appended: AtomicU64,
    /// Frames dropped: the queue was full, or Redis failed to take them.
    pub dropped: AtomicU64,
    /// Failed connection attempts and commands.
    pub errors: AtomicU64,
}

struct WriterQueue {
    frames: VecDeque<Bytes>,
    bytes: usize,
    stopped: bool,
}

struct WriterShared {
    key: String,
    queue: Mutex<WriterQueue>,
    /// Signalled when frames are queued or the writer stops.
    wake: Condvar,
    stats: MirrorWriterStats,
}

impl WriterShared {
    /// Counts `n` dropped frames, warning at the first and at every thousandth.
    fn dropped(&self, n: usize, why: &str) {
        if n == 0 {
            return;
        }
        let before = self.stats.dropped.fetch_add(n as u64, Ordering::Relaxed);
        let after = before + n as u64;
        if before == 0 || before / 1000 != after / 1000 {
            tracing::warn!(key = %self.key, dropped_total = after, reason = why,
                "stream mirror: frames dropped; followers will reset the affected groups");
        }
    }
}

/// Appends the owner's hub frames to the Redis stream, from a thread of its own (the
/// committer hands frames over without waiting for Redis).
pub struct MirrorWriter {
    shared: Arc<WriterShared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for MirrorWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MirrorWriter")
            .field("key", &self.shared.key)
            .field("stats", &self.shared.stats)
            .finish()
    }
}

impl MirrorWriter {
    /// Connects to Redis at `redis_url` (so a wrong URL or an unreachable server fails the
    /// start) and starts the `trine-stream-mirror` thread that appends to the stream `key`.
    pub fn start(redis_url: &str, key: String) -> Result<Arc<MirrorWriter>, String> {
        let client = client(redis_url)?;
        let conn = connect(&client)
            .map_err(|e| format!("stream mirror: cannot reach Redis at {redis_url}: {e}"))?;
        let shared = Arc::new(WriterShared {
            key,
            queue: Mutex::new(WriterQueue {
                frames: VecDeque::new(),
                bytes: 0,
                stopped: false,
            }),
            wake: Condvar::new(),
            stats: MirrorWriterStats::default(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("trine-stream-mirror".into())
            .spawn(move || write_loop(&s, &client, conn))
            .map_err(|e| format!("stream mirror: cannot start its thread: {e}"))?;
        Ok(Arc::new(MirrorWriter {
            shared,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Queues frames for the stream, in order. Never waits: when the queue is full (or the
    /// writer stopped) the frames are dropped and counted.
    pub fn send(&self, frames: Vec<Bytes>) {
        if frames.is_empty() {
            return;
        }
        let bytes: usize = frames.iter().map(Bytes::len).sum();
        let mut q = lock(&self.shared.queue);
        if q.stopped {
            drop(q);
            self.shared
                .dropped(frames.len(), "the mirror writer is stopped");
            return;
        }
        if q.frames.len() + frames.len() > MAX_QUEUED_FRAMES || q.bytes + bytes > MAX_QUEUED_BYTES {
            drop(q);
            self.shared
                .dropped(frames.len(), "the mirror queue is full");
            return;
        }
        q.frames.extend(frames);
        q.bytes += bytes;
        drop(q);
        self.shared.wake.notify_one();
    }

    /// The Redis stream this writer appends to.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// The writer's counters.
    pub fn stats(&self) -> &MirrorWriterStats {
        &self.shared.stats
    }

    /// Counters for `engine::streams::stats`.
    pub fn stats_json(&self) -> Value {
        let s = &self.shared.stats;
        let queued = lock(&self.shared.queue).frames.len();
        json!({
            "role": "writer",
            "key": self.shared.key,
            "appended": s.appended.load(Ordering::Relaxed),
            "dropped": s.dropped.load(Ordering::Relaxed),
            "errors": s.errors.load(Ordering::Relaxed),
            "queued": queued,
        })
    }

    /// Stops the thread after one last attempt to append what is queued (without waiting for
    /// a reconnection). Idempotent.
    pub fn stop(&self) {
        lock(&self.shared.queue).stopped = true;
        self.shared.wake.notify_all();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

impl Drop for MirrorWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Takes the next entry's worth of queued frames (waiting for some), or `None` once stopped
/// with nothing left.
fn take_batch(shared: &WriterShared) -> Option<(Vec<Bytes>, bool)> {
    let mut q = lock(&shared.queue);
    while q.frames.is_empty() && !q.stopped {
        q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
    }
    if q.frames.is_empty() {
        return None;
    }
    let mut batch = Vec::new();
    let mut bytes = 0;
    while let Some(f) = q.frames.front() {
        if !batch.is_empty() && bytes + f.len() + 1 > MAX_ENTRY_BYTES {
            break;
        }
        bytes += f.len() + 1;
        batch.extend(q.frames.pop_front());
    }
    q.bytes -= batch.iter().map(Bytes::len).sum::<usize>();
    Some((batch, q.stopped))
}

fn write_loop(shared: &WriterShared, client: &redis::Client, conn: redis::Connection) {
    let mut conn = Some(conn);
    let mut backoff = BACKOFF_FIRST;
    let mut entry = Vec::new();
    while let Some((batch, stopping)) = take_batch(shared) {
        if conn.is_none() && !stopping {
            match connect(client) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(key = %shared.key, error = %e, "stream mirror: cannot reach Redis");
                }
            }
        }
        let Some(c) = conn.as_mut() else {
            shared.dropped(batch.len(), "Redis is unreachable");
            if stopping {
                return;
            }
            wait_backoff(shared, &mut backoff);
            continue;
        };
        entry.clear();
        for (i, f) in batch.iter().enumerate() {
            if i > 0 {
                entry.push(b'\n');
            }
            entry.extend_from_slice(f);
        }
        let r = redis::cmd("XADD")
            .arg(&shared.key)
            .arg("MAXLEN")
            .arg("~")
            .arg(MAX_STREAM_ENTRIES)
            .arg("*")
            .arg(FIELD)
            .arg(&entry)
            .query::<String>(c);
        match r {
            Ok(_) => {
                shared
                    .stats
                    .appended
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                backoff = BACKOFF_FIRST;
            }
            Err(e) => {
                shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %shared.key, error = %e, "stream mirror: XADD failed; reconnecting");
                conn = None;
                shared.dropped(batch.len(), "XADD failed");
                if !stopping {
                    wait_backoff(shared, &mut backoff);
                }
            }
        }
        if entry.capacity() > 2 * MAX_ENTRY_BYTES {
            entry = Vec::new();
        }
    }
}

/// Waits out the backoff (cut short by a stop) and doubles it.
fn wait_backoff(shared: &WriterShared, backoff: &mut Duration) {
    let q = lock(&shared.queue);
    let _ = shared
        .wake
        .wait_timeout_while(q, *backoff, |q| !q.stopped)
        .unwrap_or_else(|e| e.into_inner());
    *backoff = next_backoff(*backoff);
}

// ----- the reader (follower engine) ---------------------------------------------------------

/// Counters of a [`MirrorReader`].
#[derive(Debug, Default)]
pub struct MirrorReaderStats {
    /// Frames handed to the hub (duplicates and resets included).
    pub applied: AtomicU64,
    /// Failed connection attempts, commands and unreadable replies.
    pub errors: AtomicU64,
}

struct ReaderShared {
    key: String,
    stop: Stop,
    stats: MirrorReaderStats,
    /// Id of the last entry applied.
    last_id: Mutex<String>,
}

/// Applies the owner's frames from the Redis stream to this engine's hub, from a thread of its
/// own. Stopped by [`MirrorReader::stop`] or when dropped.
pub struct MirrorReader {
    shared: Arc<ReaderShared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for MirrorReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MirrorReader")
            .field("key", &self.shared.key)
            .field("stats", &self.shared.stats)
            .finish()
    }
}

impl MirrorReader {
    /// Connects to Redis at `redis_url`, takes the id of the stream's last entry (so only
    /// entries appended from now on are applied, like `$`, but without missing any appended
    /// between two reads), and starts the `trine-stream-mirror` thread feeding `hub`.
    pub fn start(
        redis_url: &str,
        key: String,
        hub: Arc<StreamHub>,
    ) -> Result<MirrorReader, String> {
        let client = client(redis_url)?;
        let unreachable =
            |e: redis::RedisError| format!("stream mirror: cannot reach Redis at {redis_url}: {e}");
        let mut conn = connect(&client).map_err(unreachable)?;
        let last: RedisValue = redis::cmd("XREVRANGE")
            .arg(&key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(&mut conn)
            .map_err(unreachable)?;
        let last_id = entries(last)
            .map_err(|e| format!("stream mirror: reading the last entry of `{key}`: {e}"))?
            .pop()
            .map_or_else(|| "0-0".to_owned(), |(id, _)| id);
        let shared = Arc::new(ReaderShared {
            key,
            stop: Stop::default(),
            stats: MirrorReaderStats::default(),
            last_id: Mutex::new(last_id),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("trine-stream-mirror".into())
            .spawn(move || read_loop(&s, &client, conn, &hub))
            .map_err(|e| format!("stream mirror: cannot start its thread: {e}"))?;
        Ok(MirrorReader {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The Redis stream this reader follows.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// The reader's counters.
    pub fn stats(&self) -> &MirrorReaderStats {
        &self.shared.stats
    }

    /// Counters for `engine::streams::stats`.
    pub fn stats_json(&self) -> Value {
        let s = &self.shared.stats;
        json!({
            "role": "reader",
            "key": self.shared.key,
            "applied": s.applied.load(Ordering::Relaxed),
            "errors": s.errors.load(Ordering::Relaxed),
            "last_id": lock(&self.shared.last_id).clone(),
        })
    }

    /// Stops the thread (within the read's `BLOCK` time, or the connect timeout while
    /// reconnecting). Idempotent.
    pub fn stop(&self) {
        self.shared.stop.stop();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

impl Drop for MirrorReader {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `(id, frames field)` pairs of an `XRANGE`-shaped reply (`[[id, [field, value, …]], …]`).
fn entries(v: RedisValue) -> Result<Vec<(String, Option<Bytes>)>, String> {
    let items = match v {
        RedisValue::Nil => return Ok(Vec::new()),
        RedisValue::Array(items) => items,
        other => return Err(format!("unexpected reply {other:?}")),
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let RedisValue::Array(pair) = item else {
            return Err("an entry is not an array".into());
        };
        let mut pair = pair.into_iter();
        let id = match pair.next() {
            Some(RedisValue::BulkString(b)) => String::from_utf8(b).map_err(|e| e.to_string())?,
            Some(RedisValue::SimpleString(s)) => s,
            _ => return Err("an entry has no id".into()),
        };
        let fields = match pair.next() {
            Some(RedisValue::Array(f)) => f,
            Some(RedisValue::Map(m)) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => Vec::new(),
        };
        let mut frames = None;
        let mut fields = fields.into_iter();
        while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
            if let (RedisValue::BulkString(k), RedisValue::BulkString(v)) = (k, v) {
                if k == FIELD.as_bytes() {
                    frames = Some(Bytes::from(v));
                }
            }
        }
        out.push((id, frames));
    }
    Ok(out)
}

/// The entries of an `XREAD` reply for one stream (`[[key, entries]]`, or nil on timeout).
fn read_reply(v: RedisValue) -> Result<Vec<(String, Option<Bytes>)>, String> {
    match v {
        RedisValue::Nil => Ok(Vec::new()),
        RedisValue::Array(streams) => {
            let mut out = Vec::new();
            for s in streams {
                let RedisValue::Array(kv) = s else {
                    return Err("a stream of the reply is not an array".into());
                };
                if let Some(e) = kv.into_iter().nth(1) {
                    out.extend(entries(e)?);
                }
            }
            Ok(out)
        }
        RedisValue::Map(streams) => {
            let mut out = Vec::new();
            for (_, e) in streams {
                out.extend(entries(e)?);
            }
            Ok(out)
        }
        other => Err(format!("unexpected reply {other:?}")),
    }
}

fn read_loop(
    shared: &ReaderShared,
    client: &redis::Client,
    conn: redis::Connection,
    hub: &StreamHub,
) {
    let mut conn = Some(conn);
    let mut backoff = BACKOFF_FIRST;
    let mut last_id = lock(&shared.last_id).clone();
    while !shared.stop.is_stopped() {
        if conn.is_none() {
            match connect(client) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(key = %shared.key, error = %e, "stream mirror: cannot reach Redis");
                    if shared.stop.sleep(backoff) {
                        return;
                    }
                    backoff = next_backoff(backoff);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let reply = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&shared.key)
            .arg(&last_id)
            .query::<RedisValue>(c)
            .map_err(|e| e.to_string())
            .and_then(read_reply);
        let batch = match reply {
            Ok(b) => b,
            Err(e) => {
                shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %shared.key, error = %e, "stream mirror: XREAD failed; reconnecting");
                conn = None;
                if shared.stop.sleep(backoff) {
                    return;
                }
                backoff = next_backoff(backoff);
                continue;
            }
        };
        backoff = BACKOFF_FIRST;
        for (id, frames) in batch {
            if let Some(frames) = frames {
                apply(shared, hub, &frames);
            } else {
                tracing::warn!(key = %shared.key, id = %id, "stream mirror: entry without frames ignored");
            }
            last_id = id;
        }
        lock(&shared.last_id).clone_from(&last_id);
    }
}

/// Applies the '\n'-separated frames of one entry, in order.
fn apply(shared: &ReaderShared, hub: &StreamHub, frames: &Bytes) {
    let mut start = 0;
    while start < frames.len() {
        let end = frames[start..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(frames.len(), |i| start + i);
        if end > start {
            hub.publish_mirrored(frames.slice(start..end));
            shared.stats.applied.fetch_add(1, Ordering::Relaxed);
        }
        start = end + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::hub::{Attach, ClientQueue, Frame, HubOptions, Next, Resume};
    use std::time::Instant;

    use trine_store::testing::{redis_admin as admin, redis_url as url};

    /// Deletes the test's stream key on drop (also when a check panics).
    struct Key(String, redis::Connection);

    impl Drop for Key {
        fn drop(&mut self) {
            let _ = redis::cmd("DEL").arg(&self.0).query::<()>(&mut self.1);
        }
    }

    fn env(group: &str, n: u64) -> Arc<Value> {
        Arc::new(
            json!({"type": "stream", "timestamp": 1, "streamName": "s", "groupId": group,
            "id": format!("i{n}"), "event": {"type": "update", "data": n}}),
        )
    }

    fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Frames queued for `q` until `n` arrived, or `None` when the client was cut off first.
    async fn receive(q: &ClientQueue, n: usize) -> Option<Vec<Frame>> {
        let mut got = Vec::new();
        while got.len() < n {
            let next = tokio::time::timeout(Duration::from_secs(10), q.next_batch(&mut got))
                .await
                .expect("frames arrive within 10 s");
            match next {
                Next::Frames => {}
                Next::Cut(_) => return None,
                Next::Close(..) => panic!("the queue was closed"),
            }
        }
        Some(got)
    }

    #[tokio::test]
    async fn frames_reach_a_follower_through_redis_with_the_owners_position() {
        let Some(admin) = admin() else { return };
        let key = Key(
            format!("trine-test:stream-mirror:{}", uuid::Uuid::new_v4().simple()),
            admin,
        );
        let owner = StreamHub::new(HubOptions::default());
        let writer = MirrorWriter::start(&url(), key.0.clone()).unwrap();
        // Entries appended before the reader starts are not applied.
        writer.send(owner.publish(vec![env("before", 1), env("before", 2)]));
        until("the early frames to be appended", || {
            writer.stats().appended.load(Ordering::Relaxed) == 2
        });
        let follower = Arc::new(StreamHub::new(HubOptions::default()));
        let reader = MirrorReader::start(&url(), key.0.clone(), follower.clone()).unwrap();
        let (id, q) = follower.client();
        follower.attach(id, &q, "x", "s", "g", None, None, false);

        // One frame per send, then a batch of several.
        let mut sent = Vec::new();
        for n in 1..=20 {
            let frames = owner.publish(vec![env("g", n)]);
            sent.extend(frames.iter().cloned());
            writer.send(frames);
        }
        let frames = owner.publish((21..=30).map(|n| env("g", n)).collect());
        sent.extend(frames.iter().cloned());
        writer.send(frames);

        let got = receive(&q, 30).await.expect("not cut off");
        let bytes: Vec<Bytes> = got.iter().map(|f| f.bytes.clone()).collect();
        assert_eq!(
            bytes, sent,
            "the owner's frames, byte for byte and in order"
        );
        let (owner_epoch, _) = owner.position("s", "g");
        for (n, f) in got.iter().enumerate() {
            let v: Value = serde_json::from_slice(&f.bytes).unwrap();
            assert_eq!(v["seq"], n as u64 + 1);
            assert_eq!(v["epoch"], owner_epoch.as_str());
            assert_eq!(v["event"]["data"], n as u64 + 1);
        }
        q.mark_written(&got[29]);
        assert_eq!(
            q.resume_points(),
            [("s".into(), "g".into(), owner_epoch.clone(), 30)]
        );
        assert_eq!(follower.position("s", "g"), (owner_epoch.clone(), 30));
        assert_eq!(follower.position("s", "before").1, 0);
        assert_eq!(reader.stats().applied.load(Ordering::Relaxed), 30);

        // The follower misses frame 31 (say the writer's queue was full): on 32 it resets the
        // group and cuts its subscriber off.
        let missed = owner.publish(vec![env("g", 31), env("g", 32)]);
        writer.send(vec![missed[1].clone()]);
        assert!(receive(&q, 1).await.is_none(), "the subscriber is cut off");
        assert_eq!(follower.stats.mirror_resets.load(Ordering::Relaxed), 1);
        assert_eq!(
            follower
                .stats
                .slow_consumer_disconnects
                .load(Ordering::Relaxed),
            0
        );
        assert_eq!(follower.subscriptions(), 0);
        // Its client reconnects: no gap-free resume from 30, so it gets a snapshot.
        let (id2, q2) = follower.client();
        let from_30 = Resume {
            epoch: owner_epoch.clone(),
            last_seq: 30,
        };
        assert_eq!(
            follower.attach(id2, &q2, "x", "s", "g", None, Some(&from_30), false),
            Attach::Fresh {
                epoch: owner_epoch.clone(),
                seq: 32
            }
        );
        // Later frames flow again.
        writer.send(owner.publish(vec![env("g", 33)]));
        let got = receive(&q2, 1).await.expect("not cut off");
        let v: Value = serde_json::from_slice(&got[0].bytes).unwrap();
        assert_eq!(v["seq"], 33);

        assert_eq!(writer.stats().dropped.load(Ordering::Relaxed), 0);
        assert_eq!(writer.stats().errors.load(Ordering::Relaxed), 0);
        assert_eq!(reader.stats().errors.load(Ordering::Relaxed), 0);
        reader.stop();
        writer.stop();
        // A stopped writer takes nothing more, and says so in its counters.
        writer.send(owner.publish(vec![env("g", 34)]));
        assert_eq!(writer.stats().dropped.load(Ordering::Relaxed), 1);
    }
}
