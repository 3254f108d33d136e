//! One transport connection to an SMB server: framing, credits, message ids,
//! signing and sealing of outgoing messages, and a reader task that verifies
//! incoming messages and routes them to their waiters by MessageId. Many
//! requests are in flight at once; nothing here knows about files.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::crypto::encryption::Sealer;
use super::crypto::signing::Signer;
use super::deadlines::{self, OnSilence, WaitLimits};
use super::error::{Error, Result};
use super::wire::cursor::Writer;
use super::wire::durable::LeaseBreakNotification;
use super::wire::framing::{self, Frame, NetbiosSessionReply};
use super::wire::header::{self, Header, HEADER_LEN};
use super::wire::transform::TransformHeader;
use super::wire::{Command, NtStatus};
use crate::observer::ObserverHandle;
use crate::target::HostPort;

/// Message id the server uses for unsolicited oplock/lease break notifications.
const UNSOLICITED_MESSAGE_ID: u64 = u64::MAX;
/// Messages up to this size are sent with their frame header in one write.
const SMALL_MESSAGE: usize = 64 * 1024;
/// We keep asking for credits until this many are available (Samba grants up to 8192).
const CREDIT_TARGET: u32 = 512;
/// Credits held at most, however many a server grants: a hostile grant of
/// 65535 per response must not overflow the count (MS-SMB2 3.2.5.1.4 leaves
/// the client free to use fewer than granted).
const CREDIT_CEILING: u32 = 65_535;
/// Message ids given up on (pending past the ceiling) are remembered up to
/// this many, so their late answers are not mistaken for duplicates.
const ABANDONED_REMEMBERED: usize = 1024;

/// How SMB2 messages are framed on the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Framing {
    /// Port 445: 4-byte length prefix (MS-SMB2 2.1).
    Direct,
    /// Port 139: NetBIOS session request first, then the same framing.
    Netbios,
}

/// Keys of an established session, shared with the reader task.
pub(crate) struct SessionKeysInUse {
    pub signer: Option<Signer>,
    pub sealer: Option<Sealer>,
}

/// A response as delivered to its waiter: header plus the whole message bytes.
#[derive(Debug)]
pub(crate) struct Response {
    pub header: Header,
    /// The single message, header first (one element of a compound chain); a
    /// view into the received frame, not a copy.
    pub msg: bytes::Bytes,
}

impl Response {
    /// Turns a non-success status into an error for `op`.
    pub fn ok(self, op: impl FnOnce() -> String) -> Result<Response> {
        if self.header.status.is_success() {
            Ok(self)
        } else {
            Err(Error::Status { op: op(), status: self.header.status })
        }
    }
}

/// A request to send: a 64-byte placeholder header followed by the body.
/// Cloned when a request must be sent again after a reconnect.
#[derive(Clone)]
pub(crate) struct Outgoing {
    pub command: Command,
    pub tree_id: u32,
    pub msg: Vec<u8>,
    /// Largest payload this request moves in either direction, for CreditCharge.
    pub payload_len: usize,
    /// Sent before on a lost connection: SMB2_FLAGS_REPLAY_OPERATION (3.x only),
    /// so the server can recognise a CREATE it already performed.
    pub replay: bool,
}

impl Outgoing {
    /// Builds a request by letting a wire encoder append its body.
    pub fn new(command: Command, tree_id: u32, payload_len: usize, encode: impl FnOnce(&mut Vec<u8>)) -> Self {
        let mut msg = Vec::with_capacity(HEADER_LEN + 128);
        msg.put_zeros(HEADER_LEN);
        encode(&mut msg);
        Outgoing { command, tree_id, msg, payload_len, replay: false }
    }
}

/// How a batch of requests is protected and chained.
#[derive(Clone, Copy, Default)]
pub(crate) struct Protection<'a> {
    pub session_id: u64,
    pub signer: Option<&'a Signer>,
    pub sealer: Option<&'a Sealer>,
    /// Compound members after the first operate on the previous one's handle.
    pub related: bool,
    /// ChannelSequence (3.x: the first two bytes of the request's Status
    /// field), raised on every reconnect so that the server orders a replayed
    /// request after anything the lost connection still delivers.
    pub channel_sequence: u16,
}

/// What the reader must insist on for a response.
#[derive(Clone, Copy)]
struct Expect {
    encrypted: bool,
    signed: bool,
}

struct Pending {
    tx: oneshot::Sender<Result<Response>>,
    expect: Expect,
    command: Command,
    interim: bool,
    /// The AsyncId of the interim STATUS_PENDING answer, for an SMB2 CANCEL.
    async_id: Option<u64>,
}

struct Credits {
    next_message_id: u64,
    available: u32,
}

