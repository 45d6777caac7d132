//! Reconcile: one pass over one pipeline, as a pipeline of steps.
//!
//! read (the object the watch delivered) → validate and build ([`crate::build`], pure) →
//! apply (server-side apply of the Deployments with one field manager; topics; the
//! control record when the tuning changed) → observe (Deployments, Kafka) → status
//! ([`crate::status`], pure), written only when it changed.
//!
//! Every step is idempotent, so a restarted controller converges without duplicate side
//! effects: the control record is published only when it differs from the one already in
//! the compacted topic, which the controller reads at start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use rdkafka::producer::{FutureProducer, FutureRecord};
use shop_domain::ControlRecord;
use shop_kafka::KafkaArgs;
use shop_kafka::compacted::FollowedTable;
use shop_kafka::context::ClientLog;
use shop_kafka::topics::{ensure_topics, grow_partitions};
use shop_runtime::CancellationToken;
use shop_runtime::Metrics;
use shop_runtime::Timer;
use shop_runtime::metrics::{Counter, Family, Histogram, exponential_buckets};
use tracing::{info, warn};

use crate::build::{Defaults, Desired, desired};
use crate::crd::{Effective, Measured, ShopPipeline, ShopPipelineStatus};
use crate::live::Board;
use crate::measure::Rates;
use crate::observe;
use crate::status::{Observations, status};

/// The one field manager of everything this controller writes.
pub const MANAGER: &str = "shop-controller";

/// How often a settled pipeline is looked at again (measured values, lags): fewer than two
/// reconciles a minute per idle pipeline. Changes of the spec and of the pipeline's
/// Deployments, and a replica reporting a new control generation applied, trigger a
/// reconcile at once.
pub const REFRESH: Duration = Duration::from_secs(45);

/// How long lags read from Kafka are reused.
pub const LAGS_FRESH: Duration = Duration::from_secs(10);

/// Payment lag and notification lag, when read.
type LagReading = (Instant, (Option<i64>, Option<i64>));

/// How often a pipeline is looked at while its replicas have not yet applied a control
/// record published less than [`CONVERGING_FOR`] ago, so `Applied` follows within a second.
pub const CONVERGING: Duration = Duration::from_secs(1);
pub const CONVERGING_FOR: Duration = Duration::from_secs(60);

/// The controller's metrics: reconciles, failures by reason, and durations.
#[derive(Debug, Clone)]
pub struct ControllerMetrics {
    reconciles: Counter,
    /// Topics of deleted pipelines that a sweep could not delete.
    pub sweep_failures: Counter,
    failures: Family<Vec<(String, String)>, Counter>,
    duration: Histogram,
}

impl ControllerMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        Self {
            reconciles: metrics.counter("controller_reconciles", "Reconciles of ShopPipelines"),
            sweep_failures: metrics.counter(
                "controller_sweep_failures",
                "Topics of deleted pipelines that a sweep could not delete (retried next sweep)",
            ),
            failures: metrics.counter_family(
                "controller_reconcile_failures",
                "Failed reconciles by reason",
            ),
            duration: metrics.histogram(
                "controller_reconcile_duration_seconds",
                "Duration of one reconcile",
                exponential_buckets(0.005, 2.0, 12),
            ),
        }
    }
}

