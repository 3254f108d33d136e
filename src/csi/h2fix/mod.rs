//! Accepting any HTTP/2 `:authority` on the CSI unix socket.
//!
//! Used by every gRPC server of ours on a unix socket: the CSI endpoint
//! (`csi::server`) and the plugin registration socket (`registrar`), both
//! called by kubelets that send the path. Serve through [`server_builder`]
//! and [`incoming`].
//!
//! Many gRPC clients of a unix socket send the socket's path as the
//! `:authority` pseudo-header: the kubelet up to 1.25, Python `grpcio` ≥ 1.57
//! on a default channel, grpc-java, `csc`. grpc-go servers ignore it; h2
//! (under hyper and tonic) parses it as a URI authority, and a path is not
//! one, so every such request gets `RST_STREAM PROTOCOL_ERROR` before tonic
//! sees it. [`AuthorityFix`] sits between the accepted stream and hyper and
//! rewrites the client→server bytes: every frame passes unchanged except
//! header blocks, whose `:authority` becomes `localhost` when it is not a
//! valid authority (a valid one is kept). Server→client bytes are untouched.
//!
//! # Why re-encoding keeps both HPACK contexts right
//!
//! HPACK state is per connection and per direction (RFC 7541 §2.2, RFC 7540
//! §4.3): the client's encoder and the server's decoder each keep a dynamic
//! table, changed only by the header blocks, in order. Changing one string
//! inside a block would break that (a new length, or an entry the client
//! inserted that the server would then hold differently), so the rewriter
//! ends the client's context and starts its own toward the server:
//!
//! - Its decoder ([`hpack::Decoder`]) decodes every block in order, applying
//!   the client's insertions (§6.2.1), evictions (§4.4) and size updates
//!   (§6.3), so it resolves references to entries earlier blocks added.
//! - Its encoder ([`hpack::encode`]) writes each field as a literal with a
//!   literal name, "without indexing" (§6.2.2) or, where the client said so,
//!   "never indexed" (§6.2.3, which an intermediary must preserve). Neither
//!   adds to the dynamic table, so the server's table stays empty for the
//!   connection's lifetime, whatever the client indexed.
//! - The client's size updates are not forwarded. They bound the client's
//!   table, which lives only in our decoder. The server's table, empty, needs
//!   none: §4.2 requires an update only from an encoder whose decoder lowered
//!   SETTINGS_HEADER_TABLE_SIZE, and this server never sends that setting
//!   (h2 keeps the initial 4096, [`hpack::MAX_TABLE_SIZE`]), so no update
//!   is ever owed. Updates above 4096, or after the first field of a block
//!   (§4.2), are refused as h2 would refuse them.
//!
//! A re-encoded block is larger than the original when the client used
//! indexes or Huffman; it is cut into HEADERS + CONTINUATION frames of at
//! most [`frames::MAX_FRAME_SIZE`] (16 384, which `server.rs` sets as the
//! server's SETTINGS_MAX_FRAME_SIZE, hyper's default too). Padding is
//! dropped; priority fields and END_STREAM are kept.
//!
//! # Bounds and errors
//!
//! At most one frame payload (≤ 16 384 bytes, the maximum the server
//! advertised) and one header block (≤ [`frames::MAX_HEADER_BLOCK`], encoded
//! and decoded) are buffered; other frames stream through. A malformed
//! stream (bad preface, oversized frame, CONTINUATION out of sequence, bad
//! padding, HPACK error) is a connection error in RFC 7540, and this layer
//! closes the connection: the read fails and hyper drops it.

mod frames;
mod hpack;

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;
use tonic::transport::Server;

/// A tonic server builder whose SETTINGS_MAX_FRAME_SIZE is the one the
/// rewriter bounds client frames by (advertised explicitly, so the two can't
/// drift apart if hyper's default changes).
pub fn server_builder() -> Server {
    Server::builder().max_frame_size(Some(frames::MAX_FRAME_SIZE as u32))
}

/// The connections accepted on `listener`, each behind [`AuthorityFix`].
pub fn incoming(listener: UnixListener) -> impl Stream<Item = io::Result<AuthorityFix<UnixStream>>> {
    UnixListenerStream::new(listener).map(|accepted| accepted.map(AuthorityFix::new))
}

/// How much is read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A server-side connection whose client→server HTTP/2 stream is rewritten
/// so that h2 accepts any `:authority` (see the module doc).
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: frames::Rewriter,
    raw: Box<[u8]>,
    /// Rewritten bytes not yet read by hyper, from `pos`.
    out: Vec<u8>,
    pos: usize,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            rewriter: frames::Rewriter::default(),
            raw: vec![0; READ_CHUNK].into_boxed_slice(),
            out: Vec::new(),
            pos: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pos < this.out.len() {
                let take = buf.remaining().min(this.out.len() - this.pos);
                buf.put_slice(&this.out[this.pos..this.pos + take]);
                this.pos += take;
                return Poll::Ready(Ok(()));
            }
            // Everything handed over: read more. One chunk's output at a time,
            // so `out` stays bounded by a chunk plus one re-encoded header block.
            this.out.clear();
            this.pos = 0;
            let mut raw = ReadBuf::new(&mut this.raw);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut raw))?;
            if raw.filled().is_empty() {
                return Poll::Ready(Ok(())); // end of stream
            }
            if let Err(error) = this.rewriter.feed(raw.filled(), &mut this.out) {
                tracing::warn!(%error, "closing a CSI connection: malformed HTTP/2 from the client");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, error)));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn rewrites_reads_and_passes_writes() {
        let (client, server) = tokio::io::duplex(64);
        let mut fixed = AuthorityFix::new(server);
        let mut client = client;
        // HEADERS with ":authority: /x.sock" (static name index 1, literal value).
        let block = [0x82, 0x01, 0x07, b'/', b'x', b'.', b's', b'o', b'c', b'k'];
        let mut input = frames::PREFACE.to_vec();
        input.extend_from_slice(&[0, 0, block.len() as u8, 0x1, 0x5, 0, 0, 0, 1]);
        input.extend_from_slice(&block);
        let writer = tokio::spawn(async move {
            client.write_all(&input).await.unwrap();
            let mut answer = [0; 5];
            client.read_exact(&mut answer).await.unwrap();
            answer
        });
        let mut seen = vec![0; frames::PREFACE.len() + 9];
        fixed.read_exact(&mut seen).await.unwrap();
        let len = usize::from(seen[frames::PREFACE.len() + 2]);
        let mut block = vec![0; len];
        fixed.read_exact(&mut block).await.unwrap();
        let expected =
            [&[0x00, 0x07][..], b":method", &[0x03], b"GET", &[0x00, 0x0a], b":authority", &[0x09], b"localhost"]
                .concat();
        assert_eq!(block, expected);
        fixed.write_all(b"hello").await.unwrap();
        assert_eq!(&writer.await.unwrap(), b"hello");
    }

    #[tokio::test]
    async fn malformed_stream_fails_the_read() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut fixed = AuthorityFix::new(server);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let error = fixed.read(&mut [0; 64]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }
}
