//! Helpers shared by the controller's integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, CustomResourceExt};
use shop_controller::crd::ShopPipeline;
use shop_controller::reconcile::ControllerMetrics;
use shop_runtime::{CancellationToken, Health, Metrics};
use shop_testkit::{TestTopic, testbed};

pub const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    config: shop_controller::run::Config,
}

pub struct Controller {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    pub health: Health,
}

impl Controller {
    pub async fn start(namespace: &str, control: &TestTopic, heartbeats: &TestTopic) -> Self {
        Self::start_as("test-controller", namespace, control, heartbeats).await
    }

    /// A controller replica named `identity`; replicas in one namespace share a Lease.
    pub async fn start_as(
        identity: &'static str,
        namespace: &str,
        control: &TestTopic,
        heartbeats: &TestTopic,
    ) -> Self {
        let client = testbed().kube_client().await.unwrap();
        Self::start_with(identity, client, namespace, control, heartbeats)
    }

    /// A controller replica that talks to the API server as `client` (e.g. a
    /// ServiceAccount with the controller's RBAC).
    pub fn start_with(
        identity: &'static str,
        client: kube::Client,
        namespace: &str,
        control: &TestTopic,
        heartbeats: &TestTopic,
    ) -> Self {
        shop_runtime::telemetry::init_for_tests();
        let bed = testbed();
        let args = Args::parse_from([
            "shop-controller",
            "--bootstrap-servers",
            bed.kafka_bootstrap(),
            "--control-topic",
            control.name(),
            "--heartbeat-topic",
            heartbeats.name(),
            "--watch-namespace",
            namespace,
            "--leader-election-namespace",
            namespace,
            "--sweep-interval-seconds",
            "1",
        ]);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let health = Health::new();
        let reported = health.clone();
        let task = tokio::spawn(async move {
            let metrics = ControllerMetrics::register(&Metrics::new());
            let board = shop_controller::live::Board::new(identity);
            shop_controller::run::run(args.config, client, identity, reported, metrics, board, stop)
                .await
                .unwrap();
        });
        Self {
            shutdown,
            task,
            health,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(TIMEOUT, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

pub async fn install_crd(client: kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let crd = ShopPipeline::crd();
    let name = crd.metadata.name.clone().unwrap();
    crds.patch(
        &name,
        &PatchParams::apply("shop-controller-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    tokio::time::timeout(
        TIMEOUT,
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await
    .unwrap()
    .unwrap();
}

pub async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the controller has created the three Deployments of `pipeline` in
/// `namespace` (one per service), and returns them.
pub async fn three_deployments(
    client: &kube::Client,
    namespace: &str,
    pipeline: &str,
) -> Vec<Deployment> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{}={pipeline}", shop_controller::build::PIPELINE_LABEL);
    eventually(
        &format!("the three Deployments of {pipeline}"),
        async || {
            let list = deployments
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()?;
            (list.items.len() == 3).then_some(list.items)
        },
    )
    .await
}
