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

    /// `verify` was given no expected ratio and the pipeline has no control record to
    /// take it from.
    #[error(
        "pipeline {pipeline} has no control record on topic {topic}, so the expected failure \
         ratio is unknown: give it with --failure-ratio (or check --pipeline and --control-topic)"
    )]
    NoExpectedRatio { pipeline: String, topic: String },

    /// `verify` was given no expected ratio and the pipeline's control record is invalid.
    #[error(
        "the control record of pipeline {pipeline} on topic {topic} is invalid ({source}): \
         give the expected failure ratio with --failure-ratio"
    )]
    InvalidControlRecord {
        pipeline: String,
        topic: String,
        source: shop_domain::ControlError,
    },

    /// A topic to read (`what`: "payments", "orders") does not exist.
    #[error("{what} topic {topic} does not exist: check {flag} (or {env})")]
    NoTopic {
        what: &'static str,
        topic: String,
        flag: &'static str,
        env: &'static str,
    },

    /// `audit` was given one topic for both orders and payments.
    #[error("--orders-topic and --payments-topic are both {topic}: give the pipeline's two topics")]
    SameTopic { topic: String },

    #[error("creating a Kafka consumer for {bootstrap}: {source}")]
    Consumer {
        bootstrap: String,
        source: KafkaError,
    },

    /// Reading the partitions, end offsets or records of a topic failed.
    #[error("reading topic {topic}: {source}")]
    Read { topic: String, source: KafkaError },

    /// The blocking reader thread did not finish (it panicked or was cancelled).
    #[error("reading topic {topic}: the reader task failed: {detail}")]
    Task { topic: String, detail: String },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
