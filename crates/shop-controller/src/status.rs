//! Status: what the controller reports on a pipeline, computed from observations.
//! Pure: the reconcile step gathers the observations, this module decides.

use shop_domain::Heartbeat;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{Condition, Effective, Measured, ShopPipelineStatus};

/// A heartbeat older than this belongs to a replica that is gone (or cannot reach Kafka).
pub const LIVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// What reconcile saw of one pipeline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observations {
    /// `metadata.generation` of the resource.
    pub generation: Option<i64>,
    /// The control record currently published for the pipeline.
    pub effective: Option<(u64, Effective)>,
    /// Heartbeats of the pipeline's replicas that are live.
    pub live_heartbeats: Vec<Heartbeat>,
    /// Deployments: (name, desired replicas, ready replicas).
    pub deployments: Vec<(String, i32, i32)>,
    pub measured: Option<Measured>,
    /// Why the last reconcile step failed, if it did.
    pub error: Option<(String, String)>,
    pub paused: bool,
    /// The pipeline is being deleted (`deletionTimestamp` is set).
    pub deleting: bool,
    /// Replicas that apply control records (order- and payment-service) the spec asks for.
    pub expected_appliers: usize,
}

/// The status for `observations`, keeping the transition times of conditions whose status
/// did not change (so an unchanged pipeline yields an identical status and no write).
pub fn status(
    observations: &Observations,
    previous: Option<&ShopPipelineStatus>,
    now: &Time,
) -> ShopPipelineStatus {
    let applied = applied(observations);
    let rolled_out = observations.deployments.len() == 3
        && observations
            .deployments
            .iter()
            .all(|(_, want, ready)| ready >= want);
    let not_ready = observations
        .deployments
        .iter()
        .filter(|(_, want, ready)| ready < want)
        .map(|(name, want, ready)| format!("{name} {ready}/{want} ready"))
        .collect::<Vec<_>>();
    let ready = match (&observations.error, rolled_out, &applied) {
        _ if observations.deleting => (
            "False",
            "Deleting".to_owned(),
            "the pipeline is being deleted".to_owned(),
        ),
        (Some((reason, message)), _, _) => ("False", reason.clone(), message.clone()),
        (None, false, _) if observations.deployments.len() < 3 => (
            "False",
            "Deploying".to_owned(),
            "Deployments are being created".to_owned(),
        ),
        (None, false, _) => ("False", "RollingOut".to_owned(), not_ready.join(", ")),
        (None, true, ("True", _, _)) => (
            "True",
            "PipelineReady".to_owned(),
            "all replicas ready and applied".to_owned(),
        ),
        (None, true, (_, reason, message)) => ("False", reason.clone(), message.clone()),
    };
    let paused = if observations.paused {
        (
            "True",
            "PausedBySpec".to_owned(),
            "order generation is paused".to_owned(),
        )
    } else {
        ("False", "Running".to_owned(), String::new())
    };
    let degraded = match &observations.error {
        Some((reason, message)) => ("True", reason.clone(), message.clone()),
        None => ("False", "AsExpected".to_owned(), String::new()),
    };
    let conditions = [
        ("Ready", ready),
        ("Applied", applied),
        ("Paused", paused),
        ("Degraded", degraded),
    ]
    .into_iter()
    .map(|(type_, (status, reason, message))| {
        condition(
            previous,
            type_,
            status,
            reason,
            message,
            observations.generation,
            now,
        )
    })
    .collect();
    ShopPipelineStatus {
        observed_generation: observations.generation,
        conditions,
        effective: observations.effective.as_ref().map(|(_, e)| e.clone()),
        measured: observations.measured.clone(),
    }
}

/// The status of an object that cannot be read as a ShopPipeline.
pub fn invalid(generation: Option<i64>, message: &str, now: &Time) -> ShopPipelineStatus {
    let observations = Observations {
        generation,
        error: Some(("InvalidObject".to_owned(), message.to_owned())),
        ..Observations::default()
    };
    status(&observations, None, now)
}

/// Applied: every live replica reports the published control generation.
fn applied(observations: &Observations) -> (&'static str, String, String) {
    let Some((generation, _)) = &observations.effective else {
        return (
            "Unknown",
            "NotPublished".into(),
            "no control record published yet".into(),
        );
    };
    // notification-service takes no control records, so its heartbeats carry no
    // generation; only the replicas that apply records can be behind.
    let appliers: Vec<&Heartbeat> = observations
        .live_heartbeats
        .iter()
        .filter(|h| h.applied_generation.is_some())
        .collect();
    if appliers.is_empty() {
        return (
            "False",
            "NoLiveReplicas".into(),
            "no replica has reported a heartbeat".into(),
        );
    }
    let behind: Vec<String> = appliers
        .iter()
        .filter(|h| h.applied_generation.is_some_and(|g| g < *generation))
        .map(|h| format!("{}/{}", h.service, h.instance))
        .collect();
    // A replica still starting has not reported yet: all must have, not only the live.
    if behind.is_empty() && appliers.len() < observations.expected_appliers {
        return (
            "False",
            "Applying".into(),
            format!(
                "{} of {} replicas reported generation {generation}",
                appliers.len(),
                observations.expected_appliers
            ),
        );
    }
    if behind.is_empty() {
        (
            "True",
            "AllReplicasApplied".into(),
            format!(
                "{} live replicas applied generation {generation}",
                appliers.len()
            ),
        )
    } else {
        (
            "False",
            "Applying".into(),
            format!("not yet at generation {generation}: {}", behind.join(", ")),
        )
    }
}

