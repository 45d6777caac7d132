//! What every service binary does around its own work: the context its `run` is handed,
//! and [`run`], the whole `main` of a service. A service crate exposes
//! `run(context, shutdown)`; its `main.rs` parses the flags and calls [`run`] with it.

use std::future::Future;

use tokio_util::sync::CancellationToken;

use crate::config::CommonArgs;
use crate::{Health, Metrics, http, shutdown, telemetry};

/// Everything a service's `run` needs from its caller (`main`, a test, a benchmark).
/// `K` says where the broker is and which pipeline this is (`shop_kafka::KafkaArgs`; this
/// crate knows nothing about Kafka), `C` is the service's own flags.
#[derive(Debug, Clone)]
pub struct ServiceContext<K, C> {
    pub kafka: K,
    pub config: C,
    /// This replica's name: in heartbeat keys, client and transactional ids, logs.
    pub instance: String,
    /// The process's registry; the service registers its metrics here, `/metrics` serves
    /// them.
    pub metrics: Metrics,
    /// Readiness, served on `/readyz`; the service decides it.
    pub health: Health,
}

/// Why [`run`] failed: setting the process up, the service itself, or the HTTP server.
#[derive(Debug, thiserror::Error)]
pub enum RunError<E> {
    #[error(transparent)]
    Setup(#[from] crate::Error),
    #[error(transparent)]
    Service(E),
    #[error(transparent)]
    Http(std::io::Error),
}

/// The `main` of a service: starts logging (`--log-format`), turns SIGTERM/SIGINT into the
/// shutdown token, serves `/healthz`, `/readyz` and `/metrics` on `--http-port` (else
/// `default_port`), and runs `service` with its context until it returns. The HTTP server
/// stops only after the service, so probes are answered while it drains.
pub async fn run<K, C, E, Fut>(
    common: CommonArgs,
    default_port: u16,
    kafka: K,
    config: C,
    service: impl FnOnce(ServiceContext<K, C>, CancellationToken) -> Fut,
) -> Result<(), RunError<E>>
where
    Fut: Future<Output = Result<(), E>>,
{
    telemetry::init(common.log_format)?;
    let shutdown = shutdown::signal_token();
    let port = common.http_port_or(default_port);
    let listener = http::bind(port, CommonArgs::HTTP_PORT_HINT).await?;
    let (health, metrics) = (Health::new(), Metrics::new());
    let context = ServiceContext {
        kafka,
        config,
        instance: common.instance(),
        metrics: metrics.clone(),
        health: health.clone(),
    };
    let running = service(context, shutdown);
    let (result, served) = http::serve_during(listener, health, metrics, running).await;
    result.map_err(RunError::Service)?;
    served.map_err(RunError::Http)
}
