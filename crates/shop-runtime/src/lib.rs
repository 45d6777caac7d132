//! Process plumbing shared by every shopstream binary.
//!
//! Each service and the controller start the same way: parse flags (with environment
//! fallbacks), send logs to stderr, turn SIGTERM/SIGINT into a [`CancellationToken`], and
//! answer `/healthz`, `/readyz` and `/metrics` on their own HTTP port. This crate is that
//! start-up, so a `main.rs` stays a few lines of wiring and every binary behaves alike in a
//! Pod. It knows nothing about Kafka or Kubernetes: services report readiness through
//! [`Health`] and register their metrics in [`Metrics`].
//!
//! # Layout
//!
//! - [`config`]: [`CommonArgs`], the flags every binary flattens into its own clap struct
//!   (`--log-format`, `--http-port`, `--instance`).
//! - [`telemetry`]: the tracing subscriber (stderr, `RUST_LOG`, text or JSON).
//! - [`shutdown`]: [`signal_token`], the binary-facing SIGTERM/SIGINT handler.
//! - [`metrics`]: [`Metrics`], a shared `shopstream_`-prefixed registry, and the
//!   Drop-based [`Timer`].
//! - [`http`]: [`Health`] and [`serve`], a small HTTP/1.1 responder for probes and scrapes.
//! - [`retry`]: [`retry::start_up`], the one way a service waits for what it needs at
//!   start (the broker), not ready meanwhile, and [`retry::POLICY`], the one retry policy.
//! - [`service`]: [`ServiceContext`], what a service's `run` is handed, and [`run`], the
//!   whole `main` of a service around it.
//! - [`error`]: the crate's [`Error`] and [`Result`].
//!
//! A service's `main` is a call of [`run`]; another binary (the controller) wires them like
//! this:
//!
//! ```no_run
//! use shop_runtime::{CommonArgs, Health, Metrics};
//!
//! #[derive(clap::Parser)]
//! struct Args {
//!     #[command(flatten)]
//!     common: CommonArgs,
//! }
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     let args = <Args as clap::Parser>::parse();
//!     shop_runtime::telemetry::init(args.common.log_format)?;
//!     let shutdown = shop_runtime::signal_token();
//!     let listener =
//!         shop_runtime::http::bind(args.common.http_port_or(8081), CommonArgs::HTTP_PORT_HINT)
//!             .await?;
//!     let (health, metrics) = (Health::new(), Metrics::new());
//!     let server = tokio::spawn(shop_runtime::serve(listener, health, metrics, shutdown.clone()));
//!     // ... the service's own `run(config, shutdown)` goes here ...
//!     server.await??;
//!     Ok(())
//! }
//! ```

pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod retry;
pub mod service;
pub mod shutdown;
pub mod telemetry;

pub use config::CommonArgs;
pub use error::{Error, Result};
pub use http::{Health, serve};
pub use metrics::{Metrics, Timer};
pub use service::{RunError, ServiceContext, run};
pub use shutdown::{CancellationToken, signal_token};
pub use telemetry::LogFormat;
