//! The Kerberos AS and TGS exchanges (RFC 4120 3.1, 3.3): a user name and
//! password become a TGT, and a TGT a service ticket, talking to the KDC over TCP (RFC 4120 7.2.2: each message behind a
//! 4-byte big-endian length).
//!
//! picky-krb provides the ASN.1 types and the RFC 3961/3962 crypto
//! (aes256/aes128-cts-hmac-sha1-96); the exchange, the error mapping and the
//! timeouts are ours (docs/kerberos.md says why). Flow: an AS-REQ without
//! pre-authentication draws KDC_ERR_PREAUTH_REQUIRED with the salt
//! (PA-ETYPE-INFO2); the second AS-REQ carries PA-ENC-TIMESTAMP encrypted
//! with the key derived from the password; the AS-REP's enc-part, decrypted
//! with the same key, holds the TGT's session key and times, and must echo
//! our nonce.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use picky_asn1::bit_string::BitString;
use picky_asn1::date::GeneralizedTime;
use picky_asn1::restricted_string::IA5String;
use picky_asn1::wrapper::{
    Asn1SequenceOf, BitStringAsn1, ExplicitContextTag0, ExplicitContextTag1, ExplicitContextTag2, ExplicitContextTag3,
    ExplicitContextTag4, ExplicitContextTag5, ExplicitContextTag7, ExplicitContextTag8, GeneralStringAsn1,
    GeneralizedTimeAsn1, IntegerAsn1, OctetStringAsn1, Optional,
};
use picky_asn1_der::application_tag::ApplicationTag;
use picky_krb::crypto::{ChecksumSuite, CipherSuite};
use picky_krb::data_types::{
    Authenticator, AuthenticatorInner, Checksum, EncryptedData, EtypeInfo2, KerbPaPacRequest, KerberosTime, PaData,
    PaEncTsEnc, PrincipalName, Ticket,
};
use picky_krb::messages::{
    ApReq, ApReqInner, AsRep, AsReq, EncAsRepPart, EncKdcRepPart, EncTgsRepPart, KdcRep, KdcReq, KdcReqBody, KrbError,
    TgsRep, TgsReq,
};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ccache::{Credential, Principal};
use crate::calendar::{civil_from_unix, unix_from_civil};
use crate::Secret;

