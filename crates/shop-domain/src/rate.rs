//! Pacing of order generation: how many orders may be sent now.
//!
//! The pacer is a schedule, not a token bucket refilled per tick: since its anchor, the
//! k-th send is due at `anchor + k / rate`. The long-run rate is therefore exact whatever
//! the caller's wake-up jitter, and the caller can sleep until [`Pacer::next_due`]
//! instead of polling. Time is passed in (a `Duration` since any fixed origin, e.g. a
//! process-start `Instant`), so tests simulate hours in microseconds.
//!
//! Two things the schedule alone would get wrong are handled explicitly: a caller that
//! stalls (GC-free Rust still stalls: a broker outage, a blocked producer queue) may catch
//! up only [`max_burst`] sends, not the whole backlog; and a rate change re-anchors the
//! schedule at the change, so the new rate is not applied retroactively.

use std::time::Duration;

/// The highest rate accepted, in sends per second (the `ShopPipeline` bound).
pub const MAX_RATE: f64 = 100_000.0;

/// How much time worth of sends a late caller may catch up at once, in seconds. One
/// second: a process descheduled for a few hundred milliseconds on a busy node (as `make
/// bench` saw on 2 shared cores) still sends its rate over every 10-second window, and a
/// long outage does not end in a flood.
pub const BURST_WINDOW_SECS: f64 = 1.0;

/// A rate that is not a finite number in `0..=100000`.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("orders per second must be a finite number in 0..=100000, got {0}")]
pub struct RateError(pub f64);

/// Checks that `rate` is a valid orders-per-second value; returns it unchanged if so.
pub fn validate_rate(rate: f64) -> Result<f64, RateError> {
    if rate.is_finite() && (0.0..=MAX_RATE).contains(&rate) {
        Ok(rate)
    } else {
        Err(RateError(rate))
    }
}

/// The most sends a late caller may catch up at once at `rate`: [`BURST_WINDOW_SECS`]
/// worth, at least 1.
pub fn max_burst(rate: f64) -> u64 {
    // Saturating float-to-int cast: NaN becomes 0, then the floor of 1 applies.
    ((rate * BURST_WINDOW_SECS).ceil() as u64).max(1)
}

/// Paces sends to a rate on an injected clock.
///
/// Use: `let n = pacer.due(now)`, send `n`, `pacer.take(n)`; when `n` is 0, sleep until
/// `pacer.next_due()` or until the rate changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Pacer {
    rate: f64,
    paused: bool,
    /// Start of the current schedule: creation, or the last rate or pause change.
    anchor: Duration,
    /// Sends accrued but not taken at the anchor: the fractional progress towards the
    /// next send, plus any backlog (capped) carried over from the previous schedule.
    /// Negative when the caller took more than was due.
    credit: f64,
    /// Sends taken since the anchor.
    taken: u64,
    /// Sends that fell due but were forgotten, beyond what a late caller may catch up.
    skipped: u64,
}

impl Pacer {
    /// A pacer at `rate` sends per second starting at `now`; the first send is due at
    /// `now + 1 / rate`. An invalid rate is clamped into range (NaN counts as 0); check
    /// input with [`validate_rate`] first to report it.
    pub fn new(rate: f64, now: Duration) -> Pacer {
        Pacer {
            rate: clamp_rate(rate),
            paused: false,
            anchor: now,
            credit: 0.0,
            taken: 0,
            skipped: 0,
        }
    }

    /// The rate in sends per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Whether sending is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Sends skipped since creation: due, but beyond the [`max_burst`] a late caller may
    /// catch up (in [`Pacer::due`], or carried over a rate or pause change). The caller
    /// reports them, so a stall shows as a number instead of a silent shortfall.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// How many sends are due at `now` and not yet taken, at most [`max_burst`].
    ///
    /// Takes `&mut self` because a backlog beyond the cap is forgotten here: those sends
    /// are skipped, not delayed, so the schedule resumes from `now` after a stall.
    pub fn due(&mut self, now: Duration) -> u64 {
        if !self.is_running() {
            return 0;
        }
        // Saturating cast: a negative credit means nothing is due yet.
        let accrued = self.accrued(now).floor() as u64;
        let backlog = accrued.saturating_sub(self.taken);
        let burst = max_burst(self.rate);
        if backlog > burst {
            self.taken = accrued - burst;
            self.skipped = self.skipped.saturating_add(backlog - burst);
        }
        backlog.min(burst)
    }

