//! A TCP proxy that can flip one bit in a server response, to prove that the
//! client notices tampering (signing and encryption, MS-SMB2 3.2.5.1.3).
//!
//! It understands only the 4-byte transport framing in front of every SMB2
//! message: direct TCP (MS-SMB2 2.1: a zero byte and a 24-bit big-endian
//! length) and NetBIOS session service (RFC 1002 4.3.1: type, flags with a
//! length-extension bit, 16-bit length), which share one layout. Every frame
//! is streamed through a fixed 64 KiB buffer, so a frame's length field never
//! drives an allocation; the 24-bit length caps a frame below 16 MiB anyway.
//!
//! Plain threads and blocking sockets: it works the same from synchronous
//! tests and from inside a tokio runtime, and stops when dropped.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// NetBIOS "session message" frame type; direct TCP frames always carry it.
const SESSION_MESSAGE: u8 = 0x00;
/// Chunk size for streaming a frame from server to client.
const CHUNK: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// The 4-byte header in front of each frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// 0x00 for a session message (every SMB2 message); other values are
    /// NetBIOS control frames such as keep-alive (0x85).
    pub frame_type: u8,
    /// Payload length in bytes, excluding the 4-byte header.
    pub payload_len: usize,
}

impl FrameHeader {
    /// Reads the 24-bit length after the type byte: for NetBIOS the top 7
    /// bits of it are always zero, so one rule covers both framings.
    pub fn parse(bytes: [u8; 4]) -> Self {
        FrameHeader {
            frame_type: bytes[0],
            payload_len: (usize::from(bytes[1]) << 16) | (usize::from(bytes[2]) << 8) | usize::from(bytes[3]),
        }
    }
}

/// Rewrites one whole server-to-client frame payload (connection id, payload) into the
/// payloads to send instead: none drops it, two repeats it, a changed one tampers with it.
pub type Rewriter = Box<dyn FnMut(u64, Vec<u8>) -> Vec<Vec<u8>> + Send>;

/// One step of what a [`PacedRewriter`] sends in place of a frame.
#[derive(Clone, Debug)]
pub enum Emit {
    /// A frame payload (the 4-byte length is added).
    Frame(Vec<u8>),
    /// `frame` sent `times` times, one every `every`, from a thread of its
    /// own: the connection's other frames keep flowing meanwhile, as from a
    /// server that keeps answering one request STATUS_PENDING while it
    /// serves the rest.
    Stream { frame: Vec<u8>, every: Duration, times: usize },
}

/// As [`Rewriter`], but able to pace what it sends.
pub type PacedRewriter = Box<dyn FnMut(u64, Vec<u8>) -> Vec<Emit> + Send>;

/// Environment variable naming a directory the proxy writes every server-to-client frame
/// payload into (one file per frame): seed corpora for the fuzz targets come from it.
pub const CAPTURE_DIR_ENV: &str = "SMB3_TESTKIT_CAPTURE_DIR";

/// What the proxy threads share.
#[derive(Default)]
struct ProxyState {
    /// When set, frames are read whole and passed through it.
    rewriter: Mutex<Option<PacedRewriter>>,
    /// Where frames are captured (from [`CAPTURE_DIR_ENV`] at start).
    capture_dir: Option<std::path::PathBuf>,
    captured: AtomicUsize,
    /// Shared with the threads of [`Emit::Stream`].
    stopping: Arc<AtomicBool>,
    /// Payload offset to corrupt in the next long-enough response.
    armed_at: Mutex<Option<usize>>,
    corrupted: AtomicUsize,
    accepted: AtomicUsize,
    next_connection_id: AtomicU64,
    /// Both sockets of each live connection, so drop can shut them down.
    connections: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    /// Connections whose server-to-client frames are swallowed (a network
    /// that silently loses the answers: the server did the work).
    silenced: Mutex<std::collections::HashSet<u64>>,
}

