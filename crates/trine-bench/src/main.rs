//! `trine-bench`: starts `trine serve` and prints throughput/latency figures next to yardsticks
//! measured in the same run. It never asserts timings.
//!
//! Layout:
//! - `scenarios`: `http` (trigger → worker vs axum) and `roundtrip` (SDK call vs redis-benchmark).
//! - `state`: `state-set` (durable writes vs the disk's fsync ceiling), `state-get` (vs
//!   redis-benchmark), `trigger-latency` (write → state trigger handler), `state-memory` (1 M
//!   keys: memory, disk, restart-to-ready).
//! - `redis_state`: `--state-adapter redis` (the engine's state on a Redis server: generated
//!   config file, per-run key prefix deleted afterwards; `redis-cli` / `redis-benchmark` against
//!   that server).
//! - `streams`: `stream-fanout` (N WebSocket subscribers, `stream::send` at increasing rates),
//!   `stream-idle-memory` (engine memory per idle subscriber), `stream-todo-latency` (the seed's
//!   todo app: POST → `todo_changed` on the stream), `stream-slow-consumer` (readers' latency
//!   with a client that never reads; its 4008 close).
//! - `queues`: `queue-enqueue` (acknowledged durable enqueues from 64 and 1 closed-loop
//!   producers vs the disk's fsync ceiling; the handler keeping up, the backlog) and
//!   `queue-latency` (open-loop enqueues at a fixed rate → handler start); both check that every
//!   acknowledged job ran.
//! - `group`: `group-http` (the todo app on 1, 2, 3… engines sharing one Redis data set, closed
//!   loop of `POST /todos` spread over their HTTP ports; the metrics trigger counts every
//!   acknowledged POST once for the group).
//! - `stream_client`: WebSocket subscribers, the rate-controlled publisher, the stalled client,
//!   runtimes on threads of their own.
//! - `engine`: the engine child process (ephemeral ports, ready line, SIGTERM/SIGKILL, restart on
//!   the same data dir, cleanup).
//! - `load`: closed-loop load driver with warm-up and measured windows.
//! - `http_client`: keep-alive HTTP/1.1 connection per load task.
//! - `histogram`: fixed-bucket latency histogram.
//! - `yardstick`: in-process axum hello-world, `redis-benchmark` runner, fsync probe.
//! - `report`: markdown tables.

mod engine;
mod group;
mod histogram;
mod http_client;
mod load;
mod queues;
mod redis_state;
mod report;
mod scenarios;
mod state;
mod stream_client;
mod streams;
mod yardstick;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::engine::{locate_binary, EngineProcess, EngineSpec};
use crate::group::GroupSettings;
use crate::queues::{QueueBench, QueueConfig, QueueSettings};
use crate::redis_state::RedisDataSet;
use crate::scenarios::Settings;
use crate::state::StateSettings;
use crate::streams::StreamSettings;

