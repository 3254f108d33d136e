//! Turning SMB client errors into gRPC statuses the CO can act on.
//!
//! | SMB outcome | gRPC code |
//! |---|---|
//! | logon failure, wrong or expired password, disabled or locked account, NTLM/SPNEGO failure | UNAUTHENTICATED |
//! | access denied, network access denied, privilege not held | PERMISSION_DENIED |
//! | bad network name (the share does not exist) | the caller's choice: INVALID_ARGUMENT where a StorageClass names the share (CreateVolume), NOT_FOUND where a volume id does |
//! | connect refused or timed out, connection lost, bad network path | UNAVAILABLE |
//! | disk full, quota exceeded | RESOURCE_EXHAUSTED |
//! | encryption required but unavailable | FAILED_PRECONDITION |
//! | anything else | INTERNAL |
//!
//! Messages carry the operation, the share and user (never a password) and
//! the NT status name, e.g. `connecting to //srv/share as CORP\bob:
//! session setup: STATUS_LOGON_FAILURE`.

use tonic::{Code, Status};

use super::record::RecordError;
use smb3::{Error as SmbError, NtStatus};

/// Whether the error means the credentials were refused.
pub fn is_auth_failure(err: &SmbError) -> bool {
    match err {
        SmbError::Auth(_) => true,
        SmbError::Status { status, .. } => matches!(
            *status,
            NtStatus::LOGON_FAILURE
                | NtStatus::WRONG_PASSWORD
                | NtStatus::ACCOUNT_RESTRICTION
                | NtStatus::INVALID_LOGON_HOURS
                | NtStatus::PASSWORD_EXPIRED
                | NtStatus::ACCOUNT_DISABLED
                | NtStatus::PASSWORD_MUST_CHANGE
                | NtStatus::ACCOUNT_LOCKED_OUT
                | NtStatus::NETWORK_SESSION_EXPIRED
                | NtStatus::USER_SESSION_DELETED
        ),
        _ => false,
    }
}

/// The gRPC code for an SMB error; `missing_share` is used for
/// STATUS_BAD_NETWORK_NAME.
pub fn smb_code(err: &SmbError, missing_share: Code) -> Code {
    if is_auth_failure(err) {
        return Code::Unauthenticated;
    }
    match err {
        SmbError::Status { status, .. } => match *status {
            NtStatus::ACCESS_DENIED | NtStatus::NETWORK_ACCESS_DENIED | NtStatus::PRIVILEGE_NOT_HELD => {
                Code::PermissionDenied
            }
            NtStatus::BAD_NETWORK_NAME => missing_share,
            NtStatus::NETWORK_NAME_NOT_FOUND
            | NtStatus::NETWORK_NAME_DELETED
            | NtStatus::CONNECTION_DISCONNECTED
            | NtStatus::CONNECTION_RESET
            | NtStatus::REQUEST_NOT_ACCEPTED
            | NtStatus::INSUFFICIENT_RESOURCES => Code::Unavailable,
            NtStatus::DISK_FULL | NtStatus::QUOTA_EXCEEDED => Code::ResourceExhausted,
            _ => Code::Internal,
        },
        SmbError::Connect { .. }
        | SmbError::Disconnected { .. }
        | SmbError::Unavailable { .. }
        | SmbError::Closed { .. }
        | SmbError::Timeout { .. }
        | SmbError::StillPending { .. }
        | SmbError::Netbios { .. } => Code::Unavailable,
        SmbError::EncryptionUnavailable(_) | SmbError::Smb1Only | SmbError::NoCommonDialect(_) => {
            Code::FailedPrecondition
        }
        _ => Code::Internal,
    }
}

/// A status for `err` with `context` ("creating /pvc-1 on //srv/share as bob").
pub fn smb_status(context: &str, err: &SmbError, missing_share: Code) -> Status {
    Status::new(smb_code(err, missing_share), format!("{context}: {err}"))
}

/// A record read or write failure: SMB errors map as above, a corrupt record is INTERNAL.
pub(super) fn record_status(err: &RecordError, missing_share: Code) -> Status {
    match err.smb() {
        Some(smb) => Status::new(smb_code(smb, missing_share), err.to_string()),
        None => Status::internal(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_error(status: NtStatus) -> SmbError {
        SmbError::Status { op: "session setup".into(), status }
    }

    #[test]
    fn codes() {
        let cases = [
            (status_error(NtStatus::LOGON_FAILURE), Code::Unauthenticated),
            (status_error(NtStatus::ACCOUNT_LOCKED_OUT), Code::Unauthenticated),
            (status_error(NtStatus::ACCESS_DENIED), Code::PermissionDenied),
            (status_error(NtStatus::BAD_NETWORK_NAME), Code::InvalidArgument),
            (status_error(NtStatus::DISK_FULL), Code::ResourceExhausted),
            (status_error(NtStatus::SHARING_VIOLATION), Code::Internal),
            (
                SmbError::Connect {
                    addr: "10.0.0.1:445".into(),
                    source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                },
                Code::Unavailable,
            ),
            (SmbError::Timeout { op: "connect".into(), secs: 5 }, Code::Unavailable),
            (SmbError::EncryptionUnavailable("no cipher".into()), Code::FailedPrecondition),
        ];
        for (err, code) in cases {
            assert_eq!(smb_code(&err, Code::InvalidArgument), code, "{err}");
        }
        assert_eq!(smb_code(&status_error(NtStatus::BAD_NETWORK_NAME), Code::NotFound), Code::NotFound);
    }

    #[test]
    fn message_names_the_status() {
        let s = smb_status("connecting to //srv/share as bob", &status_error(NtStatus::LOGON_FAILURE), Code::NotFound);
        assert_eq!(s.code(), Code::Unauthenticated);
        assert!(s.message().contains("STATUS_LOGON_FAILURE"), "{}", s.message());
        assert!(s.message().starts_with("connecting to //srv/share as bob"), "{}", s.message());
    }
}
