//! Prometheus metrics for a process: one registry, shared by every part of the binary and
//! encoded by the HTTP server on `GET /metrics`.
//!
//! [`Metrics`] wraps a [`prometheus_client`] registry whose names all start with
//! `shopstream_`, so dashboards find every component's series under one prefix. Register
//! metrics once, at start-up, and keep the returned handles: they are cheap clones of
//! atomics, so the hot path never touches the registry's lock. Naming follows OpenMetrics:
//! counters are registered without `_total` (the encoder appends it), and units go in the
//! name (`reconcile_duration_seconds`).

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub use prometheus_client;
pub use prometheus_client::encoding::EncodeLabelSet;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

use crate::error::{Error, Result};

/// The process's metric registry. Cloning is cheap and every clone shares the registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Prefix of every metric name, followed by `_`.
    pub const PREFIX: &str = "shopstream";

    /// An empty registry with the `shopstream` prefix.
    pub fn new() -> Self {
        Self {
            registry: Arc::new(Mutex::new(Registry::with_prefix(Self::PREFIX))),
        }
    }

    /// Registers a counter. `name` is given without `_total`; a trailing `_total` is
    /// dropped because the encoder adds it (`orders_produced` → `shopstream_orders_produced_total`).
    pub fn counter(&self, name: impl Into<String>, help: impl Into<String>) -> Counter {
        let counter = Counter::default();
        self.register(counter_name(name), help, counter.clone());
        counter
    }

    /// Registers an integer gauge (queue depth, assigned partitions, applied generation).
    pub fn gauge(&self, name: impl Into<String>, help: impl Into<String>) -> Gauge {
        let gauge = Gauge::default();
        self.register(name, help, gauge.clone());
        gauge
    }

    /// Registers a floating-point gauge (configured rate, failure ratio).
    pub fn gauge_f64(
        &self,
        name: impl Into<String>,
        help: impl Into<String>,
    ) -> Gauge<f64, AtomicU64> {
        let gauge = Gauge::<f64, AtomicU64>::default();
        self.register(name, help, gauge.clone());
        gauge
    }

    /// Registers a histogram with the given upper bucket bounds (`+Inf` is implicit), for
    /// example `exponential_buckets(0.001, 2.0, 14)` for durations from 1 ms to 8 s.
    pub fn histogram(
        &self,
        name: impl Into<String>,
        help: impl Into<String>,
        buckets: impl IntoIterator<Item = f64>,
    ) -> Histogram {
        let histogram = Histogram::new(buckets);
        self.register(name, help, histogram.clone());
        histogram
    }

    /// Registers a family of counters, one per label set `L` (a struct deriving
    /// `EncodeLabelSet`, or `Vec<(String, String)>`). Like [`Metrics::counter`], `name`
    /// carries no `_total`.
    pub fn counter_family<L>(
        &self,
        name: impl Into<String>,
        help: impl Into<String>,
    ) -> Family<L, Counter>
    where
        L: EncodeLabelSet + Clone + Hash + Eq + Debug + Send + Sync + 'static,
    {
        let family = Family::<L, Counter>::default();
        self.register(counter_name(name), help, family.clone());
        family
    }

    /// Registers a family of integer gauges, one per label set `L`.
    pub fn gauge_family<L>(
        &self,
        name: impl Into<String>,
        help: impl Into<String>,
    ) -> Family<L, Gauge>
    where
        L: EncodeLabelSet + Clone + Hash + Eq + Debug + Send + Sync + 'static,
    {
        let family = Family::<L, Gauge>::default();
        self.register(name, help, family.clone());
        family
    }

    /// Registers any metric the helpers above do not cover. Names must be unique: the
    /// registry does not check, and a duplicate makes the whole scrape invalid.
    pub fn register(&self, name: impl Into<String>, help: impl Into<String>, metric: impl Metric) {
        self.lock().register(name, help, metric);
    }

    /// The registry in the OpenMetrics text format, ending with `# EOF`.
    pub fn try_encode(&self) -> Result<String> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.lock())
            .map_err(Error::MetricsEncode)?;
        Ok(text)
    }

    /// Like [`Metrics::try_encode`], for tests and logs: an encoding failure (only possible
    /// with a faulty hand-written label set) is logged and gives an empty exposition.
    pub fn encode(&self) -> String {
        self.try_encode().unwrap_or_else(|error| {
            tracing::error!(error = %error, "metrics encoding failed");
            "# EOF\n".to_owned()
        })
    }

    /// Locks the registry. A panic while holding the lock cannot leave it half-updated (a
    /// registration is one `Vec::push`), so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn counter_name(name: impl Into<String>) -> String {
    let name = name.into();
    match name.strip_suffix("_total") {
        Some(stem) => stem.to_owned(),
        None => name,
    }
}

