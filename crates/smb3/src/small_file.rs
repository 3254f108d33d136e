//! Whole small files in one round trip: a related compound (MS-SMB2 3.2.4.1.4) of CREATE + READ + CLOSE,
//! or CREATE + WRITE + CLOSE, where the READ/WRITE and the CLOSE name the handle the CREATE opens by the
//! all-ones FileId. With encryption the chain is sealed as one message (one transform header, 3.2.4.1.4),
//! and it takes one credit per member (each moves at most one MaxRead/MaxWrite). The CREATE asks for the
//! file's on-disk id (QFid) and the CLOSE for the final attributes (POSTQUERY_ATTRIB), so a write comes
//! back with the file's [`Metadata`] and needs no stat after it.
//!
//! The chain builders and the readers of the answers are pure functions, tested on crafted messages; the
//! [`Tree`] methods only send them (with the tree's replay after a reconnect).

use bytes::Bytes;

use super::conn::{Outgoing, Response};
use super::error::{Error, Result};
use super::tree::{display_path, smb_path, Metadata, Tree};
use super::wire::create::{
    self, access, disposition, options, share_access, CreateContext, CreateRequest, CreateResponse,
};
use super::wire::io::{CloseRequest, CloseResponse, ReadResponse, WriteRequest, CLOSE_FLAG_POSTQUERY_ATTRIB};
use super::wire::{Command, FileId, NtStatus};

/// How [`Tree::write_whole_file`] treats a file that is already there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WholeFile {
    /// Replaced (its contents overwritten: `put`).
    Replace,
    /// Refused with STATUS_OBJECT_NAME_COLLISION (O_EXCL).
    CreateNew,
}

/// The file id in a QFid answer: its first 8 bytes are the file's index number on the volume, the number
/// FileInternalInformation reports (MS-SMB2 2.2.14.2.9; Samba puts the same file id in both). `None`
/// (no usable id) when absent or zero.
pub(crate) fn disk_file_id(created: &CreateResponse) -> Option<u64> {
    let id = created.on_disk_id()?;
    let index = u64::from_le_bytes(id[..8].try_into().ok()?);
    (index != 0).then_some(index)
}

fn create_member(path: &str, desired_access: u32, create_disposition: u32) -> Outgoing {
    let req = CreateRequest {
        oplock_level: create::OPLOCK_LEVEL_NONE,
        impersonation_level: create::IMPERSONATION_IMPERSONATION,
        desired_access,
        file_attributes: 0,
        share_access: share_access::READ | share_access::WRITE | share_access::DELETE,
        create_disposition,
        create_options: options::NON_DIRECTORY_FILE,
        name: smb_path(path),
        contexts: vec![CreateContext::query_on_disk_id()],
    };
    Outgoing::new(Command::Create, 0, 0, |m| req.encode(m))
}

fn close_member() -> Outgoing {
    let req = CloseRequest { flags: CLOSE_FLAG_POSTQUERY_ATTRIB, file_id: FileId::ANY };
    Outgoing::new(Command::Close, 0, 0, |m| req.encode(m))
}

/// CREATE (open an existing file for reading) + READ of `len` bytes at 0 + CLOSE.
pub(crate) fn read_chain(path: &str, len: u32) -> Vec<Outgoing> {
    let read = crate::file::first_read(len);
    vec![
        create_member(
            path,
            access::FILE_READ_DATA | access::FILE_READ_ATTRIBUTES | access::SYNCHRONIZE,
            disposition::OPEN,
        ),
        Outgoing::new(Command::Read, 0, len as usize, |m| read.encode(m)),
        close_member(),
    ]
}

/// CREATE (per `how`) + WRITE of `data` at 0 (left out for an empty file) + CLOSE.
pub(crate) fn write_chain(path: &str, data: &[u8], how: WholeFile) -> Vec<Outgoing> {
    let disp = match how {
        WholeFile::Replace => disposition::OVERWRITE_IF,
        WholeFile::CreateNew => disposition::CREATE,
    };
    let rights = access::FILE_WRITE_DATA
        | access::FILE_APPEND_DATA
        | access::FILE_READ_ATTRIBUTES
        | access::FILE_WRITE_ATTRIBUTES
        | access::SYNCHRONIZE;
    let mut chain = vec![create_member(path, rights, disp)];
    if !data.is_empty() {
        chain.push(Outgoing::new(Command::Write, 0, data.len(), |m| {
            WriteRequest::encode_parts(0, FileId::ANY, 0, data, m)
        }));
    }
    chain.push(close_member());
    chain
}

