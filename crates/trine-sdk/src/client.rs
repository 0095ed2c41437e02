//! [`Worker`]: the cloneable handle user code holds — registration, calls, shutdown.
//!
//! All handles share one `Shared` state with the background connection supervisor
//! (`connection`). Callers never touch the socket: they put frames on the current connection's
//! bounded outbound queue (`Link`) and wait on a oneshot registered in `PendingCalls`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::{CancellationToken, DropGuard};
use trine_protocol::{
    ErrorBody, InvokeFunction, Message, RegisterFunction, RegisterTrigger, TriggerAction,
    UnregisterTrigger, WorkerRegistered,
};

use crate::handler::FnHandler;
use crate::ids::IdGen;
use crate::pending::PendingCalls;
use crate::registry::Registry;
use crate::{connection, metadata, Error};

/// Settings of a [`Worker`]. `WorkerOptions::default()` gives the values documented per field.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Name sent in `engine::workers::register`. Default: env `III_WORKER_NAME`, else
    /// `hostname:pid`.
    pub name: Option<String>,
    /// Optional description sent in `engine::workers::register`.
    pub description: Option<String>,
    /// How long [`Worker::connect`] keeps trying to open the first connection. Default 10 s.
    pub connect_timeout: Duration,
    /// Timeout of [`Worker::call`], including any wait for a reconnect. Default 30 s.
    pub call_timeout: Duration,
    /// Frames a connection's outbound queue holds before [`Worker::call`] fails with
    /// [`Error::Overloaded`]. Default 4096.
    pub outbound_capacity: usize,
    /// First delay before reconnecting; doubled per failed attempt. Default 1 s.
    pub reconnect_initial: Duration,
    /// Cap of the reconnect delay. Default 30 s.
    pub reconnect_max: Duration,
    /// Interval of WebSocket Ping frames sent to the engine (the first right after connecting).
    /// Default 20 s.
    pub ping_interval: Duration,
    /// The connection is dropped (and re-established) when nothing at all arrived from the engine
    /// for this long; checked at each ping. Default 60 s.
    pub idle_timeout: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            name: None,
            description: None,
            connect_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(30),
            outbound_capacity: 4096,
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(30),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// One open connection as callers see it: where to put frames, and whether it is still usable.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) tx: mpsc::Sender<WsMessage>,
    /// Counts connections since the worker started; pending calls are tagged with it.
    pub(crate) generation: u64,
    /// Cleared by the supervisor when the connection ends, before it fails the pending calls.
    pub(crate) alive: Arc<AtomicBool>,
}

impl Link {
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

/// State shared by every [`Worker`] handle and the connection supervisor.
///
/// Lock order: `registry` before the `link` watch (the supervisor publishes a new link while
/// holding `registry`, so a registration is either in the replay or sent on the new link).
/// No std mutex here is held across an `.await`.
pub(crate) struct Shared {
    pub(crate) url: String,
    pub(crate) options: WorkerOptions,
    /// Resolved worker name.
    pub(crate) name: String,
    pub(crate) registry: Mutex<Registry>,
    pub(crate) pending: PendingCalls,
    /// The current connection, `None` while disconnected.
    pub(crate) link: watch::Sender<Option<Link>>,
    pub(crate) ids: IdGen,
    pub(crate) cancel: CancellationToken,
    /// Last `workerregistered`, for the `reattach` frame of the next connection.
    pub(crate) session: Mutex<Option<WorkerRegistered>>,
    /// Why the last connection attempt failed (reported by [`Worker::connect`]).
    pub(crate) last_error: Mutex<Option<String>>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical section
/// here is a single insert, remove or replace).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn new(url: &str, options: WorkerOptions) -> Self {
        let name = options.name.clone().unwrap_or_else(metadata::default_name);
        Self {
            url: url.to_owned(),
            options,
            name,
            registry: Mutex::new(Registry::default()),
            pending: PendingCalls::default(),
            link: watch::Sender::new(None),
            ids: IdGen::new(),
            cancel: CancellationToken::new(),
            session: Mutex::new(None),
            last_error: Mutex::new(None),
            supervisor: Mutex::new(None),
        }
    }

