//! The state module through the engine's own API: function shapes, validation, compare-and-set,
//! and the trigger delivery contract (order per key, retries, dead letters, recovery after a
//! restart on the same store). Fake workers are queues (`support::FakeWorker`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use trine_engine::state::{DeliveryOptions, StateOptions};
use trine_engine::{Engine, EngineConfig};
use trine_protocol::{decode_worker_frame, Message};
use trine_store::{MemoryStore, Store};

mod support;
use support::{err, ok, FakeWorker};

fn options() -> StateOptions {
    StateOptions {
        max_value_bytes: 1000,
        delivery: DeliveryOptions {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            missing_handler_grace: Duration::from_millis(300),
            ..DeliveryOptions::default()
        },
        ..StateOptions::default()
    }
}

fn engine_on(store: Arc<dyn Store>, opts: StateOptions) -> Engine {
    let e = Engine::new(EngineConfig::default());
    e.enable_state(store, opts).expect("state module starts");
    e
}

fn engine() -> Engine {
    engine_on(Arc::new(MemoryStore::new()), options())
}

#[tokio::test]
async fn functions_have_the_reference_shapes() {
    let e = engine();
    assert_eq!(
        ok(&e, "state::get", json!({"scope": "s", "key": "nope"})).await,
        Value::Null
    );
    assert_eq!(
        ok(
            &e,
            "state::set",
            json!({"scope": "s", "key": "k", "value": {"a": 1}})
        )
        .await,
        json!({"old_value": null, "new_value": {"a": 1}})
    );
    assert_eq!(
        ok(
            &e,
            "state::set",
            json!({"scope": "s", "key": "k", "value": {"a": 2}})
        )
        .await,
        json!({"old_value": {"a": 1}, "new_value": {"a": 2}})
    );
    ok(
        &e,
        "state::set",
        json!({"scope": "s", "key": "k2", "data": 5}),
    )
    .await;
    assert_eq!(
        ok(&e, "state::get", json!({"scope": "s", "key": "k2"})).await,
        json!(5)
    );
    assert_eq!(
        err(&e, "state::set", json!({"scope": "s", "key": "k3"}))
            .await
            .code,
        "deserialization_error"
    );
    assert_eq!(
        ok(&e, "state::delete", json!({"scope": "s", "key": "k"})).await,
        json!({"a": 2})
    );
    assert_eq!(
        ok(&e, "state::get", json!({"scope": "s", "key": "k"})).await,
        Value::Null
    );
    assert_eq!(
        ok(&e, "state::delete", json!({"scope": "s", "key": "k"})).await,
        Value::Null
    );
    assert_eq!(
        ok(&e, "state::update", json!({"scope": "m", "key": "g", "ops": [{"type": "increment", "path": "total", "by": 1}]})).await,
        json!({"old_value": null, "new_value": {"total": 1}})
    );
    assert_eq!(
        ok(&e, "state::list", json!({"scope": "empty"})).await,
        json!([])
    );
    assert_eq!(
        ok(&e, "state::list_groups", json!({})).await,
        json!({"groups": ["m", "s"]})
    );
    assert_eq!(
        err(&e, "state::list_groups", Value::Null).await.code,
        "deserialization_error"
    );
}

#[tokio::test]
async fn list_keeps_insertion_order_and_groups_drop_empty_scopes() {
    let e = engine();
    for (k, v) in [("c", 1), ("a", 2), ("b", 3)] {
        ok(
            &e,
            "state::set",
            json!({"scope": "s", "key": k, "value": v}),
        )
        .await;
    }
    assert_eq!(
        ok(&e, "state::list", json!({"scope": "s"})).await,
        json!([1, 2, 3])
    );
    ok(
        &e,
        "state::set",
        json!({"scope": "s", "key": "a", "value": 20}),
    )
    .await;
    assert_eq!(
        ok(&e, "state::list", json!({"scope": "s"})).await,
        json!([1, 20, 3])
    );
    ok(&e, "state::delete", json!({"scope": "s", "key": "c"})).await;
    ok(
        &e,
        "state::set",
        json!({"scope": "s", "key": "c", "value": 10}),
    )
    .await;
    assert_eq!(
        ok(&e, "state::list", json!({"scope": "s"})).await,
        json!([20, 3, 10])
    );
    for k in ["a", "b", "c"] {
        ok(&e, "state::delete", json!({"scope": "s", "key": k})).await;
    }
    assert_eq!(
        ok(&e, "state::list_groups", json!({})).await,
        json!({"groups": []})
    );
}

