//! CREATE request and response bodies and create contexts (MS-SMB2 2.2.13,
//! 2.2.13.2, 2.2.14, 2.2.14.2).

use super::cursor::{from_utf16le, utf16le, Reader, Writer};
use super::header::HEADER_LEN;
use super::io::{body_buffer, pad_empty_buffer};
use super::{expect_structure_size, FileId, NtStatus, WireError};

/// Access mask bits (MS-SMB2 2.2.13.1.1 for files, 2.2.13.1.2 for directories).
pub mod access {
    pub const FILE_READ_DATA: u32 = 0x0000_0001;
    pub const FILE_LIST_DIRECTORY: u32 = 0x0000_0001;
    pub const FILE_WRITE_DATA: u32 = 0x0000_0002;
    pub const FILE_ADD_FILE: u32 = 0x0000_0002;
    pub const FILE_APPEND_DATA: u32 = 0x0000_0004;
    pub const FILE_ADD_SUBDIRECTORY: u32 = 0x0000_0004;
    pub const FILE_READ_EA: u32 = 0x0000_0008;
    pub const FILE_WRITE_EA: u32 = 0x0000_0010;
    pub const FILE_EXECUTE: u32 = 0x0000_0020;
    pub const FILE_TRAVERSE: u32 = 0x0000_0020;
    pub const FILE_DELETE_CHILD: u32 = 0x0000_0040;
    pub const FILE_READ_ATTRIBUTES: u32 = 0x0000_0080;
    pub const FILE_WRITE_ATTRIBUTES: u32 = 0x0000_0100;
    pub const DELETE: u32 = 0x0001_0000;
    pub const READ_CONTROL: u32 = 0x0002_0000;
    pub const WRITE_DAC: u32 = 0x0004_0000;
    pub const WRITE_OWNER: u32 = 0x0008_0000;
    pub const SYNCHRONIZE: u32 = 0x0010_0000;
    pub const ACCESS_SYSTEM_SECURITY: u32 = 0x0100_0000;
    pub const MAXIMUM_ALLOWED: u32 = 0x0200_0000;
    pub const GENERIC_ALL: u32 = 0x1000_0000;
    pub const GENERIC_EXECUTE: u32 = 0x2000_0000;
    pub const GENERIC_WRITE: u32 = 0x4000_0000;
    pub const GENERIC_READ: u32 = 0x8000_0000;
}

/// ShareAccess bits (2.2.13).
pub mod share_access {
    pub const READ: u32 = 0x0000_0001;
    pub const WRITE: u32 = 0x0000_0002;
    pub const DELETE: u32 = 0x0000_0004;
}

/// CreateDisposition values (2.2.13).
pub mod disposition {
    pub const SUPERSEDE: u32 = 0;
    pub const OPEN: u32 = 1;
    pub const CREATE: u32 = 2;
    pub const OPEN_IF: u32 = 3;
    pub const OVERWRITE: u32 = 4;
    pub const OVERWRITE_IF: u32 = 5;
}

/// CreateOptions bits (2.2.13).
pub mod options {
    pub const DIRECTORY_FILE: u32 = 0x0000_0001;
    pub const WRITE_THROUGH: u32 = 0x0000_0002;
    pub const SEQUENTIAL_ONLY: u32 = 0x0000_0004;
    pub const NO_INTERMEDIATE_BUFFERING: u32 = 0x0000_0008;
    pub const SYNCHRONOUS_IO_ALERT: u32 = 0x0000_0010;
    pub const SYNCHRONOUS_IO_NONALERT: u32 = 0x0000_0020;
    pub const NON_DIRECTORY_FILE: u32 = 0x0000_0040;
    pub const COMPLETE_IF_OPLOCKED: u32 = 0x0000_0100;
    pub const NO_EA_KNOWLEDGE: u32 = 0x0000_0200;
    pub const RANDOM_ACCESS: u32 = 0x0000_0800;
    pub const DELETE_ON_CLOSE: u32 = 0x0000_1000;
    pub const OPEN_BY_FILE_ID: u32 = 0x0000_2000;
    pub const OPEN_FOR_BACKUP_INTENT: u32 = 0x0000_4000;
    pub const NO_COMPRESSION: u32 = 0x0000_8000;
    pub const OPEN_REPARSE_POINT: u32 = 0x0020_0000;
    pub const OPEN_NO_RECALL: u32 = 0x0040_0000;
}

