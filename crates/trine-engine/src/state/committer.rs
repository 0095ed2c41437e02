//! The state write path: one thread applies every write, in order, and commits them in groups.
//!
//! Callers send [`Command`]s on a bounded channel (a full channel makes writers wait: back-pressure
//! on the callers only). The committer thread takes everything queued (up to
//! [`MAX_COMMANDS_PER_BATCH`]), applies the writes one after another on top of the store (an
//! overlay holds this batch's own writes, so two writes of one key in one batch see each other),
//! records each change and its owed trigger deliveries in the same store batch (the outbox), and
//! commits it with one fsync. Only then are the writers answered and the events handed to
//! [`Delivery`]. While one batch is being fsync'd the next one queues up, so concurrent writers
//! share fsyncs (group commit).
//!
//! Invariants:
//! - a write is acknowledged only after the batch holding it is committed (durably, when the
//!   store is durable);
//! - sequence numbers increase by one per applied write and are never reused (the last one is
//!   committed with every batch); a key's version is the sequence of its last write;
//! - an event is handed to delivery only after its outbox records are committed, so a delivery
//!   can always be acknowledged against a stored record.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use trine_store::{for_each, Batch, Space, Store, StoreError};

use super::delivery::{Delivery, NewEvent, Target};
use super::keys::{self, Group, Record};
use super::ops::{apply_ops, OpError, UpdateOp};
use super::triggers::TriggerIndex;
use super::StateStats;

/// Most commands folded into one store batch.
pub const MAX_COMMANDS_PER_BATCH: usize = 2048;

