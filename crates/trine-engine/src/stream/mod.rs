//! The stream module: stored stream items (`stream::set/get/delete/list/list_groups/list_all/
//! update`), ephemeral events (`stream::send`), the `stream`, `stream:join` and `stream:leave`
//! trigger types, and the subscription API the stream WebSocket server uses.
//!
//! Layout:
//! - [`hub`]: per-group sequence numbers and epochs, the retention log for resume, fan-out to
//!   bounded client queues (slow consumers are cut off with their resume point);
//! - [`mirror`]: the owner engine's frames carried to follower engines through a Redis stream,
//!   so clients get the same `seq` and `epoch` on every engine;
//! - [`triggers`]: the three trigger types.
//!
//! Items are stored through the state module's committer (same store, same group commit, same
//! outbox), so a stream write is durable when acknowledged and its envelope is published after
//! the commit, in commit order. Worker-provided stream implementations (`stream::get(<name>)`
//! etc., registered by the SDKs' `createStream`) take over storage for their stream.
//!
//! When several engines share one data set, only the owner publishes: its hub's frames are
//! mirrored ([`MirrorRole::Writer`]) to the followers' hubs ([`MirrorRole::Reader`]), which
//! serve their own WebSocket clients and leave the `stream::*` functions to the owner.

pub mod hub;
pub mod mirror;
pub mod triggers;

use std::sync::Arc;

use serde_json::{json, Map, Value};
use trine_protocol::ErrorBody;
use trine_store::{for_each, Space, StoreError};

use crate::builtins::{bound, BuiltinFn};
use crate::engine::{Call, Caller, Engine, WeakEngine};
use crate::registry::{Handler, Registry};
use crate::state::committer::{Address, StreamPublish, StreamSink, WriteKind, WriteRequest};
use crate::state::delivery::Target;
use crate::state::{
    de_error, json_type, keys, object, ops, req_string, storage_error, write_error, StateModule,
};
use crate::worker::{now_ms, CallOutcome};
pub use hub::{Attach, ClientQueue, Frame, HubOptions, Mirrored, Next, Resume, StreamHub};
pub use mirror::{MirrorReader, MirrorWriter};
use triggers::{JoinLeaveIndex, StreamTriggerIndex};

/// Stable error codes of the stream module.
pub mod codes {
    pub const STREAM_SET_ERROR: &str = "STREAM_SET_ERROR";
    pub const STREAM_GET_ERROR: &str = "STREAM_GET_ERROR";
    pub const STREAM_DELETE_ERROR: &str = "STREAM_DELETE_ERROR";
    pub const STREAM_GET_GROUP_ERROR: &str = "STREAM_GET_GROUP_ERROR";
    pub const STREAM_LIST_GROUPS_ERROR: &str = "STREAM_LIST_GROUPS_ERROR";
    pub const STREAM_LIST_ALL_ERROR: &str = "STREAM_LIST_ALL_ERROR";
    pub const STREAM_SEND_ERROR: &str = "STREAM_SEND_ERROR";
    pub const STREAM_UPDATE_ERROR: &str = "STREAM_UPDATE_ERROR";
    /// A worker-provided stream implementation returned a result of the wrong shape.
    pub const JSON_ERROR: &str = "JSON_ERROR";
    /// Empty or too long stream name, group id or item id.
    pub const INVALID_STREAM_ADDRESS: &str = "INVALID_STREAM_ADDRESS";
    /// The auth function refused the connection (or failed).
    pub const UNAUTHORIZED: &str = "UNAUTHORIZED";
}

/// Longest stream name or group id, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest item id, in bytes.
pub const MAX_ITEM_BYTES: usize = 1024;

/// Settings of the stream module.
#[derive(Debug, Clone, Default)]
pub struct StreamOptions {
    pub hub: HubOptions,
    /// Function that authenticates new client connections (`iii-stream.auth_function`).
    pub auth_function: Option<String>,
    /// This engine's side of the mirror between engines sharing one data set; `None` when the
    /// engine serves its clients alone.
    pub mirror: Option<MirrorRole>,
}

