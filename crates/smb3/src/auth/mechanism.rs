//! Which mechanism a logon uses, decided without I/O from the `sec=`
//! option, what the server's NEGOTIATE hint offers and what the
//! credentials allow:
//!
//! - `sec=krb5`: Kerberos or a clear refusal (never NTLM);
//! - `sec=ntlmssp`: NTLMv2 or a clear refusal (never Kerberos);
//! - unset: Kerberos when the server offers it and the credentials allow it
//!   (Kerberos credentials, or a user whose realm krb5.conf lists KDCs for),
//!   else NTLMv2. A user chosen for Kerberos this way falls back to NTLMv2
//!   only when no Kerberos infrastructure answers (KDC unreachable, the
//!   server has no service principal), and only if the server offers NTLM.

use super::gss_krb5::{KRB5_OID, MS_KRB5_OID};
use super::kdc::KerberosError;
use super::spnego::{NegTokenInit, NTLMSSP_OID};
use super::AuthError;
use crate::options::SecurityMechanism;

/// What the server's SPNEGO hint lists. An empty hint says nothing, so
/// both are assumed possible (the exchange itself will tell).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerOffers {
    pub kerberos: bool,
    pub ntlm: bool,
}

impl ServerOffers {
    pub fn from_hint(hint: &[u8]) -> Result<ServerOffers, AuthError> {
        if hint.is_empty() {
            return Ok(ServerOffers { kerberos: true, ntlm: true });
        }
        let init = NegTokenInit::decode(hint)?;
        let has = |oid: &[u8]| init.mech_types.iter().any(|m| m == oid);
        Ok(ServerOffers { kerberos: has(KRB5_OID) || has(MS_KRB5_OID), ntlm: has(NTLMSSP_OID) })
    }
}

/// What the credentials can do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// A Kerberos credential (ccache, or a password meant for Kerberos only).
    KerberosOnly,
    /// A user with a password: NTLM always; Kerberos with a realm.
    /// `kdc_configured`: krb5.conf lists KDCs for that realm (the explicit
    /// sign that Kerberos is wanted when `sec=` is unset).
    User {
        realm: Option<String>,
        kdc_configured: bool,
    },
    GuestOrAnonymous,
}

/// The chosen mechanism.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    Kerberos { realm: Option<String>, fallback_to_ntlm: bool },
    Ntlm,
}

/// Why no mechanism fits: one line, naming what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MechanismRefusal {
    #[error("sec=krb5 but the server does not offer Kerberos")]
    KerberosNotOffered,
    #[error("Kerberos credentials but the server does not offer Kerberos")]
    KerberosCredentialsNotOffered,
    #[error("sec=krb5 needs a user (guest and anonymous logons are NTLM only)")]
    KerberosNeedsAUser,
    #[error("sec=ntlmssp needs a user name and password, but the credentials are Kerberos only (a ccache)")]
    NtlmNeedsAPassword,
    #[error("sec=krb5 but no Kerberos realm for this user: give it as user@REALM or set default_realm in krb5.conf")]
    NoRealm,
    #[error(
        "the server offers only Kerberos: give the user's realm (user@REALM) and its KDCs in krb5.conf, or a \
         Kerberos credential cache"
    )]
    OnlyKerberosOffered,
}

/// The decision (see the module documentation).
pub fn choose(sec: SecurityMechanism, offers: ServerOffers, kind: &CredentialKind) -> Result<Plan, MechanismRefusal> {
    use SecurityMechanism::*;
    match kind {
        CredentialKind::GuestOrAnonymous => match sec {
            Kerberos => Err(MechanismRefusal::KerberosNeedsAUser),
            Auto | Ntlm => Ok(Plan::Ntlm),
        },
        CredentialKind::KerberosOnly => match sec {
            Ntlm => Err(MechanismRefusal::NtlmNeedsAPassword),
            Auto | Kerberos if !offers.kerberos => Err(MechanismRefusal::KerberosCredentialsNotOffered),
            Auto | Kerberos => Ok(Plan::Kerberos { realm: None, fallback_to_ntlm: false }),
        },
        CredentialKind::User { realm, kdc_configured } => match sec {
            Ntlm => Ok(Plan::Ntlm),
            Kerberos if !offers.kerberos => Err(MechanismRefusal::KerberosNotOffered),
            Kerberos if realm.is_none() => Err(MechanismRefusal::NoRealm),
            Kerberos => Ok(Plan::Kerberos { realm: realm.clone(), fallback_to_ntlm: false }),
            Auto if offers.kerberos && realm.is_some() && *kdc_configured => {
                Ok(Plan::Kerberos { realm: realm.clone(), fallback_to_ntlm: offers.ntlm })
            }
            Auto if !offers.ntlm && offers.kerberos => Err(MechanismRefusal::OnlyKerberosOffered),
            Auto => Ok(Plan::Ntlm),
        },
    }
}

