//! Command-line interface. Every flag of `serve` also reads a `TRINE_*` environment variable;
//! precedence: flag > env var > `--config` file > built-in default.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "trine",
    version,
    about = "Trine: a reactive real-time backend engine speaking the iii worker protocol"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start the engine: worker WebSocket, HTTP triggers, stream port.
    Serve(Box<ServeArgs>),
    /// Invoke a function and print its result as JSON (exit code 1 on error).
    Call(CallArgs),
    /// Print kept log records (optionally following new ones).
    Logs(LogsArgs),
    /// Inspect and manage the durable queues of a running engine.
    Queue(QueueArgs),
}

#[derive(Args, Debug)]
pub struct QueueArgs {
    #[command(subcommand)]
    pub command: QueueCommand,
    /// Engine worker URL.
    #[arg(
        long,
        global = true,
        env = "TRINE_URL",
        default_value = "ws://127.0.0.1:49134"
    )]
    pub url: String,
    /// Print the engine's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// List queues and topics with their counts.
    Ls,
    /// Counts of one queue or topic; with --message-id, where that job is.
    Status {
        queue: String,
        /// A job id or a messageReceiptId.
        #[arg(long)]
        message_id: Option<String>,
    },
    /// Dead-lettered jobs of a queue or topic, newest first.
    Dlq {
        queue: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// Move dead-lettered jobs back to the end of their queue (all, or one with --message-id).
    Redrive {
        queue: String,
        /// A job id (as `trine queue dlq` shows) or a messageReceiptId.
        #[arg(long)]
        message_id: Option<String>,
    },
    /// Delete one dead-lettered job.
    Discard {
        queue: String,
        #[arg(long)]
        message_id: String,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Host for every listener [default: 127.0.0.1].
    #[arg(long, env = "TRINE_HOST")]
    pub host: Option<String>,
    /// Worker WebSocket port (0 = any free port) [default: 49134].
    #[arg(long, env = "TRINE_WORKER_PORT")]
    pub worker_port: Option<u16>,
    /// HTTP trigger port (0 = any free port) [default: 3111].
    #[arg(long, env = "TRINE_HTTP_PORT")]
    pub http_port: Option<u16>,
    /// Stream WebSocket port (0 = any free port) [default: 3112].
    #[arg(long, env = "TRINE_STREAM_PORT")]
    pub stream_port: Option<u16>,
    /// Directory for durable data [default: ./data].
    #[arg(long, env = "TRINE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// An iii `config.yaml` (`workers:` or legacy `modules:` format) to read unchanged.
    #[arg(long, short = 'c', env = "TRINE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Accepted for iii compatibility: without `--config` Trine already runs its default set.
    #[arg(long, hide = true)]
    pub use_default_config: bool,
    /// Engine-side deadline of every call, in milliseconds [default: 30000].
    #[arg(long, env = "TRINE_INVOCATION_TIMEOUT_MS")]
    pub invocation_timeout_ms: Option<u64>,
    /// HTTP request deadline in milliseconds [default: the config's default_timeout, else 30000].
    #[arg(long, env = "TRINE_HTTP_TIMEOUT_MS")]
    pub http_timeout_ms: Option<u64>,
    /// Largest HTTP request body in bytes (413 above) [default: 10485760].
    #[arg(long, env = "TRINE_HTTP_BODY_LIMIT")]
    pub http_body_limit: Option<usize>,
    /// Largest worker WebSocket message in bytes (connection closed with 1009 above)
    /// [default: 67108864].
    #[arg(long, env = "TRINE_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Calls one worker may be executing at once before callers get `overloaded` [default: 4096].
    #[arg(long, env = "TRINE_MAX_INFLIGHT_PER_WORKER")]
    pub max_inflight_per_worker: Option<usize>,
    /// Log records kept in memory for `trine logs` [default: 10000].
    #[arg(long, env = "TRINE_LOG_CAPACITY")]
    pub log_capacity: Option<usize>,
    /// Async worker threads [default: half the CPU cores, at least 1: workers usually share the
    /// machine]. Fewer threads mean fewer cross-thread wake-ups per request; more threads give
    /// more throughput when the engine has cores to itself. See BENCHMARKS.md.
    #[arg(long, env = "TRINE_THREADS")]
    pub threads: Option<usize>,
    /// Console log format.
    #[arg(long, env = "TRINE_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// State storage: `file_based` (durable, under `<data-dir>/state`) or `in_memory`
    /// [default: file_based; with --config, what its iii-state block says].
    #[arg(long, env = "TRINE_STATE_STORE", value_enum)]
    pub state_store: Option<StateStore>,
    /// Largest state value in bytes (compact JSON); larger sets and update results fail with
    /// VALUE_TOO_LARGE [default: 16777216].
    #[arg(long, env = "TRINE_STATE_MAX_VALUE_BYTES")]
    pub state_max_value_bytes: Option<usize>,
    /// Attempts per state trigger delivery before it becomes a dead letter [default: 8].
    #[arg(long, env = "TRINE_TRIGGER_MAX_ATTEMPTS")]
    pub trigger_max_attempts: Option<u32>,
    /// Delay before the first retry of a failed state trigger delivery, in milliseconds; it
    /// doubles per attempt, up to 10 s [default: 100].
    #[arg(long, env = "TRINE_TRIGGER_RETRY_MS")]
    pub trigger_retry_ms: Option<u64>,
    /// Queue job storage: `file_based` (durable: a receipt is sent once the job is on disk) or
    /// `in_memory` [default: file_based; with --config, what its iii-queue adapter says].
    #[arg(long, env = "TRINE_QUEUE_STORE", value_enum)]
    pub queue_store: Option<StateStore>,
    /// Join a cluster of engines on this Redis (`redis://host:port`): calls to functions
    /// registered on another engine of the cluster are forwarded to it (docs/cluster.md).
    #[arg(long, env = "TRINE_CLUSTER_REDIS_URL")]
    pub cluster_redis_url: Option<String>,
    /// Names the cluster: engines with the same prefix on one Redis form one group
    /// [default: trine].
    #[arg(long, env = "TRINE_CLUSTER_PREFIX")]
    pub cluster_prefix: Option<String>,
    /// The worker URL other engines of the cluster use to reach this one
    /// [default: ws://<bound worker address>].
    #[arg(long, env = "TRINE_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Read cache of the file store, in MiB [default: 64].
    #[arg(long, env = "TRINE_STATE_CACHE_MB")]
    pub state_cache_mb: Option<u64>,
    /// Size of the file store's write-ahead log that triggers a checkpoint, in MiB: larger means
    /// fewer checkpoint pauses and a longer replay after a crash [default: 64].
    #[arg(long, env = "TRINE_STATE_CHECKPOINT_MB")]
    pub state_checkpoint_mb: Option<u64>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum StateStore {
    InMemory,
    FileBased,
}

#[derive(Args, Debug)]
pub struct CallArgs {
    /// Function to invoke, e.g. `engine::functions::list`.
    pub function_id: String,
    /// JSON payload [default: null].
    #[arg(long, short = 'd')]
    pub data: Option<String>,
    /// Engine worker URL.
    #[arg(long, env = "TRINE_URL", default_value = "ws://127.0.0.1:49134")]
    pub url: String,
    /// Client-side timeout in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Engine worker URL.
    #[arg(long, env = "TRINE_URL", default_value = "ws://127.0.0.1:49134")]
    pub url: String,
    /// Minimum level: trace, debug, info, warn, error.
    #[arg(long)]
    pub level: Option<String>,
    /// Only records attributed to this function.
    #[arg(long)]
    pub function: Option<String>,
    /// Only records from this worker (name or id).
    #[arg(long)]
    pub worker: Option<String>,
    /// Only records whose message contains this text (case-insensitive).
    #[arg(long)]
    pub search: Option<String>,
    /// How many of the newest matching records to print.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub limit: usize,
    /// Keep printing new records as they arrive.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// One JSON object per line instead of human-readable lines.
    #[arg(long)]
    pub json: bool,
}
