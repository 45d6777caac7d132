//! What one order message turns into: a payment for the payments topic, or a dead letter.
//!
//! This is the service's transformation, without any I/O: it reads a message (any
//! `rdkafka::Message`, so tests pass an `OwnedMessage`), applies
//! `shop_domain::decide` with the settings in force, and returns an owned record ready to
//! send plus what to count. Seed-era messages (no key, no headers) are handled like ours:
//! nothing here depends on the key or the headers except the trace, which is continued
//! when present and started otherwise.

use std::time::{Duration, SystemTime};

use rdkafka::Message;
use rdkafka::message::{Headers, OwnedHeaders};
use shop_domain::{InvalidMessage, Order, Payment, TraceParent, decide};
use shop_kafka::headers::{event_headers, traceparent};

/// The largest value copied into a dead letter (see [`shop_kafka::dead_letter`]): the
/// dead-letter topic must accept the copy, or the transaction holding it could never
/// commit.
pub use shop_kafka::dead_letter::{MAX_VALUE_BYTES as DLQ_MAX_VALUE_BYTES, ORIGINAL_SIZE_HEADER};

/// The decision's settings in force: from the flags, or from the latest control record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecisionSettings {
    pub failure_ratio: f64,
    pub seed: u64,
}

/// Where a record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Payments,
    DeadLetters,
}

/// A record to send, owned, so the incoming message can be released first.
#[derive(Debug)]
pub struct Outgoing {
    pub destination: Destination,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: OwnedHeaders,
}

/// What a message amounted to, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    /// Dead-lettered, with the `InvalidMessage::kind` of the problem.
    DeadLettered(&'static str),
}

/// One processed message: its coordinates, what to send, and what it amounted to.
#[derive(Debug)]
pub struct Processed {
    pub partition: i32,
    pub offset: i64,
    pub record: Outgoing,
    pub outcome: Outcome,
    /// From the order's `created_at` to the decision, when the order has a valid one.
    pub latency: Option<Duration>,
}

/// Processes one order message at time `now`.
pub fn process(message: &impl Message, settings: DecisionSettings, now: SystemTime) -> Processed {
    let (record, outcome, latency) = match Order::parse(message.payload().unwrap_or_default()) {
        Ok(order) => {
            let decision = decide(order.order_id, settings.failure_ratio, settings.seed);
            let processed_at = shop_domain::time::rfc3339(now);
            let latency = order
                .created_at
                .as_deref()
                .and_then(|created_at| shop_domain::time::elapsed_since(created_at, now));
            let payment = Payment::for_order(&order, &decision, processed_at);
            tracing::debug!(
                order_id = payment.order_id,
                status = payment.status.as_str(),
                "payment decided"
            );
            let outcome = if decision.is_success() {
                Outcome::Succeeded
            } else {
                Outcome::Failed
            };
            let record = Outgoing {
                destination: Destination::Payments,
                key: Some(payment.key().into_bytes()),
                value: payment.to_json(),
                headers: event_headers(&continue_trace(message.headers())),
            };
            (record, outcome, latency)
        }
        Err(error) => {
            tracing::warn!(
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                kind = error.kind(),
                error = %error,
                "order sent to the dead-letter topic"
            );
            (
                dead_letter(message, &error),
                Outcome::DeadLettered(error.kind()),
                None,
            )
        }
    };
    Processed {
        partition: message.partition(),
        offset: message.offset(),
        record,
        outcome,
        latency,
    }
}

/// The trace context of the payment: a child span of the order's trace when the order
/// carries one, else a new trace (seed-era orders have no headers).
fn continue_trace(headers: Option<&impl Headers>) -> TraceParent {
    match traceparent(headers) {
        Some(parent) => parent.child(nonzero_u64()),
        None => TraceParent::from_ids(
            u128::from(nonzero_u64()) << 64 | u128::from(rand::random::<u64>()),
            nonzero_u64(),
        ),
    }
}

/// W3C forbids all-zero ids.
fn nonzero_u64() -> u64 {
    rand::random::<u64>().max(1)
}

