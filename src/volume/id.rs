//! The CSI volume handle of a provisioned volume.
//!
//! # Format (version 1)
//!
//! ```text
//! v1|<server>|<port>|<share>|<base path>|<subdir>|<onDelete>[|<encryption>[|<address>]]
//! v1|files.example.com||team|k8s|shop/web-data|retain
//! v1|files.example.com||team|k8s|lab/scratch|delete|off
//! v1|dc1.corp.example||team|k8s|pvc-1|delete||10.0.0.5
//! ```
//!
//! Seven `|`-separated fields, eight when the StorageClass set the
//! `encryption` parameter, nine when its `mountOptions` gave `ip=`/`addr=`
//! (the `<address>` the server is reached at under its name, which
//! DeleteVolume needs and its request does not carry; `<encryption>` is then
//! empty if the parameter was not set). `<port>` is empty for 445. `<base path>`
//! (from the StorageClass `source`) and `<subdir>` are `/`-joined relative
//! paths, possibly empty; the volume's directory is `<base path>/<subdir>`,
//! and `archive` renames `<subdir>` to `archived-<subdir>` under the base
//! path. `<onDelete>` is `delete`, `retain`, `archive` or empty (not
//! recorded: the controller's default applies). `<encryption>` is
//! `required`, `if-supported` or `off`; when absent (every id from a
//! StorageClass without the parameter, and every id written before the
//! field existed) the process's default policy applies. The field is written
//! empty only before an `<address>`, and `<address>` is an IP address in its
//! canonical spelling, so each volume still has exactly one spelling. In every field `%` and `|`
//! are written `%25` and `%7C`; other characters, including non-ASCII, are
//! kept as UTF-8. Decoding validates each field with the same rules as the
//! StorageClass (`ShareUrl`, `SharePath`), so a forged handle cannot name a
//! path outside its share. The whole handle is at most 128 bytes (CSI
//! "Size Limits"): encoding a longer one is an error, never a truncation.
//!
//! # csi-driver-smb handles
//!
//! [`VolumeId::parse`] also reads the incumbent driver's handles so
//! volumes it provisioned can be adopted:
//! `server/share[/base]#subdir[#uuid[#onDelete]]`, e.g.
//! `smb-server.default.svc.cluster.local/share#pvc-4729#pvc-4729#retain`.
//! The uuid (the PV name) only made that driver's ids unique and is not
//! kept; re-encoding yields a v1 handle. They record no encryption policy.

use std::fmt;
use std::net::IpAddr;

use super::params::{encryption_name, parse_encryption, OnDelete};
use super::path::{PathError, SharePath};
use super::share_url::{parse_port, ShareUrl, ShareUrlError, DEFAULT_SMB_PORT};
use smb3::EncryptionPolicy;

/// CSI's general string limit, which applies to volume ids.
pub const MAX_VOLUME_ID_LEN: usize = 128;

const VERSION: &str = "v1";
const SEPARATOR: char = '|';
/// Without and with the optional `<encryption>` field, and with `<address>` too.
const V1_FIELDS: usize = 7;
const V1_FIELDS_WITH_ENCRYPTION: usize = 8;
const V1_FIELDS_WITH_ADDRESS: usize = 9;
const LEGACY_SEPARATOR: char = '#';

