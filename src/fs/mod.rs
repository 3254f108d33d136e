//! A FUSE filesystem over a directory of an SMB share.
//!
//! Every kernel request is answered from a task on the tokio runtime that owns the SMB connection: the fuser
//! thread only decodes the request, moves its `Reply` into a task and goes back to the kernel, so many
//! requests (readahead, parallel `cp`, two processes) are in flight on the one SMB connection at once.
//!
//! Semantics, where SMB and POSIX differ:
//! - **Inodes** are the server's file ids (stable across mounts and nodes).
//! - **Ownership and modes** come from the mount options (`uid`, `gid`, `file_mode`, `dir_mode`), as with
//!   kernel cifs without unix extensions. `chmod` and `chown` succeed and change nothing (what cifs does, and
//!   what `cp -a`, `tar` and `rsync -a` need to run as root); the mode shown stays the mount's.
//!   One exception, for `fsGroup` on kubelets that apply it themselves (before Kubernetes 1.22 there is no
//!   VOLUME_MOUNT_GROUP delegation, so with `fsGroupPolicy: File` the kubelet walks the volume, chowns every
//!   file to the pod's fsGroup and adds group rw): a **chown of the mount root to another group** makes that
//!   group the whole mount's group, with group read/write added to the file and directory modes (the same
//!   result as the `gid` mount option plus VOLUME_MOUNT_GROUP). The kernel only lets the owner (in that group)
//!   or a CAP_CHOWN process do it. It lasts as long as the mount; the owner, and the group of anything but the
//!   root, still cannot be changed; a read-only mount keeps its group.
//! - **Symlinks** cannot be created (EPERM) and none are reported: SMB reparse points show as files or
//!   directories. `mknod` of anything but a regular file is EPERM.
//! - **Hard links** are made with FileLinkInformation where the server allows it; otherwise EPERM.
//! - **Unlink of an open file**: the name disappears at once (lookups answer ENOENT) and the open handles keep
//!   reading and writing until closed; every open is made with FILE_SHARE_DELETE, so the server's
//!   delete-on-close does exactly this.
//! - **Consistency** is close-to-open: attributes and entries are cached for the attribute TTL (`actimeo`), the
//!   page cache is dropped on each open (`cache=strict`), kept with `cache=loose`, and unused with `cache=none`.
//! - **Errors** map to ENOENT, EACCES, EEXIST, ENOTEMPTY, ENOSPC, ENOTDIR, EISDIR, EBUSY, EXDEV, EOPNOTSUPP;
//!   anything unexpected (a lost connection, a malformed reply) is EIO with a log line naming the operation.

mod config;
mod inodes;
mod writeback;

pub use config::{CacheMode, FsConfig};

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use nix::fcntl::OFlag;
use tokio::runtime::Handle;

use smb3::{self as smb, join_path, DirEntry, Metadata, NtStatus, OpenOptions, Tree};

use inodes::Inodes;
use writeback::WriteQueue;

/// Largest FUSE read and write (and readahead) we ask the kernel for.
pub const MAX_IO: u32 = 1 << 20;
/// Longest name SMB allows (in UTF-16 units; a conservative byte bound here).
const NAME_MAX: usize = 255;
const BLOCK_SIZE: u32 = 1 << 20;

/// An open SMB handle. However the last reference goes (release, or an in-flight request finishing later on a
/// fuser thread), the handle is closed on the runtime.
struct OpenFile {
    file: Option<smb::File>,
    rt: Handle,
    ino: u64,
    /// Shared by every handle of the same inode.
    queue: Arc<WriteQueue>,
}

impl OpenFile {
    fn file(&self) -> &smb::File {
        self.file.as_ref().expect("present until drop")
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        if let Some(f) = self.file.take() {
            self.rt.spawn(async move {
                let path = f.path().to_string();
                if let Err(e) = f.close().await {
                    tracing::warn!(path = %format!("/{path}"), error = %e, "closing SMB handle failed");
                }
            });
        }
    }
}

