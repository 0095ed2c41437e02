//! The two hot-path scenarios: HTTP trigger vs axum, and worker call round trip vs redis-benchmark
//! (the state scenarios live in `state`), and the helpers they share.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use trine_sdk::{ErrorBody, Worker, WorkerOptions};

use crate::engine::EngineProcess;
use crate::http_client::{HttpConn, Target};
use crate::load::{self, Measurement};
use crate::report::{print_table, Row};
use crate::yardstick::{hello_body, redis_benchmark, start_axum};

/// Settings shared by every scenario.
#[derive(Clone, Debug)]
pub struct Settings {
    pub warmup: Duration,
    pub duration: Duration,
    pub concurrency: Vec<usize>,
    pub client_threads: usize,
    pub worker_threads: usize,
    pub redis_requests: u64,
}

/// A current-thread runtime for 1 thread, else a multi-thread one; threads named `name`.
pub(crate) fn build_runtime(threads: usize, name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads).thread_name(name);
        b
    };
    Ok(builder.enable_all().build()?)
}

/// Runs `f` on a dedicated load-generator runtime (`client_threads` threads, named `bench-load`)
/// so the generator's CPU use is bounded and separate from the servers it loads.
pub(crate) async fn on_client_runtime<F, Fut, T>(threads: usize, f: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bench-load".into())
        .spawn(move || {
            let outcome = match build_runtime(threads, "bench-load") {
                Ok(runtime) => runtime.block_on(f()),
                Err(e) => Err(e),
            };
            let _ = tx.send(outcome);
        })?;
    rx.await.context("load generator thread failed")?
}