/// An engine's side of the stream mirror ([`mirror`]).
#[derive(Debug, Clone)]
pub enum MirrorRole {
    /// The owner engine (the only writer): every frame its hub publishes goes to the writer.
    Writer(Arc<MirrorWriter>),
    /// A follower: its hub applies the owner's frames read from the Redis stream `key`. It
    /// publishes nothing itself, so the `stream::*` functions and the `stream` trigger type
    /// are left to the owner (the module registers only the stats function and the
    /// `stream:join` / `stream:leave` trigger types).
    Reader { redis_url: String, key: String },
}

/// One subscription as seen by join/leave triggers.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub subscription_id: String,
    pub stream_name: String,
    pub group_id: String,
    pub id: Option<String>,
}

impl Subscription {
    fn payload(&self, context: &Value) -> Value {
        json!({
            "subscription_id": self.subscription_id,
            "stream_name": self.stream_name,
            "group_id": self.group_id,
            "id": self.id,
            "context": context,
        })
    }
}

/// The running stream module.
pub struct StreamModule {
    core: Arc<StateModule>,
    hub: Arc<StreamHub>,
    triggers: Arc<StreamTriggerIndex>,
    joins: Arc<JoinLeaveIndex>,
    leaves: Arc<JoinLeaveIndex>,
    engine: WeakEngine,
    options: StreamOptions,
    /// On a follower: feeds the hub from the owner's frames (stopped when the module drops).
    reader: Option<MirrorReader>,
}

struct Sink {
    triggers: Arc<StreamTriggerIndex>,
    hub: Arc<StreamHub>,
    /// The owner's mirror writer.
    writer: Option<Arc<MirrorWriter>>,
    /// A follower's hub takes only the owner's frames: its own publishing would interleave
    /// sequence numbers the owner never assigned.
    follower: bool,
}

impl StreamSink for Sink {
    fn matching(&self, stream: &str, group: &str, id: Option<&str>) -> Vec<Arc<Target>> {
        self.triggers.matching(stream, group, id)
    }

    fn publish(&self, envelopes: Vec<Arc<Value>>) {
        if self.follower {
            tracing::warn!(
                envelopes = envelopes.len(),
                "stream envelopes committed on a follower engine are not published (its hub mirrors the owner)"
            );
            return;
        }
        let frames = self.hub.publish(envelopes);
        if let Some(w) = &self.writer {
            w.send(frames);
        }
    }
}

fn check_name(fid: &str, what: &str, v: &str, max: usize) -> Result<(), ErrorBody> {
    if v.is_empty() || v.len() > max {
        return Err(ErrorBody::new(
            codes::INVALID_STREAM_ADDRESS,
            format!(
                "{fid}: `{what}` must be 1 to {max} bytes long (got {} bytes)",
                v.len()
            ),
        ));
    }
    Ok(())
}

fn stream_group(fid: &str, m: &Map<String, Value>) -> Result<(String, String), ErrorBody> {
    let stream = req_string(fid, m, "stream_name")?;
    let group = req_string(fid, m, "group_id")?;
    check_name(fid, "stream_name", &stream, MAX_NAME_BYTES)?;
    check_name(fid, "group_id", &group, MAX_NAME_BYTES)?;
    Ok((stream, group))
}

fn item_address(fid: &str, m: &Map<String, Value>) -> Result<(String, String, String), ErrorBody> {
    let (stream, group) = stream_group(fid, m)?;
    let item = req_string(fid, m, "item_id")?;
    check_name(fid, "item_id", &item, MAX_ITEM_BYTES)?;
    Ok((stream, group, item))
}

impl StreamModule {
    pub fn hub(&self) -> &Arc<StreamHub> {
        &self.hub
    }

    /// The `stream:join` triggers (this engine's, and those announced by a group's engines).
    pub fn joins(&self) -> &Arc<JoinLeaveIndex> {
        &self.joins
    }

    /// The `stream:leave` triggers.
    pub fn leaves(&self) -> &Arc<JoinLeaveIndex> {
        &self.leaves
    }

    fn engine(&self) -> Result<Engine, ErrorBody> {
        self.engine
            .upgrade()
            .ok_or_else(|| ErrorBody::new(codes::STREAM_SET_ERROR, "the engine is shutting down"))
    }

