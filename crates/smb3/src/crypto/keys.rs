//! Per-session keys (MS-SMB2 3.2.5.3.1; the server side is 3.3.5.5.3).

use super::kdf::kdf;
use crate::wire::{CipherId, Dialect};

/// The keys of one authenticated session, as seen by the client.
pub struct SessionKeys {
    pub signing: Vec<u8>,
    /// Client-to-server: seals what we send.
    pub encryption: Vec<u8>,
    /// Server-to-client: opens what we receive.
    pub decryption: Vec<u8>,
    pub application: Vec<u8>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |k: &[u8]| format!("<{} bytes redacted>", k.len());
        f.debug_struct("SessionKeys")
            .field("signing", &redacted(&self.signing))
            .field("encryption", &redacted(&self.encryption))
            .field("decryption", &redacted(&self.decryption))
            .field("application", &redacted(&self.application))
            .finish()
    }
}

/// Session.SessionKey (MS-SMB2 3.2.1.3): the first 16 bytes of the GSS key,
/// right-padded with zeros if it is shorter.
fn session_key_16(gss_key: &[u8]) -> [u8; 16] {
    let mut k = [0u8; 16];
    let n = gss_key.len().min(16);
    k[..n].copy_from_slice(&gss_key[..n]);
    k
}

impl SessionKeys {
    /// Derives the session's keys.
    ///
    /// `session_key` is the full key from the GSS context (NTLM: the 16-byte
    /// ExportedSessionKey; Kerberos: the subkey, possibly 32 bytes). Signing
    /// and application keys always derive from its first 16 bytes
    /// (Session.SessionKey); 3.1.1 with an AES-256 cipher derives the 32-byte
    /// cipher keys from the whole key (Session.FullSessionKey).
    ///
    /// - 2.0.2/2.1 (and anything not 3.x): signing = Session.SessionKey,
    ///   no encryption or application keys (empty vecs).
    /// - 3.0/3.0.2: fixed labels and contexts, AES-128 sizes.
    /// - 3.1.1: labels with `preauth_hash` as context; cipher keys are 32
    ///   bytes for AES-256-* and 16 otherwise.
    pub fn derive(
        dialect: Dialect,
        session_key: &[u8],
        preauth_hash: &[u8; 64],
        cipher: Option<CipherId>,
    ) -> SessionKeys {
        let key = session_key_16(session_key);
        match dialect {
            Dialect::Smb300 | Dialect::Smb302 => SessionKeys {
                signing: kdf(&key, b"SMB2AESCMAC\0", b"SmbSign\0", 128),
                encryption: kdf(&key, b"SMB2AESCCM\0", b"ServerIn \0", 128),
                decryption: kdf(&key, b"SMB2AESCCM\0", b"ServerOut\0", 128),
                application: kdf(&key, b"SMB2APP\0", b"SmbRpc\0", 128),
            },
            Dialect::Smb311 => {
                let aes256 = matches!(cipher, Some(CipherId::Aes256Ccm | CipherId::Aes256Gcm));
                let (cipher_key, l_bits): (&[u8], u32) = if aes256 { (session_key, 256) } else { (&key, 128) };
                SessionKeys {
                    signing: kdf(&key, b"SMBSigningKey\0", preauth_hash, 128),
                    encryption: kdf(cipher_key, b"SMBC2SCipherKey\0", preauth_hash, l_bits),
                    decryption: kdf(cipher_key, b"SMBS2CCipherKey\0", preauth_hash, l_bits),
                    application: kdf(&key, b"SMBAppKey\0", preauth_hash, 128),
                }
            }
            Dialect::Smb202 | Dialect::Smb210 | Dialect::Wildcard | Dialect::Unknown(_) => SessionKeys {
                signing: key.to_vec(),
                encryption: Vec::new(),
                decryption: Vec::new(),
                application: Vec::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn h64(s: &str) -> [u8; 64] {
        h(s).try_into().unwrap()
    }

    // Published vectors: Microsoft Open Specifications blog "SMB 2 and SMB 3
    // security in Windows 10: the anatomy of signing and cryptographic keys",
    // appendix "Key derivation examples".

    #[test]
    fn published_smb30_first_channel() {
        let k = SessionKeys::derive(Dialect::Smb300, &h("7CD451825D0450D235424E44BA6E78CC"), &[0; 64], None);
        assert_eq!(k.signing, h("0B7E9C5CAC36C0F6EA9AB275298CEDCE"));
        assert_eq!(k.encryption, h("FAD27796665B313EBB578F388632B4F7"));
        assert_eq!(k.decryption, h("B0F0427F7CEB416D1D9DCC0CD4F99447"));
        assert_eq!(k.application, h("BB23A4575AA26C721AF525AF15A87B4F"));
    }

    #[test]
    fn published_smb30_second_channel_signing_key() {
        let k = SessionKeys::derive(Dialect::Smb300, &h("4E01A2B313BCF660CC250BEF021AEDE6"), &[0; 64], None);
        assert_eq!(k.signing, h("BA1A17DBBFEC349BCA105563D598952F"));
        // 3.0.2 uses the same labels.
        let k302 = SessionKeys::derive(Dialect::Smb302, &h("4E01A2B313BCF660CC250BEF021AEDE6"), &[0; 64], None);
        assert_eq!(k302.signing, k.signing);
    }

    #[test]
    fn published_smb311_first_channel() {
        let preauth = h64("0DD13628CC3ED218EF9DF9772D436D0887AB9814BFAE63A80AA845F36909DB79\
             28622DDDAD522D9751640A459762C5A9D6BB084CBB3CE6BDADEF5D5BCE3C6C01");
        let k = SessionKeys::derive(
            Dialect::Smb311,
            &h("270E1BA896585EEB7AF3472D3B4C75A7"),
            &preauth,
            Some(CipherId::Aes128Gcm),
        );
        assert_eq!(k.signing, h("73FE7A9A77BEF0BDE49C650D8CCB5F76"));
        assert_eq!(k.encryption, h("629BCBC54422A0F572B97F45989B6073"));
        assert_eq!(k.decryption, h("E2AF0DCEFAC68DA71A0DFBD0D1350D74"));
        assert_eq!(k.application, h("6D7AD7954E9EC61E907B4D473DC178FF"));
    }

    #[test]
    fn published_smb311_second_channel_signing_key() {
        let preauth = h64("EA3BF912B11CBFEC5B1889E8209614218687F82FA5294521AD3063425E49E88A\
             10BD022124CE25123BC9111F52D9566BA88BF46344E6063DC5E3FF0389026F6C");
        let k = SessionKeys::derive(
            Dialect::Smb311,
            &h("84B9DBB730116A8FA6E9889555C265F9"),
            &preauth,
            Some(CipherId::Aes128Gcm),
        );
        assert_eq!(k.signing, h("C962BCA1A9DD1697B030644199705431"));
    }

    // Cipher keys from the Microsoft Open Specifications encryption blogs
    // ("Encryption in SMB 3.0: a protocol perspective", "SMB 3.1.1
    // Encryption in Windows 10").
    #[test]
    fn published_encryption_blog_keys() {
        let k30 = SessionKeys::derive(Dialect::Smb300, &h("B4546771B515F766A86735532DD6C4F0"), &[0; 64], None);
        assert_eq!(k30.encryption, h("261B72350558F2E9DCF613070383EDBF"));
        assert_eq!(k30.decryption, h("8FE2B57EC34D2DB5B1A9727F526BBDB5"));

        let preauth = h64("B23F3CBFD69487D9832B79B1594A367CDD950909B774C3A4C412B4FCEA9EDDDB\
             A7DB256BA2EA30E977F11F9B113247578E0E915C6D2A513B8F2FCA5707DC8770");
        let k311 = SessionKeys::derive(
            Dialect::Smb311,
            &h("419FDDF34C1E001909D362AE7FB6AF79"),
            &preauth,
            Some(CipherId::Aes128Gcm),
        );
        assert_eq!(k311.encryption, h("A2F5E80E5D59103034F32E52F698E5EC"));
        assert_eq!(k311.decryption, h("748C50868C90F302962A5C35F5F9A8BF"));
    }

    #[test]
    fn smb2_signs_with_the_session_key() {
        for dialect in [Dialect::Smb202, Dialect::Smb210] {
            let k = SessionKeys::derive(dialect, &[9; 16], &[0; 64], None);
            assert_eq!(k.signing, vec![9; 16]);
            assert!(k.encryption.is_empty() && k.decryption.is_empty() && k.application.is_empty());
        }
        // Session.SessionKey is the first 16 bytes, zero-padded.
        let long = SessionKeys::derive(Dialect::Smb210, &[3; 32], &[0; 64], None);
        assert_eq!(long.signing, vec![3; 16]);
        let short = SessionKeys::derive(Dialect::Smb210, &[3; 8], &[0; 64], None);
        assert_eq!(short.signing, [[3u8; 8], [0u8; 8]].concat());
    }

    #[test]
    fn smb311_aes256_uses_the_full_key_and_l_256() {
        let preauth = [0x5A; 64];
        let full: Vec<u8> = (0u8..32).collect();
        for cipher in [CipherId::Aes256Gcm, CipherId::Aes256Ccm] {
            let k = SessionKeys::derive(Dialect::Smb311, &full, &preauth, Some(cipher));
            assert_eq!(k.encryption, kdf(&full, b"SMBC2SCipherKey\0", &preauth, 256));
            assert_eq!(k.decryption, kdf(&full, b"SMBS2CCipherKey\0", &preauth, 256));
            assert_eq!(k.encryption.len(), 32);
            assert_ne!(k.encryption, k.decryption);
            // Signing and application keys stay 16 bytes from the first 16 key bytes.
            let k128 = SessionKeys::derive(Dialect::Smb311, &full[..16], &preauth, Some(CipherId::Aes128Gcm));
            assert_eq!(k.signing, k128.signing);
            assert_eq!(k.application, k128.application);
            assert_eq!(k.signing.len(), 16);
        }
        let k128 = SessionKeys::derive(Dialect::Smb311, &full, &preauth, Some(CipherId::Aes128Ccm));
        assert_eq!(k128.encryption.len(), 16);
        let none = SessionKeys::derive(Dialect::Smb311, &full, &preauth, None);
        assert_eq!(none.encryption, k128.encryption);
    }

    #[test]
    fn debug_redacts_keys() {
        let k = SessionKeys::derive(Dialect::Smb300, &h("7CD451825D0450D235424E44BA6E78CC"), &[0; 64], None);
        let shown = format!("{k:?}");
        assert!(shown.contains("redacted"));
        for key in [&k.signing, &k.encryption, &k.decryption, &k.application] {
            assert!(!shown.to_lowercase().contains(&hex::encode(key)));
            let prefix = format!("{:?}", &key[..4]);
            assert!(!shown.contains(prefix.trim_end_matches(']')));
        }
    }
}
