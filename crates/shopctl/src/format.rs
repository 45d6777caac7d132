//! What shopctl prints. Pure functions of records, status and reports, so the output is
//! tested without a broker and `main` only chooses one and prints it.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};
use shop_domain::ControlRecord;

use crate::audit::{self, Problem, Tally};
use crate::status::{Replica, Status};
use crate::verdict::{Outcome, Report};

/// `rate 50/s, failure ratio 0.2, running, seed 0`.
pub fn settings(record: &ControlRecord) -> String {
    format!(
        "rate {}/s, failure ratio {}, {}, seed {}",
        record.orders_per_second,
        record.payment_failure_ratio,
        if record.paused { "paused" } else { "running" },
        record.seed
    )
}

/// The confirmation of `shopctl set`:
/// `pipeline demo: generation 3 written (rate 50/s, failure ratio 0.2, running, seed 0)`.
pub fn written(pipeline: &str, record: &ControlRecord) -> String {
    format!(
        "pipeline {pipeline}: generation {} written ({})",
        record.generation,
        settings(record)
    )
}

const HEADERS: [&str; 7] = [
    "SERVICE",
    "INSTANCE",
    "GENERATION",
    "RATE/RATIO",
    "PAUSED",
    "AGE",
    "COUNTERS",
];

/// The status as people read it: the desired record, then a table of replicas, then any
/// problems. Ends with a newline.
pub fn status_table(status: &Status) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; results are ignored for that reason.
    match &status.desired {
        Some(record) => {
            let _ = writeln!(
                out,
                "pipeline {}: desired generation {} ({})",
                status.pipeline,
                record.generation,
                settings(record)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "pipeline {}: no control record; services run on their flags (write one with `shopctl set`)",
                status.pipeline
            );
        }
    }
    if status.replicas.is_empty() {
        let _ = writeln!(
            out,
            "no replica of pipeline {} has a heartbeat",
            status.pipeline
        );
    } else {
        let rows: Vec<[String; 7]> = status
            .replicas
            .iter()
            .map(|replica| row(replica, status))
            .collect();
        let mut widths = HEADERS.map(str::len);
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let headers = HEADERS.map(str::to_owned);
        for cells in std::iter::once(&headers).chain(&rows) {
            let mut line = String::new();
            for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}  ");
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
    for problem in &status.problems {
        let _ = writeln!(out, "warning: {problem}");
    }
    out
}

fn row(replica: &Replica, status: &Status) -> [String; 7] {
    let beat = &replica.heartbeat;
    let generation = match (beat.applied_generation, &status.desired) {
        (Some(applied), Some(desired)) if replica.is_behind(Some(desired)) => {
            format!("{applied} (behind {})", desired.generation)
        }
        (Some(applied), _) => applied.to_string(),
        (None, _) => "-".to_owned(),
    };
    let settings: Vec<String> = [
        beat.orders_per_second.map(|rate| format!("{rate}/s")),
        beat.payment_failure_ratio.map(|ratio| ratio.to_string()),
    ]
    .into_iter()
    .flatten()
    .collect();
    let paused = match beat.paused {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    };
    let age = match replica.age {
        Some(age) if replica.is_stale() => format!("{} (stale)", short_duration(age)),
        Some(age) => short_duration(age),
        None => "?".to_owned(),
    };
    let counters: Vec<String> = beat
        .counters
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    [
        replica.service.clone(),
        replica.instance.clone(),
        generation,
        or_dash(settings.join(" ")),
        paused.to_owned(),
        age,
        or_dash(counters.join(" ")),
    ]
}

fn or_dash(text: String) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text
    }
}

