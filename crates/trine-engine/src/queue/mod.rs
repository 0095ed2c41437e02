//! Durable queues: the `Enqueue` action, named queues (standard and FIFO), durable topics
//! (`iii::durable::publish` → `durable:subscriber`), retries, dead letters and their management
//! functions (`iii::queue::*`, `engine::queue::*`).
//!
//! Layout:
//! - [`config`]: the `iii-queue` block → [`QueueOptions`];
//! - [`keys`]: how jobs, attempts, dead letters and subscriptions are stored;
//! - [`committer`]: the group-committing write thread (a receipt is sent only after the job is
//!   on disk);
//! - [`sched`]: per-queue scheduling (standard / FIFO lines, backoff, parking while a function is
//!   not registered).
//!
//! Delivery: each queue has one consumer task that starts eligible jobs (up to its
//! concurrency); each job runs on its own task, calls the target with exactly the enqueued
//! payload, and reports back. Failure ⇒ attempts + 1 and a retry after `backoff × 2^(n−1)`
//! (capped), or the dead-letter queue with the real error after the last attempt. A job whose
//! function is not registered (worker restarting, engine just restarted) waits for the
//! registration without using attempts, for up to `missing_handler_grace`. Jobs in flight when
//! the engine dies are still stored and run again after the restart. The contract is written
//! down in `docs/queues.md`.

mod committer;
pub mod config;
pub mod keys;
mod sched;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};
use trine_protocol::{codes as proto_codes, ErrorBody};
use trine_store::{for_each, Space, Store, StoreError};

use crate::builtins::bound;
use crate::engine::{Call, Caller, Engine, WeakEngine};
use crate::registry::{TriggerEntry, TriggerProvider};
use crate::state::{de_error, json_type, object};
use crate::worker::{lock, now_ms, CallOutcome};
use committer::{Cmd, Committer, NewJob, Which};
pub use config::{QueueOptions, QueueSettings, QueueStorage};
use keys::{Attempts, DeadHeader, JobHeader, QueueId, StoredError, Subscription};
use sched::{JobRef, QueueRt, SchedCounts};

/// Stable error codes of the queue module.
pub mod codes {
    /// Unknown queue, FIFO group field missing or null, queue module off (reference code).
    pub const ENQUEUE_ERROR: &str = "enqueue_error";
    /// The queue holds `max_depth` jobs.
    pub const QUEUE_FULL: &str = "queue_full";
    /// The payload is larger than the queue's `max_payload_bytes`.
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    /// The job could not be stored.
    pub const QUEUE_STORAGE_ERROR: &str = "queue_storage_error";
    pub const TOPIC_NOT_SET: &str = "topic_not_set";
    pub const INVALID_TOPIC: &str = "invalid_topic";
    pub const QUEUE_NOT_SET: &str = "queue_not_set";
    pub const QUEUE_NOT_FOUND: &str = "queue_not_found";
    pub const MESSAGE_ID_NOT_SET: &str = "message_id_not_set";
    pub const TOPIC_REQUIRED: &str = "topic_required";
    pub const REDRIVE_FAILED: &str = "redrive_failed";
    pub const REDRIVE_MESSAGE_FAILED: &str = "redrive_message_failed";
    pub const DISCARD_MESSAGE_FAILED: &str = "discard_message_failed";
    pub const DLQ_MESSAGES_FAILED: &str = "dlq_messages_failed";
    /// A topic subscription's condition function failed (a failed attempt).
    pub const CONDITION_ERROR: &str = "condition_error";
    /// A stored job could not be read back (dead-lettered with this code).
    pub const CORRUPT_JOB: &str = "corrupt_job";
}

/// One function subscribed to a topic.
struct Member {
    sub: Subscription,
    /// Active `durable:subscriber` triggers of this function on this topic.
    triggers: BTreeSet<String>,
}

#[derive(Default)]
struct Topics {
    /// topic → function id → member. A member stays while its worker is away; only an
    /// explicit unregister of its last trigger removes it.
    members: HashMap<String, BTreeMap<String, Member>>,
    /// trigger id → (topic, function id).
    by_trigger: HashMap<String, (String, String)>,
}

/// The running queue module.
pub struct QueueModule {
    engine: WeakEngine,
    store: Arc<dyn Store>,
    tx: mpsc::Sender<Cmd>,
    options: QueueOptions,
    queues: RwLock<HashMap<QueueId, Arc<QueueRt>>>,
    topics: Mutex<Topics>,
    durable: bool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn err(code: &str, msg: impl Into<String>) -> ErrorBody {
    ErrorBody::new(code, msg)
}

impl QueueModule {
    /// Recovers every stored job and subscription, starts the committer thread and one consumer
    /// per queue. Call inside the engine's runtime.
    pub(crate) fn open(
        engine: &Engine,
        store: Arc<dyn Store>,
        options: QueueOptions,
    ) -> Result<Arc<Self>, StoreError> {
        let durable = store.info().durable;
        let mut seq = match store.get(Space::Meta, keys::META_QUEUE_SEQ)? {
            Some(b) => u64::from_le_bytes(
                b.as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("queue sequence".into()))?,
            ),
            None => 0,
        };
        // Stored jobs, by queue, in sequence order.
        let mut jobs: BTreeMap<QueueId, Vec<JobRef>> = BTreeMap::new();
        for_each(store.as_ref(), Space::QueueJobs, &[], 4096, |k, v| {
            let (q, s) = keys::split_job_key(&k)?;
            let h: JobHeader = keys::decode_header(&v)?;
            seq = seq.max(s);
            jobs.entry(q)
                .or_default()
                .push(JobRef::from_header(s, &h, 0));
            Ok(true)
        })?;
        for_each(store.as_ref(), Space::QueueAttempts, &[], 4096, |k, v| {
            let (q, s) = keys::split_job_key(&k)?;
            let a: Attempts = serde_json::from_slice(&v)
                .map_err(|e| StoreError::Corrupt(format!("queue attempts: {e}")))?;
            if let Some(list) = jobs.get_mut(&q) {
                if let Ok(i) = list.binary_search_by_key(&s, |j| j.seq) {
                    list[i].attempts = a.attempts;
                }
            }
            Ok(true)
        })?;
        let mut dead: HashMap<QueueId, usize> = HashMap::new();
        for_each(store.as_ref(), Space::QueueDead, &[], 4096, |k, _| {
            let (q, s) = keys::split_job_key(&k)?;
            seq = seq.max(s);
            *dead.entry(q).or_default() += 1;
            Ok(true)
        })?;
        let mut topics = Topics::default();
        for_each(store.as_ref(), Space::QueueTopics, &[], 4096, |k, v| {
            let (topic, function) = keys::split_topic_key(&k)?;
            let sub: Subscription = serde_json::from_slice(&v)
                .map_err(|e| StoreError::Corrupt(format!("queue subscription: {e}")))?;
            topics.members.entry(topic).or_default().insert(
                function,
                Member {
                    sub,
                    triggers: BTreeSet::new(),
                },
            );
            Ok(true)
        })?;

