//! An open file or directory handle and its I/O. Large reads and writes are
//! split into server-sized chunks that are all in flight at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rand::RngCore;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::conn::Outgoing;
use super::error::{Error, Result};
use super::recovery::{is_connection_loss, is_session_loss};
use super::session::Session;
use super::tree::{display_path, smb_path, Metadata, Tree};
use super::wire::create::{
    self, access, attributes, disposition, options, share_access, CreateContext, CreateRequest, CreateResponse,
};
use super::wire::durable::{lease_state, DurableReconnectV2, DurableRequestV2, LeaseV2};
use super::wire::info::{self, file_class, FileEndOfFileInformation, SetInfoRequest};
use super::wire::io::{CloseRequest, FlushRequest, ReadRequest, ReadResponse, WriteRequest, WriteResponse};
use super::wire::ioctl::{
    CopyChunk, CopyChunkRequest, CopyChunkResponse, IoctlRequest, IoctlResponse, ResumeKey, FSCTL_SRV_COPYCHUNK_WRITE,
    FSCTL_SRV_REQUEST_RESUME_KEY, IOCTL_IS_FSCTL,
};
use super::wire::{Command, FileId, NtStatus};

mod lock;
pub use lock::LockKind;

/// Requests kept in flight by `download`/`upload` and large `read_at`/`write_at`.
pub const PIPELINE_DEPTH: usize = 16;
/// Chunk size for pipelined transfers (multi-credit with large MTU).
pub const CHUNK: u32 = 1 << 20;
/// The byte whose exclusive lock serialises appenders (see [`File::append`]).
const APPEND_MUTEX: u64 = u64::MAX - 1;

/// What to open and how (like `std::fs::OpenOptions`).
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenOptions {
    read: bool,
    write: bool,
    append: bool,
    create: bool,
    create_new: bool,
    truncate: bool,
    directory: bool,
    delete: bool,
    /// Leave FILE_SHARE_DELETE out of the share mode (see [`OpenOptions::share_delete`]).
    deny_delete: bool,
    /// The lease key to open under instead of a new one (see [`OpenOptions::lease_key`]).
    lease_key: Option<[u8; 16]>,
    /// File attributes for a newly created file (0 = server default).
    pub attributes: u32,
}

impl OpenOptions {
    pub fn new() -> Self {
        OpenOptions::default()
    }
    /// Open an existing directory for listing.
    pub fn directory() -> Self {
        OpenOptions { read: true, directory: true, ..Default::default() }
    }
    pub fn read(mut self, v: bool) -> Self {
        self.read = v;
        self
    }
    pub fn write(mut self, v: bool) -> Self {
        self.write = v;
        self
    }
    pub fn append(mut self, v: bool) -> Self {
        self.append = v;
        self
    }
    pub fn create(mut self, v: bool) -> Self {
        self.create = v;
        self
    }
    /// Fail with STATUS_OBJECT_NAME_COLLISION if it exists (O_EXCL).
    pub fn create_new(mut self, v: bool) -> Self {
        self.create_new = v;
        self
    }
    pub fn truncate(mut self, v: bool) -> Self {
        self.truncate = v;
        self
    }
    /// Ask for DELETE access too (needed to rename or delete through the handle).
    pub fn delete(mut self, v: bool) -> Self {
        self.delete = v;
        self
    }
    pub fn dir(mut self, v: bool) -> Self {
        self.directory = v;
        self
    }
    /// Whether other opens may delete or rename the file while this one is open (FILE_SHARE_DELETE; on by
    /// default, as for every open of this crate). Off, another client's delete or rename open conflicts on
    /// share mode: a server breaks this open's handle-caching lease first and waits for the answer
    /// (MS-SMB2 3.3.5.9.8; Samba does), so a client that closes the open on that break lets it through.
    pub fn share_delete(mut self, v: bool) -> Self {
        self.deny_delete = !v;
        self
    }
    /// Open under lease `key` (one an open of the same file already holds) rather than a new key: the new
    /// open shares that lease (MS-SMB2 3.3.5.9.11), so it breaks nothing of it and keeps it alive when the
    /// other open closes. Only for durable opens (SMB 3.x files); ignored otherwise.
    pub fn lease_key(mut self, key: [u8; 16]) -> Self {
        self.lease_key = Some(key);
        self
    }

    /// The share mode (`share_access::*`): read and write always, delete unless [`OpenOptions::share_delete`]
    /// turned it off.
    pub(crate) fn share_access(&self) -> u32 {
        let all = share_access::READ | share_access::WRITE | share_access::DELETE;
        if self.deny_delete {
            all & !share_access::DELETE
        } else {
            all
        }
    }

    pub(crate) fn access(&self) -> u32 {
        let mut a = access::FILE_READ_ATTRIBUTES | access::SYNCHRONIZE;
        if self.read {
            a |= if self.directory { access::FILE_LIST_DIRECTORY } else { access::FILE_READ_DATA };
        }
        if self.write || self.append {
            a |= access::FILE_WRITE_ATTRIBUTES;
            a |= if self.append && !self.write {
                access::FILE_APPEND_DATA
            } else {
                access::FILE_WRITE_DATA | access::FILE_APPEND_DATA
            };
        }
        if self.delete {
            a |= access::DELETE;
        }
        a
    }

