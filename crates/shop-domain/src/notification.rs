//! What notification-service prints, and how it avoids printing a payment twice.
//!
//! Lines start exactly like the seed's (`✅ Payment Successful for Order 1001`) so people
//! and scripts that knew the demo still recognise them; details the seed did not have
//! are appended after ` · ` separators and left out when the payment lacks them.
//! Payments are delivered at least once, so a payment replayed after a rebalance would
//! print again; [`RecentIds`] remembers recent order ids to drop such repeats.

use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use crate::events::{Payment, PaymentStatus};

/// The notification line for `payment`, with the end-to-end `latency` when known.
///
/// `✅ Payment Successful for Order 1001 · user 37 · $199.99 · 12 ms`, or
/// `❌ Payment Failed for Order 1002 (card_declined) · user 37 · $199.99 · 12 ms`.
pub fn format_line(payment: &Payment, latency: Option<Duration>) -> String {
    let mut line = match payment.status {
        PaymentStatus::Successful => {
            format!("✅ Payment Successful for Order {}", payment.order_id)
        }
        PaymentStatus::Failed => format!("❌ Payment Failed for Order {}", payment.order_id),
    };
    // Writing to a String cannot fail; the results are ignored for that reason.
    if let Some(reason) = payment.reason.filter(|_| !payment.is_successful()) {
        let _ = write!(line, " ({reason})");
    }
    if let Some(user_id) = payment.user_id {
        let _ = write!(line, " · user {user_id}");
    }
    if let Some(amount) = payment.amount {
        let _ = write!(line, " · {amount}");
    }
    if let Some(latency) = latency {
        let _ = write!(line, " · {}", format_latency(latency));
    }
    line
}

/// What identifies a payment record for de-duplication: a digest of its bytes. A replay
/// (the same record read again after a rebalance or restart) or a producer's duplicate has
/// the same bytes; a different payment that reuses an order id (a restarted seed-era
/// producer counts from 1000 again) differs in its user, amount, status or times, and is
/// printed.
pub fn payment_identity(value: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// Whole milliseconds, with one decimal below 10 ms where the fraction still matters.
fn format_latency(latency: Duration) -> String {
    let millis = latency.as_secs_f64() * 1000.0;
    if millis < 10.0 {
        format!("{millis:.1} ms")
    } else {
        format!("{millis:.0} ms")
    }
}

/// Remembers the last `capacity` distinct ids (of payments: [`payment_identity`]), to
/// skip repeats in O(1).
///
/// A window rather than a full set keeps memory bounded on an endless stream; replays
/// after a rebalance cover at most the uncommitted tail, which a window of a few
/// thousand ids covers.
#[derive(Debug, Clone)]
pub struct RecentIds {
    capacity: usize,
    order: VecDeque<u64>,
    seen: HashSet<u64>,
}

impl RecentIds {
    /// A window of the last `capacity` distinct ids; with 0 nothing is remembered.
    pub fn new(capacity: usize) -> RecentIds {
        RecentIds {
            capacity,
            order: VecDeque::with_capacity(capacity),
            seen: HashSet::with_capacity(capacity),
        }
    }

    /// Records `id`; `false` when it is already among the remembered ids.
    /// A repeat does not refresh an id's place: the window is first in, first out.
    pub fn insert(&mut self, id: u64) -> bool {
        if self.capacity == 0 {
            return true;
        }
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        true
    }

    /// Whether `order_id` is among the remembered ids.
    pub fn contains(&self, order_id: u64) -> bool {
        self.seen.contains(&order_id)
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The most ids remembered at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Decision, FailureReason};
    use crate::events::{Amount, Order};

    fn order(order_id: u64) -> Order {
        Order::new(
            order_id,
            37,
            Amount::from_cents(19_999),
            "2025-01-02T03:04:05.678Z".into(),
        )
    }

    fn payment(order_id: u64, decision: Decision) -> Payment {
        Payment::for_order(
            &order(order_id),
            &decision,
            "2025-01-02T03:04:05.690Z".into(),
        )
    }

    #[test]
    fn successful_payment_line_has_all_details() {
        let line = format_line(
            &payment(1001, Decision::Success),
            Some(Duration::from_millis(12)),
        );
        assert_eq!(
            line,
            "✅ Payment Successful for Order 1001 · user 37 · $199.99 · 12 ms"
        );
    }

    #[test]
    fn failed_payment_line_names_the_reason() {
        let failed = payment(1002, Decision::Failure(FailureReason::CardDeclined));
        let line = format_line(&failed, Some(Duration::from_millis(12)));
        assert_eq!(
            line,
            "❌ Payment Failed for Order 1002 (card_declined) · user 37 · $199.99 · 12 ms"
        );
    }

    #[test]
    fn seed_payment_prints_exactly_like_the_seed() {
        let success =
            Payment::parse(br#"{"order_id": 1001, "status": "payment_successful"}"#).unwrap();
        assert_eq!(
            format_line(&success, None),
            "✅ Payment Successful for Order 1001"
        );
        let failure = Payment::parse(br#"{"order_id": 1002, "status": "payment_failed"}"#).unwrap();
        assert_eq!(
            format_line(&failure, None),
            "❌ Payment Failed for Order 1002"
        );
    }

    #[test]
    fn short_latencies_keep_a_decimal() {
        let line = format_line(
            &payment(1001, Decision::Success),
            Some(Duration::from_micros(2_340)),
        );
        assert!(line.ends_with(" · 2.3 ms"), "{line}");
    }

    #[test]
    fn recent_ids_drop_repeats_within_the_window() {
        let mut recent = RecentIds::new(3);
        assert!(recent.insert(1));
        assert!(recent.insert(2));
        assert!(!recent.insert(1));
        assert!(recent.insert(3));
        assert!(recent.insert(4)); // evicts 1
        assert_eq!(recent.len(), 3);
        assert!(!recent.contains(1));
        assert!(recent.insert(1)); // seen, but longer ago than the window
        assert!(!recent.insert(4));
    }

    #[test]
    fn recent_ids_stay_bounded() {
        let mut recent = RecentIds::new(100);
        for id in 0..10_000 {
            assert!(recent.insert(id));
        }
        assert_eq!(recent.len(), 100);
        assert!(recent.contains(9_999) && !recent.contains(9_899));
    }

    #[test]
    fn zero_capacity_remembers_nothing() {
        let mut recent = RecentIds::new(0);
        assert!(recent.insert(1));
        assert!(recent.insert(1));
        assert!(recent.is_empty());
    }
}
