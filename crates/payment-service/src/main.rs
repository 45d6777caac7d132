//! The payment-service binary: parses flags, starts logging, turns signals into a
//! shutdown token, serves `/healthz`, `/readyz` and `/metrics`, and runs the service.

use clap::Parser;
use payment_service::{Config, Settings};
use shop_kafka::KafkaArgs;
use shop_runtime::{CommonArgs, Health, Metrics};

/// Decides the payment of every order, exactly once, in Kafka transactions.
#[derive(Parser, Debug)]
#[command(name = "payment-service", version, about)]
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
    let listener =
        shop_runtime::http::bind(cli.common.http_port_or(8082), CommonArgs::HTTP_PORT_HINT).await?;
    let (health, metrics) = (Health::new(), Metrics::new());
    let settings = Settings {
        kafka: cli.kafka,
        config: cli.config,
        instance: cli.common.instance(),
        metrics: metrics.clone(),
        health: health.clone(),
    };
    let service = payment_service::run(settings, shutdown);
    let (result, served) =
        shop_runtime::http::serve_during(listener, health, metrics, service).await;
    result?;
    Ok(served?)
}
