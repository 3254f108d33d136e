//! The filesystem operations, as async functions over an SMB tree that answer `Result<_, Errno>`.
//!
//! Everything the filesystem decides lives here: name checks, read-only refusals, the inode and handle tables,
//! write-behind, the errno of each failure. Nothing here knows about FUSE, so the operations are called directly
//! by tests (against a real server, without a mount) and by the FUSE adapter alike. Inode and handle numbers are
//! plain `u64`s: the root is [`ROOT_INO`].

use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The takeover journal, shared by the filesystem and the writes it queued.
type SharedJournal = Arc<Mutex<Journal>>;
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::OFlag;
use smb3::{self as smb, join_path, DirEntry, Metadata, OpenOptions, Tree};
use tokio::runtime::Handle;

use super::attr::{dir_placeholder, file_attr, symlink_attr, Attr, FileKind};
use super::dirattrs::DirAttrs;
use super::dircache::DirCache;
use super::errno::{errno, Errno};
use super::fuse::wire::InitOut;
use super::handles::{Handles, OpenFile};
use super::inodes::{Inodes, ROOT_INO};
use super::journal::{Journal, JournalError, Record, Snapshot};
use super::lease::{Invalidator, LeaseWatch};
use super::linger::{Announced, Lingering};
use super::locks::{Conflict, LockOwner, LockRequest, Locks};
use super::mfsymlink;
use super::prefetch::{ForgetOnBreak, Prefetched, PREFETCH_LEN};
use super::writeback::Ticket;
use super::FsConfig;

/// Longest name SMB allows (in UTF-16 units; a conservative byte bound here).
pub const NAME_MAX: usize = 255;

/// `renameat2` flags (the Linux values the kernel forwards).
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 1 << 1;
pub const RENAME_WHITEOUT: u32 = 1 << 2;

/// How long a create waits for an unlinked file of the same name to be closed (see `create_after_pending_delete`).
const DELETE_PENDING_WAIT: Duration = Duration::from_secs(5);

/// `SmbFs::root_group` when no chown of the root has changed the mount's group.
const NO_GROUP: u64 = u64::MAX;

/// A time to set with `setattr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    Now,
    At(SystemTime),
}

/// The changes of one `setattr`; `None` leaves that attribute as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// One entry of a directory listing. `offset` is the offset of the entry after it (where a listing resumes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirItem<'a> {
    pub ino: u64,
    pub offset: u64,
    pub kind: FileKind,
    pub name: &'a str,
}

/// What `statfs` shows, in blocks of `bsize` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// A write accepted into the inode's write-behind queue: its range is reserved (so later reads and overlapping
/// writes wait for it), and [`WriteBehind::complete`] sends it. The caller acknowledges the write in between;
/// a failure is reported by the next write, flush or fsync of the file.
pub struct WriteBehind {
    file: Arc<OpenFile>,
    locks: Arc<Locks>,
    /// An O_APPEND write: at the server's end of file, not at `offset`.
    append: bool,
    ticket: Ticket,
    offset: u64,
    data: Arc<Vec<u8>>,
    /// With a takeover journal: the write's number there, marked done before its range is freed.
    journaled: Option<(SharedJournal, u64)>,
}

impl WriteBehind {
    /// Bytes accepted.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The SMB side of the write: at the server's end of file for O_APPEND; a write the server refuses because
    /// another handle of this node holds a lock on the range goes through that handle (see `fs::locks`).
    async fn transmit(&self) -> Result<(), Errno> {
        let f = self.file.file();
        if self.append {
            return f.append(&self.data).await.map_err(|e| errno(&e, "write", f.path()));
        }
        let mut result = f.write_at(self.offset, &self.data).await;
        if is_range_conflict(&result) {
            let end = self.offset.saturating_add(self.data.len() as u64);
            if let Some(holder) = self.locks.handle_covering(self.file.ino, &self.file, self.offset, end) {
                result = holder.file().write_at(self.offset, &self.data).await;
            }
        }
        result.map_err(|e| errno(&e, "write", f.path()))
    }

    /// Sends the write to the server and records its outcome in the queue (and the journal: done before the
    /// range is freed, so no later overlapping write can be overtaken by a resend of this one).
    pub async fn complete(self) {
        let result = self.transmit().await;
        if let Some((journal, seq)) = &self.journaled {
            if let Err(e) = journal.lock().unwrap().append(Record::WriteDone { seq: *seq }) {
                tracing::warn!(error = %e, "takeover journal not written");
            }
        }
        self.ticket.finish(result);
    }
}

/// The filesystem: share path `root` of an SMB tree, served as the root directory (inode [`ROOT_INO`]).
pub struct SmbFs {
    tree: Tree,
    rt: Handle,
    cfg: FsConfig,
    inodes: Mutex<Inodes>,
    handles: Handles,
    /// The group set by a chown of the mount root ([`NO_GROUP`]: none; see the module doc of `fs`).
    root_group: AtomicU64,
    /// The last answer of the server to statfs, for [`SmbFs::statfs`] while the connection is down.
    last_statfs: Mutex<Option<StatFs>>,
    /// POSIX and flock locks (see `fs::locks`).
    locks: Arc<Locks>,
    /// Lease breaks: write-behind flushed and kernel caches invalidated before the acknowledgment (`fs::lease`).
    leases: Arc<LeaseWatch>,
    /// Handles opened with O_APPEND: their writes go to the server's end of file (see [`SmbFs::write`]).
    appenders: Mutex<std::collections::HashSet<u64>>,
    /// The takeover journal (see `journal`): every change of the node and handle tables the kernel sees.
    /// Taken after the `inodes` lock when both are held, so the journal's order is the tables' order.
    journal: Option<SharedJournal>,
    /// Names known absent within the attribute TTL (see `dircache`): a create's LOOKUP needs no round trip.
    dircache: Mutex<DirCache>,
    /// Directory attributes within the attribute TTL (see `dirattrs`): a create's permission check on its
    /// parent needs no round trip.
    dirattrs: Mutex<DirAttrs>,
    /// Data read with an open, for the handle's first read (see `prefetch`).
    prefetched: Arc<Prefetched>,
    /// SMB handles kept open after their last release (`closetimeo`, see `linger`).
    lingering: Arc<Lingering>,
}

/// A release begun in the kernel's order and finished later (see [`SmbFs::begin_release`]).
pub struct Release {
    fh: u64,
    file: Arc<OpenFile>,
    /// Whether other handle numbers still use the SMB handle.
    shared: bool,
    /// The share path, while the release may leave a lingering handle there.
    announced: Option<(String, Announced)>,
}

