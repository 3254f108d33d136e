//! Durable handles v2 and the leases that make them possible: the create
//! contexts that ask for them and reclaim them (MS-SMB2 2.2.13.2.10-12,
//! 2.2.14.2.10-12), and the lease break notification and acknowledgment
//! (2.2.23.2, 2.2.24.2, 2.2.25.2).
//!
//! A server keeps a durable open alive for a while after its connection is
//! lost, so a client can reclaim it on a new connection with its CreateGuid.
//! Windows and Samba only make an open durable when it also holds a batch
//! oplock or a lease with handle caching, hence the lease contexts here.

use super::create::CreateContext;
use super::cursor::{Reader, Writer};
use super::{expect_structure_size, FileId, WireError};
use crate::wire::header::HEADER_LEN;

/// "DH2Q": SMB2_CREATE_DURABLE_HANDLE_REQUEST_V2 and its response.
pub const CONTEXT_DURABLE_REQUEST_V2: &[u8; 4] = b"DH2Q";
/// "DH2C": SMB2_CREATE_DURABLE_HANDLE_RECONNECT_V2.
pub const CONTEXT_DURABLE_RECONNECT_V2: &[u8; 4] = b"DH2C";
/// "RqLs": SMB2_CREATE_REQUEST_LEASE(_V2) and its response.
pub const CONTEXT_LEASE: &[u8; 4] = b"RqLs";

/// SMB2_DHANDLE_FLAG_PERSISTENT (2.2.13.2.11): a continuously available
/// handle. Only for CA shares; this client asks for plain durability.
pub const DHANDLE_FLAG_PERSISTENT: u32 = 0x0000_0002;

/// Lease states (2.2.13.2.8).
pub mod lease_state {
    pub const NONE: u32 = 0x00;
    pub const READ_CACHING: u32 = 0x01;
    pub const HANDLE_CACHING: u32 = 0x02;
    pub const WRITE_CACHING: u32 = 0x04;
}

/// SMB2_LEASE_FLAG_BREAK_IN_PROGRESS (2.2.14.2.10).
pub const LEASE_FLAG_BREAK_IN_PROGRESS: u32 = 0x0000_0002;
/// SMB2_LEASE_FLAG_PARENT_LEASE_KEY_SET (2.2.13.2.10).
pub const LEASE_FLAG_PARENT_LEASE_KEY_SET: u32 = 0x0000_0004;
/// SMB2_NOTIFY_BREAK_LEASE_FLAG_ACK_REQUIRED (2.2.23.2).
pub const NOTIFY_BREAK_LEASE_FLAG_ACK_REQUIRED: u32 = 0x0000_0001;

const DURABLE_REQUEST_V2_LEN: usize = 32;
const DURABLE_RESPONSE_V2_LEN: usize = 8;
const DURABLE_RECONNECT_V2_LEN: usize = 36;
const LEASE_V2_LEN: usize = 52;

/// SMB2_CREATE_DURABLE_HANDLE_REQUEST_V2 (2.2.13.2.11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurableRequestV2 {
    /// Milliseconds the server keeps the open after a disconnect; 0 lets the
    /// server choose (Windows and Samba: 60 s).
    pub timeout_ms: u32,
    /// `DHANDLE_FLAG_PERSISTENT` or 0.
    pub flags: u32,
    /// Names this open across reconnects and replays; unique per open.
    pub create_guid: [u8; 16],
}

impl DurableRequestV2 {
    pub fn context(&self) -> CreateContext {
        let mut data = Vec::with_capacity(DURABLE_REQUEST_V2_LEN);
        data.put_u32(self.timeout_ms);
        data.put_u32(self.flags);
        data.put_u64(0); // Reserved
        data.put_bytes(&self.create_guid);
        CreateContext { name: CONTEXT_DURABLE_REQUEST_V2.to_vec(), data }
    }

    pub fn decode(data: &[u8]) -> Result<Self, WireError> {
        exact_len(data, DURABLE_REQUEST_V2_LEN, "durable handle request v2")?;
        let mut r = Reader::new(data);
        let timeout_ms = r.u32("durable v2 timeout")?;
        let flags = r.u32("durable v2 flags")?;
        r.skip(8, "durable v2 reserved")?;
        let create_guid = r.array::<16>("durable v2 create guid")?;
        Ok(DurableRequestV2 { timeout_ms, flags, create_guid })
    }
}

/// SMB2_CREATE_DURABLE_HANDLE_RESPONSE_V2 (2.2.14.2.12): present in a CREATE
/// response exactly when the server made the open durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurableResponseV2 {
    pub timeout_ms: u32,
    pub flags: u32,
}

