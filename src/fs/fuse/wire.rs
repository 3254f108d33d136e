//! The FUSE kernel ABI (linux/fuse.h, protocol 7.x) as plain values with their codecs: the requests we serve
//! decoded from the bytes one read(2) of /dev/fuse returns, and the replies and notifications encoded into
//! the bytes one write(2) sends. No I/O, no filesystem: every decoder is bounds-checked and returns a
//! [`WireError`] on short or odd input, never panics.
//!
//! Layout facts (all little-endian on the machines we run on, as the kernel writes host order):
//! `fuse_in_header` is 40 bytes, `fuse_out_header` 16, `fuse_attr` 88, `fuse_entry_out` 128.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::fs::{Attr, FileKind};

/// The protocol major version we speak.
pub const KERNEL_VERSION: u32 = 7;
/// The minor version we answer INIT with (7.40: FUSE_NOTIFY_RESEND).
pub const KERNEL_MINOR_VERSION: u32 = 40;
/// The first minor version whose kernels implement FUSE_NOTIFY_RESEND (Linux 6.9).
pub const MINOR_WITH_RESEND: u32 = 40;
/// The root's node id.
pub const ROOT_ID: u64 = 1;

pub const IN_HEADER_LEN: usize = 40;
pub const OUT_HEADER_LEN: usize = 16;
pub const ATTR_LEN: usize = 88;
pub const ENTRY_OUT_LEN: usize = 40 + ATTR_LEN;
const DIRENT_NAME_OFFSET: usize = 24;

/// The high bit of `unique` marks a request the kernel queued again after FUSE_NOTIFY_RESEND.
pub const UNIQUE_RESEND: u64 = 1 << 63;

/// INIT flags (`fuse_init_in.flags`, with `flags2` as the high 32 bits when FUSE_INIT_EXT is set).
pub mod init_flags {
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const POSIX_LOCKS: u64 = 1 << 1;
    pub const ATOMIC_O_TRUNC: u64 = 1 << 3;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const FLOCK_LOCKS: u64 = 1 << 10;
    pub const AUTO_INVAL_DATA: u64 = 1 << 12;
    pub const DO_READDIRPLUS: u64 = 1 << 13;
    pub const READDIRPLUS_AUTO: u64 = 1 << 14;
    pub const ASYNC_DIO: u64 = 1 << 15;
    pub const WRITEBACK_CACHE: u64 = 1 << 16;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const INIT_EXT: u64 = 1 << 30;
    /// The kernel can resend pending requests (Linux 6.9, protocol 7.40).
    pub const HAS_RESEND: u64 = 1 << 39;
}

/// `fuse_open_out.open_flags`.
pub mod fopen {
    pub const DIRECT_IO: u32 = 1 << 0;
    pub const KEEP_CACHE: u32 = 1 << 1;
}

/// `fuse_setattr_in.valid`.
mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
}

/// Notification codes (sent with `unique == 0` and the code in the error field).
pub mod notify {
    pub const INVAL_INODE: i32 = 2;
    pub const INVAL_ENTRY: i32 = 3;
    pub const RESEND: i32 = 7;
}

/// Opcodes (`enum fuse_opcode`).
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("FUSE message truncated: {what} needs {need} bytes, {have} left")]
    Short { what: &'static str, need: usize, have: usize },
    #[error("FUSE header length {declared} disagrees with the {read} bytes read")]
    Length { declared: u32, read: usize },
    #[error("FUSE {what}: name not NUL-terminated")]
    Unterminated { what: &'static str },
    #[error("FUSE BATCH_FORGET announces {count} entries, the message holds {fits}")]
    ForgetCount { count: u32, fits: usize },
}

/// A bounded reader over untrusted bytes: hands out fields and sub-slices, errors when they run out.
struct Cursor<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Cursor<'a> {
        Cursor { buf, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Short { what: self.what, need: n, have: self.buf.len() });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A NUL-terminated name (the NUL is consumed, not returned).
    fn name(&mut self) -> Result<OsString, WireError> {
        let end = self.buf.iter().position(|&c| c == 0).ok_or(WireError::Unterminated { what: self.what })?;
        let name = self.take(end)?.to_vec();
        self.take(1)?;
        Ok(OsString::from_vec(name))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// `fuse_in_header`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// `fuse_init_in`: what the kernel offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitIn {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    /// `flags | flags2 << 32` (flags2 only when FUSE_INIT_EXT is offered).
    pub flags: u64,
}

/// `fuse_init_out`: what we accept. Also what the takeover state keeps of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitOut {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u64,
    pub max_background: u16,
    pub congestion_threshold: u16,
    pub max_write: u32,
    pub time_gran: u32,
    pub max_pages: u16,
}

/// A time given by `setattr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeIn {
    Now,
    At(SystemTime),
}

