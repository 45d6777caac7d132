//! The payment benchmark: payment-service on a backlog of orders, next to the best raw
//! rdkafka loops for the same work, measured in the same run on the same broker.
//!
//! Every measurement reads the same backlog with a fresh consumer group and writes one
//! payment per order to its own output topic, doing the same work per order: parse the
//! order's JSON, decide with [`shop_domain::decide`], encode the payment's JSON (stamped
//! with the time of the decision) with the same key and headers (content type, schema
//! version, the order's trace continued in a new span).
//!
//! - raw exactly-once: one thread, a `BaseConsumer` and a transactional `BaseProducer`;
//!   a transaction every 100 ms whose offsets are the consumer's position (one entry per
//!   partition, not per message), sent with `send_offsets_to_transaction` and the group's
//!   metadata (KIP-447), committed after waiting for the acknowledgements with short polls
//!   (rdkafka's `flush` polls in 100 ms steps).
//! - raw at-least-once: an idempotent producer, no transactions; every 100 ms the
//!   consumer's position is noted, and it is committed (asynchronously) as soon as every
//!   payment sent before it is acknowledged. Reading never waits for the broker.
//! - payment-service in-process (`payment_service::run`, both delivery modes), its
//!   throughput read from its own counters, which move when a batch commits.
//!
//! Each rate is measured from the first commit to the commit that covers the whole
//! backlog, so start-up (group join, `init_transactions`) counts for none of them. The
//! rounds alternate the four measurements, and the report gives the median of each ratio.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, DeliveryResult, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DefaultProducerContext, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientConfig, Message};
use shop_domain::{Amount, Order, Payment, TraceParent};
use shop_kafka::KafkaArgs;
use shop_kafka::headers::{event_headers, traceparent};
use shop_runtime::{CancellationToken, Health, Metrics};

use crate::{Args, config};

/// How long a transaction (or an at-least-once batch) collects orders: payment-service's
/// default `--transaction-interval-ms`.
const INTERVAL: Duration = Duration::from_millis(100);

/// Timeout of the raw loops' blocking transaction calls.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The decision's settings, as payment-service's defaults.
const FAILURE_RATIO: f64 = 0.1;
const SEED: u64 = 0;

/// One of the four measurements of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// Named after the report's rows, which all end in the guarantee.
#[allow(clippy::enum_variant_names)]
enum Kind {
    RawExactlyOnce,
    ServiceExactlyOnce,
    RawAtLeastOnce,
    ServiceAtLeastOnce,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::RawExactlyOnce,
        Kind::ServiceExactlyOnce,
        Kind::RawAtLeastOnce,
        Kind::ServiceAtLeastOnce,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::RawExactlyOnce => "raw exactly-once loop (baseline)",
            Kind::ServiceExactlyOnce => "payment-service, exactly-once",
            Kind::RawAtLeastOnce => "raw at-least-once loop (baseline)",
            Kind::ServiceAtLeastOnce => "payment-service, at-least-once",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Kind::RawExactlyOnce => "raw-eos",
            Kind::ServiceExactlyOnce => "svc-eos",
            Kind::RawAtLeastOnce => "raw-alo",
            Kind::ServiceAtLeastOnce => "svc-alo",
        }
    }
}

