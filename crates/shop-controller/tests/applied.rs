//! The whole control loop with the real services as local processes: the controller
//! publishes a control record, order-, payment- and notification-service (started with
//! the environment of the Deployments the controller created) apply it, their heartbeats
//! report it, and `kubectl wait --for=condition=Applied` returns; again after a patch.
//!
//! The services are the workspace's own binaries, built by `cargo test --workspace` (or
//! `cargo build --workspace`) next to this test binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use shop_controller::crd::{ShopPipeline, ShopPipelineSpec};
use shop_testkit::testbed;
use support::{Controller, install_crd, start_services, three_deployments};

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
    let _services = start_services(&created, &control, &heartbeats);

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
