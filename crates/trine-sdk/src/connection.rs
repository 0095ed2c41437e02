//! The background side of a [`Worker`](crate::Worker): one supervisor task that (re)connects with
//! backoff, and per connection one read task and one write task.
//!
//! Per connection:
//! 1. Under the registry lock, the replay is queued on a fresh bounded outbound queue —
//!    `reattach` (when a previous `workerregistered` is known), every `registerfunction`, every
//!    `registertrigger` (same ids), then the void `engine::workers::register` call — and the
//!    queue is published as the current [`Link`]. Calls waiting for a connection go out after it.
//! 2. The write task drains the queue into the socket (batching what is already queued into one
//!    flush) and sends a WebSocket Ping every `ping_interval`; it drops the connection when nothing
//!    arrived for `idle_timeout`.
//! 3. The read task decodes frames: results complete pending calls; invocations run their
//!    handler on a spawned task (a slow handler never blocks reading); JSON pings are answered.
//! 4. When either task ends, the link is retired *before* the calls sent on it are failed with
//!    [`Error::Disconnected`], so no call can be left waiting on a dead socket.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use trine_protocol::{
    codes, decode_worker_frame, ErrorBody, InvocationResult, InvokeFunction, Message, Reattach,
};

use crate::backoff::Backoff;
use crate::client::{lock, Link, Shared};
use crate::handler::INVOCATION_FAILED;
use crate::metadata::register_frame;
use crate::Error;

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Limit of one connection attempt (TCP connect + WebSocket handshake), as in the iii SDKs.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Frames written per flush at most, so a busy queue still gets flushed regularly.
const WRITE_BATCH: usize = 64;

/// Runs until the worker is shut down: connect, serve, back off, repeat. On exit no link is
/// published and every pending call has failed with [`Error::Shutdown`].
pub(crate) async fn supervise(shared: Arc<Shared>) {
    let mut backoff = Backoff::new(
        shared.options.reconnect_initial,
        shared.options.reconnect_max,
    );
    let mut generation = 0u64;
    loop {
        let attempt = tokio::select! {
            attempt = connect_once(&shared.url) => attempt,
            _ = shared.cancel.cancelled() => break,
        };
        match attempt {
            Ok(ws) => {
                backoff.reset();
                *lock(&shared.last_error) = None;
                generation += 1;
                tracing::debug!(url = %shared.url, generation, "connected to engine");
                serve(&shared, ws, generation).await;
            }
            Err(reason) => {
                tracing::debug!(url = %shared.url, %reason, "connection attempt failed");
                *lock(&shared.last_error) = Some(reason);
            }
        }
        if shared.cancel.is_cancelled() {
            break;
        }
        let delay = backoff.next_delay();
        tracing::debug!(?delay, "reconnecting after delay");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.cancel.cancelled() => break,
        }
    }
    shared.link.send_replace(None);
    shared.pending.fail_all(&Error::Shutdown);
}

async fn connect_once(url: &str) -> Result<WsStream, String> {
    // `disable_nagle`: sets TCP_NODELAY, small frames must not wait for ACKs.
    let connect = tokio_tungstenite::connect_async_with_config(url, None, true);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("handshake timed out after {HANDSHAKE_TIMEOUT:?}")),
    }
}

/// Serves one connection until it ends or the worker shuts down.
async fn serve(shared: &Arc<Shared>, ws: WsStream, generation: u64) {
    let (sink, stream) = ws.split();
    let (link, rx) = open_link(shared, generation);
    let clock = Clock::new();
    let keepalive = Keepalive {
        ping_interval: shared.options.ping_interval,
        idle_timeout: shared.options.idle_timeout,
    };
    let mut writer = tokio::spawn(write_loop(sink, rx, keepalive, clock.clone()));
    let mut reader = tokio::spawn(read_loop(Arc::clone(shared), stream, link.clone(), clock));

    let shutting_down = tokio::select! {
        ended = &mut reader => {
            log_end("read", ended);
            false
        }
        ended = &mut writer => {
            log_end("write", ended);
            false
        }
        _ = shared.cancel.cancelled() => true,
    };

    // Retire the link first, then fail what was sent on it (see PendingCalls::insert_if_alive).
    shared.link.send_if_modified(|current| match current {
        Some(l) if l.generation == generation => {
            *current = None;
            true
        }
        _ => false,
    });
    link.alive.store(false, Ordering::Release);
    let error = if shutting_down {
        Error::Shutdown
    } else {
        Error::Disconnected
    };
    shared.pending.fail_generation(generation, &error);

    if shutting_down {
        // Polite close: queued frames first, then a Close frame; bounded so shutdown never hangs.
        if link.tx.try_send(WsMessage::Close(None)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut writer).await;
        }
    }
    reader.abort();
    writer.abort();
}