/// File attribute bits (MS-FSCC 2.6).
pub mod attributes {
    pub const READONLY: u32 = 0x0000_0001;
    pub const HIDDEN: u32 = 0x0000_0002;
    pub const SYSTEM: u32 = 0x0000_0004;
    pub const DIRECTORY: u32 = 0x0000_0010;
    pub const ARCHIVE: u32 = 0x0000_0020;
    pub const NORMAL: u32 = 0x0000_0080;
    pub const TEMPORARY: u32 = 0x0000_0100;
    pub const SPARSE_FILE: u32 = 0x0000_0200;
    pub const REPARSE_POINT: u32 = 0x0000_0400;
    pub const COMPRESSED: u32 = 0x0000_0800;
    pub const OFFLINE: u32 = 0x0000_1000;
    pub const NOT_CONTENT_INDEXED: u32 = 0x0000_2000;
    pub const ENCRYPTED: u32 = 0x0000_4000;
    pub const INTEGRITY_STREAM: u32 = 0x0000_8000;
    pub const NO_SCRUB_DATA: u32 = 0x0002_0000;
}

/// CreateAction values of the response (2.2.14).
pub mod create_action {
    pub const SUPERSEDED: u32 = 0;
    pub const OPENED: u32 = 1;
    pub const CREATED: u32 = 2;
    pub const OVERWRITTEN: u32 = 3;
}

/// RequestedOplockLevel / OplockLevel values (2.2.13).
pub const OPLOCK_LEVEL_NONE: u8 = 0x00;
pub const OPLOCK_LEVEL_II: u8 = 0x01;
pub const OPLOCK_LEVEL_EXCLUSIVE: u8 = 0x08;
pub const OPLOCK_LEVEL_BATCH: u8 = 0x09;
pub const OPLOCK_LEVEL_LEASE: u8 = 0xFF;

/// ImpersonationLevel values (2.2.13).
pub const IMPERSONATION_ANONYMOUS: u32 = 0;
pub const IMPERSONATION_IDENTIFICATION: u32 = 1;
pub const IMPERSONATION_IMPERSONATION: u32 = 2;
pub const IMPERSONATION_DELEGATE: u32 = 3;

/// Response flag: the opened file is a reparse point (2.2.14).
pub const CREATE_FLAG_REPARSEPOINT: u8 = 0x01;

/// Create context names (2.2.13.2, 2.2.14.2).
pub const CONTEXT_QUERY_MAXIMAL_ACCESS: &[u8; 4] = b"MxAc";
pub const CONTEXT_QUERY_ON_DISK_ID: &[u8; 4] = b"QFid";

/// At most this many create contexts are decoded from one message; real
/// servers answer with a handful.
pub const MAX_CREATE_CONTEXTS: usize = 64;

/// One SMB2_CREATE_CONTEXT (2.2.13.2): a tagged blob attached to a CREATE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateContext {
    pub name: Vec<u8>,
    pub data: Vec<u8>,
}

impl CreateContext {
    /// Asks the server for the caller's maximal access to the file (2.2.13.2.5).
    pub fn query_maximal_access() -> CreateContext {
        CreateContext { name: CONTEXT_QUERY_MAXIMAL_ACCESS.to_vec(), data: Vec::new() }
    }

    /// Asks the server for the file's on-disk id (2.2.13.2.9).
    pub fn query_on_disk_id() -> CreateContext {
        CreateContext { name: CONTEXT_QUERY_ON_DISK_ID.to_vec(), data: Vec::new() }
    }
}

const CONTEXT_HEADER_LEN: usize = 16;

