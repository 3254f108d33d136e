//! The 64-byte SMB2 packet header (MS-SMB2 2.2.1).

use super::cursor::{Reader, Writer};
use super::{Command, NtStatus, WireError};

pub const PROTOCOL_ID: [u8; 4] = [0xFE, b'S', b'M', b'B'];
pub const HEADER_LEN: usize = 64;
/// Offset of the 16-byte signature inside the header.
pub const SIGNATURE_OFFSET: usize = 48;

pub const FLAG_SERVER_TO_REDIR: u32 = 0x0000_0001;
pub const FLAG_ASYNC_COMMAND: u32 = 0x0000_0002;
pub const FLAG_RELATED_OPERATIONS: u32 = 0x0000_0004;
pub const FLAG_SIGNED: u32 = 0x0000_0008;
pub const FLAG_PRIORITY_MASK: u32 = 0x0000_0070;
pub const FLAG_DFS_OPERATIONS: u32 = 0x1000_0000;
pub const FLAG_REPLAY_OPERATION: u32 = 0x2000_0000;

/// SMB2 header, sync or async form. In requests `status` carries the
/// ChannelSequence/Reserved field (zero for us).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub credit_charge: u16,
    pub status: NtStatus,
    pub command: Command,
    /// CreditRequest in requests, CreditResponse in responses.
    pub credits: u16,
    pub flags: u32,
    pub next_command: u32,
    pub message_id: u64,
    /// Present when `flags & FLAG_ASYNC_COMMAND`.
    pub async_id: u64,
    pub tree_id: u32,
    pub session_id: u64,
    pub signature: [u8; 16],
}

impl Header {
    pub fn new(command: Command) -> Self {
        Header {
            credit_charge: 0,
            status: NtStatus::SUCCESS,
            command,
            credits: 0,
            flags: 0,
            next_command: 0,
            message_id: 0,
            async_id: 0,
            tree_id: 0,
            session_id: 0,
            signature: [0; 16],
        }
    }

    pub fn is_async(&self) -> bool {
        self.flags & FLAG_ASYNC_COMMAND != 0
    }

    pub fn is_response(&self) -> bool {
        self.flags & FLAG_SERVER_TO_REDIR != 0
    }

    pub fn is_signed(&self) -> bool {
        self.flags & FLAG_SIGNED != 0
    }

    /// Appends the 64 header bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_bytes(&PROTOCOL_ID);
        out.put_u16(HEADER_LEN as u16);
        out.put_u16(self.credit_charge);
        out.put_u32(self.status.0);
        out.put_u16(self.command.code());
        out.put_u16(self.credits);
        out.put_u32(self.flags);
        out.put_u32(self.next_command);
        out.put_u64(self.message_id);
        if self.is_async() {
            out.put_u64(self.async_id);
        } else {
            out.put_u32(0);
            out.put_u32(self.tree_id);
        }
        out.put_u64(self.session_id);
        out.put_bytes(&self.signature);
    }

    /// Decodes the header at the start of `msg`.
    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(msg);
        let proto = r.array::<4>("header protocol id")?;
        if proto == [0xFF, b'S', b'M', b'B'] {
            return Err(WireError::Smb1);
        }
        if proto != PROTOCOL_ID {
            return Err(WireError::Invalid { what: "header protocol id", why: format!("{proto:02x?}") });
        }
        let size = r.u16("header structure size")?;
        if size as usize != HEADER_LEN {
            return Err(WireError::Invalid { what: "header structure size", why: size.to_string() });
        }
        let credit_charge = r.u16("credit charge")?;
        let status = NtStatus(r.u32("status")?);
        let command = Command::from_code(r.u16("command")?);
        let credits = r.u16("credits")?;
        let flags = r.u32("flags")?;
        let next_command = r.u32("next command")?;
        let message_id = r.u64("message id")?;
        let (async_id, tree_id) = if flags & FLAG_ASYNC_COMMAND != 0 {
            (r.u64("async id")?, 0)
        } else {
            r.skip(4, "reserved")?;
            (0, r.u32("tree id")?)
        };
        let session_id = r.u64("session id")?;
        let signature = r.array::<16>("signature")?;
        Ok(Header {
            credit_charge,
            status,
            command,
            credits,
            flags,
            next_command,
            message_id,
            async_id,
            tree_id,
            session_id,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_round_trip() {
        let mut h = Header::new(Command::Read);
        h.credit_charge = 8;
        h.credits = 64;
        h.flags = FLAG_SIGNED;
        h.message_id = 0x1122_3344_5566;
        h.tree_id = 7;
        h.session_id = 0xdead_beef;
        h.signature = [9; 16];
        let mut v = Vec::new();
        h.encode(&mut v);
        assert_eq!(v.len(), HEADER_LEN);
        assert_eq!(Header::decode(&v).unwrap(), h);
    }

    #[test]
    fn async_round_trip() {
        let mut h = Header::new(Command::Create);
        h.flags = FLAG_ASYNC_COMMAND | FLAG_SERVER_TO_REDIR;
        h.status = NtStatus::PENDING;
        h.async_id = 42;
        let mut v = Vec::new();
        h.encode(&mut v);
        let d = Header::decode(&v).unwrap();
        assert_eq!(d, h);
        assert!(d.is_async() && d.is_response());
    }

    #[test]
    fn rejects_smb1_truncated_and_garbage() {
        let mut v = Vec::new();
        Header::new(Command::Echo).encode(&mut v);
        assert!(matches!(Header::decode(&v[..63]), Err(WireError::Truncated { .. })));
        let mut smb1 = v.clone();
        smb1[0] = 0xFF;
        assert!(matches!(Header::decode(&smb1), Err(WireError::Smb1)));
        let mut bad = v.clone();
        bad[4] = 65;
        assert!(Header::decode(&bad).is_err());
    }
}
