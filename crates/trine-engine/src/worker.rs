//! One connected worker: its outbound queue, the calls it is executing, and what it told us about
//! itself. The socket itself lives in `trine-server`; the engine only sees this handle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use trine_protocol::{codes, ErrorBody, Message};

/// Connection id: the `worker_id` sent in `workerregistered` (a UUID string).
pub type ConnId = Arc<str>;

/// What a call to a worker resolves to: `Ok(None)` is "no result".
pub type CallOutcome = Result<Option<Value>, ErrorBody>;

/// Facts a worker reported through `engine::workers::register` (protocol.md §4.1).
#[derive(Debug, Clone, Default)]
pub struct WorkerInfo {
    pub name: Option<String>,
    pub description: Option<String>,
    pub runtime: Option<String>,
    pub version: Option<String>,
    pub os: Option<String>,
    pub pid: Option<u64>,
    pub isolation: Option<Value>,
    pub telemetry: Option<Value>,
}

/// Handle to one worker connection, shared by the registry and in-flight calls.
#[derive(Debug)]
pub struct WorkerConn {
    pub id: ConnId,
    pub reattach_token: String,
    pub remote_addr: Option<String>,
    pub connected_at_ms: u64,
    outbound: mpsc::Sender<String>,
    /// Calls this worker is executing, by the invocation id sent to it.
    inflight: Mutex<HashMap<String, oneshot::Sender<CallOutcome>>>,
    /// Calls this worker made that are still being answered (caller-side bound).
    pub outstanding: AtomicUsize,
    info: Mutex<WorkerInfo>,
    /// Set once the worker registered something or reported metadata: only then is it listed
    /// (SDK 0.9.0's telemetry socket on `/` does neither, protocol.md §12.1).
    active: AtomicBool,
    closed: AtomicBool,
    /// When any frame (including a WebSocket pong) last arrived from this worker.
    last_seen_ms: AtomicU64,
    /// Count of inbound frames: a probe compares it before and after waiting.
    frames_seen: AtomicU64,
    /// Asks the connection's write loop to send a WebSocket ping now.
    ping_now: Notify,
    /// Cancelled when the connection must go away (reattach eviction, shutdown).
    pub cancel: CancellationToken,
}

/// Why a frame could not be queued for a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The outbound queue is full: the worker is not reading fast enough.
    Full,
    /// The connection is gone.
    Closed,
}

