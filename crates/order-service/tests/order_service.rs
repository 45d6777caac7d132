//! order-service against the test bed's real Kafka: what it writes, how fast, how it obeys
//! control records, how its ids stay unique, and how the binary starts and stops.
//!
//! Every test has its own pipeline key and its own orders, control, heartbeat and id-block
//! topics, so tests run in parallel on the shared broker without seeing each other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use order_service::{Config, Error, Settings};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use shop_domain::control::heartbeat_key;
use shop_domain::{ControlRecord, Heartbeat, Order, TraceParent};
use shop_kafka::KafkaArgs;
use shop_runtime::{Health, Metrics};
use shop_testkit::{TestTopic, testbed, unique_name};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(30);

/// The topics and pipeline key of one test; the topics are deleted when it is dropped.
struct Pipeline {
    kafka: KafkaArgs,
    orders: TestTopic,
    _control: TestTopic,
    _heartbeats: TestTopic,
    _id_blocks: TestTopic,
}

impl Pipeline {
    async fn new(name: &str) -> Self {
        let bed = testbed();
        let control = bed.topic(&format!("{name}-control"), 1).await.unwrap();
        let heartbeats = bed.topic(&format!("{name}-heartbeats"), 1).await.unwrap();
        let id_blocks = bed.topic(&format!("{name}-ids"), 1).await.unwrap();
        let orders = bed.topic(&format!("{name}-orders"), 3).await.unwrap();
        let kafka = KafkaArgs {
            pipeline: unique_name(name),
            control_topic: control.name().to_owned(),
            heartbeat_topic: heartbeats.name().to_owned(),
            id_block_topic: id_blocks.name().to_owned(),
            ..KafkaArgs::for_broker(bed.kafka_bootstrap())
        };
        Self {
            kafka,
            orders,
            _control: control,
            _heartbeats: heartbeats,
            _id_blocks: id_blocks,
        }
    }

    /// Starts an in-process order-service at `rate` and waits until it is ready.
    async fn start(&self, instance: &str, rate: f64) -> Service {
        let settings = Settings {
            kafka: self.kafka.clone(),
            config: Config::new(self.orders.name(), rate),
            instance: instance.to_owned(),
            metrics: Metrics::new(),
            health: Health::new(),
        };
        let shutdown = CancellationToken::new();
        let service = Service {
            instance: instance.to_owned(),
            metrics: settings.metrics.clone(),
            health: settings.health.clone(),
            shutdown: shutdown.clone(),
            task: tokio::spawn(order_service::run(settings, shutdown)),
        };
        service.ready().await;
        service
    }

    /// Publishes a control record for this pipeline; returns when the broker has it.
    async fn control(&self, generation: u64, orders_per_second: f64, paused: bool) -> SystemTime {
        let record = ControlRecord {
            generation,
            orders_per_second,
            payment_failure_ratio: 0.0,
            paused,
            seed: 0,
            extra: Default::default(),
        };
        let producer: FutureProducer = testbed().kafka_config().create().unwrap();
        producer
            .send(
                FutureRecord::to(&self.kafka.control_topic)
                    .key(&self.kafka.pipeline)
                    .payload(&record.to_json()),
                TIMEOUT,
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        SystemTime::now()
    }

    /// Waits for a heartbeat of `instance` that satisfies `accept`.
    async fn heartbeat(&self, instance: &str, accept: impl Fn(&Heartbeat) -> bool) -> Heartbeat {
        let key = heartbeat_key(&self.kafka.pipeline, order_service::SERVICE, instance);
        let deadline = Instant::now() + TIMEOUT;
        let mut last = None;
        while Instant::now() < deadline {
            let table = shop_kafka::compacted::read_table(
                &self.kafka,
                &self.kafka.heartbeat_topic,
                TIMEOUT,
            )
            .await
            .unwrap();
            if let Some(value) = table.get(&key) {
                let heartbeat = Heartbeat::parse(value).unwrap();
                if accept(&heartbeat) {
                    return heartbeat;
                }
                last = Some(heartbeat);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no matching heartbeat for {key} within {TIMEOUT:?}; last: {last:?}");
    }

    /// Every record of the orders topic.
    async fn orders(&self) -> Vec<Record> {
        let topic = self.orders.name().to_owned();
        tokio::task::spawn_blocking(move || read_all(&topic))
            .await
            .unwrap()
    }
}

/// An order-service running in this process.
struct Service {
    instance: String,
    metrics: Metrics,
    health: Health,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), Error>>,
}

impl Service {
    async fn ready(&self) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.health.is_ready().0 {
            assert!(
                !self.task.is_finished(),
                "order-service stopped before ready"
            );
            assert!(
                Instant::now() < deadline,
                "not ready: {}",
                self.health.is_ready().1
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the service like SIGTERM would; returns how many orders it delivered.
    async fn stop(self) -> u64 {
        self.shutdown.cancel();
        tokio::time::timeout(TIMEOUT, self.task)
            .await
            .expect("order-service stops within the timeout")
            .unwrap()
            .expect("order-service stops cleanly");
        let text = self.metrics.encode();
        assert!(
            text.contains("shopstream_orders_delivery_failed_total 0\n"),
            "{text}"
        );
        metric(&text, "shopstream_orders_produced_total")
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} not in {text}"))
        .parse()
        .unwrap()
}

/// A record as read back from Kafka.
#[derive(Debug)]
struct Record {
    partition: i32,
    key: Option<String>,
    value: Vec<u8>,
    headers: HashMap<String, String>,
    timestamp_ms: i64,
}

impl Record {
    fn order(&self) -> Order {
        Order::parse(&self.value).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&self.value));
        })
    }
}

