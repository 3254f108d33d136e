//! SMB2 NEGOTIATE request and response (MS-SMB2 2.2.3, 2.2.4) and the
//! SMB 3.1.1 negotiate contexts (2.2.3.1.x, 2.2.4.1.x).

use super::cursor::{from_utf16le, utf16le, Reader, Writer};
use super::header::HEADER_LEN;
use super::{expect_structure_size, CipherId, Dialect, SigningAlgorithmId, WireError};

pub const SECURITY_SIGNING_ENABLED: u16 = 0x1;
pub const SECURITY_SIGNING_REQUIRED: u16 = 0x2;

pub const CAP_DFS: u32 = 0x1;
pub const CAP_LEASING: u32 = 0x2;
pub const CAP_LARGE_MTU: u32 = 0x4;
pub const CAP_MULTI_CHANNEL: u32 = 0x8;
pub const CAP_PERSISTENT_HANDLES: u32 = 0x10;
pub const CAP_DIRECTORY_LEASING: u32 = 0x20;
pub const CAP_ENCRYPTION: u32 = 0x40;

/// Preauth integrity hash algorithm (2.2.3.1.1); SHA-512 is the only one defined.
pub const HASH_SHA512: u16 = 1;

// Negotiate context types (2.2.3.1).
const CTX_PREAUTH_INTEGRITY: u16 = 0x0001;
const CTX_ENCRYPTION: u16 = 0x0002;
const CTX_NETNAME: u16 = 0x0005;
const CTX_SIGNING: u16 = 0x0008;

const REQUEST_STRUCTURE_SIZE: u16 = 36;
const RESPONSE_STRUCTURE_SIZE: u16 = 65;
/// Dialects start right after the 36-byte fixed request body.
const REQUEST_DIALECTS_OFFSET: usize = HEADER_LEN + 36;
/// The response buffer starts after the 64-byte fixed body (StructureSize 65 counts one buffer byte).
const RESPONSE_BUFFER_OFFSET: usize = HEADER_LEN + 64;
/// Each negotiate context starts on an 8-byte boundary (2.2.3.1).
const CONTEXT_ALIGN: usize = 8;
const CONTEXT_HEADER_LEN: usize = 8;

/// One SMB2_NEGOTIATE_CONTEXT (2.2.3.1). Types we do not use keep their raw data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NegotiateContext {
    PreauthIntegrity { hash_algorithms: Vec<u16>, salt: Vec<u8> },
    Encryption { ciphers: Vec<CipherId> },
    Signing { algorithms: Vec<SigningAlgorithmId> },
    NetnameNegotiate { netname: String },
    Unknown { context_type: u16, data: Vec<u8> },
}

impl NegotiateContext {
    pub fn context_type(&self) -> u16 {
        match self {
            NegotiateContext::PreauthIntegrity { .. } => CTX_PREAUTH_INTEGRITY,
            NegotiateContext::Encryption { .. } => CTX_ENCRYPTION,
            NegotiateContext::Signing { .. } => CTX_SIGNING,
            NegotiateContext::NetnameNegotiate { .. } => CTX_NETNAME,
            NegotiateContext::Unknown { context_type, .. } => *context_type,
        }
    }

    fn encode_data(&self, out: &mut Vec<u8>) {
        match self {
            NegotiateContext::PreauthIntegrity { hash_algorithms, salt } => {
                out.put_u16(hash_algorithms.len() as u16);
                out.put_u16(salt.len() as u16);
                for h in hash_algorithms {
                    out.put_u16(*h);
                }
                out.put_bytes(salt);
            }
            NegotiateContext::Encryption { ciphers } => {
                out.put_u16(ciphers.len() as u16);
                for c in ciphers {
                    out.put_u16(c.code());
                }
            }
            NegotiateContext::Signing { algorithms } => {
                out.put_u16(algorithms.len() as u16);
                for a in algorithms {
                    out.put_u16(a.code());
                }
            }
            NegotiateContext::NetnameNegotiate { netname } => out.put_bytes(&utf16le(netname)),
            NegotiateContext::Unknown { data, .. } => out.put_bytes(data),
        }
    }

    /// Appends the context header and data; the caller aligns before each context.
    fn encode(&self, out: &mut Vec<u8>) {
        out.put_u16(self.context_type());
        let len_at = out.len();
        out.put_u16(0);
        out.put_u32(0); // Reserved
        let start = out.len();
        self.encode_data(out);
        let len = out.len() - start;
        out.patch_u16(len_at, len as u16);
    }

