//! Crash test of the durable state module: `trine serve` is killed with SIGKILL under write load
//! and restarted on the same data directory, many times in a row.
//!
//! Each cycle: 16 writer tasks `state::set` 32 keys of scope `crash` as fast as they can (each key
//! is owned by one writer; its value is `{"w": writer, "n": counter, "pad": <1 KiB>}` with `n`
//! increasing by one per attempted write), a `state` trigger on the scope records every event,
//! and 100–600 ms into the load (random) the engine gets SIGKILL. After the restart:
//! - (a) every acknowledged write is there: `state::get` returns the last acknowledged `n` of the
//!   key, or the write that was in flight at the kill (which may or may not have landed);
//! - (b) within 20 s every acknowledged write (and every write in flight at a kill that turned
//!   out committed) has reached the trigger at least once, and per key the events, redeliveries
//!   (exact duplicates) aside, are in commit order: `n` strictly increasing, each `old_value`
//!   equal to the previous event's `new_value` (the first one's is null: the data directory
//!   starts empty). No delivery may end as a dead letter.
//!
//! Variations, so more of the recovery paths are hit:
//! - after every other restart (b) is not awaited: the next load starts at once, so deliveries
//!   owed from before the crash are redelivered while new events join the same lanes, and the next
//!   kill can come before they are all acknowledged; the next restart checks (b) for everything;
//! - in half of the cycles the kill is sent by the first writer that gets an answer once the
//!   random delay is over (the moment its write must already be durable), otherwise by the
//!   test's main task at the random moment;
//! - the trigger handler is slow (20 ms) for keys `k00`..`k07`, so their lanes fall behind the
//!   writes and the outbox holds several owed events per key at each kill.
//!
//! One SDK worker lives for the whole test and reconnects by itself, replaying its function and
//! its trigger with the same trigger id, as a real worker does when the engine restarts. For that
//! the engine is restarted on the worker port it picked at the first start (`--worker-port 0`,
//! read from the ready line); per-(trigger, key) order is only promised for one trigger id, and a
//! fresh client per run would register a new trigger id each time.
//!
//! What SIGKILL cannot show: the page cache survives it, so a missing fsync goes unnoticed (that
//! takes power-loss testing); and a write acknowledged before it reached the store is only caught
//! when the kill lands in that gap.
//!
//! Knobs (environment):
//! - `TRINE_CRASH_ITERATIONS=N`: kill/restart cycles (default 20). Manual soak mode, e.g.
//!   `TRINE_CRASH_ITERATIONS=500 cargo test -p trine --test crash -- --nocapture`.
//! - `TRINE_CRASH_SEED=S`: replays the kill timings of an earlier run (the seed is printed).
//!
//! On failure the data directory and the engine logs are kept; the message says where, and says
//! which key, which counter and what was received.

#![cfg(unix)]

mod support;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use trine_sdk::{ErrorBody, Worker, WorkerOptions};

use support::{env_parse, tail, EngineProcess, Rng};

const SCOPE: &str = "crash";
/// Size of the padding in every value (so a commit writes a realistic amount of data).
const PAD_BYTES: usize = 1024;
const WRITERS: usize = 16;
const KEYS: usize = 32;
const RECORD_FN: &str = "crash::record";
const DEFAULT_ITERATIONS: usize = 20;
/// A small write-ahead log, so kills also land during and right after checkpoints.
const CHECKPOINT_ARGS: &[&str] = &["--state-checkpoint-mb", "1"];
/// Keys below this one (`k00`..`k07`) have a slow trigger handler: their events are written
/// faster than they are delivered, so their lanes build a backlog and the outbox holds several
/// owed events per key at each kill (recovery must resume them in order).
const SLOW_KEYS_BELOW: &str = "k08";
const SLOW_HANDLER: Duration = Duration::from_millis(20);
/// The kill comes this long after the writers start (uniformly random).
const KILL_AFTER_MS: std::ops::Range<u64> = 100..600;
/// How long the trigger may take to catch up after a restart.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Small helpers

fn counter(v: &Value) -> Option<u64> {
    v.get("n").and_then(Value::as_u64)
}

/// The padding of value `n`: [`PAD_BYTES`] bytes that depend on `n`.
fn pad(n: u64) -> String {
    let unit = format!("{n:016x}");
    unit.repeat(PAD_BYTES / unit.len() + 1)[..PAD_BYTES].to_owned()
}

