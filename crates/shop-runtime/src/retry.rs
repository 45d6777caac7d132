//! Waiting for what a service needs at start (usually the broker): each start-up step is
//! retried with backoff until it succeeds or shutdown comes, the process staying up and
//! not ready with the reason meanwhile. A Pod scheduled before Kafka then waits for it
//! instead of crash-looping, and every service behaves the same.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::Health;

/// Doubling pauses between attempts, from 100 ms to 5 s: quick recovery from a blip, no
/// busy loop during an outage.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(100);
    pub const MAX: Duration = Duration::from_secs(5);

    /// The pause before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    /// Starts over at the first pause, after a success.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Runs the start-up step `what` until it succeeds (`Some`) or `shutdown` comes (`None`),
/// reporting not ready with the step and its last error between attempts.
pub async fn start_up<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    health: &Health,
    mut attempt: F,
) -> Option<T>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::default();
    health.set_ready(false, what);
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return None,
            result = attempt() => result,
        };
        match result {
            Ok(value) => return Some(value),
            Err(error) => {
                let delay = backoff.next_delay();
                warn!(step = what, %error, retry_in = ?delay, "start-up step failed; retrying");
                health.set_ready(false, format!("{what}: {error}"));
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_reset() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..8).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays[0], Backoff::FIRST);
        assert_eq!(delays[1], Backoff::FIRST * 2);
        assert_eq!(delays[7], Backoff::MAX);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Backoff::FIRST);
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
