//! The control loop's records: what a pipeline should do, and what each replica applied.
//!
//! Both live on compacted topics so a service starting up reads the latest state from the
//! beginning of the topic. A [`ControlRecord`] (key: the pipeline, `<namespace>/<name>`
//! under the controller, any string such as `demo` by hand) is published by the
//! controller or a CLI; every service replica publishes a [`Heartbeat`] (key:
//! [`heartbeat_key`]) saying which generation it applied, which the controller turns into
//! the `ShopPipeline` status. Unknown fields are kept so older and newer writers coexist.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::events::MAX_MESSAGE_BYTES;
use crate::json::ObjectWriter;
use crate::rate::MAX_RATE;

/// Compacted topic of control records, keyed by pipeline.
pub const CONTROL_TOPIC: &str = "shopstream.control";
/// Compacted topic of heartbeats, keyed by [`heartbeat_key`].
pub const HEARTBEAT_TOPIC: &str = "shopstream.heartbeats";
/// Single-partition topic whose offsets number order-id blocks (see [`crate::ids`]).
pub const ID_BLOCK_TOPIC: &str = "shopstream.order-id-blocks";

/// Why a control record or heartbeat was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ControlError {
    #[error("{what} is {size} bytes, more than the {max}-byte limit")]
    TooLarge {
        what: &'static str,
        size: usize,
        max: usize,
    },
    #[error("{what} is not valid: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("{field} is {value}, allowed: a finite number in {allowed}")]
    OutOfRange {
        field: &'static str,
        value: f64,
        allowed: &'static str,
    },
}

/// The desired settings of one pipeline.
///
/// `generation` increases with every change (the controller uses the resource's
/// `metadata.generation`), so heartbeats can say which one a replica applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlRecord {
    pub generation: u64,
    /// In `0..=100000`; fractions allowed.
    pub orders_per_second: f64,
    /// In `0..=1`.
    pub payment_failure_ratio: f64,
    /// Defaults to `false` when absent, for hand-written records.
    #[serde(default)]
    pub paused: bool,
    /// Seed of the payment decision; defaults to 0 when absent.
    #[serde(default)]
    pub seed: u64,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

const CONTROL_FIELDS: [&str; 5] = [
    "generation",
    "orders_per_second",
    "payment_failure_ratio",
    "paused",
    "seed",
];

impl ControlRecord {
    /// Checks the bounds that `ShopPipeline`'s schema also enforces; a record from a
    /// careless writer must not make services misbehave.
    pub fn validate(&self) -> Result<(), ControlError> {
        check_range(
            "orders_per_second",
            self.orders_per_second,
            MAX_RATE,
            "0..=100000",
        )?;
        check_range(
            "payment_failure_ratio",
            self.payment_failure_ratio,
            1.0,
            "0..=1",
        )
    }

    /// Parses and validates a control record from a message value.
    pub fn parse(bytes: &[u8]) -> Result<ControlRecord, ControlError> {
        let record: ControlRecord = parse_json("control record", bytes)?;
        record.validate()?;
        Ok(record)
    }

    /// The message value, as compact JSON.
    pub fn to_json(&self) -> Vec<u8> {
        ObjectWriter::new()
            .field("generation", self.generation)
            .field("orders_per_second", self.orders_per_second)
            .field("payment_failure_ratio", self.payment_failure_ratio)
            .field("paused", self.paused)
            .field("seed", self.seed)
            .extra(&self.extra, &CONTROL_FIELDS)
            .finish()
    }
}

fn check_range(
    field: &'static str,
    value: f64,
    max: f64,
    allowed: &'static str,
) -> Result<(), ControlError> {
    if value.is_finite() && (0.0..=max).contains(&value) {
        Ok(())
    } else {
        Err(ControlError::OutOfRange {
            field,
            value,
            allowed,
        })
    }
}

/// What one service replica reports about itself, periodically and on every change.
///
/// The `Option` settings are the values the replica applied; each service reports the
/// ones it uses (order-service the rate, payment-service the ratio).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The pipeline's control-record key.
    pub pipeline: String,
    /// `order-service`, `payment-service` or `notification-service`.
    pub service: String,
    /// The replica, e.g. its Pod name.
    pub instance: String,
    /// The generation of the last control record applied; `None` while running on
    /// flags/env only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orders_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_failure_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// Monotonic totals since the replica started (e.g. `orders_sent`), from which the
    /// controller derives rates.
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
    /// When the heartbeat was written (RFC 3339), to tell live replicas from gone ones.
    pub timestamp: String,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

const HEARTBEAT_FIELDS: [&str; 9] = [
    "pipeline",
    "service",
    "instance",
    "applied_generation",
    "orders_per_second",
    "payment_failure_ratio",
    "paused",
    "counters",
    "timestamp",
];

impl Heartbeat {
    /// Parses a heartbeat from a message value.
    pub fn parse(bytes: &[u8]) -> Result<Heartbeat, ControlError> {
        parse_json("heartbeat", bytes)
    }

    /// The message key, [`heartbeat_key`] of this replica.
    pub fn key(&self) -> String {
        heartbeat_key(&self.pipeline, &self.service, &self.instance)
    }