impl DurableResponseV2 {
    pub fn encode(&self) -> Vec<u8> {
        let mut data = Vec::with_capacity(DURABLE_RESPONSE_V2_LEN);
        data.put_u32(self.timeout_ms);
        data.put_u32(self.flags);
        data
    }

    pub fn decode(data: &[u8]) -> Result<Self, WireError> {
        exact_len(data, DURABLE_RESPONSE_V2_LEN, "durable handle response v2")?;
        let mut r = Reader::new(data);
        Ok(DurableResponseV2 { timeout_ms: r.u32("durable v2 timeout")?, flags: r.u32("durable v2 flags")? })
    }
}

/// SMB2_CREATE_DURABLE_HANDLE_RECONNECT_V2 (2.2.13.2.12): reclaims a durable
/// open on a new connection and session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurableReconnectV2 {
    /// The FileId the open had before the connection was lost.
    pub file_id: FileId,
    pub create_guid: [u8; 16],
    pub flags: u32,
}

impl DurableReconnectV2 {
    pub fn context(&self) -> CreateContext {
        let mut data = Vec::with_capacity(DURABLE_RECONNECT_V2_LEN);
        self.file_id.encode(&mut data);
        data.put_bytes(&self.create_guid);
        data.put_u32(self.flags);
        CreateContext { name: CONTEXT_DURABLE_RECONNECT_V2.to_vec(), data }
    }

    pub fn decode(data: &[u8]) -> Result<Self, WireError> {
        exact_len(data, DURABLE_RECONNECT_V2_LEN, "durable handle reconnect v2")?;
        let mut r = Reader::new(data);
        let file_id = FileId::decode(&mut r)?;
        let create_guid = r.array::<16>("durable reconnect v2 create guid")?;
        let flags = r.u32("durable reconnect v2 flags")?;
        Ok(DurableReconnectV2 { file_id, create_guid, flags })
    }
}

/// SMB2_CREATE_REQUEST_LEASE_V2 (2.2.13.2.10); the response
/// SMB2_CREATE_RESPONSE_LEASE_V2 (2.2.14.2.11) has the same layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseV2 {
    pub key: [u8; 16],
    /// `lease_state::*` bits requested (or granted, in a response).
    pub state: u32,
    /// `LEASE_FLAG_*`.
    pub flags: u32,
    pub parent_key: [u8; 16],
    pub epoch: u16,
}

impl LeaseV2 {
    pub fn context(&self) -> CreateContext {
        CreateContext { name: CONTEXT_LEASE.to_vec(), data: self.encode() }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut data = Vec::with_capacity(LEASE_V2_LEN);
        data.put_bytes(&self.key);
        data.put_u32(self.state);
        data.put_u32(self.flags);
        data.put_u64(0); // LeaseDuration
        data.put_bytes(&self.parent_key);
        data.put_u16(self.epoch);
        data.put_u16(0); // Reserved
        data
    }

    /// Decodes a V2 lease; a 32-byte V1 answer (a server that ignored the
    /// V2 request) is an error the caller treats as "no lease".
    pub fn decode(data: &[u8]) -> Result<Self, WireError> {
        exact_len(data, LEASE_V2_LEN, "lease v2")?;
        let mut r = Reader::new(data);
        let key = r.array::<16>("lease key")?;
        let state = r.u32("lease state")?;
        let flags = r.u32("lease flags")?;
        r.skip(8, "lease duration")?;
        let parent_key = r.array::<16>("parent lease key")?;
        let epoch = r.u16("lease epoch")?;
        Ok(LeaseV2 { key, state, flags, parent_key, epoch })
    }
}

/// Lease Break Notification (2.2.23.2), sent unsolicited with MessageId
/// 0xFFFFFFFFFFFFFFFF and command OPLOCK_BREAK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseBreakNotification {
    pub new_epoch: u16,
    /// `NOTIFY_BREAK_LEASE_FLAG_ACK_REQUIRED` or 0.
    pub flags: u32,
    pub key: [u8; 16],
    pub current_state: u32,
    pub new_state: u32,
}

impl LeaseBreakNotification {
    const STRUCTURE_SIZE: u16 = 44;

    pub fn encode(&self, msg: &mut Vec<u8>) {
        msg.put_u16(Self::STRUCTURE_SIZE);
        msg.put_u16(self.new_epoch);
        msg.put_u32(self.flags);
        msg.put_bytes(&self.key);
        msg.put_u32(self.current_state);
        msg.put_u32(self.new_state);
        msg.put_u32(0); // BreakReason
        msg.put_u32(0); // AccessMaskHint
        msg.put_u32(0); // ShareMaskHint
    }

