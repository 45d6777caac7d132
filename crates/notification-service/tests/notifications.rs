//! notification-service against the test bed's real Kafka: what it prints, what it does
//! not print twice, where malformed payments go, and what it commits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use notification_service::{Config, Settings};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use shop_domain::time::rfc3339;
use shop_domain::{Amount, Decision, FailureReason, Heartbeat, Order, Payment};
use shop_kafka::KafkaArgs;
use shop_kafka::compacted::read_table;
use shop_runtime::{Health, LogFormat, Metrics};
use shop_testkit::{TestTopic, testbed, unique_name};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(60);

/// What the service printed: a `Write` shared with the test.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Output {
    fn lines(&self) -> Vec<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    /// Waits until `done(lines)` holds, failing with what was printed after `TIMEOUT`.
    async fn wait_for(&self, what: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        self.wait_within(TIMEOUT, what, done).await
    }

    /// [`Output::wait_for`] for at most `limit`.
    async fn wait_within(
        &self,
        limit: Duration,
        what: &str,
        done: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let lines = self.lines();
            if done(&lines) {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "{what} not printed within {limit:?}; printed so far: {lines:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The topics and group of one test.
struct Pipeline {
    payments: TestTopic,
    dlq: TestTopic,
    heartbeats: TestTopic,
    group: String,
    _group: shop_testkit::kafka::TestGroup,
}

impl Pipeline {
    async fn new(partitions: i32) -> Pipeline {
        let bed = testbed();
        let group = bed.group("notify");
        Pipeline {
            payments: bed.topic("notify-payments", partitions).await.unwrap(),
            dlq: bed.topic("notify-dlq", 1).await.unwrap(),
            heartbeats: bed.topic("notify-heartbeats", 1).await.unwrap(),
            group: group.id().to_owned(),
            _group: group,
        }
    }

    fn settings(&self, format: LogFormat) -> Settings {
        Settings {
            kafka: KafkaArgs {
                pipeline: unique_name("notify-pipeline"),
                heartbeat_topic: self.heartbeats.name().to_owned(),
                ..KafkaArgs::for_broker(testbed().kafka_bootstrap())
            },
            config: Config {
                payments_topic: self.payments.name().to_owned(),
                dlq_topic: self.dlq.name().to_owned(),
                group_id: self.group.clone(),
                line_format: format,
                ..Config::default()
            },
            instance: "test-0".into(),
            metrics: Metrics::new(),
            health: Health::new(),
        }
    }

    /// Writes `value` to the payments topic, keyed like payment-service does when `key`.
    async fn send(&self, key: Option<&str>, value: &[u8]) {
        let producer = producer();
        let mut record = FutureRecord::<str, [u8]>::to(self.payments.name()).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        producer
            .send(record, TIMEOUT)
            .await
            .map_err(|(e, _)| e)
            .expect("payment written");
    }

    async fn send_payment(&self, payment: &Payment) {
        self.send(Some(&payment.key()), &payment.to_json()).await;
    }
}

fn producer() -> FutureProducer {
    testbed().kafka_config().create().unwrap()
}

/// A payment as payment-service writes it, for an order created just now.
fn payment(order_id: u64, decision: Decision) -> Payment {
    let now = rfc3339(SystemTime::now());
    let order = Order::new(order_id, 37, Amount::from_cents(19_999), now.clone());
    Payment::for_order(&order, &decision, now)
}

/// A running service and what it printed.
struct Running {
    output: Output,
    shutdown: CancellationToken,
    task: JoinHandle<notification_service::Result<()>>,
    metrics: Metrics,
}

impl Running {
    fn start(settings: Settings) -> Running {
        shop_runtime::telemetry::init_for_tests();
        let output = Output::default();
        let shutdown = CancellationToken::new();
        let metrics = settings.metrics.clone();
        let task = tokio::spawn(notification_service::run(
            settings,
            output.clone(),
            shutdown.clone(),
        ));
        Running {
            output,
            shutdown,
            task,
            metrics,
        }
    }

    /// Stops the service as SIGTERM would and checks it ended cleanly.
    async fn stop(self) -> Output {
        self.shutdown.cancel();
        tokio::time::timeout(TIMEOUT, self.task)
            .await
            .expect("service stopped in time")
            .expect("service task")
            .expect("service ended without error");
        self.output
    }
}

/// The heartbeats of the pipeline, by key.
async fn heartbeats(kafka: &KafkaArgs) -> BTreeMap<String, Heartbeat> {
    read_table(kafka, &kafka.heartbeat_topic, TIMEOUT)
        .await
        .unwrap()
        .into_iter()
        .filter(|(key, _)| key.starts_with(&format!("{}/", kafka.pipeline)))
        .map(|(key, value)| (key, Heartbeat::parse(&value).unwrap()))
        .collect()
}

/// Waits for this replica's heartbeat to satisfy `done`.
async fn wait_for_heartbeat(kafka: &KafkaArgs, done: impl Fn(&Heartbeat) -> bool) -> Heartbeat {
    let key = format!("{}/notification-service/test-0", kafka.pipeline);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let beats = heartbeats(kafka).await;
        if let Some(beat) = beats.get(&key).filter(|beat| done(beat)) {
            return beat.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no such heartbeat {key}: {beats:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|line| line.contains(needle)).count()
}

#[tokio::test]
async fn lines_are_printed_once_per_payment_in_the_seed_spirit() {
    let pipeline = Pipeline::new(3).await;
    // A seed-era producer: no key, no headers, only the seed's fields.
    pipeline
        .send(
            None,
            br#"{"order_id": 1001, "status": "payment_successful"}"#,
        )
        .await;
    pipeline
        .send_payment(&payment(
            1002,
            Decision::Failure(FailureReason::CardDeclined),
        ))
        .await;
    pipeline
        .send_payment(&payment(1003, Decision::Success))
        .await;

    let settings = pipeline.settings(LogFormat::Text);
    let kafka = settings.kafka.clone();
    let service = Running::start(settings);
    let lines = service
        .output
        .wait_for("three payments", |lines| lines.len() >= 3)
        .await;
    let heartbeat =
        wait_for_heartbeat(&kafka, |beat| beat.counters.get("printed") == Some(&3)).await;
    assert_eq!(heartbeat.counters.get("dead_lettered"), Some(&0));
    let output = service.stop().await;
    assert_eq!(
        heartbeats(&kafka).await.len(),
        0,
        "a clean stop removes the heartbeat"
    );

    assert_eq!(output.lines(), lines, "nothing more printed");
    assert!(
        lines.contains(&"✅ Payment Successful for Order 1001".to_owned()),
        "{lines:#?}"
    );
    let failed = lines.iter().find(|l| l.contains("Order 1002")).unwrap();
    assert!(
        failed
            .starts_with("❌ Payment Failed for Order 1002 (card_declined) · user 37 · $199.99 · ")
            && failed.ends_with(" ms"),
        "{failed}"
    );
    let successful = lines.iter().find(|l| l.contains("Order 1003")).unwrap();
    assert!(
        successful.starts_with("✅ Payment Successful for Order 1003 · user 37 · $199.99 · "),
        "{successful}"
    );
}

#[tokio::test]
async fn duplicates_within_the_window_are_not_printed_twice() {
    // One partition, so the last payment is read after all the repeats.
    let pipeline = Pipeline::new(1).await;
    let repeated = payment(2001, Decision::Success);
    for _ in 0..3 {
        pipeline.send_payment(&repeated).await;
    }
    pipeline
        .send_payment(&payment(2002, Decision::Success))
        .await;

    let service = Running::start(pipeline.settings(LogFormat::Text));
    service
        .output
        .wait_for("order 2002", |lines| count(lines, "Order 2002") == 1)
        .await;
    let metrics = service.metrics.clone();
    let lines = service.stop().await.lines();

    assert_eq!(count(&lines, "Order 2001"), 1, "{lines:#?}");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let text = metrics.encode();
    assert!(
        text.contains("shopstream_duplicates_suppressed_total 2\n"),
        "{text}"
    );
    assert!(
        text.contains("shopstream_notifications_printed_total{status=\"successful\"} 2\n"),
        "{text}"
    );
}

#[tokio::test]
async fn another_payment_for_a_reused_order_id_is_printed() {
    // A restarted seed-era producer counts order ids from 1000 again: the second payment
    // for order 1000 is another payment (another user and amount), not a replay.
    let pipeline = Pipeline::new(1).await;
    pipeline
        .send(
            None,
            br#"{"order_id": 1000, "user_id": 7, "amount": 12.5, "status": "payment_successful"}"#,
        )
        .await;
    pipeline
        .send(
            None,
            br#"{"order_id": 1000, "user_id": 42, "amount": 99.0, "status": "payment_failed"}"#,
        )
        .await;
    pipeline
        .send_payment(&payment(1001, Decision::Success))
        .await;

    let service = Running::start(pipeline.settings(LogFormat::Text));
    service
        .output
        .wait_for("order 1001", |lines| count(lines, "Order 1001") == 1)
        .await;
    let lines = service.stop().await.lines();
    assert_eq!(count(&lines, "Order 1000"), 2, "{lines:#?}");
}

#[tokio::test]
async fn malformed_payments_go_to_the_dlq() {
    let pipeline = Pipeline::new(1).await;
    pipeline.send(Some("3001"), b"{\"order_id\": 3001,").await;
    pipeline.send(Some("3002"), br#"{"order_id": 3002}"#).await;
    pipeline
        .send_payment(&payment(3003, Decision::Success))
        .await;

    let service = Running::start(pipeline.settings(LogFormat::Text));
    service
        .output
        .wait_for("order 3003", |lines| count(lines, "Order 3003") == 1)
        .await;
    let metrics = service.metrics.clone();
    let lines = service.stop().await.lines();
    assert_eq!(
        lines.len(),
        1,
        "only the valid payment is printed: {lines:#?}"
    );
    assert!(
        metrics
            .encode()
            .contains("shopstream_dead_lettered_total 2\n"),
        "{}",
        metrics.encode()
    );

    let reader_group = testbed().group("notify-dlq-reader");
    let reader: StreamConsumer = testbed()
        .kafka_config()
        .set("group.id", reader_group.id())
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[pipeline.dlq.name()]).unwrap();
    let mut letters = Vec::new();
    for _ in 0..2 {
        let message = tokio::time::timeout(TIMEOUT, reader.recv())
            .await
            .expect("dead letter within timeout")
            .unwrap();
        let header = |name: &str| {
            message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == name))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
        };
        letters.push((
            String::from_utf8(message.key().unwrap().to_vec()).unwrap(),
            message.payload().unwrap().to_vec(),
            header("x-shopstream-error-kind"),
            header("x-shopstream-error"),
            header("x-shopstream-source-topic"),
            header("x-shopstream-source-offset"),
        ));
    }
    let source = Some(pipeline.payments.name().to_owned());
    assert_eq!(letters[0].0, "3001");
    assert_eq!(letters[0].1, b"{\"order_id\": 3001,");
    assert_eq!(letters[0].2.as_deref(), Some("not_json"));
    assert_eq!(letters[0].4, source);
    assert_eq!(letters[0].5.as_deref(), Some("0"));
    assert_eq!(letters[1].0, "3002");
    assert_eq!(letters[1].2.as_deref(), Some("missing_field"));
    assert_eq!(
        letters[1].3.as_deref(),
        Some(r#"message has no "status" field"#)
    );
    assert_eq!(letters[1].5.as_deref(), Some("1"));
}

#[tokio::test]
async fn json_format_prints_machine_readable_lines() {
    let pipeline = Pipeline::new(1).await;
    pipeline
        .send(
            None,
            br#"{"order_id": 1001, "status": "payment_successful"}"#,
        )
        .await;
    pipeline
        .send_payment(&payment(
            4002,
            Decision::Failure(FailureReason::InsufficientFunds),
        ))
        .await;

    let service = Running::start(pipeline.settings(LogFormat::Json));
    service
        .output
        .wait_for("two payments", |lines| lines.len() >= 2)
        .await;
    let lines = service.stop().await.lines();

    let objects: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).expect("each line is one JSON object"))
        .collect();
    assert_eq!(objects.len(), 2, "{lines:#?}");
    let seed = &objects[0];
    assert_eq!(seed["order_id"], 1001);
    assert_eq!(seed["status"], "payment_successful");
    assert_eq!(seed["line"], "✅ Payment Successful for Order 1001");
    assert!(seed.get("latency_ms").is_none(), "{seed}");
    let failed = &objects[1];
    assert_eq!(failed["order_id"], 4002);
    assert_eq!(failed["user_id"], 37);
    assert_eq!(failed["amount"], 199.99);
    assert_eq!(failed["reason"], "insufficient_funds");
    assert!(failed["latency_ms"].as_f64().unwrap() >= 0.0, "{failed}");
    assert!(
        failed["line"]
            .as_str()
            .unwrap()
            .starts_with("❌ Payment Failed for Order 4002 (insufficient_funds)"),
        "{failed}"
    );
}

