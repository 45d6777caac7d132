//! What one generated order looks like: the seed's random fields, drawn from a caller's
//! random number generator, and its trace context.
//!
//! Pure given the generator and the clock, so it is tested without Kafka; the producer
//! turns the result into a Kafka record.

use rand::{Rng, RngExt};
use shop_domain::events::USER_IDS;
use shop_domain::{Amount, Order, TraceParent};

/// A new order with the seed's distribution: a user in 1..=100 and an amount of $10.00 to
/// $500.00 in whole cents. `created_at` is RFC 3339 ([`shop_domain::time::rfc3339`]),
/// formatted once by the caller for all orders created in the same instant.
pub fn random_order(rng: &mut impl Rng, order_id: u64, created_at: String) -> Order {
    let user_id = rng.random_range(USER_IDS);
    let cents = rng.random_range(Amount::MIN_ORDER.cents()..=Amount::MAX_ORDER.cents());
    Order::new(order_id, user_id, Amount::from_cents(cents), created_at)
}

/// A fresh sampled trace for an order: the order starts a trace that payment- and
/// notification-service continue. Zero ids are invalid in W3C, so they are redrawn (as 1).
pub fn random_traceparent(rng: &mut impl Rng) -> TraceParent {
    TraceParent::from_ids(rng.random::<u128>().max(1), rng.random::<u64>().max(1))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::{Duration, UNIX_EPOCH};

    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    #[test]
    fn random_orders_are_valid_seed_orders_that_round_trip() {
        let mut rng = SmallRng::seed_from_u64(7);
        let now = shop_domain::time::rfc3339(UNIX_EPOCH + Duration::from_millis(1_735_787_045_678));
        let (mut users, mut cents) = (Vec::new(), Vec::new());
        for order_id in 1000..11_000 {
            let order = random_order(&mut rng, order_id, now.clone());
            assert_eq!(Order::parse(&order.to_json()).unwrap(), order);
            assert_eq!(
                order.created_at.as_deref(),
                Some("2025-01-02T03:04:05.678Z")
            );
            users.push(order.user_id);
            cents.push(order.amount.cents());
        }
        // The whole ranges are used, ends included.
        assert_eq!(users.iter().min(), Some(&1));
        assert_eq!(users.iter().max(), Some(&100));
        assert!(cents.iter().all(|c| (1_000..=50_000).contains(c)));
        assert!(cents.iter().any(|c| c % 100 != 0), "cents are drawn too");
    }

    #[test]
    fn trace_contexts_are_valid_and_distinct() {
        let mut rng = SmallRng::seed_from_u64(7);
        let (a, b) = (random_traceparent(&mut rng), random_traceparent(&mut rng));
        assert_ne!(a.trace_id, b.trace_id);
        assert_eq!(TraceParent::parse(&a.to_string()), Some(a));
        assert!(a.sampled);
    }
}
