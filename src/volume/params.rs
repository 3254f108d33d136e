//! StorageClass `parameters`, parsed once into [`StorageClassParams`].
//!
//! Keys are matched case-insensitively, as csi-driver-smb does, so a
//! StorageClass written for it works here unchanged.
//!
//! | Key | Meaning | Handling |
//! |---|---|---|
//! | `source` | `//server[:port]/share[/base]` (also `\\server\share`, `smb://`) | required |
//! | `subDir` | directory for the volume under `source`; template with `${pvc.metadata.name}`, `${pvc.metadata.namespace}`, `${pv.metadata.name}` | optional; default: the volume name (the PV name) |
//! | `onDelete` | `delete`, `retain` or `archive` (rename to `archived-<subDir>`) | optional; default `delete` |
//! | `encryption` | SMB encryption policy for every session of the volume (controller and node): `required` (refuse a server or share that cannot encrypt), `if-supported` (encrypt when the server can, else sign only), `off` (sign only unless the server or share demands encryption) | optional; default: the process's `--smb-encryption` (itself `required` by default). Recorded in the volume id, so DeleteVolume and the node use it too. The `seal` mount option still forces `required` on the node |
//! | `csi.storage.k8s.io/pvc/name`, `.../pvc/namespace`, `.../pv/name` | added by external-provisioner with `--extra-create-metadata` | used by the `subDir` template |
//! | `csi.storage.k8s.io/{provisioner,controller-publish,node-stage,node-publish,controller-expand,node-expand}-secret-{name,namespace}`, `csi.storage.k8s.io/secret-{name,namespace}`, `csi.storage.k8s.io/fstype` | secret references and fs type; external-provisioner strips them before CreateVolume, so they only arrive when something calls the driver directly | ignored (they name secrets, they hold no secret) |
//! | any other `csi.storage.k8s.io/...` | external-provisioner itself rejects these | error |
//! | `mountPermissions`, `fsGroupChangePolicy`, anything else | not csi-driver-smb SMB StorageClass keys | error naming the key |
//!
//! Mount options (`mountOptions:` in the StorageClass) are not parameters:
//! they arrive in the volume capability and are handled by the node service.

use std::collections::HashMap;
use std::fmt;

use super::path::{PathError, SharePath};
use super::share_url::{ShareUrl, ShareUrlError};
use smb3::EncryptionPolicy;

const PVC_NAME_KEY: &str = "csi.storage.k8s.io/pvc/name";
const PVC_NAMESPACE_KEY: &str = "csi.storage.k8s.io/pvc/namespace";
const PV_NAME_KEY: &str = "csi.storage.k8s.io/pv/name";

/// Reserved keys external-provisioner consumes; harmless if they do arrive.
const IGNORED_RESERVED_KEYS: &[&str] = &[
    "csi.storage.k8s.io/fstype",
    "csi.storage.k8s.io/secret-name",
    "csi.storage.k8s.io/secret-namespace",
    "csi.storage.k8s.io/provisioner-secret-name",
    "csi.storage.k8s.io/provisioner-secret-namespace",
    "csi.storage.k8s.io/controller-publish-secret-name",
    "csi.storage.k8s.io/controller-publish-secret-namespace",
    "csi.storage.k8s.io/node-stage-secret-name",
    "csi.storage.k8s.io/node-stage-secret-namespace",
    "csi.storage.k8s.io/node-publish-secret-name",
    "csi.storage.k8s.io/node-publish-secret-namespace",
    "csi.storage.k8s.io/controller-expand-secret-name",
    "csi.storage.k8s.io/controller-expand-secret-namespace",
    "csi.storage.k8s.io/node-expand-secret-name",
    "csi.storage.k8s.io/node-expand-secret-namespace",
];

/// What DeleteVolume does with the volume's directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnDelete {
    /// Remove the directory and its contents.
    #[default]
    Delete,
    /// Leave the directory as it is.
    Retain,
    /// Rename the directory to `archived-<name>` next to it.
    Archive,
}

