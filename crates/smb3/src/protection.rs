//! How a session is protected, decided without I/O, from what NEGOTIATE
//! settled, what SESSION_SETUP answered and the [`EncryptionPolicy`].
//!
//! Three decisions, in the order the session state machine meets them:
//! - before any credential is sent ([`check_before_logon`]): under
//!   `Required`, a server that cannot encrypt (SMB 2.x, no encryption
//!   capability, no cipher in common) is refused, so a downgraded or weak
//!   server never even sees an NTLM response;
//! - when SESSION_SETUP succeeds ([`accept_logon`]): a user the server
//!   quietly logged on as guest or null gets an unsigned, unencrypted session,
//!   so that is a logon failure unless guest or anonymous was asked for;
//! - once the session key is proven ([`seal_session`]): whether every message
//!   is encrypted (`Required`: always; `IfSupported`: when the server can;
//!   `Off`: only when the server demands it) or only signed.
//!
//! They are pure functions so each refusal is tested on crafted inputs, not
//! only against the servers the integration tests happen to run.

use crate::options::{Credentials, EncryptionPolicy};
use crate::wire::session_setup as ss;
use crate::wire::{CipherId, Dialect};

/// Why a session is not acceptable under the policy. The session maps each
/// to the crate's [`Error`](crate::Error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("server negotiated SMB {0}, which has no encryption")]
    DialectCannotEncrypt(Dialect),
    #[error("server offers no common cipher for SMB {0}")]
    NoCommonCipher(Dialect),
    #[error("server requires encryption but none was negotiated")]
    ServerDemandsUnavailableEncryption,
    #[error("guest and anonymous sessions cannot encrypt")]
    GuestCannotEncrypt,
    /// A user's logon came back as a guest or null session (a server mapping
    /// bad users to guest): reported as STATUS_LOGON_FAILURE.
    #[error("the server logged the user on as guest or anonymous")]
    UserMappedToGuest,
    #[error("authentication produced no session key")]
    NoSessionKey,
}

/// Whether a session on this negotiation could encrypt at all.
pub(crate) fn can_encrypt(dialect: Dialect, cipher: Option<CipherId>) -> bool {
    dialect.is_smb3() && cipher.is_some()
}

/// Before SESSION_SETUP: refuses, under `Required`, a server that cannot
/// encrypt. Nothing secret has been sent when this runs.
pub(crate) fn check_before_logon(
    policy: EncryptionPolicy,
    dialect: Dialect,
    cipher: Option<CipherId>,
) -> Result<(), Refusal> {
    if policy != EncryptionPolicy::Required || can_encrypt(dialect, cipher) {
        return Ok(());
    }
    Err(if !dialect.is_smb3() { Refusal::DialectCannotEncrypt(dialect) } else { Refusal::NoCommonCipher(dialect) })
}

/// The SessionFlags of the final SESSION_SETUP response (MS-SMB2 2.2.6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SessionFlags {
    /// SMB2_SESSION_FLAG_IS_GUEST.
    pub guest: bool,
    /// SMB2_SESSION_FLAG_IS_NULL.
    pub anonymous: bool,
    /// SMB2_SESSION_FLAG_ENCRYPT_DATA: the server wants the session encrypted.
    pub encrypt_data: bool,
}

impl SessionFlags {
    pub fn from_bits(bits: u16) -> SessionFlags {
        SessionFlags {
            guest: bits & ss::SESSION_FLAG_IS_GUEST != 0,
            anonymous: bits & ss::SESSION_FLAG_IS_NULL != 0,
            encrypt_data: bits & ss::SESSION_FLAG_ENCRYPT_DATA != 0,
        }
    }
}

/// What a successful SESSION_SETUP gives the session to protect it with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Logon {
    /// An authenticated session key: derive keys, verify the final response's
    /// signature, then decide sealing with [`seal_session`].
    Keyed,
    /// An explicitly requested guest or anonymous session: no key, so
    /// neither signed nor encrypted.
    Unkeyed,
}

/// After SESSION_SETUP succeeded: refuses a user logon that the server turned
/// into guest or null, and an unkeyed session the policy cannot accept.
pub(crate) fn accept_logon(
    policy: EncryptionPolicy,
    creds: &Credentials,
    flags: SessionFlags,
    has_session_key: bool,
) -> Result<Logon, Refusal> {
    let asked_for_user = matches!(creds, Credentials::User { .. } | Credentials::Kerberos(_));
    if asked_for_user && (flags.guest || flags.anonymous) {
        return Err(Refusal::UserMappedToGuest);
    }
    if has_session_key && !flags.guest && !flags.anonymous {
        return Ok(Logon::Keyed);
    }
    if asked_for_user {
        return Err(Refusal::NoSessionKey);
    }
    if policy == EncryptionPolicy::Required {
        return Err(Refusal::GuestCannotEncrypt);
    }
    Ok(Logon::Unkeyed)
}

