//! The CSI Node service: a volume is a FUSE filesystem served by our SMB3 client, mounted once per node at the
//! staging path and bind-mounted into each pod.
//!
//! # Behaviour the kubelet can rely on
//!
//! - **Capabilities**: STAGE_UNSTAGE_VOLUME, GET_VOLUME_STATS, VOLUME_CONDITION, SINGLE_NODE_MULTI_WRITER,
//!   VOLUME_MOUNT_GROUP. NodeExpandVolume answers UNIMPLEMENTED (a share has no size to grow on the node).
//! - **Where a volume is**: `source` and `subdir` from the volume context (written by the controller, or the
//!   `source`/`subDir` attributes of a static PV, keys case-insensitive), else parsed from the volume id (v1 or
//!   csi-driver-smb handles).
//! - **Encryption**: the volume context's `encryption` (put there by the controller from the StorageClass, or a
//!   static PV's / inline volume's attribute), else the volume id's policy, else the node's `--smb-encryption`;
//!   the `seal` mount option forces `required` whatever they say.
//! - **Credentials**: the node-stage secret (`username`, `password`, optional `domain`, values trimmed). A
//!   reconnect the server refuses (a rotated password) re-reads the volume's Secret through the API: the
//!   `nodeStageSecretRef` of its PV, or an inline volume's `secretName` ([`super::rotation`]).
//! - **Sessions**: one node-wide [`SessionPool`]; volumes with the same server, port, user, domain, password and
//!   client options share one SMB connection and session. `nosharesock` gives a volume a private session.
//! - **Mounts**: the [`FuseMount`]s live in one registry keyed by the path they are mounted at (the staging path,
//!   or the target path of an inline volume). Stage of an already staged, healthy path is a success; a dead one
//!   (ENOTCONN, an SMB client that gave up for good) is unmounted and mounted again. A volume whose connection
//!   is being re-established is healthy: its operations wait (`hard`) or fail in time (`soft`).
//! - **Lost connections**: re-established by the SMB client with the trees and open files of every mount on
//!   them. Meanwhile NodeGetVolumeStats reports the volume abnormal with the reason, and a watcher
//!   ([`NodeService::spawn_connection_watch`]) keeps `smb3_csi_volume_condition_abnormal` and
//!   `smb3_csi_volumes_disconnected` current between the kubelet's calls. Unstage and unpublish are idempotent, clean up
//!   dead and already-unmounted paths, and remove the mount point.
//! - **Concurrency**: one operation at a time per path; a second concurrent call gets ABORTED, which the kubelet
//!   retries.
//! - **Inline ephemeral volumes** (`csi.storage.k8s.io/ephemeral: "true"`): `source`, `secretName`, optional
//!   `subDir` and `mountOptions`; the Secret is read from the pod's namespace through the Kubernetes API
//!   ([`crate::k8s`]). A missing Secret is INVALID_ARGUMENT (the pod spec names something that is not there;
//!   NOT_FOUND would claim the volume does not exist).
//! - **Restarts and upgrades** ([`NodeService::with_restart`]): every stage and publish is recorded in a
//!   state directory (no secrets), every staged mount's /dev/fuse descriptor and node-stage secret go to the
//!   keeper ([`crate::keeper`]); a successor adopts the live mounts, re-stages or cleans up the rest
//!   ([`NodeService::recover`]), and a stopping plugin detaches instead of unmounting
//!   ([`NodeService::detach_all`]). See docs/restart-survival.md.

mod keeper_watch;
mod reconcile;
mod recover;
mod state;

pub use keeper_watch::{next_step, KeeperStep};
pub use reconcile::{decide, decide_publish, Action, MountSeen, Observed, PublishAction};
pub use recover::RecoveryReport;
pub use state::{KeeperRecord, PublishRecord, StageRecord, StateDir, StateError};

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use tonic::{Code, Request, Response, Status};

use super::controller::{is_auth_failure, smb_code, CONTEXT_ENCRYPTION, CONTEXT_SOURCE, CONTEXT_SUBDIR};
use super::health;
use super::locks::{InFlight, InFlightGuard};
use super::proto::node_server::Node;
use super::proto::{
    node_service_capability, volume_capability, volume_usage, NodeGetCapabilitiesRequest, NodeGetCapabilitiesResponse,
    NodeGetInfoRequest, NodeGetInfoResponse, NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse,
    NodePublishVolumeRequest, NodePublishVolumeResponse, NodeServiceCapability, NodeStageVolumeRequest,
    NodeStageVolumeResponse, NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse, NodeUnstageVolumeRequest,
    NodeUnstageVolumeResponse, VolumeCapability, VolumeCondition, VolumeUsage,
};
use super::rotation::{NodeCredentials, SecretLookup, SecretOrigin};
use crate::k8s::{SecretError, SecretReader, SecretRef};
use crate::mount::{self, ConnectTarget, FuseMount, MountError, MountOptions, MountState, FSTYPE};
use crate::volume::{SharePath, ShareUrl, VolumeId};
use smb3::{is_not_found, Client, ClientOptions, Credentials, EncryptionPolicy, SessionPool, ShareTarget, Tree};

/// Volume context key marking an inline ephemeral volume (set by the kubelet).
pub const CONTEXT_EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";
/// Volume context key with the pod's namespace (podInfoOnMount).
pub const CONTEXT_POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
/// Inline volume attribute: the Secret with the credentials, in the pod's namespace.
pub const CONTEXT_SECRET_NAME: &str = "secretName";
/// Inline volume attribute: mount options, comma-separated.
pub const CONTEXT_MOUNT_OPTIONS: &str = "mountOptions";

/// CSI "Size Limits" for ids and paths we accept.
const MAX_ID_LEN: usize = 128;
const MAX_PATH_LEN: usize = 4096;

/// How the node service is set up.
#[derive(Debug)]
pub struct NodeConfig {
    /// NodeGetInfo's node id.
    pub node_id: String,
    /// Kubeconfig for Secret lookups (inline volumes, rotated passwords); `None`: in-cluster (or inferred)
    /// config.
    pub kubeconfig: Option<PathBuf>,
    /// Our CSI driver name: a staged volume's PV is the one with this `spec.csi.driver`.
    pub driver_name: String,
    /// The kubelet's root directory (`--kubelet-dir`, default [`DEFAULT_KUBELET_DIR`]): staging and target
    /// paths outside it are refused, so a CSI call cannot mount over or unmount anything else on the node.
    pub kubelet_dir: PathBuf,
}

/// Where the kubelet keeps pods and plugins unless configured otherwise (`--root-dir`).
pub const DEFAULT_KUBELET_DIR: &str = "/var/lib/kubelet";

/// Restart survival: where the node records its volumes and which keeper holds their connections.
#[derive(Clone, Debug)]
pub struct RestartConfig {
    /// The state directory (records of stages and publishes, FUSE takeover journals).
    pub state_dir: PathBuf,
    /// `None`: no keeper; mounts still end with the process, but the state lets a successor clean up and
    /// re-stage nothing (it has no credentials).
    pub keeper: Option<KeeperConfig>,
}

