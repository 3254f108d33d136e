//! SMB2 IOCTL request and response (MS-SMB2 2.2.31, 2.2.32) and the FSCTL
//! payloads we use: validate negotiate, resume key and server-side copy.
//! The FSCTL payloads are plain byte buffers (the IOCTL input/output), so
//! their codecs work on `&[u8]` rather than on a whole message.

use super::cursor::{Reader, Writer};
use super::header::HEADER_LEN;
use super::{expect_structure_size, Dialect, FileId, WireError};

pub const FSCTL_DFS_GET_REFERRALS: u32 = 0x0006_0194;
pub const FSCTL_SRV_REQUEST_RESUME_KEY: u32 = 0x0014_0078;
pub const FSCTL_VALIDATE_NEGOTIATE_INFO: u32 = 0x0014_0204;
pub const FSCTL_SRV_COPYCHUNK: u32 = 0x0014_40F2;
pub const FSCTL_SRV_COPYCHUNK_WRITE: u32 = 0x0014_80F2;

/// IOCTL Flags: the request is an FSCTL (always set for the codes above).
pub const IOCTL_IS_FSCTL: u32 = 0x1;

const REQUEST_STRUCTURE_SIZE: u16 = 57;
const RESPONSE_STRUCTURE_SIZE: u16 = 49;
/// The request buffer starts after the 56-byte fixed body.
const REQUEST_BUFFER_OFFSET: usize = HEADER_LEN + 56;
/// The response buffer starts after the 48-byte fixed body.
const RESPONSE_BUFFER_OFFSET: usize = HEADER_LEN + 48;

/// SMB2 IOCTL request (2.2.31). The request's own output buffer (used by no
/// FSCTL we send) is not modelled: it is encoded empty and ignored on decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoctlRequest {
    pub ctl_code: u32,
    pub file_id: FileId,
    pub input: Vec<u8>,
    pub max_input_response: u32,
    pub max_output_response: u32,
    pub flags: u32,
}

impl IoctlRequest {
    pub fn encode(&self, msg: &mut Vec<u8>) {
        msg.put_u16(REQUEST_STRUCTURE_SIZE);
        msg.put_u16(0); // Reserved
        msg.put_u32(self.ctl_code);
        self.file_id.encode(msg);
        let input_offset = msg.len() + 32;
        // Offsets point at the buffer even when empty, as Windows does; Samba
        // checks a non-zero InputOffset against the buffer start.
        msg.put_u32(input_offset as u32);
        msg.put_u32(self.input.len() as u32);
        msg.put_u32(self.max_input_response);
        msg.put_u32((input_offset + self.input.len()) as u32); // OutputOffset
        msg.put_u32(0); // OutputCount
        msg.put_u32(self.max_output_response);
        msg.put_u32(self.flags);
        msg.put_u32(0); // Reserved2
        msg.put_bytes(&self.input);
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, REQUEST_STRUCTURE_SIZE, "ioctl request")?;
        r.skip(2, "reserved")?;
        let ctl_code = r.u32("ctl code")?;
        let file_id = FileId::decode(&mut r)?;
        let input_offset = r.u32("input offset")? as usize;
        let input_len = r.u32("input count")? as usize;
        let max_input_response = r.u32("max input response")?;
        let output_offset = r.u32("output offset")? as usize;
        let output_len = r.u32("output count")? as usize;
        let max_output_response = r.u32("max output response")?;
        let flags = r.u32("ioctl flags")?;
        r.skip(4, "reserved2")?;
        debug_assert_eq!(r.position(), REQUEST_BUFFER_OFFSET);
        let input = r.slice_at(input_offset, input_len, "ioctl input")?.to_vec();
        r.slice_at(output_offset, output_len, "ioctl request output")?;
        Ok(IoctlRequest { ctl_code, file_id, input, max_input_response, max_output_response, flags })
    }
}

/// SMB2 IOCTL response (2.2.32).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoctlResponse {
    pub ctl_code: u32,
    pub file_id: FileId,
    pub input: Vec<u8>,
    pub output: Vec<u8>,
    pub flags: u32,
}

