//! The chart as helm renders it: lint, the objects and settings of default and
//! non-default values, the values the schema refuses, the RBAC rules against
//! `deploy/controller/rbac.yaml`, and the chart's version against the crates'.
//!
//! helm is the test bed's; only the NOTES test talks to its API server (`helm template`
//! renders offline).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodSpec, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use serde_json::{Value, json};
use support::{
    Manifests, chart, ensure_crd, env_of, printed, rule_set, rules_of, run, template, try_template,
    written_rbac,
};

/// The README's path: release `shopstream` in namespace `shopstream`.
const RELEASE: &str = "shopstream";
const NS: &str = "shopstream";

/// The chart's in-cluster Kafka address for the README's release.
const KAFKA: &str = "shopstream-kafka.shopstream.svc.cluster.local:9092";

/// Non-default values that together touch every optional template branch.
const VARIANTS: &[&[&str]] = &[
    &[],
    &["kafka.enabled=false,kafka.bootstrapServers=my-kafka:9092"],
    &["kafka.persistence.enabled=true,kafka.persistence.storageClass=standard"],
    &["networkPolicy.enabled=true"],
    &["pipeline.create=false"],
    &[
        "controller.replicas=2,controller.watchNamespace=shop,controller.logFormat=json",
        "image.repository=registry.example/shop,image.tag=9.9.9",
        "imagePullSecrets[0].name=regcred,serviceAccount.create=false,serviceAccount.name=ops",
    ],
];

fn controller(manifests: &Manifests) -> Deployment {
    manifests
        .deployments()
        .into_iter()
        .find(|d| d.metadata.name.as_deref() == Some("shopstream-controller"))
        .expect("Deployment shopstream-controller")
}

fn pod_spec(deployment: &Deployment) -> PodSpec {
    deployment.spec.clone().unwrap().template.spec.unwrap()
}

fn env(manifests: &Manifests) -> BTreeMap<String, String> {
    env_of(&pod_spec(&controller(manifests)))
}

/// The crates' version, from the controller's Cargo.toml at compile time.
fn crate_version(manifest: &str) -> String {
    manifest
        .lines()
        .find_map(|line| {
            let value = line
                .strip_prefix("version")?
                .trim_start()
                .strip_prefix('=')?;
            Some(value.trim().trim_matches('"').to_owned())
        })
        .expect("a version line")
}

#[test]
fn lint_strict_passes_with_default_and_non_default_values() {
    let chart = chart();
    for sets in VARIANTS {
        let mut args = vec!["lint", "--strict", chart.as_str()];
        for set in *sets {
            args.extend(["--set", set]);
        }
        let output = run("helm", &args, None);
        assert!(
            output.status.success(),
            "helm lint --strict {sets:?}: {}",
            printed(&output)
        );
    }
}