impl WorkerConn {
    pub fn new(
        id: ConnId,
        outbound: mpsc::Sender<String>,
        remote_addr: Option<String>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            id,
            reattach_token: uuid::Uuid::new_v4().to_string(),
            remote_addr,
            connected_at_ms: now_ms(),
            outbound,
            inflight: Mutex::new(HashMap::new()),
            outstanding: AtomicUsize::new(0),
            info: Mutex::new(WorkerInfo::default()),
            active: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            last_seen_ms: AtomicU64::new(now_ms()),
            frames_seen: AtomicU64::new(0),
            ping_now: Notify::new(),
            cancel,
        }
    }

    /// Queues a frame without waiting. Never blocks the caller; a full queue is reported.
    pub fn try_send(&self, msg: &Message) -> Result<(), SendError> {
        self.try_send_text(msg.to_json())
    }

    pub fn try_send_text(&self, text: String) -> Result<(), SendError> {
        match self.outbound.try_send(text) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(SendError::Full),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
        }
    }

    /// Queues a frame, waiting for room (back-pressure on whoever produces replies for this
    /// worker). Fails only when the connection is gone.
    pub async fn send(&self, msg: &Message) -> Result<(), SendError> {
        self.outbound
            .send(msg.to_json())
            .await
            .map_err(|_| SendError::Closed)
    }

    /// Records that something arrived from the worker (liveness).
    pub fn touch(&self) {
        self.last_seen_ms.store(now_ms(), Ordering::Release);
        self.frames_seen.fetch_add(1, Ordering::AcqRel);
    }

    /// Number of frames received so far.
    pub fn frames_seen(&self) -> u64 {
        self.frames_seen.load(Ordering::Acquire)
    }

    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms.load(Ordering::Acquire)
    }

    /// Asks the write loop to ping the worker now; any answer shows up in [`Self::last_seen_ms`].
    pub fn request_ping(&self) {
        self.ping_now.notify_one();
    }

    /// Resolves when [`Self::request_ping`] was called.
    pub async fn ping_requested(&self) {
        self.ping_now.notified().await
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn mark_active(&self) {
        self.active.store(true, Ordering::Release);
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    pub fn info(&self) -> WorkerInfo {
        lock(&self.info).clone()
    }

    pub fn set_info(&self, info: WorkerInfo) {
        *lock(&self.info) = info;
        self.mark_active();
    }

    /// Display name: the reported name, else the connection id.
    pub fn name(&self) -> String {
        lock(&self.info)
            .name
            .clone()
            .unwrap_or_else(|| self.id.to_string())
    }

    pub fn inflight_count(&self) -> usize {
        lock(&self.inflight).len()
    }

    /// Records a call this worker must answer. Returns `None` if the id is already in use on this
    /// connection or the connection is closed.
    pub(crate) fn add_inflight(
        &self,
        invocation_id: &str,
        limit: usize,
    ) -> Result<oneshot::Receiver<CallOutcome>, ErrorBody> {
        let mut map = lock(&self.inflight);
        if self.is_closed() {
            return Err(ErrorBody::new(
                codes::INVOCATION_STOPPED,
                "Invocation stopped: the worker disconnected",
            ));
        }
        if map.len() >= limit {
            return Err(ErrorBody::new(
                codes::OVERLOADED,
                format!(
                    "worker {} has {} calls in flight (limit {limit})",
                    self.name(),
                    map.len()
                ),
            ));
        }
        if map.contains_key(invocation_id) {
            return Err(ErrorBody::new(
                codes::INVOCATION_ERROR,
                format!("invocation id {invocation_id} is already in flight on this worker"),
            ));
        }
        let (tx, rx) = oneshot::channel();
        map.insert(invocation_id.to_owned(), tx);
        Ok(rx)
    }

    pub(crate) fn remove_inflight(&self, invocation_id: &str) {
        lock(&self.inflight).remove(invocation_id);
    }

    /// Completes a call this worker was executing. Returns false for an unknown id (late or
    /// foreign results are ignored).
    pub(crate) fn complete(&self, invocation_id: &str, outcome: CallOutcome) -> bool {
        let tx = lock(&self.inflight).remove(invocation_id);
        match tx {
            Some(tx) => {
                let _ = tx.send(outcome);
                true
            }
            None => false,
        }
    }

    /// Marks the connection closed and fails every call it was executing with
    /// `invocation_stopped`. Idempotent; returns false if it was already closed.
    pub(crate) fn close(&self) -> bool {
        let mut map = lock(&self.inflight);
        if self.closed.swap(true, Ordering::AcqRel) {
            return false;
        }
        for (_, tx) in map.drain() {
            let _ = tx.send(Err(ErrorBody::new(
                codes::INVOCATION_STOPPED,
                "Invocation stopped: the worker executing it disconnected",
            )));
        }
        drop(map);
        self.cancel.cancel();
        true
    }

    /// The worker as listed by `engine::workers::list` (union of the v0.11.6 and v0.22.1 fields).
    pub fn describe(&self, functions: Vec<String>) -> Value {
        let info = self.info();
        json!({
            "id": self.id.as_ref(),
            "name": info.name.clone().unwrap_or_else(|| self.id.to_string()),
            "description": info.description,
            "runtime": info.runtime.clone().unwrap_or_else(|| "unknown".into()),
            "version": info.version,
            "os": info.os,
            "pid": info.pid,
            "isolation": info.isolation,
            "telemetry": info.telemetry,
            "ip_address": self.remote_addr,
            "internal": false,
            "status": if self.inflight_count() > 0 { "busy" } else { "connected" },
            "connected_at_ms": self.connected_at_ms,
            "function_count": functions.len(),
            "functions": functions,
            "active_invocations": self.inflight_count(),
            "latest_metrics": Value::Null,
        })
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another task panicked while holding it; the data is plain
    // bookkeeping that stays consistent per operation, so keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
