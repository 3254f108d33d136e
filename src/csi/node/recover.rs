//! The node service's side of restart survival: recording stages with the state directory and the keeper
//! as they happen, taking everything back at startup ([`NodeService::recover`]: adopt, re-stage or clean
//! up per [`super::reconcile`]), and stopping without unmounting ([`NodeService::detach_all`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::Request;

use super::reconcile::{decide, decide_publish, Action, MountSeen, Observed, PublishAction};
use super::state::{KeeperRecord, PublishRecord, StageRecord};
use super::{stage_plan, AsFd, Attach, KeeperConfig, NodeService, OwnedFd, Staged, Status, FSTYPE};
use crate::csi::proto::node_server::Node;
use crate::csi::proto::{volume_capability, NodePublishVolumeRequest, NodeStageVolumeRequest, VolumeCapability};
use crate::keeper::{client, HeldMount};
use crate::mount::{self, MountInfo};

/// What [`NodeService::recover`] did, volume by volume (for logs and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Staging path -> what was decided (an adoption that failed and fell back shows the fallback).
    pub staged: BTreeMap<PathBuf, Action>,
    /// Target path -> what was decided.
    pub published: BTreeMap<PathBuf, PublishAction>,
}

impl StageRecord {
    /// The non-secret part of a NodeStageVolume request.
    pub fn from_request(req: &NodeStageVolumeRequest) -> StageRecord {
        StageRecord::from_parts(
            &req.volume_id,
            &req.staging_target_path,
            &req.volume_context,
            req.volume_capability.as_ref(),
            false,
        )
    }

    /// The non-secret part of an inline volume's NodePublishVolume request (mounted at its target path).
    pub fn from_publish(req: &NodePublishVolumeRequest) -> StageRecord {
        StageRecord::from_parts(
            &req.volume_id,
            &req.target_path,
            &req.volume_context,
            req.volume_capability.as_ref(),
            req.readonly,
        )
    }

    /// The fields both requests share; `path` is where the FUSE file system is mounted.
    fn from_parts(
        volume_id: &str,
        path: &str,
        volume_context: &HashMap<String, String>,
        capability: Option<&VolumeCapability>,
        read_only: bool,
    ) -> StageRecord {
        let (mount_flags, volume_mount_group) = match capability.and_then(|c| c.access_type.as_ref()) {
            Some(volume_capability::AccessType::Mount(m)) => (m.mount_flags.clone(), m.volume_mount_group.clone()),
            _ => (Vec::new(), String::new()),
        };
        StageRecord {
            volume_id: volume_id.to_string(),
            staging_path: PathBuf::from(path),
            volume_context: volume_context.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            mount_flags,
            volume_mount_group,
            access_mode: capability.and_then(|c| c.access_mode.as_ref()).map_or(0, |m| m.mode),
            read_only,
        }
    }

    /// Whether this records an inline ephemeral volume (mounted at a pod's target by NodePublishVolume).
    pub fn is_inline(&self) -> bool {
        self.volume_context
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case(super::CONTEXT_EPHEMERAL) && v.trim().eq_ignore_ascii_case("true"))
    }

    /// The inline volume's NodePublishVolume request this record came from (its Secret is not in it).
    pub fn to_publish_request(&self) -> NodePublishVolumeRequest {
        NodePublishVolumeRequest {
            volume_id: self.volume_id.clone(),
            publish_context: HashMap::new(),
            staging_target_path: String::new(),
            target_path: self.staging_path.display().to_string(),
            volume_capability: Some(self.capability()),
            readonly: self.read_only,
            secrets: HashMap::new(),
            volume_context: self.volume_context.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    fn capability(&self) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(volume_capability::MountVolume {
                fs_type: String::new(),
                mount_flags: self.mount_flags.clone(),
                volume_mount_group: self.volume_mount_group.clone(),
            })),
            access_mode: Some(volume_capability::AccessMode { mode: self.access_mode }),
        }
    }

    /// The NodeStageVolume request this record came from, with `secrets` put back.
    pub fn to_request(&self, secrets: HashMap<String, String>) -> NodeStageVolumeRequest {
        NodeStageVolumeRequest {
            volume_id: self.volume_id.clone(),
            publish_context: HashMap::new(),
            staging_target_path: self.staging_path.display().to_string(),
            volume_capability: Some(self.capability()),
            secrets,
            volume_context: self.volume_context.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }
}

/// Runs mount-table work on `path` off the runtime's workers (the FUSE servers run on them).
async fn blocking_fs(
    path: &Path,
    work: impl FnOnce(&Path) -> Result<(), String> + Send + 'static,
) -> Result<(), String> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || work(&owned)).await.map_err(|e| e.to_string())?
}

