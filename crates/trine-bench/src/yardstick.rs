//! The reference points measured in the same run: a bare axum hello-world server (in-process),
//! `redis-benchmark` against the local Redis, and the disk's fsync rate (`fsync_probe`).

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

/// One `redis-benchmark -t get` run.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisRun {
    pub requests: u64,
    pub per_second: f64,
    pub p50_ms: Option<f64>,
}

/// Runs `redis-benchmark -h 127.0.0.1 -p 6379 -t get -c <c> -n <n> -q` (blocking).
/// `Err` explains why there is no figure (not installed, no server, unparsable output).
pub fn redis_benchmark(concurrency: usize, requests: u64) -> Result<RedisRun, String> {
    let output = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", "6379", "-t", "get", "-q"])
        .args(["-c", &concurrency.to_string(), "-n", &requests.to_string()])
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "redis-benchmark is not installed".to_owned(),
            _ => format!("cannot run redis-benchmark: {e}"),
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_quiet_output(&text)
        .map(|(per_second, p50_ms)| RedisRun {
            requests,
            per_second,
            p50_ms,
        })
        .ok_or_else(|| {
            let stderr = String::from_utf8_lossy(&output.stderr);
            format!(
                "no result from redis-benchmark (is Redis running on 127.0.0.1:6379?): {} {}",
                text.trim(),
                stderr.trim()
            )
        })
}

/// Parses `GET: 30303.03 requests per second, p50=0.031 msec` (progress lines end with `\r`).
fn parse_quiet_output(text: &str) -> Option<(f64, Option<f64>)> {
    let line = text
        .split(['\r', '\n'])
        .rfind(|l| l.contains("requests per second"))?;
    let rps = line
        .split_once(':')?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let p50 = line
        .split_once("p50=")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok());
    Some((rps, p50))
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
    fn parses_quiet_output() {
        let out = "\rGET: rps=0.0 (overall: 0.0) avg_msec=-nan (overall: -nan)\r   \rGET: 30303.03 requests per second, p50=0.031 msec\n\n";
        assert_eq!(parse_quiet_output(out), Some((30303.03, Some(0.031))));
        // Older versions print no percentile.
        assert_eq!(
            parse_quiet_output("GET: 1000.00 requests per second\n"),
            Some((1000.0, None))
        );
        assert_eq!(
            parse_quiet_output("Could not connect to Redis at 127.0.0.1:6379"),
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