#[tokio::test]
async fn compare_and_set_uses_per_key_versions() {
    let e = engine();
    let r = ok(
        &e,
        "state::set",
        json!({"scope": "s", "key": "k", "value": 1, "expected_version": 0}),
    )
    .await;
    let v1 = r["version"].as_u64().unwrap();
    assert!(v1 > 0);
    let conflict = err(
        &e,
        "state::set",
        json!({"scope": "s", "key": "k", "value": 2, "expected_version": 0}),
    )
    .await;
    assert_eq!(conflict.code, "VERSION_CONFLICT");
    let r = ok(&e, "state::update", json!({"scope": "s", "key": "k", "ops": [{"type": "increment", "by": 1}], "expected_version": v1})).await;
    let v2 = r["version"].as_u64().unwrap();
    assert!(v2 > v1);
    assert_eq!(r["new_value"], json!(2));
    assert_eq!(
        ok(
            &e,
            "state::get",
            json!({"scope": "s", "key": "k", "with_meta": true})
        )
        .await,
        json!({"value": 2, "version": v2})
    );
    assert_eq!(
        err(
            &e,
            "state::delete",
            json!({"scope": "s", "key": "k", "expected_version": v1})
        )
        .await
        .code,
        "VERSION_CONFLICT"
    );
    assert_eq!(
        ok(&e, "state::get", json!({"scope": "s", "key": "k"})).await,
        json!(2)
    );
    assert_eq!(
        ok(
            &e,
            "state::delete",
            json!({"scope": "s", "key": "k", "expected_version": v2})
        )
        .await,
        json!({"old_value": 2, "version": v2})
    );
    assert_eq!(
        ok(
            &e,
            "state::get",
            json!({"scope": "s", "key": "k", "with_meta": true})
        )
        .await,
        json!({"value": null, "version": 0})
    );
    // Without the optional fields the shapes stay the reference's.
    assert_eq!(
        ok(
            &e,
            "state::set",
            json!({"scope": "s", "key": "k", "value": 3})
        )
        .await,
        json!({"old_value": null, "new_value": 3})
    );
}

