//! A small writer for JSON objects whose output cannot fail and keeps field order.
//!
//! `serde_json::to_vec` returns a `Result` even for types that cannot fail to serialise,
//! and the workspace forbids `unwrap`. Rendering each field through `serde_json::Value`'s
//! `Display` is infallible, keeps the seed's field order (`order_id`, `user_id`, `amount`,
//! `status`) for people reading topics with a console consumer, and lets unknown fields
//! kept from the input never shadow or duplicate the known ones.

use serde_json::{Map, Value};

/// Builds `{"key":value,...}` field by field.
#[derive(Debug)]
pub(crate) struct ObjectWriter {
    out: String,
    empty: bool,
}

impl ObjectWriter {
    pub(crate) fn new() -> Self {
        ObjectWriter {
            out: String::from("{"),
            empty: true,
        }
    }

    /// Appends one field.
    pub(crate) fn field(mut self, key: &str, value: impl Into<Value>) -> Self {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        // `Value`'s Display writes compact JSON with proper string escaping.
        self.out.push_str(&Value::from(key).to_string());
        self.out.push(':');
        self.out.push_str(&value.into().to_string());
        self
    }

    /// Appends the field when there is a value; leaves it out otherwise, so optional
    /// fields are absent rather than `null` (seed-era readers never saw nulls).
    pub(crate) fn optional(self, key: &str, value: Option<impl Into<Value>>) -> Self {
        match value {
            Some(value) => self.field(key, value),
            None => self,
        }
    }

    /// Appends the fields of `extra` whose names are not in `known`.
    pub(crate) fn extra(self, extra: &Map<String, Value>, known: &[&str]) -> Self {
        extra
            .iter()
            .filter(|(key, _)| !known.contains(&key.as_str()))
            .fold(self, |writer, (key, value)| {
                writer.field(key, value.clone())
            })
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.out.push('}');
        self.out.into_bytes()
    }
}
