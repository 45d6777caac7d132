//! `shopctl`: parses the command line, runs the subcommand and prints its result. Errors
//! go to stderr with exit code 1; `verify` and `audit` also exit 1 when the pipeline fails
//! the check.

use std::process::ExitCode;

use clap::Parser;
use shopctl::cli::{Command, Output};
use shopctl::{Cli, format};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    shop_runtime::telemetry::init(shop_runtime::LogFormat::Text)?;
    match cli.command {
        Command::Set(args) => {
            let record = shopctl::set(&cli.kafka, args.change()).await?;
            println!("{}", format::written(&cli.kafka.pipeline, &record));
        }
        Command::Status(args) => {
            let status = shopctl::status(&cli.kafka).await?;
            match args.output {
                Output::Table => print!("{}", format::status_table(&status)),
                Output::Json => println!("{:#}", format::status_json(&status)),
            }
        }
        Command::Verify(args) => {
            let report = shopctl::verify(&cli.kafka, &args).await?;
            println!(
                "{}",
                format::verified(&cli.kafka.pipeline, &args.payments_topic, &report)
            );
            if !report.passed() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Audit(args) => {
            let report = shopctl::audit(&cli.kafka, &args).await?;
            println!(
                "{}",
                format::audited(&args.orders_topic, &args.payments_topic, &report)
            );
            if !report.passed() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
