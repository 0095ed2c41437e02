//! The `cron` trigger type (worker `iii-cron`): calls a function on a schedule.
//!
//! Config `{expression, condition_function_id?}`. Expressions are parsed by `croner` and evaluated
//! in UTC; accepted forms:
//! - 5 fields `min hour day-of-month month day-of-week` (seconds = 0; crontab);
//! - 6 fields `sec min hour day-of-month month day-of-week` (the reference's form);
//! - 7 fields, the 6 plus a trailing `year`;
//! - `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`, `@hourly`.
//!
//! Day-of-week follows crontab (POSIX/Vixie): 0 and 7 = Sunday, 1 = Monday, names `SUN`..`SAT`.
//! iii v0.11.6 read 1 as Sunday, so a 6/7-field expression with a numeric day of week logs a
//! warning at registration suggesting names. As in crontab, when both day fields are restricted
//! a day matching *either* runs (a `+` before the day-of-week field asks for both); iii v0.11.6
//! required both, which is also warned about. A missing, empty, unparseable or never-firing
//! expression rejects the registration with an error sent to the worker.
//!
//! Contract:
//! - The handler (and the condition function first, if any) receives
//!   `{"trigger":"cron","job_id":<trigger id>,"scheduled_time":<RFC 3339>,"actual_time":<RFC 3339>}`
//!   with the trigger's metadata as call metadata. Only a literal `false` from the condition
//!   skips the run; a condition error skips it too (logged). Handler errors are logged only.
//! - Each trigger has its own task. A run is awaited before the next tick is computed, so runs
//!   of one trigger never overlap: ticks that pass during a run are skipped and counted.
//! - Exactly once per tick: before a tick runs it is recorded in [`Space::CronTicks`] under a
//!   key of (function id, expression) — not the trigger id, which a restarted worker draws
//!   anew — with an fsync. A tick at or before the recorded one never runs again, also after an
//!   engine restart, a worker re-registration, or with two triggers sharing the function and
//!   expression (they share one schedule: each tick runs once for all of them). If the record
//!   cannot be written the tick is skipped (logged as an error). Without a store the record
//!   lives in memory for the life of the engine.
//! - Ticks that fell while the engine was down are not run; neither is a tick found more than
//!   [`MAX_LATENESS`] late on waking (the host was suspended or the clock jumped forward). Sleeps
//!   are capped at one minute and the wall clock is read again after each, so clock steps in
//!   either direction are noticed.
//! - Records are a few bytes per distinct (function, expression) ever scheduled and are kept when
//!   the trigger goes away (a re-registration needs them).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Timelike, Utc};
use croner::Cron;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use trine_store::{Batch, Space, Store, StoreError};

use crate::engine::{Call, Caller, Engine, WeakEngine};
use crate::registry::{TriggerEntry, TriggerProvider};
use crate::state::json_type;
use crate::state::triggers::opt_string;
use crate::worker::lock;

/// Longest accepted expression, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 256;

/// A tick found later than this on waking is treated as missed, not run.
pub const MAX_LATENESS: Duration = Duration::from_secs(60);

/// Longest single sleep; the wall clock is checked again after each.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Skipped ticks are counted up to this many per gap (an every-second schedule after a long
/// stall would otherwise be walked tick by tick).
const COUNT_CAP: u64 = 10_000;

const FORMATS: &str = "expected 5 fields `min hour day-of-month month day-of-week`, 6 fields \
    `sec min hour day-of-month month day-of-week`, 7 fields (6 plus `year`), or one of @yearly, \
    @annually, @monthly, @weekly, @daily, @hourly";

/// A parsed cron expression.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    expression: String,
    /// Day-of-week given by number in a 6/7-field expression (read differently by iii v0.11.6).
    numeric_weekday: bool,
    /// Both day fields restricted in a 6/7-field expression (iii v0.11.6 required both).
    both_day_fields: bool,
}

/// Whitespace collapsed to single spaces, upper-cased: the form used in schedule keys.
fn normalize(expression: &str) -> String {
    expression
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase()
}

