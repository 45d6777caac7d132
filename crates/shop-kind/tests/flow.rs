//! The user's flow on a real kind cluster, as the README tells it: `make up` (cluster from
//! kind-config.yaml, images from the Dockerfile, the chart with its Kafka), then `kubectl get
//! sp`, `kubectl logs`, `kubectl patch`, a second pipeline, `helm test` and `make down`.
//!
//! It needs the test bed's `kind` component: `KIND_NODE_IMAGE` (the bed's node image) and,
//! on hosts without CAP_SYS_RESOURCE, the docker shim first on PATH, both set by
//! the bed's env file. Only `KIND_NODE_IMAGE`, `KIND_CLUSTER` and `KUBECONFIG` differ from
//! a user's `make up`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use shop_testkit::bed::repo_dir;

const NAMESPACE: &str = "shopstream";
/// The chart's Kafka, as Pods in the cluster reach it.
const KAFKA: &str = "shopstream-kafka.shopstream.svc.cluster.local:9092";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A kind cluster made by `make up`; `make down` on drop.
struct Cluster {
    name: String,
    kubeconfig: PathBuf,
    down: bool,
}

impl Cluster {
    fn up() -> Self {
        let node_image = std::env::var("KIND_NODE_IMAGE").expect(
            "KIND_NODE_IMAGE not set: this test needs the test bed's kind component \
             (SHOPSTREAM_TESTBED_COMPONENTS with kind, then source \"$(testbed/bed.sh env)\")",
        );
        let dir = repo_dir().join("target/kind-e2e");
        std::fs::create_dir_all(&dir).unwrap();
        let cluster = Self {
            name: "shopstream-e2e".into(),
            kubeconfig: dir.join("kubeconfig"),
            down: false,
        };
        let log = dir.join("make-up.log");
        let status = cluster
            .make("up")
            .env("KIND_NODE_IMAGE", node_image)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("make-up.err")).unwrap())
            .status()
            .unwrap();
        let err = std::fs::read_to_string(dir.join("make-up.err")).unwrap_or_default();
        assert!(status.success(), "make up failed ({status}):\n{err}");
        cluster
    }

    fn make(&self, target: &str) -> Command {
        let mut make = Command::new("make");
        make.arg("-C")
            .arg(repo_dir())
            .arg(target)
            .env("KIND_CLUSTER", &self.name)
            .env("KUBECONFIG", &self.kubeconfig);
        make
    }

    fn down(&mut self) {
        let out = self.make("down").output().unwrap();
        assert!(out.status.success(), "make down: {}", text(&out.stderr));
        self.down = true;
    }

    fn context(&self) -> String {
        format!("kind-{}", self.name)
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("KUBECONFIG", &self.kubeconfig);
        command
    }

    /// `kubectl --context kind-<name> ARGS`; fails the test when kubectl fails.
    fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_output(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn kubectl_output(&self, args: &[&str]) -> Output {
        self.command("kubectl")
            .arg("--context")
            .arg(self.context())
            .args(args)
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all)).unwrap()
    }

    fn pipeline(&self, namespace: &str, name: &str) -> Value {
        self.json(&["-n", namespace, "get", "shoppipeline", name])
    }

    /// Patches a pipeline's spec and returns the generation that the patch made.
    fn patch(&self, namespace: &str, name: &str, spec: Value) -> i64 {
        let patch = serde_json::json!({ "spec": spec }).to_string();
        let patched = self.json(&[
            "-n",
            namespace,
            "patch",
            "shoppipeline",
            name,
            "--type",
            "merge",
            "-p",
            &patch,
        ]);
        patched["metadata"]["generation"].as_i64().unwrap()
    }

    /// Notification lines of a pipeline, each with its timestamp.
    fn lines(&self, namespace: &str, pipeline: &str) -> Vec<(Stamp, String)> {
        let deployment = format!("deploy/{pipeline}-notification-service");
        self.kubectl(&["-n", namespace, "logs", &deployment, "--timestamps"])
            .lines()
            .filter_map(|line| {
                let (stamp, rest) = line.split_once(' ')?;
                (rest.starts_with('✅') || rest.starts_with('❌'))
                    .then(|| (Stamp::parse(stamp), rest.to_owned()))
            })
            .collect()
    }

    /// Runs `shopctl ARGS` in a Pod of the controller's image in the cluster (it reaches
    /// Kafka by cluster DNS) and returns its output's last line; fails when the Pod fails.
    fn run_shopctl(&self, args: &[&str]) -> String {
        let name = format!("shopctl-{}", std::process::id());
        let image = format!("shopstream/shop-controller:{}", env!("CARGO_PKG_VERSION"));
        let mut run = vec![
            "-n",
            NAMESPACE,
            "run",
            &name,
            "--restart=Never",
            "--image-pull-policy=IfNotPresent",
            "--labels=app.kubernetes.io/part-of=shopstream",
        ];
        let image_flag = format!("--image={image}");
        run.push(&image_flag);
        run.extend(["--command", "--", "shopctl", "--bootstrap-servers", KAFKA]);
        run.extend_from_slice(args);
        self.kubectl(&run);
        let pod = format!("pod/{name}");
        let phase = eventually(
            &format!("{pod} to finish"),
            Duration::from_secs(180),
            || {
                let p = self.json(&["-n", NAMESPACE, "get", &pod]);
                let phase = p["status"]["phase"].as_str()?.to_owned();
                (phase == "Succeeded" || phase == "Failed").then_some(phase)
            },
        );
        let logs = self.kubectl(&["-n", NAMESPACE, "logs", &pod]);
        self.kubectl(&["-n", NAMESPACE, "delete", &pod, "--wait=false"]);
        assert_eq!(phase, "Succeeded", "shopctl {}:\n{logs}", args.join(" "));
        logs.lines().last().unwrap_or_default().trim().to_owned()
    }

    /// Restart counts of a pipeline's Pods, by Pod name.
    fn restarts(&self, namespace: &str, pipeline: &str) -> BTreeMap<String, i64> {
        let selector = format!("shopstream.dev/pipeline={pipeline}");
        let pods = self.json(&["-n", namespace, "get", "pods", "-l", &selector]);
        pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pod| {
                let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
                let restarts = pod["status"]["containerStatuses"]
                    .as_array()
                    .map_or(0, |cs| {
                        cs.iter()
                            .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                            .sum()
                    });
                (name, restarts)
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.down {
            let _ = self.make("down").output();
        }
    }
}

