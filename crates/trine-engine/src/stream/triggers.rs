//! The `stream`, `stream:join` and `stream:leave` trigger types.
//!
//! `stream` triggers are durable deliveries like state triggers (the committer records them in
//! the outbox); join/leave triggers are called inline by the client socket. Unlike iii, join and
//! leave triggers honour their `stream_name` filter and condition.

use std::sync::{Arc, RwLock};

use serde_json::{Map, Value};

use crate::registry::{TriggerEntry, TriggerProvider};
use crate::state::delivery::Target;
use crate::state::json_type;
use crate::state::triggers::{opt_string, CowList};

fn config_object(trigger: &TriggerEntry) -> Result<&Map<String, Value>, String> {
    trigger.config.as_object().ok_or_else(|| {
        format!(
            "Failed to parse trigger config: expected an object, got {}",
            json_type(&trigger.config)
        )
    })
}

struct StreamTrigger {
    stream: String,
    group: Option<String>,
    item: Option<String>,
    target: Arc<Target>,
}

/// Active `stream` triggers (copy-on-write, read by the committer per envelope).
#[derive(Default)]
pub struct StreamTriggerIndex {
    list: CowList<StreamTrigger>,
}

impl StreamTriggerIndex {
    /// Targets of the triggers matching an envelope (`group_id`/`item_id` absent or `""` = any).
    pub fn matching(&self, stream: &str, group: &str, id: Option<&str>) -> Vec<Arc<Target>> {
        self.list
            .snapshot()
            .iter()
            .filter(|t| t.stream == stream)
            .filter(|t| {
                t.group
                    .as_deref()
                    .is_none_or(|g| g.is_empty() || g == group)
            })
            .filter(|t| {
                t.item
                    .as_deref()
                    .is_none_or(|i| i.is_empty() || i == id.unwrap_or(""))
            })
            .map(|t| t.target.clone())
            .collect()
    }

    pub fn count(&self) -> usize {
        self.list.snapshot().len()
    }
}

impl TriggerProvider for StreamTriggerIndex {
    fn register(&self, trigger: &TriggerEntry) -> Result<(), String> {
        let config = config_object(trigger)?;
        let Some(stream) = opt_string(config, "stream_name")? else {
            return Err(
                "Failed to parse trigger config: `stream_name` is required for a stream trigger"
                    .into(),
            );
        };
        let t = Arc::new(StreamTrigger {
            stream,
            group: opt_string(config, "group_id")?,
            item: opt_string(config, "item_id")?,
            target: Arc::new(Target {
                trigger_id: trigger.id.clone(),
                function_id: trigger.function_id.clone(),
                condition_function_id: opt_string(config, "condition_function_id")?,
                metadata: trigger.metadata.clone(),
            }),
        });
        self.list.replace(|v| {
            v.retain(|x| x.target.trigger_id != trigger.id);
            v.push(t);
        });
        Ok(())
    }

    fn unregister(&self, trigger: &TriggerEntry) {
        self.list
            .replace(|v| v.retain(|x| x.target.trigger_id != trigger.id));
    }
}

/// One `stream:join` or `stream:leave` trigger.
#[derive(Debug, Clone)]
pub struct JoinLeaveTrigger {
    pub id: String,
    pub function_id: String,
    pub stream: Option<String>,
    pub condition_function_id: Option<String>,
    pub metadata: Option<Value>,
}

/// Active `stream:join` (or `stream:leave`) triggers, in registration order.
#[derive(Default)]
pub struct JoinLeaveIndex {
    list: RwLock<Vec<JoinLeaveTrigger>>,
}

impl JoinLeaveIndex {
    /// Triggers whose `stream_name` filter (if any) matches.
    pub fn for_stream(&self, stream: &str) -> Vec<JoinLeaveTrigger> {
        self.list
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|t| {
                t.stream
                    .as_deref()
                    .is_none_or(|s| s.is_empty() || s == stream)
            })
            .cloned()
            .collect()
    }
}

impl TriggerProvider for JoinLeaveIndex {
    fn register(&self, trigger: &TriggerEntry) -> Result<(), String> {
        let empty = Map::new();
        let config = match &trigger.config {
            Value::Null => &empty,
            _ => config_object(trigger)?,
        };
        let t = JoinLeaveTrigger {
            id: trigger.id.clone(),
            function_id: trigger.function_id.clone(),
            stream: opt_string(config, "stream_name")?,
            condition_function_id: opt_string(config, "condition_function_id")?,
            metadata: trigger.metadata.clone(),
        };
        let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
        list.retain(|x| x.id != trigger.id);
        list.push(t);
        Ok(())
    }

    fn unregister(&self, trigger: &TriggerEntry) {
        self.list
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|x| x.id != trigger.id);
    }
}