        let (tx, rx) = mpsc::channel(options.command_capacity.max(1));
        let module = Arc::new(QueueModule {
            engine: engine.downgrade(),
            store: store.clone(),
            tx,
            options: options.clone(),
            queues: RwLock::new(HashMap::new()),
            topics: Mutex::new(Topics::default()),
            durable,
            thread: Mutex::new(None),
        });
        for (name, s) in &options.queues {
            module.queue(QueueId::Named(name.clone()), s.clone(), None);
        }
        for (topic, members) in &topics.members {
            for (function, m) in members {
                let (s, cond) = module.subscriber_settings(&m.sub);
                module.queue(
                    QueueId::Topic {
                        topic: topic.clone(),
                        function_id: function.clone(),
                    },
                    s,
                    cond,
                );
            }
        }
        *lock(&module.topics) = topics;
        let mut total = 0usize;
        for (q, list) in jobs {
            total += list.len();
            let rt = match module.get(&q) {
                Some(rt) => rt,
                None => {
                    if let QueueId::Named(n) = &q {
                        tracing::warn!(queue = %n, jobs = list.len(), "queue: stored jobs of a queue the config no longer declares run with default settings");
                    }
                    let s = match &q {
                        QueueId::Topic { .. } | QueueId::Parked(_) => options.subscriber.clone(),
                        QueueId::Named(_) => QueueSettings::default(),
                    };
                    module.queue(q.clone(), s, None)
                }
            };
            rt.depth.fetch_add(list.len(), Ordering::AcqRel);
            if !matches!(q, QueueId::Parked(_)) {
                rt.add(list);
            }
        }
        for (q, n) in dead {
            let rt = match module.get(&q) {
                Some(rt) => rt,
                None => module.queue(q.clone(), QueueSettings::default(), None),
            };
            rt.dead.fetch_add(n, Ordering::AcqRel);
        }
        if total > 0 {
            tracing::info!(
                jobs = total,
                "queue: resuming stored jobs (those in flight at the last stop run again)"
            );
        }
        let committer = Committer::new(store, rx, seq);
        let thread = std::thread::Builder::new()
            .name("trine-queue-committer".into())
            .spawn(move || committer.run())
            .map_err(StoreError::Io)?;
        *lock(&module.thread) = Some(thread);
        let names: Vec<&str> = options.queues.keys().map(String::as_str).collect();
        tracing::info!(queues = %names.join(", "), durable, "queue module ready (undeclared queue names are refused)");
        Ok(module)
    }

