//! Key derivation, signing and encryption for SMB2/3 (MS-SMB2 3.1.4).
//!
//! Everything here is synchronous and free of I/O. Keys never appear in
//! `Debug` output or in errors.

pub mod encryption;
pub mod kdf;
pub mod keys;
pub mod nonce_window;
pub mod preauth;
pub mod signing;

pub use encryption::Sealer;
pub use keys::SessionKeys;
pub use preauth::PreauthHash;
pub use signing::Signer;

use crate::wire::{CipherId, SigningAlgorithmId, WireError};

/// Why a message could not be signed, verified, encrypted or decrypted.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("message signature does not verify")]
    BadSignature,
    #[error("message is not signed (SMB2_FLAGS_SIGNED is clear)")]
    Unsigned,
    #[error("message of {len} bytes is shorter than the 64-byte SMB2 header")]
    MessageTooShort { len: usize },
    #[error("encrypted message does not authenticate")]
    DecryptFailed,
    /// MS-SMB2 2.2.41: a nonce is never reused within a session.
    #[error("server reused the nonce {nonce} within the session (a nonce must never repeat)")]
    NonceReused { nonce: String },
    #[error("transform header declares {declared} bytes but {actual} bytes of ciphertext follow")]
    SizeMismatch { declared: u32, actual: usize },
    #[error("encrypted message of {size} bytes exceeds the limit of {limit}")]
    MessageTooLarge { size: usize, limit: usize },
    #[error("transform header flags 0x{0:04x}, expected 0x0001 (encrypted)")]
    BadTransformFlags(u16),
    #[error("unsupported cipher: {0}")]
    UnsupportedCipher(CipherId),
    #[error("unsupported signing algorithm: {0}")]
    UnsupportedSigning(SigningAlgorithmId),
    #[error("{what} key is {got} bytes, expected {expected}")]
    BadKeyLength { what: &'static str, got: usize, expected: usize },
    #[error("bad transform header: {0}")]
    Transform(#[from] WireError),
}
