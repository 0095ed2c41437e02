//! Lenient decoding of worker frames, with precise errors for the ones that cannot be understood.
//!
//! The fast path is one `serde_json::from_str` into [`Message`]. Only when it fails is the frame
//! examined again as a generic JSON value, to say *why* it failed and to recover the correlation
//! fields (`invocation_id`, `function_id`) so the caller can still be answered.

use serde_json::Value;

use crate::{codes, worker::KNOWN_TYPES, ErrorBody, Message};

/// Why a frame could not be turned into a [`Message`].
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    /// Stable code: [`codes::INVALID_MESSAGE`] or [`codes::UNKNOWN_MESSAGE_TYPE`].
    pub code: &'static str,
    pub message: String,
    /// The frame's `type`, when it had a string one.
    pub message_type: Option<String>,
    /// `invocation_id` of an undecodable `invokefunction`, so its caller can be answered.
    pub invocation_id: Option<String>,
    pub function_id: Option<String>,
}

impl DecodeError {
    pub fn to_error_body(&self) -> ErrorBody {
        ErrorBody::new(self.code, self.message.clone())
    }
}

/// Decodes one text frame. `Ok(None)` means the frame is blank and is ignored.
pub fn decode_worker_frame(text: &str) -> Result<Option<Message>, DecodeError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    // Read the tag first, then decode the matching struct directly: an internally tagged enum
    // would first buffer the whole frame (payload included) into an intermediate tree.
    let ty = match serde_json::from_str::<Tag>(text) {
        Ok(t) => t.ty,
        Err(e) => return Err(explain(text, e)),
    };
    fn body<'a, T: serde::Deserialize<'a>>(
        text: &'a str,
        wrap: fn(T) -> Message,
    ) -> Result<Message, serde_json::Error> {
        serde_json::from_str::<T>(text).map(wrap)
    }
    let decoded = match ty.as_ref() {
        "invokefunction" => body(text, Message::InvokeFunction),
        "invocationresult" => body(text, Message::InvocationResult),
        "registerfunction" => body(text, Message::RegisterFunction),
        "unregisterfunction" => body(text, Message::UnregisterFunction),
        "registertrigger" => body(text, Message::RegisterTrigger),
        "unregistertrigger" => body(text, Message::UnregisterTrigger),
        "triggerregistrationresult" => body(text, Message::TriggerRegistrationResult),
        "registertriggertype" => body(text, Message::RegisterTriggerType),
        "unregistertriggertype" => body(text, Message::UnregisterTriggerType),
        "registerservice" => body(text, Message::RegisterService),
        "workerregistered" => body(text, Message::WorkerRegistered),
        "reattach" => body(text, Message::Reattach),
        "error" => body(text, Message::Error),
        "ping" => Ok(Message::Ping),
        "pong" => Ok(Message::Pong),
        _ => serde_json::from_str::<Message>(text),
    };
    decoded.map(Some).map_err(|e| explain(text, e))
}

/// Just the discriminator of a frame; every other field is skipped without being built.
#[derive(serde::Deserialize)]
struct Tag<'a> {
    #[serde(rename = "type", borrow)]
    ty: std::borrow::Cow<'a, str>,
}