    fn get(&self, id: &QueueId) -> Option<Arc<QueueRt>> {
        self.queues
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// The queue `id`, created (with its consumer) if new.
    fn queue(
        self: &Arc<Self>,
        id: QueueId,
        s: QueueSettings,
        cond: Option<String>,
    ) -> Arc<QueueRt> {
        let mut map = self.queues.write().unwrap_or_else(|e| e.into_inner());
        if let Some(rt) = map.get(&id) {
            return rt.clone();
        }
        let rt = Arc::new(QueueRt::new(id.clone(), s, cond));
        map.insert(id.clone(), rt.clone());
        drop(map);
        if !matches!(id, QueueId::Parked(_)) {
            if let Some(engine) = self.engine.upgrade() {
                let module = self.clone();
                let consumer = rt.clone();
                engine
                    .tasks()
                    .spawn(async move { module.consume(consumer).await });
            }
        }
        rt
    }

    fn subscriber_settings(&self, sub: &Subscription) -> (QueueSettings, Option<String>) {
        let mut s = self.options.subscriber.clone();
        s.fifo = sub.fifo;
        s.concurrency = if sub.fifo { 1 } else { sub.concurrency.max(1) };
        s.max_attempts = sub.max_attempts;
        s.backoff_ms = sub.backoff_ms;
        (s, sub.condition_function_id.clone())
    }

    /// Whether stored jobs survive a restart.
    pub fn is_durable(&self) -> bool {
        self.durable
    }

    // ----- producing -----------------------------------------------------------------------

    /// Admits an enqueue and hands it to the committer (waiting only for room in its channel,
    /// so one caller's enqueues are stored in the order they arrive). The returned future
    /// resolves to the receipt once the job is stored.
    pub async fn submit(
        self: &Arc<Self>,
        queue: &str,
        function_id: String,
        data: Value,
        traceparent: Option<String>,
        baggage: Option<String>,
    ) -> Result<impl std::future::Future<Output = Result<String, ErrorBody>>, ErrorBody> {
        let rt = match self.get(&QueueId::Named(queue.to_owned())) {
            Some(rt) if self.options.queues.contains_key(queue) => rt,
            _ => {
                tracing::debug!(queue, "enqueue to an undeclared queue refused (declare it under iii-queue queue_configs)");
                return Err(err(
                    codes::ENQUEUE_ERROR,
                    format!("Queue '{queue}' not found"),
                ));
            }
        };
        let s = rt.settings();
        let group = if s.fifo {
            let field = s.group_field.as_deref().unwrap_or_default();
            match data.get(field) {
                None => {
                    return Err(err(
                        codes::ENQUEUE_ERROR,
                        format!("FIFO queue '{queue}' requires field '{field}' in data, but it was not found"),
                    ))
                }
                Some(Value::Null) => {
                    return Err(err(
                        codes::ENQUEUE_ERROR,
                        format!("FIFO queue '{queue}': field '{field}' must not be null"),
                    ))
                }
                Some(Value::String(g)) => Some(Arc::from(g.as_str())),
                Some(other) => Some(Arc::from(other.to_string().as_str())),
            }
        } else {
            None
        };
        let payload = serde_json::to_vec(&data).map_err(|e| {
            err(
                codes::ENQUEUE_ERROR,
                format!("payload could not be encoded: {e}"),
            )
        })?;
        if payload.len() > s.max_payload_bytes {
            return Err(err(
                codes::PAYLOAD_TOO_LARGE,
                format!(
                    "payload is {} bytes; queue '{queue}' accepts at most {} (max_payload_bytes)",
                    payload.len(),
                    s.max_payload_bytes
                ),
            ));
        }
        self.admit(&rt, &s, queue)?;
        let receipt = uuid::Uuid::new_v4().to_string();
        let job = NewJob {
            rt: rt.clone(),
            header: JobHeader {
                id: uuid::Uuid::new_v4().to_string(),
                receipt: receipt.clone(),
                function_id,
                max_attempts: s.max_attempts,
                backoff_ms: s.backoff_ms,
                created_at_ms: now_ms(),
                group: group.as_deref().map(str::to_owned),
                traceparent,
                baggage,
            },
            payload,
            group,
        };
        let stored = self.send_jobs(vec![job]).await?;
        rt.counters.enqueued.fetch_add(1, Ordering::Relaxed);
        Ok(async move {
            stored.await?;
            Ok(receipt)
        })
    }

    /// Enqueues and waits for the receipt.
    pub async fn enqueue(
        self: &Arc<Self>,
        queue: &str,
        function_id: String,
        data: Value,
        traceparent: Option<String>,
        baggage: Option<String>,
    ) -> Result<String, ErrorBody> {
        self.submit(queue, function_id, data, traceparent, baggage)
            .await?
            .await
    }

    fn admit(&self, rt: &QueueRt, s: &QueueSettings, name: &str) -> Result<(), ErrorBody> {
        let before = rt.depth.fetch_add(1, Ordering::AcqRel);
        if before >= s.max_depth {
            rt.depth.fetch_sub(1, Ordering::AcqRel);
            return Err(err(
                codes::QUEUE_FULL,
                format!(
                    "queue '{name}' holds {before} jobs, its limit (max_depth {}); retry later",
                    s.max_depth
                ),
            ));
        }
        Ok(())
    }

    /// Sends jobs to the committer; the returned future resolves once they are stored.
    async fn send_jobs(
        &self,
        jobs: Vec<NewJob>,
    ) -> Result<impl std::future::Future<Output = Result<(), ErrorBody>>, ErrorBody> {
        let (reply, rx) = oneshot::channel();
        let rts: Vec<Arc<QueueRt>> = jobs.iter().map(|j| j.rt.clone()).collect();
        if self.tx.send(Cmd::Enqueue { jobs, reply }).await.is_err() {
            for rt in rts {
                rt.depth.fetch_sub(1, Ordering::AcqRel);
            }
            return Err(err(
                codes::QUEUE_STORAGE_ERROR,
                "the queue store is stopped",
            ));
        }
        Ok(async move {
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(err(
                    codes::QUEUE_STORAGE_ERROR,
                    format!("the job could not be stored: {e}"),
                )),
                Err(_) => Err(err(codes::QUEUE_STORAGE_ERROR, "the queue store stopped")),
            }
        })
    }

    /// `iii::durable::publish`: one job per subscribed function, stored before the answer. With
    /// no subscriber the message is parked for the topic's first subscriber.
    pub async fn publish(self: &Arc<Self>, topic: &str, data: Value) -> Result<(), ErrorBody> {
        if topic.is_empty() {
            return Err(err(codes::TOPIC_NOT_SET, "Topic is not set"));
        }
        config::check_name("topic", topic).map_err(|e| err(codes::INVALID_TOPIC, e))?;
        let payload = serde_json::to_vec(&data).map_err(|e| {
            err(
                codes::INVALID_TOPIC,
                format!("data could not be encoded: {e}"),
            )
        })?;
        let subs: Vec<(String, Subscription)> = lock(&self.topics)
            .members
            .get(topic)
            .map(|m| m.iter().map(|(f, m)| (f.clone(), m.sub.clone())).collect())
            .unwrap_or_default();
        let limit = self.options.subscriber.max_payload_bytes;
        if payload.len() > limit {
            return Err(err(
                codes::PAYLOAD_TOO_LARGE,
                format!(
                    "data is {} bytes; topics accept at most {limit}",
                    payload.len()
                ),
            ));
        }
        let mut targets = Vec::new();
        if subs.is_empty() {
            let mut s = self.options.subscriber.clone();
            s.max_depth = self.options.max_parked_per_topic;
            let rt = self.queue(QueueId::Parked(topic.to_owned()), s.clone(), None);
            targets.push((rt, s, String::new()));
        } else {
            for (function, sub) in subs {
                let (s, cond) = self.subscriber_settings(&sub);
                let rt = self.queue(
                    QueueId::Topic {
                        topic: topic.to_owned(),
                        function_id: function.clone(),
                    },
                    s.clone(),
                    cond,
                );
                targets.push((rt, s, function));
            }
        }
        let mut admitted: Vec<Arc<QueueRt>> = Vec::new();
        for (rt, s, _) in &targets {
            if let Err(e) = self.admit(rt, s, topic) {
                for rt in admitted {
                    rt.depth.fetch_sub(1, Ordering::AcqRel);
                }
                return Err(e);
            }
            admitted.push(rt.clone());
        }
        let now = now_ms();
        let jobs = targets
            .into_iter()
            .map(|(rt, s, function)| NewJob {
                rt,
                header: JobHeader {
                    id: uuid::Uuid::new_v4().to_string(),
                    receipt: uuid::Uuid::new_v4().to_string(),
                    function_id: function,
                    max_attempts: s.max_attempts,
                    backoff_ms: s.backoff_ms,
                    created_at_ms: now,
                    group: None,
                    traceparent: None,
                    baggage: None,
                },
                payload: payload.clone(),
                group: None,
            })
            .collect();
        self.send_jobs(jobs).await?.await
    }

