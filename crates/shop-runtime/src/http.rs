//! The probe and scrape endpoint every binary serves: `GET /healthz`, `GET /readyz` and
//! `GET /metrics`, on a small hand-written HTTP/1.1 responder.
//!
//! Its clients are the kubelet's probes and Prometheus: one short request per connection.
//! So the server answers exactly one request per connection and closes it
//! (`Connection: close`), which keeps it small and obviously correct without an HTTP
//! library. It defends itself only as far as a cluster-internal port needs: a request head
//! must arrive within [`IO_TIMEOUT`] and fit in [`MAX_HEAD_BYTES`], and each connection runs
//! in its own task, so a slow or broken client cannot stall the others.
//!
//! Request parsing and routing are pure functions ([`parse_request_line`], `route`); only
//! `exchange` touches the socket.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// How long a client may take to send its request head, and to take the response.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest request head (request line and headers) accepted; probes and scrapes send a
/// few hundred bytes.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Content type of `/metrics`, as Prometheus negotiates it for prometheus-client's output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// How long to keep reading (and discarding) after the response, so that unread request
/// bytes do not make the kernel reset the connection before the client reads the response.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_MAX_BYTES: usize = 64 * 1024;

/// Accept failures that are not about the listener (the client went away first).
const ACCEPT_BACKOFF_START: Duration = Duration::from_millis(100);
/// Consecutive accept failures are retried with a doubling pause until the pause would
/// exceed this (about 13 s in all); then [`serve`] gives up.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(6_400);

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
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(listener, health, metrics, stop.clone()));
    let output = service.await;
    stop.cancel();
    let served = server
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    (output, served)
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until `shutdown` is cancelled,
/// then stops accepting, drops unfinished connections and returns `Ok(())`.
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
    let addr = listener.local_addr()?;
    tracing::info!(addr = %addr, "serving /healthz, /readyz and /metrics");
    let connections = TaskTracker::new();
    let mut backoff = ACCEPT_BACKOFF_START;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_START;
                let (health, metrics, shutdown) =
                    (health.clone(), metrics.clone(), shutdown.clone());
                connections.spawn(async move {
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = exchange(stream, peer, &health, &metrics) => {}
                    }
                });
            }
            Err(error) if is_per_connection(&error) => {
                tracing::debug!(error = %error, "connection failed before it was accepted");
            }
            Err(error) => {
                if backoff > ACCEPT_BACKOFF_MAX {
                    tracing::error!(addr = %addr, error = %error, "HTTP server cannot accept connections; giving up");
                    return Err(error);
                }
                tracing::warn!(addr = %addr, error = %error, retry_in = ?backoff, "HTTP server cannot accept a connection");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff *= 2;
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

/// One request and its response on one connection.
async fn exchange(mut stream: TcpStream, peer: SocketAddr, health: &Health, metrics: &Metrics) {
    let mut buf = Vec::with_capacity(1024);
    let (response, head_only) =
        match tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream, &mut buf)).await {
            Err(_elapsed) => (
                Response::text(
                    Status::RequestTimeout,
                    "request head not received in time\n",
                ),
                false,
            ),
            Ok(Err(error)) => {
                tracing::debug!(peer = %peer, error = %error, "reading HTTP request failed");
                return;
            }
            Ok(Ok(Head::Closed)) => return,
            Ok(Ok(Head::Incomplete)) => (
                Response::text(Status::BadRequest, "incomplete request head\n"),
                false,
            ),
            Ok(Ok(Head::TooLarge)) => (
                Response::text(
                    Status::HeaderFieldsTooLarge,
                    format!("request head larger than {MAX_HEAD_BYTES} bytes\n"),
                ),
                false,
            ),
            Ok(Ok(Head::Complete(len))) => match parse_request_line(&buf[..len]) {
                Ok(request) => {
                    let response = route(&request, health, metrics);
                    tracing::debug!(
                        peer = %peer,
                        method = request.method,
                        path = request.target,
                        status = response.status.code(),
                        "HTTP request"
                    );
                    (response, request.method == "HEAD")
                }
                Err(rejection) => (rejection.response(), false),
            },
        };
    let sent = tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(&response.to_bytes(head_only)).await?;
        stream.shutdown().await
    })
    .await;
    match sent {
        Ok(Ok(())) => linger(&mut stream).await,
        Ok(Err(error)) => {
            tracing::debug!(peer = %peer, error = %error, "writing HTTP response failed")
        }
        Err(_elapsed) => {
            tracing::debug!(peer = %peer, "client did not take the HTTP response in time")
        }
    }
}

