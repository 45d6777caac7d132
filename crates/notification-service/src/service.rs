//! The consume → print → store-offset loop, and what surrounds it: topics, dead letters,
//! heartbeats and shutdown.
//!
//! One payment is handled at a time, in partition order: its line is written and flushed
//! (or, if it is malformed, its dead letter acknowledged) before its offset is stored, and
//! stored offsets are committed by the client in the background and synchronously at
//! shutdown. A crash therefore replays at most the last second of payments, and the
//! window of recent payments keeps a replay seen by the same process from printing twice.
//! Broker outages are waited out with a capped backoff; the loop never gives up on them.

use std::io::{ErrorKind, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use shop_domain::notification::payment_identity;
use shop_domain::{InvalidMessage, Payment, RecentIds};
use shop_kafka::KafkaArgs;
use shop_kafka::heartbeat::{Heartbeats, INTERVAL};
use shop_kafka::topics::{TopicSpec, ensure_topics};
use shop_runtime::retry::{self, Retryable};
use shop_runtime::{Health, LogFormat};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::SERVICE;
use crate::client::{self, Context, PaymentConsumer};
use crate::config::{Config, Settings};
use crate::error::{Error, Result};
use crate::metrics::Counters;
use crate::render;

/// The longest the final commit may take; after that the shutdown goes on without it.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a process that is not ready checks whether the broker answers again.
const READINESS_CHECK: Duration = Duration::from_secs(5);

/// Pause after a consumer error before reading again.
const CONSUME_ERROR_PAUSE: Duration = Duration::from_millis(20);

/// Runs the service until `shutdown` is cancelled (or `out` is closed), writing one line
/// per payment to `out`, then commits what was written and returns.
///
/// `out` is stdout in the binary. A closed reader (`BrokenPipe`, as with
/// `notification-service | head`) ends the service cleanly, like a shutdown; the payment
/// whose line could not be written is not committed.
pub async fn run<W: Write + Send + 'static>(
    settings: Settings,
    out: W,
    shutdown: CancellationToken,
) -> Result<()> {
    let Settings {
        kafka,
        config,
        instance,
        metrics,
        health,
    } = settings;
    let counters = Counters::register(&metrics);
    let consumer = Arc::new(client::consumer(
        &kafka,
        &config,
        Context::new(health.clone(), "payments-consumer"),
    )?);
    if !create_topics(&kafka, &config, &consumer, &health, &shutdown).await? {
        return Ok(());
    }
    consumer
        .subscribe(&[&config.payments_topic])
        .map_err(|source| Error::Subscribe {
            topic: config.payments_topic.clone(),
            source,
        })?;
    let producer =
        client::dead_letter_producer(&kafka, Context::new(health.clone(), "dead-letter-producer"))?;
    // Heartbeats stop with the service also when it ends for another reason than the token.
    let heartbeat_stop = shutdown.child_token();
    let reporter = counters.clone();
    let heartbeats = Heartbeats::spawn(
        &kafka,
        SERVICE,
        &instance,
        INTERVAL,
        move || reporter.report(),
        heartbeat_stop.clone(),
    )?;
    info!(
        topic = %config.payments_topic,
        group = %config.group_id,
        dlq = %config.dlq_topic,
        %instance,
        dedup_window = config.dedup_window,
        "printing payments"
    );
    health.set_ready(true, "consuming payments");

    let mut printer = Printer {
        consumer,
        producer,
        out,
        format: config.line_format,
        recent: RecentIds::new(config.dedup_window),
        counters,
        health: health.clone(),
        config,
    };
    let ended = printer.consume(&shutdown).await;

    health.set_ready(false, "shutting down");
    let committed = printer.commit().await;
    // Leaves the group now (its revocation is logged) rather than at the end of scope.
    drop(printer);
    heartbeat_stop.cancel();
    heartbeats.finished().await;
    info!("notification-service stopped");
    ended.and(committed)
}

