//! [`FuseMount`]: the one owner of a FUSE session (the kernel connection, the request loop serving it on the
//! runtime, and the filesystem over an SMB tree), and the handover of a live session to another process:
//! [`FuseMount::device`] (the /dev/fuse connection to pass on), [`FuseMount::detach`] (graceful: stop, answer,
//! sync, keep the mount) and [`FuseMount::adopt`] (serve a connection another process initialised, from its
//! takeover journal in the state directory).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::mount::MsFlags;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::{table, MountError, MountOptions};
use crate::fs::fuse::Session;
use crate::fs::{FsConfig, Notifier, SmbFs};
use smb3::{join_path, Tree};

/// The FUSE subtype: mounts show as `fuse.smb3-csi` in /proc/mounts.
pub const SUBTYPE: &str = "smb3-csi";
/// The filesystem type in the mount table.
pub const FSTYPE: &str = "fuse.smb3-csi";

/// Longest [`FuseMount::unmount`] waits for the FUSE session to end after the unmount.
pub const SESSION_END_WAIT: Duration = Duration::from_secs(5);

/// How [`FuseMount::unmount`] left the FUSE session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmounted {
    /// The kernel ended the connection and the session finished (its SMB handles closed).
    SessionEnded,
    /// The session was still serving after [`SESSION_END_WAIT`] (a busy mount detached lazily ends when its
    /// last user leaves): it is left running.
    SessionLeftRunning,
}

/// A live FUSE mount of a directory of an SMB share.
///
/// ```no_run
/// # fn demo(tree: smb3::Tree) -> Result<(), smb3_csi::mount::MountError> {
/// use smb3_csi::mount::{FuseMount, MountOptions};
/// let (opts, _ignored) = MountOptions::parse(&["uid=1000,gid=1000".to_string()]).unwrap();
/// // From a thread that has a tokio multi-thread runtime entered (e.g. inside `spawn_blocking`):
/// let mount = FuseMount::mount(tree, "volumes/pvc-1", std::path::Path::new("/mnt/vol"), &opts)?;
/// assert!(mount.is_healthy());
/// mount.unmount()?;
/// # Ok(()) }
/// ```
pub struct FuseMount {
    mountpoint: PathBuf,
    source: String,
    tree: Tree,
    rt: Handle,
    session: Arc<Session>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    /// Unmounted or detached: dropping it leaves the kernel mount alone.
    released: bool,
}

impl std::fmt::Debug for FuseMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseMount").field("mountpoint", &self.mountpoint).field("source", &self.source).finish()
    }
}

/// Runs `fut` on `rt` and waits for it from this (non-async) thread.
fn wait_on<T: Send + 'static>(rt: &Handle, fut: impl std::future::Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().expect("the runtime dropped a task it was running")
}

/// What mount and adopt both work out first: the runtime, the share path served and how it is shown.
struct Target {
    rt: Handle,
    root: String,
    source: String,
}

fn target(tree: &Tree, subdir: &str) -> Result<Target, MountError> {
    let rt = Handle::try_current().map_err(|_| MountError::NoRuntime)?;
    let root = join_path("", subdir);
    let server = tree.session_info().server.trim_end_matches(":445").to_string();
    let source = if root.is_empty() {
        format!("//{server}/{}", tree.share())
    } else {
        format!("//{server}/{}/{root}", tree.share())
    };
    Ok(Target { rt, root, source })
}

impl FuseMount {
    /// Serves `tree` below `subdir` (share path) at `mountpoint` (must exist, be a directory) on the runtime;
    /// returns once the mount is live (visible in /proc/self/mountinfo). fstype shows as `fuse.smb3-csi`,
    /// source as `//server/share/subdir` (no credentials). `allow_other` + `default_permissions` (unless
    /// `noperm`), with mount(2): needs root (CAP_SYS_ADMIN); fusermount is never used. No takeover journal:
    /// see [`FuseMount::mount_with_state`].
    ///
    /// Blocking. Call it from a thread on which a tokio multi-thread runtime is entered (a `spawn_blocking`
    /// closure, a test thread inside `Runtime::enter`): the SMB calls run on it (the FUSE request loop reads
    /// on a thread of its own and hands each request to that runtime).
    pub fn mount(tree: Tree, subdir: &str, mountpoint: &Path, opts: &MountOptions) -> Result<FuseMount, MountError> {
        FuseMount::mount_with_state(tree, subdir, mountpoint, opts, None)
    }

