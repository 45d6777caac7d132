//! The command line: `shopctl [KAFKA FLAGS] <set|status> [FLAGS]`.
//!
//! The Kafka flags (`--bootstrap-servers`, `--pipeline`, `--control-topic`,
//! `--heartbeat-topic`, each with its environment variable) are global, so they may come
//! before or after the subcommand: `shopctl set --pipeline demo --rate 50` and
//! `shopctl --pipeline demo set --rate 50` mean the same.

use clap::{Parser, Subcommand, ValueEnum};
use shop_kafka::KafkaArgs;

use crate::change::Change;

/// Tunes a shopstream pipeline without Kubernetes: writes its control record and shows
/// what each replica applied.
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
}