    pub(crate) fn current_link(&self) -> Option<Link> {
        self.link
            .borrow()
            .as_ref()
            .filter(|l| l.is_alive())
            .cloned()
    }

    /// Sends a registration change on the current connection, if there is one; otherwise the
    /// next connection's replay carries it. Called with the registry lock held.
    fn send_registration(&self, frame: Message) {
        let Some(link) = self.current_link() else {
            return;
        };
        match link.tx.try_send(WsMessage::text(frame.to_json())) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                // A registration must not be lost to a momentarily full queue: wait for room on a
                // task (its order relative to calls does not matter to the engine).
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(async move {
                            let _ = link.tx.send(msg).await;
                        });
                    }
                    Err(_) => tracing::warn!(
                        "outbound queue full outside a tokio runtime; registration will be sent on the next reconnect"
                    ),
                }
            }
            // The connection is ending; the next one replays the registry.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// A connected worker: registers functions and triggers, calls functions, and keeps its
/// connection to the engine alive (reconnect with backoff, replay of every registration).
///
/// Cheap to clone; all clones share one connection. Dropping the last clone (or calling
/// [`shutdown`](Worker::shutdown)) stops the background tasks. A handler that captures a clone of
/// its own worker keeps it alive until `shutdown` is called.
#[derive(Clone)]
pub struct Worker {
    shared: Arc<Shared>,
    _stop_on_drop: Arc<DropGuard>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("url", &self.shared.url)
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Connects to the engine's worker socket (e.g. `ws://127.0.0.1:49134`) and returns once the
    /// first connection is open, or fails with [`Error::Connect`] after
    /// [`connect_timeout`](WorkerOptions::connect_timeout) (attempts are retried with backoff
    /// until then). After that the connection is maintained in the background.
    pub async fn connect(url: &str, options: WorkerOptions) -> Result<Worker, Error> {
        url.into_client_request()
            .map_err(|e| Error::Connect(format!("invalid url `{url}`: {e}")))?;
        let connect_timeout = options.connect_timeout;
        let shared = Arc::new(Shared::new(url, options));
        let worker = Worker {
            _stop_on_drop: Arc::new(shared.cancel.clone().drop_guard()),
            shared: Arc::clone(&shared),
        };
        let mut link = shared.link.subscribe();
        *lock(&shared.supervisor) = Some(tokio::spawn(connection::supervise(Arc::clone(&shared))));
        // Only whether it opened is kept: the watch guard must not live across the await below
        // (it is not `Send`, and `connect` is called from spawned tasks).
        let opened = matches!(
            tokio::time::timeout(connect_timeout, link.wait_for(Option::is_some)).await,
            Ok(Ok(_))
        );
        if opened {
            return Ok(worker);
        }
        worker.shutdown().await;
        let reason = lock(&shared.last_error)
            .take()
            .unwrap_or_else(|| "no connection".to_owned());
        Err(Error::Connect(format!(
            "{url}: {reason} (gave up after {connect_timeout:?})"
        )))
    }

    /// The `worker_id` the engine gave the current (or last) connection, once its
    /// `workerregistered` arrived.
    pub fn worker_id(&self) -> Option<String> {
        lock(&self.shared.session)
            .as_ref()
            .map(|s| s.worker_id.clone())
    }

    /// Whether a connection is open right now.
    pub fn is_connected(&self) -> bool {
        self.shared.current_link().is_some()
    }

