//! Test helpers that play the Kubernetes side of CSI over the real unix
//! socket: a plugin started in-process with `csi::serve`, and a client that
//! builds CreateVolume/DeleteVolume exactly as external-provisioner does.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use smb3::{ClientOptions, SessionPool};
use smb3_csi::csi::proto::controller_client::ControllerClient;
use smb3_csi::csi::proto::identity_client::IdentityClient;
use smb3_csi::csi::proto::{
    volume_capability, volume_content_source, CapacityRange, CreateVolumeRequest, DeleteVolumeRequest, Volume,
    VolumeCapability, VolumeContentSource,
};
use smb3_csi::csi::{serve, ControllerService, Endpoint, IdentityService, ServeError, Services};
use smb3_testkit::Samba;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};

pub const DRIVER: &str = "smb3.csi.dev";

/// A plugin serving Identity + Controller on a temporary socket.
pub struct Plugin {
    pub socket: PathBuf,
    pub controller: ControllerClient<Channel>,
    pub identity: IdentityClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
    _dir: tempfile::TempDir,
}

impl Plugin {
    pub async fn start() -> Plugin {
        Plugin::start_with(ClientOptions { timeout: Duration::from_secs(20), ..Default::default() }).await
    }

    /// With the session pool's client options (e.g. the krb5.conf of a test DC).
    pub async fn start_with(options: ClientOptions) -> Plugin {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("csi.sock");
        let endpoint = Endpoint::parse(&format!("unix://{}", socket.display())).unwrap();
        let pool = SessionPool::new(options, Duration::from_secs(60));
        pool.spawn_evictor(Duration::from_secs(10));
        let services = Services::new()
            .with_identity(IdentityService::new(DRIVER, true, Arc::new(AtomicBool::new(true))).unwrap())
            .with_controller(ControllerService::new(pool));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(&endpoint, services, async {
                let _ = stopped.await;
            })
            .await
        });
        let channel = connect(&socket).await;
        Plugin {
            socket,
            controller: ControllerClient::new(channel.clone()),
            identity: IdentityClient::new(channel),
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    /// Stops the server (graceful) and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

pub async fn connect(socket: &Path) -> Channel {
    for _ in 0..200 {
        let path = socket.to_path_buf();
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        });
        let endpoint = tonic::transport::Endpoint::try_from("http://[::1]:50051").unwrap();
        if let Ok(channel) = endpoint.connect_with_connector(connector).await {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server never listened on {}", socket.display());
}

/// A StorageClass: what external-provisioner reads to build CreateVolume.
#[derive(Clone, Debug)]
pub struct StorageClass {
    /// `parameters:` as written by the user, including the secret references.
    pub parameters: BTreeMap<String, String>,
    pub mount_options: Vec<String>,
    /// The provisioner Secret's `data` (decoded), or none.
    pub provisioner_secret: Option<HashMap<String, String>>,
}

impl StorageClass {
    /// A StorageClass for the test Samba, volumes under `base` in its share.
    pub fn for_samba(samba: &Samba, base: &str) -> StorageClass {
        let mut parameters = BTreeMap::new();
        parameters
            .insert("source".into(), format!("//{}:{}/{}/{base}", samba.host(), samba.port(), samba.share_name()));
        parameters.insert("csi.storage.k8s.io/provisioner-secret-name".into(), "smbcreds".into());
        parameters.insert("csi.storage.k8s.io/provisioner-secret-namespace".into(), "default".into());
        parameters.insert("csi.storage.k8s.io/node-stage-secret-name".into(), "smbcreds".into());
        parameters.insert("csi.storage.k8s.io/node-stage-secret-namespace".into(), "default".into());
        StorageClass {
            parameters,
            mount_options: vec!["dir_mode=0777".into(), "file_mode=0777".into()],
            provisioner_secret: Some(HashMap::from([
                ("username".to_string(), samba.user().to_string()),
                ("password".to_string(), samba.password().expose().to_string()),
                ("domain".to_string(), samba.domain().to_string()),
            ])),
        }
    }

    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.parameters.insert(key.to_string(), value.to_string());
        self
    }

    pub fn with_password(mut self, password: &str) -> Self {
        if let Some(secret) = &mut self.provisioner_secret {
            secret.insert("password".into(), password.into());
        }
        self
    }

    /// The secrets external-provisioner resolves from the secret references.
    pub fn secrets(&self) -> HashMap<String, String> {
        self.provisioner_secret.clone().unwrap_or_default()
    }
}

/// A PVC as far as provisioning is concerned.
#[derive(Clone, Debug)]
pub struct Claim {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub storage: i64,
    pub access_modes: Vec<volume_capability::access_mode::Mode>,
    pub clone_of: Option<String>,
}

impl Claim {
    pub fn new(namespace: &str, name: &str, storage: i64) -> Claim {
        let uid = format!("{:032x}", rand::random::<u128>());
        let uid = format!("{}-{}-{}-{}-{}", &uid[..8], &uid[8..12], &uid[12..16], &uid[16..20], &uid[20..]);
        Claim {
            namespace: namespace.into(),
            name: name.into(),
            uid,
            storage,
            access_modes: vec![
                volume_capability::access_mode::Mode::MultiNodeMultiWriter,
                volume_capability::access_mode::Mode::SingleNodeMultiWriter,
            ],
            clone_of: None,
        }
    }

