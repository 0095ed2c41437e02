//! Calls across engines: two engines in one cluster (same Redis, same prefix); a worker on
//! engine A calls a function registered only on engine B, directly and through a queue job.
//! Needs a Redis server (`TRINE_TEST_REDIS_URL`, default `redis://127.0.0.1:6379/`).

#![cfg(unix)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use trine_sdk::{Error, ErrorBody};

use support::{connect, redis_url, EngineProcess, RedisPrefix};

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_one_engine_calls_a_function_on_another() {
    let run = RedisPrefix::new();
    let prefix = run.0.clone();
    let root = std::env::temp_dir().join(&prefix);
    let url = redis_url();
    let args = [
        "--cluster-redis-url",
        url.as_str(),
        "--cluster-prefix",
        prefix.as_str(),
    ];
    let (ra, rb) = (root.join("a"), root.join("b"));
    std::fs::create_dir_all(&ra).unwrap();
    std::fs::create_dir_all(&rb).unwrap();
    let a = EngineProcess::start(&ra, 0, 0, &args).expect("engine A starts");
    let mut b = EngineProcess::start(&rb, 0, 0, &args).expect("engine B starts");

    let wb = connect(&b.worker_url, "on-b").await;
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let s = seen.clone();
    wb.register_function("b::echo", move |v: Value| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(v.clone());
            Ok(json!({"got": v}))
        }
    });
    wb.register_function("b::fail", |_v: Value| async move {
        Err::<Value, _>(ErrorBody::new("card_declined", "no funds"))
    });
    let wa = connect(&a.worker_url, "on-a").await;
    until("A to learn B's functions", async || {
        let info = wa.call("engine::cluster::info", json!({})).await.unwrap();
        info["peers"][0]["functions"] == json!(["b::echo", "b::fail"])
    })
    .await;

    // A direct call, an error, and an unknown function.
    assert_eq!(
        wa.call("b::echo", json!({"x": 1})).await.unwrap(),
        json!({"got": {"x": 1}})
    );
    let direct = match wb.call("b::fail", json!({})).await {
        Err(Error::Remote(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    };
    match wa.call("b::fail", json!({})).await {
        Err(Error::Remote(e)) => {
            assert_eq!(
                (e.code.as_str(), e.message.as_str()),
                (direct.code.as_str(), direct.message.as_str())
            );
        }
        other => panic!("expected the same error through A, got {other:?}"),
    }
    match wa.call("nobody::here", json!({})).await {
        Err(Error::Remote(e)) => {
            assert_eq!(e.code, "function_not_found");
            // Engines that share no data set have no owner to blame.
            assert!(!e.message.contains("owner"), "{}", e.message);
        }
        other => panic!("expected function_not_found, got {other:?}"),
    }

    // A job enqueued on A runs on B's worker.
    wa.enqueue("default", "b::echo", json!({"job": 7}))
        .await
        .unwrap();
    until("the job to run on B", async || {
        seen.lock().unwrap().contains(&json!({"job": 7}))
    })
    .await;

    // B dies: calls through A fail at once with function_not_found (not after a timeout).
    wb.shutdown().await;
    b.kill();
    let started = Instant::now();
    match wa.call("b::echo", json!({"late": true})).await {
        Err(Error::Remote(e)) => assert!(
            e.code == "function_not_found" || e.code == "invocation_stopped",
            "{e:?}"
        ),
        other => panic!("expected an error once B is gone, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    wa.shutdown().await;
    drop(a);
    let _ = std::fs::remove_dir_all(&root);
}
