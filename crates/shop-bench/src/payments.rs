//! The payment benchmark: throughput on a backlog of orders.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};
use shop_domain::{Amount, Order};
use shop_kafka::KafkaArgs;
use shop_runtime::{CancellationToken, Health, Metrics};

use crate::{Args, config};

/// Runs the three measurements; returns (name, orders per second).
pub async fn run(
    args: &Args,
    admin: &AdminClient<DefaultClientContext>,
) -> anyhow::Result<Vec<(String, f64)>> {
    let run = std::process::id();
    let orders = format!("bench-{run}-orders");
    let outputs: Vec<String> = (0..3)
        .map(|i| format!("bench-{run}-payments-{i}"))
        .collect();
    let mut new = vec![NewTopic::new(
        &orders,
        args.partitions,
        TopicReplication::Fixed(1),
    )];
    for output in &outputs {
        new.push(NewTopic::new(
            output,
            args.partitions,
            TopicReplication::Fixed(1),
        ));
    }
    admin.create_topics(&new, &AdminOptions::new()).await?;
    fill(args, &orders)?;

    let mut results = Vec::new();
    let raw = tokio::task::spawn_blocking({
        let (config, orders, output, n) = (
            config(args),
            orders.clone(),
            outputs[0].clone(),
            args.backlog,
        );
        move || raw_loop(config, &orders, &output, n)
    })
    .await??;
    results.push((
        "raw rdkafka loop, a transaction every 100 ms (baseline)".to_owned(),
        raw,
    ));
    for (output, delivery, name) in [
        (
            &outputs[1],
            payment_service::Delivery::ExactlyOnce,
            "payment-service, exactly-once",
        ),
        (
            &outputs[2],
            payment_service::Delivery::AtLeastOnce,
            "payment-service, at-least-once",
        ),
    ] {
        let rate = service(args, &orders, output, delivery).await?;
        results.push((name.to_owned(), rate));
    }
    let mut names = vec![orders.as_str()];
    names.extend(outputs.iter().map(String::as_str));
    admin.delete_topics(&names, &AdminOptions::new()).await?;
    Ok(results)
}

/// Writes the backlog of orders.
fn fill(args: &Args, topic: &str) -> anyhow::Result<()> {
    let producer: ThreadedProducer<DefaultProducerContext> = config(args)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "500000")
        .create()?;
    let amount = Amount::from_cents(19_999);
    for id in 0..args.backlog {
        let order = Order::new(1000 + id, 37, amount, "2026-11-25T12:00:00.000Z".into());
        let (key, value) = (order.key(), order.to_json());
        let mut record = BaseRecord::to(topic).key(&key).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(())
}

/// The baseline: read, decide, write, and commit offsets in a transaction every 100 ms.
fn raw_loop(
    mut base: rdkafka::ClientConfig,
    orders: &str,
    output: &str,
    n: u64,
) -> anyhow::Result<f64> {
    let consumer: BaseConsumer = base
        .clone()
        .set("group.id", format!("{output}-raw"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let producer: ThreadedProducer<DefaultProducerContext> = base
        .set("transactional.id", format!("{output}-raw"))
        .set("linger.ms", "5")
        .create()?;
    producer.init_transactions(Duration::from_secs(30))?;
    consumer.subscribe(&[orders])?;
    let (mut done, mut started) = (0u64, None);
    let mut offsets = TopicPartitionList::new();
    let mut batch_started = Instant::now();
    producer.begin_transaction()?;
    while done < n {
        if let Some(message) = consumer.poll(Duration::from_millis(10)) {
            let message = message?;
            let order = Order::parse(message.payload().unwrap_or_default());
            let value = match order {
                Ok(order) => {
                    let decision = shop_domain::decide(order.order_id, 0.1, 0);
                    shop_domain::Payment::for_order(
                        &order,
                        &decision,
                        "2026-11-25T12:00:00.000Z".into(),
                    )
                    .to_json()
                }
                Err(_) => Vec::new(),
            };
            let key = message.key().unwrap_or_default().to_vec();
            let mut record = BaseRecord::to(output).key(&key).payload(&value);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        record = back;
                        producer.poll(Duration::from_millis(1));
                    }
                }
            }
            offsets.add_partition_offset(
                orders,
                message.partition(),
                Offset::Offset(message.offset() + 1),
            )?;
            done += 1;
        }
        if batch_started.elapsed() >= Duration::from_millis(100) || done == n {
            let metadata = consumer
                .group_metadata()
                .ok_or_else(|| anyhow::anyhow!("no group metadata"))?;
            producer.send_offsets_to_transaction(&offsets, &metadata, Duration::from_secs(30))?;
            producer.commit_transaction(Duration::from_secs(30))?;
            // Measured from the first commit, as the service is (its counters move on commit).
            if done > 0 {
                started.get_or_insert((Instant::now(), done));
            }
            offsets = TopicPartitionList::new();
            batch_started = Instant::now();
            if done < n {
                producer.begin_transaction()?;
            }
        }
    }
    let (at, first) = started.ok_or_else(|| anyhow::anyhow!("nothing committed"))?;
    Ok((n - first) as f64 / at.elapsed().as_secs_f64())
}

/// payment-service in-process on the backlog; throughput from its own counters.
async fn service(
    args: &Args,
    orders: &str,
    output: &str,
    delivery: payment_service::Delivery,
) -> anyhow::Result<f64> {
    let mut kafka = KafkaArgs::for_broker(&args.bootstrap_servers);
    kafka.pipeline = format!("{output}-pipeline");
    let config = payment_service::Config {
        orders_topic: orders.to_owned(),
        payments_topic: output.to_owned(),
        dlq_topic: format!("{output}-dlq"),
        group_id: format!("{output}-group"),
        delivery,
        ..payment_service::Config::default()
    };
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let settings = payment_service::Settings {
        kafka,
        config,
        instance: "bench".into(),
        metrics: metrics.clone(),
        health: Health::new(),
    };
    let task = tokio::spawn(payment_service::run(settings, shutdown.clone()));
    let processed = || {
        metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("shopstream_payments_processed_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while processed() < args.backlog as f64 && Instant::now() < deadline {
        if started.is_none() && processed() > 0.0 {
            started = Some((Instant::now(), processed()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    task.await??;
    let (at, first) = started.ok_or_else(|| anyhow::anyhow!("no payment processed"))?;
    Ok((args.backlog as f64 - first) / at.elapsed().as_secs_f64())
}
