//! The official Rust SDK (crates.io `iii-sdk` 0.26.0-rc.4) against Trine.
//!
//! Each test starts its own engine. Spec references are to
//! shared/spec/protocol.md unless marked http.md.
//!
//! Rust 0.26 has no trigger API (§9): without the observe extension it binds
//! triggers only by calling `engine::register_trigger` itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iii_sdk::{CallAction, CallRequest, Error, RegisterFunction};
use serde_json::{json, Value};
use tokio::sync::Notify;
use trine_compat_rust::{
    call, http_async, remote_code, stop_worker, wait_for_function, wait_for_route, wait_until,
    worker, Engine, EngineOptions,
};

const CALL_MS: u64 = 10_000;

/// §11.1: `wait_until_registered` resolves once `workerregistered` arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_until_registered_resolves() {
    let engine = Engine::start();
    let client = worker(&engine.worker_url, "rs-registered");
    let started = Instant::now();
    client
        .wait_until_registered(Duration::from_secs(10))
        .await
        .expect("workerregistered must arrive");
    assert!(started.elapsed() < Duration::from_secs(5));
    stop_worker(client).await;
}

/// §3.1, §11.6–7: a function registered by one Rust worker is called by
/// another, in both directions; a `Null` result comes back as `Null`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_and_call_across_workers() {
    let engine = Engine::start();
    let a = worker(&engine.worker_url, "rs-a");
    let b = worker(&engine.worker_url, "rs-b");

    a.register_function(
        "rsa::add",
        RegisterFunction::new_async(|input: Value| async move {
            let sum = input["a"].as_i64().unwrap_or(0) + input["b"].as_i64().unwrap_or(0);
            Ok::<_, Error>(json!({ "sum": sum }))
        }),
    );
    a.register_function(
        "rsa::nothing",
        RegisterFunction::new_async(|_input: Value| async move { Ok::<_, Error>(Value::Null) }),
    );
    b.register_function(
        "rsb::shout",
        RegisterFunction::new_async(|input: Value| async move {
            Ok::<_, Error>(json!({ "text": input["text"].as_str().unwrap_or("").to_uppercase() }))
        }),
    );
    wait_for_function(&b, "rsa::add").await;
    wait_for_function(&a, "rsb::shout").await;

    let out = call(&b, "rsa::add", json!({"a": 40, "b": 2}), CALL_MS).await.expect("b → a");
    assert_eq!(out, json!({"sum": 42}));
    let out = call(&a, "rsb::shout", json!({"text": "hi"}), CALL_MS).await.expect("a → b");
    assert_eq!(out, json!({"text": "HI"}));

    wait_for_function(&b, "rsa::nothing").await;
    let out = call(&b, "rsa::nothing", json!({}), CALL_MS).await.expect("null result");
    assert_eq!(out, Value::Null);

    stop_worker(a).await;
    stop_worker(b).await;
}

/// Built-ins answer like worker functions (§3.1, §4.3): `engine::echo`,
/// `engine::functions::list`, `engine::workers::list` with the Rust identity (§4.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtins_and_worker_identity() {
    let engine = Engine::start();
    let client = worker(&engine.worker_url, "rs-identity");
    client.wait_until_registered(Duration::from_secs(10)).await.expect("registered");

    let payload = json!({"a": [1, 2, {"b": null}], "s": "x", "n": 1.5});
    let echoed = call(&client, "engine::echo", payload.clone(), CALL_MS).await.expect("echo");
    assert_eq!(echoed, payload);

    client.register_function(
        "rsid::hello",
        RegisterFunction::new_async(|_input: Value| async move { Ok::<_, Error>(json!("hello")) })
            .description("says hello"),
    );
    wait_for_function(&client, "rsid::hello").await;

    let listed = call(&client, "engine::functions::list", json!({}), CALL_MS).await.expect("functions::list");
    let entry = listed["functions"]
        .as_array()
        .expect("functions array")
        .iter()
        .find(|f| f["function_id"] == "rsid::hello")
        .cloned()
        .expect("rsid::hello listed");
    assert_eq!(entry["description"], "says hello");
    assert_eq!(entry["worker_name"], "rs-identity");

    let workers = call(&client, "engine::workers::list", json!({}), CALL_MS).await.expect("workers::list");
    let mine: Vec<&Value> = workers["workers"]
        .as_array()
        .expect("workers array")
        .iter()
        .filter(|w| w["name"] == "rs-identity")
        .collect();
    assert_eq!(mine.len(), 1, "one entry (the /otel socket is not a worker, §7.3): {mine:?}");
    let w = mine[0];
    assert_eq!(w["runtime"], "rust");
    assert_eq!(w["version"], "0.26.0-rc.4");
    assert_eq!(w["pid"], json!(std::process::id()));
    let functions: Vec<String> = w["functions"]
        .as_array()
        .expect("functions of the worker")
        .iter()
        .map(|f| f.as_str().map(str::to_string).unwrap_or_else(|| f["function_id"].as_str().unwrap_or("").to_string()))
        .collect();
    assert!(functions.contains(&"rsid::hello".to_string()), "{functions:?}");
    assert_eq!(w["function_count"], json!(functions.len()));
    assert!(workers.get("timestamp").is_some());

    stop_worker(client).await;
}

