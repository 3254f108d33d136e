//! Decoded FUSE requests onto [`SmbFs`] operations, and their answers into reply payloads. No filesystem
//! decision is made here (they are all in `ops`); this only converts arguments and results, and says what
//! INIT negotiates.
//!
//! One function per concern so that new requests slot in. Byte-range locks (GETLK/SETLK/SETLKW, with
//! FUSE_LK_FLOCK for flock) go to [`SmbFs::setlk`]/[`SmbFs::getlk`], which take them on the server; with
//! `nobrl` FUSE_POSIX_LOCKS and FUSE_FLOCK_LOCKS are not negotiated and the kernel keeps them node-local.

use std::time::Duration;

use super::wire::{self, init_flags, InHeader, InitIn, InitOut, LkIn, Request, SetattrIn, TimeIn};
use crate::fs::ops::{SetAttr, SetTime, SmbFs};
use crate::fs::{Attr, CacheMode, Errno, LockKind, LockOwner};

/// `fuse_lk_in.lk_flags`: the request is a flock(2), not a POSIX record lock.
const LK_FLOCK: u32 = 1;
/// `l_type` values of Linux.
const F_RDLCK: u32 = 0;
const F_WRLCK: u32 = 1;
const F_UNLCK: u32 = 2;
/// The largest end of a lock range (`OFFSET_MAX`): "to the end of file".
const OFFSET_MAX: u64 = i64::MAX as u64;

/// Largest FUSE read and write (and readahead) we ask the kernel for.
pub const MAX_IO: u32 = 1 << 20;
/// Background requests (readahead, async direct I/O) the kernel may have in flight.
const MAX_BACKGROUND: u16 = 64;
const CONGESTION_THRESHOLD: u16 = 48;
const PAGE_SIZE: u32 = 4096;

/// What we ask for at INIT: parallel reads, 1 MiB writes, readdirplus, page cache dropped when the server's
/// mtime or size changes, O_TRUNC handled by open, parallel lookups and listings, async direct I/O.
/// Not POSIX_LOCKS/FLOCK_LOCKS (the kernel keeps locks node-local) and not WRITEBACK_CACHE (the kernel
/// would own mtime and size: close-to-open with other clients of the share would break).
const WANTED: u64 = init_flags::ASYNC_READ
    | init_flags::BIG_WRITES
    | init_flags::MAX_PAGES
    | init_flags::DO_READDIRPLUS
    | init_flags::AUTO_INVAL_DATA
    | init_flags::ATOMIC_O_TRUNC
    | init_flags::PARALLEL_DIROPS
    | init_flags::ASYNC_DIO
    | init_flags::INIT_EXT;

/// Added to [`WANTED`] unless `nobrl`: the kernel sends POSIX locks and flock to us (for the server).
const LOCKS: u64 = init_flags::POSIX_LOCKS | init_flags::FLOCK_LOCKS;

/// The answer to INIT: what the kernel offers intersected with [`WANTED`] (and [`LOCKS`] when `locks`);
/// EPROTO for another major version.
pub fn negotiate(offer: &InitIn, locks: bool) -> Result<InitOut, Errno> {
    let wanted = if locks { WANTED | LOCKS } else { WANTED };
    if offer.major != wire::KERNEL_VERSION {
        return Err(Errno::EPROTO);
    }
    let max_readahead = offer.max_readahead.min(MAX_IO);
    let max_write = MAX_IO;
    Ok(InitOut {
        major: wire::KERNEL_VERSION,
        minor: wire::KERNEL_MINOR_VERSION,
        max_readahead,
        flags: offer.flags & wanted,
        max_background: MAX_BACKGROUND,
        congestion_threshold: CONGESTION_THRESHOLD,
        max_write,
        time_gran: 1,
        max_pages: ((max_write.max(max_readahead) - 1) / PAGE_SIZE + 1) as u16,
    })
}

/// Whether a kernel that offered `offer` re-queues unanswered requests on FUSE_NOTIFY_RESEND (7.40, Linux
/// 6.9). Older kernels ignore the notification: requests a dead server had read stay unanswered and their
/// callers hang until the mount is aborted (`/sys/fs/fuse/connections/N/abort`) or unmounted.
pub fn kernel_resends(offer_minor: u32) -> bool {
    offer_minor >= wire::MINOR_WITH_RESEND
}

/// How the kernel may cache an opened file's pages, per the cache mode.
pub fn fopen_flags(cache: CacheMode) -> u32 {
    match cache {
        CacheMode::Strict => 0,
        CacheMode::Loose => wire::fopen::KEEP_CACHE,
        CacheMode::None => wire::fopen::DIRECT_IO,
    }
}