    /// Decodes the body after the header of `msg`. An oplock break (24-byte
    /// body) fails the structure size check: this client never asks for oplocks.
    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, Self::STRUCTURE_SIZE, "lease break notification")?;
        let new_epoch = r.u16("lease break epoch")?;
        let flags = r.u32("lease break flags")?;
        let key = r.array::<16>("lease break key")?;
        let current_state = r.u32("lease break current state")?;
        let new_state = r.u32("lease break new state")?;
        r.skip(12, "lease break reason and hints")?;
        Ok(LeaseBreakNotification { new_epoch, flags, key, current_state, new_state })
    }

    pub fn ack_required(&self) -> bool {
        self.flags & NOTIFY_BREAK_LEASE_FLAG_ACK_REQUIRED != 0
    }
}

/// Lease Break Acknowledgment (2.2.24.2); the response (2.2.25.2) has the
/// same layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseBreakAck {
    pub key: [u8; 16],
    pub state: u32,
}

impl LeaseBreakAck {
    const STRUCTURE_SIZE: u16 = 36;

    pub fn encode(&self, msg: &mut Vec<u8>) {
        msg.put_u16(Self::STRUCTURE_SIZE);
        msg.put_u16(0); // Reserved
        msg.put_u32(0); // Flags
        msg.put_bytes(&self.key);
        msg.put_u32(self.state);
        msg.put_u64(0); // LeaseDuration
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, Self::STRUCTURE_SIZE, "lease break acknowledgment")?;
        r.skip(6, "lease break ack reserved and flags")?;
        let key = r.array::<16>("lease break ack key")?;
        let state = r.u32("lease break ack state")?;
        r.skip(8, "lease break ack duration")?;
        Ok(LeaseBreakAck { key, state })
    }
}