/// Observes the seconds between its creation and its drop into a histogram, so every exit
/// of a function (early return, `?`, panic) is measured without extra code:
///
/// ```
/// # let metrics = shop_runtime::Metrics::new();
/// let durations = metrics.histogram(
///     "reconcile_duration_seconds",
///     "Time spent in one reconcile",
///     shop_runtime::metrics::exponential_buckets(0.001, 2.0, 14),
/// );
/// {
///     let _timer = shop_runtime::Timer::start(&durations);
///     // ... reconcile ...
/// }
/// assert!(metrics.encode().contains("shopstream_reconcile_duration_seconds_count 1\n"));
/// ```
#[derive(Debug)]
#[must_use = "a Timer observes when dropped; bind it with `let _timer = ...`, not `let _ = ...`"]
pub struct Timer {
    histogram: Histogram,
    start: Instant,
}

impl Timer {
    /// Starts timing now.
    pub fn start(histogram: &Histogram) -> Self {
        Self {
            histogram: histogram.clone(),
            start: Instant::now(),
        }
    }

    /// Time since [`Timer::start`].
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Outcome {
        outcome: String,
    }

    #[test]
    fn counter_is_encoded_with_prefix_and_total_suffix() {
        let metrics = Metrics::new();
        let produced = metrics.counter("orders_produced", "Orders produced");
        produced.inc_by(3);
        let text = metrics.encode();
        assert!(
            text.contains("shopstream_orders_produced_total 3\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn counter_name_with_total_is_not_doubled() {
        let metrics = Metrics::new();
        metrics
            .counter("dead_letters_total", "Messages sent to the DLQ")
            .inc();
        let text = metrics.encode();
        assert!(text.contains("shopstream_dead_letters_total 1\n"), "{text}");
        assert!(!text.contains("_total_total"), "{text}");
    }

    #[test]
    fn gauges_keep_their_last_value() {
        let metrics = Metrics::new();
        metrics.gauge("assigned_partitions", "Partitions").set(6);
        metrics
            .gauge_f64("orders_per_second", "Configured rate")
            .set(19.5);
        let text = metrics.encode();
        assert!(
            text.contains("shopstream_assigned_partitions 6\n"),
            "{text}"
        );
        assert!(
            text.contains("shopstream_orders_per_second 19.5\n"),
            "{text}"
        );
    }

    #[test]
    fn counter_family_has_one_series_per_label_set() {
        let metrics = Metrics::new();
        let payments = metrics.counter_family::<Outcome>("payments", "Payments by outcome");
        payments
            .get_or_create(&Outcome {
                outcome: "failed".into(),
            })
            .inc();
        payments
            .get_or_create(&Outcome {
                outcome: "successful".into(),
            })
            .inc_by(9);
        let text = metrics.encode();
        assert!(
            text.contains("shopstream_payments_total{outcome=\"failed\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("shopstream_payments_total{outcome=\"successful\"} 9\n"),
            "{text}"
        );
    }

    #[test]
    fn timer_observes_once_when_dropped() {
        let metrics = Metrics::new();
        let durations =
            metrics.histogram("reconcile_duration_seconds", "Reconcile time", [0.5, 1.0]);
        {
            let timer = Timer::start(&durations);
            assert!(timer.elapsed() < Duration::from_secs(1));
        }
        let text = metrics.encode();
        assert!(
            text.contains("shopstream_reconcile_duration_seconds_count 1\n"),
            "{text}"
        );
        assert!(
            text.contains("shopstream_reconcile_duration_seconds_bucket{le=\"0.5\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn clones_share_one_registry() {
        let metrics = Metrics::new();
        metrics
            .clone()
            .counter("heartbeats_sent", "Heartbeats")
            .inc();
        assert!(
            metrics
                .encode()
                .contains("shopstream_heartbeats_sent_total 1\n")
        );
    }
}