/// `fuse_setattr_in`, with the fields its `valid` mask does not name left out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetattrIn {
    pub fh: Option<u64>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeIn>,
    pub mtime: Option<TimeIn>,
}

/// `fuse_lk_in` (GETLK, SETLK, SETLKW).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LkIn {
    pub fh: u64,
    pub owner: u64,
    pub start: u64,
    pub end: u64,
    pub typ: u32,
    pub pid: u32,
    pub flags: u32,
}

/// A decoded request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Init(InitIn),
    Lookup {
        name: OsString,
    },
    Forget {
        nlookup: u64,
    },
    BatchForget {
        nodes: Vec<(u64, u64)>,
    },
    Getattr {
        fh: Option<u64>,
    },
    Setattr(SetattrIn),
    Readlink,
    Symlink {
        name: OsString,
        target: OsString,
    },
    Mknod {
        name: OsString,
        mode: u32,
        rdev: u32,
        umask: u32,
    },
    Mkdir {
        name: OsString,
        mode: u32,
        umask: u32,
    },
    Unlink {
        name: OsString,
    },
    Rmdir {
        name: OsString,
    },
    Rename {
        newdir: u64,
        name: OsString,
        newname: OsString,
        flags: u32,
    },
    Link {
        oldnodeid: u64,
        newname: OsString,
    },
    Open {
        flags: u32,
    },
    Read {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Write {
        fh: u64,
        offset: u64,
        data: Vec<u8>,
        write_flags: u32,
    },
    Statfs,
    Release {
        fh: u64,
        flags: u32,
    },
    Fsync {
        fh: u64,
        datasync: bool,
    },
    Flush {
        fh: u64,
        lock_owner: u64,
    },
    Opendir {
        flags: u32,
    },
    Readdir {
        fh: u64,
        offset: u64,
        size: u32,
        plus: bool,
    },
    Releasedir {
        fh: u64,
    },
    Fsyncdir {
        fh: u64,
    },
    Getlk(LkIn),
    Setlk {
        lk: LkIn,
        sleep: bool,
    },
    Access {
        mask: u32,
    },
    Create {
        name: OsString,
        flags: u32,
        mode: u32,
        umask: u32,
    },
    Interrupt {
        unique: u64,
    },
    Destroy,
    Fallocate {
        fh: u64,
        offset: u64,
        length: u64,
        mode: u32,
    },
    Lseek {
        fh: u64,
        offset: u64,
        whence: u32,
    },
    /// Any opcode we do not serve: answered ENOSYS.
    Unknown {
        opcode: u32,
    },
}

impl Request {
    /// Whether the kernel expects no reply (FORGET, BATCH_FORGET, INTERRUPT).
    pub fn is_one_way(&self) -> bool {
        matches!(self, Request::Forget { .. } | Request::BatchForget { .. } | Request::Interrupt { .. })
    }
}

/// Decodes the header of one message and checks its length against the bytes read.
pub fn decode_header(msg: &[u8]) -> Result<InHeader, WireError> {
    let mut c = Cursor::new(msg, "in header");
    let h = InHeader {
        len: c.u32()?,
        opcode: c.u32()?,
        unique: c.u64()?,
        nodeid: c.u64()?,
        uid: c.u32()?,
        gid: c.u32()?,
        pid: c.u32()?,
    };
    let _total_extlen = c.u16()?;
    let _padding = c.u16()?;
    if h.len as usize != msg.len() {
        return Err(WireError::Length { declared: h.len, read: msg.len() });
    }
    Ok(h)
}

/// A SETATTR time: the kernel puts its signed seconds since the epoch in the u64 field
/// (`fuse_setattr_in`), so a time before 1970 (`touch -d 1960-01-01`) arrives as a huge value.
/// Read as signed, never overflowing (found by fuzz/fuzz_targets/fuse_request.rs: `UNIX_EPOCH +`
/// panicked); a time the platform cannot hold becomes the epoch.
fn time_in(secs: u64, nsecs: u32) -> SystemTime {
    let signed = secs as i64;
    let whole = if signed >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(signed.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(signed.unsigned_abs()))
    };
    let nanos = Duration::from_nanos(u64::from(nsecs.min(999_999_999)));
    whole.map(|t| t.checked_add(nanos).unwrap_or(t)).unwrap_or(UNIX_EPOCH)
}

fn lk_in(c: &mut Cursor<'_>) -> Result<LkIn, WireError> {
    Ok(LkIn {
        fh: c.u64()?,
        owner: c.u64()?,
        start: c.u64()?,
        end: c.u64()?,
        typ: c.u32()?,
        pid: c.u32()?,
        flags: c.u32()?,
    })
}

