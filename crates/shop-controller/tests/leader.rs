//! Leader election with the real `shop-controller` binary: replicas run as processes that
//! share a Lease on the test bed's API server, and are killed, paused and resumed with
//! signals. Each test waits for the event that shows the behaviour: a change of the
//! Lease's holder, a pipeline's status written, a process's exit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use shop_controller::crd::{ShopPipeline, ShopPipelineSpec};
use shop_controller::leader::{LEASE_DURATION, RETRY_PERIOD};
use shop_testkit::{TestTopic, free_port, test_log, testbed, workspace_binary};
use support::{eventually, install_crd, three_deployments};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LEASE: &str = "shop-controller";

/// A `shop-controller` process, one replica; continued and stopped with SIGTERM when
/// dropped.
struct Replica {
    child: Child,
    identity: &'static str,
    port: u16,
    log: PathBuf,
}

impl Replica {
    fn start(
        identity: &'static str,
        namespace: &str,
        control: &TestTopic,
        heartbeats: &TestTopic,
    ) -> Self {
        let bed = testbed();
        let port = free_port();
        let name = format!("leader-{namespace}-{identity}");
        let log = shop_testkit::bed::repo_dir().join(format!("target/test-logs/{name}.log"));
        let child = Command::new(workspace_binary("shop-controller"))
            .args(["--bootstrap-servers", bed.kafka_bootstrap()])
            .args(["--control-topic", control.name()])
            .args(["--heartbeat-topic", heartbeats.name()])
            .args(["--watch-namespace", namespace])
            .args(["--leader-election-namespace", namespace])
            .env("KUBECONFIG", bed.kubeconfig().unwrap())
            .env("HTTP_PORT", port.to_string())
            .env("INSTANCE_ID", identity)
            .stdout(Stdio::null())
            .stderr(test_log(&name))
            .spawn()
            .unwrap();
        Self {
            child,
            identity,
            port,
            log,
        }
    }

    fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal} {}", self.identity);
    }

    /// `GET path`: status code and body, or `None` when nothing answers within a second
    /// (a stopped process accepts the connection but never answers).
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let request = async {
            let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
            let head =
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            stream.write_all(head.as_bytes()).await.ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).await.ok()?;
            let code = response.split_whitespace().nth(1)?.parse().ok()?;
            let body = response.split("\r\n\r\n").nth(1)?.to_owned();
            Some((code, body))
        };
        tokio::time::timeout(Duration::from_secs(1), request)
            .await
            .ok()
            .flatten()
    }

    /// `shopstream_controller_reconciles_total` from `/metrics`.
    async fn reconciles(&self) -> Option<u64> {
        let (200, body) = self.get("/metrics").await? else {
            return None;
        };
        body.lines()
            .find_map(|line| line.strip_prefix("shopstream_controller_reconciles_total "))?
            .trim()
            .parse()
            .ok()
    }

    async fn ready(&self) -> bool {
        matches!(self.get("/readyz").await, Some((200, _)))
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = Command::new("kill")
                .args(["-CONT", &self.child.id().to_string()])
                .status();
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
    }
}

/// Two replicas on one namespace, topics and Lease.
struct Bed {
    client: kube::Client,
    ns: String,
    control: TestTopic,
    heartbeats: TestTopic,
    leases: Api<Lease>,
    pipelines: Api<ShopPipeline>,
    _namespace: shop_testkit::TestNamespace,
}

impl Bed {
    async fn new(prefix: &str) -> Self {
        let bed = testbed();
        let client = bed.kube_client().await.unwrap();
        install_crd(client.clone()).await;
        let namespace = bed.namespace(prefix).await.unwrap();
        let ns = namespace.name().to_owned();
        Self {
            leases: Api::namespaced(client.clone(), &ns),
            pipelines: Api::namespaced(client.clone(), &ns),
            control: bed.topic("control", 1).await.unwrap(),
            heartbeats: bed.topic("heartbeats", 1).await.unwrap(),
            client,
            ns,
            _namespace: namespace,
        }
    }

    fn replica(&self, identity: &'static str) -> Replica {
        Replica::start(identity, &self.ns, &self.control, &self.heartbeats)
    }

    async fn lease(&self) -> Option<LeaseSpec> {
        self.leases.get_opt(LEASE).await.ok()??.spec
    }