    pub(crate) fn disposition(&self) -> u32 {
        match (self.create_new, self.create, self.truncate) {
            (true, _, _) => disposition::CREATE,
            (false, true, true) => disposition::OVERWRITE_IF,
            (false, true, false) => disposition::OPEN_IF,
            (false, false, true) => disposition::OVERWRITE,
            (false, false, false) => disposition::OPEN,
        }
    }

    pub(crate) fn create_options(&self) -> u32 {
        if self.directory {
            options::DIRECTORY_FILE
        } else if self.create || self.create_new || self.truncate || self.write {
            options::NON_DIRECTORY_FILE
        } else {
            0
        }
    }
}

/// How an open is made, kept to reclaim or reopen it after a reconnect.
#[derive(Clone, Copy, Debug)]
struct OpenParams {
    access: u32,
    share: u32,
    disposition: u32,
    options: u32,
    attributes: u32,
    /// Durable with a lease (SMB 3.x, not a directory).
    durable: bool,
}

/// Where an open stands on the current connection.
#[derive(Clone, Debug)]
struct OpenBinding {
    id: FileId,
    /// The link generation this id belongs to.
    generation: u64,
    /// The CreateGuid of the open the server knows (a reopen gets a new one).
    create_guid: [u8; 16],
    /// Whether the server made it durable (a DH2Q answer came back).
    durable: bool,
    /// Set when the open could not come back after a reconnect.
    lost: Option<String>,
}

/// The state of one open that the link re-binds after a reconnect.
pub(crate) struct OpenInner {
    tree: Tree,
    path: String,
    params: OpenParams,
    lease_key: Option<[u8; 16]>,
    binding: Mutex<OpenBinding>,
}

/// Lease asked for with a durable open: read, write and handle caching. Handle caching is what makes servers
/// grant durability; read caching makes the server tell us (a lease break, see `lease`) before another
/// client's write, so a user that caches data can invalidate first; write caching lets written data stay
/// behind (write-behind) until another client opens the file, whose open then breaks it and waits for our
/// flush. Only one client holds write caching at a time: the server grants it to the first opener and breaks
/// it to read+handle when another client opens.
const LEASE_STATE: u32 = lease_state::READ_CACHING | lease_state::WRITE_CACHING | lease_state::HANDLE_CACHING;

/// How long the server keeps a durable open after its connection is lost (the DH2Q Timeout, MS-SMB2
/// 2.2.13.2.11; 0 would let the server choose: 60 s on Samba and Windows). Short on purpose: an open that
/// cannot be reclaimed after a reconnect (Samba 4.17 refuses a reclaim when the file's size or times changed
/// since the disconnect, as a write still running in its thread pool at the cut does, or when the file has
/// another open) is reopened by path, and the stale open left behind keeps its lease until this expires. A
/// stale write-caching lease makes every other client's open of the file wait for a break that cannot be
/// delivered (Samba defers such an open until the stale open is scavenged), so this bounds that wait, well
/// inside other clients' request timeouts (smbclient: 20 s). A reconnect reclaims within about a second;
/// an outage longer than this reopens by path, which keeps the handle working (byte-range locks are lost
/// then, and logged).
pub(crate) const DURABLE_TIMEOUT_MS: u32 = 10_000;

fn random_guid() -> [u8; 16] {
    let mut g = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut g);
    g
}

/// The CREATE of an open made with `params` under `lease_key`, with `contexts`.
fn create_request(
    params: &OpenParams,
    lease_key: Option<[u8; 16]>,
    path: &str,
    disposition: u32,
    contexts: Vec<CreateContext>,
) -> CreateRequest {
    let leased = lease_key.is_some() && !contexts.is_empty();
    CreateRequest {
        oplock_level: if leased { create::OPLOCK_LEVEL_LEASE } else { create::OPLOCK_LEVEL_NONE },
        impersonation_level: create::IMPERSONATION_IMPERSONATION,
        desired_access: params.access,
        file_attributes: params.attributes,
        share_access: params.share,
        create_disposition: disposition,
        create_options: params.options,
        name: smb_path(path),
        contexts,
    }
}

/// DH2Q and RqLs for a new durable open under `create_guid`.
fn durable_contexts(params: &OpenParams, lease_key: Option<[u8; 16]>, create_guid: [u8; 16]) -> Vec<CreateContext> {
    match lease_key {
        Some(key) if params.durable => vec![
            DurableRequestV2 { timeout_ms: DURABLE_TIMEOUT_MS, flags: 0, create_guid }.context(),
            LeaseV2 { key, state: LEASE_STATE, flags: 0, parent_key: [0; 16], epoch: 0 }.context(),
        ],
        _ => Vec::new(),
    }
}

impl OpenParams {
    /// How `opts` opens a file; `durable` on SMB 3.x for anything but a directory.
    fn of(opts: &OpenOptions, durable: bool) -> OpenParams {
        OpenParams {
            access: opts.access(),
            share: opts.share_access(),
            disposition: opts.disposition(),
            options: opts.create_options(),
            attributes: opts.attributes,
            durable,
        }
    }
}

impl OpenInner {
    /// The file id for requests on a tree binding of `generation`.
    fn id_for(&self, generation: u64) -> Result<FileId> {
        let b = self.binding.lock().unwrap();
        match &b.lost {
            Some(why) => Err(Error::HandleLost { path: display_path(&self.path), why: why.clone() }),
            None if b.generation == generation => Ok(b.id),
            None => Err(Error::HandleLost { path: display_path(&self.path), why: "not recovered".into() }),
        }
    }

    pub fn lease_key(&self) -> Option<[u8; 16]> {
        self.lease_key
    }

