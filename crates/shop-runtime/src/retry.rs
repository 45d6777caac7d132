//! Waiting for what a service needs at start (usually the broker): each start-up step is
//! retried with backoff until it succeeds or shutdown comes, the process staying up and
//! not ready with the reason meanwhile. A Pod scheduled before Kafka then waits for it
//! instead of crash-looping, and every service behaves the same.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

pub use backon::{
    BackoffBuilder, BlockingRetryable, ConstantBuilder, ExponentialBackoff, ExponentialBuilder,
    Retryable,
};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::Health;

/// The first pause of [`POLICY`].
pub const FIRST: Duration = Duration::from_millis(100);
/// The longest pause of [`POLICY`].
pub const MAX: Duration = Duration::from_secs(5);

/// The retry policy of every service: pauses doubling from 100 ms to 5 s, without jitter
/// and without end (shutdown ends a retry, not a count): quick recovery from a blip, no
/// busy loop during an outage. Loops that decide per error what to do next take its
/// pauses one by one from [`pauses`]; simple ones use `backon`'s [`Retryable`] with it.
pub const POLICY: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(FIRST)
    .with_max_delay(MAX)
    .without_max_times();

/// A fresh sequence of [`POLICY`]'s pauses (build a new one to start over after a success).
pub fn pauses() -> ExponentialBackoff {
    POLICY.build()
}

/// The next pause of `pauses`; [`POLICY`] never runs out, so [`MAX`] is only a formality.
pub fn next_pause(pauses: &mut ExponentialBackoff) -> Duration {
    pauses.next().unwrap_or(MAX)
}

/// Runs the start-up step `what` until it succeeds (`Some`) or `shutdown` comes (`None`),
/// reporting not ready with the step and its last error between attempts.
pub async fn start_up<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    health: &Health,
    attempt: F,
) -> Option<T>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    health.set_ready(false, what);
    let attempts = attempt.retry(POLICY).notify(|error: &E, delay: Duration| {
        warn!(step = what, %error, retry_in = ?delay, "start-up step failed; retrying");
        health.set_ready(false, format!("{what}: {error}"));
    });
    tokio::select! {
        () = shutdown.cancelled() => None,
        // The policy has no end, so an attempt that fails is always tried again.
        result = attempts => result.ok(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pauses_double_from_100_ms_up_to_5_s_and_never_end() {
        let mut pauses = pauses();
        let delays: Vec<_> = (0..8)
            .map(|_| next_pause(&mut pauses).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(pauses.nth(1_000), Some(MAX));
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_is_retried_until_it_succeeds_and_reports_why_meanwhile() {
        let health = Health::new();
        let shutdown = CancellationToken::new();
        let mut attempts = 0;
        let value = start_up("creating topics", &shutdown, &health, || {
            attempts += 1;
            let outcome = if attempts < 4 {
                Err("no broker")
            } else {
                Ok(attempts)
            };
            async move { outcome }
        })
        .await;
        assert_eq!(value, Some(4));
        assert_eq!(health.is_ready().1, "creating topics: no broker");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait() {
        let health = Health::new();
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let value: Option<()> = start_up("creating topics", &shutdown, &health, || async {
            Err("no broker")
        })
        .await;
        assert_eq!(value, None);
    }
}
