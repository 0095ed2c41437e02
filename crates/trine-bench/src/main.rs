//! `trine-bench`: starts `trine serve` and prints throughput/latency figures next to yardsticks
//! measured in the same run. It never asserts timings.
//!
//! Layout:
//! - `scenarios`: `http` (trigger → worker vs axum) and `roundtrip` (SDK call vs redis-benchmark).
//! - `engine`: the engine child process (ephemeral ports, ready line, cleanup).
//! - `load`: closed-loop load driver with warm-up and measured windows.
//! - `http_client`: keep-alive HTTP/1.1 connection per load task.
//! - `histogram`: fixed-bucket latency histogram.
//! - `yardstick`: in-process axum hello-world, `redis-benchmark` runner.
//! - `report`: markdown tables.

mod engine;
mod histogram;
mod http_client;
mod load;
mod report;
mod scenarios;
mod yardstick;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::engine::{locate_binary, EngineProcess};
use crate::scenarios::Settings;

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
    /// Concurrency levels (comma-separated): keep-alive connections for `http`, callers for
    /// `roundtrip`.
    #[arg(long, global = true, value_delimiter = ',', default_value = "1,32")]
    concurrency: Vec<usize>,
    /// Threads of the load generator's own runtime.
    #[arg(long, global = true, default_value_t = 1)]
    client_threads: usize,
    /// Threads of the runtime of the trine-sdk worker serving `bench::hello` (`http`).
    #[arg(long, global = true, default_value_t = 1)]
    worker_threads: usize,
    /// `-n` of each redis-benchmark run.
    #[arg(long, global = true, default_value_t = 200_000)]
    redis_requests: u64,
}

#[derive(Subcommand, Debug, Clone, Copy, PartialEq)]
enum Scenario {
    /// HTTP trigger served by a trine-sdk worker vs a bare axum hello-world.
    Http,
    /// trine-sdk `call("engine::echo")` round trips vs `redis-benchmark -t get`.
    Roundtrip,
    /// Both.
    All,
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
    let settings = Settings {
        warmup: Duration::from_secs_f64(cli.warmup.max(0.0)),
        duration: Duration::from_secs_f64(cli.duration.max(0.1)),
        concurrency: cli.concurrency.iter().map(|&c| c.max(1)).collect(),
        client_threads: cli.client_threads.max(1),
        worker_threads: cli.worker_threads.max(1),
        redis_requests: cli.redis_requests.max(1),
    };
    let binary = locate_binary(cli.trine_bin.as_deref());
    print_machine(&binary, &settings);

    let engine = EngineProcess::spawn(&binary)?;
    if matches!(cli.command, Scenario::Http | Scenario::All) {
        scenarios::http(&settings, &engine).await?;
    }
    if matches!(cli.command, Scenario::Roundtrip | Scenario::All) {
        scenarios::roundtrip(&settings, &engine).await?;
    }
    if let Some(kib) = engine.peak_rss_kib() {
        println!();
        println!("engine peak RSS: {:.1} MiB", kib as f64 / 1024.0);
    }
    Ok(())
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
