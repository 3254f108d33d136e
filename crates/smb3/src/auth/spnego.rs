//! SPNEGO client (RFC 4178, MS-SPNG) offering only NTLMSSP.
//!
//! Exchange: InitialContextToken(NegTokenInit{[NTLMSSP], NEGOTIATE}) ->
//! NegTokenResp{accept-incomplete, CHALLENGE} -> NegTokenResp{AUTHENTICATE,
//! mechListMIC} -> NegTokenResp{accept-completed, server mechListMIC} (or an
//! empty buffer). The mechListMIC covers the DER of the mechTypes we sent.

use super::der::{self, Element, TAG_ENUMERATED, TAG_OCTET_STRING, TAG_OID, TAG_SEQUENCE};
use super::ntlm::NtlmClient;
use super::AuthError;

/// 1.3.6.1.5.5.2, OID content octets.
pub const SPNEGO_OID: &[u8] = &[0x2B, 0x06, 0x01, 0x05, 0x05, 0x02];
/// 1.3.6.1.4.1.311.2.2.10, OID content octets.
pub const NTLMSSP_OID: &[u8] = &[0x2B, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0A];

/// negState (RFC 4178 4.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NegState {
    AcceptCompleted,
    AcceptIncomplete,
    Reject,
    RequestMic,
    Unknown(u8),
}

impl NegState {
    pub fn code(self) -> u8 {
        match self {
            NegState::AcceptCompleted => 0,
            NegState::AcceptIncomplete => 1,
            NegState::Reject => 2,
            NegState::RequestMic => 3,
            NegState::Unknown(c) => c,
        }
    }

    pub fn from_code(c: u8) -> Self {
        match c {
            0 => NegState::AcceptCompleted,
            1 => NegState::AcceptIncomplete,
            2 => NegState::Reject,
            3 => NegState::RequestMic,
            c => NegState::Unknown(c),
        }
    }
}

fn malformed(what: &'static str, why: impl Into<String>) -> AuthError {
    AuthError::Malformed { what, why: why.into() }
}

/// Content of the OCTET STRING inside an explicit `[n]` field.
fn octets(field: &Element<'_>, what: &'static str) -> Result<Vec<u8>, AuthError> {
    Ok(field.inner(what)?.expect(TAG_OCTET_STRING, what)?.content.to_vec())
}

/// MechTypeList: SEQUENCE OF OBJECT IDENTIFIER, as DER.
pub fn encode_mech_types(mech_types: &[Vec<u8>]) -> Vec<u8> {
    let oids: Vec<Vec<u8>> = mech_types.iter().map(|m| der::tlv(TAG_OID, m)).collect();
    let parts: Vec<&[u8]> = oids.iter().map(Vec::as_slice).collect();
    der::constructed(TAG_SEQUENCE, &parts)
}

/// NegTokenInit, or MS-SPNG NegTokenInit2 on decode (whose negHints are ignored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NegTokenInit {
    /// OID content octets, most preferred first.
    pub mech_types: Vec<Vec<u8>>,
    pub mech_token: Option<Vec<u8>>,
    pub mech_list_mic: Option<Vec<u8>>,
}

impl NegTokenInit {
    /// The GSS-API InitialContextToken: [APPLICATION 0] { SPNEGO OID, [0] NegTokenInit }.
    pub fn encode(&self) -> Vec<u8> {
        let mut fields = vec![der::tlv(der::context(0), &encode_mech_types(&self.mech_types))];
        if let Some(t) = &self.mech_token {
            fields.push(der::tlv(der::context(2), &der::tlv(TAG_OCTET_STRING, t)));
        }
        if let Some(m) = &self.mech_list_mic {
            fields.push(der::tlv(der::context(3), &der::tlv(TAG_OCTET_STRING, m)));
        }
        let parts: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
        let init = der::constructed(TAG_SEQUENCE, &parts);
        der::constructed(der::application(0), &[&der::tlv(TAG_OID, SPNEGO_OID), &der::tlv(der::context(0), &init)])
    }

