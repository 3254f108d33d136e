//! The takeover journal: what the kernel knows about a mount that only its server process knew, kept in a
//! file so that a successor process can serve the same FUSE connection after this one dies (even by SIGKILL).
//!
//! The kernel remembers node ids (with lookup counts) and file handles that the server handed out; a
//! successor that did not know them would answer ESTALE/EBADF for every file a pod has open. So every change
//! of those tables is appended to the journal with one plain write(2) before the kernel hears the answer
//! (the page cache keeps it when the process dies; no fsync on the hot path). Records are framed
//! (length, checksum) so a record torn by a crash is recognised and ignored: the kernel never saw its answer
//! and asks again after FUSE_NOTIFY_RESEND. Forgetting too little is safe (a node is kept a while longer);
//! the journal only ever errs that way.
//!
//! The journal holds the negotiated INIT parameters, share paths, node ids and handle numbers with their
//! open flags: no credentials. When it grows past [`COMPACT_BYTES`] it is rewritten from the live
//! [`Snapshot`] (temporary file + rename, so a crash leaves either the old or the new one).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::fuse::wire::InitOut;

/// The journal's file name inside the state directory.
pub const JOURNAL_FILE: &str = "fuse-journal";
/// Rewrite the journal from the snapshot when it grows past this many bytes.
pub const COMPACT_BYTES: u64 = 4 << 20;

/// Record tags.
mod tag {
    pub const ROOT: u8 = 1;
    pub const INIT: u8 = 2;
    pub const LOOKUP: u8 = 3;
    pub const FORGET: u8 = 4;
    pub const RENAMED: u8 = 5;
    pub const FILE_OPENED: u8 = 6;
    pub const DIR_OPENED: u8 = 7;
    pub const RELEASED: u8 = 8;
    pub const ROOT_GROUP: u8 = 9;
    pub const NODE: u8 = 10;
    pub const NEXT_FH: u8 = 11;
}

/// One change of the kernel-visible state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// The share path served as the root (first record).
    Root { path: String },
    /// The parameters INIT negotiated with the kernel.
    Init(InitOut),
    /// One kernel lookup of `path`, node id `ino`.
    Lookup { ino: u64, path: String },
    /// The kernel dropped `n` lookups of `ino`.
    Forget { ino: u64, n: u64 },
    /// `from` (and everything below it) is now at `to`.
    Renamed { from: String, to: String },
    /// File handle `fh` of node `ino` opened with open(2) `flags`.
    FileOpened { fh: u64, ino: u64, flags: i32 },
    /// Directory handle `fh` of node `ino`.
    DirOpened { fh: u64, ino: u64 },
    /// Handle `fh` (file or directory) released.
    Released { fh: u64 },
    /// A chown of the root set the mount's group.
    RootGroup { gid: u32 },
    /// A node with its lookup count (compacted form of many `Lookup`s).
    Node { ino: u64, path: String, lookups: u64 },
    /// Handle numbers continue at least from here.
    NextFh { fh: u64 },
}

/// Why a journal could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal {0} does not start with the root record")]
    NoRoot(PathBuf),
}

/// A node the kernel knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    pub path: String,
    pub lookups: u64,
}

/// An open file handle the kernel knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileState {
    pub ino: u64,
    pub flags: i32,
}

/// Everything the journal says, replayed: what a successor restores.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub root: Option<String>,
    pub init: Option<InitOut>,
    pub nodes: BTreeMap<u64, NodeState>,
    pub files: BTreeMap<u64, FileState>,
    pub dirs: BTreeMap<u64, u64>,
    pub root_group: Option<u32>,
    /// Lowest handle number never handed out.
    pub next_fh: u64,
}

