//! A sweep that cannot delete a deleted pipeline's topics keeps its control record, so
//! the next sweep retries. The broker is one of the test's own (the test bed's Kafka, run
//! by `testbed/kafka.sh` on other ports) with `delete.topic.enable=false`: it refuses every
//! DeleteTopics, as a broker with ACLs or an operator's policy would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use kube::Api;
use kube::api::{DeleteParams, PostParams};
use rdkafka::consumer::{BaseConsumer, Consumer};
use shop_controller::crd::{ShopPipeline, ShopPipelineSpec};
use shop_kafka::KafkaArgs;
use shop_kafka::compacted::read_table;
use shop_testkit::{OwnBroker, testbed};
use support::{Controller, eventually, install_crd};

fn sweep_failures(controller: &Controller) -> u64 {
    let text = controller.metrics.encode();
    text.lines()
        .find_map(|line| {
            line.strip_prefix("shopstream_controller_sweep_failures_total ")?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_whose_topics_could_not_be_deleted_keeps_its_control_record() {
    let bed = testbed();
    let client = bed.kube_client().await.unwrap();
    install_crd(client.clone()).await;
    let namespace = bed.namespace("ctl-sweep-retry").await.unwrap();
    let ns = namespace.name().to_owned();
    let broker = OwnBroker::start("delete.topic.enable=false");
    let controller = Controller::start_on(
        "sweep-retry",
        client.clone(),
        broker.bootstrap(),
        &ns,
        "shopstream.control",
        "shopstream.heartbeats",
    );

    let pipelines: Api<ShopPipeline> = Api::namespaced(client.clone(), &ns);
    let spec = ShopPipelineSpec {
        orders_per_second: 1.0,
        payment_failure_ratio: 0.0,
        paused: true,
        seed: None,
        replicas: None,
        partitions: Some(1),
    };
    pipelines
        .create(&PostParams::default(), &ShopPipeline::new("kept", spec))
        .await
        .unwrap();
    let key = format!("{ns}/kept");
    let kafka = KafkaArgs::for_broker(broker.bootstrap());
    let orders = format!("{ns}.kept.orders");
    eventually("the pipeline's topics and control record", async || {
        let consumer: BaseConsumer = kafka.client_config("test").create().ok()?;
        let metadata = consumer
            .fetch_metadata(Some(&orders), Duration::from_secs(5))
            .ok()?;
        metadata.topics().iter().find(|t| t.error().is_none())?;
        let table = read_table(&kafka, "shopstream.control", Duration::from_secs(10))
            .await
            .ok()?;
        table.contains_key(&key).then_some(())
    })
    .await;

    pipelines
        .delete("kept", &DeleteParams::default())
        .await
        .unwrap();
    // Two sweeps have tried (three topics each) and been refused...
    eventually("two refused sweeps", async || {
        (sweep_failures(&controller) >= 6).then_some(())
    })
    .await;
    // ...and the control record is still there for the next one.
    let table = read_table(&kafka, "shopstream.control", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        table.contains_key(&key),
        "the control record of {key} was removed although its topics are still there"
    );
    controller.stop().await;
}