pub(crate) fn worker_options() -> WorkerOptions {
    WorkerOptions {
        name: Some("trine-bench".into()),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// http

/// `GET /hello` through an http trigger and a trine-sdk worker, vs axum serving the same body.
pub async fn http(settings: &Settings, engine: &EngineProcess) -> anyhow::Result<()> {
    let _worker = hello_worker(&engine.worker_url, settings.worker_threads).await?;
    let body = serde_json::to_vec(&hello_body())?;
    let trine = Target::new(&engine.http_url, "/hello", &body)?;
    wait_until_served(&trine).await?;
    let axum = Target::new(&format!("http://{}", start_axum().await?), "/hello", &body)?;

    let mut rows = Vec::new();
    let mut summary = Vec::new();
    for &c in &settings.concurrency {
        let cpu_before = engine.cpu_time();
        let t = http_load(settings, &trine, c).await?;
        let engine_cpu = engine_cpu_per_request(cpu_before, engine.cpu_time(), &t);
        let a = http_load(settings, &axum, c).await?;
        let mut row = Row::measured("trine http trigger GET /hello", &t);
        row.engine_cpu = engine_cpu;
        let ratio = t.per_second() / a.per_second();
        row.ratio = Some(ratio);
        summary.push(format!(
            "c={c}: trine/axum = {:.0} % (target ≥ 40 %), trine p99 = {} (target ≤ 5 ms at c=32)",
            ratio * 100.0,
            crate::report::latency(t.histogram.quantile(0.99))
        ));
        report_errors("trine http", &t);
        report_errors("axum", &a);
        rows.push(row);
        rows.push(Row::measured("axum hello-world (yardstick)", &a));
    }
    print_table("http: trigger → worker → response", &rows);
    println!();
    for line in summary {
        println!("- {line}");
    }
    Ok(())
}

/// A trine-sdk worker on its own runtime thread(s) (`bench-worker`), like a separate worker
/// process would be: `setup` registers its functions and triggers once connected. Stops (and
/// shuts the worker down) when dropped.
pub(crate) struct WorkerThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WorkerThread {
    pub(crate) async fn start<S>(url: &str, threads: usize, setup: S) -> anyhow::Result<Self>
    where
        S: FnOnce(&Worker) + Send + 'static,
    {
        let url = url.to_owned();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-worker".into())
            .spawn(move || {
                let runtime = match build_runtime(threads, "bench-worker") {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let worker = match Worker::connect(&url, worker_options()).await {
                        Ok(w) => w,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                            return;
                        }
                    };
                    setup(&worker);
                    let _ = ready_tx.send(Ok(()));
                    let _ = stop_rx.await;
                    worker.shutdown().await;
                });
            })?;
        ready_rx.await.context("worker thread failed")??;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for WorkerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The worker serving `bench::hello` behind `GET /hello`.
async fn hello_worker(url: &str, threads: usize) -> anyhow::Result<WorkerThread> {
    WorkerThread::start(url, threads, |worker| {
        worker.register_function("bench::hello", |_req: Value| async move {
            Ok::<_, ErrorBody>(hello_body())
        });
        worker.register_trigger(
            "http",
            "bench::hello",
            json!({"api_path": "/hello", "http_method": "GET"}),
        );
    })
    .await
}

/// The trigger registration is asynchronous: poll until the route answers.
async fn wait_until_served(target: &Target) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = async {
            let mut conn = HttpConn::open(target).await?;
            conn.get().await
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                bail!("GET {} never succeeded: {e:#}", target.path)
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn http_load(settings: &Settings, target: &Target, c: usize) -> anyhow::Result<Measurement> {
    let target = target.clone();
    let (warmup, duration) = (settings.warmup, settings.duration);
    on_client_runtime(settings.client_threads, move || async move {
        // All connections are open before the clock starts.
        let mut conns = Vec::with_capacity(c);
        for _ in 0..c {
            conns.push(HttpConn::open(&target).await?);
        }
        let conns = std::sync::Mutex::new(conns);
        let m = load::run(c, warmup, duration, |_, mut rec| {
            let conn = conns.lock().ok().and_then(|mut v| v.pop());
            let target = target.clone();
            async move {
                let Some(mut conn) = conn else { return rec };
                while let Some(t0) = rec.begin() {
                    let outcome = conn.get().await;
                    let failed = outcome.is_err();
                    rec.end(t0, outcome.map_err(|e| format!("{e:#}")));
                    if failed {
                        // The connection may be dead; start a fresh one (or pause briefly).
                        match HttpConn::open(&target).await {
                            Ok(fresh) => conn = fresh,
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                }
                rec
            }
        })
        .await;
        Ok(m)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// roundtrip

/// `call("engine::echo", small payload)` from a trine-sdk worker vs `redis-benchmark -t get`.
pub async fn roundtrip(settings: &Settings, engine: &EngineProcess) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut summary = Vec::new();
    for &c in &settings.concurrency {
        let cpu_before = engine.cpu_time();
        let t = roundtrip_load(settings, &engine.worker_url, c).await?;
        let engine_cpu = engine_cpu_per_request(cpu_before, engine.cpu_time(), &t);
        report_errors("trine roundtrip", &t);
        let mut row = Row::measured("trine-sdk call engine::echo", &t);
        row.engine_cpu = engine_cpu;
        let n = settings.redis_requests;
        let redis = tokio::task::spawn_blocking(move || redis_benchmark(c, n)).await?;
        match redis {
            Ok(r) => {
                let ratio = t.per_second() / r.per_second;
                row.ratio = Some(ratio);
                summary.push(format!(
                    "c={c}: trine/redis = {:.0} % (target ≥ 60 %)",
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
    print_table("roundtrip: worker → engine → worker", &rows);
    println!();
    for line in summary {
        println!("- {line}");
    }
    Ok(())
}

async fn roundtrip_load(
    settings: &Settings,
    worker_url: &str,
    c: usize,
) -> anyhow::Result<Measurement> {
    let url = worker_url.to_owned();
    let (warmup, duration) = (settings.warmup, settings.duration);
    // The worker lives on the load-generator runtime too: with one client thread this is a
    // single-threaded client, like redis-benchmark.
    on_client_runtime(settings.client_threads, move || async move {
        let worker = Worker::connect(&url, worker_options()).await?;
        let payload = json!({"k": "v"});
        let echoed = worker.call("engine::echo", payload.clone()).await?;
        if echoed.get("k") != payload.get("k") {
            bail!("engine::echo returned {echoed}, expected {payload}");
        }
        let m = load::run(c, warmup, duration, |_, mut rec| {
            let worker = worker.clone();
            let payload = payload.clone();
            async move {
                while let Some(t0) = rec.begin() {
                    let outcome = worker.call("engine::echo", payload.clone()).await;
                    rec.end(t0, outcome.map(drop));
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

/// Engine CPU over the whole run (warm-up included) divided by every request of the run.
pub(crate) fn engine_cpu_per_request(
    before: Option<Duration>,
    after: Option<Duration>,
    m: &Measurement,
) -> Option<Duration> {
    let used = after?.checked_sub(before?)?;
    (m.all_requests > 0).then(|| used / u32::try_from(m.all_requests).unwrap_or(u32::MAX))
}

pub(crate) fn report_errors(what: &str, m: &Measurement) {
    if m.errors > 0 {
        eprintln!(
            "warning: {what} c={}: {} failed requests (first: {})",
            m.concurrency,
            m.errors,
            m.first_error.as_deref().unwrap_or("?")
        );
    }
}
