//! The request loop of one FUSE connection. /dev/fuse is non-blocking and read through [`AsyncFd`]; each
//! read(2) returns exactly one request, which is decoded and served by a task on the runtime that owns the
//! SMB connection; each reply is one write(2) (header and payload gathered with writev, so a 1 MiB read is
//! not copied again).
//!
//! The loops of every mount run on one thread of their own ([`loop_runtime`]), not on the SMB runtime and not
//! one thread per mount: code on the SMB runtime that makes a blocking call on a mount (a statfs of a mount
//! point by a health check, a test's `fs::write` inside `block_on`) parks a worker until the answer comes,
//! and a loop queued behind that worker would never read the request: a deadlock.
//!
//! Order: the kernel's order matters only for writes (write-behind queues them per inode), so a WRITE is
//! queued by the loop itself before it reads the next request; everything else runs concurrently.
//! INTERRUPT ends a waiting byte-range lock (SETLKW, which may wait for another node as long as it likes:
//! its SMB LOCK is cancelled and the request answered EINTR); any other interrupted request is still
//! answered when its operation ends (a reply to a request the kernel gave up on is refused with ENOENT,
//! which is expected).
//!
//! Takeover: a session can start on a connection another process initialised ([`Session::new`] with the
//! INIT it negotiated), and [`Session::resend`] asks the kernel to queue again what the old process read and
//! never answered. [`Session::stop`] is the graceful half: stop reading, answer what is in flight.

use std::collections::HashMap;
use std::fs::File;
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;

use std::sync::OnceLock;

use super::dispatch::{self, MAX_IO};
use super::wire::{self, InHeader, InitOut, Request};
use crate::fs::ops::SmbFs;

/// One read(2) must be able to take the largest request: a WRITE of max_write plus its headers (the kernel
/// refuses smaller buffers with EINVAL).
const BUFFER_LEN: usize = MAX_IO as usize + 64 * 1024;

/// The runtime of every session's request loop: a current-thread runtime driven by one thread for the
/// process, started on first use. Its loops only read, decode, queue writes and hand requests over.
pub fn loop_runtime() -> &'static tokio::runtime::Handle {
    static LOOPS: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    LOOPS.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("smb3-csi-fuse")
            .build()
            .expect("building the FUSE loop runtime");
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("smb3-csi-fuse".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .expect("starting the FUSE loop thread");
        handle
    })
}

/// A FUSE connection served by [`SmbFs`].
pub struct Session {
    dev: AsyncFd<File>,
    fs: Arc<SmbFs>,
    /// Set once the kernel has taken our INIT reply (what it applies from it, the readahead among them, is
    /// in place then), or from the start for a connection taken over initialised.
    init: Mutex<Option<InitOut>>,
    in_flight: AtomicUsize,
    idle: Notify,
    stop: Notify,
    ended: AtomicBool,
    /// Waiting lock requests (SETLKW) by unique, fired by the kernel's INTERRUPT of that request.
    interrupts: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<()>>>,
}

/// Counts a request from its read to its reply.
struct InFlight(Arc<Session>);

