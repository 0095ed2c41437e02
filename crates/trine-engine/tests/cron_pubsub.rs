//! Pub/sub (`publish`, `subscribe`) and cron through the engine's own API, with fake workers
//! that are plain queues (as in `state.rs`). Cron tests use real time and stay under ~4 s each.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use trine_engine::cron::{self, decode_tick, encode_tick, schedule_key};
use trine_engine::pubsub;
use trine_engine::{Call, CallOutcome, Caller, Engine, EngineConfig, WorkerConn};
use trine_protocol::{
    decode_worker_frame, ErrorBody, InvocationResult, InvokeFunction, Message, RegisterFunction,
    RegisterTrigger, TriggerRegistrationResult, UnregisterTrigger,
};
use trine_store::{Batch, MemoryStore, Space, Store, StoreError, StoreInfo};

fn engine() -> Engine {
    let e = Engine::new(EngineConfig::default());
    pubsub::install(&e);
    cron::install(&e, None);
    e
}

async fn call(e: &Engine, fid: &str, data: Value) -> CallOutcome {
    e.invoke(Call::new(fid, data, Caller::Engine)).await
}

async fn err(e: &Engine, fid: &str, data: Value) -> ErrorBody {
    match call(e, fid, data.clone()).await {
        Err(err) => err,
        Ok(v) => panic!("{fid} {data} should fail, got {v:?}"),
    }
}

struct FakeWorker {
    conn: Arc<WorkerConn>,
    rx: mpsc::Receiver<String>,
}

