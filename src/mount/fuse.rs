//! [`FuseMount`]: the one owner of a FUSE session (the kernel connection, its serving thread and the
//! filesystem over an SMB tree), so that a later change can hand sessions over across a plugin restart.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::os::fd::{AsRawFd, OwnedFd};

use fuser::SessionACL;
use nix::mount::MsFlags;
use tokio::runtime::Handle;

use super::{table, MountError, MountOptions};
use crate::fs::{FsConfig, FuseAdapter, SmbFs};
use smb3::{join_path, Tree};

/// The FUSE subtype: mounts show as `fuse.smb3-csi` in /proc/mounts.
pub const SUBTYPE: &str = "smb3-csi";
/// The filesystem type in the mount table.
pub const FSTYPE: &str = "fuse.smb3-csi";
/// FUSE request threads (each only decodes and hands the request to the runtime).
const FUSE_THREADS: usize = 2;

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
    thread: Option<JoinHandle<std::io::Result<()>>>,
    unmounted: bool,
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

impl FuseMount {
    /// Serves `tree` below `subdir` (share path) at `mountpoint` (must exist, be a directory) in background
    /// threads; returns once the mount is live (visible in /proc/self/mountinfo). fstype shows as
    /// `fuse.smb3-csi`, source as `//server/share/subdir` (no credentials). `allow_other` +
    /// `default_permissions` (unless `noperm`), with mount(2): needs root (CAP_SYS_ADMIN); fusermount is never used.
    ///
    /// Blocking. Call it from a thread on which a tokio multi-thread runtime is entered (a `spawn_blocking`
    /// closure, a test thread inside `Runtime::enter`): the SMB calls run on that runtime.
    pub fn mount(tree: Tree, subdir: &str, mountpoint: &Path, opts: &MountOptions) -> Result<FuseMount, MountError> {
        let rt = Handle::try_current().map_err(|_| MountError::NoRuntime)?;
        let bad = |why: String| MountError::MountPoint { path: mountpoint.to_path_buf(), why };
        let meta = std::fs::metadata(mountpoint).map_err(|e| bad(e.to_string()))?;
        if !meta.is_dir() {
            return Err(bad("not a directory".into()));
        }
        let mountpoint = mountpoint.canonicalize().map_err(|e| bad(e.to_string()))?;
        let root = join_path("", subdir);
        let server = tree.session_info().server.trim_end_matches(":445").to_string();
        let source = if root.is_empty() {
            format!("//{server}/{}", tree.share())
        } else {
            format!("//{server}/{}/{root}", tree.share())
        };
        let stat = {
            let (tree, root) = (tree.clone(), root.clone());
            wait_on(&rt, async move { tree.stat(&root).await })
        };
        let root_meta = stat.map_err(|e| MountError::Smb { source_path: source.clone(), source: e })?;
        if !root_meta.is_dir() {
            return Err(MountError::NotADirectory(source));
        }

        let fs = FuseAdapter::new(SmbFs::new(tree.clone(), &root, FsConfig::from(opts), rt));
        let session = mount_fuse(fs, &source, &mountpoint, opts)?;
        let thread = std::thread::Builder::new()
            .name("smb3-csi-fuse".into())
            .spawn(move || session.run())
            .map_err(|source| MountError::Io { op: "starting the FUSE thread".into(), source })?;
        let mount = FuseMount { mountpoint, source, tree, thread: Some(thread), unmounted: false };
        match table::mount_at(&mount.mountpoint)? {
            Some(m) if m.fstype == FSTYPE => {
                raise_readahead(&m.device);
                tracing::info!(source = %mount.source, mountpoint = %mount.mountpoint.display(), "mounted");
                Ok(mount)
            }
            other => Err(MountError::MountPoint {
                path: mount.mountpoint.clone(),
                why: format!("mount not visible in /proc/self/mountinfo (found {other:?})"),
            }),
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
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
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

    /// Unmounts (lazily if busy) and waits briefly for the session to end.
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.unmounted = true;
        table::unmount(&self.mountpoint)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.is_session_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        match self.thread.take() {
            // A lazily detached mount ends its session when the last user leaves; the thread is left to it.
            Some(t) if t.is_finished() => match t.join() {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "FUSE session ended with an error"),
            },
            _ => {}
        }
        tracing::info!(mountpoint = %self.mountpoint.display(), "unmounted");
        Ok(())
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if !self.unmounted {
            if let Err(e) = table::unmount(&self.mountpoint) {
                tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "unmount on drop failed");
            }
        }
    }
}

/// Mounts with mount(2) ourselves (root is required) and hands the /dev/fuse descriptor to fuser, so that the
/// kernel mount stays exactly as long as something unmounts it: a session that dies leaves a Dead mount for the
/// node service to see and clean, never an unmount racing with a newer mount at the same path.
fn mount_fuse(
    fs: FuseAdapter,
    source: &str,
    mountpoint: &Path,
    opts: &MountOptions,
) -> Result<fuser::Session<FuseAdapter>, MountError> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|source| MountError::Io { op: "opening /dev/fuse".into(), source })?;
    let data = fuse_mount_data(dev.as_raw_fd(), nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw(), opts);
    let flags = mount_flags(opts);
    nix::mount::mount(Some(source), mountpoint, Some("fuse"), flags, Some(data.as_str()))
        .map_err(|errno| MountError::Sys { op: "mount(2) of FUSE".into(), path: mountpoint.to_path_buf(), errno })?;
    let mut config = fuser::Config::default();
    config.n_threads = Some(FUSE_THREADS);
    config.acl = SessionACL::All;
    fuser::Session::from_fd(fs, OwnedFd::from(dev), SessionACL::All, config).map_err(|source| {
        let _ = table::unmount(mountpoint);
        MountError::Io { op: format!("FUSE handshake at {}", mountpoint.display()), source }
    })
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

/// The kernel starts FUSE mounts with 128 KiB readahead; 1 MiB lets sequential reads use 1 MiB requests
/// (pipelined SMB reads). Best effort: without /sys writable it stays at the default.
fn raise_readahead(device: &str) {
    let path = format!("/sys/class/bdi/{device}/read_ahead_kb");
    if let Err(e) = std::fs::write(&path, format!("{}", crate::fs::MAX_IO / 1024)) {
        tracing::debug!(path, error = %e, "could not raise readahead");
    }
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