/// Shared state of the reconciler.
pub struct Context {
    pub client: Client,
    pub metrics: ControllerMetrics,
    recorder: Recorder,
    pub defaults: Defaults,
    /// The controller's own view of Kafka (its address may differ from the Pods').
    pub kafka: KafkaArgs,
    pub producer: FutureProducer<ClientLog>,
    /// Metadata and watermarks ([`observe::Observer`]).
    pub observer: observe::Observer,
    /// The latest control record per pipeline key, as in the compacted control topic.
    pub published: Mutex<HashMap<String, ControlRecord>>,
    /// The heartbeats of every replica of every pipeline, followed in the background.
    pub heartbeats: FollowedTable,
    /// Measured rates over a fixed window ([`crate::measure`]).
    pub rates: Rates,
    /// When each pipeline's control record was last published.
    published_at: Mutex<HashMap<String, Instant>>,
    /// The control generation each pipeline's replicas have yet to report applied; a
    /// heartbeat reporting it triggers a reconcile at once ([`Context::applied_trigger`]).
    awaiting: Mutex<HashMap<String, u64>>,
    /// The lags last read of each pipeline, and when.
    lags: Mutex<HashMap<String, LagReading>>,
    /// Consecutive failed reconciles of each pipeline, for the error backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// What the live view shows ([`crate::live`]).
    pub board: Board,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

/// Errors of one reconcile, by step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading ShopPipeline {name}: {source}")]
    Read { name: String, source: kube::Error },
    #[error("ShopPipeline {name} is not readable: {message}")]
    Invalid { name: String, message: String },
    #[error("building the desired objects: {0}")]
    Build(#[from] crate::build::BuildError),
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
    #[error("Kafka: {0}")]
    Kafka(#[from] shop_kafka::Error),
    #[error("publishing the control record of {key}: {source}")]
    Publish {
        key: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("writing the status of {name}: {source}")]
    Status { name: String, source: kube::Error },
}

impl Error {
    /// The condition reason and metrics label of this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Build(_) => "InvalidSpec",
            Error::Invalid { .. } => "InvalidObject",
            Error::Read { .. } => "ReadFailed",
            Error::Apply { .. } => "ApplyFailed",
            Error::Kafka(_) | Error::Publish { .. } => "KafkaUnavailable",
            Error::Status { .. } => "StatusWriteFailed",
        }
    }
}

impl Context {
    /// A context whose knowledge of published control records starts from the topic.
    pub async fn new(
        client: Client,
        defaults: Defaults,
        kafka: KafkaArgs,
        metrics: ControllerMetrics,
        identity: &str,
        board: Board,
        shutdown: CancellationToken,
    ) -> Result<Self, shop_kafka::Error> {
        let producer: FutureProducer<ClientLog> = kafka
            .client_config("shop-controller")
            .set("enable.idempotence", "true")
            .create_with_context(ClientLog::new("control-producer"))
            .map_err(|source| shop_kafka::Error::Client {
                bootstrap: kafka.bootstrap_servers.clone(),
                source,
            })?;
        let table = shop_kafka::compacted::read_table(
            &kafka,
            &kafka.control_topic,
            Duration::from_secs(30),
        )
        .await?;
        let published = table
            .into_iter()
            .filter_map(|(key, value)| Some((key, ControlRecord::parse(&value).ok()?)))
            .collect();
        let heartbeats = FollowedTable::follow(
            &kafka,
            &kafka.heartbeat_topic,
            Duration::from_secs(30),
            shutdown,
        )
        .await?;
        let observer = observe::observer(&kafka)?;
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: Some(identity.into()),
        };
        Ok(Self {
            recorder: Recorder::new(client.clone(), reporter),
            metrics,
            client,
            defaults,
            kafka,
            producer,
            published: Mutex::new(published),
            heartbeats,
            observer,
            rates: Rates::default(),
            published_at: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            awaiting: Mutex::new(HashMap::new()),
            lags: Mutex::new(HashMap::new()),
            board,
        })
    }
}

impl Context {
    /// The pipeline to reconcile now because the heartbeat under `heartbeat_key` reports
    /// the control generation its pipeline awaits (so `Applied` follows within moments of
    /// the replicas applying a change, not at the next refresh).
    pub fn applied_trigger(
        &self,
        heartbeat_key: &str,
    ) -> Option<ObjectRef<PartialObjectMeta<ShopPipeline>>> {
        let (pipeline, _, _) = shop_domain::control::parse_heartbeat_key(heartbeat_key)?;
        let awaited = *lock(&self.awaiting).get(pipeline)?;
        let heartbeat = shop_domain::Heartbeat::parse(&self.heartbeats.get(heartbeat_key)?).ok()?;
        if heartbeat.applied_generation? < awaited {
            return None;
        }
        let (namespace, name) = pipeline.split_once('/')?;
        Some(ObjectRef::new(name).within(namespace))
    }
}