#[tokio::test]
async fn offsets_are_committed_after_printing() {
    // One partition: once a later payment is printed, an earlier uncommitted one would
    // have been printed before it.
    let pipeline = Pipeline::new(1).await;
    for order_id in 5001..=5003 {
        pipeline
            .send_payment(&payment(order_id, Decision::Success))
            .await;
    }
    let first = Running::start(pipeline.settings(LogFormat::Text));
    first
        .output
        .wait_for("the first three", |lines| lines.len() >= 3)
        .await;
    let first = first.stop().await.lines();
    assert_eq!(first.len(), 3, "{first:#?}");

    for order_id in 5004..=5005 {
        pipeline
            .send_payment(&payment(order_id, Decision::Success))
            .await;
    }
    let second = Running::start(pipeline.settings(LogFormat::Text));
    second
        .output
        .wait_for("order 5005", |lines| count(lines, "Order 5005") == 1)
        .await;
    let second = second.stop().await.lines();
    assert_eq!(second.len(), 2, "only the new payments: {second:#?}");
    assert_eq!(count(&second, "Order 5004"), 1, "{second:#?}");
}

/// A reader that has gone away, as stdout is after `notification-service | head -1`.
struct ClosedPipe;

impl Write for ClosedPipe {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }
}

#[tokio::test]
async fn a_closed_stdout_stops_the_service_cleanly_without_committing_the_unprinted_payment() {
    shop_runtime::telemetry::init_for_tests();
    let pipeline = Pipeline::new(1).await;
    pipeline
        .send_payment(&payment(6001, Decision::Success))
        .await;

    let ended = tokio::time::timeout(
        TIMEOUT,
        notification_service::run(
            pipeline.settings(LogFormat::Text),
            ClosedPipe,
            CancellationToken::new(),
        ),
    )
    .await
    .expect("the service stops by itself when stdout is closed");
    ended.expect("a closed stdout is a clean shutdown");

    let next = Running::start(pipeline.settings(LogFormat::Text));
    next.output
        .wait_for("order 6001 again", |lines| count(lines, "Order 6001") == 1)
        .await;
    next.stop().await;
}

