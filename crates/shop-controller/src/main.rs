//! `shop-controller`: runs the ShopPipeline controller, or prints its CRD.

use clap::{Parser, Subcommand};
use shop_runtime::{CommonArgs, Health, Metrics};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Runs ShopPipeline resources as Kafka pipelines on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    config: shop_controller::run::Config,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller (the default).
    Run,
    /// Print the ShopPipeline CustomResourceDefinition as YAML.
    Crd,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Crd) = cli.command {
        print!("{}", shop_controller::crd::crd_yaml()?);
        return Ok(());
    }
    shop_runtime::telemetry::init(cli.common.log_format)?;
    let shutdown = shop_runtime::signal_token();
    let listener =
        shop_runtime::http::bind(cli.common.http_port_or(8080), CommonArgs::HTTP_PORT_HINT).await?;
    let (health, metrics) = (Health::new(), Metrics::new());
    let controller_metrics = shop_controller::reconcile::ControllerMetrics::register(&metrics);
    let client = kube::Client::try_default().await?;
    let identity = cli.common.instance();
    // The live view (`/`, `/events`) beside the probes and metrics.
    let board = shop_controller::live::Board::new(&identity);
    tokio::spawn(board.clone().publish(shutdown.clone()));
    let router = shop_runtime::http::probes(health.clone(), metrics)
        .merge(shop_controller::live::routes(board.clone()));
    let run = shop_controller::run::run(
        cli.config,
        client,
        &identity,
        health,
        controller_metrics,
        board,
        shutdown,
    );
    let (result, served) = shop_runtime::http::serve_router_during(listener, router, run).await;
    result?;
    Ok(served?)
}
