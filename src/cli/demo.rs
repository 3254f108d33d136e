//! `smb3-csi demo`: the whole story on one machine, as root. Starts a private Samba that requires encryption,
//! starts `smb3-csi all` on a temporary socket, and plays external-provisioner and the kubelet over that
//! socket: CreateVolume, NodeStageVolume, NodePublishVolume to a local directory, a file written and read
//! through it, the same file fetched from the server side with smbclient, then unpublish, unstage, delete.
//! Every step is printed in plain words; the exit status tells success.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use hyper_util::rt::TokioIo;
use smb3_csi::csi::proto::controller_client::ControllerClient;
use smb3_csi::csi::proto::identity_client::IdentityClient;
use smb3_csi::csi::proto::node_client::NodeClient;
use smb3_csi::csi::proto::{
    volume_capability, CapacityRange, CreateVolumeRequest, DeleteVolumeRequest, GetPluginInfoRequest,
    NodeGetVolumeStatsRequest, NodePublishVolumeRequest, NodeStageVolumeRequest, NodeUnpublishVolumeRequest,
    NodeUnstageVolumeRequest, VolumeCapability,
};
use smb3_csi::mount::{self, MountState};
use smb3_testkit::samba::{Samba, SambaProfile};
use tonic::transport::Channel;

const DRIVER: &str = "smb3.csi.dev";
const NODE_ID: &str = "demo-node";

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the temporary directory (socket, plugin log, mount points) for inspection.
    #[arg(long)]
    keep: bool,
}

/// One numbered line per step.
struct Steps(usize);

impl Steps {
    fn say(&mut self, what: impl AsRef<str>) {
        self.0 += 1;
        println!("[{:>2}] {}", self.0, what.as_ref());
    }
}

fn detail(what: impl AsRef<str>) {
    for line in what.as_ref().lines() {
        println!("       {line}");
    }
}

/// Everything the demo started, stopped on every path out.
struct Running {
    plugin: Option<Child>,
    samba: Option<Samba>,
    mounts: Vec<PathBuf>,
    dir: Option<tempfile::TempDir>,
    log: PathBuf,
}

impl Running {
    fn stop(&mut self, keep: bool) {
        for path in self.mounts.iter().rev() {
            let _ = mount::unmount(path);
        }
        if let Some(mut child) = self.plugin.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(mut samba) = self.samba.take() {
            samba.stop();
        }
        if let Some(dir) = self.dir.take() {
            if keep {
                println!("kept {}", dir.keep().display());
            }
        }
    }
}

