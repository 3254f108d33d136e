//! QUERY_DIRECTORY request and response bodies (MS-SMB2 2.2.33, 2.2.34) and
//! the directory information entries of their buffer (MS-FSCC 2.4).

use super::cursor::{from_utf16le, utf16le, Reader, Writer};
use super::header::HEADER_LEN;
use super::io::{body_buffer, pad_empty_buffer};
use super::{expect_structure_size, FileId, WireError};

/// FileInformationClass values for QUERY_DIRECTORY (MS-FSCC 2.4).
pub const FILE_DIRECTORY_INFORMATION: u8 = 0x01;
pub const FILE_FULL_DIRECTORY_INFORMATION: u8 = 0x02;
pub const FILE_BOTH_DIRECTORY_INFORMATION: u8 = 0x03;
pub const FILE_NAMES_INFORMATION: u8 = 0x0C;
pub const FILE_ID_BOTH_DIRECTORY_INFORMATION: u8 = 0x25;
pub const FILE_ID_FULL_DIRECTORY_INFORMATION: u8 = 0x26;

/// QUERY_DIRECTORY request flags (2.2.33).
pub const RESTART_SCANS: u8 = 0x01;
pub const RETURN_SINGLE_ENTRY: u8 = 0x02;
pub const INDEX_SPECIFIED: u8 = 0x04;
pub const REOPEN: u8 = 0x10;

/// QUERY_DIRECTORY request (2.2.33).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryDirectoryRequest {
    /// One of the `FILE_*_INFORMATION` classes above.
    pub info_class: u8,
    /// `RESTART_SCANS`, `RETURN_SINGLE_ENTRY`, `INDEX_SPECIFIED`, `REOPEN`.
    pub flags: u8,
    pub file_index: u32,
    pub file_id: FileId,
    /// Search pattern, e.g. `*`.
    pub pattern: String,
    pub output_buffer_length: u32,
}

impl QueryDirectoryRequest {
    const STRUCTURE_SIZE: u16 = 33;
    const FIXED_LEN: usize = 32;

    pub fn encode(&self, msg: &mut Vec<u8>) {
        let body = msg.len();
        let buffer_start = body + Self::FIXED_LEN;
        let pattern = utf16le(&self.pattern);
        msg.put_u16(Self::STRUCTURE_SIZE);
        msg.put_u8(self.info_class);
        msg.put_u8(self.flags);
        msg.put_u32(self.file_index);
        self.file_id.encode(msg);
        msg.put_u16(buffer_start as u16); // FileNameOffset
        msg.put_u16(pattern.len() as u16);
        msg.put_u32(self.output_buffer_length);
        msg.put_bytes(&pattern);
        pad_empty_buffer(msg, buffer_start);
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, Self::STRUCTURE_SIZE, "query directory request")?;
        let info_class = r.u8("query directory info class")?;
        let flags = r.u8("query directory flags")?;
        let file_index = r.u32("query directory file index")?;
        let file_id = FileId::decode(&mut r)?;
        let name_offset = r.u16("query directory name offset")? as usize;
        let name_len = r.u16("query directory name length")? as usize;
        let output_buffer_length = r.u32("query directory output buffer length")?;
        let fixed_end = HEADER_LEN + Self::FIXED_LEN;
        let pattern = body_buffer(&r, name_offset, name_len, fixed_end, "query directory pattern")?;
        let pattern = from_utf16le(pattern, "query directory pattern")?;
        Ok(QueryDirectoryRequest { info_class, flags, file_index, file_id, pattern, output_buffer_length })
    }
}

/// QUERY_DIRECTORY response (2.2.34): the raw entry buffer, parsed with
/// [`parse_directory_entries`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryDirectoryResponse {
    pub buffer: Vec<u8>,
}

impl QueryDirectoryResponse {
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
        expect_structure_size(&mut r, Self::STRUCTURE_SIZE, "query directory response")?;
        let offset = r.u16("query directory output offset")? as usize;
        let len = r.u32("query directory output length")? as usize;
        let fixed_end = HEADER_LEN + Self::FIXED_LEN;
        let buffer = body_buffer(&r, offset, len, fixed_end, "query directory output")?;
        Ok(QueryDirectoryResponse { buffer: buffer.to_vec() })
    }
}