/// Runs a blocking keeper request off the runtime's workers.
pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(format!("keeper task failed: {e}")))
}

impl NodeService {
    /// Records a (new or confirmed) stage: its record in the state directory, its descriptor and secret
    /// with the keeper. Failures are logged: the volume works, only its survival of a restart is at stake.
    pub(super) async fn remember_stage(&self, req: &NodeStageVolumeRequest, staging: &Path) {
        self.remember(StageRecord::from_request(req), req.secrets.clone(), staging).await;
    }

    /// Records the mount at `path` (a staged volume, or an inline one at its target) with the state directory
    /// and hands it to the keeper: `record` on disk, `record` and `secrets` in the keeper's memory beside a
    /// duplicate of the mount's descriptor. The plugin keeps the keeper's record too, to hand it over again
    /// to a keeper that restarted ([`NodeService::spawn_keeper_watch`]).
    pub(super) async fn remember(&self, record: StageRecord, secrets: HashMap<String, String>, path: &Path) {
        let Some(survival) = &self.inner.survival else { return };
        if let Err(e) = survival.state.save_stage(&record) {
            tracing::warn!(error = %e, "the volume is not recorded: a restarted plugin will not know it");
        }
        if survival.keeper.is_none() {
            return;
        }
        let bytes = KeeperRecord { stage: record, secrets }.to_bytes();
        survival.kept.lock().unwrap().insert(path.to_path_buf(), bytes.clone());
        self.hand_to_keeper(path, bytes).await;
    }

    /// Registers the mount at `path` with the keeper (starting one where allowed). Logged, never an error.
    pub(super) async fn hand_to_keeper(&self, path: &Path, record: Vec<u8>) -> bool {
        let Some(keeper) = self.inner.survival.as_ref().and_then(|s| s.keeper.as_ref()) else { return false };
        let Some(staged) = self.registered(path) else { return false };
        let device = match staged.mount.device().try_clone_to_owned() {
            Ok(device) => device,
            Err(e) => {
                tracing::warn!(error = %e, "could not duplicate the mount's /dev/fuse descriptor for the keeper");
                return false;
            }
        };
        let (keeper, key) = (keeper.clone(), path.display().to_string());
        let registered = blocking(move || {
            keeper.ensure()?;
            client::register(&keeper.socket, &key, record, device.as_fd())
        })
        .await;
        match registered {
            Ok(Ok(())) => {
                tracing::debug!(path = %path.display(), "mount registered with the keeper");
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the keeper does not hold this mount: it will not survive a restart");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e.message(), "registering with the keeper");
                false
            }
        }
    }

    /// Drops a stage from the state directory and the keeper (unstaged, or found gone).
    pub(super) async fn forget_stage(&self, staging: &Path) {
        let Some(survival) = &self.inner.survival else { return };
        survival.kept.lock().unwrap().remove(staging);
        if let Err(e) = survival.state.remove_stage(staging) {
            tracing::warn!(error = %e, "could not remove the stage record");
        }
        if let Some(keeper) = &survival.keeper {
            forget_in_keeper(keeper, staging).await;
        }
    }

