//! The `state` trigger type: which triggers want a change of (scope, key).
//!
//! The registry calls [`TriggerIndex`] (as the type's provider) under its lock; the committer
//! reads the current set once per change. The set is copy-on-write behind a short lock, so the
//! committer never waits on a registration for longer than an `Arc` clone.
//!
//! Replicas: registrations with the same function, the same filter and the same condition (the
//! same function registered by several workers, on one engine or forwarded from several) are one
//! **logical trigger**, delivered once per change. The logical trigger keeps the id of its first
//! registration as its delivery id (`Target::trigger_id`: the ordering lane and the outbox key)
//! even after that registration goes away while others remain, so order per (trigger, key) holds
//! across replica churn. It disappears with its last registration.

use std::sync::{Arc, RwLock};

use serde_json::Value;

use super::delivery::Target;
use crate::registry::{TriggerEntry, TriggerProvider};

/// A `state` trigger's filter (absent = any).
#[derive(Debug, Clone, PartialEq)]
struct StateFilter {
    scope: Option<String>,
    key: Option<String>,
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

/// One logical trigger: the registrations sharing a function, a filter `F` and a condition.
pub(crate) struct Logical<F> {
    pub(crate) filter: F,
    /// Where its deliveries go; `trigger_id` and `metadata` are those of the first registration.
    pub(crate) target: Arc<Target>,
    /// Registration ids holding it, oldest first (never empty). The first registration may have
    /// left: `target.trigger_id` is not necessarily among them.
    ids: Vec<String>,
}

/// Triggers of one delivered type with replicas merged into logical triggers (copy-on-write).
///
/// Invariant: no two logical triggers share a `target.trigger_id` (lanes and outbox records are
/// keyed by it).
pub(crate) struct ReplicaIndex<F> {
    list: CowList<Logical<F>>,
}

impl<F> Default for ReplicaIndex<F> {
    fn default() -> Self {
        Self {
            list: CowList::default(),
        }
    }
}

impl<F: Clone + PartialEq> ReplicaIndex<F> {
    /// The current logical triggers.
    pub(crate) fn snapshot(&self) -> Arc<Vec<Arc<Logical<F>>>> {
        self.list.snapshot()
    }

    /// Number of logical triggers.
    pub(crate) fn count(&self) -> usize {
        self.list.snapshot().len()
    }

    /// Number of registrations (replicas counted one by one).
    pub(crate) fn registrations(&self) -> usize {
        self.list.snapshot().iter().map(|l| l.ids.len()).sum()
    }

    /// Adds (or, for an id already present, replaces) a registration of `trigger`.
    pub(crate) fn insert(&self, trigger: &TriggerEntry, filter: F, condition: Option<String>) {
        let id = trigger.id.as_str();
        self.list.replace(|v| {
            detach(v, id);
            let same = v.iter().position(|l| {
                l.filter == filter
                    && l.target.function_id == trigger.function_id
                    && l.target.condition_function_id == condition
            });
            if let Some(i) = same {
                let l = &v[i];
                let mut ids = l.ids.clone();
                ids.push(id.to_owned());
                v[i] = Arc::new(Logical {
                    filter: l.filter.clone(),
                    target: l.target.clone(),
                    ids,
                });
                return;
            }
            // A logical trigger whose first registration was `id` (and which lives on through
            // other replicas) gives the id up to the new one: it takes one of its own.
            if let Some(i) = v.iter().position(|l| l.target.trigger_id == id) {
                let l = &v[i];
                let fresh = free_id(v, &l.ids);
                tracing::debug!(old = id, new = %fresh, function_id = %l.target.function_id,
                    "replicated trigger changes its delivery id (its first registration moved)");
                v[i] = Arc::new(Logical {
                    filter: l.filter.clone(),
                    target: Arc::new(Target {
                        trigger_id: fresh,
                        ..l.target.as_ref().clone()
                    }),
                    ids: l.ids.clone(),
                });
            }
            v.push(Arc::new(Logical {
                filter,
                target: Arc::new(Target {
                    trigger_id: id.to_owned(),
                    function_id: trigger.function_id.clone(),
                    condition_function_id: condition,
                    metadata: trigger.metadata.clone(),
                }),
                ids: vec![id.to_owned()],
            }));
        });
    }