impl Snapshot {
    /// Applies one record (the same rules as the live tables: see `inodes` and `handles`).
    pub fn apply(&mut self, r: &Record) {
        match r {
            Record::Root { path } => {
                self.root = Some(path.clone());
                self.nodes.insert(super::ROOT_INO, NodeState { path: path.clone(), lookups: 1 });
            }
            Record::Init(init) => self.init = Some(*init),
            Record::Lookup { ino, path } => {
                let node = self.nodes.entry(*ino).or_insert_with(|| NodeState { path: path.clone(), lookups: 0 });
                node.lookups += 1;
                node.path.clone_from(path);
            }
            Record::Node { ino, path, lookups } => {
                self.nodes.insert(*ino, NodeState { path: path.clone(), lookups: *lookups });
            }
            Record::Forget { ino, n } => {
                if *ino == super::ROOT_INO {
                    return;
                }
                if let Some(node) = self.nodes.get_mut(ino) {
                    node.lookups = node.lookups.saturating_sub(*n);
                    if node.lookups == 0 {
                        self.nodes.remove(ino);
                    }
                }
            }
            Record::Renamed { from, to } => {
                let prefix = format!("{from}/");
                for node in self.nodes.values_mut() {
                    if node.path == *from {
                        node.path.clone_from(to);
                    } else if let Some(rest) = node.path.strip_prefix(&prefix) {
                        node.path = format!("{to}/{rest}");
                    }
                }
            }
            Record::FileOpened { fh, ino, flags } => {
                self.files.insert(*fh, FileState { ino: *ino, flags: *flags });
                self.next_fh = self.next_fh.max(fh + 1);
            }
            Record::DirOpened { fh, ino } => {
                self.dirs.insert(*fh, *ino);
                self.next_fh = self.next_fh.max(fh + 1);
            }
            Record::Released { fh } => {
                self.files.remove(fh);
                self.dirs.remove(fh);
            }
            Record::RootGroup { gid } => self.root_group = Some(*gid),
            Record::NextFh { fh } => self.next_fh = self.next_fh.max(*fh),
        }
    }

    /// The records that rebuild this snapshot (what a compacted journal holds).
    pub fn records(&self) -> Vec<Record> {
        let mut out = Vec::with_capacity(self.nodes.len() + self.files.len() + self.dirs.len() + 4);
        if let Some(root) = &self.root {
            out.push(Record::Root { path: root.clone() });
        }
        if let Some(init) = self.init {
            out.push(Record::Init(init));
        }
        for (ino, n) in &self.nodes {
            if *ino != super::ROOT_INO {
                out.push(Record::Node { ino: *ino, path: n.path.clone(), lookups: n.lookups });
            }
        }
        for (fh, f) in &self.files {
            out.push(Record::FileOpened { fh: *fh, ino: f.ino, flags: f.flags });
        }
        for (fh, ino) in &self.dirs {
            out.push(Record::DirOpened { fh: *fh, ino: *ino });
        }
        if let Some(gid) = self.root_group {
            out.push(Record::RootGroup { gid });
        }
        out.push(Record::NextFh { fh: self.next_fh });
        out
    }
}

