//! The HTTP endpoint every binary serves: `GET /healthz`, `GET /readyz` and `GET /metrics`
//! ([`probes`]), on axum and hyper's HTTP/1.1 server ([`serve_router`]). A binary can add
//! its own routes to the [`probes`] router (the controller serves its live view beside
//! them).
//!
//! Its clients are the kubelet's probes, Prometheus and, for the controller's page, a
//! browser through `kubectl port-forward`. The server answers one request per connection
//! and closes it, and defends itself as far as a cluster-internal port needs: a request
//! head must arrive within [`IO_TIMEOUT`] and fit in [`MAX_HEAD_BYTES`], and each
//! connection runs in its own task, so a slow or broken client cannot stall the others.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::retry::{BackoffBuilder, ExponentialBuilder};

/// How long a client may take to send its request head; also how long a response still
/// being sent may take to finish once the server stops.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest request head (request line and headers) accepted; probes and scrapes send a
/// few hundred bytes. A larger head is answered 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Content type of `/metrics`, as Prometheus negotiates it for prometheus-client's output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Consecutive accept failures (other than a client gone before it was accepted) are
/// retried with the runtime's pauses, 100 ms doubling, seven times (about 13 s in all);
/// then [`serve`] gives up.
const ACCEPT_RETRIES: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(crate::retry::FIRST)
    .with_max_delay(Duration::from_millis(6_400))
    .with_max_times(7);

/// Whether the process is ready to take work, and if not, why. Shared between the service
/// (which decides) and the HTTP server (which reports on `/readyz`).
///
/// Liveness is not tracked here: `/healthz` answers 200 as long as the process can answer
/// at all. A process that is stuck but alive should say so by becoming not ready.
#[derive(Clone, Debug)]
pub struct Health {
    state: Arc<Mutex<Readiness>>,
}

#[derive(Debug)]
struct Readiness {
    ready: bool,
    reason: String,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Not ready, with the reason `starting`.
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(Readiness {
                ready: false,
                reason: "starting".to_owned(),
            })),
        }
    }

    /// Records readiness. `reason` says why the process is not ready ("broker
    /// unreachable", "no partition assignment", "shutting down"); `/readyz` returns it with
    /// the 503. Changes are logged; repeating the current state is silent, so callers may
    /// report on every loop turn.
    pub fn set_ready(&self, ready: bool, reason: impl Into<String>) {
        let reason = reason.into();
        let mut state = self.lock();
        // A new reason while staying ready is not news; a new reason for not being ready is.
        let unchanged = state.ready == ready && (ready || state.reason == reason);
        state.reason = reason;
        if unchanged {
            return;
        }
        state.ready = ready;
        if ready {
            tracing::info!(ready, "process is ready");
        } else {
            tracing::info!(ready, reason = %state.reason, "process is not ready");
        }
    }

    /// Whether the process is ready, and the reason last given.
    pub fn is_ready(&self) -> (bool, String) {
        let state = self.lock();
        (state.ready, state.reason.clone())
    }

    /// A poisoned lock still holds a consistent pair: nothing that can panic runs while the
    /// fields are being updated.
    fn lock(&self) -> MutexGuard<'_, Readiness> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Binds `0.0.0.0:port` for [`serve`]. On failure the error names the port and says how
/// to choose another: `flag_hint` is the binary's flag and variable, usually
/// [`crate::CommonArgs::HTTP_PORT_HINT`].
pub async fn bind(port: u16, flag_hint: &str) -> Result<TcpListener> {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
        .await
        .map_err(|source| Error::Bind {
            port,
            flag_hint: flag_hint.to_owned(),
            source,
        })
}

/// Runs `service` while serving `/healthz`, `/readyz` and `/metrics` on `listener`, and
/// stops the server only after `service` has finished, so probes and scrapes keep being
/// answered while it drains. Returns the service's output and the server's result.
pub async fn serve_during<T>(
    listener: TcpListener,
    health: Health,
    metrics: Metrics,
    service: impl Future<Output = T>,
) -> (T, std::io::Result<()>) {
    serve_router_during(listener, probes(health, metrics), service).await
}