/// Reads what the client still sends until it closes, briefly: closing a socket with
/// unread input makes the kernel send a reset, which can destroy the response in flight.
async fn linger(stream: &mut TcpStream) {
    let mut sink = [0u8; 1024];
    let mut discarded = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while discarded < LINGER_MAX_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
}

/// How reading a request head ended.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// The head is the first this many bytes of the buffer.
    Complete(usize),
    /// More than [`MAX_HEAD_BYTES`] without the end of the head.
    TooLarge,
    /// The client closed the connection in the middle of the head.
    Incomplete,
    /// The client closed the connection without sending anything (a TCP probe).
    Closed,
}

async fn read_head(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> std::io::Result<Head> {
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(if buf.is_empty() {
                Head::Closed
            } else {
                Head::Incomplete
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        match find_head_end(buf) {
            Some(end) if end <= MAX_HEAD_BYTES => return Ok(Head::Complete(end)),
            Some(_) => return Ok(Head::TooLarge),
            None if buf.len() > MAX_HEAD_BYTES => return Ok(Head::TooLarge),
            None => {}
        }
    }
}

/// The length of the head: up to and including the empty line that ends it. Bare `\n` line
/// ends are accepted, as RFC 9112 allows.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).enumerate().find_map(|(i, pair)| match pair {
        b"\n\n" => Some(i + 2),
        b"\n\r" if buf.get(i + 2) == Some(&b'\n') => Some(i + 3),
        _ => None,
    })
}

/// The parts of a request the server acts on.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestLine<'a> {
    /// The method, case-sensitive as HTTP defines it.
    pub method: &'a str,
    /// The path, without query string or, for absolute-form targets, scheme and authority.
    pub target: &'a str,
}

/// Why a request head was refused before routing.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The request line is not `METHOD TARGET HTTP/1.x`.
    Malformed,
    /// An HTTP version other than 1.0 or 1.1 (such as an HTTP/2 preface).
    Version,
}

impl Rejection {
    fn response(&self) -> Response {
        match self {
            Rejection::Malformed => Response::text(Status::BadRequest, "malformed request line\n"),
            Rejection::Version => Response::text(
                Status::VersionNotSupported,
                "only HTTP/1.0 and HTTP/1.1 are served\n",
            ),
        }
    }
}

/// Parses the request line at the start of a request head; headers are not needed.
pub fn parse_request_line(head: &[u8]) -> std::result::Result<RequestLine<'_>, Rejection> {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..line_end]).map_err(|_| Rejection::Malformed)?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::Malformed);
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Rejection::Malformed);
    }
    if !version.starts_with("HTTP/") {
        return Err(Rejection::Malformed);
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(Rejection::Version);
    }
    let path = origin_path(target).ok_or(Rejection::Malformed)?;
    let path = path.split_once('?').map_or(path, |(path, _query)| path);
    Ok(RequestLine {
        method,
        target: path,
    })
}

/// The path of an origin-form (`/metrics`) or absolute-form (`http://host/metrics`) target.
fn origin_path(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return Some(target);
    }
    let rest = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))?;
    Some(rest.find('/').map_or("/", |slash| &rest[slash..]))
}

/// The endpoints served.
#[derive(Clone, Copy, Debug)]
enum Endpoint {
    Health,
    Ready,
    Metrics,
}

