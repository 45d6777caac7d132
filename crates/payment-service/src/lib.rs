//! payment-service: decides the payment of every order, exactly once.
//!
//! It reads orders, decides each payment with [`shop_domain::decide`] (a pure function of
//! order id, failure ratio and seed, so a replayed order gets the same outcome), and writes
//! the payment, all inside Kafka transactions that also carry the consumer offsets
//! (consume-transform-produce). An order is therefore paid exactly once, across crashes,
//! restarts and rebalances; `read_committed` readers never see a payment of an aborted
//! attempt. The offsets are sent with the consumer's group metadata, so an incarnation
//! that lost its partitions cannot commit a transaction for them (KIP-447): that is what
//! fences a replica replaced under a new Pod name, whose transactional id differs. Orders that fail to parse or validate go to the dead-letter topic in the same
//! transaction. The failure ratio and seed follow the pipeline's control record live.
//!
//! # Layout
//!
//! - [`config`]: [`Config`], the service's flags (topics, group, decision, delivery).
//! - `process`: one order message → payment or dead letter (pure, unit-tested).
//! - `worker`: the loop: consume, send, commit by time; retries, aborts, rewinds, drain.
//! - `batch`: the open transaction's offsets and counts, shared with the rebalance callback.
//! - `context`: the orders consumer's callbacks: consumer lag, and the rule that the
//!   open transaction is aborted before partitions are revoked.
//! - `clients`: the producer and consumer configuration.
//! - `calls`: librdkafka's blocking calls, run without stalling the runtime.
//! - `metrics`: Prometheus metrics and the heartbeat's report.
//! - [`error`]: [`Error`], what ends [`run`] with a failure.
//!
//! [`run`] is the whole service; `main.rs` only wires flags, logging, signals and the
//! HTTP endpoint around it.

#![forbid(unsafe_code)]

mod batch;
mod calls;
mod clients;
pub mod config;
mod context;
pub mod error;
mod metrics;
mod process;
mod worker;

#[cfg(test)]
mod outage_tests;

use std::sync::{Arc, Mutex};

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use shop_domain::ControlRecord;
use shop_kafka::KafkaArgs;
use shop_kafka::context::ClientLog;
use shop_kafka::heartbeat::{self, Heartbeats};
use shop_kafka::topics::{TopicSpec, control_plane_topics, ensure_topics};
use shop_runtime::retry::{self, Retryable, start_up};
use shop_runtime::{Health, Metrics};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::{Config, Delivery};
pub use error::{Error, Result};
pub use process::{DLQ_MAX_VALUE_BYTES, ORIGINAL_SIZE_HEADER};

use crate::batch::Batch;
use crate::calls::{CALL_TIMEOUT, blocking};
use crate::metrics::ServiceMetrics;
use crate::process::DecisionSettings;
use crate::worker::Worker;

/// The service's name in heartbeats.
pub const SERVICE: &str = "payment-service";

/// Everything [`run`] needs from its caller. The instance is part of the transactional id;
/// ready (on `/readyz`) once the producer is initialised and the consumer holds an
/// assignment.
pub type Settings = shop_runtime::ServiceContext<KafkaArgs, Config>;

/// Runs payment-service until `shutdown` is cancelled, then commits the open transaction,
/// leaves the group and returns `Ok(())`.
///
/// Creates the topics it needs when they are missing, follows the pipeline's control
/// records and publishes heartbeats. A broker that is away is waited for with backoff;
/// `run` fails only on what a new incarnation must fix (see [`Error`]).
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<()> {
    let Settings {
        kafka,
        config,
        instance,
        metrics,
        health,
    } = settings;
    health.set_ready(false, "connecting to Kafka");
    // Stops the control follower and heartbeats when `run` returns, however it returns.
    let background = shutdown.child_token();
    let _stop_background = background.clone().drop_guard();

    let mut topics = control_plane_topics(&kafka);
    for topic in [
        &config.orders_topic,
        &config.payments_topic,
        &config.dlq_topic,
    ] {
        topics.push(TopicSpec::events(topic, config.partitions));
    }
    let created = start_up("creating topics", &shutdown, &health, || {
        ensure_topics(&kafka, &topics)
    });
    if created.await.is_none() {
        return Ok(());
    }
    let following = start_up("reading control records", &shutdown, &health, || {
        shop_kafka::control::follow(&kafka, background.clone())
    });
    let Some(control) = following.await else {
        return Ok(());
    };

    serve(
        kafka, config, instance, metrics, health, control, shutdown, background,
    )
    .await
}

