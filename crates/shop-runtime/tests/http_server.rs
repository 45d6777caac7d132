//! The probe and scrape server over real sockets on 127.0.0.1, as the kubelet and
//! Prometheus reach it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use shop_runtime::http::{MAX_HEAD_BYTES, OPENMETRICS_CONTENT_TYPE};
use shop_runtime::{CancellationToken, CommonArgs, Health, Metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A server on an ephemeral port, stopped when the test's token is cancelled.
struct Server {
    addr: SocketAddr,
    health: Health,
    metrics: Metrics,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start() -> Self {
        shop_runtime::telemetry::init_for_tests();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (health, metrics, shutdown) = (Health::new(), Metrics::new(), CancellationToken::new());
        let task = tokio::spawn(shop_runtime::serve(
            listener,
            health.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
        Self {
            addr,
            health,
            metrics,
            shutdown,
            task,
        }
    }

    /// Sends raw bytes and returns everything the server answers before closing.
    async fn raw(&self, request: &[u8]) -> Reply {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut bytes = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
            .await
            .expect("the server closes the connection after its response")
            .unwrap();
        Reply::parse(&bytes)
    }

    async fn request(&self, method: &str, path: &str) -> Reply {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: kube-probe/1.34\r\n\r\n"
        );
        self.raw(request.as_bytes()).await
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn parse(bytes: &[u8]) -> Self {
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .expect("a complete response head");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        Self {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

#[tokio::test]
async fn healthz_answers_ok() {
    let server = Server::start().await;
    let reply = server.request("GET", "/healthz").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "ok\n");
    assert_eq!(reply.header("Connection"), Some("close"));
    assert_eq!(reply.header("Content-Length"), Some("3"));
}

#[tokio::test]
async fn readyz_is_unavailable_with_the_reason_until_set_ready() {
    let server = Server::start().await;
    server.health.set_ready(false, "no partition assignment");

    let reply = server.request("GET", "/readyz").await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.body.contains("no partition assignment"), "{reply:?}");

    server.health.set_ready(true, "partitions assigned");
    let reply = server.request("GET", "/readyz").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "ready\n");
}

#[tokio::test]
async fn metrics_show_a_registered_counter_after_it_is_incremented() {
    let server = Server::start().await;
    let produced = server
        .metrics
        .counter("orders_produced", "Orders produced to Kafka");
    produced.inc_by(7);

    let reply = server.request("GET", "/metrics").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("Content-Type"), Some(OPENMETRICS_CONTENT_TYPE));
    assert!(
        reply
            .body
            .contains("# TYPE shopstream_orders_produced counter\n"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("shopstream_orders_produced_total 7\n"),
        "{}",
        reply.body
    );
    assert!(reply.body.ends_with("# EOF\n"), "{}", reply.body);
    assert_eq!(
        reply.header("Content-Length"),
        Some(reply.body.len().to_string().as_str())
    );
}

#[tokio::test]
async fn head_request_gets_headers_without_body() {
    let server = Server::start().await;
    let reply = server.request("HEAD", "/healthz").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("Content-Length"), Some("3"));
    assert_eq!(reply.body, "");
}

#[tokio::test]
async fn unknown_path_is_not_found() {
    let server = Server::start().await;
    assert_eq!(server.request("GET", "/favicon.ico").await.status, 404);
}

#[tokio::test]
async fn post_to_an_endpoint_is_method_not_allowed() {
    let server = Server::start().await;
    let reply = server
        .raw(b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    assert_eq!(reply.status, 405, "{reply:?}");
    let allow = reply.header("Allow").unwrap().replace(' ', "");
    assert_eq!(allow, "GET,HEAD");
}

#[tokio::test]
async fn oversized_request_head_is_rejected() {
    let server = Server::start().await;
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nCookie: {}\r\n\r\n",
        "c".repeat(MAX_HEAD_BYTES)
    );
    let reply = server.raw(request.as_bytes()).await;
    assert_eq!(reply.status, 431, "{reply:?}");
}

#[tokio::test]
async fn garbage_request_is_a_bad_request() {
    let server = Server::start().await;
    assert_eq!(server.raw(b"hello there\r\n\r\n").await.status, 400);
}

#[tokio::test]
async fn silent_client_does_not_stop_others_being_served() {
    let server = Server::start().await;
    let _silent = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(server.request("GET", "/healthz").await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn client_that_never_finishes_its_request_head_is_disconnected() {
    let server = Server::start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    // With the clock paused, the server's header timeout fires as soon as all tasks idle:
    // the connection is closed without a response (hyper sends none for a timed-out head).
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).await.unwrap();
    assert!(bytes.is_empty(), "{}", String::from_utf8_lossy(&bytes));
    assert!(
        started.elapsed() >= shop_runtime::http::IO_TIMEOUT,
        "closed by the header timeout, after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn cancelling_the_shutdown_token_stops_the_server() {
    let server = Server::start().await;
    assert_eq!(server.request("GET", "/healthz").await.status, 200);
    let _idle = TcpStream::connect(server.addr).await.unwrap();

    server.shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("serve returns promptly after cancellation, even with an idle client");
    stopped.unwrap().unwrap();
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "the port is closed"
    );
}

#[tokio::test]
async fn bind_on_a_taken_port_names_the_port_and_the_flag() {
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();

    let error = shop_runtime::http::bind(port, CommonArgs::HTTP_PORT_HINT)
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains(&format!(":{port}")), "{message}");
    assert!(message.contains("--http-port or HTTP_PORT"), "{message}");
    assert!(message.contains("already in use"), "{message}");
}

#[tokio::test]
async fn bind_on_a_free_port_listens_on_all_interfaces() {
    let listener = shop_runtime::http::bind(0, CommonArgs::HTTP_PORT_HINT)
        .await
        .unwrap();
    assert!(listener.local_addr().unwrap().ip().is_unspecified());
}

#[tokio::test]
async fn serve_during_answers_probes_until_the_service_has_finished() {
    shop_runtime::telemetry::init_for_tests();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let health = Health::new();
    let (output, served) =
        shop_runtime::http::serve_during(listener, health.clone(), Metrics::new(), async move {
            // The "service" is draining: probes are still answered.
            health.set_ready(false, "draining");
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut reply = String::new();
            stream.read_to_string(&mut reply).await.unwrap();
            reply
        })
        .await;
    assert!(output.starts_with("HTTP/1.1 200"), "{output}");
    served.unwrap();
    // And after the service returned, the server is gone.
    assert!(TcpStream::connect(addr).await.is_err());
}