impl ProxyState {
    /// Takes the armed offset if this frame is a session message whose
    /// payload reaches past it.
    fn take_arming_for(&self, frame: FrameHeader) -> Option<usize> {
        if frame.frame_type != SESSION_MESSAGE {
            return None;
        }
        let mut armed = lock(&self.armed_at);
        match *armed {
            Some(at) if at < frame.payload_len => armed.take(),
            _ => None,
        }
    }
}

/// Locks a mutex, ignoring poisoning: a panicking proxy thread leaves the
/// state as consistent as it was.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A proxy on 127.0.0.1 (a free port) forwarding every connection to one
/// upstream address, able to corrupt one server-to-client frame on demand.
pub struct CorruptingProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    state: Arc<ProxyState>,
    acceptor: Option<JoinHandle<()>>,
}

impl CorruptingProxy {
    /// Starts listening; each accepted connection opens its own connection
    /// to `upstream` (a failed upstream connect closes the client's).
    pub fn start(upstream: SocketAddr) -> io::Result<CorruptingProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        // Non-blocking accept with polling, so drop can stop the thread.
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let capture_dir = std::env::var_os(CAPTURE_DIR_ENV).map(std::path::PathBuf::from);
        let state = Arc::new(ProxyState { capture_dir, ..ProxyState::default() });
        let acceptor_state = Arc::clone(&state);
        let acceptor = thread::Builder::new()
            .name(format!("proxy-accept-{}", addr.port()))
            .spawn(move || accept_loop(listener, upstream, acceptor_state))?;
        Ok(CorruptingProxy { addr, upstream, state, acceptor: Some(acceptor) })
    }

    /// Passes every later server-to-client frame through `rewrite` (see [`Rewriter`]).
    pub fn rewrite_responses(&self, mut rewrite: Rewriter) {
        self.rewrite_responses_paced(Box::new(move |id, payload| {
            rewrite(id, payload).into_iter().map(Emit::Frame).collect()
        }));
    }

    /// Passes every later server-to-client frame through `rewrite` (see [`PacedRewriter`]).
    pub fn rewrite_responses_paced(&self, rewrite: PacedRewriter) {
        *lock(&self.state.rewriter) = Some(rewrite);
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Arms the proxy: the next whole server-to-client session frame whose
    /// payload is longer than `at` gets the byte at payload offset `at`
    /// XORed with 0x01. One shot; arming again replaces a pending offset.
    pub fn corrupt_next_response(&self, at: usize) {
        *lock(&self.state.armed_at) = Some(at);
    }

    /// Cancels a pending corruption; true if one was pending.
    pub fn disarm(&self) -> bool {
        lock(&self.state.armed_at).take().is_some()
    }

    /// True while a corruption is pending.
    pub fn is_armed(&self) -> bool {
        lock(&self.state.armed_at).is_some()
    }

    /// How many bytes the proxy has flipped so far.
    pub fn corrupted_count(&self) -> usize {
        self.state.corrupted.load(Ordering::SeqCst)
    }

    /// How many client connections it has accepted so far.
    pub fn connection_count(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Cuts every live connection now (both sockets shut down, as a reset
    /// or a crashed middlebox would), while new connections are still
    /// accepted. Returns how many were cut.
    pub fn cut_all(&self) -> usize {
        let connections = lock(&self.state.connections);
        for (client, server) in connections.values() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
        connections.len()
    }

    /// From now on, swallows every response on the connections that are
    /// open now (requests still reach the server; new connections are
    /// unaffected): the client sees a silent network, neither data nor a
    /// reset. Returns how many connections were silenced.
    pub fn silence_responses(&self) -> usize {
        let ids: Vec<u64> = lock(&self.state.connections).keys().copied().collect();
        lock(&self.state.silenced).extend(ids.iter().copied());
        ids.len()
    }

    /// How many connections are open through the proxy right now.
    pub fn live_connections(&self) -> usize {
        lock(&self.state.connections).len()
    }
}

impl Drop for CorruptingProxy {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        for (client, server) in lock(&self.state.connections).values() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr, state: Arc<ProxyState>) {
    while !state.stopping.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                state.accepted.fetch_add(1, Ordering::SeqCst);
                if let Err(e) = spawn_connection(client, upstream, &state) {
                    tracing::debug!("proxy connection to {upstream} failed: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!("proxy accept failed: {e}");
                thread::sleep(ACCEPT_POLL);
            }
        }
    }
}

fn spawn_connection(client: TcpStream, upstream: SocketAddr, state: &Arc<ProxyState>) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect_timeout(&upstream, CONNECT_TIMEOUT)?;
    // SMB is request/response with small messages: do not let Nagle delay them.
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let id = state.next_connection_id.fetch_add(1, Ordering::SeqCst);
    lock(&state.connections).insert(id, (client.try_clone()?, server.try_clone()?));
    if state.stopping.load(Ordering::SeqCst) {
        // Drop ran between accept and insert: it did not see this connection.
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
    }
    // The last of the two directions to finish forgets the connection.
    let directions_left = Arc::new(AtomicUsize::new(2));

    let (mut c_read, mut s_write) = (client.try_clone()?, server.try_clone()?);
    let (st, left) = (Arc::clone(state), Arc::clone(&directions_left));
    thread::Builder::new().name(format!("proxy-c2s-{id}")).spawn(move || {
        let _ = io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
        finish_direction(&st, id, &left);
    })?;

    let (mut s_read, mut c_write) = (server, client);
    let (st, left) = (Arc::clone(state), directions_left);
    thread::Builder::new().name(format!("proxy-s2c-{id}")).spawn(move || {
        if let Err(e) = forward_responses(&mut s_read, &mut c_write, &st, id) {
            tracing::debug!("proxy connection {id}: {e}");
            // Do not leave the client waiting for the rest of a frame.
            let _ = c_write.shutdown(Shutdown::Both);
        }
        let _ = c_write.shutdown(Shutdown::Write);
        finish_direction(&st, id, &left);
    })?;
    Ok(())
}

