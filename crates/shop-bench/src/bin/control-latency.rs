//! `control-latency`: the control loop's own targets on the test bed's broker, each next to
//! a baseline measured in the same run.
//!
//! - **apply latency**: order-service and payment-service run as release processes; the
//!   bench publishes control records the way `shopctl set` does (idempotent, `acks=all`)
//!   and times each from its produce acknowledgement to the first heartbeat of each
//!   service that reports the new generation as applied, read off the heartbeat topic (the
//!   signal the controller turns into `Applied`). Baselines, on the same topics: a raw
//!   rdkafka consumer with librdkafka's defaults (ack → consumed), and the same consumer
//!   echoing every record to the heartbeat topic at once (ack → echo consumed: the two
//!   hops a service's heartbeat takes, with no service in between).
//! - **idle cost**: fetch requests per second of an idle consumer configured exactly like
//!   the services' control follower and the controller's heartbeat follower (librdkafka
//!   statistics), next to one with `fetch.wait.max.ms=10`; and the CPU the two services
//!   use while paused.
//! - **`shopctl set` wall time**: the real binary, run N times against a control topic
//!   that also holds other pipelines' records, next to a process that only produces one
//!   record and flushes (this binary with `--produce-one`), runs interleaved.
//!
//! Prints a Markdown section for `docs/benchmarks.md`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use shop_domain::{ControlRecord, Heartbeat};
use shop_kafka::KafkaArgs;
use shop_kafka::topics::{TopicSpec, control_plane_topics, ensure_topics};
use shop_runtime::CancellationToken;

#[derive(Parser, Debug)]
#[command(about = "control record acknowledged → applied, and `shopctl set`, on the test bed")]
struct Args {
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:19092"
    )]
    bootstrap_servers: String,
    /// Directory of the release binaries (order-service, payment-service, shopctl).
    #[arg(long)]
    binaries: Option<PathBuf>,
    /// Control changes to time (after a few warm-up changes that are not counted).
    #[arg(long, default_value_t = 200)]
    changes: u64,
    /// Runs of `shopctl set` (and as many of the baseline process).
    #[arg(long, default_value_t = 20)]
    shopctl_runs: usize,
    /// Records of other pipelines written to the control topic first, as on a shared
    /// topic that many pipelines and changes wrote to.
    #[arg(long, default_value_t = 5000)]
    other_records: usize,
    /// Where the services' logs go.
    #[arg(long, default_value = "target/bench-logs")]
    logs: PathBuf,
    /// Baseline child: produce one record to this topic (key `PIPELINE`), flush, exit.
    #[arg(long, hide = true, value_name = "TOPIC")]
    produce_one: Option<String>,
}

const WARM_UP: u64 = 5;
const IDLE: Duration = Duration::from_secs(10);

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

/// When each (source, generation) was first seen: `consumed` and `echo` for the
/// baselines, the service name for a heartbeat reporting the generation as applied
/// (generation 0: a heartbeat before any record was applied).
type Seen = Arc<Mutex<HashMap<(String, u64), Instant>>>;

fn see(seen: &Seen, source: &str, generation: u64) {
    seen.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry((source.to_owned(), generation))
        .or_insert_with(Instant::now);
}

fn seen_at(seen: &Seen, source: &str, generation: u64) -> Option<Instant> {
    seen.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&(source.to_owned(), generation))
        .copied()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50 / p99 / max of `values` (ms), as table cells.
fn cells(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    format!(
        "{:.1} | {:.1} | {:.1}",
        percentile(values, 50.0),
        percentile(values, 99.0),
        values.last().copied().unwrap_or(f64::NAN)
    )
}

/// CPU time (user + system) of a process so far.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("/proc/<pid>/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the file, 12 and 13 after the name.
    let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
        + fields.get(12).context("stime")?.parse::<u64>()?;
    // The kernel reports USER_HZ ticks, 100 per second on Linux.
    Ok(Duration::from_millis(ticks * 10))
}

/// A consumer context that keeps the number of Fetch requests sent so far.
#[derive(Clone, Default)]
struct FetchCount(Arc<Mutex<Option<i64>>>);

