//! The engine: applies worker frames to the registry and routes invocations.
//!
//! A call takes few hops: the socket task decodes a frame and calls [`Engine::handle_message`];
//! a call is looked up in the registry (one short lock) and either runs in-process (built-in
//! functions) or is queued on the target worker's bounded outbound channel, with a oneshot waiting
//! for the `invocationresult`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use trine_protocol::{
    codes, ErrorBody, ErrorFrame, InvocationResult, InvokeFunction, Message, RegisterTrigger,
    TriggerAction, WorkerRegistered,
};

use crate::builtins;
use crate::channels::ChannelHub;
use crate::http::HttpRoutes;
use crate::logs::{LogStore, TraceIndex};
use crate::registry::{
    Effects, FunctionInfo, Handler, Provider, RegisterOutcome, Registry, TriggerEntry,
    TriggerTypeEntry,
};
use crate::worker::{lock, CallOutcome, ConnId, WorkerConn};

/// Boxed future returned by built-in functions.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Engine-wide limits and timeouts.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Engine-side deadline for any call (the SDKs have their own, usually 30 s).
    pub invocation_timeout: Duration,
    /// Calls one worker may be executing at once; more get `overloaded`.
    pub max_inflight_per_worker: usize,
    /// Unanswered calls one worker may have made at once; more get `overloaded`.
    pub max_outstanding_per_caller: usize,
    /// Frames queued towards one worker before sends report it as full.
    pub outbound_queue_frames: usize,
    /// Log records kept in memory (oldest dropped first, and counted).
    pub log_capacity: usize,
    /// Interval of WebSocket pings to workers (every WS library answers them, even SDKs that
    /// never ping themselves).
    pub worker_ping_interval: Duration,
    /// A worker from which nothing (not even a pong) arrived for this long is disconnected.
    pub worker_idle_timeout: Duration,
    /// When a registration conflicts with a live owner, the owner is pinged; if it does not
    /// answer within this time it is treated as dead and the newcomer takes over.
    pub conflict_probe_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            invocation_timeout: Duration::from_secs(30),
            max_inflight_per_worker: 4096,
            max_outstanding_per_caller: 4096,
            outbound_queue_frames: 8192,
            log_capacity: 10_000,
            worker_ping_interval: Duration::from_secs(20),
            worker_idle_timeout: Duration::from_secs(60),
            conflict_probe_timeout: Duration::from_secs(5),
        }
    }
}

/// Who is calling: used for out-of-band caller identity (never injected into payloads).
#[derive(Clone)]
pub enum Caller {
    Worker(Arc<WorkerConn>),
    Engine,
    Http,
    Cli,
}

impl Caller {
    pub fn worker(&self) -> Option<&Arc<WorkerConn>> {
        match self {
            Caller::Worker(w) => Some(w),
            _ => None,
        }
    }
}

/// One invocation request.
pub struct Call {
    pub function_id: String,
    pub data: Value,
    pub metadata: Option<Value>,
    pub caller: Caller,
    /// Id to reuse towards the executing worker (the caller's id for worker → worker calls).
    pub invocation_id: Option<String>,
    pub traceparent: Option<String>,
    pub baggage: Option<String>,
    /// Overrides [`EngineConfig::invocation_timeout`].
    pub timeout: Option<Duration>,
}

impl Call {
    pub fn new(function_id: impl Into<String>, data: Value, caller: Caller) -> Self {
        Self {
            function_id: function_id.into(),
            data,
            metadata: None,
            caller,
            invocation_id: None,
            traceparent: None,
            baggage: None,
            timeout: None,
        }
    }
}

/// Cheap-to-clone handle to the engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// A handle that does not keep the engine alive (held by long-lived modules the engine owns).
#[derive(Clone)]
pub struct WeakEngine(Weak<Inner>);

impl WeakEngine {
    pub fn upgrade(&self) -> Option<Engine> {
        self.0.upgrade().map(|inner| Engine { inner })
    }
}

