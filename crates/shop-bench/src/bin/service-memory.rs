//! `service-memory`: the resident memory of each service under load, next to a raw
//! rdkafka process carrying the same traffic, in the same run on the same broker.
//!
//! For each rate, a pipeline of its own runs the release binaries as processes:
//! order-service generating orders at the rate, payment-service (exactly-once) paying
//! them, notification-service printing the payments (stdout to `/dev/null`). Next to them
//! runs the baseline: this binary's `relay` mode, a raw `BaseConsumer` + `ThreadedProducer`
//! with librdkafka's defaults copying every order to a topic of its own — what the Kafka
//! client alone costs for the same traffic, in a process with nothing else in it.
//!
//! After `--settle` seconds, VmRSS is sampled every second for `--sample` seconds; the
//! report gives the median of the samples (steady) and VmHWM (the peak since start). The
//! rates actually carried (orders written, payments written, orders relayed) are counted
//! from the topics' high watermarks over the same window, so a number is never reported
//! for a pipeline that was not moving.
//!
//! Prints a Markdown section for `docs/benchmarks.md`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};

#[derive(Parser, Debug)]
#[command(about = "RSS of each service at a given order rate, next to a raw rdkafka relay")]
struct Args {
    /// Broker to measure on.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:19092",
        global = true
    )]
    bootstrap_servers: String,
    /// Where the release binaries of the services are.
    #[arg(long, default_value = "target/release")]
    binaries: PathBuf,
    /// Where the processes' logs go.
    #[arg(long, default_value = "target/bench-logs")]
    logs: PathBuf,
    /// Order rates to measure at, orders per second.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    rates: Vec<u32>,
    /// Seconds of load before sampling.
    #[arg(long, default_value_t = 30)]
    settle: u64,
    /// Seconds of sampling (one sample a second).
    #[arg(long, default_value_t = 10)]
    sample: u64,
    /// Extra environment for every measured process (`NAME=VALUE`, repeatable), e.g.
    /// `MALLOC_ARENA_MAX=2`, to show the effect of a setting.
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// The baseline process: copies every record of `--from` to `--to`.
    Relay {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        group: String,
    },
}

fn parse_env(value: &str) -> Result<(String, String), String> {
    value
        .split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{value:?}: expected NAME=VALUE"))
}

/// The allocator setting of the service images (`Dockerfile`): one malloc arena.
const IMAGE_ENV: (&str, &str) = ("MALLOC_ARENA_MAX", "1");
const IMAGE_MALLOC: &str = "MALLOC_ARENA_MAX=1 (the images)";
const DEFAULT_MALLOC: &str = "glibc default";

/// Partitions of each pipeline's topics (the services' default).
const PARTITIONS: i32 = 3;

