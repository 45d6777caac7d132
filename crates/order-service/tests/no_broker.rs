//! order-service started while no broker is reachable stays up and not ready, and starts
//! generating once a broker appears, however long that takes (like payment-service and
//! notification-service): a Pod scheduled before Kafka must not crash-loop.
//!
//! The broker "appears" through a relay on a port of our own: nothing listens there at
//! first (connections are refused), later the relay forwards to the test bed's broker, which
//! then tells the client its own address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use shop_testkit::{free_port, testbed, unique_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longer than the start-up timeouts of the Kafka clients (30 s), so a service that gives
/// up at start is gone before the broker comes.
const OUTAGE: Duration = Duration::from_secs(35);

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

/// Forwards every connection on `listener` to `target`.
async fn relay(listener: TcpListener, target: String) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        let target = target.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(&target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_broker_at_start_it_waits_not_ready_and_recovers() {
    let bed = testbed();
    let orders = bed.topic("nobroker-orders", 1).await.unwrap();
    let control = bed.topic("nobroker-control", 1).await.unwrap();
    let heartbeats = bed.topic("nobroker-heartbeats", 1).await.unwrap();
    let ids = bed.topic("nobroker-ids", 1).await.unwrap();
    let (kafka_port, http_port) = (free_port(), free_port());
    let mut service = tokio::process::Command::new(env!("CARGO_BIN_EXE_order-service"))
        .args(["--bootstrap-servers", &format!("127.0.0.1:{kafka_port}")])
        .args(["--http-port", &http_port.to_string()])
        .args(["--pipeline", &unique_name("nobroker")])
        .args(["--orders-topic", orders.name()])
        .args(["--control-topic", control.name()])
        .args(["--heartbeat-topic", heartbeats.name()])
        .args(["--id-block-topic", ids.name()])
        .args(["--orders-per-second", "20"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Up and not ready while nothing answers on the broker's address.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((503, _)) = readyz(http_port).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "order-service never answered /readyz"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The outage outlasts the clients' start-up timeouts; then the broker appears.
    let outage_end = Instant::now() + OUTAGE;
    while Instant::now() < outage_end {
        if let Some(status) = service.try_wait().unwrap() {
            panic!("order-service exited ({status}) while no broker was reachable");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let listener = TcpListener::bind(("127.0.0.1", kafka_port)).await.unwrap();
    tokio::spawn(relay(listener, bed.kafka_bootstrap().to_owned()));

    // Orders flow: the service recovered by itself.
    let consumer: BaseConsumer = bed
        .kafka_config()
        .set("group.id", unique_name("nobroker-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[orders.name()]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = 0;
    while seen < 10 {
        if let Some(status) = service.try_wait().unwrap() {
            panic!("order-service exited ({status}) after the broker appeared");
        }
        assert!(
            Instant::now() < deadline,
            "only {seen} orders within 90 s of the broker appearing"
        );
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) {
            seen += usize::from(message.payload().is_some());
        }
    }
    let ready = readyz(http_port).await;
    assert_eq!(ready.map(|(code, _)| code), Some(200));
}
