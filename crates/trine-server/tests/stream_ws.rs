//! The stream WebSocket over real sockets: both URL forms, envelopes, sync, join/leave triggers,
//! resume after a disconnect during a burst, the slow-consumer cut-off, and bad input.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use trine_engine::state::StateOptions;
use trine_engine::stream::{HubOptions, StreamOptions};
use trine_engine::{Call, Caller, Engine, EngineConfig};
use trine_protocol::{
    decode_worker_frame, InvocationResult, Message, RegisterFunction, RegisterTrigger,
};
use trine_server::ServerSettings;
use trine_store::MemoryStore;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Harness {
    engine: Engine,
    stream_url: String,
    _shutdown: CancellationToken,
}

async fn start(options: StreamOptions) -> Harness {
    let engine = Engine::new(EngineConfig::default());
    engine
        .enable_state(Arc::new(MemoryStore::new()), StateOptions::default())
        .unwrap();
    engine.enable_streams(options).unwrap();
    let mut settings = ServerSettings::default();
    settings.worker.port = 0;
    settings.http.port = 0;
    settings.stream.port = 0;
    let shutdown = CancellationToken::new();
    let addrs = trine_server::start(&engine, &settings, shutdown.clone())
        .await
        .unwrap();
    Harness {
        engine,
        stream_url: format!("ws://{}", addrs.stream.unwrap()),
        _shutdown: shutdown,
    }
}

impl Harness {
    async fn call(&self, fid: &str, data: Value) -> Value {
        self.engine
            .invoke(Call::new(fid, data.clone(), Caller::Engine))
            .await
            .unwrap_or_else(|e| panic!("{fid} {data}: {e}"))
            .unwrap_or(Value::Null)
    }

    async fn send(&self, n: u64) {
        self.call(
            "stream::send",
            json!({"stream_name": "s", "group_id": "g", "type": "tick", "data": {"n": n}}),
        )
        .await;
    }

    async fn connect(&self, path: &str) -> Ws {
        let (ws, _) = tokio_tungstenite::connect_async(format!("{}{path}", self.stream_url))
            .await
            .unwrap_or_else(|e| panic!("connect {path}: {e}"));
        ws
    }

    /// A worker whose functions answer with `answer(function_id, payload)`.
    async fn worker(
        &self,
        functions: &[&str],
        triggers: &[(&str, &str, Value)],
        answer: fn(&str, &Value) -> Value,
    ) {
        let (tx, mut rx) = mpsc::channel::<String>(1024);
        let conn = self.engine.connect_worker(tx, None);
        for f in functions {
            self.engine
                .handle_message(
                    &conn,
                    Message::RegisterFunction(RegisterFunction {
                        id: (*f).into(),
                        description: None,
                        request_format: None,
                        response_format: None,
                        metadata: None,
                        invocation: None,
                    }),
                )
                .await;
        }
        for (ty, f, config) in triggers {
            self.engine
                .handle_message(
                    &conn,
                    Message::RegisterTrigger(RegisterTrigger {
                        id: format!("{ty}-{f}"),
                        trigger_type: (*ty).into(),
                        function_id: (*f).into(),
                        config: config.clone(),
                        metadata: None,
                    }),
                )
                .await;
        }
        let engine = self.engine.clone();
        tokio::spawn(async move {
            while let Some(text) = rx.recv().await {
                if let Ok(Some(Message::InvokeFunction(inv))) = decode_worker_frame(&text) {
                    let result = answer(&inv.function_id, &inv.data);
                    engine
                        .handle_message(
                            &conn,
                            Message::InvocationResult(InvocationResult {
                                invocation_id: inv.invocation_id.unwrap(),
                                function_id: inv.function_id,
                                result: Some(result),
                                error: None,
                                traceparent: None,
                                baggage: None,
                            }),
                        )
                        .await;
                }
            }
        });
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("socket open")
            .expect("a frame");
        match m {
            WsMessage::Text(t) => return serde_json::from_str(&t).unwrap(),
            WsMessage::Close(c) => panic!("closed: {c:?}"),
            _ => continue,
        }
    }
}

async fn quiet(ws: &mut Ws, wait: Duration) -> bool {
    match tokio::time::timeout(wait, ws.next()).await {
        Err(_) => true,
        Ok(Some(Ok(WsMessage::Text(t)))) => panic!("unexpected frame {t}"),
        Ok(_) => true,
    }
}

