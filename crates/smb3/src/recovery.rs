//! The decisions behind reconnecting, as pure functions: how long to wait
//! between attempts, whether a new session is as safe as the first, which
//! failures send a request to the reconnect path, and what a replayed
//! non-idempotent operation's answer means. The state machine that applies
//! them lives in `link.rs`.

use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;

use crate::error::Error;
use crate::options::Credentials;
use crate::session::SessionInfo;
use crate::wire::NtStatus;

/// What callers experience while the connection is being replaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Recovery {
    /// Wait as long as it takes (like an NFS `hard` mount): no operation
    /// fails because the server is away.
    #[default]
    Hard,
    /// Fail an operation with [`Error::Unavailable`] once it has waited
    /// `timeout` for the connection to come back.
    Soft { timeout: Duration },
}

/// Bounded exponential backoff between reconnect attempts, jittered so that
/// many clients of one restarted server do not reconnect in lockstep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backoff {
    /// Upper bound of the first delay.
    pub initial: Duration,
    /// No delay is ever longer than this.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(250), max: Duration::from_secs(10) }
    }
}

impl Backoff {
    /// The delay before reconnect attempt `attempt` (1 = the first retry),
    /// for a `jitter` drawn uniformly from [0, 1): the ceiling doubles per
    /// attempt up to `max`, and the delay lies in its upper half, so it
    /// never collapses to zero and never exceeds `max`.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let ceiling = self.initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(self.max);
        let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
        ceiling / 2 + ceiling.mul_f64(jitter / 2.0)
    }
}

/// Where the connection stands, for volume conditions and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    Connected {
        since: SystemTime,
    },
    /// Lost and being replaced; callers wait (hard) or time out (soft).
    Reconnecting {
        reason: String,
        since: SystemTime,
        /// Failed attempts so far; `last_error` says why the last one failed.
        attempts: u32,
        last_error: Option<String>,
    },
    /// Given up for good: logged off, or the server's messages failed
    /// verification (tampering is not retried).
    Failed {
        reason: String,
        since: SystemTime,
    },
}

impl ConnectionState {
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectionState::Connected { .. })
    }
}

/// Where the credentials of every new session come from. A reconnect whose
/// SESSION_SETUP fails with a logon or password-expired status asks again,
/// so a rotated password is picked up without remounting.
pub trait CredentialsSource: Send + Sync + 'static {
    /// The credentials to use for a new session (may come from a cache).
    fn current(&self) -> BoxFuture<'_, Result<Credentials, Error>>;
    /// Called after the server rejected what `current` gave: fetch the
    /// credentials again from where they are kept (e.g. re-read a secret).
    fn refresh(&self) -> BoxFuture<'_, Result<Credentials, Error>> {
        self.current()
    }
}

/// Fixed credentials: the source when none is given.
impl CredentialsSource for Credentials {
    fn current(&self) -> BoxFuture<'_, Result<Credentials, Error>> {
        let c = self.clone();
        Box::pin(async move { Ok(c) })
    }
}

/// Whether a SESSION_SETUP failure means "ask for current credentials and
/// try again" rather than "the server is not ready yet".
/// A Kerberos credential cache whose tickets ended (or that holds none for
/// the server) counts too: the place it is kept may hold a fresh one.
pub(crate) fn credentials_rejected(e: &Error) -> bool {
    use crate::auth::kdc::KerberosError;
    if let Error::Kerberos { source: KerberosError::TicketExpired { .. } | KerberosError::NoTicket(_), .. } = e {
        return true;
    }
    matches!(
        e.status(),
        Some(
            NtStatus::LOGON_FAILURE
                | NtStatus::PASSWORD_EXPIRED
                | NtStatus::PASSWORD_MUST_CHANGE
                | NtStatus::WRONG_PASSWORD
        )
    )
}

