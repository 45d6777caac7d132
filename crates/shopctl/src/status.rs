//! What `shopctl status` knows: the desired record of a pipeline and the heartbeat of
//! each of its replicas, built from the two compacted topics read as tables. Pure: the
//! tables and the clock are passed in.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use shop_domain::control::parse_heartbeat_key;
use shop_domain::time::{elapsed_since, parse_rfc3339};
use shop_domain::{ControlRecord, Heartbeat};

/// A replica whose last heartbeat is older than this has probably gone without saying
/// goodbye (a clean shutdown deletes its heartbeat): five missed heartbeat periods.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// The state of one pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub pipeline: String,
    /// The latest valid control record; `None` when there is none (services then run on
    /// their flags) or it is invalid (see `problems`).
    pub desired: Option<ControlRecord>,
    /// One per replica with a heartbeat, ordered by service and instance.
    pub replicas: Vec<Replica>,
    /// Records that could not be read, described for the user.
    pub problems: Vec<String>,
}

/// One replica, as its latest heartbeat describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    pub service: String,
    pub instance: String,
    pub heartbeat: Heartbeat,
    /// Time since the heartbeat was written; `None` when its timestamp is unreadable or
    /// in the future (clock skew).
    pub age: Option<Duration>,
}

impl Replica {
    /// Whether the replica applied an older generation than the desired one. A replica
    /// that reports no applied generation is not behind: notification-service has no
    /// settings to apply, and services running on flags say so with `None`.
    pub fn is_behind(&self, desired: Option<&ControlRecord>) -> bool {
        matches!(
            (self.heartbeat.applied_generation, desired),
            (Some(applied), Some(desired)) if applied < desired.generation
        )
    }

    /// Whether the last heartbeat is older than [`STALE_AFTER`].
    pub fn is_stale(&self) -> bool {
        self.age.is_some_and(|age| age > STALE_AFTER)
    }
}

impl Status {
    /// The status of `pipeline` from the control table (key: pipeline) and the heartbeat
    /// table (key: `<pipeline>/<service>/<instance>`), at `now`. Heartbeats of other
    /// pipelines are left out, including those of a pipeline whose name merely ends like
    /// this one (`shop/demo` vs `demo`).
    pub fn from_tables(
        pipeline: &str,
        control: &BTreeMap<String, Vec<u8>>,
        heartbeats: &BTreeMap<String, Vec<u8>>,
        now: SystemTime,
    ) -> Status {
        let mut problems = Vec::new();
        let desired = control
            .get(pipeline)
            .and_then(|bytes| match ControlRecord::parse(bytes) {
                Ok(record) => Some(record),
                Err(error) => {
                    problems.push(format!(
                        "the control record of pipeline {pipeline} is invalid and ignored by the services: {error}"
                    ));
                    None
                }
            });
        let mut replicas = Vec::new();
        for (key, bytes) in heartbeats {
            let Some((of, service, instance)) = parse_heartbeat_key(key) else {
                continue;
            };
            if of != pipeline {
                continue;
            }
            match Heartbeat::parse(bytes) {
                Ok(heartbeat) => replicas.push(Replica {
                    service: service.to_owned(),
                    instance: instance.to_owned(),
                    age: elapsed_since(&heartbeat.timestamp, now)
                        .or_else(|| parse_rfc3339(&heartbeat.timestamp).map(|_| Duration::ZERO)),
                    heartbeat,
                }),
                Err(error) => problems.push(format!("the heartbeat {key} is invalid: {error}")),
            }
        }
        Status {
            pipeline: pipeline.to_owned(),
            desired,
            replicas,
            problems,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::UNIX_EPOCH;

    use super::*;

    fn heartbeat(pipeline: &str, service: &str, instance: &str, applied: Option<u64>) -> Heartbeat {
        Heartbeat {
            pipeline: pipeline.into(),
            service: service.into(),
            instance: instance.into(),
            applied_generation: applied,
            counters: BTreeMap::from([("orders_sent".into(), 12)]),
            timestamp: "2025-01-02T03:04:05.000Z".into(),
            ..Heartbeat::default()
        }
    }

    fn now() -> SystemTime {
        // 3 s after the heartbeats' timestamp.
        UNIX_EPOCH + Duration::from_millis(1_735_787_048_000)
    }

    fn table(entries: &[(String, Vec<u8>)]) -> BTreeMap<String, Vec<u8>> {
        entries.iter().cloned().collect()
    }

    fn record(generation: u64) -> ControlRecord {
        ControlRecord {
            generation,
            ..crate::change::defaults()
        }
    }

    #[test]
    fn replicas_of_this_pipeline_are_listed_with_their_age() {
        let beats = [
            heartbeat("demo", "order-service", "o-1", Some(3)),
            heartbeat("demo", "payment-service", "p-1", Some(2)),
            heartbeat("shop/demo", "order-service", "o-9", Some(3)),
            heartbeat("other", "order-service", "o-8", Some(3)),
        ];
        let heartbeats = table(
            &beats
                .iter()
                .map(|b| (b.key(), b.to_json()))
                .collect::<Vec<_>>(),
        );
        let control = table(&[("demo".into(), record(3).to_json())]);
        let status = Status::from_tables("demo", &control, &heartbeats, now());
        assert_eq!(status.desired, Some(record(3)));
        let names: Vec<_> = status
            .replicas
            .iter()
            .map(|r| r.instance.as_str())
            .collect();
        assert_eq!(names, ["o-1", "p-1"]);
        assert_eq!(status.replicas[0].age, Some(Duration::from_secs(3)));
        assert!(!status.replicas[0].is_behind(status.desired.as_ref()));
        assert!(status.replicas[1].is_behind(status.desired.as_ref()));
        assert!(status.problems.is_empty());
    }

    #[test]
    fn replicas_without_an_applied_generation_are_not_behind() {
        let replica = Replica {
            service: "notification-service".into(),
            instance: "n-1".into(),
            heartbeat: heartbeat("demo", "notification-service", "n-1", None),
            age: Some(Duration::from_secs(1)),
        };
        assert!(!replica.is_behind(Some(&record(5))));
        assert!(!replica.is_stale());
        let old = Replica {
            age: Some(Duration::from_secs(60)),
            ..replica
        };
        assert!(old.is_stale());
    }

    #[test]
    fn invalid_records_are_reported_not_fatal() {
        let control = table(&[("demo".into(), b"{\"generation\": 1}".to_vec())]);
        let heartbeats = table(&[("demo/order-service/o-1".into(), b"garbage".to_vec())]);
        let status = Status::from_tables("demo", &control, &heartbeats, now());
        assert_eq!(status.desired, None);
        assert!(status.replicas.is_empty());
        assert_eq!(status.problems.len(), 2, "{:?}", status.problems);
    }

    #[test]
    fn heartbeats_from_the_future_have_age_zero() {
        let mut beat = heartbeat("demo", "order-service", "o-1", Some(1));
        beat.timestamp = "2030-01-01T00:00:00Z".into();
        let heartbeats = table(&[(beat.key(), beat.to_json())]);
        let status = Status::from_tables("demo", &BTreeMap::new(), &heartbeats, now());
        assert_eq!(status.replicas[0].age, Some(Duration::ZERO));
    }
}
