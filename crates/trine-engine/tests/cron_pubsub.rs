//! Pub/sub (`publish`, `subscribe`) and cron through the engine's own API, with fake workers
//! that are plain queues (`support::FakeWorker`). Cron tests use real time and stay under ~4 s
//! each.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use trine_engine::cron::{self, decode_tick, encode_tick, schedule_key};
use trine_engine::pubsub;
use trine_engine::{Engine, EngineConfig};
use trine_protocol::{Message, RegisterTrigger};
use trine_store::{Batch, MemoryStore, Space, Store, StoreError, StoreInfo};

mod support;
use support::{call, err, trigger, FakeWorker};

fn engine() -> Engine {
    let e = Engine::new(EngineConfig::default());
    pubsub::install(&e);
    cron::install(&e, None);
    e
}

/// A fake worker that waits at most 3 s for a frame (cron tests use real time).
fn connect(e: &Engine) -> FakeWorker {
    FakeWorker::connect(e).with_wait(Duration::from_secs(3))
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
    let mut w = connect(&e);
    for f in ["on::a", "on::b", "on::c"] {
        w.register_function(&e, f).await;
    }
    let t = RegisterTrigger {
        metadata: Some(json!({"m": 1})),
        ..trigger("t1", "subscribe", "on::a", json!({"topic": "orders"}))
    };
    w.send(&e, Message::RegisterTrigger(t)).await;
    w.register_trigger(&e, "t2", "subscribe", "on::b", json!({"topic": "orders"}))
        .await;
    w.register_trigger(&e, "t3", "subscribe", "on::c", json!({"topic": "other"}))
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
        w.answer(&e, &inv, Ok(Value::Null)).await;
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
    w.answer(&e, &inv, Ok(Value::Null)).await;
    assert!(w.quiet_for(Duration::from_millis(300)).await);
}

#[tokio::test]
async fn triggers_of_one_function_on_one_topic_share_one_subscription() {
    let e = Engine::new(EngineConfig::default());
    let module = pubsub::install(&e);
    let mut w = connect(&e);
    w.register_function(&e, "on::event").await;
    for id in ["s1", "s2"] {
        w.register_trigger(&e, id, "subscribe", "on::event", json!({"topic": "t"}))
            .await;
    }
    assert_eq!(module.stats()["subscriptions"], 1);
    for i in 0..10 {
        call(&e, "publish", json!({"topic": "t", "data": i}))
            .await
            .unwrap();
    }
    // One subscription: each message once, in publish order, one call at a time.
    for i in 0..10 {
        let inv = w.next_call().await;
        assert_eq!(inv.data, json!(i));
        w.answer(&e, &inv, Ok(Value::Null)).await;
    }
    assert!(w.quiet_for(Duration::from_millis(300)).await);
    // The first trigger goes: the subscription stays with the second.
    w.unregister_trigger(&e, "s1").await;
    call(&e, "publish", json!({"topic": "t", "data": 10}))
        .await
        .unwrap();
    let inv = w.next_call().await;
    assert_eq!(inv.data, json!(10));
    w.answer(&e, &inv, Ok(Value::Null)).await;
    assert!(w.quiet_for(Duration::from_millis(300)).await);
    // The last goes: nothing is delivered any more.
    w.unregister_trigger(&e, "s2").await;
    call(&e, "publish", json!({"topic": "t", "data": 11}))
        .await
        .unwrap();
    assert!(w.quiet_for(Duration::from_millis(300)).await);
    // The last outcomes are counted once the drain task sees the answers.
    let mut stats = module.stats();
    for _ in 0..50 {
        if stats["delivered"] == 11 {
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
        (&json!(0), &json!(11), &json!(0)),
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
    let mut w = connect(&e);
    w.register_function(&e, "on::x").await;
    for (id, config) in [
        ("a", json!({"topic": ""})),
        ("b", json!({})),
        ("c", json!({"topic": 1})),
    ] {
        w.register_trigger(&e, id, "subscribe", "on::x", config.clone())
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
    let mut w = connect(&e);
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
        w.register_trigger(&e, id, "cron", "job", config.clone())
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
    let mut w = connect(&e);
    w.register_function(&e, "tick").await;
    let t = RegisterTrigger {
        metadata: Some(json!({"team": "ops"})),
        ..trigger(
            "every-second",
            "cron",
            "tick",
            json!({"expression": "* * * * * *"}),
        )
    };
    w.send(&e, Message::RegisterTrigger(t)).await;
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
        w.answer(&e, &inv, Ok(Value::Null)).await;
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
    let mut w = connect(&e);
    w.register_function(&e, "tick").await;
    w.register_function(&e, "only::odd").await;
    w.register_trigger(
        &e,
        "c",
        "cron",
        "tick",
        json!({"expression": "* * * * * *", "condition_function_id": "only::odd"}),
    )
    .await;
    // First tick: the condition answers false, so no handler call follows.
    let cond = w.next_call().await;
    assert_eq!(cond.function_id, "only::odd");
    assert_eq!(cond.data["trigger"], "cron");
    w.answer(&e, &cond, Ok(json!(false))).await;
    // Second tick: the condition passes (anything but a literal false), the handler runs with
    // the same payload.
    let cond2 = w.next_call().await;
    assert_eq!(
        cond2.function_id, "only::odd",
        "no handler call after `false`"
    );
    assert!(time(&cond2.data["scheduled_time"]) > time(&cond.data["scheduled_time"]));
    w.answer(&e, &cond2, Ok(json!({"ok": true}))).await;
    let run = w.next_call().await;
    assert_eq!(run.function_id, "tick");
    assert_eq!(run.data["scheduled_time"], cond2.data["scheduled_time"]);
    w.answer(&e, &run, Ok(Value::Null)).await;
    w.unregister_trigger(&e, "c").await;
}

#[tokio::test]
async fn triggers_sharing_function_and_expression_run_each_tick_once() {
    let e = engine();
    let mut w = connect(&e);
    w.register_function(&e, "tick").await;
    for id in ["x1", "x2"] {
        w.register_trigger(&e, id, "cron", "tick", json!({"expression": "* * * * * *"}))
            .await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2300);
    let mut ticks = Vec::new();
    while let Ok(inv) = tokio::time::timeout_at(deadline, w.next_call()).await {
        ticks.push(inv.data["scheduled_time"].as_str().unwrap().to_owned());
        w.answer(&e, &inv, Ok(Value::Null)).await;
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
    let mut w = connect(&e);
    w.register_function(&e, "tick").await;
    w.register_trigger(
        &e,
        "c",
        "cron",
        "tick",
        json!({"expression": "* * * * * *"}),
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
    let mut w1 = connect(&e1);
    w1.register_function(&e1, "job").await;
    w1.register_trigger(
        &e1,
        "old-id",
        "cron",
        "job",
        json!({"expression": "* * * * * *"}),
    )
    .await;
    let inv = w1.next_call().await;
    let first = time(&inv.data["scheduled_time"]);
    w1.answer(&e1, &inv, Ok(Value::Null)).await;
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
    let mut w2 = connect(&e2);
    w2.register_function(&e2, "job").await;
    w2.register_trigger(
        &e2,
        "new-id",
        "cron",
        "job",
        json!({"expression": "* * * * * *"}),
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
    w2.answer(&e2, &inv, Ok(Value::Null)).await;
    assert_eq!(module.stats()["runs"], 1);
    e2.shutdown().await;
}