/// The service once its topics exist and control records are followed: heartbeats, the
/// clients, and the processing loop until `shutdown`. `background` stops the heartbeats.
#[allow(clippy::too_many_arguments)]
async fn serve(
    kafka: KafkaArgs,
    config: Config,
    instance: String,
    metrics: Metrics,
    health: Health,
    control: watch::Receiver<Option<ControlRecord>>,
    shutdown: CancellationToken,
    background: CancellationToken,
) -> Result<()> {
    let flags = DecisionSettings {
        failure_ratio: config.failure_ratio,
        seed: config.seed,
    };
    let service_metrics = Arc::new(ServiceMetrics::register(&metrics, flags));
    let report = {
        let service_metrics = Arc::clone(&service_metrics);
        move || service_metrics.report()
    };
    let heartbeats = Heartbeats::spawn(
        &kafka,
        SERVICE,
        &instance,
        heartbeat::INTERVAL,
        report,
        background,
    )?;

    let transactional_id = config.transactional_id(&instance);
    let producer = clients::producer(&kafka, &config, &instance)?;
    if config.delivery == Delivery::ExactlyOnce {
        let initialised = init_transactions(&producer, &transactional_id, &shutdown, &health);
        if !initialised.await? {
            return Ok(());
        }
    }
    let batch = Arc::new(Mutex::new(Batch::default()));
    let consumer = clients::consumer(
        &kafka,
        &config,
        &instance,
        &producer,
        &batch,
        &service_metrics,
        &health,
    )?;
    health.set_ready(false, "waiting for a partition assignment");
    info!(
        orders = %config.orders_topic,
        payments = %config.payments_topic,
        dlq = %config.dlq_topic,
        group = %config.group_id,
        transactional_id = %transactional_id,
        delivery = ?config.delivery,
        failure_ratio = config.failure_ratio,
        seed = config.seed,
        "payment-service started"
    );
    let worker = Worker {
        kafka,
        instance,
        config,
        transactional_id,
        consumer,
        producer,
        batch,
        metrics: service_metrics,
        heartbeats,
        health: health.clone(),
        settings: flags,
        draining_since: None,
        transaction_began: None,
    };
    let result = worker.run(control, shutdown).await;
    health.set_ready(false, "stopped");
    result
}

/// Initialises transactions: fences an earlier incarnation with the same transactional
/// id (a restart under the same instance name) and aborts the transaction it left open. Retried while the broker is away; returns
/// `false` when shutdown came first.
async fn init_transactions(
    producer: &FutureProducer<ClientLog>,
    transactional_id: &str,
    shutdown: &CancellationToken,
    health: &Health,
) -> Result<bool> {
    let attempt = || async { blocking(|| producer.init_transactions(CALL_TIMEOUT)) };
    let initialised = attempt
        .retry(retry::POLICY)
        .when(|error| !matches!(error, KafkaError::Transaction(e) if e.is_fatal()))
        .notify(|error, delay| {
            warn!(%transactional_id, %error, retry_in = ?delay, "initialising transactions failed; retrying");
            health.set_ready(false, format!("initialising transactions: {error}"));
        });
    let result = tokio::select! {
        () = shutdown.cancelled() => return Ok(false),
        result = initialised => result,
    };
    result.map(|()| true).map_err(|source| Error::Transaction {
        transactional_id: transactional_id.to_owned(),
        doing: "initialising transactions",
        source: Box::new(source),
    })
}
