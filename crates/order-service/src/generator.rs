//! The generation loop: when to send how many orders, with which ids, at which rate.
//!
//! One task owns the [`Pacer`], the current block of order ids and the producer, and waits
//! in a single `select!` for whichever comes first: shutdown, a new control record, a
//! claimed id block, or the moment the next order is due. At high rates many orders are
//! due per wake-up and go out as one batch; the pacer's schedule keeps the long-run rate
//! exact whatever the timer's jitter. The task never blocks on the broker: a full producer
//! queue holds one order back and the loop retries it shortly, still answering control
//! records and shutdown. An id-block claim survives those turns (one claim, one block);
//! orders the schedule skips because they could not go out within 1 s of being due are
//! counted (`shopstream_orders_skipped_total`, the heartbeat's `skipped`) and logged.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rand::rngs::SmallRng;
use rdkafka::producer::FutureProducer;
use shop_domain::{ControlRecord, IdBlock, Pacer};
use shop_kafka::context::ClientLog;
use shop_kafka::heartbeat::{Heartbeats, Report};
use shop_runtime::Health;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Error;
use crate::metrics::{OrderMetrics, gauge_value};
use crate::order::{random_order, random_traceparent};
use crate::producer::{BACKPRESSURE_RETRY, OrderProducer, Prepared, epoch_millis};

/// The most orders sent per loop turn, so a catch-up burst still lets the loop notice
/// control records and shutdown, and the orders of one turn, which share a creation time,
/// are created well within a millisecond of it.
const MAX_BATCH: u64 = 256;

/// Pause between attempts to claim an id block while the broker refuses.
const CLAIM_RETRY: Duration = Duration::from_secs(1);

/// At most one line about skipped orders is logged per this period; it gives the number
/// skipped since the last one (a stall at 100 000 orders/s must not log every turn).
const SKIP_LOG_PERIOD: Duration = Duration::from_secs(1);

/// The settings in force, shared with the heartbeat publisher.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Applied {
    /// `None` until a control record has been applied (the flags are in force).
    pub generation: Option<u64>,
    pub orders_per_second: f64,
    pub paused: bool,
}

impl Applied {
    /// What a heartbeat reports, with the delivery counters.
    pub fn report(&self, metrics: &OrderMetrics) -> Report {
        Report {
            applied_generation: self.generation,
            orders_per_second: Some(self.orders_per_second),
            paused: Some(self.paused),
            counters: [
                ("produced".to_owned(), metrics.produced.get()),
                ("delivery_failed".to_owned(), metrics.delivery_failed.get()),
                ("skipped".to_owned(), metrics.skipped.get()),
            ]
            .into(),
            ..Report::default()
        }
    }
}

/// A claim of an id block in flight.
type Claim = Pin<Box<dyn Future<Output = shop_kafka::Result<IdBlock>> + Send>>;

/// Where order ids come from: blocks claimed on the id-block topic (see
/// [`shop_kafka::ids`]).
///
/// At most one claim is in flight, and it is kept across the generator's loop turns: a
/// claim is one record on the id-block topic, so a claim abandoned by a turn that woke up
/// for something else (a control record, a retry against a full producer queue every few
/// milliseconds) would still be written and burn a block of a million ids.
pub(crate) struct IdSource {
    producer: FutureProducer<ClientLog>,
    topic: String,
    pipeline: String,
    instance: String,
    /// `None` before the first claim.
    block: Option<IdBlock>,
    /// Not before this instant may the next claim be attempted (after a failure).
    retry_at: Option<Instant>,
    claim: Option<Claim>,
}

impl std::fmt::Debug for IdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdSource")
            .field("topic", &self.topic)
            .field("block", &self.block)
            .field("retry_at", &self.retry_at)
            .field("claiming", &self.claim.is_some())
            .finish_non_exhaustive()
    }
}

impl IdSource {
    /// Ids claimed with `producer` on `topic` for `pipeline`, in the name of `instance`;
    /// none at hand until the first claim.
    pub fn new(
        producer: FutureProducer<ClientLog>,
        topic: &str,
        pipeline: &str,
        instance: &str,
    ) -> Self {
        Self {
            producer,
            topic: topic.to_owned(),
            pipeline: pipeline.to_owned(),
            instance: instance.to_owned(),
            block: None,
            retry_at: None,
            claim: None,
        }
    }

    fn is_exhausted(&self) -> bool {
        self.block
            .as_ref()
            .is_none_or(|block| block.remaining() == 0)
    }

