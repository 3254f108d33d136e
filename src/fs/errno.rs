//! SMB failures as the errno an application expects. The filesystem speaks libc's numbers
//! ([`nix::errno::Errno`]) rather than any FUSE crate's type, so its operations can be called and tested
//! without FUSE; the adapter converts at the last moment.
//!
//! Only statuses with an obvious POSIX meaning are mapped. Anything unexpected (a lost connection, a malformed
//! reply) is EIO with one log line naming the operation and the path: the application sees a plain I/O error
//! and the operator sees why.

pub use nix::errno::Errno;
use smb3::{self as smb, NtStatus};

/// Maps a client error of operation `op` on share path `path`; unexpected ones are logged and become EIO.
///
/// A `soft` mount's operation that waited its bound for a lost connection ([`smb::Error::Unavailable`]) is
/// EIO, as with NFS and kernel cifs soft mounts; under `hard` the client never returns it (the operation
/// waits), so nothing here turns an outage into an error.
pub(crate) fn errno(e: &smb::Error, op: &str, path: &str) -> Errno {
    match e {
        smb::Error::LockConflict { .. } => return Errno::EAGAIN,
        smb::Error::Cancelled { .. } => return Errno::EINTR,
        // The server held the request past the pending ceiling: the call timed out, the mount is fine.
        smb::Error::StillPending { .. } => return Errno::ETIMEDOUT,
        _ => {}
    }
    if let smb::Error::Unavailable { .. } = e {
        tracing::warn!(op, path = %format!("/{path}"), error = %e, "soft mount: server unavailable, returning EIO");
        return Errno::EIO;
    }
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
            NtStatus::DISK_FULL => Some(Errno::ENOSPC),
            NtStatus::QUOTA_EXCEEDED => Some(Errno::EDQUOT),
            // A READ or WRITE through one open that hits another open's exclusive byte-range lock (SMB locks
            // are mandatory; see `fs::locks`): "try again", as mandatory locking did on Linux.
            NtStatus::FILE_LOCK_CONFLICT => Some(Errno::EAGAIN),
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
    if let Some(m) = mapped {
        tracing::debug!(op, path = %format!("/{path}"), error = %e, errno = %m, "SMB request failed");
    }
    mapped.unwrap_or_else(|| {
        tracing::error!(op, path = %format!("/{path}"), error = %e, "SMB request failed: returning EIO");
        Errno::EIO
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_errno() {
        let st = |status| smb::Error::Status { op: "x".into(), status };
        assert_eq!(errno(&st(NtStatus::OBJECT_NAME_NOT_FOUND), "t", "p"), Errno::ENOENT);
        assert_eq!(errno(&st(NtStatus::OBJECT_PATH_NOT_FOUND), "t", "p"), Errno::ENOENT);
        assert_eq!(errno(&st(NtStatus::ACCESS_DENIED), "t", "p"), Errno::EACCES);
        assert_eq!(errno(&st(NtStatus::OBJECT_NAME_COLLISION), "t", "p"), Errno::EEXIST);
        assert_eq!(errno(&st(NtStatus::DIRECTORY_NOT_EMPTY), "t", "p"), Errno::ENOTEMPTY);
        assert_eq!(errno(&st(NtStatus::DISK_FULL), "t", "p"), Errno::ENOSPC);
        assert_eq!(errno(&st(NtStatus::QUOTA_EXCEEDED), "t", "p"), Errno::EDQUOT);
        assert_eq!(errno(&st(NtStatus::FILE_LOCK_CONFLICT), "t", "p"), Errno::EAGAIN);
        assert_eq!(errno(&smb::Error::LockConflict { path: "f".into() }, "t", "p"), Errno::EAGAIN);
        assert_eq!(errno(&smb::Error::Cancelled { op: "lock f".into() }, "t", "p"), Errno::EINTR);
        assert_eq!(errno(&st(NtStatus::NOT_A_DIRECTORY), "t", "p"), Errno::ENOTDIR);
        assert_eq!(errno(&st(NtStatus::FILE_IS_A_DIRECTORY), "t", "p"), Errno::EISDIR);
        assert_eq!(errno(&st(NtStatus::NOT_SUPPORTED), "t", "p"), Errno::EOPNOTSUPP);
        assert_eq!(errno(&st(NtStatus::INVALID_PARAMETER), "t", "p"), Errno::EIO);
        let lost = smb::Error::Disconnected { addr: "srv:445".into(), why: "reset".into() };
        assert_eq!(errno(&lost, "read", "f"), Errno::EIO);
        let soft = smb::Error::Unavailable {
            op: "write".into(),
            addr: "srv:445".into(),
            secs: 6,
            why: "connection reset".into(),
        };
        assert_eq!(errno(&soft, "write", "f"), Errno::EIO);
    }
}