impl ClientContext for FetchCount {
    fn stats(&self, statistics: Statistics) {
        let fetches = statistics
            .brokers
            .values()
            .filter_map(|b| b.req.get("Fetch"))
            .sum();
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(fetches);
    }
}

impl ConsumerContext for FetchCount {}

impl FetchCount {
    fn get(&self) -> Option<i64> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn assign_end<C: ConsumerContext>(consumer: &StreamConsumer<C>, topic: &str) -> anyhow::Result<()> {
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::End)?;
    consumer.assign(&assignment)?;
    Ok(())
}

/// Fetch requests per second that `config` makes while nothing is written to `topic`.
async fn idle_fetches(mut config: ClientConfig, topic: &str) -> anyhow::Result<f64> {
    let context = FetchCount::default();
    let consumer: BaseConsumer<FetchCount> = config
        .set("statistics.interval.ms", "1000")
        .create_with_context(context.clone())?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::End)?;
    consumer.assign(&assignment)?;
    // Polling serves the statistics callback; nothing arrives on the idle topic.
    let polling = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        while started.elapsed() < IDLE + Duration::from_secs(5) {
            let _ = consumer.poll(Duration::from_millis(100));
        }
    });
    // Settle (connect, resolve the end offset), then count over IDLE.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = context.get().context("librdkafka statistics")?;
    let started = Instant::now();
    tokio::time::sleep(IDLE).await;
    let after = context.get().context("librdkafka statistics")?;
    let seconds = started.elapsed().as_secs_f64();
    polling.await?;
    Ok((after - before) as f64 / seconds)
}

/// Baseline `shopctl set`: one record, acknowledged by all in-sync replicas, and exit.
async fn produce_one(bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    let pipeline = std::env::var("PIPELINE").unwrap_or_else(|_| "bench/baseline".into());
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .create()?;
    let record = ControlRecord {
        generation: 1,
        orders_per_second: 1.0,
        payment_failure_ratio: 0.1,
        paused: false,
        seed: 0,
        extra: Default::default(),
    };
    let payload = record.to_json();
    producer
        .send(
            FutureRecord::to(topic).key(&pipeline).payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)?;
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}

/// The raw baseline: reads the control topic with librdkafka's defaults, notes when each
/// record of `pipeline` is consumed, and echoes its generation to the heartbeat topic.
async fn echo(kafka: KafkaArgs, seen: Seen, shutdown: CancellationToken) -> anyhow::Result<()> {
    // librdkafka wants a group for assign(); nothing joins it or commits to it.
    let consumer: StreamConsumer = kafka
        .client_config("bench-baseline")
        .set("group.id", "bench-baseline")
        .create()?;
    assign_end(&consumer, &kafka.control_topic)?;
    let producer: FutureProducer = kafka
        .client_config("bench-baseline")
        .set("linger.ms", "0")
        .create()?;
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            message = consumer.recv() => message?,
        };
        if message.key() != Some(kafka.pipeline.as_bytes()) {
            continue;
        }
        let Some(Ok(record)) = message.payload().map(ControlRecord::parse) else {
            continue;
        };
        see(&seen, "consumed", record.generation);
        let payload = record.generation.to_string();
        producer
            .send(
                FutureRecord::to(&kafka.heartbeat_topic)
                    .key("echo")
                    .payload(&payload),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
}

/// Reads the heartbeat topic with librdkafka's defaults: the echoes, and the services'
/// heartbeats with their applied generation.
async fn observe(kafka: KafkaArgs, seen: Seen, shutdown: CancellationToken) -> anyhow::Result<()> {
    let consumer: StreamConsumer = kafka
        .client_config("bench-observer")
        .set("group.id", "bench-observer")
        .create()?;
    assign_end(&consumer, &kafka.heartbeat_topic)?;
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            message = consumer.recv() => message?,
        };
        let Some(payload) = message.payload() else {
            continue;
        };
        if message.key() == Some(b"echo".as_slice()) {
            if let Some(generation) = std::str::from_utf8(payload)
                .ok()
                .and_then(|s| s.parse().ok())
            {
                see(&seen, "echo", generation);
            }
            continue;
        }
        if let Ok(heartbeat) = Heartbeat::parse(payload)
            && heartbeat.pipeline == kafka.pipeline
        {
            see(
                &seen,
                &heartbeat.service,
                heartbeat.applied_generation.unwrap_or(0),
            );
        }
    }
}