/// A payload with its 4-byte length in front, as one buffer (written whole under the connection's lock).
fn framed(payload: &[u8]) -> io::Result<Vec<u8>> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l < 1 << 24)
        .ok_or_else(|| io::Error::other("rewritten frame too long"))?;
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Sleeps `pause` in short steps, returning early once the proxy stops.
fn pause_unless_stopping(stopping: &AtomicBool, pause: Duration) {
    let until = std::time::Instant::now() + pause;
    while !stopping.load(Ordering::SeqCst) {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(ACCEPT_POLL));
    }
}

fn finish_direction(state: &ProxyState, id: u64, directions_left: &AtomicUsize) {
    if directions_left.fetch_sub(1, Ordering::SeqCst) == 1 {
        lock(&state.connections).remove(&id);
        lock(&state.silenced).remove(&id);
    }
}

/// Copies frames from server to client, corrupting one if armed. Ok(()) on
/// EOF at a frame boundary; an EOF inside a frame is an error.
fn forward_responses(from: &mut impl Read, to: &mut impl Write, state: &ProxyState, id: u64) -> io::Result<()> {
    let mut header = [0u8; 4];
    // Rewritten frames and the frames of an `Emit::Stream` go out whole, one at a time.
    let writing = Arc::new(Mutex::new(()));
    let mut chunk = vec![0u8; CHUNK];
    loop {
        if !read_header_or_eof(from, &mut header)? {
            return Ok(());
        }
        let frame = FrameHeader::parse(header);
        if lock(&state.silenced).contains(&id) {
            let mut left = frame.payload_len;
            while left > 0 {
                let n = CHUNK.min(left);
                from.read_exact(&mut chunk[..n])?;
                left -= n;
            }
            continue;
        }
        if frame.frame_type == SESSION_MESSAGE && (state.capture_dir.is_some() || lock(&state.rewriter).is_some()) {
            // Whole frames: the 24-bit length bounds this below 16 MiB.
            let mut payload = vec![0u8; frame.payload_len];
            from.read_exact(&mut payload)?;
            capture(state, id, &payload);
            if let Some(at) = state.take_arming_for(frame) {
                payload[at] ^= 0x01;
                state.corrupted.fetch_add(1, Ordering::SeqCst);
            }
            let out = match lock(&state.rewriter).as_mut() {
                Some(rewrite) => rewrite(id, payload),
                None => vec![Emit::Frame(payload)],
            };
            for emit in out {
                match emit {
                    Emit::Frame(p) => {
                        let framed = framed(&p)?;
                        let _whole_frames = lock(&writing);
                        to.write_all(&framed)?;
                    }
                    Emit::Stream { frame, every, times } => {
                        let framed = framed(&frame)?;
                        let client = lock(&state.connections).get(&id).map(|(c, _)| c.try_clone()).transpose()?;
                        if let Some(mut client) = client {
                            let (writing, stopping) = (Arc::clone(&writing), Arc::clone(&state.stopping));
                            thread::Builder::new().name(format!("proxy-stream-{id}")).spawn(move || {
                                for _ in 0..times {
                                    if stopping.load(Ordering::SeqCst) {
                                        return;
                                    }
                                    let written = {
                                        let _whole_frames = lock(&writing);
                                        client.write_all(&framed)
                                    };
                                    if written.is_err() {
                                        return;
                                    }
                                    pause_unless_stopping(&stopping, every);
                                }
                            })?;
                        }
                    }
                }
            }
            to.flush()?;
            continue;
        }
        let flip_at = state.take_arming_for(frame);
        to.write_all(&header)?;
        let mut offset = 0;
        while offset < frame.payload_len {
            let n = CHUNK.min(frame.payload_len - offset);
            let piece = &mut chunk[..n];
            from.read_exact(piece)?;
            if let Some(at) = flip_at.filter(|at| (offset..offset + n).contains(at)) {
                piece[at - offset] ^= 0x01;
                state.corrupted.fetch_add(1, Ordering::SeqCst);
            }
            to.write_all(piece)?;
            offset += n;
        }
        to.flush()?;
    }
}

