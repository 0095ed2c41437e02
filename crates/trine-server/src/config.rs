//! Loader for the iii engine's `config.yaml`.
//!
//! Reads the one YAML file the engine is started with, applies `${NAME}` /
//! `${NAME:default}` substitution to the raw text, and turns the worker list into
//! typed settings for the modules Trine implements: `iii-http`, `iii-state`,
//! `iii-stream`, `iii-queue` and the worker listener `iii-worker-manager`.
//! Files written for either reference engine (v0.11.6, v0.22.1) are accepted, and so
//! is the older `class: modules::…` format with a top-level `port:`.
//!
//! Invariants:
//! - the file is read at every start and never written (no first-boot overlay,
//!   config.md §6 / §8 item 3);
//! - whatever the file asks for that Trine cannot honour is reported: as an error
//!   when ignoring it would silently change behaviour the user relies on (unknown
//!   module keys, unknown adapters, duplicate built-ins, conflicting names), otherwise
//!   as a name in [`FileConfig::unimplemented`] or a note in [`FileConfig::warnings`];
//! - nothing here panics on user input; every error names the place to fix.
//!
//! Host/port fields are `Option`s: `None` means "not in the file" and the caller
//! applies the `DEFAULT_*` constants below. Keeping the distinction lets the caller
//! log where an address came from.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map as JsonMap, Value as Json};
use serde_yaml_ng::{Mapping, Value as Yaml};

/// Default port of the worker WebSocket listener (`iii-worker-manager`).
pub const DEFAULT_WORKER_PORT: u16 = 49134;
/// Default port of the HTTP API (`iii-http`).
pub const DEFAULT_HTTP_PORT: u16 = 3111;
/// Default port of the stream WebSocket (`iii-stream`).
pub const DEFAULT_STREAM_PORT: u16 = 3112;
/// Default bind host of every listener when its block omits `host`.
pub const DEFAULT_HOST: &str = "0.0.0.0";
/// Default `iii-http.default_timeout` in milliseconds.
pub const DEFAULT_HTTP_TIMEOUT_MS: u64 = 30_000;
/// Default `iii-http.concurrency_request_limit`.
pub const DEFAULT_CONCURRENCY_REQUEST_LIMIT: usize = 1024;
/// Default `iii-http.null_result_grace_ms` (http.md H2).
pub const DEFAULT_NULL_RESULT_GRACE_MS: u64 = 500;
/// Default `iii-worker-manager.handshake_timeout_ms` (v0.22.1).
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// The special placeholder default that expands to the engine version.
const ENGINE_VERSION_TOKEN: &str = "__III_ENGINE_VERSION__";

/// Adapter names accepted by `iii-state` and `iii-stream` (a closed set, config.md §5).
const STORE_ADAPTERS: &[&str] = &["kv", "redis", "bridge"];

/// Old/new name pairs that may not both appear in one file (config.md §2). `stream`
/// is added because Trine treats it as an alias too, so both would be a duplicate.
const NAME_PAIRS: &[(&str, &str)] = &[
    ("iii-http", "http"),
    ("iii-state", "state"),
    ("iii-stream", "stream"),
    ("iii-queue", "queue"),
    ("iii-cron", "cron"),
    ("iii-pubsub", "pubsub"),
];

const HTTP_KEYS: &[&str] = &[
    "port",
    "host",
    "default_timeout",
    "concurrency_request_limit",
    "cors",
    "middleware",
    "body_limit",
    "trust_proxy",
    "request_id_header",
    "ignore_trailing_slash",
    "not_found_function",
    "null_result_grace_ms",
];
const STATE_KEYS: &[&str] = &[
    "adapter",
    "triggers_enabled",
    "max_value_bytes",
    "save_interval_ms",
    // Trine's own keys: state trigger delivery retries.
    "trigger_max_attempts",
    "trigger_retry_ms",
];
const STREAM_KEYS: &[&str] = &["port", "host", "auth_function", "adapter"];
const WORKER_MANAGER_KEYS: &[&str] = &[
    "port",
    "host",
    "handshake_timeout_ms",
    "middleware_function_id",
    "rbac",
];

/// Everything Trine takes from one `config.yaml`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileConfig {
    /// Worker WebSocket listener settings (`iii-worker-manager`, or a legacy top-level
    /// `port:`). Always present: the listener is mandatory.
    pub worker_manager: WorkerManagerConfig,
    /// `Some` iff `iii-http` (or its alias `http`, or the legacy `RestApiModule`) is listed.
    pub http: Option<HttpConfig>,
    /// `Some` iff `iii-state` (or `state`, or the legacy `StateModule`) is listed.
    pub state: Option<ModuleConfig>,
    /// `Some` iff `iii-stream` (or `stream`, or the legacy `StreamModule`) is listed.
    pub stream: Option<StreamConfig>,
    /// Raw `iii-queue` config block (an object, `{}` when the entry has no config), `Some`
    /// iff `iii-queue`, `queue` or the legacy `QueueModule` is listed. Legacy adapter
    /// `class:` values are rewritten to `name:` so the queue module sees one shape.
    pub queue: Option<Json>,
    /// Raw `iii-cron` config block, `Some` iff `iii-cron`, `cron` or the legacy `CronModule`
    /// is listed.
    pub cron: Option<Json>,
    /// Raw `iii-pubsub` config block, `Some` iff `iii-pubsub`, `pubsub` or the legacy
    /// `PubSubModule` is listed.
    pub pubsub: Option<Json>,
    /// Names of listed entries Trine does not implement (`iii-exec`, external workers,
    /// `image:` entries, unknown legacy classes), in file
    /// order, each once. The caller warns about them at start-up.
    pub unimplemented: Vec<String>,
    /// Non-fatal notes for the start-up log (ignored keys, empty values replaced by
    /// defaults, aliases, unsupported-but-accepted keys, ...).
    pub warnings: Vec<String>,
}

impl FileConfig {
    /// The module set used when no config file exists: state, stream, HTTP and a queue,
    /// all with code defaults (config.md Versions table: boot with the default set and
    /// write no file).
    pub fn builtin_defaults() -> Self {
        FileConfig {
            http: Some(HttpConfig::default()),
            state: Some(StateConfig::default()),
            stream: Some(StreamConfig::default()),
            queue: Some(Json::Object(JsonMap::new())),
            cron: Some(Json::Object(JsonMap::new())),
            pubsub: Some(Json::Object(JsonMap::new())),
            ..FileConfig::default()
        }
    }
}

/// `iii-worker-manager` settings: the SDK/worker WebSocket listener.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerManagerConfig {
    /// Bind host; `None` ⇒ [`DEFAULT_HOST`].
    pub host: Option<String>,
    /// Bind port; `None` ⇒ [`DEFAULT_WORKER_PORT`].
    pub port: Option<u16>,
    /// Time a new connection has to complete its handshake; `None` ⇒
    /// [`DEFAULT_HANDSHAKE_TIMEOUT_MS`].
    pub handshake_timeout_ms: Option<u64>,
}

/// `iii-http` settings (http.md §11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Bind host; `None` ⇒ [`DEFAULT_HOST`].
    pub host: Option<String>,
    /// Bind port; `None` ⇒ [`DEFAULT_HTTP_PORT`].
    pub port: Option<u16>,
    /// YAML key `default_timeout`: bound on a whole request pipeline, in ms.
    pub default_timeout_ms: u64,
    /// Maximum requests served concurrently; a configured `0` is clamped to 1.
    pub concurrency_request_limit: usize,
    /// `None` ⇒ permissive CORS (the reference's behaviour when the key is absent).
    pub cors: Option<CorsConfig>,
    /// Global middleware in file order; the HTTP module sorts by priority.
    pub middleware: Vec<MiddlewareConfig>,
    /// Maximum request body in bytes (v0.11.6 docs key); `None` ⇒ the module's default.
    pub body_limit: Option<usize>,
    /// How long a `null` handler result waits for a response-channel writer (H2).
    pub null_result_grace_ms: u64,
    /// Treat `/a/` and `/a` as the same route (v0.11.6 docs key).
    pub ignore_trailing_slash: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            host: None,
            port: None,
            default_timeout_ms: DEFAULT_HTTP_TIMEOUT_MS,
            concurrency_request_limit: DEFAULT_CONCURRENCY_REQUEST_LIMIT,
            cors: None,
            middleware: Vec::new(),
            body_limit: None,
            null_result_grace_ms: DEFAULT_NULL_RESULT_GRACE_MS,
            ignore_trailing_slash: false,
        }
    }
}

/// `iii-http.cors`. Both lists are required when the block is present, as in the
/// reference (docs mark them required).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsConfig {
    /// Allowed origins; `"*"` allows any.
    pub allowed_origins: Vec<String>,
    /// Allowed methods, as written.
    pub allowed_methods: Vec<String>,
}

/// One entry of `iii-http.middleware`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MiddlewareConfig {
    /// Function invoked for every request.
    pub function_id: String,
    /// Lifecycle phase; only `preHandler` ever runs (a warning flags other values).
    pub phase: String,
    /// Lower runs first.
    pub priority: i64,
}

/// `iii-state` settings (state.md §7; union of the v0.11.6 and v0.22.1 keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// Storage adapter; absent ⇒ `kv` with an empty config (in-memory).
    pub adapter: AdapterConfig,
    /// Global switch for `state` trigger fan-out.
    pub triggers_enabled: bool,
    /// Largest accepted value in bytes; `None` ⇒ no limit (a configured `0` means unset).
    pub max_value_bytes: Option<u64>,
    /// Overrides the adapter's own save interval; validated to 100..=3 600 000. Accepted for
    /// compatibility: Trine makes every write durable before acknowledging it.
    pub save_interval_ms: Option<u64>,
    /// Trine: attempts per state trigger delivery before it is dead-lettered.
    pub trigger_max_attempts: Option<u32>,
    /// Trine: first retry delay of a failed state trigger delivery (doubles per attempt).
    pub trigger_retry_ms: Option<u64>,
}

/// Name used by the design brief for the `iii-state` settings type.
pub type ModuleConfig = StateConfig;

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            adapter: AdapterConfig::default(),
            triggers_enabled: true,
            max_value_bytes: None,
            save_interval_ms: None,
            trigger_max_attempts: None,
            trigger_retry_ms: None,
        }
    }
}

/// `iii-stream` settings (stream.md §7).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamConfig {
    /// Bind host, any host name (v0.22.1 behaviour); `None` ⇒ [`DEFAULT_HOST`].
    pub host: Option<String>,
    /// Bind port; `None` ⇒ [`DEFAULT_STREAM_PORT`].
    pub port: Option<u16>,
    /// Function that authorises new stream connections.
    pub auth_function: Option<String>,
    /// Storage adapter; absent ⇒ `kv` with an empty config (in-memory).
    pub adapter: AdapterConfig,
}