    /// Records that `n` sends were made.
    pub fn take(&mut self, n: u64) {
        self.taken = self.taken.saturating_add(n);
    }

    /// When the next send not yet taken is (or was) due; `None` while paused or at rate
    /// 0, when nothing will become due until the rate or pause state changes.
    pub fn next_due(&self) -> Option<Duration> {
        if !self.is_running() {
            return None;
        }
        let missing = (self.taken as f64 + 1.0 - self.credit).max(0.0);
        // Rounded up to the next nanosecond (plus one) so that `due(next_due)` is at
        // least 1 despite float rounding, and the caller never wakes up too early.
        let nanos = (missing / self.rate * 1e9).ceil() as u64;
        Some(self.anchor + Duration::from_nanos(nanos.saturating_add(1)))
    }

    /// Starts the schedule afresh at `now`, owing nothing accrued before: for a caller
    /// that could not send at all until now (e.g. it had no order ids yet), whose first
    /// send is then due one interval after `now` instead of a catch-up burst and a skip.
    /// Rate, pause state and the skipped count are kept.
    pub fn restart(&mut self, now: Duration) {
        self.anchor = now;
        self.credit = 0.0;
        self.taken = 0;
    }

    /// Changes the rate from `now` on. Sends already accrued keep their place (up to
    /// [`max_burst`] of the new rate) and so does the fractional progress towards the
    /// next send, so a change neither bursts nor stutters.
    pub fn set_rate(&mut self, rate: f64, now: Duration) {
        let rate = clamp_rate(rate);
        self.reanchor(now, rate);
        self.rate = rate;
    }

    /// Pauses or resumes sending at `now`. Progress is frozen while paused, so resuming
    /// continues where the schedule stopped instead of sending the paused time's worth.
    pub fn set_paused(&mut self, paused: bool, now: Duration) {
        self.reanchor(now, self.rate);
        self.paused = paused;
    }

    fn is_running(&self) -> bool {
        !self.paused && self.rate > 0.0
    }

    /// Sends accrued since the anchor, including the carried credit.
    fn accrued(&self, now: Duration) -> f64 {
        if !self.is_running() {
            return self.credit;
        }
        self.credit + now.saturating_sub(self.anchor).as_secs_f64() * self.rate
    }

    /// Starts a new schedule at `now`, carrying over what was accrued and not taken.
    fn reanchor(&mut self, now: Duration, next_rate: f64) {
        let outstanding = self.accrued(now) - self.taken as f64;
        let cap = max_burst(next_rate) as f64;
        if outstanding > cap {
            // Saturating cast of a positive whole number of sends.
            let forgotten = (outstanding.floor() - cap) as u64;
            self.skipped = self.skipped.saturating_add(forgotten);
        }
        self.credit = outstanding.min(cap);
        self.anchor = now;
        self.taken = 0;
    }
}

