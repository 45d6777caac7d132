//! shop-controller: turns each `ShopPipeline` resource into a running pipeline.
//!
//! # Layout
//!
//! - [`crd`]: the `ShopPipeline` API (`shopstream.dev/v1alpha1`) as Rust types. The CRD
//!   YAML in `deploy/crds/` and the chart's `crds/` is generated from them
//!   (`shop-controller crd`), and a test fails when the checked-in files drift.
//! - [`run`]: the controller's settings and main loop: leader election, then the watch
//!   (reconcile on spec changes and owned Deployments, not on its own status writes), the
//!   sampler and the topic sweep.
//! - [`leader`]: leader election with a `coordination.k8s.io` Lease.
//! - [`reconcile`]: one pass over one pipeline (read, build, apply, observe, status), and
//!   the shared [`reconcile::Context`] with its long-lived Kafka clients.
//! - [`build`]: the desired Deployments, topic names and control record (pure).
//! - [`observe`]: reads of Kafka (watermarks, group lags, the followed heartbeats).
//! - [`measure`]: rates over a fixed window from samples taken every few seconds.
//! - [`status`]: the status and conditions from what reconcile observed (pure).
//! - [`sweep`]: deletes the topics of pipelines that are gone.
//! - [`live`]: the live view, a page at `/` fed over Server-Sent Events at `/events`.

pub mod build;
pub mod crd;
pub mod leader;
pub mod live;
pub mod measure;
pub mod observe;
pub mod reconcile;
pub mod run;
pub mod status;
pub mod sweep;
