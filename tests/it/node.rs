//! The Node service through real FUSE mounts against the private Samba (encryption required), driven over the
//! gRPC unix socket with the requests the kubelet sends: kubelet-shaped staging and target paths, the
//! `csi.storage.k8s.io/pod.*` volume context (podInfoOnMount) and node-stage secrets.
//! Needs root, /dev/fuse and Samba; outside CI a missing piece skips, under CI=true it fails.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::common::csi::connect;
use smb3::{ClientOptions, SessionPool};
use smb3_csi::csi::node::{NodeConfig, NodeService};
use smb3_csi::csi::proto::identity_client::IdentityClient;
use smb3_csi::csi::proto::node_client::NodeClient;
use smb3_csi::csi::proto::{
    node_service_capability, volume_capability, NodeExpandVolumeRequest, NodeGetCapabilitiesRequest,
    NodeGetInfoRequest, NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse, NodePublishVolumeRequest,
    NodeStageVolumeRequest, NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest, VolumeCapability,
};
use smb3_csi::csi::{serve, Endpoint, IdentityService, ServeError, Services};
use smb3_csi::mount::{self, MountState};
use smb3_testkit::running_in_ci;
use smb3_testkit::samba::{Samba, SambaProfile};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Code;

const DRIVER: &str = "smb3.csi.dev";
const NODE_ID: &str = "node-a";

/// Root, /dev/fuse and the shared Samba, or `None` (skip) outside CI.
pub(crate) fn samba() -> Option<&'static Samba> {
    if !(Path::new("/dev/fuse").exists() && nix::unistd::geteuid().is_root()) {
        assert!(!running_in_ci(), "CI=true: /dev/fuse and root are required");
        eprintln!("skipped: needs root and /dev/fuse");
        return None;
    }
    let samba = Samba::shared(SambaProfile::EncryptRequired);
    if samba.is_none() {
        eprintln!("skipped: Samba is not installed (CI=true makes this a failure)");
    }
    samba
}

/// A node plugin (Identity + Node) serving on a socket in a kubelet-like temporary root.
pub(crate) struct NodePlugin {
    pub(crate) node: NodeClient<Channel>,
    identity: IdentityClient<Channel>,
    /// Plays /var/lib/kubelet.
    kubelet: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl NodePlugin {
    async fn start(kubeconfig: Option<PathBuf>) -> NodePlugin {
        NodePlugin::start_with(kubeconfig, ClientOptions { timeout: Duration::from_secs(20), ..Default::default() })
            .await
    }

    /// With the pool's client options (e.g. the krb5.conf of a test DC).
    pub(crate) async fn start_with(kubeconfig: Option<PathBuf>, options: ClientOptions) -> NodePlugin {
        let kubelet = tempfile::tempdir().unwrap();
        let socket = kubelet.path().join(format!("plugins/{DRIVER}/csi.sock"));
        let endpoint = Endpoint::parse(&format!("unix://{}", socket.display())).unwrap();
        let pool = SessionPool::new(options, Duration::from_secs(60));
        let node = NodeService::new(
            NodeConfig {
                node_id: NODE_ID.into(),
                kubeconfig,
                driver_name: DRIVER.into(),
                kubelet_dir: kubelet.path().to_path_buf(),
            },
            pool,
        );
        node.spawn_connection_watch(Duration::from_millis(200));
        let services = Services::new()
            .with_identity(IdentityService::new(DRIVER, false, Arc::new(AtomicBool::new(true))).unwrap())
            .with_node(node);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(&endpoint, services, async {
                let _ = stopped.await;
            })
            .await
        });
        let channel = connect(&socket).await;
        NodePlugin {
            node: NodeClient::new(channel.clone()),
            identity: IdentityClient::new(channel),
            kubelet,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `<kubelet>/plugins/kubernetes.io/csi/<driver>/<sha256 of the volume handle>/globalmount`, its parent
    /// created as the kubelet does.
    pub(crate) fn staging_path(&self, volume_id: &str) -> PathBuf {
        use sha2::{Digest, Sha256};
        let sha = hex::encode(Sha256::digest(volume_id.as_bytes()));
        let dir = self.kubelet.path().join(format!("plugins/kubernetes.io/csi/{DRIVER}/{sha}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vol_data.json"), format!("{{\"volumeHandle\":\"{volume_id}\"}}")).unwrap();
        dir.join("globalmount")
    }

    /// `<kubelet>/pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount`, its parent created as the kubelet does.
    pub(crate) fn target_path(&self, pod_uid: &str, pv: &str) -> PathBuf {
        let dir = self.kubelet.path().join(format!("pods/{pod_uid}/volumes/kubernetes.io~csi/{pv}"));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("mount")
    }

    pub(crate) async fn stop(mut self) {
        // Whatever a failed assertion left mounted must not outlive the test.
        for m in mount::mounts().unwrap() {
            if m.mount_point.starts_with(self.kubelet.path()) {
                let _ = mount::unmount(&m.mount_point);
            }
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// A volume on the test share: its directory created locally, owned by the share's user.
pub(crate) struct TestVolume {
    pub(crate) pv: String,
    pub(crate) volume_id: String,
    /// Directory relative to the share root.
    pub(crate) dir: String,
    pub(crate) context: HashMap<String, String>,
}

impl TestVolume {
    /// A volume as the controller provisions it: base `node-<test>`, subdir = the PV name.
    pub(crate) fn provisioned(samba: &Samba, test: &str) -> TestVolume {
        let pv = format!("pvc-{:08x}", rand::random::<u32>());
        let base = format!("node-{test}");
        let dir = format!("{base}/{pv}");
        make_dir(samba, &dir);
        let source = format!("//{}:{}/{}/{base}", samba.host(), samba.port(), samba.share_name());
        let volume_id = format!("v1|{}|{}|{}|{base}|{pv}|delete", samba.host(), samba.port(), samba.share_name());
        let context = HashMap::from([("source".to_string(), source), ("subdir".to_string(), pv.clone())]);
        TestVolume { pv, volume_id, dir, context }
    }
}

fn make_dir(samba: &Samba, rel: &str) {
    let local = samba.share_path().join(rel);
    std::fs::create_dir_all(&local).unwrap();
    let owner = std::fs::metadata(samba.share_path()).unwrap();
    let mut p = local.as_path();
    while p != samba.share_path() {
        std::os::unix::fs::chown(p, Some(owner.uid()), Some(owner.gid())).unwrap();
        p = p.parent().unwrap();
    }
}

pub(crate) fn secrets(samba: &Samba) -> HashMap<String, String> {
    HashMap::from([
        ("username".to_string(), format!("{}\n", samba.user())),
        ("password".to_string(), samba.password().expose().to_string()),
        ("domain".to_string(), samba.domain().to_string()),
    ])
}

pub(crate) fn capability(flags: &[&str], group: &str, mode: volume_capability::access_mode::Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(volume_capability::MountVolume {
            fs_type: String::new(),
            mount_flags: flags.iter().map(|s| s.to_string()).collect(),
            volume_mount_group: group.to_string(),
        })),
        access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }),
    }
}

