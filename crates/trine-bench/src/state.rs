//! The state scenarios (`trine-bench state`, or one at a time):
//!
//! - `state-set`: acknowledged durable `state::set` from many concurrent writers, next to the
//!   disk's fsync ceiling measured in the same directory; the engine's commit counters show the
//!   group commit.
//! - `state-get`: `state::get` from a trine-sdk worker on a pre-filled scope, vs
//!   `redis-benchmark -t get`.
//! - `trigger-latency`: open-loop writes at a fixed rate; a `state` trigger's handler measures
//!   write → handler invoked.
//! - `state-memory`: a million keys: load rate, engine memory vs data size, on-disk size, and
//!   restart-to-ready after SIGTERM and after SIGKILL.
//!
//! Every write goes through the trine-sdk (`Worker::call("state::set", …)`), like an application's
//! would. Values are JSON objects padded to `--value-bytes` of compact JSON; keys are 24 bytes.
//!
//! With `--state-adapter redis` the engine keeps its state on a Redis server
//! ([`crate::redis_state`]); `state-set` and `state-get` then compare with that server's own
//! `redis-benchmark -t set` / `-t get` at the same concurrency (`-d --value-bytes -P 1`) instead
//! of the fsync ceiling / the local `redis-benchmark -t get`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use trine_sdk::{ErrorBody, Worker};

use crate::engine::{disk_usage, file_system_of, EngineProcess, Memory, ProcessIo};
use crate::histogram::Histogram;
use crate::load::{self, Measurement};
use crate::redis_state::{RedisCpu, RedisServer};
use crate::report::{latency, print_table, Row};
use crate::scenarios::{
    engine_cpu_per_request, on_client_runtime, report_errors, worker_options, Settings,
    WorkerThread,
};
use crate::yardstick::{fsync_probe, redis_benchmark, FsyncMode, FsyncRun};

/// Settings of the state scenarios.
#[derive(Clone, Debug)]
pub struct StateSettings {
    /// Concurrent writers (`state-set`, and the loaders of `state-get` / `state-memory`).
    pub writers: usize,
    /// Worker connections the writers are spread over.
    pub connections: usize,
    /// Compact JSON bytes of each value.
    pub value_bytes: usize,
    /// Keys loaded by `state-memory`.
    pub memory_keys: u64,
    /// Keys pre-filled for `state-get`.
    pub get_keys: u64,
    /// Writes per second of `trigger-latency`.
    pub trigger_rate: f64,
    /// Seconds of each fsync probe.
    pub fsync_duration: Duration,
    /// The Redis server the engine's state runs on (`--state-adapter redis`): the yardsticks of
    /// `state-set` and `state-get` run against it.
    pub redis: Option<RedisServer>,
}

// ---------------------------------------------------------------------------------------------
// data

/// `{"id":"<16 hex>","title":"Item <n>","body":"xx…"}` padded to `target` bytes of compact JSON
/// (more if `target` is below the fixed part), and its exact compact length.
pub fn record(n: u64, target: usize) -> (Value, usize) {
    const FIXED: usize = r#"{"id":"","title":"","body":""}"#.len();
    let id = format!("{n:016x}");
    let title = format!("Item {n}");
    let base = FIXED + id.len() + title.len();
    let pad = target.saturating_sub(base);
    let body = "x".repeat(pad);
    (json!({"id": id, "title": title, "body": body}), base + pad)
}

/// A 24-byte key: a 4-byte prefix (`"key-"`, `"get-"`, …) and 20 digits.
pub fn key(prefix: &str, n: u64) -> String {
    format!("{prefix}{n:020}")
}

fn set_payload(scope: &str, key: String, value: Value) -> Value {
    json!({"scope": scope, "key": key, "value": value})
}

/// The counters of `engine::state::stats` the scenarios use.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    writes: u64,
    batches: u64,
    triggers: u64,
}

async fn stats(worker: &Worker) -> anyhow::Result<(Counters, Value)> {
    let v = worker
        .call("engine::state::stats", json!({}))
        .await
        .context("engine::state::stats")?;
    let n = |f: &str| v[f].as_u64().unwrap_or(0);
    Ok((
        Counters {
            writes: n("writes"),
            batches: n("batches"),
            triggers: n("triggers"),
        },
        v,
    ))
}

/// `file_based (durable)` / `in_memory (not durable)`, from a stats answer.
fn store_label(stats: &Value) -> String {
    let adapter = stats["adapter"].as_str().unwrap_or("?");
    if stats["durable"].as_bool().unwrap_or(false) {
        format!("{adapter} (durable)")
    } else {
        format!("{adapter} (not durable)")
    }
}

