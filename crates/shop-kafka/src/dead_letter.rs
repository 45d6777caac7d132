//! Dead letters: what a service writes to its dead-letter topic for a message it cannot
//! process, in one shape for every service.
//!
//! A dead letter carries the original key, value and headers (so a trace continues), and
//! the error, its kind and the source coordinates in headers. It is capped so that the
//! dead-letter topic always accepts it: a poison message larger than what a producer may
//! send (librdkafka's `message.max.bytes`, 1,000,000 by default; the broker's limit is
//! about 1 MiB) would otherwise fail on every retry, and the offset of the message it
//! stands for could never move. A value over [`MAX_VALUE_BYTES`] is cut, its original size
//! in [`ORIGINAL_SIZE_HEADER`]; so is a key over [`MAX_KEY_BYTES`]
//! ([`ORIGINAL_KEY_SIZE_HEADER`]); original headers over [`MAX_ORIGINAL_HEADER_BYTES`] are
//! left out, and the error text is cut to [`MAX_ERROR_BYTES`].

use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders};

use crate::headers::{DeadLetter, dead_letter_headers};

/// The largest value copied into a dead letter.
pub const MAX_VALUE_BYTES: usize = 900_000;
/// The largest key copied into a dead letter.
pub const MAX_KEY_BYTES: usize = 16 * 1024;
/// Original headers larger than this, in all, are not copied.
pub const MAX_ORIGINAL_HEADER_BYTES: usize = 64 * 1024;
/// The longest error text in a dead letter's headers.
pub const MAX_ERROR_BYTES: usize = 4 * 1024;

/// On a dead letter whose value was cut: the original value's size in bytes.
pub const ORIGINAL_SIZE_HEADER: &str = "x-shopstream-original-size";
/// On a dead letter whose key was cut: the original key's size in bytes.
pub const ORIGINAL_KEY_SIZE_HEADER: &str = "x-shopstream-original-key-size";

/// A dead letter ready to send.
#[derive(Debug, Clone)]
pub struct Letter {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: OwnedHeaders,
}

/// The dead letter of `message`, which could not be processed because of `error` (of
/// kind `kind`, e.g. `not_json`), within the caps above.
pub fn letter(message: &impl Message, error: &str, kind: &str) -> Letter {
    let error = cut_str(error, MAX_ERROR_BYTES);
    let why = DeadLetter {
        error,
        kind,
        source_topic: message.topic(),
        source_partition: message.partition(),
        source_offset: message.offset(),
    };
    let original = message
        .headers()
        .filter(|headers| header_bytes(*headers) <= MAX_ORIGINAL_HEADER_BYTES);
    let mut headers = dead_letter_headers(original, &why);
    let mut cut = |bytes: &[u8], max: usize, header: &'static str| {
        if bytes.len() > max {
            headers = std::mem::take(&mut headers).insert(Header {
                key: header,
                value: Some(&bytes.len().to_string()),
            });
            bytes[..max].to_vec()
        } else {
            bytes.to_vec()
        }
    };
    let key = message
        .key()
        .map(|key| cut(key, MAX_KEY_BYTES, ORIGINAL_KEY_SIZE_HEADER));
    let value = message
        .payload()
        .map(|value| cut(value, MAX_VALUE_BYTES, ORIGINAL_SIZE_HEADER));
    Letter {
        key,
        value,
        headers,
    }
}

fn header_bytes(headers: &impl Headers) -> usize {
    headers
        .iter()
        .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
        .sum()
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut_str(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;
    use shop_domain::headers::{ERROR, ERROR_KIND, SOURCE_OFFSET, SOURCE_TOPIC};

    use super::*;
    use crate::headers::header_str;

    fn message(key: Option<&[u8]>, value: Option<&[u8]>) -> OwnedMessage {
        OwnedMessage::new(
            value.map(<[u8]>::to_vec),
            key.map(<[u8]>::to_vec),
            "payments".into(),
            Timestamp::NotAvailable,
            2,
            41,
            None,
        )
    }

    #[test]
    fn a_letter_keeps_key_value_and_says_why_and_where_from() {
        let letter = letter(&message(Some(b"k"), Some(b"{bad")), "not JSON", "not_json");
        assert_eq!(letter.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(letter.value.as_deref(), Some(&b"{bad"[..]));
        let headers = Some(&letter.headers);
        assert_eq!(header_str(headers, ERROR), Some("not JSON"));
        assert_eq!(header_str(headers, ERROR_KIND), Some("not_json"));
        assert_eq!(header_str(headers, SOURCE_TOPIC), Some("payments"));
        assert_eq!(header_str(headers, SOURCE_OFFSET), Some("41"));
        assert_eq!(header_str(headers, ORIGINAL_SIZE_HEADER), None);
    }

    #[test]
    fn oversized_values_keys_and_errors_are_cut_to_what_the_topic_accepts() {
        let huge = vec![b'x'; 1_040_000];
        let key = vec![b'k'; 20_000];
        let error = "é".repeat(3_000);
        let letter = letter(&message(Some(&key), Some(&huge)), &error, "too_large");
        assert_eq!(letter.value.as_ref().unwrap().len(), MAX_VALUE_BYTES);
        assert_eq!(letter.key.as_ref().unwrap().len(), MAX_KEY_BYTES);
        let headers = Some(&letter.headers);
        assert_eq!(header_str(headers, ORIGINAL_SIZE_HEADER), Some("1040000"));
        assert_eq!(header_str(headers, ORIGINAL_KEY_SIZE_HEADER), Some("20000"));
        assert!(header_str(headers, ERROR).unwrap().len() <= MAX_ERROR_BYTES);
    }

    #[test]
    fn a_tombstone_stays_a_letter_without_value() {
        let letter = letter(&message(Some(b"k"), None), "no value", "not_json");
        assert_eq!(letter.value, None);
    }
}
