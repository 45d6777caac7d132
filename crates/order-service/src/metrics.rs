//! The service's metrics, registered once in the process registry. The delivery counters
//! are also what heartbeats report, so `/metrics` and the controller never disagree.

use std::sync::atomic::AtomicU64;

use shop_runtime::Metrics;
use shop_runtime::metrics::{Counter, Gauge};

/// Handles to the service's metrics; clones share the same series.
#[derive(Clone, Debug)]
pub(crate) struct OrderMetrics {
    /// Orders the broker acknowledged.
    pub produced: Counter,
    /// Orders that could not be delivered (each also logged).
    pub delivery_failed: Counter,
    /// Orders the schedule skipped because the generator could not send them in time
    /// (each stall also logged).
    pub skipped: Counter,
    pub rate: Gauge<f64, AtomicU64>,
    pub paused: Gauge,
    pub generation: Gauge,
    pub id_block: Gauge,
}

impl OrderMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        Self {
            produced: metrics.counter(
                "orders_produced",
                "Orders written to Kafka and acknowledged by all in-sync replicas",
            ),
            delivery_failed: metrics.counter(
                "orders_delivery_failed",
                "Orders that could not be delivered to Kafka",
            ),
            skipped: metrics.counter(
                "orders_skipped",
                "Orders the rate schedule skipped because they could not be sent within 1 s \
                 of being due (producer queue full, no order ids, generator starved)",
            ),
            rate: metrics.gauge_f64(
                "orders_per_second_applied",
                "The order rate being applied, from the control record or the flags",
            ),
            paused: metrics.gauge("paused", "1 while order generation is paused"),
            generation: metrics.gauge(
                "control_generation_applied",
                "Generation of the applied control record (0 before any)",
            ),
            id_block: metrics.gauge(
                "order_id_block",
                "Number of the order-id block currently handed out",
            ),
        }
    }
}

/// A gauge value from a count that, in practice, never exceeds `i64`.
pub(crate) fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
