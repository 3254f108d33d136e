//! Cache coherency across nodes through SMB leases. Every file this filesystem opens holds a lease (read,
//! write and handle caching where the server grants it). When another node's open or write conflicts, the
//! server breaks the lease and waits for our acknowledgment; before it is sent (see `smb3::lease`):
//! - losing write caching drains the inode's write-behind queue, so the other node's open sees every write
//!   this node has acknowledged to its applications;
//! - losing read caching tells the [`Invalidator`] (the FUSE layer: the kernel's page cache and attributes of
//!   the inode), so no cached data outlives the other node's write.
//!
//! `cache=strict|loose|none` keep their meaning on top: strict still drops the page cache on each open, none
//! never caches; a break only adds invalidations.
//!
//! The state each lease is in (granted, then lowered by each break) is kept too: while it still caches reads
//! and handles, a re-open of the file is served from the open SMB handle (`handles`) without a round trip.
//! A break that takes read or handle caching away closes the file's lingering handle (`linger`) first: that is
//! what lets another node's delete, rename or write through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use futures_util::future::BoxFuture;
use smb3::wire::durable::lease_state;
use smb3::{LeaseBreak, LeaseBreakHandler};

use super::linger::Lingering;
use super::writeback::WriteQueue;

/// Drops what the kernel caches of an inode (its pages and attributes). Implemented by the FUSE layer with
/// the kernel's invalidation notifications; called before a lease break is acknowledged.
pub trait Invalidator: Send + Sync {
    fn invalidate(&self, ino: u64);
}

/// An open holding a lease: its inode, the inode's write-behind queue, and the lease state it holds now.
struct Leased {
    ino: u64,
    queue: Weak<WriteQueue>,
    state: u32,
}

/// The opens holding leases, by lease key.
type OpenLeases = HashMap<[u8; 16], Leased>;

/// The opens of this filesystem by lease key, and what a break of each must do.
#[derive(Default)]
pub(crate) struct LeaseWatch {
    opens: Mutex<OpenLeases>,
    invalidator: Mutex<Option<Arc<dyn Invalidator>>>,
    /// The lingering handles, closed by a break that loses read or handle caching.
    lingering: Mutex<Option<std::sync::Weak<Lingering>>>,
}

impl LeaseWatch {
    /// An open of inode `ino` holding lease `key` in `state` (as granted), with the inode's write-behind queue.
    pub fn opened(&self, key: Option<[u8; 16]>, ino: u64, queue: &Arc<WriteQueue>, state: u32) {
        if let Some(key) = key {
            self.opens.lock().unwrap().insert(key, Leased { ino, queue: Arc::downgrade(queue), state });
        }
    }

    /// Whether lease `key` still caches reads and handles: a re-open may then be served from its open (a
    /// change by another node would break it first, and the break lowers the state before anything else).
    pub fn caches_reads_and_handles(&self, key: Option<[u8; 16]>) -> bool {
        let wanted = lease_state::READ_CACHING | lease_state::HANDLE_CACHING;
        key.and_then(|k| self.opens.lock().unwrap().get(&k).map(|l| l.state & wanted == wanted)).unwrap_or(false)
    }

    /// Lease `key` is now held by one more open (a lingering handle's guard, under the same key) granted
    /// `state`: the kept state is lowered to it (never raised: a break that arrived meanwhile stays applied).
    /// Whether it still caches reads and handles.
    pub fn reopened(&self, key: [u8; 16], state: u32) -> bool {
        let wanted = lease_state::READ_CACHING | lease_state::HANDLE_CACHING;
        match self.opens.lock().unwrap().get_mut(&key) {
            Some(l) => {
                l.state &= state;
                l.state & wanted == wanted
            }
            None => false,
        }
    }

    pub fn set_lingering(&self, lingering: &Arc<Lingering>) {
        *self.lingering.lock().unwrap() = Some(Arc::downgrade(lingering));
    }