    /// [`FuseMount::mount`], keeping the takeover journal in `state_dir` (created if missing; one directory per
    /// mount) so that another process can [`FuseMount::adopt`] the connection later, even after this one is
    /// killed (writes acknowledged but still queued for the server are in the journal with their data, and a
    /// successor sends them). `None`: no journal (e.g. `smb3-csi mount` by hand).
    pub fn mount_with_state(
        tree: Tree,
        subdir: &str,
        mountpoint: &Path,
        opts: &MountOptions,
        state_dir: Option<&Path>,
    ) -> Result<FuseMount, MountError> {
        let Target { rt, root, source } = target(&tree, subdir)?;
        let bad = |why: String| MountError::MountPoint { path: mountpoint.to_path_buf(), why };
        let meta = std::fs::metadata(mountpoint).map_err(|e| bad(e.to_string()))?;
        if !meta.is_dir() {
            return Err(bad("not a directory".into()));
        }
        let mountpoint = mountpoint.canonicalize().map_err(|e| bad(e.to_string()))?;
        let stat = {
            let (tree, root) = (tree.clone(), root.clone());
            wait_on(&rt, async move { tree.stat(&root).await })
        };
        let root_meta = stat.map_err(|e| MountError::Smb { source_path: source.clone(), source: e })?;
        if !root_meta.is_dir() {
            return Err(MountError::NotADirectory(source));
        }

        let cfg = FsConfig::from(opts);
        let fs = match state_dir {
            Some(dir) => {
                SmbFs::with_journal(tree.clone(), &root, cfg, rt.clone(), dir).map_err(MountError::Takeover)?
            }
            None => SmbFs::new(tree.clone(), &root, cfg, rt.clone()),
        };
        let dev = mount_fuse(&source, &mountpoint, opts)?;
        let session = Session::new(Arc::new(fs), dev, None).map_err(|source| {
            let _ = table::unmount(&mountpoint);
            MountError::Io { op: format!("serving /dev/fuse for {}", mountpoint.display()), source }
        })?;
        let task = session.start();
        let mount = FuseMount { mountpoint, source, tree, rt, session, task: Some(task), released: false };
        match table::mount_at(&mount.mountpoint)? {
            Some(m) if m.fstype == FSTYPE => {
                set_readahead(&mount.session, &m.device, opts.rasize);
                tracing::info!(source = %mount.source, mountpoint = %mount.mountpoint.display(), "mounted");
                Ok(mount)
            }
            other => Err(MountError::MountPoint {
                path: mount.mountpoint.clone(),
                why: format!("mount not visible in /proc/self/mountinfo (found {other:?})"),
            }),
        }
    }

    /// Serves an already-initialised connection taken over from another process (`device`: its /dev/fuse fd,
    /// passed over a unix socket or inherited): no INIT is read; the journal in `state_dir` is replayed (node
    /// ids, lookup counts, handle numbers; open files are opened again by path with their access), and
    /// FUSE_NOTIFY_RESEND makes the kernel queue again the requests the old process read and never answered.
    /// `tree`, `subdir` and `opts` must be those the connection was mounted with.
    ///
    /// The mount point is never touched (a stat would wait for the very server being replaced). On a kernel
    /// older than 6.9 (FUSE protocol < 7.40) the resend is refused: requests the old process had read stay
    /// unanswered and their callers hang until the mount is aborted; everything after them is served.
    ///
    /// Blocking, from a thread with a tokio multi-thread runtime entered, like [`FuseMount::mount`].
    pub fn adopt(
        tree: Tree,
        subdir: &str,
        mountpoint: &Path,
        opts: &MountOptions,
        device: OwnedFd,
        state_dir: &Path,
    ) -> Result<FuseMount, MountError> {
        let Target { rt, root, source } = target(&tree, subdir)?;
        let mountpoint = table::normalize(mountpoint)?;
        match table::mount_at(&mountpoint)? {
            Some(m) if m.fstype == FSTYPE => {}
            other => {
                return Err(MountError::Adopt {
                    path: mountpoint,
                    why: format!("no {FSTYPE} mount there in /proc/self/mountinfo (found {other:?})"),
                })
            }
        }
        let restored = {
            let (tree, cfg, rt2, dir) = (tree.clone(), FsConfig::from(opts), rt.clone(), state_dir.to_path_buf());
            wait_on(&rt, async move { SmbFs::restore(tree, &root, cfg, rt2, &dir).await })
        };
        let (fs, init) = restored.map_err(MountError::Takeover)?;
        let Some(init) = init else {
            return Err(MountError::Adopt {
                path: mountpoint,
                why: "the journal has no INIT: the connection was never initialised".into(),
            });
        };
        let session = Session::new(Arc::new(fs), device, Some(init)).map_err(|source| MountError::Io {
            op: format!("serving /dev/fuse for {}", mountpoint.display()),
            source,
        })?;
        let task = session.start();
        match session.resend() {
            Ok(()) => {
                tracing::info!(mountpoint = %mountpoint.display(), "takeover: kernel asked to resend pending requests")
            }
            Err(e) => tracing::warn!(
                mountpoint = %mountpoint.display(),
                kernel_minor = init.minor,
                error = %e,
                "takeover: FUSE_NOTIFY_RESEND refused (kernel before 6.9?): requests the previous server had read are lost"
            ),
        }
        tracing::info!(source = %source, mountpoint = %mountpoint.display(), "adopted");
        Ok(FuseMount { mountpoint, source, tree, rt, session, task: Some(task), released: false })
    }