    pub fn decode(token: &[u8]) -> Result<Self, AuthError> {
        const WHAT: &str = "SPNEGO NegTokenInit";
        let root = der::parse(token)?;
        root.expect(der::application(0), "GSS-API InitialContextToken")?;
        let [oid, body, ..] = root.children.as_slice() else {
            return Err(malformed(WHAT, "InitialContextToken needs a mechanism OID and a token"));
        };
        if oid.expect(TAG_OID, "thisMech")?.content != SPNEGO_OID {
            return Err(malformed(WHAT, "thisMech is not SPNEGO"));
        }
        let seq = body.expect(der::context(0), "negTokenInit")?.inner(WHAT)?.expect(TAG_SEQUENCE, WHAT)?;
        let list = seq.child(der::context(0)).ok_or(der::DerError::Missing { what: "mechTypes" })?;
        let list = list.inner("mechTypes")?.expect(TAG_SEQUENCE, "mechTypes")?;
        let mut mech_types = Vec::with_capacity(list.children.len());
        for m in &list.children {
            mech_types.push(m.expect(TAG_OID, "mech type")?.content.to_vec());
        }
        let mech_token = seq.child(der::context(2)).map(|f| octets(f, "mechToken")).transpose()?;
        // [3] is mechListMIC in NegTokenInit but negHints (a SEQUENCE) in NegTokenInit2, whose MIC is [4].
        let mut mech_list_mic = None;
        for tag in [der::context(3), der::context(4)] {
            if let Some(f) = seq.child(tag) {
                if f.inner("mechListMIC")?.tag == TAG_OCTET_STRING {
                    mech_list_mic = Some(octets(f, "mechListMIC")?);
                }
            }
        }
        Ok(NegTokenInit { mech_types, mech_token, mech_list_mic })
    }
}

/// NegTokenResp (RFC 4178 4.2.2), `[1]`-tagged as on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NegTokenResp {
    pub neg_state: Option<NegState>,
    pub supported_mech: Option<Vec<u8>>,
    pub response_token: Option<Vec<u8>>,
    pub mech_list_mic: Option<Vec<u8>>,
}

impl NegTokenResp {
    pub fn encode(&self) -> Vec<u8> {
        let mut fields = Vec::new();
        if let Some(s) = self.neg_state {
            fields.push(der::tlv(der::context(0), &der::tlv(TAG_ENUMERATED, &[s.code()])));
        }
        if let Some(m) = &self.supported_mech {
            fields.push(der::tlv(der::context(1), &der::tlv(TAG_OID, m)));
        }
        if let Some(t) = &self.response_token {
            fields.push(der::tlv(der::context(2), &der::tlv(TAG_OCTET_STRING, t)));
        }
        if let Some(m) = &self.mech_list_mic {
            fields.push(der::tlv(der::context(3), &der::tlv(TAG_OCTET_STRING, m)));
        }
        let parts: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
        der::tlv(der::context(1), &der::constructed(TAG_SEQUENCE, &parts))
    }