    fn next_id(&mut self) -> Option<u64> {
        self.block.as_mut()?.next()
    }

    /// The outcome of the claim in flight, starting one (after the retry pause if the last
    /// attempt failed) when none is. Cancel-safe: dropped before it completes, the claim
    /// stays in flight and the next call waits for the same one. The generator drops it
    /// only when it stops.
    async fn claimed(&mut self) -> shop_kafka::Result<IdBlock> {
        let claim = self.claim.get_or_insert_with(|| {
            let (producer, topic, pipeline, instance) = (
                self.producer.clone(),
                self.topic.clone(),
                self.pipeline.clone(),
                self.instance.clone(),
            );
            let retry_at = self.retry_at;
            Box::pin(async move {
                if let Some(at) = retry_at {
                    tokio::time::sleep_until(at).await;
                }
                shop_kafka::ids::claim_block(&producer, &topic, &pipeline, &instance).await
            })
        });
        let claimed = claim.as_mut().await;
        self.claim = None;
        claimed
    }
}

#[derive(Debug)]
pub(crate) struct Generator {
    pub pacer: Pacer,
    /// The origin of the pacer's clock.
    pub origin: Instant,
    pub control: watch::Receiver<Option<ControlRecord>>,
    pub ids: IdSource,
    pub producer: OrderProducer,
    pub rng: SmallRng,
    pub applied: Arc<Mutex<Applied>>,
    pub metrics: OrderMetrics,
    pub health: Health,
    pub skip_log: SkipLog,
}

/// Throttles the log lines about skipped orders, counting what it does not log.
#[derive(Debug, Default)]
pub(crate) struct SkipLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl SkipLog {
    /// Adds `skipped`; `Some(skipped since the last line)` when a line is due now.
    fn admit(&mut self, skipped: u64, now: Instant) -> Option<u64> {
        self.unlogged += skipped;
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < SKIP_LOG_PERIOD)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

impl Generator {
    /// Generates orders until `shutdown`; returns the producer so the caller can flush it.
    pub async fn run(
        mut self,
        heartbeats: &Heartbeats,
        shutdown: &CancellationToken,
    ) -> (OrderProducer, Result<(), Error>) {
        let result = self.generate(heartbeats, shutdown).await;
        (self.producer, result)
    }

    async fn generate(
        &mut self,
        heartbeats: &Heartbeats,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let initial = self.control.borrow_and_update().clone();
        match initial {
            Some(record) => self.apply(&record, heartbeats),
            None => {
                let applied = self.applied();
                info!(
                    orders_per_second = applied.orders_per_second,
                    paused = applied.paused,
                    "no control record for the pipeline; using the flags"
                );
            }
        }
        // Once the follower has stopped there is nothing more to wait for on the channel.
        let mut control_open = true;
        loop {
            self.producer.check_fatal()?;
            let wake = self.wake_at();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                changed = self.control.changed(), if control_open => match changed {
                    Ok(()) => {
                        let record = self.control.borrow_and_update().clone();
                        if let Some(record) = record {
                            self.apply(&record, heartbeats);
                        }
                    }
                    Err(_) => control_open = false,
                },
                claimed = self.ids.claimed(), if self.ids.is_exhausted() => self.install(claimed),
                () = sleep_until(wake) => self.send_due()?,
            }
        }
    }

    /// Applies a control record's rate and pause state from now on.
    fn apply(&mut self, record: &ControlRecord, heartbeats: &Heartbeats) {
        if self.applied().generation == Some(record.generation) {
            return;
        }
        let now = self.origin.elapsed();
        self.pacer.set_rate(record.orders_per_second, now);
        self.pacer.set_paused(record.paused, now);
        self.count_skipped();
        let applied = Applied {
            generation: Some(record.generation),
            orders_per_second: self.pacer.rate(),
            paused: self.pacer.is_paused(),
        };
        *self.applied.lock().unwrap_or_else(PoisonError::into_inner) = applied;
        self.metrics.rate.set(applied.orders_per_second);
        self.metrics.paused.set(i64::from(applied.paused));
        self.metrics.generation.set(gauge_value(record.generation));
        info!(
            generation = record.generation,
            orders_per_second = applied.orders_per_second,
            paused = applied.paused,
            "applied control record"
        );
        heartbeats.publish_now();
    }

