//! shopctl: the control loop of a shopstream pipeline without Kubernetes.
//!
//! `shopctl set` publishes a pipeline's control record (rate, failure ratio, pause, seed)
//! the way the controller does, on the same compacted topic, so services run by hand or in
//! tests are tuned live; `shopctl status` shows the desired record next to what every
//! replica reports in its heartbeat; `shopctl verify` (the `helm test` of a pipeline)
//! samples the payments made from now on and checks their failure ratio against the
//! expected one; `shopctl audit` reads a drained pipeline's orders and payments topics to
//! their ends and checks that every order got exactly one payment. The decisions
//! (merging a change into the current record, building the status from the two topics,
//! the binomial test, matching payments to orders, printing) are pure functions, tested
//! without a broker; only [`set`], [`status()`], [`verify`] and [`audit()`] talk to Kafka.
//!
//! # Layout
//!
//! - [`cli`]: the command line ([`Cli`]): global Kafka flags and the `set`, `status`,
//!   `verify` and `audit` subcommands.
//! - [`change`]: [`Change`], a partial update, and how it becomes the next record.
//! - [`mod@status`]: [`Status`] and [`Replica`], built from the control and heartbeat tables.
//! - [`verdict`]: [`Report`], whether a sample of payments matches the expected failure
//!   ratio (exact binomial interval).
//! - [`mod@audit`]: whether every order got exactly one payment, from the order ids read
//!   off both topics, and where reading them to their ends stands.
//! - [`mod@format`]: what `shopctl` prints: a line per write, a table or JSON for status, a
//!   line per verification, a line (and examples) per audit.
//! - [`ops`]: [`set`], [`status()`], [`verify`] and [`audit()`], the Kafka side.
//! - [`error`]: the crate's [`Error`].

#![forbid(unsafe_code)]

pub mod audit;
pub mod change;
pub mod cli;
pub mod error;
pub mod format;
pub mod ops;
pub mod status;
pub mod verdict;

pub use change::Change;
pub use cli::Cli;
pub use error::{Error, Result};
pub use ops::{audit, set, status, verify};
pub use status::{Replica, Status};
pub use verdict::Report;
