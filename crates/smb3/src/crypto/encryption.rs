//! SMB 3.x message encryption (MS-SMB2 3.1.4.3) and decryption (3.2.5.1.1):
//! AES-128/256-CCM (11-byte nonce) and AES-128/256-GCM (12-byte nonce), with
//! the transform header from the Nonce field on as additional data.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use aes::{Aes128, Aes256};
use aes_gcm::aead::consts::{U11, U16};
use aes_gcm::aead::generic_array::typenum::Unsigned;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{AeadCore, AeadInPlace, KeyInit};
use ccm::Ccm;
use rand::RngCore;

use super::nonce_window::{used_part, NonceWindow, NONCES_REMEMBERED};
use super::CryptoError;
use crate::wire::transform::{
    TransformHeader, TRANSFORM_AAD_OFFSET, TRANSFORM_FLAG_ENCRYPTED, TRANSFORM_HEADER_LEN, TRANSFORM_SIGNATURE_OFFSET,
};
use crate::wire::CipherId;

type Aes128Ccm = Ccm<Aes128, U16, U11>;
type Aes256Ccm = Ccm<Aes256, U16, U11>;

/// Largest plaintext we accept from the server. SMB2 messages are bounded by
/// the negotiated MaxRead/MaxWrite/MaxTransact sizes (8 MiB for Samba and
/// Windows) plus headers; compound chains stay below this too.
pub const MAX_DECRYPTED_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// An AEAD with a 16-byte tag, behind one object-safe interface so a
/// `Sealer` can hold any of the four ciphers. `nonce_field` is the whole
/// 16-byte Nonce field; each cipher uses its own prefix of it.
trait MessageAead: Send + Sync {
    fn nonce_len(&self) -> usize;
    fn seal(&self, nonce_field: &[u8; 16], aad: &[u8], buf: &mut [u8]) -> Result<[u8; 16], aes_gcm::Error>;
    fn open(&self, nonce_field: &[u8; 16], aad: &[u8], buf: &mut [u8], tag: &[u8; 16]) -> Result<(), aes_gcm::Error>;
}

impl<A> MessageAead for A
where
    A: AeadInPlace + AeadCore<TagSize = U16> + Send + Sync,
{
    fn nonce_len(&self) -> usize {
        A::NonceSize::USIZE
    }

    fn seal(&self, nonce_field: &[u8; 16], aad: &[u8], buf: &mut [u8]) -> Result<[u8; 16], aes_gcm::Error> {
        let nonce = GenericArray::from_slice(&nonce_field[..A::NonceSize::USIZE]);
        let tag = self.encrypt_in_place_detached(nonce, aad, buf)?;
        let mut out = [0u8; 16];
        out.copy_from_slice(&tag);
        Ok(out)
    }

    fn open(&self, nonce_field: &[u8; 16], aad: &[u8], buf: &mut [u8], tag: &[u8; 16]) -> Result<(), aes_gcm::Error> {
        let nonce = GenericArray::from_slice(&nonce_field[..A::NonceSize::USIZE]);
        self.decrypt_in_place_detached(nonce, aad, buf, GenericArray::from_slice(tag))
    }
}

/// AES-GCM from ring: its assembly (AES-NI with carry-less multiply, AVX where present) runs several times
/// faster than RustCrypto's aes-gcm, whose POLYVAL took nearly half the client's cycles on large reads
/// (crates/smb3/benches/aead.rs measures both). CCM stays on RustCrypto: ring has none.
struct RingGcm(ring::aead::LessSafeKey);

impl RingGcm {
    fn new(algorithm: &'static ring::aead::Algorithm, key: &[u8]) -> Option<RingGcm> {
        let key = ring::aead::UnboundKey::new(algorithm, key).ok()?;
        Some(RingGcm(ring::aead::LessSafeKey::new(key)))
    }

    fn nonce(nonce_field: &[u8; 16]) -> ring::aead::Nonce {
        let mut n = [0u8; ring::aead::NONCE_LEN];
        n.copy_from_slice(&nonce_field[..ring::aead::NONCE_LEN]);
        ring::aead::Nonce::assume_unique_for_key(n)
    }
}

