//! The `ShopPipeline` custom resource.
//!
//! The API server enforces what it can itself: numeric bounds in the schema, CEL rules for
//! what a bound cannot say (partitions never shrink, because Kafka cannot remove a
//! partition), and unknown fields are pruned (structural schema, no preserve-unknown). So
//! an invalid pipeline is refused at `kubectl apply`, not discovered by the controller.

// Printer columns repeat `type_ = "number"` by design; clippy reads that as a duplicate.
#![allow(clippy::duplicated_attributes)]

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::crd::CustomResourceExt;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The longest pipeline name: it becomes the value of the `app.kubernetes.io/instance` and
/// `shopstream.dev/pipeline` labels of its Deployments and Pods, which hold at most 63
/// characters (topic names `<namespace>.<name>.<what>` stay far below Kafka's 249).
/// The CRD's root CEL rule says the same (an attribute takes only a literal); a unit test
/// keeps the two equal.
pub const MAX_NAME_LENGTH: usize = 63;

/// Desired state of a shop pipeline: how fast orders come, how often payments fail, and
/// how the pipeline is sized.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "shopstream.dev",
    version = "v1alpha1",
    kind = "ShopPipeline",
    namespaced,
    status = "ShopPipelineStatus",
    shortname = "sp",
    validation = kube::core::Rule::new("self.metadata.name.size() <= 63").message("a ShopPipeline's name has at most 63 characters: it is a label value of its Deployments and Pods"),
    category = "shopstream",
    doc = "A shop pipeline: order-service, payment-service and notification-service on Kafka, tuned live.",
    printcolumn(
        name = "Rate",
        type_ = "number",
        json_path = ".spec.ordersPerSecond",
        description = "Desired orders per second"
    ),
    printcolumn(
        name = "Failure",
        type_ = "number",
        json_path = ".spec.paymentFailureRatio",
        description = "Desired payment failure ratio"
    ),
    printcolumn(
        name = "Observed",
        type_ = "number",
        json_path = ".status.measured.ordersPerSecond",
        description = "Measured orders per second"
    ),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.measured.paymentLag",
        description = "Orders not yet paid"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
// Partitions never shrink, an omitted value counting as the default (6, DEFAULT_PARTITIONS)
// that the topics were created with.
#[x_kube(validation = kube::core::Rule::new("(has(self.partitions) ? self.partitions : 6) >= (has(oldSelf.partitions) ? oldSelf.partitions : 6)").message("partitions can only grow: Kafka cannot remove partitions from a topic"))]
#[serde(rename_all = "camelCase")]
pub struct ShopPipelineSpec {
    /// Orders generated per second across all order-service replicas (fractional allowed).
    #[schemars(range(min = 0.0, max = 100000.0))]
    pub orders_per_second: f64,

    /// Share of payments that fail, from 0 (none) to 1 (all).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub payment_failure_ratio: f64,

    /// Stop generating orders; payments and notifications keep draining.
    #[serde(default)]
    pub paused: bool,

    /// Seed of the payment decisions; the same seed gives the same outcome per order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub seed: Option<u64>,

    /// Replicas of each service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Replicas>,

    /// Partitions of the orders and payments topics (default 6). Can grow, never shrink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub partitions: Option<i32>,
}

/// Replicas of each service of a pipeline.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Replicas {
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 100))]
    pub orders: i32,
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 100))]
    pub payments: i32,
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 100))]
    pub notifications: i32,
}

fn one() -> i32 {
    1
}

impl Default for Replicas {
    fn default() -> Self {
        Self {
            orders: 1,
            payments: 1,
            notifications: 1,
        }
    }
}

/// Default partitions of a pipeline's topics.
pub const DEFAULT_PARTITIONS: i32 = 6;

impl ShopPipelineSpec {
    pub fn replicas(&self) -> Replicas {
        self.replicas.clone().unwrap_or_default()
    }

    pub fn partitions(&self) -> i32 {
        self.partitions.unwrap_or(DEFAULT_PARTITIONS)
    }
}

/// What the controller has applied and measured.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShopPipelineStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Applied, Paused and Degraded (`metav1.Condition`), one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    #[schemars(transform = condition_status_enum)]
    pub conditions: Vec<Condition>,
    /// The settings the controller published to the pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective: Option<Effective>,
    /// What the pipeline does, measured from Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<Measured>,
}

/// A condition's status is `True`, `False` or `Unknown`, as metav1.Condition documents
/// (its generated schema leaves the enum out).
fn condition_status_enum(schema: &mut schemars::Schema) {
    if let Some(status) = schema
        .pointer_mut("/items/properties/status")
        .and_then(|s| s.as_object_mut())
    {
        status.insert(
            "enum".into(),
            serde_json::json!(["True", "False", "Unknown"]),
        );
    }
}

/// Settings published to the pipeline in its control record.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Effective {
    pub orders_per_second: f64,
    pub payment_failure_ratio: f64,
    pub paused: bool,
}

/// Measured behaviour of the pipeline.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Measured {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orders_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_lag: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_lag: Option<i64>,
}

/// The CRD as YAML, exactly as checked in under `deploy/crds/` and the chart's `crds/`.
pub fn crd_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let body = serde_saphyr::to_string(&ShopPipeline::crd())?;
    Ok(format!(
        "# Generated by `shop-controller crd` from crates/shop-controller/src/crd.rs; do not edit.\n\
         # Regenerate with `make generate`.\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_name_rule_says_max_name_length() {
        let crd = serde_json::to_value(ShopPipeline::crd()).unwrap();
        let rules =
            &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"];
        let rule = rules[0]["rule"].as_str().unwrap();
        assert_eq!(
            rule,
            format!("self.metadata.name.size() <= {MAX_NAME_LENGTH}")
        );
    }

    #[test]
    fn the_partitions_rule_counts_an_omitted_value_as_the_default() {
        let crd = serde_json::to_string(&ShopPipeline::crd()).unwrap();
        let default = format!("has(self.partitions) ? self.partitions : {DEFAULT_PARTITIONS}");
        assert!(
            crd.contains(&default),
            "the rule does not use DEFAULT_PARTITIONS"
        );
    }
}
