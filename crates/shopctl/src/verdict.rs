//! Whether the failed payments seen in a sample match an expected failure ratio. Pure:
//! `shopctl verify` reads the sample from Kafka ([`crate::ops::verify`]) and this module
//! decides; printing is [`crate::format::verified`].
//!
//! # The test
//!
//! payment-service decides each payment independently, failing it with probability `p`
//! (the hash in `shop_domain::decide` acts as an independent draw per order id). The
//! number of failures among `n` payments is therefore Binomial(n, p). A sample passes
//! when its failure count `k` lies in the two-sided interval `low..=high` with
//!
//! - `low`  = the smallest `k` with `P(X <= k) >= (1 - confidence) / 2`, and
//! - `high` = the smallest `k` with `P(X > k) <= (1 - confidence) / 2`,
//!
//! the binomial quantiles at `α/2` and `1 - α/2` (R's `qbinom`), so a pipeline that fails
//! exactly at the expected ratio is rejected with probability at most `1 - confidence`
//! (1 in 1000 at the default 0.999).
//!
//! The quantiles are exact, summed from the probability mass function, not from the normal
//! approximation: a failure ratio of 0.01 over 200 payments expects two failures, where the
//! normal curve is a poor model of a skewed, discrete count. The mass function is computed
//! in log space by its ratio recurrence (`P(k+1) / P(k) = (n-k)/(k+1) · p/(1-p)`), from
//! `k = 0` for the lower tail and from `k = n` for the upper one, so no tail is found by
//! subtracting from 1 and nothing overflows; normalising by the log-sum-exp of all terms
//! keeps the mode's weight at 1. That is O(n) work, a few milliseconds for a million
//! payments. Ratios 0 and 1 are certain outcomes: they pass only with no failure or only
//! failures.

use std::time::Duration;

use shop_domain::PaymentStatus;

/// The default `--confidence`.
pub const DEFAULT_CONFIDENCE: f64 = 0.999;

/// What was read from the payments topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Payments read (successful and failed).
    pub payments: u64,
    /// Of those, how many failed.
    pub failed: u64,
    /// Records that were not payments (not JSON, invalid fields, tombstones); not counted
    /// in `payments`.
    pub unparsable: u64,
}

impl Sample {
    /// Counts one payment.
    pub fn add(&mut self, status: PaymentStatus) {
        self.payments += 1;
        if status == PaymentStatus::Failed {
            self.failed += 1;
        }
    }

    /// Counts one record that is not a payment.
    pub fn skip(&mut self) {
        self.unparsable += 1;
    }

    /// The share of payments that failed; 0 for an empty sample.
    pub fn observed_ratio(&self) -> f64 {
        if self.payments == 0 {
            0.0
        } else {
            self.failed as f64 / self.payments as f64
        }
    }
}

/// An inclusive range of failure counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub low: u64,
    pub high: u64,
}

impl Interval {
    pub fn contains(&self, failed: u64) -> bool {
        (self.low..=self.high).contains(&failed)
    }
}

/// The parameters of one verification.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Check {
    /// Expected failure ratio, `0..=1`.
    pub expected: f64,
    /// Probability that a pipeline failing at exactly `expected` passes, in `(0, 1)`.
    pub confidence: f64,
    /// Payments to read before deciding.
    pub min_payments: u64,
    /// How long reading may take.
    pub timeout: Duration,
}

/// How a verification ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The failure count lies in the interval.
    Within(Interval),
    /// The failure count lies outside the interval.
    Outside(Interval),
    /// Fewer than `min_payments` payments came before the timeout; nothing is concluded
    /// about the ratio.
    TimedOut,
}

/// A sample, what it was checked against, and the outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    pub sample: Sample,
    pub check: Check,
    pub outcome: Outcome,
}

impl Report {
    /// Whether the pipeline passed: enough payments, failures within the interval.
    pub fn passed(&self) -> bool {
        matches!(self.outcome, Outcome::Within(_))
    }
}

/// Judges `sample` against `check`. A sample smaller than `check.min_payments` means the
/// reading timed out.
pub fn judge(sample: Sample, check: Check) -> Report {
    let outcome = if sample.payments < check.min_payments {
        Outcome::TimedOut
    } else {
        let interval = binomial_interval(sample.payments, check.expected, check.confidence);
        if interval.contains(sample.failed) {
            Outcome::Within(interval)
        } else {
            Outcome::Outside(interval)
        }
    };
    Report {
        sample,
        check,
        outcome,
    }
}

