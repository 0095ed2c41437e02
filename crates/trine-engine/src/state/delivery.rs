//! Delivery of state changes to `state` triggers: at least once, in order per (trigger, key).
//!
//! Every owed delivery sits in a *lane* named by (trigger id, scope+key). A lane is drained by
//! one task, front to back: the next event of that key waits until the previous one was
//! delivered or dead-lettered, which gives per-(trigger, key) order. Lanes of different keys,
//! and of different triggers, run independently, so a slow or failing handler only holds up its
//! own key of its own trigger. Each trigger has a bounded number of deliveries in flight at once
//! (a semaphore) so a burst over many keys cannot flood its worker.
//!
//! A failed attempt (handler error, condition error, timeout) is retried after an exponential
//! backoff; after the last attempt the delivery becomes a dead letter carrying the real error.
//! While the handler's function is not registered at all (its worker is restarting, or the engine
//! just restarted and workers are reconnecting), retries do not use up attempts for
//! `missing_handler_grace`.
//!
//! Settled deliveries are acknowledged to the committer, which removes their outbox records in
//! a later batch (without forcing an fsync). A crash before that only causes a redelivery.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use trine_protocol::{codes, ErrorBody};

use super::committer::Command;
use super::StateStats;
use crate::engine::{Call, Caller, WeakEngine};
use crate::worker::{lock, now_ms};

/// Retry policy and bounds of trigger delivery.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// Attempts per delivery before it is dead-lettered (at least 1).
    pub max_attempts: u32,
    /// Delay before the first retry; doubles per attempt.
    pub initial_backoff: Duration,
    /// Largest delay between attempts.
    pub max_backoff: Duration,
    /// How long retries wait for a handler whose function is not registered, without using
    /// up attempts.
    pub missing_handler_grace: Duration,
    /// Deliveries held in memory across all lanes; past it, new ones are dead-lettered at once
    /// (code `trigger_backlog_full`).
    pub max_pending: usize,
    /// Deliveries of one trigger in flight at once.
    pub max_in_flight_per_trigger: usize,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            missing_handler_grace: Duration::from_secs(60),
            max_pending: 1_000_000,
            max_in_flight_per_trigger: 256,
        }
    }
}

/// Where one delivery goes: the trigger as it was when the change was committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub trigger_id: String,
    pub function_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition_function_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// A committed change with the deliveries it owes.
pub struct NewEvent {
    pub seq: u64,
    /// The change's (scope, key), encoded: the lane within each trigger.
    pub lane: Arc<[u8]>,
    /// The exact trigger payload.
    pub payload: Arc<Value>,
    pub targets: Vec<Arc<Target>>,
}

#[derive(Clone)]
struct Job {
    seq: u64,
    target: Arc<Target>,
    payload: Arc<Value>,
}

type LaneKey = (Arc<str>, Arc<[u8]>);

#[derive(Default)]
struct Lanes {
    queues: HashMap<LaneKey, VecDeque<Job>>,
    pending: usize,
}

enum Outcome {
    Delivered,
    Dead {
        error: ErrorBody,
        attempts: u32,
    },
    /// The engine is shutting down: leave the delivery owed (redelivered after restart).
    Aborted,
}

/// Owns the lanes; fed by the committer, acknowledges back to it.
pub struct Delivery {
    engine: WeakEngine,
    options: DeliveryOptions,
    committer: mpsc::Sender<Command>,
    lanes: Mutex<Lanes>,
    permits: Mutex<HashMap<Arc<str>, Arc<Semaphore>>>,
    stats: Arc<StateStats>,
    runtime: tokio::runtime::Handle,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Delivery {
    pub fn new(
        engine: WeakEngine,
        options: DeliveryOptions,
        committer: mpsc::Sender<Command>,
        stats: Arc<StateStats>,
        runtime: tokio::runtime::Handle,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            engine,
            options,
            committer,
            lanes: Mutex::new(Lanes::default()),
            permits: Mutex::new(HashMap::new()),
            stats,
            runtime,
            tasks,
            shutdown,
        }
    }

    /// Deliveries waiting or in flight.
    pub fn pending(&self) -> usize {
        lock(&self.lanes).pending
    }

    /// Queues the deliveries of committed events (in sequence order). Returns those that did
    /// not fit under `max_pending`; the committer dead-letters them.
    pub fn submit(self: &Arc<Self>, events: Vec<NewEvent>) -> Vec<(u64, Arc<Target>, Arc<Value>)> {
        let mut overflow = Vec::new();
        let mut start = Vec::new();
        {
            let mut lanes = lock(&self.lanes);
            for ev in events {
                for target in ev.targets {
                    if lanes.pending >= self.options.max_pending {
                        overflow.push((ev.seq, target, ev.payload.clone()));
                        continue;
                    }
                    lanes.pending += 1;
                    let key: LaneKey = (Arc::from(target.trigger_id.as_str()), ev.lane.clone());
                    let job = Job {
                        seq: ev.seq,
                        target,
                        payload: ev.payload.clone(),
                    };
                    match lanes.queues.get_mut(&key) {
                        Some(q) => q.push_back(job),
                        None => {
                            lanes.queues.insert(key.clone(), VecDeque::from([job]));
                            start.push(key);
                        }
                    }
                }
            }
        }
        for key in start {
            let this = self.clone();
            self.tasks.spawn_on(this.run_lane(key), &self.runtime);
        }
        overflow
    }