/// §3.4, §3.6, §11.8: errors keep their code and message on the way back;
/// a Rust handler's own failure is `invocation_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_propagation() {
    let engine = Engine::start();
    let a = worker(&engine.worker_url, "rs-err-a");
    let b = worker(&engine.worker_url, "rs-err-b");

    a.register_function(
        "rserr::reject",
        RegisterFunction::new_async(|_input: Value| async move {
            Err::<Value, _>(Error::Remote {
                code: "ORDER_REJECTED".into(),
                message: "out of stock".into(),
                stacktrace: Some("at stock.rs:1".into()),
            })
        }),
    );
    a.register_function(
        "rserr::boom",
        RegisterFunction::new_async(|_input: Value| async move { Err::<Value, _>(Error::Handler("boom".into())) }),
    );
    wait_for_function(&b, "rserr::reject").await;
    wait_for_function(&b, "rserr::boom").await;

    match call(&b, "rserr::reject", json!({}), CALL_MS).await {
        Err(Error::Remote { code, message, stacktrace }) => {
            assert_eq!(code, "ORDER_REJECTED");
            assert_eq!(message, "out of stock");
            assert_eq!(stacktrace.as_deref(), Some("at stock.rs:1"));
        }
        other => panic!("expected Error::Remote, got {other:?}"),
    }
    match call(&b, "rserr::boom", json!({}), CALL_MS).await {
        Err(Error::Remote { code, message, .. }) => {
            assert_eq!(code, "invocation_failed");
            assert!(message.contains("boom"), "{message}");
        }
        other => panic!("expected Error::Remote, got {other:?}"),
    }

    stop_worker(a).await;
    stop_worker(b).await;
}

