//! The registry: functions, triggers, trigger types and worker connections.
//!
//! Plain data behind one std mutex owned by [`crate::Engine`]. Methods never await and never send:
//! they return the frames to send as [`Effects`], which the engine delivers after the lock is
//! released. Built-in trigger providers are called under the lock (lock order: registry → provider
//! internals; providers never call back into the registry).
//!
//! Ownership rules (protocol.md §8.2, made stricter on purpose):
//! - A function id is owned by one connection. Another live connection registering the same id does
//!   not steal it: it becomes a standby and takes over when the owner goes away.
//! - A trigger is owned by the connection that registered it last (a reconnect replay re-registers
//!   the same id and so moves it); cleanup of a connection removes only what it still owns.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{json, Value};
use trine_protocol::{
    codes, ErrorBody, Message, RegisterTrigger, TriggerRegistrationResult, UnregisterTrigger,
};

use crate::builtins::BuiltinFn;
use crate::worker::{ConnId, WorkerConn};

/// Descriptive fields of a function, as registered.
#[derive(Debug, Clone, Default)]
pub struct FunctionInfo {
    pub description: Option<String>,
    pub request_format: Option<Value>,
    pub response_format: Option<Value>,
    pub metadata: Option<Value>,
}

/// Who runs a function.
#[derive(Clone)]
pub enum Handler {
    /// A function of the engine. `inline`: it answers from memory without waiting on anything,
    /// so a worker's call to it is answered in the connection's read loop (no task hop).
    Builtin {
        f: BuiltinFn,
        inline: bool,
    },
    Worker(Arc<WorkerConn>),
}

pub struct FunctionEntry {
    pub info: FunctionInfo,
    pub handler: Handler,
    /// Other live connections that registered the same id, oldest first.
    pub standbys: Vec<(Arc<WorkerConn>, FunctionInfo)>,
}

/// A built-in trigger type's implementation (e.g. `http`).
pub trait TriggerProvider: Send + Sync {
    /// Activates a trigger; an error is reported to the registering worker.
    fn register(&self, trigger: &TriggerEntry) -> Result<(), String>;
    /// Deactivates a trigger previously accepted by `register`.
    fn unregister(&self, trigger: &TriggerEntry);
    /// Deactivates a trigger because its owner disconnected (it may come back and register it
    /// again). Defaults to [`TriggerProvider::unregister`].
    fn owner_gone(&self, trigger: &TriggerEntry) {
        self.unregister(trigger)
    }
}

#[derive(Clone)]
pub enum Provider {
    Builtin(Arc<dyn TriggerProvider>),
    Worker(Arc<WorkerConn>),
}

pub struct TriggerTypeEntry {
    pub description: String,
    pub trigger_request_format: Option<Value>,
    pub call_request_format: Option<Value>,
    pub provider: Provider,
}

#[derive(Debug, Clone)]
pub struct TriggerEntry {
    pub id: String,
    pub trigger_type: String,
    pub function_id: String,
    pub config: Value,
    pub metadata: Option<Value>,
    /// `None`: durable (registered through `engine::register_trigger`), survives disconnects.
    pub owner: Option<ConnId>,
    /// False while no provider for its type is registered (parked).
    pub active: bool,
}

impl TriggerEntry {
    /// The registration frame that creates this trigger (sent to a worker that provides its
    /// type, or passed on to another engine).
    pub fn registration(&self) -> RegisterTrigger {
        RegisterTrigger {
            id: self.id.clone(),
            trigger_type: self.trigger_type.clone(),
            function_id: self.function_id.clone(),
            config: self.config.clone(),
            metadata: self.metadata.clone(),
        }
    }

    /// An active trigger without owner, for the providers' unit tests.
    #[cfg(test)]
    pub(crate) fn for_test(id: &str, trigger_type: &str, function_id: &str, config: Value) -> Self {
        TriggerEntry {
            id: id.into(),
            trigger_type: trigger_type.into(),
            function_id: function_id.into(),
            config,
            metadata: None,
            owner: None,
            active: true,
        }
    }