/// How the node reaches its keeper.
#[derive(Clone, Debug)]
pub struct KeeperConfig {
    /// The keeper's socket.
    pub socket: PathBuf,
    /// Start a keeper when none answers (outside Kubernetes); `None`: another container runs it.
    pub spawn: Option<KeeperSpawn>,
}

/// How a keeper is started by the plugin.
#[derive(Clone, Debug)]
pub struct KeeperSpawn {
    /// The `smb3-csi` binary.
    pub exe: PathBuf,
    /// It exits after this long without mounts or messages.
    pub idle: Duration,
    /// Its output goes here.
    pub log: PathBuf,
}

impl KeeperConfig {
    /// Pings the keeper, starting one if allowed and none answers. Blocking.
    fn ensure(&self) -> Result<crate::keeper::KeeperStatus, crate::keeper::ClientError> {
        match &self.spawn {
            Some(spawn) => crate::keeper::client::ensure_running(&self.socket, &spawn.exe, spawn.idle, &spawn.log),
            None => crate::keeper::client::ping(&self.socket),
        }
    }
}

/// The node's restart machinery, when configured.
struct Survival {
    state: StateDir,
    keeper: Option<KeeperConfig>,
    /// Mount path -> the keeper's record of it (with its secret: memory only), for every mount handed to
    /// the keeper, so a keeper that restarted gets them all back.
    kept: Mutex<BTreeMap<PathBuf, Vec<u8>>>,
}

/// How a mount comes to be.
enum Attach {
    /// mount(2) a new FUSE connection (with a takeover journal in that directory, if any).
    Fresh { journal: Option<PathBuf> },
    /// Serve an initialised connection taken over from an earlier process.
    Adopt { device: OwnedFd, journal: PathBuf },
}

/// A live FUSE mount the node owns.
struct Staged {
    volume_id: String,
    mount: FuseMount,
    tree: Tree,
    /// The volume's directory in the share (`/`-separated, empty for the root).
    dir: String,
    /// The share, for messages: `//server/share/dir`.
    shown: String,
    /// Same flags and fsGroup as the request that created it (for the idempotency check).
    fingerprint: String,
    /// A `nosharesock` volume's own client, kept alive as long as the mount.
    _private: Option<Client>,
    /// The `soft` mount's timeout (`None`: hard), for conditions that say what I/O does meanwhile.
    soft: Option<Duration>,
    /// Where its sessions get credentials on a reconnect (it tracks this volume while mounted).
    credentials: Arc<NodeCredentials>,
    /// The connection watcher found the SMB connection down at its last look.
    down: AtomicBool,
}

/// Answers the Node RPCs. Cheap to clone (all state is shared).
#[derive(Clone)]
pub struct NodeService {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: String,
    /// Node paths must lie below it.
    kubelet_dir: PathBuf,
    pool: SessionPool,
    secrets: Arc<SecretReader>,
    /// Finds a volume's Secret again after a password rotation.
    rotation: Arc<SecretLookup>,
    /// Mount path (staging path or inline target) -> the mount.
    mounts: Mutex<HashMap<PathBuf, Arc<Staged>>>,
    /// Published target -> its staging path (for stats on the target path).
    published: Mutex<HashMap<PathBuf, PathBuf>>,
    /// Paths with a stage, unstage, publish or unpublish in progress.
    busy: InFlight<PathBuf>,
    /// The newest credentials a CSI call brought per (server, port, user): every session of that user on
    /// that server reconnects with them, and re-reads its volumes' Secrets when the server refuses them. One
    /// entry per server and user the node ever mounted for.
    credentials: Mutex<HashMap<CredentialsKey, Arc<NodeCredentials>>>,
    /// Restart survival (state records, keeper), when configured.
    survival: Option<Survival>,
}

/// Server (lower case), port and user (`DOMAIN\user`) of a credentials entry.
type CredentialsKey = (String, u16, String);

impl NodeService {
    /// A node service using `pool` for every shared SMB session (run [`SessionPool::spawn_evictor`] on it:
    /// mounted volumes keep their trees, so only sessions of unstaged volumes are evicted).
    ///
    /// ```no_run
    /// # async fn run() {
    /// use std::time::Duration;
    /// use smb3_csi::csi::node::{NodeConfig, NodeService};
    /// use smb3::{ClientOptions, SessionPool};
    /// let pool = SessionPool::new(ClientOptions::default(), Duration::from_secs(300));
    /// let config = NodeConfig {
    ///     node_id: "node-1".into(),
    ///     kubeconfig: None,
    ///     driver_name: "smb3.csi.dev".into(),
    ///     kubelet_dir: "/var/lib/kubelet".into(),
    /// };
    /// let node = NodeService::new(config, pool);
    /// # }
    /// ```
    pub fn new(config: NodeConfig, pool: SessionPool) -> Self {
        Self::build(config, pool, None)
    }

    /// A node service whose volumes survive its restarts: stages and publishes are recorded in
    /// `restart.state_dir`, staged mounts are registered with the keeper. Call [`NodeService::recover`]
    /// before serving, and [`NodeService::detach_all`] when stopping.
    pub fn with_restart(config: NodeConfig, pool: SessionPool, restart: RestartConfig) -> Result<Self, StateError> {
        let state = StateDir::open(&restart.state_dir)?;
        Ok(Self::build(config, pool, Some(Survival { state, keeper: restart.keeper, kept: Mutex::default() })))
    }

    fn build(config: NodeConfig, pool: SessionPool, survival: Option<Survival>) -> Self {
        let secrets = Arc::new(SecretReader::new(config.kubeconfig));
        NodeService {
            inner: Arc::new(Inner {
                node_id: config.node_id,
                kubelet_dir: config.kubelet_dir,
                pool,
                rotation: SecretLookup::new(secrets.clone(), &config.driver_name),
                secrets,
                mounts: Mutex::default(),
                published: Mutex::default(),
                busy: InFlight::default(),
                credentials: Mutex::default(),
                survival,
            }),
        }
    }

    pub fn pool(&self) -> &SessionPool {
        &self.inner.pool
    }

