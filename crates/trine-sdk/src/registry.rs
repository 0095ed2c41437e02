//! What this worker has registered, kept so every new connection can replay it.

use std::collections::HashMap;
use std::sync::Arc;

use trine_protocol::{Message, RegisterFunction, RegisterTrigger, UnregisterFunction};

use crate::handler::Handler;

struct Function {
    def: RegisterFunction,
    handler: Arc<dyn Handler>,
    /// Registration order, so the replay matches what the user did.
    seq: u64,
}

/// Functions (definition + handler) and triggers, replayed in registration order.
#[derive(Default)]
pub(crate) struct Registry {
    functions: HashMap<String, Function>,
    triggers: Vec<RegisterTrigger>,
    seq: u64,
}

impl Registry {
    /// Adds or replaces a function; returns the frame announcing it.
    pub(crate) fn insert_function(
        &mut self,
        def: RegisterFunction,
        handler: Arc<dyn Handler>,
    ) -> Message {
        self.seq += 1;
        let frame = Message::RegisterFunction(def.clone());
        let seq = match self.functions.get(&def.id) {
            Some(existing) => existing.seq,
            None => self.seq,
        };
        self.functions
            .insert(def.id.clone(), Function { def, handler, seq });
        frame
    }

    /// Removes a function; returns the `unregisterfunction` frame when it was registered.
    pub(crate) fn remove_function(&mut self, id: &str) -> Option<Message> {
        self.functions
            .remove(id)
            .map(|f| Message::UnregisterFunction(UnregisterFunction { id: f.def.id }))
    }

    pub(crate) fn handler(&self, id: &str) -> Option<Arc<dyn Handler>> {
        self.functions.get(id).map(|f| Arc::clone(&f.handler))
    }

    pub(crate) fn insert_trigger(&mut self, trigger: RegisterTrigger) -> Message {
        let frame = Message::RegisterTrigger(trigger.clone());
        match self.triggers.iter_mut().find(|t| t.id == trigger.id) {
            Some(existing) => *existing = trigger,
            None => self.triggers.push(trigger),
        }
        frame
    }

    pub(crate) fn remove_trigger(&mut self, id: &str) -> Option<RegisterTrigger> {
        let pos = self.triggers.iter().position(|t| t.id == id)?;
        Some(self.triggers.remove(pos))
    }

    /// `registerfunction` frames (registration order), then `registertrigger` frames with their
    /// original ids.
    pub(crate) fn replay(&self) -> Vec<Message> {
        let mut functions: Vec<&Function> = self.functions.values().collect();
        functions.sort_by_key(|f| f.seq);
        functions
            .into_iter()
            .map(|f| Message::RegisterFunction(f.def.clone()))
            .chain(self.triggers.iter().cloned().map(Message::RegisterTrigger))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::FnHandler;
    use serde_json::{json, Value};
    use trine_protocol::ErrorBody;

    fn def(id: &str) -> RegisterFunction {
        RegisterFunction {
            id: id.into(),
            description: None,
            request_format: None,
            response_format: None,
            metadata: None,
            invocation: None,
        }
    }

    fn trigger(id: &str) -> RegisterTrigger {
        RegisterTrigger {
            id: id.into(),
            trigger_type: "http".into(),
            function_id: "f".into(),
            config: json!({"api_path": "/x"}),
            metadata: None,
        }
    }

    fn handler() -> Arc<dyn Handler> {
        Arc::new(FnHandler(|v: Value| async move { Ok::<_, ErrorBody>(v) }))
    }

    fn ids(frames: &[Message]) -> Vec<String> {
        frames
            .iter()
            .map(|m| match m {
                Message::RegisterFunction(f) => format!("f:{}", f.id),
                Message::RegisterTrigger(t) => format!("t:{}", t.id),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn replays_in_registration_order() {
        let mut r = Registry::default();
        r.insert_function(def("b"), handler());
        r.insert_function(def("a"), handler());
        r.insert_trigger(trigger("t1"));
        r.insert_function(def("b"), handler()); // replacing keeps its place
        r.insert_trigger(trigger("t2"));
        r.insert_trigger(trigger("t1"));
        assert_eq!(ids(&r.replay()), ["f:b", "f:a", "t:t1", "t:t2"]);

        assert!(r.remove_function("a").is_some());
        assert!(r.remove_function("a").is_none());
        assert!(r.remove_trigger("t1").is_some());
        assert_eq!(ids(&r.replay()), ["f:b", "t:t2"]);
        assert!(r.handler("b").is_some());
        assert!(r.handler("a").is_none());
    }
}