    /// The /dev/fuse connection (dup it with `try_clone_to_owned` to hand the mount to another process).
    pub fn device(&self) -> BorrowedFd<'_> {
        self.session.device()
    }

    /// Cache invalidations for the kernel (lease breaks, changes seen on the server).
    pub fn notifier(&self) -> Notifier {
        self.session.notifier()
    }

    /// Graceful handover: stops reading new requests, answers the ones in flight, waits for write-behind,
    /// syncs the journal and closes this process's SMB handles, and returns WITHOUT unmounting: the
    /// successor adopts the connection (keep a dup of [`FuseMount::device`]: when the last fd of a
    /// connection closes, the kernel aborts it). Blocking, like [`FuseMount::unmount`].
    pub fn detach(mut self) -> Result<(), MountError> {
        self.released = true;
        let session = self.session.clone();
        let task = self.task.take();
        let synced = wait_on(&self.rt, async move {
            session.stop().await;
            if let Some(task) = task {
                if let Ok(Err(e)) = task.await {
                    tracing::debug!(error = %e, "FUSE session ended with an error");
                }
            }
            session.fs().drain_writes().await;
            let synced = session.fs().close_journal();
            session.fs().close_all();
            synced
        });
        synced.map_err(MountError::Takeover)?;
        tracing::info!(mountpoint = %self.mountpoint.display(), "detached for a handover (still mounted)");
        Ok(())
    }

    /// Whether the kernel connection behind `mountpoint` is still there to adopt: a `fuse.smb3-csi` mount in
    /// /proc/self/mountinfo whose connection is listed in /sys/fs/fuse/connections (when fusectl is mounted;
    /// without it the mount table alone decides). Never touches the mount point itself.
    pub fn connection_alive(mountpoint: &Path) -> Result<bool, MountError> {
        let Some(m) = table::mount_at(mountpoint)? else { return Ok(false) };
        if m.fstype != FSTYPE {
            return Ok(false);
        }
        let connections = Path::new("/sys/fs/fuse/connections");
        match connection_dir(&m.device) {
            Some(dir) if connections.join("..").exists() && has_entries(connections) => {
                Ok(connections.join(dir).exists())
            }
            _ => Ok(true),
        }
    }
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// `//server/share/subdir`, as shown in the mount table.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the FUSE session still serves the kernel (false after an external unmount or an aborted
    /// connection).
    pub fn is_session_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished()) && !self.session.has_ended()
    }

    /// Session thread alive and the SMB tree usable: connected, or reconnecting. A mount whose server is
    /// away for a while is not stale (its operations wait, or fail in time under `soft`); replacing it would
    /// break every open file of the pods using it. Only a client that gave up for good (tampering, logoff)
    /// makes the mount unhealthy.
    pub fn is_healthy(&self) -> bool {
        self.is_session_running() && self.tree.is_usable()
    }

    /// The SMB connection behind the mount: connected, reconnecting (why, since when) or failed for good.
    pub fn connection_state(&self) -> smb3::ConnectionState {
        self.tree.connection_state()
    }

    /// How many times the SMB connection behind the mount was re-established.
    pub fn reconnect_count(&self) -> u64 {
        self.tree.reconnect_count()
    }

    /// Unmounts (lazily if busy) and waits for the session to end: the kernel ends the FUSE connection when
    /// the mount goes, the session's loop then reads ENODEV, closes what the kernel left open and finishes;
    /// its task is awaited (no polling). A lazily detached mount that is still in use ends its session only
    /// when the last user leaves: after [`SESSION_END_WAIT`] the task is left to it and
    /// [`Unmounted::SessionLeftRunning`] says so.
    pub fn unmount(mut self) -> Result<Unmounted, MountError> {
        self.released = true;
        table::unmount(&self.mountpoint)?;
        let task = self.task.take();
        let ended = wait_on(&self.rt, async move {
            match task {
                Some(task) => tokio::time::timeout(SESSION_END_WAIT, task).await.is_ok(),
                None => true,
            }
        });
        let outcome = if ended { Unmounted::SessionEnded } else { Unmounted::SessionLeftRunning };
        tracing::info!(mountpoint = %self.mountpoint.display(), ?outcome, "unmounted");
        Ok(outcome)
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if !self.released {
            if let Err(e) = table::unmount(&self.mountpoint) {
                tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "unmount on drop failed");
            }
        }
    }
}

