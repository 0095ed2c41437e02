//! The identity announced after every connect through `engine::workers::register` (protocol.md §4.1).

use serde_json::{json, Value};
use trine_protocol::{InvokeFunction, Message, TriggerAction};

/// Built-in engine function every SDK calls (void) after each connect.
pub const WORKER_REGISTER_FUNCTION: &str = "engine::workers::register";

/// `runtime` reported to the engine.
pub const RUNTIME: &str = "rust";

/// The void `invokefunction` frame carrying `{runtime, version, name, os, pid, description?}`.
pub(crate) fn register_frame(name: &str, description: Option<&str>) -> Message {
    let mut data = json!({
        "runtime": RUNTIME,
        "version": env!("CARGO_PKG_VERSION"),
        "name": name,
        "os": os_description(),
        "pid": std::process::id(),
    });
    if let (Some(d), Some(obj)) = (description, data.as_object_mut()) {
        obj.insert("description".into(), Value::String(d.to_owned()));
    }
    Message::InvokeFunction(InvokeFunction {
        invocation_id: None,
        function_id: WORKER_REGISTER_FUNCTION.into(),
        data,
        action: Some(TriggerAction::Void),
        metadata: None,
        traceparent: None,
        baggage: None,
    })
}

/// The worker name when none is configured: env `III_WORKER_NAME`, else `hostname:pid` (the
/// default every iii SDK uses).
pub(crate) fn default_name() -> String {
    match std::env::var("III_WORKER_NAME") {
        Ok(name) if !name.trim().is_empty() => name,
        _ => format!("{}:{}", hostname(), std::process::id()),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// e.g. `linux x86_64 (unix)`, the shape the official Rust SDK sends.
fn os_description() -> String {
    use std::env::consts::{ARCH, FAMILY, OS};
    format!("{OS} {ARCH} ({FAMILY})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_frame_shape() {
        let v = serde_json::to_value(register_frame("bench", Some("d"))).unwrap();
        assert_eq!(v["type"], "invokefunction");
        assert_eq!(v["function_id"], WORKER_REGISTER_FUNCTION);
        assert_eq!(v["action"], json!({"type": "void"}));
        assert!(v.get("invocation_id").is_none());
        let data = &v["data"];
        assert_eq!(data["runtime"], "rust");
        assert_eq!(data["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(data["name"], "bench");
        assert_eq!(data["description"], "d");
        assert_eq!(data["pid"], std::process::id());
        assert!(data["os"]
            .as_str()
            .unwrap()
            .contains(std::env::consts::ARCH));

        let v = serde_json::to_value(register_frame("x", None)).unwrap();
        assert!(v["data"].get("description").is_none());
    }

    #[test]
    fn default_name_is_never_blank() {
        assert!(!default_name().trim().is_empty());
    }
}
