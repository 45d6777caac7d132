//! The live view: a page at `/` that shows every pipeline the controller runs, updated
//! about once a second over Server-Sent Events at `/events`, with no reload.
//!
//! The page reads only the controller's own state, the [`Board`]: each reconcile records
//! what it saw of its pipeline ([`Board::record`]), and one task turns the board into a
//! JSON [`Snapshot`] once a second ([`Board::publish`]). Every open page receives that same
//! snapshot, so fifty pages cost no more Kafka or API-server work than one. No route
//! changes anything: tuning stays `kubectl patch`.
//!
//! Only the leader reconciles, so only the leader has fresh state. A standby serves the
//! page too, saying that it is a standby, which Lease elects the leader, and how to reach
//! the leader's page (port-forward to the Pod that holds the Lease); it lists no pipelines
//! rather than stale ones.
//!
//! The page itself (`live.html`) is one small file with inline CSS and JavaScript, embedded
//! in the binary: no framework, nothing fetched from elsewhere, so it works offline and
//! through `kubectl port-forward`.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{Stream, StreamExt};
use serde::Serialize;
use shop_runtime::CancellationToken;
use tokio::sync::watch;

use crate::crd::{Condition, Effective, Measured, ShopPipelineSpec, ShopPipelineStatus};
use crate::status::Observations;
use shop_domain::Heartbeat;

/// How often a snapshot is sent to the open pages.
pub const EVERY: Duration = Duration::from_secs(1);

/// How far back each pipeline's sparkline reaches.
pub const HISTORY: Duration = Duration::from_secs(5 * 60);

/// The page, embedded in the binary.
const PAGE: &str = include_str!("live.html");

/// What the page shows, as the controller last saw it. Cheap to clone: clones share one
/// board.
#[derive(Debug, Clone)]
pub struct Board {
    state: Arc<Mutex<BoardState>>,
    snapshots: watch::Sender<Arc<str>>,
    closed: CancellationToken,
}

#[derive(Debug)]
struct BoardState {
    identity: String,
    role: Role,
    pipelines: BTreeMap<(String, String), Entry>,
}

/// Whether this replica leads, and which Lease decides it.
#[derive(Debug, Clone, Default)]
enum Role {
    #[default]
    Starting,
    Standby {
        lease: String,
    },
    Leader {
        lease: String,
    },
}

#[derive(Debug)]
struct Entry {
    spec: ShopPipelineSpec,
    generation: Option<i64>,
    status: ShopPipelineStatus,
    published_generation: Option<u64>,
    replicas: Vec<Replica>,
    history: VecDeque<Sample>,
}

impl Entry {
    /// The status's measurement, with the rates of the sampler's latest sample, which is
    /// fresher than the last reconcile.
    fn measured(&self) -> Option<Measured> {
        let mut measured = self.status.measured.clone();
        if let Some(latest) = self.history.back() {
            let measured = measured.get_or_insert_with(Measured::default);
            measured.orders_per_second = latest.orders_per_second;
            measured.failure_ratio = latest.failure_ratio;
        }
        measured
    }
}

#[derive(Debug, Clone)]
struct Replica {
    service: String,
    instance: String,
    applied_generation: Option<u64>,
    heartbeat: Option<SystemTime>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: SystemTime,
    orders_per_second: Option<f64>,
    failure_ratio: Option<f64>,
}

/// One message of `/events`: the whole board, as the page renders it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// This replica's identity (its Pod name in a cluster).
    pub identity: String,
    /// `starting`, `standby` or `leader`.
    pub role: &'static str,
    /// `namespace/name` of the leader-election Lease, once known.
    pub lease: Option<String>,
    /// When the snapshot was taken (RFC 3339).
    pub generated_at: String,
    pub pipelines: Vec<PipelineView>,
}