/// Why a volume id could not be encoded or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeIdError {
    #[error("volume id is empty")]
    Empty,
    #[error(
        "volume id would be {len} bytes, over the CSI limit of {MAX_VOLUME_ID_LEN}; \
         use a shorter server, share, base path or subDir"
    )]
    TooLong { len: usize },
    #[error("volume id {id:?} has version {version:?}; this driver reads v1 and csi-driver-smb handles")]
    UnsupportedVersion { id: String, version: String },
    #[error(
        "volume id {id:?} has {found} fields, v1 has {V1_FIELDS}, {V1_FIELDS_WITH_ENCRYPTION} or {V1_FIELDS_WITH_ADDRESS}"
    )]
    FieldCount { id: String, found: usize },
    #[error("volume id {id:?}: bad percent escape in the {field} field")]
    BadEscape { id: String, field: &'static str },
    #[error("volume id {id:?}: bad port {port:?}")]
    BadPort { id: String, port: String },
    #[error("volume id {id:?}: {error}")]
    BadShare {
        id: String,
        #[source]
        error: ShareUrlError,
    },
    #[error("volume id {id:?}: bad {field}: {error}")]
    BadPath {
        id: String,
        field: &'static str,
        #[source]
        error: PathError,
    },
    #[error("volume id {id:?}: onDelete {value:?} is not one of delete, retain, archive")]
    BadOnDelete { id: String, value: String },
    #[error("volume id {id:?}: encryption {value:?} is not one of required, if-supported, off")]
    BadEncryption { id: String, value: String },
    #[error("volume id {id:?}: address {value:?} is not an IP address")]
    BadAddress { id: String, value: String },
    #[error("volume id {id:?} is neither a v1 handle nor a csi-driver-smb handle (server/share#subdir)")]
    Unrecognised { id: String },
}

/// A provisioned volume: a directory `sub_dir` under the share's base path.
///
/// ```
/// use smb3::EncryptionPolicy;
/// use smb3_csi::volume::{OnDelete, SharePath, ShareUrl, VolumeId};
/// let id = VolumeId {
///     share: ShareUrl::parse("//files.example.com/team/k8s").unwrap(),
///     sub_dir: SharePath::parse("shop/web-data").unwrap(),
///     on_delete: Some(OnDelete::Retain),
///     encryption: None,
///     address: None,
/// };
/// let handle = id.encode().unwrap();
/// assert_eq!(handle, "v1|files.example.com||team|k8s|shop/web-data|retain");
/// assert_eq!(VolumeId::parse(&handle).unwrap(), id);
///
/// let relaxed = VolumeId { encryption: Some(EncryptionPolicy::Off), ..id };
/// assert_eq!(relaxed.encode().unwrap(), "v1|files.example.com||team|k8s|shop/web-data|retain|off");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeId {
    pub share: ShareUrl,
    pub sub_dir: SharePath,
    /// `None` when the handle did not record it (some csi-driver-smb handles).
    pub on_delete: Option<OnDelete>,
    /// The StorageClass's `encryption`; `None`: not recorded (the process's default applies).
    pub encryption: Option<EncryptionPolicy>,
    /// The StorageClass's `ip=`/`addr=` mount option: the server is reached there under its name (which
    /// names the Kerberos principal); `None`: the name is resolved.
    pub address: Option<IpAddr>,
}

// By hand: `EncryptionPolicy` (in `smb3`) does not implement `Hash`.
impl std::hash::Hash for VolumeId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.share.hash(state);
        self.sub_dir.hash(state);
        self.on_delete.hash(state);
        self.encryption.map(encryption_name).hash(state);
        self.address.hash(state);
    }
}

impl VolumeId {
    /// The v1 handle; fails if it would exceed 128 bytes.
    pub fn encode(&self) -> Result<String, VolumeIdError> {
        let port = match self.share.port() {
            DEFAULT_SMB_PORT => String::new(),
            port => port.to_string(),
        };
        let fields = [
            escape(self.share.server()),
            port,
            escape(self.share.share()),
            escape(&self.share.base_path().to_string()),
            escape(&self.sub_dir.to_string()),
            self.on_delete.map(OnDelete::as_str).unwrap_or_default().to_string(),
        ];
        let mut id = String::from(VERSION);
        for field in &fields {
            id.push(SEPARATOR);
            id.push_str(field);
        }
        if self.encryption.is_some() || self.address.is_some() {
            id.push(SEPARATOR);
            id.push_str(self.encryption.map(encryption_name).unwrap_or_default());
        }
        if let Some(address) = self.address {
            id.push(SEPARATOR);
            id.push_str(&address.to_string());
        }
        if id.len() > MAX_VOLUME_ID_LEN {
            return Err(VolumeIdError::TooLong { len: id.len() });
        }
        Ok(id)
    }

