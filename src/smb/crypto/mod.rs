//! Key derivation, signing and encryption for SMB2/3 (MS-SMB2 3.1.4).