/// Runs a task of the bench, printing its error to stderr if it fails.
async fn reported(what: &str, task: impl Future<Output = anyhow::Result<()>>) {
    if let Err(error) = task.await {
        eprintln!("{what} failed: {error:#}");
    }
}

struct Topics {
    orders: String,
    payments: String,
    dlq: String,
}

fn start_service(
    binaries: &Path,
    name: &str,
    kafka: &KafkaArgs,
    topics: &Topics,
    logs: &Path,
) -> anyhow::Result<Process> {
    std::fs::create_dir_all(logs)?;
    let log = std::fs::File::create(logs.join(format!("control-latency-{name}.log")))?;
    let child = Command::new(binaries.join(name))
        .env("KAFKA_BOOTSTRAP_SERVERS", &kafka.bootstrap_servers)
        .env("PIPELINE", &kafka.pipeline)
        .env("CONTROL_TOPIC", &kafka.control_topic)
        .env("HEARTBEAT_TOPIC", &kafka.heartbeat_topic)
        .env("ID_BLOCK_TOPIC", &kafka.id_block_topic)
        .env("ORDERS_TOPIC", &topics.orders)
        .env("PAYMENTS_TOPIC", &topics.payments)
        .env("DLQ_TOPIC", &topics.dlq)
        .env(
            "PAYMENT_GROUP_ID",
            format!("{}-payments", kafka.control_topic),
        )
        .env("ORDERS_PER_SECOND", "100")
        .env("INSTANCE_ID", format!("{name}-bench"))
        .env("HTTP_PORT", free_port()?.to_string())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binaries.join(name).display()))?;
    Ok(Process(child))
}