    pub fn describe(&self, worker_name: Option<String>) -> Value {
        let mut v = json!({
            "id": self.id,
            "trigger_type": self.trigger_type,
            "function_id": self.function_id,
            "config": self.config,
            "worker_name": worker_name,
            "status": if self.active { "active" } else { "pending" },
        });
        if let Some(m) = &self.metadata {
            v["metadata"] = m.clone();
        }
        v
    }
}

/// Frames to deliver once the registry lock is released.
#[derive(Default)]
pub struct Effects {
    pub sends: Vec<(Arc<WorkerConn>, Message)>,
    /// The function set changed (fires `engine::functions-available`).
    pub functions_changed: bool,
}

impl Effects {
    fn send(&mut self, to: &Arc<WorkerConn>, msg: Message) {
        self.sends.push((to.clone(), msg));
    }
}

#[derive(Default)]
pub struct Registry {
    pub functions: HashMap<String, FunctionEntry>,
    pub triggers: BTreeMap<String, TriggerEntry>,
    pub trigger_types: BTreeMap<String, TriggerTypeEntry>,
    pub workers: HashMap<ConnId, Arc<WorkerConn>>,
}

/// Outcome of a function registration.
#[derive(Debug)]
pub enum RegisterOutcome {
    Owner,
    /// Another live worker owns the id; this registration waits as a standby.
    Standby {
        owner: Arc<WorkerConn>,
    },
    /// The id belongs to a built-in function.
    Refused,
}

impl Registry {
    /// Registers a built-in function that may wait (on storage, other calls): it runs on a task
    /// of its own like a worker call.
    pub fn add_builtin(&mut self, id: &str, description: &str, f: BuiltinFn) {
        self.insert_builtin(id, description, f, false);
    }

    /// Registers a built-in function that answers from memory without waiting.
    pub fn add_builtin_inline(&mut self, id: &str, description: &str, f: BuiltinFn) {
        self.insert_builtin(id, description, f, true);
    }

    fn insert_builtin(&mut self, id: &str, description: &str, f: BuiltinFn, inline: bool) {
        self.functions.insert(
            id.to_owned(),
            FunctionEntry {
                info: FunctionInfo {
                    description: Some(description.to_owned()),
                    ..Default::default()
                },
                handler: Handler::Builtin { f, inline },
                standbys: Vec::new(),
            },
        );
    }

    pub fn add_builtin_trigger_type(
        &mut self,
        id: &str,
        description: &str,
        provider: Arc<dyn TriggerProvider>,
    ) {
        self.trigger_types.insert(
            id.to_owned(),
            TriggerTypeEntry {
                description: description.to_owned(),
                trigger_request_format: None,
                call_request_format: None,
                provider: Provider::Builtin(provider),
            },
        );
    }

    pub fn register_function(
        &mut self,
        conn: &Arc<WorkerConn>,
        id: &str,
        info: FunctionInfo,
        fx: &mut Effects,
    ) -> RegisterOutcome {
        match self.functions.get_mut(id) {
            None => {
                self.functions.insert(
                    id.to_owned(),
                    FunctionEntry {
                        info,
                        handler: Handler::Worker(conn.clone()),
                        standbys: Vec::new(),
                    },
                );
                fx.functions_changed = true;
                RegisterOutcome::Owner
            }
            Some(entry) => match &entry.handler {
                Handler::Builtin { .. } => RegisterOutcome::Refused,
                Handler::Worker(owner) if owner.id == conn.id => {
                    entry.info = info;
                    fx.functions_changed = true;
                    RegisterOutcome::Owner
                }
                Handler::Worker(owner) if owner.is_closed() => {
                    entry.handler = Handler::Worker(conn.clone());
                    entry.info = info;
                    entry.standbys.retain(|(c, _)| c.id != conn.id);
                    fx.functions_changed = true;
                    RegisterOutcome::Owner
                }
                Handler::Worker(owner) => {
                    let owner = owner.clone();
                    entry.standbys.retain(|(c, _)| c.id != conn.id);
                    entry.standbys.push((conn.clone(), info));
                    RegisterOutcome::Standby { owner }
                }
            },
        }
    }

