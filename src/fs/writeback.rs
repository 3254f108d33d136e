//! Write-behind: a FUSE write is acknowledged once it is queued, and the SMB
//! write runs in the background, so a sequential writer keeps several writes
//! in flight instead of one. Per inode, so every handle of a file sees the
//! same order: a new write waits for any in-flight write it overlaps, and
//! reads, attribute queries, truncates, flush, fsync and close wait for the
//! writes they depend on. A failed background write is reported by the next
//! write, flush (close) or fsync of the file, as with NFS and kernel cifs.

use std::sync::{Arc, Mutex};

use super::Errno;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Writes of one inode that may be in flight at once.
pub const WRITE_BEHIND: usize = 8;

#[derive(Default)]
struct State {
    /// Byte ranges `[start, end)` being written.
    ranges: Vec<(u64, u64)>,
    /// The first error of a background write not yet reported.
    error: Option<Errno>,
}

pub struct WriteQueue {
    slots: Arc<Semaphore>,
    state: Mutex<State>,
    changed: Notify,
}

impl Default for WriteQueue {
    fn default() -> Self {
        WriteQueue { slots: Arc::new(Semaphore::new(WRITE_BEHIND)), state: Mutex::default(), changed: Notify::new() }
    }
}

/// One queued write; dropping it (after the SMB write) frees its slot and range.
pub struct Ticket {
    queue: Arc<WriteQueue>,
    range: (u64, u64),
    _slot: OwnedSemaphorePermit,
}

impl Ticket {
    /// Records the outcome of the background write.
    pub fn finish(self, result: Result<(), Errno>) {
        let mut st = self.queue.state.lock().unwrap();
        if let Err(e) = result {
            st.error.get_or_insert(e);
        }
        if let Some(i) = st.ranges.iter().position(|r| *r == self.range) {
            st.ranges.swap_remove(i);
        }
        drop(st);
        self.queue.changed.notify_waiters();
    }
}

impl WriteQueue {
    fn overlapping(&self, start: u64, end: u64) -> bool {
        self.state.lock().unwrap().ranges.iter().any(|&(s, e)| s < end && start < e)
    }

    /// Waits until no in-flight write overlaps `[start, end)`.
    pub async fn wait_range(&self, start: u64, end: u64) {
        loop {
            let notified = self.changed.notified();
            if !self.overlapping(start, end) {
                return;
            }
            notified.await;
        }
    }

    /// Waits until every queued write has finished.
    pub async fn drain(&self) {
        self.wait_range(0, u64::MAX).await;
    }

    /// Takes the pending background-write error, if any.
    pub fn take_error(&self) -> Option<Errno> {
        self.state.lock().unwrap().error.take()
    }

    /// Queues a write of `len` bytes at `offset`: waits for a free slot and for
    /// overlapping writes, then registers the range. Call in kernel order.
    pub async fn enqueue(self: &Arc<Self>, offset: u64, len: u64) -> Ticket {
        let end = offset.saturating_add(len);
        self.wait_range(offset, end).await;
        let slot = self.slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        self.state.lock().unwrap().ranges.push((offset, end));
        Ticket { queue: self.clone(), range: (offset, end), _slot: slot }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overlapping_writes_wait_and_errors_are_reported_once() {
        let q = Arc::new(WriteQueue::default());
        let a = q.enqueue(0, 10).await;
        let b = q.enqueue(10, 10).await;
        assert!(q.overlapping(5, 6) && q.overlapping(15, 16) && !q.overlapping(20, 30));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.enqueue(5, 2).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "an overlapping write must wait");
        a.finish(Err(Errno::ENOSPC));
        let c = waiter.await.unwrap();
        b.finish(Ok(()));
        c.finish(Ok(()));
        q.drain().await;
        assert_eq!(q.take_error(), Some(Errno::ENOSPC));
        assert_eq!(q.take_error(), None);
    }

    #[tokio::test]
    async fn at_most_write_behind_in_flight() {
        let q = Arc::new(WriteQueue::default());
        let mut tickets = Vec::new();
        for i in 0..WRITE_BEHIND as u64 {
            tickets.push(q.enqueue(i * 100, 10).await);
        }
        let q2 = q.clone();
        let extra = tokio::spawn(async move { q2.enqueue(10_000, 1).await });
        tokio::task::yield_now().await;
        assert!(!extra.is_finished());
        tickets.pop().unwrap().finish(Ok(()));
        extra.await.unwrap().finish(Ok(()));
        for t in tickets {
            t.finish(Ok(()));
        }
        q.drain().await;
    }
}
