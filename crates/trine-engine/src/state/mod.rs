//! The state module: `state::set/get/delete/update/list/list_groups`, the `state` trigger type,
//! and dead-letter inspection (`engine::state::*`).
//!
//! Layout:
//! - [`keys`]: how records, insertion order, scopes and the outbox are laid out in the store;
//! - [`ops`]: the update operations (pure);
//! - [`committer`]: the single-threaded, group-committing write path (with the outbox);
//! - [`delivery`]: at-least-once, per-(trigger, key) ordered delivery with retries and dead letters;
//! - [`triggers`]: the `state` trigger type's index.
//!
//! Reads (`get`, `list`, `list_groups`) go straight to the store on the caller's task: they are
//! served from memory (in-memory adapter) or the storage engine's cache and never wait for a
//! writer. Writes go through the committer and are answered once committed. The delivery contract
//! is written down in `docs/state.md`.

pub mod bridge;
pub mod committer;
pub mod delivery;
pub mod keys;
pub mod ops;
pub mod triggers;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};
use trine_protocol::ErrorBody;
use trine_store::{for_each, Space, Store, StoreError};

use crate::builtins::bound;
use crate::engine::Engine;
use crate::worker::{lock, CallOutcome};
pub use committer::Address;
use committer::{
    Command, Committer, CommitterLimits, WriteError, WriteKind, WriteOutcome, WriteRequest,
};
use delivery::Delivery;
pub use delivery::DeliveryOptions;
use triggers::TriggerIndex;

/// Stable error codes of the state module.
pub mod codes {
    /// The payload does not decode (missing field, wrong type, bad op).
    pub const DESERIALIZATION_ERROR: &str = "deserialization_error";
    /// Empty scope, or longer than [`super::MAX_SCOPE_BYTES`].
    pub const INVALID_SCOPE: &str = "INVALID_SCOPE";
    /// Empty key, or longer than [`super::MAX_KEY_BYTES`].
    pub const INVALID_KEY: &str = "INVALID_KEY";
    /// The value (set) or the update's result is larger than `max_value_bytes`.
    pub const VALUE_TOO_LARGE: &str = "VALUE_TOO_LARGE";
    /// Compare-and-set: the key's version is not the expected one.
    pub const VERSION_CONFLICT: &str = "VERSION_CONFLICT";
    pub const SET_ERROR: &str = "SET_ERROR";
    pub const GET_ERROR: &str = "GET_ERROR";
    pub const DELETE_ERROR: &str = "DELETE_ERROR";
    pub const UPDATE_ERROR: &str = "UPDATE_ERROR";
    pub const LIST_ERROR: &str = "LIST_ERROR";
    pub const LIST_GROUPS_ERROR: &str = "LIST_GROUPS_ERROR";
    /// A delivery was dead-lettered without an attempt because the backlog was full.
    pub const TRIGGER_BACKLOG_FULL: &str = "trigger_backlog_full";
}

/// Longest scope, in UTF-8 bytes.
pub const MAX_SCOPE_BYTES: usize = 256;
/// Longest key, in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Settings of the state module.
#[derive(Debug, Clone)]
pub struct StateOptions {
    /// Largest value (compact JSON bytes) a set may store or an update may produce.
    pub max_value_bytes: usize,
    /// Global switch for trigger fan-out (iii's `triggers_enabled`).
    pub triggers_enabled: bool,
    pub delivery: DeliveryOptions,
    /// Write commands queued for the committer before writers wait.
    pub queue_capacity: usize,
    /// Register the `state::*` functions and the `state` trigger type (off when only streams
    /// use the store).
    pub functions: bool,
    /// Another engine of the group owns the data set: this engine only reads the store (for
    /// stream snapshots). Owed trigger deliveries are left to the owner and nothing is written.
    pub read_only: bool,
}

impl Default for StateOptions {
    fn default() -> Self {
        Self {
            max_value_bytes: 16 << 20,
            triggers_enabled: true,
            delivery: DeliveryOptions::default(),
            queue_capacity: 16_384,
            functions: true,
            read_only: false,
        }
    }
}

/// Counters exposed by `engine::state::stats`.
#[derive(Debug, Default)]
pub struct StateStats {
    pub writes: AtomicU64,
    pub batches: AtomicU64,
    pub batch_ops: AtomicU64,
    pub last_seq: AtomicU64,
    pub delivered: AtomicU64,
    pub skipped: AtomicU64,
    pub retries: AtomicU64,
    pub dead_lettered: AtomicU64,
}

