//! POSIX record locks (`fcntl`) and `flock` locks, kept in a table of our own and mapped onto SMB2 byte-range
//! locks on the open's SMB handle, so that a lock taken on one node is seen by every other node (and by Windows
//! clients) through the server.
//!
//! Semantics, where SMB and POSIX differ:
//! - POSIX locks belong to an owner (a process: FUSE's `lock_owner`), `flock` locks to an open file description
//!   (FUSE passes the file's identity as the owner). SMB locks belong to an open handle. So the table keeps, per
//!   inode and owner, disjoint segments; every segment is one SMB lock on the handle it was taken through.
//! - POSIX locks split, merge and convert; SMB locks cannot (an unlock names exactly a locked range). A change
//!   of an owner's segments is applied on the server as a difference: new shared segments are locked first
//!   (Samba and Windows let a shared lock stack on the same open's exclusive one, so a downgrade never leaves
//!   the range unlocked), then vanished segments are unlocked, then new exclusive segments are locked. An
//!   upgrade (shared to exclusive) or a split of an exclusive segment therefore has a short window in which the
//!   range is not locked on the server; if another node takes it then, the upgrade fails (EAGAIN, or waits) and
//!   the shared lock is taken back.
//! - Conflicts between owners of this node are decided here first (the server cannot see them when two owners
//!   share one SMB handle, as after `fork`); conflicts with other nodes are decided by the server.
//! - `flock` and `fcntl` locks do not conflict with each other on Linux, and do not here between owners of this
//!   node; on the server both are SMB locks, so a `flock` on one node and an `fcntl` lock on another conflict.
//! - SMB locks are mandatory: a READ or WRITE through another open that hits an exclusive range fails. I/O of
//!   this node that hits a range locked by one of this node's handles is sent through that handle instead (see
//!   [`Locks::handle_covering`]); I/O that hits another node's lock gets EAGAIN.
//! - F_GETLK answers from the table for owners of this node; otherwise it probes the server with a
//!   fail-immediately lock that is undone at once, and reports a conflict with pid 0 (the holder is elsewhere).
//! - With `nobrl` nothing goes to the server: the table alone decides, as a node-local lock manager.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use smb3::{self as smb, LockKind};
use tokio::sync::Notify;

use super::errno::errno;
use super::handles::OpenFile;
use super::Errno;

/// Whose lock it is: POSIX locks are per process, `flock` locks per open file description.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockOwner {
    Posix(u64),
    Flock(u64),
}

impl LockOwner {
    /// `flock` and POSIX locks live in separate namespaces (they never conflict with each other on Linux).
    fn same_class(self, other: LockOwner) -> bool {
        matches!((self, other), (LockOwner::Posix(_), LockOwner::Posix(_)) | (LockOwner::Flock(_), LockOwner::Flock(_)))
    }
}

/// A half-open byte range `[start, end)` of one owner, locked shared or exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub start: u64,
    pub end: u64,
    pub kind: LockKind,
}

impl Segment {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.end
    }
}

/// A lock that conflicts with a request, as F_GETLK reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub start: u64,
    /// Exclusive end.
    pub end: u64,
    pub kind: LockKind,
    /// The holder's pid; 0 when the holder is on another node.
    pub pid: u32,
}

fn conflicting(a: LockKind, b: LockKind) -> bool {
    a == LockKind::Exclusive || b == LockKind::Exclusive
}

/// An owner's segments after locking `[start, end)` as `kind` (`None`: unlocking it), POSIX style: the range
/// replaces whatever the owner held there. Segments of the same kind that already cover part of the range are
/// kept as they are (only the gaps become new segments), so repeating or extending a lock changes little on
/// the server; segments of the other kind are cut. The result is sorted and disjoint.
pub fn apply(held: &[Segment], start: u64, end: u64, kind: Option<LockKind>) -> Vec<Segment> {
    let mut out = Vec::with_capacity(held.len() + 2);
    for s in held {
        if !s.overlaps(start, end) || Some(s.kind) == kind {
            out.push(*s);
            continue;
        }
        if s.start < start {
            out.push(Segment { start: s.start, end: start, kind: s.kind });
        }
        if s.end > end {
            out.push(Segment { start: end, end: s.end, kind: s.kind });
        }
    }
    if let Some(kind) = kind {
        let mut covered: Vec<(u64, u64)> =
            out.iter().filter(|s| s.kind == kind && s.overlaps(start, end)).map(|s| (s.start, s.end)).collect();
        covered.sort_unstable();
        let mut at = start;
        for (cs, ce) in covered {
            if cs > at {
                out.push(Segment { start: at, end: cs, kind });
            }
            at = at.max(ce);
        }
        if at < end {
            out.push(Segment { start: at, end, kind });
        }
    }
    out.sort_unstable_by_key(|s| (s.start, s.end));
    out
}

