//! Observing a pipeline in Kafka: topic watermarks, consumer-group offsets and the
//! replicas' heartbeats. Reads only; every call is bounded by a timeout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rdkafka::consumer::{BaseConsumer, Consumer};
use shop_kafka::context::ClientLog;

use rdkafka::{Offset, TopicPartitionList};
use shop_domain::Heartbeat;
use shop_domain::control::parse_heartbeat_key;
use shop_kafka::KafkaArgs;
use shop_kafka::compacted::FollowedTable;

use crate::status::LIVE_WITHIN;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Sum of the high watermarks of `topic` (records ever written), and the lag of `group`
/// on it (records not yet committed by the group). `None` when the topic does not exist.
pub async fn progress(
    kafka: &KafkaArgs,
    topic: &str,
    group: &str,
) -> shop_kafka::Result<Option<(i64, i64)>> {
    let (kafka, topic, group) = (kafka.clone(), topic.to_owned(), group.to_owned());
    tokio::task::spawn_blocking(move || progress_blocking(&kafka, &topic, &group))
        .await
        .map_err(|e| shop_kafka::Error::Task(e.to_string()))?
}

fn progress_blocking(
    kafka: &KafkaArgs,
    topic: &str,
    group: &str,
) -> shop_kafka::Result<Option<(i64, i64)>> {
    let consumer: BaseConsumer<ClientLog> = kafka
        .client_config("shop-controller-observer")
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create_with_context(ClientLog::new("progress-observer"))
        .map_err(|source| shop_kafka::Error::Client {
            bootstrap: kafka.bootstrap_servers.clone(),
            source,
        })?;
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(|source| shop_kafka::Error::Metadata {
            topic: topic.to_owned(),
            source,
        })?;
    let Some(found) = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
    else {
        return Ok(None);
    };
    let mut partitions = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for partition in found.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), TIMEOUT)
            .map_err(|source| shop_kafka::Error::Metadata {
                topic: topic.to_owned(),
                source,
            })?;
        ends.insert(partition.id(), (low, high));
        partitions.add_partition(topic, partition.id());
    }
    let committed = consumer
        .committed_offsets(partitions, TIMEOUT)
        .map_err(|source| shop_kafka::Error::Consume {
            topic: topic.to_owned(),
            source,
        })?;
    let mut written = 0;
    let mut lag = 0;
    for (partition, (low, high)) in ends {
        written += high;
        let position = committed
            .find_partition(topic, partition)
            .and_then(|p| match p.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
            .unwrap_or(low);
        lag += (high - position).max(0);
    }
    Ok(Some((written, lag)))
}

/// The controller's long-lived client for metadata and watermarks. A consumer, not the
/// producer: asking a producer for a missing topic's metadata lets the broker create it
/// (librdkafka's `allow.auto.create.topics` is true for producers), and a topic being
/// swept must stay gone.
pub type Observer = Arc<BaseConsumer<ClientLog>>;

/// Makes the [`Observer`].
pub fn observer(kafka: &KafkaArgs) -> shop_kafka::Result<Observer> {
    let consumer: BaseConsumer<ClientLog> = kafka
        .client_config("shop-controller-observer")
        .set("allow.auto.create.topics", "false")
        .create_with_context(ClientLog::new("observer"))
        .map_err(|source| shop_kafka::Error::Client {
            bootstrap: kafka.bootstrap_servers.clone(),
            source,
        })?;
    Ok(Arc::new(consumer))
}

/// Records ever written to `topic` (the sum of its partitions' high watermarks), asked
/// through the observer; `None` when the topic does not exist.
pub async fn written(observer: &Observer, topic: &str) -> shop_kafka::Result<Option<i64>> {
    let (observer, topic) = (Arc::clone(observer), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        // Serve the client's queued events (errors), which nothing else reads.
        let _ = observer.poll(Duration::ZERO);
        let client = observer.client();
        let metadata = client
            .fetch_metadata(Some(&topic), TIMEOUT)
            .map_err(|source| shop_kafka::Error::Metadata {
                topic: topic.clone(),
                source,
            })?;
        let Some(found) = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
        else {
            return Ok(None);
        };
        let mut written = 0;
        for partition in found.partitions() {
            let (_, high) = client
                .fetch_watermarks(&topic, partition.id(), TIMEOUT)
                .map_err(|source| shop_kafka::Error::Metadata {
                    topic: topic.clone(),
                    source,
                })?;
            written += high;
        }
        Ok(Some(written))
    })
    .await
    .map_err(|e| shop_kafka::Error::Task(e.to_string()))?
}

/// The partition count of each of `topics` that exists, asked through the observer.
pub async fn partition_counts(
    observer: &Observer,
    topics: &[String],
) -> shop_kafka::Result<BTreeMap<String, i32>> {
    let (observer, topics) = (Arc::clone(observer), topics.to_vec());
    tokio::task::spawn_blocking(move || {
        let mut counts = BTreeMap::new();
        for topic in &topics {
            let metadata = observer
                .fetch_metadata(Some(topic), TIMEOUT)
                .map_err(|source| shop_kafka::Error::Metadata {
                    topic: topic.clone(),
                    source,
                })?;
            for found in metadata.topics() {
                if found.name() == topic && found.error().is_none() {
                    let partitions = i32::try_from(found.partitions().len()).unwrap_or(i32::MAX);
                    counts.insert(topic.clone(), partitions);
                }
            }
        }
        Ok(counts)
    })
    .await
    .map_err(|e| shop_kafka::Error::Task(e.to_string()))?
}

/// The live heartbeats of `pipeline` (fresher than `LIVE_WITHIN`), from the followed
/// heartbeat table.
pub fn live_heartbeats(table: &FollowedTable, pipeline: &str) -> Vec<Heartbeat> {
    let now = SystemTime::now();
    table
        .with_prefix(&format!("{pipeline}/"))
        .iter()
        .filter(|(key, _)| parse_heartbeat_key(key).is_some_and(|(p, _, _)| p == pipeline))
        .filter_map(|(_, value)| Heartbeat::parse(value).ok())
        .filter(|h| {
            // A clock slightly ahead of ours counts as fresh, an unreadable one as stale.
            shop_domain::time::parse_rfc3339(&h.timestamp)
                .is_some_and(|at| now.duration_since(at).unwrap_or_default() < LIVE_WITHIN)
        })
        .collect()
}

/// A counter of each replica of one service, by instance.
pub fn counters(heartbeats: &[Heartbeat], service: &str, name: &str) -> BTreeMap<String, u64> {
    heartbeats
        .iter()
        .filter(|h| h.service == service)
        .filter_map(|h| Some((h.instance.clone(), *h.counters.get(name)?)))
        .collect()
}
