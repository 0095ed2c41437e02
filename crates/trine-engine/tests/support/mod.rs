//! Shared helpers of the engine's integration tests: calls through the engine's own API, and a
//! fake worker that is an outbound queue we read from plus frames we feed to `handle_message`,
//! exactly what the server's connection task does.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use trine_engine::{Call, CallOutcome, Caller, Engine, WorkerConn};
use trine_protocol::{
    decode_worker_frame, ErrorBody, InvocationResult, InvokeFunction, Message, RegisterFunction,
    RegisterTrigger, TriggerAction, TriggerRegistrationResult, UnregisterTrigger,
};

pub async fn call(e: &Engine, fid: &str, data: Value) -> CallOutcome {
    e.invoke(Call::new(fid, data, Caller::Engine)).await
}

pub async fn ok(e: &Engine, fid: &str, data: Value) -> Value {
    call(e, fid, data.clone())
        .await
        .unwrap_or_else(|err| panic!("{fid} {data} failed: {err}"))
        .unwrap_or(Value::Null)
}

pub async fn err(e: &Engine, fid: &str, data: Value) -> ErrorBody {
    match call(e, fid, data.clone()).await {
        Err(err) => err,
        Ok(v) => panic!("{fid} {data} should fail, got {v:?}"),
    }
}

/// A trigger registration without metadata.
pub fn trigger(id: &str, trigger_type: &str, function_id: &str, config: Value) -> RegisterTrigger {
    RegisterTrigger {
        id: id.into(),
        trigger_type: trigger_type.into(),
        function_id: function_id.into(),
        config,
        metadata: None,
    }
}

pub struct FakeWorker {
    pub conn: Arc<WorkerConn>,
    pub rx: mpsc::Receiver<String>,
    /// Frames received while waiting for another kind.
    pub held: VecDeque<Message>,
    /// How long to wait for each frame before failing.
    pub wait: Duration,
}

