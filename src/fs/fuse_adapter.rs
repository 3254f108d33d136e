//! The FUSE adapter: implements `fuser::Filesystem` over [`SmbFs`] by converting each request's arguments,
//! running the operation as a task on the runtime that owns the SMB connection, and converting the answer
//! into the reply. No filesystem decision is made here; they are all in [`super::ops`].
//!
//! The fuser thread only decodes the request and moves its `Reply` into a task, so many requests (readahead,
//! parallel `cp`, two processes) are in flight on the one SMB connection at once. Writes are the exception
//! that keeps the kernel's order: a write is queued on the fuser thread, acknowledged, then sent by a task.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::attr::{Attr, FileKind};
use super::ops::{SetAttr, SetTime, SmbFs};
use super::CacheMode;

/// Largest FUSE read and write (and readahead) we ask the kernel for.
pub const MAX_IO: u32 = 1 << 20;

/// The FUSE filesystem: [`SmbFs`] served to the kernel.
pub struct FuseAdapter {
    fs: Arc<SmbFs>,
}

fn errno(e: super::Errno) -> Errno {
    Errno::from_i32(e as i32)
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::Directory => FileType::Directory,
        FileKind::RegularFile => FileType::RegularFile,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.crtime,
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: a.blksize,
        flags: 0,
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(t),
    }
}

/// How the kernel may cache an opened file's pages, per the cache mode.
fn fopen_flags(cache: CacheMode) -> FopenFlags {
    match cache {
        CacheMode::Strict => FopenFlags::empty(),
        CacheMode::Loose => FopenFlags::FOPEN_KEEP_CACHE,
        CacheMode::None => FopenFlags::FOPEN_DIRECT_IO,
    }
}

impl FuseAdapter {
    pub fn new(fs: SmbFs) -> FuseAdapter {
        FuseAdapter { fs: Arc::new(fs) }
    }

    /// Runs `op` with the filesystem on the runtime.
    fn spawn<F, Fut>(&self, op: F)
    where
        F: FnOnce(Arc<SmbFs>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let fut = op(self.fs.clone());
        self.fs.runtime().spawn(fut);
    }

    fn reply_entry(fs: &SmbFs, r: Result<Attr, super::Errno>, reply: ReplyEntry) {
        match r {
            Ok(a) => reply.entry(&fs.ttl(), &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn reply_attr(fs: &SmbFs, r: Result<Attr, super::Errno>, reply: ReplyAttr) {
        match r {
            Ok(a) => reply.attr(&fs.ttl(), &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn reply_empty(r: Result<(), super::Errno>, reply: ReplyEmpty) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO).or_else(|max| config.set_max_write(max));
        let _ = config.set_max_readahead(MAX_IO).or_else(|max| config.set_max_readahead(max));
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ASYNC_DIO,
            InitFlags::FUSE_MAX_PAGES,
        ] {
            if config.add_capabilities(cap).is_err() {
                tracing::debug!(?cap, "FUSE capability not offered by the kernel");
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        // The kernel connection is gone: close what the kernel left open (this thread has no runtime entered).
        self.fs.close_all();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_owned();
        self.spawn(move |fs| async move {
            let r = fs.lookup(parent.0, &name).await;
            Self::reply_entry(&fs, r, reply)
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.spawn(move |fs| async move {
            let r = fs.getattr(ino.0, fh.map(|f| f.0)).await;
            Self::reply_attr(&fs, r, reply)
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr { mode, uid, gid, size, atime: atime.map(set_time), mtime: mtime.map(set_time) };
        self.spawn(move |fs| async move {
            let r = fs.setattr(ino.0, fh.map(|f| f.0), set).await;
            Self::reply_attr(&fs, r, reply)
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let name = name.to_owned();
        self.spawn(move |fs| async move {
            let r = fs.mknod(parent.0, &name, mode).await;
            Self::reply_entry(&fs, r, reply)
        });
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        let name = name.to_owned();
        self.spawn(move |fs| async move {
            let r = fs.mkdir(parent.0, &name).await;
            Self::reply_entry(&fs, r, reply)
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.spawn(move |fs| async move { Self::reply_empty(fs.unlink(parent.0, &name).await, reply) });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.spawn(move |fs| async move { Self::reply_empty(fs.rmdir(parent.0, &name).await, reply) });
    }

    fn symlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, _target: &std::path::Path, reply: ReplyEntry) {
        Self::reply_entry(&self.fs, self.fs.symlink(parent.0, name), reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = (name.to_owned(), newname.to_owned());
        self.spawn(move |fs| async move {
            Self::reply_empty(fs.rename(parent.0, &name, newparent.0, &newname, flags.bits()).await, reply)
        });
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let newname = newname.to_owned();
        self.spawn(move |fs| async move {
            let r = fs.link(ino.0, newparent.0, &newname).await;
            Self::reply_entry(&fs, r, reply)
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.spawn(move |fs| async move {
            match fs.open(ino.0, flags.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), fopen_flags(fs.config().cache)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn(move |fs| async move {
            match fs.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // Queued on this thread (kernel order), acknowledged, then sent in the background.
        match self.fs.runtime().block_on(self.fs.write(fh.0, offset, data.to_vec())) {
            Ok(w) => {
                reply.written(w.len() as u32);
                self.fs.runtime().spawn(w.complete());
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        self.spawn(move |fs| async move { Self::reply_empty(fs.flush(fh.0).await, reply) });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(move |fs| async move {
            fs.release(fh.0).await;
            reply.ok()
        });
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.spawn(move |fs| async move { Self::reply_empty(fs.fsync(fh.0).await, reply) });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.spawn(move |fs| async move {
            let r =
                fs.readdir(ino.0, fh.0, offset, |e| reply.add(INodeNo(e.ino), e.offset, kind(e.kind), e.name)).await;
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        self.spawn(move |fs| async move {
            let ttl = fs.ttl();
            let r = fs
                .readdirplus(ino.0, fh.0, offset, |e, attr| {
                    reply.add(INodeNo(e.ino), e.offset, e.name, &ttl, &file_attr(attr), Generation(0))
                })
                .await;
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        Self::reply_empty(self.fs.fsyncdir(fh.0), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.spawn(move |fs| async move {
            match fs.statfs().await {
                Ok(st) => reply.statfs(st.blocks, st.bfree, st.bavail, 0, 0, st.bsize, st.namelen, st.bsize),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name.to_owned();
        self.spawn(move |fs| async move {
            match fs.create(parent.0, &name, flags).await {
                Ok((attr, fh)) => reply.created(
                    &fs.ttl(),
                    &file_attr(&attr),
                    Generation(0),
                    FileHandle(fh),
                    fopen_flags(fs.config().cache),
                ),
                Err(e) => reply.error(errno(e)),
            }
        });
    }
}
