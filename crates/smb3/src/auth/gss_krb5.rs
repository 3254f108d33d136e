//! The Kerberos V5 GSS-API mechanism (RFC 4121) as SMB uses it inside
//! SPNEGO: one AP-REQ out, one AP-REP back, mutual authentication required.
//!
//! The initiator token is `[APPLICATION 0] { krb5 OID, 0x01 0x00, AP-REQ }`
//! (RFC 1964 1.1, RFC 4121 4.1). The AP-REQ asks for mutual authentication
//! and carries an authenticator with the GSS checksum (type 0x8003, RFC 4121
//! 4.1.1: channel bindings and context flags) and a fresh initiator subkey.
//! The acceptor answers `0x02 0x00, AP-REP`, whose EncAPRepPart (key usage
//! 12, under the ticket's session key) must echo our ctime and cusec: that
//! proves the server holds the service key, so no one can impersonate it.
//! The context key is the acceptor's subkey when the AP-REP carries one,
//! else ours (RFC 4121 2). A `0x03 0x00, KRB-ERROR` answer is named in one
//! line (clock skew, ticket expired...).

use std::time::{SystemTime, UNIX_EPOCH};

use picky_asn1::bit_string::BitString;
use picky_asn1::wrapper::{
    BitStringAsn1, ExplicitContextTag0, ExplicitContextTag1, ExplicitContextTag2, ExplicitContextTag3,
    ExplicitContextTag4, ExplicitContextTag5, ExplicitContextTag6, ExplicitContextTag7, OctetStringAsn1, Optional,
};
use picky_asn1_der::application_tag::ApplicationTag;
use picky_krb::crypto::ChecksumSuite;
use picky_krb::data_types::{
    Authenticator, AuthenticatorInner, Checksum, EncApRepPart, EncryptedData, EncryptionKey, Ticket,
};
use picky_krb::messages::{ApRep, ApReq, ApReqInner};
use rand::RngCore;

use super::ccache::Credential;
use super::der::{self, TAG_OID};
use super::kdc::{
    cipher_suite, der_error, int, kerberos_time, micros, parse_kdc_reply, principal_name, uint, unix_time, KdcReply,
    KerberosError, AES256, NT_PRINCIPAL,
};

/// 1.2.840.113554.1.2.2, OID content octets: Kerberos V5 (RFC 4121).
pub const KRB5_OID: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x12, 0x01, 0x02, 0x02];
/// 1.2.840.48018.1.2.2: the same mechanism under the OID Windows put in
/// its SPNEGO lists (a historical mis-encoding); Windows and Samba list it first.
pub const MS_KRB5_OID: &[u8] = &[0x2A, 0x86, 0x48, 0x82, 0xF7, 0x12, 0x01, 0x02, 0x02];

const TOK_AP_REQ: [u8; 2] = [0x01, 0x00];
const TOK_AP_REP: [u8; 2] = [0x02, 0x00];
const TOK_KRB_ERROR: [u8; 2] = [0x03, 0x00];
const TOK_MIC: [u8; 2] = [0x04, 0x04];
const KEY_USAGE_AP_REQ_AUTHENTICATOR: i32 = 11;
const KEY_USAGE_AP_REP_ENC_PART: i32 = 12;
/// RFC 4121 2: KG-USAGE-ACCEPTOR-SIGN.
const KEY_USAGE_ACCEPTOR_SIGN: i32 = 23;
/// RFC 4121 2: KG-USAGE-INITIATOR-SIGN.
const KEY_USAGE_INITIATOR_SIGN: i32 = 25;
/// RFC 4121 4.1.1: the authenticator checksum type that carries GSS flags.
const GSS_CHECKSUM_TYPE: u32 = 0x8003;
/// GSS_C_MUTUAL_FLAG | REPLAY | SEQUENCE | CONF | INTEG (RFC 2744 3.9).
const GSS_FLAGS: u32 = 0x02 | 0x04 | 0x08 | 0x10 | 0x20;
/// AP-OPTIONS mutual-required (bit 2).
const AP_OPTIONS_MUTUAL_REQUIRED: u8 = 0x20;

