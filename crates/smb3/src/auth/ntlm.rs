//! NTLMv2 client (MS-NLMP): the three messages, the NTLMv2 response, key
//! exchange, the AUTHENTICATE MIC and the GSS MIC used by SPNEGO.
//!
//! LM and NTLMv1 are never produced: a server that cannot do NTLMv2 with
//! extended session security and 128-bit keys is refused.

use hmac::{Hmac, Mac};
use md4::{Digest, Md4};
use md5::Md5;
use rand::RngCore;
use rc4::consts::U16;
use rc4::{KeyInit, Rc4, StreamCipher};

use super::AuthError;
use crate::wire::cursor::{from_utf16le, utf16le, Reader, Writer};
use crate::Secret;

pub const NTLMSSP_SIGNATURE: [u8; 8] = *b"NTLMSSP\0";

const MESSAGE_NEGOTIATE: u32 = 1;
const MESSAGE_CHALLENGE: u32 = 2;
const MESSAGE_AUTHENTICATE: u32 = 3;

/// NEGOTIATE flags (MS-NLMP 2.2.2.5).
pub mod flags {
    pub const UNICODE: u32 = 0x0000_0001;
    pub const OEM: u32 = 0x0000_0002;
    pub const REQUEST_TARGET: u32 = 0x0000_0004;
    pub const SIGN: u32 = 0x0000_0010;
    pub const SEAL: u32 = 0x0000_0020;
    pub const LM_KEY: u32 = 0x0000_0080;
    pub const NTLM: u32 = 0x0000_0200;
    pub const ANONYMOUS: u32 = 0x0000_0800;
    pub const ALWAYS_SIGN: u32 = 0x0000_8000;
    pub const TARGET_TYPE_DOMAIN: u32 = 0x0001_0000;
    pub const TARGET_TYPE_SERVER: u32 = 0x0002_0000;
    pub const EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
    pub const TARGET_INFO: u32 = 0x0080_0000;
    pub const VERSION: u32 = 0x0200_0000;
    pub const NEGOTIATE_128: u32 = 0x2000_0000;
    pub const KEY_EXCH: u32 = 0x4000_0000;
    pub const NEGOTIATE_56: u32 = 0x8000_0000;
}

/// What our NEGOTIATE_MESSAGE asks for.
pub const CLIENT_FLAGS: u32 = flags::UNICODE
    | flags::REQUEST_TARGET
    | flags::SIGN
    | flags::SEAL
    | flags::NTLM
    | flags::ALWAYS_SIGN
    | flags::EXTENDED_SESSIONSECURITY
    | flags::VERSION
    | flags::NEGOTIATE_128
    | flags::KEY_EXCH
    | flags::NEGOTIATE_56;

/// What the server's CHALLENGE must grant for NTLMv2 with full-strength keys.
pub const REQUIRED_SERVER_FLAGS: u32 =
    flags::UNICODE | flags::EXTENDED_SESSIONSECURITY | flags::TARGET_INFO | flags::NEGOTIATE_128;

/// Our VERSION structure (MS-NLMP 2.2.2.10): informational only; the last
/// byte is NTLMSSP_REVISION_W2K3, which is what matters.
pub const CLIENT_VERSION: [u8; 8] = [10, 0, 0, 0, 0, 0, 0, 0x0F];

/// Upper bound on AV pairs in a CHALLENGE's TargetInfo; Windows sends about 8.
pub const MAX_AV_PAIRS: usize = 64;

/// MsvAvFlags bit: the AUTHENTICATE carries a MIC (MS-NLMP 2.2.2.1).
const AV_FLAG_MIC_PRESENT: u32 = 0x0000_0002;

/// Offset of the MIC in AUTHENTICATE_MESSAGE: after the 64-byte fixed part and Version.
pub const MIC_OFFSET: usize = 72;

/// Length of the NTLMv2_CLIENT_CHALLENGE header before its AV pairs.
const CLIENT_CHALLENGE_HEADER: usize = 28;

type HmacMd5 = Hmac<Md5>;

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut mac = <HmacMd5 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn rc4_once(key: &[u8; 16], data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    Rc4::<U16>::new(key.into()).apply_keystream(&mut out);
    out
}

fn malformed(what: &'static str, why: impl Into<String>) -> AuthError {
    AuthError::Malformed { what, why: why.into() }
}

/// Constant-time equality for MACs.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// NTOWFv2 (MS-NLMP 3.3.2): HMAC_MD5(MD4(UNICODE(Passwd)), UNICODE(Uppercase(User) || UserDom)).
/// Also LMOWFv2, which is defined identically.
pub fn ntowfv2(password: &Secret, user: &str, domain: &str) -> [u8; 16] {
    let nt_hash: [u8; 16] = Md4::digest(utf16le(password.expose())).into();
    let identity = utf16le(&(user.to_uppercase() + domain));
    hmac_md5(&nt_hash, &[&identity])
}

/// LMv2 response (MS-NLMP 3.3.2): HMAC_MD5(ResponseKeyLM, ServerChallenge || ClientChallenge) || ClientChallenge.
pub fn lmv2_response(response_key: &[u8; 16], server_challenge: &[u8; 8], client_challenge: &[u8; 8]) -> [u8; 24] {
    let proof = hmac_md5(response_key, &[server_challenge, client_challenge]);
    let mut out = [0u8; 24];
    out[..16].copy_from_slice(&proof);
    out[16..].copy_from_slice(client_challenge);
    out
}

/// The NTLMv2 `temp` blob (MS-NLMP 3.3.2; NTLMv2_CLIENT_CHALLENGE 2.2.2.7)
/// around already-encoded AV pairs (which end with MsvAvEOL).
pub fn ntlmv2_client_blob(timestamp: u64, client_challenge: &[u8; 8], av_pairs: &[u8]) -> Vec<u8> {
    let mut temp = Vec::with_capacity(CLIENT_CHALLENGE_HEADER + av_pairs.len() + 4);
    temp.put_bytes(&[1, 1]); // RespType, HiRespType
    temp.put_zeros(6);
    temp.put_u64(timestamp);
    temp.put_bytes(client_challenge);
    temp.put_zeros(4);
    temp.put_bytes(av_pairs);
    temp.put_zeros(4);
    temp
}