/// Whether a Kerberos failure under `sec=` unset may give way to NTLM: no
/// KDC answered, or the server is not in the realm. A wrong password, an
/// unknown user or a skewed clock are reported as they are.
pub fn falls_back_to_ntlm(e: &KerberosError) -> bool {
    matches!(e, KerberosError::KdcUnreachable { .. } | KerberosError::ServicePrincipalUnknown { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use SecurityMechanism::*;

    const BOTH: ServerOffers = ServerOffers { kerberos: true, ntlm: true };
    const KRB_ONLY: ServerOffers = ServerOffers { kerberos: true, ntlm: false };
    const NTLM_ONLY: ServerOffers = ServerOffers { kerberos: false, ntlm: true };

    fn user(realm: Option<&str>, kdc: bool) -> CredentialKind {
        CredentialKind::User { realm: realm.map(String::from), kdc_configured: kdc }
    }

    fn krb(realm: Option<&str>, fallback: bool) -> Plan {
        Plan::Kerberos { realm: realm.map(String::from), fallback_to_ntlm: fallback }
    }

    #[test]
    fn unset_prefers_kerberos_when_offered_and_possible() {
        assert_eq!(choose(Auto, BOTH, &user(Some("R.TEST"), true)), Ok(krb(Some("R.TEST"), true)));
        assert_eq!(choose(Auto, KRB_ONLY, &user(Some("R.TEST"), true)), Ok(krb(Some("R.TEST"), false)));
        assert_eq!(choose(Auto, NTLM_ONLY, &user(Some("R.TEST"), true)), Ok(Plan::Ntlm));
        // No KDC configured, or no realm: NTLM as before Kerberos existed.
        assert_eq!(choose(Auto, BOTH, &user(Some("R.TEST"), false)), Ok(Plan::Ntlm));
        assert_eq!(choose(Auto, BOTH, &user(None, false)), Ok(Plan::Ntlm));
        assert_eq!(choose(Auto, KRB_ONLY, &user(None, false)), Err(MechanismRefusal::OnlyKerberosOffered));
        assert_eq!(choose(Auto, BOTH, &CredentialKind::KerberosOnly), Ok(krb(None, false)));
        assert_eq!(choose(Auto, BOTH, &CredentialKind::GuestOrAnonymous), Ok(Plan::Ntlm));
    }

    #[test]
    fn krb5_requires_kerberos() {
        assert_eq!(choose(Kerberos, BOTH, &user(Some("R.TEST"), false)), Ok(krb(Some("R.TEST"), false)));
        assert_eq!(choose(Kerberos, NTLM_ONLY, &user(Some("R.TEST"), true)), Err(MechanismRefusal::KerberosNotOffered));
        assert_eq!(choose(Kerberos, BOTH, &user(None, true)), Err(MechanismRefusal::NoRealm));
        assert_eq!(
            choose(Kerberos, BOTH, &CredentialKind::GuestOrAnonymous),
            Err(MechanismRefusal::KerberosNeedsAUser)
        );
        assert_eq!(
            choose(Kerberos, NTLM_ONLY, &CredentialKind::KerberosOnly),
            Err(MechanismRefusal::KerberosCredentialsNotOffered)
        );
    }

    #[test]
    fn ntlmssp_requires_ntlm() {
        assert_eq!(choose(Ntlm, BOTH, &user(Some("R.TEST"), true)), Ok(Plan::Ntlm));
        assert_eq!(choose(Ntlm, KRB_ONLY, &user(Some("R.TEST"), true)), Ok(Plan::Ntlm), "the server then refuses");
        assert_eq!(choose(Ntlm, BOTH, &CredentialKind::KerberosOnly), Err(MechanismRefusal::NtlmNeedsAPassword));
    }

    #[test]
    fn offers_from_the_negotiate_hint() {
        assert_eq!(ServerOffers::from_hint(&[]).unwrap(), BOTH);
        let hint = NegTokenInit {
            mech_types: vec![MS_KRB5_OID.to_vec(), KRB5_OID.to_vec()],
            mech_token: None,
            mech_list_mic: None,
        }
        .encode();
        assert_eq!(ServerOffers::from_hint(&hint).unwrap(), KRB_ONLY);
        let hint =
            NegTokenInit { mech_types: vec![NTLMSSP_OID.to_vec()], mech_token: None, mech_list_mic: None }.encode();
        assert_eq!(ServerOffers::from_hint(&hint).unwrap(), NTLM_ONLY);
        assert!(ServerOffers::from_hint(&hint[..hint.len() - 1]).is_err());
    }

    #[test]
    fn only_missing_infrastructure_falls_back() {
        let unreachable =
            KerberosError::KdcUnreachable { kdc: "k:88".into(), source: std::io::Error::other("refused") };
        assert!(falls_back_to_ntlm(&unreachable));
        assert!(falls_back_to_ntlm(&KerberosError::ServicePrincipalUnknown { principal: "cifs/x@R".into() }));
        assert!(!falls_back_to_ntlm(&KerberosError::WrongPassword { principal: "a@R".into() }));
        assert!(!falls_back_to_ntlm(&KerberosError::ClockSkew));
    }
}
