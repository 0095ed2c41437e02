//! Built-in `engine::*` functions: worker metadata, discovery, durable triggers, logs, echo.
//!
//! Shapes follow protocol.md §4 with its "union" rules: where the two reference tags disagree,
//! entries carry the fields of both so every SDK generation reads what it expects.

use std::sync::Arc;

use serde_json::{json, Value};
use trine_protocol::{codes, ErrorBody, RegisterTrigger};

use crate::engine::{BoxFuture, Caller, Engine};
use crate::logs::{Level, LogQuery, LogRecord};
use crate::registry::{Handler, Registry, TriggerEntry, TriggerProvider};
use crate::worker::{now_ms, CallOutcome, WorkerInfo};

/// A function implemented inside the engine.
pub type BuiltinFn = Arc<dyn Fn(Engine, Caller, Value) -> BoxFuture<CallOutcome> + Send + Sync>;

pub(crate) fn builtin<F, Fut>(f: F) -> BuiltinFn
where
    F: Fn(Engine, Caller, Value) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = CallOutcome> + Send + 'static,
{
    Arc::new(move |e, c, v| Box::pin(f(e, c, v)))
}

/// A built-in bound to a module instance: `f(module, payload)`.
pub(crate) fn bound<M, F, Fut>(module: &Arc<M>, f: F) -> BuiltinFn
where
    M: Send + Sync + 'static,
    F: Fn(Arc<M>, Value) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = CallOutcome> + Send + 'static,
{
    let module = module.clone();
    builtin(move |_, _, v| f(module.clone(), v))
}

/// Registers every built-in function.
pub(crate) fn install(reg: &mut Registry) {
    reg.add_builtin_inline(
        "engine::workers::register",
        "Record the calling worker's name, runtime and version",
        builtin(|e, c, v| async move { workers_register(&e, &c, v) }),
    );
    reg.add_builtin_inline(
        "engine::functions::list",
        "List registered functions",
        builtin(|e, _, v| async move { functions_list(&e, &v) }),
    );
    reg.add_builtin_inline(
        "engine::workers::list",
        "List connected workers",
        builtin(|e, _, v| async move { workers_list(&e, &v) }),
    );
    reg.add_builtin_inline(
        "engine::triggers::list",
        "List registered triggers",
        builtin(|e, _, v| async move { triggers_list(&e, &v) }),
    );
    reg.add_builtin_inline(
        "engine::trigger-types::list",
        "List trigger types and their providers",
        builtin(|e, _, v| async move { trigger_types_list(&e, &v) }),
    );
    reg.add_builtin_inline(
        "engine::register_trigger",
        "Register a durable trigger (not owned by any connection)",
        builtin(|e, _, v| async move { register_trigger(&e, v) }),
    );
    reg.add_builtin_inline(
        "engine::unregister_trigger",
        "Remove a trigger by id",
        builtin(|e, _, v| async move { unregister_trigger(&e, &v) }),
    );
    reg.add_builtin_inline(
        "engine::logs::list",
        "Query kept log records",
        builtin(|e, _, v| async move { logs_list(&e, &v) }),
    );
    for level in [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
    ] {
        let id = format!("engine::log::{}", level.as_str());
        reg.add_builtin_inline(
            &id,
            "Store a log record",
            builtin(move |e, c, v| async move { log_write(&e, &c, level, v) }),
        );
    }
    reg.add_builtin_inline(
        "engine::channels::create",
        "Create a channel; returns its writer and reader refs",
        builtin(|e, _, v| async move {
            let size = v.get("buffer_size").and_then(Value::as_u64);
            let ch = e.channels().create(size);
            Ok(Some(
                json!({"writer": ch.reference("write"), "reader": ch.reference("read")}),
            ))
        }),
    );
    reg.add_builtin_inline(
        "engine::echo",
        "Return the payload unchanged (diagnostics and benchmarks)",
        builtin(|_, _, v| async move { Ok(Some(v)) }),
    );
}

/// Provider for the engine's own event trigger types: accepts every binding; the engine fires them.
pub(crate) struct EngineEventTriggers;

impl TriggerProvider for EngineEventTriggers {
    fn register(&self, _trigger: &TriggerEntry) -> Result<(), String> {
        Ok(())
    }
    fn unregister(&self, _trigger: &TriggerEntry) {}
}

fn invalid(msg: impl Into<String>) -> ErrorBody {
    ErrorBody::new(codes::INVALID_ARGUMENTS, msg)
}