/// NTLMv2 response (MS-NLMP 3.3.2): returns (NtChallengeResponse = NTProofStr || temp, SessionBaseKey).
pub fn ntlmv2_response(response_key: &[u8; 16], server_challenge: &[u8; 8], temp: &[u8]) -> (Vec<u8>, [u8; 16]) {
    let nt_proof = hmac_md5(response_key, &[server_challenge, temp]);
    let session_base_key = hmac_md5(response_key, &[&nt_proof]);
    let mut response = nt_proof.to_vec();
    response.extend_from_slice(temp);
    (response, session_base_key)
}

const CLIENT_SIGN_MAGIC: &[u8] = b"session key to client-to-server signing key magic constant\0";
const SERVER_SIGN_MAGIC: &[u8] = b"session key to server-to-client signing key magic constant\0";
const CLIENT_SEAL_MAGIC: &[u8] = b"session key to client-to-server sealing key magic constant\0";
const SERVER_SEAL_MAGIC: &[u8] = b"session key to server-to-client sealing key magic constant\0";

/// Which end of the NTLM session a key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// SIGNKEY (MS-NLMP 3.4.5.2) for messages sent by `sender`.
pub fn signing_key(exported_session_key: &[u8; 16], sender: Role) -> [u8; 16] {
    let magic = if sender == Role::Client { CLIENT_SIGN_MAGIC } else { SERVER_SIGN_MAGIC };
    Md5::new().chain_update(exported_session_key).chain_update(magic).finalize().into()
}

/// SEALKEY (MS-NLMP 3.4.5.3, extended session security) for messages sent by `sender`.
pub fn sealing_key(exported_session_key: &[u8; 16], negotiated_flags: u32, sender: Role) -> [u8; 16] {
    let strength = if negotiated_flags & flags::NEGOTIATE_128 != 0 {
        16
    } else if negotiated_flags & flags::NEGOTIATE_56 != 0 {
        7
    } else {
        5
    };
    let magic = if sender == Role::Client { CLIENT_SEAL_MAGIC } else { SERVER_SEAL_MAGIC };
    Md5::new().chain_update(&exported_session_key[..strength]).chain_update(magic).finalize().into()
}

/// Windows FILETIME now: 100 ns ticks since 1601-01-01 UTC.
fn filetime_now() -> u64 {
    const UNIX_EPOCH_AS_FILETIME: u64 = 116_444_736_000_000_000;
    let since_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    UNIX_EPOCH_AS_FILETIME + since_unix.as_secs() * 10_000_000 + u64::from(since_unix.subsec_nanos() / 100)
}

/// AV_PAIR ids (MS-NLMP 2.2.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AvId {
    Eol,
    NbComputerName,
    NbDomainName,
    DnsComputerName,
    DnsDomainName,
    DnsTreeName,
    Flags,
    Timestamp,
    SingleHost,
    TargetName,
    ChannelBindings,
    Unknown(u16),
}

impl AvId {
    pub fn code(self) -> u16 {
        match self {
            AvId::Eol => 0,
            AvId::NbComputerName => 1,
            AvId::NbDomainName => 2,
            AvId::DnsComputerName => 3,
            AvId::DnsDomainName => 4,
            AvId::DnsTreeName => 5,
            AvId::Flags => 6,
            AvId::Timestamp => 7,
            AvId::SingleHost => 8,
            AvId::TargetName => 9,
            AvId::ChannelBindings => 10,
            AvId::Unknown(c) => c,
        }
    }

    pub fn from_code(c: u16) -> Self {
        match c {
            0 => AvId::Eol,
            1 => AvId::NbComputerName,
            2 => AvId::NbDomainName,
            3 => AvId::DnsComputerName,
            4 => AvId::DnsDomainName,
            5 => AvId::DnsTreeName,
            6 => AvId::Flags,
            7 => AvId::Timestamp,
            8 => AvId::SingleHost,
            9 => AvId::TargetName,
            10 => AvId::ChannelBindings,
            c => AvId::Unknown(c),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AvPair {
    pub id: AvId,
    pub value: Vec<u8>,
}

/// Decodes AV pairs up to MsvAvEOL (bytes after it are ignored).
pub fn decode_av_pairs(bytes: &[u8]) -> Result<Vec<AvPair>, AuthError> {
    let mut r = Reader::new(bytes);
    let mut pairs = Vec::new();
    loop {
        let id = AvId::from_code(r.u16("AV pair id")?);
        let len = usize::from(r.u16("AV pair length")?);
        let value = r.take(len, "AV pair value")?;
        if id == AvId::Eol {
            return Ok(pairs);
        }
        if pairs.len() == MAX_AV_PAIRS {
            return Err(malformed("target info", format!("more than {MAX_AV_PAIRS} AV pairs")));
        }
        pairs.push(AvPair { id, value: value.to_vec() });
    }
}

/// Encodes AV pairs and the terminating MsvAvEOL.
pub fn encode_av_pairs(pairs: &[AvPair], out: &mut Vec<u8>) {
    for p in pairs.iter().filter(|p| p.id != AvId::Eol) {
        out.put_u16(p.id.code());
        out.put_u16(p.value.len() as u16);
        out.put_bytes(&p.value);
    }
    out.put_u32(0);
}

fn find_av(pairs: &[AvPair], id: AvId) -> Option<&AvPair> {
    pairs.iter().find(|p| p.id == id)
}

/// Appends a (len, maxlen, offset) field descriptor whose payload goes at `payload_at`.
fn put_field(out: &mut Vec<u8>, len: usize, payload_at: usize) {
    out.put_u16(len as u16);
    out.put_u16(len as u16);
    out.put_u32(payload_at as u32);
}

/// Reads a field descriptor and returns the payload it points at.
fn read_field<'a>(r: &mut Reader<'a>, what: &'static str) -> Result<&'a [u8], AuthError> {
    let len = usize::from(r.u16(what)?);
    let _max_len = r.u16(what)?;
    let offset = r.u32(what)? as usize;
    Ok(r.slice_at(offset, len, what)?)
}

fn expect_header(r: &mut Reader<'_>, message_type: u32, what: &'static str) -> Result<(), AuthError> {
    if r.array::<8>("NTLMSSP signature")? != NTLMSSP_SIGNATURE {
        return Err(malformed(what, "bad NTLMSSP signature"));
    }
    let got = r.u32("NTLM message type")?;
    if got != message_type {
        return Err(malformed(what, format!("message type {got}, expected {message_type}")));
    }
    Ok(())
}

/// NEGOTIATE_MESSAGE (MS-NLMP 2.2.1.1) without domain or workstation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NegotiateMessage {
    pub flags: u32,
    pub version: [u8; 8],
}

impl NegotiateMessage {
    pub const LEN: usize = 40;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.put_bytes(&NTLMSSP_SIGNATURE);
        out.put_u32(MESSAGE_NEGOTIATE);
        out.put_u32(self.flags);
        put_field(&mut out, 0, Self::LEN); // DomainNameFields
        put_field(&mut out, 0, Self::LEN); // WorkstationFields
        out.put_bytes(&self.version);
        out
    }

    pub fn decode(msg: &[u8]) -> Result<Self, AuthError> {
        let mut r = Reader::new(msg);
        expect_header(&mut r, MESSAGE_NEGOTIATE, "NTLM NEGOTIATE")?;
        let flags = r.u32("negotiate flags")?;
        read_field(&mut r, "negotiate domain")?;
        read_field(&mut r, "negotiate workstation")?;
        let version = if flags & flags::VERSION != 0 { r.array::<8>("version")? } else { [0; 8] };
        Ok(NegotiateMessage { flags, version })
    }
}

/// CHALLENGE_MESSAGE (MS-NLMP 2.2.1.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChallengeMessage {
    pub flags: u32,
    pub server_challenge: [u8; 8],
    /// Raw TargetName (UTF-16LE when UNICODE is negotiated); informational.
    pub target_name: Vec<u8>,
    pub target_info: Vec<AvPair>,
    pub version: Option<[u8; 8]>,
}

