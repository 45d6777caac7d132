//! The Kafka clients of the service, configured for at-least-once printing, and a client
//! context that reports librdkafka's own events and rebalances through tracing (the
//! default context writes to the `log` crate, which no subscriber here listens to) and
//! marks the process not ready while no broker can be reached.

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use shop_kafka::KafkaArgs;
use shop_kafka::context::ClientLog;
use shop_runtime::Health;
use tracing::{info, warn};

use crate::SERVICE;
use crate::config::Config;
use crate::error::{Error, Result};

/// The consumer of payments.
pub(crate) type PaymentConsumer = StreamConsumer<Context>;

/// Routes librdkafka's logs and errors to tracing (through the shared [`ClientLog`]),
/// logs partition assignments, and reports an unreachable cluster to `/readyz` (the
/// consume loop reports the recovery).
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub(crate) health: Health,
    log: ClientLog,
}

impl Context {
    /// The context of the client `client`, reporting to `health`.
    pub(crate) fn new(health: Health, client: &'static str) -> Self {
        Self {
            health,
            log: ClientLog::new(client),
        }
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, detail: &str) {
        self.log.log_line(level, facility, detail);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.client_error(&error, reason);
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health
                .set_ready(false, format!("no Kafka broker reachable: {reason}"));
        }
    }
}

impl ConsumerContext for Context {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                info!(
                    partitions = partitions.count(),
                    "payment partitions assigned"
                );
            }
            Rebalance::Revoke(partitions) => {
                info!(
                    partitions = partitions.count(),
                    "payment partitions revoked"
                );
            }
            Rebalance::Error(error) => warn!(%error, "rebalance failed"),
        }
    }
}

/// A read-committed consumer of the group whose offsets are stored by the service (after
/// the line is written) and committed by the client every second and on revocation.
pub(crate) fn consumer(
    kafka: &KafkaArgs,
    config: &Config,
    context: Context,
) -> Result<PaymentConsumer> {
    kafka
        .client_config(SERVICE)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create_with_context(context)
        .map_err(|source| Error::Client {
            what: "consumer",
            bootstrap: kafka.bootstrap_servers.clone(),
            source,
        })
}

/// The dead-letter producer: a letter counts as written only once all in-sync replicas
/// have it, and retries never duplicate it.
pub(crate) fn dead_letter_producer(
    kafka: &KafkaArgs,
    context: Context,
) -> Result<FutureProducer<Context>> {
    kafka
        .client_config(&format!("{SERVICE}-dlq"))
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", DEAD_LETTER_TIMEOUT_MS.to_string())
        .create_with_context(context)
        .map_err(|source| Error::Client {
            what: "dead-letter producer",
            bootstrap: kafka.bootstrap_servers.clone(),
            source,
        })
}

/// How long one attempt to write a dead letter may take before it is retried; also the
/// longest a shutdown waits for a letter in flight.
pub(crate) const DEAD_LETTER_TIMEOUT_MS: u64 = 10_000;
