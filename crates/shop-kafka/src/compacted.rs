//! Reading a compacted topic from its beginning to its end.
//!
//! The control and heartbeat topics are tables: the latest value per key is the state.
//! Reading one means reading every partition until its end (partition EOF), applying
//! tombstones as deletions. No consumer group is involved, so nothing is committed and any
//! number of readers can do this at once.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::context::ClientLog;

/// How many changed keys a [`FollowedTable`] keeps for receivers that are behind.
const CHANGES: usize = 1024;
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
    let consumer: BaseConsumer<ClientLog> = args
        .reader_config("shopstream-table-reader", "shopstream-table-reader")
        .create_with_context(ClientLog::new("table-reader"))
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
        let (low, high) = watermarks(&consumer, topic, partition, timeout)?;
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

/// What a compacted topic holds for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Latest {
    /// The topic does not exist.
    NoTopic,
    /// No record of the key, or its latest record is a tombstone.
    Absent,
    /// The value of the key's latest record.
    Value(Vec<u8>),
}

/// How many offsets before the end [`read_latest`] reads first; each further step back
/// reads `GROWTH` times more, then the rest of the partition.
const FIRST_WINDOW: i64 = 256;
const GROWTH: i64 = 16;

/// The latest value of `key` in `topic`, read from the end of each partition backward
/// until the key's latest record is found (or the partition's beginning is reached).
///
/// This is what a writer of one key needs, without reading the whole table: on a topic
/// that many pipelines write to, the key's latest record is usually among the last few.
/// With one partition (the control plane's topics have one) the answer is exact; with
/// more, a key written to several of them (different writers' partitioners) is taken
/// from the record with the latest timestamp.
pub async fn read_latest(
    args: &KafkaArgs,
    topic: &str,
    key: &str,
    timeout: Duration,
) -> Result<Latest> {
    let (args, topic, key) = (args.clone(), topic.to_owned(), key.to_owned());
    tokio::task::spawn_blocking(move || read_latest_blocking(&args, &topic, &key, timeout))
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

/// One partition's search: the offsets still to read, and what was found.
#[derive(Debug)]
struct Search {
    low: i64,
    /// The partition's end when the search began.
    high: i64,
    /// The window being read: `start..end`.
    start: i64,
    end: i64,
    /// The key's latest record so far: (timestamp, value or tombstone).
    found: Option<(i64, Option<Vec<u8>>)>,
    /// The current window is read.
    window_done: bool,
}

impl Search {
    fn finished(&self) -> bool {
        self.window_done && (self.found.is_some() || self.start <= self.low)
    }

    /// Moves the window back before the current one.
    fn step_back(&mut self) {
        let size = (self.end - self.start).max(FIRST_WINDOW) * GROWTH;
        self.end = self.start;
        self.start = (self.start - size).max(self.low);
        self.window_done = false;
    }
}

fn read_latest_blocking(
    args: &KafkaArgs,
    topic: &str,
    key: &str,
    timeout: Duration,
) -> Result<Latest> {
    let deadline = Instant::now() + timeout;
    // A short-lived reader: a short fetch wait only bounds how long a window that ends in
    // a compacted gap waits for the partition-EOF event.
    let consumer: BaseConsumer<ClientLog> = args
        .reader_config("shopstream-key-reader", "shopstream-key-reader")
        .set("fetch.wait.max.ms", "10")
        .create_with_context(ClientLog::new("key-reader"))
        .map_err(|source| Error::Client {
            bootstrap: args.bootstrap_servers.clone(),
            source,
        })?;
    let Some(partitions) = partitions_of(&consumer, topic, timeout)? else {
        return Ok(Latest::NoTopic);
    };
    let mut searches = BTreeMap::new();
    for partition in partitions {
        let (low, high) = watermarks(&consumer, topic, partition, timeout)?;
        if high > low {
            searches.insert(
                partition,
                Search {
                    low,
                    high,
                    start: (high - FIRST_WINDOW).max(low),
                    end: high,
                    found: None,
                    window_done: false,
                },
            );
        }
    }
    loop {
        let mut assignment = TopicPartitionList::new();
        for (partition, search) in &mut searches {
            if search.window_done && !search.finished() {
                search.step_back();
            }
            if !search.window_done {
                assignment
                    .add_partition_offset(topic, *partition, Offset::Offset(search.start))
                    .map_err(|source| Error::Consume {
                        topic: topic.to_owned(),
                        source,
                    })?;
            }
        }
        if assignment.count() == 0 {
            break;
        }
        consumer
            .assign(&assignment)
            .map_err(|source| Error::Consume {
                topic: topic.to_owned(),
                source,
            })?;
        read_windows(&consumer, topic, key, &mut searches, deadline, timeout)?;
    }
    let latest = searches
        .into_values()
        .filter_map(|search| search.found)
        .max_by_key(|(timestamp, _)| *timestamp);
    Ok(match latest {
        Some((_, Some(value))) => Latest::Value(value),
        Some((_, None)) | None => Latest::Absent,
    })
}

/// Reads the assigned windows until each is done: its last offset (or a later one, when
/// compaction removed the last) was read, or the partition's end was reached.
fn read_windows(
    consumer: &BaseConsumer<ClientLog>,
    topic: &str,
    key: &str,
    searches: &mut BTreeMap<i32, Search>,
    deadline: Instant,
    timeout: Duration,
) -> Result<()> {
    while searches.values().any(|s| !s.window_done) {
        if Instant::now() > deadline {
            return Err(Error::ReadTimeout {
                topic: topic.to_owned(),
                seconds: timeout.as_secs(),
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                let Some(search) = searches.get_mut(&message.partition()) else {
                    continue;
                };
                if search.window_done {
                    continue;
                }
                let offset = message.offset();
                if offset >= search.end {
                    // Past the window: the window's own last records were compacted away.
                    search.window_done = true;
                    continue;
                }
                if message.key() == Some(key.as_bytes()) {
                    let timestamp = message.timestamp().to_millis().unwrap_or(0);
                    // Within a window offsets increase: a later record replaces an earlier.
                    search.found = Some((timestamp, message.payload().map(<[u8]>::to_vec)));
                }
                if offset >= search.end - 1 {
                    search.window_done = true;
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                // Only the first window ends at the partition's end; an earlier one always
                // sees a record at or past its end first (the log's last record stays).
                if let Some(search) = searches.get_mut(&partition)
                    && search.end == search.high
                {
                    search.window_done = true;
                }
            }
            Some(Err(source)) => {
                return Err(Error::Consume {
                    topic: topic.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Where the initial read of a followed topic ends: the end offset of each partition that
/// held records when following began.
///
/// The read is complete once each of them is read to that offset. Partition-EOF events
/// count too, but are not waited for: librdkafka reports EOF only after a fetch that
/// found nothing new, which the broker holds back for `fetch.wait.max.ms`.
#[derive(Debug)]
pub(crate) struct CatchUp {
    pending: std::collections::HashMap<i32, i64>,
}

impl CatchUp {
    /// The end offsets of `partitions` of `topic` now.
    pub(crate) fn new<X: ConsumerContext, C: Consumer<X>>(
        consumer: &C,
        topic: &str,
        partitions: &[i32],
        timeout: Duration,
    ) -> Result<Self> {
        let mut pending = std::collections::HashMap::new();
        for &partition in partitions {
            let (low, high) = watermarks(consumer, topic, partition, timeout)?;
            if high > low {
                pending.insert(partition, high);
            }
        }
        Ok(Self { pending })
    }

    /// Notes a record read; true once every partition is read to its end.
    pub(crate) fn read(&mut self, partition: i32, offset: i64) -> bool {
        if self
            .pending
            .get(&partition)
            .is_some_and(|&end| offset >= end - 1)
        {
            self.pending.remove(&partition);
        }
        self.is_done()
    }

    /// Notes a partition-EOF event; true once every partition is read to its end.
    pub(crate) fn reached_end(&mut self, partition: i32) -> bool {
        self.pending.remove(&partition);
        self.is_done()
    }

    pub(crate) fn is_done(&self) -> bool {
        self.pending.is_empty()
    }
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

/// The low and high watermarks of `topic`'s `partition`.
fn watermarks<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<(i64, i64)> {
    consumer
        .fetch_watermarks(topic, partition, timeout)
        .map_err(|source| Error::Metadata {
            topic: topic.to_owned(),
            source,
        })
}

/// The settings of a [`FollowedTable`]'s consumer (public so the control-loop benchmark
/// measures a consumer configured exactly like it).
pub fn table_follower_config(args: &KafkaArgs) -> ClientConfig {
    // librdkafka's fetch.wait.max.ms (500 ms): the broker answers as soon as a heartbeat
    // arrives, so a shorter wait only makes the idle follower fetch more often (see
    // crate::control).
    args.reader_config("shopstream-table-follower", "shopstream-table-follower")
}

/// A compacted topic followed in the background: the latest value per key, kept current as
/// records arrive. One follower serves any number of readers (the controller keeps one for
/// the heartbeats of every pipeline instead of reading the topic per reconcile).
#[derive(Debug, Clone)]
pub struct FollowedTable {
    table: Arc<RwLock<BTreeMap<String, Vec<u8>>>>,
    /// The key of every record that arrives, for readers that react to changes.
    changes: broadcast::Sender<String>,
}

impl FollowedTable {
    /// Starts following `topic` from its beginning. Returns once the topic has been read
    /// to its current end (or after `catch_up`, when the broker is slow); keeps following
    /// until `shutdown`.
    pub async fn follow(
        args: &KafkaArgs,
        topic: &str,
        catch_up: Duration,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let consumer: StreamConsumer<ClientLog> = table_follower_config(args)
            .create_with_context(ClientLog::new("table-follower"))
            .map_err(|source| Error::Client {
                bootstrap: args.bootstrap_servers.clone(),
                source,
            })?;
        let partitions =
            partitions_of(&consumer, topic, catch_up)?.ok_or_else(|| Error::NoSuchTopic {
                topic: topic.to_owned(),
            })?;
        let mut assignment = TopicPartitionList::new();
        for partition in &partitions {
            assignment
                .add_partition_offset(topic, *partition, Offset::Beginning)
                .map_err(|source| Error::Consume {
                    topic: topic.to_owned(),
                    source,
                })?;
        }
        consumer
            .assign(&assignment)
            .map_err(|source| Error::Consume {
                topic: topic.to_owned(),
                source,
            })?;
        let catch_up_to = CatchUp::new(&consumer, topic, &partitions, catch_up)?;
        let followed = Self {
            table: Arc::new(RwLock::new(BTreeMap::new())),
            changes: broadcast::channel(CHANGES).0,
        };
        let (caught_up_tx, caught_up_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(followed.clone().run(
            consumer,
            topic.to_owned(),
            catch_up_to,
            caught_up_tx,
            shutdown,
        ));
        if tokio::time::timeout(catch_up, caught_up_rx).await.is_err() {
            tracing::warn!(%topic, "topic not read to its end yet; following it from what is known so far");
        }
        Ok(followed)
    }

    /// The keys of the records that arrive from now on. A receiver that falls more than a
    /// thousand keys behind misses the oldest (`RecvError::Lagged`); the table itself is
    /// always complete.
    pub fn changes(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// The latest value of `key`.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.read().get(key).cloned()
    }

    /// The entries whose key starts with `prefix`, in key order.
    pub fn with_prefix(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        self.read()
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Vec<u8>>> {
        // Writers only insert or remove one entry: a poisoned lock still holds a table.
        self.table.read().unwrap_or_else(PoisonError::into_inner)
    }

    async fn run(
        self,
        consumer: StreamConsumer<ClientLog>,
        topic: String,
        mut catch_up_to: CatchUp,
        caught_up: tokio::sync::oneshot::Sender<()>,
        shutdown: CancellationToken,
    ) {
        let mut caught_up = Some(caught_up);
        if catch_up_to.is_done()
            && let Some(caught_up) = caught_up.take()
        {
            let _ = caught_up.send(());
        }
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                received = consumer.recv() => received,
            };
            match received {
                Ok(message) => {
                    let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                        continue;
                    };
                    {
                        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
                        match message.payload() {
                            Some(value) => table.insert(key.to_owned(), value.to_vec()),
                            None => table.remove(key),
                        };
                    }
                    // Nobody listening is fine.
                    let _ = self.changes.send(key.to_owned());
                    if catch_up_to.read(message.partition(), message.offset())
                        && let Some(caught_up) = caught_up.take()
                    {
                        let _ = caught_up.send(());
                    }
                }
                Err(KafkaError::PartitionEOF(partition)) => {
                    if catch_up_to.reached_end(partition)
                        && let Some(caught_up) = caught_up.take()
                    {
                        let _ = caught_up.send(());
                    }
                }
                Err(error) => {
                    // The client reconnects by itself; pause so an outage is not a busy
                    // loop of identical warnings.
                    tracing::warn!(%topic, %error, "following the topic failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}