#[tokio::test]
async fn path_form_gets_events_in_order_without_a_sync() {
    let h = start(StreamOptions::default()).await;
    let mut group = h.connect("/stream/todos-live/all").await;
    let mut item = h.connect("/stream/todos-live/all/x").await;
    // Subscribed before the upgrade answer: an event right after `open` is not lost.
    h.call("stream::send", json!({"stream_name": "todos-live", "group_id": "all", "id": "change-1", "event_type": "todo_changed", "data": {"action": "created"}})).await;
    h.call(
        "stream::set",
        json!({"stream_name": "todos-live", "group_id": "all", "item_id": "x", "data": {"v": 1}}),
    )
    .await;
    let a = next_json(&mut group).await;
    assert_eq!(a["type"], "stream");
    assert_eq!(a["streamName"], "todos-live");
    assert_eq!(a["groupId"], "all");
    assert_eq!(a["id"], "change-1");
    assert_eq!(
        a["event"],
        json!({"type": "event", "event": {"type": "todo_changed", "data": {"action": "created"}}})
    );
    assert!(a["timestamp"].is_u64());
    let b = next_json(&mut group).await;
    assert_eq!(b["event"], json!({"type": "create", "data": {"v": 1}}));
    assert_eq!(b["seq"].as_u64().unwrap(), a["seq"].as_u64().unwrap() + 1);
    assert_eq!(a["epoch"], b["epoch"]);
    // The item subscription only sees item `x`.
    let i = next_json(&mut item).await;
    assert_eq!(i["id"], "x");
    assert!(quiet(&mut item, Duration::from_millis(100)).await);

    let mut synced = h.connect("/stream/todos-live/all?sync=true").await;
    let s = next_json(&mut synced).await;
    assert_eq!(s["event"], json!({"type": "sync", "data": [{"v": 1}]}));
    assert_eq!(s["id"], Value::Null);
}

#[tokio::test]
async fn root_protocol_joins_syncs_and_leaves() {
    let h = start(StreamOptions::default()).await;
    h.call(
        "stream::set",
        json!({"stream_name": "chat", "group_id": "r1", "item_id": "m1", "data": "hi"}),
    )
    .await;
    let mut ws = h.connect("/").await;
    let join = |sub: &str, id: Option<&str>| {
        json!({"type": "join", "data": {"subscriptionId": sub, "streamName": "chat", "groupId": "r1", "id": id}}).to_string()
    };
    ws.send(WsMessage::Text(join("a", None).into()))
        .await
        .unwrap();
    let sync = next_json(&mut ws).await;
    assert_eq!(sync["event"], json!({"type": "sync", "data": ["hi"]}));
    ws.send(WsMessage::Text(join("b", Some("m1")).into()))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut ws).await["event"],
        json!({"type": "sync", "data": "hi"})
    );
    // Overlapping subscriptions: one copy each.
    h.call(
        "stream::set",
        json!({"stream_name": "chat", "group_id": "r1", "item_id": "m1", "data": "yo"}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["event"]["type"], "update");
    assert_eq!(next_json(&mut ws).await["event"]["type"], "update");
    ws.send(WsMessage::Text(json!({"type": "leave", "data": {"subscriptionId": "b", "streamName": "chat", "groupId": "r1"}}).to_string().into())).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while h.call("engine::streams::stats", json!({})).await["subscriptions"] != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the leave is applied");
    h.call(
        "stream::delete",
        json!({"stream_name": "chat", "group_id": "r1", "item_id": "m1"}),
    )
    .await;
    let d = next_json(&mut ws).await;
    assert_eq!(d["event"], json!({"type": "delete", "data": "yo"}));
    assert!(quiet(&mut ws, Duration::from_millis(100)).await);
    // Malformed messages get an error frame; the socket keeps working.
    ws.send(WsMessage::Text("not json".into())).await.unwrap();
    assert_eq!(next_json(&mut ws).await["error"]["code"], "invalid_message");
    ws.send(WsMessage::Text(
        json!({"type": "join", "data": {"streamName": 1}})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["error"]["code"], "invalid_message");
    ws.send(WsMessage::Text(json!({"type": "dance", "data": {"subscriptionId": "z", "streamName": "chat", "groupId": "r1"}}).to_string().into())).await.unwrap();
    assert_eq!(
        next_json(&mut ws).await["error"]["code"],
        "unknown_message_type"
    );
    ws.send(WsMessage::Ping(vec![1, 2].into())).await.unwrap();
    h.call(
        "stream::send",
        json!({"stream_name": "chat", "group_id": "r1", "data": 1}),
    )
    .await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        e["event"]["event"]["type"], "message",
        "neither type nor event_type: `message`"
    );
}