/// Decodes one whole message (as read from /dev/fuse): its header and its body.
pub fn decode(msg: &[u8]) -> Result<(InHeader, Request), WireError> {
    let h = decode_header(msg)?;
    let body = &msg[IN_HEADER_LEN..];
    let req = decode_body(h.opcode, body)?;
    Ok((h, req))
}

/// Decodes the body of a request with `opcode`.
pub fn decode_body(op: u32, body: &[u8]) -> Result<Request, WireError> {
    use opcode::*;
    let mut c = Cursor::new(body, "request body");
    let req = match op {
        INIT => {
            c.what = "INIT";
            let (major, minor, max_readahead, flags) = (c.u32()?, c.u32()?, c.u32()?, c.u32()?);
            let mut flags = u64::from(flags);
            if flags & init_flags::INIT_EXT != 0 {
                flags |= u64::from(c.u32()?) << 32;
            }
            Request::Init(InitIn { major, minor, max_readahead, flags })
        }
        LOOKUP => Request::Lookup { name: c.name()? },
        FORGET => Request::Forget { nlookup: c.u64()? },
        BATCH_FORGET => {
            c.what = "BATCH_FORGET";
            let count = c.u32()?;
            let _dummy = c.u32()?;
            let fits = c.buf.len() / 16;
            if count as usize > fits {
                return Err(WireError::ForgetCount { count, fits });
            }
            let mut nodes = Vec::with_capacity(count as usize);
            for _ in 0..count {
                nodes.push((c.u64()?, c.u64()?));
            }
            Request::BatchForget { nodes }
        }
        GETATTR => {
            c.what = "GETATTR";
            let flags = c.u32()?;
            let _dummy = c.u32()?;
            let fh = c.u64()?;
            Request::Getattr { fh: (flags & 1 != 0).then_some(fh) }
        }
        SETATTR => {
            c.what = "SETATTR";
            let valid = c.u32()?;
            let _padding = c.u32()?;
            let (fh, size, _lock_owner, atime, mtime, _ctime) =
                (c.u64()?, c.u64()?, c.u64()?, c.u64()?, c.u64()?, c.u64()?);
            let (atimensec, mtimensec, _ctimensec, mode, _unused4, uid, gid) =
                (c.u32()?, c.u32()?, c.u32()?, c.u32()?, c.u32()?, c.u32()?, c.u32()?);
            let has = |bit: u32| valid & bit != 0;
            let time = |set: u32, now: u32, secs: u64, nsecs: u32| {
                if has(now) {
                    Some(TimeIn::Now)
                } else if has(set) {
                    Some(TimeIn::At(time_in(secs, nsecs)))
                } else {
                    None
                }
            };
            Request::Setattr(SetattrIn {
                fh: has(fattr::FH).then_some(fh),
                mode: has(fattr::MODE).then_some(mode),
                uid: has(fattr::UID).then_some(uid),
                gid: has(fattr::GID).then_some(gid),
                size: has(fattr::SIZE).then_some(size),
                atime: time(fattr::ATIME, fattr::ATIME_NOW, atime, atimensec),
                mtime: time(fattr::MTIME, fattr::MTIME_NOW, mtime, mtimensec),
            })
        }
        READLINK => Request::Readlink,
        SYMLINK => Request::Symlink { name: c.name()?, target: c.name()? },
        MKNOD => {
            c.what = "MKNOD";
            let (mode, rdev, umask, _padding) = (c.u32()?, c.u32()?, c.u32()?, c.u32()?);
            Request::Mknod { mode, rdev, umask, name: c.name()? }
        }
        MKDIR => {
            c.what = "MKDIR";
            let (mode, umask) = (c.u32()?, c.u32()?);
            Request::Mkdir { mode, umask, name: c.name()? }
        }
        UNLINK => Request::Unlink { name: c.name()? },
        RMDIR => Request::Rmdir { name: c.name()? },
        RENAME => {
            c.what = "RENAME";
            let newdir = c.u64()?;
            Request::Rename { newdir, name: c.name()?, newname: c.name()?, flags: 0 }
        }
        RENAME2 => {
            c.what = "RENAME2";
            let (newdir, flags, _padding) = (c.u64()?, c.u32()?, c.u32()?);
            Request::Rename { newdir, name: c.name()?, newname: c.name()?, flags }
        }
        LINK => {
            c.what = "LINK";
            let oldnodeid = c.u64()?;
            Request::Link { oldnodeid, newname: c.name()? }
        }
        OPEN | OPENDIR => {
            c.what = "OPEN";
            let (flags, _open_flags) = (c.u32()?, c.u32()?);
            if op == OPEN {
                Request::Open { flags }
            } else {
                Request::Opendir { flags }
            }
        }
        READ | READDIR | READDIRPLUS => {
            c.what = "READ";
            let (fh, offset, size) = (c.u64()?, c.u64()?, c.u32()?);
            match op {
                READ => Request::Read { fh, offset, size },
                _ => Request::Readdir { fh, offset, size, plus: op == READDIRPLUS },
            }
        }
        WRITE => {
            c.what = "WRITE";
            let (fh, offset, size, write_flags) = (c.u64()?, c.u64()?, c.u32()?, c.u32()?);
            let (_lock_owner, _flags, _padding) = (c.u64()?, c.u32()?, c.u32()?);
            let data = c.take(size as usize)?.to_vec();
            Request::Write { fh, offset, data, write_flags }
        }
        STATFS => Request::Statfs,
        RELEASE | RELEASEDIR => {
            c.what = "RELEASE";
            let (fh, flags) = (c.u64()?, c.u32()?);
            if op == RELEASE {
                Request::Release { fh, flags }
            } else {
                Request::Releasedir { fh }
            }
        }
        FSYNC | FSYNCDIR => {
            c.what = "FSYNC";
            let (fh, fsync_flags) = (c.u64()?, c.u32()?);
            if op == FSYNC {
                Request::Fsync { fh, datasync: fsync_flags & 1 != 0 }
            } else {
                Request::Fsyncdir { fh }
            }
        }
        FLUSH => {
            c.what = "FLUSH";
            let (fh, _unused, _padding, lock_owner) = (c.u64()?, c.u32()?, c.u32()?, c.u64()?);
            Request::Flush { fh, lock_owner }
        }
        GETLK | SETLK | SETLKW => {
            c.what = "LK";
            let lk = lk_in(&mut c)?;
            match op {
                GETLK => Request::Getlk(lk),
                _ => Request::Setlk { lk, sleep: op == SETLKW },
            }
        }
        ACCESS => Request::Access { mask: c.u32()? },
        CREATE => {
            c.what = "CREATE";
            let (flags, mode, umask, _open_flags) = (c.u32()?, c.u32()?, c.u32()?, c.u32()?);
            Request::Create { flags, mode, umask, name: c.name()? }
        }
        INTERRUPT => Request::Interrupt { unique: c.u64()? },
        DESTROY => Request::Destroy,
        FALLOCATE => {
            c.what = "FALLOCATE";
            Request::Fallocate { fh: c.u64()?, offset: c.u64()?, length: c.u64()?, mode: c.u32()? }
        }
        LSEEK => {
            c.what = "LSEEK";
            Request::Lseek { fh: c.u64()?, offset: c.u64()?, whence: c.u32()? }
        }
        other => {
            let _ = c.rest();
            Request::Unknown { opcode: other }
        }
    };
    Ok(req)
}

