//! Byte-range locks on an open (SMB2 LOCK, MS-SMB2 2.2.26, 3.2.4.19).
//!
//! SMB locks belong to the open (the handle), are mandatory on their range (a READ or WRITE through another
//! open that overlaps an exclusive lock fails with STATUS_FILE_LOCK_CONFLICT) and cannot be split, merged or
//! converted: an unlock names exactly a range locked before. POSIX semantics are built above this (see the
//! `fs::locks` module of the driver).
//!
//! Reconnects: every LOCK carries a LockSequence (index 1..=64, a 4-bit number), so a LOCK sent again after a
//! lost connection on a reclaimed durable open is recognised by the server as a replay instead of conflicting
//! with the lock it already granted. A durable open that is reclaimed keeps its locks on the server; an open
//! that had to be reopened by path has lost them (the server dropped them with the old open), and the first
//! lock operation after that reports it with a warning in the log.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::File;
use crate::conn::Outgoing;
use crate::error::{Error, Result};
use crate::recovery::{is_connection_loss, is_session_loss};
use crate::wire::io::{lock_flags, LockElement, LockRequest};
use crate::wire::{Command, NtStatus};

/// Shared (read) or exclusive (write) lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockKind {
    Shared,
    Exclusive,
}

impl LockKind {
    fn flags(self) -> u32 {
        match self {
            LockKind::Shared => lock_flags::SHARED,
            LockKind::Exclusive => lock_flags::EXCLUSIVE,
        }
    }
}

/// Whether the server may answer a conflicting lock request with "not granted" at once.
fn is_lock_conflict(status: NtStatus) -> bool {
    matches!(status, NtStatus::LOCK_NOT_GRANTED | NtStatus::FILE_LOCK_CONFLICT)
}

/// The LockSequence value of the `n`th LOCK on an open (n from 0): the index cycles through 1..=64 and the
/// 4-bit number counts how often that index was used (MS-SMB2 2.2.26: number in the low 4 bits, index above).
pub(crate) fn lock_sequence(n: u64) -> u32 {
    let index = (n % 64) as u32 + 1;
    let number = ((n / 64) % 16) as u32;
    (index << 4) | number
}

impl File {
    fn next_lock_sequence(&self) -> u32 {
        lock_sequence(self.lock_requests.fetch_add(1, Ordering::Relaxed))
    }

    async fn lock_request(&self, what: &str, element: LockElement) -> Result<()> {
        let sequence = self.next_lock_sequence();
        let resp = self
            .request(Command::Lock, 0, &|file_id, m| {
                LockRequest { lock_sequence: sequence, file_id, locks: vec![element.clone()] }.encode(m)
            })
            .await?;
        match resp.header.status {
            s if s.is_success() => Ok(()),
            s if is_lock_conflict(s) => Err(Error::LockConflict { path: self.op(what) }),
            status => Err(Error::Status { op: self.op(what), status }),
        }
    }

    /// Locks `len` bytes at `offset` or fails at once with [`Error::LockConflict`] when another open holds an
    /// overlapping lock that conflicts (any lock for `Exclusive`, an exclusive one for `Shared`).
    pub async fn try_lock(&self, offset: u64, len: u64, kind: LockKind) -> Result<()> {
        let element = LockElement { offset, length: len, flags: kind.flags() | lock_flags::FAIL_IMMEDIATELY };
        self.lock_request("lock", element).await
    }

    /// Releases exactly a range locked before on this open.
    pub async fn unlock(&self, offset: u64, len: u64) -> Result<()> {
        self.lock_request("unlock", LockElement { offset, length: len, flags: lock_flags::UNLOCK }).await
    }