/// The dead letter of an invalid message: its key and value (cut to a size the
/// dead-letter topic accepts), its headers, and the error.
fn dead_letter(message: &impl Message, error: &InvalidMessage) -> Outgoing {
    let letter = shop_kafka::dead_letter::letter(message, &error.to_string(), error.kind());
    Outgoing {
        destination: Destination::DeadLetters,
        key: letter.key,
        value: letter.value.unwrap_or_default(),
        headers: letter.headers,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;
    use shop_domain::headers::{ERROR, ERROR_KIND, SOURCE_OFFSET, TRACEPARENT};
    use shop_domain::{Amount, Decision, PaymentStatus};
    use shop_kafka::headers::header_str;

    use super::*;

    const SETTINGS: DecisionSettings = DecisionSettings {
        failure_ratio: 0.5,
        seed: 7,
    };

    fn message(key: Option<&[u8]>, value: &[u8], headers: Option<OwnedHeaders>) -> OwnedMessage {
        OwnedMessage::new(
            Some(value.to_vec()),
            key.map(<[u8]>::to_vec),
            "orders".into(),
            Timestamp::NotAvailable,
            2,
            41,
            headers,
        )
    }

    fn order(id: u64) -> Order {
        Order::new(
            id,
            37,
            Amount::from_cents(19_999),
            "2025-01-02T03:04:05.000Z".into(),
        )
    }

    fn now() -> SystemTime {
        shop_domain::time::parse_rfc3339("2025-01-02T03:04:05.250Z").unwrap()
    }

    #[test]
    fn valid_order_becomes_the_decided_payment_keyed_by_order_id() {
        for id in 1000..1100 {
            let processed = process(
                &message(Some(b"x"), &order(id).to_json(), None),
                SETTINGS,
                now(),
            );
            let payment = Payment::parse(&processed.record.value).unwrap();
            let decision = decide(id, SETTINGS.failure_ratio, SETTINGS.seed);
            assert_eq!(payment.order_id, id);
            assert_eq!(payment.status, PaymentStatus::from(&decision));
            assert_eq!(payment.reason, decision.reason());
            assert_eq!(
                payment.processed_at.as_deref(),
                Some("2025-01-02T03:04:05.250Z")
            );
            assert_eq!(
                processed.record.key.as_deref(),
                Some(id.to_string().as_bytes())
            );
            assert_eq!(processed.record.destination, Destination::Payments);
            let expected = if decision == Decision::Success {
                Outcome::Succeeded
            } else {
                Outcome::Failed
            };
            assert_eq!(processed.outcome, expected);
            assert_eq!(processed.latency, Some(Duration::from_millis(250)));
            assert_eq!((processed.partition, processed.offset), (2, 41));
        }
    }

    #[test]
    fn seed_era_order_without_key_headers_or_created_at_gets_a_payment_and_a_new_trace() {
        let seed = br#"{"order_id": 1001, "user_id": 37, "amount": 199.99, "status": "created"}"#;
        let processed = process(&message(None, seed, None), SETTINGS, now());
        assert_eq!(processed.record.destination, Destination::Payments);
        assert_eq!(processed.record.key.as_deref(), Some(&b"1001"[..]));
        assert_eq!(processed.latency, None);
        assert!(traceparent(Some(&processed.record.headers)).is_some());
    }

    #[test]
    fn payment_continues_the_orders_trace_in_a_new_span() {
        let parent = TraceParent::for_order(1001, 0);
        let processed = process(
            &message(None, &order(1001).to_json(), Some(event_headers(&parent))),
            SETTINGS,
            now(),
        );
        let child = traceparent(Some(&processed.record.headers)).unwrap();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        assert_eq!(
            header_str(Some(&processed.record.headers), "content-type"),
            Some("application/json")
        );
    }

    #[test]
    fn invalid_order_becomes_a_dead_letter_with_key_value_and_error() {
        let original = event_headers(&TraceParent::for_order(1, 0));
        let processed = process(
            &message(Some(b"k"), b"{\"order_id\": 1", Some(original)),
            SETTINGS,
            now(),
        );
        let record = &processed.record;
        assert_eq!(record.destination, Destination::DeadLetters);
        assert_eq!(processed.outcome, Outcome::DeadLettered("not_json"));
        assert_eq!(record.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(record.value, b"{\"order_id\": 1");
        assert_eq!(
            header_str(Some(&record.headers), ERROR_KIND),
            Some("not_json")
        );
        assert!(
            header_str(Some(&record.headers), ERROR)
                .unwrap()
                .contains("not JSON")
        );
        assert_eq!(header_str(Some(&record.headers), SOURCE_OFFSET), Some("41"));
        assert!(header_str(Some(&record.headers), TRACEPARENT).is_some());
    }

    #[test]
    fn tombstone_is_a_dead_letter_not_a_crash() {
        let tombstone = OwnedMessage::new(
            None,
            Some(b"1".to_vec()),
            "orders".into(),
            Timestamp::NotAvailable,
            0,
            0,
            None,
        );
        let processed = process(&tombstone, SETTINGS, now());
        assert_eq!(processed.outcome, Outcome::DeadLettered("not_json"));
    }

    #[test]
    fn huge_poison_message_is_cut_to_what_the_dead_letter_topic_accepts() {
        let huge = vec![b'x'; 1024 * 1024];
        let processed = process(&message(None, &huge, None), SETTINGS, now());
        assert_eq!(processed.outcome, Outcome::DeadLettered("too_large"));
        assert_eq!(processed.record.value.len(), DLQ_MAX_VALUE_BYTES);
        assert_eq!(
            header_str(Some(&processed.record.headers), ORIGINAL_SIZE_HEADER),
            Some("1048576")
        );
    }
}