/// Reads `topic` from the beginning up to its current end, in offset order per partition.
fn read_all(topic: &str) -> Vec<Record> {
    let bed = testbed();
    let group = bed.group("order-reader");
    let consumer: BaseConsumer = bed
        .kafka_config()
        .set("group.id", group.id())
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT).unwrap();
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for partition in metadata.topics()[0].partitions() {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition.id(), TIMEOUT)
            .unwrap();
        if high > 0 {
            ends.insert(partition.id(), high);
            assignment
                .add_partition_offset(topic, partition.id(), Offset::Beginning)
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
        assert!(Instant::now() < deadline, "{topic} not read to its end");
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.unwrap();
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8(h.value.unwrap_or_default().to_vec());
                        (h.key.to_owned(), value.unwrap())
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push(Record {
            partition: message.partition(),
            key: message
                .key()
                .map(|k| String::from_utf8(k.to_vec()).unwrap()),
            value: message.payload().unwrap_or_default().to_vec(),
            headers,
            timestamp_ms: message.timestamp().to_millis().unwrap(),
        });
        if ends.get(&message.partition()) == Some(&(message.offset() + 1)) {
            ends.remove(&message.partition());
        }
    }
    records
}

fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// How many records carry a timestamp in `[from, from + length)`.
fn count_between(records: &[Record], from_ms: i64, length: Duration) -> usize {
    let until = from_ms + length.as_millis() as i64;
    records
        .iter()
        .filter(|r| (from_ms..until).contains(&r.timestamp_ms))
        .count()
}

