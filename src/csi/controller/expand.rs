//! ControllerExpandVolume: a share has no per-directory size to grow, so
//! expanding raises the capacity in the volume's records (what CreateVolume
//! idempotency and ControllerGetVolume report). Volumes never shrink.

use tonic::{Code, Status};

use super::record::{RecordError, RecordStore};
use super::status::{self, record_status};
use super::{dir_key, share_path, ControllerService};
use crate::mount::ConnectTarget;
use crate::volume::VolumeId;
use smb3::{is_not_found, Credentials};

impl ControllerService {
    pub(super) async fn expand(
        &self,
        id: VolumeId,
        creds: Credentials,
        required: i64,
        limit: i64,
    ) -> Result<i64, Status> {
        let _guard = self.lock(vec![dir_key(&id)], &format!("directory /{}", id.path_in_share()))?;
        let tree = self.tree(&ConnectTarget::of_volume(&id), id.encryption, &creds, Code::NotFound).await?;
        let path = share_path(&id.path_in_share());
        match tree.stat(&path).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {
                return Err(Status::not_found(format!("volume directory /{path} does not exist")))
            }
            Err(e) => return Err(status::smb_status(&format!("checking /{path}"), &e, Code::NotFound)),
        }
        let wanted = if required > 0 { required } else { limit };
        let store = RecordStore::under(id.share.base_path());
        let dir_path = store.dir_path(&id.sub_dir);
        let record_err = |e: RecordError| record_status(&e, Code::NotFound);
        let Some(mut record) = store.read(&tree, &dir_path).await.map_err(record_err)? else {
            // A volume this controller did not create (csi-driver-smb or static): no quota to record.
            return Ok(wanted);
        };
        if limit > 0 && record.capacity_bytes > limit {
            return Err(Status::out_of_range(format!(
                "the volume already has {} bytes, over limit_bytes {limit}; volumes do not shrink",
                record.capacity_bytes
            )));
        }
        if record.capacity_bytes >= wanted {
            return Ok(record.capacity_bytes);
        }
        record.capacity_bytes = wanted;
        let name_path = store.name_path(&record.name);
        store.write(&tree, &dir_path, &record).await.map_err(record_err)?;
        if let Some(mut named) = store.read(&tree, &name_path).await.map_err(record_err)? {
            if named.volume_id == record.volume_id {
                named.capacity_bytes = wanted;
                store.write(&tree, &name_path, &named).await.map_err(record_err)?;
            }
        }
        tracing::info!(capacity_bytes = wanted, "volume expanded");
        Ok(wanted)
    }
}