fn opt_str<'a>(v: &'a Value, key: &str) -> Result<Option<&'a str>, ErrorBody> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("`{key}` must be a string"))),
    }
}

fn opt_bool(v: &Value, key: &str) -> Result<bool, ErrorBody> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid(format!("`{key}` must be a boolean"))),
    }
}

fn workers_register(engine: &Engine, caller: &Caller, v: Value) -> CallOutcome {
    let Some(conn) = caller.worker() else {
        return Err(invalid(
            "engine::workers::register must be called by a worker connection",
        ));
    };
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(clean_text);
    let info = WorkerInfo {
        name: s("name").filter(|n| !n.is_empty()),
        description: s("description").filter(|n| !n.is_empty()),
        runtime: s("runtime"),
        version: s("version"),
        os: s("os"),
        pid: v.get("pid").and_then(Value::as_u64),
        isolation: v.get("isolation").cloned(),
        telemetry: v.get("telemetry").cloned(),
    };
    tracing::info!(worker_id = %conn.id, name = ?info.name, runtime = ?info.runtime, version = ?info.version, "worker registered");
    conn.set_info(info);
    engine.emit_worker_event("worker_metadata_updated", &conn.id);
    Ok(Some(json!({"success": true})))
}

/// Strips control and bidi characters and trims; names are shown in listings and logs.
fn clean_text(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .filter(|c| !c.is_control() && !matches!(*c as u32, 0x202A..=0x202E | 0x2066..=0x2069))
        .take(280)
        .collect();
    cleaned.trim().to_owned()
}

fn is_internal(id: &str, metadata: Option<&Value>) -> bool {
    (id.starts_with("engine::") && !id.starts_with("engine::queue::"))
        || metadata
            .and_then(|m| m.get("internal"))
            .and_then(Value::as_bool)
            == Some(true)
}