    /// Registers (or replaces) function `id`. Sent now when connected, and replayed on every
    /// reconnect. The handler runs on its own task per invocation; its `Ok` value is the result
    /// (`null` is sent as "no result"), its `Err` body is passed to the caller unchanged. A panic
    /// becomes an `invocation_failed` error.
    pub fn register_function<F, Fut, R>(&self, id: impl Into<String>, handler: F)
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, ErrorBody>> + Send + 'static,
        R: Serialize + Send + 'static,
    {
        let def = RegisterFunction {
            id: id.into(),
            description: None,
            request_format: None,
            response_format: None,
            metadata: None,
            invocation: None,
        };
        self.register_function_with(def, handler);
    }

    /// Like [`register_function`](Self::register_function), with a full definition
    /// (description, request/response formats, metadata).
    pub fn register_function_with<F, Fut, R>(&self, def: RegisterFunction, handler: F)
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, ErrorBody>> + Send + 'static,
        R: Serialize + Send + 'static,
    {
        let mut registry = lock(&self.shared.registry);
        let frame = registry.insert_function(def, Arc::new(FnHandler(handler)));
        self.shared.send_registration(frame);
    }

    /// Removes function `id` here and on the engine. Returns false if it was not registered.
    pub fn unregister_function(&self, id: &str) -> bool {
        let mut registry = lock(&self.shared.registry);
        match registry.remove_function(id) {
            Some(frame) => {
                self.shared.send_registration(frame);
                true
            }
            None => false,
        }
    }