/// A log timestamp, comparable: RFC 3339 up to the second, then nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Stamp(String, u32);

impl Stamp {
    fn parse(stamp: &str) -> Self {
        let stamp = stamp.trim_end_matches('Z');
        let (seconds, fraction) = stamp.split_once('.').unwrap_or((stamp, "0"));
        let nanos = format!("{fraction:0<9}")[..9].parse().unwrap();
        Self(seconds.to_owned(), nanos)
    }

    /// The date, and the milliseconds since its midnight.
    fn millis_of_day(&self) -> Option<(String, f64)> {
        let (date, time) = self.0.split_once('T')?;
        let mut parts = time.split(':').map(|p| p.parse::<f64>().ok());
        let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
        let millis = ((h * 60.0 + m) * 60.0 + s) * 1000.0 + f64::from(self.1) / 1e6;
        Some((date.to_owned(), millis))
    }

    /// The host's clock now (the node's containers share it).
    fn now() -> Self {
        let out = Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%M:%S.%NZ"])
            .output()
            .unwrap();
        Self::parse(text(&out.stdout).trim())
    }
}

fn condition(pipeline: &Value, kind: &str) -> Option<String> {
    pipeline["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str().map(String::from))
}

fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Waits until the pipeline reports `generation` observed and Applied True.
fn applied(cluster: &Cluster, namespace: &str, name: &str, generation: i64) {
    eventually(
        &format!("{namespace}/{name} to apply generation {generation}"),
        Duration::from_secs(120),
        || {
            let p = cluster.pipeline(namespace, name);
            (p["status"]["observedGeneration"].as_i64() == Some(generation)
                && condition(&p, "Applied").as_deref() == Some("True"))
            .then_some(())
        },
    );
}

/// Whether the order of a line printed at `printed` was created after `since`: the line
/// ends with the order's end-to-end latency ("… · 129 ms"). A payment decided before a
/// setting was applied may still be printed after `Applied` was seen; an order created
/// after that was decided under the setting. Lines across midnight count as after.
fn created_after(printed: &Stamp, line: &str, since: &Stamp) -> bool {
    let latency: Option<f64> = line
        .rsplit(" · ")
        .next()
        .and_then(|l| l.strip_suffix(" ms"))
        .and_then(|l| l.parse().ok());
    match (printed.millis_of_day(), since.millis_of_day(), latency) {
        (Some((day, at)), Some((since_day, since_at)), Some(latency)) if day == since_day => {
            at - latency > since_at
        }
        _ => true,
    }
}

/// The lines printed after `since` for orders created after it, once there are at least
/// `count` of them.
fn lines_after(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    since: &Stamp,
    count: usize,
) -> Vec<String> {
    eventually(
        &format!("{count} notification lines of {namespace}/{name}"),
        Duration::from_secs(180),
        || {
            let lines: Vec<String> = cluster
                .lines(namespace, name)
                .into_iter()
                .filter(|(stamp, line)| stamp > since && created_after(stamp, line, since))
                .map(|(_, line)| line)
                .collect();
            (lines.len() >= count).then_some(lines)
        },
    )
}

fn measured_rate(pipeline: &Value) -> Option<f64> {
    pipeline["status"]["measured"]["ordersPerSecond"].as_f64()
}

fn within(value: f64, target: f64, tolerance: f64) -> bool {
    (value - target).abs() <= target * tolerance
}

fn kubectl_apply(cluster: &Cluster, manifest: &str) {
    let mut child = cluster
        .command("kubectl")
        .args(["--context", &cluster.context(), "apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kubectl apply: {}", text(&out.stderr));
}

#[test]
fn the_users_flow_on_kind() {
    let mut cluster = Cluster::up();

    // make up waited for Ready; OBSERVED follows RATE (20/s by the chart's default).
    let demo = eventually(
        "demo Ready with OBSERVED close to RATE",
        Duration::from_secs(180),
        || {
            let p = cluster.pipeline(NAMESPACE, "demo");
            let rate = p["spec"]["ordersPerSecond"].as_f64()?;
            (condition(&p, "Ready").as_deref() == Some("True")
                && within(measured_rate(&p)?, rate, 0.2))
            .then_some(p)
        },
    );
    let ratio = demo["spec"]["paymentFailureRatio"].as_f64().unwrap();

    // kubectl logs: ✅ and ❌ in the spec's proportion (a 99.9% binomial interval).
    let lines = lines_after(&cluster, NAMESPACE, "demo", &Stamp(String::new(), 0), 300);
    let failed = lines.iter().filter(|l| l.starts_with('❌')).count() as u64;
    let n = lines.len() as u64;
    let interval = shopctl::verdict::binomial_interval(n, ratio, 0.999);
    assert!(
        interval.contains(failed),
        "{failed} of {n} payments failed; the spec's ratio {ratio} allows {interval:?}"
    );

    // helm test: shopctl verify in the cluster.
    let test = cluster
        .command("helm")
        .args([
            "test",
            "shopstream",
            "-n",
            NAMESPACE,
            "--kube-context",
            &cluster.context(),
        ])
        .args(["--timeout", "5m", "--logs"])
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "helm test failed:\n{}{}",
        text(&test.stdout),
        text(&test.stderr)
    );

    // Live tuning: every line after Applied is ❌, then every line ✅; no Pod restarted.
    let restarts = cluster.restarts(NAMESPACE, "demo");
    for (ratio, mark) in [(1.0, '❌'), (0.0, '✅')] {
        let generation = cluster.patch(
            NAMESPACE,
            "demo",
            serde_json::json!({"paymentFailureRatio": ratio}),
        );
        applied(&cluster, NAMESPACE, "demo", generation);
        let since = Stamp::now();
        let after = lines_after(&cluster, NAMESPACE, "demo", &since, 40);
        let wrong: Vec<_> = after.iter().filter(|l| !l.starts_with(mark)).collect();
        assert!(
            wrong.is_empty(),
            "after ratio {ratio} was applied: {wrong:?}"
        );
    }
    assert_eq!(
        cluster.restarts(NAMESPACE, "demo"),
        restarts,
        "tuning restarted a Pod"
    );

    // The rate: status.measured follows a patched ordersPerSecond within 10 %.
    let generation = cluster.patch(
        NAMESPACE,
        "demo",
        serde_json::json!({"ordersPerSecond": 50}),
    );
    applied(&cluster, NAMESPACE, "demo", generation);
    eventually(
        "OBSERVED within 10 % of 50/s",
        Duration::from_secs(180),
        || {
            within(
                measured_rate(&cluster.pipeline(NAMESPACE, "demo"))?,
                50.0,
                0.1,
            )
            .then_some(())
        },
    );

    // A payment-service Pod killed mid-stream: its replacement takes over, and once the
    // pipeline is paused and drained every order has exactly one committed payment
    // (shopctl audit, read_committed, in the cluster).
    let selector = "shopstream.dev/pipeline=demo,app.kubernetes.io/component=payment-service";
    let victim = cluster.kubectl(&["-n", NAMESPACE, "get", "pods", "-l", selector, "-o", "name"]);
    let victim = victim.lines().next().unwrap().to_owned();
    cluster.kubectl(&["-n", NAMESPACE, "delete", &victim, "--wait=false"]);
    eventually(
        "a replacement payment-service Pod Ready",
        Duration::from_secs(180),
        || {
            let pods = cluster.json(&["-n", NAMESPACE, "get", "pods", "-l", selector]);
            let ready = pods["items"]
                .as_array()?
                .iter()
                .filter(|p| {
                    format!("pod/{}", p["metadata"]["name"].as_str().unwrap_or("")) != victim
                })
                .filter(|p| {
                    p["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                })
                .count();
            (ready == 2).then_some(())
        },
    );
    lines_after(&cluster, NAMESPACE, "demo", &Stamp::now(), 50);
    let generation = cluster.patch(NAMESPACE, "demo", serde_json::json!({"paused": true}));
    applied(&cluster, NAMESPACE, "demo", generation);
    eventually(
        "demo drained (payment lag 0)",
        Duration::from_secs(180),
        || {
            let p = cluster.pipeline(NAMESPACE, "demo");
            (p["status"]["measured"]["paymentLag"].as_i64() == Some(0)).then_some(())
        },
    );
    let audit = cluster.run_shopctl(&[
        "audit",
        "--orders-topic",
        "shopstream.demo.orders",
        "--payments-topic",
        "shopstream.demo.payments",
    ]);
    assert!(audit.ends_with(": OK"), "{audit}");
    let generation = cluster.patch(NAMESPACE, "demo", serde_json::json!({"paused": false}));
    applied(&cluster, NAMESPACE, "demo", generation);

    // A second pipeline in another namespace flows beside the first; deleting it collects
    // its Deployments and sweeps its topics.
    kubectl_apply(
        &cluster,
        r#"apiVersion: v1
kind: Namespace
metadata: {name: e2e-second}
---
apiVersion: shopstream.dev/v1alpha1
kind: ShopPipeline
metadata: {name: second, namespace: e2e-second}
spec: {ordersPerSecond: 10, paymentFailureRatio: 0.5, partitions: 2}
"#,
    );
    eventually("second Ready", Duration::from_secs(240), || {
        (condition(&cluster.pipeline("e2e-second", "second"), "Ready").as_deref() == Some("True"))
            .then_some(())
    });
    let since = Stamp::now();
    let second = lines_after(&cluster, "e2e-second", "second", &since, 20);
    assert!(
        second.iter().any(|l| l.starts_with('✅')) && second.iter().any(|l| l.starts_with('❌'))
    );
    lines_after(&cluster, NAMESPACE, "demo", &since, 100);
    cluster.kubectl(&["-n", "e2e-second", "delete", "shoppipeline", "second"]);
    eventually(
        "second's Deployments collected",
        Duration::from_secs(120),
        || {
            cluster.json(&["-n", "e2e-second", "get", "deployments"])["items"]
                .as_array()?
                .is_empty()
                .then_some(())
        },
    );
    eventually("second's topics swept", Duration::from_secs(180), || {
        // The controller reports each topic it deleted.
        let log = cluster.kubectl(&["-n", NAMESPACE, "logs", "deploy/shopstream-controller"]);
        ["orders", "payments"]
            .iter()
            .all(|t| {
                let topic = format!("e2e-second.second.{t}");
                log.lines()
                    .any(|l| l.contains("deleted topic") && l.contains(&topic))
            })
            .then_some(())
    });
    // demo still flows.
    lines_after(&cluster, NAMESPACE, "demo", &Stamp::now(), 20);

    // make down: no cluster, no node container.
    cluster.down();
    let clusters = text(
        &cluster
            .command("kind")
            .args(["get", "clusters"])
            .output()
            .unwrap()
            .stdout,
    );
    assert!(!clusters.lines().any(|c| c == cluster.name), "{clusters}");
    let containers = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=io.x-k8s.kind.cluster={}", cluster.name),
            "-q",
        ])
        .output()
        .unwrap();
    assert!(
        text(&containers.stdout).trim().is_empty(),
        "node containers left"
    );
}