    /// The message value, as compact JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let counters: Map<String, Value> = self
            .counters
            .iter()
            .map(|(name, n)| (name.clone(), Value::from(*n)))
            .collect();
        ObjectWriter::new()
            .field("pipeline", self.pipeline.as_str())
            .field("service", self.service.as_str())
            .field("instance", self.instance.as_str())
            .optional("applied_generation", self.applied_generation)
            .optional("orders_per_second", self.orders_per_second)
            .optional("payment_failure_ratio", self.payment_failure_ratio)
            .optional("paused", self.paused)
            .field("counters", counters)
            .field("timestamp", self.timestamp.as_str())
            .extra(&self.extra, &HEARTBEAT_FIELDS)
            .finish()
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, ControlError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(ControlError::TooLarge {
            what,
            size: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| ControlError::Malformed {
        what,
        detail: e.to_string(),
    })
}

/// The control-record key of a pipeline run by the controller: `<namespace>/<name>`.
pub fn pipeline_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The heartbeat key of one replica: `<pipeline>/<service>/<instance>`.
pub fn heartbeat_key(pipeline: &str, service: &str, instance: &str) -> String {
    format!("{pipeline}/{service}/{instance}")
}

/// Splits a heartbeat key into `(pipeline, service, instance)`. Splits from the right,
/// because the pipeline itself contains a `/` under the controller; `None` when a part
/// is missing or empty.
pub fn parse_heartbeat_key(key: &str) -> Option<(&str, &str, &str)> {
    let mut parts = key.rsplitn(3, '/');
    let instance = parts.next()?;
    let service = parts.next()?;
    let pipeline = parts.next()?;
    [pipeline, service, instance]
        .iter()
        .all(|part| !part.is_empty())
        .then_some((pipeline, service, instance))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ControlRecord {
        ControlRecord {
            generation: 3,
            orders_per_second: 20.5,
            payment_failure_ratio: 0.1,
            paused: false,
            seed: 42,
            extra: Map::new(),
        }
    }

    #[test]
    fn control_record_round_trips_with_the_documented_field_names() {
        let json = record().to_json();
        assert_eq!(
            String::from_utf8(json.clone()).unwrap(),
            r#"{"generation":3,"orders_per_second":20.5,"payment_failure_ratio":0.1,"paused":false,"seed":42}"#
        );
        assert_eq!(ControlRecord::parse(&json).unwrap(), record());
    }

    #[test]
    fn control_record_written_by_hand_gets_defaults_and_keeps_unknown_fields() {
        let parsed = ControlRecord::parse(
            br#"{"generation": 1, "orders_per_second": 5, "payment_failure_ratio": 0, "note": "x"}"#,
        )
        .unwrap();
        assert!(!parsed.paused);
        assert_eq!(parsed.seed, 0);
        assert_eq!(parsed.extra["note"], "x");
        assert!(
            String::from_utf8(parsed.to_json())
                .unwrap()
                .ends_with(r#""note":"x"}"#)
        );
    }

    #[test]
    fn out_of_range_settings_are_refused_naming_the_field() {
        for (rate, ratio, field) in [
            (-1.0, 0.1, "orders_per_second"),
            (100_001.0, 0.1, "orders_per_second"),
            (f64::NAN, 0.1, "orders_per_second"),
            (10.0, 1.5, "payment_failure_ratio"),
            (10.0, f64::INFINITY, "payment_failure_ratio"),
        ] {
            let bad = ControlRecord {
                orders_per_second: rate,
                payment_failure_ratio: ratio,
                ..record()
            };
            let error = bad.validate().unwrap_err();
            assert!(matches!(error, ControlError::OutOfRange { field: f, .. } if f == field));
            assert!(error.to_string().starts_with(field), "{error}");
        }
        assert!(matches!(
            ControlRecord::parse(
                br#"{"generation":1,"orders_per_second":1e6,"payment_failure_ratio":0}"#
            ),
            Err(ControlError::OutOfRange {
                field: "orders_per_second",
                ..
            })
        ));
    }

    #[test]
    fn malformed_control_records_are_refused() {
        for bytes in [
            &b""[..],
            b"null",
            b"{\"generation\": -1}",
            b"{\"generation\": 1}",
            b"\xff",
        ] {
            assert!(
                matches!(
                    ControlRecord::parse(bytes),
                    Err(ControlError::Malformed { .. })
                ),
                "{bytes:?}"
            );
        }
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            ControlRecord::parse(&huge),
            Err(ControlError::TooLarge { .. })
        ));
    }

    #[test]
    fn heartbeat_round_trips() {
        let heartbeat = Heartbeat {
            pipeline: "shop/demo".into(),
            service: "payment-service".into(),
            instance: "payment-7d9f-x2".into(),
            applied_generation: Some(3),
            payment_failure_ratio: Some(0.1),
            counters: BTreeMap::from([("payments_failed".into(), 4), ("payments_sent".into(), 40)]),
            timestamp: "2025-01-02T03:04:05.678Z".into(),
            ..Heartbeat::default()
        };
        let json = heartbeat.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(
            !text.contains("orders_per_second"),
            "absent settings are left out: {text}"
        );
        assert_eq!(Heartbeat::parse(&json).unwrap(), heartbeat);
        assert_eq!(heartbeat.key(), "shop/demo/payment-service/payment-7d9f-x2");
    }

    #[test]
    fn heartbeat_keys_split_from_the_right() {
        let key = heartbeat_key(&pipeline_key("shop", "demo"), "order-service", "order-0");
        assert_eq!(key, "shop/demo/order-service/order-0");
        assert_eq!(
            parse_heartbeat_key(&key),
            Some(("shop/demo", "order-service", "order-0"))
        );
        assert_eq!(
            parse_heartbeat_key("demo/svc/i"),
            Some(("demo", "svc", "i"))
        );
        for bad in ["", "demo", "svc/i", "/svc/i", "demo//i", "demo/svc/"] {
            assert_eq!(parse_heartbeat_key(bad), None, "{bad:?}");
        }
    }
}
