//! Graceful upgrade between two plugin processes: the old one listens on a handover socket in the state
//! directory; a new one, before serving anything, asks it to hand over ([`request`]). The old one then stops
//! serving CSI, detaches every mount (their descriptors stay in the keeper), answers with the count and
//! exits; the new one adopts them from the keeper like after a crash, minus the requests a crash loses.
//! Same framing and peer check as the keeper protocol.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::channel::{Channel, ChannelError};
use super::codec::Message;

/// How long a new plugin waits for the old one to drain its RPCs and detach its mounts.
pub const HANDOVER_WAIT: Duration = Duration::from_secs(120);

/// Why a handover failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("handover socket {socket}: {source}")]
    Channel {
        socket: PathBuf,
        #[source]
        source: ChannelError,
    },
    #[error("handover socket {socket}: the old plugin answered {answer:?}")]
    Unexpected { socket: PathBuf, answer: Option<Message> },
    #[error("handover socket {socket}: {source}")]
    Io {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Asks the plugin listening at `socket` to hand over. `Ok(None)`: nobody listens (no predecessor, or a
/// stale socket of a dead one); `Ok(Some(n))`: it detached `n` mounts and stopped serving.
pub fn request(socket: &Path) -> Result<Option<u32>, HandoverError> {
    let error = |source| HandoverError::Channel { socket: socket.to_path_buf(), source };
    let mut channel = match Channel::connect(socket) {
        Ok(channel) => channel,
        Err(_) => return Ok(None),
    };
    channel.set_read_timeout(HANDOVER_WAIT).map_err(error)?;
    channel.send(&Message::HandOver, None).map_err(error)?;
    match channel.recv().map_err(error)? {
        Some((Message::HandedOver { mounts }, _)) => Ok(Some(mounts)),
        other => Err(HandoverError::Unexpected { socket: socket.to_path_buf(), answer: other.map(|(m, _)| m) }),
    }
}

/// The old plugin's side: a listener thread that reports the first successor's request.
pub struct HandoverListener {
    asked: Option<oneshot::Receiver<()>>,
    answer: mpsc::SyncSender<u32>,
    answered: mpsc::Receiver<()>,
}

impl HandoverListener {
    /// Listens at `socket` (0600; a stale file there is replaced: call after [`request`]).
    pub fn bind(socket: &Path) -> Result<HandoverListener, HandoverError> {
        let io = |source| HandoverError::Io { socket: socket.to_path_buf(), source };
        match std::fs::remove_file(socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
        let listener = UnixListener::bind(socket).map_err(io)?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let (asked_tx, asked) = oneshot::channel();
        let (answer, answer_rx) = mpsc::sync_channel::<u32>(1);
        let (answered_tx, answered) = mpsc::channel();
        std::thread::Builder::new()
            .name("handover".into())
            .spawn(move || serve(listener, asked_tx, answer_rx, answered_tx))
            .map_err(io)?;
        Ok(HandoverListener { asked: Some(asked), answer, answered })
    }

    /// A future that resolves when a successor asks for the mounts (never, if none does). Once only.
    pub fn asked(&mut self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let rx = self.asked.take();
        async move {
            let asked = match rx {
                Some(rx) => rx.await.is_ok(),
                None => false,
            };
            if !asked {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Tells the waiting successor that `mounts` mounts were detached (when one asked), and waits briefly
    /// for the answer to be written.
    pub fn confirm(self, mounts: u32) {
        if self.answer.try_send(mounts).is_ok() {
            let _ = self.answered.recv_timeout(Duration::from_secs(5));
        }
    }
}

fn serve(listener: UnixListener, asked: oneshot::Sender<()>, answer: mpsc::Receiver<u32>, answered: mpsc::Sender<()>) {
    let mut asked = Some(asked);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let Ok(mut channel) = Channel::new(stream) else { continue };
        if let Err(e) = channel.require_root_peer() {
            tracing::warn!(error = %e, "handover request refused");
            continue;
        }
        match channel.recv() {
            Ok(Some((Message::HandOver, _))) => {
                tracing::info!("a new plugin process asks for the mounts: handing over");
                if let Some(tx) = asked.take() {
                    let _ = tx.send(());
                }
                let mounts = answer.recv_timeout(HANDOVER_WAIT).unwrap_or(0);
                let _ = channel.send(&Message::HandedOver { mounts }, None);
                let _ = answered.send(());
                return;
            }
            Ok(Some((other, _))) => {
                let _ = channel.send(&Message::Failed { reason: format!("a plugin does not answer {other:?}") }, None);
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "handover connection"),
        }
    }
}
