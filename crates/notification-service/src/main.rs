//! `notification-service`: prints one line per payment on stdout. Wiring only; the
//! service is [`notification_service::run`].

use clap::Parser;
use notification_service::{Config, Settings};
use shop_kafka::KafkaArgs;
use shop_runtime::{CommonArgs, Health, Metrics, http};

/// Prints one line per payment on stdout (logs go to stderr).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    config: Config,
}

/// The port of /healthz, /readyz and /metrics unless `--http-port` says otherwise.
const HTTP_PORT: u16 = 8083;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    shop_runtime::telemetry::init(cli.common.log_format)?;
    let shutdown = shop_runtime::signal_token();
    let listener = http::bind(
        cli.common.http_port_or(HTTP_PORT),
        CommonArgs::HTTP_PORT_HINT,
    )
    .await?;
    let (health, metrics) = (Health::new(), Metrics::new());
    let settings = Settings {
        instance: cli.common.instance(),
        format: cli.config.line_format,
        kafka: cli.kafka,
        config: cli.config,
        metrics: metrics.clone(),
        health: health.clone(),
    };
    let service = notification_service::run(settings, std::io::stdout(), shutdown);
    let (result, served) = http::serve_during(listener, health, metrics, service).await;
    result?;
    Ok(served?)
}
