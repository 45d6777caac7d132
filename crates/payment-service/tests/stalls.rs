//! A replica that stalls (SIGSTOP, as a long GC pause, a frozen VM or a throttled
//! container would) with a transaction open, for longer than the transaction timeout: the
//! broker aborts that transaction itself and bumps the producer's epoch, so when the
//! process runs again its producer learns it is fenced although no other incarnation
//! exists. The replica replaces the producer, processes the aborted batch again from the
//! committed offsets, and keeps running: every order still gets exactly one payment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shop_testkit::{testbed, unique_name};
use support::*;

/// Longer than the transaction timeout (10 s) plus the broker's check for timed-out
/// transactions (every 10 s by default), and than the consumer session timeout.
const STALL: Duration = Duration::from_secs(25);

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name}");
}

fn assert_running(service: &mut Child, log: &std::path::Path) {
    if let Some(status) = service.try_wait().unwrap() {
        panic!(
            "payment-service exited after the stall: {status}; log: {}",
            log.display()
        );
    }
}

/// Whether the replica's producer has been told it is fenced.
fn fenced(log: &std::path::Path) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("fenced by a newer instance")
}

fn replaced_producers(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("producer replaced")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_fenced_by_the_brokers_transaction_timeout_recovers() {
    let pipeline = Pipeline::new("pay-stall").await;
    let group = testbed().group("pay-stall");
    let args = pipeline.args(group.id(), "stalled-0");
    let log = std::env::temp_dir().join(format!("{}.log", unique_name("payment-stall")));
    let payments = pipeline.payments.name();

    let feeder = Feeder::start(pipeline.orders.name());
    let mut service = Command::new(env!("CARGO_BIN_EXE_payment-service"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_payments(payments, 300).await;

    // Orders keep arriving while the replica is frozen. A stall that begins between two
    // transactions, or before the open one reached the broker, fences nothing; stall
    // again until the broker has aborted an open transaction under the replica's feet.
    for attempt in 1.. {
        assert!(
            attempt <= 5,
            "no stall fenced the producer; log: {}",
            log.display()
        );
        signal(&service, "STOP");
        tokio::time::sleep(STALL).await;
        signal(&service, "CONT");
        let resumed = Instant::now();
        while !fenced(&log) && resumed.elapsed() < Duration::from_secs(15) {
            assert_running(&mut service, &log);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if fenced(&log) {
            eprintln!("fenced after stall {attempt}");
            break;
        }
    }

    // Fenced by the broker's abort, it replaces its producer and goes on.
    let resumed = Instant::now();
    while replaced_producers(&log) == 0 {
        assert_running(&mut service, &log);
        assert!(
            resumed.elapsed() < TIMEOUT,
            "no producer replaced after the stall; log: {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let paid_then = paid_orders(payments).await;
    wait_for_payments(payments, paid_then + 300).await;
    let n = feeder.stop().await;
    wait_for_payments(payments, n as usize).await;
    assert_running(&mut service, &log);
    signal(&service, "TERM");
    let status = service.wait().unwrap();
    assert!(
        status.success(),
        "exit after SIGTERM: {status}; log: {}",
        log.display()
    );

    let payments = read_payments(payments).await;
    assert_exactly_one_payment_each(&payments, n);
    eprintln!("{n} orders, each paid once across the stall");
    let _ = std::fs::remove_file(&log);
}