/// Whether a day-of-week field names a day by number (`*/n` steps are the same in both
/// numberings: they start at Sunday).
fn weekday_is_numeric(field: &str) -> bool {
    let field = field.trim_start_matches('+');
    field.split(',').any(|item| {
        let day = item.split('#').next().unwrap_or_default();
        !(day.starts_with('*') || day.starts_with('?')) && day.chars().any(|c| c.is_ascii_digit())
    })
}

/// Parses a cron expression (see the module docs for the accepted forms).
pub fn parse_expression(expression: &str) -> Result<Schedule, String> {
    let normalized = normalize(expression);
    if normalized.is_empty() {
        return Err(format!("cron expression is empty; {FORMATS}"));
    }
    if expression.len() > MAX_EXPRESSION_BYTES {
        return Err(format!(
            "cron expression is longer than {MAX_EXPRESSION_BYTES} bytes"
        ));
    }
    let cron: Cron = normalized.parse().map_err(|e| {
        format!(
            "invalid cron expression `{}`: {e}; {FORMATS}",
            expression.trim()
        )
    })?;
    let fields: Vec<&str> = normalized.split(' ').collect();
    let (numeric_weekday, both_day_fields) = if fields.len() >= 6 {
        let restricted = |f: &str| f != "*" && f != "?";
        (
            weekday_is_numeric(fields[5]),
            restricted(fields[3]) && restricted(fields[5]) && !fields[5].starts_with('+'),
        )
    } else {
        (false, false)
    };
    Ok(Schedule {
        cron,
        expression: normalized,
        numeric_weekday,
        both_day_fields,
    })
}

fn whole_second(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_nanosecond(0).unwrap_or(t)
}

impl Schedule {
    /// The expression in normalized form (single spaces, upper case).
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The first occurrence strictly after `t`; `None` if there is none.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Occurrences are whole seconds: the next one after `t` is the next one after its second.
        self.cron.find_next_occurrence(&whole_second(t), false).ok()
    }

    /// The last occurrence at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&whole_second(t), true)
            .ok()
    }

    /// Occurrences in `(after, until]`, counted up to a cap.
    fn count_in(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> u64 {
        let mut n = 0;
        let mut t = after;
        while n < COUNT_CAP {
            match self.next_after(t) {
                Some(next) if next <= until => {
                    n += 1;
                    t = next;
                }
                _ => break,
            }
        }
        n
    }
}

/// The next tick to schedule: strictly after both `now` and the last recorded tick, so a
/// recorded tick is never run again even when the clock reads earlier than it.
pub fn next_tick(
    schedule: &Schedule,
    last_recorded: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let base = last_recorded.map_or(now, |last| last.max(now));
    schedule.next_after(base)
}

/// What to do on waking for a tick `scheduled` at wall-clock time `now` (≥ `scheduled`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wake {
    /// The most recent due tick; it runs unless it is too late.
    pub due: DateTime<Utc>,
    pub run: bool,
    /// Ticks not run: older due ticks, plus `due` itself when too late.
    pub missed: u64,
}

pub(crate) fn plan_wake(schedule: &Schedule, scheduled: DateTime<Utc>, now: DateTime<Utc>) -> Wake {
    let due = schedule
        .latest_at_or_before(now)
        .filter(|d| *d >= scheduled)
        .unwrap_or(scheduled);
    // Ticks in [scheduled, due): `count_in` counts (scheduled, due], the same number.
    let mut missed = schedule.count_in(scheduled, due);
    let late = (now - due).to_std().unwrap_or_default() > MAX_LATENESS;
    if late {
        missed += 1;
    }
    Wake {
        due,
        run: !late,
        missed,
    }
}

/// Store key of a schedule: length-prefixed function id, then the normalized expression.
pub fn schedule_key(function_id: &str, expression: &str) -> Vec<u8> {
    let expression = normalize(expression);
    let mut key = Vec::with_capacity(4 + function_id.len() + expression.len());
    key.extend_from_slice(&(function_id.len() as u32).to_be_bytes());
    key.extend_from_slice(function_id.as_bytes());
    key.extend_from_slice(expression.as_bytes());
    key
}

/// Stored value: the tick's unix time in milliseconds, 8 bytes little-endian.
pub fn encode_tick(tick_ms: i64) -> [u8; 8] {
    tick_ms.to_le_bytes()
}

