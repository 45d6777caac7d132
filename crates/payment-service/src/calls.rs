//! Calls into librdkafka that block (transaction steps, offset commits, seeks): how long
//! one may take, how to run one without stalling the runtime, and how to read the answer
//! that no transaction is open. Used by the worker and the rebalance callback alike, so it
//! depends on neither.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Timeout of one blocking broker call (transaction steps, offset commits, seeks). Calls
/// that time out are retried, so this bounds how long the loop is deaf to shutdown and
/// control changes during a broker outage, not how long it waits overall.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `error` says the producer has no open transaction. The rebalance callback and
/// the worker can both end a transaction (the callback aborts before partitions are
/// revoked); whichever comes second finds none open, and that transaction is over.
pub(crate) fn no_open_transaction(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::Transaction(e)
            if e.code() == RDKafkaErrorCode::State
    )
}

/// Runs a blocking librdkafka call. On a multi-threaded runtime the worker hands its other
/// tasks to other threads first (`block_in_place`); elsewhere (a current-thread runtime,
/// a plain thread) it simply runs.
pub(crate) fn blocking<T>(call: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(call)
        }
        _ => call(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_calls_run_outside_a_runtime_too() {
        assert_eq!(blocking(|| 7), 7);
    }
}
