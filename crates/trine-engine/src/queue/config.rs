//! Queue settings: the `iii-queue` config block (`queue_configs`, `adapter`) read into
//! [`QueueOptions`].
//!
//! Named-queue entries are read strictly, as in the reference (an unknown key is a start-up
//! error naming the key), with Trine's own optional keys added: `max_backoff_ms`, `timeout_ms`,
//! `max_depth`, `max_payload_bytes`. A `default` queue (standard, all defaults) always exists
//! unless the file declares one itself; any other undeclared queue name is refused at enqueue
//! time with `enqueue_error` (a typo never creates a queue).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

/// Settings of one queue (named, or a topic subscriber's).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSettings {
    /// `type: fifo`: jobs of one message group run one at a time, in order, also across
    /// failures (a failing head blocks its group until it succeeds or is dead-lettered).
    pub fifo: bool,
    /// FIFO: the top-level payload field naming a job's group.
    pub group_field: Option<String>,
    /// Total delivery attempts before a job is dead-lettered (the reference's `max_retries`;
    /// 0 behaves as 1).
    pub max_attempts: u32,
    /// Delay after the n-th failure: `backoff_ms × 2^(n−1)`, capped at `max_backoff_ms`.
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Standard: deliveries in flight at once. FIFO: message groups in flight at once.
    pub concurrency: usize,
    /// A delivery not answered within this time counts as a failed attempt.
    pub timeout_ms: u64,
    /// Jobs held (waiting, delayed or in flight) before enqueues are refused with `queue_full`.
    pub max_depth: usize,
    /// Largest payload (compact JSON bytes); larger enqueues get `payload_too_large`.
    pub max_payload_bytes: usize,
}

/// Defaults of the reference (`max_retries` 3, `backoff_ms` 1000, `concurrency` 10) and
/// Trine's bounds.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const DEFAULT_BACKOFF_MS: u64 = 1000;
pub const DEFAULT_CONCURRENCY: usize = 10;
pub const DEFAULT_MAX_BACKOFF_MS: u64 = 3_600_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 300_000;
pub const DEFAULT_MAX_DEPTH: usize = 1_000_000;
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 4 << 20;

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            fifo: false,
            group_field: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff_ms: DEFAULT_BACKOFF_MS,
            max_backoff_ms: DEFAULT_MAX_BACKOFF_MS,
            concurrency: DEFAULT_CONCURRENCY,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            max_depth: DEFAULT_MAX_DEPTH,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }
}

impl QueueSettings {
    /// Delay after the `n`-th failed attempt (n ≥ 1), saturating, capped.
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 1u64 << n.saturating_sub(1).min(40);
        Duration::from_millis(
            self.backoff_ms
                .saturating_mul(factor)
                .min(self.max_backoff_ms),
        )
    }

    /// The stable `type` name.
    pub fn type_name(&self) -> &'static str {
        if self.fifo {
            "fifo"
        } else {
            "standard"
        }
    }
}

/// Where queue jobs are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueStorage {
    /// Nothing survives a restart.
    InMemory,
    /// Jobs are on disk before the receipt is sent.
    Durable,
    /// `adapter: {name: redis}`: jobs live in the state module's Redis data set (shared by a
    /// group of engines; the owner engine runs the queues).
    Redis,
}

/// Everything the queue module is configured with.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// Named queues by name (always holds `default`).
    pub queues: BTreeMap<String, QueueSettings>,
    /// Defaults of `durable:subscriber` queues (the adapter's `max_attempts`, `backoff_ms`,
    /// `concurrency`, `mode`), overridden per trigger by `queue_config`.
    pub subscriber: QueueSettings,
    /// How long a job whose function is not registered waits for it (without using attempts)
    /// before its attempts start to count.
    pub missing_handler_grace: Duration,
    /// Commands queued for the queue committer before producers wait.
    pub command_capacity: usize,
    /// Messages kept for a topic that has no subscriber yet.
    pub max_parked_per_topic: usize,
}

impl Default for QueueOptions {
    fn default() -> Self {
        let mut queues = BTreeMap::new();
        queues.insert("default".to_owned(), QueueSettings::default());
        Self {
            queues,
            subscriber: QueueSettings::default(),
            missing_handler_grace: Duration::from_secs(3600),
            command_capacity: 16_384,
            max_parked_per_topic: 100_000,
        }
    }
}

