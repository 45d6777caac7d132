//! The crate's one error type. Each variant names what failed and with what input, and
//! the ones a user can fix say which flag to change.

use rdkafka::error::KafkaError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value given on the command line is out of range.
    #[error(
        "invalid {flag} {value}: allowed is a number in {allowed} ({field} of the control record)"
    )]
    InvalidValue {
        flag: &'static str,
        field: &'static str,
        value: f64,
        allowed: &'static str,
    },

    /// The current record holds an out-of-range value the change does not replace.
    #[error(
        "the current control record of pipeline {pipeline} has {field} {value}, outside {allowed}: \
         give a valid value with {flag}"
    )]
    InvalidCurrent {
        pipeline: String,
        flag: &'static str,
        field: &'static str,
        value: f64,
        allowed: &'static str,
    },

    /// The current record is not a control record at all, so its generation is unknown and
    /// a new record might be ignored as old.
    #[error(
        "the current control record of pipeline {pipeline} on topic {topic} cannot be read ({detail}); \
         its generation is unknown, so shopctl will not write over it"
    )]
    UnreadableCurrent {
        pipeline: String,
        topic: String,
        detail: String,
    },

    /// A record failed validation in a way no flag controls (not expected from `set`).
    #[error(transparent)]
    Control(#[from] shop_domain::ControlError),

    /// Reading a topic or creating the control topic failed.
    #[error(transparent)]
    Kafka(#[from] shop_kafka::Error),

    #[error("creating a Kafka producer for {bootstrap}: {source}")]
    Producer {
        bootstrap: String,
        source: KafkaError,
    },

    /// The broker did not acknowledge the control record.
    #[error("writing the control record to topic {topic}: {source}")]
    Write { topic: String, source: KafkaError },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