    // ----- consuming -----------------------------------------------------------------------

    async fn consume(self: Arc<Self>, rt: Arc<QueueRt>) {
        let Some(engine) = self.engine.upgrade() else {
            return;
        };
        let shutdown = engine.shutdown_token().clone();
        let mut functions = engine.watch_functions();
        let weak = engine.downgrade();
        drop(engine);
        let grace = self.options.missing_handler_grace;
        let mut parked = false;
        loop {
            let (jobs, next_due) = rt.take(now_ms());
            for job in jobs {
                let module = self.clone();
                let rt2 = rt.clone();
                let Some(engine) = weak.upgrade() else {
                    return;
                };
                engine
                    .tasks()
                    .spawn(async move { module.deliver(rt2, job).await });
            }
            let mut wait = match next_due {
                Some(due) => Duration::from_millis(due.saturating_sub(now_ms()).max(1)),
                None => Duration::from_secs(3600),
            };
            if parked {
                wait = wait.min(Duration::from_secs(1));
            }
            tokio::select! {
                _ = rt.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                r = functions.changed() => { if r.is_err() { return; } }
                _ = shutdown.cancelled() => return,
            }
            let registered = |f: &str| weak.upgrade().is_some_and(|e| e.has_function(f));
            parked = rt.unpark(registered, grace);
        }
    }

    async fn deliver(self: Arc<Self>, rt: Arc<QueueRt>, mut job: JobRef) {
        let Some(engine) = self.engine.upgrade() else {
            return;
        };
        let outcome = self.attempt(&engine, &rt, &job).await;
        let stopping = engine.shutdown_token().is_cancelled();
        drop(engine);
        if stopping && outcome.is_err() {
            // The engine is stopping (its workers are being disconnected): the job stays stored
            // as it is and runs again after the restart, without using an attempt.
            return;
        }
        match outcome {
            Ok(()) => {
                rt.counters.delivered.fetch_add(1, Ordering::Relaxed);
                self.settle(Cmd::Done {
                    queue: rt.id.clone(),
                    seq: job.seq,
                })
                .await;
                rt.finish(&job);
            }
            Err(e) if e.code == "__gone" => rt.finish(&job),
            Err(e) if e.code == proto_codes::OVERLOADED => {
                // The call never reached the handler (the worker's in-flight or outbound bound
                // was full): try again shortly without using an attempt.
                tracing::debug!(queue = %rt.id.display_name(), function_id = %job.function, error = %e.message, "queue: target overloaded; retrying");
                rt.retry_at(job, now_ms() + 200);
            }
            Err(e) => {
                let missing = e.code == proto_codes::FUNCTION_NOT_FOUND;
                if missing {
                    let since = *job
                        .missing_since
                        .get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() < self.options.missing_handler_grace {
                        tracing::debug!(queue = %rt.id.display_name(), function_id = %job.function, "queue: target not registered; the job waits for it");
                        rt.park(job);
                        return;
                    }
                } else {
                    job.missing_since = None;
                }
                rt.counters.failed_attempts.fetch_add(1, Ordering::Relaxed);
                job.attempts += 1;
                let error = StoredError {
                    code: e.code.clone(),
                    message: e.message.clone(),
                };
                if job.attempts >= job.max_attempts.max(1) {
                    rt.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(queue = %rt.id.display_name(), function_id = %job.function,
                        attempts = job.attempts, code = %e.code, error = %e.message,
                        "queue job dead-lettered");
                    let attempts = job.attempts;
                    self.settle(Cmd::Dead {
                        rt: rt.clone(),
                        job,
                        attempts,
                        error,
                    })
                    .await;
                } else {
                    let s = rt.settings();
                    let mut backoff = s.clone();
                    backoff.backoff_ms = job.backoff_ms;
                    let delay = backoff.backoff(job.attempts);
                    tracing::debug!(queue = %rt.id.display_name(), function_id = %job.function,
                        attempts = job.attempts, code = %e.code, error = %e.message,
                        delay_ms = delay.as_millis() as u64, "queue job failed; retrying");
                    self.settle(Cmd::Attempt {
                        queue: rt.id.clone(),
                        seq: job.seq,
                        attempts: Attempts {
                            attempts: job.attempts,
                            last_error: Some(error),
                        },
                    })
                    .await;
                    rt.retry_at(job, now_ms() + delay.as_millis() as u64);
                }
            }
        }
    }

    async fn settle(&self, cmd: Cmd) {
        if self.tx.send(cmd).await.is_err() {
            tracing::debug!("queue committer stopped; the settlement is redone after a restart");
        }
    }

    /// One delivery attempt. `Err` with code `__gone` means the job no longer exists.
    async fn attempt(&self, engine: &Engine, rt: &QueueRt, job: &JobRef) -> Result<(), ErrorBody> {
        let key = keys::job_key(&rt.id, job.seq);
        let record = match self.store.get(Space::QueueJobs, &key) {
            Ok(Some(r)) => r,
            Ok(None) => return Err(err("__gone", "")),
            Err(e) => return Err(err(codes::QUEUE_STORAGE_ERROR, e.to_string())),
        };
        let (header, data): (JobHeader, Value) = keys::decode(&record).map_err(|e| {
            err(
                codes::CORRUPT_JOB,
                format!("the stored job is unreadable: {e}"),
            )
        })?;
        let timeout = Duration::from_millis(rt.settings().timeout_ms);
        if let Some(cond) = rt.condition() {
            let mut c = Call::new(cond, data.clone(), Caller::Engine);
            c.timeout = Some(timeout);
            // A condition failure (including a missing condition function) is a failed attempt,
            // never a reason to wait for the handler.
            let out = engine.invoke(c).await.map_err(|e| {
                ErrorBody::new(
                    codes::CONDITION_ERROR,
                    format!("Condition function error: {}: {}", e.code, e.message),
                )
            })?;
            if out == Some(Value::Bool(false)) {
                return Ok(());
            }
        }
        let call = Call {
            function_id: header.function_id,
            data,
            metadata: None,
            caller: Caller::Engine,
            invocation_id: None,
            traceparent: header.traceparent,
            baggage: header.baggage,
            timeout: Some(timeout),
        };
        engine.invoke(call).await.map(|_| ())
    }

