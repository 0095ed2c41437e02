//! The `bridge` state adapter end to end: engine B forwards `state::*` to engine A over the
//! worker protocol. Writes through B land in A; A's errors come back unchanged; B's own `state`
//! triggers fire for writes made through B, A's triggers for every write.

#![cfg(unix)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use trine_sdk::{Error, Worker};

use support::{connect, EngineProcess};

type Seen = Arc<Mutex<Vec<Value>>>;

/// Registers a recorder function with a `state` trigger on `scope`.
fn record_state(w: &Worker, function_id: &str, scope: &str) -> Seen {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    w.register_function(function_id, move |ev: Value| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(ev);
            Ok(Value::Null)
        }
    });
    w.register_trigger("state", function_id, json!({"scope": scope}));
    seen
}

async fn wait_len(seen: &Seen, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().len() < n {
        assert!(
            Instant::now() < deadline,
            "expected {n} events, got {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridged_engine_forwards_state_and_fires_its_own_triggers() {
    let root = std::env::temp_dir().join(format!("trine-bridge-{}", std::process::id()));
    let (root_a, root_b) = (root.join("a"), root.join("b"));
    std::fs::create_dir_all(&root_a).unwrap();
    std::fs::create_dir_all(&root_b).unwrap();
    let a = EngineProcess::start(&root_a, 0, 0, &[]).expect("engine A starts");
    std::fs::write(
        root_b.join("config.yaml"),
        format!(
            "workers:\n  - name: iii-state\n    config:\n      adapter:\n        name: bridge\n        config: {{bridge_url: \"{}\"}}\n",
            a.worker_url
        ),
    )
    .unwrap();
    let b =
        EngineProcess::start(&root_b, 0, 0, &["--config", "config.yaml"]).expect("engine B starts");

    let wa = connect(&a.worker_url, "bridge-test").await;
    let wb = connect(&b.worker_url, "bridge-test").await;
    let on_a = record_state(&wa, "test::on-a", "s");
    let on_b = record_state(&wb, "test::on-b", "s");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A write through B lands in A.
    let out = wb
        .call(
            "state::set",
            json!({"scope": "s", "key": "k", "value": {"n": 1}}),
        )
        .await
        .unwrap();
    assert_eq!(out, json!({"old_value": null, "new_value": {"n": 1}}));
    assert_eq!(
        wa.call("state::get", json!({"scope": "s", "key": "k"}))
            .await
            .unwrap(),
        json!({"n": 1})
    );
    let out = wb
        .call(
            "state::update",
            json!({"scope": "s", "key": "k", "ops": [{"type": "increment", "path": "n", "by": 2}]}),
        )
        .await
        .unwrap();
    assert_eq!(out["new_value"], json!({"n": 3}));
    assert_eq!(
        wb.call("state::list", json!({"scope": "s"})).await.unwrap(),
        json!([{"n": 3}])
    );
    assert_eq!(
        wb.call("state::delete", json!({"scope": "s", "key": "k"}))
            .await
            .unwrap(),
        json!({"n": 3})
    );

    // Both engines' triggers saw the three changes through B, in order.
    wait_len(&on_b, 3).await;
    wait_len(&on_a, 3).await;
    for seen in [&on_a, &on_b] {
        let types: Vec<Value> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|e| e["event_type"].clone())
            .collect();
        assert_eq!(
            types,
            vec![
                json!("state:created"),
                json!("state:updated"),
                json!("state:deleted")
            ]
        );
    }
    // A write made directly on A reaches A's trigger only.
    wa.call(
        "state::set",
        json!({"scope": "s", "key": "direct", "value": 1}),
    )
    .await
    .unwrap();
    wait_len(&on_a, 4).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(on_b.lock().unwrap().len(), 3);

    // A's validation errors come back unchanged.
    match wb
        .call("state::set", json!({"scope": "", "key": "k", "value": 1}))
        .await
    {
        Err(Error::Remote(e)) => assert_eq!(e.code, "INVALID_SCOPE"),
        other => panic!("expected INVALID_SCOPE, got {other:?}"),
    }
    let stats = wb.call("engine::state::stats", json!({})).await.unwrap();
    assert_eq!(stats["adapter"], "bridge");

    // With A gone, B answers with the operation's code after its wait.
    wa.shutdown().await;
    drop(a);
    match wb
        .call("state::get", json!({"scope": "s", "key": "k"}))
        .await
    {
        Err(Error::Remote(e)) => {
            assert_eq!(e.code, "GET_ERROR", "{e:?}");
            assert!(e.message.contains("bridge to"), "{e:?}");
        }
        other => panic!("expected GET_ERROR, got {other:?}"),
    }
    wb.shutdown().await;
    drop(b);
    let _ = std::fs::remove_dir_all(&root);
}