    /// Binds `function_id` to a trigger of `trigger_type` with `config` (e.g. `"http"`,
    /// `{"api_path": "/echo", "http_method": "POST"}`). Returns the trigger id (UUID v4), which
    /// stays the same on every replay.
    pub fn register_trigger(&self, trigger_type: &str, function_id: &str, config: Value) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let trigger = RegisterTrigger {
            id: id.clone(),
            trigger_type: trigger_type.to_owned(),
            function_id: function_id.to_owned(),
            config,
            metadata: None,
        };
        let mut registry = lock(&self.shared.registry);
        let frame = registry.insert_trigger(trigger);
        self.shared.send_registration(frame);
        id
    }

    /// Registers a trigger with the caller's own id (e.g. an engine forwarding a registration it
    /// received), replayed on every reconnect like the others.
    pub fn register_trigger_with(&self, trigger: RegisterTrigger) {
        let mut registry = lock(&self.shared.registry);
        let frame = registry.insert_trigger(trigger);
        self.shared.send_registration(frame);
    }

    /// Removes trigger `id`. Returns false if it was not registered by this worker.
    pub fn unregister_trigger(&self, id: &str) -> bool {
        let mut registry = lock(&self.shared.registry);
        match registry.remove_trigger(id) {
            Some(t) => {
                self.shared
                    .send_registration(Message::UnregisterTrigger(UnregisterTrigger {
                        id: t.id,
                        trigger_type: Some(t.trigger_type),
                    }));
                true
            }
            None => false,
        }
    }

    /// Calls `function_id` and waits for its result, with the default timeout
    /// ([`WorkerOptions::call_timeout`]). An absent result is `Value::Null`.
    ///
    /// Errors: [`Error::Remote`] (the function or the engine failed), [`Error::Timeout`],
    /// [`Error::Disconnected`] (the connection dropped after the call was sent — it is not
    /// re-sent), [`Error::Overloaded`] (the outbound queue is full; nothing was sent),
    /// [`Error::Shutdown`]. While disconnected the call waits for the reconnect, within its
    /// timeout.
    pub async fn call(&self, function_id: &str, payload: Value) -> Result<Value, Error> {
        self.call_with_timeout(function_id, payload, self.shared.options.call_timeout)
            .await
    }

    /// [`call`](Self::call) with an explicit timeout.
    pub async fn call_with_timeout(
        &self,
        function_id: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<Value, Error> {
        self.request(function_id, payload, None, timeout, None)
            .await
    }

    /// [`call_with_timeout`](Self::call_with_timeout) carrying W3C `baggage` (propagated to the
    /// handler like any trace context).
    pub async fn call_with_baggage(
        &self,
        function_id: &str,
        payload: Value,
        timeout: Duration,
        baggage: String,
    ) -> Result<Value, Error> {
        self.request(function_id, payload, None, timeout, Some(baggage))
            .await
    }

    /// Puts a job on a durable queue (`action: enqueue`): `function_id` runs later with
    /// `payload`. Returns the `messageReceiptId` once the engine stored the job.
    pub async fn enqueue(
        &self,
        queue: &str,
        function_id: &str,
        payload: Value,
    ) -> Result<String, Error> {
        let action = TriggerAction::Enqueue {
            queue: queue.to_owned(),
        };
        let out = self
            .request(
                function_id,
                payload,
                Some(action),
                self.shared.options.call_timeout,
                None,
            )
            .await?;
        out.get("messageReceiptId")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                Error::Remote(ErrorBody::new(
                    "invalid_response",
                    format!("enqueue answered without a messageReceiptId: {out}"),
                ))
            })
    }

    async fn request(
        &self,
        function_id: &str,
        payload: Value,
        action: Option<TriggerAction>,
        timeout: Duration,
        baggage: Option<String>,
    ) -> Result<Value, Error> {
        let deadline = Instant::now() + timeout;
        let invocation_id = self.shared.ids.next_id();
        let frame = Message::InvokeFunction(InvokeFunction {
            invocation_id: Some(invocation_id.clone()),
            function_id: function_id.to_owned(),
            data: payload,
            action,
            metadata: None,
            traceparent: None,
            baggage,
        });
        let frame = WsMessage::text(frame.to_json());
        let rx = loop {
            let link = self.wait_for_link(deadline).await?;
            let (tx, rx) = oneshot::channel();
            let inserted = self.shared.pending.insert_if_alive(
                invocation_id.clone(),
                link.generation,
                &link.alive,
                tx,
            );
            if inserted.is_err() {
                // Torn down between the two looks: wait for the next connection.
                continue;
            }
            match link.tx.try_send(frame.clone()) {
                Ok(()) => break rx,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.shared.pending.remove(&invocation_id);
                    return Err(Error::Overloaded);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    // The writer is gone but the supervisor has not retired the link yet.
                    self.shared.pending.remove(&invocation_id);
                    tokio::task::yield_now().await;
                }
            }
        };
        let mut guard = RemoveOnDrop {
            pending: &self.shared.pending,
            invocation_id: &invocation_id,
            armed: true,
        };
        let outcome = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(outcome)) => outcome,
            // The entry was dropped without an answer; only happens if the worker is torn down.
            Ok(Err(_)) => Err(Error::Disconnected),
            Err(_) => return Err(Error::Timeout),
        };
        guard.armed = false;
        outcome
    }

    /// Fire-and-forget call (`action: void`, no `invocation_id`): returns as soon as the frame is
    /// queued. Fails with [`Error::Disconnected`] when no connection is open (it is not queued
    /// for later) and [`Error::Overloaded`] when the outbound queue is full.
    pub fn call_void(&self, function_id: &str, payload: Value) -> Result<(), Error> {
        if self.shared.cancel.is_cancelled() {
            return Err(Error::Shutdown);
        }
        let link = self.shared.current_link().ok_or(Error::Disconnected)?;
        let frame = Message::InvokeFunction(InvokeFunction {
            invocation_id: None,
            function_id: function_id.to_owned(),
            data: payload,
            action: Some(TriggerAction::Void),
            metadata: None,
            traceparent: None,
            baggage: None,
        });
        link.tx
            .try_send(WsMessage::text(frame.to_json()))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Error::Overloaded,
                mpsc::error::TrySendError::Closed(_) => Error::Disconnected,
            })
    }

    /// Closes the connection (politely, after frames already queued), fails pending calls with
    /// [`Error::Shutdown`] and stops reconnecting. Idempotent.
    pub async fn shutdown(&self) {
        self.shared.cancel.cancel();
        let supervisor = lock(&self.shared.supervisor).take();
        if let Some(handle) = supervisor {
            if let Err(e) = handle.await {
                tracing::warn!(error = %e, "worker connection task ended abnormally");
            }
        }
    }

    /// The current connection, waiting for a reconnect until `deadline`.
    async fn wait_for_link(&self, deadline: Instant) -> Result<Link, Error> {
        if self.shared.cancel.is_cancelled() {
            return Err(Error::Shutdown);
        }
        if let Some(link) = self.shared.current_link() {
            return Ok(link);
        }
        let mut rx = self.shared.link.subscribe();
        let next = async {
            rx.wait_for(|l| l.as_ref().is_some_and(Link::is_alive))
                .await
                .map(|l| l.clone())
        };
        tokio::select! {
            opened = tokio::time::timeout_at(deadline, next) => match opened {
                Ok(Ok(Some(link))) => Ok(link),
                Ok(_) => Err(Error::Shutdown),
                Err(_) => Err(Error::Timeout),
            },
            _ = self.shared.cancel.cancelled() => Err(Error::Shutdown),
        }
    }
}

