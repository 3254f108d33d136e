//! Mount options in the form users of the kernel cifs driver (and of csi-driver-smb's StorageClass
//! `mountOptions`) already write them, typed once here and passed inward as [`MountOptions`].
//!
//! ```
//! use smb3_csi::mount::MountOptions;
//! let flags = vec!["uid=1001,gid=1001".to_string(), "dir_mode=0770".into(), "noserverino".into()];
//! let (opts, ignored) = MountOptions::parse(&flags).unwrap();
//! assert_eq!((opts.uid, opts.gid, opts.dir_mode), (1001, 1001, 0o770));
//! assert_eq!(ignored, vec!["noserverino".to_string()]);
//! ```

use std::time::Duration;

use smb3::{ClientOptions, Dialect, EncryptionPolicy, Recovery, SecurityMechanism};

use crate::fs::{CacheMode, FsConfig};

/// Typed mount options. Defaults match mount.cifs: uid 0, gid 0, modes 0755, read-write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits of regular files (no file type bits).
    pub file_mode: u32,
    /// Permission bits of directories.
    pub dir_mode: u32,
    pub read_only: bool,
    /// Server port (overrides the one in the share address).
    pub port: Option<u16>,
    /// Highest dialect to negotiate (`vers=`); `None` = the client's default range.
    pub vers: Option<Dialect>,
    /// Lowest dialect to accept; set together with `vers` (`vers=3.0` pins 3.0, `vers=3` means 3.0 or later).
    pub min_vers: Option<Dialect>,
    /// Encryption required (`seal`).
    pub seal: bool,
    /// How long attributes and directory entries are cached (`actimeo`, seconds; default 1).
    pub actimeo: Duration,
    /// `closetimeo=N` (seconds, default 1; 0 disables): how long an SMB handle whose lease still caches reads
    /// and handles stays open after the last close of the file, so a re-open needs no round trip (cifs'
    /// deferred close).
    pub closetimeo: Duration,
    pub cache: CacheMode,
    /// Do not share the SMB connection with other volumes of the same server and user.
    pub nosharesock: bool,
    /// Set by [`MountOptions::apply_fs_group`]: group read/write was added to the modes.
    pub extra_gid_rw: bool,
    /// `echo_interval=N` (seconds, 1..=600 as in cifs): how often an idle connection is probed, and how
    /// long a probe may go unanswered before the connection counts as lost. `None`: the client's default.
    pub echo_interval: Option<Duration>,
    /// `hard` (the default) or `soft`: what an operation experiences while the connection is being replaced.
    pub recovery: RecoveryMode,
    /// `retrans=N` (1..=100, default [`DEFAULT_RETRANS`]): with `soft`, an operation fails with EIO after
    /// waiting `retrans` × echo interval for the connection to come back. No effect with `hard`.
    pub retrans: Option<u32>,
    /// `noexec`: the mount refuses execve(2) of its files (`MS_NOEXEC`), as a kernel cifs mount would.
    pub noexec: bool,
    /// `noperm`: the kernel does not check modes against the caller (no FUSE `default_permissions`), so any
    /// local user may do what the server allows, as with cifs `noperm`.
    pub noperm: bool,
    /// `nobrl`: POSIX and flock locks stay on this node instead of becoming SMB byte-range locks on the server.
    pub nobrl: bool,
    /// `mfsymlinks`: symlinks are created and recognised as Minshall+French symlink files (cifs' format).
    pub mfsymlinks: bool,
    /// `sec=`: `krb5`/`krb5i` require Kerberos, `ntlmssp`/`ntlmv2` require NTLMv2, unset prefers Kerberos
    /// when the server offers it and the credentials allow.
    pub sec: SecurityMechanism,
    /// `ip=`/`addr=`: the address to connect to; the server name in the source still names the Kerberos
    /// service principal (`cifs/<name>`), as with mount.cifs when the name does not resolve.
    pub ip: Option<std::net::IpAddr>,
    /// `cruid=`: whose Kerberos credential cache to use (the Secret key `krb5cc_<cruid>`); default 0.
    pub cruid: Option<u32>,
    /// `connect_timeout=N` (seconds, 1..=3600): deadline for connect, NEGOTIATE and SESSION_SETUP.
    pub connect_timeout: Option<Duration>,
    /// `pending_timeout=N` (seconds, 1..=86400): ceiling for a request the server keeps STATUS_PENDING.
    pub pending_timeout: Option<Duration>,
    /// `rasize=N` (bytes, 0..=[`MAX_RASIZE`], default [`DEFAULT_RASIZE`]): the mount's readahead, as with
    /// cifs. The kernel's FUSE default (128 KiB) keeps one 128 KiB request in flight and halves sequential
    /// reads; a larger window keeps several 1 MiB reads in flight. 0 leaves the kernel's default.
    pub rasize: u64,
}

