//! `smb3-csi registrar`: registers the node plugin with the kubelet, in place of the upstream
//! node-driver-registrar sidecar.
//!
//! The kubelet's plugin watcher looks for sockets in `<kubelet-dir>/plugins_registry/`. For each
//! new one it calls `GetInfo` (plugin kind, name, CSI socket, CSI versions), validates and registers
//! the driver (which also writes the driver into the node's CSINode object), then reports the
//! outcome with `NotifyRegistrationStatus`. The registrar:
//!
//! 1. learns the driver name from the node plugin's own CSI socket (`GetPluginInfo`), unless it is
//!    given, waiting for that socket to come up;
//! 2. serves the registration API on `<registration-dir>/<driver>-reg.sock`, answering with the
//!    CSI socket path *as the kubelet sees it on the host* (`--kubelet-registration-path`);
//! 3. exits with an error if the kubelet rejects the plugin (so the container restarts and the
//!    kubelet tries again), and removes its socket when stopped.
//!
//! While it runs it also puts its socket back if something removed it (a kubelet that wiped its
//! plugin directory would otherwise never see the plugin again).

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::csi::identity::{validate_driver_name, DriverNameError};
use crate::csi::proto::identity_client::IdentityClient;
use crate::csi::proto::GetPluginInfoRequest;
use crate::csi::Endpoint;

/// Types, client and server generated from `proto/pluginregistration.proto`
/// (package `pluginregistration`, the kubelet's plugin registration API v1).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("pluginregistration");
}

use proto::registration_server::{Registration, RegistrationServer};
use proto::{InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse};

/// `PluginInfo.type` for a CSI driver (the kubelet's `CSIPlugin` plugin type).
pub const CSI_PLUGIN_TYPE: &str = "CSIPlugin";

/// CSI spec versions the node plugin serves. The kubelet takes the highest and refuses any major
/// version other than 1.
pub const SUPPORTED_CSI_VERSIONS: &[&str] = &["1.0.0"];

/// How the registrar is set up (the CLI flags, typed).
#[derive(Clone, Debug)]
pub struct RegistrarConfig {
    /// The node plugin's CSI socket as this process sees it (`--csi-address`).
    pub csi_endpoint: Endpoint,
    /// The same socket as the kubelet sees it on the host (`--kubelet-registration-path`).
    pub kubelet_registration_path: PathBuf,
    /// The kubelet's `plugins_registry` directory as this process sees it (`--registration-dir`).
    pub registration_dir: PathBuf,
    /// The driver name; `None` asks the CSI socket (GetPluginInfo).
    pub driver_name: Option<String>,
    /// How long to wait for the CSI socket to answer GetPluginInfo.
    pub csi_timeout: Duration,
}

/// Why the registrar stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum RegistrarError {
    #[error("--kubelet-registration-path {path:?} must be an absolute path to the CSI socket on the host")]
    RelativeRegistrationPath { path: PathBuf },
    #[error("driver name: {0}")]
    DriverName(#[from] DriverNameError),
    #[error("asking {endpoint} for the driver name (GetPluginInfo) for {waited:?}: {last_error}")]
    PluginInfo { endpoint: String, waited: Duration, last_error: String },
    #[error("driver name from {endpoint} ({reported:?}) differs from --driver-name {configured:?}")]
    NameMismatch { endpoint: String, reported: String, configured: String },
    #[error("{path}: exists and is not a unix socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("{path}: another process is serving registration on this socket")]
    InUse { path: PathBuf },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("serving the registration API on {path}: {source}")]
    Transport {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the kubelet rejected plugin {driver}: {error}")]
    Rejected { driver: String, error: String },
}

/// The registration socket for `driver` in `registration_dir`: `<driver>-reg.sock`, the name the
/// upstream registrar uses, so switching between the two leaves no stale registration behind.
///
/// ```
/// use smb3_csi::registrar::registration_socket_path;
/// let p = registration_socket_path("/registration".as_ref(), "smb3.csi.dev");
/// assert_eq!(p, std::path::Path::new("/registration/smb3.csi.dev-reg.sock"));
/// ```
pub fn registration_socket_path(registration_dir: &Path, driver: &str) -> PathBuf {
    registration_dir.join(format!("{driver}-reg.sock"))
}