struct Inner {
    config: EngineConfig,
    registry: Mutex<Registry>,
    http: Arc<HttpRoutes>,
    logs: LogStore,
    channels: ChannelHub,
    traces: Mutex<TraceIndex>,
    functions_changed: Notify,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    state: OnceLock<Arc<crate::state::StateModule>>,
    streams: OnceLock<Arc<crate::stream::StreamModule>>,
    queues: OnceLock<Arc<crate::queue::QueueModule>>,
    cluster: OnceLock<Arc<crate::cluster::Cluster>>,
    /// Bumped whenever the set of registered functions changes.
    functions_epoch: watch::Sender<u64>,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        let http = Arc::new(HttpRoutes::default());
        let engine = Engine {
            inner: Arc::new(Inner {
                logs: LogStore::new(config.log_capacity),
                channels: ChannelHub::new(Duration::from_secs(300)),
                config,
                registry: Mutex::new(Registry::default()),
                http: http.clone(),
                traces: Mutex::new(TraceIndex::new(16_384)),
                functions_changed: Notify::new(),
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                state: OnceLock::new(),
                streams: OnceLock::new(),
                queues: OnceLock::new(),
                cluster: OnceLock::new(),
                functions_epoch: watch::Sender::new(0),
            }),
        };
        {
            let mut reg = lock(&engine.inner.registry);
            builtins::install(&mut reg);
            reg.add_builtin_trigger_type("http", "HTTP API trigger", http);
            let passive = Arc::new(builtins::EngineEventTriggers);
            reg.add_builtin_trigger_type(
                "engine::functions-available",
                "Fires when the set of functions changes",
                passive.clone(),
            );
            reg.add_builtin_trigger_type(
                "engine::workers-available",
                "Fires when workers connect, disconnect or report metadata",
                passive,
            );
        }
        engine.spawn_functions_watcher();
        engine
    }

    /// A handle that does not keep the engine alive.
    pub fn downgrade(&self) -> WeakEngine {
        WeakEngine(Arc::downgrade(&self.inner))
    }

    /// Opens the state module on `store` (recovering owed trigger deliveries) and registers the
    /// `state::*` functions and the `state` trigger type. Call once, inside the runtime, before
    /// workers connect.
    pub fn enable_state(
        &self,
        store: Arc<dyn trine_store::Store>,
        options: crate::state::StateOptions,
    ) -> Result<(), trine_store::StoreError> {
        if self.inner.state.get().is_some() {
            return Err(trine_store::StoreError::Engine(
                "the state module is already enabled".into(),
            ));
        }
        let module = crate::state::install(self, store, options)?;
        let _ = self.inner.state.set(module);
        Ok(())
    }

    /// Enables the stream module (`stream::*`, the `stream`, `stream:join`, `stream:leave`
    /// trigger types) on the store of the state module, which must be enabled first (with
    /// `functions: false` when only streams are wanted).
    pub fn enable_streams(&self, options: crate::stream::StreamOptions) -> Result<(), String> {
        let core = self
            .inner
            .state
            .get()
            .cloned()
            .ok_or("the stream module needs the store: enable state first")?;
        let module = crate::stream::install(self, core, options)?;
        let _ = self.inner.streams.set(module);
        Ok(())
    }

    /// Opens the queue module on `store` (recovering stored jobs) and registers the queue
    /// functions and the `durable:subscriber` trigger type. Call once, inside the runtime.
    pub fn enable_queues(
        &self,
        store: Arc<dyn trine_store::Store>,
        options: crate::queue::QueueOptions,
    ) -> Result<(), trine_store::StoreError> {
        if self.inner.queues.get().is_some() {
            return Err(trine_store::StoreError::Engine(
                "the queue module is already enabled".into(),
            ));
        }
        let module = crate::queue::install(self, store, options)?;
        let _ = self.inner.queues.set(module);
        Ok(())
    }

    /// Joins a cluster of engines on one Redis (calls to functions registered on other engines
    /// are forwarded to them). Call once, inside the runtime, once the worker listener runs.
    pub fn enable_cluster(&self, options: crate::cluster::ClusterOptions) -> Result<(), String> {
        if self.inner.cluster.get().is_some() {
            return Err("cluster mode is already enabled".into());
        }
        let c = crate::cluster::install(self, options)?;
        let _ = self.inner.cluster.set(c);
        Ok(())
    }

    /// Cluster membership, when enabled.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.inner.cluster.get()
    }

    /// The queue module, when enabled.
    pub fn queues(&self) -> Option<&Arc<crate::queue::QueueModule>> {
        self.inner.queues.get()
    }

    /// A receiver that changes whenever the set of registered functions changes.
    pub fn watch_functions(&self) -> watch::Receiver<u64> {
        self.inner.functions_epoch.subscribe()
    }

    /// Whether a function with this id is registered (built in or by a worker), here or, in a
    /// cluster, on another engine of the group.
    pub fn has_function(&self, id: &str) -> bool {
        self.registry().functions.contains_key(id)
            || self.inner.cluster.get().is_some_and(|c| c.has_remote(id))
    }

    /// Another engine of the group changed the functions it offers: wakes what waits for one.
    pub(crate) fn functions_changed_elsewhere(&self) {
        self.inner.functions_epoch.send_modify(|n| *n += 1);
    }

    /// The stream module, when enabled.
    pub fn streams(&self) -> Option<&Arc<crate::stream::StreamModule>> {
        self.inner.streams.get()
    }

    /// The state module, when enabled.
    pub fn state(&self) -> Option<&Arc<crate::state::StateModule>> {
        self.inner.state.get()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    pub fn http_routes(&self) -> &Arc<HttpRoutes> {
        &self.inner.http
    }

    pub fn logs(&self) -> &LogStore {
        &self.inner.logs
    }

    pub fn channels(&self) -> &ChannelHub {
        &self.inner.channels
    }

    pub(crate) fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        lock(&self.inner.registry)
    }

    /// Tracks background work so shutdown can wait for it.
    pub fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Stops accepting work, closes every worker connection and waits (bounded) for tasks.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let workers: Vec<Arc<WorkerConn>> = self.registry().workers.values().cloned().collect();
        for w in workers {
            self.disconnect_worker(&w);
        }
        self.inner.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.tasks.wait()).await;
        // Writes already queued are committed and synced; owed deliveries stay in the outbox.
        if let Some(state) = self.inner.state.get() {
            state.stop().await;
        }
        if let Some(queues) = self.inner.queues.get() {
            queues.stop().await;
        }
    }

    // ----- connections -------------------------------------------------------------------

    /// Creates the record of a new worker connection and queues its `workerregistered` frame.
    /// `outbound` is the connection's bounded frame queue, drained by its write loop.
    pub fn connect_worker(
        &self,
        outbound: mpsc::Sender<String>,
        remote_addr: Option<String>,
    ) -> Arc<WorkerConn> {
        let id: ConnId = uuid::Uuid::new_v4().to_string().into();
        let conn = Arc::new(WorkerConn::new(
            id.clone(),
            outbound,
            remote_addr,
            self.inner.shutdown.child_token(),
        ));
        let _ = conn.try_send(&Message::WorkerRegistered(WorkerRegistered {
            worker_id: id.to_string(),
            reattach_token: Some(conn.reattach_token.clone()),
        }));
        self.registry().workers.insert(id, conn.clone());
        conn
    }

    /// Runs the cleanup of a connection once (protocol.md §8.1): fails its in-flight calls with
    /// `invocation_stopped`, removes what it still owns, re-parks triggers of types it provided.
    pub fn disconnect_worker(&self, conn: &Arc<WorkerConn>) {
        if !conn.close() {
            return;
        }
        let was_listed = conn.is_active();
        let mut fx = Effects::default();
        self.registry().remove_connection(conn, &mut fx);
        self.apply(fx);
        if was_listed {
            tracing::info!(worker_id = %conn.id, worker = %conn.name(), "worker disconnected");
            self.emit_worker_event("worker_disconnected", &conn.id);
        }
    }

    fn apply(&self, fx: Effects) {
        for (to, msg) in fx.sends {
            if let Err(e) = to.try_send(&msg) {
                tracing::warn!(worker_id = %to.id, error = ?e, "could not queue a registry frame for a worker");
            }
        }
        if fx.functions_changed {
            self.inner.functions_changed.notify_one();
            self.inner.functions_epoch.send_modify(|n| *n += 1);
        }
    }

    fn send_error_frame(&self, conn: &Arc<WorkerConn>, body: ErrorBody) {
        let _ = conn.try_send(&Message::Error(ErrorFrame { error: body }));
    }

    /// Applies one decoded frame from a worker. Registrations are applied before returning
    /// (in arrival order); invocations run on their own tasks.
    pub async fn handle_message(&self, conn: &Arc<WorkerConn>, msg: Message) {
        match msg {
            Message::RegisterFunction(f) => {
                let info = FunctionInfo {
                    description: f.description,
                    request_format: f.request_format,
                    response_format: f.response_format,
                    metadata: f.metadata,
                };
                if f.invocation.is_some() {
                    tracing::warn!(function_id = %f.id, "HTTP-invoked functions are not supported yet; registering it as a worker function");
                }
                conn.mark_active();
                let mut fx = Effects::default();
                let outcome = self
                    .registry()
                    .register_function(conn, &f.id, info, &mut fx);
                self.apply(fx);
                match outcome {
                    RegisterOutcome::Owner => {}
                    RegisterOutcome::Standby { owner } => {
                        let owner_name = owner.name();
                        tracing::warn!(function_id = %f.id, owner = %owner_name, worker = %conn.name(),
                            "function id is owned by another live worker; this registration waits as a standby");
                        self.send_error_frame(conn, ErrorBody::new(codes::FUNCTION_ID_CONFLICT,
                            format!("function `{}` is owned by live worker `{owner_name}`; this registration takes over when that worker disconnects", f.id)));
                        self.probe_owner(owner);
                    }
                    RegisterOutcome::Refused => {
                        tracing::warn!(function_id = %f.id, "a worker tried to register a built-in function id");
                        self.send_error_frame(conn, ErrorBody::new(codes::FUNCTION_ID_CONFLICT,
                            format!("function `{}` is built into the engine and cannot be registered by a worker", f.id)));
                    }
                }
            }
            Message::UnregisterFunction(f) => {
                let mut fx = Effects::default();
                self.registry()
                    .unregister_function(&conn.id, &f.id, &mut fx);
                self.apply(fx);
            }
            Message::RegisterTrigger(t) => {
                conn.mark_active();
                let (id, ty, fid) = (t.id.clone(), t.trigger_type.clone(), t.function_id.clone());
                let mut fx = Effects::default();
                let res = self.registry().register_trigger(Some(conn), t, &mut fx);
                self.apply(fx);
                if let Err(error) = res {
                    tracing::warn!(trigger_id = %id, trigger_type = %ty, error = %error.message, "trigger registration failed");
                    let _ = conn.try_send(&Message::TriggerRegistrationResult(
                        trine_protocol::TriggerRegistrationResult {
                            id,
                            trigger_type: ty,
                            function_id: fid,
                            error: Some(error),
                        },
                    ));
                }
            }
            Message::UnregisterTrigger(t) => {
                let mut fx = Effects::default();
                self.registry().remove_trigger(&t.id, &mut fx);
                self.apply(fx);
            }
            Message::RegisterTriggerType(t) => {
                conn.mark_active();
                let entry = TriggerTypeEntry {
                    description: t.description,
                    trigger_request_format: t.trigger_request_format,
                    call_request_format: t.call_request_format,
                    provider: Provider::Worker(conn.clone()),
                };
                let mut fx = Effects::default();
                let res = self
                    .registry()
                    .register_trigger_type(conn, &t.id, entry, &mut fx);
                self.apply(fx);
                if let Err(e) = res {
                    self.send_error_frame(conn, e);
                }
            }
            Message::UnregisterTriggerType(t) => {
                self.registry().unregister_trigger_type(&conn.id, &t.id);
            }
            Message::TriggerRegistrationResult(r) => {
                if r.error.is_some() {
                    let mut fx = Effects::default();
                    self.registry().provider_rejected(&conn.id, r, &mut fx);
                    self.apply(fx);
                }
            }
            Message::RegisterService(s) => {
                tracing::debug!(service = %s.id, "registerservice accepted (services are informational)");
            }
            Message::InvokeFunction(m) => self.handle_invoke(conn, m).await,
            Message::InvocationResult(r) => {
                let outcome = match r.error {
                    Some(e) => Err(e),
                    None => Ok(r.result),
                };
                if !conn.complete(&r.invocation_id, outcome) {
                    tracing::debug!(invocation_id = %r.invocation_id, "result for an unknown or finished invocation ignored");
                }
            }
            Message::Reattach(r) => self.reattach(conn, r.previous_worker_id, r.reattach_token),
            Message::Ping => {
                let _ = conn.send(&Message::Pong).await;
            }
            Message::Pong => {}
            Message::WorkerRegistered(_) | Message::Error(_) => {
                tracing::debug!(worker_id = %conn.id, "engine-bound frame of an engine-only type ignored");
            }
        }
    }

    /// Pings a function owner whose id another worker just registered. A reconnecting worker
    /// whose old socket is half-open (no FIN ever arrived) is the usual cause: if the owner does
    /// not answer within `conflict_probe_timeout`, it is dead and is disconnected, so the standby
    /// takes over instead of waiting for TCP to notice.
    fn probe_owner(&self, owner: Arc<WorkerConn>) {
        let engine = self.clone();
        let wait = self.inner.config.conflict_probe_timeout;
        self.inner.tasks.spawn(async move {
            let before = owner.frames_seen();
            owner.request_ping();
            tokio::time::sleep(wait).await;
            if !owner.is_closed() && owner.frames_seen() == before {
                tracing::warn!(worker_id = %owner.id, worker = %owner.name(), "function owner did not answer a ping; disconnecting it");
                engine.disconnect_worker(&owner);
            }
        });
    }

    fn reattach(&self, conn: &Arc<WorkerConn>, previous: String, token: Option<String>) {
        let old = {
            let reg = self.registry();
            reg.workers.get(previous.as_str()).cloned()
        };
        match (old, token) {
            (Some(old), Some(token)) if old.id != conn.id && old.reattach_token == token => {
                tracing::info!(old = %old.id, new = %conn.id, "reattach: retiring the previous connection");
                self.disconnect_worker(&old);
            }
            _ => {
                tracing::debug!(previous = %previous, "reattach ignored (no matching live connection)")
            }
        }
    }

    async fn handle_invoke(&self, conn: &Arc<WorkerConn>, m: InvokeFunction) {
        match m.action {
            Some(TriggerAction::Enqueue { queue })
                if self.inner.queues.get().is_none() && self.inner.cluster.get().is_some() =>
            {
                // In a group, the owner engine runs the queues: the enqueue goes to it as an
                // `engine::queue::enqueue` call. The call is started here, in the read loop, so
                // one caller's enqueues leave in the order it sent them.
                let call = Call {
                    function_id: "engine::queue::enqueue".into(),
                    data: json!({
                        "queue": queue,
                        "function_id": m.function_id,
                        "data": m.data,
                        "traceparent": m.traceparent,
                        "baggage": m.baggage,
                    }),
                    metadata: None,
                    caller: Caller::Engine,
                    invocation_id: None,
                    traceparent: None,
                    baggage: None,
                    timeout: None,
                };
                let engine = self.clone();
                let mut fut = Box::pin(async move { engine.invoke(call).await });
                let first = fut
                    .as_mut()
                    .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
                let conn = conn.clone();
                let (id, fid) = (m.invocation_id, m.function_id);
                self.inner.tasks.spawn(async move {
                    let outcome = match first {
                        std::task::Poll::Ready(o) => o,
                        std::task::Poll::Pending => fut.await,
                    };
                    match id {
                        Some(id) => reply(&conn, id, fid, outcome).await,
                        None => {
                            if let Err(e) = outcome {
                                tracing::warn!(code = %e.code, error = %e.message, "enqueue without invocation id failed");
                            }
                        }
                    }
                });
            }
            Some(TriggerAction::Enqueue { queue }) => {
                // Admission and the hand-off to the committer happen here, in arrival order, so
                // one caller's enqueues are stored in the order it sent them; the wait for the
                // disk runs on its own task.
                let submitted = match self.inner.queues.get() {
                    None => Err(ErrorBody::new(
                        codes::ENQUEUE_ERROR,
                        "QueueModule not loaded",
                    )),
                    Some(q) => {
                        q.submit(
                            &queue,
                            m.function_id.clone(),
                            m.data,
                            m.traceparent,
                            m.baggage,
                        )
                        .await
                    }
                };
                let Some(id) = m.invocation_id else {
                    if let Err(e) = submitted {
                        tracing::warn!(queue = %queue, code = %e.code, error = %e.message, "enqueue without invocation id failed");
                    }
                    return;
                };
                match submitted {
                    Err(e) => reply(conn, id, m.function_id, Err(e)).await,
                    Ok(stored) => {
                        let conn = conn.clone();
                        self.inner.tasks.spawn(async move {
                            let outcome = stored
                                .await
                                .map(|receipt| Some(json!({ "messageReceiptId": receipt })));
                            reply(&conn, id, m.function_id, outcome).await;
                        });
                    }
                }
            }
            Some(TriggerAction::Void) => {
                let call = Call {
                    function_id: m.function_id,
                    data: m.data,
                    metadata: m.metadata,
                    caller: Caller::Worker(conn.clone()),
                    invocation_id: None,
                    traceparent: m.traceparent,
                    baggage: m.baggage,
                    timeout: None,
                };
                // An inline built-in (e.g. `engine::workers::register`, which the SDKs send
                // fire-and-forget right after connecting) takes effect before the connection's
                // next frame is read: a worker's name is known to the calls that follow it.
                if self.is_inline(&call.function_id) {
                    let fid = call.function_id.clone();
                    if let Err(e) = self.invoke(call).await {
                        tracing::warn!(function_id = %fid, code = %e.code, error = %e.message, "fire-and-forget call failed");
                    }
                    return;
                }
                self.invoke_void(call);
            }
            None => {
                let Some(id) = m.invocation_id else {
                    // A call without id cannot be answered: run it like a void call.
                    let mut call = Call::new(m.function_id, m.data, Caller::Worker(conn.clone()));
                    call.metadata = m.metadata;
                    self.invoke_void(call);
                    return;
                };
                let limit = self.inner.config.max_outstanding_per_caller;
                if conn.outstanding.fetch_add(1, Ordering::AcqRel) >= limit {
                    conn.outstanding.fetch_sub(1, Ordering::AcqRel);
                    let body = ErrorBody::new(
                        codes::OVERLOADED,
                        format!(
                            "this worker already has {limit} calls awaiting results; retry later"
                        ),
                    );
                    reply(conn, id, m.function_id, Err(body)).await;
                    return;
                }
                let call = Call {
                    function_id: m.function_id.clone(),
                    data: m.data,
                    metadata: m.metadata,
                    caller: Caller::Worker(conn.clone()),
                    invocation_id: Some(id.clone()),
                    traceparent: m.traceparent,
                    baggage: m.baggage,
                    timeout: None,
                };
                // Built-ins registered as inline answer from memory: answering them in the read
                // loop saves a task hop per call. Everything else runs on its own task so a slow
                // callee never stalls this connection.
                if self.is_inline(&call.function_id) {
                    let outcome = self.invoke(call).await;
                    reply(conn, id, m.function_id, outcome).await;
                    conn.outstanding.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
                let engine = self.clone();
                let conn = conn.clone();
                self.inner.tasks.spawn(async move {
                    let outcome = engine.invoke(call).await;
                    reply(&conn, id, m.function_id, outcome).await;
                    conn.outstanding.fetch_sub(1, Ordering::AcqRel);
                });
            }
        }
    }

    // ----- invocation --------------------------------------------------------------------

    /// Whether `function_id` is a built-in that answers from memory (run in the read loop).
    fn is_inline(&self, function_id: &str) -> bool {
        matches!(
            self.registry()
                .functions
                .get(function_id)
                .map(|e| &e.handler),
            Some(Handler::Builtin { inline: true, .. })
        )
    }

    /// Runs a call and returns its outcome. `Ok(None)` means the function returned nothing.
    pub async fn invoke(&self, call: Call) -> CallOutcome {
        let handler = {
            let reg = self.registry();
            reg.functions
                .get(&call.function_id)
                .map(|e| e.handler.clone())
        };
        let timeout = call.timeout.unwrap_or(self.inner.config.invocation_timeout);
        match handler {
            None => {
                // Another engine of the cluster may have it (a forwarded call is never
                // forwarded again).
                if let Some(cluster) = self.inner.cluster.get() {
                    if !crate::cluster::Cluster::is_forwarded(&call) {
                        let fid = call.function_id.clone();
                        if let Some(out) = cluster.forward(call, timeout).await {
                            return out;
                        }
                        return Err(not_found(&fid));
                    }
                }
                Err(not_found(&call.function_id))
            }
            Some(Handler::Builtin { f, .. }) => {
                let fut = f(self.clone(), call.caller, call.data);
                match tokio::time::timeout(timeout, fut).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(timeout_error(&call.function_id, timeout)),
                }
            }
            Some(Handler::Worker(w)) => self.call_worker(w, call, timeout).await,
        }
    }

    /// Runs a call without anyone waiting for it; failures are logged.
    pub fn invoke_void(&self, call: Call) {
        let engine = self.clone();
        self.inner.tasks.spawn(async move {
            let fid = call.function_id.clone();
            if let Err(e) = engine.invoke(call).await {
                tracing::warn!(function_id = %fid, code = %e.code, error = %e.message, "fire-and-forget call failed");
            }
        });
    }

    async fn call_worker(&self, w: Arc<WorkerConn>, call: Call, timeout: Duration) -> CallOutcome {
        // Reuse the caller's id unless it is already in use on the target.
        let mut id = call
            .invocation_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let limit = self.inner.config.max_inflight_per_worker;
        let rx = match w.add_inflight(&id, limit) {
            Ok(rx) => rx,
            Err(e) if e.code == codes::INVOCATION_ERROR => {
                id = uuid::Uuid::new_v4().to_string();
                w.add_inflight(&id, limit)?
            }
            Err(e) => return Err(e),
        };
        let traceparent = {
            let mut traces = lock(&self.inner.traces);
            match call.traceparent {
                Some(tp) => {
                    traces.record(&tp, &call.function_id, &w);
                    tp
                }
                None => traces.start(&call.function_id, &w),
            }
        };
        let frame = Message::InvokeFunction(InvokeFunction {
            invocation_id: Some(id.clone()),
            function_id: call.function_id.clone(),
            data: call.data,
            action: None,
            metadata: call.metadata,
            traceparent: Some(traceparent),
            baggage: call.baggage,
        });
        if let Err(e) = w.try_send(&frame) {
            w.remove_inflight(&id);
            return Err(match e {
                crate::worker::SendError::Full => ErrorBody::new(
                    codes::OVERLOADED,
                    format!("worker {} is not reading its queue fast enough", w.name()),
                ),
                crate::worker::SendError::Closed => ErrorBody::new(
                    codes::INVOCATION_STOPPED,
                    "Invocation stopped: the worker disconnected",
                ),
            });
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(ErrorBody::new(
                codes::INVOCATION_STOPPED,
                "Invocation stopped: the worker disconnected",
            )),
            Err(_) => {
                w.remove_inflight(&id);
                Err(timeout_error(&call.function_id, timeout))
            }
        }
    }

    // ----- triggers ------------------------------------------------------------------------

    /// Evaluates a trigger's `condition_function_id` (protocol.md §6): only a literal `false`
    /// skips; an error skips and is logged. Returns whether the handler should run.
    pub async fn condition_passes(
        &self,
        config: &Value,
        payload: &Value,
    ) -> Result<bool, ErrorBody> {
        let Some(cond) = config.get("condition_function_id").and_then(Value::as_str) else {
            return Ok(true);
        };
        let outcome = self
            .invoke(Call::new(cond, payload.clone(), Caller::Engine))
            .await?;
        Ok(outcome != Some(Value::Bool(false)))
    }

    /// Fires a trigger with `payload`: condition first, then the bound function, with the
    /// trigger's metadata as the sidecar. Runs in the background; failures are logged.
    pub fn fire(&self, trigger: &TriggerEntry, payload: Value) {
        let engine = self.clone();
        let t = trigger.clone();
        self.inner.tasks.spawn(async move {
            match engine.condition_passes(&t.config, &payload).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(trigger_id = %t.id, code = %e.code, error = %e.message, "trigger condition failed; handler skipped");
                    return;
                }
            }
            let mut call = Call::new(t.function_id.clone(), payload, Caller::Engine);
            call.metadata = t.metadata.clone();
            if let Err(e) = engine.invoke(call).await {
                tracing::warn!(trigger_id = %t.id, function_id = %t.function_id, code = %e.code, error = %e.message, "trigger handler failed");
            }
        });
    }

    /// Active triggers of one type.
    pub fn triggers_of_type(&self, trigger_type: &str) -> Vec<TriggerEntry> {
        self.registry()
            .triggers
            .values()
            .filter(|t| t.active && t.trigger_type == trigger_type)
            .cloned()
            .collect()
    }

    /// Registers a durable trigger (not owned by any connection).
    pub fn register_durable_trigger(&self, msg: RegisterTrigger) -> Result<(), ErrorBody> {
        let mut fx = Effects::default();
        let res = self.registry().register_trigger(None, msg, &mut fx);
        self.apply(fx);
        res
    }

    pub fn unregister_trigger(&self, id: &str) -> bool {
        let mut fx = Effects::default();
        let removed = self.registry().remove_trigger(id, &mut fx);
        self.apply(fx);
        removed
    }

    pub(crate) fn emit_worker_event(&self, event: &str, worker_id: &str) {
        for t in self.triggers_of_type("engine::workers-available") {
            self.fire(&t, json!({"event": event, "worker_id": worker_id}));
        }
    }

    fn spawn_functions_watcher(&self) {
        let engine = self.clone();
        let token = self.inner.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = engine.inner.functions_changed.notified() => {}
                }
                // Coalesce bursts (a worker registering many functions) into one event.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let triggers = engine.triggers_of_type("engine::functions-available");
                if triggers.is_empty() {
                    continue;
                }
                let functions = builtins::function_summaries(&engine, true);
                for t in triggers {
                    engine.fire(
                        &t,
                        json!({"event": "functions_changed", "functions": functions}),
                    );
                }
            }
        });
    }

    // ----- telemetry -----------------------------------------------------------------------

    /// Ingests one binary telemetry frame (`LOGS` records are kept; spans and metrics are
    /// accepted and dropped for now).
    pub fn ingest_telemetry(
        &self,
        conn: Option<&Arc<WorkerConn>>,
        kind: trine_protocol::TelemetryKind,
        payload: &[u8],
    ) {
        if kind != trine_protocol::TelemetryKind::Logs {
            return;
        }
        let traces = &self.inner.traces;
        let source = conn.map(|c| c.id.clone());
        match self
            .inner
            .logs
            .ingest_otlp(payload, source, |trace_id| lock(traces).lookup(trace_id))
        {
            Ok(n) => tracing::trace!(records = n, "telemetry logs ingested"),
            Err(e) => tracing::debug!(error = %e, "unparseable LOGS frame dropped"),
        }
    }

    pub fn worker(&self, id: &str) -> Option<Arc<WorkerConn>> {
        self.registry().workers.get(id).cloned()
    }
}

async fn reply(
    conn: &Arc<WorkerConn>,
    invocation_id: String,
    function_id: String,
    outcome: CallOutcome,
) {
    let msg = Message::InvocationResult(InvocationResult::from_outcome(
        invocation_id,
        function_id,
        outcome,
    ));
    // Waiting here applies back-pressure to this caller only; it fails once the caller is gone.
    let _ = conn.send(&msg).await;
}

fn not_found(function_id: &str) -> ErrorBody {
    ErrorBody::new(
        codes::FUNCTION_NOT_FOUND,
        format!("Function {function_id} not found"),
    )
}

fn timeout_error(function_id: &str, timeout: Duration) -> ErrorBody {
    ErrorBody::new(
        codes::INVOCATION_TIMEOUT,
        format!(
            "Invocation of {function_id} timed out after {} ms (engine timeout)",
            timeout.as_millis()
        ),
    )
}
