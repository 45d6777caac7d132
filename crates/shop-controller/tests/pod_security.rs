//! The Pods of the Deployments the controller creates are admitted in a namespace that
//! enforces the `restricted` Pod Security Standard, as judged by the real API server's
//! PodSecurity admission.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use shop_controller::crd::{ShopPipeline, ShopPipelineSpec};
use shop_testkit::testbed;
use support::{Controller, install_crd, three_deployments};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipelines_pods_are_admitted_under_the_restricted_standard() {
    let bed = testbed();
    let client = bed.kube_client().await.unwrap();
    install_crd(client.clone()).await;
    let namespace = bed.namespace("ctl-pss").await.unwrap();
    let ns = namespace.name().to_owned();
    let enforce = serde_json::json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}});
    Api::<Namespace>::all(client.clone())
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&enforce))
        .await
        .unwrap();

    let control = bed.topic("control", 1).await.unwrap();
    let heartbeats = bed.topic("heartbeats", 1).await.unwrap();
    let controller = Controller::start(&ns, &control, &heartbeats).await;
    let spec = ShopPipelineSpec {
        orders_per_second: 1.0,
        payment_failure_ratio: 0.1,
        paused: false,
        seed: None,
        replicas: None,
        partitions: Some(1),
    };
    Api::<ShopPipeline>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &ShopPipeline::new("pss", spec))
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    for deployment in three_deployments(&client, &ns, "pss").await {
        let template = deployment.spec.unwrap().template;
        let name = deployment.metadata.name.unwrap();
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(format!("{name}-admission")),
                labels: template.metadata.and_then(|m| m.labels),
                ..ObjectMeta::default()
            },
            spec: template.spec,
            ..Pod::default()
        };
        if let Err(error) = pods.create(&dry_run, &pod).await {
            panic!("a Pod of {name} is refused under the restricted standard: {error}");
        }
    }
    controller.stop().await;
}
