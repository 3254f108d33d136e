//! The NEGOTIATE and SESSION_SETUP state machine: sends the requests, runs
//! NTLMv2 or Kerberos over SPNEGO (chosen by `auth::mechanism`), keeps the
//! preauth integrity hash, derives and proves the keys, and re-authenticates
//! a session in place. What is acceptable (dialect, cipher, signing) is decided by
//! `negotiation`, and whether and how the session is protected under the
//! encryption policy by `protection`; this module applies their answers.
//! The session is the one place that owns its keys and its trees' state.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use rand::RngCore;

use super::auth::krb5_conf::Krb5Conf;
use super::auth::mechanism::{self, CredentialKind, Plan, ServerOffers};
use super::auth::ntlm::{NtlmClient, NtlmCredentials};
use super::auth::spnego::SpnegoClient;
use super::auth::spnego_krb5::KerberosSpnegoClient;
use super::auth::tickets::{self, TicketSource};
use super::auth::AuthError;
use super::conn::{Connection, Outgoing, Protection, Response, SessionKeysInUse};
use super::crypto::encryption::Sealer;
use super::crypto::keys::SessionKeys;
use super::crypto::preauth::PreauthHash;
use super::crypto::signing::Signer;
use super::error::{Error, Result};
use super::negotiation::{self, SIGNING_ALGORITHMS};
use super::options::{ClientOptions, Credentials, KerberosCredentials};
use super::protection::{self, Logon, SessionFlags};
use super::wire::ioctl::{
    IoctlRequest, IoctlResponse, ValidateNegotiateInfoRequest, ValidateNegotiateInfoResponse,
    FSCTL_VALIDATE_NEGOTIATE_INFO, IOCTL_IS_FSCTL,
};
use super::wire::negotiate::{self as neg, NegotiateContext, NegotiateRequest, NegotiateResponse};
use super::wire::session_setup::{SessionSetupRequest, SessionSetupResponse};
use super::wire::simple::LogoffRequest;
use super::wire::{CipherId, Command, Dialect, FileId, NtStatus, SigningAlgorithmId};

/// What NEGOTIATE settled, kept for VALIDATE_NEGOTIATE_INFO and `info`.
#[derive(Clone, Debug)]
pub(crate) struct Negotiated {
    pub dialect: Dialect,
    pub cipher: Option<CipherId>,
    pub signing: SigningAlgorithmId,
    pub server_guid: [u8; 16],
    pub server_capabilities: u32,
    pub server_security_mode: u16,
    pub max_read: u32,
    pub max_write: u32,
    pub max_transact: u32,
    pub security_blob: Vec<u8>,
    /// Connection-level preauth hash after NEGOTIATE (3.1.1 only).
    pub preauth: Option<PreauthHash>,
    // What we sent, for VALIDATE_NEGOTIATE_INFO.
    pub client_guid: [u8; 16],
    pub client_capabilities: u32,
    pub client_security_mode: u16,
    pub client_dialects: Vec<Dialect>,
}

const CLIENT_SECURITY_MODE: u16 = neg::SECURITY_SIGNING_ENABLED | neg::SECURITY_SIGNING_REQUIRED;