#[derive(Parser, Debug)]
#[command(
    name = "trine-bench",
    about = "Benchmarks of the Trine engine (prints figures only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Scenario,
    /// Engine binary [default: `trine` next to this executable, else target/release/trine].
    #[arg(long, global = true, env = "TRINE_BIN")]
    trine_bin: Option<PathBuf>,
    /// Measured seconds per run.
    #[arg(long, global = true, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up seconds before each measured run (not counted).
    #[arg(long, global = true, default_value_t = 2.0)]
    warmup: f64,
    /// Concurrency levels (comma-separated): keep-alive connections for `http` and
    /// `group-http`, callers for `roundtrip` [default: 1,32; group-http: 32].
    #[arg(long, global = true, value_delimiter = ',')]
    concurrency: Option<Vec<usize>>,
    /// Threads of the load generator's own runtime.
    #[arg(long, global = true, default_value_t = 1)]
    client_threads: usize,
    /// Threads of the runtime of the trine-sdk worker serving `bench::hello` (`http`).
    #[arg(long, global = true, default_value_t = 1)]
    worker_threads: usize,
    /// `-n` of each redis-benchmark run.
    #[arg(long, global = true, default_value_t = 200_000)]
    redis_requests: u64,
    /// Directory for the engine's working directory (data dir, log) and the fsync probe: put it
    /// on the disk to measure [default: the system temp dir].
    #[arg(long, global = true)]
    bench_dir: Option<PathBuf>,
    /// `--state-store` of the engine (`file_based` or `in_memory`) [default: the engine's].
    #[arg(long, global = true)]
    state_store: Option<String>,
    /// Where the engine keeps state in `state-set`, `state-get` and `trigger-latency` (`state`
    /// runs those three, not `state-memory`): `kv`, its own store (`--state-store` picks which);
    /// `redis`, the `redis` adapter at `--redis-url`, from a generated config file, under a key
    /// prefix of the run's own that is deleted afterwards. On Redis, `state-set` / `state-get`
    /// compare with that server's `redis-benchmark -t set` / `-t get` (`-c` the same
    /// concurrency, `-d --value-bytes`, `-P 1`).
    #[arg(long, global = true, value_enum, default_value_t = StateAdapter::Kv)]
    state_adapter: StateAdapter,
    /// Redis server of `--state-adapter redis` and `group-http`.
    #[arg(long, global = true, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Extra argument for `trine serve` (repeatable), e.g. `--engine-arg=--threads=2`.
    #[arg(long, global = true, allow_hyphen_values = true)]
    engine_arg: Vec<String>,
    /// Concurrent writers of `state-set` (and of the loaders of `state-get` / `state-memory`).
    #[arg(long, global = true, default_value_t = 64)]
    writers: usize,
    /// Worker connections the writers (and `queue-enqueue`'s producers) are spread over.
    #[arg(long, global = true, default_value_t = 4)]
    connections: usize,
    /// Compact JSON bytes of each state value.
    #[arg(long, global = true, default_value_t = 200)]
    value_bytes: usize,
    /// Keys loaded by `state-memory`.
    #[arg(long, global = true, default_value_t = 1_000_000)]
    keys: u64,
    /// Keys pre-filled for `state-get`.
    #[arg(long, global = true, default_value_t = 10_000)]
    get_keys: u64,
    /// Writes per second of `trigger-latency` (open loop).
    #[arg(long, global = true, default_value_t = 1000.0)]
    trigger_rate: f64,
    /// Seconds of each fsync probe (`state-set`, `queue-enqueue`).
    #[arg(long, global = true, default_value_t = 3.0)]
    fsync_seconds: f64,
    /// Closed-loop producers of `queue-enqueue` (comma-separated: one run each).
    #[arg(long, global = true, value_delimiter = ',', default_value = "64,1")]
    producers: Vec<usize>,
    /// Compact JSON bytes of each queue job's payload.
    #[arg(long, global = true, default_value_t = 200)]
    job_bytes: usize,
    /// Enqueues per second of `queue-latency` (open loop; comma-separated: one run each).
    #[arg(long, global = true, value_delimiter = ',', default_value = "1000")]
    queue_rates: Vec<f64>,
    /// `concurrency` of queue `default` in the queue scenarios: the engine then runs with a
    /// generated config file declaring it (durable stores) [default: no config file; the
    /// engine's default, 10].
    #[arg(long, global = true)]
    queue_concurrency: Option<usize>,
    /// Seconds a queue run waits, after its producers stopped, for every acknowledged job to run.
    #[arg(long, global = true, default_value_t = 30.0)]
    drain_seconds: f64,
    /// WebSocket subscribers of `stream-fanout` and `stream-idle-memory`.
    #[arg(long, global = true, default_value_t = 10_000)]
    clients: usize,
    /// Publish rates (events/s, comma-separated) of the `stream-fanout` steps; raising stops at
    /// the first step where subscribers fall behind or lose envelopes.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "10,25,50,100,200"
    )]
    fanout_rates: Vec<f64>,
    /// Compact JSON bytes of each `stream-fanout` event's data.
    #[arg(long, global = true, default_value_t = 100)]
    event_bytes: usize,
    /// `stream-fanout` records latency on every n-th subscriber.
    #[arg(long, global = true, default_value_t = 100)]
    latency_sample_every: usize,
    /// WebSocket handshakes in flight while connecting subscribers.
    #[arg(long, global = true, default_value_t = 64)]
    connect_concurrency: usize,
    /// `POST /todos` per second of `stream-todo-latency` (open loop).
    #[arg(long, global = true, default_value_t = 500.0)]
    todo_rate: f64,
    /// Readers of `stream-slow-consumer`.
    #[arg(long, global = true, default_value_t = 200)]
    readers: usize,
    /// Events per second of `stream-slow-consumer`.
    #[arg(long, global = true, default_value_t = 2000.0)]
    slow_rate: f64,
    /// Compact JSON bytes of each `stream-slow-consumer` event's data.
    #[arg(long, global = true, default_value_t = 1000)]
    slow_event_bytes: usize,
    /// Seconds the stalled client of `stream-slow-consumer` waits after the run before it reads
    /// its socket.
    #[arg(long, global = true, default_value_t = 0.0)]
    stalled_read_delay: f64,
    /// Pairs of `stream-slow-consumer` runs (with, then without the stalled client), each on
    /// fresh engines.
    #[arg(long, global = true, default_value_t = 3)]
    slow_repeats: usize,
    /// Group sizes of `group-http` (comma-separated: one group each, on a data set of its own).
    #[arg(long, global = true, value_delimiter = ',', default_value = "1,2,3")]
    engines: Vec<usize>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq)]
