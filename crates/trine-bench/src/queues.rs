//! The queue scenarios (`trine-bench queues`, or one at a time):
//!
//! - `queue-enqueue`: acknowledged durable enqueues (`Worker::enqueue` to queue `default`) from
//!   closed-loop producers (64, then 1), next to the disk's fsync ceiling measured in the same
//!   directory. A trine-sdk worker serves the jobs (its handler returns at once); the run reports
//!   whether it kept up (handler runs/s, the queue's backlog from `iii::queue::status`).
//! - `queue-latency`: open-loop enqueues at a fixed rate; the handler measures enqueue → handler
//!   start from the send time carried in the payload.
//!
//! Producers and the handler worker live in this process (separate runtimes, separate
//! connections), so send and receive times come from one clock: ns since an `Instant` both
//! share. Every job carries a number unique for the engine's life; after each run the bench waits
//! for the queue to drain and checks that every acknowledged job ran.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use trine_sdk::{ErrorBody, Worker};

use crate::engine::{cpu_time_of, thread_cpu_by_name, EngineProcess};
use crate::histogram::Histogram;
use crate::load;
use crate::report::latency;
use crate::scenarios::{on_client_runtime, worker_options, Settings, WorkerThread};
use crate::state::{fsync_yardstick, print_fsync_table};
use crate::yardstick::{FsyncMode, FsyncRun};

/// The queue every job goes to: it exists without a config file, durable by default.
const QUEUE: &str = "default";
/// The function the jobs run.
const FUNCTION: &str = "bench::job";
/// Job numbers above this are not from this bench (guards the ledger's allocation).
const MAX_JOBS: u64 = 1 << 28;
/// Engine threads whose name starts with this are the queue's committer (`trine-queue-committer`,
/// cut to 15 bytes by the kernel).
const COMMITTER_THREAD: &str = "trine-queue";

/// Settings of the queue scenarios.
#[derive(Clone, Debug)]
pub struct QueueSettings {
    /// Producer counts of `queue-enqueue`, one run each.
    pub producers: Vec<usize>,
    /// Worker connections the producers are spread over (at most one per producer).
    pub connections: usize,
    /// Compact JSON bytes of each job's payload.
    pub job_bytes: usize,
    /// Enqueue rates (jobs/s) of `queue-latency`, one run each.
    pub rates: Vec<f64>,
    /// Seconds of each fsync probe.
    pub fsync_duration: Duration,
    /// How long a run waits, after its producers stopped, for every acknowledged job to run.
    pub drain_timeout: Duration,
}

/// A `trine serve --config` file declaring queue `default` with a given `concurrency` (the
/// HTTP and stream listeners, durable state and queue stores: what the engine runs without a
/// config file). Removed on drop.
pub struct QueueConfig {
    path: PathBuf,
}

