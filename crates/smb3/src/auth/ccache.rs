//! MIT Kerberos credential cache (ccache) file format, versions 3 and 4: a
//! pure codec, so a ticket cache handed over in a Secret (`krb5cc_<uid>`, a
//! base64 MIT ccache, as the incumbent driver's users have) or named by
//! `KRB5CCNAME=FILE:...` needs no libkrb5.
//!
//! Format (MIT "ccache file format", all integers big-endian):
//! `u16 version (0x0503|0x0504)`, v4 only: `u16 header length` + tagged
//! header fields, then the default principal, then credentials to EOF.
//! A principal is `u32 name type, u32 component count, data realm, data
//! components...` where `data` is `u32 length + bytes`. A credential is
//! client and server principals, keyblock (`u16 enctype`, v3 repeats it,
//! `data`), four `u32` times (auth, start, end, renew-till), `u8 is_skey`,
//! `u32 flags`, addresses and authdata (counted `u16 type + data` lists),
//! the ticket and the second ticket (`data` each). Entries whose server
//! realm is `X-CACHECONF:` are configuration, not tickets.
//!
//! Versions 1 and 2 (native byte order, last written by 1990s libraries)
//! are refused.

const VERSION_3: u16 = 0x0503;
const VERSION_4: u16 = 0x0504;
/// The realm MIT uses for cache configuration entries.
const CONFIG_REALM: &str = "X-CACHECONF:";
/// Bounds that keep a corrupt length from allocating gigabytes.
const MAX_DATA: u32 = 1 << 20;
const MAX_COUNT: u32 = 4096;

/// Why a ccache could not be read. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CcacheError {
    #[error("not an MIT credential cache: version 0x{0:04x} (only 0x0503 and 0x0504 are supported)")]
    UnsupportedVersion(u16),
    #[error("credential cache truncated while reading {0}")]
    Truncated(&'static str),
    #[error("credential cache {what} too large ({len})")]
    TooLarge { what: &'static str, len: u32 },
    #[error("credential cache {0} is not UTF-8")]
    NotUtf8(&'static str),
}

/// A Kerberos principal name with its realm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name_type: u32,
    pub realm: String,
    pub components: Vec<String>,
}

impl Principal {
    /// `a/b@REALM`, as klist prints it.
    pub fn display(&self) -> String {
        format!("{}@{}", self.components.join("/"), self.realm)
    }

    fn is_config(&self) -> bool {
        self.realm == CONFIG_REALM
    }
}

/// One cached ticket with its session key.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub client: Principal,
    pub server: Principal,
    /// The session key's encryption type (18 = aes256-cts-hmac-sha1-96).
    pub key_type: u16,
    /// The session key, raw bytes. Kept out of Debug.
    pub key: Vec<u8>,
    /// Seconds since the epoch.
    pub auth_time: u32,
    pub start_time: u32,
    pub end_time: u32,
    pub renew_till: u32,
    pub is_skey: bool,
    pub flags: u32,
    pub addresses: Vec<(u16, Vec<u8>)>,
    pub auth_data: Vec<(u16, Vec<u8>)>,
    /// The DER-encoded Ticket, as the KDC sent it.
    pub ticket: Vec<u8>,
    pub second_ticket: Vec<u8>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("client", &self.client.display())
            .field("server", &self.server.display())
            .field("key_type", &self.key_type)
            .field("end_time", &self.end_time)
            .finish_non_exhaustive()
    }
}

/// A whole credential cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ccache {
    pub version: u16,
    /// v4 header fields (tag, value), e.g. tag 1: the KDC time offset.
    pub header: Vec<(u16, Vec<u8>)>,
    pub default_principal: Principal,
    /// Tickets and configuration entries, in file order.
    pub credentials: Vec<Credential>,
}

impl Ccache {
    /// Decodes a whole ccache file.
    pub fn decode(bytes: &[u8]) -> Result<Ccache, CcacheError> {
        let mut r = Reader { bytes, pos: 0 };
        let version = r.u16("version")?;
        if version != VERSION_3 && version != VERSION_4 {
            return Err(CcacheError::UnsupportedVersion(version));
        }
        let mut header = Vec::new();
        if version == VERSION_4 {
            let len = r.u16("header length")? as usize;
            let mut h = Reader { bytes: r.take(len, "header")?, pos: 0 };
            while !h.at_end() {
                let tag = h.u16("header tag")?;
                let len = h.u16("header field length")? as usize;
                header.push((tag, h.take(len, "header field")?.to_vec()));
            }
        }
        let default_principal = r.principal()?;
        let mut credentials = Vec::new();
        while !r.at_end() {
            credentials.push(r.credential(version)?);
        }
        Ok(Ccache { version, header, default_principal, credentials })
    }

