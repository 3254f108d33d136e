//! What NEGOTIATE settles, decided without I/O: the dialects to offer for a
//! configured range, and whether the server's answer is acceptable (its
//! dialect, the 3.1.1 preauth hash, cipher and signing algorithm).
//!
//! These are exactly the choices a downgrading man in the middle or a
//! misbehaving server tries to steer, so they are pure functions over a
//! decoded [`NegotiateResponse`], tested on crafted responses instead of only
//! against the one Samba the integration tests start. The session state
//! machine sends the request, feeds the preauth hash and applies the result;
//! whether the outcome is good enough for the encryption policy is
//! `protection`'s call.

use crate::wire::negotiate::{self as neg, NegotiateResponse};
use crate::wire::{CipherId, Dialect, SigningAlgorithmId};

/// Every dialect this client speaks, oldest first. 2.0.2 is never offered:
/// it has no large MTU and nothing a 2.1 server lacks.
const DIALECTS: [Dialect; 4] = [Dialect::Smb210, Dialect::Smb300, Dialect::Smb302, Dialect::Smb311];

/// Signing algorithms offered in the 3.1.1 signing context, preferred first.
pub(crate) const SIGNING_ALGORITHMS: [SigningAlgorithmId; 3] =
    [SigningAlgorithmId::AesGmac, SigningAlgorithmId::AesCmac, SigningAlgorithmId::HmacSha256];

/// Why a negotiation is not acceptable. The session maps each to the
/// crate's [`Error`](crate::Error) with the connection's address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("no dialect between {min} and {max}")]
    EmptyDialectRange { min: Dialect, max: Dialect },
    /// The server answered with the 0x02FF wildcard: it wants SMB1.
    #[error("server answered with SMB1 only")]
    Smb1Only,
    #[error("no common dialect: server chose {0}")]
    DialectNotOffered(Dialect),
    #[error("3.1.1 without preauth integrity context")]
    NoPreauthContext,
    #[error("preauth hash algorithms {0:?}, expected SHA-512")]
    PreauthHash(Vec<u16>),
    #[error("server chose cipher {0} that we did not offer")]
    CipherNotOffered(CipherId),
    #[error("server chose {0}")]
    SigningNotOffered(SigningAlgorithmId),
}

/// The dialects to offer for `min..=max`, oldest first.
pub(crate) fn offered_dialects(min: Dialect, max: Dialect) -> Result<Vec<Dialect>, Refusal> {
    let dialects: Vec<Dialect> = DIALECTS.into_iter().filter(|d| *d >= min && *d <= max).collect();
    if dialects.is_empty() {
        return Err(Refusal::EmptyDialectRange { min, max });
    }
    Ok(dialects)
}

/// What an acceptable NEGOTIATE response settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Settled {
    pub dialect: Dialect,
    /// The cipher a session would encrypt with; `None` when the server cannot encrypt.
    pub cipher: Option<CipherId>,
    pub signing: SigningAlgorithmId,
    /// Whether multi-credit requests (reads and writes above 64 KiB) may be sent.
    pub large_mtu: bool,
}

