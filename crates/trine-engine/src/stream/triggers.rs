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
use crate::state::triggers::{opt_string, ReplicaIndex};

fn config_object(trigger: &TriggerEntry) -> Result<&Map<String, Value>, String> {
    trigger.config.as_object().ok_or_else(|| {
        format!(
            "Failed to parse trigger config: expected an object, got {}",
            json_type(&trigger.config)
        )
    })
}

/// A `stream` trigger's filter; an empty `group_id`/`item_id` is stored as absent (both mean
/// any), so replicas differing only in that spelling merge.
#[derive(Debug, Clone, PartialEq)]
struct StreamFilter {
    stream: String,
    group: Option<String>,
    item: Option<String>,
}

/// Active `stream` triggers (copy-on-write, read by the committer per envelope). Replicas (same
/// function, filter and condition) are one logical trigger, as for `state` triggers
/// ([`crate::state::triggers`]).
#[derive(Default)]
pub struct StreamTriggerIndex {
    index: ReplicaIndex<StreamFilter>,
}

impl StreamTriggerIndex {
    /// Targets of the logical triggers matching an envelope (`group_id`/`item_id` absent or
    /// `""` = any), each once.
    pub fn matching(&self, stream: &str, group: &str, id: Option<&str>) -> Vec<Arc<Target>> {
        self.index
            .snapshot()
            .iter()
            .filter(|t| t.filter.stream == stream)
            .filter(|t| t.filter.group.as_deref().is_none_or(|g| g == group))
            .filter(|t| {
                t.filter
                    .item
                    .as_deref()
                    .is_none_or(|i| i == id.unwrap_or(""))
            })
            .map(|t| t.target.clone())
            .collect()
    }

    /// Number of logical triggers (replicas counted once).
    pub fn count(&self) -> usize {
        self.index.count()
    }

    /// Number of registrations (replicas counted one by one).
    pub fn registrations(&self) -> usize {
        self.index.registrations()
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
        let filter = StreamFilter {
            stream,
            group: opt_string(config, "group_id")?.filter(|g| !g.is_empty()),
            item: opt_string(config, "item_id")?.filter(|i| !i.is_empty()),
        };
        let condition = opt_string(config, "condition_function_id")?;
        self.index.insert(trigger, filter, condition);
        Ok(())
    }