pub(crate) fn rwx(flags: &[&str]) -> VolumeCapability {
    capability(flags, "", volume_capability::access_mode::Mode::MultiNodeMultiWriter)
}

pub(crate) fn stage_request(
    samba: &Samba,
    vol: &TestVolume,
    staging: &Path,
    cap: VolumeCapability,
) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: vol.volume_id.clone(),
        publish_context: HashMap::new(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(cap),
        secrets: secrets(samba),
        volume_context: vol.context.clone(),
    }
}

/// NodePublishVolume as the kubelet sends it with podInfoOnMount.
pub(crate) fn publish_request(
    vol: &TestVolume,
    staging: &Path,
    target: &Path,
    cap: VolumeCapability,
    readonly: bool,
) -> NodePublishVolumeRequest {
    let mut context = vol.context.clone();
    context.insert("csi.storage.k8s.io/pod.name".into(), "web-0".into());
    context.insert("csi.storage.k8s.io/pod.namespace".into(), "default".into());
    context.insert("csi.storage.k8s.io/pod.uid".into(), "0d6f2d7e-1b1c-4bb5-a7f1-6c3f3e2f9a11".into());
    context.insert("csi.storage.k8s.io/serviceAccount.name".into(), "default".into());
    context.insert("csi.storage.k8s.io/ephemeral".into(), "false".into());
    NodePublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        publish_context: HashMap::new(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(cap),
        readonly,
        secrets: HashMap::new(),
        volume_context: context,
    }
}