/// Appends a context chain at the current (8-aligned) end of `msg`; returns its
/// header-relative offset and length. Each context starts 8-aligned, its data
/// too (2.2.13.2); the last context has Next = 0 and no trailing padding.
fn encode_contexts(contexts: &[CreateContext], msg: &mut Vec<u8>) -> (u32, u32) {
    msg.align_to(8);
    let start = msg.len();
    for (i, ctx) in contexts.iter().enumerate() {
        let ctx_start = msg.len();
        msg.put_u32(0); // Next, patched below
        msg.put_u16(CONTEXT_HEADER_LEN as u16); // NameOffset
        msg.put_u16(ctx.name.len() as u16);
        msg.put_u16(0); // Reserved
        msg.put_u16(0); // DataOffset, patched below
        msg.put_u32(ctx.data.len() as u32);
        msg.put_bytes(&ctx.name);
        if !ctx.data.is_empty() {
            msg.align_to(8);
            msg.patch_u16(ctx_start + 10, (msg.len() - ctx_start) as u16);
            msg.put_bytes(&ctx.data);
        }
        if i + 1 < contexts.len() {
            msg.align_to(8);
            msg.patch_u32(ctx_start, (msg.len() - ctx_start) as u32);
        }
    }
    (start as u32, (msg.len() - start) as u32)
}

/// Slices `len` bytes at `base + offset`, which must lie within `base..end`
/// and not overlap the context's own 16-byte header.
fn context_field<'a>(
    region: &'a [u8],
    base: usize,
    end: usize,
    offset: usize,
    len: usize,
    what: &'static str,
) -> Result<&'a [u8], WireError> {
    if len == 0 {
        return Ok(&[]);
    }
    let start = base + offset;
    let stop = start.checked_add(len).filter(|&s| s <= end && offset >= CONTEXT_HEADER_LEN);
    match stop {
        Some(stop) => Ok(&region[start..stop]),
        None => Err(WireError::BadOffset { what, offset: start, len, buf: end }),
    }
}

/// Decodes the context chain at (offset, length) of a body whose fixed part
/// ends at `fixed_end`.
fn decode_contexts(
    r: &Reader<'_>,
    offset: usize,
    length: usize,
    fixed_end: usize,
) -> Result<Vec<CreateContext>, WireError> {
    let region = body_buffer(r, offset, length, fixed_end, "create contexts")?;
    let mut contexts = Vec::new();
    let mut pos = 0usize;
    while pos < region.len() {
        if contexts.len() == MAX_CREATE_CONTEXTS {
            return Err(WireError::TooLarge {
                what: "create context chain",
                len: contexts.len() + 1,
                limit: MAX_CREATE_CONTEXTS,
            });
        }
        let mut cr = Reader::at(region, pos)?;
        let next = cr.u32("create context next")? as usize;
        let name_offset = cr.u16("create context name offset")? as usize;
        let name_len = cr.u16("create context name length")? as usize;
        cr.skip(2, "create context reserved")?;
        let data_offset = cr.u16("create context data offset")? as usize;
        let data_len = cr.u32("create context data length")? as usize;
        // A context's name and data must lie inside that context: up to the
        // next one, or to the end of the chain for the last.
        let end = if next == 0 {
            region.len()
        } else {
            if next < CONTEXT_HEADER_LEN || !next.is_multiple_of(8) {
                return Err(WireError::Invalid {
                    what: "create context next",
                    why: format!("{next} is not a forward, 8-byte aligned offset"),
                });
            }
            pos.checked_add(next).filter(|&e| e < region.len()).ok_or(WireError::BadOffset {
                what: "create context next",
                offset: pos.saturating_add(next),
                len: CONTEXT_HEADER_LEN,
                buf: region.len(),
            })?
        };
        let name = context_field(region, pos, end, name_offset, name_len, "create context name")?;
        let data = context_field(region, pos, end, data_offset, data_len, "create context data")?;
        contexts.push(CreateContext { name: name.to_vec(), data: data.to_vec() });
        if next == 0 {
            break;
        }
        pos = end;
    }
    Ok(contexts)
}

