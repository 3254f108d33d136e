//! Deferred close (`closetimeo`, as the kernel cifs client has it): after the last release of a file, its SMB
//! handle stays open ("lingers") for up to the close timeout while its lease still caches reads and handles,
//! and a re-open it can serve takes it back without a round trip (`cat f; cat f` costs one CREATE).
//!
//! Other nodes must not notice. The released handle was opened with FILE_SHARE_DELETE (every open of this
//! node is, so an unlink of an open file works as on a local filesystem). Kept alone, it would turn another
//! node's `rm` into a delete-pending name that stays visible (and blocks a create of the name and the `rmdir`
//! of its directory) until it closes, and Samba breaks no lease for that. So a handle lingers together with a
//! **guard**: a second open of the file made at release time **without** FILE_SHARE_DELETE, under the lease
//! key of the released one (it shares that lease, so nothing is broken). A release then costs the guard's
//! CREATE instead of the CLOSE: one round trip, as without deferred close. Another client's delete or rename
//! conflicts with the guard on share mode; the server breaks our handle caching and holds that open until we
//! answer; `LeaseWatch` closes both handles before the acknowledgment, and the delete or rename goes through.
//!
//! A re-open takes back the released handle itself, so what the application holds shares delete as any other
//! open; the guard's CLOSE is sent in the background. The kernel does not wait for a release before the
//! application's next call (`close(); unlink()` arrive together), so a release that may linger is announced
//! before its first await, and this node's own unlink, rename and truncating open wait for announced guards
//! to be open (then close them) and for guards still closing: a guard would stand in their way. A lease break
//! waits only for guards closing: a guard's CREATE in flight may be held by the server until the break is
//! answered; it finds the lease broken when it returns and closes.
//!
//! A lingering handle closes on a break that loses read or handle caching, before this node's own unlink,
//! rename or rmdir of it or an ancestor, before an open it cannot serve, when the timeout expires, and on
//! unmount or handover. It is not a kernel handle: it has no handle number and is not in the takeover journal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use smb3 as smb;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::handles::{can_share, OpenFile};

/// One lingering SMB handle and its guard.
struct Entry {
    /// Tells this entry from a later one of the same inode (the timer closes only its own).
    id: u64,
    open: Arc<OpenFile>,
    /// The open without FILE_SHARE_DELETE that makes another client's delete or rename break the lease.
    guard: smb::File,
    /// The share path it was opened by (unlink, rename and rmdir close what lies at or below theirs).
    path: String,
    lease_key: Option<[u8; 16]>,
}

/// A guard's CREATE or CLOSE still on its way.
struct InFlight {
    path: String,
    lease_key: Option<[u8; 16]>,
    /// A CLOSE (of a taken-back handle's guard), not a CREATE.
    closing: bool,
    done: Shared<BoxFuture<'static, ()>>,
}

/// A release that may leave a lingering handle, announced before its first await: this node's own unlink,
/// rename or truncating open of the path waits until it is dropped (the guard is open and kept, or not made).
pub(crate) struct Announced {
    /// Dropped with it, which is what the waiters hear.
    _done: oneshot::Sender<()>,
}

/// The lingering handles of a filesystem, at most one per inode.
pub(crate) struct Lingering {
    rt: Handle,
    timeout: Duration,
    /// At most this many entries (and releases announced) at once.
    max: usize,
    entries: Mutex<HashMap<u64, Entry>>,
    /// Guards whose CREATE (announced releases) or CLOSE (taken-back handles) has not been answered, by id.
    in_flight: Mutex<HashMap<u64, InFlight>>,
    next_id: AtomicU64,
    /// Called with the lease key of every handle closed here (the lease is gone with it).
    on_close: Box<dyn Fn(Option<[u8; 16]>) + Send + Sync>,
}

impl Lingering {
    /// Up to `max` handles linger for `timeout` (zero: deferred close is off); `on_close` hears of each one
    /// closed.
    pub fn new(
        rt: Handle,
        timeout: Duration,
        max: usize,
        on_close: impl Fn(Option<[u8; 16]>) + Send + Sync + 'static,
    ) -> Self {
        Lingering {
            rt,
            timeout,
            max,
            entries: Mutex::default(),
            in_flight: Mutex::default(),
            next_id: AtomicU64::new(1),
            on_close: Box::new(on_close),
        }
    }

    /// Whether a release may linger: deferred close is on and fewer than the most handles linger or are on
    /// their way to.
    pub fn has_room(&self) -> bool {
        if self.timeout.is_zero() {
            return false;
        }
        let announced =
            self.in_flight.lock().unwrap().values().filter(|g| !g.closing && g.done.peek().is_none()).count();
        self.entries.lock().unwrap().len() + announced < self.max
    }

    /// A release of the SMB handle at `path` under lease `lease_key` that may linger: until the returned value
    /// is dropped, this node's own changes of the path wait for it (see the module doc).
    pub fn announce(&self, path: &str, lease_key: Option<[u8; 16]>) -> Announced {
        let (tx, rx) = oneshot::channel::<()>();
        let done = rx.map(|_| ()).boxed().shared();
        self.track(InFlight { path: path.to_string(), lease_key, closing: false, done: done.clone() });
        // Driven to the end so that it is seen done (and forgotten) even when nobody waits for it.
        self.rt.spawn(done);
        Announced { _done: tx }
    }

