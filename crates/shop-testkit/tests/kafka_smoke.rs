//! The test bed's broker is a real Kafka: transactions commit and abort, `read_committed`
//! consumers see only committed records, and a consume-transform-produce loop commits its
//! input offsets inside its transaction. These are the guarantees payment-service builds on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use shop_testkit::{testbed, unique_name};

const TIMEOUT: Duration = Duration::from_secs(30);

fn transactional_producer() -> FutureProducer {
    testbed()
        .kafka_config()
        .set("transactional.id", unique_name("smoke-tx"))
        .set("enable.idempotence", "true")
        .create()
        .expect("transactional producer")
}

fn read_committed_consumer(group: &str) -> StreamConsumer {
    testbed()
        .kafka_config()
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

async fn send(producer: &FutureProducer, topic: &str, value: &str) {
    producer
        .send(FutureRecord::to(topic).key(value).payload(value), TIMEOUT)
        .await
        .map_err(|(e, _)| e)
        .expect("send");
}

/// Reads values until `last` arrives (inclusive), failing after `TIMEOUT`.
async fn read_until(consumer: &StreamConsumer, last: &str) -> Vec<String> {
    let mut values = Vec::new();
    tokio::time::timeout(TIMEOUT, async {
        loop {
            let message = consumer.recv().await.expect("recv");
            let value = String::from_utf8(message.payload().expect("payload").to_vec()).unwrap();
            values.push(value.clone());
            if value == last {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{last:?} not seen within {TIMEOUT:?}; saw {values:?}"));
    values
}

#[tokio::test]
async fn read_committed_consumer_sees_committed_batches_only() {
    let bed = testbed();
    let topic = bed.topic("smoke-tx", 1).await.unwrap();
    let producer = transactional_producer();
    producer.init_transactions(TIMEOUT).unwrap();

    producer.begin_transaction().unwrap();
    for v in ["committed-1", "committed-2"] {
        send(&producer, topic.name(), v).await;
    }
    producer.commit_transaction(TIMEOUT).unwrap();

    producer.begin_transaction().unwrap();
    for v in ["aborted-1", "aborted-2"] {
        send(&producer, topic.name(), v).await;
    }
    producer.abort_transaction(TIMEOUT).unwrap();

    producer.begin_transaction().unwrap();
    send(&producer, topic.name(), "committed-3").await;
    producer.commit_transaction(TIMEOUT).unwrap();

    let group = bed.group("smoke-tx");
    let consumer = read_committed_consumer(group.id());
    consumer.subscribe(&[topic.name()]).unwrap();
    let seen = read_until(&consumer, "committed-3").await;
    assert_eq!(seen, ["committed-1", "committed-2", "committed-3"]);
}

#[tokio::test]
async fn consume_transform_produce_commits_offsets_in_the_transaction() {
    let bed = testbed();
    let input = bed.topic("smoke-in", 1).await.unwrap();
    let output = bed.topic("smoke-out", 1).await.unwrap();
    let group = bed.group("smoke-ctp");

    let plain: FutureProducer = bed.kafka_config().create().unwrap();
    for n in 1..=5 {
        send(&plain, input.name(), &format!("order-{n}")).await;
    }

    let consumer = read_committed_consumer(group.id());
    consumer.subscribe(&[input.name()]).unwrap();
    let producer = transactional_producer();
    producer.init_transactions(TIMEOUT).unwrap();
    producer.begin_transaction().unwrap();
    let mut next_offset = 0;
    for _ in 1..=5 {
        let message = tokio::time::timeout(TIMEOUT, consumer.recv())
            .await
            .unwrap()
            .unwrap();
        let value = std::str::from_utf8(message.payload().unwrap()).unwrap();
        send(&producer, output.name(), &value.replace("order", "payment")).await;
        next_offset = message.offset() + 1;
    }
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(input.name(), 0, Offset::Offset(next_offset))
        .unwrap();
    let group_metadata = consumer.group_metadata().expect("group metadata");
    producer
        .send_offsets_to_transaction(&offsets, &group_metadata, TIMEOUT)
        .unwrap();
    producer.commit_transaction(TIMEOUT).unwrap();

    // The group's committed offset moved with the transaction, not by a consumer commit.
    let committed = consumer.committed(TIMEOUT).unwrap();
    let partition = committed.find_partition(input.name(), 0).unwrap();
    assert_eq!(partition.offset(), Offset::Offset(5));

    // And the transformed records are visible to read_committed readers.
    let reader_group = bed.group("smoke-ctp-reader");
    let reader = read_committed_consumer(reader_group.id());
    reader.subscribe(&[output.name()]).unwrap();
    let seen = read_until(&reader, "payment-5").await;
    assert_eq!(
        seen,
        (1..=5).map(|n| format!("payment-{n}")).collect::<Vec<_>>()
    );
}
