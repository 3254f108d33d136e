//! Attributes as the kernel sees them: times and size from the server, owner and modes from the mount (SMB
//! without unix extensions has no owner or mode to show, as with kernel cifs). A plain struct rather than a
//! FUSE type, so the filesystem's answers can be checked without a mount.

use std::time::{SystemTime, UNIX_EPOCH};

use smb3::{self as smb, Metadata};

use super::FsConfig;

/// `st_blksize`: large, so that tools copy in requests the size of an SMB read or write.
const BLOCK_SIZE: u32 = 1 << 20;

/// The kinds of entry the filesystem shows. Symlinks are Minshall+French symlink files with `mfsymlinks`;
/// symlinks the server follows itself (Samba's default) show as what they point to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Directory,
    RegularFile,
    Symlink,
}

/// What `stat` shows for an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    /// 512-byte blocks allocated on the server.
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub crtime: SystemTime,
    pub kind: FileKind,
    /// Permission bits (no file type bits).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub blksize: u32,
}

fn to_system_time(filetime: u64) -> SystemTime {
    smb::wire::info::filetime_to_system_time(filetime).unwrap_or(UNIX_EPOCH)
}

/// The attributes of `ino` whose server metadata is `m`; `group` (set by a chown of the root) replaces the
/// mount's gid and adds group read/write.
pub(crate) fn file_attr(cfg: &FsConfig, group: Option<u32>, ino: u64, m: &Metadata) -> Attr {
    let dir = m.is_dir();
    let mut perm = if dir { cfg.dir_mode } else { cfg.file_mode };
    if group.is_some() {
        perm |= if dir { 0o070 } else { 0o060 };
    }
    Attr {
        ino,
        size: if dir { 0 } else { m.size },
        blocks: m.allocation_size.div_ceil(512),
        atime: to_system_time(m.accessed),
        mtime: to_system_time(m.modified),
        ctime: to_system_time(m.changed),
        crtime: to_system_time(m.created),
        kind: if dir { FileKind::Directory } else { FileKind::RegularFile },
        perm: perm as u16,
        nlink: if dir { 2 } else { m.links.max(1) },
        uid: cfg.uid,
        gid: group.unwrap_or(cfg.gid),
        blksize: BLOCK_SIZE,
    }
}

/// The attributes of a Minshall+French symlink file (see `mfsymlink`) to a target of `target_len` bytes:
/// a symlink of that size, mode 0777 as symlinks have.
pub(crate) fn symlink_attr(cfg: &FsConfig, group: Option<u32>, ino: u64, m: &Metadata, target_len: usize) -> Attr {
    Attr { kind: FileKind::Symlink, perm: 0o777, size: target_len as u64, nlink: 1, ..file_attr(cfg, group, ino, m) }
}

/// Metadata for "." and ".." in a listing: only the kind matters to the kernel (it does not link them).
pub(crate) fn dir_placeholder() -> Metadata {
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
    use std::time::Duration;

    use super::*;
    use crate::fs::CacheMode;

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
            byte_range_locks: true,
            mfsymlinks: false,
            close_timeout: Duration::from_secs(1),
            ..FsConfig::default()
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
            (1001, 2002, 0o640, FileKind::RegularFile, 5000, 16)
        );
        let d = file_attr(&cfg, None, 78, &dir_placeholder());
        assert_eq!((d.perm, d.kind, d.nlink), (0o750, FileKind::Directory, 2));
        assert!(attr.mtime > UNIX_EPOCH);
        // A chown of the root to a group: that gid, group read/write added, owner unchanged.
        let f = file_attr(&cfg, Some(4321), 77, &m);
        assert_eq!((f.uid, f.gid, f.perm), (1001, 4321, 0o660));
        let d = file_attr(&cfg, Some(4321), 78, &dir_placeholder());
        assert_eq!((d.uid, d.gid, d.perm), (1001, 4321, 0o770));
    }
}