fn clamp_rate(rate: f64) -> f64 {
    if rate.is_nan() {
        0.0
    } else {
        rate.clamp(0.0, MAX_RATE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mix::{fmix, unit_interval};

    const MS: Duration = Duration::from_millis(1);

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// Drives `pacer` like a service loop would, waking up every `step()` until `until`,
    /// and returns how many sends it made.
    fn run(
        pacer: &mut Pacer,
        from: Duration,
        until: Duration,
        mut step: impl FnMut() -> Duration,
    ) -> u64 {
        let mut now = from;
        let mut sent = 0;
        while now < until {
            now = (now + step()).min(until);
            let n = pacer.due(now);
            pacer.take(n);
            sent += n;
        }
        sent
    }

    /// Steps of `base` scaled by a deterministic factor in [0.5, 1.5).
    fn jittery(base: Duration) -> impl FnMut() -> Duration {
        let mut i = 0;
        move || {
            i += 1;
            base.mul_f64(0.5 + unit_interval(fmix(i)))
        }
    }

    #[test]
    fn long_run_count_matches_rate_within_one_percent() {
        for rate in [0.01_f64, 1.0, 1000.0, 50_000.0] {
            // At least 10 s, and long enough to expect 1000 sends at slow rates.
            let duration = (1000.0 / rate).max(10.0);
            let base = secs((0.1 / rate).max(0.001));
            let expected = rate * duration;
            for (name, sent) in [
                (
                    "steady",
                    run(
                        &mut Pacer::new(rate, Duration::ZERO),
                        Duration::ZERO,
                        secs(duration),
                        || base,
                    ),
                ),
                (
                    "jittery",
                    run(
                        &mut Pacer::new(rate, Duration::ZERO),
                        Duration::ZERO,
                        secs(duration),
                        jittery(base),
                    ),
                ),
            ] {
                let error = (sent as f64 - expected).abs() / expected;
                assert!(
                    error <= 0.01,
                    "{rate}/s {name}: {sent} sends, expected {expected}"
                );
            }
        }
    }

    #[test]
    fn first_send_is_due_one_interval_after_start() {
        let mut pacer = Pacer::new(2.0, secs(5.0));
        assert_eq!(pacer.due(secs(5.0)), 0);
        assert_eq!(pacer.next_due(), Some(secs(5.5) + Duration::from_nanos(1)));
        assert_eq!(pacer.due(secs(5.5)), 1);
    }

    #[test]
    fn next_due_is_exactly_when_a_send_becomes_due() {
        let mut pacer = Pacer::new(3.0, Duration::ZERO);
        let mut now = Duration::ZERO;
        for _ in 0..100 {
            let next = pacer.next_due().unwrap();
            assert!(next > now);
            assert_eq!(
                pacer.clone().due(next - Duration::from_nanos(2)),
                0,
                "early at {next:?}"
            );
            assert_eq!(pacer.due(next), 1, "not due at {next:?}");
            pacer.take(1);
            now = next;
        }
    }

    #[test]
    fn rate_change_takes_effect_at_the_change_time() {
        let mut pacer = Pacer::new(10.0, Duration::ZERO);
        assert_eq!(run(&mut pacer, Duration::ZERO, secs(1.0), || MS), 10);
        pacer.set_rate(100.0, secs(1.0));
        assert_eq!(pacer.due(secs(1.0)), 0, "a rate increase must not burst");
        assert_eq!(run(&mut pacer, secs(1.0), secs(2.0), || MS), 100);
        pacer.set_rate(1.0, secs(2.0));
        assert_eq!(run(&mut pacer, secs(2.0), secs(12.0), || MS), 10);
    }

    #[test]
    fn rate_change_keeps_fractional_progress() {
        let mut pacer = Pacer::new(1.0, Duration::ZERO);
        pacer.set_rate(1.0, secs(0.7));
        let next = pacer.next_due().unwrap();
        assert!((next.as_secs_f64() - 1.0).abs() < 1e-6, "{next:?}");
    }

    #[test]
    fn paused_pacer_sends_nothing_and_resumes_without_burst() {
        let mut pacer = Pacer::new(100.0, Duration::ZERO);
        assert_eq!(run(&mut pacer, Duration::ZERO, secs(0.5), || MS), 50);
        pacer.set_paused(true, secs(0.5));
        assert_eq!(pacer.next_due(), None);
        assert_eq!(run(&mut pacer, secs(0.5), secs(60.0), || MS), 0);
        pacer.set_paused(false, secs(60.0));
        assert_eq!(pacer.due(secs(60.0)), 0);
        assert_eq!(run(&mut pacer, secs(60.0), secs(61.0), || MS), 100);
    }

    #[test]
    fn zero_rate_sends_nothing() {
        let mut pacer = Pacer::new(0.0, Duration::ZERO);
        assert_eq!(pacer.next_due(), None);
        assert_eq!(
            run(&mut pacer, Duration::ZERO, secs(100.0), || secs(0.1)),
            0
        );
    }

    #[test]
    fn long_stall_catches_up_at_most_max_burst() {
        let mut pacer = Pacer::new(1000.0, Duration::ZERO);
        assert_eq!(run(&mut pacer, Duration::ZERO, secs(1.0), || MS), 1000);
        // The caller hangs for a minute: 60 000 sends are late, only 1000 may go now.
        assert_eq!(pacer.due(secs(61.0)), max_burst(1000.0));
        assert_eq!(max_burst(1000.0), 1000);
        pacer.take(1000);
        assert_eq!(pacer.due(secs(61.0)), 0);
        assert_eq!(
            pacer.skipped(),
            60_000 - 1000,
            "the rest is counted as skipped"
        );
        assert_eq!(run(&mut pacer, secs(61.0), secs(62.0), || MS), 1000);
        assert_eq!(pacer.skipped(), 60_000 - 1000);
    }

    #[test]
    fn a_stall_shorter_than_the_catch_up_window_loses_nothing() {
        let mut pacer = Pacer::new(100_000.0, Duration::ZERO);
        let mut sent = run(&mut pacer, Duration::ZERO, secs(3.0), || MS);
        // Descheduled for 0.8 s, then back to the usual pace.
        sent += run(&mut pacer, secs(3.0), secs(3.8), || secs(0.8));
        sent += run(&mut pacer, secs(3.8), secs(10.0), || MS);
        assert_eq!(sent, 1_000_000);
        assert_eq!(pacer.skipped(), 0);
    }

    #[test]
    fn a_restart_owes_nothing_from_before_it() {
        let mut pacer = Pacer::new(100.0, Duration::ZERO);
        pacer.restart(secs(5.0));
        assert_eq!(pacer.due(secs(5.0)), 0);
        assert_eq!(pacer.skipped(), 0);
        assert_eq!(run(&mut pacer, secs(5.0), secs(6.0), || MS), 100);
    }

    #[test]
    fn a_caller_that_keeps_up_skips_nothing() {
        let mut pacer = Pacer::new(1000.0, Duration::ZERO);
        assert_eq!(
            run(&mut pacer, Duration::ZERO, secs(10.0), jittery(MS)),
            10_000
        );
        pacer.set_rate(10.0, secs(10.0));
        assert_eq!(pacer.skipped(), 0);
    }

    #[test]
    fn a_backlog_dropped_by_a_rate_change_is_counted_as_skipped() {
        let mut pacer = Pacer::new(1000.0, Duration::ZERO);
        // 500 sends due and not taken; the new rate may carry over only 10 (1 s at 10/s).
        pacer.set_rate(10.0, secs(0.5));
        assert_eq!(pacer.skipped(), 490);
        assert_eq!(pacer.due(secs(0.5)), 10);
    }

    #[test]
    fn max_burst_is_a_second_and_at_least_one() {
        assert_eq!(max_burst(0.0), 1);
        assert_eq!(max_burst(0.01), 1);
        assert_eq!(max_burst(2.5), 3);
        assert_eq!(max_burst(50_000.0), 50_000);
    }

    #[test]
    fn invalid_rates_are_refused_with_the_allowed_range() {
        assert_eq!(validate_rate(0.0), Ok(0.0));
        assert_eq!(validate_rate(100_000.0), Ok(100_000.0));
        for rate in [-1.0, 100_000.5, f64::NAN, f64::INFINITY] {
            let error = validate_rate(rate).unwrap_err();
            assert!(error.to_string().contains("0..=100000"), "{error}");
        }
    }

    #[test]
    fn invalid_rates_are_clamped_by_the_pacer() {
        assert_eq!(Pacer::new(f64::NAN, Duration::ZERO).rate(), 0.0);
        assert_eq!(Pacer::new(1e9, Duration::ZERO).rate(), MAX_RATE);
        assert_eq!(Pacer::new(-5.0, Duration::ZERO).rate(), 0.0);
    }
}
