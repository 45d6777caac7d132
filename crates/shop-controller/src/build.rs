//! Build: the desired state of one pipeline, computed from its spec and the controller's
//! settings. Pure: no I/O, so every decision here is unit-tested on YAML fixtures.
//!
//! What goes into a Pod template is chosen with care: rate, failure ratio, pause and seed
//! are *not* there (they travel in the control record), so tuning a pipeline never
//! restarts a Pod. Only image, replicas, Kafka address and topic names change templates.

use shop_kafka::topics::TopicSpec;
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use shop_domain::ControlRecord;

use crate::crd::ShopPipeline;

/// Label carrying the pipeline name on every child object.
pub const PIPELINE_LABEL: &str = "shopstream.dev/pipeline";

/// The non-root user and group the services run as: the `nonroot` user of the images.
pub const RUN_AS_USER: i64 = 65532;

/// Settings of the controller that shape every pipeline's children.
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    /// Kafka address as seen from the pipeline's Pods.
    pub bootstrap_servers: String,
    /// Image repository prefix: images are `<repository>/<service>:<tag>`.
    pub image_repository: String,
    pub image_tag: String,
    pub control_topic: String,
    pub heartbeat_topic: String,
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
}

/// One of the three services of a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Orders,
    Payments,
    Notifications,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Orders, Service::Payments, Service::Notifications];

    /// Binary, image and heartbeat name of the service.
    pub fn binary(self) -> &'static str {
        match self {
            Service::Orders => "order-service",
            Service::Payments => "payment-service",
            Service::Notifications => "notification-service",
        }
    }

    fn http_port(self) -> i32 {
        match self {
            Service::Orders => 8081,
            Service::Payments => 8082,
            Service::Notifications => 8083,
        }
    }
}

/// Names of a pipeline's Kafka topics and consumer groups: `<namespace>.<name>.<what>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNames {
    pub orders: String,
    pub payments: String,
    pub dlq: String,
    pub payment_group: String,
    pub notification_group: String,
}

impl TopicNames {
    pub fn of(namespace: &str, name: &str) -> Self {
        let prefix = format!("{namespace}.{name}");
        Self {
            orders: format!("{prefix}.orders"),
            payments: format!("{prefix}.payments"),
            dlq: format!("{prefix}.dlq"),
            payment_group: format!("{prefix}.payment-service"),
            notification_group: format!("{prefix}.notification-service"),
        }
    }
}

/// Everything one reconcile wants to exist for a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The control-record key of the pipeline, `<namespace>/<name>`.
    pub pipeline_key: String,
    pub topics: TopicNames,
    pub partitions: i32,
    /// The orders, payments and dead-letter topics, as they are created (and grown).
    pub topic_specs: Vec<TopicSpec>,
    pub deployments: Vec<Deployment>,
    /// The control record, numbered (its generation) when it is published.
    pub control: ControlRecord,
}

/// How long the pipeline's event topics keep records.
pub const RETENTION_MS: u64 = 24 * 3600 * 1000;

/// Errors of the build step: the resource lacks what every stored object has.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("ShopPipeline has no {0}; it was not read from the API server")]
    MissingMetadata(&'static str),
}

/// The desired children of `pipeline`.
pub fn desired(pipeline: &ShopPipeline, defaults: &Defaults) -> Result<Desired, BuildError> {
    let name = pipeline
        .metadata
        .name
        .as_deref()
        .ok_or(BuildError::MissingMetadata("name"))?;
    let namespace = pipeline
        .metadata
        .namespace
        .as_deref()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    let owner = pipeline
        .controller_owner_ref(&())
        .ok_or(BuildError::MissingMetadata("uid"))?;
    let topics = TopicNames::of(namespace, name);
    let pipeline_key = format!("{namespace}/{name}");
    let replicas = pipeline.spec.replicas();
    let deployments = Service::ALL
        .iter()
        .map(|&service| {
            let count = match service {
                Service::Orders => replicas.orders,
                Service::Payments => replicas.payments,
                Service::Notifications => replicas.notifications,
            };
            deployment(
                pipeline,
                service,
                count,
                &owner,
                &pipeline_key,
                &topics,
                defaults,
            )
        })
        .collect();
    let partitions = pipeline.spec.partitions();
    let retention = RETENTION_MS.to_string();
    let topic_specs = vec![
        TopicSpec::events(&topics.orders, partitions).with("retention.ms", retention.clone()),
        TopicSpec::events(&topics.payments, partitions).with("retention.ms", retention.clone()),
        TopicSpec::events(&topics.dlq, 1).with("retention.ms", retention),
    ];
    Ok(Desired {
        pipeline_key,
        topics,
        partitions,
        topic_specs,
        deployments,
        control: control_record(pipeline, 0),
    })
}

