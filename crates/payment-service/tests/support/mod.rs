//! Fixtures for payment-service's tests on the test bed's real Kafka: a pipeline of unique,
//! self-deleting topics, the service run in-process, order producers, and a
//! `read_committed` reader that reads a topic to its end.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use payment_service::{Config, Delivery, Settings};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use shop_domain::{Amount, Order, Payment};
use shop_kafka::KafkaArgs;
use shop_runtime::{Health, Metrics};
use shop_testkit::{TestTopic, testbed, unique_name};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The topics of one pipeline, unique to a test and deleted after it.
pub struct Pipeline {
    pub name: String,
    pub orders: TestTopic,
    pub payments: TestTopic,
    pub dlq: TestTopic,
    pub control: TestTopic,
    pub heartbeats: TestTopic,
}

impl Pipeline {
    pub async fn new(prefix: &str) -> Self {
        Self::with_partitions(prefix, 3).await
    }

    /// A pipeline whose orders and payments topics have `partitions` partitions.
    pub async fn with_partitions(prefix: &str, partitions: i32) -> Self {
        shop_runtime::telemetry::init_for_tests();
        let bed = testbed();
        Self {
            name: unique_name(prefix),
            orders: bed
                .topic(&format!("{prefix}-orders"), partitions)
                .await
                .unwrap(),
            payments: bed
                .topic(&format!("{prefix}-payments"), partitions)
                .await
                .unwrap(),
            dlq: bed.topic(&format!("{prefix}-dlq"), 1).await.unwrap(),
            control: bed.topic(&format!("{prefix}-control"), 1).await.unwrap(),
            heartbeats: bed.topic(&format!("{prefix}-heartbeats"), 1).await.unwrap(),
        }
    }

    pub fn kafka(&self) -> KafkaArgs {
        KafkaArgs {
            pipeline: self.name.clone(),
            control_topic: self.control.name().to_owned(),
            heartbeat_topic: self.heartbeats.name().to_owned(),
            ..KafkaArgs::for_broker(testbed().kafka_bootstrap())
        }
    }

    /// The service's config for this pipeline: ratio 0.3, seed 42, exactly once.
    pub fn config(&self, group: &str) -> Config {
        Config {
            orders_topic: self.orders.name().to_owned(),
            payments_topic: self.payments.name().to_owned(),
            dlq_topic: self.dlq.name().to_owned(),
            group_id: group.to_owned(),
            failure_ratio: 0.3,
            seed: 42,
            delivery: Delivery::ExactlyOnce,
            ..Config::default()
        }
    }

    /// The flags that run the binary on this pipeline.
    pub fn args(&self, group: &str, instance: &str) -> Vec<String> {
        let config = self.config(group);
        [
            (
                "--bootstrap-servers",
                testbed().kafka_bootstrap().to_owned(),
            ),
            ("--pipeline", self.name.clone()),
            ("--control-topic", self.control.name().to_owned()),
            ("--heartbeat-topic", self.heartbeats.name().to_owned()),
            ("--orders-topic", config.orders_topic),
            ("--payments-topic", config.payments_topic),
            ("--dlq-topic", config.dlq_topic),
            ("--group-id", config.group_id),
            ("--failure-ratio", config.failure_ratio.to_string()),
            ("--seed", config.seed.to_string()),
            ("--instance", instance.to_owned()),
            ("--http-port", "0".to_owned()),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_owned(), value])
        .collect()
    }
}

/// The service running in-process.
pub struct Running {
    pub metrics: Metrics,
    pub health: Health,
    shutdown: CancellationToken,
    task: JoinHandle<payment_service::Result<()>>,
}

pub fn start(kafka: KafkaArgs, config: Config, instance: &str) -> Running {
    let (metrics, health) = (Metrics::new(), Health::new());
    let shutdown = CancellationToken::new();
    let settings = Settings {
        kafka,
        config,
        instance: instance.to_owned(),
        metrics: metrics.clone(),
        health: health.clone(),
    };
    let task = tokio::spawn(payment_service::run(settings, shutdown.clone()));
    Running {
        metrics,
        health,
        shutdown,
        task,
    }
}

impl Running {
    /// Asks the service to stop and checks that it drained cleanly in time.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("service did not stop within 30 s")
            .expect("service task panicked")
            .expect("service ended with an error");
        eprintln!("service stopped in {:?}", started.elapsed());
    }

    /// Whether `run` has returned (with an error, unless it was stopped).
    pub fn has_ended(&self) -> bool {
        self.task.is_finished()
    }

    /// The value of a metric line (name with labels, as printed), if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = self.metrics.encode();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    }
}

pub fn producer() -> FutureProducer {
    testbed()
        .kafka_config()
        .set("enable.idempotence", "true")
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap()
}

/// A valid order, as order-service writes it.
pub fn order(id: u64) -> Vec<u8> {
    Order::new(
        id,
        (id % 100 + 1) as u32,
        Amount::from_cents(1_000 + (id % 49_000) as u32),
        shop_domain::time::rfc3339(std::time::SystemTime::now()),
    )
    .to_json()
}

