//! Following the control topic: the live half of the control loop.
//!
//! The topic is read from the beginning (it is compacted: the latest record per pipeline is
//! the desired state) and then followed. Records of other pipelines are skipped; invalid
//! records are logged and skipped, never applied; a record whose generation is not newer
//! than the applied one is a replay and is ignored. A tombstone (the pipeline was deleted)
//! resets that: a pipeline created again under the same name starts at generation 1. The latest valid record is handed to
//! the service through a `watch` channel, so a burst of records costs the service one
//! wake-up and it always sees the newest.
//!
//! Latency matters here (a change must be applied within 100 ms of landing), and idle
//! services should cost the broker nothing. Both hold with librdkafka's fetch defaults:
//! the broker answers a waiting fetch as soon as one byte arrives (`fetch.min.bytes=1`),
//! so `fetch.wait.max.ms` (500 ms) only sets how often an idle follower asks again. A
//! smaller value bought no latency and cost every replica a fetch every few milliseconds.
//! The initial read ends at the end offsets taken at the start, not at partition EOF,
//! which librdkafka reports only after a fetch held back for `fetch.wait.max.ms`.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use shop_domain::ControlRecord;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::compacted::{CatchUp, partitions_of};
use crate::context::ClientLog;
use crate::{Error, KafkaArgs, Result};

/// How long `follow` waits for the initial read to reach the end of the topic before it
/// hands over and keeps reading in the background.
const CATCH_UP: Duration = Duration::from_secs(10);

/// Pause after a consumer error before reading again.
const ERROR_PAUSE: Duration = Duration::from_millis(20);

/// Starts following the control records of `args.pipeline`. Returns once the topic has
/// been read to its current end (or after `CATCH_UP`, when the broker is slow), so a
/// service starts with the latest record already in the channel. The channel holds `None`
/// while no record for the pipeline exists: the service then uses its flags.
pub async fn follow(
    args: &KafkaArgs,
    shutdown: CancellationToken,
) -> Result<watch::Receiver<Option<ControlRecord>>> {
    let consumer: StreamConsumer<ClientLog> = follower_config(args)
        .create_with_context(ClientLog::new("control"))
        .map_err(|source| Error::Client {
            bootstrap: args.bootstrap_servers.clone(),
            source,
        })?;
    let topic = args.control_topic.clone();
    let partitions =
        partitions_of(&consumer, &topic, Duration::from_secs(10))?.ok_or_else(|| {
            Error::NoSuchTopic {
                topic: topic.clone(),
            }
        })?;
    let mut assignment = TopicPartitionList::new();
    for partition in &partitions {
        assignment
            .add_partition_offset(&topic, *partition, Offset::Beginning)
            .map_err(|source| Error::Consume {
                topic: topic.clone(),
                source,
            })?;
    }
    consumer
        .assign(&assignment)
        .map_err(|source| Error::Consume {
            topic: topic.clone(),
            source,
        })?;

    let catch_up_to = CatchUp::new(&consumer, &topic, &partitions, CATCH_UP)?;

    let (tx, rx) = watch::channel(None);
    let (caught_up_tx, caught_up_rx) = tokio::sync::oneshot::channel();
    let follower = Follower {
        topic,
        pipeline: args.pipeline.clone(),
        catch_up_to,
        latest: None,
        tx,
        caught_up: Some(caught_up_tx),
    };
    tokio::spawn(follower.run(consumer, shutdown));
    if tokio::time::timeout(CATCH_UP, caught_up_rx).await.is_err() {
        warn!(pipeline = %args.pipeline, "control topic not read to its end yet; starting with the settings known so far");
    }
    Ok(rx)
}

/// The settings of the follower's consumer (public so the control-loop benchmark measures
/// a consumer configured exactly like it).
pub fn follower_config(args: &KafkaArgs) -> ClientConfig {
    args.reader_config("shopstream-control", "shopstream-control-follower")
}

struct Follower {
    topic: String,
    pipeline: String,
    /// Where the initial read ends.
    catch_up_to: CatchUp,
    /// The newest valid record seen; published once the initial read is complete.
    latest: Option<ControlRecord>,
    tx: watch::Sender<Option<ControlRecord>>,
    caught_up: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Follower {
    async fn run(mut self, consumer: StreamConsumer<ClientLog>, shutdown: CancellationToken) {
        // The last error logged, so an outage is logged once per kind, not per event.
        let mut last_error: Option<String> = None;
        if self.catch_up_to.is_done() {
            self.publish_caught_up();
        }
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                received = consumer.recv() => received,
            };
            match received {
                Ok(message) => {
                    if last_error.take().is_some() {
                        info!(topic = %self.topic, "reading control records again");
                    }
                    if message.key() == Some(self.pipeline.as_bytes()) {
                        self.offer(message.payload(), message.offset());
                    }
                    if self.catch_up_to.read(message.partition(), message.offset()) {
                        self.publish_caught_up();
                    }
                }
                Err(KafkaError::PartitionEOF(partition)) => {
                    if last_error.take().is_some() {
                        info!(topic = %self.topic, "reading control records again");
                    }
                    if self.catch_up_to.reached_end(partition) {
                        self.publish_caught_up();
                    }
                }
                Err(error) => {
                    // The client reconnects by itself and queues an error event for each
                    // failed attempt (several a second during an outage). Pausing long
                    // per event would leave a backlog of stale errors in front of the
                    // records once the broker is back (a minute of outage kept the
                    // follower deaf for minutes); the short pause only avoids a busy loop.
                    let text = error.to_string();
                    if last_error.as_deref() != Some(text.as_str()) {
                        warn!(topic = %self.topic, %error, "reading control records failed; retrying");
                        last_error = Some(text);
                    } else {
                        debug!(topic = %self.topic, %error, "reading control records failed again");
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(ERROR_PAUSE) => {}
                    }
                }
            }
        }
    }

    fn offer(&mut self, payload: Option<&[u8]>, offset: i64) {
        let Some(payload) = payload else {
            // The pipeline was deleted. One created again under the same name starts over at
            // generation 1, so the next record is taken whatever its generation; until then
            // the applied settings stay.
            info!(pipeline = %self.pipeline, offset, "control record deleted; the next record starts a new pipeline");
            self.latest = None;
            return;
        };
        let record = match ControlRecord::parse(payload) {
            Ok(record) => record,
            Err(error) => {
                warn!(pipeline = %self.pipeline, offset, %error, "ignoring invalid control record");
                return;
            }
        };
        let newest = self.latest.as_ref().map_or(0, |r| r.generation);
        if self.latest.is_some() && record.generation <= newest {
            debug!(pipeline = %self.pipeline, generation = record.generation, "ignoring control record that is not newer");
            return;
        }
        info!(
            pipeline = %self.pipeline,
            generation = record.generation,
            orders_per_second = record.orders_per_second,
            payment_failure_ratio = record.payment_failure_ratio,
            paused = record.paused,
            "control record received"
        );
        self.latest = Some(record.clone());
        if self.caught_up.is_none() {
            self.tx.send_replace(Some(record));
        }
    }

    fn publish_caught_up(&mut self) {
        if let Some(caught_up) = self.caught_up.take() {
            if let Some(record) = &self.latest {
                self.tx.send_replace(Some(record.clone()));
            }
            let _ = caught_up.send(());
        }
    }
}
