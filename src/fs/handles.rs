//! The open-handle table: file handles (an SMB handle plus the write-behind queue of its inode) and directory
//! handles (a listing taken once and served by offset). Handle numbers are what the kernel passes back with
//! each request on an open file or directory. Several handle numbers may share one SMB handle: a re-open of a
//! file this node already has open, under a lease that still caches reads and handles, is served from the
//! open SMB handle without a round trip (see [`Handles::share`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use smb3::{self as smb, DirEntry};
use tokio::runtime::Handle;

use super::writeback::WriteQueue;
use super::Errno;

/// An open SMB handle. However the last reference goes (release, or an in-flight request finishing later on
/// another thread), the handle is closed on the runtime.
pub(crate) struct OpenFile {
    file: Option<smb::File>,
    rt: Handle,
    pub ino: u64,
    /// The open(2) flags of the open that made this SMB handle (what it may serve: see [`can_share`]).
    pub flags: i32,
    /// Shared by every handle of the same inode.
    pub queue: Arc<WriteQueue>,
}

/// Whether an SMB handle opened with open(2) `existing` flags can serve a new open with `requested` flags: it
/// has every access the new open needs, and the new open asks the server for nothing more (O_TRUNC does).
/// O_APPEND is honoured per write (`SmbFs::write`), so it does not matter here.
pub fn can_share(existing: i32, requested: i32) -> bool {
    use nix::fcntl::OFlag;
    let mode = |f: i32| OFlag::from_bits_truncate(f) & OFlag::O_ACCMODE;
    let reads = |f: i32| mode(f) == OFlag::O_RDONLY || mode(f) == OFlag::O_RDWR;
    let writes = |f: i32| mode(f) == OFlag::O_WRONLY || mode(f) == OFlag::O_RDWR;
    requested & OFlag::O_TRUNC.bits() == 0
        && (!reads(requested) || reads(existing))
        && (!writes(requested) || writes(existing))
}

impl OpenFile {
    pub fn file(&self) -> &smb::File {
        self.file.as_ref().expect("present until drop")
    }

    /// Closes the SMB handle now and waits for the server's answer when `open` is its last reference, so that
    /// what follows a close(2) (another node's `rm`, `mv`, or the `rmdir` of the directory) finds the file
    /// closed on the server; with requests still in flight on it, it closes when the last one lets go.
    pub async fn close(open: Arc<OpenFile>) {
        let Ok(mut open) = Arc::try_unwrap(open) else { return };
        if let Some(f) = open.file.take() {
            let path = f.path().to_string();
            if let Err(e) = f.close().await {
                tracing::warn!(path = %format!("/{path}"), error = %e, "closing SMB handle failed");
            }
        }
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        if let Some(f) = self.file.take() {
            self.rt.spawn(async move {
                let path = f.path().to_string();
                if let Err(e) = f.close().await {
                    tracing::warn!(path = %format!("/{path}"), error = %e, "closing SMB handle failed");
                }
            });
        }
    }
}

/// A directory listing taken when the directory is read from offset 0 and served by offset afterwards, so a
/// listing read in several requests is one consistent snapshot.
#[derive(Default)]
pub(crate) struct DirStream {
    pub entries: Option<Arc<Vec<DirEntry>>>,
}

/// Open files and directories by handle number.
pub(crate) struct Handles {
    rt: Handle,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    /// Write-behind queues by inode, alive while a handle of that inode is open.
    queues: Mutex<HashMap<u64, Weak<WriteQueue>>>,
    dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<DirStream>>>>,
    next_fh: AtomicU64,
}

impl Handles {
    /// `rt` closes the SMB handles that are dropped.
    pub fn new(rt: Handle) -> Handles {
        Handles {
            rt,
            files: Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    pub fn file(&self, fh: u64) -> Result<Arc<OpenFile>, Errno> {
        self.files.lock().unwrap().get(&fh).cloned().ok_or(Errno::EBADF)
    }

    /// Registers an open `file` of inode `ino`, opened with open(2) `flags`; returns its handle number.
    pub fn add_file(&self, ino: u64, file: smb::File, flags: i32) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.insert_file(fh, ino, file, flags);
        fh
    }

    /// A new handle number for an open of `ino` with `flags`, served by an SMB handle of that inode already
    /// open that [`can_share`] it and that `usable` accepts (its lease still caches reads and handles); `None`
    /// when there is none and the open must go to the server.
    pub fn share(&self, ino: u64, flags: i32, usable: impl Fn(&OpenFile) -> bool) -> Option<u64> {
        let mut files = self.files.lock().unwrap();
        let open = files.values().find(|f| f.ino == ino && can_share(f.flags, flags) && usable(f))?.clone();
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        files.insert(fh, open);
        Some(fh)
    }

    /// A new handle number for `open`, an SMB handle taken back from lingering (see `linger`).
    pub fn adopt(&self, open: Arc<OpenFile>) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files.lock().unwrap().insert(fh, open);
        fh
    }