/// An adapter block `{ name, config }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterConfig {
    /// One of `kv`, `redis`, `bridge` (legacy classes already mapped).
    pub name: String,
    /// The adapter's own settings, always a JSON object. Known keys are type-checked and
    /// numeric strings converted to numbers; unknown keys are kept and warned about.
    pub config: Json,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        AdapterConfig {
            name: "kv".to_string(),
            config: Json::Object(JsonMap::new()),
        }
    }
}

/// Why a config file could not be loaded. Every message names the place to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file `{}`: {source}", path.display())]
    Io {
        /// The path given to [`load`].
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `${NAME}` without a default, and `NAME` is not set (or not UTF-8).
    #[error(
        "line {line}: environment variable `{name}` is not set and `${{{name}}}` has no \
         default; set the variable or write `${{{name}:<default>}}`"
    )]
    UnsetVariable {
        /// The variable name.
        name: String,
        /// 1-based line of the placeholder in the file.
        line: usize,
    },
    /// The substituted text is not valid YAML.
    #[error("config file is not valid YAML (after ${{…}} substitution): {message}")]
    Yaml {
        /// 1-based line reported by the YAML parser, when it gives one.
        line: Option<usize>,
        /// The parser's message (it already quotes line and column when it has them).
        message: String,
    },
    /// A top-level key other than `workers` / `modules`.
    #[error("unknown top-level key `{key}`: only `workers` and `modules` are allowed{hint}")]
    UnknownTopLevelKey {
        /// The offending key.
        key: String,
        /// Extra advice, empty or starting with a separator.
        hint: String,
    },
    /// A key a module (or one of its nested blocks) does not know.
    #[error("unknown key `{key}` in `{module}`; allowed keys: {allowed}")]
    UnknownModuleKey {
        /// Where the key sits, e.g. `iii-http` or `iii-http.cors`.
        module: String,
        /// The offending key.
        key: String,
        /// Comma-separated list of accepted keys.
        allowed: String,
    },
    /// An adapter name (or legacy class) outside `kv`, `redis`, `bridge`.
    #[error(
        "unknown adapter `{name}` in `{module}.adapter`; available adapters: kv, redis, bridge"
    )]
    UnknownAdapter {
        /// The module whose adapter block is wrong.
        module: String,
        /// The name or class as written.
        name: String,
    },
    /// Old and new spellings of the same worker in one file.
    #[error(
        "conflicting worker names: {}; each pair names the same module, keep one spelling",
        format_pairs(.pairs)
    )]
    ConflictingNames {
        /// `(new name, old name)` pairs, in the order of [`NAME_PAIRS`].
        pairs: Vec<(String, String)>,
    },
    /// A built-in module listed more than once.
    #[error(
        "`{name}` is listed twice ({first} and {second}); Trine runs one instance of each \
         built-in module, merge the two entries"
    )]
    DuplicateModule {
        /// Canonical module name.
        name: String,
        /// Position of the first entry, e.g. `workers[0]`.
        first: String,
        /// Position of the repeated entry.
        second: String,
    },
    /// A value of the wrong type or out of range, or a missing required field.
    #[error("`{path}`: {message}")]
    BadValue {
        /// Dotted location, e.g. `iii-http.port` or `workers[2]`.
        path: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

fn format_pairs(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(new, old)| format!("`{new}` and `{old}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn bad(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::BadValue {
        path: path.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------
// Environment substitution
// ---------------------------------------------------------------------------

/// Replaces `${NAME}` and `${NAME:default}` placeholders in the raw file text
/// (config.md §3).
///
/// - `NAME` runs up to the first `:` or `}` and must not be empty (otherwise the text
///   is left as is); the default runs to the next `}`, may be empty and may contain `:`.
/// - A variable that is set, even to `""`, wins over the default; `lookup` returning
///   `None` means unset.
/// - The default `__III_ENGINE_VERSION__` expands to this crate's version.
/// - `${X:-d}` is not special: the default is the literal `-d`.
///
/// Differences from the reference, both deliberate:
/// - an unset variable without default is an error naming the variable and line,
///   not a panic;
/// - placeholders inside YAML comments (`#` at line start or after whitespace, outside
///   quotes and block scalars) are left untouched, so a commented-out example such as
///   `# redis_url: ${REDIS_URL}` cannot stop the engine (config.md §8 weakness 1).
///   Comment detection is a line-level approximation of YAML: when unsure it treats
///   text as content, which errs towards the reference's behaviour.
/// - a placeholder must close on its own line; an unclosed `${` is kept literally.
pub fn expand_env(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut scanner = CommentScanner::default();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let cut = scanner.comment_start(line).unwrap_or(line.len());
        expand_code(&line[..cut], index + 1, lookup, &mut out)?;
        out.push_str(&line[cut..]);
    }
    Ok(out)
}

/// Expands the placeholders of one line's non-comment part into `out`.
fn expand_code(
    code: &str,
    line: usize,
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
) -> Result<(), ConfigError> {
    let mut rest = code;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(());
        };
        let inner = &after[..close];
        let (name, default) = match inner.split_once(':') {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        if name.is_empty() {
            // Not a placeholder; keep `${` and rescan after it like the reference regex.
            out.push_str("${");
            rest = after;
            continue;
        }
        match (lookup(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(ENGINE_VERSION_TOKEN)) => out.push_str(env!("CARGO_PKG_VERSION")),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(ConfigError::UnsetVariable {
                    name: name.to_string(),
                    line,
                });
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(())
}

/// Line-by-line tracker of where YAML comments start. It carries quoted-scalar and
/// block-scalar state across lines because `#` inside either is content, not a comment.
#[derive(Default)]
struct CommentScanner {
    /// Open quote character of a flow scalar continuing onto the next line.
    quote: Option<char>,
    block: BlockScalar,
}

#[derive(Default, Clone, Copy)]
enum BlockScalar {
    #[default]
    Off,
    /// Saw `key: |` on a line with this indentation; body indentation not known yet.
    Header { parent_indent: usize },
    /// Inside a block scalar whose lines are indented at least this much.
    Body { indent: usize },
}

impl CommentScanner {
    /// Byte offset where the comment of `line` starts, if it has one.
    fn comment_start(&mut self, line: &str) -> Option<usize> {
        let content = line.trim_end_matches(['\n', '\r']);
        let indent = content.len() - content.trim_start_matches(' ').len();
        let blank = content.trim().is_empty();
        if self.quote.is_none() {
            match self.block {
                BlockScalar::Body { indent: body } if blank || indent >= body => return None,
                BlockScalar::Header { .. } if blank => return None,
                BlockScalar::Header { parent_indent } if indent > parent_indent => {
                    self.block = BlockScalar::Body { indent };
                    return None;
                }
                _ => self.block = BlockScalar::Off,
            }
        }

        let mut comment = None;
        let mut prev: Option<char> = None;
        let mut chars = content.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match self.quote {
                Some('\'') => {
                    if c == '\'' {
                        // `''` is an escaped quote inside a single-quoted scalar.
                        if chars.peek().map(|&(_, n)| n) == Some('\'') {
                            chars.next();
                        } else {
                            self.quote = None;
                        }
                    }
                }
                Some(_) => {
                    if c == '\\' {
                        chars.next();
                    } else if c == '"' {
                        self.quote = None;
                    }
                }
                None => {
                    // (`is_none_or` needs Rust 1.82; the workspace targets 1.80.)
                    let after_space = match prev {
                        None => true,
                        Some(p) => p.is_whitespace(),
                    };
                    if c == '#' && after_space {
                        comment = Some(i);
                        break;
                    }
                    // A quote only opens a scalar at its start; `it's` stays plain.
                    if (c == '\'' || c == '"')
                        && (after_space || matches!(prev, Some('[' | '{' | ',')))
                    {
                        self.quote = Some(c);
                    }
                }
            }
            prev = Some(c);
        }

        if self.quote.is_none() && opens_block_scalar(&content[..comment.unwrap_or(content.len())])
        {
            self.block = BlockScalar::Header {
                parent_indent: indent,
            };
        }
        comment
    }
}

/// Whether a line (without its comment) ends with a block scalar header (`|`, `>-`, ...)
/// in a position where YAML reads it as one.
fn opens_block_scalar(code: &str) -> bool {
    let code = code.trim_end();
    let (before, token) = code.rsplit_once(char::is_whitespace).unwrap_or(("", code));
    let mut chars = token.chars();
    if !matches!(chars.next(), Some('|' | '>')) {
        return false;
    }
    let indicators: Vec<char> = chars.collect();
    let chomps = indicators.iter().filter(|c| matches!(c, '+' | '-')).count();
    let digits = indicators.iter().filter(|c| matches!(c, '1'..='9')).count();
    if chomps > 1 || digits > 1 || chomps + digits != indicators.len() {
        return false;
    }
    let before = before.trim_end();
    before.is_empty()
        || before.ends_with(':')
        || before.ends_with('-')
        || before.ends_with('?')
        || before
            .rsplit(char::is_whitespace)
            .next()
            .is_some_and(|t| t.starts_with('!') || t.starts_with('&'))
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Reads `path` and parses it with the process environment ([`parse`]). A non-UTF-8
/// variable value counts as unset.
pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, &|name| std::env::var(name).ok())
}

/// Expands placeholders ([`expand_env`]), parses the YAML and validates it.
///
/// Choices where the spec leaves room (config.md "divergence candidates"):
/// - `http`, `state`, `stream`, `queue` are aliases of the `iii-` built-ins (a note is
///   added to the warnings); naming both spellings is an error listing each pair.
/// - the legacy format (`class: modules::…` entries, top-level `port:`) is accepted;
///   a top-level `port:` in a file without `class:` entries is still an error.
///   `modules::queue::QueueModule` maps to `iii-queue`, since Trine has a queue.
/// - a built-in listed twice is an error instead of two instances (weakness 8).
/// - a key whose value is null (e.g. `port: ${HTTP_PORT:3111}` with `HTTP_PORT=""`)
///   means "use the default", with a warning; the reference fails on the type error.
/// - numbers and booleans may be written as quoted strings (`port: "${PORT:3111}"`,
///   common in legacy files); they are converted.
/// - `iii-state.save_interval_ms` outside 100..=3 600 000, `body_limit: 0`, an unknown
///   kv `store_method` and a missing `cors` list are errors (a typo there would
///   otherwise lose data or open the API silently); `max_value_bytes: 0` means unset.
/// - unknown keys of a worker entry (next to `name`/`config`) and config blocks of the
///   mandatory workers Trine does not configure are accepted with a warning.
pub fn parse(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<FileConfig, ConfigError> {
    let expanded = expand_env(text, lookup)?;
    let mut doc: Yaml = serde_yaml_ng::from_str(&expanded).map_err(yaml_error)?;
    doc.apply_merge().map_err(yaml_error)?;
    build(&doc)
}

fn yaml_error(err: serde_yaml_ng::Error) -> ConfigError {
    let line = err.location().map(|l| l.line());
    let mut message = err.to_string();
    if let Some(line) = line {
        if !message.contains("line ") {
            message.push_str(&format!(" (reported at line {line})"));
        }
    }
    ConfigError::Yaml { line, message }
}

/// The modules Trine implements itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Builtin {
    Http,
    State,
    Stream,
    Queue,
    Cron,
    PubSub,
    WorkerManager,
}

impl Builtin {
    fn canonical(self) -> &'static str {
        match self {
            Builtin::Http => "iii-http",
            Builtin::State => "iii-state",
            Builtin::Stream => "iii-stream",
            Builtin::Queue => "iii-queue",
            Builtin::Cron => "iii-cron",
            Builtin::PubSub => "iii-pubsub",
            Builtin::WorkerManager => "iii-worker-manager",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Builtin(Builtin),
    /// Mandatory reference workers that Trine accepts without configuring anything.
    Mandatory,
    /// Anything else: reported in `unimplemented`.
    Other,
}

fn kind_of(name: &str) -> Kind {
    match name {
        "iii-http" | "http" => Kind::Builtin(Builtin::Http),
        "iii-state" | "state" => Kind::Builtin(Builtin::State),
        "iii-stream" | "stream" => Kind::Builtin(Builtin::Stream),
        "iii-queue" | "queue" => Kind::Builtin(Builtin::Queue),
        "iii-cron" | "cron" => Kind::Builtin(Builtin::Cron),
        "iii-pubsub" | "pubsub" => Kind::Builtin(Builtin::PubSub),
        "iii-worker-manager" => Kind::Builtin(Builtin::WorkerManager),
        "iii-engine-functions" | "iii-observability" | "iii-telemetry" | "configuration" => {
            Kind::Mandatory
        }
        _ => Kind::Other,
    }
}

/// Maps a legacy module class to a worker name; unknown classes keep their text and
/// end up in `unimplemented`.
fn legacy_module_name(class: &str) -> &str {
    match class {
        "modules::api::RestApiModule" => "iii-http",
        "modules::stream::StreamModule" | "modules::streams::StreamModule" => "iii-stream",
        "modules::state::StateModule" => "iii-state",
        "modules::queue::QueueModule" => "iii-queue",
        "modules::cron::CronModule" => "iii-cron",
        "modules::pubsub::PubSubModule" => "iii-pubsub",
        other => other,
    }
}

/// Maps a legacy adapter class (`modules::state::adapters::KvStore`, ...) to an adapter
/// name by its last path segment.
fn legacy_adapter_name(class: &str) -> Option<&'static str> {
    match class.rsplit("::").next().unwrap_or(class) {
        "KvStore" => Some("kv"),
        "RedisAdapter" => Some("redis"),
        "Bridge" | "BridgeAdapter" => Some("bridge"),
        "BuiltinQueueAdapter" => Some("builtin"),
        "RabbitMQAdapter" => Some("rabbitmq"),
        _ => None,
    }
}

/// One worker entry after name resolution.
struct Entry<'a> {
    /// `workers[3]` or `modules[0]`, for messages.
    pos: String,
    /// Name as written (or the legacy class mapped to a name).
    name: String,
    /// True when the name came from a legacy `class:`.
    legacy: bool,
    config: Option<&'a Yaml>,
    image: Option<String>,
}

