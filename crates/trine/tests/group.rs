//! Three engines sharing one Redis data set (docs/cluster.md): the engine holding the lease owns
//! state, streams and queues; the others pass writes, enqueues and trigger registrations on to it.
//!
//! - a state change made through any engine fires a trigger registered by replicas on two other
//!   engines exactly once, in order per key;
//! - HTTP routes registered on one engine are served by every engine;
//! - a `stream:join` check registered through one engine guards the sockets of every engine;
//! - a job enqueued on engine 1 runs on a worker of engine 3; a failing one is retried and
//!   dead-lettered as on one engine;
//! - kill -9 of the owner under load: another engine takes the data set over, every acknowledged
//!   write is there, and every one of them reached the trigger (owed deliveries are taken over).
//!
//! Needs a Redis server (`TRINE_TEST_REDIS_URL`, default `redis://127.0.0.1:6379/`); the run uses
//! key prefixes of its own and deletes its keys.

#![cfg(unix)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::{connect, redis_url, EngineProcess, RedisPrefix};

/// The config every engine of the group runs with.
fn write_config(dir: &Path, prefix: &str) {
    let adapter = format!(
        "{{name: redis, config: {{redis_url: \"{}\", key_prefix: \"{prefix}\", lease_ttl_ms: 1500}}}}",
        redis_url()
    );
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "workers:\n  - name: iii-state\n    config:\n      adapter: {adapter}\n  - name: iii-stream\n    config:\n      port: 0\n      adapter: {adapter}\n  - name: iii-http\n    config:\n      port: 0\n  - name: iii-queue\n    config:\n      queue_configs:\n        flaky:\n          max_retries: 2\n          backoff_ms: 20\n"
        ),
    )
    .unwrap();
}

fn start(root: &Path, name: &str, prefix: &str, run: usize) -> EngineProcess {
    let dir = root.join(name);
    write_config(&dir, prefix);
    let url = redis_url();
    EngineProcess::start(
        &dir,
        run,
        0,
        &[
            "--config",
            "config.yaml",
            "--cluster-redis-url",
            url.as_str(),
        ],
    )
    .unwrap_or_else(|e| panic!("{name} starts: {e}"))
}

