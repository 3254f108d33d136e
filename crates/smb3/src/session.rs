//! NEGOTIATE and SESSION_SETUP: dialect and cipher choice, NTLMv2 over
//! SPNEGO, preauth integrity, key derivation and the encryption policy.
//! The session is the one place that owns its keys and its trees' state.

use std::sync::Arc;

use rand::RngCore;

use super::auth::ntlm::{NtlmClient, NtlmCredentials};
use super::auth::spnego::SpnegoClient;
use super::conn::{Connection, Outgoing, Protection, Response, SessionKeysInUse};
use super::crypto::encryption::Sealer;
use super::crypto::keys::SessionKeys;
use super::crypto::preauth::PreauthHash;
use super::crypto::signing::Signer;
use super::error::{Error, Result};
use super::options::{ClientOptions, Credentials, EncryptionPolicy};
use super::wire::ioctl::{
    IoctlRequest, IoctlResponse, ValidateNegotiateInfoRequest, ValidateNegotiateInfoResponse,
    FSCTL_VALIDATE_NEGOTIATE_INFO, IOCTL_IS_FSCTL,
};
use super::wire::negotiate::{self as neg, NegotiateContext, NegotiateRequest, NegotiateResponse};
use super::wire::session_setup::{self as ss, SessionSetupRequest, SessionSetupResponse};
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

