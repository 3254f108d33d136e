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

mod record;
mod status;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tonic::{Code, Request, Response, Status};

use super::proto::controller_server::Controller;
use super::proto::{
    controller_get_volume_response, controller_service_capability, validate_volume_capabilities_response,
    volume_capability, volume_content_source, ControllerExpandVolumeRequest, ControllerExpandVolumeResponse,
    ControllerGetCapabilitiesRequest, ControllerGetCapabilitiesResponse, ControllerGetVolumeRequest,
    ControllerGetVolumeResponse, ControllerServiceCapability, CreateVolumeRequest, CreateVolumeResponse,
    DeleteVolumeRequest, DeleteVolumeResponse, ValidateVolumeCapabilitiesRequest, ValidateVolumeCapabilitiesResponse,
    Volume, VolumeCapability, VolumeCondition, VolumeContentSource,
};
use crate::volume::params::encryption_name;
use crate::volume::{OnDelete, SharePath, ShareUrl, StorageClassParams, VolumeId, MAX_VOLUME_ID_LEN};
use smb3::{
    is_not_found, ClientOptions, CopyProgress, Credentials, EncryptionPolicy, Error as SmbError, NtStatus, SessionPool,
    ShareTarget, Tree,
};

pub use record::{RecordState, VolumeRecord, RECORD_DIR};
pub use status::{is_auth_failure, smb_code};

use record::{RecordError, RecordStore};

/// `volume_context` key: the share and base path, `//server[:port]/share[/base]`.
pub const CONTEXT_SOURCE: &str = "source";
/// `volume_context` key: the volume's directory under the base path.
pub const CONTEXT_SUBDIR: &str = "subdir";
/// `volume_context` key: the SMB encryption policy (`required`, `if-supported`, `off`), present only when the
/// StorageClass set one.
pub const CONTEXT_ENCRYPTION: &str = "encryption";

/// CSI "Size Limits": the longest string field, which bounds names and ids.
const MAX_NAME_LEN: usize = 128;

/// Answers the Controller RPCs. Cheap to clone (all state is shared).
#[derive(Clone)]
pub struct ControllerService {
    pool: SessionPool,
    known_credentials: Arc<Mutex<HashMap<ShareKey, Credentials>>>,
    in_flight: InFlight,
}

/// A share, compared as servers compare it (host and share name case-insensitively).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ShareKey {
    server: String,
    port: u16,
    share: String,
}

impl ShareKey {
    fn of(url: &ShareUrl) -> Self {
        ShareKey { server: url.server().to_lowercase(), port: url.port(), share: url.share().to_lowercase() }
    }
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
        ControllerService { pool, known_credentials: Arc::default(), in_flight: InFlight::default() }
    }

    pub fn pool(&self) -> &SessionPool {
        &self.pool
    }

    fn remember(&self, share: &ShareUrl, creds: &Credentials) {
        self.known_credentials.lock().unwrap().insert(ShareKey::of(share), creds.clone());
    }

    fn known(&self, share: &ShareUrl) -> Option<Credentials> {
        self.known_credentials.lock().unwrap().get(&ShareKey::of(share)).cloned()
    }

    /// The policy a volume's sessions use: its own, else the pool's default.
    fn effective(&self, encryption: Option<EncryptionPolicy>) -> EncryptionPolicy {
        encryption.unwrap_or(self.pool.options().encryption)
    }

    /// A connected tree for `share` with the `encryption` policy (`None`: the
    /// pool's default); on success the credentials are remembered for RPCs
    /// that carry none.
    async fn tree(
        &self,
        share: &ShareUrl,
        encryption: Option<EncryptionPolicy>,
        creds: &Credentials,
        missing_share: Code,
    ) -> Result<Tree, Status> {
        let target = ShareTarget {
            host: share.server().to_string(),
            port: share.port(),
            share: share.share().to_string(),
            path: String::new(),
        };
        let policy = self.effective(encryption);
        let options = ClientOptions { encryption: policy, ..self.pool.options().clone() };
        match self.pool.tree_with(&target, creds, &options).await {
            Ok(tree) => {
                self.remember(share, creds);
                Ok(tree)
            }
            Err(e) => {
                if is_auth_failure(&e) {
                    self.pool.invalidate_with(&target, creds, &options);
                }
                let context = format!(
                    "connecting to //{}/{} as {} with encryption {}",
                    display_host(share),
                    share.share(),
                    creds.display_name(),
                    encryption_name(policy)
                );
                let mut status = status::smb_status(&context, &e, missing_share);
                if matches!(e, SmbError::EncryptionUnavailable(_)) && policy == EncryptionPolicy::Required {
                    status = Status::new(
                        status.code(),
                        format!(
                            "{}; the StorageClass parameter encryption (if-supported or off) relaxes this for its \
                             volumes, which is safe only where the network path is trusted",
                            status.message()
                        ),
                    );
                }
                Err(status)
            }
        }
    }

    /// Request secrets, else remembered ones, else an INVALID_ARGUMENT that
    /// says which StorageClass key provides them.
    fn credentials_or_known(
        &self,
        secrets: &HashMap<String, String>,
        share: &ShareUrl,
        secret_key: &str,
    ) -> Result<Credentials, Status> {
        if let Some(creds) = super::credentials_from_secrets(secrets)? {
            return Ok(creds);
        }
        self.known(share).ok_or_else(|| {
            Status::invalid_argument(format!(
                "no secrets in the request and none known for {} since the controller started; \
                 set csi.storage.k8s.io/{secret_key}-secret-name and -namespace in the StorageClass",
                share_root(share)
            ))
        })
    }

    fn lock(&self, keys: Vec<String>, what: &str) -> Result<InFlightGuard, Status> {
        self.in_flight.try_acquire(keys).ok_or_else(|| {
            Status::aborted(format!("an operation on {what} is already in progress; retry when it has finished"))
        })
    }
}