/// How a connection ended, for the layer that decides whether to reconnect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Death {
    /// The network or the server went away (reset, EOF, timeout, write
    /// error, missed echo): a new connection may well work.
    Network(String),
    /// The server's bytes failed verification or made no sense: never
    /// retried silently, since that would hide tampering.
    Untrusted(String),
}

/// Why the connection died, kept so that later callers get the same answer.
#[derive(Clone, Debug)]
enum Fatal {
    Io(String),
    Integrity(String),
    Protocol(String),
    Smb1,
}

struct Shared {
    addr: String,
    pending: Mutex<HashMap<u64, Pending>>,
    /// Requests given up on while the server kept them pending: their final
    /// answer may still come and is then dropped quietly.
    abandoned: Mutex<HashSet<u64>>,
    sessions: Mutex<HashMap<u64, Arc<SessionKeysInUse>>>,
    credits: Mutex<Credits>,
    credits_changed: Notify,
    dead: Mutex<Option<Fatal>>,
    large_mtu: std::sync::atomic::AtomicBool,
    stats: Counters,
    /// Sessions of this connection counted in the process-wide
    /// `smb_sessions_open` gauge; given back when the connection dies or is
    /// dropped, so the gauge only counts sessions that can still be used.
    metered_sessions: Mutex<u64>,
    observer: ObserverHandle,
    /// Becomes true once, when the connection dies.
    closed: watch::Sender<bool>,
    /// When the connection opened; `last_received_ms` counts from here.
    opened_at: Instant,
    /// Milliseconds after `opened_at` at which the last frame arrived (idle detection).
    last_received_ms: AtomicU64,
    /// Where lease breaks go (taken by the session owner).
    lease_breaks: mpsc::UnboundedSender<LeaseBreakNotification>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

/// Traffic counters of one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    pub requests: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Most requests that were awaiting a response at the same time.
    pub max_in_flight: u64,
}

impl Shared {
    fn error_for(&self, fatal: &Fatal) -> Error {
        match fatal {
            Fatal::Io(why) => Error::Disconnected { addr: self.addr.clone(), why: why.clone() },
            Fatal::Integrity(why) => Error::Integrity(why.clone()),
            Fatal::Protocol(why) => Error::Protocol(why.clone()),
            Fatal::Smb1 => Error::Smb1Only,
        }
    }

    fn check_alive(&self) -> Result<()> {
        match &*self.dead.lock().unwrap() {
            Some(f) => Err(self.error_for(f)),
            None => Ok(()),
        }
    }

    fn kill(&self, fatal: Fatal) {
        let pending: Vec<Pending> = self.pending.lock().unwrap().drain().map(|(_, p)| p).collect();
        {
            let mut dead = self.dead.lock().unwrap();
            if dead.is_none() {
                // Idle connections closing (after logoff, or a server's idle timeout) are routine.
                if pending.is_empty() {
                    tracing::debug!(server = %self.addr, reason = ?fatal, "SMB connection closed");
                } else {
                    tracing::warn!(server = %self.addr, reason = ?fatal, waiting = pending.len(), "SMB connection lost");
                }
                *dead = Some(fatal.clone());
            }
        }
        self.closed.send_replace(true);
        self.unmeter_sessions();
        for p in pending {
            let _ = p.tx.send(Err(self.error_for(&fatal)));
        }
        self.credits_changed.notify_waiters();
    }

    fn meter_session_opened(&self) {
        let mut metered = self.metered_sessions.lock().unwrap();
        // Holding `metered_sessions` across the check: a `kill` racing this
        // waits in `unmeter_sessions` and then takes this session back too.
        if self.dead.lock().unwrap().is_none() {
            *metered += 1;
            self.observer.session_opened();
        }
    }

    fn meter_session_closed(&self) {
        let mut metered = self.metered_sessions.lock().unwrap();
        if *metered > 0 {
            *metered -= 1;
            self.observer.sessions_closed(1);
        }
    }

    fn unmeter_sessions(&self) {
        let mut metered = self.metered_sessions.lock().unwrap();
        self.observer.sessions_closed(std::mem::take(&mut *metered));
    }

    fn grant(&self, credits: u16) {
        if credits > 0 {
            let mut c = self.credits.lock().unwrap();
            c.available = c.available.saturating_add(u32::from(credits)).min(CREDIT_CEILING);
            drop(c);
            self.credits_changed.notify_waiters();
        }
    }
}

/// A live connection. Cheap to share behind an `Arc`; dropping the last
/// reference stops the reader task and closes the socket.
pub(crate) struct Connection {
    shared: Arc<Shared>,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    reader: tokio::task::JoinHandle<()>,
    limits: WaitLimits,
    lease_breaks_rx: Mutex<Option<mpsc::UnboundedReceiver<LeaseBreakNotification>>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
        self.shared.unmeter_sessions();
    }
}