impl FakeWorker {
    fn connect(engine: &Engine) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let conn = engine.connect_worker(tx, None);
        let mut w = FakeWorker { conn, rx };
        let _registered = w.rx.try_recv().expect("workerregistered");
        w
    }

    async fn register_function(&self, e: &Engine, id: &str) {
        e.handle_message(
            &self.conn,
            Message::RegisterFunction(RegisterFunction {
                id: id.into(),
                description: None,
                request_format: None,
                response_format: None,
                metadata: None,
                invocation: None,
            }),
        )
        .await;
    }

    async fn register_trigger(
        &self,
        e: &Engine,
        id: &str,
        trigger_type: &str,
        function_id: &str,
        config: Value,
        metadata: Option<Value>,
    ) {
        e.handle_message(
            &self.conn,
            Message::RegisterTrigger(RegisterTrigger {
                id: id.into(),
                trigger_type: trigger_type.into(),
                function_id: function_id.into(),
                config,
                metadata,
            }),
        )
        .await;
    }

    async fn unregister_trigger(&self, e: &Engine, id: &str) {
        e.handle_message(
            &self.conn,
            Message::UnregisterTrigger(UnregisterTrigger {
                id: id.into(),
                trigger_type: None,
            }),
        )
        .await;
    }

    /// The next invocation sent to this worker (skips other frames).
    async fn next_call(&mut self) -> InvokeFunction {
        loop {
            let text = tokio::time::timeout(Duration::from_secs(3), self.rx.recv())
                .await
                .expect("an invocation within 3 s")
                .expect("channel open");
            if let Some(Message::InvokeFunction(i)) = decode_worker_frame(&text).unwrap() {
                return i;
            }
        }
    }

    /// The next registration result sent to this worker (skips other frames).
    async fn next_registration_result(&mut self) -> TriggerRegistrationResult {
        loop {
            let text = tokio::time::timeout(Duration::from_secs(2), self.rx.recv())
                .await
                .expect("a frame within 2 s")
                .expect("channel open");
            if let Some(Message::TriggerRegistrationResult(r)) = decode_worker_frame(&text).unwrap()
            {
                return r;
            }
        }
    }

    /// Whether no invocation arrives within `wait`.
    async fn quiet_for(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) | Ok(None) => return true,
                Ok(Some(text)) => {
                    if let Some(Message::InvokeFunction(_)) = decode_worker_frame(&text).unwrap() {
                        return false;
                    }
                }
            }
        }
    }

    async fn answer(&self, e: &Engine, inv: &InvokeFunction, result: Value) {
        e.handle_message(
            &self.conn,
            Message::InvocationResult(InvocationResult {
                invocation_id: inv.invocation_id.clone().unwrap(),
                function_id: inv.function_id.clone(),
                result: Some(result),
                error: None,
                traceparent: None,
                baggage: None,
            }),
        )
        .await;
    }
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("a string time"))
        .unwrap_or_else(|e| panic!("{v} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

// ----- pub/sub ------------------------------------------------------------------------------

#[tokio::test]
async fn publish_reaches_every_subscriber_of_its_topic_only() {
    let e = engine();
    let mut w = FakeWorker::connect(&e);
    for f in ["on::a", "on::b", "on::c"] {
        w.register_function(&e, f).await;
    }
    w.register_trigger(
        &e,
        "t1",
        "subscribe",
        "on::a",
        json!({"topic": "orders"}),
        Some(json!({"m": 1})),
    )
    .await;
    w.register_trigger(
        &e,
        "t2",
        "subscribe",
        "on::b",
        json!({"topic": "orders"}),
        None,
    )
    .await;
    w.register_trigger(
        &e,
        "t3",
        "subscribe",
        "on::c",
        json!({"topic": "other"}),
        None,
    )
    .await;

    let out = call(&e, "publish", json!({"topic": "orders", "data": {"x": 1}})).await;
    assert_eq!(out.unwrap(), None, "publish returns nothing");
    let mut seen = BTreeSet::new();
    for _ in 0..2 {
        let inv = w.next_call().await;
        assert_eq!(inv.data, json!({"x": 1}), "the raw data, nothing added");
        if inv.function_id == "on::a" {
            assert_eq!(
                inv.metadata,
                Some(json!({"m": 1})),
                "trigger metadata travels as call metadata"
            );
        }
        seen.insert(inv.function_id.clone());
        w.answer(&e, &inv, Value::Null).await;
    }
    assert_eq!(
        seen,
        BTreeSet::from(["on::a".to_owned(), "on::b".to_owned()])
    );
    assert!(
        w.quiet_for(Duration::from_millis(300)).await,
        "`other` got nothing"
    );

    // Unsubscribing one trigger leaves the other subscribed (reference weakness 20).
    w.unregister_trigger(&e, "t1").await;
    call(&e, "publish", json!({"topic": "orders", "data": "hi"}))
        .await
        .unwrap();
    let inv = w.next_call().await;
    assert_eq!(
        (inv.function_id.as_str(), &inv.data),
        ("on::b", &json!("hi"))
    );
    w.answer(&e, &inv, Value::Null).await;
    assert!(w.quiet_for(Duration::from_millis(300)).await);
}

#[tokio::test]
async fn two_triggers_for_one_function_give_two_calls_in_publish_order() {
    let e = Engine::new(EngineConfig::default());
    let module = pubsub::install(&e);
    let mut w = FakeWorker::connect(&e);
    w.register_function(&e, "on::event").await;
    for id in ["s1", "s2"] {
        w.register_trigger(
            &e,
            id,
            "subscribe",
            "on::event",
            json!({"topic": "t"}),
            None,
        )
        .await;
    }
    for i in 0..10 {
        call(&e, "publish", json!({"topic": "t", "data": i}))
            .await
            .unwrap();
    }
    // Each subscription delivers in order, one call at a time; the two interleave freely.
    let mut got = Vec::new();
    for _ in 0..20 {
        let inv = w.next_call().await;
        got.push(inv.data.as_i64().unwrap());
        w.answer(&e, &inv, Value::Null).await;
    }
    let mut expected: Vec<i64> = (0..10).chain(0..10).collect();
    expected.sort();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "every message reaches both triggers once");
    // Per subscription, values arrive in publish order: each value's second sighting comes
    // after its first, and both sequences are increasing.
    let (mut firsts, mut seconds) = (Vec::new(), Vec::new());
    for v in got {
        if firsts.contains(&v) {
            seconds.push(v);
        } else {
            firsts.push(v);
        }
    }
    assert!(firsts.windows(2).all(|p| p[0] < p[1]), "{firsts:?}");
    assert!(seconds.windows(2).all(|p| p[0] < p[1]), "{seconds:?}");
    // The last outcomes are counted once the drain tasks see the answers.
    let mut stats = module.stats();
    for _ in 0..50 {
        if stats["delivered"] == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        stats = module.stats();
    }
    assert_eq!(
        (
            &stats["subscriptions"],
            &stats["delivered"],
            &stats["dropped"]
        ),
        (&json!(2), &json!(20), &json!(0)),
        "{stats}"
    );
}

#[tokio::test]
async fn publish_validates_its_input() {
    let e = engine();
    let body = err(&e, "publish", json!({"topic": "", "data": 1})).await;
    assert_eq!(
        (body.code.as_str(), body.message.as_str()),
        ("topic_not_set", "Topic is not set")
    );
    for bad in [
        json!({}),
        json!({"topic": 5, "data": 1}),
        json!({"topic": "t"}),
        Value::Null,
    ] {
        let body = err(&e, "publish", bad.clone()).await;
        assert_eq!(body.code, "deserialization_error", "{bad}");
        assert!(
            body.message
                .starts_with("Failed to deserialize input for publish: "),
            "{bad}: {}",
            body.message
        );
    }
    // No subscriber: still fine.
    assert_eq!(
        call(&e, "publish", json!({"topic": "nobody", "data": null}))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn subscribe_without_a_topic_is_refused_to_the_worker() {
    let e = engine();
    let mut w = FakeWorker::connect(&e);
    w.register_function(&e, "on::x").await;
    for (id, config) in [
        ("a", json!({"topic": ""})),
        ("b", json!({})),
        ("c", json!({"topic": 1})),
    ] {
        w.register_trigger(&e, id, "subscribe", "on::x", config.clone(), None)
            .await;
        let r = w.next_registration_result().await;
        assert_eq!(r.id, id);
        let error = r
            .error
            .unwrap_or_else(|| panic!("{config} should be refused"));
        assert_eq!(error.code, "trigger_registration_failed");
        assert!(error.message.contains("topic"), "{}", error.message);
    }
}

// ----- cron ---------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_cron_expressions_are_refused_to_the_worker() {
    let e = engine();
    let mut w = FakeWorker::connect(&e);
    w.register_function(&e, "job").await;
    for (id, config, needle) in [
        (
            "c1",
            json!({"expression": "not a cron"}),
            "invalid cron expression",
        ),
        (
            "c2",
            json!({"expression": "61 * * * * *"}),
            "invalid cron expression",
        ),
        ("c3", json!({"expression": ""}), "empty"),
        ("c4", json!({}), "`expression` is required"),
        ("c5", json!({"expression": "0 0 0 30 2 *"}), "never fires"),
    ] {
        w.register_trigger(&e, id, "cron", "job", config.clone(), None)
            .await;
        let r = w.next_registration_result().await;
        assert_eq!((r.id.as_str(), r.trigger_type.as_str()), (id, "cron"));
        let error = r
            .error
            .unwrap_or_else(|| panic!("{config} should be refused"));
        assert_eq!(error.code, "trigger_registration_failed");
        assert!(
            error.message.contains(needle),
            "{config}: {}",
            error.message
        );
    }
    // Nothing was left registered.
    let listed = call(
        &e,
        "engine::triggers::list",
        json!({"trigger_type": "cron"}),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(listed["triggers"], json!([]));
}

#[tokio::test]
async fn every_second_cron_fires_with_the_reference_payload() {
    let e = engine();
    let mut w = FakeWorker::connect(&e);
    w.register_function(&e, "tick").await;
    w.register_trigger(
        &e,
        "every-second",
        "cron",
        "tick",
        json!({"expression": "* * * * * *"}),
        Some(json!({"team": "ops"})),
    )
    .await;
    let mut scheduled = Vec::new();
    for _ in 0..2 {
        let inv = w.next_call().await;
        assert_eq!(inv.function_id, "tick");
        assert_eq!(inv.metadata, Some(json!({"team": "ops"})));
        let keys: BTreeSet<&str> = inv
            .data
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["trigger", "job_id", "scheduled_time", "actual_time"])
        );
        assert_eq!(inv.data["trigger"], "cron");
        assert_eq!(inv.data["job_id"], "every-second");
        let s = time(&inv.data["scheduled_time"]);
        let a = time(&inv.data["actual_time"]);
        assert_eq!(s.timestamp_subsec_nanos(), 0, "ticks are whole seconds");
        assert!(a >= s, "actual {a} before scheduled {s}");
        assert!(
            (a - s).num_milliseconds() < 900,
            "ran {} ms late",
            (a - s).num_milliseconds()
        );
        scheduled.push(s);
        w.answer(&e, &inv, Value::Null).await;
    }
    assert_eq!((scheduled[1] - scheduled[0]).num_seconds(), 1);
    w.unregister_trigger(&e, "every-second").await;
    assert!(
        w.quiet_for(Duration::from_millis(1300)).await,
        "stopped on unregister"
    );
}

#[tokio::test]
async fn cron_condition_false_skips_the_run() {
    let e = engine();
    let mut w = FakeWorker::connect(&e);
    w.register_function(&e, "tick").await;
    w.register_function(&e, "only::odd").await;
    w.register_trigger(
        &e,
        "c",
        "cron",
        "tick",
        json!({"expression": "* * * * * *", "condition_function_id": "only::odd"}),
        None,
    )
    .await;
    // First tick: the condition answers false, so no handler call follows.
    let cond = w.next_call().await;
    assert_eq!(cond.function_id, "only::odd");
    assert_eq!(cond.data["trigger"], "cron");
    w.answer(&e, &cond, json!(false)).await;
    // Second tick: the condition passes (anything but a literal false), the handler runs with
    // the same payload.
    let cond2 = w.next_call().await;
    assert_eq!(
        cond2.function_id, "only::odd",
        "no handler call after `false`"
    );
    assert!(time(&cond2.data["scheduled_time"]) > time(&cond.data["scheduled_time"]));
    w.answer(&e, &cond2, json!({"ok": true})).await;
    let run = w.next_call().await;
    assert_eq!(run.function_id, "tick");
    assert_eq!(run.data["scheduled_time"], cond2.data["scheduled_time"]);
    w.answer(&e, &run, Value::Null).await;
    w.unregister_trigger(&e, "c").await;
}

#[tokio::test]
async fn triggers_sharing_function_and_expression_run_each_tick_once() {
    let e = engine();
    let mut w = FakeWorker::connect(&e);
    w.register_function(&e, "tick").await;
    for id in ["x1", "x2"] {
        w.register_trigger(
            &e,
            id,
            "cron",
            "tick",
            json!({"expression": "* * * * * *"}),
            None,
        )
        .await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2300);
    let mut ticks = Vec::new();
    while let Ok(inv) = tokio::time::timeout_at(deadline, w.next_call()).await {
        ticks.push(inv.data["scheduled_time"].as_str().unwrap().to_owned());
        w.answer(&e, &inv, Value::Null).await;
    }
    assert!(ticks.len() >= 2, "{ticks:?}");
    let distinct: BTreeSet<&String> = ticks.iter().collect();
    assert_eq!(distinct.len(), ticks.len(), "a tick ran twice: {ticks:?}");
}

/// A store whose commits fail (reads work).
struct FailingStore(MemoryStore);

impl Store for FailingStore {
    fn commit(&self, _batch: Batch, _sync: bool) -> Result<(), StoreError> {
        Err(StoreError::Engine("disk on fire".into()))
    }
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(space, key)
    }
    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<trine_store::Entry>, StoreError> {
        self.0.scan(space, prefix, start_after, limit)
    }
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn info(&self) -> StoreInfo {
        self.0.info()
    }
}