/// Forgets a pending call whose caller stopped waiting (timeout, or the future was dropped).
struct RemoveOnDrop<'a> {
    pending: &'a PendingCalls,
    invocation_id: &'a str,
    armed: bool,
}

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.pending.remove(self.invocation_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A worker whose "connection" is a bare channel nobody drains.
    fn offline_worker(capacity: usize) -> (Worker, mpsc::Receiver<WsMessage>) {
        let shared = Arc::new(Shared::new("ws://127.0.0.1:9", WorkerOptions::default()));
        let (tx, rx) = mpsc::channel(capacity);
        shared.link.send_replace(Some(Link {
            tx,
            generation: 1,
            alive: Arc::new(AtomicBool::new(true)),
        }));
        let worker = Worker {
            _stop_on_drop: Arc::new(shared.cancel.clone().drop_guard()),
            shared,
        };
        (worker, rx)
    }

    #[tokio::test]
    async fn full_queue_is_overloaded_not_a_hang() {
        let (worker, mut rx) = offline_worker(1);
        worker.call_void("a::b", json!(1)).unwrap();
        let err = worker
            .call_with_timeout("a::b", json!(2), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err, Error::Overloaded);
        assert_eq!(worker.call_void("a::b", json!(3)), Err(Error::Overloaded));
        assert_eq!(worker.shared.pending.len(), 0);

        let sent = rx.recv().await.unwrap();
        let v: Value = serde_json::from_str(sent.to_text().unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"type":"invokefunction","function_id":"a::b","data":1,"action":{"type":"void"}})
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unanswered_call_times_out_and_is_forgotten() {
        let (worker, mut rx) = offline_worker(8);
        let err = worker
            .call_with_timeout("a::b", json!({}), Duration::from_millis(500))
            .await
            .unwrap_err();
        assert_eq!(err, Error::Timeout);
        assert_eq!(worker.shared.pending.len(), 0);
        let v: Value = serde_json::from_str(rx.recv().await.unwrap().to_text().unwrap()).unwrap();
        let id = v["invocation_id"].as_str().unwrap();
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
        assert!(v.get("action").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn call_while_disconnected_waits_then_times_out() {
        let (worker, _rx) = offline_worker(8);
        worker.shared.link.send_replace(None);
        assert!(!worker.is_connected());
        assert_eq!(worker.call_void("x", Value::Null), Err(Error::Disconnected));
        let err = worker
            .call_with_timeout("x", Value::Null, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(err, Error::Timeout);
        worker.shared.cancel.cancel();
        assert_eq!(
            worker.call("x", Value::Null).await.unwrap_err(),
            Error::Shutdown
        );
    }
}
