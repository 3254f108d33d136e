//! A connected share (TREE_CONNECT) and the path operations on it. Paths
//! are `/`-separated and relative to the share root; they are converted to
//! SMB's backslashes here and nowhere else.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::stream::{self, TryStreamExt};

use super::conn::{Outgoing, Response};
use super::error::{Error, Result};
use super::file::{File, OpenOptions};
use super::link::Link;
use super::recovery::{is_connection_loss, is_session_loss, replay_verdict, ConnectionState, Intent, ReplayVerdict};
use super::session::Session;
use super::wire::create::{self, access, attributes, disposition, options, share_access, CreateRequest};
use super::wire::directory::{
    self, parse_directory_entries, DirectoryEntry, QueryDirectoryRequest, QueryDirectoryResponse,
};
use super::wire::info::{
    self, file_class, fs_class, FileAllInformation, FileBasicInformation, FileDispositionInformation,
    FileFsFullSizeInformation, FileRenameInformation, QueryInfoRequest, QueryInfoResponse, SetInfoRequest,
};
use super::wire::io::CloseRequest;
use super::wire::tree::{self as wtree, TreeConnectRequest, TreeConnectResponse, TreeDisconnectRequest};
use super::wire::{Command, FileId, NtStatus};

/// How many directory entries of one tree removal are deleted at once.
const REMOVE_PARALLELISM: usize = 16;
/// QUERY_DIRECTORY output buffer (Samba caps at its max transact size).
const DIRECTORY_BUFFER: u32 = 256 * 1024;

/// File or directory attributes as the server reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub size: u64,
    pub allocation_size: u64,
    pub attributes: u32,
    /// The server's file id (inode-like index number), stable for the file's life.
    pub file_id: u64,
    pub links: u32,
    pub created: u64,
    pub accessed: u64,
    pub modified: u64,
    pub changed: u64,
}

impl Metadata {
    pub fn is_dir(&self) -> bool {
        self.attributes & attributes::DIRECTORY != 0
    }
    pub fn is_readonly(&self) -> bool {
        self.attributes & attributes::READONLY != 0
    }
    pub fn modified_time(&self) -> Option<SystemTime> {
        info::filetime_to_system_time(self.modified)
    }
    pub fn accessed_time(&self) -> Option<SystemTime> {
        info::filetime_to_system_time(self.accessed)
    }
    pub fn changed_time(&self) -> Option<SystemTime> {
        info::filetime_to_system_time(self.changed)
    }
    pub fn created_time(&self) -> Option<SystemTime> {
        info::filetime_to_system_time(self.created)
    }

    pub(crate) fn from_all(all: &FileAllInformation) -> Metadata {
        Metadata {
            size: all.standard.end_of_file,
            allocation_size: all.standard.allocation_size,
            attributes: all.basic.file_attributes,
            file_id: all.internal.index_number,
            links: all.standard.number_of_links,
            created: all.basic.creation_time,
            accessed: all.basic.last_access_time,
            modified: all.basic.last_write_time,
            changed: all.basic.change_time,
        }
    }

    fn from_entry(e: &DirectoryEntry) -> Metadata {
        Metadata {
            size: e.end_of_file,
            allocation_size: e.allocation_size,
            attributes: e.file_attributes,
            file_id: e.file_id,
            links: 1,
            created: e.creation_time,
            accessed: e.last_access_time,
            modified: e.last_write_time,
            changed: e.change_time,
        }
    }
}

/// One directory entry with its attributes (no extra round trip needed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub metadata: Metadata,
}

/// How a file was copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMethod {
    /// FSCTL_SRV_COPYCHUNK: the data stayed on the server.
    ServerSide,
    /// Read and written through the client (the server refused copychunk).
    Streamed,
}

/// Running totals of a tree copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyProgress {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    pub server_side_files: u64,
    pub streamed_files: u64,
}

impl CopyProgress {
    fn record(&mut self, bytes: u64, m: CopyMethod) {
        self.files += 1;
        self.bytes += bytes;
        match m {
            CopyMethod::ServerSide => self.server_side_files += 1,
            CopyMethod::Streamed => self.streamed_files += 1,
        }
    }
}

/// Space on the share (FileFsFullSizeInformation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsStats {
    pub block_size: u64,
    pub total_bytes: u64,
    /// Available to this user (quotas applied).
    pub available_bytes: u64,
    pub free_bytes: u64,
}

/// What a tree is bound to on the current connection.
#[derive(Clone)]
pub(crate) struct TreeBinding {
    pub session: Arc<Session>,
    /// The link generation this binding belongs to.
    pub generation: u64,
    pub id: u32,
    pub encrypt: bool,
}