/// Sends NEGOTIATE with every allowed dialect and the 3.1.1 contexts.
pub(crate) async fn negotiate(conn: &Connection, opts: &ClientOptions) -> Result<Negotiated> {
    let dialects: Vec<Dialect> = [Dialect::Smb210, Dialect::Smb300, Dialect::Smb302, Dialect::Smb311]
        .into_iter()
        .filter(|d| *d >= opts.min_dialect && *d <= opts.max_dialect)
        .collect();
    if dialects.is_empty() {
        return Err(Error::InvalidTarget {
            target: conn.addr().to_string(),
            why: format!("no dialect between {} and {}", opts.min_dialect, opts.max_dialect),
        });
    }
    let mut client_guid = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut client_guid);
    let mut salt = vec![0u8; 32];
    rand::thread_rng().fill_bytes(&mut salt);
    let capabilities = neg::CAP_LARGE_MTU | neg::CAP_ENCRYPTION;
    let mut contexts = Vec::new();
    if dialects.contains(&Dialect::Smb311) {
        contexts.push(NegotiateContext::PreauthIntegrity { hash_algorithms: vec![neg::HASH_SHA512], salt });
        contexts.push(NegotiateContext::Encryption { ciphers: opts.ciphers.clone() });
        contexts.push(NegotiateContext::Signing {
            algorithms: vec![SigningAlgorithmId::AesGmac, SigningAlgorithmId::AesCmac, SigningAlgorithmId::HmacSha256],
        });
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
    if !dialects.contains(&body.dialect) {
        return Err(match body.dialect {
            Dialect::Wildcard => Error::Smb1Only,
            d => Error::NoCommonDialect(d),
        });
    }
    let dialect = body.dialect;
    let mut preauth = None;
    let mut cipher = None;
    let mut signing = if dialect.is_smb3() { SigningAlgorithmId::AesCmac } else { SigningAlgorithmId::HmacSha256 };
    if dialect == Dialect::Smb311 {
        let (algs, _) =
            body.preauth().ok_or_else(|| Error::Protocol("3.1.1 without preauth integrity context".into()))?;
        if algs != [neg::HASH_SHA512] {
            return Err(Error::Protocol(format!("preauth hash algorithms {algs:?}, expected SHA-512")));
        }
        let mut h = PreauthHash::new();
        h.update(&sent[0]);
        h.update(&resp.msg);
        preauth = Some(h);
        if let Some(c) = body.cipher() {
            if !opts.ciphers.contains(&c) {
                return Err(Error::Protocol(format!("server chose cipher {c} that we did not offer")));
            }
            cipher = Some(c);
        }
        if let Some(s) = body.signing_algorithm() {
            if matches!(s, SigningAlgorithmId::Unknown(_)) {
                return Err(Error::Protocol(format!("server chose {s}")));
            }
            signing = s;
        }
    } else if dialect.is_smb3() && body.capabilities & neg::CAP_ENCRYPTION != 0 {
        cipher = Some(CipherId::Aes128Ccm);
    }
    conn.set_large_mtu(dialect != Dialect::Smb202 && body.capabilities & neg::CAP_LARGE_MTU != 0);
    Ok(Negotiated {
        dialect,
        cipher,
        signing,
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
        let can_encrypt = dialect.is_smb3() && negotiated.cipher.is_some();
        // Refuse before sending any credential material.
        if opts.encryption == EncryptionPolicy::Required && !can_encrypt {
            let why = if !dialect.is_smb3() {
                format!("server negotiated SMB {dialect}, which has no encryption")
            } else {
                format!("server offers no common cipher for SMB {dialect}")
            };
            return Err(Error::EncryptionUnavailable(why));
        }

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
        };
        let who = creds.display_name();
        let op = || format!("session setup with {} as {}", conn.addr(), who);
        let mut spnego = SpnegoClient::new(ntlm);
        let mut token = spnego.initial_token(&negotiated.security_blob)?;
        let mut preauth = negotiated.preauth.clone();
        let mut session_id = 0u64;
        let final_resp: Response = loop {
            let req = SessionSetupRequest {
                flags: 0,
                security_mode: CLIENT_SECURITY_MODE as u8,
                capabilities: 0,
                previous_session_id: 0,
                security_buffer: std::mem::take(&mut token),
            };
            let out = Outgoing::new(Command::SessionSetup, 0, 0, |m| req.encode(m));
            let prot = Protection { session_id, ..Default::default() };
            let (sent, mut resp) = conn.send(vec![out], prot, true).await?;
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
                    token = spnego.step(&body.security_buffer)?.ok_or_else(|| {
                        Error::Protocol("server wants more authentication but SPNEGO is complete".into())
                    })?;
                }
                NtStatus::SUCCESS => break resp,
                status => return Err(Error::Status { op: op(), status }),
            }
        };
        let body = SessionSetupResponse::decode(&final_resp.msg)?;
        if let Some(t) = spnego.step(&body.security_buffer)? {
            if !t.is_empty() {
                return Err(Error::Protocol("server accepted the session before authentication finished".into()));
            }
        }
        let guest = body.session_flags & ss::SESSION_FLAG_IS_GUEST != 0;
        let anonymous = body.session_flags & ss::SESSION_FLAG_IS_NULL != 0;
        match creds {
            Credentials::User { .. } if guest || anonymous => {
                // A server mapping a bad user to guest would otherwise hand out an unsigned, unencrypted session.
                return Err(Error::Status { op: op(), status: NtStatus::LOGON_FAILURE });
            }
            _ => {}
        }

        let session_key = spnego.session_key();
        let (keys, signing, encrypt) = match session_key {
            Some(sk) if !guest && !anonymous => {
                let hash = preauth.as_ref().map(|h| h.value()).unwrap_or([0u8; 64]);
                let derived = SessionKeys::derive(dialect, &sk, &hash, negotiated.cipher);
                let signer = Signer::new(negotiated.signing, &derived.signing)?;
                // 3.x servers sign the final SESSION_SETUP response; verify it with the new key.
                if final_resp.header.is_signed() {
                    signer.verify(&final_resp.msg)?;
                } else if dialect == Dialect::Smb311 {
                    return Err(Error::Integrity("final session setup response is not signed".into()));
                }
                let server_wants = body.session_flags & ss::SESSION_FLAG_ENCRYPT_DATA != 0;
                let encrypt = match opts.encryption {
                    EncryptionPolicy::Required => true,
                    EncryptionPolicy::IfSupported => can_encrypt,
                    EncryptionPolicy::Off => server_wants,
                };
                if encrypt && !can_encrypt {
                    return Err(Error::EncryptionUnavailable(
                        "server requires encryption but none was negotiated".into(),
                    ));
                }
                let sealer = match (encrypt, negotiated.cipher) {
                    (true, Some(c)) => Some(Sealer::new(c, &derived.encryption, &derived.decryption)?),
                    _ => None,
                };
                (SessionKeysInUse { signer: Some(signer), sealer }, Some(negotiated.signing), encrypt)
            }
            _ => {
                if !matches!(creds, Credentials::Guest | Credentials::Anonymous) {
                    return Err(Error::Protocol("authentication produced no session key".into()));
                }
                if opts.encryption == EncryptionPolicy::Required {
                    return Err(Error::EncryptionUnavailable("guest and anonymous sessions cannot encrypt".into()));
                }
                (SessionKeysInUse { signer: None, sealer: None }, None, false)
            }
        };
        let keys = Arc::new(keys);
        conn.register_session(session_id, keys.clone());
        let info = SessionInfo {
            server: conn.addr().to_string(),
            dialect,
            cipher: if encrypt { negotiated.cipher } else { None },
            signing,
            encrypted: encrypt,
            guest,
            anonymous,
            max_read: negotiated.max_read,
            max_write: negotiated.max_write,
            max_transact: negotiated.max_transact,
        };
        tracing::debug!(server = %info.server, %dialect, encrypted = encrypt, "SMB session established");
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
        })
    }

    /// The protection for a request on a tree that does (or does not) demand encryption.
    pub fn protection(&self, tree_encrypt: bool) -> Protection<'_> {
        let seal = self.encrypt || tree_encrypt;
        Protection {
            session_id: self.id,
            signer: self.keys.signer.as_ref(),
            sealer: if seal { self.keys.sealer.as_ref() } else { None },
            related: false,
        }
    }

    /// Sends one request in this session.
    pub async fn request(&self, out: Outgoing, tree_encrypt: bool) -> Result<Response> {
        self.conn.request(out, self.protection(tree_encrypt)).await
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
