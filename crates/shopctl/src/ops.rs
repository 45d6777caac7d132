//! The Kafka side of shopctl: reading the control and heartbeat tables, writing a
//! control record, sampling the payments topic, and reading the orders and payments
//! topics to their ends for an audit. No consumer group is used, so shopctl never
//! disturbs the services'.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use shop_domain::{ControlRecord, InvalidMessage, Order, Payment};
use shop_kafka::KafkaArgs;
use shop_kafka::compacted::{Latest, read_latest, read_table};
use shop_kafka::context::ClientLog;
use shop_kafka::topics::{TopicSpec, ensure_topics};
use tracing::{debug, info, warn};

use crate::audit::{self, Ends, Read};
use crate::change::Change;
use crate::cli::{AuditArgs, VerifyArgs};
use crate::error::{Error, Result};
use crate::status::Status;
use crate::verdict::{Check, Report, Sample, judge};

/// How long reading a compacted topic to its end may take.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the broker has to acknowledge the control record.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest a poll of a topic blocks, and so how late a reader sees its deadline at
/// most.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The metadata error of a topic that does not exist.
const UNKNOWN_TOPIC: RDKafkaErrorCode = RDKafkaErrorCode::UnknownTopicOrPartition;

/// Writes the next control record of `kafka.pipeline`: `change` applied to the current
/// record, with the next generation, once all in-sync replicas have it. Invalid values are
/// refused before anything is read.
///
/// The current record is the pipeline's latest one, read from the end of the control topic
/// backward (not the whole topic: on a topic shared by many pipelines that takes seconds).
/// A pipeline whose latest record is a tombstone was deleted and starts again at
/// generation 1. The producer connects while the record is being read; a control topic
/// that does not exist yet is created (compacted) first.
///
/// Two writers racing may both read generation N and both write N+1; the later one wins
/// on the compacted topic, and services that applied the first ignore the second. The
/// controller is the single writer under Kubernetes; shopctl is for one person at a time.
pub async fn set(kafka: &KafkaArgs, change: Change) -> Result<ControlRecord> {
    change.validate()?;
    let producer = producer(kafka)?;
    let latest = read_latest(kafka, &kafka.control_topic, &kafka.pipeline, READ_TIMEOUT).await?;
    let current = match &latest {
        // Shape only: an out-of-range value may be exactly what this change fixes.
        Latest::Value(bytes) => {
            Some(serde_json::from_slice::<ControlRecord>(bytes).map_err(|e| {
                Error::UnreadableCurrent {
                    pipeline: kafka.pipeline.clone(),
                    topic: kafka.control_topic.clone(),
                    detail: e.to_string(),
                }
            })?)
        }
        Latest::Absent | Latest::NoTopic => None,
    };
    let record = change.next_record(&kafka.pipeline, current.as_ref())?;
    if latest == Latest::NoTopic {
        ensure_topics(kafka, &[TopicSpec::compacted(&kafka.control_topic)]).await?;
    }
    write(&producer, kafka, &record).await?;
    Ok(record)
}

/// The producer of control records: idempotent, acknowledged by all in-sync replicas.
fn producer(kafka: &KafkaArgs) -> Result<FutureProducer> {
    kafka
        .client_config("shopctl")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("message.timeout.ms", WRITE_TIMEOUT.as_millis().to_string())
        .create()
        .map_err(|source| Error::Producer {
            bootstrap: kafka.bootstrap_servers.clone(),
            source,
        })
}

async fn write(producer: &FutureProducer, kafka: &KafkaArgs, record: &ControlRecord) -> Result<()> {
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
    let consumer: BaseConsumer<ClientLog> = kafka
        .client_config("shopctl-verify")
        .set("group.id", "shopctl-verify")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create_with_context(ClientLog::new("shopctl"))
        .map_err(|source| Error::Consumer {
            bootstrap: kafka.bootstrap_servers.clone(),
            source,
        })?;

    // Finding the end is not bounded by the deadline: without it there is no sample at
    // all, and an unreachable broker is an error of its own.
    let partitions = partitions(&consumer, topic, PAYMENTS)?;
    let mut assignment = TopicPartitionList::new();
    let mut start = BTreeMap::new();
    for partition in partitions {
        let (_, end) = consumer
            .fetch_watermarks(topic, partition, READ_TIMEOUT)
            .map_err(|e| read_error(topic, e))?;
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(end))
            .map_err(|e| read_error(topic, e))?;
        start.insert(partition, end);
    }
    consumer
        .assign(&assignment)
        .map_err(|e| read_error(topic, e))?;
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

/// A topic shopctl reads: what it holds, the flag that names it (for errors), and how to
/// find the order id in one of its records.
#[derive(Debug, Clone, Copy)]
struct Source {
    what: &'static str,
    flag: &'static str,
    env: &'static str,
    order_id: fn(&[u8]) -> std::result::Result<u64, InvalidMessage>,
}

const ORDERS: Source = Source {
    what: "orders",
    flag: "--orders-topic",
    env: "ORDERS_TOPIC",
    order_id: order_id_of_order,
};

const PAYMENTS: Source = Source {
    what: "payments",
    flag: "--payments-topic",
    env: "PAYMENTS_TOPIC",
    order_id: order_id_of_payment,
};

fn order_id_of_order(bytes: &[u8]) -> std::result::Result<u64, InvalidMessage> {
    Order::parse(bytes).map(|order| order.order_id)
}

fn order_id_of_payment(bytes: &[u8]) -> std::result::Result<u64, InvalidMessage> {
    Payment::parse(bytes).map(|payment| payment.order_id)
}