/// Whether an I/O failed because the range is locked by another open (SMB locks are mandatory).
fn is_range_conflict<T>(r: &Result<T, smb::Error>) -> bool {
    matches!(r, Err(e) if e.status() == Some(smb::NtStatus::FILE_LOCK_CONFLICT) || matches!(e, smb::Error::LockConflict { .. }))
}

/// SMB access for open(2) flags; a read-only mount refuses writing and truncating opens.
fn open_options(flags: i32, read_only_mount: bool) -> Result<OpenOptions, Errno> {
    let mode = OFlag::from_bits_truncate(flags) & OFlag::O_ACCMODE;
    let write = mode == OFlag::O_WRONLY || mode == OFlag::O_RDWR;
    let truncate = flags & OFlag::O_TRUNC.bits() != 0;
    if read_only_mount && (write || truncate) {
        return Err(Errno::EROFS);
    }
    // O_APPEND is honoured per write (see `SmbFs::write`): a plain write handle serves it.
    Ok(OpenOptions::new().read(mode == OFlag::O_RDONLY || mode == OFlag::O_RDWR).write(write).truncate(truncate))
}

fn filetime(t: Option<SetTime>) -> u64 {
    match t {
        None => 0,
        Some(SetTime::Now) => smb::wire::info::system_time_to_filetime(SystemTime::now()),
        Some(SetTime::At(t)) => smb::wire::info::system_time_to_filetime(t),
    }
}

impl SmbFs {
    /// `rt` closes dropped SMB handles; it must be the runtime (or a handle of it) the tree's connection lives on.
    pub fn new(tree: Tree, root: &str, cfg: FsConfig, rt: Handle) -> SmbFs {
        let root = join_path("", root);
        let leases = Arc::new(LeaseWatch::default());
        tree.set_lease_break_handler(leases.clone());
        let prefetched = Arc::new(Prefetched::new(cfg.attr_ttl));
        leases.set_invalidator(Arc::new(ForgetOnBreak { prefetched: prefetched.clone(), then: None }));
        let watch = leases.clone();
        let lingering =
            Arc::new(Lingering::new(rt.clone(), cfg.close_timeout, cfg.max_lingering, move |key| watch.closed(key)));
        leases.set_lingering(&lingering);
        SmbFs {
            tree,
            handles: Handles::new(rt.clone()),
            rt,
            inodes: Mutex::new(Inodes::new(&root)),
            root_group: AtomicU64::new(NO_GROUP),
            last_statfs: Mutex::new(None),
            locks: Arc::new(Locks::new(cfg.byte_range_locks)),
            appenders: Mutex::default(),
            leases,
            dircache: Mutex::new(DirCache::new(cfg.attr_ttl)),
            dirattrs: Mutex::new(DirAttrs::new(cfg.attr_ttl)),
            prefetched,
            lingering,
            cfg,
            journal: None,
        }
    }

    /// A filesystem that keeps a takeover journal in `state_dir` (a new one: any earlier journal there is
    /// replaced), so that a successor process can serve its FUSE connection ([`SmbFs::restore`]).
    pub fn with_journal(
        tree: Tree,
        root: &str,
        cfg: FsConfig,
        rt: Handle,
        state_dir: &std::path::Path,
    ) -> Result<SmbFs, JournalError> {
        let mut fs = SmbFs::new(tree, root, cfg, rt);
        let root = fs.inodes.lock().unwrap().path(ROOT_INO).unwrap_or_default().to_string();
        let mut snapshot = Snapshot::default();
        snapshot.apply(&Record::Root { path: root });
        fs.journal = Some(Arc::new(Mutex::new(Journal::create(state_dir, snapshot)?)));
        Ok(fs)
    }

    /// The filesystem a predecessor served, from its journal in `state_dir`: the same node ids (paths and
    /// lookup counts) and handle numbers, each open file opened again by path with its access (a file that
    /// cannot be opened again, e.g. unlinked while open, answers EBADF to its handle). The journal is
    /// compacted and continued. Writes the predecessor acknowledged but had not sent are sent first, in their
    /// order. Returns the filesystem and the INIT parameters the connection was set up with.
    pub async fn restore(
        tree: Tree,
        root: &str,
        cfg: FsConfig,
        rt: Handle,
        state_dir: &std::path::Path,
    ) -> Result<(SmbFs, Option<InitOut>), JournalError> {
        let (mut snapshot, torn) = Journal::load(state_dir)?;
        if torn > 0 {
            tracing::info!(bytes = torn, "takeover journal: ignored a torn last record");
        }
        let mut fs = SmbFs::new(tree, root, cfg, rt);
        let root = fs.inodes.lock().unwrap().path(ROOT_INO).unwrap_or_default().to_string();
        if snapshot.root.as_deref() != Some(root.as_str()) {
            tracing::warn!(journal = ?snapshot.root, root, "takeover journal was written for another root");
        }
        *fs.inodes.get_mut().unwrap() =
            Inodes::restore(&root, snapshot.nodes.iter().map(|(ino, n)| (*ino, n.path.as_str(), n.lookups)));
        if let Some(gid) = snapshot.root_group {
            fs.root_group.store(u64::from(gid), Ordering::Relaxed);
        }
        fs.handles.continue_from(snapshot.next_fh.max(1));
        let mut lost = Vec::new();
        let mut reopened = std::collections::HashMap::new();
        for (&fh, f) in &snapshot.files {
            let Some(path) = snapshot.nodes.get(&f.ino).map(|n| n.path.clone()) else {
                lost.push(fh);
                continue;
            };
            // Reopened as it was opened, but never truncated or created again.
            let flags = f.flags & !(OFlag::O_TRUNC | OFlag::O_CREAT | OFlag::O_EXCL).bits();
            let opened = match open_options(flags, fs.cfg.read_only) {
                Ok(opts) => fs.tree.open(&path, opts).await.map_err(|e| errno(&e, "reopen", &path)),
                Err(e) => Err(e),
            };
            match opened {
                Ok(file) => {
                    // Locks held through the predecessor's SMB handles went with its connection; the lease and
                    // O_APPEND are set up again for the new one.
                    let (key, state) = (file.lease_key(), file.granted_lease());
                    fs.handles.insert_file(fh, f.ino, file, f.flags);
                    reopened.insert(fh, ());
                    if let Ok(open) = fs.handles.file(fh) {
                        fs.leases.opened(key, f.ino, &open.queue, state);
                    }
                    if f.flags & OFlag::O_APPEND.bits() != 0 {
                        fs.appenders.lock().unwrap().insert(fh);
                    }
                }
                Err(e) => {
                    tracing::warn!(fh, path = %format!("/{path}"), error = %e, "takeover: open file could not be reopened");
                    lost.push(fh);
                }
            }
        }
        for &fh in snapshot.dirs.keys() {
            fs.handles.insert_dir(fh);
        }
        for fh in lost {
            snapshot.apply(&Record::Released { fh });
        }
        fs.resend_writes(&snapshot, &reopened).await;
        snapshot.pending.clear();
        let init = snapshot.init;
        fs.journal = Some(Arc::new(Mutex::new(Journal::create(state_dir, snapshot)?)));
        Ok((fs, init))
    }

