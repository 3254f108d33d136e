//! The public entry points: where to connect (`ShareTarget`), as whom
//! (`Credentials`), how (`ClientOptions`), and the connected `Client`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::conn::{Framing, Outgoing};
use super::error::{Error, Result};
use super::link::Link;
use super::session::SessionInfo;
use super::tree::Tree;
use super::wire::simple::EchoRequest;
use super::wire::{CipherId, Command, Dialect};
use super::Secret;
use crate::observer::ObserverHandle;
use crate::recovery::{Backoff, ConnectionState, CredentialsSource, Recovery};

/// Where a share lives: `//HOST[:PORT]/SHARE[/PATH]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareTarget {
    pub host: String,
    pub port: u16,
    pub share: String,
    /// Path inside the share, `/`-separated, no leading or trailing slash; empty for the root.
    pub path: String,
}

pub const DEFAULT_PORT: u16 = 445;
pub const NETBIOS_PORT: u16 = 139;

impl ShareTarget {
    /// Parses `//HOST[:PORT]/SHARE[/PATH]` (also `\\HOST\SHARE\PATH` and `smb://`).
    pub fn parse(s: &str) -> Result<ShareTarget> {
        let bad = |why: &str| Error::InvalidTarget { target: s.to_string(), why: why.to_string() };
        let norm = s.trim().replace('\\', "/");
        let rest = norm
            .strip_prefix("smb://")
            .or_else(|| norm.strip_prefix("//"))
            .ok_or_else(|| bad("expected //HOST[:PORT]/SHARE[/PATH]"))?;
        let (hostport, after) = rest.split_once('/').ok_or_else(|| bad("missing share name"))?;
        let (host, port) = split_host_port(hostport).ok_or_else(|| bad("invalid host or port"))?;
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let mut parts = after.split('/').filter(|p| !p.is_empty());
        let share = parts.next().ok_or_else(|| bad("missing share name"))?.to_string();
        let path: Vec<&str> = parts.collect();
        if path.contains(&"..") {
            return Err(bad("'..' is not allowed in the path"));
        }
        if path.iter().chain(std::iter::once(&share.as_str())).any(|p| p.chars().any(|c| c.is_control())) {
            return Err(bad("control characters are not allowed"));
        }
        Ok(ShareTarget { host, port: port.unwrap_or(DEFAULT_PORT), share, path: path.join("/") })
    }

    /// The target with `sub` appended to its path.
    pub fn join(&self, sub: &str) -> ShareTarget {
        let mut t = self.clone();
        t.path = join_path(&self.path, sub);
        t
    }
}

impl std::fmt::Display for ShareTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let port = (self.port != DEFAULT_PORT).then_some(self.port);
        write!(f, "//{}", HostPort(&self.host, port))?;
        write!(f, "/{}", self.share)?;
        if !self.path.is_empty() {
            write!(f, "/{}", self.path)?;
        }
        Ok(())
    }
}

/// Formats `host[:port]` the one way this crate (and its users) write it:
/// an IPv6 address in brackets, the port only when given.
/// `HostPort("::1", Some(445))` prints `[::1]:445`.
#[derive(Clone, Copy, Debug)]
pub struct HostPort<'a>(pub &'a str, pub Option<u16>);

impl std::fmt::Display for HostPort<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let HostPort(host, port) = *self;
        if host.contains(':') && !host.starts_with('[') {
            write!(f, "[{host}]")?;
        } else {
            f.write_str(host)?;
        }
        match port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(v6) = s.strip_prefix('[') {
        let (host, rest) = v6.split_once(']')?;
        let port = match rest.strip_prefix(':') {
            Some(p) => Some(p.parse().ok().filter(|p| *p != 0)?),
            None if rest.is_empty() => None,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), Some(p.parse().ok().filter(|p| *p != 0)?))),
        None => Some((s.to_string(), None)),
    }
}

/// Joins `/`-separated share paths, dropping empty components.
pub fn join_path(base: &str, sub: &str) -> String {
    base.split('/').chain(sub.split(['/', '\\'])).filter(|p| !p.is_empty() && *p != ".").collect::<Vec<_>>().join("/")
}

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

/// Connection settings.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub encryption: EncryptionPolicy,
    /// Ciphers offered for 3.1.1, in preference order.
    pub ciphers: Vec<CipherId>,
    pub min_dialect: Dialect,
    pub max_dialect: Dialect,
    /// Per-request timeout (a server's STATUS_PENDING extends it).
    pub timeout: Duration,
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
            ciphers: vec![CipherId::Aes256Gcm, CipherId::Aes128Gcm, CipherId::Aes256Ccm, CipherId::Aes128Ccm],
            min_dialect: Dialect::Smb210,
            max_dialect: Dialect::Smb311,
            timeout: Duration::from_secs(60),
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
    ciphers: Vec<CipherId>,
    min_dialect: Dialect,
    max_dialect: Dialect,
    timeout: Duration,
    framing: Option<Framing>,
    echo_interval: Duration,
    recovery: Recovery,
    backoff: Backoff,
}

