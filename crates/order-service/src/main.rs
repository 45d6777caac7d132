//! The order-service binary: parse flags, start logging and the probe server, run.

use clap::Parser;
use order_service::{Config, Settings};
use shop_kafka::KafkaArgs;
use shop_runtime::{CommonArgs, Health, Metrics, http};

/// Generates shop orders at a live-controlled rate and writes them to Kafka.
#[derive(Parser, Debug)]
#[command(name = "order-service", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    config: Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    shop_runtime::telemetry::init(cli.common.log_format)?;
    let shutdown = shop_runtime::signal_token();
    let listener = http::bind(cli.common.http_port_or(8081), CommonArgs::HTTP_PORT_HINT).await?;
    let (health, metrics) = (Health::new(), Metrics::new());
    let settings = Settings {
        kafka: cli.kafka,
        config: cli.config,
        instance: cli.common.instance(),
        metrics: metrics.clone(),
        health: health.clone(),
    };
    let service = order_service::run(settings, shutdown);
    let (result, served) = http::serve_during(listener, health, metrics, service).await;
    result?;
    Ok(served?)
}
