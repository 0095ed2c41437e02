//! The worker WebSocket listener: `/` for workers (and SDK 0.9.0's telemetry socket), `/otel` for
//! telemetry. One task per connection with a read loop here and a write loop draining the
//! connection's bounded outbound queue.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use trine_engine::channels::{ChannelEnd, ChannelFrame, Direction};
use trine_engine::{Engine, WorkerConn};
use trine_protocol::{
    decode_worker_frame, split_telemetry, ErrorBody, ErrorFrame, InvocationResult, Message,
};

/// Close codes used when a connection must be dropped (RFC 6455).
const CLOSE_INVALID_PAYLOAD: u16 = 1007;
const CLOSE_TOO_BIG: u16 = 1009;
/// Frames written per flush at most (bounds the latency a large backlog adds to a frame).
const WRITE_BATCH: usize = 64;

#[derive(Clone)]
struct WsState {
    engine: Engine,
    max_message_bytes: usize,
    queue_frames: usize,
}

pub fn router(engine: Engine, max_message_bytes: usize) -> Router {
    let queue_frames = engine.config().outbound_queue_frames;
    Router::new()
        .route("/", get(worker_upgrade))
        .route("/otel", get(otel_upgrade))
        .route("/ws/channels/{channel_id}", get(channel_upgrade))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .with_state(WsState {
            engine,
            max_message_bytes,
            queue_frames,
        })
}

/// What the WebSocket layer itself accepts. The configured limit is enforced after a message
/// is read, so an oversized message gets a clean close 1009; only a message beyond this hard cap
/// is cut off mid-read (the peer may then see a reset instead of the close frame).
fn hard_cap(limit: usize) -> usize {
    limit.saturating_add(16 * 1024 * 1024)
}

async fn worker_upgrade(
    ws: WebSocketUpgrade,
    State(st): State<WsState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
) -> Response {
    ws.max_message_size(hard_cap(st.max_message_bytes))
        .max_frame_size(hard_cap(st.max_message_bytes))
        .on_upgrade(move |socket| worker_socket(socket, st, addr))
}

async fn otel_upgrade(ws: WebSocketUpgrade, State(st): State<WsState>) -> Response {
    ws.max_message_size(st.max_message_bytes)
        .max_frame_size(st.max_message_bytes)
        .on_upgrade(move |socket| otel_socket(socket, st.engine))
        .into_response()
}

async fn worker_socket(socket: WebSocket, st: WsState, addr: SocketAddr) {
    let engine = st.engine;
    let limit = st.max_message_bytes;
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<String>(st.queue_frames);
    let (close_tx, mut close_rx) = oneshot::channel::<(u16, String)>();
    let conn = engine.connect_worker(tx, Some(addr.ip().to_string()));
    tracing::debug!(worker_id = %conn.id, %addr, "worker connection opened");

    let ping_every = engine.config().worker_ping_interval;
    let idle_limit = engine.config().worker_idle_timeout.as_millis() as u64;
    let wconn = conn.clone();
    let writer = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(ping_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                biased;
                _ = wconn.ping_requested() => {
                    if sink.send(WsMessage::Ping(Default::default())).await.is_err() {
                        return;
                    }
                }
                _ = ticker.tick() => {
                    if trine_engine::worker::now_ms().saturating_sub(wconn.last_seen_ms()) > idle_limit {
                        tracing::warn!(worker_id = %wconn.id, "no frame from the worker within the idle timeout; closing");
                        wconn.cancel.cancel();
                        break;
                    }
                    if sink.send(WsMessage::Ping(Default::default())).await.is_err() {
                        return;
                    }
                }
                frame = rx.recv() => match frame {
                    Some(text) => {
                        // Queue everything already waiting, then flush once: under load many
                        // frames leave in one write instead of one syscall each.
                        if sink.feed(WsMessage::Text(text.into())).await.is_err() {
                            return;
                        }
                        for _ in 0..WRITE_BATCH {
                            match rx.try_recv() {
                                Ok(more) => {
                                    if sink.feed(WsMessage::Text(more.into())).await.is_err() {
                                        return;
                                    }
                                }
                                Err(_) => break,
                            }
                        }
                        if sink.flush().await.is_err() {
                            return;
                        }
                    }
                    None => break,
                },
                close = &mut close_rx => {
                    if let Ok((code, reason)) = close {
                        let _ = sink
                            .send(WsMessage::Close(Some(CloseFrame { code, reason: reason.into() })))
                            .await;
                    }
                    break;
                }
            }
        }
        let _ = sink.close().await;
    });

    let mut close_tx = Some(close_tx);
    loop {
        let frame = tokio::select! {
            _ = conn.cancel.cancelled() => break,
            f = stream.next() => f,
        };
        conn.touch();
        let size = match &frame {
            Some(Ok(WsMessage::Text(t))) => t.len(),
            Some(Ok(WsMessage::Binary(b))) => b.len(),
            _ => 0,
        };
        if size > limit {
            tracing::warn!(worker_id = %conn.id, size, limit, "message over the size limit; closing the connection");
            if let Some(tx) = close_tx.take() {
                let _ = tx.send((
                    CLOSE_TOO_BIG,
                    format!("message_too_large: {size} bytes exceeds the limit of {limit}"),
                ));
            }
            break;
        }
        match frame {
            None => break,
            Some(Ok(WsMessage::Text(text))) => handle_text(&engine, &conn, text.as_str()).await,
            Some(Ok(WsMessage::Binary(bytes))) => {
                if let Some((kind, payload)) = split_telemetry(&bytes) {
                    engine.ingest_telemetry(Some(&conn), kind, payload);
                } else {
                    // The reference also decodes JSON sent in a binary frame.
                    match std::str::from_utf8(&bytes) {
                        Ok(text) => handle_text(&engine, &conn, text).await,
                        Err(_) => send_error(
                            &conn,
                            ErrorBody::new(
                                trine_protocol::codes::INVALID_MESSAGE,
                                "binary frame is neither telemetry (LOGS/OTLP/MTRC prefix) nor UTF-8 JSON",
                            ),
                        ),
                    }
                }
            }
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
            Some(Ok(WsMessage::Close(_))) => break,
            Some(Err(e)) => {
                let (code, reason) = classify_ws_error(&e);
                tracing::warn!(worker_id = %conn.id, error = %e, code, "closing worker connection after a protocol error");
                if let Some(tx) = close_tx.take() {
                    let _ = tx.send((code, reason));
                }
                drain(&mut stream).await;
                break;
            }
        }
    }
    engine.disconnect_worker(&conn);
    // Let queued frames (e.g. a close frame) drain briefly, then stop the writer.
    drop(close_tx);
    let abort = writer.abort_handle();
    if tokio::time::timeout(std::time::Duration::from_millis(200), writer)
        .await
        .is_err()
    {
        abort.abort();
    }
    tracing::debug!(worker_id = %conn.id, "worker connection closed");
}