#[test]
fn default_values_render_kafka_controller_pipeline_and_test() {
    let m = template(RELEASE, NS, &[]);
    assert_eq!(
        m.kinds(),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Pod",
            "Role",
            "RoleBinding",
            "Service",
            "Service",
            "ServiceAccount",
            "ShopPipeline",
            "StatefulSet",
        ]
    );
    for doc in &m.0 {
        let name = doc["metadata"]["name"].as_str().unwrap();
        let labels = &doc["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/instance"], RELEASE, "{name}");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm", "{name}");
        assert_eq!(labels["app.kubernetes.io/part-of"], "shopstream", "{name}");
        assert_eq!(labels["helm.sh/chart"], "shopstream-0.1.0", "{name}");
        let cluster_scoped =
            ["ClusterRole", "ClusterRoleBinding"].contains(&doc["kind"].as_str().unwrap());
        if !cluster_scoped {
            assert_eq!(doc["metadata"]["namespace"], NS, "{name}");
        }
    }

    // Kafka: a single KRaft node behind a headless Service, as measured in kind.
    let kafka: StatefulSet = serde_json::from_value(m.one("StatefulSet").clone()).unwrap();
    assert_eq!(kafka.metadata.name.as_deref(), Some("shopstream-kafka"));
    let spec = kafka.spec.unwrap();
    assert_eq!(spec.service_name.as_deref(), Some("shopstream-kafka"));
    assert_eq!(spec.replicas, Some(1));
    assert!(spec.volume_claim_templates.is_none());
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.enable_service_links, Some(false));
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some("apache/kafka:4.1.2"));
    let kafka_env = env_of(&pod);
    assert_eq!(kafka_env["KAFKA_HEAP_OPTS"], "-Xmx384m -Xms384m");
    assert_eq!(
        kafka_env["KAFKA_CONTROLLER_QUORUM_VOTERS"],
        "1@localhost:9093"
    );
    // The image's launcher writes its configuration into /opt/kafka/config.
    assert!(!kafka_env.contains_key("KAFKA_GENERATED_CONFIG_DIR"));
    assert_eq!(
        kafka_env["KAFKA_ADVERTISED_LISTENERS"],
        "PLAINTEXT://$(POD_NAME).shopstream-kafka.$(POD_NAMESPACE).svc.cluster.local:9092"
    );
    let resources = container.resources.clone().unwrap();
    assert_eq!(resources.requests.unwrap()["memory"].0, "512Mi");
    assert_eq!(resources.limits.unwrap()["memory"].0, "1Gi");
    let mounts: BTreeMap<_, _> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|v| (v.mount_path.as_str(), v.name.as_str()))
        .collect();
    assert_eq!(
        mounts.keys().copied().collect::<Vec<_>>(),
        [
            "/opt/kafka/config",
            "/opt/kafka/logs",
            "/tmp",
            "/var/lib/kafka/data"
        ]
    );
    for volume in pod.volumes.iter().flatten() {
        assert!(volume.empty_dir.is_some(), "{} is an emptyDir", volume.name);
    }
    let services: Vec<Service> = m.typed("Service");
    let headless = services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("shopstream-kafka"))
        .unwrap()
        .spec
        .clone()
        .unwrap();
    assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
    assert_eq!(headless.publish_not_ready_addresses, Some(true));

    // The controller: the README's Service name, the binary's settings by environment.
    let deployment = controller(&m);
    assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(1));
    let pod = pod_spec(&deployment);
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("shopstream-controller")
    );
    let container = &pod.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("shopstream/shop-controller:0.1.0")
    );
    assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));
    let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        let get = probe.clone().unwrap().http_get.unwrap();
        (get.path.unwrap(), serde_json::to_value(get.port).unwrap())
    };
    assert_eq!(
        probe_path(&container.liveness_probe),
        ("/healthz".to_owned(), json!("http"))
    );
    assert_eq!(
        probe_path(&container.readiness_probe),
        ("/readyz".to_owned(), json!("http"))
    );
    let port = &container.ports.clone().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("http"), 8080)
    );
    let expected: BTreeMap<String, String> = [
        ("KAFKA_BOOTSTRAP_SERVERS", KAFKA),
        ("PIPELINE_KAFKA_BOOTSTRAP_SERVERS", KAFKA),
        ("IMAGE_REPOSITORY", "shopstream"),
        ("IMAGE_TAG", "0.1.0"),
        ("SERVICE_CPU_REQUEST", "50m"),
        ("SERVICE_MEMORY_REQUEST", "64Mi"),
        ("SERVICE_MEMORY_LIMIT", "256Mi"),
        ("POD_NAMESPACE", "fieldRef:metadata.namespace"),
        ("LEASE_NAME", "shopstream-controller"),
        ("INSTANCE_ID", "fieldRef:metadata.name"),
        ("HTTP_PORT", "8080"),
        ("LOG_FORMAT", "text"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(env(&m), expected);
    let service = services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("shopstream-controller"))
        .unwrap()
        .spec
        .clone()
        .unwrap();
    let port = &service.ports.unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("http"), 8080));
    assert_eq!(
        service.selector.unwrap()["app.kubernetes.io/component"],
        "controller"
    );

    // The default pipeline is the example of deploy/examples/demo.yaml, in the release
    // namespace.
    let pipeline = m.one("ShopPipeline");
    assert_eq!(pipeline["apiVersion"], "shopstream.dev/v1alpha1");
    assert_eq!(pipeline["metadata"]["name"], "demo");
    let example = Manifests::parse(
        &std::fs::read_to_string(shop_chart::chart_dir().join("../../deploy/examples/demo.yaml"))
            .unwrap(),
    );
    assert_eq!(pipeline["spec"], example.one("ShopPipeline")["spec"]);

    // helm test: shopctl verify of the demo pipeline's payments.
    let test: Pod = serde_json::from_value(m.one("Pod").clone()).unwrap();
    let annotations = test.metadata.annotations.unwrap();
    assert_eq!(annotations["helm.sh/hook"], "test");
    let spec = test.spec.unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    let container = &spec.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("shopstream/shop-controller:0.1.0")
    );
    assert_eq!(
        container.command.clone().unwrap(),
        [
            "shopctl",
            "--bootstrap-servers",
            KAFKA,
            "--pipeline",
            "shopstream/demo",
            "verify",
            "--payments-topic",
            "shopstream.demo.payments",
            "--min-payments",
            "200",
            "--timeout",
            "3m",
        ]
    );
}

