//! Kafka plumbing shared by order-, payment- and notification-service and `shopctl`.
//!
//! The services' business logic lives in `shop-domain`; this crate is the adapter between
//! it and Kafka. It owns nothing long-lived of its own: every task it starts takes the
//! caller's shutdown token.
//!
//! # Layout
//!
//! - [`args`]: the Kafka settings every binary shares (`--bootstrap-servers`, the control
//!   and heartbeat topics, `--pipeline`), each a flag with an environment fallback.
//! - [`topics`]: creates the topics a service needs, with the cleanup policy DESIGN.md
//!   gives them, when they do not exist yet.
//! - [`headers`]: the wire headers (content type, schema version, `traceparent`) and the
//!   dead-letter headers that carry the error.
//! - [`compacted`]: reads a compacted topic from the beginning to its end, the way the
//!   control and heartbeat topics are read.
//! - [`control`]: follows the control topic and hands the latest valid record of one
//!   pipeline to the service through a `watch` channel.
//! - [`heartbeat`]: publishes what a replica has applied and counted, periodically and
//!   at once when it changes.
//! - [`ids`]: claims blocks of order ids, unique across replicas and restarts, using the
//!   offsets of a Kafka partition as the only coordination.

pub mod args;
pub mod compacted;
pub mod context;
pub mod control;
pub mod dead_letter;
pub mod error;
pub mod headers;
pub mod heartbeat;
pub mod ids;
pub mod topics;

pub use args::KafkaArgs;
pub use error::{Error, Result};
