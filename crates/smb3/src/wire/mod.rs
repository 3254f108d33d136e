//! Pure encode/decode of SMB2/3 messages (MS-SMB2 section 2.2). No I/O, no
//! keys, no async: the connection and session state machines above this
//! module only ever see these typed messages.
//!
//! Conventions:
//! - Request and response bodies are separate structs, each with
//!   `encode(&self, msg: &mut Vec<u8>)` and `decode(msg: &[u8]) -> Result<Self, WireError>`.
//! - `msg` is the whole SMB2 message starting at its 64-byte header: the
//!   encoder is called with the header already in the vec and appends the
//!   body; the decoder reads the body from offset 64. SMB2 buffer offsets are
//!   relative to the header start, so they are simply positions in `msg`.

pub mod cursor;
pub mod header;
pub mod status;

pub mod create;
pub mod directory;
pub mod durable;
pub mod framing;
pub mod info;
pub mod io;
pub mod ioctl;
pub mod negotiate;
pub mod session_setup;
pub mod simple;
pub mod transform;
pub mod tree;

pub use header::Header;
pub use status::NtStatus;

/// Why bytes from the wire could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated { what: &'static str, need: usize, have: usize },
    #[error("{what} at offset {offset} length {len} is outside the {buf}-byte message")]
    BadOffset { what: &'static str, offset: usize, len: usize, buf: usize },
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    #[error("{what} of {len} bytes exceeds the limit of {limit}")]
    TooLarge { what: &'static str, len: usize, limit: usize },
    #[error("server answered with SMB1, which is never accepted")]
    Smb1,
}

/// Checks a body's StructureSize field.
pub(crate) fn expect_structure_size(
    r: &mut cursor::Reader<'_>,
    expected: u16,
    what: &'static str,
) -> Result<(), WireError> {
    let got = r.u16(what)?;
    if got != expected {
        return Err(WireError::Invalid { what, why: format!("structure size {got}, expected {expected}") });
    }
    Ok(())
}

/// SMB2 command codes (MS-SMB2 2.2.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    Negotiate,
    SessionSetup,
    Logoff,
    TreeConnect,
    TreeDisconnect,
    Create,
    Close,
    Flush,
    Read,
    Write,
    Lock,
    Ioctl,
    Cancel,
    Echo,
    QueryDirectory,
    ChangeNotify,
    QueryInfo,
    SetInfo,
    OplockBreak,
    Unknown(u16),
}

impl Command {
    pub fn code(self) -> u16 {
        match self {
            Command::Negotiate => 0x00,
            Command::SessionSetup => 0x01,
            Command::Logoff => 0x02,
            Command::TreeConnect => 0x03,
            Command::TreeDisconnect => 0x04,
            Command::Create => 0x05,
            Command::Close => 0x06,
            Command::Flush => 0x07,
            Command::Read => 0x08,
            Command::Write => 0x09,
            Command::Lock => 0x0A,
            Command::Ioctl => 0x0B,
            Command::Cancel => 0x0C,
            Command::Echo => 0x0D,
            Command::QueryDirectory => 0x0E,
            Command::ChangeNotify => 0x0F,
            Command::QueryInfo => 0x10,
            Command::SetInfo => 0x11,
            Command::OplockBreak => 0x12,
            Command::Unknown(c) => c,
        }
    }

