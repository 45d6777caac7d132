//! The processing loop: read orders, send payments (or dead letters), and commit by time.
//!
//! One `select!` waits for, in this order of priority: shutdown, a new control record,
//! the end of the open batch's interval, and the next order. A batch opens at the first
//! order after a commit (in exactly-once mode: `begin_transaction`), collects records for
//! `--transaction-interval-ms`, and then commits: exactly once, the input offsets are sent
//! to the transaction and the transaction is committed; at least once, the payments'
//! acknowledgements are awaited and then the offsets are committed. Committing by time
//! rather than by count keeps the per-commit cost (a few broker round trips) negligible
//! at any rate.
//!
//! Errors follow librdkafka's transaction contract: retriable ones are retried with
//! backoff, abortable ones abort the transaction and rewind the consumer to the batch's
//! first offsets (so its orders are processed again). A producer that turns fatal is
//! replaced by a new one under the same transactional id, whose `init_transactions`
//! completes or aborts whatever the old one left open, and the batch's partitions are
//! rewound to the group's committed offsets (see `replace_and_rewind`). The typical cause
//! is a broker outage longer than the transaction timeout: the broker aborts the open
//! transaction itself and bumps the producer epoch, so the producer learns it is "fenced"
//! although no other incarnation exists. A producer fenced while its transaction was
//! younger than the timeout was fenced by another producer with the same transactional id:
//! that one owns the id, and `run` ends with an error instead of fencing it back.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime};

use futures::FutureExt;
use rdkafka::Offset;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use shop_domain::ControlRecord;
use shop_kafka::KafkaArgs;
use shop_kafka::context::ClientLog;
use shop_kafka::heartbeat::Heartbeats;
use shop_runtime::Health;
use shop_runtime::retry;
use tokio::sync::watch;
use tokio::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::batch::Batch;
use crate::calls::{CALL_TIMEOUT, blocking, no_open_transaction};
use crate::clients::{self, TRANSACTION_TIMEOUT};
use crate::config::{Config, Delivery};
use crate::context::PaymentContext;
use crate::error::{Error, Result};
use crate::metrics::{Applied, ServiceMetrics};
use crate::process::{DecisionSettings, Destination, Outgoing, Processed, process};

/// How long shutdown may spend committing the open batch before it gives up (and
/// aborts): well inside Kubernetes' default 30 s grace period.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// How often to check for outstanding acknowledgements before a commit.
const ACK_POLL: Duration = Duration::from_millis(1);

/// Pause after a consumer error before reading again.
const CONSUME_ERROR_PAUSE: Duration = Duration::from_millis(20);

/// Pause before retrying a send when the producer's queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

/// Everything the loop works with.
pub(crate) struct Worker {
    /// The broker settings and instance name, to create a replacement producer.
    pub kafka: KafkaArgs,
    pub instance: String,
    pub config: Config,
    pub transactional_id: String,
    pub consumer: StreamConsumer<PaymentContext>,
    pub producer: FutureProducer<ClientLog>,
    pub batch: Arc<Mutex<Batch>>,
    pub metrics: Arc<ServiceMetrics>,
    pub heartbeats: Heartbeats,
    pub health: Health,
    /// The decision settings in force (mirrored in `metrics` for the heartbeat).
    pub settings: DecisionSettings,
    /// When shutdown began, which bounds how long the drain may retry.
    pub draining_since: Option<Instant>,
    /// When the newest transaction began (kept after the batch is cleared): tells a
    /// producer fenced by the broker's abort of a timed-out transaction from one fenced by
    /// another incarnation (see `replace_producer`).
    pub transaction_began: Option<Instant>,
}

/// What woke the loop.
enum Event {
    Order(Processed),
    ConsumeError(KafkaError),
    Commit,
    Control,
    ControlClosed,
    Resume,
}

/// What to do about a failed transaction step.
enum Fate {
    Retry,
    Abort,
    Fatal,
}