/// Sends NEGOTIATE with every allowed dialect and the 3.1.1 contexts. The
/// caller's `client_guid` stays the same across a client's reconnects,
/// since servers only let the same client reclaim a leased durable open.
pub(crate) async fn negotiate(conn: &Connection, opts: &ClientOptions, client_guid: [u8; 16]) -> Result<Negotiated> {
    let refused = |r| negotiate_refused(r, conn);
    let dialects = negotiation::offered_dialects(opts.min_dialect, opts.max_dialect).map_err(refused)?;
    let mut salt = vec![0u8; 32];
    rand::thread_rng().fill_bytes(&mut salt);
    let capabilities = neg::CAP_LARGE_MTU | neg::CAP_ENCRYPTION;
    let mut contexts = Vec::new();
    if dialects.contains(&Dialect::Smb311) {
        contexts.push(NegotiateContext::PreauthIntegrity { hash_algorithms: vec![neg::HASH_SHA512], salt });
        contexts.push(NegotiateContext::Encryption { ciphers: opts.ciphers.clone() });
        contexts.push(NegotiateContext::Signing { algorithms: SIGNING_ALGORITHMS.to_vec() });
    }
    let req = NegotiateRequest {
        security_mode: CLIENT_SECURITY_MODE,
        capabilities,
        client_guid,
        dialects: dialects.clone(),
        contexts,
    };
    let out = Outgoing::new(Command::Negotiate, 0, 0, |m| req.encode(m));
    let (sent, mut resp) = conn.send(vec![out], Protection::default(), true).await?;
    let resp = resp.pop().expect("one response").ok(|| format!("negotiate with {}", conn.addr()))?;
    let body = NegotiateResponse::decode(&resp.msg)?;
    let settled = negotiation::accept(&body, &dialects, &opts.ciphers).map_err(refused)?;
    let dialect = settled.dialect;
    let preauth = (dialect == Dialect::Smb311).then(|| {
        let mut h = PreauthHash::new();
        h.update(&sent[0]);
        h.update(&resp.msg);
        h
    });
    conn.set_large_mtu(settled.large_mtu);
    Ok(Negotiated {
        dialect,
        cipher: settled.cipher,
        signing: settled.signing,
        server_guid: body.server_guid,
        server_capabilities: body.capabilities,
        server_security_mode: body.security_mode,
        max_read: body.max_read_size,
        max_write: body.max_write_size,
        max_transact: body.max_transact_size,
        security_blob: body.security_buffer,
        preauth,
        client_guid,
        client_capabilities: capabilities,
        client_security_mode: CLIENT_SECURITY_MODE,
        client_dialects: dialects,
    })
}

/// The crate error for a refused negotiation with the server at `conn`.
fn negotiate_refused(r: negotiation::Refusal, conn: &Connection) -> Error {
    use negotiation::Refusal::*;
    match r {
        EmptyDialectRange { .. } => Error::InvalidTarget { target: conn.addr().to_string(), why: r.to_string() },
        Smb1Only => Error::Smb1Only,
        DialectNotOffered(d) => Error::NoCommonDialect(d),
        NoPreauthContext | PreauthHash(_) | CipherNotOffered(_) | SigningNotOffered(_) => {
            Error::Protocol(r.to_string())
        }
    }
}

/// The crate error for a session refused under the encryption policy; `op`
/// names the session setup for a logon failure.
fn protection_refused(r: protection::Refusal, op: impl FnOnce() -> String) -> Error {
    use protection::Refusal::*;
    match r {
        DialectCannotEncrypt(_) | NoCommonCipher(_) | ServerDemandsUnavailableEncryption | GuestCannotEncrypt => {
            Error::EncryptionUnavailable(r.to_string())
        }
        UserMappedToGuest => Error::Status { op: op(), status: NtStatus::LOGON_FAILURE },
        NoSessionKey => Error::Protocol(r.to_string()),
    }
}

/// Facts about an established session, for `smb3-csi smb info` and metrics.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub server: String,
    pub dialect: Dialect,
    pub cipher: Option<CipherId>,
    pub signing: Option<SigningAlgorithmId>,
    pub encrypted: bool,
    pub guest: bool,
    pub anonymous: bool,
    /// Authenticated with Kerberos (else NTLMv2, guest or anonymous).
    pub kerberos: bool,
    pub max_read: u32,
    pub max_write: u32,
    pub max_transact: u32,
}

/// An authenticated session on a connection.
pub(crate) struct Session {
    pub conn: Arc<Connection>,
    pub id: u64,
    pub keys: Arc<SessionKeysInUse>,
    pub negotiated: Negotiated,
    pub encrypt: bool,
    pub info: SessionInfo,
    pub host: String,
    /// Whether VALIDATE_NEGOTIATE_INFO is still owed (3.0/3.0.2, first tree).
    pub validate_pending: std::sync::atomic::AtomicBool,
    /// ChannelSequence of this session's requests (3.x; raised per reconnect).
    pub channel_sequence: std::sync::atomic::AtomicU16,
    /// End of the Kerberos ticket the session was (re-)authenticated with,
    /// unix seconds; 0 for NTLM.
    ticket_end: AtomicU64,
    /// Serialises re-authentications and counts them.
    reauth: tokio::sync::Mutex<ReauthState>,
}

