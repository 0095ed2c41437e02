//! The queue module through the engine's own API: the Enqueue action, retries and dead letters
//! with the real error, FIFO order under failures, waiting for an unregistered function,
//! recovery after a restart on the same store, durable topics, bad input. Fake workers are
//! channels (`support::FakeWorker`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use trine_engine::queue::config::parse;
use trine_engine::queue::QueueOptions;
use trine_engine::{Engine, EngineConfig};
use trine_protocol::{Message, UnregisterTrigger};
use trine_store::{MemoryStore, Store};

mod support;
use support::{err, ok, FakeWorker};

fn options(block: Value) -> QueueOptions {
    let mut o = parse(&block).expect("valid queue config").options;
    o.missing_handler_grace = Duration::from_secs(30);
    o
}

fn standard_config() -> Value {
    json!({"queue_configs": {
        "q": {"max_retries": 3, "backoff_ms": 50},
        "one": {"concurrency": 1, "backoff_ms": 20},
        "two": {"concurrency": 2},
        "z": {"max_retries": 0},
        "f": {"type": "fifo", "message_group_field": "g", "concurrency": 4, "backoff_ms": 40, "max_retries": 5},
        "small": {"max_depth": 2, "max_payload_bytes": 20},
    }, "adapter": {"config": {"max_attempts": 2, "backoff_ms": 20}}})
}

fn engine_on(store: Arc<dyn Store>, block: Value) -> Engine {
    let e = Engine::new(EngineConfig::default());
    e.enable_queues(store, options(block))
        .expect("queue module starts");
    e
}

fn engine() -> Engine {
    engine_on(Arc::new(MemoryStore::new()), standard_config())
}

async fn status(e: &Engine, queue: &str) -> Value {
    ok(e, "iii::queue::status", json!({"queue": queue})).await
}

