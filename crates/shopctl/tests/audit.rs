//! `shopctl audit` against the test bed's real Kafka, run as the binary a user runs: it
//! reads both topics to their ends as of its start, counts only committed payments, and
//! its exit code and output say whether every order got exactly one payment.
//!
//! Every test writes its own orders and payments to fresh topics and waits for the broker
//! to acknowledge them (payments commit in transactions, as payment-service writes them)
//! before the audit starts, so the audit sees exactly what the test wrote.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::process::Output;
use std::time::{Duration, SystemTime};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, FutureProducer, FutureRecord, Producer, ThreadedProducer,
};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::Map;
use shop_domain::time::rfc3339;
use shop_domain::{Amount, Order, Payment, PaymentStatus};
use shop_testkit::{TestTopic, testbed, unique_name};
use tokio::process::Command;

const TIMEOUT: Duration = Duration::from_secs(30);

/// One test's pipeline topics.
struct Bed {
    orders: TestTopic,
    payments: TestTopic,
}

async fn bed(partitions: i32) -> Bed {
    Bed {
        orders: testbed().topic("audit-orders", partitions).await.unwrap(),
        payments: testbed().topic("audit-payments", partitions).await.unwrap(),
    }
}

impl Bed {
    /// The line a clean or failed audit of this bed starts with.
    fn line(&self, counts: &str, verdict: &str) -> String {
        format!(
            "audit {} -> {}: {counts}: {verdict}",
            self.orders.name(),
            self.payments.name()
        )
    }
}

fn producer() -> FutureProducer {
    testbed()
        .kafka_config()
        .set("linger.ms", "0")
        .create()
        .unwrap()
}