    /// Finishes queued commits and stops the committer thread.
    pub async fn stop(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::Stop { reply }).await.is_ok() {
            let _ = rx.await;
        }
        let handle = lock(&self.thread).take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }

    /// Waits until everything settled so far is durable.
    pub async fn sync(&self) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Sync { reply })
            .await
            .map_err(|_| "the queue store is stopped".to_owned())?;
        rx.await.map_err(|_| "the queue store stopped".to_owned())?
    }

    // ----- durable topics --------------------------------------------------------------------

    fn subscribe(self: &Arc<Self>, trigger: &TriggerEntry) -> Result<(), String> {
        let Value::Object(cfg) = &trigger.config else {
            return Err(format!(
                "durable:subscriber config must be an object with `topic`, got {}",
                json_type(&trigger.config)
            ));
        };
        let topic = match cfg.get("topic") {
            Some(Value::String(t)) if !t.is_empty() => t.clone(),
            _ => return Err("durable:subscriber requires a non-empty string `topic`".into()),
        };
        config::check_name("topic", &topic)?;
        let condition = crate::state::triggers::opt_string(cfg, "condition_function_id")?;
        let d = &self.options.subscriber;
        let mut sub = Subscription {
            fifo: d.fifo,
            concurrency: d.concurrency,
            max_attempts: d.max_attempts,
            backoff_ms: d.backoff_ms,
            condition_function_id: condition,
        };
        if let Some(Value::Object(qc)) = cfg.get("queue_config") {
            if let Some(t) = qc.get("type").and_then(Value::as_str) {
                sub.fifo = t == "fifo";
            }
            if let Some(n) = qc.get("concurrency").and_then(Value::as_u64) {
                sub.concurrency = (n as usize).max(1);
            }
            if let Some(n) = qc.get("maxRetries").and_then(Value::as_u64) {
                sub.max_attempts = (n.min(u32::MAX as u64 - 1) as u32) + 1;
            }
            if let Some(n) = qc.get("backoffDelayMs").and_then(Value::as_u64) {
                sub.backoff_ms = n;
            }
        }
        let function = trigger.function_id.clone();
        let (s, cond) = self.subscriber_settings(&sub);
        let id = QueueId::Topic {
            topic: topic.clone(),
            function_id: function.clone(),
        };
        let rt = self.queue(id, s.clone(), cond.clone());
        rt.set_settings(s, cond);
        let first = {
            let mut t = lock(&self.topics);
            if let Some((old_topic, old_fn)) = t.by_trigger.remove(&trigger.id) {
                if let Some(m) = t
                    .members
                    .get_mut(&old_topic)
                    .and_then(|m| m.get_mut(&old_fn))
                {
                    m.triggers.remove(&trigger.id);
                }
            }
            t.by_trigger
                .insert(trigger.id.clone(), (topic.clone(), function.clone()));
            let members = t.members.entry(topic.clone()).or_default();
            let first = members.is_empty();
            let m = members.entry(function.clone()).or_insert_with(|| Member {
                sub: sub.clone(),
                triggers: BTreeSet::new(),
            });
            m.sub = sub.clone();
            m.triggers.insert(trigger.id.clone());
            first
        };
        let adopt = if first {
            self.get(&QueueId::Parked(topic.clone()))
                .filter(|p| p.depth.load(Ordering::Acquire) > 0)
                .map(|p| (p, rt.clone()))
        } else {
            None
        };
        self.command(Cmd::Subscribe {
            topic,
            function_id: function,
            sub,
            adopt,
        });
        Ok(())
    }

    /// Removes a subscription trigger. An explicit unregister of a function's last trigger on
    /// a topic ends the subscription; a disconnect keeps it, so messages published while the
    /// worker is away wait for it.
    fn unsubscribe(&self, trigger: &TriggerEntry, explicit: bool) {
        let mut t = lock(&self.topics);
        let Some((topic, function)) = t.by_trigger.remove(&trigger.id) else {
            return;
        };
        let mut gone = false;
        if let Some(members) = t.members.get_mut(&topic) {
            if let Some(m) = members.get_mut(&function) {
                m.triggers.remove(&trigger.id);
                if explicit && m.triggers.is_empty() {
                    members.remove(&function);
                    gone = true;
                }
            }
            if members.is_empty() {
                t.members.remove(&topic);
            }
        }
        drop(t);
        if gone {
            self.command(Cmd::Unsubscribe {
                topic,
                function_id: function,
            });
        }
    }

    /// Sends a command from a synchronous context (registry callbacks).
    fn command(&self, cmd: Cmd) {
        match self.tx.try_send(cmd) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(cmd)) => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(cmd).await;
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    // ----- management ------------------------------------------------------------------------

    /// Queues a user-facing name addresses: the named queue, else every subscriber queue of the
    /// topic.
    fn resolve(&self, name: &str) -> Vec<Arc<QueueRt>> {
        if self.options.queues.contains_key(name) {
            return self
                .get(&QueueId::Named(name.to_owned()))
                .into_iter()
                .collect();
        }
        let map = self.queues.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<Arc<QueueRt>> = map
            .values()
            .filter(|rt| matches!(&rt.id, QueueId::Topic { topic, .. } if topic == name))
            .cloned()
            .collect();
        if v.is_empty() {
            if let Some(rt) = map.get(&QueueId::Named(name.to_owned())) {
                v.push(rt.clone());
            }
        }
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Redrives (or discards) the dead letters `which` of every queue `name` addresses; a
    /// single message stops at the first queue that had it.
    async fn on_dead_letters(
        &self,
        name: &str,
        which: Which,
        discard: bool,
    ) -> Result<u64, String> {
        let one = matches!(which, Which::One(_));
        let mut total = 0;
        for rt in self.resolve(name) {
            let (reply, rx) = oneshot::channel();
            let which = which.clone();
            let cmd = if discard {
                Cmd::Discard { rt, which, reply }
            } else {
                Cmd::Redrive { rt, which, reply }
            };
            self.tx
                .send(cmd)
                .await
                .map_err(|_| "the queue store is stopped".to_owned())?;
            total += rx
                .await
                .map_err(|_| "the queue store stopped".to_owned())??;
            if one && total > 0 {
                break;
            }
        }
        Ok(total)
    }

    /// Dead letters of the queues `name` addresses, newest first.
    fn dead_letters(&self, name: &str) -> Result<Vec<Value>, StoreError> {
        let mut out: Vec<(u64, Value)> = Vec::new();
        for rt in self.resolve(name) {
            for_each(
                self.store.as_ref(),
                Space::QueueDead,
                &rt.id.prefix(),
                1024,
                |_, v| {
                    let (h, payload): (DeadHeader, Value) = keys::decode(&v)?;
                    out.push((
                        h.failed_at_ms,
                        json!({
                            "id": h.job.id,
                            "payload": payload,
                            "error": h.error.message,
                            "error_code": h.error.code,
                            "failed_at": h.failed_at_ms / 1000,
                            "failed_at_ms": h.failed_at_ms,
                            "retries": h.attempts,
                            "size_bytes": v.len(),
                            "message_id": h.job.receipt,
                            "function_id": h.job.function_id,
                            "enqueued_at_ms": h.job.created_at_ms,
                        }),
                    ));
                    Ok(true)
                },
            )?;
        }
        out.sort_by_key(|x| std::cmp::Reverse(x.0));
        Ok(out.into_iter().map(|(_, v)| v).collect())
    }

    fn subscriber_count(&self, topic: &str) -> usize {
        lock(&self.topics)
            .members
            .get(topic)
            .map_or(0, |m| m.values().map(|m| m.triggers.len()).sum())
    }

    /// Summary of every queue and topic (for `engine::queue::list` and `trine queue ls`).
    fn list(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for (name, s) in &self.options.queues {
            if let Some(rt) = self.get(&QueueId::Named(name.clone())) {
                out.push(self.describe(name, "queue", &[rt], s));
            }
        }
        let mut topics: BTreeMap<String, Vec<Arc<QueueRt>>> = BTreeMap::new();
        let mut parked: BTreeMap<String, usize> = BTreeMap::new();
        {
            let map = self.queues.read().unwrap_or_else(|e| e.into_inner());
            for rt in map.values() {
                match &rt.id {
                    QueueId::Topic { topic, .. } => {
                        topics.entry(topic.clone()).or_default().push(rt.clone())
                    }
                    QueueId::Parked(t) => {
                        parked.insert(t.clone(), rt.depth.load(Ordering::Acquire));
                    }
                    QueueId::Named(n) if !self.options.queues.contains_key(n) => {
                        out.push(self.describe(
                            n,
                            "queue",
                            std::slice::from_ref(rt),
                            &rt.settings(),
                        ));
                    }
                    QueueId::Named(_) => {}
                }
            }
        }
        for t in lock(&self.topics).members.keys() {
            topics.entry(t.clone()).or_default();
        }
        for t in parked.keys() {
            topics.entry(t.clone()).or_default();
        }
        for (topic, rts) in topics {
            let s = rts
                .first()
                .map(|r| r.settings())
                .unwrap_or_else(|| self.options.subscriber.clone());
            let mut v = self.describe(&topic, "topic", &rts, &s);
            v["subscribers"] = json!(self.subscriber_count(&topic));
            v["parked"] = json!(parked.get(&topic).copied().unwrap_or(0));
            let functions: Vec<&str> = rts
                .iter()
                .filter_map(|r| match &r.id {
                    QueueId::Topic { function_id, .. } => Some(function_id.as_str()),
                    _ => None,
                })
                .collect();
            v["functions"] = json!(functions);
            out.push(v);
        }
        out
    }

    fn describe(&self, name: &str, kind: &str, rts: &[Arc<QueueRt>], s: &QueueSettings) -> Value {
        let (c, dead) = SchedCounts::total(rts);
        let (mut enq, mut done, mut failed, mut dl) = (0, 0, 0, 0);
        for rt in rts {
            enq += rt.counters.enqueued.load(Ordering::Relaxed);
            done += rt.counters.delivered.load(Ordering::Relaxed);
            failed += rt.counters.failed_attempts.load(Ordering::Relaxed);
            dl += rt.counters.dead_lettered.load(Ordering::Relaxed);
        }
        json!({
            "name": name,
            "kind": kind,
            "type": s.type_name(),
            "concurrency": s.concurrency,
            "max_retries": s.max_attempts,
            "backoff_ms": s.backoff_ms,
            "message_group_field": s.group_field,
            "waiting": c.waiting,
            "delayed": c.delayed,
            "in_flight": c.in_flight,
            "waiting_for_handler": c.waiting_for_handler,
            "pending": c.pending(),
            "dlq_count": dead,
            "enqueued": enq,
            "delivered": done,
            "failed_attempts": failed,
            "dead_lettered": dl,
            "durable": self.durable,
        })
    }

    /// `iii::queue::status`: a queue's counts; with `message_id`, where that job is.
    fn status(&self, name: &str, message_id: Option<&str>) -> Result<Value, ErrorBody> {
        let rts = self.resolve(name);
        if rts.is_empty() {
            return Err(err(
                codes::QUEUE_NOT_FOUND,
                format!("Queue '{name}' not found"),
            ));
        }
        let named = self.options.queues.contains_key(name);
        let s = rts[0].settings();
        let mut v = self.describe(name, if named { "queue" } else { "topic" }, &rts, &s);
        v["queue"] = json!(name);
        if let Some(id) = message_id {
            v["message"] = self.locate(&rts, id).map_err(|e| {
                err(
                    codes::QUEUE_STORAGE_ERROR,
                    format!("Failed to read the queue: {e}"),
                )
            })?;
        }
        Ok(v)
    }

    /// Finds a job by job id or receipt id among stored and dead-lettered jobs.
    fn locate(&self, rts: &[Arc<QueueRt>], id: &str) -> Result<Value, StoreError> {
        for rt in rts {
            let mut found: Option<Value> = None;
            for_each(
                self.store.as_ref(),
                Space::QueueJobs,
                &rt.id.prefix(),
                1024,
                |k, v| {
                    let h: JobHeader = keys::decode_header(&v)?;
                    if h.id == id || h.receipt == id {
                        let a: Attempts = match self.store.get(Space::QueueAttempts, &k)? {
                            Some(b) => serde_json::from_slice(&b).unwrap_or_default(),
                            None => Attempts::default(),
                        };
                        found = Some(json!({
                            "id": h.id, "message_id": h.receipt, "status": "pending",
                            "attempts": a.attempts, "last_error": a.last_error,
                            "function_id": h.function_id, "enqueued_at_ms": h.created_at_ms,
                        }));
                        return Ok(false);
                    }
                    Ok(true)
                },
            )?;
            if found.is_none() {
                for_each(
                    self.store.as_ref(),
                    Space::QueueDead,
                    &rt.id.prefix(),
                    1024,
                    |_, v| {
                        let h: DeadHeader = keys::decode_header(&v)?;
                        if h.job.id == id || h.job.receipt == id {
                            found = Some(json!({
                                "id": h.job.id, "message_id": h.job.receipt, "status": "dead",
                                "attempts": h.attempts, "last_error": h.error,
                                "function_id": h.job.function_id, "failed_at_ms": h.failed_at_ms,
                            }));
                            return Ok(false);
                        }
                        Ok(true)
                    },
                )?;
            }
            if let Some(v) = found {
                return Ok(v);
            }
        }
        Ok(json!({"message_id": id, "status": "not_found"}))
    }
}