    /// The PV name external-provisioner derives: `<prefix>-<pvc uid>`.
    pub fn pv_name(&self) -> String {
        format!("pvc-{}", self.uid)
    }
}

/// CreateVolume as external-provisioner (with `--extra-create-metadata`)
/// sends it: secret references stripped from the parameters, PVC/PV
/// metadata added, one mount capability per PVC access mode.
pub fn create_request(class: &StorageClass, claim: &Claim) -> CreateVolumeRequest {
    let mut parameters: HashMap<String, String> = class
        .parameters
        .iter()
        .filter(|(k, _)| !(k.starts_with("csi.storage.k8s.io/") && k.contains("secret-")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    parameters.insert("csi.storage.k8s.io/pvc/name".into(), claim.name.clone());
    parameters.insert("csi.storage.k8s.io/pvc/namespace".into(), claim.namespace.clone());
    parameters.insert("csi.storage.k8s.io/pv/name".into(), claim.pv_name());
    CreateVolumeRequest {
        name: claim.pv_name(),
        capacity_range: Some(CapacityRange { required_bytes: claim.storage, limit_bytes: 0 }),
        volume_capabilities: claim
            .access_modes
            .iter()
            .map(|mode| VolumeCapability {
                access_type: Some(volume_capability::AccessType::Mount(volume_capability::MountVolume {
                    fs_type: String::new(),
                    mount_flags: class.mount_options.clone(),
                    volume_mount_group: String::new(),
                })),
                access_mode: Some(volume_capability::AccessMode { mode: *mode as i32 }),
            })
            .collect(),
        parameters,
        secrets: class.secrets(),
        volume_content_source: claim.clone_of.as_ref().map(|id| VolumeContentSource {
            r#type: Some(volume_content_source::Type::Volume(volume_content_source::VolumeSource {
                volume_id: id.clone(),
            })),
        }),
        accessibility_requirements: None,
        mutable_parameters: HashMap::new(),
    }
}

/// external-provisioner's retry loop: ABORTED (operation pending) is retried.
pub async fn provision(
    controller: &mut ControllerClient<Channel>,
    request: CreateVolumeRequest,
) -> Result<Volume, Status> {
    for _ in 0..400 {
        match controller.create_volume(request.clone()).await {
            Err(s) if s.code() == Code::Aborted => tokio::time::sleep(Duration::from_millis(10)).await,
            other => return other.map(|r| r.into_inner().volume.expect("a volume")),
        }
    }
    panic!("CreateVolume stayed ABORTED");
}

pub async fn delete(
    controller: &mut ControllerClient<Channel>,
    volume_id: &str,
    class: &StorageClass,
) -> Result<(), Status> {
    let request = DeleteVolumeRequest { volume_id: volume_id.to_string(), secrets: class.secrets() };
    for _ in 0..400 {
        match controller.delete_volume(request.clone()).await {
            Err(s) if s.code() == Code::Aborted => tokio::time::sleep(Duration::from_millis(10)).await,
            other => return other.map(drop),
        }
    }
    panic!("DeleteVolume stayed ABORTED");
}

/// Names in `dir` of the share as smbclient lists them (without `.`/`..`).
pub async fn smb_ls(samba: &'static Samba, dir: &str) -> Vec<String> {
    let dir = dir.to_string();
    tokio::task::spawn_blocking(move || {
        let out = match samba.smbclient(&format!("ls \"{dir}/*\"")) {
            Ok(out) => out,
            Err(e)
                if ["NAME_NOT_FOUND", "PATH_NOT_FOUND", "NO_SUCH_FILE"].iter().any(|s| e.to_string().contains(s)) =>
            {
                return Vec::new()
            }
            Err(e) => panic!("smbclient ls {dir}: {e}"),
        };
        let mut names: Vec<String> = out
            .lines()
            .filter_map(|line| {
                // "  name      D        0  Mon Jan  1 00:00:00 2024"
                let line = line.strip_prefix("  ")?;
                let (name, _) = split_name(line)?;
                Some(name)
            })
            .filter(|n| n != "." && n != "..")
            .collect();
        names.sort();
        names
    })
    .await
    .unwrap()
}

/// Splits an smbclient listing line into the name and the rest: the name is
/// followed by at least two spaces and then attribute letters or the size.
fn split_name(line: &str) -> Option<(String, String)> {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] == b' ' && bytes[i + 1] == b' ' {
            let rest = line[i..].trim_start();
            let first = rest.split_whitespace().next()?;
            if first.chars().all(|c| c.is_ascii_uppercase()) || first.chars().all(|c| c.is_ascii_digit()) {
                return Some((line[..i].to_string(), rest.to_string()));
            }
        }
        i += 1;
    }
    None
}

/// Every path under `root` on the local side of the share, sorted, with sizes.
pub fn local_tree(root: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let meta = entry.metadata().unwrap();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if meta.is_dir() {
                out.push((format!("{rel}/"), 0));
                stack.push(path);
            } else {
                out.push((rel, meta.len()));
            }
        }
    }
    out.sort();
    out
}