    /// Removes registration `id`; its logical trigger goes with its last registration.
    pub(crate) fn remove(&self, id: &str) {
        self.list.replace(|v| detach(v, id));
    }
}

/// Takes `id` out of the logical trigger holding it, dropping that trigger if it was the last.
fn detach<F: Clone>(v: &mut Vec<Arc<Logical<F>>>, id: &str) {
    let Some(i) = v.iter().position(|l| l.ids.iter().any(|x| x == id)) else {
        return;
    };
    let l = &v[i];
    let ids: Vec<String> = l.ids.iter().filter(|x| *x != id).cloned().collect();
    if ids.is_empty() {
        v.remove(i);
    } else {
        v[i] = Arc::new(Logical {
            filter: l.filter.clone(),
            target: l.target.clone(),
            ids,
        });
    }
}

/// The first of `candidates` no logical trigger uses as its delivery id; if all are taken
/// (possible only after repeated config changes of replicas), the first suffixed `~n`.
fn free_id<F>(v: &[Arc<Logical<F>>], candidates: &[String]) -> String {
    let taken = |id: &str| v.iter().any(|l| l.target.trigger_id == id);
    if let Some(c) = candidates.iter().find(|c| !taken(c)) {
        return c.clone();
    }
    let base = candidates.first().map(String::as_str).unwrap_or("trigger");
    (1u64..)
        .map(|n| format!("{base}~{n}"))
        .find(|c| !taken(c))
        .unwrap_or_else(|| base.to_owned())
}

/// Active `state` triggers, replicas merged.
#[derive(Default)]
pub struct TriggerIndex {
    index: ReplicaIndex<StateFilter>,
}

impl TriggerIndex {
    /// Targets of every logical trigger whose filters match (exact, case-sensitive; absent =
    /// any), each once.
    pub fn matching(&self, scope: &str, key: &str) -> Vec<Arc<Target>> {
        self.index
            .snapshot()
            .iter()
            .filter(|t| t.filter.scope.as_deref().is_none_or(|s| s == scope))
            .filter(|t| t.filter.key.as_deref().is_none_or(|k| k == key))
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
        let filter = StateFilter {
            scope: opt_string(config, "scope")?,
            key: opt_string(config, "key")?,
        };
        let condition = opt_string(config, "condition_function_id")?;
        self.index.insert(trigger, filter, condition);
        Ok(())
    }