pub(crate) const AES256: i32 = 18;
pub(crate) const AES128: i32 = 17;
pub(crate) const NT_PRINCIPAL: u8 = 1;
pub(crate) const NT_SRV_INST: u8 = 2;
const PA_ENC_TIMESTAMP: u8 = 2;
const PA_ETYPE_INFO2: u8 = 19;
const PA_PAC_REQUEST: u8 = 128;
const KEY_USAGE_PA_ENC_TIMESTAMP: i32 = 1;
const KEY_USAGE_AS_REP_ENC_PART: i32 = 3;
const KEY_USAGE_TGS_REQ_AUTHENTICATOR_CKSUM: i32 = 6;
const KEY_USAGE_TGS_REQ_AUTHENTICATOR: i32 = 7;
const KEY_USAGE_TGS_REP_ENC_PART: i32 = 8;
const PA_TGS_REQ: u8 = 1;
/// KDC replies are a few KiB (tickets with a PAC); refuse absurd lengths.
const MAX_REPLY: usize = 1 << 20;
/// Asked-for ticket lifetime when the configuration sets none; the KDC's
/// policy caps it (AD: 10 hours).
pub const DEFAULT_TICKET_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Why no TGT: one line naming the Kerberos failure. Never carries the
/// password or a key.
#[derive(Debug, thiserror::Error)]
pub enum KerberosError {
    #[error("Kerberos configuration: {0}")]
    Config(String),
    #[error("no Kerberos ticket: {0}")]
    NoTicket(String),
    #[error("Kerberos credential cache: {0}")]
    Ccache(#[from] super::ccache::CcacheError),
    #[error("no Kerberos realm for {user}: give the user as user@REALM or set default_realm in krb5.conf")]
    NoRealm { user: String },
    #[error("Kerberos mutual authentication of the server failed: {0}")]
    MutualAuthFailed(String),
    #[error("the server refused the Kerberos ticket: error {code}{text}")]
    ServerRefused { code: u32, text: String },
    #[error("Kerberos KDC {kdc} unreachable: {source}")]
    KdcUnreachable {
        kdc: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Kerberos principal {principal} is unknown to the KDC (KDC_ERR_C_PRINCIPAL_UNKNOWN)")]
    PrincipalUnknown { principal: String },
    #[error("Kerberos pre-authentication of {principal} failed: wrong password (KDC_ERR_PREAUTH_FAILED)")]
    WrongPassword { principal: String },
    #[error("Kerberos service principal {principal} is unknown to the KDC (KDC_ERR_S_PRINCIPAL_UNKNOWN): check the server name")]
    ServicePrincipalUnknown { principal: String },
    #[error("the Kerberos ticket of {principal} has expired (KRB_AP_ERR_TKT_EXPIRED): get a new one")]
    TicketExpired { principal: String },
    #[error("clock skew between this node and the Kerberos KDC is too great (KRB_AP_ERR_SKEW): sync the clocks")]
    ClockSkew,
    #[error("the Kerberos password of {principal} has expired (KDC_ERR_KEY_EXPIRED)")]
    PasswordExpired { principal: String },
    #[error("the Kerberos account {principal} is disabled, locked or expired (KDC_ERR_CLIENT_REVOKED)")]
    AccountRevoked { principal: String },
    #[error(
        "no Kerberos encryption type in common with the KDC (this client offers aes256-cts-hmac-sha1-96 and \
         aes128-cts-hmac-sha1-96)"
    )]
    NoCommonEncryptionType,
    #[error("the Kerberos KDC refused the request: error {code}{text}")]
    Kdc { code: u32, text: String },
    #[error("malformed Kerberos message: {0}")]
    Malformed(String),
}

/// Where the realm's KDCs are and how long to wait for each.
#[derive(Clone, Debug)]
pub struct KdcConfig {
    pub realm: String,
    /// Tried in order until one answers.
    pub kdcs: Vec<SocketAddr>,
    pub timeout: Duration,
    /// Asked-for lifetime of new tickets (krb5.conf `ticket_lifetime`);
    /// the KDC gives at most its policy's.
    pub ticket_lifetime: Duration,
}

