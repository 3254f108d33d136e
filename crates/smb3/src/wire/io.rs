//! CLOSE, FLUSH, READ, WRITE and LOCK bodies (MS-SMB2 2.2.15-2.2.22, 2.2.26-2.2.27).

use super::cursor::{Reader, Writer};
use super::header::HEADER_LEN;
use super::{expect_structure_size, FileId, WireError};

/// Locates a variable buffer given by an (offset, length) pair of a body whose
/// fixed part ends at `fixed_end` (header-relative). A non-empty buffer may not
/// start inside the header or the fixed part: a server pointing it there is
/// either broken or trying to make us read our own fields as data.
pub(crate) fn body_buffer<'a>(
    r: &Reader<'a>,
    offset: usize,
    len: usize,
    fixed_end: usize,
    what: &'static str,
) -> Result<&'a [u8], WireError> {
    if len == 0 {
        return Ok(&[]);
    }
    if offset < fixed_end {
        return Err(WireError::BadOffset { what, offset, len, buf: r.buffer().len() });
    }
    r.slice_at(offset, len, what)
}

/// Bodies with an odd StructureSize end in a variable Buffer that must hold at
/// least one byte even when empty (MS-SMB2 2.2; Samba rejects requests without it).
pub(crate) fn pad_empty_buffer(msg: &mut Vec<u8>, buffer_start: usize) {
    if msg.len() == buffer_start {
        msg.put_u8(0);
    }
}

/// Close flag: return the file's attributes in the response (2.2.15).
pub const CLOSE_FLAG_POSTQUERY_ATTRIB: u16 = 0x0001;

/// READ request flags (2.2.19).
pub const READFLAG_READ_UNBUFFERED: u8 = 0x01;
pub const READFLAG_REQUEST_COMPRESSED: u8 = 0x02;

/// WRITE request flags (2.2.21).
pub const WRITEFLAG_WRITE_THROUGH: u32 = 0x0000_0001;
pub const WRITEFLAG_WRITE_UNBUFFERED: u32 = 0x0000_0002;

/// LOCK element flags (2.2.26.1).
pub mod lock_flags {
    pub const SHARED: u32 = 0x0000_0001;
    pub const EXCLUSIVE: u32 = 0x0000_0002;
    pub const UNLOCK: u32 = 0x0000_0004;
    pub const FAIL_IMMEDIATELY: u32 = 0x0000_0010;
}

/// CLOSE request (2.2.15).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseRequest {
    /// `CLOSE_FLAG_POSTQUERY_ATTRIB` or 0.
    pub flags: u16,
    pub file_id: FileId,
}

impl CloseRequest {
    const STRUCTURE_SIZE: u16 = 24;

    pub fn encode(&self, msg: &mut Vec<u8>) {
        msg.put_u16(Self::STRUCTURE_SIZE);
        msg.put_u16(self.flags);
        msg.put_u32(0); // Reserved
        self.file_id.encode(msg);
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, Self::STRUCTURE_SIZE, "close request")?;
        let flags = r.u16("close request flags")?;
        r.skip(4, "close request reserved")?;
        let file_id = FileId::decode(&mut r)?;
        Ok(CloseRequest { flags, file_id })
    }
}

/// CLOSE response (2.2.16). The attribute fields are zero unless the request
/// asked for them with `CLOSE_FLAG_POSTQUERY_ATTRIB`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloseResponse {
    pub flags: u16,
    pub creation_time: u64,
    pub last_access_time: u64,
    pub last_write_time: u64,
    pub change_time: u64,
    pub allocation_size: u64,
    pub end_of_file: u64,
    pub file_attributes: u32,
}

impl CloseResponse {
    const STRUCTURE_SIZE: u16 = 60;