/// What the initiator must remember between the AP-REQ and the AP-REP.
pub struct ApReqContext {
    etype: i32,
    ticket_key: Vec<u8>,
    subkey: Vec<u8>,
    ctime: u32,
    cusec: u32,
    client: String,
}

impl std::fmt::Debug for ApReqContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApReqContext").field("etype", &self.etype).field("client", &self.client).finish()
    }
}

/// The GSS initiator token for `ticket` (a service ticket for the server),
/// and the context to check the server's answer with.
pub fn initiate(ticket: &Credential, now: SystemTime) -> Result<(Vec<u8>, ApReqContext), KerberosError> {
    let etype = i32::from(ticket.key_type);
    let cipher = cipher_suite(etype)?.cipher();
    let mut random = vec![0u8; cipher.key_size()];
    rand::thread_rng().fill_bytes(&mut random);
    let subkey = cipher.random_to_key(random);
    let seq_number = rand::thread_rng().next_u32() & 0x3fff_ffff;
    let ctime = now.duration_since(UNIX_EPOCH).map_err(|_| KerberosError::Malformed("clock before 1970".into()))?;
    let client_parts: Vec<&str> = ticket.client.components.iter().map(String::as_str).collect();
    let mut gss_checksum = Vec::with_capacity(24);
    gss_checksum.extend_from_slice(&16u32.to_le_bytes());
    gss_checksum.extend_from_slice(&[0u8; 16]); // no channel bindings
    gss_checksum.extend_from_slice(&GSS_FLAGS.to_le_bytes());
    let authenticator: Authenticator = ApplicationTag::from(AuthenticatorInner {
        authenticator_vno: ExplicitContextTag0::from(int(5)),
        crealm: ExplicitContextTag1::from(super::kdc::kerberos_string(&ticket.client.realm)?),
        cname: ExplicitContextTag2::from(principal_name(NT_PRINCIPAL, &client_parts)?),
        cksum: Optional::from(Some(ExplicitContextTag3::from(Checksum {
            cksumtype: ExplicitContextTag0::from(int(GSS_CHECKSUM_TYPE)),
            checksum: ExplicitContextTag1::from(OctetStringAsn1::from(gss_checksum)),
        }))),
        cusec: ExplicitContextTag4::from(int(micros(now))),
        ctime: ExplicitContextTag5::from(kerberos_time(now)?),
        subkey: Optional::from(Some(ExplicitContextTag6::from(EncryptionKey {
            key_type: ExplicitContextTag0::from(int(etype as u32)),
            key_value: ExplicitContextTag1::from(OctetStringAsn1::from(subkey.clone())),
        }))),
        seq_number: Optional::from(Some(ExplicitContextTag7::from(int(seq_number)))),
        authorization_data: Optional::from(None),
    });
    let authenticator = cipher
        .encrypt(
            &ticket.key,
            KEY_USAGE_AP_REQ_AUTHENTICATOR,
            &picky_asn1_der::to_vec(&authenticator).map_err(der_error)?,
        )
        .map_err(|e| KerberosError::Malformed(format!("encrypting the authenticator: {e}")))?;
    let ticket_asn1: Ticket = picky_asn1_der::from_bytes(&ticket.ticket).map_err(der_error)?;
    let ap_req: ApReq = ApplicationTag::from(ApReqInner {
        pvno: ExplicitContextTag0::from(int(5)),
        msg_type: ExplicitContextTag1::from(int(14)),
        ap_options: ExplicitContextTag2::from(BitStringAsn1::from(BitString::with_bytes(vec![
            AP_OPTIONS_MUTUAL_REQUIRED,
            0,
            0,
            0,
        ]))),
        ticket: ExplicitContextTag3::from(ticket_asn1),
        authenticator: ExplicitContextTag4::from(EncryptedData {
            etype: ExplicitContextTag0::from(int(etype as u32)),
            kvno: Optional::from(None),
            cipher: ExplicitContextTag2::from(OctetStringAsn1::from(authenticator)),
        }),
    });
    let token = wrap(TOK_AP_REQ, &picky_asn1_der::to_vec(&ap_req).map_err(der_error)?);
    let context = ApReqContext {
        etype,
        ticket_key: ticket.key.clone(),
        subkey,
        ctime: ctime.as_secs() as u32,
        cusec: micros(now),
        client: ticket.client.display(),
    };
    Ok((token, context))
}

