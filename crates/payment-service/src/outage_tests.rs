//! Faults on librdkafka's in-process mock cluster: a broker outage (the real test-bed
//! broker is shared and must not be stopped; `shop-e2e/tests/broker_outage.rs` stops one of
//! its own), and a send refused inside a transaction (error injection, which a real broker
//! cannot be asked for). The mock does not implement CreateTopics, so the tests create the
//! topics themselves and start the service after `run`'s topic step, at `serve`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use shop_domain::{Amount, Order, Payment};
use shop_kafka::KafkaArgs;
use shop_runtime::{Health, Metrics};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{Config, serve};

const BROKER: i32 = 1;

fn payments_committed(metrics: &Metrics) -> u64 {
    counter(metrics, "shopstream_payments_processed_total{")
}

/// The sum of the series whose line starts with `prefix`.
fn counter(metrics: &Metrics, prefix: &str) -> u64 {
    metrics
        .encode()
        .lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn wait_for(what: &str, timeout: Duration, condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < timeout, "{what} not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn produce(bootstrap: &str, ids: std::ops::RangeInclusive<u64>) -> tokio::task::JoinHandle<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    tokio::spawn(async move {
        for id in ids {
            let order = Order::new(
                id,
                7,
                Amount::from_cents(2_500),
                "2025-01-01T00:00:00Z".into(),
            );
            producer
                .send(
                    FutureRecord::to("orders")
                        .key(&id.to_string())
                        .payload(&order.to_json()),
                    Duration::from_secs(60),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    })
}

/// Every committed payment, read up to the high watermarks.
fn read_payments(bootstrap: &str) -> Vec<Payment> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "outage-reader")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for partition in 0..3 {
        let (_, high) = consumer
            .fetch_watermarks("payments", partition, Duration::from_secs(10))
            .unwrap();
        ends.insert(partition, high);
        assignment
            .add_partition_offset("payments", partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut payments = Vec::new();
    let started = Instant::now();
    while !ends.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "payments not read: {ends:?}"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            payments.push(Payment::parse(message.unwrap().payload().unwrap()).unwrap());
        }
        let position = consumer.position().unwrap();
        ends.retain(|&p, &mut end| {
            !matches!(position.find_partition("payments", p).map(|e| e.offset()),
                      Some(Offset::Offset(at)) if at >= end)
        });
    }
    payments
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_is_survived_without_losing_or_repeating_a_payment() {
    shop_runtime::telemetry::init_for_tests();
    let mock = MockCluster::new(1).unwrap();
    for (topic, partitions) in [
        ("orders", 3),
        ("payments", 3),
        ("dlq", 1),
        ("heartbeats", 1),
    ] {
        mock.create_topic(topic, partitions, 1).unwrap();
    }
    let bootstrap = mock.bootstrap_servers();
    let kafka = KafkaArgs {
        heartbeat_topic: "heartbeats".into(),
        ..KafkaArgs::for_broker(&bootstrap)
    };
    let config = Config {
        orders_topic: "orders".into(),
        payments_topic: "payments".into(),
        dlq_topic: "dlq".into(),
        group_id: "outage".into(),
        ..Config::default()
    };
    let (metrics, health) = (Metrics::new(), Health::new());
    let (_control_tx, control) = watch::channel(None);
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(serve(
        kafka,
        config,
        "outage-0".into(),
        metrics.clone(),
        health.clone(),
        control,
        shutdown.clone(),
        shutdown.child_token(),
    ));

    produce(&bootstrap, 1..=200).await.unwrap();
    wait_for("200 payments", Duration::from_secs(30), || {
        payments_committed(&metrics) == 200
    })
    .await;

    mock.broker_down(BROKER).unwrap();
    let during = produce(&bootstrap, 201..=400);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !service.is_finished(),
        "the service gave up during the outage"
    );
    mock.broker_up(BROKER).unwrap();

    during.await.unwrap();
    wait_for("400 payments", Duration::from_secs(60), || {
        payments_committed(&metrics) == 400
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), service)
        .await
        .expect("no clean stop after the outage")
        .unwrap()
        .unwrap();

    let payments = tokio::task::spawn_blocking(move || read_payments(&bootstrap))
        .await
        .unwrap();
    let mut per_order = BTreeMap::<u64, usize>::new();
    for payment in &payments {
        *per_order.entry(payment.order_id).or_default() += 1;
    }
    assert_eq!(per_order.len(), 400, "orders without a payment");
    assert!(
        per_order.values().all(|&n| n == 1),
        "an order was paid twice"
    );
    drop(mock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_refused_inside_a_transaction_aborts_it_and_replays_the_batch() {
    const N: u64 = 1000;
    shop_runtime::telemetry::init_for_tests();
    let mock = MockCluster::new(1).unwrap();
    for (topic, partitions) in [
        ("orders", 3),
        ("payments", 3),
        ("dlq", 1),
        ("heartbeats", 1),
    ] {
        mock.create_topic(topic, partitions, 1).unwrap();
    }
    let bootstrap = mock.bootstrap_servers();
    // Every order is written before the fault is armed, so the order producer never meets
    // it: the service's producer (and perhaps one heartbeat) does.
    produce(&bootstrap, 1..=N).await.unwrap();
    // The next Produce requests fail with a non-retriable error: the records of the open
    // transaction are not written, and the transaction can only be aborted.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD; 3],
    );

    let kafka = KafkaArgs {
        heartbeat_topic: "heartbeats".into(),
        ..KafkaArgs::for_broker(&bootstrap)
    };
    let config = Config {
        orders_topic: "orders".into(),
        payments_topic: "payments".into(),
        dlq_topic: "dlq".into(),
        group_id: "refused".into(),
        ..Config::default()
    };
    let (metrics, health) = (Metrics::new(), Health::new());
    let (_control_tx, control) = watch::channel(None);
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(serve(
        kafka,
        config,
        "refused-0".into(),
        metrics.clone(),
        health.clone(),
        control,
        shutdown.clone(),
        shutdown.child_token(),
    ));

    wait_for("an aborted transaction", Duration::from_secs(30), || {
        counter(&metrics, "shopstream_transactions_aborted_total") >= 1
    })
    .await;
    wait_for(
        "every order's payment committed",
        Duration::from_secs(60),
        || payments_committed(&metrics) == N,
    )
    .await;
    assert!(
        !service.is_finished(),
        "the service stopped at the refused send"
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), service)
        .await
        .expect("no clean stop")
        .unwrap()
        .unwrap();
    // Counted once per order in committed transactions: the aborted attempts not at all.
    assert_eq!(payments_committed(&metrics), N);
    let aborted = counter(&metrics, "shopstream_transactions_aborted_total");

    // The mock writes no transaction markers and reports no aborted transactions, so its
    // `read_committed` readers see the records of aborted transactions too: here every
    // order has at least one payment. That each has exactly one committed payment is
    // shown on the real broker (tests/aborts.rs).
    let payments = tokio::task::spawn_blocking(move || read_payments(&bootstrap))
        .await
        .unwrap();
    let paid: std::collections::BTreeSet<u64> = payments.iter().map(|p| p.order_id).collect();
    let unpaid: Vec<u64> = (1..=N).filter(|id| !paid.contains(id)).collect();
    assert!(unpaid.is_empty(), "orders without a payment: {unpaid:?}");
    eprintln!(
        "{N} orders paid after {aborted} aborted transaction(s); {} payment records in all",
        payments.len()
    );
    drop(mock);
}
