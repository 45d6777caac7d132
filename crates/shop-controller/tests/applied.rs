//! The whole control loop with the real services as local processes: the controller
//! publishes a control record, order-, payment- and notification-service (started with
//! the environment of the Deployments the controller created) apply it, their heartbeats
//! report it, and `kubectl wait --for=condition=Applied` returns; again after a patch.
//!
//! The services are the workspace's own binaries, built by `cargo test --workspace` (or
//! `cargo build --workspace`) next to this test binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Child, Command, Stdio};

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use shop_controller::crd::{ShopPipeline, ShopPipelineSpec};
use shop_testkit::{free_port, test_log, testbed, workspace_binary};
use support::{Controller, install_crd, three_deployments};

/// A service process that is stopped with SIGTERM when dropped.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Starts the service of `deployment` as a local process with the Deployment's own
/// environment, so it runs exactly as its Pod would.
fn start_like(deployment: &Deployment, instance: &str) -> Service {
    let container = &deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    let mut command = Command::new(workspace_binary(&container.name));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for var in container.env.iter().flatten() {
        if let Some(value) = &var.value {
            command.env(&var.name, value);
        }
    }
    command
        .env("KAFKA_BOOTSTRAP_SERVERS", testbed().kafka_bootstrap())
        .env("INSTANCE_ID", instance)
        .env("HTTP_PORT", free_port().to_string())
        .stdout(Stdio::null())
        .stderr(test_log(instance));
    Service(command.spawn().unwrap())
}

async fn kubectl_wait(namespace: &str, what: &str) {
    let command = testbed().command("kubectl").unwrap();
    let output = tokio::process::Command::from(command)
        .args([
            "wait",
            "--namespace",
            namespace,
            what,
            "sp/live",
            "--timeout=90s",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "kubectl wait {what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_apply_the_control_record_and_the_pipeline_reports_applied() {
    let bed = testbed();
    let client = bed.kube_client().await.unwrap();
    install_crd(client.clone()).await;
    let namespace = bed.namespace("ctl-applied").await.unwrap();
    let ns = namespace.name().to_owned();
    let control = bed.topic("control", 1).await.unwrap();
    let heartbeats = bed.topic("heartbeats", 1).await.unwrap();
    let controller = Controller::start(&ns, &control, &heartbeats).await;

    let pipelines: Api<ShopPipeline> = Api::namespaced(client.clone(), &ns);
    let spec = ShopPipelineSpec {
        orders_per_second: 50.0,
        payment_failure_ratio: 0.2,
        paused: false,
        seed: Some(1),
        replicas: None,
        partitions: Some(2),
    };
    pipelines
        .create(&PostParams::default(), &ShopPipeline::new("live", spec))
        .await
        .unwrap();

    let created = three_deployments(&client, &ns, "live").await;
    let _services: Vec<Service> = created
        .iter()
        .map(|d| {
            let mut d = d.clone();
            // The controller's Pods reach Kafka by the address it was given, which here is
            // the test bed's broker too; pass the control topics of this test explicitly.
            let env = d
                .spec
                .as_mut()
                .unwrap()
                .template
                .spec
                .as_mut()
                .unwrap()
                .containers[0]
                .env
                .get_or_insert_with(Vec::new);
            for var in env.iter_mut() {
                match var.name.as_str() {
                    "CONTROL_TOPIC" => var.value = Some(control.name().to_owned()),
                    "HEARTBEAT_TOPIC" => var.value = Some(heartbeats.name().to_owned()),
                    _ => {}
                }
            }
            start_like(&d, &format!("{}-0", d.metadata.name.as_deref().unwrap()))
        })
        .collect();

    kubectl_wait(&ns, "--for=condition=Applied").await;

    let patch = serde_json::json!({"spec": {"ordersPerSecond": 120.0, "paymentFailureRatio": 0.5}});
    pipelines
        .patch("live", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    kubectl_wait(&ns, "--for=jsonpath={.status.observedGeneration}=2").await;
    kubectl_wait(&ns, "--for=condition=Applied").await;

    let status = pipelines.get_status("live").await.unwrap().status.unwrap();
    let applied = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Applied")
        .unwrap();
    assert!(
        applied.message.contains("2 live replicas"),
        "{}",
        applied.message
    );
    assert_eq!(status.effective.unwrap().orders_per_second, 120.0);
    controller.stop().await;
}
