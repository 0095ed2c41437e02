//! The stream WebSocket listener (port 3112): browsers and plain WebSocket programs subscribe to
//! stream groups and receive their envelopes.
//!
//! Two URL forms (stream.md §4 and R1):
//! - `/` — the client sends `join` / `leave` messages (iii's protocol);
//! - `/stream/{stream}/{group}[/{item}][/]` — subscribed on connect, no message needed.
//!
//! Resume (Trine addition): every envelope carries `seq` (per group, +1 per event) and `epoch`.
//! A client that reconnects with `?last_seq=N&epoch=E` (path form) or `lastSeq`/`epoch` in its
//! join gets the envelopes it missed, or — when they are no longer retained or the epoch changed —
//! a `sync` envelope with `"snapshot": true` followed by the live events.
//!
//! One task per connection reads client messages; a writer task drains the connection's bounded
//! queue (filled by the hub). A client over its byte budget is closed with code 4008 and a reason
//! naming the sequence to resume from.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use trine_engine::http::parse_query;
use trine_engine::stream::hub::Overflow;
use trine_engine::stream::{
    Attach, ClientQueue, Frame, Next, Resume, StreamHub, StreamModule, Subscription,
};
use trine_engine::Engine;

/// Largest message a stream client may send (joins and leaves are tiny).
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// Close code for a client cut off as a slow consumer (application range).
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code for a client message over the limit (RFC 6455).
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for a broken WebSocket stream (RFC 6455 protocol error).
pub const CLOSE_PROTOCOL: u16 = 1002;
/// Close code for a refused path-form subscription (RFC 6455 policy violation).
pub const CLOSE_POLICY: u16 = 1008;

#[derive(Clone)]
struct StreamState {
    engine: Engine,
}

pub fn router(engine: Engine) -> Router {
    Router::new()
        .fallback(route)
        .with_state(StreamState { engine })
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        json!({"error": message, "code": code}).to_string(),
    )
        .into_response()
}

/// What the URL asks for.
enum Target {
    /// `/`: subscriptions come by message.
    Root,
    /// `/stream/...`: one implicit subscription.
    Path {
        stream: String,
        group: String,
        item: Option<String>,
    },
}

fn parse_path(path: &str) -> Option<Target> {
    if path == "/" || path.is_empty() {
        return Some(Target::Root);
    }
    let rest = path.strip_prefix("/stream/")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let parts: Vec<&str> = rest.split('/').collect();
    let decode = |s: &str| -> Option<String> {
        let d = percent_decode(s)?;
        (!d.is_empty()).then_some(d)
    };
    match parts.as_slice() {
        [s, g] => Some(Target::Path {
            stream: decode(s)?,
            group: decode(g)?,
            item: None,
        }),
        [s, g, i] => Some(Target::Path {
            stream: decode(s)?,
            group: decode(g)?,
            item: Some(decode(i)?),
        }),
        _ => None,
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// iii's `query_params`: raw split on `&` and the first `=`, values not decoded, repeated keys
/// accumulate.
fn raw_query_params(query: Option<&str>) -> Map<String, Value> {
    let mut out: Map<String, Value> = Map::new();
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k.is_empty() {
            continue;
        }
        if let Value::Array(a) = out.entry(k.to_owned()).or_insert_with(|| json!([])) {
            a.push(Value::String(v.to_owned()));
        }
    }
    out
}

fn auth_input(headers: &HeaderMap, uri: &Uri, addr: SocketAddr) -> Value {
    let mut h = Map::new();
    for (name, value) in headers {
        if let Ok(v) = value.to_str() {
            h.insert(
                name.as_str().to_ascii_lowercase(),
                Value::String(v.to_owned()),
            );
        }
    }
    json!({
        "headers": h,
        "path": uri.path(),
        "query_params": raw_query_params(uri.query()),
        "addr": addr.to_string(),
    })
}

async fn route(
    State(st): State<StreamState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let uri = req.uri().clone();
    let headers = req.headers().clone();
    let Some(target) = parse_path(uri.path()) else {
        return json_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "Not Found: stream URLs are / and /stream/{stream_name}/{group_id}[/{item_id}]",
        );
    };
    let Some(module) = st.engine.streams().cloned() else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "STREAMS_UNAVAILABLE",
            "the stream module is not enabled",
        );
    };
    let (mut parts, _body) = req.into_parts();
    let ws = match <WebSocketUpgrade as axum::extract::FromRequestParts<StreamState>>::from_request_parts(&mut parts, &st).await {
        Ok(ws) => ws,
        Err(_) => {
            return json_error(
                StatusCode::UPGRADE_REQUIRED,
                "UPGRADE_REQUIRED",
                "this endpoint speaks WebSocket only",
            )
        }
    };
    let context = match module
        .authenticate(|| auth_input(&headers, &uri, addr))
        .await
    {
        Ok(c) => c,
        Err(e) => return json_error(StatusCode::UNAUTHORIZED, &e.code, &e.message),
    };
    // The parameters Trine itself reads (`sync`, `last_seq`, `epoch`), decoded like HTTP queries.
    let query = parse_query(uri.query());
    let param = |name: &str| query.get(name).and_then(Value::as_str).map(str::to_owned);
    let hub = module.hub().clone();
    let (client_id, queue) = hub.client();
    // Path form: attach before answering the upgrade, so nothing published after the client
    // sees `open` is lost; envelopes are held until the join triggers approve.
    let implicit = match target {
        Target::Root => None,
        Target::Path {
            stream,
            group,
            item,
        } => {
            let sub = Subscription {
                subscription_id: uuid::Uuid::new_v4().to_string(),
                stream_name: stream,
                group_id: group,
                id: item,
            };
            let resume = resume_from(param("last_seq"), param("epoch"));
            let attach = hub.attach(
                client_id,
                &queue,
                &sub.subscription_id,
                &sub.stream_name,
                &sub.group_id,
                sub.id.as_deref(),
                resume.as_ref(),
                true,
            );
            let want_sync = param("sync").as_deref() == Some("true");
            Some((sub, attach, resume.is_some(), want_sync))
        }
    };
    // Small socket buffers: an idle subscribed client should cost a few KiB, not the 128 KiB
    // read + write buffers WebSocket libraries default to. Writes are batched by the write loop.
    ws.max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .on_upgrade(move |socket| {
            let conn = Conn {
                module,
                hub,
                client_id,
                queue,
                context,
                subs: HashMap::new(),
            };
            conn.run(socket, implicit)
        })
}