/// The failure counts a Binomial(`n`, `p`) count falls in with probability at least
/// `confidence`, leaving at most `(1 - confidence) / 2` on each side (see the module
/// docs). `p` is clamped to `0..=1` (NaN counts as 0, as in `shop_domain::decide`);
/// `confidence` is expected in `(0, 1)`, which the command line enforces.
pub fn binomial_interval(n: u64, p: f64, confidence: f64) -> Interval {
    let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
    if n == 0 || p == 0.0 {
        return Interval { low: 0, high: 0 };
    }
    if p == 1.0 {
        return Interval { low: n, high: n };
    }
    let tail = (1.0 - confidence) / 2.0;
    let pmf = LogPmf::new(n, p);

    // log of the total mass, by a running log-sum-exp: `sum` is the total in units of
    // exp(max), so the mode weighs 1 and no term overflows or underflows to matter.
    let (max, sum) = pmf
        .ascending()
        .fold((f64::NEG_INFINITY, 0.0_f64), |(max, sum), (_, l)| {
            if l > max {
                (l, sum * (max - l).exp() + 1.0)
            } else {
                (max, sum + (l - max).exp())
            }
        });
    let log_total = max + sum.ln();
    let probability = |l: f64| (l - log_total).exp();

    let mut below = 0.0;
    let mut low = n;
    for (k, l) in pmf.ascending() {
        below += probability(l);
        if below >= tail {
            low = k;
            break;
        }
    }
    // Walking down from n: `above` is P(X > k) before adding P(X = k).
    let mut above = 0.0;
    let mut high = 0;
    for (k, l) in pmf.descending() {
        above += probability(l);
        if above > tail {
            high = k;
            break;
        }
    }
    Interval { low, high }
}

/// The log of the Binomial(n, p) mass function for `0 < p < 1`, enumerated by the ratio
/// recurrence from either end.
#[derive(Debug, Clone, Copy)]
struct LogPmf {
    n: u64,
    ln_p: f64,
    ln_q: f64,
}

impl LogPmf {
    fn new(n: u64, p: f64) -> LogPmf {
        LogPmf {
            n,
            ln_p: p.ln(),
            ln_q: (-p).ln_1p(),
        }
    }

    /// `(k, ln P(X = k))` for `k = 0, 1, ..., n`, starting at `ln P(0) = n ln(1-p)`.
    fn ascending(self) -> impl Iterator<Item = (u64, f64)> {
        let LogPmf { n, ln_p, ln_q } = self;
        let step = ln_p - ln_q;
        (0..=n).scan(n as f64 * ln_q, move |l, k| {
            let here = *l;
            if k < n {
                *l += ((n - k) as f64).ln() - ((k + 1) as f64).ln() + step;
            }
            Some((k, here))
        })
    }

