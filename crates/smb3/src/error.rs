//! The client's error type: what went wrong, with the context a user needs.

use super::auth::kdc::KerberosError;
use super::auth::AuthError;
use super::crypto::CryptoError;
use super::wire::{Dialect, NtStatus, WireError};

/// Errors of the SMB client. `Display` is one line, names the operation and
/// the target where known, and never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid target {target:?}: {why}")]
    InvalidTarget { target: String, why: String },
    #[error("connecting to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("connection to {addr} lost: {why}")]
    Disconnected { addr: String, why: String },
    #[error("{op} timed out after {secs}s")]
    Timeout { op: String, secs: u64 },
    /// The server answered STATUS_PENDING and then kept the request past the
    /// ceiling (`pending_timeout`): the request was cancelled, the connection
    /// is fine, and sending it again would only wait again.
    #[error("{op}: server kept answering STATUS_PENDING for more than {secs}s (pending_timeout); request cancelled")]
    StillPending { op: String, secs: u64 },
    #[error("NetBIOS session refused by {addr}: {why}")]
    Netbios { addr: String, why: String },
    #[error("server answered with SMB1 only; SMB1 is never used (enable SMB2/3 on the server)")]
    Smb1Only,
    #[error("no common dialect: server chose {0}")]
    NoCommonDialect(Dialect),
    #[error(
        "encryption required but not available: {0} (use --encryption if-supported or off only on trusted networks)"
    )]
    EncryptionUnavailable(String),
    #[error("{op}: {status}")]
    Status { op: String, status: NtStatus },
    #[error("malformed message from server: {0}")]
    Wire(#[from] WireError),
    #[error("integrity check failed: {0}")]
    Crypto(#[from] CryptoError),
    #[error("integrity check failed: {0}")]
    Integrity(String),
    #[error("authentication: {0}")]
    Auth(#[from] AuthError),
    /// A Kerberos logon failed; `source` names the Kerberos failure in one line.
    #[error("{op}: {source}")]
    Kerberos {
        op: String,
        #[source]
        source: KerberosError,
    },
    #[error("protocol violation by server: {0}")]
    Protocol(String),
    #[error("{op}: {source}")]
    LocalIo { op: String, source: std::io::Error },
    /// Soft recovery gave up: the connection did not come back in time.
    #[error("{op}: server {addr} unavailable for {secs}s (soft mount): {why}")]
    Unavailable { op: String, addr: String, secs: u64, why: String },
    /// The open could not be reclaimed or reopened after a reconnect (e.g.
    /// the file was deleted meanwhile); other handles are unaffected.
    #[error("{path}: handle lost in reconnect: {why}")]
    HandleLost { path: String, why: String },
    /// A byte-range lock conflicts with one another open holds (STATUS_LOCK_NOT_GRANTED or
    /// STATUS_FILE_LOCK_CONFLICT in answer to a LOCK).
    #[error("{path}: range locked by another open")]
    LockConflict { path: String },
    /// A waiting request was cancelled by its caller (SMB2 CANCEL sent).
    #[error("{op}: cancelled")]
    Cancelled { op: String },
    /// The client was logged off, or its connection was found tampered with.
    #[error("connection to {addr} closed: {why}")]
    Closed { addr: String, why: String },
}

impl Error {
    /// The NT status behind this error, if the server sent one.
    pub fn status(&self) -> Option<NtStatus> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the connection under this error is gone (a reconnect may help).
    pub fn is_disconnect(&self) -> bool {
        matches!(self, Error::Disconnected { .. } | Error::Connect { .. })
    }

    /// Replaces the operation context of a status error (e.g. "create dir/x").
    pub fn context(self, op: impl Into<String>) -> Self {
        match self {
            Error::Status { status, .. } => Error::Status { op: op.into(), status },
            Error::Timeout { secs, .. } => Error::Timeout { op: op.into(), secs },
            Error::StillPending { secs, .. } => Error::StillPending { op: op.into(), secs },
            Error::Unavailable { addr, secs, why, .. } => Error::Unavailable { op: op.into(), addr, secs, why },
            other => other,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
