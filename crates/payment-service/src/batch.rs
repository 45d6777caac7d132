//! The open batch: which input offsets its records came from, and what it counts.
//!
//! A batch is one Kafka transaction in exactly-once mode (one offset commit at least once).
//! It is shared, behind a mutex, between the processing loop and the consumer's rebalance
//! callback, because the callback must end the open transaction before partitions go to
//! another replica (see `context`). The callback runs inside `StreamConsumer::recv`, on
//! the loop's own task, so the lock is never contended; it only makes the sharing sound.

use std::collections::BTreeMap;
use std::time::Instant;

use rdkafka::error::KafkaResult;
use rdkafka::producer::DeliveryFuture;
use rdkafka::{Offset, TopicPartitionList};

use crate::metrics::Counts;
use crate::process::Outcome;

/// The input range of one partition in the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    /// The first offset read in this batch: where to rewind after an abort.
    pub first: i64,
    /// The offset after the last message whose record was sent: what to commit.
    pub next: i64,
}

/// State shared by the loop and the rebalance callback.
#[derive(Default)]
pub(crate) struct Batch {
    /// When the batch began; `None` while no batch is open.
    pub started: Option<Instant>,
    pub partitions: BTreeMap<i32, Span>,
    pub counts: Counts,
    /// At-least-once only: acknowledgements to wait for before committing offsets.
    pub deliveries: Vec<DeliveryFuture>,
    /// Set by the rebalance callback when it could not end the open transaction; the
    /// loop then replaces the producer, which fences the old one and aborts the
    /// transaction.
    pub broken: Option<String>,
    /// Set while shutting down, so the consumer's final revocation is not reported as a
    /// rebalance.
    pub closing: bool,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("started", &self.started)
            .field("partitions", &self.partitions)
            .field("counts", &self.counts)
            .field("deliveries", &self.deliveries.len())
            .field("broken", &self.broken)
            .field("closing", &self.closing)
            .finish()
    }
}

impl Batch {
    pub fn is_open(&self) -> bool {
        self.started.is_some()
    }

    /// Notes that the message at `offset` is about to be sent, so that a rewind covers it
    /// even when its partition is new to the batch.
    pub fn touch(&mut self, partition: i32, offset: i64) {
        self.partitions.entry(partition).or_insert(Span {
            first: offset,
            next: offset,
        });
    }

    /// Notes that the record for the message at `offset` was sent.
    pub fn sent(&mut self, partition: i32, offset: i64, outcome: Outcome) {
        let span = self.partitions.entry(partition).or_insert(Span {
            first: offset,
            next: offset,
        });
        span.next = span.next.max(offset + 1);
        self.counts.add(outcome);
    }

    /// The offsets to commit: the next offset to read, per partition.
    pub fn offsets(&self, topic: &str) -> KafkaResult<TopicPartitionList> {
        let mut list = TopicPartitionList::with_capacity(self.partitions.len());
        for (&partition, span) in &self.partitions {
            list.add_partition_offset(topic, partition, Offset::Offset(span.next))?;
        }
        Ok(list)
    }

    /// Where each partition must be rewound to replay the batch.
    pub fn rewind_points(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .map(|(&partition, span)| (partition, span.first))
            .collect()
    }

    /// Forgets the batch (committed, aborted, or handed over).
    pub fn clear(&mut self) {
        self.started = None;
        self.partitions.clear();
        self.counts = Counts::default();
        self.deliveries.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn commit_offsets_follow_sent_records_and_rewind_goes_to_the_first_read() {
        let mut batch = Batch::default();
        batch.touch(0, 10);
        batch.sent(0, 10, Outcome::Succeeded);
        batch.touch(0, 11);
        batch.sent(0, 11, Outcome::Failed);
        batch.touch(2, 5);
        let offsets = batch.offsets("orders").unwrap();
        let at = |p| offsets.find_partition("orders", p).unwrap().offset();
        assert_eq!(at(0), Offset::Offset(12));
        // Touched but not sent: committing would resume at the unsent message.
        assert_eq!(at(2), Offset::Offset(5));
        assert_eq!(batch.rewind_points(), [(0, 10), (2, 5)]);
        assert_eq!((batch.counts.succeeded, batch.counts.failed), (1, 1));
        batch.clear();
        assert!(batch.partitions.is_empty());
        assert!(!batch.is_open());
    }
}
