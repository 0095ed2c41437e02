//! `group-http`: the seed's todo app on N engines sharing one Redis data set (docs/cluster.md).
//!
//! For each N of `--engines`: a data set of its own (`trine-bench-group-<pid>-<N>`, emptied
//! before and deleted after), N engines started one after the other (the first takes the lease:
//! the owner), one todo-app worker per engine on its own runtime thread (`bench-worker`; the
//! replicas register the same functions and triggers), and a closed loop of keep-alive
//! connections spread evenly over the engines' HTTP ports, each POSTing `/todos` as fast as it
//! can. Afterwards `GET /todos/metrics` must count every acknowledged POST exactly once: each
//! change fires the metrics trigger once for the whole group.
//!
//! The load generator runs on `bench-load`, the coordinator (readiness checks, CPU readings) on
//! the main runtime with one control worker per engine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use serde_json::{json, Value};
use trine_sdk::Worker;

use crate::engine::{cpu_time_of, thread_cpu_by_name, EngineProcess, EngineSpec};
use crate::histogram::Histogram;
use crate::http_client::JsonConn;
use crate::load::{self, Measurement};
use crate::redis_state::RedisDataSet;
use crate::report::latency;
use crate::scenarios::{
    engine_cpu_per_request, on_client_runtime, report_errors, worker_options, Settings,
    WorkerThread,
};
use crate::streams::todo_app;

/// How long the group gets to settle (roles, trigger registrations, routes) and the metrics
/// counter to catch up after a run.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const METRICS_TIMEOUT: Duration = Duration::from_secs(10);
/// Lease TTL of the data set: short, as in the group tests (the default is 10 s).
const LEASE_TTL_MS: u64 = 2000;

/// Settings of `group-http`.
#[derive(Clone, Debug)]
pub struct GroupSettings {
    /// Group sizes, one run each.
    pub engines: Vec<usize>,
    /// The Redis server the groups share.
    pub redis_url: String,
}

/// Every engine's config: state and streams on the data set, HTTP on.
fn group_config(url: &str, prefix: &str) -> String {
    let adapter = format!(
        "{{name: redis, config: {{redis_url: {url:?}, key_prefix: {prefix:?}, lease_ttl_ms: {LEASE_TTL_MS}}}}}"
    );
    format!(
        "workers:
  - name: iii-state
    config:
      adapter: {adapter}
  - name: iii-stream
    config:
      port: 0
      adapter: {adapter}
  - name: iii-http
    config:
      port: 0
"
    )
}

/// `GET /todos/metrics` total after a run, against the acknowledged POSTs so far.
struct MetricsCheck {
    expected: u64,
    seen: Option<u64>,
    /// From the end of the load to the total matching (or to giving up).
    waited: Duration,
}

impl MetricsCheck {
    fn matched(&self) -> bool {
        self.seen == Some(self.expected)
    }

    fn describe(&self) -> String {
        match self.seen {
            Some(s) if s == self.expected => {
                format!(
                    "{s} = acknowledged ✓ ({:.1} s after the load)",
                    self.waited.as_secs_f64()
                )
            }
            Some(s) => format!(
                "{s} ≠ {} acknowledged ✗ (after {:.1} s)",
                self.expected,
                self.waited.as_secs_f64()
            ),
            None => format!("unreadable ✗ ({} acknowledged)", self.expected),
        }
    }
}

/// One closed-loop run on a group.
struct GroupRun {
    engines: usize,
    concurrency: usize,
    m: Measurement,
    /// Latency of the POSTs sent to each engine (measured window).
    per_engine: Vec<Histogram>,
    /// Acknowledged POSTs of this run, warm-up included.
    acked: u64,
    metrics: MetricsCheck,
    /// CPU per POST of the run (warm-up and the trigger backlog included).
    engine_cpu: Vec<Option<Duration>>,
    workers_cpu: Option<Duration>,
    load_cpu: Option<Duration>,
    redis_cpu: Option<Duration>,
    /// Cores used by all of them together, over the run's wall time.
    cores_used: Option<f64>,
}