    pub fn encode(&self, msg: &mut Vec<u8>) {
        msg.put_u16(Self::STRUCTURE_SIZE);
        msg.put_u16(self.flags);
        msg.put_u32(0); // Reserved
        msg.put_u64(self.creation_time);
        msg.put_u64(self.last_access_time);
        msg.put_u64(self.last_write_time);
        msg.put_u64(self.change_time);
        msg.put_u64(self.allocation_size);
        msg.put_u64(self.end_of_file);
        msg.put_u32(self.file_attributes);
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, Self::STRUCTURE_SIZE, "close response")?;
        let flags = r.u16("close response flags")?;
        r.skip(4, "close response reserved")?;
        Ok(CloseResponse {
            flags,
            creation_time: r.u64("close creation time")?,
            last_access_time: r.u64("close last access time")?,
            last_write_time: r.u64("close last write time")?,
            change_time: r.u64("close change time")?,
            allocation_size: r.u64("close allocation size")?,
            end_of_file: r.u64("close end of file")?,
            file_attributes: r.u32("close file attributes")?,
        })
    }
}

/// FLUSH request (2.2.17).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlushRequest {
    pub file_id: FileId,
}

impl FlushRequest {
    const STRUCTURE_SIZE: u16 = 24;

    pub fn encode(&self, msg: &mut Vec<u8>) {
        msg.put_u16(Self::STRUCTURE_SIZE);
        msg.put_u16(0); // Reserved1
        msg.put_u32(0); // Reserved2
        self.file_id.encode(msg);
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, Self::STRUCTURE_SIZE, "flush request")?;
        r.skip(6, "flush request reserved")?;
        Ok(FlushRequest { file_id: FileId::decode(&mut r)? })
    }
}

/// FLUSH response (2.2.18): carries nothing but its size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushResponse;

impl FlushResponse {
    const STRUCTURE_SIZE: u16 = 4;

    pub fn encode(&self, msg: &mut Vec<u8>) {
        msg.put_u16(Self::STRUCTURE_SIZE);
        msg.put_u16(0); // Reserved
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, Self::STRUCTURE_SIZE, "flush response")?;
        r.skip(2, "flush response reserved")?;
        Ok(FlushResponse)
    }
}

/// READ request (2.2.19) without RDMA: Channel is NONE and there is no
/// read channel info.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    /// Where the server should place the data in its response, header-relative
    /// (0x50 puts it right after the response's fixed part).
    pub padding: u8,
    /// `READFLAG_*`.
    pub flags: u8,
    pub length: u32,
    pub offset: u64,
    pub file_id: FileId,
    pub minimum_count: u32,
    pub remaining_bytes: u32,
}

impl ReadRequest {
    const STRUCTURE_SIZE: u16 = 49;
    const FIXED_LEN: usize = 48;

    pub fn encode(&self, msg: &mut Vec<u8>) {
        let body = msg.len();
        msg.put_u16(Self::STRUCTURE_SIZE);
        msg.put_u8(self.padding);
        msg.put_u8(self.flags);
        msg.put_u32(self.length);
        msg.put_u64(self.offset);
        self.file_id.encode(msg);
        msg.put_u32(self.minimum_count);
        msg.put_u32(0); // Channel: SMB2_CHANNEL_NONE
        msg.put_u32(self.remaining_bytes);
        msg.put_u16(0); // ReadChannelInfoOffset
        msg.put_u16(0); // ReadChannelInfoLength
        pad_empty_buffer(msg, body + Self::FIXED_LEN);
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, Self::STRUCTURE_SIZE, "read request")?;
        let padding = r.u8("read request padding")?;
        let flags = r.u8("read request flags")?;
        let length = r.u32("read request length")?;
        let offset = r.u64("read request offset")?;
        let file_id = FileId::decode(&mut r)?;
        let minimum_count = r.u32("read request minimum count")?;
        r.skip(4, "read request channel")?;
        let remaining_bytes = r.u32("read request remaining bytes")?;
        r.skip(4, "read request channel info")?;
        Ok(ReadRequest { padding, flags, length, offset, file_id, minimum_count, remaining_bytes })
    }
}