/// One directory entry, whatever the information class; fields the class does
/// not carry are zero or empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectoryEntry {
    pub name: String,
    pub file_index: u32,
    pub creation_time: u64,
    pub last_access_time: u64,
    pub last_write_time: u64,
    pub change_time: u64,
    pub end_of_file: u64,
    pub allocation_size: u64,
    pub file_attributes: u32,
    /// EA size, or the reparse tag for reparse points (MS-FSCC 2.4.17).
    pub ea_size: u32,
    /// FileId (index number); 0 if the class has none.
    pub file_id: u64,
    /// 8.3 name; empty if the class has none or the server gave none.
    pub short_name: String,
}

/// Where the optional fields of a directory information class live
/// (offsets from the entry start, MS-FSCC 2.4).
struct EntryLayout {
    /// Offset of FileName, i.e. the length of the fixed part.
    name_at: usize,
    /// FILE_NAMES_INFORMATION has only NextEntryOffset, FileIndex, FileNameLength.
    names_only: bool,
    ea_size: bool,
    short_name: bool,
    file_id_at: Option<usize>,
}

const SHORT_NAME_AT: usize = 70;
const SHORT_NAME_MAX: usize = 24;

fn layout(info_class: u8) -> Result<EntryLayout, WireError> {
    let l = |name_at, ea_size, short_name, file_id_at| EntryLayout {
        name_at,
        names_only: false,
        ea_size,
        short_name,
        file_id_at,
    };
    Ok(match info_class {
        FILE_DIRECTORY_INFORMATION => l(64, false, false, None),
        FILE_FULL_DIRECTORY_INFORMATION => l(68, true, false, None),
        FILE_ID_FULL_DIRECTORY_INFORMATION => l(80, true, false, Some(72)),
        FILE_BOTH_DIRECTORY_INFORMATION => l(94, true, true, None),
        FILE_ID_BOTH_DIRECTORY_INFORMATION => l(104, true, true, Some(96)),
        FILE_NAMES_INFORMATION => {
            EntryLayout { name_at: 12, names_only: true, ea_size: false, short_name: false, file_id_at: None }
        }
        other => {
            return Err(WireError::Invalid {
                what: "directory information class",
                why: format!("unsupported class 0x{other:02x}"),
            })
        }
    })
}

/// Parses a directory information buffer of one of the `FILE_*_INFORMATION`
/// classes above (the lead uses FILE_ID_BOTH_DIRECTORY_INFORMATION and
/// FILE_ID_FULL_DIRECTORY_INFORMATION). Entries are chained by NextEntryOffset;
/// one that does not move past the current entry, is not a multiple of 8, or
/// points outside the buffer is an error.
pub fn parse_directory_entries(info_class: u8, buffer: &[u8]) -> Result<Vec<DirectoryEntry>, WireError> {
    let layout = layout(info_class)?;
    let mut entries = Vec::new();
    let mut pos = 0usize;
    while pos < buffer.len() {
        let entry = Reader::at(buffer, pos)?;
        // Every entry must hold its whole fixed part.
        entry.slice_at(pos, layout.name_at, "directory entry")?;
        let mut r = entry.clone();
        let next = r.u32("directory entry next offset")? as usize;
        let mut e = DirectoryEntry { file_index: r.u32("directory entry file index")?, ..Default::default() };
        let name_len = if layout.names_only {
            r.u32("directory entry name length")? as usize
        } else {
            e.creation_time = r.u64("directory entry creation time")?;
            e.last_access_time = r.u64("directory entry last access time")?;
            e.last_write_time = r.u64("directory entry last write time")?;
            e.change_time = r.u64("directory entry change time")?;
            e.end_of_file = r.u64("directory entry end of file")?;
            e.allocation_size = r.u64("directory entry allocation size")?;
            e.file_attributes = r.u32("directory entry attributes")?;
            let name_len = r.u32("directory entry name length")? as usize;
            if layout.ea_size {
                e.ea_size = r.u32("directory entry ea size")?;
            }
            name_len
        };
        if layout.short_name {
            let short_len = r.u8("directory entry short name length")? as usize;
            if short_len > SHORT_NAME_MAX {
                return Err(WireError::Invalid {
                    what: "directory entry short name",
                    why: format!("length {short_len} exceeds {SHORT_NAME_MAX}"),
                });
            }
            let short = entry.slice_at(pos + SHORT_NAME_AT, short_len, "directory entry short name")?;
            e.short_name = from_utf16le(short, "directory entry short name")?;
        }
        if let Some(at) = layout.file_id_at {
            r.seek(pos + at, "directory entry file id")?;
            e.file_id = r.u64("directory entry file id")?;
        }
        // The entry ends at the next one, or at the buffer end for the last.
        let end = if next == 0 {
            buffer.len()
        } else {
            if !next.is_multiple_of(8) {
                return Err(WireError::Invalid {
                    what: "directory entry next offset",
                    why: format!("{next} is not a multiple of 8"),
                });
            }
            match pos.checked_add(next) {
                Some(end) if end < buffer.len() => end,
                _ => {
                    return Err(WireError::BadOffset {
                        what: "directory entry next offset",
                        offset: pos.saturating_add(next),
                        len: 0,
                        buf: buffer.len(),
                    })
                }
            }
        };
        let name_start = pos + layout.name_at;
        let name_end = name_start.checked_add(name_len).filter(|&name_end| name_end <= end);
        let Some(name_end) = name_end else {
            return Err(WireError::BadOffset {
                what: "directory entry name",
                offset: name_start,
                len: name_len,
                buf: end,
            });
        };
        e.name = from_utf16le(&buffer[name_start..name_end], "directory entry name")?;
        entries.push(e);
        if next == 0 {
            break;
        }
        pos = end;
    }
    Ok(entries)
}