fn assert_within(what: &str, actual: usize, expected: f64, tolerance: f64) {
    let error = (actual as f64 - expected).abs() / expected;
    eprintln!("{what}: {actual} records, expected {expected}");
    assert!(
        error <= tolerance,
        "{what}: {actual} records, expected {expected} ± {}%",
        tolerance * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_valid_seed_compatible_json() {
    shop_runtime::telemetry::init_for_tests();
    let pipeline = Pipeline::new("order-json").await;
    let service = pipeline.start("json-0", 200.0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let produced = service.stop().await;

    let records = pipeline.orders().await;
    assert!(records.len() >= 300, "only {} orders", records.len());
    assert_eq!(
        records.len() as u64,
        produced,
        "every delivered order is on the topic"
    );
    let mut ids = HashSet::new();
    let mut last_id_per_partition = BTreeMap::new();
    for record in &records {
        let order = record.order();
        // The seed's four fields, with the seed's JSON types.
        let json: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
        assert!(json["order_id"].is_u64(), "{json}");
        assert!(json["user_id"].is_u64(), "{json}");
        assert!(json["amount"].is_number(), "{json}");
        assert_eq!(json["status"], "created");
        assert!((1..=100).contains(&order.user_id));
        assert!(order.amount.is_valid_order_amount(), "{json}");
        let created = order.created_at.as_deref().unwrap();
        assert_eq!(
            shop_domain::time::parse_rfc3339(created).map(millis),
            Some(record.timestamp_ms),
            "the record's timestamp is created_at"
        );

        assert_eq!(
            record.key.as_deref(),
            Some(order.order_id.to_string().as_str())
        );
        assert_eq!(record.headers["content-type"], "application/json");
        assert_eq!(record.headers["schema-version"], "1");
        assert!(TraceParent::parse(&record.headers["traceparent"]).is_some());

        assert!(ids.insert(order.order_id), "duplicate {}", order.order_id);
        let last = last_id_per_partition.insert(record.partition, order.order_id);
        assert!(
            last < Some(order.order_id),
            "ids increase within partition {}: {last:?} then {}",
            record.partition,
            order.order_id
        );
    }
    assert_eq!(
        last_id_per_partition.len(),
        3,
        "keys spread over partitions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_is_accurate_over_a_ten_second_window() {
    shop_runtime::telemetry::init_for_tests();
    let pipeline = Pipeline::new("order-rate").await;
    let service = pipeline.start("rate-0", 2000.0).await;
    tokio::time::sleep(Duration::from_millis(11_500)).await;
    service.stop().await;

    let records = pipeline.orders().await;
    let first = records.iter().map(|r| r.timestamp_ms).min().unwrap();
    let last = records.iter().map(|r| r.timestamp_ms).max().unwrap();
    // Skip the first second (start-up), then count a whole ten-second window.
    let from = first + 1000;
    assert!(last >= from + 10_000, "ran only {} ms", last - first);
    let counted = count_between(&records, from, Duration::from_secs(10));
    assert_within("ten seconds at 2000/s", counted, 20_000.0, 0.01);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_change_applies_live() {
    shop_runtime::telemetry::init_for_tests();
    let pipeline = Pipeline::new("order-live").await;
    let service = pipeline.start("live-0", 50.0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let landed = millis(pipeline.control(1, 500.0, false).await);
    let heartbeat = pipeline
        .heartbeat(&service.instance, |h| h.applied_generation == Some(1))
        .await;
    assert_eq!(heartbeat.orders_per_second, Some(500.0));
    assert_eq!(heartbeat.paused, Some(false));
    let elapsed = millis(SystemTime::now()) - landed;
    tokio::time::sleep(Duration::from_millis(
        2300u64.saturating_sub(elapsed as u64),
    ))
    .await;
    service.stop().await;

    let records = pipeline.orders().await;
    assert_within(
        "the second before the change, at 50/s",
        count_between(&records, landed - 1000, Duration::from_secs(1)),
        50.0,
        0.1,
    );
    // Applied within 100 ms of landing: from then on, the new rate holds.
    assert_within(
        "two seconds from 100 ms after the change, at 500/s",
        count_between(&records, landed + 100, Duration::from_secs(2)),
        1000.0,
        0.03,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_generator_produces_nothing() {
    shop_runtime::telemetry::init_for_tests();
    let pipeline = Pipeline::new("order-pause").await;
    let service = pipeline.start("pause-0", 200.0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    pipeline.control(1, 200.0, true).await;
    let heartbeat = pipeline
        .heartbeat(&service.instance, |h| h.paused == Some(true))
        .await;
    // The heartbeat is stamped after the pause was applied.
    let paused_at = millis(shop_domain::time::parse_rfc3339(&heartbeat.timestamp).unwrap());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let produced = service.stop().await;

    let records = pipeline.orders().await;
    assert!(produced > 0 && records.len() as u64 == produced);
    let latest = records.iter().map(|r| r.timestamp_ms).max().unwrap();
    assert!(
        latest <= paused_at,
        "an order created at {latest} ms, after the pause applied at {paused_at} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_ids_do_not_overlap_across_replicas_and_restarts() {
    shop_runtime::telemetry::init_for_tests();
    let pipeline = Pipeline::new("order-ids").await;
    let a = pipeline.start("ids-a", 300.0).await;
    let b = pipeline.start("ids-b", 300.0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut produced = b.stop().await;
    let b_again = pipeline.start("ids-b", 300.0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    produced += b_again.stop().await + a.stop().await;

    let records = pipeline.orders().await;
    assert_eq!(records.len() as u64, produced);
    let mut ids = HashSet::new();
    // Block number -> the time its first order was created.
    let mut blocks = BTreeMap::new();
    for record in &records {
        let id = record.order().order_id;
        assert!(ids.insert(id), "order id {id} was used twice");
        let first = blocks
            .entry((id - 1000) / 1_000_000)
            .or_insert(record.timestamp_ms);
        *first = (*first).min(record.timestamp_ms);
    }
    assert_eq!(blocks.len(), 3, "one id block per start: {blocks:?}");
    // The restarted replica started last and claimed the highest block.
    let started_last = blocks.iter().max_by_key(|(_, first)| **first).unwrap();
    assert_eq!(started_last.0, blocks.keys().last().unwrap(), "{blocks:?}");
}

/// Runs the real binary with `args` and returns its exit status and stderr.
async fn run_binary(args: &[&str]) -> (std::process::ExitStatus, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_order-service"))
            .args(args)
            .args(["--http-port", "0"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the binary exits quickly")
    .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn misconfiguration_fails_fast_naming_the_flag() {
    for rate in ["-5", "NaN"] {
        let (status, stderr) = run_binary(&["--orders-per-second", rate]).await;
        assert!(!status.success(), "{stderr}");
        assert!(stderr.contains("--orders-per-second"), "{stderr}");
        assert!(stderr.contains("0 to 100000"), "{stderr}");
    }
    let (status, stderr) = run_binary(&["--bootstrap-servers", "nonsense"]).await;
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("--bootstrap-servers"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_generating_flushes_and_exits_zero() {
    let pipeline = Pipeline::new("order-sigterm").await;
    let kafka = &pipeline.kafka;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_order-service"))
        .args(["--bootstrap-servers", &kafka.bootstrap_servers])
        .args(["--pipeline", &kafka.pipeline])
        .args(["--control-topic", &kafka.control_topic])
        .args(["--heartbeat-topic", &kafka.heartbeat_topic])
        .args(["--id-block-topic", &kafka.id_block_topic])
        .args(["--orders-topic", pipeline.orders.name()])
        .args(["--orders-per-second", "500", "--http-port", "0"])
        .args(["--instance", "sigterm-0", "--log-format", "text"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    tokio::time::timeout(TIMEOUT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let ready = line.contains("process is ready");
            log.push(line);
            if ready {
                return;
            }
        }
        panic!("order-service exited before it was ready");
    })
    .await
    .unwrap_or_else(|_| panic!("not ready within {TIMEOUT:?}: {log:#?}"));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("order-service exits within the shutdown grace")
        .unwrap();
    while let Some(line) = lines.next_line().await.unwrap() {
        log.push(line);
    }
    assert!(status.success(), "{status}: {log:#?}");
    let stopped = log
        .iter()
        .find(|line| line.contains("order-service stopped"))
        .unwrap_or_else(|| panic!("{log:#?}"));
    assert!(stopped.contains("unsent=0"), "{stopped}");
    assert!(stopped.contains("delivery_failed=0"), "{stopped}");

    let records = pipeline.orders().await;
    assert!(records.len() >= 100, "only {} orders", records.len());
    assert!(
        stopped.contains(&format!("produced={}", records.len())),
        "every acknowledged order is on the topic: {stopped}"
    );
    for record in &records {
        record.order();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_starts_with_the_first_ids_so_nothing_is_skipped_at_start() {
    shop_runtime::telemetry::init_for_tests();
    let pipeline = Pipeline::new("order-start").await;
    let service = pipeline.start("start-0", 1000.0).await;
    let deadline = Instant::now() + TIMEOUT;
    while metric(
        &service.metrics.encode(),
        "shopstream_orders_produced_total",
    ) < 1000
    {
        assert!(
            Instant::now() < deadline,
            "not 1000 orders within {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Waiting for the first id block (a fresh idempotent producer's first claim takes
    // about half a second) is start-up: those orders were never due.
    let skipped = metric(&service.metrics.encode(), "shopstream_orders_skipped_total");
    service.stop().await;
    assert_eq!(skipped, 0, "orders skipped at start");
}