fn resume_from(last_seq: Option<String>, epoch: Option<String>) -> Option<Resume> {
    Some(Resume {
        last_seq: last_seq?.parse().ok()?,
        epoch: epoch?,
    })
}

struct Conn {
    module: Arc<StreamModule>,
    hub: Arc<StreamHub>,
    client_id: u64,
    queue: Arc<ClientQueue>,
    context: Value,
    /// Approved subscriptions, for leave triggers on close.
    subs: HashMap<String, Subscription>,
}

impl Conn {
    async fn run(
        mut self,
        socket: WebSocket,
        implicit: Option<(Subscription, Attach, bool, bool)>,
    ) {
        let (sink, mut source) = socket.split();
        let writer = tokio::spawn(write_loop(sink, self.queue.clone()));
        let mut refused_implicit = false;
        // How the connection ends: close code and reason.
        let mut end = (1000, String::new());
        if let Some((sub, attach, resumed_asked, want_sync)) = implicit {
            if !self.approve(&sub, attach, resumed_asked, want_sync).await {
                refused_implicit = true;
            }
        }
        if !refused_implicit {
            // The hub may cut this client off while it sends nothing.
            let cut = self.queue.cut_signal().clone();
            loop {
                let msg = tokio::select! {
                    m = source.next() => m,
                    _ = cut.cancelled() => break,
                };
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        let text = e.to_string();
                        end = if text.contains("too long") || text.contains("Space limit") {
                            (
                                CLOSE_TOO_BIG,
                                format!("message too large (limit {MAX_CLIENT_MESSAGE} bytes)"),
                            )
                        } else {
                            (CLOSE_PROTOCOL, truncate(&text, 100).to_owned())
                        };
                        break;
                    }
                    None => break,
                };
                let text = match msg {
                    WsMessage::Text(t) => t.to_string(),
                    WsMessage::Binary(b) => match String::from_utf8(b.to_vec()) {
                        Ok(t) => t,
                        Err(_) => {
                            self.error("invalid_message", "binary frames must hold UTF-8 JSON");
                            continue;
                        }
                    },
                    WsMessage::Close(_) => break,
                    _ => continue,
                };
                if text.trim().is_empty() {
                    continue;
                }
                self.handle(&text).await;
            }
        }
        // Leave triggers for every remaining subscription, then forget the client.
        self.hub.detach_client(self.client_id);
        let subs: Vec<Subscription> = self.subs.drain().map(|(_, s)| s).collect();
        for sub in subs {
            self.module.run_leave(&sub, &self.context).await;
        }
        // Let the writer flush what is queued (bounded), then close.
        let (code, reason) = if refused_implicit {
            (CLOSE_POLICY, "join refused".to_owned())
        } else {
            end
        };
        self.queue.finish(code, reason);
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    }

    fn error(&self, code: &str, message: &str) {
        let v = json!({"type": "error", "error": {"code": code, "message": message}});
        self.queue.push_unbudgeted(StreamHub::frame_for(&v, None));
    }

    /// Runs the join triggers of a held subscription and releases it (with its first frame), or
    /// refuses it. Returns whether it was admitted.
    async fn approve(
        &mut self,
        sub: &Subscription,
        attach: Attach,
        resume_asked: bool,
        want_sync: bool,
    ) -> bool {
        let ok = self.module.authorize_join(sub, &self.context).await;
        let (s, g, i) = (&sub.stream_name, &sub.group_id, sub.id.as_deref());
        if !ok {
            self.hub.detach(self.client_id, &sub.subscription_id, s, g);
            let env = StreamModule::envelope(s, g, i, json!({"type": "unauthorized"}));
            self.queue.push_unbudgeted(StreamHub::frame_for(&env, None));
            return false;
        }
        let first = match attach {
            Attach::Resumed { .. } => None,
            Attach::Fresh { epoch, seq } if resume_asked || want_sync => {
                let data = self.module.snapshot(s, g, i).await;
                let mut env =
                    StreamModule::envelope(s, g, i, json!({"type": "sync", "data": data}));
                if resume_asked {
                    env["snapshot"] = Value::Bool(true);
                    self.hub
                        .stats
                        .snapshots
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Some(StreamHub::frame_for(&env, Some((&epoch, seq))))
            }
            Attach::Fresh { .. } => None,
        };
        self.hub
            .release(self.client_id, &sub.subscription_id, s, g, first);
        self.subs.insert(sub.subscription_id.clone(), sub.clone());
        true
    }

    async fn handle(&mut self, text: &str) {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            self.error(
                "invalid_message",
                "messages must be JSON: {\"type\":\"join\"|\"leave\",\"data\":{...}}",
            );
            return;
        };
        let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
        let data = v.get("data").cloned().unwrap_or(Value::Null);
        let field = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_owned);
        let (Some(sub_id), Some(stream), Some(group)) = (
            field("subscriptionId"),
            field("streamName"),
            field("groupId"),
        ) else {
            self.error(
                "invalid_message",
                "join and leave need data.subscriptionId, data.streamName and data.groupId (strings)",
            );
            return;
        };
        let sub = Subscription {
            subscription_id: sub_id,
            stream_name: stream,
            group_id: group,
            id: field("id"),
        };
        match ty {
            "join" => {
                // Joining with an id already in use replaces that subscription (stream.md §4.3).
                if let Some(old) = self.subs.remove(&sub.subscription_id) {
                    self.hub.detach(
                        self.client_id,
                        &old.subscription_id,
                        &old.stream_name,
                        &old.group_id,
                    );
                }
                let last_seq = data
                    .get("lastSeq")
                    .or(data.get("last_seq"))
                    .and_then(Value::as_u64);
                let epoch = field("epoch");
                let resume = match (last_seq, epoch) {
                    (Some(last_seq), Some(epoch)) => Some(Resume { epoch, last_seq }),
                    _ => None,
                };
                let attach = self.hub.attach(
                    self.client_id,
                    &self.queue,
                    &sub.subscription_id,
                    &sub.stream_name,
                    &sub.group_id,
                    sub.id.as_deref(),
                    resume.as_ref(),
                    true,
                );
                // The `/` protocol always syncs a fresh join (iii); a resumed one gets the gap.
                let resume_asked = resume.is_some();
                self.approve(&sub, attach, resume_asked, true).await;
            }
            "leave" => {
                self.hub.detach(
                    self.client_id,
                    &sub.subscription_id,
                    &sub.stream_name,
                    &sub.group_id,
                );
                self.subs.remove(&sub.subscription_id);
                self.module.run_leave(&sub, &self.context).await;
            }
            other => self.error(
                "unknown_message_type",
                &format!("unknown message type `{other}` (join, leave)"),
            ),
        }
    }
}

