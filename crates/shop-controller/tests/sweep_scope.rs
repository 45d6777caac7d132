//! A controller that watches one namespace sweeps only that namespace's topics: the shared
//! control topic holds every namespace's pipelines, and another namespace's live pipeline
//! is not this controller's to judge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use kube::Api;
use kube::api::{DeleteParams, PostParams};
use rdkafka::consumer::{BaseConsumer, Consumer};
use shop_controller::crd::{ShopPipeline, ShopPipelineSpec};
use shop_testkit::testbed;
use support::{Controller, eventually, install_crd, three_deployments};

fn topic_exists(topic: &str) -> bool {
    let consumer: BaseConsumer = testbed().kafka_config().create().unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
}

fn spec() -> ShopPipelineSpec {
    ShopPipelineSpec {
        orders_per_second: 1.0,
        payment_failure_ratio: 0.1,
        paused: false,
        seed: None,
        replicas: None,
        partitions: Some(1),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_controller_leaves_other_namespaces_topics_alone() {
    let bed = testbed();
    let client = bed.kube_client().await.unwrap();
    install_crd(client.clone()).await;
    let (ns_a, ns_b) = (
        bed.namespace("sweep-a").await.unwrap(),
        bed.namespace("sweep-b").await.unwrap(),
    );
    let (a, b) = (ns_a.name().to_owned(), ns_b.name().to_owned());
    // One control topic for both, as in a cluster with one controller per namespace.
    let control = bed.topic("control", 1).await.unwrap();
    let heartbeats = bed.topic("heartbeats", 1).await.unwrap();

    // Controller B runs a pipeline in B: its topics and its control record exist.
    let controller_b = Controller::start_as("replica-b", &b, &control, &heartbeats).await;
    Api::<ShopPipeline>::namespaced(client.clone(), &b)
        .create(&PostParams::default(), &ShopPipeline::new("kept", spec()))
        .await
        .unwrap();
    three_deployments(&client, &b, "kept").await;
    let kept = format!("{b}.kept.orders");
    eventually("B's topics", async || topic_exists(&kept).then_some(())).await;
    controller_b.stop().await;

    // Controller A starts after: it reads every control record, B's included. A pipeline of
    // its own that it creates and deletes shows when its sweep has run.
    let controller_a = Controller::start_as("replica-a", &a, &control, &heartbeats).await;
    let pipelines_a: Api<ShopPipeline> = Api::namespaced(client.clone(), &a);
    pipelines_a
        .create(&PostParams::default(), &ShopPipeline::new("gone", spec()))
        .await
        .unwrap();
    three_deployments(&client, &a, "gone").await;
    let gone = format!("{a}.gone.orders");
    eventually("A's topics", async || topic_exists(&gone).then_some(())).await;
    pipelines_a
        .delete("gone", &DeleteParams::background())
        .await
        .unwrap();
    eventually("A to sweep its deleted pipeline's topics", async || {
        (!topic_exists(&gone)).then_some(())
    })
    .await;

    assert!(
        topic_exists(&kept),
        "controller A (watching {a}) deleted {kept}, a topic of a live pipeline in {b}"
    );
    controller_a.stop().await;
}