pub async fn run(args: DemoArgs) -> Result<(), String> {
    let dir = tempfile::Builder::new().prefix("smb3-csi-demo-").tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let mut running =
        Running { plugin: None, samba: None, mounts: Vec::new(), log: dir.path().join("plugin.log"), dir: None };
    let root = dir.path().to_path_buf();
    running.dir = Some(dir);
    let result = story(&root, &mut running).await;
    if result.is_err() {
        let log = std::fs::read_to_string(&running.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        if !tail.is_empty() {
            eprintln!("last lines of the plugin log ({}):", running.log.display());
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
        }
    }
    let keep = args.keep;
    tokio::task::spawn_blocking(move || running.stop(keep)).await.map_err(|e| e.to_string())?;
    match &result {
        Ok(()) => println!("Demo finished: every step succeeded."),
        Err(e) => println!("Demo FAILED: {e}"),
    }
    result
}

async fn story(root: &Path, running: &mut Running) -> Result<(), String> {
    let mut step = Steps(0);
    if !nix::unistd::geteuid().is_root() {
        return Err("the demo mounts filesystems and starts smbd: run it as root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing (install fuse3 and load the fuse module)".into());
    }

    step.say("Starting a private Samba server that requires SMB3 encryption");
    let samba = tokio::task::spawn_blocking(|| Samba::start(SambaProfile::EncryptRequired))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("starting Samba: {e} (scripts/setup.sh installs it)"))?;
    detail(format!("listening on {}, share {:?}, user {:?}", samba.addr(), samba.share_name(), samba.user()));
    let (host, port, share) = (samba.host().to_string(), samba.port(), samba.share_name().to_string());
    let secrets = HashMap::from([
        ("username".to_string(), samba.user().to_string()),
        ("password".to_string(), samba.password().expose().to_string()),
        ("domain".to_string(), samba.domain().to_string()),
    ]);
    running.samba = Some(samba);

    let socket = root.join("csi.sock");
    step.say("Starting the CSI plugin (`smb3-csi all`: identity, controller and node services)");
    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let log = std::fs::File::create(&running.log).map_err(|e| format!("creating the plugin log: {e}"))?;
    let child = Command::new(exe)
        .args(["--log-level", "info", "all", "--node-id", NODE_ID, "--driver-name", DRIVER, "--endpoint"])
        .arg(format!("unix://{}", socket.display()))
        .arg("--kubelet-dir")
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting smb3-csi all: {e}"))?;
    detail(format!("pid {}, socket {}, log {}", child.id(), socket.display(), running.log.display()));
    running.plugin = Some(child);
    let channel = connect(&socket, running).await?;
    let mut identity = IdentityClient::new(channel.clone());
    let mut controller = ControllerClient::new(channel.clone());
    let mut node = NodeClient::new(channel);
    let info = identity.get_plugin_info(GetPluginInfoRequest {}).await.map_err(rpc("GetPluginInfo"))?.into_inner();
    detail(format!("the plugin answers: {} version {}", info.name, info.vendor_version));

    step.say("Provisioning a 1 GiB volume (CreateVolume, as external-provisioner does for a PVC)");
    let pv = "pvc-5e2d0c1a-demo";
    let capability = VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(volume_capability::MountVolume {
            fs_type: String::new(),
            mount_flags: vec!["dir_mode=0777".into(), "file_mode=0666".into()],
            volume_mount_group: String::new(),
        })),
        access_mode: Some(volume_capability::AccessMode {
            mode: volume_capability::access_mode::Mode::SingleNodeMultiWriter as i32,
        }),
    };
    let created = controller
        .create_volume(CreateVolumeRequest {
            name: pv.into(),
            capacity_range: Some(CapacityRange { required_bytes: 1 << 30, limit_bytes: 0 }),
            volume_capabilities: vec![capability.clone()],
            parameters: HashMap::from([("source".to_string(), format!("//{host}:{port}/{share}/demo"))]),
            secrets: secrets.clone(),
            ..Default::default()
        })
        .await
        .map_err(rpc("CreateVolume"))?
        .into_inner()
        .volume
        .ok_or("CreateVolume returned no volume")?;
    let volume_id = created.volume_id.clone();
    detail(format!("volume id {volume_id}\nits directory on the share: demo/{pv}"));

    let staging = root.join(format!("plugins/kubernetes.io/csi/{DRIVER}/demo/globalmount"));
    step.say("Staging the volume on this node (NodeStageVolume: one FUSE mount over the SMB3 session)");
    running.mounts.push(staging.clone());
    node.node_stage_volume(NodeStageVolumeRequest {
        volume_id: volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(capability.clone()),
        secrets: secrets.clone(),
        volume_context: created.volume_context.clone(),
        ..Default::default()
    })
    .await
    .map_err(rpc("NodeStageVolume"))?;
    describe_mount(&staging)?;

    let target = root.join(format!("pods/4f1c2a9e-demo/volumes/kubernetes.io~csi/{pv}/mount"));
    step.say("Publishing it into a pod's directory (NodePublishVolume: a bind mount of the staging mount)");
    running.mounts.push(target.clone());
    node.node_publish_volume(NodePublishVolumeRequest {
        volume_id: volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(capability.clone()),
        volume_context: created.volume_context.clone(),
        ..Default::default()
    })
    .await
    .map_err(rpc("NodePublishVolume"))?;
    describe_mount(&target)?;

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let text = format!("Hello from smb3-csi, written through FUSE (unix time {now})\n");
    step.say("Writing a file through the pod's mount, then reading it back");
    let file = target.join("hello.txt");
    std::fs::write(&file, &text).map_err(|e| format!("writing {}: {e}", file.display()))?;
    let read = std::fs::read_to_string(&file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    if read != text {
        return Err(format!("read back {read:?}, wrote {text:?}"));
    }
    detail(format!("{} contains: {}", file.display(), read.trim_end()));

    step.say("Fetching the same file from the server side with smbclient (encrypted)");
    let fetched = root.join("fetched-by-smbclient.txt");
    let remote = format!("demo\\{pv}\\hello.txt");
    let command = format!("get \"{remote}\" \"{}\"", fetched.display());
    let samba = running.samba.as_ref().ok_or("Samba stopped")?;
    samba.smbclient(&command).map_err(|e| format!("smbclient get: {e}"))?;
    let server_side = std::fs::read_to_string(&fetched).map_err(|e| format!("reading {}: {e}", fetched.display()))?;
    if server_side != text {
        return Err(format!("smbclient fetched {server_side:?}, the pod wrote {text:?}"));
    }
    detail(format!("smbclient got //{host}/{share}/demo/{pv}/hello.txt: {}", server_side.trim_end()));

    step.say("Asking the node for the volume's usage and health (NodeGetVolumeStats)");
    let stats = node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: volume_id.clone(),
            volume_path: target.display().to_string(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .map_err(rpc("NodeGetVolumeStats"))?
        .into_inner();
    let condition = stats.volume_condition.unwrap_or_default();
    if condition.abnormal {
        return Err(format!("the volume is reported abnormal: {}", condition.message));
    }
    if let Some(u) = stats.usage.first() {
        detail(format!(
            "share size {} MiB, available {} MiB, used {} MiB",
            u.total >> 20,
            u.available >> 20,
            u.used >> 20
        ));
    }
    detail(format!("condition: normal ({})", condition.message));

    step.say("Unpublishing the volume from the pod (NodeUnpublishVolume)");
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: volume_id.clone(),
        target_path: target.display().to_string(),
    })
    .await
    .map_err(rpc("NodeUnpublishVolume"))?;
    expect_gone(&target)?;

    step.say("Unstaging it from the node (NodeUnstageVolume: the FUSE mount goes away)");
    node.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: volume_id.clone(),
        staging_target_path: staging.display().to_string(),
    })
    .await
    .map_err(rpc("NodeUnstageVolume"))?;
    expect_gone(&staging)?;

    step.say("Deleting the volume (DeleteVolume: its directory is removed from the share)");
    controller
        .delete_volume(DeleteVolumeRequest { volume_id: volume_id.clone(), secrets: secrets.clone() })
        .await
        .map_err(rpc("DeleteVolume"))?;
    let samba = running.samba.as_ref().ok_or("Samba stopped")?;
    if samba.share_path().join("demo").join(pv).exists() {
        return Err(format!("demo/{pv} is still on the share after DeleteVolume"));
    }
    detail(format!("demo/{pv} is gone from the share"));

    step.say("Stopping the plugin and Samba");
    Ok(())
}

