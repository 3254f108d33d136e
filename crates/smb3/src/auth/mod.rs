//! NTLMv2 (MS-NLMP) and Kerberos V5 (RFC 4120/4121), each wrapped in SPNEGO
//! (RFC 4178, MS-SPNG). Kerberos: the MIT ccache codec, krb5.conf, the AS and
//! TGS exchanges, the GSS AP-REQ/AP-REP with mutual authentication (see docs/kerberos.md).

pub mod ccache;
pub mod der;
pub mod gss_krb5;
pub mod kdc;
pub mod krb5_conf;
pub mod mechanism;
pub mod ntlm;
pub mod spnego;
pub mod spnego_krb5;
pub mod tickets;

pub use ntlm::{NtlmClient, NtlmCredentials};
pub use spnego::SpnegoClient;

use crate::wire::WireError;

/// Why authentication failed. Never carries a password, hash or key.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },
    #[error("malformed NTLM message: {0}")]
    Ntlm(#[from] WireError),
    #[error("malformed SPNEGO token: {0}")]
    Spnego(#[from] der::DerError),
    #[error("the server does not offer NTLMSSP (1.3.6.1.4.1.311.2.2.10) through SPNEGO")]
    NoNtlmMech,
    #[error("the server rejected the authentication")]
    Rejected,
    #[error("the server's MIC does not verify")]
    BadServerMic,
    #[error(
        "server NTLM flags 0x{server_flags:08x} lack 0x{missing:08x}: NTLMv2 with extended session \
         security, target info, 128-bit keys and Unicode is required (LM and NTLMv1 are never used)"
    )]
    UnsupportedFlags { server_flags: u32, missing: u32 },
    #[error("authentication step out of order: {0}")]
    OutOfOrder(&'static str),
    #[error("no NTLM session key (anonymous or not yet authenticated)")]
    NoSessionKey,
    #[error("{0}")]
    Mechanism(#[from] mechanism::MechanismRefusal),
}