/// The result of reading an `iii-queue` block.
#[derive(Debug, Clone)]
pub struct ParsedQueueConfig {
    pub options: QueueOptions,
    /// `adapter.config.store_method`: `Some(Durable)` for `file_based`, `Some(InMemory)` for
    /// `in_memory`, `None` when not given (the caller picks the default).
    pub storage: Option<QueueStorage>,
    /// `adapter.config.file_path`, when given.
    pub file_path: Option<String>,
    /// Non-fatal notes for the start-up log.
    pub warnings: Vec<String>,
}

const QUEUE_KEYS: &[&str] = &[
    "max_retries",
    "concurrency",
    "type",
    "message_group_field",
    "backoff_ms",
    "poll_interval_ms",
    // Trine's own keys.
    "max_backoff_ms",
    "timeout_ms",
    "max_depth",
    "max_payload_bytes",
];

const ADAPTER_CONFIG_KEYS: &[&str] = &[
    "store_method",
    "file_path",
    "save_interval_ms",
    "max_attempts",
    "backoff_ms",
    "concurrency",
    "poll_interval_ms",
    "mode",
    "channel_size",
];

/// Longest queue name or topic, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// Checks a queue name or topic: non-empty, at most [`MAX_NAME_BYTES`], no NUL (the internal
/// key separator).
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "{what} is {} bytes long; the limit is {MAX_NAME_BYTES}",
            name.len()
        ));
    }
    if name.contains('\0') {
        return Err(format!("{what} must not contain NUL characters"));
    }
    Ok(())
}

fn uint(ctx: &str, key: &str, v: &Value) -> Result<u64, String> {
    v.as_u64()
        .ok_or_else(|| format!("{ctx}: `{key}` must be a non-negative integer, got {v}"))
}

/// Reads an `iii-queue` config block (`{}` = all defaults).
pub fn parse(block: &Value) -> Result<ParsedQueueConfig, String> {
    let mut out = ParsedQueueConfig {
        options: QueueOptions::default(),
        storage: None,
        file_path: None,
        warnings: Vec::new(),
    };
    let empty = Map::new();
    let block = match block {
        Value::Null => &empty,
        Value::Object(m) => m,
        other => return Err(format!("iii-queue config must be a mapping, got {other}")),
    };
    for key in block.keys() {
        if key != "queue_configs" && key != "adapter" {
            return Err(format!(
                "iii-queue: unknown key `{key}` (expected `queue_configs` and `adapter`)"
            ));
        }
    }
    if let Some(adapter) = block.get("adapter") {
        parse_adapter(adapter, &mut out)?;
    }
    match block.get("queue_configs") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (name, entry) in m {
                check_name("queue name", name).map_err(|e| format!("iii-queue: {e}"))?;
                let s = parse_queue(name, entry, &mut out.warnings)?;
                out.options.queues.insert(name.clone(), s);
            }
        }
        Some(Value::Array(_)) => {
            return Err("iii-queue: `queue_configs` must be a mapping of queue name to settings (e.g. `queue_configs: {payment: {max_retries: 5}}`), not a list".into());
        }
        Some(other) => {
            return Err(format!(
                "iii-queue: `queue_configs` must be a mapping, got {other}"
            ))
        }
    }
    Ok(out)
}

fn parse_adapter(adapter: &Value, out: &mut ParsedQueueConfig) -> Result<(), String> {
    let Value::Object(a) = adapter else {
        return Err(format!(
            "iii-queue: `adapter` must be a mapping, got {adapter}"
        ));
    };
    let name = a.get("name").and_then(Value::as_str).unwrap_or("builtin");
    match name {
        "builtin" => {}
        "redis" => {
            // The server is the state module's (one data set); `redis_url` is accepted for
            // compatibility and must name the same server.
            out.storage = Some(QueueStorage::Redis);
            return Ok(());
        }
        "rabbitmq" | "bridge" => {
            return Err(format!(
                "iii-queue adapter `{name}` is not available in this Trine build; use `builtin` (durable with `store_method: file_based`) or `redis`"
            ))
        }
        other => {
            return Err(format!(
                "Adapter factory '{other}' not found. Available: [builtin, redis]"
            ))
        }
    }
    let config = match a.get("config") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(c)) => c,
        Some(other) => {
            return Err(format!(
                "iii-queue: adapter `config` must be a mapping, got {other}"
            ))
        }
    };
    for key in config.keys() {
        if !ADAPTER_CONFIG_KEYS.contains(&key.as_str()) {
            out.warnings.push(format!(
                "iii-queue: adapter config key `{key}` is unknown and ignored (known: {})",
                ADAPTER_CONFIG_KEYS.join(", ")
            ));
        }
    }
    let ctx = "iii-queue adapter config";
    match config.get("store_method").and_then(Value::as_str) {
        None => {}
        Some("file_based") => out.storage = Some(QueueStorage::Durable),
        Some("in_memory") => out.storage = Some(QueueStorage::InMemory),
        Some(other) => {
            return Err(format!(
                "{ctx}: `store_method` must be `file_based` or `in_memory`, got `{other}`"
            ))
        }
    }
    out.file_path = config
        .get("file_path")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let sub = &mut out.options.subscriber;
    if let Some(v) = config.get("max_attempts") {
        sub.max_attempts = uint(ctx, "max_attempts", v)?.min(u32::MAX as u64) as u32;
    }
    if let Some(v) = config.get("backoff_ms") {
        sub.backoff_ms = uint(ctx, "backoff_ms", v)?;
    }
    if let Some(v) = config.get("concurrency") {
        let n = uint(ctx, "concurrency", v)?;
        if n == 0 {
            return Err(format!("{ctx}: `concurrency` must be at least 1"));
        }
        sub.concurrency = n as usize;
    }
    if let Some(v) = config.get("mode") {
        sub.fifo = v.as_str() == Some("fifo");
        if sub.fifo {
            sub.concurrency = 1;
        }
    }
    if config.contains_key("save_interval_ms") {
        out.warnings.push("iii-queue: `save_interval_ms` is accepted and ignored: a file_based queue stores every job before its receipt is sent".into());
    }
    Ok(())
}

