//! Whether every order got exactly one payment. Pure: `shopctl audit` reads the order ids
//! of both topics from Kafka ([`crate::ops::audit`]) and this module decides; printing is
//! [`crate::format::audited`].
//!
//! An audit compares two multisets of order ids, the orders read and the payments read,
//! and finds three kinds of problem:
//!
//! - an order **without a payment** (payment-service skipped or lost it, or it is still in
//!   flight: audit a drained pipeline);
//! - **duplicate payments**: every payment of an order beyond its first (a transaction
//!   that was not exactly-once);
//! - payments for **unknown orders**: a payment whose order id is not among the orders
//!   read (written by something else, or its order is gone from the orders topic).
//!
//! The three are disjoint: payments of unknown orders are counted only there, never as
//! duplicates. An order id that appears twice on the orders topic is one order; it is
//! reported, but does not fail the audit (payment-service gets to pay it once).
//!
//! [`Ends`] is the other half of "after the fact": it decides which records lie before
//! the end offsets taken at the start, so records written while the audit runs are left
//! out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How many order ids each problem lists.
pub const EXAMPLES: usize = 10;

/// What was read from one topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Read {
    /// The order id of each record that parsed, in the order read.
    pub order_ids: Vec<u64>,
    /// Records that did not parse (not JSON, invalid fields, no value); not in
    /// `order_ids`.
    pub unparsable: u64,
    /// Offsets between where reading stopped and the topic's end as of the start; 0 when
    /// every partition was read to its end.
    pub offsets_left: u64,
}

impl Read {
    /// Counts a record that parsed.
    pub fn add(&mut self, order_id: u64) {
        self.order_ids.push(order_id);
    }

    /// Counts a record that did not parse.
    pub fn skip(&mut self) {
        self.unparsable += 1;
    }

    /// Whether the topic was read to its end.
    pub fn reached_end(&self) -> bool {
        self.offsets_left == 0
    }
}

/// The counts of one topic, as printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Records that parsed.
    pub records: u64,
    /// Records that did not.
    pub unparsable: u64,
    /// Offsets not read before the timeout (0 when read to the end).
    pub offsets_left: u64,
}

impl From<&Read> for Tally {
    fn from(read: &Read) -> Tally {
        Tally {
            records: read.order_ids.len() as u64,
            unparsable: read.unparsable,
            offsets_left: read.offsets_left,
        }
    }
}

/// One kind of problem: how often it occurred and the first order ids it occurred for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problem {
    /// How many: orders without a payment, payments beyond the first of an order, or
    /// payments of unknown orders.
    pub count: u64,
    /// How many distinct order ids have the problem.
    pub orders: u64,
    /// Up to [`EXAMPLES`] of those order ids, smallest first, each with its number of
    /// payments.
    pub examples: Vec<(u64, u64)>,
}

impl Problem {
    fn add(&mut self, order_id: u64, payments: u64, count: u64) {
        self.count += count;
        self.orders += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push((order_id, payments));
        }
    }
}

/// The problems found in two topics read to their ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    pub without_payment: Problem,
    pub duplicates: Problem,
    pub unknown: Problem,
    /// Order records whose order id was read before (not a failure).
    pub repeated_orders: u64,
}

impl Findings {
    /// Whether every order got exactly one payment and every payment has an order.
    pub fn clean(&self) -> bool {
        self.without_payment.count == 0 && self.duplicates.count == 0 && self.unknown.count == 0
    }
}

/// How an audit ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Both topics were read to their ends.
    Audited(Findings),
    /// The timeout passed first; nothing is concluded from a partial read.
    TimedOut,
}

/// An audit: what was read from each topic and what it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub orders: Tally,
    pub payments: Tally,
    /// The `--timeout` it ran with.
    pub timeout: Duration,
    pub outcome: Outcome,
}

impl Report {
    /// Whether the pipeline passed: both topics read, exactly one payment per order.
    pub fn passed(&self) -> bool {
        matches!(&self.outcome, Outcome::Audited(findings) if findings.clean())
    }
}

/// Audits what was read from the orders and payments topics. When either was not read to
/// its end the outcome is [`Outcome::TimedOut`]: an order whose payment lies in the unread
/// part would show as without a payment.
pub fn judge(orders: &Read, payments: &Read, timeout: Duration) -> Report {
    let outcome = if orders.reached_end() && payments.reached_end() {
        Outcome::Audited(find(orders, payments))
    } else {
        Outcome::TimedOut
    };
    Report {
        orders: orders.into(),
        payments: payments.into(),
        timeout,
        outcome,
    }
}

