//! JSON messages of the worker WebSocket. One enum serves both directions, because several kinds
//! (`invokefunction`, `invocationresult`, `registertrigger`, …) travel both ways.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ErrorBody;

/// A worker-protocol message, discriminated by the lowercase `type` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Message {
    RegisterFunction(RegisterFunction),
    UnregisterFunction(UnregisterFunction),
    InvokeFunction(InvokeFunction),
    InvocationResult(InvocationResult),
    RegisterTrigger(RegisterTrigger),
    UnregisterTrigger(UnregisterTrigger),
    TriggerRegistrationResult(TriggerRegistrationResult),
    RegisterTriggerType(RegisterTriggerType),
    UnregisterTriggerType(UnregisterTriggerType),
    RegisterService(RegisterService),
    WorkerRegistered(WorkerRegistered),
    Reattach(Reattach),
    Ping,
    Pong,
    /// Engine → worker only: a rejected handshake, or Trine's report of an undecodable frame.
    Error(ErrorFrame),
}

/// The message kinds Trine understands, as their wire names (used to tell "unknown type" apart
/// from "known type with bad fields").
pub const KNOWN_TYPES: &[&str] = &[
    "registerfunction",
    "unregisterfunction",
    "invokefunction",
    "invocationresult",
    "registertrigger",
    "unregistertrigger",
    "triggerregistrationresult",
    "registertriggertype",
    "unregistertriggertype",
    "registerservice",
    "workerregistered",
    "reattach",
    "ping",
    "pong",
    "error",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterFunction {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_format: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Present for HTTP-invoked functions (protocol.md Appendix C); Trine does not call those yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnregisterFunction {
    pub id: String,
}

/// How a call is routed: absent = synchronous call awaiting a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TriggerAction {
    /// Fire and forget: the caller gets no reply.
    Void,
    /// Hand the call to a durable queue; the caller gets `{messageReceiptId}`.
    Enqueue { queue: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvokeFunction {
    /// Absent on void calls from workers; always present on engine → worker calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation_id: Option<String>,
    pub function_id: String,
    /// A missing `data` (SDK payload `undefined`/`None`) is `null`.
    #[serde(default)]
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<TriggerAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baggage: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationResult {
    pub invocation_id: String,
    #[serde(default)]
    pub function_id: String,
    /// `null` and absent both mean "no result"; Trine omits it when forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baggage: Option<String>,
}

impl InvocationResult {
    /// The answer to a call: `Ok(None)` and `Ok(Some(null))` both mean "no result" and omit
    /// `result` (what every SDK expects); an error carries its body.
    pub fn from_outcome(
        invocation_id: String,
        function_id: String,
        outcome: Result<Option<Value>, ErrorBody>,
    ) -> Self {
        let (result, error) = match outcome {
            Ok(r) => (r.filter(|v| !v.is_null()), None),
            Err(e) => (None, Some(e)),
        };
        Self {
            invocation_id,
            function_id,
            result,
            error,
            traceparent: None,
            baggage: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterTrigger {
    pub id: String,
    pub trigger_type: String,
    pub function_id: String,
    /// Omitted by SDKs when the user gave none; `null` then.
    #[serde(default)]
    pub config: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnregisterTrigger {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerRegistrationResult {
    pub id: String,
    #[serde(default)]
    pub trigger_type: String,
    #[serde(default)]
    pub function_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterTriggerType {
    pub id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_request_format: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_request_format: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnregisterTriggerType {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterService {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_service_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRegistered {
    pub worker_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reattach_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reattach {
    pub previous_worker_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reattach_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame {
    pub error: ErrorBody,
}

impl Message {
    /// Serializes to the JSON text sent in one WebSocket text frame.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every map key is a string and no custom
        // serializer returns an error.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"type\":\"pong\"}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn invocation_result_omits_absent_fields() {
        let m = Message::InvocationResult(InvocationResult {
            invocation_id: "i".into(),
            function_id: "f".into(),
            result: None,
            error: None,
            traceparent: None,
            baggage: None,
        });
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"type":"invocationresult","invocation_id":"i","function_id":"f"})
        );
    }

    #[test]
    fn null_results_are_omitted() {
        let r = InvocationResult::from_outcome("i".into(), "f".into(), Ok(Some(Value::Null)));
        assert_eq!(r.result, None);
        let r = InvocationResult::from_outcome("i".into(), "f".into(), Ok(Some(json!(1))));
        assert_eq!(r.result, Some(json!(1)));
        let r =
            InvocationResult::from_outcome("i".into(), "f".into(), Err(ErrorBody::new("c", "m")));
        assert_eq!(r.error.unwrap().code, "c");
    }

    #[test]
    fn worker_registered_shape() {
        let m = Message::WorkerRegistered(WorkerRegistered {
            worker_id: "w".into(),
            reattach_token: Some("t".into()),
        });
        assert_eq!(
            m.to_json(),
            r#"{"type":"workerregistered","worker_id":"w","reattach_token":"t"}"#
        );
    }

    #[test]
    fn void_action_round_trips() {
        let v = json!({"type":"void"});
        let a: TriggerAction = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(a, TriggerAction::Void);
        assert_eq!(serde_json::to_value(&a).unwrap(), v);
    }
}
