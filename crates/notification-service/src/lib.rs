//! notification-service: the end of the pipeline, where payments become the lines people
//! watch with `kubectl logs`.
//!
//! It consumes the payments topic (read-committed, so aborted payment transactions are
//! never shown) and writes one line per payment to the writer it is given, stdout in
//! the binary: `✅ Payment Successful for Order 1001 · user 37 · $199.99 · 12 ms`, exactly
//! the seed's line for a seed-era payment, or a JSON object per line with `--log-format
//! json`. Delivery is at least once: an offset is stored only after its line is written
//! and flushed (or its dead letter acknowledged) and committed by the client in the
//! background and synchronously on shutdown; repeats within a bounded window of order ids
//! are dropped so a replay after a rebalance does not print twice. Logs go to stderr.
//!
//! # Layout
//!
//! - [`config`]: [`Config`], the service's flags, and [`Settings`], everything [`run`]
//!   needs.
//! - [`render`]: the printed line (text or JSON) and the latency it shows; pure.
//! - [`service`]: [`run`], the consume → print → store-offset loop, dead letters,
//!   heartbeats and shutdown.
//! - [`error`]: the crate's [`Error`].

#![forbid(unsafe_code)]

mod client;
pub mod config;
pub mod error;
mod metrics;
pub mod render;
pub mod service;

pub use config::{Config, Settings};
pub use error::{Error, Result};
pub use service::run;

/// The service name in heartbeat keys and client ids.
pub const SERVICE: &str = "notification-service";