    /// Takes over what an earlier plugin process left: fetches every mount the keeper (and a predecessor
    /// pod's keeper next to it) holds, reads the state records and the mount table, and for each staged
    /// volume adopts the live FUSE connection, cleans up a dead one, stages it again when its secret is at
    /// hand, or forgets it; publishes follow their volume. Call before serving CSI. Without restart
    /// survival configured it does nothing.
    pub async fn recover(&self) -> RecoveryReport {
        let mut report = RecoveryReport::default();
        let Some(survival) = &self.inner.survival else { return report };
        let held = match &survival.keeper {
            Some(keeper) => fetch_everywhere(keeper).await,
            None => HashMap::new(),
        };
        let mut records: BTreeMap<PathBuf, StageRecord> = BTreeMap::new();
        match survival.state.stages() {
            Ok(stages) => records.extend(stages.into_iter().map(|r| (r.staging_path.clone(), r))),
            Err(e) => tracing::warn!(error = %e, "reading the stage records"),
        }
        // The keeper's records are a superset of the state's (a wiped state directory loses nothing).
        let mut secrets: HashMap<PathBuf, (HashMap<String, String>, Option<OwnedFd>)> = HashMap::new();
        for (key, held) in held {
            let path = PathBuf::from(&key);
            match KeeperRecord::from_bytes(&held.record) {
                Some(record) => {
                    records.entry(path.clone()).or_insert(record.stage);
                    secrets.insert(path, (record.secrets, Some(held.device)));
                }
                None => {
                    tracing::warn!(key, "the keeper's record of this mount is not readable by this version");
                    records.entry(path.clone()).or_insert_with(|| unknown_record(&path));
                    secrets.insert(path, (HashMap::new(), Some(held.device)));
                }
            }
        }
        let table = mount::mounts().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading the mount table");
            Vec::new()
        });
        for (staging, record) in records {
            let (secret, device) = secrets.remove(&staging).unwrap_or_default();
            let seen = match mount_entry(&table, &staging) {
                None => MountSeen::Absent,
                Some(m) if m.fstype == FSTYPE => MountSeen::Ours,
                Some(_) => MountSeen::Foreign,
            };
            let observed =
                Observed { keeper_holds_device: device.is_some(), credentials: !secret.is_empty(), mount: seen };
            let action = decide(observed);
            tracing::info!(staging = %staging.display(), volume_id = %record.volume_id, ?observed, ?action, "recovering a staged volume");
            let done = self.carry_out(action, &record, secret, device, &table).await;
            report.staged.insert(staging, done);
        }
        let publishes = survival.state.publishes().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading the publish records");
            Vec::new()
        });
        for publish in publishes {
            let stage = report.staged.get(&publish.staging_path).copied();
            let ours = mount_entry(&table, &publish.target_path).is_some_and(|m| m.fstype == FSTYPE);
            let action = decide_publish(stage, ours);
            tracing::info!(target = %publish.target_path.display(), ?action, "recovering a publish");
            self.carry_out_publish(action, &publish).await;
            report.published.insert(publish.target_path.clone(), action);
        }
        crate::metrics::set_mounted_volumes(self.inner.mounts.lock().unwrap().len());
        report
    }

    /// Does `action` for one staged volume; returns what was finally done.
    async fn carry_out(
        &self,
        action: Action,
        record: &StageRecord,
        secrets: HashMap<String, String>,
        device: Option<OwnedFd>,
        table: &[MountInfo],
    ) -> Action {
        let Some(survival) = self.inner.survival.as_ref() else { return action };
        let staging = record.staging_path.as_path();
        match action {
            Action::Adopt => {
                let Some(device) = device else { return self.restage(record, secrets, Action::Restage).await };
                match self.adopt(record, secrets.clone(), device).await {
                    Ok(()) => Action::Adopt,
                    Err(e) => {
                        tracing::warn!(staging = %staging.display(), error = %e.message(), "adoption failed: cleaning up and staging again");
                        self.release(staging).await;
                        clean(staging, table).await;
                        self.restage(record, secrets, Action::CleanAndRestage).await
                    }
                }
            }
            Action::CleanAndRestage | Action::CleanAndForget => {
                drop(device);
                self.release(staging).await;
                clean(staging, table).await;
                if action == Action::CleanAndRestage {
                    return self.restage(record, secrets, action).await;
                }
                self.forget_stage(staging).await;
                remove_dir(staging);
                action
            }
            Action::Restage => {
                drop(device);
                self.release(staging).await;
                self.restage(record, secrets, action).await
            }
            Action::Forget | Action::LeaveForeign => {
                drop(device);
                survival.kept.lock().unwrap().remove(staging);
                if let Err(e) = survival.state.remove_stage(staging) {
                    tracing::warn!(error = %e, "could not remove the stage record");
                }
                if let Some(keeper) = &survival.keeper {
                    forget_in_keeper(keeper, staging).await;
                }
                action
            }
        }
    }

    /// Has the keeper close its copy of a mount's descriptor (before the mount is cleaned up, so the kernel
    /// connection ends with the unmount).
    async fn release(&self, staging: &Path) {
        if let Some(keeper) = self.inner.survival.as_ref().and_then(|s| s.keeper.as_ref()) {
            forget_in_keeper(keeper, staging).await;
        }
    }

    /// Serves a live connection again: a session from the pool with the recorded secret, the journal
    /// replayed, then registered like a fresh stage (the keeper keeps its copy).
    async fn adopt(
        &self,
        record: &StageRecord,
        secrets: HashMap<String, String>,
        device: OwnedFd,
    ) -> Result<(), Status> {
        let survival = self.inner.survival.as_ref().ok_or_else(|| Status::internal("no restart survival"))?;
        if record.is_inline() {
            let req = record.to_publish_request();
            let target = record.staging_path.as_path();
            let plan = super::InlineSource::from_request(&req)?.plan(&secrets)?;
            let journal = survival.state.journal_dir(target);
            self.mount_volume(&req.volume_id, target, plan, Attach::Adopt { device, journal }).await?;
            self.remember(record.clone(), secrets, target).await;
            tracing::info!(target = %target.display(), volume_id = %req.volume_id, "adopted a live mount (inline volume)");
            return Ok(());
        }
        let req = record.to_request(secrets);
        let (staging, plan) = stage_plan(&req)?;
        let (host, port) = super::server_of(&plan.share, &plan.options);
        self.remember_credentials(&host, port, &plan.creds);
        let journal = survival.state.journal_dir(staging);
        self.mount_volume(&req.volume_id, staging, plan, Attach::Adopt { device, journal }).await?;
        self.remember_stage(&req, staging).await;
        tracing::info!(staging = %staging.display(), volume_id = %req.volume_id, "adopted a live mount");
        Ok(())
    }

    /// Stages a volume again through NodeStageVolume itself: `done` when it worked, `CleanAndForget` (record
    /// dropped) when it did not.
    async fn restage(&self, record: &StageRecord, secrets: HashMap<String, String>, done: Action) -> Action {
        let staging = record.staging_path.as_path();
        if secrets.is_empty() {
            self.forget_stage(staging).await;
            return Action::CleanAndForget;
        }
        let staged = if record.is_inline() {
            let req = record.to_publish_request();
            let _guard = self.lock(&[staging]).ok();
            self.publish_inline(&req, staging, Some(secrets)).await
        } else {
            self.node_stage_volume(Request::new(record.to_request(secrets))).await.map(|_| ())
        };
        match staged {
            Ok(_) => done,
            Err(e) => {
                tracing::warn!(staging = %staging.display(), error = %e.message(), "staging again failed: forgetting the volume");
                self.forget_stage(staging).await;
                remove_dir(staging);
                Action::CleanAndForget
            }
        }
    }

    async fn carry_out_publish(&self, action: PublishAction, publish: &PublishRecord) {
        let Some(survival) = self.inner.survival.as_ref() else { return };
        let target = publish.target_path.as_path();
        match action {
            PublishAction::Keep => {
                self.inner.published.lock().unwrap().insert(target.to_path_buf(), publish.staging_path.clone());
            }
            PublishAction::Rebind => {
                let (staging, read_only) = (publish.staging_path.clone(), publish.read_only);
                let bound = blocking_fs(target, move |target| {
                    if let Err(e) = mount::unmount(target) {
                        tracing::warn!(target = %target.display(), error = %e, "unmounting a stale publish");
                    }
                    std::fs::create_dir_all(target)
                        .map_err(|e| e.to_string())
                        .and_then(|()| mount::bind_mount(&staging, target, read_only).map_err(|e| e.to_string()))
                })
                .await;
                match bound {
                    Ok(()) => {
                        self.inner.published.lock().unwrap().insert(target.to_path_buf(), publish.staging_path.clone());
                    }
                    Err(e) => {
                        tracing::warn!(target = %target.display(), error = %e, "publishing again failed: forgetting it");
                        let _ = survival.state.remove_publish(target);
                    }
                }
            }
            PublishAction::Drop => {
                blocking_fs(target, |target| {
                    if mount::mount_at(target).ok().flatten().is_some_and(|m| m.fstype == FSTYPE) {
                        if let Err(e) = mount::unmount(target) {
                            tracing::warn!(target = %target.display(), error = %e, "unmounting a stale publish");
                        }
                    }
                    Ok(())
                })
                .await
                .ok();
                if let Err(e) = survival.state.remove_publish(target) {
                    tracing::warn!(error = %e, "could not remove the publish record");
                }
            }
        }
    }

    /// Stops serving every mount without unmounting it (the keeper holds the connections for the next
    /// process), when a keeper is configured; otherwise the mounts end with the process as before. Blocking
    /// work runs off the runtime. Returns how many mounts were detached.
    pub async fn detach_all(&self) -> usize {
        if self.inner.survival.as_ref().and_then(|s| s.keeper.as_ref()).is_none() {
            return 0;
        }
        // The successor hands them to the keeper from now on.
        if let Some(survival) = &self.inner.survival {
            survival.kept.lock().unwrap().clear();
        }
        let staged: Vec<(PathBuf, Arc<Staged>)> = self.inner.mounts.lock().unwrap().drain().collect();
        let mut detached = 0;
        for (path, staged) in staged {
            let owned = match Arc::try_unwrap(staged) {
                Ok(owned) => owned,
                Err(shared) => {
                    // A stats call holds it for a moment.
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    match Arc::try_unwrap(shared) {
                        Ok(owned) => owned,
                        Err(_) => {
                            tracing::warn!(path = %path.display(), "mount still in use: left to the process exit");
                            continue;
                        }
                    }
                }
            };
            let result = tokio::task::spawn_blocking(move || owned.mount.detach()).await;
            match result {
                Ok(Ok(())) => detached += 1,
                Ok(Err(e)) => tracing::warn!(path = %path.display(), error = %e, "detaching"),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "detach task"),
            }
        }
        tracing::info!(detached, "mounts detached for the next plugin process");
        detached
    }
}