/// Writes the orders `ids`, keyed by order id, and waits for their acknowledgement.
pub async fn produce_orders(
    producer: &FutureProducer,
    topic: &str,
    ids: impl Iterator<Item = u64>,
) {
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> = ids
        .map(|id| (Some(id.to_string().into_bytes()), order(id)))
        .collect();
    produce(producer, topic, &records).await;
}

/// Writes raw records (key, value), without headers, and waits for acknowledgement.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    records: &[(Option<Vec<u8>>, Vec<u8>)],
) {
    let sends = records.iter().map(|(key, value)| {
        let record = FutureRecord::to(topic).payload(value.as_slice());
        let record = match key {
            Some(key) => record.key(key.as_slice()),
            None => record,
        };
        producer.send(record, Duration::from_secs(30))
    });
    for result in futures::future::join_all(sends).await {
        result.map_err(|(e, _)| e).expect("order not written");
    }
}

/// A record as read back.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: BTreeMap<String, Vec<u8>>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| std::str::from_utf8(v).unwrap())
    }

    pub fn payment(&self) -> Payment {
        Payment::parse(&self.value).unwrap()
    }
}

/// Every committed record of `topic` up to its end when called, read with a fresh
/// `read_committed` consumer.
///
/// "The end" is the high watermark at the start: the reader is done with a partition once
/// its position reaches it (librdkafka moves the position past transaction markers and
/// aborted records). Waiting for partition EOF instead is unreliable while a
/// transactional writer keeps committing: the reader chases the tail and may never see
/// an empty fetch.
pub async fn read_all(topic: &str) -> Vec<Record> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_all_blocking(&topic))
        .await
        .unwrap()
}

/// The payments committed to `topic` (see [`read_all`]).
pub async fn read_payments(topic: &str) -> Vec<Payment> {
    read_all(topic).await.iter().map(Record::payment).collect()
}

fn read_all_blocking(topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = testbed()
        .kafka_config()
        .set("group.id", unique_name("reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut assignment = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .unwrap();
        if high > low {
            ends.insert(partition, high);
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .unwrap();
        }
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return records;
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while !ends.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{topic} not read to {ends:?} in time; position {:?}",
            consumer.position()
        );
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => records.push(Record {
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().unwrap_or_default().to_vec(),
                headers: message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            Some(Err(error)) => panic!("reading {topic}: {error}"),
        }
        let position = consumer.position().unwrap();
        ends.retain(|&partition, &mut end| {
            match position
                .find_partition(topic, partition)
                .map(|p| p.offset())
            {
                Some(Offset::Offset(at)) => at < end,
                _ => true,
            }
        });
    }
    records
}

/// Reads the payments until `n` distinct orders have one, failing after `TIMEOUT`.
pub async fn wait_for_payments(topic: &str, n: usize) -> Vec<Payment> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let payments = read_payments(topic).await;
        let distinct: HashSet<u64> = payments.iter().map(|p| p.order_id).collect();
        if distinct.len() >= n {
            return payments;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} orders paid within {TIMEOUT:?}",
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// How many payments each order got.
pub fn payments_per_order(payments: &[Payment]) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for payment in payments {
        *counts.entry(payment.order_id).or_default() += 1;
    }
    counts
}

/// Asserts that the orders `1..=n` have exactly one payment each, and nothing else does.
pub fn assert_exactly_one_payment_each(payments: &[Payment], n: u64) {
    let counts = payments_per_order(payments);
    let duplicated: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        duplicated.is_empty(),
        "orders paid more than once: {duplicated:?}"
    );
    let missing: Vec<u64> = (1..=n).filter(|id| !counts.contains_key(id)).collect();
    assert!(missing.is_empty(), "orders never paid: {missing:?}");
    assert_eq!(counts.len() as u64, n, "payments for unknown orders");
}

/// Writes orders 1, 2, 3, … until stopped (`start`: about 1500 per second).
pub struct Feeder {
    stop: CancellationToken,
    task: JoinHandle<u64>,
}

impl Feeder {
    pub fn start(topic: &str) -> Self {
        Self::paced(topic, 30, Duration::from_millis(20))
    }

    /// Writes `per_round` orders, waits for their acknowledgement, pauses `pause`, and so
    /// on until stopped.
    pub fn paced(topic: &str, per_round: u64, pause: Duration) -> Self {
        let (stop, topic) = (CancellationToken::new(), topic.to_owned());
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let producer = producer();
                let mut last = 0;
                while !stop.is_cancelled() {
                    produce_orders(&producer, &topic, last + 1..=last + per_round).await;
                    last += per_round;
                    tokio::time::sleep(pause).await;
                }
                last
            }
        });
        Self { stop, task }
    }

    /// Stops writing; returns the last order id written.
    pub async fn stop(self) -> u64 {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}

/// How many distinct orders have a payment now.
pub async fn paid_orders(topic: &str) -> usize {
    let payments = read_payments(topic).await;
    payments_per_order(&payments).len()
}