    /// The worker-provided implementation of `op` for `stream`, if one is registered.
    fn override_of(&self, op: &str, stream: &str) -> Option<String> {
        let engine = self.engine.upgrade()?;
        let id = format!("stream::{op}({stream})");
        let reg = engine.registry();
        match reg.functions.get(&id).map(|e| &e.handler) {
            Some(Handler::Worker(_)) => Some(id),
            _ => None,
        }
    }

    async fn call_override(&self, id: String, v: Value) -> CallOutcome {
        self.engine()?
            .invoke(Call::new(id, v, Caller::Engine))
            .await
    }

    fn read_item(&self, stream: &str, group: &str, item: &str) -> Result<Value, StoreError> {
        let scope = keys::stream_scope(stream, group);
        let v = keys::read_value(
            self.core.store().as_ref(),
            Space::StreamData,
            &keys::data_key(&scope, item),
        )?;
        Ok(v.map_or(Value::Null, |(v, _)| v))
    }

    fn read_group(&self, stream: &str, group: &str) -> Result<Vec<Value>, StoreError> {
        keys::read_scope(
            self.core.store().as_ref(),
            Space::StreamOrder,
            Space::StreamData,
            &keys::stream_scope(stream, group),
        )
    }

    /// Publishes an envelope for a change made by a worker-provided implementation.
    async fn publish_change(&self, stream: String, group: String, item: String, event: Value) {
        let _ = self
            .core
            .publish(StreamPublish {
                stream,
                group,
                id: Some(item),
                event,
            })
            .await;
    }

    /// Runs a worker-provided `set`/`update` and publishes the change it reports.
    async fn override_write(
        &self,
        id: String,
        v: Value,
        code: &str,
        what: &str,
        (stream, group, item): (String, String, String),
    ) -> CallOutcome {
        let r = self.call_override(id, v).await.map_err(|e| {
            ErrorBody::new(
                code,
                format!(
                    "Failed to {what} value: Failed to invoke function: {}",
                    e.message
                ),
            )
        })?;
        let Some(r) = r.filter(|r| !r.is_null()) else {
            return Err(ErrorBody::new(code, "Function returned no result"));
        };
        let (Some(old), Some(new)) = (r.get("old_value"), r.get("new_value")) else {
            return Err(ErrorBody::new(
                codes::JSON_ERROR,
                "Failed to convert result to value: expected {old_value, new_value}",
            ));
        };
        let kind = if old.is_null() { "create" } else { "update" };
        self.publish_change(stream, group, item, json!({"type": kind, "data": new}))
            .await;
        Ok(Some(r))
    }

    async fn set(&self, v: Value) -> CallOutcome {
        const FID: &str = "stream::set";
        let m = object(FID, &v)?;
        let (stream, group, item) = item_address(FID, m)?;
        let data = m
            .get("data")
            .cloned()
            .ok_or_else(|| de_error(FID, "missing field `data`"))?;
        if let Some(id) = self.override_of("set", &stream) {
            let code = codes::STREAM_SET_ERROR;
            return self
                .override_write(id, v.clone(), code, "set", (stream, group, item))
                .await;
        }
        let json = serde_json::to_vec(&data).map_err(|e| de_error(FID, e))?;
        let out = self
            .core
            .write(|reply| WriteRequest {
                addr: Address::Stream {
                    stream,
                    group,
                    item,
                },
                kind: WriteKind::Set { value: data, json },
                expected_version: None,
                reply,
            })
            .await
            .map_err(|e| write_error(codes::STREAM_SET_ERROR, e))?;
        Ok(Some(json!({
            "old_value": out.old_value.unwrap_or(Value::Null),
            "new_value": out.new_value.unwrap_or(Value::Null),
        })))
    }

    async fn get(&self, v: Value) -> CallOutcome {
        const FID: &str = "stream::get";
        let m = object(FID, &v)?;
        let (stream, group, item) = item_address(FID, m)?;
        if let Some(id) = self.override_of("get", &stream) {
            return self.call_override(id, v.clone()).await;
        }
        self.read_item(&stream, &group, &item)
            .map(Some)
            .map_err(|e| storage_error(codes::STREAM_GET_ERROR, "get value", e))
    }

