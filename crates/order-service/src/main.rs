//! The order-service binary: generates orders. Wiring only; the service is [`order_service::run`].

use clap::Parser;
use order_service::Config;
use shop_kafka::KafkaArgs;
use shop_runtime::CommonArgs;

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

/// The port of /healthz, /readyz and /metrics unless `--http-port` says otherwise.
const HTTP_PORT: u16 = 8081;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli {
        common,
        kafka,
        config,
    } = Cli::parse();
    shop_runtime::run(common, HTTP_PORT, kafka, config, order_service::run).await?;
    Ok(())
}
