//! The Kafka clients of the service and their configuration.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use shop_kafka::KafkaArgs;
use shop_kafka::context::ClientLog;
use shop_runtime::Health;

use crate::batch::Batch;
use crate::config::{Config, Delivery};
use crate::context::PaymentContext;
use crate::error::{Error, Result};
use crate::metrics::ServiceMetrics;

/// How long the broker keeps a transaction open without hearing from its producer. A
/// crashed replica's open transaction (another Pod name, so no fencing) blocks
/// `read_committed` readers of the payments for at most this long.
pub(crate) const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Session timeout of the consumer group: how long a crashed replica keeps its partitions
/// before the group gives them to the others.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// The producer of payments and dead letters: transactional in exactly-once mode (one
/// transactional id per replica), idempotent at least once.
pub(crate) fn producer(
    kafka: &KafkaArgs,
    config: &Config,
    instance: &str,
) -> Result<FutureProducer<ClientLog>> {
    let mut client = kafka.client_config(&format!("payment-service-{instance}"));
    client
        .set("enable.idempotence", "true")
        .set("linger.ms", "5");
    match config.delivery {
        Delivery::ExactlyOnce => client
            .set("transactional.id", config.transactional_id(instance))
            .set(
                "transaction.timeout.ms",
                TRANSACTION_TIMEOUT.as_millis().to_string(),
            ),
        // A payment not acknowledged within this time fails its batch, which is then
        // replayed; nothing is dropped.
        Delivery::AtLeastOnce => client.set("message.timeout.ms", "30000"),
    };
    client
        .create_with_context(ClientLog::new("producer"))
        .map_err(|source| Error::Client {
            what: "payments producer",
            bootstrap: kafka.bootstrap_servers.clone(),
            source: Box::new(source),
        })
}

/// The consumer of orders, subscribed to the orders topic.
pub(crate) fn consumer(
    kafka: &KafkaArgs,
    config: &Config,
    instance: &str,
    producer: &FutureProducer<ClientLog>,
    batch: &Arc<Mutex<Batch>>,
    metrics: &Arc<ServiceMetrics>,
    health: &Health,
) -> Result<StreamConsumer<PaymentContext>> {
    let context = PaymentContext {
        log: ClientLog::new("orders-consumer"),
        batch: Arc::clone(batch),
        producer: Mutex::new(producer.clone()),
        delivery: config.delivery,
        health: health.clone(),
        metrics: Arc::clone(metrics),
        orders_topic: config.orders_topic.clone(),
    };
    let consumer: StreamConsumer<PaymentContext> = kafka
        .client_config(&format!("payment-service-{instance}"))
        .set("group.id", &config.group_id)
        // Only committed orders: an order-service transaction that aborts is never paid.
        .set("isolation.level", "read_committed")
        // Offsets move with the transaction (or after acknowledgement), never on their own.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Eager strategies: every partition is revoked at a rebalance (see `context`).
        .set("partition.assignment.strategy", "range,roundrobin")
        .set(
            "session.timeout.ms",
            SESSION_TIMEOUT.as_millis().to_string(),
        )
        .set("heartbeat.interval.ms", "1000")
        // Statistics feed the consumer_lag gauge.
        .set("statistics.interval.ms", "5000")
        .create_with_context(context)
        .map_err(|source| Error::Client {
            what: "orders consumer",
            bootstrap: kafka.bootstrap_servers.clone(),
            source: Box::new(source),
        })?;
    consumer
        .subscribe(&[&config.orders_topic])
        .map_err(|source| Error::Subscribe {
            group: config.group_id.clone(),
            topic: config.orders_topic.clone(),
            source: Box::new(source),
        })?;
    Ok(consumer)
}