async fn forget_in_keeper(keeper: &KeeperConfig, staging: &Path) {
    let (socket, key) = (keeper.socket.clone(), staging.display().to_string());
    match blocking(move || client::forget(&socket, &key)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the keeper could not forget a mount"),
        Err(e) => tracing::warn!(error = %e.message(), "forgetting in the keeper"),
    }
}

/// Everything held by our keeper and by any other keeper whose socket sits next to it (a predecessor
/// pod's, during a surge rollout): the others' are registered with ours, then forgotten by them.
async fn fetch_everywhere(keeper: &KeeperConfig) -> HashMap<String, HeldMount> {
    let keeper = keeper.clone();
    let fetched = blocking(move || {
        // No keeper answering is not an error: it holds nothing (a node reboot, or its first start). One is
        // started when a mount needs it.
        let mut held: HashMap<String, HeldMount> = HashMap::new();
        match client::fetch(&keeper.socket) {
            Ok(mounts) => held.extend(mounts.into_iter().map(|m| (m.key.clone(), m))),
            Err(e) => tracing::info!(error = %e, "no keeper to take mounts from"),
        }
        let peers = peer_sockets(&keeper.socket);
        if !peers.is_empty() && keeper.ensure().is_err() {
            tracing::warn!("no keeper of our own: another keeper's mounts are left to it");
            return held;
        }
        for peer in peers {
            let Ok(mounts) = client::fetch(&peer) else { continue };
            tracing::info!(peer = %peer.display(), mounts = mounts.len(), "taking mounts over from another keeper");
            for m in mounts {
                if client::register(&keeper.socket, &m.key, m.record.clone(), m.device.as_fd()).is_ok() {
                    let _ = client::forget(&peer, &m.key);
                }
                held.entry(m.key.clone()).or_insert(m);
            }
        }
        held
    })
    .await;
    fetched.unwrap_or_default()
}

