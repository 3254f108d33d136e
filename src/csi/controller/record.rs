//! What the controller remembers about the volumes it created, kept on the
//! share itself so that it survives a controller restart and needs no
//! Kubernetes API access.
//!
//! # Layout
//!
//! Records live in a hidden directory `.smb3-csi` under the StorageClass
//! source's base path (where the provisioner secret's user can write), next
//! to the volumes:
//!
//! ```text
//! <base>/.smb3-csi/name-<sha256(volume name), 32 hex>   looked up by CreateVolume
//! <base>/.smb3-csi/dir-<sha256(lowercase subdir), 32 hex> looked up by the RPCs that get a volume id
//! ```
//!
//! Both files hold the same [`VolumeRecord`]: the volume name is what makes
//! CreateVolume idempotent (and detects a name re-used with other
//! parameters), the directory is all DeleteVolume, ControllerExpandVolume and
//! ControllerGetVolume know (from the volume id). The directory key is
//! lowercased because SMB servers usually compare names case-insensitively,
//! so `A` and `a` are one directory.
//!
//! # Format
//!
//! UTF-8 text, one `key=value` per line after a version line; values escape
//! `%`, CR and LF as `%25`, `%0D`, `%0A`. Unknown keys are ignored so a newer
//! controller can add some; a missing required key is an error.
//!
//! ```text
//! smb3-csi volume record 1
//! name=pvc-0f3a...
//! volume_id=v1|files.example.com||team|k8s|pvc-0f3a...|delete
//! capacity_bytes=1073741824
//! content_source=
//! state=ready
//! ```
//!
//! Records are written to a temporary file and renamed into place, so a
//! reader sees the old or the new record, never half of one.

use std::fmt;

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::volume::SharePath;
use smb3::{is_not_found, Error as SmbError, NtStatus, Tree, WholeFile};

/// The hidden directory under the base path that holds the records.
pub const RECORD_DIR: &str = ".smb3-csi";

const HEADER: &str = "smb3-csi volume record 1";

/// No record is anywhere near this; bounds what a corrupted file makes us read.
const MAX_RECORD_LEN: u64 = 64 * 1024;

/// Whether a volume's directory is complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordState {
    /// Written before a clone starts; a retried CreateVolume that finds it
    /// removes the partial copy and copies again.
    Creating,
    Ready,
}

impl RecordState {
    fn as_str(self) -> &'static str {
        match self {
            RecordState::Creating => "creating",
            RecordState::Ready => "ready",
        }
    }
}

/// One provisioned volume, as CreateVolume made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeRecord {
    /// CreateVolume's `name` (external-provisioner: the PV name).
    pub name: String,
    /// The v1 volume id: source, subdir and onDelete.
    pub volume_id: String,
    /// The capacity recorded at creation or by the last expansion.
    pub capacity_bytes: i64,
    /// The volume id this one was cloned from, or empty.
    pub content_source: String,
    pub state: RecordState,
}

/// Why a record file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("volume record {path}: {source}")]
    Smb {
        path: String,
        #[source]
        source: SmbError,
    },
    #[error("volume record {path} is corrupt: {why}")]
    Corrupt { path: String, why: String },
}

impl RecordError {
    /// The SMB error behind this, for status mapping.
    pub fn smb(&self) -> Option<&SmbError> {
        match self {
            RecordError::Smb { source, .. } => Some(source),
            RecordError::Corrupt { .. } => None,
        }
    }
}

impl VolumeRecord {
    pub fn encode(&self) -> String {
        format!(
            "{HEADER}\nname={}\nvolume_id={}\ncapacity_bytes={}\ncontent_source={}\nstate={}\n",
            escape(&self.name),
            escape(&self.volume_id),
            self.capacity_bytes,
            escape(&self.content_source),
            self.state.as_str()
        )
    }

