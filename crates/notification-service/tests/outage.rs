//! notification-service through a broker outage, with librdkafka's in-process mock
//! cluster: the one component of the test bed that can take a broker down and bring it
//! back on command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notification_service::{Config, Settings};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use shop_kafka::KafkaArgs;
use shop_runtime::{Health, Metrics};
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(60);

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
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    async fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{needle:?} not printed within {TIMEOUT:?}; printed: {}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn send(producer: &FutureProducer, order_id: u64) {
    let value = format!(r#"{{"order_id": {order_id}, "status": "payment_successful"}}"#);
    producer
        .send(
            FutureRecord::to("payments")
                .key(&order_id.to_string())
                .payload(&value),
            TIMEOUT,
        )
        .await
        .map_err(|(e, _)| e)
        .expect("payment written");
}

#[tokio::test]
async fn a_broker_outage_is_waited_out_and_payments_after_it_are_printed() {
    shop_runtime::telemetry::init_for_tests();
    let cluster = MockCluster::new(1).unwrap();
    for topic in ["payments", "dlq", "heartbeats"] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    let health = Health::new();
    let settings = Settings {
        kafka: KafkaArgs {
            heartbeat_topic: "heartbeats".into(),
            ..KafkaArgs::for_broker(cluster.bootstrap_servers())
        },
        config: Config {
            payments_topic: "payments".into(),
            dlq_topic: "dlq".into(),
            group_id: "outage".into(),
            ..Config::default()
        },
        instance: "outage-0".into(),
        metrics: Metrics::new(),
        health: health.clone(),
    };
    let output = Output::default();
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(notification_service::run(
        settings,
        output.clone(),
        shutdown.clone(),
    ));
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .unwrap();

    send(&producer, 7001).await;
    output.wait_for("Order 7001").await;

    cluster.broker_down(1).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while health.is_ready().0 {
        assert!(Instant::now() < deadline, "still ready without a broker");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!service.is_finished(), "the service waits for the broker");

    cluster.broker_up(1).unwrap();
    send(&producer, 7002).await;
    output.wait_for("Order 7002").await;
    assert!(health.is_ready().0, "ready again once payments flow");

    shutdown.cancel();
    tokio::time::timeout(TIMEOUT, service)
        .await
        .expect("stopped in time")
        .unwrap()
        .expect("clean shutdown");
    assert_eq!(
        output.text(),
        "✅ Payment Successful for Order 7001\n✅ Payment Successful for Order 7002\n"
    );
}
