//! Logs from handlers: a bounded ring of records, fed by the SDKs' OTLP `LOGS` frames and the
//! `engine::log::*` functions, queryable through `engine::logs::list`, echoed on the console.
//!
//! Bounded: at most `capacity` records are kept; when full the oldest is dropped and counted
//! (`dropped` in query answers), so a chatty worker can never exhaust memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::worker::{lock, ConnId, WorkerConn};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        match s.to_ascii_lowercase().as_str() {
            "trace" => Some(Level::Trace),
            "debug" => Some(Level::Debug),
            "info" => Some(Level::Info),
            "warn" | "warning" => Some(Level::Warn),
            "error" | "fatal" => Some(Level::Error),
            _ => None,
        }
    }

    /// OTLP severity numbers: 1–4 trace, 5–8 debug, 9–12 info, 13–16 warn, 17–24 error/fatal.
    fn from_severity(n: i64) -> Level {
        match n {
            i64::MIN..=4 => Level::Trace,
            5..=8 => Level::Debug,
            9..=12 => Level::Info,
            13..=16 => Level::Warn,
            _ => Level::Error,
        }
    }
}

/// One kept log record.
#[derive(Debug, Clone, Serialize)]
pub struct LogRecord {
    pub seq: u64,
    pub time_unix_nano: u64,
    pub level: Level,
    pub message: String,
    pub data: Value,
    pub worker_id: Option<String>,
    pub worker_name: Option<String>,
    pub function_id: Option<String>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub service_name: Option<String>,
}

/// Filters of `engine::logs::list`.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub min_level: Option<Level>,
    pub function_id: Option<String>,
    /// Matches the worker name or id.
    pub worker: Option<String>,
    pub search: Option<String>,
    pub after_seq: Option<u64>,
    pub limit: Option<usize>,
}

struct Ring {
    records: VecDeque<LogRecord>,
    next_seq: u64,
    dropped: u64,
}

pub struct LogStore {
    capacity: usize,
    ring: Mutex<Ring>,
}