fn build(doc: &Yaml) -> Result<FileConfig, ConfigError> {
    let top = match doc {
        // An empty or comment-only file lists nothing, like the starter `workers: []`.
        Yaml::Null => return Ok(FileConfig::default()),
        Yaml::Mapping(map) => map,
        other => {
            return Err(bad(
                "(top level)",
                format!(
                    "expected a mapping with a `workers:` list, found {}",
                    describe(other)
                ),
            ))
        }
    };

    let mut cfg = FileConfig::default();
    let mut lists: [(&str, Option<&Yaml>); 2] = [("workers", None), ("modules", None)];
    let mut legacy_port = None;
    for (key, value) in top {
        match key.as_str() {
            Some("workers") => lists[0].1 = Some(value),
            Some("modules") => lists[1].1 = Some(value),
            Some("port") => legacy_port = Some(value),
            _ => {
                return Err(ConfigError::UnknownTopLevelKey {
                    key: key_text(key),
                    hint: String::new(),
                })
            }
        }
    }

    // `workers` entries come first, then `modules` (config.md §2).
    let mut entries = Vec::new();
    for (list, value) in lists {
        match value {
            None => {}
            Some(Yaml::Sequence(items)) => {
                for (i, item) in items.iter().enumerate() {
                    entries.push(read_entry(format!("{list}[{i}]"), item, &mut cfg.warnings)?);
                }
            }
            Some(Yaml::Null) => {
                return Err(bad(list, "is empty (null); write `[]` for an empty list"));
            }
            Some(other) => {
                return Err(bad(
                    list,
                    format!("expected a list of entries, found {}", describe(other)),
                ));
            }
        }
    }
    let legacy = entries.iter().any(|e| e.legacy);

    let spelled: Vec<&str> = entries
        .iter()
        .filter(|e| !e.legacy)
        .map(|e| e.name.as_str())
        .collect();
    let pairs: Vec<(String, String)> = NAME_PAIRS
        .iter()
        .filter(|(new, old)| spelled.contains(new) && spelled.contains(old))
        .map(|(new, old)| (new.to_string(), old.to_string()))
        .collect();
    if !pairs.is_empty() {
        return Err(ConfigError::ConflictingNames { pairs });
    }

    let mut seen: HashMap<Builtin, String> = HashMap::new();
    for entry in &entries {
        let kind = kind_of(&entry.name);
        if let Some(image) = &entry.image {
            if kind != Kind::Other {
                return Err(bad(
                    &entry.pos,
                    format!(
                        "`image: {image}` cannot be combined with the built-in worker name `{}`",
                        entry.name
                    ),
                ));
            }
        }
        match kind {
            Kind::Builtin(builtin) => {
                if let Some(first) = seen.get(&builtin) {
                    return Err(ConfigError::DuplicateModule {
                        name: builtin.canonical().to_string(),
                        first: first.clone(),
                        second: entry.pos.clone(),
                    });
                }
                seen.insert(builtin, entry.pos.clone());
                if !entry.legacy && entry.name != builtin.canonical() {
                    cfg.warnings.push(format!(
                        "{}: `{}` is treated as an alias of the built-in `{}`",
                        entry.pos,
                        entry.name,
                        builtin.canonical()
                    ));
                }
                let w = &mut cfg.warnings;
                match builtin {
                    Builtin::Http => cfg.http = Some(parse_http(entry.config, w)?),
                    Builtin::State => cfg.state = Some(parse_state(entry.config, w)?),
                    Builtin::Stream => cfg.stream = Some(parse_stream(entry.config, w)?),
                    Builtin::Queue => cfg.queue = Some(parse_queue(entry.config)?),
                    Builtin::Cron => cfg.cron = Some(raw_block("iii-cron", entry.config)?),
                    Builtin::PubSub => cfg.pubsub = Some(raw_block("iii-pubsub", entry.config)?),
                    Builtin::WorkerManager => {
                        cfg.worker_manager = parse_worker_manager(entry.config, w)?
                    }
                }
            }
            Kind::Mandatory => {
                let configured = match entry.config {
                    None | Some(Yaml::Null) => false,
                    Some(Yaml::Mapping(m)) => !m.is_empty(),
                    Some(_) => true,
                };
                if configured {
                    cfg.warnings.push(format!(
                        "{}: the `config` of `{}` is accepted for compatibility and ignored by Trine",
                        entry.pos, entry.name
                    ));
                }
            }
            Kind::Other => {
                if !cfg.unimplemented.contains(&entry.name) {
                    cfg.unimplemented.push(entry.name.clone());
                }
            }
        }
    }

    if let Some(port) = legacy_port {
        if !legacy {
            return Err(ConfigError::UnknownTopLevelKey {
                key: "port".to_string(),
                hint: " (a top-level `port:` is only accepted in the legacy `class: modules::…` \
                       format; set the worker port with `- name: iii-worker-manager` and \
                       `config: { port: … }`)"
                    .to_string(),
            });
        }
        if port.is_null() {
            cfg.warnings.push(format!(
                "`port` is empty (null); using the default worker port {DEFAULT_WORKER_PORT}"
            ));
        } else if cfg.worker_manager.port.is_some() {
            return Err(bad(
                "port",
                "the worker port is set both by the top-level `port` and by the \
                 `iii-worker-manager` entry; keep one",
            ));
        } else {
            cfg.worker_manager.port = Some(to_u16("port", port)?);
        }
    }

    Ok(cfg)
}

fn read_entry<'a>(
    pos: String,
    item: &'a Yaml,
    warnings: &mut Vec<String>,
) -> Result<Entry<'a>, ConfigError> {
    let Yaml::Mapping(map) = item else {
        return Err(bad(
            pos,
            format!(
                "expected a mapping with `name:` and optional `config:`, found {}",
                describe(item)
            ),
        ));
    };
    let mut name = None;
    let mut class = None;
    let mut image = None;
    let mut config = None;
    for (key, value) in map {
        match key.as_str() {
            Some("name") => name = Some(value),
            Some("class") => class = Some(value),
            Some("image") => image = Some(value),
            Some("config") => config = Some(value),
            _ => warnings.push(format!(
                "{pos}: unknown entry key `{}` is ignored (entries take `name`, `config`, `image`)",
                key_text(key)
            )),
        }
    }
    let image = match image {
        None | Some(Yaml::Null) => None,
        Some(v) => Some(to_string(&format!("{pos}.image"), v)?),
    };
    let (name, legacy) = match (name, class) {
        (Some(name), class) => {
            if class.is_some() {
                warnings.push(format!(
                    "{pos}: `class` is ignored because the entry has a `name`"
                ));
            }
            (to_string(&format!("{pos}.name"), name)?, false)
        }
        (None, Some(class)) => {
            let class = to_string(&format!("{pos}.class"), class)?;
            (legacy_module_name(&class).to_string(), true)
        }
        (None, None) => return Err(bad(pos, "entry has no `name` (e.g. `- name: iii-http`)")),
    };
    Ok(Entry {
        pos,
        name,
        legacy,
        config,
        image,
    })
}

/// A module's config mapping plus its dotted path for messages.
struct Block<'a> {
    path: String,
    map: Option<&'a Mapping>,
}

impl<'a> Block<'a> {
    /// `None` and null mean "no settings"; anything else must be a mapping.
    fn new(path: impl Into<String>, value: Option<&'a Yaml>) -> Result<Self, ConfigError> {
        let path = path.into();
        let map = match value {
            None | Some(Yaml::Null) => None,
            Some(Yaml::Mapping(map)) => Some(map),
            Some(other) => {
                return Err(bad(
                    path,
                    format!("expected a mapping of settings, found {}", describe(other)),
                ))
            }
        };
        Ok(Block { path, map })
    }

