//! `shop-bench`: measures order-service's generator on a real broker, next to a baseline
//! measured in the same run on the same broker, and prints a Markdown report.
//!
//! - baseline: a raw rdkafka producer with the generator's producer settings (idempotent,
//!   `acks=all`, `linger.ms=5`) sending pre-built order-sized records as fast as it can;
//!   this is the ceiling the broker and client allow on this machine;
//! - generator: `order_service::run` at each rate from 1 to 100 000 orders/s (the CRD's
//!   range); each 10-second window is counted from the records' creation timestamps
//!   (`offsets_for_times` per partition, so nothing is read), and compared with the target
//!   (the generator promises ±1 % per window). Window edges sit half an order interval
//!   away from the schedule's orders, so at 1/s a window holds exactly 10 orders when the
//!   generator keeps time. The slow rates (≤ 1000/s) run side by side, the others alone.
//!
//! - payments: payment-service on a backlog of orders, exactly-once and at-least-once,
//!   each next to the best raw rdkafka loop for the same work and guarantee (see
//!   `payments`).
//!
//! Run with `make bench` (release build, test-bed broker); the report goes to
//! `docs/benchmarks.md`.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};
use shop_kafka::KafkaArgs;
use shop_runtime::{CancellationToken, Health, Metrics};

#[derive(Parser, Debug)]
#[command(about = "order-service's generator vs a raw rdkafka producer, on one broker")]
pub(crate) struct Args {
    /// Broker to measure on.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:19092"
    )]
    pub(crate) bootstrap_servers: String,
    /// Target rates of the generator, orders per second (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,10,100,1000,10000,50000,100000"
    )]
    pub(crate) rates: Vec<f64>,
    /// Number of 10-second windows to measure per rate.
    #[arg(long, default_value_t = 3)]
    pub(crate) windows: u32,
    /// Measure the generator only (skip the payment benchmark).
    #[arg(long)]
    pub(crate) generator_only: bool,
    /// Partitions of the benchmark topics.
    #[arg(long, default_value_t = 6)]
    pub(crate) partitions: i32,
    /// Orders in the payment benchmark's backlog.
    #[arg(long, default_value_t = 500_000)]
    pub(crate) backlog: u64,
    /// Rounds of the payment benchmark (each measures the four loops once).
    #[arg(long, default_value_t = 3)]
    pub(crate) payment_rounds: u32,
}

const WINDOW: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The services' own logs (skipped orders, producer errors) explain a missed window.
    shop_runtime::telemetry::init(shop_runtime::telemetry::LogFormat::Text)?;
    let run = std::process::id();
    let admin: AdminClient<DefaultClientContext> = config(&args).create()?;
    let baseline_topic = format!("bench-{run}-baseline");
    create_topic(&admin, &baseline_topic, args.partitions).await?;
    let baseline = tokio::task::spawn_blocking({
        let (config, topic) = (config(&args), baseline_topic.clone());
        move || baseline(config, &topic)
    })
    .await??;
    admin
        .delete_topics(&[&baseline_topic], &AdminOptions::new())
        .await?;
    // The slow rates together (they cost next to nothing), each fast one alone.
    let (slow, fast): (Vec<f64>, Vec<f64>) = args.rates.iter().partition(|&&r| r <= 1000.0);
    let mut measured = Vec::new();
    for group in std::iter::once(slow).chain(fast.into_iter().map(|rate| vec![rate])) {
        if !group.is_empty() {
            measured.extend(generator(&args, &admin, &group).await?);
        }
    }

    println!("## order-service generator vs raw rdkafka producer\n");
    let rates: Vec<String> = args.rates.iter().map(f64::to_string).collect();
    println!(
        "Command: `make bench` (`shop-bench --rates {} --windows {}`), release build,",
        rates.join(","),
        args.windows
    );
    println!(
        "single-node test-bed broker on 127.0.0.1, {} partitions. Each window counts the",
        args.partitions
    );
    println!("orders created in 10 s (record timestamps); the rates up to 1000/s ran side by");
    println!("side, the others alone. Goal: every window within ±1 % of the target.\n");
    println!("| measurement | orders/s | vs target |");
    println!("|---|---:|---:|");
    println!(
        "| raw rdkafka producer, as fast as possible (baseline, {} s) | {baseline:.0} | — |",
        WINDOW.as_secs()
    );
    let mut worst: f64 = 0.0;
    for run in &measured {
        for (i, count) in run.windows.iter().enumerate() {
            let rate = *count as f64 / WINDOW.as_secs_f64();
            let off = (rate - run.rate) / run.rate * 100.0;
            worst = worst.max(off.abs());
            println!(
                "| generator at {} /s, window {} ({count} orders) | {} | {off:+.2}% |",
                run.rate,
                i + 1,
                format_rate(rate)
            );
        }
    }
    let skipped: Vec<String> = measured
        .iter()
        .map(|run| format!("{}/s: {}", run.rate, run.skipped))
        .collect();
    println!(
        "\nLargest deviation: {worst:.2} %. Orders the generator skipped (`shopstream_orders_skipped_total`,"
    );
    println!("whole run): {}.", skipped.join(", "));
    if args.generator_only {
        return Ok(());
    }

    println!();
    payments::report(&args, &admin).await?;
    Ok(())
}

mod payments;

pub(crate) fn config(args: &Args) -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", &args.bootstrap_servers);
    config
}

/// Records per second a raw producer sustains for one window.
fn baseline(mut config: rdkafka::ClientConfig, topic: &str) -> anyhow::Result<f64> {
    let producer: ThreadedProducer<DefaultProducerContext> = config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "100000")
        .create()?;
    let payload = br#"{"order_id":1001000,"user_id":37,"amount":199.99,"status":"created","created_at":"2026-11-25T12:00:00.000Z"}"#;
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < WINDOW {
        let key = sent.to_string();
        match producer.send(BaseRecord::to(topic).key(&key).payload(&payload[..])) {
            Ok(()) => sent += 1,
            Err((_, _)) => std::thread::sleep(Duration::from_micros(200)),
        }
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(sent as f64 / started.elapsed().as_secs_f64())
}