/// The partitions of `topic`; [`Error::NoTopic`] naming `source`'s flag when it does not
/// exist.
fn partitions<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    source: Source,
) -> Result<Vec<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), READ_TIMEOUT)
        .map_err(|e| read_error(topic, e))?;
    let found = metadata.topics().iter().find(|t| t.name() == topic);
    match found.map(|t| (t.error(), t.partitions())) {
        Some((None, partitions)) if !partitions.is_empty() => {
            Ok(partitions.iter().map(|p| p.id()).collect())
        }
        Some((Some(code), _)) if RDKafkaErrorCode::from(code) != UNKNOWN_TOPIC => {
            Err(read_error(topic, KafkaError::MetadataFetch(code.into())))
        }
        _ => Err(Error::NoTopic {
            what: source.what,
            topic: topic.to_owned(),
            flag: source.flag,
            env: source.env,
        }),
    }
}

fn read_error(topic: &str, source: KafkaError) -> Error {
    Error::Read {
        topic: topic.to_owned(),
        source,
    }
}

/// Checks after the fact that every order got exactly one payment (`shopctl audit`; see
/// its `--help` and [`mod@crate::audit`]).
///
/// Both topics are read from their beginning to their end offsets as of the call, with
/// isolation.level=read_committed, by one consumer each and no consumer group. The ends
/// of the payments topic are taken before those of the orders topic: in a pipeline that
/// is still running, an order paid in between then shows as without a payment (it was in
/// flight) rather than its payment as one for an unknown order.
///
/// Errors (a missing topic, an unreachable broker) come before any reading; the timeout
/// counts from the call and only ends the reading, with what was read reported.
pub async fn audit(kafka: &KafkaArgs, args: &AuditArgs) -> Result<audit::Report> {
    let deadline = Instant::now() + args.timeout;
    if args.orders_topic == args.payments_topic {
        return Err(Error::SameTopic {
            topic: args.orders_topic.clone(),
        });
    }
    let both = format!("{} and {}", args.orders_topic, args.payments_topic);
    let task_error = |e: tokio::task::JoinError| Error::Task {
        topic: both.clone(),
        detail: e.to_string(),
    };

    let (opening_kafka, opening) = (kafka.clone(), args.clone());
    let (payments, orders) = tokio::task::spawn_blocking(move || {
        let payments = Reader::open(&opening_kafka, &opening.payments_topic, PAYMENTS)?;
        let orders = Reader::open(&opening_kafka, &opening.orders_topic, ORDERS)?;
        Ok::<_, Error>((payments, orders))
    })
    .await
    .map_err(task_error)??;
    info!(
        orders_topic = %args.orders_topic,
        orders_end = ?orders.ends.end_offsets(),
        payments_topic = %args.payments_topic,
        payments_end = ?payments.ends.end_offsets(),
        "auditing up to these end offsets"
    );

    let (orders, payments) = tokio::try_join!(
        tokio::task::spawn_blocking(move || orders.read(deadline)),
        tokio::task::spawn_blocking(move || payments.read(deadline)),
    )
    .map_err(task_error)?;
    Ok(audit::judge(&orders, &payments, args.timeout))
}

/// A consumer assigned to every non-empty partition of one topic from its beginning, and
/// the end offsets it reads to. Blocking: runs on a blocking thread.
struct Reader {
    consumer: BaseConsumer<ClientLog>,
    topic: String,
    source: Source,
    ends: Ends,
}

impl Reader {
    /// Finds the partitions of `topic` and their end offsets now, and assigns them.
    fn open(kafka: &KafkaArgs, topic: &str, source: Source) -> Result<Reader> {
        let consumer: BaseConsumer<ClientLog> = kafka
            .reader_config("shopctl-audit", "shopctl-audit")
            .set("isolation.level", "read_committed")
            .create_with_context(ClientLog::new("shopctl"))
            .map_err(|source| Error::Consumer {
                bootstrap: kafka.bootstrap_servers.clone(),
                source,
            })?;
        let mut ends = Ends::default();
        for partition in partitions(&consumer, topic, source)? {
            // A read_committed consumer is given the last stable offset as the high
            // watermark: a transaction still open now lies beyond the end.
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, READ_TIMEOUT)
                .map_err(|e| read_error(topic, e))?;
            ends.add(partition, low, high);
        }
        let mut assignment = TopicPartitionList::new();
        for partition in ends.pending() {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(|e| read_error(topic, e))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| read_error(topic, e))?;
        Ok(Reader {
            consumer,
            topic: topic.to_owned(),
            source,
            ends,
        })
    }

    /// The order ids of the records before the ends, read until every partition is done
    /// or `deadline` passed.
    fn read(mut self, deadline: Instant) -> Read {
        let topic = self.topic.as_str();
        let mut read = Read::default();
        while !self.ends.done() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.consumer.poll(left.min(POLL_INTERVAL)) {
                None => {}
                Some(Ok(message)) => {
                    let (partition, offset) = (message.partition(), message.offset());
                    if !self.ends.record(partition, offset) {
                        continue;
                    }
                    match message.payload().map(self.source.order_id) {
                        Some(Ok(order_id)) => read.add(order_id),
                        Some(Err(error)) => {
                            read.skip();
                            debug!(topic, partition, offset, %error, "unparsable record");
                        }
                        None => {
                            read.skip();
                            debug!(topic, partition, offset, "a record without a value");
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    self.ends.reached_end(partition);
                }
                // librdkafka retries by itself; a broker that stays away shows as a timeout.
                Some(Err(error)) => warn!(topic, %error, "reading; retrying"),
            }
        }
        read.offsets_left = self.ends.left();
        info!(
            topic,
            what = self.source.what,
            records = read.order_ids.len(),
            unparsable = read.unparsable,
            offsets_left = read.offsets_left,
            "read"
        );
        read
    }
}
