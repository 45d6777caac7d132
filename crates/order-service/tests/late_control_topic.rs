//! order-service started on a broker where the control topic does not exist, and cannot be
//! created by the service, stays up and not ready; once someone creates the topic it
//! starts generating by itself. (A new user's `make demo` once saw order-service exit at
//! once with "topic shopstream.control does not exist".)
//!
//! The broker is one of the test's own (the test bed's Kafka, run by `testbed/kafka.sh` on
//! other ports) with `default.replication.factor=3` on its single node: every topic created
//! with the broker's default replication factor, as order-service creates its topics, is
//! refused, as on a cluster where an operator creates the topics. The test creates the
//! orders, heartbeat and id-block topics first, the control topic only later.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use shop_domain::control::{CONTROL_TOPIC, HEARTBEAT_TOPIC, ID_BLOCK_TOPIC};
use shop_testkit::{OwnBroker, free_port, test_log, unique_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(60);

/// `GET /readyz` on the service's port: the status code and body, or `None` when nothing
/// answers.
async fn readyz(port: u16) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    Some((code, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_control_topic_it_waits_not_ready_and_starts_once_the_topic_exists() {
    let broker = OwnBroker::start("default.replication.factor=3");
    let orders = "order_topic";
    broker.create_topic(orders, 3, "delete").await;
    broker.create_topic(HEARTBEAT_TOPIC, 1, "compact").await;
    broker.create_topic(ID_BLOCK_TOPIC, 1, "compact").await;

    // The defaults a user gets by hand (`order_topic`, `shopstream.control`, ...).
    let log_name = unique_name("late-control-topic");
    let log_path = shop_testkit::bed::repo_dir().join(format!("target/test-logs/{log_name}.log"));
    let http_port = free_port();
    let mut service = tokio::process::Command::new(env!("CARGO_BIN_EXE_order-service"))
        .args(["--bootstrap-servers", broker.bootstrap()])
        .args(["--http-port", &http_port.to_string()])
        .args(["--orders-per-second", "20"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(test_log(&log_name))
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Up and not ready, naming the control topic, and retrying: two failed attempts.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = service.try_wait().unwrap() {
            panic!(
                "order-service exited ({status}) without its control topic; see {}",
                log_path.display()
            );
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let attempts = log.matches("start-up step failed; retrying").count();
        let ready = readyz(http_port).await;
        if attempts >= 2
            && let Some((503, body)) = &ready
            && body.contains(CONTROL_TOPIC)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "order-service did not report the missing control topic: /readyz {ready:?}, {attempts} failed attempts; see {}",
            log_path.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    broker.create_topic(CONTROL_TOPIC, 1, "compact").await;

    // Orders flow: the service started by itself once the topic existed.
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", unique_name("late-control-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[orders]).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let mut seen = 0;
    while seen < 10 {
        if let Some(status) = service.try_wait().unwrap() {
            panic!(
                "order-service exited ({status}) after its control topic appeared; see {}",
                log_path.display()
            );
        }
        assert!(
            Instant::now() < deadline,
            "only {seen} orders within {TIMEOUT:?} of the control topic appearing; see {}",
            log_path.display()
        );
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) {
            seen += usize::from(message.payload().is_some());
        }
    }
    let ready = readyz(http_port).await;
    assert_eq!(ready.map(|(code, _)| code), Some(200));
}
