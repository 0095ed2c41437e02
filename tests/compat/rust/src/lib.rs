//! Harness for the black-box compatibility tests of the official Rust SDK
//! (crates.io `iii-sdk` 0.26.0-rc.4) against a real `trine serve` process.
//!
//! Layout:
//! - [`Engine`]: spawns `$TRINE_BIN serve` on loopback, waits for its single
//!   `trine ready {...}` stdout line, stops it with SIGTERM (also on drop) and
//!   can restart it on the same ports and data directory.
//! - [`worker`] / [`stop_worker`]: SDK clients with a fixed worker name.
//! - [`call`], [`wait_for_function`], [`wait_until`]: polling helpers
//!   (registrations are asynchronous, protocol.md §1.5).
//! - [`http`]: a minimal HTTP/1.1 client over `TcpStream`, so the suite needs
//!   no HTTP crate.
//!
//! Nothing here knows the engine's internals: tests assert what
//! shared/spec/protocol.md and http.md specify.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use iii_sdk::{register_worker, CallRequest, Error, IIIClient, InitOptions};
use serde_json::{json, Value};

const READY_PREFIX: &str = "trine ready ";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of the engine binary: `$TRINE_BIN`, else `<repo>/target/debug/trine`.
pub fn trine_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TRINE_BIN").filter(|v| !v.is_empty()) {
        return PathBuf::from(bin);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../target/debug/trine")
}

/// A TCP port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

fn unique_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "trine-compat-rs-{tag}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ))
}

/// Ports and flags for one engine.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub worker_port: u16,
    pub http_port: u16,
    pub stream_port: u16,
    pub extra_args: Vec<String>,
}

impl EngineOptions {
    /// Fixed free ports, as restart tests need.
    pub fn fixed_ports() -> Self {
        Self {
            worker_port: free_port(),
            http_port: free_port(),
            stream_port: free_port(),
            extra_args: Vec::new(),
        }
    }
}

/// One `trine serve` process.
pub struct Engine {
    child: Option<Child>,
    options: EngineOptions,
    dir: PathBuf,
    pub worker_url: String,
    pub http_url: String,
    pub stream_url: String,
}

impl Engine {
    /// Start an engine on ephemeral ports.
    pub fn start() -> Engine {
        Self::start_with(EngineOptions::default())
    }

    pub fn start_with(options: EngineOptions) -> Engine {
        let dir = unique_dir("engine");
        std::fs::create_dir_all(dir.join("data")).expect("create engine dir");
        let mut engine = Engine {
            child: None,
            options,
            dir,
            worker_url: String::new(),
            http_url: String::new(),
            stream_url: String::new(),
        };
        engine.spawn();
        engine
    }

    fn spawn(&mut self) {
        let bin = trine_bin();
        assert!(
            bin.exists(),
            "engine binary not found at {} (set TRINE_BIN or build the workspace)",
            bin.display()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("engine.log"))
            .expect("open engine log");
        let mut cmd = Command::new(&bin);
        cmd.arg("serve")
            .args(["--host", "127.0.0.1"])
            .args(["--worker-port", &self.options.worker_port.to_string()])
            .args(["--http-port", &self.options.http_port.to_string()])
            .args(["--stream-port", &self.options.stream_port.to_string()])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(&self.options.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd.spawn().expect("spawn trine serve");
        let stdout = child.stdout.take().expect("engine stdout");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            // Keeps draining stdout after the ready line so the pipe never fills.
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(line) => {
                        let _ = tx.send(line);
                    }
                    Err(_) => break,
                }
            }
        });
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                self.stop();
                panic!(
                    "engine printed no ready line within {READY_TIMEOUT:?}; stdout={seen:?}\n{}",
                    self.log_tail()
                );
            }
            match rx.recv_timeout(remaining) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(READY_PREFIX) {
                        let info: Value = serde_json::from_str(rest).expect("ready line JSON");
                        self.worker_url = info["worker_url"].as_str().expect("worker_url").to_string();
                        self.http_url = info["http_url"].as_str().expect("http_url").to_string();
                        self.stream_url = info["stream_url"].as_str().expect("stream_url").to_string();
                        return;
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    self.child = None;
                    panic!(
                        "engine exited ({status:?}) before it was ready; stdout={seen:?}\n{}",
                        self.log_tail()
                    );
                }
            }
        }
    }

    /// SIGTERM, then wait (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }

    /// Stop and start again with the same ports and data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("engine.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(40);
        format!("engine stderr (tail):\n{}", lines[start..].join("\n"))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A connected SDK client whose engine-visible name is `name`.