/// Other keepers' sockets in the directory of `own` (`*.sock`).
fn peer_sockets(own: &Path) -> Vec<PathBuf> {
    let Some(dir) = own.parent() else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.as_path() != own && p.extension().is_some_and(|e| e == "sock"))
        .collect()
}

/// The topmost mount-table entry at exactly `path`.
fn mount_entry<'a>(table: &'a [MountInfo], path: &Path) -> Option<&'a MountInfo> {
    table.iter().rev().find(|m| m.mount_point == path)
}

/// Unmounts a dead (or unservable) staging mount and every bind mount of the same filesystem (its
/// publishes), from the mount table as read before anything was touched.
async fn clean(staging: &Path, table: &[MountInfo]) {
    let Some(device) = mount_entry(table, staging).map(|m| m.device.clone()) else { return };
    let mut points: Vec<PathBuf> =
        table.iter().filter(|m| m.device == device && m.fstype == FSTYPE).map(|m| m.mount_point.clone()).collect();
    points.sort();
    points.dedup();
    let _ = blocking_fs(staging, move |_| {
        for point in points {
            match mount::unmount(&point) {
                Ok(()) => tracing::info!(path = %point.display(), "stale mount removed"),
                Err(e) => tracing::warn!(path = %point.display(), error = %e, "removing a stale mount"),
            }
        }
        Ok(())
    })
    .await;
}

fn remove_dir(path: &Path) {
    if let Err(e) = std::fs::remove_dir(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::debug!(path = %path.display(), error = %e, "mount point left in place");
        }
    }
}

/// A stand-in record for a mount whose keeper record cannot be read (another version's): enough to clean
/// it up.
fn unknown_record(path: &Path) -> StageRecord {
    StageRecord {
        volume_id: String::new(),
        staging_path: path.to_path_buf(),
        volume_context: BTreeMap::new(),
        mount_flags: Vec::new(),
        volume_mount_group: String::new(),
        access_mode: 0,
        read_only: false,
    }
}