    fn decode(context_type: u16, data: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(data);
        Ok(match context_type {
            CTX_PREAUTH_INTEGRITY => {
                let count = r.u16("preauth hash algorithm count")? as usize;
                let salt_len = r.u16("preauth salt length")? as usize;
                let hash_algorithms = u16_list(&mut r, count, "preauth hash algorithms")?;
                let salt = r.take(salt_len, "preauth salt")?.to_vec();
                NegotiateContext::PreauthIntegrity { hash_algorithms, salt }
            }
            CTX_ENCRYPTION => {
                let count = r.u16("cipher count")? as usize;
                let ciphers = u16_list(&mut r, count, "ciphers")?;
                NegotiateContext::Encryption { ciphers: ciphers.into_iter().map(CipherId::from_code).collect() }
            }
            CTX_SIGNING => {
                let count = r.u16("signing algorithm count")? as usize;
                let algorithms = u16_list(&mut r, count, "signing algorithms")?;
                NegotiateContext::Signing {
                    algorithms: algorithms.into_iter().map(SigningAlgorithmId::from_code).collect(),
                }
            }
            CTX_NETNAME => {
                let name = from_utf16le(data, "netname")?;
                // Some senders include a terminator; the name itself never contains NUL.
                NegotiateContext::NetnameNegotiate { netname: name.trim_end_matches('\0').to_string() }
            }
            other => NegotiateContext::Unknown { context_type: other, data: data.to_vec() },
        })
    }
}

/// Reads `count` little-endian u16s, checking the byte length before allocating.
fn u16_list(r: &mut Reader<'_>, count: usize, what: &'static str) -> Result<Vec<u16>, WireError> {
    let raw = r.take(count * 2, what)?;
    Ok(raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
}

/// Appends contexts, each starting on an 8-byte boundary of the message.
/// Returns the offset of the first one.
fn encode_contexts(msg: &mut Vec<u8>, contexts: &[NegotiateContext]) -> usize {
    msg.align_to(CONTEXT_ALIGN);
    let offset = msg.len();
    for (i, c) in contexts.iter().enumerate() {
        if i > 0 {
            msg.align_to(CONTEXT_ALIGN);
        }
        c.encode(msg);
    }
    offset
}

/// Decodes `count` contexts starting at `offset`. The Vec grows only as
/// contexts are actually read, so a huge count with a short buffer fails
/// with `Truncated` instead of allocating.
fn decode_contexts(msg: &[u8], offset: usize, count: u16) -> Result<Vec<NegotiateContext>, WireError> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if !offset.is_multiple_of(CONTEXT_ALIGN) {
        return Err(WireError::Invalid {
            what: "negotiate context offset",
            why: format!("{offset} is not 8-byte aligned"),
        });
    }
    let mut r = Reader::new(msg);
    r.seek(offset, "negotiate context offset")?;
    let max_fit = r.remaining() / CONTEXT_HEADER_LEN;
    let mut contexts = Vec::with_capacity((count as usize).min(max_fit));
    for i in 0..count {
        if i > 0 {
            // The padding after the last context is optional, so align only between contexts.
            let pad = (CONTEXT_ALIGN - r.position() % CONTEXT_ALIGN) % CONTEXT_ALIGN;
            r.skip(pad, "negotiate context padding")?;
        }
        let context_type = r.u16("negotiate context type")?;
        let data_len = r.u16("negotiate context data length")? as usize;
        r.skip(4, "negotiate context reserved")?;
        let data = r.take(data_len, "negotiate context data")?;
        contexts.push(NegotiateContext::decode(context_type, data)?);
    }
    Ok(contexts)
}

/// Rejects an SMB1 reply before looking at the SMB2 body.
fn reject_smb1(msg: &[u8]) -> Result<(), WireError> {
    if msg.starts_with(&[0xFF, b'S', b'M', b'B']) {
        return Err(WireError::Smb1);
    }
    Ok(())
}

/// SMB2 NEGOTIATE request (2.2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiateRequest {
    pub security_mode: u16,
    pub capabilities: u32,
    pub client_guid: [u8; 16],
    pub dialects: Vec<Dialect>,
    /// Sent only when `dialects` includes 3.1.1.
    pub contexts: Vec<NegotiateContext>,
}