/// `fuse_out_header` for a reply of `payload_len` bytes (`error` is a negative errno, or 0).
pub fn out_header(unique: u64, error: i32, payload_len: usize) -> [u8; OUT_HEADER_LEN] {
    let mut h = [0u8; OUT_HEADER_LEN];
    h[0..4].copy_from_slice(&((OUT_HEADER_LEN + payload_len) as u32).to_le_bytes());
    h[4..8].copy_from_slice(&error.to_le_bytes());
    h[8..16].copy_from_slice(&unique.to_le_bytes());
    h
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Seconds and nanoseconds since the epoch (times before it show as the epoch).
fn time_out(t: SystemTime) -> (u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

/// The `st_mode` type bits of a kind.
fn type_bits(kind: FileKind) -> u32 {
    match kind {
        FileKind::Directory => 0o040000,
        FileKind::RegularFile => 0o100000,
        FileKind::Symlink => 0o120000,
    }
}

/// `d_type` of a dirent.
fn dirent_type(kind: FileKind) -> u32 {
    match kind {
        FileKind::Directory => 4,
        FileKind::RegularFile => 8,
        FileKind::Symlink => 10,
    }
}

/// `fuse_attr` (88 bytes).
pub fn put_attr(out: &mut Vec<u8>, a: &Attr) {
    let (atime, atimens) = time_out(a.atime);
    let (mtime, mtimens) = time_out(a.mtime);
    let (ctime, ctimens) = time_out(a.ctime);
    put_u64(out, a.ino);
    put_u64(out, a.size);
    put_u64(out, a.blocks);
    put_u64(out, atime);
    put_u64(out, mtime);
    put_u64(out, ctime);
    put_u32(out, atimens);
    put_u32(out, mtimens);
    put_u32(out, ctimens);
    put_u32(out, type_bits(a.kind) | u32::from(a.perm));
    put_u32(out, a.nlink);
    put_u32(out, a.uid);
    put_u32(out, a.gid);
    put_u32(out, 0); // rdev
    put_u32(out, a.blksize);
    put_u32(out, 0); // flags
}

fn put_ttl(out: &mut Vec<u8>, ttl: Duration) -> u32 {
    put_u64(out, ttl.as_secs());
    ttl.subsec_nanos()
}

/// `fuse_entry_out` (128 bytes): the name and the attributes are both valid for `ttl`.
pub fn put_entry(out: &mut Vec<u8>, ttl: Duration, a: &Attr) {
    put_entry_of(out, a.ino, ttl, a);
}

/// `fuse_entry_out` naming node `ino` (a directory listing's ".." names another node than its attributes).
fn put_entry_of(out: &mut Vec<u8>, ino: u64, ttl: Duration, a: &Attr) {
    put_u64(out, ino);
    put_u64(out, 0); // generation: node ids are never reused for another file within a mount
    let entry_nsec = put_ttl(out, ttl);
    let attr_nsec = put_ttl(out, ttl);
    put_u32(out, entry_nsec);
    put_u32(out, attr_nsec);
    put_attr(out, a);
}

/// LOOKUP, MKNOD, MKDIR, LINK, SYMLINK reply.
pub fn entry_out(ttl: Duration, a: &Attr) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENTRY_OUT_LEN);
    put_entry(&mut out, ttl, a);
    out
}

