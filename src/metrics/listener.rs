//! The metrics port is often open to the whole cluster network, and axum's
//! server neither limits connections nor times out a client that never
//! finishes its request. This listener does both, so that a stuck or hostile
//! client cannot use up the file descriptors the driver needs for its mounts
//! and SMB connections: at most `slots` connections are open at once (further
//! ones wait in the listen backlog), and each lives at most `lifetime`.
//! Every answer closes its connection, so one lifetime covers one request.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// A TCP listener that hands out [`BoundedStream`]s.
pub struct BoundedListener {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    lifetime: Duration,
}

impl BoundedListener {
    pub fn new(listener: TcpListener, slots: usize, lifetime: Duration) -> BoundedListener {
        BoundedListener { listener, slots: Arc::new(Semaphore::new(slots)), lifetime }
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = BoundedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (BoundedStream, SocketAddr) {
        // The semaphore is never closed, so acquiring only waits.
        let slot = match self.slots.clone().acquire_owned().await {
            Ok(slot) => slot,
            Err(closed) => unreachable!("the slot semaphore is never closed: {closed}"),
        };
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    let deadline = Box::pin(tokio::time::sleep(self.lifetime));
                    return (BoundedStream { stream, deadline, _slot: slot }, peer);
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// An accepted connection that holds its slot until dropped, and fails every
/// read and write once its lifetime is over (hyper then closes it).
pub struct BoundedStream {
    stream: TcpStream,
    deadline: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl BoundedStream {
    /// Polling the deadline also registers the task to be woken when it passes,
    /// so an idle connection is closed without any traffic.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "metrics connection lifetime is over")
}

impl AsyncRead for BoundedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(timed_out()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.expired(cx) {
            return Poll::Ready(Err(timed_out()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(timed_out()));
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    /// Shutting down is allowed after the deadline: it only sends a FIN.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn bound(slots: usize, lifetime: Duration) -> (BoundedListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (BoundedListener::new(listener, slots, lifetime), addr)
    }

    #[tokio::test]
    async fn an_idle_connection_fails_at_its_deadline() {
        let (mut listener, addr) = bound(1, Duration::from_millis(200)).await;
        let _client = TcpStream::connect(addr).await.unwrap();
        let (mut accepted, _) = listener.accept().await;
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), accepted.read(&mut byte)).await;
        let error = read.expect("the deadline ends the read").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(accepted.write(b"x").await.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_connection_waits_for_a_free_slot() {
        let (mut listener, addr) = bound(1, Duration::from_secs(60)).await;
        let _first_client = TcpStream::connect(addr).await.unwrap();
        let (first, _) = listener.accept().await;
        let mut second_client = TcpStream::connect(addr).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), listener.accept()).await.is_err(),
            "accepted with every slot taken"
        );
        drop(first);
        let (mut second, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await.unwrap();
        second_client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        second.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
    }
}