impl QueueConfig {
    pub fn write(dir: &Path, concurrency: usize) -> anyhow::Result<Self> {
        let path = dir.join(format!(
            "trine-bench-queue-config-{}.yaml",
            std::process::id()
        ));
        let text = format!(
            "workers:
  - name: iii-http
  - name: iii-stream
  - name: iii-state
    config:
      adapter: {{ name: kv, config: {{ store_method: file_based }} }}
  - name: iii-queue
    config:
      queue_configs:
        {QUEUE}: {{ concurrency: {concurrency} }}
      adapter: {{ name: builtin, config: {{ store_method: file_based }} }}
"
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for QueueConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// data

/// `{"n":<n>,"pad":"xx…","sent_ns":<ns>}` padded to `target` bytes of compact JSON (more if
/// `target` is below the fixed part), and its exact compact length.
pub fn job_payload(n: u64, sent_ns: u64, target: usize) -> (Value, usize) {
    const FIXED: usize = r#"{"n":,"pad":"","sent_ns":}"#.len();
    let base = FIXED + n.to_string().len() + sent_ns.to_string().len();
    let pad = target.saturating_sub(base);
    (
        json!({"n": n, "pad": "x".repeat(pad), "sent_ns": sent_ns}),
        base + pad,
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the handler saw, by job number.
#[derive(Default)]
struct Seen {
    /// Runs of each job.
    runs: Vec<u32>,
    /// Receive − send time of each job's first run (`u64::MAX` until it runs).
    latency_ns: Vec<u64>,
    /// Invocations whose payload had no usable job number.
    unexpected: u64,
}

/// Shared by the handler (writes) and the producers (read at the end of a run).
struct Ledger {
    origin: Instant,
    seen: Mutex<Seen>,
    /// Every handler invocation, read at the edges of the measured window.
    invocations: AtomicU64,
}

impl Ledger {
    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn record(&self, payload: &Value) {
        let received = self.now_ns();
        self.invocations.fetch_add(1, Ordering::Relaxed);
        let mut seen = lock(&self.seen);
        match (payload["n"].as_u64(), payload["sent_ns"].as_u64()) {
            (Some(n), Some(sent)) if n < MAX_JOBS => {
                let i = n as usize;
                if seen.runs.len() <= i {
                    let len = (i + 1).next_power_of_two();
                    seen.runs.resize(len, 0);
                    seen.latency_ns.resize(len, u64::MAX);
                }
                seen.runs[i] += 1;
                if seen.runs[i] == 1 {
                    seen.latency_ns[i] = received.saturating_sub(sent);
                }
            }
            _ => seen.unexpected += 1,
        }
    }

    /// How many of `jobs` have not run yet.
    fn not_run(&self, jobs: &[u64]) -> usize {
        let seen = lock(&self.seen);
        jobs.iter()
            .filter(|&&n| seen.runs.get(n as usize).copied().unwrap_or(0) == 0)
            .count()
    }

    /// Enqueue → handler latency of those of `jobs` that ran.
    fn latencies(&self, jobs: impl Iterator<Item = u64>) -> Histogram {
        let seen = lock(&self.seen);
        let mut h = Histogram::default();
        for n in jobs {
            match seen.latency_ns.get(n as usize) {
                Some(&ns) if ns != u64::MAX => h.record(Duration::from_nanos(ns)),
                _ => {}
            }
        }
        h
    }

    /// Compares the handler's runs of jobs `first..end` with the acknowledged ones.
    fn check(&self, first: u64, end: u64, acked: &[u64]) -> Check {
        let seen = lock(&self.seen);
        let runs = |n: u64| seen.runs.get(n as usize).copied().unwrap_or(0);
        let mut is_acked = vec![false; (end - first) as usize];
        for &n in acked {
            is_acked[(n - first) as usize] = true;
        }
        let mut c = Check {
            acked: acked.len() as u64,
            unexpected: seen.unexpected,
            ..Check::default()
        };
        for (i, &ack) in is_acked.iter().enumerate() {
            let r = runs(first + i as u64);
            c.duplicates += u64::from(r.saturating_sub(1));
            match (ack, r > 0) {
                (true, true) => c.ran += 1,
                (true, false) => c.missing += 1,
                (false, true) => c.ran_unacked += 1,
                (false, false) => {}
            }
        }
        c
    }
}

/// Every acknowledged job ran?
#[derive(Clone, Copy, Debug, Default)]
struct Check {
    /// Acknowledged enqueues of the run, warm-up included.
    acked: u64,
    /// Acknowledged jobs the handler ran (at least once).
    ran: u64,
    /// Acknowledged jobs the handler never ran (within the drain timeout).
    missing: u64,
    /// Runs beyond the first, over the run's jobs.
    duplicates: u64,
    /// Jobs that ran although their enqueue failed (e.g. stored, then the answer timed out).
    ran_unacked: u64,
    /// Invocations without a usable job number (whole engine life).
    unexpected: u64,
}

impl Check {
    fn verdict(&self) -> String {
        if self.missing == 0 {
            format!("all {} acknowledged jobs ran", self.acked)
        } else {
            format!(
                "**{} of {} acknowledged jobs never ran**",
                self.missing, self.acked
            )
        }
    }
}

/// `iii::queue::status {queue: "default"}`: the counts the scenarios use.
#[derive(Clone, Copy, Debug, Default)]
struct QueueCounts {
    enqueued: u64,
    delivered: u64,
    pending: u64,
    failed_attempts: u64,
    dead_lettered: u64,
    durable: bool,
    /// Jobs the queue runs at once.
    concurrency: u64,
}

async fn queue_status(worker: &Worker) -> anyhow::Result<QueueCounts> {
    let v = worker
        .call("iii::queue::status", json!({"queue": QUEUE}))
        .await
        .context("iii::queue::status")?;
    let n = |f: &str| v[f].as_u64().unwrap_or(0);
    Ok(QueueCounts {
        enqueued: n("enqueued"),
        delivered: n("delivered"),
        pending: n("pending"),
        failed_attempts: n("failed_attempts"),
        dead_lettered: n("dead_lettered"),
        durable: v["durable"].as_bool().unwrap_or(false),
        concurrency: n("concurrency"),
    })
}

/// Counters at one edge of a measured window.
#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    invocations: u64,
    queue: QueueCounts,
    engine_cpu: Option<Duration>,
    /// CPU of the engine's queue committer thread.
    committer_cpu: Option<Duration>,
    /// CPU of this process's threads, by name (`bench-load`, `bench-worker`, …).
    bench_threads: Vec<(String, Duration)>,
}

async fn sample(worker: &Worker, ledger: &Ledger, pid: Option<u32>) -> anyhow::Result<Sample> {
    let queue = queue_status(worker).await?;
    let engine_threads = pid.map(thread_cpu_by_name).unwrap_or_default();
    let committer_cpu = engine_threads
        .iter()
        .filter(|(name, _)| name.starts_with(COMMITTER_THREAD))
        .map(|(_, d)| *d)
        .reduce(|a, b| a + b);
    Ok(Sample {
        at: Instant::now(),
        invocations: ledger.invocations.load(Ordering::Relaxed),
        queue,
        engine_cpu: pid.and_then(|p| cpu_time_of(&format!("/proc/{p}/stat"))),
        committer_cpu,
        bench_threads: thread_cpu_by_name(std::process::id()),
    })
}

fn cores(a: Option<Duration>, b: Option<Duration>, window: f64) -> Option<f64> {
    Some(b?.checked_sub(a?)?.as_secs_f64() / window)
}

fn fmt_cores(c: Option<f64>) -> String {
    c.map_or("–".into(), |c| format!("{c:.2}"))
}

/// Cores used by this process's threads named `name` between two samples.
fn bench_thread_cores(a: &Sample, b: &Sample, name: &str, window: f64) -> Option<f64> {
    let find = |s: &Sample| {
        s.bench_threads
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, d)| *d)
            .reduce(|x, y| x + y)
    };
    cores(find(a), find(b), window)
}

async fn connect_all(url: &str, n: usize) -> anyhow::Result<Vec<Worker>> {
    let mut workers = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        workers.push(Worker::connect(url, worker_options()).await?);
    }
    Ok(workers)
}

/// Waits until the queue holds nothing and every job of `acked` ran, up to `timeout`; returns
/// how long that took, or `None` on timeout.
async fn wait_drained(
    worker: &Worker,
    ledger: &Ledger,
    acked: &[u64],
    timeout: Duration,
) -> anyhow::Result<Option<Duration>> {
    let started = Instant::now();
    loop {
        if ledger.not_run(acked) == 0 && queue_status(worker).await?.pending == 0 {
            return Ok(Some(started.elapsed()));
        }
        if started.elapsed() > timeout {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn drained_after(d: Option<Duration>, timeout: Duration) -> String {
    match d {
        Some(d) if d < Duration::from_secs(1) => format!("{:.0} ms", d.as_secs_f64() * 1e3),
        Some(d) => format!("{:.2} s", d.as_secs_f64()),
        None => format!("**not within {:.0} s**", timeout.as_secs_f64()),
    }
}

// ---------------------------------------------------------------------------------------------
// the handler worker

/// The trine-sdk worker serving `bench::job` on its own thread (`bench-worker`), the ledger its
/// handler writes, and the job numbering, for the life of one engine.
pub struct QueueBench {
    ledger: Arc<Ledger>,
    next: Arc<AtomicU64>,
    _handler: WorkerThread,
}

impl QueueBench {
    /// Starts the handler worker and checks the path end to end with one job.
    pub async fn start(settings: &Settings, engine: &EngineProcess) -> anyhow::Result<Self> {
        let ledger = Arc::new(Ledger {
            origin: Instant::now(),
            seen: Mutex::new(Seen::default()),
            invocations: AtomicU64::new(0),
        });
        let log = ledger.clone();
        let handler = WorkerThread::start(&engine.worker_url, settings.worker_threads, move |w| {
            w.register_function(FUNCTION, move |payload: Value| {
                log.record(&payload);
                async move { Ok::<_, ErrorBody>(Value::Null) }
            });
        })
        .await?;
        let bench = Self {
            ledger,
            next: Arc::new(AtomicU64::new(0)),
            _handler: handler,
        };
        // One job through the whole path before anything is timed.
        let url = engine.worker_url.clone();
        let (ledger, n) = (
            bench.ledger.clone(),
            bench.next.fetch_add(1, Ordering::Relaxed),
        );
        let counts = on_client_runtime(1, move || async move {
            let worker = Worker::connect(&url, worker_options()).await?;
            let (payload, _) = job_payload(n, ledger.now_ns(), 200);
            worker
                .enqueue(QUEUE, FUNCTION, payload)
                .await
                .context("the first enqueue failed")?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while ledger.not_run(&[n]) > 0 {
                if Instant::now() > deadline {
                    bail!("the first job did not run within 10 s");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let counts = queue_status(&worker).await?;
            worker.shutdown().await;
            Ok(counts)
        })
        .await?;
        println!(
            "queue `{QUEUE}`: concurrency {}, {}",
            counts.concurrency,
            if counts.durable {
                "durable (jobs are fsync'd before the receipt)"
            } else {
                "**not durable** (in memory): no enqueue waits for an fsync"
            }
        );
        Ok(bench)
    }

    // -----------------------------------------------------------------------------------------
    // queue-enqueue

    /// Closed-loop enqueues with each producer count, vs the fsync ceiling.
    pub async fn enqueue(
        &self,
        settings: &Settings,
        qs: &QueueSettings,
        engine: &EngineProcess,
    ) -> anyhow::Result<()> {
        let fsync = fsync_yardstick(engine, qs.fsync_duration).await?;
        let ceiling = fsync
            .iter()
            .find(|r| r.mode == FsyncMode::Overwrite)
            .map(FsyncRun::per_second)
            .unwrap_or(0.0);
        let mut runs = Vec::new();
        for &producers in &qs.producers {
            runs.push(self.enqueue_run(settings, qs, engine, producers).await?);
        }

        let durable = runs.first().is_some_and(|r| r.b.queue.durable);
        println!();
        println!(
            "### queue-enqueue: acknowledged enqueues to queue `{QUEUE}` ({}), {} B payloads, handler returns at once",
            if durable { "durable" } else { "not durable" },
            qs.job_bytes
        );
        println!();
        println!("| producers | connections | acked enqueues | acked/s | ack p50 | ack p99 | ack max | handler runs/s | engine delivered/s | backlog mean / max (every 50 ms) | enqueue → handler p50 | p99 | engine cores | committer cores | bench load / worker cores | errors |");
        println!(
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in &runs {
            let w = r.window();
            let m = &r.m;
            println!(
                "| {} | {} | {} | {:.0} | {} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} / {} | {} |",
                r.producers,
                r.connections,
                m.requests,
                m.per_second(),
                latency(m.histogram.quantile(0.5)),
                latency(m.histogram.quantile(0.99)),
                latency(m.histogram.quantile(1.0)),
                r.b.invocations.saturating_sub(r.a.invocations) as f64 / w,
                r.b.queue.delivered.saturating_sub(r.a.queue.delivered) as f64 / w,
                r.backlog(),
                latency(r.lag.quantile(0.5)),
                latency(r.lag.quantile(0.99)),
                fmt_cores(cores(r.a.engine_cpu, r.b.engine_cpu, w)),
                fmt_cores(cores(r.a.committer_cpu, r.b.committer_cpu, w)),
                fmt_cores(bench_thread_cores(&r.a, &r.b, "bench-load", w)),
                fmt_cores(bench_thread_cores(&r.a, &r.b, "bench-worker", w)),
                m.errors,
            );
        }
        println!();
        println!("| producers | acked (warm-up included) | ran | missing | duplicate runs | ran without an ack | failed attempts / dead-lettered | queue drained after the producers stopped |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &runs {
            let c = &r.check;
            println!(
                "| {} | {} | {} | {} | {} | {} | {} / {} | {} |",
                r.producers,
                c.acked,
                c.ran,
                c.missing,
                c.duplicates,
                c.ran_unacked,
                r.end
                    .failed_attempts
                    .saturating_sub(r.a.queue.failed_attempts),
                r.end.dead_lettered.saturating_sub(r.a.queue.dead_lettered),
                drained_after(r.drained, qs.drain_timeout),
            );
        }
        print_fsync_table(&fsync);
        println!();
        for r in &runs {
            let aps = r.m.per_second();
            let p = r.producers;
            if ceiling > 0.0 {
                let batch_ceiling = ceiling * p as f64;
                println!(
                    "- {p} producer(s): {aps:.0} acked enqueues/s = {:.1} per fsync the disk can do; batch-commit ceiling = fsyncs/s × {p} = {batch_ceiling:.0}/s; trine reached {:.0} % of it",
                    aps / ceiling,
                    aps / batch_ceiling * 100.0
                );
                // The target is stated for 64 concurrent producers.
                if p >= 64 {
                    println!(
                        "- {p} producer(s): target ≥ 10 000 acknowledged enqueues/s where the batch-commit ceiling allows: {}",
                        if batch_ceiling < 10_000.0 {
                            "the ceiling is below 10 000/s, so the disk does not allow it"
                        } else if aps >= 10_000.0 {
                            "met"
                        } else {
                            "**not met**"
                        }
                    );
                }
            }
            let w = r.window();
            let runs_per_s = r.b.invocations.saturating_sub(r.a.invocations) as f64 / w;
            println!(
                "- {p} producer(s): the handler ran {runs_per_s:.0} jobs/s for {aps:.0} enqueued/s; backlog {} → {} over the window; {}",
                r.a.queue.pending,
                r.b.queue.pending,
                r.check.verdict()
            );
            if let (Some(a), Some(b)) = (r.a.engine_cpu, r.b.engine_cpu) {
                let jobs = r.b.queue.enqueued.saturating_sub(r.a.queue.enqueued);
                if jobs > 0 && b > a {
                    println!(
                        "- {p} producer(s): engine CPU per job (enqueue + delivery + settle) {:.1} µs",
                        (b - a).as_secs_f64() * 1e6 / jobs as f64
                    );
                }
            }
            if r.m.errors > 0 {
                eprintln!(
                    "warning: queue-enqueue {p} producers: {} failed enqueues (first: {})",
                    r.m.errors,
                    r.m.first_error.as_deref().unwrap_or("?")
                );
            }
            if r.check.missing > 0 || r.check.unexpected > 0 {
                eprintln!(
                    "warning: queue-enqueue {p} producers: {} acknowledged jobs never ran, {} invocations without a job number",
                    r.check.missing, r.check.unexpected
                );
            }
        }
        if !durable {
            println!("- the queue is not durable: no enqueue waits for an fsync, the yardstick does not bound it");
        }
        Ok(())
    }

    async fn enqueue_run(
        &self,
        settings: &Settings,
        qs: &QueueSettings,
        engine: &EngineProcess,
        producers: usize,
    ) -> anyhow::Result<EnqueueRun> {
        let producers = producers.max(1);
        let connections = qs.connections.clamp(1, producers);
        let url = engine.worker_url.clone();
        let pid = engine.pid();
        let (warmup, duration) = (settings.warmup, settings.duration);
        let (job_bytes, drain_timeout) = (qs.job_bytes, qs.drain_timeout);
        let (ledger, next) = (self.ledger.clone(), self.next.clone());
        on_client_runtime(settings.client_threads, move || async move {
            let workers = connect_all(&url, connections).await?;
            let first = next.load(Ordering::Relaxed);
            // Counters at the edges of the measured window, from a task of its own.
            let t0 = tokio::time::Instant::now();
            let sampler = {
                let (w, ledger) = (workers[0].clone(), ledger.clone());
                tokio::spawn(async move {
                    tokio::time::sleep_until(t0 + warmup).await;
                    let a = sample(&w, &ledger, pid).await;
                    // The backlog every 50 ms in between.
                    let end = t0 + warmup + duration;
                    let mut backlog = Vec::new();
                    let mut tick = tokio::time::interval(Duration::from_millis(50));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {}
                            _ = tokio::time::sleep_until(end) => break,
                        }
                        if let Ok(q) = queue_status(&w).await {
                            backlog.push(q.pending);
                        }
                    }
                    let b = sample(&w, &ledger, pid).await;
                    (a, b, backlog)
                })
            };
            // Per producer: (job number, counted in the measured window) of each acked enqueue.
            let acked: Arc<Mutex<Vec<AckedJobs>>> = Arc::default();
            let m = load::run(producers, warmup, duration, |i, mut rec| {
                let worker = workers[i % workers.len()].clone();
                let (ledger, next, acked) = (ledger.clone(), next.clone(), acked.clone());
                async move {
                    let mut mine = Vec::new();
                    while let Some(t0) = rec.begin() {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let (payload, _) = job_payload(n, ledger.now_ns(), job_bytes);
                        let outcome = worker.enqueue(QUEUE, FUNCTION, payload).await;
                        if outcome.is_ok() {
                            mine.push((n, rec.counts(t0)));
                        }
                        rec.end(t0, outcome.map(drop));
                    }
                    lock(&acked).push(mine);
                    rec
                }
            })
            .await;
            let (a, b, backlog) = sampler.await?;
            let end = next.load(Ordering::Relaxed);
            let acked: Vec<(u64, bool)> = lock(&acked).drain(..).flatten().collect();
            let all: Vec<u64> = acked.iter().map(|&(n, _)| n).collect();
            let drained = wait_drained(&workers[0], &ledger, &all, drain_timeout).await?;
            let end_counts = queue_status(&workers[0]).await?;
            let lag = ledger.latencies(acked.iter().filter(|x| x.1).map(|x| x.0));
            let check = ledger.check(first, end, &all);
            for w in workers {
                w.shutdown().await;
            }
            Ok(EnqueueRun {
                producers,
                connections,
                m,
                a: a?,
                b: b?,
                end: end_counts,
                backlog,
                lag,
                check,
                drained,
            })
        })
        .await
    }

    // -----------------------------------------------------------------------------------------
    // queue-latency

    /// Open-loop enqueues at each rate; enqueue → handler start.
    pub async fn latency(
        &self,
        settings: &Settings,
        qs: &QueueSettings,
        engine: &EngineProcess,
    ) -> anyhow::Result<()> {
        let mut runs = Vec::new();
        for &rate in &qs.rates {
            runs.push(self.latency_run(settings, qs, engine, rate).await?);
        }
        println!();
        println!(
            "### queue-latency: enqueue at a fixed rate (open loop, one producer connection) → handler start, queue `{QUEUE}`, {} B payloads",
            qs.job_bytes
        );
        println!();
        println!("| rate | measured jobs | acked | ran | p50 | p90 | p99 | max | ack p50 | ack p99 | send lag p99 | engine cores | errors |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &runs {
            println!(
                "| {:.0}/s | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.rate,
                r.measured,
                r.ack.count(),
                r.lat.count(),
                latency(r.lat.quantile(0.5)),
                latency(r.lat.quantile(0.9)),
                latency(r.lat.quantile(0.99)),
                latency(r.lat.quantile(1.0)),
                latency(r.ack.quantile(0.5)),
                latency(r.ack.quantile(0.99)),
                latency(r.send_lag.quantile(0.99)),
                fmt_cores(r.engine_cores),
                r.errors,
            );
        }
        println!();
        println!("| rate | acked (warm-up included) | ran | missing | duplicate runs | ran without an ack | backlog when the producer stopped | queue drained after |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &runs {
            let c = &r.check;
            println!(
                "| {:.0}/s | {} | {} | {} | {} | {} | {} | {} |",
                r.rate,
                c.acked,
                c.ran,
                c.missing,
                c.duplicates,
                c.ran_unacked,
                r.backlog,
                drained_after(r.drained, qs.drain_timeout),
            );
        }
        println!();
        for r in &runs {
            println!(
                "- {:.0}/s: enqueue → handler p50 {}, p99 {} (target ≤ 20 ms at 1 000/s); {}",
                r.rate,
                latency(r.lat.quantile(0.5)),
                latency(r.lat.quantile(0.99)),
                r.check.verdict()
            );
            if r.errors > 0 {
                eprintln!(
                    "warning: queue-latency {:.0}/s: {} failed enqueues (first: {})",
                    r.rate,
                    r.errors,
                    r.first_error.as_deref().unwrap_or("?")
                );
            }
        }
        Ok(())
    }

    async fn latency_run(
        &self,
        settings: &Settings,
        qs: &QueueSettings,
        engine: &EngineProcess,
        rate: f64,
    ) -> anyhow::Result<LatencyRun> {
        let rate = rate.max(1.0);
        let (warmup, duration) = (settings.warmup, settings.duration);
        let total = ((warmup + duration).as_secs_f64() * rate).ceil() as u64;
        let first_measured = (warmup.as_secs_f64() * rate).ceil() as u64;
        let url = engine.worker_url.clone();
        let (job_bytes, drain_timeout) = (qs.job_bytes, qs.drain_timeout);
        let (ledger, next) = (self.ledger.clone(), self.next.clone());
        let cpu_before = engine.cpu_time();
        let started = Instant::now();
        let mut run = on_client_runtime(settings.client_threads, move || async move {
            let worker = Worker::connect(&url, worker_options()).await?;
            // This run's job numbers: base + seq.
            let base = next.fetch_add(total, Ordering::Relaxed);
            struct Acks {
                hist: Histogram,
                acked: Vec<u64>,
                errors: u64,
                first_error: Option<String>,
            }
            let acks = Arc::new(Mutex::new(Acks {
                hist: Histogram::default(),
                acked: Vec::with_capacity(total as usize),
                errors: 0,
                first_error: None,
            }));
            let mut send_lag = Histogram::default();
            let period = Duration::from_secs_f64(1.0 / rate);
            let start = tokio::time::Instant::now() + Duration::from_millis(10);
            let mut tasks = tokio::task::JoinSet::new();
            for seq in 0..total {
                let at = start + period.mul_f64(seq as f64);
                tokio::time::sleep_until(at).await;
                let n = base + seq;
                let (payload, _) = job_payload(n, ledger.now_ns(), job_bytes);
                let t0 = Instant::now();
                let measured = seq >= first_measured;
                if measured {
                    send_lag.record(t0.saturating_duration_since(at.into_std()));
                }
                let (worker, acks) = (worker.clone(), acks.clone());
                tasks.spawn(async move {
                    let outcome = worker.enqueue(QUEUE, FUNCTION, payload).await;
                    let mut a = lock(&acks);
                    match outcome {
                        Ok(_) => {
                            a.acked.push(n);
                            if measured {
                                a.hist.record(t0.elapsed());
                            }
                        }
                        Err(e) => {
                            a.errors += 1;
                            a.first_error.get_or_insert_with(|| e.to_string());
                        }
                    }
                });
                // Reap finished enqueues as we go so the set stays small.
                while tasks.try_join_next().is_some() {}
            }
            let backlog = queue_status(&worker).await?.pending;
            while tasks.join_next().await.is_some() {}
            let acks = std::mem::replace(
                &mut *lock(&acks),
                Acks {
                    hist: Histogram::default(),
                    acked: Vec::new(),
                    errors: 0,
                    first_error: None,
                },
            );
            let drained = wait_drained(&worker, &ledger, &acks.acked, drain_timeout).await?;
            let measured_acked = acks
                .acked
                .iter()
                .copied()
                .filter(|&n| n >= base + first_measured);
            let lat = ledger.latencies(measured_acked);
            let check = ledger.check(base, base + total, &acks.acked);
            worker.shutdown().await;
            Ok(LatencyRun {
                rate,
                measured: total - first_measured,
                lat,
                ack: acks.hist,
                send_lag,
                errors: acks.errors,
                first_error: acks.first_error,
                backlog,
                check,
                drained,
                engine_cores: None,
            })
        })
        .await?;
        run.engine_cores = cores(
            cpu_before,
            engine.cpu_time(),
            started.elapsed().as_secs_f64(),
        );
        Ok(run)
    }
}

/// A producer's acknowledged jobs: (job number, enqueued inside the measured window).
type AckedJobs = Vec<(u64, bool)>;

/// One `queue-enqueue` run.
struct EnqueueRun {
    producers: usize,
    connections: usize,
    m: load::Measurement,
    /// At the start and the end of the measured window.
    a: Sample,
    b: Sample,
    /// After the drain.
    end: QueueCounts,
    /// `pending` every 50 ms over the window.
    backlog: Vec<u64>,
    /// Enqueue → handler for acked jobs sent in the window.
    lag: Histogram,
    check: Check,
    drained: Option<Duration>,
}

impl EnqueueRun {
    fn window(&self) -> f64 {
        (self.b.at - self.a.at).as_secs_f64()
    }

    /// Mean and largest backlog sampled over the window.
    fn backlog(&self) -> String {
        let n = self.backlog.len().max(1) as f64;
        let mean = self.backlog.iter().sum::<u64>() as f64 / n;
        let max = self.backlog.iter().copied().max().unwrap_or(0);
        format!("{mean:.0} / {max}")
    }
}

/// One `queue-latency` run.
struct LatencyRun {
    rate: f64,
    /// Jobs scheduled in the measured window.
    measured: u64,
    /// Enqueue → handler start of measured, acked jobs that ran.
    lat: Histogram,
    /// Enqueue acknowledgement of measured jobs.
    ack: Histogram,
    send_lag: Histogram,
    errors: u64,
    first_error: Option<String>,
    /// `pending` right after the last enqueue was sent.
    backlog: u64,
    check: Check,
    drained: Option<Duration>,
    /// Over the whole run (warm-up and drain included).
    engine_cores: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_requested_compact_size() {
        for (n, ns) in [(0, 0), (7, 123_456_789), (u64::MAX, u64::MAX)] {
            for target in [200, 64, 1000] {
                let (v, len) = job_payload(n, ns, target);
                let bytes = serde_json::to_vec(&v).expect("serialize");
                assert_eq!(bytes.len(), len, "n={n} target={target}");
                if target >= 100 {
                    assert_eq!(len, target);
                }
            }
        }
    }

    #[test]
    fn the_ledger_finds_missing_and_duplicate_runs() {
        let ledger = Ledger {
            origin: Instant::now(),
            seen: Mutex::new(Seen::default()),
            invocations: AtomicU64::new(0),
        };
        for n in [10u64, 11, 11, 13] {
            ledger.record(&job_payload(n, 0, 64).0);
        }
        ledger.record(&json!({"other": 1}));
        // 10..14: 10, 11 and 12 acknowledged; 13 ran without an ack; 12 never ran.
        let c = ledger.check(10, 14, &[10, 11, 12]);
        assert_eq!(
            (c.acked, c.ran, c.missing, c.duplicates, c.ran_unacked),
            (3, 2, 1, 1, 1)
        );
        assert_eq!(c.unexpected, 1);
        assert_eq!(ledger.not_run(&[10, 12]), 1);
        assert_eq!(ledger.latencies([10, 11, 12].into_iter()).count(), 2);
        assert_eq!(ledger.invocations.load(Ordering::Relaxed), 5);
    }
}