async fn connect_all(url: &str, n: usize) -> anyhow::Result<Vec<Worker>> {
    let mut workers = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        workers.push(Worker::connect(url, worker_options()).await?);
    }
    Ok(workers)
}

async fn shutdown_all(workers: Vec<Worker>) {
    for w in workers {
        w.shutdown().await;
    }
}

/// What a bulk load did.
struct Fill {
    keys: u64,
    /// Sum of key bytes and compact value bytes.
    data_bytes: u64,
    elapsed: Duration,
    errors: u64,
    first_error: Option<String>,
}

impl Fill {
    fn per_second(&self) -> f64 {
        self.keys as f64 / self.elapsed.as_secs_f64()
    }
}

/// Writes keys `prefix0…prefix(count-1)` (values from [`record`]) into `scope` with `writers`
/// closed-loop writers spread over `workers`. With `progress`, prints a line to stderr every 10 s.
async fn fill(
    workers: &[Worker],
    scope: &str,
    prefix: &str,
    count: u64,
    writers: usize,
    value_bytes: usize,
    progress: bool,
) -> Fill {
    let writers = writers.max(1) as u64;
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let reporter = progress.then(|| {
        let done = done.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                let n = done.load(Ordering::Relaxed);
                eprintln!(
                    "  … {n} / {count} keys written ({:.0} /s)",
                    n as f64 / started.elapsed().as_secs_f64()
                );
            }
        })
    });
    let mut tasks = Vec::new();
    for w in 0..writers {
        let worker = workers[w as usize % workers.len()].clone();
        let (scope, prefix, done) = (scope.to_owned(), prefix.to_owned(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut bytes = 0u64;
            let mut errors = 0u64;
            let mut first_error = None;
            let mut i = w;
            while i < count {
                let k = key(&prefix, i);
                let (value, len) = record(i, value_bytes);
                bytes += (k.len() + len) as u64;
                if let Err(e) = worker
                    .call("state::set", set_payload(&scope, k, value))
                    .await
                {
                    errors += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
                done.fetch_add(1, Ordering::Relaxed);
                i += writers;
            }
            (bytes, errors, first_error)
        }));
    }
    let mut out = Fill {
        keys: count,
        data_bytes: 0,
        elapsed: Duration::ZERO,
        errors: 0,
        first_error: None,
    };
    for t in tasks {
        match t.await {
            Ok((bytes, errors, first)) => {
                out.data_bytes += bytes;
                out.errors += errors;
                out.first_error = out.first_error.take().or(first);
            }
            Err(e) => {
                out.errors += 1;
                out.first_error
                    .get_or_insert_with(|| format!("loader task failed: {e}"));
            }
        }
    }
    out.elapsed = started.elapsed();
    if let Some(r) = reporter {
        r.abort();
    }
    out
}

fn cores_available() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// Describes where the engine's data lives (file system type matters for fsync figures).
pub fn print_storage(engine: &EngineProcess) {
    let dir = engine.data_dir();
    match file_system_of(&dir) {
        Some((dev, fs, mnt)) => {
            println!(
                "engine data dir: {} ({fs} on {dev}, mounted at {mnt})",
                dir.display()
            );
            if fs == "tmpfs" || fs == "ramfs" {
                println!("warning: the data dir is in memory ({fs}): fsync figures mean nothing; pass --bench-dir on a real disk");
            }
        }
        None => println!("engine data dir: {}", dir.display()),
    }
}

// ---------------------------------------------------------------------------------------------
// fsync yardstick

/// Both fsync probes in the engine's working directory (same file system as its data dir), run
/// while the engine is idle.
pub(crate) async fn fsync_yardstick(
    engine: &EngineProcess,
    duration: Duration,
) -> anyhow::Result<Vec<FsyncRun>> {
    let dir = engine.work_dir().to_path_buf();
    tokio::task::spawn_blocking(move || {
        [FsyncMode::Overwrite, FsyncMode::Append]
            .into_iter()
            .map(|mode| {
                fsync_probe(&dir, mode, duration)
                    .with_context(|| format!("fsync probe in {}", dir.display()))
            })
            .collect()
    })
    .await?
}