impl ChallengeMessage {
    pub fn encode(&self) -> Vec<u8> {
        let mut target_info = Vec::new();
        if !self.target_info.is_empty() {
            encode_av_pairs(&self.target_info, &mut target_info);
        }
        let header = 48 + if self.version.is_some() { 8 } else { 0 };
        let mut out = Vec::with_capacity(header + self.target_name.len() + target_info.len());
        out.put_bytes(&NTLMSSP_SIGNATURE);
        out.put_u32(MESSAGE_CHALLENGE);
        put_field(&mut out, self.target_name.len(), header);
        out.put_u32(self.flags);
        out.put_bytes(&self.server_challenge);
        out.put_zeros(8);
        put_field(&mut out, target_info.len(), header + self.target_name.len());
        if let Some(v) = self.version {
            out.put_bytes(&v);
        }
        out.put_bytes(&self.target_name);
        out.put_bytes(&target_info);
        out
    }

    pub fn decode(msg: &[u8]) -> Result<Self, AuthError> {
        let mut r = Reader::new(msg);
        expect_header(&mut r, MESSAGE_CHALLENGE, "NTLM CHALLENGE")?;
        let target_name = read_field(&mut r, "challenge target name")?.to_vec();
        let flags = r.u32("challenge flags")?;
        let server_challenge = r.array::<8>("server challenge")?;
        r.skip(8, "challenge reserved")?;
        let target_info_bytes = read_field(&mut r, "challenge target info")?;
        let version = if flags & flags::VERSION != 0 { Some(r.array::<8>("challenge version")?) } else { None };
        let target_info = if target_info_bytes.is_empty() { Vec::new() } else { decode_av_pairs(target_info_bytes)? };
        Ok(ChallengeMessage { flags, server_challenge, target_name, target_info, version })
    }
}

/// AUTHENTICATE_MESSAGE (MS-NLMP 2.2.1.3), Unicode strings.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthenticateMessage {
    pub flags: u32,
    pub lm_response: Vec<u8>,
    pub nt_response: Vec<u8>,
    pub domain: String,
    pub user: String,
    pub workstation: String,
    pub encrypted_session_key: Vec<u8>,
    pub version: [u8; 8],
    /// Present when the NTLMv2 response's MsvAvFlags announces it; then it
    /// sits at [`MIC_OFFSET`] and the payload starts after it.
    pub mic: Option<[u8; 16]>,
}

impl std::fmt::Debug for AuthenticateMessage {
    // Responses and the encrypted key are password-guessing material: lengths only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthenticateMessage")
            .field("flags", &format_args!("0x{:08x}", self.flags))
            .field("lm_response_len", &self.lm_response.len())
            .field("nt_response_len", &self.nt_response.len())
            .field("domain", &self.domain)
            .field("user", &self.user)
            .field("workstation", &self.workstation)
            .field("encrypted_session_key_len", &self.encrypted_session_key.len())
            .field("mic", &self.mic.is_some())
            .finish()
    }
}

impl AuthenticateMessage {
    pub fn encode(&self) -> Vec<u8> {
        let domain = utf16le(&self.domain);
        let user = utf16le(&self.user);
        let workstation = utf16le(&self.workstation);
        // Payload order as Windows and the MS-NLMP 4.2.4.3 example lay it out.
        let payload: [&[u8]; 6] =
            [&domain, &user, &workstation, &self.lm_response, &self.nt_response, &self.encrypted_session_key];
        let mut at = MIC_OFFSET + if self.mic.is_some() { 16 } else { 0 };
        let mut offsets = [0usize; 6];
        for (o, p) in offsets.iter_mut().zip(payload) {
            *o = at;
            at += p.len();
        }
        let mut out = Vec::with_capacity(at);
        out.put_bytes(&NTLMSSP_SIGNATURE);
        out.put_u32(MESSAGE_AUTHENTICATE);
        put_field(&mut out, self.lm_response.len(), offsets[3]);
        put_field(&mut out, self.nt_response.len(), offsets[4]);
        put_field(&mut out, domain.len(), offsets[0]);
        put_field(&mut out, user.len(), offsets[1]);
        put_field(&mut out, workstation.len(), offsets[2]);
        put_field(&mut out, self.encrypted_session_key.len(), offsets[5]);
        out.put_u32(self.flags);
        out.put_bytes(&self.version);
        if let Some(mic) = self.mic {
            out.put_bytes(&mic);
        }
        for p in payload {
            out.put_bytes(p);
        }
        out
    }

