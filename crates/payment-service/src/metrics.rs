//! What the service counts and reports: Prometheus metrics on `/metrics`, and the same
//! numbers in its heartbeat for the controller.
//!
//! Counters move when a batch's effect is durable (its transaction committed, or at
//! least once, its payments acknowledged), so an aborted and replayed transaction is not
//! counted twice. The metric handles are the single source of the heartbeat's counters.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use shop_domain::InvalidMessage;
use shop_kafka::heartbeat::Report;
use shop_runtime::Metrics;
use shop_runtime::metrics::{Counter, Family, Gauge, Histogram, exponential_buckets};

use crate::process::{DecisionSettings, Outcome};

/// A single-label label set; the derive macro would need a direct prometheus-client
/// dependency.
type Label = [(&'static str, &'static str); 1];

/// The service's metrics, registered once in the process's registry.
#[derive(Debug)]
pub(crate) struct ServiceMetrics {
    payments_processed: Family<Label, Counter>,
    dead_lettered: Family<Label, Counter>,
    pub transactions_committed: Counter,
    pub transactions_aborted: Counter,
    pub producers_replaced: Counter,
    failure_ratio_applied: Gauge<f64, AtomicU64>,
    generation_applied: Gauge,
    latency: Histogram,
    pub consumer_lag: Gauge,
    /// The decision settings in force and the control generation they came from.
    applied: Mutex<Applied>,
}

/// The decision settings in force and where they came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Applied {
    /// `None` while running on flags.
    pub generation: Option<u64>,
    pub settings: DecisionSettings,
}

/// What one batch counts once its effect is durable.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Counts {
    pub succeeded: u64,
    pub failed: u64,
    pub dead_lettered: BTreeMap<&'static str, u64>,
}

impl Counts {
    /// Orders in the batch: payments and dead letters.
    pub fn total(&self) -> u64 {
        self.succeeded + self.failed + self.dead_lettered.values().sum::<u64>()
    }

    pub fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Succeeded => self.succeeded += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::DeadLettered(kind) => *self.dead_lettered.entry(kind).or_default() += 1,
        }
    }
}

impl ServiceMetrics {
    pub fn register(metrics: &Metrics, settings: DecisionSettings) -> Self {
        let payments_processed = metrics.counter_family::<Label>(
            "payments_processed",
            "Payments written (committed), by outcome: success or failure",
        );
        let dead_lettered = metrics.counter_family::<Label>(
            "dead_lettered",
            "Orders that failed to parse or validate, written to the dead-letter topic, by kind",
        );
        // Every series exists from the start, so rates and ratios never miss a zero.
        for outcome in ["success", "failure"] {
            drop(payments_processed.get_or_create(&[("outcome", outcome)]));
        }
        for kind in InvalidMessage::KINDS {
            drop(dead_lettered.get_or_create(&[("kind", kind)]));
        }
        let this = Self {
            payments_processed,
            dead_lettered,
            transactions_committed: metrics.counter(
                "transactions_committed",
                "Batches committed: Kafka transactions (exactly-once) or offset commits (at-least-once)",
            ),
            transactions_aborted: metrics.counter(
                "transactions_aborted",
                "Batches aborted and replayed (broker errors, rebalances)",
            ),
            producers_replaced: metrics.counter(
                "producers_replaced",
                "Transactional producers replaced after turning fatal (not fenced)",
            ),
            failure_ratio_applied: metrics.gauge_f64(
                "payment_failure_ratio_applied",
                "Failure ratio of the payment decision in force",
            ),
            generation_applied: metrics.gauge(
                "control_generation_applied",
                "Generation of the last control record applied (0: none, running on flags)",
            ),
            latency: metrics.histogram(
                "end_to_end_latency_seconds",
                "Time from an order's created_at to its payment decision",
                exponential_buckets(0.001, 2.0, 16),
            ),
            consumer_lag: metrics.gauge(
                "consumer_lag",
                "Orders behind the last stable offset on this replica's partitions",
            ),
            applied: Mutex::new(Applied {
                generation: None,
                settings,
            }),
        };
        this.failure_ratio_applied.set(settings.failure_ratio);
        this
    }

