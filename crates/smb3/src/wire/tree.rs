//! SMB2 TREE_CONNECT and TREE_DISCONNECT (MS-SMB2 2.2.9 - 2.2.12).

use super::cursor::{from_utf16le, utf16le, Reader, Writer};
use super::header::HEADER_LEN;
use super::{expect_structure_size, WireError};

pub const SHARE_TYPE_DISK: u8 = 1;
pub const SHARE_TYPE_PIPE: u8 = 2;
pub const SHARE_TYPE_PRINT: u8 = 3;

/// TREE_CONNECT request Flags (2.2.9, 3.1.1 only).
pub const TREE_CONNECT_FLAG_CLUSTER_RECONNECT: u16 = 0x1;
pub const TREE_CONNECT_FLAG_REDIRECT_TO_OWNER: u16 = 0x2;
/// A tree connect request extension (2.2.9.1) follows; not supported here.
pub const TREE_CONNECT_FLAG_EXTENSION_PRESENT: u16 = 0x4;

// ShareFlags (2.2.10). The caching policy is a 2-bit field, not independent bits.
pub const SHAREFLAG_CACHING_MASK: u32 = 0x30;
pub const SHAREFLAG_MANUAL_CACHING: u32 = 0x0;
pub const SHAREFLAG_AUTO_CACHING: u32 = 0x10;
pub const SHAREFLAG_VDO_CACHING: u32 = 0x20;
pub const SHAREFLAG_NO_CACHING: u32 = 0x30;
pub const SHAREFLAG_DFS: u32 = 0x1;
pub const SHAREFLAG_DFS_ROOT: u32 = 0x2;
pub const SHAREFLAG_RESTRICT_EXCLUSIVE_OPENS: u32 = 0x100;
pub const SHAREFLAG_FORCE_SHARED_DELETE: u32 = 0x200;
pub const SHAREFLAG_ALLOW_NAMESPACE_CACHING: u32 = 0x400;
pub const SHAREFLAG_ACCESS_BASED_DIRECTORY_ENUM: u32 = 0x800;
pub const SHAREFLAG_FORCE_LEVELII_OPLOCK: u32 = 0x1000;
pub const SHAREFLAG_ENABLE_HASH_V1: u32 = 0x2000;
pub const SHAREFLAG_ENABLE_HASH_V2: u32 = 0x4000;
pub const SHAREFLAG_ENCRYPT_DATA: u32 = 0x8000;
pub const SHAREFLAG_IDENTITY_REMOTING: u32 = 0x4_0000;
pub const SHAREFLAG_COMPRESS_DATA: u32 = 0x10_0000;
pub const SHAREFLAG_ISOLATED_TRANSPORT: u32 = 0x20_0000;

// Share Capabilities (2.2.10).
pub const SHARE_CAP_DFS: u32 = 0x8;
pub const SHARE_CAP_CONTINUOUS_AVAILABILITY: u32 = 0x10;
pub const SHARE_CAP_SCALEOUT: u32 = 0x20;
pub const SHARE_CAP_CLUSTER: u32 = 0x40;
pub const SHARE_CAP_ASYMMETRIC: u32 = 0x80;
pub const SHARE_CAP_REDIRECT_TO_OWNER: u32 = 0x100;

const CONNECT_REQUEST_STRUCTURE_SIZE: u16 = 9;
const CONNECT_RESPONSE_STRUCTURE_SIZE: u16 = 16;
const DISCONNECT_STRUCTURE_SIZE: u16 = 4;

/// SMB2 TREE_CONNECT request (2.2.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeConnectRequest {
    pub flags: u16,
    /// `\\server\share`.
    pub path: String,
}