    fn applied(&self) -> Applied {
        *self.applied.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn install(&mut self, claimed: shop_kafka::Result<IdBlock>) {
        match claimed {
            Ok(block) => {
                let first_id = block.clone().next();
                info!(
                    block = block.block(),
                    first_id, "claimed a block of order ids"
                );
                self.metrics.id_block.set(gauge_value(block.block()));
                // The schedule starts with the first ids: the wait for them (a fresh
                // idempotent producer takes about half a second to claim) is start-up, not
                // orders to skip.
                if self.ids.block.is_none() {
                    self.pacer.restart(self.origin.elapsed());
                }
                self.ids.block = Some(block);
                self.ids.retry_at = None;
                self.health.set_ready(true, "producing orders");
            }
            Err(error) => {
                warn!(topic = %self.ids.topic, %error, "cannot claim a block of order ids; retrying");
                self.health
                    .set_ready(false, format!("cannot claim a block of order ids: {error}"));
                self.ids.retry_at = Some(Instant::now() + CLAIM_RETRY);
            }
        }
    }

    /// When the loop must next wake up to send: soon while an order is held back by a
    /// full queue, never while no ids are at hand (the claim branch wakes it), else when
    /// the next order is due (never while paused or at rate 0).
    fn wake_at(&self) -> Option<Instant> {
        if self.producer.has_pending() {
            Some(Instant::now() + BACKPRESSURE_RETRY)
        } else if self.ids.is_exhausted() {
            None
        } else {
            self.pacer.next_due().map(|due| self.origin + due)
        }
    }

    /// Sends the orders that are due, up to [`MAX_BATCH`], stopping early when the
    /// producer's queue is full or the id block runs out.
    fn send_due(&mut self) -> Result<(), Error> {
        if !self.producer.retry_pending()? {
            // Nothing goes out, but the schedule moves on: what it leaves behind is counted
            // now, while the queue is full, not only once it drains.
            self.pacer.due(self.origin.elapsed());
            self.count_skipped();
            return Ok(());
        }
        let due = self.pacer.due(self.origin.elapsed()).min(MAX_BATCH);
        self.count_skipped();
        if due == 0 {
            return Ok(());
        }
        // One clock reading and one formatted timestamp per turn: at 50 000 orders/s,
        // formatting it per order would be a good part of the generator's work.
        let created = SystemTime::now();
        let (created_at, timestamp) = (shop_domain::time::rfc3339(created), epoch_millis(created));
        for _ in 0..due {
            let Some(order_id) = self.ids.next_id() else {
                break;
            };
            self.pacer.take(1);
            let order = random_order(&mut self.rng, order_id, created_at.clone());
            let trace = random_traceparent(&mut self.rng);
            if !self
                .producer
                .send(Prepared::new(&order, &trace, timestamp))?
            {
                break;
            }
        }
        Ok(())
    }
}

impl Generator {
    /// Reports the orders the pacer has skipped since the last call: counted, and logged
    /// at most once per [`SKIP_LOG_PERIOD`].
    fn count_skipped(&mut self) {
        let total = self.pacer.skipped();
        let new = total.saturating_sub(self.metrics.skipped.get());
        if new == 0 {
            return;
        }
        self.metrics.skipped.inc_by(new);
        if let Some(skipped) = self.skip_log.admit(new, Instant::now()) {
            warn!(
                skipped,
                skipped_total = total,
                producer_queue_full = self.producer.has_pending(),
                ids_at_hand = !self.ids.is_exhausted(),
                orders_per_second = self.pacer.rate(),
                catch_up_seconds = shop_domain::rate::BURST_WINDOW_SECS,
                "orders skipped: they could not be sent within the catch-up window of being due"
            );
        }
    }
}

/// Sleeps until `at`, or forever when it is `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The generator against the test bed's broker, with its order producer pointed at an
/// address where no broker listens and a local queue of one record: the queue is full from
/// the second order on, for as long as the test runs.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use rand::SeedableRng;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use shop_domain::ids::BLOCK_SIZE;
    use shop_kafka::KafkaArgs;
    use shop_runtime::Metrics;
    use shop_testkit::{TestTopic, free_port, testbed, unique_name};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(20);