fn display_host(share: &ShareUrl) -> String {
    let host = if share.server().contains(':') { format!("[{}]", share.server()) } else { share.server().to_string() };
    if share.port() == crate::volume::DEFAULT_SMB_PORT {
        host
    } else {
        format!("{host}:{}", share.port())
    }
}

/// `//server[:port]/share`, without the base path.
fn share_root(share: &ShareUrl) -> String {
    format!("//{}/{}", display_host(share), share.share())
}

/// The lock key of a volume's directory.
fn dir_key(id: &VolumeId) -> String {
    let share = ShareKey::of(&id.share);
    format!("dir:{}:{}:{}:{}", share.server, share.port, share.share, id.path_in_share().to_string().to_lowercase())
}

/// Checks requested capabilities: mount access with an access mode.
fn check_capabilities(capabilities: &[VolumeCapability]) -> Result<(), String> {
    if capabilities.is_empty() {
        return Err("volume_capabilities is required".into());
    }
    for (i, capability) in capabilities.iter().enumerate() {
        match capability.access_type {
            Some(volume_capability::AccessType::Mount(_)) => {}
            Some(volume_capability::AccessType::Block(_)) => {
                return Err(format!(
                    "volume_capabilities[{i}]: block access is not supported; SMB volumes are filesystems (volumeMode: Filesystem)"
                ))
            }
            None => return Err(format!("volume_capabilities[{i}]: access_type is required (mount)")),
        }
        let mode = capability.access_mode.as_ref().map(|m| m.mode).unwrap_or_default();
        let known = volume_capability::access_mode::Mode::try_from(mode)
            .ok()
            .filter(|m| *m != volume_capability::access_mode::Mode::Unknown);
        if known.is_none() {
            return Err(format!("volume_capabilities[{i}]: access_mode is required"));
        }
    }
    Ok(())
}

/// Checks a volume id's presence and size (INVALID_ARGUMENT), then parses
/// it; `Ok(None)` means it is not one of ours.
fn parse_volume_id(volume_id: &str) -> Result<Option<VolumeId>, Status> {
    if volume_id.is_empty() {
        return Err(Status::invalid_argument("volume_id is required"));
    }
    if volume_id.len() > MAX_VOLUME_ID_LEN {
        return Err(Status::invalid_argument(format!(
            "volume_id is {} bytes; CSI allows at most {MAX_VOLUME_ID_LEN}",
            volume_id.len()
        )));
    }
    let id = match VolumeId::parse(volume_id) {
        Ok(id) => id,
        Err(e) => {
            tracing::debug!(error = %e, "volume id is not one of ours");
            return Ok(None);
        }
    };
    check_not_reserved(&id.sub_dir)?;
    Ok(Some(id))
}

