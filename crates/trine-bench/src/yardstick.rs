//! The reference points measured in the same run: a bare axum hello-world server (in-process),
//! `redis-benchmark` against the local Redis (or the one the engine's state runs on), and the
//! disk's fsync rate (`fsync_probe`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use serde_json::json;
use tokio::net::TcpListener;

/// The body both the trine route and the axum route return.
pub fn hello_body() -> serde_json::Value {
    json!({"hello": "world"})
}

async fn hello() -> impl IntoResponse {
    // Serialized per request, as an engine has to; the `json` feature of axum is not enabled in
    // this workspace, so the content type is set by hand (same bytes as `axum::Json`).
    let body = serde_json::to_vec(&hello_body()).unwrap_or_default();
    ([(CONTENT_TYPE, "application/json")], body)
}

/// Starts axum on 127.0.0.1 (ephemeral port, TCP_NODELAY) on the current runtime.
pub async fn start_axum() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let app = Router::new().route("/hello", get(hello));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("axum yardstick stopped: {e}");
        }
    });
    Ok(addr)
}

/// One `redis-benchmark` run (one test).
#[derive(Debug, Clone, PartialEq)]
pub struct RedisRun {
    /// What ran, for the tables: e.g. `redis-benchmark GET` or `redis-benchmark SET -d 200 -P 1`.
    pub label: String,
    pub requests: u64,
    pub per_second: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The arguments of one `redis-benchmark` run.
#[derive(Debug, Clone)]
pub struct RedisBench {
    /// `-u <uri>`; `None`: `-h 127.0.0.1 -p 6379`.
    pub uri: Option<String>,
    /// `-t`: `get`, `set`, ….
    pub test: &'static str,
    /// `-c`.
    pub concurrency: usize,
    /// `-n`.
    pub requests: u64,
    /// `-d` (value bytes of SET/GET) [default: redis-benchmark's, 3].
    pub value_bytes: Option<usize>,
    /// `-P` [default: redis-benchmark's, 1 (no pipelining)].
    pub pipeline: Option<usize>,
}

impl RedisBench {
    fn label(&self) -> String {
        let mut label = format!("redis-benchmark {}", self.test.to_ascii_uppercase());
        if let Some(d) = self.value_bytes {
            label.push_str(&format!(" -d {d}"));
        }
        if let Some(p) = self.pipeline {
            label.push_str(&format!(" -P {p}"));
        }
        label
    }

    /// Runs it (blocking). `Err` explains why there is no figure (not installed, no server,
    /// unparsable output).
    pub fn run(&self) -> Result<RedisRun, String> {
        let mut cmd = Command::new("redis-benchmark");
        match &self.uri {
            Some(uri) => cmd.args(["-u", uri]),
            None => cmd.args(["-h", "127.0.0.1", "-p", "6379"]),
        };
        cmd.args(["-t", self.test, "--csv"])
            .args(["-c", &self.concurrency.to_string()])
            .args(["-n", &self.requests.to_string()]);
        if let Some(d) = self.value_bytes {
            cmd.args(["-d", &d.to_string()]);
        }
        if let Some(p) = self.pipeline {
            cmd.args(["-P", &p.to_string()]);
        }
        let output = cmd.output().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "redis-benchmark is not installed".to_owned(),
            _ => format!("cannot run redis-benchmark: {e}"),
        })?;
        let text = String::from_utf8_lossy(&output.stdout);
        parse_csv_output(&text, self.test)
            .map(|(per_second, p50_ms, p99_ms)| RedisRun {
                label: self.label(),
                requests: self.requests,
                per_second,
                p50_ms,
                p99_ms,
            })
            .ok_or_else(|| {
                let stderr = String::from_utf8_lossy(&output.stderr);
                format!(
                    "no result from redis-benchmark (is Redis running at {}?): {} {}",
                    self.uri.as_deref().unwrap_or("127.0.0.1:6379"),
                    text.trim(),
                    stderr.trim()
                )
            })
    }
}

/// Runs `redis-benchmark -h 127.0.0.1 -p 6379 -t get -c <c> -n <n>` (blocking).
/// `Err` explains why there is no figure (not installed, no server, unparsable output).
pub fn redis_benchmark(concurrency: usize, requests: u64) -> Result<RedisRun, String> {
    RedisBench {
        uri: None,
        test: "get",
        concurrency,
        requests,
        value_bytes: None,
        pipeline: None,
    }
    .run()
}