impl MessageAead for RingGcm {
    fn nonce_len(&self) -> usize {
        ring::aead::NONCE_LEN
    }

    fn seal(&self, nonce_field: &[u8; 16], aad: &[u8], buf: &mut [u8]) -> Result<[u8; 16], aes_gcm::Error> {
        let tag = self
            .0
            .seal_in_place_separate_tag(Self::nonce(nonce_field), ring::aead::Aad::from(aad), buf)
            .map_err(|_| aes_gcm::Error)?;
        let mut out = [0u8; 16];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    fn open(&self, nonce_field: &[u8; 16], aad: &[u8], buf: &mut [u8], tag: &[u8; 16]) -> Result<(), aes_gcm::Error> {
        self.0
            .open_in_place_separate_tag(
                Self::nonce(nonce_field),
                ring::aead::Aad::from(aad),
                ring::aead::Tag::from(*tag),
                buf,
                0..,
            )
            .map(|_| ())
            .map_err(|_| aes_gcm::Error)
    }
}

fn build_aead(cipher: CipherId, key: &[u8], what: &'static str) -> Result<Box<dyn MessageAead>, CryptoError> {
    let expected = cipher.key_len().ok_or(CryptoError::UnsupportedCipher(cipher))?;
    let bad_len = CryptoError::BadKeyLength { what, got: key.len(), expected };
    if key.len() != expected {
        return Err(bad_len);
    }
    Ok(match cipher {
        CipherId::Aes128Ccm => Box::new(Aes128Ccm::new_from_slice(key).map_err(|_| bad_len)?),
        CipherId::Aes128Gcm => Box::new(RingGcm::new(&ring::aead::AES_128_GCM, key).ok_or(bad_len)?),
        CipherId::Aes256Ccm => Box::new(Aes256Ccm::new_from_slice(key).map_err(|_| bad_len)?),
        CipherId::Aes256Gcm => Box::new(RingGcm::new(&ring::aead::AES_256_GCM, key).ok_or(bad_len)?),
        CipherId::Unknown(_) => return Err(CryptoError::UnsupportedCipher(cipher)),
    })
}

/// Encrypts outgoing and decrypts incoming messages of one session. Shared
/// by reference across tasks: `encrypt` takes `&self`.
pub struct Sealer {
    cipher: CipherId,
    encryptor: Box<dyn MessageAead>,
    decryptor: Box<dyn MessageAead>,
    /// Random bytes that fill the nonce after the 8-byte counter, so two
    /// Sealers with the same key (e.g. channels of one session) still draw
    /// from different nonce spaces.
    nonce_salt: [u8; 4],
    /// Starts at a random value; each message takes the next one, so a
    /// nonce repeats only after 2^64 messages.
    nonce_counter: AtomicU64,
    /// The server's recent nonces: one coming back is refused.
    received: Mutex<NonceWindow>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("cipher", &self.cipher).finish_non_exhaustive()
    }
}

impl Sealer {
    /// `encryption_key` seals what we send (client-to-server),
    /// `decryption_key` opens what we receive (server-to-client).
    pub fn new(cipher: CipherId, encryption_key: &[u8], decryption_key: &[u8]) -> Result<Sealer, CryptoError> {
        let encryptor = build_aead(cipher, encryption_key, "encryption")?;
        let decryptor = build_aead(cipher, decryption_key, "decryption")?;
        let mut rng = rand::thread_rng();
        let mut nonce_salt = [0u8; 4];
        rng.fill_bytes(&mut nonce_salt);
        Ok(Sealer {
            cipher,
            encryptor,
            decryptor,
            nonce_salt,
            nonce_counter: AtomicU64::new(rng.next_u64()),
            received: Mutex::new(NonceWindow::new(NONCES_REMEMBERED)),
        })
    }

    pub fn cipher(&self) -> CipherId {
        self.cipher
    }

