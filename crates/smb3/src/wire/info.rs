//! QUERY_INFO and SET_INFO bodies (MS-SMB2 2.2.37-2.2.40) and the file and
//! file system information structures they carry (MS-FSCC 2.4, 2.5).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::cursor::{from_utf16le, utf16le, Reader, Writer};
use super::header::HEADER_LEN;
use super::io::{body_buffer, pad_empty_buffer};
use super::{expect_structure_size, FileId, WireError};

/// InfoType values (2.2.37).
pub const INFO_FILE: u8 = 1;
pub const INFO_FILESYSTEM: u8 = 2;
pub const INFO_SECURITY: u8 = 3;
pub const INFO_QUOTA: u8 = 4;

/// File information classes (MS-FSCC 2.4).
pub mod file_class {
    pub const BASIC: u8 = 4;
    pub const STANDARD: u8 = 5;
    pub const INTERNAL: u8 = 6;
    pub const EA: u8 = 7;
    pub const ACCESS: u8 = 8;
    pub const RENAME: u8 = 10;
    pub const LINK: u8 = 11;
    pub const DISPOSITION: u8 = 13;
    pub const POSITION: u8 = 14;
    pub const ALL: u8 = 18;
    pub const ALLOCATION: u8 = 19;
    pub const END_OF_FILE: u8 = 20;
    pub const NETWORK_OPEN: u8 = 34;
    pub const ATTRIBUTE_TAG: u8 = 35;
    pub const ID: u8 = 59;
    pub const DISPOSITION_EX: u8 = 64;
}

/// File system information classes (MS-FSCC 2.5).
pub mod fs_class {
    pub const VOLUME: u8 = 1;
    pub const SIZE: u8 = 3;
    pub const DEVICE: u8 = 4;
    pub const ATTRIBUTE: u8 = 5;
    pub const FULL_SIZE: u8 = 7;
    pub const OBJECT_ID: u8 = 8;
    pub const SECTOR_SIZE: u8 = 11;
}

/// In FileBasicInformation sent with SET_INFO, a time of 0 leaves it unchanged
/// and all-ones (-1) stops the server updating it for this handle (MS-FSCC 2.4.7).
pub const FILETIME_NO_CHANGE: u64 = 0;
pub const FILETIME_STOP_UPDATING: u64 = u64::MAX;

/// 100 ns intervals between 1601-01-01 and 1970-01-01.
const FILETIME_UNIX_EPOCH: u64 = 116_444_736_000_000_000;
const TICKS_PER_SECOND: u64 = 10_000_000;

/// Converts a FILETIME (100 ns units since 1601, UTC). `None` for 0, which
/// SMB uses for "no time", and for values above i64::MAX (FILETIME is signed).
pub fn filetime_to_system_time(filetime: u64) -> Option<SystemTime> {
    if filetime == 0 || filetime > i64::MAX as u64 {
        return None;
    }
    let ticks_to_duration = |t: u64| Duration::new(t / TICKS_PER_SECOND, (t % TICKS_PER_SECOND) as u32 * 100);
    if filetime >= FILETIME_UNIX_EPOCH {
        UNIX_EPOCH.checked_add(ticks_to_duration(filetime - FILETIME_UNIX_EPOCH))
    } else {
        UNIX_EPOCH.checked_sub(ticks_to_duration(FILETIME_UNIX_EPOCH - filetime))
    }
}

/// Converts to a FILETIME, truncating to 100 ns. The result is clamped to
/// 1..=i64::MAX: never 0, which SET_INFO would read as "don't change", and
/// never negative.
pub fn system_time_to_filetime(time: SystemTime) -> u64 {
    let filetime = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => {
            let ticks =
                after.as_secs().saturating_mul(TICKS_PER_SECOND).saturating_add(u64::from(after.subsec_nanos() / 100));
            FILETIME_UNIX_EPOCH.saturating_add(ticks)
        }
        Err(before) => {
            let before = before.duration();
            // Round towards the earlier instant, as truncation does after 1970.
            let ticks = before
                .as_secs()
                .saturating_mul(TICKS_PER_SECOND)
                .saturating_add(u64::from(before.subsec_nanos().div_ceil(100)));
            FILETIME_UNIX_EPOCH.saturating_sub(ticks)
        }
    };
    filetime.clamp(1, i64::MAX as u64)
}

/// QUERY_INFO request (2.2.37).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryInfoRequest {
    /// `INFO_*`.
    pub info_type: u8,
    /// A `file_class` or `fs_class` value, or 0 for security and quota.
    pub file_info_class: u8,
    pub output_buffer_length: u32,
    /// Only quota and EA queries carry input.
    pub input: Vec<u8>,
    /// Security information bits for INFO_SECURITY; 0 otherwise.
    pub additional_information: u32,
    pub flags: u32,
    pub file_id: FileId,
}

