//! The order producer: idempotent, `acks=all`, with delivery accounting and backpressure.
//!
//! Sending only enqueues a record in librdkafka; the broker's answer arrives later in
//! [`DeliveryContext::delivery`], on the producer's polling thread, which counts it as
//! produced or failed (and logs failures). Nothing is dropped silently:
//!
//! - a full local queue (the broker is slower than the rate) is not an error: the record
//!   is held back and retried, and no new order is generated meanwhile;
//! - a record the broker refuses, or that times out, is counted and logged;
//! - at shutdown the queue is flushed within a grace period, and whatever is still unsent
//!   is reported as a number (librdkafka then fails those records, which counts them).
//!
//! The idempotent producer keeps order and avoids duplicates across its own retries; if
//! it reports a fatal error, the service stops (see [`Error::ProducerFatal`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use shop_domain::{Order, TraceParent};
use shop_kafka::KafkaArgs;
use shop_kafka::context::{ClientLog, Repeats};
use shop_runtime::Health;
use shop_runtime::metrics::Counter;
use tracing::{debug, error, warn};

use crate::Error;
use crate::metrics::OrderMetrics;

/// Records the producer's local queue holds (see [`OrderProducer::new`]).
const QUEUE_MESSAGES: u32 = 100_000;

/// How long to wait before offering a held-back record to a full queue again.
pub(crate) const BACKPRESSURE_RETRY: Duration = Duration::from_millis(2);

/// The same delivery failure is logged at most once per this period; the others are
/// counted and their number is given with the next logged one (a broker outage at 50 000
/// orders/s must not become 50 000 log lines a second).
const FAILURE_LOG_PERIOD: Duration = Duration::from_secs(1);

/// An order turned into what Kafka needs, kept until the producer has accepted it.
#[derive(Debug)]
pub(crate) struct Prepared {
    order_id: u64,
    key: String,
    payload: Vec<u8>,
    /// Taken by each send attempt and given back when the queue is full.
    headers: Option<OwnedHeaders>,
    /// Milliseconds since the Unix epoch: the record's timestamp, equal to `created_at`.
    timestamp: i64,
}

impl Prepared {
    /// The record of `order`, stamped `timestamp` (see [`epoch_millis`]).
    pub fn new(order: &Order, trace: &TraceParent, timestamp: i64) -> Self {
        Self {
            order_id: order.order_id,
            key: order.key(),
            payload: order.to_json(),
            headers: Some(shop_kafka::headers::event_headers(trace)),
            timestamp,
        }
    }
}

/// A Kafka record timestamp: milliseconds since the Unix epoch.
pub(crate) fn epoch_millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The producer of one service instance, with at most one record held back by a full
/// queue.
pub(crate) struct OrderProducer {
    producer: ThreadedProducer<DeliveryContext>,
    topic: String,
    pending: Option<Prepared>,
    failed: Counter,
}

impl std::fmt::Debug for OrderProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderProducer")
            .field("topic", &self.topic)
            .field("pending", &self.pending.as_ref().map(|p| p.order_id))
            .finish_non_exhaustive()
    }
}

impl OrderProducer {
    pub fn new(
        kafka: &KafkaArgs,
        topic: &str,
        instance: &str,
        metrics: &OrderMetrics,
        health: &Health,
    ) -> Result<Self, Error> {
        Self::with_queue(kafka, topic, instance, metrics, health, QUEUE_MESSAGES)
    }

