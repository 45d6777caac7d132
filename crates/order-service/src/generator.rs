//! The generation loop: when to send how many orders, with which ids, at which rate.
//!
//! One task owns the [`Pacer`], the current block of order ids and the producer, and waits
//! in a single `select!` for whichever comes first: shutdown, a new control record, a
//! claimed id block, or the moment the next order is due. At high rates many orders are
//! due per wake-up and go out as one batch; the pacer's schedule keeps the long-run rate
//! exact whatever the timer's jitter. The task never blocks on the broker: a full producer
//! queue holds one order back and the loop retries it shortly, still answering control
//! records and shutdown.

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
            ]
            .into(),
            ..Report::default()
        }
    }
}

/// Where order ids come from: blocks claimed on the id-block topic (see
/// [`shop_kafka::ids`]).
pub(crate) struct IdSource {
    pub producer: FutureProducer<ClientLog>,
    pub topic: String,
    pub pipeline: String,
    pub instance: String,
    /// `None` before the first claim.
    pub block: Option<IdBlock>,
    /// Not before this instant may the next claim be attempted (after a failure).
    pub retry_at: Option<Instant>,
}

impl std::fmt::Debug for IdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdSource")
            .field("topic", &self.topic)
            .field("block", &self.block)
            .field("retry_at", &self.retry_at)
            .finish_non_exhaustive()
    }
}

impl IdSource {
    fn is_exhausted(&self) -> bool {
        self.block
            .as_ref()
            .is_none_or(|block| block.remaining() == 0)
    }

    fn next_id(&mut self) -> Option<u64> {
        self.block.as_mut()?.next()
    }

    /// Claims a new block, after the retry pause if the last attempt failed. Cancel-safe
    /// in the sense that matters: a claim abandoned half-way at most wastes a block.
    async fn claim(&self) -> shop_kafka::Result<IdBlock> {
        if let Some(at) = self.retry_at {
            tokio::time::sleep_until(at).await;
        }
        shop_kafka::ids::claim_block(&self.producer, &self.topic, &self.pipeline, &self.instance)
            .await
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
                claimed = self.ids.claim(), if self.ids.is_exhausted() => self.install(claimed),
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
            return Ok(());
        }
        let due = self.pacer.due(self.origin.elapsed()).min(MAX_BATCH);
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

/// Sleeps until `at`, or forever when it is `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