    /// A fresh Nonce field: 8-byte counter then salt, cut to the cipher's
    /// nonce length; the rest stays zero (Reserved, MS-SMB2 2.2.41).
    fn next_nonce(&self) -> [u8; 16] {
        let n = self.nonce_counter.fetch_add(1, Ordering::Relaxed);
        let mut full = [0u8; 12];
        full[..8].copy_from_slice(&n.to_le_bytes());
        full[8..].copy_from_slice(&self.nonce_salt);
        let len = self.encryptor.nonce_len();
        let mut field = [0u8; 16];
        field[..len].copy_from_slice(&full[..len]);
        field
    }

    /// Whole plaintext SMB2 message (or compound chain) -> transform header +
    /// ciphertext, in one allocation encrypted in place.
    ///
    /// Panics if `plaintext` is 4 GiB or more (OriginalMessageSize is 32
    /// bits; no SMB2 message comes near that).
    pub fn encrypt(&self, session_id: u64, plaintext: &[u8]) -> Vec<u8> {
        self.encrypt_with_nonce(session_id, self.next_nonce(), plaintext)
    }

    fn encrypt_with_nonce(&self, session_id: u64, nonce: [u8; 16], plaintext: &[u8]) -> Vec<u8> {
        let mut body = plaintext.to_vec();
        let head = self.seal_with_nonce(session_id, nonce, &mut body);
        let mut out = Vec::with_capacity(TRANSFORM_HEADER_LEN + body.len());
        out.extend_from_slice(&head);
        out.extend_from_slice(&body);
        out
    }

    /// Encrypts `message` in place and returns the transform header to send
    /// before it: saves copying every large write.
    pub fn seal_in_place(&self, session_id: u64, message: &mut [u8]) -> [u8; TRANSFORM_HEADER_LEN] {
        self.seal_with_nonce(session_id, self.next_nonce(), message)
    }

    fn seal_with_nonce(&self, session_id: u64, nonce: [u8; 16], body: &mut [u8]) -> [u8; TRANSFORM_HEADER_LEN] {
        let size = u32::try_from(body.len()).expect("SMB2 message of 4 GiB or more");
        let header = TransformHeader {
            signature: [0; 16],
            nonce,
            original_message_size: size,
            flags: TRANSFORM_FLAG_ENCRYPTED,
            session_id,
        };
        let mut encoded = Vec::with_capacity(TRANSFORM_HEADER_LEN);
        header.encode(&mut encoded);
        let mut head = [0u8; TRANSFORM_HEADER_LEN];
        head.copy_from_slice(&encoded);
        // CCM (11-byte nonce) takes up to 2^32-1 bytes and GCM up to 2^36,
        // so a 32-bit size never fails.
        let tag = self
            .encryptor
            .seal(&nonce, &head[TRANSFORM_AAD_OFFSET..], body)
            .expect("AEAD accepts any message under 4 GiB");
        head[TRANSFORM_SIGNATURE_OFFSET..TRANSFORM_AAD_OFFSET].copy_from_slice(&tag);
        head
    }