impl IoctlResponse {
    pub fn encode(&self, msg: &mut Vec<u8>) {
        msg.put_u16(RESPONSE_STRUCTURE_SIZE);
        msg.put_u16(0); // Reserved
        msg.put_u32(self.ctl_code);
        self.file_id.encode(msg);
        let fields = msg.len();
        msg.put_u32(0); // InputOffset
        msg.put_u32(self.input.len() as u32);
        msg.put_u32(0); // OutputOffset
        msg.put_u32(self.output.len() as u32);
        msg.put_u32(self.flags);
        msg.put_u32(0); // Reserved2
        let buffer_start = msg.len();
        if !self.input.is_empty() {
            msg.patch_u32(fields, msg.len() as u32);
            msg.put_bytes(&self.input);
        }
        if !self.output.is_empty() {
            // 2.2.32: output starts 8-byte aligned after the input.
            msg.align_to(8);
            msg.patch_u32(fields + 8, msg.len() as u32);
            msg.put_bytes(&self.output);
        }
        if msg.len() == buffer_start {
            msg.put_u8(0); // the one buffer byte the odd StructureSize promises
        }
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, RESPONSE_STRUCTURE_SIZE, "ioctl response")?;
        r.skip(2, "reserved")?;
        let ctl_code = r.u32("ctl code")?;
        let file_id = FileId::decode(&mut r)?;
        let input_offset = r.u32("input offset")? as usize;
        let input_len = r.u32("input count")? as usize;
        let output_offset = r.u32("output offset")? as usize;
        let output_len = r.u32("output count")? as usize;
        let flags = r.u32("ioctl flags")?;
        r.skip(4, "reserved2")?;
        debug_assert_eq!(r.position(), RESPONSE_BUFFER_OFFSET);
        let input = r.slice_at(input_offset, input_len, "ioctl input")?.to_vec();
        let output = r.slice_at(output_offset, output_len, "ioctl output")?.to_vec();
        Ok(IoctlResponse { ctl_code, file_id, input, output, flags })
    }
}

/// VALIDATE_NEGOTIATE_INFO request payload (2.2.31.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidateNegotiateInfoRequest {
    pub capabilities: u32,
    pub guid: [u8; 16],
    pub security_mode: u16,
    pub dialects: Vec<Dialect>,
}

impl ValidateNegotiateInfoRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + 2 * self.dialects.len());
        out.put_u32(self.capabilities);
        out.put_bytes(&self.guid);
        out.put_u16(self.security_mode);
        out.put_u16(self.dialects.len() as u16);
        for d in &self.dialects {
            out.put_u16(d.code());
        }
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(buf);
        let capabilities = r.u32("validate negotiate capabilities")?;
        let guid = r.array::<16>("validate negotiate guid")?;
        let security_mode = r.u16("validate negotiate security mode")?;
        let count = r.u16("validate negotiate dialect count")? as usize;
        let raw = r.take(count * 2, "validate negotiate dialects")?;
        let dialects = raw.chunks_exact(2).map(|c| Dialect::from_code(u16::from_le_bytes([c[0], c[1]]))).collect();
        Ok(ValidateNegotiateInfoRequest { capabilities, guid, security_mode, dialects })
    }
}

/// VALIDATE_NEGOTIATE_INFO response payload (2.2.32.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidateNegotiateInfoResponse {
    pub capabilities: u32,
    pub guid: [u8; 16],
    pub security_mode: u16,
    pub dialect: Dialect,
}

impl ValidateNegotiateInfoResponse {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        out.put_u32(self.capabilities);
        out.put_bytes(&self.guid);
        out.put_u16(self.security_mode);
        out.put_u16(self.dialect.code());
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(buf);
        Ok(ValidateNegotiateInfoResponse {
            capabilities: r.u32("validate negotiate capabilities")?,
            guid: r.array::<16>("validate negotiate guid")?,
            security_mode: r.u16("validate negotiate security mode")?,
            dialect: Dialect::from_code(r.u16("validate negotiate dialect")?),
        })
    }
}

/// The opaque source-file key from FSCTL_SRV_REQUEST_RESUME_KEY (2.2.32.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeKey(pub [u8; 24]);