#[derive(Default)]
struct ReauthState {
    count: u64,
}

/// The mechanism running one logon, behind SPNEGO.
enum Gss {
    Ntlm(Box<SpnegoClient>),
    Kerberos(Box<KerberosSpnegoClient>),
}

impl Gss {
    /// The next token for a server token; `op` names the logon in errors.
    fn step(&mut self, token: &[u8], op: &(dyn Fn() -> String + Sync)) -> Result<Option<Vec<u8>>> {
        match self {
            Gss::Ntlm(c) => Ok(c.step(token)?),
            Gss::Kerberos(c) => c.step(token).map_err(|source| Error::Kerberos { op: op(), source }),
        }
    }

    /// The GSS context key (NTLM: 16 bytes; Kerberos: the subkey, 16 or 32).
    fn session_key(&self) -> Option<Vec<u8>> {
        match self {
            Gss::Ntlm(c) => c.session_key().map(|k| k.to_vec()),
            Gss::Kerberos(c) => c.session_key().map(<[u8]>::to_vec),
        }
    }
}

/// How long one KDC may take to answer (the SMB timeout is longer).
const KDC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Chooses the mechanism (see `auth::mechanism`), gets a Kerberos ticket
/// if that is the one, and builds the first SESSION_SETUP token. Returns
/// the ticket's end time (unix seconds) for a Kerberos logon.
async fn start_logon(
    negotiated: &Negotiated,
    host: &str,
    creds: &Credentials,
    opts: &ClientOptions,
    op: &(dyn Fn() -> String + Sync),
) -> Result<(Gss, Vec<u8>, Option<u32>)> {
    let kerberos_error = |source| Error::Kerberos { op: op(), source };
    let offers = ServerOffers::from_hint(&negotiated.security_blob)?;
    let conf = match creds {
        Credentials::User { .. } | Credentials::Kerberos(_) => {
            Krb5Conf::load(opts.krb5_config.as_deref()).map_err(kerberos_error)?
        }
        Credentials::Guest | Credentials::Anonymous => Krb5Conf::default(),
    };
    let kind = match creds {
        Credentials::User { domain, .. } => {
            let realm = conf.realm_for(domain);
            let kdc_configured = realm.as_deref().is_some_and(|r| conf.has_kdcs(r));
            CredentialKind::User { realm, kdc_configured }
        }
        Credentials::Kerberos(_) => CredentialKind::KerberosOnly,
        Credentials::Guest | Credentials::Anonymous => CredentialKind::GuestOrAnonymous,
    };
    let (realm, fallback) = match mechanism::choose(opts.security, offers, &kind).map_err(AuthError::from)? {
        Plan::Ntlm => return ntlm_logon(negotiated, creds),
        Plan::Kerberos { realm, fallback_to_ntlm } => (realm, fallback_to_ntlm),
    };
    let source = match creds {
        Credentials::User { user, password, .. } => {
            TicketSource::Password { user, realm: realm.as_deref().unwrap_or_default(), password }
        }
        Credentials::Kerberos(KerberosCredentials::Password { user, realm, password }) => {
            TicketSource::Password { user, realm, password }
        }
        Credentials::Kerberos(KerberosCredentials::Ccache(bytes)) => TicketSource::Ccache(bytes.expose()),
        Credentials::Guest | Credentials::Anonymous => return ntlm_logon(negotiated, creds),
    };
    match tickets::service_ticket(source, &conf, host, opts.timeout.min(KDC_TIMEOUT)).await {
        Ok(ticket) => {
            let (client, token) = KerberosSpnegoClient::start(&ticket).map_err(kerberos_error)?;
            tracing::debug!(server = %host, principal = %ticket.client.display(), "Kerberos logon");
            Ok((Gss::Kerberos(Box::new(client)), token, Some(ticket.end_time)))
        }
        Err(e) if fallback && mechanism::falls_back_to_ntlm(&e) => {
            tracing::warn!(server = %host, error = %e, "Kerberos unavailable; logging on with NTLMv2 (sec= unset)");
            ntlm_logon(negotiated, creds)
        }
        Err(e) => Err(kerberos_error(e)),
    }
}

