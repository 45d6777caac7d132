//! The crate's one error type. Each variant names what failed and with what input.

use rdkafka::error::KafkaError;

/// Why notification-service stopped with an error. Broker outages are not errors: the
/// service waits them out.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Topic creation or heartbeats failed in a way retrying cannot fix.
    #[error(transparent)]
    Kafka(#[from] shop_kafka::Error),

    /// The consumer or dead-letter producer could not be created (a configuration error).
    #[error("creating the Kafka {what} for {bootstrap}: {source}")]
    Client {
        what: &'static str,
        bootstrap: String,
        source: KafkaError,
    },

    /// Subscribing to the payments topic failed (an invalid topic name, typically).
    #[error("subscribing to topic {topic}: {source}")]
    Subscribe { topic: String, source: KafkaError },

    /// Writing a notification line failed for another reason than a closed reader.
    #[error("writing a notification line: {0}")]
    Output(#[source] std::io::Error),

    /// The final commit at shutdown failed: the lines printed since the last background
    /// commit will be printed again by the next consumer of the group.
    #[error("committing the offsets of group {group} at shutdown: {source}")]
    Commit { group: String, source: KafkaError },

    /// The final commit did not finish in time (the broker is unreachable, typically).
    #[error(
        "committing the offsets of group {group} at shutdown did not finish within {seconds} s"
    )]
    CommitTimedOut { group: String, seconds: u64 },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