    async fn delete(&self, v: Value) -> CallOutcome {
        const FID: &str = "stream::delete";
        let m = object(FID, &v)?;
        let (stream, group, item) = item_address(FID, m)?;
        if let Some(id) = self.override_of("delete", &stream) {
            let r = self.call_override(id, v.clone()).await.map_err(|e| {
                ErrorBody::new(
                    codes::STREAM_DELETE_ERROR,
                    format!(
                        "Failed to delete value: Failed to invoke function: {}",
                        e.message
                    ),
                )
            })?;
            let Some(r) = r.filter(|r| !r.is_null()) else {
                return Err(ErrorBody::new(
                    codes::STREAM_DELETE_ERROR,
                    "Function returned no result",
                ));
            };
            let old = r.get("old_value").cloned().unwrap_or(Value::Null);
            if !old.is_null() {
                self.publish_change(stream, group, item, json!({"type": "delete", "data": old}))
                    .await;
            }
            return Ok(Some(json!({ "old_value": old })));
        }
        let out = self
            .core
            .write(|reply| WriteRequest {
                addr: Address::Stream {
                    stream,
                    group,
                    item,
                },
                kind: WriteKind::Delete,
                expected_version: None,
                reply,
            })
            .await
            .map_err(|e| write_error(codes::STREAM_DELETE_ERROR, e))?;
        Ok(Some(
            json!({ "old_value": out.old_value.unwrap_or(Value::Null) }),
        ))
    }

    async fn update(&self, v: Value) -> CallOutcome {
        const FID: &str = "stream::update";
        let m = object(FID, &v)?;
        let ops_value = m
            .get("ops")
            .ok_or_else(|| de_error(FID, "missing field `ops`"))?;
        let ops = ops::decode_ops(ops_value).map_err(|e| de_error(FID, e))?;
        let (stream, group, item) = item_address(FID, m)?;
        if let Some(id) = self.override_of("update", &stream) {
            let code = codes::STREAM_UPDATE_ERROR;
            return self
                .override_write(id, v.clone(), code, "update", (stream, group, item))
                .await;
        }
        let out = self
            .core
            .write(|reply| WriteRequest {
                addr: Address::Stream {
                    stream,
                    group,
                    item,
                },
                kind: WriteKind::Update { ops },
                expected_version: None,
                reply,
            })
            .await
            .map_err(|e| write_error(codes::STREAM_UPDATE_ERROR, e))?;
        let mut r = json!({
            "old_value": out.old_value.unwrap_or(Value::Null),
            "new_value": out.new_value.unwrap_or(Value::Null),
        });
        if !out.errors.is_empty() {
            r["errors"] = Value::Array(out.errors.iter().map(|e| e.to_json()).collect());
        }
        Ok(Some(r))
    }

    async fn list(&self, v: Value) -> CallOutcome {
        const FID: &str = "stream::list";
        let m = object(FID, &v)?;
        let (stream, group) = stream_group(FID, m)?;
        if let Some(id) = self.override_of("list", &stream) {
            return self.call_override(id, v.clone()).await;
        }
        self.read_group(&stream, &group)
            .map(|vals| Some(Value::Array(vals)))
            .map_err(|e| storage_error(codes::STREAM_GET_GROUP_ERROR, "list values", e))
    }

    async fn list_groups(&self, v: Value) -> CallOutcome {
        const FID: &str = "stream::list_groups";
        let m = object(FID, &v)?;
        let stream = req_string(FID, m, "stream_name")?;
        check_name(FID, "stream_name", &stream, MAX_NAME_BYTES)?;
        if let Some(id) = self.override_of("list_groups", &stream) {
            return self.call_override(id, v.clone()).await;
        }
        let err = |e| storage_error(codes::STREAM_LIST_GROUPS_ERROR, "list groups", e);
        let mut groups = Vec::new();
        let prefix = keys::stream_prefix(&stream);
        for_each(
            self.core.store().as_ref(),
            Space::StreamGroups,
            &prefix,
            1024,
            |k, _| {
                if let Some((_, g)) = keys::split_stream_scope(&k) {
                    groups.push(Value::String(g));
                }
                Ok(true)
            },
        )
        .map_err(err)?;
        Ok(Some(Value::Array(groups)))
    }

