//! A FUSE filesystem over a directory of an SMB share.
//!
//! Two layers, so that the filesystem can be tested without a FUSE mount:
//! - [`SmbFs`] (`ops`): the operations as async functions over an [`smb3::Tree`] answering
//!   `Result<_, Errno>`, with what they need beside them: [`FsConfig`] (`config`: what the mount presents),
//!   attributes (`attr`), errno mapping (`errno`), the inode table (`inodes`), the open-handle table
//!   (`handles`) and write-behind (`writeback`). None of it depends on FUSE or on `mount`.
//! - [`fuse`]: our own FUSE server over [`SmbFs`] (kernel ABI codecs, the request loop, the dispatch). Every
//!   kernel request is answered from a task on the tokio runtime that owns the SMB connection, so many
//!   requests (readahead, parallel `cp`, two processes) are in flight on the one SMB connection at once.
//!   With a state directory, [`SmbFs`] keeps a takeover journal (`journal`) so that another process can serve
//!   the same kernel connection after this one stops or dies.
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
//! - **Symlinks** with `mfsymlinks` are Minshall+French symlink files (`mfsymlink`: cifs' format, so links
//!   made by either client work in the other); without it symlink(2) is EPERM. Symlinks on the server's
//!   disk are followed by Samba (its default), so they show as what they point to. `mknod` of anything but a
//!   regular file is EPERM.
//! - **Locks** (`fcntl` and `flock`) are SMB byte-range locks on the server, seen by every node (`locks`);
//!   `nobrl` keeps them node-local (the kernel's).
//! - **Coherency across nodes**: every open asks for a read+write+handle lease; a break flushes write-behind
//!   and drops the kernel's cached pages and attributes of the file before it is acknowledged (`lease`).
//!   While the lease still caches reads and handles, a re-open of a file the node has open is served from
//!   the open SMB handle without a round trip (`handles`). After the last release the SMB handle lingers for
//!   `closetimeo` (`linger`) while that lease holds, with a guard opened without FILE_SHARE_DELETE, so another
//!   node's `rm`/`mv` right after a close conflicts, breaks the lease, finds both closed and goes through.
//! - **Hard links** are made with FileLinkInformation where the server allows it; otherwise EPERM.
//! - **Unlink of an open file**: the name disappears at once (lookups answer ENOENT) and the open handles keep
//!   reading and writing until closed; every open is made with FILE_SHARE_DELETE, so the server's
//!   delete-on-close does exactly this.
//! - **Consistency** is close-to-open: attributes and entries are cached for the attribute TTL (`actimeo`), the
//!   page cache is dropped on each open (`cache=strict`), kept with `cache=loose`, and unused with `cache=none`.
//! - **Errors** map to ENOENT, EACCES, EEXIST, ENOTEMPTY, ENOSPC, ENOTDIR, EISDIR, EBUSY, EXDEV, EOPNOTSUPP;
//!   anything unexpected (a lost connection, a malformed reply) is EIO with a log line naming the operation.

mod attr;
mod config;
mod dirattrs;
mod dircache;
mod errno;
pub mod fuse;
mod handles;
mod inodes;
pub mod journal;
mod lease;
mod linger;
mod locks;
mod mfsymlink;
mod ops;
mod prefetch;
mod writeback;

pub use attr::{Attr, FileKind};
pub use config::{CacheMode, FsConfig};
pub use dircache::RELIST_AFTER;
pub use errno::Errno;
pub use fuse::{Notifier, MAX_IO};
pub use inodes::ROOT_INO;
pub use lease::Invalidator;
pub use locks::{Conflict, LockOwner};
pub use ops::{DirItem, SetAttr, SetTime, SmbFs, StatFs, WriteBehind, NAME_MAX, RENAME_NOREPLACE};
pub use smb3::LockKind;