    /// Keeps `open` (opened by `path`) and its `guard` for the timeout; an older lingering handle of the same
    /// inode closes.
    pub async fn keep(self: &Arc<Self>, open: Arc<OpenFile>, guard: smb::File, path: String) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ino = open.ino;
        let lease_key = open.file().lease_key();
        let older = self.entries.lock().unwrap().insert(ino, Entry { id, open, guard, path, lease_key });
        if let Some(older) = older {
            self.close(older).await;
        }
        let this = Arc::downgrade(self);
        let timeout = self.timeout;
        self.rt.spawn(async move {
            tokio::time::sleep(timeout).await;
            let Some(this) = this.upgrade() else { return };
            let expired = {
                let mut entries = this.entries.lock().unwrap();
                match entries.get(&ino) {
                    Some(e) if e.id == id => entries.remove(&ino),
                    _ => None,
                }
            };
            if let Some(e) = expired {
                tracing::debug!(path = %format!("/{}", e.path), "closetimeo expired: closing the lingering handle");
                this.close(e).await;
            }
        });
    }

    /// The lingering handle of `ino`, taken back for an open with `flags` when it can serve it ([`can_share`])
    /// and `usable` accepts it (its lease still caches reads and handles). Its guard closes in the background.
    pub fn take_back(&self, ino: u64, flags: i32, usable: impl Fn(&OpenFile) -> bool) -> Option<Arc<OpenFile>> {
        let e = {
            let mut entries = self.entries.lock().unwrap();
            let e = entries.get(&ino)?;
            if !can_share(e.open.flags, flags) || !usable(&e.open) {
                return None;
            }
            entries.remove(&ino)?
        };
        let Entry { open, guard, path, lease_key, .. } = e;
        let done = close_file(guard).boxed().shared();
        self.track(InFlight { path, lease_key, closing: true, done: done.clone() });
        self.rt.spawn(done);
        Some(open)
    }

    /// Closes the lingering handle of `ino`, if any, and waits for the server's answer.
    pub async fn close_ino(&self, ino: u64) {
        let e = self.entries.lock().unwrap().remove(&ino);
        if let Some(e) = e {
            self.close(e).await;
        }
    }

    /// Closes the lingering handle holding lease `key`, if any (its lease is breaking), and waits for a guard
    /// of that lease still closing.
    pub async fn close_lease(&self, key: [u8; 16]) {
        let e = {
            let mut entries = self.entries.lock().unwrap();
            let ino = entries.iter().find(|(_, e)| e.lease_key == Some(key)).map(|(ino, _)| *ino);
            ino.and_then(|ino| entries.remove(&ino))
        };
        if let Some(e) = e {
            tracing::debug!(path = %format!("/{}", e.path), "lease break: closing the lingering handle");
            self.close(e).await;
        }
        self.settled(|g| g.closing && g.lease_key == Some(key)).await;
    }

    /// Closes every lingering handle at `path` or below it, after the releases announced there, and waits for
    /// the guards there still closing (an unlink, rename, rmdir or truncating open of it is coming).
    pub async fn close_at_or_below(&self, path: &str) {
        let below = |p: &str| p == path || path.is_empty() || p.strip_prefix(path).is_some_and(|r| r.starts_with('/'));
        self.settled(|g| !g.closing && below(&g.path)).await;
        self.close_where(|e| below(&e.path)).await;
        self.settled(|g| below(&g.path)).await;
    }

    /// Closes every lingering handle now and waits (a handover: the successor knows nothing of them).
    pub async fn close_all(&self) {
        self.settled(|g| !g.closing).await;
        self.close_where(|_| true).await;
        self.settled(|_| true).await;
    }

    /// Drops every lingering handle; their CLOSEs run on the runtime (the kernel connection is gone).
    pub fn drop_all(&self) {
        let all: Vec<Entry> = self.entries.lock().unwrap().drain().map(|(_, e)| e).collect();
        for e in all {
            (self.on_close)(e.lease_key);
            drop(e.open);
            drop(e.guard);
        }
    }

    /// How many handles linger (for tests and metrics).
    pub fn count(&self) -> usize {
        self.entries.lock().unwrap().len()
    }

    async fn close_where(&self, matches: impl Fn(&Entry) -> bool) {
        let closing: Vec<Entry> = {
            let mut entries = self.entries.lock().unwrap();
            let inos: Vec<u64> = entries.iter().filter(|(_, e)| matches(e)).map(|(ino, _)| *ino).collect();
            inos.into_iter().filter_map(|ino| entries.remove(&ino)).collect()
        };
        futures_util::future::join_all(closing.into_iter().map(|e| self.close(e))).await;
    }

    fn track(&self, op: InFlight) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut in_flight = self.in_flight.lock().unwrap();
        in_flight.retain(|_, g| g.done.peek().is_none());
        in_flight.insert(id, op);
    }

    /// Waits for every guard CREATE or CLOSE on its way that `matches`.
    async fn settled(&self, matches: impl Fn(&InFlight) -> bool) {
        let waits: Vec<_> = {
            let mut in_flight = self.in_flight.lock().unwrap();
            in_flight.retain(|_, g| g.done.peek().is_none());
            in_flight.values().filter(|g| matches(g)).map(|g| g.done.clone()).collect()
        };
        futures_util::future::join_all(waits).await;
    }

    async fn close(&self, e: Entry) {
        (self.on_close)(e.lease_key);
        tokio::join!(OpenFile::close(e.open), close_file(e.guard));
    }
}

/// Closes `f` and waits for the server's answer; a failure is logged (the connection's loss closes it anyway).
async fn close_file(f: smb::File) {
    let path = f.path().to_string();
    if let Err(e) = f.close().await {
        tracing::warn!(path = %format!("/{path}"), error = %e, "closing SMB handle failed");
    }
}