    fn list_all(&self, v: &Value) -> CallOutcome {
        const FID: &str = "stream::list_all";
        object(FID, v)?;
        let err = |e| storage_error(codes::STREAM_LIST_ALL_ERROR, "list streams", e);
        let mut streams: Vec<(String, Vec<String>)> = Vec::new();
        for_each(
            self.core.store().as_ref(),
            Space::StreamGroups,
            &[],
            1024,
            |k, _| {
                if let Some((s, g)) = keys::split_stream_scope(&k) {
                    match streams.last_mut() {
                        Some((last, groups)) if *last == s => groups.push(g),
                        _ => streams.push((s, vec![g])),
                    }
                }
                Ok(true)
            },
        )
        .map_err(err)?;
        // Keys sort by length-prefixed name; the listing is by name.
        streams.sort_by(|a, b| a.0.cmp(&b.0));
        let count = streams.len();
        let list: Vec<Value> = streams
            .into_iter()
            .map(|(id, groups)| json!({"id": id, "groups": groups}))
            .collect();
        Ok(Some(json!({"stream": list, "count": count})))
    }

    async fn send(&self, v: Value) -> CallOutcome {
        const FID: &str = "stream::send";
        let m = object(FID, &v)?;
        let (stream, group) = stream_group(FID, m)?;
        let name = match (m.get("type"), m.get("event_type")) {
            (Some(Value::String(t)), _) => t.clone(),
            (Some(Value::Null) | None, Some(Value::String(t))) => t.clone(),
            (Some(Value::Null) | None, None | Some(Value::Null)) => "message".to_owned(),
            (Some(other), _) | (_, Some(other)) => {
                return Err(de_error(
                    FID,
                    format!(
                        "invalid type for `type`: {}, expected a string",
                        json_type(other)
                    ),
                ))
            }
        };
        let id = match m.get("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(de_error(
                    FID,
                    format!(
                        "invalid type for `id`: {}, expected a string",
                        json_type(other)
                    ),
                ))
            }
        };
        let data = m
            .get("data")
            .cloned()
            .ok_or_else(|| de_error(FID, "missing field `data`"))?;
        self.core
            .publish(StreamPublish {
                stream,
                group,
                id,
                event: json!({"type": "event", "event": {"type": name, "data": data}}),
            })
            .await
            .map_err(|e| write_error(codes::STREAM_SEND_ERROR, e))?;
        Ok(None)
    }

    // ----- the client-socket API ------------------------------------------------------------

    /// Runs `auth_function` (if configured) for a new connection. `Ok(context)` admits it;
    /// a failure of the function, `false`, or `{unauthorized: true}` refuses it (Trine fails
    /// closed where iii failed open).
    /// `input` builds the function's input; it is only called when an auth function is set.
    pub async fn authenticate(&self, input: impl FnOnce() -> Value) -> Result<Value, ErrorBody> {
        let Some(fid) = &self.options.auth_function else {
            return Ok(Value::Null);
        };
        let input = input();
        let out = self
            .engine()?
            .invoke(Call::new(fid.clone(), input, Caller::Engine))
            .await
            .map_err(|e| {
                tracing::warn!(auth_function = %fid, code = %e.code, error = %e.message, "stream auth function failed; connection refused");
                ErrorBody::new(codes::UNAUTHORIZED, format!("authentication failed: {}", e.message))
            })?;
        match out {
            Some(Value::Bool(false)) => Err(ErrorBody::new(
                codes::UNAUTHORIZED,
                "connection refused by the auth function",
            )),
            Some(v) if v.get("unauthorized") == Some(&Value::Bool(true)) => Err(ErrorBody::new(
                codes::UNAUTHORIZED,
                "connection refused by the auth function",
            )),
            Some(v) => Ok(v.get("context").cloned().unwrap_or(Value::Null)),
            None => Ok(Value::Null),
        }
    }

    /// Runs the `stream:join` triggers for a subscription (those whose `stream_name` matches
    /// and whose condition passes), one after another. Returns false if any refused it with
    /// `{unauthorized: true}`.
    pub async fn authorize_join(&self, sub: &Subscription, context: &Value) -> bool {
        let Some(engine) = self.engine.upgrade() else {
            return false;
        };
        let payload = sub.payload(context);
        for t in self.joins.for_stream(&sub.stream_name) {
            if !self.condition(&engine, &t, &payload).await {
                continue;
            }
            let mut call = Call::new(t.function_id.clone(), payload.clone(), Caller::Engine);
            call.metadata = t.metadata.clone();
            match engine.invoke(call).await {
                Ok(Some(v)) if v.get("unauthorized") == Some(&Value::Bool(true)) => return false,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(trigger_id = %t.id, code = %e.code, error = %e.message, "stream:join handler failed (join admitted)")
                }
            }
        }
        true
    }

    /// Runs the `stream:leave` triggers for a subscription.
    pub async fn run_leave(&self, sub: &Subscription, context: &Value) {
        let Some(engine) = self.engine.upgrade() else {
            return;
        };
        let payload = sub.payload(context);
        for t in self.leaves.for_stream(&sub.stream_name) {
            if !self.condition(&engine, &t, &payload).await {
                continue;
            }
            let mut call = Call::new(t.function_id.clone(), payload.clone(), Caller::Engine);
            call.metadata = t.metadata.clone();
            if let Err(e) = engine.invoke(call).await {
                tracing::warn!(trigger_id = %t.id, code = %e.code, error = %e.message, "stream:leave handler failed");
            }
        }
    }

    async fn condition(
        &self,
        engine: &Engine,
        t: &triggers::JoinLeaveTrigger,
        payload: &Value,
    ) -> bool {
        let Some(cond) = &t.condition_function_id else {
            return true;
        };
        match engine
            .invoke(Call::new(cond.clone(), payload.clone(), Caller::Engine))
            .await
        {
            Ok(out) => out != Some(Value::Bool(false)),
            Err(e) => {
                tracing::warn!(trigger_id = %t.id, code = %e.code, error = %e.message, "stream join/leave condition failed; trigger skipped");
                false
            }
        }
    }

    /// The current contents for a `sync` envelope: the item's value, or the group's values.
    pub async fn snapshot(&self, stream: &str, group: &str, item: Option<&str>) -> Value {
        let (op, args) = match item {
            Some(i) => (
                "get",
                json!({"stream_name": stream, "group_id": group, "item_id": i}),
            ),
            None => ("list", json!({"stream_name": stream, "group_id": group})),
        };
        if let Some(id) = self.override_of(op, stream) {
            return self
                .call_override(id, args)
                .await
                .ok()
                .flatten()
                .unwrap_or(Value::Null);
        }
        let read = match item {
            Some(i) => self.read_item(stream, group, i),
            None => self.read_group(stream, group).map(Value::Array),
        };
        read.unwrap_or_else(|e| {
            tracing::error!(error = %e, "stream snapshot read failed");
            Value::Null
        })
    }

    /// Envelope of a client-specific event (`sync`, `unauthorized`).
    pub fn envelope(stream: &str, group: &str, id: Option<&str>, event: Value) -> Value {
        json!({
            "type": "stream",
            "timestamp": now_ms(),
            "streamName": stream,
            "groupId": group,
            "id": id,
            "event": event,
        })
    }

    fn stats_json(&self) -> Value {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.hub.stats;
        let mut out = json!({
            "clients": s.clients.load(Relaxed),
            "subscriptions": self.hub.subscriptions(),
            "published": s.published.load(Relaxed),
            "deliveries": s.deliveries.load(Relaxed),
            "slow_consumer_disconnects": s.slow_consumer_disconnects.load(Relaxed),
            "mirror_resets": s.mirror_resets.load(Relaxed),
            "resumes": s.resumes.load(Relaxed),
            "snapshots": s.snapshots.load(Relaxed),
            "stream_triggers": self.triggers.count(),
            "client_queue_bytes": self.hub.options().client_queue_bytes,
            "retention_events": self.hub.options().retention_events,
        });
        let mirror = match (&self.options.mirror, &self.reader) {
            (_, Some(r)) => Some(r.stats_json()),
            (Some(MirrorRole::Writer(w)), None) => Some(w.stats_json()),
            _ => None,
        };
        if let Some(m) = mirror {
            out["mirror"] = m;
        }
        out
    }
}