    fn at(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    /// Rejects the first key not in `allowed`.
    fn check_keys(&self, allowed: &[&str]) -> Result<(), ConfigError> {
        for key in self.map.into_iter().flat_map(|m| m.keys()) {
            if !key.as_str().is_some_and(|k| allowed.contains(&k)) {
                return Err(ConfigError::UnknownModuleKey {
                    module: self.path.clone(),
                    key: key_text(key),
                    allowed: allowed.join(", "),
                });
            }
        }
        Ok(())
    }

    /// The value of `key`, treating null as absent. When the key has a default, a null
    /// is noted in `warnings`: it usually comes from an env variable set to `""`.
    fn value(
        &self,
        key: &str,
        default: Option<&dyn fmt::Display>,
        warnings: &mut Vec<String>,
    ) -> Option<&'a Yaml> {
        let value = self.map?.get(key)?;
        if value.is_null() {
            if let Some(default) = default {
                warnings.push(format!(
                    "`{}` is empty (null, e.g. from an environment variable set to \"\"); \
                     using the default {default}",
                    self.at(key)
                ));
            }
            return None;
        }
        Some(value)
    }
}

fn parse_http(config: Option<&Yaml>, w: &mut Vec<String>) -> Result<HttpConfig, ConfigError> {
    let b = Block::new("iii-http", config)?;
    b.check_keys(HTTP_KEYS)?;
    let mut http = HttpConfig::default();
    if let Some(v) = b.value("port", Some(&DEFAULT_HTTP_PORT), w) {
        http.port = Some(to_u16(&b.at("port"), v)?);
    }
    if let Some(v) = b.value("host", Some(&DEFAULT_HOST), w) {
        http.host = Some(to_nonempty_string(&b.at("host"), v)?);
    }
    if let Some(v) = b.value("default_timeout", Some(&DEFAULT_HTTP_TIMEOUT_MS), w) {
        http.default_timeout_ms = to_u64(&b.at("default_timeout"), v)?;
    }
    if let Some(v) = b.value(
        "concurrency_request_limit",
        Some(&DEFAULT_CONCURRENCY_REQUEST_LIMIT),
        w,
    ) {
        let path = b.at("concurrency_request_limit");
        let limit = to_usize(&path, v)?;
        if limit == 0 {
            w.push(format!(
                "`{path}` is 0; using 1 (at least one request must be able to run)"
            ));
        }
        http.concurrency_request_limit = limit.max(1);
    }
    if let Some(v) = b.value("cors", None, w) {
        http.cors = Some(parse_cors(Block::new(b.at("cors"), Some(v))?, w)?);
    }
    if let Some(v) = b.value("middleware", None, w) {
        http.middleware = parse_middleware(&b.at("middleware"), v, w)?;
    }
    if let Some(v) = b.value("body_limit", None, w) {
        let path = b.at("body_limit");
        let limit = to_usize(&path, v)?;
        if limit == 0 {
            return Err(bad(
                path,
                "must be at least 1 byte (omit the key for the default 1 MiB)",
            ));
        }
        http.body_limit = Some(limit);
    }
    if let Some(v) = b.value(
        "null_result_grace_ms",
        Some(&DEFAULT_NULL_RESULT_GRACE_MS),
        w,
    ) {
        http.null_result_grace_ms = to_u64(&b.at("null_result_grace_ms"), v)?;
    }
    if let Some(v) = b.value("ignore_trailing_slash", Some(&false), w) {
        http.ignore_trailing_slash = to_bool(&b.at("ignore_trailing_slash"), v)?;
    }
    // Documented by v0.11.6 but not implemented by Trine: type-checked so a typo'd
    // value still fails, then reported as having no effect.
    if let Some(v) = b.value("trust_proxy", None, w) {
        to_bool(&b.at("trust_proxy"), v)?;
        w.push(unsupported(&b.at("trust_proxy")));
    }
    for key in ["request_id_header", "not_found_function"] {
        if let Some(v) = b.value(key, None, w) {
            to_string(&b.at(key), v)?;
            w.push(unsupported(&b.at(key)));
        }
    }
    Ok(http)
}

fn unsupported(path: &str) -> String {
    format!("`{path}` is accepted but not supported by Trine; it has no effect")
}

fn parse_cors(b: Block<'_>, w: &mut Vec<String>) -> Result<CorsConfig, ConfigError> {
    b.check_keys(&["allowed_origins", "allowed_methods"])?;
    let mut list = |key: &str, example: &str| -> Result<Vec<String>, ConfigError> {
        match b.value(key, None, w) {
            Some(v) => to_string_list(&b.at(key), v),
            None => Err(bad(
                &b.path,
                format!("missing `{key}` (a list, e.g. {example})"),
            )),
        }
    };
    Ok(CorsConfig {
        allowed_origins: list("allowed_origins", "['*']")?,
        allowed_methods: list("allowed_methods", "[GET, POST, PUT, DELETE, OPTIONS]")?,
    })
}

fn parse_middleware(
    path: &str,
    value: &Yaml,
    w: &mut Vec<String>,
) -> Result<Vec<MiddlewareConfig>, ConfigError> {
    let Yaml::Sequence(items) = value else {
        return Err(bad(
            path,
            format!(
                "expected a list of middleware entries, found {}",
                describe(value)
            ),
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let b = Block::new(format!("{path}[{i}]"), Some(item))?;
        b.check_keys(&["function_id", "phase", "priority"])?;
        let function_id = match b.value("function_id", None, w) {
            Some(v) => to_nonempty_string(&b.at("function_id"), v)?,
            None => return Err(bad(&b.path, "missing `function_id`")),
        };
        let phase = match b.value("phase", Some(&"preHandler"), w) {
            Some(v) => to_nonempty_string(&b.at("phase"), v)?,
            None => "preHandler".to_string(),
        };
        if phase != "preHandler" {
            w.push(format!(
                "`{}` is `{phase}`; only `preHandler` middleware runs, so `{function_id}` never will",
                b.at("phase")
            ));
        }
        let priority = match b.value("priority", Some(&0), w) {
            Some(v) => to_i64(&b.at("priority"), v)?,
            None => 0,
        };
        out.push(MiddlewareConfig {
            function_id,
            phase,
            priority,
        });
    }
    Ok(out)
}

fn parse_state(config: Option<&Yaml>, w: &mut Vec<String>) -> Result<StateConfig, ConfigError> {
    let b = Block::new("iii-state", config)?;
    b.check_keys(STATE_KEYS)?;
    let mut state = StateConfig {
        adapter: parse_adapter("iii-state", b.value("adapter", None, w), w)?,
        ..StateConfig::default()
    };
    if let Some(v) = b.value("triggers_enabled", Some(&true), w) {
        state.triggers_enabled = to_bool(&b.at("triggers_enabled"), v)?;
    }
    if let Some(v) = b.value("max_value_bytes", None, w) {
        let path = b.at("max_value_bytes");
        let max = to_u64(&path, v)?;
        if max == 0 {
            w.push(format!(
                "`{path}` is 0, which means no limit (as in the reference)"
            ));
        } else {
            state.max_value_bytes = Some(max);
        }
    }
    if let Some(v) = b.value("save_interval_ms", None, w) {
        let path = b.at("save_interval_ms");
        let ms = to_u64(&path, v)?;
        if !(100..=3_600_000).contains(&ms) {
            return Err(bad(
                path,
                format!("{ms} is out of range; expected 100..=3600000 milliseconds"),
            ));
        }
        state.save_interval_ms = Some(ms);
    }
    if let Some(v) = b.value("trigger_max_attempts", None, w) {
        let path = b.at("trigger_max_attempts");
        let n = to_u64(&path, v)?;
        if !(1..=1000).contains(&n) {
            return Err(bad(path, format!("{n} is out of range; expected 1..=1000")));
        }
        state.trigger_max_attempts = Some(n as u32);
    }
    if let Some(v) = b.value("trigger_retry_ms", None, w) {
        let path = b.at("trigger_retry_ms");
        state.trigger_retry_ms = Some(to_u64(&path, v)?);
    }
    Ok(state)
}

fn parse_stream(config: Option<&Yaml>, w: &mut Vec<String>) -> Result<StreamConfig, ConfigError> {
    let b = Block::new("iii-stream", config)?;
    b.check_keys(STREAM_KEYS)?;
    let mut stream = StreamConfig {
        adapter: parse_adapter("iii-stream", b.value("adapter", None, w), w)?,
        ..StreamConfig::default()
    };
    if let Some(v) = b.value("port", Some(&DEFAULT_STREAM_PORT), w) {
        stream.port = Some(to_u16(&b.at("port"), v)?);
    }
    if let Some(v) = b.value("host", Some(&DEFAULT_HOST), w) {
        stream.host = Some(to_nonempty_string(&b.at("host"), v)?);
    }
    // Null is the documented way to turn authentication off, so no warning.
    if let Some(v) = b.value("auth_function", None, w) {
        stream.auth_function = Some(to_nonempty_string(&b.at("auth_function"), v)?);
    }
    Ok(stream)
}

fn parse_worker_manager(
    config: Option<&Yaml>,
    w: &mut Vec<String>,
) -> Result<WorkerManagerConfig, ConfigError> {
    let b = Block::new("iii-worker-manager", config)?;
    b.check_keys(WORKER_MANAGER_KEYS)?;
    let mut wm = WorkerManagerConfig::default();
    if let Some(v) = b.value("port", Some(&DEFAULT_WORKER_PORT), w) {
        wm.port = Some(to_u16(&b.at("port"), v)?);
    }
    if let Some(v) = b.value("host", Some(&DEFAULT_HOST), w) {
        wm.host = Some(to_nonempty_string(&b.at("host"), v)?);
    }
    if let Some(v) = b.value(
        "handshake_timeout_ms",
        Some(&DEFAULT_HANDSHAKE_TIMEOUT_MS),
        w,
    ) {
        wm.handshake_timeout_ms = Some(to_u64(&b.at("handshake_timeout_ms"), v)?);
    }
    for key in ["middleware_function_id", "rbac"] {
        if b.value(key, None, w).is_some() {
            w.push(unsupported(&b.at(key)));
        }
    }
    Ok(wm)
}

/// Keeps the queue block raw for the queue module, only rewriting a legacy adapter
/// `class:` to `name:`.
/// A worker's config block as JSON (`{}` when absent), for modules that read it themselves.
fn raw_block(worker: &str, config: Option<&Yaml>) -> Result<Json, ConfigError> {
    let b = Block::new(worker, config)?;
    match b.map {
        None => Ok(Json::Object(JsonMap::new())),
        Some(map) => to_json(worker, &Yaml::Mapping(map.clone())),
    }
}

fn parse_queue(config: Option<&Yaml>) -> Result<Json, ConfigError> {
    let b = Block::new("iii-queue", config)?;
    let mut json = match b.map {
        None => Json::Object(JsonMap::new()),
        Some(map) => to_json("iii-queue", &Yaml::Mapping(map.clone()))?,
    };
    if let Some(Json::Object(adapter)) = json.get_mut("adapter") {
        if !adapter.contains_key("name") {
            let mapped = adapter
                .get("class")
                .and_then(Json::as_str)
                .and_then(legacy_adapter_name);
            if let Some(name) = mapped {
                adapter.remove("class");
                adapter.insert("name".to_string(), Json::String(name.to_string()));
            }
        }
    }
    Ok(json)
}

/// Expected type of a known adapter config key.
#[derive(Clone, Copy)]
enum KeyType {
    Str,
    Int,
}

fn adapter_keys(module: &str, adapter: &str) -> &'static [(&'static str, KeyType)] {
    const KV: &[(&str, KeyType)] = &[
        ("store_method", KeyType::Str),
        ("file_path", KeyType::Str),
        ("save_interval_ms", KeyType::Int),
    ];
    const KV_STREAM: &[(&str, KeyType)] = &[
        ("store_method", KeyType::Str),
        ("file_path", KeyType::Str),
        ("save_interval_ms", KeyType::Int),
        ("channel_size", KeyType::Int),
    ];
    match (module, adapter) {
        ("iii-stream", "kv") => KV_STREAM,
        (_, "kv") => KV,
        // `key_prefix` and `lease_ttl_ms` are Trine's: the data set's key prefix and the lease
        // that keeps a second engine from writing to it.
        (_, "redis") => &[
            ("redis_url", KeyType::Str),
            ("key_prefix", KeyType::Str),
            ("lease_ttl_ms", KeyType::Int),
        ],
        (_, "bridge") => &[("bridge_url", KeyType::Str)],
        _ => &[],
    }
}