    /// The handler of this open's tree for lease breaks, if one is registered.
    pub fn lease_handler(&self) -> Option<Arc<dyn crate::lease::LeaseBreakHandler>> {
        self.tree.inner.lease_handler.lock().unwrap().clone()
    }

    pub fn share_path(&self) -> &str {
        &self.path
    }

    /// Tree id and share encryption for a request about this open (a lease break ack).
    pub fn tree_route(&self) -> (u32, bool) {
        let generation = self.binding.lock().unwrap().generation;
        self.tree.inner.binding(generation).map_or((0, false), |b| (b.id, b.encrypt))
    }

    fn create_request(&self, disposition: u32, contexts: Vec<CreateContext>) -> CreateRequest {
        create_request(&self.params, self.lease_key, &self.path, disposition, contexts)
    }

    /// DH2Q and RqLs for a new durable open under `create_guid`.
    fn durable_contexts(&self, create_guid: [u8; 16]) -> Vec<CreateContext> {
        durable_contexts(&self.params, self.lease_key, create_guid)
    }

    /// Whether the server made this open durable and it is not lost.
    pub fn is_reclaimable(&self) -> bool {
        let b = self.binding.lock().unwrap();
        b.durable && b.lost.is_none()
    }

    /// Tries to reclaim this open with DH2C on a new session (during a
    /// reconnect, before the new generation is published). `Ok(true)`: back,
    /// same open. `Ok(false)`: not reclaimed (not durable, or the server does
    /// not know it, or not yet); the caller may try again or [`reopen`](Self::reopen).
    /// A lost connection fails the reconnect attempt.
    pub async fn reclaim(&self, session: &Arc<Session>, generation: u64) -> Result<bool> {
        let old = self.binding.lock().unwrap().clone();
        if old.lost.is_some() || !old.durable {
            return Ok(false);
        }
        let Ok(tree) = self.tree.inner.binding(generation) else { return Ok(false) };
        let path = display_path(&self.path);
        let mut contexts =
            vec![DurableReconnectV2 { file_id: old.id, create_guid: old.create_guid, flags: 0 }.context()];
        if let Some(key) = self.lease_key {
            contexts.push(LeaseV2 { key, state: LEASE_STATE, flags: 0, parent_key: [0; 16], epoch: 0 }.context());
        }
        let req = self.create_request(disposition::OPEN, contexts);
        let out = Outgoing::new(Command::Create, tree.id, 0, |m| req.encode(m));
        match session.request(out, tree.encrypt).await {
            Ok(r) if r.header.status.is_success() => {
                let body = CreateResponse::decode(&r.msg)?;
                *self.binding.lock().unwrap() = OpenBinding { id: body.file_id, generation, ..old };
                tracing::info!(%path, how = "durable", "file handle came back: reclaimed its durable handle");
                Ok(true)
            }
            Ok(r) => {
                tracing::debug!(%path, status = %r.header.status, "durable handle not reclaimed");
                Ok(false)
            }
            Err(e) if is_connection_loss(&e) => Err(e),
            Err(e) => {
                tracing::debug!(%path, error = %e, "durable reclaim failed");
                Ok(false)
            }
        }
    }

    /// Opens the file again by path with the same access and share mode (a
    /// new durable open), after [`reclaim`](Self::reclaim) could not. A lost
    /// connection fails the reconnect attempt; anything else (the file was
    /// deleted meanwhile) loses this handle only. Returns whether it is usable.
    pub async fn reopen(&self, session: &Arc<Session>, generation: u64) -> Result<bool> {
        if self.binding.lock().unwrap().lost.is_some() {
            return Ok(false);
        }
        let tree = match self.tree.inner.binding(generation) {
            Ok(t) => t,
            Err(e) => return Ok(self.mark_lost(e.to_string())),
        };
        let path = display_path(&self.path);
        let create_guid = random_guid();
        let req = self.create_request(disposition::OPEN, self.durable_contexts(create_guid));
        let out = Outgoing::new(Command::Create, tree.id, 0, |m| req.encode(m));
        match session.request(out, tree.encrypt).await {
            Ok(r) if r.header.status.is_success() => {
                let body = CreateResponse::decode(&r.msg)?;
                let durable = self.params.durable && matches!(body.durable_v2(), Ok(Some(_)));
                *self.binding.lock().unwrap() =
                    OpenBinding { id: body.file_id, generation, create_guid, durable, lost: None };
                tracing::info!(%path, how = "reopened", "file handle came back: reopened by path");
                Ok(true)
            }
            Ok(r) => {
                let why = format!("reopening by path: {}", r.header.status);
                tracing::warn!(%path, %why, "file handle could not come back");
                Ok(self.mark_lost(why))
            }
            Err(e) if is_connection_loss(&e) => Err(e),
            Err(e) => {
                tracing::warn!(%path, error = %e, "file handle could not come back");
                Ok(self.mark_lost(e.to_string()))
            }
        }
    }

    fn mark_lost(&self, why: String) -> bool {
        self.binding.lock().unwrap().lost = Some(why);
        false
    }
}

/// The READ of an open-and-read compound (and of CREATE+READ+CLOSE): from the start of the file, on the
/// handle the CREATE opened.
pub(crate) fn first_read(len: u32) -> ReadRequest {
    ReadRequest {
        padding: 0x50,
        flags: 0,
        length: len,
        offset: 0,
        file_id: FileId::ANY,
        minimum_count: 0,
        remaining_bytes: 0,
    }
}