#[tokio::test]
async fn an_unreachable_broker_is_waited_for_and_shutdown_still_works() {
    let pipeline = Pipeline::new(1).await;
    let mut settings = pipeline.settings(LogFormat::Text);
    // Nothing listens on port 1.
    settings.kafka.bootstrap_servers = "127.0.0.1:1".into();
    let health = settings.health.clone();
    let service = Running::start(settings);

    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !service.task.is_finished(),
        "the service waits for the broker"
    );
    let (ready, reason) = health.is_ready();
    assert!(!ready, "not ready while the broker is unreachable");
    assert!(reason.contains("creating topics"), "{reason}");
    let output = service.stop().await;
    assert!(output.lines().is_empty());
}

/// One of five kinds of poison, by number.
fn poison(i: usize) -> Vec<u8> {
    match i % 50 {
        0 => {
            // Over the 64 KiB a payment may have, and valid JSON otherwise.
            let mut big = br#"{"order_id": 1, "pad": ""#.to_vec();
            big.extend(std::iter::repeat_n(b'x', 70_000));
            big.extend_from_slice(br#""}"#);
            big
        }
        n if n % 4 == 1 => b"{\"order_id\": 12, \"status\": ".to_vec(),
        n if n % 4 == 2 => br#"{"order_id": "twelve", "status": 7, "amount": []}"#.to_vec(),
        n if n % 4 == 3 => vec![0xff, 0xfe, b'{', 0x80, b'}'],
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_payment_and_a_flood_of_poison_go_to_the_dlq_and_every_payment_is_printed() {
    const POISON: usize = 10_000;
    const VALID: u64 = 1_000;
    let pipeline = Pipeline::new(3).await;
    let service = Running::start(pipeline.settings(LogFormat::Text));

    // A payment of 1,040,000 bytes: over the producer's default limit of 1,000,000, so a
    // dead letter that copied it whole could never be written.
    let mut huge = payment(4_999_999, Decision::Success).to_json();
    huge.truncate(huge.len() - 1);
    huge.extend_from_slice(br#", "note": ""#);
    huge.resize(1_040_000 - 2, b'x');
    huge.extend_from_slice(br#""}"#);
    assert_eq!(huge.len(), 1_040_000);
    let big: FutureProducer = testbed()
        .kafka_config()
        .set("message.max.bytes", "1100000")
        .create()
        .unwrap();
    big.send(
        FutureRecord::<str, [u8]>::to(pipeline.payments.name())
            .key("4999999")
            .payload(&huge),
        TIMEOUT,
    )
    .await
    .map_err(|(e, _)| e)
    .unwrap();

    // Poison mixed into valid traffic: one valid payment after every ten poison records.
    let producer = producer();
    let mut sends = Vec::new();
    let mut next_order = 5_000_000;
    for i in 0..POISON {
        let value = poison(i);
        let key = format!("p{i}");
        sends.push((key, value));
        if i % 10 == 9 {
            let valid = payment(next_order, Decision::Success);
            sends.push((valid.key(), valid.to_json()));
            next_order += 1;
        }
    }
    assert_eq!(next_order, 5_000_000 + VALID);
    for chunk in sends.chunks(500) {
        let pending: Vec<_> = chunk
            .iter()
            .map(|(key, value)| {
                producer.send(
                    FutureRecord::<str, [u8]>::to(pipeline.payments.name())
                        .key(key)
                        .payload(value),
                    TIMEOUT,
                )
            })
            .collect();
        for sent in futures::future::join_all(pending).await {
            sent.map_err(|(e, _)| e).unwrap();
        }
    }

    // Each dead letter is acknowledged before its offset is stored, one at a time: the
    // flood takes about a minute on two cores, longer on a busy machine.
    let lines = service
        .output
        .wait_within(Duration::from_secs(300), "every valid payment", |lines| {
            count(lines, "Payment Successful for Order 5") >= VALID as usize
        })
        .await;
    for order in 5_000_000..5_000_000 + VALID {
        assert_eq!(
            count(&lines, &format!("Order {order} ")),
            1,
            "order {order}"
        );
    }
    let dead = (POISON + 1).to_string();
    let metrics = service.metrics.clone();
    let deadline = Instant::now() + TIMEOUT;
    while !metrics
        .encode()
        .contains(&format!("shopstream_dead_lettered_total {dead}\n"))
    {
        assert!(Instant::now() < deadline, "{}", metrics.encode());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !service.task.is_finished(),
        "the service kept running through the flood"
    );

    // Every poison record is in the DLQ with its reason; the huge one cut, with its size.
    let reader_group = testbed().group("notify-flood-reader");
    let reader: StreamConsumer = testbed()
        .kafka_config()
        .set("group.id", reader_group.id())
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[pipeline.dlq.name()]).unwrap();
    let mut kinds = BTreeMap::<String, usize>::new();
    let mut huge_letter = None;
    for _ in 0..=POISON {
        let message = tokio::time::timeout(TIMEOUT, reader.recv())
            .await
            .expect("dead letter within timeout")
            .unwrap();
        let header = |name: &str| {
            message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == name))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
        };
        let kind = header("x-shopstream-error-kind").expect("a reason on every letter");
        assert!(header("x-shopstream-error").is_some_and(|e| !e.is_empty()));
        *kinds.entry(kind).or_default() += 1;
        if message.key() == Some(b"4999999") {
            huge_letter = Some((
                message.payload().map_or(0, <[u8]>::len),
                header("x-shopstream-original-size"),
            ));
        }
    }
    assert_eq!(kinds.values().sum::<usize>(), POISON + 1, "{kinds:?}");
    assert_eq!(
        huge_letter,
        Some((
            shop_kafka::dead_letter::MAX_VALUE_BYTES,
            Some("1040000".to_owned())
        ))
    );
    service.stop().await;
}
