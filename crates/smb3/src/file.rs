//! An open file or directory handle and its I/O. Large reads and writes are
//! split into server-sized chunks that are all in flight at once.

use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::{Error, Result};
use super::tree::{display_path, Metadata, Tree};
use super::wire::create::{access, attributes, disposition, options, CreateResponse};
use super::wire::info::{self, file_class, FileEndOfFileInformation, SetInfoRequest};
use super::wire::io::{CloseRequest, FlushRequest, ReadRequest, ReadResponse, WriteRequest, WriteResponse};
use super::wire::ioctl::{
    CopyChunk, CopyChunkRequest, CopyChunkResponse, IoctlRequest, IoctlResponse, ResumeKey, FSCTL_SRV_COPYCHUNK_WRITE,
    FSCTL_SRV_REQUEST_RESUME_KEY, IOCTL_IS_FSCTL,
};
use super::wire::{Command, FileId, NtStatus};

/// Requests kept in flight by `download`/`upload` and large `read_at`/`write_at`.
pub const PIPELINE_DEPTH: usize = 16;
/// Chunk size for pipelined transfers (multi-credit with large MTU).
pub const CHUNK: u32 = 1 << 20;

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

/// An open handle. Close it with [`File::close`]; a dropped handle is closed
/// in the background.
pub struct File {
    tree: Tree,
    id: FileId,
    path: String,
    opened: CreateResponse,
    closed: AtomicBool,
    /// Where a dropped handle's CLOSE runs, even if it is dropped off the runtime.
    runtime: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("File").field("path", &self.path).field("id", &self.id).finish()
    }
}

impl File {
    pub(crate) fn new(tree: Tree, opened: CreateResponse, path: &str) -> File {
        let runtime = tokio::runtime::Handle::try_current().ok();
        File { tree, id: opened.file_id, path: path.to_string(), opened, closed: AtomicBool::new(false), runtime }
    }