impl ResumeKey {
    /// ResumeKey, ContextLength 0, and no Context.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(28);
        out.put_bytes(&self.0);
        out.put_u32(0);
        out
    }

    /// Reads the 24-byte key; ContextLength and any Context after it carry
    /// nothing for SMB2 (the server sets ContextLength to 0) and are ignored.
    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        Ok(ResumeKey(Reader::new(buf).array::<24>("resume key")?))
    }
}

/// One SRV_COPYCHUNK range (2.2.31.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyChunk {
    pub source_offset: u64,
    pub target_offset: u64,
    pub length: u32,
}

const COPY_CHUNK_LEN: usize = 24;

/// SRV_COPYCHUNK_COPY, the FSCTL_SRV_COPYCHUNK(_WRITE) input (2.2.31.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyChunkRequest {
    pub source_key: [u8; 24],
    pub chunks: Vec<CopyChunk>,
}

impl CopyChunkRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + COPY_CHUNK_LEN * self.chunks.len());
        out.put_bytes(&self.source_key);
        out.put_u32(self.chunks.len() as u32);
        out.put_u32(0); // Reserved
        for c in &self.chunks {
            out.put_u64(c.source_offset);
            out.put_u64(c.target_offset);
            out.put_u32(c.length);
            out.put_u32(0); // Reserved
        }
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(buf);
        let source_key = r.array::<24>("copychunk source key")?;
        let count = r.u32("copychunk chunk count")? as usize;
        r.skip(4, "reserved")?;
        // Take the whole array first so a lying count cannot drive the allocation.
        let len = count.checked_mul(COPY_CHUNK_LEN).ok_or(WireError::TooLarge {
            what: "copychunk chunk count",
            len: count,
            limit: r.remaining() / COPY_CHUNK_LEN,
        })?;
        let raw = r.take(len, "copychunk chunks")?;
        let mut chunks = Vec::with_capacity(count);
        let mut cr = Reader::new(raw);
        for _ in 0..count {
            let source_offset = cr.u64("chunk source offset")?;
            let target_offset = cr.u64("chunk target offset")?;
            let length = cr.u32("chunk length")?;
            cr.skip(4, "chunk reserved")?;
            chunks.push(CopyChunk { source_offset, target_offset, length });
        }
        Ok(CopyChunkRequest { source_key, chunks })
    }
}

/// SRV_COPYCHUNK_RESPONSE, the FSCTL_SRV_COPYCHUNK(_WRITE) output (2.2.32.1).
/// On STATUS_INVALID_PARAMETER the fields carry the server's limits instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyChunkResponse {
    pub chunks_written: u32,
    pub chunk_bytes_written: u32,
    pub total_bytes_written: u32,
}

