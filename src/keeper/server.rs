//! The keeper process: holds a duplicate of every live mount's /dev/fuse descriptor, and the plugin's record
//! of that mount, in memory only. While it holds a descriptor the kernel keeps the FUSE connection (and so
//! the pods' mounts) alive whatever happens to the plugin; a successor fetches them back and serves them.
//!
//! Deliberately small: it never reads /dev/fuse, never speaks SMB, never writes a record to disk, so it has
//! no reason to change (and restart) when the plugin does. A blocking thread per connection is plenty for a
//! handful of short exchanges per volume lifetime.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::channel::{Channel, ChannelError};
use super::codec::Message;

/// How the keeper runs.
#[derive(Clone, Debug)]
pub struct KeeperOptions {
    /// The unix socket it listens on (its directory is made 0700, the socket 0600).
    pub socket: PathBuf,
    /// Exit after this long with no mount held and no message received (`None`: never). A keeper started by
    /// a plugin outside Kubernetes uses it so that it does not outlive its use.
    pub idle_exit: Option<Duration>,
}

/// Why the keeper could not run.
#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another keeper already answers on {0}")]
    InUse(PathBuf),
}

/// One held mount.
struct Held {
    record: Vec<u8>,
    device: OwnedFd,
}

/// The keeper's whole state.
#[derive(Default)]
struct Book {
    mounts: Mutex<BTreeMap<String, Held>>,
    connections: AtomicUsize,
    last_message: Mutex<Option<Instant>>,
}

/// How often the accept loop looks at `stop` and the idle clock.
const POLL: Duration = Duration::from_millis(100);

/// Serves the keeper protocol on `options.socket` until `stop` is set or the idle bound passes.
/// Blocking.
pub fn run(options: &KeeperOptions, stop: &AtomicBool) -> Result<(), KeeperError> {
    let listener = bind(&options.socket)?;
    let book = Arc::new(Book::default());
    *book.last_message.lock().unwrap() = Some(Instant::now());
    tracing::info!(socket = %options.socket.display(), pid = std::process::id(), "keeper listening");
    let result = loop {
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        if let Some(idle) = options.idle_exit {
            if is_idle(&book, idle) {
                tracing::info!(idle_secs = idle.as_secs(), "keeper idle with no mounts: exiting");
                break Ok(());
            }
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let book = book.clone();
                book.connections.fetch_add(1, Ordering::SeqCst);
                let spawned = std::thread::Builder::new().name("keeper-conn".into()).spawn(move || {
                    if let Err(e) = stream
                        .set_nonblocking(false)
                        .map_err(|source| ChannelError::Io { op: "making the connection blocking", source })
                    {
                        tracing::warn!(error = %e, "keeper connection");
                    } else if let Err(e) = Channel::new(stream).and_then(|c| serve_connection(c, &book)) {
                        tracing::warn!(error = %e, "keeper connection ended with an error");
                    }
                    book.connections.fetch_sub(1, Ordering::SeqCst);
                });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "keeper: could not start a connection thread");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) => {
                tracing::warn!(error = %e, "keeper: accept failed");
                std::thread::sleep(POLL);
            }
        }
    };
    let _ = std::fs::remove_file(&options.socket);
    result
}

fn is_idle(book: &Book, idle: Duration) -> bool {
    let quiet = book.last_message.lock().unwrap().is_none_or(|t| t.elapsed() >= idle);
    quiet && book.connections.load(Ordering::SeqCst) == 0 && book.mounts.lock().unwrap().is_empty()
}

/// Binds `path` (0600) in a 0700 directory, replacing a stale socket but never a keeper that answers.
fn bind(path: &Path) -> Result<UnixListener, KeeperError> {
    let io = |op, source| KeeperError::Io { op, path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io("restricting the directory of", e))?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if super::client::ping(path).is_ok() {
            return Err(KeeperError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(|e| io("removing the stale socket", e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| io("binding", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| io("restricting", e))?;
    listener.set_nonblocking(true).map_err(|e| io("making non-blocking", e))?;
    Ok(listener)
}

fn serve_connection(mut channel: Channel, book: &Book) -> Result<(), ChannelError> {
    channel.require_root_peer()?;
    while let Some((message, device)) = channel.recv()? {
        *book.last_message.lock().unwrap() = Some(Instant::now());
        match (message, device) {
            (Message::Register { key, record }, Some(device)) => {
                let replaced = book.mounts.lock().unwrap().insert(key.clone(), Held { record, device }).is_some();
                tracing::info!(key, replaced, "keeper: holding a mount");
                channel.send(&Message::Done, None)?;
            }
            (Message::Forget { key }, _) => {
                let held = book.mounts.lock().unwrap().remove(&key).is_some();
                tracing::info!(key, held, "keeper: mount forgotten");
                channel.send(&Message::Done, None)?;
            }
            (Message::Fetch, _) => {
                // Duplicates, so the lock is not held while the peer reads.
                let entries: Vec<(String, Vec<u8>, OwnedFd)> = {
                    let mounts = book.mounts.lock().unwrap();
                    let mut out = Vec::with_capacity(mounts.len());
                    for (key, held) in mounts.iter() {
                        let device = held
                            .device
                            .try_clone()
                            .map_err(|source| ChannelError::Io { op: "duplicating a held descriptor", source })?;
                        out.push((key.clone(), held.record.clone(), device));
                    }
                    out
                };
                let count = entries.len() as u32;
                for (key, record, device) in entries {
                    channel.send(&Message::Entry { key, record }, Some(device.as_fd()))?;
                }
                channel.send(&Message::End { count }, None)?;
            }
            (Message::Ping, _) => {
                let mounts = book.mounts.lock().unwrap().len() as u32;
                channel.send(&Message::Pong { mounts, pid: std::process::id() }, None)?;
            }
            (other, _) => {
                channel.send(&Message::Failed { reason: format!("a keeper does not answer {other:?}") }, None)?;
            }
        }
    }
    Ok(())
}