/// Enables the stream module on top of the state module's store and committer, and registers
/// its functions and trigger types. A follower ([`MirrorRole::Reader`]) starts its mirror
/// reader and registers only `engine::streams::stats` and the `stream:join` / `stream:leave`
/// trigger types; its snapshots are still read from the core store (the shared one).
pub(crate) fn install(
    engine: &Engine,
    core: Arc<StateModule>,
    options: StreamOptions,
) -> Result<Arc<StreamModule>, String> {
    let hub = Arc::new(StreamHub::new(options.hub.clone()));
    let triggers = Arc::new(StreamTriggerIndex::default());
    let (writer, follow) = match &options.mirror {
        Some(MirrorRole::Writer(w)) => (Some(w.clone()), None),
        Some(MirrorRole::Reader { redis_url, key }) => (None, Some((redis_url, key))),
        None => (None, None),
    };
    // Started before the sink is plugged in, so a failed start leaves the module installable.
    let reader = match follow {
        Some((url, key)) => Some(MirrorReader::start(url, key.clone(), hub.clone())?),
        None => None,
    };
    let follower = reader.is_some();
    if !core.set_stream_sink(Arc::new(Sink {
        triggers: triggers.clone(),
        hub: hub.clone(),
        writer,
        follower,
    })) {
        return Err("the stream module is already enabled".into());
    }
    let module = Arc::new(StreamModule {
        core,
        hub,
        triggers: triggers.clone(),
        joins: Arc::default(),
        leaves: Arc::default(),
        engine: engine.downgrade(),
        options,
        reader,
    });
    let m = &module;
    let stats = bound(m, |m, _| async move { Ok(Some(m.stats_json())) });
    let stats_description =
        "Stream clients, subscriptions, deliveries, slow-consumer disconnects and the mirror";
    let mut reg = engine.registry();
    if follower {
        reg.add_builtin("engine::streams::stats", stats_description, stats);
    } else {
        register_functions(&mut reg, m, stats, stats_description);
        reg.add_builtin_trigger_type("stream", "Stream item changes and events", triggers);
    }
    reg.add_builtin_trigger_type(
        "stream:join",
        "A client joins a stream group",
        module.joins.clone(),
    );
    reg.add_builtin_trigger_type(
        "stream:leave",
        "A client leaves a stream group",
        module.leaves.clone(),
    );
    drop(reg);
    Ok(module)
}