impl Connection {
    /// Opens the TCP connection (and the NetBIOS session for port 139)
    /// within `connect_timeout`; its requests then wait within `limits`.
    pub async fn open(
        host: &str,
        port: u16,
        framing: Framing,
        connect_timeout: Duration,
        limits: WaitLimits,
        observer: ObserverHandle,
    ) -> Result<Connection> {
        let timeout = connect_timeout;
        let addr = HostPort(host, Some(port)).to_string();
        let stream = tokio::time::timeout(timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| Error::Timeout { op: format!("connecting to {addr}"), secs: timeout.as_secs() })?
            .map_err(|source| Error::Connect { addr: addr.clone(), source })?;
        stream.set_nodelay(true).ok();
        let (mut rd, mut wr) = stream.into_split();
        if framing == Framing::Netbios {
            netbios_handshake(&mut rd, &mut wr, host, &addr, timeout).await?;
        }
        let (lease_breaks, lease_breaks_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            addr: addr.clone(),
            pending: Mutex::new(HashMap::new()),
            abandoned: Mutex::new(HashSet::new()),
            sessions: Mutex::new(HashMap::new()),
            credits: Mutex::new(Credits { next_message_id: 0, available: 1 }),
            credits_changed: Notify::new(),
            dead: Mutex::new(None),
            large_mtu: std::sync::atomic::AtomicBool::new(false),
            stats: Counters::default(),
            metered_sessions: Mutex::new(0),
            observer,
            closed: watch::channel(false).0,
            opened_at: Instant::now(),
            last_received_ms: AtomicU64::new(0),
            lease_breaks,
        });
        let reader = tokio::spawn(reader_loop(shared.clone(), rd));
        Ok(Connection {
            shared,
            writer: Arc::new(tokio::sync::Mutex::new(wr)),
            reader,
            limits,
            lease_breaks_rx: Mutex::new(Some(lease_breaks_rx)),
        })
    }

    /// Resolves once the connection is dead (at once if it already is).
    pub async fn closed(&self) {
        let mut rx = self.shared.closed.subscribe();
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// How the connection ended; `None` while it is up.
    pub fn death(&self) -> Option<Death> {
        self.shared.dead.lock().unwrap().as_ref().map(|f| match f {
            Fatal::Io(why) => Death::Network(why.clone()),
            Fatal::Integrity(why) => Death::Untrusted(format!("integrity: {why}")),
            Fatal::Protocol(why) => Death::Untrusted(format!("protocol: {why}")),
            Fatal::Smb1 => Death::Untrusted("server switched to SMB1".into()),
        })
    }

    /// Declares the connection lost (e.g. a missed echo): every waiter gets
    /// a disconnect error and the socket is no longer used.
    pub fn abort(&self, why: impl Into<String>) {
        self.shared.kill(Fatal::Io(why.into()));
        self.reader.abort();
        // Send FIN now rather than when the last user lets go: the server
        // then releases this connection's opens for reclaiming at once.
        let writer = self.writer.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = writer.lock().await.shutdown().await;
            });
        }
    }

    /// Time since the last frame arrived from the server.
    pub fn idle_for(&self) -> Duration {
        let now = self.shared.opened_at.elapsed();
        now.saturating_sub(Duration::from_millis(self.shared.last_received_ms.load(Ordering::Relaxed)))
    }

    /// Lease breaks from the server; `None` after the first call.
    pub fn take_lease_breaks(&self) -> Option<mpsc::UnboundedReceiver<LeaseBreakNotification>> {
        self.lease_breaks_rx.lock().unwrap().take()
    }

    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    pub fn is_alive(&self) -> bool {
        self.shared.check_alive().is_ok()
    }

    pub fn stats(&self) -> ConnectionStats {
        let c = &self.shared.stats;
        ConnectionStats {
            requests: c.requests.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            max_in_flight: c.max_in_flight.load(Ordering::Relaxed),
        }
    }

    /// Enables multi-credit requests once the server has said it supports them.
    pub fn set_large_mtu(&self, on: bool) {
        self.shared.large_mtu.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Makes the reader verify/decrypt this session's messages.
    pub fn register_session(&self, session_id: u64, keys: Arc<SessionKeysInUse>) {
        let new = self.shared.sessions.lock().unwrap().insert(session_id, keys).is_none();
        if new {
            self.shared.meter_session_opened();
        }
    }

    pub fn unregister_session(&self, session_id: u64) {
        let removed = self.shared.sessions.lock().unwrap().remove(&session_id).is_some();
        if removed {
            self.shared.meter_session_closed();
        }
    }

    fn credit_charge(&self, payload_len: usize) -> u16 {
        if !self.shared.large_mtu.load(std::sync::atomic::Ordering::Relaxed) {
            return 1;
        }
        (payload_len.saturating_sub(1) / 65536 + 1).min(u16::MAX as usize) as u16
    }

    /// Waits for `charge` credits and reserves that many message ids.
    async fn reserve(&self, charge: u32) -> Result<(u64, u32)> {
        loop {
            let notified = self.shared.credits_changed.notified();
            self.shared.check_alive()?;
            {
                let mut c = self.shared.credits.lock().unwrap();
                if c.available >= charge {
                    c.available -= charge;
                    let id = c.next_message_id;
                    c.next_message_id += u64::from(charge.max(1));
                    let request = if c.available < CREDIT_TARGET { charge + 64 } else { charge.max(1) };
                    return Ok((id, request));
                }
                if self.shared.pending.lock().unwrap().is_empty() {
                    return Err(Error::Protocol(format!(
                        "server granted no credits ({} available, {} needed)",
                        c.available, charge
                    )));
                }
            }
            if tokio::time::timeout(self.limits.request, notified).await.is_err() {
                return Err(Error::Timeout {
                    op: "waiting for SMB credits".into(),
                    secs: self.limits.request.as_secs(),
                });
            }
        }
    }

    /// Sends one request and waits for its response.
    pub async fn request(&self, out: Outgoing, prot: Protection<'_>) -> Result<Response> {
        let (_, mut responses) = self.send(vec![out], prot, false).await?;
        Ok(responses.pop().expect("one response per request"))
    }

    /// Sends requests as one compound chain (one round trip) or a single
    /// request, and waits for every response. With `keep_request`, the
    /// exact request bytes are returned too (for the preauth hash).
    pub async fn send(
        &self,
        outs: Vec<Outgoing>,
        prot: Protection<'_>,
        keep_request: bool,
    ) -> Result<(Vec<Vec<u8>>, Vec<Response>)> {
        self.send_inner(outs, prot, keep_request, None).await
    }

    /// Sends one request that the server may keep pending for as long as it
    /// likes (a blocking byte-range LOCK): once the server has said
    /// STATUS_PENDING the pending ceiling does not apply, the caller bounds it. When `cancelled` resolves first,
    /// an SMB2 CANCEL is sent for it (MS-SMB2 3.2.4.24) and the server's
    /// final answer (STATUS_CANCELLED, or the grant if it raced the cancel)
    /// is returned.
    pub async fn request_cancellable(
        &self,
        out: Outgoing,
        prot: Protection<'_>,
        cancelled: Pin<&mut (dyn Future<Output = ()> + Send)>,
    ) -> Result<Response> {
        let (_, mut responses) = self.send_inner(vec![out], prot, false, Some(cancelled)).await?;
        Ok(responses.pop().expect("one response per request"))
    }

    async fn send_inner(
        &self,
        mut outs: Vec<Outgoing>,
        prot: Protection<'_>,
        keep_request: bool,
        cancelled: Option<Pin<&mut (dyn Future<Output = ()> + Send)>>,
    ) -> Result<(Vec<Vec<u8>>, Vec<Response>)> {
        let negotiate = outs.len() == 1 && outs[0].command == Command::Negotiate;
        let first_command = outs.first().map_or(Command::Unknown(u16::MAX), |o| o.command);
        let charges: Vec<u32> =
            outs.iter().map(|o| if negotiate { 0 } else { u32::from(self.credit_charge(o.payload_len)) }).collect();
        let total_charge: u32 = charges.iter().sum();
        let (first_id, credit_request) = self.reserve(if negotiate { 1 } else { total_charge }).await?;

        // Finalise headers, pad, sign.
        let n = outs.len();
        let mut ids = Vec::with_capacity(n);
        let mut next_id = first_id;
        let mut chain = Vec::new();
        let mut kept = Vec::new();
        for (i, out) in outs.iter_mut().enumerate() {
            let mut h = Header::new(out.command);
            h.credit_charge = charges[i] as u16;
            h.credits = if i == 0 { credit_request.min(u16::MAX as u32) as u16 } else { charges[i].max(1) as u16 };
            h.message_id = next_id;
            next_id += u64::from(charges[i].max(1));
            h.session_id = prot.session_id;
            h.tree_id = out.tree_id;
            h.status = NtStatus(u32::from(prot.channel_sequence));
            if out.replay {
                h.flags |= header::FLAG_REPLAY_OPERATION;
            }
            if i > 0 && prot.related {
                h.flags |= header::FLAG_RELATED_OPERATIONS;
            }
            if i + 1 < n {
                out.msg.align_to(8);
                h.next_command = out.msg.len() as u32;
            }
            let mut hb = Vec::with_capacity(HEADER_LEN);
            h.encode(&mut hb);
            out.msg[..HEADER_LEN].copy_from_slice(&hb);
            if prot.sealer.is_none() {
                if let Some(signer) = prot.signer {
                    signer.sign(&mut out.msg);
                }
            }
            if keep_request {
                kept.push(out.msg.clone());
            }
            ids.push(h.message_id);
        }
        let expect =
            Expect { encrypted: prot.sealer.is_some(), signed: prot.sealer.is_none() && prot.signer.is_some() };

        let mut frame_body = if n == 1 {
            std::mem::take(&mut outs[0].msg)
        } else {
            for o in &outs {
                chain.extend_from_slice(&o.msg);
            }
            chain
        };
        let transform = prot.sealer.map(|sealer| sealer.seal_in_place(prot.session_id, &mut frame_body));
        let transform: &[u8] = transform.as_ref().map_or(&[], |t| &t[..]);
        let frame_header = framing::encode_frame_header(transform.len() + frame_body.len())?;

        let stats = &self.shared.stats;
        stats.requests.fetch_add(n as u64, Ordering::Relaxed);
        stats.bytes_sent.fetch_add((transform.len() + frame_body.len()) as u64 + 4, Ordering::Relaxed);
        self.shared.observer.bytes_sent(transform.len() + frame_body.len() + 4);
        let now = stats.in_flight.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        stats.max_in_flight.fetch_max(now, Ordering::Relaxed);
        let _in_flight = InFlight { counter: &stats.in_flight, n: n as u64 };
        let mut receivers = Vec::with_capacity(n);
        {
            let mut pending = self.shared.pending.lock().unwrap();
            for (id, out) in ids.iter().zip(&outs) {
                let (tx, rx) = oneshot::channel();
                pending.insert(*id, Pending { tx, expect, command: out.command, interim: false, async_id: None });
                receivers.push(rx);
            }
        }
        let sent_at = Instant::now();
        let write = async {
            let mut w = self.writer.lock().await;
            // One write for small messages (no Nagle: each write is a segment); large
            // bodies go out after their 4 + 52 header bytes without being copied.
            let mut head = Vec::with_capacity(4 + transform.len() + SMALL_MESSAGE);
            head.extend_from_slice(&frame_header);
            head.extend_from_slice(transform);
            if frame_body.len() <= SMALL_MESSAGE {
                head.extend_from_slice(&frame_body);
                return w.write_all(&head).await;
            }
            w.write_all(&head).await?;
            w.write_all(&frame_body).await
        };
        // A write into a silent network blocks once the socket buffer is
        // full; the connection being declared dead (missed ECHO) ends it.
        let written = tokio::select! {
            r = write => r,
            () = self.closed() => Err(std::io::Error::other("connection closed")),
        };
        if let Err(e) = written {
            self.shared.kill(Fatal::Io(format!("write: {e}")));
            return Err(self.shared.check_alive().unwrap_err());
        }

        let mut responses = Vec::with_capacity(n);
        match cancelled {
            Some(cancelled) => {
                let (rx, id) = (receivers.pop().expect("one request"), ids[0]);
                responses.push(self.wait_cancellable(rx, id, sent_at, prot, cancelled).await?);
            }
            None => {
                for (rx, id) in receivers.into_iter().zip(ids) {
                    responses.push(self.wait(rx, id, sent_at, prot).await?);
                }
            }
        }
        self.shared.observer.round_trip(first_command, sent_at.elapsed());
        Ok((kept, responses))
    }

    /// Waits for the answer to `id`, sending one SMB2 CANCEL when `cancelled` resolves first.
    async fn wait_cancellable(
        &self,
        mut rx: oneshot::Receiver<Result<Response>>,
        id: u64,
        sent_at: Instant,
        prot: Protection<'_>,
        mut cancelled: Pin<&mut (dyn Future<Output = ()> + Send)>,
    ) -> Result<Response> {
        let waiting = self.wait_for(&mut rx, id, sent_at, true, prot);
        tokio::pin!(waiting);
        tokio::select! {
            r = &mut waiting => return r,
            () = &mut cancelled => {}
        }
        self.cancel(id, prot).await?;
        // A cancelled request is answered at once (STATUS_CANCELLED, or the result that raced the cancel): a
        // server that stays silent after it is not waited on forever; the request is given up on.
        match tokio::time::timeout(self.limits.request, &mut waiting).await {
            Ok(r) => r,
            Err(_) => {
                let command = self.shared.pending.lock().unwrap().get(&id).map_or(Command::Cancel, |p| p.command);
                Err(self.give_up_pending(id, command, prot).await)
            }
        }
    }

    /// SMB2 CANCEL of request `id` (MS-SMB2 2.2.30, 3.2.4.24): addressed by
    /// its AsyncId once the server has answered STATUS_PENDING, by its
    /// MessageId before. It takes no credit and gets no answer of its own.
    async fn cancel(&self, id: u64, prot: Protection<'_>) -> Result<()> {
        let async_id = match self.shared.pending.lock().unwrap().get(&id) {
            Some(p) => p.async_id,
            None => return Ok(()), // answered meanwhile
        };
        let mut h = Header::new(Command::Cancel);
        h.message_id = id;
        h.session_id = prot.session_id;
        if let Some(a) = async_id {
            h.flags |= header::FLAG_ASYNC_COMMAND;
            h.async_id = a;
        }
        let mut msg = Vec::with_capacity(HEADER_LEN + 4);
        h.encode(&mut msg);
        crate::wire::simple::CancelRequest.encode(&mut msg);
        if prot.sealer.is_none() {
            if let Some(signer) = prot.signer {
                signer.sign(&mut msg);
            }
        }
        let transform = prot.sealer.map(|sealer| sealer.seal_in_place(prot.session_id, &mut msg));
        let transform: &[u8] = transform.as_ref().map_or(&[], |t| &t[..]);
        let mut frame = framing::encode_frame_header(transform.len() + msg.len())?.to_vec();
        frame.extend_from_slice(transform);
        frame.extend_from_slice(&msg);
        tracing::debug!(message_id = id, ?async_id, "sending SMB2 CANCEL");
        let written = self.writer.lock().await.write_all(&frame).await;
        if let Err(e) = written {
            self.shared.kill(Fatal::Io(format!("write: {e}")));
            return Err(self.shared.check_alive().unwrap_err());
        }
        Ok(())
    }

    async fn wait(
        &self,
        mut rx: oneshot::Receiver<Result<Response>>,
        id: u64,
        sent_at: Instant,
        prot: Protection<'_>,
    ) -> Result<Response> {
        self.wait_for(&mut rx, id, sent_at, false, prot).await
    }

    /// Waits for the answer to `id` within the connection's [`WaitLimits`]:
    /// see [`deadlines::on_silence`] for what happens when a window passes.
    async fn wait_for(
        &self,
        rx: &mut oneshot::Receiver<Result<Response>>,
        id: u64,
        sent_at: Instant,
        patient: bool,
        prot: Protection<'_>,
    ) -> Result<Response> {
        let mut window = self.limits.request;
        loop {
            match tokio::time::timeout(window, &mut *rx).await {
                Ok(Ok(r)) => return r,
                Ok(Err(_)) => {
                    return Err(self.shared.check_alive().err().unwrap_or(Error::Disconnected {
                        addr: self.shared.addr.clone(),
                        why: "reader stopped".into(),
                    }))
                }
                Err(_) => {
                    let (interim, command) = match self.shared.pending.lock().unwrap().get(&id) {
                        Some(p) => (p.interim, p.command),
                        None => (false, Command::Unknown(u16::MAX)),
                    };
                    match deadlines::on_silence(interim, patient, sent_at.elapsed(), self.limits) {
                        OnSilence::KeepWaiting(more) => window = more,
                        OnSilence::GiveUpPending => return Err(self.give_up_pending(id, command, prot).await),
                        OnSilence::ServerSilent => {
                            // A server that neither answers nor says it is working is
                            // treated as gone: the connection is dropped, so callers can
                            // move to a new one instead of waiting on this one forever.
                            self.abort(format!(
                                "no response to {} request {id} within {}s",
                                command.name(),
                                self.limits.request.as_secs()
                            ));
                            return Err(self.shared.check_alive().unwrap_err());
                        }
                    }
                }
            }
        }
    }

    /// Fails a request the server kept STATUS_PENDING past the ceiling: sends
    /// it an SMB2 CANCEL, forgets its waiter and remembers its id so that a
    /// late final answer is dropped rather than taken for a duplicate. The
    /// connection and its other requests carry on.
    async fn give_up_pending(&self, id: u64, command: Command, prot: Protection<'_>) -> Error {
        let secs = self.limits.pending_ceiling.as_secs();
        tracing::warn!(server = %self.shared.addr, message_id = id, command = command.name(), secs, "server kept a request STATUS_PENDING past the ceiling; cancelling it");
        let _ = self.cancel(id, prot).await;
        if self.shared.pending.lock().unwrap().remove(&id).is_some() {
            let mut abandoned = self.shared.abandoned.lock().unwrap();
            if abandoned.len() >= ABANDONED_REMEMBERED {
                abandoned.clear();
            }
            abandoned.insert(id);
        }
        Error::StillPending { op: format!("{} request {id}", command.name()), secs }
    }
}