/// The running state module.
pub struct StateModule {
    store: Arc<dyn Store>,
    tx: mpsc::Sender<Command>,
    delivery: Arc<Delivery>,
    triggers: Arc<TriggerIndex>,
    options: StateOptions,
    stats: Arc<StateStats>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    streams: committer::SinkSlot,
}

/// The JSON type name used in messages.
pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

pub(crate) fn de_error(fid: &str, detail: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(
        codes::DESERIALIZATION_ERROR,
        format!("Failed to deserialize input for {fid}: {detail}"),
    )
}

pub(crate) fn object<'a>(fid: &str, v: &'a Value) -> Result<&'a Map<String, Value>, ErrorBody> {
    v.as_object().ok_or_else(|| {
        de_error(
            fid,
            format!("invalid type: {}, expected an object", json_type(v)),
        )
    })
}

pub(crate) fn req_string(
    fid: &str,
    m: &Map<String, Value>,
    field: &str,
) -> Result<String, ErrorBody> {
    match m.get(field) {
        None => Err(de_error(fid, format!("missing field `{field}`"))),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(de_error(
            fid,
            format!(
                "invalid type for `{field}`: {}, expected a string",
                json_type(other)
            ),
        )),
    }
}

fn opt_version(fid: &str, m: &Map<String, Value>) -> Result<Option<u64>, ErrorBody> {
    match m.get("expected_version") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            de_error(
                fid,
                "`expected_version` must be a non-negative integer (0 = the key must not exist)",
            )
        }),
    }
}

fn opt_flag(fid: &str, m: &Map<String, Value>, field: &str) -> Result<bool, ErrorBody> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(de_error(
            fid,
            format!(
                "invalid type for `{field}`: {}, expected a boolean",
                json_type(other)
            ),
        )),
    }
}

