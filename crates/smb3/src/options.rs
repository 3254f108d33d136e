//! How to connect and as whom: `Credentials`, the `EncryptionPolicy`, the
//! `ClientOptions` (and the `SessionSettings` the pool keys on), and the
//! parsers for cipher lists and dialects that command lines and volume
//! parameters use.
//!
//! These are inputs to every layer (negotiate reads the dialect range and
//! ciphers, the session reads the policy and credentials, the pool keys on the
//! settings), so they live below `client` rather than in it: the layers that
//! build a `Client` must not have to import from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::conn::Framing;
use super::error::{Error, Result};
use super::wire::{CipherId, Dialect};
use super::Secret;
use crate::observer::ObserverHandle;
use crate::recovery::{Backoff, Recovery};

/// Who we authenticate as.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    User {
        user: String,
        domain: String,
        password: Secret,
    },
    /// Guest logon; only when explicitly asked for.
    Guest,
    /// Anonymous (null) session; only when explicitly asked for.
    Anonymous,
    /// Kerberos only (never NTLM): a password the client gets its own
    /// tickets with, or a credential cache.
    Kerberos(KerberosCredentials),
}

/// Where a Kerberos-only logon gets its tickets.
#[derive(Clone, PartialEq, Eq)]
pub enum KerberosCredentials {
    /// `user@realm` and its password: the client gets a TGT and service
    /// tickets itself, and new ones for every session and re-authentication.
    Password { user: String, realm: String, password: Secret },
    /// An MIT credential cache (a `krb5cc_<uid>` Secret, `KRB5CCNAME=FILE:`):
    /// its service ticket for the server, or one got with its TGT.
    Ccache(CcacheBytes),
}

/// The bytes of an MIT credential cache: keys inside, so never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct CcacheBytes(Arc<Vec<u8>>);

impl CcacheBytes {
    pub fn new(bytes: Vec<u8>) -> CcacheBytes {
        CcacheBytes(Arc::new(bytes))
    }

    /// The cache, for the few places that must use it (ticket lookup).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for CcacheBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<ccache of {} bytes redacted>", self.0.len())
    }
}

impl std::fmt::Debug for KerberosCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KerberosCredentials::Password { user, realm, .. } => write!(f, "Kerberos password of {user}@{realm}"),
            KerberosCredentials::Ccache(bytes) => write!(f, "{bytes:?}"),
        }
    }
}

impl KerberosCredentials {
    /// A ccache read from `KRB5CCNAME` (`FILE:path` or a bare path, as MIT
    /// reads it); `None` when the variable is unset. Other cache types
    /// (KEYRING:, KCM:, MEMORY:) cannot be read from another process.
    pub fn from_krb5ccname() -> Option<Result<KerberosCredentials>> {
        let name = std::env::var("KRB5CCNAME").ok().filter(|n| !n.is_empty())?;
        Some(Self::from_ccache_name(&name))
    }

    /// A ccache named as `KRB5CCNAME` names one.
    pub fn from_ccache_name(name: &str) -> Result<KerberosCredentials> {
        let path = match name.split_once(':') {
            Some(("FILE", path)) => path,
            Some((kind, _)) if !kind.contains('/') => {
                return Err(Error::LocalIo {
                    op: format!("KRB5CCNAME={name}"),
                    source: std::io::Error::new(
                        std::io::ErrorKind::Unsupported,
                        format!("{kind}: credential caches cannot be read; use a FILE: cache (kinit -c FILE:/path)"),
                    ),
                })
            }
            _ => name,
        };
        let bytes = std::fs::read(path)
            .map_err(|source| Error::LocalIo { op: format!("reading the Kerberos credential cache {path}"), source })?;
        Ok(KerberosCredentials::Ccache(CcacheBytes::new(bytes)))
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display_name())
    }
}

impl Credentials {
    /// A user, splitting `DOMAIN\user` and `user@domain` forms when no domain is given.
    pub fn user(user: &str, domain: &str, password: Secret) -> Credentials {
        let (user, domain) = if !domain.is_empty() {
            (user.to_string(), domain.to_string())
        } else if let Some((d, u)) = user.split_once(['\\', '/']) {
            (u.to_string(), d.to_string())
        } else if let Some((u, d)) = user.split_once('@') {
            (u.to_string(), d.to_string())
        } else {
            (user.to_string(), String::new())
        };
        Credentials::User { user, domain, password }
    }

