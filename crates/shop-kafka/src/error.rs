//! The crate's error type: every variant names what failed and with what input.

use rdkafka::error::KafkaError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating a Kafka client for {bootstrap}: {source}")]
    Client {
        bootstrap: String,
        source: KafkaError,
    },
    #[error("creating topic {topic}: {detail}")]
    CreateTopic { topic: String, detail: String },
    #[error("reading metadata of topic {topic}: {source}")]
    Metadata { topic: String, source: KafkaError },
    #[error("topic {topic} does not exist")]
    NoSuchTopic { topic: String },
    #[error("reading topic {topic}: {source}")]
    Consume { topic: String, source: KafkaError },
    #[error("writing to topic {topic}: {source}")]
    Produce { topic: String, source: KafkaError },
    #[error("reading topic {topic} did not reach its end within {seconds} s")]
    ReadTimeout { topic: String, seconds: u64 },
    #[error("background task failed: {0}")]
    Task(String),
}

pub type Result<T> = std::result::Result<T, Error>;