/// One reconcile of `pipeline`, instrumented: counted, timed, and a failure is counted by
/// reason and reported as a Warning event on the resource.
///
/// The watch delivers only metadata ([`PartialObjectMeta`]), so a stored object whose spec
/// this version cannot read does not break the watch of every other pipeline: it is read
/// here, alone, and reported as `Degraded` with reason `InvalidObject`.
pub async fn reconcile(
    meta: Arc<PartialObjectMeta<ShopPipeline>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _timer = Timer::start(&ctx.metrics.duration);
    ctx.metrics.reconciles.inc();
    let result = match read(&meta, &ctx).await {
        Ok(Some(pipeline)) => reconcile_steps(&pipeline, &ctx).await,
        Ok(None) => {
            ctx.board
                .remove(&meta.namespace().unwrap_or_default(), &meta.name_any());
            Ok(Action::await_change())
        }
        Err(error) => Err(error),
    };
    if result.is_ok() {
        lock(&ctx.failures).remove(&key_of(&meta));
    }
    if let Err(error) = &result {
        ctx.metrics
            .failures
            .get_or_create(&vec![("reason".into(), error.reason().into())])
            .inc();
        event(
            &ctx,
            &meta.object_ref(&()),
            EventType::Warning,
            error.reason(),
            error.to_string(),
        )
        .await;
    }
    result
}

/// Read: the full object, or `None` when it is gone. An object that cannot be read as a
/// ShopPipeline gets a Degraded status and waits for a change.
async fn read(
    meta: &PartialObjectMeta<ShopPipeline>,
    ctx: &Context,
) -> Result<Option<ShopPipeline>, Error> {
    let name = meta.name_any();
    let namespace = meta.namespace().unwrap_or_default();
    let api: Api<ShopPipeline> = Api::namespaced(ctx.client.clone(), &namespace);
    match api.get_opt(&name).await {
        Ok(found) => Ok(found),
        Err(kube::Error::SerdeError(error)) => {
            let message = format!("cannot read spec: {error}");
            let now = now();
            let status = crate::status::invalid(meta.metadata.generation, &message, &now);
            // Server-side apply cannot type an object whose spec does not fit the schema;
            // a merge patch of the status alone can.
            let patch = serde_json::json!({ "status": status });
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|source| Error::Status {
                    name: name.clone(),
                    source,
                })?;
            Err(Error::Invalid { name, message })
        }
        Err(source) => Err(Error::Read { name, source }),
    }
}

async fn reconcile_steps(pipeline: &ShopPipeline, ctx: &Context) -> Result<Action, Error> {
    let desired = desired(pipeline, &ctx.defaults)?;
    // A pipeline being deleted is not applied again: the garbage collector is removing its
    // Deployments (first, under foreground deletion), and re-creating them would fight it.
    // Its status still says what is left.
    let deleting = pipeline.metadata.deletion_timestamp.is_some();
    let applied = if deleting {
        Ok(())
    } else {
        apply(pipeline, &desired, ctx).await
    };
    let mut observations = observe(pipeline, &desired, ctx).await;
    if let Err(error) = &applied {
        observations.error = Some((error.reason().to_owned(), error.to_string()));
    }
    let next = next_status(pipeline, &observations);
    ctx.board.record(
        &pipeline.namespace().unwrap_or_default(),
        &pipeline.name_any(),
        &pipeline.spec,
        &observations,
        &next,
    );
    let applied_all = next
        .conditions
        .iter()
        .any(|c| c.type_ == "Applied" && c.status == "True");
    if applied_all {
        lock(&ctx.awaiting).remove(&desired.pipeline_key);
    }
    let converging = !applied_all
        && lock(&ctx.published_at)
            .get(&desired.pipeline_key)
            .is_some_and(|at| at.elapsed() < CONVERGING_FOR);
    write_status(pipeline, next, ctx).await?;
    if deleting {
        return Ok(Action::await_change());
    }
    applied.map(|()| Action::requeue(if converging { CONVERGING } else { REFRESH }))
}

/// Topics first (created, or grown to the spec's partitions), so the services never
/// create them with their own defaults; then the Deployments; then the control record.
async fn apply(pipeline: &ShopPipeline, desired: &Desired, ctx: &Context) -> Result<(), Error> {
    let topics = &desired.topic_specs;
    // One metadata request on the long-lived producer tells whether there is anything to
    // do; only then is an admin client made.
    let sized = observe::partition_counts(
        &ctx.observer,
        &topics.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
    )
    .await
    .unwrap_or_default();
    let settled = topics
        .iter()
        .all(|t| sized.get(&t.name).is_some_and(|&n| n >= t.partitions));
    let grown = if settled {
        Vec::new()
    } else {
        ensure_topics(&ctx.kafka, topics).await?;
        grow_partitions(&ctx.kafka, topics).await?
    };
    if !grown.is_empty() {
        let note = format!(
            "{} now have {} partitions",
            grown.join(", "),
            desired.partitions
        );
        info!(pipeline = %desired.pipeline_key, topics = ?grown, partitions = desired.partitions, "partitions added");
        event(
            ctx,
            &pipeline.object_ref(&()),
            EventType::Normal,
            "PartitionsAdded",
            note,
        )
        .await;
    }
    let namespace = pipeline.namespace().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PatchParams::apply(MANAGER).force();
    for deployment in &desired.deployments {
        let name = deployment.name_any();
        deployments
            .patch(&name, &params, &Patch::Apply(deployment))
            .await
            .map_err(|source| Error::Apply {
                kind: "Deployment",
                name,
                source,
            })?;
    }
    publish_control(pipeline, desired, ctx).await
}