/// The GSS context key after checking the acceptor's token: an AP-REP that
/// decrypts under the ticket's session key and echoes our ctime/cusec.
pub fn accept_reply(context: &ApReqContext, token: &[u8]) -> Result<Vec<u8>, KerberosError> {
    let (tok_id, message) = unwrap(token)?;
    match tok_id {
        TOK_AP_REP => {}
        TOK_KRB_ERROR => return Err(krb_error(context, message)),
        other => {
            return Err(KerberosError::MutualAuthFailed(format!(
                "expected an AP-REP, got token id {:02x}{:02x}",
                other[0], other[1]
            )))
        }
    }
    let rep: ApRep = picky_asn1_der::from_bytes(message).map_err(der_error)?;
    let enc = &rep.0.enc_part.0;
    if uint(&enc.etype.0) != Some(context.etype as u32) {
        return Err(KerberosError::MutualAuthFailed("AP-REP encrypted with another etype than the ticket".into()));
    }
    let plain = cipher_suite(context.etype)?
        .cipher()
        .decrypt(&context.ticket_key, KEY_USAGE_AP_REP_ENC_PART, &enc.cipher.0 .0)
        .map_err(|e| {
            KerberosError::MutualAuthFailed(format!("the AP-REP does not decrypt with the ticket's key: {e}"))
        })?;
    let part: EncApRepPart = picky_asn1_der::from_bytes(&plain).map_err(der_error)?;
    let ctime = unix_time(&part.0.ctime.0)?;
    let cusec = uint(&part.0.cusec.0);
    if ctime != context.ctime || cusec != Some(context.cusec) {
        return Err(KerberosError::MutualAuthFailed("the AP-REP does not echo our authenticator's time".into()));
    }
    match &part.0.subkey.0 {
        Some(key) => {
            let key_type = uint(&key.0.key_type.0).map(|t| t as i32);
            cipher_suite(key_type.unwrap_or(0))
                .map_err(|_| KerberosError::MutualAuthFailed("acceptor subkey of an unsupported type".into()))?;
            Ok(key.0.key_value.0 .0.clone())
        }
        None => Ok(context.subkey.clone()),
    }
}

/// Verifies an acceptor's RFC 4121 4.2.6.1 MIC token over `data` (the
/// SPNEGO mechListMIC) with the context key.
pub fn verify_acceptor_mic(context_key: &[u8], etype: i32, data: &[u8], token: &[u8]) -> Result<(), KerberosError> {
    let bad = |why: &str| KerberosError::MutualAuthFailed(format!("the server's mechListMIC: {why}"));
    if token.len() < 16 || token[..2] != TOK_MIC || token[3..8] != [0xff; 5] {
        return Err(bad("not an RFC 4121 MIC token"));
    }
    if token[2] & 0x01 == 0 {
        return Err(bad("not sent by the acceptor"));
    }
    let suite = checksum_suite(etype);
    let mut signed = data.to_vec();
    signed.extend_from_slice(&token[..16]);
    let expected = suite
        .hasher()
        .checksum(context_key, KEY_USAGE_ACCEPTOR_SIGN, &signed)
        .map_err(|e| bad(&format!("checksum: {e}")))?;
    if expected.as_slice() != &token[16..] {
        return Err(bad("checksum does not verify"));
    }
    Ok(())
}

