//! A send that the broker refuses inside a transaction, on the test bed's real broker: the
//! dead-letter topic accepts no dead letter (its `max.message.bytes` is set below their
//! size), so the transaction that holds a poison order's dead letter (and the payments
//! of the orders around it, already written) can only be aborted. The service aborts it,
//! processes the batch again, is refused again, and so on, until the topic accepts dead
//! letters again. Then every order has exactly one committed payment: the payments of the
//! aborted attempts are in the log but invisible to `read_committed` readers.
//!
//! librdkafka's mock cluster can inject such errors too (`src/outage_tests.rs`), but it
//! writes no transaction markers, so only a real broker shows what stays committed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use shop_testkit::{testbed, unique_name};
use support::*;

/// The dead-letter topic's record limit during the fault: above a transaction marker's
/// batch (about 80 bytes: the broker writes the abort markers there too, and a limit below
/// them would wedge the transaction at the coordinator), below any dead letter (its error
/// headers alone are longer).
const DLQ_LIMIT: u32 = 100;

async fn set_max_message_bytes(topic: &str, bytes: u32) {
    let admin = testbed().kafka_admin().unwrap();
    let bytes = bytes.to_string();
    let config = AlterConfig::new(ResourceSpecifier::Topic(topic)).set("max.message.bytes", &bytes);
    for result in admin
        .alter_configs([&config], &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
}

/// How many records `topic` holds, read `read_uncommitted` to its high watermarks: the
/// records of aborted transactions too (never the transaction markers).
async fn records_uncommitted(topic: &str) -> usize {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = testbed()
            .kafka_config()
            .set("group.id", unique_name("uncommitted-reader"))
            .set("isolation.level", "read_uncommitted")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for partition in 0..3 {
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition, Duration::from_secs(10))
                .unwrap();
            if high > low {
                ends.insert(partition, high);
                assignment
                    .add_partition_offset(&topic, partition, Offset::Beginning)
                    .unwrap();
            }
        }
        let mut records = 0;
        if ends.is_empty() {
            return records;
        }
        consumer.assign(&assignment).unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while !ends.is_empty() {
            assert!(Instant::now() < deadline, "{topic} not read to {ends:?}");
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                message.unwrap();
                records += 1;
            }
            let position = consumer.position().unwrap();
            ends.retain(|&p, &mut end| {
                !matches!(position.find_partition(&topic, p).map(|e| e.offset()),
                          Some(Offset::Offset(at)) if at >= end)
            });
        }
        records
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_refused_inside_a_transaction_is_aborted_and_its_batch_replayed() {
    const VALID: u64 = 1000;
    let pipeline = Pipeline::new("pay-abort").await;
    let group = testbed().group("pay-abort");
    set_max_message_bytes(pipeline.dlq.name(), DLQ_LIMIT).await;
    let service = start(pipeline.kafka(), pipeline.config(group.id()), "abort-0");

    // Valid orders around one poison order, on every partition.
    let mut records: Vec<(Option<Vec<u8>>, Vec<u8>)> = (1..=VALID / 2)
        .map(|id| (Some(id.to_string().into_bytes()), order(id)))
        .collect();
    records.push((Some(b"poison".to_vec()), b"{\"order_id\": 1".to_vec()));
    records
        .extend((VALID / 2 + 1..=VALID).map(|id| (Some(id.to_string().into_bytes()), order(id))));
    produce(&producer(), pipeline.orders.name(), &records).await;

    // Refused, aborted, replayed and refused again.
    let refused = Instant::now();
    while service
        .metric("shopstream_transactions_aborted_total")
        .unwrap_or_default()
        < 2.0
    {
        assert!(
            !service.has_ended(),
            "the service stopped at the refused send"
        );
        assert!(refused.elapsed() < TIMEOUT, "no transaction aborted twice");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    set_max_message_bytes(pipeline.dlq.name(), 1_048_588).await;

    wait_for_payments(pipeline.payments.name(), VALID as usize).await;
    let dead = loop {
        let dead = read_all(pipeline.dlq.name()).await;
        if !dead.is_empty() {
            break dead;
        }
        assert!(refused.elapsed() < TIMEOUT, "no dead letter committed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let aborted = service
        .metric("shopstream_transactions_aborted_total")
        .unwrap();
    service.stop().await;

    let payments = read_payments(pipeline.payments.name()).await;
    assert_exactly_one_payment_each(&payments, VALID);
    assert_eq!(dead.len(), 1, "one dead letter, committed once");
    assert_eq!(dead[0].key.as_deref(), Some(&b"poison"[..]));
    let written = records_uncommitted(pipeline.payments.name()).await;
    assert!(
        written > payments.len(),
        "the aborted attempts wrote no payment ({written} records), so nothing was shown"
    );
    eprintln!(
        "{VALID} orders paid once; {aborted} transactions aborted, {} payment records of \
         aborted attempts in the log",
        written - payments.len()
    );
}