#[test]
fn external_kafka_renders_no_broker_and_points_everything_at_it() {
    let m = template(
        RELEASE,
        NS,
        &["kafka.enabled=false,kafka.bootstrapServers=my-kafka:9092"],
    );
    assert_eq!(m.count("StatefulSet"), 0);
    let services: Vec<Service> = m.typed("Service");
    let names: Vec<_> = services
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["shopstream-controller"]);
    let env = env(&m);
    assert_eq!(env["KAFKA_BOOTSTRAP_SERVERS"], "my-kafka:9092");
    assert_eq!(env["PIPELINE_KAFKA_BOOTSTRAP_SERVERS"], "my-kafka:9092");
    let test: Pod = serde_json::from_value(m.one("Pod").clone()).unwrap();
    let command = test.spec.unwrap().containers[0].command.clone().unwrap();
    assert_eq!(command[1..3], ["--bootstrap-servers", "my-kafka:9092"]);
}

#[test]
fn persistence_renders_a_volume_claim_template_instead_of_an_emptydir() {
    let m = template(
        RELEASE,
        NS,
        &[
            "kafka.persistence.enabled=true,kafka.persistence.size=20Gi,kafka.persistence.storageClass=fast",
        ],
    );
    let kafka: StatefulSet = serde_json::from_value(m.one("StatefulSet").clone()).unwrap();
    let spec = kafka.spec.unwrap();
    let claims = spec.volume_claim_templates.unwrap();
    assert_eq!(claims.len(), 1);
    let claim = &claims[0];
    assert_eq!(claim.metadata.name.as_deref(), Some("data"));
    let claim_spec = claim.spec.clone().unwrap();
    assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        claim_spec.resources.unwrap().requests.unwrap()["storage"].0,
        "20Gi"
    );
    let pod = spec.template.spec.unwrap();
    let volumes: Vec<_> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert!(!volumes.contains(&"data"), "{volumes:?}");
    assert!(
        pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .any(|v| v.name == "data" && v.mount_path == "/var/lib/kafka/data")
    );

    // Without a storage class the claim uses the cluster's default.
    let m = template(RELEASE, NS, &["kafka.persistence.enabled=true"]);
    let kafka: StatefulSet = serde_json::from_value(m.one("StatefulSet").clone()).unwrap();
    let claim = &kafka.spec.unwrap().volume_claim_templates.unwrap()[0];
    assert_eq!(claim.spec.clone().unwrap().storage_class_name, None);
}