fn parse_adapter(
    module: &str,
    value: Option<&Yaml>,
    w: &mut Vec<String>,
) -> Result<AdapterConfig, ConfigError> {
    let b = Block::new(format!("{module}.adapter"), value)?;
    if b.map.is_none() {
        return Ok(AdapterConfig::default());
    }
    b.check_keys(&["name", "config", "class"])?;
    let name = match (b.value("name", None, w), b.value("class", None, w)) {
        (Some(name), class) => {
            if class.is_some() {
                w.push(format!(
                    "`{}` is ignored because the adapter has a `name`",
                    b.at("class")
                ));
            }
            to_nonempty_string(&b.at("name"), name)?
        }
        (None, Some(class)) => {
            let class = to_string(&b.at("class"), class)?;
            match legacy_adapter_name(&class).filter(|n| STORE_ADAPTERS.contains(n)) {
                Some(name) => name.to_string(),
                None => {
                    return Err(ConfigError::UnknownAdapter {
                        module: module.to_string(),
                        name: class,
                    })
                }
            }
        }
        (None, None) => return Err(bad(&b.path, "missing `name` (kv, redis or bridge)")),
    };
    if !STORE_ADAPTERS.contains(&name.as_str()) {
        return Err(ConfigError::UnknownAdapter {
            module: module.to_string(),
            name,
        });
    }

    let path = format!("{}.config", b.path);
    let known = adapter_keys(module, &name);
    let mut config = JsonMap::new();
    let inner = Block::new(&path, b.value("config", None, w))?;
    for (key, value) in inner.map.into_iter().flatten() {
        let key_path = format!("{path}.{}", key_text(key));
        let Some(key) = key.as_str() else {
            return Err(bad(key_path, "adapter config keys must be strings"));
        };
        let Some(&(_, ty)) = known.iter().find(|(k, _)| *k == key) else {
            // v0.11.6 ignored unknown adapter keys; v0.22.1 rejects them. Warn so an old
            // file still starts (config.md §9 check 13) but a typo is visible.
            let names: Vec<&str> = known.iter().map(|(k, _)| *k).collect();
            w.push(format!(
                "unknown key `{key_path}` for the `{name}` adapter is ignored (known keys: {})",
                names.join(", ")
            ));
            config.insert(key.to_string(), to_json(&key_path, value)?);
            continue;
        };
        if value.is_null() {
            w.push(format!(
                "`{key_path}` is empty (null); using the adapter default"
            ));
            continue;
        }
        let json = match ty {
            KeyType::Str => Json::String(to_nonempty_string(&key_path, value)?),
            KeyType::Int => Json::from(to_u64(&key_path, value)?),
        };
        config.insert(key.to_string(), json);
    }
    if let Some(method) = config.get("store_method").and_then(Json::as_str) {
        if method != "in_memory" && method != "file_based" {
            // The reference falls back to in_memory, silently losing data on restart.
            return Err(bad(
                format!("{path}.store_method"),
                format!("unknown store method `{method}`; expected `in_memory` or `file_based`"),
            ));
        }
    }
    Ok(AdapterConfig {
        name,
        config: Json::Object(config),
    })
}

// ---------------------------------------------------------------------------
// Value helpers
// ---------------------------------------------------------------------------