    fn unregister(&self, trigger: &TriggerEntry) {
        self.index.remove(&trigger.id);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn trig(id: &str, function_id: &str, config: Value) -> TriggerEntry {
        TriggerEntry {
            metadata: Some(json!({"from": id})),
            ..TriggerEntry::for_test(id, "state", function_id, config)
        }
    }

    fn ids(targets: &[Arc<Target>]) -> Vec<&str> {
        targets.iter().map(|t| t.trigger_id.as_str()).collect()
    }

    #[test]
    fn replicas_are_one_logical_trigger_that_keeps_its_first_id() {
        let index = TriggerIndex::default();
        let config = json!({"scope": "todos"});
        index.register(&trig("a", "f", config.clone())).unwrap();
        index.register(&trig("b", "f", config.clone())).unwrap();
        let m = index.matching("todos", "k");
        assert_eq!(ids(&m), ["a"]);
        assert_eq!(
            m[0].metadata,
            Some(json!({"from": "a"})),
            "first metadata kept"
        );
        assert_eq!((index.count(), index.registrations()), (1, 2));

        // The first registration leaves: the same logical trigger, same delivery id.
        index.unregister(&trig("a", "f", config.clone()));
        let after = index.matching("todos", "k");
        assert_eq!(ids(&after), ["a"]);
        assert!(
            Arc::ptr_eq(&m[0], &after[0]),
            "the target itself is unchanged"
        );
        assert_eq!((index.count(), index.registrations()), (1, 1));

        // `a` comes back with the same config: it joins again.
        index.register(&trig("a", "f", config.clone())).unwrap();
        assert_eq!(ids(&index.matching("todos", "k")), ["a"]);
        assert_eq!((index.count(), index.registrations()), (1, 2));

        index.owner_gone(&trig("a", "f", config.clone()));
        index.unregister(&trig("b", "f", config.clone()));
        assert!(index.matching("todos", "k").is_empty());
        assert_eq!((index.count(), index.registrations()), (0, 0));
    }

    #[test]
    fn a_different_filter_condition_or_function_is_another_trigger() {
        let index = TriggerIndex::default();
        index
            .register(&trig("a", "f", json!({"scope": "todos"})))
            .unwrap();
        index
            .register(&trig("b", "f", json!({"scope": "other"})))
            .unwrap();
        index
            .register(&trig("c", "f", json!({"scope": "todos", "key": "k"})))
            .unwrap();
        index
            .register(&trig(
                "d",
                "f",
                json!({"scope": "todos", "condition_function_id": "cond"}),
            ))
            .unwrap();
        index
            .register(&trig("e", "g", json!({"scope": "todos"})))
            .unwrap();
        index.register(&trig("f", "f", json!({}))).unwrap();
        index
            .register(&trig("g", "f", json!({"scope": null})))
            .unwrap();
        assert_eq!((index.count(), index.registrations()), (6, 7));
        let mut got = ids(&index.matching("todos", "k"))
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        got.sort();
        assert_eq!(got, ["a", "c", "d", "e", "f"]);
        assert_eq!(ids(&index.matching("other", "x")), ["b", "f"]);
    }

    #[test]
    fn re_registering_an_id_with_a_new_config_moves_it() {
        let index = TriggerIndex::default();
        let todos = json!({"scope": "todos"});
        let users = json!({"scope": "users"});
        index.register(&trig("a", "f", todos.clone())).unwrap();
        index.register(&trig("b", "f", todos.clone())).unwrap();
        index.register(&trig("b", "f", users.clone())).unwrap();
        assert_eq!(ids(&index.matching("todos", "k")), ["a"]);
        assert_eq!(ids(&index.matching("users", "k")), ["b"]);
        assert_eq!((index.count(), index.registrations()), (2, 2));

        // The first registration moves while a replica stays: the new trigger is `a`, the one
        // left behind takes the id of its remaining registration (delivery ids stay unique).
        index.register(&trig("c", "f", todos.clone())).unwrap();
        index
            .register(&trig("a", "f", json!({"scope": "new"})))
            .unwrap();
        assert_eq!(ids(&index.matching("todos", "k")), ["c"]);
        assert_eq!(ids(&index.matching("new", "k")), ["a"]);
        assert_eq!(ids(&index.matching("users", "k")), ["b"]);
        assert_eq!((index.count(), index.registrations()), (3, 3));
    }

    #[test]
    fn replay_of_a_sole_registration_replaces_it() {
        let index = TriggerIndex::default();
        index
            .register(&trig("a", "f", json!({"scope": "todos"})))
            .unwrap();
        let mut again = trig("a", "f", json!({"scope": "todos"}));
        again.metadata = Some(json!({"v": 2}));
        index.register(&again).unwrap();
        let m = index.matching("todos", "k");
        assert_eq!(ids(&m), ["a"]);
        assert_eq!(m[0].metadata, Some(json!({"v": 2})));
        assert_eq!(index.registrations(), 1);
    }

    #[test]
    fn delivery_ids_stay_unique_through_churn() {
        let index = TriggerIndex::default();
        let c1 = json!({"scope": "s1"});
        let c2 = json!({"scope": "s2"});
        let c3 = json!({"scope": "s3"});
        // s1 is delivered as `x` (held by x and y), s2 as `y` (held by z only); then `x` moves.
        index.register(&trig("y", "f", c2.clone())).unwrap();
        index.register(&trig("z", "f", c2.clone())).unwrap();
        index.register(&trig("x", "f", c1.clone())).unwrap();
        index.register(&trig("y", "f", c1.clone())).unwrap();
        index.register(&trig("x", "f", c3.clone())).unwrap();
        let all: Vec<Arc<Target>> = ["s1", "s2", "s3"]
            .iter()
            .flat_map(|s| index.matching(s, "k"))
            .collect();
        let mut delivery_ids: Vec<&str> = ids(&all);
        assert_eq!(delivery_ids.len(), 3);
        assert_eq!(ids(&index.matching("s3", "k")), ["x"]);
        // `y`, the remaining registration of s1, is s2's delivery id already.
        assert_eq!(ids(&index.matching("s1", "k")), ["y~1"]);
        delivery_ids.sort();
        delivery_ids.dedup();
        assert_eq!(delivery_ids.len(), 3, "{all:?}");
    }
}
