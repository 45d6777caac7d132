//! The four images built from the `Dockerfile` (`scripts/images.sh build`, which `make
//! test` runs first when the test bed has a Docker engine), run as users run them: the
//! three services together against the bed's broker (orders, payments and notification
//! lines on the container's stdout), the controller image's `shop-controller` and
//! `shopctl`, and the images' metadata (non-root user, entrypoint, OCI labels, no shell).
//!
//! Containers run on the host's network (the bed's broker listens on 127.0.0.1) with the
//! restrictions of the chart's Pods: read-only root filesystem, no capabilities, no
//! privilege escalation, the image's own non-root user.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use shop_domain::{Order, Payment};
use shop_testkit::{TestTopic, testbed, unique_name};

const TIMEOUT: Duration = Duration::from_secs(120);
const SERVICES: [&str; 3] = ["order-service", "payment-service", "notification-service"];

/// The image of `binary` as the controller names it by default:
/// `shopstream/<binary>:<crate version>`.
fn image(binary: &str) -> String {
    format!("shopstream/{binary}:{}", env!("CARGO_PKG_VERSION"))
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect(
        "docker not found: the image tests need the test bed's Docker engine (make testbed-docker)",
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn require_image(image: &str) {
    let inspected = docker(&["image", "inspect", image]);
    assert!(
        inspected.status.success(),
        "image {image} not found: build the images first (scripts/images.sh build, or make test)"
    );
}

/// A detached container, removed on drop.
struct Container {
    name: String,
}

impl Container {
    fn run(binary: &str, args: &[String]) -> Self {
        let image = image(binary);
        require_image(&image);
        let name = unique_name(&format!("img-{binary}"));
        let mut command: Vec<&str> = vec![
            "run",
            "--detach",
            "--name",
            &name,
            "--network",
            "host",
            "--read-only",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            &image,
        ];
        command.extend(args.iter().map(String::as_str));
        let started = docker(&command);
        assert!(
            started.status.success(),
            "docker run {image} failed: {}",
            text(&started.stderr)
        );
        Self { name }
    }

    /// What the container wrote to stdout (stderr, its log, is left out).
    fn stdout(&self) -> String {
        text(&docker(&["logs", &self.name]).stdout)
    }

    /// Its log (stderr), for failure messages.
    fn log(&self) -> String {
        text(&docker(&["logs", &self.name]).stderr)
    }

    fn running(&self) -> bool {
        text(&docker(&["inspect", "-f", "{{.State.Running}}", &self.name]).stdout).trim() == "true"
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        docker(&["rm", "--force", &self.name]);
    }
}

/// Values of every committed record in `topic` so far (from the beginning).
fn values(topic: &str) -> Vec<Vec<u8>> {
    let consumer: BaseConsumer = testbed()
        .kafka_config()
        .set("group.id", unique_name("img-reader"))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut values = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut eof = BTreeSet::new();
    let partitions = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .map(|m| m.topics().first().map_or(0, |t| t.partitions().len()))
        .unwrap_or(0);
    while Instant::now() < deadline && (partitions == 0 || eof.len() < partitions) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => values.extend(message.payload().map(<[u8]>::to_vec)),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            _ => {}
        }
    }
    values
}