/// Gets a TGT for `user@realm` with `password`: the credential (ticket,
/// session key, times) as a ccache would hold it.
pub async fn request_tgt(config: &KdcConfig, user: &str, password: &Secret) -> Result<Credential, KerberosError> {
    let principal = format!("{user}@{}", config.realm);
    let nonce: u32 = rand::thread_rng().gen_range(1..i32::MAX as u32);
    let lifetime = config.ticket_lifetime;
    let first = encode_as_req(&config.realm, user, nonce, None, SystemTime::now(), lifetime)?;
    let (etype, salt) = match parse_kdc_reply(&exchange(config, &first).await?)? {
        KdcReply::Error(e) if e.code == KDC_ERR_PREAUTH_REQUIRED => choose_etype_and_salt(&e, &config.realm, user)?,
        KdcReply::Error(e) => return Err(e.into_error(&principal)),
        // A KDC that does not require pre-authentication for this user
        // (DONT_REQ_PREAUTH): still answered with the default salt.
        KdcReply::Rep(_) => (AES256, format!("{}{user}", config.realm)),
    };
    let now = SystemTime::now();
    // The cipher (not Send) is gone before the next await.
    let (key, encrypted) = {
        let cipher = cipher_suite(etype)?.cipher();
        let key = cipher
            .generate_key_from_password(password.expose().as_bytes(), salt.as_bytes())
            .map_err(|e| KerberosError::Malformed(format!("string-to-key: {e}")))?;
        let timestamp = picky_asn1_der::to_vec(&PaEncTsEnc {
            patimestamp: ExplicitContextTag0::from(kerberos_time(now)?),
            pausec: Optional::from(Some(ExplicitContextTag1::from(int(micros(now))))),
        })
        .map_err(der_error)?;
        let encrypted = cipher
            .encrypt(&key, KEY_USAGE_PA_ENC_TIMESTAMP, &timestamp)
            .map_err(|e| KerberosError::Malformed(format!("encrypting the timestamp: {e}")))?;
        (key, encrypted)
    };
    let pa_enc_timestamp = picky_asn1_der::to_vec(&EncryptedData {
        etype: ExplicitContextTag0::from(int(etype as u32)),
        kvno: Optional::from(None),
        cipher: ExplicitContextTag2::from(OctetStringAsn1::from(encrypted)),
    })
    .map_err(der_error)?;
    let second = encode_as_req(&config.realm, user, nonce, Some(pa_enc_timestamp), now, lifetime)?;
    let rep = match parse_kdc_reply(&exchange(config, &second).await?)? {
        KdcReply::Rep(rep) => rep,
        KdcReply::Error(e) => return Err(e.into_error(&principal)),
    };
    decrypt_kdc_rep(&rep, etype, &key, KEY_USAGE_AS_REP_ENC_PART, nonce)
}