fn find(orders: &Read, payments: &Read) -> Findings {
    let order_ids: BTreeSet<u64> = orders.order_ids.iter().copied().collect();
    let mut paid: BTreeMap<u64, u64> = BTreeMap::new();
    for &order_id in &payments.order_ids {
        *paid.entry(order_id).or_default() += 1;
    }
    let mut findings = Findings {
        repeated_orders: (orders.order_ids.len() - order_ids.len()) as u64,
        ..Findings::default()
    };
    for &order_id in &order_ids {
        match paid.get(&order_id).copied().unwrap_or(0) {
            0 => findings.without_payment.add(order_id, 0, 1),
            1 => {}
            n => findings.duplicates.add(order_id, n, n - 1),
        }
    }
    for (&order_id, &n) in &paid {
        if !order_ids.contains(&order_id) {
            findings.unknown.add(order_id, n, n);
        }
    }
    findings
}

/// Where reading one topic stands: per partition, the next offset to read and the end
/// offset as of the start of the audit.
///
/// With isolation.level=read_committed the end is the partition's last stable offset:
/// records of a transaction still open at the start lie beyond it. Records of aborted
/// transactions and transaction markers are never delivered, so the last offset before
/// the end may never be seen; a partition is also done when the consumer reports reaching
/// the current end (partition EOF), which is never before the end taken at the start, or
/// when a record beyond that end arrives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ends {
    partitions: BTreeMap<i32, Position>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    next: i64,
    end: i64,
}

impl Ends {
    /// Adds a partition whose records lie in `low..high` (its watermarks at the start).
    pub fn add(&mut self, partition: i32, low: i64, high: i64) {
        self.partitions.insert(
            partition,
            Position {
                next: low,
                end: high.max(low),
            },
        );
    }