/// Drains the client's queue into the socket, a batch per flush. On a slow-consumer cut-off
/// (also while blocked writing to a client that stopped reading) it tries for 5 s to send a final
/// error frame with the resume points and a close with 4008, then drops the socket.
async fn write_loop(mut sink: SplitSink<WebSocket, WsMessage>, queue: Arc<ClientQueue>) {
    let cut = queue.cut_signal().clone();
    let mut batch: Vec<Frame> = Vec::new();
    let overflow = loop {
        batch.clear();
        if batch.capacity() > 1024 {
            batch.shrink_to(64);
        }
        match queue.next_batch(&mut batch).await {
            Next::Cut(overflow) => break overflow,
            Next::Close(code, reason) => {
                let close = CloseFrame {
                    code,
                    reason: reason.into(),
                };
                let _ = sink.send(WsMessage::Close(Some(close))).await;
                return;
            }
            Next::Frames => {
                let written = tokio::select! {
                    r = write_batch(&mut sink, &queue, &mut batch) => r,
                    _ = cut.cancelled() => Written::Cut,
                };
                match written {
                    Written::Ok => continue,
                    Written::Failed => return,
                    Written::Cut => {
                        break Overflow {
                            queued_bytes: queue.client_budget(),
                        }
                    }
                }
            }
        }
    };
    let points = queue.resume_points();
    let resume: Vec<Value> = points
        .iter()
        .map(|(s, g, e, q)| json!({"streamName": s, "groupId": g, "epoch": e, "lastSeq": q}))
        .collect();
    let reason = match points.as_slice() {
        [(_, _, e, q)] => format!("slow consumer: resume with last_seq={q}&epoch={e}"),
        _ => "slow consumer: resume each group from its last seq".to_owned(),
    };
    let notice = json!({"type": "error", "error": {
        "code": "slow_consumer",
        "message": format!("the client did not read {} queued bytes in time; reconnect and resume", overflow.queued_bytes),
        "resume": resume,
    }});
    let close = CloseFrame {
        code: CLOSE_SLOW_CONSUMER,
        reason: truncate(&reason, 123).into(),
    };
    // The client is not reading: give it a few seconds to take the notice, then drop it.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = sink.feed(WsMessage::Text(notice.to_string().into())).await;
        let _ = sink.send(WsMessage::Close(Some(close))).await;
    })
    .await;
}