    /// Runs a generator at `rate` holding `block`, whose id-block claims linger
    /// `claim_linger` in the client before they are sent (so a claim is in flight at least
    /// that long), until `done` holds for its metrics text. Returns the id-block topic and
    /// the last metrics text; `Err` with them when `done` did not hold within [`TIMEOUT`].
    async fn run_blocked(
        name: &str,
        rate: f64,
        block: IdBlock,
        claim_linger: Duration,
        done: impl Fn(&str) -> bool,
    ) -> (TestTopic, Result<String, String>) {
        let bed = testbed();
        let ids = bed.topic(&format!("{name}-ids"), 1).await.unwrap();
        let heartbeat_topic = bed.topic(&format!("{name}-hb"), 1).await.unwrap();
        let kafka = KafkaArgs {
            pipeline: unique_name(name),
            heartbeat_topic: heartbeat_topic.name().to_owned(),
            id_block_topic: ids.name().to_owned(),
            ..KafkaArgs::for_broker(bed.kafka_bootstrap())
        };
        let nowhere = KafkaArgs::for_broker(format!("127.0.0.1:{}", free_port()));
        let (metrics, health) = (Metrics::new(), Health::new());
        let order_metrics = OrderMetrics::register(&metrics);
        order_metrics.id_block.set(gauge_value(block.block()));
        let producer =
            OrderProducer::with_queue(&nowhere, "orders", name, &order_metrics, &health, 1)
                .unwrap();
        let id_producer = kafka
            .client_config(&format!("{name}-ids"))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", claim_linger.as_millis().to_string())
            .create_with_context(ClientLog::new("ids"))
            .unwrap();
        let shutdown = CancellationToken::new();
        let heartbeats = Heartbeats::spawn(
            &kafka,
            crate::SERVICE,
            name,
            Duration::from_secs(1),
            Report::default,
            shutdown.clone(),
        )
        .unwrap();
        let (_control, control_rx) = watch::channel(None);
        let origin = Instant::now();
        let applied = Applied {
            generation: None,
            orders_per_second: rate,
            paused: false,
        };
        let generator = Generator {
            pacer: Pacer::new(rate, origin.elapsed()),
            origin,
            control: control_rx,
            ids: IdSource {
                block: Some(block),
                ..IdSource::new(id_producer, &kafka.id_block_topic, &kafka.pipeline, name)
            },
            producer,
            rng: SmallRng::seed_from_u64(1),
            applied: Arc::new(Mutex::new(applied)),
            metrics: order_metrics,
            health,
            skip_log: SkipLog::default(),
        };
        let watch = async {
            let deadline = Instant::now() + TIMEOUT;
            let result = loop {
                let text = metrics.encode();
                if done(&text) {
                    break Ok(text);
                }
                if Instant::now() > deadline {
                    break Err(text);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            shutdown.cancel();
            result
        };
        let (result, (_producer, generated)) =
            tokio::join!(watch, generator.run(&heartbeats, &shutdown));
        generated.unwrap();
        heartbeats.finished().await;
        (ids, result)
    }

    fn metric(text: &str, name: &str) -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    fn claims(topic: &TestTopic) -> i64 {
        let consumer: BaseConsumer = testbed().kafka_config().create().unwrap();
        consumer
            .fetch_watermarks(topic.name(), 0, TIMEOUT)
            .unwrap()
            .1
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_block_claimed_while_the_producer_queue_is_full_is_claimed_once() {
        shop_runtime::telemetry::init_for_tests();
        // Two ids left: the first order fills the queue, the second is held back by it,
        // and the generator needs a new block while it waits for the queue.
        let mut block = IdBlock::new(1000);
        block.nth(usize::try_from(BLOCK_SIZE - 3).unwrap());
        assert_eq!(block.remaining(), 2);
        let (ids, installed) = run_blocked(
            "claim-full-queue",
            1000.0,
            block,
            Duration::from_millis(300),
            |text| metric(text, "shopstream_order_id_block").is_some_and(|b| b != 1000),
        )
        .await;
        let claims = claims(&ids);
        let text = installed.unwrap_or_else(|text| {
            panic!("no new block within {TIMEOUT:?}; {claims} claims reached the broker\n{text}")
        });
        assert_eq!(claims, 1, "one claim, no block burned\n{text}");
        assert_eq!(metric(&text, "shopstream_order_id_block"), Some(0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn orders_skipped_while_the_producer_queue_is_full_are_counted() {
        shop_runtime::telemetry::init_for_tests();
        // At 1000/s the schedule may fall 1000 orders (a second) behind; a full queue holds
        // it back far longer.
        let (_ids, counted) = run_blocked(
            "skip-full-queue",
            1000.0,
            IdBlock::new(1000),
            Duration::ZERO,
            |text| metric(text, "shopstream_orders_skipped_total").is_some_and(|n| n >= 200),
        )
        .await;
        let text = counted.unwrap_or_else(|text| panic!("skipped orders not counted:\n{text}"));
        assert_eq!(metric(&text, "shopstream_orders_produced_total"), Some(0));
    }
}