fn set_time(t: TimeIn) -> SetTime {
    match t {
        TimeIn::Now => SetTime::Now,
        TimeIn::At(t) => SetTime::At(t),
    }
}

fn set_attr(s: &SetattrIn) -> SetAttr {
    SetAttr {
        mode: s.mode,
        uid: s.uid,
        gid: s.gid,
        size: s.size,
        atime: s.atime.map(set_time),
        mtime: s.mtime.map(set_time),
    }
}

fn entry(ttl: Duration, r: Result<Attr, Errno>) -> Result<Vec<u8>, Errno> {
    r.map(|a| wire::entry_out(ttl, &a))
}

/// The owner, kind (`None`: unlock) and inclusive range of a lock request.
type LockArgs = (LockOwner, Option<LockKind>, (u64, u64));

/// The owner, kind and range of a lock request.
fn lock_args(lk: &LkIn) -> Result<LockArgs, Errno> {
    let owner = if lk.flags & LK_FLOCK != 0 { LockOwner::Flock(lk.owner) } else { LockOwner::Posix(lk.owner) };
    let kind = match lk.typ {
        F_RDLCK => Some(LockKind::Shared),
        F_WRLCK => Some(LockKind::Exclusive),
        F_UNLCK => None,
        _ => return Err(Errno::EINVAL),
    };
    Ok((owner, kind, (lk.start, lk.end.min(OFFSET_MAX))))
}

/// SETLK/SETLKW (and flock): `wait` blocks until granted or `interrupted` (EINTR).
pub async fn setlk(
    fs: &SmbFs,
    h: &InHeader,
    lk: &LkIn,
    wait: bool,
    interrupted: impl std::future::Future<Output = ()> + Send,
) -> Result<Vec<u8>, Errno> {
    let (owner, kind, range) = lock_args(lk)?;
    fs.setlk(h.nodeid, lk.fh, owner, lk.pid, range, kind, wait, interrupted).await.map(|()| Vec::new())
}

/// GETLK: the conflicting lock, or F_UNLCK.
async fn getlk(fs: &SmbFs, h: &InHeader, lk: &LkIn) -> Result<Vec<u8>, Errno> {
    let (owner, kind, range) = lock_args(lk)?;
    let Some(kind) = kind else { return Ok(wire::lk_out(lk.start, lk.end, F_UNLCK, 0)) };
    Ok(match fs.getlk(h.nodeid, lk.fh, owner, range, kind).await? {
        Some(c) => {
            let typ = if c.kind == LockKind::Exclusive { F_WRLCK } else { F_RDLCK };
            wire::lk_out(c.start, c.end.saturating_sub(1).min(OFFSET_MAX), typ, c.pid)
        }
        None => wire::lk_out(lk.start, lk.end, F_UNLCK, 0),
    })
}