/// READ response (2.2.20).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadResponse {
    pub data_remaining: u32,
    pub data: Vec<u8>,
}

impl ReadResponse {
    const STRUCTURE_SIZE: u16 = 17;
    const FIXED_LEN: usize = 16;

    pub fn encode(&self, msg: &mut Vec<u8>) {
        let body = msg.len();
        let data_offset = body + Self::FIXED_LEN;
        msg.put_u16(Self::STRUCTURE_SIZE);
        // DataOffset is a single byte: the data always follows the fixed part.
        msg.put_u8(data_offset as u8);
        msg.put_u8(0); // Reserved
        msg.put_u32(self.data.len() as u32);
        msg.put_u32(self.data_remaining);
        msg.put_u32(0); // Flags (3.1.1) / Reserved2
        msg.put_bytes(&self.data);
        pad_empty_buffer(msg, data_offset);
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let (data_remaining, data) = Self::parse(msg)?;
        Ok(ReadResponse { data_remaining, data: data.to_vec() })
    }

    /// DataRemaining and the data, borrowed from `msg`: the client slices its receive buffer instead of
    /// copying every byte it reads.
    pub fn parse(msg: &[u8]) -> Result<(u32, &[u8]), WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, Self::STRUCTURE_SIZE, "read response")?;
        let data_offset = r.u8("read response data offset")? as usize;
        r.skip(1, "read response reserved")?;
        let data_length = r.u32("read response data length")? as usize;
        let data_remaining = r.u32("read response data remaining")?;
        r.skip(4, "read response flags")?;
        let fixed_end = HEADER_LEN + Self::FIXED_LEN;
        let data = body_buffer(&r, data_offset, data_length, fixed_end, "read response data")?;
        Ok((data_remaining, data))
    }
}

/// WRITE request (2.2.21) without RDMA; the data follows the fixed part, so
/// DataOffset is always 64 + 48.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteRequest {
    pub offset: u64,
    pub file_id: FileId,
    /// `WRITEFLAG_*`.
    pub flags: u32,
    pub data: Vec<u8>,
}

impl WriteRequest {
    const STRUCTURE_SIZE: u16 = 49;
    const FIXED_LEN: usize = 48;

    pub fn encode(&self, msg: &mut Vec<u8>) {
        Self::encode_parts(self.offset, self.file_id, self.flags, &self.data, msg);
    }

    /// Encodes header-relative without copying twice: appends the fixed part
    /// then the data, so the caller can write from a borrowed slice.
    pub fn encode_parts(offset: u64, file_id: FileId, flags: u32, data: &[u8], msg: &mut Vec<u8>) {
        let body = msg.len();
        let data_offset = body + Self::FIXED_LEN;
        msg.reserve(Self::FIXED_LEN + data.len().max(1));
        msg.put_u16(Self::STRUCTURE_SIZE);
        msg.put_u16(data_offset as u16);
        msg.put_u32(data.len() as u32);
        msg.put_u64(offset);
        file_id.encode(msg);
        msg.put_u32(0); // Channel: SMB2_CHANNEL_NONE
        msg.put_u32(0); // RemainingBytes
        msg.put_u16(0); // WriteChannelInfoOffset
        msg.put_u16(0); // WriteChannelInfoLength
        msg.put_u32(flags);
        msg.put_bytes(data);
        pad_empty_buffer(msg, data_offset);
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, Self::STRUCTURE_SIZE, "write request")?;
        let data_offset = r.u16("write request data offset")? as usize;
        let length = r.u32("write request length")? as usize;
        let offset = r.u64("write request offset")?;
        let file_id = FileId::decode(&mut r)?;
        r.skip(8, "write request channel and remaining bytes")?;
        r.skip(4, "write request channel info")?;
        let flags = r.u32("write request flags")?;
        let fixed_end = HEADER_LEN + Self::FIXED_LEN;
        let data = body_buffer(&r, data_offset, length, fixed_end, "write request data")?;
        Ok(WriteRequest { offset, file_id, flags, data: data.to_vec() })
    }
}