fn check_not_reserved(sub_dir: &SharePath) -> Result<(), Status> {
    if sub_dir.components().first().is_some_and(|c| c.eq_ignore_ascii_case(RECORD_DIR)) {
        return Err(Status::invalid_argument(format!(
            "subdir {sub_dir:?} is inside {RECORD_DIR}, where this driver keeps its volume records",
            sub_dir = sub_dir.to_string()
        )));
    }
    Ok(())
}

fn volume_context(id: &VolumeId) -> HashMap<String, String> {
    let mut context = HashMap::from([
        (CONTEXT_SOURCE.to_string(), id.share.to_string()),
        (CONTEXT_SUBDIR.to_string(), id.sub_dir.to_string()),
    ]);
    if let Some(policy) = id.encryption {
        context.insert(CONTEXT_ENCRYPTION.to_string(), encryption_name(policy).to_string());
    }
    context
}

/// The policy that protects data at least as well as both.
fn stricter(a: EncryptionPolicy, b: EncryptionPolicy) -> EncryptionPolicy {
    let rank = |p| match p {
        EncryptionPolicy::Off => 0,
        EncryptionPolicy::IfSupported => 1,
        EncryptionPolicy::Required => 2,
    };
    if rank(a) >= rank(b) {
        a
    } else {
        b
    }
}

/// A share path as the tree functions take it.
fn share_path(path: &SharePath) -> String {
    path.to_string()
}

fn record_status(err: &RecordError, missing_share: Code) -> Status {
    match err.smb() {
        Some(smb) => Status::new(smb_code(smb, missing_share), err.to_string()),
        None => Status::internal(err.to_string()),
    }
}

/// `required_bytes`, or `limit_bytes` when only that is set; 0 when neither.
fn capacity_of(range: Option<&super::proto::CapacityRange>) -> Result<(i64, i64, i64), Status> {
    let Some(range) = range else { return Ok((0, 0, 0)) };
    let (required, limit) = (range.required_bytes, range.limit_bytes);
    if required < 0 || limit < 0 {
        return Err(Status::invalid_argument("capacity_range: required_bytes and limit_bytes must not be negative"));
    }
    if limit > 0 && required > limit {
        return Err(Status::invalid_argument(format!(
            "capacity_range: required_bytes {required} is over limit_bytes {limit}"
        )));
    }
    let capacity = if required > 0 { required } else { limit };
    Ok((capacity, required, limit))
}

/// A validated CreateVolume request: everything decided before any SMB traffic.
struct CreatePlan {
    name: String,
    id: VolumeId,
    volume_id: String,
    capacity: i64,
    required: i64,
    limit: i64,
    /// The explicit capacity range was absent: a clone takes its source's size.
    capacity_unspecified: bool,
    clone_from: Option<(String, VolumeId)>,
    creds: Credentials,
}

