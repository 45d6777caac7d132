//! Wire headers: what every order and payment carries, and what a dead letter carries
//! about why it is one.

use rdkafka::message::{Header, Headers, OwnedHeaders};
use shop_domain::headers::{
    CONTENT_TYPE, CONTENT_TYPE_JSON, CURRENT_SCHEMA_VERSION, ERROR, ERROR_KIND, SCHEMA_VERSION,
    SOURCE_OFFSET, SOURCE_PARTITION, SOURCE_TOPIC, TRACEPARENT, TraceParent,
};

/// Headers of an order or payment: JSON content type, schema version, trace context.
pub fn event_headers(traceparent: &TraceParent) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(3)
        .insert(Header {
            key: CONTENT_TYPE,
            value: Some(CONTENT_TYPE_JSON),
        })
        .insert(Header {
            key: SCHEMA_VERSION,
            value: Some(CURRENT_SCHEMA_VERSION),
        })
        .insert(Header {
            key: TRACEPARENT,
            value: Some(&traceparent.to_string()),
        })
}

/// Where a dead letter came from and why it could not be processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter<'a> {
    pub error: &'a str,
    pub kind: &'a str,
    pub source_topic: &'a str,
    pub source_partition: i32,
    pub source_offset: i64,
}

/// Headers of a dead letter: the original headers (so a trace continues), then the error
/// and the source coordinates.
pub fn dead_letter_headers(original: Option<&impl Headers>, why: &DeadLetter<'_>) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new();
    if let Some(original) = original {
        for header in original.iter() {
            headers = headers.insert(Header {
                key: header.key,
                value: header.value,
            });
        }
    }
    headers
        .insert(Header {
            key: ERROR,
            value: Some(why.error),
        })
        .insert(Header {
            key: ERROR_KIND,
            value: Some(why.kind),
        })
        .insert(Header {
            key: SOURCE_TOPIC,
            value: Some(why.source_topic),
        })
        .insert(Header {
            key: SOURCE_PARTITION,
            value: Some(&why.source_partition.to_string()),
        })
        .insert(Header {
            key: SOURCE_OFFSET,
            value: Some(&why.source_offset.to_string()),
        })
}

/// The value of the last header named `name`, when it is UTF-8.
pub fn header_str<'a>(headers: Option<&'a impl Headers>, name: &str) -> Option<&'a str> {
    let headers = headers?;
    headers
        .iter()
        .filter(|h| h.key == name)
        .last()
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// The trace context of an incoming message, if it carries a valid one.
pub fn traceparent(headers: Option<&impl Headers>) -> Option<TraceParent> {
    header_str(headers, TRACEPARENT).and_then(TraceParent::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_headers_carry_content_type_schema_and_trace() {
        let tp = TraceParent::from_ids(0xabc, 0x12);
        let headers = event_headers(&tp);
        assert_eq!(
            header_str(Some(&headers), CONTENT_TYPE),
            Some("application/json")
        );
        assert_eq!(header_str(Some(&headers), SCHEMA_VERSION), Some("1"));
        assert_eq!(traceparent(Some(&headers)), Some(tp));
    }

    #[test]
    fn dead_letters_keep_original_headers_and_add_the_error() {
        let original = event_headers(&TraceParent::from_ids(1, 2));
        let why = DeadLetter {
            error: "missing field order_id",
            kind: "missing_field",
            source_topic: "orders",
            source_partition: 2,
            source_offset: 41,
        };
        let headers = dead_letter_headers(Some(&original), &why);
        assert_eq!(
            header_str(Some(&headers), ERROR),
            Some("missing field order_id")
        );
        assert_eq!(
            header_str(Some(&headers), ERROR_KIND),
            Some("missing_field")
        );
        assert_eq!(header_str(Some(&headers), SOURCE_OFFSET), Some("41"));
        assert!(traceparent(Some(&headers)).is_some());
    }
}