/// Reads a stored tick; `None` for a malformed value.
pub fn decode_tick(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_le_bytes(bytes.try_into().ok()?))
}

fn from_ms(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

/// Outcome of claiming a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// Recorded: this task runs the tick.
    Won,
    /// A tick at or after it was already recorded (value: that tick, ms).
    Taken(i64),
}

/// Last tick this engine knows was recorded for one schedule key; the lock also serializes
/// claims of that key.
type Slot = Arc<Mutex<Option<i64>>>;

fn stored_tick(store: &dyn Store, key: &[u8]) -> Result<Option<i64>, StoreError> {
    Ok(store.get(Space::CronTicks, key)?.and_then(|v| {
        let t = decode_tick(&v);
        if t.is_none() {
            tracing::warn!(
                len = v.len(),
                "malformed cron tick record ignored (it will be overwritten)"
            );
        }
        t
    }))
}

/// Blocking: records `tick_ms` unless an equal or later tick is recorded already.
fn claim(
    store: Option<&dyn Store>,
    slot: &Mutex<Option<i64>>,
    key: &[u8],
    tick_ms: i64,
) -> Result<Claim, StoreError> {
    let mut last = lock(slot);
    let mut known = *last;
    if let Some(store) = store {
        known = known.max(stored_tick(store, key)?);
    }
    if let Some(k) = known.filter(|k| *k >= tick_ms) {
        *last = Some(k);
        return Ok(Claim::Taken(k));
    }
    if let Some(store) = store {
        let mut batch = Batch::new();
        batch.put(
            Space::CronTicks,
            key.to_vec(),
            encode_tick(tick_ms).to_vec(),
        );
        store.commit(batch, true)?;
    }
    *last = Some(tick_ms);
    Ok(Claim::Won)
}

#[derive(Default)]
struct Counters {
    runs: AtomicU64,
    condition_skips: AtomicU64,
    condition_errors: AtomicU64,
    handler_errors: AtomicU64,
    overlap_skips: AtomicU64,
    missed: AtomicU64,
    already_recorded: AtomicU64,
    record_errors: AtomicU64,
}

/// One registered trigger, as its task sees it.
struct Job {
    trigger_id: String,
    function_id: String,
    condition: Option<String>,
    metadata: Option<Value>,
    schedule: Schedule,
    key: Vec<u8>,
    slot: Slot,
}

/// The running cron module: the `cron` trigger provider.
pub struct CronModule {
    engine: WeakEngine,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    store: Option<Arc<dyn Store>>,
    /// Trigger id → stop token of its task.
    jobs: Mutex<HashMap<String, CancellationToken>>,
    /// Schedule key → last recorded tick known here.
    slots: Mutex<HashMap<Vec<u8>, Slot>>,
    /// Expressions already warned about.
    warned: Mutex<HashSet<String>>,
    counters: Counters,
}

/// Registers the `cron` trigger type on `engine`. With `store`, fired ticks are recorded
/// durably (exactly once per tick across restarts); `None` keeps them in memory.
pub fn install(engine: &Engine, store: Option<Arc<dyn Store>>) -> Arc<CronModule> {
    let module = Arc::new(CronModule {
        engine: engine.downgrade(),
        tasks: engine.tasks().clone(),
        shutdown: engine.shutdown_token().clone(),
        store,
        jobs: Mutex::default(),
        slots: Mutex::default(),
        warned: Mutex::default(),
        counters: Counters::default(),
    });
    engine.registry().add_builtin_trigger_type(
        "cron",
        "Calls a function on a cron schedule (UTC)",
        Arc::new(Provider(module.clone())),
    );
    module
}

/// The trigger provider; a separate type so the registry holds the module only through it.
struct Provider(Arc<CronModule>);

impl TriggerProvider for Provider {
    fn register(&self, trigger: &TriggerEntry) -> Result<(), String> {
        self.0.register(trigger)
    }

    fn unregister(&self, trigger: &TriggerEntry) {
        if let Some(stop) = lock(&self.0.jobs).remove(&trigger.id) {
            stop.cancel();
        }
    }
}

