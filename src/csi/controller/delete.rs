//! DeleteVolume: the volume's directory is deleted, kept or archived as
//! its `onDelete` (recorded in the volume id) says, then its records go.
//! A directory or record already gone is success: DeleteVolume must be
//! idempotent.

use std::time::{SystemTime, UNIX_EPOCH};

use tonic::{Code, Status};

use super::record::{RecordError, RecordStore};
use super::status::{self, record_status};
use super::{dir_key, share_path, ControllerService};
use crate::mount::ConnectTarget;
use crate::volume::{OnDelete, VolumeId};
use smb3::{is_not_found, Credentials, NtStatus, Tree};

impl ControllerService {
    pub(super) async fn delete(&self, id: VolumeId, creds: Credentials) -> Result<(), Status> {
        if id.sub_dir.is_root() {
            tracing::warn!(share = %id.share, "volume is a whole share (static csi-driver-smb handle); nothing is deleted");
            return Ok(());
        }
        let _guard = self.lock(vec![dir_key(&id)], &format!("directory /{}", id.path_in_share()))?;
        let tree = self.tree(&ConnectTarget::of_volume(&id), id.encryption, &creds, Code::NotFound).await?;
        let path = share_path(&id.path_in_share());
        let context = |what: &str| format!("{what} /{path} on {} as {}", id.share.share_root(), creds.display_name());
        let on_delete = id.on_delete.unwrap_or_default();
        match on_delete {
            OnDelete::Retain => tracing::info!(path = %path, "onDelete=retain: leaving the directory"),
            OnDelete::Delete => {
                let removed = tree
                    .remove_tree(&path)
                    .await
                    .map_err(|e| status::smb_status(&context("deleting"), &e, Code::NotFound))?;
                tracing::info!(path = %path, removed, "volume directory deleted");
            }
            OnDelete::Archive => {
                let archived = archive(&tree, &id)
                    .await
                    .map_err(|e| status::smb_status(&context("archiving"), &e, Code::NotFound))?;
                match archived {
                    Some(to) => tracing::info!(path = %path, archived_as = %to, "volume directory archived"),
                    None => tracing::info!(path = %path, "volume directory already gone; nothing to archive"),
                }
            }
        }
        let store = RecordStore::under(id.share.base_path());
        let dir_path = store.dir_path(&id.sub_dir);
        let record_err = |e: RecordError| record_status(&e, Code::NotFound);
        let record = match store.read(&tree, &dir_path).await {
            Ok(record) => record,
            Err(RecordError::Corrupt { path, why }) => {
                tracing::warn!(record = %path, why = %why, "removing a corrupt volume record");
                None
            }
            Err(e) => return Err(record_err(e)),
        };
        if let Some(record) = record {
            let name_path = store.name_path(&record.name);
            // Only if it still describes this directory (a name is never re-used by the CO).
            let named = store.read(&tree, &name_path).await.ok().flatten();
            if named.is_some_and(|named| named.volume_id == record.volume_id) {
                store.remove(&tree, &name_path).await.map_err(record_err)?;
            }
        }
        store.remove(&tree, &dir_path).await.map_err(record_err)
    }
}

/// Renames the volume's directory to `archived-<subdir>` under the base
/// path, adding `-<unix seconds>[-n]` when that exists. `None`: nothing to archive.
async fn archive(tree: &Tree, id: &VolumeId) -> smb3::Result<Option<String>> {
    let from = share_path(&id.path_in_share());
    let base = id.share.base_path().to_string();
    let archived = format!("archived-{}", id.sub_dir);
    let target = |suffix: &str| smb3::join_path(&base, &format!("{archived}{suffix}"));
    if let Some((parent, _)) = target("").rsplit_once('/') {
        tree.mkdir_all(parent).await?;
    }
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut suffixes = vec![String::new(), format!("-{stamp}")];
    suffixes.extend((1..=100).map(|n| format!("-{stamp}-{n}")));
    let mut last = None;
    for suffix in suffixes {
        let to = target(&suffix);
        match tree.rename(&from, &to, false).await {
            Ok(()) => return Ok(Some(to)),
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) if e.status() == Some(NtStatus::OBJECT_NAME_COLLISION) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one attempt was made"))
}