    /// Sends the writes a predecessor acknowledged and had not sent, in their order: through the reopened
    /// handle, or (handle released or lost) through a new handle of the node's path. A failure is logged:
    /// the application that wrote them was told they succeeded and cannot be told otherwise.
    async fn resend_writes(&self, snapshot: &Snapshot, reopened: &std::collections::HashMap<u64, ()>) {
        if snapshot.pending.is_empty() {
            return;
        }
        tracing::info!(writes = snapshot.pending.len(), "takeover: sending the writes the previous server had queued");
        for w in snapshot.pending.values() {
            let sent = match reopened.get(&w.fh).and_then(|()| self.handles.file(w.fh).ok()) {
                Some(f) => f.file().write_at(w.offset, &w.data).await.map_err(|e| e.to_string()),
                None => match snapshot.nodes.get(&w.ino) {
                    Some(node) => match self.tree.open(&node.path, OpenOptions::new().write(true)).await {
                        Ok(f) => {
                            let r = f.write_at(w.offset, &w.data).await;
                            let _ = f.close().await;
                            r.map_err(|e| e.to_string())
                        }
                        Err(e) => Err(e.to_string()),
                    },
                    None => Err("its node is unknown".to_string()),
                },
            };
            if let Err(e) = sent {
                tracing::error!(fh = w.fh, ino = w.ino, offset = w.offset, error = %e, "takeover: a queued write was lost");
            }
        }
    }

    /// Appends to the takeover journal, if any. A failure is logged: serving goes on (only a takeover would
    /// miss the change).
    fn record(&self, r: Record) {
        if let Some(j) = &self.journal {
            if let Err(e) = j.lock().unwrap().append(r) {
                tracing::warn!(error = %e, "takeover journal not written");
            }
        }
    }

    /// Records the INIT parameters the kernel and this server agreed on.
    pub fn record_init(&self, init: InitOut) {
        self.record(Record::Init(init));
    }

    /// Waits for every queued write of every open file, and closes the lingering handles (a graceful handover:
    /// the successor reopens the kernel's handles from the journal and knows nothing of them).
    pub async fn drain_writes(&self) {
        for q in self.handles.queues() {
            q.drain().await;
        }
        self.lingering.close_all().await;
    }

    /// How many SMB handles linger after their last release (see `linger`).
    pub fn lingering_handles(&self) -> usize {
        self.lingering.count()
    }

    /// A graceful handover: the journal is synced and no longer written (the successor owns it).
    pub fn close_journal(&self) -> Result<(), JournalError> {
        match &self.journal {
            Some(j) => j.lock().unwrap().close(),
            None => Ok(()),
        }
    }

    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    /// What drops the kernel's caches of an inode when another node's change breaks our lease (see `fs::lease`).
    pub fn set_invalidator(&self, invalidator: Arc<dyn Invalidator>) {
        let prefetched = self.prefetched.clone();
        self.leases.set_invalidator(Arc::new(ForgetOnBreak { prefetched, then: Some(invalidator) }));
    }

    /// Registers an open SMB handle and its lease.
    fn add_open(&self, ino: u64, f: smb::File, flags: i32) -> u64 {
        let (key, state) = (f.lease_key(), f.granted_lease());
        let fh = self.handles.add_file(ino, f, flags);
        if let Ok(open) = self.handles.file(fh) {
            self.leases.opened(key, ino, &open.queue, state);
        }
        self.note_append(fh, flags);
        fh
    }

    fn note_append(&self, fh: u64, flags: i32) {
        if flags & OFlag::O_APPEND.bits() != 0 {
            self.appenders.lock().unwrap().insert(fh);
        }
    }

    /// A re-open served without a round trip: a handle number on an SMB handle of `ino` already open whose
    /// lease still caches reads and handles (no other node has written the file or wants it exclusively since:
    /// that would have broken the lease first), and that has the access `flags` need (see `handles`).
    /// An SMB handle lingering after its last release serves the same way (see `linger`).
    fn reuse_open(&self, ino: u64, flags: i32) -> Option<u64> {
        let usable = |f: &OpenFile| self.leases.caches_reads_and_handles(f.file().lease_key());
        let fh = match self.handles.share(ino, flags, usable) {
            Some(fh) => fh,
            None => self.handles.adopt(self.lingering.take_back(ino, flags, usable)?),
        };
        self.note_append(fh, flags);
        Some(fh)
    }

    /// The runtime the SMB calls run on.
    pub fn runtime(&self) -> &Handle {
        &self.rt
    }

    /// How long the kernel may cache the attributes and entries returned.
    pub fn ttl(&self) -> Duration {
        self.cfg.attr_ttl
    }

    fn attr(&self, ino: u64, m: &Metadata) -> Attr {
        file_attr(&self.cfg, self.root_group(), ino, m)
    }

    fn root_group(&self) -> Option<u32> {
        match self.root_group.load(Ordering::Relaxed) {
            NO_GROUP => None,
            g => u32::try_from(g).ok(),
        }
    }

    /// A chown of `ino` to `gid`: the mount's group when `ino` is the root of a writable mount (see the module
    /// doc of `fs`); `false` when nothing changes.
    fn chown_group(&self, ino: u64, gid: u32) -> bool {
        if ino != ROOT_INO || self.cfg.read_only || self.root_group().unwrap_or(self.cfg.gid) == gid {
            return false;
        }
        self.root_group.store(u64::from(gid), Ordering::Relaxed);
        self.record(Record::RootGroup { gid });
        true
    }

