//! The plugin's side of the keeper protocol: one short connection per request. Blocking (call from
//! `spawn_blocking` in async code).

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::channel::{Channel, ChannelError};
use super::codec::Message;

/// Why a keeper request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("keeper at {socket}: {source}")]
    Channel {
        socket: PathBuf,
        #[source]
        source: ChannelError,
    },
    #[error("keeper at {socket} refused: {reason}")]
    Refused { socket: PathBuf, reason: String },
    #[error("keeper at {socket} answered {answer:?} (protocol error)")]
    Unexpected { socket: PathBuf, answer: Option<Message> },
    #[error("starting a keeper at {socket}: {source}")]
    Spawn {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the keeper started at {0} did not answer in time")]
    SpawnTimeout(PathBuf),
}

/// A mount the keeper holds.
pub struct HeldMount {
    pub key: String,
    pub record: Vec<u8>,
    pub device: OwnedFd,
}

impl std::fmt::Debug for HeldMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldMount").field("key", &self.key).field("record_len", &self.record.len()).finish()
    }
}

/// The keeper's answer to a ping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeeperStatus {
    pub mounts: u32,
    pub pid: u32,
}

fn open(socket: &Path) -> Result<Channel, ClientError> {
    Channel::connect(socket).map_err(|source| ClientError::Channel { socket: socket.to_path_buf(), source })
}

/// Sends `request` and returns the answer.
fn ask(socket: &Path, request: &Message, fd: Option<BorrowedFd<'_>>) -> Result<Message, ClientError> {
    let channel_error = |source| ClientError::Channel { socket: socket.to_path_buf(), source };
    let mut channel = open(socket)?;
    channel.send(request, fd).map_err(channel_error)?;
    match channel.recv().map_err(channel_error)? {
        Some((Message::Failed { reason }, _)) => Err(ClientError::Refused { socket: socket.to_path_buf(), reason }),
        Some((answer, _)) => Ok(answer),
        None => Err(ClientError::Unexpected { socket: socket.to_path_buf(), answer: None }),
    }
}

fn expect_done(socket: &Path, answer: Message) -> Result<(), ClientError> {
    match answer {
        Message::Done => Ok(()),
        other => Err(ClientError::Unexpected { socket: socket.to_path_buf(), answer: Some(other) }),
    }
}

/// Whether a keeper answers at `socket`, and what it holds.
pub fn ping(socket: &Path) -> Result<KeeperStatus, ClientError> {
    match ask(socket, &Message::Ping, None)? {
        Message::Pong { mounts, pid } => Ok(KeeperStatus { mounts, pid }),
        other => Err(ClientError::Unexpected { socket: socket.to_path_buf(), answer: Some(other) }),
    }
}

/// Has the keeper hold `device` and `record` under `key` (replacing what it held there).
pub fn register(socket: &Path, key: &str, record: Vec<u8>, device: BorrowedFd<'_>) -> Result<(), ClientError> {
    let answer = ask(socket, &Message::Register { key: key.to_string(), record }, Some(device))?;
    expect_done(socket, answer)
}

/// Has the keeper close what it holds under `key` (nothing held is fine).
pub fn forget(socket: &Path, key: &str) -> Result<(), ClientError> {
    let answer = ask(socket, &Message::Forget { key: key.to_string() }, None)?;
    expect_done(socket, answer)
}

/// Every mount the keeper holds (it keeps holding them).
pub fn fetch(socket: &Path) -> Result<Vec<HeldMount>, ClientError> {
    let channel_error = |source| ClientError::Channel { socket: socket.to_path_buf(), source };
    let mut channel = open(socket)?;
    channel.send(&Message::Fetch, None).map_err(channel_error)?;
    let mut held = Vec::new();
    loop {
        match channel.recv().map_err(channel_error)? {
            Some((Message::Entry { key, record }, Some(device))) => held.push(HeldMount { key, record, device }),
            Some((Message::End { count }, _)) if count as usize == held.len() => return Ok(held),
            Some((Message::Failed { reason }, _)) => {
                return Err(ClientError::Refused { socket: socket.to_path_buf(), reason })
            }
            other => {
                return Err(ClientError::Unexpected { socket: socket.to_path_buf(), answer: other.map(|(m, _)| m) })
            }
        }
    }
}

/// How long a freshly started keeper has to answer.
const SPAWN_WAIT: Duration = Duration::from_secs(10);

/// Makes sure a keeper answers at `socket`: when none does, starts `exe keeper --socket <socket>
/// --idle-exit-secs <idle>` in its own process group (a signal to the plugin's group, a SIGKILL of the
/// plugin, do not reach it), its output appended to `log`. Returns the keeper's status.
pub fn ensure_running(socket: &Path, exe: &Path, idle: Duration, log: &Path) -> Result<KeeperStatus, ClientError> {
    if let Ok(status) = ping(socket) {
        return Ok(status);
    }
    let spawn_error = |source| ClientError::Spawn { socket: socket.to_path_buf(), source };
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(spawn_error)?;
    }
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(spawn_error)?;
    let err = out.try_clone().map_err(spawn_error)?;
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(exe)
        .arg("keeper")
        .arg("--socket")
        .arg(socket)
        .arg("--idle-exit-secs")
        .arg(idle.as_secs().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(spawn_error)?;
    tracing::info!(socket = %socket.display(), pid = child.id(), "started a keeper");
    let deadline = Instant::now() + SPAWN_WAIT;
    loop {
        if let Ok(status) = ping(socket) {
            // Reaped by a thread so it never lingers as a zombie of this process.
            std::thread::spawn(move || child.wait());
            return Ok(status);
        }
        if let Ok(Some(exit)) = child.try_wait() {
            // Another plugin's keeper may have won the race for the socket.
            if let Ok(status) = ping(socket) {
                return Ok(status);
            }
            return Err(spawn_error(std::io::Error::other(format!("the keeper exited at once ({exit})"))));
        }
        if Instant::now() >= deadline {
            return Err(ClientError::SpawnTimeout(socket.to_path_buf()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
