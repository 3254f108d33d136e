//! The `/metrics` and `/healthz` endpoint: a deliberately small HTTP/1.1
//! server on a tokio listener. Scrapers and kubelet probes send one GET and
//! read one answer, so each connection serves one request and is closed;
//! request heads are size- and time-bounded so a stuck or hostile client
//! cannot hold resources.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::{Metrics, CONTENT_TYPE};

/// Largest request head accepted; a GET from Prometheus is a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head, and to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; further ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 32;

/// Where to serve metrics: `:29744` (every IPv4 interface), `127.0.0.1:9808`,
/// `[::]:9808`, `localhost:9808`.
///
/// ```
/// use smb3_csi::metrics::MetricsAddress;
/// assert_eq!(MetricsAddress::parse(":29744").unwrap().socket_addr().to_string(), "0.0.0.0:29744");
/// assert_eq!(MetricsAddress::parse("[::1]:9808").unwrap().socket_addr().to_string(), "[::1]:9808");
/// assert!(MetricsAddress::parse("9808").is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddress(SocketAddr);

/// Why a `--metrics-address` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metrics address {address:?}: {why}; expected [HOST]:PORT, e.g. :29744 or 127.0.0.1:9808")]
pub struct MetricsAddressError {
    address: String,
    why: &'static str,
}

impl MetricsAddress {
    pub fn parse(address: &str) -> Result<MetricsAddress, MetricsAddressError> {
        let error = |why| MetricsAddressError { address: address.to_string(), why };
        let trimmed = address.trim();
        let (host, port) = trimmed.rsplit_once(':').ok_or_else(|| error("no port"))?;
        let port: u16 = port.parse().map_err(|_| error("the port is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(error("port 0 would pick a random port nobody can scrape"));
        }
        let ip = match host {
            "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            _ => {
                let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
                match literal {
                    Some(v6) => v6.parse().map_err(|_| error("not an IPv6 address inside the brackets"))?,
                    None if host.contains(':') => return Err(error("an IPv6 address must be in brackets")),
                    None => host.parse().map_err(|_| error("the host must be an IP address or localhost"))?,
                }
            }
        };
        Ok(MetricsAddress(SocketAddr::new(ip, port)))
    }

    pub fn socket_addr(&self) -> SocketAddr {
        self.0
    }
}

impl FromStr for MetricsAddress {
    type Err = MetricsAddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MetricsAddress::parse(s)
    }
}

impl fmt::Display for MetricsAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A bound metrics listener; [`run`](Self::run) serves it.
pub struct MetricsServer {
    listener: TcpListener,
    metrics: &'static Metrics,
    healthy: Arc<AtomicBool>,
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
        Ok(MetricsServer { listener, metrics, healthy })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes; connections being answered then
    /// finish on their own.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => return,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let accepted = tokio::select! {
                _ = &mut shutdown => return,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _peer)) => {
                    let (metrics, healthy) = (self.metrics, self.healthy.clone());
                    tokio::spawn(async move {
                        answer(stream, metrics, &healthy).await;
                        drop(permit);
                    });
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// One answer to one HTTP request.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    /// HEAD: headers as for GET, no body.
    head_only: bool,
}

impl Reply {
    fn plain(status: u16, reason: &'static str, body: &str) -> Reply {
        Reply { status, reason, content_type: "text/plain; charset=utf-8", body: body.to_string(), head_only: false }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics, healthy: &AtomicBool) {
    let reply = match tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(head)) => route(&head, metrics, healthy),
        Ok(Err(HeadError::TooLarge)) => {
            Reply::plain(431, "Request Header Fields Too Large", "request head too large\n")
        }
        Ok(Err(HeadError::Closed)) | Err(_) => return,
    };
    let write = async {
        stream.write_all(&reply.encode()).await?;
        stream.shutdown().await
    };
    if let Ok(Err(e)) = tokio::time::timeout(IO_TIMEOUT, write).await {
        tracing::debug!(error = %e, "metrics endpoint: client went away");
    }
}

enum HeadError {
    TooLarge,
    Closed,
}

/// Reads up to the blank line that ends the request head.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