enum StateAdapter {
    /// The engine's own store (no config file).
    Kv,
    /// The `redis` adapter (generated config file).
    Redis,
}

#[derive(Subcommand, Debug, Clone, Copy, PartialEq)]
enum Scenario {
    /// HTTP trigger served by a trine-sdk worker vs a bare axum hello-world.
    Http,
    /// trine-sdk `call("engine::echo")` round trips vs `redis-benchmark -t get`.
    Roundtrip,
    /// `http` and `roundtrip` (not the state scenarios: see `state`).
    All,
    /// Acknowledged durable `state::set` from concurrent writers vs the disk's fsync ceiling.
    StateSet,
    /// `state::get` from a trine-sdk worker vs `redis-benchmark -t get`.
    StateGet,
    /// Open-loop writes → `state` trigger handler invoked.
    TriggerLatency,
    /// 1 M keys: load rate, memory vs data size, disk use, restart-to-ready (SIGTERM, SIGKILL).
    StateMemory,
    /// All four state scenarios (a few minutes).
    State,
    /// Acknowledged durable enqueues from concurrent producers vs the disk's fsync ceiling.
    QueueEnqueue,
    /// Open-loop enqueues at a fixed rate → queue handler start.
    QueueLatency,
    /// Both queue scenarios (about a minute).
    Queues,
    /// N WebSocket subscribers, `stream::send` at increasing rates: deliveries/s, gaps, latency.
    StreamFanout,
    /// Engine memory per idle subscribed WebSocket client.
    StreamIdleMemory,
    /// The seed's todo app: POST /todos → `todo_changed` received on the stream.
    StreamTodoLatency,
    /// Readers' latency with and without a client that never reads; its 4008 close.
    StreamSlowConsumer,
    /// All four stream scenarios (a few minutes).
    Streams,
    /// The todo app on N engines sharing one Redis (`--engines`): closed-loop POST /todos spread
    /// over their HTTP ports; the metrics total must match the acknowledged POSTs.
    GroupHttp,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Hosts the axum yardstick; the load generator and the bench worker get their own threads.
    tokio::runtime::Builder::new_multi_thread()
        .thread_name("bench-app")
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    use Scenario::*;
    let on_redis = cli.state_adapter == StateAdapter::Redis;
    if on_redis {
        if !matches!(cli.command, StateSet | StateGet | TriggerLatency | State) {
            anyhow::bail!("--state-adapter redis applies to state-set, state-get, trigger-latency and state only");
        }
        if cli.state_store.is_some() {
            anyhow::bail!("--state-store picks the engine's own store; it does not go with --state-adapter redis");
        }
    }
    if cli.command == GroupHttp && cli.state_store.is_some() {
        anyhow::bail!(
            "group-http keeps state on Redis (--redis-url); --state-store does not apply"
        );
    }
    let default_concurrency = if cli.command == GroupHttp {
        vec![32]
    } else {
        vec![1, 32]
    };
    let settings = Settings {
        warmup: Duration::from_secs_f64(cli.warmup.max(0.0)),
        duration: Duration::from_secs_f64(cli.duration.max(0.1)),
        concurrency: cli
            .concurrency
            .clone()
            .unwrap_or(default_concurrency)
            .iter()
            .map(|&c| c.max(1))
            .collect(),
        client_threads: cli.client_threads.max(1),
        worker_threads: cli.worker_threads.max(1),
        redis_requests: cli.redis_requests.max(1),
    };
    let binary = locate_binary(cli.trine_bin.as_deref());
    print_machine(&binary, &settings);
    let mut extra_args = Vec::new();
    if let Some(store) = &cli.state_store {
        extra_args.push(format!("--state-store={store}"));
    }
    extra_args.extend(cli.engine_arg.iter().cloned());
    let spec = EngineSpec {
        binary,
        extra_args,
        base_dir: cli.bench_dir.clone().unwrap_or_else(std::env::temp_dir),
    };
    let state_settings = StateSettings {
        writers: cli.writers.max(1),
        connections: cli.connections.max(1),
        value_bytes: cli.value_bytes,
        memory_keys: cli.keys.max(1),
        get_keys: cli.get_keys.max(1),
        trigger_rate: cli.trigger_rate.max(1.0),
        fsync_duration: Duration::from_secs_f64(cli.fsync_seconds.max(0.1)),
        redis: None,
    };
    let queue_settings = QueueSettings {
        producers: cli.producers.iter().map(|&p| p.max(1)).collect(),
        connections: cli.connections.max(1),
        job_bytes: cli.job_bytes,
        rates: cli
            .queue_rates
            .iter()
            .copied()
            .filter(|r| *r > 0.0)
            .collect(),
        fsync_duration: Duration::from_secs_f64(cli.fsync_seconds.max(0.1)),
        drain_timeout: Duration::from_secs_f64(cli.drain_seconds.max(0.0)),
    };