/// `hard` or `soft`, as for NFS and kernel cifs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Operations wait as long as the server is away: no application ever sees an error because of an
    /// outage. The right choice for volumes whose writers cannot handle EIO (most of them).
    #[default]
    Hard,
    /// Operations fail with EIO after [`MountOptions::soft_timeout`]: for workloads that would rather
    /// fail over than hang.
    Soft,
}

/// `retrans` when `soft` is given without it: with the client's 20 s echo interval, a 60 s bound.
pub const DEFAULT_RETRANS: u32 = 3;
/// The largest `echo_interval` cifs accepts (seconds).
const MAX_ECHO_INTERVAL: u64 = 600;
/// The largest `retrans`: a soft mount that waits for hours is a hard mount.
const MAX_RETRANS: u32 = 100;
/// `rasize` when not given. Measured on loopback Samba with 1 MiB FUSE reads (512 MiB, caches dropped): 128 KiB
/// (the kernel's FUSE default) about 240 MB/s, 8 MiB (cifs' default with a 4 MiB rsize) about 390 MB/s,
/// 16 MiB about 460 MB/s; beyond it no gain.
pub const DEFAULT_RASIZE: u64 = 16 << 20;
/// The largest `rasize`: beyond it a sequential reader only fills the page cache further ahead.
pub const MAX_RASIZE: u64 = 256 << 20;

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            uid: 0,
            gid: 0,
            file_mode: 0o755,
            dir_mode: 0o755,
            read_only: false,
            port: None,
            vers: None,
            min_vers: None,
            seal: false,
            actimeo: Duration::from_secs(1),
            closetimeo: Duration::from_secs(1),
            cache: CacheMode::Strict,
            nosharesock: false,
            extra_gid_rw: false,
            echo_interval: None,
            recovery: RecoveryMode::Hard,
            retrans: None,
            noexec: false,
            noperm: false,
            nobrl: false,
            mfsymlinks: false,
            sec: SecurityMechanism::Auto,
            ip: None,
            cruid: None,
            connect_timeout: None,
            pending_timeout: None,
            rasize: DEFAULT_RASIZE,
        }
    }
}

/// A mount option that cannot be honoured; `Display` names the option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountOptionError {
    #[error("mount option {option:?}: {why}")]
    Invalid { option: String, why: String },
    #[error(
        "mount option {0:?}: credentials never travel as mount options (use the node-stage secret or --credentials FILE)"
    )]
    Credentials(String),
    #[error("unknown mount option {0:?}")]
    Unknown(String),
}

/// Kernel-cifs flags that have no meaning for a userspace client; accepted so that StorageClasses written for
/// csi-driver-smb keep working, and reported back to the caller to log once.
const IGNORED_FLAGS: &[&str] = &[
    "noserverino",
    "serverino",
    "nounix",
    "unix",
    "nolinux",
    "linux",
    "forceuid",
    "forcegid",
    "noforceuid",
    "noforcegid",
    "noatime",
    "nodiratime",
    "relatime",
    "strictatime",
    "atime",
    "intr",
    "nointr",
    "nocase",
    "ignorecase",
    "sfu",
    "nosfu",
    "setuids",
    "nosetuids",
    "dynperm",
    "nodynperm",
    "noacl",
    "acl",
    "cifsacl",
    "nocifsacl",
    "user_xattr",
    "nouser_xattr",
    "mapchars",
    "nomapchars",
    "mapposix",
    "nomapposix",
    "nostrictsync",
    "strictsync",
    "rwpidforward",
    "resilienthandles",
    "noresilienthandles",
    "persistenthandles",
    "nopersistenthandles",
    "nohandlecache",
    "handlecache",
    "nodfs",
    "fsc",
    "multiuser",
    "noblocksend",
    "noautotune",
    "nolease",
    "sign",
    "_netdev",
    "nofail",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "defaults",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "sync",
    "async",
    "modefromsid",
    "idsfromsid",
    "compress",
    "witness",
    "nosparse",
    "noposixpaths",
    "posixpaths",
    "domainauto",
];

