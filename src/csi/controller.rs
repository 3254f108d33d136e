//! The CSI Controller service: volumes are directories on SMB shares,
//! created, cloned, archived and deleted over SMB by this process (nothing
//! is mounted).
//!
//! # Behaviour the CO can rely on
//!
//! - **Capabilities**: CREATE_DELETE_VOLUME, CLONE_VOLUME, EXPAND_VOLUME,
//!   SINGLE_NODE_MULTI_WRITER, GET_VOLUME, VOLUME_CONDITION. Every other RPC
//!   answers UNIMPLEMENTED (the generated trait defaults).
//! - **Volume ids**: the v1 handles of [`crate::volume::id`]
//!   (`v1|<server>|<port>|<share>|<base>|<subdir>|<onDelete>[|<encryption>]`,
//!   at most 128 bytes); csi-driver-smb handles (`server/share#subdir#uuid#onDelete`) are
//!   accepted wherever an id is.
//! - **Idempotency** is anchored on the share, not in memory: see [`record`]
//!   for the record files under `<base>/.smb3-csi/`. A CreateVolume whose
//!   name has a record returns that volume when the request is compatible
//!   (same volume id, i.e. source, subdir and onDelete; same content source;
//!   a capacity range the recorded capacity satisfies) and ALREADY_EXISTS
//!   otherwise. A directory recorded for another name is ALREADY_EXISTS too:
//!   two volumes never share a directory, since deleting one would delete
//!   the other's data.
//! - **Concurrency**: one operation at a time per volume name and per volume
//!   directory. A second call while one is in flight gets ABORTED ("an
//!   operation on this volume is in progress"), which the spec prescribes
//!   and external-provisioner retries with backoff; waiting instead would
//!   pile up calls behind a slow clone until the sidecar's timeout.
//! - **Credentials** come from the request's secrets (`username`,
//!   `password`, optional `domain`, values trimmed). ControllerGetVolume
//!   carries no secrets, so the controller remembers, in memory only, the
//!   last credentials that worked for each share; after a restart, until
//!   another RPC for that share brings secrets, the volume condition says
//!   its health could not be checked (not abnormal: nothing is known to be
//!   wrong). ControllerExpandVolume and ValidateVolumeCapabilities use their
//!   request secrets when the StorageClass names them, else the same cache.
//! - **Sessions** come from one [`SessionPool`]: one per server, port, user,
//!   domain and password, reused across RPCs and dropped when idle (the
//!   caller runs [`SessionPool::spawn_evictor`]). A changed password is a new
//!   pool key, hence a new session.
//! - **Encryption**: every RPC connects with the volume's policy: the
//!   StorageClass `encryption` parameter, recorded in the volume id (and put
//!   into the volume context for the node), else the pool's default
//!   (`--smb-encryption`). A clone connects with the stricter of its own and
//!   its source's policy, since streamed files cross the wire. A server that
//!   cannot meet the policy is FAILED_PRECONDITION, not UNAVAILABLE:
//!   retrying cannot help until the server or the StorageClass changes.
//! - **Errors**: validation happens before any SMB traffic, so a refused
//!   request touches nothing. SMB failures map as described in [`status`].

mod credentials;
mod delete;
mod expand;
mod inspect;
mod plan;
mod provision;
mod record;
mod session;
mod status;
mod validate;

use tonic::{Request, Response, Status};

use super::locks::{InFlight, InFlightGuard};
use super::proto::controller_server::Controller;
use super::proto::{
    controller_service_capability, validate_volume_capabilities_response, ControllerExpandVolumeRequest,
    ControllerExpandVolumeResponse, ControllerGetCapabilitiesRequest, ControllerGetCapabilitiesResponse,
    ControllerGetVolumeRequest, ControllerGetVolumeResponse, ControllerServiceCapability, CreateVolumeRequest,
    CreateVolumeResponse, DeleteVolumeRequest, DeleteVolumeResponse, ValidateVolumeCapabilitiesRequest,
    ValidateVolumeCapabilitiesResponse,
};
use crate::volume::{SharePath, StorageClassParams, VolumeId};
use smb3::{HostPort, SessionPool};

pub use record::{RecordState, VolumeRecord, RECORD_DIR};
pub use status::{is_auth_failure, smb_code};

use credentials::{KnownCredentials, ShareKey};
use plan::CreatePlan;
use validate::{capacity_of, check_capabilities, parse_volume_id};

/// `volume_context` key: the share and base path, `//server[:port]/share[/base]`.
pub const CONTEXT_SOURCE: &str = "source";
/// `volume_context` key: the volume's directory under the base path.
pub const CONTEXT_SUBDIR: &str = "subdir";
/// `volume_context` key: the SMB encryption policy (`required`, `if-supported`, `off`), present only when the
/// StorageClass set one.
pub const CONTEXT_ENCRYPTION: &str = "encryption";

/// Answers the Controller RPCs. Cheap to clone (all state is shared).
#[derive(Clone)]
pub struct ControllerService {
    pool: SessionPool,
    known_credentials: KnownCredentials,
    /// Volume names and directories with an operation in progress.
    in_flight: InFlight<String>,
}

impl ControllerService {
    /// A controller using `pool` for every SMB session.
    ///
    /// ```no_run
    /// # async fn run() {
    /// use std::time::Duration;
    /// use smb3_csi::csi::controller::ControllerService;
    /// use smb3::{ClientOptions, SessionPool};
    /// let pool = SessionPool::new(ClientOptions::default(), Duration::from_secs(300));
    /// pool.spawn_evictor(Duration::from_secs(60));
    /// let controller = ControllerService::new(pool);
    /// # }
    /// ```
    pub fn new(pool: SessionPool) -> Self {
        ControllerService { pool, known_credentials: KnownCredentials::default(), in_flight: InFlight::default() }
    }