impl InFlight {
    fn new(s: &Arc<Session>) -> InFlight {
        s.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(s.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

fn is(e: &std::io::Error, errno: Errno) -> bool {
    e.raw_os_error() == Some(errno as i32)
}

impl Session {
    /// A session on `dev` (an open /dev/fuse). `init`: the parameters of a connection already initialised by
    /// another process (no INIT will come); `None` for a fresh mount, whose first request is INIT. The fd is
    /// registered with [`loop_runtime`]; [`Session::start`] runs the loop there.
    pub fn new(fs: Arc<SmbFs>, dev: OwnedFd, init: Option<InitOut>) -> std::io::Result<Arc<Session>> {
        let _loops = loop_runtime().enter();
        let flags = fcntl(dev.as_raw_fd(), FcntlArg::F_GETFL)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(dev.as_raw_fd(), FcntlArg::F_SETFL(flags))?;
        // `AsyncFd::new` is deprecated in favour of an `unsafe` constructor whose contract is that the fd stays
        // open for the AsyncFd's life: it does, the `File` owns it and the AsyncFd owns the `File`. The crate
        // forbids unsafe code, so the safe (deprecated) constructor it is.
        #[allow(deprecated)]
        let dev = AsyncFd::new(File::from(dev))?;
        let session = Arc::new(Session {
            dev,
            fs,
            init: Mutex::new(init),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            stop: Notify::new(),
            ended: AtomicBool::new(false),
            interrupts: Mutex::new(HashMap::new()),
        });
        // Lease breaks drop the kernel's caches of the file through this session (see `fs::lease`).
        session.fs.set_invalidator(Arc::new(session.notifier()));
        Ok(session)
    }

    /// The /dev/fuse connection (dup it to hand the mount to another process).
    pub fn device(&self) -> BorrowedFd<'_> {
        self.dev.get_ref().as_fd()
    }

    /// The filesystem served.
    pub fn fs(&self) -> &Arc<SmbFs> {
        &self.fs
    }

    /// The INIT parameters, once negotiated (or taken over).
    pub fn init(&self) -> Option<InitOut> {
        *self.init.lock().unwrap()
    }

    /// Whether the kernel has applied the INIT reply (or the connection was taken over initialised).
    pub fn is_initialised(&self) -> bool {
        self.init().is_some()
    }

    /// Whether the kernel connection is gone (unmounted or aborted).
    pub fn has_ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }

    /// A handle that sends cache invalidations to the kernel.
    pub fn notifier(self: &Arc<Self>) -> Notifier {
        Notifier { session: Arc::downgrade(self) }
    }

    /// FUSE_NOTIFY_RESEND: the kernel queues again every request it handed to a server and has not had
    /// answered (Linux 6.9+). An older kernel refuses the unknown notification; its pending requests stay lost.
    pub fn resend(&self) -> std::io::Result<()> {
        self.write_all(&[&wire::notify_resend()])
    }

    /// Runs [`Session::run`] on [`loop_runtime`].
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<std::io::Result<()>> {
        loop_runtime().spawn(self.clone().run())
    }

    /// Serves requests until the kernel connection ends or [`Session::stop`] is called.
    pub async fn run(self: Arc<Self>) -> std::io::Result<()> {
        let mut buf = vec![0u8; BUFFER_LEN];
        loop {
            let n = tokio::select! {
                biased;
                _ = self.stop.notified() => return Ok(()),
                r = self.read(&mut buf) => match r {
                    Ok(n) => n,
                    Err(e) if is(&e, Errno::ENODEV) || is(&e, Errno::ECONNABORTED) => {
                        self.end();
                        return Ok(());
                    }
                    Err(e) => {
                        self.end();
                        return Err(e);
                    }
                },
            };
            self.handle(&buf[..n]).await;
        }
    }

    /// Stops reading requests and waits until every request read has been answered.
    pub async fn stop(&self) {
        self.stop.notify_one();
        loop {
            let idle = self.idle.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }

    fn end(&self) {
        if !self.ended.swap(true, Ordering::SeqCst) {
            // The kernel connection is gone: close what the kernel left open.
            self.fs.close_all();
        }
    }

    /// One request (one read(2)); EAGAIN waits for readiness, ENOENT (a request interrupted before it was
    /// read) and EINTR read again. An aborted or unmounted connection polls as EPOLLERR only (not readable),
    /// so error readiness wakes the read too, which then fails with ENODEV.
    async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut ready = self.dev.ready(Interest::READABLE | Interest::ERROR).await?;
            match ready.try_io(|dev| dev.get_ref().read(buf)) {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if is(&e, Errno::ENOENT) || e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes one message (gathered from `parts`) with one write(2).
    fn write_all(&self, parts: &[&[u8]]) -> std::io::Result<()> {
        let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let n = self.dev.get_ref().write_vectored(&slices)?;
        if n != total {
            return Err(std::io::Error::other(format!("short write to /dev/fuse: {n} of {total} bytes")));
        }
        Ok(())
    }

    /// Sends the reply to request `unique`.
    fn reply(&self, unique: u64, result: Result<bytes::Bytes, Errno>) {
        let r = match &result {
            Ok(payload) => self.write_all(&[&wire::out_header(unique, 0, payload.len()), payload]),
            Err(e) => self.write_all(&[&wire::out_header(unique, -(*e as i32), 0)]),
        };
        match r {
            Ok(()) => {}
            // The request was interrupted and the kernel no longer waits for it.
            Err(e) if is(&e, Errno::ENOENT) => {}
            Err(e) if is(&e, Errno::ENODEV) => self.end(),
            Err(e) => tracing::warn!(unique, error = %e, "FUSE reply not delivered"),
        }
    }

    async fn handle(self: &Arc<Self>, msg: &[u8]) {
        let (h, req) = match wire::decode(msg) {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable FUSE request");
                // Answer it if the header is readable, so its caller does not hang.
                if let Ok(h) = wire::decode_header(msg) {
                    if !matches!(h.opcode, wire::opcode::FORGET | wire::opcode::BATCH_FORGET | wire::opcode::INTERRUPT)
                    {
                        self.reply(h.unique, Err(Errno::EIO));
                    }
                }
                return;
            }
        };
        match req {
            Request::Init(offer) => self.init_reply(&h, &offer),
            Request::Forget { nlookup } => self.fs.forget(h.nodeid, nlookup),
            Request::BatchForget { nodes } => {
                for (ino, n) in nodes {
                    self.fs.forget(ino, n);
                }
            }
            Request::Interrupt { unique } => {
                if let Some(tx) = self.interrupts.lock().unwrap().remove(&unique) {
                    let _ = tx.send(());
                }
            }
            Request::Write { fh, offset, data, .. } => self.write(&h, fh, offset, data).await,
            Request::Release { fh, .. } => {
                // Begun before the next request is read: the kernel does not wait for a release before the
                // application's next call, and an unlink right after close(2) must find it (see `fs::linger`).
                let release = self.fs.begin_release(fh);
                let guard = InFlight::new(self);
                self.fs.runtime().spawn(async move {
                    let s = &guard.0;
                    if let Some(r) = release {
                        s.fs.finish_release(r).await;
                    }
                    s.reply(h.unique, Ok(bytes::Bytes::new()));
                });
            }
            Request::Setlk { lk, sleep: true } => {
                // Registered before the next request is read, so its INTERRUPT finds it.
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.interrupts.lock().unwrap().insert(h.unique, tx);
                let guard = InFlight::new(self);
                tokio::spawn(async move {
                    let s = &guard.0;
                    let interrupted = async {
                        // A dropped sender (the request finished) is no interrupt.
                        if rx.await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    };
                    let r = dispatch::setlk(&s.fs, &h, &lk, true, interrupted).await;
                    s.interrupts.lock().unwrap().remove(&h.unique);
                    s.reply(h.unique, r.map(bytes::Bytes::from));
                });
            }
            req => {
                let guard = InFlight::new(self);
                self.fs.runtime().spawn(async move {
                    let s = &guard.0;
                    let r = dispatch::dispatch(&s.fs, &h, req).await;
                    s.reply(h.unique, r);
                });
            }
        }
    }

    /// Queued here, in the kernel's order (and in the takeover journal), answered at once, sent by a task
    /// (write-behind). The in-flight count covers the send, so a graceful stop waits for it.
    async fn write(self: &Arc<Self>, h: &InHeader, fh: u64, offset: u64, data: Vec<u8>) {
        let guard = InFlight::new(self);
        let queued = match self.fs.write(fh, offset, data).await {
            Ok(w) => w,
            Err(e) => return self.reply(h.unique, Err(e)),
        };
        self.reply(h.unique, Ok(wire::write_out(queued.len() as u32).into()));
        self.fs.runtime().spawn(async move {
            queued.complete().await;
            drop(guard);
        });
    }

    fn init_reply(&self, h: &InHeader, offer: &wire::InitIn) {
        match dispatch::negotiate(offer, self.fs.config().byte_range_locks) {
            Ok(out) => {
                tracing::info!(
                    kernel = %format!("{}.{}", offer.major, offer.minor),
                    resend = dispatch::kernel_resends(offer.minor),
                    max_write = out.max_write,
                    max_readahead = out.max_readahead,
                    "FUSE connection initialised"
                );
                if !dispatch::kernel_resends(offer.minor) {
                    tracing::warn!(
                        kernel_minor = offer.minor,
                        "kernel FUSE protocol before 7.40 (Linux 6.9): no FUSE_NOTIFY_RESEND, so a takeover after \
                         this process dies loses the requests it had read (their callers hang until the mount is \
                         aborted)"
                    );
                }
                self.fs.record_init(out);
                self.reply(h.unique, Ok(wire::init_out(&out, offer.minor).into()));
                // The kernel applies the reply inside the write(2) that delivered it.
                *self.init.lock().unwrap() = Some(out);
            }
            Err(e) => {
                tracing::error!(major = offer.major, minor = offer.minor, "unsupported FUSE protocol version");
                self.reply(h.unique, Err(e));
            }
        }
    }
}

/// Cache invalidations for the kernel (for lease breaks and other changes seen on the server). Holds the
/// session weakly: after the session ends every call is a no-op.
#[derive(Clone)]
pub struct Notifier {
    session: Weak<Session>,
}

/// What a lease break drops: the inode's cached pages and its attributes.
impl crate::fs::Invalidator for Notifier {
    fn invalidate(&self, ino: u64) {
        if let Err(e) = self.inval_inode(ino, 0, 0) {
            tracing::debug!(ino, error = %e, "FUSE invalidation not delivered");
        }
    }
}

impl Notifier {
    fn send(&self, msg: &[u8]) -> std::io::Result<()> {
        let Some(s) = self.session.upgrade() else { return Ok(()) };
        match s.write_all(&[msg]) {
            // Nothing cached for it: nothing to drop.
            Err(e) if is(&e, Errno::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// Drops the cached data of node `ino` from `offset` for `len` bytes (0: to the end; a negative offset
    /// drops only the attributes).
    pub fn inval_inode(&self, ino: u64, offset: i64, len: i64) -> std::io::Result<()> {
        self.send(&wire::notify_inval_inode(ino, offset, len))
    }

    /// Drops the cached entry `name` of directory `parent`. Not from inside a request on that directory (the
    /// kernel would wait for itself).
    pub fn inval_entry(&self, parent: u64, name: &std::ffi::OsStr) -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        self.send(&wire::notify_inval_entry(parent, name.as_bytes()))
    }
}