    pub fn decode(token: &[u8]) -> Result<Self, AuthError> {
        const WHAT: &str = "SPNEGO NegTokenResp";
        let root = der::parse(token)?;
        let seq = root.expect(der::context(1), "negTokenResp")?.inner(WHAT)?.expect(TAG_SEQUENCE, WHAT)?;
        let neg_state = match seq.child(der::context(0)) {
            Some(f) => match f.inner("negState")?.expect(TAG_ENUMERATED, "negState")?.content {
                [c] => Some(NegState::from_code(*c)),
                _ => return Err(malformed(WHAT, "negState is not a one-byte ENUMERATED")),
            },
            None => None,
        };
        let supported_mech = match seq.child(der::context(1)) {
            Some(f) => Some(f.inner("supportedMech")?.expect(TAG_OID, "supportedMech")?.content.to_vec()),
            None => None,
        };
        let response_token = seq.child(der::context(2)).map(|f| octets(f, "responseToken")).transpose()?;
        let mech_list_mic = seq.child(der::context(3)).map(|f| octets(f, "mechListMIC")).transpose()?;
        Ok(NegTokenResp { neg_state, supported_mech, response_token, mech_list_mic })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SpnegoState {
    Start,
    SentNegotiate,
    SentAuthenticate,
    Complete,
    Failed,
}

/// SPNEGO initiator around an [`NtlmClient`].
#[derive(Debug)]
pub struct SpnegoClient {
    ntlm: NtlmClient,
    state: SpnegoState,
    /// DER of the MechTypeList we sent: what both mechListMICs cover.
    mech_types_der: Vec<u8>,
}

impl SpnegoClient {
    pub fn new(ntlm: NtlmClient) -> SpnegoClient {
        SpnegoClient { ntlm, state: SpnegoState::Start, mech_types_der: encode_mech_types(&[NTLMSSP_OID.to_vec()]) }
    }

    /// `server_hint` is the SMB2 NEGOTIATE response security buffer (may be
    /// empty). If non-empty it is parsed as NegTokenInit(2), and
    /// Err(AuthError::NoNtlmMech) if NTLMSSP is not offered. Returns the
    /// InitialContextToken with mechTypes = [NTLMSSP] and the NTLM NEGOTIATE.
    pub fn initial_token(&mut self, server_hint: &[u8]) -> Result<Vec<u8>, AuthError> {
        if self.state != SpnegoState::Start {
            return Err(AuthError::OutOfOrder("SPNEGO initial token already built"));
        }
        if !server_hint.is_empty() {
            let hint = NegTokenInit::decode(server_hint).inspect_err(|_| self.state = SpnegoState::Failed)?;
            if !hint.mech_types.iter().any(|m| m == NTLMSSP_OID) {
                self.state = SpnegoState::Failed;
                return Err(AuthError::NoNtlmMech);
            }
        }
        let token = NegTokenInit {
            mech_types: vec![NTLMSSP_OID.to_vec()],
            mech_token: Some(self.ntlm.negotiate_message()),
            mech_list_mic: None,
        }
        .encode();
        self.state = SpnegoState::SentNegotiate;
        Ok(token)
    }

    /// Feeds a server NegTokenResp from a SESSION_SETUP response.
    /// accept-incomplete with a CHALLENGE -> Ok(Some(NegTokenResp with the
    /// AUTHENTICATE and our mechListMIC)); accept-completed (or an empty
    /// final buffer) -> verifies the server's mechListMIC if present, Ok(None);
    /// reject -> Err(AuthError::Rejected). Any error ends the exchange.
    pub fn step(&mut self, server_token: &[u8]) -> Result<Option<Vec<u8>>, AuthError> {
        let result = match self.state {
            SpnegoState::SentNegotiate => self.on_challenge(server_token).map(Some),
            SpnegoState::SentAuthenticate => self.on_final(server_token).map(|()| None),
            SpnegoState::Start => Err(AuthError::OutOfOrder("SPNEGO step before the initial token")),
            SpnegoState::Complete => Err(AuthError::OutOfOrder("SPNEGO exchange already complete")),
            SpnegoState::Failed => Err(AuthError::OutOfOrder("SPNEGO exchange already failed")),
        };
        if result.is_err() {
            self.state = SpnegoState::Failed;
        }
        result
    }

    fn on_challenge(&mut self, server_token: &[u8]) -> Result<Vec<u8>, AuthError> {
        if server_token.is_empty() {
            return Err(malformed("SPNEGO response", "empty where the NTLM CHALLENGE was expected"));
        }
        let resp = NegTokenResp::decode(server_token)?;
        if resp.supported_mech.as_deref().is_some_and(|m| m != NTLMSSP_OID) {
            return Err(AuthError::NoNtlmMech);
        }
        match resp.neg_state {
            Some(NegState::Reject) => return Err(AuthError::Rejected),
            Some(NegState::AcceptIncomplete | NegState::RequestMic) | None => {}
            Some(NegState::AcceptCompleted) => {
                return Err(malformed("SPNEGO response", "accept-completed before NTLM AUTHENTICATE"))
            }
            Some(NegState::Unknown(c)) => return Err(malformed("SPNEGO response", format!("negState {c}"))),
        }
        let challenge = resp
            .response_token
            .ok_or_else(|| malformed("SPNEGO response", "no responseToken carrying the NTLM CHALLENGE"))?;
        let authenticate = self.ntlm.authenticate_message(&challenge)?;
        // Samba requires the mechListMIC once the NTLM AUTHENTICATE has a MIC;
        // sending it whenever there is a key is always accepted.
        let mech_list_mic = self.ntlm.session_key().map(|_| self.ntlm.sign_mic(&self.mech_types_der).to_vec());
        self.state = SpnegoState::SentAuthenticate;
        Ok(NegTokenResp { neg_state: None, supported_mech: None, response_token: Some(authenticate), mech_list_mic }
            .encode())
    }

    fn on_final(&mut self, server_token: &[u8]) -> Result<(), AuthError> {
        if !server_token.is_empty() {
            let resp = NegTokenResp::decode(server_token)?;
            match resp.neg_state {
                Some(NegState::AcceptCompleted) | None => {}
                Some(NegState::Reject) => return Err(AuthError::Rejected),
                Some(s) => return Err(malformed("SPNEGO response", format!("negState {s:?} after NTLM AUTHENTICATE"))),
            }
            if resp.response_token.as_ref().is_some_and(|t| !t.is_empty()) {
                return Err(malformed("SPNEGO response", "NTLM has no token after AUTHENTICATE"));
            }
            // Anonymous has no key, so there is nothing to check the MIC against.
            if let (Some(mic), Some(_)) = (&resp.mech_list_mic, self.ntlm.session_key()) {
                self.ntlm.verify_mic(&self.mech_types_der, mic).map_err(|_| AuthError::BadServerMic)?;
            }
        }
        self.state = SpnegoState::Complete;
        Ok(())
    }

    /// The NTLM exported session key, available once the AUTHENTICATE was
    /// built (None for anonymous). The session is authenticated only when
    /// [`Self::is_complete`].
    pub fn session_key(&self) -> Option<[u8; 16]> {
        self.ntlm.session_key()
    }

    pub fn is_complete(&self) -> bool {
        self.state == SpnegoState::Complete
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ntlm::{
        flags, AvId, AvPair, ChallengeMessage, NtlmCredentials, Role, SessionSecurity, CLIENT_FLAGS,
    };
    use crate::wire::cursor::utf16le;
    use crate::Secret;

    const KRB5_OID: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x12, 0x01, 0x02, 0x02];
    const MS_KRB5_OID: &[u8] = &[0x2A, 0x86, 0x48, 0x82, 0xF7, 0x12, 0x01, 0x02, 0x02];

    fn creds() -> NtlmCredentials {
        NtlmCredentials {
            user: "alice".into(),
            domain: "SAMBA".into(),
            password: Secret::new("s3cret!"),
            workstation: "csi-node".into(),
        }
    }

    /// NegTokenInit2 as Samba puts it in the SMB2 NEGOTIATE response
    /// (MS-SPNG 2.2.1), hand-assembled byte by byte.
    fn samba_hint(with_ntlm: bool) -> Vec<u8> {
        let hint_name = b"not_defined_in_RFC4178@please_ignore";
        let mut oids = Vec::new();
        for oid in [MS_KRB5_OID, KRB5_OID] {
            oids.extend_from_slice(&[0x06, oid.len() as u8]);
            oids.extend_from_slice(oid);
        }
        if with_ntlm {
            oids.extend_from_slice(&[0x06, 0x0A]);
            oids.extend_from_slice(NTLMSSP_OID);
        }
        let mut mech_types = vec![0xA0, oids.len() as u8 + 2, 0x30, oids.len() as u8];
        mech_types.extend_from_slice(&oids);
        let mut hints = vec![0xA3, hint_name.len() as u8 + 6, 0x30, hint_name.len() as u8 + 4];
        hints.extend_from_slice(&[0xA0, hint_name.len() as u8 + 2, 0x1B, hint_name.len() as u8]);
        hints.extend_from_slice(hint_name);
        let seq_len = mech_types.len() + hints.len();
        let mut init = vec![0xA0, seq_len as u8 + 2, 0x30, seq_len as u8];
        init.extend_from_slice(&mech_types);
        init.extend_from_slice(&hints);
        let mut token = vec![0x60, (init.len() + 8) as u8, 0x06, 0x06];
        token.extend_from_slice(SPNEGO_OID);
        token.extend_from_slice(&init);
        token
    }

    fn samba_challenge() -> Vec<u8> {
        ChallengeMessage {
            flags: 0xe28a_8235,
            server_challenge: [9, 8, 7, 6, 5, 4, 3, 2],
            target_name: utf16le("SAMBA"),
            target_info: vec![
                AvPair { id: AvId::NbDomainName, value: utf16le("SAMBA") },
                AvPair { id: AvId::NbComputerName, value: utf16le("FILES") },
                AvPair { id: AvId::DnsDomainName, value: utf16le("samba.example") },
                AvPair { id: AvId::DnsComputerName, value: utf16le("files.samba.example") },
                AvPair { id: AvId::Timestamp, value: 0x01da_0000_0000_0000u64.to_le_bytes().to_vec() },
            ],
            version: Some([6, 1, 0, 0, 0, 0, 0, 15]),
        }
        .encode()
    }

    /// The server's first SESSION_SETUP token: accept-incomplete, NTLMSSP, CHALLENGE.
    fn challenge_token(challenge: &[u8]) -> Vec<u8> {
        NegTokenResp {
            neg_state: Some(NegState::AcceptIncomplete),
            supported_mech: Some(NTLMSSP_OID.to_vec()),
            response_token: Some(challenge.to_vec()),
            mech_list_mic: None,
        }
        .encode()
    }

    #[test]
    fn parses_samba_neg_token_init2_hint() {
        let hint = NegTokenInit::decode(&samba_hint(true)).unwrap();
        assert_eq!(hint.mech_types, vec![MS_KRB5_OID.to_vec(), KRB5_OID.to_vec(), NTLMSSP_OID.to_vec()]);
        assert_eq!((hint.mech_token, hint.mech_list_mic), (None, None));
        let mut client = SpnegoClient::new(NtlmClient::new(creds()));
        assert!(client.initial_token(&samba_hint(true)).is_ok());
    }

    #[test]
    fn hint_without_ntlmssp_is_refused() {
        let mut client = SpnegoClient::new(NtlmClient::new(creds()));
        assert!(matches!(client.initial_token(&samba_hint(false)), Err(AuthError::NoNtlmMech)));
        assert!(client.step(&[]).is_err(), "a failed exchange stays failed");
    }

    #[test]
    fn initial_token_bytes() {
        let mut client = SpnegoClient::new(NtlmClient::new(creds()));
        let token = client.initial_token(&[]).unwrap();
        let negotiate = NtlmClient::new(creds()).negotiate_message();
        assert_eq!(negotiate.len(), 40);
        let mut expected = vec![0x60, 0x48, 0x06, 0x06];
        expected.extend_from_slice(SPNEGO_OID);
        expected.extend_from_slice(&[0xA0, 0x3E, 0x30, 0x3C, 0xA0, 0x0E, 0x30, 0x0C, 0x06, 0x0A]);
        expected.extend_from_slice(NTLMSSP_OID);
        expected.extend_from_slice(&[0xA2, 0x2A, 0x04, 0x28]);
        expected.extend_from_slice(&negotiate);
        assert_eq!(token, expected);
        let decoded = NegTokenInit::decode(&token).unwrap();
        assert_eq!(decoded.mech_token, Some(negotiate));
        assert!(matches!(client.initial_token(&[]), Err(AuthError::OutOfOrder(_))));
    }

    #[test]
    fn tokens_round_trip() {
        let init = NegTokenInit {
            mech_types: vec![NTLMSSP_OID.to_vec(), KRB5_OID.to_vec()],
            mech_token: Some(vec![1; 300]),
            mech_list_mic: Some(vec![2; 16]),
        };
        assert_eq!(NegTokenInit::decode(&init.encode()).unwrap(), init);
        let resp = NegTokenResp {
            neg_state: Some(NegState::RequestMic),
            supported_mech: Some(NTLMSSP_OID.to_vec()),
            response_token: Some(vec![3; 200]),
            mech_list_mic: Some(vec![4; 16]),
        };
        assert_eq!(NegTokenResp::decode(&resp.encode()).unwrap(), resp);
        let empty = NegTokenResp { neg_state: None, supported_mech: None, response_token: None, mech_list_mic: None };
        assert_eq!(NegTokenResp::decode(&empty.encode()).unwrap(), empty);
        // A Windows/Samba final token, from bytes: accept-completed + 16-byte MIC.
        let mut fin = vec![0xA1, 0x1B, 0x30, 0x19, 0xA0, 0x03, 0x0A, 0x01, 0x00, 0xA3, 0x12, 0x04, 0x10];
        fin.extend_from_slice(&[0xEE; 16]);
        let d = NegTokenResp::decode(&fin).unwrap();
        assert_eq!(d.neg_state, Some(NegState::AcceptCompleted));
        assert_eq!(d.mech_list_mic, Some(vec![0xEE; 16]));
    }

    #[test]
    fn truncated_and_hostile_tokens_are_errors() {
        let token = challenge_token(&samba_challenge());
        for cut in 0..token.len() {
            assert!(NegTokenResp::decode(&token[..cut]).is_err(), "cut {cut}");
        }
        let hint = samba_hint(true);
        for cut in 0..hint.len() {
            assert!(NegTokenInit::decode(&hint[..cut]).is_err(), "cut {cut}");
        }
        // Lengths claiming more than there is.
        assert!(NegTokenResp::decode(&[0xA1, 0x84, 0x7F, 0xFF, 0xFF, 0xFF, 0x30, 0x00]).is_err());
        // Deep nesting inside an otherwise valid wrapper.
        let mut deep = Vec::new();
        for _ in 0..100 {
            deep = der::tlv(TAG_SEQUENCE, &deep);
        }
        assert!(NegTokenResp::decode(&der::tlv(der::context(1), &deep)).is_err());
        // Wrong types in fields.
        assert!(NegTokenResp::decode(&[0xA1, 0x07, 0x30, 0x05, 0xA0, 0x03, 0x04, 0x01, 0x00]).is_err());
        assert!(NegTokenInit::decode(&[0x60, 0x02, 0x05, 0x00]).is_err());
        // An Init where a Resp is expected.
        assert!(NegTokenResp::decode(&hint).is_err());
    }

    /// Drives a full exchange against a simulated server holding the same exported key.
    #[test]
    fn full_exchange_with_mech_list_mics() {
        let mut client = SpnegoClient::new(NtlmClient::new(creds()));
        client.initial_token(&samba_hint(true)).unwrap();
        let out = client.step(&challenge_token(&samba_challenge())).unwrap().expect("AUTHENTICATE token");
        assert!(!client.is_complete());

        let resp = NegTokenResp::decode(&out).unwrap();
        assert_eq!((resp.neg_state, resp.supported_mech.as_ref()), (None, None));
        let auth = crate::auth::ntlm::AuthenticateMessage::decode(&resp.response_token.unwrap()).unwrap();
        assert_eq!(auth.user, "alice");
        assert!(auth.mic.is_some());

        let key = client.session_key().expect("session key after AUTHENTICATE");
        let mut server = SessionSecurity::new(&key, CLIENT_FLAGS | flags::TARGET_INFO, Role::Server);
        let mech_types = encode_mech_types(&[NTLMSSP_OID.to_vec()]);
        assert_eq!(mech_types[..4], [0x30, 0x0C, 0x06, 0x0A]);
        server.verify(&mech_types, &resp.mech_list_mic.unwrap()).expect("client mechListMIC verifies");

        let fin = NegTokenResp {
            neg_state: Some(NegState::AcceptCompleted),
            supported_mech: None,
            response_token: None,
            mech_list_mic: Some(server.sign(&mech_types).to_vec()),
        };
        assert_eq!(client.step(&fin.encode()).unwrap(), None);
        assert!(client.is_complete());
        assert_eq!(client.session_key(), Some(key));
        assert!(matches!(client.step(&[]), Err(AuthError::OutOfOrder(_))));
    }

    #[test]
    fn forged_server_mic_is_refused() {
        let mut client = SpnegoClient::new(NtlmClient::new(creds()));
        client.initial_token(&[]).unwrap();
        client.step(&challenge_token(&samba_challenge())).unwrap();
        let fin = NegTokenResp {
            neg_state: Some(NegState::AcceptCompleted),
            supported_mech: None,
            response_token: None,
            mech_list_mic: Some(vec![1, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9, 0, 0, 0, 0]),
        };
        assert!(matches!(client.step(&fin.encode()), Err(AuthError::BadServerMic)));
        assert!(!client.is_complete());
    }

    #[test]
    fn empty_final_token_completes() {
        let mut client = SpnegoClient::new(NtlmClient::new(creds()));
        client.initial_token(&[]).unwrap();
        client.step(&challenge_token(&samba_challenge())).unwrap();
        assert_eq!(client.step(&[]).unwrap(), None);
        assert!(client.is_complete());
    }

    #[test]
    fn reject_and_wrong_mech_are_errors() {
        let reject = NegTokenResp {
            neg_state: Some(NegState::Reject),
            supported_mech: None,
            response_token: None,
            mech_list_mic: None,
        }
        .encode();
        let mut client = SpnegoClient::new(NtlmClient::new(creds()));
        client.initial_token(&[]).unwrap();
        assert!(matches!(client.step(&reject), Err(AuthError::Rejected)));

        let mut client = SpnegoClient::new(NtlmClient::new(creds()));
        client.initial_token(&[]).unwrap();
        client.step(&challenge_token(&samba_challenge())).unwrap();
        assert!(matches!(client.step(&reject), Err(AuthError::Rejected)));

        let mut client = SpnegoClient::new(NtlmClient::new(creds()));
        client.initial_token(&[]).unwrap();
        let mut krb = NegTokenResp::decode(&challenge_token(&samba_challenge())).unwrap();
        krb.supported_mech = Some(KRB5_OID.to_vec());
        assert!(matches!(client.step(&krb.encode()), Err(AuthError::NoNtlmMech)));

        let mut client = SpnegoClient::new(NtlmClient::new(creds()));
        assert!(matches!(client.step(&reject), Err(AuthError::OutOfOrder(_))));
        client = SpnegoClient::new(NtlmClient::new(creds()));
        client.initial_token(&[]).unwrap();
        assert!(client.step(&[]).is_err(), "empty token instead of a CHALLENGE");
    }

    #[test]
    fn anonymous_exchange_sends_no_mic() {
        let mut client = SpnegoClient::new(NtlmClient::anonymous());
        client.initial_token(&[]).unwrap();
        let out = client.step(&challenge_token(&samba_challenge())).unwrap().unwrap();
        let resp = NegTokenResp::decode(&out).unwrap();
        assert!(resp.mech_list_mic.is_none());
        assert_eq!(client.step(&[]).unwrap(), None);
        assert!(client.is_complete());
        assert_eq!(client.session_key(), None);
    }
}