/// Registers the `stream::*` functions (on the engine that owns the data set) and the stats.
fn register_functions(
    reg: &mut Registry,
    m: &Arc<StreamModule>,
    stats: BuiltinFn,
    stats_description: &'static str,
) {
    let functions = [
        (
            "stream::set",
            "Set a value in a stream",
            bound(m, |m, v| async move { m.set(v).await }),
        ),
        (
            "stream::get",
            "Get a value from a stream",
            bound(m, |m, v| async move { m.get(v).await }),
        ),
        (
            "stream::delete",
            "Delete a value from a stream",
            bound(m, |m, v| async move { m.delete(v).await }),
        ),
        (
            "stream::update",
            "Atomically update a stream value",
            bound(m, |m, v| async move { m.update(v).await }),
        ),
        (
            "stream::list",
            "List the values of a stream group",
            bound(m, |m, v| async move { m.list(v).await }),
        ),
        (
            "stream::list_groups",
            "List the groups of a stream",
            bound(m, |m, v| async move { m.list_groups(v).await }),
        ),
        (
            "stream::list_all",
            "List every stream with its groups",
            bound(m, |m, v| async move { m.list_all(&v) }),
        ),
        (
            "stream::send",
            "Send a custom event to a stream group",
            bound(m, |m, v| async move { m.send(v).await }),
        ),
        ("engine::streams::stats", stats_description, stats),
    ];
    for (id, description, f) in functions {
        reg.add_builtin(id, description, f);
    }
}
