//! Client side of the stream scenarios: WebSocket subscribers on the engine's stream port, a
//! rate-controlled `stream::send` publisher, a raw reader for a client that stopped reading, and
//! runtimes on threads of their own.
//!
//! Subscribers use tokio-tungstenite on a socket with TCP_NODELAY. They do not parse envelopes as
//! JSON: the `seq` the hub appends last and the publish time the publisher puts in the event data
//! (`"bench_ns":N`) are found by scanning the bytes, so 10 000 subscribers stay cheap for the
//! load generator.

use std::io::Read;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use trine_sdk::Worker;

use crate::histogram::Histogram;
use crate::scenarios::{build_runtime, worker_options};

pub type Ws = WebSocketStream<TcpStream>;

/// Nanoseconds since a process-wide origin: publish times in events and receive times are both
/// taken from it (publisher and subscribers live in this process).
pub fn now_ns() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// `host:port` of a `ws://host:port[/]` URL.
pub fn authority(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("not a ws:// URL: {url}"))?;
    Ok(rest.trim_end_matches('/').to_owned())
}

/// Opens a TCP connection (TCP_NODELAY) and does the WebSocket handshake for `path`.
pub async fn connect(authority: &str, path: &str, read_buffer: usize) -> anyhow::Result<Ws> {
    let tcp = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    tcp.set_nodelay(true)?;
    let config = WebSocketConfig::default().read_buffer_size(read_buffer);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{authority}{path}"),
        tcp,
        Some(config),
    )
    .await
    .with_context(|| format!("WebSocket handshake for {path}"))?;
    Ok(ws)
}