/// Field of a control record that carries the pipeline's total order rate.
pub const PIPELINE_RATE_FIELD: &str = "pipeline_orders_per_second";

/// The control record for `pipeline`'s tuning. Every order-service replica applies the
/// record's rate, so the pipeline's rate is split across the replicas; the total is kept
/// in the record too, for whoever reads it.
pub fn control_record(pipeline: &ShopPipeline, generation: u64) -> ControlRecord {
    let spec = &pipeline.spec;
    let replicas = spec.replicas().orders.max(1);
    let mut extra = serde_json::Map::new();
    extra.insert(PIPELINE_RATE_FIELD.into(), spec.orders_per_second.into());
    extra.insert("order_replicas".into(), replicas.into());
    ControlRecord {
        generation,
        orders_per_second: spec.orders_per_second / f64::from(replicas),
        payment_failure_ratio: spec.payment_failure_ratio,
        paused: spec.paused,
        seed: spec.seed.unwrap_or_default(),
        extra,
    }
}

/// Whether two control records carry the same tuning (generations aside).
pub fn same_tuning(a: &ControlRecord, b: &ControlRecord) -> bool {
    a.orders_per_second == b.orders_per_second
        && a.payment_failure_ratio == b.payment_failure_ratio
        && a.paused == b.paused
        && a.seed == b.seed
}

/// The pipeline's total order rate as published in `record`.
pub fn pipeline_rate(record: &ControlRecord) -> f64 {
    record
        .extra
        .get(PIPELINE_RATE_FIELD)
        .and_then(|v| v.as_f64())
        .unwrap_or(record.orders_per_second)
}

/// Name of a service's Deployment: `<pipeline>-<service>`.
pub fn deployment_name(pipeline: &str, service: Service) -> String {
    format!("{pipeline}-{}", service.binary())
}

fn labels(pipeline: &str, service: Service) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", service.binary()),
        ("app.kubernetes.io/instance", pipeline),
        ("app.kubernetes.io/component", service.binary()),
        ("app.kubernetes.io/part-of", "shopstream"),
        ("app.kubernetes.io/managed-by", "shop-controller"),
        (PIPELINE_LABEL, pipeline),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    }
}