    /// `DOMAIN\user`, `guest` or `anonymous`: safe to log.
    pub fn display_name(&self) -> String {
        match self {
            Credentials::User { user, domain, .. } if domain.is_empty() => user.clone(),
            Credentials::User { user, domain, .. } => format!("{domain}\\{user}"),
            Credentials::Guest => "guest".into(),
            Credentials::Anonymous => "anonymous".into(),
            Credentials::Kerberos(KerberosCredentials::Password { user, realm, .. }) => format!("{user}@{realm}"),
            Credentials::Kerberos(KerberosCredentials::Ccache(bytes)) => {
                crate::auth::tickets::ccache_principal(bytes.expose()).unwrap_or_else(|| "Kerberos ccache".into())
            }
        }
    }

    /// Parses a mount.cifs credentials file (`username=`, `password=`, `domain=`).
    pub fn parse_file_contents(text: &str) -> Result<Credentials, String> {
        let (mut user, mut pass, mut domain) = (None, None, String::new());
        for line in text.lines() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err("a line without '=' (expected username=, password=, domain=)".into());
            };
            // mount.cifs keeps the password verbatim (it may contain spaces); trim only line endings.
            let v = v.trim_end_matches(['\r', '\n']);
            match k.trim().to_ascii_lowercase().as_str() {
                "username" | "user" => user = Some(v.trim().to_string()),
                "password" | "pass" => pass = Some(v.to_string()),
                "domain" | "dom" | "workgroup" => domain = v.trim().to_string(),
                other => return Err(format!("unknown key {other:?} (expected username=, password=, domain=)")),
            }
        }
        let user = user.filter(|u| !u.is_empty()).ok_or("no username= line")?;
        Ok(Credentials::user(&user, &domain, Secret::new(pass.unwrap_or_default())))
    }

    pub fn from_file(path: &Path) -> Result<Credentials> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::LocalIo { op: format!("reading credentials file {}", path.display()), source })?;
        Credentials::parse_file_contents(&text).map_err(|why| Error::LocalIo {
            op: format!("credentials file {}", path.display()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
        })
    }

    /// `SMB_USERNAME`, `SMB_PASSWORD`, `SMB_DOMAIN`; `None` without a user name.
    pub fn from_env() -> Option<Credentials> {
        let user = std::env::var("SMB_USERNAME").ok().filter(|u| !u.is_empty())?;
        let pass = std::env::var("SMB_PASSWORD").unwrap_or_default();
        let domain = std::env::var("SMB_DOMAIN").unwrap_or_default();
        Some(Credentials::user(&user, &domain, Secret::new(pass)))
    }
}

/// Whether to insist on encryption.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EncryptionPolicy {
    /// Refuse a server that cannot encrypt (the default).
    Required,
    /// Encrypt when the server can; otherwise sign.
    IfSupported,
    /// Sign only, unless the server or share demands encryption.
    Off,
}

impl std::str::FromStr for EncryptionPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "required" | "require" | "on" | "yes" | "true" => Ok(EncryptionPolicy::Required),
            "if-supported" | "if_supported" | "desired" | "auto" => Ok(EncryptionPolicy::IfSupported),
            "off" | "no" | "false" | "disabled" => Ok(EncryptionPolicy::Off),
            _ => Err(format!("invalid encryption policy {s:?} (expected required, if-supported or off)")),
        }
    }
}

/// Which authentication mechanism a logon may use: the cifs `sec=` option.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SecurityMechanism {
    /// `sec=` unset: Kerberos when the server offers it and the credentials
    /// allow (a Kerberos credential, or a user whose realm has KDCs in
    /// krb5.conf), else NTLMv2.
    #[default]
    Auto,
    /// `sec=krb5`: Kerberos or nothing.
    Kerberos,
    /// `sec=ntlmssp`: NTLMv2 or nothing.
    Ntlm,
}