/// Runs the rounds and prints the report's section.
pub async fn report(args: &Args, admin: &AdminClient<DefaultClientContext>) -> anyhow::Result<()> {
    let rounds = run(args, admin).await?;
    println!("## payment-service vs the best raw rdkafka loops\n");
    println!(
        "Command: `make bench` (`shop-bench --backlog {} --payment-rounds {}`), release build,",
        args.backlog, args.payment_rounds
    );
    println!(
        "single-node test-bed broker on 127.0.0.1. A backlog of {} orders in {} partitions;",
        args.backlog, args.partitions
    );
    println!("each measurement reads it all with a fresh consumer group and writes one payment");
    println!("per order (parse → decide → encode, same key and headers), transactions or");
    println!(
        "offset commits every {} ms. Rates run from the first commit to the last.\n",
        INTERVAL.as_millis()
    );
    println!("Each cell: orders/s, and in brackets the CPU time of the benchmark's process per");
    println!("order (µs; the broker's CPU is not in it).\n");
    print!("| measurement |");
    for round in 1..=rounds.len() {
        print!(" round {round} |");
    }
    println!(" median |");
    print!("|---|");
    for _ in 0..=rounds.len() {
        print!("---:|");
    }
    println!();
    for (i, kind) in Kind::ALL.iter().enumerate() {
        print!("| {} |", kind.name());
        for round in &rounds {
            let rate = round[i];
            print!(
                " {:.0} ({:.1}) |",
                rate.orders_per_second, rate.cpu_micros_per_order
            );
        }
        let rate = median(rounds.iter().map(|r| r[i].orders_per_second).collect());
        let cpu = median(rounds.iter().map(|r| r[i].cpu_micros_per_order).collect());
        println!(" {rate:.0} ({cpu:.1}) |");
    }
    let ratio = |service: usize, raw: usize| {
        median(
            rounds
                .iter()
                .map(|r| r[service].orders_per_second / r[raw].orders_per_second)
                .collect(),
        )
    };
    let cpu_ratio = |service: usize, raw: usize| {
        median(
            rounds
                .iter()
                .map(|r| r[raw].cpu_micros_per_order / r[service].cpu_micros_per_order)
                .collect(),
        )
    };
    println!(
        "\n| ratio, median of the per-round ratios | orders/s | CPU per order (raw / service) | goal (orders/s) |"
    );
    println!("|---|---:|---:|---:|");
    println!(
        "| payment-service exactly-once / raw exactly-once | {:.2} | {:.2} | ≥ 0.95 |",
        ratio(1, 0),
        cpu_ratio(1, 0)
    );
    println!(
        "| payment-service at-least-once / raw at-least-once | {:.2} | {:.2} | ≥ 0.8 |",
        ratio(3, 2),
        cpu_ratio(3, 2)
    );
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Runs every round; returns the rates of each, in the order of [`Kind::ALL`].
async fn run(
    args: &Args,
    admin: &AdminClient<DefaultClientContext>,
) -> anyhow::Result<Vec<[Rate; 4]>> {
    let run = std::process::id();
    let orders = format!("bench-{run}-orders");
    let output = |round: u32, kind: Kind| format!("bench-{run}-{}-{round}", kind.slug());
    let mut topics = vec![orders.clone()];
    for round in 0..args.payment_rounds {
        for kind in Kind::ALL {
            topics.push(output(round, kind));
        }
    }
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, args.partitions, TopicReplication::Fixed(1)))
        .collect();
    admin.create_topics(&new, &AdminOptions::new()).await?;
    fill(args, &orders)?;

    let mut rounds = Vec::new();
    let mut result = Ok(());
    'rounds: for round in 0..args.payment_rounds {
        let mut rates = [Rate::default(); 4];
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            let output = output(round, kind);
            let measured = match kind {
                Kind::RawExactlyOnce | Kind::RawAtLeastOnce => {
                    let (config, orders, n) = (config(args), orders.clone(), args.backlog);
                    tokio::task::spawn_blocking(move || {
                        if kind == Kind::RawExactlyOnce {
                            raw_exactly_once(config, &orders, &output, n)
                        } else {
                            raw_at_least_once(config, &orders, &output, n)
                        }
                    })
                    .await?
                }
                Kind::ServiceExactlyOnce => {
                    let delivery = payment_service::Delivery::ExactlyOnce;
                    service(args, &orders, &output, delivery).await
                }
                Kind::ServiceAtLeastOnce => {
                    let delivery = payment_service::Delivery::AtLeastOnce;
                    service(args, &orders, &output, delivery).await
                }
            };
            match measured {
                Ok(rate) => rates[i] = rate,
                Err(error) => {
                    result = Err(error.context(format!("round {}: {}", round + 1, kind.name())));
                    break 'rounds;
                }
            }
        }
        rounds.push(rates);
    }
    // payment-service created a dead-letter topic next to each of its outputs.
    for round in 0..args.payment_rounds {
        for kind in [Kind::ServiceExactlyOnce, Kind::ServiceAtLeastOnce] {
            topics.push(format!("{}-dlq", output(round, kind)));
        }
    }
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    admin.delete_topics(&names, &AdminOptions::new()).await?;
    result.map(|()| rounds)
}