    /// Parses a record; `Err` says what is wrong.
    pub fn decode(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(format!("first line is not {HEADER:?}"));
        }
        let (mut name, mut volume_id, mut capacity, mut content_source, mut state) = (None, None, None, None, None);
        for line in lines {
            if line.is_empty() {
                continue;
            }
            let (key, value) = line.split_once('=').ok_or_else(|| format!("line {line:?} has no '='"))?;
            let value = unescape(value).ok_or_else(|| format!("bad escape in {key}"))?;
            match key {
                "name" => name = Some(value),
                "volume_id" => volume_id = Some(value),
                "capacity_bytes" => {
                    capacity = Some(
                        value
                            .parse::<i64>()
                            .ok()
                            .filter(|c| *c >= 0)
                            .ok_or_else(|| format!("bad capacity {value:?}"))?,
                    )
                }
                "content_source" => content_source = Some(value),
                "state" => {
                    state = Some(match value.as_str() {
                        "creating" => RecordState::Creating,
                        "ready" => RecordState::Ready,
                        other => return Err(format!("bad state {other:?}")),
                    })
                }
                _ => {} // written by a newer controller
            }
        }
        let missing = |key: &str| format!("no {key}= line");
        Ok(VolumeRecord {
            name: name.filter(|n| !n.is_empty()).ok_or_else(|| missing("name"))?,
            volume_id: volume_id.filter(|v| !v.is_empty()).ok_or_else(|| missing("volume_id"))?,
            capacity_bytes: capacity.ok_or_else(|| missing("capacity_bytes"))?,
            content_source: content_source.unwrap_or_default(),
            state: state.ok_or_else(|| missing("state"))?,
        })
    }
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '%' => out.push_str("%25"),
            '\n' => out.push_str("%0A"),
            '\r' => out.push_str("%0D"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(value: &str) -> Option<String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        out.push(match rest.get(at + 1..at + 3)? {
            "25" => '%',
            "0A" => '\n',
            "0D" => '\r',
            _ => return None,
        });
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

fn short_hash(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the records for volumes under one base path are.
#[derive(Clone, Debug)]
pub struct RecordStore {
    dir: SharePath,
}

impl fmt::Display for RecordStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.dir)
    }
}

impl RecordStore {
    /// The store under `base` (the source's base path inside the share).
    pub fn under(base: &SharePath) -> Self {
        let dir = SharePath::parse(RECORD_DIR).expect("constant is a valid path");
        RecordStore { dir: base.join(&dir) }
    }

    pub fn name_path(&self, volume_name: &str) -> String {
        format!("{}/name-{}", self.dir, short_hash(volume_name)).trim_start_matches('/').to_string()
    }

    pub fn dir_path(&self, sub_dir: &SharePath) -> String {
        format!("{}/dir-{}", self.dir, short_hash(&sub_dir.to_string().to_lowercase()))
            .trim_start_matches('/')
            .to_string()
    }

    /// Reads a record; `None` if there is none.
    pub async fn read(&self, tree: &Tree, path: &str) -> Result<Option<VolumeRecord>, RecordError> {
        let smb = |source| RecordError::Smb { path: path.to_string(), source };
        // One round trip (CREATE + READ + CLOSE): CreateVolume reads two records on every call.
        let bytes = match tree.read_small_file(path, MAX_RECORD_LEN as u32 + 1).await {
            Ok(b) => b,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(smb(e)),
        };
        if bytes.len() as u64 > MAX_RECORD_LEN {
            return Err(RecordError::Corrupt {
                path: path.to_string(),
                why: format!("more than {MAX_RECORD_LEN} bytes"),
            });
        }
        let bytes = bytes.to_vec();
        let text = String::from_utf8(bytes)
            .map_err(|_| RecordError::Corrupt { path: path.to_string(), why: "not UTF-8".into() })?;
        VolumeRecord::decode(&text).map(Some).map_err(|why| RecordError::Corrupt { path: path.to_string(), why })
    }

