//! A broker outage longer than the consumer session timeout, and a broker that comes back
//! on its old data: the three services keep running (the same processes, never restarted),
//! turn ready again, and every order ends with exactly one committed payment and a
//! notification.
//!
//! The broker is one of the test's own (`testbed/kafka.sh` on other ports and another
//! state directory): the shared test bed's broker must never be stopped. It is stopped with
//! `kafka.sh stop` and started again with `kafka.sh start`, which keeps its data directory,
//! as a real broker restart does. The services run as processes (`cargo build --workspace
//! --bins` first), as in a Pod.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use shop_domain::{ControlRecord, Order, Payment};
use shop_testkit::{OwnBroker, free_port, test_log, workspace_binary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longer than every session timeout of the services' consumer groups (10 s) and than
/// payment-service's transaction timeout (10 s): the broker forgets the groups' members
/// and times out the open transactions.
const OUTAGE: Duration = Duration::from_secs(60);

/// How long to wait for something that follows from the broker being back.
const TIMEOUT: Duration = Duration::from_secs(180);

const PARTITIONS: i32 = 3;

/// One service as a process, killed when dropped (the test checks its exit itself).
struct Service {
    name: &'static str,
    child: Child,
    port: u16,
}

impl Service {
    fn start(name: &'static str, broker: &OwnBroker, args: &[&str], stdout: Stdio) -> Self {
        let port = free_port();
        let child = Command::new(workspace_binary(name))
            .args(["--bootstrap-servers", broker.bootstrap()])
            .args(["--pipeline", "outage"])
            .args(["--control-topic", "control"])
            .args(["--heartbeat-topic", "heartbeats"])
            .args(["--id-block-topic", "ids"])
            .args(["--partitions", &PARTITIONS.to_string()])
            .args(["--http-port", &port.to_string()])
            .args(["--instance", &format!("{name}-0")])
            .args(args)
            .stdout(stdout)
            .stderr(test_log(&format!("broker-outage-{name}")))
            .spawn()
            .unwrap();
        Self { name, child, port }
    }

    /// Fails when the process has exited: it must live through the outage.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "{} exited ({status}); see target/test-logs/broker-outage-{}.log",
                self.name, self.name
            );
        }
    }

    async fn ready(&self) -> bool {
        matches!(get(self.port, "/readyz").await, Some((200, _)))
    }

    async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = get(self.port, "/metrics").await?;
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on 127.0.0.1:`port`: the status code and body, or `None` when nothing answers.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    Some((code, body.to_owned()))
}

/// Polls `check` every 200 ms until it returns `Some`, failing after `TIMEOUT` and as soon
/// as one of `services` has exited.
async fn eventually<T>(
    what: &str,
    services: &mut [Service],
    mut check: impl AsyncFnMut(&[Service]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        for service in services.iter_mut() {
            service.assert_running();
        }
        if let Some(value) = check(services).await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn all_ready(services: &[Service]) -> bool {
    for service in services {
        if !service.ready().await {
            return false;
        }
    }
    true
}

/// Every committed record value of `topic`, read with a fresh `read_committed` consumer up
/// to the high watermarks at the call (aborted records and markers are skipped).
async fn read_committed(bootstrap: &str, topic: &'static str) -> Vec<Vec<u8>> {
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || read_committed_blocking(&bootstrap, topic))
        .await
        .unwrap()
}

fn read_committed_blocking(bootstrap: &str, topic: &str) -> Vec<Vec<u8>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "outage-reader")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for partition in 0..PARTITIONS {
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
    let mut values = Vec::new();
    if ends.is_empty() {
        return values;
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while !ends.is_empty() {
        assert!(Instant::now() < deadline, "{topic} not read to {ends:?}");
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            values.push(message.unwrap().payload().unwrap_or_default().to_vec());
        }
        let position = consumer.position().unwrap();
        ends.retain(|&p, &mut end| {
            !matches!(position.find_partition(topic, p).map(|e| e.offset()),
                      Some(Offset::Offset(at)) if at >= end)
        });
    }
    values
}

/// Records written to `topic` so far (order-service's producer is idempotent, not
/// transactional, so the high watermarks count its orders exactly).
async fn records_in(bootstrap: &str, topic: &'static str) -> Option<i64> {
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .ok()?;
        (0..PARTITIONS)
            .map(|p| {
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(5))
                    .ok()
                    .map(|(_, high)| high)
            })
            .sum()
    })
    .await
    .unwrap()
}

/// Every order id written to the orders topic (committed), each once.
async fn order_ids(bootstrap: &str) -> BTreeMap<u64, usize> {
    count(
        read_committed(bootstrap, "orders")
            .await
            .iter()
            .map(|v| Order::parse(v).unwrap().order_id),
    )
}

/// The order id of a notification line (`✅ Payment Successful for Order 17 · …`).
fn notified_order(line: &str) -> Option<u64> {
    let rest = line.split("for Order ").nth(1)?;
    rest.split([' ', '(']).next()?.parse().ok()
}

