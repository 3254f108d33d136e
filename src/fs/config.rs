//! What the filesystem presents, as the filesystem itself defines it: owner, modes, read-only, and how much
//! the kernel may cache. Defined here (not in `mount`) so that the filesystem stands on its own and can be
//! built and tested without the mount machinery; `mount` turns its parsed options into an [`FsConfig`].

use std::time::Duration;

/// How the FUSE layer caches file data and attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Close-to-open: attributes cached for `actimeo`, the page cache dropped on every open (default).
    #[default]
    Strict,
    /// Page cache kept across opens (revalidated only when the attributes change).
    Loose,
    /// No caching: every read and write goes to the server, attributes are never cached.
    None,
}

/// What the filesystem presents: owner, modes, and how much the kernel may cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsConfig {
    /// Owner of every file and directory (SMB without unix extensions has none to show).
    pub uid: u32,
    /// Group of every file and directory, until a chown of the root changes it (see the module doc of `fs`).
    pub gid: u32,
    /// Permission bits of regular files (no file type bits).
    pub file_mode: u32,
    /// Permission bits of directories.
    pub dir_mode: u32,
    /// Every change is refused with EROFS.
    pub read_only: bool,
    /// How long the kernel may cache attributes and entries.
    pub attr_ttl: Duration,
    pub cache: CacheMode,
    /// POSIX and flock locks go to the server as SMB byte-range locks (`false`: `nobrl`, node-local only).
    pub byte_range_locks: bool,
    /// Symlinks are created and shown as Minshall+French symlink files (`mfsymlinks`).
    pub mfsymlinks: bool,
    /// How long an SMB handle stays open after the last release of its file while its lease caches reads and
    /// handles, so a re-open needs no round trip (`closetimeo`; zero: closed at release). See `fs::linger`.
    pub close_timeout: Duration,
    /// At most this many SMB handles linger at once (each with its guard: twice as many opens on the server);
    /// a release beyond it closes as without deferred close. Bounds what a walk over many files (`cat` of a
    /// whole tree) keeps open on the server within one `closetimeo`.
    pub max_lingering: usize,
}

/// Lingering handles per mount by default: 512 files, 1024 opens on the server. Samba's per-connection limit is
/// far above (16384 opens per smbd by default); a node shares one connection among its volumes of a share.
pub const DEFAULT_MAX_LINGERING: usize = 512;

impl Default for FsConfig {
    /// What mount.cifs presents without options: root-owned, 0755, read-write, 1 s attribute cache.
    fn default() -> Self {
        FsConfig {
            uid: 0,
            gid: 0,
            file_mode: 0o755,
            dir_mode: 0o755,
            read_only: false,
            attr_ttl: Duration::from_secs(1),
            cache: CacheMode::Strict,
            byte_range_locks: true,
            mfsymlinks: false,
            close_timeout: Duration::from_secs(1),
            max_lingering: DEFAULT_MAX_LINGERING,
        }
    }
}