/// The `durable:subscriber` trigger type.
struct SubscriberTriggers(std::sync::Weak<QueueModule>);

impl TriggerProvider for SubscriberTriggers {
    fn register(&self, trigger: &TriggerEntry) -> Result<(), String> {
        match self.0.upgrade() {
            Some(m) => m.subscribe(trigger),
            None => Err("the queue module is stopped".into()),
        }
    }

    fn unregister(&self, trigger: &TriggerEntry) {
        if let Some(m) = self.0.upgrade() {
            m.unsubscribe(trigger, true);
        }
    }

    fn owner_gone(&self, trigger: &TriggerEntry) {
        if let Some(m) = self.0.upgrade() {
            m.unsubscribe(trigger, false);
        }
    }
}

// ----- function inputs ----------------------------------------------------------------------

fn typed_string(
    fid: &str,
    m: &Map<String, Value>,
    field: &str,
    alias: Option<&str>,
) -> Result<String, ErrorBody> {
    let v = m.get(field).or_else(|| alias.and_then(|a| m.get(a)));
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        None => Err(de_error(fid, format!("missing field `{field}`"))),
        Some(other) => Err(de_error(
            fid,
            format!(
                "invalid type for `{field}`: {}, expected a string",
                json_type(other)
            ),
        )),
    }
}