/// Writes the orders as order-service does (key = order id); returns once the broker
/// acknowledged all of them.
async fn write_orders(topic: &str, order_ids: impl IntoIterator<Item = u64>) {
    let producer = producer();
    let mut acks = Vec::new();
    for order_id in order_ids {
        let order = Order::new(
            order_id,
            1 + (order_id % 100) as u32,
            Amount::from_cents(1_999),
            rfc3339(SystemTime::now()),
        );
        let (key, value) = (order.key(), order.to_json());
        let record = FutureRecord::to(topic).key(&key).payload(&value);
        acks.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for ack in acks {
        ack.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// Writes one record as is (no transaction): `None` is a tombstone.
async fn write_raw(topic: &str, key: &str, value: Option<&[u8]>) {
    let mut record = FutureRecord::<str, [u8]>::to(topic).key(key);
    if let Some(value) = value {
        record = record.payload(value);
    }
    producer()
        .send(record, TIMEOUT)
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// The successful payment of `order_id` as payment-service writes it.
fn payment(order_id: u64) -> Payment {
    Payment {
        order_id,
        user_id: Some(1 + (order_id % 100) as u32),
        amount: Some(Amount::from_cents(1_999)),
        status: PaymentStatus::Successful,
        reason: None,
        processed_at: Some(rfc3339(SystemTime::now())),
        order_created_at: None,
        extra: Map::new(),
    }
}

/// A transactional producer, like a payment-service replica, with a transaction begun
/// and the payments of `order_ids` in the log (flushed) but neither committed nor
/// aborted.
fn open_transaction(topic: &str, order_ids: Vec<u64>) -> ThreadedProducer<DefaultProducerContext> {
    let producer: ThreadedProducer<DefaultProducerContext> = testbed()
        .kafka_config()
        .set("transactional.id", unique_name("audit-tx"))
        .set("linger.ms", "0")
        .create()
        .unwrap();
    producer.init_transactions(TIMEOUT).unwrap();
    producer.begin_transaction().unwrap();
    for order_id in order_ids {
        let (key, value) = (order_id.to_string(), payment(order_id).to_json());
        producer
            .send(BaseRecord::to(topic).key(&key).payload(&value))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(TIMEOUT).unwrap();
    producer
}

/// Writes the payments of `order_ids` in one transaction and commits it, or aborts it
/// with the payments in the log; returns once the broker has the outcome.
async fn transaction(topic: &str, order_ids: impl IntoIterator<Item = u64>, commit: bool) {
    let (topic, order_ids) = (topic.to_owned(), order_ids.into_iter().collect());
    tokio::task::spawn_blocking(move || {
        let producer = open_transaction(&topic, order_ids);
        if commit {
            producer.commit_transaction(TIMEOUT).unwrap();
        } else {
            producer.abort_transaction(TIMEOUT).unwrap();
        }
    })
    .await
    .unwrap();
}

/// How many records for `order_id` the payments topic holds, committed or not (read
/// uncommitted, as a consumer that ignores transactions would).
async fn records_in_log(topic: &str, order_id: u64) -> usize {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = testbed()
            .kafka_config()
            .set("group.id", unique_name("audit-check"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_uncommitted")
            .create()
            .unwrap();
        let metadata = consumer.fetch_metadata(Some(&topic), TIMEOUT).unwrap();
        let mut assignment = TopicPartitionList::new();
        for partition in metadata.topics()[0].partitions() {
            assignment
                .add_partition_offset(&topic, partition.id(), Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let (key, mut found) = (order_id.to_string(), 0);
        let mut at_end = HashSet::new();
        while at_end.len() < assignment.count() {
            match consumer
                .poll(TIMEOUT)
                .expect("neither a record nor the end")
            {
                Ok(message) => found += usize::from(message.key() == Some(key.as_bytes())),
                Err(KafkaError::PartitionEOF(partition)) => {
                    at_end.insert(partition);
                }
                Err(error) => panic!("reading {topic}: {error}"),
            }
        }
        found
    })
    .await
    .unwrap()
}

/// Runs `shopctl audit` on the bed's topics, settings from the environment.
async fn audit(bed: &Bed, args: &[&str]) -> Output {
    audit_topics(bed.orders.name(), bed.payments.name(), args).await
}

async fn audit_topics(orders: &str, payments: &str, args: &[&str]) -> Output {
    let run = Command::new(env!("CARGO_BIN_EXE_shopctl"))
        .arg("audit")
        .args(args)
        .env("KAFKA_BOOTSTRAP_SERVERS", testbed().kafka_bootstrap())
        .env("ORDERS_TOPIC", orders)
        .env("PAYMENTS_TOPIC", payments)
        .env("RUST_LOG", "info")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("audit did not exit")
        .unwrap()
}

fn stdout(run: &Output) -> String {
    String::from_utf8_lossy(&run.stdout).into_owned()
}

#[tokio::test]
async fn one_committed_payment_per_order_passes() {
    let bed = bed(3).await;
    write_orders(bed.orders.name(), 1..=300).await;
    for batch in [1..=100, 101..=200, 201..=300] {
        transaction(bed.payments.name(), batch, true).await;
    }

    let run = audit(&bed, &[]).await;

    assert!(run.status.success(), "{run:#?}");
    assert_eq!(
        stdout(&run),
        bed.line(
            "300 orders, 300 payments, 0 orders without a payment, 0 duplicate payments, 0 payments for unknown orders",
            "OK\n"
        ),
        "{run:#?}"
    );
}

#[tokio::test]
async fn a_second_payment_fails_naming_its_order() {
    let bed = bed(3).await;
    write_orders(bed.orders.name(), 1001..=1050).await;
    transaction(bed.payments.name(), 1001..=1050, true).await;
    transaction(bed.payments.name(), [1017], true).await;

    let run = audit(&bed, &[]).await;

    assert_eq!(run.status.code(), Some(1), "{run:#?}");
    assert_eq!(
        stdout(&run),
        bed.line(
            "50 orders, 51 payments, 0 orders without a payment, 1 duplicate payments, 0 payments for unknown orders",
            "FAILED\nduplicate payments: 1017 (2 payments)\n"
        ),
        "{run:#?}"
    );
}

#[tokio::test]
async fn a_missing_payment_fails_naming_its_order_and_unparsable_records_do_not() {
    let bed = bed(3).await;
    write_orders(bed.orders.name(), 1001..=1050).await;
    write_raw(bed.orders.name(), "1051", Some(b"not json")).await;
    transaction(
        bed.payments.name(),
        (1001..=1050).filter(|&id| id != 1033),
        true,
    )
    .await;
    write_raw(bed.payments.name(), "1033", None).await;

    let run = audit(&bed, &[]).await;

    assert_eq!(run.status.code(), Some(1), "{run:#?}");
    assert_eq!(
        stdout(&run),
        bed.line(
            "50 orders (1 unparsable record skipped), 49 payments (1 unparsable record skipped), 1 orders without a payment, 0 duplicate payments, 0 payments for unknown orders",
            "FAILED\norders without a payment: 1033\n"
        ),
        "{run:#?}"
    );
}

#[tokio::test]
async fn a_payment_for_an_unknown_order_fails_naming_it() {
    let bed = bed(1).await;
    write_orders(bed.orders.name(), 1001..=1010).await;
    transaction(bed.payments.name(), (1001..=1010).chain([7]), true).await;

    let run = audit(&bed, &[]).await;

    assert_eq!(run.status.code(), Some(1), "{run:#?}");
    assert_eq!(
        stdout(&run),
        bed.line(
            "10 orders, 11 payments, 0 orders without a payment, 0 duplicate payments, 1 payments for unknown orders",
            "FAILED\npayments for unknown orders: 7 (1 payment)\n"
        ),
        "{run:#?}"
    );
}

#[tokio::test]
async fn a_duplicate_in_an_aborted_transaction_does_not_count() {
    let bed = bed(3).await;
    write_orders(bed.orders.name(), 1001..=1050).await;
    transaction(bed.payments.name(), 1001..=1050, true).await;
    transaction(bed.payments.name(), [1010, 1020], false).await;
    // The aborted duplicates are in the log: read uncommitted, the audit would fail.
    assert_eq!(records_in_log(bed.payments.name(), 1010).await, 2);

    let run = audit(&bed, &[]).await;

    assert!(run.status.success(), "{run:#?}");
    assert_eq!(
        stdout(&run),
        bed.line(
            "50 orders, 50 payments, 0 orders without a payment, 0 duplicate payments, 0 payments for unknown orders",
            "OK\n"
        ),
        "{run:#?}"
    );
}

#[tokio::test]
async fn a_transaction_still_open_at_the_start_is_not_waited_for() {
    let bed = bed(1).await;
    write_orders(bed.orders.name(), 1001..=1010).await;
    transaction(bed.payments.name(), 1001..=1010, true).await;
    let topic = bed.payments.name().to_owned();
    let open = tokio::task::spawn_blocking(move || open_transaction(&topic, vec![1005]))
        .await
        .unwrap();

    // The end of the payments topic is its last stable offset, before the open
    // transaction: the audit ends (well within its timeout) without it.
    let run = audit(&bed, &["--timeout", "60s"]).await;
    assert!(run.status.success(), "{run:#?}");
    assert!(
        stdout(&run).contains(": 10 orders, 10 payments, "),
        "{run:#?}"
    );

    // Committed, the same payment is a duplicate for the next audit.
    tokio::task::spawn_blocking(move || open.commit_transaction(TIMEOUT).unwrap())
        .await
        .unwrap();
    let run = audit(&bed, &[]).await;
    assert_eq!(run.status.code(), Some(1), "{run:#?}");
    assert!(
        stdout(&run).ends_with("FAILED\nduplicate payments: 1005 (2 payments)\n"),
        "{run:#?}"
    );
}

#[tokio::test]
async fn a_timeout_reports_what_was_read_and_fails() {
    let bed = bed(1).await;
    write_orders(bed.orders.name(), 1001..=1010).await;
    transaction(bed.payments.name(), 1001..=1010, true).await;

    let run = audit(&bed, &["--timeout", "0s"]).await;

    assert_eq!(run.status.code(), Some(1), "{run:#?}");
    // 10 payments and the commit marker.
    assert_eq!(
        stdout(&run),
        format!(
            "audit {0} -> {1}: timed out after 0s before reaching the ends of {0} (10 offsets left) and {1} (11 offsets left): 0 orders, 0 payments read\n",
            bed.orders.name(),
            bed.payments.name()
        ),
        "{run:#?}"
    );
}

#[tokio::test]
async fn a_missing_topic_is_an_error_naming_its_flag() {
    let bed = bed(1).await;
    let missing = unique_name("audit-missing");

    let run = audit_topics(&missing, bed.payments.name(), &[]).await;

    assert_eq!(run.status.code(), Some(1), "{run:#?}");
    assert!(run.stdout.is_empty(), "{run:#?}");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains(&format!(
            "orders topic {missing} does not exist: check --orders-topic (or ORDERS_TOPIC)"
        )),
        "{run:#?}"
    );
}