fn explain(text: &str, first: serde_json::Error) -> DecodeError {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return DecodeError {
                code: codes::INVALID_MESSAGE,
                message: format!("frame is not valid JSON: {e}"),
                message_type: None,
                invocation_id: None,
                function_id: None,
            }
        }
    };
    let Some(obj) = value.as_object() else {
        return DecodeError {
            code: codes::INVALID_MESSAGE,
            message: "frame must be a JSON object".into(),
            message_type: None,
            invocation_id: None,
            function_id: None,
        };
    };
    let str_field = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
    let Some(ty) = str_field("type") else {
        return DecodeError {
            code: codes::INVALID_MESSAGE,
            message: "frame has no string `type` field".into(),
            message_type: None,
            invocation_id: None,
            function_id: None,
        };
    };
    if !KNOWN_TYPES.contains(&ty.as_str()) {
        return DecodeError {
            code: codes::UNKNOWN_MESSAGE_TYPE,
            message: format!("unknown message type `{ty}`"),
            message_type: Some(ty),
            invocation_id: None,
            function_id: None,
        };
    }
    let (invocation_id, function_id) = if ty == "invokefunction" {
        (str_field("invocation_id"), str_field("function_id"))
    } else {
        (None, None)
    };
    DecodeError {
        code: codes::INVALID_MESSAGE,
        message: format!("invalid `{ty}` message: {first}"),
        message_type: Some(ty),
        invocation_id,
        function_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InvokeFunction, RegisterTrigger, TriggerAction};
    use serde_json::json;

    #[test]
    fn tolerates_what_real_sdks_send() {
        // Node's stray `message_type`, no `config`.
        let m = decode_worker_frame(
            r#"{"type":"registertrigger","function_id":"f","id":"t1","message_type":"registertrigger","trigger_type":"state"}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            m,
            Message::RegisterTrigger(RegisterTrigger {
                id: "t1".into(),
                trigger_type: "state".into(),
                function_id: "f".into(),
                config: Value::Null,
                metadata: None,
            })
        );
        // Void call without `data` and without `invocation_id`; unknown fields ignored.
        let m = decode_worker_frame(
            r#"{"type":"invokefunction","function_id":"a::b","action":{"type":"void"},"namespace":"default"}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            m,
            Message::InvokeFunction(InvokeFunction {
                invocation_id: None,
                function_id: "a::b".into(),
                data: Value::Null,
                action: Some(TriggerAction::Void),
                metadata: None,
                traceparent: None,
                baggage: None,
            })
        );
        // SDK 0.9.0 registerfunction copies every key of the user's object.
        let m = decode_worker_frame(
            r#"{"type":"registerfunction","id":"a::b","description":"d","custom":1}"#,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(m, Message::RegisterFunction(f) if f.id == "a::b"));
        assert_eq!(
            decode_worker_frame(r#"{"type":"ping"}"#).unwrap(),
            Some(Message::Ping)
        );
        assert_eq!(decode_worker_frame("  \n").unwrap(), None);
    }

    #[test]
    fn null_result_is_absent() {
        let m = decode_worker_frame(
            r#"{"type":"invocationresult","invocation_id":"x","function_id":"f","result":null}"#,
        )
        .unwrap()
        .unwrap();
        match m {
            Message::InvocationResult(r) => assert_eq!(r.result, None),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn explains_bad_frames() {
        let e = decode_worker_frame("not json").unwrap_err();
        assert_eq!(e.code, codes::INVALID_MESSAGE);
        assert!(e.message.contains("not valid JSON"));

        let e = decode_worker_frame("[1,2]").unwrap_err();
        assert_eq!(e.message, "frame must be a JSON object");

        let e = decode_worker_frame(r#"{"id":"x"}"#).unwrap_err();
        assert!(e.message.contains("no string `type`"));

        let e = decode_worker_frame(r#"{"type":"RegisterFunction","id":"x"}"#).unwrap_err();
        assert_eq!(e.code, codes::UNKNOWN_MESSAGE_TYPE);

        let e = decode_worker_frame(r#"{"type":"registerfunction","id":5}"#).unwrap_err();
        assert_eq!(e.code, codes::INVALID_MESSAGE);
        assert_eq!(e.message_type.as_deref(), Some("registerfunction"));

        // An unknown action still lets the caller be answered.
        let frame = json!({"type":"invokefunction","invocation_id":"abc","function_id":"f","action":{"type":"later"}});
        let e = decode_worker_frame(&frame.to_string()).unwrap_err();
        assert_eq!(e.invocation_id.as_deref(), Some("abc"));
        assert_eq!(e.function_id.as_deref(), Some("f"));
    }
}

#[cfg(test)]
mod robustness {
    //! cargo-fuzz needs a nightly toolchain, which this project's machines do not have; this
    //! deterministic mutation test gives the decoder the same kind of beating on stable: valid
    //! frames with bytes flipped, truncated, duplicated and spliced must decode or fail with an
    //! error, never panic, and every error must carry a code and a message.

    use super::*;

    const SEEDS: &[&str] = &[
        r#"{"type":"invokefunction","invocation_id":"5e2d0a32-064a-45f3-94a0-05a39f5d7da6","function_id":"a::b","data":{"x":[1,2.5,"s",null,true]},"action":{"type":"void"}}"#,
        r#"{"type":"invocationresult","invocation_id":"i","function_id":"f","error":{"code":"c","message":"m","stacktrace":"s"}}"#,
        r#"{"type":"registertrigger","id":"t","trigger_type":"http","function_id":"f","config":{"api_path":"/x/:id"},"metadata":{"m":1},"message_type":"registertrigger"}"#,
        r#"{"type":"registerfunction","id":"a::b","description":"d","request_format":{"type":"object"}}"#,
        r#"{"type":"reattach","previous_worker_id":"w","reattach_token":"t"}"#,
        r#"{"type":"ping"}"#,
    ];

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn mutated_frames_never_panic() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let alphabet = b"{}[]\":,\\ 0123456789.eE+-truefalsnl\x00\xff";
        for _ in 0..20_000 {
            let mut bytes = SEEDS[rng.below(SEEDS.len())].as_bytes().to_vec();
            for _ in 0..=rng.below(4) {
                let at = rng.below(bytes.len());
                match rng.below(4) {
                    0 => bytes[at] = alphabet[rng.below(alphabet.len())],
                    1 => bytes.truncate(at),
                    2 => {
                        let end = (at + rng.below(16)).min(bytes.len());
                        let piece = bytes[at..end].to_vec();
                        bytes.splice(at..at, piece);
                    }
                    _ => {
                        let other = SEEDS[rng.below(SEEDS.len())].as_bytes();
                        let cut = rng.below(other.len());
                        bytes.truncate(at);
                        bytes.extend_from_slice(&other[cut..]);
                    }
                }
                if bytes.is_empty() {
                    break;
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Err(e) = decode_worker_frame(&text) {
                assert!(!e.code.is_empty() && !e.message.is_empty());
            }
        }
    }
}
