//! `spec.partitions` honoured end to end: the controller creates the pipeline's topics
//! with the spec's partitions before its Deployments, tells the services the count, grows
//! the topics when the spec grows, and the API server refuses a shrink.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use rdkafka::consumer::{BaseConsumer, Consumer};
use shop_controller::build::TopicNames;
use shop_controller::crd::{ShopPipeline, ShopPipelineSpec};
use shop_testkit::testbed;
use support::{Controller, eventually, install_crd};

/// The partition count of each of `topics` on the bed's broker (0 when missing).
fn partitions(topics: &[&str]) -> Vec<usize> {
    let consumer: BaseConsumer = testbed().kafka_config().create().unwrap();
    topics
        .iter()
        .map(|topic| {
            let metadata = consumer
                .fetch_metadata(Some(topic), std::time::Duration::from_secs(5))
                .unwrap();
            metadata
                .topics()
                .iter()
                .find(|t| t.name() == *topic && t.error().is_none())
                .map_or(0, |t| t.partitions().len())
        })
        .collect()
}

async fn wait_for_partitions(topics: &TopicNames, count: usize) {
    eventually(&format!("{count} partitions"), async || {
        let found = partitions(&[&topics.orders, &topics.payments]);
        (found == [count, count]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_created_first_grown_and_never_shrunk() {
    let bed = testbed();
    let client = bed.kube_client().await.unwrap();
    install_crd(client.clone()).await;
    let namespace = bed.namespace("ctl-partitions").await.unwrap();
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
        partitions: Some(6),
    };
    pipelines
        .create(&PostParams::default(), &ShopPipeline::new("sized", spec))
        .await
        .unwrap();
    let topics = TopicNames::of(&ns, "sized");
    wait_for_partitions(&topics, 6).await;

    // The topics existed before the Deployments, which pass the count on.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let orders = eventually("order-service's Deployment", async || {
        deployments.get_opt("sized-order-service").await.ok()?
    })
    .await;
    assert_eq!(
        partitions(&[&topics.orders]),
        [6],
        "topics are created before Deployments"
    );
    let env = orders.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let count = env.iter().find(|v| v.name == "TOPIC_PARTITIONS").unwrap();
    assert_eq!(count.value.as_deref(), Some("6"));

    let grow = serde_json::json!({"spec": {"partitions": 8}});
    pipelines
        .patch("sized", &PatchParams::default(), &Patch::Merge(&grow))
        .await
        .unwrap();
    wait_for_partitions(&topics, 8).await;

    let shrink = serde_json::json!({"spec": {"partitions": 4}});
    let refused = pipelines
        .patch("sized", &PatchParams::default(), &Patch::Merge(&shrink))
        .await
        .unwrap_err();
    match refused {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(
                status.message.contains("partitions can only grow"),
                "{}",
                status.message
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(partitions(&[&topics.orders, &topics.payments]), [8, 8]);
    controller.stop().await;
}