#[tokio::test]
async fn bad_input_gets_clear_codes_and_writes_nothing() {
    let e = engine();
    ok(
        &e,
        "state::set",
        json!({"scope": "s", "key": "k", "value": {"keep": true}}),
    )
    .await;
    let cases = [
        (
            "state::set",
            json!({"scope": 1, "key": "k", "value": 1}),
            "deserialization_error",
        ),
        (
            "state::set",
            json!({"scope": "s", "key": ["k"], "value": 1}),
            "deserialization_error",
        ),
        (
            "state::set",
            json!({"scope": "", "key": "k", "value": 1}),
            "INVALID_SCOPE",
        ),
        (
            "state::set",
            json!({"scope": "s".repeat(257), "key": "k", "value": 1}),
            "INVALID_SCOPE",
        ),
        (
            "state::set",
            json!({"scope": "s", "key": "", "value": 1}),
            "INVALID_KEY",
        ),
        (
            "state::set",
            json!({"scope": "s", "key": "k".repeat(1025), "value": 1}),
            "INVALID_KEY",
        ),
        (
            "state::set",
            json!({"scope": "s", "key": "k", "value": "x".repeat(2000)}),
            "VALUE_TOO_LARGE",
        ),
        (
            "state::set",
            json!({"scope": "s", "key": "k", "value": 1, "expected_version": "one"}),
            "deserialization_error",
        ),
        (
            "state::update",
            json!({"scope": "s", "key": "k", "ops": {"type": "set"}}),
            "deserialization_error",
        ),
        (
            "state::update",
            json!({"scope": "s", "key": "k", "ops": [{"type": "multiply", "by": 2}]}),
            "deserialization_error",
        ),
        (
            "state::update",
            json!({"scope": "s", "key": "k", "ops": [{"type": "set", "path": "a", "value": "x".repeat(2000)}]}),
            "VALUE_TOO_LARGE",
        ),
        (
            "state::update",
            json!({"scope": "s", "key": "k", "ops": [{"type": "increment", "path": "n", "by": "2"}]}),
            "deserialization_error",
        ),
        (
            "state::delete",
            json!({"scope": "s"}),
            "deserialization_error",
        ),
        ("state::get", json!("s/k"), "deserialization_error"),
    ];
    for (fid, data, code) in cases {
        assert_eq!(err(&e, fid, data.clone()).await.code, code, "{fid} {data}");
        assert_eq!(
            ok(&e, "state::get", json!({"scope": "s", "key": "k"})).await,
            json!({"keep": true}),
            "after {fid} {data}"
        );
    }
    // Per-op validation failures are reported and the rest of the update applies.
    let r = ok(
        &e,
        "state::update",
        json!({"scope": "s", "key": "k", "ops": [
            {"type": "merge", "path": vec!["a"; 33], "value": {"x": 1}},
            {"type": "set", "path": "__proto__", "value": 1},
            {"type": "set", "path": "ok", "value": 1}
        ]}),
    )
    .await;
    let codes: Vec<&str> = r["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["merge.path.too_deep", "set.path.proto_polluted"]);
    assert_eq!(r["new_value"], json!({"keep": true, "ok": 1}));
}

fn payload(event_type: &str, key: &str, old: Value, new: Value) -> Value {
    json!({"type": "state", "event_type": event_type, "scope": "todos", "key": key, "old_value": old, "new_value": new})
}

#[tokio::test]
async fn trigger_receives_exact_payloads_and_filters_apply() {
    let e = engine();
    let mut w = FakeWorker::connect(&e);
    w.register_function(&e, "on::change").await;
    w.register_trigger(&e, "t1", "state", "on::change", json!({"scope": "todos"}))
        .await;
    w.register_function(&e, "on::k1").await;
    w.register_trigger(
        &e,
        "t2",
        "state",
        "on::k1",
        json!({"scope": "todos", "key": "k1"}),
    )
    .await;

    ok(
        &e,
        "state::set",
        json!({"scope": "todos", "key": "k2", "value": {"t": 1}}),
    )
    .await;
    let inv = w.next_call().await;
    assert_eq!(inv.function_id, "on::change");
    assert_eq!(
        inv.data,
        payload("state:created", "k2", Value::Null, json!({"t": 1}))
    );
    w.answer(&e, &inv, Ok(Value::Null)).await;

    ok(
        &e,
        "state::set",
        json!({"scope": "other", "key": "k1", "value": 1}),
    )
    .await;
    // Deleting a missing key is not a change: nothing fires.
    ok(
        &e,
        "state::delete",
        json!({"scope": "todos", "key": "missing"}),
    )
    .await;
    assert!(w.quiet_for(Duration::from_millis(200)).await);

    ok(&e, "state::delete", json!({"scope": "todos", "key": "k2"})).await;
    let inv = w.next_call().await;
    assert_eq!(
        inv.data,
        payload("state:deleted", "k2", json!({"t": 1}), Value::Null)
    );
    w.answer(&e, &inv, Ok(Value::Null)).await;
    let stats = ok(&e, "engine::state::stats", json!({})).await;
    assert_eq!(stats["triggers"], 2);
}

#[tokio::test]
async fn deliveries_are_ordered_per_key_and_retried() {
    let e = engine();
    let mut w = FakeWorker::connect(&e);
    w.register_function(&e, "on::change").await;
    w.register_trigger(&e, "t1", "state", "on::change", json!({"scope": "todos"}))
        .await;
    for i in 1..=5 {
        ok(
            &e,
            "state::set",
            json!({"scope": "todos", "key": "k", "value": i}),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut failed_once = false;
    while seen.len() < 5 {
        let inv = w.next_call().await;
        let v = inv.data["new_value"].as_i64().unwrap();
        if v == 3 && !failed_once {
            failed_once = true;
            w.fail(&e, &inv, "handler_failed", "transient").await;
            continue;
        }
        seen.push(v);
        w.answer(&e, &inv, Ok(Value::Null)).await;
    }
    assert!(failed_once);
    assert_eq!(
        seen,
        [1, 2, 3, 4, 5],
        "a retried event is not overtaken by later ones"
    );
    let stats = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let s = ok(&e, "engine::state::stats", json!({})).await;
            if s["pending_deliveries"] == 0 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("deliveries settle");
    assert_eq!(stats["delivered"], 5);
    assert_eq!(stats["retries"], 1);
}

#[tokio::test]
async fn a_failing_trigger_does_not_delay_another_and_ends_in_dead_letters() {
    let e = engine();
    let mut good = FakeWorker::connect(&e);
    let mut bad = FakeWorker::connect(&e);
    good.register_function(&e, "on::good").await;
    good.register_trigger(&e, "tg", "state", "on::good", json!({"scope": "todos"}))
        .await;
    bad.register_function(&e, "on::bad").await;
    bad.register_trigger(&e, "tb", "state", "on::bad", json!({"scope": "todos"}))
        .await;
    ok(
        &e,
        "state::set",
        json!({"scope": "todos", "key": "a", "value": 1}),
    )
    .await;
    ok(
        &e,
        "state::set",
        json!({"scope": "todos", "key": "a", "value": 2}),
    )
    .await;
    // The bad handler never answers its first call; the good one still gets both events.
    let stuck = bad.next_call().await;
    for want in [1, 2] {
        let inv = good.next_call().await;
        assert_eq!(inv.data["new_value"], json!(want));
        good.answer(&e, &inv, Ok(Value::Null)).await;
    }
    // Now the bad one fails every attempt (3): the first event is dead-lettered with its error.
    bad.fail(&e, &stuck, "handler_failed", "boom").await;
    for _ in 0..2 {
        let inv = bad.next_call().await;
        assert_eq!(inv.data["new_value"], json!(1));
        bad.fail(&e, &inv, "handler_failed", "boom").await;
    }
    let dl = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let v = ok(
                &e,
                "engine::state::dead_letters::list",
                json!({"trigger_id": "tb"}),
            )
            .await;
            if !v["dead_letters"].as_array().unwrap().is_empty() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a dead letter");
    let d = &dl["dead_letters"][0];
    assert_eq!(d["function_id"], "on::bad");
    assert_eq!(d["attempts"], 3);
    assert_eq!(
        d["error"],
        json!({"code": "handler_failed", "message": "boom"})
    );
    assert_eq!(
        d["event"],
        payload("state:created", "a", Value::Null, json!(1))
    );
    // The next event of that key proceeds after the dead letter.
    let inv = bad.next_call().await;
    assert_eq!(inv.data["new_value"], json!(2));
    bad.answer(&e, &inv, Ok(Value::Null)).await;
    let id = d["id"].as_str().unwrap();
    assert_eq!(
        ok(
            &e,
            "engine::state::dead_letters::discard",
            json!({"id": id})
        )
        .await["removed"],
        true
    );
    let v = ok(&e, "engine::state::dead_letters::list", json!({})).await;
    assert_eq!(v["dead_letters"], json!([]));
}

#[tokio::test]
async fn conditions_gate_delivery() {
    let e = engine();
    let mut w = FakeWorker::connect(&e);
    w.register_function(&e, "on::change").await;
    w.register_function(&e, "cond").await;
    w.register_trigger(
        &e,
        "t1",
        "state",
        "on::change",
        json!({"scope": "todos", "condition_function_id": "cond"}),
    )
    .await;
    ok(
        &e,
        "state::set",
        json!({"scope": "todos", "key": "a", "value": 1}),
    )
    .await;
    let c = w.next_call().await;
    assert_eq!(c.function_id, "cond");
    assert_eq!(c.data, payload("state:created", "a", Value::Null, json!(1)));
    w.answer(&e, &c, Ok(json!(false))).await;
    ok(
        &e,
        "state::set",
        json!({"scope": "todos", "key": "a", "value": 2}),
    )
    .await;
    let c = w.next_call().await;
    assert_eq!(c.function_id, "cond");
    assert_eq!(
        c.data["new_value"],
        json!(2),
        "the skipped event is not redelivered"
    );
    w.answer(&e, &c, Ok(Value::Null)).await; // null does not skip
    let h = w.next_call().await;
    assert_eq!(h.function_id, "on::change");
    assert_eq!(h.data["new_value"], json!(2));
    w.answer(&e, &h, Ok(Value::Null)).await;
}

#[tokio::test]
async fn owed_deliveries_survive_an_engine_restart_on_the_same_store() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let e1 = engine_on(store.clone(), options());
    let mut w1 = FakeWorker::connect(&e1);
    w1.register_function(&e1, "on::change").await;
    w1.register_trigger(&e1, "t1", "state", "on::change", json!({"scope": "todos"}))
        .await;
    ok(
        &e1,
        "state::set",
        json!({"scope": "todos", "key": "a", "value": 1}),
    )
    .await;
    ok(
        &e1,
        "state::set",
        json!({"scope": "todos", "key": "a", "value": 2}),
    )
    .await;
    let _unanswered = w1.next_call().await;
    e1.shutdown().await;

    // A new engine on the same data: the worker reconnects later and still gets both, in order.
    let e2 = engine_on(store, options());
    assert_eq!(
        ok(&e2, "state::get", json!({"scope": "todos", "key": "a"})).await,
        json!(2)
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut w2 = FakeWorker::connect(&e2);
    w2.register_function(&e2, "on::change").await;
    w2.register_trigger(&e2, "t1", "state", "on::change", json!({"scope": "todos"}))
        .await;
    for want in [1, 2] {
        let inv = w2.next_call().await;
        assert_eq!(inv.data["new_value"], json!(want));
        w2.answer(&e2, &inv, Ok(Value::Null)).await;
    }
    // New writes after the restart keep their per-key order behind the recovered ones.
    ok(
        &e2,
        "state::set",
        json!({"scope": "todos", "key": "a", "value": 3}),
    )
    .await;
    let inv = w2.next_call().await;
    assert_eq!(inv.data["old_value"], json!(2));
    assert_eq!(inv.data["new_value"], json!(3));
    w2.answer(&e2, &inv, Ok(Value::Null)).await;
    // Sequence numbers continue after the restart.
    let r = ok(
        &e2,
        "state::get",
        json!({"scope": "todos", "key": "a", "with_meta": true}),
    )
    .await;
    assert_eq!(r["version"], 3);
}

#[tokio::test]
async fn a_missing_handler_does_not_use_up_attempts_within_the_grace() {
    let e = engine();
    let w = FakeWorker::connect(&e);
    // The trigger exists but its function is not registered yet.
    w.register_trigger(&e, "t1", "state", "on::later", json!({"scope": "todos"}))
        .await;
    ok(
        &e,
        "state::set",
        json!({"scope": "todos", "key": "a", "value": 1}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut w = w;
    w.register_function(&e, "on::later").await;
    let inv = w.next_call().await;
    assert_eq!(inv.data["new_value"], json!(1));
    w.answer(&e, &inv, Ok(Value::Null)).await;
    let v = ok(&e, "engine::state::dead_letters::list", json!({})).await;
    assert_eq!(v["dead_letters"], json!([]));
}

#[tokio::test]
async fn state_trigger_config_must_be_an_object() {
    let e = engine();
    let mut w = FakeWorker::connect(&e);
    w.register_function(&e, "on::change").await;
    w.register_trigger(&e, "t1", "state", "on::change", Value::Null)
        .await;
    let text = tokio::time::timeout(Duration::from_secs(2), w.rx.recv())
        .await
        .unwrap()
        .unwrap();
    match decode_worker_frame(&text).unwrap().unwrap() {
        Message::TriggerRegistrationResult(r) => {
            let e = r.error.expect("an error");
            assert_eq!(e.code, "trigger_registration_failed");
            assert!(
                e.message.contains("Failed to parse trigger config"),
                "{}",
                e.message
            );
        }
        other => panic!("expected a registration failure, got {other:?}"),
    }
}
