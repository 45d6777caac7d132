//! The controller against the test bed's real API server and broker: a ShopPipeline
//! becomes owned Deployments, topics and a control record; tuning publishes a new record
//! without touching Pod templates; a restart publishes nothing twice; deleting the
//! pipeline collects its Deployments and sweeps its topics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use shop_controller::crd::{ShopPipeline, ShopPipelineSpec};
use shop_domain::ControlRecord;
use shop_testkit::{testbed, unique_name};
use support::{Controller, TIMEOUT, eventually, install_crd, three_deployments};

/// Every record (not only the latest) under `key` in `topic`, in order.
fn records_under(topic: &str, key: &str) -> Vec<Option<ControlRecord>> {
    let consumer: BaseConsumer = testbed()
        .kafka_config()
        .set("group.id", unique_name("reader"))
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut records = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) if m.key() == Some(key.as_bytes()) => {
                records.push(m.payload().map(|p| ControlRecord::parse(p).unwrap()));
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return records,
            _ => {}
        }
    }
    panic!("{topic} not read to its end");
}

fn topic_partitions(topic: &str) -> Option<usize> {
    let consumer: BaseConsumer = testbed().kafka_config().create().unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let found = metadata.topics().iter().find(|t| t.name() == topic)?;
    (found.error().is_none() && !found.partitions().is_empty()).then(|| found.partitions().len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_is_created_tuned_restarted_and_deleted() {
    let bed = testbed();
    let client = bed.kube_client().await.unwrap();
    install_crd(client.clone()).await;
    let namespace = bed.namespace("ctl").await.unwrap();
    let ns = namespace.name().to_owned();
    let control = bed.topic("control", 1).await.unwrap();
    let heartbeats = bed.topic("heartbeats", 1).await.unwrap();
    let controller = Controller::start(&ns, &control, &heartbeats).await;

    let pipelines: Api<ShopPipeline> = Api::namespaced(client.clone(), &ns);
    let spec = ShopPipelineSpec {
        orders_per_second: 20.0,
        payment_failure_ratio: 0.1,
        paused: false,
        seed: Some(42),
        replicas: None,
        partitions: Some(3),
    };
    pipelines
        .create(&PostParams::default(), &ShopPipeline::new("demo", spec))
        .await
        .unwrap();
    let key = format!("{ns}/demo");

    // Create: Deployments owned by the pipeline, topics, and the control record.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let created = three_deployments(&client, &ns, "demo").await;
    for deployment in &created {
        let owner = &deployment.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("ShopPipeline", "demo")
        );
    }
    // Topics are created after the Deployments are applied: wait for them.
    eventually("the pipeline's topics with 3 partitions", async || {
        (topic_partitions(&format!("{ns}.demo.orders")) == Some(3)
            && topic_partitions(&format!("{ns}.demo.payments")) == Some(3))
        .then_some(())
    })
    .await;
    let first = eventually("the first control record", async || {
        records_under(control.name(), &key)
            .into_iter()
            .flatten()
            .last()
    })
    .await;
    assert_eq!(
        (
            first.orders_per_second,
            first.payment_failure_ratio,
            first.seed
        ),
        (20.0, 0.1, 42)
    );

    let status = eventually("a status", async || {
        pipelines
            .get_status("demo")
            .await
            .ok()?
            .status
            .filter(|s| s.observed_generation == Some(1))
    })
    .await;
    assert_eq!(status.effective.map(|e| e.orders_per_second), Some(20.0));
    let applied = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Applied")
        .unwrap();
    assert_eq!(
        applied.reason, "NoLiveReplicas",
        "no services run in this test"
    );

    // Tune: a new control record; the Pod templates are untouched.
    let templates_before: Vec<_> = created.iter().map(|d| d.metadata.generation).collect();
    let patch = serde_json::json!({"spec": {"ordersPerSecond": 200.0}});
    pipelines
        .patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let tuned = eventually("the tuned control record", async || {
        records_under(control.name(), &key)
            .into_iter()
            .flatten()
            .find(|r| r.orders_per_second == 200.0)
    })
    .await;
    assert!(tuned.generation > first.generation);
    let templates_after: Vec<_> = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|d| d.metadata.generation)
        .collect();
    assert_eq!(
        templates_before, templates_after,
        "tuning must not restart Pods"
    );

    // Restart: the new leader converges without publishing the same record again. It
    // starts with no memory of what was published; a spec change that leaves the tuning
    // alone (one more payment replica) makes it reconcile for certain, and once it has
    // reported that generation, every reconcile since the restart has run to its end.
    let published_before = records_under(control.name(), &key).len();
    controller.stop().await;
    let controller = Controller::start(&ns, &control, &heartbeats).await;
    let patch =
        serde_json::json!({"spec": {"replicas": {"orders": 1, "payments": 2, "notifications": 1}}});
    pipelines
        .patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually(
        "the restarted controller to reconcile generation 3",
        async || {
            let status = pipelines.get_status("demo").await.ok()?.status?;
            (status.observed_generation == Some(3)).then_some(())
        },
    )
    .await;
    assert_eq!(records_under(control.name(), &key).len(), published_before);

    // Delete: Deployments are garbage-collected, topics swept, the record tombstoned.
    pipelines
        .delete("demo", &DeleteParams::background())
        .await
        .unwrap();
    eventually("Deployments collected", async || {
        deployments
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    eventually("topics swept", async || {
        (topic_partitions(&format!("{ns}.demo.orders")).is_none()
            && topic_partitions(&format!("{ns}.demo.payments")).is_none())
        .then_some(())
    })
    .await;
    assert_eq!(
        records_under(control.name(), &key).last(),
        Some(&None),
        "control record removed"
    );
    controller.stop().await;
}