    /// Removes `conn`'s claim on `id`; the newest live standby takes over if `conn` owned it.
    pub fn unregister_function(&mut self, conn: &ConnId, id: &str, fx: &mut Effects) {
        let Some(entry) = self.functions.get_mut(id) else {
            return;
        };
        entry
            .standbys
            .retain(|(c, _)| &c.id != conn && !c.is_closed());
        let owned = matches!(&entry.handler, Handler::Worker(w) if &w.id == conn);
        if !owned {
            return;
        }
        fx.functions_changed = true;
        match entry.standbys.pop() {
            Some((next, info)) => {
                tracing::info!(function_id = id, worker = %next.name(), "standby registration takes over the function");
                entry.handler = Handler::Worker(next);
                entry.info = info;
            }
            None => {
                self.functions.remove(id);
            }
        }
    }

    pub fn register_trigger(
        &mut self,
        owner: Option<&Arc<WorkerConn>>,
        msg: RegisterTrigger,
        fx: &mut Effects,
    ) -> Result<(), ErrorBody> {
        // A replay (same id) replaces the previous entry and moves ownership.
        if self.triggers.contains_key(&msg.id) {
            self.remove_trigger(&msg.id, fx);
        }
        let mut entry = TriggerEntry {
            id: msg.id,
            trigger_type: msg.trigger_type,
            function_id: msg.function_id,
            config: msg.config,
            metadata: msg.metadata,
            owner: owner.map(|c| c.id.clone()),
            active: false,
        };
        match self
            .trigger_types
            .get(&entry.trigger_type)
            .map(|t| t.provider.clone())
        {
            None => {
                tracing::info!(trigger_id = %entry.id, trigger_type = %entry.trigger_type,
                    "no provider for this trigger type yet; the trigger is held until one registers");
            }
            Some(Provider::Builtin(p)) => {
                p.register(&entry)
                    .map_err(|e| ErrorBody::new(codes::TRIGGER_REGISTRATION_FAILED, e))?;
                entry.active = true;
            }
            Some(Provider::Worker(p)) => {
                fx.send(&p, deliver_frame(&entry));
                entry.active = true;
            }
        }
        self.triggers.insert(entry.id.clone(), entry);
        Ok(())
    }

    /// Removes a trigger and tells its provider. Returns whether it existed.
    pub fn remove_trigger(&mut self, id: &str, fx: &mut Effects) -> bool {
        self.remove_trigger_as(id, fx, false)
    }

    /// Removes a trigger; `owner_gone` tells a built-in provider the owner disconnected rather
    /// than unregistered it.
    fn remove_trigger_as(&mut self, id: &str, fx: &mut Effects, owner_gone: bool) -> bool {
        let Some(entry) = self.triggers.remove(id) else {
            return false;
        };
        if entry.active {
            match self
                .trigger_types
                .get(&entry.trigger_type)
                .map(|t| &t.provider)
            {
                Some(Provider::Builtin(p)) if owner_gone => p.owner_gone(&entry),
                Some(Provider::Builtin(p)) => p.unregister(&entry),
                Some(Provider::Worker(p)) => fx.send(
                    p,
                    Message::UnregisterTrigger(UnregisterTrigger {
                        id: entry.id.clone(),
                        trigger_type: Some(entry.trigger_type.clone()),
                    }),
                ),
                None => {}
            }
        }
        true
    }