/// Polls `check` until it returns a value, failing after [`TIMEOUT`] with `context()`.
fn eventually<T>(
    what: &str,
    context: impl Fn() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_images_run_the_pipeline_against_the_beds_broker() {
    let bed = testbed();
    let topic = async |prefix: &str, partitions: i32| -> TestTopic {
        bed.topic(prefix, partitions).await.unwrap()
    };
    let orders = topic("img-orders", 3).await;
    let payments = topic("img-payments", 3).await;
    let dlq = topic("img-dlq", 1).await;
    let control = topic("img-control", 1).await;
    let heartbeats = topic("img-heartbeats", 1).await;
    let id_blocks = topic("img-ids", 1).await;
    let pipeline = unique_name("img");
    let common = [
        "--bootstrap-servers",
        bed.kafka_bootstrap(),
        "--pipeline",
        &pipeline,
        "--control-topic",
        control.name(),
        "--heartbeat-topic",
        heartbeats.name(),
        "--id-block-topic",
        id_blocks.name(),
        "--http-port",
        "0",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        common.iter().chain(extra).map(|a| a.to_string()).collect()
    };

    let notifications = Container::run(
        "notification-service",
        &with(&[
            "--payments-topic",
            payments.name(),
            "--dlq-topic",
            dlq.name(),
            "--group-id",
            &unique_name("img-notifications"),
        ]),
    );
    let payer = Container::run(
        "payment-service",
        &with(&[
            "--orders-topic",
            orders.name(),
            "--payments-topic",
            payments.name(),
            "--dlq-topic",
            dlq.name(),
            "--group-id",
            &unique_name("img-payments"),
            "--failure-ratio",
            "0.5",
        ]),
    );
    let generator = Container::run(
        "order-service",
        &with(&["--orders-topic", orders.name(), "--orders-per-second", "20"]),
    );
    let logs = || {
        [&generator, &payer, &notifications]
            .iter()
            .zip(SERVICES)
            .map(|(c, name)| format!("--- {name} (running: {}):\n{}", c.running(), c.log()))
            .collect::<Vec<_>>()
            .join("\n")
    };

    let ordered: BTreeSet<u64> = eventually("20 orders from the order-service image", logs, || {
        let ids: BTreeSet<u64> = values(orders.name())
            .iter()
            .map(|v| Order::parse(v).unwrap().order_id)
            .collect();
        (ids.len() >= 20).then_some(ids)
    });
    let paid: Vec<Payment> = eventually("20 payments from the payment-service image", logs, || {
        let paid: Vec<Payment> = values(payments.name())
            .iter()
            .map(|v| Payment::parse(v).unwrap())
            .collect();
        (paid.len() >= 20).then_some(paid)
    });
    // Every payment is for a generated order (orders read after the payments).
    let paid_ids: BTreeSet<u64> = paid.iter().map(|p| p.order_id).collect();
    let ordered: BTreeSet<u64> = ordered
        .into_iter()
        .chain(
            values(orders.name())
                .iter()
                .map(|v| Order::parse(v).unwrap().order_id),
        )
        .collect();
    assert!(
        paid_ids.is_subset(&ordered),
        "payments for orders that were never generated: {:?}",
        paid_ids.difference(&ordered).collect::<Vec<_>>()
    );
    assert!(paid.iter().any(Payment::is_successful) && paid.iter().any(|p| !p.is_successful()));

    // One readable line per payment on the notification container's stdout.
    let lines = eventually(
        "20 notification lines on the container's stdout",
        logs,
        || {
            let lines: Vec<String> = notifications
                .stdout()
                .lines()
                .filter(|l| l.starts_with('✅') || l.starts_with('❌'))
                .map(String::from)
                .collect();
            (lines.len() >= 20).then_some(lines)
        },
    );
    for line in &lines {
        let id: u64 = line
            .split("for Order ")
            .nth(1)
            .and_then(|rest| rest.split([' ', '(']).next())
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("unreadable notification line {line:?}"));
        assert!(
            values(payments.name())
                .iter()
                .any(|v| Payment::parse(v).unwrap().order_id == id),
            "notified order {id} has no payment"
        );
    }
    for (container, name) in [&generator, &payer, &notifications].iter().zip(SERVICES) {
        assert!(container.running(), "{name} exited:\n{}", container.log());
    }
}

#[test]
fn the_controller_image_answers_help_and_prints_the_checked_in_crd() {
    let image = image("shop-controller");
    require_image(&image);
    let help = docker(&["run", "--rm", "--read-only", &image, "--help"]);
    assert!(help.status.success(), "{}", text(&help.stderr));
    assert!(
        text(&help.stdout).contains("ShopPipeline"),
        "{}",
        text(&help.stdout)
    );

    let crd = docker(&["run", "--rm", "--read-only", &image, "crd"]);
    assert!(crd.status.success(), "{}", text(&crd.stderr));
    let checked_in = std::fs::read_to_string(
        shop_testkit::bed::repo_dir().join("deploy/crds/shoppipelines.shopstream.dev.yaml"),
    )
    .unwrap();
    assert_eq!(text(&crd.stdout), checked_in);

    // shopctl is in the controller image: the chart's `helm test` runs it.
    let shopctl = docker(&[
        "run",
        "--rm",
        "--read-only",
        "--entrypoint",
        "shopctl",
        &image,
        "--help",
    ]);
    assert!(shopctl.status.success(), "{}", text(&shopctl.stderr));
    assert!(
        text(&shopctl.stdout).contains("verify"),
        "{}",
        text(&shopctl.stdout)
    );
}

#[test]
fn every_image_runs_its_binary_as_a_numeric_non_root_user_without_a_shell() {
    for binary in SERVICES.iter().chain(&["shop-controller"]) {
        let image = image(binary);
        require_image(&image);
        let config = docker(&["image", "inspect", "-f", "{{json .Config}}", &image]);
        let config: serde_json::Value = serde_json::from_slice(&config.stdout).unwrap();
        assert_eq!(config["User"], "65532:65532", "{image}");
        assert_eq!(
            config["Entrypoint"],
            serde_json::json!([format!("/usr/local/bin/{binary}")]),
            "{image}"
        );
        let labels = &config["Labels"];
        assert_eq!(labels["org.opencontainers.image.title"], *binary, "{image}");
        assert_eq!(
            labels["org.opencontainers.image.version"],
            env!("CARGO_PKG_VERSION"),
            "{image}"
        );
        assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
        let shell = docker(&[
            "run",
            "--rm",
            "--entrypoint",
            "/bin/sh",
            &image,
            "-c",
            "true",
        ]);
        assert!(!shell.status.success(), "{image} has a shell");
    }
}