    /// Transform message -> (session id, plaintext). Fails, never returning
    /// unauthenticated bytes, on: bad or truncated header, flags other than
    /// "encrypted", OriginalMessageSize over the limit or different from the
    /// ciphertext length, a tag that does not verify, or a nonce this Sealer
    /// already received (see [`super::nonce_window`]).
    /// As [`decrypt`](Self::decrypt), but in place: the ciphertext after the
    /// transform header is replaced by the plaintext, whose range in `frame`
    /// is returned with the session id. Saves a copy of every large read.
    pub fn decrypt_in_place(&self, frame: &mut [u8]) -> Result<(u64, std::ops::Range<usize>), CryptoError> {
        let header = TransformHeader::decode(frame)?;
        if header.flags != TRANSFORM_FLAG_ENCRYPTED {
            return Err(CryptoError::BadTransformFlags(header.flags));
        }
        let declared = header.original_message_size as usize;
        if declared > MAX_DECRYPTED_MESSAGE_SIZE {
            return Err(CryptoError::MessageTooLarge { size: declared, limit: MAX_DECRYPTED_MESSAGE_SIZE });
        }
        let actual = frame.len() - TRANSFORM_HEADER_LEN;
        if actual != declared {
            return Err(CryptoError::SizeMismatch { declared: header.original_message_size, actual });
        }
        let (head, body) = frame.split_at_mut(TRANSFORM_HEADER_LEN);
        if self.decryptor.open(&header.nonce, &head[TRANSFORM_AAD_OFFSET..], body, &header.signature).is_err() {
            // Never leave partially decrypted, unauthenticated bytes behind.
            body.fill(0);
            return Err(CryptoError::DecryptFailed);
        }
        // Checked once authenticated: only the server's own nonces enter the window.
        let used = used_part(&header.nonce, self.decryptor.nonce_len());
        if !self.received.lock().unwrap_or_else(|p| p.into_inner()).admit(used) {
            body.fill(0);
            let nonce = used[..self.decryptor.nonce_len()].iter().map(|b| format!("{b:02x}")).collect();
            return Err(CryptoError::NonceReused { nonce });
        }
        Ok((header.session_id, TRANSFORM_HEADER_LEN..frame.len()))
    }