impl CronModule {
    /// Counters since start and the number of scheduled triggers.
    pub fn stats(&self) -> Value {
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "triggers": lock(&self.jobs).len(),
            "durable": self.store.is_some(),
            "runs": n(&c.runs),
            "condition_skips": n(&c.condition_skips),
            "condition_errors": n(&c.condition_errors),
            "handler_errors": n(&c.handler_errors),
            "overlap_skips": n(&c.overlap_skips),
            "missed": n(&c.missed),
            "already_recorded": n(&c.already_recorded),
            "record_errors": n(&c.record_errors),
        })
    }

    fn register(self: &Arc<Self>, trigger: &TriggerEntry) -> Result<(), String> {
        let Value::Object(config) = &trigger.config else {
            return Err(format!(
                "Failed to parse trigger config: expected an object with `expression` and optional `condition_function_id`, got {}",
                json_type(&trigger.config)
            ));
        };
        let expression = opt_string(config, "expression")?.ok_or_else(|| {
            format!("Failed to parse trigger config: `expression` is required; {FORMATS}")
        })?;
        let schedule = parse_expression(&expression)?;
        if schedule.next_after(Utc::now()).is_none() {
            return Err(format!(
                "cron expression `{}` never fires after the current time",
                expression.trim()
            ));
        }
        let condition = opt_string(config, "condition_function_id")?.filter(|c| !c.is_empty());
        if tokio::runtime::Handle::try_current().is_err() {
            return Err("cron triggers can only be registered inside the engine's runtime".into());
        }
        self.warn_once(&schedule);
        let key = schedule_key(&trigger.function_id, schedule.expression());
        let slot = lock(&self.slots).entry(key.clone()).or_default().clone();
        let job = Job {
            trigger_id: trigger.id.clone(),
            function_id: trigger.function_id.clone(),
            condition,
            metadata: trigger.metadata.clone(),
            schedule,
            key,
            slot,
        };
        let stop = self.shutdown.child_token();
        if let Some(previous) = lock(&self.jobs).insert(trigger.id.clone(), stop.clone()) {
            previous.cancel();
        }
        self.tasks.spawn(self.clone().run_job(job, stop));
        Ok(())
    }

    fn warn_once(&self, schedule: &Schedule) {
        if !(schedule.numeric_weekday || schedule.both_day_fields) {
            return;
        }
        if !lock(&self.warned).insert(schedule.expression.clone()) {
            return;
        }
        if schedule.numeric_weekday {
            tracing::warn!(expression = %schedule.expression,
                "cron day-of-week numbers follow crontab here (0 or 7 = Sunday, 1 = Monday); iii v0.11.6 read 1 as Sunday. Use names (e.g. MON-FRI) to be unambiguous");
        }
        if schedule.both_day_fields {
            tracing::warn!(expression = %schedule.expression,
                "both day-of-month and day-of-week are restricted: as in crontab, a day matching either runs; iii v0.11.6 required both. Prefix the day-of-week field with `+` to require both");
        }
    }

    /// Last tick recorded for `job`'s schedule (memory and store).
    async fn last_recorded(&self, job: &Job) -> Result<Option<i64>, String> {
        let known = *lock(&job.slot);
        let Some(store) = self.store.clone() else {
            return Ok(known);
        };
        let key = job.key.clone();
        let stored = tokio::task::spawn_blocking(move || stored_tick(store.as_ref(), &key))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(known.max(stored))
    }

    async fn claim(&self, job: &Job, tick_ms: i64) -> Result<Claim, String> {
        match self.store.clone() {
            None => claim(None, &job.slot, &job.key, tick_ms).map_err(|e| e.to_string()),
            Some(store) => {
                let slot = job.slot.clone();
                let key = job.key.clone();
                tokio::task::spawn_blocking(move || {
                    claim(Some(store.as_ref()), &slot, &key, tick_ms)
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
            }
        }
    }

    /// The trigger's loop: sleep to the next tick, claim it, run it, repeat.
    async fn run_job(self: Arc<Self>, job: Job, stop: CancellationToken) {
        let c = &self.counters;
        let mut last = match self.last_recorded(&job).await {
            Ok(t) => t.and_then(from_ms),
            Err(e) => {
                tracing::error!(trigger_id = %job.trigger_id, error = %e,
                    "could not read the last cron tick; scheduling from now");
                None
            }
        };
        let mut overlapped_before = false;
        loop {
            let Some(scheduled) = next_tick(&job.schedule, last, Utc::now()) else {
                tracing::info!(trigger_id = %job.trigger_id, expression = %job.schedule.expression,
                    "cron schedule has no further occurrences");
                return;
            };
            // Sleep in bounded steps against the wall clock.
            loop {
                let now = Utc::now();
                if now >= scheduled {
                    break;
                }
                let wait = (scheduled - now)
                    .to_std()
                    .unwrap_or_default()
                    .min(MAX_SLEEP);
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            if stop.is_cancelled() {
                return;
            }
            let wake = plan_wake(&job.schedule, scheduled, Utc::now());
            last = Some(wake.due);
            if wake.missed > 0 {
                c.missed.fetch_add(wake.missed, Ordering::Relaxed);
                tracing::info!(trigger_id = %job.trigger_id, missed = wake.missed,
                    "cron ticks missed (the host stalled or the clock jumped forward)");
            }
            if !wake.run {
                continue;
            }
            match self.claim(&job, wake.due.timestamp_millis()).await {
                Ok(Claim::Won) => {}
                Ok(Claim::Taken(k)) => {
                    c.already_recorded.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(trigger_id = %job.trigger_id, tick = %wake.due.to_rfc3339(),
                        "cron tick already ran for this schedule; skipped");
                    last = last.max(from_ms(k));
                    continue;
                }
                Err(e) => {
                    c.record_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(trigger_id = %job.trigger_id, tick = %wake.due.to_rfc3339(), error = %e,
                        "could not record the cron tick; tick skipped");
                    continue;
                }
            }
            let Some(engine) = self.engine.upgrade() else {
                return;
            };
            self.run_tick(&engine, &job, wake.due).await;
            drop(engine);
            let skipped = job.schedule.count_in(wake.due, Utc::now());
            if skipped > 0 {
                c.overlap_skips.fetch_add(skipped, Ordering::Relaxed);
                if overlapped_before {
                    tracing::debug!(trigger_id = %job.trigger_id, skipped, "cron run outlasted later ticks; they were skipped");
                } else {
                    overlapped_before = true;
                    tracing::info!(trigger_id = %job.trigger_id, skipped,
                        "cron run outlasted later ticks; they were skipped (runs of one trigger never overlap)");
                }
            }
        }
    }

    /// Condition (if any), then the handler; both awaited, failures logged.
    async fn run_tick(&self, engine: &Engine, job: &Job, tick: DateTime<Utc>) {
        let c = &self.counters;
        let payload = json!({
            "trigger": "cron",
            "job_id": job.trigger_id,
            "scheduled_time": tick.to_rfc3339(),
            "actual_time": Utc::now().to_rfc3339(),
        });
        let call = |fid: &str, payload: Value| {
            let mut call = Call::new(fid, payload, Caller::Engine);
            call.metadata = job.metadata.clone();
            call
        };
        if let Some(cond) = &job.condition {
            match engine.invoke(call(cond, payload.clone())).await {
                Ok(Some(Value::Bool(false))) => {
                    c.condition_skips.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    c.condition_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(trigger_id = %job.trigger_id, condition_function_id = %cond,
                        code = %e.code, error = %e.message, "cron condition failed; run skipped");
                    return;
                }
            }
        }
        c.runs.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = engine.invoke(call(&job.function_id, payload)).await {
            c.handler_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(trigger_id = %job.trigger_id, function_id = %job.function_id,
                code = %e.code, error = %e.message, "cron handler failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trine_store::MemoryStore;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(expr: &str, after: &str) -> String {
        parse_expression(expr)
            .unwrap()
            .next_after(at(after))
            .unwrap()
            .to_rfc3339()
    }

    #[test]
    fn five_fields_are_crontab_with_seconds_zero() {
        // 2024-06-01 is a Saturday.
        assert_eq!(
            next("0 8 * * 1-5", "2024-06-01T10:00:00Z"),
            "2024-06-03T08:00:00+00:00"
        );
        assert_eq!(
            next("* * * * *", "2024-06-01T10:00:00.500Z"),
            "2024-06-01T10:01:00+00:00"
        );
        assert_eq!(
            next("0 * * * *", "2024-06-01T10:00:00Z"),
            "2024-06-01T11:00:00+00:00"
        );
    }

    #[test]
    fn six_and_seven_fields_put_seconds_first_and_year_last() {
        assert_eq!(
            next("0 0 9 * * MON", "2024-06-01T00:00:00Z"),
            "2024-06-03T09:00:00+00:00"
        );
        assert_eq!(
            next("* * * * * *", "2024-06-01T10:00:00.999Z"),
            "2024-06-01T10:00:01+00:00"
        );
        assert_eq!(
            next("*/15 * * * * *", "2024-06-01T10:00:14Z"),
            "2024-06-01T10:00:15+00:00"
        );
        assert_eq!(
            next("30 0 12 1 1 * 2030", "2024-06-01T00:00:00Z"),
            "2030-01-01T12:00:30+00:00"
        );
    }

    #[test]
    fn weekday_numbers_follow_crontab() {
        // Saturday 2024-06-01: 0 and 7 are Sunday, 1 is Monday.
        for (expr, want) in [
            ("0 0 0 * * 0", "2024-06-02T00:00:00+00:00"),
            ("0 0 0 * * 7", "2024-06-02T00:00:00+00:00"),
            ("0 0 0 * * SUN", "2024-06-02T00:00:00+00:00"),
            ("0 0 0 * * 1", "2024-06-03T00:00:00+00:00"),
            ("0 0 0 * * MON-FRI", "2024-06-03T00:00:00+00:00"),
        ] {
            assert_eq!(next(expr, "2024-06-01T12:00:00Z"), want, "{expr}");
        }
        assert!(parse_expression("0 0 0 * * 1").unwrap().numeric_weekday);
        assert!(parse_expression("0 0 0 * * 1-5").unwrap().numeric_weekday);
        assert!(
            !parse_expression("0 0 0 * * MON-FRI")
                .unwrap()
                .numeric_weekday
        );
        assert!(!parse_expression("0 0 0 * * */2").unwrap().numeric_weekday);
        assert!(!parse_expression("0 8 * * 1-5").unwrap().numeric_weekday);
        assert!(parse_expression("0 0 0 13 * FRI").unwrap().both_day_fields);
        assert!(!parse_expression("0 0 0 13 * +FRI").unwrap().both_day_fields);
    }

    #[test]
    fn nicknames() {
        let after = "2024-06-01T12:00:00Z";
        assert_eq!(next("@yearly", after), "2025-01-01T00:00:00+00:00");
        assert_eq!(next("@annually", after), "2025-01-01T00:00:00+00:00");
        assert_eq!(next("@monthly", after), "2024-07-01T00:00:00+00:00");
        assert_eq!(next("@weekly", after), "2024-06-02T00:00:00+00:00");
        assert_eq!(next("@daily", after), "2024-06-02T00:00:00+00:00");
        assert_eq!(next("@hourly", after), "2024-06-01T13:00:00+00:00");
    }

    #[test]
    fn bad_expressions_are_rejected_with_the_reason_and_the_formats() {
        for bad in [
            "",
            "   ",
            "* * * *",
            "* * * * * * * *",
            "61 * * * * *",
            "x * * * *",
            "@every 5s",
        ] {
            let e = parse_expression(bad).unwrap_err();
            assert!(e.contains("expected 5 fields"), "{bad}: {e}");
        }
        assert!(parse_expression(&"1,".repeat(200)).is_err());
    }

    #[test]
    fn next_tick_never_repeats_a_recorded_tick() {
        let s = parse_expression("0 * * * * *").unwrap();
        let recorded = at("2024-06-01T10:00:00Z");
        // The clock reads just before the recorded tick (another engine's clock ran ahead, or
        // this one stepped back): the recorded tick must not come round again.
        let now = at("2024-06-01T09:59:59.400Z");
        assert_eq!(s.next_after(now), Some(recorded));
        assert_eq!(
            next_tick(&s, Some(recorded), now),
            Some(at("2024-06-01T10:01:00Z"))
        );
        assert_eq!(next_tick(&s, None, now), Some(recorded));
        // A recorded tick in the past does not hold the schedule back.
        let later = at("2024-06-01T10:05:30Z");
        assert_eq!(
            next_tick(&s, Some(recorded), later),
            Some(at("2024-06-01T10:06:00Z"))
        );
    }

    #[test]
    fn waking_late_runs_only_the_latest_due_tick() {
        let s = parse_expression("* * * * * *").unwrap();
        let scheduled = at("2024-06-01T10:00:00Z");
        assert_eq!(
            plan_wake(&s, scheduled, at("2024-06-01T10:00:00.003Z")),
            Wake {
                due: scheduled,
                run: true,
                missed: 0
            }
        );
        assert_eq!(
            plan_wake(&s, scheduled, at("2024-06-01T10:00:03.2Z")),
            Wake {
                due: at("2024-06-01T10:00:03Z"),
                run: true,
                missed: 3
            }
        );
        let hourly = parse_expression("@hourly").unwrap();
        let w = plan_wake(
            &hourly,
            at("2024-06-01T10:00:00Z"),
            at("2024-06-01T12:30:00Z"),
        );
        assert_eq!(
            w,
            Wake {
                due: at("2024-06-01T12:00:00Z"),
                run: false,
                missed: 3
            }
        );
    }

    #[test]
    fn skipped_ticks_are_counted() {
        let s = parse_expression("* * * * * *").unwrap();
        assert_eq!(
            s.count_in(at("2024-06-01T10:00:00Z"), at("2024-06-01T10:00:02.5Z")),
            2
        );
        assert_eq!(
            s.count_in(at("2024-06-01T10:00:00Z"), at("2024-06-01T10:00:00.9Z")),
            0
        );
    }

    #[test]
    fn schedule_keys_ignore_spacing_and_case_and_cannot_collide() {
        assert_eq!(
            schedule_key("f", "0 0 9 * * mon"),
            schedule_key("f", " 0  0 9 * *  MON ")
        );
        assert_ne!(
            schedule_key("f", "* * * * * *"),
            schedule_key("g", "* * * * * *")
        );
        assert_ne!(
            schedule_key("a", "1 * * * * *"),
            schedule_key("a1", " * * * * *")
        );
        assert_eq!(
            decode_tick(&encode_tick(1_717_236_000_000)),
            Some(1_717_236_000_000)
        );
        assert_eq!(decode_tick(b"short"), None);
    }

    #[test]
    fn claims_are_exactly_once_per_tick_and_survive_a_new_slot() {
        let store = MemoryStore::new();
        let key = schedule_key("f", "* * * * * *");
        let slot = Mutex::new(None);
        assert_eq!(claim(Some(&store), &slot, &key, 1000).unwrap(), Claim::Won);
        assert_eq!(
            claim(Some(&store), &slot, &key, 1000).unwrap(),
            Claim::Taken(1000)
        );
        assert_eq!(
            claim(Some(&store), &slot, &key, 999).unwrap(),
            Claim::Taken(1000)
        );
        // A fresh slot (a restarted engine) still sees the stored tick.
        let fresh = Mutex::new(None);
        assert_eq!(
            claim(Some(&store), &fresh, &key, 1000).unwrap(),
            Claim::Taken(1000)
        );
        assert_eq!(claim(Some(&store), &fresh, &key, 2000).unwrap(), Claim::Won);
        assert_eq!(
            store
                .get(Space::CronTicks, &key)
                .unwrap()
                .as_deref()
                .and_then(decode_tick),
            Some(2000)
        );
        // Without a store the slot alone remembers.
        let mem = Mutex::new(None);
        assert_eq!(claim(None, &mem, &key, 5).unwrap(), Claim::Won);
        assert_eq!(claim(None, &mem, &key, 5).unwrap(), Claim::Taken(5));
    }

    #[test]
    fn never_firing_expressions_have_no_next_tick() {
        for e in ["0 0 0 1 1 * 2020", "0 0 0 30 2 *", "0 0 0 31 4 *"] {
            let s = parse_expression(e).unwrap();
            assert_eq!(s.next_after(at("2024-06-01T00:00:00Z")), None, "{e}");
        }
    }
}