fn route(head: &[u8], metrics: &Metrics, healthy: &AtomicBool) -> Reply {
    let bad = || Reply::plain(400, "Bad Request", "malformed HTTP request\n");
    let Ok(head) = std::str::from_utf8(head) else { return bad() };
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad();
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return bad();
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Reply::plain(405, "Method Not Allowed", "only GET and HEAD are served\n"),
    };
    let path = target.split_once('?').map_or(target, |(path, _query)| path);
    let mut reply = match path {
        "/metrics" => {
            Reply { status: 200, reason: "OK", content_type: CONTENT_TYPE, body: metrics.render(), head_only: false }
        }
        "/healthz" if healthy.load(Ordering::Relaxed) => Reply::plain(200, "OK", "ok\n"),
        "/healthz" => Reply::plain(503, "Service Unavailable", "not ready\n"),
        _ => Reply::plain(404, "Not Found", "not found: try /metrics or /healthz\n"),
    };
    reply.head_only = head_only;
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let ok = |s: &str| MetricsAddress::parse(s).unwrap().to_string();
        assert_eq!(ok(":29744"), "0.0.0.0:29744");
        assert_eq!(ok("127.0.0.1:9808"), "127.0.0.1:9808");
        assert_eq!(ok("localhost:9808"), "127.0.0.1:9808");
        assert_eq!(ok("[::]:1"), "[::]:1");
        assert_eq!(ok(" 10.0.0.1:80 "), "10.0.0.1:80");
        for bad in ["", "9808", ":", ":0", ":65536", ":x", "::1:80", "[::1:80", "example.com:80", "1.2.3:80"] {
            let err = MetricsAddress::parse(bad).unwrap_err().to_string();
            assert!(err.contains("expected [HOST]:PORT"), "{bad:?}: {err}");
        }
    }

    fn get(request: &str) -> Reply {
        let metrics = Metrics::new();
        metrics.set_mounted_volumes(3);
        route(request.as_bytes(), &metrics, &AtomicBool::new(true))
    }

    #[test]
    fn routes() {
        let metrics = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!((metrics.status, metrics.content_type), (200, CONTENT_TYPE));
        assert!(metrics.body.contains("smb3_csi_mounted_volumes 3"));
        assert_eq!(get("GET /metrics?name[]=x HTTP/1.0\r\n\r\n").status, 200);
        assert_eq!(get("GET /healthz HTTP/1.1\r\n\r\n").body, "ok\n");
        assert_eq!(get("GET /metricsx HTTP/1.1\r\n\r\n").status, 404);
        assert_eq!(get("GET / HTTP/1.1\r\n\r\n").status, 404);
        assert_eq!(get("GET //metrics HTTP/1.1\r\n\r\n").status, 404);
        let post = get("POST /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(post.status, 405);
        assert!(String::from_utf8(post.encode()).unwrap().contains("Allow: GET, HEAD\r\n"));
        for bad in
            ["GET /metrics\r\n\r\n", "GET  /metrics HTTP/1.1\r\n\r\n", "GET metrics HTTP/1.1\r\n\r\n", "\r\n\r\n"]
        {
            assert_eq!(get(bad).status, 400, "{bad:?}");
        }
        assert_eq!(get("GET /metrics SPDY/3\r\n\r\n").status, 400);
        let unhealthy = route(b"GET /healthz HTTP/1.1\r\n\r\n", &Metrics::new(), &AtomicBool::new(false));
        assert_eq!(unhealthy.status, 503);
    }

    #[test]
    fn head_has_length_but_no_body() {
        let reply = get("HEAD /healthz HTTP/1.1\r\n\r\n");
        let bytes = String::from_utf8(reply.encode()).unwrap();
        assert!(bytes.starts_with("HTTP/1.1 200 OK\r\n"), "{bytes}");
        assert!(bytes.contains("Content-Length: 3\r\n"), "{bytes}");
        assert!(bytes.ends_with("\r\n\r\n"), "{bytes}");
    }

    #[tokio::test]
    async fn serves_over_tcp_and_bounds_the_head() {
        let metrics: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = MetricsServer { listener, metrics, healthy: Arc::new(AtomicBool::new(true)) };
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));

        let exchange = |request: Vec<u8>| async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(&request).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer
        };
        let answer = exchange(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("Content-Type: text/plain; version=0.0.4"), "{answer}");
        assert!(answer.contains("# TYPE smb3_csi_rpc_requests_total counter"), "{answer}");
        // Exactly one byte over the limit: the server reads it all before
        // answering, so closing leaves nothing unread (no reset races the reply).
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD + 1, b'a');
        let answer = exchange(huge).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

        stop.send(()).unwrap();
        task.await.unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed after shutdown");
    }
}