impl CopyChunkResponse {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12);
        out.put_u32(self.chunks_written);
        out.put_u32(self.chunk_bytes_written);
        out.put_u32(self.total_bytes_written);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(buf);
        Ok(CopyChunkResponse {
            chunks_written: r.u32("chunks written")?,
            chunk_bytes_written: r.u32("chunk bytes written")?,
            total_bytes_written: r.u32("total bytes written")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Command, Header};

    fn with_header() -> Vec<u8> {
        let mut msg = Vec::new();
        Header::new(Command::Ioctl).encode(&mut msg);
        msg
    }

    fn validate_request() -> ValidateNegotiateInfoRequest {
        ValidateNegotiateInfoRequest {
            capabilities: 0x44,
            guid: *b"0123456789abcdef",
            security_mode: 1,
            dialects: vec![Dialect::Smb300, Dialect::Smb302],
        }
    }

    #[test]
    fn request_round_trip_and_layout() {
        let req = IoctlRequest {
            ctl_code: FSCTL_VALIDATE_NEGOTIATE_INFO,
            file_id: FileId::ANY,
            input: validate_request().encode(),
            max_input_response: 0,
            max_output_response: 24,
            flags: IOCTL_IS_FSCTL,
        };
        let mut msg = with_header();
        req.encode(&mut msg);
        assert_eq!(msg.len(), 120 + 28);
        assert_eq!(&msg[64..72], &[57, 0, 0, 0, 0x04, 0x02, 0x14, 0x00]);
        assert_eq!(&msg[72..88], &[0xFF; 16]);
        assert_eq!(&msg[88..96], &[120, 0, 0, 0, 28, 0, 0, 0]); // InputOffset, InputCount
        let decoded = IoctlRequest::decode(&msg).unwrap();
        assert_eq!(decoded, req);
        assert_eq!(ValidateNegotiateInfoRequest::decode(&decoded.input).unwrap(), validate_request());
    }

    #[test]
    fn request_with_empty_input() {
        let req = IoctlRequest {
            ctl_code: FSCTL_SRV_REQUEST_RESUME_KEY,
            file_id: FileId { persistent: 5, volatile: 6 },
            input: vec![],
            max_input_response: 0,
            max_output_response: 32,
            flags: IOCTL_IS_FSCTL,
        };
        let mut msg = with_header();
        req.encode(&mut msg);
        assert_eq!(msg.len(), 120);
        assert_eq!(IoctlRequest::decode(&msg).unwrap(), req);
    }

    #[test]
    fn response_real_bytes_validate_negotiate() {
        // Hand-built from 2.2.32 + 2.2.32.6: output at offset 112, 24 bytes.
        let mut msg = with_header();
        msg.extend_from_slice(&[
            0x31, 0x00, 0x00, 0x00, // StructureSize 49, Reserved
            0x04, 0x02, 0x14, 0x00, // FSCTL_VALIDATE_NEGOTIATE_INFO
        ]);
        msg.extend_from_slice(&[0xFF; 16]); // FileId
        msg.extend_from_slice(&[
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // InputOffset, InputCount
            0x70, 0x00, 0x00, 0x00, 0x18, 0x00, 0x00, 0x00, // OutputOffset 112, OutputCount 24
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // Flags, Reserved2
            0x40, 0x00, 0x00, 0x00, // Capabilities: ENCRYPTION
        ]);
        msg.extend_from_slice(b"SERVERGUID-BYTES");
        msg.extend_from_slice(&[0x03, 0x00, 0x02, 0x03]); // SecurityMode, Dialect 0x0302
        let resp = IoctlResponse::decode(&msg).unwrap();
        assert_eq!(resp.ctl_code, FSCTL_VALIDATE_NEGOTIATE_INFO);
        assert_eq!(resp.file_id, FileId::ANY);
        assert!(resp.input.is_empty());
        let vni = ValidateNegotiateInfoResponse::decode(&resp.output).unwrap();
        assert_eq!(
            vni,
            ValidateNegotiateInfoResponse {
                capabilities: 0x40,
                guid: *b"SERVERGUID-BYTES",
                security_mode: 3,
                dialect: Dialect::Smb302,
            }
        );
        assert_eq!(vni.encode(), resp.output);
        let mut again = with_header();
        resp.encode(&mut again);
        assert_eq!(again, msg);
    }

    #[test]
    fn response_round_trip_with_input_and_output() {
        let resp = IoctlResponse {
            ctl_code: FSCTL_SRV_COPYCHUNK_WRITE,
            file_id: FileId { persistent: 1, volatile: 2 },
            input: vec![1, 2, 3],
            output: CopyChunkResponse { chunks_written: 2, chunk_bytes_written: 0, total_bytes_written: 1 << 20 }
                .encode(),
            flags: 0,
        };
        let mut msg = with_header();
        resp.encode(&mut msg);
        assert_eq!(u32::from_le_bytes(msg[96..100].try_into().unwrap()), 120); // aligned output
        assert_eq!(IoctlResponse::decode(&msg).unwrap(), resp);

        let empty = IoctlResponse { ctl_code: 0, file_id: FileId::default(), input: vec![], output: vec![], flags: 0 };
        let mut msg = with_header();
        empty.encode(&mut msg);
        assert_eq!(msg.len(), 64 + 49);
        assert_eq!(IoctlResponse::decode(&msg).unwrap(), empty);
    }

    #[test]
    fn truncated_and_bad_offsets() {
        let resp = IoctlResponse {
            ctl_code: FSCTL_SRV_REQUEST_RESUME_KEY,
            file_id: FileId::default(),
            input: vec![],
            output: ResumeKey([7; 24]).encode(),
            flags: 0,
        };
        let mut msg = with_header();
        resp.encode(&mut msg);
        for cut in [64, 80, 111, 120, msg.len() - 1] {
            assert!(IoctlResponse::decode(&msg[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = msg.clone();
        bad[96..100].copy_from_slice(&u32::MAX.to_le_bytes()); // OutputOffset
        assert!(matches!(IoctlResponse::decode(&bad), Err(WireError::BadOffset { .. })));
        let mut bad = msg.clone();
        bad[100..104].copy_from_slice(&u32::MAX.to_le_bytes()); // OutputCount
        assert!(matches!(IoctlResponse::decode(&bad), Err(WireError::BadOffset { .. })));

        let req = IoctlRequest {
            ctl_code: FSCTL_SRV_COPYCHUNK,
            file_id: FileId::default(),
            input: vec![0; 10],
            max_input_response: 0,
            max_output_response: 12,
            flags: IOCTL_IS_FSCTL,
        };
        let mut msg = with_header();
        req.encode(&mut msg);
        assert!(IoctlRequest::decode(&msg[..msg.len() - 1]).is_err());
        let mut bad = msg.clone();
        bad[88..92].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes()); // InputOffset
        assert!(matches!(IoctlRequest::decode(&bad), Err(WireError::BadOffset { .. })));
    }

    #[test]
    fn payload_round_trips_and_truncation() {
        let v = validate_request();
        let bytes = v.encode();
        assert_eq!(bytes.len(), 28);
        assert_eq!(ValidateNegotiateInfoRequest::decode(&bytes).unwrap(), v);
        assert!(ValidateNegotiateInfoRequest::decode(&bytes[..27]).is_err());
        let mut huge = bytes.clone();
        huge[22..24].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(ValidateNegotiateInfoRequest::decode(&huge), Err(WireError::Truncated { .. })));

        let vr = ValidateNegotiateInfoResponse {
            capabilities: 1,
            guid: [9; 16],
            security_mode: 2,
            dialect: Dialect::Smb311,
        };
        assert_eq!(ValidateNegotiateInfoResponse::decode(&vr.encode()).unwrap(), vr);
        assert!(ValidateNegotiateInfoResponse::decode(&vr.encode()[..23]).is_err());

        let key = ResumeKey(core::array::from_fn(|i| i as u8));
        assert_eq!(ResumeKey::decode(&key.encode()).unwrap(), key);
        // Windows and Samba send 32 bytes (key, ContextLength, 4 pad bytes).
        let mut padded = key.encode();
        padded.extend_from_slice(&[0; 4]);
        assert_eq!(ResumeKey::decode(&padded).unwrap(), key);
        assert!(ResumeKey::decode(&[0; 23]).is_err());

        let cc = CopyChunkResponse { chunks_written: 16, chunk_bytes_written: 1 << 20, total_bytes_written: 1 << 24 };
        assert_eq!(CopyChunkResponse::decode(&cc.encode()).unwrap(), cc);
        assert!(CopyChunkResponse::decode(&cc.encode()[..11]).is_err());
    }

    #[test]
    fn copychunk_request_real_bytes_and_lying_count() {
        let req = CopyChunkRequest {
            source_key: [0xAA; 24],
            chunks: vec![
                CopyChunk { source_offset: 0, target_offset: 0x1000, length: 0x10_0000 },
                CopyChunk { source_offset: 0x10_0000, target_offset: 0x11_000, length: 42 },
            ],
        };
        let bytes = req.encode();
        assert_eq!(bytes.len(), 32 + 48);
        // 2.2.31.1: ChunkCount at 24, Reserved, then SourceOffset/TargetOffset/Length/Reserved.
        assert_eq!(&bytes[24..32], &[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            &bytes[32..56],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x10, 0, 0, 0, 0, 0, 0, 0x00, 0x00, 0x10, 0x00, 0, 0, 0, 0]
        );
        assert_eq!(CopyChunkRequest::decode(&bytes).unwrap(), req);
        assert!(CopyChunkRequest::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut lying = bytes.clone();
        lying[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(CopyChunkRequest::decode(&lying).is_err());
    }
}