#[test]
fn network_policies_are_opt_in_and_let_shopstream_pods_reach_kafka() {
    assert_eq!(template(RELEASE, NS, &[]).count("NetworkPolicy"), 0);

    let m = template(RELEASE, NS, &["networkPolicy.enabled=true"]);
    let policies: BTreeMap<String, NetworkPolicy> = m
        .typed::<NetworkPolicy>("NetworkPolicy")
        .into_iter()
        .map(|p| (p.metadata.name.clone().unwrap(), p))
        .collect();
    assert_eq!(
        policies.keys().collect::<Vec<_>>(),
        ["shopstream-controller", "shopstream-kafka"]
    );
    let json = |p: &NetworkPolicy| serde_json::to_value(p.spec.clone().unwrap()).unwrap();

    let kafka = json(&policies["shopstream-kafka"]);
    assert_eq!(
        kafka["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "kafka"
    );
    assert_eq!(kafka["policyTypes"], json!(["Ingress"]));
    let ingress = kafka["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 2);
    assert_eq!(
        ingress[0]["ports"],
        json!([{"port": 9092, "protocol": "TCP"}])
    );
    assert_eq!(
        ingress[0]["from"],
        json!([{
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "shopstream"}}
        }])
    );
    assert_eq!(
        ingress[1]["ports"],
        json!([{"port": 9093, "protocol": "TCP"}])
    );
    assert_eq!(
        ingress[1]["from"][0]["podSelector"], kafka["podSelector"],
        "9093 only from the broker itself"
    );

    let controller = json(&policies["shopstream-controller"]);
    assert_eq!(
        controller["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "controller"
    );
    assert_eq!(
        controller["ingress"],
        json!([{"ports": [{"port": 8080, "protocol": "TCP"}]}])
    );

    // Every Pod that talks to Kafka carries the label the policy lets in: the chart's
    // and (see shop-controller's build.rs) the pipelines'.
    for (name, labels) in m.0.iter().filter_map(|d| {
        let labels = match d["kind"].as_str()? {
            "Deployment" | "StatefulSet" => &d["spec"]["template"]["metadata"]["labels"],
            "Pod" => &d["metadata"]["labels"],
            _ => return None,
        };
        Some((d["metadata"]["name"].as_str()?, labels))
    }) {
        assert_eq!(labels["app.kubernetes.io/part-of"], "shopstream", "{name}");
    }

    // With an external Kafka only the controller's policy remains.
    let m = template(
        RELEASE,
        NS,
        &["networkPolicy.enabled=true,kafka.enabled=false,kafka.bootstrapServers=k:9092"],
    );
    assert_eq!(m.count("NetworkPolicy"), 1);
}

#[test]
fn without_a_pipeline_there_is_no_shoppipeline_and_no_test_pod() {
    let m = template(RELEASE, NS, &["pipeline.create=false"]);
    assert_eq!(m.count("ShopPipeline"), 0);
    assert_eq!(m.count("Pod"), 0);
    assert_eq!(m.count("Deployment"), 1);
    assert_eq!(m.count("StatefulSet"), 1);
}

#[test]
fn pipeline_values_reach_the_shoppipeline() {
    let m = template(
        RELEASE,
        NS,
        &[
            "pipeline.name=shop,pipeline.ordersPerSecond=2.5,pipeline.paymentFailureRatio=0.25",
            "pipeline.paused=true,pipeline.seed=7,pipeline.replicas.payments=3,pipeline.partitions=12",
        ],
    );
    let pipeline = m.one("ShopPipeline");
    assert_eq!(pipeline["metadata"]["name"], "shop");
    assert_eq!(
        pipeline["spec"],
        json!({
            "ordersPerSecond": 2.5,
            "paymentFailureRatio": 0.25,
            "paused": true,
            "seed": 7,
            "replicas": {"orders": 1, "payments": 3, "notifications": 1},
            "partitions": 12,
        })
    );
    let test: Pod = serde_json::from_value(m.one("Pod").clone()).unwrap();
    let command = test.spec.unwrap().containers[0].command.clone().unwrap();
    assert!(
        command.contains(&"shopstream/shop".to_owned()),
        "{command:?}"
    );
    assert!(
        command.contains(&"shopstream.shop.payments".to_owned()),
        "{command:?}"
    );
}

#[test]
fn images_follow_the_image_values() {
    let m = template(
        RELEASE,
        NS,
        &["image.repository=registry.example/shop,image.tag=9.9.9"],
    );
    let env = env(&m);
    assert_eq!(env["IMAGE_REPOSITORY"], "registry.example/shop");
    assert_eq!(env["IMAGE_TAG"], "9.9.9");
    // The controller's own tag follows image.tag unless set apart.
    let image = |m: &Manifests| {
        pod_spec(&controller(m)).containers[0]
            .image
            .clone()
            .unwrap()
    };
    assert_eq!(image(&m), "shopstream/shop-controller:9.9.9");
    let m = template(
        RELEASE,
        NS,
        &[
            "controller.image.repository=registry.example/shop/shop-controller,controller.image.tag=1.2.3,controller.image.pullPolicy=Always",
        ],
    );
    assert_eq!(image(&m), "registry.example/shop/shop-controller:1.2.3");
    let pod = pod_spec(&controller(&m));
    assert_eq!(
        pod.containers[0].image_pull_policy.as_deref(),
        Some("Always")
    );
    assert_eq!(env_of(&pod)["IMAGE_TAG"], "0.1.0");
    let m = template(
        RELEASE,
        NS,
        &["kafka.image.repository=my/kafka,kafka.image.tag=4.0.0"],
    );
    let kafka: StatefulSet = serde_json::from_value(m.one("StatefulSet").clone()).unwrap();
    let pod = kafka.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.containers[0].image.as_deref(), Some("my/kafka:4.0.0"));
}

