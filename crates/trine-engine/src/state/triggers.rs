//! The `state` trigger type: which triggers want a change of (scope, key).
//!
//! The registry calls [`TriggerIndex`] (as the type's provider) under its lock; the committer
//! reads the current set once per change. The set is copy-on-write behind a short lock, so the
//! committer never waits on a registration for longer than an `Arc` clone.

use std::sync::{Arc, RwLock};

use serde_json::Value;

use super::delivery::Target;
use crate::registry::{TriggerEntry, TriggerProvider};

struct StateTrigger {
    scope: Option<String>,
    key: Option<String>,
    target: Arc<Target>,
}

/// A copy-on-write list: readers take an `Arc` of the current version (one short lock);
/// a registration builds the next version.
pub(crate) struct CowList<T> {
    list: RwLock<Arc<Vec<Arc<T>>>>,
}

impl<T> Default for CowList<T> {
    fn default() -> Self {
        Self {
            list: RwLock::new(Arc::new(Vec::new())),
        }
    }
}

impl<T> CowList<T> {
    pub(crate) fn snapshot(&self) -> Arc<Vec<Arc<T>>> {
        self.list.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn replace(&self, f: impl FnOnce(&mut Vec<Arc<T>>)) {
        let mut guard = self.list.write().unwrap_or_else(|e| e.into_inner());
        let mut next: Vec<Arc<T>> = guard.as_ref().clone();
        f(&mut next);
        *guard = Arc::new(next);
    }
}

/// Active `state` triggers.
#[derive(Default)]
pub struct TriggerIndex {
    list: CowList<StateTrigger>,
}

impl TriggerIndex {
    /// Targets of every trigger whose filters match (exact, case-sensitive; absent = any).
    pub fn matching(&self, scope: &str, key: &str) -> Vec<Arc<Target>> {
        self.list
            .snapshot()
            .iter()
            .filter(|t| t.scope.as_deref().is_none_or(|s| s == scope))
            .filter(|t| t.key.as_deref().is_none_or(|k| k == key))
            .map(|t| t.target.clone())
            .collect()
    }

    /// Number of active triggers.
    pub fn count(&self) -> usize {
        self.list.snapshot().len()
    }
}

/// An optional string field of a trigger config.
pub(crate) fn opt_string(
    config: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<String>, String> {
    match config.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "Failed to parse trigger config: `{field}` must be a string, got {}",
            super::json_type(other)
        )),
    }
}

impl TriggerProvider for TriggerIndex {
    fn register(&self, trigger: &TriggerEntry) -> Result<(), String> {
        let Value::Object(config) = &trigger.config else {
            return Err(format!(
                "Failed to parse trigger config: expected an object with optional `scope`, `key` and `condition_function_id`, got {}",
                super::json_type(&trigger.config)
            ));
        };
        let t = Arc::new(StateTrigger {
            scope: opt_string(config, "scope")?,
            key: opt_string(config, "key")?,
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
