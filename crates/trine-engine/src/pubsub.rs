//! Non-durable pub/sub (worker `iii-pubsub`, adapter `local`): the `publish` function and the
//! `subscribe` trigger type.
//!
//! `publish {topic, data}` hands `data`, unchanged, to every subscription of that topic, with the
//! subscription's metadata as the call's metadata. Publishing never waits for a handler; it
//! returns nothing once the message is queued.
//!
//! A subscription is a (topic, function) pair: `subscribe` triggers binding the same function to
//! the same topic (replicas of one worker, on this engine or forwarded from others) share one
//! subscription and so get one call per message; the call is routed to one of the function's
//! registrations by the engine. The subscription keeps its first trigger's id (in logs) and
//! metadata, and goes away with its last trigger. The reference made one call per trigger.
//!
//! Contract:
//! - Order: each subscription has its own queue drained by one task that awaits each call before
//!   starting the next, so one subscriber sees the messages of one publisher in publish order (and
//!   a slow subscriber only delays itself).
//! - Bounded: a subscription queues at most [`SUBSCRIPTION_QUEUE`] messages. When it is full the
//!   **newest** message is dropped for that subscription only, counted (`dropped` in
//!   [`PubSub::stats`]) and logged (first drop, then every 1000th).
//! - At most once: nothing is persisted and nothing is retried; handler errors are logged and
//!   counted. Removing a subscription's last trigger drops what is still queued for it. Use
//!   `iii::durable::publish` for durable delivery.
//! - Registration: a `subscribe` config without a non-empty string `topic` is rejected with an
//!   error sent to the registering worker (the reference accepted it and subscribed to nothing).
//!   Unregistering one trigger removes only that trigger (the reference dropped every
//!   subscription of the topic). Re-registering a trigger id replaces it (a subscription it was
//!   alone in restarts empty). `condition_function_id` is ignored, as in the reference.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use trine_protocol::{codes as proto_codes, ErrorBody};

use crate::builtins::bound;
use crate::engine::{Call, Caller, Engine, WeakEngine};
use crate::registry::{TriggerEntry, TriggerProvider};
use crate::state::triggers::{opt_string, CowList};
use crate::state::{de_error, json_type, object, req_string};
use crate::worker::{lock, CallOutcome};

/// Stable error codes of the pub/sub module.
pub mod codes {
    /// `publish` with an empty topic.
    pub const TOPIC_NOT_SET: &str = "topic_not_set";
}

/// Messages one subscription may have queued before new ones are dropped for it.
pub const SUBSCRIPTION_QUEUE: usize = 1024;

const PUBLISH: &str = "publish";