/// Waits until every source in `sources` has seen `generation`.
async fn wait_for(seen: &Seen, sources: &[&str], generation: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing: Vec<&str> = sources
            .iter()
            .copied()
            .filter(|s| seen_at(seen, s, generation).is_none())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("generation {generation} not seen by {missing:?} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn record(generation: u64, paused: bool) -> ControlRecord {
    let odd = generation % 2 == 1;
    ControlRecord {
        generation,
        orders_per_second: if odd { 100.0 } else { 101.0 },
        payment_failure_ratio: if odd { 0.1 } else { 0.2 },
        paused,
        seed: 0,
        extra: Default::default(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(topic) = &args.produce_one {
        return produce_one(&args.bootstrap_servers, topic).await;
    }
    let binaries = args
        .binaries
        .clone()
        .context("--binaries: the directory of order-service, payment-service and shopctl")?;
    let run = std::process::id();
    let mut kafka = KafkaArgs::for_broker(&args.bootstrap_servers);
    kafka.pipeline = format!("bench/control-{run}");
    kafka.control_topic = format!("bench-{run}-control");
    kafka.heartbeat_topic = format!("bench-{run}-heartbeats");
    kafka.id_block_topic = format!("bench-{run}-ids");
    let topics = Topics {
        orders: format!("bench-{run}-orders"),
        payments: format!("bench-{run}-payments"),
        dlq: format!("bench-{run}-dlq"),
    };
    let mut specs = control_plane_topics(&kafka);
    specs.extend([
        TopicSpec::events(&topics.orders, 3),
        TopicSpec::events(&topics.payments, 3),
        TopicSpec::events(&topics.dlq, 1),
    ]);
    ensure_topics(&kafka, &specs).await?;

    // Changes are written the way shopctl writes them.
    let producer: FutureProducer = kafka
        .client_config("bench-control")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .create()?;
    for i in 0..args.other_records {
        let key = format!("bench/other-{}", i % 50);
        let payload = record(1 + (i / 50) as u64, false).to_json();
        producer
            .send_result(
                FutureRecord::to(&kafka.control_topic)
                    .key(&key)
                    .payload(&payload),
            )
            .map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(30))?;

    let shutdown = CancellationToken::new();
    let seen: Seen = Arc::default();
    let echo = tokio::spawn(reported(
        "the baseline consumer",
        echo(kafka.clone(), Arc::clone(&seen), shutdown.clone()),
    ));
    let observer = tokio::spawn(reported(
        "the heartbeat observer",
        observe(kafka.clone(), Arc::clone(&seen), shutdown.clone()),
    ));
    let order = start_service(&binaries, "order-service", &kafka, &topics, &args.logs)?;
    let payment = start_service(&binaries, "payment-service", &kafka, &topics, &args.logs)?;
    let services = ["order-service", "payment-service"];
    wait_for(&seen, &services, 0).await?;
    if echo.is_finished() || observer.is_finished() {
        bail!("a consumer of the bench stopped (its error is above)");
    }

    // Apply latency.
    let sources = ["consumed", "echo", "order-service", "payment-service"];
    let mut latencies: HashMap<&str, Vec<f64>> = HashMap::new();
    let last = WARM_UP + args.changes;
    for generation in 1..=last {
        let payload = record(generation, false).to_json();
        producer
            .send(
                FutureRecord::to(&kafka.control_topic)
                    .key(&kafka.pipeline)
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)?;
        let acked = Instant::now();
        wait_for(&seen, &sources, generation).await?;
        if generation > WARM_UP {
            for source in sources {
                let at = seen_at(&seen, source, generation).context("seen")?;
                // Seen before the acknowledgement reached the producer counts as 0.
                let ms = at.saturating_duration_since(acked).as_secs_f64() * 1000.0;
                latencies.entry(source).or_default().push(ms);
            }
        }
        // Changes apart, as people and the controller make them, at varied phases.
        tokio::time::sleep(Duration::from_millis(30 + (generation * 37) % 70)).await;
    }

    // Idle cost: the services paused; consumers configured like the followers.
    let paused = last + 1;
    let payload = record(paused, true).to_json();
    producer
        .send(
            FutureRecord::to(&kafka.control_topic)
                .key(&kafka.pipeline)
                .payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)?;
    wait_for(&seen, &services, paused).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_before = (cpu_time(order.0.id())?, cpu_time(payment.0.id())?);
    let idle_started = Instant::now();
    let mut old = shop_kafka::control::follower_config(&kafka);
    old.set("fetch.wait.max.ms", "10");
    let (control_follower, heartbeat_follower, old_setting) = tokio::try_join!(
        idle_fetches(
            shop_kafka::control::follower_config(&kafka),
            &kafka.control_topic
        ),
        idle_fetches(
            shop_kafka::compacted::table_follower_config(&kafka),
            &kafka.heartbeat_topic
        ),
        idle_fetches(old, &kafka.control_topic),
    )?;
    let idle_seconds = idle_started.elapsed().as_secs_f64();
    let cpu_after = (cpu_time(order.0.id())?, cpu_time(payment.0.id())?);
    let cpu_per_second =
        |before: Duration, after: Duration| (after - before).as_secs_f64() * 1000.0 / idle_seconds;
    let idle_cpu = (
        cpu_per_second(cpu_before.0, cpu_after.0),
        cpu_per_second(cpu_before.1, cpu_after.1),
    );

    shutdown.cancel();
    drop(order);
    drop(payment);
    let _ = echo.await;
    let _ = observer.await;

    // shopctl set, interleaved with the baseline process.
    let own = std::env::current_exe()?;
    let mut shopctl = Vec::new();
    let mut baseline = Vec::new();
    for i in 0..args.shopctl_runs {
        let started = Instant::now();
        let output = Command::new(binaries.join("shopctl"))
            .args(["set", "--rate", &(10 + i).to_string()])
            .env("KAFKA_BOOTSTRAP_SERVERS", &kafka.bootstrap_servers)
            .env("PIPELINE", &kafka.pipeline)
            .env("CONTROL_TOPIC", &kafka.control_topic)
            .env("HEARTBEAT_TOPIC", &kafka.heartbeat_topic)
            .output()?;
        shopctl.push(started.elapsed().as_secs_f64() * 1000.0);
        let expected = format!("generation {} written", paused + 1 + i as u64);
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() || !stdout.contains(&expected) {
            bail!(
                "shopctl set: expected {expected:?}, got {stdout:?} {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }

        let started = Instant::now();
        let status = Command::new(&own)
            .args(["--bootstrap-servers", &kafka.bootstrap_servers])
            .args(["--produce-one", &kafka.control_topic])
            .env("PIPELINE", "bench/baseline")
            .status()?;
        baseline.push(started.elapsed().as_secs_f64() * 1000.0);
        if !status.success() {
            bail!("the baseline process failed: {status}");
        }
    }

    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        kafka.client_config("control-latency").create()?;
    let names = [
        kafka.control_topic.as_str(),
        kafka.heartbeat_topic.as_str(),
        kafka.id_block_topic.as_str(),
        topics.orders.as_str(),
        topics.payments.as_str(),
        topics.dlq.as_str(),
    ];
    admin
        .delete_topics(&names, &rdkafka::admin::AdminOptions::new())
        .await?;

    let mut cell = |source: &'static str| cells(latencies.entry(source).or_default());
    println!("## Control loop\n");
    println!(
        "Command: `make bench` (`control-latency --changes {} --shopctl-runs {} --other-records {}`),",
        args.changes, args.shopctl_runs, args.other_records
    );
    println!(
        "release build, the test bed's broker. order-service (100 orders/s) and payment-service run"
    );
    println!(
        "as processes; each change (rate and failure ratio) is written like `shopctl set` does and"
    );
    println!(
        "timed from its produce acknowledgement to the first heartbeat of each service reporting it"
    );
    println!(
        "applied, read off the heartbeat topic. {} changes, {WARM_UP} warm-up changes not counted.\n",
        args.changes
    );
    println!("| control record acknowledged → | p50 ms | p99 ms | max ms | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| consumed by a raw rdkafka consumer, librdkafka defaults (baseline, one hop) | {} | |",
        cell("consumed")
    );
    println!(
        "| echoed by that consumer to the heartbeat topic and consumed (baseline, two hops) | {} | |",
        cell("echo")
    );
    println!(
        "| order-service's heartbeat with the generation applied, consumed | {} | p99 ≤ 100 |",
        cell("order-service")
    );
    println!(
        "| payment-service's heartbeat with the generation applied, consumed | {} | p99 ≤ 100 |",
        cell("payment-service")
    );
    println!();
    println!(
        "While idle (over {:.0} s; both services paused):\n",
        IDLE.as_secs_f64()
    );
    println!("| idle cost | result |");
    println!("|---|---|");
    println!(
        "| fetch requests/s, a consumer with the services' control-follower settings | {control_follower:.1} |"
    );
    println!(
        "| fetch requests/s, a consumer with the controller's heartbeat-follower settings | {heartbeat_follower:.1} |"
    );
    println!(
        "| fetch requests/s, the control-follower settings with `fetch.wait.max.ms=10` | {old_setting:.1} |"
    );
    println!(
        "| CPU of order-service / payment-service | {:.1} / {:.1} ms per s |",
        idle_cpu.0, idle_cpu.1
    );
    println!();
    println!(
        "`shopctl set --rate N` as a process, {} runs, against the same control topic (holding {}",
        args.shopctl_runs, args.other_records
    );
    println!(
        "records of 50 other pipelines and {} of this one), interleaved with the baseline process:\n",
        paused
    );
    println!("| wall time | p50 ms | max ms | goal |");
    println!("|---|---|---|---|");
    shopctl.sort_by(f64::total_cmp);
    baseline.sort_by(f64::total_cmp);
    println!(
        "| a process that produces one record (`acks=all`) and flushes (baseline) | {:.0} | {:.0} | |",
        percentile(&baseline, 50.0),
        baseline.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "| `shopctl set` | {:.0} | {:.0} | ≤ 300 |",
        percentile(&shopctl, 50.0),
        shopctl.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}