fn parse_queue(
    name: &str,
    entry: &Value,
    warnings: &mut Vec<String>,
) -> Result<QueueSettings, String> {
    let mut s = QueueSettings::default();
    let empty = Map::new();
    let m = match entry {
        Value::Null => &empty,
        Value::Object(m) => m,
        other => {
            return Err(format!(
                "iii-queue: queue '{name}' settings must be a mapping, got {other}"
            ))
        }
    };
    let ctx = format!("iii-queue: queue '{name}'");
    for key in m.keys() {
        if !QUEUE_KEYS.contains(&key.as_str()) {
            return Err(format!(
                "{ctx}: unknown key `{key}` (known: {})",
                QUEUE_KEYS.join(", ")
            ));
        }
    }
    match m.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == "standard" => {}
        Some(Value::String(t)) if t == "fifo" => s.fifo = true,
        Some(other) => {
            let t = other
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| other.to_string());
            return Err(format!(
                "Queue '{name}' has invalid type '{t}'. Must be 'standard' or 'fifo'"
            ));
        }
    }
    match m.get("message_group_field") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) if !f.is_empty() => s.group_field = Some(f.clone()),
        Some(other) => {
            return Err(format!(
                "{ctx}: `message_group_field` must be a non-empty string, got {other}"
            ))
        }
    }
    if s.fifo && s.group_field.is_none() {
        return Err(format!(
            "Queue '{name}' is of type 'fifo' but 'message_group_field' is not set"
        ));
    }
    if let Some(v) = m.get("max_retries") {
        s.max_attempts = uint(&ctx, "max_retries", v)?.min(u32::MAX as u64) as u32;
    }
    if let Some(v) = m.get("backoff_ms") {
        s.backoff_ms = uint(&ctx, "backoff_ms", v)?;
    }
    if let Some(v) = m.get("max_backoff_ms") {
        s.max_backoff_ms = uint(&ctx, "max_backoff_ms", v)?;
    }
    match m.get("concurrency") {
        None => {
            // A FIFO queue without an explicit concurrency keeps the reference's total order:
            // one group (hence one job) at a time.
            if s.fifo {
                s.concurrency = 1;
            }
        }
        Some(v) => {
            let n = uint(&ctx, "concurrency", v)?;
            if n == 0 {
                return Err(format!("{ctx}: `concurrency` must be at least 1"));
            }
            s.concurrency = n as usize;
        }
    }
    if let Some(v) = m.get("timeout_ms") {
        let n = uint(&ctx, "timeout_ms", v)?;
        if n == 0 {
            return Err(format!("{ctx}: `timeout_ms` must be at least 1"));
        }
        s.timeout_ms = n;
    }
    if let Some(v) = m.get("max_depth") {
        let n = uint(&ctx, "max_depth", v)?;
        if n == 0 {
            return Err(format!("{ctx}: `max_depth` must be at least 1"));
        }
        s.max_depth = n as usize;
    }
    if let Some(v) = m.get("max_payload_bytes") {
        s.max_payload_bytes = uint(&ctx, "max_payload_bytes", v)? as usize;
    }
    if let Some(v) = m.get("poll_interval_ms") {
        uint(&ctx, "poll_interval_ms", v)?;
        warnings.push(format!("{ctx}: `poll_interval_ms` is accepted and ignored: jobs are dispatched as soon as they are stored"));
    }
    if s.max_attempts == 0 {
        warnings.push(format!(
            "{ctx}: `max_retries: 0` runs each job once (as `max_retries: 1`)"
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_hold_a_default_queue() {
        let p = parse(&json!({})).unwrap();
        assert_eq!(p.options.queues.len(), 1);
        assert_eq!(p.options.queues["default"], QueueSettings::default());
        assert_eq!(p.storage, None);
    }

    #[test]
    fn reads_named_queues() {
        let p = parse(&json!({"queue_configs": {
            "payment": {"type": "fifo", "message_group_field": "tx", "max_retries": 10, "concurrency": 2},
            "email": {},
            "slow": {"backoff_ms": 50, "max_backoff_ms": 70, "timeout_ms": 5, "max_depth": 9, "max_payload_bytes": 100}
        }, "adapter": {"name": "builtin", "config": {"store_method": "file_based"}}}))
        .unwrap();
        let pay = &p.options.queues["payment"];
        assert!(pay.fifo);
        assert_eq!(pay.group_field.as_deref(), Some("tx"));
        assert_eq!((pay.max_attempts, pay.concurrency), (10, 2));
        assert_eq!(p.options.queues["email"], QueueSettings::default());
        let slow = &p.options.queues["slow"];
        assert_eq!(slow.backoff(1), Duration::from_millis(50));
        assert_eq!(slow.backoff(2), Duration::from_millis(70));
        assert_eq!(
            (slow.timeout_ms, slow.max_depth, slow.max_payload_bytes),
            (5, 9, 100)
        );
        assert_eq!(p.storage, Some(QueueStorage::Durable));
        assert!(p.options.queues.contains_key("default"));
    }

    #[test]
    fn fifo_without_concurrency_runs_one_group_at_a_time() {
        let p =
            parse(&json!({"queue_configs": {"f": {"type": "fifo", "message_group_field": "g"}}}))
                .unwrap();
        assert_eq!(p.options.queues["f"].concurrency, 1);
    }

    #[test]
    fn refuses_bad_entries_with_the_reference_messages() {
        let e = parse(&json!({"queue_configs": {"q": {"type": "lifo"}}})).unwrap_err();
        assert_eq!(
            e,
            "Queue 'q' has invalid type 'lifo'. Must be 'standard' or 'fifo'"
        );
        let e = parse(&json!({"queue_configs": {"q": {"type": "fifo"}}})).unwrap_err();
        assert_eq!(
            e,
            "Queue 'q' is of type 'fifo' but 'message_group_field' is not set"
        );
        let e = parse(&json!({"queue_configs": {"q": {"fifo": true}}})).unwrap_err();
        assert!(e.contains("unknown key `fifo`"), "{e}");
        let e = parse(&json!({"queue_configs": {"q": {"concurrency": 0}}})).unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
        let e = parse(&json!({"queue_configs": [{"name": "q"}]})).unwrap_err();
        assert!(e.contains("not a list"), "{e}");
        let e = parse(&json!({"adapter": {"name": "kafka"}})).unwrap_err();
        assert_eq!(
            e,
            "Adapter factory 'kafka' not found. Available: [builtin, redis]"
        );
        let e = parse(&json!({"adapter": {"name": "builtin", "config": {"store_method": "disk"}}}))
            .unwrap_err();
        assert!(e.contains("store_method"), "{e}");
    }

    #[test]
    fn backoff_doubles_and_saturates() {
        let s = QueueSettings {
            backoff_ms: 100,
            max_backoff_ms: u64::MAX,
            ..QueueSettings::default()
        };
        assert_eq!(s.backoff(1), Duration::from_millis(100));
        assert_eq!(s.backoff(2), Duration::from_millis(200));
        assert_eq!(s.backoff(3), Duration::from_millis(400));
        assert!(s.backoff(200) >= Duration::from_millis(100 << 40));
    }

    #[test]
    fn adapter_settings_feed_subscriber_defaults() {
        let p = parse(&json!({"adapter": {"config": {"max_attempts": 5, "backoff_ms": 10, "concurrency": 3, "bogus": 1}}})).unwrap();
        assert_eq!(p.options.subscriber.max_attempts, 5);
        assert_eq!(p.options.subscriber.backoff_ms, 10);
        assert_eq!(p.options.subscriber.concurrency, 3);
        assert!(p.warnings.iter().any(|w| w.contains("bogus")));
    }
}