/// Function entries with the union of the v0.11.6 and v0.22.1 fields, sorted by id.
pub(crate) fn function_summaries(engine: &Engine, include_internal: bool) -> Vec<Value> {
    let reg = engine.registry();
    let mut out: Vec<(String, Value)> = reg
        .functions
        .iter()
        .filter(|(id, e)| include_internal || !is_internal(id, e.info.metadata.as_ref()))
        .map(|(id, e)| {
            let worker_name = match &e.handler {
                Handler::Worker(w) => w.name(),
                Handler::Builtin { .. } => "engine".to_owned(),
            };
            (
                id.clone(),
                json!({
                    "function_id": id,
                    "description": e.info.description,
                    "request_format": e.info.request_format,
                    "response_format": e.info.response_format,
                    "metadata": e.info.metadata,
                    "worker_name": worker_name,
                }),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.into_iter().map(|(_, v)| v).collect()
}

fn functions_list(engine: &Engine, v: &Value) -> CallOutcome {
    let include_internal = opt_bool(v, "include_internal")?;
    let search = opt_str(v, "search")?.map(str::to_lowercase);
    let prefix = opt_str(v, "prefix")?;
    let worker = opt_str(v, "worker")?;
    let functions: Vec<Value> = function_summaries(engine, include_internal)
        .into_iter()
        .filter(|f| {
            let id = f["function_id"].as_str().unwrap_or_default();
            search
                .as_ref()
                .is_none_or(|s| id.to_lowercase().contains(s))
                && prefix.is_none_or(|p| id.starts_with(p))
                && worker.is_none_or(|w| f["worker_name"] == w)
        })
        .collect();
    Ok(Some(json!({ "functions": functions })))
}

fn workers_list(engine: &Engine, v: &Value) -> CallOutcome {
    let worker_id = opt_str(v, "worker_id")?;
    let search = opt_str(v, "search")?.map(str::to_lowercase);
    let runtime = opt_str(v, "runtime")?;
    let reg = engine.registry();
    let mut workers: Vec<Value> = reg
        .workers
        .values()
        // A connection that registered nothing and never reported metadata (SDK 0.9.0's
        // telemetry socket) is not a worker.
        .filter(|w| w.is_active() && !w.is_closed())
        .filter(|w| worker_id.is_none_or(|id| w.id.as_ref() == id))
        .map(|w| w.describe(reg.functions_of(&w.id)))
        .filter(|w| {
            search.as_ref().is_none_or(|s| {
                w["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_lowercase()
                    .contains(s)
            }) && runtime.is_none_or(|r| w["runtime"] == r)
        })
        .collect();
    workers.sort_by_key(|w| w["connected_at_ms"].as_u64());
    Ok(Some(json!({ "workers": workers, "timestamp": now_ms() })))
}

fn triggers_list(engine: &Engine, v: &Value) -> CallOutcome {
    let include_internal = opt_bool(v, "include_internal")?;
    let trigger_type = opt_str(v, "trigger_type")?;
    let function_id = opt_str(v, "function_id")?;
    let reg = engine.registry();
    let triggers: Vec<Value> = reg
        .triggers
        .values()
        .filter(|t| include_internal || !t.function_id.starts_with("engine::"))
        .filter(|t| trigger_type.is_none_or(|ty| t.trigger_type == ty))
        .filter(|t| function_id.is_none_or(|f| t.function_id == f))
        .map(|t| t.describe(reg.owner_name(&t.owner)))
        .collect();
    Ok(Some(json!({ "triggers": triggers })))
}

fn trigger_types_list(engine: &Engine, _v: &Value) -> CallOutcome {
    let reg = engine.registry();
    let types: Vec<Value> = reg
        .trigger_types
        .iter()
        .map(|(id, t)| {
            let worker_name = match &t.provider {
                crate::registry::Provider::Builtin(_) => "engine".to_owned(),
                crate::registry::Provider::Worker(w) => w.name(),
            };
            json!({
                "id": id,
                "description": t.description,
                "trigger_request_format": t.trigger_request_format,
                "call_request_format": t.call_request_format,
                "worker_name": worker_name,
            })
        })
        .collect();
    Ok(Some(json!({ "trigger_types": types })))
}

fn register_trigger(engine: &Engine, v: Value) -> CallOutcome {
    let trigger_type = opt_str(&v, "trigger_type")?
        .ok_or_else(|| invalid("`trigger_type` is required"))?
        .to_owned();
    let function_id = opt_str(&v, "function_id")?
        .ok_or_else(|| invalid("`function_id` is required"))?
        .to_owned();
    let id = uuid::Uuid::new_v4().to_string();
    engine.register_durable_trigger(RegisterTrigger {
        id: id.clone(),
        trigger_type,
        function_id,
        config: v.get("config").cloned().unwrap_or(Value::Null),
        metadata: v.get("metadata").cloned().filter(|m| !m.is_null()),
    })?;
    Ok(Some(json!({ "id": id })))
}

fn unregister_trigger(engine: &Engine, v: &Value) -> CallOutcome {
    let id = opt_str(v, "id")?.ok_or_else(|| invalid("`id` is required"))?;
    Ok(Some(json!({ "removed": engine.unregister_trigger(id) })))
}

fn logs_list(engine: &Engine, v: &Value) -> CallOutcome {
    let level = match opt_str(v, "level")? {
        None => None,
        Some(l) => Some(Level::parse(l).ok_or_else(|| {
            invalid(format!(
                "unknown level `{l}` (trace, debug, info, warn, error)"
            ))
        })?),
    };
    let query = LogQuery {
        min_level: level,
        function_id: opt_str(v, "function_id")?.map(str::to_owned),
        worker: opt_str(v, "worker")?.map(str::to_owned),
        search: opt_str(v, "search")?.map(str::to_owned),
        after_seq: v.get("after_seq").and_then(Value::as_u64),
        limit: v.get("limit").and_then(Value::as_u64).map(|l| l as usize),
    };
    let (logs, next_seq, dropped) = engine.logs().query(&query);
    Ok(Some(
        json!({ "logs": logs, "next_seq": next_seq, "dropped": dropped }),
    ))
}

fn log_write(engine: &Engine, caller: &Caller, level: Level, v: Value) -> CallOutcome {
    let message = opt_str(&v, "message")?
        .ok_or_else(|| invalid("`message` is required"))?
        .to_owned();
    let (worker_id, worker_name) = match caller.worker() {
        Some(w) => (Some(w.id.to_string()), Some(w.name())),
        None => (None, None),
    };
    engine.logs().push(LogRecord {
        seq: 0,
        time_unix_nano: crate::logs::now_nanos(),
        level,
        message,
        data: v.get("data").cloned().unwrap_or(Value::Null),
        worker_id,
        worker_name,
        function_id: opt_str(&v, "function_id")?.map(str::to_owned),
        trace_id: opt_str(&v, "trace_id")?.map(str::to_owned),
        span_id: opt_str(&v, "span_id")?.map(str::to_owned),
        service_name: opt_str(&v, "service_name")?.map(str::to_owned),
    });
    Ok(None)
}
