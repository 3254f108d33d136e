//! SMB2 SESSION_SETUP request and response (MS-SMB2 2.2.5, 2.2.6).

use super::cursor::{Reader, Writer};
use super::header::HEADER_LEN;
use super::{expect_structure_size, WireError};

/// Request flag: bind this connection to an existing session (multichannel).
pub const SESSION_FLAG_BINDING: u8 = 0x01;

/// Response SessionFlags (2.2.6).
pub const SESSION_FLAG_IS_GUEST: u16 = 0x1;
pub const SESSION_FLAG_IS_NULL: u16 = 0x2;
pub const SESSION_FLAG_ENCRYPT_DATA: u16 = 0x4;

const REQUEST_STRUCTURE_SIZE: u16 = 25;
const RESPONSE_STRUCTURE_SIZE: u16 = 9;

/// SMB2 SESSION_SETUP request (2.2.5). `security_mode` uses the low byte of
/// the negotiate SECURITY_SIGNING_* bits. Channel is always 0 (no RDMA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSetupRequest {
    pub flags: u8,
    pub security_mode: u8,
    pub capabilities: u32,
    pub previous_session_id: u64,
    /// GSS/SPNEGO token.
    pub security_buffer: Vec<u8>,
}

impl SessionSetupRequest {
    pub fn encode(&self, msg: &mut Vec<u8>) {
        msg.put_u16(REQUEST_STRUCTURE_SIZE);
        msg.put_u8(self.flags);
        msg.put_u8(self.security_mode);
        msg.put_u32(self.capabilities);
        msg.put_u32(0); // Channel
        let offset_field = msg.len();
        msg.put_u16(0);
        msg.put_u16(self.security_buffer.len() as u16);
        msg.put_u64(self.previous_session_id);
        put_security_buffer(msg, offset_field, &self.security_buffer);
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, REQUEST_STRUCTURE_SIZE, "session setup request")?;
        let flags = r.u8("session setup flags")?;
        let security_mode = r.u8("security mode")?;
        let capabilities = r.u32("capabilities")?;
        r.skip(4, "channel")?;
        let offset = r.u16("security buffer offset")? as usize;
        let len = r.u16("security buffer length")? as usize;
        let previous_session_id = r.u64("previous session id")?;
        let security_buffer = r.slice_at(offset, len, "security buffer")?.to_vec();
        Ok(SessionSetupRequest { flags, security_mode, capabilities, previous_session_id, security_buffer })
    }
}

/// SMB2 SESSION_SETUP response (2.2.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSetupResponse {
    pub session_flags: u16,
    pub security_buffer: Vec<u8>,
}

impl SessionSetupResponse {
    pub fn encode(&self, msg: &mut Vec<u8>) {
        msg.put_u16(RESPONSE_STRUCTURE_SIZE);
        msg.put_u16(self.session_flags);
        let offset_field = msg.len();
        msg.put_u16(0);
        msg.put_u16(self.security_buffer.len() as u16);
        put_security_buffer(msg, offset_field, &self.security_buffer);
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, RESPONSE_STRUCTURE_SIZE, "session setup response")?;
        let session_flags = r.u16("session flags")?;
        let offset = r.u16("security buffer offset")? as usize;
        let len = r.u16("security buffer length")? as usize;
        let security_buffer = r.slice_at(offset, len, "security buffer")?.to_vec();
        Ok(SessionSetupResponse { session_flags, security_buffer })
    }
}

/// Appends the buffer and patches its offset; an empty buffer still gets the
/// one byte the odd StructureSize promises, with offset 0.
fn put_security_buffer(msg: &mut Vec<u8>, offset_field: usize, buffer: &[u8]) {
    if buffer.is_empty() {
        msg.put_u8(0);
        return;
    }
    let offset = msg.len();
    msg.patch_u16(offset_field, offset as u16);
    msg.put_bytes(buffer);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Command, Header};

    fn with_header() -> Vec<u8> {
        let mut msg = Vec::new();
        Header::new(Command::SessionSetup).encode(&mut msg);
        msg
    }

    #[test]
    fn request_round_trip_and_layout() {
        let req = SessionSetupRequest {
            flags: SESSION_FLAG_BINDING,
            security_mode: 1,
            capabilities: 1,
            previous_session_id: 0x1122_3344_5566_7788,
            security_buffer: b"NTLMSSP\0\x01\0\0\0".to_vec(),
        };
        let mut msg = with_header();
        req.encode(&mut msg);
        // Buffer follows the 24-byte fixed body: offset 88 (2.2.5).
        assert_eq!(&msg[64..68], &[25, 0, 0x01, 0x01]);
        assert_eq!(&msg[76..80], &[88, 0, 12, 0]);
        assert_eq!(&msg[88..95], b"NTLMSSP");
        assert_eq!(SessionSetupRequest::decode(&msg).unwrap(), req);
    }

    #[test]
    fn response_round_trip_and_empty_buffer() {
        let resp = SessionSetupResponse { session_flags: SESSION_FLAG_ENCRYPT_DATA, security_buffer: vec![0xA1, 0x07] };
        let mut msg = with_header();
        resp.encode(&mut msg);
        assert_eq!(&msg[64..72], &[9, 0, 4, 0, 72, 0, 2, 0]);
        assert_eq!(SessionSetupResponse::decode(&msg).unwrap(), resp);

        let empty = SessionSetupResponse { session_flags: SESSION_FLAG_IS_GUEST, security_buffer: vec![] };
        let mut msg = with_header();
        empty.encode(&mut msg);
        assert_eq!(msg.len(), 64 + 9);
        assert_eq!(SessionSetupResponse::decode(&msg).unwrap(), empty);
        // A server that omits the pad byte entirely is still accepted.
        assert_eq!(SessionSetupResponse::decode(&msg[..72]).unwrap(), empty);
    }

    #[test]
    fn real_bytes_response() {
        // Hand-built from 2.2.6: SUCCESS with IS_GUEST and a 3-byte SPNEGO accept.
        let mut msg = with_header();
        msg.extend_from_slice(&[0x09, 0x00, 0x01, 0x00, 0x48, 0x00, 0x03, 0x00, 0xA1, 0x01, 0x00]);
        let resp = SessionSetupResponse::decode(&msg).unwrap();
        assert_eq!(resp.session_flags, SESSION_FLAG_IS_GUEST);
        assert_eq!(resp.security_buffer, [0xA1, 0x01, 0x00]);
    }

    #[test]
    fn truncated_and_bad_offsets() {
        let req = SessionSetupRequest {
            flags: 0,
            security_mode: 2,
            capabilities: 0,
            previous_session_id: 0,
            security_buffer: vec![1; 40],
        };
        let mut msg = with_header();
        req.encode(&mut msg);
        for cut in [64, 70, 87, 100, msg.len() - 1] {
            assert!(SessionSetupRequest::decode(&msg[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = msg.clone();
        bad[76..78].copy_from_slice(&0xFFF0u16.to_le_bytes());
        assert!(matches!(SessionSetupRequest::decode(&bad), Err(WireError::BadOffset { .. })));

        let mut bad = with_header();
        bad.extend_from_slice(&[0x09, 0x00, 0x00, 0x00, 0x48, 0x00, 0xFF, 0xFF, 0x00]);
        assert!(matches!(SessionSetupResponse::decode(&bad), Err(WireError::BadOffset { .. })));
        let mut wrong_size = with_header();
        wrong_size.extend_from_slice(&[0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]);
        assert!(matches!(SessionSetupResponse::decode(&wrong_size), Err(WireError::Invalid { .. })));
    }
}
