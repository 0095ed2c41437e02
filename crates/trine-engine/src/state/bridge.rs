//! The `bridge` state adapter: `state::*` calls are forwarded to a remote engine over the worker
//! protocol (this engine connects to it as a worker), so this engine stores no state itself.
//!
//! - Answers and errors are the remote engine's, unchanged (same codes: a remote Trine or iii
//!   validates the input). Transport failures (remote unreachable, timeout) answer with the
//!   operation's code (`SET_ERROR`, `GET_ERROR`, ...) and say `bridge to <url>: <cause>`.
//! - Durability and ordering are the remote engine's: a write is acknowledged when the remote
//!   acknowledged it.
//! - Triggers: the remote engine fires its own `state` triggers for every write (with its own
//!   guarantees). This engine's `state` trigger type fires for the writes made **through this
//!   engine**, from the remote answer (`old_value` / `new_value`): in order per key, once, not
//!   retried and not kept across a restart (the remote engine holds the data, not this one).
//! - While the remote engine is unreachable, calls wait for the reconnect up to 10 s, then fail
//!   with the operation's code.
//!   Writes made directly on the remote engine do not reach this engine's triggers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use trine_protocol::ErrorBody;

use super::delivery::{run_target, Target};
use super::triggers::TriggerIndex;
use super::{codes, object, req_string};
use crate::builtins::bound;
use crate::engine::{Engine, WeakEngine};
use crate::worker::CallOutcome;

/// Trigger events waiting for local delivery; past it, events are dropped and counted.
const EVENT_QUEUE: usize = 16_384;

/// Counters of the bridge (`engine::state::stats` on a bridged engine).
#[derive(Debug, Default)]
struct BridgeStats {
    forwarded: AtomicU64,
    transport_errors: AtomicU64,
    events_dropped: AtomicU64,
}

/// The running bridge.
pub struct StateBridge {
    remote: trine_sdk::Worker,
    url: String,
    triggers: Arc<TriggerIndex>,
    events: mpsc::Sender<(Value, Vec<Arc<Target>>)>,
    stats: BridgeStats,
}

/// A remote error passes through; a transport error gets the operation's code.
fn map_error(url: &str, code: &str, e: trine_sdk::Error) -> ErrorBody {
    match e {
        trine_sdk::Error::Remote(body) => body,
        other => ErrorBody::new(code, format!("bridge to {url}: {other}")),
    }
}

impl StateBridge {
    async fn forward(&self, fid: &str, code: &str, v: Value) -> Result<Value, ErrorBody> {
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        self.remote.call(fid, v).await.map_err(|e| {
            if !matches!(e, trine_sdk::Error::Remote(_)) {
                self.stats.transport_errors.fetch_add(1, Ordering::Relaxed);
            }
            map_error(&self.url, code, e)
        })
    }

    /// Forwards a write and queues the local trigger event it implies.
    async fn write(&self, fid: &str, code: &str, v: Value) -> CallOutcome {
        let m = object(fid, &v)?;
        let scope = req_string(fid, m, "scope")?;
        let key = req_string(fid, m, "key")?;
        let out = self.forward(fid, code, v).await?;
        let (old, new) = match fid {
            // `delete` answers the removed value, or `{old_value, version}` with metadata.
            "state::delete" => {
                let old = match out.get("old_value") {
                    Some(o) if out.get("version").is_some() => o.clone(),
                    _ => out.clone(),
                };
                (old, Value::Null)
            }
            _ => (
                out.get("old_value").cloned().unwrap_or(Value::Null),
                out.get("new_value").cloned().unwrap_or(Value::Null),
            ),
        };
        let event_type = if fid == "state::delete" {
            (!old.is_null()).then_some("state:deleted")
        } else if old.is_null() {
            Some("state:created")
        } else {
            Some("state:updated")
        };
        if let Some(event_type) = event_type {
            let targets = self.triggers.matching(&scope, &key);
            if !targets.is_empty() {
                let payload = json!({
                    "type": "state",
                    "event_type": event_type,
                    "scope": scope,
                    "key": key,
                    "old_value": old,
                    "new_value": new,
                });
                if self.events.try_send((payload, targets)).is_err() {
                    let n = self.stats.events_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if n == 1 || n.is_multiple_of(1000) {
                        tracing::warn!(
                            dropped = n,
                            "state bridge: local trigger queue full; events dropped"
                        );
                    }
                }
            }
        }
        Ok(Some(out))
    }

