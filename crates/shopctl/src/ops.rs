//! The Kafka side of shopctl: reading the control and heartbeat tables and writing a
//! control record. No consumer group is used, so shopctl never disturbs the services'.

use std::time::{Duration, SystemTime};

use rdkafka::producer::{FutureProducer, FutureRecord};
use shop_domain::ControlRecord;
use shop_kafka::KafkaArgs;
use shop_kafka::compacted::read_table;
use shop_kafka::topics::{TopicSpec, ensure_topics};

use crate::change::Change;
use crate::error::{Error, Result};
use crate::status::Status;

/// How long reading a compacted topic to its end may take.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the broker has to acknowledge the control record.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes the next control record of `kafka.pipeline`: `change` applied to the current
/// record (read from the control topic), with the next generation, once all in-sync
/// replicas have it. Invalid values are refused before anything is read.
///
/// Two writers racing may both read generation N and both write N+1; the later one wins
/// on the compacted topic, and services that applied the first ignore the second. The
/// controller is the single writer under Kubernetes; shopctl is for one person at a time.
pub async fn set(kafka: &KafkaArgs, change: Change) -> Result<ControlRecord> {
    change.validate()?;
    let table = read_table(kafka, &kafka.control_topic, READ_TIMEOUT).await?;
    let current = match table.get(&kafka.pipeline) {
        // Shape only: an out-of-range value may be exactly what this change fixes.
        Some(bytes) => Some(serde_json::from_slice::<ControlRecord>(bytes).map_err(|e| {
            Error::UnreadableCurrent {
                pipeline: kafka.pipeline.clone(),
                topic: kafka.control_topic.clone(),
                detail: e.to_string(),
            }
        })?),
        None => None,
    };
    let record = change.next_record(&kafka.pipeline, current.as_ref())?;
    ensure_topics(kafka, &[TopicSpec::compacted(&kafka.control_topic)]).await?;
    write(kafka, &record).await?;
    Ok(record)
}

async fn write(kafka: &KafkaArgs, record: &ControlRecord) -> Result<()> {
    let producer: FutureProducer = kafka
        .client_config("shopctl")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", WRITE_TIMEOUT.as_millis().to_string())
        .create()
        .map_err(|source| Error::Producer {
            bootstrap: kafka.bootstrap_servers.clone(),
            source,
        })?;
    let payload = record.to_json();
    let message = FutureRecord::to(&kafka.control_topic)
        .key(&kafka.pipeline)
        .payload(&payload);
    producer
        .send(message, Duration::ZERO)
        .await
        .map_err(|(source, _)| Error::Write {
            topic: kafka.control_topic.clone(),
            source,
        })?;
    Ok(())
}

/// The desired record of `kafka.pipeline` and the heartbeats of its replicas, read now.
pub async fn status(kafka: &KafkaArgs) -> Result<Status> {
    let (control, heartbeats) = tokio::try_join!(
        read_table(kafka, &kafka.control_topic, READ_TIMEOUT),
        read_table(kafka, &kafka.heartbeat_topic, READ_TIMEOUT),
    )?;
    Ok(Status::from_tables(
        &kafka.pipeline,
        &control,
        &heartbeats,
        SystemTime::now(),
    ))
}
