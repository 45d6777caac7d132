//! Kafka header names and the W3C `traceparent` value.
//!
//! Headers carry what is about a message rather than in it: its format, the trace it
//! belongs to, and, on dead letters, why it was rejected and where it came from. Seed-era
//! messages have no headers, so every reader treats all of them as optional.
//! Random trace and span ids are drawn by callers and passed in, keeping this crate pure;
//! [`TraceParent::for_order`] derives reproducible ids for tests and replays.

use std::fmt;

use crate::mix::{Stream, mix};

/// The media type of the value.
pub const CONTENT_TYPE: &str = "content-type";
/// The only content type shopstream writes.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// The version of the value's schema, so a reader can tell formats apart without parsing.
pub const SCHEMA_VERSION: &str = "schema-version";
/// The schema version this crate reads and writes.
pub const CURRENT_SCHEMA_VERSION: &str = "1";
/// The W3C trace context of the message (see [`TraceParent`]).
pub const TRACEPARENT: &str = "traceparent";

/// On a dead letter: the human-readable error (`InvalidMessage`'s Display).
pub const ERROR: &str = "x-shopstream-error";
/// On a dead letter: the short error code (`InvalidMessage::kind`).
pub const ERROR_KIND: &str = "x-shopstream-error-kind";
/// On a dead letter: the topic the message was read from.
pub const SOURCE_TOPIC: &str = "x-shopstream-source-topic";
/// On a dead letter: the partition the message was read from, in decimal.
pub const SOURCE_PARTITION: &str = "x-shopstream-source-partition";
/// On a dead letter: the offset the message was read from, in decimal.
pub const SOURCE_OFFSET: &str = "x-shopstream-source-offset";

/// A W3C Trace Context `traceparent`: `00-<trace id>-<span id>-<flags>`.
///
/// See <https://www.w3.org/TR/trace-context/#traceparent-header>. Only the `sampled`
/// flag is defined; other flag bits are dropped when re-encoding, as the spec allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceParent {
    /// A sampled trace context from numeric ids (big-endian, as they print in hex).
    /// Zero ids are invalid in W3C; callers drawing random ids should redraw on zero.
    pub fn from_ids(trace: u128, span: u64) -> TraceParent {
        TraceParent {
            trace_id: trace.to_be_bytes(),
            span_id: span.to_be_bytes(),
            sampled: true,
        }
    }

    /// A reproducible, valid (non-zero) trace context for an order under `seed`.
    pub fn for_order(order_id: u64, seed: u64) -> TraceParent {
        let high = mix(Stream::TraceHigh, seed, order_id);
        let low = mix(Stream::TraceLow, seed, order_id);
        let trace = ((u128::from(high) << 64) | u128::from(low)).max(1);
        TraceParent::from_ids(trace, mix(Stream::Span, seed, order_id).max(1))
    }

    /// The context for work caused by this one: same trace and sampling, new span.
    pub fn child(&self, span_id: u64) -> TraceParent {
        TraceParent {
            span_id: span_id.to_be_bytes(),
            ..*self
        }
    }

    /// The trace id as a number.
    pub fn trace_id_u128(&self) -> u128 {
        u128::from_be_bytes(self.trace_id)
    }

    /// The span id as a number.
    pub fn span_id_u64(&self) -> u64 {
        u64::from_be_bytes(self.span_id)
    }

    /// Parses a `traceparent` header value; `None` when it is invalid and must be
    /// ignored: bad lengths or characters (hex must be lowercase), version `ff`, all-zero
    /// trace or span id. Versions above 00 are read by their 00 prefix, as the spec asks.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let mut parts = value.split('-');
        let version = hex(parts.next()?, 2)?;
        let trace_id = hex(parts.next()?, 32)?;
        let span_id = hex(parts.next()?, 16)?;
        let flags = hex(parts.next()?, 2)?;
        let has_more = parts.next().is_some();
        let valid = match version {
            0xff => false,
            // Version 00 has exactly four fields; later versions may append more.
            0x00 => !has_more,
            _ => true,
        };
        let ids_set = trace_id != 0 && span_id != 0;
        (valid && ids_set).then(|| TraceParent {
            sampled: flags & 1 == 1,
            // The lengths were checked: the ids fit.
            ..TraceParent::from_ids(trace_id, u64::try_from(span_id).unwrap_or_default())
        })
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = if self.sampled { "01" } else { "00" };
        write!(
            f,
            "00-{:032x}-{:016x}-{flags}",
            self.trace_id_u128(),
            self.span_id_u64()
        )
    }
}

/// The number written as exactly `digits` lowercase hex digits. `from_str_radix` alone
/// would also take a sign and upper case, which `traceparent` forbids.
fn hex(text: &str, digits: usize) -> Option<u128> {
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    (text.len() == digits && text.bytes().all(lower_hex))
        .then(|| u128::from_str_radix(text, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn w3c_example_round_trips() {
        let parsed = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(parsed.trace_id_u128(), 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parsed.span_id_u64(), 0x00f067aa0ba902b7);
        assert!(parsed.sampled);
        assert_eq!(parsed.to_string(), EXAMPLE);
    }

    #[test]
    fn unsampled_flag_is_kept() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let parsed = TraceParent::parse(value).unwrap();
        assert!(!parsed.sampled);
        assert_eq!(parsed.to_string(), value);
    }

    #[test]
    fn invalid_values_are_rejected() {
        for value in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47é6-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(value), None, "{value:?}");
        }
    }

    #[test]
    fn future_versions_are_read_by_their_known_prefix() {
        let value = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        assert_eq!(TraceParent::parse(value), TraceParent::parse(EXAMPLE));
    }

    #[test]
    fn child_keeps_trace_and_changes_span() {
        let parent = TraceParent::from_ids(0xabc, 0x1);
        let child = parent.child(0x2);
        assert_eq!(child.trace_id, parent.trace_id);
        assert_eq!(child.span_id_u64(), 2);
        assert_eq!(child.sampled, parent.sampled);
        assert_eq!(
            child.to_string(),
            "00-00000000000000000000000000000abc-0000000000000002-01"
        );
    }

    #[test]
    fn trace_for_order_is_reproducible_valid_and_distinct() {
        let a = TraceParent::for_order(1001, 42);
        assert_eq!(a, TraceParent::for_order(1001, 42));
        assert_ne!(a.trace_id, TraceParent::for_order(1002, 42).trace_id);
        assert_ne!(a.trace_id, TraceParent::for_order(1001, 43).trace_id);
        assert_eq!(TraceParent::parse(&a.to_string()), Some(a));
    }
}