/// FNV-1a: catches a torn or overwritten record (not an adversary: the state directory is root's).
fn checksum(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Appends one framed record: `len u32 | checksum u32 | tag u8 | fields`, `len` counting tag and fields.
pub fn encode(r: &Record, out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(32);
    let u64s = |body: &mut Vec<u8>, vs: &[u64]| vs.iter().for_each(|v| body.extend_from_slice(&v.to_le_bytes()));
    match r {
        Record::Root { path } => {
            body.push(tag::ROOT);
            put_str(&mut body, path);
        }
        Record::Init(i) => {
            body.push(tag::INIT);
            for v in [i.major, i.minor, i.max_readahead, i.max_write, i.time_gran] {
                body.extend_from_slice(&v.to_le_bytes());
            }
            body.extend_from_slice(&i.flags.to_le_bytes());
            for v in [i.max_background, i.congestion_threshold, i.max_pages] {
                body.extend_from_slice(&v.to_le_bytes());
            }
        }
        Record::Lookup { ino, path } => {
            body.push(tag::LOOKUP);
            u64s(&mut body, &[*ino]);
            put_str(&mut body, path);
        }
        Record::Forget { ino, n } => {
            body.push(tag::FORGET);
            u64s(&mut body, &[*ino, *n]);
        }
        Record::Renamed { from, to } => {
            body.push(tag::RENAMED);
            put_str(&mut body, from);
            put_str(&mut body, to);
        }
        Record::FileOpened { fh, ino, flags } => {
            body.push(tag::FILE_OPENED);
            u64s(&mut body, &[*fh, *ino]);
            body.extend_from_slice(&flags.to_le_bytes());
        }
        Record::DirOpened { fh, ino } => {
            body.push(tag::DIR_OPENED);
            u64s(&mut body, &[*fh, *ino]);
        }
        Record::Released { fh } => {
            body.push(tag::RELEASED);
            u64s(&mut body, &[*fh]);
        }
        Record::RootGroup { gid } => {
            body.push(tag::ROOT_GROUP);
            body.extend_from_slice(&gid.to_le_bytes());
        }
        Record::Node { ino, path, lookups } => {
            body.push(tag::NODE);
            u64s(&mut body, &[*ino, *lookups]);
            put_str(&mut body, path);
        }
        Record::NextFh { fh } => {
            body.push(tag::NEXT_FH);
            u64s(&mut body, &[*fh]);
        }
    }
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(&body).to_le_bytes());
    out.extend_from_slice(&body);
}

