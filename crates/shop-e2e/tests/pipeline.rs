//! The whole pipeline on the test bed's broker: orders from order-service become exactly
//! one payment each in payment-service's transactions, and exactly one notification line
//! each: none lost, none duplicated.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use shop_domain::{ControlRecord, Order, Payment};
use shop_kafka::KafkaArgs;
use shop_runtime::{CancellationToken, Health, Metrics};
use shop_testkit::{TestTopic, testbed, unique_name};

const TIMEOUT: Duration = Duration::from_secs(90);

/// Notification lines, shared between the service (writer) and the test (reader).
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn all(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }
}

/// Reads every committed record of `topic` until `count` arrived or nothing came for a
/// while; returns the values.
async fn read_all(topic: &str, count: usize) -> Vec<Vec<u8>> {
    let group = testbed().group("e2e-reader");
    let consumer: StreamConsumer = testbed()
        .kafka_config()
        .set("group.id", group.id())
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut values = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while values.len() < count && Instant::now() < deadline {
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await
        {
            values.push(message.payload().unwrap_or_default().to_vec());
        }
    }
    // Anything beyond `count` would be a duplicate: give it a moment to show up.
    while let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await
    {
        values.push(message.payload().unwrap_or_default().to_vec());
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_becomes_exactly_one_payment_and_one_notification() {
    let bed = testbed();
    let topics: Vec<TestTopic> =
        create_topics(&["orders", "payments", "dlq", "control", "heartbeats", "ids"]).await;
    let [orders, payments, dlq, control, heartbeats, ids] = &topics[..] else {
        unreachable!()
    };
    let mut kafka = KafkaArgs::for_broker(bed.kafka_bootstrap());
    kafka.pipeline = unique_name("e2e");
    kafka.control_topic = control.name().into();
    kafka.heartbeat_topic = heartbeats.name().into();
    kafka.id_block_topic = ids.name().into();
    let shutdown = CancellationToken::new();

    let payment_config = payment_service::Config {
        orders_topic: orders.name().into(),
        payments_topic: payments.name().into(),
        dlq_topic: dlq.name().into(),
        group_id: unique_name("e2e-payments"),
        failure_ratio: 0.3,
        seed: 7,
        ..payment_service::Config::default()
    };
    let payment = tokio::spawn(payment_service::run(
        payment_service::Settings {
            kafka: kafka.clone(),
            config: payment_config,
            instance: "payments-0".into(),
            metrics: Metrics::new(),
            health: Health::new(),
        },
        shutdown.clone(),
    ));

    let lines = Lines::default();
    let notification_config = notification_service::Config {
        payments_topic: payments.name().into(),
        dlq_topic: dlq.name().into(),
        group_id: unique_name("e2e-notifications"),
        ..notification_service::Config::default()
    };
    let notification = tokio::spawn(notification_service::run(
        notification_service::Settings {
            kafka: kafka.clone(),
            config: notification_config,
            instance: "notifications-0".into(),
            metrics: Metrics::new(),
            health: Health::new(),
        },
        lines.clone(),
        shutdown.clone(),
    ));

    let order = tokio::spawn(order_service::run(
        order_service::Settings {
            kafka: kafka.clone(),
            config: order_service::Config::new(orders.name(), 400.0),
            instance: "orders-0".into(),
            metrics: Metrics::new(),
            health: Health::new(),
        },
        shutdown.clone(),
    ));

    // Let orders flow for a while, then pause the generator through the control loop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pause = ControlRecord::parse(
        br#"{"generation":1,"orders_per_second":400,"payment_failure_ratio":0.3,"paused":true,"seed":7}"#,
    )
    .unwrap();
    let producer: FutureProducer = bed.kafka_config().create().unwrap();
    producer
        .send(
            FutureRecord::to(control.name())
                .key(&kafka.pipeline)
                .payload(&pause.to_json()),
            TIMEOUT,
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let written = records_in(orders.name(), 3);
    let order_ids: BTreeSet<u64> = read_all(orders.name(), written)
        .await
        .iter()
        .map(|v| Order::parse(v).unwrap().order_id)
        .collect();
    let n = order_ids.len();
    assert_eq!(n, written, "order ids are unique");
    assert!(n > 500, "only {n} orders were generated");

    let paid: Vec<Payment> = read_all(payments.name(), n)
        .await
        .iter()
        .map(|v| Payment::parse(v).unwrap())
        .collect();
    let paid_ids: BTreeSet<u64> = paid.iter().map(|p| p.order_id).collect();
    assert_eq!(paid.len(), n, "exactly one payment per order");
    assert_eq!(paid_ids, order_ids);
    for payment in &paid {
        let decision = shop_domain::decide(payment.order_id, 0.3, 7);
        assert_eq!(
            payment.is_successful(),
            decision.is_success(),
            "order {}",
            payment.order_id
        );
    }

    let deadline = Instant::now() + TIMEOUT;
    while lines.all().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let printed = lines.all();
    assert_eq!(printed.len(), n, "exactly one line per payment");
    let printed_ids: BTreeSet<u64> = printed
        .iter()
        .map(|line| {
            let id = line
                .split("for Order ")
                .nth(1)
                .unwrap()
                .split([' ', '('])
                .next()
                .unwrap();
            id.parse().unwrap()
        })
        .collect();
    assert_eq!(printed_ids, order_ids);
    assert!(
        printed
            .iter()
            .all(|l| l.starts_with("✅ Payment Successful") || l.starts_with("❌ Payment Failed"))
    );

    shutdown.cancel();
    tokio::time::timeout(TIMEOUT, order)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    tokio::time::timeout(TIMEOUT, payment)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    tokio::time::timeout(TIMEOUT, notification)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Records ever written to `topic` (its producer is not transactional, so the sum of
/// the high watermarks counts them exactly).
fn records_in(topic: &str, partitions: i32) -> usize {
    let consumer: StreamConsumer = testbed().kafka_config().create().unwrap();
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .sum::<i64>() as usize
}

async fn create_topics(prefixes: &[&str]) -> Vec<TestTopic> {
    let mut topics = Vec::new();
    for prefix in prefixes {
        let partitions = if ["orders", "payments"].contains(prefix) {
            3
        } else {
            1
        };
        topics.push(
            testbed()
                .topic(&format!("e2e-{prefix}"), partitions)
                .await
                .unwrap(),
        );
    }
    topics
}
