//! The part of MIT's krb5.conf a Kerberos client needs: the default realm,
//! each realm's KDCs, and the asked-for ticket lifetime. Read from the file
//! `KRB5_CONFIG` names (first of a colon-separated list that exists), else
//! `/etc/krb5.conf`, as MIT and Heimdal do; a missing file is an empty
//! configuration. A realm without listed KDCs is reached at its own DNS
//! name (an Active Directory domain's name resolves to its DCs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::kdc::{KdcConfig, KerberosError, DEFAULT_TICKET_LIFETIME};

const KDC_PORT: u16 = 88;

/// What krb5.conf says, parsed leniently (unknown sections and keys ignored).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Krb5Conf {
    pub default_realm: Option<String>,
    /// Realm (upper case as written) to its `kdc = host[:port]` entries.
    pub kdcs: HashMap<String, Vec<String>>,
    /// `[libdefaults] ticket_lifetime`.
    pub ticket_lifetime: Option<Duration>,
}

impl Krb5Conf {
    /// Parses the profile format: `[section]`, `key = value`, and
    /// `REALM = { kdc = ... }` blocks.
    pub fn parse(text: &str) -> Krb5Conf {
        let mut conf = Krb5Conf::default();
        let mut section = String::new();
        let mut realm: Option<String> = None;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.trim().to_ascii_lowercase();
                realm = None;
                continue;
            }
            if line == "}" {
                realm = None;
                continue;
            }
            let Some((key, value)) = line.split_once('=') else { continue };
            let (key, value) = (key.trim(), value.trim());
            match (section.as_str(), &realm) {
                ("realms", None) if value == "{" => realm = Some(key.to_string()),
                ("realms", Some(r)) if key.eq_ignore_ascii_case("kdc") => {
                    conf.kdcs.entry(r.clone()).or_default().push(value.to_string())
                }
                ("libdefaults", _) if key == "default_realm" => conf.default_realm = Some(value.to_string()),
                ("libdefaults", _) if key == "ticket_lifetime" => conf.ticket_lifetime = parse_duration(value),
                _ => {}
            }
        }
        conf
    }

    /// The configuration at `path`, else the one `KRB5_CONFIG` names, else `/etc/krb5.conf`.
    pub fn load(path: Option<&Path>) -> Result<Krb5Conf, KerberosError> {
        let candidates: Vec<PathBuf> = match path {
            Some(p) => vec![p.to_path_buf()],
            None => match std::env::var("KRB5_CONFIG") {
                Ok(list) if !list.is_empty() => list.split(':').map(PathBuf::from).collect(),
                _ => vec![PathBuf::from("/etc/krb5.conf")],
            },
        };
        for candidate in candidates {
            match std::fs::read_to_string(&candidate) {
                Ok(text) => return Ok(Krb5Conf::parse(&text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(KerberosError::Config(format!("reading {}: {e}", candidate.display()))),
            }
        }
        Ok(Krb5Conf::default())
    }

    /// Whether the configuration names KDCs for `realm` (an explicit choice of Kerberos).
    pub fn has_kdcs(&self, realm: &str) -> bool {
        self.realm_kdcs(realm).is_some_and(|k| !k.is_empty())
    }

    fn realm_kdcs(&self, realm: &str) -> Option<&Vec<String>> {
        self.kdcs.iter().find(|(r, _)| r.eq_ignore_ascii_case(realm)).map(|(_, k)| k)
    }

    /// The realm of a user given with `domain`: a DNS-style domain is the
    /// realm itself (upper-cased); an empty or NetBIOS domain means the
    /// default realm when that realm's first label is the domain.
    pub fn realm_for(&self, domain: &str) -> Option<String> {
        if domain.contains('.') {
            return Some(domain.to_ascii_uppercase());
        }
        let default = self.default_realm.as_ref()?;
        let first_label = default.split('.').next().unwrap_or_default();
        (domain.is_empty() || first_label.eq_ignore_ascii_case(domain)).then(|| default.to_ascii_uppercase())
    }

    /// Where `realm`'s KDCs are: the listed ones, else the realm's DNS name, resolved now.
    pub async fn kdc_config(&self, realm: &str, timeout: Duration) -> Result<KdcConfig, KerberosError> {
        let names = match self.realm_kdcs(realm) {
            Some(k) if !k.is_empty() => k.clone(),
            _ => vec![realm.to_ascii_lowercase()],
        };
        let mut kdcs = Vec::new();
        let mut last_error = None;
        for name in &names {
            let target = with_port(name);
            let resolved = tokio::net::lookup_host(target.as_str()).await.map(|a| a.collect::<Vec<_>>());
            match resolved {
                Ok(addrs) => kdcs.extend(addrs),
                Err(e) => last_error = Some((target, e)),
            }
        }
        if kdcs.is_empty() {
            let (kdc, source) =
                last_error.unwrap_or_else(|| (realm.to_string(), std::io::Error::other("no KDC address")));
            return Err(KerberosError::KdcUnreachable { kdc, source });
        }
        Ok(KdcConfig {
            realm: realm.to_string(),
            kdcs,
            timeout,
            ticket_lifetime: self.ticket_lifetime.unwrap_or(DEFAULT_TICKET_LIFETIME),
        })
    }
}

/// `host`, `host:port`, `[v6]:port`, or a `tcp/` prefixed entry: with the KDC port when none is given.
fn with_port(entry: &str) -> String {
    let entry = entry.trim_start_matches("tcp/").trim_start_matches("udp/");
    let has_port = match entry.rsplit_once(':') {
        Some((host, port)) => port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']')),
        None => false,
    };
    if has_port {
        entry.to_string()
    } else if entry.contains(':') && !entry.starts_with('[') {
        format!("[{entry}]:{KDC_PORT}")
    } else {
        format!("{entry}:{KDC_PORT}")
    }
}

