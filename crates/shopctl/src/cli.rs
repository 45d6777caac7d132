//! The command line: `shopctl [KAFKA FLAGS] <set|status|verify|audit> [FLAGS]`.
//!
//! The Kafka flags (`--bootstrap-servers`, `--pipeline`, `--control-topic`,
//! `--heartbeat-topic`, each with its environment variable) are global, so they may come
//! before or after the subcommand: `shopctl set --pipeline demo --rate 50` and
//! `shopctl --pipeline demo set --rate 50` mean the same.

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use shop_kafka::KafkaArgs;

use crate::change::Change;
use crate::verdict::DEFAULT_CONFIDENCE;

/// Tunes a shopstream pipeline without Kubernetes: writes its control record, shows what
/// each replica applied, and verifies that its payments fail at the expected ratio.
#[derive(Parser, Debug, Clone)]
#[command(name = "shopctl", version, about, mut_args = kafka_arg)]
pub struct Cli {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Makes a flag of [`KafkaArgs`] global (accepted before or after the subcommand) and
/// lists it under its own heading; the id-block topic is hidden, shopctl never uses it.
fn kafka_arg(arg: clap::Arg) -> clap::Arg {
    let hide = arg.get_id() == "id_block_topic";
    arg.global(true).help_heading("Kafka").hide(hide)
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Writes a new control record for the pipeline; settings not given keep their
    /// current value.
    Set(SetArgs),
    /// Shows the desired control record and what each live replica applied and counted.
    Status(StatusArgs),
    /// Checks that the pipeline's payments flow and fail at the expected ratio; run by
    /// `helm test`.
    ///
    /// Reads the payments topic from its end as of the start of the command, so only
    /// payments made from now on count and a ratio changed earlier does not pollute the
    /// sample. It reads with isolation.level=read_committed (payments of aborted
    /// transactions do not count) and joins no consumer group. It stops when
    /// --min-payments payments were read or --timeout passed. Records that are not
    /// payments are counted and reported, not fatal.
    ///
    /// With n payments of which k failed and the expected ratio p (--failure-ratio, by
    /// default the payment_failure_ratio of the pipeline's latest control record), it
    /// passes when k lies in the two-sided interval that a Binomial(n, p) count falls in
    /// with probability --confidence: the exact binomial quantiles at (1 - C)/2 and
    /// 1 - (1 - C)/2. A pipeline that fails exactly at p is therefore failed by this check
    /// at most once in 1 / (1 - C) runs (once in 1000 at the default). p = 0 and p = 1
    /// pass only with no failure and only failures.
    ///
    /// Prints one line and exits 0 when the count is inside the interval:
    ///
    ///   verify demo: 200 payments, 23 failed (observed 0.115, expected 0.100, 99.9%
    ///   interval 8..=35 failures): OK
    ///
    /// It exits 1 with the same numbers and FAILED when the count is outside; with
    /// `timed out after 3m: 57 of 200 payments seen on TOPIC` when too few payments came
    /// (is the pipeline paused, or its rate 0?); and with an error on stderr when Kafka
    /// cannot be read or there is no control record to take the expected ratio from.
    Verify(VerifyArgs),
    /// Checks after the fact that every order got exactly one payment (exactly-once
    /// delivery).
    ///
    /// Intended use: pause the pipeline (`shopctl set --paused`, or `paused: true` in the
    /// ShopPipeline), wait until it has drained (payment lag 0: the LAG column of
    /// `kubectl get sp`, or the lag of payment-service's consumer group on the orders
    /// topic), then audit. Orders still in flight when the audit starts show up as
    /// "without a payment".
    ///
    /// Reads both topics from their beginning to their end offsets as of the start of the
    /// command, with isolation.level=read_committed (payments of aborted transactions do
    /// not count, nor do transactions still open at the start), and joins no consumer
    /// group. Records that are not orders or payments are counted and reported, not
    /// fatal. The order ids are held in memory (tens of bytes per record).
    ///
    /// Prints one line and exits 0 when every order has exactly one payment and every
    /// payment an order:
    ///
    ///   audit demo.orders -> demo.payments: 12000 orders, 12000 payments, 0 orders
    ///   without a payment, 0 duplicate payments, 0 payments for unknown orders: OK
    ///
    /// Otherwise the same line ends in FAILED, followed by up to 10 example order ids of
    /// each problem (smallest first), and the exit code is 1. "Duplicate payments" counts
    /// the payments of an order beyond its first; "unknown orders" are order ids of
    /// payments that are not on the orders topic. It also exits 1 with what was read
    /// when --timeout passes before both ends are reached, and with an error on stderr
    /// when a topic does not exist or Kafka cannot be read.
    Audit(AuditArgs),
}

#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct SetArgs {
    /// Orders per second, 0..=100000 (fractions allowed).
    #[arg(long, value_name = "PER_SECOND", allow_negative_numbers = true)]
    pub rate: Option<f64>,

