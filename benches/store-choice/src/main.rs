//! Figures for choosing Trine's embedded storage engine: redb vs fjall, same machine, same run.
//!
//! Every measurement runs in a child process (this binary re-executed with `child ...`), so
//! memory figures belong to one engine alone and a crash can be simulated with SIGKILL. The
//! harness prints figures and asserts nothing about timings.
//!
//! Usage: `store-choice [redb] [redb-qr] [fjall]` (default: all three). `redb-qr` is redb with
//! quick-repair on every commit (allocator state saved at commit, 2-phase commit), which trades
//! commit speed for fast recovery after a crash.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Value size of a state write (the key is 24 bytes).
const VALUE_LEN: usize = 220;
/// Keys and value size of the large data set.
const LOAD_KEYS: u64 = 1_000_000;
const LOAD_VALUE_LEN: usize = 200;
const LOAD_BATCH: u64 = 1_000;
/// Overwrite-heavy workload.
const OVERWRITE_KEYS: u64 = 100_000;
const OVERWRITE_ROUNDS: u64 = 30;
/// Cache given to each engine.
const CACHE_BYTES: u64 = 64 << 20;
/// Duration of each group-commit run.
const COMMIT_SECS: u64 = 4;

const DATA: usize = 0;
const ORDER: usize = 1;
const GROUPS: usize = 2;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        child(&args[1..]);
    } else {
        parent(&args);
    }
}

// ---------------------------------------------------------------------------------------------
// Parent: runs every scenario in a child and prints the table.