    pub fn id(&self) -> FileId {
        self.id
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// Size and attributes as of the open.
    pub fn opened_metadata(&self) -> Metadata {
        let o = &self.opened;
        Metadata {
            size: o.end_of_file,
            allocation_size: o.allocation_size,
            attributes: o.file_attributes,
            file_id: 0,
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
        format!("{what} {}", display_path(&self.path))
    }

    /// One READ of at most the server's max read size; empty at end of file.
    async fn read_chunk(&self, offset: u64, len: u32) -> Result<Vec<u8>> {
        let req = ReadRequest {
            padding: 0x50,
            flags: 0,
            length: len,
            offset,
            file_id: self.id,
            minimum_count: 0,
            remaining_bytes: 0,
        };
        let resp = self.tree.request(self.tree.out(Command::Read, len as usize, |m| req.encode(m))).await?;
        if resp.header.status == NtStatus::END_OF_FILE {
            return Ok(Vec::new());
        }
        let resp = resp.ok(|| self.op("read"))?;
        let body = ReadResponse::decode(&resp.msg)?;
        if body.data.len() > len as usize {
            return Err(Error::Protocol(format!("READ returned {} bytes, asked for {len}", body.data.len())));
        }
        Ok(body.data)
    }

    /// Reads up to `len` bytes at `offset`; shorter only at end of file.
    /// Large reads are split and pipelined.
    pub async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let chunk = self.tree.max_read().min(CHUNK) as usize;
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
        Ok(out)
    }

    /// One WRITE; returns the count the server wrote.
    async fn write_chunk(&self, offset: u64, data: &[u8]) -> Result<u32> {
        let out =
            self.tree.out(Command::Write, data.len(), |m| WriteRequest::encode_parts(offset, self.id, 0, data, m));
        let resp = self.tree.request(out).await?.ok(|| self.op("write"))?;
        let body = WriteResponse::decode(&resp.msg)?;
        if body.count as usize > data.len() {
            return Err(Error::Protocol(format!("WRITE claims {} bytes of {}", body.count, data.len())));
        }
        Ok(body.count)
    }

    /// Writes all of `data` at `offset`, pipelining large writes.
    pub async fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        let chunk = self.tree.max_write().min(CHUNK) as usize;
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

    /// FLUSH: asks the server to make written data durable.
    pub async fn flush(&self) -> Result<()> {
        let req = FlushRequest { file_id: self.id };
        self.tree.request(self.tree.out(Command::Flush, 0, |m| req.encode(m))).await?.ok(|| self.op("flush"))?;
        Ok(())
    }

    /// Truncates or extends the file.
    pub async fn set_len(&self, len: u64) -> Result<()> {
        let req = SetInfoRequest {
            info_type: info::INFO_FILE,
            file_info_class: file_class::END_OF_FILE,
            additional_information: 0,
            file_id: self.id,
            buffer: FileEndOfFileInformation { end_of_file: len }.encode(),
        };
        self.tree.request(self.tree.out(Command::SetInfo, 0, |m| req.encode(m))).await?.ok(|| self.op("truncate"))?;
        Ok(())
    }

    /// Sets a FILE-class info structure on this handle (basic info, rename, disposition...).
    pub async fn set_info(&self, class: u8, buffer: Vec<u8>) -> Result<()> {
        let req = SetInfoRequest {
            info_type: info::INFO_FILE,
            file_info_class: class,
            additional_information: 0,
            file_id: self.id,
            buffer,
        };
        self.tree
            .request(self.tree.out(Command::SetInfo, 0, |m| req.encode(m)))
            .await?
            .ok(|| self.op("set info on"))?;
        Ok(())
    }

    /// Queries a FILE-class info structure on this handle.
    pub async fn query_info(&self, class: u8, max_len: u32) -> Result<Vec<u8>> {
        let req = info::QueryInfoRequest {
            info_type: info::INFO_FILE,
            file_info_class: class,
            output_buffer_length: max_len,
            input: Vec::new(),
            additional_information: 0,
            flags: 0,
            file_id: self.id,
        };
        let resp = self
            .tree
            .request(self.tree.out(Command::QueryInfo, max_len as usize, |m| req.encode(m)))
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
        let req = IoctlRequest {
            ctl_code,
            file_id: self.id,
            input,
            max_input_response: 0,
            max_output_response: max_output,
            flags: IOCTL_IS_FSCTL,
        };
        let payload = req.input.len().max(max_output as usize);
        self.tree.request(self.tree.out(Command::Ioctl, payload, |m| req.encode(m))).await
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
        let req = CloseRequest { flags: 0, file_id: self.id };
        self.tree.request(self.tree.out(Command::Close, 0, |m| req.encode(m))).await?.ok(|| self.op("close"))?;
        Ok(())
    }

    /// Streams the whole file into `sink` with reads kept in flight; returns the byte count.
    pub async fn download<W: AsyncWrite + Unpin>(&self, sink: &mut W) -> Result<u64> {
        let chunk = self.tree.max_read().min(CHUNK);
        let mut offset = 0u64;
        let mut total = 0u64;
        // The size as of the open (no extra round trip); growth since is fetched below.
        let size = self.opened_metadata().size;
        let mut reads = stream::iter((0..).map(|i: u64| i * u64::from(chunk)).take_while(|o| *o < size.max(1)))
            .map(|o| self.read_chunk(o, chunk))
            .buffered(PIPELINE_DEPTH);
        while let Some(data) = reads.next().await {
            let data = data?;
            if data.is_empty() {
                break;
            }
            sink.write_all(&data).await.map_err(|source| Error::LocalIo { op: "writing local file".into(), source })?;
            total += data.len() as u64;
            offset += data.len() as u64;
            if data.len() < chunk as usize {
                break;
            }
        }
        // The file grew after we sized it: fetch the rest sequentially.
        loop {
            let data = self.read_chunk(offset, chunk).await?;
            if data.is_empty() {
                break;
            }
            sink.write_all(&data).await.map_err(|source| Error::LocalIo { op: "writing local file".into(), source })?;
            offset += data.len() as u64;
            total += data.len() as u64;
        }
        sink.flush().await.map_err(|source| Error::LocalIo { op: "writing local file".into(), source })?;
        Ok(total)
    }

    /// Writes everything from `source` at offset 0 with writes kept in flight; returns the byte count.
    pub async fn upload<R: AsyncRead + Unpin>(&self, source: &mut R) -> Result<u64> {
        let chunk = self.tree.max_write().min(CHUNK) as usize;
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
        let (tree, id) = (self.tree.clone(), self.id);
        if let Some(rt) = tokio::runtime::Handle::try_current().ok().or_else(|| self.runtime.clone()) {
            rt.spawn(async move {
                let req = CloseRequest { flags: 0, file_id: id };
                let _ = tree.request(tree.out(Command::Close, 0, |m| req.encode(m))).await;
            });
        }
    }
}