    /// The partitions that have records to read.
    pub fn pending(&self) -> impl Iterator<Item = i32> + '_ {
        self.partitions
            .iter()
            .filter(|(_, position)| position.next < position.end)
            .map(|(&partition, _)| partition)
    }

    /// Notes a record at `offset` of `partition`; whether it lies before the end and so
    /// counts.
    pub fn record(&mut self, partition: i32, offset: i64) -> bool {
        let Some(position) = self.partitions.get_mut(&partition) else {
            return false;
        };
        if offset >= position.end {
            position.next = position.end;
            false
        } else {
            position.next = position.next.max(offset + 1);
            true
        }
    }

    /// Notes that the consumer reached the current end of `partition`.
    pub fn reached_end(&mut self, partition: i32) {
        if let Some(position) = self.partitions.get_mut(&partition) {
            position.next = position.end;
        }
    }

    /// Whether every partition was read to its end.
    pub fn done(&self) -> bool {
        self.pending().next().is_none()
    }

    /// Offsets not yet read, summed over the partitions.
    pub fn left(&self) -> u64 {
        self.partitions
            .values()
            .map(|position| (position.end - position.next).max(0) as u64)
            .sum()
    }

    /// The end offset of each partition, for the log.
    pub fn end_offsets(&self) -> BTreeMap<i32, i64> {
        self.partitions
            .iter()
            .map(|(&partition, position)| (partition, position.end))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(120);

    fn read(order_ids: impl IntoIterator<Item = u64>) -> Read {
        Read {
            order_ids: order_ids.into_iter().collect(),
            ..Read::default()
        }
    }

    fn findings(report: &Report) -> &Findings {
        match &report.outcome {
            Outcome::Audited(findings) => findings,
            Outcome::TimedOut => panic!("timed out: {report:?}"),
        }
    }

    #[test]
    fn one_payment_per_order_passes_in_any_order() {
        let report = judge(&read(1..=1000), &read((1..=1000).rev()), TIMEOUT);
        assert!(report.passed(), "{report:?}");
        assert_eq!(findings(&report), &Findings::default());
        assert_eq!(report.orders.records, 1000);
        assert_eq!(report.payments.records, 1000);
    }

    #[test]
    fn nothing_to_audit_passes() {
        assert!(judge(&Read::default(), &Read::default(), TIMEOUT).passed());
    }

    #[test]
    fn a_second_payment_is_a_duplicate_of_its_order() {
        let report = judge(&read(1..=5), &read([1, 2, 3, 3, 4, 5, 5, 5]), TIMEOUT);
        assert!(!report.passed());
        let found = findings(&report);
        assert_eq!(
            found.duplicates,
            Problem {
                count: 3,
                orders: 2,
                examples: vec![(3, 2), (5, 3)],
            }
        );
        assert_eq!(found.without_payment, Problem::default());
        assert_eq!(found.unknown, Problem::default());
    }

    #[test]
    fn an_order_without_a_payment_fails() {
        let report = judge(&read(1..=5), &read([1, 2, 4]), TIMEOUT);
        assert!(!report.passed());
        assert_eq!(
            findings(&report).without_payment,
            Problem {
                count: 2,
                orders: 2,
                examples: vec![(3, 0), (5, 0)],
            }
        );
    }

    #[test]
    fn payments_of_unknown_orders_fail_and_are_not_duplicates() {
        let report = judge(&read([1, 2]), &read([1, 2, 99, 99, 7]), TIMEOUT);
        assert!(!report.passed());
        let found = findings(&report);
        assert_eq!(
            found.unknown,
            Problem {
                count: 3,
                orders: 2,
                examples: vec![(7, 1), (99, 2)],
            }
        );
        assert_eq!(found.duplicates, Problem::default());
    }

    #[test]
    fn examples_are_the_smallest_ids_and_counts_cover_all() {
        let report = judge(&read(1..=100), &read(51..=100), TIMEOUT);
        let without = &findings(&report).without_payment;
        assert_eq!((without.count, without.orders), (50, 50));
        assert_eq!(
            without.examples,
            (1..=10).map(|id| (id, 0)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_repeated_order_is_one_order_and_does_not_fail() {
        let report = judge(&read([1, 2, 2, 3]), &read([1, 2, 3]), TIMEOUT);
        assert!(report.passed(), "{report:?}");
        assert_eq!(findings(&report).repeated_orders, 1);
        assert_eq!(report.orders.records, 4);
    }

    #[test]
    fn a_topic_not_read_to_its_end_is_a_timeout_not_a_verdict() {
        let orders = read(1..=10);
        let payments = Read {
            offsets_left: 4,
            unparsable: 1,
            ..read(1..=6)
        };
        let report = judge(&orders, &payments, TIMEOUT);
        assert_eq!(report.outcome, Outcome::TimedOut);
        assert!(!report.passed());
        assert_eq!(
            report.payments,
            Tally {
                records: 6,
                unparsable: 1,
                offsets_left: 4
            }
        );
    }

    #[test]
    fn reads_count_records_and_unparsable_ones_apart() {
        let mut read = Read::default();
        read.add(3);
        read.skip();
        read.add(1);
        assert_eq!(
            Tally::from(&read),
            Tally {
                records: 2,
                unparsable: 1,
                offsets_left: 0
            }
        );
        assert_eq!(read.order_ids, [3, 1]);
    }

    #[test]
    fn records_before_the_end_count_and_the_rest_do_not() {
        let mut ends = Ends::default();
        ends.add(0, 0, 3);
        ends.add(1, 5, 5); // empty (or emptied by retention)
        assert_eq!(ends.pending().collect::<Vec<_>>(), [0]);
        assert_eq!(ends.left(), 3);
        assert!(ends.record(0, 0));
        assert!(ends.record(0, 1));
        assert!(!ends.done());
        // Offset 2 is a commit marker, never delivered; offset 3 was written later.
        assert!(!ends.record(0, 3));
        assert!(ends.done());
        assert_eq!(ends.left(), 0);
        assert!(!ends.record(7, 0), "not a partition of this topic");
    }

    #[test]
    fn the_last_record_before_the_end_or_reaching_the_end_finishes_a_partition() {
        let mut ends = Ends::default();
        ends.add(0, 10, 12);
        ends.add(1, 0, 100);
        assert!(ends.record(0, 11));
        assert_eq!(ends.pending().collect::<Vec<_>>(), [1]);
        assert!(ends.record(1, 40));
        assert_eq!(ends.left(), 59);
        // Everything after offset 40 was aborted: the consumer reports the end.
        ends.reached_end(1);
        assert!(ends.done());
        assert_eq!(ends.end_offsets(), BTreeMap::from([(0, 12), (1, 100)]));
    }
}