/// `42s`, `5m`, `3h`, `2d`: the largest whole unit, as kubectl shows ages.
pub fn short_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{}m", secs / 60),
        3_600..86_400 => format!("{}h", secs / 3_600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// The status for scripts: `{"pipeline", "desired", "replicas": [...], "problems"}`, with
/// each replica's heartbeat fields plus `age_seconds`, `behind` and `stale`.
pub fn status_json(status: &Status) -> Value {
    let desired = status.desired.as_ref().map(|record| {
        json!({
            "generation": record.generation,
            "orders_per_second": record.orders_per_second,
            "payment_failure_ratio": record.payment_failure_ratio,
            "paused": record.paused,
            "seed": record.seed,
        })
    });
    let replicas: Vec<Value> = status
        .replicas
        .iter()
        .map(|replica| {
            let beat = &replica.heartbeat;
            json!({
                "service": replica.service,
                "instance": replica.instance,
                "applied_generation": beat.applied_generation,
                "orders_per_second": beat.orders_per_second,
                "payment_failure_ratio": beat.payment_failure_ratio,
                "paused": beat.paused,
                "counters": beat.counters,
                "timestamp": beat.timestamp,
                "age_seconds": replica.age.map(|age| age.as_secs_f64()),
                "behind": replica.is_behind(status.desired.as_ref()),
                "stale": replica.is_stale(),
            })
        })
        .collect();
    json!({
        "pipeline": status.pipeline,
        "desired": desired,
        "replicas": replicas,
        "problems": status.problems,
    })
}

/// The line of `shopctl verify`:
/// `verify demo: 200 payments, 23 failed (observed 0.115, expected 0.100, 99.9% interval
/// 8..=35 failures): OK`, the same ending in `FAILED`, or `verify demo: timed out after
/// 3m: 57 of 200 payments seen on topic demo.payments`. Records that were not payments
/// are mentioned when there were any.
pub fn verified(pipeline: &str, payments_topic: &str, report: &Report) -> String {
    let Report {
        sample,
        check,
        outcome,
    } = report;
    let skipped = match sample.unparsable {
        0 => String::new(),
        1 => ", 1 unparsable record skipped".to_owned(),
        n => format!(", {n} unparsable records skipped"),
    };
    let (interval, verdict) = match outcome {
        Outcome::Within(interval) => (interval, "OK"),
        Outcome::Outside(interval) => (interval, "FAILED"),
        Outcome::TimedOut => {
            return format!(
                "verify {pipeline}: timed out after {}: {} of {} payments seen on topic {payments_topic}{skipped}",
                humantime::format_duration(check.timeout),
                sample.payments,
                check.min_payments,
            );
        }
    };
    format!(
        "verify {pipeline}: {} payments, {} failed{skipped} (observed {:.3}, expected {}, {} interval {}..={} failures): {verdict}",
        sample.payments,
        sample.failed,
        sample.observed_ratio(),
        ratio(check.expected),
        percent(check.confidence),
        interval.low,
        interval.high,
    )
}

/// What `shopctl audit` prints, without a final newline. One line when both topics were
/// read:
///
/// `audit demo.orders -> demo.payments: 12000 orders, 12000 payments, 0 orders without a
/// payment, 0 duplicate payments, 0 payments for unknown orders: OK`
///
/// or the same ending in `FAILED`, followed by a line per problem found with up to
/// [`audit::EXAMPLES`] order ids (`duplicate payments: 1003 (2 payments), 1007 (3
/// payments)`). Unparsable records and repeated order ids are mentioned after their
/// topic's count when there are any. When the timeout passed first:
/// `audit demo.orders -> demo.payments: timed out after 2m before reaching the end of
/// demo.payments (1234 offsets left): 12000 orders, 9000 payments read`.
pub fn audited(orders_topic: &str, payments_topic: &str, report: &audit::Report) -> String {
    let findings = match &report.outcome {
        audit::Outcome::Audited(findings) => findings,
        audit::Outcome::TimedOut => {
            let unread: Vec<String> = [
                (orders_topic, report.orders),
                (payments_topic, report.payments),
            ]
            .into_iter()
            .filter(|(_, tally)| tally.offsets_left > 0)
            .map(|(topic, tally)| format!("{topic} ({} offsets left)", tally.offsets_left))
            .collect();
            let ends = if unread.len() == 1 { "end" } else { "ends" };
            return format!(
                "audit {orders_topic} -> {payments_topic}: timed out after {} before reaching the {ends} of {}: {}, {} read",
                humantime::format_duration(report.timeout),
                unread.join(" and "),
                counted(report.orders, "orders", 0),
                counted(report.payments, "payments", 0),
            );
        }
    };
    let mut out = format!(
        "audit {orders_topic} -> {payments_topic}: {}, {}, {} orders without a payment, {} duplicate payments, {} payments for unknown orders: {}",
        counted(report.orders, "orders", findings.repeated_orders),
        counted(report.payments, "payments", 0),
        findings.without_payment.count,
        findings.duplicates.count,
        findings.unknown.count,
        if report.passed() { "OK" } else { "FAILED" },
    );
    for (label, problem, show_payments) in [
        ("orders without a payment", &findings.without_payment, false),
        ("duplicate payments", &findings.duplicates, true),
        ("payments for unknown orders", &findings.unknown, true),
    ] {
        if problem.count > 0 {
            let _ = write!(out, "\n{label}: {}", examples(problem, show_payments));
        }
    }
    out
}

/// `12000 orders`, with repeated order ids and unparsable records in parentheses when
/// there are any: `12003 orders (3 repeated order ids, 1 unparsable record skipped)`.
fn counted(tally: Tally, noun: &str, repeated: u64) -> String {
    let notes: Vec<String> = [
        match repeated {
            0 => None,
            1 => Some("1 repeated order id".to_owned()),
            n => Some(format!("{n} repeated order ids")),
        },
        match tally.unparsable {
            0 => None,
            1 => Some("1 unparsable record skipped".to_owned()),
            n => Some(format!("{n} unparsable records skipped")),
        },
    ]
    .into_iter()
    .flatten()
    .collect();
    if notes.is_empty() {
        format!("{} {noun}", tally.records)
    } else {
        format!("{} {noun} ({})", tally.records, notes.join(", "))
    }
}

/// `1003 (2 payments), 1007 (3 payments) and 12 more`: the example order ids of a problem.
fn examples(problem: &Problem, show_payments: bool) -> String {
    let ids: Vec<String> = problem
        .examples
        .iter()
        .map(|&(order_id, payments)| match (show_payments, payments) {
            (false, _) => order_id.to_string(),
            (true, 1) => format!("{order_id} (1 payment)"),
            (true, n) => format!("{order_id} ({n} payments)"),
        })
        .collect();
    let more = problem.orders.saturating_sub(problem.examples.len() as u64);
    let mut text = ids.join(", ");
    if more > 0 {
        let _ = write!(text, " and {more} more");
    }
    text
}

/// A ratio with three decimals (`0.100`), or all it takes when three would round it
/// (`0.0005`), so the expected value shown is the one tested.
fn ratio(value: f64) -> String {
    let short = format!("{value:.3}");
    if short.parse::<f64>() == Ok(value) {
        short
    } else {
        value.to_string()
    }
}

/// A probability as a percentage without trailing zeros: `99.9%`, `95%`, `99.99%`.
fn percent(probability: f64) -> String {
    let text = format!("{:.6}", probability * 100.0);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use shop_domain::Heartbeat;

    use super::*;
    use crate::verdict::{Check, Interval, Sample};

    fn record(generation: u64) -> ControlRecord {
        ControlRecord {
            generation,
            orders_per_second: 50.0,
            payment_failure_ratio: 0.2,
            ..crate::change::defaults()
        }
    }

    fn replica(service: &str, instance: &str, applied: Option<u64>, age: u64) -> Replica {
        Replica {
            service: service.into(),
            instance: instance.into(),
            heartbeat: Heartbeat {
                pipeline: "demo".into(),
                service: service.into(),
                instance: instance.into(),
                applied_generation: applied,
                counters: BTreeMap::from([("sent".into(), 10), ("failed".into(), 1)]),
                timestamp: "2025-01-02T03:04:05.000Z".into(),
                ..Heartbeat::default()
            },
            age: Some(Duration::from_secs(age)),
        }
    }

    fn status() -> Status {
        let mut order = replica("order-service", "order-0", Some(3), 1);
        order.heartbeat.orders_per_second = Some(50.0);
        order.heartbeat.paused = Some(false);
        let mut payment = replica("payment-service", "payment-1", Some(2), 75);
        payment.heartbeat.payment_failure_ratio = Some(0.1);
        let mut notification = replica("notification-service", "n", None, 0);
        notification.heartbeat.counters.clear();
        Status {
            pipeline: "demo".into(),
            desired: Some(record(3)),
            replicas: vec![order, payment, notification],
            problems: vec!["the heartbeat x is invalid: y".into()],
        }
    }

    #[test]
    fn written_line_says_generation_and_settings() {
        assert_eq!(
            written("demo", &record(3)),
            "pipeline demo: generation 3 written (rate 50/s, failure ratio 0.2, running, seed 0)"
        );
        let paused = ControlRecord {
            paused: true,
            orders_per_second: 0.5,
            seed: 42,
            ..record(1)
        };
        assert_eq!(
            settings(&paused),
            "rate 0.5/s, failure ratio 0.2, paused, seed 42"
        );
    }

    #[test]
    fn status_table_aligns_columns_and_marks_replicas_behind_and_stale() {
        let expected = "\
pipeline demo: desired generation 3 (rate 50/s, failure ratio 0.2, running, seed 0)
SERVICE               INSTANCE   GENERATION    RATE/RATIO  PAUSED  AGE         COUNTERS
order-service         order-0    3             50/s        no      1s          failed=1 sent=10
payment-service       payment-1  2 (behind 3)  0.1         -       1m (stale)  failed=1 sent=10
notification-service  n          -             -           -       0s          -
warning: the heartbeat x is invalid: y
";
        assert_eq!(status_table(&status()), expected);
    }

    #[test]
    fn status_table_without_record_or_replicas_says_so() {
        let empty = Status {
            pipeline: "demo".into(),
            desired: None,
            replicas: vec![],
            problems: vec![],
        };
        let text = status_table(&empty);
        assert!(text.contains("pipeline demo: no control record"), "{text}");
        assert!(
            text.contains("no replica of pipeline demo has a heartbeat"),
            "{text}"
        );
    }

    #[test]
    fn status_json_has_the_record_and_each_replica() {
        let json = status_json(&status());
        assert_eq!(json["pipeline"], "demo");
        assert_eq!(json["desired"]["generation"], 3);
        assert_eq!(json["replicas"][1]["service"], "payment-service");
        assert_eq!(json["replicas"][1]["behind"], true);
        assert_eq!(json["replicas"][1]["stale"], true);
        assert_eq!(json["replicas"][1]["age_seconds"], 75.0);
        assert_eq!(json["replicas"][0]["counters"]["sent"], 10);
        assert_eq!(json["replicas"][2]["applied_generation"], Value::Null);
    }

    #[test]
    fn ages_use_the_largest_whole_unit() {
        for (secs, shown) in [
            (0, "0s"),
            (59, "59s"),
            (60, "1m"),
            (7_200, "2h"),
            (200_000, "2d"),
        ] {
            assert_eq!(short_duration(Duration::from_secs(secs)), shown);
        }
    }

    fn report(payments: u64, failed: u64, unparsable: u64, outcome: Outcome) -> Report {
        Report {
            sample: Sample {
                payments,
                failed,
                unparsable,
            },
            check: Check {
                expected: 0.1,
                confidence: 0.999,
                min_payments: 200,
                timeout: Duration::from_secs(180),
            },
            outcome,
        }
    }

    #[test]
    fn verify_prints_one_line_with_the_numbers() {
        let interval = Interval { low: 8, high: 37 };
        assert_eq!(
            verified(
                "demo/demo",
                "payments",
                &report(212, 23, 0, Outcome::Within(interval))
            ),
            "verify demo/demo: 212 payments, 23 failed (observed 0.108, expected 0.100, 99.9% interval 8..=37 failures): OK"
        );
        assert_eq!(
            verified(
                "demo",
                "payments",
                &report(200, 100, 3, Outcome::Outside(interval))
            ),
            "verify demo: 200 payments, 100 failed, 3 unparsable records skipped (observed 0.500, expected 0.100, 99.9% interval 8..=37 failures): FAILED"
        );
        assert_eq!(
            verified(
                "demo",
                "demo.demo.payments",
                &report(57, 5, 0, Outcome::TimedOut)
            ),
            "verify demo: timed out after 3m: 57 of 200 payments seen on topic demo.demo.payments"
        );
    }

    fn audit_report(orders: audit::Read, payments: audit::Read) -> audit::Report {
        audit::judge(&orders, &payments, Duration::from_secs(120))
    }

    fn ids(ids: impl IntoIterator<Item = u64>) -> audit::Read {
        audit::Read {
            order_ids: ids.into_iter().collect(),
            ..audit::Read::default()
        }
    }

    #[test]
    fn a_clean_audit_is_one_line_ending_in_ok() {
        assert_eq!(
            audited(
                "demo.orders",
                "demo.payments",
                &audit_report(ids(1..=12_000), ids(1..=12_000))
            ),
            "audit demo.orders -> demo.payments: 12000 orders, 12000 payments, 0 orders without a payment, 0 duplicate payments, 0 payments for unknown orders: OK"
        );
    }

    #[test]
    fn a_failed_audit_lists_example_order_ids_per_problem() {
        // 1..=30 ordered; 1..=5 and 21..=30 unpaid (15), 6 paid twice, 7 three times,
        // 99 unknown and paid once.
        let payments = (6..=20).chain([6, 7, 7, 99]);
        assert_eq!(
            audited("o", "p", &audit_report(ids(1..=30), ids(payments))),
            "audit o -> p: 30 orders, 19 payments, 15 orders without a payment, 3 duplicate payments, 1 payments for unknown orders: FAILED
orders without a payment: 1, 2, 3, 4, 5, 21, 22, 23, 24, 25 and 5 more
duplicate payments: 6 (2 payments), 7 (3 payments)
payments for unknown orders: 99 (1 payment)"
        );
        // Only the problems found get a line.
        assert_eq!(
            audited("o", "p", &audit_report(ids([1, 2]), ids([1]))),
            "audit o -> p: 2 orders, 1 payments, 1 orders without a payment, 0 duplicate payments, 0 payments for unknown orders: FAILED
orders without a payment: 2"
        );
    }

    #[test]
    fn unparsable_records_and_repeated_orders_are_noted_after_their_topic() {
        let orders = audit::Read {
            unparsable: 1,
            ..ids([1, 2, 2, 3])
        };
        let payments = audit::Read {
            unparsable: 2,
            ..ids([1, 2, 3])
        };
        assert_eq!(
            audited("o", "p", &audit_report(orders, payments)),
            "audit o -> p: 4 orders (1 repeated order id, 1 unparsable record skipped), 3 payments (2 unparsable records skipped), 0 orders without a payment, 0 duplicate payments, 0 payments for unknown orders: OK"
        );
    }

    #[test]
    fn a_timed_out_audit_says_which_end_was_not_reached_and_what_was_read() {
        let payments = audit::Read {
            offsets_left: 1234,
            ..ids(1..=9)
        };
        assert_eq!(
            audited("o", "p", &audit_report(ids(1..=12), payments.clone())),
            "audit o -> p: timed out after 2m before reaching the end of p (1234 offsets left): 12 orders, 9 payments read"
        );
        let orders = audit::Read {
            offsets_left: 5,
            unparsable: 1,
            ..ids(1..=12)
        };
        assert_eq!(
            audited("o", "p", &audit_report(orders, payments)),
            "audit o -> p: timed out after 2m before reaching the ends of o (5 offsets left) and p (1234 offsets left): 12 orders (1 unparsable record skipped), 9 payments read"
        );
    }

    #[test]
    fn ratios_and_confidences_show_what_was_tested() {
        for (value, shown) in [
            (0.1, "0.100"),
            (0.0, "0.000"),
            (1.0, "1.000"),
            (0.0005, "0.0005"),
        ] {
            assert_eq!(ratio(value), shown);
        }
        for (value, shown) in [
            (0.999, "99.9%"),
            (0.95, "95%"),
            (0.9999, "99.99%"),
            (0.5, "50%"),
        ] {
            assert_eq!(percent(value), shown);
        }
    }
}
