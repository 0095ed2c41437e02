//! Replicas: several workers registering the same function and the same trigger (under
//! different trigger ids) get each change or message delivered once, to one of them, through the
//! engine's own API with fake workers (`support::FakeWorker`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use trine_engine::pubsub;
use trine_engine::state::{DeliveryOptions, StateOptions};
use trine_engine::{Engine, EngineConfig};
use trine_protocol::{codes, Message};
use trine_store::MemoryStore;

mod support;
use support::{call, ok, FakeWorker};

/// Long enough for a second delivery to show up if there were one.
const QUIET: Duration = Duration::from_millis(300);

fn engine() -> Engine {
    let e = Engine::new(EngineConfig {
        // The fake owner never answers the engine's liveness probe: keep it from being
        // disconnected mid-test when the replica registers the same function.
        conflict_probe_timeout: Duration::from_secs(60),
        ..EngineConfig::default()
    });
    e.enable_state(
        Arc::new(MemoryStore::new()),
        StateOptions {
            delivery: DeliveryOptions {
                initial_backoff: Duration::from_millis(5),
                max_backoff: Duration::from_millis(20),
                ..DeliveryOptions::default()
            },
            ..StateOptions::default()
        },
    )
    .expect("state module starts");
    pubsub::install(&e);
    e
}

/// Two workers registering function `f`: the first owns it, the second is its standby.
async fn replicas(e: &Engine) -> (FakeWorker, FakeWorker) {
    let first = FakeWorker::connect(e);
    let mut second = FakeWorker::connect(e);
    first.register_function(e, "f").await;
    second.register_function(e, "f").await;
    match second.next_frame().await {
        Message::Error(f) => assert_eq!(f.error.code, codes::FUNCTION_ID_CONFLICT),
        other => panic!("the replica should be told it is a standby, got {other:?}"),
    }
    (first, second)
}

async fn set(e: &Engine, key: &str, value: Value) {
    ok(
        e,
        "state::set",
        json!({"scope": "todos", "key": key, "value": value}),
    )
    .await;
}

#[tokio::test]
async fn a_state_change_reaches_replicated_triggers_once() {
    let e = engine();
    let (mut first, mut second) = replicas(&e).await;
    let config = json!({"scope": "todos"});
    first
        .register_trigger(&e, "t-first", "state", "f", config.clone())
        .await;
    second
        .register_trigger(&e, "t-second", "state", "f", config.clone())
        .await;
    let stats = ok(&e, "engine::state::stats", json!({})).await;
    assert_eq!(stats["triggers"], 1, "one logical trigger: {stats}");

    set(&e, "k", json!(1)).await;
    let inv = first.next_call().await;
    assert_eq!(
        (inv.function_id.as_str(), &inv.data["new_value"]),
        ("f", &json!(1))
    );
    first.answer(&e, &inv, Ok(Value::Null)).await;
    assert!(first.quiet_for(QUIET).await, "a second delivery arrived");
    assert!(second.quiet_for(QUIET).await, "the standby got a delivery");

    // The first replica goes away (its trigger with it): the standby takes the function over
    // and the logical trigger lives on through the second registration, still once per change.
    e.disconnect_worker(&first.conn);
    for v in [2, 3] {
        set(&e, "k", json!(v)).await;
    }
    for v in [2, 3] {
        let inv = second.next_call().await;
        assert_eq!(inv.data["new_value"], json!(v), "in order per key");
        second.answer(&e, &inv, Ok(Value::Null)).await;
    }
    assert!(second.quiet_for(QUIET).await, "a second delivery arrived");

    // The last registration goes: nothing fires any more.
    second.unregister_trigger(&e, "t-second").await;
    let stats = ok(&e, "engine::state::stats", json!({})).await;
    assert_eq!(stats["triggers"], 0, "{stats}");
    set(&e, "k", json!(4)).await;
    assert!(second.quiet_for(QUIET).await);
}

#[tokio::test]
async fn a_different_config_is_another_trigger() {
    let e = engine();
    let (mut first, second) = replicas(&e).await;
    first
        .register_trigger(&e, "t-any", "state", "f", json!({"scope": "todos"}))
        .await;
    second
        .register_trigger(
            &e,
            "t-key",
            "state",
            "f",
            json!({"scope": "todos", "key": "k"}),
        )
        .await;
    set(&e, "k", json!(1)).await;
    for _ in 0..2 {
        let inv = first.next_call().await;
        first.answer(&e, &inv, Ok(Value::Null)).await;
    }
    assert!(first.quiet_for(QUIET).await);
}

#[tokio::test]
async fn a_publish_reaches_replicated_subscriptions_once() {
    let e = engine();
    let (mut first, mut second) = replicas(&e).await;
    first
        .register_trigger(&e, "s-first", "subscribe", "f", json!({"topic": "orders"}))
        .await;
    second
        .register_trigger(&e, "s-second", "subscribe", "f", json!({"topic": "orders"}))
        .await;
    call(&e, "publish", json!({"topic": "orders", "data": {"n": 1}}))
        .await
        .unwrap();
    let inv = first.next_call().await;
    assert_eq!(inv.data, json!({"n": 1}));
    first.answer(&e, &inv, Ok(Value::Null)).await;
    assert!(first.quiet_for(QUIET).await, "a second delivery arrived");
    assert!(second.quiet_for(QUIET).await, "the standby got a message");

    // The first replica goes: the subscription stays, served by the standby.
    e.disconnect_worker(&first.conn);
    call(&e, "publish", json!({"topic": "orders", "data": {"n": 2}}))
        .await
        .unwrap();
    let inv = second.next_call().await;
    assert_eq!(inv.data, json!({"n": 2}));
    second.answer(&e, &inv, Ok(Value::Null)).await;
    assert!(second.quiet_for(QUIET).await, "a second delivery arrived");
}
