//! SMB2 message signing and verification (MS-SMB2 3.1.4.1, 3.1.5.1).

use aes::Aes128;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::Aes128Gcm;
use cmac::Cmac;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::CryptoError;
use crate::wire::header::{FLAG_SERVER_TO_REDIR, FLAG_SIGNED, HEADER_LEN, SIGNATURE_OFFSET};
use crate::wire::{Command, SigningAlgorithmId};

const SIGNING_KEY_LEN: usize = 16;
const FLAGS_OFFSET: usize = 16;
const COMMAND_OFFSET: usize = 12;
const MESSAGE_ID_OFFSET: usize = 24;
const SIGNATURE_END: usize = SIGNATURE_OFFSET + 16;

/// The keyed MAC. Keyed once in `Signer::new`; HMAC and CMAC states are
/// cloned per message so the key schedule is not redone.
enum Mac16 {
    HmacSha256(Box<Hmac<Sha256>>),
    AesCmac(Box<Cmac<Aes128>>),
    AesGmac(Box<Aes128Gcm>),
}

/// Signs and verifies SMB2 messages with one signing key. `msg` is always a
/// single SMB2 message starting at its 64-byte header (for a compound, one
/// element including its padding).
pub struct Signer {
    algorithm: SigningAlgorithmId,
    mac: Mac16,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

/// AES-GMAC nonce (MS-SMB2 3.1.4.1): MessageId, then a 32-bit value whose
/// bit 0 says the sender is the server and bit 1 that the message is a
/// CANCEL request. Callers have checked `msg` holds a whole header.
fn gmac_nonce(msg: &[u8]) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(&msg[MESSAGE_ID_OFFSET..MESSAGE_ID_OFFSET + 8]);
    let flags = read_flags(msg);
    let from_server = flags & FLAG_SERVER_TO_REDIR != 0;
    let command = u16::from_le_bytes([msg[COMMAND_OFFSET], msg[COMMAND_OFFSET + 1]]);
    let cancel_request = !from_server && command == Command::Cancel.code();
    nonce[8] = u8::from(from_server) | (u8::from(cancel_request) << 1);
    nonce
}

fn read_flags(msg: &[u8]) -> u32 {
    u32::from_le_bytes([msg[FLAGS_OFFSET], msg[FLAGS_OFFSET + 1], msg[FLAGS_OFFSET + 2], msg[FLAGS_OFFSET + 3]])
}