    /// Waits until the Lease names `identity`, for at most `limit`; returns its spec.
    async fn held_by(&self, identity: &str, limit: Duration) -> LeaseSpec {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(spec) = self.lease().await
                && spec.holder_identity.as_deref() == Some(identity)
            {
                return spec;
            }
            assert!(
                Instant::now() < deadline,
                "{identity} did not take the Lease within {limit:?}; it is {:?}",
                self.lease().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates pipeline `name` and waits until the leader has reconciled it: its
    /// Deployments exist and its status describes its generation.
    async fn reconciled_pipeline(&self, name: &str) {
        let spec = ShopPipelineSpec {
            orders_per_second: 1.0,
            payment_failure_ratio: 0.0,
            paused: false,
            seed: None,
            replicas: None,
            partitions: Some(1),
        };
        self.pipelines
            .create(&PostParams::default(), &ShopPipeline::new(name, spec))
            .await
            .unwrap();
        three_deployments(&self.client, &self.ns, name).await;
        self.reconciled(name).await;
    }

    /// Waits until the leader has written the status of pipeline `name`'s current
    /// generation.
    async fn reconciled(&self, name: &str) {
        eventually(&format!("the status of {name}"), async || {
            let pipeline = self.pipelines.get(name).await.ok()?;
            let observed = pipeline.status?.observed_generation?;
            (Some(observed) == pipeline.metadata.generation).then_some(())
        })
        .await;
    }

    /// Who published which control record for `pipeline`, as `"<replica>: generation
    /// <n>"`, from the events.k8s.io Events with reason ControlPublished.
    async fn published(&self, pipeline: &str) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        let mut published: Vec<String> = events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("ControlPublished"))
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pipeline))
            .map(|e| {
                let note = e.note.unwrap_or_default();
                let generation = note.split(':').next().unwrap_or_default().to_owned();
                format!("{}: {generation}", e.reporting_instance.unwrap_or_default())
            })
            .collect();
        published.sort();
        published
    }
}

/// The longest a standby may need after the leader's last renewal: it sees the renewal
/// within a retry period, waits the lease duration from then, and writes at its next try.
fn takeover_limit() -> Duration {
    LEASE_DURATION + 2 * RETRY_PERIOD + Duration::from_secs(2)
}

