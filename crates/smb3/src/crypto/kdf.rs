//! SP800-108 KDF in counter mode with HMAC-SHA256 as PRF (MS-SMB2 3.1.4.2).

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Derives `l_bits` bits (rounded up to whole bytes) from `key`.
///
/// Each block is HMAC-SHA256(key, i || label || 0x00 || context || L) with
/// the 32-bit counter `i` (r = 32) and L both big-endian. SMB's labels and
/// contexts carry their own trailing NUL (e.g. `b"SMBSigningKey\0"`), so the
/// separator byte added here is a second zero; that is what the spec and
/// Windows do.
pub fn kdf(key: &[u8], label: &[u8], context: &[u8], l_bits: u32) -> Vec<u8> {
    let out_len = (l_bits as usize).div_ceil(8);
    let blocks = out_len.div_ceil(32);
    // HMAC accepts keys of any length, so keying cannot fail.
    let keyed = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    let mut out = Vec::with_capacity(blocks * 32);
    for i in 1..=blocks as u32 {
        let mut mac = keyed.clone();
        mac.update(&i.to_be_bytes());
        mac.update(label);
        mac.update(&[0]);
        mac.update(context);
        mac.update(&l_bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
    }
    out.truncate(out_len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    // SMB 3.0 SigningKey from the Microsoft Open Specifications blog "SMB 2
    // and SMB 3 security in Windows 10: the anatomy of signing and
    // cryptographic keys" (appendix, SMB 3.0 first channel).
    #[test]
    fn published_smb30_signing_key() {
        let key = kdf(&h("7CD451825D0450D235424E44BA6E78CC"), b"SMB2AESCMAC\0", b"SmbSign\0", 128);
        assert_eq!(key, h("0B7E9C5CAC36C0F6EA9AB275298CEDCE"));
    }

    #[test]
    fn output_length_follows_l() {
        let key = [7u8; 16];
        assert_eq!(kdf(&key, b"a\0", b"b\0", 128).len(), 16);
        assert_eq!(kdf(&key, b"a\0", b"b\0", 256).len(), 32);
        assert_eq!(kdf(&key, b"a\0", b"b\0", 384).len(), 48);
        assert_eq!(kdf(&key, b"a\0", b"b\0", 0).len(), 0);
    }

    #[test]
    fn l_is_part_of_the_input() {
        // A 256-bit key is not the 128-bit key extended: L enters the PRF.
        let key = [7u8; 16];
        let k128 = kdf(&key, b"SMBC2SCipherKey\0", &[1; 64], 128);
        let k256 = kdf(&key, b"SMBC2SCipherKey\0", &[1; 64], 256);
        assert_ne!(&k256[..16], &k128[..]);
    }

    #[test]
    fn multi_block_output_uses_the_counter() {
        // Block 2 must be the PRF with i = 2, checked against a direct HMAC.
        let key = b"kdf key";
        let out = kdf(key, b"L\0", b"C\0", 512);
        let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap();
        mac.update(&[0, 0, 0, 2]);
        mac.update(b"L\0");
        mac.update(&[0]);
        mac.update(b"C\0");
        mac.update(&512u32.to_be_bytes());
        assert_eq!(&out[32..], &mac.finalize().into_bytes()[..]);
        assert_ne!(&out[..32], &out[32..]);
    }
}