/// Writes the backlog of orders, with the headers order-service gives them.
fn fill(args: &Args, topic: &str) -> anyhow::Result<()> {
    let producer: ThreadedProducer<DefaultProducerContext> = config(args)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "500000")
        .create()?;
    let amount = Amount::from_cents(19_999);
    for id in 0..args.backlog {
        let order_id = 1000 + id;
        let order = Order::new(order_id, 37, amount, "2026-11-25T12:00:00.000Z".into());
        let (key, value) = (order.key(), order.to_json());
        let headers = event_headers(&TraceParent::for_order(order_id, 0));
        let mut record = BaseRecord::to(topic)
            .key(&key)
            .payload(&value)
            .headers(headers);
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

/// The consumer of the raw loops: payment-service's semantics (committed orders only,
/// offsets committed by the loop), librdkafka's defaults otherwise.
fn raw_consumer(base: &ClientConfig, group: &str, orders: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = base
        .clone()
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    consumer.subscribe(&[orders])?;
    Ok(consumer)
}

/// The work per order, as payment-service does it: the payment's key, JSON and headers.
fn transform(message: &BorrowedMessage<'_>) -> anyhow::Result<(Vec<u8>, Vec<u8>, OwnedHeaders)> {
    let order = Order::parse(message.payload().unwrap_or_default())?;
    let decision = shop_domain::decide(order.order_id, FAILURE_RATIO, SEED);
    let processed_at = shop_domain::time::rfc3339(SystemTime::now());
    let payment = Payment::for_order(&order, &decision, processed_at);
    let span = rand::random::<u64>().max(1);
    let trace = match traceparent(message.headers()) {
        Some(parent) => parent.child(span),
        None => TraceParent::from_ids(u128::from(rand::random::<u64>()).max(1), span),
    };
    Ok((
        payment.key().into_bytes(),
        payment.to_json(),
        event_headers(&trace),
    ))
}

/// Queues one record, serving delivery reports while the queue is full.
fn send<C: ProducerContext>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, [u8], [u8], C::DeliveryOpaque>,
) -> anyhow::Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(1));
            }
            Err((error, _)) => return Err(error.into()),
        }
    }
}

/// What one measurement found.
#[derive(Debug, Clone, Copy, Default)]
struct Rate {
    orders_per_second: f64,
    /// CPU time of this process (every thread: the loop's, librdkafka's) per order. Less
    /// sensitive than the rate to other work on a shared machine; the broker's CPU is not
    /// in it.
    cpu_micros_per_order: f64,
}

/// From the first commit to the commit of the whole backlog.
#[derive(Debug, Default)]
struct Clock {
    first: Option<(Instant, Duration, u64)>,
}

impl Clock {
    fn committed(&mut self, done: u64) {
        if done > 0 && self.first.is_none() {
            self.first = Some((Instant::now(), cpu_time(), done));
        }
    }

    fn rate(&self, n: u64) -> anyhow::Result<Rate> {
        let (at, cpu, first) = self
            .first
            .ok_or_else(|| anyhow::anyhow!("nothing committed"))?;
        let orders = (n - first) as f64;
        Ok(Rate {
            orders_per_second: orders / at.elapsed().as_secs_f64(),
            cpu_micros_per_order: (cpu_time().saturating_sub(cpu)).as_secs_f64() * 1e6 / orders,
        })
    }
}

/// CPU time (user + system) of this process so far, from `/proc/self/stat` (zero where
/// there is none).
fn cpu_time() -> Duration {
    // Fields 14 and 15 (utime, stime), in USER_HZ ticks, which Linux fixes at 100 for
    // /proc; counted after the command name, which may hold spaces.
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let after_name = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// The best raw exactly-once loop: see the module docs.
fn raw_exactly_once(
    base: ClientConfig,
    orders: &str,
    output: &str,
    n: u64,
) -> anyhow::Result<Rate> {
    let consumer = raw_consumer(&base, &format!("{output}-group"), orders)?;
    let producer: BaseProducer = base
        .clone()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("transactional.id", format!("{output}-raw"))
        .create()?;
    producer.init_transactions(CALL_TIMEOUT)?;
    let (mut done, mut in_transaction, mut clock) = (0u64, 0u64, Clock::default());
    let mut opened: Option<Instant> = None;
    while done < n {
        let wait = opened.map_or(INTERVAL, |at| INTERVAL.saturating_sub(at.elapsed()));
        if let Some(message) = consumer.poll(wait) {
            let message = message?;
            if opened.is_none() {
                producer.begin_transaction()?;
                opened = Some(Instant::now());
            }
            let (key, value, headers) = transform(&message)?;
            let record = BaseRecord::to(output)
                .key(&key[..])
                .payload(&value[..])
                .headers(headers);
            send(&producer, record)?;
            producer.poll(Duration::ZERO);
            in_transaction += 1;
        }
        let due = opened.is_some_and(|at| at.elapsed() >= INTERVAL);
        if due || (opened.is_some() && done + in_transaction == n) {
            let positions = consumer.position()?;
            let metadata = consumer
                .group_metadata()
                .ok_or_else(|| anyhow::anyhow!("no group metadata"))?;
            while producer.in_flight_count() > 0 {
                producer.poll(Duration::from_millis(1));
            }
            producer.send_offsets_to_transaction(&positions, &metadata, CALL_TIMEOUT)?;
            producer.commit_transaction(CALL_TIMEOUT)?;
            done += std::mem::take(&mut in_transaction);
            opened = None;
            clock.committed(done);
        }
    }
    clock.rate(n)
}

/// Batches with acknowledgements outstanding at once in the raw at-least-once loop.
const ACK_SLOTS: usize = 64;

/// Counts the raw at-least-once loop's outstanding acknowledgements per batch.
struct Acks {
    outstanding: [AtomicU64; ACK_SLOTS],
    failed: AtomicBool,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: usize) {
        if result.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        self.outstanding[slot].fetch_sub(1, Ordering::Relaxed);
    }
}