    pub fn pool(&self) -> &SessionPool {
        &self.pool
    }

    /// Holds `keys` for one operation, or ABORTED naming `what` is busy.
    fn lock(&self, keys: Vec<String>, what: &str) -> Result<InFlightGuard<String>, Status> {
        self.in_flight.acquire(keys, |_| what)
    }
}

/// The lock key of a volume's directory: the share as servers compare it,
/// and the path case-insensitively, so two spellings of one directory
/// exclude each other.
fn dir_key(id: &VolumeId) -> String {
    let share = ShareKey::of(&id.share);
    let path = id.path_in_share().to_string().to_lowercase();
    format!("dir://{}/{}/{path}", HostPort(&share.server, Some(share.port)), share.share)
}

/// A share path as the tree functions take it.
fn share_path(path: &SharePath) -> String {
    path.to_string()
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let plan = CreatePlan::from_request(request.get_ref())?;
        let volume = self.create(plan).await?;
        Ok(Response::new(CreateVolumeResponse { volume: Some(volume) }))
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let req = request.get_ref();
        let Some(id) = parse_volume_id(&req.volume_id)? else {
            tracing::info!("not a volume id of this driver: nothing to delete");
            return Ok(Response::new(DeleteVolumeResponse {}));
        };
        let creds = match super::credentials_from_secrets(&req.secrets)? {
            Some(creds) => creds,
            None => self.known_credentials.get(&id.share).ok_or_else(|| {
                Status::invalid_argument(
                    "a provisioner secret is required to delete a volume: set csi.storage.k8s.io/provisioner-secret-name \
                     and -namespace in the StorageClass",
                )
            })?,
        };
        self.delete(id, creds).await?;
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let req = request.get_ref();
        let parsed = parse_volume_id(&req.volume_id)?;
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities is required"));
        }
        let Some(id) = parsed else {
            return Err(Status::not_found(format!("volume {:?} does not exist", req.volume_id)));
        };
        let creds = match super::credentials_from_secrets(&req.secrets)? {
            Some(creds) => Some(creds),
            None => self.known_credentials.get(&id.share),
        };
        // Without credentials the id's syntax is all that can be checked.
        if let Some(creds) = creds {
            self.check_directory(&req.volume_id, &id, &creds).await?;
        }
        let unsupported = check_capabilities(&req.volume_capabilities).err().or_else(|| {
            if req.parameters.is_empty() {
                return None;
            }
            StorageClassParams::parse(&req.parameters).err().map(|e| e.to_string())
        });
        let response = match unsupported {
            Some(message) => ValidateVolumeCapabilitiesResponse { confirmed: None, message },
            None => ValidateVolumeCapabilitiesResponse {
                confirmed: Some(validate_volume_capabilities_response::Confirmed {
                    volume_context: req.volume_context.clone(),
                    volume_capabilities: req.volume_capabilities.clone(),
                    parameters: req.parameters.clone(),
                    mutable_parameters: req.mutable_parameters.clone(),
                }),
                message: String::new(),
            },
        };
        Ok(Response::new(response))
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        use controller_service_capability::rpc::Type;
        let capabilities = [
            Type::CreateDeleteVolume,
            Type::CloneVolume,
            Type::ExpandVolume,
            Type::SingleNodeMultiWriter,
            Type::GetVolume,
            Type::VolumeCondition,
        ]
        .into_iter()
        .map(|t| ControllerServiceCapability {
            r#type: Some(controller_service_capability::Type::Rpc(controller_service_capability::Rpc {
                r#type: t as i32,
            })),
        })
        .collect();
        Ok(Response::new(ControllerGetCapabilitiesResponse { capabilities }))
    }

    async fn controller_expand_volume(
        &self,
        request: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        let req = request.get_ref();
        let parsed = parse_volume_id(&req.volume_id)?;
        if req.capacity_range.is_none() {
            return Err(Status::invalid_argument("capacity_range is required"));
        }
        let (_, required, limit) = capacity_of(req.capacity_range.as_ref())?;
        if let Some(capability) = &req.volume_capability {
            check_capabilities(std::slice::from_ref(capability)).map_err(Status::invalid_argument)?;
        }
        let Some(id) = parsed else {
            return Err(Status::not_found(format!("volume {:?} does not exist", req.volume_id)));
        };
        let creds = self.credentials_or_known(&req.secrets, &id.share, "controller-expand")?;
        let capacity = self.expand(id, creds, required, limit).await?;
        Ok(Response::new(ControllerExpandVolumeResponse { capacity_bytes: capacity, node_expansion_required: false }))
    }

    async fn controller_get_volume(
        &self,
        request: Request<ControllerGetVolumeRequest>,
    ) -> Result<Response<ControllerGetVolumeResponse>, Status> {
        let volume_id = request.get_ref().volume_id.as_str();
        let Some(id) = parse_volume_id(volume_id)? else {
            return Err(Status::not_found(format!("volume {volume_id:?} does not exist")));
        };
        Ok(Response::new(self.get(volume_id, id).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_keys_compare_as_the_server_does() {
        let key = |id: &str| dir_key(&VolumeId::parse(id).unwrap());
        assert_eq!(key("v1|SRV||Share|k8s|PVC-1|delete"), key("v1|srv||share|K8S|pvc-1|retain"));
        assert_ne!(key("v1|srv||share|k8s|pvc-1|delete"), key("v1|srv|1445|share|k8s|pvc-1|delete"));
        assert_ne!(key("v1|srv||share|k8s|pvc-1|delete"), key("v1|srv||share|k8s|pvc-2|delete"));
        assert_eq!(key("v1|fd00::1|1445|share||a|delete"), "dir://[fd00::1]:1445/share/a");
    }
}