/// Serves one request that has a reply (everything but INIT, FORGET, BATCH_FORGET, INTERRUPT and WRITE,
/// which the session handles in the kernel's order); returns the reply payload or the errno. READ data is
/// the slice of the buffer the SMB response was received in, passed on without a copy.
pub async fn dispatch(fs: &SmbFs, h: &InHeader, req: Request) -> Result<bytes::Bytes, Errno> {
    let ino = h.nodeid;
    let ttl = fs.ttl();
    let reply: Result<Vec<u8>, Errno> = match req {
        Request::Lookup { name } => entry(ttl, fs.lookup(ino, &name).await),
        Request::Getattr { fh } => fs.getattr(ino, fh).await.map(|a| wire::attr_out(ttl, &a)),
        Request::Setattr(s) => fs.setattr(ino, s.fh, set_attr(&s)).await.map(|a| wire::attr_out(ttl, &a)),
        Request::Readlink => fs.readlink(ino).await,
        Request::Symlink { name, target } => entry(ttl, fs.symlink(ino, &name, &target).await),
        Request::Mknod { name, mode, .. } => entry(ttl, fs.mknod(ino, &name, mode).await),
        Request::Mkdir { name, .. } => entry(ttl, fs.mkdir(ino, &name).await),
        Request::Unlink { name } => fs.unlink(ino, &name).await.map(|()| Vec::new()),
        Request::Rmdir { name } => fs.rmdir(ino, &name).await.map(|()| Vec::new()),
        Request::Rename { newdir, name, newname, flags } => {
            fs.rename(ino, &name, newdir, &newname, flags).await.map(|()| Vec::new())
        }
        Request::Link { oldnodeid, newname } => entry(ttl, fs.link(oldnodeid, ino, &newname).await),
        Request::Open { flags } => {
            let fh = fs.open(ino, flags as i32).await?;
            Ok(wire::open_out(fh, fopen_flags(fs.config().cache)))
        }
        Request::Create { name, flags, .. } => {
            let (attr, fh) = fs.create(ino, &name, flags as i32).await?;
            Ok(wire::create_out(ttl, &attr, fh, fopen_flags(fs.config().cache)))
        }
        Request::Read { fh, offset, size } => return fs.read(fh, offset, size).await,
        Request::Flush { fh, .. } => fs.flush(fh).await.map(|()| Vec::new()),
        // Served by the session, which begins it in the kernel's order; one arriving here is released at once.
        Request::Release { fh, .. } => {
            fs.release(fh).await;
            Ok(Vec::new())
        }
        Request::Fsync { fh, .. } => fs.fsync(fh).await.map(|()| Vec::new()),
        Request::Opendir { .. } => fs.opendir(ino).map(|fh| wire::open_out(fh, 0)),
        Request::Readdir { fh, offset, size, plus: false } => {
            let mut buf = wire::DirBuf::new(size);
            fs.readdir(ino, fh, offset, |e| buf.add(e.ino, e.offset, e.kind, e.name.as_bytes())).await?;
            Ok(buf.into_bytes())
        }
        Request::Readdir { fh, offset, size, plus: true } => {
            let mut buf = wire::DirBuf::new(size);
            fs.readdirplus(ino, fh, offset, |e, attr| buf.add_plus(e.ino, e.offset, e.name.as_bytes(), ttl, attr))
                .await?;
            Ok(buf.into_bytes())
        }
        Request::Releasedir { fh } => {
            fs.releasedir(fh);
            Ok(Vec::new())
        }
        Request::Fsyncdir { fh } => fs.fsyncdir(fh).map(|()| Vec::new()),
        Request::Statfs => {
            let st = fs.statfs().await?;
            Ok(wire::statfs_out(st.blocks, st.bfree, st.bavail, st.bsize, st.namelen))
        }
        Request::Destroy => {
            // The kernel connection is going away: close what the kernel left open.
            fs.close_all();
            Ok(Vec::new())
        }
        Request::Getlk(lk) => getlk(fs, h, &lk).await,
        // SETLKW is served by the session (it may be interrupted); one arriving here cannot be.
        Request::Setlk { lk, sleep } => setlk(fs, h, &lk, sleep, std::future::pending()).await,
        // ENOSYS makes the kernel stop asking: access is checked by the kernel (default_permissions) or
        // by the server; fallocate and lseek fall back to the kernel's generic behaviour.
        Request::Access { .. } | Request::Fallocate { .. } | Request::Lseek { .. } | Request::Unknown { .. } => {
            Err(Errno::ENOSYS)
        }
        // Handled by the session before dispatch; answered here only if one ever arrives.
        Request::Init(_)
        | Request::Write { .. }
        | Request::Forget { .. }
        | Request::BatchForget { .. }
        | Request::Interrupt { .. } => Err(Errno::EIO),
    };
    reply.map(bytes::Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_takes_what_we_want_of_what_the_kernel_offers() {
        let offer = InitIn {
            major: 7,
            minor: 45,
            max_readahead: 128 * 1024,
            flags: init_flags::ASYNC_READ
                | init_flags::POSIX_LOCKS
                | init_flags::FLOCK_LOCKS
                | init_flags::WRITEBACK_CACHE
                | init_flags::DO_READDIRPLUS
                | init_flags::READDIRPLUS_AUTO
                | init_flags::MAX_PAGES
                | init_flags::INIT_EXT
                | init_flags::HAS_RESEND,
        };
        let out = negotiate(&offer, false).unwrap();
        // `nobrl`: locks stay the kernel's.
        assert_eq!(
            out.flags,
            init_flags::ASYNC_READ | init_flags::DO_READDIRPLUS | init_flags::MAX_PAGES | init_flags::INIT_EXT
        );
        // Without `nobrl` the kernel hands POSIX locks and flock to us.
        let with_locks = negotiate(&offer, true).unwrap().flags;
        assert_eq!(with_locks, out.flags | init_flags::POSIX_LOCKS | init_flags::FLOCK_LOCKS);
        assert_eq!((out.max_write, out.max_readahead, out.max_pages), (MAX_IO, 128 * 1024, 256));
        assert_eq!((out.major, out.minor), (7, wire::KERNEL_MINOR_VERSION));
        assert_eq!(negotiate(&InitIn { major: 8, ..offer }, true).unwrap_err(), Errno::EPROTO);
        assert!(kernel_resends(40) && kernel_resends(45) && !kernel_resends(39));
    }

    #[test]
    fn cache_modes_give_open_flags() {
        assert_eq!(fopen_flags(CacheMode::Strict), 0);
        assert_eq!(fopen_flags(CacheMode::Loose), wire::fopen::KEEP_CACHE);
        assert_eq!(fopen_flags(CacheMode::None), wire::fopen::DIRECT_IO);
    }
}