    /// The MS-SMB2 name (`READ`, `QUERY_DIRECTORY`); `OTHER` for codes outside the table.
    pub fn name(self) -> &'static str {
        match self {
            Command::Negotiate => "NEGOTIATE",
            Command::SessionSetup => "SESSION_SETUP",
            Command::Logoff => "LOGOFF",
            Command::TreeConnect => "TREE_CONNECT",
            Command::TreeDisconnect => "TREE_DISCONNECT",
            Command::Create => "CREATE",
            Command::Close => "CLOSE",
            Command::Flush => "FLUSH",
            Command::Read => "READ",
            Command::Write => "WRITE",
            Command::Lock => "LOCK",
            Command::Ioctl => "IOCTL",
            Command::Cancel => "CANCEL",
            Command::Echo => "ECHO",
            Command::QueryDirectory => "QUERY_DIRECTORY",
            Command::ChangeNotify => "CHANGE_NOTIFY",
            Command::QueryInfo => "QUERY_INFO",
            Command::SetInfo => "SET_INFO",
            Command::OplockBreak => "OPLOCK_BREAK",
            Command::Unknown(_) => "OTHER",
        }
    }

    /// Every known command, in code order.
    pub const KNOWN: [Command; 19] = [
        Command::Negotiate,
        Command::SessionSetup,
        Command::Logoff,
        Command::TreeConnect,
        Command::TreeDisconnect,
        Command::Create,
        Command::Close,
        Command::Flush,
        Command::Read,
        Command::Write,
        Command::Lock,
        Command::Ioctl,
        Command::Cancel,
        Command::Echo,
        Command::QueryDirectory,
        Command::ChangeNotify,
        Command::QueryInfo,
        Command::SetInfo,
        Command::OplockBreak,
    ];

    pub fn from_code(c: u16) -> Self {
        match c {
            0x00 => Command::Negotiate,
            0x01 => Command::SessionSetup,
            0x02 => Command::Logoff,
            0x03 => Command::TreeConnect,
            0x04 => Command::TreeDisconnect,
            0x05 => Command::Create,
            0x06 => Command::Close,
            0x07 => Command::Flush,
            0x08 => Command::Read,
            0x09 => Command::Write,
            0x0A => Command::Lock,
            0x0B => Command::Ioctl,
            0x0C => Command::Cancel,
            0x0D => Command::Echo,
            0x0E => Command::QueryDirectory,
            0x0F => Command::ChangeNotify,
            0x10 => Command::QueryInfo,
            0x11 => Command::SetInfo,
            0x12 => Command::OplockBreak,
            c => Command::Unknown(c),
        }
    }
}

/// SMB2 dialect revisions (MS-SMB2 2.2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dialect {
    Smb202,
    Smb210,
    Smb300,
    Smb302,
    Smb311,
    /// 0x02FF, the wildcard an SMB2 server answers to a multi-protocol SMB1 negotiate.
    Wildcard,
    Unknown(u16),
}

impl Dialect {
    pub fn code(self) -> u16 {
        match self {
            Dialect::Smb202 => 0x0202,
            Dialect::Smb210 => 0x0210,
            Dialect::Smb300 => 0x0300,
            Dialect::Smb302 => 0x0302,
            Dialect::Smb311 => 0x0311,
            Dialect::Wildcard => 0x02FF,
            Dialect::Unknown(c) => c,
        }
    }

    pub fn from_code(c: u16) -> Self {
        match c {
            0x0202 => Dialect::Smb202,
            0x0210 => Dialect::Smb210,
            0x0300 => Dialect::Smb300,
            0x0302 => Dialect::Smb302,
            0x0311 => Dialect::Smb311,
            0x02FF => Dialect::Wildcard,
            c => Dialect::Unknown(c),
        }
    }

    /// SMB 3.x family: AES-based signing and encryption are available.
    pub fn is_smb3(self) -> bool {
        matches!(self, Dialect::Smb300 | Dialect::Smb302 | Dialect::Smb311)
    }
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dialect::Smb202 => f.write_str("2.0.2"),
            Dialect::Smb210 => f.write_str("2.1"),
            Dialect::Smb300 => f.write_str("3.0"),
            Dialect::Smb302 => f.write_str("3.0.2"),
            Dialect::Smb311 => f.write_str("3.1.1"),
            Dialect::Wildcard => f.write_str("2.???"),
            Dialect::Unknown(c) => write!(f, "unknown(0x{c:04x})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_codes_round_trip() {
        for c in 0..=0x14u16 {
            assert_eq!(Command::from_code(c).code(), c);
        }
    }

    #[test]
    fn dialect_codes_round_trip() {
        for c in [0x0202, 0x0210, 0x0300, 0x0302, 0x0311, 0x02FF, 0x0400] {
            assert_eq!(Dialect::from_code(c).code(), c);
        }
        assert!(Dialect::Smb302.is_smb3() && !Dialect::Smb210.is_smb3());
    }
}

/// The 16-byte handle of an open (MS-SMB2 2.2.14.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileId {
    pub persistent: u64,
    pub volatile: u64,
}