/// Gets a service ticket for `service/host` (e.g. `cifs/fs1.example.com`)
/// in the TGT's realm with the TGT (RFC 4120 3.3): a TGS-REQ whose
/// PA-TGS-REQ is an AP-REQ with the TGT and an authenticator that
/// checksums the request body, both under the TGT's session key.
pub async fn request_service_ticket(
    config: &KdcConfig,
    tgt: &Credential,
    service: &str,
    host: &str,
) -> Result<Credential, KerberosError> {
    let spn = format!("{service}/{host}@{}", tgt.server.realm);
    let etype = i32::from(tgt.key_type);
    let cipher = cipher_suite(etype)?.cipher();
    let checksum_suite = match etype {
        AES256 => ChecksumSuite::HmacSha196Aes256,
        _ => ChecksumSuite::HmacSha196Aes128,
    };
    let now = SystemTime::now();
    let nonce: u32 = rand::thread_rng().gen_range(1..i32::MAX as u32);
    let body = KdcReqBody {
        kdc_options: ExplicitContextTag0::from(BitStringAsn1::from(BitString::with_bytes(
            tgs_options(tgt.flags).to_be_bytes().to_vec(),
        ))),
        cname: Optional::from(None),
        realm: ExplicitContextTag2::from(kerberos_string(&tgt.server.realm)?),
        sname: Optional::from(Some(ExplicitContextTag3::from(principal_name(NT_SRV_INST, &[service, host])?))),
        from: Optional::from(None),
        till: ExplicitContextTag5::from(kerberos_time(now + config.ticket_lifetime)?),
        rtime: Optional::from(None),
        nonce: ExplicitContextTag7::from(int(nonce)),
        etype: ExplicitContextTag8::from(Asn1SequenceOf::from(vec![int(AES256 as u32), int(AES128 as u32)])),
        addresses: Optional::from(None),
        enc_authorization_data: Optional::from(None),
        additional_tickets: Optional::from(None),
    };
    let body_der = picky_asn1_der::to_vec(&body).map_err(der_error)?;
    let body_checksum = checksum_suite
        .hasher()
        .checksum(&tgt.key, KEY_USAGE_TGS_REQ_AUTHENTICATOR_CKSUM, &body_der)
        .map_err(|e| KerberosError::Malformed(format!("checksumming the TGS-REQ body: {e}")))?;
    let client_parts: Vec<&str> = tgt.client.components.iter().map(String::as_str).collect();
    let authenticator: Authenticator = ApplicationTag::from(AuthenticatorInner {
        authenticator_vno: ExplicitContextTag0::from(int(5)),
        crealm: ExplicitContextTag1::from(kerberos_string(&tgt.client.realm)?),
        cname: ExplicitContextTag2::from(principal_name(NT_PRINCIPAL, &client_parts)?),
        cksum: Optional::from(Some(ExplicitContextTag3::from(Checksum {
            cksumtype: ExplicitContextTag0::from(int(if etype == AES256 { 16 } else { 15 })),
            checksum: ExplicitContextTag1::from(OctetStringAsn1::from(body_checksum)),
        }))),
        cusec: ExplicitContextTag4::from(int(micros(now))),
        ctime: ExplicitContextTag5::from(kerberos_time(now)?),
        subkey: Optional::from(None),
        seq_number: Optional::from(None),
        authorization_data: Optional::from(None),
    });
    let authenticator = cipher
        .encrypt(&tgt.key, KEY_USAGE_TGS_REQ_AUTHENTICATOR, &picky_asn1_der::to_vec(&authenticator).map_err(der_error)?)
        .map_err(|e| KerberosError::Malformed(format!("encrypting the authenticator: {e}")))?;
    // Not Send: gone before the await below.
    drop(cipher);
    let ticket: Ticket = picky_asn1_der::from_bytes(&tgt.ticket).map_err(der_error)?;
    let ap_req: ApReq = ApplicationTag::from(ApReqInner {
        pvno: ExplicitContextTag0::from(int(5)),
        msg_type: ExplicitContextTag1::from(int(14)),
        ap_options: ExplicitContextTag2::from(BitStringAsn1::from(BitString::with_bytes(vec![0, 0, 0, 0]))),
        ticket: ExplicitContextTag3::from(ticket),
        authenticator: ExplicitContextTag4::from(EncryptedData {
            etype: ExplicitContextTag0::from(int(etype as u32)),
            kvno: Optional::from(None),
            cipher: ExplicitContextTag2::from(OctetStringAsn1::from(authenticator)),
        }),
    });
    let padata = vec![pa_data(PA_TGS_REQ, picky_asn1_der::to_vec(&ap_req).map_err(der_error)?)];
    let req: TgsReq = ApplicationTag::from(KdcReq {
        pvno: ExplicitContextTag1::from(int(5)),
        msg_type: ExplicitContextTag2::from(int(12)),
        padata: Optional::from(Some(ExplicitContextTag3::from(Asn1SequenceOf::from(padata)))),
        req_body: ExplicitContextTag4::from(body),
    });
    let req = picky_asn1_der::to_vec(&req).map_err(der_error)?;
    let rep = match parse_kdc_reply(&exchange(config, &req).await?)? {
        KdcReply::Rep(rep) => rep,
        KdcReply::Error(e) if e.code == KDC_ERR_S_PRINCIPAL_UNKNOWN => {
            return Err(KerberosError::ServicePrincipalUnknown { principal: spn })
        }
        KdcReply::Error(e) => return Err(e.into_error(&tgt.client.display())),
    };
    decrypt_kdc_rep(&rep, etype, &tgt.key, KEY_USAGE_TGS_REP_ENC_PART, nonce)
}

/// TGS-REQ options: renewable-ok, and forwardable only when the TGT is
/// (asking a non-forwardable TGT for it draws KDC_ERR_BADOPTION, as MIT
/// kinit's default TGT showed).
fn tgs_options(tgt_flags: u32) -> u32 {
    const FORWARDABLE: u32 = 0x4000_0000;
    const RENEWABLE_OK: u32 = 0x0000_0010;
    RENEWABLE_OK | (tgt_flags & FORWARDABLE)
}