    fn stats(&self) -> Value {
        json!({
            "adapter": "bridge",
            "bridge_url": self.url,
            "forwarded": self.stats.forwarded.load(Ordering::Relaxed),
            "transport_errors": self.stats.transport_errors.load(Ordering::Relaxed),
            "trigger_events_dropped": self.stats.events_dropped.load(Ordering::Relaxed),
            "triggers": self.triggers.count(),
        })
    }
}

/// Delivers local trigger events one at a time, in the order the writes were answered.
async fn deliver(engine: WeakEngine, mut rx: mpsc::Receiver<(Value, Vec<Arc<Target>>)>) {
    while let Some((payload, targets)) = rx.recv().await {
        let Some(engine) = engine.upgrade() else {
            return;
        };
        for t in targets {
            if let Err(e) = run_target(&engine, &t, &payload).await {
                tracing::warn!(trigger_id = %t.trigger_id, function_id = %t.function_id,
                    code = %e.code, error = %e.message, "state bridge: trigger handler failed");
            }
        }
    }
}

/// Connects to the remote engine (as a worker named `trine-state-bridge`) and registers the
/// forwarding `state::*` functions and the local `state` trigger type. Call inside the runtime.
pub async fn install(engine: &Engine, url: &str) -> Result<Arc<StateBridge>, String> {
    let remote = trine_sdk::Worker::connect(
        url,
        trine_sdk::WorkerOptions {
            name: Some("trine-state-bridge".into()),
            connect_timeout: std::time::Duration::from_secs(5),
            // While the remote engine is away a call waits for the reconnect this long at most.
            call_timeout: std::time::Duration::from_secs(10),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| format!("iii-state bridge: cannot reach {url}: {e}"))?;
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let triggers = Arc::new(TriggerIndex::default());
    let bridge = Arc::new(StateBridge {
        remote,
        url: url.to_owned(),
        triggers: triggers.clone(),
        events: tx,
        stats: BridgeStats::default(),
    });
    engine.tasks().spawn(deliver(engine.downgrade(), rx));
    let b = &bridge;
    let functions = [
        (
            "state::set",
            bound(b, |b, v| async move {
                b.write("state::set", codes::SET_ERROR, v).await
            }),
        ),
        (
            "state::update",
            bound(b, |b, v| async move {
                b.write("state::update", codes::UPDATE_ERROR, v).await
            }),
        ),
        (
            "state::delete",
            bound(b, |b, v| async move {
                b.write("state::delete", codes::DELETE_ERROR, v).await
            }),
        ),
        (
            "state::get",
            bound(b, |b, v| async move {
                b.forward("state::get", codes::GET_ERROR, v).await.map(Some)
            }),
        ),
        (
            "state::list",
            bound(b, |b, v| async move {
                b.forward("state::list", codes::LIST_ERROR, v)
                    .await
                    .map(Some)
            }),
        ),
        (
            "state::list_groups",
            bound(b, |b, v| async move {
                b.forward("state::list_groups", codes::LIST_GROUPS_ERROR, v)
                    .await
                    .map(Some)
            }),
        ),
        (
            "engine::state::stats",
            bound(b, |b, _| async move { Ok(Some(b.stats())) }),
        ),
    ];
    let mut reg = engine.registry();
    for (id, f) in functions {
        reg.add_builtin(
            id,
            "Forwarded to the bridged engine (iii-state bridge adapter)",
            f,
        );
    }
    reg.add_builtin_trigger_type(
        "state",
        "State change trigger (writes through this engine)",
        triggers,
    );
    drop(reg);
    tracing::info!(
        url,
        "state: bridge adapter (state::* forwarded to the remote engine)"
    );
    Ok(bridge)
}