    /// Looks at every mounted volume's SMB connection `every` so often (until the service is dropped): while
    /// one is down its `volume_condition_abnormal` series is 1 and `volumes_disconnected` counts it, and
    /// the outage is logged once with the volume id when it starts and when it ends. The kubelet's own
    /// NodeGetVolumeStats calls come about once a minute; an outage of seconds would otherwise go unseen.
    pub fn spawn_connection_watch(&self, every: Duration) {
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if !watch_connections(&inner) {
                    return;
                }
            }
        });
    }

    /// Paths where this node service currently holds a FUSE mount, sorted.
    pub fn mounted_paths(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.inner.mounts.lock().unwrap().keys().cloned().collect();
        paths.sort();
        paths
    }

    fn lock(&self, paths: &[&Path]) -> Result<InFlightGuard<PathBuf>, Status> {
        let paths = paths.iter().map(|p| p.to_path_buf()).collect();
        self.inner.busy.acquire(paths, |p| p.display().to_string())
    }

    fn registered(&self, path: &Path) -> Option<Arc<Staged>> {
        self.inner.mounts.lock().unwrap().get(path).cloned()
    }

    /// Removes `path` from the registry and unmounts it (ours or not, dead or alive), then removes the
    /// mount point directory. Never fails for "already gone".
    async fn tear_down(&self, path: &Path) -> Result<(), Status> {
        let (staged, mounted) = {
            let mut mounts = self.inner.mounts.lock().unwrap();
            let staged = mounts.remove(path);
            (staged, mounts.len())
        };
        crate::metrics::set_mounted_volumes(mounted);
        if let Some(staged) = &staged {
            crate::metrics::forget_volume(&staged.volume_id);
            staged.credentials.forget(&staged.volume_id);
        }
        let owned = path.to_path_buf();
        let result = tokio::task::spawn_blocking(move || -> Result<(), MountError> {
            if let Some(staged) = staged {
                match Arc::try_unwrap(staged) {
                    Ok(staged) => {
                        staged.mount.unmount()?;
                    }
                    // A concurrent stats call holds it for a moment; unmounting the path is enough, the
                    // handle's drop then finds nothing mounted.
                    Err(_) => mount::unmount(&owned)?,
                }
            }
            mount::unmount(&owned)
        })
        .await
        .map_err(|e| Status::internal(format!("unmount task failed: {e}")))?;
        result.map_err(|e| Status::internal(format!("unmounting {}: {e}", path.display())))?;
        remove_mount_point(path);
        Ok(())
    }

    /// The credentials source for `creds`' user on `host:port`, updated to `creds`: a CSI call carries the
    /// Secret as it is now, so the newest call wins, and sessions already open reconnect with it after a
    /// password rotation.
    fn remember_credentials(&self, host: &str, port: u16, creds: &Credentials) -> Arc<NodeCredentials> {
        let key = (host.to_ascii_lowercase(), port, creds.display_name());
        let mut book = self.inner.credentials.lock().unwrap();
        match book.get(&key) {
            Some(shared) => {
                if shared.update(creds) {
                    tracing::info!(server = %host, port, user = %key.2, "newer credentials for this server and user");
                }
                shared.clone()
            }
            None => {
                let shared = NodeCredentials::new(host, port, creds, self.inner.rotation.clone());
                book.insert(key, shared.clone());
                shared
            }
        }
    }

    /// Mounts the volume at `at` (a directory, created if missing) and registers it.
    async fn mount_volume(&self, volume_id: &str, at: &Path, plan: MountPlan, attach: Attach) -> Result<(), Status> {
        if matches!(attach, Attach::Fresh { .. }) {
            std::fs::create_dir_all(at)
                .map_err(|e| Status::internal(format!("creating the mount point {}: {e}", at.display())))?;
        }
        let dir = plan.share.base_path().join(&plan.sub_dir).to_string();
        let connect = ConnectTarget::new(&plan.share, &plan.options);
        let target = ShareTarget { path: dir.clone(), ..connect.share.target() };
        let shown = target.to_string();
        let share_root = ShareTarget { path: String::new(), ..target.clone() };
        let pool_options = self.inner.pool.options();
        let volume_options =
            ClientOptions { encryption: plan.encryption.unwrap_or(pool_options.encryption), ..pool_options.clone() };
        // `seal` overrides the volume's policy with `required`; `ip=` and `sec=` as in `connect`.
        let client_options = plan.options.client_options(&volume_options);
        let soft = plan.options.soft_timeout(&volume_options);
        let connecting = format!("connecting to {share_root} as {}", plan.creds.display_name());
        let smb_error = |context: &str, e: &smb3::Error| {
            // The share is named by the volume: a missing one means the volume does not exist.
            Status::new(smb_code(e, Code::NotFound), format!("{context}: {e}"))
        };
        let source = self.remember_credentials(&target.host, target.port, &plan.creds);
        let (tree, private) = if plan.options.nosharesock {
            let client = Client::connect_with_source(&target.host, target.port, source.clone(), &client_options)
                .await
                .map_err(|e| smb_error(&connecting, &e))?;
            let tree = client.tree(&target.share).await.map_err(|e| smb_error(&connecting, &e))?;
            (tree, Some(client))
        } else {
            match self.inner.pool.tree_with_source(&target, &plan.creds, source.clone(), &client_options).await {
                Ok(tree) => (tree, None),
                Err(e) => {
                    if is_auth_failure(&e) {
                        self.inner.pool.invalidate_with(&target, &plan.creds, &client_options);
                    }
                    return Err(smb_error(&connecting, &e));
                }
            }
        };
        let (mount_tree, mount_dir, mount_at, opts) =
            (tree.clone(), dir.clone(), at.to_path_buf(), plan.options.clone());
        let mounted = tokio::task::spawn_blocking(move || match attach {
            Attach::Fresh { journal } => {
                FuseMount::mount_with_state(mount_tree, &mount_dir, &mount_at, &opts, journal.as_deref())
            }
            Attach::Adopt { device, journal } => {
                FuseMount::adopt(mount_tree, &mount_dir, &mount_at, &opts, device, &journal)
            }
        })
        .await
        .map_err(|e| Status::internal(format!("mount task failed: {e}")))?;
        let mount = mounted.map_err(|e| match &e {
            MountError::Smb { source, .. } if is_not_found(source) => {
                Status::not_found(format!("the volume's directory {shown} does not exist on the server"))
            }
            MountError::Smb { source, .. } => smb_error(&format!("mounting {shown}"), source),
            MountError::NotADirectory(_) => Status::failed_precondition(e.to_string()),
            _ => Status::internal(format!("mounting {shown} at {}: {e}", at.display())),
        })?;
        let staged = Staged {
            volume_id: volume_id.to_string(),
            mount,
            tree,
            dir,
            shown,
            fingerprint: plan.fingerprint,
            _private: private,
            soft,
            credentials: source.clone(),
            down: AtomicBool::new(false),
        };
        source.track(volume_id, plan.origin);
        let mounted = {
            let mut mounts = self.inner.mounts.lock().unwrap();
            mounts.insert(at.to_path_buf(), Arc::new(staged));
            mounts.len()
        };
        crate::metrics::set_mounted_volumes(mounted);
        Ok(())
    }

    /// Whether an existing mount at `path` already satisfies the request; cleans up a dead one.
    /// `Ok(true)`: nothing to do.
    async fn reuse_or_clean(&self, path: &Path, volume_id: &str, fingerprint: &str) -> Result<bool, Status> {
        if let Some(staged) = self.registered(path) {
            let state = mount_state(path).await?;
            let alive = staged.mount.is_healthy() && matches!(state, MountState::Mounted { .. });
            if alive {
                if staged.volume_id != volume_id {
                    return Err(Status::already_exists(format!(
                        "{} already has volume {:?} mounted",
                        path.display(),
                        staged.volume_id
                    )));
                }
                if staged.fingerprint != fingerprint {
                    return Err(Status::already_exists(format!(
                        "volume {volume_id:?} is already mounted at {} with other mount options or fsGroup",
                        path.display()
                    )));
                }
                return Ok(true);
            }
            tracing::warn!(path = %path.display(), "mount is dead (FUSE session or SMB connection gone): remounting");
            self.tear_down(path).await?;
            return Ok(false);
        }
        match mount_state(path).await? {
            MountState::NotMounted => Ok(false),
            MountState::Dead => {
                tracing::warn!(path = %path.display(), "a dead mount is left at this path: cleaning it up");
                self.tear_down(path).await?;
                Ok(false)
            }
            MountState::Mounted { fstype, source } if fstype == FSTYPE => {
                // Ours from an earlier process whose session still answers cannot happen (our sessions end
                // with the process); treat it as stale and replace it.
                tracing::warn!(path = %path.display(), %source, "unregistered smb3-csi mount: replacing it");
                self.tear_down(path).await?;
                Ok(false)
            }
            MountState::Mounted { fstype, source } => Err(Status::failed_precondition(format!(
                "{} is already a mount point of {fstype} ({source}), not of this driver",
                path.display()
            ))),
        }
    }

    /// Mounts an inline volume at its target. Its credentials are `known` (a successor staging it again
    /// with what the keeper held) or else read from the Secret its `secretName` names in the pod's namespace.
    async fn publish_inline(
        &self,
        req: &NodePublishVolumeRequest,
        target: &Path,
        known: Option<HashMap<String, String>>,
    ) -> Result<(), Status> {
        let inline = InlineSource::from_request(req)?;
        if self.reuse_or_clean(target, &req.volume_id, &inline.fingerprint).await? {
            return Ok(());
        }
        let data = match known {
            Some(data) => data,
            None => self.read_inline_secret(&inline).await?,
        };
        let plan = inline.plan(&data)?;
        let journal = self.inner.survival.as_ref().map(|s| s.state.journal_dir(target));
        self.mount_volume(&req.volume_id, target, plan, Attach::Fresh { journal }).await?;
        self.remember(StageRecord::from_publish(req), data, target).await;
        Ok(())
    }

    /// The data of an inline volume's Secret, through the Kubernetes API.
    async fn read_inline_secret(&self, inline: &InlineSource) -> Result<HashMap<String, String>, Status> {
        let (namespace, secret_name) = (&inline.secret.namespace, &inline.secret.name);
        self.inner.secrets.get(namespace, secret_name).await.map_err(|e| match e {
            SecretError::NotFound { .. } | SecretError::BadName(_) | SecretError::NotUtf8 { .. } => {
                Status::invalid_argument(format!("inline volume: {e}"))
            }
            SecretError::Forbidden { .. } => Status::permission_denied(format!("inline volume: {e}")),
            SecretError::Config(_) => Status::failed_precondition(format!(
                "inline volume: {e} (inline volumes need the node plugin to reach the Kubernetes API)"
            )),
            SecretError::Api { .. }
            | SecretError::PersistentVolumes { .. }
            | SecretError::PersistentVolumesForbidden { .. } => Status::unavailable(format!("inline volume: {e}")),
        })
    }
}

