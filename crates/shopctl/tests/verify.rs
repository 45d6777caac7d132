//! `shopctl verify` against the test bed's real Kafka, run as the binary a Helm test Pod
//! runs: it samples only payments made after it started (and only committed ones), and
//! its exit code and line say whether their failure ratio matches the expected one.
//!
//! Every test writes its own payments to a fresh topic from a task that starts once verify
//! reports that it is reading ("reading payments made from now on" on stderr) and keeps
//! writing until verify exits, so a verdict is reached on payments made after the start.
//! Failures follow a fixed pattern (every 10th, every 2nd) rather than a random draw, so
//! the expected verdicts never flake and, on one partition, the counts are exact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, FutureProducer, FutureRecord, Producer, ThreadedProducer,
};
use serde_json::Map;
use shop_domain::time::rfc3339;
use shop_domain::{Amount, FailureReason, Payment, PaymentStatus};
use shop_kafka::KafkaArgs;
use shop_testkit::{TestTopic, testbed, unique_name};
use shopctl::Change;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const TIMEOUT: Duration = Duration::from_secs(30);

/// What verify logs once it has found the end of the payments topic.
const READING: &str = "reading payments made from now on";

/// One test's pipeline: a unique name, its own control topic and payments topic.
struct Bed {
    kafka: KafkaArgs,
    payments: TestTopic,
    _control: TestTopic,
}

async fn bed(partitions: i32) -> Bed {
    let control = testbed().topic("verify-control", 1).await.unwrap();
    let payments = testbed()
        .topic("verify-payments", partitions)
        .await
        .unwrap();
    Bed {
        kafka: KafkaArgs {
            pipeline: unique_name("shop/demo"),
            control_topic: control.name().to_owned(),
            ..KafkaArgs::for_broker(testbed().kafka_bootstrap())
        },
        payments,
        _control: control,
    }
}

/// The payment of `order_id` as payment-service writes it.
fn payment(order_id: u64, failed: bool) -> Payment {
    Payment {
        order_id,
        user_id: Some(1 + (order_id % 100) as u32),
        amount: Some(Amount::from_cents(1_999)),
        status: if failed {
            PaymentStatus::Failed
        } else {
            PaymentStatus::Successful
        },
        reason: failed.then_some(FailureReason::CardDeclined),
        processed_at: Some(rfc3339(SystemTime::now())),
        order_created_at: None,
        extra: Map::new(),
    }
}

fn producer() -> FutureProducer {
    testbed()
        .kafka_config()
        .set("linger.ms", "0")
        .create()
        .unwrap()
}