/// Publishes the pipeline's control record when its tuning differs from the published one.
async fn publish_control(
    pipeline: &ShopPipeline,
    desired: &Desired,
    ctx: &Context,
) -> Result<(), Error> {
    let current = lock(&ctx.published).get(&desired.pipeline_key).cloned();
    let wanted = desired.control.clone();
    if current
        .as_ref()
        .is_some_and(|r| crate::build::same_tuning(r, &wanted))
    {
        return Ok(());
    }
    let generation = u64::try_from(pipeline.metadata.generation.unwrap_or(1)).unwrap_or(1);
    // Never go back: a record written by hand (shopctl) may carry a higher generation.
    let generation = generation.max(current.as_ref().map_or(0, |r| r.generation + 1));
    let record = ControlRecord {
        generation,
        ..wanted
    };
    let payload = record.to_json();
    ctx.producer
        .send(
            FutureRecord::to(&ctx.kafka.control_topic)
                .key(&desired.pipeline_key)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(source, _)| Error::Publish {
            key: desired.pipeline_key.clone(),
            source,
        })?;
    info!(
        pipeline = %desired.pipeline_key,
        generation,
        orders_per_second = crate::build::pipeline_rate(&record),
        payment_failure_ratio = record.payment_failure_ratio,
        paused = record.paused,
        "published control record"
    );
    let note = format!(
        "generation {generation}: {} orders/s, failure ratio {}, {}",
        crate::build::pipeline_rate(&record),
        record.payment_failure_ratio,
        if record.paused { "paused" } else { "running" }
    );
    lock(&ctx.published).insert(desired.pipeline_key.clone(), record);
    lock(&ctx.published_at).insert(desired.pipeline_key.clone(), Instant::now());
    lock(&ctx.awaiting).insert(desired.pipeline_key.clone(), generation);
    let object = pipeline.object_ref(&());
    event(ctx, &object, EventType::Normal, "ControlPublished", note).await;
    Ok(())
}

async fn observe(pipeline: &ShopPipeline, desired: &Desired, ctx: &Context) -> Observations {
    let namespace = pipeline.namespace().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut observed = Vec::new();
    for want in &desired.deployments {
        let name = want.name_any();
        if let Ok(Some(found)) = deployments.get_opt(&name).await {
            let replicas = found.spec.and_then(|s| s.replicas).unwrap_or(1);
            let ready = found.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            observed.push((name, replicas, ready));
        }
    }
    let effective = lock(&ctx.published).get(&desired.pipeline_key).map(|r| {
        (
            r.generation,
            Effective {
                orders_per_second: crate::build::pipeline_rate(r),
                payment_failure_ratio: r.payment_failure_ratio,
                paused: r.paused,
            },
        )
    });
    let heartbeats = observe::live_heartbeats(&ctx.heartbeats, &desired.pipeline_key);
    let measured = measure(desired, ctx).await;
    Observations {
        generation: pipeline.metadata.generation,
        effective,
        live_heartbeats: heartbeats,
        deployments: observed,
        measured,
        error: None,
        paused: pipeline.spec.paused,
        deleting: pipeline.metadata.deletion_timestamp.is_some(),
        expected_appliers: {
            let replicas = pipeline.spec.replicas();
            usize::try_from(replicas.orders.max(0) + replicas.payments.max(0)).unwrap_or(0)
        },
    }
}

