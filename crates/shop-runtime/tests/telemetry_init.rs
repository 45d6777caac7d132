//! The global subscriber, in a test binary of its own: it can be installed once per process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use shop_runtime::telemetry::{self, LogFormat};

#[test]
fn telemetry_installs_once_and_then_refuses() {
    // RUST_LOG is whatever the developer set; only an invalid one would fail here.
    telemetry::init(LogFormat::Json).unwrap();
    tracing::info!(order_id = 1001, "logged as JSON to stderr");

    let error = telemetry::init(LogFormat::Text).unwrap_err();
    assert!(error.to_string().contains("already installed"), "{error}");
}
