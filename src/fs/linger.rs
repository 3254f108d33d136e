//! Deferred close (`closetimeo`, as the kernel cifs client has it): after the last release of a file, its SMB
//! handle stays open ("lingers") for up to the close timeout while its lease still caches reads and handles,
//! and a re-open it can serve takes it back without a round trip (`cat f; cat f` costs one CREATE).
//!
//! Other nodes must not notice. A handle kept with FILE_SHARE_DELETE would turn another node's `rm` into a
//! delete-pending name that stays visible (and blocks a create of the name and the `rmdir` of its directory)
//! until the handle closes, and Samba breaks no lease for that. So the handle that lingers is a new open made
//! at release time **without** FILE_SHARE_DELETE, under the lease key of the released one (it shares that
//! lease, so nothing is broken), sent together with the CLOSE of the released handle: one round trip, as a
//! release costs without deferred close. Another client's delete or rename then conflicts on share mode; the
//! server breaks our handle caching and holds that open until we answer; `LeaseWatch` closes the lingering
//! handle before the acknowledgment, and the delete or rename goes through.
//!
//! A lingering handle closes on a break that loses read or handle caching, before this node's own unlink,
//! rename or rmdir of it or an ancestor, before an open it cannot serve, when the timeout expires, and on
//! unmount or handover. It is not a kernel handle: it has no handle number and is not in the takeover journal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;

use super::handles::{can_share, OpenFile};

/// One lingering SMB handle.
struct Entry {
    /// Tells this entry from a later one of the same inode (the timer closes only its own).
    id: u64,
    open: Arc<OpenFile>,
    /// The share path it was opened by (unlink, rename and rmdir close what lies at or below theirs).
    path: String,
    lease_key: Option<[u8; 16]>,
}

/// The lingering handles of a filesystem, at most one per inode.
pub(crate) struct Lingering {
    rt: Handle,
    timeout: Duration,
    entries: Mutex<HashMap<u64, Entry>>,
    next_id: AtomicU64,
    /// Called with the lease key of every handle closed here (the lease is gone with it).
    on_close: Box<dyn Fn(Option<[u8; 16]>) + Send + Sync>,
}

impl Lingering {
    /// Handles linger for `timeout` (zero: deferred close is off); `on_close` hears of each one closed.
    pub fn new(rt: Handle, timeout: Duration, on_close: impl Fn(Option<[u8; 16]>) + Send + Sync + 'static) -> Self {
        Lingering { rt, timeout, entries: Mutex::default(), next_id: AtomicU64::new(1), on_close: Box::new(on_close) }
    }

    pub fn enabled(&self) -> bool {
        !self.timeout.is_zero()
    }

    /// Keeps `open` (opened by `path`) for the timeout; an older lingering handle of the same inode closes.
    pub async fn keep(self: &Arc<Self>, open: Arc<OpenFile>, path: String) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ino = open.ino;
        let lease_key = open.file().lease_key();
        let older = self.entries.lock().unwrap().insert(ino, Entry { id, open, path, lease_key });
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
    /// and `usable` accepts it (its lease still caches reads and handles).
    pub fn take_back(&self, ino: u64, flags: i32, usable: impl Fn(&OpenFile) -> bool) -> Option<Arc<OpenFile>> {
        let mut entries = self.entries.lock().unwrap();
        let e = entries.get(&ino)?;
        if !can_share(e.open.flags, flags) || !usable(&e.open) {
            return None;
        }
        entries.remove(&ino).map(|e| e.open)
    }

    /// Closes the lingering handle of `ino`, if any, and waits for the server's answer.
    pub async fn close_ino(&self, ino: u64) {
        let e = self.entries.lock().unwrap().remove(&ino);
        if let Some(e) = e {
            self.close(e).await;
        }
    }

    /// Closes the lingering handle holding lease `key`, if any (its lease is breaking).
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
    }

    /// Closes every lingering handle at `path` or below it (an unlink, rename or rmdir of it is coming).
    pub async fn close_at_or_below(&self, path: &str) {
        let below = |p: &str| p == path || path.is_empty() || p.strip_prefix(path).is_some_and(|r| r.starts_with('/'));
        self.close_where(|e| below(&e.path)).await;
    }

    /// Closes every lingering handle now and waits (a handover: the successor knows nothing of them).
    pub async fn close_all(&self) {
        self.close_where(|_| true).await;
    }

    /// Drops every lingering handle; their CLOSEs run on the runtime (the kernel connection is gone).
    pub fn drop_all(&self) {
        let all: Vec<Entry> = self.entries.lock().unwrap().drain().map(|(_, e)| e).collect();
        for e in all {
            (self.on_close)(e.lease_key);
            drop(e.open);
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

    async fn close(&self, e: Entry) {
        (self.on_close)(e.lease_key);
        OpenFile::close(e.open).await;
    }
}
