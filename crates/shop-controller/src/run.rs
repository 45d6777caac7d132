//! The controller's settings and its main loop.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, PredicateConfig, WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client};
use shop_domain::control::{CONTROL_TOPIC, HEARTBEAT_TOPIC, ID_BLOCK_TOPIC};
use shop_kafka::KafkaArgs;
use shop_kafka::args::parse_bootstrap_servers;
use shop_kafka::topics::{control_plane_topics, ensure_topics};
use shop_runtime::{CancellationToken, Health};
use tracing::{info, warn};

use crate::build::Defaults;
use crate::crd::ShopPipeline;
use crate::leader::{Elector, LeaderGuard};
use crate::live::Board;
use crate::reconcile::{Context, ControllerMetrics, error_policy, reconcile};

/// Settings of the controller; each is a flag with an environment fallback.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Kafka bootstrap servers as the controller reaches them.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", default_value = "localhost:9092",
          value_parser = parse_bootstrap_servers)]
    pub bootstrap_servers: String,

    /// Kafka bootstrap servers as the pipelines' Pods reach them (default: the same).
    #[arg(long, env = "PIPELINE_KAFKA_BOOTSTRAP_SERVERS", value_parser = parse_bootstrap_servers)]
    pub pipeline_bootstrap_servers: Option<String>,

    /// Compacted topic of control records.
    #[arg(long, env = "CONTROL_TOPIC", default_value = CONTROL_TOPIC,
          value_parser = shop_kafka::topics::parse_topic)]
    pub control_topic: String,

    /// Compacted topic of the replicas' heartbeats.
    #[arg(long, env = "HEARTBEAT_TOPIC", default_value = HEARTBEAT_TOPIC,
          value_parser = shop_kafka::topics::parse_topic)]
    pub heartbeat_topic: String,

    /// Images are `<repository>/<service>:<tag>`.
    #[arg(long, env = "IMAGE_REPOSITORY", default_value = "shopstream")]
    pub image_repository: String,

    #[arg(long, env = "IMAGE_TAG", default_value = env!("CARGO_PKG_VERSION"))]
    pub image_tag: String,

    /// CPU request of every service container.
    #[arg(long, env = "SERVICE_CPU_REQUEST", default_value = "50m")]
    pub service_cpu_request: String,

    /// Memory request of every service container.
    #[arg(long, env = "SERVICE_MEMORY_REQUEST", default_value = "64Mi")]
    pub service_memory_request: String,

    /// Memory limit of every service container.
    #[arg(long, env = "SERVICE_MEMORY_LIMIT", default_value = "256Mi")]
    pub service_memory_limit: String,

    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Namespace of the leader-election Lease [default: the Pod's own namespace in a
    /// cluster, else the kubeconfig context's namespace].
    #[arg(long, env = "POD_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// Name of the leader-election Lease; replicas sharing it elect one leader.
    #[arg(long, env = "LEASE_NAME", default_value = "shop-controller")]
    pub lease_name: String,

    /// Seconds between sweeps of topics whose pipeline was deleted.
    #[arg(long, env = "SWEEP_INTERVAL_SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub sweep_interval_seconds: u64,
}

impl Config {
    fn kafka(&self) -> KafkaArgs {
        let mut kafka = KafkaArgs::for_broker(&self.bootstrap_servers);
        kafka.pipeline = "shop-controller".into();
        kafka.control_topic = self.control_topic.clone();
        kafka.heartbeat_topic = self.heartbeat_topic.clone();
        kafka.id_block_topic = ID_BLOCK_TOPIC.into();
        kafka
    }

    fn defaults(&self) -> Defaults {
        Defaults {
            bootstrap_servers: self
                .pipeline_bootstrap_servers
                .clone()
                .unwrap_or_else(|| self.bootstrap_servers.clone()),
            image_repository: self.image_repository.clone(),
            image_tag: self.image_tag.clone(),
            control_topic: self.control_topic.clone(),
            heartbeat_topic: self.heartbeat_topic.clone(),
            cpu_request: self.service_cpu_request.clone(),
            memory_request: self.service_memory_request.clone(),
            memory_limit: self.service_memory_limit.clone(),
        }
    }
}

/// At most this many pipelines are reconciled at once.
pub const CONCURRENCY: u16 = 8;

/// The readiness reason of a replica that waits for the Lease.
pub const STANDBY: &str = "standby: waiting for leadership";

/// Why the controller stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("leadership lost; exiting so that a fresh start can compete again")]
    LostLeadership,
}

async fn sweep_periodically(
    ctx: Arc<Context>,
    pipelines: Api<ShopPipeline>,
    scope: Option<String>,
    every: std::time::Duration,
    leader: LeaderGuard,
) {
    let shutdown = leader.token();
    let mut period = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = period.tick() => {}
        }
        if !leader.holds() {
            return;
        }
        if let Err(error) = crate::sweep::sweep(&ctx, &pipelines, scope.as_deref()).await {
            warn!(%error, "topic sweep failed; retrying next period");
        }
    }
}