fn ntlm_logon(negotiated: &Negotiated, creds: &Credentials) -> Result<(Gss, Vec<u8>, Option<u32>)> {
    let ntlm = match creds {
        Credentials::User { user, domain, password } => NtlmClient::new(NtlmCredentials {
            user: user.clone(),
            domain: domain.clone(),
            password: password.clone(),
            workstation: "SMB3CSI".into(),
        }),
        Credentials::Guest => NtlmClient::new(NtlmCredentials {
            user: "guest".into(),
            domain: String::new(),
            password: Default::default(),
            workstation: "SMB3CSI".into(),
        }),
        Credentials::Anonymous => NtlmClient::anonymous(),
        Credentials::Kerberos(_) => {
            return Err(AuthError::Mechanism(mechanism::MechanismRefusal::NtlmNeedsAPassword).into())
        }
    };
    let mut spnego = SpnegoClient::new(ntlm);
    let token = spnego.initial_token(&negotiated.security_blob)?;
    Ok((Gss::Ntlm(Box::new(spnego)), token, None))
}

/// What a finished SESSION_SETUP exchange gives.
struct Exchanged {
    session_id: u64,
    final_resp: Response,
    preauth: Option<PreauthHash>,
}

/// Runs SESSION_SETUP round trips until the server answers SUCCESS and the
/// mechanism is satisfied. `prot` carries the session id (0 for a new
/// session) and, when re-authenticating, the session's keys.
async fn exchange(
    conn: &Connection,
    gss: &mut Gss,
    mut token: Vec<u8>,
    prot: Protection<'_>,
    mut preauth: Option<PreauthHash>,
    op: &(dyn Fn() -> String + Sync),
) -> Result<Exchanged> {
    let mut session_id = prot.session_id;
    let final_resp: Response = loop {
        let req = SessionSetupRequest {
            flags: 0,
            security_mode: CLIENT_SECURITY_MODE as u8,
            capabilities: 0,
            previous_session_id: 0,
            security_buffer: std::mem::take(&mut token),
        };
        let out = Outgoing::new(Command::SessionSetup, 0, 0, |m| req.encode(m));
        let (sent, mut resp) = conn.send(vec![out], Protection { session_id, ..prot }, true).await?;
        let resp = resp.pop().expect("one response");
        if let Some(h) = preauth.as_mut() {
            h.update(&sent[0]);
        }
        session_id = resp.header.session_id;
        match resp.header.status {
            NtStatus::MORE_PROCESSING_REQUIRED => {
                if let Some(h) = preauth.as_mut() {
                    h.update(&resp.msg);
                }
                let body = SessionSetupResponse::decode(&resp.msg)?;
                token = gss
                    .step(&body.security_buffer, op)?
                    .ok_or_else(|| Error::Protocol("server wants more authentication but SPNEGO is complete".into()))?;
            }
            NtStatus::SUCCESS => break resp,
            status => return Err(Error::Status { op: op(), status }),
        }
    };
    let body = SessionSetupResponse::decode(&final_resp.msg)?;
    if let Some(t) = gss.step(&body.security_buffer, op)? {
        if !t.is_empty() {
            return Err(Error::Protocol("server accepted the session before authentication finished".into()));
        }
    }
    Ok(Exchanged { session_id, final_resp, preauth })
}