fn rpc(name: &'static str) -> impl Fn(tonic::Status) -> String {
    move |s| format!("{name} failed: {:?}: {}", s.code(), s.message())
}

fn describe_mount(path: &Path) -> Result<(), String> {
    match mount::mount_state(path).map_err(|e| e.to_string())? {
        MountState::Mounted { fstype, source } => {
            detail(format!("{} is mounted: {fstype} from {source}", path.display()));
            Ok(())
        }
        other => Err(format!("{} is not mounted ({other:?})", path.display())),
    }
}

fn expect_gone(path: &Path) -> Result<(), String> {
    match mount::mount_state(path).map_err(|e| e.to_string())? {
        MountState::NotMounted if !path.exists() => {
            detail(format!("{} is unmounted and removed", path.display()));
            Ok(())
        }
        MountState::NotMounted => Err(format!("{} is unmounted but still exists", path.display())),
        other => Err(format!("{} is still mounted ({other:?})", path.display())),
    }
}

/// Connects to the plugin's unix socket, waiting for it to listen (and failing early if it exits).
async fn connect(socket: &Path, running: &mut Running) -> Result<Channel, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(child) = running.plugin.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                running.plugin = None;
                return Err(format!("smb3-csi all exited early ({status})"));
            }
        }
        if socket.exists() {
            let path = socket.to_path_buf();
            let connector = tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            });
            let endpoint = tonic::transport::Endpoint::try_from("http://[::1]:50051").map_err(|e| e.to_string())?;
            if let Ok(channel) = endpoint.connect_with_connector(connector).await {
                return Ok(channel);
            }
        }
        if Instant::now() > deadline {
            return Err(format!("the plugin never listened on {}", socket.display()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
