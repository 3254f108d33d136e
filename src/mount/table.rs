//! The kernel's mount table as the node plugin needs it: is a path mounted, by what, and is the mount still
//! served (a FUSE mount whose daemon died answers ENOTCONN); bind mounts for publishing; unmounting that
//! never loops on a busy or dead mount.

use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use super::MountError;

/// What is at a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountState {
    NotMounted,
    Mounted {
        fstype: String,
        source: String,
    },
    /// A mount point whose filesystem no longer answers (ENOTCONN, ESTALE, EIO): unmount it.
    Dead,
}

/// One line of /proc/self/mountinfo (the fields we use).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    /// `major:minor` of the mounted filesystem.
    pub device: String,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Parses the text of /proc/self/mountinfo; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let mut after = right.split(' ');
            if fields.len() < 5 {
                return None;
            }
            Some(MountInfo {
                device: fields[2].to_string(),
                mount_point: PathBuf::from(unescape(fields[4])),
                fstype: unescape(after.next()?),
                source: unescape(after.next()?),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The current mount table of this process's namespace.
pub fn mounts() -> Result<Vec<MountInfo>, MountError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|source| MountError::Io { op: "reading /proc/self/mountinfo".into(), source })?;
    Ok(parse_mountinfo(&text))
}

/// `path` made absolute and lexically normal (no stat: a dead mount point cannot be resolved).
pub(crate) fn normalize(path: &Path) -> Result<PathBuf, MountError> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_err(|source| MountError::Io { op: "current directory".into(), source })?.join(path)
    };
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The topmost mount at exactly `path`, if any.
pub fn mount_at(path: &Path) -> Result<Option<MountInfo>, MountError> {
    let path = normalize(path)?;
    Ok(mounts()?.into_iter().rev().find(|m| m.mount_point == path))
}

/// Whether `path` is a mount point, what is mounted there, and whether it still answers (from
/// /proc/self/mountinfo and a statfs of the path).
pub fn mount_state(path: &Path) -> Result<MountState, MountError> {
    let entry = mount_at(path)?;
    // statfs always reaches the filesystem (stat may be answered from the kernel's attribute cache).
    let probe = nix::sys::statfs::statfs(&normalize(path)?);
    match (entry, probe) {
        (_, Err(Errno::ENOTCONN | Errno::ESTALE | Errno::ECONNABORTED)) => Ok(MountState::Dead),
        (Some(_), Err(Errno::EIO)) => Ok(MountState::Dead),
        (Some(m), _) => Ok(MountState::Mounted { fstype: m.fstype, source: m.source }),
        (None, _) => Ok(MountState::NotMounted),
    }
}

/// Bind-mounts `source` on `target` (an existing directory); read-only is a bind followed by a
/// `remount,bind,ro` (a bind mount ignores MS_RDONLY on the first call).
pub fn bind_mount(source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
    let sys = |op: &str, errno: Errno| MountError::Sys { op: op.to_string(), path: target.to_path_buf(), errno };
    nix::mount::mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| {
        MountError::Sys { op: format!("bind mount of {}", source.display()), path: target.to_path_buf(), errno: e }
    })?;
    if read_only {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(e) = nix::mount::mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
            return Err(sys("remount read-only", e));
        }
    }
    Ok(())
}

/// Unmounts `path`: not mounted (EINVAL) or missing is fine; busy falls back to a lazy detach; a dead
/// FUSE mount is unmounted like any other. Stacked mounts at the same path are all removed.
pub fn unmount(path: &Path) -> Result<(), MountError> {
    let path = normalize(path)?;
    for _ in 0..16 {
        match nix::mount::umount2(&path, MntFlags::empty()) {
            Ok(()) => {}
            Err(Errno::EINVAL | Errno::ENOENT) => return Ok(()),
            Err(Errno::EBUSY | Errno::ENOTCONN | Errno::EIO) => {
                match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
                    Ok(()) => tracing::warn!(path = %path.display(), "mount busy: detached lazily"),
                    Err(Errno::EINVAL | Errno::ENOENT) => return Ok(()),
                    Err(e) => return Err(MountError::Sys { op: "lazy unmount".into(), path, errno: e }),
                }
            }
            Err(e) => return Err(MountError::Sys { op: "unmount".into(), path, errno: e }),
        }
        if mount_at(&path)?.is_none() {
            return Ok(());
        }
    }
    Err(MountError::Sys { op: "unmount (still mounted after 16 attempts)".into(), path, errno: Errno::EBUSY })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let text = "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    36 22 0:45 / /var/lib/kubelet/a\\040b rw,nosuid,nodev - fuse.smb3-csi //srv/share/sub rw,user_id=0\n\
                    garbage line\n\
                    37 22 0:46 / /x master:3 - tmpfs tmp\\134fs rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].mount_point, PathBuf::from("/var/lib/kubelet/a b"));
        assert_eq!(
            (m[1].fstype.as_str(), m[1].source.as_str(), m[1].device.as_str()),
            ("fuse.smb3-csi", "//srv/share/sub", "0:45")
        );
        assert_eq!(m[2].source, "tmp\\fs");
        assert!(parse_mountinfo("1 2 3 - x").is_empty());
        assert!(parse_mountinfo("").is_empty());
    }

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize(Path::new("/a/./b/../c/")).unwrap(), PathBuf::from("/a/c"));
        assert_eq!(normalize(Path::new("/..")).unwrap(), PathBuf::from("/"));
    }

    #[test]
    fn states_of_plain_paths() {
        assert!(
            matches!(mount_state(Path::new("/proc")).unwrap(), MountState::Mounted { fstype, .. } if fstype == "proc")
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(mount_state(dir.path()).unwrap(), MountState::NotMounted);
        assert_eq!(mount_state(&dir.path().join("missing")).unwrap(), MountState::NotMounted);
        // Unmounting what is not mounted (or does not exist) is success.
        unmount(dir.path()).unwrap();
        unmount(&dir.path().join("missing")).unwrap();
    }
}