/// krb5.conf durations: plain seconds, `h:m[:s]`, or `NdNhNmNs` parts (`10h`, `1h30m`, `90s`).
pub fn parse_duration(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if v.contains(':') {
        let parts: Vec<u64> = v.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
        return match parts.as_slice() {
            [h, m] => Some(Duration::from_secs(h * 3600 + m * 60)),
            [h, m, s] => Some(Duration::from_secs(h * 3600 + m * 60 + s)),
            _ => None,
        };
    }
    let (mut total, mut number) = (0u64, String::new());
    for c in v.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86_400,
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total = total.checked_add(number.parse::<u64>().ok()?.checked_mul(unit)?)?;
        number.clear();
    }
    number.is_empty().then_some(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = "\
[libdefaults]
    default_realm = SMB3TEST.TEST
    dns_lookup_kdc = false
    ticket_lifetime = 1h30m
# a comment
[realms]
    SMB3TEST.TEST = {
        kdc = 127.0.0.20:88
        kdc = kdc2.smb3test.test
        admin_server = 127.0.0.20
    }
    OTHER.ORG = {
        kdc = [::1]:750
    }
[domain_realm]
    .smb3test.test = SMB3TEST.TEST
";

    #[test]
    fn parses_realms_kdcs_and_lifetime() {
        let c = Krb5Conf::parse(CONF);
        assert_eq!(c.default_realm.as_deref(), Some("SMB3TEST.TEST"));
        assert_eq!(c.kdcs["SMB3TEST.TEST"], vec!["127.0.0.20:88".to_string(), "kdc2.smb3test.test".into()]);
        assert_eq!(c.kdcs["OTHER.ORG"], vec!["[::1]:750".to_string()]);
        assert_eq!(c.ticket_lifetime, Some(Duration::from_secs(5400)));
        assert!(c.has_kdcs("smb3test.test") && !c.has_kdcs("NOPE.TEST"));
        assert_eq!(Krb5Conf::parse(""), Krb5Conf::default());
        assert_eq!(Krb5Conf::parse("[realms]\nX = {\nkdc\n}\n=\n[").kdcs.len(), 0, "garbage is ignored");
    }

    #[test]
    fn realm_of_a_domain() {
        let c = Krb5Conf::parse(CONF);
        assert_eq!(c.realm_for("corp.example").as_deref(), Some("CORP.EXAMPLE"));
        assert_eq!(c.realm_for("").as_deref(), Some("SMB3TEST.TEST"));
        assert_eq!(c.realm_for("smb3test").as_deref(), Some("SMB3TEST.TEST"));
        assert_eq!(c.realm_for("WORKGROUP"), None);
        assert_eq!(Krb5Conf::default().realm_for(""), None);
    }

    #[test]
    fn durations_and_ports() {
        assert_eq!(parse_duration("36000"), Some(Duration::from_secs(36000)));
        assert_eq!(parse_duration("10h"), Some(Duration::from_secs(36000)));
        assert_eq!(parse_duration("1d2h3m4s"), Some(Duration::from_secs(93784)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1:30"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("ten hours"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(with_port("kdc1"), "kdc1:88");
        assert_eq!(with_port("kdc1:750"), "kdc1:750");
        assert_eq!(with_port("tcp/kdc1"), "kdc1:88");
        assert_eq!(with_port("::1"), "[::1]:88");
        assert_eq!(with_port("[::1]:750"), "[::1]:750");
    }

    #[tokio::test]
    async fn listed_kdcs_resolve() {
        let c = Krb5Conf::parse(CONF);
        let config = c.kdc_config("OTHER.ORG", Duration::from_secs(1)).await.unwrap();
        assert_eq!(config.kdcs, vec!["[::1]:750".parse().unwrap()]);
        assert_eq!(config.ticket_lifetime, Duration::from_secs(5400));
    }
}