    pub fn decode(msg: &[u8]) -> Result<Self, AuthError> {
        let mut r = Reader::new(msg);
        expect_header(&mut r, MESSAGE_AUTHENTICATE, "NTLM AUTHENTICATE")?;
        let lm_response = read_field(&mut r, "LM response")?.to_vec();
        let nt_response = read_field(&mut r, "NT response")?.to_vec();
        let domain = from_utf16le(read_field(&mut r, "domain")?, "domain")?;
        let user = from_utf16le(read_field(&mut r, "user")?, "user")?;
        let workstation = from_utf16le(read_field(&mut r, "workstation")?, "workstation")?;
        let encrypted_session_key = read_field(&mut r, "encrypted session key")?.to_vec();
        let flags = r.u32("authenticate flags")?;
        let version = r.array::<8>("authenticate version")?;
        // The MIC's presence is announced inside the NTLMv2 response (MS-NLMP 3.2.5.1.2).
        let mic_announced = nt_response.len() > 16 + CLIENT_CHALLENGE_HEADER
            && decode_av_pairs(&nt_response[16 + CLIENT_CHALLENGE_HEADER..])
                .ok()
                .and_then(|pairs| find_av(&pairs, AvId::Flags).map(|p| p.value.clone()))
                .is_some_and(|v| {
                    v.len() == 4 && u32::from_le_bytes([v[0], v[1], v[2], v[3]]) & AV_FLAG_MIC_PRESENT != 0
                });
        let mic = if mic_announced { Some(r.array::<16>("MIC")?) } else { None };
        Ok(AuthenticateMessage {
            flags,
            lm_response,
            nt_response,
            domain,
            user,
            workstation,
            encrypted_session_key,
            version,
            mic,
        })
    }
}

/// One direction of NTLM session security: signing key, RC4 sealing handle
/// (continuous across messages) and sequence number.
struct DirectionKeys {
    signing_key: [u8; 16],
    sealing: Rc4<U16>,
    seq: u32,
}

impl DirectionKeys {
    fn new(exported_session_key: &[u8; 16], negotiated_flags: u32, sender: Role) -> Self {
        let seal = sealing_key(exported_session_key, negotiated_flags, sender);
        DirectionKeys {
            signing_key: signing_key(exported_session_key, sender),
            sealing: Rc4::<U16>::new(&seal.into()),
            seq: 0,
        }
    }

    /// NTLMSSP_MESSAGE_SIGNATURE with extended session security (MS-NLMP 3.4.4.2).
    fn signature(&mut self, data: &[u8], key_exch: bool) -> [u8; 16] {
        let seq = self.seq;
        self.seq = seq.wrapping_add(1);
        let mac = hmac_md5(&self.signing_key, &[&seq.to_le_bytes(), data]);
        let mut checksum = [0u8; 8];
        checksum.copy_from_slice(&mac[..8]);
        if key_exch {
            self.sealing.apply_keystream(&mut checksum);
        }
        let mut sig = [0u8; 16];
        sig[..4].copy_from_slice(&1u32.to_le_bytes());
        sig[4..12].copy_from_slice(&checksum);
        sig[12..].copy_from_slice(&seq.to_le_bytes());
        sig
    }
}

/// NTLM session security for one end (MS-NLMP 3.4): outbound and inbound keys.
pub struct SessionSecurity {
    outbound: DirectionKeys,
    inbound: DirectionKeys,
    key_exch: bool,
}

impl std::fmt::Debug for SessionSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSecurity")
            .field("keys", &"<redacted>")
            .field("outbound_seq", &self.outbound.seq)
            .field("inbound_seq", &self.inbound.seq)
            .finish()
    }
}

impl SessionSecurity {
    pub fn new(exported_session_key: &[u8; 16], negotiated_flags: u32, role: Role) -> Self {
        let peer = if role == Role::Client { Role::Server } else { Role::Client };
        SessionSecurity {
            outbound: DirectionKeys::new(exported_session_key, negotiated_flags, role),
            inbound: DirectionKeys::new(exported_session_key, negotiated_flags, peer),
            key_exch: negotiated_flags & flags::KEY_EXCH != 0,
        }
    }

    /// GSS_GetMIC for the next outbound message.
    pub fn sign(&mut self, data: &[u8]) -> [u8; 16] {
        self.outbound.signature(data, self.key_exch)
    }

    /// GSS_VerifyMIC for the next inbound message.
    pub fn verify(&mut self, data: &[u8], mic: &[u8]) -> Result<(), AuthError> {
        let expected = self.inbound.signature(data, self.key_exch);
        if ct_eq(&expected, mic) {
            Ok(())
        } else {
            Err(AuthError::BadServerMic)
        }
    }

    /// GSS_WrapEx with confidentiality (MS-NLMP 3.4.3): seals `data` in place
    /// and returns the signature over the plaintext.
    pub fn wrap(&mut self, data: &mut [u8]) -> [u8; 16] {
        let plaintext = data.to_vec();
        self.outbound.sealing.apply_keystream(data);
        self.outbound.signature(&plaintext, self.key_exch)
    }
}

#[derive(Clone, Debug)]
pub struct NtlmCredentials {
    pub user: String,
    pub domain: String,
    pub password: Secret,
    pub workstation: String,
}

/// Inputs normally random or taken from the clock, fixed by known-answer tests.
#[derive(Clone)]
#[cfg_attr(not(test), allow(dead_code))]
struct FixedInputs {
    client_challenge: [u8; 8],
    timestamp: u64,
    exported_session_key: [u8; 16],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NtlmState {
    Initial,
    NegotiateSent,
    Authenticated,
}

/// NTLMv2 client context. `Debug` shows no key material.
pub struct NtlmClient {
    /// None for anonymous.
    creds: Option<NtlmCredentials>,
    target_spn: Option<String>,
    state: NtlmState,
    negotiate: Vec<u8>,
    exported_session_key: Option<[u8; 16]>,
    security: Option<SessionSecurity>,
    fixed: Option<FixedInputs>,
}

impl std::fmt::Debug for NtlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NtlmClient")
            .field("user", &self.creds.as_ref().map(|c| (&c.domain, &c.user)))
            .field("target_spn", &self.target_spn)
            .field("state", &self.state)
            .field("session_key", &self.exported_session_key.map(|_| "<redacted>"))
            .finish()
    }
}

