//! The stream scenarios (`trine-bench streams`, or one at a time):
//!
//! - `stream-fanout`: N WebSocket subscribers on `/stream/bench/all`, a publisher calling
//!   `stream::send` at increasing rates; deliveries/s, `seq` gaps, publish → receive latency
//!   (sampled), engine and bench CPU.
//! - `stream-idle-memory`: engine VmRSS before and after N idle subscribed clients.
//! - `stream-todo-latency`: the seed's todo app as a trine-sdk worker; open-loop `POST /todos`;
//!   POST sent → the matching `todo_changed` envelope received on `/stream/todos-live/all`.
//! - `stream-slow-consumer`: readers' latency with and without one subscriber that never reads,
//!   and how that subscriber is closed (4008).
//!
//! Every engine is fresh per scenario (per run for `stream-slow-consumer`). The subscribers run
//! on their own runtime thread (`bench-clients`), the publisher on another (`bench-pub`), the
//! todo worker on `bench-worker`; the coordinator (stats, CPU readings) on the main runtime.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use trine_sdk::{ErrorBody, Worker};

use crate::engine::{cpu_time_of, thread_cpu_by_name, EngineProcess, EngineSpec, Memory};
use crate::histogram::Histogram;
use crate::http_client::JsonConn;
use crate::report::latency;
use crate::scenarios::{on_client_runtime, worker_options, Settings, WorkerThread};
use crate::stream_client::{
    authority, connect, drain_to_close, event_payload, now_ns, padding, stalled_client, Publisher,
    RuntimeThread, StalledRead, Subscribers, Totals,
};

/// Settings of the stream scenarios.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    /// Subscribers of `stream-fanout` and `stream-idle-memory`.
    pub clients: usize,
    /// Publish rates (events/s) of the `stream-fanout` steps, in order.
    pub fanout_rates: Vec<f64>,
    /// Compact JSON bytes of each fan-out event's data.
    pub event_bytes: usize,
    /// Latency is recorded on every n-th subscriber.
    pub sample_every: usize,
    /// WebSocket handshakes in flight while connecting.
    pub connect_concurrency: usize,
    /// `POST /todos` per second (`stream-todo-latency`).
    pub todo_rate: f64,
    /// Readers of `stream-slow-consumer`.
    pub readers: usize,
    /// Events/s of `stream-slow-consumer`.
    pub slow_rate: f64,
    /// Compact JSON bytes of each `stream-slow-consumer` event's data.
    pub slow_event_bytes: usize,
    /// Extra wait after the `stream-slow-consumer` run before the stalled client reads.
    pub stalled_read_delay: Duration,
    /// Pairs of `stream-slow-consumer` runs (with, then without the stalled client).
    pub slow_repeats: usize,
}

// ---------------------------------------------------------------------------------------------
// shared helpers

/// The counters of `engine::streams::stats` the scenarios use.
#[derive(Clone, Copy, Debug, Default)]
struct StreamStats {
    clients: u64,
    subscriptions: u64,
    published: u64,
    deliveries: u64,
    slow_consumer_disconnects: u64,
}

async fn stream_stats(worker: &Worker) -> anyhow::Result<StreamStats> {
    let v = worker
        .call("engine::streams::stats", json!({}))
        .await
        .context("engine::streams::stats")?;
    let n = |f: &str| v[f].as_u64().unwrap_or(0);
    Ok(StreamStats {
        clients: n("clients"),
        subscriptions: n("subscriptions"),
        published: n("published"),
        deliveries: n("deliveries"),
        slow_consumer_disconnects: n("slow_consumer_disconnects"),
    })
}

fn stream_authority(engine: &EngineProcess) -> anyhow::Result<String> {
    let url = engine
        .stream_url
        .as_deref()
        .context("the engine's ready line has no stream_url (stream module off?)")?;
    authority(url)
}

fn self_cpu() -> Option<Duration> {
    cpu_time_of("/proc/self/stat")
}

/// Soft limit on open files of this process (the engine inherits it).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn check_fd_limit(clients: usize) {
    if let Some(limit) = open_files_limit() {
        if (clients as u64) + 200 > limit {
            eprintln!(
                "warning: {clients} clients need about {} open files in this process and in the engine; the soft limit is {limit} (ulimit -n)",
                clients + 200
            );
        }
    }
}

/// Counters at one edge of a measured window.
struct Snap {
    /// `(from, to]`: the sequence window opened at this edge.
    seq_window: Option<(u64, u64)>,
    at: Instant,
    subs: Totals,
    stats: StreamStats,
    engine_cpu: Option<Duration>,
    bench_cpu: Option<Duration>,
    engine_threads: Vec<(String, Duration)>,
    bench_threads: Vec<(String, Duration)>,
}

/// Which edge of the measured window a [`snap`] is. Opening sets the subscribers' sequence
/// window right after the engine's `published` counter is read: the window starts `margin`
/// envelopes later (20 ms of publishing, so none of its envelopes can arrive before it is set)
/// and holds `count` envelopes, fixed in advance so that envelopes after it are never counted.
enum Edge {
    Open { margin: u64, count: u64 },
    Close,
}

/// `(margin, count)` of a sequence window for `duration` of publishing at `rate`.
fn seq_window(rate: f64, duration: Duration) -> (u64, u64) {
    let margin = (rate * 0.02).ceil() as u64 + 1;
    let count = ((rate * duration.as_secs_f64()).floor() as u64).max(1);
    (margin, count)
}