impl Session {
    /// Runs SESSION_SETUP to completion and derives the session's keys.
    pub async fn establish(
        conn: Arc<Connection>,
        negotiated: Negotiated,
        host: &str,
        creds: &Credentials,
        opts: &ClientOptions,
    ) -> Result<Session> {
        let dialect = negotiated.dialect;
        let can_encrypt = protection::can_encrypt(dialect, negotiated.cipher);
        let who = creds.display_name();
        let op = || format!("session setup with {} as {}", conn.addr(), who);
        // Refuse before sending any credential material.
        protection::check_before_logon(opts.encryption, dialect, negotiated.cipher)
            .map_err(|r| protection_refused(r, op))?;

        let (mut gss, token, ticket_end) = start_logon(&negotiated, host, creds, opts, &op).await?;
        let Exchanged { session_id, final_resp, preauth } =
            exchange(&conn, &mut gss, token, Protection::default(), negotiated.preauth.clone(), &op).await?;
        let body = SessionSetupResponse::decode(&final_resp.msg)?;
        let flags = SessionFlags::from_bits(body.session_flags);
        let session_key = gss.session_key();
        let logon = protection::accept_logon(opts.encryption, creds, flags, session_key.is_some())
            .map_err(|r| protection_refused(r, op))?;
        let (keys, signing, encrypt) = match logon {
            Logon::Keyed => {
                let sk = session_key.ok_or_else(|| Error::Protocol("authentication produced no session key".into()))?;
                let hash = preauth.as_ref().map(|h| h.value()).unwrap_or([0u8; 64]);
                let derived = SessionKeys::derive(dialect, &sk, &hash, negotiated.cipher);
                let signer = Signer::new(negotiated.signing, &derived.signing)?;
                // 3.x servers sign the final SESSION_SETUP response; verify it with the new key.
                if final_resp.header.is_signed() {
                    signer.verify(&final_resp.msg)?;
                } else if dialect == Dialect::Smb311 {
                    return Err(Error::Integrity("final session setup response is not signed".into()));
                }
                let encrypt = protection::seal_session(opts.encryption, can_encrypt, flags)
                    .map_err(|r| protection_refused(r, op))?;
                let sealer = match (encrypt, negotiated.cipher) {
                    (true, Some(c)) => Some(Sealer::new(c, &derived.encryption, &derived.decryption)?),
                    _ => None,
                };
                (SessionKeysInUse { signer: Some(signer), sealer }, Some(negotiated.signing), encrypt)
            }
            Logon::Unkeyed => (SessionKeysInUse { signer: None, sealer: None }, None, false),
        };
        let keys = Arc::new(keys);
        conn.register_session(session_id, keys.clone());
        let info = SessionInfo {
            server: conn.addr().to_string(),
            dialect,
            cipher: if encrypt { negotiated.cipher } else { None },
            signing,
            encrypted: encrypt,
            guest: flags.guest,
            anonymous: flags.anonymous,
            kerberos: matches!(gss, Gss::Kerberos(_)),
            max_read: negotiated.max_read,
            max_write: negotiated.max_write,
            max_transact: negotiated.max_transact,
        };
        tracing::debug!(server = %info.server, %dialect, encrypted = encrypt, kerberos = info.kerberos, "SMB session established");
        let validate = matches!(dialect, Dialect::Smb300 | Dialect::Smb302) && keys.signer.is_some();
        Ok(Session {
            conn,
            id: session_id,
            keys,
            negotiated,
            encrypt,
            info,
            host: host.to_string(),
            validate_pending: std::sync::atomic::AtomicBool::new(validate),
            channel_sequence: std::sync::atomic::AtomicU16::new(0),
            ticket_end: AtomicU64::new(ticket_end.map_or(0, u64::from)),
            reauth: tokio::sync::Mutex::new(ReauthState::default()),
        })
    }

    /// Re-authenticates this session in place (MS-SMB2 3.2.4.2.3 and
    /// 3.2.5.3.2): SESSION_SETUP with its SessionId, signed (and sealed, on
    /// an encrypted session) with its keys, which stay as they are; its
    /// trees and open handles are untouched. Concurrent callers (many
    /// requests told STATUS_NETWORK_SESSION_EXPIRED at once) share one
    /// re-authentication: a caller that waited for another's returns at once.
    pub async fn reauthenticate(&self, creds: &Credentials, opts: &ClientOptions) -> Result<()> {
        let seen = self.reauth.lock().await.count;
        let mut state = self.reauth.lock().await;
        if state.count != seen {
            return Ok(());
        }
        let who = creds.display_name();
        let op = || format!("re-authenticating the session with {} as {}", self.conn.addr(), who);
        let (mut gss, token, ticket_end) = start_logon(&self.negotiated, &self.host, creds, opts, &op).await?;
        exchange(&self.conn, &mut gss, token, self.protection(false), None, &op).await?;
        self.ticket_end.store(ticket_end.map_or(0, u64::from), std::sync::atomic::Ordering::Relaxed);
        state.count += 1;
        tracing::info!(server = %self.conn.addr(), user = %who, ticket_end, "SMB session re-authenticated in place");
        Ok(())
    }

