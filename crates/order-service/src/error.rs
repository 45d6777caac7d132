//! The crate's one error type: what stopped the service, naming what failed and with what
//! input. The cause is kept as the error's `source`, not repeated in its message, so
//! `main` (through anyhow) prints each link of the chain once.

use rdkafka::error::KafkaError;

/// Why [`crate::run`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The control-plane topics or the orders topic could not be created.
    #[error("creating the topics order-service needs")]
    Topics(#[source] shop_kafka::Error),

    /// The control topic could not be read.
    #[error("following control records")]
    Control(#[source] shop_kafka::Error),

    /// The heartbeat publisher could not be started.
    #[error("starting heartbeats")]
    Heartbeats(#[source] shop_kafka::Error),

    /// A Kafka client could not be created (bad client settings).
    #[error("creating the {what} producer for {bootstrap}")]
    Producer {
        what: &'static str,
        bootstrap: String,
        #[source]
        source: KafkaError,
    },

    /// The idempotent producer hit an error it cannot recover from (for example, the
    /// broker lost its producer state). Only a new producer can continue, so the service
    /// stops and its supervisor restarts it.
    #[error("the order producer failed fatally ({code}): {reason}; restart order-service")]
    ProducerFatal { code: String, reason: String },

    /// A background task of the service panicked or was cancelled by the runtime.
    #[error("background task failed: {0}")]
    Task(String),
}
