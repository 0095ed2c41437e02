//! `--state-adapter redis`: the engine's state on a Redis server, and that server's own
//! `redis-benchmark` figures as the yardstick.
//!
//! A [`RedisDataSet`] is one run's data set: a generated config file putting `iii-state` on the
//! `redis` adapter with a key prefix of its own (`trine-bench-<pid>-<nanos>`), and the cleanup
//! that deletes every key under that prefix once the engine has stopped. Everything talks to
//! the server through `redis-cli` and `redis-benchmark` (both come with Redis), so the harness
//! needs no Redis client of its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::engine::cpu_time_of;
use crate::yardstick::{RedisBench, RedisRun};

/// The key every `redis-benchmark` SET/GET uses without `-r`.
const BENCHMARK_KEY: &str = "key:__rand_int__";

/// Deletes every key matching ARGV[1] (a `KEYS` pattern); returns how many. `KEYS` blocks the
/// server while it walks the key space (fine for a bench server, once per run); `UNLINK` frees
/// the big hashes and sorted sets in the background (a `DEL` of a run's data took ~80 ms).
const DELETE_SCRIPT: &str = "local n = 0 \
for _, k in ipairs(redis.call('KEYS', ARGV[1])) do n = n + redis.call('UNLINK', k) end \
return n";

/// A Redis server, addressed by URL (`redis://host:port[/db]`).
#[derive(Clone, Debug)]
pub struct RedisServer {
    pub url: String,
}

impl RedisServer {
    /// `redis-cli -u <url> <args…>` (blocking); its output, trimmed. Fails when redis-cli does,
    /// or when the server answers with an error.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new("redis-cli")
            .args(["--no-auth-warning", "-u", &self.url])
            .args(args)
            .output()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => anyhow::anyhow!("redis-cli is not installed"),
                _ => anyhow::anyhow!("cannot run redis-cli: {e}"),
            })?;
        let out = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let err = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if !output.status.success() || out.starts_with("ERR") || out.starts_with("(error)") {
            bail!(
                "redis-cli {} at {}: {out} {err}",
                args.first().copied().unwrap_or(""),
                self.url
            );
        }
        Ok(out)
    }

    /// Checks that the server answers.
    pub fn ping(&self) -> anyhow::Result<()> {
        let pong = self.cli(&["PING"])?;
        if pong != "PONG" {
            bail!("no Redis at {} (PING answered {pong:?})", self.url);
        }
        Ok(())
    }

    fn info_field(&self, section: &str, name: &str) -> Option<String> {
        let info = self.cli(&["INFO", section]).ok()?;
        info.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .map(str::to_owned)
    }

    fn config(&self, name: &str) -> String {
        // `CONFIG GET` prints the name, then the value (maybe empty), one per line.
        match self.cli(&["CONFIG", "GET", name]) {
            Ok(o) if o.lines().next() == Some(name) => o.lines().nth(1).unwrap_or("").to_owned(),
            _ => "?".into(),
        }
    }

    /// Version and persistence settings, for the report.
    pub fn describe(&self) -> String {
        let version = self
            .info_field("server", "redis_version")
            .unwrap_or_else(|| "?".into());
        let aof = self.config("appendonly");
        let fsync = self.config("appendfsync");
        let save = self.config("save");
        let durable = aof == "yes" && fsync == "always";
        format!(
            "Redis {version} at {}: appendonly {aof}, appendfsync {fsync}, save \"{save}\" ({})",
            self.url,
            if durable {
                "durable: every write fsync'd before its reply"
            } else {
                "not durable: acknowledged writes can be lost on a crash"
            }
        )
    }

    /// The server's process id, when it runs on this machine (its `/proc` entry is a redis
    /// process): for its CPU use.
    pub fn local_pid(&self) -> Option<u32> {
        let pid: u32 = self
            .info_field("server", "process_id")?
            .trim()
            .parse()
            .ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        comm.contains("redis").then_some(pid)
    }

    /// `redis-benchmark -u <url> -t <test> -c <c> -n <n> -d <value_bytes> -P 1` (blocking).
    /// A GET is preceded by a SET of a `value_bytes` value on the benchmark's key, so it reads
    /// values of that size (not nil); the key is deleted afterwards unless it existed before.
    pub fn benchmark(
        &self,
        test: &'static str,
        concurrency: usize,
        requests: u64,
        value_bytes: usize,
    ) -> Result<RedisRun, String> {
        let existed = self
            .cli(&["EXISTS", BENCHMARK_KEY])
            .map_err(|e| e.to_string())?
            != "0";
        if test == "get" {
            let value = "x".repeat(value_bytes);
            self.cli(&["SET", BENCHMARK_KEY, &value])
                .map_err(|e| e.to_string())?;
        }
        let run = RedisBench {
            uri: Some(self.url.clone()),
            test,
            concurrency,
            requests,
            value_bytes: Some(value_bytes),
            pipeline: Some(1),
        }
        .run();
        if !existed {
            if let Err(e) = self.cli(&["DEL", BENCHMARK_KEY]) {
                eprintln!("warning: could not delete {BENCHMARK_KEY}: {e:#}");
            }
        }
        run
    }
}

