//! The one client context of every shopstream Kafka client: librdkafka's log lines and
//! client errors into tracing, each mapped one way, and repeats of the same failure
//! logged once.
//!
//! librdkafka reports a lost broker three times over: a log line (facility `FAIL`), a
//! client error, and again at every reconnection attempt while the outage lasts. Here the
//! client error is the one that is logged (once per [`ClientLog::REPEAT_PERIOD`] while it
//! stays the same, with the number of repeats not logged), and the `FAIL` line is left at
//! debug. Reading a compacted topic to its end relies on partition-EOF events, which
//! librdkafka also reports to the error callback: they are what was asked for, so they are
//! not logged at all. Client errors are transient (librdkafka retries by itself), so they
//! are warnings; what a service cannot recover from reaches it as an error result.
//!
//! Services with callbacks of their own (rebalances, deliveries, statistics) keep a
//! [`ClientLog`] in their context and hand `log` and `error` to it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tracing::{debug, error, info, warn};

/// Logs librdkafka's lines and errors of one client, named `client` in every line.
#[derive(Debug, Clone)]
pub struct ClientLog {
    client: Arc<str>,
    errors: Arc<Mutex<Repeats>>,
}

impl ClientLog {
    /// How long the same client error stays unlogged after it was logged.
    pub const REPEAT_PERIOD: Duration = Duration::from_secs(30);

    /// The context of the client `client` (its role, e.g. `producer` or `control`).
    pub fn new(client: impl Into<Arc<str>>) -> Self {
        Self {
            client: client.into(),
            errors: Arc::new(Mutex::new(Repeats::new(Self::REPEAT_PERIOD))),
        }
    }

    /// The client's name in log lines.
    pub fn client(&self) -> &str {
        &self.client
    }

    /// Logs one librdkafka log line.
    pub fn log_line(&self, level: RDKafkaLogLevel, facility: &str, detail: &str) {
        let client = &*self.client;
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                error!(client, facility, detail, "librdkafka");
            }
            // A failed connection also arrives as a client error, logged there once.
            RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning if facility == "FAIL" => {
                debug!(client, facility, detail, "librdkafka");
            }
            // librdkafka logs a failed request as an error and then retries it.
            RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning => {
                warn!(client, facility, detail, "librdkafka");
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(client, facility, detail, "librdkafka");
            }
            RDKafkaLogLevel::Debug => debug!(client, facility, detail, "librdkafka"),
        }
    }

    /// Logs a client error as a warning, unless it is a partition EOF or the same error
    /// was logged less than [`Self::REPEAT_PERIOD`] ago (then at debug).
    pub fn client_error(&self, error: &KafkaError, reason: &str) {
        if is_partition_eof(error) {
            return;
        }
        let client = &*self.client;
        let admitted = self
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(&format!("{error}: {reason}"), Instant::now());
        match admitted {
            Some(repeats_not_logged) => {
                warn!(client, %error, reason, repeats_not_logged, "Kafka client error; retrying");
            }
            None => debug!(client, %error, reason, "Kafka client error again"),
        }
    }
}

impl ClientContext for ClientLog {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, detail: &str) {
        self.log_line(level, facility, detail);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.client_error(&error, reason);
    }
}

impl ConsumerContext for ClientLog {}

fn is_partition_eof(error: &KafkaError) -> bool {
    matches!(error, KafkaError::PartitionEOF(_))
        || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
}

/// The one de-duplication of repeated log lines: a line is let through when it differs
/// from the last one let through, or when `period` has passed since; the others are
/// counted, and the count goes with the next line let through.
#[derive(Debug)]
pub struct Repeats {
    period: Duration,
    last: Option<(String, Instant)>,
    suppressed: u64,
}

impl Repeats {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(lines not let through since the last one that was)` when `line` should be
    /// logged at `now`, else `None`.
    pub fn admit(&mut self, line: &str, now: Instant) -> Option<u64> {
        if let Some((last, at)) = &self.last
            && last == line
            && now.saturating_duration_since(*at) < self.period
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some((line.to_owned(), now));
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_line_is_let_through_once_per_period_with_the_count_of_the_rest() {
        let period = Duration::from_secs(1);
        let mut repeats = Repeats::new(period);
        let start = Instant::now();
        assert_eq!(repeats.admit("down", start), Some(0));
        assert_eq!(repeats.admit("down", start + period / 10), None);
        assert_eq!(repeats.admit("down", start + period / 5), None);
        assert_eq!(repeats.admit("down", start + period), Some(2));
        assert_eq!(repeats.admit("down", start + period * 3), Some(0));
    }

    #[test]
    fn a_different_line_is_let_through_at_once() {
        let mut repeats = Repeats::new(Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(repeats.admit("broker down", now), Some(0));
        assert_eq!(repeats.admit("broker down", now), None);
        assert_eq!(repeats.admit("all brokers down", now), Some(1));
        assert_eq!(repeats.admit("broker down", now), Some(0));
    }
}