impl QueryInfoRequest {
    const STRUCTURE_SIZE: u16 = 41;
    const FIXED_LEN: usize = 40;

    pub fn encode(&self, msg: &mut Vec<u8>) {
        let body = msg.len();
        let buffer_start = body + Self::FIXED_LEN;
        msg.put_u16(Self::STRUCTURE_SIZE);
        msg.put_u8(self.info_type);
        msg.put_u8(self.file_info_class);
        msg.put_u32(self.output_buffer_length);
        // No input: offset and length both 0, as servers expect.
        msg.put_u16(if self.input.is_empty() { 0 } else { buffer_start as u16 });
        msg.put_u16(0); // Reserved
        msg.put_u32(self.input.len() as u32);
        msg.put_u32(self.additional_information);
        msg.put_u32(self.flags);
        self.file_id.encode(msg);
        msg.put_bytes(&self.input);
        pad_empty_buffer(msg, buffer_start);
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, Self::STRUCTURE_SIZE, "query info request")?;
        let info_type = r.u8("query info type")?;
        let file_info_class = r.u8("query info class")?;
        let output_buffer_length = r.u32("query info output buffer length")?;
        let input_offset = r.u16("query info input offset")? as usize;
        r.skip(2, "query info reserved")?;
        let input_len = r.u32("query info input length")? as usize;
        let additional_information = r.u32("query info additional information")?;
        let flags = r.u32("query info flags")?;
        let file_id = FileId::decode(&mut r)?;
        let fixed_end = HEADER_LEN + Self::FIXED_LEN;
        let input = body_buffer(&r, input_offset, input_len, fixed_end, "query info input")?;
        Ok(QueryInfoRequest {
            info_type,
            file_info_class,
            output_buffer_length,
            input: input.to_vec(),
            additional_information,
            flags,
            file_id,
        })
    }
}

/// QUERY_INFO response (2.2.38): the raw information structure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryInfoResponse {
    pub buffer: Vec<u8>,
}

impl QueryInfoResponse {
    const STRUCTURE_SIZE: u16 = 9;
    const FIXED_LEN: usize = 8;

    pub fn encode(&self, msg: &mut Vec<u8>) {
        let body = msg.len();
        let buffer_start = body + Self::FIXED_LEN;
        msg.put_u16(Self::STRUCTURE_SIZE);
        msg.put_u16(buffer_start as u16);
        msg.put_u32(self.buffer.len() as u32);
        msg.put_bytes(&self.buffer);
        pad_empty_buffer(msg, buffer_start);
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, Self::STRUCTURE_SIZE, "query info response")?;
        let offset = r.u16("query info output offset")? as usize;
        let len = r.u32("query info output length")? as usize;
        let fixed_end = HEADER_LEN + Self::FIXED_LEN;
        let buffer = body_buffer(&r, offset, len, fixed_end, "query info output")?;
        Ok(QueryInfoResponse { buffer: buffer.to_vec() })
    }
}

/// SET_INFO request (2.2.39).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetInfoRequest {
    pub info_type: u8,
    pub file_info_class: u8,
    pub additional_information: u32,
    pub file_id: FileId,
    /// The encoded information structure.
    pub buffer: Vec<u8>,
}

impl SetInfoRequest {
    const STRUCTURE_SIZE: u16 = 33;
    const FIXED_LEN: usize = 32;

    pub fn encode(&self, msg: &mut Vec<u8>) {
        let body = msg.len();
        let buffer_start = body + Self::FIXED_LEN;
        msg.put_u16(Self::STRUCTURE_SIZE);
        msg.put_u8(self.info_type);
        msg.put_u8(self.file_info_class);
        msg.put_u32(self.buffer.len() as u32);
        msg.put_u16(buffer_start as u16);
        msg.put_u16(0); // Reserved
        msg.put_u32(self.additional_information);
        self.file_id.encode(msg);
        msg.put_bytes(&self.buffer);
        pad_empty_buffer(msg, buffer_start);
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, Self::STRUCTURE_SIZE, "set info request")?;
        let info_type = r.u8("set info type")?;
        let file_info_class = r.u8("set info class")?;
        let len = r.u32("set info buffer length")? as usize;
        let offset = r.u16("set info buffer offset")? as usize;
        r.skip(2, "set info reserved")?;
        let additional_information = r.u32("set info additional information")?;
        let file_id = FileId::decode(&mut r)?;
        let fixed_end = HEADER_LEN + Self::FIXED_LEN;
        let buffer = body_buffer(&r, offset, len, fixed_end, "set info buffer")?;
        Ok(SetInfoRequest { info_type, file_info_class, additional_information, file_id, buffer: buffer.to_vec() })
    }
}