/// CPU time of a local Redis server, sampled around a run.
pub struct RedisCpu {
    pid: Option<u32>,
    cpu: Option<Duration>,
    at: std::time::Instant,
}

impl RedisCpu {
    pub fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            cpu: pid.and_then(|p| cpu_time_of(&format!("/proc/{p}/stat"))),
            at: std::time::Instant::now(),
        }
    }

    /// Cores the server used on average since [`start`](Self::start).
    pub fn cores(&self) -> Option<f64> {
        let now = cpu_time_of(&format!("/proc/{}/stat", self.pid?))?;
        let used = now.checked_sub(self.cpu?)?;
        Some(used.as_secs_f64() / self.at.elapsed().as_secs_f64())
    }
}

/// One run's data set on a Redis server: the engine config file and the key prefix.
pub struct RedisDataSet {
    server: RedisServer,
    prefix: String,
    config: PathBuf,
    cleaned: bool,
}

impl RedisDataSet {
    /// Checks the server answers and writes the config file into `dir`.
    pub fn create(dir: &Path, url: &str) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let prefix = format!("trine-bench-{}-{nanos}", std::process::id());
        Self::with_config(dir, url, prefix, config_text)
    }

    /// A data set under `prefix` whose engine config file (`<dir>/<prefix>.yaml`) is
    /// `config(url, prefix)`; checks the server answers first.
    pub fn with_config(
        dir: &Path,
        url: &str,
        prefix: String,
        config: impl FnOnce(&str, &str) -> String,
    ) -> anyhow::Result<Self> {
        let server = RedisServer {
            url: url.to_owned(),
        };
        server.ping().with_context(|| {
            format!("this scenario needs a Redis server at {url} (--redis-url)")
        })?;
        let path = dir.join(format!("{prefix}.yaml"));
        std::fs::write(&path, config(url, &prefix))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self {
            server,
            prefix,
            config: path,
            cleaned: false,
        })
    }

    pub fn server(&self) -> &RedisServer {
        &self.server
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Deletes every key of the data set (call it once the engine has stopped) and the config
    /// file; returns how many keys went.
    pub fn cleanup(&mut self) -> anyhow::Result<u64> {
        self.cleaned = true;
        let _ = std::fs::remove_file(&self.config);
        self.delete_keys()
    }

    /// Deletes every key under the prefix (while no engine uses it: before the first starts, or
    /// once all have stopped); returns how many.
    pub fn delete_keys(&self) -> anyhow::Result<u64> {
        let pattern = format!("{}:*", self.prefix);
        let n = self
            .server
            .cli(&["EVAL", DELETE_SCRIPT, "0", &pattern])
            .with_context(|| format!("deleting the keys {pattern}"))?;
        n.parse()
            .with_context(|| format!("deleting the keys {pattern}: unexpected answer {n:?}"))
    }
}

impl Drop for RedisDataSet {
    fn drop(&mut self) {
        if !self.cleaned {
            if let Err(e) = self.cleanup() {
                eprintln!("warning: {e:#}");
            }
        }
    }
}

/// The engine's config: `iii-http` (the harness reads `http_url` from the ready line; the ports
/// come from the command line) and `iii-state` on the `redis` adapter. Queues, cron, pub/sub and
/// streams are off (not listed).
fn config_text(url: &str, prefix: &str) -> String {
    format!(
        "workers:
  - name: iii-http
  - name: iii-state
    config:
      adapter: {{ name: redis, config: {{ redis_url: {url:?}, key_prefix: {prefix:?} }} }}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_the_adapter_url_and_prefix() {
        let text = config_text("redis://127.0.0.1:6379", "trine-bench-1-2");
        assert!(text.contains("- name: iii-state"));
        assert!(text.contains(
            r#"adapter: { name: redis, config: { redis_url: "redis://127.0.0.1:6379", key_prefix: "trine-bench-1-2" } }"#
        ));
    }
}