/// §3.1, §11.9: an unknown id fails immediately with `function_not_found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_function_is_function_not_found() {
    let engine = Engine::start();
    let client = worker(&engine.worker_url, "rs-notfound");
    client.wait_until_registered(Duration::from_secs(10)).await.expect("registered");
    let started = Instant::now();
    match call(&client, "rsnope::missing", json!({"x": 1}), CALL_MS).await {
        Err(Error::Remote { code, message, .. }) => {
            assert_eq!(code, "function_not_found");
            assert!(message.contains("rsnope::missing"), "{message}");
        }
        other => panic!("expected function_not_found, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2), "must not wait for a timeout");
    stop_worker(client).await;
}

/// §3.2, §11.10: a void call resolves at once with `Null`; the target runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn void_call_runs_target_once() {
    let engine = Engine::start();
    let a = worker(&engine.worker_url, "rs-void-a");
    let b = worker(&engine.worker_url, "rs-void-b");
    let runs = Arc::new(AtomicUsize::new(0));
    let seen = runs.clone();
    a.register_function(
        "rsvoid::count",
        RegisterFunction::new_async(move |input: Value| {
            let seen = seen.clone();
            async move {
                assert_eq!(input["v"], 7);
                seen.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Error>(json!({"ignored": true}))
            }
        }),
    );
    wait_for_function(&b, "rsvoid::count").await;

    let started = Instant::now();
    let out = b
        .call(CallRequest {
            function_id: "rsvoid::count".into(),
            payload: json!({"v": 7}),
            action: Some(CallAction::Void),
            timeout_ms: None,
        })
        .await
        .expect("void call");
    assert_eq!(out, Value::Null);
    assert!(started.elapsed() < Duration::from_secs(1));
    let counter = runs.clone();
    wait_until("the void call to run the target", Duration::from_secs(5), move || {
        let counter = counter.clone();
        async move { (counter.load(Ordering::SeqCst) >= 1).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    stop_worker(a).await;
    stop_worker(b).await;
}

/// §3.5, §11.14: the client-side timeout is `Error::Timeout`; the late result
/// breaks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_timeout() {
    let engine = Engine::start();
    let a = worker(&engine.worker_url, "rs-slow-a");
    let b = worker(&engine.worker_url, "rs-slow-b");
    a.register_function(
        "rsslow::sleep",
        RegisterFunction::new_async(|_input: Value| async move {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            Ok::<_, Error>(json!({"late": true}))
        }),
    );
    wait_for_function(&b, "rsslow::sleep").await;

    let started = Instant::now();
    let result = call(&b, "rsslow::sleep", json!({}), 300).await;
    assert!(matches!(result, Err(Error::Timeout)), "expected Timeout, got {result:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = call(&b, "rsslow::sleep", json!({}), CALL_MS).await.expect("second call");
    assert_eq!(out, json!({"late": true}));

    stop_worker(a).await;
    stop_worker(b).await;
}

/// §3.7, §8.1, §11.13: the executing worker goes away mid-call → the caller
/// gets `invocation_stopped` promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_leaving_mid_call_is_invocation_stopped() {
    let engine = Engine::start();
    let callee = worker(&engine.worker_url, "rs-leaving");
    let caller = worker(&engine.worker_url, "rs-waiting");
    let started = Arc::new(Notify::new());
    let signal = started.clone();
    callee.register_function(
        "rsleave::hang",
        RegisterFunction::new_async(move |_input: Value| {
            let signal = signal.clone();
            async move {
                signal.notify_one();
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, Error>(json!({"late": true}))
            }
        }),
    );
    wait_for_function(&caller, "rsleave::hang").await;

    let pending = {
        let caller = caller.clone();
        tokio::spawn(async move {
            let result = call(&caller, "rsleave::hang", json!({}), 20_000).await;
            (result, Instant::now())
        })
    };
    tokio::time::timeout(Duration::from_secs(10), started.notified())
        .await
        .expect("handler started");
    let left_at = Instant::now();
    stop_worker(callee).await;
    let (result, done_at) = tokio::time::timeout(Duration::from_secs(15), pending)
        .await
        .expect("call finished")
        .expect("call task");
    assert_eq!(remote_code(&result).as_deref(), Some("invocation_stopped"), "{result:?}");
    assert!(done_at.duration_since(left_at) < Duration::from_secs(1), "invocation_stopped must be prompt");

    stop_worker(caller).await;
}

/// §4.3, §11.24, http.md H1/§6/§9: a Rust worker binds an http route with
/// `engine::register_trigger`, a real HTTP client reaches it, and
/// `engine::unregister_trigger` removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_bound_with_engine_register_trigger() {
    let engine = Engine::start();
    let client = worker(&engine.worker_url, "rs-http");
    client.register_function(
        "rshttp::hello",
        RegisterFunction::new_async(|req: Value| async move {
            Ok::<_, Error>(json!({
                "hello": req["path_params"]["name"],
                "path": req["path"],
                "method": req["method"],
                "q": req["query_params"]["q"],
            }))
        }),
    );
    client.register_function(
        "rshttp::created",
        RegisterFunction::new_async(|req: Value| async move {
            Ok::<_, Error>(json!({
                "status_code": 201,
                "headers": {"X-Made-By": "rust"},
                "body": {"title": req["title"], "body_title": req["body"]["title"]},
            }))
        }),
    );
    client.register_function(
        "rshttp::fail",
        RegisterFunction::new_async(|_req: Value| async move { Err::<Value, _>(Error::Handler("kaput".into())) }),
    );
    wait_for_function(&client, "rshttp::fail").await;

    let mut ids = Vec::new();
    for (function_id, path, method) in [
        ("rshttp::hello", "/rs/hello/:name", "GET"),
        ("rshttp::created", "/rs/items", "POST"),
        ("rshttp::fail", "/rs/fail", "GET"),
    ] {
        let out = call(
            &client,
            "engine::register_trigger",
            json!({"trigger_type": "http", "function_id": function_id,
                   "config": {"api_path": path, "http_method": method}}),
            CALL_MS,
        )
        .await
        .expect("engine::register_trigger");
        let id = out["id"].as_str().expect("trigger id").to_string();
        assert!(!id.is_empty());
        ids.push(id);
    }

    let resp = wait_for_route("GET", &engine.http_url, "/rs/hello/Ada?q=x").await;
    assert_eq!(resp.status, 200, "{:?}", String::from_utf8_lossy(&resp.body));
    assert!(resp.header("content-type").unwrap_or("").starts_with("application/json"));
    assert_eq!(
        resp.json(),
        json!({"hello": "Ada", "path": "/rs/hello/:name", "method": "GET", "q": "x"})
    );

    let resp = http_async("POST", &engine.http_url, "/rs/items", Some(json!({"title": "t1"}))).await;
    assert_eq!(resp.status, 201, "{:?}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.header("x-made-by"), Some("rust"));
    assert_eq!(resp.json(), json!({"title": "t1", "body_title": "t1"}));

    let resp = http_async("GET", &engine.http_url, "/rs/fail", None).await;
    assert_eq!(resp.status, 500);
    let body = resp.json();
    assert_eq!(body["code"], "invocation_failed");
    assert!(body["error"].as_str().unwrap_or("").contains("kaput"), "{body}");
    assert!(body["error_id"].is_string());

    let listed = call(&client, "engine::triggers::list", json!({}), CALL_MS).await.expect("triggers::list");
    let entry = listed["triggers"]
        .as_array()
        .expect("triggers array")
        .iter()
        .find(|t| t["id"] == ids[0].as_str())
        .cloned()
        .expect("trigger listed");
    assert_eq!(entry["trigger_type"], "http");
    assert_eq!(entry["function_id"], "rshttp::hello");
    assert_eq!(entry["config"], json!({"api_path": "/rs/hello/:name", "http_method": "GET"}));

    let removed = call(&client, "engine::unregister_trigger", json!({"id": ids[0]}), CALL_MS)
        .await
        .expect("engine::unregister_trigger");
    assert_eq!(removed, json!({"removed": true}));
    let base = engine.http_url.clone();
    wait_until("the route to be removed", Duration::from_secs(5), move || {
        let base = base.clone();
        async move { (http_async("GET", &base, "/rs/hello/Ada", None).await.status == 404).then_some(()) }
    })
    .await;
    let again = call(&client, "engine::unregister_trigger", json!({"id": ids[0]}), CALL_MS)
        .await
        .expect("second unregister");
    assert_eq!(again, json!({"removed": false}));

    stop_worker(client).await;
}

/// §1.6, §11.26: restart the engine on the same ports; the Rust workers
/// reconnect by themselves (fixed 2 s backoff) and the function is callable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_after_engine_restart() {
    let mut engine = Engine::start_with(EngineOptions::fixed_ports());
    let url = engine.worker_url.clone();
    let owner = worker(&url, "rs-restart-owner");
    let caller = worker(&url, "rs-restart-caller");
    owner.register_function(
        "rsrestart::ping",
        RegisterFunction::new_async(|input: Value| async move { Ok::<_, Error>(json!({"pong": input["n"]})) }),
    );
    wait_for_function(&caller, "rsrestart::ping").await;
    assert_eq!(
        call(&caller, "rsrestart::ping", json!({"n": 1}), CALL_MS).await.expect("before restart"),
        json!({"pong": 1})
    );

    engine.restart();
    assert_eq!(engine.worker_url, url);

    let c = caller.clone();
    let out = wait_until("the function to be callable after the restart", Duration::from_secs(40), move || {
        let c = c.clone();
        async move { call(&c, "rsrestart::ping", json!({"n": 2}), 2000).await.ok() }
    })
    .await;
    assert_eq!(out, json!({"pong": 2}));

    let workers = call(&caller, "engine::workers::list", json!({}), CALL_MS).await.expect("workers::list");
    let owners = workers["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .filter(|w| w["name"] == "rs-restart-owner")
        .count();
    assert_eq!(owners, 1);

    stop_worker(owner).await;
    stop_worker(caller).await;
}

/// `--invocation-timeout-ms`: the engine fails a call that outlives it with
/// `invocation_timeout`, well before the client's own timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_side_invocation_timeout() {
    let engine = Engine::start_with(EngineOptions {
        extra_args: vec!["--invocation-timeout-ms".into(), "300".into()],
        ..Default::default()
    });
    let a = worker(&engine.worker_url, "rs-etimeout-a");
    let b = worker(&engine.worker_url, "rs-etimeout-b");
    a.register_function(
        "rset::slow",
        RegisterFunction::new_async(|_input: Value| async move {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            Ok::<_, Error>(json!({"late": true}))
        }),
    );
    wait_for_function(&b, "rset::slow").await;
    let started = Instant::now();
    let result = call(&b, "rset::slow", json!({}), CALL_MS).await;
    let elapsed = started.elapsed();
    assert_eq!(remote_code(&result).as_deref(), Some("invocation_timeout"), "{result:?}");
    assert!(elapsed >= Duration::from_millis(250) && elapsed < Duration::from_millis(1500), "{elapsed:?}");
    stop_worker(a).await;
    stop_worker(b).await;
}

/// §1.3, §11.17: 20 MiB each way; Rust sends JSON over 16 MiB as a fragmented
/// message, and the engine must accept and forward it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payload_round_trip() {
    let engine = Engine::start();
    let a = worker(&engine.worker_url, "rs-large-a");
    let b = worker(&engine.worker_url, "rs-large-b");
    a.register_function(
        "rslarge::echo",
        RegisterFunction::new_async(|input: Value| async move {
            let len = input["blob"].as_str().map(str::len).unwrap_or(0);
            Ok::<_, Error>(json!({"len": len, "blob": input["blob"]}))
        }),
    );
    wait_for_function(&b, "rslarge::echo").await;
    let blob = "abcdefghij".repeat(2 * 1024 * 1024);
    let out = call(&b, "rslarge::echo", json!({"blob": blob}), 60_000).await.expect("large call");
    assert_eq!(out["len"], json!(blob.len()));
    assert!(out["blob"].as_str() == Some(blob.as_str()), "blob came back changed");
    stop_worker(a).await;
    stop_worker(b).await;
}