impl FileId {
    /// The all-ones id that stands for "the previous open" in related compounds,
    /// and the id used by IOCTLs that address no file.
    pub const ANY: FileId = FileId { persistent: u64::MAX, volatile: u64::MAX };

    pub fn encode(&self, out: &mut Vec<u8>) {
        use cursor::Writer;
        out.put_u64(self.persistent);
        out.put_u64(self.volatile);
    }

    pub fn decode(r: &mut cursor::Reader<'_>) -> Result<Self, WireError> {
        Ok(FileId { persistent: r.u64("file id persistent")?, volatile: r.u64("file id volatile")? })
    }
}

/// Encryption cipher ids (MS-SMB2 2.2.3.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CipherId {
    Aes128Ccm,
    Aes128Gcm,
    Aes256Ccm,
    Aes256Gcm,
    Unknown(u16),
}

impl CipherId {
    pub fn code(self) -> u16 {
        match self {
            CipherId::Aes128Ccm => 1,
            CipherId::Aes128Gcm => 2,
            CipherId::Aes256Ccm => 3,
            CipherId::Aes256Gcm => 4,
            CipherId::Unknown(c) => c,
        }
    }

    pub fn from_code(c: u16) -> Self {
        match c {
            1 => CipherId::Aes128Ccm,
            2 => CipherId::Aes128Gcm,
            3 => CipherId::Aes256Ccm,
            4 => CipherId::Aes256Gcm,
            c => CipherId::Unknown(c),
        }
    }

    /// Key length in bytes (16 or 32); `None` for an unknown cipher.
    pub fn key_len(self) -> Option<usize> {
        match self {
            CipherId::Aes128Ccm | CipherId::Aes128Gcm => Some(16),
            CipherId::Aes256Ccm | CipherId::Aes256Gcm => Some(32),
            CipherId::Unknown(_) => None,
        }
    }

    /// Parses the names users write: `aes-128-gcm`, `AES-256-CCM`, ...
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "aes-128-ccm" | "aes128-ccm" => Some(CipherId::Aes128Ccm),
            "aes-128-gcm" | "aes128-gcm" => Some(CipherId::Aes128Gcm),
            "aes-256-ccm" | "aes256-ccm" => Some(CipherId::Aes256Ccm),
            "aes-256-gcm" | "aes256-gcm" => Some(CipherId::Aes256Gcm),
            _ => None,
        }
    }
}

impl std::fmt::Display for CipherId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CipherId::Aes128Ccm => f.write_str("AES-128-CCM"),
            CipherId::Aes128Gcm => f.write_str("AES-128-GCM"),
            CipherId::Aes256Ccm => f.write_str("AES-256-CCM"),
            CipherId::Aes256Gcm => f.write_str("AES-256-GCM"),
            CipherId::Unknown(c) => write!(f, "unknown cipher 0x{c:04x}"),
        }
    }
}

/// Signing algorithm ids (MS-SMB2 2.2.3.1.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SigningAlgorithmId {
    HmacSha256,
    AesCmac,
    AesGmac,
    Unknown(u16),
}

impl SigningAlgorithmId {
    pub fn code(self) -> u16 {
        match self {
            SigningAlgorithmId::HmacSha256 => 0,
            SigningAlgorithmId::AesCmac => 1,
            SigningAlgorithmId::AesGmac => 2,
            SigningAlgorithmId::Unknown(c) => c,
        }
    }

    pub fn from_code(c: u16) -> Self {
        match c {
            0 => SigningAlgorithmId::HmacSha256,
            1 => SigningAlgorithmId::AesCmac,
            2 => SigningAlgorithmId::AesGmac,
            c => SigningAlgorithmId::Unknown(c),
        }
    }
}

impl std::fmt::Display for SigningAlgorithmId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SigningAlgorithmId::HmacSha256 => f.write_str("HMAC-SHA256"),
            SigningAlgorithmId::AesCmac => f.write_str("AES-CMAC"),
            SigningAlgorithmId::AesGmac => f.write_str("AES-GMAC"),
            SigningAlgorithmId::Unknown(c) => write!(f, "unknown signing algorithm 0x{c:04x}"),
        }
    }
}
