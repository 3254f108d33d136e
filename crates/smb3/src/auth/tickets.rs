//! Where the `cifs/<server>` ticket of a Kerberos logon comes from: a
//! credential cache (its service ticket if still good, else a new one with
//! its TGT) or a user name and password (a fresh TGT each time, so a
//! renewal never runs into an expired TGT).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::ccache::{Ccache, Credential};
use super::kdc::{request_service_ticket, request_tgt, KerberosError};
use super::krb5_conf::Krb5Conf;
use crate::Secret;

/// The SMB service class (MS-SMB2 3.2.4.2.3: `cifs/<server name>`).
pub const SERVICE: &str = "cifs";
/// A ticket with less left than this is not used: the session would expire at once.
pub const MIN_REMAINING: Duration = Duration::from_secs(10);

/// What a Kerberos logon holds to get tickets with.
#[derive(Clone, Copy, Debug)]
pub enum TicketSource<'a> {
    Password { user: &'a str, realm: &'a str, password: &'a Secret },
    Ccache(&'a [u8]),
}

/// What to do with a credential cache for `cifs/host`.
#[derive(Debug, PartialEq, Eq)]
pub enum CcachePlan {
    /// It holds a service ticket with time left.
    UseServiceTicket(Credential),
    /// Ask the KDC for one with this TGT.
    AskWithTgt(Credential),
}

/// Chooses from a decoded cache at `now` (unix seconds): a pure decision.
pub fn plan_from_ccache(cache: &Ccache, host: &str, now: u64) -> Result<CcachePlan, KerberosError> {
    let good = |c: &&Credential| u64::from(c.end_time) > now + MIN_REMAINING.as_secs();
    if let Some(t) = cache.service_ticket(SERVICE, host).filter(good) {
        return Ok(CcachePlan::UseServiceTicket(t.clone()));
    }
    let principal = cache.default_principal.display();
    match cache.tgt() {
        Some(tgt) if good(&tgt) => Ok(CcachePlan::AskWithTgt(tgt.clone())),
        Some(_) => Err(KerberosError::TicketExpired { principal }),
        None if cache.service_ticket(SERVICE, host).is_some() => Err(KerberosError::TicketExpired { principal }),
        None => Err(KerberosError::NoTicket(format!(
            "the credential cache of {principal} holds no TGT and no ticket for {SERVICE}/{host}"
        ))),
    }
}

/// A service ticket for `cifs/host` from `source`.
pub async fn service_ticket(
    source: TicketSource<'_>,
    conf: &Krb5Conf,
    host: &str,
    timeout: Duration,
) -> Result<Credential, KerberosError> {
    let host = host.to_ascii_lowercase();
    match source {
        TicketSource::Password { user, realm, password } => {
            let config = conf.kdc_config(realm, timeout).await?;
            let tgt = request_tgt(&config, user, password).await?;
            request_service_ticket(&config, &tgt, SERVICE, &host).await
        }
        TicketSource::Ccache(bytes) => {
            let cache = Ccache::decode(bytes)?;
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            match plan_from_ccache(&cache, &host, now)? {
                CcachePlan::UseServiceTicket(t) => Ok(t),
                CcachePlan::AskWithTgt(tgt) => {
                    let config = conf.kdc_config(&tgt.server.realm, timeout).await?;
                    request_service_ticket(&config, &tgt, SERVICE, &host).await
                }
            }
        }
    }
}

/// The principal a ccache is for (`alice@REALM`), for logs and errors.
pub fn ccache_principal(bytes: &[u8]) -> Option<String> {
    Ccache::decode(bytes).ok().map(|c| c.default_principal.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ccache::Principal;

    fn principal(realm: &str, parts: &[&str]) -> Principal {
        Principal { name_type: 1, realm: realm.into(), components: parts.iter().map(|s| s.to_string()).collect() }
    }

    fn cred(server: &[&str], end_time: u32) -> Credential {
        Credential {
            client: principal("R.TEST", &["alice"]),
            server: principal("R.TEST", server),
            key_type: 18,
            key: vec![1; 32],
            auth_time: 0,
            start_time: 0,
            end_time,
            renew_till: 0,
            is_skey: false,
            flags: 0,
            addresses: vec![],
            auth_data: vec![],
            ticket: vec![0x61, 0],
            second_ticket: vec![],
        }
    }

    fn cache(credentials: Vec<Credential>) -> Ccache {
        Ccache { version: 0x0504, header: vec![], default_principal: principal("R.TEST", &["alice"]), credentials }
    }

    #[test]
    fn ccache_choices() {
        let now = 1_000_000;
        let tgt = cred(&["krbtgt", "R.TEST"], now as u32 + 3600);
        let cifs = cred(&["cifs", "fs1.r.test"], now as u32 + 600);
        let c = cache(vec![tgt.clone(), cifs.clone()]);
        assert_eq!(plan_from_ccache(&c, "fs1.r.test", now).unwrap(), CcachePlan::UseServiceTicket(cifs.clone()));
        assert_eq!(plan_from_ccache(&c, "fs2.r.test", now).unwrap(), CcachePlan::AskWithTgt(tgt.clone()));
        // A service ticket about to expire: ask for a new one.
        let late = now + 600 - 5;
        assert_eq!(plan_from_ccache(&c, "fs1.r.test", late).unwrap(), CcachePlan::AskWithTgt(tgt));
        // Everything expired.
        let e = plan_from_ccache(&c, "fs1.r.test", now + 7200).unwrap_err();
        assert!(matches!(e, KerberosError::TicketExpired { .. }), "{e}");
        assert!(e.to_string().contains("alice@R.TEST"), "{e}");
        // No TGT, no ticket for this server.
        let e = plan_from_ccache(&cache(vec![cifs.clone()]), "fs2.r.test", now).unwrap_err();
        assert!(matches!(e, KerberosError::NoTicket(_)), "{e}");
        assert!(e.to_string().contains("cifs/fs2.r.test"), "{e}");
        let e = plan_from_ccache(&cache(vec![cifs]), "fs1.r.test", now + 7200).unwrap_err();
        assert!(matches!(e, KerberosError::TicketExpired { .. }), "{e}");
    }
}
