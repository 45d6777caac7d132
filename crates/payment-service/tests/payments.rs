//! payment-service on the test bed's real Kafka: exactly one payment per order (across a
//! SIGKILL and a rebalance), decisions as `decide` makes them, poison messages in the
//! dead-letter topic, seed-era orders, live control records, and at-least-once mode.
//!
//! Each test has its own topics, group and pipeline, so they run in parallel; payments are
//! checked with `read_committed` readers, as notification-service reads them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use payment_service::{DLQ_MAX_VALUE_BYTES, Delivery, ORIGINAL_SIZE_HEADER};
use rdkafka::admin::{AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::producer::FutureRecord;
use shop_domain::control::heartbeat_key;
use shop_domain::headers::{ERROR, ERROR_KIND, SOURCE_TOPIC, TRACEPARENT};
use shop_domain::{ControlRecord, Heartbeat, PaymentStatus, decide};
use shop_testkit::{testbed, unique_name};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_gets_exactly_one_payment() {
    const N: u64 = 2000;
    let pipeline = Pipeline::new("pay-eos").await;
    let group = testbed().group("pay-eos");
    let producer = producer();
    // Half the orders wait for the service, half arrive while it runs.
    produce_orders(&producer, pipeline.orders.name(), 1..=N / 2).await;
    let config = pipeline.config(group.id());
    let (ratio, seed) = (config.failure_ratio, config.seed);
    let service = start(pipeline.kafka(), config, "eos-0");
    produce_orders(&producer, pipeline.orders.name(), N / 2 + 1..=N).await;

    wait_for_payments(pipeline.payments.name(), N as usize).await;
    assert_eq!(service.health.is_ready(), (true, "consuming".to_owned()));
    assert_eq!(
        service
            .metric("shopstream_payments_processed_total{outcome=\"success\"}")
            .unwrap()
            + service
                .metric("shopstream_payments_processed_total{outcome=\"failure\"}")
                .unwrap(),
        N as f64
    );
    service.stop().await;

    let records = read_all(pipeline.payments.name()).await;
    let payments: Vec<_> = records.iter().map(Record::payment).collect();
    assert_exactly_one_payment_each(&payments, N);
    for (record, payment) in records.iter().zip(&payments) {
        let decision = decide(payment.order_id, ratio, seed);
        assert_eq!(
            payment.status,
            PaymentStatus::from(&decision),
            "{payment:?}"
        );
        assert_eq!(payment.reason, decision.reason(), "{payment:?}");
        assert_eq!(
            record.key.as_deref(),
            Some(payment.order_id.to_string().as_bytes())
        );
        assert!(record.header(TRACEPARENT).is_some(), "{record:?}");
        assert!(payment.processed_at.is_some() && payment.order_created_at.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measured_failure_ratio_within_binomial_bound() {
    const N: u64 = 2000;
    const RATIO: f64 = 0.3;
    let pipeline = Pipeline::new("pay-ratio").await;
    let group = testbed().group("pay-ratio");
    produce_orders(&producer(), pipeline.orders.name(), 1..=N).await;
    let config = payment_service::Config {
        failure_ratio: RATIO,
        seed: 7,
        ..pipeline.config(group.id())
    };
    let service = start(pipeline.kafka(), config, "ratio-0");
    let payments = wait_for_payments(pipeline.payments.name(), N as usize).await;
    service.stop().await;

    let failed = payments.iter().filter(|p| !p.is_successful()).count() as f64;
    let expected = N as f64 * RATIO;
    let sigma = (N as f64 * RATIO * (1.0 - RATIO)).sqrt();
    assert!(
        (failed - expected).abs() < 4.5 * sigma,
        "{failed} of {N} failed, expected {expected} ± {}",
        4.5 * sigma
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_same_decisions_on_replay() {
    const N: u64 = 500;
    let pipeline = Pipeline::new("pay-replay").await;
    let replay_payments = testbed().topic("pay-replay-payments-2", 3).await.unwrap();
    produce_orders(&producer(), pipeline.orders.name(), 1..=N).await;

    let mut outcomes = Vec::new();
    for (payments, instance) in [(&pipeline.payments, "first"), (&replay_payments, "second")] {
        let group = testbed().group("pay-replay");
        let config = payment_service::Config {
            payments_topic: payments.name().to_owned(),
            ..pipeline.config(group.id())
        };
        let service = start(pipeline.kafka(), config, instance);
        let paid = wait_for_payments(payments.name(), N as usize).await;
        service.stop().await;
        let decided: BTreeMap<u64, _> = paid
            .into_iter()
            .map(|p| (p.order_id, (p.status, p.reason)))
            .collect();
        outcomes.push(decided);
    }
    assert_eq!(outcomes[0].len(), N as usize);
    assert_eq!(outcomes[0], outcomes[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_the_dlq_while_valid_traffic_flows() {
    const VALID: u64 = 300;
    let pipeline = Pipeline::new("pay-poison").await;
    allow_large_messages(pipeline.orders.name()).await;
    let group = testbed().group("pay-poison");
    let service = start(pipeline.kafka(), pipeline.config(group.id()), "poison-0");

    let huge = vec![b'x'; 1024 * 1024];
    let poison: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad-json", b"{\"order_id\": 1".to_vec(), "not_json"),
        (
            "wrong-type",
            br#"{"order_id": "abc", "user_id": 37, "amount": 199.99, "status": "created"}"#
                .to_vec(),
            "wrong_type",
        ),
        (
            "missing-field",
            br#"{"order_id": 5, "user_id": 37, "status": "created"}"#.to_vec(),
            "missing_field",
        ),
        ("not-utf8", b"\xff\xfe{}".to_vec(), "not_utf8"),
        ("huge", huge.clone(), "too_large"),
        (
            "out-of-range",
            br#"{"order_id": 6, "user_id": 37, "amount": 9999.0, "status": "created"}"#.to_vec(),
            "out_of_range",
        ),
        ("array", b"[1001, 37]".to_vec(), "wrong_type"),
    ];
    // Poison interleaved with valid orders, on every partition.
    let mut records = Vec::new();
    let mut next_valid = 1;
    for (key, value, _) in &poison {
        for _ in 0..VALID / poison.len() as u64 {
            records.push((Some(next_valid.to_string().into_bytes()), order(next_valid)));
            next_valid += 1;
        }
        records.push((Some(key.as_bytes().to_vec()), value.clone()));
    }
    for id in next_valid..=VALID {
        records.push((Some(id.to_string().into_bytes()), order(id)));
    }
    let producer = producer();
    produce(&producer, pipeline.orders.name(), &records).await;

    let payments = wait_for_payments(pipeline.payments.name(), VALID as usize).await;
    let dead = wait_for_records(pipeline.dlq.name(), poison.len()).await;
    for (kind, n) in [("not_json", 1.0), ("wrong_type", 2.0), ("too_large", 1.0)] {
        let series = format!("shopstream_dead_lettered_total{{kind=\"{kind}\"}}");
        assert_eq!(service.metric(&series), Some(n), "{series}");
    }
    service.stop().await;

    assert_exactly_one_payment_each(&payments, VALID);
    let dead: BTreeMap<String, Record> = dead
        .into_iter()
        .map(|r| (String::from_utf8(r.key.clone().unwrap()).unwrap(), r))
        .collect();
    assert_eq!(dead.len(), poison.len(), "{:?}", dead.keys());
    for (key, value, kind) in &poison {
        let letter = &dead[*key];
        assert_eq!(letter.header(ERROR_KIND), Some(*kind), "{key}");
        assert!(!letter.header(ERROR).unwrap().is_empty(), "{key}");
        assert_eq!(letter.header(SOURCE_TOPIC), Some(pipeline.orders.name()));
        if *key == "huge" {
            assert_eq!(letter.value.len(), DLQ_MAX_VALUE_BYTES);
            assert_eq!(letter.header(ORIGINAL_SIZE_HEADER), Some("1048576"));
        } else {
            assert_eq!(&letter.value, value, "{key}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_era_orders_without_key_or_headers_are_processed() {
    const N: u64 = 200;
    let pipeline = Pipeline::new("pay-seed").await;
    let group = testbed().group("pay-seed");
    let config = pipeline.config(group.id());
    let (ratio, seed) = (config.failure_ratio, config.seed);
    let service = start(pipeline.kafka(), config, "seed-0");
    // What the seed's kafka-python producer wrote: no key, no headers, four fields.
    let records: Vec<_> = (1..=N)
        .map(|id| {
            let value = format!(
                r#"{{"order_id": {id}, "user_id": {}, "amount": 199.99, "status": "created"}}"#,
                id % 100 + 1
            );
            (None, value.into_bytes())
        })
        .collect();
    produce(&producer(), pipeline.orders.name(), &records).await;

    wait_for_payments(pipeline.payments.name(), N as usize).await;
    service.stop().await;
    let records = read_all(pipeline.payments.name()).await;
    let payments: Vec<_> = records.iter().map(Record::payment).collect();
    assert_exactly_one_payment_each(&payments, N);
    for (record, payment) in records.iter().zip(&payments) {
        assert_eq!(
            record.key.as_deref(),
            Some(payment.order_id.to_string().as_bytes())
        );
        let decision = decide(payment.order_id, ratio, seed);
        assert_eq!(payment.status, PaymentStatus::from(&decision));
        assert_eq!(payment.order_created_at, None);
    }
    assert!(read_all(pipeline.dlq.name()).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratio_change_applies_live() {
    const N: u64 = 200;
    let pipeline = Pipeline::new("pay-live").await;
    let group = testbed().group("pay-live");
    let config = payment_service::Config {
        failure_ratio: 0.0,
        ..pipeline.config(group.id())
    };
    let instance = "live-0";
    let service = start(pipeline.kafka(), config, instance);
    let producer = producer();
    produce_orders(&producer, pipeline.orders.name(), 1..=N).await;
    let before = wait_for_payments(pipeline.payments.name(), N as usize).await;
    assert!(
        before.iter().all(|p| p.is_successful()),
        "ratio 0 from the flags"
    );

    let record = ControlRecord {
        generation: 1,
        orders_per_second: 10.0,
        payment_failure_ratio: 1.0,
        paused: false,
        seed: 42,
        extra: Default::default(),
    };
    producer
        .send(
            FutureRecord::to(pipeline.control.name())
                .key(&pipeline.name)
                .payload(&record.to_json()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let landed = Instant::now();
    while service.metric("shopstream_control_generation_applied") != Some(1.0) {
        assert!(
            landed.elapsed() < Duration::from_secs(5),
            "control record not applied"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = landed.elapsed();
    eprintln!("control record applied {took:?} after it was acknowledged");
    assert!(took < Duration::from_secs(1), "applied after {took:?}");
    assert_eq!(
        service.metric("shopstream_payment_failure_ratio_applied"),
        Some(1.0)
    );

    let key = heartbeat_key(&pipeline.name, payment_service::SERVICE, instance);
    let heartbeat = loop {
        let table = shop_kafka::compacted::read_table(
            &pipeline.kafka(),
            pipeline.heartbeats.name(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let heartbeat = table.get(&key).map(|v| Heartbeat::parse(v).unwrap());
        if let Some(heartbeat) = heartbeat.filter(|h| h.applied_generation == Some(1)) {
            break heartbeat;
        }
        assert!(
            landed.elapsed() < Duration::from_secs(10),
            "no heartbeat with generation 1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(heartbeat.payment_failure_ratio, Some(1.0));
    assert_eq!(heartbeat.counters["processed"], N);
    assert_eq!(heartbeat.counters["succeeded"], N);

    produce_orders(&producer, pipeline.orders.name(), N + 1..=2 * N).await;
    let after = wait_for_payments(pipeline.payments.name(), 2 * N as usize).await;
    service.stop().await;
    assert_exactly_one_payment_each(&after, 2 * N);
    for payment in after {
        assert_eq!(
            payment.is_successful(),
            payment.order_id <= N,
            "{payment:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_still_exactly_one_payment() {
    let pipeline = Pipeline::new("pay-kill").await;
    let group = testbed().group("pay-kill");
    let args = pipeline.args(group.id(), "fixed-name");
    let log = std::env::temp_dir().join(format!("{}.log", unique_name("payment-service")));
    let payments = pipeline.payments.name();

    // Orders keep arriving across the crash.
    let feeder = Feeder::start(pipeline.orders.name());
    let mut first = spawn_service(&args, &log);
    wait_for_payments(payments, 300).await;
    first.kill().unwrap(); // SIGKILL: the open transaction is left behind.
    first.wait().unwrap();
    let paid_at_crash = paid_orders(payments).await;

    // The same instance name: its transactional id fences the dead incarnation.
    let mut second = spawn_service(&args, &log);
    wait_for_payments(payments, paid_at_crash + 300).await;
    let n = feeder.stop().await;
    wait_for_payments(payments, n as usize).await;
    terminate(&second);
    let status = wait_with_timeout(&mut second, Duration::from_secs(30));
    assert!(
        status.success(),
        "exit after SIGTERM: {status}; log: {}",
        log.display()
    );

    let payments = read_payments(payments).await;
    assert_exactly_one_payment_each(&payments, n);
    eprintln!("{n} orders, {paid_at_crash} paid before the SIGKILL");
    let _ = std::fs::remove_file(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_to_a_second_replica_keeps_exactly_one_payment() {
    let pipeline = Pipeline::new("pay-rebalance").await;
    let group = testbed().group("pay-rebalance");
    let payments = pipeline.payments.name();
    let feeder = Feeder::start(pipeline.orders.name());
    let first = start(pipeline.kafka(), pipeline.config(group.id()), "replica-a");
    wait_for_payments(payments, 300).await;
    let second = start(pipeline.kafka(), pipeline.config(group.id()), "replica-b");
    let joined = Instant::now();
    while second
        .metric("shopstream_transactions_committed_total")
        .unwrap_or_default()
        < 3.0
    {
        assert!(
            joined.elapsed() < TIMEOUT,
            "the second replica never committed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n = feeder.stop().await;
    wait_for_payments(payments, n as usize).await;
    let aborted = first
        .metric("shopstream_transactions_aborted_total")
        .unwrap();
    first.stop().await;
    second.stop().await;

    let payments = read_payments(payments).await;
    assert_exactly_one_payment_each(&payments, n);
    eprintln!("{n} orders; the first replica aborted {aborted} transactions at the rebalance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_mode_delivers_every_order() {
    const N: u64 = 1000;
    let pipeline = Pipeline::new("pay-alo").await;
    let group = testbed().group("pay-alo");
    let config = payment_service::Config {
        delivery: Delivery::AtLeastOnce,
        ..pipeline.config(group.id())
    };
    let service = start(pipeline.kafka(), config, "alo-0");
    produce_orders(&producer(), pipeline.orders.name(), 1..=N).await;
    wait_for_payments(pipeline.payments.name(), N as usize).await;
    service.stop().await;

    let payments = read_payments(pipeline.payments.name()).await;
    let counts = payments_per_order(&payments);
    assert!((1..=N).all(|id| counts.contains_key(&id)));
    for payment in &payments {
        let decision = decide(payment.order_id, 0.3, 42);
        assert_eq!(payment.status, PaymentStatus::from(&decision));
    }
}

/// Raises the topic's record size limit, so a 1 MiB poison message can be written.
async fn allow_large_messages(topic: &str) {
    let admin = testbed().kafka_admin().unwrap();
    let config =
        AlterConfig::new(ResourceSpecifier::Topic(topic)).set("max.message.bytes", "2097152");
    for result in admin
        .alter_configs([&config], &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
}

/// Reads `topic` until it holds `n` records.
async fn wait_for_records(topic: &str, n: usize) -> Vec<Record> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let records = read_all(topic).await;
        if records.len() >= n {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} records in {topic}",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Starts the real binary, logging to `log` (appended, so both incarnations are kept).
fn spawn_service(args: &[String], log: &std::path::Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_payment-service"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap()
}

/// Sends SIGTERM, as Kubernetes does to stop a Pod.
fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("payment-service did not exit within {timeout:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