/// Checks the server's NEGOTIATE response against what we offered
/// (`dialects`, and for 3.1.1 `ciphers` and [`SIGNING_ALGORITHMS`]).
///
/// A 3.1.1 server names its cipher in the encryption context; a 3.0 or 3.0.2
/// server that advertises encryption has only AES-128-CCM; 2.x cannot
/// encrypt. Signing is AES-CMAC on 3.x and HMAC-SHA256 on 2.x unless a 3.1.1
/// signing context says otherwise.
pub(crate) fn accept(resp: &NegotiateResponse, dialects: &[Dialect], ciphers: &[CipherId]) -> Result<Settled, Refusal> {
    let dialect = resp.dialect;
    if !dialects.contains(&dialect) {
        return Err(match dialect {
            Dialect::Wildcard => Refusal::Smb1Only,
            d => Refusal::DialectNotOffered(d),
        });
    }
    let mut cipher = None;
    let mut signing = if dialect.is_smb3() { SigningAlgorithmId::AesCmac } else { SigningAlgorithmId::HmacSha256 };
    if dialect == Dialect::Smb311 {
        let (algs, _salt) = resp.preauth().ok_or(Refusal::NoPreauthContext)?;
        if algs != [neg::HASH_SHA512] {
            return Err(Refusal::PreauthHash(algs.to_vec()));
        }
        // MS-SMB2 3.3.5.4: a server with no cipher in common answers with the
        // single cipher id 0; that means "cannot encrypt", not a bad choice.
        if let Some(c) = resp.cipher().filter(|c| *c != CipherId::Unknown(0)) {
            if !ciphers.contains(&c) {
                return Err(Refusal::CipherNotOffered(c));
            }
            cipher = Some(c);
        }
        if let Some(s) = resp.signing_algorithm() {
            if !SIGNING_ALGORITHMS.contains(&s) {
                return Err(Refusal::SigningNotOffered(s));
            }
            signing = s;
        }
    } else if dialect.is_smb3()
        && resp.capabilities & neg::CAP_ENCRYPTION != 0
        && ciphers.contains(&CipherId::Aes128Ccm)
    {
        // 3.0 and 3.0.2 know one cipher; it is used only if the caller allows it.
        cipher = Some(CipherId::Aes128Ccm);
    }
    let large_mtu = dialect != Dialect::Smb202 && resp.capabilities & neg::CAP_LARGE_MTU != 0;
    Ok(Settled { dialect, cipher, signing, large_mtu })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::negotiate::NegotiateContext;
    use crate::wire::{Command, Header};

    const ALL_CIPHERS: [CipherId; 4] =
        [CipherId::Aes256Gcm, CipherId::Aes128Gcm, CipherId::Aes256Ccm, CipherId::Aes128Ccm];

    fn response(dialect: Dialect, capabilities: u32, contexts: Vec<NegotiateContext>) -> NegotiateResponse {
        NegotiateResponse {
            security_mode: neg::SECURITY_SIGNING_ENABLED,
            dialect,
            server_guid: [9; 16],
            capabilities,
            max_transact_size: 1 << 20,
            max_read_size: 1 << 20,
            max_write_size: 1 << 20,
            system_time: 0,
            server_start_time: 0,
            security_buffer: vec![],
            contexts,
        }
    }

    fn preauth(algs: Vec<u16>) -> NegotiateContext {
        NegotiateContext::PreauthIntegrity { hash_algorithms: algs, salt: vec![0x5A; 32] }
    }

    fn smb311(contexts: Vec<NegotiateContext>) -> NegotiateResponse {
        response(Dialect::Smb311, neg::CAP_LARGE_MTU | neg::CAP_ENCRYPTION, contexts)
    }

    #[test]
    fn offers_the_configured_range() {
        assert_eq!(offered_dialects(Dialect::Smb210, Dialect::Smb311).unwrap(), DIALECTS);
        assert_eq!(offered_dialects(Dialect::Smb300, Dialect::Smb302).unwrap(), [Dialect::Smb300, Dialect::Smb302]);
        assert_eq!(offered_dialects(Dialect::Smb311, Dialect::Smb311).unwrap(), [Dialect::Smb311]);
        // 2.0.2 is never offered, even when the range asks only for it.
        assert_eq!(
            offered_dialects(Dialect::Smb202, Dialect::Smb202),
            Err(Refusal::EmptyDialectRange { min: Dialect::Smb202, max: Dialect::Smb202 })
        );
        assert!(offered_dialects(Dialect::Smb311, Dialect::Smb300).is_err());
    }

    #[test]
    fn refuses_a_dialect_we_did_not_offer() {
        let offered = offered_dialects(Dialect::Smb300, Dialect::Smb311).unwrap();
        // A downgrade to 2.1 below the configured minimum.
        let r = accept(&response(Dialect::Smb210, 0, vec![]), &offered, &ALL_CIPHERS);
        assert_eq!(r, Err(Refusal::DialectNotOffered(Dialect::Smb210)));
        let r = accept(&response(Dialect::Smb202, 0, vec![]), &offered, &ALL_CIPHERS);
        assert_eq!(r, Err(Refusal::DialectNotOffered(Dialect::Smb202)));
        let r = accept(&response(Dialect::Unknown(0x0400), 0, vec![]), &offered, &ALL_CIPHERS);
        assert_eq!(r, Err(Refusal::DialectNotOffered(Dialect::Unknown(0x0400))));
        let r = accept(&response(Dialect::Wildcard, 0, vec![]), &offered, &ALL_CIPHERS);
        assert_eq!(r, Err(Refusal::Smb1Only));
        // Above the configured maximum.
        let only_30 = offered_dialects(Dialect::Smb300, Dialect::Smb300).unwrap();
        let r = accept(&smb311(vec![preauth(vec![neg::HASH_SHA512])]), &only_30, &ALL_CIPHERS);
        assert_eq!(r, Err(Refusal::DialectNotOffered(Dialect::Smb311)));
    }

    #[test]
    fn smb2_cannot_encrypt_and_signs_with_hmac() {
        let offered = offered_dialects(Dialect::Smb210, Dialect::Smb311).unwrap();
        // CAP_ENCRYPTION means nothing below 3.0.
        let s = accept(
            &response(Dialect::Smb210, neg::CAP_ENCRYPTION | neg::CAP_LARGE_MTU, vec![]),
            &offered,
            &ALL_CIPHERS,
        )
        .unwrap();
        assert_eq!(
            s,
            Settled {
                dialect: Dialect::Smb210,
                cipher: None,
                signing: SigningAlgorithmId::HmacSha256,
                large_mtu: true
            }
        );
    }

    #[test]
    fn smb30_encrypts_only_with_the_capability() {
        let offered = offered_dialects(Dialect::Smb210, Dialect::Smb311).unwrap();
        for dialect in [Dialect::Smb300, Dialect::Smb302] {
            let s = accept(&response(dialect, neg::CAP_ENCRYPTION, vec![]), &offered, &ALL_CIPHERS).unwrap();
            assert_eq!(
                (s.cipher, s.signing, s.large_mtu),
                (Some(CipherId::Aes128Ccm), SigningAlgorithmId::AesCmac, false)
            );
            let s = accept(&response(dialect, neg::CAP_LARGE_MTU, vec![]), &offered, &ALL_CIPHERS).unwrap();
            assert_eq!((s.cipher, s.signing, s.large_mtu), (None, SigningAlgorithmId::AesCmac, true));
        }
    }

    #[test]
    fn smb311_takes_cipher_and_signing_from_its_contexts() {
        let offered = offered_dialects(Dialect::Smb210, Dialect::Smb311).unwrap();
        let resp = smb311(vec![
            preauth(vec![neg::HASH_SHA512]),
            NegotiateContext::Encryption { ciphers: vec![CipherId::Aes256Gcm] },
            NegotiateContext::Signing { algorithms: vec![SigningAlgorithmId::AesGmac] },
        ]);
        let s = accept(&resp, &offered, &ALL_CIPHERS).unwrap();
        assert_eq!(
            s,
            Settled {
                dialect: Dialect::Smb311,
                cipher: Some(CipherId::Aes256Gcm),
                signing: SigningAlgorithmId::AesGmac,
                large_mtu: true
            }
        );
        // No encryption or signing context: no cipher, AES-CMAC (the 3.x default).
        let s = accept(&smb311(vec![preauth(vec![neg::HASH_SHA512])]), &offered, &ALL_CIPHERS).unwrap();
        assert_eq!((s.cipher, s.signing), (None, SigningAlgorithmId::AesCmac));
    }

    #[test]
    fn smb311_refuses_bad_contexts() {
        let offered = [Dialect::Smb311];
        assert_eq!(accept(&smb311(vec![]), &offered, &ALL_CIPHERS), Err(Refusal::NoPreauthContext));
        assert_eq!(accept(&smb311(vec![preauth(vec![2])]), &offered, &ALL_CIPHERS), Err(Refusal::PreauthHash(vec![2])));
        assert_eq!(
            accept(&smb311(vec![preauth(vec![neg::HASH_SHA512, 2])]), &offered, &ALL_CIPHERS),
            Err(Refusal::PreauthHash(vec![neg::HASH_SHA512, 2]))
        );
        // We offered only the GCM ciphers; the server picks CCM.
        let gcm = [CipherId::Aes256Gcm, CipherId::Aes128Gcm];
        let resp = smb311(vec![
            preauth(vec![neg::HASH_SHA512]),
            NegotiateContext::Encryption { ciphers: vec![CipherId::Aes128Ccm] },
        ]);
        assert_eq!(accept(&resp, &offered, &gcm), Err(Refusal::CipherNotOffered(CipherId::Aes128Ccm)));
        let resp = smb311(vec![
            preauth(vec![neg::HASH_SHA512]),
            NegotiateContext::Signing { algorithms: vec![SigningAlgorithmId::Unknown(7)] },
        ]);
        assert_eq!(
            accept(&resp, &offered, &ALL_CIPHERS),
            Err(Refusal::SigningNotOffered(SigningAlgorithmId::Unknown(7)))
        );
    }

    #[test]
    fn cipher_zero_means_the_server_cannot_encrypt() {
        // MS-SMB2 3.3.5.4: no cipher in common is answered with cipher id 0.
        let resp = smb311(vec![
            preauth(vec![neg::HASH_SHA512]),
            NegotiateContext::Encryption { ciphers: vec![CipherId::Unknown(0)] },
        ]);
        let s = accept(&resp, &[Dialect::Smb311], &[CipherId::Aes256Gcm]).unwrap();
        assert_eq!(s.cipher, None);
    }

    #[test]
    fn smb30_uses_ccm_only_when_the_caller_allows_it() {
        let resp = response(Dialect::Smb300, neg::CAP_ENCRYPTION, vec![]);
        let gcm_only = [CipherId::Aes256Gcm, CipherId::Aes128Gcm];
        assert_eq!(accept(&resp, &[Dialect::Smb300], &gcm_only).unwrap().cipher, None);
        assert_eq!(accept(&resp, &[Dialect::Smb300], &ALL_CIPHERS).unwrap().cipher, Some(CipherId::Aes128Ccm));
    }

    #[test]
    fn decides_on_decoded_bytes() {
        // The same decision from bytes on the wire: a 3.1.1 response choosing
        // AES-128-GCM, encoded and decoded as the connection would see it.
        let resp = smb311(vec![
            preauth(vec![neg::HASH_SHA512]),
            NegotiateContext::Encryption { ciphers: vec![CipherId::Aes128Gcm] },
            NegotiateContext::Signing { algorithms: vec![SigningAlgorithmId::HmacSha256] },
        ]);
        let mut msg = Vec::new();
        Header::new(Command::Negotiate).encode(&mut msg);
        resp.encode(&mut msg);
        let decoded = NegotiateResponse::decode(&msg).unwrap();
        let s = accept(&decoded, &[Dialect::Smb302, Dialect::Smb311], &ALL_CIPHERS).unwrap();
        assert_eq!((s.cipher, s.signing), (Some(CipherId::Aes128Gcm), SigningAlgorithmId::HmacSha256));
    }
}
