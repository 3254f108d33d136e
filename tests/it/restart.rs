//! Node plugin restarts and upgrades against the private Samba, with the real binary as the kubelet runs
//! it (`smb3-csi all` on a socket in a kubelet-like temporary root, state next to it, a keeper it starts
//! itself): volumes in use survive a SIGKILL of the plugin and a graceful handover to a new process, and a
//! volume whose FUSE connection died with everything holding it is cleaned up, never left stale.
//! Needs root, /dev/fuse and Samba; outside CI a missing piece skips, under CI=true it fails.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tonic::transport::Channel;
use tonic::Code;

use crate::common::csi::connect;
use crate::node::{publish_request, rwx, samba, stage_request, TestVolume};
use smb3_csi::csi::proto::node_client::NodeClient;
use smb3_csi::csi::proto::{
    NodeGetVolumeStatsRequest, NodeStageVolumeRequest, NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest,
};
use smb3_csi::mount;
use smb3_testkit::samba::Samba;

const BIN: &str = env!("CARGO_BIN_EXE_smb3-csi");
const DRIVER: &str = "smb3.csi.dev";

/// A kubelet-like root where plugin processes come and go.
struct Node {
    root: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        Node { root: tempfile::tempdir().unwrap() }
    }

    fn plugin_dir(&self) -> PathBuf {
        self.root.path().join(format!("plugins/{DRIVER}"))
    }

    fn socket(&self) -> PathBuf {
        self.plugin_dir().join("csi.sock")
    }

    fn keeper_socket(&self) -> PathBuf {
        self.plugin_dir().join("state/keeper/keeper.sock")
    }

    /// `smb3-csi all` with its defaults (state next to the socket, a keeper it starts), its log in `tag`.log.
    fn spawn(&self, tag: &str) -> Child {
        self.spawn_with(tag, &[])
    }

    /// `smb3-csi all` as [`Node::spawn`], with `extra` arguments.
    fn spawn_with(&self, tag: &str, extra: &[&str]) -> Child {
        fs::create_dir_all(self.plugin_dir()).unwrap();
        let log = fs::File::create(self.root.path().join(format!("{tag}.log"))).unwrap();
        Command::new(BIN)
            .args(["all", "--endpoint", &format!("unix://{}", self.socket().display()), "--node-id", "node-a"])
            .args(["--keeper-idle-secs", "5"])
            .args(extra)
            .arg("--kubelet-dir")
            .arg(self.root.path())
            .env("RUST_LOG", "info,smb3_csi=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// A client once the plugin `tag` serves CSI (after its recovery); its log in the panic otherwise.
    async fn client(&self, tag: &str) -> NodeClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(150);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(Instant::now() < deadline, "plugin {tag} never served CSI; its log:\n{}", self.log(tag));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        NodeClient::new(connect(&self.socket()).await)
    }

    fn log(&self, tag: &str) -> String {
        fs::read_to_string(self.root.path().join(format!("{tag}.log"))).unwrap_or_default()
    }

    fn staging(&self, volume_id: &str) -> PathBuf {
        use sha2::{Digest, Sha256};
        let sha = hex::encode(Sha256::digest(volume_id.as_bytes()));
        let dir = self.root.path().join(format!("plugins/kubernetes.io/csi/{DRIVER}/{sha}"));
        fs::create_dir_all(&dir).unwrap();
        dir.join("globalmount")
    }

    fn target(&self, pod: &str, pv: &str) -> PathBuf {
        let dir = self.root.path().join(format!("pods/{pod}/volumes/kubernetes.io~csi/{pv}"));
        fs::create_dir_all(&dir).unwrap();
        dir.join("mount")
    }

    /// Mounts under this root in /proc/self/mountinfo.
    fn mounts_left(&self) -> Vec<PathBuf> {
        mount::mounts()
            .unwrap()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(self.root.path()))
            .collect()
    }

    /// `smb3-csi keeper` on the node's keeper socket, as the chart runs it (its own container), answering
    /// before this returns.
    fn spawn_keeper(&self, tag: &str) -> Child {
        let log = fs::File::create(self.root.path().join(format!("{tag}.log"))).unwrap();
        let child = Command::new(BIN)
            .arg("keeper")
            .arg("--socket")
            .arg(self.keeper_socket())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.keeper_pid() != Some(child.id()) {
            assert!(Instant::now() < deadline, "keeper {tag} never answered: {}", self.log(tag));
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// How many mounts the keeper holds (`None`: no keeper answers).
    fn keeper_mounts(&self) -> Option<u32> {
        smb3_csi::keeper::client::ping(&self.keeper_socket()).ok().map(|s| s.mounts)
    }

    fn keeper_pid(&self) -> Option<u32> {
        smb3_csi::keeper::client::ping(&self.keeper_socket()).ok().map(|s| s.pid)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Each plugin's and keeper's stderr, for the secret scan.
        for entry in fs::read_dir(self.root.path()).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                smb3_testkit::run_log::record_file("plugin", &entry.path());
            }
        }
        if let Some(pid) = self.keeper_pid() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        for point in self.mounts_left().into_iter().rev() {
            let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn signal(child: &Child, signal: Signal) {
    kill(Pid::from_raw(child.id() as i32), signal).unwrap();
}

/// Waits for `child` to exit (bounded).
fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "process {} did not exit in {within:?}", child.id());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A file on the share written locally (owned by the share's user).
fn share_file(samba: &Samba, rel: &str, data: &[u8]) {
    let path = samba.share_path().join(rel);
    fs::write(&path, data).unwrap();
    let owner = fs::metadata(samba.share_path()).unwrap();
    std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
}

/// Bytes that differ chunk by chunk (a lost or duplicated chunk changes the file).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i / 4096) as u8 ^ (i as u8).wrapping_mul(31) ^ seed).collect()
}

const CHUNK: usize = 64 * 1024;
const STEP: Duration = Duration::from_millis(15);

/// Copies `src` to `dst` in chunks with a short sleep between them, timing every read (`read`) or write and
/// the final fsync (`write`), and prints the longest in seconds. Run as a child process: a process holding
/// files of a FUSE mount whose server is down cannot start the successor (the new process would block in
/// exec closing its inherited copies, each close a FLUSH waiting for that very server).
const COPY_LOOP: &str = r#"
import os, sys, time
mode, src, dst, chunk, step = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
longest = 0.0
with open(src, "rb", buffering=0) as i, open(dst, "wb", buffering=0) as o:
    while True:
        t = time.monotonic(); b = i.read(chunk)
        if mode == "read": longest = max(longest, time.monotonic() - t)
        if not b: break
        t = time.monotonic(); o.write(b)
        if mode == "write": longest = max(longest, time.monotonic() - t)
        time.sleep(step)
    t = time.monotonic(); os.fsync(o.fileno())
    if mode == "write": longest = max(longest, time.monotonic() - t)
print(longest)
"#;

/// A copy loop running as a child process.
struct CopyLoop {
    child: Child,
    expected: Vec<u8>,
    out: PathBuf,
}

impl CopyLoop {
    fn start(mode: &str, src: &std::path::Path, dst: &std::path::Path, expected: Vec<u8>, out: PathBuf) -> CopyLoop {
        let child = Command::new("python3")
            .args(["-c", COPY_LOOP, mode])
            .arg(src)
            .arg(dst)
            .args([CHUNK.to_string(), format!("{}", STEP.as_secs_f64())])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        CopyLoop { child, expected, out }
    }

    /// Waits for the loop: no error, the right bytes where they belong; returns the longest operation.
    fn finish(self) -> Duration {
        let out = self.child.wait_with_output().unwrap();
        assert!(out.status.success(), "copy loop failed: {}", String::from_utf8_lossy(&out.stderr));
        let got = fs::read(&self.out).unwrap();
        assert!(
            got == self.expected,
            "{} holds {} bytes, not the {} expected",
            self.out.display(),
            got.len(),
            self.expected.len()
        );
        Duration::from_secs_f64(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
    }
}

/// Two staged and published volumes with a reader and a writer running on them.
struct Workload {
    reading: TestVolume,
    writing: TestVolume,
    reader: CopyLoop,
    writer: CopyLoop,
    _local: tempfile::TempDir,
}

async fn stage_and_publish(node: &Node, client: &mut NodeClient<Channel>, samba: &Samba, vol: &TestVolume, pod: &str) {
    let staging = node.staging(&vol.volume_id);
    client.node_stage_volume(stage_request(samba, vol, &staging, rwx(&[]))).await.unwrap();
    let target = node.target(pod, &vol.pv);
    client.node_publish_volume(publish_request(vol, &staging, &target, rwx(&[]), false)).await.unwrap();
}

async fn start_workload(node: &Node, client: &mut NodeClient<Channel>, samba: &Samba, test: &str) -> Workload {
    let reading = TestVolume::provisioned(samba, test);
    let writing = TestVolume::provisioned(samba, test);
    let source = pattern(160 * CHUNK, 7);
    share_file(samba, &format!("{}/big.bin", reading.dir), &source);
    stage_and_publish(node, client, samba, &reading, "pod-r").await;
    stage_and_publish(node, client, samba, &writing, "pod-w").await;
    let local = tempfile::tempdir().unwrap();
    let read_copy = local.path().join("read.bin");
    let reader = CopyLoop::start(
        "read",
        &node.target("pod-r", &reading.pv).join("big.bin"),
        &read_copy,
        source.clone(),
        read_copy.clone(),
    );
    let written = pattern(160 * CHUNK, 99);
    let write_source = local.path().join("write.bin");
    fs::write(&write_source, &written).unwrap();
    let on_share = samba.share_path().join(&writing.dir).join("out.bin");
    let writer =
        CopyLoop::start("write", &write_source, &node.target("pod-w", &writing.pv).join("out.bin"), written, on_share);
    Workload { reading, writing, reader, writer, _local: local }
}

/// Both loops finish without an error and with the right bytes; returns the volumes and the longest pause
/// the reader and the writer saw.
async fn finish_workload(w: Workload) -> ([TestVolume; 2], Duration, Duration) {
    let (reader, writer) = (w.reader, w.writer);
    let read = tokio::task::spawn_blocking(move || reader.finish()).await.unwrap();
    let written = tokio::task::spawn_blocking(move || writer.finish()).await.unwrap();
    ([w.reading, w.writing], read, written)
}

/// After a restart: a new publish of a staged volume, stats, then everything unpublished and unstaged,
/// and no mount left under the node's root.
async fn use_then_clean_up(node: &Node, client: &mut NodeClient<Channel>, vols: &[TestVolume; 2]) {
    let [reading, writing] = vols;
    let staging = node.staging(&reading.volume_id);
    let new_target = node.target("pod-new", &reading.pv);
    client.node_publish_volume(publish_request(reading, &staging, &new_target, rwx(&[]), false)).await.unwrap();
    let path = new_target.join("big.bin");
    let len = tokio::task::spawn_blocking(move || fs::read(path).unwrap().len()).await.unwrap();
    assert_eq!(len, 160 * CHUNK);
    for (vol, pod) in [(reading, "pod-new"), (reading, "pod-r"), (writing, "pod-w")] {
        let stats = client
            .node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: vol.volume_id.clone(),
                volume_path: node.target(pod, &vol.pv).display().to_string(),
                staging_target_path: node.staging(&vol.volume_id).display().to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        let condition = stats.volume_condition.unwrap();
        assert!(!condition.abnormal, "{pod}: {}", condition.message);
        assert!(stats.usage.first().is_some_and(|u| u.total > 0), "{pod}: {:?}", stats.usage);
    }
    for (vol, pod) in [(reading, "pod-new"), (reading, "pod-r"), (writing, "pod-w")] {
        let target_path = node.target(pod, &vol.pv).display().to_string();
        let req = NodeUnpublishVolumeRequest { volume_id: vol.volume_id.clone(), target_path };
        client.node_unpublish_volume(req).await.unwrap();
    }
    for vol in [reading, writing] {
        let staging_target_path = node.staging(&vol.volume_id).display().to_string();
        let req = NodeUnstageVolumeRequest { volume_id: vol.volume_id.clone(), staging_target_path };
        client.node_unstage_volume(req).await.unwrap();
    }
    assert_eq!(node.mounts_left(), Vec::<PathBuf>::new(), "mounts left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volumes_in_use_survive_a_sigkill_of_the_plugin() {
    let Some(samba) = samba() else { return };
    let node = Node::new();
    let mut first = node.spawn("first");
    let mut client = node.client("first").await;
    let work = start_workload(&node, &mut client, samba, "crash").await;
    let held = smb3_csi::keeper::client::ping(&node.keeper_socket()).map(|s| s.mounts);
    assert_eq!(held.ok(), Some(2), "{}", node.log("first"));

    let killed = Instant::now();
    signal(&first, Signal::SIGKILL);
    wait_exit(&mut first, Duration::from_secs(10));
    let mut second = node.spawn("second");
    let mut client = node.client("second").await;
    let serving_again = killed.elapsed();
    let (vols, read_pause, write_pause) = finish_workload(work).await;
    eprintln!(
        "SIGKILL: CSI served again after {serving_again:?}; longest read {read_pause:?}, longest write {write_pause:?}"
    );
    let log = node.log("second");
    assert_eq!(log.matches("adopted a live mount").count(), 2, "{log}");
    use_then_clean_up(&node, &mut client, &vols).await;
    signal(&second, Signal::SIGTERM);
    assert!(wait_exit(&mut second, Duration::from_secs(30)).success(), "{}", node.log("second"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_process_takes_the_volumes_over_from_a_running_one() {
    let Some(samba) = samba() else { return };
    let node = Node::new();
    let mut old = node.spawn("old");
    let mut client = node.client("old").await;
    let work = start_workload(&node, &mut client, samba, "upgrade").await;

    // "Start the new binary, then stop the old": the new one asks the old one to hand over.
    let started = Instant::now();
    let mut new = node.spawn("new");
    let status = wait_exit(&mut old, Duration::from_secs(60));
    let old_log = node.log("old");
    assert!(status.success(), "{status}: {old_log}");
    assert!(old_log.contains("handing over"), "{old_log}");
    let mut client = node.client("new").await;
    let serving_again = started.elapsed();
    let (vols, read_pause, write_pause) = finish_workload(work).await;
    eprintln!(
        "handover: CSI served by the new process after {serving_again:?}; longest read {read_pause:?}, longest write {write_pause:?}"
    );
    let log = node.log("new");
    assert!(log.contains("the previous plugin handed over"), "{log}");
    assert_eq!(log.matches("adopted a live mount").count(), 2, "{log}");
    use_then_clean_up(&node, &mut client, &vols).await;
    signal(&new, Signal::SIGTERM);
    assert!(wait_exit(&mut new, Duration::from_secs(30)).success(), "{}", node.log("new"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_that_died_with_its_holders_is_cleaned_up() {
    let Some(samba) = samba() else { return };
    let node = Node::new();
    let mut first = node.spawn("first");
    let mut client = node.client("first").await;
    let vol = TestVolume::provisioned(samba, "dead");
    stage_and_publish(&node, &mut client, samba, &vol, "pod-d").await;
    let staging = node.staging(&vol.volume_id);
    let target = node.target("pod-d", &vol.pv);
    // Everything holding the connection dies: the kernel aborts it, the mounts answer ENOTCONN. The plugin
    // first: killed second, it would hand its mounts to a new keeper (as it does when a keeper restarts).
    let keeper = node.keeper_pid().expect("the plugin started a keeper");
    signal(&first, Signal::SIGKILL);
    wait_exit(&mut first, Duration::from_secs(10));
    kill(Pid::from_raw(keeper as i32), Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while mount::mount_state(&staging).unwrap() != mount::MountState::Dead {
        assert!(Instant::now() < deadline, "the staging mount did not die");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut second = node.spawn("second");
    let mut client = node.client("second").await;
    assert_eq!(node.mounts_left(), Vec::<PathBuf>::new(), "stale mounts left: {}", node.log("second"));
    // Without its secret it cannot be staged again: the node does not claim it any more.
    let stats = client
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: target.display().to_string(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(stats.code(), Code::NotFound, "{stats:?}");
    // The kubelet's next stage and publish work on the cleaned paths.
    let req: NodeStageVolumeRequest = stage_request(samba, &vol, &staging, rwx(&[]));
    client.node_stage_volume(req).await.unwrap();
    client.node_publish_volume(publish_request(&vol, &staging, &target, rwx(&[]), false)).await.unwrap();
    let probe = target.join("after.txt");
    tokio::task::spawn_blocking(move || fs::write(probe, b"ok").unwrap()).await.unwrap();
    assert_eq!(fs::read(samba.share_path().join(&vol.dir).join("after.txt")).unwrap(), b"ok");
    let req =
        NodeUnpublishVolumeRequest { volume_id: vol.volume_id.clone(), target_path: target.display().to_string() };
    client.node_unpublish_volume(req).await.unwrap();
    let staging_target_path = staging.display().to_string();
    let req = NodeUnstageVolumeRequest { volume_id: vol.volume_id.clone(), staging_target_path };
    client.node_unstage_volume(req).await.unwrap();
    assert_eq!(node.mounts_left(), Vec::<PathBuf>::new());
    signal(&second, Signal::SIGTERM);
    assert!(wait_exit(&mut second, Duration::from_secs(30)).success(), "{}", node.log("second"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_keeper_gets_every_mount_back_so_a_later_plugin_crash_loses_none() {
    let Some(samba) = samba() else { return };
    let node = Node::new();
    // As in the chart: the keeper is its own process (container), which the plugin does not start.
    let mut keeper = node.spawn_keeper("keeper-1");
    let mut first = node.spawn_with("first", &["--keeper-spawn=false"]);
    let mut client = node.client("first").await;
    let work = start_workload(&node, &mut client, samba, "keeper").await;
    assert_eq!(node.keeper_mounts(), Some(2), "{}", node.log("first"));

    // The keeper's container restarts: the new keeper holds nothing until the plugin notices.
    signal(&keeper, Signal::SIGKILL);
    wait_exit(&mut keeper, Duration::from_secs(10));
    let restarted = Instant::now();
    let mut keeper = node.spawn_keeper("keeper-2");
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.keeper_mounts() != Some(2) {
        assert!(Instant::now() < deadline, "mounts never handed back: {}", node.log("first"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let handed_back = restarted.elapsed();
    assert!(node.log("first").contains("handing them back"), "{}", node.log("first"));

    // Now the plugin crashes: the new keeper held everything, so the successor adopts both volumes.
    signal(&first, Signal::SIGKILL);
    wait_exit(&mut first, Duration::from_secs(10));
    let mut second = node.spawn_with("second", &["--keeper-spawn=false"]);
    let mut client = node.client("second").await;
    let (vols, read_pause, write_pause) = finish_workload(work).await;
    eprintln!(
        "keeper restart: mounts handed back {handed_back:?} after the new keeper answered; then plugin SIGKILL: \
         longest read {read_pause:?}, longest write {write_pause:?}"
    );
    let log = node.log("second");
    assert_eq!(log.matches("adopted a live mount").count(), 2, "{log}");
    use_then_clean_up(&node, &mut client, &vols).await;
    assert_eq!(node.keeper_mounts(), Some(0));
    signal(&second, Signal::SIGTERM);
    assert!(wait_exit(&mut second, Duration::from_secs(30)).success(), "{}", node.log("second"));
    signal(&keeper, Signal::SIGKILL);
    wait_exit(&mut keeper, Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_inline_volume_in_use_survives_a_sigkill_of_the_plugin_without_the_api() {
    use crate::node::{capability, fake_api_server, fake_kubeconfig, FakeApi};
    use smb3_csi::csi::proto::{volume_capability, NodePublishVolumeRequest};
    use std::collections::HashMap;
    let Some(samba) = samba() else { return };
    let creds = HashMap::from([
        ("username".to_string(), samba.user().to_string()),
        ("password".to_string(), samba.password().expose().to_string()),
    ]);
    let fake = FakeApi {
        secrets: std::sync::Mutex::new(HashMap::from([(("team-a".to_string(), "smbcreds".to_string()), creds)])),
        ..Default::default()
    };
    let (port, api) = fake_api_server(std::sync::Arc::new(fake)).await;
    let config_dir = tempfile::tempdir().unwrap();
    let kubeconfig = fake_kubeconfig(config_dir.path(), port).display().to_string();
    let node = Node::new();
    let mut first = node.spawn_with("first", &["--kubeconfig", &kubeconfig]);
    let mut client = node.client("first").await;
    let vol = TestVolume::provisioned(samba, "inline");
    let target = node.target("pod-i", "smb-inline");
    let volume_id = format!("csi-{:064x}", rand::random::<u128>());
    let request = NodePublishVolumeRequest {
        volume_id: volume_id.clone(),
        target_path: target.display().to_string(),
        volume_capability: Some(capability(&[], "", volume_capability::access_mode::Mode::SingleNodeWriter)),
        volume_context: HashMap::from([
            ("csi.storage.k8s.io/ephemeral".to_string(), "true".to_string()),
            ("csi.storage.k8s.io/pod.name".to_string(), "inline-0".to_string()),
            ("csi.storage.k8s.io/pod.namespace".to_string(), "team-a".to_string()),
            ("source".to_string(), format!("//{}:{}/{}", samba.host(), samba.port(), samba.share_name())),
            ("subDir".to_string(), vol.dir.clone()),
            ("secretName".to_string(), "smbcreds".to_string()),
        ]),
        ..Default::default()
    };
    client.node_publish_volume(request).await.unwrap();
    assert_eq!(node.keeper_mounts(), Some(1), "{}", node.log("first"));
    let local = tempfile::tempdir().unwrap();
    let written = pattern(160 * CHUNK, 42);
    let source = local.path().join("write.bin");
    fs::write(&source, &written).unwrap();
    let on_share = samba.share_path().join(&vol.dir).join("out.bin");
    let writer = CopyLoop::start("write", &source, &target.join("out.bin"), written, on_share);

    // The plugin dies and the API server is gone too: the secret is only in the keeper's memory now.
    signal(&first, Signal::SIGKILL);
    wait_exit(&mut first, Duration::from_secs(10));
    api.abort();
    let mut second = node.spawn_with("second", &["--kubeconfig", &kubeconfig]);
    let mut client = node.client("second").await;
    let write_pause = tokio::task::spawn_blocking(move || writer.finish()).await.unwrap();
    eprintln!("inline volume, plugin SIGKILL: longest write {write_pause:?}");
    let log = node.log("second");
    assert!(log.contains("adopted a live mount (inline volume)"), "{log}");
    let stats = client
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: volume_id.clone(),
            volume_path: target.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!stats.volume_condition.unwrap().abnormal);
    let req = NodeUnpublishVolumeRequest { volume_id, target_path: target.display().to_string() };
    client.node_unpublish_volume(req).await.unwrap();
    assert_eq!(node.mounts_left(), Vec::<PathBuf>::new(), "mounts left behind");
    assert_eq!(node.keeper_mounts(), Some(0), "the keeper still holds the unpublished volume");
    signal(&second, Signal::SIGTERM);
    assert!(wait_exit(&mut second, Duration::from_secs(30)).success(), "{}", node.log("second"));
}
