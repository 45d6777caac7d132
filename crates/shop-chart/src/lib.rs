//! Tests of the Helm chart `charts/shopstream`; the crate has no code of its own.
//!
//! - `tests/render.rs`: `helm lint --strict`, `helm template` with default and
//!   non-default values, values the schema refuses, the RBAC rules against
//!   `deploy/controller/rbac.yaml`, and the chart's version against the crates'.
//! - `tests/install.rs`: the rendered manifests on the test bed's API server in a
//!   namespace that enforces the `restricted` Pod Security Standard, and `helm install
//!   --wait` onto the kwok node with the real `shop-controller` binary, started with the
//!   environment of the chart's controller Deployment, creating the pipeline's
//!   Deployments.
//!
//! helm and kubectl are the test bed's (`shop_testkit::TestBed::command`).

use std::path::PathBuf;

/// The chart's directory in the repository the test runs in: from `CARGO_MANIFEST_DIR` at
/// run time, which `cargo test` sets to the running test's package. A compile-time path
/// could name another clone sharing the target directory (cargo reuses unchanged builds).
pub fn chart_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../../charts/shopstream")
}
