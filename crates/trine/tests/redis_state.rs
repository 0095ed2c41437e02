//! `iii-state` (and `iii-stream`) on the `redis` adapter, one engine per data set: data survives
//! a kill -9 and restart, a second engine on the same data set is refused, state triggers fire.
//! Needs a Redis server (`TRINE_TEST_REDIS_URL`, default `redis://127.0.0.1:6379/`); every run
//! uses a key prefix of its own and deletes its keys.

#![cfg(unix)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::{connect, redis_url, EngineProcess, RedisPrefix};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_on_redis_survives_kill_and_admits_one_engine() {
    let run = RedisPrefix::new();
    let prefix = run.0.clone();
    let root = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&root).unwrap();
    let adapter = format!(
        "{{name: redis, config: {{redis_url: \"{}\", key_prefix: \"{prefix}\", lease_ttl_ms: 1000}}}}",
        redis_url()
    );
    std::fs::write(
        root.join("config.yaml"),
        format!(
            "workers:\n  - name: iii-state\n    config:\n      adapter: {adapter}\n  - name: iii-stream\n    config:\n      port: 0\n      adapter: {adapter}\n"
        ),
    )
    .unwrap();
    let args = ["--config", "config.yaml"];
    let mut a = EngineProcess::start(&root, 0, 0, &args).expect("engine A starts on Redis");

    let w = connect(&a.worker_url, "redis-state-test").await;
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let s = seen.clone();
    w.register_function("test::on-change", move |ev: Value| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(ev);
            Ok(Value::Null)
        }
    });
    w.register_trigger("state", "test::on-change", json!({"scope": "todos"}));
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..20 {
        w.call(
            "state::set",
            json!({"scope": "todos", "key": format!("t{i:02}"), "value": {"i": i}}),
        )
        .await
        .unwrap();
    }
    w.call("state::update", json!({"scope": "todos", "key": "t00", "ops": [{"type": "set", "path": "done", "value": true}]}))
        .await
        .unwrap();
    w.call(
        "stream::set",
        json!({"stream_name": "s", "group_id": "g", "item_id": "x", "data": {"y": 1}}),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().len() < 21 {
        assert!(
            Instant::now() < deadline,
            "trigger events: {:?}",
            seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A second engine on the same data set is refused (A holds the lease).
    let b_root = root.join("b");
    std::fs::create_dir_all(&b_root).unwrap();
    std::fs::copy(root.join("config.yaml"), b_root.join("config.yaml")).unwrap();
    let e = EngineProcess::start(&b_root, 0, 0, &args)
        .err()
        .expect("engine B is refused");
    assert!(e.contains("held by another engine"), "{e}");

    // kill -9 A; a new engine takes the data set once the lease expires, with everything in it.
    w.shutdown().await;
    a.kill();
    drop(a);
    let started = Instant::now();
    let a2 = EngineProcess::start(&root, 1, 0, &args).expect("engine A' starts");
    assert!(started.elapsed() < Duration::from_secs(10));
    let w2 = connect(&a2.worker_url, "redis-state-test").await;
    let list = w2
        .call("state::list", json!({"scope": "todos"}))
        .await
        .unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(20));
    assert_eq!(
        list[0],
        json!({"i": 0, "done": true}),
        "insertion order and the update kept"
    );
    assert_eq!(
        w2.call("state::get", json!({"scope": "todos", "key": "t19"}))
            .await
            .unwrap(),
        json!({"i": 19})
    );
    assert_eq!(
        w2.call(
            "stream::get",
            json!({"stream_name": "s", "group_id": "g", "item_id": "x"})
        )
        .await
        .unwrap(),
        json!({"y": 1})
    );
    let groups = w2.call("state::list_groups", json!({})).await.unwrap();
    assert_eq!(groups, json!({"groups": ["todos"]}));
    w2.shutdown().await;
    drop(a2);
    let _ = std::fs::remove_dir_all(&root);
}
