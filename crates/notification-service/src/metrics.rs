//! The service's metrics, registered once at start-up. The same counters feed the
//! heartbeat, so `/metrics`, the controller and `shopctl status` agree.

use std::collections::BTreeMap;
use std::time::Duration;

use shop_domain::Payment;
use shop_kafka::heartbeat::Report;
use shop_runtime::Metrics;
use shop_runtime::metrics::{Counter, Histogram, exponential_buckets};

/// The label set of `notifications_printed`: `status="successful"|"failed"`.
type StatusLabel = [(&'static str, &'static str); 1];

/// Handles to the registered metrics; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Counters {
    successful: Counter,
    failed: Counter,
    duplicates: Counter,
    dead_lettered: Counter,
    latency: Histogram,
}

impl Counters {
    pub(crate) fn register(metrics: &Metrics) -> Self {
        let printed = metrics.counter_family::<StatusLabel>(
            "notifications_printed",
            "Notification lines written, by payment status",
        );
        // Created up front so both series exist (at 0) from the first scrape.
        let successful = printed.get_or_create(&[("status", "successful")]).clone();
        let failed = printed.get_or_create(&[("status", "failed")]).clone();
        Self {
            successful,
            failed,
            duplicates: metrics.counter(
                "duplicates_suppressed",
                "Payments not printed because the same payment was printed recently",
            ),
            dead_lettered: metrics.counter(
                "dead_lettered",
                "Malformed payments written to the dead-letter topic",
            ),
            latency: metrics.histogram(
                "end_to_end_latency_seconds",
                "From order creation (or payment processing) to the printed line",
                // 1 ms to about 33 s.
                exponential_buckets(0.001, 2.0, 16),
            ),
        }
    }

    pub(crate) fn printed(&self, payment: &Payment, latency: Option<Duration>) {
        if payment.is_successful() {
            self.successful.inc();
        } else {
            self.failed.inc();
        }
        if let Some(latency) = latency {
            self.latency.observe(latency.as_secs_f64());
        }
    }

    pub(crate) fn duplicate(&self) {
        self.duplicates.inc();
    }

    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.inc();
    }

    /// The heartbeat's counters: totals since this replica started.
    pub(crate) fn report(&self) -> Report {
        Report {
            counters: BTreeMap::from([
                (
                    "printed".to_owned(),
                    self.successful.get() + self.failed.get(),
                ),
                ("duplicates".to_owned(), self.duplicates.get()),
                ("dead_lettered".to_owned(), self.dead_lettered.get()),
            ]),
            ..Report::default()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn printed_payments_are_counted_by_status_and_reported_in_heartbeats() {
        let metrics = Metrics::new();
        let counters = Counters::register(&metrics);
        let ok = Payment::parse(br#"{"order_id": 1, "status": "payment_successful"}"#).unwrap();
        let failed = Payment::parse(br#"{"order_id": 2, "status": "payment_failed"}"#).unwrap();
        counters.printed(&ok, Some(Duration::from_millis(12)));
        counters.printed(&failed, None);
        counters.duplicate();
        let text = metrics.encode();
        for expected in [
            "shopstream_notifications_printed_total{status=\"successful\"} 1\n",
            "shopstream_notifications_printed_total{status=\"failed\"} 1\n",
            "shopstream_duplicates_suppressed_total 1\n",
            "shopstream_dead_lettered_total 0\n",
            "shopstream_end_to_end_latency_seconds_count 1\n",
        ] {
            assert!(text.contains(expected), "{expected} missing from\n{text}");
        }
        let report = counters.report();
        assert_eq!(report.counters["printed"], 2);
        assert_eq!(report.counters["duplicates"], 1);
        assert_eq!(report.counters["dead_lettered"], 0);
    }
}