impl OnDelete {
    /// Case-insensitive `delete`, `retain` or `archive`.
    pub fn parse(value: &str) -> Option<Self> {
        [OnDelete::Delete, OnDelete::Retain, OnDelete::Archive]
            .into_iter()
            .find(|candidate| candidate.as_str().eq_ignore_ascii_case(value))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OnDelete::Delete => "delete",
            OnDelete::Retain => "retain",
            OnDelete::Archive => "archive",
        }
    }
}

impl fmt::Display for OnDelete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `encryption` values, as StorageClasses, volume contexts and volume ids spell them.
const ENCRYPTION_POLICIES: [EncryptionPolicy; 3] =
    [EncryptionPolicy::Required, EncryptionPolicy::IfSupported, EncryptionPolicy::Off];

/// Case-insensitive `required`, `if-supported` or `off`. Stricter than
/// `EncryptionPolicy::from_str` (no `yes`/`auto`/... synonyms): a
/// StorageClass has one spelling per policy, like the other parameters.
pub fn parse_encryption(value: &str) -> Option<EncryptionPolicy> {
    ENCRYPTION_POLICIES.into_iter().find(|policy| encryption_name(*policy).eq_ignore_ascii_case(value))
}

/// The canonical spelling of a policy: `required`, `if-supported` or `off`.
pub fn encryption_name(policy: EncryptionPolicy) -> &'static str {
    match policy {
        EncryptionPolicy::Required => "required",
        EncryptionPolicy::IfSupported => "if-supported",
        EncryptionPolicy::Off => "off",
    }
}

/// Why StorageClass parameters were refused; each names the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("StorageClass parameter \"source\" is required (e.g. //server/share)")]
    MissingSource,
    #[error("StorageClass parameter {key:?}: {error}")]
    BadSource {
        key: String,
        #[source]
        error: ShareUrlError,
    },
    #[error("StorageClass parameter {key:?} is given twice (keys are case-insensitive)")]
    Duplicate { key: String },
    #[error("StorageClass parameter {key:?}: {value:?} is not one of delete, retain, archive")]
    BadOnDelete { key: String, value: String },
    #[error("StorageClass parameter {key:?}: {value:?} is not one of required, if-supported, off")]
    BadEncryption { key: String, value: String },
    #[error("StorageClass parameter {key:?} is not supported (supported: source, subDir, onDelete, encryption)")]
    UnknownKey { key: String },
    #[error("subDir {template:?}: unknown variable ${{{variable}}}; use ${{pvc.metadata.name}}, ${{pvc.metadata.namespace}} or ${{pv.metadata.name}}")]
    UnknownVariable { template: String, variable: String },
    #[error("subDir {template:?}: \"${{\" without a closing \"}}\"")]
    UnterminatedVariable { template: String },
    #[error(
        "subDir {template:?} uses ${{{variable}}} but the request has no {key:?}; \
         run external-provisioner with --extra-create-metadata"
    )]
    MissingMetadata { template: String, variable: String, key: &'static str },
    #[error("subDir {template:?} expands to {expanded:?}: {error}")]
    BadSubDir {
        template: String,
        expanded: String,
        #[source]
        error: PathError,
    },
}

/// A `subDir` value before expansion. Checked for syntax when parsed, so a
/// typo in a variable fails at the first CreateVolume with a clear error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubDirTemplate {
    template: String,
}

/// A template variable and the parameter that supplies its value.
const VARIABLES: &[(&str, &str)] = &[
    ("pvc.metadata.name", PVC_NAME_KEY),
    ("pvc.metadata.namespace", PVC_NAMESPACE_KEY),
    ("pv.metadata.name", PV_NAME_KEY),
];

impl SubDirTemplate {
    pub fn parse(template: &str) -> Result<Self, ParamError> {
        let parsed = SubDirTemplate { template: template.to_string() };
        // Expanding with placeholder values checks the variables' syntax.
        parsed.substitute(|_, _| Ok("x"))?;
        Ok(parsed)
    }

    pub fn as_str(&self) -> &str {
        &self.template
    }