/// Waits until `f` holds (polling engine state, not timing anything).
async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn enqueue_stores_then_runs_the_target_with_the_exact_payload() {
    let e = engine();
    let mut w = FakeWorker::connect(&e);
    w.register_function(&e, "pay").await;
    let payload = json!({"orderId": "o-1", "amount": 42, "nested": {"a": [1, null]}});
    let receipt = w.enqueue_ok(&e, "q", "pay", payload.clone()).await;
    assert_eq!(receipt.len(), 36);
    assert_eq!(receipt.as_bytes()[14], b'4', "a UUID v4: {receipt}");
    let inv = w.next_call().await;
    assert_eq!(inv.function_id, "pay");
    assert_eq!(inv.data, payload, "exactly the caller's payload");
    assert!(inv.action.is_none() && inv.metadata.is_none());
    w.answer(&e, &inv, Ok(Value::Null)).await;
    until("the job to be settled", async || {
        status(&e, "q").await["pending"] == 0
    })
    .await;
    let s = status(&e, "q").await;
    assert_eq!(
        (s["enqueued"].as_u64(), s["delivered"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(w.quiet_for(Duration::from_millis(200)).await, "ran once");
}

#[tokio::test]
async fn a_handler_failing_twice_then_succeeding_runs_three_times() {
    let e = engine();
    let mut w = FakeWorker::connect(&e);
    w.register_function(&e, "flaky").await;
    w.enqueue_ok(&e, "q", "flaky", json!({"n": 1})).await;
    let mut times = Vec::new();
    for i in 0..3 {
        let inv = w.next_call().await;
        times.push(Instant::now());
        assert_eq!(inv.data, json!({"n": 1}));
        let out = if i < 2 {
            Err("not yet")
        } else {
            Ok(json!("done"))
        };
        w.answer(&e, &inv, out).await;
    }
    // Backoff 50 ms, then 100 ms.
    assert!(times[1] - times[0] >= Duration::from_millis(45));
    assert!(times[2] - times[1] >= Duration::from_millis(95));
    until("settled", async || status(&e, "q").await["pending"] == 0).await;
    assert_eq!(status(&e, "q").await["dlq_count"], 0);
    assert!(w.quiet_for(Duration::from_millis(300)).await);
}

#[tokio::test]
async fn exhausted_jobs_are_dead_lettered_with_the_real_error_and_can_be_redriven() {
    let e = engine();
    let mut w = FakeWorker::connect(&e);
    w.register_function(&e, "boom").await;
    let receipt = w.enqueue_ok(&e, "q", "boom", json!({"x": 1})).await;
    for _ in 0..3 {
        let inv = w.next_call().await;
        w.answer(&e, &inv, Err("card declined")).await;
    }
    until("the dead letter", async || {
        status(&e, "q").await["dlq_count"] == 1
    })
    .await;
    assert!(
        w.quiet_for(Duration::from_millis(300)).await,
        "exactly 3 attempts"
    );
    let dlq = ok(&e, "engine::queue::dlq_messages", json!({"topic": "q"})).await;
    let m = &dlq[0];
    assert_eq!(m["payload"], json!({"x": 1}));
    assert_eq!(m["error"], "card declined");
    assert_eq!(m["error_code"], "invocation_failed");
    assert_eq!(m["retries"], 3);
    assert_eq!(m["message_id"], receipt.as_str());
    assert_ne!(m["id"], receipt.as_str());
    assert!(m["failed_at"].as_u64().unwrap() < 10_000_000_000, "seconds");
    assert!(m["size_bytes"].as_u64().unwrap() > 0);
    // Status by receipt.
    let st = ok(
        &e,
        "iii::queue::status",
        json!({"queue": "q", "message_id": receipt}),
    )
    .await;
    assert_eq!(st["message"]["status"], "dead");
    // Redrive all: it runs again (3 more attempts if it keeps failing; here it succeeds).
    assert_eq!(
        ok(&e, "iii::queue::redrive", json!({"queue": "q"})).await,
        json!({"queue": "q", "redriven": 1})
    );
    let inv = w.next_call().await;
    assert_eq!(inv.data, json!({"x": 1}));
    w.answer(&e, &inv, Ok(Value::Null)).await;
    until("settled", async || status(&e, "q").await["pending"] == 0).await;
    assert_eq!(status(&e, "q").await["dlq_count"], 0);
}

#[tokio::test]
async fn redrive_and_discard_one_message_by_job_id_or_receipt() {
    let e = engine();
    let mut w = FakeWorker::connect(&e);
    w.register_function(&e, "boom").await;
    let r1 = w.enqueue_ok(&e, "z", "boom", json!(1)).await;
    let _r2 = w.enqueue_ok(&e, "z", "boom", json!(2)).await;
    for _ in 0..2 {
        let inv = w.next_call().await;
        w.answer(&e, &inv, Err("no")).await;
    }
    until("two dead letters", async || {
        status(&e, "z").await["dlq_count"] == 2
    })
    .await;
    let dlq = ok(&e, "engine::queue::dlq_messages", json!({"topic": "z"})).await;
    let id2 = dlq
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["payload"] == 2)
        .unwrap()["id"]
        .clone();
    assert_eq!(
        ok(
            &e,
            "iii::queue::discard_message",
            json!({"queue": "z", "message_id": id2})
        )
        .await["redriven"],
        1
    );
    assert_eq!(
        ok(
            &e,
            "iii::queue::redrive_message",
            json!({"queue": "z", "message_id": "nope"})
        )
        .await["redriven"],
        0
    );
    assert_eq!(
        ok(
            &e,
            "iii::queue::redrive_message",
            json!({"queue": "z", "message_id": r1})
        )
        .await["redriven"],
        1
    );
    let inv = w.next_call().await;
    assert_eq!(inv.data, json!(1));
    w.answer(&e, &inv, Ok(Value::Null)).await;
    assert_eq!(
        err(
            &e,
            "iii::queue::redrive_message",
            json!({"queue": "z", "message_id": ""})
        )
        .await
        .code,
        "message_id_not_set"
    );
    assert_eq!(
        err(&e, "iii::queue::redrive", json!({"queue": ""}))
            .await
            .code,
        "queue_not_set"
    );
    assert_eq!(
        err(&e, "iii::queue::redrive", json!({})).await.code,
        "deserialization_error"
    );
}

#[tokio::test]
async fn concurrency_one_runs_in_enqueue_order_and_two_never_exceeds_two() {
    let e = engine();
    let mut w = FakeWorker::connect(&e);
    w.register_function(&e, "h").await;
    for i in 0..5 {
        w.enqueue_ok(&e, "one", "h", json!(i)).await;
    }
    for i in 0..5 {
        let inv = w.next_call().await;
        assert_eq!(inv.data, json!(i));
        assert!(
            w.quiet_for(Duration::from_millis(30)).await,
            "one at a time"
        );
        w.answer(&e, &inv, Ok(Value::Null)).await;
    }
    for i in 0..5 {
        w.enqueue_ok(&e, "two", "h", json!(i)).await;
    }
    let a = w.next_call().await;
    let b = w.next_call().await;
    assert!(
        w.quiet_for(Duration::from_millis(100)).await,
        "at most two in flight"
    );
    w.answer(&e, &a, Ok(Value::Null)).await;
    let c = w.next_call().await;
    assert!(w.quiet_for(Duration::from_millis(50)).await);
    for inv in [b, c] {
        w.answer(&e, &inv, Ok(Value::Null)).await;
    }
    for _ in 0..2 {
        let inv = w.next_call().await;
        w.answer(&e, &inv, Ok(Value::Null)).await;
    }
}

#[tokio::test]
async fn fifo_keeps_order_per_group_across_failures_while_other_groups_run() {
    let e = engine();
    let mut w = FakeWorker::connect(&e);
    w.register_function(&e, "h").await;
    for (g, n) in [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("b", 2)] {
        w.enqueue_ok(&e, "f", "h", json!({"g": g, "n": n})).await;
    }
    let mut seen: Vec<(String, i64)> = Vec::new();
    let mut failed_once = false;
    while seen.len() < 5 {
        let inv = w.next_call().await;
        let g = inv.data["g"].as_str().unwrap().to_owned();
        let n = inv.data["n"].as_i64().unwrap();
        if g == "a" && n == 1 && !failed_once {
            failed_once = true;
            w.answer(&e, &inv, Err("transient")).await;
            continue;
        }
        seen.push((g, n));
        w.answer(&e, &inv, Ok(Value::Null)).await;
    }
    let order = |g: &str| -> Vec<i64> { seen.iter().filter(|x| x.0 == g).map(|x| x.1).collect() };
    assert_eq!(
        order("a"),
        vec![1, 2, 3],
        "a's head retried before the rest of a"
    );
    assert_eq!(order("b"), vec![1, 2]);
    // b was not held up by a's backoff: both of b ran before a's retry.
    let first_a = seen.iter().position(|x| x.0 == "a").unwrap();
    assert!(first_a >= 2, "b ran while a waited: {seen:?}");
}

#[tokio::test]
async fn a_job_waits_for_its_unregistered_function_without_using_attempts() {
    let e = engine();
    let mut producer = FakeWorker::connect(&e);
    producer.enqueue_ok(&e, "z", "later", json!({"k": 1})).await;
    // max_retries 0 = one attempt: if waiting used attempts, this job would be dead already.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = status(&e, "z").await;
    assert_eq!(s["dlq_count"], 0);
    assert_eq!(s["waiting_for_handler"], 1);
    let mut w = FakeWorker::connect(&e);
    w.register_function(&e, "later").await;
    let inv = w.next_call().await;
    assert_eq!(inv.data, json!({"k": 1}));
    w.answer(&e, &inv, Ok(Value::Null)).await;
    until("settled", async || status(&e, "z").await["pending"] == 0).await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let e = engine();
    let mut w = FakeWorker::connect(&e);
    let x = w.enqueue_err(&e, "nope", "h", json!({})).await;
    assert_eq!(
        (x.code.as_str(), x.message.as_str()),
        ("enqueue_error", "Queue 'nope' not found")
    );
    let x = w.enqueue_err(&e, "f", "h", json!({"n": 1})).await;
    assert_eq!(
        x.message,
        "FIFO queue 'f' requires field 'g' in data, but it was not found"
    );
    let x = w.enqueue_err(&e, "f", "h", json!({"g": null})).await;
    assert_eq!(x.message, "FIFO queue 'f': field 'g' must not be null");
    let x = w
        .enqueue_err(&e, "small", "h", json!("x".repeat(100)))
        .await;
    assert_eq!(x.code, "payload_too_large");
    w.enqueue_ok(&e, "small", "h", json!(1)).await;
    w.enqueue_ok(&e, "small", "h", json!(2)).await;
    let x = w.enqueue_err(&e, "small", "h", json!(3)).await;
    assert_eq!(x.code, "queue_full");
    // The default queue exists without being declared.
    w.enqueue_ok(&e, "default", "h", json!(null)).await;
    assert_eq!(
        err(&e, "iii::durable::publish", json!({"topic": "", "data": 1}))
            .await
            .code,
        "topic_not_set"
    );
    assert_eq!(
        err(&e, "engine::queue::topic_stats", json!({})).await.code,
        "topic_required"
    );
    // The connection still works.
    w.enqueue_ok(&e, "q", "h", json!(1)).await;
}

#[tokio::test]
async fn without_the_module_enqueue_says_so() {
    let e = Engine::new(EngineConfig::default());
    let mut w = FakeWorker::connect(&e);
    let x = w.enqueue_err(&e, "q", "h", json!({})).await;
    assert_eq!(
        (x.code.as_str(), x.message.as_str()),
        ("enqueue_error", "QueueModule not loaded")
    );
}

#[tokio::test]
async fn jobs_in_flight_at_a_stop_run_again_on_the_next_engine() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let e1 = engine_on(store.clone(), standard_config());
    let mut w1 = FakeWorker::connect(&e1);
    w1.register_function(&e1, "h").await;
    let mut receipts = Vec::new();
    for i in 0..3 {
        receipts.push(w1.enqueue_ok(&e1, "one", "h", json!(i)).await);
    }
    // Job 0 fails once (attempts recorded), then is in flight when the engine stops.
    let inv = w1.next_call().await;
    w1.answer(&e1, &inv, Err("first try")).await;
    let _inv = w1.next_call().await;
    e1.queues().unwrap().sync().await.unwrap();
    e1.shutdown().await;
    drop(e1);

    let e2 = engine_on(store, standard_config());
    let s = status(&e2, "one").await;
    assert_eq!(s["pending"], 3, "{s}");
    let st = ok(
        &e2,
        "iii::queue::status",
        json!({"queue": "one", "message_id": receipts[0]}),
    )
    .await;
    assert_eq!(st["message"]["attempts"], 1);
    let mut w2 = FakeWorker::connect(&e2);
    w2.register_function(&e2, "h").await;
    for i in 0..3 {
        let inv = w2.next_call().await;
        assert_eq!(inv.data, json!(i), "same order after the restart");
        w2.answer(&e2, &inv, Ok(Value::Null)).await;
    }
    until("all settled", async || {
        status(&e2, "one").await["pending"] == 0
    })
    .await;
}

#[tokio::test]
async fn durable_topics_fan_out_per_function_and_keep_messages_for_absent_subscribers() {
    let e = engine();
    let mut a = FakeWorker::connect(&e);
    let mut b = FakeWorker::connect(&e);
    // Published before anyone subscribed: parked for the first subscriber.
    assert_eq!(
        ok(
            &e,
            "iii::durable::publish",
            json!({"topic": "t", "data": {"early": true}})
        )
        .await,
        Value::Null
    );
    a.register_function(&e, "A").await;
    a.register_trigger(&e, "ta", "durable:subscriber", "A", json!({"topic": "t"}))
        .await;
    let inv = a.next_call().await;
    assert_eq!(inv.data, json!({"early": true}));
    a.answer(&e, &inv, Ok(Value::Null)).await;

    b.register_function(&e, "B").await;
    b.register_trigger(&e, "tb", "durable:subscriber", "B", json!({"topic": "t"}))
        .await;
    ok(
        &e,
        "iii::durable::publish",
        json!({"topic": "t", "data": {"x": 1}}),
    )
    .await;
    for w in [&mut a, &mut b] {
        let inv = w.next_call().await;
        assert_eq!(inv.data, json!({"x": 1}));
        w.answer(&e, &inv, Ok(Value::Null)).await;
    }
    let stats = ok(&e, "engine::queue::topic_stats", json!({"topic": "t"})).await;
    assert_eq!(stats["consumer_count"], 2);

    // B's worker goes away: messages published meanwhile wait for B.
    e.disconnect_worker(&b.conn);
    ok(
        &e,
        "iii::durable::publish",
        json!({"topic": "t", "data": {"x": 2}}),
    )
    .await;
    let inv = a.next_call().await;
    a.answer(&e, &inv, Ok(Value::Null)).await;
    let mut b2 = FakeWorker::connect(&e);
    b2.register_function(&e, "B").await;
    b2.register_trigger(&e, "tb", "durable:subscriber", "B", json!({"topic": "t"}))
        .await;
    let inv = b2.next_call().await;
    assert_eq!(inv.data, json!({"x": 2}));
    b2.answer(&e, &inv, Ok(Value::Null)).await;

    // An explicit unregister ends A's subscription only.
    e.handle_message(
        &a.conn,
        Message::UnregisterTrigger(UnregisterTrigger {
            id: "ta".into(),
            trigger_type: None,
        }),
    )
    .await;
    ok(
        &e,
        "iii::durable::publish",
        json!({"topic": "t", "data": {"x": 3}}),
    )
    .await;
    let inv = b2.next_call().await;
    assert_eq!(inv.data, json!({"x": 3}));
    b2.answer(&e, &inv, Ok(Value::Null)).await;
    assert!(a.quiet_for(Duration::from_millis(200)).await);
}

#[tokio::test]
async fn subscriber_conditions_gate_and_bad_subscriptions_are_refused() {
    let e = engine();
    let mut w = FakeWorker::connect(&e);
    w.register_function(&e, "H").await;
    w.register_function(&e, "cond").await;
    w.register_trigger(
        &e,
        "s1",
        "durable:subscriber",
        "H",
        json!({"topic": "c", "condition_function_id": "cond"}),
    )
    .await;
    ok(
        &e,
        "iii::durable::publish",
        json!({"topic": "c", "data": 1}),
    )
    .await;
    let inv = w.next_call().await;
    assert_eq!(inv.function_id, "cond");
    w.answer(&e, &inv, Ok(json!(false))).await;
    assert!(
        w.quiet_for(Duration::from_millis(200)).await,
        "handler skipped"
    );
    let stats = ok(&e, "engine::queue::topic_stats", json!({"topic": "c"})).await;
    assert_eq!(
        (stats["depth"].as_u64(), stats["dlq_depth"].as_u64()),
        (Some(0), Some(0))
    );

    w.register_trigger(&e, "bad", "durable:subscriber", "H", json!({}))
        .await;
    let r = w
        .next(|m| match m {
            Message::TriggerRegistrationResult(r) => Some(r.clone()),
            _ => None,
        })
        .await;
    assert_eq!(r.id, "bad");
    assert!(r.error.unwrap().message.contains("topic"));
}

#[tokio::test]
async fn management_listings_have_the_reference_shapes() {
    let e = engine();
    let idle = ok(&e, "engine::queue::topic_stats", json!({"topic": "q"})).await;
    assert_eq!(
        idle,
        json!({"depth": 0, "consumer_count": 10, "dlq_depth": 0, "config": null})
    );
    let topics = ok(&e, "engine::queue::dlq_topics", json!({})).await;
    let names: Vec<&str> = topics
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["topic"].as_str().unwrap())
        .collect();
    let mut dedup = names.clone();
    dedup.dedup();
    assert_eq!(names, dedup, "each queue once");
    assert!(names.contains(&"q"));
    let list = ok(&e, "engine::queue::list", json!({})).await;
    let f = list
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "f")
        .unwrap();
    assert_eq!(
        (f["type"].as_str(), f["concurrency"].as_u64()),
        (Some("fifo"), Some(4))
    );
}

