//! Carrying out a [`CreatePlan`]: a new directory, or a server-side copy of
//! the source volume, with the records that make a retried CreateVolume
//! find what the first call did (see [`super::record`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::{Code, Status};

use super::plan::CreatePlan;
use super::record::{RecordError, RecordStore};
use super::session::stricter;
use super::status::{self, record_status};
use super::{dir_key, share_path, ControllerService, RecordState, VolumeRecord};
use crate::csi::proto::Volume;
use crate::volume::SharePath;
use smb3::{is_not_found, CopyProgress, Tree};

impl ControllerService {
    pub(super) async fn create(&self, plan: CreatePlan) -> Result<Volume, Status> {
        let _guard =
            self.lock(vec![format!("name:{}", plan.name), dir_key(&plan.id)], &format!("volume {:?}", plan.name))?;
        // Streamed clone data crosses the wire: protect it as the stricter of the two volumes asks.
        let encryption = match &plan.clone_from {
            Some((_, source)) => Some(stricter(self.effective(plan.id.encryption), self.effective(source.encryption))),
            None => plan.id.encryption,
        };
        let tree = self.tree(&plan.connect, encryption, &plan.creds, Code::InvalidArgument).await?;
        let store = RecordStore::under(plan.id.share.base_path());
        let name_path = store.name_path(&plan.name);
        let dir_path = store.dir_path(&plan.id.sub_dir);
        let record_err = |e: RecordError| record_status(&e, Code::InvalidArgument);

        let mut resuming_clone = false;
        // Both records at once: one round trip instead of two on every call.
        let (by_name, by_dir) = tokio::join!(store.read(&tree, &name_path), store.read(&tree, &dir_path));
        if let Some(existing) = by_name.map_err(record_err)? {
            if let Some(why) = plan.incompatibility(&existing) {
                return Err(Status::already_exists(why));
            }
            match existing.state {
                RecordState::Ready => {
                    tracing::info!(volume_id = %plan.volume_id, "volume exists with compatible parameters");
                    // A crash between the two record writes may have left the directory's missing: it is what
                    // refuses another volume on the same directory, so a retry puts it back.
                    if matches!(by_dir, Ok(None)) {
                        store.write(&tree, &dir_path, &existing).await.map_err(record_err)?;
                    }
                    return Ok(plan.volume(existing.capacity_bytes));
                }
                RecordState::Creating => resuming_clone = true,
            }
        } else if let Some(owner) = by_dir.map_err(record_err)? {
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
            |what: &str| format!("{what} /{path} on {} as {}", plan.id.share.share_root(), plan.creds.display_name());
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
                        source.share.share_root()
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
        // At once: either may be missing after a crash in between, and a retry puts it back (with the name's
        // record the volume exists and the directory's is written again; with the directory's alone, naming
        // this volume, the create goes on).
        let (name_path, dir_path) = (store.name_path(&record.name), store.dir_path(sub_dir));
        let (by_name, by_dir) =
            tokio::join!(store.write(tree, &name_path, record), store.write(tree, &dir_path, record));
        by_name.map_err(err)?;
        by_dir.map_err(err)
    }
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