/// GETATTR, SETATTR reply (`fuse_attr_out`, 104 bytes).
pub fn attr_out(ttl: Duration, a: &Attr) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + ATTR_LEN);
    let nsec = put_ttl(&mut out, ttl);
    put_u32(&mut out, nsec);
    put_u32(&mut out, 0);
    put_attr(&mut out, a);
    out
}

/// OPEN, OPENDIR reply (`fuse_open_out`).
pub fn open_out(fh: u64, open_flags: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    put_u64(&mut out, fh);
    put_u32(&mut out, open_flags);
    put_u32(&mut out, 0);
    out
}

/// CREATE reply: `fuse_entry_out` then `fuse_open_out`.
pub fn create_out(ttl: Duration, a: &Attr, fh: u64, open_flags: u32) -> Vec<u8> {
    let mut out = entry_out(ttl, a);
    out.extend_from_slice(&open_out(fh, open_flags));
    out
}

/// WRITE reply (`fuse_write_out`).
pub fn write_out(size: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    put_u32(&mut out, size);
    put_u32(&mut out, 0);
    out
}

/// STATFS reply (`fuse_statfs_out`, 80 bytes).
pub fn statfs_out(blocks: u64, bfree: u64, bavail: u64, bsize: u32, namelen: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(80);
    for v in [blocks, bfree, bavail, 0, 0] {
        put_u64(&mut out, v);
    }
    for v in [bsize, namelen, bsize, 0] {
        put_u32(&mut out, v);
    }
    out.resize(80, 0);
    out
}

/// GETLK reply (`fuse_lk_out`).
pub fn lk_out(start: u64, end: u64, typ: u32, pid: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    put_u64(&mut out, start);
    put_u64(&mut out, end);
    put_u32(&mut out, typ);
    put_u32(&mut out, pid);
    out
}

/// LSEEK reply (`fuse_lseek_out`).
pub fn lseek_out(offset: u64) -> Vec<u8> {
    offset.to_le_bytes().to_vec()
}

/// INIT reply (`fuse_init_out`, 64 bytes; shorter for kernels before 7.23, which expect the old size).
pub fn init_out(o: &InitOut, kernel_minor: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    put_u32(&mut out, o.major);
    put_u32(&mut out, o.minor);
    put_u32(&mut out, o.max_readahead);
    put_u32(&mut out, o.flags as u32);
    put_u16(&mut out, o.max_background);
    put_u16(&mut out, o.congestion_threshold);
    put_u32(&mut out, o.max_write);
    put_u32(&mut out, o.time_gran);
    put_u16(&mut out, o.max_pages);
    put_u16(&mut out, 0); // map_alignment
    put_u32(&mut out, (o.flags >> 32) as u32);
    out.resize(64, 0);
    if kernel_minor < 23 {
        out.truncate(24);
    }
    out
}

/// A READDIR or READDIRPLUS reply being filled, at most `size` bytes (what the kernel asked for).
pub struct DirBuf {
    buf: Vec<u8>,
    size: usize,
}

impl DirBuf {
    pub fn new(size: u32) -> DirBuf {
        let size = size as usize;
        DirBuf { buf: Vec::with_capacity(size.min(64 * 1024)), size }
    }

    fn put_dirent(&mut self, ino: u64, offset: u64, kind: FileKind, name: &[u8]) {
        put_u64(&mut self.buf, ino);
        put_u64(&mut self.buf, offset);
        put_u32(&mut self.buf, name.len() as u32);
        put_u32(&mut self.buf, dirent_type(kind));
        self.buf.extend_from_slice(name);
        let padded = self.buf.len().next_multiple_of(8);
        self.buf.resize(padded, 0);
    }