/// The initiator's MIC token over `data` (RFC 4121 4.2.6.1), for a
/// mechListMIC the acceptor asks for. `acceptor_subkey`: the context key is
/// the acceptor's subkey (flag 0x04).
pub fn initiator_mic(
    context_key: &[u8],
    etype: i32,
    acceptor_subkey: bool,
    data: &[u8],
) -> Result<Vec<u8>, KerberosError> {
    let mut token = vec![TOK_MIC[0], TOK_MIC[1], if acceptor_subkey { 0x04 } else { 0 }, 0xff, 0xff, 0xff, 0xff, 0xff];
    token.extend_from_slice(&u64::from(rand::thread_rng().next_u32() & 0x3fff_ffff).to_be_bytes());
    let mut signed = data.to_vec();
    signed.extend_from_slice(&token);
    let sum = checksum_suite(etype)
        .hasher()
        .checksum(context_key, KEY_USAGE_INITIATOR_SIGN, &signed)
        .map_err(|e| KerberosError::Malformed(format!("MIC checksum: {e}")))?;
    token.extend_from_slice(&sum);
    Ok(token)
}

fn checksum_suite(etype: i32) -> ChecksumSuite {
    match etype {
        AES256 => ChecksumSuite::HmacSha196Aes256,
        _ => ChecksumSuite::HmacSha196Aes128,
    }
}

impl ApReqContext {
    /// The etype of the context key (the subkeys share the ticket's).
    pub fn etype(&self) -> i32 {
        self.etype
    }

    /// The subkey our authenticator carried.
    pub fn initiator_subkey(&self) -> &[u8] {
        &self.subkey
    }
}

fn krb_error(context: &ApReqContext, message: &[u8]) -> KerberosError {
    match parse_kdc_reply(message) {
        Ok(KdcReply::Error(e)) => match e.code {
            32 | 37 => e.into_error(&context.client),
            code => KerberosError::ServerRefused { code, text: e.text.map(|t| format!(": {t}")).unwrap_or_default() },
        },
        Ok(KdcReply::Rep(_)) => KerberosError::Malformed("a KDC reply where a KRB-ERROR was expected".into()),
        Err(e) => e,
    }
}

/// `[APPLICATION 0] { krb5 OID, tok_id, message }` (RFC 2743 3.1).
fn wrap(tok_id: [u8; 2], message: &[u8]) -> Vec<u8> {
    let mut inner = der::tlv(TAG_OID, KRB5_OID);
    inner.extend_from_slice(&tok_id);
    inner.extend_from_slice(message);
    der::tlv(der::application(0), &inner)
}

/// The token id and message of a GSS krb5 token; the mechanism OID may be
/// either Kerberos OID.
fn unwrap(token: &[u8]) -> Result<([u8; 2], &[u8]), KerberosError> {
    let bad = |why: &str| KerberosError::Malformed(format!("GSS krb5 token: {why}"));
    let (tag, body, _) = read_tlv(token).ok_or_else(|| bad("truncated"))?;
    if tag != der::application(0) {
        return Err(bad("not an [APPLICATION 0] token"));
    }
    let (tag, oid, rest) = read_tlv(body).ok_or_else(|| bad("truncated mechanism OID"))?;
    if tag != TAG_OID || (oid != KRB5_OID && oid != MS_KRB5_OID) {
        return Err(bad("not the Kerberos mechanism"));
    }
    match rest {
        [a, b, message @ ..] => Ok(([*a, *b], message)),
        _ => Err(bad("no token id")),
    }
}

