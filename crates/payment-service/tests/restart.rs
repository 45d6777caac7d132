//! A replica SIGKILLed with a transaction open and replaced under a **different** instance
//! name, as a Deployment replaces a Pod: the new transactional id does not fence the old
//! one, so the dead incarnation's open transaction is left to the broker's transaction
//! timeout and the partitions to the consumer group (KIP-447). Every order still gets
//! exactly one committed payment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use shop_testkit::{testbed, unique_name};
use support::*;

/// A replica run as in a Pod: no `--instance`, its name from `HOSTNAME` inside Kubernetes.
struct Pod {
    child: Child,
    log: PathBuf,
}

impl Pod {
    fn start(pipeline: &Pipeline, group: &str, name: &str) -> Self {
        let mut args = pipeline.args(group, "unused");
        let at = args.iter().position(|a| a == "--instance").unwrap();
        args.drain(at..at + 2);
        args.extend(["--log-format".to_owned(), "json".to_owned()]);
        let log = std::env::temp_dir().join(format!("{}-{name}.log", unique_name("restart")));
        let child = Command::new(env!("CARGO_BIN_EXE_payment-service"))
            .args(&args)
            .env("HOSTNAME", name)
            .env("KUBERNETES_SERVICE_HOST", "10.96.0.1")
            .env_remove("INSTANCE_ID")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    /// The transactional id the replica logged at start, once it has.
    fn transactional_id(&self) -> Option<String> {
        std::fs::read_to_string(&self.log)
            .ok()?
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|entry| entry["message"] == "payment-service started")
            .and_then(|entry| entry["transactional_id"].as_str().map(String::from))
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "payment-service exited: {status}; log: {}",
                self.log.display()
            );
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a transaction is open on `topic`: on some partition the last stable offset
/// (the end that a `read_committed` client is told) is below the high watermark.
async fn transaction_open(topic: &str) -> bool {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let end = |isolation: &str| {
            let consumer: BaseConsumer = testbed()
                .kafka_config()
                .set("isolation.level", isolation)
                .create()
                .unwrap();
            (0..3)
                .map(|p| {
                    consumer
                        .fetch_watermarks(&topic, p, Duration::from_secs(10))
                        .unwrap()
                        .1
                })
                .collect::<Vec<i64>>()
        };
        let (stable, high) = (end("read_committed"), end("read_uncommitted"));
        eprintln!("payments: last stable offsets {stable:?}, high watermarks {high:?}");
        stable.iter().zip(&high).any(|(s, h)| s < h)
    })
    .await
    .unwrap()
}

async fn wait_for_transactional_id(pod: &mut Pod) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(id) = pod.transactional_id() {
            return id;
        }
        pod.assert_running();
        assert!(
            Instant::now() < deadline,
            "{} never started",
            pod.log.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_under_a_new_pod_name_keeps_exactly_one_payment() {
    let pipeline = Pipeline::new("pay-newpod").await;
    let group = testbed().group("pay-newpod");
    let payments = pipeline.payments.name();
    let feeder = Feeder::start(pipeline.orders.name());

    // Kill until a SIGKILL has left a transaction open (payments written that no
    // `read_committed` reader will ever see). Each replacement comes under a new Pod name.
    let mut ids = Vec::new();
    let mut pod = Pod::start(&pipeline, group.id(), "payments-7d9f8-aaaaa");
    for attempt in 1.. {
        assert!(attempt <= 3, "no SIGKILL caught a transaction open");
        ids.push(wait_for_transactional_id(&mut pod).await);
        let paid = paid_orders(payments).await;
        wait_for_payments(payments, paid + 300).await;
        pod.assert_running();
        pod.child.kill().unwrap(); // SIGKILL: the open transaction is left behind.
        pod.child.wait().unwrap();
        let caught_open = transaction_open(payments).await;
        eprintln!(
            "SIGKILL {attempt} ({}): transaction left open: {caught_open}",
            pod.log.display()
        );
        pod = Pod::start(
            &pipeline,
            group.id(),
            &format!("payments-7d9f8-new{attempt}"),
        );
        if caught_open {
            break;
        }
    }
    let replacement = wait_for_transactional_id(&mut pod).await;
    assert!(
        !ids.contains(&replacement),
        "the replacement reuses a transactional id: {replacement} in {ids:?}"
    );

    let paid = paid_orders(payments).await;
    wait_for_payments(payments, paid + 300).await;
    let n = feeder.stop().await;
    wait_for_payments(payments, n as usize).await;
    pod.assert_running();

    let payments = read_payments(payments).await;
    assert_exactly_one_payment_each(&payments, n);
    eprintln!("{n} orders, each paid once; transactional ids {ids:?} then {replacement}");
}