/// A process stopped with SIGTERM when dropped.
struct Process {
    name: &'static str,
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// VmRSS and VmHWM (peak) of a process, in MiB.
fn memory(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
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

/// What one rate measured: per process (name, steady MiB, peak MiB), and the rates carried.
struct Measured {
    rate: u32,
    setting: &'static str,
    processes: Vec<(&'static str, f64, f64)>,
    orders: f64,
    payments: f64,
    relayed: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Mode::Relay { from, to, group }) = &args.mode {
        return relay(&args.bootstrap_servers, from, to, group);
    }
    let mut measured = Vec::new();
    for (setting, env) in [(DEFAULT_MALLOC, None), (IMAGE_MALLOC, Some(IMAGE_ENV))] {
        for &rate in &args.rates {
            measured.push(measure(&args, rate, setting, env)?);
        }
    }
    report(&args, &measured);
    Ok(())
}

/// Runs the pipeline and the relay at `rate` and samples their memory.
fn measure(
    args: &Args,
    rate: u32,
    setting: &'static str,
    env: Option<(&str, &str)>,
) -> anyhow::Result<Measured> {
    let variant = if env.is_some() { "image" } else { "default" };
    let name = format!("mem-{}-{rate}-{variant}", std::process::id());
    std::fs::create_dir_all(&args.logs)?;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap_servers)
        .create()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let topics = ["orders", "payments", "relayed", "dlq"].map(|t| format!("{name}-{t}"));
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    runtime.block_on(admin.create_topics(&new, &AdminOptions::new()))?;
    let measured = load(args, rate, &name, &topics, env).map(|mut m| {
        m.setting = setting;
        m
    });
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    runtime.block_on(admin.delete_topics(&names, &AdminOptions::new()))?;
    measured
}

/// Runs the processes of one rate on `topics` (orders, payments, relayed, dead letters)
/// and samples them; they are stopped when this returns.
fn load(
    args: &Args,
    rate: u32,
    name: &str,
    topics: &[String; 4],
    env: Option<(&str, &str)>,
) -> anyhow::Result<Measured> {
    let [orders, payments, relayed, dlq] = topics;
    let spawn = |process: &'static str, command: &mut Command| -> anyhow::Result<Process> {
        let log = std::fs::File::create(args.logs.join(format!("memory-{name}-{process}.log")))?;
        command
            .env("KAFKA_BOOTSTRAP_SERVERS", &args.bootstrap_servers)
            .env("PIPELINE", name)
            .env("TOPIC_PARTITIONS", PARTITIONS.to_string())
            .env("ORDERS_TOPIC", orders)
            .env("PAYMENTS_TOPIC", payments)
            .env("DLQ_TOPIC", dlq)
            .env("PAYMENT_GROUP_ID", format!("{orders}-payment"))
            .env("NOTIFICATION_GROUP_ID", format!("{orders}-notification"))
            .env("INSTANCE_ID", format!("{name}-{process}"))
            .env("HTTP_PORT", free_port()?.to_string())
            .envs(env)
            .envs(args.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("starting {process} ({command:?})"))?;
        Ok(Process {
            name: process,
            child,
        })
    };
    // Consumers first, so the orders find their readers at once.
    let mut processes = vec![
        spawn(
            "payment-service",
            &mut Command::new(args.binaries.join("payment-service")),
        )?,
        spawn(
            "notification-service",
            &mut Command::new(args.binaries.join("notification-service")),
        )?,
        spawn(
            "raw relay (baseline)",
            Command::new(std::env::current_exe()?).args([
                "relay",
                "--from",
                orders,
                "--to",
                relayed,
                "--group",
                &format!("{name}-relay"),
            ]),
        )?,
    ];
    std::thread::sleep(Duration::from_secs(2));
    processes.insert(
        0,
        spawn(
            "order-service",
            Command::new(args.binaries.join("order-service"))
                .env("ORDERS_PER_SECOND", rate.to_string()),
        )?,
    );

    std::thread::sleep(Duration::from_secs(args.settle));
    let watermarks: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap_servers)
        .create()?;
    let written = |topic: &str| -> anyhow::Result<i64> {
        let metadata = watermarks.fetch_metadata(Some(topic), Duration::from_secs(5))?;
        let partitions = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len() as i32);
        let mut total = 0;
        for partition in 0..partitions {
            total += watermarks
                .fetch_watermarks(topic, partition, Duration::from_secs(5))?
                .1;
        }
        Ok(total)
    };
    let carrying = [orders, payments, relayed];
    let before: Vec<i64> = carrying
        .iter()
        .map(|t| written(t))
        .collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); processes.len()];
    for _ in 0..args.sample {
        std::thread::sleep(Duration::from_secs(1));
        for (process, samples) in processes.iter().zip(&mut samples) {
            let (rss, _) = memory(process.child.id()).with_context(|| {
                format!("{} stopped; see {}", process.name, args.logs.display())
            })?;
            samples.push(rss);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after: Vec<i64> = carrying
        .iter()
        .map(|t| written(t))
        .collect::<anyhow::Result<_>>()?;
    let carried: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a - b) as f64 / elapsed)
        .collect();
    let mut rows = Vec::new();
    for (process, mut samples) in processes.iter().zip(samples) {
        samples.sort_by(f64::total_cmp);
        let (_, peak) = memory(process.child.id())?;
        rows.push((process.name, samples[samples.len() / 2], peak));
    }
    drop(processes);
    Ok(Measured {
        rate,
        setting: DEFAULT_MALLOC,
        processes: rows,
        orders: carried[0],
        payments: carried[1],
        relayed: carried[2],
    })
}

