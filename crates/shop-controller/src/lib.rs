//! shop-controller: turns each `ShopPipeline` resource into a running pipeline.
//!
//! # Layout
//!
//! - [`crd`]: the `ShopPipeline` API (`shopstream.dev/v1alpha1`) as Rust types. The CRD
//!   YAML in `deploy/crds/` and the chart's `crds/` is generated from them
//!   (`shop-controller crd`), and a test fails when the checked-in files drift.

pub mod build;
pub mod crd;
pub mod leader;
pub mod live;
pub mod observe;
pub mod reconcile;
pub mod run;
pub mod status;
pub mod sweep;