/// Runs `group-http` for every group size.
pub async fn group_http(
    settings: &Settings,
    gs: &GroupSettings,
    spec: &EngineSpec,
) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for &n in &gs.engines {
        runs.extend(group_run(settings, gs, spec, n).await?);
    }
    print_summary(&runs);
    Ok(())
}

/// Sum of the CPU time of this process's threads named `name` (only live threads count: read it
/// while they run).
fn threads_cpu(name: &str) -> Duration {
    thread_cpu_by_name(std::process::id())
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, d)| d)
        .sum()
}

fn http_authority(engine: &EngineProcess) -> String {
    engine
        .http_url
        .strip_prefix("http://")
        .unwrap_or(&engine.http_url)
        .trim_end_matches('/')
        .to_owned()
}

async fn until(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let outcome = check().await;
        match outcome {
            Ok(true) => return Ok(()),
            Ok(false) if Instant::now() > deadline => bail!("timed out waiting for {what}"),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("timed out waiting for {what}")))
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn call(w: &Worker, function: &str) -> anyhow::Result<Value> {
    w.call(function, json!({}))
        .await
        .with_context(|| function.to_owned())
}

/// `total` of `GET /todos/metrics` (0 before the first todo).
async fn metrics_total(authority: &str) -> anyhow::Result<u64> {
    let mut c = JsonConn::open(authority).await?;
    let (status, body) = c.get("/todos/metrics").await?;
    if !status.is_success() {
        bail!(
            "GET /todos/metrics: status {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let v: Value = serde_json::from_slice(&body).context("GET /todos/metrics body")?;
    Ok(v["total"].as_u64().unwrap_or(0))
}

/// Polls the metrics until they count `expected` todos (a total past it never comes back down).
async fn wait_metrics(authority: &str, expected: u64) -> MetricsCheck {
    let started = Instant::now();
    let mut seen = None;
    while started.elapsed() < METRICS_TIMEOUT {
        if let Ok(total) = metrics_total(authority).await {
            seen = Some(total);
            if total >= expected {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    MetricsCheck {
        expected,
        seen,
        waited: started.elapsed(),
    }
}

/// One POST /todos on a fresh connection: whether it was acknowledged.
async fn post_todo(authority: &str, title: &str) -> anyhow::Result<bool> {
    let mut c = JsonConn::open(authority).await?;
    let (status, _) = c
        .post("/todos", Bytes::from(json!({"title": title}).to_string()))
        .await?;
    Ok(status.is_success())
}

/// A group of `n` engines: set up, every concurrency level run, torn down.
async fn group_run(
    settings: &Settings,
    gs: &GroupSettings,
    spec: &EngineSpec,
    n: usize,
) -> anyhow::Result<Vec<GroupRun>> {
    let prefix = format!("trine-bench-group-{}-{n}", std::process::id());
    // Declared first: dropped last, once the engines are gone.
    let mut data_set =
        RedisDataSet::with_config(&spec.base_dir, &gs.redis_url, prefix, group_config)?;
    let flushed = data_set.delete_keys()?;
    let mut group_spec = spec.clone();
    group_spec
        .extra_args
        .insert(0, format!("--config={}", data_set.config_path().display()));
    group_spec
        .extra_args
        .push(format!("--cluster-redis-url={}", gs.redis_url));
    // One after the other: each is ready (and the first holds the lease) before the next starts.
    let mut engines = Vec::with_capacity(n);
    for _ in 0..n {
        engines.push(EngineProcess::start(group_spec.clone())?);
    }
    let redis_pid = data_set.server().local_pid();

    let runs = {
        let mut ctl = Vec::with_capacity(n);
        for e in &engines {
            ctl.push(Worker::connect(&e.worker_url, worker_options()).await?);
        }
        for (i, w) in ctl.iter().enumerate() {
            let info = call(w, "engine::cluster::info").await?;
            if (info["owner"] == json!(true)) != (i == 0) {
                bail!("engine {} of {n}: unexpected role (the first engine started must own the data set): {info}", i + 1);
            }
        }
        let mut apps = Vec::with_capacity(n);
        for e in &engines {
            apps.push(WorkerThread::start(&e.worker_url, settings.worker_threads, todo_app).await?);
        }
        let authorities: Vec<String> = engines.iter().map(http_authority).collect();
        let probes = settle(&ctl, &authorities).await?;
        let mut acked = probes;

        let mut runs = Vec::new();
        for &c in &settings.concurrency {
            let run = closed_loop(settings, &engines, &authorities, redis_pid, c, acked).await?;
            acked = run.metrics.expected;
            report_errors(&format!("group-http n={n}"), &run.m);
            runs.push(run);
        }
        for w in &ctl {
            w.shutdown().await;
        }
        drop(apps);
        print_group(n, &data_set, flushed, probes, &runs);
        runs
    };

    // Non-owners first, so that none takes the lease over; a clean stop releases it.
    for e in engines.iter_mut().rev() {
        if let Err(e) = e.terminate(Duration::from_secs(10)) {
            eprintln!("warning: {e:#}");
        }
    }
    drop(engines);
    match data_set.cleanup() {
        Ok(k) => println!(
            "- deleted the run's {k} Redis keys ({}:*)",
            data_set.prefix()
        ),
        Err(e) => eprintln!("warning: {e:#}"),
    }
    Ok(runs)
}

/// Waits until the group serves the app everywhere: the owner holds the two logical state
/// triggers, every engine knows the other replicas, `POST /todos` and `GET /todos/metrics`
/// answer on every engine, and the metrics count the probes. Returns the acknowledged probes.
async fn settle(ctl: &[Worker], authorities: &[String]) -> anyhow::Result<u64> {
    let n = ctl.len();
    until(
        "the todo app's two state triggers at the owner",
        READY_TIMEOUT,
        async || {
            let stats = call(&ctl[0], "engine::state::stats").await?;
            Ok(stats["triggers"].as_u64().unwrap_or(0) >= 2)
        },
    )
    .await?;
    for (i, w) in ctl.iter().enumerate() {
        until(
            &format!("engine {} to see the {} other replicas", i + 1, n - 1),
            READY_TIMEOUT,
            async || {
                let info = call(w, "engine::cluster::info").await?;
                let peers = info["peers"].as_array().cloned().unwrap_or_default();
                let replicas = peers
                    .iter()
                    .filter(|p| {
                        p["functions"]
                            .as_array()
                            .is_some_and(|f| f.contains(&json!("todos::update-metrics")))
                    })
                    .count();
                if replicas != n - 1 {
                    // Retried until the deadline; the last one is the timeout's cause.
                    bail!("its peers: {}", info["peers"]);
                }
                Ok(true)
            },
        )
        .await?;
    }
    let mut probes = 0u64;
    for (i, auth) in authorities.iter().enumerate() {
        let title = format!("probe-{}", i + 1);
        until(
            &format!("POST /todos on engine {}", i + 1),
            READY_TIMEOUT,
            async || {
                let ok = post_todo(auth, &title).await?;
                probes += u64::from(ok);
                Ok(ok)
            },
        )
        .await?;
        until(
            &format!("GET /todos/metrics on engine {}", i + 1),
            READY_TIMEOUT,
            async || Ok(metrics_total(auth).await.is_ok()),
        )
        .await?;
    }
    let check = wait_metrics(&authorities[0], probes).await;
    if !check.matched() {
        bail!(
            "the metrics trigger did not count the {probes} probe POSTs: {}",
            check.describe()
        );
    }
    Ok(probes)
}

/// `c` keep-alive connections (connection i on engine i mod N) POSTing `/todos` in a closed
/// loop; then the metrics check against `acked_before` + this run's acknowledged POSTs.
async fn closed_loop(
    settings: &Settings,
    engines: &[EngineProcess],
    authorities: &[String],
    redis_pid: Option<u32>,
    c: usize,
    acked_before: u64,
) -> anyhow::Result<GroupRun> {
    let n = engines.len();
    let cpu = |pid: Option<u32>| pid.and_then(|p| cpu_time_of(&format!("/proc/{p}/stat")));
    let engine_before: Vec<_> = engines.iter().map(EngineProcess::cpu_time).collect();
    let workers_before = threads_cpu("bench-worker");
    let redis_before = cpu(redis_pid);
    let wall = Instant::now();

    let auths = authorities.to_vec();
    let (warmup, duration) = (settings.warmup, settings.duration);
    let (m, per_engine, acked, load_cpu) =
        on_client_runtime(settings.client_threads, move || async move {
            // All connections are open before the clock starts.
            let mut conns = Vec::with_capacity(c);
            for i in 0..c {
                conns.push(Some(JsonConn::open(&auths[i % n]).await?));
            }
            let conns = Mutex::new(conns);
            let per_engine = Arc::new(Mutex::new(vec![Histogram::default(); n]));
            let acked = Arc::new(AtomicU64::new(0));
            let load_before = threads_cpu("bench-load");
            let m = load::run(c, warmup, duration, |i, mut rec| {
                let conn = conns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_mut(i)
                    .and_then(Option::take);
                let auth = auths[i % n].clone();
                let (per_engine, acked) = (per_engine.clone(), acked.clone());
                async move {
                    let Some(mut conn) = conn else { return rec };
                    let mut k = 0u64;
                    while let Some(t0) = rec.begin() {
                        k += 1;
                        let body =
                            Bytes::from(json!({"title": format!("group-{i}-{k}")}).to_string());
                        let outcome = match conn.post("/todos", body).await {
                            Ok((status, _)) if status.is_success() => {
                                acked.fetch_add(1, Ordering::Relaxed);
                                Ok(())
                            }
                            Ok((status, body)) => Err(format!(
                                "status {status}: {}",
                                String::from_utf8_lossy(&body)
                            )),
                            Err(e) => {
                                // The connection may be dead: a fresh one (or a short pause).
                                match JsonConn::open(&auth).await {
                                    Ok(fresh) => conn = fresh,
                                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                                }
                                Err(format!("{e:#}"))
                            }
                        };
                        rec.end(t0, outcome);
                    }
                    per_engine.lock().unwrap_or_else(|e| e.into_inner())[i % n]
                        .merge(&rec.histogram);
                    rec
                }
            })
            .await;
            let load_cpu = threads_cpu("bench-load").saturating_sub(load_before);
            let per_engine = per_engine.lock().unwrap_or_else(|e| e.into_inner()).clone();
            Ok((m, per_engine, acked.load(Ordering::Relaxed), load_cpu))
        })
        .await?;

    // The triggers run behind the POSTs: their CPU counts, so read it once they caught up.
    let metrics = wait_metrics(&authorities[0], acked_before + acked).await;
    let elapsed = wall.elapsed();
    let engine_cpu: Vec<_> = engines
        .iter()
        .zip(&engine_before)
        .map(|(e, before)| engine_cpu_per_request(*before, e.cpu_time(), &m))
        .collect();
    let workers_after = threads_cpu("bench-worker");
    let workers_cpu = engine_cpu_per_request(Some(workers_before), Some(workers_after), &m);
    let redis_after = cpu(redis_pid);
    let redis_cpu = engine_cpu_per_request(redis_before, redis_after, &m);
    let load_per_post = engine_cpu_per_request(Some(Duration::ZERO), Some(load_cpu), &m);
    // All CPU of the run (engines, workers, Redis, load generator) over its wall time.
    let engines_used: Option<Duration> = engines
        .iter()
        .zip(&engine_before)
        .map(|(e, before)| e.cpu_time()?.checked_sub((*before)?))
        .sum();
    let redis_used = match (redis_before, redis_after) {
        (Some(b), Some(a)) => a.checked_sub(b),
        _ => Some(Duration::ZERO),
    };
    let cores_used = engines_used.zip(redis_used).map(|(e, r)| {
        let total = e + r + workers_after.saturating_sub(workers_before) + load_cpu;
        total.as_secs_f64() / elapsed.as_secs_f64()
    });
    Ok(GroupRun {
        engines: n,
        concurrency: c,
        m,
        per_engine,
        acked,
        metrics,
        engine_cpu,
        workers_cpu,
        load_cpu: load_per_post,
        redis_cpu,
        cores_used,
    })
}

fn us(d: Option<Duration>) -> String {
    d.map_or_else(
        || "–".into(),
        |d| format!("{:.0} µs", d.as_secs_f64() * 1e6),
    )
}

fn print_group(n: usize, data_set: &RedisDataSet, flushed: u64, probes: u64, runs: &[GroupRun]) {
    let cores = std::thread::available_parallelism().map_or(0, |c| c.get());
    println!();
    println!("### group-http: POST /todos on {n} engine(s) sharing one Redis");
    println!();
    println!("| concurrency | POSTs | POST/s | p50 | p99 | max | errors | GET /todos/metrics total | engine CPU/POST (engine 1 = owner, …) | todo workers CPU/POST | Redis CPU/POST | load generator CPU/POST | cores used (of {cores}) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|");
    for r in runs {
        let engines_cpu: Vec<String> = r
            .engine_cpu
            .iter()
            .enumerate()
            .map(|(i, d)| format!("{}: {}", i + 1, us(*d)))
            .collect();
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.concurrency,
            r.m.requests,
            r.m.per_second(),
            latency(r.m.histogram.quantile(0.5)),
            latency(r.m.histogram.quantile(0.99)),
            latency(r.m.histogram.quantile(1.0)),
            r.m.errors,
            r.metrics.describe(),
            engines_cpu.join(", "),
            us(r.workers_cpu),
            us(r.redis_cpu),
            us(r.load_cpu),
            r.cores_used
                .map_or_else(|| "–".into(), |c| format!("{c:.2}")),
        );
    }
    println!();
    for r in runs {
        let per_engine: Vec<String> = r
            .per_engine
            .iter()
            .enumerate()
            .map(|(i, h)| {
                format!(
                    "engine {}{}: {} POSTs, p50 {}, p99 {}",
                    i + 1,
                    if i == 0 { " (owner)" } else { "" },
                    h.count(),
                    latency(h.quantile(0.5)),
                    latency(h.quantile(0.99))
                )
            })
            .collect();
        println!(
            "- c={}: {} keep-alive connections spread over {n} engine(s); {}",
            r.concurrency,
            r.concurrency,
            per_engine.join("; ")
        );
        println!(
            "- c={}: {} POSTs acknowledged in all (warm-up included); CPU per POST is over the warm-up, the measured window and the trigger backlog, divided by every POST of the run",
            r.concurrency, r.acked
        );
    }
    println!(
        "- data set {}:* on {} ({flushed} leftover keys deleted before), lease TTL {LEASE_TTL_MS} ms; {probes} probe POSTs before the runs (counted in the metrics)",
        data_set.prefix(),
        data_set.server().describe()
    );
}

fn print_summary(runs: &[GroupRun]) {
    println!();
    println!("### group-http: summary");
    println!();
    println!("| engines | concurrency | POST/s | p50 | p99 | vs 1 engine | metrics match |");
    println!("|---:|---:|---:|---:|---:|---:|---|");
    for r in runs {
        let base = runs
            .iter()
            .find(|b| b.engines == 1 && b.concurrency == r.concurrency)
            .map(|b| b.m.per_second());
        let scaling = base
            .filter(|b| *b > 0.0)
            .map_or_else(|| "–".into(), |b| format!("{:.2}×", r.m.per_second() / b));
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} |",
            r.engines,
            r.concurrency,
            r.m.per_second(),
            latency(r.m.histogram.quantile(0.5)),
            latency(r.m.histogram.quantile(0.99)),
            scaling,
            if r.metrics.matched() { "yes" } else { "no" },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_puts_state_and_streams_on_the_data_set() {
        let text = group_config("redis://127.0.0.1:6379/", "trine-bench-group-1-2");
        let adapter = r#"adapter: {name: redis, config: {redis_url: "redis://127.0.0.1:6379/", key_prefix: "trine-bench-group-1-2", lease_ttl_ms: 2000}}"#;
        assert_eq!(text.matches(adapter).count(), 2, "{text}");
        assert!(text.contains("- name: iii-http"));
    }
}