const KDC_ERR_C_PRINCIPAL_UNKNOWN: u32 = 6;
const KDC_ERR_S_PRINCIPAL_UNKNOWN: u32 = 7;
const KRB_AP_ERR_TKT_EXPIRED: u32 = 32;
const KDC_ERR_CLIENT_REVOKED: u32 = 18;
const KDC_ERR_KEY_EXPIRED: u32 = 23;
const KDC_ERR_PREAUTH_FAILED: u32 = 24;
const KDC_ERR_PREAUTH_REQUIRED: u32 = 25;
const KDC_ERR_ETYPE_NOSUPP: u32 = 14;
const KRB_AP_ERR_SKEW: u32 = 37;

/// What a KRB-ERROR says, decoded from the message.
#[derive(Debug)]
pub(crate) struct KdcError {
    pub code: u32,
    pub text: Option<String>,
    e_data: Option<Vec<u8>>,
}

impl KdcError {
    /// The one-line error for a KRB-ERROR code (RFC 4120 7.5.9).
    pub(crate) fn into_error(self, principal: &str) -> KerberosError {
        let principal = principal.to_string();
        match self.code {
            KDC_ERR_C_PRINCIPAL_UNKNOWN => KerberosError::PrincipalUnknown { principal },
            KDC_ERR_PREAUTH_FAILED => KerberosError::WrongPassword { principal },
            KRB_AP_ERR_SKEW => KerberosError::ClockSkew,
            KRB_AP_ERR_TKT_EXPIRED => KerberosError::TicketExpired { principal },
            KDC_ERR_KEY_EXPIRED => KerberosError::PasswordExpired { principal },
            KDC_ERR_CLIENT_REVOKED => KerberosError::AccountRevoked { principal },
            KDC_ERR_ETYPE_NOSUPP => KerberosError::NoCommonEncryptionType,
            code => KerberosError::Kdc { code, text: self.text.map(|t| format!(": {t}")).unwrap_or_default() },
        }
    }
}

#[derive(Debug)]
pub(crate) enum KdcReply {
    Rep(Box<KdcRep>),
    Error(KdcError),
}

/// [APPLICATION 11] is an AS-REP, [APPLICATION 13] a TGS-REP, [APPLICATION 30] a KRB-ERROR.
pub(crate) fn parse_kdc_reply(bytes: &[u8]) -> Result<KdcReply, KerberosError> {
    match bytes.first() {
        Some(0x6b) => Ok(KdcReply::Rep(Box::new(picky_asn1_der::from_bytes::<AsRep>(bytes).map_err(der_error)?.0))),
        Some(0x6d) => Ok(KdcReply::Rep(Box::new(picky_asn1_der::from_bytes::<TgsRep>(bytes).map_err(der_error)?.0))),
        Some(0x7e) => {
            let e: KrbError = picky_asn1_der::from_bytes(bytes).map_err(der_error)?;
            Ok(KdcReply::Error(KdcError {
                code: e.0.error_code.0,
                text: e.0.e_text.0.as_ref().map(|t| t.0.to_string()).filter(|t| !t.is_empty()),
                e_data: e.0.e_data.0.as_ref().map(|d| d.0 .0.clone()),
            }))
        }
        Some(tag) => Err(KerberosError::Malformed(format!("unexpected KDC reply tag 0x{tag:02x}"))),
        None => Err(KerberosError::Malformed("empty KDC reply".into())),
    }
}

/// From PREAUTH_REQUIRED's METHOD-DATA: the first PA-ETYPE-INFO2 entry
/// we support, with its salt (default: realm followed by the user name).
fn choose_etype_and_salt(e: &KdcError, realm: &str, user: &str) -> Result<(i32, String), KerberosError> {
    let default_salt = format!("{realm}{user}");
    let Some(e_data) = &e.e_data else { return Ok((AES256, default_salt)) };
    let method_data: Asn1SequenceOf<PaData> = picky_asn1_der::from_bytes(e_data).map_err(der_error)?;
    for pa in &method_data.0 {
        if uint(&pa.padata_type.0) != Some(PA_ETYPE_INFO2 as u32) {
            continue;
        }
        let info: EtypeInfo2 = picky_asn1_der::from_bytes(&pa.padata_data.0 .0).map_err(der_error)?;
        for entry in &info.0 {
            let etype = uint(&entry.etype.0).map(|v| v as i32);
            if let Some(etype @ (AES256 | AES128)) = etype {
                let salt = entry.salt.0.as_ref().map(|s| s.0.to_string()).unwrap_or(default_salt);
                return Ok((etype, salt));
            }
        }
        return Err(KerberosError::NoCommonEncryptionType);
    }
    Ok((AES256, default_salt))
}