#[tokio::test]
async fn join_triggers_can_refuse_and_leave_triggers_run() {
    let h = start(StreamOptions::default()).await;
    h.worker(
        &["auth::join", "auth::leave"],
        &[
            (
                "stream:join",
                "auth::join",
                json!({"stream_name": "private"}),
            ),
            ("stream:leave", "auth::leave", json!({})),
        ],
        |fid, payload| {
            if fid == "auth::join" && payload["group_id"] == "secret" {
                json!({"unauthorized": true})
            } else {
                json!({})
            }
        },
    )
    .await;
    let mut ws = h.connect("/stream/private/secret").await;
    let u = next_json(&mut ws).await;
    assert_eq!(u["event"], json!({"type": "unauthorized"}));
    match tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
    {
        Some(Ok(WsMessage::Close(Some(c)))) => assert_eq!(u16::from(c.code), 1008),
        other => panic!("expected close 1008, got {other:?}"),
    }
    // The same group on another stream is not filtered by this join trigger.
    let mut ok = h.connect("/stream/public/secret").await;
    h.call(
        "stream::send",
        json!({"stream_name": "public", "group_id": "secret", "type": "x", "data": 1}),
    )
    .await;
    assert_eq!(next_json(&mut ok).await["event"]["event"]["type"], "x");
}

