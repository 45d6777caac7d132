//! The chart on the test bed's API server: its manifests are admitted in a namespace that
//! enforces the `restricted` Pod Security Standard, and `helm install --wait` rolls out
//! on the kwok node, after which the real `shop-controller` binary, started with the
//! environment of the chart's controller Deployment and the chart's ServiceAccount,
//! creates the default pipeline's Deployments with the chart's image settings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use shop_testkit::{free_port, test_log, testbed, unique_name, workspace_binary};
use support::{Manifests, chart, ensure_crd, env_of, eventually, printed, run, run_ok};

/// The three services of a pipeline, by their binary (and image) names.
const SERVICES: [&str; 3] = ["order-service", "payment-service", "notification-service"];

/// Deletes what a test put outside its namespace when dropped: a helm release (its
/// ClusterRole and ClusterRoleBinding) or the cluster-scoped objects of applied
/// manifests.
enum Cleanup {
    Release { name: String, namespace: String },
    ClusterScoped { instance: String },
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let output = match self {
            Cleanup::Release { name, namespace } => run(
                "helm",
                &[
                    "uninstall",
                    name,
                    "--namespace",
                    namespace,
                    "--wait",
                    "--timeout",
                    "1m",
                ],
                None,
            ),
            Cleanup::ClusterScoped { instance } => run(
                "kubectl",
                &[
                    "delete",
                    "clusterrole,clusterrolebinding",
                    "-l",
                    &format!("app.kubernetes.io/instance={instance}"),
                ],
                None,
            ),
        };
        if !output.status.success() {
            eprintln!("shop-chart: cleanup failed: {}", printed(&output));
        }
    }
}

/// Labels `namespace` to enforce the restricted Pod Security Standard.
async fn enforce_restricted(client: &Client, namespace: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let patch = json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}});
    namespaces
        .patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// Creates (server-side dry run) a Pod in `namespace` from a Pod spec; the API server's
/// admission (PodSecurity included) decides.
async fn dry_run_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    spec: k8s_openapi::api::core::v1::PodSpec,
) -> Result<Pod, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        ..Pod::default()
    };
    pods.create(
        &PostParams {
            dry_run: true,
            ..PostParams::default()
        },
        &pod,
    )
    .await
}

async fn ready_replicas_of<K>(client: &Client, namespace: &str, name: &str) -> Option<i32>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + 'static,
    K: ReadyReplicas,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.get(name).await.ok()?.ready_replicas()
}

trait ReadyReplicas {
    fn ready_replicas(&self) -> Option<i32>;
}

impl ReadyReplicas for Deployment {
    fn ready_replicas(&self) -> Option<i32> {
        self.status.as_ref()?.ready_replicas
    }
}

impl ReadyReplicas for StatefulSet {
    fn ready_replicas(&self) -> Option<i32> {
        self.status.as_ref()?.ready_replicas
    }
}