/// Creates the topics the service reads and writes that do not exist yet, waiting out an
/// unreachable broker. `Ok(false)` when shut down before that succeeded.
///
/// Existing topics are found with a metadata request first, so a restart needs no admin
/// request, and a cluster where this service may not create topics (or a broker without
/// the CreateTopics API, such as librdkafka's mock cluster) works once they exist.
async fn create_topics(
    kafka: &KafkaArgs,
    config: &Config,
    consumer: &Arc<PaymentConsumer>,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<bool> {
    let specs = [
        TopicSpec::events(&config.payments_topic, config.partitions),
        TopicSpec::events(&config.dlq_topic, config.partitions),
        TopicSpec::compacted(&kafka.heartbeat_topic),
    ];
    health.set_ready(false, "creating topics");
    let specs = &specs;
    let attempt = || async move {
        let missing = missing_topics(consumer, specs).await?;
        if !missing.is_empty() {
            info!(topics = ?missing.iter().map(|t| &t.name).collect::<Vec<_>>(), "creating topics");
            ensure_topics(kafka, &missing).await?;
        }
        Ok::<_, shop_kafka::Error>(())
    };
    let created = attempt
        .retry(retry::POLICY)
        // A client that cannot be created is a configuration error; waiting won't fix it.
        .when(|error| !matches!(error, shop_kafka::Error::Client { .. }))
        .notify(|error, retry_in| {
            warn!(%error, ?retry_in, "cannot create topics yet; is the broker reachable?");
            health.set_ready(false, format!("creating topics: {error}"));
        });
    tokio::select! {
        () = shutdown.cancelled() => Ok(false),
        created = created => created.map(|()| true).map_err(Error::from),
    }
}

/// The topics of `specs` the cluster does not have, by one metadata request (which does
/// not create topics: consumers do not auto-create by default).
async fn missing_topics(
    consumer: &Arc<PaymentConsumer>,
    specs: &[TopicSpec],
) -> shop_kafka::Result<Vec<TopicSpec>> {
    let consumer = Arc::clone(consumer);
    let metadata =
        tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, Duration::from_secs(10)))
            .await
            .map_err(|e| shop_kafka::Error::Task(e.to_string()))?
            .map_err(|source| shop_kafka::Error::Metadata {
                topic: "(all)".to_owned(),
                source,
            })?;
    let exists = |name: &str| {
        metadata
            .topics()
            .iter()
            .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
    };
    Ok(specs
        .iter()
        .filter(|spec| !exists(&spec.name))
        .cloned()
        .collect())
}

/// Whether to keep consuming after a message.
enum Flow {
    Continue,
    Stop,
}

/// The state of the consume loop.
struct Printer<W> {
    /// Shared with blocking tasks (metadata probe, final commit).
    consumer: Arc<PaymentConsumer>,
    producer: FutureProducer<Context>,
    out: W,
    format: LogFormat,
    recent: RecentIds,
    counters: Counters,
    health: Health,
    config: Config,
}

