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
use std::process::{Child, Command, Stdio};

use shop_testkit::{TestTopic, free_port, test_log, testbed, workspace_binary};

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
    pub metrics: Metrics,
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
        Self::start_on(
            identity,
            client,
            testbed().kafka_bootstrap(),
            namespace,
            control.name(),
            heartbeats.name(),
        )
    }

    /// A controller replica on the broker at `bootstrap` (the test bed's or a test's own).
    pub fn start_on(
        identity: &'static str,
        client: kube::Client,
        bootstrap: &str,
        namespace: &str,
        control: &str,
        heartbeats: &str,
    ) -> Self {
        shop_runtime::telemetry::init_for_tests();
        let args = Args::parse_from([
            "shop-controller",
            "--bootstrap-servers",
            bootstrap,
            "--control-topic",
            control,
            "--heartbeat-topic",
            heartbeats,
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
        let registry = Metrics::new();
        let metrics = ControllerMetrics::register(&registry);
        let task = tokio::spawn(async move {
            let board = shop_controller::live::Board::new(identity);
            shop_controller::run::run(
                args.config,
                client,
                identity,
                reported,
                metrics,
                board,
                stop,
            )
            .await
            .unwrap();
        });
        Self {
            shutdown,
            task,
            health,
            metrics: registry,
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

pub async fn eventually<T>(what: &str, check: impl AsyncFnMut() -> Option<T>) -> T {
    within(TIMEOUT, what, check).await
}

/// Polls `check` until it returns `Some`, for at most `limit`.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
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

/// A service process that is stopped with SIGTERM when dropped.
pub struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Starts the service of `deployment` as a local process with the Deployment's own
/// environment, so it runs exactly as its Pod would.
pub fn start_like(deployment: &Deployment, instance: &str) -> Service {
    let container = &deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    let mut command = Command::new(workspace_binary(&container.name));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for var in container.env.iter().flatten() {
        if let Some(value) = &var.value {
            command.env(&var.name, value);
        }
    }
    command
        .env("KAFKA_BOOTSTRAP_SERVERS", testbed().kafka_bootstrap())
        .env("INSTANCE_ID", instance)
        .env("HTTP_PORT", free_port().to_string())
        .stdout(Stdio::null())
        .stderr(test_log(instance));
    Service(command.spawn().unwrap())
}

/// Starts the three services of a pipeline as local processes, from the Deployments the
/// controller created, on the control and heartbeat topics of the test.
pub fn start_services(
    created: &[Deployment],
    control: &TestTopic,
    heartbeats: &TestTopic,
) -> Vec<Service> {
    created
        .iter()
        .map(|d| {
            let mut d = d.clone();
            // The controller's Pods reach Kafka by the address it was given, which here is
            // the test bed's broker too; pass the control topics of this test explicitly.
            let env = d
                .spec
                .as_mut()
                .unwrap()
                .template
                .spec
                .as_mut()
                .unwrap()
                .containers[0]
                .env
                .get_or_insert_with(Vec::new);
            for var in env.iter_mut() {
                match var.name.as_str() {
                    "CONTROL_TOPIC" => var.value = Some(control.name().to_owned()),
                    "HEARTBEAT_TOPIC" => var.value = Some(heartbeats.name().to_owned()),
                    _ => {}
                }
            }
            start_like(&d, &format!("{}-0", d.metadata.name.as_deref().unwrap()))
        })
        .collect()
}

/// The `shop-controller` binary, stopped with SIGTERM when dropped.
pub struct ControllerProcess(Child);

impl ControllerProcess {
    pub fn start(port: u16, namespace: &str, control: &TestTopic, heartbeats: &TestTopic) -> Self {
        let bed = testbed();
        let child = Command::new(workspace_binary("shop-controller"))
            .args(["--bootstrap-servers", bed.kafka_bootstrap()])
            .args(["--control-topic", control.name()])
            .args(["--heartbeat-topic", heartbeats.name()])
            .args(["--watch-namespace", namespace])
            .args(["--leader-election-namespace", namespace])
            .env("KUBECONFIG", bed.kubeconfig().unwrap())
            .env("HTTP_PORT", port.to_string())
            .env("INSTANCE_ID", "live-view-controller")
            .stdout(Stdio::null())
            .stderr(test_log(&format!("live-view-controller-{namespace}")))
            .spawn()
            .unwrap();
        Self(child)
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// The counter `name` (with its `_total` suffix) on the `/metrics` of the binary serving
/// on `port`.
pub async fn metric(port: u16, name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.ok()?;
    reply.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}