    pub fn closed(&self, key: Option<[u8; 16]>) {
        if let Some(key) = key {
            self.opens.lock().unwrap().remove(&key);
        }
    }

    pub fn set_invalidator(&self, invalidator: Arc<dyn Invalidator>) {
        *self.invalidator.lock().unwrap() = Some(invalidator);
    }

    /// Drops the kernel's cached pages of `ino` now (a lock was just granted: what another node wrote under
    /// its lock must be read from the server, as NFS does on a lock, even when no lease is left to break).
    pub async fn invalidate(&self, ino: u64) {
        let invalidator = self.invalidator.lock().unwrap().clone();
        if let Some(i) = invalidator {
            let _ = tokio::task::spawn_blocking(move || i.invalidate(ino)).await;
        }
    }
}

impl LeaseBreakHandler for LeaseWatch {
    fn lease_breaking(&self, event: LeaseBreak) -> BoxFuture<'static, ()> {
        let open = self.opens.lock().unwrap().get_mut(&event.key).map(|l| {
            // Lowered at once: from now on no re-open is served from this open on the strength of it.
            l.state = event.new;
            (l.ino, l.queue.clone())
        });
        let invalidator = self.invalidator.lock().unwrap().clone();
        let rh = lease_state::READ_CACHING | lease_state::HANDLE_CACHING;
        let loses_read_or_handle = event.current & rh != 0 && event.new & rh != event.current & rh;
        let lingering = self.lingering.lock().unwrap().as_ref().and_then(std::sync::Weak::upgrade);
        Box::pin(async move {
            if loses_read_or_handle {
                // Before the acknowledgment: the open the server holds back (a delete, a rename, a write) finds
                // the handle closed.
                if let Some(l) = lingering {
                    l.close_lease(event.key).await;
                }
            }
            let Some((ino, queue)) = open else { return };
            if event.loses_write_caching() {
                if let Some(q) = queue.upgrade() {
                    q.drain().await;
                }
            }
            if event.loses_read_caching() {
                tracing::debug!(ino, path = %format!("/{}", event.path), "lease break: invalidating cached data");
                if let Some(i) = invalidator {
                    // A write to /dev/fuse that the kernel may hold up: off the runtime's threads.
                    let _ = tokio::task::spawn_blocking(move || i.invalidate(ino)).await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lease_state::{HANDLE_CACHING as H, READ_CACHING as R, WRITE_CACHING as W};

    fn lease_break(current: u32, new: u32) -> LeaseBreak {
        LeaseBreak { path: "f".into(), key: [1; 16], current, new }
    }

    #[tokio::test]
    async fn a_break_lowers_the_state_before_its_handler_runs() {
        let watch = LeaseWatch::default();
        let queue = Arc::new(WriteQueue::default());
        let key = Some([1; 16]);
        watch.opened(key, 7, &queue, R | W | H);
        assert!(watch.caches_reads_and_handles(key));
        // Losing write caching leaves reads and handles cached.
        watch.lease_breaking(lease_break(R | W | H, R | H)).await;
        assert!(watch.caches_reads_and_handles(key));
        // Losing read caching: no re-open is served from the open from the moment the break arrives.
        let handling = watch.lease_breaking(lease_break(R | H, H));
        assert!(!watch.caches_reads_and_handles(key));
        handling.await;
        // A lease never granted, an unknown key, a closed open: nothing to serve from.
        watch.opened(Some([2; 16]), 8, &queue, 0);
        assert!(!watch.caches_reads_and_handles(Some([2; 16])));
        assert!(!watch.caches_reads_and_handles(Some([3; 16])) && !watch.caches_reads_and_handles(None));
        watch.opened(Some([4; 16]), 9, &queue, R | H);
        watch.closed(Some([4; 16]));
        assert!(!watch.caches_reads_and_handles(Some([4; 16])));
    }
}
