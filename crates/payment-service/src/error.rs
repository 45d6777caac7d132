//! The crate's one error type. `run` returns it only for what a restart can fix or must
//! report: a fatal producer or consumer error (fenced by a newer incarnation, for
//! example), or a client that cannot be configured. Transient broker trouble is retried
//! inside the loop and never surfaces here; invalid orders are never errors at all
//! (they go to the dead-letter topic). Kafka errors are boxed: they are large, and this
//! type travels in every `Result` of the hot loop.

use rdkafka::error::KafkaError;

/// Everything that ends `run` with a failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Topics, the control follower or heartbeats (shared Kafka plumbing) failed.
    #[error(transparent)]
    Kafka(#[from] shop_kafka::Error),

    /// A Kafka client could not be created from its configuration.
    #[error("creating the {what} for {bootstrap}: {source}")]
    Client {
        what: &'static str,
        bootstrap: String,
        #[source]
        source: Box<KafkaError>,
    },

    /// The consumer could not subscribe to the orders topic.
    #[error("subscribing group {group} to topic {topic}: {source}")]
    Subscribe {
        group: String,
        topic: String,
        #[source]
        source: Box<KafkaError>,
    },

    /// The transactional producer failed in a way that only a new incarnation can
    /// recover from (fenced by another producer with the same transactional id, say).
    #[error("transactional producer {transactional_id} failed while {doing}: {source}")]
    Transaction {
        transactional_id: String,
        doing: &'static str,
        #[source]
        source: Box<KafkaError>,
    },

    /// The producer reported a fatal error (fenced by a newer incarnation, for example).
    #[error("producer {transactional_id} failed fatally: {reason} ({code})")]
    ProducerFatal {
        transactional_id: String,
        code: rdkafka::types::RDKafkaErrorCode,
        reason: String,
    },

    /// The producer refused a record outright (not a full queue, which is waited out).
    #[error("writing a record to topic {topic}: {source}")]
    Produce {
        topic: String,
        #[source]
        source: Box<KafkaError>,
    },

    /// The consumer reported a fatal error.
    #[error("consumer of group {group} failed fatally: {source}")]
    Consumer {
        group: String,
        #[source]
        source: Box<KafkaError>,
    },

    /// Rewinding a partition after an aborted transaction failed; the restarted process
    /// resumes from the committed offsets instead.
    #[error("rewinding topic {topic} partition {partition} to offset {offset}: {source}")]
    Seek {
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: Box<KafkaError>,
    },

    /// The consumer has no group metadata to send with the transaction's offsets.
    #[error("consumer of group {group} has no group metadata for the transaction")]
    NoGroupMetadata { group: String },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