fn check_scope(scope: &str) -> Result<(), ErrorBody> {
    if scope.is_empty() {
        return Err(ErrorBody::new(
            codes::INVALID_SCOPE,
            "scope must not be empty",
        ));
    }
    if scope.len() > MAX_SCOPE_BYTES {
        return Err(ErrorBody::new(
            codes::INVALID_SCOPE,
            format!(
                "scope is {} bytes long; the limit is {MAX_SCOPE_BYTES} bytes",
                scope.len()
            ),
        ));
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), ErrorBody> {
    if key.is_empty() {
        return Err(ErrorBody::new(codes::INVALID_KEY, "key must not be empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ErrorBody::new(
            codes::INVALID_KEY,
            format!(
                "key is {} bytes long; the limit is {MAX_KEY_BYTES} bytes",
                key.len()
            ),
        ));
    }
    Ok(())
}

fn scope_and_key(fid: &str, m: &Map<String, Value>) -> Result<(String, String), ErrorBody> {
    let scope = req_string(fid, m, "scope")?;
    let key = req_string(fid, m, "key")?;
    check_scope(&scope)?;
    check_key(&key)?;
    Ok((scope, key))
}

pub(crate) fn storage_error(code: &str, what: &str, e: impl std::fmt::Display) -> ErrorBody {
    tracing::error!(error = %e, "state storage failure ({what})");
    ErrorBody::new(code, format!("Failed to {what}: {e}"))
}

pub(crate) fn write_error(code: &str, e: WriteError) -> ErrorBody {
    match e {
        WriteError::VersionConflict { expected, current } => ErrorBody::new(
            codes::VERSION_CONFLICT,
            format!("expected version {expected}, but the key is at version {current}"),
        ),
        WriteError::ValueTooLarge { size, limit } => ErrorBody::new(
            codes::VALUE_TOO_LARGE,
            format!("value is {size} bytes; the limit is {limit} bytes (max_value_bytes)"),
        ),
        WriteError::Storage(msg) => ErrorBody::new(code, format!("Failed to write: {msg}")),
    }
}

impl StateModule {
    /// Recovers the module from `store` and starts its committer thread. Must be called from
    /// within the engine's Tokio runtime.
    fn open(
        engine: &Engine,
        store: Arc<dyn Store>,
        options: StateOptions,
    ) -> Result<Arc<Self>, StoreError> {
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let streams: committer::SinkSlot = Arc::default();
        let stats = Arc::new(StateStats::default());
        let triggers = Arc::new(TriggerIndex::default());
        let delivery = Arc::new(Delivery::new(
            engine.downgrade(),
            options.delivery.clone(),
            tx.clone(),
            stats.clone(),
            tokio::runtime::Handle::current(),
            engine.tasks().clone(),
            engine.shutdown_token().clone(),
        ));
        let (committer, recovered) = Committer::open(
            store.clone(),
            rx,
            triggers.clone(),
            delivery.clone(),
            stats.clone(),
            CommitterLimits {
                max_value_bytes: options.max_value_bytes,
                triggers_enabled: options.triggers_enabled,
                read_only: options.read_only,
            },
            streams.clone(),
        )?;
        if !recovered.is_empty() && !options.read_only {
            let n: usize = recovered.iter().map(|e| e.targets.len()).sum();
            tracing::info!(
                deliveries = n,
                "state: resuming trigger deliveries owed before the restart"
            );
            let overflow = delivery.submit(recovered);
            if !overflow.is_empty() {
                tracing::warn!(count = overflow.len(), "state: recovered deliveries exceed the backlog bound; they stay owed until the next restart");
            }
        }
        let thread = std::thread::Builder::new()
            .name("trine-state-committer".into())
            .spawn(move || committer.run())
            .map_err(StoreError::Io)?;
        Ok(Arc::new(StateModule {
            store,
            tx,
            delivery,
            triggers,
            options,
            stats,
            thread: Mutex::new(Some(thread)),
            streams,
        }))
    }

    /// The store this module writes to.
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Plugs the stream module into the committer (once).
    pub(crate) fn set_stream_sink(&self, sink: Arc<dyn committer::StreamSink>) -> bool {
        self.streams.set(sink).is_ok()
    }

    /// Queues an ephemeral stream event behind the writes already queued.
    pub(crate) async fn publish(&self, ev: committer::StreamPublish) -> Result<(), WriteError> {
        let (reply, rx) = oneshot::channel();
        let gone = || WriteError::Storage("the store is shut down".into());
        self.tx
            .send(Command::Publish(ev, Some(reply)))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    pub(crate) async fn write(
        &self,
        req: impl FnOnce(oneshot::Sender<Result<WriteOutcome, WriteError>>) -> WriteRequest,
    ) -> Result<WriteOutcome, WriteError> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Write(req(reply))).await.is_err() {
            return Err(WriteError::Storage("the state store is shut down".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(WriteError::Storage("the state store is shut down".into())))
    }

    async fn set(&self, v: Value) -> CallOutcome {
        const FID: &str = "state::set";
        let m = object(FID, &v)?;
        let value = match (m.get("value"), m.get("data")) {
            (Some(_), Some(_)) => {
                return Err(de_error(
                    FID,
                    "duplicate field `value` (`data` is its alias)",
                ))
            }
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (None, None) => return Err(de_error(FID, "missing field `value`")),
        };
        let (scope, key) = scope_and_key(FID, m)?;
        let expected_version = opt_version(FID, m)?;
        let meta = opt_flag(FID, m, "with_meta")? || expected_version.is_some();
        let json = serde_json::to_vec(&value).map_err(|e| de_error(FID, e))?;
        if json.len() > self.options.max_value_bytes {
            return Err(write_error(
                codes::SET_ERROR,
                WriteError::ValueTooLarge {
                    size: json.len(),
                    limit: self.options.max_value_bytes,
                },
            ));
        }
        let out = self
            .write(|reply| WriteRequest {
                addr: Address::State { scope, key },
                kind: WriteKind::Set { value, json },
                expected_version,
                reply,
            })
            .await
            .map_err(|e| write_error(codes::SET_ERROR, e))?;
        let mut r = json!({
            "old_value": out.old_value.unwrap_or(Value::Null),
            "new_value": out.new_value.unwrap_or(Value::Null),
        });
        if meta {
            r["version"] = json!(out.version);
        }
        Ok(Some(r))
    }

    async fn update(&self, v: Value) -> CallOutcome {
        const FID: &str = "state::update";
        let m = object(FID, &v)?;
        let ops_value = m
            .get("ops")
            .ok_or_else(|| de_error(FID, "missing field `ops`"))?;
        let ops = ops::decode_ops(ops_value).map_err(|e| de_error(FID, e))?;
        let (scope, key) = scope_and_key(FID, m)?;
        let expected_version = opt_version(FID, m)?;
        let meta = opt_flag(FID, m, "with_meta")? || expected_version.is_some();
        let out = self
            .write(|reply| WriteRequest {
                addr: Address::State { scope, key },
                kind: WriteKind::Update { ops },
                expected_version,
                reply,
            })
            .await
            .map_err(|e| write_error(codes::UPDATE_ERROR, e))?;
        let mut r = json!({
            "old_value": out.old_value.unwrap_or(Value::Null),
            "new_value": out.new_value.unwrap_or(Value::Null),
        });
        if !out.errors.is_empty() {
            r["errors"] = Value::Array(out.errors.iter().map(|e| e.to_json()).collect());
        }
        if meta {
            r["version"] = json!(out.version);
        }
        Ok(Some(r))
    }

    async fn delete(&self, v: Value) -> CallOutcome {
        const FID: &str = "state::delete";
        let m = object(FID, &v)?;
        let (scope, key) = scope_and_key(FID, m)?;
        let expected_version = opt_version(FID, m)?;
        let meta = opt_flag(FID, m, "with_meta")? || expected_version.is_some();
        let out = self
            .write(|reply| WriteRequest {
                addr: Address::State { scope, key },
                kind: WriteKind::Delete,
                expected_version,
                reply,
            })
            .await
            .map_err(|e| write_error(codes::DELETE_ERROR, e))?;
        let old = out.old_value.unwrap_or(Value::Null);
        Ok(Some(if meta {
            json!({"old_value": old, "version": out.version})
        } else {
            old
        }))
    }

    async fn get(&self, v: &Value) -> CallOutcome {
        const FID: &str = "state::get";
        let m = object(FID, v)?;
        let (scope, key) = scope_and_key(FID, m)?;
        let meta = opt_flag(FID, m, "with_meta")?;
        let (value, version) = keys::read_value_async(
            self.store.as_ref(),
            Space::StateData,
            keys::data_key(scope.as_bytes(), &key),
        )
        .await
        .map_err(|e| storage_error(codes::GET_ERROR, "get value", e))?
        .unwrap_or((Value::Null, 0));
        Ok(Some(if meta {
            json!({"value": value, "version": version})
        } else {
            value
        }))
    }

    fn list(&self, v: &Value) -> CallOutcome {
        const FID: &str = "state::list";
        let m = object(FID, v)?;
        let scope = req_string(FID, m, "scope")?;
        check_scope(&scope)?;
        let values = keys::read_scope(
            self.store.as_ref(),
            Space::StateOrder,
            Space::StateData,
            scope.as_bytes(),
        )
        .map_err(|e| storage_error(codes::LIST_ERROR, "list values", e))?;
        Ok(Some(Value::Array(values)))
    }

    fn list_groups(&self, v: &Value) -> CallOutcome {
        const FID: &str = "state::list_groups";
        object(FID, v)?;
        let err = |e: StoreError| storage_error(codes::LIST_GROUPS_ERROR, "list groups", e);
        let mut groups = Vec::new();
        for_each(
            self.store.as_ref(),
            Space::StateGroups,
            &[],
            1024,
            |k, _| {
                groups.push(Value::String(String::from_utf8_lossy(&k).into_owned()));
                Ok(true)
            },
        )
        .map_err(err)?;
        Ok(Some(json!({ "groups": groups })))
    }

    fn dead_letters_list(&self, v: &Value) -> CallOutcome {
        const FID: &str = "engine::state::dead_letters::list";
        let m = if v.is_null() { &EMPTY } else { object(FID, v)? };
        let filter = |field: &str| -> Result<Option<String>, ErrorBody> {
            match m.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(de_error(
                    FID,
                    format!(
                        "invalid type for `{field}`: {}, expected a string",
                        json_type(other)
                    ),
                )),
            }
        };
        let trigger_id = filter("trigger_id")?;
        let function_id = filter("function_id")?;
        let limit = match m.get("limit") {
            None | Some(Value::Null) => 1000,
            Some(l) => l
                .as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| de_error(FID, "`limit` must be a positive integer"))?
                as usize,
        };
        let err = |e: StoreError| storage_error(codes::LIST_ERROR, "list dead letters", e);
        let mut out = Vec::new();
        for_each(
            self.store.as_ref(),
            Space::DeadLetters,
            &[],
            1024,
            |_, bytes| {
                let Ok(rec) = serde_json::from_slice::<Value>(&bytes) else {
                    return Ok(true);
                };
                let wanted = trigger_id.as_deref().is_none_or(|t| rec["trigger_id"] == t)
                    && function_id
                        .as_deref()
                        .is_none_or(|f| rec["function_id"] == f);
                if wanted {
                    out.push(rec);
                }
                Ok(out.len() < limit)
            },
        )
        .map_err(err)?;
        Ok(Some(json!({ "dead_letters": out })))
    }

    async fn dead_letters_discard(&self, v: &Value) -> CallOutcome {
        const FID: &str = "engine::state::dead_letters::discard";
        let m = object(FID, v)?;
        let key = if opt_flag(FID, m, "all")? {
            None
        } else {
            let id = req_string(FID, m, "id")?;
            let (seq, trigger) = id.split_once(':').ok_or_else(|| {
                de_error(FID, "`id` must be a dead letter id (`<seq>:<trigger id>`)")
            })?;
            let seq: u64 = seq
                .parse()
                .map_err(|_| de_error(FID, "`id` must start with the sequence number"))?;
            Some(keys::seq_key(seq, trigger))
        };
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Discard { key, reply })
            .await
            .map_err(|_| ErrorBody::new(codes::DELETE_ERROR, "the state store is shut down"))?;
        let n = rx
            .await
            .map_err(|_| ErrorBody::new(codes::DELETE_ERROR, "the state store is shut down"))?
            .map_err(|e| storage_error(codes::DELETE_ERROR, "discard dead letters", e))?;
        Ok(Some(json!({ "removed": n > 0, "count": n })))
    }

    fn stats_json(&self) -> Value {
        let s = &self.stats;
        let info = self.store.info();
        let batches = s.batches.load(Ordering::Relaxed);
        json!({
            "adapter": info.adapter,
            "durable": info.durable,
            "path": info.path.map(|p| p.display().to_string()),
            "last_seq": s.last_seq.load(Ordering::Relaxed),
            "writes": s.writes.load(Ordering::Relaxed),
            "batches": batches,
            "batch_ops": s.batch_ops.load(Ordering::Relaxed),
            "triggers": self.triggers.count(),
            "trigger_registrations": self.triggers.registrations(),
            "pending_deliveries": self.delivery.pending(),
            "delivered": s.delivered.load(Ordering::Relaxed),
            "skipped_by_condition": s.skipped.load(Ordering::Relaxed),
            "retries": s.retries.load(Ordering::Relaxed),
            "dead_lettered": s.dead_lettered.load(Ordering::Relaxed),
        })
    }

    /// Finishes queued writes, makes everything durable and stops the committer thread.
    pub async fn stop(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Stop { reply }).await.is_ok() {
            let _ = rx.await;
        }
        let handle = lock(&self.thread).take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