impl NegotiateRequest {
    pub fn encode(&self, msg: &mut Vec<u8>) {
        msg.put_u16(REQUEST_STRUCTURE_SIZE);
        msg.put_u16(self.dialects.len() as u16);
        msg.put_u16(self.security_mode);
        msg.put_u16(0); // Reserved
        msg.put_u32(self.capabilities);
        msg.put_bytes(&self.client_guid);
        let ctx_field = msg.len();
        // NegotiateContextOffset/Count/Reserved2 for 3.1.1, else ClientStartTime (zero).
        msg.put_u64(0);
        for d in &self.dialects {
            msg.put_u16(d.code());
        }
        if !self.contexts.is_empty() {
            let offset = encode_contexts(msg, &self.contexts);
            msg.patch_u32(ctx_field, offset as u32);
            msg.patch_u16(ctx_field + 4, self.contexts.len() as u16);
        }
    }

    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        reject_smb1(msg)?;
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, REQUEST_STRUCTURE_SIZE, "negotiate request")?;
        let dialect_count = r.u16("dialect count")? as usize;
        let security_mode = r.u16("security mode")?;
        r.skip(2, "reserved")?;
        let capabilities = r.u32("capabilities")?;
        let client_guid = r.array::<16>("client guid")?;
        let context_offset = r.u32("negotiate context offset")? as usize;
        let context_count = r.u16("negotiate context count")?;
        r.skip(2, "reserved2")?;
        debug_assert_eq!(r.position(), REQUEST_DIALECTS_OFFSET);
        let dialects: Vec<Dialect> =
            u16_list(&mut r, dialect_count, "dialects")?.into_iter().map(Dialect::from_code).collect();
        let contexts = if dialects.contains(&Dialect::Smb311) {
            decode_contexts(msg, context_offset, context_count)?
        } else {
            Vec::new()
        };
        Ok(NegotiateRequest { security_mode, capabilities, client_guid, dialects, contexts })
    }
}

/// SMB2 NEGOTIATE response (2.2.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiateResponse {
    pub security_mode: u16,
    pub dialect: Dialect,
    pub server_guid: [u8; 16],
    pub capabilities: u32,
    pub max_transact_size: u32,
    pub max_read_size: u32,
    pub max_write_size: u32,
    /// FILETIME (100 ns since 1601).
    pub system_time: u64,
    pub server_start_time: u64,
    /// The SPNEGO init token from the server (may be empty).
    pub security_buffer: Vec<u8>,
    /// Present only when `dialect` is 3.1.1.
    pub contexts: Vec<NegotiateContext>,
}

impl NegotiateResponse {
    pub fn encode(&self, msg: &mut Vec<u8>) {
        let is_311 = self.dialect == Dialect::Smb311;
        msg.put_u16(RESPONSE_STRUCTURE_SIZE);
        msg.put_u16(self.security_mode);
        msg.put_u16(self.dialect.code());
        msg.put_u16(if is_311 { self.contexts.len() as u16 } else { 0 });
        msg.put_bytes(&self.server_guid);
        msg.put_u32(self.capabilities);
        msg.put_u32(self.max_transact_size);
        msg.put_u32(self.max_read_size);
        msg.put_u32(self.max_write_size);
        msg.put_u64(self.system_time);
        msg.put_u64(self.server_start_time);
        let sec_field = msg.len();
        msg.put_u16(0);
        msg.put_u16(self.security_buffer.len() as u16);
        let ctx_field = msg.len();
        msg.put_u32(0);
        let buffer_start = msg.len();
        if !self.security_buffer.is_empty() {
            msg.patch_u16(sec_field, buffer_start as u16);
            msg.put_bytes(&self.security_buffer);
        }
        if is_311 && !self.contexts.is_empty() {
            let offset = encode_contexts(msg, &self.contexts);
            msg.patch_u32(ctx_field, offset as u32);
        }
        if msg.len() == buffer_start {
            // StructureSize 65 promises at least one buffer byte.
            msg.put_u8(0);
        }
    }

