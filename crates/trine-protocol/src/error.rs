//! The error body carried by failed invocations, and Trine's stable error codes.

use serde::{Deserialize, Serialize};

/// `{code, message, stacktrace?}`: the body of every failure on the wire.
///
/// Both `code` and `message` are always strings (the Rust SDK refuses a frame without them and SDK
/// 0.9.0 hands this object to user code as-is, so `message` must be readable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacktrace: Option<String>,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            stacktrace: None,
        }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ErrorBody {}

/// Stable error codes produced by Trine. Worker-produced codes are passed through unchanged.
pub mod codes {
    /// The target function id is not registered (spec wording kept).
    pub const FUNCTION_NOT_FOUND: &str = "function_not_found";
    /// The worker executing the call disconnected before answering.
    pub const INVOCATION_STOPPED: &str = "invocation_stopped";
    /// Internal failure while routing a call.
    pub const INVOCATION_ERROR: &str = "invocation_error";
    /// The engine-side timeout for a call elapsed.
    pub const INVOCATION_TIMEOUT: &str = "invocation_timeout";
    /// The executing worker has too many calls in flight, or its outbound queue is full.
    pub const OVERLOADED: &str = "overloaded";
    /// `action: enqueue` could not be honoured.
    pub const ENQUEUE_ERROR: &str = "enqueue_error";
    /// A trigger could not be registered.
    pub const TRIGGER_REGISTRATION_FAILED: &str = "trigger_registration_failed";
    /// A frame could not be decoded (not JSON, no `type`, wrong field types).
    pub const INVALID_MESSAGE: &str = "invalid_message";
    /// A frame's `type` is not one Trine knows.
    pub const UNKNOWN_MESSAGE_TYPE: &str = "unknown_message_type";
    /// A frame exceeded the configured size limit.
    pub const MESSAGE_TOO_LARGE: &str = "message_too_large";
    /// Arguments of a built-in function are invalid.
    pub const INVALID_ARGUMENTS: &str = "INVALID_ARGUMENTS";
    /// A looked-up entity does not exist (built-in functions).
    pub const NOT_FOUND: &str = "NOT_FOUND";
    /// The function id is owned by another live worker; the registration is held as a standby.
    pub const FUNCTION_ID_CONFLICT: &str = "function_id_conflict";
}