async fn stats(plugin: &mut NodePlugin, vol: &TestVolume, path: &Path, staging: &Path) -> NodeGetVolumeStatsResponse {
    plugin
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: path.display().to_string(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// File system calls through FUSE block; run them off the runtime's workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn state(path: &Path) -> MountState {
    mount::mount_state(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn capabilities_info_and_malformed_requests() {
    let mut plugin = NodePlugin::start(None).await;
    let caps = plugin.node.node_get_capabilities(NodeGetCapabilitiesRequest {}).await.unwrap().into_inner();
    use node_service_capability::rpc::Type;
    let got: HashSet<i32> = caps
        .capabilities
        .iter()
        .map(|c| match c.r#type {
            Some(node_service_capability::Type::Rpc(rpc)) => rpc.r#type,
            None => panic!("capability without a type"),
        })
        .collect();
    let want: HashSet<i32> = [
        Type::StageUnstageVolume,
        Type::GetVolumeStats,
        Type::VolumeCondition,
        Type::SingleNodeMultiWriter,
        Type::VolumeMountGroup,
    ]
    .into_iter()
    .map(|t| t as i32)
    .collect();
    assert_eq!(got, want);
    let info = plugin.node.node_get_info(NodeGetInfoRequest {}).await.unwrap().into_inner();
    assert_eq!((info.node_id.as_str(), info.max_volumes_per_node), (NODE_ID, 0));
    let probe = plugin.identity.probe(smb3_csi::csi::proto::ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));
    let expand = plugin.node.node_expand_volume(NodeExpandVolumeRequest::default()).await.unwrap_err();
    assert_eq!(expand.code(), Code::Unimplemented);

    let staging = plugin.staging_path("v1|srv||share||pvc-1|delete");
    let target = plugin.target_path("uid-1", "pvc-1");
    let good = NodeStageVolumeRequest {
        volume_id: "v1|srv||share||pvc-1|delete".into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(rwx(&[])),
        secrets: HashMap::from([
            ("username".into(), "u".into()),
            ("password".into(), smb3_testkit::run_log::test_password("hunter2").expose().into()),
        ]),
        ..Default::default()
    };
    let block = VolumeCapability {
        access_type: Some(volume_capability::AccessType::Block(volume_capability::BlockVolume {})),
        access_mode: Some(volume_capability::AccessMode { mode: 5 }),
    };
    let with = |f: &dyn Fn(&mut NodeStageVolumeRequest)| {
        let mut r = good.clone();
        f(&mut r);
        r
    };
    let stage_cases: Vec<(&str, NodeStageVolumeRequest, &str)> = vec![
        ("no volume id", with(&|r| r.volume_id.clear()), "volume_id"),
        ("long volume id", with(&|r| r.volume_id = "v".repeat(200)), "volume_id"),
        ("no staging path", with(&|r| r.staging_target_path.clear()), "staging_target_path"),
        ("relative staging path", with(&|r| r.staging_target_path = "globalmount".into()), "absolute"),
        ("dotdot staging path", with(&|r| r.staging_target_path = "/var/lib/../x".into()), ".."),
        ("no capability", with(&|r| r.volume_capability = None), "volume_capability"),
        ("no access mode", with(&|r| r.volume_capability.as_mut().unwrap().access_mode = None), "access_mode"),
        ("bad mount flag", with(&|r| r.volume_capability = Some(rwx(&["uid=bob"]))), "uid"),
        ("unknown mount flag", with(&|r| r.volume_capability = Some(rwx(&["frobnicate"]))), "frobnicate"),
        ("credentials as flag", with(&|r| r.volume_capability = Some(rwx(&["password=x"]))), "credentials"),
        (
            "bad fsGroup",
            with(&|r| {
                r.volume_capability =
                    Some(capability(&[], "staff", volume_capability::access_mode::Mode::SingleNodeWriter))
            }),
            "volume_mount_group",
        ),
        ("no secret", with(&|r| r.secrets.clear()), "node-stage-secret"),
        (
            "secret without username",
            with(&|r| {
                r.secrets.remove("username");
            }),
            "username",
        ),
        ("unknown id without context", with(&|r| r.volume_id = "pvc-static".into()), "volume id"),
        (
            "bad source",
            with(&|r| {
                r.volume_context.insert("source".into(), "srv/share".into());
            }),
            "share address",
        ),
        (
            "subdir escaping",
            with(&|r| {
                r.volume_context.insert("source".into(), "//srv/share".into());
                r.volume_context.insert("subDir".into(), "a/../../etc".into());
            }),
            "subdir",
        ),
    ];
    for (name, request, needle) in stage_cases {
        let status = plugin.node.node_stage_volume(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(status.message().to_lowercase().contains(&needle.to_lowercase()), "{name}: {}", status.message());
        assert!(!status.message().contains("hunter2"), "{name}");
    }
    // The spec's "Exceeds capabilities" for the node RPCs is FAILED_PRECONDITION, not INVALID_ARGUMENT.
    let status = plugin.node.node_stage_volume(with(&|r| r.volume_capability = Some(block.clone()))).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("block"), "{status:?}");
    // Nothing was mounted or created by a refused request.
    assert!(!staging.exists());

    let vol = TestVolume {
        pv: "pvc-1".into(),
        volume_id: "v1|srv||share||pvc-1|delete".into(),
        dir: String::new(),
        context: HashMap::new(),
    };
    let publish = publish_request(&vol, &staging, &target, rwx(&[]), false);
    let pub_cases: Vec<(&str, NodePublishVolumeRequest, Code)> = vec![
        (
            "no target",
            NodePublishVolumeRequest { target_path: String::new(), ..publish.clone() },
            Code::InvalidArgument,
        ),
        (
            "relative target",
            NodePublishVolumeRequest { target_path: "mount".into(), ..publish.clone() },
            Code::InvalidArgument,
        ),
        (
            "no volume id",
            NodePublishVolumeRequest { volume_id: String::new(), ..publish.clone() },
            Code::InvalidArgument,
        ),
        (
            "no capability",
            NodePublishVolumeRequest { volume_capability: None, ..publish.clone() },
            Code::InvalidArgument,
        ),
        (
            "no staging path (staging target path not set)",
            NodePublishVolumeRequest { staging_target_path: String::new(), ..publish.clone() },
            Code::FailedPrecondition,
        ),
        (
            "relative staging path",
            NodePublishVolumeRequest { staging_target_path: "globalmount".into(), ..publish.clone() },
            Code::InvalidArgument,
        ),
        (
            "block (exceeds capabilities)",
            NodePublishVolumeRequest { volume_capability: Some(block.clone()), ..publish.clone() },
            Code::FailedPrecondition,
        ),
        ("not staged", publish.clone(), Code::FailedPrecondition),
    ];
    for (name, request, code) in pub_cases {
        let status = plugin.node.node_publish_volume(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{name}: {status:?}");
    }
    let status = plugin
        .node
        .node_unpublish_volume(NodeUnpublishVolumeRequest { volume_id: "x".into(), target_path: "rel".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = plugin
        .node
        .node_unstage_volume(NodeUnstageVolumeRequest { volume_id: String::new(), staging_target_path: "/x".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // Unstage/unpublish of what was never there: success (idempotent).
    plugin
        .node
        .node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .unwrap();
    // NodeGetVolumeStats: a missing field is INVALID_ARGUMENT; anything this node has not mounted is NOT_FOUND.
    let stats = |volume_id: &str, volume_path: &str, staging_target_path: &str| NodeGetVolumeStatsRequest {
        volume_id: volume_id.into(),
        volume_path: volume_path.into(),
        staging_target_path: staging_target_path.into(),
    };
    let (id, target_s, staging_s) =
        (vol.volume_id.as_str(), target.display().to_string(), staging.display().to_string());
    let stats_cases: Vec<(&str, NodeGetVolumeStatsRequest, Code)> = vec![
        ("no volume id", stats("", &target_s, ""), Code::InvalidArgument),
        ("no volume path", stats(id, "", ""), Code::InvalidArgument),
        ("not mounted here", stats(id, &target_s, ""), Code::NotFound),
        ("not mounted, with staging path", stats(id, &target_s, &staging_s), Code::NotFound),
        ("relative path", stats(id, "relative", ""), Code::NotFound),
        ("dotdot path", stats(id, "/var/lib/../kubelet", ""), Code::NotFound),
        ("root", stats(id, "/", ""), Code::NotFound),
        ("unknown volume id", stats("v1|other||share||pvc-9|delete", &target_s, ""), Code::NotFound),
        ("over-long volume id", stats(&"v".repeat(200), &target_s, ""), Code::NotFound),
        ("unusable staging path", stats(id, &target_s, "relative"), Code::NotFound),
    ];
    for (name, request, code) in stats_cases {
        let status = plugin.node.node_get_volume_stats(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{name}: {status:?}");
    }
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lifecycle_twice_each_with_options_read_only_and_stats() {
    let Some(samba) = samba() else { return };
    let mut plugin = NodePlugin::start(None).await;
    let vol = TestVolume::provisioned(samba, "lifecycle");
    let staging = plugin.staging_path(&vol.volume_id);
    let target = plugin.target_path("0d6f2d7e-1b1c-4bb5-a7f1-6c3f3e2f9a11", &vol.pv);
    let target_ro = plugin.target_path("5b3e7a10-77aa-4c1e-9d0f-2f1e3c4d5e6f", &vol.pv);
    let flags = ["uid=1001,gid=2002", "file_mode=0640", "dir_mode=0750", "noperm", "mfsymlinks"];
    let cap = rwx(&flags);

    for round in 0..2 {
        plugin.node.node_stage_volume(stage_request(samba, &vol, &staging, cap.clone())).await.unwrap();
        assert!(
            matches!(state(&staging), MountState::Mounted { ref fstype, .. } if fstype == "fuse.smb3-csi"),
            "round {round}"
        );
    }
    // Staging the same path with other options is a conflict, not a silent success.
    let other = plugin.node.node_stage_volume(stage_request(samba, &vol, &staging, rwx(&["uid=7"]))).await.unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists);

    for _ in 0..2 {
        plugin.node.node_publish_volume(publish_request(&vol, &staging, &target, cap.clone(), false)).await.unwrap();
        plugin.node.node_publish_volume(publish_request(&vol, &staging, &target_ro, cap.clone(), true)).await.unwrap();
    }

    // Writes through the read-write target arrive on the server; options show in stat.
    let (t, t_ro) = (target.clone(), target_ro.clone());
    let (file_meta, dir_meta, ro_write, ro_read) = blocking(move || {
        std::fs::write(t.join("hello.txt"), b"through fuse").unwrap();
        std::fs::create_dir(t.join("sub")).unwrap();
        let file_meta = std::fs::metadata(t.join("hello.txt")).unwrap();
        let dir_meta = std::fs::metadata(t.join("sub")).unwrap();
        let ro_write = std::fs::write(t_ro.join("nope.txt"), b"x").unwrap_err().raw_os_error();
        let ro_read = std::fs::read_to_string(t_ro.join("hello.txt")).unwrap();
        (file_meta, dir_meta, ro_write, ro_read)
    })
    .await;
    assert_eq!((file_meta.uid(), file_meta.gid(), file_meta.mode() & 0o7777), (1001, 2002, 0o640));
    assert_eq!((dir_meta.uid(), dir_meta.gid(), dir_meta.mode() & 0o7777), (1001, 2002, 0o750));
    assert_eq!(ro_write, Some(libc_erofs()), "read-only publish must refuse writes with EROFS");
    assert_eq!(ro_read, "through fuse");
    let on_server = std::fs::read(samba.share_path().join(&vol.dir).join("hello.txt")).unwrap();
    assert_eq!(on_server, b"through fuse");

    // Stats: bytes and a normal condition, by target path and by staging path.
    for path in [&target, &staging] {
        let s = stats(&mut plugin, &vol, path, &staging).await;
        let condition = s.volume_condition.unwrap();
        assert!(!condition.abnormal, "{}", condition.message);
        let usage = s.usage.first().expect("byte usage");
        assert!(usage.total > 0 && usage.available > 0 && usage.used >= 0 && usage.used <= usage.total, "{usage:?}");
    }

    // The directory removed on the server: abnormal, with the reason.
    let local_dir = samba.share_path().join(&vol.dir);
    std::fs::remove_dir_all(&local_dir).unwrap();
    let s = stats(&mut plugin, &vol, &target, &staging).await;
    let condition = s.volume_condition.unwrap();
    assert!(condition.abnormal);
    assert!(condition.message.contains("gone"), "{}", condition.message);
    make_dir(samba, &vol.dir);

    for _ in 0..2 {
        for t in [&target, &target_ro] {
            plugin
                .node
                .node_unpublish_volume(NodeUnpublishVolumeRequest {
                    volume_id: vol.volume_id.clone(),
                    target_path: t.display().to_string(),
                })
                .await
                .unwrap();
            assert_eq!(state(t), MountState::NotMounted);
            assert!(!t.exists(), "the target directory is removed");
        }
    }
    for _ in 0..2 {
        plugin
            .node
            .node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: vol.volume_id.clone(),
                staging_target_path: staging.display().to_string(),
            })
            .await
            .unwrap();
        assert_eq!(state(&staging), MountState::NotMounted);
        assert!(!staging.exists());
    }
    plugin.stop().await;
}

fn libc_erofs() -> i32 {
    nix::errno::Errno::EROFS as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fs_group_and_static_volume_by_id() {
    let Some(samba) = samba() else { return };
    let mut plugin = NodePlugin::start(None).await;
    // A csi-driver-smb handle with no volume context (a static PV adopted from the incumbent).
    let pv = format!("static-{:08x}", rand::random::<u32>());
    make_dir(samba, &format!("node-static/{pv}"));
    let vol = TestVolume {
        pv: pv.clone(),
        volume_id: format!("{}:{}/{}/node-static#{pv}#{pv}#retain", samba.host(), samba.port(), samba.share_name()),
        dir: format!("node-static/{pv}"),
        context: HashMap::new(),
    };
    let staging = plugin.staging_path(&vol.volume_id);
    let target = plugin.target_path("7a1b2c3d-0000-4000-8000-000000000001", &pv);
    let cap = capability(
        &["file_mode=0600", "dir_mode=0700"],
        "3000",
        volume_capability::access_mode::Mode::SingleNodeMultiWriter,
    );
    plugin.node.node_stage_volume(stage_request(samba, &vol, &staging, cap.clone())).await.unwrap();
    plugin.node.node_publish_volume(publish_request(&vol, &staging, &target, cap, false)).await.unwrap();
    let t = target.clone();
    let (file, dir) = blocking(move || {
        std::fs::write(t.join("f"), b"x").unwrap();
        std::fs::create_dir(t.join("d")).unwrap();
        (std::fs::metadata(t.join("f")).unwrap(), std::fs::metadata(t.join("d")).unwrap())
    })
    .await;
    assert_eq!((file.gid(), file.mode() & 0o777), (3000, 0o660), "fsGroup gid and group rw on files");
    assert_eq!((dir.gid(), dir.mode() & 0o777), (3000, 0o770), "fsGroup gid and group rwx on directories");
    assert!(samba.share_path().join(&vol.dir).join("f").exists());
    unpublish_unstage(&mut plugin, &vol, &target, &staging).await;
    plugin.stop().await;
}

/// A volume provisioned from a StorageClass with `encryption: off`, on a server that cannot encrypt (SMB 2.1): the
/// node's default (`required`) would refuse it, the volume's policy lets it stage; `seal` still forces `required`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volume_with_encryption_off_stages_on_a_server_without_encryption() {
    if samba().is_none() {
        return;
    }
    let Some(smb2) = Samba::shared(SambaProfile::MaxProtocol("SMB2_10")) else {
        eprintln!("skipped: Samba is not installed (CI=true makes this a failure)");
        return;
    };
    let mut plugin = NodePlugin::start(None).await;
    let relaxed = |mut vol: TestVolume| {
        vol.volume_id.push_str("|off");
        vol.context.insert("encryption".into(), "off".into());
        vol
    };

    // The node's default policy refuses the server.
    let strict = TestVolume::provisioned(smb2, "enc-strict");
    let staging = plugin.staging_path(&strict.volume_id);
    let err = plugin.node.node_stage_volume(stage_request(smb2, &strict, &staging, rwx(&[]))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("encryption required"), "{}", err.message());
    assert_eq!(state(&staging), MountState::NotMounted);

    // The volume context's policy (as the controller writes it).
    let vol = relaxed(TestVolume::provisioned(smb2, "enc-off"));
    let staging = plugin.staging_path(&vol.volume_id);
    let target = plugin.target_path("3c9d4e5f-0000-4000-8000-00000000e0ff", &vol.pv);
    plugin.node.node_stage_volume(stage_request(smb2, &vol, &staging, rwx(&[]))).await.unwrap();
    plugin.node.node_publish_volume(publish_request(&vol, &staging, &target, rwx(&[]), false)).await.unwrap();
    let t = target.clone();
    blocking(move || std::fs::write(t.join("plain.txt"), b"signed, not sealed").unwrap()).await;
    assert_eq!(std::fs::read(smb2.share_path().join(&vol.dir).join("plain.txt")).unwrap(), b"signed, not sealed");
    unpublish_unstage(&mut plugin, &vol, &target, &staging).await;

    // No context (a static PV naming the handle): the volume id's policy.
    let mut by_id = relaxed(TestVolume::provisioned(smb2, "enc-id"));
    by_id.context.clear();
    let staging = plugin.staging_path(&by_id.volume_id);
    plugin.node.node_stage_volume(stage_request(smb2, &by_id, &staging, rwx(&[]))).await.unwrap();
    assert!(matches!(state(&staging), MountState::Mounted { .. }));
    plugin
        .node
        .node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: by_id.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .unwrap();

    // `seal` wins over the volume's policy.
    let sealed = relaxed(TestVolume::provisioned(smb2, "enc-seal"));
    let staging = plugin.staging_path(&sealed.volume_id);
    let err = plugin.node.node_stage_volume(stage_request(smb2, &sealed, &staging, rwx(&["seal"]))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // A bad value is named.
    let mut bad = TestVolume::provisioned(smb2, "enc-bad");
    bad.context.insert("Encryption".into(), "sometimes".into());
    let staging = plugin.staging_path(&bad.volume_id);
    let err = plugin.node.node_stage_volume(stage_request(smb2, &bad, &staging, rwx(&[]))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("encryption \"sometimes\""), "{}", err.message());
    plugin.stop().await;
}

pub(crate) async fn unpublish_unstage(plugin: &mut NodePlugin, vol: &TestVolume, target: &Path, staging: &Path) {
    plugin
        .node
        .node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            target_path: target.display().to_string(),
        })
        .await
        .unwrap();
    plugin
        .node
        .node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .unwrap();
}

/// Aborts the FUSE connection of the mount at `path`, the way a crashed daemon leaves it (ENOTCONN).
fn kill_fuse_connection(path: &Path) {
    if std::fs::read_dir("/sys/fs/fuse/connections").map(|mut d| d.next().is_none()).unwrap_or(true) {
        let status = std::process::Command::new("mount")
            .args(["-t", "fusectl", "fusectl", "/sys/fs/fuse/connections"])
            .status()
            .unwrap();
        assert!(status.success(), "mounting fusectl");
    }
    let device = mount::mount_at(path).unwrap().expect("a mount").device;
    let minor = device.split(':').nth(1).unwrap();
    std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), b"1").expect("abort the FUSE connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_staging_mount_is_recovered_by_stage_and_cleaned_by_unpublish() {
    let Some(samba) = samba() else { return };
    let mut plugin = NodePlugin::start(None).await;
    let vol = TestVolume::provisioned(samba, "dead");
    std::fs::write(samba.share_path().join(&vol.dir).join("keep.txt"), b"still here").unwrap();
    let staging = plugin.staging_path(&vol.volume_id);
    let target = plugin.target_path("9e8d7c6b-0000-4000-8000-000000000002", &vol.pv);
    plugin.node.node_stage_volume(stage_request(samba, &vol, &staging, rwx(&[]))).await.unwrap();
    plugin.node.node_publish_volume(publish_request(&vol, &staging, &target, rwx(&[]), false)).await.unwrap();

    let s = staging.clone();
    blocking(move || kill_fuse_connection(&s)).await;
    let mut dead = false;
    for _ in 0..100 {
        if state(&staging) == MountState::Dead {
            dead = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dead, "the staging mount should be dead after the abort");
    let condition = stats(&mut plugin, &vol, &staging, &staging).await.volume_condition.unwrap();
    assert!(condition.abnormal, "a dead mount is abnormal");

    // The kubelet stages again (e.g. after a plugin restart): the dead mount is replaced.
    plugin.node.node_stage_volume(stage_request(samba, &vol, &staging, rwx(&[]))).await.unwrap();
    let s = staging.clone();
    let text = blocking(move || std::fs::read_to_string(s.join("keep.txt")).unwrap()).await;
    assert_eq!(text, "still here");
    assert!(!stats(&mut plugin, &vol, &staging, &staging).await.volume_condition.unwrap().abnormal);

    // The old bind mount at the target is dead too: unpublish cleans it, publish again works.
    plugin
        .node
        .node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            target_path: target.display().to_string(),
        })
        .await
        .unwrap();
    assert_eq!(state(&target), MountState::NotMounted);
    plugin.node.node_publish_volume(publish_request(&vol, &staging, &target, rwx(&[]), false)).await.unwrap();
    let t = target.clone();
    assert_eq!(blocking(move || std::fs::read_to_string(t.join("keep.txt")).unwrap()).await, "still here");
    unpublish_unstage(&mut plugin, &vol, &target, &staging).await;
    assert_eq!(state(&staging), MountState::NotMounted);
    plugin.stop().await;
}

/// Sessions of our user in `smbstatus -b` of a private Samba.
fn session_count(samba: &Samba) -> usize {
    let status = samba.smbstatus().unwrap();
    status.lines().filter(|l| l.contains("SMB3_")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volumes_with_the_same_credentials_share_one_session() {
    if samba().is_none() {
        return;
    }
    // A Samba of its own, so smbstatus sees only this test's sessions.
    let samba = Samba::start(SambaProfile::EncryptRequired).expect("private Samba");
    let mut plugin = NodePlugin::start(None).await;
    let a = TestVolume::provisioned(&samba, "share-a");
    let b = TestVolume::provisioned(&samba, "share-b");
    let c = TestVolume::provisioned(&samba, "share-c");
    let (sa, sb, sc) =
        (plugin.staging_path(&a.volume_id), plugin.staging_path(&b.volume_id), plugin.staging_path(&c.volume_id));
    plugin.node.node_stage_volume(stage_request(&samba, &a, &sa, rwx(&[]))).await.unwrap();
    plugin.node.node_stage_volume(stage_request(&samba, &b, &sb, rwx(&["uid=1000"]))).await.unwrap();
    let (pa, pb) = (sa.clone(), sb.clone());
    blocking(move || {
        std::fs::write(pa.join("a"), b"a").unwrap();
        std::fs::write(pb.join("b"), b"b").unwrap();
    })
    .await;
    assert_eq!(session_count(&samba), 1, "two volumes, same credentials: one session\n{}", samba.smbstatus().unwrap());
    // nosharesock: a session of its own.
    plugin.node.node_stage_volume(stage_request(&samba, &c, &sc, rwx(&["nosharesock"]))).await.unwrap();
    let pc = sc.clone();
    blocking(move || std::fs::write(pc.join("c"), b"c").unwrap()).await;
    assert_eq!(session_count(&samba), 2, "nosharesock opens its own session\n{}", samba.smbstatus().unwrap());
    for (v, s) in [(&a, &sa), (&b, &sb), (&c, &sc)] {
        plugin
            .node
            .node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: v.volume_id.clone(),
                staging_target_path: s.display().to_string(),
            })
            .await
            .unwrap();
    }
    assert!(samba.share_path().join(&c.dir).join("c").exists());
    plugin.stop().await;
}

/// What the fake API server serves: Secrets by (namespace, name), changeable while it runs, and PVs of our
/// driver as (PV name, volume handle, nodeStageSecretRef namespace, name). It counts the requests per path.
#[derive(Default)]
pub(crate) struct FakeApi {
    pub(crate) secrets: std::sync::Mutex<HashMap<(String, String), HashMap<String, String>>>,
    pub(crate) pvs: Vec<(String, String, String, String)>,
    pub(crate) requests: std::sync::Mutex<HashMap<String, usize>>,
}

impl FakeApi {
    fn requests_to(&self, path: &str) -> usize {
        self.requests.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// `GET /api/v1/persistentvolumes`: a PersistentVolumeList with one PV of another driver first (it has a
    /// volume handle of ours, so only the driver tells them apart).
    fn pv_list(&self) -> String {
        let mut items = vec![format!(
            "{{\"metadata\":{{\"name\":\"theirs\"}},\"spec\":{{\"csi\":{{\"driver\":\"smb.csi.k8s.io\",\
             \"volumeHandle\":{:?},\"nodeStageSecretRef\":{{\"name\":\"wrong\",\"namespace\":\"wrong\"}}}}}}}}",
            self.pvs.first().map(|p| p.1.as_str()).unwrap_or("none")
        )];
        for (name, handle, ns, secret) in &self.pvs {
            items.push(format!(
                "{{\"metadata\":{{\"name\":{name:?}}},\"spec\":{{\"csi\":{{\"driver\":{DRIVER:?},\
                 \"volumeHandle\":{handle:?},\"nodeStageSecretRef\":{{\"name\":{secret:?},\"namespace\":{ns:?}}}}}}}}}"
            ));
        }
        format!(
            "{{\"kind\":\"PersistentVolumeList\",\"apiVersion\":\"v1\",\"metadata\":{{\"resourceVersion\":\"1\"}},\
             \"items\":[{}]}}",
            items.join(",")
        )
    }
}

/// A fake Kubernetes API server: answers GET /api/v1/namespaces/<ns>/secrets/<name> with the real Secret JSON
/// (base64 `data`) for the secrets it knows, GET /api/v1/persistentvolumes with its PVs, and a 404 Status for
/// the rest.
pub(crate) async fn fake_api_server(api: Arc<FakeApi>) -> (u16, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let api = api.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let path = text.split_whitespace().nth(1).unwrap_or("").split('?').next().unwrap_or("").to_string();
                *api.requests.lock().unwrap().entry(path.clone()).or_default() += 1;
                let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
                let found = match parts[..] {
                    ["api", "v1", "namespaces", ns, "secrets", name] => api
                        .secrets
                        .lock()
                        .unwrap()
                        .get(&(ns.to_string(), name.to_string()))
                        .cloned()
                        .map(|data| (ns, name, data)),
                    _ => None,
                };
                let (status, body) = match found {
                    _ if parts[..] == ["api", "v1", "persistentvolumes"] => ("200 OK", api.pv_list()),
                    Some((ns, name, data)) => {
                        let data: Vec<String> =
                            data.iter().map(|(k, v)| format!("\"{k}\":\"{}\"", base64(v.as_bytes()))).collect();
                        (
                            "200 OK",
                            format!(
                                "{{\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"metadata\":{{\"name\":\"{name}\",\
                                 \"namespace\":\"{ns}\",\"uid\":\"4b0c5a7e-0000-4000-8000-00000000000a\",\
                                 \"resourceVersion\":\"1234\"}},\"type\":\"Opaque\",\"data\":{{{}}}}}",
                                data.join(",")
                            ),
                        )
                    }
                    None => (
                        "404 Not Found",
                        format!(
                            "{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{{}},\"status\":\"Failure\",\
                             \"message\":\"secrets not found: {path}\",\"reason\":\"NotFound\",\"code\":404}}"
                        ),
                    ),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (port, task)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_rfc4648() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inline_volume_reads_its_secret_from_the_api_server() {
    let Some(samba) = samba() else { return };
    let creds = HashMap::from([
        ("username".to_string(), samba.user().to_string()),
        ("password".to_string(), format!("{}\n", samba.password().expose())),
    ]);
    let fake = FakeApi {
        secrets: std::sync::Mutex::new(HashMap::from([(("team-a".to_string(), "smbcreds".to_string()), creds)])),
        ..Default::default()
    };
    let (port, api) = fake_api_server(Arc::new(fake)).await;
    let config_dir = tempfile::tempdir().unwrap();
    let kubeconfig = fake_kubeconfig(config_dir.path(), port);
    let mut plugin = NodePlugin::start(Some(kubeconfig)).await;
    let dir = format!("node-inline/v-{:08x}", rand::random::<u32>());
    make_dir(samba, &dir);
    std::fs::write(samba.share_path().join(&dir).join("served.txt"), b"from the share").unwrap();
    let target = plugin.target_path("1c2d3e4f-0000-4000-8000-000000000003", "smb-inline");
    let volume_id = "csi-0c4a1f0b8e3d2a17c5b6e9f0a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";
    let inline = |secret: &str| NodePublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(capability(&[], "", volume_capability::access_mode::Mode::SingleNodeWriter)),
        volume_context: HashMap::from([
            ("csi.storage.k8s.io/ephemeral".to_string(), "true".to_string()),
            ("csi.storage.k8s.io/pod.name".to_string(), "inline-0".to_string()),
            ("csi.storage.k8s.io/pod.namespace".to_string(), "team-a".to_string()),
            ("csi.storage.k8s.io/pod.uid".to_string(), "1c2d3e4f-0000-4000-8000-000000000003".to_string()),
            ("csi.storage.k8s.io/serviceAccount.name".to_string(), "default".to_string()),
            ("source".to_string(), format!("//{}:{}/{}", samba.host(), samba.port(), samba.share_name())),
            ("subDir".to_string(), dir.clone()),
            ("secretName".to_string(), secret.to_string()),
            ("mountOptions".to_string(), "uid=1234,file_mode=0644".to_string()),
        ]),
        ..Default::default()
    };
    // A Secret that does not exist: INVALID_ARGUMENT naming it, nothing mounted.
    let missing = plugin.node.node_publish_volume(inline("nope")).await.unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument, "{missing:?}");
    assert!(missing.message().contains("team-a/nope"), "{}", missing.message());
    assert_ne!(
        std::mem::discriminant(&state(&target)),
        std::mem::discriminant(&MountState::Mounted { fstype: String::new(), source: String::new() })
    );

    for _ in 0..2 {
        plugin.node.node_publish_volume(inline("smbcreds")).await.unwrap();
    }
    assert!(matches!(state(&target), MountState::Mounted { ref fstype, .. } if fstype == "fuse.smb3-csi"));
    let t = target.clone();
    let (text, meta) = blocking(move || {
        std::fs::write(t.join("from-pod.txt"), b"inline").unwrap();
        (std::fs::read_to_string(t.join("served.txt")).unwrap(), std::fs::metadata(t.join("served.txt")).unwrap())
    })
    .await;
    assert_eq!(text, "from the share");
    assert_eq!((meta.uid(), meta.permissions().mode() & 0o777), (1234, 0o644));
    assert_eq!(std::fs::read(samba.share_path().join(&dir).join("from-pod.txt")).unwrap(), b"inline");
    let s = plugin
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: volume_id.into(),
            volume_path: target.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!s.volume_condition.unwrap().abnormal);
    for _ in 0..2 {
        plugin
            .node
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: volume_id.into(),
                target_path: target.display().to_string(),
            })
            .await
            .unwrap();
    }
    assert_eq!(state(&target), MountState::NotMounted);
    assert!(!target.exists());
    plugin.stop().await;
    api.abort();
}