    /// Share of payments that fail, 0..=1.
    #[arg(long, value_name = "RATIO", allow_negative_numbers = true)]
    pub failure_ratio: Option<f64>,

    /// Stop generating orders.
    #[arg(long, conflicts_with = "resume")]
    pub paused: bool,

    /// Generate orders again after --paused.
    #[arg(long)]
    pub resume: bool,

    /// Seed of the payment decision (the same seed replays the same outcomes).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SetArgs {
    /// The change these flags ask for.
    pub fn change(&self) -> Change {
        Change {
            rate: self.rate,
            failure_ratio: self.failure_ratio,
            paused: match (self.paused, self.resume) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            seed: self.seed,
        }
    }
}

#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusArgs {
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// How `status` prints.
#[derive(ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Output {
    /// For people: the desired record and a table of replicas.
    #[default]
    Table,
    /// For scripts: one JSON document.
    Json,
}

#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct VerifyArgs {
    /// Topic of the pipeline's payments (`<namespace>.<pipeline>.payments` under the
    /// controller).
    #[arg(long, env = "PAYMENTS_TOPIC", value_name = "TOPIC")]
    pub payments_topic: String,

    /// Expected share of failed payments, 0..=1 [default: the payment_failure_ratio of
    /// the pipeline's latest control record on --control-topic].
    #[arg(long, value_name = "RATIO", allow_negative_numbers = true, value_parser = parse_ratio)]
    pub failure_ratio: Option<f64>,

    /// How many payments to read before deciding.
    #[arg(long, value_name = "N", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub min_payments: u64,

    /// How long to wait for them, counted from the start of the command (e.g. 90s, 3m,
    /// 1h 30m).
    #[arg(long, value_name = "DURATION", default_value = "3m",
          value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Probability that a pipeline failing at exactly the expected ratio passes, strictly
    /// between 0 and 1.
    #[arg(long, value_name = "C", default_value_t = DEFAULT_CONFIDENCE,
          allow_negative_numbers = true, value_parser = parse_confidence)]
    pub confidence: f64,
}

#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct AuditArgs {
    /// Topic of the pipeline's orders (`<namespace>.<pipeline>.orders` under the
    /// controller).
    #[arg(long, env = "ORDERS_TOPIC", value_name = "TOPIC")]
    pub orders_topic: String,

    /// Topic of the pipeline's payments (`<namespace>.<pipeline>.payments` under the
    /// controller).
    #[arg(long, env = "PAYMENTS_TOPIC", value_name = "TOPIC")]
    pub payments_topic: String,

    /// How long reading both topics to their ends may take, counted from the start of the
    /// command (e.g. 90s, 2m, 1h 30m).
    #[arg(long, value_name = "DURATION", default_value = "2m",
          value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// A failure ratio: a number in `0..=1`.
fn parse_ratio(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("allowed is a number in 0..=1, got {value:?}")),
    }
}