/// WRITE response (2.2.22).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteResponse {
    /// Bytes written.
    pub count: u32,
    pub remaining: u32,
}

impl WriteResponse {
    const STRUCTURE_SIZE: u16 = 17;
    const FIXED_LEN: usize = 16;

    pub fn encode(&self, msg: &mut Vec<u8>) {
        let body = msg.len();
        msg.put_u16(Self::STRUCTURE_SIZE);
        msg.put_u16(0); // Reserved
        msg.put_u32(self.count);
        msg.put_u32(self.remaining);
        msg.put_u16(0); // WriteChannelInfoOffset
        msg.put_u16(0); // WriteChannelInfoLength
        pad_empty_buffer(msg, body + Self::FIXED_LEN);
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, Self::STRUCTURE_SIZE, "write response")?;
        r.skip(2, "write response reserved")?;
        let count = r.u32("write response count")?;
        let remaining = r.u32("write response remaining")?;
        r.skip(4, "write response channel info")?;
        Ok(WriteResponse { count, remaining })
    }
}

/// One byte range of a LOCK request (2.2.26.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockElement {
    pub offset: u64,
    pub length: u64,
    /// `lock_flags::*`.
    pub flags: u32,
}

/// LOCK request (2.2.26). The protocol requires at least one element; an
/// empty `locks` encodes a request the server will reject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockRequest {
    /// LockSequenceNumber (low 4 bits) and LockSequenceIndex (high 28 bits).
    pub lock_sequence: u32,
    pub file_id: FileId,
    pub locks: Vec<LockElement>,
}

impl LockRequest {
    const STRUCTURE_SIZE: u16 = 48;
    const ELEMENT_LEN: usize = 24;

    pub fn encode(&self, msg: &mut Vec<u8>) {
        msg.put_u16(Self::STRUCTURE_SIZE);
        msg.put_u16(self.locks.len() as u16);
        msg.put_u32(self.lock_sequence);
        self.file_id.encode(msg);
        for lock in &self.locks {
            msg.put_u64(lock.offset);
            msg.put_u64(lock.length);
            msg.put_u32(lock.flags);
            msg.put_u32(0); // Reserved
        }
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, Self::STRUCTURE_SIZE, "lock request")?;
        let count = r.u16("lock count")? as usize;
        if count == 0 {
            return Err(WireError::Invalid { what: "lock request", why: "lock count is 0".into() });
        }
        let lock_sequence = r.u32("lock sequence")?;
        let file_id = FileId::decode(&mut r)?;
        // Check the count against the bytes present before allocating for it.
        let need = count * Self::ELEMENT_LEN;
        if r.remaining() < need {
            return Err(WireError::Truncated { what: "lock elements", need, have: r.remaining() });
        }
        let mut locks = Vec::with_capacity(count);
        for _ in 0..count {
            let offset = r.u64("lock offset")?;
            let length = r.u64("lock length")?;
            let flags = r.u32("lock flags")?;
            r.skip(4, "lock reserved")?;
            locks.push(LockElement { offset, length, flags });
        }
        Ok(LockRequest { lock_sequence, file_id, locks })
    }
}

/// LOCK response (2.2.27): carries nothing but its size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockResponse;

impl LockResponse {
    const STRUCTURE_SIZE: u16 = 4;