/// One pipeline on the page.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PipelineView {
    pub namespace: String,
    pub name: String,
    /// `metadata.generation` of the resource the controller last reconciled.
    pub generation: Option<i64>,
    /// What the user asked for.
    pub spec: ShopPipelineSpec,
    /// What the controller published, and with which control generation.
    pub effective: Option<Effective>,
    pub published_generation: Option<u64>,
    /// The latest measurement (the same numbers as the resource's status).
    pub measured: Option<Measured>,
    /// Measured rate and failure ratio over the last [`HISTORY`], oldest first.
    pub history: Vec<Point>,
    pub conditions: Vec<Condition>,
    pub replicas: Vec<ReplicaView>,
}

/// One measurement in a pipeline's history.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// Seconds before the snapshot.
    pub age_seconds: f64,
    pub orders_per_second: Option<f64>,
    pub failure_ratio: Option<f64>,
}

/// One live replica of a pipeline, from its heartbeat.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaView {
    pub service: String,
    pub instance: String,
    pub applied_generation: Option<u64>,
    /// Seconds since the replica's last heartbeat, when the snapshot was taken.
    pub heartbeat_age_seconds: Option<f64>,
}

impl Board {
    /// An empty board of the replica `identity`, not yet leading.
    pub fn new(identity: &str) -> Self {
        let state = BoardState {
            identity: identity.to_owned(),
            role: Role::Starting,
            pipelines: BTreeMap::new(),
        };
        let (snapshots, _) = watch::channel(Arc::from(""));
        let board = Self {
            state: Arc::new(Mutex::new(state)),
            snapshots,
            closed: CancellationToken::new(),
        };
        board.snapshots.send_replace(board.snapshot_json());
        board
    }

    /// This replica waits for `lease` (`namespace/name`).
    pub fn standby(&self, lease: &str) {
        self.lock().role = Role::Standby {
            lease: lease.to_owned(),
        };
    }

    /// This replica holds `lease` and reconciles.
    pub fn leading(&self, lease: &str) {
        self.lock().role = Role::Leader {
            lease: lease.to_owned(),
        };
    }

    /// Records what one reconcile saw of a pipeline and the status it computed.
    pub fn record(
        &self,
        namespace: &str,
        name: &str,
        spec: &ShopPipelineSpec,
        observations: &Observations,
        status: &ShopPipelineStatus,
    ) {
        let replicas = replicas(&observations.live_heartbeats);
        let mut state = self.lock();
        let entry = state
            .pipelines
            .entry((namespace.to_owned(), name.to_owned()))
            .or_insert_with(|| Entry {
                spec: spec.clone(),
                generation: None,
                status: ShopPipelineStatus::default(),
                published_generation: None,
                replicas: Vec::new(),
                history: VecDeque::new(),
            });
        entry.spec = spec.clone();
        entry.generation = observations.generation;
        entry.status = status.clone();
        entry.published_generation = observations.effective.as_ref().map(|(g, _)| *g);
        entry.replicas = replicas;
    }

    /// Records a measurement of the sampler ([`crate::measure`]) and the live heartbeats
    /// it saw: the page shows them at once and draws the rates in the pipeline's
    /// sparkline. A pipeline not reconciled yet is skipped.
    pub fn sample(
        &self,
        namespace: &str,
        name: &str,
        (orders_per_second, failure_ratio): (Option<f64>, Option<f64>),
        heartbeats: &[Heartbeat],
    ) {
        self.sample_at(
            namespace,
            name,
            (orders_per_second, failure_ratio),
            heartbeats,
            SystemTime::now(),
        );
    }

    fn sample_at(
        &self,
        namespace: &str,
        name: &str,
        (orders_per_second, failure_ratio): (Option<f64>, Option<f64>),
        heartbeats: &[Heartbeat],
        now: SystemTime,
    ) {
        let mut state = self.lock();
        let Some(entry) = state
            .pipelines
            .get_mut(&(namespace.to_owned(), name.to_owned()))
        else {
            return;
        };
        entry.replicas = replicas(heartbeats);
        if orders_per_second.is_some() || failure_ratio.is_some() {
            entry.history.push_back(Sample {
                at: now,
                orders_per_second,
                failure_ratio,
            });
        }
        while entry
            .history
            .front()
            .is_some_and(|s| now.duration_since(s.at).unwrap_or_default() > HISTORY)
        {
            entry.history.pop_front();
        }
    }