    /// Replaces each `${...}` with `lookup(variable, parameter key)`.
    fn substitute<'v>(
        &self,
        lookup: impl Fn(&'static str, &'static str) -> Result<&'v str, ParamError>,
    ) -> Result<String, ParamError> {
        let template = &self.template;
        let mut out = String::with_capacity(template.len());
        let mut rest = template.as_str();
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or_else(|| ParamError::UnterminatedVariable { template: template.clone() })?;
            let name = &after[..end];
            let (variable, key) = VARIABLES.iter().find(|(v, _)| *v == name).ok_or_else(|| {
                ParamError::UnknownVariable { template: template.clone(), variable: name.to_string() }
            })?;
            out.push_str(lookup(variable, key)?);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// The StorageClass parameters of a CreateVolume request, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageClassParams {
    pub source: ShareUrl,
    /// `None`: each volume gets a directory named after the volume.
    pub sub_dir: Option<SubDirTemplate>,
    pub on_delete: OnDelete,
    /// `None`: not set; the process's default policy applies.
    pub encryption: Option<EncryptionPolicy>,
    pub pvc_name: Option<String>,
    pub pvc_namespace: Option<String>,
    pub pv_name: Option<String>,
}

impl StorageClassParams {
    pub fn parse(parameters: &HashMap<String, String>) -> Result<Self, ParamError> {
        let (mut source, mut sub_dir, mut on_delete, mut encryption) = (None, None, None, None);
        let (mut pvc_name, mut pvc_namespace, mut pv_name) = (None, None, None);
        // Sorted so that errors do not depend on HashMap order.
        let mut entries: Vec<(&String, &String)> = parameters.iter().collect();
        entries.sort();
        for (key, value) in entries {
            let lower = key.to_ascii_lowercase();
            let slot = match lower.as_str() {
                "source" => &mut source,
                "subdir" => &mut sub_dir,
                "ondelete" => &mut on_delete,
                "encryption" => &mut encryption,
                PVC_NAME_KEY => &mut pvc_name,
                PVC_NAMESPACE_KEY => &mut pvc_namespace,
                PV_NAME_KEY => &mut pv_name,
                k if IGNORED_RESERVED_KEYS.contains(&k) => continue,
                _ => return Err(ParamError::UnknownKey { key: key.clone() }),
            };
            if slot.replace((key.clone(), value.clone())).is_some() {
                return Err(ParamError::Duplicate { key: key.clone() });
            }
        }

        let (source_key, source_value) = source.ok_or(ParamError::MissingSource)?;
        let source =
            ShareUrl::parse(&source_value).map_err(|error| ParamError::BadSource { key: source_key, error })?;
        let sub_dir = match sub_dir {
            Some((_, template)) if !template.is_empty() => Some(SubDirTemplate::parse(&template)?),
            _ => None,
        };
        let on_delete = match on_delete {
            None => OnDelete::default(),
            Some((_, value)) if value.is_empty() => OnDelete::default(),
            Some((key, value)) => OnDelete::parse(&value).ok_or(ParamError::BadOnDelete { key, value })?,
        };
        let encryption = match encryption {
            None => None,
            Some((_, value)) if value.is_empty() => None,
            Some((key, value)) => Some(parse_encryption(&value).ok_or(ParamError::BadEncryption { key, value })?),
        };
        let value = |slot: Option<(String, String)>| slot.map(|(_, v)| v);
        Ok(StorageClassParams {
            source,
            sub_dir,
            on_delete,
            encryption,
            pvc_name: value(pvc_name),
            pvc_namespace: value(pvc_namespace),
            pv_name: value(pv_name),
        })
    }