/// An inline volume's NodePublishVolume request checked: everything but its credentials.
struct InlineSource {
    share: ShareUrl,
    sub_dir: SharePath,
    encryption: Option<EncryptionPolicy>,
    options: MountOptions,
    fingerprint: String,
    /// The Secret with its credentials, in the pod's namespace.
    secret: SecretRef,
}

impl InlineSource {
    fn from_request(req: &NodePublishVolumeRequest) -> Result<InlineSource, Status> {
        let ctx = &req.volume_context;
        let source = context_value(ctx, CONTEXT_SOURCE)
            .ok_or_else(|| Status::invalid_argument("inline volume: volumeAttributes.source is required"))?;
        let secret_name = context_value(ctx, CONTEXT_SECRET_NAME)
            .ok_or_else(|| Status::invalid_argument("inline volume: volumeAttributes.secretName is required"))?;
        let namespace = context_value(ctx, CONTEXT_POD_NAMESPACE).ok_or_else(|| {
            Status::invalid_argument(format!(
                "inline volume: {CONTEXT_POD_NAMESPACE} is missing from the volume context; \
                 set podInfoOnMount: true in the CSIDriver object"
            ))
        })?;
        let share = ShareUrl::parse(source).map_err(|e| Status::invalid_argument(format!("inline volume: {e}")))?;
        let sub_dir = match context_value(ctx, "subdir") {
            Some(s) => SharePath::parse_or_root(s.trim_matches('/'))
                .map_err(|e| Status::invalid_argument(format!("inline volume: subDir: {e}")))?,
            None => SharePath::root(),
        };
        let mut flags = mount_flags(req.volume_capability.as_ref());
        if let Some(extra) = context_value(ctx, CONTEXT_MOUNT_OPTIONS) {
            flags.push(extra.to_string());
        }
        let mut options = parse_options(&flags, req.volume_capability.as_ref())?;
        options.read_only |= req.readonly || is_reader_only(req.volume_capability.as_ref());
        let fingerprint = fingerprint(&options);
        let encryption = encryption_policy(&req.volume_id, ctx)?;
        let secret = SecretRef { namespace: namespace.to_string(), name: secret_name.to_string() };
        Ok(InlineSource { share, sub_dir, encryption, options, fingerprint, secret })
    }

    /// The mount plan with the credentials in `data` (the Secret's data).
    fn plan(self, data: &HashMap<String, String>) -> Result<MountPlan, Status> {
        let creds = super::credentials_from_secrets_for(data, self.options.cruid)?.ok_or_else(|| {
            Status::invalid_argument(format!(
                "inline volume: Secret {}/{} is empty",
                self.secret.namespace, self.secret.name
            ))
        })?;
        Ok(MountPlan {
            share: self.share,
            sub_dir: self.sub_dir,
            encryption: self.encryption,
            options: self.options,
            creds,
            fingerprint: self.fingerprint,
            origin: SecretOrigin::Named(self.secret),
        })
    }
}

/// Everything decided before touching the network.
struct MountPlan {
    share: ShareUrl,
    sub_dir: SharePath,
    /// `None`: the pool's default.
    encryption: Option<EncryptionPolicy>,
    options: MountOptions,
    creds: Credentials,
    fingerprint: String,
    /// Where the credentials are read again after a password rotation.
    origin: SecretOrigin,
}