/// Work for the committer thread.
pub enum Command {
    Write(WriteRequest),
    /// An ephemeral stream event, ordered with the writes around it; answered once published.
    Publish(StreamPublish, Option<oneshot::Sender<()>>),
    /// A delivery finished (handler succeeded or the condition skipped it).
    Ack {
        seq: u64,
        trigger_id: Arc<str>,
    },
    /// A delivery exhausted its attempts: store `record` as a dead letter.
    DeadLetter {
        seq: u64,
        trigger_id: Arc<str>,
        record: Vec<u8>,
    },
    /// Remove dead letters: one by key, or all when `key` is `None`.
    Discard {
        key: Option<Vec<u8>>,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Make everything committed so far durable.
    Sync {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Finish the queued work, sync, and end the thread.
    Stop {
        reply: oneshot::Sender<()>,
    },
}

/// What a write addresses: a state key or a stream item. Both are stored the same way (a
/// record per key, insertion order per scope, a count per scope) in their own key spaces.
#[derive(Debug, Clone)]
pub enum Address {
    State {
        scope: String,
        key: String,
    },
    Stream {
        stream: String,
        group: String,
        item: String,
    },
}

impl Address {
    /// Data, order and group spaces of the namespace.
    fn spaces(&self) -> (Space, Space, Space) {
        match self {
            Address::State { .. } => (Space::StateData, Space::StateOrder, Space::StateGroups),
            Address::Stream { .. } => (Space::StreamData, Space::StreamOrder, Space::StreamGroups),
        }
    }

    /// The scope bytes (a state scope, or a stream group's composite).
    fn scope(&self) -> Vec<u8> {
        match self {
            Address::State { scope, .. } => scope.as_bytes().to_vec(),
            Address::Stream { stream, group, .. } => keys::stream_scope(stream, group),
        }
    }

    fn key(&self) -> &str {
        match self {
            Address::State { key, .. } => key,
            Address::Stream { item, .. } => item,
        }
    }
}

/// A change to stream subscribers that is not a stored write (`stream::send`, or an event of a
/// worker-provided stream implementation).
#[derive(Debug, Clone)]
pub struct StreamPublish {
    pub stream: String,
    pub group: String,
    pub id: Option<String>,
    /// The envelope's `event` object (`{type: "event", event: {type, data}}` for sends).
    pub event: Value,
}

/// The stream module's side of a commit: its triggers and its subscribers.
pub trait StreamSink: Send + Sync {
    /// Targets of the `stream` triggers that want this envelope.
    fn matching(&self, stream: &str, group: &str, id: Option<&str>) -> Vec<Arc<Target>>;
    /// Hands committed envelopes (in commit order) to WebSocket subscribers.
    fn publish(&self, envelopes: Vec<Arc<Value>>);
}

/// One client write.
pub struct WriteRequest {
    pub addr: Address,
    pub kind: WriteKind,
    /// Compare-and-set: the version the key must have (0 = must not exist).
    pub expected_version: Option<u64>,
    pub reply: oneshot::Sender<Result<WriteOutcome, WriteError>>,
}

pub enum WriteKind {
    /// Replace the value; `json` is its compact serialization (already size-checked).
    Set {
        value: Value,
        json: Vec<u8>,
    },
    Update {
        ops: Vec<UpdateOp>,
    },
    Delete,
}

/// What a write did.
#[derive(Debug)]
pub struct WriteOutcome {
    /// The previous value; `None` when the key did not exist.
    pub old_value: Option<Value>,
    /// The value now stored; `None` after a delete.
    pub new_value: Option<Value>,
    /// The key's version after the write, or for a delete the version of the removed value
    /// (0 when nothing was removed).
    pub version: u64,
    /// Per-op errors of an update (skipped ops).
    pub errors: Vec<OpError>,
}

#[derive(Debug)]
pub enum WriteError {
    VersionConflict { expected: u64, current: u64 },
    ValueTooLarge { size: usize, limit: usize },
    Storage(String),
}

/// What a write did to its key.
#[derive(Debug, Clone, Copy)]
enum Change {
    Created,
    Updated,
    Deleted,
}

/// Limits the committer enforces.
#[derive(Debug, Clone)]
pub struct CommitterLimits {
    pub max_value_bytes: usize,
    pub triggers_enabled: bool,
    /// Open without writing (a non-owner engine of a group reads the owner's data set).
    pub read_only: bool,
}

pub struct Committer {
    store: Arc<dyn Store>,
    rx: mpsc::Receiver<Command>,
    seq: u64,
    /// Outbox events with deliveries still owed: sequence → number of owed deliveries.
    owed: HashMap<u64, u32>,
    triggers: Arc<TriggerIndex>,
    delivery: Arc<Delivery>,
    stats: Arc<StateStats>,
    limits: CommitterLimits,
    streams: SinkSlot,
}

/// Where the stream module plugs in once it is enabled.
pub type SinkSlot = Arc<std::sync::OnceLock<Arc<dyn StreamSink>>>;

/// One batch being assembled.
#[derive(Default)]
struct Pending {
    batch: Batch,
    /// This batch's own writes: (data space, data key) → record (`None` = deleted).
    overlay: HashMap<(Space, Vec<u8>), Option<Record>>,
    /// Remote stores: what the batch's writes will read, fetched in one round trip per space
    /// before they are applied (the committer is the only writer, so it stays current).
    prefetched: HashMap<(Space, Vec<u8>), Option<Vec<u8>>>,
    /// Scopes touched by this batch, with their updated bookkeeping: (group space, scope).
    groups: HashMap<(Space, Vec<u8>), Group>,
    replies: Vec<(
        oneshot::Sender<Result<WriteOutcome, WriteError>>,
        WriteOutcome,
    )>,
    events: Vec<NewEvent>,
    /// Stream envelopes to publish after the commit, in order.
    envelopes: Vec<Arc<Value>>,
    /// Callers of `stream::send` waiting for their event to be published.
    published: Vec<oneshot::Sender<()>>,
    discards: Vec<(oneshot::Sender<Result<u64, StoreError>>, u64)>,
    syncs: Vec<oneshot::Sender<Result<(), StoreError>>>,
    stop: Option<oneshot::Sender<()>>,
    sync: bool,
    writes: u64,
}

impl Committer {
    /// Recovers the committer's counters from the store. Returns the committer and the owed
    /// deliveries found in the outbox, in sequence order.
    pub fn open(
        store: Arc<dyn Store>,
        rx: mpsc::Receiver<Command>,
        triggers: Arc<TriggerIndex>,
        delivery: Arc<Delivery>,
        stats: Arc<StateStats>,
        limits: CommitterLimits,
        streams: SinkSlot,
    ) -> Result<(Self, Vec<NewEvent>), StoreError> {
        let seq = match store.get(Space::Meta, keys::META_SEQ)? {
            Some(b) => keys::decode_u64(&b)?,
            None => 0,
        };
        let mut owed: HashMap<u64, u32> = HashMap::new();
        // Targets are keyed by sequence first, so one event's targets come together.
        let mut recovered: Vec<NewEvent> = Vec::new();
        for_each(store.as_ref(), Space::OutboxTargets, &[], 4096, |k, v| {
            let (s, _trigger_id) = keys::split_seq_key(&k)?;
            let target: Target = serde_json::from_slice(&v)
                .map_err(|e| StoreError::Corrupt(format!("outbox target: {e}")))?;
            *owed.entry(s).or_default() += 1;
            match recovered.last_mut() {
                Some(ev) if ev.seq == s => ev.targets.push(Arc::new(target)),
                _ => {
                    let Some(bytes) = store.get(Space::OutboxEvents, &s.to_be_bytes())? else {
                        return Err(StoreError::Corrupt(format!(
                            "outbox target of sequence {s} has no event"
                        )));
                    };
                    let payload: Value = serde_json::from_slice(&bytes)
                        .map_err(|e| StoreError::Corrupt(format!("outbox event: {e}")))?;
                    recovered.push(NewEvent {
                        seq: s,
                        lane: lane_of(&payload),
                        payload: Arc::new(payload),
                        targets: vec![Arc::new(target)],
                    });
                }
            }
            Ok(true)
        })?;
        // Events whose deliveries were all acknowledged but whose record was not yet removed.
        let mut orphans = Batch::new();
        for_each(store.as_ref(), Space::OutboxEvents, &[], 4096, |k, _| {
            let s = u64::from_be_bytes(
                k.as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("outbox event key".into()))?,
            );
            if !owed.contains_key(&s) {
                orphans.delete(Space::OutboxEvents, k);
            }
            Ok(true)
        })?;
        if !orphans.is_empty() && !limits.read_only {
            store.commit(orphans, true)?;
        }
        stats.last_seq.store(seq, Ordering::Relaxed);
        Ok((
            Committer {
                store,
                rx,
                seq,
                owed,
                triggers,
                delivery,
                stats,
                limits,
                streams,
            },
            recovered,
        ))
    }

    /// The thread's body: runs until a `Stop` command or until every sender is gone.
    pub fn run(mut self) {
        while let Some(cmds) = next_batch(&mut self.rx, MAX_COMMANDS_PER_BATCH) {
            if self.process(cmds) {
                return;
            }
        }
        if let Err(e) = self.store.sync() {
            tracing::error!(error = %e, "state store: final sync failed");
        }
    }

    /// Applies and commits one batch of commands. Returns true when asked to stop.
    fn process(&mut self, cmds: Vec<Command>) -> bool {
        let start_seq = self.seq;
        let mut p = Pending::default();
        if self.store.is_remote() {
            self.prefetch(&mut p, &cmds);
        }
        for cmd in cmds {
            match cmd {
                Command::Publish(ev, reply) => {
                    self.record_stream_event(&mut p, None, ev);
                    if let Some(r) = reply {
                        p.published.push(r);
                    }
                }
                Command::Write(w) => {
                    let WriteRequest {
                        addr,
                        kind,
                        expected_version,
                        reply,
                    } = w;
                    match self.apply_write(&mut p, addr, kind, expected_version) {
                        Ok(out) => {
                            p.replies.push((reply, out));
                            p.sync = true;
                            p.writes += 1;
                        }
                        // Nothing was written for this request: answer at once.
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                Command::Ack { seq, trigger_id } => {
                    p.batch
                        .delete(Space::OutboxTargets, keys::seq_key(seq, &trigger_id));
                    self.release(&mut p, seq);
                }
                Command::DeadLetter {
                    seq,
                    trigger_id,
                    record,
                } => {
                    let k = keys::seq_key(seq, &trigger_id);
                    p.batch.put(Space::DeadLetters, k.clone(), record);
                    p.batch.delete(Space::OutboxTargets, k);
                    self.release(&mut p, seq);
                    p.sync = true;
                }
                Command::Discard { key, reply } => {
                    let n = self.discard(&mut p, key);
                    match n {
                        Ok(n) => p.discards.push((reply, n)),
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                    p.sync = true;
                }
                Command::Sync { reply } => {
                    p.syncs.push(reply);
                    p.sync = true;
                }
                Command::Stop { reply } => {
                    p.stop = Some(reply);
                    p.sync = true;
                }
            }
        }
        if self.seq != start_seq {
            p.batch
                .put(Space::Meta, keys::META_SEQ, self.seq.to_le_bytes().to_vec());
        }
        for ((space, scope), g) in &p.groups {
            if g.count == 0 {
                p.batch.delete(*space, scope.clone());
            } else {
                p.batch.put(*space, scope.clone(), g.encode());
            }
        }
        let result = if !p.batch.is_empty() {
            let n = p.batch.len();
            let r = self.store.commit(std::mem::take(&mut p.batch), p.sync);
            if r.is_ok() {
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats.batch_ops.fetch_add(n as u64, Ordering::Relaxed);
            }
            r
        } else if p.sync {
            self.store.sync()
        } else {
            Ok(())
        };
        match result {
            Ok(()) => {
                self.stats.last_seq.store(self.seq, Ordering::Relaxed);
                self.stats.writes.fetch_add(p.writes, Ordering::Relaxed);
                // Publish and hand over deliveries before answering: once a write is
                // acknowledged, its envelope is already with the subscribers.
                if !p.envelopes.is_empty() {
                    if let Some(sink) = self.streams.get() {
                        sink.publish(std::mem::take(&mut p.envelopes));
                    }
                }
                if !p.events.is_empty() {
                    let overflow = self.delivery.submit(std::mem::take(&mut p.events));
                    if !overflow.is_empty() {
                        self.dead_letter_overflow(overflow);
                    }
                }
                for (reply, out) in p.replies {
                    let _ = reply.send(Ok(out));
                }
                for reply in p.published {
                    let _ = reply.send(());
                }
                for (reply, n) in p.discards {
                    let _ = reply.send(Ok(n));
                }
                for reply in p.syncs {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "state store commit failed; the batch's writes are refused");
                let msg = e.to_string();
                for (reply, _) in p.replies {
                    let _ = reply.send(Err(WriteError::Storage(msg.clone())));
                }
                for (reply, _) in p.discards {
                    let _ = reply.send(Err(StoreError::Engine(msg.clone())));
                }
                for reply in p.syncs {
                    let _ = reply.send(Err(StoreError::Engine(msg.clone())));
                }
                // Counters may have moved with the refused batch: take them from the store again.
                self.seq = start_seq;
                if let Err(e) = self.reload_owed() {
                    tracing::error!(error = %e, "state store: could not reload the outbox after a failed commit");
                }
            }
        }
        if let Some(reply) = p.stop {
            let _ = reply.send(());
            return true;
        }
        false
    }

    /// Reads the records and scope bookkeeping the writes of `cmds` need, in one request.
    /// A failure only loses the shortcut: the writes then read one by one.
    fn prefetch(&self, p: &mut Pending, cmds: &[Command]) {
        let mut wanted: HashMap<Space, Vec<Vec<u8>>> = HashMap::new();
        for cmd in cmds {
            if let Command::Write(w) = cmd {
                let (data, _, groups) = w.addr.spaces();
                let scope = w.addr.scope();
                wanted
                    .entry(data)
                    .or_default()
                    .push(keys::data_key(&scope, w.addr.key()));
                wanted.entry(groups).or_default().push(scope);
            }
        }
        let reads: Vec<(Space, Vec<Vec<u8>>)> = wanted
            .into_iter()
            .map(|(space, mut list)| {
                list.sort();
                list.dedup();
                (space, list)
            })
            .collect();
        match self.store.get_many_spaces(&reads) {
            Ok(answers) => {
                for ((space, list), values) in reads.into_iter().zip(answers) {
                    for (k, v) in list.into_iter().zip(values) {
                        p.prefetched.insert((space, k), v);
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "state: batched read failed; reading one by one")
            }
        }
    }

    /// A stored value, from the batch's prefetch when there is one.
    fn stored(
        &self,
        p: &Pending,
        space: Space,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, trine_store::StoreError> {
        match p.prefetched.get(&(space, key.to_vec())) {
            Some(v) => Ok(v.clone()),
            None => self.store.get(space, key),
        }
    }

    fn read_record(
        &self,
        p: &Pending,
        space: Space,
        dk: &[u8],
    ) -> Result<Option<Record>, WriteError> {
        if let Some(r) = p.overlay.get(&(space, dk.to_vec())) {
            return Ok(r.clone());
        }
        match self.stored(p, space, dk) {
            Ok(Some(bytes)) => Record::decode(bytes)
                .map(Some)
                .map_err(|e| WriteError::Storage(e.to_string())),
            Ok(None) => Ok(None),
            Err(e) => Err(WriteError::Storage(e.to_string())),
        }
    }

    fn group<'a>(
        &self,
        p: &'a mut Pending,
        space: Space,
        scope: &[u8],
    ) -> Result<&'a mut Group, WriteError> {
        let k = (space, scope.to_vec());
        if !p.groups.contains_key(&k) {
            let g = match self.stored(p, space, scope) {
                Ok(Some(b)) => Group::decode(&b).map_err(|e| WriteError::Storage(e.to_string()))?,
                Ok(None) => Group::default(),
                Err(e) => return Err(WriteError::Storage(e.to_string())),
            };
            p.groups.insert(k.clone(), g);
        }
        Ok(p.groups.get_mut(&k).expect("inserted above"))
    }

    fn apply_write(
        &mut self,
        p: &mut Pending,
        addr: Address,
        kind: WriteKind,
        expected_version: Option<u64>,
    ) -> Result<WriteOutcome, WriteError> {
        let (data_space, order_space, group_space) = addr.spaces();
        let scope = addr.scope();
        let key = addr.key().to_owned();
        let dk = keys::data_key(&scope, &key);
        let current = self.read_record(p, data_space, &dk)?;
        let current_version = current.as_ref().map_or(0, |r| r.version);
        if let Some(expected) = expected_version {
            if expected != current_version {
                return Err(WriteError::VersionConflict {
                    expected,
                    current: current_version,
                });
            }
        }
        let old_value: Option<Value> = match &current {
            Some(r) => Some(
                serde_json::from_slice(&r.json)
                    .map_err(|e| WriteError::Storage(format!("stored value is corrupt: {e}")))?,
            ),
            None => None,
        };
        let (new_value, new_json, errors) = match kind {
            WriteKind::Set { value, json } => (value, json, Vec::new()),
            WriteKind::Update { ops } => {
                let (v, errors) = apply_ops(old_value.as_ref(), &ops);
                let json = serde_json::to_vec(&v)
                    .map_err(|e| WriteError::Storage(format!("could not encode the value: {e}")))?;
                (v, json, errors)
            }
            WriteKind::Delete => {
                let Some(cur) = current else {
                    // Nothing to delete: no write, no event.
                    return Ok(WriteOutcome {
                        old_value: None,
                        new_value: None,
                        version: 0,
                        errors: Vec::new(),
                    });
                };
                self.seq += 1;
                let seq = self.seq;
                p.batch.delete(data_space, dk.clone());
                p.batch
                    .delete(order_space, keys::order_key(&scope, cur.order));
                let g = self.group(p, group_space, &scope)?;
                g.count = g.count.saturating_sub(1);
                p.overlay.insert((data_space, dk.clone()), None);
                self.record_change(p, seq, dk, &addr, Change::Deleted, old_value.as_ref(), None);
                return Ok(WriteOutcome {
                    old_value,
                    new_value: None,
                    version: cur.version,
                    errors: Vec::new(),
                });
            }
        };
        if new_json.len() > self.limits.max_value_bytes {
            return Err(WriteError::ValueTooLarge {
                size: new_json.len(),
                limit: self.limits.max_value_bytes,
            });
        }
        self.seq += 1;
        let seq = self.seq;
        let order = match &current {
            Some(r) => r.order,
            None => {
                let g = self.group(p, group_space, &scope)?;
                let o = g.next_order;
                g.next_order += 1;
                g.count += 1;
                p.batch.put(
                    order_space,
                    keys::order_key(&scope, o),
                    key.as_bytes().to_vec(),
                );
                o
            }
        };
        let rec = Record {
            version: seq,
            order,
            json: new_json,
        };
        p.batch.put(data_space, dk.clone(), rec.encode());
        p.overlay.insert((data_space, dk.clone()), Some(rec));
        let change = if current.is_some() {
            Change::Updated
        } else {
            Change::Created
        };
        self.record_change(
            p,
            seq,
            dk,
            &addr,
            change,
            old_value.as_ref(),
            Some(&new_value),
        );
        Ok(WriteOutcome {
            old_value,
            new_value: Some(new_value),
            version: seq,
            errors,
        })
    }

    /// Records what a committed write produces: the state trigger outbox, or for stream items
    /// the envelope (outbox for `stream` triggers, and subscribers after the commit).
    #[allow(clippy::too_many_arguments)]
    fn record_change(
        &mut self,
        p: &mut Pending,
        seq: u64,
        lane: Vec<u8>,
        addr: &Address,
        change: Change,
        old_value: Option<&Value>,
        new_value: Option<&Value>,
    ) {
        match addr {
            Address::State { scope, key } => {
                if !self.limits.triggers_enabled {
                    return;
                }
                let targets = self.triggers.matching(scope, key);
                if targets.is_empty() {
                    return;
                }
                let event_type = match change {
                    Change::Created => "state:created",
                    Change::Updated => "state:updated",
                    Change::Deleted => "state:deleted",
                };
                let payload = json!({
                    "type": "state",
                    "event_type": event_type,
                    "scope": scope,
                    "key": key,
                    "old_value": old_value.cloned().unwrap_or(Value::Null),
                    "new_value": new_value.cloned().unwrap_or(Value::Null),
                });
                self.add_to_outbox(p, seq, lane, Arc::new(payload), targets);
            }
            Address::Stream {
                stream,
                group,
                item,
            } => {
                // Stream events carry the new value, or the old one for a delete.
                let (kind, data) = match change {
                    Change::Created => ("create", new_value),
                    Change::Updated => ("update", new_value),
                    Change::Deleted => ("delete", old_value),
                };
                let ev = StreamPublish {
                    stream: stream.clone(),
                    group: group.clone(),
                    id: Some(item.clone()),
                    event: json!({"type": kind, "data": data.cloned().unwrap_or(Value::Null)}),
                };
                self.record_stream_event(p, Some((seq, lane)), ev);
            }
        }
    }

    /// Builds a stream envelope, records its `stream` trigger deliveries in the outbox, and
    /// queues it for subscribers. `at` is the write's sequence and lane; a publish without a
    /// write takes a sequence of its own when triggers want it.
    fn record_stream_event(
        &mut self,
        p: &mut Pending,
        at: Option<(u64, Vec<u8>)>,
        ev: StreamPublish,
    ) {
        let Some(sink) = self.streams.get().cloned() else {
            return;
        };
        let envelope = Arc::new(json!({
            "type": "stream",
            "timestamp": crate::worker::now_ms(),
            "streamName": ev.stream,
            "groupId": ev.group,
            "id": ev.id,
            "event": ev.event,
        }));
        let targets = if self.limits.triggers_enabled {
            sink.matching(&ev.stream, &ev.group, ev.id.as_deref())
        } else {
            Vec::new()
        };
        if !targets.is_empty() {
            let (seq, lane) = match at {
                Some(x) => x,
                None => {
                    self.seq += 1;
                    let scope = keys::stream_scope(&ev.stream, &ev.group);
                    (
                        self.seq,
                        keys::data_key(&scope, ev.id.as_deref().unwrap_or("")),
                    )
                }
            };
            p.sync = true;
            self.add_to_outbox(p, seq, lane, envelope.clone(), targets);
        }
        p.envelopes.push(envelope);
    }

    fn add_to_outbox(
        &mut self,
        p: &mut Pending,
        seq: u64,
        lane: Vec<u8>,
        payload: Arc<Value>,
        targets: Vec<Arc<Target>>,
    ) {
        let bytes = serde_json::to_vec(payload.as_ref()).unwrap_or_default();
        p.batch
            .put(Space::OutboxEvents, seq.to_be_bytes().to_vec(), bytes);
        for t in &targets {
            let tb = serde_json::to_vec(t.as_ref()).unwrap_or_default();
            p.batch
                .put(Space::OutboxTargets, keys::seq_key(seq, &t.trigger_id), tb);
        }
        self.owed.insert(seq, targets.len() as u32);
        p.events.push(NewEvent {
            seq,
            lane: lane.into(),
            payload,
            targets,
        });
    }

    /// One owed delivery of `seq` is settled; drops the event record after the last one.
    fn release(&mut self, p: &mut Pending, seq: u64) {
        if let Some(n) = self.owed.get_mut(&seq) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.owed.remove(&seq);
                p.batch
                    .delete(Space::OutboxEvents, seq.to_be_bytes().to_vec());
            }
        }
    }

    fn discard(&mut self, p: &mut Pending, key: Option<Vec<u8>>) -> Result<u64, StoreError> {
        match key {
            Some(k) => {
                let existed = self.store.get(Space::DeadLetters, &k)?.is_some();
                if existed {
                    p.batch.delete(Space::DeadLetters, k);
                }
                Ok(existed as u64)
            }
            None => {
                let mut n = 0;
                for_each(
                    self.store.as_ref(),
                    Space::DeadLetters,
                    &[],
                    4096,
                    |k, _| {
                        p.batch.delete(Space::DeadLetters, k);
                        n += 1;
                        Ok(true)
                    },
                )?;
                Ok(n)
            }
        }
    }

    /// Deliveries the delivery stage could not hold in memory become dead letters at once.
    fn dead_letter_overflow(&mut self, overflow: Vec<(u64, Arc<Target>, Arc<Value>)>) {
        let mut p = Pending::default();
        for (seq, target, payload) in overflow {
            let k = keys::seq_key(seq, &target.trigger_id);
            let record = super::delivery::dead_letter_record(
                seq,
                &target,
                &payload,
                &trine_protocol::ErrorBody::new(
                    super::codes::TRIGGER_BACKLOG_FULL,
                    "the trigger's delivery backlog was full; the event was dead-lettered without an attempt",
                ),
                0,
            );
            p.batch.put(Space::DeadLetters, k.clone(), record);
            p.batch.delete(Space::OutboxTargets, k);
            self.release(&mut p, seq);
            self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = self.store.commit(p.batch, false) {
            tracing::error!(error = %e, "state store: could not record overflow dead letters (they will be redelivered after a restart)");
        }
    }

    fn reload_owed(&mut self) -> Result<(), StoreError> {
        if let Some(b) = self.store.get(Space::Meta, keys::META_SEQ)? {
            self.seq = self.seq.max(keys::decode_u64(&b)?);
        }
        let mut owed: HashMap<u64, u32> = HashMap::new();
        for_each(
            self.store.as_ref(),
            Space::OutboxTargets,
            &[],
            4096,
            |k, _| {
                let (s, _) = keys::split_seq_key(&k)?;
                *owed.entry(s).or_default() += 1;
                Ok(true)
            },
        )?;
        self.owed = owed;
        Ok(())
    }
}

/// Blocks for the next command, then takes every command already queued (up to `max`): one
/// group commit's worth. `None` once every sender is gone.
pub(crate) fn next_batch<T>(rx: &mut mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    let first = rx.blocking_recv()?;
    let mut cmds = Vec::with_capacity(64);
    cmds.push(first);
    while cmds.len() < max {
        match rx.try_recv() {
            Ok(c) => cmds.push(c),
            Err(_) => break,
        }
    }
    Some(cmds)
}

/// The delivery lane of a stored event: the data key of its state key or stream item.
fn lane_of(payload: &Value) -> Arc<[u8]> {
    if payload["type"] == "stream" {
        let scope = keys::stream_scope(
            payload["streamName"].as_str().unwrap_or_default(),
            payload["groupId"].as_str().unwrap_or_default(),
        );
        return keys::data_key(&scope, payload["id"].as_str().unwrap_or_default()).into();
    }
    let scope = payload["scope"].as_str().unwrap_or_default();
    let key = payload["key"].as_str().unwrap_or_default();
    keys::data_key(scope.as_bytes(), key).into()
}