/// Reads and discards what the peer still sends (bounded in time), so that closing the socket
/// with unread input does not turn the close frame into a TCP reset.
async fn drain(stream: &mut futures_util::stream::SplitStream<WebSocket>) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    for _ in 0..100_000 {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(_)) => continue,
            _ => break,
        }
    }
}

fn classify_ws_error(e: &axum::Error) -> (u16, String) {
    let text = e.to_string();
    let lower = text.to_lowercase();
    if lower.contains("utf-8") || lower.contains("utf8") {
        (
            CLOSE_INVALID_PAYLOAD,
            "invalid_message: text frame is not valid UTF-8".into(),
        )
    } else if lower.contains("too long") || lower.contains("too big") || lower.contains("capacity")
    {
        (
            CLOSE_TOO_BIG,
            "message_too_large: message exceeds the engine's limit".into(),
        )
    } else {
        (1002, "protocol error".into())
    }
}

fn send_error(conn: &Arc<WorkerConn>, error: ErrorBody) {
    let _ = conn.try_send(&Message::Error(ErrorFrame { error }));
}

async fn handle_text(engine: &Engine, conn: &Arc<WorkerConn>, text: &str) {
    match decode_worker_frame(text) {
        Ok(Some(msg)) => engine.handle_message(conn, msg).await,
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(worker_id = %conn.id, code = e.code, error = %e.message, "undecodable frame dropped");
            match e.invocation_id.clone() {
                // The caller of a malformed call is answered, so it does not wait for a timeout.
                Some(id) => {
                    let _ = conn
                        .send(&Message::InvocationResult(InvocationResult::from_outcome(
                            id,
                            e.function_id.clone().unwrap_or_default(),
                            Err(e.to_error_body()),
                        )))
                        .await;
                }
                None => send_error(conn, e.to_error_body()),
            }
        }
    }
}

async fn otel_socket(socket: WebSocket, engine: Engine) {
    let (_sink, mut stream) = socket.split();
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(WsMessage::Binary(bytes)) => {
                if let Some((kind, payload)) = split_telemetry(&bytes) {
                    engine.ingest_telemetry(None, kind, payload);
                }
            }
            Ok(WsMessage::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

#[derive(serde::Deserialize)]
struct ChannelQuery {
    key: Option<String>,
    dir: Option<String>,
}

/// `/ws/channels/{id}?key=…&dir=read|write`: attaches one end of a channel. Unknown id, wrong key,
/// bad direction or an end already taken → 404 before the upgrade (protocol.md §4.2).
async fn channel_upgrade(
    ws: WebSocketUpgrade,
    State(st): State<WsState>,
    Path(channel_id): Path<String>,
    Query(q): Query<ChannelQuery>,
) -> Response {
    let end = match (q.key, q.dir.as_deref().and_then(Direction::parse)) {
        (Some(key), Some(dir)) => st.engine.channels().take(&channel_id, &key, dir),
        _ => None,
    };
    let Some(end) = end else {
        return (StatusCode::NOT_FOUND, "channel not found").into_response();
    };
    ws.max_message_size(st.max_message_bytes)
        .max_frame_size(st.max_message_bytes)
        .on_upgrade(move |socket| channel_socket(socket, end))
}

async fn channel_socket(socket: WebSocket, end: ChannelEnd) {
    let (mut sink, mut stream) = socket.split();
    match end {
        ChannelEnd::Writer(tx) => {
            // Frames are forwarded in order; waiting on a full channel is the back-pressure.
            while let Some(Ok(frame)) = stream.next().await {
                let item = match frame {
                    WsMessage::Text(t) => ChannelFrame::Text(t.as_str().to_owned()),
                    WsMessage::Binary(b) => ChannelFrame::Binary(b.to_vec()),
                    WsMessage::Close(_) => break,
                    _ => continue,
                };
                if tx.send(item).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        }
        ChannelEnd::Reader(mut rx) => {
            loop {
                tokio::select! {
                    item = rx.recv() => {
                        let msg = match item {
                            Some(ChannelFrame::Text(t)) => WsMessage::Text(t.into()),
                            Some(ChannelFrame::Binary(b)) => WsMessage::Binary(b.into()),
                            None => break,
                        };
                        if sink.send(msg).await.is_err() {
                            return;
                        }
                    }
                    incoming = stream.next() => match incoming {
                        None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => return,
                        _ => {}
                    },
                }
            }
            let _ = sink.close().await;
        }
    }
}