    /// `(k, ln P(X = k))` for `k = n, n-1, ..., 0`, starting at `ln P(n) = n ln p`.
    fn descending(self) -> impl Iterator<Item = (u64, f64)> {
        let LogPmf { n, ln_p, ln_q } = self;
        let step = ln_q - ln_p;
        (0..=n).rev().scan(n as f64 * ln_p, move |l, k| {
            let here = *l;
            if k > 0 {
                *l += (k as f64).ln() - ((n - k + 1) as f64).ln() + step;
            }
            Some((k, here))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact quantiles, computed with rational arithmetic (Python `fractions` and
    /// `math.comb`: the smallest k with CDF(k) >= α/2, resp. >= 1 - α/2); they equal R's
    /// `qbinom(c(α/2, 1 - α/2), n, p)`.
    const KNOWN: [(u64, f64, f64, u64, u64); 12] = [
        (10, 0.5, 0.95, 2, 8),
        (200, 0.1, 0.999, 8, 35),
        (212, 0.1, 0.999, 8, 37),
        (200, 0.01, 0.999, 0, 8),
        (200, 0.5, 0.999, 77, 123),
        (1000, 0.1, 0.99, 76, 125),
        (20, 0.3, 0.9, 3, 9),
        (200, 0.99, 0.999, 192, 200),
        (5, 0.1, 0.999, 0, 3),
        (1, 0.5, 0.5, 0, 1),
        (2000, 0.001, 0.999, 0, 8),
        (500, 0.25, 0.95, 106, 144),
    ];

    #[test]
    fn intervals_are_the_exact_binomial_quantiles() {
        for (n, p, confidence, low, high) in KNOWN {
            assert_eq!(
                binomial_interval(n, p, confidence),
                Interval { low, high },
                "n={n} p={p} confidence={confidence}"
            );
        }
    }

    /// The mass function by the plain multiplicative recurrence, outwards from the mode
    /// (weight 1) and normalised: a second method, for moderate n.
    fn pmf(n: u64, p: f64) -> Vec<f64> {
        let ratio = p / (1.0 - p);
        let mode = (((n + 1) as f64 * p).floor() as u64).min(n);
        let mut weights = vec![0.0; n as usize + 1];
        weights[mode as usize] = 1.0;
        for k in mode..n {
            weights[k as usize + 1] = weights[k as usize] * (n - k) as f64 / (k + 1) as f64 * ratio;
        }
        for k in (1..=mode).rev() {
            weights[k as usize - 1] = weights[k as usize] * k as f64 / (n - k + 1) as f64 / ratio;
        }
        let total: f64 = weights.iter().sum();
        weights.into_iter().map(|w| w / total).collect()
    }

    #[test]
    fn each_tail_outside_the_interval_holds_at_most_half_the_error() {
        for n in [1, 2, 7, 50, 200, 333, 5000] {
            for p in [0.001, 0.05, 0.1, 0.37, 0.5, 0.9] {
                for confidence in [0.5, 0.9, 0.99, 0.999] {
                    let tail = (1.0 - confidence) / 2.0;
                    let Interval { low, high } = binomial_interval(n, p, confidence);
                    let mass = pmf(n, p);
                    let below: f64 = mass[..low as usize].iter().sum();
                    let above: f64 = mass[high as usize + 1..].iter().sum();
                    let case = format!("n={n} p={p} c={confidence}: {low}..={high}");
                    assert!(below < tail + 1e-12, "{case}: below {below}");
                    assert!(above <= tail + 1e-12, "{case}: above {above}");
                    // And the interval is the narrowest such: one more step out on
                    // either side would exceed the tail.
                    assert!(below + mass[low as usize] >= tail - 1e-12, "{case}");
                    assert!(above + mass[high as usize] > tail - 1e-12, "{case}");
                }
            }
        }
    }

    #[test]
    fn certain_ratios_accept_only_the_certain_count() {
        assert_eq!(
            binomial_interval(200, 0.0, 0.999),
            Interval { low: 0, high: 0 }
        );
        assert_eq!(
            binomial_interval(200, 1.0, 0.999),
            Interval {
                low: 200,
                high: 200
            }
        );
        assert_eq!(
            binomial_interval(0, 0.3, 0.999),
            Interval { low: 0, high: 0 }
        );
        assert_eq!(
            binomial_interval(10, f64::NAN, 0.999),
            Interval { low: 0, high: 0 }
        );
    }

    #[test]
    fn large_samples_agree_with_the_normal_approximation() {
        // n = 10^6, p = 1/2: mean 500000, sd 500; z(0.9995) = 3.2905, so the quantiles
        // lie about 1645 from the mean (the continuity correction is below a count).
        let Interval { low, high } = binomial_interval(1_000_000, 0.5, 0.999);
        assert!((498_353..=498_357).contains(&low), "{low}");
        assert!((501_643..=501_647).contains(&high), "{high}");
        assert_eq!(500_000 - low, high - 500_000, "symmetric for p = 1/2");
    }

    fn check(expected: f64, min_payments: u64) -> Check {
        Check {
            expected,
            confidence: DEFAULT_CONFIDENCE,
            min_payments,
            timeout: Duration::from_secs(180),
        }
    }

    fn sample(payments: u64, failed: u64) -> Sample {
        Sample {
            payments,
            failed,
            unparsable: 0,
        }
    }

    #[test]
    fn a_count_inside_the_interval_passes_and_outside_fails() {
        let interval = Interval { low: 8, high: 35 };
        for (failed, outcome) in [
            (7, Outcome::Outside(interval)),
            (8, Outcome::Within(interval)),
            (20, Outcome::Within(interval)),
            (35, Outcome::Within(interval)),
            (36, Outcome::Outside(interval)),
            (100, Outcome::Outside(interval)),
        ] {
            let report = judge(sample(200, failed), check(0.1, 200));
            assert_eq!(report.outcome, outcome, "{failed} failed");
            assert_eq!(report.passed(), matches!(outcome, Outcome::Within(_)));
        }
    }

    #[test]
    fn ratio_zero_and_one_require_an_exact_count() {
        assert!(judge(sample(200, 0), check(0.0, 200)).passed());
        assert!(!judge(sample(200, 1), check(0.0, 200)).passed());
        assert!(judge(sample(200, 200), check(1.0, 200)).passed());
        assert!(!judge(sample(200, 199), check(1.0, 200)).passed());
    }

    #[test]
    fn too_small_a_sample_is_a_timeout_not_a_verdict() {
        let report = judge(sample(57, 6), check(0.1, 200));
        assert_eq!(report.outcome, Outcome::TimedOut);
        assert!(!report.passed());
        // More than asked for is judged on all of it.
        let report = judge(sample(212, 23), check(0.1, 200));
        assert_eq!(
            report.outcome,
            Outcome::Within(Interval { low: 8, high: 37 })
        );
    }

    #[test]
    fn samples_count_payments_failures_and_other_records_apart() {
        let mut counted = Sample::default();
        for status in [
            PaymentStatus::Successful,
            PaymentStatus::Failed,
            PaymentStatus::Successful,
            PaymentStatus::Successful,
        ] {
            counted.add(status);
        }
        counted.skip();
        assert_eq!(
            counted,
            Sample {
                payments: 4,
                failed: 1,
                unparsable: 1
            }
        );
        assert_eq!(counted.observed_ratio(), 0.25);
        assert_eq!(Sample::default().observed_ratio(), 0.0);
    }
}
