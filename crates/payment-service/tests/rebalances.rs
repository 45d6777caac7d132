//! payment-service through many rebalances in a row on the test bed's real Kafka.
//!
//! Every rebalance revokes the service's partitions (eager assignment), and the open
//! transaction is aborted before they are given up. A revocation that lands just after a
//! commit is the hard case: the coordinator is still writing the previous transaction's
//! markers, so it answers the new transaction's AddPartitionsToTxn with
//! CONCURRENT_TRANSACTIONS; librdkafka still counts that request as sent, so the abort
//! sends EndTxn for a transaction the coordinator never opened, gets INVALID_TXN_STATE, and
//! the producer turns fatal. Orders fed flat out, a short transaction interval and many
//! partitions (more markers per commit) keep the service in that window often, and a
//! second group member joining and leaving 40 times gives the revocations.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use shop_testkit::testbed;
use support::*;

/// How many times a second member joins the group and leaves it again.
const CYCLES: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalances_in_a_row_while_transactions_are_open_keep_the_service_running() {
    let pipeline = Pipeline::with_partitions("pay-churn", 24).await;
    let group = testbed().group("pay-churn");
    let payments = pipeline.payments.name();
    let config = payment_service::Config {
        transaction_interval_ms: 25,
        ..pipeline.config(group.id())
    };
    // Orders faster than one replica pays them: every commit is followed at once by the
    // next transaction's first records.
    let feeder = Feeder::paced(pipeline.orders.name(), 200, Duration::from_millis(5));
    let service = start(pipeline.kafka(), config, "churn-a");
    wait_for_payments(payments, 300).await;

    for cycle in 1..=CYCLES {
        // Joining takes partitions from the service, leaving gives them back: two
        // revocations of every partition the service holds.
        join_and_leave(group.id(), pipeline.orders.name()).await;
        if service.has_ended() {
            eprintln!("payment-service ended at rebalance cycle {cycle} of {CYCLES}");
            // `stop` fails with the error the service ended with.
            service.stop().await;
            panic!("payment-service ended at rebalance cycle {cycle} of {CYCLES}");
        }
    }

    let n = feeder.stop().await;
    wait_for_payments(payments, n as usize).await;
    let aborted = service
        .metric("shopstream_transactions_aborted_total")
        .unwrap_or_default();
    let replaced = service
        .metric("shopstream_producers_replaced_total")
        .unwrap_or_default();
    service.stop().await;
    let payments = read_payments(payments).await;
    assert_exactly_one_payment_each(&payments, n);
    eprintln!(
        "{n} orders through {CYCLES} join/leave cycles; \
         {aborted} transactions aborted, {replaced} producers replaced"
    );
}

/// A plain member of `group` joins, waits for its share of `topic`, and leaves (closing
/// without committing anything, so the service resumes from its own commits).
async fn join_and_leave(group: &str, topic: &str) {
    let (group, topic) = (group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let member: BaseConsumer = testbed()
            .kafka_config()
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "range,roundrobin")
            .set("session.timeout.ms", "10000")
            .create()
            .unwrap();
        member.subscribe(&[&topic]).unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while member.assignment().unwrap().count() == 0 {
            assert!(Instant::now() < deadline, "no partition assigned in time");
            // Messages read here are dropped; nothing is committed.
            let _ = member.poll(Duration::from_millis(50));
        }
        // Dropping the consumer leaves the group.
    })
    .await
    .unwrap();
}
