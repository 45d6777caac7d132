//! The notification-service binary: prints one line per payment on stdout. Wiring only; the service is [`notification_service::run`].

use clap::Parser;
use notification_service::Config;
use shop_kafka::KafkaArgs;
use shop_runtime::CommonArgs;

/// Prints one line per payment on stdout (logs go to stderr).
#[derive(Parser, Debug)]
#[command(name = "notification-service", version, about)]
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
    let Cli {
        common,
        kafka,
        config,
    } = Cli::parse();
    shop_runtime::run(common, HTTP_PORT, kafka, config, |context, shutdown| {
        notification_service::run(context, std::io::stdout(), shutdown)
    })
    .await?;
    Ok(())
}