impl LogStore {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            ring: Mutex::new(Ring {
                records: VecDeque::new(),
                next_seq: 1,
                dropped: 0,
            }),
        }
    }

    /// Keeps a record (assigning its sequence number) and echoes it on the console.
    pub fn push(&self, mut record: LogRecord) {
        echo(&record);
        let mut ring = lock(&self.ring);
        record.seq = ring.next_seq;
        ring.next_seq += 1;
        if ring.records.len() >= self.capacity {
            ring.records.pop_front();
            ring.dropped += 1;
        }
        ring.records.push_back(record);
    }

    /// Matching records in sequence order (the newest `limit` of them), the next sequence
    /// number to poll from, and how many records were dropped for capacity so far.
    pub fn query(&self, q: &LogQuery) -> (Vec<LogRecord>, u64, u64) {
        let ring = lock(&self.ring);
        let search = q.search.as_ref().map(|s| s.to_lowercase());
        let mut out: Vec<LogRecord> = ring
            .records
            .iter()
            .filter(|r| q.after_seq.is_none_or(|s| r.seq > s))
            .filter(|r| q.min_level.is_none_or(|l| r.level >= l))
            .filter(|r| {
                q.function_id
                    .as_ref()
                    .is_none_or(|f| r.function_id.as_ref() == Some(f))
            })
            .filter(|r| {
                q.worker.as_ref().is_none_or(|w| {
                    r.worker_name.as_ref() == Some(w) || r.worker_id.as_ref() == Some(w)
                })
            })
            .filter(|r| {
                search
                    .as_ref()
                    .is_none_or(|s| r.message.to_lowercase().contains(s))
            })
            .cloned()
            .collect();
        let limit = q.limit.unwrap_or(1000).min(10_000);
        if out.len() > limit {
            out.drain(..out.len() - limit);
        }
        let next = out.last().map(|r| r.seq).or(q.after_seq).unwrap_or(0);
        (out, next, ring.dropped)
    }

    /// Parses an OTLP/JSON `ExportLogsServiceRequest` and keeps its records. `attribute`
    /// resolves a trace id to the function and worker that handled it.
    pub fn ingest_otlp(
        &self,
        payload: &[u8],
        source: Option<ConnId>,
        attribute: impl Fn(&str) -> Option<TraceOrigin>,
    ) -> Result<usize, String> {
        let root: Value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        let mut n = 0;
        for rl in array(&root, "resourceLogs") {
            let resource_attrs = attributes(rl.get("resource").unwrap_or(&Value::Null));
            let service_name = resource_attrs
                .get("service.name")
                .and_then(Value::as_str)
                .map(str::to_owned);
            for sl in array(rl, "scopeLogs") {
                for lr in array(sl, "logRecords") {
                    let attrs = attributes(lr);
                    let trace_id =
                        non_empty(lr.get("traceId")).or_else(|| non_empty(attrs.get("trace_id")));
                    let span_id =
                        non_empty(lr.get("spanId")).or_else(|| non_empty(attrs.get("span_id")));
                    let origin = trace_id.as_deref().and_then(&attribute);
                    let level = match lr.get("severityNumber").and_then(as_i64) {
                        Some(n) if n > 0 => Level::from_severity(n),
                        _ => lr
                            .get("severityText")
                            .and_then(Value::as_str)
                            .and_then(Level::parse)
                            .unwrap_or(Level::Info),
                    };
                    let message = match lr.get("body").map(any_value) {
                        Some(Value::String(s)) => s,
                        Some(Value::Null) | None => String::new(),
                        Some(other) => other.to_string(),
                    };
                    let time = lr
                        .get("timeUnixNano")
                        .and_then(as_i64)
                        .map(|t| t as u64)
                        .filter(|t| *t > 0)
                        .unwrap_or_else(now_nanos);
                    let function_id = attrs
                        .get("function_id")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .or_else(|| origin.as_ref().map(|o| o.function_id.clone()));
                    let (worker_id, worker_name) = match &origin {
                        Some(o) => (Some(o.worker_id.to_string()), Some(o.worker_name.clone())),
                        None => (source.as_ref().map(|s| s.to_string()), None),
                    };
                    self.push(LogRecord {
                        seq: 0,
                        time_unix_nano: time,
                        level,
                        message,
                        data: attrs.get("log.data").cloned().unwrap_or(Value::Null),
                        worker_id,
                        worker_name,
                        function_id,
                        trace_id,
                        span_id,
                        service_name: service_name.clone(),
                    });
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

fn echo(r: &LogRecord) {
    let worker = r.worker_name.as_deref().unwrap_or("-");
    let function = r.function_id.as_deref().unwrap_or("-");
    let data = if r.data.is_null() {
        String::new()
    } else {
        r.data.to_string()
    };
    match r.level {
        Level::Error => {
            tracing::error!(target: "trine::worker_log", worker, function, data = %data, "{}", r.message)
        }
        Level::Warn => {
            tracing::warn!(target: "trine::worker_log", worker, function, data = %data, "{}", r.message)
        }
        Level::Info => {
            tracing::info!(target: "trine::worker_log", worker, function, data = %data, "{}", r.message)
        }
        Level::Debug => {
            tracing::debug!(target: "trine::worker_log", worker, function, data = %data, "{}", r.message)
        }
        Level::Trace => {
            tracing::trace!(target: "trine::worker_log", worker, function, data = %data, "{}", r.message)
        }
    }
}

fn array<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn non_empty(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// OTLP `attributes: [{key, value: AnyValue}]` → JSON object.
fn attributes(v: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for kv in array(v, "attributes").chain(array(v, "values")) {
        if let Some(k) = kv.get("key").and_then(Value::as_str) {
            out.insert(
                k.to_owned(),
                kv.get("value").map(any_value).unwrap_or(Value::Null),
            );
        }
    }
    out
}

/// OTLP/JSON `AnyValue` → plain JSON.
fn any_value(v: &Value) -> Value {
    let Some(obj) = v.as_object() else {
        return v.clone();
    };
    if let Some(s) = obj.get("stringValue") {
        return s.clone();
    }
    if let Some(b) = obj.get("boolValue") {
        return b.clone();
    }
    if let Some(i) = obj.get("intValue") {
        return as_i64(i).map(Value::from).unwrap_or_else(|| i.clone());
    }
    if let Some(d) = obj.get("doubleValue") {
        return d.clone();
    }
    if let Some(a) = obj.get("arrayValue") {
        return Value::Array(array(a, "values").map(any_value).collect());
    }
    if let Some(kv) = obj.get("kvlistValue") {
        return Value::Object(attributes(kv));
    }
    if let Some(b) = obj.get("bytesValue") {
        return b.clone();
    }
    Value::Null
}

pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Who handled a trace: lets logs that arrive on a separate telemetry socket be attributed.
#[derive(Debug, Clone)]
pub struct TraceOrigin {
    pub function_id: String,
    pub worker_id: ConnId,
    pub worker_name: String,
}

/// Trace id → the function and worker of the latest call dispatched in that trace, bounded.
///
/// Calls the engine starts get a trace id it generates: a per-engine random prefix followed by a
/// call sequence number, so recording one is a slot write in a fixed ring (no hashing, no key
/// allocation) — this runs on every call. Trace ids started by workers ("foreign") go to a
/// small bounded map instead. Latest call wins in both, as a log is usually written by the
/// innermost handler of its trace.
pub struct TraceIndex {
    prefix: u64,
    next_seq: u64,
    ring: Vec<Option<RingSlot>>,
    capacity: usize,
    foreign: HashMap<String, Origin>,
    order: VecDeque<String>,
}

struct RingSlot {
    seq: u64,
    origin: Origin,
}

#[derive(Clone)]
struct Origin {
    function_id: String,
    worker_id: ConnId,
    // Weak: a disconnected worker's resources are not kept alive by attribution data.
    worker: std::sync::Weak<WorkerConn>,
}

impl Origin {
    fn resolve(&self) -> TraceOrigin {
        TraceOrigin {
            function_id: self.function_id.clone(),
            worker_id: self.worker_id.clone(),
            worker_name: self
                .worker
                .upgrade()
                .map(|w| w.name())
                .unwrap_or_else(|| self.worker_id.to_string()),
        }
    }
}

impl TraceIndex {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let mut prefix = uuid::Uuid::new_v4().as_u64_pair().0;
        if prefix == 0 {
            prefix = 1; // an all-zero trace id is invalid in W3C trace context
        }
        Self {
            prefix,
            next_seq: 0,
            ring: (0..capacity).map(|_| None).collect(),
            capacity,
            foreign: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Starts a trace for a call the engine dispatches and records who handles it. Returns the
    /// `traceparent` to send.
    pub fn start(&mut self, function_id: &str, worker: &Arc<WorkerConn>) -> String {
        self.next_seq += 1;
        let seq = self.next_seq;
        let span = uuid::Uuid::new_v4().as_u64_pair().1 | 1;
        self.put(seq, function_id, worker);
        format!("00-{:016x}{:016x}-{:016x}-01", self.prefix, seq, span)
    }

    /// Records a call dispatched within an existing trace (the caller's `traceparent`).
    pub fn record(&mut self, traceparent: &str, function_id: &str, worker: &Arc<WorkerConn>) {
        let Some(trace_id) = trace_id_of(traceparent) else {
            return;
        };
        if let Some(seq) = self.own_seq(trace_id) {
            self.put(seq, function_id, worker);
            return;
        }
        let origin = Origin {
            function_id: function_id.to_owned(),
            worker_id: worker.id.clone(),
            worker: Arc::downgrade(worker),
        };
        if self.foreign.insert(trace_id.to_owned(), origin).is_none() {
            self.order.push_back(trace_id.to_owned());
            if self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.foreign.remove(&old);
                }
            }
        }
    }

    pub fn lookup(&self, trace_id: &str) -> Option<TraceOrigin> {
        match self.own_seq(trace_id) {
            Some(seq) => match &self.ring[(seq % self.capacity as u64) as usize] {
                Some(slot) if slot.seq == seq => Some(slot.origin.resolve()),
                _ => None,
            },
            None => self.foreign.get(trace_id).map(Origin::resolve),
        }
    }

    fn put(&mut self, seq: u64, function_id: &str, worker: &Arc<WorkerConn>) {
        let idx = (seq % self.capacity as u64) as usize;
        self.ring[idx] = Some(RingSlot {
            seq,
            origin: Origin {
                function_id: function_id.to_owned(),
                worker_id: worker.id.clone(),
                worker: Arc::downgrade(worker),
            },
        });
    }

    /// The sequence number of a trace id this engine generated.
    fn own_seq(&self, trace_id: &str) -> Option<u64> {
        if trace_id.len() != 32 {
            return None;
        }
        let prefix = u64::from_str_radix(&trace_id[..16], 16).ok()?;
        if prefix != self.prefix {
            return None;
        }
        u64::from_str_radix(&trace_id[16..], 16).ok()
    }
}

fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let _version = parts.next()?;
    let id = parts.next()?;
    (id.len() == 32).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(level: Level, msg: &str) -> LogRecord {
        LogRecord {
            seq: 0,
            time_unix_nano: 1,
            level,
            message: msg.into(),
            data: Value::Null,
            worker_id: None,
            worker_name: Some("w".into()),
            function_id: None,
            trace_id: None,
            span_id: None,
            service_name: None,
        }
    }

    #[test]
    fn ring_is_bounded_and_counts_drops() {
        let store = LogStore::new(3);
        for i in 0..5 {
            store.push(rec(Level::Info, &format!("m{i}")));
        }
        let (logs, next, dropped) = store.query(&LogQuery::default());
        assert_eq!(
            logs.iter().map(|r| r.message.as_str()).collect::<Vec<_>>(),
            ["m2", "m3", "m4"]
        );
        assert_eq!(next, 5);
        assert_eq!(dropped, 2);
        let (logs, _, _) = store.query(&LogQuery {
            after_seq: Some(4),
            ..Default::default()
        });
        assert_eq!(logs.len(), 1);
    }

    #[test]
    fn filters_by_level_and_search() {
        let store = LogStore::new(10);
        store.push(rec(Level::Debug, "quiet"));
        store.push(rec(Level::Warn, "Disk low"));
        store.push(rec(Level::Error, "boom"));
        let (logs, _, _) = store.query(&LogQuery {
            min_level: Some(Level::Warn),
            ..Default::default()
        });
        assert_eq!(logs.len(), 2);
        let (logs, _, _) = store.query(&LogQuery {
            search: Some("disk".into()),
            ..Default::default()
        });
        assert_eq!(logs[0].message, "Disk low");
    }

    #[test]
    fn parses_node_otlp_log_record() {
        let frame = json!({"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"iii-node"}}]},
            "scopeLogs":[{"scope":{"name":"iii-node"},"logRecords":[{"timeUnixNano":"1700000000000000000",
            "severityNumber":13,"body":{"stringValue":"disk low"},
            "attributes":[{"key":"log.data","value":{"kvlistValue":{"values":[{"key":"k","value":{"intValue":"1"}},{"key":"s","value":{"stringValue":"x"}}]}}},
                          {"key":"trace_id","value":{"stringValue":"abc"}}]}]}]}]});
        let store = LogStore::new(10);
        let n = store
            .ingest_otlp(frame.to_string().as_bytes(), None, |_| None)
            .unwrap();
        assert_eq!(n, 1);
        let (logs, _, _) = store.query(&LogQuery::default());
        let r = &logs[0];
        assert_eq!(r.message, "disk low");
        assert_eq!(r.level, Level::Warn);
        assert_eq!(r.data, json!({"k":1,"s":"x"}));
        assert_eq!(r.trace_id.as_deref(), Some("abc"));
        assert_eq!(r.service_name.as_deref(), Some("iii-node"));
        assert_eq!(r.time_unix_nano, 1_700_000_000_000_000_000);
    }

    #[test]
    fn trace_index_attributes_own_and_foreign_traces() {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let w = Arc::new(WorkerConn::new(
            "w1".into(),
            tx,
            None,
            tokio_util::sync::CancellationToken::new(),
        ));
        let mut idx = TraceIndex::new(4);
        let tp = idx.start("a::root", &w);
        let trace_id = trace_id_of(&tp).unwrap().to_owned();
        assert_eq!(idx.lookup(&trace_id).unwrap().function_id, "a::root");
        // A nested call in the same trace: latest wins.
        idx.record(&tp, "a::inner", &w);
        assert_eq!(idx.lookup(&trace_id).unwrap().function_id, "a::inner");
        // A trace started by a worker.
        let foreign = "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01";
        idx.record(foreign, "b::x", &w);
        let got = idx.lookup("0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(
            (got.function_id.as_str(), got.worker_name.as_str()),
            ("b::x", "w1")
        );
        // The ring forgets old traces instead of misattributing them.
        for _ in 0..4 {
            idx.start("c::y", &w);
        }
        assert!(idx.lookup(&trace_id).is_none());
    }

    #[test]
    fn rejects_non_json() {
        let store = LogStore::new(10);
        assert!(store.ingest_otlp(b"nope", None, |_| None).is_err());
    }
}