/// A kubeconfig in `dir` for the fake API server on `port`.
pub(crate) fn fake_kubeconfig(dir: &Path, port: u16) -> PathBuf {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: node\ncurrent-context: fake\n\
             users:\n- name: node\n  user:\n    token: not-a-real-token\n"
        ),
    )
    .unwrap();
    kubeconfig
}

/// Password rotation through the API: a staged volume's session is refused after the password changed on
/// the server; the node finds the volume's PV (by driver and handle, next to another driver's PV with the
/// same handle), reads the Secret its nodeStageSecretRef names, and I/O through the mount carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn staged_volume_reconnects_with_the_rotated_secret_its_pv_names() {
    if samba().is_none() {
        return;
    }
    let mut own = match Samba::start(SambaProfile::EncryptRequired) {
        Ok(s) => s,
        Err(e) if e.is_unavailable() => return eprintln!("skipped: {e}"),
        Err(e) => panic!("starting Samba: {e}"),
    };
    let vol = TestVolume::provisioned(&own, "rotation");
    let secret = ("team-a".to_string(), "smb-creds".to_string());
    let fake = Arc::new(FakeApi {
        secrets: std::sync::Mutex::new(HashMap::from([(secret.clone(), secrets(&own))])),
        pvs: vec![(vol.pv.clone(), vol.volume_id.clone(), secret.0.clone(), secret.1.clone())],
        ..Default::default()
    });
    let (port, api) = fake_api_server(fake.clone()).await;
    let config_dir = tempfile::tempdir().unwrap();
    let mut plugin = NodePlugin::start(Some(fake_kubeconfig(config_dir.path(), port))).await;
    let staging = plugin.staging_path(&vol.volume_id);
    plugin.node.node_stage_volume(stage_request(&own, &vol, &staging, rwx(&[]))).await.unwrap();
    let file = staging.join("rotated.txt");
    let f = file.clone();
    blocking(move || std::fs::write(f, b"before;")).await.unwrap();
    assert_eq!(fake.requests_to("/api/v1/persistentvolumes"), 0, "nothing is read while the password works");

    let new = smb3::Secret::new(format!("R0tated-{:08x}", rand::random::<u32>()));
    own.change_password(new.clone()).unwrap();
    fake.secrets.lock().unwrap().get_mut(&secret).unwrap().insert("password".into(), new.expose().to_string());
    own.restart(Duration::from_millis(500)).unwrap();
    let f = file.clone();
    let started = std::time::Instant::now();
    blocking(move || {
        use std::io::Write;
        let mut out = std::fs::OpenOptions::new().append(true).open(&f)?;
        out.write_all(b"after")?;
        out.sync_all()
    })
    .await
    .expect("I/O carries on with the rotated password");
    eprintln!("PAUSES node password rotation: append blocked {:?} across the reconnect", started.elapsed());
    assert_eq!(std::fs::read(own.share_path().join(&vol.dir).join("rotated.txt")).unwrap(), b"before;after");
    assert_eq!(fake.requests_to("/api/v1/persistentvolumes"), 1, "the PV's Secret reference is looked up once");
    assert!(fake.requests_to("/api/v1/namespaces/team-a/secrets/smb-creds") >= 1, "the Secret was read again");
    assert_eq!(fake.requests_to("/api/v1/namespaces/wrong/secrets/wrong"), 0, "another driver's PV was taken");
    plugin
        .node
        .node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .unwrap();
    plugin.stop().await;
    api.abort();
}