/// Waits until the engine published envelope number `seq` (the window's last).
async fn wait_published(ctl: &Worker, seq: u64, timeout: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if stream_stats(ctl).await?.published >= seq {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn snap(
    ctl: &Worker,
    engine: &EngineProcess,
    subs: &Subscribers,
    edge: Edge,
) -> anyhow::Result<Snap> {
    let stats = stream_stats(ctl).await?;
    let mut window = None;
    if let Edge::Open { margin, count } = edge {
        let from = stats.published + margin;
        subs.set_seq_window(from, from + count);
        window = Some((from, from + count));
    }
    Ok(Snap {
        seq_window: window,
        at: Instant::now(),
        subs: subs.totals(),
        stats,
        engine_cpu: engine.cpu_time(),
        bench_cpu: self_cpu(),
        engine_threads: engine.pid().map(thread_cpu_by_name).unwrap_or_default(),
        bench_threads: thread_cpu_by_name(std::process::id()),
    })
}

fn cores(a: Option<Duration>, b: Option<Duration>, window: f64) -> Option<f64> {
    Some(b?.checked_sub(a?)?.as_secs_f64() / window)
}

/// Per-thread-name cores between two snapshots, busiest first, as `name 0.42`.
fn thread_cores(a: &[(String, Duration)], b: &[(String, Duration)], window: f64) -> String {
    let mut v: Vec<(String, f64)> = b
        .iter()
        .map(|(name, tb)| {
            let ta = a
                .iter()
                .find(|(n, _)| n == name)
                .map_or(Duration::ZERO, |(_, d)| *d);
            (name.clone(), tb.saturating_sub(ta).as_secs_f64() / window)
        })
        .filter(|(_, c)| *c >= 0.005)
        .collect();
    v.sort_by(|x, y| y.1.total_cmp(&x.1));
    if v.is_empty() {
        return "idle".into();
    }
    v.iter()
        .map(|(n, c)| format!("{n} {c:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn opt_cores(c: Option<f64>) -> String {
    c.map_or("–".into(), |c| format!("{c:.2}"))
}

fn kib(k: u64) -> String {
    format!("{:.1} MiB", k as f64 / 1024.0)
}

fn fmt_count(n: f64) -> String {
    // Thousands separated by a thin space, as in the rest of BENCHMARKS.md.
    let s = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 && c.is_ascii_digit() {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn codes(c: &[(u32, usize)]) -> String {
    if c.is_empty() {
        return "none".into();
    }
    c.iter()
        .map(|(code, n)| match code {
            1 => format!("{n} × no close frame"),
            code => format!("{n} × {code}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// stream-fanout

struct FanoutStep {
    rate: f64,
    window: f64,
    live: u64,
    published: u64,
    /// Envelopes read by subscribers during the window (any publish time).
    received: u64,
    /// Deliveries of the sequence window's envelopes (read within 2 s of its end).
    in_window: u64,
    /// Envelopes in the sequence window.
    window_count: u64,
    engine_deliveries: u64,
    gaps: u64,
    disorder: u64,
    cut: u64,
    ended: u64,
    latency: Histogram,
    engine_cores: Option<f64>,
    bench_cores: Option<f64>,
    engine_cpu_per_delivery: Option<Duration>,
    engine_threads: String,
    bench_threads: String,
    send_errors: u64,
}

impl FanoutStep {
    fn deliveries_per_s(&self) -> f64 {
        (self.published * self.live) as f64 / self.window
    }

    fn received_per_s(&self) -> f64 {
        self.received as f64 / self.window
    }

    /// Deliveries of the sequence window's envelopes ÷ (its envelopes × live subscribers).
    fn completeness(&self) -> f64 {
        let expected = (self.window_count * self.live) as f64;
        if expected == 0.0 {
            return 0.0;
        }
        self.in_window as f64 / expected
    }
}

/// N subscribers, a publisher at increasing rates; stops escalating once subscribers fall
/// behind, miss envelopes or are cut off.
pub async fn fanout(
    settings: &Settings,
    ss: &StreamSettings,
    spec: &EngineSpec,
) -> anyhow::Result<()> {
    let n = ss.clients.max(1);
    check_fd_limit(n);
    let engine = EngineProcess::start(spec.clone())?;
    let auth = stream_authority(&engine)?;
    let ctl = Worker::connect(&engine.worker_url, worker_options()).await?;
    let rss_idle = engine.memory();
    let clients_rt = RuntimeThread::start("bench-clients", settings.client_threads)?;
    let subs = Subscribers::new(n, ss.sample_every);
    eprintln!("stream-fanout: connecting {n} clients to /stream/bench/all …");
    subs.spawn(
        &clients_rt.handle,
        &auth,
        "/stream/bench/all",
        8 * 1024,
        ss.connect_concurrency,
    );
    let connect_time = subs
        .wait_connected("stream-fanout", Duration::from_secs(600))
        .await?;
    let connected = subs.connected.load(Ordering::Relaxed);
    let st = stream_stats(&ctl).await?;
    let publisher = Publisher::start(&engine.worker_url, "bench", "all", ss.event_bytes).await?;
    subs.wait_received(1, Duration::from_secs(60)).await?;
    let rss_connected = engine.memory();
    eprintln!(
        "stream-fanout: {connected} clients connected in {:.1} s (engine counts {} clients, {} subscriptions); a first event reached all of them",
        connect_time.as_secs_f64(),
        st.clients,
        st.subscriptions,
    );

    let mut steps: Vec<FanoutStep> = Vec::new();
    let mut stopped = None;
    for &rate in &ss.fanout_rates {
        publisher.set_rate(Some(rate));
        tokio::time::sleep(settings.warmup).await;
        let errors_before = publisher.errors.load(Ordering::Relaxed);
        let (margin, count) = seq_window(rate, settings.duration);
        let a = snap(&ctl, &engine, &subs, Edge::Open { margin, count }).await?;
        let from = now_ns();
        subs.set_window(from, from + settings.duration.as_nanos() as u64);
        tokio::time::sleep(settings.duration).await;
        let b = snap(&ctl, &engine, &subs, Edge::Close).await?;
        let window = (b.at - a.at).as_secs_f64();
        let published = b.stats.published - a.stats.published;
        let live = (connected as u64).saturating_sub(b.subs.ended);
        // The sequence window's last envelope, then its deliveries (up to 2 s after).
        let (_, last) = a.seq_window.unwrap_or_default();
        wait_published(&ctl, last, Duration::from_secs(5)).await?;
        let in_window = subs
            .wait_in_window(count * live, Duration::from_secs(2))
            .await;
        let received = b.subs.received - a.subs.received;
        let step = FanoutStep {
            rate,
            window,
            live,
            published,
            received,
            in_window,
            window_count: count,
            engine_deliveries: b.stats.deliveries - a.stats.deliveries,
            gaps: b.subs.gaps - a.subs.gaps,
            disorder: b.subs.disorder - a.subs.disorder,
            cut: b.stats.slow_consumer_disconnects - a.stats.slow_consumer_disconnects,
            ended: b.subs.ended - a.subs.ended,
            latency: subs.take_latency(),
            engine_cores: cores(a.engine_cpu, b.engine_cpu, window),
            bench_cores: cores(a.bench_cpu, b.bench_cpu, window),
            engine_cpu_per_delivery: b
                .engine_cpu
                .zip(a.engine_cpu)
                .and_then(|(y, x)| y.checked_sub(x))
                .filter(|_| received > 0)
                .map(|d| d / u32::try_from(received).unwrap_or(u32::MAX)),
            engine_threads: thread_cores(&a.engine_threads, &b.engine_threads, window),
            bench_threads: thread_cores(&a.bench_threads, &b.bench_threads, window),
            send_errors: publisher.errors.load(Ordering::Relaxed) - errors_before,
        };
        eprintln!(
            "  … {rate} events/s: {} deliveries/s, delivered {:.1} %, p99 {}",
            fmt_count(step.deliveries_per_s()),
            step.completeness() * 100.0,
            latency(step.latency.quantile(0.99))
        );
        let behind = step.completeness() < 0.999;
        let lost = step.gaps > 0 || step.cut > 0 || step.ended > 0;
        steps.push(step);
        if behind || lost {
            stopped = Some(if lost {
                "subscribers lost envelopes or were cut off"
            } else {
                "the window's envelopes had not all arrived 2 s after it ended: subscribers fell behind"
            });
            break;
        }
    }
    publisher.set_rate(None);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let end = subs.totals();
    let end_stats = stream_stats(&ctl).await?;
    let close_codes = subs.close_codes();
    let peak = engine.memory();
    let (sent, refused) = (
        publisher.sent.load(Ordering::Relaxed),
        publisher.errors.load(Ordering::Relaxed),
    );
    drop(publisher);
    ctl.shutdown().await;
    drop(clients_rt);

    println!();
    println!(
        "### stream-fanout: {connected} subscribers of /stream/bench/all, stream::send of ~{} B events, store in_memory",
        ss.event_bytes
    );
    println!();
    println!("| events/s (target) | events published/s | deliveries/s (published × clients) | received/s at clients | delivered within 2 s | gaps | slow-consumer cut-offs | latency p50 | p99 | max | engine cores | engine CPU/delivery | bench cores |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in &steps {
        println!(
            "| {} | {:.1} | {} | {} | {:.1} % | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.rate,
            s.published as f64 / s.window,
            fmt_count(s.deliveries_per_s()),
            fmt_count(s.received_per_s()),
            s.completeness() * 100.0,
            s.gaps,
            s.cut,
            latency(s.latency.quantile(0.5)),
            latency(s.latency.quantile(0.99)),
            latency(s.latency.quantile(1.0)),
            opt_cores(s.engine_cores),
            s.engine_cpu_per_delivery
                .map_or("–".into(), |d| format!("{:.2} µs", d.as_secs_f64() * 1e6)),
            opt_cores(s.bench_cores),
        );
    }
    println!();
    println!(
        "- connect: {connected} clients in {:.1} s ({:.0} handshakes/s, {} in flight at most); engine VmRSS {} idle → {} with the clients connected; peak (VmHWM) {}, {} 1 s after the last step",
        connect_time.as_secs_f64(),
        connected as f64 / connect_time.as_secs_f64(),
        ss.connect_concurrency,
        rss_idle.map_or("–".into(), |m| kib(m.rss_kib)),
        rss_connected.map_or("–".into(), |m| kib(m.rss_kib)),
        peak.map_or("–".into(), |m| kib(m.hwm_kib)),
        peak.map_or("–".into(), |m| kib(m.rss_kib)),
    );
    println!(
        "- latency: publish (`call_void` of stream::send) → envelope read by the subscriber, sampled on {} of {connected} subscribers (1 in {}), events published inside the window",
        subs.sampled(),
        ss.sample_every
    );
    for s in &steps {
        println!(
            "- {} events/s: engine threads (cores): {}; bench threads: {}; engine-counted queue pushes {}/s; {} latency samples{}{}",
            s.rate,
            s.engine_threads,
            s.bench_threads,
            fmt_count(s.engine_deliveries as f64 / s.window),
            s.latency.count(),
            if s.disorder > 0 {
                format!("; {} out-of-order envelopes", s.disorder)
            } else {
                String::new()
            },
            if s.send_errors > 0 {
                format!("; {} publish calls refused by the SDK queue", s.send_errors)
            } else {
                String::new()
            },
        );
    }
    if let Some(why) = stopped {
        println!("- stopped raising the rate: {why}");
    }
    let best = steps
        .iter()
        .filter(|s| s.gaps == 0 && s.cut == 0 && s.completeness() >= 0.999)
        .map(FanoutStep::deliveries_per_s)
        .fold(0.0, f64::max);
    println!(
        "- whole run: {} events sent by the publisher ({refused} refused by its SDK queue), {} published by the engine; {} envelopes received, {} gaps, {} slow-consumer cut-offs (engine), subscriber connections ended: {}",
        fmt_count(sent as f64),
        fmt_count(end_stats.published as f64),
        fmt_count(end.received as f64),
        end.gaps,
        end_stats.slow_consumer_disconnects,
        codes(&close_codes)
    );
    println!(
        "- best step with every envelope delivered: {} deliveries/s (target ≥ 250 000)",
        fmt_count(best)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// stream-idle-memory

/// Engine VmRSS before and after N idle subscribed clients.
pub async fn idle_memory(
    settings: &Settings,
    ss: &StreamSettings,
    spec: &EngineSpec,
) -> anyhow::Result<()> {
    let n = ss.clients.max(1);
    check_fd_limit(n);
    let engine = EngineProcess::start(spec.clone())?;
    let auth = stream_authority(&engine)?;
    let ctl = Worker::connect(&engine.worker_url, worker_options()).await?;
    stream_stats(&ctl).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = engine.memory();

    let clients_rt = RuntimeThread::start("bench-clients", settings.client_threads)?;
    let subs = Subscribers::new(n, n);
    eprintln!("stream-idle-memory: connecting {n} clients to /stream/bench/idle …");
    subs.spawn(
        &clients_rt.handle,
        &auth,
        "/stream/bench/idle",
        4 * 1024,
        ss.connect_concurrency,
    );
    let connect_time = subs
        .wait_connected("stream-idle-memory", Duration::from_secs(600))
        .await?;
    let connected = subs.connected.load(Ordering::Relaxed) as u64;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Engine CPU while the clients sit idle (the connections' own timers).
    let (cpu_a, wall_a) = (engine.cpu_time(), Instant::now());
    let threads_a = engine.pid().map(thread_cpu_by_name).unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_window = wall_a.elapsed().as_secs_f64();
    let idle_cores = cores(cpu_a, engine.cpu_time(), idle_window);
    let idle_threads = thread_cores(
        &threads_a,
        &engine.pid().map(thread_cpu_by_name).unwrap_or_default(),
        idle_window,
    );
    let idle = engine.memory();
    let st_idle = stream_stats(&ctl).await?;

    // One event to every client: the write path's buffers are now touched once.
    ctl.call(
        "stream::send",
        event_payload("bench", "idle", &padding(ss.event_bytes)),
    )
    .await
    .context("stream::send")?;
    subs.wait_received(1, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_event = engine.memory();

    drop(clients_rt);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_close = engine.memory();
    let st_close = stream_stats(&ctl).await?;

    // The same number of clients again: does the engine reuse what the first round freed?
    let clients_rt = RuntimeThread::start("bench-clients", settings.client_threads)?;
    let again = Subscribers::new(n, n);
    again.spawn(
        &clients_rt.handle,
        &auth,
        "/stream/bench/idle",
        4 * 1024,
        ss.connect_concurrency,
    );
    again
        .wait_connected(
            "stream-idle-memory (second round)",
            Duration::from_secs(600),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second_round = engine.memory();
    drop(clients_rt);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_second = engine.memory();
    ctl.shutdown().await;

    let per_client = |m: Option<Memory>| -> String {
        match (before, m) {
            (Some(b), Some(m)) if connected > 0 => {
                let k = m.rss_kib.saturating_sub(b.rss_kib) as f64 / connected as f64;
                format!("{k:.1} KiB ({:.1} KB)", k * 1.024)
            }
            _ => "–".into(),
        }
    };
    println!();
    println!(
        "### stream-idle-memory: {connected} idle clients subscribed to /stream/bench/idle, store in_memory"
    );
    println!();
    println!("| engine state | VmRSS | growth over the idle engine | per client |");
    println!("|---|---:|---:|---:|");
    let row = |what: &str, m: Option<Memory>| {
        let growth = match (before, m) {
            (Some(b), Some(m)) => kib(m.rss_kib.saturating_sub(b.rss_kib)),
            _ => "–".into(),
        };
        println!(
            "| {what} | {} | {growth} | {} |",
            m.map_or("–".into(), |m| kib(m.rss_kib)),
            if what.starts_with("no stream")
                || what.starts_with("after all")
                || what.starts_with("again")
            {
                "–".into()
            } else {
                per_client(m)
            }
        );
    };
    row("no stream clients (one worker connected)", before);
    row(
        &format!("{connected} clients connected and subscribed, idle 4 s"),
        idle,
    );
    row(
        "after one ~100 B event delivered to each, 1 s later",
        after_event,
    );
    row("after all clients disconnected, 2 s later", after_close);
    row(
        &format!("again {connected} clients connected (second round), idle 2 s"),
        second_round,
    );
    row(
        "after all clients disconnected again, 2 s later",
        after_second,
    );
    println!();
    println!(
        "- connected in {:.1} s; engine counted {} clients / {} subscriptions while connected, {} clients after they left; VmHWM {}",
        connect_time.as_secs_f64(),
        st_idle.clients,
        st_idle.subscriptions,
        st_close.clients,
        after_close.map_or("–".into(), |m| kib(m.hwm_kib)),
    );
    println!(
        "- engine CPU with {connected} idle clients: {} cores over {idle_window:.1} s ({idle_threads})",
        opt_cores(idle_cores)
    );
    println!(
        "- per idle subscribed client: {} (target ≤ 20 KB); after one delivery each: {}",
        per_client(idle),
        per_client(after_event)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// stream-todo-latency

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `2026-11-30T18:46:01.123Z` (JavaScript's `toISOString`) for milliseconds since the epoch.
fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian; eras of 400 years).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

fn sdk_error(e: trine_sdk::Error) -> ErrorBody {
    ErrorBody::new("invocation_failed", e.to_string())
}

/// Suffix of the todo ids, shared by every copy of the app in this process: replicas of the app
/// on several engines of a group (`group-http`) write to one data set, so a per-worker counter
/// would give two todos the same id in the same millisecond.
static TODO_IDS: AtomicU64 = AtomicU64::new(0);

/// The seed's todo app (examples/todo-node-0.9.0/app.js) on a trine-sdk worker: the same
/// functions, triggers and payloads. Differences: todo ids get a counter suffix
/// (`todo-<ms>-<n>`, `n` unique in this process; the seed's `todo-<ms>` collides at 500
/// creates/s), and the on-change handler's `Logger` line is not reproduced (the Rust SDK has no
/// log API).
pub(crate) fn todo_app(w: &Worker) {
    // POST /todos {title}
    let worker = w.clone();
    w.register_function("todos::create", move |req: Value| {
        let worker = worker.clone();
        let n = TODO_IDS.fetch_add(1, Ordering::Relaxed);
        async move {
            let ms = now_ms();
            let id = format!("todo-{ms}-{n}");
            let todo = json!({
                "_key": id, "id": id, "title": req.get("title").cloned().unwrap_or(Value::Null),
                "completed": false, "created_at": iso8601(ms),
            });
            worker
                .call(
                    "state::set",
                    json!({"scope": "todos", "key": id, "value": todo}),
                )
                .await
                .map_err(sdk_error)?;
            Ok::<_, ErrorBody>(todo)
        }
    });
    // POST /todos/toggle {id}
    let worker = w.clone();
    w.register_function("todos::toggle", move |req: Value| {
        let worker = worker.clone();
        async move {
            let id = req.get("id").cloned().unwrap_or(Value::Null);
            let current = worker
                .call("state::get", json!({"scope": "todos", "key": id}))
                .await
                .map_err(sdk_error)?;
            if current.is_null() {
                let shown = id.as_str().map_or_else(|| id.to_string(), str::to_owned);
                return Err(ErrorBody::new("Error", format!("Todo {shown} not found")));
            }
            let completed = !current["completed"].as_bool().unwrap_or(false);
            worker
                .call(
                    "state::update",
                    json!({"scope": "todos", "key": id, "ops": [
                        {"type": "set", "path": "completed", "value": completed},
                        {"type": "set", "path": "updated_at", "value": iso8601(now_ms())},
                    ]}),
                )
                .await
                .map_err(sdk_error)?;
            Ok(json!({"id": id, "completed": completed}))
        }
    });
    // GET /todos
    let worker = w.clone();
    w.register_function("todos::list", move |_req: Value| {
        let worker = worker.clone();
        async move {
            worker
                .call("state::list", json!({"scope": "todos"}))
                .await
                .map_err(sdk_error)
        }
    });
    // POST /todos/delete {id}
    let worker = w.clone();
    w.register_function("todos::delete", move |req: Value| {
        let worker = worker.clone();
        async move {
            let id = req.get("id").cloned().unwrap_or(Value::Null);
            worker
                .call("state::delete", json!({"scope": "todos", "key": id}))
                .await
                .map_err(sdk_error)?;
            Ok::<_, ErrorBody>(json!({"deleted": id}))
        }
    });
    let route = |function: &str, path: &str, method: &str| {
        w.register_trigger(
            "http",
            function,
            json!({"api_path": path, "http_method": method}),
        );
    };
    route("todos::create", "/todos", "POST");
    route("todos::list", "/todos", "GET");
    route("todos::toggle", "/todos/toggle", "POST");
    route("todos::delete", "/todos/delete", "POST");

    // Reaction 1: broadcast every change of `todos` to stream clients (fire and forget).
    let worker = w.clone();
    w.register_function("todos::on-change", move |event: Value| {
        let worker = worker.clone();
        async move {
            let (new_value, old_value) = (&event["new_value"], &event["old_value"]);
            let key = event.get("key").cloned().unwrap_or(Value::Null);
            let action = if old_value.is_null() {
                "created"
            } else if new_value.is_null() {
                "deleted"
            } else {
                "updated"
            };
            // Like the seed's void trigger: nothing comes back, errors are not seen here.
            let _ = worker.call_void(
                "stream::send",
                json!({
                    "stream_name": "todos-live",
                    "group_id": "all",
                    "id": format!("change-{}", now_ms()),
                    "event_type": "todo_changed",
                    "data": {"action": action, "key": key, "todo": new_value},
                }),
            );
            Ok::<_, ErrorBody>(json!({"action": action, "key": key}))
        }
    });
    w.register_trigger("state", "todos::on-change", json!({"scope": "todos"}));

    // Reaction 2: aggregate counters in `todo-metrics`.
    let worker = w.clone();
    w.register_function("todos::update-metrics", move |event: Value| {
        let worker = worker.clone();
        async move {
            let (new_value, old_value) = (&event["new_value"], &event["old_value"]);
            let completed = |v: &Value| v["completed"].as_bool().unwrap_or(false);
            let mut ops = Vec::new();
            if !new_value.is_null() && old_value.is_null() {
                ops.push(json!({"type": "increment", "path": "total", "by": 1}));
            } else if !old_value.is_null() && new_value.is_null() {
                ops.push(json!({"type": "increment", "path": "total", "by": -1}));
                if completed(old_value) {
                    ops.push(json!({"type": "increment", "path": "completed", "by": -1}));
                }
            } else if !new_value.is_null()
                && !old_value.is_null()
                && completed(new_value) != completed(old_value)
            {
                let by = if completed(new_value) { 1 } else { -1 };
                ops.push(json!({"type": "increment", "path": "completed", "by": by}));
            }
            if !ops.is_empty() {
                worker
                    .call(
                        "state::update",
                        json!({"scope": "todo-metrics", "key": "global", "ops": ops}),
                    )
                    .await
                    .map_err(sdk_error)?;
            }
            Ok::<_, ErrorBody>(Value::Null)
        }
    });
    w.register_trigger("state", "todos::update-metrics", json!({"scope": "todos"}));

    // GET /todos/metrics
    let worker = w.clone();
    w.register_function("todos::get-metrics", move |_req: Value| {
        let worker = worker.clone();
        async move {
            worker
                .call(
                    "state::get",
                    json!({"scope": "todo-metrics", "key": "global"}),
                )
                .await
                .map_err(sdk_error)
        }
    });
    route("todos::get-metrics", "/todos/metrics", "GET");
}

/// The title inside a `todo_changed` envelope.
fn todo_title(env: &Value) -> Option<&str> {
    let ev = &env["event"]["event"];
    (ev["type"] == "todo_changed").then_some(())?;
    ev["data"]["todo"]["title"].as_str()
}

const TODO_PREFIX: &str = "bench-todo-";

struct TodoRun {
    total: u64,
    measured: u64,
    latency: Histogram,
    missing: u64,
    duplicates: u64,
    http: Histogram,
    http_errors: u64,
    first_http_error: Option<String>,
    send_lag: Histogram,
    connections: usize,
    metrics: Value,
    probes: u64,
}

/// Open-loop `POST /todos`; POST sent → matching `todo_changed` received.
pub async fn todo_latency(
    settings: &Settings,
    ss: &StreamSettings,
    spec: &EngineSpec,
) -> anyhow::Result<()> {
    let engine = EngineProcess::start(spec.clone())?;
    crate::state::print_storage(&engine);
    let stream_auth = stream_authority(&engine)?;
    let http_auth = engine
        .http_url
        .strip_prefix("http://")
        .unwrap_or(&engine.http_url)
        .trim_end_matches('/')
        .to_owned();
    let _app = WorkerThread::start(&engine.worker_url, settings.worker_threads, todo_app).await?;
    let rate = ss.todo_rate.max(1.0);
    let total = (rate * (settings.warmup + settings.duration).as_secs_f64()).ceil() as u64;
    let first_measured = (rate * settings.warmup.as_secs_f64()).ceil() as u64;
    let cpu_before = engine.cpu_time();
    let wall = Instant::now();

    let run = on_client_runtime(settings.client_threads, move || async move {
        // The triggers register asynchronously: POST probes until one comes back on the stream.
        let mut ws = connect(&stream_auth, "/stream/todos-live/all", 64 * 1024).await?;
        let mut conn = JsonConn::open(&http_auth).await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut probes = 0u64;
        'probe: loop {
            if Instant::now() > deadline {
                bail!("no todo_changed event arrived within 20 s of POST /todos");
            }
            probes += 1;
            let title = format!("probe-{probes}");
            let (status, _) = conn
                .post("/todos", Bytes::from(json!({"title": title}).to_string()))
                .await?;
            if !status.is_success() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let until = Instant::now() + Duration::from_millis(500);
            while let Ok(Some(msg)) = tokio::time::timeout_at(until.into(), ws.next()).await {
                if let Message::Text(t) = msg? {
                    let v: Value = serde_json::from_str(t.as_str())?;
                    if todo_title(&v) == Some(title.as_str()) {
                        break 'probe;
                    }
                }
            }
        }

        let sent_ns: Arc<Vec<AtomicU64>> =
            Arc::new((0..total).map(|_| AtomicU64::new(u64::MAX)).collect());
        let recv_ns: Arc<Vec<AtomicU64>> =
            Arc::new((0..total).map(|_| AtomicU64::new(u64::MAX)).collect());
        // The reader: receive time per todo number; duplicates counted.
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let recv = recv_ns.clone();
        let reader = tokio::spawn(async move {
            let mut duplicates = 0u64;
            loop {
                let msg = tokio::select! {
                    _ = &mut stop_rx => break,
                    m = ws.next() => m,
                };
                let Some(Ok(msg)) = msg else { break };
                let Message::Text(t) = msg else { continue };
                let at = now_ns();
                let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                    continue;
                };
                let Some(slot) = todo_title(&v)
                    .and_then(|t| t.strip_prefix(TODO_PREFIX))
                    .and_then(|n| n.parse::<usize>().ok())
                    .and_then(|n| recv.get(n))
                else {
                    continue;
                };
                if slot.load(Ordering::Relaxed) == u64::MAX {
                    slot.store(at, Ordering::Relaxed);
                } else {
                    duplicates += 1;
                }
            }
            duplicates
        });

        // Open loop: one POST per period, each on a pooled keep-alive connection.
        let pool: Arc<Mutex<Vec<JsonConn>>> = Arc::new(Mutex::new(vec![conn]));
        for _ in 0..7 {
            let c = JsonConn::open(&http_auth).await?;
            pool.lock().unwrap_or_else(|e| e.into_inner()).push(c);
        }
        let opened = Arc::new(AtomicU64::new(8));
        let results = Arc::new(Mutex::new((Histogram::default(), 0u64, None::<String>)));
        let mut send_lag = Histogram::default();
        let period = Duration::from_secs_f64(1.0 / rate);
        let start = tokio::time::Instant::now() + Duration::from_millis(10);
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..total {
            let at = start + period.mul_f64(n as f64);
            tokio::time::sleep_until(at).await;
            if n >= first_measured {
                send_lag.record(tokio::time::Instant::now().saturating_duration_since(at));
            }
            let (pool, results, sent_ns, opened) = (
                pool.clone(),
                results.clone(),
                sent_ns.clone(),
                opened.clone(),
            );
            let auth = http_auth.clone();
            tasks.spawn(async move {
                let popped = pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let conn = match popped {
                    Some(c) => Ok(c),
                    None => {
                        opened.fetch_add(1, Ordering::Relaxed);
                        JsonConn::open(&auth).await
                    }
                };
                let body = Bytes::from(json!({"title": format!("{TODO_PREFIX}{n}")}).to_string());
                sent_ns[n as usize].store(now_ns(), Ordering::Relaxed);
                let t0 = Instant::now();
                let outcome = match conn {
                    Ok(mut c) => match c.post("/todos", body).await {
                        Ok((status, _)) if status.is_success() => {
                            pool.lock().unwrap_or_else(|e| e.into_inner()).push(c);
                            Ok(())
                        }
                        Ok((status, body)) => {
                            pool.lock().unwrap_or_else(|e| e.into_inner()).push(c);
                            Err(format!(
                                "status {status}: {}",
                                String::from_utf8_lossy(&body)
                            ))
                        }
                        Err(e) => Err(format!("{e:#}")),
                    },
                    Err(e) => Err(format!("{e:#}")),
                };
                if n >= first_measured {
                    let mut r = results.lock().unwrap_or_else(|e| e.into_inner());
                    match outcome {
                        Ok(()) => r.0.record(t0.elapsed()),
                        Err(e) => {
                            r.1 += 1;
                            r.2.get_or_insert(e);
                        }
                    }
                }
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}

        // Give the last events a moment (up to 5 s).
        let missing_now = || {
            (first_measured..total)
                .filter(|&n| recv_ns[n as usize].load(Ordering::Relaxed) == u64::MAX)
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while missing_now() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = stop_tx.send(());
        let duplicates = reader.await?;

        let mut lat = Histogram::default();
        let mut missing = 0u64;
        for n in first_measured..total {
            let (s, r) = (
                sent_ns[n as usize].load(Ordering::Relaxed),
                recv_ns[n as usize].load(Ordering::Relaxed),
            );
            if s == u64::MAX || r == u64::MAX {
                missing += 1;
            } else {
                lat.record(Duration::from_nanos(r.saturating_sub(s)));
            }
        }
        let metrics = {
            let mut c = JsonConn::open(&http_auth).await?;
            let (_, body) = c.get("/todos/metrics").await?;
            serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null)
        };
        let (http, http_errors, first_http_error) =
            results.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(TodoRun {
            total,
            measured: total - first_measured,
            latency: lat,
            missing,
            duplicates,
            http,
            http_errors,
            first_http_error,
            send_lag,
            connections: opened.load(Ordering::Relaxed) as usize,
            metrics,
            probes,
        })
    })
    .await?;
    let engine_cores = cores(cpu_before, engine.cpu_time(), wall.elapsed().as_secs_f64());

    println!();
    println!(
        "### stream-todo-latency: the seed's todo app on a trine-sdk worker, POST /todos at {rate:.0}/s (open loop) → todo_changed on /stream/todos-live/all"
    );
    println!();
    println!("| measured POSTs | events matched | missing | duplicates | p50 | p99 | max | POST response p50 | POST p99 | HTTP errors | send lag p99 | engine cores |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        run.measured,
        run.latency.count(),
        run.missing,
        run.duplicates,
        latency(run.latency.quantile(0.5)),
        latency(run.latency.quantile(0.99)),
        latency(run.latency.quantile(1.0)),
        latency(run.http.quantile(0.5)),
        latency(run.http.quantile(0.99)),
        run.http_errors,
        latency(run.send_lag.quantile(0.99)),
        opt_cores(engine_cores),
    );
    println!();
    println!(
        "- POST sent → matching todo_changed read by the WebSocket client: p50 {} (target ≤ 1 ms), p99 {} (target ≤ 10 ms), max {}",
        latency(run.latency.quantile(0.5)),
        latency(run.latency.quantile(0.99)),
        latency(run.latency.quantile(1.0)),
    );
    println!(
        "- {} POSTs in all ({} warm-up, {} probes before), {} keep-alive connections; GET /todos/metrics after the run: {}",
        run.total,
        run.total - run.measured,
        run.probes,
        run.connections,
        run.metrics
    );
    if let Some(e) = &run.first_http_error {
        eprintln!(
            "warning: stream-todo-latency: {} failed POSTs (first: {e})",
            run.http_errors
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// stream-slow-consumer

struct SlowRun {
    stalled: bool,
    readers: usize,
    window: f64,
    published: u64,
    received: u64,
    /// Deliveries of the sequence window's envelopes to the readers.
    in_window: u64,
    window_count: u64,
    /// Reader latency over the whole window, and its two parts split at `split`.
    latency: Histogram,
    before: Histogram,
    after: Histogram,
    /// From the window start to the split (the cut-off, or the paired run's cut-off).
    split: Option<Duration>,
    gaps: u64,
    readers_cut: u64,
    reader_closes: Vec<(u32, usize)>,
    slow_cut_offs: u64,
    /// From the stalled client's connect (the window start) to the engine counting the cut-off.
    cut_after: Option<Duration>,
    /// The stalled client's socket, read after the run.
    stalled_read: Option<StalledRead>,
    /// From the cut-off to the stalled client starting to read.
    read_after_cut: Option<Duration>,
    engine_cores: Option<f64>,
    bench_cores: Option<f64>,
    engine_rss_end: Option<Memory>,
    send_errors: u64,
    /// Engine-side stream connections and their send-queue bytes just before the stalled client
    /// read its socket.
    stalled_conns: Option<(usize, u64)>,
    /// Worst reader latency per 100 ms of the window.
    timeline: Vec<Duration>,
}

/// One run: readers connect, publishing starts, warm-up; at the window start the stalled client
/// (if any) connects; the window's reader latency is split at the cut-off (or at `split_at`).
async fn slow_run(
    settings: &Settings,
    ss: &StreamSettings,
    spec: &EngineSpec,
    stalled: bool,
    split_at: Option<Duration>,
) -> anyhow::Result<SlowRun> {
    let engine = EngineProcess::start(spec.clone())?;
    let auth = stream_authority(&engine)?;
    let ctl = Worker::connect(&engine.worker_url, worker_options()).await?;
    let clients_rt = RuntimeThread::start("bench-clients", settings.client_threads)?;
    let readers = ss.readers.max(1);
    let subs = Subscribers::new(readers, 1);
    subs.spawn(
        &clients_rt.handle,
        &auth,
        "/stream/bench/slow",
        64 * 1024,
        ss.connect_concurrency,
    );
    subs.wait_connected("stream-slow-consumer", Duration::from_secs(120))
        .await?;
    let publisher =
        Publisher::start(&engine.worker_url, "bench", "slow", ss.slow_event_bytes).await?;
    subs.wait_received(1, Duration::from_secs(30)).await?;
    let base = stream_stats(&ctl).await?.slow_consumer_disconnects;

    publisher.set_rate(Some(ss.slow_rate));
    tokio::time::sleep(settings.warmup).await;
    let stalled_sock = if stalled {
        Some(stalled_client(&auth, "/stream/bench/slow").await?)
    } else {
        None
    };
    let errors_before = publisher.errors.load(Ordering::Relaxed);
    let (margin, count) = seq_window(ss.slow_rate, settings.duration);
    let a = snap(&ctl, &engine, &subs, Edge::Open { margin, count }).await?;
    let from = now_ns();
    subs.set_window(from, from + settings.duration.as_nanos() as u64);
    // Poll the slow-consumer counter every 100 ms; split the latency at the cut-off.
    let end = a.at + settings.duration;
    let mut cut_at: Option<Instant> = None;
    let mut before = None;
    let mut split = None;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100).min(end - Instant::now())).await;
        let now = Instant::now();
        if cut_at.is_none() && stream_stats(&ctl).await?.slow_consumer_disconnects > base {
            cut_at = Some(now);
        }
        let due = match split_at {
            Some(d) => now >= a.at + d,
            None => cut_at.is_some(),
        };
        if before.is_none() && due {
            before = Some(subs.take_latency());
            split = Some(now - a.at);
        }
    }
    let b = snap(&ctl, &engine, &subs, Edge::Close).await?;
    let (_, last) = a.seq_window.unwrap_or_default();
    wait_published(&ctl, last, Duration::from_secs(5)).await?;
    publisher.set_rate(None);
    let published = b.stats.published - a.stats.published;
    let in_window = subs
        .wait_in_window(count * readers as u64, Duration::from_secs(2))
        .await;
    let send_errors = publisher.errors.load(Ordering::Relaxed) - errors_before;
    let after = subs.take_latency();
    let timeline = subs.timeline();
    let before = before.unwrap_or_default();
    let mut whole = before.clone();
    whole.merge(&after);
    let window = (b.at - a.at).as_secs_f64();

    // Only now does the stalled client look at its socket.
    if stalled {
        tokio::time::sleep(ss.stalled_read_delay).await;
    }
    let stalled_conns = stalled.then(|| established_on(&auth));
    let read_started = Instant::now();
    let stalled_read = match stalled_sock {
        Some(sock) => Some(
            tokio::task::spawn_blocking(move || drain_to_close(sock, Duration::from_secs(10)))
                .await?,
        ),
        None => None,
    };
    let end_stats = stream_stats(&ctl).await?;
    let reader_closes = subs.close_codes();
    let totals = subs.totals();
    let engine_rss_end = engine.memory();
    drop(publisher);
    ctl.shutdown().await;
    drop(clients_rt);
    Ok(SlowRun {
        stalled,
        readers,
        window,
        published,
        received: b.subs.received - a.subs.received,
        in_window,
        window_count: count,
        latency: whole,
        before,
        after,
        split,
        gaps: totals.gaps,
        readers_cut: totals.ended,
        reader_closes,
        slow_cut_offs: end_stats.slow_consumer_disconnects - base,
        cut_after: cut_at.map(|t| t.saturating_duration_since(a.at)),
        read_after_cut: cut_at.map(|t| read_started.saturating_duration_since(t)),
        stalled_read,
        engine_cores: cores(a.engine_cpu, b.engine_cpu, window),
        bench_cores: cores(a.bench_cpu, b.bench_cpu, window),
        engine_rss_end,
        send_errors,
        stalled_conns,
        timeline,
    })
}

/// Established TCP connections on the engine's stream port and the bytes waiting in their send
/// queues, from `ss` (`(0, 0)` without it): `(connections, send-queue bytes)`.
fn established_on(authority: &str) -> (usize, u64) {
    let port = authority.rsplit(':').next().unwrap_or("");
    let out = std::process::Command::new("ss")
        .args([
            "-tnH",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output();
    let Ok(out) = out else {
        return (0, 0);
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut n = 0;
    let mut queued = 0u64;
    for line in text.lines() {
        // Recv-Q Send-Q Local Peer
        let f: Vec<&str> = line.split_whitespace().collect();
        if let Some(q) = f.get(1).and_then(|q| q.parse::<u64>().ok()) {
            n += 1;
            queued += q;
        }
    }
    (n, queued)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Readers' latency with and without one client that never reads (`repeats` pairs, each run on
/// a fresh engine; the order alternates between pairs; the run without splits its latency at
/// the cut-off time of the run with).
pub async fn slow_consumer(
    settings: &Settings,
    ss: &StreamSettings,
    spec: &EngineSpec,
) -> anyhow::Result<()> {
    let mut pairs: Vec<(SlowRun, SlowRun)> = Vec::new();
    for i in 0..ss.slow_repeats.max(1) {
        eprintln!(
            "stream-slow-consumer ({}/{}): {} readers, {} events/s of ~{} B, with and without one client that never reads …",
            i + 1,
            ss.slow_repeats.max(1),
            ss.readers,
            ss.slow_rate,
            ss.slow_event_bytes
        );
        // Alternate which run goes first so that order effects do not favour either; a run
        // without the stalled client splits its latency where the last cut-off happened.
        let last_cut = pairs.last().and_then(|(w, _): &(SlowRun, SlowRun)| w.split);
        if i % 2 == 1 && last_cut.is_some() {
            let without = slow_run(settings, ss, spec, false, last_cut).await?;
            eprintln!("  … and with it");
            let with = slow_run(settings, ss, spec, true, None).await?;
            pairs.push((with, without));
        } else {
            let with = slow_run(settings, ss, spec, true, None).await?;
            eprintln!("  … and without it");
            let without = slow_run(settings, ss, spec, false, with.split).await?;
            pairs.push((with, without));
        }
    }

    println!();
    println!(
        "### stream-slow-consumer: {} readers of /stream/bench/slow, {} events/s of ~{} B, with and without one subscriber that never reads, store in_memory",
        ss.readers, ss.slow_rate, ss.slow_event_bytes
    );
    println!();
    println!("| pair | run | events published/s | deliveries/s received | delivered within 2 s | reader p50 | p99 | max | p99 before / after the cut-off | reader gaps | readers cut off | cut-offs (engine) | stalled client cut after | engine cores | bench cores |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, (with, without)) in pairs.iter().enumerate() {
        for r in [with, without] {
            println!(
                "| {} | {} | {:.0} | {} | {:.2} % | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} |",
                i + 1,
                if r.stalled {
                    format!("{} readers + 1 stalled", r.readers)
                } else {
                    format!("{} readers", r.readers)
                },
                r.published as f64 / r.window,
                fmt_count(r.received as f64 / r.window),
                r.in_window as f64 * 100.0 / (r.window_count * r.readers as u64).max(1) as f64,
                latency(r.latency.quantile(0.5)),
                latency(r.latency.quantile(0.99)),
                latency(r.latency.quantile(1.0)),
                latency(r.before.quantile(0.99)),
                latency(r.after.quantile(0.99)),
                r.gaps,
                r.readers_cut,
                r.slow_cut_offs,
                r.cut_after
                    .map_or("–".into(), |d| format!("{:.1} s", d.as_secs_f64())),
                opt_cores(r.engine_cores),
                opt_cores(r.bench_cores),
            );
        }
    }
    println!();
    let ratio = |q: f64| -> Vec<f64> {
        pairs
            .iter()
            .map(|(w, o)| {
                w.latency.quantile(q).as_secs_f64() / o.latency.quantile(q).as_secs_f64().max(1e-9)
            })
            .collect()
    };
    let (r99, r50) = (ratio(0.99), ratio(0.5));
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "- reader p99 with the stalled client ÷ without: {} (median {:.2}; target ≤ 1.10); p50: {} (median {:.2})",
        list(&r99),
        median(r99.clone()),
        list(&r50),
        median(r50.clone()),
    );
    let pooled = |stalled: bool| {
        let mut h = Histogram::default();
        for (w, o) in &pairs {
            h.merge(if stalled { &w.latency } else { &o.latency });
        }
        h
    };
    let (pw, po) = (pooled(true), pooled(false));
    println!(
        "- pooled over the {} pairs: with p50 {} / p99 {}, without p50 {} / p99 {} (p99 ratio {:.2})",
        pairs.len(),
        latency(pw.quantile(0.5)),
        latency(pw.quantile(0.99)),
        latency(po.quantile(0.5)),
        latency(po.quantile(0.99)),
        pw.quantile(0.99).as_secs_f64() / po.quantile(0.99).as_secs_f64().max(1e-9),
    );
    println!(
        "- timeline of each run: readers connect, publishing starts, {:.0} s warm-up; the stalled client connects at the start of the {:.0} s window; the window's latency is split where the engine counted the cut-off (the run without uses the same moment); pairs alternate which run goes first",
        settings.warmup.as_secs_f64(),
        settings.duration.as_secs_f64()
    );
    for (i, (with, _)) in pairs.iter().enumerate() {
        match &with.stalled_read {
            Some(s) => {
                let close = s.close.as_ref().map_or_else(
                    || format!("no close frame ({})", s.ended.as_deref().unwrap_or("?")),
                    |(code, reason)| format!("close code {code}, reason \"{reason}\""),
                );
                let resume_ok = match (s.last_seq, &s.close) {
                    (Some(q), Some((_, reason))) => {
                        if reason.contains(&format!("last_seq={q}&")) {
                            format!("matches the last envelope read ({q})")
                        } else {
                            format!("does not match the last envelope read ({q})")
                        }
                    }
                    _ => "–".into(),
                };
                println!(
                    "- pair {}: the stalled client read its socket {} after the cut-off: {close} (the reason's last_seq {resume_ok}); {} envelopes ({:.1} MiB) were still queued for it; slow_consumer error frame: {}{}",
                    i + 1,
                    with.read_after_cut
                        .map_or("–".into(), |d| format!("{:.1} s", d.as_secs_f64())),
                    s.envelopes,
                    s.bytes as f64 / (1024.0 * 1024.0),
                    if s.notice.is_some() { "yes" } else { "no" },
                    with.stalled_conns.map_or(String::new(), |(n, q)| format!(
                        "; just before, the engine's stream port had {n} established connections with {:.1} MiB in their send queues",
                        q as f64 / (1024.0 * 1024.0)
                    )),
                );
            }
            None => println!("- pair {}: the stalled client was not read", i + 1),
        }
    }
    for (i, (w, o)) in pairs.iter().enumerate() {
        for r in [w, o] {
            // The three worst 100 ms stretches of publish time (window-relative).
            let mut worst: Vec<(usize, Duration)> =
                r.timeline.iter().copied().enumerate().collect();
            worst.sort_by_key(|w| std::cmp::Reverse(w.1));
            println!(
                "- pair {} {}: worst reader latency by publish time: {}",
                i + 1,
                if r.stalled { "with" } else { "without" },
                worst
                    .iter()
                    .take(3)
                    .filter(|(_, d)| !d.is_zero())
                    .map(|(b, d)| format!("{} at {:.1} s", latency(*d), *b as f64 / 10.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    for (w, o) in &pairs {
        for r in [w, o] {
            let which = if r.stalled { "with" } else { "without" };
            if !r.reader_closes.is_empty() {
                println!(
                    "- {which}: reader connections ended: {}",
                    codes(&r.reader_closes)
                );
            }
            if r.send_errors > 0 {
                println!(
                    "- {which}: {} publish calls refused by the SDK queue",
                    r.send_errors
                );
            }
        }
    }
    if let Some(m) = pairs.last().and_then(|(w, _)| w.engine_rss_end) {
        println!(
            "- engine VmRSS at the end of the last run with the stalled client: {}",
            kib(m.rss_kib)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_like_javascript() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(iso8601(1_796_064_361_007), "2026-11-30T18:46:01.007Z");
    }

    #[test]
    fn counts_are_grouped() {
        assert_eq!(fmt_count(250_000.4), "250 000");
        assert_eq!(fmt_count(999.0), "999");
        assert_eq!(fmt_count(1_234_567.0), "1 234 567");
    }

    #[test]
    fn todo_titles_are_found() {
        let env = json!({"event": {"type": "event", "event": {"type": "todo_changed",
            "data": {"action": "created", "todo": {"title": "bench-todo-7"}}}}});
        assert_eq!(todo_title(&env), Some("bench-todo-7"));
        assert_eq!(todo_title(&json!({"event": {}})), None);
    }
}