impl CreatePlan {
    fn from_request(req: &CreateVolumeRequest) -> Result<Self, Status> {
        let name = req.name.as_str();
        if name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(Status::invalid_argument(format!(
                "name is {} bytes; CSI allows at most {MAX_NAME_LEN}",
                name.len()
            )));
        }
        check_capabilities(&req.volume_capabilities).map_err(Status::invalid_argument)?;
        if !req.mutable_parameters.is_empty() {
            return Err(Status::invalid_argument(
                "mutable_parameters are not supported (this driver does not offer MODIFY_VOLUME)",
            ));
        }
        let (capacity, required, limit) = capacity_of(req.capacity_range.as_ref())?;
        let params = StorageClassParams::parse(&req.parameters).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let sub_dir = params.sub_dir_for(name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if params.sub_dir.is_none() && sub_dir.components().len() != 1 {
            return Err(Status::invalid_argument(format!(
                "name {name:?} is used as the volume's directory and must be a single path component"
            )));
        }
        check_not_reserved(&sub_dir)?;
        let id = VolumeId {
            share: params.source.clone(),
            sub_dir,
            on_delete: Some(params.on_delete),
            encryption: params.encryption,
        };
        let volume_id = id.encode().map_err(|e| Status::invalid_argument(e.to_string()))?;

        let clone_from = match req.volume_content_source.as_ref().and_then(|s| s.r#type.as_ref()) {
            None => None,
            Some(volume_content_source::Type::Snapshot(_)) => {
                return Err(Status::invalid_argument(
                    "volume_content_source: snapshots are not supported by this driver (clone from a volume instead)",
                ))
            }
            Some(volume_content_source::Type::Volume(source)) => {
                let source_id = source.volume_id.as_str();
                let parsed = match parse_volume_id(source_id)? {
                    Some(parsed) => parsed,
                    None => {
                        return Err(Status::not_found(format!(
                            "volume_content_source: source volume {source_id:?} does not exist (not a volume id of this driver)"
                        )))
                    }
                };
                if ShareKey::of(&parsed.share) != ShareKey::of(&id.share) {
                    return Err(Status::invalid_argument(format!(
                        "volume_content_source: source volume is on {}, the new volume on {}; \
                         clones are copied server-side and must be on the same share",
                        share_root(&parsed.share),
                        share_root(&id.share)
                    )));
                }
                if parsed.sub_dir.is_root() {
                    return Err(Status::invalid_argument(
                        "volume_content_source: the source volume is a whole share; clone a volume with a subdir",
                    ));
                }
                let (src, dst) = (parsed.path_in_share(), id.path_in_share());
                if is_within(&dst, &src) || is_within(&src, &dst) {
                    return Err(Status::invalid_argument(format!(
                        "volume_content_source: the new volume's directory /{dst} and the source's /{src} overlap"
                    )));
                }
                Some((source_id.to_string(), parsed))
            }
        };

        let creds = super::credentials_from_secrets(&req.secrets)?.ok_or_else(|| {
            Status::invalid_argument(
                "a provisioner secret is required: set csi.storage.k8s.io/provisioner-secret-name and \
                 csi.storage.k8s.io/provisioner-secret-namespace in the StorageClass to a Secret with \
                 username, password and optionally domain (volumes are never created with guest access)",
            )
        })?;
        Ok(CreatePlan {
            name: name.to_string(),
            id,
            volume_id,
            capacity,
            required,
            limit,
            capacity_unspecified: req.capacity_range.is_none(),
            clone_from,
            creds,
        })
    }

    fn content_source_id(&self) -> &str {
        self.clone_from.as_ref().map(|(id, _)| id.as_str()).unwrap_or("")
    }

    /// Why an existing record does not match this request, if it does not.
    fn incompatibility(&self, existing: &VolumeRecord) -> Option<String> {
        if existing.volume_id != self.volume_id {
            return Some(format!(
                "volume {:?} already exists as {:?}; this request would make {:?} (different source, subDir, onDelete or encryption)",
                self.name, existing.volume_id, self.volume_id
            ));
        }
        if existing.content_source != self.content_source_id() {
            return Some(format!(
                "volume {:?} already exists with content source {:?}, not {:?}",
                self.name,
                existing.content_source,
                self.content_source_id()
            ));
        }
        let fits =
            existing.capacity_bytes >= self.required && (self.limit == 0 || existing.capacity_bytes <= self.limit);
        if !fits {
            return Some(format!(
                "volume {:?} already exists with capacity {} bytes, outside the requested range (required {}, limit {})",
                self.name, existing.capacity_bytes, self.required, self.limit
            ));
        }
        None
    }

    fn volume(&self, capacity: i64) -> Volume {
        Volume {
            capacity_bytes: capacity,
            volume_id: self.volume_id.clone(),
            volume_context: volume_context(&self.id),
            content_source: self.clone_from.as_ref().map(|(source_id, _)| VolumeContentSource {
                r#type: Some(volume_content_source::Type::Volume(volume_content_source::VolumeSource {
                    volume_id: source_id.clone(),
                })),
            }),
            accessible_topology: Vec::new(),
        }
    }
}

/// Whether `inner` is `outer` or below it (case-insensitively).
fn is_within(inner: &SharePath, outer: &SharePath) -> bool {
    let (inner, outer) = (inner.components(), outer.components());
    inner.len() >= outer.len() && inner.iter().zip(outer).all(|(a, b)| a.eq_ignore_ascii_case(b))
}

