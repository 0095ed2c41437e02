//! The engine under test: `trine serve` as a child process on ephemeral ports, stopped on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

const READY_PREFIX: &str = "trine ready ";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `trine serve` and the URLs from its ready line.
pub struct EngineProcess {
    child: Child,
    dir: PathBuf,
    pub worker_url: String,
    pub http_url: String,
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

impl EngineProcess {
    pub fn spawn(binary: &Path) -> anyhow::Result<Self> {
        if !binary.is_file() {
            bail!(
                "engine binary {} not found: run `cargo build --release -p trine` or set TRINE_BIN",
                binary.display()
            );
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("trine-bench-{}-{nanos}", std::process::id()));
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let log_path = dir.join("engine.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;

        let mut cmd = Command::new(binary);
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
            .arg(&data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        // Per-request info logs would be measured too; keep the engine quiet unless asked.
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;

        // Read stdout on a thread: wait for the ready line, then keep draining so the engine
        // never blocks on a full pipe.
        let stdout = child.stdout.take().context("engine stdout not captured")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix(READY_PREFIX) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(rest.to_owned());
                    }
                }
            }
        });
        let mut engine = Self {
            child,
            dir,
            worker_url: String::new(),
            http_url: String::new(),
        };
        let ready = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(_) => bail!(
                "engine did not print its ready line within {READY_TIMEOUT:?}; its log:\n{}",
                log_tail(&log_path)
            ),
        };
        let ready: Value = serde_json::from_str(&ready).context("parsing the ready line")?;
        let url = |key: &str| {
            ready[key]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("ready line has no `{key}`"))
        };
        engine.worker_url = url("worker_url")?;
        engine.http_url = url("http_url")?;
        Ok(engine)
    }

    /// CPU time (user + system) the engine has used so far, from `/proc/<pid>/stat`
    /// (10 ms resolution: Linux reports clock ticks of 1/100 s).
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(Duration::from_millis((utime + stime) * 10))
    }

    /// Peak resident memory of the engine so far (`VmHWM`), when /proc has it.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