    fn unregister(&self, trigger: &TriggerEntry) {
        self.index.remove(&trigger.id);
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

/// A `stream:join` / `stream:leave` trigger as another engine of a group announces it: every
/// engine runs the group's join and leave triggers for its own sockets (a join check registered
/// through one engine guards the clients of all of them), calling the function wherever it is.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AnnouncedTrigger {
    pub function_id: String,
    #[serde(default)]
    pub config: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// Active `stream:join` (or `stream:leave`) triggers, in registration order: this engine's, then
/// those other engines of the group announced.
#[derive(Default)]
pub struct JoinLeaveIndex {
    list: RwLock<Vec<JoinLeaveTrigger>>,
    /// Other engines' triggers (never announced again by this engine).
    remote: RwLock<Vec<JoinLeaveTrigger>>,
}

fn parse_join_leave(
    id: &str,
    function_id: &str,
    config: &Value,
    metadata: Option<Value>,
) -> Result<JoinLeaveTrigger, String> {
    let empty = Map::new();
    let config = match config {
        Value::Null => &empty,
        Value::Object(m) => m,
        other => {
            return Err(format!(
                "Failed to parse trigger config: expected an object with optional `stream_name` and `condition_function_id`, got {}",
                json_type(other)
            ))
        }
    };
    Ok(JoinLeaveTrigger {
        id: id.to_owned(),
        function_id: function_id.to_owned(),
        stream: opt_string(config, "stream_name")?,
        condition_function_id: opt_string(config, "condition_function_id")?,
        metadata,
    })
}

impl JoinLeaveTrigger {
    /// Replicas (the same function with the same filter and condition) run once per join.
    fn same_as(&self, other: &JoinLeaveTrigger) -> bool {
        self.function_id == other.function_id
            && self.stream.as_deref().unwrap_or("") == other.stream.as_deref().unwrap_or("")
            && self.condition_function_id == other.condition_function_id
    }
}

impl JoinLeaveIndex {
    /// Triggers whose `stream_name` filter (if any) matches; replicas once.
    pub fn for_stream(&self, stream: &str) -> Vec<JoinLeaveTrigger> {
        let local = self.list.read().unwrap_or_else(|e| e.into_inner());
        let remote = self.remote.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<JoinLeaveTrigger> = Vec::new();
        for t in local.iter().chain(remote.iter()) {
            if t.stream
                .as_deref()
                .is_none_or(|s| s.is_empty() || s == stream)
                && !out.iter().any(|o| o.same_as(t))
            {
                out.push(t.clone());
            }
        }
        out
    }

    /// This engine's triggers, to announce to the other engines of a group.
    pub fn local_triggers(&self) -> Vec<AnnouncedTrigger> {
        self.list
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|t| AnnouncedTrigger {
                function_id: t.function_id.clone(),
                config: serde_json::json!({
                    "stream_name": t.stream,
                    "condition_function_id": t.condition_function_id,
                }),
                metadata: t.metadata.clone(),
            })
            .collect()
    }

    /// Replaces the triggers the other engines announced (invalid ones are skipped).
    pub fn set_remote(&self, announced: Vec<AnnouncedTrigger>) {
        let parsed: Vec<JoinLeaveTrigger> = announced
            .into_iter()
            .enumerate()
            .filter_map(|(i, a)| {
                parse_join_leave(
                    &format!("remote-{i}"),
                    &a.function_id,
                    &a.config,
                    a.metadata,
                )
                .map_err(|e| tracing::debug!(error = %e, "announced join/leave trigger skipped"))
                .ok()
            })
            .collect();
        *self.remote.write().unwrap_or_else(|e| e.into_inner()) = parsed;
    }
}

impl TriggerProvider for JoinLeaveIndex {
    fn register(&self, trigger: &TriggerEntry) -> Result<(), String> {
        if !matches!(trigger.config, Value::Null | Value::Object(_)) {
            config_object(trigger)?;
        }
        let t = parse_join_leave(
            &trigger.id,
            &trigger.function_id,
            &trigger.config,
            trigger.metadata.clone(),
        )?;
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn trig(id: &str, function_id: &str, config: Value) -> TriggerEntry {
        TriggerEntry::for_test(id, "stream", function_id, config)
    }

    fn ids(targets: &[Arc<Target>]) -> Vec<&str> {
        targets.iter().map(|t| t.trigger_id.as_str()).collect()
    }

    #[test]
    fn replicas_are_one_logical_trigger_that_keeps_its_first_id() {
        let index = StreamTriggerIndex::default();
        let config = json!({"stream_name": "todos", "group_id": "g"});
        index.register(&trig("a", "f", config.clone())).unwrap();
        index.register(&trig("b", "f", config.clone())).unwrap();
        // An empty item filter means any item: the same trigger.
        index
            .register(&trig(
                "c",
                "f",
                json!({"stream_name": "todos", "group_id": "g", "item_id": ""}),
            ))
            .unwrap();
        assert_eq!(ids(&index.matching("todos", "g", Some("i"))), ["a"]);
        assert_eq!((index.count(), index.registrations()), (1, 3));

        index.unregister(&trig("a", "f", config.clone()));
        index.owner_gone(&trig("c", "f", config.clone()));
        assert_eq!(ids(&index.matching("todos", "g", None)), ["a"]);
        assert_eq!((index.count(), index.registrations()), (1, 1));
        index.unregister(&trig("b", "f", config.clone()));
        assert!(index.matching("todos", "g", None).is_empty());
        assert_eq!((index.count(), index.registrations()), (0, 0));
    }

    #[test]
    fn a_different_filter_or_condition_is_another_trigger() {
        let index = StreamTriggerIndex::default();
        index
            .register(&trig("a", "f", json!({"stream_name": "s"})))
            .unwrap();
        index
            .register(&trig(
                "b",
                "f",
                json!({"stream_name": "s", "group_id": "g"}),
            ))
            .unwrap();
        index
            .register(&trig(
                "c",
                "f",
                json!({"stream_name": "s", "group_id": "g", "item_id": "i"}),
            ))
            .unwrap();
        index
            .register(&trig(
                "d",
                "f",
                json!({"stream_name": "s", "condition_function_id": "cond"}),
            ))
            .unwrap();
        index
            .register(&trig("e", "f", json!({"stream_name": "t"})))
            .unwrap();
        index
            .register(&trig("f", "f", json!({"stream_name": "s", "group_id": ""})))
            .unwrap();
        assert_eq!((index.count(), index.registrations()), (5, 6));
        assert_eq!(
            ids(&index.matching("s", "g", Some("i"))),
            ["a", "b", "c", "d"]
        );
        assert_eq!(ids(&index.matching("s", "h", Some("i"))), ["a", "d"]);
        assert_eq!(ids(&index.matching("t", "g", None)), ["e"]);
    }

    #[test]
    fn re_registering_an_id_with_a_new_config_moves_it() {
        let index = StreamTriggerIndex::default();
        let s = json!({"stream_name": "s"});
        let t = json!({"stream_name": "t"});
        index.register(&trig("a", "f", s.clone())).unwrap();
        index.register(&trig("b", "f", s.clone())).unwrap();
        index.register(&trig("b", "f", t.clone())).unwrap();
        assert_eq!(ids(&index.matching("s", "g", None)), ["a"]);
        assert_eq!(ids(&index.matching("t", "g", None)), ["b"]);
        assert_eq!((index.count(), index.registrations()), (2, 2));
        index.unregister(&trig("a", "f", s.clone()));
        assert!(index.matching("s", "g", None).is_empty());
        assert_eq!(ids(&index.matching("t", "g", None)), ["b"]);
    }

    #[test]
    fn join_triggers_of_other_engines_run_here_and_replicas_run_once() {
        let here = JoinLeaveIndex::default();
        let there = JoinLeaveIndex::default();
        there
            .register(&trig("x", "gate", json!({"stream_name": "s"})))
            .unwrap();
        there.register(&trig("y", "audit", Value::Null)).unwrap();
        here.register(&trig("a", "gate", json!({"stream_name": "s"})))
            .unwrap();
        // What engine "there" announces, as this engine receives it (through JSON).
        let announced: Vec<AnnouncedTrigger> =
            serde_json::from_value(serde_json::to_value(there.local_triggers()).unwrap()).unwrap();
        here.set_remote(announced);
        let fns = |v: Vec<JoinLeaveTrigger>| -> Vec<String> {
            v.into_iter().map(|t| t.function_id).collect()
        };
        // `gate` is registered here and there: once. `audit` (any stream) comes from there.
        assert_eq!(fns(here.for_stream("s")), ["gate", "audit"]);
        assert_eq!(fns(here.for_stream("t")), ["audit"]);
        // Announcements carry only the engine's own triggers, and are replaced as a whole.
        assert_eq!(here.local_triggers().len(), 1);
        here.set_remote(vec![AnnouncedTrigger {
            function_id: "bad".into(),
            config: json!("not an object"),
            metadata: None,
        }]);
        assert_eq!(fns(here.for_stream("t")), Vec::<String>::new());
    }
}