impl Signer {
    /// `key` is the 16-byte signing key: Session.SessionKey for 2.x, the
    /// derived SigningKey for 3.x.
    pub fn new(algorithm: SigningAlgorithmId, key: &[u8]) -> Result<Signer, CryptoError> {
        if let SigningAlgorithmId::Unknown(_) = algorithm {
            return Err(CryptoError::UnsupportedSigning(algorithm));
        }
        if key.len() != SIGNING_KEY_LEN {
            return Err(CryptoError::BadKeyLength { what: "signing", got: key.len(), expected: SIGNING_KEY_LEN });
        }
        let bad_len = CryptoError::BadKeyLength { what: "signing", got: key.len(), expected: SIGNING_KEY_LEN };
        let mac = match algorithm {
            SigningAlgorithmId::HmacSha256 => {
                Mac16::HmacSha256(Box::new(<Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| bad_len)?))
            }
            SigningAlgorithmId::AesCmac => {
                Mac16::AesCmac(Box::new(<Cmac<Aes128> as Mac>::new_from_slice(key).map_err(|_| bad_len)?))
            }
            SigningAlgorithmId::AesGmac => {
                Mac16::AesGmac(Box::new(Aes128Gcm::new_from_slice(key).map_err(|_| bad_len)?))
            }
            SigningAlgorithmId::Unknown(_) => return Err(CryptoError::UnsupportedSigning(algorithm)),
        };
        Ok(Signer { algorithm, mac })
    }

    pub fn algorithm(&self) -> SigningAlgorithmId {
        self.algorithm
    }

    /// Sets SMB2_FLAGS_SIGNED in the header, zeroes the signature field,
    /// computes and writes the signature.
    ///
    /// Panics if `msg` is shorter than the 64-byte header: we only sign
    /// messages we built ourselves, so that is a bug in the caller.
    pub fn sign(&self, msg: &mut [u8]) {
        assert!(msg.len() >= HEADER_LEN, "signing a {}-byte message, shorter than an SMB2 header", msg.len());
        let flags = read_flags(msg) | FLAG_SIGNED;
        msg[FLAGS_OFFSET..FLAGS_OFFSET + 4].copy_from_slice(&flags.to_le_bytes());
        msg[SIGNATURE_OFFSET..SIGNATURE_END].fill(0);
        let mut signature = [0u8; 16];
        match &self.mac {
            Mac16::HmacSha256(keyed) => {
                let mut mac = (**keyed).clone();
                mac.update(msg);
                signature.copy_from_slice(&mac.finalize().into_bytes()[..16]);
            }
            Mac16::AesCmac(keyed) => {
                let mut mac = (**keyed).clone();
                mac.update(msg);
                signature.copy_from_slice(&mac.finalize().into_bytes());
            }
            Mac16::AesGmac(gcm) => signature = gmac(gcm, &gmac_nonce(msg), msg),
        }
        msg[SIGNATURE_OFFSET..SIGNATURE_END].copy_from_slice(&signature);
    }

    /// Verifies the signature of a received message. The flag must be set
    /// (else `Unsigned`); the comparison is constant-time.
    pub fn verify(&self, msg: &[u8]) -> Result<(), CryptoError> {
        if msg.len() < HEADER_LEN {
            return Err(CryptoError::MessageTooShort { len: msg.len() });
        }
        if read_flags(msg) & FLAG_SIGNED == 0 {
            return Err(CryptoError::Unsigned);
        }
        let received = &msg[SIGNATURE_OFFSET..SIGNATURE_END];
        let ok = match &self.mac {
            Mac16::HmacSha256(keyed) => {
                let mut mac = (**keyed).clone();
                feed_zeroed(&mut mac, msg);
                mac.verify_truncated_left(received).is_ok()
            }
            Mac16::AesCmac(keyed) => {
                let mut mac = (**keyed).clone();
                feed_zeroed(&mut mac, msg);
                mac.verify_slice(received).is_ok()
            }
            Mac16::AesGmac(gcm) => {
                // The AEAD API takes the AAD as one slice, so GMAC needs a
                // copy with the signature zeroed.
                let mut zeroed = msg.to_vec();
                zeroed[SIGNATURE_OFFSET..SIGNATURE_END].fill(0);
                let nonce = gmac_nonce(msg);
                gcm.decrypt_in_place_detached(
                    GenericArray::from_slice(&nonce),
                    &zeroed,
                    &mut [],
                    GenericArray::from_slice(received),
                )
                .is_ok()
            }
        };
        if ok {
            Ok(())
        } else {
            Err(CryptoError::BadSignature)
        }
    }
}

/// Feeds `msg` to a MAC as if its signature field were zero, without copying.
fn feed_zeroed<M: Mac>(mac: &mut M, msg: &[u8]) {
    mac.update(&msg[..SIGNATURE_OFFSET]);
    mac.update(&[0u8; 16]);
    mac.update(&msg[SIGNATURE_END..]);
}