#[tokio::test]
async fn fifo_order_holds_across_a_restart_with_a_failing_head() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let e1 = engine_on(store.clone(), standard_config());
    let mut w1 = FakeWorker::connect(&e1);
    w1.register_function(&e1, "h").await;
    for n in 1..=3 {
        w1.enqueue_ok(&e1, "f", "h", json!({"g": "a", "n": n}))
            .await;
    }
    // The head fails once, then the engine stops while it waits out its backoff.
    let inv = w1.next_call().await;
    assert_eq!(inv.data["n"], 1);
    w1.answer(&e1, &inv, Err("transient")).await;
    e1.queues().unwrap().sync().await.unwrap();
    e1.shutdown().await;
    drop(e1);

    let e2 = engine_on(store, standard_config());
    let mut w2 = FakeWorker::connect(&e2);
    w2.register_function(&e2, "h").await;
    for n in 1..=3 {
        let inv = w2.next_call().await;
        assert_eq!(inv.data["n"], n, "the failed head still comes first");
        w2.answer(&e2, &inv, Ok(Value::Null)).await;
    }
    until("settled", async || status(&e2, "f").await["pending"] == 0).await;
}

#[tokio::test]
async fn a_call_refused_as_overloaded_does_not_use_an_attempt() {
    let e = Engine::new(EngineConfig {
        max_inflight_per_worker: 1,
        ..EngineConfig::default()
    });
    e.enable_queues(
        Arc::new(MemoryStore::new()),
        options(json!({"queue_configs": {"w": {"concurrency": 2, "max_retries": 1}}})),
    )
    .unwrap();
    let mut w = FakeWorker::connect(&e);
    w.register_function(&e, "h").await;
    w.enqueue_ok(&e, "w", "h", json!(1)).await;
    w.enqueue_ok(&e, "w", "h", json!(2)).await;
    // The worker takes one call at a time: the second job is refused as overloaded until the
    // first is answered, and must then still run (it has a single attempt).
    let first = w.next_call().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.answer(&e, &first, Ok(Value::Null)).await;
    let second = w.next_call().await;
    assert_ne!(first.data, second.data);
    w.answer(&e, &second, Ok(Value::Null)).await;
    until("settled", async || status(&e, "w").await["pending"] == 0).await;
    assert_eq!(status(&e, "w").await["dlq_count"], 0);
}