/// SET_INFO response (2.2.40): carries nothing but its size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetInfoResponse;

impl SetInfoResponse {
    const STRUCTURE_SIZE: u16 = 2;

    pub fn encode(&self, msg: &mut Vec<u8>) {
        msg.put_u16(Self::STRUCTURE_SIZE);
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, Self::STRUCTURE_SIZE, "set info response")?;
        Ok(SetInfoResponse)
    }
}

/// Reads a UTF-16 name whose byte length was given by a field before it.
fn name_at(r: &mut Reader<'_>, len: usize, what: &'static str) -> Result<String, WireError> {
    from_utf16le(r.take(len, what)?, what)
}

/// FileBasicInformation (MS-FSCC 2.4.7). When setting, a time of
/// [`FILETIME_NO_CHANGE`] and attributes of 0 leave the value unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileBasicInformation {
    pub creation_time: u64,
    pub last_access_time: u64,
    pub last_write_time: u64,
    pub change_time: u64,
    pub file_attributes: u32,
}

impl FileBasicInformation {
    pub const CLASS: u8 = file_class::BASIC;
    pub const LEN: usize = 40;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.put_u64(self.creation_time);
        out.put_u64(self.last_access_time);
        out.put_u64(self.last_write_time);
        out.put_u64(self.change_time);
        out.put_u32(self.file_attributes);
        out.put_u32(0); // Reserved
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        Self::read(&mut Reader::new(b))
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let v = FileBasicInformation {
            creation_time: r.u64("basic info creation time")?,
            last_access_time: r.u64("basic info last access time")?,
            last_write_time: r.u64("basic info last write time")?,
            change_time: r.u64("basic info change time")?,
            file_attributes: r.u32("basic info attributes")?,
        };
        r.skip(4, "basic info reserved")?;
        Ok(v)
    }
}

/// FileStandardInformation (MS-FSCC 2.4.41).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileStandardInformation {
    pub allocation_size: u64,
    pub end_of_file: u64,
    pub number_of_links: u32,
    pub delete_pending: bool,
    pub directory: bool,
}

impl FileStandardInformation {
    pub const CLASS: u8 = file_class::STANDARD;
    pub const LEN: usize = 24;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.put_u64(self.allocation_size);
        out.put_u64(self.end_of_file);
        out.put_u32(self.number_of_links);
        out.put_u8(self.delete_pending as u8);
        out.put_u8(self.directory as u8);
        out.put_u16(0); // Reserved
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        Self::read(&mut Reader::new(b))
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let v = FileStandardInformation {
            allocation_size: r.u64("standard info allocation size")?,
            end_of_file: r.u64("standard info end of file")?,
            number_of_links: r.u32("standard info links")?,
            delete_pending: r.u8("standard info delete pending")? != 0,
            directory: r.u8("standard info directory")? != 0,
        };
        r.skip(2, "standard info reserved")?;
        Ok(v)
    }
}

/// FileInternalInformation (MS-FSCC 2.4.22): the server's file index number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileInternalInformation {
    pub index_number: u64,
}

impl FileInternalInformation {
    pub const CLASS: u8 = file_class::INTERNAL;
    pub const LEN: usize = 8;

    pub fn encode(&self) -> Vec<u8> {
        self.index_number.to_le_bytes().to_vec()
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        Ok(FileInternalInformation { index_number: Reader::new(b).u64("internal info index number")? })
    }
}

/// FileNetworkOpenInformation (MS-FSCC 2.4.29).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileNetworkOpenInformation {
    pub creation_time: u64,
    pub last_access_time: u64,
    pub last_write_time: u64,
    pub change_time: u64,
    pub allocation_size: u64,
    pub end_of_file: u64,
    pub file_attributes: u32,
}

impl FileNetworkOpenInformation {
    pub const CLASS: u8 = file_class::NETWORK_OPEN;
    pub const LEN: usize = 56;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.put_u64(self.creation_time);
        out.put_u64(self.last_access_time);
        out.put_u64(self.last_write_time);
        out.put_u64(self.change_time);
        out.put_u64(self.allocation_size);
        out.put_u64(self.end_of_file);
        out.put_u32(self.file_attributes);
        out.put_u32(0); // Reserved
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(b);
        let v = FileNetworkOpenInformation {
            creation_time: r.u64("network open info creation time")?,
            last_access_time: r.u64("network open info last access time")?,
            last_write_time: r.u64("network open info last write time")?,
            change_time: r.u64("network open info change time")?,
            allocation_size: r.u64("network open info allocation size")?,
            end_of_file: r.u64("network open info end of file")?,
            file_attributes: r.u32("network open info attributes")?,
        };
        r.skip(4, "network open info reserved")?;
        Ok(v)
    }
}