/// Encodes entries as a server would (8-aligned, NextEntryOffset chain), for
/// tests and test servers. Short names longer than 12 UTF-16 units are cut;
/// fields the class does not carry are dropped.
pub fn encode_directory_entries(info_class: u8, entries: &[DirectoryEntry]) -> Vec<u8> {
    // An unknown class has no layout to encode into: produce an empty buffer,
    // which the parser reads back as no entries.
    let Ok(layout) = layout(info_class) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let start = out.len();
        let name = utf16le(&e.name);
        out.put_u32(0); // NextEntryOffset, patched below
        out.put_u32(e.file_index);
        if layout.names_only {
            out.put_u32(name.len() as u32);
        } else {
            out.put_u64(e.creation_time);
            out.put_u64(e.last_access_time);
            out.put_u64(e.last_write_time);
            out.put_u64(e.change_time);
            out.put_u64(e.end_of_file);
            out.put_u64(e.allocation_size);
            out.put_u32(e.file_attributes);
            out.put_u32(name.len() as u32);
            if layout.ea_size {
                out.put_u32(e.ea_size);
            }
        }
        if layout.short_name {
            let mut short = Vec::new();
            for c in e.short_name.chars() {
                let mut units = [0u16; 2];
                let encoded = c.encode_utf16(&mut units);
                if short.len() + encoded.len() * 2 > SHORT_NAME_MAX {
                    break;
                }
                for u in encoded.iter() {
                    short.put_u16(*u);
                }
            }
            out.put_u8(short.len() as u8);
            out.put_u8(0); // Reserved1
            out.put_bytes(&short);
            out.put_zeros(SHORT_NAME_MAX - short.len());
        }
        if let Some(at) = layout.file_id_at {
            // Reserved bytes up to the FileId.
            out.put_zeros(start + at - out.len());
            out.put_u64(e.file_id);
        }
        debug_assert_eq!(out.len() - start, layout.name_at);
        out.put_bytes(&name);
        if i + 1 < entries.len() {
            out.align_to(8);
            let next = (out.len() - start) as u32;
            out.patch_u32(start, next);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Command, Header};

    fn header() -> Vec<u8> {
        let mut msg = Vec::new();
        Header::new(Command::QueryDirectory).encode(&mut msg);
        msg
    }

    fn sample_entries() -> Vec<DirectoryEntry> {
        vec![
            DirectoryEntry {
                name: ".".into(),
                file_index: 0,
                creation_time: 1,
                last_access_time: 2,
                last_write_time: 3,
                change_time: 4,
                end_of_file: 0,
                allocation_size: 0,
                file_attributes: 0x10,
                ea_size: 0,
                file_id: 7,
                short_name: String::new(),
            },
            DirectoryEntry {
                name: "a longer näme 😀.txt".into(),
                file_index: 9,
                creation_time: 133_000_000_000_000_000,
                last_access_time: 133_000_000_000_000_001,
                last_write_time: 133_000_000_000_000_002,
                change_time: 133_000_000_000_000_003,
                end_of_file: 12345,
                allocation_size: 16384,
                file_attributes: 0x20,
                ea_size: 3,
                file_id: 0xdead_beef_0000_0001,
                short_name: "ALONGE~1.TXT".into(),
            },
            DirectoryEntry { name: "z".into(), file_id: 8, ..Default::default() },
        ]
    }

    /// What survives encoding in a class that lacks some fields.
    fn reduced(info_class: u8, e: &DirectoryEntry) -> DirectoryEntry {
        let l = layout(info_class).unwrap();
        let mut e = e.clone();
        if l.names_only {
            e = DirectoryEntry { name: e.name, file_index: e.file_index, ..Default::default() };
        }
        if !l.ea_size {
            e.ea_size = 0;
        }
        if !l.short_name {
            e.short_name.clear();
        }
        if l.file_id_at.is_none() {
            e.file_id = 0;
        }
        e
    }

    #[test]
    fn request_round_trip() {
        let req = QueryDirectoryRequest {
            info_class: FILE_ID_BOTH_DIRECTORY_INFORMATION,
            flags: RESTART_SCANS,
            file_index: 0,
            file_id: FileId { persistent: 1, volatile: 2 },
            pattern: "*".into(),
            output_buffer_length: 65536,
        };
        let mut msg = header();
        req.encode(&mut msg);
        assert_eq!(&msg[64 + 24..64 + 26], &96u16.to_le_bytes());
        assert_eq!(QueryDirectoryRequest::decode(&msg).unwrap(), req);
        for cut in 0..msg.len() {
            assert!(QueryDirectoryRequest::decode(&msg[..cut]).is_err(), "prefix {cut}");
        }
        let empty = QueryDirectoryRequest { pattern: String::new(), ..req };
        let mut msg = header();
        empty.encode(&mut msg);
        assert_eq!(msg.len(), 64 + 33);
        assert_eq!(QueryDirectoryRequest::decode(&msg).unwrap(), empty);
    }

    #[test]
    fn response_round_trip_and_bad_offsets() {
        let resp = QueryDirectoryResponse {
            buffer: encode_directory_entries(FILE_ID_FULL_DIRECTORY_INFORMATION, &sample_entries()),
        };
        let mut msg = header();
        resp.encode(&mut msg);
        assert_eq!(QueryDirectoryResponse::decode(&msg).unwrap(), resp);
        assert!(QueryDirectoryResponse::decode(&msg[..msg.len() - 1]).is_err());
        let mut inside = msg.clone();
        inside[66..68].copy_from_slice(&8u16.to_le_bytes());
        assert!(matches!(QueryDirectoryResponse::decode(&inside), Err(WireError::BadOffset { .. })));
        let mut long = msg.clone();
        long[68..72].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(QueryDirectoryResponse::decode(&long), Err(WireError::BadOffset { .. })));

        let mut empty = header();
        QueryDirectoryResponse::default().encode(&mut empty);
        assert_eq!(QueryDirectoryResponse::decode(&empty).unwrap(), QueryDirectoryResponse::default());
    }

    #[test]
    fn entries_round_trip_in_every_class() {
        for class in [
            FILE_DIRECTORY_INFORMATION,
            FILE_FULL_DIRECTORY_INFORMATION,
            FILE_BOTH_DIRECTORY_INFORMATION,
            FILE_NAMES_INFORMATION,
            FILE_ID_BOTH_DIRECTORY_INFORMATION,
            FILE_ID_FULL_DIRECTORY_INFORMATION,
        ] {
            let entries = sample_entries();
            let buf = encode_directory_entries(class, &entries);
            let parsed = parse_directory_entries(class, &buf).unwrap();
            let expected: Vec<_> = entries.iter().map(|e| reduced(class, e)).collect();
            assert_eq!(parsed, expected, "class 0x{class:02x}");
            for cut in 1..buf.len() {
                assert!(parse_directory_entries(class, &buf[..cut]).is_err(), "class {class} cut {cut}");
            }
        }
        assert!(parse_directory_entries(FILE_ID_BOTH_DIRECTORY_INFORMATION, &[]).unwrap().is_empty());
        assert!(parse_directory_entries(0x7F, &[0; 200]).is_err());
    }

    /// Two FILE_ID_BOTH_DIRECTORY_INFORMATION entries laid out per MS-FSCC 2.4.17.
    fn hand_built_id_both() -> Vec<u8> {
        hex::decode(concat!(
            // "." : NextEntryOffset 112, FileIndex 0
            "70000000",
            "00000000",
            "0100000000000000",                                 // CreationTime
            "0200000000000000",                                 // LastAccessTime
            "0300000000000000",                                 // LastWriteTime
            "0400000000000000",                                 // ChangeTime
            "0000000000000000",                                 // EndOfFile
            "0000000000000000",                                 // AllocationSize
            "10000000",                                         // FileAttributes: DIRECTORY
            "02000000",                                         // FileNameLength
            "00000000",                                         // EaSize
            "00",                                               // ShortNameLength
            "00",                                               // Reserved1
            "000000000000000000000000000000000000000000000000", // ShortName
            "0000",                                             // Reserved2
            "0700000000000000",                                 // FileId
            "2e00",                                             // "."
            "000000000000",                                     // padding to 8
            // "a.txt": last entry
            "00000000",
            "05000000",
            "00e0b5c1d6a5d901",
            "00e0b5c1d6a5d901",
            "00e0b5c1d6a5d901",
            "00e0b5c1d6a5d901",
            "0b00000000000000", // EndOfFile 11
            "0010000000000000", // AllocationSize 4096
            "20000000",         // ARCHIVE
            "0a000000",         // FileNameLength 10
            "00000000",
            "0a", // ShortNameLength 10
            "00",
            "41002e0054005800540000000000000000000000000000000000", // "A.TXT" + zeros
            "efbeadde00000000",                                     // FileId
            "61002e00740078007400",                                 // "a.txt"
        ))
        .unwrap()
    }

    #[test]
    fn id_both_entries_from_hand_built_bytes() {
        let buf = hand_built_id_both();
        let entries = parse_directory_entries(FILE_ID_BOTH_DIRECTORY_INFORMATION, &buf).unwrap();
        let t = 0x01d9_a5d6_c1b5_e000;
        assert_eq!(
            entries,
            vec![
                DirectoryEntry {
                    name: ".".into(),
                    creation_time: 1,
                    last_access_time: 2,
                    last_write_time: 3,
                    change_time: 4,
                    file_attributes: 0x10,
                    file_id: 7,
                    ..Default::default()
                },
                DirectoryEntry {
                    name: "a.txt".into(),
                    file_index: 5,
                    creation_time: t,
                    last_access_time: t,
                    last_write_time: t,
                    change_time: t,
                    end_of_file: 11,
                    allocation_size: 4096,
                    file_attributes: 0x20,
                    ea_size: 0,
                    file_id: 0xdead_beef,
                    short_name: "A.TXT".into(),
                },
            ]
        );
        assert_eq!(encode_directory_entries(FILE_ID_BOTH_DIRECTORY_INFORMATION, &entries), buf);
    }

    #[test]
    fn rejects_bad_next_entry_offsets() {
        let buf = hand_built_id_both();
        let class = FILE_ID_BOTH_DIRECTORY_INFORMATION;
        let with_next = |next: u32| {
            let mut b = buf.clone();
            b[0..4].copy_from_slice(&next.to_le_bytes());
            b
        };
        // Pointing back into the entry itself: would loop over its own bytes.
        assert!(parse_directory_entries(class, &with_next(8)).is_err());
        assert!(parse_directory_entries(class, &with_next(104)).is_err());
        // Unaligned.
        assert!(matches!(parse_directory_entries(class, &with_next(113)), Err(WireError::Invalid { .. })));
        // Past the buffer, or exactly at its end.
        assert!(matches!(parse_directory_entries(class, &with_next(4096)), Err(WireError::BadOffset { .. })));
        assert!(parse_directory_entries(class, &with_next(buf.len() as u32 & !7)).is_err());
        assert!(parse_directory_entries(class, &with_next(0xFFFF_FFF8)).is_err());
        // Name length beyond the entry or the buffer.
        let mut b = buf.clone();
        b[60..64].copy_from_slice(&20u32.to_le_bytes());
        assert!(matches!(parse_directory_entries(class, &b), Err(WireError::BadOffset { .. })));
        let mut b = buf.clone();
        b[112 + 60..112 + 64].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_directory_entries(class, &b).is_err());
        // Oversized short name.
        let mut b = buf.clone();
        b[68] = 26;
        assert!(matches!(parse_directory_entries(class, &b), Err(WireError::Invalid { .. })));
        // Odd name length.
        let mut b = buf.clone();
        b[112 + 60] = 9;
        assert!(parse_directory_entries(class, &b).is_err());
    }

    #[test]
    fn encoder_cuts_long_short_names() {
        let e = DirectoryEntry { name: "x".into(), short_name: "ABCDEFGHIJKLMN".into(), ..Default::default() };
        let buf = encode_directory_entries(FILE_BOTH_DIRECTORY_INFORMATION, &[e]);
        let parsed = parse_directory_entries(FILE_BOTH_DIRECTORY_INFORMATION, &buf).unwrap();
        assert_eq!(parsed[0].short_name, "ABCDEFGHIJKL");
        assert!(encode_directory_entries(0x7F, &sample_entries()).is_empty());
    }
}