    /// The decision settings in force.
    pub fn applied(&self) -> Applied {
        *self.applied.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records newly applied settings.
    pub fn set_applied(&self, applied: Applied) {
        *self.applied.lock().unwrap_or_else(PoisonError::into_inner) = applied;
        self.failure_ratio_applied
            .set(applied.settings.failure_ratio);
        let generation = applied.generation.unwrap_or(0);
        self.generation_applied
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    pub fn observe_latency(&self, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
    }

    /// Counts a batch whose effect is durable.
    pub fn committed(&self, counts: &Counts) {
        self.transactions_committed.inc();
        self.payment_counter("success").inc_by(counts.succeeded);
        self.payment_counter("failure").inc_by(counts.failed);
        for (kind, n) in &counts.dead_lettered {
            self.dead_lettered
                .get_or_create(&[("kind", kind)])
                .inc_by(*n);
        }
    }

    fn payment_counter(&self, outcome: &'static str) -> Counter {
        self.payments_processed
            .get_or_create(&[("outcome", outcome)])
            .clone()
    }

    /// The heartbeat's report.
    pub fn report(&self) -> Report {
        let applied = self.applied();
        let succeeded = self.payment_counter("success").get();
        let failed = self.payment_counter("failure").get();
        let dead_lettered = InvalidMessage::KINDS
            .iter()
            .map(|kind| self.dead_lettered.get_or_create(&[("kind", kind)]).get())
            .sum();
        let counters = BTreeMap::from([
            ("processed".to_owned(), succeeded + failed),
            ("succeeded".to_owned(), succeeded),
            ("failed".to_owned(), failed),
            ("dead_lettered".to_owned(), dead_lettered),
            (
                "transactions_committed".to_owned(),
                self.transactions_committed.get(),
            ),
            (
                "transactions_aborted".to_owned(),
                self.transactions_aborted.get(),
            ),
        ]);
        Report {
            applied_generation: applied.generation,
            payment_failure_ratio: Some(applied.settings.failure_ratio),
            counters,
            ..Report::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_batches_show_in_metrics_and_heartbeat_counters() {
        let registry = Metrics::new();
        let metrics = ServiceMetrics::register(
            &registry,
            DecisionSettings {
                failure_ratio: 0.2,
                seed: 1,
            },
        );
        let mut counts = Counts::default();
        for outcome in [
            Outcome::Succeeded,
            Outcome::Succeeded,
            Outcome::Failed,
            Outcome::DeadLettered("not_json"),
        ] {
            counts.add(outcome);
        }
        metrics.committed(&counts);
        let text = registry.encode();
        for line in [
            "shopstream_payments_processed_total{outcome=\"success\"} 2\n",
            "shopstream_payments_processed_total{outcome=\"failure\"} 1\n",
            "shopstream_dead_lettered_total{kind=\"not_json\"} 1\n",
            "shopstream_dead_lettered_total{kind=\"too_large\"} 0\n",
            "shopstream_transactions_committed_total 1\n",
            "shopstream_payment_failure_ratio_applied 0.2\n",
            "shopstream_control_generation_applied 0\n",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        let report = metrics.report();
        assert_eq!(report.applied_generation, None);
        assert_eq!(report.payment_failure_ratio, Some(0.2));
        assert_eq!(report.counters["processed"], 3);
        assert_eq!(report.counters["succeeded"], 2);
        assert_eq!(report.counters["failed"], 1);
        assert_eq!(report.counters["dead_lettered"], 1);
        assert_eq!(report.counters["transactions_committed"], 1);
        assert_eq!(report.counters["transactions_aborted"], 0);
    }

    #[test]
    fn applied_control_generation_shows_in_gauges_and_report() {
        let registry = Metrics::new();
        let settings = DecisionSettings {
            failure_ratio: 0.1,
            seed: 0,
        };
        let metrics = ServiceMetrics::register(&registry, settings);
        metrics.set_applied(Applied {
            generation: Some(4),
            settings: DecisionSettings {
                failure_ratio: 1.0,
                seed: 9,
            },
        });
        let text = registry.encode();
        assert!(
            text.contains("shopstream_control_generation_applied 4\n"),
            "{text}"
        );
        assert!(
            text.contains("shopstream_payment_failure_ratio_applied 1.0\n"),
            "{text}"
        );
        assert_eq!(metrics.report().applied_generation, Some(4));
        assert_eq!(metrics.applied().settings.seed, 9);
    }
}