/// What changes on the server going from `old` to `new`: segments to unlock and segments to lock.
pub fn diff(old: &[Segment], new: &[Segment]) -> (Vec<Segment>, Vec<Segment>) {
    let removed = old.iter().filter(|s| !new.contains(s)).copied().collect();
    let added = new.iter().filter(|s| !old.contains(s)).copied().collect();
    (removed, added)
}

/// One held segment and the handle its SMB lock lives on.
#[derive(Clone)]
struct Held {
    owner: LockOwner,
    seg: Segment,
    pid: u32,
    fh: u64,
    file: Arc<OpenFile>,
}

/// The lock table of a mount.
pub(crate) struct Locks {
    /// Whether locks go to the server (`false` with `nobrl`).
    server: bool,
    inodes: Mutex<HashMap<u64, Vec<Held>>>,
    /// Signalled whenever a lock goes away, for local waiters.
    released: Notify,
}

/// What a lock request is: the owner, its pid, the range (exclusive end) and the kind (`None`: unlock).
#[derive(Clone, Copy, Debug)]
pub struct LockRequest {
    pub owner: LockOwner,
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    pub kind: Option<LockKind>,
}

/// SMB's (offset, length) of a segment.
fn smb_range(s: &Segment) -> (u64, u64) {
    (s.start, s.end - s.start)
}

impl Locks {
    pub fn new(server: bool) -> Locks {
        Locks { server, inodes: Mutex::new(HashMap::new()), released: Notify::new() }
    }

    /// A lock of another owner of this node that conflicts with `req`.
    fn local_conflict(held: &[Held], req: &LockRequest, kind: LockKind) -> Option<Conflict> {
        held.iter()
            .find(|h| {
                h.owner != req.owner
                    && h.owner.same_class(req.owner)
                    && h.seg.overlaps(req.start, req.end)
                    && conflicting(h.seg.kind, kind)
            })
            .map(|h| Conflict { start: h.seg.start, end: h.seg.end, kind: h.seg.kind, pid: h.pid })
    }

    /// F_SETLK / F_SETLKW / flock: locks or unlocks `req` through the handle `file` (number `fh`) of inode `ino`.
    /// Without `wait` a conflict is EAGAIN at once; with it the call waits (for owners of this node through the
    /// table, for other nodes through a blocking SMB lock) until granted or until `interrupted` resolves (EINTR).
    pub async fn set(
        &self,
        ino: u64,
        fh: u64,
        file: &Arc<OpenFile>,
        req: LockRequest,
        wait: bool,
        interrupted: impl Future<Output = ()> + Send,
    ) -> Result<(), Errno> {
        if req.start >= req.end {
            return Err(Errno::EINVAL);
        }
        let mut interrupted: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(interrupted);
        let (removed, added) = loop {
            let released = self.released.notified();
            tokio::pin!(released);
            {
                let mut inodes = self.inodes.lock().unwrap();
                let held = inodes.entry(ino).or_default();
                let conflict = req.kind.and_then(|k| Self::local_conflict(held, &req, k));
                if conflict.is_none() {
                    let old: Vec<Held> = held.iter().filter(|h| h.owner == req.owner).cloned().collect();
                    let old_segs: Vec<Segment> = old.iter().map(|h| h.seg).collect();
                    let new_segs = apply(&old_segs, req.start, req.end, req.kind);
                    let (removed, added) = diff(&old_segs, &new_segs);
                    // Reserved in the table at once, so that other owners of this node see it while the server
                    // is asked; undone below if the server refuses.
                    held.retain(|h| !(h.owner == req.owner && removed.contains(&h.seg)));
                    held.extend(added.iter().map(|seg| Held {
                        owner: req.owner,
                        seg: *seg,
                        pid: req.pid,
                        fh,
                        file: file.clone(),
                    }));
                    let removed: Vec<Held> = old.into_iter().filter(|h| removed.contains(&h.seg)).collect();
                    break (removed, added);
                }
                if !wait {
                    return Err(Errno::EAGAIN);
                }
                released.as_mut().enable();
            }
            tokio::select! {
                () = &mut released => {}
                () = interrupted.as_mut() => return Err(Errno::EINTR),
            }
        };
        if !self.server || (removed.is_empty() && added.is_empty()) {
            if !removed.is_empty() {
                self.released.notify_waiters();
            }
            return Ok(());
        }
        let result = self.apply_on_server(file, &removed, &added, wait, interrupted.as_mut()).await;
        if result.is_err() {
            // Back to what the owner held before (the server side was restored by `apply_on_server`).
            let mut inodes = self.inodes.lock().unwrap();
            let held = inodes.entry(ino).or_default();
            held.retain(|h| !(h.owner == req.owner && h.fh == fh && added.contains(&h.seg)));
            held.extend(removed.iter().cloned());
        }
        self.released.notify_waiters();
        result
    }