/// A rate as a table cell: whole orders per second, or a tenth of one below 100.
fn format_rate(rate: f64) -> String {
    if rate < 100.0 {
        format!("{rate:.1}")
    } else {
        format!("{rate:.0}")
    }
}

async fn create_topic(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for result in admin.create_topics([&new], &AdminOptions::new()).await? {
        result.map_err(|(topic, code)| anyhow::anyhow!("creating {topic}: {code}"))?;
    }
    Ok(())
}

/// What the generator did at one rate.
struct RateRun {
    rate: f64,
    /// Orders created in each window.
    windows: Vec<i64>,
    skipped: u64,
}

/// Runs one generator per rate of `rates` side by side, each on its own topic, for the
/// warm-up and `args.windows` windows, and counts the orders created in each window.
async fn generator(
    args: &Args,
    admin: &AdminClient<DefaultClientContext>,
    rates: &[f64],
) -> anyhow::Result<Vec<RateRun>> {
    // Let the generator claim its ids and reach its pace before the first window.
    const WARM_UP: Duration = Duration::from_secs(3);
    let run = std::process::id();
    let shutdown = CancellationToken::new();
    let mut started = Vec::new();
    for &rate in rates {
        let topic = format!("bench-{run}-generator-{rate}");
        create_topic(admin, &topic, args.partitions).await?;
        let mut kafka = KafkaArgs::for_broker(&args.bootstrap_servers);
        kafka.pipeline = format!("bench-{run}-{rate}");
        let mut order_config = order_service::Config::new(&topic, rate);
        order_config.partitions = args.partitions;
        let metrics = Metrics::new();
        let settings = order_service::Settings {
            kafka,
            config: order_config,
            instance: "bench".into(),
            metrics: metrics.clone(),
            health: Health::new(),
        };
        let task = tokio::spawn(order_service::run(settings, shutdown.clone()));
        started.push((rate, topic, metrics, task));
    }
    let consumer: BaseConsumer = config(args).create()?;
    // The windows of each rate: from the first order on, edges half an interval off the
    // schedule's orders.
    let mut plans = Vec::new();
    for (rate, topic, _, _) in &started {
        let first = first_timestamp(args, topic).await?;
        let orders_before = (WARM_UP.as_secs_f64() * rate).ceil();
        let start = first + ((orders_before + 0.5) / rate * 1000.0).round() as i64;
        let edges: Vec<i64> = (0..=i64::from(args.windows))
            .map(|i| start + i * WINDOW.as_millis() as i64)
            .collect();
        plans.push(edges);
    }
    // Until the last window has ended and its orders have had a second to be acknowledged.
    let end = plans.iter().filter_map(|edges| edges.last()).max().copied();
    let end = end.unwrap_or_default() + 1000;
    while now_millis() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    let mut measured = Vec::new();
    for ((rate, topic, metrics, task), edges) in started.into_iter().zip(plans) {
        task.await?.context("order-service")?;
        let mut offsets = Vec::new();
        for &edge in &edges {
            offsets.push(created_before(&consumer, &topic, args.partitions, edge)?);
        }
        measured.push(RateRun {
            rate,
            windows: offsets.windows(2).map(|pair| pair[1] - pair[0]).collect(),
            skipped: metric(&metrics.encode(), "shopstream_orders_skipped_total"),
        });
        admin.delete_topics(&[&topic], &AdminOptions::new()).await?;
    }
    Ok(measured)
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_default()
}

/// The creation time (record timestamp, ms) of the first order on `topic`, once there is one.
async fn first_timestamp(args: &Args, topic: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = config(args)
        .set("group.id", format!("{topic}-first"))
        .set("enable.auto.commit", "false")
        .create()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut assignment = TopicPartitionList::new();
        for partition in 0..args.partitions {
            // A topic created a moment ago may not have its leaders yet: try again.
            let high = consumer.fetch_watermarks(topic, partition, Duration::from_secs(5));
            if high.is_ok_and(|(_, high)| high > 0) {
                assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
            }
        }
        if assignment.count() > 0 {
            consumer.assign(&assignment)?;
            let mut seen = std::collections::HashSet::new();
            let mut first = i64::MAX;
            while seen.len() < assignment.count() {
                anyhow::ensure!(Instant::now() < deadline, "{topic}: first orders not read");
                if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                    let message = message?;
                    if seen.insert(message.partition())
                        && let Some(ts) = message.timestamp().to_millis()
                    {
                        first = first.min(ts);
                    }
                }
            }
            return Ok(first);
        }
        anyhow::ensure!(Instant::now() < deadline, "{topic}: no order within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many orders on `topic` were created before `millis` (record timestamps increase
/// within a partition: one generator, one clock reading per batch).
fn created_before(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
    millis: i64,
) -> anyhow::Result<i64> {
    let mut query = TopicPartitionList::new();
    for partition in 0..partitions {
        query.add_partition_offset(topic, partition, Offset::Offset(millis))?;
    }
    let found = consumer.offsets_for_times(query, Duration::from_secs(10))?;
    let mut total = 0;
    for element in found.elements() {
        total += match element.offset() {
            Offset::Offset(offset) => offset,
            // No order at or after `millis`: all of the partition's are before it.
            _ => {
                consumer
                    .fetch_watermarks(topic, element.partition(), Duration::from_secs(5))?
                    .1
            }
        };
    }
    Ok(total)
}