/// Refuses a reconnected session that is weaker than the first one: a
/// network attacker who can cut connections must not gain a downgrade by it.
pub(crate) fn check_not_weaker(first: &SessionInfo, now: &SessionInfo) -> Result<(), String> {
    if first.encrypted && !now.encrypted {
        return Err("the new session is not encrypted but the first one was".into());
    }
    if first.signing.is_some() && now.signing.is_none() {
        return Err("the new session is not signed but the first one was".into());
    }
    if now.dialect < first.dialect {
        return Err(format!("the server now offers SMB {} where it negotiated {} before", now.dialect, first.dialect));
    }
    if now.guest != first.guest || now.anonymous != first.anonymous {
        return Err("the new session's guest/anonymous status differs from the first one".into());
    }
    Ok(())
}

/// Whether a request failed because its connection went away (as opposed
/// to the server answering it): such a request is sent again once the
/// connection is back.
pub(crate) fn is_connection_loss(e: &Error) -> bool {
    matches!(e, Error::Disconnected { .. } | Error::Connect { .. } | Error::Timeout { .. })
}

/// Statuses with which a server says our session or tree is gone although
/// the TCP connection is up (e.g. it expired the session): handled like a
/// lost connection.
pub(crate) fn is_session_loss(status: NtStatus) -> bool {
    matches!(
        status,
        NtStatus::USER_SESSION_DELETED | NtStatus::NETWORK_SESSION_EXPIRED | NtStatus::NETWORK_NAME_DELETED
    )
}

/// What a path operation was meant to do, for judging the answer to a
/// replay (the first attempt may have been carried out before the
/// connection was lost).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Intent {
    /// Reads, queries, overwrites: doing it twice is doing it once.
    Idempotent,
    /// Remove a file or directory.
    Delete,
    /// Create a directory that must not exist.
    Mkdir,
    /// Rename or link: the source may be gone because it already moved.
    Rename,
}

/// How to treat a replayed operation's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReplayVerdict {
    /// Report the status as it is.
    AsIs,
    /// The first attempt did it: success for the caller.
    AlreadyDone,
    /// The source is gone: success if the target now exists.
    DoneIfTargetExists,
}