    /// Forgets the pipelines whose key (`namespace/name`) is not in `keys`.
    pub fn retain(&self, keys: &std::collections::HashSet<String>) {
        self.lock().pipelines.retain(|(namespace, name), _| {
            keys.contains(&shop_domain::control::pipeline_key(namespace, name))
        });
    }

    /// Forgets a pipeline that is gone.
    pub fn remove(&self, namespace: &str, name: &str) {
        self.lock()
            .pipelines
            .remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// The board as the page sees it at `now`.
    pub fn snapshot(&self, now: SystemTime) -> Snapshot {
        let state = self.lock();
        let age = |at: SystemTime| {
            let seconds = now.duration_since(at).unwrap_or_default().as_secs_f64();
            (seconds * 10.0).round() / 10.0
        };
        let (role, lease) = match &state.role {
            Role::Starting => ("starting", None),
            Role::Standby { lease } => ("standby", Some(lease.clone())),
            Role::Leader { lease } => ("leader", Some(lease.clone())),
        };
        // A standby's entries (there are none, unless it led before) would be stale.
        let pipelines = if role == "leader" {
            state
                .pipelines
                .iter()
                .map(|((namespace, name), entry)| PipelineView {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    generation: entry.generation,
                    spec: entry.spec.clone(),
                    effective: entry.status.effective.clone(),
                    published_generation: entry.published_generation,
                    measured: entry.measured(),
                    history: entry
                        .history
                        .iter()
                        .map(|s| Point {
                            age_seconds: age(s.at),
                            orders_per_second: s.orders_per_second,
                            failure_ratio: s.failure_ratio,
                        })
                        .collect(),
                    conditions: entry.status.conditions.clone(),
                    replicas: entry
                        .replicas
                        .iter()
                        .map(|r| ReplicaView {
                            service: r.service.clone(),
                            instance: r.instance.clone(),
                            applied_generation: r.applied_generation,
                            heartbeat_age_seconds: r.heartbeat.map(age),
                        })
                        .collect(),
                })
                .collect()
        } else {
            Vec::new()
        };
        Snapshot {
            identity: state.identity.clone(),
            role,
            lease,
            generated_at: shop_domain::time::rfc3339(now),
            pipelines,
        }
    }

    fn snapshot_json(&self) -> Arc<str> {
        // Serializing plain structs of strings and numbers cannot fail; an empty message
        // would only make the page wait for the next one.
        Arc::from(serde_json::to_string(&self.snapshot(SystemTime::now())).unwrap_or_default())
    }

    /// Sends a snapshot to the open pages every [`EVERY`] until `shutdown`, then ends
    /// their streams so the HTTP server can stop at once.
    pub async fn publish(self, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = every.tick() => {}
            }
            self.snapshots.send_replace(self.snapshot_json());
        }
        self.closed.cancel();
    }

    /// The snapshots as Server-Sent Events (`event: snapshot`), the latest one first.
    fn events(&self) -> impl Stream<Item = Result<Event, Infallible>> + use<> {
        let mut snapshots = self.snapshots.subscribe();
        snapshots.mark_changed();
        futures::stream::unfold(snapshots, |mut snapshots| async move {
            snapshots.changed().await.ok()?;
            let data = Arc::clone(&snapshots.borrow_and_update());
            Some((
                Ok(Event::default().event("snapshot").data(&*data)),
                snapshots,
            ))
        })
        .take_until(self.closed.clone().cancelled_owned())
    }

    fn lock(&self) -> MutexGuard<'_, BoardState> {
        // Nothing that can panic runs while the board is being updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn replicas(heartbeats: &[Heartbeat]) -> Vec<Replica> {
    heartbeats
        .iter()
        .map(|h| Replica {
            service: h.service.clone(),
            instance: h.instance.clone(),
            applied_generation: h.applied_generation,
            heartbeat: shop_domain::time::parse_rfc3339(&h.timestamp),
        })
        .collect()
}

