//! Forging encrypted server messages for hostile cases that need a frame the
//! client authenticates: with the key a [`crate::SambaProfile::KeysInLog`]
//! smbd logs, a proxy can open one of Samba's AES-128-GCM frames and seal it
//! again under a nonce of its choosing (e.g. one the server already used).
//!
//! Layout (MS-SMB2 2.2.41): ProtocolId 0..4, Signature (the AEAD tag) 4..20,
//! Nonce 20..36 (GCM uses its first 12 bytes), and bytes 20..52 of the
//! transform header are the additional authenticated data; the ciphertext
//! follows at 52.

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_128_GCM, NONCE_LEN};

const TAG: std::ops::Range<usize> = 4..20;
const NONCE: std::ops::Range<usize> = 20..36;
const AAD: std::ops::Range<usize> = 20..52;
const HEADER_LEN: usize = 52;

/// Why a frame could not be resealed.
#[derive(Debug, thiserror::Error)]
pub enum ResealError {
    #[error("not an encrypted SMB2 frame ({0} bytes, or no 0xFD 'SMB' protocol id)")]
    NotEncrypted(usize),
    #[error("the key is {0} bytes, AES-128-GCM takes 16")]
    BadKey(usize),
    #[error("the frame does not authenticate under this key")]
    DoesNotAuthenticate,
}

/// The transform header's 16-byte Nonce field of an encrypted frame.
pub fn nonce_of(frame: &[u8]) -> Option<[u8; 16]> {
    is_encrypted(frame).then(|| frame[NONCE].try_into().expect("16 bytes"))
}

/// The SessionId of an encrypted frame's transform header.
pub fn session_of(frame: &[u8]) -> Option<u64> {
    is_encrypted(frame).then(|| u64::from_le_bytes(frame[44..52].try_into().expect("8 bytes")))
}

/// True for a frame long enough to hold a transform header and starting with 0xFD 'SMB'.
pub fn is_encrypted(frame: &[u8]) -> bool {
    frame.len() >= HEADER_LEN && frame.starts_with(&[0xFD, b'S', b'M', b'B'])
}

/// `frame` (AES-128-GCM under `key`) opened and sealed again, same message,
/// under `nonce`: a valid frame the sender of `frame` could have sent.
pub fn reseal_with_nonce(frame: &[u8], key: &[u8], nonce: [u8; 16]) -> Result<Vec<u8>, ResealError> {
    if !is_encrypted(frame) {
        return Err(ResealError::NotEncrypted(frame.len()));
    }
    let key = UnboundKey::new(&AES_128_GCM, key).map(LessSafeKey::new).map_err(|_| ResealError::BadKey(key.len()))?;
    let gcm_nonce = |field: &[u8]| {
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(&field[..NONCE_LEN]);
        Nonce::assume_unique_for_key(n)
    };
    let (head, body) = frame.split_at(HEADER_LEN);
    let mut plain = body.to_vec();
    let tag: [u8; 16] = head[TAG].try_into().expect("16 bytes");
    key.open_in_place_separate_tag(gcm_nonce(&head[NONCE]), Aad::from(&head[AAD]), Tag::from(tag), &mut plain, 0..)
        .map_err(|_| ResealError::DoesNotAuthenticate)?;
    let mut out = head.to_vec();
    out[NONCE].copy_from_slice(&nonce);
    let aad = out[AAD].to_vec();
    let tag = key
        .seal_in_place_separate_tag(gcm_nonce(&nonce), Aad::from(&aad[..]), &mut plain)
        .map_err(|_| ResealError::DoesNotAuthenticate)?;
    out[TAG].copy_from_slice(tag.as_ref());
    out.extend_from_slice(&plain);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smb3::crypto::Sealer;
    use smb3::wire::CipherId;

    const KEY: [u8; 16] = [0x42; 16];

    #[test]
    fn a_resealed_frame_carries_the_same_message_under_the_chosen_nonce() {
        // The "server" seals with KEY; a client opens with KEY.
        let server = Sealer::new(CipherId::Aes128Gcm, &KEY, &KEY).unwrap();
        let client = Sealer::new(CipherId::Aes128Gcm, &KEY, &KEY).unwrap();
        let first = server.encrypt(9, b"first");
        let second = server.encrypt(9, b"second message");
        let nonce = nonce_of(&first).unwrap();
        let forged = reseal_with_nonce(&second, &KEY, nonce).unwrap();
        assert_eq!(nonce_of(&forged), Some(nonce));
        assert_eq!(session_of(&forged), Some(9));
        // A fresh receiver authenticates it and reads the second message.
        let (_, plain) = client.decrypt(&forged).unwrap();
        assert_eq!(plain, b"second message");
    }

    #[test]
    fn wrong_key_short_and_plain_frames_are_errors() {
        let server = Sealer::new(CipherId::Aes128Gcm, &KEY, &KEY).unwrap();
        let frame = server.encrypt(1, b"m");
        assert!(matches!(reseal_with_nonce(&frame, &[0; 16], [0; 16]), Err(ResealError::DoesNotAuthenticate)));
        assert!(matches!(reseal_with_nonce(&frame, &[0; 5], [0; 16]), Err(ResealError::BadKey(5))));
        assert!(matches!(reseal_with_nonce(&frame[..40], &KEY, [0; 16]), Err(ResealError::NotEncrypted(40))));
        assert!(matches!(reseal_with_nonce(b"\xfeSMB", &KEY, [0; 16]), Err(ResealError::NotEncrypted(4))));
        assert_eq!(nonce_of(b"short"), None);
    }
}