    /// Reads a v1 handle or a csi-driver-smb handle.
    pub fn parse(id: &str) -> Result<Self, VolumeIdError> {
        if id.is_empty() {
            return Err(VolumeIdError::Empty);
        }
        // Bounds all work below; no valid handle is longer.
        if id.len() > MAX_VOLUME_ID_LEN {
            return Err(VolumeIdError::TooLong { len: id.len() });
        }
        if id.contains(SEPARATOR) {
            Self::parse_v1(id)
        } else if id.contains(LEGACY_SEPARATOR) {
            Self::parse_csi_driver_smb(id)
        } else {
            Err(VolumeIdError::Unrecognised { id: id.to_string() })
        }
    }

    /// The volume's directory relative to the share root.
    pub fn path_in_share(&self) -> SharePath {
        self.share.base_path().join(&self.sub_dir)
    }

    fn parse_v1(id: &str) -> Result<Self, VolumeIdError> {
        let fields: Vec<&str> = id.split(SEPARATOR).collect();
        if fields[0] != VERSION {
            return Err(VolumeIdError::UnsupportedVersion { id: id.to_string(), version: fields[0].to_string() });
        }
        let (server, port, share, base, sub_dir, on_delete, encryption, address) = match fields[..] {
            [_, server, port, share, base, sub_dir, on_delete] => {
                (server, port, share, base, sub_dir, on_delete, None, None)
            }
            [_, server, port, share, base, sub_dir, on_delete, encryption] => {
                (server, port, share, base, sub_dir, on_delete, Some(encryption), None)
            }
            [_, server, port, share, base, sub_dir, on_delete, encryption, address] => (
                server,
                port,
                share,
                base,
                sub_dir,
                on_delete,
                Some(encryption).filter(|e| !e.is_empty()),
                Some(address),
            ),
            _ => return Err(VolumeIdError::FieldCount { id: id.to_string(), found: fields.len() }),
        };
        let server = unescape(id, server, "server")?;
        let share = unescape(id, share, "share")?;
        let base = unescape(id, base, "base path")?;
        let sub_dir = unescape(id, sub_dir, "subdir")?;
        let port = match port {
            "" => DEFAULT_SMB_PORT,
            // 445 is written as the empty field, so "445" is not canonical.
            p => parse_port(p)
                .filter(|&n| n != DEFAULT_SMB_PORT)
                .ok_or_else(|| VolumeIdError::BadPort { id: id.to_string(), port: p.to_string() })?,
        };
        let path = |field, value: &str| {
            SharePath::parse_or_root(value).map_err(|error| VolumeIdError::BadPath { id: id.to_string(), field, error })
        };
        let base = path("base path", &base)?;
        let sub_dir = path("subdir", &sub_dir)?;
        let share = ShareUrl::from_parts(&server, port, &share, base)
            .map_err(|error| VolumeIdError::BadShare { id: id.to_string(), error })?;
        let on_delete = parse_on_delete(id, on_delete)?;
        // Lower case only: `Off` would alias `off` (the canonical check below would refuse it anyway).
        let encryption = match encryption {
            None => None,
            Some(value) => Some(
                parse_encryption(value)
                    .filter(|policy| encryption_name(*policy) == value)
                    .ok_or_else(|| VolumeIdError::BadEncryption { id: id.to_string(), value: value.to_string() })?,
            ),
        };
        let address = match address {
            None => None,
            Some(value) => Some(
                value
                    .parse::<IpAddr>()
                    .map_err(|_| VolumeIdError::BadAddress { id: id.to_string(), value: value.to_string() })?,
            ),
        };
        let parsed = VolumeId { share, sub_dir, on_delete, encryption, address };
        // One spelling per volume: `a/` or `%7C`-free `%41` would otherwise
        // alias the canonical handle.
        if parsed.encode().as_deref() != Ok(id) {
            return Err(VolumeIdError::Unrecognised { id: id.to_string() });
        }
        Ok(parsed)
    }