/// How writing a batch ended.
enum Written {
    Ok,
    /// The socket failed: nothing more can be sent.
    Failed,
    /// The hub cut the client off while the batch was being written.
    Cut,
}

/// Writes one batch and flushes.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, WsMessage>,
    queue: &ClientQueue,
    batch: &mut Vec<Frame>,
) -> Written {
    for f in batch.drain(..) {
        // The frame's bytes are shared with every other subscriber: no copy.
        let Ok(text) = Utf8Bytes::try_from(f.bytes.clone()) else {
            continue;
        };
        if sink.feed(WsMessage::Text(text)).await.is_err() {
            return Written::Failed;
        }
        queue.mark_written(&f);
    }
    if sink.flush().await.is_err() {
        return Written::Failed;
    }
    Written::Ok
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_paths_parse() {
        assert!(matches!(parse_path("/"), Some(Target::Root)));
        match parse_path("/stream/chat/room%201/") {
            Some(Target::Path {
                stream,
                group,
                item,
            }) => {
                assert_eq!(
                    (stream.as_str(), group.as_str(), item),
                    ("chat", "room 1", None)
                );
            }
            _ => panic!("group form"),
        }
        match parse_path("/stream/chat/room-1/msg-1") {
            Some(Target::Path { item, .. }) => assert_eq!(item.as_deref(), Some("msg-1")),
            _ => panic!("item form"),
        }
        for bad in [
            "/stream/a",
            "/stream/a//b",
            "/other",
            "/stream/a/b/c/d",
            "/stream/%zz/b",
        ] {
            assert!(parse_path(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn query_params_follow_iii() {
        let q = raw_query_params(Some("token=abc&a=1&a=2&c&=x&e=%20"));
        assert_eq!(
            Value::Object(q),
            json!({"token": ["abc"], "a": ["1", "2"], "c": [""], "e": ["%20"]})
        );
        assert_eq!(
            parse_query(Some("last_seq=5&epoch=a%2Db"))["epoch"],
            json!("a-b")
        );
    }
}