    /// Encodes in this cache's version; `decode(encode(c)) == c`.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::new();
        w.extend_from_slice(&self.version.to_be_bytes());
        if self.version == VERSION_4 {
            let mut h = Vec::new();
            for (tag, value) in &self.header {
                h.extend_from_slice(&tag.to_be_bytes());
                h.extend_from_slice(&(value.len() as u16).to_be_bytes());
                h.extend_from_slice(value);
            }
            w.extend_from_slice(&(h.len() as u16).to_be_bytes());
            w.extend_from_slice(&h);
        }
        put_principal(&mut w, &self.default_principal);
        for c in &self.credentials {
            put_principal(&mut w, &c.client);
            put_principal(&mut w, &c.server);
            w.extend_from_slice(&c.key_type.to_be_bytes());
            if self.version == VERSION_3 {
                w.extend_from_slice(&c.key_type.to_be_bytes());
            }
            put_data(&mut w, &c.key);
            for t in [c.auth_time, c.start_time, c.end_time, c.renew_till] {
                w.extend_from_slice(&t.to_be_bytes());
            }
            w.push(u8::from(c.is_skey));
            w.extend_from_slice(&c.flags.to_be_bytes());
            for list in [&c.addresses, &c.auth_data] {
                w.extend_from_slice(&(list.len() as u32).to_be_bytes());
                for (kind, data) in list {
                    w.extend_from_slice(&kind.to_be_bytes());
                    put_data(&mut w, data);
                }
            }
            put_data(&mut w, &c.ticket);
            put_data(&mut w, &c.second_ticket);
        }
        w
    }

    /// The tickets (configuration entries left out).
    pub fn tickets(&self) -> impl Iterator<Item = &Credential> {
        self.credentials.iter().filter(|c| !c.server.is_config())
    }

    /// The TGT for the default principal's realm
    /// (`krbtgt/REALM@REALM`), if the cache holds one.
    pub fn tgt(&self) -> Option<&Credential> {
        let realm = &self.default_principal.realm;
        self.tickets().find(|c| {
            c.server.realm == *realm
                && c.server.components.len() == 2
                && c.server.components[0] == "krbtgt"
                && c.server.components[1] == *realm
        })
    }

    /// A ticket for `service/host` (any realm), e.g. `cifs/dc1.example.com`,
    /// the latest-expiring one first.
    pub fn service_ticket(&self, service: &str, host: &str) -> Option<&Credential> {
        self.tickets()
            .filter(|c| {
                c.server.components.len() == 2
                    && c.server.components[0].eq_ignore_ascii_case(service)
                    && c.server.components[1].eq_ignore_ascii_case(host)
            })
            .max_by_key(|c| c.end_time)
    }
}

fn put_data(w: &mut Vec<u8>, data: &[u8]) {
    w.extend_from_slice(&(data.len() as u32).to_be_bytes());
    w.extend_from_slice(data);
}