/// The data of that READ's answer (empty at end of file).
fn first_read_data(r: &super::conn::Response, len: u32) -> Result<Bytes> {
    if r.header.status == NtStatus::END_OF_FILE {
        return Ok(Bytes::new());
    }
    if !r.header.status.is_success() {
        return Err(Error::Status { op: "read with the open".into(), status: r.header.status });
    }
    let (_, data) = ReadResponse::parse(&r.msg)?;
    if data.len() > len as usize {
        return Err(Error::Protocol(format!("READ returned {} bytes, asked for {len}", data.len())));
    }
    Ok(r.msg.slice_ref(data))
}

/// An open handle. Close it with [`File::close`]; a dropped handle is closed
/// in the background. It survives a lost connection: on SMB 3.x files are
/// opened durable (with a lease), reclaimed on the new connection, or
/// reopened by path where the server forgot them; requests in flight are
/// sent again. A handle that cannot come back fails with
/// [`Error::HandleLost`].
pub struct File {
    inner: Arc<OpenInner>,
    opened: CreateResponse,
    closed: AtomicBool,
    /// Where the CLOSE of a dropped handle runs, even off the runtime.
    runtime: Option<tokio::runtime::Handle>,
    /// LOCK requests sent on this open, for their LockSequence (see `lock`).
    lock_requests: AtomicU64,
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("File").field("path", &self.inner.path).field("id", &self.id()).finish()
    }
}

impl File {
    /// CREATE, durable with a lease where the dialect allows. A CREATE
    /// whose connection is lost is sent again as a replay with the same
    /// CreateGuid, so a server that performed it hands back the same open.
    pub(crate) async fn open(tree: &Tree, path: &str, opts: OpenOptions) -> Result<File> {
        File::open_reading(tree, path, opts, None).await.map(|(f, _)| f)
    }

    /// [`File::open`] that, with `read_len`, also reads up to that many bytes from the start of the file in
    /// the same round trip (CREATE + READ as one related compound, MS-SMB2 3.2.4.1.4): a small file is open
    /// and read for the price of the open alone. The data is a slice of the receive buffer.
    pub(crate) async fn open_reading(
        tree: &Tree,
        path: &str,
        opts: OpenOptions,
        read_len: Option<u32>,
    ) -> Result<(File, Option<Bytes>)> {
        let read_len = read_len.map(|l| l.min(tree.max_read()));
        let link = tree.inner.link.clone();
        let durable = !opts.directory && link.first.dialect.is_smb3();
        let inner = OpenInner {
            tree: tree.clone(),
            path: path.to_string(),
            params: OpenParams::of(&opts, durable),
            lease_key: durable.then(|| opts.lease_key.unwrap_or_else(random_guid)),
            binding: Mutex::new(OpenBinding {
                id: FileId::ANY,
                generation: 0,
                create_guid: random_guid(),
                durable: false,
                lost: None,
            }),
        };
        let create_guid = inner.binding.lock().unwrap().create_guid;
        let mut disposition = inner.params.disposition;
        let mut deadline = None;
        let mut after = None;
        let mut replayed = false;
        loop {
            let (session, generation) = link.up(after, &mut deadline).await?;
            // Registered before any recovery pass can look (see `Link::gate`).
            let _shared = link.gate.read().await;
            if link.current().is_none_or(|(_, g)| g != generation) {
                continue;
            }
            let b = tree.inner.binding(generation)?;
            let mut contexts = inner.durable_contexts(create_guid);
            // The file's index number comes back with the open: no query for it after a create.
            contexts.push(CreateContext::query_on_disk_id());
            let req = inner.create_request(disposition, contexts);
            let mut outs = vec![Outgoing::new(Command::Create, b.id, 0, |m| req.encode(m))];
            if let Some(len) = read_len {
                outs.push(Outgoing::new(Command::Read, b.id, len as usize, |m| first_read(len).encode(m)));
            }
            let replay = replayed && session.info.dialect.is_smb3();
            outs.iter_mut().for_each(|o| o.replay = replay);
            let sent = match outs.len() {
                1 => session.request(outs.pop().expect("one request"), b.encrypt).await.map(|r| vec![r]),
                _ => session.compound(outs, b.encrypt).await,
            };
            let (resp, read) = match sent {
                Ok(mut rs) => {
                    let read = (rs.len() > 1).then(|| rs.pop()).flatten();
                    (Ok(rs.swap_remove(0)), read)
                }
                Err(e) => (Err(e), None),
            };
            let resp = match resp {
                Ok(r) if is_session_loss(r.header.status) => {
                    after = link.after_session_status(&session, generation, r.header.status).await;
                    replayed = true;
                    continue;
                }
                Ok(r) => r,
                Err(e) if is_connection_loss(&e) => {
                    after = Some(link.lost(&session, generation, &e.to_string()));
                    replayed = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if replayed && disposition == disposition::CREATE && resp.header.status == NtStatus::OBJECT_NAME_COLLISION {
                // The first attempt created it, and the server forgot that open: open what it made.
                tracing::info!(path = %display_path(path), "replayed exclusive create found its file; opening it");
                disposition = disposition::OPEN;
                continue;
            }
            let resp = resp.ok(|| format!("open {}", display_path(path)))?;
            let body = CreateResponse::decode(&resp.msg)?;
            let granted = durable && matches!(body.durable_v2(), Ok(Some(_)));
            if durable && !granted {
                tracing::debug!(path = %display_path(path), "server did not make the open durable; a reconnect reopens it by path");
            }
            *inner.binding.lock().unwrap() =
                OpenBinding { id: body.file_id, generation: b.generation, create_guid, durable: granted, lost: None };
            let inner = Arc::new(inner);
            link.register_open(&inner);
            let file = File {
                inner,
                opened: body,
                closed: AtomicBool::new(false),
                runtime: tokio::runtime::Handle::try_current().ok(),
                lock_requests: AtomicU64::new(0),
            };
            // The handle is open whatever the READ answered: its failure only means no data up front.
            let data = read.zip(read_len).and_then(|(r, len)| match first_read_data(&r, len) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::debug!(path = %display_path(path), error = %e, "read with the open failed; reads go to the server");
                    None
                }
            });
            return Ok((file, data));
        }
    }