pub(crate) fn cipher_suite(etype: i32) -> Result<CipherSuite, KerberosError> {
    match etype {
        AES256 => Ok(CipherSuite::Aes256CtsHmacSha196),
        AES128 => Ok(CipherSuite::Aes128CtsHmacSha196),
        _ => Err(KerberosError::NoCommonEncryptionType),
    }
}

fn encode_as_req(
    realm: &str,
    user: &str,
    nonce: u32,
    pa_enc_timestamp: Option<Vec<u8>>,
    now: SystemTime,
    lifetime: Duration,
) -> Result<Vec<u8>, KerberosError> {
    let pac_request = picky_asn1_der::to_vec(&KerbPaPacRequest { include_pac: ExplicitContextTag0::from(true) })
        .map_err(der_error)?;
    let mut padata = vec![pa_data(PA_PAC_REQUEST, pac_request)];
    if let Some(ts) = pa_enc_timestamp {
        padata.insert(0, pa_data(PA_ENC_TIMESTAMP, ts));
    }
    // forwardable (bit 1), renewable-ok (bit 27): as MIT kinit asks.
    let options = BitString::with_bytes(vec![0x40, 0x00, 0x00, 0x10]);
    let body = KdcReqBody {
        kdc_options: ExplicitContextTag0::from(BitStringAsn1::from(options)),
        cname: Optional::from(Some(ExplicitContextTag1::from(principal_name(NT_PRINCIPAL, &[user])?))),
        realm: ExplicitContextTag2::from(kerberos_string(realm)?),
        sname: Optional::from(Some(ExplicitContextTag3::from(principal_name(NT_SRV_INST, &["krbtgt", realm])?))),
        from: Optional::from(None),
        till: ExplicitContextTag5::from(kerberos_time(now + lifetime)?),
        rtime: Optional::from(None),
        nonce: ExplicitContextTag7::from(int(nonce)),
        etype: ExplicitContextTag8::from(Asn1SequenceOf::from(vec![int(AES256 as u32), int(AES128 as u32)])),
        addresses: Optional::from(None),
        enc_authorization_data: Optional::from(None),
        additional_tickets: Optional::from(None),
    };
    let req: AsReq = ApplicationTag::from(KdcReq {
        pvno: ExplicitContextTag1::from(int(5)),
        msg_type: ExplicitContextTag2::from(int(10)),
        padata: Optional::from(Some(ExplicitContextTag3::from(Asn1SequenceOf::from(padata)))),
        req_body: ExplicitContextTag4::from(body),
    });
    picky_asn1_der::to_vec(&req).map_err(der_error)
}