    fn parse_csi_driver_smb(id: &str) -> Result<Self, VolumeIdError> {
        let segments: Vec<&str> = id.split(LEGACY_SEPARATOR).collect();
        if segments.len() > 4 {
            return Err(VolumeIdError::Unrecognised { id: id.to_string() });
        }
        let source = segments[0].trim_start_matches('/');
        let share = ShareUrl::parse(&format!("//{source}"))
            .map_err(|error| VolumeIdError::BadShare { id: id.to_string(), error })?;
        let sub_dir = SharePath::parse_or_root(segments[1].trim_matches('/'))
            .map_err(|error| VolumeIdError::BadPath { id: id.to_string(), field: "subdir", error })?;
        let on_delete = parse_on_delete(id, segments.get(3).copied().unwrap_or(""))?;
        Ok(VolumeId { share, sub_dir, on_delete, encryption: None, address: None })
    }
}

impl fmt::Display for VolumeId {
    /// The v1 handle, or a description if it is too long to be one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.encode() {
            Ok(id) => f.write_str(&id),
            Err(_) => write!(f, "{}/{} (id too long)", self.share, self.sub_dir),
        }
    }
}

fn parse_on_delete(id: &str, value: &str) -> Result<Option<OnDelete>, VolumeIdError> {
    if value.is_empty() {
        return Ok(None);
    }
    OnDelete::parse(value)
        .map(Some)
        .ok_or_else(|| VolumeIdError::BadOnDelete { id: id.to_string(), value: value.to_string() })
}

fn escape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    for c in field.chars() {
        match c {
            '%' => out.push_str("%25"),
            '|' => out.push_str("%7C"),
            _ => out.push(c),
        }
    }
    out
}