/// Loosely read string (missing or not a string = empty), as the reference's
/// `engine::queue::*` functions do.
fn loose_string<'a>(v: &'a Value, field: &str, alias: &str) -> &'a str {
    v.get(field)
        .and_then(Value::as_str)
        .or_else(|| v.get(alias).and_then(Value::as_str))
        .unwrap_or("")
}

impl QueueModule {
    async fn f_publish(self: Arc<Self>, v: Value) -> CallOutcome {
        let fid = "iii::durable::publish";
        let m = object(fid, &v)?;
        let topic = typed_string(fid, m, "topic", None)?;
        if !m.contains_key("data") {
            return Err(de_error(fid, "missing field `data`"));
        }
        self.publish(&topic, m.get("data").cloned().unwrap_or(Value::Null))
            .await?;
        Ok(None)
    }

    async fn f_redrive(self: Arc<Self>, v: Value) -> CallOutcome {
        let fid = "iii::queue::redrive";
        let m = object(fid, &v)?;
        let queue = typed_string(fid, m, "queue", Some("topic"))?;
        if queue.is_empty() {
            return Err(err(codes::QUEUE_NOT_SET, "Queue name is required"));
        }
        let n = self
            .on_dead_letters(&queue, Which::All, false)
            .await
            .map_err(|e| {
                err(
                    codes::REDRIVE_FAILED,
                    format!("Failed to redrive DLQ for queue '{queue}': {e}"),
                )
            })?;
        Ok(Some(json!({"queue": queue, "redriven": n})))
    }

    async fn f_redrive_message(self: Arc<Self>, v: Value, discard: bool) -> CallOutcome {
        let fid = if discard {
            "iii::queue::discard_message"
        } else {
            "iii::queue::redrive_message"
        };
        let m = object(fid, &v)?;
        let queue = typed_string(fid, m, "queue", Some("topic"))?;
        let message_id = typed_string(fid, m, "message_id", None)?;
        if queue.is_empty() {
            return Err(err(codes::QUEUE_NOT_SET, "Queue name is required"));
        }
        if message_id.is_empty() {
            return Err(err(codes::MESSAGE_ID_NOT_SET, "Message ID is required"));
        }
        let which = Which::One(message_id.clone());
        let n = if discard {
            self.on_dead_letters(&queue, which, true)
                .await
                .map_err(|e| {
                    err(
                        codes::DISCARD_MESSAGE_FAILED,
                        format!("Failed to discard DLQ message: {e}"),
                    )
                })?
        } else {
            self.on_dead_letters(&queue, which, false)
                .await
                .map_err(|e| {
                    err(
                        codes::REDRIVE_MESSAGE_FAILED,
                        format!(
                            "Failed to redrive DLQ message '{message_id}' for queue '{queue}': {e}"
                        ),
                    )
                })?
        };
        Ok(Some(
            json!({"queue": queue, "message_id": message_id, "redriven": n}),
        ))
    }

    fn f_list_topics(&self) -> CallOutcome {
        let mut out = Vec::new();
        let mut topics: BTreeSet<String> = lock(&self.topics).members.keys().cloned().collect();
        for id in self.queues.read().unwrap_or_else(|e| e.into_inner()).keys() {
            if let QueueId::Topic { topic, .. } = id {
                topics.insert(topic.clone());
            }
        }
        for t in topics {
            out.push(json!({"name": t, "broker_type": "builtin", "subscriber_count": self.subscriber_count(&t)}));
        }
        for (name, s) in &self.options.queues {
            out.push(
                json!({"name": name, "broker_type": "builtin", "subscriber_count": s.concurrency}),
            );
        }
        Ok(Some(Value::Array(out)))
    }