/// The first failure of a chain's answers, judged in order: a failed CREATE fails the members after it
/// with its own status (3.3.5.2.7.2), so the first non-success status is the cause. `allowed` statuses
/// of a middle member (END_OF_FILE for a read of an empty file) are not failures.
fn first_failure(answers: &[Response], allowed: &[NtStatus]) -> Option<NtStatus> {
    answers.iter().enumerate().find_map(|(i, r)| {
        let s = r.header.status;
        let middle = i > 0 && i + 1 < answers.len();
        let tolerated = s.is_success() || (middle && allowed.contains(&s));
        (!tolerated).then_some(s)
    })
}

fn expect_members(answers: &[Response], n: usize, op: &str) -> Result<()> {
    if answers.len() != n {
        return Err(Error::Protocol(format!("{op}: {} answers to a chain of {n}", answers.len())));
    }
    Ok(())
}

/// The data of a CREATE + READ + CLOSE chain (at most `len` bytes; empty for an empty file).
pub(crate) fn read_answer(answers: &[Response], len: u32, path: &str) -> Result<Bytes> {
    let op = format!("read {}", display_path(path));
    expect_members(answers, 3, &op)?;
    if let Some(status) = first_failure(answers, &[NtStatus::END_OF_FILE]) {
        return Err(Error::Status { op, status });
    }
    let read = &answers[1];
    if read.header.status == NtStatus::END_OF_FILE {
        return Ok(Bytes::new());
    }
    let (_, data) = ReadResponse::parse(&read.msg)?;
    if data.len() > len as usize {
        return Err(Error::Protocol(format!("READ returned {} bytes, asked for {len}", data.len())));
    }
    Ok(read.msg.slice_ref(data))
}

/// The file's attributes after a CREATE + WRITE + CLOSE chain of `written` bytes: its id from the
/// CREATE's QFid, sizes and times from the CLOSE (or, when the server left them out, the CREATE's with
/// the size written).
pub(crate) fn write_answer(answers: &[Response], written: usize, path: &str) -> Result<Metadata> {
    let op = format!("write {}", display_path(path));
    expect_members(answers, if written == 0 { 2 } else { 3 }, &op)?;
    if let Some(status) = first_failure(answers, &[]) {
        return Err(Error::Status { op, status });
    }
    let created = CreateResponse::decode(&answers[0].msg)?;
    if let [_, write, _] = answers {
        let count = super::wire::io::WriteResponse::decode(&write.msg)?.count as usize;
        if count != written {
            return Err(Error::Protocol(format!("{op}: the server wrote {count} of {written} bytes")));
        }
    }
    let closed = CloseResponse::decode(&answers[answers.len() - 1].msg)?;
    let file_id = disk_file_id(&created).unwrap_or(0);
    Ok(if closed.flags & CLOSE_FLAG_POSTQUERY_ATTRIB != 0 {
        Metadata {
            size: closed.end_of_file,
            allocation_size: closed.allocation_size,
            attributes: closed.file_attributes,
            file_id,
            links: 1,
            created: closed.creation_time,
            accessed: closed.last_access_time,
            modified: closed.last_write_time,
            changed: closed.change_time,
        }
    } else {
        Metadata {
            size: written as u64,
            allocation_size: created.allocation_size,
            attributes: created.file_attributes,
            file_id,
            links: 1,
            created: created.creation_time,
            accessed: created.last_access_time,
            modified: created.last_write_time,
            changed: created.change_time,
        }
    })
}

impl Tree {
    /// Up to `max_len` bytes from the start of the file at `path` (all of it when it is smaller), in one
    /// round trip (CREATE + READ + CLOSE). `max_len` is capped at the server's MaxRead.
    pub async fn read_small_file(&self, path: &str, max_len: u32) -> Result<Bytes> {
        let len = max_len.min(self.max_read());
        let (answers, _) = self
            .send_with(true, &|b| {
                let mut chain = read_chain(path, len);
                chain.iter_mut().for_each(|o| o.tree_id = b.id);
                Ok(chain)
            })
            .await?;
        read_answer(&answers, len, path)
    }