/// Every Pod the chart makes (Kafka, controller, test Pod), in every variant, has the
/// fields of the `restricted` Pod Security Standard; those that do not talk to the API
/// server get no token.
#[test]
fn every_pod_meets_the_restricted_standard() {
    for sets in VARIANTS {
        let m = template(RELEASE, NS, sets);
        let specs = m.pod_specs();
        assert!(specs.len() >= 2, "{sets:?}: {specs:?}");
        for (name, spec) in specs {
            let pod = spec.security_context.clone().unwrap();
            assert_eq!(pod.run_as_non_root, Some(true), "{name}");
            let uid = pod
                .run_as_user
                .unwrap_or_else(|| panic!("{name}: runAsUser"));
            assert!(uid > 0, "{name}");
            assert_eq!(pod.run_as_group, Some(uid), "{name}");
            assert_eq!(
                pod.seccomp_profile.map(|s| s.type_),
                Some("RuntimeDefault".to_owned()),
                "{name}"
            );
            assert_eq!(spec.enable_service_links, Some(false), "{name}");
            for container in spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
            {
                let sc = container.security_context.clone().unwrap();
                assert_eq!(sc.allow_privilege_escalation, Some(false), "{name}");
                assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}");
                assert_eq!(
                    sc.capabilities.and_then(|c| c.drop),
                    Some(vec!["ALL".to_owned()]),
                    "{name}"
                );
                assert!(
                    sc.privileged.is_none() && sc.run_as_user.is_none(),
                    "{name}"
                );
                assert!(container.resources.is_some(), "{name}: resources");
            }
            if name.starts_with("Deployment/") {
                assert_eq!(pod.run_as_user, Some(65532), "{name}");
                assert_eq!(spec.automount_service_account_token, Some(true), "{name}");
            } else if name.starts_with("StatefulSet/") {
                assert_eq!(pod.run_as_user, Some(1000), "{name}: the image's appuser");
                assert_eq!(pod.fs_group, Some(1000), "{name}: writes its volumes");
                assert_eq!(spec.automount_service_account_token, Some(false), "{name}");
            } else {
                assert_eq!(pod.run_as_user, Some(65532), "{name}");
                assert_eq!(spec.automount_service_account_token, Some(false), "{name}");
            }
        }
    }
}