    /// Writes `record` at `path` atomically (temporary file + rename),
    /// creating the record directory when it is missing.
    pub async fn write(&self, tree: &Tree, path: &str, record: &VolumeRecord) -> Result<(), RecordError> {
        let smb = |source| RecordError::Smb { path: path.to_string(), source };
        let mut nonce = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut nonce);
        let tmp = format!("{}/tmp-{}", self.dir, nonce.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let tmp = tmp.trim_start_matches('/');
        // The whole record in one round trip (CREATE + WRITE + CLOSE), then the rename.
        let contents = record.encode();
        let written = match tree.write_whole_file(tmp, contents.as_bytes(), WholeFile::CreateNew).await {
            Err(e) if e.status() == Some(NtStatus::OBJECT_PATH_NOT_FOUND) => {
                tree.mkdir_all(&self.dir.to_string()).await.map_err(smb)?;
                tree.write_whole_file(tmp, contents.as_bytes(), WholeFile::CreateNew).await
            }
            other => other,
        };
        let result = match written {
            Err(e) => Err(smb(e)),
            Ok(_) => tree.rename(tmp, path, true).await.map_err(smb),
        };
        if result.is_err() {
            let _ = tree.remove_file(tmp).await;
        }
        result
    }

    /// Removes a record file; a missing one is fine.
    pub async fn remove(&self, tree: &Tree, path: &str) -> Result<(), RecordError> {
        match tree.remove_file(path).await {
            Err(e) if !is_not_found(&e) => Err(RecordError::Smb { path: path.to_string(), source: e }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> VolumeRecord {
        VolumeRecord {
            name: "pvc-1".into(),
            volume_id: "v1|srv||share||pvc-1|delete".into(),
            capacity_bytes: 1 << 30,
            content_source: String::new(),
            state: RecordState::Ready,
        }
    }

    #[test]
    fn round_trip() {
        let r = record();
        assert_eq!(VolumeRecord::decode(&r.encode()).unwrap(), r);
        let odd = VolumeRecord {
            name: "a%b\nc\rd=e".into(),
            content_source: "v1|srv||share||src|retain".into(),
            state: RecordState::Creating,
            ..record()
        };
        let text = odd.encode();
        assert_eq!(text.lines().count(), 6, "{text}");
        assert_eq!(VolumeRecord::decode(&text).unwrap(), odd);
    }

    #[test]
    fn unknown_keys_are_ignored_missing_ones_are_errors() {
        let text = format!("{}future=1\n", record().encode());
        assert_eq!(VolumeRecord::decode(&text).unwrap(), record());
        let without_state: String =
            record().encode().lines().filter(|l| !l.starts_with("state=")).map(|l| format!("{l}\n")).collect();
        assert!(VolumeRecord::decode(&without_state).unwrap_err().contains("state"));
    }

    #[test]
    fn corrupt_records_are_refused() {
        assert!(VolumeRecord::decode("").is_err());
        assert!(VolumeRecord::decode("smb3-csi volume record 2\nname=x\n").is_err());
        let truncated = &record().encode()[..40];
        assert!(VolumeRecord::decode(truncated).is_err());
        let bad_capacity = record().encode().replace("capacity_bytes=1073741824", "capacity_bytes=-1");
        assert!(VolumeRecord::decode(&bad_capacity).is_err());
        let bad_escape = record().encode().replace("name=pvc-1", "name=pvc%2");
        assert!(VolumeRecord::decode(&bad_escape).is_err());
        let no_equals = format!("{}garbage\n", record().encode());
        assert!(VolumeRecord::decode(&no_equals).is_err());
    }

    #[test]
    fn paths() {
        let store = RecordStore::under(&SharePath::root());
        assert_eq!(store.to_string(), "/.smb3-csi");
        let name = store.name_path("pvc-1");
        assert!(name.starts_with(".smb3-csi/name-") && name.len() == ".smb3-csi/name-".len() + 32, "{name}");
        let based = RecordStore::under(&SharePath::parse("k8s/vols").unwrap());
        assert!(based.dir_path(&SharePath::parse("A/b").unwrap()).starts_with("k8s/vols/.smb3-csi/dir-"));
        // Case-insensitive servers: one record per directory whatever its case.
        assert_eq!(
            based.dir_path(&SharePath::parse("A/b").unwrap()),
            based.dir_path(&SharePath::parse("a/B").unwrap())
        );
        assert_ne!(store.name_path("A"), store.name_path("a"));
    }
}
