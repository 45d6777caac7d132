//! The Kafka side of shopctl: reading the control and heartbeat tables, writing a
//! control record, and sampling the payments topic. No consumer group is used, so shopctl
//! never disturbs the services'.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use shop_domain::{ControlRecord, Payment};
use shop_kafka::KafkaArgs;
use shop_kafka::compacted::read_table;
use shop_kafka::context::QuietEof;
use shop_kafka::topics::{TopicSpec, ensure_topics};
use tracing::{debug, info, warn};

use crate::change::Change;
use crate::cli::VerifyArgs;
use crate::error::{Error, Result};
use crate::status::Status;
use crate::verdict::{Check, Report, Sample, judge};

/// How long reading a compacted topic to its end may take.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the broker has to acknowledge the control record.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest a poll of the payments topic blocks, and so how late the reader sees its
/// deadline at most.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The metadata error of a topic that does not exist.
const UNKNOWN_TOPIC: RDKafkaErrorCode = RDKafkaErrorCode::UnknownTopicOrPartition;

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

/// Samples the payments made from now on and judges their failure ratio (`shopctl
/// verify`; see its `--help` and [`crate::verdict`]).
///
/// The expected ratio is `args.failure_ratio`, or else the `payment_failure_ratio` of the
/// pipeline's control record, read first so that a missing one fails at once. The timeout
/// counts from the call, so a Pod running this is done within `args.timeout` plus the
/// time to give up on an unreachable broker.
pub async fn verify(kafka: &KafkaArgs, args: &VerifyArgs) -> Result<Report> {
    let deadline = Instant::now() + args.timeout;
    let expected = match args.failure_ratio {
        Some(ratio) => ratio,
        None => expected_ratio(kafka).await?,
    };
    let check = Check {
        expected,
        confidence: args.confidence,
        min_payments: args.min_payments,
        timeout: args.timeout,
    };
    let (kafka, topic) = (kafka.clone(), args.payments_topic.clone());
    let sample = tokio::task::spawn_blocking(move || {
        sample_payments(&kafka, &topic, check.min_payments, deadline)
    })
    .await
    .map_err(|e| Error::Task {
        topic: args.payments_topic.clone(),
        detail: e.to_string(),
    })??;
    Ok(judge(sample, check))
}

/// The `payment_failure_ratio` of the pipeline's latest control record.
async fn expected_ratio(kafka: &KafkaArgs) -> Result<f64> {
    let table = read_table(kafka, &kafka.control_topic, READ_TIMEOUT).await?;
    let bytes = table
        .get(&kafka.pipeline)
        .ok_or_else(|| Error::NoExpectedRatio {
            pipeline: kafka.pipeline.clone(),
            topic: kafka.control_topic.clone(),
        })?;
    let record = ControlRecord::parse(bytes).map_err(|source| Error::InvalidControlRecord {
        pipeline: kafka.pipeline.clone(),
        topic: kafka.control_topic.clone(),
        source,
    })?;
    info!(
        pipeline = %kafka.pipeline,
        generation = record.generation,
        payment_failure_ratio = record.payment_failure_ratio,
        "expected failure ratio from the control record"
    );
    Ok(record.payment_failure_ratio)
}

/// Reads `topic` from its end as of now until `wanted` payments were read or `deadline`
/// passed. Blocking: runs on a blocking thread.
///
/// With isolation.level=read_committed the end of a partition is its last stable offset,
/// so a transaction still open now counts once it commits (its payments are being made
/// now), and aborted transactions never count.
fn sample_payments(
    kafka: &KafkaArgs,
    topic: &str,
    wanted: u64,
    deadline: Instant,
) -> Result<Sample> {
    let read_error = |source| Error::Read {
        topic: topic.to_owned(),
        source,
    };
    let consumer: BaseConsumer<QuietEof> = kafka
        .client_config("shopctl-verify")
        .set("group.id", "shopctl-verify")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create_with_context(QuietEof)
        .map_err(|source| Error::Consumer {
            bootstrap: kafka.bootstrap_servers.clone(),
            source,
        })?;

    // Finding the end is not bounded by the deadline: without it there is no sample at
    // all, and an unreachable broker is an error of its own.
    let metadata = consumer
        .fetch_metadata(Some(topic), READ_TIMEOUT)
        .map_err(read_error)?;
    let found = metadata.topics().iter().find(|t| t.name() == topic);
    let partitions: Vec<i32> = match found.map(|t| (t.error(), t.partitions())) {
        Some((None, partitions)) if !partitions.is_empty() => {
            partitions.iter().map(|p| p.id()).collect()
        }
        Some((Some(code), _)) if RDKafkaErrorCode::from(code) != UNKNOWN_TOPIC => {
            return Err(read_error(KafkaError::MetadataFetch(code.into())));
        }
        _ => {
            return Err(Error::NoPaymentsTopic {
                topic: topic.to_owned(),
            });
        }
    };
    let mut assignment = TopicPartitionList::new();
    let mut start = BTreeMap::new();
    for partition in partitions {
        let (_, end) = consumer
            .fetch_watermarks(topic, partition, READ_TIMEOUT)
            .map_err(read_error)?;
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(end))
            .map_err(read_error)?;
        start.insert(partition, end);
    }
    consumer.assign(&assignment).map_err(read_error)?;
    info!(topic, from_offsets = ?start, wanted, "reading payments made from now on");

    let mut sample = Sample::default();
    while sample.payments < wanted {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match consumer.poll(left.min(POLL_INTERVAL)) {
            None => {}
            Some(Ok(message)) => match message.payload().map(Payment::parse) {
                Some(Ok(payment)) => sample.add(payment.status),
                Some(Err(error)) => {
                    sample.skip();
                    debug!(
                        partition = message.partition(),
                        offset = message.offset(),
                        %error,
                        "not a payment"
                    );
                }
                None => {
                    sample.skip();
                    debug!(
                        partition = message.partition(),
                        offset = message.offset(),
                        "a record without a value"
                    );
                }
            },
            // librdkafka retries by itself; a broker that stays away shows as a timeout.
            Some(Err(error)) => warn!(topic, %error, "reading payments; retrying"),
        }
    }
    info!(
        topic,
        payments = sample.payments,
        failed = sample.failed,
        unparsable = sample.unparsable,
        "sample read"
    );
    Ok(sample)
}
