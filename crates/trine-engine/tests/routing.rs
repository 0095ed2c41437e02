//! Engine behaviour without sockets: fake workers are outbound queues we read from and frames we
//! feed to `handle_message`, exactly what the server's connection task does.

use std::time::Duration;

use serde_json::{json, Value};
use trine_engine::{Call, Caller, Engine, EngineConfig};
use trine_protocol::{
    codes, InvocationResult, InvokeFunction, Message, RegisterTrigger, RegisterTriggerType,
    TriggerAction, TriggerRegistrationResult,
};

mod support;
use support::FakeWorker;

fn invoke(id: &str, inv: &str, data: Value) -> Message {
    Message::InvokeFunction(InvokeFunction {
        invocation_id: Some(inv.into()),
        function_id: id.into(),
        data,
        action: None,
        metadata: None,
        traceparent: None,
        baggage: None,
    })
}

fn engine() -> Engine {
    Engine::new(EngineConfig::default())
}

#[tokio::test]
async fn worker_to_worker_call_keeps_payload_and_id() {
    let e = engine();
    let mut callee = FakeWorker::connect(&e);
    let mut caller = FakeWorker::connect(&e);
    callee.register_function(&e, "math::double").await;
    caller
        .send(&e, invoke("math::double", "inv-1", json!({"n": 21})))
        .await;
    let seen = callee
        .serve_one(&e, |d| json!(d["n"].as_i64().unwrap() * 2))
        .await;
    // Same id forwarded, payload untouched (no `_caller_worker_id` injected).
    assert_eq!(seen.invocation_id.as_deref(), Some("inv-1"));
    assert_eq!(seen.data, json!({"n": 21}));
    assert!(seen.traceparent.is_some());
    match caller.next_frame().await {
        Message::InvocationResult(r) => {
            assert_eq!(r.invocation_id, "inv-1");
            assert_eq!(r.result, Some(json!(42)));
            assert!(r.error.is_none());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unknown_function_fails_at_once() {
    let e = engine();
    let mut caller = FakeWorker::connect(&e);
    caller.send(&e, invoke("nope::x", "i", Value::Null)).await;
    match caller.next_frame().await {
        Message::InvocationResult(r) => {
            let err = r.error.unwrap();
            assert_eq!(err.code, codes::FUNCTION_NOT_FOUND);
            assert_eq!(err.message, "Function nope::x not found");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn disconnect_fails_inflight_calls_with_invocation_stopped() {
    let e = engine();
    let mut callee = FakeWorker::connect(&e);
    callee.register_function(&e, "slow::op").await;
    let task = tokio::spawn({
        let e = e.clone();
        async move {
            e.invoke(Call::new("slow::op", json!(1), Caller::Engine))
                .await
        }
    });
    assert!(matches!(
        callee.next_frame().await,
        Message::InvokeFunction(_)
    ));
    e.disconnect_worker(&callee.conn);
    let out = tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.unwrap_err().code, codes::INVOCATION_STOPPED);
    // And the function is gone.
    let again = e
        .invoke(Call::new("slow::op", json!(1), Caller::Engine))
        .await;
    assert_eq!(again.unwrap_err().code, codes::FUNCTION_NOT_FOUND);
}

#[tokio::test(start_paused = true)]
async fn engine_timeout_applies() {
    let e = Engine::new(EngineConfig {
        invocation_timeout: Duration::from_millis(300),
        ..Default::default()
    });
    let callee = FakeWorker::connect(&e);
    callee.register_function(&e, "slow::op").await;
    let out = e
        .invoke(Call::new("slow::op", json!(1), Caller::Engine))
        .await;
    assert_eq!(out.unwrap_err().code, codes::INVOCATION_TIMEOUT);
    // The late result is ignored without harm.
    assert_eq!(callee.conn.inflight_count(), 0);
}

#[tokio::test]
async fn inflight_limit_answers_overloaded() {
    let e = Engine::new(EngineConfig {
        max_inflight_per_worker: 2,
        ..Default::default()
    });
    let callee = FakeWorker::connect(&e);
    callee.register_function(&e, "busy::op").await;
    let mut pending = Vec::new();
    for _ in 0..2 {
        let e2 = e.clone();
        pending.push(tokio::spawn(async move {
            e2.invoke(Call::new("busy::op", json!(1), Caller::Engine))
                .await
        }));
    }
    while callee.conn.inflight_count() < 2 {
        tokio::task::yield_now().await;
    }
    let third = e
        .invoke(Call::new("busy::op", json!(1), Caller::Engine))
        .await;
    assert_eq!(third.unwrap_err().code, codes::OVERLOADED);
    e.disconnect_worker(&callee.conn);
    for p in pending {
        assert_eq!(
            p.await.unwrap().unwrap_err().code,
            codes::INVOCATION_STOPPED
        );
    }
}

#[tokio::test]
async fn second_worker_is_a_standby_and_takes_over() {
    let e = engine();
    let mut first = FakeWorker::connect(&e);
    let mut second = FakeWorker::connect(&e);
    first.register_function(&e, "svc::f").await;
    second.register_function(&e, "svc::f").await;
    match second.next_frame().await {
        Message::Error(f) => assert_eq!(f.error.code, codes::FUNCTION_ID_CONFLICT),
        other => panic!("{other:?}"),
    }
    let e2 = e.clone();
    let call = tokio::spawn(async move {
        e2.invoke(Call::new("svc::f", json!(1), Caller::Engine))
            .await
    });
    first.serve_one(&e, |_| json!("first")).await;
    assert_eq!(call.await.unwrap().unwrap(), Some(json!("first")));
    e.disconnect_worker(&first.conn);
    let e2 = e.clone();
    let call = tokio::spawn(async move {
        e2.invoke(Call::new("svc::f", json!(1), Caller::Engine))
            .await
    });
    second.serve_one(&e, |_| json!("second")).await;
    assert_eq!(call.await.unwrap().unwrap(), Some(json!("second")));
}

#[tokio::test]
async fn replayed_registrations_survive_old_connection_cleanup() {
    // SDK 0.9.0 reconnect without reattach: the replay arrives before the old socket closes.
    let e = engine();
    let old = FakeWorker::connect(&e);
    old.register_function(&e, "todo::list").await;
    let trig = RegisterTrigger {
        id: "t-1".into(),
        trigger_type: "http".into(),
        function_id: "todo::list".into(),
        config: json!({"api_path": "/todos", "http_method": "GET"}),
        metadata: None,
    };
    old.send(&e, Message::RegisterTrigger(trig.clone())).await;
    let mut new = FakeWorker::connect(&e);
    new.register_function(&e, "todo::list").await;
    new.send(&e, Message::RegisterTrigger(trig)).await;
    e.disconnect_worker(&old.conn);
    // The route is still served, by the new connection.
    assert!(matches!(
        e.http_routes().route("GET", "/todos"),
        trine_engine::http::RouteMatch::Found { .. }
    ));
    let e2 = e.clone();
    let call = tokio::spawn(async move {
        e2.invoke(Call::new("todo::list", json!(null), Caller::Http))
            .await
    });
    // The new connection got a conflict notice first (old was still alive), then the call.
    loop {
        match new.next_frame().await {
            Message::Error(_) => continue,
            Message::InvokeFunction(inv) => {
                new.send(
                    &e,
                    Message::InvocationResult(InvocationResult {
                        invocation_id: inv.invocation_id.unwrap(),
                        function_id: inv.function_id,
                        result: Some(json!([])),
                        error: None,
                        traceparent: None,
                        baggage: None,
                    }),
                )
                .await;
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(call.await.unwrap().unwrap(), Some(json!([])));
}

#[tokio::test]
async fn void_calls_send_nothing_back() {
    let e = engine();
    let mut callee = FakeWorker::connect(&e);
    let mut caller = FakeWorker::connect(&e);
    callee.register_function(&e, "fx::push").await;
    caller
        .send(
            &e,
            Message::InvokeFunction(InvokeFunction {
                invocation_id: None,
                function_id: "fx::push".into(),
                data: json!({"v": 1}),
                action: Some(TriggerAction::Void),
                metadata: None,
                traceparent: None,
                baggage: None,
            }),
        )
        .await;
    let seen = callee.serve_one(&e, |_| json!("ignored")).await;
    assert!(
        seen.invocation_id.is_some(),
        "engine → worker calls always carry an id"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(caller.try_next().is_none());
}

#[tokio::test]
async fn enqueue_answers_enqueue_error_for_now() {
    let e = engine();
    let mut caller = FakeWorker::connect(&e);
    caller
        .send(
            &e,
            Message::InvokeFunction(InvokeFunction {
                invocation_id: Some("q1".into()),
                function_id: "jobs::run".into(),
                data: json!({}),
                action: Some(TriggerAction::Enqueue {
                    queue: "jobs".into(),
                }),
                metadata: None,
                traceparent: None,
                baggage: None,
            }),
        )
        .await;
    match caller.next_frame().await {
        Message::InvocationResult(r) => assert_eq!(r.error.unwrap().code, codes::ENQUEUE_ERROR),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn worker_trigger_types_park_deliver_and_forward_rejections() {
    let e = engine();
    let mut binder = FakeWorker::connect(&e);
    let trig = RegisterTrigger {
        id: "hook-1".into(),
        trigger_type: "webhook".into(),
        function_id: "orders::on-hook".into(),
        config: json!({"path": "/x"}),
        metadata: Some(json!({"m": 1})),
    };
    // No provider yet: held, nothing sent back.
    binder
        .send(&e, Message::RegisterTrigger(trig.clone()))
        .await;
    assert!(binder.try_next().is_none());
    let mut provider = FakeWorker::connect(&e);
    provider
        .send(
            &e,
            Message::RegisterTriggerType(RegisterTriggerType {
                id: "webhook".into(),
                description: "hooks".into(),
                trigger_request_format: None,
                call_request_format: None,
            }),
        )
        .await;
    match provider.next_frame().await {
        Message::RegisterTrigger(t) => assert_eq!(t, trig),
        other => panic!("{other:?}"),
    }
    // Provider rejects: the binding worker hears about it.
    provider
        .send(
            &e,
            Message::TriggerRegistrationResult(TriggerRegistrationResult {
                id: "hook-1".into(),
                trigger_type: "webhook".into(),
                function_id: "orders::on-hook".into(),
                error: Some(trine_protocol::ErrorBody::new(
                    "trigger_registration_failed",
                    "bad path",
                )),
            }),
        )
        .await;
    match binder.next_frame().await {
        Message::TriggerRegistrationResult(r) => {
            assert_eq!(r.id, "hook-1");
            assert_eq!(r.error.unwrap().message, "bad path");
        }
        other => panic!("{other:?}"),
    }
    // Binding worker leaves: provider is told to drop the trigger.
    binder
        .send(
            &e,
            Message::RegisterTrigger(RegisterTrigger {
                id: "hook-2".into(),
                ..trig
            }),
        )
        .await;
    assert!(matches!(
        provider.next_frame().await,
        Message::RegisterTrigger(_)
    ));
    e.disconnect_worker(&binder.conn);
    match provider.next_frame().await {
        Message::UnregisterTrigger(u) => {
            assert_eq!(u.id, "hook-2");
            assert_eq!(u.trigger_type.as_deref(), Some("webhook"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn builtin_trigger_errors_are_reported() {
    let e = engine();
    let mut w = FakeWorker::connect(&e);
    w.send(
        &e,
        Message::RegisterTrigger(RegisterTrigger {
            id: "h".into(),
            trigger_type: "http".into(),
            function_id: "f".into(),
            config: json!({"http_method": "GET"}),
            metadata: None,
        }),
    )
    .await;
    match w.next_frame().await {
        Message::TriggerRegistrationResult(r) => {
            let err = r.error.unwrap();
            assert_eq!(err.code, codes::TRIGGER_REGISTRATION_FAILED);
            assert!(err.message.contains("api_path"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn condition_only_literal_false_skips() {
    let e = engine();
    let mut cond = FakeWorker::connect(&e);
    cond.register_function(&e, "cond::check").await;
    let config = json!({"condition_function_id": "cond::check"});
    for (answer, expected) in [
        (json!(false), false),
        (json!(true), true),
        (json!("x"), true),
        (Value::Null, true),
    ] {
        let e2 = e.clone();
        let cfg = config.clone();
        let t = tokio::spawn(async move { e2.condition_passes(&cfg, &json!({"k": 1})).await });
        let a = answer.clone();
        let seen = cond.serve_one(&e, move |_| a).await;
        assert_eq!(seen.data, json!({"k": 1}));
        assert_eq!(t.await.unwrap().unwrap(), expected, "answer {answer}");
    }
}

#[tokio::test]
async fn workers_list_hides_telemetry_only_connections() {
    let e = engine();
    let _telemetry = FakeWorker::connect(&e); // SDK 0.9.0's second `/` socket
    let w = FakeWorker::connect(&e);
    w.send(
        &e,
        Message::InvokeFunction(InvokeFunction {
            invocation_id: None,
            function_id: "engine::workers::register".into(),
            data: json!({"runtime": "node", "version": "0.9.0", "name": "reactive-backend", "pid": 7}),
            action: Some(TriggerAction::Void),
            metadata: None,
            traceparent: None,
            baggage: None,
        }),
    )
    .await;
    // No wait: the fire-and-forget registration takes effect before the connection's next frame
    // (the cluster tells peer connections apart by this name).
    let list = e
        .invoke(Call::new("engine::workers::list", json!({}), Caller::Cli))
        .await
        .unwrap()
        .unwrap();
    let workers = list["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0]["name"], "reactive-backend");
    assert_eq!(workers[0]["runtime"], "node");
    assert_eq!(workers[0]["version"], "0.9.0");
}

#[tokio::test]
async fn silent_owner_is_probed_and_replaced_by_the_standby() {
    // A half-open old connection (the worker reconnected, but no FIN reached the engine).
    let e = Engine::new(EngineConfig {
        conflict_probe_timeout: Duration::from_millis(100),
        ..Default::default()
    });
    let dead = FakeWorker::connect(&e);
    dead.register_function(&e, "svc::f").await;
    let mut fresh = FakeWorker::connect(&e);
    fresh.register_function(&e, "svc::f").await;
    assert!(matches!(fresh.next_frame().await, Message::Error(_)));
    // The dead owner never answers the probe ping: it is disconnected and the standby serves.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(dead.conn.is_closed());
    let e2 = e.clone();
    let call = tokio::spawn(async move {
        e2.invoke(Call::new("svc::f", json!(1), Caller::Engine))
            .await
    });
    fresh.serve_one(&e, |_| json!("fresh")).await;
    assert_eq!(call.await.unwrap().unwrap(), Some(json!("fresh")));
}

#[tokio::test]
async fn live_owner_answering_the_probe_keeps_its_function() {
    let e = Engine::new(EngineConfig {
        conflict_probe_timeout: Duration::from_millis(100),
        ..Default::default()
    });
    let owner = FakeWorker::connect(&e);
    owner.register_function(&e, "svc::g").await;
    let other = FakeWorker::connect(&e);
    other.register_function(&e, "svc::g").await;
    // The owner's socket answers the ping (the read loop records any inbound frame).
    tokio::time::sleep(Duration::from_millis(20)).await;
    owner.conn.touch();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!owner.conn.is_closed());
}