/// Decrements the in-flight gauge however a request ends.
struct InFlight<'a> {
    counter: &'a AtomicU64,
    n: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.n, Ordering::Relaxed);
    }
}

async fn netbios_handshake(
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    host: &str,
    addr: &str,
    timeout: Duration,
) -> Result<()> {
    let called = if host.parse::<std::net::IpAddr>().is_ok() { "*SMBSERVER" } else { host };
    let req = framing::netbios_session_request(called, "SMB3CSI");
    let io = async {
        wr.write_all(&req).await?;
        let mut head = [0u8; 4];
        rd.read_exact(&mut head).await?;
        let len = (usize::from(head[1] & 1) << 16) | (usize::from(head[2]) << 8) | usize::from(head[3]);
        let mut rest = vec![0u8; len.min(64)];
        rd.read_exact(&mut rest).await?;
        let mut all = head.to_vec();
        all.extend_from_slice(&rest);
        Ok::<_, std::io::Error>(all)
    };
    let reply = tokio::time::timeout(timeout, io)
        .await
        .map_err(|_| Error::Timeout { op: format!("NetBIOS session request to {addr}"), secs: timeout.as_secs() })?
        .map_err(|source| Error::Connect { addr: addr.to_string(), source })?;
    match framing::decode_netbios_session_reply(&reply)? {
        NetbiosSessionReply::Positive => Ok(()),
        NetbiosSessionReply::Negative(code) => {
            Err(Error::Netbios { addr: addr.to_string(), why: format!("negative session response 0x{code:02x}") })
        }
        NetbiosSessionReply::Retarget { .. } => Err(Error::Netbios {
            addr: addr.to_string(),
            why: "server asked to retarget, which is not supported".into(),
        }),
    }
}