    /// [`OrderProducer::new`] with a local queue of `queue_messages` records (tests fill a
    /// small one to provoke backpressure).
    pub fn with_queue(
        kafka: &KafkaArgs,
        topic: &str,
        instance: &str,
        metrics: &OrderMetrics,
        health: &Health,
        queue_messages: u32,
    ) -> Result<Self, Error> {
        let context = DeliveryContext {
            health: health.clone(),
            brokers_down: AtomicBool::new(false),
            topic: topic.to_owned(),
            produced: metrics.produced.clone(),
            failed: metrics.delivery_failed.clone(),
            failure_log: Mutex::new(Repeats::new(FAILURE_LOG_PERIOD)),
            log: ClientLog::new("orders-producer"),
            fatal: AtomicBool::new(false),
        };
        let producer = kafka
            .client_config(&format!("order-service-{instance}"))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // A few milliseconds of batching turns 50 000 orders/s into a few hundred
            // requests/s, at a latency nobody notices.
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            // Two seconds of orders at 50 000/s may wait locally while the broker is slow;
            // beyond that, sending backs off (see `send`).
            .set("queue.buffering.max.messages", queue_messages.to_string())
            // No compression: the seed's kafka-python consumers read gzip out of the box
            // but need extra libraries for lz4/snappy/zstd, and orders are small.
            .set("compression.type", "none")
            .create_with_context(context)
            .map_err(|source| Error::Producer {
                what: "order",
                bootstrap: kafka.bootstrap_servers.clone(),
                source,
            })?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
            pending: None,
            failed: metrics.delivery_failed.clone(),
        })
    }

    /// Whether a record is held back by a full queue.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Offers the held-back record again; `Ok(true)` when none is held back any more.
    pub fn retry_pending(&mut self) -> Result<bool, Error> {
        match self.pending.take() {
            None => Ok(true),
            Some(order) => self.send(order),
        }
    }

    /// Enqueues `order`; `Ok(false)` when the queue is full and the order is held back
    /// (then send nothing new until [`OrderProducer::retry_pending`] succeeds).
    pub fn send(&mut self, mut order: Prepared) -> Result<bool, Error> {
        debug_assert!(self.pending.is_none(), "one record is held back at most");
        let mut record = BaseRecord::to(&self.topic)
            .key(&order.key)
            .payload(&order.payload)
            .timestamp(order.timestamp);
        record.headers = order.headers.take();
        let (error, record) = match self.producer.send(record) {
            Ok(()) => return Ok(true),
            Err(refused) => refused,
        };
        let headers = record.headers;
        match error {
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                order.headers = headers;
                debug!(
                    order_id = order.order_id,
                    "producer queue full; holding the order back"
                );
                self.pending = Some(order);
                Ok(false)
            }
            KafkaError::MessageProduction(RDKafkaErrorCode::Fatal) => {
                self.failed.inc();
                error!(order_id = order.order_id, topic = %self.topic, "order not produced: the producer failed fatally");
                Err(self.fatal_error())
            }
            error => {
                // Refused before it left the process (too large, unknown topic or
                // partition): it will not get better by retrying this record.
                self.failed.inc();
                warn!(order_id = order.order_id, topic = %self.topic, %error, "order not produced");
                Ok(true)
            }
        }
    }

    /// Fails when librdkafka has reported a fatal error, after which it delivers nothing.
    pub fn check_fatal(&self) -> Result<(), Error> {
        if self.producer.context().fatal.load(Ordering::Relaxed) {
            Err(self.fatal_error())
        } else {
            Ok(())
        }
    }

    fn fatal_error(&self) -> Error {
        let (code, reason) = self
            .producer
            .client()
            .fatal_error()
            .unwrap_or((RDKafkaErrorCode::Fatal, "no reason given".to_owned()));
        Error::ProducerFatal {
            code: code.to_string(),
            reason,
        }
    }

    /// Sends the held-back record and waits for every enqueued record to be acknowledged,
    /// for at most `grace`. Returns how many orders were left unsent. Blocks a thread of
    /// tokio's blocking pool, not the caller's.
    pub async fn close(self, grace: Duration) -> Result<u64, Error> {
        tokio::task::spawn_blocking(move || self.close_blocking(grace))
            .await
            .map_err(|e| Error::Task(format!("flushing the order producer: {e}")))
    }

    fn close_blocking(mut self, grace: Duration) -> u64 {
        let deadline = Instant::now() + grace;
        while self.pending.is_some() && Instant::now() < deadline {
            match self.retry_pending() {
                Ok(true) => {}
                Ok(false) => std::thread::sleep(BACKPRESSURE_RETRY),
                Err(error) => {
                    warn!(%error, "cannot send the held-back order at shutdown");
                    break;
                }
            }
        }
        let mut unsent = 0;
        if let Some(order) = self.pending.take() {
            self.failed.inc();
            warn!(order_id = order.order_id, topic = %self.topic, "order not produced: the producer queue stayed full until shutdown");
            unsent += 1;
        }
        let flushed = self
            .producer
            .flush(deadline.saturating_duration_since(Instant::now()));
        let in_flight = u64::try_from(self.producer.in_flight_count()).unwrap_or_default();
        unsent += in_flight;
        match flushed {
            Ok(()) => debug!(topic = %self.topic, "order producer flushed"),
            Err(error) => warn!(
                topic = %self.topic,
                unsent,
                grace_seconds = grace.as_secs_f64(),
                %error,
                "orders unsent at shutdown: the broker did not acknowledge them within the grace period"
            ),
        }
        // Dropping the producer fails what is still queued; the delivery callback counts
        // and logs those records as failed.
        drop(self.producer);
        unsent
    }
}

/// Counts deliveries and reports librdkafka's own events through tracing.
struct DeliveryContext {
    /// Readiness: not ready while librdkafka reports every broker down.
    health: Health,
    brokers_down: AtomicBool,
    topic: String,
    produced: Counter,
    failed: Counter,
    failure_log: Mutex<Repeats>,
    log: ClientLog,
    fatal: AtomicBool,
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, detail: &str) {
        self.log.log_line(level, facility, detail);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown)
            && !self.brokers_down.swap(true, Ordering::Relaxed)
        {
            self.health.set_ready(false, "no Kafka broker reachable");
        }
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.fatal.store(true, Ordering::Relaxed);
            error!(topic = %self.topic, %error, reason, "order producer failed fatally");
        } else {
            // Transient (broker down, request timed out): librdkafka retries by itself.
            self.log.client_error(&error, reason);
        }
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let (error, message) = match result {
            Ok(_) => {
                self.produced.inc();
                // A delivered order proves a broker is back.
                if self.brokers_down.swap(false, Ordering::Relaxed) {
                    self.health.set_ready(true, "producing orders");
                }
                return;
            }
            Err(failed) => failed,
        };
        self.failed.inc();
        let admitted = self
            .failure_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(&error.to_string(), Instant::now());
        if let Some(suppressed) = admitted {
            let order_id = message.key().and_then(|k| std::str::from_utf8(k).ok());
            warn!(
                order_id,
                topic = %self.topic,
                %error,
                failures_not_logged = suppressed,
                "order delivery failed"
            );
        }
    }
}
