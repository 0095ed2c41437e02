//! Property test: the state module (store + committer + update ops) behaves like a plain model —
//! a `BTreeMap` of scopes, each an insertion-ordered list of (key, value) — for random sequences
//! of set / update / delete, on every store adapter.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};
use trine_engine::state::StateOptions;
use trine_engine::{Call, Caller, Engine, EngineConfig};
use trine_store::{FileStore, FileStoreOptions, MemoryStore, Store};

#[derive(Debug, Clone)]
enum Op {
    Set(usize, usize, i64),
    SetObject(usize, usize, i64),
    Increment(usize, usize, i64),
    Delete(usize, usize),
}

const SCOPES: [&str; 2] = ["alpha", "beta"];
const KEYS: [&str; 4] = ["k1", "k2", "k3", "k4"];

fn op() -> impl Strategy<Value = Op> {
    let s = 0..SCOPES.len();
    let k = 0..KEYS.len();
    prop_oneof![
        (s.clone(), k.clone(), -5i64..5).prop_map(|(s, k, v)| Op::Set(s, k, v)),
        (s.clone(), k.clone(), -5i64..5).prop_map(|(s, k, v)| Op::SetObject(s, k, v)),
        (s.clone(), k.clone(), -3i64..4).prop_map(|(s, k, v)| Op::Increment(s, k, v)),
        (s, k).prop_map(|(s, k)| Op::Delete(s, k)),
    ]
}

/// scope → insertion-ordered (key, value).
type Model = BTreeMap<String, Vec<(String, Value)>>;

fn model_get(m: &Model, scope: &str, key: &str) -> Option<Value> {
    m.get(scope)?
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

fn model_put(m: &mut Model, scope: &str, key: &str, v: Value) {
    let entries = m.entry(scope.to_owned()).or_default();
    match entries.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = v,
        None => entries.push((key.to_owned(), v)),
    }
}

fn model_delete(m: &mut Model, scope: &str, key: &str) {
    if let Some(entries) = m.get_mut(scope) {
        entries.retain(|(k, _)| k != key);
        if entries.is_empty() {
            m.remove(scope);
        }
    }
}

/// The model's increment of field `n` (state.md §4.3).
fn model_increment(current: Option<Value>, by: i64) -> Value {
    match current {
        None => json!({ "n": by }),
        Some(Value::Object(mut o)) => match o.get("n") {
            None => {
                o.insert("n".into(), json!(by));
                Value::Object(o)
            }
            Some(Value::Number(x)) if x.is_i64() => {
                let v = x.as_i64().unwrap() + by;
                o.insert("n".into(), json!(v));
                Value::Object(o)
            }
            Some(_) => Value::Object(o),
        },
        // increment.target_not_object: value unchanged (still written back).
        Some(other) => other,
    }
}

async fn call(e: &Engine, fid: &str, data: Value) -> Value {
    e.invoke(Call::new(fid, data.clone(), Caller::Engine))
        .await
        .unwrap_or_else(|err| panic!("{fid} {data}: {err}"))
        .unwrap_or(Value::Null)
}

async fn check_sequence(store: Arc<dyn Store>, ops: Vec<Op>) {
    let e = Engine::new(EngineConfig::default());
    e.enable_state(store, StateOptions::default()).unwrap();
    let mut m = Model::new();
    for op in ops {
        match op {
            Op::Set(s, k, v) | Op::SetObject(s, k, v) => {
                let value = if matches!(op, Op::Set(..)) {
                    json!(v)
                } else {
                    json!({ "n": v })
                };
                let (scope, key) = (SCOPES[s], KEYS[k]);
                let r = call(
                    &e,
                    "state::set",
                    json!({"scope": scope, "key": key, "value": value}),
                )
                .await;
                let old = model_get(&m, scope, key).unwrap_or(Value::Null);
                assert_eq!(r, json!({"old_value": old, "new_value": value}));
                model_put(&mut m, scope, key, value);
            }
            Op::Increment(s, k, by) => {
                let (scope, key) = (SCOPES[s], KEYS[k]);
                let r = call(
                    &e,
                    "state::update",
                    json!({"scope": scope, "key": key,
                    "ops": [{"type": "increment", "path": "n", "by": by}]}),
                )
                .await;
                let old = model_get(&m, scope, key);
                let new = model_increment(old.clone(), by);
                assert_eq!(r["old_value"], old.unwrap_or(Value::Null));
                assert_eq!(r["new_value"], new);
                model_put(&mut m, scope, key, new);
            }
            Op::Delete(s, k) => {
                let (scope, key) = (SCOPES[s], KEYS[k]);
                let r = call(&e, "state::delete", json!({"scope": scope, "key": key})).await;
                assert_eq!(r, model_get(&m, scope, key).unwrap_or(Value::Null));
                model_delete(&mut m, scope, key);
            }
        }
    }
    let groups: Vec<&String> = m.keys().collect();
    assert_eq!(
        call(&e, "state::list_groups", json!({})).await,
        json!({ "groups": groups })
    );
    for scope in SCOPES {
        let want: Vec<Value> = m
            .get(scope)
            .map(|es| es.iter().map(|(_, v)| v.clone()).collect())
            .unwrap_or_default();
        assert_eq!(
            call(&e, "state::list", json!({ "scope": scope })).await,
            json!(want)
        );
        for key in KEYS {
            assert_eq!(
                call(&e, "state::get", json!({"scope": scope, "key": key})).await,
                model_get(&m, scope, key).unwrap_or(Value::Null)
            );
        }
    }
    e.shutdown().await;
}

fn run(ops: Vec<Op>, store: Arc<dyn Store>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
        .block_on(check_sequence(store, ops));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn memory_store_matches_the_model(ops in prop::collection::vec(op(), 1..60)) {
        run(ops, Arc::new(MemoryStore::new()));
    }
}

proptest! {
    // Each case opens a fresh durable store (and fsyncs every batch): fewer cases.
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn file_store_matches_the_model(ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path(), FileStoreOptions::default()).unwrap();
        run(ops, Arc::new(store));
    }
}

/// A Redis store under a key prefix of its own; the prefix's keys are deleted afterwards.
fn redis_store(case: usize) -> (Arc<dyn Store>, String) {
    let url = trine_store::testing::redis_url();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("trine-test-model-{}-{nanos}-{case}", std::process::id());
    let store = trine_store::RedisStore::open(
        &url,
        trine_store::RedisStoreOptions {
            key_prefix: prefix.clone(),
            ..Default::default()
        },
    )
    .expect("a Redis server (TRINE_TEST_REDIS_URL, default 127.0.0.1:6379)");
    (Arc::new(store), prefix)
}

fn drop_prefix(prefix: &str) {
    let url = trine_store::testing::redis_url();
    let Ok(mut c) = redis::Client::open(url).and_then(|c| c.get_connection()) else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut c)
        .unwrap_or_default();
    for k in keys {
        let _: redis::RedisResult<()> = redis::cmd("UNLINK").arg(k).query(&mut c);
    }
}

static REDIS_CASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

proptest! {
    // Writes read their records through the batched prefetch of a remote store.
    #![proptest_config(ProptestConfig::with_cases(8))]

    #[test]
    fn redis_store_matches_the_model(ops in prop::collection::vec(op(), 1..60)) {
        let case = REDIS_CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (store, prefix) = redis_store(case);
        run(ops, store);
        drop_prefix(&prefix);
    }
}