/// The rendered manifests are accepted by the API server in a namespace that enforces
/// `restricted`: server-side dry run, then for real; a Pod made from each Pod template
/// passes PodSecurity admission (which checks Pods only), while a Pod without the
/// restricted settings is refused there, so the namespace really enforces; and the
/// workloads' Pods are admitted and become ready on the kwok node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_manifests_pass_restricted_pod_security_on_the_api_server() {
    let bed = testbed();
    let client = bed.kube_client().await.unwrap();
    ensure_crd();
    let namespace = bed.namespace("chart-restricted").await.unwrap();
    let ns = namespace.name().to_owned();
    enforce_restricted(&client, &ns).await;
    // Pods are admitted once the namespace's default ServiceAccount exists.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    eventually("the namespace's default ServiceAccount", async || {
        accounts.get_opt("default").await.ok().flatten()
    })
    .await;
    let release = unique_name("pss");
    let yaml = support::template_text(&release, &ns, &["networkPolicy.enabled=true"]);
    let _cleanup = Cleanup::ClusterScoped {
        instance: release.clone(),
    };

    // The control: a Pod without the restricted settings is refused in this namespace.
    let plain = k8s_openapi::api::core::v1::PodSpec {
        containers: vec![k8s_openapi::api::core::v1::Container {
            name: "plain".into(),
            image: Some("busybox:1".into()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let refused = dry_run_pod(&client, &ns, "plain", plain).await.unwrap_err();
    assert!(
        refused.to_string().contains("violates PodSecurity"),
        "{refused}"
    );

    let apply = |dry_run: bool| {
        let mut args = vec!["apply", "--server-side", "--namespace", &ns, "-f", "-"];
        if dry_run {
            args.push("--dry-run=server");
        }
        run_ok("kubectl", &args, Some(&yaml))
    };
    let dry = apply(true);
    assert!(dry.contains("(server dry run)"), "{dry}");
    apply(false);

    // Every Pod the chart makes is admitted (after the apply: its ServiceAccount exists).
    let manifests = Manifests::parse(&yaml);
    let specs = manifests.pod_specs();
    assert_eq!(specs.len(), 3, "controller, Kafka, test Pod: {specs:?}");
    for (i, (from, spec)) in specs.into_iter().enumerate() {
        if let Err(error) = dry_run_pod(&client, &ns, &format!("pod-{i}"), spec).await {
            panic!("a Pod of {from} is refused in a restricted namespace: {error}");
        }
    }

    // The Deployment and StatefulSet controllers create the Pods: admitted, scheduled
    // and reported ready on the kwok node.
    let controller = format!("{release}-shopstream-controller");
    let kafka = format!("{release}-shopstream-kafka");
    eventually("the controller Deployment's Pod ready", async || {
        (ready_replicas_of::<Deployment>(&client, &ns, &controller).await == Some(1)).then_some(())
    })
    .await;
    eventually("the Kafka StatefulSet's Pod ready", async || {
        (ready_replicas_of::<StatefulSet>(&client, &ns, &kafka).await == Some(1)).then_some(())
    })
    .await;
}

/// A process killed and reaped when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A kubeconfig for the bed's API server that authenticates as `account` in `namespace`,
/// written to a file deleted when dropped.
struct AccountKubeconfig(PathBuf);

impl AccountKubeconfig {
    fn new(namespace: &str, account: &str) -> Self {
        let token = run_ok(
            "kubectl",
            &[
                "create",
                "token",
                account,
                "--namespace",
                namespace,
                "--duration",
                "1h",
            ],
            None,
        );
        let config = run_ok(
            "kubectl",
            &["config", "view", "--raw", "--flatten", "--minify"],
            None,
        );
        let path = std::env::temp_dir().join(format!("{}.kubeconfig", unique_name("shop-chart")));
        std::fs::write(&path, config).unwrap();
        let kubectl = |args: &[&str]| {
            let mut command = testbed().command("kubectl").unwrap();
            command.env("KUBECONFIG", &path).args(args);
            let output = support::run_command(command, None);
            assert!(
                output.status.success(),
                "kubectl {args:?}: {}",
                printed(&output)
            );
        };
        kubectl(&[
            "config",
            "set-credentials",
            account,
            "--token",
            token.trim(),
        ]);
        kubectl(&["config", "set-context", "--current", "--user", account]);
        Self(path)
    }
}

impl Drop for AccountKubeconfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `helm install --wait` of the chart with non-default images rolls out on the kwok node
/// and creates the default pipeline; the real controller binary, with the environment of
/// the chart's controller Deployment (only Kafka's address, the namespace, the port and
/// the control-plane topics changed) and the chart's ServiceAccount, creates the
/// pipeline's three Deployments with the chart's images.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_rolls_out_and_the_real_controller_runs_the_default_pipeline() {
    let binary = workspace_binary("shop-controller");
    let bed = testbed();
    let client = bed.kube_client().await.unwrap();
    ensure_crd();
    let namespace = bed.namespace("chart-install").await.unwrap();
    let ns = namespace.name().to_owned();
    let release = unique_name("shop");
    let chart = chart();
    let output = run(
        "helm",
        &[
            "install",
            &release,
            &chart,
            "--namespace",
            &ns,
            "--set",
            "image.repository=registry.example/shop,image.tag=9.9.9",
            "--wait",
            "--timeout",
            "3m",
        ],
        None,
    );
    let _cleanup = Cleanup::Release {
        name: release.clone(),
        namespace: ns.clone(),
    };
    assert!(
        output.status.success(),
        "helm install: {}",
        printed(&output)
    );

    // helm waited for the rollout (by the ReplicaSet's and StatefulSet's counts); the
    // Deployment's own status follows.
    let controller_name = format!("{release}-shopstream-controller");
    let kafka_name = format!("{release}-shopstream-kafka");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let chart_deployments = deployments.list(&ListParams::default()).await.unwrap();
    assert_eq!(chart_deployments.items.len(), 1, "only the controller's");
    eventually("the controller Deployment rolled out", async || {
        (ready_replicas_of::<Deployment>(&client, &ns, &controller_name).await == Some(1))
            .then_some(())
    })
    .await;
    eventually("the Kafka StatefulSet rolled out", async || {
        (ready_replicas_of::<StatefulSet>(&client, &ns, &kafka_name).await == Some(1)).then_some(())
    })
    .await;
    let pipelines = Api::<kube::api::DynamicObject>::namespaced_with(
        client.clone(),
        &ns,
        &kube::api::ApiResource {
            group: "shopstream.dev".into(),
            version: "v1alpha1".into(),
            api_version: "shopstream.dev/v1alpha1".into(),
            kind: "ShopPipeline".into(),
            plural: "shoppipelines".into(),
        },
    );
    let demo = pipelines.get("demo").await.unwrap();
    assert_eq!(demo.data["spec"]["ordersPerSecond"], json!(20));

    // The real controller, as the chart's Deployment runs it.
    let deployment = deployments.get(&controller_name).await.unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let account = pod.service_account_name.clone().unwrap();
    let env = env_of(&pod);
    assert_eq!(env["IMAGE_REPOSITORY"], "registry.example/shop");
    assert_eq!(env["IMAGE_TAG"], "9.9.9");
    let pipeline_kafka = env["PIPELINE_KAFKA_BOOTSTRAP_SERVERS"].clone();
    assert_eq!(
        pipeline_kafka,
        format!("{kafka_name}.{ns}.svc.cluster.local:9092")
    );
    let control = bed.topic("chart-control", 1).await.unwrap();
    let heartbeats = bed.topic("chart-heartbeats", 1).await.unwrap();
    let kubeconfig = AccountKubeconfig::new(&ns, &account);
    let mut command = Command::new(binary);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (name, value) in &env {
        if !value.starts_with("fieldRef:") {
            command.env(name, value);
        }
    }
    command
        .env("KUBECONFIG", &kubeconfig.0)
        .env("KAFKA_BOOTSTRAP_SERVERS", bed.kafka_bootstrap())
        .env("WATCH_NAMESPACE", &ns)
        .env("POD_NAMESPACE", &ns)
        .env("INSTANCE_ID", format!("{controller_name}-local"))
        .env("HTTP_PORT", free_port().to_string())
        .env("CONTROL_TOPIC", control.name())
        .env("HEARTBEAT_TOPIC", heartbeats.name())
        .stdout(Stdio::null())
        .stderr(test_log(&release));
    let _controller = Process(command.spawn().unwrap());

    let selector = "shopstream.dev/pipeline=demo";
    let created = eventually("the three Deployments of demo", async || {
        let list = deployments
            .list(&ListParams::default().labels(selector))
            .await
            .ok()?;
        (list.items.len() == 3).then_some(list.items)
    })
    .await;
    let mut images: Vec<String> = created
        .iter()
        .map(|d| {
            let pod = d.spec.clone().unwrap().template.spec.unwrap();
            assert_eq!(
                env_of(&pod)["KAFKA_BOOTSTRAP_SERVERS"],
                pipeline_kafka,
                "the pipeline's Pods reach the chart's Kafka"
            );
            pod.containers[0].image.clone().unwrap()
        })
        .collect();
    images.sort();
    let mut expected: Vec<String> = SERVICES
        .iter()
        .map(|s| format!("registry.example/shop/{s}:9.9.9"))
        .collect();
    expected.sort();
    assert_eq!(images, expected);
}
