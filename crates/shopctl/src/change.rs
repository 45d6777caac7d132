//! A change to a pipeline's settings, and how it becomes the next control record. Pure.
//!
//! Settings the change leaves out keep their current value, so `shopctl set --rate 50`
//! does not reset a failure ratio set earlier; a pipeline without a record starts from
//! [`defaults`]. The generation always increases by one, because services ignore a
//! record whose generation is not newer than the one they applied.

use serde_json::Map;
use shop_domain::{ControlError, ControlRecord};

use crate::error::{Error, Result};

/// The settings of a pipeline that has no control record yet (generation 0, so the first
/// record written is generation 1).
pub fn defaults() -> ControlRecord {
    ControlRecord {
        generation: 0,
        orders_per_second: 1.0,
        payment_failure_ratio: 0.1,
        paused: false,
        seed: 0,
        extra: Map::new(),
    }
}

/// A partial update of a pipeline's settings; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Change {
    /// Orders per second, `0..=100000`.
    pub rate: Option<f64>,
    /// Share of payments that fail, `0..=1`.
    pub failure_ratio: Option<f64>,
    pub paused: Option<bool>,
    /// Seed of the payment decision.
    pub seed: Option<u64>,
}

impl Change {
    /// Checks the values given, before anything is read or written.
    pub fn validate(&self) -> Result<()> {
        let Err(error) = self.applied_to(&defaults()).validate() else {
            return Ok(());
        };
        Err(match out_of_range(error) {
            Ok((flag, field, value, allowed)) => Error::InvalidValue {
                flag,
                field,
                value,
                allowed,
            },
            Err(other) => other,
        })
    }

    /// The record that follows `current` (or [`defaults`]) for `pipeline`: the changed
    /// settings, the others kept (unknown fields included), and the next generation.
    pub fn next_record(
        &self,
        pipeline: &str,
        current: Option<&ControlRecord>,
    ) -> Result<ControlRecord> {
        self.validate()?;
        let next = self.applied_to(current.unwrap_or(&defaults()));
        next.validate().map_err(|error| match out_of_range(error) {
            Ok((flag, field, value, allowed)) => Error::InvalidCurrent {
                pipeline: pipeline.to_owned(),
                flag,
                field,
                value,
                allowed,
            },
            Err(other) => other,
        })?;
        Ok(next)
    }

    fn applied_to(&self, base: &ControlRecord) -> ControlRecord {
        ControlRecord {
            // 2^64 changes cannot happen; saturating keeps this total without a panic path.
            generation: base.generation.saturating_add(1),
            orders_per_second: self.rate.unwrap_or(base.orders_per_second),
            payment_failure_ratio: self.failure_ratio.unwrap_or(base.payment_failure_ratio),
            paused: self.paused.unwrap_or(base.paused),
            seed: self.seed.unwrap_or(base.seed),
            extra: base.extra.clone(),
        }
    }
}

/// The flag, field, value and allowed range of an out-of-range error; any other error as
/// it is.
fn out_of_range(
    error: ControlError,
) -> std::result::Result<(&'static str, &'static str, f64, &'static str), Error> {
    match error {
        ControlError::OutOfRange {
            field,
            value,
            allowed,
        } => Ok((flag_of(field), field, value, allowed)),
        other => Err(Error::Control(other)),
    }
}

/// The `shopctl set` flag that sets a control-record field.
pub fn flag_of(field: &str) -> &'static str {
    match field {
        "orders_per_second" => "--rate",
        "payment_failure_ratio" => "--failure-ratio",
        "paused" => "--paused/--resume",
        "seed" => "--seed",
        _ => "a flag of shopctl set",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn current() -> ControlRecord {
        ControlRecord {
            generation: 7,
            orders_per_second: 20.0,
            payment_failure_ratio: 0.3,
            paused: true,
            seed: 42,
            extra: Map::from_iter([("note".to_owned(), "kept".into())]),
        }
    }

    #[test]
    fn first_record_starts_from_the_defaults_at_generation_one() {
        let change = Change {
            rate: Some(50.0),
            ..Change::default()
        };
        let record = change.next_record("demo", None).unwrap();
        assert_eq!(record.generation, 1);
        assert_eq!(record.orders_per_second, 50.0);
        assert_eq!(record.payment_failure_ratio, 0.1);
        assert!(!record.paused);
        assert_eq!(record.seed, 0);
    }

    #[test]
    fn unspecified_settings_and_unknown_fields_are_kept() {
        let change = Change {
            failure_ratio: Some(0.2),
            paused: Some(false),
            ..Change::default()
        };
        let record = change.next_record("demo", Some(&current())).unwrap();
        assert_eq!(
            record,
            ControlRecord {
                generation: 8,
                payment_failure_ratio: 0.2,
                paused: false,
                ..current()
            }
        );
    }

    #[test]
    fn out_of_range_values_name_the_flag_to_change() {
        for (change, flag) in [
            (
                Change {
                    failure_ratio: Some(1.5),
                    ..Change::default()
                },
                "--failure-ratio",
            ),
            (
                Change {
                    rate: Some(-1.0),
                    ..Change::default()
                },
                "--rate",
            ),
            (
                Change {
                    rate: Some(f64::NAN),
                    ..Change::default()
                },
                "--rate",
            ),
        ] {
            let error = change.validate().unwrap_err();
            assert!(
                matches!(error, Error::InvalidValue { flag: f, .. } if f == flag),
                "{error}"
            );
            assert!(
                error.to_string().starts_with(&format!("invalid {flag} ")),
                "{error}"
            );
            assert!(change.next_record("demo", Some(&current())).is_err());
        }
        let error = Change {
            failure_ratio: Some(1.5),
            ..Change::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid --failure-ratio 1.5: allowed is a number in 0..=1 (payment_failure_ratio of the control record)"
        );
    }

    #[test]
    fn an_invalid_current_value_must_be_replaced_by_the_change() {
        let broken = ControlRecord {
            orders_per_second: 1e9,
            ..current()
        };
        let error = Change {
            seed: Some(1),
            ..Change::default()
        }
        .next_record("demo", Some(&broken))
        .unwrap_err();
        assert!(
            matches!(error, Error::InvalidCurrent { flag: "--rate", .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("give a valid value with --rate"),
            "{error}"
        );
        let fixed = Change {
            rate: Some(10.0),
            ..Change::default()
        }
        .next_record("demo", Some(&broken))
        .unwrap();
        assert_eq!((fixed.generation, fixed.orders_per_second), (8, 10.0));
    }
}