impl NtlmClient {
    /// A client for `creds`; an empty user with an empty password is anonymous.
    pub fn new(creds: NtlmCredentials) -> NtlmClient {
        let anonymous = creds.user.is_empty() && creds.password.is_empty();
        NtlmClient {
            creds: if anonymous { None } else { Some(creds) },
            target_spn: None,
            state: NtlmState::Initial,
            negotiate: Vec::new(),
            exported_session_key: None,
            security: None,
            fixed: None,
        }
    }

    /// Anonymous authentication (MS-NLMP 3.2.5.1.2 null session): empty user,
    /// LmChallengeResponse Z(1) and an empty NtChallengeResponse as MS-NLMP
    /// 3.3.2 prescribes; no session key.
    pub fn anonymous() -> NtlmClient {
        NtlmClient::new(NtlmCredentials {
            user: String::new(),
            domain: String::new(),
            password: Secret::default(),
            workstation: String::new(),
        })
    }

    /// Adds MsvAvTargetName "cifs/<host>" to the NTLMv2 response.
    pub fn with_target_host(mut self, host: &str) -> NtlmClient {
        self.target_spn = Some(format!("cifs/{host}"));
        self
    }

    #[cfg(test)]
    pub(crate) fn with_fixed_inputs(
        creds: NtlmCredentials,
        client_challenge: [u8; 8],
        timestamp: u64,
        exported_session_key: [u8; 16],
    ) -> NtlmClient {
        let mut c = NtlmClient::new(creds);
        c.fixed = Some(FixedInputs { client_challenge, timestamp, exported_session_key });
        c
    }

    pub fn is_anonymous(&self) -> bool {
        self.creds.is_none()
    }

    /// NEGOTIATE_MESSAGE with [`CLIENT_FLAGS`]; remembered for the MIC.
    pub fn negotiate_message(&mut self) -> Vec<u8> {
        self.negotiate = NegotiateMessage { flags: CLIENT_FLAGS, version: CLIENT_VERSION }.encode();
        self.state = NtlmState::NegotiateSent;
        self.negotiate.clone()
    }

    /// Parses the CHALLENGE_MESSAGE and builds the NTLMv2 AUTHENTICATE_MESSAGE
    /// (MS-NLMP 3.1.5.1.2, 3.3.2). The MIC (and MsvAvFlags) is added, and the
    /// LMv2 response zeroed, when the server sent MsvAvTimestamp.
    pub fn authenticate_message(&mut self, challenge: &[u8]) -> Result<Vec<u8>, AuthError> {
        match self.state {
            NtlmState::Initial => return Err(AuthError::OutOfOrder("AUTHENTICATE requested before NEGOTIATE")),
            NtlmState::Authenticated => return Err(AuthError::OutOfOrder("AUTHENTICATE already built")),
            NtlmState::NegotiateSent => {}
        }
        let chal = ChallengeMessage::decode(challenge)?;
        let missing = REQUIRED_SERVER_FLAGS & !chal.flags;
        if missing != 0 {
            return Err(AuthError::UnsupportedFlags { server_flags: chal.flags, missing });
        }
        let mut negotiated = (CLIENT_FLAGS & chal.flags) | flags::REQUEST_TARGET | flags::TARGET_INFO;

        let Some(creds) = self.creds.clone() else {
            negotiated = (negotiated | flags::ANONYMOUS) & !flags::KEY_EXCH;
            let msg = AuthenticateMessage {
                flags: negotiated,
                lm_response: vec![0],
                nt_response: Vec::new(),
                domain: String::new(),
                user: String::new(),
                workstation: String::new(),
                encrypted_session_key: Vec::new(),
                version: CLIENT_VERSION,
                mic: None,
            };
            self.state = NtlmState::Authenticated;
            return Ok(msg.encode());
        };

        // MS-NLMP 3.1.5.1.2: without both NetBIOS names, signing/sealing is refused.
        if find_av(&chal.target_info, AvId::NbComputerName).is_none()
            || find_av(&chal.target_info, AvId::NbDomainName).is_none()
        {
            return Err(malformed("NTLM CHALLENGE", "target info lacks the NetBIOS computer or domain name"));
        }
        let server_timestamp = match find_av(&chal.target_info, AvId::Timestamp) {
            Some(p) => Some(u64::from_le_bytes(
                p.value.as_slice().try_into().map_err(|_| malformed("MsvAvTimestamp", "not 8 bytes"))?,
            )),
            None => None,
        };
        let with_mic = server_timestamp.is_some();

        let mut pairs = chal.target_info.clone();
        if with_mic {
            match pairs.iter_mut().find(|p| p.id == AvId::Flags) {
                Some(p) => {
                    let v: [u8; 4] =
                        p.value.as_slice().try_into().map_err(|_| malformed("MsvAvFlags", "not 4 bytes"))?;
                    p.value = (u32::from_le_bytes(v) | AV_FLAG_MIC_PRESENT).to_le_bytes().to_vec();
                }
                None => pairs.push(AvPair { id: AvId::Flags, value: AV_FLAG_MIC_PRESENT.to_le_bytes().to_vec() }),
            }
        }
        if let Some(spn) = &self.target_spn {
            if find_av(&pairs, AvId::TargetName).is_none() {
                pairs.push(AvPair { id: AvId::TargetName, value: utf16le(spn) });
            }
        }
        let mut av_bytes = Vec::new();
        encode_av_pairs(&pairs, &mut av_bytes);

        let (client_challenge, now, random_key) = match &self.fixed {
            Some(f) => (f.client_challenge, f.timestamp, f.exported_session_key),
            None => {
                let mut cc = [0u8; 8];
                let mut key = [0u8; 16];
                rand::rngs::OsRng.fill_bytes(&mut cc);
                rand::rngs::OsRng.fill_bytes(&mut key);
                (cc, filetime_now(), key)
            }
        };
        let timestamp = server_timestamp.unwrap_or(now);

        let response_key = ntowfv2(&creds.password, &creds.user, &creds.domain);
        let temp = ntlmv2_client_blob(timestamp, &client_challenge, &av_bytes);
        let (nt_response, session_base_key) = ntlmv2_response(&response_key, &chal.server_challenge, &temp);
        // MS-NLMP 3.1.5.1.2: with MsvAvTimestamp the LmChallengeResponse is Z(24).
        let lm_response = if with_mic {
            vec![0u8; 24]
        } else {
            lmv2_response(&response_key, &chal.server_challenge, &client_challenge).to_vec()
        };
        // NTLMv2: KeyExchangeKey is the SessionBaseKey (MS-NLMP 3.4.5.1).
        let (exported, encrypted_session_key) = if negotiated & flags::KEY_EXCH != 0 {
            (random_key, rc4_once(&session_base_key, &random_key))
        } else {
            (session_base_key, Vec::new())
        };

        let msg = AuthenticateMessage {
            flags: negotiated,
            lm_response,
            nt_response,
            domain: creds.domain.clone(),
            user: creds.user.clone(),
            workstation: creds.workstation.clone(),
            encrypted_session_key,
            version: CLIENT_VERSION,
            mic: with_mic.then_some([0u8; 16]),
        };
        let mut out = msg.encode();
        if with_mic {
            let mic = hmac_md5(&exported, &[&self.negotiate, challenge, &out]);
            out[MIC_OFFSET..MIC_OFFSET + 16].copy_from_slice(&mic);
        }
        self.exported_session_key = Some(exported);
        self.security = Some(SessionSecurity::new(&exported, negotiated, Role::Client));
        self.state = NtlmState::Authenticated;
        Ok(out)
    }