fn log_end(side: &str, ended: Result<Result<(), String>, tokio::task::JoinError>) {
    match ended {
        Ok(Ok(())) => tracing::debug!(side, "engine connection closed"),
        Ok(Err(reason)) => tracing::warn!(side, %reason, "engine connection lost"),
        Err(e) => tracing::warn!(side, error = %e, "engine connection task failed"),
    }
}

/// Queues the replay on a fresh outbound queue and publishes it as the current link.
fn open_link(shared: &Shared, generation: u64) -> (Link, mpsc::Receiver<WsMessage>) {
    let registry = lock(&shared.registry);
    let mut frames = Vec::new();
    if let Some(previous) = lock(&shared.session).clone() {
        frames.push(Message::Reattach(Reattach {
            previous_worker_id: previous.worker_id,
            reattach_token: previous.reattach_token,
        }));
    }
    frames.extend(registry.replay());
    frames.push(register_frame(
        &shared.name,
        shared.options.description.as_deref(),
    ));
    // Room for the whole replay on top of the normal capacity, so it can be queued without
    // waiting (and without releasing the registry lock).
    let (tx, rx) = mpsc::channel(shared.options.outbound_capacity.max(1) + frames.len());
    for frame in frames {
        let _ = tx.try_send(WsMessage::text(frame.to_json()));
    }
    let link = Link {
        tx,
        generation,
        alive: Arc::new(AtomicBool::new(true)),
    };
    shared.link.send_replace(Some(link.clone()));
    drop(registry);
    (link, rx)
}

#[derive(Clone, Copy)]
struct Keepalive {
    ping_interval: Duration,
    idle_timeout: Duration,
}

/// When the last frame arrived, shared by the read task (writes) and the write task (checks).
#[derive(Clone)]
struct Clock {
    epoch: Instant,
    last_inbound_ms: Arc<AtomicU64>,
}

impl Clock {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_inbound_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_inbound_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let last = self.last_inbound_ms.load(Ordering::Relaxed);
        Duration::from_millis(self.now_ms().saturating_sub(last))
    }
}

async fn write_loop(
    mut sink: SplitSink<WsStream, WsMessage>,
    mut rx: mpsc::Receiver<WsMessage>,
    keepalive: Keepalive,
    clock: Clock,
) -> Result<(), String> {
    // The first tick fires at once: one Ping right after connecting.
    let mut ping = tokio::time::interval(keepalive.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { return Ok(()) };
                let mut closing = matches!(msg, WsMessage::Close(_));
                sink.feed(msg).await.map_err(|e| e.to_string())?;
                let mut batched = 1;
                while !closing && batched < WRITE_BATCH {
                    let Ok(msg) = rx.try_recv() else { break };
                    closing = matches!(msg, WsMessage::Close(_));
                    sink.feed(msg).await.map_err(|e| e.to_string())?;
                    batched += 1;
                }
                sink.flush().await.map_err(|e| e.to_string())?;
                if closing {
                    return Ok(());
                }
            }
            _ = ping.tick() => {
                let silent = clock.silent_for();
                if silent > keepalive.idle_timeout {
                    return Err(format!("nothing received from the engine for {silent:?}"));
                }
                sink.send(WsMessage::Ping(Default::default()))
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
    }
}

async fn read_loop(
    shared: Arc<Shared>,
    mut stream: SplitStream<WsStream>,
    link: Link,
    clock: Clock,
) -> Result<(), String> {
    while let Some(frame) = stream.next().await {
        let frame = frame.map_err(|e| e.to_string())?;
        clock.touch();
        match frame {
            WsMessage::Text(text) => handle_frame(&shared, &link, text.as_str()),
            // The engine should send text, but JSON in a binary frame is accepted (protocol §1.3).
            WsMessage::Binary(bytes) => match std::str::from_utf8(&bytes) {
                Ok(text) => handle_frame(&shared, &link, text),
                Err(_) => tracing::debug!("ignoring a non-UTF-8 binary frame"),
            },
            WsMessage::Close(close) => {
                tracing::debug!(?close, "engine closed the connection");
                return Ok(());
            }
            // Pongs to WebSocket Pings are sent by tungstenite itself.
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
        }
    }
    Ok(())
}

