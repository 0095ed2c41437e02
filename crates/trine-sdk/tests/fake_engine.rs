//! Black-box test of the SDK against a tiny in-test WebSocket server that plays the engine.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use trine_sdk::{Error, ErrorBody, Worker, WorkerOptions};

type Ws = WebSocketStream<TcpStream>;

const STEP: Duration = Duration::from_secs(5);

async fn accept(listener: &TcpListener) -> Ws {
    let (tcp, _) = tokio::time::timeout(STEP, listener.accept())
        .await
        .expect("worker did not connect")
        .unwrap();
    tokio_tungstenite::accept_async(tcp).await.unwrap()
}

/// Next JSON frame from the worker, skipping WebSocket pings.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("no frame from worker")
            .expect("worker closed")
            .unwrap();
        match frame {
            WsMessage::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn send_json(ws: &mut Ws, v: Value) {
    ws.send(WsMessage::text(v.to_string())).await.unwrap();
}

fn options() -> WorkerOptions {
    WorkerOptions {
        name: Some("fake-test".into()),
        reconnect_initial: Duration::from_millis(50),
        ..Default::default()
    }
}

fn register_functions(worker: &Worker) {
    worker.register_function("t::echo", |v: Value| async move { Ok::<_, ErrorBody>(v) });
    worker.register_function("t::null", |_v: Value| async move {
        Ok::<_, ErrorBody>(Value::Null)
    });
    worker.register_function("t::fail", |_v: Value| async move {
        Err::<Value, _>(ErrorBody::new("bad_input", "no thanks"))
    });
    worker.register_function("t::panic", |_v: Value| async move {
        if true {
            panic!("kaboom");
        }
        Ok::<_, ErrorBody>(Value::Null)
    });
}

fn assert_register_call(frame: &Value) {
    assert_eq!(frame["type"], "invokefunction");
    assert_eq!(frame["function_id"], "engine::workers::register");
    assert_eq!(frame["action"], json!({"type": "void"}));
    assert!(frame.get("invocation_id").is_none());
    let data = &frame["data"];
    assert_eq!(data["runtime"], "rust");
    assert_eq!(data["name"], "fake-test");
    assert_eq!(data["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(data["pid"], std::process::id());
    assert!(data["os"].is_string());
}

fn assert_registrations(frames: &[Value]) {
    let ids: Vec<&str> = frames
        .iter()
        .map(|f| {
            assert_eq!(f["type"], "registerfunction");
            f["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids, ["t::echo", "t::null", "t::fail", "t::panic"]);
}

fn assert_trigger(frame: &Value, trigger_id: &str) {
    assert_eq!(
        *frame,
        json!({
            "type": "registertrigger",
            "id": trigger_id,
            "trigger_type": "http",
            "function_id": "t::echo",
            "config": {"api_path": "/echo", "http_method": "POST"},
        })
    );
}

#[tokio::test]
async fn plays_the_protocol_and_replays_after_reconnect() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());

    // --- first connection: registrations ---
    let (worker, mut ws) = tokio::join!(Worker::connect(&url, options()), accept(&listener));
    let worker = worker.unwrap();
    send_json(
        &mut ws,
        json!({"type":"workerregistered","worker_id":"w1","reattach_token":"t1"}),
    )
    .await;
    // Nothing was registered yet, so the connect replay is just the metadata call.
    assert_register_call(&next_json(&mut ws).await);

    register_functions(&worker);
    let trigger_id = worker.register_trigger(
        "http",
        "t::echo",
        json!({"api_path": "/echo", "http_method": "POST"}),
    );
    let mut functions = Vec::new();
    for _ in 0..4 {
        functions.push(next_json(&mut ws).await);
    }
    assert_registrations(&functions);
    assert_trigger(&next_json(&mut ws).await, &trigger_id);

    // --- worker → engine calls ---
    let calls = {
        let w = worker.clone();
        tokio::spawn(async move {
            (
                w.call("engine::echo", json!({"a": 1})).await,
                w.call("x::err", json!(null)).await,
                w.call("x::none", json!(2)).await,
            )
        })
    };
    let f = next_json(&mut ws).await;
    assert_eq!(f["function_id"], "engine::echo");
    assert_eq!(f["data"], json!({"a": 1}));
    assert!(f.get("action").is_none());
    send_json(&mut ws, json!({"type":"invocationresult","invocation_id":f["invocation_id"],"function_id":"engine::echo","result":f["data"]})).await;
    let f = next_json(&mut ws).await;
    assert_eq!(f["function_id"], "x::err");
    send_json(&mut ws, json!({"type":"invocationresult","invocation_id":f["invocation_id"],"function_id":"x::err","error":{"code":"function_not_found","message":"Function x::err not found"}})).await;
    let f = next_json(&mut ws).await;
    assert_eq!(f["function_id"], "x::none");
    send_json(&mut ws, json!({"type":"invocationresult","invocation_id":f["invocation_id"],"function_id":"x::none"})).await;
    let (echo, err, none) = calls.await.unwrap();
    assert_eq!(echo.unwrap(), json!({"a": 1}));
    match err.unwrap_err() {
        Error::Remote(body) => {
            assert_eq!(body.code, "function_not_found");
            assert_eq!(body.message, "Function x::err not found");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(none.unwrap(), Value::Null);

    // --- engine → worker invocations ---
    for (id, function, data) in [
        ("inv-1", "t::echo", json!({"x": 1})),
        ("inv-2", "t::null", json!(1)),
        ("inv-3", "t::fail", json!(1)),
        ("inv-4", "t::panic", json!(1)),
        ("inv-5", "t::missing", json!(1)),
    ] {
        send_json(
            &mut ws,
            json!({"type":"invokefunction","invocation_id":id,"function_id":function,"data":data}),
        )
        .await;
    }
    let mut results = HashMap::new();
    for _ in 0..5 {
        let f = next_json(&mut ws).await;
        assert_eq!(f["type"], "invocationresult");
        results.insert(f["invocation_id"].as_str().unwrap().to_owned(), f);
    }
    assert_eq!(
        results["inv-1"],
        json!({"type":"invocationresult","invocation_id":"inv-1","function_id":"t::echo","result":{"x":1}})
    );
    assert_eq!(
        results["inv-2"],
        json!({"type":"invocationresult","invocation_id":"inv-2","function_id":"t::null"})
    );
    assert_eq!(
        results["inv-3"]["error"],
        json!({"code":"bad_input","message":"no thanks"})
    );
    assert_eq!(results["inv-4"]["error"]["code"], "invocation_failed");
    assert!(results["inv-4"]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("kaboom"));
    assert_eq!(results["inv-5"]["error"]["code"], "function_not_found");

    // An invocation without id runs but is not answered; a JSON ping is answered.
    send_json(
        &mut ws,
        json!({"type":"invokefunction","function_id":"t::echo","data":{}}),
    )
    .await;
    send_json(&mut ws, json!({"type":"ping"})).await;
    assert_eq!(next_json(&mut ws).await, json!({"type":"pong"}));
    send_json(
        &mut ws,
        json!({"type":"invokefunction","invocation_id":"inv-6","function_id":"t::echo","data":6}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["invocation_id"], "inv-6");

    // --- link drop: the pending call fails, a new call waits for the reconnect ---
    let in_flight = {
        let w = worker.clone();
        tokio::spawn(async move { w.call("slow::thing", json!({})).await })
    };
    assert_eq!(next_json(&mut ws).await["function_id"], "slow::thing");
    drop(ws);
    assert_eq!(in_flight.await.unwrap(), Err(Error::Disconnected));

    let queued = {
        let w = worker.clone();
        tokio::spawn(async move { w.call("engine::echo", json!({"b": 2})).await })
    };
    let mut ws = accept(&listener).await;
    send_json(
        &mut ws,
        json!({"type":"workerregistered","worker_id":"w2","reattach_token":"t2"}),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type":"reattach","previous_worker_id":"w1","reattach_token":"t1"})
    );
    let mut functions = Vec::new();
    for _ in 0..4 {
        functions.push(next_json(&mut ws).await);
    }
    assert_registrations(&functions);
    assert_trigger(&next_json(&mut ws).await, &trigger_id);
    assert_register_call(&next_json(&mut ws).await);
    let f = next_json(&mut ws).await;
    assert_eq!(f["function_id"], "engine::echo");
    send_json(&mut ws, json!({"type":"invocationresult","invocation_id":f["invocation_id"],"function_id":"engine::echo","result":f["data"]})).await;
    assert_eq!(queued.await.unwrap().unwrap(), json!({"b": 2}));
    assert_eq!(worker.worker_id().as_deref(), Some("w2"));

    // Handlers registered before the drop still answer on the new connection.
    send_json(
        &mut ws,
        json!({"type":"invokefunction","invocation_id":"inv-7","function_id":"t::echo","data":7}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["result"], 7);

    // --- shutdown: close frame, then calls fail fast ---
    worker.shutdown().await;
    loop {
        match tokio::time::timeout(STEP, ws.next()).await.unwrap() {
            Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        }
    }
    assert_eq!(
        worker.call("engine::echo", json!(1)).await,
        Err(Error::Shutdown)
    );
    assert!(!worker.is_connected());
}

#[tokio::test]
async fn connect_gives_up_after_its_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = Worker::connect(
        &url,
        WorkerOptions {
            connect_timeout: Duration::from_millis(300),
            reconnect_initial: Duration::from_millis(50),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Connect(_)), "{err:?}");

    let err = Worker::connect("not a url", WorkerOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect(_)), "{err:?}");
}

#[tokio::test]
async fn a_silent_engine_is_dropped_and_reconnected() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let opts = WorkerOptions {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(300),
        ..options()
    };
    let (worker, ws) = tokio::join!(Worker::connect(&url, opts), accept(&listener));
    let worker = worker.unwrap();
    // Never read from `ws`: no pong ever comes back, so the worker must give up on it.
    let mut ws2 = accept(&listener).await;
    assert_register_call(&next_json(&mut ws2).await);
    drop(ws);
    worker.shutdown().await;
}
