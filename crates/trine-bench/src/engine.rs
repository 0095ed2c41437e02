//! The engine under test: `trine serve` as a child process on ephemeral ports, stopped on drop.
//!
//! An [`EngineProcess`] owns a working directory (`<base>/trine-bench-<pid>-<nanos>/` with
//! `data/` as the engine's `--data-dir` and `engine.log` for its stderr). It can be stopped with
//! SIGTERM or SIGKILL and started again on the same data directory, which is how the restart
//! figures are taken. The directory is removed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

const READY_PREFIX: &str = "trine ready ";
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How to start the engine.
#[derive(Clone, Debug)]
pub struct EngineSpec {
    pub binary: PathBuf,
    /// Extra `trine serve` arguments (e.g. `--state-store in_memory`), appended last.
    pub extra_args: Vec<String>,
    /// Directory under which the engine's working directory is created (its data dir must be
    /// on the disk being measured) [default: the system temp dir].
    pub base_dir: PathBuf,
}

/// A running `trine serve` and the URLs from its ready line.
pub struct EngineProcess {
    spec: EngineSpec,
    child: Option<Child>,
    dir: PathBuf,
    pub worker_url: String,
    pub http_url: String,
    /// `ws://host:port` of the stream listener, when the engine runs one.
    pub stream_url: Option<String>,
    /// From spawning the process to its ready line, for the current process.
    pub ready_after: Duration,
    /// When the current process was spawned.
    pub spawned_at: Instant,
}

/// `explicit` (flag or `$TRINE_BIN`), else `trine` next to this executable (both live in
/// `target/release`), else `target/release/trine` under the current directory.
pub fn locate_binary(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("trine")))
        .filter(|p| p.is_file())
    {
        return sibling;
    }
    PathBuf::from("target/release/trine")
}

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: peak resident so far.
    pub hwm_kib: u64,
}

impl EngineProcess {
    /// Starts the engine as `spec` says, in a fresh working directory under `spec.base_dir`.
    pub fn start(spec: EngineSpec) -> anyhow::Result<Self> {
        if !spec.binary.is_file() {
            bail!(
                "engine binary {} not found: run `cargo build --release -p trine` or set TRINE_BIN",
                spec.binary.display()
            );
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = spec
            .base_dir
            .join(format!("trine-bench-{}-{nanos}", std::process::id()));
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let mut engine = Self {
            spec,
            child: None,
            dir,
            worker_url: String::new(),
            http_url: String::new(),
            stream_url: None,
            ready_after: Duration::ZERO,
            spawned_at: Instant::now(),
        };
        engine.launch()?;
        Ok(engine)
    }

    /// The engine's `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The working directory (parent of the data dir, same file system).
    pub fn work_dir(&self) -> &Path {
        &self.dir
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("engine.log")
    }

    /// Spawns the process on the current data dir and waits for its ready line.
    fn launch(&mut self) -> anyhow::Result<()> {
        let log_path = self.log_path();
        // Appending: a restarted engine's log follows the previous one's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;

        let mut cmd = Command::new(&self.spec.binary);
        cmd.args(["serve", "--host", "127.0.0.1"])
            .args([
                "--worker-port",
                "0",
                "--http-port",
                "0",
                "--stream-port",
                "0",
            ])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(&self.spec.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        // Per-request info logs would be measured too; keep the engine quiet unless asked.
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        let spawned_at = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.spec.binary.display()))?;

        // Read stdout on a thread: wait for the ready line, then keep draining so the engine
        // never blocks on a full pipe.
        let stdout = child.stdout.take().context("engine stdout not captured")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix(READY_PREFIX) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send((Instant::now(), rest.to_owned()));
                    }
                }
            }
        });
        self.child = Some(child);
        self.spawned_at = spawned_at;
        let (ready_at, ready) = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(x) => x,
            Err(_) => bail!(
                "engine did not print its ready line within {READY_TIMEOUT:?}; its log:\n{}",
                log_tail(&log_path)
            ),
        };
        self.ready_after = ready_at - spawned_at;
        let ready: Value = serde_json::from_str(&ready).context("parsing the ready line")?;
        let url = |key: &str| {
            ready[key]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("ready line has no `{key}`"))
        };
        self.worker_url = url("worker_url")?;
        self.http_url = url("http_url")?;
        self.stream_url = ready["stream_url"].as_str().map(str::to_owned);
        Ok(())
    }

    /// Process id of the running engine.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the process to exit; returns how long
    /// that took. Falls back to SIGKILL on timeout (and says so in the error).
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let Some(mut child) = self.child.take() else {
            bail!("the engine is not running");
        };
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("running `kill -TERM`")?;
        if !status.success() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`kill -TERM {}` failed ({status})", child.id());
        }
        loop {
            if child.try_wait()?.is_some() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the engine did not exit within {timeout:?} of SIGTERM; killed it");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("the engine is not running");
        };
        child.kill().context("SIGKILL")?;
        child.wait().context("reaping the engine")?;
        Ok(())
    }

    /// Starts the engine again on the same data directory (after [`terminate`](Self::terminate)
    /// or [`kill`](Self::kill)); [`ready_after`](Self::ready_after) is updated.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("the engine is still running");
        }
        self.launch()
    }

    /// CPU time (user + system) the engine has used so far, from `/proc/<pid>/stat`
    /// (10 ms resolution: Linux reports clock ticks of 1/100 s).
    pub fn cpu_time(&self) -> Option<Duration> {
        cpu_time_of(&format!("/proc/{}/stat", self.pid()?))
    }

    /// Resident memory now and at its peak, when /proc has them.
    pub fn memory(&self) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        };
        Some(Memory {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
        })
    }

    /// Peak resident memory of the engine so far (`VmHWM`), when /proc has it.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.memory().map(|m| m.hwm_kib)
    }
}

