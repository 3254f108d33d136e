//! The registrar against a real CSI Identity server and a test client playing the kubelet.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::proto::registration_client::RegistrationClient;
use super::*;
use crate::csi::{serve, IdentityService, Services};

const DRIVER: &str = "smb3.csi.test";
const HOST_SOCKET: &str = "/var/lib/kubelet/plugins/smb3.csi.test/csi.sock";

/// A CSI Identity server on `dir/csi.sock`, stopped when the returned sender is dropped.
async fn identity_server(dir: &Path, name: &str) -> (Endpoint, oneshot::Sender<()>) {
    let endpoint = Endpoint::parse(dir.join("csi.sock").to_str().unwrap()).unwrap();
    let identity = IdentityService::new(name, false, Arc::new(AtomicBool::new(true))).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let ep = endpoint.clone();
    tokio::spawn(async move {
        serve(&ep, Services::new().with_identity(identity), async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (endpoint, stop)
}

fn config(dir: &Path, csi: Endpoint, driver_name: Option<&str>) -> RegistrarConfig {
    RegistrarConfig {
        csi_endpoint: csi,
        kubelet_registration_path: PathBuf::from(HOST_SOCKET),
        registration_dir: dir.join("plugins_registry"),
        driver_name: driver_name.map(str::to_string),
        csi_timeout: Duration::from_secs(5),
    }
}

async fn wait_for_socket(path: &Path) {
    for _ in 0..100 {
        if is_socket(path) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never appeared", path.display());
}

async fn kubelet(path: &Path) -> RegistrationClient<tonic::transport::Channel> {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("unix://{}", path.display())).unwrap().connect().await.unwrap();
    RegistrationClient::new(channel)
}

#[test]
fn plugin_info_is_what_the_kubelet_expects() {
    let service = RegistrationService::new(DRIVER, Path::new(HOST_SOCKET)).unwrap();
    let info = service.plugin_info();
    assert_eq!(info.r#type, "CSIPlugin");
    assert_eq!(info.name, DRIVER);
    assert_eq!(info.endpoint, HOST_SOCKET);
    assert_eq!(info.supported_versions, vec!["1.0.0".to_string()]);
}

#[test]
fn bad_names_and_relative_paths_are_refused() {
    let err = RegistrationService::new(DRIVER, Path::new("csi.sock")).unwrap_err();
    assert!(matches!(err, RegistrarError::RelativeRegistrationPath { .. }), "{err}");
    assert!(err.to_string().contains("absolute"), "{err}");
    let err = RegistrationService::new("-bad-", Path::new(HOST_SOCKET)).unwrap_err();
    assert!(matches!(err, RegistrarError::DriverName(_)), "{err}");
}

#[test]
fn socket_name_matches_the_upstream_registrar() {
    assert_eq!(
        registration_socket_path(Path::new("/var/lib/kubelet/plugins_registry"), DRIVER),
        Path::new("/var/lib/kubelet/plugins_registry/smb3.csi.test-reg.sock")
    );
}

#[tokio::test]
async fn registers_with_the_name_from_the_csi_socket_and_exits_on_rejection() {
    let dir = tempfile::tempdir().unwrap();
    let (csi, _csi_stop) = identity_server(dir.path(), DRIVER).await;
    let cfg = config(dir.path(), csi, None);
    let reg_socket = registration_socket_path(&cfg.registration_dir, DRIVER);
    let registrar = tokio::spawn(run(cfg, std::future::pending()));

    wait_for_socket(&reg_socket).await;
    let mut client = kubelet(&reg_socket).await;
    let info = client.get_info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.name, DRIVER);
    assert_eq!(info.r#type, CSI_PLUGIN_TYPE);
    assert_eq!(info.endpoint, HOST_SOCKET);

    client
        .notify_registration_status(RegistrationStatus { plugin_registered: true, error: String::new() })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!registrar.is_finished(), "a successful registration must keep the registrar serving");

    client
        .notify_registration_status(RegistrationStatus {
            plugin_registered: false,
            error: "RegisterPlugin error -- no handler registered for plugin type".into(),
        })
        .await
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), registrar).await.expect("registrar exits").unwrap();
    match result {
        Err(RegistrarError::Rejected { driver, error }) => {
            assert_eq!(driver, DRIVER);
            assert!(error.contains("no handler"), "{error}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(!reg_socket.exists(), "the registration socket is removed on exit");
}

#[tokio::test]
async fn shutdown_removes_the_socket_and_a_removed_socket_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let (csi, _csi_stop) = identity_server(dir.path(), DRIVER).await;
    let cfg = config(dir.path(), csi, Some(DRIVER));
    let reg_socket = registration_socket_path(&cfg.registration_dir, DRIVER);
    let (stop, stopped) = oneshot::channel::<()>();
    let registrar = tokio::spawn(run(cfg, async {
        let _ = stopped.await;
    }));
    wait_for_socket(&reg_socket).await;

    std::fs::remove_file(&reg_socket).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    wait_for_socket(&reg_socket).await;
    let info = kubelet(&reg_socket).await.get_info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.name, DRIVER, "the re-created socket serves the same plugin");

    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), registrar).await.expect("registrar stops").unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(!reg_socket.exists());
}

#[tokio::test]
async fn configured_name_must_match_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let (csi, _csi_stop) = identity_server(dir.path(), "other.csi.test").await;
    let err = run(config(dir.path(), csi, Some(DRIVER)), std::future::pending()).await.unwrap_err();
    assert!(matches!(err, RegistrarError::NameMismatch { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("other.csi.test") && text.contains(DRIVER), "{text}");
}

#[tokio::test]
async fn no_csi_socket_is_a_clear_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let csi = Endpoint::parse(dir.path().join("missing.sock").to_str().unwrap()).unwrap();
    let mut cfg = config(dir.path(), csi, None);
    cfg.csi_timeout = Duration::from_millis(300);
    let err = run(cfg, std::future::pending()).await.unwrap_err();
    assert!(matches!(err, RegistrarError::PluginInfo { .. }), "{err}");
    assert!(err.to_string().contains("missing.sock"), "{err}");
}

#[tokio::test]
async fn waits_for_a_plugin_that_starts_late() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let csi = Endpoint::parse(path.join("csi.sock").to_str().unwrap()).unwrap();
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        identity_server(&path, DRIVER).await
    });
    let name = fetch_driver_name(&csi, Duration::from_secs(10)).await.unwrap();
    assert_eq!(name, DRIVER);
    drop(late.await.unwrap());
}

#[tokio::test]
async fn stale_socket_is_replaced_and_other_files_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(is_socket(&stale));
    drop(bind_socket(&stale).await.unwrap());

    let live = dir.path().join("live.sock");
    let _listener = bind_socket(&live).await.unwrap();
    assert!(matches!(bind_socket(&live).await.unwrap_err(), RegistrarError::InUse { .. }));

    let file = dir.path().join("file.sock");
    std::fs::write(&file, b"not a socket").unwrap();
    assert!(matches!(bind_socket(&file).await.unwrap_err(), RegistrarError::NotASocket { .. }));
    assert_eq!(std::fs::read(&file).unwrap(), b"not a socket");
}