/// Decides the response to a parsed request. The only I/O-free work left to `exchange` is
/// writing it.
fn route(request: &RequestLine<'_>, health: &Health, metrics: &Metrics) -> Response {
    let endpoint = match request.target {
        "/healthz" => Endpoint::Health,
        "/readyz" => Endpoint::Ready,
        "/metrics" => Endpoint::Metrics,
        _ => {
            return Response::text(
                Status::NotFound,
                "not found; try /healthz, /readyz or /metrics\n",
            );
        }
    };
    if request.method != "GET" && request.method != "HEAD" {
        return Response::text(Status::MethodNotAllowed, "only GET and HEAD are allowed\n");
    }
    match endpoint {
        Endpoint::Health => Response::text(Status::Ok, "ok\n"),
        Endpoint::Ready => match health.is_ready() {
            (true, _) => Response::text(Status::Ok, "ready\n"),
            (false, reason) => {
                Response::text(Status::ServiceUnavailable, format!("not ready: {reason}\n"))
            }
        },
        Endpoint::Metrics => match metrics.try_encode() {
            Ok(text) => Response {
                status: Status::Ok,
                content_type: OPENMETRICS_CONTENT_TYPE,
                body: text,
            },
            Err(error) => {
                tracing::error!(error = %error, "cannot serve /metrics");
                Response::text(Status::InternalServerError, "metrics encoding failed\n")
            }
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    HeaderFieldsTooLarge,
    InternalServerError,
    ServiceUnavailable,
    VersionNotSupported,
}

impl Status {
    fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::HeaderFieldsTooLarge => 431,
            Status::InternalServerError => 500,
            Status::ServiceUnavailable => 503,
            Status::VersionNotSupported => 505,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            Status::InternalServerError => "Internal Server Error",
            Status::ServiceUnavailable => "Service Unavailable",
            Status::VersionNotSupported => "HTTP Version Not Supported",
        }
    }
}

#[derive(Debug)]
struct Response {
    status: Status,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(status: Status, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: TEXT_CONTENT_TYPE,
            body: body.into(),
        }
    }

    /// The response on the wire. A response to `HEAD` carries the headers of the `GET`
    /// response, including its `Content-Length`, and no body.
    fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let allow = if self.status == Status::MethodNotAllowed {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        };
        let mut bytes = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{allow}Connection: close\r\n\r\n",
            self.status.code(),
            self.status.reason(),
            self.content_type,
            self.body.len(),
        )
        .into_bytes();
        if !head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(head: &str) -> std::result::Result<RequestLine<'_>, Rejection> {
        parse_request_line(head.as_bytes())
    }

    #[test]
    fn request_line_gives_method_and_path_without_query() {
        let parsed = request("GET /metrics?name[]=x HTTP/1.1\r\nHost: pod\r\n\r\n").unwrap();
        assert_eq!(
            parsed,
            RequestLine {
                method: "GET",
                target: "/metrics"
            }
        );
    }

    #[test]
    fn absolute_form_target_is_reduced_to_its_path() {
        assert_eq!(
            request("GET http://10.0.0.7:8081/readyz HTTP/1.1\r\n\r\n")
                .unwrap()
                .target,
            "/readyz"
        );
        assert_eq!(
            request("GET http://pod HTTP/1.0\r\n\r\n").unwrap().target,
            "/"
        );
    }

    #[test]
    fn malformed_request_lines_are_rejected() {
        for head in [
            "GET /healthz\r\n\r\n",
            "GET  /healthz HTTP/1.1\r\n\r\n",
            "\u{1}GET / HTTP/1.1\r\n\r\n",
            "GET healthz HTTP/1.1\r\n\r\n",
            "GET / FTP/1.1\r\n\r\n",
        ] {
            assert_eq!(request(head), Err(Rejection::Malformed), "{head:?}");
        }
    }

    #[test]
    fn http2_preface_is_refused_as_unsupported_version() {
        assert_eq!(
            request("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Err(Rejection::Version)
        );
    }

    #[test]
    fn head_ends_at_the_first_empty_line() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"),
            Some(27)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\nHost: a\n\nbody"), Some(24));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
    }

    #[test]
    fn head_response_has_headers_but_no_body() {
        let response = Response::text(Status::Ok, "ok\n");
        let text = String::from_utf8(response.to_bytes(true)).unwrap();
        assert!(text.contains("Content-Length: 3\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }

    #[test]
    fn method_not_allowed_lists_the_allowed_methods() {
        let response = route(
            &RequestLine {
                method: "DELETE",
                target: "/readyz",
            },
            &Health::new(),
            &Metrics::new(),
        );
        let text = String::from_utf8(response.to_bytes(false)).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(text.contains("Allow: GET, HEAD\r\n"), "{text}");
    }

    #[tokio::test]
    async fn head_larger_than_the_limit_is_too_large() {
        let mut input = format!(
            "GET / HTTP/1.1\r\nX-Fill: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        let mut buf = Vec::new();
        assert_eq!(
            read_head(&mut input.as_bytes(), &mut buf).await.unwrap(),
            Head::TooLarge
        );
        input.truncate(100);
        let mut buf = Vec::new();
        assert_eq!(
            read_head(&mut input.as_bytes(), &mut buf).await.unwrap(),
            Head::Incomplete
        );
    }

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