/// CREATE request (2.2.13).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateRequest {
    /// `OPLOCK_LEVEL_*`.
    pub oplock_level: u8,
    /// `IMPERSONATION_*`.
    pub impersonation_level: u32,
    /// `access::*`.
    pub desired_access: u32,
    /// `attributes::*`.
    pub file_attributes: u32,
    /// `share_access::*`.
    pub share_access: u32,
    /// `disposition::*`.
    pub create_disposition: u32,
    /// `options::*`.
    pub create_options: u32,
    /// Path relative to the share, with backslashes and no leading `\`; empty
    /// for the share root.
    pub name: String,
    pub contexts: Vec<CreateContext>,
}

impl CreateRequest {
    const STRUCTURE_SIZE: u16 = 57;
    const FIXED_LEN: usize = 56;

    pub fn encode(&self, msg: &mut Vec<u8>) {
        let body = msg.len();
        let buffer_start = body + Self::FIXED_LEN;
        let name = utf16le(&self.name);
        msg.put_u16(Self::STRUCTURE_SIZE);
        msg.put_u8(0); // SecurityFlags
        msg.put_u8(self.oplock_level);
        msg.put_u32(self.impersonation_level);
        msg.put_u64(0); // SmbCreateFlags
        msg.put_u64(0); // Reserved
        msg.put_u32(self.desired_access);
        msg.put_u32(self.file_attributes);
        msg.put_u32(self.share_access);
        msg.put_u32(self.create_disposition);
        msg.put_u32(self.create_options);
        // The name always starts the Buffer, even when empty (2.2.13).
        msg.put_u16(buffer_start as u16);
        msg.put_u16(name.len() as u16);
        msg.put_u32(0); // CreateContextsOffset, patched below
        msg.put_u32(0); // CreateContextsLength, patched below
        msg.put_bytes(&name);
        if !self.contexts.is_empty() {
            let (offset, length) = encode_contexts(&self.contexts, msg);
            msg.patch_u32(body + 48, offset);
            msg.patch_u32(body + 52, length);
        }
        pad_empty_buffer(msg, buffer_start);
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, Self::STRUCTURE_SIZE, "create request")?;
        r.skip(1, "create request security flags")?;
        let oplock_level = r.u8("create request oplock level")?;
        let impersonation_level = r.u32("create request impersonation level")?;
        r.skip(16, "create request flags and reserved")?;
        let desired_access = r.u32("create request desired access")?;
        let file_attributes = r.u32("create request file attributes")?;
        let share_access = r.u32("create request share access")?;
        let create_disposition = r.u32("create request disposition")?;
        let create_options = r.u32("create request options")?;
        let name_offset = r.u16("create request name offset")? as usize;
        let name_len = r.u16("create request name length")? as usize;
        let contexts_offset = r.u32("create request contexts offset")? as usize;
        let contexts_len = r.u32("create request contexts length")? as usize;
        let fixed_end = HEADER_LEN + Self::FIXED_LEN;
        let name = body_buffer(&r, name_offset, name_len, fixed_end, "create request name")?;
        let name = from_utf16le(name, "create request name")?;
        let contexts = decode_contexts(&r, contexts_offset, contexts_len, fixed_end)?;
        Ok(CreateRequest {
            oplock_level,
            impersonation_level,
            desired_access,
            file_attributes,
            share_access,
            create_disposition,
            create_options,
            name,
            contexts,
        })
    }
}

/// CREATE response (2.2.14).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateResponse {
    pub oplock_level: u8,
    /// `CREATE_FLAG_REPARSEPOINT` or 0.
    pub flags: u8,
    /// `create_action::*`.
    pub create_action: u32,
    pub creation_time: u64,
    pub last_access_time: u64,
    pub last_write_time: u64,
    pub change_time: u64,
    pub allocation_size: u64,
    pub end_of_file: u64,
    pub file_attributes: u32,
    pub file_id: FileId,
    pub contexts: Vec<CreateContext>,
}

impl CreateResponse {
    const STRUCTURE_SIZE: u16 = 89;
    const FIXED_LEN: usize = 88;