fn handle_frame(shared: &Shared, link: &Link, text: &str) {
    match decode_worker_frame(text) {
        Ok(Some(Message::InvocationResult(r))) => {
            let outcome = match r.error {
                Some(body) => Err(Error::Remote(body)),
                None => Ok(r.result.unwrap_or(Value::Null)),
            };
            if !shared.pending.complete(&r.invocation_id, outcome) {
                tracing::debug!(invocation_id = %r.invocation_id, "result for an unknown or expired call");
            }
        }
        Ok(Some(Message::InvokeFunction(invocation))) => dispatch(shared, link, invocation),
        Ok(Some(Message::Ping)) => reply(link, Message::Pong),
        Ok(Some(Message::WorkerRegistered(registered))) => {
            *lock(&shared.session) = Some(registered);
        }
        Ok(Some(Message::TriggerRegistrationResult(r))) => {
            if let Some(error) = r.error {
                tracing::warn!(trigger_id = %r.id, trigger_type = %r.trigger_type, %error, "engine refused a trigger");
            }
        }
        Ok(Some(Message::Error(frame))) => {
            tracing::warn!(error = %frame.error, "engine reported an error");
        }
        Ok(Some(_)) | Ok(None) => {}
        Err(e) => {
            tracing::warn!(code = e.code, message = %e.message, "undecodable frame from the engine");
            // An invocation we cannot read still gets an answer, so its caller does not hang.
            if let Some(invocation_id) = e.invocation_id.clone() {
                let function_id = e.function_id.clone().unwrap_or_default();
                reply(
                    link,
                    result_frame(invocation_id, function_id, Err(e.to_error_body())),
                );
            }
        }
    }
}

/// Runs a handler for an engine → worker invocation on its own task.
fn dispatch(shared: &Shared, link: &Link, invocation: InvokeFunction) {
    let handler = lock(&shared.registry).handler(&invocation.function_id);
    let InvokeFunction {
        invocation_id,
        function_id,
        data,
        ..
    } = invocation;
    let Some(handler) = handler else {
        match invocation_id {
            Some(id) => reply(
                link,
                result_frame(
                    id,
                    function_id,
                    Err(ErrorBody::new(
                        codes::FUNCTION_NOT_FOUND,
                        "Function not found",
                    )),
                ),
            ),
            None => tracing::debug!(%function_id, "void invocation of an unknown function"),
        }
        return;
    };
    let tx = link.tx.clone();
    tokio::spawn(async move {
        let run = AssertUnwindSafe(async move { handler.call(data).await });
        let outcome = match run.catch_unwind().await {
            Ok(outcome) => outcome,
            Err(panic) => Err(ErrorBody::new(
                INVOCATION_FAILED,
                format!("handler panicked: {}", panic_message(panic.as_ref())),
            )),
        };
        match invocation_id {
            Some(id) => {
                let frame = result_frame(id, function_id, outcome).to_json();
                // Waiting for room here only delays this handler's reply, never the read loop.
                if tx.send(WsMessage::text(frame)).await.is_err() {
                    tracing::debug!("connection gone before a result could be sent");
                }
            }
            None => {
                if let Err(error) = outcome {
                    tracing::debug!(%function_id, %error, "void invocation failed");
                }
            }
        }
    });
}

/// Queues a frame from the read loop without ever blocking it: when the queue is full the send
/// waits on its own task instead.
fn reply(link: &Link, frame: Message) {
    match link.tx.try_send(WsMessage::text(frame.to_json())) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
        Err(mpsc::error::TrySendError::Full(msg)) => {
            let tx = link.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(msg).await;
            });
        }
    }
}

/// The `invocationresult` for an outcome; a `null` result is omitted (protocol §2.4).
pub(crate) fn result_frame(
    invocation_id: String,
    function_id: String,
    outcome: Result<Value, ErrorBody>,
) -> Message {
    Message::InvocationResult(InvocationResult::from_outcome(
        invocation_id,
        function_id,
        outcome.map(Some),
    ))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn result_frames_omit_null_and_carry_errors() {
        let v =
            serde_json::to_value(result_frame("i".into(), "f".into(), Ok(Value::Null))).unwrap();
        assert_eq!(
            v,
            json!({"type":"invocationresult","invocation_id":"i","function_id":"f"})
        );
        let v = serde_json::to_value(result_frame("i".into(), "f".into(), Ok(json!([1])))).unwrap();
        assert_eq!(v["result"], json!([1]));
        let v = serde_json::to_value(result_frame(
            "i".into(),
            "f".into(),
            Err(ErrorBody::new("boom", "bad")),
        ))
        .unwrap();
        assert_eq!(v["error"], json!({"code":"boom","message":"bad"}));
        assert!(v.get("result").is_none());
    }

    #[test]
    fn panic_messages() {
        let p: Box<dyn std::any::Any + Send> = Box::new("static");
        assert_eq!(panic_message(p.as_ref()), "static");
        let p: Box<dyn std::any::Any + Send> = Box::new(String::from("owned"));
        assert_eq!(panic_message(p.as_ref()), "owned");
        let p: Box<dyn std::any::Any + Send> = Box::new(5);
        assert_eq!(panic_message(p.as_ref()), "non-string panic payload");
    }
}