/// [`serve_during`] with a router of the binary's own: [`probes`] merged with its routes.
pub async fn serve_router_during<T>(
    listener: TcpListener,
    router: Router,
    service: impl Future<Output = T>,
) -> (T, std::io::Result<()>) {
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve_router(listener, router, stop.clone()));
    let output = service.await;
    stop.cancel();
    let served = server
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    (output, served)
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until `shutdown` is cancelled,
/// then stops accepting, lets responses in flight finish (for at most [`IO_TIMEOUT`]),
/// drops idle connections and returns `Ok(())`.
///
/// Pass a token that is cancelled *after* the service has drained (a child of the signal
/// token that `main` cancels at the end, for example) to keep answering probes while
/// draining; pass the signal token itself to stop at once.
///
/// Returns an error only when accepting connections keeps failing for about 13 s (out of
/// file descriptors, say); the caller should treat it as fatal, as the kubelet would.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_router(listener, probes(health, metrics), shutdown).await
}

/// The probe and scrape routes, with a plain-text 404 for every other path. Axum answers
/// `HEAD` for each `GET` route and `405` with `Allow` for other methods.
pub fn probes(health: Health, metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(|| async { text(StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz).with_state(health))
        .route("/metrics", get(metrics_text).with_state(metrics))
        .fallback(|| async {
            text(
                StatusCode::NOT_FOUND,
                "not found; try /healthz, /readyz or /metrics\n",
            )
        })
}

async fn readyz(State(health): State<Health>) -> Response {
    match health.is_ready() {
        (true, _) => text(StatusCode::OK, "ready\n"),
        (false, reason) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn metrics_text(State(metrics): State<Metrics>) -> Response {
    match metrics.try_encode() {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(error = %error, "cannot serve /metrics");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics encoding failed\n",
            )
        }
    }
}

/// A plain-text response that no cache keeps.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut response = (status, body.into()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(TEXT_CONTENT_TYPE),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Serves `router` on `listener` until `shutdown` is cancelled; see [`serve`].
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(addr = %addr, "serving HTTP (/healthz, /readyz, /metrics)");
    let connections = TaskTracker::new();
    let mut pauses = ACCEPT_RETRIES.build();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                pauses = ACCEPT_RETRIES.build();
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(IO_TIMEOUT)
                    .max_buf_size(MAX_HEAD_BYTES)
                    .keep_alive(false)
                    .serve_connection(
                        TokioIo::new(stream),
                        TowerToHyperService::new(router.clone()),
                    );
                let shutdown = shutdown.clone();
                connections.spawn(async move {
                    let mut connection = std::pin::pin!(connection);
                    let served = tokio::select! {
                        served = connection.as_mut() => served,
                        () = shutdown.cancelled() => {
                            connection.as_mut().graceful_shutdown();
                            tokio::time::timeout(IO_TIMEOUT, connection)
                                .await
                                .unwrap_or(Ok(()))
                        }
                    };
                    if let Err(error) = served {
                        tracing::debug!(peer = %peer, error = %error, "HTTP connection failed");
                    }
                });
            }
            Err(error) if is_per_connection(&error) => {
                tracing::debug!(error = %error, "connection failed before it was accepted");
            }
            Err(error) => {
                let Some(backoff) = pauses.next() else {
                    tracing::error!(addr = %addr, error = %error, "HTTP server cannot accept connections; giving up");
                    return Err(error);
                };
                tracing::warn!(addr = %addr, error = %error, retry_in = ?backoff, "HTTP server cannot accept a connection");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    tracing::info!(addr = %addr, "HTTP server stopped");
    Ok(())
}

fn is_per_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_keeps_the_last_reason() {
        let health = Health::new();
        assert_eq!(health.is_ready(), (false, "starting".to_owned()));
        health.set_ready(false, "broker unreachable");
        assert_eq!(health.is_ready(), (false, "broker unreachable".to_owned()));
        health.clone().set_ready(true, "");
        assert!(health.is_ready().0);
    }
}