    fn writable(&self) -> Result<(), Errno> {
        if self.cfg.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    fn path(&self, ino: u64) -> Result<String, Errno> {
        self.inodes.lock().unwrap().path(ino).map(str::to_string).ok_or(Errno::ESTALE)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<String, Errno> {
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
    fn entry(&self, path: &str, m: &Metadata) -> Attr {
        let mut inodes = self.inodes.lock().unwrap();
        let ino = inodes.remember(path, m.file_id);
        self.record(Record::Lookup { ino, path: path.to_string() });
        drop(inodes);
        self.attr(ino, m)
    }

    /// Waits for the inode's queued writes (so sizes and data read back are current).
    async fn settle(&self, ino: u64) {
        if let Some(q) = self.handles.queue(ino) {
            q.drain().await;
        }
    }

    /// This node changed an entry of directory `parent` (see `dirattrs`).
    fn entry_changed(&self, parent: u64) {
        self.dirattrs.lock().unwrap().entry_changed(parent, SystemTime::now());
    }

    async fn stat(&self, path: &str) -> Result<Metadata, Errno> {
        self.tree.stat(path).await.map_err(|e| errno(&e, "stat", path))
    }

    /// The attributes of a file just opened with O_CREAT: those the CREATE answered (with the index number
    /// from its QFid) when it made a new file, else (an existing file, or a server without QFid) asked for.
    async fn created_metadata(f: &smb::File) -> Result<Metadata, smb::Error> {
        let m = f.opened_metadata();
        if f.was_created() && m.file_id != 0 {
            return Ok(m);
        }
        f.metadata().await
    }

    /// `m` with the file's index number, asked for when the server's answer had none.
    async fn with_file_id(&self, path: &str, m: Metadata) -> Result<Metadata, Errno> {
        if m.file_id != 0 {
            return Ok(m);
        }
        self.stat(path).await
    }

    async fn set_times(&self, path: &str, atime: Option<SetTime>, mtime: Option<SetTime>) -> Result<(), Errno> {
        let (a, m) = (filetime(atime), filetime(mtime));
        if a == 0 && m == 0 {
            return Ok(());
        }
        self.tree.set_times(path, a, m, 0).await.map_err(|e| errno(&e, "utimens", path))
    }

    /// `name` in directory `parent`; takes one reference to the inode returned (given back by [`SmbFs::forget`]).
    pub async fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        let path = self.child(parent, name)?;
        let relist = {
            let mut known = self.dircache.lock().unwrap();
            if known.is_absent(&path, Instant::now()) {
                return Err(Errno::ENOENT);
            }
            known.relist(&path, Instant::now()).map(str::to_owned)
        };
        if let Some(dir) = relist {
            // Renews what this node knows of the directory (see `dircache`); a failure leaves it to the stat.
            let _ = self.list_dir(&dir).await;
            if self.dircache.lock().unwrap().is_absent(&path, Instant::now()) {
                return Err(Errno::ENOENT);
            }
        }
        let asked = Instant::now();
        let m = self.stat(&path).await?;
        let attr = self.entry(&path, &m);
        self.dirattrs.lock().unwrap().fetched(attr.ino, &m, asked);
        Ok(match self.symlink_len(&path, &m).await {
            Some(len) => symlink_attr(&self.cfg, self.root_group(), attr.ino, &m, len),
            None => attr,
        })
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        let mut inodes = self.inodes.lock().unwrap();
        inodes.forget(ino, n);
        self.record(Record::Forget { ino, n });
    }

    /// Current attributes, after the inode's queued writes. Through an open handle when there is one (the kernel
    /// does not always pass it: fstat with fresh attributes, stat of /proc/self/fd), which still works after
    /// the name was unlinked.
    pub async fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<Attr, Errno> {
        let open = fh.and_then(|fh| self.handles.file(fh).ok()).or_else(|| self.handles.open_handle_of(ino));
        let path = self.path(ino)?;
        let asked = Instant::now();
        if open.is_none() {
            if let Some(m) = self.dirattrs.lock().unwrap().get(ino, asked) {
                return Ok(self.attr(ino, &m));
            }
        }
        self.settle(ino).await;
        let m = match open {
            Some(f) => f.file().metadata().await.map_err(|e| errno(&e, "getattr", &path))?,
            None => self.stat(&path).await?,
        };
        self.dirattrs.lock().unwrap().fetched(ino, &m, asked);
        Ok(self.attr_at(ino, &path, &m).await)
    }

    /// Truncates and sets times; chmod and chown succeed and change nothing, except a chown of the root to
    /// another group (see the module doc of `fs`).
    pub async fn setattr(&self, ino: u64, fh: Option<u64>, set: SetAttr) -> Result<Attr, Errno> {
        if self.cfg.read_only && (set.size.is_some() || set.atime.is_some() || set.mtime.is_some()) {
            return Err(Errno::EROFS);
        }
        if let Some(g) = set.gid.filter(|g| self.chown_group(ino, *g)) {
            tracing::info!(gid = g, "chown of the mount root: the mount's group is now {g}, with group read/write");
        } else if set.mode.is_some() || set.uid.is_some() || set.gid.is_some() {
            // Documented no-op: ownership and modes are the mount's (as with kernel cifs without unix extensions).
            tracing::debug!(
                ino,
                mode = ?set.mode,
                uid = ?set.uid,
                gid = ?set.gid,
                "chmod/chown ignored: modes and owner come from the mount options"
            );
        }
        let path = self.path(ino)?;
        let open = fh.and_then(|fh| self.handles.file(fh).ok());
        self.dirattrs.lock().unwrap().forget(ino);
        self.settle(ino).await;
        if let Some(len) = set.size {
            self.prefetched.forget_ino(ino);
            match &open {
                Some(f) => f.file().set_len(len).await.map_err(|e| errno(&e, "truncate", &path))?,
                None => {
                    let f = self
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
        self.set_times(&path, set.atime, set.mtime).await?;
        let asked = Instant::now();
        let m = match &open {
            Some(f) => f.file().metadata().await.map_err(|e| errno(&e, "getattr", &path))?,
            None => self.stat(&path).await?,
        };
        self.dirattrs.lock().unwrap().fetched(ino, &m, asked);
        Ok(self.attr_at(ino, &path, &m).await)
    }

    /// The target of a symlink (with `mfsymlinks`: a Minshall+French symlink file); EINVAL for anything else.
    pub async fn readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let path = self.path(ino)?;
        if !self.cfg.mfsymlinks {
            return Err(Errno::EINVAL);
        }
        self.read_mfsymlink(&path).await?.ok_or(Errno::EINVAL)
    }

    /// The target stored in `path` if it is a Minshall+French symlink file (`None`: an ordinary file).
    async fn read_mfsymlink(&self, path: &str) -> Result<Option<Vec<u8>>, Errno> {
        let data = self
            .tree
            .read_small_file(path, mfsymlink::FILE_SIZE as u32 + 1)
            .await
            .map_err(|e| errno(&e, "readlink", path))?;
        Ok(mfsymlink::decode(&data).ok())
    }

    /// Whether `m` (of `path`) is a symlink to show: with `mfsymlinks`, a regular file of exactly the
    /// Minshall+French size whose contents check out. Returns the target's length.
    async fn symlink_len(&self, path: &str, m: &Metadata) -> Option<usize> {
        if !self.cfg.mfsymlinks || m.is_dir() || m.size != mfsymlink::FILE_SIZE as u64 {
            return None;
        }
        match self.read_mfsymlink(path).await {
            Ok(target) => target.map(|t| t.len()),
            Err(_) => None,
        }
    }

    /// Attributes of `ino` at `path`, as a symlink when it is one.
    async fn attr_at(&self, ino: u64, path: &str, m: &Metadata) -> Attr {
        match self.symlink_len(path, m).await {
            Some(len) => symlink_attr(&self.cfg, self.root_group(), ino, m, len),
            None => self.attr(ino, m),
        }
    }

    /// The Minshall+French symlinks among the listing's entries from `offset` on (by name, with their target's
    /// length): only files of exactly the symlink size are read, and only with `mfsymlinks`.
    async fn symlinks_among(
        &self,
        dir: &str,
        entries: &[DirEntry],
        offset: u64,
    ) -> std::collections::HashMap<String, usize> {
        let mut links = std::collections::HashMap::new();
        for e in entries.iter().skip(offset.saturating_sub(2) as usize) {
            if let Some(len) = self.symlink_len(&join_path(dir, &e.name), &e.metadata).await {
                links.insert(e.name.clone(), len);
            }
        }
        links
    }

    /// symlink(2): with `mfsymlinks` a Minshall+French symlink file holding `target` (cifs' format, so a cifs
    /// mount with `mfsymlinks` reads it as a link too); without it, EPERM (SMB has no symlinks of its own
    /// that a client without unix extensions may create).
    pub async fn symlink(&self, parent: u64, name: &OsStr, target: &OsStr) -> Result<Attr, Errno> {
        self.writable()?;
        if !self.cfg.mfsymlinks {
            return Err(Errno::EPERM);
        }
        let path = self.child(parent, name)?;
        let target = target.as_encoded_bytes();
        let contents = mfsymlink::encode(target).map_err(|_| Errno::ENAMETOOLONG)?;
        let m = self
            .tree
            .write_whole_file(&path, &contents, smb::WholeFile::CreateNew)
            .await
            .map_err(|e| errno(&e, "symlink", &path))?;
        self.dircache.lock().unwrap().added(&path);
        self.entry_changed(parent);
        let m = self.with_file_id(&path, m).await?;
        let attr = self.entry(&path, &m);
        Ok(symlink_attr(&self.cfg, self.root_group(), attr.ino, &m, target.len()))
    }

    /// Creates an empty regular file (`mode` carries the file type: anything else is EPERM).
    pub async fn mknod(&self, parent: u64, name: &OsStr, mode: u32) -> Result<Attr, Errno> {
        if mode & 0o170000 != 0o100000 {
            return Err(Errno::EPERM);
        }
        self.writable()?;
        let path = self.child(parent, name)?;
        let f = self
            .tree
            .open(&path, OpenOptions::new().write(true).create_new(true))
            .await
            .map_err(|e| errno(&e, "mknod", &path))?;
        self.dircache.lock().unwrap().added(&path);
        self.entry_changed(parent);
        let m = Self::created_metadata(&f).await;
        let _ = f.close().await;
        let m = m.map_err(|e| errno(&e, "mknod", &path))?;
        Ok(self.entry(&path, &m))
    }

    pub async fn mkdir(&self, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        self.writable()?;
        let path = self.child(parent, name)?;
        let asked = Instant::now();
        self.tree.mkdir(&path).await.map_err(|e| errno(&e, "mkdir", &path))?;
        self.dircache.lock().unwrap().made_dir(&path, asked);
        self.entry_changed(parent);
        let m = self.stat(&path).await?;
        let attr = self.entry(&path, &m);
        self.dirattrs.lock().unwrap().fetched(attr.ino, &m, asked);
        Ok(attr)
    }

    /// Removes a file; its open handles keep working until closed (see the module doc of `fs`).
    pub async fn unlink(&self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        self.remove(parent, name, false).await
    }

    pub async fn rmdir(&self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        self.remove(parent, name, true).await
    }

    /// unlink and rmdir: the same request but for the kind of entry removed.
    async fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        self.writable()?;
        let path = self.child(parent, name)?;
        self.close_lingering_at(&path).await;
        let (result, op) = if dir {
            (self.tree.remove_dir(&path).await, "rmdir")
        } else {
            (self.tree.remove_file(&path).await, "unlink")
        };
        result.map_err(|e| errno(&e, op, &path))?;
        self.dircache.lock().unwrap().removed(&path);
        self.entry_changed(parent);
        self.inodes.lock().unwrap().unlinked(&path);
        Ok(())
    }

    /// `flags` are renameat2's: RENAME_NOREPLACE is honoured, RENAME_EXCHANGE and RENAME_WHITEOUT are EINVAL.
    pub async fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<(), Errno> {
        self.writable()?;
        if flags & (RENAME_EXCHANGE | RENAME_WHITEOUT) != 0 {
            return Err(Errno::EINVAL);
        }
        let from = self.child(parent, name)?;
        let to = self.child(newparent, newname)?;
        let replace = flags & RENAME_NOREPLACE == 0;
        self.close_lingering_at(&from).await;
        self.close_lingering_at(&to).await;
        self.tree.rename(&from, &to, replace).await.map_err(|e| errno(&e, "rename", &from))?;
        {
            let mut known = self.dircache.lock().unwrap();
            known.removed(&from);
            known.removed(&to);
            known.added(&to);
        }
        self.entry_changed(parent);
        self.entry_changed(newparent);
        let mut inodes = self.inodes.lock().unwrap();
        inodes.renamed(&from, &to);
        self.record(Record::Renamed { from, to });
        Ok(())
    }

    /// A hard link where the server allows one (FileLinkInformation); EPERM where it does not.
    pub async fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<Attr, Errno> {
        self.writable()?;
        let existing = self.path(ino)?;
        let link = self.child(newparent, newname)?;
        match self.tree.hard_link(&existing, &link).await {
            Ok(()) => {}
            Err(e) => {
                return Err(match errno(&e, "link", &link) {
                    Errno::EOPNOTSUPP | Errno::EACCES => Errno::EPERM,
                    other => other,
                })
            }
        }
        self.dircache.lock().unwrap().added(&link);
        self.entry_changed(newparent);
        let m = self.stat(&link).await?;
        Ok(self.entry(&link, &m))
    }

    /// Opens a regular file with open(2) `flags`; returns the handle number.
    pub async fn open(&self, ino: u64, flags: i32) -> Result<u64, Errno> {
        let opts = open_options(flags, self.cfg.read_only)?;
        let path = self.path(ino)?;
        if let Some(fh) = self.reuse_open(ino, flags) {
            // Another handle of this node opens the file: earlier opens' prefetched data is dropped (see below).
            self.prefetched.forget_ino(ino);
            self.record(Record::FileOpened { fh, ino, flags });
            return Ok(fh);
        }
        // A lingering handle that cannot serve this open (O_TRUNC, more access) must not stand in its way.
        self.lingering.close_ino(ino).await;
        // A read-only open of a file no other handle of this node has open reads its first bytes with the
        // CREATE (see `prefetch`); any other open may change the file, so earlier opens' data is dropped.
        let reading_alone = OFlag::from_bits_truncate(flags) & (OFlag::O_ACCMODE | OFlag::O_TRUNC) == OFlag::O_RDONLY
            && self.prefetched.enabled()
            && self.handles.open_handle_of(ino).is_none();
        if !reading_alone {
            self.prefetched.forget_ino(ino);
        }
        let opened_at = Instant::now();
        let opened = if reading_alone {
            self.tree.open_and_read(&path, opts, PREFETCH_LEN).await
        } else {
            self.tree.open(&path, opts).await.map(|f| (f, None))
        };
        let (f, head) = match opened {
            // The kernel's entry is older than another node's unlink. ESTALE makes the kernel walk the path
            // again with revalidation (a fresh LOOKUP): the open then fails with ENOENT, or, with O_CREAT
            // (which the kernel does not pass to OPEN), becomes a CREATE, as on a local disk.
            Err(e) if smb::is_not_found(&e) => return Err(Errno::ESTALE),
            r => r,
        }
        .map_err(|e| errno(&e, "open", &path))?;
        if f.is_dir() {
            let _ = f.close().await;
            return Err(Errno::EISDIR);
        }
        let fh = self.add_open(ino, f, flags);
        self.record(Record::FileOpened { fh, ino, flags });
        if let Some(head) = head {
            self.prefetched.put(fh, ino, head, PREFETCH_LEN, opened_at);
        }
        Ok(fh)
    }

    /// CREATE of a name whose previous file was unlinked while still open somewhere (the server keeps it,
    /// delete-pending, until its last handle closes; a close of this node runs in the background after the
    /// kernel's release, and SQLite deletes and recreates its journal for every transaction): POSIX lets the
    /// name be created at once, so STATUS_DELETE_PENDING is waited out for up to [`DELETE_PENDING_WAIT`].
    async fn create_after_pending_delete(&self, path: &str, opts: OpenOptions) -> Result<smb::File, smb::Error> {
        let until = std::time::Instant::now() + DELETE_PENDING_WAIT;
        loop {
            match self.tree.open(path, opts).await {
                Err(e) if e.status() == Some(smb::NtStatus::DELETE_PENDING) && std::time::Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                r => return r,
            }
        }
    }

    /// Creates (or, without O_EXCL, opens) `name` in `parent` and opens it; takes one reference to the inode.
    pub async fn create(&self, parent: u64, name: &OsStr, flags: i32) -> Result<(Attr, u64), Errno> {
        self.writable()?;
        let path = self.child(parent, name)?;
        let opts = open_options(flags, false)?.write(true).create(true).create_new(flags & OFlag::O_EXCL.bits() != 0);
        if flags & OFlag::O_TRUNC.bits() != 0 {
            self.close_lingering_at(&path).await;
        }
        let f = self.create_after_pending_delete(&path, opts).await.map_err(|e| errno(&e, "create", &path))?;
        self.dircache.lock().unwrap().added(&path);
        self.entry_changed(parent);
        let m = match Self::created_metadata(&f).await {
            Ok(m) => m,
            Err(e) => {
                let _ = f.close().await;
                return Err(errno(&e, "create", &path));
            }
        };
        let attr = self.entry(&path, &m);
        // An O_CREAT open of a file that was there may now change it.
        self.prefetched.forget_ino(attr.ino);
        let fh = self.add_open(attr.ino, f, flags);
        self.record(Record::FileOpened { fh, ino: attr.ino, flags });
        Ok((attr, fh))
    }

    /// Up to `size` bytes at `offset`, after any queued write of that range. A read the server refuses because
    /// another handle of this node holds a lock on the range goes through that handle (see `fs::locks`).
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<bytes::Bytes, Errno> {
        let f = self.handles.file(fh)?;
        let end = offset.saturating_add(u64::from(size));
        f.queue.wait_range(offset, end).await;
        if let Some(data) = self.prefetched.take(fh, offset, size, Instant::now()) {
            return Ok(data);
        }
        let mut result = f.file().read_at_bytes(offset, size as usize).await;
        if is_range_conflict(&result) {
            if let Some(holder) = self.locks.handle_covering(f.ino, &f, offset, end) {
                result = holder.file().read_at_bytes(offset, size as usize).await;
            }
        }
        result.map_err(|e| errno(&e, "read", f.file().path()))
    }

    /// F_SETLK/F_SETLKW (`owner` [`LockOwner::Posix`]) and flock ([`LockOwner::Flock`]) on open handle `fh`:
    /// locks `[start, end]` (inclusive end, as FUSE sends it) as `kind`, or unlocks it (`None`). `wait`: block
    /// until granted or `interrupted` resolves (EINTR); otherwise a conflict is EAGAIN. See `fs::locks`.
    #[allow(clippy::too_many_arguments)]
    pub async fn setlk(
        &self,
        ino: u64,
        fh: u64,
        owner: LockOwner,
        pid: u32,
        (start, end): (u64, u64),
        kind: Option<smb::LockKind>,
        wait: bool,
        interrupted: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), Errno> {
        tracing::debug!(ino, fh, ?owner, pid, start, end, ?kind, wait, "setlk");
        let f = self.handles.file(fh)?;
        if f.ino != ino || end < start {
            return Err(Errno::EINVAL);
        }
        let req = LockRequest { owner, pid, start, end: end.saturating_add(1), kind };
        self.locks.set(ino, fh, &f, req, wait, interrupted).await?;
        if kind.is_some() {
            // What was read with the open predates the lock (see `prefetch`).
            self.prefetched.forget_ino(ino);
        }
        if kind.is_some() && self.cfg.byte_range_locks {
            self.leases.invalidate(ino).await;
        }
        Ok(())
    }

    /// F_GETLK: a lock that conflicts with locking `[start, end]` (inclusive) as `kind` by `owner`, or `None`.
    pub async fn getlk(
        &self,
        ino: u64,
        fh: u64,
        owner: LockOwner,
        (start, end): (u64, u64),
        kind: smb::LockKind,
    ) -> Result<Option<Conflict>, Errno> {
        let f = self.handles.file(fh)?;
        if end < start {
            return Err(Errno::EINVAL);
        }
        let req = LockRequest { owner, pid: 0, start, end: end.saturating_add(1), kind: Some(kind) };
        self.locks.get(ino, &f, req).await
    }

    /// Queues `data` at `offset` behind the inode's earlier writes (call in the kernel's order); a failure of
    /// an earlier background write is returned instead. On a handle opened with O_APPEND the data goes to the
    /// server's end of file, wherever other nodes have moved it (the kernel's `offset` comes from a size that
    /// may be stale); such writes are sent one after the other (the queue holds everything from `offset` on).
    pub async fn write(&self, fh: u64, offset: u64, data: Vec<u8>) -> Result<WriteBehind, Errno> {
        let file = self.handles.file(fh)?;
        if let Some(e) = file.queue.take_error() {
            return Err(e);
        }
        let append = self.appenders.lock().unwrap().contains(&fh);
        let reserved = if append { u64::MAX - offset } else { data.len() as u64 };
        let ticket = file.queue.enqueue(offset, reserved).await;
        let data = Arc::new(data);
        let journaled = self.journal.as_ref().map(|j| {
            let mut journal = j.lock().unwrap();
            let seq = journal.next_write();
            let queued = Record::WriteQueued { seq, fh, ino: file.ino, offset, data: data.clone() };
            if let Err(e) = journal.append(queued) {
                tracing::warn!(error = %e, "takeover journal not written");
            }
            (j.clone(), seq)
        });
        Ok(WriteBehind { file, locks: self.locks.clone(), append, ticket, offset, data, journaled })
    }

    /// close(2): every queued write must have reached the server, and its failure is reported here.
    pub async fn flush(&self, fh: u64) -> Result<(), Errno> {
        let f = self.handles.file(fh)?;
        f.queue.drain().await;
        f.queue.take_error().map_or(Ok(()), Err)
    }

    /// The last close of a handle: the SMB handle closes after its queued writes (and before this returns,
    /// unless another handle number or a request in flight still uses it), or lingers for `closetimeo` in a
    /// form another node's `rm`/`mv` does not wait for (see `linger`).
    pub async fn release(&self, fh: u64) {
        if let Some(r) = self.begin_release(fh) {
            self.finish_release(r).await;
        }
    }

    /// The part of [`SmbFs::release`] that waits for nothing, to run in the kernel's order before the next
    /// request starts: the handle number is gone, and a release that may linger is announced (see `linger`),
    /// so an unlink the application sends right after its close(2) waits for it. `None`: nothing to finish.
    pub fn begin_release(&self, fh: u64) -> Option<Release> {
        self.appenders.lock().unwrap().remove(&fh);
        self.prefetched.forget(fh);
        let f = self.handles.remove_file(fh);
        self.record(Record::Released { fh });
        let (file, shared) = f?;
        let key = file.file().lease_key();
        let announced = match (shared, self.path(file.ino)) {
            (false, Ok(path)) if self.lingering.has_room() && self.leases.caches_reads_and_handles(key) => {
                let announced = self.lingering.announce(&path, key);
                Some((path, announced))
            }
            _ => None,
        };
        Some(Release { fh, file, shared, announced })
    }

    /// The rest of a release begun with [`SmbFs::begin_release`].
    pub async fn finish_release(&self, r: Release) {
        let Release { fh, file: f, shared, announced } = r;
        f.queue.drain().await;
        // Its SMB locks go with the handle number: unlocked on the server now when the SMB handle stays open
        // (another handle number uses it, or it may linger), else by its CLOSE. Its lease goes with the SMB
        // handle, unless another handle number still uses it, or it lingers.
        self.locks.release(f.ino, fh, shared || announced.is_some()).await;
        match (shared, announced) {
            (true, _) => OpenFile::close(f).await,
            // Dropped once the handle lingers or is closed: what waits for the release may go on.
            (false, Some((path, _announced))) => self.linger_or_close(f, path).await,
            (false, None) => self.close_unleased(f).await,
        }
    }

    /// The last handle number of an SMB handle is released and its lease goes with it: the handle closes.
    async fn close_unleased(&self, f: Arc<OpenFile>) {
        self.leases.closed(f.file().lease_key());
        OpenFile::close(f).await;
    }

    /// The last handle number of an SMB handle at `path` is released, announced as one that may linger: the
    /// handle lingers for `closetimeo` when its lease still caches reads and handles (see `linger`), else it
    /// closes (both before this returns). To linger, the file is opened again as the handle's guard, without
    /// FILE_SHARE_DELETE under the same lease key: that CREATE is the release's one round trip, as the CLOSE
    /// would have been.
    async fn linger_or_close(&self, f: Arc<OpenFile>, path: String) {
        let key = f.file().lease_key();
        let lingers = self.leases.caches_reads_and_handles(key);
        let flags = f.flags & !(OFlag::O_TRUNC | OFlag::O_CREAT | OFlag::O_EXCL).bits();
        let opts = open_options(flags, self.cfg.read_only);
        let (Some(key), true, Ok(opts)) = (key, lingers, opts) else {
            return self.close_unleased(f).await;
        };
        match self.tree.open(&path, opts.share_delete(false).lease_key(key)).await {
            Ok(guard) if guard.lease_key() == Some(key) && self.leases.reopened(key, guard.granted_lease()) => {
                self.lingering.keep(f, guard, path).await;
                // A break that came before the handle was kept found nothing to close: close it now.
                if !self.leases.caches_reads_and_handles(Some(key)) {
                    self.lingering.close_lease(key).await;
                }
            }
            Ok(guard) => {
                self.leases.closed(Some(key));
                let (closed, ()) = tokio::join!(guard.close(), OpenFile::close(f));
                if let Err(e) = closed {
                    tracing::warn!(path = %format!("/{path}"), error = %e, "closing SMB handle failed");
                }
            }
            Err(e) => {
                tracing::debug!(path = %format!("/{path}"), error = %e, "no lingering handle: the guard's open failed");
                self.leases.closed(Some(key));
                OpenFile::close(f).await;
            }
        }
    }

    /// Queued writes, then an SMB flush of the file.
    ///
    /// A handle opened read-only cannot be flushed (MS-SMB2 3.3.5.11: FLUSH needs write access, Samba answers
    /// ACCESS_DENIED) and wrote nothing itself; the inode's write-behind it shares is drained above, so fsync(2)
    /// of a read descriptor (busybox `sync FILE`) succeeds as on a local disk.
    pub async fn fsync(&self, fh: u64) -> Result<(), Errno> {
        let f = self.handles.file(fh)?;
        f.queue.drain().await;
        if let Some(e) = f.queue.take_error() {
            return Err(e);
        }
        match f.file().flush().await {
            Err(e) if e.status() == Some(smb::NtStatus::ACCESS_DENIED) => Ok(()),
            r => r.map_err(|e| errno(&e, "fsync", f.file().path())),
        }
    }

    /// A directory handle; the listing is taken by the first read.
    pub fn opendir(&self, ino: u64) -> Result<u64, Errno> {
        self.path(ino)?;
        let fh = self.handles.add_dir();
        self.record(Record::DirOpened { fh, ino });
        Ok(fh)
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.remove_dir(fh);
        self.record(Record::Released { fh });
    }

    /// Directory changes are made on the server as they happen: nothing to sync.
    pub fn fsyncdir(&self, _fh: u64) -> Result<(), Errno> {
        Ok(())
    }

    async fn readdir_entries(&self, fh: u64, path: &str, offset: u64) -> Result<Arc<Vec<DirEntry>>, Errno> {
        let stream = self.handles.dir(fh)?;
        let mut stream = stream.lock().await;
        if offset == 0 || stream.entries.is_none() {
            let list = self.list_dir(path).await?;
            stream.entries = Some(Arc::new(list));
        }
        Ok(stream.entries.clone().expect("listed"))
    }

    /// Lists directory `path` and makes the listing what this node knows of the directory's names, with the
    /// changes it made meanwhile (see `dircache`).
    async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>, Errno> {
        /// Ends the announced listing as failed if the future is dropped before the answer.
        struct Pending<'a>(Option<(&'a Mutex<DirCache>, &'a str)>);
        impl Drop for Pending<'_> {
            fn drop(&mut self) {
                if let Some((cache, dir)) = self.0.take() {
                    cache.lock().unwrap().listing_done(dir, None::<std::iter::Empty<&str>>, Instant::now());
                }
            }
        }
        self.dircache.lock().unwrap().listing_asked(path);
        let mut pending = Pending(Some((&self.dircache, path)));
        let asked = Instant::now();
        let list = self.tree.read_dir(path).await;
        pending.0 = None;
        let names = list.as_ref().ok().map(|l| l.iter().map(|e| e.name.as_str()));
        self.dircache.lock().unwrap().listing_done(path, names, asked);
        list.map_err(|e| errno(&e, "readdir", path))
    }

    /// Lists directory `ino` from `offset` into `add`, which returns `true` when it is full (the listing stops
    /// there and resumes from that entry's offset). Offsets: 1 = ".", 2 = "..", 3.. = entries.
    pub async fn readdir(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(DirItem<'_>) -> bool,
    ) -> Result<(), Errno> {
        let path = self.path(ino)?;
        let entries = self.readdir_entries(fh, &path, offset).await?;
        let links = self.symlinks_among(&path, &entries, offset).await;
        let mut at = offset;
        while at < entries.len() as u64 + 2 {
            let item = match at {
                0 => DirItem { ino, offset: 1, kind: FileKind::Directory, name: "." },
                1 => DirItem { ino: ROOT_INO, offset: 2, kind: FileKind::Directory, name: ".." },
                n => {
                    let e = &entries[(n - 2) as usize];
                    let kind = if e.metadata.is_dir() {
                        FileKind::Directory
                    } else if links.contains_key(&e.name) {
                        FileKind::Symlink
                    } else {
                        FileKind::RegularFile
                    };
                    let ino = if e.metadata.file_id > 1 { e.metadata.file_id } else { u64::MAX };
                    DirItem { ino, offset: n + 1, kind, name: &e.name }
                }
            };
            if add(item) {
                break;
            }
            at += 1;
        }
        Ok(())
    }

    /// [`SmbFs::readdir`] with attributes. Each real entry added takes one reference to its inode, and only once
    /// it fits (`add` returned `false`); "." and ".." take none (the kernel skips them).
    pub async fn readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(DirItem<'_>, &Attr) -> bool,
    ) -> Result<(), Errno> {
        let path = self.path(ino)?;
        let entries = self.readdir_entries(fh, &path, offset).await?;
        let links = self.symlinks_among(&path, &entries, offset).await;
        let mut at = offset;
        while at < entries.len() as u64 + 2 {
            let full = match at {
                0 | 1 => {
                    let dot_attr = Attr { ino, ..self.attr(ino, &dir_placeholder()) };
                    let item = if at == 0 {
                        DirItem { ino, offset: 1, kind: FileKind::Directory, name: "." }
                    } else {
                        DirItem { ino: ROOT_INO, offset: 2, kind: FileKind::Directory, name: ".." }
                    };
                    add(item, &dot_attr)
                }
                n => {
                    let e = &entries[(n - 2) as usize];
                    let child = join_path(&path, &e.name);
                    let mut inodes = self.inodes.lock().unwrap();
                    // Take the reference, and give it back if the entry did not fit.
                    let child_ino = inodes.remember(&child, e.metadata.file_id);
                    let attr = match links.get(&e.name) {
                        Some(len) => symlink_attr(&self.cfg, self.root_group(), child_ino, &e.metadata, *len),
                        None => self.attr(child_ino, &e.metadata),
                    };
                    let full = add(DirItem { ino: child_ino, offset: n + 1, kind: attr.kind, name: &e.name }, &attr);
                    if full {
                        inodes.forget(child_ino, 1);
                    } else {
                        self.record(Record::Lookup { ino: child_ino, path: child });
                    }
                    full
                }
            };
            if full {
                break;
            }
            at += 1;
        }
        Ok(())
    }

    /// The share's size. While the connection is down this answers at once with the last known sizes
    /// (zero blocks before the first answer) instead of waiting: statfs is how mount tables, the node's
    /// own health checks and `df` tell a live mount from a dead one, and a hard mount that is waiting
    /// for its server is alive.
    pub async fn statfs(&self) -> Result<StatFs, Errno> {
        if !self.tree.connection_state().is_connected() {
            let last = *self.last_statfs.lock().unwrap();
            return Ok(last.unwrap_or(StatFs {
                blocks: 0,
                bfree: 0,
                bavail: 0,
                bsize: 4096,
                namelen: NAME_MAX as u32,
            }));
        }
        let st = self.tree.statfs().await.map_err(|e| errno(&e, "statfs", ""))?;
        let bsize = st.block_size.clamp(512, u64::from(u32::MAX));
        let answer = StatFs {
            blocks: st.total_bytes / bsize,
            bfree: st.free_bytes / bsize,
            bavail: st.available_bytes / bsize,
            bsize: bsize as u32,
            namelen: NAME_MAX as u32,
        };
        *self.last_statfs.lock().unwrap() = Some(answer);
        Ok(answer)
    }

    /// Drops every open file (the kernel connection is gone); the SMB handles close on the runtime.
    pub fn close_all(&self) {
        self.handles.close_all();
        self.lingering.drop_all();
    }

    /// Closes the lingering handles at `path` or below, before this node changes what is there.
    async fn close_lingering_at(&self, path: &str) {
        self.lingering.close_at_or_below(path).await;
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
}