/// A bounded reader over one record's fields; `None` when they run out.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    }
    fn str(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

fn decode_body(body: &[u8]) -> Option<Record> {
    let (&t, rest) = body.split_first()?;
    let mut f = Fields(rest);
    let r = match t {
        tag::ROOT => Record::Root { path: f.str()? },
        tag::INIT => {
            let (major, minor, max_readahead, max_write, time_gran) =
                (f.u32()?, f.u32()?, f.u32()?, f.u32()?, f.u32()?);
            let flags = f.u64()?;
            let (max_background, congestion_threshold, max_pages) = (f.u16()?, f.u16()?, f.u16()?);
            Record::Init(InitOut {
                major,
                minor,
                max_readahead,
                flags,
                max_background,
                congestion_threshold,
                max_write,
                time_gran,
                max_pages,
            })
        }
        tag::LOOKUP => Record::Lookup { ino: f.u64()?, path: f.str()? },
        tag::FORGET => Record::Forget { ino: f.u64()?, n: f.u64()? },
        tag::RENAMED => Record::Renamed { from: f.str()?, to: f.str()? },
        tag::FILE_OPENED => Record::FileOpened { fh: f.u64()?, ino: f.u64()?, flags: f.u32()? as i32 },
        tag::DIR_OPENED => Record::DirOpened { fh: f.u64()?, ino: f.u64()? },
        tag::RELEASED => Record::Released { fh: f.u64()? },
        tag::ROOT_GROUP => Record::RootGroup { gid: f.u32()? },
        tag::NODE => {
            let (ino, lookups) = (f.u64()?, f.u64()?);
            Record::Node { ino, lookups, path: f.str()? }
        }
        tag::NEXT_FH => Record::NextFh { fh: f.u64()? },
        _ => return None,
    };
    f.0.is_empty().then_some(r)
}

/// Decodes every whole record of `bytes`; returns them and how many bytes at the end were ignored (a record
/// torn by a crash, or anything after the first damaged record).
pub fn decode_all(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 8 {
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let sum = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let Some(body) = bytes.get(at + 8..at + 8 + len) else { break };
        if checksum(body) != sum {
            break;
        }
        let Some(r) = decode_body(body) else { break };
        out.push(r);
        at += 8 + len;
    }
    (out, bytes.len() - at)
}

/// Replays records into a snapshot.
pub fn replay(records: &[Record]) -> Snapshot {
    let mut s = Snapshot::default();
    for r in records {
        s.apply(r);
    }
    s
}

/// The open journal of a live mount: the file appended to, and the snapshot it describes (for compaction).
pub struct Journal {
    path: PathBuf,
    file: File,
    written: u64,
    snapshot: Snapshot,
    /// After [`Journal::close`] (a graceful handover), nothing is written any more: the successor owns the file.
    closed: bool,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> JournalError + 'a {
    move |source| JournalError::Io { op, path: path.to_path_buf(), source }
}

impl Journal {
    /// Starts the journal of `snapshot` in `dir` (created if missing), replacing any earlier one.
    pub fn create(dir: &Path, snapshot: Snapshot) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let path = dir.join(JOURNAL_FILE);
        let mut j = Journal {
            file: File::create(dir.join(format!("{JOURNAL_FILE}.new"))).map_err(io_err("creating", dir))?,
            path,
            written: 0,
            snapshot,
            closed: false,
        };
        j.compact()?;
        Ok(j)
    }

    /// Reads and replays the journal in `dir`; returns the snapshot and how many torn bytes were ignored.
    pub fn load(dir: &Path) -> Result<(Snapshot, usize), JournalError> {
        let path = dir.join(JOURNAL_FILE);
        let mut bytes = Vec::new();
        File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io_err("reading", &path))?;
        let (records, torn) = decode_all(&bytes);
        if !matches!(records.first(), Some(Record::Root { .. })) {
            return Err(JournalError::NoRoot(path));
        }
        Ok((replay(&records), torn))
    }

    /// The state the journal describes now.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Appends one record (one write(2)); compacts when the file has grown past [`COMPACT_BYTES`].
    pub fn append(&mut self, r: Record) -> Result<(), JournalError> {
        if self.closed {
            return Ok(());
        }
        self.snapshot.apply(&r);
        let mut buf = Vec::with_capacity(64);
        encode(&r, &mut buf);
        self.file.write_all(&buf).map_err(io_err("appending to", &self.path))?;
        self.written += buf.len() as u64;
        if self.written > COMPACT_BYTES {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the journal from the snapshot: a temporary file, fsync, rename over the old one.
    pub fn compact(&mut self) -> Result<(), JournalError> {
        let tmp = self.path.with_extension("new");
        let mut buf = Vec::new();
        for r in self.snapshot.records() {
            encode(&r, &mut buf);
        }
        let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        f.write_all(&buf).and_then(|_| f.sync_all()).map_err(io_err("writing", &tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io_err("renaming", &self.path))?;
        self.file = f;
        self.written = buf.len() as u64;
        Ok(())
    }

    /// A graceful handover: the journal is synced to disk and nothing more is written to it.
    pub fn close(&mut self) -> Result<(), JournalError> {
        self.file.sync_all().map_err(io_err("syncing", &self.path))?;
        self.closed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init() -> InitOut {
        InitOut {
            major: 7,
            minor: 40,
            max_readahead: 1 << 20,
            flags: 0x1_0000_3021,
            max_background: 64,
            congestion_threshold: 48,
            max_write: 1 << 20,
            time_gran: 1,
            max_pages: 256,
        }
    }

    fn history() -> Vec<Record> {
        vec![
            Record::Root { path: "vols/a".into() },
            Record::Init(init()),
            Record::Lookup { ino: 10, path: "vols/a/d".into() },
            Record::Lookup { ino: 11, path: "vols/a/d/f".into() },
            Record::Lookup { ino: 11, path: "vols/a/d/f".into() },
            Record::Lookup { ino: 12, path: "vols/a/g".into() },
            Record::FileOpened { fh: 1, ino: 11, flags: 2 },
            Record::DirOpened { fh: 2, ino: 10 },
            Record::Forget { ino: 12, n: 1 },
            Record::Renamed { from: "vols/a/d".into(), to: "vols/a/e".into() },
            Record::Released { fh: 2 },
            Record::RootGroup { gid: 4321 },
            Record::Forget { ino: 11, n: 1 },
        ]
    }

    #[test]
    fn every_record_round_trips() {
        let mut all = history();
        all.push(Record::Node { ino: 5, path: "p".into(), lookups: 3 });
        all.push(Record::NextFh { fh: 99 });
        let mut bytes = Vec::new();
        for r in &all {
            encode(r, &mut bytes);
        }
        assert_eq!(decode_all(&bytes), (all, 0));
    }

    #[test]
    fn replay_follows_lookups_forgets_renames_and_handles() {
        let s = replay(&history());
        assert_eq!(s.root.as_deref(), Some("vols/a"));
        assert_eq!(s.init, Some(init()));
        assert_eq!(s.nodes[&1].path, "vols/a");
        assert_eq!(s.nodes[&10], NodeState { path: "vols/a/e".into(), lookups: 1 });
        assert_eq!(s.nodes[&11], NodeState { path: "vols/a/e/f".into(), lookups: 1 });
        assert!(!s.nodes.contains_key(&12));
        assert_eq!(s.files.get(&1), Some(&FileState { ino: 11, flags: 2 }));
        assert!(s.dirs.is_empty());
        assert_eq!((s.root_group, s.next_fh), (Some(4321), 3));
        // The compacted form rebuilds the same snapshot.
        assert_eq!(replay(&s.records()), s);
    }

    #[test]
    fn a_torn_or_damaged_tail_is_ignored() {
        let mut bytes = Vec::new();
        for r in history() {
            encode(&r, &mut bytes);
        }
        let whole = bytes.len();
        let mut last = Vec::new();
        encode(&Record::Lookup { ino: 50, path: "vols/a/torn".into() }, &mut last);
        for cut in 1..last.len() {
            let mut b = bytes.clone();
            b.extend_from_slice(&last[..cut]);
            let (records, torn) = decode_all(&b);
            assert_eq!((records.len(), torn), (history().len(), cut), "cut at {cut}");
        }
        // A flipped byte in the last record: that record and nothing after it.
        let mut b = bytes.clone();
        b.extend_from_slice(&last);
        let n = b.len();
        b[n - 2] ^= 0xff;
        assert_eq!(decode_all(&b), (history(), last.len()));
        // Garbage (a huge length) is not read past the end.
        let mut b = bytes[..whole].to_vec();
        b.extend_from_slice(&[0xff; 12]);
        assert_eq!(decode_all(&b).1, 12);
        assert_eq!(decode_all(&[]), (vec![], 0));
    }

    #[test]
    fn journal_files_append_compact_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), replay(&history()[..2])).unwrap();
        for r in history().into_iter().skip(2) {
            j.append(r).unwrap();
        }
        let (loaded, torn) = Journal::load(dir.path()).unwrap();
        assert_eq!((&loaded, torn), (j.snapshot(), 0));
        // A crash mid-append: the tail is ignored on load.
        let mut f = std::fs::OpenOptions::new().append(true).open(dir.path().join(JOURNAL_FILE)).unwrap();
        f.write_all(&[40, 0, 0, 0, 1, 2]).unwrap();
        assert_eq!(Journal::load(dir.path()).unwrap(), (j.snapshot().clone(), 6));
        // Compaction keeps the state and shrinks the file.
        let before = std::fs::metadata(dir.path().join(JOURNAL_FILE)).unwrap().len();
        j.compact().unwrap();
        assert!(std::fs::metadata(dir.path().join(JOURNAL_FILE)).unwrap().len() < before);
        assert_eq!(Journal::load(dir.path()).unwrap().0, *j.snapshot());
        // After close, nothing more is written.
        j.close().unwrap();
        j.append(Record::Released { fh: 1 }).unwrap();
        assert!(Journal::load(dir.path()).unwrap().0.files.contains_key(&1));
        // A file without the root record is refused.
        std::fs::write(dir.path().join(JOURNAL_FILE), b"").unwrap();
        assert!(matches!(Journal::load(dir.path()), Err(JournalError::NoRoot(_))));
    }
}