/// User + system CPU time from a `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat` file
/// (10 ms resolution: Linux reports clock ticks of 1/100 s).
pub fn cpu_time_of(stat_path: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// CPU time per thread name (`comm`) of process `pid`, summed over threads of the same name.
pub fn thread_cpu_by_name(pid: u32) -> Vec<(String, Duration)> {
    let mut out: Vec<(String, Duration)> = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.filter_map(Result::ok) {
        let dir = t.path();
        let name = std::fs::read_to_string(dir.join("comm"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let Some(cpu) = cpu_time_of(&dir.join("stat").to_string_lossy()) else {
            continue;
        };
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, d)) => *d += cpu,
            None => out.push((name, cpu)),
        }
    }
    out
}

/// I/O counters of a process, from `/proc/<pid>/io`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessIo {
    /// Bytes the process caused to be sent to the storage layer (`write_bytes`).
    pub write_bytes: u64,
    /// Write-family system calls (`syscw`).
    pub write_calls: u64,
}

impl ProcessIo {
    pub fn read(pid: u32) -> Option<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
        };
        Some(Self {
            write_bytes: field("write_bytes:")?,
            write_calls: field("syscw:")?,
        })
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Bytes under `path` (recursively): apparent size (sum of file lengths) and allocated size
/// (blocks actually used on disk).
pub fn disk_usage(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut apparent = 0;
    let mut allocated = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.filter_map(Result::ok).map(|e| e.path()));
            }
        } else if meta.is_file() {
            apparent += meta.len();
            allocated += meta.blocks() * 512;
        }
    }
    (apparent, allocated)
}

/// The mount holding `path` (longest mount point that prefixes it): `(device, fs type, mount
/// point)`, from `/proc/self/mounts`.
pub fn file_system_of(path: &Path) -> Option<(String, String, String)> {
    let path = std::fs::canonicalize(path).ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let dev = f.next()?;
            let mnt = f.next()?;
            let fs = f.next()?;
            path.starts_with(mnt)
                .then(|| (dev.to_owned(), fs.to_owned(), mnt.to_owned()))
        })
        .max_by_key(|(_, _, mnt)| mnt.len())
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