fn parent(args: &[String]) {
    let kinds: Vec<Kind> = if args.is_empty() {
        vec![Kind::Redb, Kind::RedbQuickRepair, Kind::Fjall]
    } else {
        args.iter()
            .map(|a| Kind::parse(a).unwrap_or_else(|| panic!("unknown engine {a}")))
            .collect()
    };
    let base = std::env::temp_dir().join(format!("store-choice-{}", std::process::id()));
    std::fs::create_dir_all(&base).expect("create data dir");
    println!(
        "data under {} (same disk as the engine's data dir)",
        base.display()
    );

    let yard = run_child(&["yardstick", &path_arg(&base.join("yardstick"))]);
    println!("\nraw yardstick (128 B write + fdatasync, same disk):");
    for (k, v) in &yard {
        println!("  {k:<28} {v}");
    }

    let mut results: Vec<(Kind, BTreeMap<String, String>)> = Vec::new();
    for &kind in &kinds {
        let mut r = BTreeMap::new();
        let name = kind.name();
        for batch in ["64", "8", "1"] {
            let dir = base.join(format!("{name}-commit-{batch}"));
            let out = run_child(&["commit", name, &path_arg(&dir), batch]);
            for (k, v) in out {
                r.insert(format!("commit{batch}.{k}"), v);
            }
            let _ = std::fs::remove_dir_all(&dir);
        }

        let dir = base.join(format!("{name}-load"));
        merge(&mut r, "load", run_child(&["load", name, &path_arg(&dir)]));
        let n = LOAD_KEYS.to_string();
        merge(
            &mut r,
            "reopen",
            run_child(&["reopen", name, &path_arg(&dir), &n]),
        );
        let _ = std::fs::remove_dir_all(&dir);

        let dir = base.join(format!("{name}-crash"));
        let acked = crash_load(name, &dir);
        r.insert("crash.killed_after_acked_keys".into(), acked.to_string());
        let out = run_child(&["reopen", name, &path_arg(&dir), &acked.to_string()]);
        merge(&mut r, "crash_reopen", out);
        let _ = std::fs::remove_dir_all(&dir);

        let dir = base.join(format!("{name}-overwrite"));
        merge(
            &mut r,
            "overwrite",
            run_child(&["overwrite", name, &path_arg(&dir)]),
        );
        let _ = std::fs::remove_dir_all(&dir);

        println!("\n{name}:");
        for (k, v) in &r {
            println!("  {k:<36} {v}");
        }
        results.push((kind, r));
    }
    let _ = std::fs::remove_dir_all(&base);

    // Side-by-side summary (markdown).
    println!(
        "\n| figure | {} |",
        kinds
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---|".repeat(kinds.len()));
    let keys: Vec<String> = results
        .first()
        .map(|(_, r)| r.keys().cloned().collect())
        .unwrap_or_default();
    for key in keys {
        let cells: Vec<&str> = results
            .iter()
            .map(|(_, r)| r.get(&key).map(String::as_str).unwrap_or("-"))
            .collect();
        println!("| {key} | {} |", cells.join(" | "));
    }
}

fn merge(r: &mut BTreeMap<String, String>, prefix: &str, out: BTreeMap<String, String>) {
    for (k, v) in out {
        r.insert(format!("{prefix}.{k}"), v);
    }
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Runs `self child <args>` and collects its `key=value` lines.
fn run_child(args: &[&str]) -> BTreeMap<String, String> {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe)
        .arg("child")
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("spawn child");
    assert!(
        out.status.success(),
        "child {args:?} failed: {}",
        out.status
    );
    parse_figures(&String::from_utf8_lossy(&out.stdout))
}

fn parse_figures(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Loads keys in a child and SIGKILLs it once more than half the keys are acknowledged.
/// Returns the number of keys acknowledged (durably committed) before the kill.
fn crash_load(name: &str, dir: &Path) -> u64 {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args(["child", "crashload", name, &path_arg(dir)])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut acked = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child");
        if let Some(n) = line.strip_prefix("acked ") {
            acked = n.parse().expect("acked count");
            if acked >= LOAD_KEYS * 6 / 10 {
                // std's Child::kill sends SIGKILL on Unix.
                child.kill().expect("kill child");
                break;
            }
        }
    }
    let _ = child.wait();
    acked
}

// ---------------------------------------------------------------------------------------------
// Children: one scenario each, figures printed as `key=value`.

fn child(args: &[String]) {
    let scenario = args[0].as_str();
    if scenario == "yardstick" {
        return yardstick(Path::new(&args[1]));
    }
    let kind = Kind::parse(&args[1]).expect("engine name");
    let dir = PathBuf::from(&args[2]);
    match scenario {
        "commit" => commit_run(kind, &dir, args[3].parse().expect("batch size")),
        "load" => load(kind, &dir),
        "reopen" => reopen(kind, &dir, args[3].parse().expect("key count")),
        "crashload" => crash_child(kind, &dir),
        "overwrite" => overwrite(kind, &dir),
        other => panic!("unknown scenario {other}"),
    }
}

fn yardstick(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let buf = [7u8; 128];
    for (label, append) in [("append", true), ("in_place", false)] {
        let path = dir.join(label);
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(2) {
            if append {
                f.write_all(&buf).expect("write");
            } else {
                f.write_all_at(&buf, 0).expect("write");
            }
            f.sync_data().expect("fdatasync");
            n += 1;
        }
        println!(
            "fdatasync_per_s.{label}={:.0}",
            n as f64 / start.elapsed().as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Group commit: batches of `batch` client writes, each a state put plus two index puts,
/// fsync'd per batch; a reader thread measures get latency meanwhile.
fn commit_run(kind: Kind, dir: &Path, batch: u64) {
    let engine: Arc<dyn Engine> = Arc::from(open(kind, dir));
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (engine, written, stop) = (engine.clone(), written.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(42);
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let n = written.load(Ordering::Acquire);
                if n == 0 {
                    std::thread::yield_now();
                    continue;
                }
                let key = data_key(rng.below(n));
                let t = Instant::now();
                let found = engine.get(DATA, &key);
                lat.push(t.elapsed().as_nanos() as u64);
                assert!(found.is_some(), "acknowledged key missing");
            }
            lat
        })
    };
    let start = Instant::now();
    let mut commits = 0u64;
    let mut i = 0u64;
    let mut rng = Rng(7);
    while start.elapsed() < Duration::from_secs(COMMIT_SECS) {
        let mut ops = Vec::with_capacity(3 * batch as usize);
        for _ in 0..batch {
            ops.push((DATA, data_key(i), value(&mut rng, VALUE_LEN)));
            ops.push((ORDER, order_key(i), data_key(i)));
            ops.push((GROUPS, b"todos:".to_vec(), (i + 1).to_be_bytes().repeat(2)));
            i += 1;
        }
        engine.commit(&ops, true);
        commits += 1;
        written.store(i, Ordering::Release);
    }
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut lat = reader.join().expect("reader");
    lat.sort_unstable();
    println!("writes_per_s={:.0}", i as f64 / secs);
    println!("commits_per_s={:.0}", commits as f64 / secs);
    println!(
        "read_during_commit_p50_us={:.1}",
        pct(&lat, 0.5) as f64 / 1e3
    );
    println!(
        "read_during_commit_p99_us={:.1}",
        pct(&lat, 0.99) as f64 / 1e3
    );
    println!(
        "read_during_commit_max_us={:.1}",
        pct(&lat, 1.0) as f64 / 1e3
    );
}

fn load(kind: Kind, dir: &Path) {
    let start = Instant::now();
    let engine = open(kind, dir);
    let mut rng = Rng(1);
    let mut i = 0;
    while i < LOAD_KEYS {
        let ops: Vec<_> = (i..i + LOAD_BATCH)
            .map(|k| (DATA, data_key(k), value(&mut rng, LOAD_VALUE_LEN)))
            .collect();
        engine.commit(&ops, true);
        i += LOAD_BATCH;
    }
    println!("load_s={:.1}", start.elapsed().as_secs_f64());
    println!(
        "live_data_mb={:.0}",
        (LOAD_KEYS * (24 + LOAD_VALUE_LEN as u64)) as f64 / 1e6
    );
    println!("disk_mb={:.0}", disk_bytes(dir) as f64 / 1e6);
    print_memory("after_load");

    let mut rng = Rng(3);
    for (label, range, gets) in [
        ("uniform_1m", LOAD_KEYS, 1_000_000),
        ("hot_10k", 10_000, 1_000_000),
    ] {
        for _ in 0..gets / 10 {
            engine.get(DATA, &data_key(rng.below(range))); // warm-up
        }
        let t = Instant::now();
        for _ in 0..gets {
            let found = engine.get(DATA, &data_key(rng.below(range)));
            assert!(found.is_some());
        }
        println!(
            "get_ns.{label}={:.0}",
            t.elapsed().as_nanos() as f64 / gets as f64
        );
    }
    print_memory("after_reads");
    let t = Instant::now();
    drop(engine);
    println!("close_s={:.2}", t.elapsed().as_secs_f64());
}

fn crash_child(kind: Kind, dir: &Path) {
    let engine = open(kind, dir);
    let mut rng = Rng(1);
    let mut i = 0;
    let mut out = std::io::stdout();
    loop {
        let ops: Vec<_> = (i..i + LOAD_BATCH)
            .map(|k| (DATA, data_key(k), value(&mut rng, LOAD_VALUE_LEN)))
            .collect();
        engine.commit(&ops, true);
        i += LOAD_BATCH;
        writeln!(out, "acked {i}").expect("stdout");
        out.flush().expect("stdout");
    }
}

/// Reopens a loaded store; every one of the first `n` keys must be there. Reads 10% of them.
fn reopen(kind: Kind, dir: &Path, n: u64) {
    let t = Instant::now();
    let engine = open(kind, dir);
    let first = engine.get(DATA, &data_key(0));
    println!("open_s={:.2}", t.elapsed().as_secs_f64());
    assert!(first.is_some());
    assert!(
        engine.get(DATA, &data_key(n - 1)).is_some(),
        "last acknowledged key lost"
    );
    let t = Instant::now();
    let mut rng = Rng(9);
    for _ in 0..n / 10 {
        assert!(
            engine.get(DATA, &data_key(rng.below(n))).is_some(),
            "key lost"
        );
    }
    println!("read_10pct_s={:.2}", t.elapsed().as_secs_f64());
    print_memory("after_reopen_read_10pct");
}

fn overwrite(kind: Kind, dir: &Path) {
    let mut engine = open(kind, dir);
    let live = OVERWRITE_KEYS * (24 + VALUE_LEN as u64);
    println!("live_data_mb={:.1}", live as f64 / 1e6);
    let mut rng = Rng(5);
    let mut max_disk = 0;
    let start = Instant::now();
    for round in 1..=OVERWRITE_ROUNDS {
        let mut i = 0;
        while i < OVERWRITE_KEYS {
            let ops: Vec<_> = (i..i + LOAD_BATCH)
                .map(|k| (DATA, data_key(k), value(&mut rng, VALUE_LEN)))
                .collect();
            engine.commit(&ops, true);
            i += LOAD_BATCH;
        }
        let disk = disk_bytes(dir);
        max_disk = max_disk.max(disk);
        if round == 1 || round % 10 == 0 {
            println!("disk_mb.round{round:02}={:.1}", disk as f64 / 1e6);
        }
    }
    println!("write_s={:.1}", start.elapsed().as_secs_f64());
    println!("disk_mb.max={:.1}", max_disk as f64 / 1e6);
    let t = Instant::now();
    engine.compact();
    println!("compact_s={:.1}", t.elapsed().as_secs_f64());
    println!("disk_mb.after_compact={:.1}", disk_bytes(dir) as f64 / 1e6);
}

// ---------------------------------------------------------------------------------------------
// The two engines behind one small interface.

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Redb,
    RedbQuickRepair,
    Fjall,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        match s {
            "redb" => Some(Kind::Redb),
            "redb-qr" => Some(Kind::RedbQuickRepair),
            "fjall" => Some(Kind::Fjall),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Redb => "redb",
            Kind::RedbQuickRepair => "redb-qr",
            Kind::Fjall => "fjall",
        }
    }
}

