//! Serving CSI services on a unix socket, with one log line per RPC.
//!
//! Kubelet and the CSI sidecars connect over a unix socket named by
//! `CSI_ENDPOINT` (`unix:///csi/csi.sock`). The socket is (re)created at
//! start and removed at shutdown. Every RPC goes through [`Logged`], which
//! records the method, the volume id, the duration and the gRPC code; the
//! request itself is logged at debug level with secrets redacted by the
//! generated `Debug` (see [`super::redact`]). The same wrapper counts RPCs
//! and their latency by method and code in [`crate::metrics`].
//!
//! Each accepted connection goes through `h2fix::AuthorityFix`, so
//! clients that send the socket path as `:authority` (older kubelets, grpcio,
//! grpc-java, csc) are served like the rest.

use std::fmt;
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UnixListener;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use super::h2fix;
use super::proto::controller_server::{Controller, ControllerServer};
use super::proto::identity_server::{Identity, IdentityServer};
use super::proto::node_server::{Node, NodeServer};

/// Where the CSI server listens: a unix socket path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    socket_path: PathBuf,
}

/// Why a CSI endpoint string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("CSI endpoint is empty; expected unix:///path/to/csi.sock")]
    Empty,
    #[error(
        "CSI endpoint {endpoint:?}: scheme {scheme}:// is not supported; \
         the driver only listens on a unix socket (unix:///path/to/csi.sock)"
    )]
    UnsupportedScheme { endpoint: String, scheme: String },
    #[error("CSI endpoint {endpoint:?}: socket path must be absolute, e.g. unix:///csi/csi.sock")]
    NotAbsolute { endpoint: String },
    #[error("CSI endpoint {endpoint:?}: socket path contains a NUL byte")]
    NulByte { endpoint: String },
}

impl Endpoint {
    /// Accepts `unix:///abs/path.sock` or a bare absolute path.
    ///
    /// ```
    /// use smb3_csi::csi::Endpoint;
    /// let ep = Endpoint::parse("unix:///csi/csi.sock").unwrap();
    /// assert_eq!(ep.socket_path(), std::path::Path::new("/csi/csi.sock"));
    /// assert!(Endpoint::parse("tcp://0.0.0.0:10000").is_err());
    /// ```
    pub fn parse(endpoint: &str) -> Result<Self, EndpointError> {
        let trimmed = endpoint.trim();
        if trimmed.is_empty() {
            return Err(EndpointError::Empty);
        }
        let path = match trimmed.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("unix") => rest,
            Some((scheme, _)) => {
                return Err(EndpointError::UnsupportedScheme {
                    endpoint: endpoint.to_string(),
                    scheme: scheme.to_string(),
                })
            }
            None => trimmed,
        };
        if path.contains('\0') {
            return Err(EndpointError::NulByte { endpoint: endpoint.to_string() });
        }
        // `unix://csi.sock` would be a relative path: ambiguous under a
        // container's working directory, so refuse it.
        if !path.starts_with('/') {
            return Err(EndpointError::NotAbsolute { endpoint: endpoint.to_string() });
        }
        Ok(Endpoint { socket_path: PathBuf::from(path) })
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unix://{}", self.socket_path.display())
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("no CSI service to serve: add at least the identity service")]
    NoServices,
    #[error("{path}: exists and is not a unix socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("{path}: another process is listening on this socket")]
    InUse { path: PathBuf },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("serving gRPC on {endpoint}: {source}")]
    Transport {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// The CSI services to serve. Identity is required by the spec on every
/// endpoint; controller and node are added by the roles this process runs.
///
/// ```no_run
/// # use std::sync::{Arc, atomic::AtomicBool};
/// # use smb3_csi::csi::{IdentityService, Services, Endpoint, serve};
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let ready = Arc::new(AtomicBool::new(true));
/// let identity = IdentityService::new("smb3.csi.example.com", false, ready)?;
/// let services = Services::new().with_identity(identity);
/// serve(&Endpoint::parse("unix:///csi/csi.sock")?, services, async {
///     let _ = tokio::signal::ctrl_c().await;
/// })
/// .await?;
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct Services {
    identity: Option<IdentityServer<Logged<dyn Identity>>>,
    controller: Option<ControllerServer<Logged<dyn Controller>>>,
    node: Option<NodeServer<Logged<dyn Node>>>,
}

impl Services {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_identity(mut self, service: impl Identity) -> Self {
        let service: Arc<dyn Identity> = Arc::new(service);
        self.identity = Some(IdentityServer::new(Logged::new(service)));
        self
    }

    pub fn with_controller(mut self, service: impl Controller) -> Self {
        let service: Arc<dyn Controller> = Arc::new(service);
        self.controller = Some(ControllerServer::new(Logged::new(service)));
        self
    }

    pub fn with_node(mut self, service: impl Node) -> Self {
        let service: Arc<dyn Node> = Arc::new(service);
        self.node = Some(NodeServer::new(Logged::new(service)));
        self
    }

    fn is_empty(&self) -> bool {
        self.identity.is_none() && self.controller.is_none() && self.node.is_none()
    }
}

/// Serves `services` on the unix socket `endpoint` until `shutdown`
/// completes, then lets in-flight RPCs finish and removes the socket.
///
/// A stale socket file left by a previous run is replaced; a socket some
/// process still listens on, or a path that is not a socket, is refused.
pub async fn serve(
    endpoint: &Endpoint,
    services: Services,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    if services.is_empty() {
        return Err(ServeError::NoServices);
    }
    let path = endpoint.socket_path();
    let listener = bind_socket(path).await?;
    tracing::info!(%endpoint, "serving CSI");

    let result = h2fix::server_builder()
        .add_optional_service(services.identity)
        .add_optional_service(services.controller)
        .add_optional_service(services.node)
        .serve_with_incoming_shutdown(h2fix::incoming(listener), shutdown)
        .await;

    remove_socket(path);
    tracing::info!(%endpoint, "CSI server stopped");
    result.map_err(|source| ServeError::Transport { endpoint: endpoint.to_string(), source })
}

async fn bind_socket(path: &Path) -> Result<UnixListener, ServeError> {
    let io_error = |action, source| ServeError::Io { action, path: path.to_path_buf(), source };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(ServeError::InUse { path: path.to_path_buf() });
            }
            tracing::info!(path = %path.display(), "removing stale CSI socket");
            std::fs::remove_file(path).map_err(|e| io_error("removing stale socket", e))?;
        }
        Ok(_) => return Err(ServeError::NotASocket { path: path.to_path_buf() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("inspecting", e)),
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_error("creating the directory of", e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| io_error("binding", e))?;
    // Sidecars run as root or in the socket's group; nobody else needs it.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| io_error("setting permissions of", e))?;
    Ok(listener)
}