    /// The volume's directory under the source's base path: the expanded
    /// `subDir` template, or `volume_name` (CreateVolume's `name`, which
    /// external-provisioner sets to the PV name) when there is none.
    pub fn sub_dir_for(&self, volume_name: &str) -> Result<SharePath, ParamError> {
        let (template, expanded) = match &self.sub_dir {
            None => (volume_name.to_string(), volume_name.to_string()),
            Some(t) => {
                let expanded = t.substitute(|variable, key| {
                    let value = match key {
                        PVC_NAME_KEY => &self.pvc_name,
                        PVC_NAMESPACE_KEY => &self.pvc_namespace,
                        _ => &self.pv_name,
                    };
                    value.as_deref().ok_or_else(|| ParamError::MissingMetadata {
                        template: t.as_str().to_string(),
                        variable: variable.to_string(),
                        key,
                    })
                })?;
                (t.as_str().to_string(), expanded)
            }
        };
        SharePath::parse(&expanded).map_err(|error| ParamError::BadSubDir { template, expanded, error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<StorageClassParams, ParamError> {
        StorageClassParams::parse(&params(pairs))
    }

    #[test]
    fn minimal_and_defaults() {
        let p = parse(&[("source", "//srv/share")]).unwrap();
        assert_eq!(p.source.to_string(), "//srv/share");
        assert_eq!(p.on_delete, OnDelete::Delete);
        assert_eq!(p.sub_dir, None);
        assert_eq!(p.encryption, None);
        assert_eq!(p.sub_dir_for("pvc-123").unwrap().to_string(), "pvc-123");
        // An empty value is the same as no value, as for onDelete.
        assert_eq!(parse(&[("source", "//srv/share"), ("encryption", "")]).unwrap().encryption, None);
    }

    #[test]
    fn encryption_policy() {
        for (key, value, want) in [
            ("encryption", "off", EncryptionPolicy::Off),
            ("Encryption", "If-Supported", EncryptionPolicy::IfSupported),
            ("ENCRYPTION", "REQUIRED", EncryptionPolicy::Required),
        ] {
            let p = parse(&[("source", "//srv/share"), (key, value)]).unwrap();
            assert_eq!(p.encryption, Some(want), "{key}={value}");
        }
        for bad in ["yes", "auto", "if_supported", "none", "required "] {
            let err = parse(&[("source", "//srv/share"), ("encryption", bad)]).unwrap_err();
            assert_eq!(err, ParamError::BadEncryption { key: "encryption".into(), value: bad.into() });
            let message = err.to_string();
            assert!(message.contains("\"encryption\"") && message.contains(&format!("{bad:?}")), "{message}");
        }
        assert!(matches!(
            parse(&[("source", "//srv/share"), ("encryption", "off"), ("Encryption", "off")]),
            Err(ParamError::Duplicate { .. })
        ));
        for policy in ENCRYPTION_POLICIES {
            assert_eq!(parse_encryption(encryption_name(policy)), Some(policy));
            assert_eq!(encryption_name(policy).parse::<EncryptionPolicy>(), Ok(policy));
        }
    }

    #[test]
    fn keys_are_case_insensitive_like_csi_driver_smb() {
        let p = parse(&[("Source", r"\\srv\share\k8s"), ("SUBDIR", "x/${pv.metadata.name}"), ("ondelete", "Archive")])
            .unwrap();
        assert_eq!(p.source.base_path().to_string(), "k8s");
        assert_eq!(p.on_delete, OnDelete::Archive);
        let p = StorageClassParams { pv_name: Some("pv-9".into()), ..p };
        assert_eq!(p.sub_dir_for("ignored").unwrap().to_string(), "x/pv-9");
    }

    #[test]
    fn template_with_provisioner_metadata() {
        let p = parse(&[
            ("source", "//srv/share"),
            ("subDir", r"${pvc.metadata.namespace}\${pvc.metadata.name}-data"),
            ("csi.storage.k8s.io/pvc/name", "web"),
            ("csi.storage.k8s.io/pvc/namespace", "shop"),
            ("csi.storage.k8s.io/pv/name", "pvc-1"),
            ("onDelete", "retain"),
        ])
        .unwrap();
        assert_eq!(p.on_delete, OnDelete::Retain);
        assert_eq!(p.sub_dir_for("pvc-1").unwrap().to_string(), "shop/web-data");
        assert_eq!(p.sub_dir.as_ref().unwrap().as_str(), r"${pvc.metadata.namespace}\${pvc.metadata.name}-data");
    }

    #[test]
    fn secret_references_are_ignored_not_errors() {
        let p = parse(&[
            ("source", "//srv/share"),
            ("csi.storage.k8s.io/provisioner-secret-name", "smbcreds"),
            ("csi.storage.k8s.io/provisioner-secret-namespace", "default"),
            ("csi.storage.k8s.io/node-stage-secret-name", "smbcreds"),
            ("csi.storage.k8s.io/node-stage-secret-namespace", "default"),
            ("csi.storage.k8s.io/fstype", "cifs"),
        ]);
        assert!(p.is_ok(), "{p:?}");
    }

    #[test]
    fn unknown_keys_are_named() {
        for key in ["mountPermissions", "server", "csi.storage.k8s.io/unknown", "subdirectory"] {
            let err = parse(&[("source", "//srv/share"), (key, "1")]).unwrap_err();
            assert_eq!(err, ParamError::UnknownKey { key: key.to_string() });
            assert!(err.to_string().contains(key));
        }
    }

    #[test]
    fn bad_values_are_named() {
        assert_eq!(parse(&[("subDir", "x")]), Err(ParamError::MissingSource));
        assert!(matches!(parse(&[("source", "srv/share")]), Err(ParamError::BadSource { .. })));
        assert!(matches!(
            parse(&[("source", "//srv/share"), ("onDelete", "shred")]),
            Err(ParamError::BadOnDelete { ref value, .. }) if value == "shred"
        ));
        assert!(matches!(parse(&[("source", "//a/s"), ("Source", "//b/s")]), Err(ParamError::Duplicate { .. })));
        let unknown = parse(&[("source", "//srv/share"), ("subDir", "${pvc.metadata.uid}")]).unwrap_err();
        assert!(matches!(unknown, ParamError::UnknownVariable { ref variable, .. } if variable == "pvc.metadata.uid"));
        assert!(unknown.to_string().contains("${pvc.metadata.uid}"), "{unknown}");
        assert!(matches!(
            parse(&[("source", "//srv/share"), ("subDir", "a/${pvc.metadata.name")]),
            Err(ParamError::UnterminatedVariable { .. })
        ));
    }

    #[test]
    fn expansion_results_are_validated() {
        let with = |sub_dir: &str, pvc_name: &str| {
            let mut p = parse(&[("source", "//srv/share"), ("subDir", sub_dir)]).unwrap();
            p.pvc_name = Some(pvc_name.to_string());
            p.sub_dir_for("vol")
        };
        assert!(matches!(with("../${pvc.metadata.name}", "a"), Err(ParamError::BadSubDir { .. })));
        assert!(matches!(with("${pvc.metadata.name}", ".."), Err(ParamError::BadSubDir { .. })));
        assert!(matches!(with("/${pvc.metadata.name}", "a"), Err(ParamError::BadSubDir { .. })));
        assert!(matches!(with(r"\x", "a"), Err(ParamError::BadSubDir { .. })));
        assert!(matches!(with("${pvc.metadata.name}", ""), Err(ParamError::BadSubDir { .. })));
        assert!(matches!(with("a/${pvc.metadata.name}", "x\0y"), Err(ParamError::BadSubDir { .. })));
        assert!(matches!(with("${pvc.metadata.name}", &"n".repeat(256)), Err(ParamError::BadSubDir { .. })));
        assert_eq!(with("$HOME/${pvc.metadata.name}", "a").unwrap().to_string(), "$HOME/a");
        // The default (no subDir) is validated too.
        let p = parse(&[("source", "//srv/share")]).unwrap();
        assert!(matches!(p.sub_dir_for("../x"), Err(ParamError::BadSubDir { .. })));
        assert!(matches!(p.sub_dir_for(""), Err(ParamError::BadSubDir { .. })));
    }

    #[test]
    fn missing_metadata_says_how_to_fix_it() {
        let p = parse(&[("source", "//srv/share"), ("subDir", "${pvc.metadata.namespace}")]).unwrap();
        let err = p.sub_dir_for("vol").unwrap_err();
        assert!(matches!(err, ParamError::MissingMetadata { key: PVC_NAMESPACE_KEY, .. }));
        assert!(err.to_string().contains("--extra-create-metadata"), "{err}");
    }

    #[test]
    fn on_delete_words() {
        assert_eq!(OnDelete::parse("DELETE"), Some(OnDelete::Delete));
        assert_eq!(OnDelete::parse("retain"), Some(OnDelete::Retain));
        assert_eq!(OnDelete::parse("archive"), Some(OnDelete::Archive));
        assert_eq!(OnDelete::parse("keep"), None);
        assert_eq!(OnDelete::Archive.to_string(), "archive");
    }
}