/// A directory listing taken when the directory is read from offset 0 and served by offset afterwards.
#[derive(Default)]
struct DirStream {
    entries: Option<Arc<Vec<DirEntry>>>,
}

struct Shared {
    tree: Tree,
    rt: Handle,
    cfg: FsConfig,
    inodes: Mutex<Inodes>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    /// Write-behind queues by inode, alive while a handle of that inode is open.
    queues: Mutex<HashMap<u64, std::sync::Weak<WriteQueue>>>,
    dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<DirStream>>>>,
    next_fh: AtomicU64,
    /// The group set by a chown of the mount root ([`NO_GROUP`]: none; see the module doc).
    root_group: AtomicU64,
}

/// `Shared::root_group` when no chown of the root has changed the mount's group.
const NO_GROUP: u64 = u64::MAX;

/// The FUSE filesystem: share path `root` of `tree`, served as the mount's root directory.
pub struct SmbFs {
    s: Arc<Shared>,
}

impl SmbFs {
    /// `rt` runs the SMB calls; it must be the runtime (or a handle of it) the tree's connection lives on.
    pub fn new(tree: Tree, root: &str, cfg: FsConfig, rt: Handle) -> SmbFs {
        let root = join_path("", root);
        SmbFs {
            s: Arc::new(Shared {
                tree,
                rt,
                cfg,
                inodes: Mutex::new(Inodes::new(&root)),
                files: Mutex::new(HashMap::new()),
                queues: Mutex::new(HashMap::new()),
                dirs: Mutex::new(HashMap::new()),
                next_fh: AtomicU64::new(1),
                root_group: AtomicU64::new(NO_GROUP),
            }),
        }
    }

    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.s.rt.spawn(f);
    }

    /// unlink and rmdir: the same request but for the kind of entry removed.
    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
        let s = self.s.clone();
        if s.cfg.read_only {
            return reply.error(Errno::EROFS);
        }
        let path = match s.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        self.spawn(async move {
            let (result, op) = if dir {
                (s.tree.remove_dir(&path).await, "rmdir")
            } else {
                (s.tree.remove_file(&path).await, "unlink")
            };
            match result {
                Ok(()) => {
                    s.inodes.lock().unwrap().unlinked(&path);
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e, op, &path)),
            }
        });
    }
}

/// Maps a client error to the errno an application expects; unexpected ones are logged.
fn errno(e: &smb::Error, op: &str, path: &str) -> Errno {
    let mapped = match e.status() {
        Some(s) => match s {
            NtStatus::OBJECT_NAME_NOT_FOUND
            | NtStatus::OBJECT_PATH_NOT_FOUND
            | NtStatus::NO_SUCH_FILE
            | NtStatus::DELETE_PENDING
            | NtStatus::NOT_FOUND => Some(Errno::ENOENT),
            NtStatus::ACCESS_DENIED
            | NtStatus::NETWORK_ACCESS_DENIED
            | NtStatus::PRIVILEGE_NOT_HELD
            | NtStatus::CANNOT_DELETE => Some(Errno::EACCES),
            NtStatus::OBJECT_NAME_COLLISION | NtStatus::OBJECTID_EXISTS => Some(Errno::EEXIST),
            NtStatus::DIRECTORY_NOT_EMPTY => Some(Errno::ENOTEMPTY),
            NtStatus::DISK_FULL | NtStatus::QUOTA_EXCEEDED => Some(Errno::ENOSPC),
            NtStatus::NOT_A_DIRECTORY => Some(Errno::ENOTDIR),
            NtStatus::FILE_IS_A_DIRECTORY => Some(Errno::EISDIR),
            NtStatus::SHARING_VIOLATION | NtStatus::LOCK_NOT_GRANTED | NtStatus::USER_MAPPED_FILE => Some(Errno::EBUSY),
            NtStatus::NOT_SAME_DEVICE => Some(Errno::EXDEV),
            NtStatus::MEDIA_WRITE_PROTECTED => Some(Errno::EROFS),
            NtStatus::OBJECT_NAME_INVALID | NtStatus::OBJECT_PATH_INVALID | NtStatus::OBJECT_PATH_SYNTAX_BAD => {
                Some(Errno::EINVAL)
            }
            NtStatus::NOT_SUPPORTED | NtStatus::NOT_IMPLEMENTED | NtStatus::INVALID_DEVICE_REQUEST => {
                Some(Errno::EOPNOTSUPP)
            }
            NtStatus::TOO_MANY_OPENED_FILES => Some(Errno::EMFILE),
            _ => None,
        },
        None => None,
    };
    mapped.unwrap_or_else(|| {
        tracing::error!(op, path = %format!("/{path}"), error = %e, "SMB request failed: returning EIO");
        Errno::EIO
    })
}

