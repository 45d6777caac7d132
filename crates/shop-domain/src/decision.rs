//! The payment decision: does the payment for an order succeed, and if not, why.
//!
//! The decision is a pure function of `(order_id, failure_ratio, seed)`. A payment-service
//! replica that re-reads an order after a crash or a rebalance therefore reaches the same
//! outcome as before, and a pipeline run twice with the same seed fails the same orders.
//! There is no randomness here: the order id and seed are hashed (see `mix`) into a
//! uniform number that is compared with the ratio.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::mix::{Stream, mix, unit_interval};

/// The outcome of processing the payment for one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The payment went through.
    Success,
    /// The payment was refused, for the given reason.
    Failure(FailureReason),
}

impl Decision {
    /// Whether the payment went through.
    pub fn is_success(&self) -> bool {
        matches!(self, Decision::Success)
    }

    /// Why the payment failed, or `None` when it succeeded.
    pub fn reason(&self) -> Option<FailureReason> {
        match self {
            Decision::Success => None,
            Decision::Failure(reason) => Some(*reason),
        }
    }
}

/// Why a payment failed. Serialised in snake_case (`"card_declined"`), the form that
/// appears in the payment's `reason` field and in notification lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    CardDeclined,
    InsufficientFunds,
    FraudSuspected,
    ExpiredCard,
}

impl FailureReason {
    /// Every reason, in a fixed order: the decision picks among them by index.
    pub const ALL: [FailureReason; 4] = [
        FailureReason::CardDeclined,
        FailureReason::InsufficientFunds,
        FailureReason::FraudSuspected,
        FailureReason::ExpiredCard,
    ];

    /// The wire name, identical to the serde form.
    pub fn as_str(&self) -> &'static str {
        match self {
            FailureReason::CardDeclined => "card_declined",
            FailureReason::InsufficientFunds => "insufficient_funds",
            FailureReason::FraudSuspected => "fraud_suspected",
            FailureReason::ExpiredCard => "expired_card",
        }
    }

    /// The reason whose wire name is `name`, if any.
    pub fn from_wire(name: &str) -> Option<FailureReason> {
        FailureReason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == name)
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decides the payment for `order_id`: it fails with probability `failure_ratio`
/// (clamped to `[0, 1]`; NaN counts as 0), reproducibly for a given `seed`.
///
/// A ratio of 0 never fails and a ratio of 1 always fails, because the uniform number
/// compared with it lies in `[0, 1)`. The failure reason comes from an independent hash,
/// so it carries no information about how close the order was to succeeding.
pub fn decide(order_id: u64, failure_ratio: f64, seed: u64) -> Decision {
    let ratio = if failure_ratio.is_nan() {
        0.0
    } else {
        failure_ratio.clamp(0.0, 1.0)
    };
    let draw = unit_interval(mix(Stream::Outcome, seed, order_id));
    if draw < ratio {
        Decision::Failure(failure_reason(order_id, seed))
    } else {
        Decision::Success
    }
}

/// Picks a reason uniformly from the top two bits of an independent hash.
fn failure_reason(order_id: u64, seed: u64) -> FailureReason {
    let index = mix(Stream::Reason, seed, order_id) >> 62;
    FailureReason::ALL[index as usize]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const N: u64 = 100_000;

    fn failures(ratio: f64, seed: u64, ids: std::ops::Range<u64>) -> u64 {
        ids.filter(|&id| !decide(id, ratio, seed).is_success())
            .count() as u64
    }

    #[test]
    fn replayed_order_gets_same_decision() {
        for id in 1000..2000 {
            assert_eq!(decide(id, 0.3, 42), decide(id, 0.3, 42));
        }
    }

    #[test]
    fn ratio_zero_never_fails_and_ratio_one_always_fails() {
        assert_eq!(failures(0.0, 7, 1000..1000 + N), 0);
        assert_eq!(failures(1.0, 7, 1000..1000 + N), N);
    }

    #[test]
    fn ratios_outside_zero_to_one_are_clamped() {
        assert_eq!(failures(-3.0, 7, 0..1000), 0);
        assert_eq!(failures(f64::NAN, 7, 0..1000), 0);
        assert_eq!(failures(5.0, 7, 0..1000), 1000);
    }

    #[test]
    fn failure_fraction_over_consecutive_ids_matches_ratio() {
        for ratio in [0.1, 0.5, 0.9] {
            let expected = N as f64 * ratio;
            let sigma = (N as f64 * ratio * (1.0 - ratio)).sqrt();
            let measured = failures(ratio, 42, 1000..1000 + N) as f64;
            assert!(
                (measured - expected).abs() < 4.5 * sigma,
                "ratio {ratio}: {measured} failures, expected {expected} ± {}",
                4.5 * sigma
            );
        }
    }

    #[test]
    fn different_seeds_give_different_decision_sequences() {
        let sequence = |seed| {
            (1000..1100)
                .map(|id| decide(id, 0.5, seed))
                .collect::<Vec<_>>()
        };
        assert_ne!(sequence(1), sequence(2));
        assert_ne!(sequence(0), sequence(42));
    }

    #[test]
    fn all_reasons_occur_about_equally_often() {
        let mut counts = BTreeMap::new();
        for id in 0..N {
            if let Some(reason) = decide(id, 1.0, 3).reason() {
                *counts.entry(reason).or_insert(0u64) += 1;
            }
        }
        assert_eq!(counts.len(), FailureReason::ALL.len());
        let sigma = (N as f64 * 0.25 * 0.75).sqrt();
        for (reason, count) in counts {
            assert!(
                (count as f64 - N as f64 / 4.0).abs() < 4.5 * sigma,
                "{reason}: {count}"
            );
        }
    }

    #[test]
    fn reasons_serialise_as_their_wire_names() {
        for reason in FailureReason::ALL {
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
            assert_eq!(FailureReason::from_wire(reason.as_str()), Some(reason));
        }
        assert_eq!(FailureReason::from_wire("stolen"), None);
    }
}