    fn permits(&self, trigger_id: &Arc<str>) -> Arc<Semaphore> {
        lock(&self.permits)
            .entry(trigger_id.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.options.max_in_flight_per_trigger)))
            .clone()
    }

    async fn run_lane(self: Arc<Self>, key: LaneKey) {
        let permits = self.permits(&key.0);
        loop {
            let job = {
                let mut lanes = lock(&self.lanes);
                match lanes.queues.get(&key).and_then(|q| q.front()) {
                    Some(j) => j.clone(),
                    None => {
                        lanes.queues.remove(&key);
                        return;
                    }
                }
            };
            let cmd = match self.deliver(&job, &permits).await {
                Outcome::Delivered => Command::Ack {
                    seq: job.seq,
                    trigger_id: key.0.clone(),
                },
                Outcome::Dead { error, attempts } => {
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(trigger_id = %key.0, function_id = %job.target.function_id,
                        seq = job.seq, code = %error.code, error = %error.message, attempts,
                        "state trigger delivery dead-lettered");
                    Command::DeadLetter {
                        seq: job.seq,
                        trigger_id: key.0.clone(),
                        record: dead_letter_record(
                            job.seq,
                            &job.target,
                            &job.payload,
                            &error,
                            attempts,
                        ),
                    }
                }
                Outcome::Aborted => return,
            };
            if self.committer.send(cmd).await.is_err() {
                return;
            }
            let mut lanes = lock(&self.lanes);
            lanes.pending = lanes.pending.saturating_sub(1);
            let empty = match lanes.queues.get_mut(&key) {
                Some(q) => {
                    q.pop_front();
                    q.is_empty()
                }
                None => true,
            };
            if empty {
                lanes.queues.remove(&key);
                return;
            }
        }
    }

    async fn deliver(&self, job: &Job, permits: &Semaphore) -> Outcome {
        let mut attempts: u32 = 0;
        let mut missing_since: Option<Instant> = None;
        loop {
            if self.shutdown.is_cancelled() {
                return Outcome::Aborted;
            }
            let Some(engine) = self.engine.upgrade() else {
                return Outcome::Aborted;
            };
            let result = {
                let Ok(_permit) = permits.acquire().await else {
                    return Outcome::Aborted;
                };
                attempt(&engine, job, &self.stats).await
            };
            drop(engine);
            let error = match result {
                Ok(()) => {
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    return Outcome::Delivered;
                }
                Err(e) => e,
            };
            let handler_gone =
                error.code == codes::FUNCTION_NOT_FOUND || error.code == codes::INVOCATION_STOPPED;
            let delay = if handler_gone
                && missing_since.get_or_insert_with(Instant::now).elapsed()
                    < self.options.missing_handler_grace
            {
                // Wait for the worker to come back without using up attempts.
                self.backoff(attempts + 1).min(Duration::from_secs(1))
            } else {
                if !handler_gone {
                    missing_since = None;
                }
                attempts += 1;
                if attempts >= self.options.max_attempts.max(1) {
                    return Outcome::Dead { error, attempts };
                }
                self.backoff(attempts)
            };
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(trigger_id = %job.target.trigger_id, seq = job.seq, attempts,
                code = %error.code, error = %error.message, delay_ms = delay.as_millis() as u64,
                "state trigger delivery failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.cancelled() => return Outcome::Aborted,
            }
        }
    }

    /// Delay after the `n`-th failed attempt (n ≥ 1).
    fn backoff(&self, n: u32) -> Duration {
        let factor = 1u32 << (n.saturating_sub(1)).min(20);
        self.options
            .initial_backoff
            .saturating_mul(factor)
            .min(self.options.max_backoff)
    }
}

/// One attempt: the condition (only a literal `false` skips), then the handler.
async fn attempt(engine: &crate::Engine, job: &Job, stats: &StateStats) -> Result<(), ErrorBody> {
    if !run_target(engine, &job.target, &job.payload).await? {
        stats.skipped.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Runs a trigger target once: its condition (only a literal `false` skips), then its function
/// with the trigger's metadata. `Ok(false)` when the condition skipped it.
pub(crate) async fn run_target(
    engine: &crate::Engine,
    target: &Target,
    payload: &Value,
) -> Result<bool, ErrorBody> {
    if let Some(cond) = &target.condition_function_id {
        let out = engine
            .invoke(Call::new(cond.clone(), payload.clone(), Caller::Engine))
            .await?;
        if out == Some(Value::Bool(false)) {
            return Ok(false);
        }
    }
    let mut call = Call::new(target.function_id.clone(), payload.clone(), Caller::Engine);
    call.metadata = target.metadata.clone();
    engine.invoke(call).await.map(|_| true)
}

/// The stored form of a dead letter (also what `engine::state::dead_letters::list` returns).
pub fn dead_letter_record(
    seq: u64,
    target: &Target,
    payload: &Value,
    error: &ErrorBody,
    attempts: u32,
) -> Vec<u8> {
    let v = json!({
        "id": format!("{seq}:{}", target.trigger_id),
        "seq": seq,
        "trigger_id": target.trigger_id,
        "function_id": target.function_id,
        "condition_function_id": target.condition_function_id,
        "event": payload,
        "error": {"code": error.code, "message": error.message},
        "attempts": attempts,
        "failed_at_ms": now_ms(),
    });
    serde_json::to_vec(&v).unwrap_or_default()
}