    fn f_topic_stats(&self, v: &Value) -> CallOutcome {
        let topic = loose_string(v, "topic", "queue");
        if topic.is_empty() {
            return Err(err(codes::TOPIC_REQUIRED, "topic is required"));
        }
        let rts = self.resolve(topic);
        let named = self.options.queues.contains_key(topic);
        let (c, dlq) = SchedCounts::total(&rts);
        let depth = c.pending();
        let consumers = if named {
            self.options.queues[topic].concurrency
        } else {
            self.subscriber_count(topic)
        };
        Ok(Some(
            json!({"depth": depth, "consumer_count": consumers, "dlq_depth": dlq, "config": null}),
        ))
    }

    fn f_dlq_topics(&self) -> CallOutcome {
        let mut out = Vec::new();
        let mut topics: BTreeMap<String, usize> = BTreeMap::new();
        for rt in self
            .queues
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            if let QueueId::Topic { topic, .. } = &rt.id {
                *topics.entry(topic.clone()).or_default() += rt.dead.load(Ordering::Acquire);
            }
        }
        for (t, n) in topics {
            out.push(json!({"topic": t, "broker_type": "builtin", "message_count": n}));
        }
        for name in self.options.queues.keys() {
            let n: usize = self
                .resolve(name)
                .iter()
                .map(|r| r.dead.load(Ordering::Acquire))
                .sum();
            out.push(json!({"topic": name, "broker_type": "function_queue", "message_count": n}));
        }
        Ok(Some(Value::Array(out)))
    }

    fn f_dlq_messages(&self, v: &Value) -> CallOutcome {
        let topic = loose_string(v, "topic", "queue");
        if topic.is_empty() {
            return Err(err(codes::TOPIC_REQUIRED, "topic is required"));
        }
        let offset = v.get("offset").and_then(Value::as_u64).unwrap_or(0) as usize;
        let limit = v.get("limit").and_then(Value::as_u64).unwrap_or(50) as usize;
        let all = self.dead_letters(topic).map_err(|e| {
            err(
                codes::DLQ_MESSAGES_FAILED,
                format!("Failed to browse DLQ messages: {e}"),
            )
        })?;
        Ok(Some(Value::Array(
            all.into_iter().skip(offset).take(limit).collect(),
        )))
    }

    fn f_status(&self, v: &Value) -> CallOutcome {
        let fid = "iii::queue::status";
        let m = object(fid, v)?;
        let queue = typed_string(fid, m, "queue", Some("topic"))?;
        if queue.is_empty() {
            return Err(err(codes::QUEUE_NOT_SET, "Queue name is required"));
        }
        let message_id = match m.get("message_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(other) => {
                return Err(de_error(
                    fid,
                    format!(
                        "invalid type for `message_id`: {}, expected a string",
                        json_type(other)
                    ),
                ))
            }
        };
        self.status(&queue, message_id).map(Some)
    }

    async fn f_enqueue(self: Arc<Self>, v: Value) -> CallOutcome {
        let fid = "engine::queue::enqueue";
        let m = object(fid, &v)?;
        let queue = typed_string(fid, m, "queue", None)?;
        let function_id = typed_string(fid, m, "function_id", None)?;
        let data = m.get("data").cloned().unwrap_or(Value::Null);
        let tp = m
            .get("traceparent")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let bg = m.get("baggage").and_then(Value::as_str).map(str::to_owned);
        let receipt = self.enqueue(&queue, function_id, data, tp, bg).await?;
        Ok(Some(json!({"messageReceiptId": receipt})))
    }
}

/// Opens the module on `store` and registers its functions and the `durable:subscriber`
/// trigger type.
pub(crate) fn install(
    engine: &Engine,
    store: Arc<dyn Store>,
    options: QueueOptions,
) -> Result<Arc<QueueModule>, StoreError> {
    let module = QueueModule::open(engine, store, options)?;
    let m = &module;
    let functions = [
        (
            "iii::durable::publish",
            "Publish a message to a durable topic (one job per subscribed function)",
            bound(m, |m, v| async move { m.f_publish(v).await }),
        ),
        (
            "iii::queue::redrive",
            "Move every dead-lettered job of a queue or topic back to its queue",
            bound(m, |m, v| async move { m.f_redrive(v).await }),
        ),
        (
            "iii::queue::redrive_message",
            "Move one dead-lettered job (by job id or receipt id) back to its queue",
            bound(m, |m, v| async move { m.f_redrive_message(v, false).await }),
        ),
        (
            "iii::queue::discard_message",
            "Delete one dead-lettered job (by job id or receipt id)",
            bound(m, |m, v| async move { m.f_redrive_message(v, true).await }),
        ),
        (
            "iii::queue::status",
            "Counts of a queue or topic; with message_id, where that job is",
            bound(m, |m, v| async move { m.f_status(&v) }),
        ),
        (
            "engine::queue::enqueue",
            "Enqueue a job: {queue, function_id, data} -> {messageReceiptId}",
            bound(m, |m, v| async move { m.f_enqueue(v).await }),
        ),
        (
            "engine::queue::list",
            "Every queue and topic with its counts",
            bound(m, |m, _| async move { Ok(Some(Value::Array(m.list()))) }),
        ),
        (
            "engine::queue::list_topics",
            "Topics and named queues",
            bound(m, |m, _| async move { m.f_list_topics() }),
        ),
        (
            "engine::queue::topic_stats",
            "Depth, consumers and dead letters of a topic or queue",
            bound(m, |m, v| async move { m.f_topic_stats(&v) }),
        ),
        (
            "engine::queue::dlq_topics",
            "Queues and topics with their dead-letter counts",
            bound(m, |m, _| async move { m.f_dlq_topics() }),
        ),
        (
            "engine::queue::dlq_messages",
            "Dead-lettered jobs of a queue or topic, newest first",
            bound(m, |m, v| async move { m.f_dlq_messages(&v) }),
        ),
    ];
    let mut reg = engine.registry();
    for (id, desc, f) in functions {
        reg.add_builtin(id, desc, f);
    }
    reg.add_builtin_trigger_type(
        "durable:subscriber",
        "Durable topic subscription fed by iii::durable::publish",
        Arc::new(SubscriberTriggers(Arc::downgrade(&module))),
    );
    drop(reg);
    Ok(module)
}