impl std::str::FromStr for SecurityMechanism {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(SecurityMechanism::Auto),
            "krb5" | "krb5i" | "kerberos" => Ok(SecurityMechanism::Kerberos),
            "ntlmssp" | "ntlmsspi" | "ntlmv2" | "ntlmv2i" | "ntlm" | "ntlmi" => Ok(SecurityMechanism::Ntlm),
            other => Err(format!("sec={other} is not supported (expected krb5, krb5i, ntlmssp or ntlmv2)")),
        }
    }
}

/// Connection settings.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub encryption: EncryptionPolicy,
    /// `sec=`: which authentication mechanism to use.
    pub security: SecurityMechanism,
    /// The krb5.conf to read; `None`: `KRB5_CONFIG`, else `/etc/krb5.conf`.
    pub krb5_config: Option<PathBuf>,
    /// Where to connect instead of resolving the server name (cifs `ip=`/`addr=`);
    /// the name still makes the Kerberos service principal and the share path.
    pub connect_address: Option<String>,
    /// Re-authenticate a Kerberos session with a new ticket before its
    /// ticket ends (the default). Off, the session is re-authenticated only
    /// when the server answers STATUS_NETWORK_SESSION_EXPIRED.
    pub kerberos_renewal: bool,
    /// Ciphers offered for 3.1.1, in preference order.
    pub ciphers: Vec<CipherId>,
    pub min_dialect: Dialect,
    pub max_dialect: Dialect,
    /// Longest a request waits for its response or an interim STATUS_PENDING
    /// before the connection counts as lost (default 60 s).
    pub timeout: Duration,
    /// Deadline for TCP connect, NEGOTIATE and SESSION_SETUP together
    /// (default 30 s): a server that stalls or drips bytes during logon
    /// cannot hold a mount attempt longer.
    pub connect_timeout: Duration,
    /// Ceiling for a request the server keeps answering STATUS_PENDING
    /// (default 300 s); it then gets an SMB2 CANCEL and fails with a timeout.
    /// Blocking locks and change notifications are bounded by their caller instead.
    pub pending_timeout: Duration,
    /// `None`: NetBIOS framing on port 139, direct TCP elsewhere.
    pub framing: Option<Framing>,
    /// Where traffic and session events are reported (nowhere by default).
    pub observer: ObserverHandle,
    /// An idle connection sends ECHO this often and is declared lost when
    /// the reply does not come within the same time.
    pub echo_interval: Duration,
    /// What callers experience while a lost connection is being replaced.
    pub recovery: Recovery,
    /// Delays between reconnect attempts.
    pub backoff: Backoff,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            encryption: EncryptionPolicy::Required,
            security: SecurityMechanism::Auto,
            krb5_config: None,
            connect_address: None,
            kerberos_renewal: true,
            ciphers: vec![CipherId::Aes256Gcm, CipherId::Aes128Gcm, CipherId::Aes256Ccm, CipherId::Aes128Ccm],
            min_dialect: Dialect::Smb210,
            max_dialect: Dialect::Smb311,
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(30),
            pending_timeout: Duration::from_secs(300),
            framing: None,
            observer: ObserverHandle::default(),
            echo_interval: Duration::from_secs(20),
            recovery: Recovery::Hard,
            backoff: Backoff::default(),
        }
    }
}

/// What makes two [`ClientOptions`] give different sessions: every setting
/// but the observer. The session pool keys on it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SessionSettings {
    encryption: EncryptionPolicy,
    security: SecurityMechanism,
    krb5_config: Option<PathBuf>,
    connect_address: Option<String>,
    kerberos_renewal: bool,
    ciphers: Vec<CipherId>,
    min_dialect: Dialect,
    max_dialect: Dialect,
    timeout: Duration,
    connect_timeout: Duration,
    pending_timeout: Duration,
    framing: Option<Framing>,
    echo_interval: Duration,
    recovery: Recovery,
    backoff: Backoff,
}

impl ClientOptions {
    /// The per-request bounds a connection made with these options enforces.
    pub(crate) fn wait_limits(&self) -> crate::deadlines::WaitLimits {
        crate::deadlines::WaitLimits { request: self.timeout, pending_ceiling: self.pending_timeout.max(self.timeout) }
    }