/// How long NodeGetVolumeStats waits for the share to answer its probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The condition (and usage) from probing a connected volume: its directory's metadata and, when it is a
/// directory, the share's size.
fn probe_condition(
    shown: &str,
    stat: smb3::Result<smb3::Metadata>,
    statfs: Option<smb3::Result<smb3::FsStats>>,
    usage: &mut Vec<VolumeUsage>,
) -> VolumeCondition {
    let abnormal = |message: String| VolumeCondition { abnormal: true, message };
    match (stat, statfs) {
        (Ok(_), Some(Ok(fs))) => {
            let total = i64::try_from(fs.total_bytes).unwrap_or(i64::MAX);
            let available = i64::try_from(fs.available_bytes).unwrap_or(i64::MAX);
            let free = i64::try_from(fs.free_bytes).unwrap_or(i64::MAX);
            usage.push(VolumeUsage {
                available,
                total,
                used: total.saturating_sub(free).max(0),
                unit: volume_usage::Unit::Bytes as i32,
            });
            VolumeCondition { abnormal: false, message: format!("{shown} is reachable") }
        }
        (Ok(_), Some(Err(e))) => abnormal(format!("querying the size of {shown}: {e}")),
        (Ok(_), None) => abnormal(format!("{shown} is no longer a directory on the server")),
        (Err(e), _) if is_not_found(&e) => abnormal(format!("the volume's directory {shown} is gone on the server")),
        (Err(e), _) => abnormal(format!("checking {shown}: {e}")),
    }
}

/// One look of the connection watcher at every mounted volume; `false` once the service is gone.
fn watch_connections(inner: &Weak<Inner>) -> bool {
    let Some(inner) = inner.upgrade() else { return false };
    let staged: Vec<Arc<Staged>> = inner.mounts.lock().unwrap().values().cloned().collect();
    let mut down = 0;
    for s in &staged {
        let state = s.tree.connection_state();
        let is_down = health::is_down(&state);
        down += usize::from(is_down);
        let was_down = s.down.swap(is_down, Ordering::Relaxed);
        if is_down == was_down {
            continue;
        }
        // Back up: normal until the next NodeGetVolumeStats probes the share itself.
        crate::metrics::set_volume_condition(&s.volume_id, is_down);
        match health::disconnected_condition(&state, &s.shown, s.soft, SystemTime::now()) {
            Some(c) => tracing::warn!(volume_id = %s.volume_id, condition = %c.message, "volume abnormal"),
            None => tracing::info!(
                volume_id = %s.volume_id,
                reconnects = s.tree.reconnect_count(),
                "volume's SMB connection re-established"
            ),
        }
    }
    crate::metrics::set_volumes_disconnected(down);
    true
}

/// The server and port a volume's sessions go to (the `port` option overrides the share address's).
fn server_of(share: &ShareUrl, options: &MountOptions) -> (String, u16) {
    let share = ConnectTarget::new(share, options).share;
    (share.server().to_string(), share.port())
}

fn fingerprint(options: &MountOptions) -> String {
    format!("{options:?}")
}

/// Runs a file system call on a path that may be one of our FUSE mounts off the runtime's workers: the FUSE
/// server answering it runs on this same runtime, and a worker blocked in the kernel could hold the very
/// task that would answer.
async fn off_runtime<T: Send + 'static>(
    path: &Path,
    call: impl FnOnce(&Path) -> T + Send + 'static,
) -> Result<T, Status> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || call(&owned))
        .await
        .map_err(|e| Status::internal(format!("file system task for {}: {e}", path.display())))
}

async fn mount_state(path: &Path) -> Result<MountState, Status> {
    off_runtime(path, mount::mount_state)
        .await?
        .map_err(|e| Status::internal(format!("inspecting {}: {e}", path.display())))
}

/// Removes an (unmounted) mount point; a leftover that cannot go is logged, never an error the kubelet would
/// retry forever.
fn remove_mount_point(path: &Path) {
    match std::fs::remove_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not remove the mount point"),
    }
}

/// A volume context value, key matched case-insensitively (csi-driver-smb accepts `subDir` and `subdir`).
fn context_value<'a>(ctx: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    ctx.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.trim()).filter(|v| !v.is_empty())
}

fn check_id(volume_id: &str) -> Result<(), Status> {
    if volume_id.is_empty() {
        return Err(Status::invalid_argument("volume_id is required"));
    }
    if volume_id.len() > MAX_ID_LEN {
        return Err(Status::invalid_argument(format!(
            "volume_id is {} bytes; CSI allows at most {MAX_ID_LEN}",
            volume_id.len()
        )));
    }
    Ok(())
}

/// An absolute, normal path (no `.`/`..`, no NUL): kubelet paths are always of that form, and anything else
/// could point a mount somewhere unintended.
fn check_path<'a>(field: &str, path: &'a str) -> Result<&'a Path, Status> {
    if path.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    if path.len() > MAX_PATH_LEN || path.contains('\0') {
        return Err(Status::invalid_argument(format!("{field} is not a usable path")));
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(Status::invalid_argument(format!("{field} {path:?} must be an absolute path")));
    }
    // `Path::components` drops interior `.`, so look at the text.
    if path.split('/').any(|c| c == "." || c == "..") {
        return Err(Status::invalid_argument(format!("{field} {path:?} must not contain . or .. components")));
    }
    if p == Path::new("/") {
        return Err(Status::invalid_argument(format!("{field} must not be /")));
    }
    Ok(p)
}

/// A node path from a CSI call: [`check_path`], and below the kubelet directory.
fn check_node_path<'a>(field: &str, path: &'a str, kubelet_dir: &Path) -> Result<&'a Path, Status> {
    let p = check_path(field, path)?;
    // Component-wise, and `..` is refused above, so `/var/lib/kubelet-evil` or `/var/lib/kubelet/../x` fail.
    if !p.starts_with(kubelet_dir) || p == kubelet_dir {
        return Err(Status::invalid_argument(format!(
            "{field} {path:?} is outside the kubelet directory {} (--kubelet-dir)",
            kubelet_dir.display()
        )));
    }
    Ok(p)
}

/// A mount capability with a known access mode.
fn check_capability(capability: Option<&VolumeCapability>) -> Result<&VolumeCapability, Status> {
    let capability = capability.ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
    match capability.access_type {
        Some(volume_capability::AccessType::Mount(_)) => {}
        // The spec's "Exceeds capabilities" for the node RPCs: FAILED_PRECONDITION.
        Some(volume_capability::AccessType::Block(_)) => return Err(Status::failed_precondition(
            "volume_capability: block access is not supported; SMB volumes are filesystems (volumeMode: Filesystem)",
        )),
        None => return Err(Status::invalid_argument("volume_capability: access_type is required (mount)")),
    }
    let mode = capability.access_mode.as_ref().map(|m| m.mode).unwrap_or_default();
    let known = volume_capability::access_mode::Mode::try_from(mode)
        .ok()
        .filter(|m| *m != volume_capability::access_mode::Mode::Unknown);
    if known.is_none() {
        return Err(Status::invalid_argument("volume_capability: access_mode is required"));
    }
    Ok(capability)
}