type Op = (usize, Vec<u8>, Vec<u8>);

trait Engine: Send + Sync {
    fn commit(&self, ops: &[Op], sync: bool);
    fn get(&self, table: usize, key: &[u8]) -> Option<usize>;
    fn compact(&mut self);
}

fn open(kind: Kind, dir: &Path) -> Box<dyn Engine> {
    std::fs::create_dir_all(dir).expect("mkdir");
    match kind {
        Kind::Redb => Box::new(Redb::open(dir, false)),
        Kind::RedbQuickRepair => Box::new(Redb::open(dir, true)),
        Kind::Fjall => Box::new(Fjall::open(dir)),
    }
}

const REDB_TABLES: [redb::TableDefinition<&[u8], &[u8]>; 3] = [
    redb::TableDefinition::new("data"),
    redb::TableDefinition::new("order"),
    redb::TableDefinition::new("groups"),
];

struct Redb {
    db: redb::Database,
    quick_repair: bool,
}

impl Redb {
    fn open(dir: &Path, quick_repair: bool) -> Self {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES as usize)
            .create(dir.join("data.redb"))
            .expect("open redb");
        let this = Redb { db, quick_repair };
        this.commit(&[], true); // creates the tables
        this
    }
}

impl Engine for Redb {
    fn commit(&self, ops: &[Op], sync: bool) {
        use redb::Durability;
        let mut tx = self.db.begin_write().expect("begin_write");
        tx.set_durability(if sync {
            Durability::Immediate
        } else {
            Durability::None
        })
        .expect("durability");
        tx.set_quick_repair(self.quick_repair);
        {
            let mut tables: Vec<_> = REDB_TABLES
                .iter()
                .map(|t| tx.open_table(*t).expect("open_table"))
                .collect();
            for (t, k, v) in ops {
                tables[*t]
                    .insert(k.as_slice(), v.as_slice())
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
    }

    fn get(&self, table: usize, key: &[u8]) -> Option<usize> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read().expect("begin_read");
        let t = tx.open_table(REDB_TABLES[table]).expect("open_table");
        t.get(key).expect("get").map(|g| g.value().len())
    }

    fn compact(&mut self) {
        while self.db.compact().expect("compact") {}
    }
}

struct Fjall {
    db: fjall::Database,
    keyspaces: Vec<fjall::Keyspace>,
}

impl Fjall {
    fn open(dir: &Path) -> Self {
        let db = fjall::Database::builder(dir)
            .cache_size(CACHE_BYTES)
            // Defaults are 512 MiB of journal and 64 MiB memtables per keyspace, too much for
            // the memory target; these are the settings the FileStore would use.
            .max_journaling_size(128 << 20)
            .open()
            .expect("open fjall");
        let keyspaces = ["data", "order", "groups"]
            .iter()
            .map(|name| {
                db.keyspace(name, || {
                    fjall::KeyspaceCreateOptions::default().max_memtable_size(16 << 20)
                })
                .expect("keyspace")
            })
            .collect();
        Fjall { db, keyspaces }
    }
}

impl Engine for Fjall {
    fn commit(&self, ops: &[Op], sync: bool) {
        let mut batch = self.db.batch();
        if sync {
            batch = batch.durability(Some(fjall::PersistMode::SyncData));
        }
        for (t, k, v) in ops {
            batch.insert(&self.keyspaces[*t], k.as_slice(), v.as_slice());
        }
        batch.commit().expect("commit");
    }