/// What the kubelet said last, as the registrar tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationState {
    /// No verdict yet.
    Pending,
    Registered,
    Rejected(String),
}

/// The `Registration` service: answers `GetInfo` with the plugin's identity and records the
/// kubelet's verdict.
#[derive(Debug)]
pub struct RegistrationService {
    info: PluginInfo,
    state: watch::Sender<RegistrationState>,
}

impl RegistrationService {
    /// A CSI plugin named `driver` whose socket the kubelet reaches at `csi_socket_on_host`.
    pub fn new(driver: &str, csi_socket_on_host: &Path) -> Result<Self, RegistrarError> {
        validate_driver_name(driver)?;
        if !csi_socket_on_host.is_absolute() {
            return Err(RegistrarError::RelativeRegistrationPath { path: csi_socket_on_host.to_path_buf() });
        }
        let info = PluginInfo {
            r#type: CSI_PLUGIN_TYPE.to_string(),
            name: driver.to_string(),
            endpoint: csi_socket_on_host.to_string_lossy().into_owned(),
            supported_versions: SUPPORTED_CSI_VERSIONS.iter().map(|v| v.to_string()).collect(),
        };
        let (state, _) = watch::channel(RegistrationState::Pending);
        Ok(RegistrationService { info, state })
    }

    /// The answer to `GetInfo`.
    pub fn plugin_info(&self) -> &PluginInfo {
        &self.info
    }

    /// Follows the kubelet's verdicts.
    pub fn subscribe(&self) -> watch::Receiver<RegistrationState> {
        self.state.subscribe()
    }
}

