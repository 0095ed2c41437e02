//! Wire types of the iii worker protocol, as Trine speaks it.
//!
//! Layout:
//! - [`worker`]: the JSON messages exchanged on the worker WebSocket (`/`), both directions.
//! - [`error`]: [`ErrorBody`], the `{code, message, stacktrace?}` object every failure carries,
//!   and the stable error codes Trine itself produces.
//! - [`telemetry`]: the binary `LOGS`/`OTLP`/`MTRC` frames SDKs send on `/otel` (and SDK 0.9.0 on `/`).
//! - [`decode`]: lenient decoding that turns a text frame into a message or a precise error.
//!
//! This crate does no I/O, so the decoder can be fuzzed and unit-tested on its own, and the engine and
//! the Rust SDK share one definition of every frame.
//!
//! Invariants kept here (protocol.md §1.3): unknown fields are ignored, `null` equals absent, a missing
//! `data` is `null`, a missing trigger `config` is `null`, and outgoing frames omit absent optionals.

pub mod decode;
pub mod error;
pub mod telemetry;
pub mod worker;

pub use decode::{decode_worker_frame, DecodeError};
pub use error::{codes, ErrorBody};
pub use telemetry::{split_telemetry, TelemetryKind};
pub use worker::*;