/// `GET /` (the page) and `GET /events` (its stream), to merge with the probe routes.
pub fn routes(board: Board) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/events", get(events).with_state(board))
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // Everything the page needs is inline; it may only open its own event stream.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
                 connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'",
            ),
        ],
        PAGE,
    )
        .into_response()
}

async fn events(State(board): State<Board>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Sse::new(board.events()).keep_alive(KeepAlive::default()),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn spec(rate: f64) -> ShopPipelineSpec {
        ShopPipelineSpec {
            orders_per_second: rate,
            payment_failure_ratio: 0.1,
            paused: false,
            seed: None,
            replicas: None,
            partitions: None,
        }
    }

    fn observed(rate: Option<f64>, heartbeat_at: &str) -> Observations {
        Observations {
            generation: Some(2),
            effective: Some((5, Effective::default())),
            live_heartbeats: vec![Heartbeat {
                service: "payment-service".into(),
                instance: "pod-1".into(),
                applied_generation: Some(5),
                timestamp: heartbeat_at.into(),
                ..Heartbeat::default()
            }],
            measured: Some(Measured {
                orders_per_second: rate,
                ..Measured::default()
            }),
            ..Observations::default()
        }
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    fn record(board: &Board) {
        board.record(
            "ns",
            "demo",
            &spec(5.0),
            &observed(None, ""),
            &ShopPipelineStatus::default(),
        );
    }

    fn heartbeat(at_second: u64) -> Vec<Heartbeat> {
        observed(None, &shop_domain::time::rfc3339(at(at_second))).live_heartbeats
    }

    #[test]
    fn a_standby_shows_no_pipelines_and_names_the_lease() {
        let board = Board::new("replica-b");
        record(&board);
        board.standby("shopstream/shop-controller");
        let snapshot = board.snapshot(at(1));
        assert_eq!(snapshot.role, "standby");
        assert_eq!(
            snapshot.lease.as_deref(),
            Some("shopstream/shop-controller")
        );
        assert!(snapshot.pipelines.is_empty());
    }

    #[test]
    fn the_leader_shows_each_pipeline_with_the_samples_and_heartbeat_ages() {
        let board = Board::new("replica-a");
        board.leading("shopstream/shop-controller");
        // Samples of a pipeline not reconciled yet are not shown.
        board.sample_at("ns", "demo", (Some(1.0), None), &heartbeat(0), at(0));
        record(&board);
        for (second, rate) in [(5, None), (10, Some(4.0)), (15, Some(5.0))] {
            board.sample_at(
                "ns",
                "demo",
                (rate, Some(0.1)),
                &heartbeat(second - 1),
                at(second),
            );
        }
        let snapshot = board.snapshot(at(17));
        assert_eq!(snapshot.role, "leader");
        let view = &snapshot.pipelines[0];
        assert_eq!(
            (view.namespace.as_str(), view.name.as_str()),
            ("ns", "demo")
        );
        assert_eq!(view.published_generation, Some(5));
        let history: Vec<_> = view
            .history
            .iter()
            .map(|p| (p.age_seconds, p.orders_per_second))
            .collect();
        assert_eq!(history, [(12.0, None), (7.0, Some(4.0)), (2.0, Some(5.0))]);
        // The latest sample is fresher than the status the last reconcile wrote.
        assert_eq!(view.measured.as_ref().unwrap().orders_per_second, Some(5.0));
        assert_eq!(view.replicas[0].heartbeat_age_seconds, Some(3.0));
        assert_eq!(view.replicas[0].applied_generation, Some(5));
    }

    #[test]
    fn history_keeps_only_the_last_minutes_and_retain_forgets() {
        let board = Board::new("replica-a");
        board.leading("l");
        record(&board);
        let minutes = HISTORY.as_secs();
        for second in [0, 10, minutes + 5] {
            board.sample_at("ns", "demo", (Some(1.0), None), &[], at(second));
        }
        let snapshot = board.snapshot(at(minutes + 5));
        assert_eq!(snapshot.pipelines[0].history.len(), 2);
        board.retain(&["ns/other".to_owned()].into());
        assert!(board.snapshot(at(minutes + 6)).pipelines.is_empty());
    }
}