impl TreeConnectRequest {
    pub fn encode(&self, msg: &mut Vec<u8>) {
        let path = utf16le(&self.path);
        msg.put_u16(CONNECT_REQUEST_STRUCTURE_SIZE);
        msg.put_u16(self.flags);
        let offset = msg.len() + 4;
        msg.put_u16(if path.is_empty() { 0 } else { offset as u16 });
        msg.put_u16(path.len() as u16);
        if path.is_empty() {
            msg.put_u8(0); // the one buffer byte the odd StructureSize promises
        } else {
            msg.put_bytes(&path);
        }
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, CONNECT_REQUEST_STRUCTURE_SIZE, "tree connect request")?;
        let flags = r.u16("tree connect flags")?;
        if flags & TREE_CONNECT_FLAG_EXTENSION_PRESENT != 0 {
            return Err(WireError::Invalid {
                what: "tree connect flags",
                why: "request extension (2.2.9.1) is not supported".into(),
            });
        }
        let offset = r.u16("path offset")? as usize;
        let len = r.u16("path length")? as usize;
        let path = from_utf16le(r.slice_at(offset, len, "tree connect path")?, "tree connect path")?;
        Ok(TreeConnectRequest { flags, path })
    }
}

/// SMB2 TREE_CONNECT response (2.2.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeConnectResponse {
    pub share_type: u8,
    pub share_flags: u32,
    pub capabilities: u32,
    pub maximal_access: u32,
}

impl TreeConnectResponse {
    pub fn encode(&self, msg: &mut Vec<u8>) {
        msg.put_u16(CONNECT_RESPONSE_STRUCTURE_SIZE);
        msg.put_u8(self.share_type);
        msg.put_u8(0); // Reserved
        msg.put_u32(self.share_flags);
        msg.put_u32(self.capabilities);
        msg.put_u32(self.maximal_access);
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, CONNECT_RESPONSE_STRUCTURE_SIZE, "tree connect response")?;
        let share_type = r.u8("share type")?;
        r.skip(1, "reserved")?;
        Ok(TreeConnectResponse {
            share_type,
            share_flags: r.u32("share flags")?,
            capabilities: r.u32("share capabilities")?,
            maximal_access: r.u32("maximal access")?,
        })
    }

    pub fn encrypt_data(&self) -> bool {
        self.share_flags & SHAREFLAG_ENCRYPT_DATA != 0
    }
}

/// SMB2 TREE_DISCONNECT request (2.2.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeDisconnectRequest;

/// SMB2 TREE_DISCONNECT response (2.2.12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeDisconnectResponse;

impl TreeDisconnectRequest {
    pub fn encode(&self, msg: &mut Vec<u8>) {
        encode_disconnect(msg);
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        decode_disconnect(msg, "tree disconnect request").map(|()| TreeDisconnectRequest)
    }
}

impl TreeDisconnectResponse {
    pub fn encode(&self, msg: &mut Vec<u8>) {
        encode_disconnect(msg);
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        decode_disconnect(msg, "tree disconnect response").map(|()| TreeDisconnectResponse)
    }
}

fn encode_disconnect(msg: &mut Vec<u8>) {
    msg.put_u16(DISCONNECT_STRUCTURE_SIZE);
    msg.put_u16(0); // Reserved
}