    /// Creates or replaces the file at `path` with exactly `data` and returns its attributes: one round
    /// trip (CREATE + WRITE + CLOSE) when `data` fits one WRITE, else an open, pipelined writes and a
    /// close. A replay after a reconnect writes the same bytes again; an exclusive create
    /// ([`WholeFile::CreateNew`]) whose first attempt did reach the server then fails with
    /// STATUS_OBJECT_NAME_COLLISION.
    pub async fn write_whole_file(&self, path: &str, data: &[u8], how: WholeFile) -> Result<Metadata> {
        if data.len() > self.max_write() as usize {
            let opts = crate::OpenOptions::new().write(true).create(true);
            let opts = match how {
                WholeFile::Replace => opts.truncate(true),
                WholeFile::CreateNew => opts.create_new(true),
            };
            let f = self.open(path, opts).await?;
            let written = f.write_at(0, data).await;
            let m = match written {
                Ok(()) => f.metadata().await,
                Err(e) => Err(e),
            };
            let closed = f.close().await;
            return m.and_then(|m| closed.map(|()| m));
        }
        let (answers, _) = self
            .send_with(true, &|b| {
                let mut chain = write_chain(path, data, how);
                chain.iter_mut().for_each(|o| o.tree_id = b.id);
                Ok(chain)
            })
            .await?;
        write_answer(&answers, data.len(), path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::header::{Header, HEADER_LEN};
    use crate::wire::io::{ReadRequest, WriteResponse};

    fn answer(command: Command, status: NtStatus, body: impl FnOnce(&mut Vec<u8>)) -> Response {
        let mut h = Header::new(command);
        h.status = status;
        h.flags |= crate::wire::header::FLAG_SERVER_TO_REDIR;
        let mut msg = Vec::new();
        h.encode(&mut msg);
        body(&mut msg);
        Response { header: h, msg: Bytes::from(msg) }
    }

    fn error(command: Command, status: NtStatus) -> Response {
        // An error response body (2.2.2): StructureSize 9, no data.
        answer(command, status, |m| m.extend_from_slice(&[9, 0, 0, 0, 0, 0, 0, 0, 0]))
    }

    fn created(qfid: Option<u64>) -> Response {
        let mut contexts = Vec::new();
        if let Some(id) = qfid {
            let mut data = id.to_le_bytes().to_vec();
            data.resize(32, 0);
            contexts.push(CreateContext { name: create::CONTEXT_QUERY_ON_DISK_ID.to_vec(), data });
        }
        let body = CreateResponse {
            oplock_level: 0,
            flags: 0,
            create_action: create::create_action::CREATED,
            creation_time: 1,
            last_access_time: 2,
            last_write_time: 3,
            change_time: 4,
            allocation_size: 0,
            end_of_file: 0,
            file_attributes: create::attributes::ARCHIVE,
            file_id: FileId { persistent: 7, volatile: 8 },
            contexts,
        };
        answer(Command::Create, NtStatus::SUCCESS, |m| body.encode(m))
    }

    fn closed(size: u64) -> Response {
        let body = CloseResponse {
            flags: CLOSE_FLAG_POSTQUERY_ATTRIB,
            creation_time: 1,
            last_access_time: 12,
            last_write_time: 13,
            change_time: 14,
            allocation_size: 4096,
            end_of_file: size,
            file_attributes: create::attributes::ARCHIVE,
        };
        answer(Command::Close, NtStatus::SUCCESS, |m| body.encode(m))
    }

    fn read(data: &[u8]) -> Response {
        let body = ReadResponse { data_remaining: 0, data: data.to_vec() };
        answer(Command::Read, NtStatus::SUCCESS, |m| body.encode(m))
    }

    fn command_of(o: &Outgoing) -> Command {
        o.command
    }

    #[test]
    fn read_chain_is_create_read_close_on_the_created_handle() {
        let chain = read_chain("dir/f.txt", 65536);
        assert_eq!(chain.iter().map(command_of).collect::<Vec<_>>(), [Command::Create, Command::Read, Command::Close]);
        let create = CreateRequest::decode(&chain[0].msg).unwrap();
        assert_eq!(create.name, "dir\\f.txt");
        assert_eq!(create.create_disposition, disposition::OPEN);
        assert_eq!(create.contexts, vec![CreateContext::query_on_disk_id()]);
        let read = ReadRequest::decode(&chain[1].msg).unwrap();
        assert_eq!((read.file_id, read.offset, read.length), (FileId::ANY, 0, 65536));
        assert_eq!(chain[1].payload_len, 65536);
        let close = CloseRequest::decode(&chain[2].msg).unwrap();
        assert_eq!(close.file_id, FileId::ANY);
        assert!(chain.iter().all(|o| o.msg.len() >= HEADER_LEN));
    }

    #[test]
    fn write_chain_carries_the_data_and_asks_for_attributes_at_close() {
        let chain = write_chain("a", b"hello", WholeFile::CreateNew);
        assert_eq!(chain.iter().map(command_of).collect::<Vec<_>>(), [Command::Create, Command::Write, Command::Close]);
        assert_eq!(CreateRequest::decode(&chain[0].msg).unwrap().create_disposition, disposition::CREATE);
        let write = WriteRequest::decode(&chain[1].msg).unwrap();
        assert_eq!((write.file_id, write.offset, write.data.as_slice()), (FileId::ANY, 0, &b"hello"[..]));
        assert_eq!(CloseRequest::decode(&chain[2].msg).unwrap().flags, CLOSE_FLAG_POSTQUERY_ATTRIB);
        let replace = write_chain("a", b"", WholeFile::Replace);
        assert_eq!(replace.iter().map(command_of).collect::<Vec<_>>(), [Command::Create, Command::Close]);
        assert_eq!(CreateRequest::decode(&replace[0].msg).unwrap().create_disposition, disposition::OVERWRITE_IF);
    }

    #[test]
    fn read_answers_give_the_data_or_the_first_failure() {
        let ok = [created(Some(5)), read(b"abc"), closed(3)];
        assert_eq!(read_answer(&ok, 16, "f").unwrap(), Bytes::from_static(b"abc"));
        let empty = [created(None), error(Command::Read, NtStatus::END_OF_FILE), closed(0)];
        assert!(read_answer(&empty, 16, "f").unwrap().is_empty());
        let missing = [
            error(Command::Create, NtStatus::OBJECT_NAME_NOT_FOUND),
            error(Command::Read, NtStatus::OBJECT_NAME_NOT_FOUND),
            error(Command::Close, NtStatus::OBJECT_NAME_NOT_FOUND),
        ];
        let e = read_answer(&missing, 16, "f").unwrap_err();
        assert!(crate::is_not_found(&e), "{e}");
        // More data than asked for is a protocol violation, not a longer buffer.
        assert!(matches!(read_answer(&ok, 2, "f"), Err(Error::Protocol(_))));
        // A chain cut short (or grown) is refused.
        assert!(matches!(read_answer(&ok[..2], 16, "f"), Err(Error::Protocol(_))));
        // END_OF_FILE is only an answer of the READ, never of the CLOSE.
        let bad_close = [created(None), read(b""), error(Command::Close, NtStatus::END_OF_FILE)];
        assert!(matches!(read_answer(&bad_close, 16, "f"), Err(Error::Status { .. })));
    }

    #[test]
    fn write_answers_give_attributes_from_create_and_close() {
        let write =
            || answer(Command::Write, NtStatus::SUCCESS, |m| WriteResponse { count: 5, remaining: 0 }.encode(m));
        let m = write_answer(&[created(Some(0x1234)), write(), closed(5)], 5, "f").unwrap();
        assert_eq!((m.file_id, m.size, m.modified, m.allocation_size), (0x1234, 5, 13, 4096));
        // No QFid: no id (the caller falls back to asking), but the rest is there.
        assert_eq!(write_answer(&[created(None), write(), closed(5)], 5, "f").unwrap().file_id, 0);
        let short = answer(Command::Write, NtStatus::SUCCESS, |m| WriteResponse { count: 2, remaining: 0 }.encode(m));
        assert!(matches!(write_answer(&[created(None), short, closed(2)], 5, "f"), Err(Error::Protocol(_))));
        let exists = [
            error(Command::Create, NtStatus::OBJECT_NAME_COLLISION),
            error(Command::Write, NtStatus::OBJECT_NAME_COLLISION),
            error(Command::Close, NtStatus::OBJECT_NAME_COLLISION),
        ];
        let e = write_answer(&exists, 5, "f").unwrap_err();
        assert_eq!(e.status(), Some(NtStatus::OBJECT_NAME_COLLISION));
        let denied = [created(Some(1)), error(Command::Write, NtStatus::ACCESS_DENIED), closed(0)];
        assert_eq!(write_answer(&denied, 5, "f").unwrap_err().status(), Some(NtStatus::ACCESS_DENIED));
        let empty = write_answer(&[created(Some(9)), closed(0)], 0, "f").unwrap();
        assert_eq!((empty.file_id, empty.size), (9, 0));
    }

    #[test]
    fn disk_ids_of_zero_or_missing_are_no_id() {
        let with = CreateResponse::decode(&created(Some(42)).msg).unwrap();
        assert_eq!(disk_file_id(&with), Some(42));
        assert_eq!(disk_file_id(&CreateResponse::decode(&created(Some(0)).msg).unwrap()), None);
        assert_eq!(disk_file_id(&CreateResponse::decode(&created(None).msg).unwrap()), None);
    }
}