fn mount_flags(capability: Option<&VolumeCapability>) -> Vec<String> {
    match capability.and_then(|c| c.access_type.as_ref()) {
        Some(volume_capability::AccessType::Mount(m)) => m.mount_flags.clone(),
        _ => Vec::new(),
    }
}

fn is_reader_only(capability: Option<&VolumeCapability>) -> bool {
    use volume_capability::access_mode::Mode;
    let mode = capability.and_then(|c| c.access_mode.as_ref()).map(|m| m.mode).unwrap_or_default();
    matches!(Mode::try_from(mode), Ok(Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly))
}

/// Mount flags and fsGroup into typed options; one warning line lists the kernel-only flags that are ignored.
fn parse_options(flags: &[String], capability: Option<&VolumeCapability>) -> Result<MountOptions, Status> {
    let (mut options, ignored) =
        MountOptions::parse(flags).map_err(|e| Status::invalid_argument(format!("mount options: {e}")))?;
    if !ignored.is_empty() {
        tracing::warn!(ignored = ignored.join(","), "kernel cifs mount options have no meaning here and are ignored");
    }
    let group = match capability.and_then(|c| c.access_type.as_ref()) {
        Some(volume_capability::AccessType::Mount(m)) => m.volume_mount_group.trim(),
        _ => "",
    };
    if !group.is_empty() {
        let gid = group.parse::<u32>().ok().filter(|g| *g != u32::MAX).ok_or_else(|| {
            Status::invalid_argument(format!("volume_mount_group {group:?} is not a numeric group id"))
        })?;
        options.apply_fs_group(gid);
    }
    Ok(options)
}

/// Where a staged volume is: the volume context (dynamic volumes, static PVs), else the volume id.
fn locate(volume_id: &str, ctx: &HashMap<String, String>) -> Result<(ShareUrl, SharePath), Status> {
    if let Some(source) = context_value(ctx, CONTEXT_SOURCE) {
        let share = ShareUrl::parse(source).map_err(|e| Status::invalid_argument(format!("volume context: {e}")))?;
        let sub_dir = match context_value(ctx, CONTEXT_SUBDIR) {
            Some(s) => SharePath::parse_or_root(s.trim_matches('/'))
                .map_err(|e| Status::invalid_argument(format!("volume context: subdir: {e}")))?,
            None => SharePath::root(),
        };
        return Ok((share, sub_dir));
    }
    let id = VolumeId::parse(volume_id).map_err(|e| {
        Status::invalid_argument(format!("no source in the volume context and the volume id is not one of ours: {e}"))
    })?;
    Ok((id.share, id.sub_dir))
}

/// The volume's encryption policy: the volume context's `encryption` (any key case), else the v1 volume id's.
fn encryption_policy(volume_id: &str, ctx: &HashMap<String, String>) -> Result<Option<EncryptionPolicy>, Status> {
    if let Some(value) = context_value(ctx, CONTEXT_ENCRYPTION) {
        return crate::volume::params::parse_encryption(value).map(Some).ok_or_else(|| {
            Status::invalid_argument(format!(
                "volume context: {CONTEXT_ENCRYPTION} {value:?} is not one of required, if-supported, off"
            ))
        });
    }
    Ok(VolumeId::parse(volume_id).ok().and_then(|id| id.encryption))
}

/// NodeGetVolumeStats' volume path and optional staging path. Only a missing field is INVALID_ARGUMENT: any
/// other id or path (too long, relative, with `..`) names nothing this node mounted, which the spec answers
/// with NOT_FOUND; an unusable staging path (optional) is simply not looked at.
fn stats_paths<'a>(
    req: &'a NodeGetVolumeStatsRequest,
    kubelet_dir: &Path,
) -> Result<(&'a Path, Option<&'a Path>), Status> {
    if req.volume_id.is_empty() {
        return Err(Status::invalid_argument("volume_id is required"));
    }
    if req.volume_path.is_empty() {
        return Err(Status::invalid_argument("volume_path is required"));
    }
    let volume_path = check_node_path("volume_path", &req.volume_path, kubelet_dir).map_err(|e| {
        Status::not_found(format!(
            "volume {:?} is not mounted at {:?}: {}",
            req.volume_id,
            req.volume_path,
            e.message()
        ))
    })?;
    Ok((volume_path, check_node_path("staging_target_path", &req.staging_target_path, kubelet_dir).ok()))
}

/// NodeStageVolume's request checked and turned into a plan: the staging path and what to mount there.
fn stage_plan(req: &NodeStageVolumeRequest) -> Result<(&Path, MountPlan), Status> {
    check_id(&req.volume_id)?;
    let staging = check_path("staging_target_path", &req.staging_target_path)?;
    let capability = check_capability(req.volume_capability.as_ref())?;
    let (share, sub_dir) = locate(&req.volume_id, &req.volume_context)?;
    let encryption = encryption_policy(&req.volume_id, &req.volume_context)?;
    let options = parse_options(&mount_flags(Some(capability)), Some(capability))?;
    let creds = super::credentials_from_secrets_for(&req.secrets, options.cruid)?.ok_or_else(|| {
        Status::invalid_argument(
            "a node-stage secret is required: set csi.storage.k8s.io/node-stage-secret-name and \
             -namespace in the StorageClass (or nodeStageSecretRef in the PV) to a Secret with username, \
             password and optionally domain, or a Kerberos credential cache under krb5cc_<uid>",
        )
    })?;
    let fingerprint = fingerprint(&options);
    let origin = SecretOrigin::StagedVolume;
    Ok((staging, MountPlan { share, sub_dir, encryption, options, creds, fingerprint, origin }))
}