fn deployment(
    pipeline: &ShopPipeline,
    service: Service,
    replicas: i32,
    owner: &OwnerReference,
    pipeline_key: &str,
    topics: &TopicNames,
    defaults: &Defaults,
) -> Deployment {
    let name = pipeline.name_any();
    let labels = labels(&name, service);
    let selector: BTreeMap<String, String> = labels
        .iter()
        .filter(|(k, _)| {
            k.as_str() == "app.kubernetes.io/instance"
                || k.as_str() == "app.kubernetes.io/component"
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut vars = vec![
        env("KAFKA_BOOTSTRAP_SERVERS", &defaults.bootstrap_servers),
        env("PIPELINE", pipeline_key),
        env("CONTROL_TOPIC", &defaults.control_topic),
        env("HEARTBEAT_TOPIC", &defaults.heartbeat_topic),
        env("DLQ_TOPIC", &topics.dlq),
        // The controller creates the topics first; should a service find one missing, it
        // creates it with the pipeline's partitions, not its own default.
        env("TOPIC_PARTITIONS", &pipeline.spec.partitions().to_string()),
        env("LOG_FORMAT", "text"),
        env("HTTP_PORT", &service.http_port().to_string()),
        EnvVar {
            name: "INSTANCE_ID".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
    ];
    match service {
        Service::Orders => vars.push(env("ORDERS_TOPIC", &topics.orders)),
        Service::Payments => {
            vars.push(env("ORDERS_TOPIC", &topics.orders));
            vars.push(env("PAYMENTS_TOPIC", &topics.payments));
            vars.push(env("PAYMENT_GROUP_ID", &topics.payment_group));
        }
        Service::Notifications => {
            vars.push(env("PAYMENTS_TOPIC", &topics.payments));
            vars.push(env("NOTIFICATION_GROUP_ID", &topics.notification_group));
        }
    }
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        ..Probe::default()
    };
    let quantity = |q: &str| Quantity(q.to_owned());
    let container = Container {
        name: service.binary().into(),
        image: Some(format!(
            "{}/{}:{}",
            defaults.image_repository,
            service.binary(),
            defaults.image_tag
        )),
        env: Some(vars),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: service.http_port(),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(probe("/healthz")),
        readiness_probe: Some(probe("/readyz")),
        resources: Some(ResourceRequirements {
            requests: Some(
                [
                    ("cpu".to_owned(), quantity(&defaults.cpu_request)),
                    ("memory".to_owned(), quantity(&defaults.memory_request)),
                ]
                .into(),
            ),
            limits: Some([("memory".to_owned(), quantity(&defaults.memory_limit))].into()),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    // The `restricted` Pod Security Standard: non-root with a numeric user, the runtime's
    // default seccomp profile, no API credentials (the services never call the API
    // server) and no service-link variables (a Service named `kafka` would inject
    // KAFKA_* variables into every container of the namespace).
    let pod_security = PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    };
    Deployment {
        metadata: ObjectMeta {
            name: Some(deployment_name(&name, service)),
            namespace: pipeline.namespace(),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    security_context: Some(pod_security),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(30),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> ShopPipeline {
        // At run time: a compile-time path can name another clone (see
        // `shop_testkit::bed::repo_dir`).
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
        let path = format!("{dir}/tests/fixtures/{name}");
        serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn defaults() -> Defaults {
        Defaults {
            bootstrap_servers: "kafka.shopstream:9092".into(),
            image_repository: "shopstream".into(),
            image_tag: "0.1.0".into(),
            control_topic: "shopstream.control".into(),
            heartbeat_topic: "shopstream.heartbeats".into(),
            cpu_request: "50m".into(),
            memory_request: "64Mi".into(),
            memory_limit: "256Mi".into(),
        }
    }

    fn env_of(deployment: &Deployment) -> BTreeMap<String, String> {
        let pod = deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        pod.containers[0]
            .env
            .iter()
            .flatten()
            .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
            .collect()
    }

    #[test]
    fn a_pipeline_gets_three_owned_deployments_named_after_it() {
        let desired = desired(&fixture("demo.yaml"), &defaults()).unwrap();
        let names: Vec<_> = desired
            .deployments
            .iter()
            .map(|d| d.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "demo-order-service",
                "demo-payment-service",
                "demo-notification-service"
            ]
        );
        for deployment in &desired.deployments {
            let owner = &deployment.metadata.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str()),
                ("ShopPipeline", "demo")
            );
            assert_eq!(owner.controller, Some(true));
            assert_eq!(deployment.metadata.namespace.as_deref(), Some("shop"));
        }
        let replicas: Vec<_> = desired
            .deployments
            .iter()
            .map(|d| d.spec.as_ref().unwrap().replicas)
            .collect();
        assert_eq!(replicas, [Some(1), Some(2), Some(1)]);
    }

    #[test]
    fn services_are_wired_to_the_pipelines_topics_and_control_key() {
        let desired = desired(&fixture("demo.yaml"), &defaults()).unwrap();
        assert_eq!(desired.pipeline_key, "shop/demo");
        assert_eq!(desired.partitions, 6);
        let payments = env_of(&desired.deployments[1]);
        assert_eq!(payments["PIPELINE"], "shop/demo");
        assert_eq!(payments["ORDERS_TOPIC"], "shop.demo.orders");
        assert_eq!(payments["PAYMENTS_TOPIC"], "shop.demo.payments");
        assert_eq!(payments["DLQ_TOPIC"], "shop.demo.dlq");
        assert_eq!(payments["PAYMENT_GROUP_ID"], "shop.demo.payment-service");
        assert_eq!(payments["KAFKA_BOOTSTRAP_SERVERS"], "kafka.shopstream:9092");
        let image = desired.deployments[1]
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .image
            .clone();
        assert_eq!(image.as_deref(), Some("shopstream/payment-service:0.1.0"));
    }

    #[test]
    fn tuning_rate_or_ratio_leaves_pod_templates_unchanged() {
        let before = fixture("demo.yaml");
        let mut after = before.clone();
        after.spec.orders_per_second = 500.0;
        after.spec.payment_failure_ratio = 0.9;
        after.spec.paused = true;
        after.spec.seed = Some(7);
        let (before, after) = (
            desired(&before, &defaults()).unwrap(),
            desired(&after, &defaults()).unwrap(),
        );
        assert_eq!(before.deployments, after.deployments);
    }

    #[test]
    fn the_rate_is_split_across_order_replicas() {
        let mut pipeline = fixture("demo.yaml");
        pipeline.spec.replicas = Some(crate::crd::Replicas {
            orders: 4,
            payments: 1,
            notifications: 1,
        });
        let record = control_record(&pipeline, 3);
        assert_eq!((record.generation, record.orders_per_second), (3, 5.0));
        assert_eq!(pipeline_rate(&record), 20.0);
        assert_eq!(record.seed, 42);
        pipeline.spec.replicas = Some(crate::crd::Replicas {
            orders: 0,
            payments: 1,
            notifications: 1,
        });
        assert_eq!(control_record(&pipeline, 3).orders_per_second, 20.0);
    }

    #[test]
    fn omitted_replicas_and_partitions_take_defaults() {
        let desired = desired(&fixture("minimal.yaml"), &defaults()).unwrap();
        assert_eq!(desired.partitions, crate::crd::DEFAULT_PARTITIONS);
        assert!(
            desired
                .deployments
                .iter()
                .all(|d| d.spec.as_ref().unwrap().replicas == Some(1))
        );
    }

    #[test]
    fn pods_meet_the_restricted_pod_security_standard_and_name_their_port() {
        let desired = desired(&fixture("demo.yaml"), &defaults()).unwrap();
        for (deployment, port) in desired.deployments.iter().zip(["8081", "8082", "8083"]) {
            let pod = deployment
                .spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap();
            let security = pod.security_context.as_ref().unwrap();
            assert_eq!(security.run_as_non_root, Some(true));
            assert_eq!(security.run_as_user, Some(RUN_AS_USER));
            assert_eq!(
                security.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
                Some("RuntimeDefault")
            );
            assert_eq!(pod.automount_service_account_token, Some(false));
            let container = &pod.containers[0];
            let security = container.security_context.as_ref().unwrap();
            assert_eq!(security.allow_privilege_escalation, Some(false));
            assert_eq!(security.read_only_root_filesystem, Some(true));
            assert_eq!(
                security.capabilities.as_ref().and_then(|c| c.drop.clone()),
                Some(vec!["ALL".to_owned()])
            );
            assert_eq!(env_of(deployment)["HTTP_PORT"], port);
            let declared = container.ports.as_ref().unwrap()[0].container_port;
            assert_eq!(declared.to_string(), port);
        }
    }

    #[test]
    fn a_pipeline_not_read_from_the_server_is_refused() {
        let mut pipeline = fixture("minimal.yaml");
        pipeline.metadata.uid = None;
        assert_eq!(
            desired(&pipeline, &defaults()),
            Err(BuildError::MissingMetadata("uid"))
        );
    }
}