fn decode_disconnect(msg: &[u8], what: &'static str) -> Result<(), WireError> {
    let mut r = Reader::at(msg, HEADER_LEN)?;
    expect_structure_size(&mut r, DISCONNECT_STRUCTURE_SIZE, what)?;
    r.skip(2, "reserved")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Command, Header};

    fn with_header(command: Command) -> Vec<u8> {
        let mut msg = Vec::new();
        Header::new(command).encode(&mut msg);
        msg
    }

    #[test]
    fn connect_request_round_trip_and_real_bytes() {
        let req = TreeConnectRequest { flags: 0, path: r"\\srv\ipc$".into() };
        let mut msg = with_header(Command::TreeConnect);
        req.encode(&mut msg);
        // 2.2.9: StructureSize 9, Reserved, PathOffset 72, PathLength 20, UTF-16LE path.
        let expected_body: &[u8] = &[
            0x09, 0x00, 0x00, 0x00, 0x48, 0x00, 0x14, 0x00, b'\\', 0, b'\\', 0, b's', 0, b'r', 0, b'v', 0, b'\\', 0,
            b'i', 0, b'p', 0, b'c', 0, b'$', 0,
        ];
        assert_eq!(&msg[64..], expected_body);
        assert_eq!(TreeConnectRequest::decode(&msg).unwrap(), req);
    }

    #[test]
    fn connect_request_rejects_bad_input() {
        let req = TreeConnectRequest { flags: TREE_CONNECT_FLAG_REDIRECT_TO_OWNER, path: r"\\s\share".into() };
        let mut msg = with_header(Command::TreeConnect);
        req.encode(&mut msg);
        assert_eq!(TreeConnectRequest::decode(&msg).unwrap(), req);
        for cut in [64, 67, 71, msg.len() - 1] {
            assert!(TreeConnectRequest::decode(&msg[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = msg.clone();
        bad[68] = 0xFF; // PathOffset past the end
        assert!(matches!(TreeConnectRequest::decode(&bad), Err(WireError::BadOffset { .. })));
        let mut odd = msg.clone();
        odd[70] -= 1; // odd UTF-16 length
        assert!(matches!(TreeConnectRequest::decode(&odd), Err(WireError::Invalid { .. })));
        let mut ext = msg.clone();
        ext[66] = TREE_CONNECT_FLAG_EXTENSION_PRESENT as u8;
        assert!(matches!(TreeConnectRequest::decode(&ext), Err(WireError::Invalid { .. })));
    }

    #[test]
    fn connect_response_round_trip_and_real_bytes() {
        // Hand-built from 2.2.10: disk share, ENCRYPT_DATA|ACCESS_BASED_DIRECTORY_ENUM, FILE_ALL_ACCESS.
        let mut msg = with_header(Command::TreeConnect);
        msg.extend_from_slice(&[
            0x10, 0x00, 0x01, 0x00, 0x00, 0x88, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0x01, 0x1F, 0x00,
        ]);
        let resp = TreeConnectResponse::decode(&msg).unwrap();
        assert_eq!(
            resp,
            TreeConnectResponse {
                share_type: SHARE_TYPE_DISK,
                share_flags: SHAREFLAG_ENCRYPT_DATA | SHAREFLAG_ACCESS_BASED_DIRECTORY_ENUM,
                capabilities: 0,
                maximal_access: 0x001F_01FF,
            }
        );
        assert!(resp.encrypt_data());
        assert_eq!(resp.share_flags & SHAREFLAG_CACHING_MASK, SHAREFLAG_MANUAL_CACHING);
        let mut again = with_header(Command::TreeConnect);
        resp.encode(&mut again);
        assert_eq!(again, msg);
        assert!(TreeConnectResponse::decode(&msg[..79]).is_err());

        let other = TreeConnectResponse {
            share_type: SHARE_TYPE_PIPE,
            share_flags: SHAREFLAG_NO_CACHING,
            capabilities: SHARE_CAP_DFS | SHARE_CAP_CONTINUOUS_AVAILABILITY,
            maximal_access: 0x0012_019F,
        };
        let mut msg = with_header(Command::TreeConnect);
        other.encode(&mut msg);
        assert_eq!(TreeConnectResponse::decode(&msg).unwrap(), other);
        assert!(!other.encrypt_data());
    }

    #[test]
    fn disconnect_round_trip() {
        let mut msg = with_header(Command::TreeDisconnect);
        TreeDisconnectRequest.encode(&mut msg);
        assert_eq!(&msg[64..], &[4, 0, 0, 0]);
        assert_eq!(TreeDisconnectRequest::decode(&msg).unwrap(), TreeDisconnectRequest);
        assert_eq!(TreeDisconnectResponse::decode(&msg).unwrap(), TreeDisconnectResponse);
        let mut msg = with_header(Command::TreeDisconnect);
        TreeDisconnectResponse.encode(&mut msg);
        assert_eq!(TreeDisconnectResponse::decode(&msg).unwrap(), TreeDisconnectResponse);
        assert!(TreeDisconnectResponse::decode(&msg[..66]).is_err());
        msg[64] = 5;
        assert!(TreeDisconnectRequest::decode(&msg).is_err());
    }
}