/// One active subscription: the `subscribe` triggers of one function on one topic.
struct Subscription {
    /// The first trigger's id (names the subscription in logs).
    trigger_id: String,
    topic: String,
    function_id: String,
    /// Ids of the triggers holding it, oldest first; never empty while listed. Changed only
    /// under the list's write lock.
    holders: Mutex<Vec<String>>,
    queue: mpsc::Sender<Value>,
    dropped: AtomicU64,
    stop: CancellationToken,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    queued: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// The running pub/sub module: the `subscribe` trigger provider and the `publish` function.
pub struct PubSub {
    engine: WeakEngine,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    subscriptions: CowList<Subscription>,
    counters: Arc<Counters>,
}

/// Registers the `publish` function and the `subscribe` trigger type on `engine`.
pub fn install(engine: &Engine) -> Arc<PubSub> {
    let module = Arc::new(PubSub {
        engine: engine.downgrade(),
        tasks: engine.tasks().clone(),
        shutdown: engine.shutdown_token().clone(),
        subscriptions: CowList::default(),
        counters: Arc::default(),
    });
    let mut reg = engine.registry();
    reg.add_builtin(
        PUBLISH,
        "Publish a message to every subscriber of a topic (not durable)",
        bound(&module, |m, v| async move { m.publish_fn(v) }),
    );
    reg.add_builtin_trigger_type(
        "subscribe",
        "Called with the data of every `publish` to its topic",
        module.clone(),
    );
    module
}

impl PubSub {
    /// Queues `data` for every subscription of `topic`; returns how many subscriptions it was
    /// queued for (full queues excluded).
    pub fn publish(&self, topic: &str, data: Value) -> usize {
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        let subs = self.subscriptions.snapshot();
        let mut queued = 0;
        for sub in subs.iter().filter(|s| s.topic == topic) {
            match sub.queue.try_send(data.clone()) {
                Ok(()) => queued += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    let n = sub.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if n == 1 || n.is_multiple_of(1000) {
                        tracing::warn!(trigger_id = %sub.trigger_id, function_id = %sub.function_id,
                            topic, dropped = n, capacity = SUBSCRIPTION_QUEUE,
                            "subscriber is not keeping up; newest messages are dropped for it");
                    }
                }
                // The subscription is being removed.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        self.counters
            .queued
            .fetch_add(queued as u64, Ordering::Relaxed);
        queued
    }

    /// Counters since start and the number of active subscriptions (replicas counted once).
    pub fn stats(&self) -> Value {
        let c = &self.counters;
        json!({
            "subscriptions": self.subscriptions.snapshot().len(),
            "published": c.published.load(Ordering::Relaxed),
            "queued": c.queued.load(Ordering::Relaxed),
            "delivered": c.delivered.load(Ordering::Relaxed),
            "failed": c.failed.load(Ordering::Relaxed),
            "dropped": c.dropped.load(Ordering::Relaxed),
        })
    }

    /// The `publish` function: `{topic, data}` → nothing.
    fn publish_fn(&self, v: Value) -> CallOutcome {
        let m = object(PUBLISH, &v)?;
        let topic = req_string(PUBLISH, m, "topic")?;
        let data = m
            .get("data")
            .cloned()
            .ok_or_else(|| de_error(PUBLISH, "missing field `data`"))?;
        if topic.is_empty() {
            return Err(ErrorBody::new(codes::TOPIC_NOT_SET, "Topic is not set"));
        }
        self.publish(&topic, data);
        Ok(None)
    }
}

impl TriggerProvider for PubSub {
    fn register(&self, trigger: &TriggerEntry) -> Result<(), String> {
        let Value::Object(config) = &trigger.config else {
            return Err(format!(
                "Failed to parse trigger config: expected an object with a `topic`, got {}",
                json_type(&trigger.config)
            ));
        };
        let topic = match opt_string(config, "topic")? {
            Some(t) if !t.is_empty() => t,
            Some(_) => return Err("Failed to parse trigger config: `topic` is empty".into()),
            None => return Err("Failed to parse trigger config: `topic` is required".into()),
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(
                "subscribe triggers can only be registered inside the engine's runtime".into(),
            );
        }
        // A replay of the same id replaces it: it leaves its subscription first.
        self.subscriptions.replace(|v| {
            release(v, &trigger.id);
            if let Some(sub) = v
                .iter()
                .find(|s| s.topic == topic && s.function_id == trigger.function_id)
            {
                lock(&sub.holders).push(trigger.id.clone());
                return;
            }
            let (tx, rx) = mpsc::channel(SUBSCRIPTION_QUEUE);
            let sub = Arc::new(Subscription {
                trigger_id: trigger.id.clone(),
                topic,
                function_id: trigger.function_id.clone(),
                holders: Mutex::new(vec![trigger.id.clone()]),
                queue: tx,
                dropped: AtomicU64::new(0),
                stop: self.shutdown.child_token(),
            });
            self.tasks.spawn(drain(
                self.engine.clone(),
                sub.clone(),
                trigger.metadata.clone(),
                rx,
                self.counters.clone(),
            ));
            v.push(sub);
        });
        Ok(())
    }

    fn unregister(&self, trigger: &TriggerEntry) {
        self.subscriptions.replace(|v| release(v, &trigger.id));
    }
}

/// Takes trigger `trigger_id` out of its subscription in `list`; a subscription left without
/// triggers is removed and its task stopped.
fn release(list: &mut Vec<Arc<Subscription>>, trigger_id: &str) {
    list.retain(|s| {
        let mut holders = lock(&s.holders);
        holders.retain(|h| h != trigger_id);
        if holders.is_empty() {
            s.stop.cancel();
            return false;
        }
        true
    });
}

/// Delivers one subscription's messages in order, one call at a time.
async fn drain(
    engine: WeakEngine,
    sub: Arc<Subscription>,
    metadata: Option<Value>,
    mut rx: mpsc::Receiver<Value>,
    counters: Arc<Counters>,
) {
    loop {
        let data = tokio::select! {
            biased;
            _ = sub.stop.cancelled() => return,
            next = rx.recv() => match next {
                Some(data) => data,
                None => return,
            },
        };
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let mut call = Call::new(sub.function_id.clone(), data, Caller::Engine);
        call.metadata = metadata.clone();
        // A call already sent is awaited even if the trigger goes away meanwhile: abandoning it
        // would not stop the worker, only lose the outcome.
        match engine.invoke(call).await {
            Ok(_) => {
                counters.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                if e.code == proto_codes::FUNCTION_NOT_FOUND {
                    tracing::debug!(trigger_id = %sub.trigger_id, topic = %sub.topic, function_id = %sub.function_id,
                        "subscriber function is not registered; message dropped");
                } else {
                    tracing::warn!(trigger_id = %sub.trigger_id, topic = %sub.topic, function_id = %sub.function_id,
                        code = %e.code, error = %e.message, "subscriber failed; message not retried");
                }
            }
        }
    }
}
