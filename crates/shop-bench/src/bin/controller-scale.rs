//! `controller-scale`: the controller with many ShopPipelines on the test bed, measured.
//!
//! - the release `shop-controller` runs as a process against the bed's API server and
//!   broker, watching a namespace of its own;
//! - N pipelines are created at once; the Pods are the bed's kwok Pods, which run nothing,
//!   so a replica simulator publishes, for every pipeline but the first, the heartbeats its
//!   order-, payment- and notification-service replicas would (every 2 s, reporting the
//!   pipeline's latest control generation as applied, as a real replica does within
//!   milliseconds). The first pipeline runs the real services as processes;
//! - measured: the time until every pipeline is Ready; the controller's reconciles per
//!   pipeline per minute while nothing changes; its RSS (now, and its peak); and, on the
//!   pipeline with real services, the time from `kubectl patch` of the rate to
//!   `Applied=True` for that generation, p50 and p99 over many patches.
//!
//! Prints a Markdown section for `docs/benchmarks.md`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, CustomResourceExt, ResourceExt};
use rdkafka::producer::{FutureProducer, FutureRecord};
use shop_controller::crd::{ShopPipeline, ShopPipelineSpec};
use shop_domain::{ControlRecord, Heartbeat};
use shop_kafka::KafkaArgs;
use shop_kafka::compacted::FollowedTable;
use shop_runtime::CancellationToken;

#[derive(Parser, Debug)]
#[command(about = "shop-controller with many ShopPipelines on the test bed")]
struct Args {
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:19092"
    )]
    bootstrap_servers: String,
    /// Pipelines to create.
    #[arg(long, default_value_t = 100)]
    pipelines: usize,
    /// Rate patches to time on the pipeline with real services.
    #[arg(long, default_value_t = 100)]
    patches: usize,
    /// Directory of the release binaries (shop-controller and the three services).
    #[arg(long)]
    binaries: PathBuf,
    /// Where the processes' logs go.
    #[arg(long, default_value = "target/bench-logs")]
    logs: PathBuf,
}

/// A process stopped with SIGTERM when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn log_file(args: &Args, name: &str) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(&args.logs)?;
    Ok(std::fs::File::create(
        args.logs.join(format!("{name}.log")),
    )?)
}

/// VmRSS and VmHWM (peak) of a process, in MiB.
fn memory(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} in /proc/{pid}/status"))?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .context("a number")?
            .parse()?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// A counter on the controller's /metrics.
async fn metric(port: u16, name: &str) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await?;
    reply
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok())?
        })
        .with_context(|| format!("{name} on /metrics"))
}

fn condition(pipeline: &ShopPipeline, type_: &str) -> Option<(String, Option<i64>)> {
    let status = pipeline.status.as_ref()?;
    let c = status.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.observed_generation))
}

/// Publishes, every 2 s, the heartbeats the replicas of every simulated pipeline would:
/// each reports the pipeline's latest control generation as applied.
async fn simulate_replicas(
    kafka: KafkaArgs,
    control: FollowedTable,
    simulated: Vec<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let producer: FutureProducer = kafka
        .client_config("scale-simulator")
        .set("linger.ms", "5")
        .create()?;
    let mut every = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = every.tick() => {}
        }
        let now = shop_domain::time::rfc3339(SystemTime::now());
        let mut sends = Vec::new();
        for key in &simulated {
            let generation = control
                .get(key)
                .and_then(|v| ControlRecord::parse(&v).ok())
                .map(|r| r.generation);
            for (service, applies) in [
                ("order-service", true),
                ("payment-service", true),
                ("notification-service", false),
            ] {
                let instance = format!("{}-0", service);
                let heartbeat = Heartbeat {
                    pipeline: key.clone(),
                    service: service.into(),
                    instance: instance.clone(),
                    applied_generation: if applies { generation } else { None },
                    timestamp: now.clone(),
                    ..Heartbeat::default()
                };
                let record_key = shop_domain::control::heartbeat_key(key, service, &instance);
                let payload = heartbeat.to_json();
                let producer = producer.clone();
                let topic = kafka.heartbeat_topic.clone();
                sends.push(async move {
                    producer
                        .send(
                            FutureRecord::to(&topic).key(&record_key).payload(&payload),
                            Duration::from_secs(5),
                        )
                        .await
                        .map(|_| ())
                        .map_err(|(e, _)| e)
                });
            }
        }
        for result in futures::future::join_all(sends).await {
            result?;
        }
    }
}

