//! The control loop's Kafka half on the test bed's broker: control records are followed
//! live, compacted tables read to their end, heartbeats published and removed, and id
//! blocks never overlap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use shop_domain::{ControlRecord, Heartbeat};
use shop_kafka::KafkaArgs;
use shop_kafka::compacted::read_table;
use shop_kafka::heartbeat::{Heartbeats, Report};
use shop_kafka::topics::{control_plane_topics, ensure_topics};
use shop_testkit::{TestTopic, testbed, unique_name};
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(20);

/// Settings on unique control-plane topics, deleted when the returned guards drop.
async fn isolated_args() -> (KafkaArgs, Vec<TestTopic>) {
    let bed = testbed();
    let control = bed.topic("control", 1).await.unwrap();
    let heartbeats = bed.topic("heartbeats", 1).await.unwrap();
    let ids = bed.topic("ids", 1).await.unwrap();
    let mut args = KafkaArgs::for_broker(bed.kafka_bootstrap());
    args.pipeline = format!("ns/{}", unique_name("pipe"));
    args.control_topic = control.name().to_owned();
    args.heartbeat_topic = heartbeats.name().to_owned();
    args.id_block_topic = ids.name().to_owned();
    (args, vec![control, heartbeats, ids])
}

fn record(generation: u64, rate: f64) -> ControlRecord {
    ControlRecord::parse(
        format!(
            r#"{{"generation":{generation},"orders_per_second":{rate},"payment_failure_ratio":0.1,"paused":false,"seed":7}}"#
        )
        .as_bytes(),
    )
    .unwrap()
}

