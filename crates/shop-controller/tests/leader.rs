//! Leader election: of two controller replicas sharing a Lease only one acts; when it
//! stops, the other takes over and reconciles.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::PostParams;
use shop_controller::crd::{ShopPipeline, ShopPipelineSpec};
use shop_testkit::testbed;
use support::{Controller, eventually, install_crd, three_deployments};

fn spec() -> ShopPipelineSpec {
    ShopPipelineSpec {
        orders_per_second: 1.0,
        payment_failure_ratio: 0.0,
        paused: false,
        seed: None,
        replicas: None,
        partitions: Some(1),
    }
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref()?.holder_identity.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_acts_and_a_standby_takes_over() {
    let bed = testbed();
    let client = bed.kube_client().await.unwrap();
    install_crd(client.clone()).await;
    let namespace = bed.namespace("ctl-leader").await.unwrap();
    let ns = namespace.name().to_owned();
    let control = bed.topic("control", 1).await.unwrap();
    let heartbeats = bed.topic("heartbeats", 1).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);

    let first = Controller::start_as("replica-a", &ns, &control, &heartbeats).await;
    eventually("replica-a to lead", async || {
        let lease = leases.get_opt("shop-controller").await.ok()??;
        (holder(&lease).as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    let second = Controller::start_as("replica-b", &ns, &control, &heartbeats).await;
    // The standby reports Ready (a two-replica rollout must not stall on it) and says
    // that it waits for the Lease.
    eventually("replica-b to be a ready standby", async || {
        let (ready, reason) = second.health.is_ready();
        (ready && reason == shop_controller::run::STANDBY).then_some(())
    })
    .await;
    let lease = leases.get("shop-controller").await.unwrap();
    assert_eq!(holder(&lease).as_deref(), Some("replica-a"));

    // The leader acts: it runs a pipeline.
    let pipelines: Api<ShopPipeline> = Api::namespaced(client.clone(), &ns);
    pipelines
        .create(&PostParams::default(), &ShopPipeline::new("before", spec()))
        .await
        .unwrap();
    three_deployments(&client, &ns, "before").await;

    // The leader stops and releases the Lease; the standby takes over and reconciles.
    first.stop().await;
    eventually("replica-b to lead", async || {
        let lease = leases.get_opt("shop-controller").await.ok()??;
        (holder(&lease).as_deref() == Some("replica-b")).then_some(())
    })
    .await;
    pipelines
        .create(&PostParams::default(), &ShopPipeline::new("after", spec()))
        .await
        .unwrap();
    three_deployments(&client, &ns, "after").await;
    second.stop().await;
}