    /// The current file id (it may change across a reconnect).
    pub fn id(&self) -> FileId {
        self.inner.binding.lock().unwrap().id
    }

    pub fn path(&self) -> &str {
        &self.inner.path
    }

    pub fn tree(&self) -> &Tree {
        &self.inner.tree
    }

    /// The key of the lease this open holds (SMB 3.x files), as [`crate::LeaseBreak::key`] names it.
    pub fn lease_key(&self) -> Option<[u8; 16]> {
        self.inner.lease_key
    }

    /// The lease state (`lease_state` bits) the server granted with this open; 0 without a lease. Breaks
    /// lower it later: the [`LeaseBreakHandler`](crate::LeaseBreakHandler) hears of each.
    pub fn granted_lease(&self) -> u32 {
        self.opened.lease_v2().ok().flatten().map_or(0, |l| l.state)
    }

    /// Whether the server made this open durable (it can be reclaimed after a lost connection).
    pub fn is_durable(&self) -> bool {
        self.inner.binding.lock().unwrap().durable
    }

    /// Sends one request about this handle, encoded for its current file
    /// id; sent again after a reconnect (see `Tree::send_with`).
    pub(crate) async fn request(
        &self,
        command: Command,
        payload: usize,
        encode: &(dyn Fn(FileId, &mut Vec<u8>) + Sync),
    ) -> Result<super::conn::Response> {
        let (mut r, _) = self
            .inner
            .tree
            .send_with(false, &|b| {
                let id = self.inner.id_for(b.generation)?;
                Ok(vec![Outgoing::new(command, b.id, payload, |m| encode(id, m))])
            })
            .await?;
        Ok(r.pop().expect("one response"))
    }

    /// Size and attributes as of the open, with the file's index number when the server answered the
    /// open's QFid (0 when it did not); one link is assumed.
    pub fn opened_metadata(&self) -> Metadata {
        let o = &self.opened;
        Metadata {
            size: o.end_of_file,
            allocation_size: o.allocation_size,
            attributes: o.file_attributes,
            file_id: super::small_file::disk_file_id(o).unwrap_or(0),
            links: 1,
            created: o.creation_time,
            accessed: o.last_access_time,
            modified: o.last_write_time,
            changed: o.change_time,
        }
    }

    /// Whether CREATE made a new file (rather than opening or overwriting one).
    pub fn was_created(&self) -> bool {
        self.opened.create_action == super::wire::create::create_action::CREATED
    }

    pub fn is_dir(&self) -> bool {
        self.opened.file_attributes & attributes::DIRECTORY != 0
    }

    fn op(&self, what: &str) -> String {
        format!("{what} {}", display_path(&self.inner.path))
    }

    /// One READ of at most the server's max read size; empty at end of file. The data is a slice of the
    /// decrypted receive buffer (no copy).
    async fn read_chunk(&self, offset: u64, len: u32) -> Result<Bytes> {
        let resp = self
            .request(Command::Read, len as usize, &|file_id, m| {
                ReadRequest {
                    padding: 0x50,
                    flags: 0,
                    length: len,
                    offset,
                    file_id,
                    minimum_count: 0,
                    remaining_bytes: 0,
                }
                .encode(m)
            })
            .await?;
        if resp.header.status == NtStatus::END_OF_FILE {
            return Ok(Bytes::new());
        }
        let resp = resp.ok(|| self.op("read"))?;
        let (_, data) = ReadResponse::parse(&resp.msg)?;
        if data.len() > len as usize {
            return Err(Error::Protocol(format!("READ returned {} bytes, asked for {len}", data.len())));
        }
        Ok(resp.msg.slice_ref(data))
    }