    pub fn encode(&self, msg: &mut Vec<u8>) {
        msg.put_u16(Self::STRUCTURE_SIZE);
        msg.put_u16(0); // Reserved
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, Self::STRUCTURE_SIZE, "lock response")?;
        r.skip(2, "lock response reserved")?;
        Ok(LockResponse)
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
        FileId { persistent: 0x0102_0304_0506_0708, volatile: 0x1112_1314_1516_1718 }
    }

    /// Every strict prefix of a valid message must fail to decode, not panic.
    fn assert_prefixes_fail<T: std::fmt::Debug>(msg: &[u8], decode: fn(&[u8]) -> Result<T, WireError>) {
        for cut in 0..msg.len() {
            assert!(decode(&msg[..cut]).is_err(), "prefix of {cut} bytes decoded");
        }
    }

    #[test]
    fn close_round_trip() {
        let req = CloseRequest { flags: CLOSE_FLAG_POSTQUERY_ATTRIB, file_id: fid() };
        let mut msg = header(Command::Close);
        req.encode(&mut msg);
        assert_eq!(msg.len(), 64 + 24);
        assert_eq!(CloseRequest::decode(&msg).unwrap(), req);
        assert_prefixes_fail(&msg, CloseRequest::decode);

        let resp = CloseResponse {
            flags: CLOSE_FLAG_POSTQUERY_ATTRIB,
            creation_time: 1,
            last_access_time: 2,
            last_write_time: 3,
            change_time: 4,
            allocation_size: 4096,
            end_of_file: 10,
            file_attributes: 0x20,
        };
        let mut msg = header(Command::Close);
        resp.encode(&mut msg);
        assert_eq!(msg.len(), 64 + 60);
        assert_eq!(CloseResponse::decode(&msg).unwrap(), resp);
        assert_prefixes_fail(&msg, CloseResponse::decode);
    }

    #[test]
    fn flush_and_lock_responses_round_trip() {
        let mut msg = header(Command::Flush);
        FlushRequest { file_id: fid() }.encode(&mut msg);
        assert_eq!(FlushRequest::decode(&msg).unwrap(), FlushRequest { file_id: fid() });
        assert_prefixes_fail(&msg, FlushRequest::decode);

        let mut msg = header(Command::Flush);
        FlushResponse.encode(&mut msg);
        assert_eq!(&msg[64..], &[4, 0, 0, 0]);
        assert_eq!(FlushResponse::decode(&msg).unwrap(), FlushResponse);

        let mut msg = header(Command::Lock);
        LockResponse.encode(&mut msg);
        assert_eq!(LockResponse::decode(&msg).unwrap(), LockResponse);
        msg[64] = 5;
        assert!(LockResponse::decode(&msg).is_err());
    }

    #[test]
    fn read_request_round_trip_has_one_byte_buffer() {
        let req = ReadRequest {
            padding: 0x50,
            flags: 0,
            length: 65536,
            offset: 1 << 33,
            file_id: fid(),
            minimum_count: 1,
            remaining_bytes: 0,
        };
        let mut msg = header(Command::Read);
        req.encode(&mut msg);
        assert_eq!(msg.len(), 64 + 49);
        assert_eq!(ReadRequest::decode(&msg).unwrap(), req);
        assert_prefixes_fail(&msg[..64 + 48], ReadRequest::decode);
    }

    #[test]
    fn read_response_from_hand_built_bytes() {
        // StructureSize 17, DataOffset 0x50, Reserved, DataLength 5,
        // DataRemaining 0, Reserved2, then "hello".
        let mut msg = header(Command::Read);
        msg.extend_from_slice(&[
            0x11, 0x00, 0x50, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, b'h', b'e',
            b'l', b'l', b'o',
        ]);
        let resp = ReadResponse::decode(&msg).unwrap();
        assert_eq!(resp, ReadResponse { data_remaining: 0, data: b"hello".to_vec() });

        let mut again = header(Command::Read);
        resp.encode(&mut again);
        assert_eq!(again, msg);
    }

    #[test]
    fn read_response_rejects_bad_data_offsets() {
        let resp = ReadResponse { data_remaining: 7, data: vec![0xAB; 32] };
        let mut msg = header(Command::Read);
        resp.encode(&mut msg);
        assert_eq!(ReadResponse::decode(&msg).unwrap(), resp);

        // DataOffset pointing inside the header.
        let mut inside = msg.clone();
        inside[64 + 2] = 0x10;
        assert!(matches!(ReadResponse::decode(&inside), Err(WireError::BadOffset { .. })));
        // DataOffset pointing inside the fixed body.
        let mut inside_body = msg.clone();
        inside_body[64 + 2] = 0x4F;
        assert!(ReadResponse::decode(&inside_body).is_err());
        // DataLength running past the end.
        let mut long = msg.clone();
        long[64 + 4] = 33;
        assert!(matches!(ReadResponse::decode(&long), Err(WireError::BadOffset { .. })));
        // Truncated data.
        assert!(ReadResponse::decode(&msg[..msg.len() - 1]).is_err());
        assert_prefixes_fail(&msg[..64 + 16], ReadResponse::decode);

        // Empty data with any offset is fine.
        let mut empty = header(Command::Read);
        ReadResponse::default().encode(&mut empty);
        assert_eq!(empty.len(), 64 + 17);
        assert_eq!(ReadResponse::decode(&empty).unwrap(), ReadResponse::default());
    }

    #[test]
    fn write_request_layout_and_round_trip() {
        let data = b"some file contents".to_vec();
        let mut msg = header(Command::Write);
        WriteRequest::encode_parts(4096, fid(), WRITEFLAG_WRITE_THROUGH, &data, &mut msg);
        assert_eq!(&msg[64..66], &49u16.to_le_bytes());
        assert_eq!(&msg[66..68], &112u16.to_le_bytes());
        assert_eq!(&msg[68..72], &(data.len() as u32).to_le_bytes());
        assert_eq!(&msg[112..], &data[..]);
        let decoded = WriteRequest::decode(&msg).unwrap();
        assert_eq!(
            decoded,
            WriteRequest { offset: 4096, file_id: fid(), flags: WRITEFLAG_WRITE_THROUGH, data: data.clone() }
        );
        let mut via_struct = header(Command::Write);
        decoded.encode(&mut via_struct);
        assert_eq!(via_struct, msg);

        let mut inside = msg.clone();
        inside[66] = 100;
        assert!(WriteRequest::decode(&inside).is_err());
        assert!(WriteRequest::decode(&msg[..msg.len() - 1]).is_err());
        assert_prefixes_fail(&msg[..112], WriteRequest::decode);

        let mut empty = header(Command::Write);
        WriteRequest::encode_parts(0, fid(), 0, &[], &mut empty);
        assert_eq!(empty.len(), 64 + 49);
        assert!(WriteRequest::decode(&empty).unwrap().data.is_empty());
    }

    #[test]
    fn write_response_round_trip() {
        let resp = WriteResponse { count: 65536, remaining: 0 };
        let mut msg = header(Command::Write);
        resp.encode(&mut msg);
        assert_eq!(WriteResponse::decode(&msg).unwrap(), resp);
        assert_prefixes_fail(&msg[..64 + 16], WriteResponse::decode);
    }

    #[test]
    fn lock_request_round_trip_and_bounds() {
        let req = LockRequest {
            lock_sequence: 0x11,
            file_id: fid(),
            locks: vec![
                LockElement { offset: 0, length: 100, flags: lock_flags::EXCLUSIVE | lock_flags::FAIL_IMMEDIATELY },
                LockElement { offset: 200, length: 1, flags: lock_flags::UNLOCK },
            ],
        };
        let mut msg = header(Command::Lock);
        req.encode(&mut msg);
        assert_eq!(msg.len(), 64 + 24 + 48);
        assert_eq!(LockRequest::decode(&msg).unwrap(), req);
        assert_prefixes_fail(&msg, LockRequest::decode);

        // A count far larger than the bytes present fails before allocating.
        let mut lying = msg.clone();
        lying[66..68].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(LockRequest::decode(&lying), Err(WireError::Truncated { .. })));
        let mut zero = msg.clone();
        zero[66..68].copy_from_slice(&0u16.to_le_bytes());
        assert!(matches!(LockRequest::decode(&zero), Err(WireError::Invalid { .. })));
    }
}