/// AES-GMAC (RFC 4543): AES-GCM over an empty plaintext with `aad` as the
/// additional data; the tag is the MAC.
fn gmac(gcm: &Aes128Gcm, nonce: &[u8; 12], aad: &[u8]) -> [u8; 16] {
    let tag = gcm
        .encrypt_in_place_detached(GenericArray::from_slice(nonce), aad, &mut [])
        .expect("GCM accepts any SMB2 message length as AAD");
    let mut out = [0u8; 16];
    out.copy_from_slice(&tag);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Header;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// A request of `body_len` bytes after a header with the given fields.
    fn message(command: Command, flags: u32, message_id: u64, body_len: usize) -> Vec<u8> {
        let mut hdr = Header::new(command);
        hdr.flags = flags;
        hdr.message_id = message_id;
        hdr.session_id = 0x1000_0000_0019;
        hdr.tree_id = 5;
        let mut v = Vec::new();
        hdr.encode(&mut v);
        v.extend((0..body_len).map(|i| (i * 7) as u8));
        v
    }

    // Final SESSION_SETUP responses of the SMB 3.1.1 multichannel example in
    // the Microsoft Open Specifications blog "SMB 2 and SMB 3 security in
    // Windows 10: the anatomy of signing and cryptographic keys" (AES-CMAC,
    // no signing capabilities negotiated).
    const FIRST_CHANNEL_RESPONSE: &str = "FE534D4240000100000000000100800009000000000000000300000000000000\
                                          FFFE0000000000001900000000100000EBE146DA120BA25FC3376A49DFE31BC1\
                                          0900000048001D00A11B3019A0030A0100A3120410010000003B453CDC352416\
                                          4200000000";
    const SECOND_CHANNEL_RESPONSE: &str = "FE534D4240000100000000000100800009000000000000000300000000000000\
                                           FFFE00000000000019000000001000008D604217FFBACF40635BF9D872992150\
                                           0900000048001D00A11B3019A0030A0100A312041001000000CFB046FC5D368E\
                                           2200000000";

    #[test]
    fn published_aes_cmac_signatures_verify_and_reproduce() {
        for (msg_hex, key_hex) in [
            (FIRST_CHANNEL_RESPONSE, "73FE7A9A77BEF0BDE49C650D8CCB5F76"),
            (SECOND_CHANNEL_RESPONSE, "C962BCA1A9DD1697B030644199705431"),
        ] {
            let msg = h(msg_hex);
            let signer = Signer::new(SigningAlgorithmId::AesCmac, &h(key_hex)).unwrap();
            signer.verify(&msg).unwrap();
            let mut resigned = msg.clone();
            resigned[SIGNATURE_OFFSET..SIGNATURE_END].fill(0xEE);
            signer.sign(&mut resigned);
            assert_eq!(resigned, msg);
        }
    }

    #[test]
    fn wrong_key_or_tampering_fails_verify() {
        let msg = h(FIRST_CHANNEL_RESPONSE);
        let wrong = Signer::new(SigningAlgorithmId::AesCmac, &h("C962BCA1A9DD1697B030644199705431")).unwrap();
        assert!(matches!(wrong.verify(&msg), Err(CryptoError::BadSignature)));

        let right = Signer::new(SigningAlgorithmId::AesCmac, &h("73FE7A9A77BEF0BDE49C650D8CCB5F76")).unwrap();
        for i in [0, 30, SIGNATURE_OFFSET, SIGNATURE_END - 1, msg.len() - 1] {
            let mut bad = msg.clone();
            bad[i] ^= 0x01;
            assert!(matches!(right.verify(&bad), Err(CryptoError::BadSignature)), "byte {i}");
        }
        let mut longer = msg.clone();
        longer.push(0);
        assert!(matches!(right.verify(&longer), Err(CryptoError::BadSignature)));
    }

    #[test]
    fn hmac_sha256_is_the_truncated_hmac_of_the_zeroed_message() {
        let key = [0x42u8; 16];
        let signer = Signer::new(SigningAlgorithmId::HmacSha256, &key).unwrap();
        let mut msg = message(Command::Read, 0, 7, 49);
        msg[SIGNATURE_OFFSET] = 0xFF; // must be ignored: sign zeroes it first
        signer.sign(&mut msg);
        assert_ne!(read_flags(&msg) & FLAG_SIGNED, 0);

        let mut expect = msg.clone();
        expect[SIGNATURE_OFFSET..SIGNATURE_END].fill(0);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
        mac.update(&expect);
        assert_eq!(&msg[SIGNATURE_OFFSET..SIGNATURE_END], &mac.finalize().into_bytes()[..16]);

        signer.verify(&msg).unwrap();
        let other = Signer::new(SigningAlgorithmId::HmacSha256, &[0x43; 16]).unwrap();
        assert!(matches!(other.verify(&msg), Err(CryptoError::BadSignature)));
    }

    // NIST CAVP gcmEncryptExtIV128, [PTlen = 0][AADlen = 128] Count 0:
    // GCM with empty plaintext is exactly GMAC.
    #[test]
    fn gmac_matches_nist_gcm_vector() {
        let gcm = Aes128Gcm::new_from_slice(&h("77be63708971c4e240d1cb79e8d77feb")).unwrap();
        let nonce: [u8; 12] = h("e0e00f19fed7ba0136a797f3").try_into().unwrap();
        let tag = gmac(&gcm, &nonce, &h("7a43ec1d9c0a5a78a0b16533a6213cab"));
        assert_eq!(tag.to_vec(), h("209fcc8d3675ed938e9c7166709dd946"));
    }

    #[test]
    fn gmac_nonce_layout() {
        let req = message(Command::Read, 0, 0x0102_0304_0506_0708, 0);
        assert_eq!(gmac_nonce(&req), [8, 7, 6, 5, 4, 3, 2, 1, 0, 0, 0, 0]);
        let resp = message(Command::Read, FLAG_SERVER_TO_REDIR, 9, 0);
        assert_eq!(gmac_nonce(&resp), [9, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        let cancel = message(Command::Cancel, 0, 9, 0);
        assert_eq!(gmac_nonce(&cancel), [9, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]);
        // A CANCEL only exists as a request; a response flag means server.
        let cancel_resp = message(Command::Cancel, FLAG_SERVER_TO_REDIR, 9, 0);
        assert_eq!(gmac_nonce(&cancel_resp), [9, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn aes_gmac_signs_with_the_spec_nonce() {
        let key = [0x11u8; 16];
        let signer = Signer::new(SigningAlgorithmId::AesGmac, &key).unwrap();
        let mut msg = message(Command::Write, FLAG_SERVER_TO_REDIR, 77, 100);
        signer.sign(&mut msg);
        signer.verify(&msg).unwrap();

        let mut zeroed = msg.clone();
        zeroed[SIGNATURE_OFFSET..SIGNATURE_END].fill(0);
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&77u64.to_le_bytes());
        nonce[8] = 1;
        let gcm = Aes128Gcm::new_from_slice(&key).unwrap();
        assert_eq!(&msg[SIGNATURE_OFFSET..SIGNATURE_END], &gmac(&gcm, &nonce, &zeroed));

        let mut tampered = msg.clone();
        tampered[100] ^= 0x80;
        assert!(matches!(signer.verify(&tampered), Err(CryptoError::BadSignature)));
        let other = Signer::new(SigningAlgorithmId::AesGmac, &[0x12; 16]).unwrap();
        assert!(matches!(other.verify(&msg), Err(CryptoError::BadSignature)));
    }

    #[test]
    fn unsigned_and_short_messages_are_rejected() {
        let signer = Signer::new(SigningAlgorithmId::AesCmac, &[1; 16]).unwrap();
        let msg = message(Command::Echo, FLAG_SERVER_TO_REDIR, 3, 4);
        assert!(matches!(signer.verify(&msg), Err(CryptoError::Unsigned)));
        assert!(matches!(signer.verify(&msg[..63]), Err(CryptoError::MessageTooShort { len: 63 })));
    }

    #[test]
    fn every_algorithm_round_trips() {
        for alg in [SigningAlgorithmId::HmacSha256, SigningAlgorithmId::AesCmac, SigningAlgorithmId::AesGmac] {
            let signer = Signer::new(alg, &[0x5C; 16]).unwrap();
            assert_eq!(signer.algorithm(), alg);
            for len in [0, 1, 15, 16, 17, 1000] {
                let mut msg = message(Command::QueryInfo, 0, len as u64, len);
                signer.sign(&mut msg);
                signer.verify(&msg).unwrap_or_else(|e| panic!("{alg} {len}: {e}"));
            }
        }
    }

    #[test]
    fn rejects_bad_keys_and_unknown_algorithms() {
        assert!(matches!(
            Signer::new(SigningAlgorithmId::Unknown(9), &[0; 16]),
            Err(CryptoError::UnsupportedSigning(SigningAlgorithmId::Unknown(9)))
        ));
        for alg in [SigningAlgorithmId::HmacSha256, SigningAlgorithmId::AesCmac, SigningAlgorithmId::AesGmac] {
            assert!(matches!(Signer::new(alg, &[0; 32]), Err(CryptoError::BadKeyLength { got: 32, expected: 16, .. })));
        }
        let s = Signer::new(SigningAlgorithmId::AesCmac, &[0xAB; 16]).unwrap();
        assert!(!format!("{s:?}").to_lowercase().contains("abab"));
    }
}