    pub fn register_trigger_type(
        &mut self,
        conn: &Arc<WorkerConn>,
        id: &str,
        entry: TriggerTypeEntry,
        fx: &mut Effects,
    ) -> Result<(), ErrorBody> {
        if let Some(Provider::Builtin(_)) = self.trigger_types.get(id).map(|t| &t.provider) {
            return Err(ErrorBody::new(
                codes::TRIGGER_REGISTRATION_FAILED,
                format!("trigger type `{id}` is built into the engine and cannot be provided by a worker"),
            ));
        }
        self.trigger_types.insert(id.to_owned(), entry);
        for t in self.triggers.values_mut().filter(|t| t.trigger_type == id) {
            fx.send(conn, deliver_frame(t));
            t.active = true;
        }
        Ok(())
    }

    pub fn unregister_trigger_type(&mut self, conn: &ConnId, id: &str) {
        let provided_by_conn = matches!(
            self.trigger_types.get(id).map(|t| &t.provider),
            Some(Provider::Worker(w)) if &w.id == conn
        );
        if provided_by_conn {
            self.trigger_types.remove(id);
            for t in self.triggers.values_mut().filter(|t| t.trigger_type == id) {
                t.active = false;
            }
        }
    }

    /// A provider rejected a trigger: park it again and tell the binding worker.
    pub fn provider_rejected(
        &mut self,
        conn: &ConnId,
        result: TriggerRegistrationResult,
        fx: &mut Effects,
    ) {
        let Some(error) = result.error.clone() else {
            return;
        };
        let Some(t) = self.triggers.get_mut(&result.id) else {
            return;
        };
        let from_provider = matches!(
            self.trigger_types.get(&t.trigger_type).map(|ty| &ty.provider),
            Some(Provider::Worker(w)) if &w.id == conn
        );
        if !from_provider {
            return;
        }
        t.active = false;
        if let Some(owner) = t.owner.as_ref().and_then(|o| self.workers.get(o)) {
            fx.send(
                owner,
                Message::TriggerRegistrationResult(TriggerRegistrationResult {
                    id: t.id.clone(),
                    trigger_type: t.trigger_type.clone(),
                    function_id: t.function_id.clone(),
                    error: Some(ErrorBody::new(
                        codes::TRIGGER_REGISTRATION_FAILED,
                        if error.message.is_empty() {
                            error.code
                        } else {
                            error.message
                        },
                    )),
                }),
            );
        }
    }

    /// Removes everything `conn` still owns (protocol.md §8.1, ownership-safe).
    pub fn remove_connection(&mut self, conn: &Arc<WorkerConn>, fx: &mut Effects) {
        let id = &conn.id;
        let fn_ids: Vec<String> = self
            .functions
            .iter()
            .filter(|(_, e)| {
                matches!(&e.handler, Handler::Worker(w) if &w.id == id)
                    || e.standbys.iter().any(|(c, _)| &c.id == id)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for f in fn_ids {
            self.unregister_function(id, &f, fx);
        }
        let trig_ids: Vec<String> = self
            .triggers
            .values()
            .filter(|t| t.owner.as_ref() == Some(id))
            .map(|t| t.id.clone())
            .collect();
        for t in trig_ids {
            self.remove_trigger_as(&t, fx, true);
        }
        let types: Vec<String> = self
            .trigger_types
            .iter()
            .filter(|(_, t)| matches!(&t.provider, Provider::Worker(w) if &w.id == id))
            .map(|(k, _)| k.clone())
            .collect();
        for ty in types {
            self.unregister_trigger_type(id, &ty);
        }
        self.workers.remove(id);
    }

    /// Function ids a connection owns.
    pub fn functions_of(&self, conn: &ConnId) -> Vec<String> {
        let mut v: Vec<String> = self
            .functions
            .iter()
            .filter(|(_, e)| matches!(&e.handler, Handler::Worker(w) if &w.id == conn))
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }

    pub fn owner_name(&self, owner: &Option<ConnId>) -> Option<String> {
        owner
            .as_ref()
            .and_then(|o| self.workers.get(o))
            .map(|w| w.name())
    }
}

fn deliver_frame(t: &TriggerEntry) -> Message {
    Message::RegisterTrigger(t.registration())
}