pub(crate) fn replay_verdict(intent: Intent, replayed: bool, status: NtStatus) -> ReplayVerdict {
    if !replayed || status.is_success() {
        return ReplayVerdict::AsIs;
    }
    match (intent, status) {
        (Intent::Delete, NtStatus::OBJECT_NAME_NOT_FOUND | NtStatus::DELETE_PENDING) => ReplayVerdict::AlreadyDone,
        (Intent::Mkdir, NtStatus::OBJECT_NAME_COLLISION) => ReplayVerdict::AlreadyDone,
        (Intent::Rename, NtStatus::OBJECT_NAME_NOT_FOUND) => ReplayVerdict::DoneIfTargetExists,
        _ => ReplayVerdict::AsIs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Dialect;

    #[test]
    fn backoff_doubles_within_bounds_and_caps() {
        let b = Backoff { initial: Duration::from_millis(200), max: Duration::from_secs(5) };
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(100));
        assert_eq!(b.delay(1, 0.999_999).as_millis(), 199);
        assert_eq!(b.delay(2, 0.0), Duration::from_millis(200));
        assert_eq!(b.delay(3, 0.5), Duration::from_millis(600));
        for attempt in 1..200 {
            for j in [0.0, 0.3, 0.999, f64::NAN, 7.0, -1.0] {
                let d = b.delay(attempt, j);
                assert!(d <= b.max, "attempt {attempt}: {d:?}");
                assert!(d >= Duration::from_millis(100), "attempt {attempt}: {d:?}");
            }
        }
        assert_eq!(b.delay(50, 0.0), Duration::from_millis(2500));
        assert_eq!(b.delay(50, 1.0), Duration::from_secs(5));
        // The same attempt with different jitter spreads out.
        assert_ne!(b.delay(4, 0.1), b.delay(4, 0.9));
    }

    fn info(dialect: Dialect, encrypted: bool) -> SessionInfo {
        SessionInfo {
            server: "s:445".into(),
            dialect,
            cipher: None,
            signing: Some(crate::SigningAlgorithmId::AesCmac),
            encrypted,
            guest: false,
            anonymous: false,
            kerberos: false,
            max_read: 1 << 20,
            max_write: 1 << 20,
            max_transact: 1 << 20,
        }
    }

    #[test]
    fn reconnect_may_not_weaken_the_session() {
        let first = info(Dialect::Smb311, true);
        assert!(check_not_weaker(&first, &info(Dialect::Smb311, true)).is_ok());
        assert!(check_not_weaker(&first, &info(Dialect::Smb311, false)).unwrap_err().contains("not encrypted"));
        assert!(check_not_weaker(&first, &info(Dialect::Smb302, true)).unwrap_err().contains("3.0.2"));
        let mut unsigned = info(Dialect::Smb311, true);
        unsigned.signing = None;
        assert!(check_not_weaker(&first, &unsigned).is_err());
        let mut guest = info(Dialect::Smb311, true);
        guest.guest = true;
        assert!(check_not_weaker(&first, &guest).is_err());
        // An unencrypted first session may come back encrypted.
        assert!(check_not_weaker(&info(Dialect::Smb300, false), &info(Dialect::Smb311, true)).is_ok());
    }

    #[test]
    fn replayed_non_idempotent_answers() {
        use ReplayVerdict::*;
        assert_eq!(replay_verdict(Intent::Delete, true, NtStatus::OBJECT_NAME_NOT_FOUND), AlreadyDone);
        assert_eq!(replay_verdict(Intent::Delete, false, NtStatus::OBJECT_NAME_NOT_FOUND), AsIs);
        assert_eq!(replay_verdict(Intent::Delete, true, NtStatus::ACCESS_DENIED), AsIs);
        assert_eq!(replay_verdict(Intent::Mkdir, true, NtStatus::OBJECT_NAME_COLLISION), AlreadyDone);
        assert_eq!(replay_verdict(Intent::Mkdir, false, NtStatus::OBJECT_NAME_COLLISION), AsIs);
        assert_eq!(replay_verdict(Intent::Rename, true, NtStatus::OBJECT_NAME_NOT_FOUND), DoneIfTargetExists);
        assert_eq!(replay_verdict(Intent::Rename, true, NtStatus::OBJECT_NAME_COLLISION), AsIs);
        assert_eq!(replay_verdict(Intent::Idempotent, true, NtStatus::OBJECT_NAME_NOT_FOUND), AsIs);
        assert_eq!(replay_verdict(Intent::Delete, true, NtStatus::SUCCESS), AsIs);
    }

    #[test]
    fn which_failures_reconnect() {
        assert!(is_connection_loss(&Error::Disconnected { addr: "a".into(), why: "reset".into() }));
        assert!(is_connection_loss(&Error::Timeout { op: "x".into(), secs: 1 }));
        assert!(!is_connection_loss(&Error::Integrity("bad mac".into())));
        assert!(!is_connection_loss(&Error::Status { op: "x".into(), status: NtStatus::ACCESS_DENIED }));
        assert!(is_session_loss(NtStatus::USER_SESSION_DELETED));
        let expired = crate::auth::kdc::KerberosError::TicketExpired { principal: "a@R".into() };
        assert!(credentials_rejected(&Error::Kerberos { op: "x".into(), source: expired }));
        let skew = crate::auth::kdc::KerberosError::ClockSkew;
        assert!(!credentials_rejected(&Error::Kerberos { op: "x".into(), source: skew }));
        assert!(!is_session_loss(NtStatus::ACCESS_DENIED));
        let logon = Error::Status { op: "setup".into(), status: NtStatus::LOGON_FAILURE };
        assert!(credentials_rejected(&logon));
        let expired = Error::Status { op: "setup".into(), status: NtStatus::PASSWORD_EXPIRED };
        assert!(credentials_rejected(&expired));
        assert!(!credentials_rejected(&Error::Status { op: "s".into(), status: NtStatus::ACCESS_DENIED }));
    }
}