fn condition(
    previous: Option<&ShopPipelineStatus>,
    type_: &str,
    status: &str,
    reason: String,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let last_transition_time = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason,
        message,
        last_transition_time,
        observed_generation: generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(service: &str, generation: Option<u64>) -> Heartbeat {
        Heartbeat {
            service: service.into(),
            instance: "pod-1".into(),
            applied_generation: generation,
            ..Heartbeat::default()
        }
    }

    fn running(generation: u64, heartbeats: Vec<Heartbeat>) -> Observations {
        Observations {
            generation: Some(4),
            effective: Some((generation, Effective::default())),
            live_heartbeats: heartbeats,
            deployments: vec![("a".into(), 1, 1), ("b".into(), 2, 2), ("c".into(), 1, 1)],
            ..Observations::default()
        }
    }

    fn t(second: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + second).unwrap())
    }

    fn get<'a>(status: &'a ShopPipelineStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn all_replicas_at_the_published_generation_is_applied_and_ready() {
        let obs = running(
            3,
            vec![
                heartbeat("order-service", Some(3)),
                heartbeat("payment-service", Some(3)),
            ],
        );
        let status = status(&obs, None, &t(0));
        assert_eq!(get(&status, "Applied").status, "True");
        assert_eq!(get(&status, "Ready").status, "True");
        assert_eq!(get(&status, "Degraded").status, "False");
        assert_eq!(status.observed_generation, Some(4));
    }

    #[test]
    fn a_replica_behind_is_named_in_applied() {
        let obs = running(
            3,
            vec![
                heartbeat("order-service", Some(3)),
                heartbeat("payment-service", Some(2)),
            ],
        );
        let status = status(&obs, None, &t(0));
        let applied = get(&status, "Applied");
        assert_eq!(
            (applied.status.as_str(), applied.reason.as_str()),
            ("False", "Applying")
        );
        assert!(applied.message.contains("payment-service/pod-1"));
        assert_eq!(get(&status, "Ready").status, "False");
    }

    #[test]
    fn replicas_without_a_generation_do_not_hold_applied_back() {
        let obs = running(
            3,
            vec![
                heartbeat("order-service", Some(3)),
                heartbeat("notification-service", None),
            ],
        );
        let status = status(&obs, None, &t(0));
        assert_eq!(get(&status, "Applied").status, "True");
        let only_notifications = running(3, vec![heartbeat("notification-service", None)]);
        assert_eq!(
            get(&super::status(&only_notifications, None, &t(0)), "Applied").reason,
            "NoLiveReplicas"
        );
    }

    #[test]
    fn errors_make_the_pipeline_degraded_and_not_ready() {
        let mut obs = running(3, vec![heartbeat("order-service", Some(3))]);
        obs.error = Some((
            "KafkaUnavailable".into(),
            "creating topics: timed out".into(),
        ));
        let status = status(&obs, None, &t(0));
        assert_eq!(get(&status, "Degraded").reason, "KafkaUnavailable");
        assert_eq!(get(&status, "Ready").status, "False");
    }

    #[test]
    fn every_expected_replica_must_report_before_applied() {
        let mut obs = running(3, vec![heartbeat("order-service", Some(3))]);
        obs.expected_appliers = 2;
        let waiting = status(&obs, None, &t(0));
        let applied = get(&waiting, "Applied");
        assert_eq!(
            (applied.status.as_str(), applied.reason.as_str()),
            ("False", "Applying")
        );
        assert!(applied.message.contains("1 of 2"), "{}", applied.message);
        obs.live_heartbeats
            .push(heartbeat("payment-service", Some(3)));
        assert_eq!(get(&status(&obs, None, &t(0)), "Applied").status, "True");
    }

    #[test]
    fn a_pipeline_being_deleted_is_not_ready() {
        let mut obs = running(3, vec![heartbeat("order-service", Some(3))]);
        obs.deleting = true;
        let ready = status(&obs, None, &t(0));
        assert_eq!(get(&ready, "Ready").reason, "Deleting");
        assert_eq!(get(&ready, "Ready").status, "False");
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let obs = running(3, vec![heartbeat("order-service", Some(3))]);
        let first = status(&obs, None, &t(0));
        let second = status(&obs, Some(&first), &t(1));
        assert_eq!(first, second, "no change, no status write");
        let mut paused = obs.clone();
        paused.paused = true;
        let third = status(&paused, Some(&second), &t(2));
        assert_eq!(get(&third, "Paused").last_transition_time, t(2));
        assert_eq!(get(&third, "Ready").last_transition_time, t(0));
    }
}