/// The outcome of handing one record to the producer.
enum Queued {
    Sent(DeliveryFuture),
    /// Shutdown began while waiting for room in the producer's queue; not sent.
    ShuttingDown,
    Refused(KafkaError),
}

impl Worker {
    /// Runs until `shutdown`, then commits (or aborts) the open batch and returns.
    pub async fn run(
        mut self,
        mut control: watch::Receiver<Option<ControlRecord>>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        self.apply_control(&mut control);
        let mut control_open = true;
        // The last consumer error logged, so an outage is logged once, not per retry.
        let mut last_error: Option<String> = None;
        // While set, reading pauses after a consumer error.
        let mut paused_until: Option<tokio::time::Instant> = None;
        // An order the consumer already held when the last one was handled.
        let mut ready: Option<Event> = None;
        loop {
            let deadline = self.deadline();
            let settings = self.settings;
            let event = if let Some(event) = ready.take() {
                event
            } else {
                tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                changed = control.changed(), if control_open => match changed {
                    Ok(()) => Event::Control,
                    Err(_) => Event::ControlClosed,
                },
                () = sleep_until(deadline), if deadline.is_some() => Event::Commit,
                () = sleep_until(paused_until), if paused_until.is_some() => Event::Resume,
                received = self.consumer.recv(), if paused_until.is_none() => match received {
                    Ok(message) => Event::Order(process(&message, settings, SystemTime::now())),
                    Err(error) => Event::ConsumeError(error),
                },
                }
            };
            let broken = self.lock().broken.take();
            if let Some(reason) = broken {
                // The callback forgot the batch; the new assignment starts from the
                // committed offsets, so only the producer needs replacing.
                warn!(%reason, "replacing the producer after a failed abort at revocation");
                if !self.replace_producer(&shutdown).await? {
                    break;
                }
            }
            match event {
                Event::Order(processed) => {
                    if last_error.take().is_some() {
                        info!(topic = %self.config.orders_topic, "reading orders again");
                    }
                    if !self.handle(processed, &shutdown).await? {
                        break;
                    }
                    ready = self.next_ready(&control, &shutdown);
                }
                // A revocation may have ended the batch after its deadline was taken.
                Event::Commit if self.lock().is_open() => self.finish(&shutdown).await?,
                Event::Commit => {}
                Event::Control => self.apply_control(&mut control),
                // The follower stops only at shutdown; keep the settings in force.
                Event::ControlClosed => control_open = false,
                Event::Resume => paused_until = None,
                Event::ConsumeError(error) => {
                    if let KafkaError::MessageConsumptionFatal(_) = error {
                        return Err(Error::Consumer {
                            group: self.config.group_id.clone(),
                            source: Box::new(error),
                        });
                    }
                    // librdkafka reconnects by itself, backing off up to
                    // `reconnect.backoff.max.ms`, and reports each failure once: these
                    // errors are news, not a reason to stop reading (its queue may still
                    // hold orders and more errors). The short pause only guards against
                    // a storm of errors becoming a busy loop.
                    let text = error.to_string();
                    if last_error.as_deref() != Some(text.as_str()) {
                        warn!(topic = %self.config.orders_topic, %error, "reading orders failed; librdkafka retries");
                        last_error = Some(text);
                    } else {
                        debug!(topic = %self.config.orders_topic, %error, "reading orders failed again");
                    }
                    paused_until = Some(tokio::time::Instant::now() + CONSUME_ERROR_PAUSE);
                }
            }
        }
        self.drain(&shutdown).await
    }

    /// The next order when the consumer already holds one and nothing of higher priority
    /// (shutdown, a control record, the batch's deadline) is waiting: during a backlog the
    /// loop then goes through the `select!` (a timer, a cancellation waiter and a consumer
    /// waker registered and dropped each time, which cost more than the order's own work)
    /// only when the consumer's queue runs dry.
    fn next_ready(
        &self,
        control: &watch::Receiver<Option<ControlRecord>>,
        shutdown: &CancellationToken,
    ) -> Option<Event> {
        let due = self
            .deadline()
            .is_some_and(|deadline| deadline <= tokio::time::Instant::now());
        if shutdown.is_cancelled() || matches!(control.has_changed(), Ok(true)) || due {
            return None;
        }
        Some(match self.consumer.recv().now_or_never()? {
            Ok(message) => Event::Order(process(&message, self.settings, SystemTime::now())),
            Err(error) => Event::ConsumeError(error),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Batch> {
        self.batch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the open batch is due.
    fn deadline(&self) -> Option<tokio::time::Instant> {
        let started = self.lock().started?;
        Some((started + self.config.transaction_interval()).into())
    }

    /// Applies the latest control record, if it changes what is in force.
    fn apply_control(&mut self, control: &mut watch::Receiver<Option<ControlRecord>>) {
        let Some(record) = control.borrow_and_update().clone() else {
            return;
        };
        let applied = Applied {
            generation: Some(record.generation),
            settings: DecisionSettings {
                failure_ratio: record.payment_failure_ratio,
                seed: record.seed,
            },
        };
        if self.metrics.applied() == applied {
            return;
        }
        self.settings = applied.settings;
        self.metrics.set_applied(applied);
        info!(
            generation = record.generation,
            payment_failure_ratio = record.payment_failure_ratio,
            seed = record.seed,
            "applied control record"
        );
        self.heartbeats.publish_now();
    }

    /// Sends the record of one order in the open batch (opening one if needed). Returns
    /// `false` when shutdown began before the record could be queued.
    async fn handle(&mut self, processed: Processed, shutdown: &CancellationToken) -> Result<bool> {
        if !self.lock().is_open() {
            self.begin()?;
        }
        self.lock().touch(processed.partition, processed.offset);
        let destination = processed.record.destination;
        match self.send_or_strip(processed.record, shutdown).await {
            Queued::Sent(delivery) => {
                let mut batch = self.lock();
                batch.sent(processed.partition, processed.offset, processed.outcome);
                if self.config.delivery == Delivery::AtLeastOnce {
                    batch.deliveries.push(delivery);
                }
                drop(batch);
                if let Some(latency) = processed.latency {
                    self.metrics.observe_latency(latency);
                }
                Ok(true)
            }
            Queued::ShuttingDown => Ok(false),
            Queued::Refused(error) => {
                if let Some((code, reason)) = self.producer.client().fatal_error() {
                    // The rewind covers this order too (it was touched).
                    let error = Error::ProducerFatal {
                        transactional_id: self.transactional_id.clone(),
                        code,
                        reason,
                    };
                    self.replace_and_rewind(error, shutdown).await?;
                    return Ok(true);
                }
                match self.config.delivery {
                    // Typically the transaction is in an abortable state after broker
                    // trouble; the rewind covers this order too (it was touched).
                    Delivery::ExactlyOnce => {
                        warn!(%error, "record refused; aborting the transaction and replaying it");
                        self.abort_and_rewind(shutdown).await?;
                        Ok(true)
                    }
                    Delivery::AtLeastOnce => Err(Error::Produce {
                        topic: self.topic(destination).to_owned(),
                        source: Box::new(error),
                    }),
                }
            }
        }
    }

    fn begin(&mut self) -> Result<()> {
        if self.config.delivery == Delivery::ExactlyOnce {
            self.producer
                .begin_transaction()
                .map_err(|e| self.transaction_error("beginning a transaction", e))?;
            self.transaction_began = Some(Instant::now());
        }
        self.lock().started = Some(Instant::now());
        Ok(())
    }

    fn topic(&self, destination: Destination) -> &str {
        match destination {
            Destination::Payments => &self.config.payments_topic,
            Destination::DeadLetters => &self.config.dlq_topic,
        }
    }

    /// Queues one record, waiting (never dropping) while the producer's queue is full.
    /// Takes the record by value so its headers move into librdkafka's message instead
    /// of being copied.
    async fn send(&self, record: Outgoing, shutdown: &CancellationToken) -> Queued {
        let Outgoing {
            destination,
            key,
            value,
            headers,
        } = record;
        let mut pending = FutureRecord::to(self.topic(destination))
            .payload(value.as_slice())
            .headers(headers);
        if let Some(key) = &key {
            pending = pending.key(key.as_slice());
        }
        loop {
            match self.producer.send_result(pending) {
                Ok(delivery) => return Queued::Sent(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    pending = back;
                    tokio::select! {
                        () = shutdown.cancelled() => return Queued::ShuttingDown,
                        () = tokio::time::sleep(QUEUE_FULL_PAUSE) => {}
                    }
                }
                Err((error, _)) => return Queued::Refused(error),
            }
        }
    }

    /// Like `send`, but a dead letter too large for the producer is sent again without
    /// the original key, value and headers, so a hostile message cannot block its
    /// partition.
    async fn send_or_strip(&self, record: Outgoing, shutdown: &CancellationToken) -> Queued {
        if record.destination == Destination::Payments {
            return self.send(record, shutdown).await;
        }
        let stripped = record.stripped();
        match self.send(record, shutdown).await {
            Queued::Refused(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageSizeTooLarge,
            )) => {
                warn!(topic = %self.config.dlq_topic, "dead letter too large; sending it without the original message");
                self.send(stripped, shutdown).await
            }
            queued => queued,
        }
    }

    /// Commits the open batch.
    async fn finish(&mut self, shutdown: &CancellationToken) -> Result<()> {
        match self.config.delivery {
            Delivery::ExactlyOnce => self.commit_transaction(shutdown).await,
            Delivery::AtLeastOnce => self.commit_acknowledged(shutdown).await,
        }
    }

    /// Exactly once: the batch's offsets join its transaction, which is then committed.
    async fn commit_transaction(&mut self, shutdown: &CancellationToken) -> Result<()> {
        let (offsets, counts) = {
            let batch = self.lock();
            let offsets = batch
                .offsets(&self.config.orders_topic)
                .map_err(|e| self.transaction_error("listing the offsets", e))?;
            (offsets, batch.counts.clone())
        };
        let group = self
            .consumer
            .group_metadata()
            .ok_or_else(|| Error::NoGroupMetadata {
                group: self.config.group_id.clone(),
            })?;
        let mut offsets_sent = offsets.count() == 0;
        let mut backoff = retry::pauses();
        let started = Instant::now();
        self.await_acknowledgements().await;
        loop {
            let producer = &self.producer;
            let result = blocking(|| {
                if !offsets_sent {
                    producer.send_offsets_to_transaction(&offsets, &group, CALL_TIMEOUT)?;
                    offsets_sent = true;
                }
                producer.commit_transaction(CALL_TIMEOUT)
            });
            let error = match result {
                Ok(()) => {
                    self.metrics.committed(&counts);
                    self.lock().clear();
                    debug!(
                        orders = counts.total(),
                        took_ms = started.elapsed().as_millis(),
                        "transaction committed"
                    );
                    return Ok(());
                }
                Err(error) => error,
            };
            match fate(&error) {
                Fate::Fatal => {
                    let error = self.transaction_error("committing", error);
                    return self.replace_and_rewind(error, shutdown).await;
                }
                Fate::Retry if !self.drain_expired(shutdown) => {
                    let delay = retry::next_pause(&mut backoff);
                    warn!(%error, retry_in = ?delay, "committing the transaction failed; retrying");
                    pause(delay, shutdown).await;
                }
                Fate::Retry | Fate::Abort => {
                    warn!(%error, "committing the transaction failed; aborting and replaying its orders");
                    return self.abort_and_rewind(shutdown).await;
                }
            }
        }
    }

    /// Waits (without blocking the runtime) until the producer has no record in flight,
    /// or `CALL_TIMEOUT` has passed. `commit_transaction` flushes by itself, but through
    /// rdkafka's `flush`, which with a `FutureProducer` (whose thread takes the delivery
    /// events) sleeps 100 ms whenever a record is still in flight: that doubled the
    /// transaction cycle.
    async fn await_acknowledgements(&self) {
        let deadline = Instant::now() + CALL_TIMEOUT;
        while self.producer.in_flight_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(ACK_POLL).await;
        }
    }

    /// Aborts the open transaction and rewinds the consumer to the batch's first offsets,
    /// so its orders are processed again.
    async fn abort_and_rewind(&mut self, shutdown: &CancellationToken) -> Result<()> {
        let mut backoff = retry::pauses();
        let aborted_here = loop {
            let producer = &self.producer;
            match blocking(|| producer.abort_transaction(CALL_TIMEOUT)) {
                Ok(()) => break true,
                // The rebalance callback aborted it already (partitions were revoked) and
                // counted it.
                Err(error) if no_open_transaction(&error) => {
                    debug!("transaction already aborted by a rebalance");
                    break false;
                }
                Err(error) => match fate(&error) {
                    // Nothing of the batch was committed: a new producer aborts it for good.
                    Fate::Fatal => {
                        warn!(%error, "aborting the transaction failed fatally; replacing the producer");
                        if !self.replace_producer(shutdown).await? {
                            self.lock().clear();
                            return Ok(());
                        }
                        break false;
                    }
                    _ if self.drain_expired(shutdown) => {
                        // Shutting down without a broker: the broker aborts the
                        // transaction when it times out, and nothing was committed.
                        warn!(%error, "transaction not aborted at shutdown; the broker will time it out");
                        self.lock().clear();
                        return Ok(());
                    }
                    _ => {
                        let delay = retry::next_pause(&mut backoff);
                        warn!(%error, retry_in = ?delay, "aborting the transaction failed; retrying");
                        pause(delay, shutdown).await;
                    }
                },
            }
        };
        if aborted_here {
            self.metrics.transactions_aborted.inc();
        }
        self.rewind(shutdown)
    }

    /// After a fatal producer error with a batch open (`error`, logged): replaces the
    /// producer and rewinds the batch's partitions to the committed offsets, so its orders
    /// are processed again. Not to the batch's first offsets: a commit that failed fatally
    /// may still have completed at the coordinator, and the new producer's
    /// `init_transactions` waits for that; the committed offsets then say what counted.
    async fn replace_and_rewind(
        &mut self,
        error: Error,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        warn!(%error, "the producer failed fatally; replacing it and processing the open batch again");
        if !self.replace_producer(shutdown).await? {
            self.lock().clear();
            return Ok(());
        }
        self.metrics.transactions_aborted.inc();
        self.rewind_to_committed(shutdown).await
    }

    /// Replaces a transactional producer that turned fatal with a new one under the same
    /// transactional id: its `init_transactions` fences the old producer and aborts the
    /// transaction it left open (or waits for the commit in progress). A producer fenced
    /// while its transaction was younger than the transaction timeout was fenced by
    /// another producer with the same transactional id, which owns the id: it is not
    /// replaced, and the loop stops instead. Older, the fencing is the broker's own abort
    /// of the timed-out transaction (it bumps the epoch), and the producer is replaced.
    /// Returns `false` when shutdown came first.
    async fn replace_producer(&mut self, shutdown: &CancellationToken) -> Result<bool> {
        let timed_out = self
            .transaction_began
            .is_some_and(|began| began.elapsed() >= TRANSACTION_TIMEOUT);
        if let Some((code, reason)) = self.producer.client().fatal_error()
            && matches!(
                code,
                RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch
            )
            && !timed_out
        {
            return Err(Error::ProducerFatal {
                transactional_id: self.transactional_id.clone(),
                code,
                reason,
            });
        }
        let producer = clients::producer(&self.kafka, &self.config, &self.instance)?;
        let initialised =
            crate::init_transactions(&producer, &self.transactional_id, shutdown, &self.health);
        if !initialised.await? {
            return Ok(false);
        }
        *self
            .consumer
            .context()
            .producer
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = producer.clone();
        let old = std::mem::replace(&mut self.producer, producer);
        // Dropping the last handle destroys the client, which waits for its threads.
        blocking(move || drop(old));
        self.metrics.producers_replaced.inc();
        info!(transactional_id = %self.transactional_id, "producer replaced");
        Ok(true)
    }

    /// Seeks every partition of the batch back to its first offset and forgets the batch.
    fn rewind(&mut self, shutdown: &CancellationToken) -> Result<()> {
        let points = {
            let mut batch = self.lock();
            let points = batch.rewind_points();
            batch.clear();
            points
        };
        if shutdown.is_cancelled() {
            // Nothing more is read; the next owner starts from the committed offsets.
            return Ok(());
        }
        let topic = &self.config.orders_topic;
        for (partition, offset) in points {
            blocking(|| {
                self.consumer
                    .seek(topic, partition, Offset::Offset(offset), CALL_TIMEOUT)
            })
            .map_err(|source| Error::Seek {
                topic: topic.clone(),
                partition,
                offset,
                source: Box::new(source),
            })?;
        }
        Ok(())
    }

    /// Seeks every partition of the batch back to the group's committed offset (the
    /// batch's first offset where the group has none) and forgets the batch.
    async fn rewind_to_committed(&mut self, shutdown: &CancellationToken) -> Result<()> {
        let points = {
            let mut batch = self.lock();
            let points = batch.rewind_points();
            batch.clear();
            points
        };
        if points.is_empty() || shutdown.is_cancelled() {
            return Ok(());
        }
        let topic = self.config.orders_topic.clone();
        let mut wanted = rdkafka::TopicPartitionList::new();
        for (partition, _) in &points {
            wanted.add_partition(&topic, *partition);
        }
        let mut backoff = retry::pauses();
        let committed = loop {
            let consumer = &self.consumer;
            match blocking(|| consumer.committed_offsets(wanted.clone(), CALL_TIMEOUT)) {
                Ok(committed) => break committed,
                Err(error) => {
                    let delay = retry::next_pause(&mut backoff);
                    warn!(%error, retry_in = ?delay, "reading the committed offsets failed; retrying");
                    pause(delay, shutdown).await;
                    if shutdown.is_cancelled() {
                        return Ok(());
                    }
                }
            }
        };
        // Partitions lost meanwhile (a session that timed out during the outage) start
        // from the committed offsets when assigned again; only the held ones are sought.
        let assigned = self.consumer.assignment().unwrap_or_default();
        let mut batch = self.lock();
        for (partition, first) in points {
            if assigned.find_partition(&topic, partition).is_none() {
                continue;
            }
            let offset = match committed
                .find_partition(&topic, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(at)) => at,
                _ => first,
            };
            debug!(partition, offset, "rewinding to the committed offset");
            batch.touch(partition, offset);
        }
        drop(batch);
        self.rewind(shutdown)
    }

    /// At least once: wait for the batch's payments to be acknowledged, then commit the
    /// offsets. A batch with an unacknowledged payment is replayed.
    async fn commit_acknowledged(&mut self, shutdown: &CancellationToken) -> Result<()> {
        let (deliveries, offsets, counts) = {
            let mut batch = self.lock();
            let offsets =
                batch
                    .offsets(&self.config.orders_topic)
                    .map_err(|source| Error::Consumer {
                        group: self.config.group_id.clone(),
                        source: Box::new(source),
                    })?;
            (
                std::mem::take(&mut batch.deliveries),
                offsets,
                batch.counts.clone(),
            )
        };
        let failed = futures::future::join_all(deliveries)
            .await
            .into_iter()
            .filter(|delivery| !matches!(delivery, Ok(Ok(_))))
            .count();
        if failed > 0 {
            warn!(failed, "payments not acknowledged; replaying the batch");
            self.metrics.transactions_aborted.inc();
            return self.rewind(shutdown);
        }
        self.metrics.committed(&counts);
        let consumer = &self.consumer;
        match blocking(|| consumer.commit(&offsets, CommitMode::Sync)) {
            Ok(()) => self.lock().clear(),
            Err(error) => {
                // The payments are written; keep the offsets and try again with the
                // next batch (a crash before that only repeats payments).
                warn!(%error, "committing offsets failed; retrying with the next batch");
                let mut batch = self.lock();
                batch.counts = Default::default();
                batch.started = Some(Instant::now());
            }
        }
        Ok(())
    }

    /// Whether shutdown has spent its time: from then on, failures are given up on.
    fn drain_expired(&mut self, shutdown: &CancellationToken) -> bool {
        if !shutdown.is_cancelled() {
            return false;
        }
        let since = *self.draining_since.get_or_insert_with(Instant::now);
        since.elapsed() > DRAIN_TIMEOUT
    }

    /// Shutdown: commit the open batch, flush, leave the group.
    async fn drain(mut self, shutdown: &CancellationToken) -> Result<()> {
        self.draining_since.get_or_insert_with(Instant::now);
        self.health.set_ready(false, "shutting down");
        {
            let mut batch = self.lock();
            batch.closing = true;
        }
        if self.lock().is_open() {
            info!("committing the open batch before exiting");
            // Exactly once, the commit's own retries stop at DRAIN_TIMEOUT; at least
            // once, this bounds the wait for acknowledgements. Either way nothing is
            // lost: uncommitted orders are processed again by the next owner.
            let finished =
                tokio::time::timeout(DRAIN_TIMEOUT + CALL_TIMEOUT, self.finish(shutdown));
            match finished.await {
                Ok(result) => result?,
                Err(_) => {
                    warn!("open batch not committed in time; its orders will be processed again")
                }
            }
        }
        let Worker {
            consumer, producer, ..
        } = self;
        blocking(move || {
            // Leaving the group hands the partitions over at once, instead of after the
            // session timeout.
            drop(consumer);
            if let Err(error) = producer.flush(CALL_TIMEOUT) {
                warn!(%error, "producer not flushed at shutdown");
            }
        });
        info!("payment-service stopped");
        Ok(())
    }

    fn transaction_error(&self, doing: &'static str, source: KafkaError) -> Error {
        Error::Transaction {
            transactional_id: self.transactional_id.clone(),
            doing,
            source: Box::new(source),
        }
    }
}