fn put_principal(w: &mut Vec<u8>, p: &Principal) {
    w.extend_from_slice(&p.name_type.to_be_bytes());
    w.extend_from_slice(&(p.components.len() as u32).to_be_bytes());
    put_data(w, p.realm.as_bytes());
    for c in &p.components {
        put_data(w, c.as_bytes());
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], CcacheError> {
        let end = self.pos.checked_add(len).filter(|&e| e <= self.bytes.len()).ok_or(CcacheError::Truncated(what))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, CcacheError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, CcacheError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, CcacheError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn data(&mut self, what: &'static str) -> Result<Vec<u8>, CcacheError> {
        let len = self.u32(what)?;
        if len > MAX_DATA {
            return Err(CcacheError::TooLarge { what, len });
        }
        Ok(self.take(len as usize, what)?.to_vec())
    }

    fn string(&mut self, what: &'static str) -> Result<String, CcacheError> {
        String::from_utf8(self.data(what)?).map_err(|_| CcacheError::NotUtf8(what))
    }

    fn count(&mut self, what: &'static str) -> Result<u32, CcacheError> {
        let n = self.u32(what)?;
        if n > MAX_COUNT {
            return Err(CcacheError::TooLarge { what, len: n });
        }
        Ok(n)
    }

    fn principal(&mut self) -> Result<Principal, CcacheError> {
        let name_type = self.u32("principal name type")?;
        let n = self.count("principal components")?;
        let realm = self.string("principal realm")?;
        let components = (0..n).map(|_| self.string("principal component")).collect::<Result<_, _>>()?;
        Ok(Principal { name_type, realm, components })
    }

    fn typed_list(&mut self, what: &'static str) -> Result<Vec<(u16, Vec<u8>)>, CcacheError> {
        let n = self.count(what)?;
        (0..n).map(|_| Ok((self.u16(what)?, self.data(what)?))).collect()
    }

    fn credential(&mut self, version: u16) -> Result<Credential, CcacheError> {
        let client = self.principal()?;
        let server = self.principal()?;
        let key_type = self.u16("key type")?;
        if version == VERSION_3 {
            self.u16("key type (repeated)")?;
        }
        let key = self.data("session key")?;
        let auth_time = self.u32("auth time")?;
        let start_time = self.u32("start time")?;
        let end_time = self.u32("end time")?;
        let renew_till = self.u32("renew-till time")?;
        let is_skey = self.u8("is_skey")? != 0;
        let flags = self.u32("ticket flags")?;
        let addresses = self.typed_list("addresses")?;
        let auth_data = self.typed_list("authdata")?;
        let ticket = self.data("ticket")?;
        let second_ticket = self.data("second ticket")?;
        Ok(Credential {
            client,
            server,
            key_type,
            key,
            auth_time,
            start_time,
            end_time,
            renew_till,
            is_skey,
            flags,
            addresses,
            auth_data,
            ticket,
            second_ticket,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(realm: &str, parts: &[&str]) -> Principal {
        Principal { name_type: 1, realm: realm.into(), components: parts.iter().map(|s| s.to_string()).collect() }
    }

    fn credential(server: Principal, end_time: u32) -> Credential {
        Credential {
            client: principal("EXAMPLE.COM", &["alice"]),
            server,
            key_type: 18,
            key: vec![0x11; 32],
            auth_time: 1_700_000_000,
            start_time: 1_700_000_000,
            end_time,
            renew_till: end_time + 86_400,
            is_skey: false,
            flags: 0x50e1_0000,
            addresses: vec![],
            auth_data: vec![(1, vec![1, 2, 3])],
            ticket: vec![0x61, 0x03, 0x02, 0x01, 0x05],
            second_ticket: vec![],
        }
    }

    fn sample(version: u16) -> Ccache {
        Ccache {
            version,
            header: if version == VERSION_4 { vec![(1, vec![0, 0, 0, 5, 0, 0, 0, 0])] } else { vec![] },
            default_principal: principal("EXAMPLE.COM", &["alice"]),
            credentials: vec![
                credential(principal(CONFIG_REALM, &["krb5_ccache_conf_data", "fast_avail"]), 0),
                credential(principal("EXAMPLE.COM", &["krbtgt", "EXAMPLE.COM"]), 1_700_036_000),
                credential(principal("EXAMPLE.COM", &["cifs", "fs1.example.com"]), 1_700_030_000),
                credential(principal("EXAMPLE.COM", &["cifs", "fs1.example.com"]), 1_700_036_000),
            ],
        }
    }

    #[test]
    fn round_trips_v4_and_v3() {
        for version in [VERSION_4, VERSION_3] {
            let cache = sample(version);
            let bytes = cache.encode();
            assert_eq!(&bytes[..2], &version.to_be_bytes());
            assert_eq!(Ccache::decode(&bytes).unwrap(), cache);
        }
    }

    #[test]
    fn v4_layout_matches_the_mit_format() {
        let cache = Ccache {
            version: VERSION_4,
            header: vec![(1, vec![0; 8])],
            default_principal: principal("R", &["u"]),
            credentials: vec![],
        };
        let expected: Vec<u8> = [
            &[0x05, 0x04][..],
            &[0x00, 0x0c, 0x00, 0x01, 0x00, 0x08, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, b'R', 0, 0, 0, 1, b'u'],
        ]
        .concat();
        assert_eq!(cache.encode(), expected);
    }

    #[test]
    fn finds_the_tgt_and_the_latest_service_ticket_but_not_config_entries() {
        let cache = sample(VERSION_4);
        assert_eq!(cache.tickets().count(), 3);
        assert_eq!(cache.tgt().unwrap().server.display(), "krbtgt/EXAMPLE.COM@EXAMPLE.COM");
        let cifs = cache.service_ticket("CIFS", "FS1.example.com").unwrap();
        assert_eq!(cifs.end_time, 1_700_036_000);
        assert!(cache.service_ticket("cifs", "other.example.com").is_none());
    }

    #[test]
    fn refuses_other_versions_truncation_and_huge_lengths() {
        assert_eq!(Ccache::decode(&[0x05, 0x02, 0, 0]), Err(CcacheError::UnsupportedVersion(0x0502)));
        assert_eq!(Ccache::decode(&[]), Err(CcacheError::Truncated("version")));
        let bytes = sample(VERSION_4).encode();
        for cut in [3, 20, bytes.len() - 1] {
            assert!(matches!(Ccache::decode(&bytes[..cut]), Err(CcacheError::Truncated(_))), "cut at {cut}");
        }
        let mut huge = vec![0x05, 0x04, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(Ccache::decode(&huge), Err(CcacheError::TooLarge { what: "principal realm", len: u32::MAX }));
    }

    #[test]
    fn debug_never_shows_the_session_key() {
        let shown = format!("{:?}", sample(VERSION_4));
        assert!(!shown.contains("17, 17"), "{shown}");
        assert!(shown.contains("cifs/fs1.example.com@EXAMPLE.COM"));
    }
}