    let stream_settings = StreamSettings {
        clients: cli.clients.max(1),
        fanout_rates: cli
            .fanout_rates
            .iter()
            .copied()
            .filter(|r| *r > 0.0)
            .collect(),
        event_bytes: cli.event_bytes,
        sample_every: cli.latency_sample_every.max(1),
        connect_concurrency: cli.connect_concurrency.max(1),
        todo_rate: cli.todo_rate.max(1.0),
        readers: cli.readers.max(1),
        slow_rate: cli.slow_rate.max(1.0),
        slow_event_bytes: cli.slow_event_bytes,
        stalled_read_delay: Duration::from_secs_f64(cli.stalled_read_delay.max(0.0)),
        slow_repeats: cli.slow_repeats.max(1),
    };
    // Where the store does not matter (fan-out, memory, slow consumers): in memory, unless
    // `--state-store` says otherwise. The todo app writes state: the engine's default store.
    let mut memory_spec = spec.clone();
    if cli.state_store.is_none() {
        memory_spec
            .extra_args
            .insert(0, "--state-store=in_memory".to_owned());
    }

    let cmd = cli.command;
    if matches!(cmd, Http | Roundtrip | All) {
        let engine = EngineProcess::start(spec.clone())?;
        if matches!(cmd, Http | All) {
            scenarios::http(&settings, &engine).await?;
        }
        if matches!(cmd, Roundtrip | All) {
            scenarios::roundtrip(&settings, &engine).await?;
        }
        print_peak_rss(&engine);
    }
    if matches!(cmd, StateSet | StateGet | TriggerLatency | State) {
        // Declared before the engine, so that on an early return the engine is dropped (killed)
        // before the data set's keys are deleted.
        let mut data_set = None;
        let mut state_spec = spec.clone();
        let mut state_settings = state_settings.clone();
        if on_redis {
            let ds = RedisDataSet::create(&spec.base_dir, &cli.redis_url)?;
            state_spec
                .extra_args
                .insert(0, format!("--config={}", ds.config_path().display()));
            state_settings.redis = Some(ds.server().clone());
            data_set = Some(ds);
        }
        let mut engine = EngineProcess::start(state_spec)?;
        match &data_set {
            Some(ds) => {
                println!("engine state: {}", ds.server().describe());
                println!("engine state key prefix: {}", ds.prefix());
            }
            None => state::print_storage(&engine),
        }
        if matches!(cmd, StateSet | State) {
            state::state_set(&settings, &state_settings, &engine).await?;
        }
        if matches!(cmd, StateGet | State) {
            state::state_get(&settings, &state_settings, &engine).await?;
        }
        if matches!(cmd, TriggerLatency | State) {
            state::trigger_latency(&settings, &state_settings, &engine).await?;
        }
        print_peak_rss(&engine);
        if let Some(mut ds) = data_set {
            // A clean stop releases the data set's lease; then nothing writes under the prefix.
            if let Err(e) = engine.terminate(Duration::from_secs(30)) {
                eprintln!("warning: {e:#}");
            }
            drop(engine);
            match ds.cleanup() {
                Ok(n) => println!("deleted the run's {n} Redis keys ({}:*)", ds.prefix()),
                Err(e) => eprintln!("warning: {e:#}"),
            }
        }
    }
    if on_redis && cmd == State {
        eprintln!(
            "state-memory skipped: it measures the engine's own store (not --state-adapter redis)"
        );
    } else if matches!(cmd, StateMemory | State) {
        // A fresh engine and data dir: the memory figures are for this data set alone.
        let mut engine = EngineProcess::start(spec.clone())?;
        if cmd == StateMemory {
            state::print_storage(&engine);
        }
        state::state_memory(&settings, &state_settings, &mut engine).await?;
    }
    if matches!(cmd, QueueEnqueue | QueueLatency | Queues) {
        // The engine's default store (durable) and its `default` queue; no config file unless
        // `--queue-concurrency` asks for one.
        let mut queue_spec = spec.clone();
        let config = match cli.queue_concurrency {
            Some(c) => Some(QueueConfig::write(&queue_spec.base_dir, c.max(1))?),
            None => None,
        };
        if let Some(cfg) = &config {
            queue_spec
                .extra_args
                .insert(0, format!("--config={}", cfg.path().display()));
        }
        let engine = EngineProcess::start(queue_spec)?;
        state::print_storage(&engine);
        let bench = QueueBench::start(&settings, &engine).await?;
        if matches!(cmd, QueueEnqueue | Queues) {
            bench.enqueue(&settings, &queue_settings, &engine).await?;
        }
        if matches!(cmd, QueueLatency | Queues) {
            bench.latency(&settings, &queue_settings, &engine).await?;
        }
        drop(bench);
        print_peak_rss(&engine);
    }
    if matches!(cmd, StreamFanout | Streams) {
        streams::fanout(&settings, &stream_settings, &memory_spec).await?;
    }
    if matches!(cmd, StreamIdleMemory | Streams) {
        streams::idle_memory(&settings, &stream_settings, &memory_spec).await?;
    }
    if matches!(cmd, StreamTodoLatency | Streams) {
        streams::todo_latency(&settings, &stream_settings, &spec).await?;
    }
    if matches!(cmd, StreamSlowConsumer | Streams) {
        streams::slow_consumer(&settings, &stream_settings, &memory_spec).await?;
    }
    if cmd == GroupHttp {
        let group_settings = GroupSettings {
            engines: cli.engines.iter().map(|&n| n.max(1)).collect(),
            redis_url: cli.redis_url.clone(),
        };
        group::group_http(&settings, &group_settings, &spec).await?;
    }
    Ok(())
}

fn print_peak_rss(engine: &EngineProcess) {
    if let Some(kib) = engine.peak_rss_kib() {
        println!();
        println!("engine peak RSS: {:.1} MiB", kib as f64 / 1024.0);
    }
}

fn print_machine(binary: &std::path::Path, s: &Settings) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    println!("trine-bench: {cores} cores, {cpu}");
    println!(
        "engine: {}; warm-up {:?}, measured {:?} per run, concurrency {:?}, load generator {} thread(s), bench worker {} thread(s)",
        binary.display(),
        s.warmup,
        s.duration,
        s.concurrency,
        s.client_threads,
        s.worker_threads
    );
}