/// One DER TLV: (tag, content, what follows), or None when a length runs
/// past the input.
fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize), &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ccache::Principal;
    use crate::auth::kdc::AES256;
    use picky_krb::crypto::CipherSuite;
    use picky_krb::data_types::EncApRepPartInner;
    use picky_krb::messages::ApRepInner;
    use std::time::Duration;

    fn principal(parts: &[&str]) -> Principal {
        Principal {
            name_type: 1,
            realm: "EXAMPLE.COM".into(),
            components: parts.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A service ticket whose opaque ticket is a well-formed Ticket encrypted under a made-up service key.
    fn credential(session_key: &[u8]) -> Credential {
        let ticket = picky_krb::data_types::TicketInner {
            tkt_vno: ExplicitContextTag0::from(int(5)),
            realm: ExplicitContextTag1::from(super::super::kdc::kerberos_string("EXAMPLE.COM").unwrap()),
            sname: ExplicitContextTag2::from(principal_name(2, &["cifs", "fs1.example.com"]).unwrap()),
            enc_part: ExplicitContextTag3::from(EncryptedData {
                etype: ExplicitContextTag0::from(int(18)),
                kvno: Optional::from(None),
                cipher: ExplicitContextTag2::from(OctetStringAsn1::from(vec![7u8; 64])),
            }),
        };
        let ticket: Ticket = ApplicationTag::from(ticket);
        Credential {
            client: principal(&["alice"]),
            server: principal(&["cifs", "fs1.example.com"]),
            key_type: 18,
            key: session_key.to_vec(),
            auth_time: 0,
            start_time: 0,
            end_time: 0,
            renew_till: 0,
            is_skey: false,
            flags: 0,
            addresses: vec![],
            auth_data: vec![],
            ticket: picky_asn1_der::to_vec(&ticket).unwrap(),
            second_ticket: vec![],
        }
    }

    /// What a KDC-side acceptor does: decrypt the authenticator, answer with an AP-REP.
    fn acceptor_reply(session_key: &[u8], token: &[u8], echo_offset: u32, subkey: Option<&[u8]>) -> Vec<u8> {
        acceptor_reply_under(session_key, session_key, token, echo_offset, subkey)
    }

    /// As [`acceptor_reply`], the AP-REP encrypted under `rep_key`.
    fn acceptor_reply_under(
        session_key: &[u8],
        rep_key: &[u8],
        token: &[u8],
        echo_offset: u32,
        subkey: Option<&[u8]>,
    ) -> Vec<u8> {
        let (tok_id, message) = unwrap(token).unwrap();
        assert_eq!(tok_id, TOK_AP_REQ);
        let req: ApReq = picky_asn1_der::from_bytes(message).unwrap();
        assert_eq!(req.0.ap_options.0 .0.payload_view()[0], AP_OPTIONS_MUTUAL_REQUIRED);
        let cipher = CipherSuite::Aes256CtsHmacSha196.cipher();
        let plain = cipher.decrypt(session_key, KEY_USAGE_AP_REQ_AUTHENTICATOR, &req.0.authenticator.0.cipher.0 .0);
        let auth: Authenticator = picky_asn1_der::from_bytes(&plain.unwrap()).unwrap();
        let cksum = auth.0.cksum.0.as_ref().unwrap();
        assert_eq!(uint(&cksum.0.cksumtype.0), Some(GSS_CHECKSUM_TYPE));
        assert_eq!(&cksum.0.checksum.0 .0[20..24], &GSS_FLAGS.to_le_bytes());
        let ctime = unix_time(&auth.0.ctime.0).unwrap() + echo_offset;
        let part: EncApRepPart = ApplicationTag::from(EncApRepPartInner {
            ctime: ExplicitContextTag0::from(kerberos_time(UNIX_EPOCH + Duration::from_secs(ctime.into())).unwrap()),
            cusec: ExplicitContextTag1::from(auth.0.cusec.0.clone()),
            subkey: Optional::from(subkey.map(|k| {
                ExplicitContextTag2::from(EncryptionKey {
                    key_type: ExplicitContextTag0::from(int(18)),
                    key_value: ExplicitContextTag1::from(OctetStringAsn1::from(k.to_vec())),
                })
            })),
            seq_number: Optional::from(None),
        });
        let enc = cipher.encrypt(rep_key, KEY_USAGE_AP_REP_ENC_PART, &picky_asn1_der::to_vec(&part).unwrap()).unwrap();
        let rep: ApRep = ApplicationTag::from(ApRepInner {
            pvno: ExplicitContextTag0::from(int(5)),
            msg_type: ExplicitContextTag1::from(int(15)),
            enc_part: ExplicitContextTag2::from(EncryptedData {
                etype: ExplicitContextTag0::from(int(18)),
                kvno: Optional::from(None),
                cipher: ExplicitContextTag2::from(OctetStringAsn1::from(enc)),
            }),
        });
        wrap(TOK_AP_REP, &picky_asn1_der::to_vec(&rep).unwrap())
    }

    #[test]
    fn mutual_authentication_yields_the_acceptor_subkey() {
        let key = [3u8; 32];
        let (token, context) = initiate(&credential(&key), SystemTime::now()).unwrap();
        assert_eq!(&token[..2], &[0x60, 0x82], "an [APPLICATION 0] token with a long length");
        let acceptor_key = [9u8; 32];
        let reply = acceptor_reply(&key, &token, 0, Some(&acceptor_key));
        assert_eq!(accept_reply(&context, &reply).unwrap(), acceptor_key.to_vec());
        // Without an acceptor subkey, ours is the context key.
        let (token, context) = initiate(&credential(&key), SystemTime::now()).unwrap();
        let reply = acceptor_reply(&key, &token, 0, None);
        assert_eq!(accept_reply(&context, &reply).unwrap(), context.subkey);
        assert_eq!(context.subkey.len(), 32);
    }

    #[test]
    fn a_reply_that_does_not_prove_the_server_is_refused() {
        let key = [3u8; 32];
        let (token, context) = initiate(&credential(&key), SystemTime::now()).unwrap();
        // Wrong time echoed.
        let e = accept_reply(&context, &acceptor_reply(&key, &token, 1, None)).unwrap_err();
        assert!(matches!(e, KerberosError::MutualAuthFailed(_)), "{e}");
        // Encrypted under another key (someone without the service key).
        let e = accept_reply(&context, &acceptor_reply_under(&key, &[4u8; 32], &token, 0, None)).unwrap_err();
        assert!(matches!(e, KerberosError::MutualAuthFailed(_)), "{e}");
        // Truncated and oversized lengths.
        let good = acceptor_reply(&key, &token, 0, None);
        for cut in [0, 1, 5, 13, good.len() - 1] {
            assert!(accept_reply(&context, &good[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = good.clone();
        long[3] = 0xff;
        assert!(accept_reply(&context, &long).is_err());
        // An AP-REQ back is not an AP-REP.
        assert!(accept_reply(&context, &token).is_err());
    }

    #[test]
    fn mic_token_verifies_only_with_the_right_key_and_data() {
        let key = [5u8; 32];
        let data = b"mech types";
        let mut header = vec![0x04, 0x04, 0x01 | 0x04, 0xff, 0xff, 0xff, 0xff, 0xff];
        header.extend_from_slice(&7u64.to_be_bytes());
        let mut signed = data.to_vec();
        signed.extend_from_slice(&header);
        let sum = ChecksumSuite::HmacSha196Aes256.hasher().checksum(&key, KEY_USAGE_ACCEPTOR_SIGN, &signed).unwrap();
        let mut token = header.clone();
        token.extend_from_slice(&sum);
        verify_acceptor_mic(&key, AES256, data, &token).unwrap();
        assert!(verify_acceptor_mic(&[6u8; 32], AES256, data, &token).is_err());
        assert!(verify_acceptor_mic(&key, AES256, b"other", &token).is_err());
        assert!(verify_acceptor_mic(&key, AES256, data, &token[..10]).is_err());
    }
}