fn remove_socket(path: &Path) {
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if is_socket {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "could not remove CSI socket at shutdown");
        }
    }
}

/// A CSI request message, as the RPC log sees it (implemented for every RPC
/// input by `build.rs`).
pub trait RpcRequest: fmt::Debug {
    /// The volume the request is about (`volume_id`, or `source_volume_id`
    /// for snapshots), when it names one.
    fn logged_volume_id(&self) -> Option<&str>;
}

/// Wraps a service implementation so every RPC is logged. The service trait
/// impls for it are generated (see `build.rs`); each delegates to
/// [`Logged::call`].
pub struct Logged<S: ?Sized> {
    inner: Arc<S>,
}

impl<S: ?Sized> Logged<S> {
    pub fn new(inner: Arc<S>) -> Self {
        Logged { inner }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Runs `handler` inside a span carrying the method and volume id, then
    /// logs the outcome. Identity RPCs (probes every few seconds) log at
    /// debug level when they succeed.
    pub async fn call<Req, Resp, F, Fut>(
        &self,
        method: &'static str,
        request: Request<Req>,
        handler: F,
    ) -> Result<Response<Resp>, Status>
    where
        Req: RpcRequest,
        F: FnOnce(Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let volume_id = request.get_ref().logged_volume_id().map(str::to_owned);
        let span = tracing::info_span!("csi_rpc", method, volume_id = volume_id.as_deref());
        // `Debug` of request messages redacts secrets (generated in build.rs).
        span.in_scope(|| tracing::debug!(request = ?request.get_ref(), "CSI request"));
        let started = Instant::now();
        let result = handler(request).instrument(span.clone()).await;
        let elapsed = started.elapsed();
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        let code = result.as_ref().map_or_else(|status| status.code(), |_| Code::Ok);
        crate::metrics::record_rpc(method, code, elapsed);
        let _entered = span.enter();
        match &result {
            Ok(_) if method.starts_with("/csi.v1.Identity/") => {
                tracing::debug!(code = ?Code::Ok, duration_ms, "CSI RPC done")
            }
            Ok(_) => tracing::info!(code = ?Code::Ok, duration_ms, "CSI RPC done"),
            Err(status) => {
                // `error`, not `message`: JSON logs put both in one object, where a
                // second `message` key would hide the event's own message.
                tracing::warn!(code = ?status.code(), error = status.message(), duration_ms, "CSI RPC failed")
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::proto::{CreateVolumeRequest, CreateVolumeResponse, NodeStageVolumeRequest, Volume};
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[test]
    fn endpoint_forms() {
        let unix = Endpoint::parse("unix:///csi/csi.sock").unwrap();
        assert_eq!(unix.socket_path(), Path::new("/csi/csi.sock"));
        assert_eq!(unix.to_string(), "unix:///csi/csi.sock");
        assert_eq!(Endpoint::parse("UNIX:///a/b.sock").unwrap().socket_path(), Path::new("/a/b.sock"));
        assert_eq!(
            Endpoint::parse("/var/lib/kubelet/plugins/x/csi.sock").unwrap().to_string(),
            "unix:///var/lib/kubelet/plugins/x/csi.sock"
        );
    }

    #[test]
    fn endpoint_rejections_name_the_problem() {
        let tcp = Endpoint::parse("tcp://127.0.0.1:10000").unwrap_err();
        assert!(matches!(tcp, EndpointError::UnsupportedScheme { ref scheme, .. } if scheme == "tcp"));
        assert!(tcp.to_string().contains("unix:///"), "{tcp}");
        assert_eq!(Endpoint::parse("  "), Err(EndpointError::Empty));
        assert!(matches!(Endpoint::parse("unix://csi.sock"), Err(EndpointError::NotAbsolute { .. })));
        assert!(matches!(Endpoint::parse("csi.sock"), Err(EndpointError::NotAbsolute { .. })));
        assert!(matches!(Endpoint::parse("unix:///a\0b"), Err(EndpointError::NulByte { .. })));
    }

    /// Collects everything the fmt subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    struct FakeController;

    #[tonic::async_trait]
    impl Controller for FakeController {
        async fn create_volume(
            &self,
            request: Request<CreateVolumeRequest>,
        ) -> Result<Response<CreateVolumeResponse>, Status> {
            tracing::info!("inside handler");
            Ok(Response::new(CreateVolumeResponse {
                volume: Some(Volume { volume_id: format!("id-of-{}", request.get_ref().name), ..Default::default() }),
            }))
        }
    }

    /// Answers UNIMPLEMENTED for everything (the generated default methods).
    struct FakeNode;

    #[tonic::async_trait]
    impl Node for FakeNode {}

    const PASSWORD: &str = "hunter2-do-not-log";

    fn secrets() -> HashMap<String, String> {
        HashMap::from([("username".into(), "bob".into()), ("password".into(), PASSWORD.into())])
    }

    #[tokio::test(flavor = "current_thread")]
    async fn rpc_log_has_method_volume_code_and_no_secret() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let node = Logged::new(Arc::new(FakeNode));
        let stage = NodeStageVolumeRequest {
            volume_id: "vol-42".into(),
            staging_target_path: "/staging".into(),
            secrets: secrets(),
            ..Default::default()
        };
        let status = node.node_stage_volume(Request::new(stage)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented);

        let controller = Logged::new(Arc::new(FakeController));
        let create = CreateVolumeRequest { name: "pvc-7".into(), secrets: secrets(), ..Default::default() };
        let response = controller.create_volume(Request::new(create)).await.unwrap();
        assert_eq!(response.get_ref().volume.as_ref().unwrap().volume_id, "id-of-pvc-7");

        let logs = captured.text();
        assert!(!logs.contains(PASSWORD), "{logs}");
        assert!(!logs.contains("bob"), "{logs}");
        assert!(logs.contains("/csi.v1.Node/NodeStageVolume"), "{logs}");
        assert!(logs.contains("volume_id=\"vol-42\""), "{logs}");
        assert!(logs.contains("code=Unimplemented"), "{logs}");
        assert!(logs.contains("/csi.v1.Controller/CreateVolume"), "{logs}");
        assert!(logs.contains("code=Ok"), "{logs}");
        assert!(logs.contains("duration_ms="), "{logs}");
        // The debug line shows the request, redacted.
        assert!(logs.contains("\"password\": <redacted>"), "{logs}");
        // Handler logs carry the RPC span.
        let handler_line = logs.lines().find(|l| l.contains("inside handler")).expect("handler log line");
        assert!(handler_line.contains("/csi.v1.Controller/CreateVolume"), "{handler_line}");
    }

    #[tokio::test]
    async fn serving_nothing_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = Endpoint::parse(dir.path().join("csi.sock").to_str().unwrap()).unwrap();
        let err = serve(&endpoint, Services::new(), async {}).await.unwrap_err();
        assert!(matches!(err, ServeError::NoServices));
    }
}