/// FileIdInformation (MS-FSCC 2.4.21): volume serial and 128-bit file id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileIdInformation {
    pub volume_serial_number: u64,
    pub file_id: [u8; 16],
}

impl FileIdInformation {
    pub const CLASS: u8 = file_class::ID;
    pub const LEN: usize = 24;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.put_u64(self.volume_serial_number);
        out.put_bytes(&self.file_id);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(b);
        Ok(FileIdInformation {
            volume_serial_number: r.u64("id info volume serial")?,
            file_id: r.array::<16>("id info file id")?,
        })
    }
}

/// FileEndOfFileInformation (MS-FSCC 2.4.14), set to truncate or extend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileEndOfFileInformation {
    pub end_of_file: u64,
}

impl FileEndOfFileInformation {
    pub const CLASS: u8 = file_class::END_OF_FILE;
    pub const LEN: usize = 8;

    pub fn encode(&self) -> Vec<u8> {
        self.end_of_file.to_le_bytes().to_vec()
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        Ok(FileEndOfFileInformation { end_of_file: Reader::new(b).u64("end of file info")? })
    }
}

/// FileDispositionInformation (MS-FSCC 2.4.11): delete on last close.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileDispositionInformation {
    pub delete_pending: bool,
}

impl FileDispositionInformation {
    pub const CLASS: u8 = file_class::DISPOSITION;
    pub const LEN: usize = 1;

    pub fn encode(&self) -> Vec<u8> {
        vec![self.delete_pending as u8]
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        Ok(FileDispositionInformation { delete_pending: Reader::new(b).u8("disposition info")? != 0 })
    }
}

/// FileRenameInformation for SMB2 (MS-FSCC 2.4.37.2, FILE_RENAME_INFORMATION_TYPE_2);
/// FileLinkInformation (2.4.27.2) has the same layout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileRenameInformation {
    pub replace_if_exists: bool,
    /// Must be 0 over SMB2: `file_name` is relative to the share root.
    pub root_directory: u64,
    /// Target path relative to the share, with backslashes, no leading `\`.
    pub file_name: String,
}

impl FileRenameInformation {
    pub const CLASS: u8 = file_class::RENAME;
    pub const LINK_CLASS: u8 = file_class::LINK;
    const FIXED_LEN: usize = 20;

    pub fn encode(&self) -> Vec<u8> {
        let name = utf16le(&self.file_name);
        let mut out = Vec::with_capacity(Self::FIXED_LEN + name.len() + 2);
        out.put_u8(self.replace_if_exists as u8);
        out.put_zeros(7); // Reserved
        out.put_u64(self.root_directory);
        out.put_u32(name.len() as u32);
        out.put_bytes(&name);
        // A UTF-16 NUL outside FileNameLength: some servers want the buffer at
        // least as long as their in-memory struct (24 bytes), as other clients send.
        out.put_u16(0);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(b);
        let replace_if_exists = r.u8("rename info replace if exists")? != 0;
        r.skip(7, "rename info reserved")?;
        let root_directory = r.u64("rename info root directory")?;
        let len = r.u32("rename info name length")? as usize;
        let file_name = name_at(&mut r, len, "rename info name")?;
        Ok(FileRenameInformation { replace_if_exists, root_directory, file_name })
    }
}

/// FileAllInformation (MS-FSCC 2.4.2). The name is the path the server knows
/// the open by.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileAllInformation {
    pub basic: FileBasicInformation,
    pub standard: FileStandardInformation,
    pub internal: FileInternalInformation,
    pub ea_size: u32,
    pub access_flags: u32,
    pub current_byte_offset: u64,
    pub mode: u32,
    pub alignment_requirement: u32,
    pub name: String,
}

impl FileAllInformation {
    pub const CLASS: u8 = file_class::ALL;