fn exact_len(data: &[u8], want: usize, what: &'static str) -> Result<(), WireError> {
    if data.len() != want {
        return Err(WireError::Invalid { what, why: format!("{} bytes, expected {want}", data.len()) });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::create::{CreateRequest, CreateResponse};
    use crate::wire::{Command, Header};

    const GUID: [u8; 16] =
        [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF, 0x00];

    #[test]
    fn durable_request_v2_bytes() {
        let ctx = DurableRequestV2 { timeout_ms: 60_000, flags: 0, create_guid: GUID }.context();
        assert_eq!(ctx.name, b"DH2Q");
        let mut want = vec![0x60, 0xEA, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(&[0; 8]);
        want.extend_from_slice(&GUID);
        assert_eq!(ctx.data, want);
        assert_eq!(DurableRequestV2::decode(&want).unwrap().create_guid, GUID);
        assert!(DurableRequestV2::decode(&want[..31]).is_err());
    }

    #[test]
    fn durable_response_v2_from_server_bytes() {
        // Samba's answer: the timeout it granted, no flags.
        let r = DurableResponseV2::decode(&[0x60, 0xEA, 0x00, 0x00, 0, 0, 0, 0]).unwrap();
        assert_eq!(r, DurableResponseV2 { timeout_ms: 60_000, flags: 0 });
        assert_eq!(r.encode(), [0x60, 0xEA, 0, 0, 0, 0, 0, 0]);
        assert!(DurableResponseV2::decode(&[0; 7]).is_err());
        assert!(DurableResponseV2::decode(&[0; 9]).is_err());
    }

    #[test]
    fn durable_reconnect_v2_bytes() {
        let c = DurableReconnectV2 {
            file_id: FileId { persistent: 0x0102030405060708, volatile: 0x1112131415161718 },
            create_guid: GUID,
            flags: 0,
        };
        let ctx = c.context();
        assert_eq!(ctx.name, b"DH2C");
        assert_eq!(ctx.data.len(), 36);
        assert_eq!(&ctx.data[..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&ctx.data[8..16], &[0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11]);
        assert_eq!(&ctx.data[16..32], &GUID);
        assert_eq!(DurableReconnectV2::decode(&ctx.data).unwrap(), c);
        assert!(DurableReconnectV2::decode(&ctx.data[..35]).is_err());
    }

    #[test]
    fn lease_v2_bytes_and_v1_answer_refused() {
        let l = LeaseV2 {
            key: GUID,
            state: lease_state::READ_CACHING | lease_state::HANDLE_CACHING,
            flags: 0,
            parent_key: [0; 16],
            epoch: 1,
        };
        let data = l.encode();
        assert_eq!(data.len(), 52);
        assert_eq!(&data[16..20], &[3, 0, 0, 0]);
        assert_eq!(&data[48..50], &[1, 0]);
        assert_eq!(LeaseV2::decode(&data).unwrap(), l);
        // A granted lease as a server sends it: RH with break-in-progress set.
        let mut granted = data.clone();
        granted[20] = 0x02;
        assert_eq!(LeaseV2::decode(&granted).unwrap().flags, LEASE_FLAG_BREAK_IN_PROGRESS);
        assert!(LeaseV2::decode(&data[..32]).is_err(), "a V1 lease is not a V2 lease");
    }

    #[test]
    fn contexts_travel_in_create_messages() {
        let lease = LeaseV2 { key: GUID, state: 3, flags: 0, parent_key: [0; 16], epoch: 0 };
        let durable = DurableRequestV2 { timeout_ms: 0, flags: 0, create_guid: GUID };
        let req = CreateRequest {
            oplock_level: crate::wire::create::OPLOCK_LEVEL_LEASE,
            impersonation_level: 2,
            desired_access: 1,
            file_attributes: 0,
            share_access: 7,
            create_disposition: 1,
            create_options: 0,
            name: "a\\b.bin".into(),
            contexts: vec![durable.context(), lease.context()],
        };
        let mut msg = Vec::new();
        Header::new(Command::Create).encode(&mut msg);
        req.encode(&mut msg);
        let back = CreateRequest::decode(&msg).unwrap();
        assert_eq!(back.contexts.len(), 2);
        assert_eq!(DurableRequestV2::decode(&back.contexts[0].data).unwrap(), durable);
        assert_eq!(LeaseV2::decode(&back.contexts[1].data).unwrap(), lease);

        let resp = CreateResponse {
            oplock_level: crate::wire::create::OPLOCK_LEVEL_LEASE,
            flags: 0,
            create_action: 1,
            creation_time: 0,
            last_access_time: 0,
            last_write_time: 0,
            change_time: 0,
            allocation_size: 0,
            end_of_file: 0,
            file_attributes: 0x20,
            file_id: FileId { persistent: 1, volatile: 2 },
            contexts: vec![
                CreateContext {
                    name: b"DH2Q".to_vec(),
                    data: DurableResponseV2 { timeout_ms: 60_000, flags: 0 }.encode(),
                },
                lease.context(),
            ],
        };
        let mut msg = Vec::new();
        Header::new(Command::Create).encode(&mut msg);
        resp.encode(&mut msg);
        let back = CreateResponse::decode(&msg).unwrap();
        assert_eq!(back.durable_v2().unwrap().unwrap().timeout_ms, 60_000);
        assert_eq!(back.lease_v2().unwrap().unwrap().state, 3);
    }

    #[test]
    fn lease_break_notification_from_crafted_bytes() {
        let mut msg = Vec::new();
        let mut h = Header::new(Command::OplockBreak);
        h.message_id = u64::MAX;
        h.flags = crate::wire::header::FLAG_SERVER_TO_REDIR;
        h.encode(&mut msg);
        msg.extend_from_slice(&[44, 0, 2, 0, 1, 0, 0, 0]);
        msg.extend_from_slice(&GUID);
        msg.extend_from_slice(&[3, 0, 0, 0, 1, 0, 0, 0]);
        msg.extend_from_slice(&[0; 12]);
        let n = LeaseBreakNotification::decode(&msg).unwrap();
        assert_eq!(n.key, GUID);
        assert_eq!((n.current_state, n.new_state, n.new_epoch), (3, 1, 2));
        assert!(n.ack_required());
        let mut again = msg[..HEADER_LEN].to_vec();
        n.encode(&mut again);
        assert_eq!(again, msg);
        // Truncated, and an oplock break (structure size 24), are errors.
        assert!(LeaseBreakNotification::decode(&msg[..msg.len() - 1]).is_err());
        let mut oplock = msg[..HEADER_LEN].to_vec();
        oplock.extend_from_slice(&[24, 0, 1, 0, 0, 0, 0, 0]);
        oplock.extend_from_slice(&[0; 16]);
        assert!(LeaseBreakNotification::decode(&oplock).is_err());
    }

    #[test]
    fn lease_break_ack_bytes() {
        let mut msg = Vec::new();
        Header::new(Command::OplockBreak).encode(&mut msg);
        let ack = LeaseBreakAck { key: GUID, state: lease_state::READ_CACHING };
        ack.encode(&mut msg);
        assert_eq!(msg.len(), HEADER_LEN + 36);
        assert_eq!(&msg[HEADER_LEN..HEADER_LEN + 8], &[36, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&msg[HEADER_LEN + 24..HEADER_LEN + 28], &[1, 0, 0, 0]);
        assert_eq!(LeaseBreakAck::decode(&msg).unwrap(), ack);
        assert!(LeaseBreakAck::decode(&msg[..HEADER_LEN + 30]).is_err());
    }
}