impl<W: Write> Printer<W> {
    /// Handles payments until `shutdown`, a closed `out`, or a write error.
    async fn consume(&mut self, shutdown: &CancellationToken) -> Result<()> {
        // Messages borrow the consumer; a local handle leaves `self` free to be mutated.
        let consumer = Arc::clone(&self.consumer);
        // The last error logged, so an outage is logged once per kind, not per event.
        let mut last_error: Option<String> = None;
        let mut readiness = tokio::time::interval(READINESS_CHECK);
        readiness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                received = consumer.recv() => received,
                _ = readiness.tick() => {
                    // Payments may be quiet after the broker is back; ask it directly, so
                    // readiness does not wait for the next payment.
                    if !self.health.is_ready().0 {
                        tokio::select! {
                            () = shutdown.cancelled() => return Ok(()),
                            answers = self.broker_answers() => if answers {
                                self.health.set_ready(true, "consuming payments");
                            },
                        }
                    }
                    continue;
                }
            };
            match received {
                Ok(message) => {
                    if last_error.take().is_some() {
                        info!(topic = %self.config.payments_topic, "reading payments again");
                    }
                    self.health.set_ready(true, "consuming payments");
                    if let Flow::Stop = self.handle(&message, shutdown).await? {
                        return Ok(());
                    }
                }
                Err(error) => {
                    // librdkafka reconnects by itself and queues an error event for each
                    // failed attempt (several a second during an outage). A long pause per
                    // event left a backlog of stale errors in front of the payments once
                    // the broker was back (minutes after a one-minute outage); the short
                    // pause only avoids a busy loop.
                    let text = error.to_string();
                    if last_error.as_deref() != Some(text.as_str()) {
                        warn!(topic = %self.config.payments_topic, %error, "cannot read payments; retrying");
                        last_error = Some(text);
                    } else {
                        debug!(topic = %self.config.payments_topic, %error, "cannot read payments again");
                    }
                    self.health
                        .set_ready(false, format!("reading payments: {error}"));
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(CONSUME_ERROR_PAUSE) => {}
                    }
                }
            }
        }
    }

    /// Prints or dead-letters one message, then stores its offset.
    async fn handle(
        &mut self,
        message: &BorrowedMessage<'_>,
        shutdown: &CancellationToken,
    ) -> Result<Flow> {
        let value = message.payload().unwrap_or_default();
        let flow = match Payment::parse(value) {
            Ok(payment) => self.print(&payment, payment_identity(value))?,
            Err(invalid) => self.dead_letter(message, &invalid, shutdown).await,
        };
        if let Flow::Stop = flow {
            return Ok(Flow::Stop);
        }
        if let Err(error) = self.consumer.store_offset_from_message(message) {
            // The partition was revoked meanwhile; its next owner reads the payment again.
            warn!(
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                %error,
                "offset not stored"
            );
        }
        Ok(Flow::Continue)
    }

    /// Writes the payment's line unless the same payment (`identity`, see
    /// [`payment_identity`]) was printed recently.
    fn print(&mut self, payment: &Payment, identity: u64) -> Result<Flow> {
        let order_id = payment.order_id;
        if !self.recent.insert(identity) {
            self.counters.duplicate();
            debug!(order_id, "payment already printed; not printing it again");
            return Ok(Flow::Continue);
        }
        let latency = render::latency(payment, SystemTime::now());
        let mut line = render::render(payment, latency, self.format);
        line.push('\n');
        match self
            .out
            .write_all(line.as_bytes())
            .and_then(|()| self.out.flush())
        {
            Ok(()) => {
                self.counters.printed(payment, latency);
                Ok(Flow::Continue)
            }
            Err(error) if error.kind() == ErrorKind::BrokenPipe => {
                info!(order_id, "stdout was closed; stopping");
                Ok(Flow::Stop)
            }
            Err(error) => Err(Error::Output(error)),
        }
    }

    /// Writes `message` unchanged to the dead-letter topic with the error in its headers,
    /// retrying until the broker acknowledges it: its offset must not be stored before.
    /// Each attempt is bounded by the producer's message timeout, so an outage costs one
    /// attempt per timeout, not a busy loop. `Flow::Stop` when shut down before the
    /// letter was acknowledged.
    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        invalid: &InvalidMessage,
        shutdown: &CancellationToken,
    ) -> Flow {
        let letter = shop_kafka::dead_letter::letter(message, &invalid.to_string(), invalid.kind());
        let mut backoff = retry::pauses();
        loop {
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.config.dlq_topic)
                .headers(letter.headers.clone());
            if let Some(key) = &letter.key {
                record = record.key(key);
            }
            if let Some(value) = &letter.value {
                record = record.payload(value);
            }
            // Not raced against shutdown: a letter in flight is finished (bounded by the
            // message timeout) rather than abandoned.
            match self.producer.send(record, Duration::ZERO).await {
                Ok(_) => {
                    self.counters.dead_lettered();
                    warn!(
                        topic = message.topic(),
                        partition = message.partition(),
                        offset = message.offset(),
                        kind = invalid.kind(),
                        error = %invalid,
                        dlq = %self.config.dlq_topic,
                        "malformed payment sent to the dead-letter topic"
                    );
                    return Flow::Continue;
                }
                Err((error, _)) => {
                    let retry_in = retry::next_pause(&mut backoff);
                    warn!(dlq = %self.config.dlq_topic, %error, ?retry_in, "dead letter not written; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return Flow::Stop,
                        () = tokio::time::sleep(retry_in) => {}
                    }
                }
            }
        }
    }

    /// Whether the broker answers a metadata request for the payments topic.
    async fn broker_answers(&self) -> bool {
        let (consumer, topic) = (
            Arc::clone(&self.consumer),
            self.config.payments_topic.clone(),
        );
        tokio::task::spawn_blocking(move || {
            consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// Commits the stored offsets synchronously (off the async threads, bounded by
    /// [`COMMIT_TIMEOUT`]).
    async fn commit(&self) -> Result<()> {
        let group = self.config.group_id.clone();
        let consumer = Arc::clone(&self.consumer);
        let commit =
            tokio::task::spawn_blocking(move || consumer.commit_consumer_state(CommitMode::Sync));
        let committed = match tokio::time::timeout(COMMIT_TIMEOUT, commit).await {
            Ok(Ok(committed)) => committed,
            // Timed out, or the blocking task was lost with the runtime.
            Ok(Err(_)) | Err(_) => {
                return Err(Error::CommitTimedOut {
                    group,
                    seconds: COMMIT_TIMEOUT.as_secs(),
                });
            }
        };
        match committed {
            Ok(()) => {
                info!(group = %group, "offsets committed");
                Ok(())
            }
            // Nothing was stored since the last background commit.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(source) => Err(Error::Commit { group, source }),
        }
    }
}
