//! The open-handle table: file handles (an SMB handle plus the write-behind queue of its inode) and directory
//! handles (a listing taken once and served by offset). Handle numbers are what the kernel passes back with
//! each request on an open file or directory.

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
    /// Shared by every handle of the same inode.
    pub queue: Arc<WriteQueue>,
}

impl OpenFile {
    pub fn file(&self) -> &smb::File {
        self.file.as_ref().expect("present until drop")
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

    /// Registers an open `file` of inode `ino`; returns its handle number.
    pub fn add_file(&self, ino: u64, file: smb::File) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.insert_file(fh, ino, file);
        fh
    }

    /// Handle numbers continue from `next` (or above, if already there): a successor never reuses a number
    /// its predecessor handed out.
    pub fn continue_from(&self, next: u64) {
        self.next_fh.fetch_max(next, Ordering::Relaxed);
    }

    /// Registers an open `file` of inode `ino` under a given handle number (one the kernel already knows).
    pub fn insert_file(&self, fh: u64, ino: u64, file: smb::File) {
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
        let open = OpenFile { file: Some(file), rt: self.rt.clone(), ino, queue };
        self.files.lock().unwrap().insert(fh, Arc::new(open));
    }

    /// Every write-behind queue of an inode with open handles.
    pub fn queues(&self) -> Vec<Arc<WriteQueue>> {
        self.queues.lock().unwrap().values().filter_map(Weak::upgrade).collect()
    }

    /// Takes `fh` out of the table; the SMB handle closes when the last in-flight request lets go of it.
    pub fn remove_file(&self, fh: u64) -> Option<Arc<OpenFile>> {
        self.files.lock().unwrap().remove(&fh)
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