    pub fn encode(&self) -> Vec<u8> {
        let name = utf16le(&self.name);
        let mut out = Vec::with_capacity(100 + name.len());
        self.basic.encode_into(&mut out);
        self.standard.encode_into(&mut out);
        out.put_u64(self.internal.index_number);
        out.put_u32(self.ea_size);
        out.put_u32(self.access_flags);
        out.put_u64(self.current_byte_offset);
        out.put_u32(self.mode);
        out.put_u32(self.alignment_requirement);
        out.put_u32(name.len() as u32);
        out.put_bytes(&name);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(b);
        let basic = FileBasicInformation::read(&mut r)?;
        let standard = FileStandardInformation::read(&mut r)?;
        let internal = FileInternalInformation { index_number: r.u64("all info index number")? };
        let ea_size = r.u32("all info ea size")?;
        let access_flags = r.u32("all info access flags")?;
        let current_byte_offset = r.u64("all info position")?;
        let mode = r.u32("all info mode")?;
        let alignment_requirement = r.u32("all info alignment")?;
        let len = r.u32("all info name length")? as usize;
        let name = name_at(&mut r, len, "all info name")?;
        Ok(FileAllInformation {
            basic,
            standard,
            internal,
            ea_size,
            access_flags,
            current_byte_offset,
            mode,
            alignment_requirement,
            name,
        })
    }
}

/// FileFsFullSizeInformation (MS-FSCC 2.5.4).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileFsFullSizeInformation {
    pub total_allocation_units: u64,
    /// Available to the calling user (quotas applied).
    pub caller_available_allocation_units: u64,
    pub actual_available_allocation_units: u64,
    pub sectors_per_allocation_unit: u32,
    pub bytes_per_sector: u32,
}

impl FileFsFullSizeInformation {
    pub const CLASS: u8 = fs_class::FULL_SIZE;
    pub const LEN: usize = 32;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.put_u64(self.total_allocation_units);
        out.put_u64(self.caller_available_allocation_units);
        out.put_u64(self.actual_available_allocation_units);
        out.put_u32(self.sectors_per_allocation_unit);
        out.put_u32(self.bytes_per_sector);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(b);
        Ok(FileFsFullSizeInformation {
            total_allocation_units: r.u64("fs full size total units")?,
            caller_available_allocation_units: r.u64("fs full size caller available units")?,
            actual_available_allocation_units: r.u64("fs full size actual available units")?,
            sectors_per_allocation_unit: r.u32("fs full size sectors per unit")?,
            bytes_per_sector: r.u32("fs full size bytes per sector")?,
        })
    }
}

/// FileFsSizeInformation (MS-FSCC 2.5.8).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileFsSizeInformation {
    pub total_allocation_units: u64,
    pub available_allocation_units: u64,
    pub sectors_per_allocation_unit: u32,
    pub bytes_per_sector: u32,
}

impl FileFsSizeInformation {
    pub const CLASS: u8 = fs_class::SIZE;
    pub const LEN: usize = 24;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.put_u64(self.total_allocation_units);
        out.put_u64(self.available_allocation_units);
        out.put_u32(self.sectors_per_allocation_unit);
        out.put_u32(self.bytes_per_sector);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(b);
        Ok(FileFsSizeInformation {
            total_allocation_units: r.u64("fs size total units")?,
            available_allocation_units: r.u64("fs size available units")?,
            sectors_per_allocation_unit: r.u32("fs size sectors per unit")?,
            bytes_per_sector: r.u32("fs size bytes per sector")?,
        })
    }
}

/// FileFsVolumeInformation (MS-FSCC 2.5.9).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileFsVolumeInformation {
    pub volume_creation_time: u64,
    pub volume_serial_number: u32,
    pub supports_objects: bool,
    pub label: String,
}

impl FileFsVolumeInformation {
    pub const CLASS: u8 = fs_class::VOLUME;

    pub fn encode(&self) -> Vec<u8> {
        let label = utf16le(&self.label);
        let mut out = Vec::with_capacity(18 + label.len());
        out.put_u64(self.volume_creation_time);
        out.put_u32(self.volume_serial_number);
        out.put_u32(label.len() as u32);
        out.put_u8(self.supports_objects as u8);
        out.put_u8(0); // Reserved
        out.put_bytes(&label);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(b);
        let volume_creation_time = r.u64("fs volume creation time")?;
        let volume_serial_number = r.u32("fs volume serial")?;
        let len = r.u32("fs volume label length")? as usize;
        let supports_objects = r.u8("fs volume supports objects")? != 0;
        r.skip(1, "fs volume reserved")?;
        let label = name_at(&mut r, len, "fs volume label")?;
        Ok(FileFsVolumeInformation { volume_creation_time, volume_serial_number, supports_objects, label })
    }
}