/// Kernel-cifs options with a value that are accepted and ignored.
const IGNORED_KEYS: &[&str] = &[
    "iocharset",
    "rsize",
    "wsize",
    "bsize",
    "acregmax",
    "acdirmax",
    "max_credits",
    "handletimeout",
    "closetimeo",
    "backupuid",
    "backupgid",
    "snapshot",
    "max_channels",
    "nodename",
    "netbiosname",
    "servern",
    "unc",
    "prefixpath",
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
    "esize",
    "upcall_target",
];

const CREDENTIAL_KEYS: &[&str] =
    &["user", "username", "pass", "password", "password2", "credentials", "cred", "domain", "dom", "workgroup"];

impl MountOptions {
    /// Parses mount.cifs-style flags; each element may itself be comma-separated (`-o a=1,b`). Returns the
    /// options and the flags that were accepted but ignored (the caller logs them in one warning).
    pub fn parse(flags: &[String]) -> Result<(MountOptions, Vec<String>), MountOptionError> {
        let mut opts = MountOptions::default();
        let mut ignored = Vec::new();
        for part in flags.iter().flat_map(|f| f.split(',')) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
                None => (part.to_ascii_lowercase(), None),
            };
            let invalid = |why: &str| MountOptionError::Invalid { option: key.clone(), why: why.to_string() };
            let need = || value.filter(|v| !v.is_empty()).ok_or_else(|| invalid("needs a value"));
            let no_value = |v: Option<&str>| match v {
                Some(_) => Err(invalid("takes no value")),
                None => Ok(()),
            };
            if CREDENTIAL_KEYS.contains(&key.as_str()) {
                return Err(MountOptionError::Credentials(key));
            }
            match key.as_str() {
                "uid" => opts.uid = parse_id(need()?).ok_or_else(|| invalid("expected a numeric user id"))?,
                "gid" => opts.gid = parse_id(need()?).ok_or_else(|| invalid("expected a numeric group id"))?,
                "file_mode" => {
                    opts.file_mode = parse_mode(need()?).ok_or_else(|| invalid("expected octal 0..07777"))?
                }
                "dir_mode" => opts.dir_mode = parse_mode(need()?).ok_or_else(|| invalid("expected octal 0..07777"))?,
                "ro" => {
                    no_value(value)?;
                    opts.read_only = true;
                }
                "rw" => {
                    no_value(value)?;
                    opts.read_only = false;
                }
                "port" => {
                    let port = need()?.parse::<u16>().ok().filter(|p| *p != 0);
                    opts.port = Some(port.ok_or_else(|| invalid("expected a port number 1..65535"))?);
                }
                "vers" => (opts.min_vers, opts.vers) = parse_vers(need()?).map_err(|why| invalid(&why))?,
                "seal" => {
                    no_value(value)?;
                    opts.seal = true;
                }
                "actimeo" => {
                    let secs = need()?.parse::<u64>().ok().filter(|s| *s <= 86_400 * 365);
                    opts.actimeo = Duration::from_secs(secs.ok_or_else(|| invalid("expected whole seconds"))?);
                }
                "closetimeo" => {
                    let secs = need()?.parse::<u64>().ok().filter(|s| *s <= 86_400 * 365);
                    opts.closetimeo = Duration::from_secs(secs.ok_or_else(|| invalid("expected whole seconds"))?);
                }
                "cache" => {
                    opts.cache = match need()?.to_ascii_lowercase().as_str() {
                        "strict" => CacheMode::Strict,
                        "loose" | "ro" | "singleclient" => CacheMode::Loose,
                        "none" => CacheMode::None,
                        _ => return Err(invalid("expected strict, loose or none")),
                    }
                }
                "nosharesock" => {
                    no_value(value)?;
                    opts.nosharesock = true;
                }
                "echo_interval" => {
                    let secs = need()?.parse::<u64>().ok().filter(|s| (1..=MAX_ECHO_INTERVAL).contains(s));
                    let secs = secs.ok_or_else(|| invalid("expected whole seconds 1..600"))?;
                    opts.echo_interval = Some(Duration::from_secs(secs));
                }
                "hard" => {
                    no_value(value)?;
                    opts.recovery = RecoveryMode::Hard;
                }
                "soft" => {
                    no_value(value)?;
                    opts.recovery = RecoveryMode::Soft;
                }
                "retrans" => {
                    let n = need()?.parse::<u32>().ok().filter(|n| (1..=MAX_RETRANS).contains(n));
                    opts.retrans = Some(n.ok_or_else(|| invalid("expected a count 1..100"))?);
                }
                "noexec" | "exec" => {
                    no_value(value)?;
                    opts.noexec = key == "noexec";
                }
                "noperm" | "perm" => {
                    no_value(value)?;
                    opts.noperm = key == "noperm";
                }
                "nobrl" | "brl" => {
                    no_value(value)?;
                    opts.nobrl = key == "nobrl";
                }
                "mfsymlinks" | "nomfsymlinks" => {
                    no_value(value)?;
                    opts.mfsymlinks = key == "mfsymlinks";
                }
                "sec" => opts.sec = need()?.parse::<SecurityMechanism>().map_err(|why| invalid(&why))?,
                "ip" | "addr" => opts.ip = Some(need()?.parse().map_err(|_| invalid("expected an IP address"))?),
                "cruid" => opts.cruid = Some(parse_id(need()?).ok_or_else(|| invalid("expected a numeric uid"))?),
                "connect_timeout" => {
                    let secs = need()?.parse::<u64>().ok().filter(|s| (1..=3600).contains(s));
                    opts.connect_timeout =
                        Some(Duration::from_secs(secs.ok_or_else(|| invalid("expected whole seconds 1..3600"))?));
                }
                "pending_timeout" => {
                    let secs = need()?.parse::<u64>().ok().filter(|s| (1..=86_400).contains(s));
                    opts.pending_timeout =
                        Some(Duration::from_secs(secs.ok_or_else(|| invalid("expected whole seconds 1..86400"))?));
                }
                "rasize" => {
                    let bytes = need()?.parse::<u64>().ok().filter(|b| *b <= MAX_RASIZE);
                    opts.rasize = bytes.ok_or_else(|| invalid("expected bytes 0..268435456"))?;
                }
                k if IGNORED_FLAGS.contains(&k) && value.is_none() => ignored.push(part.to_string()),
                k if IGNORED_KEYS.contains(&k) => ignored.push(part.to_string()),
                _ => return Err(MountOptionError::Unknown(part.to_string())),
            }
        }
        Ok((opts, ignored))
    }

    /// fsGroup (VOLUME_MOUNT_GROUP): becomes the gid, and group rw is added to modes (and group x to
    /// directories, which a group needs to enter them).
    pub fn apply_fs_group(&mut self, gid: u32) {
        self.gid = gid;
        self.file_mode |= 0o060;
        self.dir_mode |= 0o070;
        self.extra_gid_rw = true;
    }

    /// The echo interval in effect: `echo_interval=`, else the one of `base`.
    pub fn effective_echo_interval(&self, base: &ClientOptions) -> Duration {
        self.echo_interval.unwrap_or(base.echo_interval)
    }

    /// With `soft`: how long an operation waits for a lost connection to come back before it fails with
    /// EIO, `retrans` × the echo interval. `None` with `hard`. The clock starts when the operation first
    /// finds the connection down; a connection that goes silent (no reset) is noticed within two echo
    /// intervals, which comes on top for the operations already in flight.
    pub fn soft_timeout(&self, base: &ClientOptions) -> Option<Duration> {
        match self.recovery {
            RecoveryMode::Hard => None,
            RecoveryMode::Soft => {
                Some(self.effective_echo_interval(base).saturating_mul(self.retrans.unwrap_or(DEFAULT_RETRANS)))
            }
        }
    }

    /// `base` with the dialect range, encryption, echo interval and recovery these options ask for.
    pub fn client_options(&self, base: &ClientOptions) -> ClientOptions {
        let mut o = base.clone();
        o.echo_interval = self.effective_echo_interval(base);
        o.recovery = match self.soft_timeout(base) {
            None => Recovery::Hard,
            Some(timeout) => Recovery::Soft { timeout },
        };
        if let Some(v) = self.vers {
            o.max_dialect = v;
        }
        if let Some(v) = self.min_vers {
            o.min_dialect = v;
        }
        if self.seal {
            o.encryption = EncryptionPolicy::Required;
        }
        connect_as(&mut o, self.ip, self.sec);
        o.connect_timeout = self.connect_timeout.unwrap_or(o.connect_timeout);
        o.pending_timeout = self.pending_timeout.unwrap_or(o.pending_timeout);
        o
    }

    /// The Secret key holding the Kerberos credential cache these options select: `krb5cc_<cruid>`
    /// (`krb5cc_0` by default), as the incumbent driver's Secrets name it.
    pub fn ccache_key(&self) -> String {
        format!("krb5cc_{}", self.cruid.unwrap_or(0))
    }

    /// How long the kernel may cache attributes and entries.
    pub fn attr_ttl(&self) -> Duration {
        match self.cache {
            CacheMode::None => Duration::ZERO,
            _ => self.actimeo,
        }
    }
}