    /// Locks `len` bytes at `offset`, waiting as long as another open holds a conflicting lock. The server
    /// answers STATUS_PENDING and grants it later; when `cancelled` resolves first an SMB2 CANCEL goes out and
    /// this returns [`Error::Cancelled`] (a grant that raced the cancel is undone). A connection lost while
    /// waiting is waited out like any request, and the wait starts again on the new connection.
    ///
    /// The server's wakeup is not relied on alone: Samba 4.17 can miss the release of the conflicting lock
    /// (the holder's CLOSE) and then keeps the request pending forever, with nothing left to wake it. So
    /// a wait that lasts [`RECHECK_FIRST`] (doubling up to [`RECHECK_MAX`]) is cancelled by us and the
    /// LOCK sent again, which the server judges afresh; see [`wait_outcome`].
    pub async fn lock_wait(
        &self,
        offset: u64,
        len: u64,
        kind: LockKind,
        cancelled: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        let element = LockElement { offset, length: len, flags: kind.flags() };
        let mut sequence = self.next_lock_sequence();
        let link = &self.inner.tree.inner.link;
        let mut cancelled: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(cancelled);
        let mut deadline = None;
        let mut after = None;
        let mut replayed = false;
        let mut recheck = RECHECK_FIRST;
        let cancelled_now = AtomicBool::new(false);
        loop {
            let (_, generation) = link.up(after.take(), &mut deadline).await?;
            let b = self.inner.tree.inner.binding(generation)?;
            let file_id = self.inner.id_for(b.generation)?;
            let req = LockRequest { lock_sequence: sequence, file_id, locks: vec![element.clone()] };
            let mut out = Outgoing::new(Command::Lock, b.id, 0, |m| req.encode(m));
            out.replay = replayed && b.session.info.dialect.is_smb3();
            let recheck_due = AtomicBool::new(false);
            let wait_for = recheck;
            let watch = async {
                tokio::select! {
                    () = cancelled.as_mut() => cancelled_now.store(true, Ordering::SeqCst),
                    () = tokio::time::sleep(wait_for) => recheck_due.store(true, Ordering::SeqCst),
                }
            };
            tokio::pin!(watch);
            let result = b.session.request_cancellable(out, b.encrypt, watch).await;
            let by = if cancelled_now.load(Ordering::SeqCst) {
                Some(CancelledBy::Caller)
            } else if recheck_due.load(Ordering::SeqCst) {
                Some(CancelledBy::Recheck)
            } else {
                None
            };
            let outcome = match result {
                Ok(r) if is_session_loss(r.header.status) => {
                    after = link.after_session_status(&b.session, b.generation, r.header.status).await;
                    WaitOutcome::SendAgain { replay: true }
                }
                Ok(r) => wait_outcome(r.header.status, by),
                Err(e) if is_connection_loss(&e) && by != Some(CancelledBy::Caller) => {
                    after = Some(link.lost(&b.session, b.generation, &e.to_string()));
                    WaitOutcome::SendAgain { replay: true }
                }
                Err(e) if by == Some(CancelledBy::Caller) => {
                    tracing::debug!(error = %e, "cancelled lock wait ended with an error");
                    WaitOutcome::Cancelled
                }
                Err(e) => return Err(e),
            };
            match outcome {
                WaitOutcome::Granted => return Ok(()),
                WaitOutcome::GiveBack => {
                    // Granted before the CANCEL arrived: the caller has given up, so give it back.
                    let _ = self.unlock(offset, len).await;
                    return Err(Error::Cancelled { op: self.op("lock") });
                }
                WaitOutcome::Cancelled => return Err(Error::Cancelled { op: self.op("lock") }),
                WaitOutcome::Conflict => return Err(Error::LockConflict { path: self.op("lock") }),
                WaitOutcome::Failed(status) => return Err(Error::Status { op: self.op("lock"), status }),
                WaitOutcome::SendAgain { replay: true } => replayed = true,
                WaitOutcome::SendAgain { replay: false } => {
                    tracing::debug!(path = %self.path(), waited = ?recheck, "lock still not granted; asking the server again");
                    recheck = (recheck * 2).min(RECHECK_MAX);
                    sequence = self.next_lock_sequence();
                    replayed = false;
                }
            }
        }
    }
}