    /// The server side of one change: shared locks first, then unlocks, then exclusive locks; on failure what
    /// was done is undone (best effort) and the error returned.
    async fn apply_on_server(
        &self,
        file: &Arc<OpenFile>,
        removed: &[Held],
        added: &[Segment],
        wait: bool,
        mut interrupted: Pin<&mut (dyn Future<Output = ()> + Send)>,
    ) -> Result<(), Errno> {
        let f = file.file();
        let mut locked: Vec<Segment> = Vec::new();
        let mut failure = None;
        for seg in added.iter().filter(|s| s.kind == LockKind::Shared) {
            let (offset, len) = smb_range(seg);
            let r = if wait {
                f.lock_wait(offset, len, LockKind::Shared, interrupted.as_mut()).await
            } else {
                f.try_lock(offset, len, LockKind::Shared).await
            };
            match r {
                Ok(()) => locked.push(*seg),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let mut unlocked: Vec<&Held> = Vec::new();
        if failure.is_none() {
            for h in removed {
                let (offset, len) = smb_range(&h.seg);
                match h.file.file().unlock(offset, len).await {
                    Ok(()) => unlocked.push(h),
                    // The server no longer has it (its open was reopened after a reconnect): nothing to release.
                    Err(e) => tracing::debug!(path = %h.file.file().path(), error = %e, "unlock on the server failed"),
                }
            }
            for seg in added.iter().filter(|s| s.kind == LockKind::Exclusive) {
                let (offset, len) = smb_range(seg);
                let r = if wait {
                    f.lock_wait(offset, len, LockKind::Exclusive, interrupted.as_mut()).await
                } else {
                    f.try_lock(offset, len, LockKind::Exclusive).await
                };
                match r {
                    Ok(()) => locked.push(*seg),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
        let Some(e) = failure else { return Ok(()) };
        for seg in &locked {
            let (offset, len) = smb_range(seg);
            let _ = f.unlock(offset, len).await;
        }
        for h in unlocked {
            let (offset, len) = smb_range(&h.seg);
            if let Err(e) = h.file.file().try_lock(offset, len, h.seg.kind).await {
                tracing::warn!(path = %h.file.file().path(), error = %e, "a lock given up for an upgrade could not be taken back");
            }
        }
        Err(match e {
            smb::Error::LockConflict { .. } => Errno::EAGAIN,
            smb::Error::Cancelled { .. } => Errno::EINTR,
            e => errno(&e, "lock", f.path()),
        })
    }

    /// F_GETLK: the first lock that would conflict with `req` (kind `Some`), or `None`.
    pub async fn get(&self, ino: u64, file: &Arc<OpenFile>, req: LockRequest) -> Result<Option<Conflict>, Errno> {
        let Some(kind) = req.kind else { return Ok(None) };
        let own_overlap = {
            let inodes = self.inodes.lock().unwrap();
            let held = inodes.get(&ino).map(Vec::as_slice).unwrap_or_default();
            if let Some(c) = Self::local_conflict(held, &req, kind) {
                return Ok(Some(c));
            }
            held.iter().any(|h| h.seg.overlaps(req.start, req.end))
        };
        // A probe overlapping this node's own locks would find them: those were judged above.
        if !self.server || own_overlap {
            return Ok(None);
        }
        let f = file.file();
        let (offset, len) = (req.start, req.end - req.start);
        let probe = |k| async move {
            match f.try_lock(offset, len, k).await {
                Ok(()) => {
                    let _ = f.unlock(offset, len).await;
                    Ok(false)
                }
                Err(smb::Error::LockConflict { .. }) => Ok(true),
                Err(e) => Err(errno(&e, "getlk", f.path())),
            }
        };
        if !probe(kind).await? {
            return Ok(None);
        }
        // Whether the holder elsewhere has the range shared or exclusive: a shared probe tells.
        let holder = if kind == LockKind::Exclusive && !probe(LockKind::Shared).await? {
            LockKind::Shared
        } else {
            LockKind::Exclusive
        };
        Ok(Some(Conflict { start: req.start, end: req.end, kind: holder, pid: 0 }))
    }

    /// The handle `fh` is released: its locks leave the table, and waiters of this node get another chance.
    /// The server drops an open's locks when the SMB handle is closed; when other handle numbers still share
    /// that SMB handle (`still_open`: a re-open served from it, see `handles`), they are unlocked there now.
    pub async fn release(&self, ino: u64, fh: u64, still_open: bool) {
        let mut gone = Vec::new();
        {
            let mut inodes = self.inodes.lock().unwrap();
            if let Some(held) = inodes.get_mut(&ino) {
                let (mine, rest): (Vec<Held>, Vec<Held>) = held.drain(..).partition(|h| h.fh == fh);
                *held = rest;
                gone = mine;
                if held.is_empty() {
                    inodes.remove(&ino);
                }
            }
        }
        if still_open && self.server {
            for h in &gone {
                let (offset, len) = smb_range(&h.seg);
                if let Err(e) = h.file.file().unlock(offset, len).await {
                    tracing::debug!(path = %h.file.file().path(), error = %e, "unlock on release failed");
                }
            }
        }
        self.released.notify_waiters();
    }

    /// A handle of this node holding a lock over part of `[start, end)` of `ino` other than `fh`, through which
    /// I/O of this node that the server refused for a lock conflict is sent instead.
    pub fn handle_covering(&self, ino: u64, fh_file: &Arc<OpenFile>, start: u64, end: u64) -> Option<Arc<OpenFile>> {
        let inodes = self.inodes.lock().unwrap();
        inodes
            .get(&ino)?
            .iter()
            .find(|h| h.seg.overlaps(start, end) && !Arc::ptr_eq(&h.file, fh_file))
            .map(|h| h.file.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LockKind::{Exclusive as X, Shared as S};

    fn seg(start: u64, end: u64, kind: LockKind) -> Segment {
        Segment { start, end, kind }
    }

    #[test]
    fn locking_adds_only_gaps_of_the_same_kind() {
        assert_eq!(apply(&[], 0, 10, Some(X)), vec![seg(0, 10, X)]);
        // Repeating a lock changes nothing; extending it adds the gap only.
        let held = [seg(0, 10, X)];
        assert_eq!(apply(&held, 0, 10, Some(X)), held.to_vec());
        assert_eq!(apply(&held, 5, 20, Some(X)), vec![seg(0, 10, X), seg(10, 20, X)]);
        assert_eq!(apply(&[seg(5, 8, S)], 0, 10, Some(S)), vec![seg(0, 5, S), seg(5, 8, S), seg(8, 10, S)]);
    }

    #[test]
    fn converting_cuts_the_other_kind() {
        // Downgrade of the middle of an exclusive range.
        assert_eq!(apply(&[seg(0, 30, X)], 10, 20, Some(S)), vec![seg(0, 10, X), seg(10, 20, S), seg(20, 30, X)]);
        // Upgrade of a shared range (SQLite's SHARED -> EXCLUSIVE).
        assert_eq!(apply(&[seg(100, 610, S)], 100, 610, Some(X)), vec![seg(100, 610, X)]);
    }

    #[test]
    fn unlocking_splits_and_removes() {
        assert_eq!(apply(&[seg(0, 30, X)], 10, 20, None), vec![seg(0, 10, X), seg(20, 30, X)]);
        assert_eq!(apply(&[seg(0, 10, X), seg(20, 30, S)], 0, u64::MAX, None), vec![]);
        assert_eq!(apply(&[seg(0, 10, X)], 10, 20, None), vec![seg(0, 10, X)]);
        assert_eq!(apply(&[seg(0, 10, X)], 0, 5, None), vec![seg(5, 10, X)]);
    }

    #[test]
    fn diff_names_exact_segments() {
        let old = [seg(0, 30, X)];
        let new = apply(&old, 10, 20, None);
        assert_eq!(diff(&old, &new), (vec![seg(0, 30, X)], vec![seg(0, 10, X), seg(20, 30, X)]));
        let same = apply(&old, 0, 30, Some(X));
        assert_eq!(diff(&old, &same), (vec![], vec![]));
    }

    #[test]
    fn conflicts_and_classes() {
        assert!(conflicting(X, S) && conflicting(S, X) && conflicting(X, X) && !conflicting(S, S));
        assert!(LockOwner::Posix(1).same_class(LockOwner::Posix(2)));
        assert!(!LockOwner::Posix(1).same_class(LockOwner::Flock(1)));
    }
}