/// FileFsAttributeInformation (MS-FSCC 2.5.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileFsAttributeInformation {
    /// FILE_CASE_SENSITIVE_SEARCH etc. (MS-FSCC 2.5.1).
    pub attributes: u32,
    pub max_component_name_length: u32,
    /// E.g. "NTFS"; Samba reports the underlying file system or "NTFS".
    pub file_system_name: String,
}

impl FileFsAttributeInformation {
    pub const CLASS: u8 = fs_class::ATTRIBUTE;

    pub fn encode(&self) -> Vec<u8> {
        let name = utf16le(&self.file_system_name);
        let mut out = Vec::with_capacity(12 + name.len());
        out.put_u32(self.attributes);
        out.put_u32(self.max_component_name_length);
        out.put_u32(name.len() as u32);
        out.put_bytes(&name);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(b);
        let attributes = r.u32("fs attribute flags")?;
        let max_component_name_length = r.u32("fs attribute max component length")?;
        let len = r.u32("fs attribute name length")? as usize;
        let file_system_name = name_at(&mut r, len, "fs attribute name")?;
        Ok(FileFsAttributeInformation { attributes, max_component_name_length, file_system_name })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Command, Header};

    fn header(command: Command) -> Vec<u8> {
        let mut msg = Vec::new();
        Header::new(command).encode(&mut msg);
        msg
    }

    fn fid() -> FileId {
        FileId { persistent: 0xAA, volatile: 0xBB }
    }

