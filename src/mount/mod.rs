//! Mount lifecycle on a node: typed mount options, the one type that owns a FUSE session ([`FuseMount`]),
//! the kernel mount table (state, bind mounts, unmount).

mod credentials;
mod fuse;
mod options;
mod table;
mod target;

use std::path::PathBuf;

/// Re-exported: the cache mode is the filesystem's notion, and `cache=` sets it.
pub use crate::fs::CacheMode;
pub use credentials::{CcacheFile, CredentialsFile, SharedCredentials};
pub use fuse::{FuseMount, Unmounted, FSTYPE, SESSION_END_WAIT, SUBTYPE};
pub use options::{MountOptionError, MountOptions, RecoveryMode, DEFAULT_RETRANS};
pub use table::{bind_mount, mount_at, mount_state, mounts, parse_mountinfo, unmount, MountInfo, MountState};
pub use target::ConnectTarget;

/// Errors of mounting and unmounting. `Display` names the path and the operation; never a secret.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount point {path}: {why}")]
    MountPoint { path: PathBuf, why: String },
    #[error("{op} {path}: {errno}")]
    Sys { op: String, path: PathBuf, errno: nix::errno::Errno },
    #[error("{op}: {source}")]
    Io { op: String, source: std::io::Error },
    #[error("{source_path}: {source}")]
    Smb { source_path: String, source: smb3::Error },
    #[error("{0} is not a directory on the share")]
    NotADirectory(String),
    #[error("takeover state: {0}")]
    Takeover(#[source] crate::fs::journal::JournalError),
    #[error("cannot adopt the FUSE connection of {path}: {why}")]
    Adopt { path: PathBuf, why: String },
    #[error(
        "no tokio runtime: FuseMount::mount must be called from a thread of (or entered in) a multi-thread runtime"
    )]
    NoRuntime,
}