#[tokio::test]
async fn a_tick_that_cannot_be_recorded_does_not_run() {
    let e = Engine::new(EngineConfig::default());
    let module = cron::install(&e, Some(Arc::new(FailingStore(MemoryStore::new()))));
    let mut w = FakeWorker::connect(&e);
    w.register_function(&e, "tick").await;
    w.register_trigger(
        &e,
        "c",
        "cron",
        "tick",
        json!({"expression": "* * * * * *"}),
        None,
    )
    .await;
    assert!(w.quiet_for(Duration::from_millis(1500)).await);
    assert!(
        module.stats()["record_errors"].as_u64().unwrap() >= 1,
        "{}",
        module.stats()
    );
}

#[tokio::test]
async fn a_recorded_tick_is_not_repeated_after_an_engine_restart() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let key = schedule_key("job", "* * * * * *");

    // First engine: one tick runs and is recorded.
    let e1 = Engine::new(EngineConfig::default());
    cron::install(&e1, Some(store.clone()));
    let mut w1 = FakeWorker::connect(&e1);
    w1.register_function(&e1, "job").await;
    w1.register_trigger(
        &e1,
        "old-id",
        "cron",
        "job",
        json!({"expression": "* * * * * *"}),
        None,
    )
    .await;
    let inv = w1.next_call().await;
    let first = time(&inv.data["scheduled_time"]);
    w1.answer(&e1, &inv, Value::Null).await;
    e1.shutdown().await;
    let recorded = store
        .get(Space::CronTicks, &key)
        .unwrap()
        .as_deref()
        .and_then(decode_tick)
        .expect("the tick is recorded");
    assert!(recorded >= first.timestamp_millis());

    // Second engine, same store; the worker registers the same schedule under a new id. To make
    // the check bite, the record is moved to the next second, as if the first engine's clock had
    // run ahead of this one: without the durable check that tick would run again.
    let ahead = (Utc::now().timestamp() + 1) * 1000;
    let mut batch = Batch::new();
    batch.put(Space::CronTicks, key.clone(), encode_tick(ahead).to_vec());
    store.commit(batch, true).unwrap();

    let e2 = Engine::new(EngineConfig::default());
    let module = cron::install(&e2, Some(store.clone()));
    let mut w2 = FakeWorker::connect(&e2);
    w2.register_function(&e2, "job").await;
    w2.register_trigger(
        &e2,
        "new-id",
        "cron",
        "job",
        json!({"expression": "* * * * * *"}),
        None,
    )
    .await;
    let inv = w2.next_call().await;
    let s = time(&inv.data["scheduled_time"]);
    assert_eq!(inv.data["job_id"], "new-id");
    assert_eq!(
        s.timestamp_millis(),
        ahead + 1000,
        "the first tick after the recorded one, not {s}"
    );
    w2.answer(&e2, &inv, Value::Null).await;
    assert_eq!(module.stats()["runs"], 1);
    e2.shutdown().await;
}