/// Pipelines to reconcile because a replica just reported the control generation they
/// await (see [`Context::applied_trigger`]). Ends when the heartbeat follower does.
fn applied_triggers(
    ctx: Arc<Context>,
) -> impl futures::Stream<Item = ObjectRef<PartialObjectMeta<ShopPipeline>>> + Send + 'static {
    let changes = ctx.heartbeats.changes();
    futures::stream::unfold((ctx, changes), |(ctx, mut changes)| async move {
        loop {
            match changes.recv().await {
                Ok(key) => {
                    if let Some(pipeline) = ctx.applied_trigger(&key) {
                        return Some((pipeline, (ctx, changes)));
                    }
                }
                // Missed keys are caught by the periodic refresh.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

/// Runs the controller until `shutdown`: waits to lead, then reconciles and sweeps while
/// it leads. Returns when shutdown was asked for or leadership was lost.
pub async fn run(
    config: Config,
    client: Client,
    identity: &str,
    health: Health,
    metrics: ControllerMetrics,
    board: Board,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    // kube's default namespace is the service account's namespace in a Pod, so replicas of
    // one installation share the Lease of their own namespace.
    let lease_namespace = config
        .leader_election_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let elector = Elector::new(
        client.clone(),
        &lease_namespace,
        &config.lease_name,
        identity,
    );
    // A standby is Ready: it is healthy and ready to take over, and a rollout of two
    // replicas must not wait for the one that cannot lead while the other does.
    health.set_ready(true, STANDBY);
    let lease = format!("{lease_namespace}/{}", config.lease_name);
    board.standby(&lease);
    let Some(leadership) = elector.lead(&shutdown).await else {
        return Ok(());
    };
    board.leading(&lease);
    let guard = leadership.guard();
    let controller = run_as_leader(
        config,
        client,
        identity,
        health.clone(),
        metrics,
        board,
        guard.clone(),
    );
    let result = stopped_within(DRAIN_LIMIT, guard.token(), controller).await;
    let lost = leadership.lost(&shutdown);
    // Only now that the controller has stopped may a standby take over at once.
    leadership.release().await;
    if lost && result.is_ok() {
        return Err(Error::LostLeadership);
    }
    result
}

/// How long the controller may drain once leadership ends (shutdown or lost Lease). The
/// Lease stays renewed meanwhile, so a controller that hangs in its stop would keep it
/// from every standby; after this it is dropped, which aborts its reconciles.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `controller` to its end, or until `limit` after `stop` was cancelled.
async fn stopped_within(
    limit: std::time::Duration,
    stop: CancellationToken,
    controller: impl Future<Output = Result<(), Error>>,
) -> Result<(), Error> {
    let overdue = async {
        stop.cancelled().await;
        tokio::time::sleep(limit).await;
    };
    tokio::select! {
        result = controller => result,
        () = overdue => {
            warn!(?limit, "controller did not stop in time; its reconciles are aborted");
            Ok(())
        }
    }
}

/// Reconciles only while this replica still leads by its own clock: after a pause (e.g.
/// SIGSTOP) a queued reconcile may run before the renewal task notices that the Lease was
/// lost, and must not write.
async fn reconcile_while_leading(
    object: Arc<PartialObjectMeta<ShopPipeline>>,
    ctx: Arc<Context>,
    leader: LeaderGuard,
) -> Result<Action, crate::reconcile::Error> {
    if !leader.holds() {
        return Ok(Action::await_change());
    }
    reconcile(object, ctx).await
}

async fn run_as_leader(
    config: Config,
    client: Client,
    identity: &str,
    health: Health,
    metrics: ControllerMetrics,
    board: Board,
    leader: LeaderGuard,
) -> Result<(), Error> {
    let shutdown = leader.token();
    let kafka = config.kafka();
    // Kafka may be down when the controller starts: wait for it (shop-runtime's one
    // start-up retry) instead of exiting, not ready with the reason meanwhile.
    let started =
        shop_runtime::retry::start_up("connecting to Kafka", &shutdown, &health, || async {
            ensure_topics(&kafka, &control_plane_topics(&kafka)).await?;
            Context::new(
                client.clone(),
                config.defaults(),
                kafka.clone(),
                metrics.clone(),
                identity,
                board.clone(),
                shutdown.clone(),
            )
            .await
        })
        .await;
    let Some(ctx) = started.map(Arc::new) else {
        return Ok(());
    };
    // Pipelines are watched as metadata only; reconcile reads each object by itself (see
    // `reconcile`), so one unreadable object cannot stop the watch.
    let (pipelines, metas, deployments): (
        Api<ShopPipeline>,
        Api<PartialObjectMeta<ShopPipeline>>,
        Api<Deployment>,
    ) = match &config.watch_namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client),
        ),
    };
    let sweep_every = std::time::Duration::from_secs(config.sweep_interval_seconds);
    tokio::spawn(sweep_periodically(
        Arc::clone(&ctx),
        pipelines.clone(),
        config.watch_namespace.clone(),
        sweep_every,
        leader.clone(),
    ));
    // Reconcile on what can change the desired state: the spec (metadata.generation, so a
    // status write does not trigger a reconcile of its own) and the pipeline's
    // Deployments. Measured values are refreshed by the requeue of each reconcile.
    let (store, writer) = reflector::store();
    let trigger = watcher(metas, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, PredicateConfig::default());
    tokio::spawn(crate::measure::sample_periodically(
        Arc::clone(&ctx),
        store.clone(),
        shutdown.clone(),
    ));
    let children = watcher::Config::default().labels(crate::build::PIPELINE_LABEL);
    info!(
        namespace = config.watch_namespace.as_deref().unwrap_or("*"),
        "controller started"
    );
    health.set_ready(true, "");
    let stop = shutdown.clone();
    Controller::for_stream(trigger, store)
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY))
        .owns(deployments, children)
        .reconcile_on(applied_triggers(Arc::clone(&ctx)))
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(
            move |object, ctx| reconcile_while_leading(object, ctx, leader.clone()),
            error_policy,
            ctx,
        )
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(pipeline = %object.name, "reconciled"),
                Err(error) => warn!(%error, "reconcile loop"),
            }
        })
        .await;
    health.set_ready(false, "shutting down");
    info!("controller stopped");
    Ok(())
}
