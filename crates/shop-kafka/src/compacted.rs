//! Reading a compacted topic from its beginning to its end.
//!
//! The control and heartbeat topics are tables: the latest value per key is the state.
//! Reading one means reading every partition until its end (partition EOF), applying
//! tombstones as deletions. No consumer group is involved, so nothing is committed and any
//! number of readers can do this at once.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::context::QuietEof;
use crate::{Error, KafkaArgs, Result};

/// The latest value per key of `topic`, read to its current end. A topic that does not
/// exist reads as empty.
pub async fn read_table(
    args: &KafkaArgs,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let (args, topic) = (args.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_table_blocking(&args, &topic, timeout))
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

fn read_table_blocking(
    args: &KafkaArgs,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let deadline = Instant::now() + timeout;
    let consumer: BaseConsumer<QuietEof> = args
        .client_config("shopstream-table-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("group.id", "shopstream-table-reader")
        .create_with_context(QuietEof)
        .map_err(|source| Error::Client {
            bootstrap: args.bootstrap_servers.clone(),
            source,
        })?;
    let Some(partitions) = partitions_of(&consumer, topic, timeout)? else {
        return Ok(BTreeMap::new());
    };
    let mut assignment = TopicPartitionList::new();
    let mut pending = HashSet::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(|source| Error::Metadata {
                topic: topic.to_owned(),
                source,
            })?;
        if high > low {
            pending.insert(partition);
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(|source| Error::Consume {
                    topic: topic.to_owned(),
                    source,
                })?;
        }
    }
    let mut table = BTreeMap::new();
    if pending.is_empty() {
        return Ok(table);
    }
    consumer
        .assign(&assignment)
        .map_err(|source| Error::Consume {
            topic: topic.to_owned(),
            source,
        })?;
    while !pending.is_empty() {
        if Instant::now() > deadline {
            return Err(Error::ReadTimeout {
                topic: topic.to_owned(),
                seconds: timeout.as_secs(),
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    continue;
                };
                match message.payload() {
                    Some(value) => table.insert(key.to_owned(), value.to_vec()),
                    None => table.remove(key),
                };
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                pending.remove(&partition);
            }
            Some(Err(source)) => {
                return Err(Error::Consume {
                    topic: topic.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(table)
}

/// The partitions of `topic`, or `None` when it does not exist.
pub(crate) fn partitions_of<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    topic: &str,
    timeout: Duration,
) -> Result<Option<Vec<i32>>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| Error::Metadata {
            topic: topic.to_owned(),
            source,
        })?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    if found.error().is_some() || found.partitions().is_empty() {
        return Ok(None);
    }
    Ok(Some(found.partitions().iter().map(|p| p.id()).collect()))
}