#[tokio::test]
async fn a_stream_trigger_needs_a_stream_name_and_gets_the_envelope() {
    let h = start(StreamOptions::default()).await;
    let (tx, mut rx) = mpsc::channel::<String>(64);
    let conn = h.engine.connect_worker(tx, None);
    let _ = rx.recv().await;
    h.engine
        .handle_message(
            &conn,
            Message::RegisterTrigger(RegisterTrigger {
                id: "t0".into(),
                trigger_type: "stream".into(),
                function_id: "f".into(),
                config: json!({"group_id": "g"}),
                metadata: None,
            }),
        )
        .await;
    match decode_worker_frame(&rx.recv().await.unwrap())
        .unwrap()
        .unwrap()
    {
        Message::TriggerRegistrationResult(r) => {
            assert_eq!(r.error.unwrap().code, "trigger_registration_failed")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_client_that_reconnects_during_a_burst_resumes_without_gaps() {
    let h = Arc::new(start(StreamOptions::default()).await);
    let mut ws = h.connect("/stream/s/g").await;
    const TOTAL: u64 = 10_000;
    let burst = {
        let h = h.clone();
        tokio::spawn(async move {
            for n in 1..=TOTAL {
                h.send(n).await;
            }
        })
    };
    let mut seen: Vec<(u64, u64)> = Vec::new(); // (seq, n)
    let mut epoch = String::new();
    // Read part of the burst, then drop the connection mid-burst.
    while seen.len() < 1500 {
        let f = next_json(&mut ws).await;
        epoch = f["epoch"].as_str().unwrap().to_owned();
        seen.push((
            f["seq"].as_u64().unwrap(),
            f["event"]["event"]["data"]["n"].as_u64().unwrap(),
        ));
    }
    drop(ws);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let last = seen.last().unwrap().0;
    let mut ws = h
        .connect(&format!("/stream/s/g?last_seq={last}&epoch={epoch}"))
        .await;
    while seen.iter().map(|s| s.1).max() < Some(TOTAL) {
        let f = next_json(&mut ws).await;
        assert_ne!(
            f["event"]["type"], "sync",
            "resume within retention must not fall back to a snapshot"
        );
        seen.push((
            f["seq"].as_u64().unwrap(),
            f["event"]["event"]["data"]["n"].as_u64().unwrap(),
        ));
    }
    burst.await.unwrap();
    seen.dedup_by_key(|s| s.0);
    let ns: Vec<u64> = seen.iter().map(|s| s.1).collect();
    assert_eq!(
        ns,
        (1..=TOTAL).collect::<Vec<_>>(),
        "all events, in order, once"
    );
    let stats = h.call("engine::streams::stats", json!({})).await;
    assert_eq!(stats["resumes"], 1);

    // Beyond retention (or another epoch): a snapshot marked as such.
    let mut ws = h.connect("/stream/s/g?last_seq=3&epoch=gone").await;
    let f = next_json(&mut ws).await;
    assert_eq!(f["event"]["type"], "sync");
    assert_eq!(f["snapshot"], true);
}

#[tokio::test]
async fn a_stalled_client_is_cut_off_with_its_resume_point_and_others_get_everything() {
    let h = start(StreamOptions {
        hub: HubOptions {
            client_queue_bytes: 256 * 1024,
            ..HubOptions::default()
        },
        ..StreamOptions::default()
    })
    .await;
    let mut stalled = h.connect("/stream/s/g").await;
    let mut readers = Vec::new();
    for _ in 0..20 {
        readers.push(h.connect("/stream/s/g").await);
    }
    let big = "x".repeat(32 * 1024);
    const EVENTS: u64 = 600; // ~19 MiB: more than the kernel buffers and the queue budget
    let mut counts = vec![0u64; readers.len()];
    for n in 1..=EVENTS {
        h.call("stream::send", json!({"stream_name": "s", "group_id": "g", "type": "big", "data": {"n": n, "pad": big}})).await;
        // Readers keep up.
        for (i, r) in readers.iter_mut().enumerate() {
            while counts[i] < n {
                let f = next_json(r).await;
                counts[i] = f["event"]["event"]["data"]["n"].as_u64().unwrap();
            }
        }
    }
    assert!(counts.iter().all(|c| *c == EVENTS));
    let stats = h.call("engine::streams::stats", json!({})).await;
    assert_eq!(stats["slow_consumer_disconnects"], 1);
    // The stalled client reads at last: what reached it, then the notice and close 4008.
    let mut last_seq = 0;
    let mut notice = Value::Null;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stalled.next())
            .await
            .unwrap()
        {
            Some(Ok(WsMessage::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "error" {
                    notice = v;
                } else {
                    last_seq = v["seq"].as_u64().unwrap();
                }
            }
            Some(Ok(WsMessage::Close(Some(c)))) => {
                assert_eq!(u16::from(c.code), 4008);
                assert!(
                    c.reason.contains(&format!("last_seq={last_seq}")),
                    "{}",
                    c.reason
                );
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    assert_eq!(notice["error"]["code"], "slow_consumer");
    assert_eq!(notice["error"]["resume"][0]["lastSeq"], last_seq);
    assert!(last_seq < EVENTS);
}

#[tokio::test]
async fn bad_requests_get_clear_answers() {
    let h = start(StreamOptions::default()).await;
    for path in ["/other", "/stream/a", "/stream/a//b", "/stream/a/b/c/d"] {
        let err = tokio_tungstenite::connect_async(format!("{}{path}", h.stream_url))
            .await
            .expect_err(path);
        match err {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                assert_eq!(resp.status(), 404, "{path}")
            }
            other => panic!("{path}: {other}"),
        }
    }
    // A frame over the client limit closes that socket with 1009; others are unaffected.
    let mut big = h.connect("/").await;
    let mut other = h.connect("/stream/s/g").await;
    big.send(WsMessage::Text("x".repeat(200 * 1024).into()))
        .await
        .ok();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match big.next().await {
                Some(Ok(WsMessage::Close(Some(c)))) => return Some(u16::from(c.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(closed, Some(1009));
    h.send(1).await;
    assert_eq!(
        next_json(&mut other).await["event"]["event"]["data"]["n"],
        1
    );
}

#[tokio::test]
async fn an_auth_function_can_refuse_connections() {
    let h = start(StreamOptions {
        auth_function: Some("auth::check".into()),
        ..StreamOptions::default()
    })
    .await;
    h.worker(
        &["auth::check", "on::join"],
        &[("stream:join", "on::join", json!({}))],
        |fid, p| match fid {
            "auth::check" => {
                if p["query_params"]["token"] == json!(["good"]) {
                    json!({"context": {"user": "ada"}})
                } else {
                    json!({"unauthorized": true})
                }
            }
            _ => {
                // The context from the auth function reaches join triggers.
                if p["context"] == json!({"user": "ada"}) {
                    json!({})
                } else {
                    json!({"unauthorized": true})
                }
            }
        },
    )
    .await;
    match tokio_tungstenite::connect_async(format!("{}/stream/s/g?token=bad", h.stream_url)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    let mut ws = h.connect("/stream/s/g?token=good").await;
    h.send(7).await;
    assert_eq!(next_json(&mut ws).await["event"]["event"]["data"]["n"], 7);
}

#[tokio::test]
async fn a_cut_off_client_that_never_reads_is_dropped() {
    let h = start(StreamOptions {
        hub: HubOptions {
            client_queue_bytes: 128 * 1024,
            ..HubOptions::default()
        },
        ..StreamOptions::default()
    })
    .await;
    let stalled = h.connect("/stream/s/g").await;
    let big = "x".repeat(32 * 1024);
    // More than the kernel buffers and the budget: the writer blocks, then the hub cuts it off.
    for n in 0..400u64 {
        h.call(
            "stream::send",
            json!({"stream_name": "s", "group_id": "g", "type": "big", "data": {"n": n, "pad": big}}),
        )
        .await;
        if h.call("engine::streams::stats", json!({})).await["slow_consumer_disconnects"] == 1 {
            break;
        }
    }
    // Without reading anything, the connection is gone within the 5 s grace (plus slack).
    tokio::time::timeout(Duration::from_secs(15), async {
        while h.call("engine::streams::stats", json!({})).await["clients"] != 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the stalled client is detached");
    // Its socket is closed after the 5 s grace for the notice: reading now ends (after what the
    // kernel buffered) instead of waiting forever.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut stalled = stalled;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stalled.next().await {
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the engine closed the stalled connection");
}