    /// Adds a `fuse_dirent`; `true` when it did not fit (the reply is full and nothing was added).
    pub fn add(&mut self, ino: u64, offset: u64, kind: FileKind, name: &[u8]) -> bool {
        let len = (DIRENT_NAME_OFFSET + name.len()).next_multiple_of(8);
        if self.buf.len() + len > self.size {
            return true;
        }
        self.put_dirent(ino, offset, kind, name);
        false
    }

    /// Adds a `fuse_direntplus` (entry of node `ino`, then dirent); `true` when it did not fit.
    pub fn add_plus(&mut self, ino: u64, offset: u64, name: &[u8], ttl: Duration, attr: &Attr) -> bool {
        let len = (ENTRY_OUT_LEN + DIRENT_NAME_OFFSET + name.len()).next_multiple_of(8);
        if self.buf.len() + len > self.size {
            return true;
        }
        put_entry_of(&mut self.buf, ino, ttl, attr);
        self.put_dirent(ino, offset, attr.kind, name);
        false
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// A notification: out header with `unique == 0` and the code as "error", then its body.
fn notification(code: i32, body: &[u8]) -> Vec<u8> {
    let mut out = out_header(0, code, body.len()).to_vec();
    out.extend_from_slice(body);
    out
}

/// FUSE_NOTIFY_INVAL_INODE: drop cached data of `ino` in `[offset, offset+len)` (len 0: to the end; offset
/// negative: attributes only).
pub fn notify_inval_inode(ino: u64, offset: i64, len: i64) -> Vec<u8> {
    let mut body = Vec::with_capacity(24);
    put_u64(&mut body, ino);
    body.extend_from_slice(&offset.to_le_bytes());
    body.extend_from_slice(&len.to_le_bytes());
    notification(notify::INVAL_INODE, &body)
}

/// FUSE_NOTIFY_INVAL_ENTRY: drop the cached entry `name` of directory `parent`.
pub fn notify_inval_entry(parent: u64, name: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + name.len() + 1);
    put_u64(&mut body, parent);
    put_u32(&mut body, name.len() as u32);
    put_u32(&mut body, 0);
    body.extend_from_slice(name);
    body.push(0);
    notification(notify::INVAL_ENTRY, &body)
}

/// FUSE_NOTIFY_RESEND (no body): the kernel queues again every request it handed out and has not had answered.
pub fn notify_resend() -> Vec<u8> {
    notification(notify::RESEND, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        put_u32(&mut m, (IN_HEADER_LEN + body.len()) as u32);
        put_u32(&mut m, opcode);
        put_u64(&mut m, unique);
        put_u64(&mut m, nodeid);
        for v in [1000u32, 1001, 4242] {
            put_u32(&mut m, v);
        }
        put_u32(&mut m, 0);
        m.extend_from_slice(body);
        m
    }

    fn attr() -> Attr {
        Attr {
            ino: 77,
            size: 5000,
            blocks: 16,
            atime: UNIX_EPOCH + Duration::new(10, 5),
            mtime: UNIX_EPOCH + Duration::new(20, 6),
            ctime: UNIX_EPOCH + Duration::new(30, 7),
            crtime: UNIX_EPOCH,
            kind: FileKind::RegularFile,
            perm: 0o640,
            nlink: 1,
            uid: 1,
            gid: 2,
            blksize: 1 << 20,
        }
    }

    #[test]
    fn header_and_lookup_decode() {
        let m = header(opcode::LOOKUP, 9, 1, b"file.txt\0");
        let (h, r) = decode(&m).unwrap();
        assert_eq!((h.opcode, h.unique, h.nodeid, h.uid, h.gid, h.pid), (1, 9, 1, 1000, 1001, 4242));
        assert_eq!(r, Request::Lookup { name: "file.txt".into() });
    }

    #[test]
    fn truncated_and_inconsistent_input_is_an_error() {
        let m = header(opcode::LOOKUP, 9, 1, b"file.txt\0");
        for cut in 0..m.len() {
            assert!(decode(&m[..cut]).is_err(), "cut at {cut}");
        }
        // A name without its NUL.
        assert!(matches!(decode(&header(opcode::LOOKUP, 1, 1, b"abc")), Err(WireError::Unterminated { .. })));
        // A header that claims more than was read.
        let mut long = header(opcode::GETATTR, 1, 1, &[0; 16]);
        long[0] = 200;
        assert!(matches!(decode(&long), Err(WireError::Length { .. })));
        // A write announcing more data than it carries.
        let mut w = Vec::new();
        for v in [7u64, 0] {
            put_u64(&mut w, v);
        }
        put_u32(&mut w, 100);
        put_u32(&mut w, 0);
        w.extend_from_slice(&[0; 16]);
        w.extend_from_slice(&[1; 10]);
        assert!(matches!(decode(&header(opcode::WRITE, 1, 1, &w)), Err(WireError::Short { .. })));
        // A batch forget announcing more entries than fit.
        let mut bf = Vec::new();
        put_u32(&mut bf, 1000);
        put_u32(&mut bf, 0);
        bf.extend_from_slice(&[0; 32]);
        assert_eq!(
            decode(&header(opcode::BATCH_FORGET, 1, 0, &bf)).unwrap_err(),
            WireError::ForgetCount { count: 1000, fits: 2 }
        );
        // Oversized: trailing bytes after a fixed body are tolerated (newer kernels append fields).
        let mut open = Vec::new();
        put_u32(&mut open, 2);
        put_u32(&mut open, 0);
        open.extend_from_slice(&[0; 64]);
        assert_eq!(decode(&header(opcode::OPEN, 1, 5, &open)).unwrap().1, Request::Open { flags: 2 });
    }

    #[test]
    fn init_reads_flags2_only_with_init_ext() {
        let mut b = Vec::new();
        for v in [7u32, 45, 131072, (init_flags::INIT_EXT | init_flags::ASYNC_READ) as u32, 1 << 7] {
            put_u32(&mut b, v);
        }
        b.extend_from_slice(&[0; 44]);
        let (_, r) = decode(&header(opcode::INIT, 1, 0, &b)).unwrap();
        assert_eq!(
            r,
            Request::Init(InitIn {
                major: 7,
                minor: 45,
                max_readahead: 131072,
                flags: init_flags::INIT_EXT | init_flags::ASYNC_READ | init_flags::HAS_RESEND
            })
        );
        let old = &b[..16];
        let mut old = old.to_vec();
        old[12..16].copy_from_slice(&1u32.to_le_bytes());
        let (_, r) = decode(&header(opcode::INIT, 1, 0, &old)).unwrap();
        assert_eq!(r, Request::Init(InitIn { major: 7, minor: 45, max_readahead: 131072, flags: 1 }));
    }

    #[test]
    fn bodies_with_names_and_fixed_fields_decode() {
        let mut rename2 = Vec::new();
        put_u64(&mut rename2, 12);
        put_u32(&mut rename2, 1);
        put_u32(&mut rename2, 0);
        rename2.extend_from_slice(b"a\0bb\0");
        assert_eq!(
            decode(&header(opcode::RENAME2, 1, 5, &rename2)).unwrap().1,
            Request::Rename { newdir: 12, name: "a".into(), newname: "bb".into(), flags: 1 }
        );
        let mut create = Vec::new();
        for v in [0o1101u32, 0o100644, 0o022, 0] {
            put_u32(&mut create, v);
        }
        create.extend_from_slice(b"new\0");
        assert_eq!(
            decode(&header(opcode::CREATE, 1, 1, &create)).unwrap().1,
            Request::Create { name: "new".into(), flags: 0o1101, mode: 0o100644, umask: 0o022 }
        );
        let mut write = Vec::new();
        for v in [3u64, 4096] {
            put_u64(&mut write, v);
        }
        put_u32(&mut write, 3);
        put_u32(&mut write, 0);
        write.extend_from_slice(&[0; 16]);
        write.extend_from_slice(b"xyz");
        assert_eq!(
            decode(&header(opcode::WRITE, 1, 9, &write)).unwrap().1,
            Request::Write { fh: 3, offset: 4096, data: b"xyz".to_vec(), write_flags: 0 }
        );
        let mut bf = Vec::new();
        put_u32(&mut bf, 2);
        put_u32(&mut bf, 0);
        for v in [10u64, 1, 11, 3] {
            put_u64(&mut bf, v);
        }
        assert_eq!(
            decode(&header(opcode::BATCH_FORGET, 1, 0, &bf)).unwrap().1,
            Request::BatchForget { nodes: vec![(10, 1), (11, 3)] }
        );
        let mut setattr = vec![0u8; 88];
        setattr[0..4].copy_from_slice(&(fattr::SIZE | fattr::FH | fattr::MTIME_NOW | fattr::ATIME).to_le_bytes());
        setattr[8..16].copy_from_slice(&5u64.to_le_bytes());
        setattr[16..24].copy_from_slice(&100u64.to_le_bytes());
        setattr[32..40].copy_from_slice(&1_000u64.to_le_bytes());
        assert_eq!(
            decode(&header(opcode::SETATTR, 1, 9, &setattr)).unwrap().1,
            Request::Setattr(SetattrIn {
                fh: Some(5),
                size: Some(100),
                atime: Some(TimeIn::At(UNIX_EPOCH + Duration::from_secs(1000))),
                mtime: Some(TimeIn::Now),
                ..Default::default()
            })
        );
        assert_eq!(decode(&header(9999, 1, 1, b"whatever")).unwrap().1, Request::Unknown { opcode: 9999 });
        assert!(Request::Forget { nlookup: 1 }.is_one_way() && !Request::Statfs.is_one_way());
    }

    #[test]
    fn replies_have_the_kernel_layouts() {
        let a = attr();
        let e = entry_out(Duration::from_millis(1500), &a);
        assert_eq!(e.len(), ENTRY_OUT_LEN);
        assert_eq!(&e[0..8], &77u64.to_le_bytes());
        assert_eq!(&e[16..24], &1u64.to_le_bytes()); // entry_valid secs
        assert_eq!(&e[32..36], &500_000_000u32.to_le_bytes()); // entry_valid nsec
        let mode = u32::from_le_bytes(e[40 + 60..40 + 64].try_into().unwrap());
        assert_eq!(mode, 0o100640);
        assert_eq!(attr_out(Duration::from_secs(1), &a).len(), 104);
        assert_eq!(create_out(Duration::ZERO, &a, 5, fopen::KEEP_CACHE).len(), ENTRY_OUT_LEN + 16);
        assert_eq!(statfs_out(1, 2, 3, 4096, 255).len(), 80);
        let init = InitOut {
            major: 7,
            minor: 40,
            max_readahead: 1 << 20,
            flags: init_flags::ASYNC_READ | init_flags::HAS_RESEND,
            max_background: 64,
            congestion_threshold: 48,
            max_write: 1 << 20,
            time_gran: 1,
            max_pages: 256,
        };
        let b = init_out(&init, 45);
        assert_eq!(b.len(), 64);
        assert_eq!(&b[12..16], &1u32.to_le_bytes());
        assert_eq!(&b[32..36], &(1u32 << 7).to_le_bytes()); // flags2
        assert_eq!(init_out(&init, 22).len(), 24);
        assert_eq!(out_header(5, -2, 8), {
            let mut h = [0u8; 16];
            h[0] = 24;
            h[4..8].copy_from_slice(&(-2i32).to_le_bytes());
            h[8] = 5;
            h
        });
    }

    #[test]
    fn dirents_are_aligned_and_stop_when_full() {
        let mut d = DirBuf::new(64);
        assert!(!d.add(5, 1, FileKind::Directory, b"."));
        assert!(!d.add(1, 2, FileKind::Directory, b".."));
        assert!(d.add(9, 3, FileKind::RegularFile, b"x"), "a third entry does not fit 64 bytes");
        let b = d.into_bytes();
        assert_eq!(b.len(), 64);
        assert_eq!(&b[16..20], &1u32.to_le_bytes());
        assert_eq!(&b[20..24], &4u32.to_le_bytes());
        let mut p = DirBuf::new(4096);
        assert!(!p.add_plus(77, 3, b"file", Duration::from_secs(1), &attr()));
        assert_eq!(p.into_bytes().len(), (ENTRY_OUT_LEN + 24 + 4).next_multiple_of(8));
    }

    #[test]
    fn notifications_carry_their_code() {
        let r = notify_resend();
        assert_eq!(r.len(), 16);
        assert_eq!(&r[4..8], &7i32.to_le_bytes());
        assert_eq!(&r[8..16], &0u64.to_le_bytes());
        let e = notify_inval_entry(1, b"abc");
        assert_eq!(e.len(), 16 + 16 + 4);
        assert_eq!(&e[4..8], &3i32.to_le_bytes());
        let i = notify_inval_inode(9, 0, 0);
        assert_eq!((i.len(), &i[4..8]), (40, &2i32.to_le_bytes()[..]));
    }

    #[test]
    fn setattr_times_before_1970_and_at_the_limits_decode_without_panicking() {
        let at = |secs: u64, nsecs: u32| {
            let mut setattr = vec![0u8; 88];
            setattr[0..4].copy_from_slice(&fattr::ATIME.to_le_bytes());
            setattr[32..40].copy_from_slice(&secs.to_le_bytes());
            setattr[56..60].copy_from_slice(&nsecs.to_le_bytes());
            match decode(&header(opcode::SETATTR, 1, 9, &setattr)).unwrap().1 {
                Request::Setattr(SetattrIn { atime: Some(TimeIn::At(t)), .. }) => t,
                other => panic!("{other:?}"),
            }
        };
        // 1960-01-01, as the kernel sends it: -315619200 in the u64 field.
        assert_eq!(at((-315_619_200i64) as u64, 0), UNIX_EPOCH - Duration::from_secs(315_619_200));
        assert_eq!(at(u64::MAX, 500), UNIX_EPOCH - Duration::from_secs(1) + Duration::from_nanos(500));
        for secs in [i64::MAX as u64, i64::MIN as u64] {
            let _ = at(secs, 999_999_999);
        }
    }
}