    pub(crate) fn session_settings(&self) -> SessionSettings {
        let ClientOptions {
            encryption,
            security,
            krb5_config,
            connect_address,
            kerberos_renewal,
            ciphers,
            min_dialect,
            max_dialect,
            timeout,
            connect_timeout,
            pending_timeout,
            framing,
            observer: _,
            echo_interval,
            recovery,
            backoff,
        } = self;
        SessionSettings {
            encryption: *encryption,
            security: *security,
            krb5_config: krb5_config.clone(),
            connect_address: connect_address.clone(),
            kerberos_renewal: *kerberos_renewal,
            ciphers: ciphers.clone(),
            min_dialect: *min_dialect,
            max_dialect: *max_dialect,
            timeout: *timeout,
            connect_timeout: *connect_timeout,
            pending_timeout: *pending_timeout,
            framing: *framing,
            echo_interval: *echo_interval,
            recovery: *recovery,
            backoff: *backoff,
        }
    }
}

/// Parses a comma-separated cipher list such as `aes-256-gcm,aes-128-ccm`.
pub fn parse_cipher_list(s: &str) -> std::result::Result<Vec<CipherId>, String> {
    let list: Vec<CipherId> = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            CipherId::parse(p).ok_or_else(|| {
                format!("unknown cipher {p:?} (expected aes-128-ccm, aes-128-gcm, aes-256-ccm, aes-256-gcm)")
            })
        })
        .collect::<std::result::Result<_, _>>()?;
    if list.is_empty() {
        return Err("empty cipher list".into());
    }
    Ok(list)
}

/// Parses `2.1`, `3.0`, `3.02`, `3.0.2`, `3.1.1`, `3.11`, `SMB3_11`...
pub fn parse_dialect(s: &str) -> std::result::Result<Dialect, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.trim_start_matches("smb").trim_start_matches(['_', ' ']).replace('_', ".");
    match t.as_str() {
        "2.1" | "2.10" | "21" => Ok(Dialect::Smb210),
        "3" | "3.0" | "3.00" | "30" => Ok(Dialect::Smb300),
        "3.0.2" | "3.02" | "302" => Ok(Dialect::Smb302),
        "3.1.1" | "3.11" | "311" => Ok(Dialect::Smb311),
        _ => Err(format!("unknown dialect {s:?} (expected 2.1, 3.0, 3.0.2 or 3.1.1)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file_and_forms() {
        let c = Credentials::parse_file_contents("username=bob\npassword= p w=x \ndomain=CORP\n").unwrap();
        match &c {
            Credentials::User { user, domain, password } => {
                assert_eq!((user.as_str(), domain.as_str(), password.expose()), ("bob", "CORP", " p w=x "));
            }
            _ => panic!(),
        }
        assert_eq!(format!("{c:?}"), "CORP\\bob");
        assert!(Credentials::parse_file_contents("password=x\n").is_err());
        assert!(Credentials::parse_file_contents("username=a\nfoo=b\n").is_err());
        assert_eq!(Credentials::user("D\\u", "", Secret::default()).display_name(), "D\\u");
        assert_eq!(Credentials::user("u@d", "", Secret::default()).display_name(), "d\\u");
    }

    #[test]
    fn parses_policy_ciphers_dialects() {
        assert_eq!("if-supported".parse::<EncryptionPolicy>().unwrap(), EncryptionPolicy::IfSupported);
        assert!("maybe".parse::<EncryptionPolicy>().is_err());
        assert_eq!(
            parse_cipher_list("aes-128-ccm,AES-256-GCM").unwrap(),
            vec![CipherId::Aes128Ccm, CipherId::Aes256Gcm]
        );
        assert!(parse_cipher_list("des").is_err());
        assert_eq!(parse_dialect("SMB3_11").unwrap(), Dialect::Smb311);
        assert_eq!(parse_dialect("3.0.2").unwrap(), Dialect::Smb302);
        assert_eq!(parse_dialect("2.1").unwrap(), Dialect::Smb210);
        assert!(parse_dialect("1.0").is_err());
    }
}
