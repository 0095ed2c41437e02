//! `trine`: the engine binary. Thin by design — flags and env vars are parsed here and handed to
//! `trine-server` / `trine-engine`; `call` and `logs` are clients built on `trine-sdk`.

mod cli;
mod client_cmds;
mod serve;

use clap::Parser;

// The engine allocates many small, short-lived buffers per request (JSON values, frames);
// mimalloc's thread-local free lists measured clearly cheaper than glibc malloc here
// (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Half the cores (at least one): workers usually run on the same machine as the engine and
/// need the rest. Measured on 2 vCPUs: one engine thread beat two at every concurrency
/// (BENCHMARKS.md). `--threads` overrides it for a dedicated engine host.
fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() / 2)
        .unwrap_or(1)
        .max(1)
}

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let cli::Command::Serve(args) = &cli.command {
        builder.worker_threads(args.threads.unwrap_or_else(default_threads).max(1));
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trine: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            cli::Command::Serve(args) => serve::run(*args).await,
            cli::Command::Call(args) => client_cmds::call(args).await,
            cli::Command::Logs(args) => client_cmds::logs(args).await,
            cli::Command::Queue(args) => client_cmds::queue(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("trine: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