fn report(args: &Args, measured: &[Measured]) {
    let rates: Vec<String> = args.rates.iter().map(u32::to_string).collect();
    println!("## Memory of each service under load vs a raw rdkafka relay\n");
    print!(
        "Command: `make bench` (`service-memory --rates {} --settle {} --sample {}",
        rates.join(","),
        args.settle,
        args.sample
    );
    for (k, v) in &args.env {
        print!(" --env {k}={v}");
    }
    println!("`), release binaries as processes");
    println!("on the test bed's broker, one pipeline per rate (3 partitions), payment-service");
    println!("exactly-once. Baseline: a raw `BaseConsumer` + `ThreadedProducer` process with");
    println!("librdkafka's defaults copying every order to a topic of its own. RSS is VmRSS, the");
    println!(
        "median of {} samples after {} s of load; each cell is steady / peak (VmHWM) in MiB.",
        args.sample, args.settle
    );
    println!("Each rate runs twice: with glibc's default malloc arenas, and with the images'");
    println!("`MALLOC_ARENA_MAX=1` (every process, the baseline too).\n");
    print!("| process |");
    for m in measured {
        print!(" {} orders/s, {} |", m.rate, m.setting);
    }
    println!();
    print!("|---|");
    for _ in measured {
        print!("---:|");
    }
    println!();
    let names: Vec<&str> = measured
        .first()
        .map(|m| m.processes.iter().map(|p| p.0).collect())
        .unwrap_or_default();
    for (i, name) in names.iter().enumerate() {
        print!("| {name} |");
        for m in measured {
            let (_, steady, peak) = m.processes[i];
            print!(" {steady:.1} / {peak:.1} |");
        }
        println!();
    }
    print!("| carried: orders / payments / relayed per s |");
    for m in measured {
        print!(" {:.0} / {:.0} / {:.0} |", m.orders, m.payments, m.relayed);
    }
    println!();
    let worst = |setting: &str| {
        measured
            .iter()
            .filter(|m| m.setting == setting)
            .flat_map(|m| m.processes.iter().filter(|p| !p.0.contains("baseline")))
            .map(|p| p.2.max(p.1))
            .fold(0.0, f64::max)
    };
    let (image, default) = (worst(IMAGE_MALLOC), worst(DEFAULT_MALLOC));
    let verdict = if image <= 16.0 { "met" } else { "missed" };
    println!(
        "\nGoal: each service ≤ 16 MiB RSS at every rate, as the images run them: {verdict} \
         (highest service reading {image:.1} MiB; {default:.1} MiB with glibc's default arenas)."
    );
}

/// The baseline: copies every record of `from` to `to` until killed.
fn relay(bootstrap: &str, from: &str, to: &str, group: &str) -> anyhow::Result<()> {
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()?;
    let producer: ThreadedProducer<DefaultProducerContext> = config.create()?;
    // The topic is created by order-service; wait for it.
    loop {
        let metadata = consumer.fetch_metadata(Some(from), Duration::from_secs(5))?;
        if metadata
            .topics()
            .first()
            .is_some_and(|t| !t.partitions().is_empty())
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    consumer.subscribe(&[from])?;
    loop {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        let mut record = BaseRecord::to(to)
            .payload(message.payload().unwrap_or_default())
            .key(message.key().unwrap_or_default());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
    }
}
