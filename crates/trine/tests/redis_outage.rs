//! A group of two engines while its Redis is killed and restarted under load: during the outage
//! writes fail with clear errors (nothing is acknowledged that Redis does not hold); afterwards the
//! engines recover by themselves and every write acknowledged before or after is there.
//!
//! Runs a private `redis-server` (on PATH, or `TRINE_TEST_REDIS_SERVER`) with `appendonly yes`,
//! `appendfsync always` in a temporary directory, killed with SIGKILL and restarted on the same
//! port and files.

#![cfg(unix)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use support::{connect, EngineProcess};

struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    fn start(dir: &Path, port: u16) -> RedisServer {
        let bin =
            std::env::var("TRINE_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {bin} (install redis-server or set TRINE_TEST_REDIS_SERVER): {e}")
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        let url = format!("redis://127.0.0.1:{port}/");
        loop {
            let up = redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if up.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not answer"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisServer {
            child,
            port,
            dir: dir.to_owned(),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.kill();
        *self = RedisServer::start(&self.dir.clone(), self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_rides_out_a_redis_restart() {
    let root = std::env::temp_dir().join(format!(
        "trine-redis-outage-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let rdir = root.join("redis");
    std::fs::create_dir_all(&rdir).unwrap();
    let mut redis = RedisServer::start(&rdir, free_port());
    let url = redis.url();
    let adapter = format!(
        "{{name: redis, config: {{redis_url: \"{url}\", key_prefix: \"outage\", lease_ttl_ms: 1500}}}}"
    );
    let mut engines = Vec::new();
    for name in ["e1", "e2"] {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.yaml"),
            format!("workers:\n  - name: iii-state\n    config:\n      adapter: {adapter}\n"),
        )
        .unwrap();
        engines.push(
            EngineProcess::start(
                &dir,
                0,
                0,
                &[
                    "--config",
                    "config.yaml",
                    "--cluster-redis-url",
                    url.as_str(),
                ],
            )
            .unwrap_or_else(|e| panic!("{name} starts: {e}")),
        );
    }

    // A writer on each engine, each on its own keys, writing without pause.
    let acked: Arc<Mutex<BTreeMap<String, i64>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for (i, e) in engines.iter().enumerate() {
        let w = connect(&e.worker_url, &format!("writer-{i}")).await;
        let (acked, errors, stop, acks) =
            (acked.clone(), errors.clone(), stop.clone(), acks.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{i}-{}", n % 50);
                match w
                    .call_with_timeout(
                        "state::set",
                        json!({"scope": "outage", "key": key, "value": {"n": n}}),
                        Duration::from_secs(3),
                    )
                    .await
                {
                    Ok(_) => {
                        acked.lock().unwrap().insert(key, n);
                        acks.fetch_add(1, Ordering::Relaxed);
                        n += 1;
                    }
                    Err(e) => {
                        errors.lock().unwrap().push(e.to_string());
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            w.shutdown().await;
        }));
    }
    let count = || acks.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(count() > 0, "writes flow before the outage");

    // The outage: Redis is killed, down for 2 s, then restarted from its append-only file.
    redis.kill();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = errors.lock().unwrap().len();
    assert!(during > 0, "writes fail while Redis is down");
    let before_restart = count();
    redis.restart();
    eprintln!("redis down for {:?}", down.elapsed());

    // The engines recover by themselves: writes are acknowledged again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while count() < before_restart + 50 {
        assert!(
            Instant::now() < deadline,
            "writes did not recover; errors: {:?}",
            errors
                .lock()
                .unwrap()
                .iter()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    {
        let errors = errors.lock().unwrap();
        eprintln!(
            "recovered {:?} after Redis went down; {} writes refused meanwhile, e.g. {:?}",
            down.elapsed(),
            errors.len(),
            errors.first()
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    // Every acknowledged write is in the data set (the last value per key, or a later one).
    let w = connect(&engines[1].worker_url, "checker").await;
    let acked = acked.lock().unwrap().clone();
    for (key, n) in &acked {
        let got = w
            .call("state::get", json!({"scope": "outage", "key": key}))
            .await
            .unwrap();
        assert!(
            got["n"].as_i64().is_some_and(|g| g >= *n),
            "{key}: acknowledged {n}, stored {got}"
        );
    }
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.iter().all(|e| !e.is_empty()),
        "errors carry a message: {errors:?}"
    );
    w.shutdown().await;
    drop(engines);
    drop(redis);
    let _ = std::fs::remove_dir_all(&root);
}