pub(crate) struct TreeInner {
    pub link: Arc<Link>,
    pub disconnected: std::sync::atomic::AtomicBool,
    /// Where the TREE_DISCONNECT of a dropped tree runs, even off the runtime.
    pub runtime: Option<tokio::runtime::Handle>,
    pub share: String,
    pub share_flags: u32,
    /// Re-bound by the link after every reconnect; `Err` once the share
    /// could not be connected again.
    binding: Mutex<std::result::Result<TreeBinding, String>>,
    /// Runs before a lease break of one of this tree's opens is acknowledged (see `lease`).
    pub lease_handler: Mutex<Option<Arc<dyn crate::lease::LeaseBreakHandler>>>,
}

impl TreeInner {
    /// The binding to use with the link at `generation` (or newer).
    pub fn binding(&self, generation: u64) -> Result<TreeBinding> {
        match &*self.binding.lock().unwrap() {
            Ok(b) if b.generation >= generation => Ok(b.clone()),
            Ok(_) => Err(Error::Closed {
                addr: self.link.addr().to_string(),
                why: format!("share {} was not connected again", self.share),
            }),
            Err(why) => Err(Error::Closed {
                addr: self.link.addr().to_string(),
                why: format!("share {} could not be connected again: {why}", self.share),
            }),
        }
    }

    /// TREE_CONNECT on a new session (during a reconnect). A lost connection
    /// fails the reconnect attempt; any other failure loses this tree only.
    pub async fn rebind(&self, session: &Arc<Session>, generation: u64) -> Result<()> {
        match tree_connect(session, &self.share, generation).await {
            Ok((b, _)) => {
                *self.binding.lock().unwrap() = Ok(b);
                Ok(())
            }
            Err(e) if is_connection_loss(&e) => Err(e),
            Err(e) => {
                tracing::warn!(share = %self.share, error = %e, "share could not be connected again after reconnect");
                *self.binding.lock().unwrap() = Err(e.to_string());
                Ok(())
            }
        }
    }
}

impl Drop for TreeInner {
    fn drop(&mut self) {
        if self.disconnected.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let Ok(b) = self.binding.get_mut().unwrap().clone() else { return };
        if !b.session.conn.is_alive() {
            return;
        }
        if let Some(rt) = tokio::runtime::Handle::try_current().ok().or_else(|| self.runtime.clone()) {
            rt.spawn(async move {
                let out = Outgoing::new(Command::TreeDisconnect, b.id, 0, |m| TreeDisconnectRequest.encode(m));
                let _ = b.session.request(out, b.encrypt).await;
            });
        }
    }
}

/// TREE_CONNECT (and the 3.0/3.0.2 negotiate validation it may owe) on one session.
async fn tree_connect(session: &Arc<Session>, share: &str, generation: u64) -> Result<(TreeBinding, u32)> {
    let unc = format!("\\\\{}\\{}", session.host, share);
    let req = TreeConnectRequest { flags: 0, path: unc.clone() };
    let out = Outgoing::new(Command::TreeConnect, 0, 0, |m| req.encode(m));
    let resp = session.request(out, false).await?.ok(|| format!("tree connect to {unc}"))?;
    let body = TreeConnectResponse::decode(&resp.msg)?;
    let share_encrypt = body.share_flags & wtree::SHAREFLAG_ENCRYPT_DATA != 0;
    if body.share_type != wtree::SHARE_TYPE_DISK {
        return Err(Error::Protocol(format!("{unc} is not a disk share (type {})", body.share_type)));
    }
    if share_encrypt && session.keys.sealer.is_none() {
        return Err(Error::EncryptionUnavailable(format!("share {unc} requires encryption")));
    }
    let binding = TreeBinding {
        session: session.clone(),
        generation,
        id: resp.header.tree_id,
        encrypt: share_encrypt && session.keys.sealer.is_some(),
    };
    session.validate_negotiate(binding.id, binding.encrypt).await?;
    Ok((binding, body.share_flags))
}

/// A connected share. Cheap to clone; disconnected when the last clone goes.
/// Stays valid across reconnects: its requests wait for the connection to
/// come back and are then sent again.
#[derive(Clone)]
pub struct Tree {
    pub(crate) inner: Arc<TreeInner>,
}

/// Converts a `/`-separated share path to SMB's form.
pub(crate) fn smb_path(path: &str) -> String {
    path.split(['/', '\\']).filter(|p| !p.is_empty() && *p != ".").collect::<Vec<_>>().join("\\")
}