async fn until(what: &str, secs: u64, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One HTTP/1.1 request on a fresh connection: (status, body).
async fn http(base: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let addr = base
        .trim_start_matches("http://")
        .replace("0.0.0.0", "127.0.0.1");
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Whether a stream socket at `url` is refused by a join check (an `unauthorized` notice or a
/// 1008 close within 2 s; an admitted path-form socket receives nothing).
async fn join_refused(url: &str) -> bool {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let url = url.replace("0.0.0.0", "127.0.0.1");
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let refused = match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
        Err(_) => false,
        Ok(Some(Ok(Message::Text(t)))) => t.contains("unauthorized"),
        Ok(Some(Ok(Message::Close(Some(f))))) => u16::from(f.code) == 1008,
        Ok(other) => panic!("unexpected first frame on {url}: {other:?}"),
    };
    let _ = ws.close(None).await;
    refused
}

/// Trigger events seen by the replicas: (worker, key, value `n`).
type Seen = Arc<Mutex<Vec<(&'static str, String, i64)>>>;

fn replica(w: &trine_sdk::Worker, name: &'static str, seen: &Seen) {
    let s = seen.clone();
    w.register_function("group::on-change", move |ev: Value| {
        let s = s.clone();
        async move {
            let key = ev["key"].as_str().unwrap_or_default().to_owned();
            let n = ev["new_value"]["n"].as_i64().unwrap_or(-1);
            s.lock().unwrap().push((name, key, n));
            Ok(Value::Null)
        }
    });
    w.register_trigger("state", "group::on-change", json!({"scope": "items"}));
}

fn info_owner(info: &Value) -> bool {
    info["owner"] == json!(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_engines_share_one_data_set() {
    let run = RedisPrefix::new();
    let prefix = run.0.clone();
    let root = std::env::temp_dir().join(&prefix);
    let mut e1 = start(&root, "e1", &prefix, 0);
    let e2 = start(&root, "e2", &prefix, 0);
    let e3 = start(&root, "e3", &prefix, 0);

    let w1 = connect(&e1.worker_url, "on-1").await;
    let info = w1.call("engine::cluster::info", json!({})).await.unwrap();
    assert!(
        info_owner(&info),
        "the first engine owns the data set: {info}"
    );
    let w2 = connect(&e2.worker_url, "on-2").await;
    let w3 = connect(&e3.worker_url, "on-3").await;
    let info2 = w2.call("engine::cluster::info", json!({})).await.unwrap();
    assert!(!info_owner(&info2), "{info2}");

    // Replicas of one trigger on engines 2 and 3.
    let seen: Seen = Arc::default();
    replica(&w2, "r2", &seen);
    replica(&w3, "r3", &seen);
    // Both registrations reach the owner (merged there into one logical trigger).
    until("the replicas' triggers at the owner", 10, async || {
        let s = w1.call("engine::state::stats", json!({})).await.unwrap();
        s["triggers"] == json!(1)
    })
    .await;
    until("engine 1 to learn the replicas' function", 10, async || {
        let info = w1.call("engine::cluster::info", json!({})).await.unwrap();
        info["peers"].as_array().is_some_and(|p| {
            p.iter()
                .filter(|p| p["functions"] == json!(["group::on-change"]))
                .count()
                == 2
        })
    })
    .await;

    // Writes through every engine; each change fires once, in order per key.
    let workers = [&w1, &w2, &w3];
    let mut round = 0;
    for n in 1..=5i64 {
        for k in 0..6 {
            let w = workers[round % 3];
            round += 1;
            w.call(
                "state::set",
                json!({"scope": "items", "key": format!("k{k}"), "value": {"n": n}}),
            )
            .await
            .unwrap();
        }
    }
    until("30 trigger events", 10, async || {
        seen.lock().unwrap().len() >= 30
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = seen.lock().unwrap().clone();
    assert_eq!(
        events.len(),
        30,
        "each change fires once for the group: {events:?}"
    );
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (_, k, n) in &events {
        per_key.entry(k.clone()).or_default().push(*n);
    }
    for (k, ns) in &per_key {
        assert_eq!(ns, &vec![1, 2, 3, 4, 5], "order of key {k}");
    }
    let by_replica: BTreeSet<&str> = events.iter().map(|e| e.0).collect();
    assert_eq!(
        by_replica.len(),
        2,
        "the replicas share the work: {by_replica:?}"
    );

    // Reads through a non-owner see the owner's writes.
    assert_eq!(
        w3.call("state::get", json!({"scope": "items", "key": "k0"}))
            .await
            .unwrap(),
        json!({"n": 5})
    );

    // An HTTP route registered on engine 3 is served by all three engines.
    w3.register_function("group::hello", |req: Value| async move {
        Ok(json!({"status_code": 200, "body": {"hello": req["path_params"]["who"]}}))
    });
    w3.register_trigger(
        "http",
        "group::hello",
        json!({"api_path": "/hello/:who", "http_method": "GET"}),
    );
    for e in [&e1, &e2, &e3] {
        let base = e.ready["http_url"].as_str().unwrap().to_owned();
        until("the route on every engine", 10, async || {
            http(&base, "GET", "/hello/ann", None).await.0 == 200
        })
        .await;
        let (status, body) = http(&base, "GET", "/hello/bob", None).await;
        assert_eq!(status, 200);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"hello": "bob"})
        );
    }

    // A join check registered through engine 3 guards the sockets of engines 1 and 2 too.
    let gate_calls = Arc::new(AtomicUsize::new(0));
    let g = gate_calls.clone();
    w3.register_function("group::gate", move |ev: Value| {
        g.fetch_add(1, Ordering::Relaxed);
        async move {
            Ok(if ev["group_id"] == "closed" {
                json!({"unauthorized": true})
            } else {
                Value::Null
            })
        }
    });
    w3.register_trigger(
        "stream:join",
        "group::gate",
        json!({"stream_name": "secure"}),
    );
    for e in [&e1, &e2, &e3] {
        let base = e.ready["stream_url"].as_str().unwrap().to_owned();
        until("the join check on every engine", 10, async || {
            join_refused(&format!("{base}/stream/secure/closed")).await
        })
        .await;
        let before = gate_calls.load(Ordering::Relaxed);
        assert!(!join_refused(&format!("{base}/stream/secure/open")).await);
        assert_eq!(
            gate_calls.load(Ordering::Relaxed),
            before + 1,
            "the check ran once for the admitted join"
        );
    }

    // A job enqueued on engine 1 runs on engine 3; a failing one is retried, then dead-lettered.
    let jobs: Arc<Mutex<Vec<Value>>> = Arc::default();
    let j = jobs.clone();
    w3.register_function("group::job", move |v: Value| {
        let j = j.clone();
        async move {
            j.lock().unwrap().push(v);
            Ok(Value::Null)
        }
    });
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    w3.register_function("group::always-fails", move |_v: Value| {
        a.fetch_add(1, Ordering::Relaxed);
        async move { Err::<Value, _>(trine_sdk::ErrorBody::new("card_declined", "no funds")) }
    });
    until("engine 1 to learn the job functions", 10, async || {
        let info = w1.call("engine::cluster::info", json!({})).await.unwrap();
        info.to_string().contains("group::always-fails")
    })
    .await;
    w1.enqueue("default", "group::job", json!({"job": 1}))
        .await
        .unwrap();
    // Through a non-owner too.
    w2.enqueue("default", "group::job", json!({"job": 2}))
        .await
        .unwrap();
    until("both jobs to run on engine 3", 10, async || {
        jobs.lock().unwrap().len() == 2
    })
    .await;
    w2.enqueue("flaky", "group::always-fails", json!({"bad": true}))
        .await
        .unwrap();
    until("the failing job to be dead-lettered", 10, async || {
        let dlq = w2
            .call("engine::queue::dlq_messages", json!({"topic": "flaky"}))
            .await
            .unwrap();
        dlq.as_array().is_some_and(|d| d.len() == 1)
    })
    .await;
    assert_eq!(
        attempts.load(Ordering::Relaxed),
        2,
        "max_retries counts attempts, as on one engine"
    );

    // kill -9 the owner while writers keep writing through engines 2 and 3: another engine takes
    // the data set over; every acknowledged write is stored and reached the trigger.
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (i, w) in [w2.clone(), w3.clone()].into_iter().enumerate() {
        let (acked, stop) = (acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 100i64;
            let mut errors = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{i}");
                match w
                    .call_with_timeout(
                        "state::set",
                        json!({"scope": "items", "key": key, "value": {"n": n}}),
                        Duration::from_secs(5),
                    )
                    .await
                {
                    Ok(_) => {
                        acked.lock().unwrap().push((key, n));
                        n += 1;
                    }
                    Err(_) => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            errors
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    w1.shutdown().await;
    e1.kill();
    let killed = Instant::now();
    // Writes succeed again once another engine owns the data set.
    let before = acked.lock().unwrap().len();
    until("writes to succeed after the takeover", 20, async || {
        acked.lock().unwrap().len() > before + 20
    })
    .await;
    let takeover = killed.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut errors = 0;
    for w in writers {
        errors += w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "takeover: writes flowed again {takeover:?} after the kill; {} acknowledged, {errors} refused meanwhile",
        acked.len()
    );
    // Every acknowledged write is stored (the last per key), and reached the trigger.
    let w = connect(&e2.worker_url, "checker").await;
    for key in ["w0", "w1"] {
        let last = acked
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, n)| *n)
            .max()
            .unwrap();
        // The engine that took over may still be settling (its workers reconnecting): retry.
        let mut got = Value::Null;
        until("a read after the takeover", 10, async || {
            match w
                .call("state::get", json!({"scope": "items", "key": key}))
                .await
            {
                Ok(v) => {
                    got = v;
                    true
                }
                Err(e) => {
                    eprintln!("read after the takeover: {e}");
                    false
                }
            }
        })
        .await;
        assert!(
            got["n"].as_i64().unwrap() >= last,
            "{key}: stored {got}, acknowledged {last}"
        );
    }
    until(
        "every acknowledged write to reach the trigger",
        20,
        async || {
            let seen = seen.lock().unwrap();
            let got: BTreeSet<(String, i64)> =
                seen.iter().map(|(_, k, n)| (k.clone(), *n)).collect();
            acked.iter().all(|a| got.contains(a))
        },
    )
    .await;
    let info = w.call("engine::cluster::info", json!({})).await.unwrap();
    let info3 = w3.call("engine::cluster::info", json!({})).await.unwrap();
    assert!(
        info_owner(&info) ^ info_owner(&info3),
        "exactly one of the survivors owns the data set: {info} / {info3}"
    );
    for w in [w, w2, w3] {
        w.shutdown().await;
    }
    drop((e2, e3));
    let _ = std::fs::remove_dir_all(&root);
}