fn describe(value: &Yaml) -> String {
    match value {
        Yaml::Null => "nothing (null)".to_string(),
        Yaml::Bool(b) => format!("boolean {b}"),
        Yaml::Number(n) => format!("number {n}"),
        Yaml::String(s) => format!("string {s:?}"),
        Yaml::Sequence(_) => "a list".to_string(),
        Yaml::Mapping(_) => "a mapping".to_string(),
        Yaml::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// A mapping key as text for messages.
fn key_text(key: &Yaml) -> String {
    match key {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => describe(other),
    }
}

fn to_u64(path: &str, value: &Yaml) -> Result<u64, ConfigError> {
    let parsed = match value {
        Yaml::Number(n) => n.as_u64(),
        // Quoted numbers are common in legacy files (`port: "${PORT:3111}"`).
        Yaml::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| {
        bad(
            path,
            format!("expected a non-negative integer, found {}", describe(value)),
        )
    })
}

fn to_u16(path: &str, value: &Yaml) -> Result<u16, ConfigError> {
    let n = to_u64(path, value)?;
    u16::try_from(n).map_err(|_| {
        bad(
            path,
            format!("port {n} is out of range; expected 0..=65535"),
        )
    })
}

fn to_usize(path: &str, value: &Yaml) -> Result<usize, ConfigError> {
    let n = to_u64(path, value)?;
    usize::try_from(n).map_err(|_| bad(path, format!("{n} is too large for this platform")))
}

fn to_i64(path: &str, value: &Yaml) -> Result<i64, ConfigError> {
    let parsed = match value {
        Yaml::Number(n) => n.as_i64(),
        Yaml::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| {
        bad(
            path,
            format!("expected an integer, found {}", describe(value)),
        )
    })
}

fn to_bool(path: &str, value: &Yaml) -> Result<bool, ConfigError> {
    match value {
        Yaml::Bool(b) => Ok(*b),
        Yaml::String(s) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
        Yaml::String(s) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
        other => Err(bad(
            path,
            format!("expected true or false, found {}", describe(other)),
        )),
    }
}

fn to_string(path: &str, value: &Yaml) -> Result<String, ConfigError> {
    match value {
        Yaml::String(s) => Ok(s.clone()),
        other => Err(bad(
            path,
            format!("expected a string, found {}", describe(other)),
        )),
    }
}

fn to_nonempty_string(path: &str, value: &Yaml) -> Result<String, ConfigError> {
    let s = to_string(path, value)?;
    if s.trim().is_empty() {
        return Err(bad(path, "must not be empty"));
    }
    Ok(s)
}

fn to_string_list(path: &str, value: &Yaml) -> Result<Vec<String>, ConfigError> {
    let Yaml::Sequence(items) = value else {
        return Err(bad(
            path,
            format!("expected a list of strings, found {}", describe(value)),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| to_string(&format!("{path}[{i}]"), item))
        .collect()
}

/// Converts a YAML value to JSON for blocks passed through to modules.
fn to_json(path: &str, value: &Yaml) -> Result<Json, ConfigError> {
    Ok(match value {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => Json::Bool(*b),
        Yaml::Number(n) => {
            if let Some(u) = n.as_u64() {
                Json::from(u)
            } else if let Some(i) = n.as_i64() {
                Json::from(i)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(Json::Number)
                    .ok_or_else(|| bad(path, format!("{n} is not a finite number")))?
            }
        }
        Yaml::String(s) => Json::String(s.clone()),
        Yaml::Sequence(items) => Json::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| to_json(&format!("{path}[{i}]"), item))
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Mapping(map) => {
            let mut out = JsonMap::new();
            for (key, item) in map {
                let key = match key {
                    Yaml::String(_) | Yaml::Number(_) | Yaml::Bool(_) => key_text(key),
                    other => {
                        return Err(bad(
                            path,
                            format!("mapping keys must be scalars, found {}", describe(other)),
                        ))
                    }
                };
                let item = to_json(&format!("{path}.{key}"), item)?;
                out.insert(key, item);
            }
            Json::Object(out)
        }
        // Tags carry no meaning for any module config; keep the tagged value.
        Yaml::Tagged(tagged) => to_json(path, &tagged.value)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A fake environment: only the given variables are set.
    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn ok(text: &str) -> FileConfig {
        parse(text, &no_env).unwrap_or_else(|e| panic!("expected success, got: {e}"))
    }

    fn err(text: &str) -> ConfigError {
        match parse(text, &no_env) {
            Ok(cfg) => panic!("expected an error, got {cfg:?}"),
            Err(e) => e,
        }
    }

    fn has_warning(cfg: &FileConfig, needle: &str) -> bool {
        cfg.warnings.iter().any(|w| w.contains(needle))
    }

    // --- substitution (config.md §3) ---

    #[test]
    fn env_default_used_when_unset_and_value_when_set() {
        let text = "port: ${HTTP_PORT:3111}";
        assert_eq!(expand_env(text, &no_env).unwrap(), "port: 3111");
        assert_eq!(
            expand_env(text, &env(&[("HTTP_PORT", "4000")])).unwrap(),
            "port: 4000"
        );
    }

    #[test]
    fn env_default_may_contain_colons() {
        let out = expand_env("url: ${REDIS_URL:redis://localhost:6379}", &no_env).unwrap();
        assert_eq!(out, "url: redis://localhost:6379");
    }

    #[test]
    fn env_set_but_empty_wins_over_default() {
        let out = expand_env("a: ${A:fallback}", &env(&[("A", "")])).unwrap();
        assert_eq!(out, "a: ");
    }

    #[test]
    fn env_empty_default_and_bash_style_default() {
        assert_eq!(expand_env("a: '${X:}'", &no_env).unwrap(), "a: ''");
        // check 4: `:-` is not special, the default is the literal `-a`.
        assert_eq!(expand_env("a: ${X:-a}", &no_env).unwrap(), "a: -a");
    }

    #[test]
    fn env_engine_version_token() {
        let out = expand_env("v: ${SERVICE_VERSION:__III_ENGINE_VERSION__}", &no_env).unwrap();
        assert_eq!(out, format!("v: {}", env!("CARGO_PKG_VERSION")));
        let out = expand_env("v: ${V:__III_ENGINE_VERSION__}", &env(&[("V", "9")])).unwrap();
        assert_eq!(out, "v: 9");
    }

    #[test]
    fn env_unset_without_default_names_variable_and_line() {
        // check 3
        let text = "workers:\n  - name: iii-state\n    config: { x: ${UNSET_NO_DEFAULT} }\n";
        match expand_env(text, &no_env) {
            Err(ConfigError::UnsetVariable { name, line }) => {
                assert_eq!(name, "UNSET_NO_DEFAULT");
                assert_eq!(line, 3);
            }
            other => panic!("unexpected {other:?}"),
        }
        let message = err(text).to_string();
        assert!(
            message.contains("UNSET_NO_DEFAULT") && message.contains("line 3"),
            "{message}"
        );
    }

    #[test]
    fn env_placeholders_in_comments_are_skipped() {
        let text = "# redis_url: ${REDIS_URL}\nport: 1 # was ${OLD_PORT}\n  # ${ALSO}\n";
        assert_eq!(expand_env(text, &no_env).unwrap(), text);
        // A `#` that does not start a comment leaves the placeholder live.
        assert!(expand_env("a: x#${NOPE}", &no_env).is_err());
        assert!(expand_env("a: \"x # ${NOPE}\"", &no_env).is_err());
        assert!(expand_env("a: 'x # ${NOPE}'", &no_env).is_err());
        // An apostrophe inside a plain scalar does not open a quote.
        let out = expand_env("a: it's ${A:x} # ${B}\n", &no_env).unwrap();
        assert_eq!(out, "a: it's x # ${B}\n");
        // Escaped quotes keep the scalar open.
        assert!(expand_env("a: 'it''s # ${NOPE}'", &no_env).is_err());
        assert!(expand_env("a: \"q\\\" # ${NOPE}\"", &no_env).is_err());
    }

    #[test]
    fn env_block_scalars_are_content_not_comments() {
        let text = "script: |\n  echo 1 # ${NOPE}\n\n  echo 2\nnext: 1 # ${FINE}\n";
        match expand_env(text, &no_env) {
            Err(ConfigError::UnsetVariable { name, line }) => {
                assert_eq!((name.as_str(), line), ("NOPE", 2))
            }
            other => panic!("unexpected {other:?}"),
        }
        let text = "script: >-\n  a ${A:x}\nnext: 1 # ${FINE}\n";
        assert_eq!(
            expand_env(text, &no_env).unwrap(),
            "script: >-\n  a x\nnext: 1 # ${FINE}\n"
        );
        // `a | b` is a plain scalar, not a block header.
        let text = "cmd: a | b\n# ${FINE}\n";
        assert_eq!(expand_env(text, &no_env).unwrap(), text);
    }

    #[test]
    fn env_non_placeholders_are_left_alone() {
        assert_eq!(
            expand_env("a: ${} ${:x} $ {A}", &no_env).unwrap(),
            "a: ${} ${:x} $ {A}"
        );
        assert_eq!(
            expand_env("a: ${UNCLOSED\nb: 1", &no_env).unwrap(),
            "a: ${UNCLOSED\nb: 1"
        );
        // Nesting is not supported: the first `}` closes, leaving a stray `}`.
        assert_eq!(expand_env("a: ${A:${B}}", &no_env).unwrap(), "a: ${B}");
        assert_eq!(
            expand_env("a: ${X}${Y:2}", &env(&[("X", "1")])).unwrap(),
            "a: 12"
        );
    }

    #[test]
    fn env_substitution_is_textual_then_typed() {
        let cfg = parse(
            "workers:\n  - name: iii-stream\n    config:\n      port: ${P:3112}\n      host: '${H:127.0.0.1}'\n",
            &no_env,
        )
        .unwrap();
        let stream = cfg.stream.clone().unwrap();
        assert_eq!(stream.port, Some(3112));
        assert_eq!(stream.host.as_deref(), Some("127.0.0.1"));
    }

    // --- check 1: HTTP port from the environment ---

    #[test]
    fn http_port_from_env_default_set_and_empty() {
        let text = "workers:\n  - name: iii-http\n    config:\n      port: ${HTTP_PORT:3111}\n";
        let http = parse(text, &no_env).unwrap().http.unwrap();
        assert_eq!(http.port, Some(3111));
        let http = parse(text, &env(&[("HTTP_PORT", "4000")]))
            .unwrap()
            .http
            .unwrap();
        assert_eq!(http.port, Some(4000));
        let cfg = parse(text, &env(&[("HTTP_PORT", "")])).unwrap();
        assert_eq!(cfg.http.as_ref().unwrap().port, None);
        assert!(
            has_warning(&cfg, "`iii-http.port` is empty"),
            "{:?}",
            cfg.warnings
        );
        assert!(has_warning(&cfg, "3111"));
    }

    // --- check 2 through parse ---

    #[test]
    fn redis_url_default_with_colons_reaches_adapter() {
        let cfg = ok("workers:\n  - name: iii-state\n    config:\n      adapter:\n        name: redis\n        config:\n          redis_url: ${REDIS_URL:redis://localhost:6379}\n");
        let adapter = cfg.state.clone().unwrap().adapter;
        assert_eq!(adapter.name, "redis");
        assert_eq!(
            adapter.config,
            json!({"redis_url": "redis://localhost:6379"})
        );
    }

    // --- structure ---

    #[test]
    fn unknown_key_in_http_block_fails() {
        // check 5
        let e = err("workers:\n  - name: iii-http\n    config:\n      cors_origins: ['*']\n");
        match &e {
            ConfigError::UnknownModuleKey {
                module,
                key,
                allowed,
            } => {
                assert_eq!(module, "iii-http");
                assert_eq!(key, "cors_origins");
                assert!(allowed.contains("cors"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.to_string().contains("cors_origins"));
    }

    #[test]
    fn unknown_top_level_key_fails() {
        // check 6: a modern file with `port:` at the top.
        match err("port: 49134\nworkers:\n  - name: iii-http\n") {
            ConfigError::UnknownTopLevelKey { key, hint } => {
                assert_eq!(key, "port");
                assert!(hint.contains("iii-worker-manager"));
            }
            other => panic!("unexpected {other:?}"),
        }
        match err("workers: []\nregistration_namespace_grace_ms: 5000\n") {
            ConfigError::UnknownTopLevelKey { key, .. } => {
                assert_eq!(key, "registration_namespace_grace_ms")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            err("- name: iii-http\n"),
            ConfigError::BadValue { .. }
        ));
    }

    #[test]
    fn unknown_adapter_fails() {
        // check 8
        match err("workers:\n  - name: iii-state\n    config:\n      adapter: {name: nosuch}\n") {
            ConfigError::UnknownAdapter { module, name } => {
                assert_eq!((module.as_str(), name.as_str()), ("iii-state", "nosuch"));
            }
            other => panic!("unexpected {other:?}"),
        }
        match err("workers:\n  - name: iii-stream\n    config:\n      adapter: {class: modules::stream::adapters::Mongo}\n") {
            ConfigError::UnknownAdapter { module, name } => {
                assert_eq!((module.as_str(), name.as_str()), ("iii-stream", "modules::stream::adapters::Mongo"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            err("workers:\n  - name: iii-state\n    config:\n      adapter: {config: {}}\n"),
            ConfigError::BadValue { .. }
        ));
        assert!(matches!(
            err("workers:\n  - name: iii-state\n    config:\n      adapter: {name: kv, options: 1}\n"),
            ConfigError::UnknownModuleKey { .. }
        ));
    }

    #[test]
    fn state_accepts_v0_22_keys_and_v0_11_adapter_only_block() {
        // check 12
        let cfg = ok("workers:\n  - name: iii-state\n    config:\n      triggers_enabled: false\n      max_value_bytes: 1024\n      save_interval_ms: 1000\n");
        let state = cfg.state.clone().unwrap();
        assert!(!state.triggers_enabled);
        assert_eq!(state.max_value_bytes, Some(1024));
        assert_eq!(state.save_interval_ms, Some(1000));
        assert_eq!(state.adapter, AdapterConfig::default());

        let cfg =
            ok("workers:\n  - name: iii-state\n    config:\n      adapter:\n        name: kv\n");
        let state = cfg.state.clone().unwrap();
        assert!(state.triggers_enabled);
        assert_eq!(state.adapter.name, "kv");
        assert_eq!(state.adapter.config, json!({}));
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    }

    #[test]
    fn state_value_rules() {
        let cfg = ok("workers:\n  - name: iii-state\n    config:\n      max_value_bytes: 0\n");
        assert_eq!(cfg.state.clone().unwrap().max_value_bytes, None);
        assert!(has_warning(&cfg, "max_value_bytes"));
        for bad_ms in ["99", "3600001"] {
            let e = err(&format!(
                "workers:\n  - name: iii-state\n    config:\n      save_interval_ms: {bad_ms}\n"
            ));
            assert!(
                matches!(&e, ConfigError::BadValue { path, .. } if path == "iii-state.save_interval_ms"),
                "{e}"
            );
        }
        assert!(matches!(
            err("workers:\n  - name: iii-state\n    config:\n      triggers_enabled: maybe\n"),
            ConfigError::BadValue { .. }
        ));
        let cfg =
            ok("workers:\n  - name: iii-state\n    config:\n      triggers_enabled: 'false'\n");
        assert!(!cfg.state.clone().unwrap().triggers_enabled);
    }

    #[test]
    fn unknown_adapter_config_keys_warn() {
        // check 13
        let cfg = ok("workers:\n  - name: iii-state\n    config:\n      adapter:\n        name: kv\n        config:\n          store_method: in_memory\n          compression: zstd\n");
        let adapter = cfg.state.clone().unwrap().adapter;
        assert_eq!(adapter.config["store_method"], "in_memory");
        assert!(
            has_warning(&cfg, "iii-state.adapter.config.compression"),
            "{:?}",
            cfg.warnings
        );
        // channel_size is known for stream kv, not for state kv.
        let cfg = ok("workers:\n  - name: iii-stream\n    config:\n      adapter: {name: kv, config: {channel_size: '512'}}\n");
        assert_eq!(
            cfg.stream.clone().unwrap().adapter.config,
            json!({"channel_size": 512})
        );
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        let cfg = ok("workers:\n  - name: iii-state\n    config:\n      adapter: {name: kv, config: {channel_size: 512}}\n");
        assert!(has_warning(&cfg, "channel_size"));
    }

    #[test]
    fn adapter_known_keys_are_type_checked() {
        assert!(matches!(
            err("workers:\n  - name: iii-state\n    config:\n      adapter: {name: kv, config: {store_method: file-based}}\n"),
            ConfigError::BadValue { path, .. } if path == "iii-state.adapter.config.store_method"
        ));
        assert!(matches!(
            err("workers:\n  - name: iii-state\n    config:\n      adapter: {name: kv, config: {save_interval_ms: soon}}\n"),
            ConfigError::BadValue { .. }
        ));
        let cfg = ok("workers:\n  - name: iii-state\n    config:\n      adapter: {name: redis, config: {redis_url: null}}\n");
        assert_eq!(cfg.state.clone().unwrap().adapter.config, json!({}));
        assert!(has_warning(&cfg, "redis_url"));
    }

    #[test]
    fn seed_state_sample() {
        // /work/shared/seeds/004: the iii-state sample configuration.
        let text = "workers:\n  - name: iii-state\n    config:\n      adapter:\n        name: kv\n        config:\n          store_method: file_based\n          file_path: ./data/state_store\n          save_interval_ms: 5000\n";
        let cfg = ok(text);
        let state = cfg.state.clone().unwrap();
        assert_eq!(state.adapter.name, "kv");
        assert_eq!(
            state.adapter.config,
            json!({"store_method": "file_based", "file_path": "./data/state_store", "save_interval_ms": 5000})
        );
        assert!(cfg.http.is_none() && cfg.stream.is_none() && cfg.queue.is_none());
        assert!(cfg.warnings.is_empty() && cfg.unimplemented.is_empty());
    }

    #[test]
    fn v0_22_file_with_cors_and_middleware() {
        let text = r#"
workers:
  - name: iii-http
    config:
      port: 3111
      host: 127.0.0.1
      default_timeout: 15000
      concurrency_request_limit: 64
      cors:
        allowed_origins:
          - '*'
        allowed_methods: [GET, POST, PUT, DELETE, OPTIONS]
      middleware:
        - function_id: "global::auth"
          phase: preHandler
          priority: 10
        - function_id: global::rate-limiter
  - name: iii-stream
    config:
      port: 3112
      host: localhost
      auth_function: stream::auth
      adapter: { name: kv, config: { store_method: file_based, file_path: ./data/stream_store } }
  - name: iii-queue
    config:
      adapter: { name: builtin }
"#;
        let cfg = ok(text);
        let http = cfg.http.clone().unwrap();
        assert_eq!(http.host.as_deref(), Some("127.0.0.1"));
        assert_eq!(http.port, Some(3111));
        assert_eq!(http.default_timeout_ms, 15000);
        assert_eq!(http.concurrency_request_limit, 64);
        assert_eq!(
            http.cors,
            Some(CorsConfig {
                allowed_origins: vec!["*".into()],
                allowed_methods: ["GET", "POST", "PUT", "DELETE", "OPTIONS"]
                    .map(String::from)
                    .to_vec(),
            })
        );
        assert_eq!(
            http.middleware,
            vec![
                MiddlewareConfig {
                    function_id: "global::auth".into(),
                    phase: "preHandler".into(),
                    priority: 10
                },
                MiddlewareConfig {
                    function_id: "global::rate-limiter".into(),
                    phase: "preHandler".into(),
                    priority: 0
                },
            ]
        );
        assert_eq!(http.null_result_grace_ms, DEFAULT_NULL_RESULT_GRACE_MS);
        let stream = cfg.stream.clone().unwrap();
        assert_eq!(stream.host.as_deref(), Some("localhost"));
        assert_eq!(stream.auth_function.as_deref(), Some("stream::auth"));
        assert_eq!(stream.adapter.config["file_path"], "./data/stream_store");
        assert_eq!(cfg.queue, Some(json!({"adapter": {"name": "builtin"}})));
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    }

    #[test]
    fn cors_and_middleware_validation() {
        let e = err(
            "workers:\n  - name: iii-http\n    config:\n      cors: {allowed_origins: ['*']}\n",
        );
        assert!(
            matches!(&e, ConfigError::BadValue { path, message } if path == "iii-http.cors" && message.contains("allowed_methods")),
            "{e}"
        );
        assert!(matches!(
            err("workers:\n  - name: iii-http\n    config:\n      cors: {allowed_origins: ['*'], allowed_methods: [GET], max_age: 5}\n"),
            ConfigError::UnknownModuleKey { module, key, .. } if module == "iii-http.cors" && key == "max_age"
        ));
        assert!(matches!(
            err("workers:\n  - name: iii-http\n    config:\n      middleware:\n        - function_id: a\n          order: 1\n"),
            ConfigError::UnknownModuleKey { module, key, .. } if module == "iii-http.middleware[0]" && key == "order"
        ));
        assert!(matches!(
            err("workers:\n  - name: iii-http\n    config:\n      middleware:\n        - phase: preHandler\n"),
            ConfigError::BadValue { path, .. } if path == "iii-http.middleware[0]"
        ));
        let cfg = ok("workers:\n  - name: iii-http\n    config:\n      middleware:\n        - {function_id: a, phase: onResponse}\n");
        assert!(has_warning(&cfg, "onResponse"));
    }

    #[test]
    fn http_accepts_documented_and_own_extra_keys() {
        let text = "workers:\n  - name: iii-http\n    config:\n      body_limit: 2097152\n      ignore_trailing_slash: true\n      null_result_grace_ms: 250\n      trust_proxy: true\n      request_id_header: x-request-id\n      not_found_function: web::not-found\n";
        let cfg = ok(text);
        let http = cfg.http.as_ref().unwrap();
        assert_eq!(http.body_limit, Some(2 * 1024 * 1024));
        assert!(http.ignore_trailing_slash);
        assert_eq!(http.null_result_grace_ms, 250);
        for key in ["trust_proxy", "request_id_header", "not_found_function"] {
            assert!(
                has_warning(
                    &cfg,
                    &format!("iii-http.{key}` is accepted but not supported")
                ),
                "{key}"
            );
        }
        assert_eq!(cfg.warnings.len(), 3);
        assert!(matches!(
            err("workers:\n  - name: iii-http\n    config:\n      body_limit: 0\n"),
            ConfigError::BadValue { .. }
        ));
        assert!(matches!(
            err("workers:\n  - name: iii-http\n    config:\n      trust_proxy: sometimes\n"),
            ConfigError::BadValue { .. }
        ));
    }

    #[test]
    fn http_defaults_and_concurrency_clamp() {
        let cfg = ok("workers:\n  - name: iii-http\n");
        assert_eq!(cfg.http, Some(HttpConfig::default()));
        let http = HttpConfig::default();
        assert_eq!(
            (
                http.default_timeout_ms,
                http.concurrency_request_limit,
                http.null_result_grace_ms
            ),
            (30000, 1024, 500)
        );
        assert!(http.cors.is_none() && http.middleware.is_empty() && !http.ignore_trailing_slash);

        let cfg =
            ok("workers:\n  - name: iii-http\n    config:\n      concurrency_request_limit: 0\n");
        assert_eq!(cfg.http.clone().unwrap().concurrency_request_limit, 1);
        assert!(has_warning(&cfg, "concurrency_request_limit"));
    }

    #[test]
    fn bad_value_types_are_precise() {
        let e = err("workers:\n  - name: iii-http\n    config:\n      port: abc\n");
        assert!(matches!(&e, ConfigError::BadValue { path, .. } if path == "iii-http.port"));
        assert!(e.to_string().contains("\"abc\""), "{e}");
        let e = err("workers:\n  - name: iii-http\n    config:\n      port: 70000\n");
        assert!(e.to_string().contains("70000"), "{e}");
        assert!(matches!(
            err("workers:\n  - name: iii-http\n    config:\n      host: ''\n"),
            ConfigError::BadValue { .. }
        ));
        assert!(
            matches!(err("workers:\n  - name: iii-http\n    config: [1]\n"), ConfigError::BadValue { path, .. } if path == "iii-http")
        );
        assert!(
            matches!(err("workers:\n  - name: 5\n"), ConfigError::BadValue { path, .. } if path == "workers[0].name")
        );
        assert!(
            matches!(err("workers:\n  - iii-http\n"), ConfigError::BadValue { path, .. } if path == "workers[0]")
        );
        assert!(
            matches!(err("workers: iii-http\n"), ConfigError::BadValue { path, .. } if path == "workers")
        );
        // Quoted numbers are accepted.
        let cfg = ok("workers:\n  - name: iii-http\n    config:\n      port: \"8080\"\n");
        assert_eq!(cfg.http.clone().unwrap().port, Some(8080));
    }

    #[test]
    fn null_worker_list_fails() {
        let e = err("workers:\n");
        assert!(matches!(&e, ConfigError::BadValue { path, .. } if path == "workers"));
        assert!(e.to_string().contains("[]"), "{e}");
        assert!(
            matches!(err("modules: ~\n"), ConfigError::BadValue { path, .. } if path == "modules")
        );
    }

    #[test]
    fn entry_without_name_fails() {
        let e = err("workers:\n  - name: iii-http\n  - config: {port: 1}\n");
        assert!(
            matches!(&e, ConfigError::BadValue { path, .. } if path == "workers[1]"),
            "{e}"
        );
    }

    #[test]
    fn empty_file_and_starter_file_list_nothing() {
        for text in ["", "# nothing here\n", "workers: []\n"] {
            let cfg = ok(text);
            assert_eq!(cfg, FileConfig::default(), "{text:?}");
        }
    }

    #[test]
    fn workers_come_before_modules() {
        let cfg = ok("modules:\n  - name: iii-exec\nworkers:\n  - name: my-ext\n");
        assert_eq!(cfg.unimplemented, vec!["my-ext", "iii-exec"]);
        let e = err("modules:\n  - name: iii-http\nworkers:\n  - name: iii-http\n");
        assert!(
            matches!(e, ConfigError::DuplicateModule { first, second, .. } if first == "workers[0]" && second == "modules[0]")
        );
    }

    #[test]
    fn aliases_map_to_builtins() {
        let cfg = ok("workers:\n  - name: http\n    config: {port: 8000}\n  - name: state\n  - name: stream\n  - name: queue\n");
        assert_eq!(cfg.http.clone().unwrap().port, Some(8000));
        assert!(cfg.state.is_some() && cfg.stream.is_some() && cfg.queue.is_some());
        assert_eq!(
            cfg.warnings.iter().filter(|w| w.contains("alias")).count(),
            4
        );
    }

    #[test]
    fn conflicting_old_and_new_names_fail_listing_each_pair() {
        let e = err("workers:\n  - name: iii-http\n  - name: http\n  - name: cron\n  - name: iii-cron\n  - name: iii-state\n");
        match &e {
            ConfigError::ConflictingNames { pairs } => assert_eq!(
                pairs,
                &vec![
                    ("iii-http".to_string(), "http".to_string()),
                    ("iii-cron".to_string(), "cron".to_string())
                ]
            ),
            other => panic!("unexpected {other:?}"),
        }
        let message = e.to_string();
        assert!(
            message.contains("`iii-http` and `http`") && message.contains("`iii-cron` and `cron`"),
            "{message}"
        );
        assert!(matches!(
            err("workers:\n  - name: pubsub\n  - name: iii-pubsub\n"),
            ConfigError::ConflictingNames { .. }
        ));
        assert!(matches!(
            err("workers:\n  - name: queue\n  - name: iii-queue\n"),
            ConfigError::ConflictingNames { .. }
        ));
    }

    #[test]
    fn duplicate_builtin_fails() {
        let e = err("workers:\n  - name: iii-http\n  - name: iii-state\n  - name: iii-http\n    config: {port: 3000}\n");
        match &e {
            ConfigError::DuplicateModule {
                name,
                first,
                second,
            } => {
                assert_eq!(
                    (name.as_str(), first.as_str(), second.as_str()),
                    ("iii-http", "workers[0]", "workers[2]")
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.to_string().contains("listed twice"));
        assert!(matches!(
            err("workers:\n  - name: iii-worker-manager\n  - name: iii-worker-manager\n"),
            ConfigError::DuplicateModule { .. }
        ));
    }

    #[test]
    fn mandatory_workers_are_accepted_and_worker_manager_configures_listener() {
        let text = "workers:\n  - name: iii-worker-manager\n    config:\n      port: 50000\n      host: 127.0.0.1\n      handshake_timeout_ms: 2000\n      rbac: {}\n  - name: iii-engine-functions\n  - name: iii-telemetry\n  - name: configuration\n    config:\n      adapter: {name: fs}\n  - name: iii-observability\n    config: {}\n";
        let cfg = ok(text);
        assert_eq!(
            cfg.worker_manager,
            WorkerManagerConfig {
                host: Some("127.0.0.1".into()),
                port: Some(50000),
                handshake_timeout_ms: Some(2000)
            }
        );
        assert!(cfg.unimplemented.is_empty());
        assert!(has_warning(&cfg, "iii-worker-manager.rbac"));
        assert!(has_warning(&cfg, "`configuration` is accepted"));
        assert_eq!(cfg.warnings.len(), 2, "{:?}", cfg.warnings);
        assert!(matches!(
            err("workers:\n  - name: iii-worker-manager\n    config: {listen: 1}\n"),
            ConfigError::UnknownModuleKey { module, .. } if module == "iii-worker-manager"
        ));
    }

    #[test]
    fn unimplemented_workers_are_listed_not_rejected() {
        let text = "workers:\n  - name: iii-cron\n  - name: iii-pubsub\n    config: {adapter: {name: local}}\n  - name: iii-exec\n  - name: my-external\n  - name: pdf-worker\n    image: ghcr.io/acme/pdf:1\n  - name: iii-exec\n";
        let cfg = ok(text);
        assert_eq!(
            cfg.unimplemented,
            vec!["iii-exec", "my-external", "pdf-worker"]
        );
        assert!(cfg.http.is_none());
        assert_eq!(cfg.cron, Some(json!({})));
        assert_eq!(cfg.pubsub, Some(json!({"adapter": {"name": "local"}})));
    }

    #[test]
    fn image_with_builtin_name_fails() {
        let e = err("workers:\n  - name: iii-http\n    image: ghcr.io/x/http:1\n");
        assert!(
            matches!(&e, ConfigError::BadValue { path, .. } if path == "workers[0]"),
            "{e}"
        );
    }

    #[test]
    fn unknown_entry_keys_warn() {
        let cfg = ok("workers:\n  - name: iii-http\n    conifg: {port: 1}\n");
        assert!(has_warning(&cfg, "conifg"), "{:?}", cfg.warnings);
        assert_eq!(cfg.http.clone().unwrap().port, None);
    }

    #[test]
    fn yaml_syntax_error_reports_line() {
        match err("workers:\n  - name: iii-http\n config: x\n") {
            ConfigError::Yaml { line, message } => {
                assert_eq!(line, Some(3), "{message}");
                assert!(message.contains("line 3"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        match err("workers:\n  - name: iii-http\n    config:\n      port: 1\n      port: 2\n") {
            ConfigError::Yaml { message, .. } => {
                assert!(message.contains("duplicate"), "{message}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn yaml_merge_keys_are_applied() {
        let text = "x-common: &common\n  host: 127.0.0.1\nworkers: []\n";
        // Extra top-level keys are still rejected even when used for anchors.
        assert!(matches!(err(text), ConfigError::UnknownTopLevelKey { .. }));
        let text = "workers:\n  - name: iii-http\n    config: &c\n      host: 127.0.0.1\n  - name: iii-stream\n    config:\n      <<: *c\n      port: 4000\n";
        let stream = ok(text).stream.unwrap();
        assert_eq!(stream.host.as_deref(), Some("127.0.0.1"));
        assert_eq!(stream.port, Some(4000));
    }

    #[test]
    fn legacy_format_is_accepted() {
        let text = r#"
# Engine WebSocket port for SDK/worker connections.
port: 49135

modules:
  - class: modules::api::RestApiModule
    config:
      port: "${PORT:3111}"
      host: 127.0.0.1
      default_timeout: 30000
      concurrency_request_limit: 1024
      cors:
        allowed_origins:
          - http://localhost:3113
        allowed_methods: [GET, POST]
  - class: modules::stream::StreamModule
    config:
      port: ${STREAM_PORT:3112}
      host: 0.0.0.0
      auth_function: stream.auth
      adapter:
        class: modules::stream::adapters::KvStore
        config:
          store_method: file_based
          file_path: ./data/stream_store
          save_interval_ms: 5000
      # adapter:
      #   class: modules::stream::adapters::RedisAdapter
      #   config:
      #     redis_url: ${REDIS_URL}
  - class: modules::state::StateModule
    config:
      adapter:
        class: modules::state::adapters::RedisAdapter
        config:
          redis_url: ${REDIS_URL:redis://localhost:6379}
  - class: modules::queue::QueueModule
    config:
      queue_configs:
        default: { max_retries: 3 }
      adapter:
        class: modules::queue::BuiltinQueueAdapter
        config: { store_method: file_based }
  - class: modules::pubsub::PubSubModule
    config:
      adapter:
        class: modules::pubsub::LocalAdapter
  - class: modules::cron::CronModule
  - class: modules::observability::OtelModule
    config:
      enabled: ${OTEL_ENABLED:true}
"#;
        let cfg = ok(text);
        assert_eq!(cfg.worker_manager.port, Some(49135));
        let http = cfg.http.clone().unwrap();
        assert_eq!(http.port, Some(3111));
        assert_eq!(
            http.cors.unwrap().allowed_origins,
            vec!["http://localhost:3113"]
        );
        let stream = cfg.stream.clone().unwrap();
        assert_eq!(stream.port, Some(3112));
        assert_eq!(stream.auth_function.as_deref(), Some("stream.auth"));
        assert_eq!(stream.adapter.name, "kv");
        assert_eq!(stream.adapter.config["store_method"], "file_based");
        let state = cfg.state.clone().unwrap();
        assert_eq!(state.adapter.name, "redis");
        assert_eq!(
            state.adapter.config,
            json!({"redis_url": "redis://localhost:6379"})
        );
        assert_eq!(
            cfg.queue,
            Some(json!({
                "queue_configs": {"default": {"max_retries": 3}},
                "adapter": {"name": "builtin", "config": {"store_method": "file_based"}}
            }))
        );
        assert_eq!(
            cfg.unimplemented,
            vec!["modules::observability::OtelModule"]
        );
        assert!(cfg.cron.is_some() && cfg.pubsub.is_some());
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    }

    #[test]
    fn legacy_adapter_classes_and_plural_stream_module() {
        let text = "modules:\n  - class: modules::streams::StreamModule\n    config:\n      adapter:\n        class: modules::streams::adapters::Bridge\n        config: {bridge_url: 'ws://remote:49134'}\n";
        let stream = ok(text).stream.unwrap();
        assert_eq!(stream.adapter.name, "bridge");
        assert_eq!(
            stream.adapter.config,
            json!({"bridge_url": "ws://remote:49134"})
        );
    }

    #[test]
    fn legacy_port_conflicts_with_worker_manager_entry() {
        let text = "port: 1\nmodules:\n  - class: modules::api::RestApiModule\n  - name: iii-worker-manager\n    config: {port: 2}\n";
        assert!(matches!(err(text), ConfigError::BadValue { path, .. } if path == "port"));
        let cfg = ok("port:\nmodules:\n  - class: modules::api::RestApiModule\n");
        assert_eq!(cfg.worker_manager.port, None);
        assert!(has_warning(&cfg, "49134"));
    }

    #[test]
    fn v0_11_sample_engine_config_starts() {
        let text = r#"
workers:
  - name: iii-stream
    config:
      port: ${STREAM_PORT:3112}
      host: 127.0.0.1
      adapter:
        # name: kv
        # config:
        #   store_method: file_based # Options: in_memory, file_based
        name: redis
        config:
          redis_url: redis://localhost:6379
  - name: iii-state
    config:
      adapter:
        name: kv
        config:
          store_method: file_based
          file_path: ./data/state_store.db
  - name: iii-queue
    config:
      adapter:
        name: redis
        config:
          redis_url: redis://localhost:6379
  - name: iii-observability
    config:
      enabled: ${OTEL_ENABLED:true}
      service_version: ${SERVICE_VERSION:__III_ENGINE_VERSION__}
      logs_enabled: true
      logs_max_count: 1000
      logs_console_output: true
  - name: iii-pubsub
  - name: iii-cron
  - name: iii-http
    config:
      port: 3111
      host: 127.0.0.1
"#;
        let cfg = ok(text);
        assert_eq!(cfg.stream.as_ref().unwrap().adapter.name, "redis");
        assert_eq!(cfg.stream.as_ref().unwrap().port, Some(3112));
        assert_eq!(
            cfg.state.as_ref().unwrap().adapter.config["file_path"],
            "./data/state_store.db"
        );
        assert_eq!(cfg.http.as_ref().unwrap().port, Some(3111));
        assert!(cfg.queue.is_some());
        assert!(cfg.unimplemented.is_empty(), "{:?}", cfg.unimplemented);
        assert!(cfg.cron.is_some() && cfg.pubsub.is_some());
        assert!(has_warning(&cfg, "iii-observability"));
    }

    #[test]
    fn builtin_defaults_enable_state_stream_http_and_queue() {
        let cfg = FileConfig::builtin_defaults();
        assert!(
            cfg.http.is_some()
                && cfg.state.is_some()
                && cfg.stream.is_some()
                && cfg.queue.is_some()
        );
        assert_eq!(cfg.worker_manager, WorkerManagerConfig::default());
        assert_eq!(cfg.state.clone().unwrap().adapter.name, "kv");
    }

    #[test]
    fn load_reads_file_and_reports_io_errors() {
        let dir = std::env::temp_dir().join(format!("trine-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        std::fs::write(
            &path,
            "workers:\n  - name: iii-http\n    config: {port: 3999}\n",
        )
        .unwrap();
        assert_eq!(load(&path).unwrap().http.unwrap().port, Some(3999));
        let missing = dir.join("missing.yaml");
        match load(&missing) {
            Err(ConfigError::Io { path, source }) => {
                assert_eq!(path, missing);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("unexpected {other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