/// `smb3_csi_volume_condition_abnormal` of one volume in the process's metrics (the watcher's view).
fn condition_metric(volume_id: &str) -> Option<String> {
    let text = smb3_csi::metrics::Metrics::global().render();
    let prefix = format!("smb3_csi_volume_condition_abnormal{{volume_id=\"{volume_id}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
}

async fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volume_rides_out_a_server_restart_and_a_rotated_secret() {
    if samba().is_none() {
        return;
    }
    crate::common::init_tracing();
    // A Samba of its own: it is stopped, restarted and re-keyed.
    let mut samba = Samba::start(SambaProfile::EncryptRequired).expect("private Samba");
    let mut plugin = NodePlugin::start(None).await;
    let a = TestVolume::provisioned(&samba, "rotate-a");
    let b = TestVolume::provisioned(&samba, "rotate-b");
    let (sa, sb) = (plugin.staging_path(&a.volume_id), plugin.staging_path(&b.volume_id));
    plugin.node.node_stage_volume(stage_request(&samba, &a, &sa, rwx(&[]))).await.unwrap();
    let pa = sa.clone();
    let mut file = blocking(move || {
        let mut f = std::fs::File::create(pa.join("log.txt")).unwrap();
        std::io::Write::write_all(&mut f, b"before\n").unwrap();
        f.sync_all().unwrap();
        f
    })
    .await;
    assert!(!stats(&mut plugin, &a, &sa, &sa).await.volume_condition.unwrap().abnormal);

    // The server goes away: the volume is abnormal with the reason, and the watcher's series says so.
    samba = blocking(move || {
        samba.stop_server().unwrap();
        samba
    })
    .await;
    let condition = stats(&mut plugin, &a, &sa, &sa).await.volume_condition.unwrap();
    assert!(condition.abnormal, "{condition:?}");
    assert!(condition.message.contains("is down since") && condition.message.contains("hard mount"), "{condition:?}");
    wait_for("abnormal in the metrics", Duration::from_secs(5), || {
        condition_metric(&a.volume_id).as_deref() == Some("1")
    })
    .await;
    // A re-stage meanwhile keeps the mount (its open file stays valid) instead of replacing it.
    plugin.node.node_stage_volume(stage_request(&samba, &a, &sa, rwx(&[]))).await.unwrap();

    // Back: normal again, the open file carries on.
    samba = blocking(move || {
        samba.start_server().unwrap();
        samba
    })
    .await;
    file = blocking(move || {
        std::io::Write::write_all(&mut file, b"after restart\n").unwrap();
        file.sync_all().expect("the open file survives the restart");
        file
    })
    .await;
    wait_for("normal in the metrics", Duration::from_secs(5), || {
        condition_metric(&a.volume_id).as_deref() == Some("0")
    })
    .await;
    let condition = stats(&mut plugin, &a, &sa, &sa).await.volume_condition.unwrap();
    assert!(!condition.abnormal, "{condition:?}");

    // The password is rotated; a later NodeStageVolume (another volume, same Secret) brings the new one.
    let mut fresh = [0u8; 6];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut fresh);
    samba.change_password(smb3::Secret::new(format!("Rot-{}", hex::encode(fresh)))).unwrap();
    plugin.node.node_stage_volume(stage_request(&samba, &b, &sb, rwx(&[]))).await.unwrap();
    // Volume a's session was opened with the old password; its next reconnect must use the new one.
    samba = blocking(move || {
        samba.restart(Duration::from_millis(500)).unwrap();
        samba
    })
    .await;
    let started = std::time::Instant::now();
    blocking(move || {
        std::io::Write::write_all(&mut file, b"after rotation\n").unwrap();
        file.sync_all().expect("the volume reconnects with the rotated password");
    })
    .await;
    let pause = started.elapsed();
    let text = std::fs::read_to_string(samba.share_path().join(&a.dir).join("log.txt")).unwrap();
    assert_eq!(text, "before\nafter restart\nafter rotation\n");
    assert!(!stats(&mut plugin, &a, &sa, &sa).await.volume_condition.unwrap().abnormal);
    eprintln!("PAUSES node: write + fsync on a staged volume took {pause:.2?} after a restart with a rotated password");
    for (v, s) in [(&a, &sa), (&b, &sb)] {
        plugin
            .node
            .node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: v.volume_id.clone(),
                staging_target_path: s.display().to_string(),
            })
            .await
            .unwrap();
    }
    assert!(condition_metric(&a.volume_id).is_none(), "an unstaged volume's series is dropped");
    plugin.stop().await;
}