impl Tree {
    pub(crate) async fn connect(link: Arc<Link>, share: &str) -> Result<Tree> {
        let mut deadline = None;
        let mut after = None;
        loop {
            let (session, generation) = link.up(after, &mut deadline).await?;
            // Registered before any recovery pass can look (see `Link::gate`).
            let _shared = link.gate.read().await;
            if link.current().is_none_or(|(_, g)| g != generation) {
                continue;
            }
            match tree_connect(&session, share, generation).await {
                Ok((binding, share_flags)) => {
                    let inner = Arc::new(TreeInner {
                        link: link.clone(),
                        disconnected: std::sync::atomic::AtomicBool::new(false),
                        runtime: tokio::runtime::Handle::try_current().ok(),
                        share: share.to_string(),
                        share_flags,
                        binding: Mutex::new(Ok(binding)),
                        lease_handler: Mutex::new(None),
                    });
                    link.register_tree(&inner);
                    return Ok(Tree { inner });
                }
                Err(e) if is_connection_loss(&e) => {
                    session.conn.abort(e.to_string());
                    after = Some(generation);
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn share(&self) -> &str {
        &self.inner.share
    }

    /// Registers what runs before a lease break of one of this tree's opens is acknowledged (replacing any
    /// handler registered before). See [`crate::lease`].
    pub fn set_lease_break_handler(&self, handler: Arc<dyn crate::lease::LeaseBreakHandler>) {
        *self.inner.lease_handler.lock().unwrap() = Some(handler);
    }

    /// TREE_DISCONNECT now (otherwise it happens when the last clone is dropped).
    pub async fn disconnect(&self) -> Result<()> {
        if self.inner.disconnected.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let b = self.current_binding()?;
        let out = Outgoing::new(Command::TreeDisconnect, b.id, 0, |m| TreeDisconnectRequest.encode(m));
        b.session.request(out, b.encrypt).await?.ok(|| format!("tree disconnect from {}", self.inner.share)).map(|_| ())
    }

    /// SHAREFLAG_* bits the server reported for this share.
    pub fn share_flags(&self) -> u32 {
        self.inner.share_flags
    }

    /// The first session's facts (a reconnect is never weaker than them).
    pub fn session_info(&self) -> &super::session::SessionInfo {
        &self.inner.link.first
    }

    /// Whether the underlying connection is up right now (false while
    /// reconnecting; see [`connection_state`](Self::connection_state)).
    pub fn is_alive(&self) -> bool {
        self.inner.link.current().is_some_and(|(s, _)| s.conn.is_alive())
    }

    /// Whether requests on this tree can still succeed: the share was
    /// connected again after any reconnect, and the client has not given up.
    pub fn is_usable(&self) -> bool {
        !matches!(self.inner.link.state(), ConnectionState::Failed { .. }) && self.inner.binding.lock().unwrap().is_ok()
    }

    /// Connected, reconnecting (why, since when) or failed for good.
    pub fn connection_state(&self) -> ConnectionState {
        self.inner.link.state()
    }

    /// How many times the connection was re-established.
    pub fn reconnect_count(&self) -> u64 {
        self.inner.link.reconnect_count()
    }

    fn current_binding(&self) -> Result<TreeBinding> {
        let generation = self.inner.link.current().map_or(0, |(_, g)| g);
        self.inner.binding(generation)
    }

    fn session_limits(&self) -> super::session::SessionInfo {
        self.current_binding().map_or_else(|_| self.inner.link.first.clone(), |b| b.session.info.clone())
    }

    /// Largest single read and write the server accepts (capped at 8 MiB).
    pub fn max_read(&self) -> u32 {
        self.session_limits().max_read.clamp(4096, 8 << 20)
    }
    pub fn max_write(&self) -> u32 {
        self.session_limits().max_write.clamp(4096, 8 << 20)
    }

    /// Sends requests built for the current binding; when the connection is
    /// lost before the answers arrive, waits for the reconnect and sends
    /// them again (marked as replays on 3.x). Returns the responses and
    /// whether they answer a replay.
    pub(crate) async fn send_with(
        &self,
        related: bool,
        build: &(dyn Fn(&TreeBinding) -> Result<Vec<Outgoing>> + Sync),
    ) -> Result<(Vec<Response>, bool)> {
        let link = &self.inner.link;
        let mut deadline = None;
        let mut after = None;
        let mut replayed = false;
        loop {
            let (_, generation) = link.up(after, &mut deadline).await?;
            let b = self.inner.binding(generation)?;
            let mut outs = build(&b)?;
            if replayed && b.session.info.dialect.is_smb3() {
                outs.iter_mut().for_each(|o| o.replay = true);
            }
            let result = if related {
                b.session.compound(outs, b.encrypt).await
            } else {
                let out = outs.pop().ok_or_else(|| Error::Protocol("empty request".into()))?;
                b.session.request(out, b.encrypt).await.map(|r| vec![r])
            };
            match result {
                Ok(resps) if resps.first().is_some_and(|r| is_session_loss(r.header.status)) => {
                    after = link.after_session_status(&b.session, b.generation, resps[0].header.status).await;
                }
                Ok(resps) => return Ok((resps, replayed)),
                Err(e) if is_connection_loss(&e) => {
                    after = Some(link.lost(&b.session, b.generation, &e.to_string()));
                }
                Err(e) => return Err(e),
            }
            replayed = true;
        }
    }

    pub(crate) fn out(&self, command: Command, payload: usize, encode: impl FnOnce(&mut Vec<u8>)) -> Outgoing {
        // The tree id is filled in per attempt by `send_with`.
        Outgoing::new(command, 0, payload, encode)
    }

    pub(crate) fn create_out(&self, path: &str, access: u32, disp: u32, opts: u32, attrs: u32) -> Outgoing {
        let req = CreateRequest {
            oplock_level: create::OPLOCK_LEVEL_NONE,
            impersonation_level: create::IMPERSONATION_IMPERSONATION,
            desired_access: access,
            file_attributes: attrs,
            share_access: share_access::READ | share_access::WRITE | share_access::DELETE,
            create_disposition: disp,
            create_options: opts,
            name: smb_path(path),
            contexts: Vec::new(),
        };
        self.out(Command::Create, 0, |m| req.encode(m))
    }

    fn close_out(&self, file_id: FileId) -> Outgoing {
        let req = CloseRequest { flags: 0, file_id };
        self.out(Command::Close, 0, |m| req.encode(m))
    }

    /// CREATE + `middle` + CLOSE in one round trip, on the handle the CREATE
    /// made. A replay after a reconnect is judged by `intent`: a delete
    /// that finds nothing, or a mkdir that finds the directory, was done by
    /// the first attempt.
    async fn with_handle(
        &self,
        path: &str,
        access: u32,
        disp: u32,
        opts: u32,
        middle: Vec<Outgoing>,
        purpose: Purpose<'_>,
    ) -> Result<Vec<Response>> {
        let Purpose { op, intent, target } = purpose;
        let n = middle.len();
        let mut outs = Vec::with_capacity(n + 2);
        outs.push(self.create_out(path, access, disp, opts, 0));
        outs.extend(middle);
        outs.push(self.close_out(FileId::ANY));
        let (mut resps, replayed) = self
            .send_with(true, &|b| {
                let mut o = outs.clone();
                o.iter_mut().for_each(|o| o.tree_id = b.id);
                Ok(o)
            })
            .await?;
        let ctx = || format!("{op} {}", display_path(path));
        let first = resps.remove(0);
        let status = resps.iter().map(|r| r.header.status).find(|s| !s.is_success()).unwrap_or(first.header.status);
        let status = if first.header.status.is_success() { status } else { first.header.status };
        match replay_verdict(intent, replayed, status) {
            ReplayVerdict::AsIs => {}
            ReplayVerdict::AlreadyDone => {
                tracing::info!(path = %display_path(path), %status, "replayed {op} had already been done");
                return Ok(Vec::new());
            }
            ReplayVerdict::DoneIfTargetExists => {
                if let Some(target) = target {
                    if Box::pin(self.exists(target)).await? {
                        tracing::info!(path = %display_path(path), "replayed {op} had already been done");
                        return Ok(Vec::new());
                    }
                }
                return Err(Error::Status { op: ctx(), status });
            }
        }
        first.ok(ctx)?;
        let close = resps.pop().expect("close response");
        for r in &resps {
            if !r.header.status.is_success() && r.header.status != NtStatus::BUFFER_OVERFLOW {
                return Err(Error::Status { op: ctx(), status: r.header.status });
            }
        }
        if !close.header.status.is_success() {
            return Err(Error::Status { op: format!("closing {}", display_path(path)), status: close.header.status });
        }
        Ok(resps)
    }

    /// Attributes of a file or directory.
    pub async fn stat(&self, path: &str) -> Result<Metadata> {
        let q = QueryInfoRequest {
            info_type: info::INFO_FILE,
            file_info_class: file_class::ALL,
            output_buffer_length: 4096,
            input: Vec::new(),
            additional_information: 0,
            flags: 0,
            file_id: FileId::ANY,
        };
        let middle = vec![self.out(Command::QueryInfo, 4096, |m| q.encode(m))];
        let resps = self
            .with_handle(
                path,
                access::FILE_READ_ATTRIBUTES | access::SYNCHRONIZE,
                disposition::OPEN,
                0,
                middle,
                Purpose::plain("stat"),
            )
            .await?;
        let body = QueryInfoResponse::decode(&resps[0].msg)?;
        Ok(Metadata::from_all(&FileAllInformation::decode(&body.buffer)?))
    }

    /// Whether `path` exists (any other error is returned).
    pub async fn exists(&self, path: &str) -> Result<bool> {
        match self.stat(path).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Lists a directory with each entry's attributes, without `.` and `..`.
    pub async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        self.read_dir_matching(path, "*").await
    }

    /// Lists the entries of a directory whose names match `pattern` (`*`, `?` wildcards).
    pub async fn read_dir_matching(&self, path: &str, pattern: &str) -> Result<Vec<DirEntry>> {
        let dir = self
            .open(path, OpenOptions::directory())
            .await
            .map_err(|e| e.context(format!("listing {}", display_path(path))))?;
        // A directory handle that came back by reopening has lost its
        // enumeration position: list again from the start in that case.
        let result = loop {
            let reconnects = self.reconnect_count();
            match self.list_handle(&dir, path, pattern).await {
                Ok(_) if self.reconnect_count() != reconnects => continue,
                r => break r,
            }
        };
        let closed = dir.close().await;
        let entries = result?;
        closed?;
        Ok(entries)
    }

    async fn list_handle(&self, dir: &File, path: &str, pattern: &str) -> Result<Vec<DirEntry>> {
        let class = directory::FILE_ID_BOTH_DIRECTORY_INFORMATION;
        let buffer_len = DIRECTORY_BUFFER.min(self.session_limits().max_transact.max(65536));
        let mut entries = Vec::new();
        let mut first = true;
        loop {
            let flags = if first { directory::RESTART_SCANS } else { 0 };
            first = false;
            let resp = dir
                .request(Command::QueryDirectory, buffer_len as usize, &|file_id, m| {
                    QueryDirectoryRequest {
                        info_class: class,
                        flags,
                        file_index: 0,
                        file_id,
                        pattern: pattern.to_string(),
                        output_buffer_length: buffer_len,
                    }
                    .encode(m)
                })
                .await?;
            match resp.header.status {
                NtStatus::NO_MORE_FILES => break,
                NtStatus::NO_SUCH_FILE if entries.is_empty() => break,
                s if !s.is_success() => {
                    return Err(Error::Status { op: format!("listing {}", display_path(path)), status: s })
                }
                _ => {}
            }
            let body = QueryDirectoryResponse::decode(&resp.msg)?;
            for e in parse_directory_entries(class, &body.buffer)? {
                if e.name != "." && e.name != ".." {
                    entries.push(DirEntry { metadata: Metadata::from_entry(&e), name: e.name });
                }
            }
        }
        Ok(entries)
    }

    /// Creates one directory; its parent must exist.
    pub async fn mkdir(&self, path: &str) -> Result<()> {
        self.with_handle(
            path,
            access::FILE_READ_ATTRIBUTES | access::SYNCHRONIZE,
            disposition::CREATE,
            options::DIRECTORY_FILE,
            Vec::new(),
            Purpose { op: "mkdir", intent: Intent::Mkdir, target: None },
        )
        .await
        .map(|_| ())
    }

    /// Creates a directory and its missing parents; an existing directory is fine.
    pub async fn mkdir_all(&self, path: &str) -> Result<()> {
        let parts: Vec<&str> = path.split(['/', '\\']).filter(|p| !p.is_empty()).collect();
        if parts.is_empty() {
            return Ok(());
        }
        // Fast path: one round trip when the parent exists.
        let mut missing_from = parts.len();
        loop {
            let prefix = parts[..missing_from].join("/");
            match self.open_dir_create(&prefix).await {
                Ok(()) => break,
                Err(e) if matches!(e.status(), Some(NtStatus::OBJECT_PATH_NOT_FOUND)) && missing_from > 1 => {
                    missing_from -= 1;
                }
                Err(e) => return Err(e),
            }
        }
        for end in missing_from + 1..=parts.len() {
            self.open_dir_create(&parts[..end].join("/")).await?;
        }
        Ok(())
    }

    async fn open_dir_create(&self, path: &str) -> Result<()> {
        self.with_handle(
            path,
            access::FILE_READ_ATTRIBUTES | access::SYNCHRONIZE,
            disposition::OPEN_IF,
            options::DIRECTORY_FILE,
            Vec::new(),
            Purpose::plain("mkdir"),
        )
        .await
        .map(|_| ())
    }

    /// Deletes a file (clearing the read-only attribute if set).
    pub async fn remove_file(&self, path: &str) -> Result<()> {
        self.delete(path, options::NON_DIRECTORY_FILE, "remove").await
    }

    /// Deletes an empty directory.
    pub async fn remove_dir(&self, path: &str) -> Result<()> {
        self.delete(path, options::DIRECTORY_FILE, "rmdir").await
    }

    async fn delete(&self, path: &str, opts: u32, op: &str) -> Result<()> {
        let set = SetInfoRequest {
            info_type: info::INFO_FILE,
            file_info_class: file_class::DISPOSITION,
            additional_information: 0,
            file_id: FileId::ANY,
            buffer: FileDispositionInformation { delete_pending: true }.encode(),
        };
        let middle = vec![self.out(Command::SetInfo, 0, |m| set.encode(m))];
        let acc = access::DELETE | access::FILE_READ_ATTRIBUTES | access::FILE_WRITE_ATTRIBUTES | access::SYNCHRONIZE;
        match self.with_handle(path, acc, disposition::OPEN, opts, middle, Purpose::delete(op)).await {
            Err(e) if e.status() == Some(NtStatus::CANNOT_DELETE) => {
                // Read-only: clear the attribute, then delete (MS-FSCC 2.4.11).
                self.clear_readonly(path, opts).await?;
                let middle = vec![self.out(Command::SetInfo, 0, |m| set.encode(m))];
                self.with_handle(path, acc, disposition::OPEN, opts, middle, Purpose::delete(op)).await.map(|_| ())
            }
            r => r.map(|_| ()),
        }
    }

    async fn clear_readonly(&self, path: &str, opts: u32) -> Result<()> {
        let meta = self.stat(path).await?;
        let mut attrs = meta.attributes & !attributes::READONLY;
        if attrs == 0 {
            attrs = attributes::NORMAL;
        }
        self.set_basic(
            path,
            opts,
            FileBasicInformation {
                creation_time: 0,
                last_access_time: 0,
                last_write_time: 0,
                change_time: 0,
                file_attributes: attrs,
            },
        )
        .await
    }

    async fn set_basic(&self, path: &str, opts: u32, basic: FileBasicInformation) -> Result<()> {
        let set = SetInfoRequest {
            info_type: info::INFO_FILE,
            file_info_class: file_class::BASIC,
            additional_information: 0,
            file_id: FileId::ANY,
            buffer: basic.encode(),
        };
        let middle = vec![self.out(Command::SetInfo, 0, |m| set.encode(m))];
        self.with_handle(
            path,
            access::FILE_WRITE_ATTRIBUTES | access::FILE_READ_ATTRIBUTES | access::SYNCHRONIZE,
            disposition::OPEN,
            opts,
            middle,
            Purpose::plain("set attributes of"),
        )
        .await
        .map(|_| ())
    }

    /// Sets timestamps (FILETIME; 0 leaves a field unchanged) and/or attributes (0 leaves them).
    pub async fn set_times(&self, path: &str, accessed: u64, modified: u64, attributes: u32) -> Result<()> {
        self.set_basic(
            path,
            0,
            FileBasicInformation {
                creation_time: 0,
                last_access_time: accessed,
                last_write_time: modified,
                change_time: 0,
                file_attributes: attributes,
            },
        )
        .await
    }

    /// Deletes a directory tree (or a single file), clearing read-only attributes
    /// as needed. A missing path is `Ok(false)`.
    pub async fn remove_tree(&self, path: &str) -> Result<bool> {
        let meta = match self.stat(path).await {
            Ok(m) => m,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        if !meta.is_dir() {
            self.remove_file(path).await?;
            return Ok(true);
        }
        self.remove_dir_contents(path.to_string()).await?;
        self.remove_dir(path).await?;
        Ok(true)
    }

    fn remove_dir_contents(&self, path: String) -> futures_util::future::BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let entries = self.read_dir(&path).await?;
            stream::iter(entries.into_iter().map(Ok))
                .try_for_each_concurrent(REMOVE_PARALLELISM, |e| {
                    let child = super::target::join_path(&path, &e.name);
                    async move {
                        if e.metadata.is_dir() {
                            self.remove_dir_contents(child.clone()).await?;
                            ignore_not_found(self.remove_dir(&child).await)
                        } else {
                            ignore_not_found(self.remove_file(&child).await)
                        }
                    }
                })
                .await
        })
    }

    /// Renames `from` to `to` (both share paths). With `replace`, an existing
    /// file at `to` is replaced; otherwise that is STATUS_OBJECT_NAME_COLLISION.
    pub async fn rename(&self, from: &str, to: &str, replace: bool) -> Result<()> {
        let set = SetInfoRequest {
            info_type: info::INFO_FILE,
            file_info_class: file_class::RENAME,
            additional_information: 0,
            file_id: FileId::ANY,
            buffer: FileRenameInformation { replace_if_exists: replace, root_directory: 0, file_name: smb_path(to) }
                .encode(),
        };
        let middle = vec![self.out(Command::SetInfo, 0, |m| set.encode(m))];
        self.with_handle(
            from,
            access::DELETE | access::FILE_READ_ATTRIBUTES | access::SYNCHRONIZE,
            disposition::OPEN,
            0,
            middle,
            Purpose { op: "rename", intent: Intent::Rename, target: Some(to) },
        )
        .await
        .map_err(|e| e.context(format!("rename {} to {}", display_path(from), display_path(to))))
        .map(|_| ())
    }

    /// Creates a hard link `link` to `existing` (servers may refuse: STATUS_NOT_SUPPORTED).
    pub async fn hard_link(&self, existing: &str, link: &str) -> Result<()> {
        let set = SetInfoRequest {
            info_type: info::INFO_FILE,
            file_info_class: file_class::LINK,
            additional_information: 0,
            file_id: FileId::ANY,
            buffer: FileRenameInformation { replace_if_exists: false, root_directory: 0, file_name: smb_path(link) }
                .encode(),
        };
        let middle = vec![self.out(Command::SetInfo, 0, |m| set.encode(m))];
        self.with_handle(
            existing,
            access::FILE_READ_ATTRIBUTES | access::FILE_WRITE_ATTRIBUTES | access::SYNCHRONIZE,
            disposition::OPEN,
            options::NON_DIRECTORY_FILE,
            middle,
            Purpose { op: "link", intent: Intent::Mkdir, target: None },
        )
        .await
        .map(|_| ())
    }

    /// Space on the share.
    pub async fn statfs(&self) -> Result<FsStats> {
        let q = QueryInfoRequest {
            info_type: info::INFO_FILESYSTEM,
            file_info_class: fs_class::FULL_SIZE,
            output_buffer_length: 64,
            input: Vec::new(),
            additional_information: 0,
            flags: 0,
            file_id: FileId::ANY,
        };
        let middle = vec![self.out(Command::QueryInfo, 64, |m| q.encode(m))];
        let resps = self
            .with_handle(
                "",
                access::FILE_READ_ATTRIBUTES | access::SYNCHRONIZE,
                disposition::OPEN,
                options::DIRECTORY_FILE,
                middle,
                Purpose::plain("statfs"),
            )
            .await?;
        let body = QueryInfoResponse::decode(&resps[0].msg)?;
        let fs = FileFsFullSizeInformation::decode(&body.buffer)?;
        let block = u64::from(fs.sectors_per_allocation_unit).saturating_mul(u64::from(fs.bytes_per_sector)).max(1);
        Ok(FsStats {
            block_size: block,
            total_bytes: fs.total_allocation_units.saturating_mul(block),
            available_bytes: fs.caller_available_allocation_units.saturating_mul(block),
            free_bytes: fs.actual_available_allocation_units.saturating_mul(block),
        })
    }

    /// Copies one file. Server-side (copychunk) when the server supports it,
    /// else streamed through this client. Returns how it was copied.
    pub async fn copy_file(&self, from: &str, to: &str) -> Result<CopyMethod> {
        let src = self.open(from, OpenOptions::new().read(true)).await?;
        let len = src.opened_metadata().size;
        let dst = self.open(to, OpenOptions::new().read(true).write(true).create(true).truncate(true)).await?;
        let method = if len == 0 {
            CopyMethod::ServerSide
        } else {
            let server_side = match src.resume_key().await {
                Ok(key) => dst.copy_chunks_from(&key, len).await?,
                Err(e) if matches!(e.status(), Some(NtStatus::NOT_SUPPORTED | NtStatus::INVALID_DEVICE_REQUEST)) => {
                    false
                }
                Err(e) => return Err(e),
            };
            if server_side {
                CopyMethod::ServerSide
            } else {
                dst.set_len(0).await?;
                let mut offset = 0u64;
                while offset < len {
                    let n = (len - offset).min(16 << 20) as usize;
                    let data = src.read_at(offset, n).await?;
                    if data.is_empty() {
                        break;
                    }
                    dst.write_at(offset, &data).await?;
                    offset += data.len() as u64;
                }
                CopyMethod::Streamed
            }
        };
        let attrs = src.opened_metadata();
        src.close().await?;
        // Keep the source's modification time, as `cp -p` would.
        dst.set_info(
            file_class::BASIC,
            FileBasicInformation {
                creation_time: 0,
                last_access_time: 0,
                last_write_time: attrs.modified,
                change_time: 0,
                file_attributes: 0,
            }
            .encode(),
        )
        .await?;
        dst.close().await?;
        Ok(method)
    }

    /// Copies a directory tree into `to` (created). `progress` is called after each file.
    pub async fn copy_tree(
        &self,
        from: &str,
        to: &str,
        progress: &(dyn Fn(&CopyProgress) + Sync),
    ) -> Result<CopyProgress> {
        let meta = self.stat(from).await?;
        let mut p = CopyProgress::default();
        if !meta.is_dir() {
            let m = self.copy_file(from, to).await?;
            p.record(meta.size, m);
            progress(&p);
            return Ok(p);
        }
        self.mkdir_all(to).await?;
        let mut stack = vec![(from.to_string(), to.to_string())];
        while let Some((src_dir, dst_dir)) = stack.pop() {
            for e in self.read_dir(&src_dir).await? {
                let (s, d) = (super::target::join_path(&src_dir, &e.name), super::target::join_path(&dst_dir, &e.name));
                if e.metadata.is_dir() {
                    self.mkdir(&d).await?;
                    p.dirs += 1;
                    stack.push((s, d));
                } else {
                    let m = self.copy_file(&s, &d).await?;
                    p.record(e.metadata.size, m);
                    progress(&p);
                }
            }
        }
        Ok(p)
    }

    /// Opens a file or directory.
    /// On SMB 3.x a file (not a directory) is opened durable, with a lease,
    /// so that it survives a lost connection (see [`File`]).
    pub async fn open(&self, path: &str, opts: OpenOptions) -> Result<File> {
        File::open(self, path, opts).await
    }

    /// [`Tree::open`] that also reads up to `read_len` bytes from the start of the file in the same round
    /// trip; the data is empty at end of file and `None` when that read failed (the file is open anyway).
    pub async fn open_and_read(&self, path: &str, opts: OpenOptions, read_len: u32) -> Result<(File, Option<Bytes>)> {
        File::open_reading(self, path, opts, Some(read_len)).await
    }

    /// Creates (or truncates) a file for reading and writing.
    pub async fn create(&self, path: &str) -> Result<File> {
        self.open(path, OpenOptions::new().read(true).write(true).create(true).truncate(true)).await
    }
}

/// What a path operation is for: its name in errors, and how to judge
/// the answer to a replay of it.
#[derive(Clone, Copy)]
struct Purpose<'a> {
    op: &'a str,
    intent: Intent,
    /// Where a rename or link goes (a replayed rename whose source is gone
    /// succeeded if this exists).
    target: Option<&'a str>,
}

impl<'a> Purpose<'a> {
    fn plain(op: &'a str) -> Self {
        Purpose { op, intent: Intent::Idempotent, target: None }
    }
    fn delete(op: &'a str) -> Self {
        Purpose { op, intent: Intent::Delete, target: None }
    }
}

/// How paths appear in messages: `/`-rooted in the share.
pub(crate) fn display_path(path: &str) -> String {
    format!("/{}", path.trim_start_matches(['/', '\\']))
}

/// Whether an error means "no such file or directory".
pub fn is_not_found(e: &Error) -> bool {
    matches!(
        e.status(),
        Some(
            NtStatus::OBJECT_NAME_NOT_FOUND
                | NtStatus::OBJECT_PATH_NOT_FOUND
                | NtStatus::NO_SUCH_FILE
                | NtStatus::DELETE_PENDING
        )
    )
}

fn ignore_not_found(r: Result<()>) -> Result<()> {
    match r {
        Err(e) if is_not_found(&e) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smb_paths() {
        assert_eq!(smb_path("a/b/./c/"), "a\\b\\c");
        assert_eq!(smb_path(""), "");
        assert_eq!(display_path("a/b"), "/a/b");
    }
}