/// The best raw at-least-once loop: see the module docs.
fn raw_at_least_once(
    base: ClientConfig,
    orders: &str,
    output: &str,
    n: u64,
) -> anyhow::Result<Rate> {
    let consumer = raw_consumer(&base, &format!("{output}-group"), orders)?;
    let producer: BaseProducer<Acks> = base
        .clone()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create_with_context(Acks {
            outstanding: std::array::from_fn(|_| AtomicU64::new(0)),
            failed: AtomicBool::new(false),
        })?;
    let acks = producer.context();
    // Closed batches waiting for their acknowledgements: slot, orders, position after.
    let mut closed = VecDeque::new();
    let (mut batch, mut in_batch, mut read) = (0usize, 0u64, 0u64);
    let (mut done, mut clock) = (0u64, Clock::default());
    let mut opened: Option<Instant> = None;
    while done < n {
        if read < n {
            let wait = opened.map_or(Duration::from_millis(1), |at| {
                INTERVAL.saturating_sub(at.elapsed())
            });
            if let Some(message) = consumer.poll(wait.min(Duration::from_millis(1))) {
                let message = message?;
                opened.get_or_insert_with(Instant::now);
                let (key, value, headers) = transform(&message)?;
                let slot = batch % ACK_SLOTS;
                acks.outstanding[slot].fetch_add(1, Ordering::Relaxed);
                let record = BaseRecord::with_opaque_to(output, slot)
                    .key(&key[..])
                    .payload(&value[..])
                    .headers(headers);
                send(&producer, record)?;
                in_batch += 1;
                read += 1;
            }
        }
        // Once everything is read, wait for acknowledgements instead of spinning.
        producer.poll(if read < n {
            Duration::ZERO
        } else {
            Duration::from_millis(1)
        });
        let due = opened.is_some_and(|at| at.elapsed() >= INTERVAL);
        if due || (opened.is_some() && read == n) {
            closed.push_back((batch % ACK_SLOTS, in_batch, consumer.position()?));
            batch += 1;
            in_batch = 0;
            opened = None;
            // The slot is reused only once its batch is acknowledged.
            while acks.outstanding[batch % ACK_SLOTS].load(Ordering::Relaxed) > 0 {
                producer.poll(Duration::from_millis(1));
            }
        }
        if acks.failed.load(Ordering::Relaxed) {
            anyhow::bail!("a payment was not acknowledged");
        }
        while let Some((slot, orders, _)) = closed.front() {
            if acks.outstanding[*slot].load(Ordering::Relaxed) > 0 {
                break;
            }
            let orders = *orders;
            if let Some((_, _, positions)) = closed.pop_front() {
                consumer.commit(&positions, CommitMode::Async)?;
            }
            done += orders;
            clock.committed(done);
        }
    }
    clock.rate(n)
}

/// payment-service in-process on the backlog; throughput from its own counters.
async fn service(
    args: &Args,
    orders: &str,
    output: &str,
    delivery: payment_service::Delivery,
) -> anyhow::Result<Rate> {
    let mut kafka = KafkaArgs::for_broker(&args.bootstrap_servers);
    kafka.pipeline = format!("{output}-pipeline");
    let config = payment_service::Config {
        orders_topic: orders.to_owned(),
        payments_topic: output.to_owned(),
        dlq_topic: format!("{output}-dlq"),
        group_id: format!("{output}-group"),
        delivery,
        failure_ratio: FAILURE_RATIO,
        seed: SEED,
        transaction_interval_ms: INTERVAL.as_millis() as u64,
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
            .sum::<f64>() as u64
    };
    let mut clock = Clock::default();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = processed();
        clock.committed(done);
        if done >= args.backlog || Instant::now() > deadline || task.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    task.await??;
    clock.rate(args.backlog)
}