    /// Reads up to `len` bytes at `offset`; shorter only at end of file.
    /// Large reads are split and pipelined.
    pub async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.read_at_bytes(offset, len).await.map(Vec::from)
    }

    /// [`File::read_at`] without a copy when `len` fits one READ: the bytes stay in the buffer they were
    /// received (and decrypted) in, for a caller that passes them on (the FUSE read reply).
    pub async fn read_at_bytes(&self, offset: u64, len: usize) -> Result<Bytes> {
        let chunk = self.inner.tree.max_read().min(CHUNK) as usize;
        if len <= chunk {
            return self.read_chunk(offset, len as u32).await;
        }
        let parts: Vec<(u64, u32)> =
            (0..len).step_by(chunk).map(|start| (offset + start as u64, (len - start).min(chunk) as u32)).collect();
        let mut out = Vec::with_capacity(len);
        let mut reads = stream::iter(parts).map(|(off, l)| self.read_chunk(off, l)).buffered(PIPELINE_DEPTH);
        while let Some(data) = reads.next().await {
            let data = data?;
            let short = data.len() < chunk;
            out.extend_from_slice(&data);
            if short {
                break;
            }
        }
        Ok(Bytes::from(out))
    }

    /// One WRITE; returns the count the server wrote.
    async fn write_chunk(&self, offset: u64, data: &[u8]) -> Result<u32> {
        let resp = self
            .request(Command::Write, data.len(), &|file_id, m| WriteRequest::encode_parts(offset, file_id, 0, data, m))
            .await?
            .ok(|| self.op("write"))?;
        let body = WriteResponse::decode(&resp.msg)?;
        if body.count as usize > data.len() {
            return Err(Error::Protocol(format!("WRITE claims {} bytes of {}", body.count, data.len())));
        }
        Ok(body.count)
    }

    /// Writes all of `data` at `offset`, pipelining large writes.
    pub async fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        let chunk = self.inner.tree.max_write().min(CHUNK) as usize;
        stream::iter(data.chunks(chunk).enumerate().map(Ok))
            .try_for_each_concurrent(PIPELINE_DEPTH, |(i, part)| async move {
                let mut done = 0usize;
                let base = offset + (i * chunk) as u64;
                while done < part.len() {
                    let n = self.write_chunk(base + done as u64, &part[done..]).await? as usize;
                    if n == 0 {
                        return Err(Error::Status { op: self.op("write"), status: NtStatus::DISK_FULL });
                    }
                    done += n;
                }
                Ok(())
            })
            .await
    }

    /// Appends `data` at the server's end of file, wherever other clients have moved it meanwhile. MS-FSA's
    /// "write at end of file" offset (0xFFFFFFFFFFFFFFFF) is refused by Samba (STATUS_INVALID_PARAMETER), so
    /// appenders serialise through an exclusive byte-range lock on the last byte of the 64-bit range (which no
    /// file reaches and POSIX locks, at most 2^63 long, never cover): lock, read the end of file, write there,
    /// unlock. Every client of this library appends the same way, so appenders on different nodes never
    /// overwrite each other; a writer that does not take the lock is not held back.
    pub async fn append(&self, data: &[u8]) -> Result<()> {
        self.lock_wait(APPEND_MUTEX, 1, LockKind::Exclusive, std::future::pending()).await?;
        let written = async {
            let end = self.metadata().await?.size;
            self.write_at(end, data).await
        }
        .await;
        let unlocked = self.unlock(APPEND_MUTEX, 1).await;
        written.and(unlocked)
    }

    /// FLUSH: asks the server to make written data durable.
    pub async fn flush(&self) -> Result<()> {
        self.request(Command::Flush, 0, &|file_id, m| FlushRequest { file_id }.encode(m))
            .await?
            .ok(|| self.op("flush"))?;
        Ok(())
    }

    /// Truncates or extends the file.
    pub async fn set_len(&self, len: u64) -> Result<()> {
        self.set_info_as(file_class::END_OF_FILE, FileEndOfFileInformation { end_of_file: len }.encode(), "truncate")
            .await
    }

    /// Sets a FILE-class info structure on this handle (basic info, rename, disposition...).
    pub async fn set_info(&self, class: u8, buffer: Vec<u8>) -> Result<()> {
        self.set_info_as(class, buffer, "set info on").await
    }

    async fn set_info_as(&self, class: u8, buffer: Vec<u8>, what: &str) -> Result<()> {
        self.request(Command::SetInfo, 0, &|file_id, m| {
            SetInfoRequest {
                info_type: info::INFO_FILE,
                file_info_class: class,
                additional_information: 0,
                file_id,
                buffer: buffer.clone(),
            }
            .encode(m)
        })
        .await?
        .ok(|| self.op(what))?;
        Ok(())
    }

    /// Queries a FILE-class info structure on this handle.
    pub async fn query_info(&self, class: u8, max_len: u32) -> Result<Vec<u8>> {
        let resp = self
            .request(Command::QueryInfo, max_len as usize, &|file_id, m| {
                info::QueryInfoRequest {
                    info_type: info::INFO_FILE,
                    file_info_class: class,
                    output_buffer_length: max_len,
                    input: Vec::new(),
                    additional_information: 0,
                    flags: 0,
                    file_id,
                }
                .encode(m)
            })
            .await?
            .ok(|| self.op("query info on"))?;
        Ok(info::QueryInfoResponse::decode(&resp.msg)?.buffer)
    }

    /// Current size and attributes from the server.
    pub async fn metadata(&self) -> Result<Metadata> {
        let buf = self.query_info(file_class::ALL, 4096).await?;
        Ok(Metadata::from_all(&info::FileAllInformation::decode(&buf)?))
    }

    /// IOCTL/FSCTL on this handle; returns the output buffer.
    pub async fn fsctl(&self, ctl_code: u32, input: Vec<u8>, max_output: u32) -> Result<Vec<u8>> {
        let resp = self.fsctl_raw(ctl_code, input, max_output).await?.ok(|| self.op("ioctl on"))?;
        Ok(IoctlResponse::decode(&resp.msg)?.output)
    }

    async fn fsctl_raw(&self, ctl_code: u32, input: Vec<u8>, max_output: u32) -> Result<super::conn::Response> {
        let payload = input.len().max(max_output as usize);
        self.request(Command::Ioctl, payload, &|file_id, m| {
            IoctlRequest {
                ctl_code,
                file_id,
                input: input.clone(),
                max_input_response: 0,
                max_output_response: max_output,
                flags: IOCTL_IS_FSCTL,
            }
            .encode(m)
        })
        .await
    }

    /// FSCTL_SRV_REQUEST_RESUME_KEY: a token naming this open as a server-side copy source.
    pub async fn resume_key(&self) -> Result<ResumeKey> {
        let out = self.fsctl(FSCTL_SRV_REQUEST_RESUME_KEY, Vec::new(), 32).await?;
        Ok(ResumeKey::decode(&out)?)
    }

    /// Copies `len` bytes from the source named by `key` into this file at the
    /// same offsets with FSCTL_SRV_COPYCHUNK_WRITE: the data never leaves the
    /// server. `Ok(false)` when the server does not offer server-side copy.
    pub async fn copy_chunks_from(&self, key: &ResumeKey, len: u64) -> Result<bool> {
        // MS-SMB2 3.3.3: defaults a server advertises (256 chunks, 1 MiB each, 16 MiB a request).
        let (mut max_chunks, mut max_chunk, mut max_total) = (256u64, 1u64 << 20, 16u64 << 20);
        let mut offset = 0u64;
        while offset < len {
            let total = (len - offset).min(max_total);
            let mut chunks = Vec::new();
            let mut at = offset;
            while at < offset + total && (chunks.len() as u64) < max_chunks {
                let l = (offset + total - at).min(max_chunk);
                chunks.push(CopyChunk { source_offset: at, target_offset: at, length: l as u32 });
                at += l;
            }
            let input = CopyChunkRequest { source_key: key.0, chunks }.encode();
            let resp = self.fsctl_raw(FSCTL_SRV_COPYCHUNK_WRITE, input, 12).await?;
            match resp.header.status {
                NtStatus::SUCCESS => {
                    let out = IoctlResponse::decode(&resp.msg)?.output;
                    let r = CopyChunkResponse::decode(&out)?;
                    if r.total_bytes_written == 0 {
                        return Err(Error::Protocol("server-side copy made no progress".into()));
                    }
                    offset += u64::from(r.total_bytes_written);
                }
                NtStatus::INVALID_PARAMETER => {
                    // The server tells its limits in the response (MS-SMB2 3.3.5.15.6.2).
                    let out = IoctlResponse::decode(&resp.msg)?.output;
                    let r = CopyChunkResponse::decode(&out)?;
                    let (c, s, t) = (
                        u64::from(r.chunks_written),
                        u64::from(r.chunk_bytes_written),
                        u64::from(r.total_bytes_written),
                    );
                    if c == 0 || s == 0 || t == 0 || (c, s, t) == (max_chunks, max_chunk, max_total) {
                        return Err(Error::Status { op: self.op("server-side copy into"), status: resp.header.status });
                    }
                    (max_chunks, max_chunk, max_total) = (c, s, t);
                }
                NtStatus::NOT_SUPPORTED | NtStatus::INVALID_DEVICE_REQUEST | NtStatus::NOT_IMPLEMENTED => {
                    return Ok(false)
                }
                status => return Err(Error::Status { op: self.op("server-side copy into"), status }),
            }
        }
        Ok(true)
    }

    /// CLOSE.
    pub async fn close(self) -> Result<()> {
        self.closed.store(true, Ordering::SeqCst);
        match self.request(Command::Close, 0, &|file_id, m| CloseRequest { flags: 0, file_id }.encode(m)).await {
            // Closed either way: the handle did not survive a reconnect, or
            // the first CLOSE went through before the connection was lost.
            Err(Error::HandleLost { .. }) => Ok(()),
            Ok(r) if r.header.status == NtStatus::FILE_CLOSED => Ok(()),
            r => r?.ok(|| self.op("close")).map(|_| ()),
        }
    }

    /// Streams the whole file into `sink` with reads kept in flight; returns the byte count.
    pub async fn download<W: AsyncWrite + Unpin>(&self, sink: &mut W) -> Result<u64> {
        let total = self.download_to(&mut WriteSink(&mut *sink)).await?;
        sink.flush().await.map_err(|source| Error::LocalIo { op: "writing local file".into(), source })?;
        Ok(total)
    }

    /// Streams the whole file as it arrives, one chunk (up to the read size) at a time, into `chunks`, with
    /// reads kept in flight; returns the byte count. The chunks are the decrypted responses themselves: a
    /// receiver that writes them out (a thread with a local file) copies nothing in between. The channel's
    /// capacity bounds the memory held when the receiver is slower. A receiver gone before the end is an
    /// error ([`Error::LocalIo`], broken pipe).
    pub async fn download_into(&self, chunks: tokio::sync::mpsc::Sender<Bytes>) -> Result<u64> {
        self.download_to(&mut ChannelSink(chunks)).await
    }

    async fn download_to(&self, sink: &mut impl ChunkSink) -> Result<u64> {
        let chunk = self.inner.tree.max_read().min(CHUNK);
        let mut offset = 0u64;
        let mut total = 0u64;
        // The size as of the open (no extra round trip); growth since is fetched below.
        let size = self.opened_metadata().size;
        let mut reads = stream::iter((0..).map(|i: u64| i * u64::from(chunk)).take_while(|o| *o < size.max(1)))
            .map(|o| self.read_chunk(o, chunk))
            .buffered(PIPELINE_DEPTH);
        let put_err = |source| Error::LocalIo { op: "writing local file".into(), source };
        while let Some(data) = reads.next().await {
            let data = data?;
            if data.is_empty() {
                break;
            }
            let (len, last) = (data.len(), data.len() < chunk as usize);
            sink.put(data).await.map_err(put_err)?;
            total += len as u64;
            offset += len as u64;
            if last {
                break;
            }
        }
        // The file grew after we sized it: fetch the rest sequentially.
        loop {
            let data = self.read_chunk(offset, chunk).await?;
            if data.is_empty() {
                break;
            }
            let len = data.len() as u64;
            sink.put(data).await.map_err(put_err)?;
            offset += len;
            total += len;
        }
        Ok(total)
    }

    /// Writes everything from `source` at offset 0 with writes kept in flight; returns the byte count.
    pub async fn upload<R: AsyncRead + Unpin>(&self, source: &mut R) -> Result<u64> {
        let chunk = self.inner.tree.max_write().min(CHUNK) as usize;
        let mut offset = 0u64;
        let mut inflight = futures_util::stream::FuturesUnordered::new();
        let mut eof = false;
        while !eof || !inflight.is_empty() {
            while !eof && inflight.len() < PIPELINE_DEPTH {
                let mut buf = vec![0u8; chunk];
                let mut filled = 0;
                while filled < chunk {
                    let n = source
                        .read(&mut buf[filled..])
                        .await
                        .map_err(|source| Error::LocalIo { op: "reading local file".into(), source })?;
                    if n == 0 {
                        eof = true;
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    break;
                }
                buf.truncate(filled);
                let at = offset;
                offset += filled as u64;
                inflight.push(async move { self.write_at(at, &buf).await });
            }
            if let Some(r) = inflight.next().await {
                r?;
            }
        }
        Ok(offset)
    }
}