impl ControllerService {
    async fn create(&self, plan: CreatePlan) -> Result<Volume, Status> {
        let _guard =
            self.lock(vec![format!("name:{}", plan.name), dir_key(&plan.id)], &format!("volume {:?}", plan.name))?;
        // Streamed clone data crosses the wire: protect it as the stricter of the two volumes asks.
        let encryption = match &plan.clone_from {
            Some((_, source)) => Some(stricter(self.effective(plan.id.encryption), self.effective(source.encryption))),
            None => plan.id.encryption,
        };
        let tree = self.tree(&plan.id.share, encryption, &plan.creds, Code::InvalidArgument).await?;
        let store = RecordStore::under(plan.id.share.base_path());
        let name_path = store.name_path(&plan.name);
        let dir_path = store.dir_path(&plan.id.sub_dir);
        let record_err = |e: RecordError| record_status(&e, Code::InvalidArgument);

        let mut resuming_clone = false;
        if let Some(existing) = store.read(&tree, &name_path).await.map_err(record_err)? {
            if let Some(why) = plan.incompatibility(&existing) {
                return Err(Status::already_exists(why));
            }
            match existing.state {
                RecordState::Ready => {
                    tracing::info!(volume_id = %plan.volume_id, "volume exists with compatible parameters");
                    return Ok(plan.volume(existing.capacity_bytes));
                }
                RecordState::Creating => resuming_clone = true,
            }
        } else if let Some(owner) = store.read(&tree, &dir_path).await.map_err(record_err)? {
            if owner.name != plan.name {
                return Err(Status::already_exists(format!(
                    "directory /{} is already volume {:?}; use a subDir that is unique per volume",
                    plan.id.path_in_share(),
                    owner.name
                )));
            }
        }

        let path = share_path(&plan.id.path_in_share());
        let context =
            |what: &str| format!("{what} /{path} on {} as {}", share_root(&plan.id.share), plan.creds.display_name());
        let mut record = VolumeRecord {
            name: plan.name.clone(),
            volume_id: plan.volume_id.clone(),
            capacity_bytes: plan.capacity,
            content_source: plan.content_source_id().to_string(),
            state: RecordState::Ready,
        };

        if let Some((_, source)) = &plan.clone_from {
            let source_path = share_path(&source.path_in_share());
            match tree.stat(&source_path).await {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(Status::not_found(format!("source volume /{source_path} is not a directory")));
                }
                Err(e) if is_not_found(&e) => {
                    return Err(Status::not_found(format!(
                        "source volume /{source_path} does not exist on {}",
                        share_root(&source.share)
                    )))
                }
                Err(e) => return Err(status::smb_status(&context("checking the clone source of"), &e, Code::NotFound)),
            }
            let source_store = RecordStore::under(source.share.base_path());
            let source_record =
                source_store.read(&tree, &source_store.dir_path(&source.sub_dir)).await.map_err(record_err)?;
            if let Some(source_record) = source_record {
                if source_record.capacity_bytes > record.capacity_bytes {
                    if plan.capacity_unspecified {
                        record.capacity_bytes = source_record.capacity_bytes;
                    } else {
                        return Err(Status::out_of_range(format!(
                            "the source volume has {} bytes, more than the {} requested",
                            source_record.capacity_bytes, record.capacity_bytes
                        )));
                    }
                }
            }
            match tree.exists(&path).await {
                Ok(true) if resuming_clone => {
                    tracing::info!(path = %path, "removing an unfinished clone before copying again");
                    tree.remove_tree(&path).await.map_err(|e| {
                        status::smb_status(&context("removing the unfinished clone"), &e, Code::InvalidArgument)
                    })?;
                }
                Ok(true) => {
                    return Err(Status::already_exists(format!(
                        "directory /{path} already exists; a clone needs a new directory"
                    )))
                }
                Ok(false) => {}
                Err(e) => return Err(status::smb_status(&context("checking"), &e, Code::InvalidArgument)),
            }
            record.state = RecordState::Creating;
            self.write_records(&tree, &store, &record, &plan.id.sub_dir).await?;
            let copied = copy_logged(&tree, &source_path, &path).await;
            match copied {
                Ok(progress) => {
                    tracing::info!(
                        files = progress.files,
                        dirs = progress.dirs,
                        bytes = progress.bytes,
                        server_side_files = progress.server_side_files,
                        streamed_files = progress.streamed_files,
                        "clone complete"
                    );
                }
                Err(e) => {
                    // Best effort; the "creating" record makes a retry clean up otherwise.
                    if tree.remove_tree(&path).await.is_ok() {
                        let _ = store.remove(&tree, &name_path).await;
                        let _ = store.remove(&tree, &dir_path).await;
                    }
                    return Err(status::smb_status(&context("cloning into"), &e, Code::InvalidArgument));
                }
            }
            record.state = RecordState::Ready;
        } else {
            tree.mkdir_all(&path)
                .await
                .map_err(|e| status::smb_status(&context("creating"), &e, Code::InvalidArgument))?;
        }
        self.write_records(&tree, &store, &record, &plan.id.sub_dir).await?;
        tracing::info!(volume_id = %plan.volume_id, capacity_bytes = record.capacity_bytes, "volume created");
        Ok(plan.volume(record.capacity_bytes))
    }

    async fn write_records(
        &self,
        tree: &Tree,
        store: &RecordStore,
        record: &VolumeRecord,
        sub_dir: &SharePath,
    ) -> Result<(), Status> {
        let err = |e: RecordError| record_status(&e, Code::InvalidArgument);
        store.write(tree, &store.name_path(&record.name), record).await.map_err(err)?;
        store.write(tree, &store.dir_path(sub_dir), record).await.map_err(err)
    }

    async fn delete(&self, id: VolumeId, creds: Credentials) -> Result<(), Status> {
        if id.sub_dir.is_root() {
            tracing::warn!(share = %id.share, "volume is a whole share (static csi-driver-smb handle); nothing is deleted");
            return Ok(());
        }
        let _guard = self.lock(vec![dir_key(&id)], &format!("directory /{}", id.path_in_share()))?;
        let tree = self.tree(&id.share, id.encryption, &creds, Code::NotFound).await?;
        let path = share_path(&id.path_in_share());
        let context = |what: &str| format!("{what} /{path} on {} as {}", share_root(&id.share), creds.display_name());
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

    async fn expand(&self, id: VolumeId, creds: Credentials, required: i64, limit: i64) -> Result<i64, Status> {
        let _guard = self.lock(vec![dir_key(&id)], &format!("directory /{}", id.path_in_share()))?;
        let tree = self.tree(&id.share, id.encryption, &creds, Code::NotFound).await?;
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

    /// The volume and its condition. NOT_FOUND only when the share can be
    /// reached and neither the directory nor its record exists.
    async fn get(&self, volume_id: &str, id: VolumeId) -> Result<ControllerGetVolumeResponse, Status> {
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
        let Some(creds) = self.known(&id.share) else {
            return Ok(respond(
                0,
                false,
                format!(
                    "health not checked: credentials for {} unknown since the controller restarted \
                     (the next CreateVolume or DeleteVolume on that share provides them)",
                    share_root(&id.share)
                ),
            ));
        };
        let tree = match self.tree(&id.share, id.encryption, &creds, Code::NotFound).await {
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

/// `Tree::copy_tree` with progress at info level at most every two seconds.
async fn copy_logged(tree: &Tree, from: &str, to: &str) -> smb3::Result<CopyProgress> {
    tracing::info!(from = %from, to = %to, "cloning (server-side copy)");
    let last_log = Mutex::new(Instant::now());
    let progress = |p: &CopyProgress| {
        let mut last = last_log.lock().unwrap();
        if last.elapsed() >= Duration::from_secs(2) {
            *last = Instant::now();
            tracing::info!(files = p.files, bytes = p.bytes, streamed_files = p.streamed_files, "clone progress");
        } else {
            tracing::debug!(files = p.files, bytes = p.bytes, "clone progress");
        }
    };
    let copied = tree.copy_tree(from, to, &progress).await?;
    if copied.streamed_files > 0 {
        tracing::warn!(
            streamed_files = copied.streamed_files,
            "the server refused server-side copy for some files; their data went through the controller"
        );
    }
    Ok(copied)
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
            None => self.known(&id.share).ok_or_else(|| {
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
            None => self.known(&id.share),
        };
        // Without credentials the id's syntax is all that can be checked.
        if let Some(creds) = creds {
            let tree = self.tree(&id.share, id.encryption, &creds, Code::NotFound).await?;
            let path = share_path(&id.path_in_share());
            match tree.stat(&path).await {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(Status::not_found(format!("volume {:?}: /{path} is not a directory", req.volume_id)))
                }
                Err(e) if is_not_found(&e) => {
                    return Err(Status::not_found(format!("volume {:?} does not exist", req.volume_id)))
                }
                Err(e) => return Err(status::smb_status(&format!("checking /{path}"), &e, Code::NotFound)),
            }
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

/// Names and directories with an operation in progress.
#[derive(Clone, Default)]
struct InFlight(Arc<Mutex<HashSet<String>>>);

/// Releases its keys when dropped (also when the RPC future is cancelled).
struct InFlightGuard {
    set: Arc<Mutex<HashSet<String>>>,
    keys: Vec<String>,
}

impl InFlight {
    /// All of `keys`, or none if any is taken.
    fn try_acquire(&self, keys: Vec<String>) -> Option<InFlightGuard> {
        let mut set = self.0.lock().unwrap();
        if keys.iter().any(|k| set.contains(k)) {
            return None;
        }
        set.extend(keys.iter().cloned());
        Some(InFlightGuard { set: self.0.clone(), keys })
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut set = self.set.lock().unwrap();
        for key in &self.keys {
            set.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::proto::CapacityRange;

    fn mount(mode: volume_capability::access_mode::Mode) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(Default::default())),
            access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }),
        }
    }

    fn request() -> CreateVolumeRequest {
        CreateVolumeRequest {
            name: "pvc-1".into(),
            capacity_range: Some(CapacityRange { required_bytes: 1 << 20, limit_bytes: 0 }),
            volume_capabilities: vec![mount(volume_capability::access_mode::Mode::MultiNodeMultiWriter)],
            parameters: HashMap::from([("source".into(), "//srv/share/k8s".into())]),
            secrets: HashMap::from([("username".into(), " bob ".into()), ("password".into(), "pw\n".into())]),
            ..Default::default()
        }
    }

    #[test]
    fn plan_from_a_good_request() {
        let plan = CreatePlan::from_request(&request()).unwrap();
        assert_eq!(plan.volume_id, "v1|srv||share|k8s|pvc-1|delete");
        assert_eq!(plan.capacity, 1 << 20);
        assert_eq!(plan.creds, Credentials::user("bob", "", smb3::Secret::new("pw")));
        let volume = plan.volume(plan.capacity);
        assert_eq!(volume.volume_context[CONTEXT_SOURCE], "//srv/share/k8s");
        assert_eq!(volume.volume_context[CONTEXT_SUBDIR], "pvc-1");
        assert_eq!(volume.volume_context.len(), 2);
    }

    #[test]
    fn encryption_goes_into_the_id_and_the_context() {
        let mut req = request();
        req.parameters.insert("Encryption".into(), "Off".into());
        let plan = CreatePlan::from_request(&req).unwrap();
        assert_eq!(plan.volume_id, "v1|srv||share|k8s|pvc-1|delete|off");
        assert_eq!(plan.id.encryption, Some(EncryptionPolicy::Off));
        let volume = plan.volume(plan.capacity);
        assert_eq!(volume.volume_context[CONTEXT_ENCRYPTION], "off");
        assert_eq!(volume.volume_context.len(), 3);

        req.parameters.insert("Encryption".into(), "maybe".into());
        let refused = CreatePlan::from_request(&req).err().unwrap();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().contains("Encryption") && refused.message().contains("maybe"), "{refused:?}");

        use EncryptionPolicy::*;
        for (a, b, want) in [(Off, Required, Required), (IfSupported, Off, IfSupported), (Off, Off, Off)] {
            assert_eq!((stricter(a, b), stricter(b, a)), (want, want));
        }
    }

    #[test]
    fn capacity_rules() {
        let range = |required_bytes, limit_bytes| CapacityRange { required_bytes, limit_bytes };
        assert_eq!(capacity_of(None).unwrap(), (0, 0, 0));
        assert_eq!(capacity_of(Some(&range(5, 10))).unwrap(), (5, 5, 10));
        assert_eq!(capacity_of(Some(&range(0, 10))).unwrap(), (10, 0, 10));
        assert_eq!(capacity_of(Some(&range(11, 10))).unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(capacity_of(Some(&range(-1, 0))).unwrap_err().code(), Code::InvalidArgument);
    }

    #[test]
    fn refusals() {
        let code = |f: &dyn Fn(&mut CreateVolumeRequest)| {
            let mut r = request();
            f(&mut r);
            CreatePlan::from_request(&r).err().map(|s| (s.code(), s.message().to_string()))
        };
        let (c, m) = code(&|r| r.secrets.clear()).unwrap();
        assert_eq!(c, Code::InvalidArgument);
        assert!(m.contains("a provisioner secret is required"), "{m}");
        let (c, m) = code(&|r| {
            r.secrets.remove("username");
        })
        .unwrap();
        assert_eq!(c, Code::InvalidArgument);
        assert!(m.contains("username") && !m.contains("pw"), "{m}");
        assert_eq!(code(&|r| r.name = "a/b".into()).unwrap().0, Code::InvalidArgument);
        assert_eq!(code(&|r| r.name = "x".repeat(129)).unwrap().0, Code::InvalidArgument);
        assert_eq!(code(&|r| r.name = RECORD_DIR.into()).unwrap().0, Code::InvalidArgument);
        assert_eq!(code(&|r| r.volume_capabilities[0].access_mode = None).unwrap().0, Code::InvalidArgument);
        assert_eq!(
            code(&|r| {
                r.mutable_parameters.insert("a".into(), "b".into());
            })
            .unwrap()
            .0,
            Code::InvalidArgument
        );
        let (c, m) = code(&|r| {
            r.volume_content_source = Some(VolumeContentSource {
                r#type: Some(volume_content_source::Type::Volume(volume_content_source::VolumeSource {
                    volume_id: "v1|srv||share|k8s|pvc-1/inner|delete".into(),
                })),
            });
            r.name = "pvc-1x".into();
            r.parameters.insert("subDir".into(), "pvc-1".into());
        })
        .unwrap();
        assert_eq!(c, Code::InvalidArgument, "{m}");
        assert!(m.contains("overlap"), "{m}");
        let (c, _) = code(&|r| {
            r.volume_content_source = Some(VolumeContentSource {
                r#type: Some(volume_content_source::Type::Volume(volume_content_source::VolumeSource {
                    volume_id: "v1|other||share|k8s|src|delete".into(),
                })),
            })
        })
        .unwrap();
        assert_eq!(c, Code::InvalidArgument);
        let (c, _) = code(&|r| {
            r.volume_content_source = Some(VolumeContentSource {
                r#type: Some(volume_content_source::Type::Volume(volume_content_source::VolumeSource {
                    volume_id: "no-such-volume".into(),
                })),
            })
        })
        .unwrap();
        assert_eq!(c, Code::NotFound);
    }

    #[test]
    fn incompatibility() {
        let plan = CreatePlan::from_request(&request()).unwrap();
        let record = VolumeRecord {
            name: "pvc-1".into(),
            volume_id: plan.volume_id.clone(),
            capacity_bytes: 1 << 20,
            content_source: String::new(),
            state: RecordState::Ready,
        };
        assert_eq!(plan.incompatibility(&record), None);
        let bigger = VolumeRecord { capacity_bytes: 2 << 20, ..record.clone() };
        assert_eq!(plan.incompatibility(&bigger), None, "expanded since: still satisfies required");
        let smaller = VolumeRecord { capacity_bytes: 1, ..record.clone() };
        assert!(plan.incompatibility(&smaller).unwrap().contains("capacity"));
        let other = VolumeRecord { volume_id: "v1|srv||share|k8s|pvc-1|retain".into(), ..record };
        assert!(plan.incompatibility(&other).is_some());
    }

    #[test]
    fn in_flight_is_all_or_nothing() {
        let in_flight = InFlight::default();
        let a = in_flight.try_acquire(vec!["name:a".into(), "dir:x".into()]).unwrap();
        assert!(in_flight.try_acquire(vec!["name:b".into(), "dir:x".into()]).is_none());
        let b = in_flight.try_acquire(vec!["name:b".into(), "dir:y".into()]).unwrap();
        drop(a);
        assert!(in_flight.try_acquire(vec!["dir:x".into()]).is_some());
        drop(b);
        assert!(in_flight.0.lock().unwrap().is_empty());
    }

    #[test]
    fn volume_ids() {
        assert_eq!(parse_volume_id("").unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(parse_volume_id(&"v".repeat(129)).unwrap_err().code(), Code::InvalidArgument);
        assert!(parse_volume_id("not-ours").unwrap().is_none());
        assert!(parse_volume_id("srv/share#pvc-1#pvc-1#retain").unwrap().is_some());
        assert_eq!(parse_volume_id("v1|srv||share||.smb3-csi|delete").unwrap_err().code(), Code::InvalidArgument);
        let relaxed = parse_volume_id("v1|srv||share||pvc-1|delete|if-supported").unwrap().unwrap();
        assert_eq!(relaxed.encryption, Some(EncryptionPolicy::IfSupported));
    }
}
