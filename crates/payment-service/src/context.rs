//! Callbacks of the orders consumer: consumer lag from the client's statistics, and the
//! rebalance rule that keeps payments exactly-once. librdkafka's logs go through
//! `shop_kafka`'s shared `ClientLog`, as for every client.
//!
//! # Rebalances
//!
//! When partitions are revoked, the open transaction may hold payments and offsets of
//! them. Committing it after the new owner started would pay those orders twice, so the
//! callback ends it before the partitions are given up. It *aborts* rather than commits:
//! an abort cannot fail because of the group's state, and the cost is small (at most one
//! transaction interval of work is redone by the new owner, which starts from the last
//! committed offset). The consumer uses the eager assignment strategies (every partition is
//! revoked at each rebalance), so after the abort no retained partition needs a rewind:
//! the next assignment starts every partition from its committed offset.
//!
//! The abort can fail for good: right after a commit the coordinator may still be
//! completing it and answer the new transaction's AddPartitionsToTxn with
//! CONCURRENT_TRANSACTIONS; librdkafka counts that request as sent, so the abort sends
//! EndTxn for a transaction the coordinator never opened, gets INVALID_TXN_STATE, and the
//! producer turns fatal. The callback then leaves the batch marked `broken`, and the worker
//! replaces the producer: `init_transactions` with the same transactional id fences the old
//! one and aborts whatever it left open, so nothing of the batch is ever committed.
//!
//! At least once, the open batch is simply forgotten: its payments may already be
//! written, and the new owner writes them again, which that mode allows.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::statistics::Statistics;
use shop_kafka::context::ClientLog;
use shop_runtime::Health;
use shop_runtime::retry::{BlockingRetryable, ConstantBuilder};
use tracing::{debug, info, warn};

use crate::batch::Batch;
use crate::calls::{CALL_TIMEOUT, blocking, no_open_transaction};
use crate::config::Delivery;
use crate::metrics::ServiceMetrics;

/// Context of the orders consumer.
pub(crate) struct PaymentContext {
    /// librdkafka's log lines, as every client logs them.
    pub log: ClientLog,
    pub batch: Arc<Mutex<Batch>>,
    /// The transactional producer in use, to abort the open transaction on revocation.
    /// The worker puts a new one here when it replaces a producer that turned fatal.
    pub producer: Mutex<FutureProducer<ClientLog>>,
    pub delivery: Delivery,
    pub health: Health,
    pub metrics: Arc<ServiceMetrics>,
    pub orders_topic: String,
}

impl ClientContext for PaymentContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, detail: &str) {
        self.log.log_line(level, facility, detail);
    }

    /// The same errors reach the processing loop through `recv`, which reports them.
    fn error(&self, error: KafkaError, reason: &str) {
        debug!(client = self.log.client(), %error, reason, "Kafka client error");
    }

    /// Consumer lag: the last stable offset minus the position, summed over this
    /// replica's partitions of the orders topic. (The statistics' own `consumer_lag` uses
    /// the consumer's committed offset, which transactional commits do not update.)
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.orders_topic) else {
            self.metrics.consumer_lag.set(0);
            return;
        };
        let lag: i64 = topic
            .partitions
            .values()
            .filter(|p| p.partition >= 0 && p.app_offset >= 0 && p.ls_offset >= 0)
            .map(|p| (p.ls_offset - p.app_offset).max(0))
            .sum();
        self.metrics.consumer_lag.set(lag);
    }
}

impl ConsumerContext for PaymentContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => self.revoked(partitions),
            Rebalance::Assign(partitions) => {
                let closing = self.lock().closing;
                if !closing {
                    info!(partitions = %list(partitions), "partitions assigned");
                    self.health.set_ready(true, "consuming");
                }
            }
            Rebalance::Error(error) => warn!(%error, "rebalance failed"),
        }
    }
}

impl PaymentContext {
    fn lock(&self) -> std::sync::MutexGuard<'_, Batch> {
        self.batch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn current_producer(&self) -> FutureProducer<ClientLog> {
        self.producer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn revoked(&self, partitions: &TopicPartitionList) {
        let mut batch = self.lock();
        if !batch.closing {
            info!(partitions = %list(partitions), "partitions revoked");
            self.health
                .set_ready(false, "waiting for a partition assignment (rebalancing)");
        }
        if !batch.is_open() {
            return;
        }
        match self.delivery {
            Delivery::ExactlyOnce => match abort(&self.current_producer()) {
                Ok(false) => debug!("no transaction open at revocation; the worker ended it"),
                Ok(true) => {
                    info!(
                        replayed_partitions = batch.partitions.len(),
                        "open transaction aborted before giving up partitions; \
                         their orders are processed again from the last commit"
                    );
                    self.metrics.transactions_aborted.inc();
                }
                Err(error) => {
                    warn!(%error, "cannot abort the open transaction on revocation; \
                           the producer is replaced, which aborts it");
                    batch.broken = Some(error.to_string());
                }
            },
            Delivery::AtLeastOnce => {
                info!(
                    "open batch handed over uncommitted on revocation; \
                     its orders may be paid again (at-least-once)"
                );
                self.metrics.transactions_aborted.inc();
            }
        }
        batch.clear();
    }
}

/// Aborts the open transaction, retrying a few times when the broker is slow. Returns
/// whether there was one to abort.
fn abort(producer: &FutureProducer<ClientLog>) -> Result<bool, KafkaError> {
    let mut attempt = 0;
    let aborted = (|| producer.abort_transaction(CALL_TIMEOUT))
        .retry(ABORT_RETRIES)
        .when(|e| {
            !no_open_transaction(e) && matches!(e, KafkaError::Transaction(e) if e.is_retriable())
        })
        .notify(|e, _| {
            attempt += 1;
            warn!(error = %e, attempt, "aborting the transaction failed; retrying");
        });
    match blocking(|| aborted.call()) {
        // The worker committed or aborted it a moment ago: nothing is open.
        Err(e) if no_open_transaction(&e) => Ok(false),
        result => result.map(|()| true),
    }
}

/// A rebalance waits for the abort, so it is retried only a few times, briefly.
const ABORT_RETRIES: ConstantBuilder = ConstantBuilder::new()
    .with_delay(Duration::from_millis(200))
    .with_max_times(3);

fn list(partitions: &TopicPartitionList) -> String {
    partitions
        .elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}
