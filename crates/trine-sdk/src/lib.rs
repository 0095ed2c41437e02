//! Native Rust worker client for Trine (and any engine speaking the iii worker protocol).
//!
//! ```no_run
//! # async fn demo() -> Result<(), trine_sdk::Error> {
//! use serde_json::{json, Value};
//! use trine_sdk::{ErrorBody, Worker, WorkerOptions};
//!
//! let worker = Worker::connect(
//!     "ws://127.0.0.1:49134",
//!     WorkerOptions { name: Some("demo".into()), ..Default::default() },
//! )
//! .await?;
//! worker.register_function("demo::echo", |payload: Value| async move { Ok::<_, ErrorBody>(payload) });
//! worker.register_trigger("http", "demo::echo", json!({"api_path": "/echo", "http_method": "POST"}));
//! let echoed = worker.call("engine::echo", json!({"a": 1})).await?;
//! # let _ = echoed;
//! worker.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! Layout:
//! - [`client`]: [`Worker`], the cloneable handle (registration, calls, shutdown), and
//!   [`WorkerOptions`].
//! - `connection`: the background supervisor — connect with backoff, one read task and one
//!   write task per socket, replay of registrations on every reconnect.
//! - `pending`: calls awaiting their `invocationresult`, keyed by `invocation_id`.
//! - `registry`: functions and triggers kept for replay.
//! - `handler`: type erasure of user handlers.
//! - `backoff`, `ids`, [`metadata`]: reconnect delays, invocation ids, the
//!   `engine::workers::register` payload.
//! - [`error`]: the [`Error`] enum.
//!
//! Limits and invariants:
//! - Each connection has one bounded outbound queue ([`WorkerOptions::outbound_capacity`],
//!   default 4096 frames). A call that finds it full fails at once with [`Error::Overloaded`]
//!   instead of waiting; handler replies wait for room on their own task.
//! - A call is failed with [`Error::Disconnected`] if its connection drops before the answer
//!   (never re-sent, never left hanging); calls made while disconnected wait for the reconnect
//!   within their timeout (default 30 s, [`Error::Timeout`]).
//! - Reconnect delays: 1 s, doubling, capped at 30 s; reset after a successful connection.
//! - Wire types come from `trine-protocol`; nothing here redefines a frame.

pub mod client;
pub mod error;
pub mod metadata;

mod backoff;
mod connection;
mod handler;
mod ids;
mod pending;
mod registry;

pub use client::{Worker, WorkerOptions};
pub use error::Error;
pub use handler::INVOCATION_FAILED;
pub use trine_protocol::{ErrorBody, RegisterFunction, RegisterTrigger};
