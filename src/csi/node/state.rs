//! What a node plugin must know about its volumes after a restart, on disk: the non-secret part of every
//! NodeStageVolume it carried out and every NodePublishVolume, one small JSON file each, written atomically
//! (temporary file, fsync, rename) and readable by root only. A successor reads them to adopt, re-stage or
//! clean up; they survive the keeper too (a node reboot), so stale mount points can always be found.
//!
//! Credentials are never here: they travel in a [`KeeperRecord`] to the keeper's memory only.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A staged volume as NodeStageVolume described it, minus its secrets: enough to stage it again. An inline
/// ephemeral volume (mounted by NodePublishVolume straight at the pod's target path) is recorded the same
/// way: its `staging_path` is that target path and its volume context says `csi.storage.k8s.io/ephemeral`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    pub volume_id: String,
    /// Where it is mounted (the kubelet's staging path; an inline volume's target path).
    pub staging_path: PathBuf,
    /// The volume context (source, subdir, encryption: never secrets).
    pub volume_context: BTreeMap<String, String>,
    /// The capability's mount flags, fsGroup and access mode.
    pub mount_flags: Vec<String>,
    pub volume_mount_group: String,
    pub access_mode: i32,
    /// An inline volume's NodePublishVolume `readonly` (always false for a staged volume).
    #[serde(default)]
    pub read_only: bool,
}

/// A publish: a bind mount of a staged volume into a pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRecord {
    pub volume_id: String,
    pub target_path: PathBuf,
    pub staging_path: PathBuf,
    pub read_only: bool,
}

/// What the keeper holds beside a mount's descriptor (in its memory only): the stage record and the
/// node-stage secret it was mounted with, so a successor can open a session and adopt, or stage again.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeeperRecord {
    pub stage: StageRecord,
    pub secrets: HashMap<String, String>,
}

impl std::fmt::Debug for KeeperRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeeperRecord").field("stage", &self.stage).field("secrets", &"<redacted>").finish()
    }
}

impl KeeperRecord {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `None` for bytes that are not a record of this build (logged by the caller, never shown).
    pub fn from_bytes(bytes: &[u8]) -> Option<KeeperRecord> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Why the state directory could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("node state {op} {path}: {source}")]
pub struct StateError {
    op: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The node's state directory: `staged/`, `published/` (records) and `fuse/` (per-mount takeover journals
/// of the FUSE server).
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

const STAGED: &str = "staged";
const PUBLISHED: &str = "published";
const FUSE: &str = "fuse";

impl StateDir {
    /// Opens (creating, 0700) the state directory at `root`.
    pub fn open(root: &Path) -> Result<StateDir, StateError> {
        for sub in [STAGED, PUBLISHED, FUSE] {
            let dir = root.join(sub);
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(|source| StateError {
                op: "creating",
                path: dir,
                source,
            })?;
        }
        Ok(StateDir { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory where the FUSE server keeps the takeover journal of the mount at `mount_path`.
    pub fn journal_dir(&self, mount_path: &Path) -> PathBuf {
        self.root.join(FUSE).join(file_name(mount_path))
    }

    pub fn save_stage(&self, record: &StageRecord) -> Result<(), StateError> {
        self.write(STAGED, &record.staging_path, record)
    }

    pub fn remove_stage(&self, staging_path: &Path) -> Result<(), StateError> {
        self.remove(STAGED, staging_path)?;
        let journal = self.journal_dir(staging_path);
        match std::fs::remove_dir_all(&journal) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StateError { op: "removing", path: journal, source: e })
            }
            _ => Ok(()),
        }
    }

    pub fn save_publish(&self, record: &PublishRecord) -> Result<(), StateError> {
        self.write(PUBLISHED, &record.target_path, record)
    }

    pub fn remove_publish(&self, target_path: &Path) -> Result<(), StateError> {
        self.remove(PUBLISHED, target_path)
    }

    /// Every stage record (an unreadable file is logged and skipped: it names nothing we could act on).
    pub fn stages(&self) -> Result<Vec<StageRecord>, StateError> {
        self.read_all(STAGED)
    }

    pub fn publishes(&self) -> Result<Vec<PublishRecord>, StateError> {
        self.read_all(PUBLISHED)
    }