fn to_system_time(filetime: u64) -> SystemTime {
    smb::wire::info::filetime_to_system_time(filetime).unwrap_or(UNIX_EPOCH)
}

/// Attributes as the kernel sees them: times and size from the server, owner and modes from the mount;
/// `group` (set by a chown of the root) replaces the mount's gid and adds group read/write.
fn file_attr(cfg: &FsConfig, group: Option<u32>, ino: u64, m: &Metadata) -> FileAttr {
    let dir = m.is_dir();
    let mut perm = if dir { cfg.dir_mode } else { cfg.file_mode };
    if group.is_some() {
        perm |= if dir { 0o070 } else { 0o060 };
    }
    FileAttr {
        ino: INodeNo(ino),
        size: if dir { 0 } else { m.size },
        blocks: m.allocation_size.div_ceil(512),
        atime: to_system_time(m.accessed),
        mtime: to_system_time(m.modified),
        ctime: to_system_time(m.changed),
        crtime: to_system_time(m.created),
        kind: if dir { FileType::Directory } else { FileType::RegularFile },
        perm: perm as u16,
        nlink: if dir { 2 } else { m.links.max(1) },
        uid: cfg.uid,
        gid: group.unwrap_or(cfg.gid),
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

impl Shared {
    fn attr(&self, ino: u64, m: &Metadata) -> FileAttr {
        file_attr(&self.cfg, self.root_group(), ino, m)
    }

    fn root_group(&self) -> Option<u32> {
        match self.root_group.load(Ordering::Relaxed) {
            NO_GROUP => None,
            g => u32::try_from(g).ok(),
        }
    }

    /// A chown of `ino` to `gid`: the mount's group when `ino` is the root of a writable mount (see the module
    /// doc); `false` when nothing changes.
    fn chown_group(&self, ino: INodeNo, gid: u32) -> bool {
        if ino != INodeNo::ROOT || self.cfg.read_only || self.root_group().unwrap_or(self.cfg.gid) == gid {
            return false;
        }
        self.root_group.store(u64::from(gid), Ordering::Relaxed);
        true
    }

    fn path(&self, ino: INodeNo) -> Result<String, Errno> {
        self.inodes.lock().unwrap().path(ino.0).map(str::to_string).ok_or(Errno::ESTALE)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<String, Errno> {
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        if name.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        // `\` is SMB's separator; a name with it would address another file.
        if name.is_empty() || name.contains('\\') || name == "." || name == ".." {
            return Err(Errno::EINVAL);
        }
        Ok(join_path(&self.path(parent)?, name))
    }

    /// Registers one kernel reference to `path` and returns its attributes.
    fn entry(&self, path: &str, m: &Metadata) -> FileAttr {
        let ino = self.inodes.lock().unwrap().remember(path, m.file_id);
        self.attr(ino, m)
    }

    fn ttl(&self) -> Duration {
        self.cfg.attr_ttl
    }

    fn open_flags(&self) -> FopenFlags {
        match self.cfg.cache {
            CacheMode::Strict => FopenFlags::empty(),
            CacheMode::Loose => FopenFlags::FOPEN_KEEP_CACHE,
            CacheMode::None => FopenFlags::FOPEN_DIRECT_IO,
        }
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<OpenFile>, Errno> {
        self.files.lock().unwrap().get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn add_file(&self, ino: u64, file: smb::File) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let queue = {
            let mut queues = self.queues.lock().unwrap();
            match queues.get(&ino).and_then(|w| w.upgrade()) {
                Some(q) => q,
                None => {
                    if queues.len() > 1024 {
                        queues.retain(|_, w| w.strong_count() > 0);
                    }
                    let q = Arc::new(WriteQueue::default());
                    queues.insert(ino, Arc::downgrade(&q));
                    q
                }
            }
        };
        self.files.lock().unwrap().insert(fh, Arc::new(OpenFile { file: Some(file), rt: self.rt.clone(), ino, queue }));
        fh
    }

    /// Any open handle of `ino`: after an unlink the name is gone, but the handle still answers.
    fn open_handle_of(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.files.lock().unwrap().values().find(|f| f.ino == ino).cloned()
    }

    /// The write-behind queue of an inode with open handles.
    fn queue(&self, ino: u64) -> Option<Arc<WriteQueue>> {
        self.queues.lock().unwrap().get(&ino).and_then(|w| w.upgrade())
    }

    /// Waits for the inode's queued writes (so sizes and data read back are current).
    async fn settle(&self, ino: u64) {
        if let Some(q) = self.queue(ino) {
            q.drain().await;
        }
    }

    async fn stat(&self, path: &str) -> Result<Metadata, Errno> {
        self.tree.stat(path).await.map_err(|e| errno(&e, "stat", path))
    }

    async fn set_times(&self, path: &str, atime: Option<TimeOrNow>, mtime: Option<TimeOrNow>) -> Result<(), Errno> {
        let ft = |t: Option<TimeOrNow>| match t {
            None => 0,
            Some(TimeOrNow::Now) => smb::wire::info::system_time_to_filetime(SystemTime::now()),
            Some(TimeOrNow::SpecificTime(t)) => smb::wire::info::system_time_to_filetime(t),
        };
        let (a, m) = (ft(atime), ft(mtime));
        if a == 0 && m == 0 {
            return Ok(());
        }
        self.tree.set_times(path, a, m, 0).await.map_err(|e| errno(&e, "utimens", path))
    }

    async fn readdir_entries(&self, fh: FileHandle, path: &str, offset: u64) -> Result<Arc<Vec<DirEntry>>, Errno> {
        let stream = self.dirs.lock().unwrap().get(&fh.0).cloned().ok_or(Errno::EBADF)?;
        let mut stream = stream.lock().await;
        if offset == 0 || stream.entries.is_none() {
            let list = self.tree.read_dir(path).await.map_err(|e| errno(&e, "readdir", path))?;
            stream.entries = Some(Arc::new(list));
        }
        Ok(stream.entries.clone().expect("listed"))
    }
}

fn open_options(flags: i32, read_only_mount: bool) -> Result<OpenOptions, Errno> {
    let mode = OpenFlags(flags).acc_mode();
    let write = matches!(mode, OpenAccMode::O_WRONLY | OpenAccMode::O_RDWR);
    let truncate = flags & OFlag::O_TRUNC.bits() != 0;
    if read_only_mount && (write || truncate) {
        return Err(Errno::EROFS);
    }
    // Appends arrive with the offset the kernel computed from the file size, so a plain write handle serves them.
    Ok(OpenOptions::new()
        .read(matches!(mode, OpenAccMode::O_RDONLY | OpenAccMode::O_RDWR))
        .write(write)
        .truncate(truncate))
}

impl Filesystem for SmbFs {
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
        drop(self.s.files.lock().unwrap().drain().collect::<Vec<_>>());
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let s = self.s.clone();
        let path = match s.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        self.spawn(async move {
            match s.stat(&path).await {
                Ok(m) => reply.entry(&s.ttl(), &s.entry(&path, &m), Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.s.inodes.lock().unwrap().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let s = self.s.clone();
        // The kernel does not always pass the handle (fstat with fresh attributes, stat of /proc/self/fd).
        let open = fh.and_then(|fh| s.file(fh).ok()).or_else(|| s.open_handle_of(ino.0));
        let path = match s.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        self.spawn(async move {
            s.settle(ino.0).await;
            // Through the open handle when there is one: it still works after the name was unlinked.
            let m = match open {
                Some(f) => f.file().metadata().await.map_err(|e| errno(&e, "getattr", &path)),
                None => s.stat(&path).await,
            };
            match m {
                Ok(m) => reply.attr(&s.ttl(), &s.attr(ino.0, &m)),
                Err(e) => reply.error(e),
            }
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
        let s = self.s.clone();
        if s.cfg.read_only && (size.is_some() || atime.is_some() || mtime.is_some()) {
            return reply.error(Errno::EROFS);
        }
        if let Some(g) = gid.filter(|g| s.chown_group(ino, *g)) {
            tracing::info!(gid = g, "chown of the mount root: the mount's group is now {g}, with group read/write");
        } else if mode.is_some() || uid.is_some() || gid.is_some() {
            // Documented no-op: ownership and modes are the mount's (as with kernel cifs without unix extensions).
            tracing::debug!(
                ino = ino.0,
                ?mode,
                ?uid,
                ?gid,
                "chmod/chown ignored: modes and owner come from the mount options"
            );
        }
        let path = match s.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let open = fh.and_then(|fh| s.file(fh).ok());
        self.spawn(async move {
            s.settle(ino.0).await;
            let result: Result<Metadata, Errno> = async {
                if let Some(len) = size {
                    match &open {
                        Some(f) => f.file().set_len(len).await.map_err(|e| errno(&e, "truncate", &path))?,
                        None => {
                            let f = s
                                .tree
                                .open(&path, OpenOptions::new().write(true))
                                .await
                                .map_err(|e| errno(&e, "truncate", &path))?;
                            let r = f.set_len(len).await;
                            let closed = f.close().await;
                            r.and(closed).map_err(|e| errno(&e, "truncate", &path))?;
                        }
                    }
                }
                s.set_times(&path, atime, mtime).await?;
                match &open {
                    Some(f) => f.file().metadata().await.map_err(|e| errno(&e, "getattr", &path)),
                    None => s.stat(&path).await,
                }
            }
            .await;
            match result {
                Ok(m) => reply.attr(&s.ttl(), &s.attr(ino.0, &m)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        reply.error(Errno::EINVAL);
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
        if mode & 0o170000 != 0o100000 {
            return reply.error(Errno::EPERM);
        }
        let s = self.s.clone();
        if s.cfg.read_only {
            return reply.error(Errno::EROFS);
        }
        let path = match s.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        self.spawn(async move {
            let r = async {
                let f = s
                    .tree
                    .open(&path, OpenOptions::new().write(true).create_new(true))
                    .await
                    .map_err(|e| errno(&e, "mknod", &path))?;
                let m = f.metadata().await;
                let _ = f.close().await;
                m.map_err(|e| errno(&e, "mknod", &path))
            }
            .await;
            match r {
                Ok(m) => reply.entry(&s.ttl(), &s.entry(&path, &m), Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        let s = self.s.clone();
        if s.cfg.read_only {
            return reply.error(Errno::EROFS);
        }
        let path = match s.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        self.spawn(async move {
            let r = match s.tree.mkdir(&path).await {
                Ok(()) => s.stat(&path).await,
                Err(e) => Err(errno(&e, "mkdir", &path)),
            };
            match r {
                Ok(m) => reply.entry(&s.ttl(), &s.entry(&path, &m), Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, false, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, true, reply);
    }

    fn symlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, _target: &std::path::Path, reply: ReplyEntry) {
        reply.error(if self.s.cfg.read_only { Errno::EROFS } else { Errno::EPERM });
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
        let s = self.s.clone();
        if s.cfg.read_only {
            return reply.error(Errno::EROFS);
        }
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let (from, to) = match (s.child(parent, name), s.child(newparent, newname)) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        let replace = !flags.contains(RenameFlags::RENAME_NOREPLACE);
        self.spawn(async move {
            match s.tree.rename(&from, &to, replace).await {
                Ok(()) => {
                    s.inodes.lock().unwrap().renamed(&from, &to);
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e, "rename", &from)),
            }
        });
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let s = self.s.clone();
        if s.cfg.read_only {
            return reply.error(Errno::EROFS);
        }
        let (existing, link) = match (s.path(ino), s.child(newparent, newname)) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        self.spawn(async move {
            let r = match s.tree.hard_link(&existing, &link).await {
                Ok(()) => s.stat(&link).await,
                Err(e) if matches!(errno(&e, "link", &link), Errno::EOPNOTSUPP | Errno::EACCES) => Err(Errno::EPERM),
                Err(e) => Err(errno(&e, "link", &link)),
            };
            match r {
                Ok(m) => reply.entry(&s.ttl(), &s.entry(&link, &m), Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let s = self.s.clone();
        let opts = match open_options(flags.0, s.cfg.read_only) {
            Ok(o) => o,
            Err(e) => return reply.error(e),
        };
        let path = match s.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        self.spawn(async move {
            match s.tree.open(&path, opts).await {
                Ok(f) if f.is_dir() => {
                    let _ = f.close().await;
                    reply.error(Errno::EISDIR)
                }
                Ok(f) => {
                    let fh = s.add_file(ino.0, f);
                    reply.opened(FileHandle(fh), s.open_flags())
                }
                Err(e) => reply.error(errno(&e, "open", &path)),
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
        let f = match self.s.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        self.spawn(async move {
            f.queue.wait_range(offset, offset.saturating_add(u64::from(size))).await;
            match f.file().read_at(offset, size as usize).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e, "read", f.file().path())),
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
        let f = match self.s.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        if let Some(e) = f.queue.take_error() {
            return reply.error(e);
        }
        let data = data.to_vec();
        // Queue in kernel order (this thread), acknowledge, then write in the background.
        let ticket = self.s.rt.block_on(f.queue.enqueue(offset, data.len() as u64));
        reply.written(data.len() as u32);
        self.spawn(async move {
            let result = f.file().write_at(offset, &data).await.map_err(|e| errno(&e, "write", f.file().path()));
            ticket.finish(result);
        });
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close(2): every queued write must have reached the server, and its failure is reported here.
        let f = match self.s.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        self.spawn(async move {
            f.queue.drain().await;
            match f.queue.take_error() {
                Some(e) => reply.error(e),
                None => reply.ok(),
            }
        });
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
        // Dropping the last reference closes the SMB handle (see `OpenFile`), after its queued writes.
        let f = self.s.files.lock().unwrap().remove(&fh.0);
        self.spawn(async move {
            if let Some(f) = &f {
                f.queue.drain().await;
            }
            drop(f);
            reply.ok();
        });
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let f = match self.s.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        self.spawn(async move {
            f.queue.drain().await;
            if let Some(e) = f.queue.take_error() {
                return reply.error(e);
            }
            match f.file().flush().await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e, "fsync", f.file().path())),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if let Err(e) = self.s.path(ino) {
            return reply.error(e);
        }
        let fh = self.s.next_fh.fetch_add(1, Ordering::Relaxed);
        self.s.dirs.lock().unwrap().insert(fh, Arc::default());
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let s = self.s.clone();
        let path = match s.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        self.spawn(async move {
            let entries = match s.readdir_entries(fh, &path, offset).await {
                Ok(e) => e,
                Err(e) => return reply.error(e),
            };
            // Offsets: 1 = ".", 2 = "..", 3.. = entries; the offset of an entry is the one of the next.
            let mut at = offset;
            while at < entries.len() as u64 + 2 {
                let full = match at {
                    0 => reply.add(ino, 1, FileType::Directory, "."),
                    1 => reply.add(INodeNo::ROOT, 2, FileType::Directory, ".."),
                    n => {
                        let e = &entries[(n - 2) as usize];
                        let kind = if e.metadata.is_dir() { FileType::Directory } else { FileType::RegularFile };
                        let ino = if e.metadata.file_id > 1 { e.metadata.file_id } else { u64::MAX };
                        reply.add(INodeNo(ino), n + 1, kind, &e.name)
                    }
                };
                if full {
                    break;
                }
                at += 1;
            }
            reply.ok()
        });
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let s = self.s.clone();
        let path = match s.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        self.spawn(async move {
            let entries = match s.readdir_entries(fh, &path, offset).await {
                Ok(e) => e,
                Err(e) => return reply.error(e),
            };
            let ttl = s.ttl();
            let mut at = offset;
            while at < entries.len() as u64 + 2 {
                // "." and ".." carry no lookup reference (the kernel skips them); real entries do, and the
                // reference is taken only once the entry fits in the reply.
                let full = match at {
                    0 | 1 => {
                        let dot_attr = FileAttr { ino, ..s.attr(ino.0, &dir_placeholder()) };
                        let name = if at == 0 { "." } else { ".." };
                        reply.add(
                            if at == 0 { ino } else { INodeNo::ROOT },
                            at + 1,
                            name,
                            &ttl,
                            &dot_attr,
                            Generation(0),
                        )
                    }
                    n => {
                        let e = &entries[(n - 2) as usize];
                        let child = join_path(&path, &e.name);
                        let mut inodes = s.inodes.lock().unwrap();
                        // Take the reference, and give it back if the entry did not fit in this reply.
                        let child_ino = inodes.remember(&child, e.metadata.file_id);
                        let attr = s.attr(child_ino, &e.metadata);
                        let full = reply.add(INodeNo(child_ino), n + 1, &e.name, &ttl, &attr, Generation(0));
                        if full {
                            inodes.forget(child_ino, 1);
                        }
                        full
                    }
                };
                if full {
                    break;
                }
                at += 1;
            }
            reply.ok()
        });
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.s.dirs.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.s.clone();
        self.spawn(async move {
            match s.tree.statfs().await {
                Ok(st) => {
                    let bsize = st.block_size.clamp(512, u64::from(u32::MAX));
                    reply.statfs(
                        st.total_bytes / bsize,
                        st.free_bytes / bsize,
                        st.available_bytes / bsize,
                        0,
                        0,
                        bsize as u32,
                        NAME_MAX as u32,
                        bsize as u32,
                    )
                }
                Err(e) => reply.error(errno(&e, "statfs", "")),
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
        let s = self.s.clone();
        if s.cfg.read_only {
            return reply.error(Errno::EROFS);
        }
        let path = match s.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let opts = match open_options(flags, false) {
            Ok(o) => o.write(true).create(true).create_new(flags & OFlag::O_EXCL.bits() != 0),
            Err(e) => return reply.error(e),
        };
        self.spawn(async move {
            let r = async {
                let f = s.tree.open(&path, opts).await.map_err(|e| errno(&e, "create", &path))?;
                // The CREATE response has no file id; one query gets it (and the final attributes).
                match f.metadata().await {
                    Ok(m) => Ok((f, m)),
                    Err(e) => {
                        let _ = f.close().await;
                        Err(errno(&e, "create", &path))
                    }
                }
            }
            .await;
            match r {
                Ok((f, m)) => {
                    let attr = s.entry(&path, &m);
                    let fh = s.add_file(attr.ino.0, f);
                    reply.created(&s.ttl(), &attr, Generation(0), FileHandle(fh), s.open_flags())
                }
                Err(e) => reply.error(e),
            }
        });
    }
}

/// Attributes for "." and ".." in a listing: only the kind matters to the kernel (it does not link them).
fn dir_placeholder() -> Metadata {
    Metadata {
        size: 0,
        allocation_size: 0,
        attributes: smb::wire::create::attributes::DIRECTORY,
        file_id: 0,
        links: 2,
        created: 0,
        accessed: 0,
        modified: 0,
        changed: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flags_map_to_smb_access() {
        let ro = open_options(OFlag::O_RDONLY.bits(), false).unwrap();
        assert_eq!(format!("{ro:?}"), format!("{:?}", OpenOptions::new().read(true)));
        let rw = open_options((OFlag::O_RDWR | OFlag::O_TRUNC).bits(), false).unwrap();
        assert_eq!(format!("{rw:?}"), format!("{:?}", OpenOptions::new().read(true).write(true).truncate(true)));
        let wo = open_options((OFlag::O_WRONLY | OFlag::O_APPEND).bits(), false).unwrap();
        assert_eq!(format!("{wo:?}"), format!("{:?}", OpenOptions::new().write(true)));
        assert_eq!(open_options(OFlag::O_WRONLY.bits(), true).unwrap_err(), Errno::EROFS);
        assert_eq!(open_options((OFlag::O_RDONLY | OFlag::O_TRUNC).bits(), true).unwrap_err(), Errno::EROFS);
        assert!(open_options(OFlag::O_RDONLY.bits(), true).is_ok());
    }

    #[test]
    fn errors_map_to_errno() {
        let st = |status| smb::Error::Status { op: "x".into(), status };
        assert_eq!(errno(&st(NtStatus::OBJECT_NAME_NOT_FOUND), "t", "p"), Errno::ENOENT);
        assert_eq!(errno(&st(NtStatus::OBJECT_PATH_NOT_FOUND), "t", "p"), Errno::ENOENT);
        assert_eq!(errno(&st(NtStatus::ACCESS_DENIED), "t", "p"), Errno::EACCES);
        assert_eq!(errno(&st(NtStatus::OBJECT_NAME_COLLISION), "t", "p"), Errno::EEXIST);
        assert_eq!(errno(&st(NtStatus::DIRECTORY_NOT_EMPTY), "t", "p"), Errno::ENOTEMPTY);
        assert_eq!(errno(&st(NtStatus::DISK_FULL), "t", "p"), Errno::ENOSPC);
        assert_eq!(errno(&st(NtStatus::NOT_A_DIRECTORY), "t", "p"), Errno::ENOTDIR);
        assert_eq!(errno(&st(NtStatus::FILE_IS_A_DIRECTORY), "t", "p"), Errno::EISDIR);
        assert_eq!(errno(&st(NtStatus::NOT_SUPPORTED), "t", "p"), Errno::EOPNOTSUPP);
        assert_eq!(errno(&st(NtStatus::INVALID_PARAMETER), "t", "p"), Errno::EIO);
        let lost = smb::Error::Disconnected { addr: "srv:445".into(), why: "reset".into() };
        assert_eq!(errno(&lost, "read", "f"), Errno::EIO);
    }

    #[test]
    fn attributes_follow_the_mount_options() {
        let cfg = FsConfig {
            uid: 1001,
            gid: 2002,
            file_mode: 0o640,
            dir_mode: 0o750,
            read_only: false,
            attr_ttl: Duration::from_secs(1),
            cache: CacheMode::Strict,
        };
        let m = Metadata {
            size: 5000,
            allocation_size: 8192,
            attributes: smb::wire::create::attributes::ARCHIVE,
            file_id: 77,
            links: 1,
            created: 0,
            accessed: 0,
            modified: 133_000_000_000_000_000,
            changed: 0,
        };
        let attr = file_attr(&cfg, None, 77, &m);
        assert_eq!(
            (attr.uid, attr.gid, attr.perm, attr.kind, attr.size, attr.blocks),
            (1001, 2002, 0o640, FileType::RegularFile, 5000, 16)
        );
        let d = file_attr(&cfg, None, 78, &dir_placeholder());
        assert_eq!((d.perm, d.kind, d.nlink), (0o750, FileType::Directory, 2));
        assert!(attr.mtime > UNIX_EPOCH);
        // A chown of the root to a group: that gid, group read/write added, owner unchanged.
        let f = file_attr(&cfg, Some(4321), 77, &m);
        assert_eq!((f.uid, f.gid, f.perm), (1001, 4321, 0o660));
        let d = file_attr(&cfg, Some(4321), 78, &dir_placeholder());
        assert_eq!((d.uid, d.gid, d.perm), (1001, 4321, 0o770));
    }
}