impl Drop for File {
    fn drop(&mut self) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let inner = self.inner.clone();
        if let Some(rt) = tokio::runtime::Handle::try_current().ok().or_else(|| self.runtime.clone()) {
            rt.spawn(async move {
                // Only on the connection the handle lives on: a dropped handle is not worth a reconnect wait.
                let Some((_, generation)) = inner.tree.inner.link.current() else { return };
                let (Ok(tree), Ok(file_id)) = (inner.tree.inner.binding(generation), inner.id_for(generation)) else {
                    return;
                };
                let out = Outgoing::new(Command::Close, tree.id, 0, |m| CloseRequest { flags: 0, file_id }.encode(m));
                let _ = tree.session.request(out, tree.encrypt).await;
            });
        }
    }
}

/// Where [`File::download`] and [`File::download_into`] put what they read.
trait ChunkSink {
    async fn put(&mut self, data: Bytes) -> std::io::Result<()>;
}

struct WriteSink<'a, W>(&'a mut W);

impl<W: AsyncWrite + Unpin> ChunkSink for WriteSink<'_, W> {
    async fn put(&mut self, data: Bytes) -> std::io::Result<()> {
        self.0.write_all(&data).await
    }
}

struct ChannelSink(tokio::sync::mpsc::Sender<Bytes>);