/// Writes a frame payload into the capture directory, if one is set; failures only log.
fn capture(state: &ProxyState, id: u64, payload: &[u8]) {
    let Some(dir) = &state.capture_dir else { return };
    let n = state.captured.fetch_add(1, Ordering::SeqCst);
    let path = dir.join(format!("{}-{id}-{n:05}.bin", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, payload)) {
        tracing::warn!("capturing a frame into {}: {e}", path.display());
    }
}

/// Fills `header`; false on a clean EOF before its first byte.
fn read_header_or_eof(from: &mut impl Read, header: &mut [u8; 4]) -> io::Result<bool> {
    let mut got = 0;
    while got < header.len() {
        match from.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF inside a frame header")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn frame(frame_type: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![frame_type, (len >> 16) as u8, (len >> 8) as u8, len as u8];
        f.extend_from_slice(payload);
        f
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn parses_direct_tcp_and_netbios_headers() {
        assert_eq!(FrameHeader::parse([0, 0, 1, 0]), FrameHeader { frame_type: 0, payload_len: 256 });
        assert_eq!(FrameHeader::parse([0, 0xff, 0xff, 0xff]).payload_len, 0xff_ffff);
        // NetBIOS keep-alive (RFC 1002 4.3.7) and a message using the
        // length-extension bit (17-bit length).
        assert_eq!(FrameHeader::parse([0x85, 0, 0, 0]), FrameHeader { frame_type: 0x85, payload_len: 0 });
        assert_eq!(FrameHeader::parse([0, 1, 0, 0]).payload_len, 0x1_0000);
    }

    #[test]
    fn forwards_unarmed_frames_unchanged() {
        let mut wire = frame(0, b"\xfeSMB hello");
        wire.extend(frame(0x85, b""));
        wire.extend(frame(0, &pattern(200_000)));
        let state = ProxyState::default();
        let mut out = Vec::new();
        forward_responses(&mut Cursor::new(wire.clone()), &mut out, &state, 0).unwrap();
        assert_eq!(out, wire);
        assert_eq!(state.corrupted.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn silenced_connection_swallows_whole_frames() {
        let mut wire = frame(0, b"\xfeSMB hello");
        wire.extend(frame(0, &pattern(200_000)));
        let state = ProxyState::default();
        lock(&state.silenced).insert(7);
        let mut out = Vec::new();
        forward_responses(&mut Cursor::new(wire.clone()), &mut out, &state, 7).unwrap();
        assert!(out.is_empty(), "nothing reaches the client");
        forward_responses(&mut Cursor::new(wire.clone()), &mut out, &state, 8).unwrap();
        assert_eq!(out, wire, "other connections are untouched");
    }

    #[test]
    fn armed_flips_one_byte_in_the_first_long_enough_frame() {
        let (short, long, later) = (pattern(10), pattern(100), pattern(100));
        let mut wire = frame(0, &short);
        wire.extend(frame(0, &long));
        wire.extend(frame(0, &later));
        let state = ProxyState::default();
        *state.armed_at.lock().unwrap() = Some(50);
        let mut out = Vec::new();
        forward_responses(&mut Cursor::new(wire.clone()), &mut out, &state, 0).unwrap();

        let flipped = 4 + short.len() + 4 + 50;
        let diffs: Vec<usize> = (0..wire.len()).filter(|&i| wire[i] != out[i]).collect();
        assert_eq!(diffs, vec![flipped]);
        assert_eq!(out[flipped], wire[flipped] ^ 0x01);
        assert_eq!(state.corrupted.load(Ordering::SeqCst), 1);
        assert!(state.armed_at.lock().unwrap().is_none(), "one shot");
    }

    #[test]
    fn payload_of_exactly_at_bytes_is_not_long_enough() {
        // "longer than at": a 50-byte payload has no offset 50.
        let wire = frame(0, &pattern(50));
        let state = ProxyState::default();
        *state.armed_at.lock().unwrap() = Some(50);
        let mut out = Vec::new();
        forward_responses(&mut Cursor::new(wire.clone()), &mut out, &state, 0).unwrap();
        assert_eq!(out, wire);
        assert_eq!(*state.armed_at.lock().unwrap(), Some(50), "still armed");
    }

    #[test]
    fn flips_across_chunk_boundaries_and_skips_control_frames() {
        let big = pattern(3 * CHUNK + 17);
        let mut wire = frame(0x85, &pattern(8));
        wire.extend(frame(0, &big));
        let at = 2 * CHUNK + 5;
        let state = ProxyState::default();
        *state.armed_at.lock().unwrap() = Some(at);
        let mut out = Vec::new();
        forward_responses(&mut Cursor::new(wire.clone()), &mut out, &state, 0).unwrap();
        let flipped = 4 + 8 + 4 + at;
        let diffs: Vec<usize> = (0..wire.len()).filter(|&i| wire[i] != out[i]).collect();
        assert_eq!(diffs, vec![flipped]);
    }

    #[test]
    fn truncated_frame_is_an_error_but_eof_between_frames_is_not() {
        let state = ProxyState::default();
        let mut cut = frame(0, &pattern(100));
        cut.truncate(60);
        let err = forward_responses(&mut Cursor::new(cut), &mut Vec::new(), &state, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let err = forward_responses(&mut Cursor::new(vec![0u8, 0]), &mut Vec::new(), &state, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        forward_responses(&mut Cursor::new(Vec::new()), &mut Vec::new(), &state, 0).unwrap();
    }

    /// An upstream that answers each request frame with a response of
    /// `response_len` bytes, writing the header one byte at a time to split
    /// it across TCP segments.
    fn fake_server(response_len: usize) -> (SocketAddr, JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_nodelay(true).unwrap();
            let mut received = Vec::new();
            let mut header = [0u8; 4];
            while read_header_or_eof(&mut conn, &mut header).unwrap() {
                let mut payload = vec![0u8; FrameHeader::parse(header).payload_len];
                conn.read_exact(&mut payload).unwrap();
                received.extend_from_slice(&header);
                received.extend_from_slice(&payload);
                let response = frame(0, &pattern(response_len));
                for b in &response[..4] {
                    conn.write_all(&[*b]).unwrap();
                    thread::sleep(Duration::from_millis(2));
                }
                conn.write_all(&response[4..]).unwrap();
            }
            received
        });
        (addr, handle)
    }

    #[test]
    fn proxies_a_real_connection_and_corrupts_on_demand() {
        let (upstream, server) = fake_server(1000);
        let proxy = CorruptingProxy::start(upstream).unwrap();
        let mut client = TcpStream::connect(proxy.addr()).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let expected = frame(0, &pattern(1000));
        let mut response = vec![0u8; expected.len()];

        let request = frame(0, b"\xfeSMB request one");
        client.write_all(&request).unwrap();
        client.read_exact(&mut response).unwrap();
        assert_eq!(response, expected);

        proxy.corrupt_next_response(999);
        assert!(proxy.is_armed());
        client.write_all(&request).unwrap();
        client.read_exact(&mut response).unwrap();
        assert_eq!(response[4 + 999], expected[4 + 999] ^ 0x01);
        assert_eq!(response[..4 + 999], expected[..4 + 999]);
        assert_eq!(proxy.corrupted_count(), 1);
        assert!(!proxy.is_armed());

        client.write_all(&request).unwrap();
        client.read_exact(&mut response).unwrap();
        assert_eq!(response, expected, "one shot");
        assert_eq!(proxy.connection_count(), 1);

        drop(client);
        let mut two_requests = request.clone();
        two_requests.extend_from_slice(&request);
        two_requests.extend_from_slice(&request);
        assert_eq!(server.join().unwrap(), two_requests, "client bytes reach the server unchanged");
    }

    #[test]
    fn cut_all_closes_live_connections_but_keeps_accepting() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let proxy = CorruptingProxy::start(listener.local_addr().unwrap()).unwrap();
        let mut client = TcpStream::connect(proxy.addr()).unwrap();
        let (_server_side, _) = listener.accept().unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while proxy.live_connections() == 0 && std::time::Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(proxy.cut_all(), 1);
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).unwrap_or(0), 0, "connection cut");
        let _again = TcpStream::connect(proxy.addr()).unwrap();
        let (_server_again, _) = listener.accept().unwrap();
        assert_eq!(proxy.connection_count(), 2, "still accepting");
    }

    #[test]
    fn drop_stops_listening_and_closes_connections() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let upstream = listener.local_addr().unwrap();
        let proxy = CorruptingProxy::start(upstream).unwrap();
        let addr = proxy.addr();
        let mut client = TcpStream::connect(addr).unwrap();
        let (_server_side, _) = listener.accept().unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        drop(proxy);
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).unwrap_or(0), 0, "connection closed");
        assert!(TcpStream::connect(addr).is_err(), "listener closed");
    }

    #[test]
    fn unreachable_upstream_closes_the_client() {
        // Bind and drop to find a port with (almost surely) no listener.
        let upstream = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap();
        let proxy = CorruptingProxy::start(upstream).unwrap();
        let mut client = TcpStream::connect(proxy.addr()).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).unwrap_or(0), 0);
    }
}