    fn get(&self, table: usize, key: &[u8]) -> Option<usize> {
        self.keyspaces[table]
            .get(key)
            .expect("get")
            .map(|v| v.len())
    }

    fn compact(&mut self) {
        for ks in &self.keyspaces {
            ks.rotate_memtable_and_wait().expect("flush");
            ks.major_compact().expect("major_compact");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// 24-byte state key: scope, separator, item id.
fn data_key(i: u64) -> Vec<u8> {
    format!("todos:item-{i:013}").into_bytes()
}

/// Insertion-order index key: scope + big-endian order.
fn order_key(i: u64) -> Vec<u8> {
    let mut k = b"todos:".to_vec();
    k.extend_from_slice(&i.to_be_bytes());
    k
}

/// JSON-ish value with random hex digits (lz4 gains little on it, like real user data).
fn value(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(b"{\"title\":\"");
    while v.len() < len - 2 {
        let r = rng.next();
        for shift in (0..64).step_by(4) {
            if v.len() < len - 2 {
                v.push(b"0123456789abcdef"[((r >> shift) & 15) as usize]);
            }
        }
    }
    v.extend_from_slice(b"\"}");
    v
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx]
}

fn print_memory(label: &str) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for line in status.lines() {
        for field in ["VmRSS", "VmHWM"] {
            if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
                let kb: f64 = rest
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .unwrap_or(0.0);
                println!("{}_mb.{label}={:.0}", field.to_lowercase(), kb / 1024.0);
            }
        }
    }
}

fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// splitmix64: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