/// For a keyed session: whether to encrypt every message (`true`) or only
/// sign (`false`).
pub(crate) fn seal_session(policy: EncryptionPolicy, can_encrypt: bool, flags: SessionFlags) -> Result<bool, Refusal> {
    let encrypt = match policy {
        EncryptionPolicy::Required => true,
        EncryptionPolicy::IfSupported => can_encrypt,
        EncryptionPolicy::Off => flags.encrypt_data,
    };
    if encrypt && !can_encrypt {
        return Err(Refusal::ServerDemandsUnavailableEncryption);
    }
    Ok(encrypt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Secret;
    use EncryptionPolicy::{IfSupported, Off, Required};

    const POLICIES: [EncryptionPolicy; 3] = [Required, IfSupported, Off];

    fn user() -> Credentials {
        Credentials::user("alice", "CORP", Secret::new("pw"))
    }

    fn flags(bits: u16) -> SessionFlags {
        SessionFlags::from_bits(bits)
    }

    #[test]
    fn required_refuses_servers_that_cannot_encrypt_before_logon() {
        let gcm = Some(CipherId::Aes128Gcm);
        assert_eq!(check_before_logon(Required, Dialect::Smb311, gcm), Ok(()));
        assert_eq!(check_before_logon(Required, Dialect::Smb300, Some(CipherId::Aes128Ccm)), Ok(()));
        assert_eq!(
            check_before_logon(Required, Dialect::Smb210, None),
            Err(Refusal::DialectCannotEncrypt(Dialect::Smb210))
        );
        // 3.0 without CAP_ENCRYPTION, or 3.1.1 with no cipher in common.
        assert_eq!(check_before_logon(Required, Dialect::Smb300, None), Err(Refusal::NoCommonCipher(Dialect::Smb300)));
        assert_eq!(check_before_logon(Required, Dialect::Smb311, None), Err(Refusal::NoCommonCipher(Dialect::Smb311)));
        // A cipher on a 2.x dialect cannot be used.
        assert!(!can_encrypt(Dialect::Smb210, gcm));
        assert_eq!(
            check_before_logon(Required, Dialect::Smb210, gcm),
            Err(Refusal::DialectCannotEncrypt(Dialect::Smb210))
        );
        for policy in [IfSupported, Off] {
            assert_eq!(check_before_logon(policy, Dialect::Smb210, None), Ok(()));
            assert_eq!(check_before_logon(policy, Dialect::Smb311, None), Ok(()));
        }
    }

    #[test]
    fn reads_session_flags() {
        assert_eq!(flags(0), SessionFlags::default());
        assert_eq!(flags(ss::SESSION_FLAG_IS_GUEST), SessionFlags { guest: true, ..Default::default() });
        assert_eq!(flags(ss::SESSION_FLAG_IS_NULL), SessionFlags { anonymous: true, ..Default::default() });
        assert_eq!(flags(ss::SESSION_FLAG_ENCRYPT_DATA), SessionFlags { encrypt_data: true, ..Default::default() });
    }

    #[test]
    fn a_user_mapped_to_guest_or_null_is_a_logon_failure() {
        for policy in POLICIES {
            for bits in [
                ss::SESSION_FLAG_IS_GUEST,
                ss::SESSION_FLAG_IS_NULL,
                ss::SESSION_FLAG_IS_GUEST | ss::SESSION_FLAG_ENCRYPT_DATA,
            ] {
                for has_key in [true, false] {
                    assert_eq!(accept_logon(policy, &user(), flags(bits), has_key), Err(Refusal::UserMappedToGuest));
                }
            }
            assert_eq!(accept_logon(policy, &user(), flags(0), true), Ok(Logon::Keyed));
            assert_eq!(accept_logon(policy, &user(), flags(0), false), Err(Refusal::NoSessionKey));
        }
    }

    #[test]
    fn guest_and_anonymous_only_when_asked_and_never_under_required() {
        for creds in [Credentials::Guest, Credentials::Anonymous] {
            for bits in [ss::SESSION_FLAG_IS_GUEST, ss::SESSION_FLAG_IS_NULL, 0] {
                assert_eq!(accept_logon(Required, &creds, flags(bits), false), Err(Refusal::GuestCannotEncrypt));
                for policy in [IfSupported, Off] {
                    assert_eq!(accept_logon(policy, &creds, flags(bits), false), Ok(Logon::Unkeyed));
                }
            }
            // A guest flag wins over a session key: the key of a guest session signs nothing.
            assert_eq!(accept_logon(Off, &creds, flags(ss::SESSION_FLAG_IS_GUEST), true), Ok(Logon::Unkeyed));
            assert_eq!(
                accept_logon(Required, &creds, flags(ss::SESSION_FLAG_IS_NULL), true),
                Err(Refusal::GuestCannotEncrypt)
            );
            // A server that authenticates the guest account like a user gives a real key.
            assert_eq!(accept_logon(Required, &creds, flags(0), true), Ok(Logon::Keyed));
        }
    }

    #[test]
    fn sealing_follows_policy_and_server() {
        let (none, demand) = (flags(0), flags(ss::SESSION_FLAG_ENCRYPT_DATA));
        // Required: always sealed (check_before_logon already refused servers that cannot).
        assert_eq!(seal_session(Required, true, none), Ok(true));
        assert_eq!(seal_session(Required, false, none), Err(Refusal::ServerDemandsUnavailableEncryption));
        // IfSupported: sealed exactly when the server can.
        assert_eq!(seal_session(IfSupported, true, none), Ok(true));
        assert_eq!(seal_session(IfSupported, false, none), Ok(false));
        assert_eq!(seal_session(IfSupported, false, demand), Ok(false));
        // Off: signed, unless the server demands encryption.
        assert_eq!(seal_session(Off, true, none), Ok(false));
        assert_eq!(seal_session(Off, true, demand), Ok(true));
        assert_eq!(seal_session(Off, false, none), Ok(false));
        assert_eq!(seal_session(Off, false, demand), Err(Refusal::ServerDemandsUnavailableEncryption));
    }
}