/// What the filesystem presents for these options (the file-type bits of the modes dropped).
impl From<&MountOptions> for FsConfig {
    fn from(o: &MountOptions) -> Self {
        FsConfig {
            uid: o.uid,
            gid: o.gid,
            file_mode: o.file_mode & 0o7777,
            dir_mode: o.dir_mode & 0o7777,
            read_only: o.read_only,
            attr_ttl: o.attr_ttl(),
            cache: o.cache,
            byte_range_locks: !o.nobrl,
            mfsymlinks: o.mfsymlinks,
            close_timeout: o.closetimeo,
            ..FsConfig::default()
        }
    }
}

fn parse_id(s: &str) -> Option<u32> {
    s.parse::<u32>().ok().filter(|id| *id != u32::MAX)
}

fn parse_mode(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
}

/// `(min, max)` dialects for a `vers=` value.
fn parse_vers(s: &str) -> Result<(Option<Dialect>, Option<Dialect>), String> {
    match s.to_ascii_lowercase().as_str() {
        "1.0" | "1" | "cifs" => Err("SMB1 (vers=1.0) is never used: it is insecure; use 2.1 or later".into()),
        "2.0" | "2.02" => Err("SMB 2.0.2 is not supported; use 2.1 or later".into()),
        "default" => Ok((None, None)),
        "3" => Ok((Some(Dialect::Smb300), Some(Dialect::Smb311))),
        other => match smb3::parse_dialect(other) {
            Ok(d) => Ok((Some(d), Some(d))),
            Err(_) => Err(format!("unknown version {s:?} (expected 2.1, 3.0, 3.02, 3.1.1, 3 or default)")),
        },
    }
}