#[tokio::test]
async fn a_graceful_stop_does_not_use_the_attempt_of_a_job_in_flight() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let e1 = engine_on(store.clone(), standard_config());
    let mut w1 = FakeWorker::connect(&e1);
    w1.register_function(&e1, "h").await;
    // Queue `z` allows one attempt: the stop must not count as it.
    w1.enqueue_ok(&e1, "z", "h", json!({"once": true})).await;
    let _in_flight = w1.next_call().await;
    e1.shutdown().await;
    drop(e1);

    let e2 = engine_on(store, standard_config());
    assert_eq!(status(&e2, "z").await["dlq_count"], 0);
    let mut w2 = FakeWorker::connect(&e2);
    w2.register_function(&e2, "h").await;
    let inv = w2.next_call().await;
    assert_eq!(inv.data, json!({"once": true}));
    w2.answer(&e2, &inv, Ok(Value::Null)).await;
    until("settled", async || status(&e2, "z").await["pending"] == 0).await;
}

#[tokio::test]
async fn a_missing_condition_function_fails_attempts_instead_of_waiting() {
    let e = engine();
    let mut w = FakeWorker::connect(&e);
    w.register_function(&e, "H").await;
    w.register_trigger(
        &e,
        "sc",
        "durable:subscriber",
        "H",
        json!({"topic": "nc", "condition_function_id": "no::such::condition"}),
    )
    .await;
    ok(
        &e,
        "iii::durable::publish",
        json!({"topic": "nc", "data": 1}),
    )
    .await;
    // The adapter allows 2 attempts with a 20 ms backoff.
    until("the dead letter", async || {
        ok(&e, "engine::queue::topic_stats", json!({"topic": "nc"})).await["dlq_depth"] == 1
    })
    .await;
    let dlq = ok(&e, "engine::queue::dlq_messages", json!({"topic": "nc"})).await;
    assert_eq!(dlq[0]["error_code"], "condition_error");
    assert_eq!(dlq[0]["retries"], 2);
    assert!(
        w.quiet_for(Duration::from_millis(100)).await,
        "the handler never ran"
    );
}
