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

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let cli::Command::Serve(args) = &cli.command {
        if let Some(n) = args.threads {
            builder.worker_threads(n.max(1));
        }
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
            cli::Command::Serve(args) => serve::run(args).await,
            cli::Command::Call(args) => client_cmds::call(args).await,
            cli::Command::Logs(args) => client_cmds::logs(args).await,
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