/// The value write `n` of writer `w` stores.
fn value_of(w: usize, n: u64) -> Value {
    json!({"w": w, "n": n, "pad": pad(n)})
}

/// Replaces a value's padding by `true` when it is the right one for its counter (so values are
/// kept and compared small); a wrong padding is kept and shows up as a mismatch.
fn strip(v: &mut Value) {
    let Some(m) = v.as_object_mut() else { return };
    let good = match (m.get("n").and_then(Value::as_u64), m.get("pad")) {
        (Some(n), Some(Value::String(p))) => *p == pad(n),
        _ => false,
    };
    if good {
        m.insert("pad".into(), Value::Bool(true));
    }
}

/// Kills the engine once, from whichever task gets there first.
struct KillSwitch {
    child: Arc<Mutex<Child>>,
    /// The kill is due: in "kill on acknowledgement" mode the next writer to get an answer fires.
    armed: AtomicBool,
    /// SIGKILL was sent (or is being sent): errors from here on are the kill's doing.
    fired: AtomicBool,
}

impl KillSwitch {
    fn fire(&self) {
        if !self.fired.swap(true, Ordering::SeqCst) {
            let _ = self.child.lock().unwrap_or_else(|e| e.into_inner()).kill();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the trigger received

#[derive(Default)]
struct Received {
    /// Per key, every event payload in arrival order, with the engine run that delivered it.
    by_key: HashMap<String, Vec<(usize, Value)>>,
    /// Per key, the distinct counters received.
    counters: HashMap<String, HashSet<u64>>,
    total: usize,
}

// ---------------------------------------------------------------------------------------------
// Writers

struct KeyState {
    key: String,
    owner: usize,
    /// The counter of the next write.
    next_n: u64,
    /// Acknowledged counters, with the run they were acknowledged in.
    acked: Vec<(u64, usize)>,
    /// Writes whose outcome is unknown (in flight at a kill).
    unknown: BTreeSet<u64>,
    /// Unknown writes found stored after a restart: committed, so their events are owed too.
    landed: Vec<u64>,
    /// The value the key holds as far as the test knows (after a restart: what `get` returned).
    current: Value,
}

impl KeyState {
    fn last_acked(&self) -> Option<(u64, usize)> {
        self.acked.last().copied()
    }
}

/// One writer: its keys round-robin, one call at a time, until the kill.
async fn writer(
    worker: Worker,
    run: usize,
    mut keys: Vec<KeyState>,
    switch: Arc<KillSwitch>,
    killed: CancellationToken,
) -> (Vec<KeyState>, Vec<String>, u64) {
    let mut violations = Vec::new();
    let mut acked = 0u64;
    'outer: loop {
        for ks in keys.iter_mut() {
            if killed.is_cancelled() {
                break 'outer;
            }
            let n = ks.next_n;
            ks.next_n += 1;
            let value = value_of(ks.owner, n);
            let call = worker.call_with_timeout(
                "state::set",
                json!({"scope": SCOPE, "key": ks.key, "value": value}),
                Duration::from_secs(20),
            );
            let outcome = tokio::select! {
                // An answer that is there counts, even if the stop came at the same time.
                biased;
                r = call => Some(r),
                _ = killed.cancelled() => None,
            };
            match outcome {
                Some(Ok(mut out)) => {
                    let mut value = value;
                    strip(&mut value);
                    strip(&mut out["new_value"]);
                    strip(&mut out["old_value"]);
                    if out["new_value"] != value || out["old_value"] != ks.current {
                        violations.push(format!(
                            "run {run}: state::set of key {} n={n} answered {out}; expected \
                             new_value {value} and old_value {} (the key's previous value)",
                            ks.key, ks.current
                        ));
                    }
                    ks.acked.push((n, run));
                    ks.current = value;
                    acked += 1;
                    if switch.armed.load(Ordering::SeqCst) {
                        switch.fire();
                    }
                }
                Some(Err(e)) => {
                    ks.unknown.insert(n);
                    if !switch.fired.load(Ordering::SeqCst) {
                        violations.push(format!(
                            "run {run}: state::set of key {} n={n} failed before the kill: {e}",
                            ks.key
                        ));
                    }
                    break 'outer;
                }
                None => {
                    ks.unknown.insert(n);
                    break 'outer;
                }
            }
        }
    }
    (keys, violations, acked)
}

// ---------------------------------------------------------------------------------------------
// The test

struct Ctx {
    root: PathBuf,
    seed: u64,
    worker: Worker,
    received: Arc<Mutex<Received>>,
    keys: Vec<KeyState>,
    engine: Option<EngineProcess>,
}

impl Ctx {
    /// A failure message with everything needed to understand it.
    fn explain(&self, what: String) -> String {
        let mut s = what;
        let _ = write!(
            s,
            "\n\nseed {} (TRINE_CRASH_SEED={} replays the kill timings); data and logs kept in {}",
            self.seed,
            self.seed,
            self.root.display()
        );
        if let Some(e) = &self.engine {
            let _ = write!(
                s,
                "\nlast lines of engine run {} ({}):\n{}",
                e.run,
                e.log.display(),
                tail(&e.log, 25)
            );
        }
        s
    }

    async fn call(&self, fid: &str, payload: Value) -> Result<Value, String> {
        self.worker
            .call_with_timeout(fid, payload.clone(), Duration::from_secs(30))
            .await
            .map_err(|e| format!("{fid} {payload} failed: {e}"))
    }

    /// (a): every acknowledged write survived. Also learns what each key holds now. Returns how
    /// many writes in flight at the kill turned out to be committed.
    async fn check_values(&mut self, run: usize) -> Result<usize, String> {
        let mut landed = 0;
        let mut problems = Vec::new();
        for i in 0..self.keys.len() {
            let mut v = self
                .call(
                    "state::get",
                    json!({"scope": SCOPE, "key": self.keys[i].key}),
                )
                .await?;
            strip(&mut v);
            let ks = &mut self.keys[i];
            let n = counter(&v);
            let last = ks.last_acked();
            match (n, last) {
                (None, None) if v.is_null() => {}
                (None, None) => problems.push(format!(
                    "key {}: state::get returned {v}, not a value of this test",
                    ks.key
                )),
                (None, Some((last_n, last_run))) => problems.push(format!(
                    "key {}: LOST ACKNOWLEDGED WRITE: state::get returned {v}, but n={last_n} \
                     was acknowledged (in run {last_run})",
                    ks.key
                )),
                (Some(_), _) if v["w"] != json!(ks.owner) || v["pad"] != true => {
                    problems.push(format!(
                        "key {}: state::get returned {v}: not written by its owner {} (or corrupt)",
                        ks.key, ks.owner
                    ))
                }
                (Some(n), Some((last_n, last_run))) if n < last_n => problems.push(format!(
                    "key {}: LOST ACKNOWLEDGED WRITE: state::get returns n={n} but n={last_n} \
                     was acknowledged (in run {last_run}); acknowledged counters after {n}: {:?}",
                    ks.key,
                    ks.acked
                        .iter()
                        .filter(|a| a.0 > n)
                        .map(|a| a.0)
                        .collect::<Vec<_>>()
                )),
                (Some(n), last) if Some(n) != last.map(|l| l.0) && !ks.unknown.contains(&n) => {
                    problems.push(format!(
                        "key {}: state::get returns n={n}, which is neither the last \
                         acknowledged write ({:?}) nor a write in flight at a kill ({:?})",
                        ks.key,
                        last.map(|l| l.0),
                        ks.unknown
                    ))
                }
                _ => {}
            }
            if let Some(n) = n {
                if ks.unknown.contains(&n) && !ks.landed.contains(&n) {
                    ks.landed.push(n);
                    landed += 1;
                }
            }
            ks.current = v;
        }
        if problems.is_empty() {
            Ok(landed)
        } else {
            Err(format!(
                "after restart {run}, acknowledged writes are missing:\n{}",
                problems.join("\n")
            ))
        }
    }

    /// (b), first half: waits until every acknowledged write, and every write in flight at a kill
    /// that was found committed, has been received by the trigger.
    async fn wait_for_events(&self, run: usize) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            let missing: Vec<(usize, Vec<u64>)> = {
                let rec = self.received.lock().unwrap();
                self.keys
                    .iter()
                    .enumerate()
                    .filter_map(|(i, ks)| {
                        let got = rec.counters.get(&ks.key);
                        let has = |n: u64| got.is_some_and(|g| g.contains(&n));
                        let mut m: Vec<u64> = ks
                            .acked
                            .iter()
                            .map(|a| a.0)
                            .chain(ks.landed.iter().copied())
                            .filter(|n| !has(*n))
                            .collect();
                        m.sort_unstable();
                        (!m.is_empty()).then_some((i, m))
                    })
                    .collect()
            };
            if missing.is_empty() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > EVENT_TIMEOUT {
                let stats = self
                    .call("engine::state::stats", json!({}))
                    .await
                    .unwrap_or_else(|e| json!(e));
                let rec = self.received.lock().unwrap();
                let mut s = format!(
                    "after restart {run}, {EVENT_TIMEOUT:?} later, the trigger still misses \
                     events of {} keys (engine::state::stats: {stats}):",
                    missing.len()
                );
                for (i, m) in missing {
                    let ks = &self.keys[i];
                    let events = rec.by_key.get(&ks.key).map_or(&[][..], |v| &v[..]);
                    let last: Vec<String> = events
                        .iter()
                        .rev()
                        .take(5)
                        .rev()
                        .map(|(r, e)| format!("run {r}: {}", e["new_value"]))
                        .collect();
                    let _ = write!(
                        s,
                        "\n- key {}: {} missing counters (first: {:?}; acknowledged in runs {:?}); \
                         {} events received, the last: [{}]",
                        ks.key,
                        m.len(),
                        &m[..m.len().min(10)],
                        ks.acked
                            .iter()
                            .filter(|a| m.contains(&a.0))
                            .map(|a| a.1)
                            .collect::<BTreeSet<_>>(),
                        events.len(),
                        last.join(", ")
                    );
                }
                return Err(s);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// (b), second half: the shape and the order of everything received so far. Returns the
    /// number of redeliveries seen.
    fn check_order(&self, run: usize) -> Result<usize, String> {
        let rec = self.received.lock().unwrap();
        let mut problems = Vec::new();
        let mut duplicates = 0;
        for ks in &self.keys {
            let Some(events) = rec.by_key.get(&ks.key) else {
                continue;
            };
            let mut first_seen: HashMap<u64, usize> = HashMap::new();
            let mut prev: Option<&Value> = None;
            let context = |at: usize| -> String {
                let from = at.saturating_sub(4);
                events[from..(at + 2).min(events.len())]
                    .iter()
                    .enumerate()
                    .map(|(j, (r, e))| {
                        format!(
                            "\n    #{} (run {r}){} old={} new={}",
                            from + j,
                            if from + j == at { " <-" } else { "" },
                            e["old_value"],
                            e["new_value"]
                        )
                    })
                    .collect()
            };
            for (i, (r, e)) in events.iter().enumerate() {
                let new = &e["new_value"];
                let old = &e["old_value"];
                let Some(n) = counter(new) else {
                    problems.push(format!("key {}: event #{i} has no counter: {e}", ks.key));
                    continue;
                };
                let expected_type = if old.is_null() {
                    "state:created"
                } else {
                    "state:updated"
                };
                if e["type"] != "state"
                    || e["scope"] != SCOPE
                    || e["key"] != ks.key.as_str()
                    || e["event_type"] != expected_type
                    || new["w"] != json!(ks.owner)
                    || new["pad"] != true
                    || !(old.is_null() || old["pad"] == true)
                    || n >= ks.next_n
                {
                    problems.push(format!(
                        "key {}: event #{i} (run {r}) is malformed or was never written \
                         (owner {}, counters written so far < {}): {e}",
                        ks.key, ks.owner, ks.next_n
                    ));
                }
                if let Some(&j) = first_seen.get(&n) {
                    duplicates += 1;
                    if events[j].1 != *e {
                        problems.push(format!(
                            "key {}: redelivery #{i} of n={n} differs from its first delivery \
                             #{j}: {} vs {e}",
                            ks.key, events[j].1
                        ));
                    }
                    continue;
                }
                first_seen.insert(n, i);
                let expected_old = prev.cloned().unwrap_or(Value::Null);
                if let Some(p) = prev.and_then(counter) {
                    if n <= p {
                        problems.push(format!(
                            "key {}: OUT OF ORDER: event #{i} (run {r}) n={n} came after n={p}:{}",
                            ks.key,
                            context(i)
                        ));
                    }
                }
                if *old != expected_old {
                    problems.push(format!(
                        "key {}: event #{i} (run {r}) n={n} has old_value {old}, but the previous \
                         event's new_value is {expected_old} (a change is missing or out of \
                         order):{}",
                        ks.key,
                        context(i)
                    ));
                }
                prev = Some(new);
            }
        }
        if problems.is_empty() {
            Ok(duplicates)
        } else {
            problems.truncate(20);
            Err(format!(
                "after restart {run}, trigger events are wrong:\n{}",
                problems.join("\n")
            ))
        }
    }

    /// Writers until the kill; returns the number of writes acknowledged. The kill comes
    /// `kill_after` into the load or, with `on_ack`, right when a writer gets its first answer
    /// after that: the moment an acknowledged write must already be durable.
    async fn load_and_kill(
        &mut self,
        run: usize,
        kill_after: Duration,
        on_ack: bool,
    ) -> Result<u64, String> {
        let engine = self.engine.as_ref().expect("engine running");
        let switch = Arc::new(KillSwitch {
            child: engine.child.clone(),
            armed: AtomicBool::new(false),
            fired: AtomicBool::new(false),
        });
        let killed = CancellationToken::new();
        let mut per_writer: Vec<Vec<KeyState>> = (0..WRITERS).map(|_| Vec::new()).collect();
        for ks in self.keys.drain(..) {
            per_writer[ks.owner].push(ks);
        }
        let tasks: Vec<_> = per_writer
            .into_iter()
            .map(|keys| {
                tokio::spawn(writer(
                    self.worker.clone(),
                    run,
                    keys,
                    switch.clone(),
                    killed.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(kill_after).await;
        // Writers keep going until the process is gone, so the kill lands at a random point of
        // the engine's work.
        if on_ack {
            switch.armed.store(true, Ordering::SeqCst);
            let armed = Instant::now();
            while !switch.fired.load(Ordering::SeqCst) && armed.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        switch.fire();
        if let Some(e) = self.engine.as_mut() {
            e.kill();
        }
        // Answers the engine sent before it died are still in the socket: the SDK reads them
        // (completing those calls: acknowledged) until it sees the connection's end, then fails
        // the calls still open on it. Only then stop the writers whose next call would wait for
        // a reconnect.
        let gone = Instant::now();
        while self.worker.is_connected() {
            if gone.elapsed() > Duration::from_secs(10) {
                return Err("the worker still looks connected 10 s after the kill".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        killed.cancel();
        let mut violations = Vec::new();
        let mut acked = 0;
        for t in tasks {
            let (keys, v, a) = t.await.map_err(|e| format!("writer task failed: {e}"))?;
            self.keys.extend(keys);
            violations.extend(v);
            acked += a;
        }
        self.keys.sort_by(|a, b| a.key.cmp(&b.key));
        if violations.is_empty() {
            Ok(acked)
        } else {
            violations.truncate(20);
            Err(violations.join("\n"))
        }
    }

    async fn start_engine(&mut self, run: usize, port: u16) -> Result<Duration, String> {
        let started = Instant::now();
        let root = self.root.clone();
        let engine = tokio::task::spawn_blocking(move || {
            EngineProcess::start(&root, run, port, CHECKPOINT_ARGS)
        })
        .await
        .map_err(|e| format!("start task failed: {e}"))??;
        self.engine = Some(engine);
        Ok(started.elapsed())
    }
}

async fn run_test(
    ctx: &mut Ctx,
    iterations: usize,
    rng: &mut Rng,
    run_index: &AtomicUsize,
) -> Result<(), String> {
    let test_start = Instant::now();
    let mut total_acked = 0;
    let port = ctx.engine.as_ref().expect("engine started").port();
    let stats = ctx.call("engine::state::stats", json!({})).await?;
    if stats["adapter"] != "file_based" || stats["durable"] != true {
        return Err(format!(
            "the engine does not run on the durable file store: {stats}"
        ));
    }
    for iteration in 1..=iterations {
        let load_run = iteration - 1;
        let kill_after = Duration::from_millis(rng.range(KILL_AFTER_MS.clone()));
        let on_ack = iteration % 4 >= 2;
        let acked = ctx.load_and_kill(load_run, kill_after, on_ack).await?;
        total_acked += acked;
        let in_flight: usize = ctx
            .keys
            .iter()
            .filter(|k| k.unknown.contains(&(k.next_n - 1)))
            .count();

        let restart = ctx.start_engine(iteration, port).await?;
        // Events are labelled with the engine run that (most likely) delivered them, for failure
        // messages only: a handler task of the killed engine's last delivery can in principle
        // run after this point.
        run_index.store(iteration, Ordering::SeqCst);
        let landed = ctx.check_values(iteration).await?;
        // After every other restart the next load starts at once, while the deliveries owed
        // from before the crash are still being redelivered: they share lanes with the new
        // events, and the next kill may come before they are all acknowledged. (b) is then
        // checked, for everything so far, after the next restart.
        let quiet = iteration % 2 == 0 || iteration == iterations;
        let events = if quiet {
            let caught_up = ctx.wait_for_events(iteration).await?;
            let duplicates = ctx.check_order(iteration)?;
            format!(
                "trigger caught up in {} ms ({} events so far, {duplicates} redeliveries)",
                caught_up.as_millis(),
                ctx.received.lock().unwrap().total
            )
        } else {
            "next load starts at once".to_owned()
        };
        println!(
            "crash {iteration}/{iterations}: kill {}after {} ms, {acked} writes acknowledged \
             ({in_flight} in flight at the kill, {landed} of them landed); restart {} ms; {events}",
            if on_ack { "on an acknowledgement " } else { "" },
            kill_after.as_millis(),
            restart.as_millis(),
        );
    }
    let dead = ctx
        .call("engine::state::dead_letters::list", json!({}))
        .await?;
    if dead["dead_letters"]
        .as_array()
        .is_none_or(|d| !d.is_empty())
    {
        return Err(format!("trigger deliveries were dead-lettered: {dead}"));
    }
    println!(
        "crash test: {iterations} kills, {total_acked} acknowledged writes, {} events received, \
         {:.1} s",
        ctx.received.lock().unwrap().total,
        test_start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_and_their_events_survive_sigkill() {
    let iterations = env_parse::<usize>("TRINE_CRASH_ITERATIONS").unwrap_or(DEFAULT_ITERATIONS);
    let seed = env_parse::<u64>("TRINE_CRASH_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32) | 1
    });
    let mut rng = Rng(seed.max(1));
    let root = std::env::temp_dir().join(format!("trine-crash-{}-{}", std::process::id(), seed));
    std::fs::create_dir_all(&root).expect("create the test directory");
    println!(
        "crash test: {iterations} iterations, seed {seed}, directory {}",
        root.display()
    );

    let run_index = Arc::new(AtomicUsize::new(0));
    let engine = match EngineProcess::start(&root, 0, 0, CHECKPOINT_ARGS) {
        Ok(e) => e,
        Err(e) => panic!("{e}\n(data and logs kept in {})", root.display()),
    };

    let received = Arc::new(Mutex::new(Received::default()));
    let worker = Worker::connect(
        &engine.worker_url,
        WorkerOptions {
            name: Some("crash-test".into()),
            reconnect_initial: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(250),
            ..WorkerOptions::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("connecting to {}: {e}", engine.worker_url));
    {
        let received = received.clone();
        let run_index = run_index.clone();
        worker.register_function(RECORD_FN, move |event: Value| {
            let run = run_index.load(Ordering::SeqCst);
            let mut event = event;
            strip(&mut event["old_value"]);
            strip(&mut event["new_value"]);
            let key = event["key"].as_str().unwrap_or_default().to_owned();
            let slow = key.as_str() < SLOW_KEYS_BELOW;
            let mut rec = received.lock().unwrap();
            rec.total += 1;
            if let Some(n) = counter(&event["new_value"]) {
                rec.counters.entry(key.clone()).or_default().insert(n);
            }
            rec.by_key.entry(key).or_default().push((run, event));
            drop(rec);
            async move {
                if slow {
                    tokio::time::sleep(SLOW_HANDLER).await;
                }
                Ok::<_, ErrorBody>(Value::Null)
            }
        });
    }
    // Sent before any write on the same connection, so the engine has it when writes start; the
    // SDK replays both (same trigger id) on every reconnect.
    worker.register_trigger("state", RECORD_FN, json!({"scope": SCOPE}));

    let keys = (0..KEYS)
        .map(|i| KeyState {
            key: format!("k{i:02}"),
            owner: i % WRITERS,
            next_n: 1,
            acked: Vec::new(),
            unknown: BTreeSet::new(),
            landed: Vec::new(),
            current: Value::Null,
        })
        .collect();
    let mut ctx = Ctx {
        root: root.clone(),
        seed,
        worker: worker.clone(),
        received,
        keys,
        engine: Some(engine),
    };
    let result = run_test(&mut ctx, iterations, &mut rng, &run_index).await;
    worker.shutdown().await;
    match result {
        Ok(()) => {
            drop(ctx.engine.take());
            let _ = std::fs::remove_dir_all(&root);
        }
        Err(e) => {
            let msg = ctx.explain(e);
            drop(ctx.engine.take());
            panic!("{msg}");
        }
    }
}
