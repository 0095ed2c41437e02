//! Helpers shared by the kill -9 tests: the engine child process, kill timings, log tails.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// xorshift64*: kill timings only; the seed is printed so a run can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn range(&mut self, r: std::ops::Range<u64>) -> u64 {
        r.start + self.next() % (r.end - r.start)
    }
}

pub fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid number")),
    )
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A `trine serve` child on `<root>/data`, killed when dropped.
pub struct EngineProcess {
    /// Shared so a load task can kill the engine.
    pub child: Arc<Mutex<Child>>,
    pub run: usize,
    pub worker_url: String,
    pub log: PathBuf,
    /// The whole ready line (`http_url`, `stream_url`, ...).
    pub ready: Value,
}

impl EngineProcess {
    /// Starts `trine serve` on `<root>/data` with `extra` arguments and waits for its ready
    /// line. `worker_port` 0 lets the engine pick one. Retries a few times if the port is still
    /// held (only after a restart).
    pub fn start(
        root: &Path,
        run: usize,
        worker_port: u16,
        extra: &[&str],
    ) -> Result<EngineProcess, String> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(root, run, worker_port, attempt, extra) {
                Ok(p) => return Ok(p),
                Err((msg, in_use)) if in_use && attempt < 30 => {
                    eprintln!("run {run}: worker port {worker_port} busy, retrying ({msg})");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err((msg, _)) => return Err(msg),
            }
        }
    }

    fn start_once(
        root: &Path,
        run: usize,
        worker_port: u16,
        attempt: usize,
        extra: &[&str],
    ) -> Result<EngineProcess, (String, bool)> {
        let data_dir = root.join("data");
        let log = root.join(format!("engine-{run:03}-{attempt}.log"));
        let log_file = std::fs::File::create(&log)
            .map_err(|e| (format!("creating {}: {e}", log.display()), false))?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_trine"));
        cmd.arg("serve")
            .args(["--worker-port", &worker_port.to_string()])
            .args(["--http-port", "0", "--stream-port", "0"])
            .args(extra)
            .arg("--data-dir")
            .arg(&data_dir)
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        // Nothing from the caller's environment may change the engine under test.
        for (k, _) in std::env::vars() {
            if k.starts_with("TRINE_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("TRINE_LOG", "info");
        let mut child = cmd
            .spawn()
            .map_err(|e| (format!("spawning the trine binary: {e}"), false))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            // Keep draining stdout for the life of the process.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("trine ready ") {
                    let _ = tx.send(rest.to_owned());
                }
            }
        });
        let ready = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                let log_tail = tail(&log, 30);
                let in_use = log_tail.contains("in use");
                return Err((
                    format!(
                        "engine run {run} did not print its ready line within {READY_TIMEOUT:?} \
                         (exit status {status:?}); log {}:\n{log_tail}",
                        log.display()
                    ),
                    in_use,
                ));
            }
        };
        let v: Value = serde_json::from_str(&ready)
            .map_err(|e| (format!("ready line is not JSON ({e}): {ready}"), false))?;
        let worker_url = v["worker_url"]
            .as_str()
            .ok_or_else(|| (format!("ready line has no worker_url: {ready}"), false))?
            .to_owned();
        Ok(EngineProcess {
            child: Arc::new(Mutex::new(child)),
            run,
            worker_url,
            log,
            ready: v,
        })
    }

    pub fn port(&self) -> u16 {
        self.worker_url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {}", self.worker_url))
    }

    /// SIGKILL (what `Child::kill` sends on unix), then reap.
    pub fn kill(&mut self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Connects a Rust SDK worker named `name` (10 s to connect).
pub async fn connect(url: &str, name: &str) -> trine_sdk::Worker {
    trine_sdk::Worker::connect(
        url,
        trine_sdk::WorkerOptions {
            name: Some(name.into()),
            connect_timeout: Duration::from_secs(10),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("connecting {name} to {url}: {e}"))
}

/// The Redis server of the tests (`TRINE_TEST_REDIS_URL`, default `redis://127.0.0.1:6379/`).
pub fn redis_url() -> String {
    trine_store::testing::redis_url()
}

/// A key prefix of this run's own, whose keys are deleted when dropped (also on failure).
pub struct RedisPrefix(pub String);

impl RedisPrefix {
    pub fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        RedisPrefix(format!("trine-test-{}-{nanos}", std::process::id()))
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(redis_url()) else {
            return;
        };
        let Ok(mut c) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.0))
            .query(&mut c)
            .unwrap_or_default();
        for k in keys {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(k).query(&mut c);
        }
    }
}
