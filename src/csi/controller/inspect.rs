//! Looking at an existing volume without changing it: its condition for
//! ControllerGetVolume, and whether its directory exists for
//! ValidateVolumeCapabilities. A broken share is reported as an abnormal
//! condition, not an error: the volume exists, it is just unwell.

use tonic::{Code, Status};

use super::plan::volume_context;
use super::record::{RecordError, RecordStore};
use super::status;
use super::{share_path, ControllerService, RecordState};
use crate::csi::proto::{controller_get_volume_response, ControllerGetVolumeResponse, Volume, VolumeCondition};
use crate::mount::ConnectTarget;
use crate::volume::VolumeId;
use smb3::{is_not_found, Credentials};

impl ControllerService {
    /// The volume and its condition. NOT_FOUND only when the share can be
    /// reached and neither the directory nor its record exists.
    pub(super) async fn get(&self, volume_id: &str, id: VolumeId) -> Result<ControllerGetVolumeResponse, Status> {
        let respond = |capacity: i64, abnormal: bool, message: String| ControllerGetVolumeResponse {
            volume: Some(Volume {
                capacity_bytes: capacity,
                volume_id: volume_id.to_string(),
                volume_context: volume_context(&id),
                content_source: None,
                accessible_topology: Vec::new(),
            }),
            status: Some(controller_get_volume_response::VolumeStatus {
                published_node_ids: Vec::new(),
                volume_condition: Some(VolumeCondition { abnormal, message }),
            }),
        };
        let Some(creds) = self.known_credentials.get(&id.share) else {
            return Ok(respond(
                0,
                false,
                format!(
                    "health not checked: credentials for {} unknown since the controller restarted \
                     (the next CreateVolume or DeleteVolume on that share provides them)",
                    id.share.share_root()
                ),
            ));
        };
        let tree = match self.tree(&ConnectTarget::of_volume(&id), id.encryption, &creds, Code::NotFound).await {
            Ok(tree) => tree,
            Err(status) => return Ok(respond(0, true, format!("share unreachable: {}", status.message()))),
        };
        let path = share_path(&id.path_in_share());
        let store = RecordStore::under(id.share.base_path());
        let record = match store.read(&tree, &store.dir_path(&id.sub_dir)).await {
            Ok(record) => record,
            Err(e @ RecordError::Corrupt { .. }) => return Ok(respond(0, true, e.to_string())),
            Err(e) => return Ok(respond(0, true, format!("share unreachable: {e}"))),
        };
        let capacity = record.as_ref().map(|r| r.capacity_bytes).unwrap_or(0);
        match tree.stat(&path).await {
            Ok(meta) if meta.is_dir() => match record {
                Some(r) if r.state == RecordState::Creating => {
                    Ok(respond(capacity, true, "the volume is still being cloned".to_string()))
                }
                _ => Ok(respond(capacity, false, format!("directory /{path} is present"))),
            },
            Ok(_) => Ok(respond(capacity, true, format!("/{path} is a file, not the volume's directory"))),
            Err(e) if is_not_found(&e) => match record {
                Some(_) => Ok(respond(capacity, true, format!("the volume's directory /{path} is gone"))),
                None => Err(Status::not_found(format!("volume {volume_id:?} does not exist"))),
            },
            Err(e) => Ok(respond(capacity, true, format!("checking /{path}: {e}"))),
        }
    }

    /// NOT_FOUND unless the volume's directory exists (`volume_id` as
    /// requested, for messages).
    pub(super) async fn check_directory(
        &self,
        volume_id: &str,
        id: &VolumeId,
        creds: &Credentials,
    ) -> Result<(), Status> {
        let tree = self.tree(&ConnectTarget::of_volume(id), id.encryption, creds, Code::NotFound).await?;
        let path = share_path(&id.path_in_share());
        match tree.stat(&path).await {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(Status::not_found(format!("volume {volume_id:?}: /{path} is not a directory"))),
            Err(e) if is_not_found(&e) => Err(Status::not_found(format!("volume {volume_id:?} does not exist"))),
            Err(e) => Err(status::smb_status(&format!("checking /{path}"), &e, Code::NotFound)),
        }
    }
}