fn unescape(id: &str, field: &str, name: &'static str) -> Result<String, VolumeIdError> {
    let bad = || VolumeIdError::BadEscape { id: id.to_string(), field: name };
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        match rest.get(at + 1..at + 3) {
            Some("25") => out.push('%'),
            Some("7C") => out.push('|'),
            _ => return Err(bad()),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(share: &str, sub_dir: &str, on_delete: Option<OnDelete>) -> VolumeId {
        VolumeId {
            share: ShareUrl::parse(share).unwrap(),
            sub_dir: SharePath::parse_or_root(sub_dir).unwrap(),
            on_delete,
            encryption: None,
            address: None,
        }
    }

    fn with_encryption(v: VolumeId, policy: EncryptionPolicy) -> VolumeId {
        VolumeId { encryption: Some(policy), ..v }
    }

    fn round_trip(v: &VolumeId) -> String {
        let encoded = v.encode().unwrap_or_else(|e| panic!("{v:?}: {e}"));
        assert!(encoded.len() <= MAX_VOLUME_ID_LEN);
        assert_eq!(&VolumeId::parse(&encoded).unwrap(), v, "{encoded}");
        encoded
    }

    #[test]
    fn v1_round_trips() {
        let cases = [
            (volume("//srv/share", "pvc-1", Some(OnDelete::Delete)), "v1|srv||share||pvc-1|delete"),
            (
                volume("//srv:1445/share/base/dir", "a/b", Some(OnDelete::Archive)),
                "v1|srv|1445|share|base/dir|a/b|archive",
            ),
            (volume("//[fd00::1]/s", "x", None), "v1|fd00::1||s||x|"),
            (volume("//srv/share", "", Some(OnDelete::Retain)), "v1|srv||share|||retain"),
            (volume("//srv/pct%share", "100%/x", None), "v1|srv||pct%25share||100%25/x|"),
        ];
        for (v, expected) in cases {
            assert_eq!(round_trip(&v), expected);
        }
    }

    #[test]
    fn encryption_field_round_trips() {
        let base = volume("//srv:1445/share/base", "a/b", Some(OnDelete::Archive));
        let cases = [
            (EncryptionPolicy::Off, "v1|srv|1445|share|base|a/b|archive|off"),
            (EncryptionPolicy::IfSupported, "v1|srv|1445|share|base|a/b|archive|if-supported"),
            // An explicit `required` is recorded: it must hold even where the process default is relaxed.
            (EncryptionPolicy::Required, "v1|srv|1445|share|base|a/b|archive|required"),
        ];
        for (policy, expected) in cases {
            assert_eq!(round_trip(&with_encryption(base.clone(), policy)), expected);
        }
        // Without a policy the id keeps its seven fields, so ids written before the field existed still match.
        assert_eq!(round_trip(&base), "v1|srv|1445|share|base|a/b|archive");
        assert_eq!(VolumeId::parse("v1|srv||share||x|").unwrap().encryption, None);
        // Equal volumes hash equally; the policy is part of the identity.
        use std::collections::HashSet;
        let set: HashSet<VolumeId> = [
            base.clone(),
            base.clone(),
            with_encryption(base.clone(), EncryptionPolicy::Off),
            with_encryption(base.clone(), EncryptionPolicy::Off),
            with_encryption(base.clone(), EncryptionPolicy::Required),
        ]
        .into();
        assert_eq!(set.len(), 3);
        // Incumbent handles record none.
        assert_eq!(VolumeId::parse("srv/share#sub#uuid#retain").unwrap().encryption, None);
    }

    #[test]
    fn address_field_round_trips() {
        let base = volume("//dc1.corp.example/share/base", "pvc-1", Some(OnDelete::Delete));
        let at = |address: &str| VolumeId { address: Some(address.parse().unwrap()), ..base.clone() };
        assert_eq!(round_trip(&at("10.0.0.5")), "v1|dc1.corp.example||share|base|pvc-1|delete||10.0.0.5");
        assert_eq!(round_trip(&at("fd00::5")), "v1|dc1.corp.example||share|base|pvc-1|delete||fd00::5");
        let sealed = with_encryption(at("10.0.0.5"), EncryptionPolicy::Required);
        assert_eq!(round_trip(&sealed), "v1|dc1.corp.example||share|base|pvc-1|delete|required|10.0.0.5");
        // The address is part of the identity; ids without it keep their seven or eight fields.
        assert_ne!(at("10.0.0.5"), base);
        assert_eq!(round_trip(&base), "v1|dc1.corp.example||share|base|pvc-1|delete");
        assert!(err_free("v1|srv||share||x||off"));
    }

    fn err_free(id: &str) -> bool {
        VolumeId::parse(id).is_ok_and(|v| v.address.is_none())
    }

    #[test]
    fn unicode_round_trips() {
        let v = volume("//srv/données", "日本/データ/ünï", Some(OnDelete::Retain));
        assert_eq!(round_trip(&v), "v1|srv||données||日本/データ/ünï|retain");
        let v = volume("//srv/s", "emoji-🦀", None);
        round_trip(&v);
    }

    #[test]
    fn length_boundary_is_128_bytes() {
        let empty = volume("//srv/share", "", Some(OnDelete::Delete)).encode().unwrap();
        let fits = MAX_VOLUME_ID_LEN - empty.len();
        let at_limit = volume("//srv/share", &"a".repeat(fits), Some(OnDelete::Delete));
        assert_eq!(round_trip(&at_limit).len(), 128);
        let over = volume("//srv/share", &"a".repeat(fits + 1), Some(OnDelete::Delete));
        let err = over.encode().unwrap_err();
        assert_eq!(err, VolumeIdError::TooLong { len: 129 });
        assert!(err.to_string().contains("128"), "{err}");
        // Multi-byte characters count in bytes: 'é' is two.
        let multibyte = volume("//srv/share", &"é".repeat(fits / 2 + 1), Some(OnDelete::Delete));
        assert!(matches!(multibyte.encode(), Err(VolumeIdError::TooLong { .. })));
        // Parsing refuses over-long input before looking at it.
        let long = format!("{}{}", empty, "a".repeat(fits + 1));
        assert_eq!(VolumeId::parse(&long), Err(VolumeIdError::TooLong { len: 129 }));

        // The eighth field counts too: "|if-supported" is 13 bytes.
        let relaxed = |sub_dir: &str| {
            with_encryption(volume("//srv/share", sub_dir, Some(OnDelete::Delete)), EncryptionPolicy::IfSupported)
        };
        let fits = MAX_VOLUME_ID_LEN - relaxed("").encode().unwrap().len();
        assert_eq!(fits + 13, MAX_VOLUME_ID_LEN - empty.len());
        assert_eq!(round_trip(&relaxed(&"a".repeat(fits))).len(), 128);
        assert_eq!(relaxed(&"a".repeat(fits + 1)).encode(), Err(VolumeIdError::TooLong { len: 129 }));
        // A subDir that fits a seven-field id can be too long once the policy is recorded.
        let seven_field_limit = volume("//srv/share", &"a".repeat(fits + 13), Some(OnDelete::Delete));
        assert_eq!(round_trip(&seven_field_limit).len(), 128);
        assert!(matches!(relaxed(&"a".repeat(fits + 13)).encode(), Err(VolumeIdError::TooLong { len: 141 })));
    }

    #[test]
    fn csi_driver_smb_handles() {
        let v = VolumeId::parse("smb-server.default.svc.cluster.local/share#pvc-4729891a").unwrap();
        assert_eq!(v.share.server(), "smb-server.default.svc.cluster.local");
        assert_eq!(v.share.share(), "share");
        assert_eq!(v.sub_dir.to_string(), "pvc-4729891a");
        assert_eq!(v.on_delete, None);

        let v = VolumeId::parse("srv/share/base/x#team/a#pvc-1#archive").unwrap();
        assert_eq!(v.share.base_path().to_string(), "base/x");
        assert_eq!(v.sub_dir.to_string(), "team/a");
        assert_eq!(v.path_in_share().to_string(), "base/x/team/a");
        assert_eq!(v.on_delete, Some(OnDelete::Archive));

        // Four fields with empty uuid and onDelete, as that driver writes for "delete".
        let v = VolumeId::parse("srv/share#pvc-1##").unwrap();
        assert_eq!((v.sub_dir.to_string(), v.on_delete), ("pvc-1".to_string(), None));
        let v = VolumeId::parse("//srv:1445/share#sub#uuid#Retain").unwrap();
        assert_eq!((v.share.port(), v.on_delete), (1445, Some(OnDelete::Retain)));
        // Static PVs may point at the share root.
        assert!(VolumeId::parse("srv/share#").unwrap().sub_dir.is_root());

        // Re-encoding gives a v1 handle that parses back to the same volume.
        let v = VolumeId::parse("srv/share#sub#uuid#retain").unwrap();
        assert_eq!(round_trip(&v), "v1|srv||share||sub|retain");
    }

    #[test]
    fn hostile_and_malformed_handles() {
        let err = |id: &str| VolumeId::parse(id).unwrap_err();
        assert_eq!(err(""), VolumeIdError::Empty);
        assert!(matches!(err("just-a-name"), VolumeIdError::Unrecognised { .. }));
        assert!(matches!(err("v2|srv||share||x|"), VolumeIdError::UnsupportedVersion { .. }));
        assert!(matches!(err("v1|srv||share||x"), VolumeIdError::FieldCount { found: 6, .. }));
        assert!(matches!(err("v1|srv||share||x|||"), VolumeIdError::BadAddress { ref value, .. } if value.is_empty()));
        assert!(matches!(err("v1|srv||share||x||off|"), VolumeIdError::BadAddress { .. }));
        assert!(matches!(err("v1|srv||share||x||off|dc1"), VolumeIdError::BadAddress { .. }));
        assert!(matches!(err("v1|srv||share||x||off|10.0.0.5|"), VolumeIdError::FieldCount { found: 10, .. }));
        // One spelling: a non-canonical IPv6 address, or an eight-field id with an empty policy, is refused.
        assert!(matches!(err("v1|srv||share||x|||fd00:0::1"), VolumeIdError::Unrecognised { .. }));
        assert!(
            matches!(err("v1|srv||share||x||"), VolumeIdError::BadEncryption { ref value, .. } if value.is_empty())
        );
        assert!(matches!(err("v1|srv||share||x||none"), VolumeIdError::BadEncryption { .. }));
        assert!(matches!(err("v1|srv||share||x||yes"), VolumeIdError::BadEncryption { .. }));
        assert!(matches!(err("v1|srv||share||x||if_supported"), VolumeIdError::BadEncryption { .. }));
        assert!(err("v1|srv||share||x||bogus").to_string().contains("encryption \"bogus\""));
        assert!(matches!(err("v1|srv||share||../../etc|"), VolumeIdError::BadPath { field: "subdir", .. }));
        assert!(matches!(err("v1|srv||share|..|x|"), VolumeIdError::BadPath { field: "base path", .. }));
        assert!(matches!(err("v1|srv||share||/abs|"), VolumeIdError::BadPath { .. }));
        assert!(matches!(err("v1|srv||share||a\0b|"), VolumeIdError::BadPath { .. }));
        assert!(matches!(err("v1|srv||share||a%7Cb|"), VolumeIdError::BadPath { .. }));
        assert!(matches!(err("v1|srv||share||a%2|"), VolumeIdError::BadEscape { field: "subdir", .. }));
        assert!(matches!(err("v1|srv||share||a%41|"), VolumeIdError::BadEscape { .. }));
        assert!(matches!(err("v1|srv||share||%|"), VolumeIdError::BadEscape { .. }));
        assert!(matches!(err("v1|srv|0|share||x|"), VolumeIdError::BadPort { .. }));
        assert!(matches!(err("v1|srv|99999|share||x|"), VolumeIdError::BadPort { .. }));
        assert!(matches!(err("v1|srv|+1|share||x|"), VolumeIdError::BadPort { .. }));
        assert!(matches!(err("v1|s rv||share||x|"), VolumeIdError::BadShare { .. }));
        assert!(matches!(err("v1|srv||||x|"), VolumeIdError::BadShare { .. }));
        assert!(matches!(err("v1|srv||share||x|shred"), VolumeIdError::BadOnDelete { .. }));
        assert!(matches!(err("srv/share#x#u#shred"), VolumeIdError::BadOnDelete { .. }));
        assert!(matches!(err("srv/share#../x"), VolumeIdError::BadPath { .. }));
        assert!(matches!(err("srv#x"), VolumeIdError::BadShare { .. }));
        assert!(matches!(err("srv/share#a#b#retain#extra"), VolumeIdError::Unrecognised { .. }));
        assert!(matches!(err("user@srv/share#x"), VolumeIdError::BadShare { .. }));
    }

    #[test]
    fn one_spelling_per_volume() {
        // Non-canonical spellings of a valid volume are refused, so equal
        // volumes always have equal handles.
        for id in [
            "v1|srv|445|share||x|",
            "v1|srv||share||x/|",
            r"v1|srv||share||a\b|",
            "v1|srv||share||x|Retain",
            "v1|srv||share||x||Off",
            "v1|srv||share||x||IF-SUPPORTED",
            "v1|srv||share||x|| off",
        ] {
            assert!(VolumeId::parse(id).is_err(), "{id}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz over short strings from a hostile alphabet.
        let alphabet: Vec<char> = "v1|#%/\\.7C25:[]@\0é off".chars().collect();
        let mut state = 0x2545_f491_u32;
        for _ in 0..20_000 {
            let len = (state % 24) as usize;
            let mut s = String::new();
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                s.push(alphabet[(state as usize) % alphabet.len()]);
            }
            if let Ok(v) = VolumeId::parse(&s) {
                // Whatever parses re-encodes and parses to the same volume.
                let again = VolumeId::parse(&v.encode().unwrap()).unwrap();
                assert_eq!(again, v, "{s:?}");
            }
            state = state.wrapping_add(0x9e37_79b9);
        }
    }
}
