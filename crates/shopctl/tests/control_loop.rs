//! shopctl against the test bed's real Kafka: `set` writes control records the services
//! read, `status` shows the replicas' heartbeats. Every test uses its own control and
//! heartbeat topics, so tests never see each other's records.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, SystemTime};

use rdkafka::producer::{FutureProducer, FutureRecord};
use shop_domain::control::heartbeat_key;
use shop_domain::time::rfc3339;
use shop_domain::{ControlRecord, Heartbeat};
use shop_kafka::KafkaArgs;
use shop_kafka::compacted::read_table;
use shop_testkit::{TestTopic, testbed, unique_name};
use shopctl::change::defaults;
use shopctl::{Change, Error};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Kafka settings of one test: unique pipeline, control and heartbeat topics.
struct Bed {
    kafka: KafkaArgs,
    _topics: Vec<TestTopic>,
}

async fn bed() -> Bed {
    let control = testbed().topic("shopctl-control", 1).await.unwrap();
    let heartbeats = testbed().topic("shopctl-heartbeats", 1).await.unwrap();
    Bed {
        kafka: KafkaArgs {
            pipeline: unique_name("shop/demo"),
            control_topic: control.name().to_owned(),
            heartbeat_topic: heartbeats.name().to_owned(),
            ..KafkaArgs::for_broker(testbed().kafka_bootstrap())
        },
        _topics: vec![control, heartbeats],
    }
}

/// The record stored for the pipeline, as services read it.
async fn stored(kafka: &KafkaArgs) -> Option<ControlRecord> {
    let table = read_table(kafka, &kafka.control_topic, TIMEOUT)
        .await
        .unwrap();
    table
        .get(&kafka.pipeline)
        .map(|bytes| ControlRecord::parse(bytes).unwrap())
}

