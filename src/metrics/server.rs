//! The `/metrics` and `/healthz` endpoint, served by axum on a tokio
//! listener. Scrapers and kubelet probes send one GET and read one answer, so
//! every answer closes its connection, and the [`listener`](super::listener)
//! bounds how many connections are open and for how long.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use super::listener::BoundedListener;
use super::{Metrics, MetricsAddress, CONTENT_TYPE};

/// Connections served at once; further ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 32;
/// How long one connection (one request and its answer) may take, above
/// Prometheus' default 10 s scrape timeout.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(20);

/// What the handlers read.
#[derive(Clone)]
struct Endpoint {
    metrics: &'static Metrics,
    healthy: Arc<AtomicBool>,
}

/// A bound metrics listener; [`run`](Self::run) serves it.
pub struct MetricsServer {
    listener: TcpListener,
    endpoint: Endpoint,
}

impl MetricsServer {
    /// Binds now, so that a taken port fails at startup rather than later.
    /// `/healthz` answers 200 while `healthy` is true, 503 otherwise.
    pub async fn bind(
        address: MetricsAddress,
        metrics: &'static Metrics,
        healthy: Arc<AtomicBool>,
    ) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(address.socket_addr()).await?;
        Ok(MetricsServer { listener, endpoint: Endpoint { metrics, healthy } })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then stops accepting and returns
    /// once the answers under way are written (each within its connection's
    /// lifetime).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let listener = BoundedListener::new(self.listener, MAX_CONNECTIONS, CONNECTION_LIFETIME);
        let served = axum::serve(listener, router(self.endpoint)).with_graceful_shutdown(shutdown).await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    }
}

fn router(endpoint: Endpoint) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(axum::middleware::map_response(close_connection))
        .with_state(endpoint)
}

/// Rendering reads `/proc/self` for the process families: procfs answers from
/// memory, so this does not block the runtime in any way that matters.
async fn metrics(State(endpoint): State<Endpoint>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], endpoint.metrics.render()).into_response()
}

async fn healthz(State(endpoint): State<Endpoint>) -> (StatusCode, &'static str) {
    if endpoint.healthy.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found: try /metrics or /healthz\n")
}

/// One request per connection, as scrapers and probes use it: nothing stays
/// open between scrapes, and the listener's lifetime bound covers a request.
async fn close_connection(mut response: Response) -> Response {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A server on 127.0.0.1:0 (which `--metrics-address` refuses) and what stops it.
    async fn start(
        healthy: Arc<AtomicBool>,
    ) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let metrics: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        metrics.set_mounted_volumes(3);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = MetricsServer { listener, endpoint: Endpoint { metrics, healthy } };
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        (addr, stop, task)
    }

    /// One raw exchange; the server closes the connection after its answer,
    /// so reading to the end returns. Header names lowercased for matching.
    async fn exchange(addr: SocketAddr, request: &str) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
            .await
            .expect("the server closes the connection after answering")
            .unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of head: {answer:?}"));
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{head}"));
        (status, head.to_ascii_lowercase(), body.to_string())
    }

    #[tokio::test]
    async fn routes_over_tcp() {
        let healthy = Arc::new(AtomicBool::new(true));
        let (addr, stop, task) = start(healthy.clone()).await;

        let (status, head, body) = exchange(addr, "GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!(status, 200, "{head}");
        assert!(head.contains(&format!("content-type: {CONTENT_TYPE}")), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        assert!(body.contains("# TYPE smb3_csi_rpc_requests_total counter"), "{body}");
        assert!(body.lines().any(|l| l == "smb3_csi_mounted_volumes 3"), "{body}");
        assert_eq!(exchange(addr, "GET /metrics?name[]=x HTTP/1.0\r\n\r\n").await.0, 200);

        let (status, head, body) = exchange(addr, "HEAD /metrics HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!((status, body.as_str()), (200, ""), "{head}");
        assert!(!head.contains("content-length: 0\r\n"), "HEAD announces the GET length: {head}");

        let (status, _, body) = exchange(addr, "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        healthy.store(false, Ordering::Relaxed);
        let (status, _, body) = exchange(addr, "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!((status, body.as_str()), (503, "not ready\n"));

        for path in ["/", "/metricsx", "//metrics", "/metrics/", "/healthz/x"] {
            let (status, head, _) = exchange(addr, &format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n")).await;
            assert_eq!(status, 404, "{path}");
            assert!(head.contains("connection: close"), "{head}");
        }
        let (status, head, _) = exchange(addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(status, 405, "{head}");
        assert!(head.contains("allow: get,head"), "{head}");
        assert_eq!(exchange(addr, "GARBAGE\r\n\r\n").await.0, 400);

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task).await.expect("shutdown completes").unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed after shutdown");
    }
}