/// The rates over the sampler's window and the lags now. `None` when the orders topic
/// cannot be read.
///
/// Lags need a consumer of each group, which takes a few hundred milliseconds to make:
/// they are read at most every [`LAGS_FRESH`] per pipeline, and the last ones reused in
/// between (a reconcile triggered by a heartbeat is then quick).
async fn measure(desired: &Desired, ctx: &Context) -> Option<Measured> {
    let key = &desired.pipeline_key;
    let fresh = lock(&ctx.lags)
        .get(key)
        .filter(|(at, _)| at.elapsed() < LAGS_FRESH)
        .map(|(_, lags)| *lags);
    let (payment_lag, notification_lag) = match fresh {
        Some(lags) => lags,
        None => {
            let topics = &desired.topics;
            let orders = observe::progress(&ctx.kafka, &topics.orders, &topics.payment_group).await;
            let payments =
                observe::progress(&ctx.kafka, &topics.payments, &topics.notification_group).await;
            let (Ok(Some((_, payment_lag))), Ok(payments)) = (orders, payments) else {
                return None;
            };
            let lags = (Some(payment_lag), payments.map(|(_, lag)| lag));
            lock(&ctx.lags).insert(key.clone(), (Instant::now(), lags));
            lags
        }
    };
    let (orders_per_second, failure_ratio) = ctx.rates.measured(key);
    Some(Measured {
        orders_per_second,
        failure_ratio,
        payment_lag,
        notification_lag,
    })
}

/// The status `observations` call for.
fn next_status(pipeline: &ShopPipeline, observations: &Observations) -> ShopPipelineStatus {
    let now = now();
    let mut next = status(observations, pipeline.status.as_ref(), &now);
    // Measured values move every period; keep the previous ones when there are no new
    // ones, so a missing sample does not flap the status.
    if next.measured.is_none() {
        next.measured = pipeline.status.as_ref().and_then(|s| s.measured.clone());
    }
    next
}

/// Writes `next` unless the resource already has it.
async fn write_status(
    pipeline: &ShopPipeline,
    next: ShopPipelineStatus,
    ctx: &Context,
) -> Result<(), Error> {
    if pipeline.status.as_ref() == Some(&next) {
        return Ok(());
    }
    let name = pipeline.name_any();
    let api: Api<ShopPipeline> = Api::namespaced(
        ctx.client.clone(),
        &pipeline.namespace().unwrap_or_default(),
    );
    let patch = serde_json::json!({
        "apiVersion": "shopstream.dev/v1alpha1",
        "kind": "ShopPipeline",
        "status": next,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::Status { name, source })?;
    Ok(())
}

/// Now, to the second: `metav1.Time` is written with seconds, so a status built with a
/// finer time would differ from the same status read back.
fn now() -> Time {
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// The first pause after a failed reconcile; it doubles with each failure in a row.
pub const RETRY_FIRST: Duration = Duration::from_secs(5);
/// The longest pause between retries of a failing pipeline.
pub const RETRY_MAX: Duration = Duration::from_secs(300);

/// Requeue policy on error: invalid specs wait for a change, everything else retries
/// with a pause that doubles with each failure in a row (5 s up to 5 min), so a pipeline
/// that keeps failing (Kafka down) does not keep the controller busy.
pub fn error_policy(
    pipeline: Arc<PartialObjectMeta<ShopPipeline>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let failures = {
        let mut failures = lock(&ctx.failures);
        let count = failures.entry(key_of(&pipeline)).or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    let delay = retry_delay(failures);
    warn!(pipeline = %pipeline.name_any(), reason = error.reason(), %error, failures, retry_in = ?delay, "reconcile failed");
    match error {
        Error::Build(_) | Error::Invalid { .. } => Action::await_change(),
        _ => Action::requeue(delay),
    }
}

/// The pause after the `failures`-th failure in a row.
pub fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (RETRY_FIRST * 2u32.pow(doublings)).min(RETRY_MAX)
}

fn key_of(meta: &PartialObjectMeta<ShopPipeline>) -> String {
    shop_domain::control::pipeline_key(&meta.namespace().unwrap_or_default(), &meta.name_any())
}

/// Records an event on the pipeline; an event that cannot be written is only logged.
async fn event(
    ctx: &Context,
    object: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, object).await {
        warn!(object = ?object.name, %error, "event not recorded");
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another reconcile panicked mid-update of a cache; the
    // cache is still usable (at worst a control record is published once more).
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_of_a_failing_pipeline_slow_down_to_five_minutes() {
        let delays: Vec<u64> = (1..=9).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }
}