/// [`connect`] with a few retries (a full listen backlog shows up as a slow or failed connect).
pub async fn connect_retrying(
    authority: &str,
    path: &str,
    read_buffer: usize,
    attempts: usize,
) -> anyhow::Result<Ws> {
    let mut last = None;
    for attempt in 0..attempts.max(1) {
        match connect(authority, path, read_buffer).await {
            Ok(ws) => return Ok(ws),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
}

// ---------------------------------------------------------------------------------------------
// byte scanning

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

fn digits(hay: &[u8]) -> Option<u64> {
    let end = hay
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(hay.len());
    if end == 0 {
        return None;
    }
    std::str::from_utf8(&hay[..end]).ok()?.parse().ok()
}

/// The number after the first occurrence of `key` (e.g. `"bench_ns":`).
pub fn u64_after(hay: &[u8], key: &[u8]) -> Option<u64> {
    digits(&hay[find(hay, key)? + key.len()..])
}

/// The number after the last occurrence of `key`: the hub appends `"seq":N,"epoch":…` last.
pub fn u64_after_last(hay: &[u8], key: &[u8]) -> Option<u64> {
    digits(&hay[rfind(hay, key)? + key.len()..])
}

// ---------------------------------------------------------------------------------------------
// subscribers

/// `Slot::close` while the client is connected.
pub const OPEN: u32 = 0;
/// `Slot::close` when the connection ended without a close frame.
pub const NO_CLOSE_FRAME: u32 = 1;
/// `Slot::close` when the client never connected.
pub const CONNECT_FAILED: u32 = 2;

/// Counters of one subscriber.
#[derive(Default)]
pub struct Slot {
    pub received: AtomicU64,
    /// Sequence numbers skipped (`seq` jumped by more than one).
    pub gaps: AtomicU64,
    /// Envelopes whose `seq` was not above the previous one.
    pub disorder: AtomicU64,
    /// Envelopes whose `seq` lies in the current sequence window (see
    /// [`Subscribers::set_seq_window`]).
    pub in_window: AtomicU64,
    /// [`OPEN`], [`NO_CLOSE_FRAME`], [`CONNECT_FAILED`] or the close code received.
    pub close: AtomicU32,
}

const TIMELINE_BUCKETS: usize = 1200;
const TIMELINE_STEP_NS: u64 = 100_000_000;

/// A set of subscribers and what they saw.
pub struct Subscribers {
    pub slots: Vec<Slot>,
    /// Latency histograms of the sampled subscribers (every `sample_every`-th).
    samples: Vec<Mutex<Histogram>>,
    sample_every: usize,
    /// Publish-time window (ns, [`now_ns`]) of the envelopes whose latency is recorded.
    window_from: AtomicU64,
    window_to: AtomicU64,
    /// Envelopes with `seq_from < seq <= seq_to` are counted in `Slot::in_window`.
    seq_from: AtomicU64,
    seq_to: AtomicU64,
    /// Worst latency per 100 ms of publish time since `window_from` (ns).
    timeline: Vec<AtomicU64>,
    pub connected: AtomicUsize,
    pub failed: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

/// Sums over all subscribers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub received: u64,
    pub gaps: u64,
    pub disorder: u64,
    pub in_window: u64,
    /// Subscribers whose connection ended (close frame or not), failed connects excluded.
    pub ended: u64,
}

impl Subscribers {
    /// `n` subscribers, latency sampled on every `sample_every`-th (1 = all).
    pub fn new(n: usize, sample_every: usize) -> Arc<Self> {
        let sample_every = sample_every.max(1);
        Arc::new(Self {
            slots: (0..n).map(|_| Slot::default()).collect(),
            samples: (0..n.div_ceil(sample_every))
                .map(|_| Mutex::new(Histogram::default()))
                .collect(),
            sample_every,
            window_from: AtomicU64::new(u64::MAX),
            window_to: AtomicU64::new(0),
            seq_from: AtomicU64::new(u64::MAX),
            seq_to: AtomicU64::new(u64::MAX),
            timeline: (0..TIMELINE_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            connected: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            first_error: Mutex::new(None),
        })
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn sampled(&self) -> usize {
        self.samples.len()
    }

    /// Record latencies of envelopes published in `[from, to)` (ns, [`now_ns`]); the timeline
    /// restarts at `from`.
    pub fn set_window(&self, from: u64, to: u64) {
        for b in &self.timeline {
            b.store(0, Ordering::Relaxed);
        }
        self.window_to.store(to, Ordering::Relaxed);
        self.window_from.store(from, Ordering::Relaxed);
    }

    /// The worst latency per 100 ms of publish time since the window start.
    pub fn timeline(&self) -> Vec<Duration> {
        self.timeline
            .iter()
            .map(|b| Duration::from_nanos(b.load(Ordering::Relaxed)))
            .collect()
    }

    /// Count envelopes with `from < seq <= to` in `Slot::in_window` (reset here). With one group
    /// in the engine, its `seq` equals the engine's `published` counter, so a window can be
    /// placed by reading that counter.
    pub fn set_seq_window(&self, from: u64, to: u64) {
        // An empty window while the counters are reset.
        self.seq_to.store(0, Ordering::Relaxed);
        self.seq_from.store(from, Ordering::Relaxed);
        for s in &self.slots {
            s.in_window.store(0, Ordering::Relaxed);
        }
        self.seq_to.store(to, Ordering::Relaxed);
    }

    /// Waits (up to `timeout`) until the envelopes of the sequence window reached `expected`
    /// deliveries in all; returns the count reached.
    pub async fn wait_in_window(&self, expected: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.totals().in_window;
            if got >= expected || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Merges and resets the latency histograms.
    pub fn take_latency(&self) -> Histogram {
        let mut h = Histogram::default();
        for s in &self.samples {
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            h.merge(&s);
            *s = Histogram::default();
        }
        h
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for s in &self.slots {
            t.received += s.received.load(Ordering::Relaxed);
            t.gaps += s.gaps.load(Ordering::Relaxed);
            t.disorder += s.disorder.load(Ordering::Relaxed);
            t.in_window += s.in_window.load(Ordering::Relaxed);
            let c = s.close.load(Ordering::Relaxed);
            if c != OPEN && c != CONNECT_FAILED {
                t.ended += 1;
            }
        }
        t
    }

    /// How many subscribers ended with each close code (`NO_CLOSE_FRAME` as 1).
    pub fn close_codes(&self) -> Vec<(u32, usize)> {
        let mut out: Vec<(u32, usize)> = Vec::new();
        for s in &self.slots {
            let c = s.close.load(Ordering::Relaxed);
            if c == OPEN || c == CONNECT_FAILED {
                continue;
            }
            match out.iter_mut().find(|(code, _)| *code == c) {
                Some((_, n)) => *n += 1,
                None => out.push((c, 1)),
            }
        }
        out.sort_unstable();
        out
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Connects every subscriber to `path` on `rt`, at most `concurrency` handshakes at a time
    /// (the engine's listen backlog is 1 024), then reads until the connection ends.
    pub fn spawn(
        self: &Arc<Self>,
        rt: &tokio::runtime::Handle,
        authority: &str,
        path: &str,
        read_buffer: usize,
        concurrency: usize,
    ) {
        let gate = Arc::new(Semaphore::new(concurrency.max(1)));
        for i in 0..self.len() {
            let (subs, gate) = (self.clone(), gate.clone());
            let (authority, path) = (authority.to_owned(), path.to_owned());
            rt.spawn(async move {
                let permit = gate.acquire_owned().await;
                let ws = match connect_retrying(&authority, &path, read_buffer, 4).await {
                    Ok(ws) => ws,
                    Err(e) => {
                        subs.slots[i].close.store(CONNECT_FAILED, Ordering::Relaxed);
                        subs.failed.fetch_add(1, Ordering::Relaxed);
                        subs.first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert_with(|| format!("{e:#}"));
                        return;
                    }
                };
                drop(permit);
                subs.connected.fetch_add(1, Ordering::Relaxed);
                subs.read(i, ws).await;
            });
        }
    }

    /// Waits until every subscriber connected or failed; prints progress to stderr.
    pub async fn wait_connected(&self, what: &str, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut last_print = Instant::now();
        loop {
            let (ok, failed) = (
                self.connected.load(Ordering::Relaxed),
                self.failed.load(Ordering::Relaxed),
            );
            if ok + failed >= self.len() {
                if failed > 0 {
                    eprintln!(
                        "warning: {what}: {failed} of {} clients could not connect (first: {})",
                        self.len(),
                        self.first_error().unwrap_or_default()
                    );
                }
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!(
                    "{what}: only {ok} of {} clients connected within {timeout:?} ({failed} failed; first error: {})",
                    self.len(),
                    self.first_error().unwrap_or_default()
                );
            }
            if last_print.elapsed() > Duration::from_secs(5) {
                eprintln!("  … {what}: {ok} / {} clients connected", self.len());
                last_print = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every connected subscriber received at least `n` envelopes.
    pub async fn wait_received(&self, n: u64, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            let behind = self
                .slots
                .iter()
                .filter(|s| {
                    s.close.load(Ordering::Relaxed) == OPEN
                        && s.received.load(Ordering::Relaxed) < n
                })
                .count();
            if behind == 0 {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!("{behind} clients had fewer than {n} envelopes after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn read(&self, i: usize, mut ws: Ws) {
        let slot = &self.slots[i];
        let sample = i
            .is_multiple_of(self.sample_every)
            .then(|| &self.samples[i / self.sample_every]);
        let mut last_seq: Option<u64> = None;
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Text(text)) => {
                    let bytes = text.as_bytes();
                    slot.received.fetch_add(1, Ordering::Relaxed);
                    if let Some(seq) = u64_after_last(bytes, b"\"seq\":") {
                        match last_seq {
                            Some(prev) if seq > prev + 1 => {
                                slot.gaps.fetch_add(seq - prev - 1, Ordering::Relaxed);
                            }
                            Some(prev) if seq <= prev => {
                                slot.disorder.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        }
                        last_seq = Some(last_seq.map_or(seq, |p| p.max(seq)));
                        if seq > self.seq_from.load(Ordering::Relaxed)
                            && seq <= self.seq_to.load(Ordering::Relaxed)
                        {
                            slot.in_window.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if let Some(h) = sample {
                        if let Some(sent) = u64_after(bytes, b"\"bench_ns\":") {
                            let now = now_ns();
                            let from = self.window_from.load(Ordering::Relaxed);
                            if sent >= from && sent < self.window_to.load(Ordering::Relaxed) {
                                let lat = now.saturating_sub(sent);
                                h.lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .record(Duration::from_nanos(lat));
                                let bucket = ((sent - from) / TIMELINE_STEP_NS) as usize;
                                if let Some(b) = self.timeline.get(bucket) {
                                    b.fetch_max(lat, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                }
                Ok(Message::Close(frame)) => {
                    let code = frame.map_or(1005, |f| u16::from(f.code) as u32);
                    slot.close.store(code, Ordering::Relaxed);
                    return;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        slot.close.store(NO_CLOSE_FRAME, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// publisher

/// Publishes `stream::send` events (fire and forget) at a rate set through [`Publisher::set_rate`]
/// from a trine-sdk worker on a thread of its own. Each event's data is
/// `{"bench_ns":<publish time>,"pad":"xx…"}`, padded to `data_bytes` of compact JSON.
pub struct Publisher {
    control: Option<watch::Sender<Option<f64>>>,
    pub sent: Arc<AtomicU64>,
    pub errors: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The `stream::send` payload of one event published now.
pub fn event_payload(stream: &str, group: &str, pad: &str) -> Value {
    json!({
        "stream_name": stream,
        "group_id": group,
        "type": "bench",
        "data": {"bench_ns": now_ns(), "pad": pad},
    })
}

/// Padding so that `{"bench_ns":<11 digits>,"pad":"…"}` is about `data_bytes` long (the
/// publish time has 10–12 digits during a run).
pub fn padding(data_bytes: usize) -> String {
    const FIXED: usize = r#"{"bench_ns":12345678901,"pad":""}"#.len();
    "x".repeat(data_bytes.saturating_sub(FIXED))
}

impl Publisher {
    /// Connects the publishing worker on its own thread (`bench-pub`, current-thread runtime)
    /// and sends one acknowledged event, so a malformed payload fails here rather than silently.
    pub async fn start(
        worker_url: &str,
        stream: &str,
        group: &str,
        data_bytes: usize,
    ) -> anyhow::Result<Self> {
        let (control, mut rx) = watch::channel(None::<f64>);
        let sent = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
        let (url, stream, group, pad) = (
            worker_url.to_owned(),
            stream.to_owned(),
            group.to_owned(),
            padding(data_bytes),
        );
        let (s, e) = (sent.clone(), errors.clone());
        let thread = std::thread::Builder::new()
            .name("bench-pub".into())
            .spawn(move || {
                let rt = match build_runtime(1, "bench-pub") {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let worker = match Worker::connect(&url, worker_options()).await {
                        Ok(w) => w,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                            return;
                        }
                    };
                    let first = worker
                        .call("stream::send", event_payload(&stream, &group, &pad))
                        .await;
                    let failed = first.is_err();
                    let _ = ready_tx.send(first.map(drop).context("stream::send"));
                    if !failed {
                        publish_loop(&worker, &mut rx, &stream, &group, &pad, &s, &e).await;
                    }
                    worker.shutdown().await;
                });
            })?;
        ready_rx.await.context("publisher thread failed")??;
        Ok(Self {
            control: Some(control),
            sent,
            errors,
            thread: Some(thread),
        })
    }

    /// Events per second from now on (`None`: stop publishing).
    pub fn set_rate(&self, rate: Option<f64>) {
        if let Some(c) = &self.control {
            let _ = c.send(rate);
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.control.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends events at the rate `rx` holds (1 ms ticks, catching up on what is due) until the
/// control channel closes.
async fn publish_loop(
    worker: &Worker,
    rx: &mut watch::Receiver<Option<f64>>,
    stream: &str,
    group: &str,
    pad: &str,
    sent: &AtomicU64,
    errors: &AtomicU64,
) {
    loop {
        let rate = *rx.borrow_and_update();
        let Some(rate) = rate.filter(|r| *r > 0.0) else {
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        let start = Instant::now();
        let mut n = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                _ = tick.tick() => {}
            }
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            while n < due {
                match worker.call_void("stream::send", event_payload(stream, group, pad)) {
                    Ok(()) => sent.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
                n += 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// a client that does not read

/// What a stalled client found in its socket when it finally read it.
#[derive(Debug, Default)]
pub struct StalledRead {
    pub bytes: u64,
    pub envelopes: u64,
    /// `seq` of the last envelope before the close.
    pub last_seq: Option<u64>,
    /// The `slow_consumer` error frame, if one came.
    pub notice: Option<String>,
    pub close: Option<(u16, String)>,
    /// How the read ended when no close frame came.
    pub ended: Option<String>,
}

/// Opens a subscription with a WebSocket handshake and returns the raw socket: nothing reads it
/// until [`drain_to_close`].
pub async fn stalled_client(authority: &str, path: &str) -> anyhow::Result<std::net::TcpStream> {
    let ws = connect(authority, path, 4 * 1024).await?;
    let tcp = ws.into_inner().into_std()?;
    tcp.set_nonblocking(false)?;
    Ok(tcp)
}

/// Reads `tcp` (blocking) frame by frame until a close frame, the end of the stream, or
/// `timeout` without data.
pub fn drain_to_close(mut tcp: std::net::TcpStream, timeout: Duration) -> StalledRead {
    let mut out = StalledRead::default();
    if let Err(e) = tcp.set_read_timeout(Some(timeout)) {
        out.ended = Some(format!("set_read_timeout: {e}"));
        return out;
    }
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        // Parse every complete frame in `buf`.
        let mut at = 0;
        while let Some((opcode, start, len)) = frame_header(&buf[at..]) {
            let payload = &buf[at + start..at + start + len];
            match opcode {
                0x0..=0x2 => {
                    if find(payload, b"\"slow_consumer\"").is_some() {
                        out.notice = Some(String::from_utf8_lossy(payload).into_owned());
                    } else {
                        out.envelopes += 1;
                        if let Some(seq) = u64_after_last(payload, b"\"seq\":") {
                            out.last_seq = Some(seq);
                        }
                    }
                }
                0x8 => {
                    let code = if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        1005
                    };
                    let reason = payload
                        .get(2..)
                        .map(|r| String::from_utf8_lossy(r).into_owned())
                        .unwrap_or_default();
                    out.close = Some((code, reason));
                    return out;
                }
                _ => {}
            }
            at += start + len;
        }
        buf.drain(..at);
        match tcp.read(&mut chunk) {
            Ok(0) => {
                out.ended = Some("end of stream without a close frame".into());
                return out;
            }
            Ok(n) => {
                out.bytes += n as u64;
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) => {
                out.ended = Some(format!("read: {e}"));
                return out;
            }
        }
    }
}

/// `(opcode, payload offset, payload length)` of the server frame at the start of `b`, when it
/// is complete.
fn frame_header(b: &[u8]) -> Option<(u8, usize, usize)> {
    if b.len() < 2 {
        return None;
    }
    let opcode = b[0] & 0x0f;
    let masked = b[1] & 0x80 != 0;
    let (len, mut start) = match b[1] & 0x7f {
        126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
        127 => {
            let raw: [u8; 8] = b.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(raw) as usize, 10)
        }
        n => (n as usize, 2),
    };
    if masked {
        start += 4; // servers do not mask; skip a key if one is there anyway
    }
    (b.len() >= start + len).then_some((opcode, start, len))
}

// ---------------------------------------------------------------------------------------------
// runtimes

/// A tokio runtime on a thread of its own (`threads` = 1: current-thread), kept running until
/// dropped; tasks are spawned through `handle`. Dropping it cancels its tasks (closing their
/// sockets).
pub struct RuntimeThread {
    pub handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RuntimeThread {
    pub fn start(name: &str, threads: usize) -> anyhow::Result<Self> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread_name = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || match build_runtime(threads, &thread_name) {
                Ok(rt) => {
                    let _ = handle_tx.send(Ok(rt.handle().clone()));
                    rt.block_on(async {
                        let _ = stop_rx.await;
                    });
                }
                Err(e) => {
                    let _ = handle_tx.send(Err(e));
                }
            })?;
        let handle = handle_rx
            .recv()
            .context("runtime thread ended before starting")??;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for RuntimeThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_envelope_fields() {
        let env = br#"{"type":"stream","timestamp":1,"streamName":"bench","groupId":"all","id":null,"event":{"type":"event","event":{"type":"bench","data":{"bench_ns":123456,"pad":"xx","seq":7}}},"seq":42,"epoch":"abc-0"}"#;
        assert_eq!(u64_after_last(env, b"\"seq\":"), Some(42));
        assert_eq!(u64_after(env, b"\"bench_ns\":"), Some(123456));
        assert_eq!(u64_after(env, b"\"nope\":"), None);
        assert_eq!(authority("ws://127.0.0.1:3112").unwrap(), "127.0.0.1:3112");
        let v: Value = serde_json::from_str(
            &serde_json::to_string(&event_payload("s", "g", &padding(100))).unwrap(),
        )
        .unwrap();
        let data_len = serde_json::to_string(&v["data"]).unwrap().len();
        // `bench_ns` has fewer digits this early in a process.
        assert!((90..=105).contains(&data_len), "{data_len}");
    }

    #[test]
    fn parses_server_frames() {
        let mut b = vec![0x81, 3, b'a', b'b', b'c'];
        assert_eq!(frame_header(&b), Some((1, 2, 3)));
        b.truncate(4);
        assert_eq!(frame_header(&b), None);
        let mut long = vec![0x81, 126, 0x01, 0x00];
        long.extend(std::iter::repeat_n(b'x', 256));
        assert_eq!(frame_header(&long), Some((1, 4, 256)));
        let close = [0x88, 4, 0x0f, 0xa8, b'o', b'k'];
        assert_eq!(frame_header(&close), Some((8, 2, 4)));
        assert_eq!(u16::from_be_bytes([0x0f, 0xa8]), 4008);
    }
}