fn notifications(path: &std::path::Path) -> BTreeMap<u64, usize> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    count(text.lines().filter_map(notified_order))
}

fn count(ids: impl IntoIterator<Item = u64>) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    counts
}

/// Sends SIGTERM, as Kubernetes does to stop a Pod, and waits for a clean exit.
async fn stop(service: &mut Service) {
    let status = Command::new("kill")
        .args(["-TERM", &service.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = service.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not exit within 30 s of SIGTERM",
            service.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{} exited with {status}", service.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_without_the_broker_loses_and_repeats_no_payment() {
    let broker = OwnBroker::start("");
    let bootstrap = broker.bootstrap().to_owned();
    let lines_file = "broker-outage-notification-lines";
    let lines_path =
        shop_testkit::bed::repo_dir().join(format!("target/test-logs/{lines_file}.log"));
    let mut services = vec![
        Service::start(
            "order-service",
            &broker,
            &["--orders-topic", "orders", "--orders-per-second", "100"],
            Stdio::null(),
        ),
        Service::start(
            "payment-service",
            &broker,
            &[
                "--orders-topic",
                "orders",
                "--payments-topic",
                "payments",
                "--dlq-topic",
                "payments-dlq",
                "--group-id",
                "payments",
                "--failure-ratio",
                "0.3",
            ],
            Stdio::null(),
        ),
        Service::start(
            "notification-service",
            &broker,
            &[
                "--payments-topic",
                "payments",
                "--dlq-topic",
                "notifications-dlq",
                "--group-id",
                "notifications",
            ],
            Stdio::from(test_log(lines_file)),
        ),
    ];

    // Orders flow through all three.
    eventually(
        "traffic through the three services",
        &mut services,
        async |s| (all_ready(s).await && notifications(&lines_path).len() >= 200).then_some(()),
    )
    .await;

    // The outage: longer than the session timeouts, with orders, payments and
    // notifications in flight.
    broker.stop();
    let stopped = Instant::now();
    let mut went_unready = [false; 3];
    while stopped.elapsed() < OUTAGE {
        for (service, unready) in services.iter_mut().zip(&mut went_unready) {
            service.assert_running();
            *unready |= !service.ready().await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("not ready during the outage (order, payment, notification): {went_unready:?}");
    broker.start_again();

    // Back: ready again, and orders flow again.
    let at_restart = eventually("the orders topic readable", &mut services, async |_| {
        records_in(&bootstrap, "orders").await
    })
    .await;
    eventually("the three services ready again", &mut services, async |s| {
        all_ready(s).await.then_some(())
    })
    .await;
    eventually("new orders after the restart", &mut services, async |_| {
        let now = records_in(&bootstrap, "orders").await?;
        (now >= at_restart + 200).then_some(())
    })
    .await;

    // Stop the generator through the control loop, then wait for every order's payment
    // and notification.
    let pause = ControlRecord {
        generation: 1,
        orders_per_second: 100.0,
        payment_failure_ratio: 0.3,
        paused: true,
        seed: 0,
        extra: Default::default(),
    };
    let producer: FutureProducer = broker.client_config().create().unwrap();
    producer
        .send(
            FutureRecord::to("control")
                .key("outage")
                .payload(&pause.to_json()),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    eventually("order-service paused", &mut services, async |s| {
        let applied = s[0].metric("shopstream_control_generation_applied").await;
        (applied == Some(1.0)).then_some(())
    })
    .await;
    let (orders, payments) = eventually("a payment for every order", &mut services, async |_| {
        let orders = order_ids(&bootstrap).await;
        let payments = count(
            read_committed(&bootstrap, "payments")
                .await
                .iter()
                .map(|v| Payment::parse(v).unwrap().order_id),
        );
        let settled = orders.keys().all(|id| payments.contains_key(id));
        // Nothing written meanwhile: the generator is paused and all its orders are in.
        let still = order_ids(&bootstrap).await.len() == orders.len();
        (settled && still).then_some((orders, payments))
    })
    .await;
    let notified = eventually(
        "a notification for every order",
        &mut services,
        async |_| {
            let notified = notifications(&lines_path);
            orders
                .keys()
                .all(|id| notified.contains_key(id))
                .then_some(notified)
        },
    )
    .await;

    let repeated_orders: Vec<_> = orders.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated_orders.is_empty(),
        "order ids written twice: {repeated_orders:?}"
    );
    let duplicates: Vec<_> = payments.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "orders paid more than once: {duplicates:?}"
    );
    let unknown: Vec<_> = payments
        .keys()
        .filter(|id| !orders.contains_key(id))
        .collect();
    assert!(
        unknown.is_empty(),
        "payments of unknown orders: {unknown:?}"
    );
    let notified_twice: Vec<_> = notified.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "{} orders, each paid once and notified ({} notified more than once)",
        orders.len(),
        notified_twice.len()
    );

    // The same processes, never restarted, stop cleanly.
    for service in &mut services {
        service.assert_running();
    }
    for service in services.iter_mut().rev() {
        stop(service).await;
    }
}