    /// The exported session key after authenticate_message (None for anonymous).
    pub fn session_key(&self) -> Option<[u8; 16]> {
        self.exported_session_key
    }

    /// NTLM GSS MIC (MS-NLMP 3.4.4.2) over `data` with the client signing key
    /// and sealing handle; the sequence number starts at 0. Without a session
    /// key (anonymous, or before authenticate_message) there is nothing to
    /// sign with and the result is all zeros, which no peer accepts.
    pub fn sign_mic(&mut self, data: &[u8]) -> [u8; 16] {
        match &mut self.security {
            Some(s) => s.sign(data),
            None => [0u8; 16],
        }
    }

    /// Verifies the server's GSS MIC over `data` (server-to-client keys).
    pub fn verify_mic(&mut self, data: &[u8], mic: &[u8]) -> Result<(), AuthError> {
        match &mut self.security {
            Some(s) => s.verify(data, mic),
            None => Err(AuthError::NoSessionKey),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    fn spec_creds() -> NtlmCredentials {
        NtlmCredentials {
            user: "User".into(),
            domain: "Domain".into(),
            password: Secret::new("Password"),
            workstation: "COMPUTER".into(),
        }
    }

    const SERVER_CHALLENGE: [u8; 8] = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
    const CLIENT_CHALLENGE: [u8; 8] = [0xaa; 8];
    const RANDOM_SESSION_KEY: [u8; 16] = [0x55; 16];

    /// MS-NLMP 4.2.4.3 CHALLENGE_MESSAGE.
    fn spec_challenge() -> Vec<u8> {
        h("4e544c4d53535000 02000000 0c000c00 38000000 33828ae2 0123456789abcdef 0000000000000000
           24002400 44000000 060070170000000f 530065007200760065007200
           02000c0044006f006d00610069006e00 01000c00530065007200760065007200 00000000")
    }

    /// MS-NLMP 4.2.4 target info: NbDomainName "Domain", NbComputerName "Server", EOL.
    const SPEC_TARGET_INFO: &str = "02000c0044006f006d00610069006e0001000c005300650072007600650072000000 0000";

    fn spec_key() -> [u8; 16] {
        ntowfv2(&Secret::new("Password"), "User", "Domain")
    }

    #[test]
    fn ntowfv2_matches_ms_nlmp_4_2_4_1_1() {
        assert_eq!(spec_key().to_vec(), h("0c868a403bfd7a93a3001ef22ef02e3f"));
        // User name is case-insensitive, domain is not.
        assert_eq!(ntowfv2(&Secret::new("Password"), "USER", "Domain"), spec_key());
        assert_ne!(ntowfv2(&Secret::new("Password"), "User", "DOMAIN"), spec_key());
    }

    #[test]
    fn lmv2_response_matches_ms_nlmp_4_2_4_2_1() {
        let lm = lmv2_response(&spec_key(), &SERVER_CHALLENGE, &CLIENT_CHALLENGE);
        assert_eq!(lm.to_vec(), h("86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa"));
    }

    #[test]
    fn ntlmv2_response_and_keys_match_ms_nlmp_4_2_4() {
        let temp = ntlmv2_client_blob(0, &CLIENT_CHALLENGE, &h(SPEC_TARGET_INFO));
        assert_eq!(
            temp,
            h("01010000000000000000000000000000aaaaaaaaaaaaaaaa00000000
               02000c0044006f006d00610069006e0001000c005300650072007600650072000000000000000000")
        );
        let (nt, session_base_key) = ntlmv2_response(&spec_key(), &SERVER_CHALLENGE, &temp);
        assert_eq!(nt[..16].to_vec(), h("68cd0ab851e51c96aabc927bebef6a1c"));
        assert_eq!(&nt[16..], temp.as_slice());
        assert_eq!(session_base_key.to_vec(), h("8de40ccadbc14a82f15cb0ad0de95ca3"));
        // 4.2.4.1.3 key exchange: RC4(KeyExchangeKey = SessionBaseKey, RandomSessionKey).
        assert_eq!(rc4_once(&session_base_key, &RANDOM_SESSION_KEY), h("c5dad2544fc9799094ce1ce90bc9d03e"));
    }

    #[test]
    fn session_security_matches_ms_nlmp_4_2_4_4_wrap_example() {
        let negotiated = 0xe288_8235;
        assert_eq!(signing_key(&RANDOM_SESSION_KEY, Role::Client).to_vec(), h("4788dc861b4782f35d43fd98fe1a2d39"));
        assert_eq!(
            sealing_key(&RANDOM_SESSION_KEY, negotiated, Role::Client).to_vec(),
            h("59f600973cc4960a25480a7c196e4c58")
        );
        let plaintext = utf16le("Plaintext");
        let checksum = hmac_md5(&signing_key(&RANDOM_SESSION_KEY, Role::Client), &[&[0, 0, 0, 0], &plaintext]);
        assert_eq!(checksum[..8].to_vec(), h("70352851f2564309"));

        let mut sec = SessionSecurity::new(&RANDOM_SESSION_KEY, negotiated, Role::Client);
        let mut data = plaintext.clone();
        let sig = sec.wrap(&mut data);
        assert_eq!(data, h("54e50165bf1936dc996020c1811b0f06fb5f"));
        assert_eq!(sig.to_vec(), h("01000000 7fb38ec5c55d4976 00000000"));
    }

    #[test]
    fn challenge_decodes_ms_nlmp_4_2_4_3_bytes() {
        let c = ChallengeMessage::decode(&spec_challenge()).unwrap();
        assert_eq!(c.flags, 0xe28a_8233);
        assert_eq!(c.server_challenge, SERVER_CHALLENGE);
        assert_eq!(from_utf16le(&c.target_name, "t").unwrap(), "Server");
        assert_eq!(
            c.target_info,
            vec![
                AvPair { id: AvId::NbDomainName, value: utf16le("Domain") },
                AvPair { id: AvId::NbComputerName, value: utf16le("Server") },
            ]
        );
        assert_eq!(c.version, Some([0x06, 0x00, 0x70, 0x17, 0, 0, 0, 0x0f]));
        // Our encoder lays it out exactly as the spec does.
        assert_eq!(c.encode(), spec_challenge());
    }

    #[test]
    fn authenticate_matches_ms_nlmp_4_2_4_3_bytes() {
        let mut client = NtlmClient::with_fixed_inputs(spec_creds(), CLIENT_CHALLENGE, 0, RANDOM_SESSION_KEY);
        client.negotiate_message();
        let auth = client.authenticate_message(&spec_challenge()).unwrap();
        let mut expected = h("4e544c4d535350000300000018001800 6c00000054005400840000000c000c00
            48000000080008005400000010001000 5c00000010001000d8000000358288e2
            0501280a0000000f44006f006d006100 69006e00550073006500720043004f00
            4d005000550054004500520086c35097 ac9cec102554764a57cccc19aaaaaaaa
            aaaaaaaa68cd0ab851e51c96aabc927b ebef6a1c010100000000000000000000
            00000000aaaaaaaaaaaaaaaa00000000 02000c0044006f006d00610069006e00
            01000c00530065007200760065007200 0000000000000000c5dad2544fc97990
            94ce1ce90bc9d03e");
        // The spec's client is Windows; only the informational VERSION differs.
        expected[64..72].copy_from_slice(&CLIENT_VERSION);
        assert_eq!(auth, expected);
        assert_eq!(client.session_key(), Some(RANDOM_SESSION_KEY));
    }

    #[test]
    fn negotiate_message_bytes_and_round_trip() {
        let mut client = NtlmClient::new(spec_creds());
        let neg = client.negotiate_message();
        let mut expected = h("4e544c4d53535000 01000000 358208e2 0000000028000000 0000000028000000");
        expected.extend_from_slice(&CLIENT_VERSION);
        assert_eq!(neg, expected);
        let decoded = NegotiateMessage::decode(&neg).unwrap();
        assert_eq!(decoded, NegotiateMessage { flags: CLIENT_FLAGS, version: CLIENT_VERSION });
        assert!(NegotiateMessage::decode(&neg[..39]).is_err());
    }

    /// A Samba-like CHALLENGE: DNS names and MsvAvTimestamp.
    fn challenge_with_timestamp(timestamp: u64) -> ChallengeMessage {
        ChallengeMessage {
            flags: 0xe28a_8235,
            server_challenge: [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88],
            target_name: utf16le("SAMBA"),
            target_info: vec![
                AvPair { id: AvId::NbDomainName, value: utf16le("SAMBA") },
                AvPair { id: AvId::NbComputerName, value: utf16le("FILES") },
                AvPair { id: AvId::DnsDomainName, value: utf16le("samba.example") },
                AvPair { id: AvId::DnsComputerName, value: utf16le("files.samba.example") },
                AvPair { id: AvId::Timestamp, value: timestamp.to_le_bytes().to_vec() },
            ],
            version: Some([6, 1, 0, 0, 0, 0, 0, 15]),
        }
    }

    #[test]
    fn authenticate_with_server_timestamp_carries_a_valid_mic() {
        let server_time = 0x01d9_0000_1234_5678u64;
        let challenge = challenge_with_timestamp(server_time).encode();
        let mut client = NtlmClient::new(spec_creds()).with_target_host("files.samba.example");
        let negotiate = client.negotiate_message();
        let auth_bytes = client.authenticate_message(&challenge).unwrap();
        let auth = AuthenticateMessage::decode(&auth_bytes).unwrap();

        assert_eq!(auth.lm_response, vec![0u8; 24], "LMv2 is Z(24) when the server sent a timestamp");
        assert_eq!((auth.user.as_str(), auth.domain.as_str()), ("User", "Domain"));
        assert_eq!(auth.flags & flags::KEY_EXCH, flags::KEY_EXCH);

        // Server-side check of the NTLMv2 response.
        let (proof, temp) = auth.nt_response.split_at(16);
        assert_eq!(&temp[8..16], &server_time.to_le_bytes(), "server timestamp reused");
        let key = ntowfv2(&Secret::new("Password"), "User", "Domain");
        let (recomputed, session_base_key) =
            ntlmv2_response(&key, &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88], temp);
        assert_eq!(&recomputed[..16], proof);
        let pairs = decode_av_pairs(&temp[CLIENT_CHALLENGE_HEADER..]).unwrap();
        assert_eq!(find_av(&pairs, AvId::Flags).unwrap().value, 2u32.to_le_bytes());
        assert_eq!(find_av(&pairs, AvId::TargetName).unwrap().value, utf16le("cifs/files.samba.example"));
        assert_eq!(pairs.len(), 7);

        // Key exchange and MIC, recomputed as the server does.
        let exported: [u8; 16] = rc4_once(&session_base_key, &auth.encrypted_session_key).try_into().unwrap();
        assert_eq!(client.session_key(), Some(exported));
        let mic = auth.mic.expect("MIC announced and present");
        let mut zeroed = auth_bytes.clone();
        zeroed[MIC_OFFSET..MIC_OFFSET + 16].fill(0);
        assert_eq!(hmac_md5(&exported, &[&negotiate, &challenge, &zeroed]), mic);
    }

    #[test]
    fn authenticate_round_trips_with_and_without_mic() {
        for challenge in [spec_challenge(), challenge_with_timestamp(7).encode()] {
            let mut client = NtlmClient::new(spec_creds());
            client.negotiate_message();
            let bytes = client.authenticate_message(&challenge).unwrap();
            let decoded = AuthenticateMessage::decode(&bytes).unwrap();
            assert_eq!(decoded.encode(), bytes);
            for cut in [0, 8, 12, 40, 63, 71, 80] {
                assert!(AuthenticateMessage::decode(&bytes[..cut]).is_err(), "cut {cut}");
            }
        }
    }

    #[test]
    fn gss_mic_verifies_across_client_and_server() {
        let challenge = challenge_with_timestamp(1).encode();
        let mut client = NtlmClient::new(spec_creds());
        client.negotiate_message();
        client.authenticate_message(&challenge).unwrap();
        let exported = client.session_key().unwrap();
        let negotiated = CLIENT_FLAGS | flags::TARGET_INFO;
        let mut server = SessionSecurity::new(&exported, negotiated, Role::Server);

        let mic0 = client.sign_mic(b"mech types");
        assert_eq!(&mic0[..4], &[1, 0, 0, 0]);
        assert_eq!(&mic0[12..], &[0, 0, 0, 0]);
        server.verify(b"mech types", &mic0).unwrap();
        let mic1 = client.sign_mic(b"mech types");
        assert_eq!(&mic1[12..], &[1, 0, 0, 0], "sequence number advances");
        assert!(server.verify(b"other data", &mic1).is_err());

        let server_mic = server.sign(b"mech types");
        client.verify_mic(b"mech types", &server_mic).unwrap();
        let mut forged = server.sign(b"mech types");
        forged[5] ^= 1;
        assert!(matches!(client.verify_mic(b"mech types", &forged), Err(AuthError::BadServerMic)));
        assert!(matches!(client.verify_mic(b"x", &[1, 2, 3]), Err(AuthError::BadServerMic)));
    }

    #[test]
    fn refuses_servers_without_ntlmv2_flags() {
        for drop in [flags::EXTENDED_SESSIONSECURITY, flags::TARGET_INFO, flags::NEGOTIATE_128, flags::UNICODE] {
            let mut c = challenge_with_timestamp(1);
            c.flags &= !drop;
            let mut client = NtlmClient::new(spec_creds());
            client.negotiate_message();
            match client.authenticate_message(&c.encode()) {
                Err(AuthError::UnsupportedFlags { missing, .. }) => assert_eq!(missing, drop),
                other => panic!("expected UnsupportedFlags, got {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_target_info_without_netbios_names() {
        let mut c = challenge_with_timestamp(1);
        c.target_info.retain(|p| p.id != AvId::NbComputerName);
        let mut client = NtlmClient::new(spec_creds());
        client.negotiate_message();
        assert!(matches!(client.authenticate_message(&c.encode()), Err(AuthError::Malformed { .. })));
    }

    #[test]
    fn hostile_challenges_are_errors() {
        let good = spec_challenge();
        for cut in 0..good.len() {
            assert!(ChallengeMessage::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        // Target info offset past the end.
        let mut bad = good.clone();
        bad[44..48].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        assert!(ChallengeMessage::decode(&bad).is_err());
        // Wrong signature and message type.
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(ChallengeMessage::decode(&bad).is_err());
        let mut bad = good.clone();
        bad[8] = 3;
        assert!(ChallengeMessage::decode(&bad).is_err());
        // Huge number of tiny AV pairs.
        let mut many = Vec::new();
        for _ in 0..5000 {
            many.put_u16(AvId::Unknown(0x99).code());
            many.put_u16(0);
        }
        many.put_u32(0);
        assert!(matches!(decode_av_pairs(&many), Err(AuthError::Malformed { .. })));
        // AV pair length beyond the buffer, and no EOL.
        assert!(decode_av_pairs(&[1, 0, 0xFF, 0xFF, 0x41, 0x00]).is_err());
        assert!(decode_av_pairs(&[1, 0, 2, 0, 0x41, 0x00]).is_err());
        // Timestamp of the wrong size.
        let mut c = challenge_with_timestamp(1);
        c.target_info[4].value.truncate(4);
        let mut client = NtlmClient::new(spec_creds());
        client.negotiate_message();
        assert!(matches!(client.authenticate_message(&c.encode()), Err(AuthError::Malformed { .. })));
    }

    #[test]
    fn anonymous_sends_null_session_responses() {
        let mut client = NtlmClient::anonymous();
        assert!(client.is_anonymous());
        client.negotiate_message();
        let bytes = client.authenticate_message(&challenge_with_timestamp(1).encode()).unwrap();
        let auth = AuthenticateMessage::decode(&bytes).unwrap();
        assert_eq!(auth.lm_response, vec![0]);
        assert!(auth.nt_response.is_empty() && auth.user.is_empty() && auth.encrypted_session_key.is_empty());
        assert_eq!(auth.flags & (flags::ANONYMOUS | flags::KEY_EXCH), flags::ANONYMOUS);
        assert_eq!(client.session_key(), None);
        assert_eq!(client.sign_mic(b"x"), [0u8; 16]);
        assert!(matches!(client.verify_mic(b"x", &[0u8; 16]), Err(AuthError::NoSessionKey)));
    }

    #[test]
    fn steps_out_of_order_are_errors() {
        let mut client = NtlmClient::new(spec_creds());
        assert!(matches!(client.authenticate_message(&spec_challenge()), Err(AuthError::OutOfOrder(_))));
        client.negotiate_message();
        client.authenticate_message(&spec_challenge()).unwrap();
        assert!(matches!(client.authenticate_message(&spec_challenge()), Err(AuthError::OutOfOrder(_))));
    }

    #[test]
    fn debug_output_has_no_secrets() {
        let mut client = NtlmClient::with_fixed_inputs(spec_creds(), CLIENT_CHALLENGE, 0, RANDOM_SESSION_KEY);
        client.negotiate_message();
        let bytes = client.authenticate_message(&spec_challenge()).unwrap();
        let shown = format!("{client:?} {:?} {:?}", spec_creds(), AuthenticateMessage::decode(&bytes).unwrap());
        assert!(!shown.contains("Password"), "{shown}");
        assert!(!shown.contains("85, 85") && !shown.contains("55, 55"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}