/// Starts replica-a and waits until it leads (holds the Lease and has started its
/// controller), then replica-b and waits until it is a Ready standby. Returns them and the
/// Lease's transitions.
async fn leader_and_standby(bed: &Bed) -> (Replica, Replica, i32) {
    let a = bed.replica("replica-a");
    let spec = bed.held_by(a.identity, Duration::from_secs(60)).await;
    eventually("replica-a's controller to start", async || {
        a.log().contains("controller started").then_some(())
    })
    .await;
    let b = bed.replica("replica-b");
    eventually("the standby to be Ready", async || {
        b.ready().await.then_some(())
    })
    .await;
    assert_eq!(
        bed.lease().await.unwrap().holder_identity.as_deref(),
        Some(a.identity),
        "a Ready standby does not take a Lease that is renewed"
    );
    (a, b, spec.lease_transitions.unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_is_ready_but_does_not_reconcile() {
    let bed = Bed::new("ctl-leader-standby").await;
    let (a, b, _) = leader_and_standby(&bed).await;

    bed.reconciled_pipeline("shop").await;
    assert!(a.reconciles().await.unwrap() >= 1, "the leader reconciled");
    assert_eq!(b.reconciles().await, Some(0), "the standby reconciled");
    assert!(b.ready().await, "the standby is Ready");
    assert_eq!(bed.published("shop").await, ["replica-a: generation 1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_the_lease_duration() {
    let bed = Bed::new("ctl-leader-kill").await;
    let (a, b, transitions) = leader_and_standby(&bed).await;

    a.signal("KILL");
    let killed = Instant::now();
    let spec = bed.held_by("replica-b", takeover_limit()).await;
    let waited = killed.elapsed();
    // The last renewal was at most a retry period (and a request) before the kill; the
    // standby waits the whole lease duration from when it saw that renewal.
    assert!(
        waited >= LEASE_DURATION - 2 * RETRY_PERIOD,
        "the standby took the Lease {waited:?} after the kill: before it could have expired"
    );
    assert_eq!(spec.lease_transitions, Some(transitions + 1));

    // The new leader acts.
    bed.reconciled_pipeline("after").await;
    assert!(b.reconciles().await.unwrap() >= 1);
    assert_eq!(bed.published("after").await, ["replica-b: generation 1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_replaced_and_does_not_act_when_it_resumes() {
    let bed = Bed::new("ctl-leader-pause").await;
    let (mut a, b, transitions) = leader_and_standby(&bed).await;
    bed.reconciled_pipeline("before").await;
    assert_eq!(bed.published("before").await, ["replica-a: generation 1"]);

    a.signal("STOP");
    let stopped = Instant::now();
    bed.held_by("replica-b", takeover_limit()).await;
    assert!(stopped.elapsed() >= LEASE_DURATION - 2 * RETRY_PERIOD);

    // While the old leader sleeps, the new one acts: it publishes the changed rate of
    // `before` and runs a new pipeline. When the old leader resumes, its requeue timer
    // of `before` has fired, and its watch has both changes to deliver; were it to
    // reconcile, it would publish the rate as well (its own record is older).
    bed.pipelines
        .patch(
            "before",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"ordersPerSecond": 2.0}})),
        )
        .await
        .unwrap();
    bed.reconciled("before").await;
    bed.reconciled_pipeline("during").await;
    assert!(b.reconciles().await.unwrap() >= 1);

    // Resumed, the old leader finds its renew deadline long past: it reconciles nothing
    // and exits, so that a fresh start competes again as a standby.
    a.signal("CONT");
    let mut scraped = Vec::new();
    let status = eventually("the old leader to exit", async || {
        if let Some(count) = a.reconciles().await {
            scraped.push(count);
        }
        a.exited()
    })
    .await;
    assert!(
        scraped.windows(2).all(|pair| pair[0] == pair[1]),
        "the old leader reconciled after it resumed: {scraped:?}"
    );
    assert!(!status.success(), "exit status {status}");
    assert!(
        a.log().contains("leadership lost"),
        "the old leader says why it exits:\n{}",
        a.log()
    );
    // Only the new leader wrote after the pause, and it still holds the Lease.
    assert_eq!(
        bed.published("before").await,
        ["replica-a: generation 1", "replica-b: generation 2"]
    );
    assert_eq!(bed.published("during").await, ["replica-b: generation 1"]);
    let spec = bed.lease().await.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(spec.lease_transitions, Some(transitions + 1));
}

/// A holder whose clock is an hour behind writes `renewTime`s an hour old. As long as it
/// keeps renewing, the Lease is live, and a standby must not take it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_with_a_clock_behind_keeps_the_lease_while_it_renews() {
    let bed = Bed::new("ctl-leader-skew").await;
    let behind = || {
        let hour_ago = Timestamp::now() - SignedDuration::from_hours(1);
        LeaseSpec {
            holder_identity: Some("clock-behind".into()),
            lease_duration_seconds: i32::try_from(LEASE_DURATION.as_secs()).ok(),
            acquire_time: Some(MicroTime(hour_ago)),
            renew_time: Some(MicroTime(hour_ago)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }
    };
    let mut lease = bed
        .leases
        .create(
            &PostParams::default(),
            &Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE.into()),
                    ..ObjectMeta::default()
                },
                spec: Some(behind()),
            },
        )
        .await
        .unwrap();
    let a = bed.replica("replica-a");
    eventually("the replica to be a Ready standby", async || {
        a.ready().await.then_some(())
    })
    .await;

    // The holder renews every retry period for longer than the old controller took to
    // judge its renewTime expired. Each renewal carries the resourceVersion it read: a
    // conflict means the standby wrote the Lease.
    let mut last_renewal = Instant::now();
    for _ in 0..6 {
        tokio::time::sleep(RETRY_PERIOD).await;
        lease.spec = Some(behind());
        last_renewal = Instant::now();
        lease = match bed
            .leases
            .replace(LEASE, &PostParams::default(), &lease)
            .await
        {
            Ok(renewed) => renewed,
            Err(error) => panic!(
                "the standby took a Lease its holder kept renewing ({error}); it is {:?}",
                bed.lease().await
            ),
        };
    }

    // The holder stops; the standby takes over a lease duration after it saw the last
    // renewal, by its own clock.
    let spec = bed.held_by("replica-a", takeover_limit()).await;
    let waited = last_renewal.elapsed();
    assert!(
        waited >= LEASE_DURATION,
        "the standby took the Lease {waited:?} after the last renewal"
    );
    assert_eq!(spec.lease_transitions, Some(1));
}