#[tokio::test]
async fn set_writes_increasing_generations_and_keeps_unspecified_fields() {
    let bed = bed().await;
    let kafka = &bed.kafka;

    let first = shopctl::set(
        kafka,
        Change {
            rate: Some(50.0),
            failure_ratio: Some(0.2),
            ..Change::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(first.generation, 1);
    assert_eq!(
        (
            first.orders_per_second,
            first.payment_failure_ratio,
            first.paused,
            first.seed
        ),
        (50.0, 0.2, false, 0)
    );
    assert_eq!(stored(kafka).await, Some(first.clone()));

    let second = shopctl::set(
        kafka,
        Change {
            paused: Some(true),
            seed: Some(42),
            ..Change::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        second,
        ControlRecord {
            generation: 2,
            paused: true,
            seed: 42,
            ..first
        }
    );
    assert_eq!(stored(kafka).await, Some(second.clone()));

    let third = shopctl::set(
        kafka,
        Change {
            rate: Some(0.5),
            paused: Some(false),
            ..Change::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(third.generation, 3);
    assert_eq!(third.orders_per_second, 0.5);
    assert_eq!(third.payment_failure_ratio, 0.2);
    assert_eq!(third.seed, 42);
    assert!(!third.paused);
    assert_eq!(stored(kafka).await, Some(third));
}

#[tokio::test]
async fn invalid_values_are_refused_with_a_clear_message() {
    let bed = bed().await;
    let kafka = &bed.kafka;

    for (change, flag) in [
        (
            Change {
                failure_ratio: Some(1.5),
                ..Change::default()
            },
            "--failure-ratio",
        ),
        (
            Change {
                rate: Some(-1.0),
                ..Change::default()
            },
            "--rate",
        ),
    ] {
        let error = shopctl::set(kafka, change).await.unwrap_err();
        assert!(
            matches!(error, Error::InvalidValue { flag: f, .. } if f == flag),
            "{error}"
        );
        assert!(
            error.to_string().starts_with(&format!("invalid {flag} ")),
            "{error}"
        );
    }
    assert_eq!(stored(kafka).await, None, "nothing was written");

    // The same through the binary, as a user types it.
    for (args, expected) in [
        (
            &["set", "--failure-ratio", "1.5"][..],
            "invalid --failure-ratio 1.5: allowed is a number in 0..=1",
        ),
        (
            &["set", "--rate", "-1"][..],
            "invalid --rate -1: allowed is a number in 0..=100000",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_shopctl"))
            .args(args)
            .env("KAFKA_BOOTSTRAP_SERVERS", &kafka.bootstrap_servers)
            .env("PIPELINE", &kafka.pipeline)
            .env("CONTROL_TOPIC", &kafka.control_topic)
            .env("HEARTBEAT_TOPIC", &kafka.heartbeat_topic)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
    assert_eq!(stored(kafka).await, None, "nothing was written");

    // And a valid one through the binary prints what it wrote.
    let output = Command::new(env!("CARGO_BIN_EXE_shopctl"))
        .args([
            "set",
            "--pipeline",
            &kafka.pipeline,
            "--rate",
            "50",
            "--failure-ratio",
            "0.2",
        ])
        .env("KAFKA_BOOTSTRAP_SERVERS", &kafka.bootstrap_servers)
        .env("CONTROL_TOPIC", &kafka.control_topic)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        format!(
            "pipeline {}: generation 1 written (rate 50/s, failure ratio 0.2, running, seed 0)\n",
            kafka.pipeline
        )
    );
}

fn heartbeat(pipeline: &str, service: &str, instance: &str, applied: Option<u64>) -> Heartbeat {
    Heartbeat {
        pipeline: pipeline.into(),
        service: service.into(),
        instance: instance.into(),
        applied_generation: applied,
        orders_per_second: applied.map(|_| 50.0),
        counters: BTreeMap::from([("orders_sent".into(), 120)]),
        timestamp: rfc3339(SystemTime::now()),
        ..Heartbeat::default()
    }
}

#[tokio::test]
async fn status_shows_replicas_from_heartbeats() {
    let bed = bed().await;
    let kafka = &bed.kafka;
    shopctl::set(
        kafka,
        Change {
            rate: Some(50.0),
            ..Change::default()
        },
    )
    .await
    .unwrap();
    shopctl::set(kafka, Change::default()).await.unwrap(); // generation 2

    let other_pipeline = format!("{}-other", kafka.pipeline);
    let producer: FutureProducer = testbed().kafka_config().create().unwrap();
    for beat in [
        heartbeat(&kafka.pipeline, "order-service", "order-0", Some(2)),
        heartbeat(&kafka.pipeline, "order-service", "order-1", Some(1)),
        heartbeat(&kafka.pipeline, "notification-service", "notify-0", None),
        heartbeat(&other_pipeline, "order-service", "elsewhere", Some(2)),
    ] {
        let key = heartbeat_key(&beat.pipeline, &beat.service, &beat.instance);
        let value = beat.to_json();
        producer
            .send(
                FutureRecord::to(&kafka.heartbeat_topic)
                    .key(&key)
                    .payload(&value),
                TIMEOUT,
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let status = shopctl::status(kafka).await.unwrap();
    assert_eq!(status.desired.as_ref().map(|r| r.generation), Some(2));
    let listed: Vec<_> = status
        .replicas
        .iter()
        .map(|r| {
            (
                r.service.as_str(),
                r.instance.as_str(),
                r.is_behind(status.desired.as_ref()),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("notification-service", "notify-0", false),
            ("order-service", "order-0", false),
            ("order-service", "order-1", true),
        ]
    );
    assert!(status.replicas.iter().all(|r| !r.is_stale()));

    // The binary prints the same as a table and as JSON, and exits 0.
    let run = |extra: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_shopctl"))
            .args(["status", "--pipeline", &kafka.pipeline])
            .args(extra)
            .env("KAFKA_BOOTSTRAP_SERVERS", &kafka.bootstrap_servers)
            .env("CONTROL_TOPIC", &kafka.control_topic)
            .env("HEARTBEAT_TOPIC", &kafka.heartbeat_topic)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let table = run(&[]);
    assert!(
        table.starts_with(&format!(
            "pipeline {}: desired generation 2 (rate 50/s",
            kafka.pipeline
        )),
        "{table}"
    );
    assert!(table.contains("SERVICE"), "{table}");
    assert!(table.contains("1 (behind 2)"), "{table}");
    assert!(table.contains("orders_sent=120"), "{table}");
    assert!(!table.contains("elsewhere"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&run(&["--output", "json"])).unwrap();
    assert_eq!(json["replicas"].as_array().unwrap().len(), 3, "{json}");
    assert_eq!(json["replicas"][2]["instance"], "order-1");
    assert_eq!(json["replicas"][2]["behind"], true);
}

/// Writes records as another writer would: `None` is a tombstone.
async fn write_raw(kafka: &KafkaArgs, records: &[(String, Option<Vec<u8>>)]) {
    let producer: FutureProducer = testbed().kafka_config().create().unwrap();
    for (key, value) in records {
        let mut record = FutureRecord::to(&kafka.control_topic).key(key);
        if let Some(value) = value {
            record = record.payload(value);
        }
        producer
            .send(record, TIMEOUT)
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// Records of other pipelines, more than `set` reads back from the end in its first two
/// steps, so it has to go further back to find the pipeline's own.
fn other_pipelines(kafka: &KafkaArgs, count: u64) -> Vec<(String, Option<Vec<u8>>)> {
    (0..count)
        .map(|i| {
            let record = ControlRecord {
                generation: 100 + i,
                ..defaults()
            };
            (
                format!("{}-other-{}", kafka.pipeline, i % 7),
                Some(record.to_json()),
            )
        })
        .collect()
}

#[tokio::test]
async fn set_continues_from_the_latest_record_of_the_pipeline_far_behind_others() {
    let bed = bed().await;
    let kafka = &bed.kafka;
    let record = |generation, rate| {
        Some(
            ControlRecord {
                generation,
                orders_per_second: rate,
                ..defaults()
            }
            .to_json(),
        )
    };
    // The latest record counts, not the highest generation: it is what services applied.
    let mut records = vec![
        (kafka.pipeline.clone(), record(7, 70.0)),
        (kafka.pipeline.clone(), record(3, 30.0)),
    ];
    records.extend(other_pipelines(kafka, 5000));
    write_raw(kafka, &records).await;

    let next = shopctl::set(
        kafka,
        Change {
            failure_ratio: Some(0.3),
            ..Change::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (
            next.generation,
            next.orders_per_second,
            next.payment_failure_ratio
        ),
        (4, 30.0, 0.3)
    );
    assert_eq!(stored(kafka).await, Some(next));
}

#[tokio::test]
async fn set_after_the_pipeline_was_deleted_starts_again_at_generation_one() {
    let bed = bed().await;
    let kafka = &bed.kafka;
    for rate in [10.0, 20.0] {
        shopctl::set(
            kafka,
            Change {
                rate: Some(rate),
                ..Change::default()
            },
        )
        .await
        .unwrap();
    }
    let mut records = vec![(kafka.pipeline.clone(), None)];
    records.extend(other_pipelines(kafka, 300));
    write_raw(kafka, &records).await;

    let next = shopctl::set(kafka, Change::default()).await.unwrap();
    assert_eq!(next.generation, 1);
    assert_eq!(
        next.orders_per_second,
        defaults().orders_per_second,
        "the deleted pipeline's rate is not carried over"
    );
}

#[tokio::test]
async fn set_creates_a_missing_control_topic_compacted() {
    let bed = bed().await;
    let kafka = KafkaArgs {
        control_topic: unique_name("shopctl-new-control"),
        ..bed.kafka.clone()
    };
    let first = shopctl::set(&kafka, Change::default()).await.unwrap();
    let second = shopctl::set(&kafka, Change::default()).await.unwrap();
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        testbed().kafka_config().create().unwrap();
    let configs = admin
        .describe_configs(
            &[rdkafka::admin::ResourceSpecifier::Topic(
                &kafka.control_topic,
            )],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .unwrap();
    let policy = configs[0]
        .as_ref()
        .unwrap()
        .get("cleanup.policy")
        .and_then(|entry| entry.value.clone());
    admin
        .delete_topics(
            &[&kafka.control_topic],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!((first.generation, second.generation), (1, 2));
    assert_eq!(policy.as_deref(), Some("compact"));
}
