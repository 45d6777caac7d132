//! The payment-service binary: decides payments. Wiring only; the service is [`payment_service::run`].

use clap::Parser;
use payment_service::Config;
use shop_kafka::KafkaArgs;
use shop_runtime::CommonArgs;

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

/// The port of /healthz, /readyz and /metrics unless `--http-port` says otherwise.
const HTTP_PORT: u16 = 8082;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli {
        common,
        kafka,
        config,
    } = Cli::parse();
    shop_runtime::run(common, HTTP_PORT, kafka, config, payment_service::run).await?;
    Ok(())
}