    /// Decodes a NEGOTIATE response. An SMB1 reply (`WireError::Smb1`) and
    /// the 0x02FF wildcard dialect (the server wants an SMB1 multi-protocol
    /// negotiate, which we never send) are errors.
    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        reject_smb1(msg)?;
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, RESPONSE_STRUCTURE_SIZE, "negotiate response")?;
        let security_mode = r.u16("security mode")?;
        let dialect = Dialect::from_code(r.u16("dialect revision")?);
        if dialect == Dialect::Wildcard {
            return Err(WireError::Invalid {
                what: "negotiate dialect",
                why: "server answered with the SMB2 wildcard 0x02FF (SMB1-style negotiation)".into(),
            });
        }
        let context_count = r.u16("negotiate context count")?;
        let server_guid = r.array::<16>("server guid")?;
        let capabilities = r.u32("capabilities")?;
        let max_transact_size = r.u32("max transact size")?;
        let max_read_size = r.u32("max read size")?;
        let max_write_size = r.u32("max write size")?;
        let system_time = r.u64("system time")?;
        let server_start_time = r.u64("server start time")?;
        let sec_offset = r.u16("security buffer offset")? as usize;
        let sec_len = r.u16("security buffer length")? as usize;
        let context_offset = r.u32("negotiate context offset")? as usize;
        debug_assert_eq!(r.position(), RESPONSE_BUFFER_OFFSET);
        let security_buffer = r.slice_at(sec_offset, sec_len, "security buffer")?.to_vec();
        let contexts =
            if dialect == Dialect::Smb311 { decode_contexts(msg, context_offset, context_count)? } else { Vec::new() };
        Ok(NegotiateResponse {
            security_mode,
            dialect,
            server_guid,
            capabilities,
            max_transact_size,
            max_read_size,
            max_write_size,
            system_time,
            server_start_time,
            security_buffer,
            contexts,
        })
    }

    /// The selected preauth hash algorithms and salt (3.1.1 only).
    pub fn preauth(&self) -> Option<(&[u16], &[u8])> {
        self.contexts.iter().find_map(|c| match c {
            NegotiateContext::PreauthIntegrity { hash_algorithms, salt } => {
                Some((hash_algorithms.as_slice(), salt.as_slice()))
            }
            _ => None,
        })
    }

    /// The cipher the server selected (3.1.1 only; the server sends exactly one).
    pub fn cipher(&self) -> Option<CipherId> {
        self.contexts.iter().find_map(|c| match c {
            NegotiateContext::Encryption { ciphers } => ciphers.first().copied(),
            _ => None,
        })
    }

    /// The signing algorithm the server selected (3.1.1 only).
    pub fn signing_algorithm(&self) -> Option<SigningAlgorithmId> {
        self.contexts.iter().find_map(|c| match c {
            NegotiateContext::Signing { algorithms } => algorithms.first().copied(),
            _ => None,
        })
    }
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

    fn sample_request() -> NegotiateRequest {
        NegotiateRequest {
            security_mode: SECURITY_SIGNING_ENABLED,
            capabilities: CAP_DFS | CAP_LEASING | CAP_LARGE_MTU | CAP_ENCRYPTION,
            client_guid: [0x11; 16],
            dialects: vec![Dialect::Smb300, Dialect::Smb302, Dialect::Smb311],
            contexts: vec![
                NegotiateContext::PreauthIntegrity { hash_algorithms: vec![HASH_SHA512], salt: vec![0xAB; 32] },
                NegotiateContext::Encryption {
                    ciphers: vec![CipherId::Aes256Gcm, CipherId::Aes128Gcm, CipherId::Aes128Ccm],
                },
                NegotiateContext::Signing {
                    algorithms: vec![SigningAlgorithmId::AesGmac, SigningAlgorithmId::AesCmac],
                },
                NegotiateContext::NetnameNegotiate { netname: "fileserver".into() },
                NegotiateContext::Unknown { context_type: 0x0003, data: vec![1, 2, 3] },
            ],
        }
    }

    #[test]
    fn request_round_trip_with_contexts() {
        let req = sample_request();
        let mut msg = with_header(Command::Negotiate);
        req.encode(&mut msg);
        // Contexts start aligned after the 3 dialects (100 + 6 -> 112).
        assert_eq!(u32::from_le_bytes(msg[92..96].try_into().unwrap()), 112);
        assert_eq!(NegotiateRequest::decode(&msg).unwrap(), req);
    }

    #[test]
    fn request_without_311_has_zero_client_start_time() {
        let req = NegotiateRequest {
            security_mode: SECURITY_SIGNING_REQUIRED,
            capabilities: 0,
            client_guid: [7; 16],
            dialects: vec![Dialect::Smb210, Dialect::Smb300],
            contexts: vec![],
        };
        let mut msg = with_header(Command::Negotiate);
        req.encode(&mut msg);
        assert_eq!(msg.len(), 64 + 36 + 4);
        assert_eq!(&msg[92..100], &[0u8; 8]);
        assert_eq!(NegotiateRequest::decode(&msg).unwrap(), req);
    }

    /// A 3.1.1 response assembled by hand from the MS-SMB2 2.2.4 and
    /// 2.2.3.1.x field tables, not from our encoder.
    fn hand_built_response() -> Vec<u8> {
        let mut msg = with_header(Command::Negotiate);
        let body: &[u8] = &[
            0x41, 0x00, // StructureSize 65
            0x01, 0x00, // SecurityMode: signing enabled
            0x11, 0x03, // DialectRevision 0x0311
            0x03, 0x00, // NegotiateContextCount 3
            0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, // ServerGuid
            0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, //
            0x6F, 0x00, 0x00, 0x00, // Capabilities: DFS|LEASING|LARGE_MTU|MULTI_CHANNEL|DIR_LEASING|ENCRYPTION
            0x00, 0x00, 0x80, 0x00, // MaxTransactSize 8 MiB
            0x00, 0x00, 0x80, 0x00, // MaxReadSize 8 MiB
            0x00, 0x00, 0x80, 0x00, // MaxWriteSize 8 MiB
            0x00, 0x80, 0x3E, 0xD5, 0xDE, 0xB1, 0x9D, 0x01, // SystemTime (FILETIME of 1970-01-01)
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // ServerStartTime
            0x80, 0x00, // SecurityBufferOffset 128
            0x06, 0x00, // SecurityBufferLength 6
            0x88, 0x00, 0x00, 0x00, // NegotiateContextOffset 136
            // 128: security buffer (start of a SPNEGO NegTokenInit), then 2 pad bytes
            0x60, 0x48, 0x06, 0x06, 0x2B, 0x06, 0x00, 0x00,
            // 136: SMB2_PREAUTH_INTEGRITY_CAPABILITIES, DataLength 38
            0x01, 0x00, 0x26, 0x00, 0x00, 0x00, 0x00, 0x00, //
            0x01, 0x00, 0x20, 0x00, 0x01, 0x00, // count 1, salt 32, SHA-512
            0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xAB, 0xAC, 0xAD, 0xAE, 0xAF, //
            0xB0, 0xB1, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xBB, 0xBC, 0xBD, 0xBE, 0xBF, //
            0x00, 0x00, // pad 182 -> 184
            // 184: SMB2_ENCRYPTION_CAPABILITIES, DataLength 4: one cipher, AES-128-GCM
            0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, //
            0x01, 0x00, 0x02, 0x00, //
            0x00, 0x00, 0x00, 0x00, // pad 196 -> 200
            // 200: SMB2_SIGNING_CAPABILITIES, DataLength 4: one algorithm, AES-GMAC (no trailing pad)
            0x08, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, //
            0x01, 0x00, 0x02, 0x00,
        ];
        msg.extend_from_slice(body);
        msg
    }

    #[test]
    fn decodes_hand_built_311_response() {
        let msg = hand_built_response();
        let resp = NegotiateResponse::decode(&msg).unwrap();
        assert_eq!(resp.dialect, Dialect::Smb311);
        assert_eq!(resp.security_mode, SECURITY_SIGNING_ENABLED);
        assert_eq!(resp.server_guid, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
        assert_eq!(resp.capabilities & CAP_ENCRYPTION, CAP_ENCRYPTION);
        assert_eq!(resp.capabilities & CAP_PERSISTENT_HANDLES, 0);
        assert_eq!(resp.max_read_size, 8 * 1024 * 1024);
        assert_eq!(resp.system_time, 116_444_736_000_000_000);
        assert_eq!(resp.security_buffer, [0x60, 0x48, 0x06, 0x06, 0x2B, 0x06]);
        let (hashes, salt) = resp.preauth().unwrap();
        assert_eq!(hashes, &[HASH_SHA512]);
        assert_eq!(salt.len(), 32);
        assert_eq!(salt[0], 0xA0);
        assert_eq!(salt[31], 0xBF);
        assert_eq!(resp.cipher(), Some(CipherId::Aes128Gcm));
        assert_eq!(resp.signing_algorithm(), Some(SigningAlgorithmId::AesGmac));

        // Our encoder produces the same layout byte for byte.
        let mut again = with_header(Command::Negotiate);
        resp.encode(&mut again);
        assert_eq!(again, msg);
    }

    #[test]
    fn response_round_trip_without_contexts() {
        let resp = NegotiateResponse {
            security_mode: SECURITY_SIGNING_ENABLED | SECURITY_SIGNING_REQUIRED,
            dialect: Dialect::Smb302,
            server_guid: [3; 16],
            capabilities: CAP_LARGE_MTU,
            max_transact_size: 65536,
            max_read_size: 65536,
            max_write_size: 65536,
            system_time: 1,
            server_start_time: 2,
            security_buffer: vec![],
            contexts: vec![],
        };
        let mut msg = with_header(Command::Negotiate);
        resp.encode(&mut msg);
        assert_eq!(msg.len(), 64 + 65);
        assert_eq!(NegotiateResponse::decode(&msg).unwrap(), resp);
    }

    #[test]
    fn contexts_ignored_below_311() {
        // The same bytes with dialect 3.0.2: count/offset fields are Reserved.
        let mut msg = hand_built_response();
        msg[68] = 0x02;
        let resp = NegotiateResponse::decode(&msg).unwrap();
        assert_eq!(resp.dialect, Dialect::Smb302);
        assert!(resp.contexts.is_empty());
        assert_eq!(resp.cipher(), None);
    }

    #[test]
    fn rejects_wildcard_dialect_and_smb1() {
        let mut msg = hand_built_response();
        msg[68] = 0xFF;
        msg[69] = 0x02;
        assert!(matches!(NegotiateResponse::decode(&msg), Err(WireError::Invalid { .. })));
        let mut smb1 = hand_built_response();
        smb1[..4].copy_from_slice(&[0xFF, b'S', b'M', b'B']);
        assert_eq!(NegotiateResponse::decode(&smb1), Err(WireError::Smb1));
        assert_eq!(NegotiateRequest::decode(&smb1), Err(WireError::Smb1));
    }

    #[test]
    fn truncated_inputs_fail() {
        let msg = hand_built_response();
        for cut in [0, 63, 64, 66, 100, 127, 130, 140, 180, 190, msg.len() - 1] {
            assert!(NegotiateResponse::decode(&msg[..cut]).is_err(), "cut at {cut}");
        }
        let mut req = with_header(Command::Negotiate);
        sample_request().encode(&mut req);
        for cut in [64, 99, 101, 105, 113, req.len() - 1] {
            assert!(NegotiateRequest::decode(&req[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn offsets_outside_message_fail() {
        let mut msg = hand_built_response();
        msg[120] = 0xF0; // SecurityBufferOffset 240, past the end
        assert!(matches!(NegotiateResponse::decode(&msg), Err(WireError::BadOffset { .. })));

        let mut msg = hand_built_response();
        msg[124..128].copy_from_slice(&0xFFFF_FFF8u32.to_le_bytes()); // context offset far outside
        assert!(matches!(NegotiateResponse::decode(&msg), Err(WireError::BadOffset { .. })));

        let mut msg = hand_built_response();
        msg[124] = 0x89; // misaligned context offset
        assert!(matches!(NegotiateResponse::decode(&msg), Err(WireError::Invalid { .. })));

        let mut msg = hand_built_response();
        msg[138] = 0xFF; // preauth DataLength runs past the end
        assert!(matches!(NegotiateResponse::decode(&msg), Err(WireError::Truncated { .. })));

        let mut msg = hand_built_response();
        msg[146] = 0xFF; // preauth SaltLength larger than the context data
        assert!(NegotiateResponse::decode(&msg).is_err());
    }

    #[test]
    fn huge_context_count_with_short_buffer_is_an_error() {
        let mut msg = hand_built_response();
        msg[70..72].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(NegotiateResponse::decode(&msg), Err(WireError::Truncated { .. })));

        // Same for a request claiming 65535 contexts, and for a cipher count of 65535.
        let mut req = with_header(Command::Negotiate);
        sample_request().encode(&mut req);
        req[96..98].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(NegotiateRequest::decode(&req), Err(WireError::Truncated { .. })));
        let mut msg = hand_built_response();
        msg[192..194].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(NegotiateResponse::decode(&msg), Err(WireError::Truncated { .. })));
    }

    #[test]
    fn netname_tolerates_terminator() {
        let mut data = utf16le("srv");
        data.extend_from_slice(&[0, 0]);
        assert_eq!(
            NegotiateContext::decode(CTX_NETNAME, &data).unwrap(),
            NegotiateContext::NetnameNegotiate { netname: "srv".into() }
        );
        assert!(NegotiateContext::decode(CTX_NETNAME, &[0x41]).is_err());
    }
}