/// Opens the state module on `store` and registers its functions and trigger type.
pub(crate) fn install(
    engine: &Engine,
    store: Arc<dyn Store>,
    options: StateOptions,
) -> Result<Arc<StateModule>, StoreError> {
    let functions = options.functions;
    let module = StateModule::open(engine, store, options)?;
    if !functions {
        return Ok(module);
    }
    let m = &module;
    let functions = [
        (
            "state::set",
            "Set a value in state",
            bound(m, |m, v| async move { m.set(v).await }),
        ),
        (
            "state::get",
            "Get a value from state",
            bound(m, |m, v| async move { m.get(&v).await }),
        ),
        (
            "state::delete",
            "Delete a value from state",
            bound(m, |m, v| async move { m.delete(v).await }),
        ),
        (
            "state::update",
            "Update a value in state",
            bound(m, |m, v| async move { m.update(v).await }),
        ),
        (
            "state::list",
            "Get a group from state",
            bound(m, |m, v| async move { m.list(&v) }),
        ),
        (
            "state::list_groups",
            "List all state groups",
            bound(m, |m, v| async move { m.list_groups(&v) }),
        ),
        (
            "engine::state::dead_letters::list",
            "List state trigger deliveries that exhausted their attempts",
            bound(m, |m, v| async move { m.dead_letters_list(&v) }),
        ),
        (
            "engine::state::dead_letters::discard",
            "Remove one dead letter (`id`) or all (`all: true`)",
            bound(m, |m, v| async move { m.dead_letters_discard(&v).await }),
        ),
        (
            "engine::state::stats",
            "State store and trigger delivery counters",
            bound(m, |m, _| async move { Ok(Some(m.stats_json())) }),
        ),
    ];
    let mut reg = engine.registry();
    for (id, description, f) in functions {
        reg.add_builtin(id, description, f);
    }
    reg.add_builtin_trigger_type("state", "State trigger", module.triggers.clone());
    drop(reg);
    Ok(module)
}
