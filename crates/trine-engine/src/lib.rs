//! Trine's core: everything that decides, nothing that listens on a socket.
//!
//! Layout:
//! - [`engine`]: [`Engine`], the handle every edge calls — applies worker frames, routes
//!   invocations (built-in, worker → worker, engine → worker), fires triggers, evaluates conditions.
//! - [`registry`]: functions, triggers, trigger types and connections, with ownership rules.
//! - [`worker`]: one connected worker: bounded outbound queue, in-flight calls, metadata.
//! - [`builtins`]: the `engine::*` functions (discovery, worker metadata, durable triggers, logs).
//! - [`http`]: the `http` trigger type — route table, handler input, response mapping.
//! - [`state`]: the `state::*` functions, the `state` trigger type and its durable delivery.
//! - [`stream`]: stream items, `stream::send`, stream trigger types, the subscription hub.
//! - [`queue`]: durable queues (the `Enqueue` action), durable topics, retries, dead letters.
//! - [`cluster`]: calls across engines sharing one Redis (function directory, peer links).
//! - [`logs`]: the bounded log ring fed by SDK telemetry and `engine::log::*`.
//! - [`channels`]: one-way frame pipes (HTTP request bodies, streamed responses, worker helpers).
//!
//! Invariants: no lock is held across an `.await`; every queue is bounded; a payload reaches
//! its handler exactly as the caller sent it (caller identity travels out of band).

pub mod builtins;
pub mod channels;
pub mod cluster;
pub mod cron;
pub mod engine;
pub mod http;
pub mod logs;
pub mod pubsub;
pub mod queue;
pub mod registry;
pub mod state;
pub mod stream;
pub mod worker;

pub use engine::{BoxFuture, Call, Caller, Engine, EngineConfig, WeakEngine};
pub use worker::{CallOutcome, ConnId, WorkerConn};