impl ClientOptions {
    pub(crate) fn session_settings(&self) -> SessionSettings {
        let ClientOptions {
            encryption,
            ciphers,
            min_dialect,
            max_dialect,
            timeout,
            framing,
            observer: _,
            echo_interval,
            recovery,
            backoff,
        } = self;
        SessionSettings {
            encryption: *encryption,
            ciphers: ciphers.clone(),
            min_dialect: *min_dialect,
            max_dialect: *max_dialect,
            timeout: *timeout,
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

/// An authenticated SMB session. Cheap to clone; all clones share one
/// connection and session, and many requests can be in flight at once.
/// A lost connection is replaced behind it (see [`ClientOptions::recovery`]).
#[derive(Clone)]
pub struct Client {
    pub(crate) link: Arc<Link>,
}

impl Client {
    /// Connects, negotiates and authenticates.
    pub async fn connect(host: &str, port: u16, creds: &Credentials, opts: &ClientOptions) -> Result<Client> {
        Client::connect_with_source(host, port, Arc::new(creds.clone()), opts).await
    }

    /// As [`connect`](Self::connect), taking the credentials of every new
    /// session (the first and each reconnect) from `source`.
    pub async fn connect_with_source(
        host: &str,
        port: u16,
        source: Arc<dyn CredentialsSource>,
        opts: &ClientOptions,
    ) -> Result<Client> {
        Ok(Client { link: Link::connect(host, port, source, opts).await? })
    }

    /// Connects and opens the target's share in one step.
    pub async fn connect_share(
        target: &ShareTarget,
        creds: &Credentials,
        opts: &ClientOptions,
    ) -> Result<(Client, Tree)> {
        let client = Client::connect(&target.host, target.port, creds, opts).await?;
        let tree = client.tree(&target.share).await?;
        Ok((client, tree))
    }

    /// The first session's facts (a reconnect is never weaker than them).
    pub fn info(&self) -> &SessionInfo {
        &self.link.first
    }

    /// Traffic counters of the current connection.
    pub fn connection_stats(&self) -> super::conn::ConnectionStats {
        self.link.current().map(|(s, _)| s.conn.stats()).unwrap_or_default()
    }

    /// Whether the connection is up right now (false while reconnecting).
    pub fn is_alive(&self) -> bool {
        self.link.current().is_some_and(|(s, _)| s.conn.is_alive())
    }

    /// Whether the client can still be used: connected or reconnecting,
    /// not logged off or closed after tampering.
    pub fn is_usable(&self) -> bool {
        !matches!(self.link.state(), ConnectionState::Failed { .. })
    }

    /// Connected, reconnecting (why, since when) or failed for good.
    pub fn connection_state(&self) -> ConnectionState {
        self.link.state()
    }

    /// How many times the connection was re-established.
    pub fn reconnect_count(&self) -> u64 {
        self.link.reconnect_count()
    }

    /// Drops the current connection as if the network had failed (the
    /// client reconnects). For tests and for an operator's "reconnect now".
    pub fn force_reconnect(&self, why: &str) {
        if let Some((s, _)) = self.link.current() {
            s.conn.abort(why.to_string());
        }
    }

    /// TREE_CONNECT to `share` on this session's server.
    pub async fn tree(&self, share: &str) -> Result<Tree> {
        Tree::connect(self.link.clone(), share).await
    }

    /// ECHO: a cheap liveness check of the current connection and session.
    pub async fn echo(&self) -> Result<()> {
        let (session, _) = self
            .link
            .current()
            .ok_or_else(|| Error::Disconnected { addr: self.link.addr().to_string(), why: "reconnecting".into() })?;
        let out = Outgoing::new(Command::Echo, 0, 0, |m| EchoRequest.encode(m));
        session.request(out, false).await?.ok(|| "echo".into()).map(|_| ())
    }

    /// LOGOFF, and no more reconnects. The connection closes when the last clone is dropped.
    pub async fn logoff(&self) -> Result<()> {
        let current = self.link.current();
        self.link.close("logged off");
        match current {
            Some((session, _)) => session.logoff().await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = ShareTarget::parse("//srv:4450/share/a/b").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.share.as_str(), t.path.as_str()), ("srv", 4450, "share", "a/b"));
        assert_eq!(t.to_string(), "//srv:4450/share/a/b");
        let t = ShareTarget::parse(r"\\srv\share\x").unwrap();
        assert_eq!((t.port, t.path.as_str()), (445, "x"));
        let t = ShareTarget::parse("//[::1]:139/s").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 139));
        assert_eq!(t.to_string(), "//[::1]:139/s");
        for bad in
            ["", "srv/share", "//srv", "//srv/", "//:1/s", "//srv:0/s", "//srv:x/s", "//srv/s/../x", "//srv/s\u{1}"]
        {
            assert!(ShareTarget::parse(bad).is_err(), "{bad:?}");
        }
    }

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

    #[test]
    fn formats_host_and_port() {
        assert_eq!(HostPort("srv", Some(445)).to_string(), "srv:445");
        assert_eq!(HostPort("srv", None).to_string(), "srv");
        assert_eq!(HostPort("::1", Some(139)).to_string(), "[::1]:139");
        assert_eq!(HostPort("fe80::1", None).to_string(), "[fe80::1]");
        assert_eq!(HostPort("[::1]", Some(1)).to_string(), "[::1]:1");
    }

    #[test]
    fn joins_paths() {
        assert_eq!(join_path("a/b", "c\\d/"), "a/b/c/d");
        assert_eq!(join_path("", "/x/./y"), "x/y");
    }
}