    /// Handle numbers continue from `next` (or above, if already there): a successor never reuses a number
    /// its predecessor handed out.
    pub fn continue_from(&self, next: u64) {
        self.next_fh.fetch_max(next, Ordering::Relaxed);
    }

    /// Registers an open `file` of inode `ino` under a given handle number (one the kernel already knows).
    pub fn insert_file(&self, fh: u64, ino: u64, file: smb::File, flags: i32) {
        let queue = {
            let mut queues = self.queues.lock().unwrap();
            match queues.get(&ino).and_then(|w| w.upgrade()) {
                Some(q) => q,
                None => {
                    if queues.len() > 1024 {
                        queues.retain(|_, w| w.strong_count() > 0);
                    }
                    let q = Arc::new(WriteQueue::default());
                    queues.insert(ino, Arc::downgrade(&q));
                    q
                }
            }
        };
        let open = OpenFile { file: Some(file), rt: self.rt.clone(), ino, flags, queue };
        self.files.lock().unwrap().insert(fh, Arc::new(open));
    }

    /// Every write-behind queue of an inode with open handles.
    pub fn queues(&self) -> Vec<Arc<WriteQueue>> {
        self.queues.lock().unwrap().values().filter_map(Weak::upgrade).collect()
    }

    /// Takes `fh` out of the table, with whether other handle numbers still share its SMB handle. The SMB
    /// handle closes when the last handle number and the last in-flight request let go of it.
    pub fn remove_file(&self, fh: u64) -> Option<(Arc<OpenFile>, bool)> {
        let mut files = self.files.lock().unwrap();
        let open = files.remove(&fh)?;
        let shared = files.values().any(|f| Arc::ptr_eq(f, &open));
        Some((open, shared))
    }

    /// Any open handle of `ino`: after an unlink the name is gone, but the handle still answers.
    pub fn open_handle_of(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.files.lock().unwrap().values().find(|f| f.ino == ino).cloned()
    }

    /// The write-behind queue of an inode with open handles.
    pub fn queue(&self, ino: u64) -> Option<Arc<WriteQueue>> {
        self.queues.lock().unwrap().get(&ino).and_then(|w| w.upgrade())
    }

    /// Drops every file handle (the kernel connection is gone).
    pub fn close_all(&self) {
        drop(self.files.lock().unwrap().drain().collect::<Vec<_>>());
    }

    /// A new directory handle.
    pub fn add_dir(&self) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.insert_dir(fh);
        fh
    }

    /// A directory handle under a given number (one the kernel already knows); its listing is taken again.
    pub fn insert_dir(&self, fh: u64) {
        self.dirs.lock().unwrap().insert(fh, Arc::default());
    }

    pub fn dir(&self, fh: u64) -> Result<Arc<tokio::sync::Mutex<DirStream>>, Errno> {
        self.dirs.lock().unwrap().get(&fh).cloned().ok_or(Errno::EBADF)
    }

    pub fn remove_dir(&self, fh: u64) {
        self.dirs.lock().unwrap().remove(&fh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;

    #[test]
    fn a_handle_serves_opens_that_need_no_more_than_it_has() {
        let (r, w, rw) = (OFlag::O_RDONLY.bits(), OFlag::O_WRONLY.bits(), OFlag::O_RDWR.bits());
        let (append, trunc) = (OFlag::O_APPEND.bits(), OFlag::O_TRUNC.bits());
        assert!(can_share(r, r) && can_share(rw, r) && can_share(rw, w) && can_share(rw, rw));
        assert!(can_share(w, w | append) && can_share(rw | append, r));
        assert!(!can_share(r, w) && !can_share(r, rw) && !can_share(w, r) && !can_share(w, rw));
        // A truncating open must reach the server.
        assert!(!can_share(rw, w | trunc) && !can_share(rw, rw | trunc));
    }
}