fn decrypt_kdc_rep(
    rep: &KdcRep,
    etype: i32,
    key: &[u8],
    key_usage: i32,
    nonce: u32,
) -> Result<Credential, KerberosError> {
    let enc = &rep.enc_part.0;
    if uint(&enc.etype.0) != Some(etype as u32) {
        return Err(KerberosError::Malformed("KDC reply encrypted with an unexpected etype".into()));
    }
    let plain = cipher_suite(etype)?
        .cipher()
        .decrypt(key, key_usage, &enc.cipher.0 .0)
        .map_err(|e| KerberosError::Malformed(format!("decrypting the KDC reply: {e}")))?;
    // RFC 4120 5.4.2: implementations accept EncTGSRepPart here too.
    let part: EncKdcRepPart = match picky_asn1_der::from_bytes::<EncAsRepPart>(&plain) {
        Ok(p) => p.0,
        Err(_) => picky_asn1_der::from_bytes::<EncTgsRepPart>(&plain).map_err(der_error)?.0,
    };
    if uint(&part.nonce.0) != Some(nonce) {
        return Err(KerberosError::Malformed("KDC reply nonce does not match the request".into()));
    }
    let key_type = uint(&part.key.0.key_type.0)
        .and_then(|t| u16::try_from(t).ok())
        .ok_or_else(|| KerberosError::Malformed("session key type".into()))?;
    let flags = part.flags.0 .0.payload_view();
    let flags = flags.iter().take(4).fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
    Ok(Credential {
        client: principal(&rep.cname.0, &rep.crealm.0 .0.to_string()),
        server: principal(&part.sname.0, &part.srealm.0 .0.to_string()),
        key_type,
        key: part.key.0.key_value.0 .0.clone(),
        auth_time: unix_time(&part.auth_time.0)?,
        start_time: match &part.start_time.0 {
            Some(t) => unix_time(&t.0)?,
            None => unix_time(&part.auth_time.0)?,
        },
        end_time: unix_time(&part.end_time.0)?,
        renew_till: match &part.renew_till.0 {
            Some(t) => unix_time(&t.0)?,
            None => 0,
        },
        is_skey: false,
        flags,
        addresses: vec![],
        auth_data: vec![],
        ticket: picky_asn1_der::to_vec(&rep.ticket.0).map_err(der_error)?,
        second_ticket: vec![],
    })
}

/// One request/reply with the first KDC that answers.
async fn exchange(config: &KdcConfig, request: &[u8]) -> Result<Vec<u8>, KerberosError> {
    let mut last = None;
    for kdc in &config.kdcs {
        match tokio::time::timeout(config.timeout, exchange_with(*kdc, request)).await {
            Ok(Ok(reply)) => return Ok(reply),
            Ok(Err(e)) => last = Some((kdc, e)),
            Err(_) => last = Some((kdc, std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))),
        }
    }
    let (kdc, source) = match last {
        Some((kdc, e)) => (kdc.to_string(), e),
        None => (format!("of realm {}", config.realm), std::io::Error::other("no KDC configured")),
    };
    Err(KerberosError::KdcUnreachable { kdc, source })
}

async fn exchange_with(kdc: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(kdc).await?;
    let mut framed = (request.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(request);
    stream.write_all(&framed).await?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_REPLY {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("KDC reply of {len} bytes")));
    }
    let mut reply = vec![0u8; len];
    stream.read_exact(&mut reply).await?;
    Ok(reply)
}

fn pa_data(kind: u8, value: Vec<u8>) -> PaData {
    PaData {
        padata_type: ExplicitContextTag1::from(int(u32::from(kind))),
        padata_data: ExplicitContextTag2::from(OctetStringAsn1::from(value)),
    }
}

pub(crate) fn principal_name(name_type: u8, parts: &[&str]) -> Result<PrincipalName, KerberosError> {
    Ok(PrincipalName {
        name_type: ExplicitContextTag0::from(int(u32::from(name_type))),
        name_string: ExplicitContextTag1::from(Asn1SequenceOf::from(
            parts.iter().map(|p| kerberos_string(p)).collect::<Result<Vec<_>, _>>()?,
        )),
    })
}

fn principal(name: &PrincipalName, realm: &str) -> Principal {
    Principal {
        name_type: uint(&name.name_type.0).unwrap_or(0),
        realm: realm.to_string(),
        components: name.name_string.0 .0.iter().map(|s| s.0.to_string()).collect(),
    }
}

pub(crate) fn kerberos_string(s: &str) -> Result<GeneralStringAsn1, KerberosError> {
    IA5String::new(s.as_bytes().to_vec())
        .map(GeneralStringAsn1::from)
        .map_err(|_| KerberosError::Malformed(format!("{s:?} is not an IA5 string")))
}

