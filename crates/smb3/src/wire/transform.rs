//! The 52-byte SMB2 TRANSFORM_HEADER that precedes every encrypted message
//! (MS-SMB2 2.2.41). Pure codec: sealing and opening live in
//! `crate::crypto::encryption`.

use super::cursor::{Reader, Writer};
use super::WireError;

pub const TRANSFORM_PROTOCOL_ID: [u8; 4] = [0xFD, b'S', b'M', b'B'];
/// ProtocolId of the SMB2 COMPRESSION_TRANSFORM_HEADER (MS-SMB2 2.2.42). We
/// never negotiate compression, so receiving one is a protocol violation.
pub const COMPRESSION_TRANSFORM_PROTOCOL_ID: [u8; 4] = [0xFC, b'S', b'M', b'B'];
pub const TRANSFORM_HEADER_LEN: usize = 52;
/// Flags value for an encrypted message. In 3.0/3.0.2 the same field is
/// EncryptionAlgorithm, whose only value (AES-128-CCM) is also 0x0001.
pub const TRANSFORM_FLAG_ENCRYPTED: u16 = 0x0001;
/// Offset of the Nonce field: the AEAD's additional authenticated data runs
/// from here to the end of the header (MS-SMB2 3.1.4.3).
pub const TRANSFORM_AAD_OFFSET: usize = 20;
/// Offset of the 16-byte Signature (AEAD tag) field.
pub const TRANSFORM_SIGNATURE_OFFSET: usize = 4;

/// SMB2 TRANSFORM_HEADER. `nonce` holds the whole 16-byte field; AES-CCM
/// uses its first 11 bytes and AES-GCM its first 12.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransformHeader {
    pub signature: [u8; 16],
    pub nonce: [u8; 16],
    pub original_message_size: u32,
    pub flags: u16,
    pub session_id: u64,
}

impl TransformHeader {
    /// Appends the 52 header bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_bytes(&TRANSFORM_PROTOCOL_ID);
        out.put_bytes(&self.signature);
        out.put_bytes(&self.nonce);
        out.put_u32(self.original_message_size);
        out.put_u16(0); // Reserved
        out.put_u16(self.flags);
        out.put_u64(self.session_id);
    }

    /// Decodes the transform header at the start of `buf` (whatever follows
    /// it is the ciphertext and is not looked at).
    pub fn decode(buf: &[u8]) -> Result<TransformHeader, WireError> {
        let mut r = Reader::new(buf);
        let proto = r.array::<4>("transform protocol id")?;
        if proto == COMPRESSION_TRANSFORM_PROTOCOL_ID {
            return Err(WireError::Invalid {
                what: "transform protocol id",
                why: "compression transform header received, but compression is never negotiated".into(),
            });
        }
        if proto != TRANSFORM_PROTOCOL_ID {
            return Err(WireError::Invalid { what: "transform protocol id", why: format!("{proto:02x?}") });
        }
        let signature = r.array::<16>("transform signature")?;
        let nonce = r.array::<16>("transform nonce")?;
        let original_message_size = r.u32("transform original message size")?;
        r.skip(2, "transform reserved")?;
        let flags = r.u16("transform flags")?;
        let session_id = r.u64("transform session id")?;
        Ok(TransformHeader { signature, nonce, original_message_size, flags, session_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transform header of the SMB 3.0 encrypted WRITE request from the
    /// Microsoft Open Specifications blog "Encryption in SMB 3.0: a protocol
    /// perspective".
    const SMB30_WRITE_HEADER: &str = "FD534D4281A286535415445DAE393921E44FA42E66E69A111892584FB5ED524A\
                                      744DA3EE87000000000001001100001400E40800";

    #[test]
    fn decodes_published_header() {
        let bytes = hex::decode(SMB30_WRITE_HEADER).unwrap();
        let h = TransformHeader::decode(&bytes).unwrap();
        assert_eq!(h.signature.to_vec(), hex::decode("81A286535415445DAE393921E44FA42E").unwrap());
        assert_eq!(h.nonce.to_vec(), hex::decode("66E69A111892584FB5ED524A744DA3EE").unwrap());
        assert_eq!(h.original_message_size, 0x87);
        assert_eq!(h.flags, TRANSFORM_FLAG_ENCRYPTED);
        assert_eq!(h.session_id, 0x8E40014000011);
        let mut again = Vec::new();
        h.encode(&mut again);
        assert_eq!(again, bytes);
    }

    #[test]
    fn round_trip() {
        let h = TransformHeader {
            signature: [0xAB; 16],
            nonce: core::array::from_fn(|i| i as u8),
            original_message_size: 0x0102_0304,
            flags: TRANSFORM_FLAG_ENCRYPTED,
            session_id: 0x1122_3344_5566_7788,
        };
        let mut v = Vec::new();
        h.encode(&mut v);
        assert_eq!(v.len(), TRANSFORM_HEADER_LEN);
        assert_eq!(&v[..4], &TRANSFORM_PROTOCOL_ID);
        assert_eq!(&v[TRANSFORM_SIGNATURE_OFFSET..TRANSFORM_AAD_OFFSET], &[0xAB; 16]);
        v.extend_from_slice(b"ciphertext follows");
        assert_eq!(TransformHeader::decode(&v).unwrap(), h);
    }

    #[test]
    fn truncated_header_errors() {
        let bytes = hex::decode(SMB30_WRITE_HEADER).unwrap();
        for len in 0..TRANSFORM_HEADER_LEN {
            assert!(matches!(TransformHeader::decode(&bytes[..len]), Err(WireError::Truncated { .. })), "length {len}");
        }
    }

    #[test]
    fn rejects_compression_and_other_protocol_ids() {
        let mut bytes = hex::decode(SMB30_WRITE_HEADER).unwrap();
        bytes[0] = 0xFC;
        match TransformHeader::decode(&bytes) {
            Err(WireError::Invalid { why, .. }) => assert!(why.contains("compression")),
            other => panic!("unexpected {other:?}"),
        }
        bytes[0] = 0xFE;
        assert!(matches!(TransformHeader::decode(&bytes), Err(WireError::Invalid { .. })));
    }
}