fn is_ephemeral(ctx: &HashMap<String, String>) -> bool {
    context_value(ctx, CONTEXT_EPHEMERAL).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        let (staging, plan) = {
            check_node_path("staging_target_path", &req.staging_target_path, &self.inner.kubelet_dir)?;
            stage_plan(&req)?
        };
        let _guard = self.lock(&[staging])?;
        let (host, port) = server_of(&plan.share, &plan.options);
        self.remember_credentials(&host, port, &plan.creds);
        if self.reuse_or_clean(staging, &req.volume_id, &plan.fingerprint).await? {
            tracing::info!(staging = %staging.display(), "already staged and healthy");
            // The newest secret goes to the keeper (a rotated password) and the record is current.
            self.remember_stage(&req, staging).await;
            return Ok(Response::new(NodeStageVolumeResponse {}));
        }
        let journal = self.inner.survival.as_ref().map(|s| s.state.journal_dir(staging));
        self.mount_volume(&req.volume_id, staging, plan, Attach::Fresh { journal }).await?;
        self.remember_stage(&req, staging).await;
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        check_id(&req.volume_id)?;
        let staging = check_node_path("staging_target_path", &req.staging_target_path, &self.inner.kubelet_dir)?;
        let _guard = self.lock(&[staging])?;
        self.tear_down(staging).await?;
        self.forget_stage(staging).await;
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        check_id(&req.volume_id)?;
        let target = check_node_path("target_path", &req.target_path, &self.inner.kubelet_dir)?;
        let capability = check_capability(req.volume_capability.as_ref())?;
        if is_ephemeral(&req.volume_context) {
            let _guard = self.lock(&[target])?;
            self.publish_inline(&req, target, None).await?;
            return Ok(Response::new(NodePublishVolumeResponse {}));
        }
        // With STAGE_UNSTAGE_VOLUME, a missing staging path is the spec's "Staging target path not set".
        if req.staging_target_path.is_empty() {
            return Err(Status::failed_precondition("staging_target_path is required (NodeStageVolume first)"));
        }
        let staging = check_node_path("staging_target_path", &req.staging_target_path, &self.inner.kubelet_dir)?;
        if staging == target {
            return Err(Status::invalid_argument("target_path and staging_target_path must differ"));
        }
        let read_only = req.readonly || is_reader_only(Some(capability));
        // A node-publish secret (nodePublishSecretRef) is as current as a node-stage one. Publish never
        // needed it, so one it cannot use is not an error.
        let publish_secret = super::credentials_from_secrets(&req.secrets).ok().flatten();
        if let (Some(creds), Ok((share, _))) = (publish_secret, locate(&req.volume_id, &req.volume_context)) {
            if let Ok(options) = parse_options(&mount_flags(Some(capability)), Some(capability)) {
                let (host, port) = server_of(&share, &options);
                self.remember_credentials(&host, port, &creds);
            }
        }
        let _guard = self.lock(&[target])?;
        let staged = self.registered(staging).ok_or_else(|| {
            Status::failed_precondition(format!(
                "volume {:?} is not staged at {} (NodeStageVolume first)",
                req.volume_id,
                staging.display()
            ))
        })?;
        if staged.volume_id != req.volume_id {
            return Err(Status::failed_precondition(format!(
                "{} holds volume {:?}, not {:?}",
                staging.display(),
                staged.volume_id,
                req.volume_id
            )));
        }
        match mount_state(target).await? {
            MountState::Mounted { .. } => {
                let published = self.inner.published.lock().unwrap().get(target).cloned();
                if published.as_deref() == Some(staging) {
                    let is_ro = off_runtime(target, nix::sys::statvfs::statvfs)
                        .await?
                        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
                        .unwrap_or(read_only);
                    if is_ro != read_only {
                        return Err(Status::already_exists(format!(
                            "{} is already published {}",
                            target.display(),
                            if is_ro { "read-only" } else { "read-write" }
                        )));
                    }
                    return Ok(Response::new(NodePublishVolumeResponse {}));
                }
                return Err(Status::already_exists(format!(
                    "{} is already a mount point of something else",
                    target.display()
                )));
            }
            MountState::Dead => {
                tracing::warn!(target = %target.display(), "dead bind mount at the target: replacing it");
                mount::unmount(target)
                    .map_err(|e| Status::internal(format!("unmounting {}: {e}", target.display())))?;
            }
            MountState::NotMounted => {}
        }
        std::fs::create_dir_all(target)
            .map_err(|e| Status::internal(format!("creating the target {}: {e}", target.display())))?;
        let source = staging.to_path_buf();
        off_runtime(target, move |t| mount::bind_mount(&source, t, read_only))
            .await?
            .map_err(|e| Status::internal(e.to_string()))?;
        self.inner.published.lock().unwrap().insert(target.to_path_buf(), staging.to_path_buf());
        if let Some(survival) = &self.inner.survival {
            let record = PublishRecord {
                volume_id: req.volume_id.clone(),
                target_path: target.to_path_buf(),
                staging_path: staging.to_path_buf(),
                read_only,
            };
            if let Err(e) = survival.state.save_publish(&record) {
                tracing::warn!(error = %e, "the publish is not recorded: a restarted plugin will not know it");
            }
        }
        tracing::info!(staging = %staging.display(), target = %target.display(), read_only, "published");
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        check_id(&req.volume_id)?;
        let target = check_node_path("target_path", &req.target_path, &self.inner.kubelet_dir)?;
        let _guard = self.lock(&[target])?;
        self.inner.published.lock().unwrap().remove(target);
        // An inline volume is mounted at its target and recorded like a stage.
        let inline = self.registered(target).is_some();
        self.tear_down(target).await?;
        if inline {
            self.forget_stage(target).await;
        }
        if let Some(survival) = &self.inner.survival {
            if let Err(e) = survival.state.remove_publish(target) {
                tracing::warn!(error = %e, "could not remove the publish record");
            }
        }
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        let (volume_path, staging) = stats_paths(&req, &self.inner.kubelet_dir)?;
        let published = self.inner.published.lock().unwrap().get(volume_path).cloned();
        let staged = [staging.map(Path::to_path_buf), Some(volume_path.to_path_buf()), published]
            .into_iter()
            .flatten()
            .find_map(|p| self.registered(&p))
            .filter(|s| s.volume_id == req.volume_id)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "volume {:?} is not mounted by this node at {}",
                    req.volume_id,
                    volume_path.display()
                ))
            })?;
        // First, without touching the mount: a hard mount's operations (a stat of volume_path too) wait
        // while the connection is down, and the kubelet wants an answer now.
        let disconnected = health::disconnected_condition(
            &staged.tree.connection_state(),
            &staged.shown,
            staged.soft,
            SystemTime::now(),
        );
        if disconnected.is_none()
            && !off_runtime(volume_path, |p| p.exists()).await?
            && !matches!(mount_state(volume_path).await?, MountState::Dead)
        {
            return Err(Status::not_found(format!("volume_path {} does not exist", volume_path.display())));
        }

        let mut usage = Vec::new();
        let condition = if let Some(condition) = disconnected {
            condition
        } else if !staged.mount.is_session_running() || matches!(mount_state(volume_path).await?, MountState::Dead) {
            VolumeCondition {
                abnormal: true,
                message: format!("the FUSE mount at {} no longer answers", volume_path.display()),
            }
        } else {
            // A hard mount's request waits for a connection lost meanwhile: answer the kubelet in time.
            let probe = async {
                let stat = staged.tree.stat(&staged.dir).await;
                let statfs = match &stat {
                    Ok(meta) if meta.is_dir() => Some(staged.tree.statfs().await),
                    _ => None,
                };
                (stat, statfs)
            };
            match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                Err(_) => VolumeCondition {
                    abnormal: true,
                    message: format!("{} did not answer within {}s", staged.shown, PROBE_TIMEOUT.as_secs()),
                },
                Ok((stat, statfs)) => probe_condition(&staged.shown, stat, statfs, &mut usage),
            }
        };
        crate::metrics::set_volume_condition(&req.volume_id, condition.abnormal);
        Ok(Response::new(NodeGetVolumeStatsResponse { usage, volume_condition: Some(condition) }))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::rpc::Type;
        let capabilities = [
            Type::StageUnstageVolume,
            Type::GetVolumeStats,
            Type::VolumeCondition,
            Type::SingleNodeMultiWriter,
            Type::VolumeMountGroup,
        ]
        .into_iter()
        .map(|t| NodeServiceCapability {
            r#type: Some(node_service_capability::Type::Rpc(node_service_capability::Rpc { r#type: t as i32 })),
        })
        .collect();
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(
        &self,
        _request: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.inner.node_id.clone(),
            // No per-node limit: every volume is a FUSE mount over a shared session.
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn encryption_from_context_attributes_or_id() {
        let policy = |id: &str, pairs: &[(&str, &str)]| encryption_policy(id, &ctx(pairs));
        assert_eq!(
            policy("v1|srv||share||pvc-1|delete", &[("encryption", "off")]).unwrap(),
            Some(EncryptionPolicy::Off)
        );
        // Static PV / inline attributes: any key case, value case-insensitive.
        assert_eq!(policy("static-1", &[("Encryption", "If-Supported")]).unwrap(), Some(EncryptionPolicy::IfSupported));
        // The context wins over the id; without it the id's policy applies; without both the node default.
        let relaxed_id = "v1|srv||share||pvc-1|delete|off";
        assert_eq!(policy(relaxed_id, &[("encryption", "required")]).unwrap(), Some(EncryptionPolicy::Required));
        assert_eq!(policy(relaxed_id, &[("source", "//srv/share")]).unwrap(), Some(EncryptionPolicy::Off));
        assert_eq!(policy("v1|srv||share||pvc-1|delete", &[]).unwrap(), None);
        assert_eq!(policy("srv/share#pvc-3#pvc-3#retain", &[]).unwrap(), None);
        assert_eq!(policy("static-1", &[("encryption", " ")]).unwrap(), None);
        let bad = policy(relaxed_id, &[("encryption", "sometimes")]).unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert!(bad.message().contains("encryption \"sometimes\""), "{}", bad.message());
    }

    #[test]
    fn locate_from_context_static_attributes_and_ids() {
        let (share, sub) = locate("whatever", &ctx(&[("source", "//srv/share/base"), ("subdir", "pvc-1")])).unwrap();
        assert_eq!((share.server(), share.share()), ("srv", "share"));
        assert_eq!(share.base_path().join(&sub).to_string(), "base/pvc-1");
        // Static PV attributes as csi-driver-smb users write them.
        let (share, sub) = locate("static-1", &ctx(&[("Source", "//srv:4450/data"), ("subDir", "/a/b/")])).unwrap();
        assert_eq!((share.port(), sub.to_string().as_str()), (4450, "a/b"));
        let (share, sub) = locate("v1|srv||share|k8s|pvc-2|delete", &HashMap::new()).unwrap();
        assert_eq!((share.share(), share.base_path().join(&sub).to_string().as_str()), ("share", "k8s/pvc-2"));
        let (share, sub) = locate("srv/share#pvc-3#pvc-3#retain", &HashMap::new()).unwrap();
        assert_eq!((share.server(), sub.to_string().as_str()), ("srv", "pvc-3"));
        for (id, c) in [
            ("not-an-id", HashMap::new()),
            ("x", ctx(&[("source", "srv/share")])),
            ("x", ctx(&[("source", "//srv/share"), ("subdir", "../escape")])),
        ] {
            assert_eq!(locate(id, &c).unwrap_err().code(), Code::InvalidArgument, "{id} {c:?}");
        }
    }

    #[test]
    fn paths_ids_and_capabilities_are_checked() {
        let kubelet = Path::new(DEFAULT_KUBELET_DIR);
        assert!(check_node_path("p", "/var/lib/kubelet/x", kubelet).is_ok());
        for bad in [
            "",
            "relative/x",
            "/a/../b",
            "/a/./b",
            "/",
            "/a\0b",
            "/var/lib/kubelet",
            "/var/lib/kubelet-x/y",
            "/var/lib/kubelet/../../etc",
            "/etc/x",
        ] {
            assert_eq!(check_node_path("p", bad, kubelet).unwrap_err().code(), Code::InvalidArgument, "{bad:?}");
        }
        assert!(check_id("").is_err());
        assert!(check_id(&"x".repeat(129)).is_err());
        assert!(check_capability(None).is_err());
        let block = VolumeCapability {
            access_type: Some(volume_capability::AccessType::Block(volume_capability::BlockVolume {})),
            access_mode: Some(volume_capability::AccessMode { mode: 1 }),
        };
        assert!(check_capability(Some(&block)).unwrap_err().message().contains("block"));
        let no_mode = VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(Default::default())),
            access_mode: None,
        };
        assert!(check_capability(Some(&no_mode)).unwrap_err().message().contains("access_mode"));
    }

    #[test]
    fn options_and_fs_group() {
        let cap = |flags: &[&str], group: &str| VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(volume_capability::MountVolume {
                fs_type: String::new(),
                mount_flags: flags.iter().map(|s| s.to_string()).collect(),
                volume_mount_group: group.to_string(),
            })),
            access_mode: Some(volume_capability::AccessMode { mode: 5 }),
        };
        let c = cap(&["uid=1000", "file_mode=0600", "mfsymlinks"], "3000");
        let o = parse_options(&mount_flags(Some(&c)), Some(&c)).unwrap();
        assert_eq!((o.uid, o.gid, o.file_mode), (1000, 3000, 0o660));
        let c = cap(&["uid=bob"], "");
        let err = parse_options(&mount_flags(Some(&c)), Some(&c)).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("uid"));
        let c = cap(&[], "staff");
        assert_eq!(parse_options(&[], Some(&c)).unwrap_err().code(), Code::InvalidArgument);
    }

    #[test]
    fn secrets_are_trimmed_and_required_keys_named() {
        let creds = crate::csi::credentials_from_secrets(&ctx(&[
            ("Username", " bob \n"),
            ("password", "pw\n"),
            ("domain", "CORP"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(creds.display_name(), "CORP\\bob");
        assert!(crate::csi::credentials_from_secrets(&HashMap::new()).unwrap().is_none());
        let err = crate::csi::credentials_from_secrets(&ctx(&[("password", "hunter2")])).unwrap_err();
        assert!(err.message().contains("username") && !err.message().contains("hunter2"));
        assert!(crate::csi::credentials_from_secrets(&ctx(&[("username", "bob")]))
            .unwrap_err()
            .message()
            .contains("password"));
    }
}