    pub fn decrypt(&self, transform_msg: &[u8]) -> Result<(u64, Vec<u8>), CryptoError> {
        let mut frame = transform_msg.to_vec();
        let (session_id, plain) = self.decrypt_in_place(&mut frame)?;
        frame.drain(..plain.start);
        Ok((session_id, frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::WireError;
    use std::collections::HashSet;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn nonce(s: &str) -> [u8; 16] {
        let mut field = [0u8; 16];
        let b = h(s);
        field[..b.len()].copy_from_slice(&b);
        field
    }

    // Microsoft Open Specifications blog "Encryption in SMB 3.0: a protocol
    // perspective": an encrypted WRITE request and READ response, AES-128-CCM,
    // session key B4546771B515F766A86735532DD6C4F0.
    const SMB30_SESSION_ID: u64 = 0x8E40014000011;
    const SMB30_ENCRYPTION_KEY: &str = "261B72350558F2E9DCF613070383EDBF";
    const SMB30_DECRYPTION_KEY: &str = "8FE2B57EC34D2DB5B1A9727F526BBDB5";
    const SMB30_WRITE_PLAIN: &str = "FE534D4240000100000000000900400008000000000000000400000000000000\
        FFFE0000010000001100001400E4080000000000000000000000000000000000\
        3100700017000000000000000000000015010000390000020100000039020000\
        00000000000000007000000000000000536D623320656E6372797074696F6E20\
        74657374696E67";
    const SMB30_WRITE_SEALED: &str = "FD534D4281A286535415445DAE393921E44FA42E66E69A111892584FB5ED524A\
        744DA3EE87000000000001001100001400E4080025C8FEE16605A437832D1CD5\
        2DA9F4645333482A175FE5384563F45FCDAFAEF38BC62BA4D5C62897996625A4\
        4C29BE5658DE2E6117585779E7B59FFD971278D08580D7FA899E410E910EABF5\
        AA1DB43050B33B49182637759AC15D84BFCDF5B6B238993C0F4CF4D6012023F6\
        C627297075D84B7803912D0A9639634453595EF3E33FFE4E7AC2AB";
    const SMB30_READ_SEALED: &str = "FD534D42A6015530A18F6D9AFFE22AFAE8E66484860000000000000011000014\
        00E4080050000000000001001100001400E40800DBF46435C5F14169293CE079\
        E344479BF670227E49873F458672C3098DAC467DD5809F369D67409166515787\
        1483E01F7BECD02064EAC3E235F913668BBC2F097980D4B378F1993EFF6E60D1\
        77309E5B";
    const SMB30_READ_PLAIN: &str = "FE534D4240000100000000000900210009000000000000000400000000000000\
        FFFE0000010000001100001400E4080000000000000000000000000000000000\
        11000000170000000000000000000000";

    // Microsoft Open Specifications blog "SMB 3.1.1 Encryption in Windows
    // 10": the same exchange with AES-128-GCM.
    const SMB311_SESSION_ID: u64 = 0x100000000025;
    const SMB311_ENCRYPTION_KEY: &str = "A2F5E80E5D59103034F32E52F698E5EC";
    const SMB311_DECRYPTION_KEY: &str = "748C50868C90F302962A5C35F5F9A8BF";
    const SMB311_WRITE_PLAIN: &str = "FE534D4240000100000000000900010008000000000000000500000000000000FFFE000001000000\
        25000000001000000000000000000000000000000000000031007000170000000000000000000000\
        0600000004000000010000000400000000000000000000007000000000000000536D623320656E63\
        72797074696F6E2074657374696E67";
    const SMB311_WRITE_SEALED: &str =
        "FD534D42BD73D97D2BC9001BCAFAC0FDFF5FEEBCC7D6822D269CAF48904C664C0000000087000000\
        0000010025000000001000006ECDD2A7AFC7B47763057A041B8FD4DAFFE990B70C9E09D36C084E02\
        D14EF247F8BDE38ACF6256F8B1D3B56F77FBDEB312FEA5E92CBCC1ED8FB2EBBFAA75E49A4A394BB4\
        4576545567C24D4C014D47C9FBDFDAFD2C4F9B72F8D256452620A299F48E29E53D6B61D1C13A19E9\
        1AF013F00D17E3ABC2FC3D36C8C1B6B93973253852DBD442E46EE8";
    const SMB311_READ_SEALED: &str = "FD534D42ACBE1CB7ED343ADF1725EF144D90D4B0E06831DD2E8EB7B4000000000000000050000000\
        00000100250000000010000026BBBF949983A6C1C796559D0F2C510CB651D1F7B6AC8DED32A2A0B8\
        F2D793A815C6F6B848D69767A215841A42D400AE6DDB5F0B44173A014973321FDD7950DA6179159B\
        82E03C9E18A050FF0EA1C967";
    const SMB311_READ_PLAIN: &str = "FE534D4240000100000000000900010001000000000000000500000000000000FFFE000001000000\
        25000000001000000000000000000000000000000000000011000000170000000000000000000000";

    fn smb30_client() -> Sealer {
        Sealer::new(CipherId::Aes128Ccm, &h(SMB30_ENCRYPTION_KEY), &h(SMB30_DECRYPTION_KEY)).unwrap()
    }

    fn smb311_client() -> Sealer {
        Sealer::new(CipherId::Aes128Gcm, &h(SMB311_ENCRYPTION_KEY), &h(SMB311_DECRYPTION_KEY)).unwrap()
    }

    #[test]
    fn published_smb30_ccm_encryption() {
        let sealed = smb30_client().encrypt_with_nonce(
            SMB30_SESSION_ID,
            nonce("66E69A111892584FB5ED524A744DA3EE"),
            &h(SMB30_WRITE_PLAIN),
        );
        assert_eq!(hex::encode_upper(sealed), SMB30_WRITE_SEALED);
    }

    #[test]
    fn published_smb30_ccm_decryption() {
        let (session_id, plain) = smb30_client().decrypt(&h(SMB30_READ_SEALED)).unwrap();
        assert_eq!(session_id, SMB30_SESSION_ID);
        assert_eq!(plain, h(SMB30_READ_PLAIN));
    }

    #[test]
    fn published_smb311_gcm_encryption() {
        let sealed = smb311_client().encrypt_with_nonce(
            SMB311_SESSION_ID,
            nonce("C7D6822D269CAF48904C664C"),
            &h(SMB311_WRITE_PLAIN),
        );
        assert_eq!(hex::encode_upper(sealed), SMB311_WRITE_SEALED);
    }

    #[test]
    fn published_smb311_gcm_decryption() {
        let (session_id, plain) = smb311_client().decrypt(&h(SMB311_READ_SEALED)).unwrap();
        assert_eq!(session_id, SMB311_SESSION_ID);
        assert_eq!(plain, h(SMB311_READ_PLAIN));
    }

    const ALL_CIPHERS: [CipherId; 4] =
        [CipherId::Aes128Ccm, CipherId::Aes128Gcm, CipherId::Aes256Ccm, CipherId::Aes256Gcm];

    /// A client and the matching server: the server seals with the client's
    /// decryption key and opens with its encryption key.
    fn pair(cipher: CipherId) -> (Sealer, Sealer) {
        let len = cipher.key_len().unwrap();
        let c2s = vec![0xC2; len];
        let s2c = vec![0x5C; len];
        (Sealer::new(cipher, &c2s, &s2c).unwrap(), Sealer::new(cipher, &s2c, &c2s).unwrap())
    }

    #[test]
    fn one_mib_round_trip_every_cipher() {
        let plain: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        for cipher in ALL_CIPHERS {
            let (client, server) = pair(cipher);
            assert_eq!(client.cipher(), cipher);
            let start = std::time::Instant::now();
            let sealed = client.encrypt(42, &plain);
            assert_eq!(sealed.len(), TRANSFORM_HEADER_LEN + plain.len());
            assert_ne!(&sealed[TRANSFORM_HEADER_LEN..TRANSFORM_HEADER_LEN + 64], &plain[..64]);
            let (sid, opened) = server.decrypt(&sealed).unwrap();
            eprintln!("{cipher}: 1 MiB sealed and opened in {:?} (debug build)", start.elapsed());
            assert_eq!(sid, 42);
            assert!(opened == plain);
            // A message we sent cannot be opened with our own receive key.
            assert!(matches!(client.decrypt(&sealed), Err(CryptoError::DecryptFailed)));
        }
    }

    #[test]
    fn empty_and_odd_sizes_round_trip() {
        for cipher in ALL_CIPHERS {
            let (client, server) = pair(cipher);
            for len in [0usize, 1, 15, 16, 17, 64, 65, 4097] {
                let plain = vec![0xA5; len];
                let (_, opened) = server.decrypt(&client.encrypt(7, &plain)).unwrap();
                assert_eq!(opened, plain, "{cipher} {len}");
            }
        }
    }

    #[test]
    fn nonce_layout_and_uniqueness() {
        for cipher in ALL_CIPHERS {
            let (client, _) = pair(cipher);
            let nonce_len = if matches!(cipher, CipherId::Aes128Ccm | CipherId::Aes256Ccm) { 11 } else { 12 };
            let mut seen = HashSet::new();
            for _ in 0..10_000 {
                let sealed = client.encrypt(1, b"x");
                let nonce: [u8; 16] = sealed[20..36].try_into().unwrap();
                assert!(nonce[nonce_len..].iter().all(|&b| b == 0), "reserved nonce bytes must be zero");
                assert!(seen.insert(nonce[..nonce_len].to_vec()), "{cipher}: nonce repeated");
            }
        }
    }

    #[test]
    fn two_sealers_with_one_key_use_different_nonces() {
        let (a, _) = pair(CipherId::Aes128Gcm);
        let (b, _) = pair(CipherId::Aes128Gcm);
        let na: HashSet<Vec<u8>> = (0..1000).map(|_| a.encrypt(1, b"")[20..32].to_vec()).collect();
        let nb: HashSet<Vec<u8>> = (0..1000).map(|_| b.encrypt(1, b"")[20..32].to_vec()).collect();
        assert!(na.is_disjoint(&nb));
    }

    #[test]
    fn tampering_anywhere_fails_decrypt() {
        for cipher in ALL_CIPHERS {
            let (client, server) = pair(cipher);
            let sealed = client.encrypt(0x77, b"an SMB2 message that must not be altered in flight");
            // Signature (tag), nonce, reserved, session id and ciphertext
            // bytes are all authenticated.
            for i in [4, 19, 20, 35, 40, 41, 44, 51, 52, sealed.len() - 1] {
                let mut bad = sealed.clone();
                bad[i] ^= 0x01;
                assert!(matches!(server.decrypt(&bad), Err(CryptoError::DecryptFailed)), "{cipher}: byte {i}");
            }
        }
    }

    #[test]
    fn structural_checks_come_before_authentication() {
        let (client, server) = pair(CipherId::Aes128Gcm);
        let sealed = client.encrypt(5, &[1; 100]);

        let mut flags = sealed.clone();
        flags[42] = 0x02;
        assert!(matches!(server.decrypt(&flags), Err(CryptoError::BadTransformFlags(2))));

        let mut size = sealed.clone();
        size[36..40].copy_from_slice(&99u32.to_le_bytes());
        assert!(matches!(server.decrypt(&size), Err(CryptoError::SizeMismatch { declared: 99, actual: 100 })));
        assert!(matches!(server.decrypt(&sealed[..sealed.len() - 1]), Err(CryptoError::SizeMismatch { .. })));

        let mut huge = sealed.clone();
        huge[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(server.decrypt(&huge), Err(CryptoError::MessageTooLarge { .. })));

        for len in [0, 3, 4, 20, 51] {
            assert!(
                matches!(server.decrypt(&sealed[..len]), Err(CryptoError::Transform(WireError::Truncated { .. }))),
                "length {len}"
            );
        }
        let mut compressed = sealed.clone();
        compressed[0] = 0xFC;
        assert!(matches!(server.decrypt(&compressed), Err(CryptoError::Transform(WireError::Invalid { .. }))));
    }

    #[test]
    fn rejects_bad_keys_and_unknown_ciphers() {
        assert!(matches!(
            Sealer::new(CipherId::Unknown(7), &[0; 16], &[0; 16]),
            Err(CryptoError::UnsupportedCipher(CipherId::Unknown(7)))
        ));
        assert!(matches!(
            Sealer::new(CipherId::Aes256Gcm, &[0; 16], &[0; 32]),
            Err(CryptoError::BadKeyLength { what: "encryption", got: 16, expected: 32 })
        ));
        assert!(matches!(
            Sealer::new(CipherId::Aes128Ccm, &[0; 16], &[0; 32]),
            Err(CryptoError::BadKeyLength { what: "decryption", got: 32, expected: 16 })
        ));
        let s = Sealer::new(CipherId::Aes128Gcm, &[0xAB; 16], &[0xCD; 16]).unwrap();
        let shown = format!("{s:?}");
        assert!(shown.contains("Aes128Gcm") && !shown.to_lowercase().contains("abab"));
    }

    #[test]
    fn sealer_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Sealer>();
        let (client, server) = pair(CipherId::Aes128Ccm);
        let nonces: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    let client = &client;
                    s.spawn(move || (0..500).map(|_| client.encrypt(t, b"m")[20..31].to_vec()).collect::<Vec<_>>())
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let unique: HashSet<_> = nonces.iter().collect();
        assert_eq!(unique.len(), nonces.len());
        assert!(server.decrypt(&client.encrypt(9, b"after")).is_ok());
    }

    #[test]
    fn a_nonce_reused_for_another_message_is_refused() {
        for cipher in ALL_CIPHERS {
            let (client, server) = pair(cipher);
            let nonce = client.next_nonce();
            let first = client.encrypt_with_nonce(3, nonce, b"first answer");
            let other = client.encrypt_with_nonce(3, nonce, b"a different answer");
            assert!(server.decrypt(&first).is_ok(), "{cipher}");
            let refused = server.decrypt(&other).unwrap_err();
            assert!(matches!(refused, CryptoError::NonceReused { .. }), "{cipher}: {refused}");
            assert!(refused.to_string().contains("reused the nonce"), "{refused}");
            // Bytes the cipher ignores do not make the nonce new.
            let mut padded = nonce;
            padded[15] ^= 0xFF;
            let again = client.encrypt_with_nonce(3, padded, b"third");
            assert!(matches!(server.decrypt(&again), Err(CryptoError::NonceReused { .. })), "{cipher}");
            assert!(server.decrypt(&client.encrypt(3, b"fresh nonce")).is_ok(), "{cipher}");
        }
    }
}