/// The one place the address and the mechanism go into client options (here, beside the options they come
/// from, so the fuzz target that compiles this file alone has it; `target` uses it too).
pub(super) fn connect_as(options: &mut ClientOptions, address: Option<std::net::IpAddr>, security: SecurityMechanism) {
    options.security = security;
    if let Some(address) = address {
        options.connect_address = Some(address.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(flags: &[&str]) -> Result<(MountOptions, Vec<String>), MountOptionError> {
        MountOptions::parse(&flags.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn defaults_match_mount_cifs() {
        let (o, ignored) = parse(&[]).unwrap();
        assert_eq!(o, MountOptions::default());
        assert!(ignored.is_empty());
        assert_eq!((o.uid, o.gid, o.file_mode, o.dir_mode, o.read_only), (0, 0, 0o755, 0o755, false));
        assert_eq!(o.actimeo, Duration::from_secs(1));
    }

    #[test]
    fn deadline_options() {
        let (o, _) = parse(&["connect_timeout=5,pending_timeout=900"]).unwrap();
        let c = o.client_options(&ClientOptions::default());
        assert_eq!((c.connect_timeout, c.pending_timeout), (Duration::from_secs(5), Duration::from_secs(900)));
        let d = MountOptions::default().client_options(&ClientOptions::default());
        assert_eq!((d.connect_timeout, d.pending_timeout), (Duration::from_secs(30), Duration::from_secs(300)));
        for bad in [
            "connect_timeout=0",
            "connect_timeout=3601",
            "pending_timeout=x",
            "pending_timeout",
            "pending_timeout=86401",
        ] {
            assert!(matches!(parse(&[bad]), Err(MountOptionError::Invalid { .. })), "{bad}");
        }
    }

    #[test]
    fn readahead_is_cifs_rasize_in_bytes() {
        assert_eq!(MountOptions::default().rasize, 16 << 20);
        assert_eq!(parse(&["rasize=16777216"]).unwrap().0.rasize, 16 << 20);
        assert_eq!(parse(&["rasize=0"]).unwrap().0.rasize, 0, "0 leaves the kernel's default");
        for bad in ["rasize", "rasize=", "rasize=-1", "rasize=1M", "rasize=268435457"] {
            assert!(matches!(parse(&[bad]), Err(MountOptionError::Invalid { .. })), "{bad}");
        }
    }

    #[test]
    fn honoured_options() {
        let (o, ignored) = parse(&[
            "uid=1001,gid=2002",
            "file_mode=0640",
            "dir_mode=750",
            "ro",
            "port=4450",
            "vers=3.0",
            "seal",
            "actimeo=30",
            "closetimeo=5",
            "cache=loose",
            "nosharesock",
        ])
        .unwrap();
        assert!(ignored.is_empty());
        assert_eq!((o.uid, o.gid, o.file_mode, o.dir_mode), (1001, 2002, 0o640, 0o750));
        assert!(o.read_only && o.seal && o.nosharesock);
        assert_eq!(o.port, Some(4450));
        assert_eq!((o.min_vers, o.vers), (Some(Dialect::Smb300), Some(Dialect::Smb300)));
        assert_eq!(o.actimeo, Duration::from_secs(30));
        assert_eq!(o.closetimeo, Duration::from_secs(5));
        assert_eq!(FsConfig::from(&o).close_timeout, Duration::from_secs(5));
        assert_eq!(parse(&["closetimeo=0"]).unwrap().0.closetimeo, Duration::ZERO, "0 disables deferred close");
        assert_eq!(MountOptions::default().closetimeo, Duration::from_secs(1));
        assert_eq!(FsConfig::default().close_timeout, Duration::from_secs(1));
        let c = o.client_options(&ClientOptions { encryption: EncryptionPolicy::Off, ..Default::default() });
        assert_eq!(
            (c.min_dialect, c.max_dialect, c.encryption),
            (Dialect::Smb300, Dialect::Smb300, EncryptionPolicy::Required)
        );
        let (o, _) = parse(&["ro,rw", "vers=3", "cache=none"]).unwrap();
        assert!(!o.read_only);
        assert_eq!((o.min_vers, o.vers), (Some(Dialect::Smb300), Some(Dialect::Smb311)));
        assert_eq!(o.attr_ttl(), Duration::ZERO);
        assert_eq!(parse(&["vers=3.1.1"]).unwrap().0.vers, Some(Dialect::Smb311));
        assert_eq!(parse(&["vers=3.02"]).unwrap().0.vers, Some(Dialect::Smb302));
        assert_eq!(parse(&["vers=2.1"]).unwrap().0.vers, Some(Dialect::Smb210));
        assert_eq!(parse(&["vers=default"]).unwrap().0.vers, None);
        assert_eq!(parse(&["cache=strict"]).unwrap().0.cache, CacheMode::Strict);
    }

    #[test]
    fn incumbent_kernel_flags_are_ignored_and_reported() {
        let (o, ignored) = parse(&[
            "dir_mode=0777,file_mode=0777,uid=1001,gid=1001,mfsymlinks,cache=strict,noserverino",
            "nobrl",
            "iocharset=utf8",
            "rsize=1048576,wsize=1048576",
            "nounix,forceuid,forcegid,noatime",
        ])
        .unwrap();
        assert_eq!((o.file_mode, o.uid), (0o777, 1001));
        assert!(o.mfsymlinks && o.nobrl);
        assert_eq!(
            ignored,
            [
                "noserverino",
                "iocharset=utf8",
                "rsize=1048576",
                "wsize=1048576",
                "nounix",
                "forceuid",
                "forcegid",
                "noatime"
            ]
        );
    }

    #[test]
    fn malformed_values_name_the_option() {
        for (flag, name) in [
            ("uid=bob", "uid"),
            ("gid=", "gid"),
            ("uid", "uid"),
            ("file_mode=0999", "file_mode"),
            ("dir_mode=123456", "dir_mode"),
            ("file_mode=17777", "file_mode"),
            ("port=0", "port"),
            ("port=70000", "port"),
            ("vers=1.0", "vers"),
            ("vers=2.0", "vers"),
            ("vers=4", "vers"),
            ("actimeo=-1", "actimeo"),
            ("actimeo=1.5", "actimeo"),
            ("closetimeo=-1", "closetimeo"),
            ("closetimeo=0.5", "closetimeo"),
            ("closetimeo=", "closetimeo"),
            ("closetimeo", "closetimeo"),
            ("cache=always", "cache"),
            ("ro=1", "ro"),
            ("seal=yes", "seal"),
            ("sec=lanman", "sec"),
            ("sec=", "sec"),
            ("ip=fileserver", "ip"),
            ("addr=", "addr"),
            ("cruid=bob", "cruid"),
            ("echo_interval=0", "echo_interval"),
            ("echo_interval=601", "echo_interval"),
            ("echo_interval=", "echo_interval"),
            ("retrans=0", "retrans"),
            ("retrans=101", "retrans"),
            ("retrans=x", "retrans"),
            ("soft=1", "soft"),
            ("hard=yes", "hard"),
        ] {
            let err = parse(&[flag]).unwrap_err();
            assert!(matches!(&err, MountOptionError::Invalid { option, .. } if option == name), "{flag}: {err}");
            assert!(err.to_string().contains(name), "{err}");
        }
        assert!(parse(&["vers=1.0"]).unwrap_err().to_string().contains("SMB1"));
        assert!(matches!(parse(&["frobnicate"]).unwrap_err(), MountOptionError::Unknown(_)));
    }

    #[test]
    fn credentials_are_refused_without_echoing_them() {
        for flag in ["username=bob", "password=hunter2", "credentials=/etc/creds", "user=x,pass=y", "domain=CORP"] {
            let err = parse(&[flag]).unwrap_err();
            assert!(matches!(err, MountOptionError::Credentials(_)), "{flag}");
            assert!(!err.to_string().contains("hunter2"));
        }
    }

    #[test]
    fn filesystem_config_follows_the_options() {
        let (o, _) = parse(&["uid=7,gid=8,file_mode=0640,dir_mode=0750,ro,actimeo=30"]).unwrap();
        let cfg = FsConfig::from(&o);
        assert_eq!(
            (cfg.uid, cfg.gid, cfg.file_mode, cfg.dir_mode, cfg.read_only, cfg.attr_ttl, cfg.cache),
            (7, 8, 0o640, 0o750, true, Duration::from_secs(30), CacheMode::Strict)
        );
        // cache=none: the kernel caches no attributes whatever actimeo says.
        let (o, _) = parse(&["cache=none,actimeo=30"]).unwrap();
        assert_eq!(FsConfig::from(&o).attr_ttl, Duration::ZERO);
        assert_eq!(FsConfig::from(&MountOptions::default()), FsConfig::default());
    }

    #[test]
    fn hard_is_the_default_and_waits() {
        let base = ClientOptions { echo_interval: Duration::from_secs(20), ..Default::default() };
        let (o, ignored) = parse(&[]).unwrap();
        assert!(ignored.is_empty());
        assert_eq!((o.recovery, o.soft_timeout(&base)), (RecoveryMode::Hard, None));
        // A pool whose default were soft still gives a hard mount unless `soft` is asked for.
        let soft_base = ClientOptions { recovery: Recovery::Soft { timeout: Duration::from_secs(1) }, ..base.clone() };
        let c = o.client_options(&soft_base);
        assert_eq!((c.recovery, c.echo_interval), (Recovery::Hard, Duration::from_secs(20)));
        // `retrans` alone changes nothing; the last of `hard`/`soft` wins, as with mount(8).
        let (o, _) = parse(&["retrans=5,soft,hard"]).unwrap();
        assert_eq!(o.client_options(&base).recovery, Recovery::Hard);
        let (o, _) = parse(&["hard", "echo_interval=7"]).unwrap();
        assert_eq!(o.client_options(&base).echo_interval, Duration::from_secs(7));
    }

    #[test]
    fn soft_bound_is_retrans_times_echo_interval() {
        let base = ClientOptions { echo_interval: Duration::from_secs(20), ..Default::default() };
        let (o, _) = parse(&["soft"]).unwrap();
        assert_eq!(o.soft_timeout(&base), Some(Duration::from_secs(20 * u64::from(DEFAULT_RETRANS))));
        let (o, _) = parse(&["soft,retrans=2,echo_interval=5"]).unwrap();
        assert_eq!((o.echo_interval, o.retrans), (Some(Duration::from_secs(5)), Some(2)));
        let c = o.client_options(&base);
        assert_eq!(c.recovery, Recovery::Soft { timeout: Duration::from_secs(10) });
        assert_eq!(c.echo_interval, Duration::from_secs(5));
        // The bound follows the base's interval when echo_interval is not given.
        let (o, _) = parse(&["soft,retrans=4"]).unwrap();
        assert_eq!(o.client_options(&base).recovery, Recovery::Soft { timeout: Duration::from_secs(80) });
        // Different recovery settings are different mounts (the node's idempotency check compares them).
        assert_ne!(parse(&["soft"]).unwrap().0, parse(&["hard"]).unwrap().0);
    }

    #[test]
    fn noexec_and_noperm_are_honoured_and_the_last_word_wins() {
        let (o, ignored) = parse(&["noexec,noperm"]).unwrap();
        assert!(ignored.is_empty());
        assert!(o.noexec && o.noperm);
        let (o, _) = parse(&["noexec,noperm", "exec,perm"]).unwrap();
        assert!(!o.noexec && !o.noperm);
        assert!(!MountOptions::default().noexec && !MountOptions::default().noperm);
        for flag in ["noexec=1", "noperm=yes"] {
            assert!(matches!(parse(&[flag]).unwrap_err(), MountOptionError::Invalid { .. }), "{flag}");
        }
    }

    #[test]
    fn kerberos_options_are_honoured() {
        let (o, ignored) = parse(&["sec=krb5,ip=127.0.0.20,cruid=1000"]).unwrap();
        assert!(ignored.is_empty());
        assert_eq!(
            (o.sec, o.ip.map(|ip| ip.to_string()), o.ccache_key()),
            (SecurityMechanism::Kerberos, Some("127.0.0.20".to_string()), "krb5cc_1000".into())
        );
        let c = o.client_options(&ClientOptions::default());
        assert_eq!((c.security, c.connect_address.as_deref()), (SecurityMechanism::Kerberos, Some("127.0.0.20")));
        assert_eq!(parse(&["sec=ntlmssp"]).unwrap().0.sec, SecurityMechanism::Ntlm);
        assert_eq!(parse(&["sec=krb5i"]).unwrap().0.sec, SecurityMechanism::Kerberos);
        assert_eq!(parse(&["addr=::1"]).unwrap().0.ip, Some(std::net::Ipv6Addr::LOCALHOST.into()));
        assert_eq!(MountOptions::default().ccache_key(), "krb5cc_0");
        assert_eq!(MountOptions::default().client_options(&ClientOptions::default()).security, SecurityMechanism::Auto);
    }

    #[test]
    fn fs_group_adds_group_rw() {
        let (mut o, _) = parse(&["file_mode=0600,dir_mode=0700,gid=5"]).unwrap();
        o.apply_fs_group(3000);
        assert_eq!((o.gid, o.file_mode, o.dir_mode, o.extra_gid_rw), (3000, 0o660, 0o770, true));
    }
}