/// Starts the real services of `pipeline` from its Deployments' environment.
fn start_services(
    args: &Args,
    deployments: &[Deployment],
    kafka: &KafkaArgs,
) -> anyhow::Result<Vec<Process>> {
    let mut started = Vec::new();
    for deployment in deployments {
        let container = &deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .context("a pod spec")?
            .containers[0];
        let mut command = Command::new(args.binaries.join(&container.name));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for var in container.env.iter().flatten() {
            if let Some(value) = &var.value {
                command.env(&var.name, value);
            }
        }
        let instance = format!("{}-0", deployment.name_any());
        command
            .env("KAFKA_BOOTSTRAP_SERVERS", &kafka.bootstrap_servers)
            .env("INSTANCE_ID", &instance)
            .env("HTTP_PORT", free_port()?.to_string())
            .stdout(Stdio::null())
            .stderr(log_file(args, &instance)?);
        started.push(Process(command.spawn()?));
    }
    Ok(started)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run = std::process::id();
    let client = kube::Client::try_default().await?;
    let ns = format!("scale-{run}");
    let shutdown = CancellationToken::new();

    // The CRD, a namespace, and room for 3 Pods per pipeline on the kwok node.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    crds.patch(
        "shoppipelines.shopstream.dev",
        &PatchParams::apply("controller-scale").force(),
        &Patch::Apply(&ShopPipeline::crd()),
    )
    .await?;
    let nodes: Api<Node> = Api::all(client.clone());
    for node in nodes.list(&ListParams::default()).await? {
        let pods = 3 * args.pipelines + 200;
        let patch = serde_json::json!({"status": {
            "capacity": {"pods": pods.to_string()},
            "allocatable": {"pods": pods.to_string()},
        }});
        nodes
            .patch_status(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(ns.clone());
    namespaces
        .create(&PostParams::default(), &namespace)
        .await?;

    let mut kafka = KafkaArgs::for_broker(&args.bootstrap_servers);
    kafka.control_topic = format!("scale-{run}-control");
    kafka.heartbeat_topic = format!("scale-{run}-heartbeats");
    let port = free_port()?;
    let controller = Process(
        Command::new(args.binaries.join("shop-controller"))
            .args(["--bootstrap-servers", &args.bootstrap_servers])
            .args(["--control-topic", &kafka.control_topic])
            .args(["--heartbeat-topic", &kafka.heartbeat_topic])
            .args(["--watch-namespace", &ns])
            .args(["--leader-election-namespace", &ns])
            .env("HTTP_PORT", port.to_string())
            .env("INSTANCE_ID", "scale-controller")
            .stdout(Stdio::null())
            .stderr(log_file(&args, "scale-controller")?)
            .spawn()?,
    );
    let pid = controller.0.id();
    // Once the controller made the control-plane topics, follow the control records.
    let control = loop {
        match FollowedTable::follow(
            &kafka,
            &kafka.control_topic,
            Duration::from_secs(10),
            shutdown.clone(),
        )
        .await
        {
            Ok(table) => break table,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };

    let pipelines: Api<ShopPipeline> = Api::namespaced(client.clone(), &ns);
    let names: Vec<String> = (0..args.pipelines).map(|i| format!("p{i:03}")).collect();
    let simulated: Vec<String> = names[1..]
        .iter()
        .map(|n| shop_domain::control::pipeline_key(&ns, n))
        .collect();
    let simulator = tokio::spawn(simulate_replicas(
        kafka.clone(),
        control.clone(),
        simulated,
        shutdown.clone(),
    ));

    let started = Instant::now();
    for (i, name) in names.iter().enumerate() {
        let spec = ShopPipelineSpec {
            orders_per_second: if i == 0 { 10.0 } else { 1.0 },
            payment_failure_ratio: 0.1,
            paused: i != 0,
            seed: None,
            replicas: None,
            partitions: Some(1),
        };
        pipelines
            .create(&PostParams::default(), &ShopPipeline::new(name, spec))
            .await?;
    }
    // The real services of the first pipeline, once its Deployments exist.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let first = loop {
        let list = deployments
            .list(&ListParams::default().labels(&format!(
                "{}={}",
                shop_controller::build::PIPELINE_LABEL,
                names[0]
            )))
            .await?;
        if list.items.len() == 3 {
            break list.items;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _services = start_services(&args, &first, &kafka)?;

    let ready_after = loop {
        let list = pipelines.list(&ListParams::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|p| condition(p, "Ready").is_some_and(|(s, _)| s == "True"))
            .count();
        if ready == args.pipelines {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(900) {
            bail!(
                "only {ready} of {} pipelines Ready after 15 min",
                args.pipelines
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (_, peak_while_starting) = memory(pid)?;

    // Idle: nothing changes for a minute.
    let reconciles = "shopstream_controller_reconciles_total";
    let before = metric(port, reconciles).await?;
    let idle_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let idle_minutes = idle_started.elapsed().as_secs_f64() / 60.0;
    let idle = (metric(port, reconciles).await? - before) / idle_minutes / args.pipelines as f64;
    let (rss_idle, _) = memory(pid)?;

    // Patches of the pipeline with real services, each timed to Applied=True for its
    // generation, seen on a watch.
    let watched = Arc::new(tokio::sync::Mutex::new(BTreeMap::<i64, Instant>::new()));
    let recorder = {
        let watched = Arc::clone(&watched);
        let stream = watcher(
            pipelines.clone(),
            watcher::Config::default().fields(&format!("metadata.name={}", names[0])),
        )
        .applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(pipeline)) = stream.next().await {
                if let Some(("True", Some(generation))) = condition(&pipeline, "Applied")
                    .as_ref()
                    .map(|(s, g)| (s.as_str(), *g))
                {
                    watched
                        .lock()
                        .await
                        .entry(generation)
                        .or_insert_with(Instant::now);
                }
            }
        })
    };
    let mut latencies = Vec::new();
    for i in 0..args.patches {
        let rate = if i % 2 == 0 { 11.0 } else { 10.0 };
        let patch = serde_json::json!({"spec": {"ordersPerSecond": rate}});
        let patched = pipelines
            .patch(&names[0], &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let sent = Instant::now();
        let generation = patched.metadata.generation.context("a generation")?;
        let deadline = sent + Duration::from_secs(30);
        loop {
            if let Some(at) = watched.lock().await.get(&generation) {
                latencies.push(at.saturating_duration_since(sent).as_secs_f64());
                break;
            }
            if Instant::now() > deadline {
                bail!("generation {generation} not Applied within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    recorder.abort();
    latencies.sort_by(f64::total_cmp);
    let (rss_end, peak) = memory(pid)?;

    shutdown.cancel();
    let _ = simulator.await;
    drop(controller);
    namespaces.delete(&ns, &DeleteParams::default()).await?;
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        kafka.client_config("controller-scale").create()?;
    let mut topics = vec![kafka.control_topic.clone(), kafka.heartbeat_topic.clone()];
    for name in &names {
        for what in ["orders", "payments", "dlq"] {
            topics.push(format!("{ns}.{name}.{what}"));
        }
    }
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    admin
        .delete_topics(&topics, &rdkafka::admin::AdminOptions::new())
        .await?;

    println!("## shop-controller with {} ShopPipelines\n", args.pipelines);
    println!(
        "Command: `make bench` (`controller-scale --pipelines {} --patches {}`), release build, the test bed's",
        args.pipelines, args.patches
    );
    println!(
        "API server, broker and kwok node. The first pipeline runs the real services as processes;"
    );
    println!(
        "for the others a simulator publishes the heartbeats their replicas would (the kwok Pods run"
    );
    println!("nothing).\n");
    println!("| measure | result | goal |");
    println!("|---|---|---|");
    println!(
        "| time until all {} are Ready | {:.1} s | |",
        args.pipelines,
        ready_after.as_secs_f64()
    );
    println!("| reconciles per pipeline per minute, idle | {idle:.2} | ≤ 2 |");
    println!(
        "| controller RSS idle / at the end / peak | {rss_idle:.0} / {rss_end:.0} / {peak:.0} MiB (peak while starting {peak_while_starting:.0}) | ≤ 64 MiB |"
    );
    println!(
        "| `kubectl patch` → `Applied=True`, p50 / p99 over {} patches | {:.0} / {:.0} ms | p99 ≤ 1 s |",
        latencies.len(),
        percentile(&latencies, 50.0) * 1000.0,
        percentile(&latencies, 99.0) * 1000.0
    );
    Ok(())
}