#[tonic::async_trait]
impl Registration for Arc<RegistrationService> {
    async fn get_info(&self, _request: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        tracing::info!(driver = %self.info.name, endpoint = %self.info.endpoint, "kubelet asked for plugin info");
        Ok(Response::new(self.info.clone()))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        let state = if status.plugin_registered {
            tracing::info!(driver = %self.info.name, "kubelet registered the plugin");
            RegistrationState::Registered
        } else {
            tracing::error!(driver = %self.info.name, error = %status.error, "kubelet rejected the plugin");
            RegistrationState::Rejected(status.error)
        };
        self.state.send_replace(state);
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

/// Asks the CSI socket for the driver name, retrying until `timeout` (the node plugin may start
/// after the registrar).
pub async fn fetch_driver_name(endpoint: &Endpoint, timeout: Duration) -> Result<String, RegistrarError> {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(10), plugin_name_once(endpoint)).await;
        let last_error = match attempt {
            Ok(Ok(name)) => {
                validate_driver_name(&name)?;
                return Ok(name);
            }
            Ok(Err(e)) => e,
            Err(_) => "no answer within 10s".to_string(),
        };
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(RegistrarError::PluginInfo { endpoint: endpoint.to_string(), waited, last_error });
        }
        tracing::info!(%endpoint, error = %last_error, "CSI socket not ready; retrying");
        tokio::time::sleep(delay.min(timeout.saturating_sub(waited))).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

async fn plugin_name_once(endpoint: &Endpoint) -> Result<String, String> {
    let uri = format!("unix://{}", endpoint.socket_path().display());
    let channel = tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let reply = IdentityClient::new(channel)
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .map_err(|s| format!("GetPluginInfo: {}: {}", s.code(), s.message()))?;
    Ok(reply.into_inner().name)
}

/// Runs the registrar until `shutdown` completes (Ok) or the kubelet rejects the plugin (Err).
pub async fn run(
    config: RegistrarConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RegistrarError> {
    if !config.kubelet_registration_path.is_absolute() {
        return Err(RegistrarError::RelativeRegistrationPath { path: config.kubelet_registration_path });
    }
    let endpoint_text = config.csi_endpoint.to_string();
    let reported = fetch_driver_name(&config.csi_endpoint, config.csi_timeout).await;
    let driver = match (config.driver_name, reported) {
        (Some(configured), Ok(reported)) if configured != reported => {
            return Err(RegistrarError::NameMismatch { endpoint: endpoint_text, reported, configured })
        }
        (_, Ok(reported)) => reported,
        // A configured name lets the registrar start before the plugin answers; the kubelet
        // checks the socket itself when it registers.
        (Some(configured), Err(e)) => {
            tracing::warn!(error = %e, driver = %configured, "could not confirm the driver name; using --driver-name");
            validate_driver_name(&configured)?;
            configured
        }
        (None, Err(e)) => return Err(e),
    };
    let service = Arc::new(RegistrationService::new(&driver, &config.kubelet_registration_path)?);
    let socket = registration_socket_path(&config.registration_dir, &driver);
    serve_registration(service, &socket, shutdown).await
}

/// Serves `service` on `socket` until `shutdown` (Ok) or a rejection by the kubelet (Err). The
/// socket is re-created if it disappears while serving, and removed at the end.
pub async fn serve_registration(
    service: Arc<RegistrationService>,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RegistrarError> {
    let driver = service.plugin_info().name.clone();
    let mut verdicts = service.subscribe();
    let rejected = async move {
        loop {
            if verdicts.changed().await.is_err() {
                // The service (and so the sender) outlives this loop; nothing more will come.
                return std::future::pending::<String>().await;
            }
            if let RegistrationState::Rejected(error) = verdicts.borrow_and_update().clone() {
                return error;
            }
        }
    };
    tokio::pin!(shutdown);
    tokio::pin!(rejected);
    loop {
        let listener = bind_socket(socket).await?;
        tracing::info!(socket = %socket.display(), driver = %driver, "serving plugin registration");
        let stop = Mutex::new(Stop::SocketGone);
        // The kubelet (up to 1.25) sends this socket's path as :authority: see csi::h2fix.
        let result = crate::csi::h2fix::server_builder()
            .add_service(RegistrationServer::new(Arc::clone(&service)))
            .serve_with_incoming_shutdown(crate::csi::h2fix::incoming(listener), async {
                let why = tokio::select! {
                    _ = &mut shutdown => Stop::Shutdown,
                    error = &mut rejected => Stop::Rejected(error),
                    _ = socket_removed(socket.to_path_buf()) => Stop::SocketGone,
                };
                *stop.lock().unwrap_or_else(|p| p.into_inner()) = why;
            })
            .await;
        let why = std::mem::replace(&mut *stop.lock().unwrap_or_else(|p| p.into_inner()), Stop::SocketGone);
        if let Err(source) = result {
            remove_socket(socket);
            return Err(RegistrarError::Transport { path: socket.to_path_buf(), source });
        }
        match why {
            Stop::Shutdown => {
                remove_socket(socket);
                tracing::info!(socket = %socket.display(), "registration socket removed; stopped");
                return Ok(());
            }
            Stop::Rejected(error) => {
                remove_socket(socket);
                return Err(RegistrarError::Rejected { driver, error });
            }
            Stop::SocketGone => {
                tracing::warn!(socket = %socket.display(), "registration socket disappeared; re-creating it")
            }
        }
    }
}

/// Why one round of serving ended.
enum Stop {
    Shutdown,
    Rejected(String),
    SocketGone,
}

/// Resolves when `path` stops being a socket (polled: inotify is not worth a dependency here).
async fn socket_removed(path: PathBuf) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !is_socket(&path) {
            return;
        }
    }
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

async fn bind_socket(path: &Path) -> Result<UnixListener, RegistrarError> {
    let io_error = |action, source| RegistrarError::Io { action, path: path.to_path_buf(), source };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(RegistrarError::InUse { path: path.to_path_buf() });
            }
            tracing::info!(path = %path.display(), "removing stale registration socket");
            std::fs::remove_file(path).map_err(|e| io_error("removing stale socket", e))?;
        }
        Ok(_) => return Err(RegistrarError::NotASocket { path: path.to_path_buf() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("inspecting", e)),
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_error("creating the directory of", e))?;
    }
    UnixListener::bind(path).map_err(|e| io_error("binding", e))
}

fn remove_socket(path: &Path) {
    if is_socket(path) {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "could not remove the registration socket");
        }
    }
}

#[cfg(test)]
mod tests;
