//! The Identity service over a real unix socket, through `csi::serve`, with a
//! tonic client: what the CSI sidecars do.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use smb3_csi::csi::proto::controller_client::ControllerClient;
use smb3_csi::csi::proto::identity_client::IdentityClient;
use smb3_csi::csi::proto::{
    plugin_capability, ControllerGetCapabilitiesRequest, GetPluginCapabilitiesRequest, GetPluginInfoRequest,
    ProbeRequest,
};
use smb3_csi::csi::{serve, Endpoint, IdentityService, ServeError, Services};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

const DRIVER: &str = "smb3.csi.example.com";

fn identity_only(controller: bool) -> Services {
    let ready = Arc::new(AtomicBool::new(true));
    Services::new().with_identity(IdentityService::new(DRIVER, controller, ready).unwrap())
}

/// A running server and the sender that stops it.
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServeError>>,
}

fn start(socket: &Path, services: Services) -> Running {
    let endpoint = Endpoint::parse(&format!("unix://{}", socket.display())).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        serve(&endpoint, services, async {
            let _ = stopped.await;
        })
        .await
    });
    Running { stop, task }
}

async fn connect(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    // The server binds asynchronously: retry briefly until it listens.
    for _ in 0..100 {
        let path = socket.clone();
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        });
        // The URI is required by the builder but unused by the connector.
        let endpoint = tonic::transport::Endpoint::try_from("http://[::1]:50051").unwrap();
        if let Ok(channel) = endpoint.connect_with_connector(connector).await {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("server never listened on {}", socket.display());
}

fn socket_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("plugins").join("csi.sock")
}

#[tokio::test]
async fn identity_rpcs_over_unix_socket_and_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir); // parent dir does not exist yet: serve creates it
    let running = start(&socket, identity_only(true));
    let channel = connect(&socket).await;
    let mut identity = IdentityClient::new(channel.clone());

    let info = identity.get_plugin_info(GetPluginInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.name, DRIVER);
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));

    let probe = identity.probe(ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));

    let caps = identity.get_plugin_capabilities(GetPluginCapabilitiesRequest {}).await.unwrap().into_inner();
    let services: Vec<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(plugin_capability::Type::Service(s)) => Some(s.r#type),
            _ => None,
        })
        .collect();
    assert_eq!(services, vec![plugin_capability::service::Type::ControllerService as i32]);

    // A service that was not added answers UNIMPLEMENTED.
    let mut controller = ControllerClient::new(channel);
    let err = controller.controller_get_capabilities(ControllerGetCapabilitiesRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);

    running.stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), running.task).await.expect("shutdown in time");
    result.unwrap().unwrap();
    assert!(!socket.exists(), "socket removed at shutdown");
}

#[tokio::test]
async fn stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    // A socket file nobody listens on, as left by a crashed run.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());

    let running = start(&socket, identity_only(false));
    let mut identity = IdentityClient::new(connect(&socket).await);
    let caps = identity.get_plugin_capabilities(GetPluginCapabilitiesRequest {}).await.unwrap().into_inner();
    assert!(caps.capabilities.is_empty(), "node-only plugin advertises no controller");

    running.stop.send(()).unwrap();
    running.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn regular_file_at_socket_path_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("csi.sock");
    std::fs::write(&path, b"not a socket").unwrap();

    let endpoint = Endpoint::parse(path.to_str().unwrap()).unwrap();
    let err = serve(&endpoint, identity_only(false), async {}).await.unwrap_err();
    assert!(matches!(err, ServeError::NotASocket { .. }), "{err}");
    assert!(err.to_string().contains("csi.sock"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
}

#[tokio::test]
async fn live_socket_is_not_stolen() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let first = start(&socket, identity_only(false));
    let _ = connect(&socket).await;

    let endpoint = Endpoint::parse(socket.to_str().unwrap()).unwrap();
    let err = serve(&endpoint, identity_only(false), async {}).await.unwrap_err();
    assert!(matches!(err, ServeError::InUse { .. }), "{err}");

    // The first server still answers.
    let mut identity = IdentityClient::new(connect(&socket).await);
    assert_eq!(identity.probe(ProbeRequest {}).await.unwrap().into_inner().ready, Some(true));
    first.stop.send(()).unwrap();
    first.task.await.unwrap().unwrap();
}
