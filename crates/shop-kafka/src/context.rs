//! The client context of this crate's Kafka clients.
//!
//! Reading a compacted topic to its end relies on partition-EOF events; librdkafka also
//! reports those to the error callback, whose default logs each one as an error. Here they
//! are what was asked for, so they are not logged; other client errors are transient
//! (librdkafka retries by itself) and logged as warnings.

use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tracing::warn;

/// Context of the control follower, the table reader and the heartbeat producer.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
        {
            return;
        }
        warn!(%error, reason, "Kafka client error; retrying");
    }
}

impl ConsumerContext for QuietEof {}