/// A non-negative INTEGER in minimal DER form.
pub(crate) fn int(v: u32) -> IntegerAsn1 {
    IntegerAsn1::from_bytes_be_unsigned(v.to_be_bytes().to_vec())
}

pub(crate) fn uint(v: &IntegerAsn1) -> Option<u32> {
    let bytes = v.as_unsigned_bytes_be();
    let bytes = &bytes[bytes.iter().take_while(|b| **b == 0).count()..];
    (bytes.len() <= 4).then(|| bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

pub(crate) fn der_error(e: picky_asn1_der::Asn1DerError) -> KerberosError {
    KerberosError::Malformed(e.to_string())
}

pub(crate) fn micros(t: SystemTime) -> u32 {
    t.duration_since(UNIX_EPOCH).map(|d| d.subsec_micros()).unwrap_or(0)
}

/// KerberosTime (GeneralizedTime, whole seconds, UTC) of a system time.
pub(crate) fn kerberos_time(t: SystemTime) -> Result<KerberosTime, KerberosError> {
    let secs =
        t.duration_since(UNIX_EPOCH).map_err(|_| KerberosError::Malformed("clock before 1970".into()))?.as_secs();
    let (y, m, d, hh, mm, ss) = civil_from_unix(secs);
    let year = u16::try_from(y).map_err(|_| KerberosError::Malformed("year out of range".into()))?;
    GeneralizedTime::new(year, m, d, hh, mm, ss)
        .map(GeneralizedTimeAsn1::from)
        .ok_or_else(|| KerberosError::Malformed("invalid time".into()))
}

pub(crate) fn unix_time(t: &KerberosTime) -> Result<u32, KerberosError> {
    let t = &t.0;
    let secs = unix_from_civil(i64::from(t.year()), t.month(), t.day(), t.hour(), t.minute(), t.second());
    u32::try_from(secs).map_err(|_| KerberosError::Malformed("time outside 1970..2106".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tgs_asks_forwardable_only_of_a_forwardable_tgt() {
        assert_eq!(tgs_options(0), 0x10);
        assert_eq!(tgs_options(0x40e1_0000), 0x4000_0010);
    }

    #[test]
    fn integers_are_minimal_and_read_back() {
        for v in [0u32, 5, 127, 128, 255, 256, 0x7fff_ffff, u32::MAX] {
            assert_eq!(uint(&int(v)), Some(v), "{v}");
        }
    }

    #[test]
    fn kdc_error_codes_name_the_failure() {
        let e = |code| KdcError { code, text: None, e_data: None }.into_error("alice@EXAMPLE.COM").to_string();
        assert!(e(6).contains("unknown"), "{}", e(6));
        assert!(e(24).contains("wrong password"), "{}", e(24));
        assert!(e(37).contains("clock skew"), "{}", e(37));
        assert!(e(23).contains("expired"), "{}", e(23));
        assert!(e(18).contains("disabled"), "{}", e(18));
        assert!(e(32).contains("ticket of alice@EXAMPLE.COM has expired"), "{}", e(32));
        assert!(e(99).contains("error 99"), "{}", e(99));
    }

    #[test]
    fn as_req_round_trips_through_picky() {
        let req = encode_as_req(
            "EXAMPLE.COM",
            "alice",
            42,
            None,
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            DEFAULT_TICKET_LIFETIME,
        )
        .unwrap();
        assert_eq!(req[0], 0x6a, "[APPLICATION 10]");
        let back: AsReq = picky_asn1_der::from_bytes(&req).unwrap();
        assert_eq!(uint(&back.0.req_body.0.nonce.0), Some(42));
        assert_eq!(unix_time(&back.0.req_body.0.till.0).unwrap(), 1_700_000_000 + 24 * 3600);
    }
}
