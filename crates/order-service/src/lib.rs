//! order-service: the start of the pipeline. It generates orders at the rate its
//! pipeline's control record asks for (or its flags, until one exists) and writes them to
//! the orders topic, where payment-service picks them up.
//!
//! Guarantees, and where they come from:
//!
//! - **Rate**: a schedule ([`shop_domain::Pacer`]), not a sleep per order, so any rate from
//!   0.01 to 100 000 per second holds over time; a new control record applies at once.
//! - **Unique, increasing ids** across replicas and restarts: blocks claimed on a Kafka
//!   partition ([`shop_kafka::ids`]); no other coordination.
//! - **No silent loss**: an idempotent, `acks=all` producer; a slow broker slows the
//!   generator down instead of losing orders; every failed delivery is counted and logged;
//!   shutdown flushes within a grace period and says how many orders were left unsent.
//!
//! # Layout
//!
//! - [`config`]: [`Config`], the service's flags.
//! - [`order`]: random orders and trace contexts (pure).
//! - `producer`: the idempotent producer, delivery accounting and backpressure.
//! - `generator`: the loop that paces, numbers and sends orders and applies control records.
//! - [`error`]: the one [`Error`] type of the crate.
//!
//! [`run`] wires them: it creates the topics, follows the control records, starts the
//! heartbeats, generates until shutdown and then flushes.

#![forbid(unsafe_code)]

pub mod config;
pub mod error;
mod generator;
mod metrics;
pub mod order;
mod producer;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::SmallRng;
use rdkafka::producer::FutureProducer;
use shop_domain::Pacer;
use shop_kafka::KafkaArgs;
use shop_kafka::context::ClientLog;
use shop_kafka::heartbeat::{self, Heartbeats};
use shop_kafka::topics::{TopicSpec, control_plane_topics, ensure_topics};
use shop_runtime::retry::start_up;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::Config;
pub use error::Error;

use generator::{Applied, Generator, IdSource, SkipLog};
use metrics::{OrderMetrics, gauge_value};
use producer::OrderProducer;

/// The service's name in heartbeat keys and client ids.
pub const SERVICE: &str = "order-service";

/// How long shutdown waits for the broker to acknowledge the orders already sent.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Everything [`run`] needs; built by `main` from flags, or by tests directly. Ready
/// (on `/readyz`) once ids are claimed and orders can flow.
pub type Settings = shop_runtime::ServiceContext<KafkaArgs, Config>;

/// Generates orders until `shutdown` is cancelled, then flushes and returns `Ok(())`.
///
/// Fails when the topics cannot be created or read at start-up, or when the producer
/// fails fatally; a broker that is merely slow or briefly away is waited for.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), Error> {
    let Settings {
        kafka,
        config,
        instance,
        metrics,
        health,
    } = settings;
    // Background tasks (control follower, heartbeats) stop with this token: on shutdown,
    // and also when generation fails.
    let tasks = shutdown.child_token();
    let _stop_tasks = tasks.clone().drop_guard();

    // The broker may not be there yet: wait for it, not ready, instead of exiting.
    let mut topics = control_plane_topics(&kafka);
    topics.push(TopicSpec::events(&config.orders_topic, config.partitions));
    let created = start_up("creating topics", &shutdown, &health, || {
        ensure_topics(&kafka, &topics)
    })
    .await;
    if created.is_none() {
        return Ok(());
    }
    let Some(control) = start_up("reading control records", &shutdown, &health, || {
        shop_kafka::control::follow(&kafka, tasks.clone())
    })
    .await
    else {
        return Ok(());
    };

    let metrics = OrderMetrics::register(&metrics);
    let applied = Applied {
        generation: None,
        orders_per_second: config.orders_per_second,
        paused: config.paused,
    };
    metrics.rate.set(applied.orders_per_second);
    metrics.paused.set(i64::from(applied.paused));
    metrics.generation.set(gauge_value(0));
    let applied = Arc::new(Mutex::new(applied));

    let producer = OrderProducer::new(&kafka, &config.orders_topic, &instance, &metrics, &health)?;
    let ids = IdSource::new(
        id_block_producer(&kafka, &instance)?,
        &kafka.id_block_topic,
        &kafka.pipeline,
        &instance,
    );
    let heartbeats = {
        let (applied, metrics) = (Arc::clone(&applied), metrics.clone());
        let report = move || {
            applied
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .report(&metrics)
        };
        Heartbeats::spawn(
            &kafka,
            SERVICE,
            &instance,
            heartbeat::INTERVAL,
            report,
            tasks.clone(),
        )
        .map_err(Error::Heartbeats)?
    };

    let origin = tokio::time::Instant::now();
    let mut pacer = Pacer::new(config.orders_per_second, origin.elapsed());
    pacer.set_paused(config.paused, origin.elapsed());
    info!(
        pipeline = %kafka.pipeline,
        instance = %instance,
        topic = %config.orders_topic,
        "order-service started"
    );
    let generator = Generator {
        pacer,
        origin,
        control,
        ids,
        producer,
        rng: rand::make_rng::<SmallRng>(),
        applied,
        metrics: metrics.clone(),
        health: health.clone(),
        skip_log: SkipLog::default(),
    };
    let (producer, generated) = generator.run(&heartbeats, &shutdown).await;

    health.set_ready(false, "shutting down");
    let unsent = producer.close(SHUTDOWN_GRACE).await?;
    tasks.cancel();
    heartbeats.finished().await;
    info!(
        produced = metrics.produced.get(),
        delivery_failed = metrics.delivery_failed.get(),
        unsent,
        "order-service stopped"
    );
    if let Err(error) = &generated {
        warn!(%error, "order generation failed");
    }
    generated
}

/// The producer that claims id blocks: idempotent and `acks=all` like the order producer,
/// and unbatched, because a claim is one record that the generator is waiting for.
fn id_block_producer(
    kafka: &KafkaArgs,
    instance: &str,
) -> Result<FutureProducer<ClientLog>, Error> {
    kafka
        .client_config(&format!("order-service-{instance}-ids"))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .create_with_context(ClientLog::new("id-blocks"))
        .map_err(|source| Error::Producer {
            what: "id-block",
            bootstrap: kafka.bootstrap_servers.clone(),
            source,
        })
}