/// The entry of /sys/fs/fuse/connections for a mount's `major:minor` device: the minor number.
fn connection_dir(device: &str) -> Option<&str> {
    let (major, minor) = device.split_once(':')?;
    (major == "0" && !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit())).then_some(minor)
}

fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// Opens /dev/fuse and mounts it with mount(2) ourselves (root is required), so that the kernel mount stays
/// exactly as long as something unmounts it: a session that dies leaves a Dead mount for the node service to
/// see and clean (or a successor to adopt), never an unmount racing with a newer mount at the same path.
fn mount_fuse(source: &str, mountpoint: &Path, opts: &MountOptions) -> Result<OwnedFd, MountError> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|source| MountError::Io { op: "opening /dev/fuse".into(), source })?;
    let data = fuse_mount_data(dev.as_raw_fd(), nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw(), opts);
    let flags = mount_flags(opts);
    nix::mount::mount(Some(source), mountpoint, Some("fuse"), flags, Some(data.as_str()))
        .map_err(|errno| MountError::Sys { op: "mount(2) of FUSE".into(), path: mountpoint.to_path_buf(), errno })?;
    Ok(OwnedFd::from(dev))
}

/// mount(2) flags: device files and set-uid bits of a network share are never honoured (as `nodev,nosuid`
/// always are for user-space mounts); `ro` and `noexec` come from the options.
fn mount_flags(opts: &MountOptions) -> MsFlags {
    let mut flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    flags.set(MsFlags::MS_RDONLY, opts.read_only);
    flags.set(MsFlags::MS_NOEXEC, opts.noexec);
    flags
}

/// The FUSE mount data. `default_permissions` makes the kernel check the presented modes against the caller;
/// `noperm` leaves it out, so only the server decides (the filesystem itself checks nothing), as with cifs.
fn fuse_mount_data(fd: i32, uid: u32, gid: u32, opts: &MountOptions) -> String {
    let permissions = if opts.noperm { "" } else { ",default_permissions" };
    format!("fd={fd},rootmode=40000,user_id={uid},group_id={gid},allow_other{permissions},subtype={SUBTYPE}")
}

/// How long a new mount's INIT may take before the readahead is set anyway (the kernel sends INIT with the
/// mount(2) and the session answers it at once; this only bounds a kernel that never does).
const INIT_WAIT: Duration = Duration::from_secs(5);

/// Sets the mount's readahead to `rasize` bytes (`rasize=`; 0 leaves it). The kernel starts FUSE mounts at
/// 128 KiB and lowers the window to the INIT reply's `max_readahead` when it takes that reply, so this waits
/// for INIT first: set before, it would be undone. Best effort: without a writable /sys (an unprivileged
/// container) the mount keeps the kernel's window, and says so.
fn set_readahead(session: &Session, device: &str, rasize: u64) {
    if rasize == 0 {
        return;
    }
    let until = std::time::Instant::now() + INIT_WAIT;
    while !session.is_initialised() && !session.has_ended() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
    let path = format!("/sys/class/bdi/{device}/read_ahead_kb");
    let kb = readahead_kb(rasize);
    match std::fs::write(&path, kb.to_string()) {
        Ok(()) => tracing::debug!(path, kb, "readahead set"),
        Err(e) => {
            tracing::warn!(path, error = %e, "could not set the mount's readahead (rasize=): sequential reads stay slower")
        }
    }
}

/// `read_ahead_kb` for `rasize` bytes: whole KiB, at least one page.
fn readahead_kb(rasize: u64) -> u64 {
    (rasize / 1024).max(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(flags: &str) -> MountOptions {
        MountOptions::parse(&[flags.to_string()]).unwrap().0
    }

    #[test]
    fn flags_follow_ro_and_noexec_and_always_keep_nodev_nosuid() {
        let always = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
        assert_eq!(mount_flags(&MountOptions::default()), always);
        assert_eq!(mount_flags(&opts("noexec")), always | MsFlags::MS_NOEXEC);
        assert_eq!(mount_flags(&opts("ro,noexec")), always | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY);
        assert_eq!(mount_flags(&opts("noexec,exec")), always);
    }

    #[test]
    fn fuse_connections_are_named_by_the_minor_device_number() {
        assert_eq!(connection_dir("0:45"), Some("45"));
        assert_eq!(connection_dir("8:1"), None);
        assert_eq!(connection_dir("0:"), None);
        assert_eq!(connection_dir("garbage"), None);
    }

    #[test]
    fn noperm_drops_default_permissions_only() {
        let checked = fuse_mount_data(7, 0, 0, &MountOptions::default());
        assert_eq!(
            checked,
            "fd=7,rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions,subtype=smb3-csi"
        );
        let unchecked = fuse_mount_data(7, 0, 0, &opts("noperm"));
        assert_eq!(unchecked, "fd=7,rootmode=40000,user_id=0,group_id=0,allow_other,subtype=smb3-csi");
    }
}