async fn reader_loop(shared: Arc<Shared>, mut rd: OwnedReadHalf) {
    let fatal = loop {
        let mut head = [0u8; 4];
        if let Err(e) = rd.read_exact(&mut head).await {
            break Fatal::Io(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "server closed the connection".into()
            } else {
                e.to_string()
            });
        }
        let len = match framing::decode_frame_header(head) {
            Ok(Frame::Message(len)) => len,
            Ok(Frame::KeepAlive) => continue,
            Err(e) => break Fatal::Protocol(format!("bad frame header: {e}")),
        };
        // Filled without zeroing first: frames are up to 8 MiB of read data.
        let mut frame = Vec::with_capacity(len);
        let mut short = None;
        while frame.len() < len {
            match (&mut rd).take((len - frame.len()) as u64).read_buf(&mut frame).await {
                Ok(0) => {
                    short = Some("server closed the connection mid-message".to_string());
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    short = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(why) = short {
            break Fatal::Io(why);
        }
        shared.stats.bytes_received.fetch_add(len as u64 + 4, Ordering::Relaxed);
        shared.last_received_ms.store(shared.opened_at.elapsed().as_millis() as u64, Ordering::Relaxed);
        shared.observer.bytes_received(len + 4);
        if let Err(f) = dispatch(&shared, frame) {
            break f;
        }
    };
    shared.kill(fatal);
}

/// Decrypts, splits, verifies and routes one received frame.
fn dispatch(shared: &Shared, mut frame: Vec<u8>) -> Result<(), Fatal> {
    let (plain, encrypted_for) = match frame.get(..4) {
        Some([0xFD, b'S', b'M', b'B']) => {
            let th = TransformHeader::decode(&frame).map_err(|e| Fatal::Protocol(format!("transform header: {e}")))?;
            let keys = shared.sessions.lock().unwrap().get(&th.session_id).cloned();
            let sealer = keys.as_ref().and_then(|k| k.sealer.as_ref()).ok_or_else(|| {
                Fatal::Protocol(format!("encrypted message for unknown session 0x{:x}", th.session_id))
            })?;
            // A message that fails authentication cannot be attributed to a request:
            // the transport is compromised, so every waiter gets the integrity error.
            let (sid, range) = sealer
                .decrypt_in_place(&mut frame)
                .map_err(|e| Fatal::Integrity(format!("decrypting response from server: {e}")))?;
            (bytes::Bytes::from(frame).slice(range), Some(sid))
        }
        Some([0xFE, b'S', b'M', b'B']) => (bytes::Bytes::from(frame), None),
        Some([0xFF, b'S', b'M', b'B']) => return Err(Fatal::Smb1),
        Some([0xFC, b'S', b'M', b'B']) => {
            return Err(Fatal::Protocol("compressed message, but compression was never negotiated".into()))
        }
        _ => return Err(Fatal::Protocol("frame is not an SMB2 message".into())),
    };

    let mut pos = 0usize;
    loop {
        let rest = &plain[pos..];
        let h = Header::decode(rest).map_err(|e| Fatal::Protocol(format!("response header: {e}")))?;
        if !h.is_response() {
            return Err(Fatal::Protocol("server sent a request".into()));
        }
        let next = h.next_command as usize;
        let end = if next == 0 {
            plain.len()
        } else if next < HEADER_LEN || next > rest.len() {
            return Err(Fatal::Protocol(format!("NextCommand {next} outside the {}-byte chain", rest.len())));
        } else {
            pos + next
        };
        let msg = plain.slice(pos..end);
        route(shared, h, msg, encrypted_for)?;
        if next == 0 {
            return Ok(());
        }
        pos = end;
    }
}

fn route(shared: &Shared, h: Header, msg: bytes::Bytes, encrypted_for: Option<u64>) -> Result<(), Fatal> {
    if h.message_id == UNSOLICITED_MESSAGE_ID {
        shared.grant(h.credits);
        // Every lease break goes to the link, which lets the tree's handler
        // flush and invalidate, then acknowledges the ones that want it.
        match (h.command, LeaseBreakNotification::decode(&msg)) {
            (Command::OplockBreak, Ok(n)) => {
                let _ = shared.lease_breaks.send(n);
            }
            (command, _) => tracing::debug!(?command, "ignoring unsolicited server notification"),
        }
        return Ok(());
    }
    if let Some(sid) = encrypted_for {
        if sid != h.session_id {
            return Err(Fatal::Integrity(format!(
                "encrypted for session 0x{sid:x} but addressed to session 0x{:x}",
                h.session_id
            )));
        }
    }
    let interim = h.status == NtStatus::PENDING && h.is_async();
    // Read before taking `pending`: `reserve` locks credits, then pending.
    let never_sent_from = shared.credits.lock().unwrap().next_message_id;
    let mut pending = shared.pending.lock().unwrap();
    let Some(p) = pending.get_mut(&h.message_id) else {
        return match unmatched_response(h.message_id, never_sent_from, interim, &shared.abandoned) {
            None => Ok(()),
            Some(why) => Err(Fatal::Protocol(why)),
        };
    };
    shared.grant(h.credits);
    if interim {
        if !deadlines::may_go_async(p.command) {
            return Err(Fatal::Protocol(format!(
                "STATUS_PENDING for {} request {}, which is never processed asynchronously",
                p.command.name(),
                h.message_id
            )));
        }
        p.interim = true;
        p.async_id = Some(h.async_id);
        return Ok(());
    }
    let p = pending.remove(&h.message_id).expect("present");
    drop(pending);
    let verdict = verify(shared, &h, &msg, encrypted_for.is_some(), p.expect);
    let _ = p.tx.send(verdict.map(|()| Response { header: h, msg }));
    Ok(())
}

/// Judges a response that matches no waiting request: `None` to drop it
/// (the late answer of a request given up on), else why it breaks the
/// protocol. A server answers each MessageId once (MS-SMB2 3.3.4.1), so an
/// answer to an id never sent or a second answer means the stream cannot
/// be trusted to say which request a response belongs to.
fn unmatched_response(
    message_id: u64,
    never_sent_from: u64,
    interim: bool,
    abandoned: &Mutex<HashSet<u64>>,
) -> Option<String> {
    if message_id >= never_sent_from {
        return Some(format!("response for message id {message_id}, which was never sent"));
    }
    let mut abandoned = abandoned.lock().unwrap();
    let known = if interim { abandoned.contains(&message_id) } else { abandoned.remove(&message_id) };
    if known {
        tracing::debug!(message_id, "late answer to a request given up on");
        return None;
    }
    Some(format!("second response for message id {message_id}"))
}

/// Enforces that a response is protected the way its request was.
fn verify(shared: &Shared, h: &Header, msg: &[u8], encrypted: bool, expect: Expect) -> Result<()> {
    if expect.encrypted {
        if !encrypted {
            return Err(Error::Integrity(format!("unencrypted {:?} response on an encrypted session", h.command)));
        }
        return Ok(());
    }
    if expect.signed && !encrypted {
        if !h.is_signed() {
            return Err(Error::Integrity(format!(
                "unsigned {:?} response ({}) where a signature is required",
                h.command, h.status
            )));
        }
        let keys = shared.sessions.lock().unwrap().get(&h.session_id).cloned();
        let signer = keys
            .as_ref()
            .and_then(|k| k.signer.as_ref())
            .ok_or_else(|| Error::Integrity(format!("signed response for unknown session 0x{:x}", h.session_id)))?;
        signer.verify(msg)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmatched_responses_are_violations_unless_given_up_on() {
        let abandoned = Mutex::new(HashSet::from([7u64]));
        let never_sent = unmatched_response(10, 10, false, &abandoned).unwrap();
        assert!(never_sent.contains("never sent"), "{never_sent}");
        assert!(unmatched_response(u64::MAX - 1, 10, true, &abandoned).unwrap().contains("never sent"));
        assert!(unmatched_response(3, 10, false, &abandoned).unwrap().contains("second response"));
        // An interim then the final answer of a request given up on are dropped once each.
        assert_eq!(unmatched_response(7, 10, true, &abandoned), None);
        assert_eq!(unmatched_response(7, 10, false, &abandoned), None);
        assert!(unmatched_response(7, 10, false, &abandoned).unwrap().contains("second response"));
    }
}