#[test]
fn schema_and_template_refuse_bad_values_naming_them() {
    let cases: &[(&str, &[&str])] = &[
        ("kafka.heap=lots", &["/kafka/heap", "lots"]),
        ("nonsense=1", &["nonsense"]),
        (
            "pipeline.paymentFailureRatio=2",
            &["/pipeline/paymentFailureRatio"],
        ),
        (
            "pipeline.ordersPerSecond=100001",
            &["/pipeline/ordersPerSecond"],
        ),
        ("pipeline.partitions=0", &["/pipeline/partitions"]),
        ("controller.logFormat=yaml", &["/controller/logFormat"]),
        (
            "controller.image.pullPolicy=Sometimes",
            &["/controller/image/pullPolicy"],
        ),
        (
            "kafka.persistence.sise=1Gi",
            &["/kafka/persistence", "sise"],
        ),
        (
            "kafka.bootstrapServers=no port",
            &["/kafka/bootstrapServers"],
        ),
        (
            "kafka.enabled=false",
            &["kafka.bootstrapServers", "kafka.enabled=false"],
        ),
    ];
    for (set, named) in cases {
        let output = try_template(RELEASE, NS, &[set]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "--set {set} was accepted");
        for word in *named {
            assert!(
                stderr.contains(word),
                "--set {set}: the message does not name {word}: {stderr}"
            );
        }
    }
    // Near misses that are fine: heap flags in another order, ratios as --set gives
    // them (a string), the ends of the ranges.
    for set in [
        "kafka.heap=-Xms256m -Xmx1g",
        "pipeline.paymentFailureRatio=0.2",
        "pipeline.paymentFailureRatio=1",
        "pipeline.ordersPerSecond=0",
        "pipeline.ordersPerSecond=100000",
    ] {
        let output = try_template(RELEASE, NS, &[set]);
        assert!(output.status.success(), "--set {set}: {}", printed(&output));
    }
    let m = template(RELEASE, NS, &["pipeline.paymentFailureRatio=0.2"]);
    assert_eq!(
        m.one("ShopPipeline")["spec"]["paymentFailureRatio"],
        json!(0.2)
    );
}

/// The chart's rules are exactly the rules written down in deploy/controller/rbac.yaml
/// (the ClusterRole's, and the leader-election Role's), bound to the controller's
/// ServiceAccount; with a watched namespace, the same rules as a Role there.
#[test]
fn chart_rbac_rules_equal_the_written_rbac() {
    let written = written_rbac();
    let written_cluster = rule_set(&rules_of(&written, "ClusterRole", |_| true));
    let written_lease = rule_set(&rules_of(&written, "Role", |_| true));

    let m = template(RELEASE, NS, &[]);
    assert_eq!(m.count("ClusterRole"), 1);
    assert_eq!(m.count("Role"), 1);
    assert_eq!(
        rule_set(&rules_of(&m, "ClusterRole", |_| true)),
        written_cluster
    );
    assert_eq!(rule_set(&rules_of(&m, "Role", |_| true)), written_lease);
    let account = m.one("ServiceAccount")["metadata"]["name"].clone();
    assert_eq!(account, "shopstream-controller");
    let binding: ClusterRoleBinding =
        serde_json::from_value(m.one("ClusterRoleBinding").clone()).unwrap();
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        Some(binding.role_ref.name.as_str()),
        m.one("ClusterRole")["metadata"]["name"].as_str()
    );
    let role_binding: RoleBinding = serde_json::from_value(m.one("RoleBinding").clone()).unwrap();
    for subjects in [binding.subjects.unwrap(), role_binding.subjects.unwrap()] {
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(json!(subjects[0].name), account);
        assert_eq!(subjects[0].namespace.as_deref(), Some(NS));
    }

    let m = template(RELEASE, NS, &["controller.watchNamespace=shop"]);
    assert_eq!(m.count("ClusterRole"), 0);
    assert_eq!(m.count("ClusterRoleBinding"), 0);
    let pipelines_role = m
        .of_kind("Role")
        .find(|r| r["metadata"]["namespace"] == "shop")
        .unwrap();
    assert_eq!(
        rule_set(&serde_json::from_value::<Vec<_>>(pipelines_role["rules"].clone()).unwrap()),
        written_cluster
    );
    assert_eq!(
        rule_set(&rules_of(&m, "Role", |n| n.ends_with("leader-election"))),
        written_lease
    );
    assert_eq!(env(&m)["WATCH_NAMESPACE"], "shop");

    let m = template(
        RELEASE,
        NS,
        &["rbac.create=false,serviceAccount.create=false"],
    );
    for kind in [
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ] {
        assert_eq!(m.count(kind), 0, "{kind}");
    }
    assert_eq!(
        pod_spec(&controller(&m)).service_account_name.as_deref(),
        Some("default")
    );
}