pub(crate) fn print_fsync_table(runs: &[FsyncRun]) {
    println!();
    println!("### yardstick: the disk's fsync ceiling (same directory as the engine's data)");
    println!();
    println!("| probe | syncs | syncs/s | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in runs {
        let what = match r.mode {
            FsyncMode::Overwrite => "128 B pwrite at offset 0 + fdatasync",
            FsyncMode::Append => "128 B append + fdatasync (file grows, like a log)",
        };
        println!(
            "| {what} | {} | {:.0} | {} | {} | {} |",
            r.syncs,
            r.per_second(),
            latency(r.histogram.quantile(0.5)),
            latency(r.histogram.quantile(0.99)),
            latency(r.histogram.quantile(1.0)),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// state-set

/// Acknowledged `state::set` throughput with `writers` concurrent writers, vs the fsync ceiling.
pub async fn state_set(
    settings: &Settings,
    st: &StateSettings,
    engine: &EngineProcess,
) -> anyhow::Result<()> {
    // On Redis the disk is not the engine's to sync: the yardstick is Redis's own SET instead.
    let fsync = match st.redis {
        Some(_) => Vec::new(),
        None => fsync_yardstick(engine, st.fsync_duration).await?,
    };
    let ceiling = fsync
        .iter()
        .find(|r| r.mode == FsyncMode::Overwrite)
        .map(FsyncRun::per_second)
        .unwrap_or(0.0);

    let url = engine.worker_url.clone();
    let (warmup, duration) = (settings.warmup, settings.duration);
    let (writers, connections, value_bytes) = (st.writers, st.connections, st.value_bytes);
    let pid = engine.pid();
    let redis_pid = st.redis.as_ref().and_then(RedisServer::local_pid);
    let cpu_before = engine.cpu_time();
    let redis_cpu = RedisCpu::start(redis_pid);
    let run_started = Instant::now();
    let run = on_client_runtime(settings.client_threads, move || async move {
        let workers = connect_all(&url, connections).await?;
        let (_, info) = stats(&workers[0]).await?;
        // Engine counters at the edges of the measured window, from a task of its own.
        let t0 = tokio::time::Instant::now();
        let sampler = {
            let w = workers[0].clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(t0 + warmup).await;
                let a = stats(&w)
                    .await
                    .map(|s| (Instant::now(), s.0, pid.and_then(ProcessIo::read)));
                tokio::time::sleep_until(t0 + warmup + duration).await;
                let b = stats(&w)
                    .await
                    .map(|s| (Instant::now(), s.0, pid.and_then(ProcessIo::read)));
                (a, b)
            })
        };
        let workers_for_load = workers.clone();
        let m = load::run(writers, warmup, duration, |i, mut rec| {
            let worker = workers_for_load[i % workers_for_load.len()].clone();
            async move {
                let mut n = 0u64;
                while let Some(t0) = rec.begin() {
                    let k = format!("w{:02}-{n:020}", i % 100); // 24 bytes
                    let (value, _) = record(n, value_bytes);
                    let outcome = worker
                        .call("state::set", set_payload("bench-set", k, value))
                        .await;
                    rec.end(t0, outcome.map(drop));
                    n += 1;
                }
                rec
            }
        })
        .await;
        let (a, b) = sampler.await?;
        shutdown_all(workers).await;
        Ok((m, info, a?, b?))
    })
    .await?;
    let (m, info, (ta, a, io_a), (tb, b, io_b)) = run;
    let cpu_after = engine.cpu_time();
    let redis_cores = redis_cpu.cores();
    let engine_cores = cpu_after
        .zip(cpu_before)
        .and_then(|(a, b)| a.checked_sub(b))
        .map(|used| used.as_secs_f64() / run_started.elapsed().as_secs_f64());
    let engine_cpu = engine_cpu_per_request(cpu_before, cpu_after, &m);
    report_errors("trine state::set", &m);

    let window = (tb - ta).as_secs_f64();
    let commits = b.batches.saturating_sub(a.batches);
    let engine_writes = b.writes.saturating_sub(a.writes);
    let commits_per_s = commits as f64 / window;
    let per_commit = (commits > 0).then(|| engine_writes as f64 / commits as f64);
    let label = store_label(&info);

    println!();
    println!(
        "### state-set: acknowledged state::set, {writers} writers over {connections} connections, store {label}"
    );
    println!();
    println!("| scenario | writers | writes | writes/s | p50 | p99 | max | engine commits/s | writes per commit | engine CPU/write | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| trine state::set (new 24 B keys, {value_bytes} B values) | {writers} | {} | {:.0} | {} | {} | {} | {:.0} | {} | {} | {} |",
        m.requests,
        m.per_second(),
        latency(m.histogram.quantile(0.5)),
        latency(m.histogram.quantile(0.99)),
        latency(m.histogram.quantile(1.0)),
        commits_per_s,
        per_commit.map_or("–".into(), |x| format!("{x:.1}")),
        engine_cpu.map_or("–".into(), |d| format!("{:.1} µs", d.as_secs_f64() * 1e6)),
        m.errors,
    );
    let wps = m.per_second();
    if let Some(server) = &st.redis {
        let (server, n) = (server.clone(), settings.redis_requests);
        let redis =
            tokio::task::spawn_blocking(move || server.benchmark("set", writers, n, value_bytes))
                .await?;
        print_redis_set(
            writers,
            wps,
            &redis,
            engine_cores,
            redis_cores.zip(redis_pid),
        );
        return Ok(());
    }
    print_fsync_table(&fsync);
    println!();
    let batch_ceiling = ceiling * writers as f64;
    if ceiling > 0.0 {
        println!(
            "- writes/s ÷ fsyncs/s (overwrite probe) = {:.1}: acknowledged writes per fsync the disk can do",
            wps / ceiling
        );
        println!(
            "- engine commits/s ÷ fsyncs/s = {:.0} %: how close the committer runs to the disk's fsync rate",
            commits_per_s / ceiling * 100.0
        );
        println!(
            "- batch-commit ceiling = fsyncs/s × {writers} writers = {batch_ceiling:.0} writes/s; trine reached {:.0} % of it (target ≥ 90 %)",
            wps / batch_ceiling * 100.0
        );
    }
    println!(
        "- writes/s = {wps:.0} (target ≥ 20 000 where the disk allows: the ceiling above is {})",
        if batch_ceiling >= 20_000.0 {
            "≥ 20 000, so it applies"
        } else {
            "< 20 000, so the disk does not allow it"
        }
    );
    if let (Some(x), Some(y)) = (io_a, io_b) {
        if engine_writes > 0 && commits > 0 {
            let bytes = y.write_bytes.saturating_sub(x.write_bytes) as f64;
            let calls = y.write_calls.saturating_sub(x.write_calls) as f64;
            println!(
                "- engine disk writes (/proc/<pid>/io): {:.1} MiB/s, {:.0} B per acknowledged write ({:.0} KiB per commit), {:.0} write syscalls per commit",
                bytes / window / (1024.0 * 1024.0),
                bytes / engine_writes as f64,
                bytes / commits as f64 / 1024.0,
                calls / commits as f64
            );
        }
    }
    if let Some(cores) = engine_cores {
        println!(
            "- engine CPU use over the run: {cores:.2} cores (of {})",
            cores_available()
        );
    }
    if !info["durable"].as_bool().unwrap_or(false) {
        println!("- the store is not durable: no write waits for an fsync, the yardstick does not bound it");
    }
    Ok(())
}

/// `state-set` on Redis: the server's own SET at the same concurrency, and the ratio.
fn print_redis_set(
    writers: usize,
    trine_per_second: f64,
    redis: &Result<crate::yardstick::RedisRun, String>,
    engine_cores: Option<f64>,
    redis_cores: Option<(f64, u32)>,
) {
    println!();
    println!("### yardstick: the same Redis server's own SET, {writers} clients");
    println!();
    match redis {
        Ok(r) => {
            println!("| yardstick | clients | requests | SET/s | p50 | p99 |");
            println!("|---|---:|---:|---:|---:|---:|");
            let ms = |v: Option<f64>| {
                v.map_or("–".into(), |ms| {
                    latency(Duration::from_secs_f64(ms / 1e3))
                })
            };
            println!(
                "| {} | {writers} | {} | {:.0} | {} | {} |",
                r.label,
                r.requests,
                r.per_second,
                ms(r.p50_ms),
                ms(r.p99_ms)
            );
            println!();
            println!(
                "- writers={writers}: trine/redis = {trine_per_second:.0} / {:.0} = {:.0} % (target ≥ 50 %)",
                r.per_second,
                trine_per_second / r.per_second * 100.0
            );
        }
        Err(why) => println!("- no Redis yardstick — {why}"),
    }
    if let Some(cores) = engine_cores {
        println!(
            "- engine CPU use over the trine run: {cores:.2} cores (of {})",
            cores_available()
        );
    }
    if let Some((cores, pid)) = redis_cores {
        println!("- Redis server (pid {pid}) CPU use over the trine run: {cores:.2} cores");
    }
}

// ---------------------------------------------------------------------------------------------
// state-get

/// `state::get` at each concurrency from one trine-sdk worker, vs `redis-benchmark -t get`.
pub async fn state_get(
    settings: &Settings,
    st: &StateSettings,
    engine: &EngineProcess,
) -> anyhow::Result<()> {
    const SCOPE: &str = "bench-get";
    let keys = st.get_keys.max(1);
    let url = engine.worker_url.clone();
    let (writers, connections, value_bytes) = (st.writers, st.connections, st.value_bytes);
    let filled = on_client_runtime(settings.client_threads, move || async move {
        let workers = connect_all(&url, connections).await?;
        let f = fill(&workers, SCOPE, "get-", keys, writers, value_bytes, false).await;
        shutdown_all(workers).await;
        Ok(f)
    })
    .await?;
    if filled.errors > 0 {
        bail!(
            "pre-filling {SCOPE}: {} of {keys} writes failed (first: {})",
            filled.errors,
            filled.first_error.as_deref().unwrap_or("?")
        );
    }

    let mut rows = Vec::new();
    let mut summary = Vec::new();
    let redis_pid = st.redis.as_ref().and_then(RedisServer::local_pid);
    for &c in &settings.concurrency {
        let cpu_before = engine.cpu_time();
        let redis_cpu = RedisCpu::start(redis_pid);
        let t = get_load(settings, &engine.worker_url, c, keys).await?;
        let engine_cpu = engine_cpu_per_request(cpu_before, engine.cpu_time(), &t);
        if let Some(cores) = redis_cpu.cores() {
            summary.push(format!(
                "c={c}: Redis server CPU during the trine run (warm-up included): {cores:.2} cores"
            ));
        }
        report_errors("trine state::get", &t);
        let mut row = Row::measured(
            &format!("trine-sdk state::get ({value_bytes} B values)"),
            &t,
        );
        row.engine_cpu = engine_cpu;
        let n = settings.redis_requests;
        let server = st.redis.clone();
        let redis = tokio::task::spawn_blocking(move || match server {
            Some(server) => server.benchmark("get", c, n, value_bytes),
            None => redis_benchmark(c, n),
        });
        match redis.await? {
            Ok(r) => {
                let ratio = t.per_second() / r.per_second;
                row.ratio = Some(ratio);
                summary.push(format!(
                    "c={c}: trine/redis = {:.0} % (target ≥ 50 %)",
                    ratio * 100.0
                ));
                rows.push(row);
                rows.push(Row::redis(c, &r));
            }
            Err(why) => {
                summary.push(format!("c={c}: no Redis yardstick — {why}; skipped"));
                rows.push(row);
            }
        }
    }
    print_table(
        &format!(
            "state-get: state::get on a scope of {keys} keys (filled at {:.0} writes/s)",
            filled.per_second()
        ),
        &rows,
    );
    println!();
    for line in summary {
        println!("- {line}");
    }
    Ok(())
}

async fn get_load(
    settings: &Settings,
    worker_url: &str,
    c: usize,
    keys: u64,
) -> anyhow::Result<Measurement> {
    let url = worker_url.to_owned();
    let (warmup, duration) = (settings.warmup, settings.duration);
    // One worker on the load-generator runtime, like `roundtrip` (and redis-benchmark).
    on_client_runtime(settings.client_threads, move || async move {
        let worker = Worker::connect(&url, worker_options()).await?;
        let m = load::run(c, warmup, duration, |i, mut rec| {
            let worker = worker.clone();
            async move {
                // Each task walks the keys with a large prime stride from its own start.
                let mut n = (i as u64).wrapping_mul(7_919) % keys;
                while let Some(t0) = rec.begin() {
                    let payload = json!({"scope": "bench-get", "key": key("get-", n)});
                    let outcome = match worker.call("state::get", payload).await {
                        Ok(Value::Object(_)) => Ok(()),
                        Ok(other) => Err(format!("get-{n}: unexpected value {other}")),
                        Err(e) => Err(e.to_string()),
                    };
                    rec.end(t0, outcome);
                    n = (n + 104_729) % keys;
                }
                rec
            }
        })
        .await;
        worker.shutdown().await;
        Ok(m)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// trigger-latency

/// What the trigger handler saw: latency (ns) per write sequence number.
struct Arrivals {
    /// `u64::MAX` until the event of that write arrives.
    latency_ns: Vec<u64>,
    duplicates: u64,
    unexpected: u64,
}

/// Open-loop `state::set` at `trigger_rate`/s; a `state` trigger's handler records
/// receive time − send time carried in the value.
pub async fn trigger_latency(
    settings: &Settings,
    st: &StateSettings,
    engine: &EngineProcess,
) -> anyhow::Result<()> {
    const SCOPE: &str = "bench-trigger";
    let rate = st.trigger_rate.max(1.0);
    let (warmup, duration) = (settings.warmup, settings.duration);
    let total = ((warmup + duration).as_secs_f64() * rate).ceil() as u64;
    let first_measured = (warmup.as_secs_f64() * rate).ceil() as u64;
    let origin = Instant::now();
    let arrivals = Arc::new(Mutex::new(Arrivals {
        latency_ns: vec![u64::MAX; total as usize],
        duplicates: 0,
        unexpected: 0,
    }));

    let log = arrivals.clone();
    let _handler = WorkerThread::start(&engine.worker_url, settings.worker_threads, move |w| {
        w.register_function("bench::on_change", move |event: Value| {
            let received = origin.elapsed().as_nanos() as u64;
            let log = log.clone();
            async move {
                let v = &event["new_value"];
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                match (v["seq"].as_u64(), v["sent_ns"].as_u64()) {
                    (Some(seq), Some(sent)) if (seq as usize) < log.latency_ns.len() => {
                        let slot = &mut log.latency_ns[seq as usize];
                        if *slot == u64::MAX {
                            *slot = received.saturating_sub(sent);
                        } else {
                            log.duplicates += 1;
                        }
                    }
                    _ => log.unexpected += 1,
                }
                Ok::<_, ErrorBody>(Value::Null)
            }
        });
        w.register_trigger("state", "bench::on_change", json!({"scope": SCOPE}));
    })
    .await?;

    let url = engine.worker_url.clone();
    let (lag, acks) = on_client_runtime(settings.client_threads, move || async move {
        let worker = Worker::connect(&url, worker_options()).await?;
        // The registration is asynchronous: wait until the engine counts the trigger.
        let deadline = Instant::now() + Duration::from_secs(10);
        while stats(&worker).await?.0.triggers == 0 {
            if Instant::now() > deadline {
                bail!("the state trigger was never registered");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let acks = Arc::new(Mutex::new((Histogram::default(), 0u64, None::<String>)));
        let mut lag = Histogram::default();
        let period = Duration::from_secs_f64(1.0 / rate);
        let start = tokio::time::Instant::now() + Duration::from_millis(10);
        let mut tasks = tokio::task::JoinSet::new();
        for seq in 0..total {
            let at = start + period.mul_f64(seq as f64);
            tokio::time::sleep_until(at).await;
            let sent_ns = origin.elapsed().as_nanos() as u64;
            let t0 = Instant::now();
            if seq >= first_measured {
                lag.record(t0.saturating_duration_since(at.into_std()));
            }
            let (worker, acks) = (worker.clone(), acks.clone());
            tasks.spawn(async move {
                let value = json!({"seq": seq, "sent_ns": sent_ns});
                let outcome = worker
                    .call("state::set", set_payload(SCOPE, key("trg-", seq), value))
                    .await;
                if seq >= first_measured {
                    let mut a = acks.lock().unwrap_or_else(|e| e.into_inner());
                    match outcome {
                        Ok(_) => a.0.record(t0.elapsed()),
                        Err(e) => {
                            a.1 += 1;
                            a.2.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
            });
            // Reap finished calls as we go so the set stays small.
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        worker.shutdown().await;
        let acks = acks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok((lag, acks))
    })
    .await?;
    let (ack_hist, ack_errors, ack_first_error) = acks;

    // Give the last deliveries a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let missing = {
            let log = arrivals.lock().unwrap_or_else(|e| e.into_inner());
            log.latency_ns[first_measured as usize..]
                .iter()
                .filter(|&&x| x == u64::MAX)
                .count()
        };
        if missing == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = arrivals.lock().unwrap_or_else(|e| e.into_inner());
    let mut h = Histogram::default();
    let mut missing = 0u64;
    for &ns in &log.latency_ns[first_measured as usize..] {
        if ns == u64::MAX {
            missing += 1;
        } else {
            h.record(Duration::from_nanos(ns));
        }
    }
    let measured = total - first_measured;

    println!();
    println!(
        "### trigger-latency: state::set at {rate:.0}/s (open loop) → state trigger handler invoked"
    );
    println!();
    println!("| measured | writes sent | events arrived | missing | duplicates | p50 | p99 | max | set ack p50 | set ack p99 | send lag p99 |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| write → handler | {measured} | {} | {missing} | {} | {} | {} | {} | {} | {} | {} |",
        h.count(),
        log.duplicates,
        latency(h.quantile(0.5)),
        latency(h.quantile(0.99)),
        latency(h.quantile(1.0)),
        latency(ack_hist.quantile(0.5)),
        latency(ack_hist.quantile(0.99)),
        latency(lag.quantile(0.99)),
    );
    println!();
    println!(
        "- p50 {} (target ≤ 0.5 ms), p99 {} (target ≤ 5 ms); {} of {measured} events arrived within 5 s after the last write",
        latency(h.quantile(0.5)),
        latency(h.quantile(0.99)),
        h.count()
    );
    if ack_errors > 0 {
        eprintln!(
            "warning: trigger-latency: {ack_errors} failed writes (first: {})",
            ack_first_error.as_deref().unwrap_or("?")
        );
    }
    if log.unexpected > 0 {
        eprintln!(
            "warning: trigger-latency: {} events without a known sequence number",
            log.unexpected
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// state-memory

/// One restart measurement.
struct Restart {
    how: &'static str,
    stop_time: Option<Duration>,
    ready_after: Duration,
    first_get_after: Duration,
    sampled: usize,
    correct: usize,
    memory: Option<Memory>,
}

/// Loads `memory_keys` keys, reports memory and disk use, then restarts after SIGTERM and after
/// SIGKILL on the same data dir.
pub async fn state_memory(
    settings: &Settings,
    st: &StateSettings,
    engine: &mut EngineProcess,
) -> anyhow::Result<()> {
    const SCOPE: &str = "bench-memory";
    let keys = st.memory_keys.max(1);
    let idle = engine.memory();
    let url = engine.worker_url.clone();
    let (writers, connections, value_bytes) = (st.writers, st.connections, st.value_bytes);
    eprintln!("state-memory: loading {keys} keys with {writers} writers …");
    let cpu_before = engine.cpu_time();
    let io_before = engine.pid().and_then(ProcessIo::read);
    let (filled, info, counters) = on_client_runtime(settings.client_threads, move || async move {
        let workers = connect_all(&url, connections).await?;
        let (before, info) = stats(&workers[0]).await?;
        let f = fill(&workers, SCOPE, "key-", keys, writers, value_bytes, true).await;
        let (after, _) = stats(&workers[0]).await?;
        shutdown_all(workers).await;
        Ok((f, info, (before, after)))
    })
    .await?;
    let io_after = engine.pid().and_then(ProcessIo::read);
    let load_cpu = engine
        .cpu_time()
        .zip(cpu_before)
        .and_then(|(a, b)| a.checked_sub(b));
    if filled.errors > 0 {
        eprintln!(
            "warning: state-memory: {} of {keys} writes failed (first: {})",
            filled.errors,
            filled.first_error.as_deref().unwrap_or("?")
        );
    }
    // Let the storage engine settle (background flushes) before reading memory and disk use.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = engine.memory();
    let state_dir = engine.data_dir().join("state");
    let disk_loaded = disk_usage(&state_dir);

    // Keys checked after each restart: spread over the whole range, the last one included.
    let samples: Vec<u64> = (0..1000u64)
        .map(|i| i * keys / 1000)
        .chain(std::iter::once(keys - 1))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();

    let mut restarts = Vec::new();
    let mut disk_after_term = None;
    for how in ["SIGTERM", "SIGKILL"] {
        let stop_time = if how == "SIGTERM" {
            Some(engine.terminate(Duration::from_secs(120))?)
        } else {
            engine.kill()?;
            None
        };
        if how == "SIGTERM" {
            disk_after_term = Some(disk_usage(&state_dir));
        }
        engine.restart()?;
        let ready_after = engine.ready_after;
        let spawned_at = engine.spawned_at;
        let url = engine.worker_url.clone();
        let probe_keys = samples.clone();
        let (first_get_at, correct) =
            on_client_runtime(settings.client_threads, move || async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                let samples = probe_keys;
                let probe = json!({"scope": SCOPE, "key": key("key-", samples[0])});
                let (worker, first_at) = loop {
                    let attempt = async {
                        let w = Worker::connect(&url, worker_options()).await?;
                        w.call("state::get", probe.clone()).await?;
                        anyhow::Ok(w)
                    };
                    match attempt.await {
                        Ok(w) => break (w, Instant::now()),
                        Err(e) if Instant::now() > deadline => {
                            bail!("no state::get succeeded after the restart: {e:#}")
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                };
                let mut correct = 0;
                for &n in &samples {
                    let got = worker
                        .call("state::get", json!({"scope": SCOPE, "key": key("key-", n)}))
                        .await?;
                    if got == record(n, value_bytes).0 {
                        correct += 1;
                    }
                }
                worker.shutdown().await;
                Ok((first_at, correct))
            })
            .await?;
        restarts.push(Restart {
            how,
            stop_time,
            ready_after,
            first_get_after: first_get_at.saturating_duration_since(spawned_at),
            sampled: samples.len(),
            correct,
            memory: engine.memory(),
        });
    }

    let data = filled.data_bytes;
    println!();
    println!(
        "### state-memory: {keys} keys of {value_bytes} B values in one scope, store {}",
        store_label(&info)
    );
    println!();
    println!("| keys | data (key + value bytes) | load time | load rate | writes per commit | engine CPU/write | VmRSS | VmHWM | VmRSS ÷ data | engine VmRSS before load |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (before, after) = counters;
    let commits = after.batches.saturating_sub(before.batches);
    let writes = after.writes.saturating_sub(before.writes);
    println!(
        "| {keys} | {} | {} | {:.0} /s | {} | {} | {} | {} | {} | {} |",
        mib(data),
        secs(filled.elapsed),
        filled.per_second(),
        if commits > 0 {
            format!("{:.1}", writes as f64 / commits as f64)
        } else {
            "–".into()
        },
        load_cpu.map_or("–".into(), |d| format!(
            "{:.1} µs",
            d.as_secs_f64() * 1e6 / keys as f64
        )),
        loaded.map_or("–".into(), |m| mib(m.rss_kib * 1024)),
        loaded.map_or("–".into(), |m| mib(m.hwm_kib * 1024)),
        loaded.map_or("–".into(), |m| format!(
            "{:.2}",
            (m.rss_kib * 1024) as f64 / data as f64
        )),
        idle.map_or("–".into(), |m| mib(m.rss_kib * 1024)),
    );
    println!();
    println!("| on-disk `<data-dir>/state` | apparent size | allocated | ÷ data |");
    println!("|---|---:|---:|---:|");
    let disk_row = |what: &str, (apparent, allocated): (u64, u64)| {
        println!(
            "| {what} | {} | {} | {:.2} |",
            mib(apparent),
            mib(allocated),
            allocated as f64 / data as f64
        );
    };
    disk_row("after the load (engine running)", disk_loaded);
    if let Some(d) = disk_after_term {
        disk_row("after SIGTERM (clean stop)", d);
    }
    println!();
    println!("| restart after | stop took | spawn → ready line | spawn → first state::get answered | sampled keys intact | VmRSS after the checks |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &restarts {
        println!(
            "| {} | {} | {} | {} | {} / {} | {} |",
            r.how,
            r.stop_time.map_or("– (killed)".into(), secs),
            secs(r.ready_after),
            secs(r.first_get_after),
            r.correct,
            r.sampled,
            r.memory.map_or("–".into(), |m| mib(m.rss_kib * 1024)),
        );
    }
    println!();
    if let Some(m) = loaded {
        println!(
            "- VmRSS ÷ data = {:.2} (target ≤ 1.5); peak (VmHWM) ÷ data = {:.2}; growth over the idle engine ÷ data = {}",
            (m.rss_kib * 1024) as f64 / data as f64,
            (m.hwm_kib * 1024) as f64 / data as f64,
            idle.map_or("–".into(), |i| format!(
                "{:.2}",
                (m.rss_kib.saturating_sub(i.rss_kib) * 1024) as f64 / data as f64
            )),
        );
    }
    if let (Some(x), Some(y)) = (io_before, io_after) {
        println!(
            "- engine disk writes during the load: {} ({:.1} × the data; /proc/<pid>/io write_bytes)",
            mib(y.write_bytes.saturating_sub(x.write_bytes)),
            y.write_bytes.saturating_sub(x.write_bytes) as f64 / data as f64
        );
    }
    for r in &restarts {
        println!(
            "- after {}: ready in {}, first get answered {} after spawn (target ≤ 5 s)",
            r.how,
            secs(r.ready_after),
            secs(r.first_get_after)
        );
    }
    if !info["durable"].as_bool().unwrap_or(false) {
        println!("- the store is not durable: nothing survives a restart, so the restart figures are for an empty store");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_have_the_requested_compact_size() {
        for n in [0, 7, 12_345, 999_999, u64::MAX] {
            for target in [200, 64, 1000] {
                let (v, len) = record(n, target);
                let bytes = serde_json::to_vec(&v).expect("serialize");
                assert_eq!(bytes.len(), len, "n={n} target={target}");
                if target >= 100 {
                    assert_eq!(len, target);
                }
            }
        }
        // Below the fixed part the record is as small as it gets.
        let (_, len) = record(1, 10);
        assert!(len > 10);
    }

    #[test]
    fn keys_are_24_bytes() {
        assert_eq!(key("key-", 0).len(), 24);
        assert_eq!(key("get-", 999_999).len(), 24);
        assert_eq!(format!("w{:02}-{:020}", 63, 5u64).len(), 24);
    }
}