pub fn worker(url: &str, name: &str) -> IIIClient {
    // The SDK lets III_WORKER_NAME override the name; the suite never sets it.
    let metadata = iii_sdk::runtime::WorkerMetadata {
        name: name.to_string(),
        ..Default::default()
    };
    register_worker(
        url,
        InitOptions {
            metadata: Some(metadata),
            ..Default::default()
        },
    )
}

/// `shutdown()` joins the SDK's connection thread; keep it off the async threads.
pub async fn stop_worker(client: IIIClient) {
    let _ = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::task::spawn_blocking(move || client.shutdown()),
    )
    .await;
}

/// A synchronous call with an explicit client-side timeout.
pub async fn call(client: &IIIClient, function_id: &str, payload: Value, timeout_ms: u64) -> Result<Value, Error> {
    client
        .call(CallRequest {
            function_id: function_id.to_string(),
            payload,
            action: None,
            timeout_ms: Some(timeout_ms),
        })
        .await
}

/// The `code` of a remote error, if `result` is one.
pub fn remote_code(result: &Result<Value, Error>) -> Option<String> {
    match result {
        Err(Error::Remote { code, .. }) => Some(code.clone()),
        _ => None,
    }
}

/// Poll `probe` every 100 ms until it yields `Some`; panic after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until `engine::functions::list` (asked through `client`) names `function_id`.
pub async fn wait_for_function(client: &IIIClient, function_id: &str) {
    wait_until(
        &format!("function {function_id} to be registered"),
        Duration::from_secs(15),
        move || async move {
            let listed = call(client, "engine::functions::list", json!({}), 5000).await.ok()?;
            listed["functions"]
                .as_array()?
                .iter()
                .any(|f| f["function_id"] == function_id)
                .then_some(())
        },
    )
    .await
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One HTTP/1.1 request (`Connection: close`) to `base_url` + `path`.
pub fn http(method: &str, base_url: &str, path: &str, json_body: Option<&Value>) -> std::io::Result<HttpResponse> {
    let host = base_url
        .strip_prefix("http://")
        .expect("http base url")
        .trim_end_matches('/');
    let mut stream = TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let body = json_body.map(|v| v.to_string()).unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: */*\r\n"
    );
    if json_body.is_some() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    request.push_str(&body);
    stream.write_all(request.as_bytes())?;

    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> std::io::Result<HttpResponse> {
    let bad = |msg: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header terminator"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("non-UTF-8 head"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Poll `method path` until it answers something other than 404 (routes are
/// registered asynchronously).
pub async fn wait_for_route(method: &str, base_url: &str, path: &str) -> HttpResponse {
    wait_until(
        &format!("route {method} {path}"),
        Duration::from_secs(15),
        move || async move {
            let (m, b, p) = (method.to_string(), base_url.to_string(), path.to_string());
            let resp = tokio::task::spawn_blocking(move || http(&m, &b, &p, None))
                .await
                .ok()?
                .ok()?;
            (resp.status != 404).then_some(resp)
        },
    )
    .await
}

/// [`http`] off the async threads.
pub async fn http_async(method: &str, base_url: &str, path: &str, json_body: Option<Value>) -> HttpResponse {
    let (m, b, p) = (method.to_string(), base_url.to_string(), path.to_string());
    tokio::task::spawn_blocking(move || http(&m, &b, &p, json_body.as_ref()))
        .await
        .expect("http task")
        .expect("http request")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_chunked_responses() {
        let plain = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nX-A: 1\r\n\r\n{\"a\":1}";
        let r = parse_response(plain).unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.header("x-a"), Some("1"));
        assert_eq!(r.json(), json!({"a": 1}));

        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":2}\r\n0\r\n\r\n";
        let r = parse_response(chunked).unwrap();
        assert_eq!(r.json(), json!({"a": 2}));
    }
}