/// Two releases of one name in two namespaces do not share cluster-scoped objects.
#[test]
fn cluster_scoped_names_carry_the_release_namespace() {
    let cluster_names = |namespace: &str| -> Vec<Value> {
        let m = template(RELEASE, namespace, &[]);
        ["ClusterRole", "ClusterRoleBinding"]
            .iter()
            .map(|kind| m.one(kind)["metadata"]["name"].clone())
            .collect()
    };
    let (a, b) = (cluster_names("team-a"), cluster_names("team-b"));
    for (a, b) in a.iter().zip(&b) {
        assert_ne!(a, b);
        assert!(a.as_str().unwrap().contains("team-a"), "{a}");
    }
}

#[test]
fn chart_and_app_version_equal_the_crates_version() {
    let version = crate_version(include_str!("../../shop-controller/Cargo.toml"));
    for manifest in [
        include_str!("../../shopctl/Cargo.toml"),
        include_str!("../../order-service/Cargo.toml"),
        include_str!("../../payment-service/Cargo.toml"),
        include_str!("../../notification-service/Cargo.toml"),
    ] {
        assert_eq!(crate_version(manifest), version, "the images' crates agree");
    }
    let chart: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(shop_chart::chart_dir().join("Chart.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(chart["version"], json!(version));
    assert_eq!(chart["appVersion"], json!(version));
    // The images the chart deploys by default carry that version.
    let m = template(RELEASE, NS, &[]);
    assert_eq!(env(&m)["IMAGE_TAG"], version);
    assert_eq!(
        pod_spec(&controller(&m)).containers[0]
            .image
            .clone()
            .unwrap(),
        format!("shopstream/shop-controller:{version}")
    );
}

#[test]
fn notes_show_the_readme_commands() {
    let chart = chart();
    // `helm install --dry-run=client` renders NOTES.txt; it still maps the kinds on the
    // API server, so the ShopPipeline CRD must be served.
    ensure_crd();
    let output = run(
        "helm",
        &[
            "install",
            RELEASE,
            &chart,
            "--namespace",
            NS,
            "--dry-run=client",
        ],
        None,
    );
    assert!(output.status.success(), "{}", printed(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let notes = stdout.split("NOTES:").nth(1).expect("NOTES");
    for line in [
        "kubectl -n shopstream logs -f deploy/demo-notification-service",
        "kubectl -n shopstream get sp",
        r#"kubectl -n shopstream patch sp demo --type merge -p '{"spec":{"ordersPerSecond":50,"paymentFailureRatio":0.2}}'"#,
        "helm test shopstream -n shopstream",
        "kubectl -n shopstream port-forward svc/shopstream-controller 8080",
        "http://localhost:8080/",
        "kubectl apply --server-side -f charts/shopstream/crds/",
    ] {
        assert!(notes.contains(line), "NOTES lack {line:?}:\n{notes}");
    }
    assert!(
        !notes.contains("holderIdentity"),
        "one replica needs no leader lookup:\n{notes}"
    );

    // With two replicas, the NOTES say how to reach the leader's page.
    let output = run(
        "helm",
        &[
            "install",
            RELEASE,
            &chart,
            "--namespace",
            NS,
            "--dry-run=client",
            "--set",
            "controller.replicas=2",
        ],
        None,
    );
    assert!(output.status.success(), "{}", printed(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let notes = stdout.split("NOTES:").nth(1).expect("NOTES");
    let leader = "kubectl -n shopstream port-forward pod/$(kubectl -n shopstream get lease \
                  shopstream-controller -o jsonpath='{.spec.holderIdentity}') 8080";
    assert!(notes.contains(leader), "NOTES lack {leader:?}:\n{notes}");
}