    /// Round-trips an info structure and checks every strict prefix fails.
    fn check_info<T: PartialEq + std::fmt::Debug>(
        value: &T,
        encode: fn(&T) -> Vec<u8>,
        decode: fn(&[u8]) -> Result<T, WireError>,
        expected_len: usize,
    ) {
        let bytes = encode(value);
        assert_eq!(bytes.len(), expected_len, "{value:?}");
        assert_eq!(&decode(&bytes).unwrap(), value);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "{value:?} decoded from {cut} bytes");
        }
    }

    #[test]
    fn filetime_conversions() {
        assert_eq!(filetime_to_system_time(FILETIME_UNIX_EPOCH), Some(UNIX_EPOCH));
        assert_eq!(filetime_to_system_time(0), None);
        assert_eq!(filetime_to_system_time(u64::MAX), None);
        // 2023-11-14T22:13:20Z = 1_700_000_000 s after the Unix epoch, plus 1.2345678 s.
        let t = UNIX_EPOCH + Duration::new(1_700_000_001, 234_567_800);
        let ft = 133_444_736_012_345_678;
        assert_eq!(system_time_to_filetime(t), ft);
        assert_eq!(filetime_to_system_time(ft), Some(t));
        // Sub-100 ns precision is truncated.
        assert_eq!(system_time_to_filetime(t + Duration::from_nanos(99)), ft);
        // Before 1970 and before 1601.
        let before = UNIX_EPOCH - Duration::from_secs(86_400);
        let ft_before = FILETIME_UNIX_EPOCH - 86_400 * TICKS_PER_SECOND;
        assert_eq!(system_time_to_filetime(before), ft_before);
        assert_eq!(filetime_to_system_time(ft_before), Some(before));
        assert_eq!(system_time_to_filetime(before - Duration::from_nanos(50)), ft_before - 1);
        if let Some(ancient) = UNIX_EPOCH.checked_sub(Duration::from_secs(400 * 366 * 86_400)) {
            assert_eq!(system_time_to_filetime(ancient), 1);
        }
        assert_eq!(filetime_to_system_time(1), UNIX_EPOCH.checked_sub(Duration::new(11_644_473_599, 999_999_900)));
    }

    #[test]
    fn query_info_request_round_trip() {
        let req = QueryInfoRequest {
            info_type: INFO_FILE,
            file_info_class: file_class::ALL,
            output_buffer_length: 4096,
            input: vec![],
            additional_information: 0,
            flags: 0,
            file_id: fid(),
        };
        let mut msg = header(Command::QueryInfo);
        req.encode(&mut msg);
        assert_eq!(msg.len(), 64 + 41);
        assert_eq!(QueryInfoRequest::decode(&msg).unwrap(), req);
        for cut in 0..64 + 40 {
            assert!(QueryInfoRequest::decode(&msg[..cut]).is_err(), "prefix {cut}");
        }

        let with_input = QueryInfoRequest { info_type: INFO_QUOTA, input: vec![1, 2, 3, 4, 5], ..req };
        let mut msg = header(Command::QueryInfo);
        with_input.encode(&mut msg);
        assert_eq!(&msg[64 + 8..64 + 10], &104u16.to_le_bytes());
        assert_eq!(QueryInfoRequest::decode(&msg).unwrap(), with_input);
        assert!(QueryInfoRequest::decode(&msg[..msg.len() - 1]).is_err());
        let mut inside = msg.clone();
        inside[64 + 8..64 + 10].copy_from_slice(&100u16.to_le_bytes());
        assert!(matches!(QueryInfoRequest::decode(&inside), Err(WireError::BadOffset { .. })));
    }

    #[test]
    fn query_info_response_from_hand_built_bytes() {
        // QUERY_INFO response carrying FileStandardInformation (MS-FSCC 2.4.41)
        // of a 5-byte file with one link.
        let body = hex::decode(concat!(
            "0900",             // StructureSize 9
            "4800",             // OutputBufferOffset 72
            "18000000",         // OutputBufferLength 24
            "0010000000000000", // AllocationSize 4096
            "0500000000000000", // EndOfFile 5
            "01000000",         // NumberOfLinks
            "00",               // DeletePending
            "00",               // Directory
            "0000",             // Reserved
        ))
        .unwrap();
        let mut msg = header(Command::QueryInfo);
        msg.extend_from_slice(&body);
        let resp = QueryInfoResponse::decode(&msg).unwrap();
        let info = FileStandardInformation::decode(&resp.buffer).unwrap();
        assert_eq!(
            info,
            FileStandardInformation {
                allocation_size: 4096,
                end_of_file: 5,
                number_of_links: 1,
                delete_pending: false,
                directory: false
            }
        );
        let mut again = header(Command::QueryInfo);
        QueryInfoResponse { buffer: info.encode() }.encode(&mut again);
        assert_eq!(again, msg);

        // Output offset inside the header, length past the end, truncation.
        let mut inside = msg.clone();
        inside[66..68].copy_from_slice(&60u16.to_le_bytes());
        assert!(matches!(QueryInfoResponse::decode(&inside), Err(WireError::BadOffset { .. })));
        let mut long = msg.clone();
        long[68..72].copy_from_slice(&25u32.to_le_bytes());
        assert!(matches!(QueryInfoResponse::decode(&long), Err(WireError::BadOffset { .. })));
        for cut in 0..72 {
            assert!(QueryInfoResponse::decode(&msg[..cut]).is_err(), "prefix {cut}");
        }
        let mut empty = header(Command::QueryInfo);
        QueryInfoResponse::default().encode(&mut empty);
        assert_eq!(QueryInfoResponse::decode(&empty).unwrap(), QueryInfoResponse::default());
    }

    #[test]
    fn set_info_round_trip() {
        let rename =
            FileRenameInformation { replace_if_exists: true, root_directory: 0, file_name: "new\\name".into() };
        let req = SetInfoRequest {
            info_type: INFO_FILE,
            file_info_class: FileRenameInformation::CLASS,
            additional_information: 0,
            file_id: fid(),
            buffer: rename.encode(),
        };
        let mut msg = header(Command::SetInfo);
        req.encode(&mut msg);
        assert_eq!(&msg[64 + 8..64 + 10], &96u16.to_le_bytes());
        let decoded = SetInfoRequest::decode(&msg).unwrap();
        assert_eq!(decoded, req);
        assert_eq!(FileRenameInformation::decode(&decoded.buffer).unwrap(), rename);
        for cut in 0..msg.len() {
            assert!(SetInfoRequest::decode(&msg[..cut]).is_err(), "prefix {cut}");
        }
        let mut inside = msg.clone();
        inside[64 + 8..64 + 10].copy_from_slice(&64u16.to_le_bytes());
        assert!(matches!(SetInfoRequest::decode(&inside), Err(WireError::BadOffset { .. })));

        let mut msg = header(Command::SetInfo);
        SetInfoResponse.encode(&mut msg);
        assert_eq!(&msg[64..], &[2, 0]);
        assert_eq!(SetInfoResponse::decode(&msg).unwrap(), SetInfoResponse);
        assert!(SetInfoResponse::decode(&msg[..65]).is_err());
    }

    #[test]
    fn fixed_size_structures_round_trip() {
        let basic = FileBasicInformation {
            creation_time: 1,
            last_access_time: 2,
            last_write_time: 3,
            change_time: FILETIME_STOP_UPDATING,
            file_attributes: 0x20,
        };
        check_info(&basic, FileBasicInformation::encode, FileBasicInformation::decode, 40);
        let standard = FileStandardInformation {
            allocation_size: 8192,
            end_of_file: 8000,
            number_of_links: 2,
            delete_pending: true,
            directory: false,
        };
        check_info(&standard, FileStandardInformation::encode, FileStandardInformation::decode, 24);
        let internal = FileInternalInformation { index_number: 0x1234_5678_9abc };
        check_info(&internal, FileInternalInformation::encode, FileInternalInformation::decode, 8);
        let open = FileNetworkOpenInformation {
            creation_time: 10,
            last_access_time: 11,
            last_write_time: 12,
            change_time: 13,
            allocation_size: 14,
            end_of_file: 15,
            file_attributes: 0x10,
        };
        check_info(&open, FileNetworkOpenInformation::encode, FileNetworkOpenInformation::decode, 56);
        let id = FileIdInformation { volume_serial_number: 77, file_id: *b"0123456789abcdef" };
        check_info(&id, FileIdInformation::encode, FileIdInformation::decode, 24);
        let eof = FileEndOfFileInformation { end_of_file: 1 << 40 };
        check_info(&eof, FileEndOfFileInformation::encode, FileEndOfFileInformation::decode, 8);
        let disp = FileDispositionInformation { delete_pending: true };
        check_info(&disp, FileDispositionInformation::encode, FileDispositionInformation::decode, 1);
        let full = FileFsFullSizeInformation {
            total_allocation_units: 1000,
            caller_available_allocation_units: 400,
            actual_available_allocation_units: 500,
            sectors_per_allocation_unit: 8,
            bytes_per_sector: 512,
        };
        check_info(&full, FileFsFullSizeInformation::encode, FileFsFullSizeInformation::decode, 32);
        let size = FileFsSizeInformation {
            total_allocation_units: 1000,
            available_allocation_units: 500,
            sectors_per_allocation_unit: 8,
            bytes_per_sector: 4096,
        };
        check_info(&size, FileFsSizeInformation::encode, FileFsSizeInformation::decode, 24);
    }

    #[test]
    fn named_structures_round_trip() {
        let rename =
            FileRenameInformation { replace_if_exists: false, root_directory: 0, file_name: "a\\b ç.txt".into() };
        let bytes = rename.encode();
        assert_eq!(bytes.len(), 20 + 18 + 2);
        assert_eq!(FileRenameInformation::decode(&bytes).unwrap(), rename);
        // The trailing NUL is optional on decode; the name itself is not.
        assert_eq!(FileRenameInformation::decode(&bytes[..38]).unwrap(), rename);
        for cut in 0..38 {
            assert!(FileRenameInformation::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }

        let all = FileAllInformation {
            basic: FileBasicInformation { creation_time: 5, file_attributes: 0x80, ..Default::default() },
            standard: FileStandardInformation { end_of_file: 3, number_of_links: 1, ..Default::default() },
            internal: FileInternalInformation { index_number: 99 },
            ea_size: 0,
            access_flags: 0x0012_0089,
            current_byte_offset: 0,
            mode: 0,
            alignment_requirement: 0,
            name: "\\share\\dir\\file".into(),
        };
        check_info(&all, FileAllInformation::encode, FileAllInformation::decode, 100 + 30);

        let volume = FileFsVolumeInformation {
            volume_creation_time: 133_000_000_000_000_000,
            volume_serial_number: 0xCAFE,
            supports_objects: false,
            label: "data".into(),
        };
        check_info(&volume, FileFsVolumeInformation::encode, FileFsVolumeInformation::decode, 18 + 8);

        let attr = FileFsAttributeInformation {
            attributes: 0x0000_0003,
            max_component_name_length: 255,
            file_system_name: "NTFS".into(),
        };
        check_info(&attr, FileFsAttributeInformation::encode, FileFsAttributeInformation::decode, 12 + 8);
    }

    #[test]
    fn fs_attribute_from_hand_built_bytes_and_lying_lengths() {
        // FileFsAttributeInformation per MS-FSCC 2.5.1: case-sensitive search,
        // case-preserved names, 255-character components, "NTFS".
        let bytes = hex::decode("03000000ff000000080000004e00540046005300").unwrap();
        let attr = FileFsAttributeInformation::decode(&bytes).unwrap();
        assert_eq!(attr.attributes, 3);
        assert_eq!(attr.max_component_name_length, 255);
        assert_eq!(attr.file_system_name, "NTFS");
        assert_eq!(attr.encode(), bytes);

        let mut lying = bytes.clone();
        lying[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(FileFsAttributeInformation::decode(&lying), Err(WireError::Truncated { .. })));
        let mut odd = bytes.clone();
        odd[8] = 7;
        assert!(matches!(FileFsAttributeInformation::decode(&odd), Err(WireError::Invalid { .. })));
        let mut all_lying = FileAllInformation::default().encode();
        let n = all_lying.len();
        all_lying[n - 4..].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
        assert!(FileAllInformation::decode(&all_lying).is_err());
    }
}
