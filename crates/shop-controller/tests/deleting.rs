//! A pipeline being deleted is not applied again. Under foreground deletion the garbage
//! collector removes the pipeline's Deployments first; a reconcile in that time (here made
//! certain by a spec change) must not re-create them. A finalizer of the test's own keeps
//! the pipeline in its deleting state long enough to see it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use shop_controller::build::PIPELINE_LABEL;
use shop_controller::crd::{ShopPipeline, ShopPipelineSpec};
use shop_testkit::testbed;
use support::{Controller, eventually, install_crd, three_deployments};

const HOLD: &str = "test.shopstream.dev/hold";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_being_deleted_is_not_applied_again() {
    let bed = testbed();
    let client = bed.kube_client().await.unwrap();
    install_crd(client.clone()).await;
    let namespace = bed.namespace("ctl-deleting").await.unwrap();
    let ns = namespace.name().to_owned();
    let control = bed.topic("control", 1).await.unwrap();
    let heartbeats = bed.topic("heartbeats", 1).await.unwrap();
    let controller = Controller::start(&ns, &control, &heartbeats).await;

    let pipelines: Api<ShopPipeline> = Api::namespaced(client.clone(), &ns);
    let spec = ShopPipelineSpec {
        orders_per_second: 1.0,
        payment_failure_ratio: 0.0,
        paused: true,
        seed: None,
        replicas: None,
        partitions: Some(1),
    };
    let mut pipeline = ShopPipeline::new("going", spec);
    pipeline.metadata.finalizers = Some(vec![HOLD.to_owned()]);
    pipelines
        .create(&PostParams::default(), &pipeline)
        .await
        .unwrap();
    three_deployments(&client, &ns, "going").await;

    pipelines
        .delete("going", &DeleteParams::foreground())
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let selector = ListParams::default().labels(&format!("{PIPELINE_LABEL}=going"));
    eventually(
        "the garbage collector to delete the Deployments",
        async || {
            let list = deployments.list(&selector).await.ok()?;
            list.items.is_empty().then_some(())
        },
    )
    .await;

    // A spec change while deleting: the controller reconciles it (observedGeneration
    // follows) without applying the Deployments again.
    let patch = serde_json::json!({"spec": {"ordersPerSecond": 2.0}});
    let changed = pipelines
        .patch("going", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let generation = changed.metadata.generation;
    let status = eventually("the controller to observe the change", async || {
        let status = pipelines.get_status("going").await.ok()?.status?;
        (status.observed_generation == generation).then_some(status)
    })
    .await;
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.reason, "Deleting", "{ready:?}");
    let left = deployments.list(&selector).await.unwrap().items;
    assert!(
        left.is_empty(),
        "Deployments applied again while deleting: {:?}",
        left.iter()
            .map(|d| d.metadata.name.clone())
            .collect::<Vec<_>>()
    );

    let release = serde_json::json!({"metadata": {"finalizers": null}});
    pipelines
        .patch("going", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();
    controller.stop().await;
}