impl ChunkSink for ChannelSink {
    async fn put(&mut self, data: Bytes) -> std::io::Result<()> {
        self.0
            .send(data)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the receiver of the download is gone"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::header::Header;

    /// The CREATE an open with `opts` sends (durable, with a lease), encoded and decoded again.
    fn sent(opts: OpenOptions) -> CreateRequest {
        let params = OpenParams::of(&opts, true);
        let key = opts.lease_key.unwrap_or([9; 16]);
        let contexts = durable_contexts(&params, Some(key), [5; 16]);
        let req = create_request(&params, Some(key), "d/f", disposition::OPEN, contexts);
        let mut msg = Vec::new();
        Header::new(Command::Create).encode(&mut msg);
        req.encode(&mut msg);
        CreateRequest::decode(&msg).unwrap()
    }

    #[test]
    fn every_open_shares_delete_unless_told_not_to() {
        let all = share_access::READ | share_access::WRITE | share_access::DELETE;
        assert_eq!(sent(OpenOptions::new().read(true)).share_access, all);
        assert_eq!(sent(OpenOptions::new().read(true).share_delete(true)).share_access, all);
        let denying = sent(OpenOptions::new().read(true).write(true).share_delete(false));
        assert_eq!(denying.share_access, share_access::READ | share_access::WRITE);
        // The rest of the request is as without it.
        let plain = sent(OpenOptions::new().read(true).write(true));
        assert_eq!(denying.desired_access, plain.desired_access);
        assert_eq!(denying.create_options, plain.create_options);
        assert_eq!(denying.oplock_level, create::OPLOCK_LEVEL_LEASE);
    }

    #[test]
    fn an_open_under_a_given_lease_key_asks_for_that_lease() {
        let key = [0x42; 16];
        let req = sent(OpenOptions::new().read(true).share_delete(false).lease_key(key));
        let lease = req.contexts.iter().find(|c| c.name == b"RqLs").expect("a lease context");
        let lease = LeaseV2::decode(&lease.data).unwrap();
        assert_eq!(lease.key, key);
        assert_eq!(lease.state, LEASE_STATE);
        let durable = req.contexts.iter().find(|c| c.name == b"DH2Q").expect("a durable context");
        assert_eq!(DurableRequestV2::decode(&durable.data).unwrap().create_guid, [5; 16]);
        // Without one, the lease key is the open's own.
        assert_eq!(OpenOptions::new().lease_key, None);
    }
}
