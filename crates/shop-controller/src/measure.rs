//! Measured rates over a fixed window, sampled on a clock of their own.
//!
//! Every [`SAMPLE_EVERY`], the sampler ([`sample_periodically`]) records for each pipeline
//! the orders written (the sum of its orders topic's high watermarks) and the
//! payment-service replicas' `processed` and `failed` counters (from the followed heartbeat
//! table). A rate is the difference between the newest sample and the one [`WINDOW`]
//! before it, divided by the time between them, so it does not depend on when a reconcile
//! happened to run. A young pipeline gets a rate once its samples span [`MIN_SPAN`].
//!
//! [`rates`] is pure; the sampler only gathers. The samples also feed the live view's
//! sparklines ([`crate::live::Board::sample`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use shop_runtime::CancellationToken;
use tracing::debug;

use crate::build::TopicNames;
use crate::crd::ShopPipeline;
use crate::reconcile::Context;

/// How often every pipeline is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The window rates are measured over.
pub const WINDOW: Duration = Duration::from_secs(30);
/// The shortest span a rate is given for.
pub const MIN_SPAN: Duration = Duration::from_secs(10);

/// One sample of a pipeline's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub at: Instant,
    /// Records ever written to the orders topic.
    pub orders_written: i64,
    /// `processed` and `failed` of each payment-service replica, by instance.
    pub processed: BTreeMap<String, u64>,
    pub failed: BTreeMap<String, u64>,
}

/// The orders per second and the failure ratio over the window ending at the newest
/// sample, each `None` when it cannot be told yet.
pub fn rates(series: &VecDeque<Sample>) -> (Option<f64>, Option<f64>) {
    let Some(newest) = series.back() else {
        return (None, None);
    };
    let base = series
        .iter()
        .rev()
        .find(|s| newest.at.duration_since(s.at) >= WINDOW)
        .or(series.front())
        .unwrap_or(newest);
    let span = newest.at.duration_since(base.at);
    if span < MIN_SPAN {
        return (None, None);
    }
    let seconds = span.as_secs_f64();
    let written = (newest.orders_written - base.orders_written).max(0) as f64;
    let rate = (written / seconds * 100.0).round() / 100.0;
    let processed = growth(&base.processed, &newest.processed);
    let failed = growth(&base.failed, &newest.failed);
    let ratio =
        (processed > 0).then(|| (failed as f64 / processed as f64 * 1000.0).round() / 1000.0);
    (Some(rate), ratio)
}

/// How much the per-replica counters grew. A replica that appeared counts from zero; one
/// whose counter went back (it restarted under the same name) counts nothing this window.
fn growth(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> u64 {
    after
        .iter()
        .map(|(instance, &now)| now.saturating_sub(before.get(instance).copied().unwrap_or(0)))
        .sum()
}

/// The samples of every pipeline, by pipeline key.
#[derive(Debug, Default)]
pub struct Rates {
    series: Mutex<HashMap<String, VecDeque<Sample>>>,
}

impl Rates {
    /// Adds a sample and forgets the ones no window needs any more.
    pub fn record(&self, key: &str, sample: Sample) {
        let mut series = self.lock();
        let samples = series.entry(key.to_owned()).or_default();
        let newest = sample.at;
        samples.push_back(sample);
        // Keep the newest sample at least WINDOW old, and nothing older.
        while samples
            .get(1)
            .is_some_and(|next| newest.duration_since(next.at) >= WINDOW)
        {
            samples.pop_front();
        }
    }

    /// [`rates`] of the pipeline `key`.
    pub fn measured(&self, key: &str) -> (Option<f64>, Option<f64>) {
        self.lock().get(key).map_or((None, None), rates)
    }

    /// Forgets the pipelines not in `keys`.
    pub fn retain(&self, keys: &HashSet<String>) {
        self.lock().retain(|key, _| keys.contains(key));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Sample>>> {
        // Only whole samples are pushed or popped under the lock.
        self.series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Samples every pipeline in `pipelines` every [`SAMPLE_EVERY`] until `shutdown`.
pub async fn sample_periodically(
    ctx: Arc<Context>,
    pipelines: Store<PartialObjectMeta<ShopPipeline>>,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let mut keys = HashSet::new();
        for meta in pipelines.state() {
            let (namespace, name) = (meta.namespace().unwrap_or_default(), meta.name_any());
            let key = shop_domain::control::pipeline_key(&namespace, &name);
            keys.insert(key.clone());
            let topic = TopicNames::of(&namespace, &name).orders;
            let written = match crate::observe::written(&ctx.observer, &topic).await {
                Ok(Some(written)) => written,
                Ok(None) => continue,
                Err(error) => {
                    debug!(pipeline = %key, %error, "not sampled");
                    continue;
                }
            };
            let heartbeats = crate::observe::live_heartbeats(&ctx.heartbeats, &key);
            let sample = Sample {
                at: Instant::now(),
                orders_written: written,
                processed: crate::observe::counters(&heartbeats, "payment-service", "processed"),
                failed: crate::observe::counters(&heartbeats, "payment-service", "failed"),
            };
            ctx.rates.record(&key, sample);
            ctx.board
                .sample(&namespace, &name, ctx.rates.measured(&key), &heartbeats);
        }
        ctx.rates.retain(&keys);
        ctx.board.retain(&keys);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(start: Instant, seconds: u64, written: i64, processed: u64, failed: u64) -> Sample {
        Sample {
            at: start + Duration::from_secs(seconds),
            orders_written: written,
            processed: BTreeMap::from([("p-0".to_owned(), processed)]),
            failed: BTreeMap::from([("p-0".to_owned(), failed)]),
        }
    }

    #[test]
    fn the_rate_is_measured_over_the_window_whenever_it_is_asked() {
        let start = Instant::now();
        let rates_store = Rates::default();
        // 50 orders/s, sampled every 5 s; one in five payments fails.
        for i in 0..=12u64 {
            rates_store.record(
                "ns/p",
                sample(start, i * 5, (i * 250) as i64, i * 250, i * 50),
            );
        }
        assert_eq!(rates_store.measured("ns/p"), (Some(50.0), Some(0.2)));
        // Only what the window needs is kept.
        assert_eq!(rates_store.lock()["ns/p"].len(), 7);
    }

    #[test]
    fn a_young_pipeline_has_no_rate_until_its_samples_span_long_enough() {
        let start = Instant::now();
        let mut series = VecDeque::from([sample(start, 0, 0, 0, 0), sample(start, 5, 100, 0, 0)]);
        assert_eq!(rates(&series), (None, None));
        series.push_back(sample(start, 10, 200, 0, 0));
        assert_eq!(rates(&series), (Some(20.0), None), "no payments: no ratio");
    }

    #[test]
    fn a_restarted_replica_does_not_make_counts_negative() {
        let start = Instant::now();
        let series = VecDeque::from([
            sample(start, 0, 1000, 500, 100),
            Sample {
                processed: BTreeMap::from([("p-0".into(), 20), ("p-1".into(), 80)]),
                failed: BTreeMap::from([("p-0".into(), 5), ("p-1".into(), 20)]),
                ..sample(start, 30, 900, 0, 0)
            },
        ]);
        // p-0 went back (restart): it counts nothing; p-1 is new: it counts from zero.
        assert_eq!(rates(&series), (Some(0.0), Some(0.25)));
    }
}
