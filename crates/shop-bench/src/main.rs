//! `shop-bench`: measures order-service's generator on a real broker, next to a baseline
//! measured in the same run on the same broker, and prints a Markdown report.
//!
//! - baseline: a raw rdkafka producer with the generator's producer settings (idempotent,
//!   `acks=all`, `linger.ms=5`) sending pre-built order-sized records as fast as it can;
//!   this is the ceiling the broker and client allow on this machine;
//! - generator: `order_service::run` at the target rate; each 10-second window is counted
//!   from the topic's high watermarks (sampled on a fixed tick), and compared with the
//!   target (the generator promises ±1%).
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
    /// Target rate of the generator, orders per second.
    #[arg(long, default_value_t = 50_000.0)]
    pub(crate) rate: f64,
    /// Number of 10-second windows to measure.
    #[arg(long, default_value_t = 3)]
    pub(crate) windows: u32,
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
    let run = std::process::id();
    let admin: AdminClient<DefaultClientContext> = config(&args).create()?;
    let topics = [
        format!("bench-{run}-baseline"),
        format!("bench-{run}-generator"),
    ];
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, args.partitions, TopicReplication::Fixed(1)))
        .collect();
    admin.create_topics(&new, &AdminOptions::new()).await?;

    let baseline = tokio::task::spawn_blocking({
        let (args, topic) = (config(&args), topics[0].clone());
        move || baseline(args, &topic)
    })
    .await??;
    let windows = generator(&args, &topics[1]).await?;

    println!("## order-service generator vs raw rdkafka producer\n");
    println!(
        "Command: `make bench` (`shop-bench --rate {} --windows {}`), release build,",
        args.rate, args.windows
    );
    println!(
        "single-node test-bed broker on 127.0.0.1, {} partitions.\n",
        args.partitions
    );
    println!("| measurement | orders/s | vs target |");
    println!("|---|---:|---:|");
    println!(
        "| raw rdkafka producer, as fast as possible (baseline, {} s) | {baseline:.0} | — |",
        WINDOW.as_secs()
    );
    for (i, count) in windows.iter().enumerate() {
        let rate = *count as f64 / WINDOW.as_secs_f64();
        let off = (rate - args.rate) / args.rate * 100.0;
        println!(
            "| generator at {} /s, window {} | {rate:.0} | {off:+.2}% |",
            args.rate,
            i + 1
        );
    }
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    admin.delete_topics(&names, &AdminOptions::new()).await?;

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

/// Orders written in each window while the generator runs at `args.rate`.
async fn generator(args: &Args, topic: &str) -> anyhow::Result<Vec<i64>> {
    let mut kafka = KafkaArgs::for_broker(&args.bootstrap_servers);
    kafka.pipeline = format!("bench-{}", std::process::id());
    let mut order_config = order_service::Config::new(topic, args.rate);
    order_config.partitions = args.partitions;
    let shutdown = CancellationToken::new();
    let settings = order_service::Settings {
        kafka,
        config: order_config,
        instance: "bench".into(),
        metrics: Metrics::new(),
        health: Health::new(),
    };
    let task = tokio::spawn(order_service::run(settings, shutdown.clone()));
    let consumer: BaseConsumer = config(args).create()?;
    // Warm up: let the generator claim its ids and reach its pace.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut tick = tokio::time::interval(WINDOW);
    tick.tick().await;
    let mut last = written(&consumer, topic, args.partitions)?;
    let mut windows = Vec::new();
    for _ in 0..args.windows {
        tick.tick().await;
        let now = written(&consumer, topic, args.partitions)?;
        windows.push(now - last);
        last = now;
    }
    shutdown.cancel();
    task.await?.context("order-service")?;
    Ok(windows)
}

fn written(consumer: &BaseConsumer, topic: &str, partitions: i32) -> anyhow::Result<i64> {
    let mut total = 0;
    for partition in 0..partitions {
        total += consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(5))?
            .1;
    }
    Ok(total)
}