    fn write<T: Serialize>(&self, kind: &str, key: &Path, record: &T) -> Result<(), StateError> {
        let path = self.root.join(kind).join(file_name(key)).with_extension("json");
        let tmp = path.with_extension("tmp");
        let err = |op, source| StateError { op, path: path.clone(), source };
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| err("encoding", e.into()))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| err("writing", e))?;
        file.write_all(&bytes).and_then(|()| file.sync_all()).map_err(|e| err("writing", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| err("renaming into", e))
    }

    fn remove(&self, kind: &str, key: &Path) -> Result<(), StateError> {
        let path = self.root.join(kind).join(file_name(key)).with_extension("json");
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StateError { op: "removing", path, source: e }),
            _ => Ok(()),
        }
    }

    fn read_all<T: for<'de> Deserialize<'de>>(&self, kind: &str) -> Result<Vec<T>, StateError> {
        let dir = self.root.join(kind);
        let entries = std::fs::read_dir(&dir).map_err(|source| StateError { op: "listing", path: dir, source })?;
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path).map(|b| serde_json::from_slice::<T>(&b)) {
                Ok(Ok(record)) => records.push(record),
                Ok(Err(e)) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable node state record skipped")
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "unreadable node state record skipped"),
            }
        }
        Ok(records)
    }
}

/// A file name for a mount path: its SHA-256 (paths are long and full of `/`).
fn file_name(mount_path: &Path) -> String {
    hex_lower(&Sha256::digest(mount_path.as_os_str().as_encoded_bytes()))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn stage(path: &str) -> StageRecord {
        StageRecord {
            volume_id: "v1|srv||share||pvc-1|delete".into(),
            staging_path: path.into(),
            volume_context: BTreeMap::from([("source".into(), "//srv/share".into())]),
            mount_flags: vec!["uid=1000".into()],
            volume_mount_group: "3000".into(),
            access_mode: 5,
            read_only: false,
        }
    }

    #[test]
    fn records_round_trip_privately_and_go_away() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let a = stage("/var/lib/kubelet/a/globalmount");
        let b = stage("/var/lib/kubelet/b/globalmount");
        state.save_stage(&a).unwrap();
        state.save_stage(&b).unwrap();
        state.save_stage(&a).unwrap();
        let mut got = state.stages().unwrap();
        got.sort_by(|x, y| x.staging_path.cmp(&y.staging_path));
        assert_eq!(got, [a.clone(), b.clone()]);
        let publish = PublishRecord {
            volume_id: a.volume_id.clone(),
            target_path: "/var/lib/kubelet/pods/u/mount".into(),
            staging_path: a.staging_path.clone(),
            read_only: true,
        };
        state.save_publish(&publish).unwrap();
        assert_eq!(state.publishes().unwrap(), std::slice::from_ref(&publish));
        for entry in std::fs::read_dir(state.root().join(STAGED)).unwrap() {
            let mode = entry.unwrap().metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert_eq!(std::fs::metadata(state.root().join(STAGED)).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::create_dir_all(state.journal_dir(&a.staging_path)).unwrap();
        state.remove_stage(&a.staging_path).unwrap();
        state.remove_stage(&a.staging_path).unwrap();
        assert!(!state.journal_dir(&a.staging_path).exists());
        state.remove_publish(&publish.target_path).unwrap();
        assert_eq!(state.stages().unwrap(), [b]);
        assert!(state.publishes().unwrap().is_empty());
    }

    #[test]
    fn a_torn_or_foreign_file_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        state.save_stage(&stage("/s")).unwrap();
        std::fs::write(dir.path().join(STAGED).join("torn.json"), b"{\"volume_id\": \"v").unwrap();
        std::fs::write(dir.path().join(STAGED).join("x.tmp"), b"whatever").unwrap();
        assert_eq!(state.stages().unwrap(), [stage("/s")]);
    }

    #[test]
    fn keeper_records_carry_secrets_but_never_show_them() {
        let record =
            KeeperRecord { stage: stage("/s"), secrets: HashMap::from([("password".into(), "hunter2".into())]) };
        assert!(!format!("{record:?}").contains("hunter2"));
        assert_eq!(KeeperRecord::from_bytes(&record.to_bytes()), Some(record));
        assert_eq!(KeeperRecord::from_bytes(b"not json"), None);
    }
}
