//! The domain of shopstream, free of I/O: what travels on Kafka, how it is validated,
//! and the decisions the services make about it.
//!
//! Everything here is a pure function of its inputs (time and random ids are passed in),
//! so it is tested exhaustively in-process, and the services, the Kafka adapters and the
//! controller depend on it, never the reverse. Nothing here knows Kafka clients, tokio
//! or Kubernetes.
//!
//! # Layout
//!
//! - [`events`]: [`Order`] and [`Payment`], their wire format (the seed demo's JSON,
//!   extended) and validation of incoming bytes into [`InvalidMessage`] errors.
//! - [`headers`]: Kafka header names (content type, schema version, dead-letter details)
//!   and the W3C [`TraceParent`].
//! - [`decision`]: [`decide`], the payment outcome as a reproducible function of order
//!   id, failure ratio and seed.
//! - [`rate`]: [`Pacer`], the schedule that paces order generation on an injected clock.
//! - [`control`]: [`ControlRecord`] and [`Heartbeat`], the records of the control loop,
//!   and their topic and key conventions.
//! - [`ids`]: [`IdBlock`], order ids unique across generator replicas and restarts.
//! - [`notification`]: the notification line and [`RecentIds`] de-duplication.
//! - [`time`]: RFC 3339 formatting and parsing.

#![forbid(unsafe_code)]

pub mod control;
pub mod decision;
pub mod events;
pub mod headers;
pub mod ids;
mod json;
mod mix;
pub mod notification;
pub mod rate;
pub mod time;

pub use control::{ControlError, ControlRecord, Heartbeat};
pub use decision::{Decision, FailureReason, decide};
pub use events::{Amount, InvalidMessage, Order, OrderStatus, Payment, PaymentStatus};
pub use headers::TraceParent;
pub use ids::IdBlock;
pub use notification::{RecentIds, format_line};
pub use rate::{Pacer, RateError, validate_rate};