/// A confidence: a number strictly between 0 and 1 (1 would accept every count).
fn parse_confidence(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(confidence) if confidence > 0.0 && confidence < 1.0 => Ok(confidence),
        _ => Err(format!(
            "allowed is a number strictly between 0 and 1, such as 0.999, got {value:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("shopctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_issues_example_parses() {
        let cli = parse(&[
            "set",
            "--pipeline",
            "shop/demo",
            "--rate",
            "50",
            "--failure-ratio",
            "0.2",
            "--paused",
        ])
        .unwrap();
        assert_eq!(cli.kafka.pipeline, "shop/demo");
        let Command::Set(set) = cli.command else {
            panic!("not set: {cli:?}");
        };
        assert_eq!(
            set.change(),
            Change {
                rate: Some(50.0),
                failure_ratio: Some(0.2),
                paused: Some(true),
                seed: None,
            }
        );
    }

    #[test]
    fn kafka_flags_may_come_before_the_subcommand() {
        let cli = parse(&[
            "--pipeline",
            "p1",
            "--control-topic",
            "c",
            "status",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(
            (
                cli.kafka.pipeline.as_str(),
                cli.kafka.control_topic.as_str()
            ),
            ("p1", "c")
        );
        let Command::Status(status) = cli.command else {
            panic!("not status: {cli:?}");
        };
        assert_eq!(status.output, Output::Json);
    }

    #[test]
    fn negative_values_reach_validation_and_paused_conflicts_with_resume() {
        let Command::Set(set) = parse(&["set", "--rate", "-1"]).unwrap().command else {
            panic!("not set");
        };
        assert_eq!(set.rate, Some(-1.0));
        assert!(parse(&["set", "--paused", "--resume"]).is_err());
        let Command::Set(set) = parse(&["set", "--resume"]).unwrap().command else {
            panic!("not set");
        };
        assert_eq!(set.change().paused, Some(false));
        assert_eq!(SetArgs::default().change(), Change::default());
    }

    #[test]
    fn verify_has_defaults_for_all_but_the_topic() {
        let Command::Verify(verify) = parse(&["verify", "--payments-topic", "demo.payments"])
            .unwrap()
            .command
        else {
            panic!("not verify");
        };
        assert_eq!(
            verify,
            VerifyArgs {
                payments_topic: "demo.payments".into(),
                failure_ratio: None,
                min_payments: 200,
                timeout: Duration::from_secs(180),
                confidence: 0.999,
            }
        );
        let Command::Verify(verify) = parse(&[
            "--pipeline",
            "shop/demo",
            "verify",
            "--payments-topic",
            "p",
            "--failure-ratio",
            "0",
            "--min-payments",
            "50",
            "--timeout",
            "1m 30s",
            "--confidence",
            "0.99",
        ])
        .unwrap()
        .command
        else {
            panic!("not verify");
        };
        assert_eq!(verify.failure_ratio, Some(0.0));
        assert_eq!(verify.min_payments, 50);
        assert_eq!(verify.timeout, Duration::from_secs(90));
        assert_eq!(verify.confidence, 0.99);
    }

    #[test]
    fn verify_refuses_values_outside_their_range() {
        for args in [
            &["--failure-ratio", "1.5"][..],
            &["--failure-ratio", "-0.1"],
            &["--failure-ratio", "NaN"],
            &["--confidence", "1"],
            &["--confidence", "0"],
            &["--min-payments", "0"],
            &["--timeout", "3"],
        ] {
            let error = parse(&[&["verify", "--payments-topic", "p"][..], args].concat())
                .unwrap_err()
                .to_string();
            assert!(error.contains(args[0]), "{args:?}: {error}");
        }
        assert!(
            parse(&["verify"]).is_err(),
            "the payments topic is required"
        );
    }

    #[test]
    fn audit_needs_both_topics_and_waits_two_minutes_by_default() {
        let Command::Audit(audit) = parse(&[
            "--bootstrap-servers",
            "kafka:9092",
            "audit",
            "--orders-topic",
            "demo.orders",
            "--payments-topic",
            "demo.payments",
        ])
        .unwrap()
        .command
        else {
            panic!("not audit");
        };
        assert_eq!(
            audit,
            AuditArgs {
                orders_topic: "demo.orders".into(),
                payments_topic: "demo.payments".into(),
                timeout: Duration::from_secs(120),
            }
        );
        let Command::Audit(audit) = parse(&[
            "audit",
            "--orders-topic",
            "o",
            "--payments-topic",
            "p",
            "--timeout",
            "10m",
        ])
        .unwrap()
        .command
        else {
            panic!("not audit");
        };
        assert_eq!(audit.timeout, Duration::from_secs(600));
        // Only where the variables are unset: a test must not depend on the caller's
        // environment.
        if std::env::var_os("ORDERS_TOPIC").is_none() {
            assert!(parse(&["audit", "--payments-topic", "p"]).is_err());
        }
        if std::env::var_os("PAYMENTS_TOPIC").is_none() {
            assert!(parse(&["audit", "--orders-topic", "o"]).is_err());
        }
        assert!(
            parse(&[
                "audit",
                "--orders-topic",
                "o",
                "--payments-topic",
                "p",
                "--timeout",
                "2"
            ])
            .is_err()
        );
    }
}