async fn publish(args: &KafkaArgs, key: &str, value: &[u8]) {
    let producer: FutureProducer = args.client_config("test").create().unwrap();
    producer
        .send(
            FutureRecord::to(&args.control_topic)
                .key(key)
                .payload(value),
            TIMEOUT,
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

#[tokio::test]
async fn follower_starts_with_the_latest_record_and_applies_new_ones_live() {
    let (args, _topics) = isolated_args().await;
    publish(&args, &args.pipeline, &record(1, 5.0).to_json()).await;
    publish(&args, &args.pipeline, &record(2, 10.0).to_json()).await;
    publish(&args, "other/pipeline", &record(9, 99.0).to_json()).await;
    publish(&args, &args.pipeline, b"{not json").await;

    let shutdown = CancellationToken::new();
    let mut rx = shop_kafka::control::follow(&args, shutdown.clone())
        .await
        .unwrap();
    let initial = rx
        .borrow_and_update()
        .clone()
        .expect("latest record at start");
    assert_eq!((initial.generation, initial.orders_per_second), (2, 10.0));

    let landed = Instant::now();
    publish(&args, &args.pipeline, &record(3, 20.0).to_json()).await;
    tokio::time::timeout(TIMEOUT, rx.changed())
        .await
        .unwrap()
        .unwrap();
    let seen_after = landed.elapsed();
    assert_eq!(rx.borrow().as_ref().map(|r| r.generation), Some(3));
    // Generous bound for a loaded CI machine; the follower asks for 10 ms fetches.
    assert!(seen_after < Duration::from_secs(2), "took {seen_after:?}");

    // A replayed (older) generation is ignored.
    publish(&args, &args.pipeline, &record(2, 1.0).to_json()).await;
    publish(&args, &args.pipeline, &record(4, 40.0).to_json()).await;
    tokio::time::timeout(TIMEOUT, rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rx.borrow().as_ref().map(|r| r.generation), Some(4));
    shutdown.cancel();
}

#[tokio::test]
async fn follower_of_a_pipeline_without_records_starts_empty() {
    let (args, _topics) = isolated_args().await;
    let shutdown = CancellationToken::new();
    let rx = shop_kafka::control::follow(&args, shutdown.clone())
        .await
        .unwrap();
    assert!(rx.borrow().is_none());
    shutdown.cancel();
}

#[tokio::test]
async fn heartbeats_are_published_and_removed_at_shutdown() {
    let (args, _topics) = isolated_args().await;
    let shutdown = CancellationToken::new();
    let report = || Report {
        applied_generation: Some(3),
        counters: [("produced".to_owned(), 42)].into(),
        ..Report::default()
    };
    let heartbeats = Heartbeats::spawn(
        &args,
        "order-service",
        "i-1",
        Duration::from_secs(60),
        report,
        shutdown.clone(),
    )
    .unwrap();
    heartbeats.publish_now();

    let key = format!("{}/order-service/i-1", args.pipeline);
    let deadline = Instant::now() + TIMEOUT;
    let heartbeat = loop {
        let table = read_table(&args, &args.heartbeat_topic, TIMEOUT)
            .await
            .unwrap();
        if let Some(value) = table.get(&key) {
            break Heartbeat::parse(value).unwrap();
        }
        assert!(Instant::now() < deadline, "no heartbeat under {key}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(heartbeat.applied_generation, Some(3));
    assert_eq!(heartbeat.counters["produced"], 42);
    assert_eq!(heartbeat.pipeline, args.pipeline);

    shutdown.cancel();
    heartbeats.finished().await;
    let table = read_table(&args, &args.heartbeat_topic, TIMEOUT)
        .await
        .unwrap();
    assert!(
        !table.contains_key(&key),
        "heartbeat removed by its tombstone"
    );
}

#[tokio::test]
async fn id_blocks_never_overlap_and_increase() {
    let (args, _topics) = isolated_args().await;
    let producer: FutureProducer = args.client_config("test").create().unwrap();
    let mut blocks = Vec::new();
    for instance in ["a", "b", "a"] {
        let block =
            shop_kafka::ids::claim_block(&producer, &args.id_block_topic, &args.pipeline, instance)
                .await
                .unwrap();
        blocks.push(block);
    }
    let firsts: Vec<u64> = blocks.iter_mut().map(|b| b.next().unwrap()).collect();
    assert_eq!(firsts[0], shop_domain::ids::FIRST_ORDER_ID);
    assert!(
        firsts
            .windows(2)
            .all(|w| w[1] >= w[0] + shop_domain::ids::BLOCK_SIZE - 1)
    );
}

#[tokio::test]
async fn ensuring_topics_twice_is_harmless() {
    let (mut args, _topics) = isolated_args().await;
    args.control_topic = unique_name("ensure-control");
    ensure_topics(&args, &control_plane_topics(&args))
        .await
        .unwrap();
    ensure_topics(&args, &control_plane_topics(&args))
        .await
        .unwrap();
    let table = read_table(&args, &args.control_topic, TIMEOUT)
        .await
        .unwrap();
    assert!(table.is_empty());
    testbed()
        .kafka_admin()
        .unwrap()
        .delete_topics(&[&args.control_topic], &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();
}

async fn tombstone(args: &KafkaArgs, key: &str) {
    let producer: FutureProducer = args.client_config("test").create().unwrap();
    producer
        .send(
            FutureRecord::<str, [u8]>::to(&args.control_topic).key(key),
            TIMEOUT,
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// A pipeline deleted and created again starts over at generation 1: the tombstone
/// between them resets the follower, at start and live.
#[tokio::test]
async fn a_tombstone_resets_the_follower_for_a_pipeline_created_again() {
    let (args, _topics) = isolated_args().await;
    publish(&args, &args.pipeline, &record(5, 50.0).to_json()).await;
    tombstone(&args, &args.pipeline).await;
    publish(&args, &args.pipeline, &record(1, 3.0).to_json()).await;

    let shutdown = CancellationToken::new();
    let mut rx = shop_kafka::control::follow(&args, shutdown.clone())
        .await
        .unwrap();
    let initial = rx.borrow_and_update().clone().expect("a record at start");
    assert_eq!(
        (initial.generation, initial.orders_per_second),
        (1, 3.0),
        "a new replica applies the re-created pipeline's record, not the deleted one's"
    );

    // Deleted and created again while the follower runs.
    tombstone(&args, &args.pipeline).await;
    publish(&args, &args.pipeline, &record(1, 4.0).to_json()).await;
    let applied = tokio::time::timeout(TIMEOUT, async {
        loop {
            rx.changed().await.unwrap();
            if let Some(record) = rx.borrow_and_update().clone() {
                return record;
            }
        }
    })
    .await
    .expect("the re-created pipeline's record was not applied");
    assert_eq!((applied.generation, applied.orders_per_second), (1, 4.0));
    shutdown.cancel();
}