/// Writes payments with order ids counting up from `first_id`, failed as `pattern` says;
/// returns once the broker acknowledged all of them.
async fn write_payments(topic: &str, first_id: u64, count: u64, failed: impl Fn(u64) -> bool) {
    let producer = producer();
    let mut acks = Vec::new();
    for order_id in first_id..first_id + count {
        let (key, value) = (
            order_id.to_string(),
            payment(order_id, failed(order_id)).to_json(),
        );
        let record = FutureRecord::to(topic).key(&key).payload(&value);
        acks.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for ack in acks {
        ack.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// A writer that keeps writing payments, one acknowledged at a time, until stopped.
struct Stream {
    stop: Arc<AtomicBool>,
    task: JoinHandle<u64>,
}

impl Stream {
    /// Payments with order ids from `first_id` on; `failed(order_id)` decides each one.
    fn start(topic: &str, first_id: u64, failed: fn(u64) -> bool) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let (topic, stopped) = (topic.to_owned(), stop.clone());
        let task = tokio::spawn(async move {
            let producer = producer();
            let mut order_id = first_id;
            while !stopped.load(Ordering::Relaxed) {
                let (key, value) = (
                    order_id.to_string(),
                    payment(order_id, failed(order_id)).to_json(),
                );
                producer
                    .send(FutureRecord::to(&topic).key(&key).payload(&value), TIMEOUT)
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
                order_id += 1;
            }
            order_id - first_id
        });
        Stream { stop, task }
    }

    /// Stops writing; how many payments were written.
    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// `shopctl verify` running as a child process, its stderr followed line by line.
struct Verify {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: JoinHandle<String>,
}

/// How a `shopctl verify` run ended.
#[derive(Debug)]
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Verify {
    /// Starts `shopctl verify` for the bed's pipeline and payments topic with `args`; the
    /// settings come through the environment, as in the Helm test Pod.
    fn start(bed: &Bed, args: &[&str]) -> Verify {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shopctl"))
            .arg("verify")
            .args(args)
            .env("KAFKA_BOOTSTRAP_SERVERS", &bed.kafka.bootstrap_servers)
            .env("PIPELINE", &bed.kafka.pipeline)
            .env("CONTROL_TOPIC", &bed.kafka.control_topic)
            .env("PAYMENTS_TOPIC", bed.payments.name())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        let mut reader = BufReader::new(child.stderr.take().unwrap()).lines();
        let stderr = tokio::spawn(async move {
            let mut all = String::new();
            while let Ok(Some(line)) = reader.next_line().await {
                all.push_str(&line);
                all.push('\n');
                let _ = tx.send(line);
            }
            all
        });
        Verify {
            child,
            lines,
            stderr,
        }
    }

    /// Waits until verify has positioned itself at the end of the payments topic.
    async fn reading(&mut self) {
        let found = tokio::time::timeout(TIMEOUT, async {
            while let Some(line) = self.lines.recv().await {
                if line.contains(READING) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(
            found,
            Ok(true),
            "verify did not report that it is reading; it exited or hung"
        );
    }

    /// Waits for verify to exit (at most its own timeout plus a margin).
    async fn finished(mut self) -> Finished {
        let mut stdout = String::new();
        let mut pipe = self.child.stdout.take().unwrap();
        let status = tokio::time::timeout(Duration::from_secs(120), async {
            pipe.read_to_string(&mut stdout).await.unwrap();
            self.child.wait().await.unwrap()
        })
        .await
        .expect("verify did not exit");
        let stderr = self.stderr.await.unwrap();
        Finished {
            status,
            stdout,
            stderr,
        }
    }
}

#[tokio::test]
async fn payments_written_before_verify_starts_do_not_count() {
    let bed = bed(3).await;
    // Enough failures to fail any sample they got into.
    write_payments(bed.payments.name(), 1, 1000, |_| true).await;

    let mut verify = Verify::start(
        &bed,
        &[
            "--failure-ratio",
            "0.1",
            "--min-payments",
            "200",
            "--timeout",
            "60s",
        ],
    );
    verify.reading().await;
    let stream = Stream::start(bed.payments.name(), 1001, |order_id| order_id % 10 == 0);
    let run = verify.finished().await;
    let written = stream.stop().await;

    assert!(run.status.success(), "{run:#?}");
    let prefix = format!("verify {}: 200 payments, ", bed.kafka.pipeline);
    assert!(run.stdout.starts_with(&prefix), "{run:#?}");
    assert!(
        run.stdout
            .ends_with(", expected 0.100, 99.9% interval 8..=35 failures): OK\n"),
        "{run:#?}"
    );
    assert!(written >= 200, "{written} written");
}

#[tokio::test]
async fn a_skewed_stream_fails_with_the_numbers() {
    let bed = bed(1).await;
    let mut verify = Verify::start(&bed, &["--failure-ratio", "0.1", "--timeout", "60s"]);
    verify.reading().await;
    let stream = Stream::start(bed.payments.name(), 1, |order_id| order_id % 2 == 0);
    let run = verify.finished().await;
    stream.stop().await;

    assert_eq!(run.status.code(), Some(1), "{run:#?}");
    assert_eq!(
        run.stdout,
        format!(
            "verify {}: 200 payments, 100 failed (observed 0.500, expected 0.100, 99.9% interval 8..=35 failures): FAILED\n",
            bed.kafka.pipeline
        ),
        "{run:#?}"
    );
}

#[tokio::test]
async fn aborted_payments_do_not_count() {
    let bed = bed(1).await;
    let mut verify = Verify::start(&bed, &["--failure-ratio", "0.1", "--timeout", "60s"]);
    verify.reading().await;

    // Like payment-service: transactions, here alternately committed (1 in 10 failed)
    // and aborted (all failed). Read uncommitted, the sample would be mostly failures.
    let stop = Arc::new(AtomicBool::new(false));
    let (topic, stopped) = (bed.payments.name().to_owned(), stop.clone());
    let transactions = tokio::task::spawn_blocking(move || {
        let producer: ThreadedProducer<DefaultProducerContext> = testbed()
            .kafka_config()
            .set("transactional.id", unique_name("verify-tx"))
            .set("linger.ms", "0")
            .create()
            .unwrap();
        producer.init_transactions(TIMEOUT).unwrap();
        let mut order_id = 1;
        let mut committed = 0;
        while !stopped.load(Ordering::Relaxed) {
            for commit in [true, false] {
                producer.begin_transaction().unwrap();
                for i in 0..10 {
                    let failed = !commit || i == 0;
                    let (key, value) = (order_id.to_string(), payment(order_id, failed).to_json());
                    producer
                        .send(BaseRecord::to(&topic).key(&key).payload(&value))
                        .map_err(|(e, _)| e)
                        .unwrap();
                    order_id += 1;
                }
                if commit {
                    producer.commit_transaction(TIMEOUT).unwrap();
                    committed += 10;
                } else {
                    // Aborting purges what is still queued: flush first, so the aborted
                    // payments are in the log, between the committed ones.
                    producer.flush(TIMEOUT).unwrap();
                    producer.abort_transaction(TIMEOUT).unwrap();
                }
            }
        }
        committed
    });
    let run = verify.finished().await;
    stop.store(true, Ordering::Relaxed);
    let committed = transactions.await.unwrap();

    assert!(run.status.success(), "{run:#?}");
    assert_eq!(
        run.stdout,
        format!(
            "verify {}: 200 payments, 20 failed (observed 0.100, expected 0.100, 99.9% interval 8..=35 failures): OK\n",
            bed.kafka.pipeline
        ),
        "{run:#?}"
    );
    assert!(committed >= 200, "{committed} committed");
}

#[tokio::test]
async fn too_few_payments_time_out_with_how_many_came() {
    let bed = bed(1).await;
    let mut verify = Verify::start(
        &bed,
        &[
            "--failure-ratio",
            "0.1",
            "--min-payments",
            "50",
            "--timeout",
            "10s",
        ],
    );
    verify.reading().await;
    write_payments(bed.payments.name(), 1, 20, |order_id| order_id % 10 == 0).await;
    // Records that are not payments are counted apart, not fatal.
    let producer = producer();
    for value in [&b"not json"[..], br#"{"order_id": 99}"#] {
        producer
            .send(
                FutureRecord::to(bed.payments.name())
                    .key("99")
                    .payload(value),
                TIMEOUT,
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer
        .send(
            FutureRecord::<str, [u8]>::to(bed.payments.name()).key("99"),
            TIMEOUT,
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let run = verify.finished().await;

    assert_eq!(run.status.code(), Some(1), "{run:#?}");
    assert_eq!(
        run.stdout,
        format!(
            "verify {}: timed out after 10s: 20 of 50 payments seen on topic {}, 3 unparsable records skipped\n",
            bed.kafka.pipeline,
            bed.payments.name()
        ),
        "{run:#?}"
    );
}

#[tokio::test]
async fn the_expected_ratio_comes_from_the_control_record() {
    let bed = bed(1).await;

    // No record yet: a clear error, before anything is read.
    let run = Verify::start(&bed, &["--timeout", "60s"]).finished().await;
    assert_eq!(run.status.code(), Some(1), "{run:#?}");
    assert!(run.stdout.is_empty(), "{run:#?}");
    assert!(
        run.stderr.contains(&format!(
            "pipeline {} has no control record on topic {}",
            bed.kafka.pipeline, bed.kafka.control_topic
        )),
        "{run:#?}"
    );
    assert!(run.stderr.contains("--failure-ratio"), "{run:#?}");

    shopctl::set(
        &bed.kafka,
        Change {
            failure_ratio: Some(0.5),
            ..Change::default()
        },
    )
    .await
    .unwrap();
    let mut verify = Verify::start(&bed, &["--timeout", "60s"]);
    verify.reading().await;
    let stream = Stream::start(bed.payments.name(), 1, |order_id| order_id % 2 == 0);
    let run = verify.finished().await;
    stream.stop().await;

    assert!(run.status.success(), "{run:#?}");
    assert_eq!(
        run.stdout,
        format!(
            "verify {}: 200 payments, 100 failed (observed 0.500, expected 0.500, 99.9% interval 77..=123 failures): OK\n",
            bed.kafka.pipeline
        ),
        "{run:#?}"
    );
}
