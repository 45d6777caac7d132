//! Two replicas started by hand on one host, with the same HOSTNAME and no `--instance`,
//! are two instances: different transactional ids (so neither fences the other) and
//! together exactly one payment per order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shop_testkit::testbed;
use support::{
    Pipeline, TIMEOUT, assert_exactly_one_payment_each, produce_orders, producer, wait_for_payments,
};

/// A replica started by hand: the flags of `Pipeline::args` without `--instance`, the
/// environment of a shell on a machine named `shared-host`, outside Kubernetes.
struct Replica {
    child: Child,
    log: std::path::PathBuf,
}

impl Replica {
    fn start(pipeline: &Pipeline, group: &str, n: usize) -> Self {
        let mut args = pipeline.args(group, "unused");
        let at = args.iter().position(|a| a == "--instance").unwrap();
        args.drain(at..at + 2);
        args.extend(["--log-format".to_owned(), "json".to_owned()]);
        let log = std::env::temp_dir().join(format!("{}-replica-{n}.log", pipeline.name));
        let child = Command::new(env!("CARGO_BIN_EXE_payment-service"))
            .args(&args)
            .env("HOSTNAME", "shared-host")
            .env_remove("INSTANCE_ID")
            .env_remove("KUBERNETES_SERVICE_HOST")
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
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_by_hand_on_one_host_do_not_share_an_identity() {
    let pipeline = Pipeline::new("instances").await;
    let group = testbed().group("instances");
    let replicas = [
        Replica::start(&pipeline, group.id(), 1),
        Replica::start(&pipeline, group.id(), 2),
    ];

    let deadline = Instant::now() + TIMEOUT;
    let ids: Vec<String> = loop {
        let ids: Vec<String> = replicas
            .iter()
            .filter_map(Replica::transactional_id)
            .collect();
        if ids.len() == 2 {
            break ids;
        }
        assert!(
            Instant::now() < deadline,
            "both replicas did not start within {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(
        ids[0], ids[1],
        "two processes share the transactional id {}",
        ids[0]
    );

    let n = 600;
    produce_orders(&producer(), pipeline.orders.name(), 1..=n).await;
    let payments = wait_for_payments(pipeline.payments.name(), n as usize).await;
    assert_exactly_one_payment_each(&payments, n);
}