    /// When the Kerberos ticket behind this session ends (the server
    /// expires the session then); `None` for NTLM.
    pub fn ticket_end(&self) -> Option<std::time::SystemTime> {
        match self.ticket_end.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            secs => Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)),
        }
    }

    /// The protection for a request on a tree that does (or does not) demand encryption.
    pub fn protection(&self, tree_encrypt: bool) -> Protection<'_> {
        let seal = self.encrypt || tree_encrypt;
        Protection {
            session_id: self.id,
            signer: self.keys.signer.as_ref(),
            sealer: if seal { self.keys.sealer.as_ref() } else { None },
            related: false,
            channel_sequence: self.channel_sequence.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Sends one request in this session.
    pub async fn request(&self, out: Outgoing, tree_encrypt: bool) -> Result<Response> {
        self.conn.request(out, self.protection(tree_encrypt)).await
    }

    /// Sends one request the server may keep pending (a blocking LOCK); see `Connection::request_cancellable`.
    pub async fn request_cancellable(
        &self,
        out: Outgoing,
        tree_encrypt: bool,
        cancelled: std::pin::Pin<&mut (dyn std::future::Future<Output = ()> + Send)>,
    ) -> Result<Response> {
        self.conn.request_cancellable(out, self.protection(tree_encrypt), cancelled).await
    }

    /// Sends related requests as one compound (e.g. CREATE + QUERY_INFO + CLOSE).
    pub async fn compound(&self, outs: Vec<Outgoing>, tree_encrypt: bool) -> Result<Vec<Response>> {
        let mut prot = self.protection(tree_encrypt);
        prot.related = true;
        Ok(self.conn.send(outs, prot, false).await?.1)
    }

    /// MS-SMB2 3.2.5.5 / 3.3.5.15.12: proves no one downgraded the 3.0/3.0.2 negotiation.
    pub async fn validate_negotiate(&self, tree_id: u32, tree_encrypt: bool) -> Result<()> {
        if !self.validate_pending.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let n = &self.negotiated;
        let input = ValidateNegotiateInfoRequest {
            capabilities: n.client_capabilities,
            guid: n.client_guid,
            security_mode: n.client_security_mode,
            dialects: n.client_dialects.clone(),
        }
        .encode();
        let req = IoctlRequest {
            ctl_code: FSCTL_VALIDATE_NEGOTIATE_INFO,
            file_id: FileId::ANY,
            input,
            max_input_response: 0,
            max_output_response: 24,
            flags: IOCTL_IS_FSCTL,
        };
        // Always signed, even on an encrypted session (the server must sign it).
        let prot = self.protection(tree_encrypt);
        if prot.signer.is_none() {
            return Ok(());
        }
        let out = Outgoing::new(Command::Ioctl, tree_id, 24, |m| req.encode(m));
        let resp = self.conn.request(out, prot).await?.ok(|| "validate negotiate info".into())?;
        let body = IoctlResponse::decode(&resp.msg)?;
        let v = ValidateNegotiateInfoResponse::decode(&body.output)?;
        if v.dialect != n.dialect
            || v.guid != n.server_guid
            || v.security_mode != n.server_security_mode
            || v.capabilities != n.server_capabilities
        {
            return Err(Error::Integrity("VALIDATE_NEGOTIATE_INFO mismatch: negotiation was tampered with".into()));
        }
        Ok(())
    }

    /// LOGOFF; errors are ignored by callers that are shutting down anyway.
    pub async fn logoff(&self) -> Result<()> {
        let out = Outgoing::new(Command::Logoff, 0, 0, |m| LogoffRequest.encode(m));
        let r = self.request(out, false).await;
        self.conn.unregister_session(self.id);
        r?.ok(|| "logoff".into()).map(|_| ())
    }
}