/// How long a blocking LOCK waits before we cancel it and ask again (see [`File::lock_wait`]).
pub(crate) const RECHECK_FIRST: Duration = Duration::from_millis(500);
/// The longest interval between two asks of one lock wait.
pub(crate) const RECHECK_MAX: Duration = Duration::from_secs(4);

/// Who sent the SMB2 CANCEL of a blocking LOCK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CancelledBy {
    /// The caller gave up (a signal: FUSE INTERRUPT).
    Caller,
    /// The re-check timer: the wait goes on with a fresh LOCK.
    Recheck,
}

/// What the final answer to a blocking LOCK means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitOutcome {
    Granted,
    /// Granted, but the caller has given up meanwhile: unlock, then report cancelled.
    GiveBack,
    Cancelled,
    Conflict,
    Failed(NtStatus),
    /// Send the LOCK again: after a reconnect (`replay`, same LockSequence) or after our re-check cancel.
    SendAgain {
        replay: bool,
    },
}

/// The meaning of `status`, the final answer to a blocking LOCK, given who (if anyone) cancelled it.
pub(crate) fn wait_outcome(status: NtStatus, by: Option<CancelledBy>) -> WaitOutcome {
    match (status, by) {
        (s, Some(CancelledBy::Caller)) if s.is_success() => WaitOutcome::GiveBack,
        (s, _) if s.is_success() => WaitOutcome::Granted,
        (NtStatus::CANCELLED, Some(CancelledBy::Recheck)) => WaitOutcome::SendAgain { replay: false },
        (NtStatus::CANCELLED, _) => WaitOutcome::Cancelled,
        (s, _) if is_lock_conflict(s) => WaitOutcome::Conflict,
        (s, _) => WaitOutcome::Failed(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_sequence_cycles_index_then_number() {
        assert_eq!(lock_sequence(0), 1 << 4);
        assert_eq!(lock_sequence(63), 64 << 4);
        assert_eq!(lock_sequence(64), (1 << 4) | 1);
        assert_eq!(lock_sequence(64 * 16), 1 << 4);
        for n in 0..5000u64 {
            let s = lock_sequence(n);
            assert!((1..=64).contains(&(s >> 4)));
        }
    }

    #[test]
    fn a_blocking_locks_answer_given_who_cancelled_it() {
        use CancelledBy::{Caller, Recheck};
        assert_eq!(wait_outcome(NtStatus::SUCCESS, None), WaitOutcome::Granted);
        assert_eq!(wait_outcome(NtStatus::SUCCESS, Some(Recheck)), WaitOutcome::Granted);
        assert_eq!(wait_outcome(NtStatus::SUCCESS, Some(Caller)), WaitOutcome::GiveBack);
        assert_eq!(wait_outcome(NtStatus::CANCELLED, Some(Caller)), WaitOutcome::Cancelled);
        // Our own re-check: the wait goes on with a fresh request.
        assert_eq!(wait_outcome(NtStatus::CANCELLED, Some(Recheck)), WaitOutcome::SendAgain { replay: false });
        // A cancel nobody sent is the server's word.
        assert_eq!(wait_outcome(NtStatus::CANCELLED, None), WaitOutcome::Cancelled);
        assert_eq!(wait_outcome(NtStatus::LOCK_NOT_GRANTED, Some(Recheck)), WaitOutcome::Conflict);
        assert_eq!(wait_outcome(NtStatus::RANGE_NOT_LOCKED, None), WaitOutcome::Failed(NtStatus::RANGE_NOT_LOCKED));
        assert!(RECHECK_FIRST < RECHECK_MAX);
    }

    #[test]
    fn conflicts_are_recognised() {
        assert!(is_lock_conflict(NtStatus::LOCK_NOT_GRANTED));
        assert!(is_lock_conflict(NtStatus::FILE_LOCK_CONFLICT));
        assert!(!is_lock_conflict(NtStatus::RANGE_NOT_LOCKED));
    }
}