    pub fn encode(&self, msg: &mut Vec<u8>) {
        let body = msg.len();
        msg.put_u16(Self::STRUCTURE_SIZE);
        msg.put_u8(self.oplock_level);
        msg.put_u8(self.flags);
        msg.put_u32(self.create_action);
        msg.put_u64(self.creation_time);
        msg.put_u64(self.last_access_time);
        msg.put_u64(self.last_write_time);
        msg.put_u64(self.change_time);
        msg.put_u64(self.allocation_size);
        msg.put_u64(self.end_of_file);
        msg.put_u32(self.file_attributes);
        msg.put_u32(0); // Reserved2
        self.file_id.encode(msg);
        msg.put_u32(0); // CreateContextsOffset, patched below
        msg.put_u32(0); // CreateContextsLength, patched below
        if !self.contexts.is_empty() {
            let (offset, length) = encode_contexts(&self.contexts, msg);
            msg.patch_u32(body + 80, offset);
            msg.patch_u32(body + 84, length);
        }
        pad_empty_buffer(msg, body + Self::FIXED_LEN);
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, Self::STRUCTURE_SIZE, "create response")?;
        let oplock_level = r.u8("create response oplock level")?;
        let flags = r.u8("create response flags")?;
        let create_action = r.u32("create response action")?;
        let creation_time = r.u64("create response creation time")?;
        let last_access_time = r.u64("create response last access time")?;
        let last_write_time = r.u64("create response last write time")?;
        let change_time = r.u64("create response change time")?;
        let allocation_size = r.u64("create response allocation size")?;
        let end_of_file = r.u64("create response end of file")?;
        let file_attributes = r.u32("create response file attributes")?;
        r.skip(4, "create response reserved")?;
        let file_id = FileId::decode(&mut r)?;
        let contexts_offset = r.u32("create response contexts offset")? as usize;
        let contexts_len = r.u32("create response contexts length")? as usize;
        let contexts = decode_contexts(&r, contexts_offset, contexts_len, HEADER_LEN + Self::FIXED_LEN)?;
        Ok(CreateResponse {
            oplock_level,
            flags,
            create_action,
            creation_time,
            last_access_time,
            last_write_time,
            change_time,
            allocation_size,
            end_of_file,
            file_attributes,
            file_id,
            contexts,
        })
    }

    fn context(&self, name: &[u8]) -> Option<&CreateContext> {
        self.contexts.iter().find(|c| c.name == name)
    }

    /// The MxAc answer (2.2.14.2.5): QueryStatus and, when that is success,
    /// the maximal access mask. `None` if absent or too short.
    pub fn maximal_access(&self) -> Option<(NtStatus, u32)> {
        let data = &self.context(CONTEXT_QUERY_MAXIMAL_ACCESS)?.data;
        let status = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?);
        let mask = u32::from_le_bytes(data.get(4..8)?.try_into().ok()?);
        Some((NtStatus(status), mask))
    }

    /// The DH2Q answer (2.2.14.2.12): `None` when the server did not make
    /// the open durable; an error when the context is malformed.
    pub fn durable_v2(&self) -> Result<Option<super::durable::DurableResponseV2>, WireError> {
        self.context(super::durable::CONTEXT_DURABLE_REQUEST_V2)
            .map(|c| super::durable::DurableResponseV2::decode(&c.data))
            .transpose()
    }

    /// The RqLs answer (2.2.14.2.11) when the server granted a V2 lease.
    pub fn lease_v2(&self) -> Result<Option<super::durable::LeaseV2>, WireError> {
        self.context(super::durable::CONTEXT_LEASE).map(|c| super::durable::LeaseV2::decode(&c.data)).transpose()
    }

    /// The QFid answer (2.2.14.2.9): 32 opaque bytes identifying the file on
    /// the server's volume. `None` if absent or too short.
    pub fn on_disk_id(&self) -> Option<[u8; 32]> {
        let data = &self.context(CONTEXT_QUERY_ON_DISK_ID)?.data;
        data.get(0..32)?.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Command, Header};

    fn header() -> Vec<u8> {
        let mut msg = Vec::new();
        Header::new(Command::Create).encode(&mut msg);
        msg
    }

    fn sample_response() -> CreateResponse {
        CreateResponse {
            oplock_level: OPLOCK_LEVEL_NONE,
            flags: 0,
            create_action: create_action::CREATED,
            creation_time: 133_000_000_000_000_000,
            last_access_time: 133_000_000_000_000_001,
            last_write_time: 133_000_000_000_000_002,
            change_time: 133_000_000_000_000_003,
            allocation_size: 0,
            end_of_file: 0,
            file_attributes: attributes::ARCHIVE,
            file_id: FileId { persistent: 5, volatile: 6 },
            contexts: vec![
                CreateContext { name: b"MxAc".to_vec(), data: vec![0, 0, 0, 0, 0xFF, 0x01, 0x1F, 0x00] },
                CreateContext { name: b"QFid".to_vec(), data: (0..32).collect() },
                CreateContext { name: b"XYZ".to_vec(), data: vec![] },
            ],
        }
    }

    #[test]
    fn request_round_trip() {
        let req = CreateRequest {
            oplock_level: OPLOCK_LEVEL_NONE,
            impersonation_level: IMPERSONATION_IMPERSONATION,
            desired_access: access::GENERIC_READ | access::GENERIC_WRITE,
            file_attributes: attributes::NORMAL,
            share_access: share_access::READ | share_access::WRITE | share_access::DELETE,
            create_disposition: disposition::OPEN_IF,
            create_options: options::NON_DIRECTORY_FILE,
            name: "dir\\sub dir\\fïlé.txt".into(),
            contexts: vec![
                CreateContext::query_maximal_access(),
                CreateContext { name: b"Lease".to_vec(), data: vec![7; 13] },
                CreateContext::query_on_disk_id(),
            ],
        };
        let mut msg = header();
        req.encode(&mut msg);
        assert_eq!(CreateRequest::decode(&msg).unwrap(), req);
        // Every context starts 8-aligned relative to the header.
        let contexts_offset = u32::from_le_bytes(msg[64 + 48..64 + 52].try_into().unwrap());
        assert_eq!(contexts_offset % 8, 0);
        for cut in 0..msg.len() {
            assert!(CreateRequest::decode(&msg[..cut]).is_err(), "prefix {cut}");
        }
    }

    #[test]
    fn empty_name_request_keeps_offset_and_one_byte_buffer() {
        let req = CreateRequest {
            oplock_level: OPLOCK_LEVEL_NONE,
            impersonation_level: IMPERSONATION_IMPERSONATION,
            desired_access: access::FILE_READ_ATTRIBUTES,
            file_attributes: 0,
            share_access: share_access::READ,
            create_disposition: disposition::OPEN,
            create_options: options::DIRECTORY_FILE,
            name: String::new(),
            contexts: vec![],
        };
        let mut msg = header();
        req.encode(&mut msg);
        assert_eq!(msg.len(), 64 + 57);
        assert_eq!(&msg[64 + 44..64 + 48], &[120, 0, 0, 0]);
        assert_eq!(CreateRequest::decode(&msg).unwrap(), req);
    }

    #[test]
    fn request_from_hand_built_bytes() {
        // CREATE of "dir\f" with an MxAc context, laid out per 2.2.13.
        let body = hex::decode(concat!(
            "3900",                             // StructureSize 57
            "00",                               // SecurityFlags
            "00",                               // RequestedOplockLevel
            "02000000",                         // ImpersonationLevel: Impersonation
            "0000000000000000",                 // SmbCreateFlags
            "0000000000000000",                 // Reserved
            "89001200",                         // DesiredAccess
            "00000000",                         // FileAttributes
            "07000000",                         // ShareAccess
            "01000000",                         // CreateDisposition: OPEN
            "40000000",                         // CreateOptions: NON_DIRECTORY_FILE
            "7800",                             // NameOffset 120
            "0a00",                             // NameLength 10
            "88000000",                         // CreateContextsOffset 136
            "14000000",                         // CreateContextsLength 20
            "6400690072005c006600",             // "dir\f"
            "000000000000",                     // pad to 8
            "00000000100004000000000000000000", // context header, no data
            "4d784163",                         // "MxAc"
        ))
        .unwrap();
        let mut msg = header();
        msg.extend_from_slice(&body);
        let req = CreateRequest::decode(&msg).unwrap();
        let expected = CreateRequest {
            oplock_level: OPLOCK_LEVEL_NONE,
            impersonation_level: IMPERSONATION_IMPERSONATION,
            desired_access: access::FILE_READ_DATA
                | access::FILE_READ_EA
                | access::FILE_READ_ATTRIBUTES
                | access::READ_CONTROL
                | access::SYNCHRONIZE,
            file_attributes: 0,
            share_access: share_access::READ | share_access::WRITE | share_access::DELETE,
            create_disposition: disposition::OPEN,
            create_options: options::NON_DIRECTORY_FILE,
            name: "dir\\f".into(),
            contexts: vec![CreateContext::query_maximal_access()],
        };
        assert_eq!(req, expected);
        let mut again = header();
        expected.encode(&mut again);
        assert_eq!(again, msg);
    }

    #[test]
    fn response_from_hand_built_bytes() {
        // CREATE response per 2.2.14 with MxAc and QFid answers (2.2.14.2.5, 2.2.14.2.9).
        let body = hex::decode(concat!(
            "5900",             // StructureSize 89
            "00",               // OplockLevel
            "00",               // Flags
            "01000000",         // CreateAction: OPENED
            "333322221111d901", // CreationTime
            "666655554444d901", // LastAccessTime
            "999988887777d901", // LastWriteTime
            "ccccbbbbaaaad901", // ChangeTime
            "0000100000000000", // AllocationSize 1 MiB
            "40420f0000000000", // EndofFile 1000000
            "20000000",         // FileAttributes: ARCHIVE
            "00000000",         // Reserved2
            "8877665544332211", // FileId.Persistent
            "00ffeeddccbbaa99", // FileId.Volatile
            "98000000",         // CreateContextsOffset 152
            "58000000",         // CreateContextsLength 88
            // MxAc: Next 32, NameOffset 16, NameLength 4, DataOffset 24, DataLength 8
            "20000000",
            "1000",
            "0400",
            "0000",
            "1800",
            "08000000",
            "4d784163", // "MxAc"
            "00000000", // padding
            "00000000", // QueryStatus: STATUS_SUCCESS
            "ff011f00", // MaximalAccess 0x001F01FF
            // QFid: last, DataLength 32
            "00000000",
            "1000",
            "0400",
            "0000",
            "1800",
            "20000000",
            "51466964",                         // "QFid"
            "00000000",                         // padding
            "2a00000000000000",                 // DiskFileId
            "3412000000000000",                 // VolumeId
            "00000000000000000000000000000000", // Reserved
        ))
        .unwrap();
        let mut msg = header();
        msg.extend_from_slice(&body);
        let resp = CreateResponse::decode(&msg).unwrap();
        assert_eq!(resp.create_action, create_action::OPENED);
        assert_eq!(resp.creation_time, 0x01d9_1111_2222_3333);
        assert_eq!(resp.last_access_time, 0x01d9_4444_5555_6666);
        assert_eq!(resp.last_write_time, 0x01d9_7777_8888_9999);
        assert_eq!(resp.change_time, 0x01d9_aaaa_bbbb_cccc);
        assert_eq!(resp.allocation_size, 1 << 20);
        assert_eq!(resp.end_of_file, 1_000_000);
        assert_eq!(resp.file_attributes, attributes::ARCHIVE);
        assert_eq!(resp.file_id, FileId { persistent: 0x1122_3344_5566_7788, volatile: 0x99aa_bbcc_ddee_ff00 });
        assert_eq!(resp.maximal_access(), Some((NtStatus::SUCCESS, 0x001F_01FF)));
        let id = resp.on_disk_id().unwrap();
        assert_eq!(&id[..8], &0x2au64.to_le_bytes());
        assert_eq!(&id[8..16], &0x1234u64.to_le_bytes());
        let mut again = header();
        resp.encode(&mut again);
        assert_eq!(again, msg);
    }

    #[test]
    fn response_round_trip_and_truncation() {
        let resp = sample_response();
        let mut msg = header();
        resp.encode(&mut msg);
        assert_eq!(CreateResponse::decode(&msg).unwrap(), resp);
        for cut in 0..msg.len() {
            assert!(CreateResponse::decode(&msg[..cut]).is_err(), "prefix {cut}");
        }
        let mut none = resp.clone();
        none.contexts.clear();
        let mut msg = header();
        none.encode(&mut msg);
        assert_eq!(msg.len(), 64 + 89);
        let decoded = CreateResponse::decode(&msg).unwrap();
        assert_eq!(decoded, none);
        assert_eq!(decoded.maximal_access(), None);
        assert_eq!(decoded.on_disk_id(), None);
    }

    #[test]
    fn short_context_data_is_not_an_answer() {
        let mut resp = sample_response();
        resp.contexts = vec![
            CreateContext { name: b"MxAc".to_vec(), data: vec![0; 4] },
            CreateContext { name: b"QFid".to_vec(), data: vec![0; 31] },
        ];
        assert_eq!(resp.maximal_access(), None);
        assert_eq!(resp.on_disk_id(), None);
    }

    /// Offset of the Next field of the first context in an encoded sample response.
    fn first_context(msg: &[u8]) -> usize {
        u32::from_le_bytes(msg[64 + 80..64 + 84].try_into().unwrap()) as usize
    }

    #[test]
    fn rejects_bad_context_chains() {
        let mut msg = header();
        sample_response().encode(&mut msg);
        let ctx = first_context(&msg);

        // Next smaller than a context header would overlap (or loop onto) itself.
        for bad_next in [8u32, 4, 0xFFFF_FFF8] {
            let mut m = msg.clone();
            m[ctx..ctx + 4].copy_from_slice(&bad_next.to_le_bytes());
            assert!(CreateResponse::decode(&m).is_err(), "next {bad_next:#x}");
        }
        // Unaligned Next.
        let mut m = msg.clone();
        m[ctx..ctx + 4].copy_from_slice(&36u32.to_le_bytes());
        assert!(CreateResponse::decode(&m).is_err());
        // Data running past the context into the next one.
        let mut m = msg.clone();
        m[ctx + 12..ctx + 16].copy_from_slice(&64u32.to_le_bytes());
        assert!(matches!(CreateResponse::decode(&m), Err(WireError::BadOffset { .. })));
        // Name offset inside the context header.
        let mut m = msg.clone();
        m[ctx + 4..ctx + 6].copy_from_slice(&0u16.to_le_bytes());
        assert!(CreateResponse::decode(&m).is_err());
        // Contexts offset inside the fixed part or outside the message.
        let mut m = msg.clone();
        m[64 + 80..64 + 84].copy_from_slice(&64u32.to_le_bytes());
        assert!(matches!(CreateResponse::decode(&m), Err(WireError::BadOffset { .. })));
        let mut m = msg.clone();
        m[64 + 84..64 + 88].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(CreateResponse::decode(&m), Err(WireError::BadOffset { .. })));
    }

    #[test]
    fn bounds_the_number_of_contexts() {
        // A chain of minimal contexts, each Next = 16, longer than the limit.
        let mut resp = sample_response();
        resp.contexts = vec![CreateContext { name: vec![], data: vec![] }; MAX_CREATE_CONTEXTS + 1];
        let mut msg = header();
        resp.encode(&mut msg);
        assert!(matches!(CreateResponse::decode(&msg), Err(WireError::TooLarge { .. })));
        resp.contexts.truncate(MAX_CREATE_CONTEXTS);
        let mut msg = header();
        resp.encode(&mut msg);
        assert_eq!(CreateResponse::decode(&msg).unwrap().contexts.len(), MAX_CREATE_CONTEXTS);
    }
}