impl FakeWorker {
    /// Connects and checks that the first frame is `workerregistered` with this connection's id.
    pub fn connect(engine: &Engine) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        let conn = engine.connect_worker(tx, None);
        let mut w = FakeWorker {
            conn,
            rx,
            held: VecDeque::new(),
            wait: Duration::from_secs(5),
        };
        match w.try_next() {
            Some(Message::WorkerRegistered(r)) => assert_eq!(r.worker_id, w.conn.id.as_ref()),
            other => panic!("first frame must be workerregistered, got {other:?}"),
        }
        w
    }

    /// The same worker, waiting `wait` for each frame.
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    pub async fn send(&self, engine: &Engine, msg: Message) {
        engine.handle_message(&self.conn, msg).await;
    }

    pub async fn register_function(&self, e: &Engine, id: &str) {
        self.send(
            e,
            Message::RegisterFunction(RegisterFunction {
                id: id.into(),
                description: None,
                request_format: None,
                response_format: None,
                metadata: None,
                invocation: None,
            }),
        )
        .await;
    }

    pub async fn register_trigger(
        &self,
        e: &Engine,
        id: &str,
        trigger_type: &str,
        function_id: &str,
        config: Value,
    ) {
        let t = trigger(id, trigger_type, function_id, config);
        self.send(e, Message::RegisterTrigger(t)).await;
    }

    pub async fn unregister_trigger(&self, e: &Engine, id: &str) {
        self.send(
            e,
            Message::UnregisterTrigger(UnregisterTrigger {
                id: id.into(),
                trigger_type: None,
            }),
        )
        .await;
    }

    /// Sends an enqueue action and returns the invocation id used.
    pub async fn enqueue(&self, e: &Engine, queue: &str, function_id: &str, data: Value) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.send(
            e,
            Message::InvokeFunction(InvokeFunction {
                invocation_id: Some(id.clone()),
                function_id: function_id.into(),
                data,
                action: Some(TriggerAction::Enqueue {
                    queue: queue.into(),
                }),
                metadata: None,
                traceparent: None,
                baggage: None,
            }),
        )
        .await;
        id
    }

    /// Enqueues and returns the receipt (panics on an error result).
    pub async fn enqueue_ok(
        &mut self,
        e: &Engine,
        queue: &str,
        function_id: &str,
        data: Value,
    ) -> String {
        let id = self.enqueue(e, queue, function_id, data).await;
        let r = self.next_result().await;
        assert_eq!(r.invocation_id, id);
        assert!(r.error.is_none(), "enqueue failed: {:?}", r.error);
        let result = r.result.expect("a result");
        let obj = result.as_object().expect("an object");
        assert_eq!(obj.len(), 1, "exactly one key: {result}");
        obj["messageReceiptId"]
            .as_str()
            .expect("receipt")
            .to_owned()
    }

    pub async fn enqueue_err(
        &mut self,
        e: &Engine,
        queue: &str,
        function_id: &str,
        data: Value,
    ) -> ErrorBody {
        self.enqueue(e, queue, function_id, data).await;
        self.next_result().await.error.expect("an error result")
    }

    /// The next frame, held or already queued, without waiting.
    pub fn try_next(&mut self) -> Option<Message> {
        if let Some(m) = self.held.pop_front() {
            return Some(m);
        }
        self.rx
            .try_recv()
            .ok()
            .map(|t| decode_worker_frame(&t).unwrap().unwrap())
    }

    /// The next frame of interest, waiting up to `wait` for each frame; others are held for
    /// later.
    pub async fn next_within<T>(
        &mut self,
        wait: Duration,
        mut pick: impl FnMut(&Message) -> Option<T>,
    ) -> T {
        if let Some(i) = self.held.iter().position(|m| pick(m).is_some()) {
            let m = self.held.remove(i).unwrap();
            return pick(&m).unwrap();
        }
        loop {
            let text = tokio::time::timeout(wait, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("a frame within {wait:?}"))
                .expect("channel open");
            if let Some(m) = decode_worker_frame(&text).unwrap() {
                if let Some(t) = pick(&m) {
                    return t;
                }
                self.held.push_back(m);
            }
        }
    }

    /// The next frame of interest; others are held for later.
    pub async fn next<T>(&mut self, pick: impl FnMut(&Message) -> Option<T>) -> T {
        self.next_within(self.wait, pick).await
    }

    /// The next frame, whatever it is.
    pub async fn next_frame(&mut self) -> Message {
        self.next(|m| Some(m.clone())).await
    }

    /// The next invocation sent to this worker (other frames are held).
    pub async fn next_call(&mut self) -> InvokeFunction {
        self.next(|m| match m {
            Message::InvokeFunction(i) => Some(i.clone()),
            _ => None,
        })
        .await
    }

    pub async fn next_result(&mut self) -> InvocationResult {
        self.next(|m| match m {
            Message::InvocationResult(r) => Some(r.clone()),
            _ => None,
        })
        .await
    }

    pub async fn next_registration_result(&mut self) -> TriggerRegistrationResult {
        self.next(|m| match m {
            Message::TriggerRegistrationResult(r) => Some(r.clone()),
            _ => None,
        })
        .await
    }

    /// Whether no invocation arrives within `wait` (one that does is held for `next_call`).
    pub async fn quiet_for(&mut self, wait: Duration) -> bool {
        if self
            .held
            .iter()
            .any(|m| matches!(m, Message::InvokeFunction(_)))
        {
            return false;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) | Ok(None) => return true,
                Ok(Some(text)) => match decode_worker_frame(&text).unwrap() {
                    Some(m @ Message::InvokeFunction(_)) => {
                        self.held.push_back(m);
                        return false;
                    }
                    Some(m) => self.held.push_back(m),
                    None => {}
                },
            }
        }
    }

    /// Sends the result of `inv`.
    pub async fn reply(
        &self,
        e: &Engine,
        inv: &InvokeFunction,
        result: Option<Value>,
        error: Option<ErrorBody>,
    ) {
        self.send(
            e,
            Message::InvocationResult(InvocationResult {
                invocation_id: inv.invocation_id.clone().unwrap(),
                function_id: inv.function_id.clone(),
                result,
                error,
                traceparent: None,
                baggage: None,
            }),
        )
        .await;
    }

    /// Answers `inv`: a failure carries the code `invocation_failed`.
    pub async fn answer(&self, e: &Engine, inv: &InvokeFunction, outcome: Result<Value, &str>) {
        match outcome {
            Ok(v) => self.reply(e, inv, Some(v), None).await,
            Err(msg) => self.fail(e, inv, "invocation_failed", msg).await,
        }
    }

    /// Fails `inv` with an error of the given code.
    pub async fn fail(&self, e: &Engine, inv: &InvokeFunction, code: &str, message: &str) {
        self.reply(e, inv, None, Some(ErrorBody::new(code, message)))
            .await;
    }

    /// Answers the next `invokefunction` with `f(data)`; panics if the next frame is another kind.
    pub async fn serve_one(
        &mut self,
        engine: &Engine,
        f: impl FnOnce(Value) -> Value,
    ) -> InvokeFunction {
        let inv = match self.next_frame().await {
            Message::InvokeFunction(i) => i,
            other => panic!("expected invokefunction, got {other:?}"),
        };
        let result = f(inv.data.clone());
        self.reply(engine, &inv, Some(result), None).await;
        inv
    }
}