impl Outgoing {
    /// This dead letter without the original key, value and headers: only the error.
    fn stripped(&self) -> Outgoing {
        let mut headers = OwnedHeaders::new();
        for header in self.headers.iter() {
            if header.key.starts_with("x-shopstream-") {
                headers = headers.insert(Header {
                    key: header.key,
                    value: header.value,
                });
            }
        }
        Outgoing {
            destination: self.destination,
            key: None,
            value: Vec::new(),
            headers,
        }
    }
}

/// Classifies a failed transaction step (librdkafka's retriable / abortable / fatal).
fn fate(error: &KafkaError) -> Fate {
    match error {
        KafkaError::Transaction(e) if e.is_fatal() => Fate::Fatal,
        KafkaError::Transaction(e) if e.txn_requires_abort() => Fate::Abort,
        KafkaError::Transaction(e) if e.is_retriable() => Fate::Retry,
        // `commit_transaction` flushes first; a flush that times out is retried.
        KafkaError::Flush(_) => Fate::Retry,
        _ => Fate::Abort,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Sleeps `delay`, or less when shutdown begins meanwhile (so the drain starts early).
async fn pause(delay: Duration, shutdown: &CancellationToken) {
    if shutdown.is_cancelled() {
        tokio::time::sleep(delay).await;
        return;
    }
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(delay) => {}
    }
}