/// Parses the `--csv` output: a header, then `"GET","30303.03","0.040","0.016","0.031",…` with
/// rps, avg, min, p50, p95, p99, max (older versions print only the test and rps). Returns rps,
/// p50 and p99 of `test`'s line.
fn parse_csv_output(text: &str, test: &str) -> Option<(f64, Option<f64>, Option<f64>)> {
    let line = text.lines().find_map(|l| {
        let mut fields = l.split(',').map(|f| f.trim().trim_matches('"'));
        fields
            .next()
            .filter(|t| t.eq_ignore_ascii_case(test))
            .map(|_| fields.map(str::to_owned).collect::<Vec<_>>())
    })?;
    let field = |i: usize| line.get(i).and_then(|v| v.parse::<f64>().ok());
    Some((field(0)?, field(3), field(5)))
}

/// How the fsync probe writes before each `fdatasync`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FsyncMode {
    /// 128 B `pwrite` at offset 0 of a pre-allocated file (data block only).
    Overwrite,
    /// 128 B appended at the end of the file (the file grows: data + size, like a log).
    Append,
}

/// One fsync probe run.
pub struct FsyncRun {
    pub mode: FsyncMode,
    pub syncs: u64,
    pub elapsed: Duration,
    /// Latency of each write + `fdatasync`.
    pub histogram: crate::histogram::Histogram,
}

impl FsyncRun {
    pub fn per_second(&self) -> f64 {
        self.syncs as f64 / self.elapsed.as_secs_f64()
    }
}

/// The disk's fsync ceiling: a loop of 128 B write + `fdatasync` (`File::sync_data`) on a file in
/// `dir` for `duration` (blocking). The file is removed afterwards.
pub fn fsync_probe(dir: &Path, mode: FsyncMode, duration: Duration) -> std::io::Result<FsyncRun> {
    use std::os::unix::fs::FileExt;
    let path = dir.join(match mode {
        FsyncMode::Overwrite => "fsync-probe-overwrite",
        FsyncMode::Append => "fsync-probe-append",
    });
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let record = [b'x'; 128];
    // Allocate the block and make the file itself durable before timing anything.
    file.write_all_at(&record, 0)?;
    file.sync_all()?;
    let mut offset = record.len() as u64;
    let mut histogram = crate::histogram::Histogram::default();
    let mut syncs = 0;
    let started = Instant::now();
    let outcome = loop {
        let t0 = Instant::now();
        if t0.duration_since(started) >= duration {
            break Ok(());
        }
        let at = match mode {
            FsyncMode::Overwrite => 0,
            FsyncMode::Append => offset,
        };
        if let Err(e) = file
            .write_all_at(&record, at)
            .and_then(|()| file.sync_data())
        {
            break Err(e);
        }
        offset += record.len() as u64;
        histogram.record(t0.elapsed());
        syncs += 1;
    };
    let elapsed = started.elapsed();
    drop(file);
    let _ = std::fs::remove_file(&path);
    outcome.map(|()| FsyncRun {
        mode,
        syncs,
        elapsed,
        histogram,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_csv_output() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"SET\",\"27777.78\",\"0.032\",\"0.016\",\"0.023\",\"0.071\",\"0.087\",\"1.199\"\n\"GET\",\"39215.69\",\"0.022\",\"0.016\",\"0.024\",\"0.031\",\"0.055\",\"0.415\"\n";
        assert_eq!(
            parse_csv_output(out, "get"),
            Some((39215.69, Some(0.024), Some(0.055)))
        );
        assert_eq!(
            parse_csv_output(out, "set"),
            Some((27777.78, Some(0.023), Some(0.087)))
        );
        // Older versions print no percentiles.
        assert_eq!(
            parse_csv_output("\"GET\",\"1000.00\"\n", "get"),
            Some((1000.0, None, None))
        );
        assert_eq!(parse_csv_output(out, "incr"), None);
        assert_eq!(
            parse_csv_output("Could not connect to Redis at 127.0.0.1:6379", "get"),
            None
        );
    }

    #[test]
    fn fsync_probe_counts_syncs() {
        let dir = std::env::temp_dir();
        for mode in [FsyncMode::Overwrite, FsyncMode::Append] {
            let run = fsync_probe(&dir, mode, Duration::from_millis(50)).expect("probe");
            assert!(run.syncs > 0);
            assert_eq!(run.histogram.count(), run.syncs);
            assert!(run.per_second() > 0.0);
        }
    }
}
