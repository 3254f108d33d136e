//! Taking over a live FUSE connection: a successor serves the mount of a process that was SIGKILLed (its
//! /dev/fuse fd dup'd beforehand, its takeover journal replayed, FUSE_NOTIFY_RESEND for what it had read),
//! and of a process that handed over gracefully (detach, then adopt), while a reader and a writer keep going.
//! The applications must see no error, only a pause, and the data must be byte-identical (smbclient is the
//! witness). Needs root, /dev/fuse, Samba and a kernel with FUSE_NOTIFY_RESEND (6.9+) for the SIGKILL case.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};
use smb3::{Client, ClientOptions, Credentials, Tree};
use smb3_csi::mount::{self, FuseMount, MountOptions, MountState};
use smb3_testkit::running_in_ci;
use smb3_testkit::samba::{Samba, SambaProfile};
use tokio::runtime::Runtime;

const BIN: &str = env!("CARGO_BIN_EXE_smb3-csi");
const CHUNK: usize = 1 << 20;
/// Size of the file read and of the file written, in chunks.
const CHUNKS: usize = 48;

struct Env {
    samba: &'static Samba,
    rt: Runtime,
    _client: Client,
    tree: Tree,
    dir: String,
}

fn env(name: &str) -> Option<Env> {
    if !(Path::new("/dev/fuse").exists() && nix::unistd::geteuid().is_root()) {
        assert!(!running_in_ci(), "CI=true: /dev/fuse and root are required");
        eprintln!("skipped: needs root and /dev/fuse");
        return None;
    }
    let Some(samba) = Samba::shared(SambaProfile::EncryptRequired) else {
        eprintln!("skipped: Samba is not installed (CI=true makes this a failure)");
        return None;
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    let creds = Credentials::user(samba.user(), "", samba.password().clone());
    let (client, tree) = rt.block_on(async {
        let client = Client::connect(samba.host(), samba.port(), &creds, &ClientOptions::default()).await.unwrap();
        let tree = client.tree(samba.share_name()).await.unwrap();
        (client, tree)
    });
    let dir = format!("takeover-{name}-{}", rand::thread_rng().next_u32());
    rt.block_on(tree.mkdir_all(&dir)).unwrap();
    Some(Env { samba, rt, _client: client, tree, dir })
}

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

impl Env {
    /// Puts `data` on the share as `rel` (below this test's directory) with smbclient.
    fn put(&self, rel: &str, data: &[u8]) {
        let local = tempfile::NamedTempFile::new().unwrap();
        fs::write(local.path(), data).unwrap();
        let remote = format!("{}/{rel}", self.dir).replace('/', "\\");
        self.samba.smbclient(&format!("put \"{}\" \"{remote}\"", local.path().display())).expect("smbclient put");
    }

    /// The SHA-256 of `rel` as smbclient reads it.
    fn smbclient_sha256(&self, rel: &str) -> String {
        let local = tempfile::NamedTempFile::new().unwrap();
        let remote = format!("{}/{rel}", self.dir).replace('/', "\\");
        self.samba.smbclient(&format!("get \"{remote}\" \"{}\"", local.path().display())).expect("smbclient get");
        sha256(&fs::read(local.path()).unwrap())
    }
}

/// A reader of one file and a writer of another through the mount, one chunk at a time with `pace` between
/// chunks, so that both are mid-file when the server goes away. Each records the longest wait for a chunk.
struct Load {
    reader: JoinHandle<std::io::Result<(String, Duration)>>,
    writer: JoinHandle<std::io::Result<Duration>>,
    progress: Arc<AtomicU64>,
}

fn start_load(mp: &Path, data: Arc<Vec<u8>>, pace: Duration) -> Load {
    let progress = Arc::new(AtomicU64::new(0));
    let (src, p) = (mp.join("big"), progress.clone());
    let reader = std::thread::spawn(move || {
        let mut f = fs::File::open(&src)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut longest = Duration::ZERO;
        loop {
            let t = Instant::now();
            let mut filled = 0;
            while filled < CHUNK {
                match f.read(&mut buf[filled..])? {
                    0 => break,
                    n => filled += n,
                }
            }
            longest = longest.max(t.elapsed());
            if filled == 0 {
                break;
            }
            h.update(&buf[..filled]);
            p.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(pace);
        }
        Ok((hex::encode(h.finalize()), longest))
    });
    let (dst, p) = (mp.join("out"), progress.clone());
    let writer = std::thread::spawn(move || {
        let mut f = fs::File::create(&dst)?;
        let mut longest = Duration::ZERO;
        for chunk in data.chunks(CHUNK) {
            let t = Instant::now();
            f.write_all(chunk)?;
            longest = longest.max(t.elapsed());
            p.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(pace);
        }
        f.sync_all()?;
        Ok(longest)
    });
    Load { reader, writer, progress }
}

impl Load {
    fn wait_progress(&self, chunks: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.progress.load(Ordering::SeqCst) < chunks {
            assert!(Instant::now() < deadline, "no I/O progress through the mount");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Both finished without error: the reader's hash, and the longest single wait each saw.
    fn finish(self) -> (String, Duration, Duration) {
        let (hash, read_wait) = self.reader.join().unwrap().expect("reader failed");
        let write_wait = self.writer.join().unwrap().expect("writer failed");
        (hash, read_wait, write_wait)
    }
}

/// The fd number of /dev/fuse in process `pid`.
fn fuse_fd_of(pid: u32) -> i32 {
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        if fs::read_link(entry.path()).ok().as_deref() == Some(Path::new("/dev/fuse")) {
            return entry.file_name().to_str().unwrap().parse().unwrap();
        }
    }
    panic!("process {pid} holds no /dev/fuse");
}

/// A dup of process `pid`'s /dev/fuse connection (what a keeper holding the fd would have).
fn dup_fuse_fd(pid: u32) -> OwnedFd {
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::PidfdFlags::empty(),
    )
    .expect("pidfd_open");
    rustix::process::pidfd_getfd(&pidfd, fuse_fd_of(pid), rustix::process::PidfdGetfdFlags::empty())
        .expect("pidfd_getfd")
}

/// Requests the kernel holds for the connection of `mp` (queued or read by a server and not yet answered),
/// from fusectl (mounted here if it is not yet).
fn connection_waiting(mp: &Path) -> Option<u64> {
    let connections = Path::new("/sys/fs/fuse/connections");
    if fs::read_dir(connections).map(|mut d| d.next().is_none()).unwrap_or(true) {
        let _ = Command::new("mount").args(["-t", "fusectl", "fusectl"]).arg(connections).status();
    }
    let device = mount::mount_at(mp).ok()??.device;
    let minor = device.split(':').nth(1)?;
    fs::read_to_string(connections.join(minor).join("waiting")).ok()?.trim().parse().ok()
}

fn wait_mounted(mp: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(mount::mount_state(mp).unwrap(), MountState::Mounted { .. }) {
        assert!(Instant::now() < deadline, "not mounted in time");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_successor_adopts_the_mount_of_a_sigkilled_server_without_errors_or_lost_data() {
    let Some(e) = env("sigkill") else { return };
    let big = random(CHUNKS * CHUNK);
    e.put("big", &big);
    let written = Arc::new(random(CHUNKS * CHUNK + 12345));
    let mp = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let state_dir: PathBuf = state.path().join("vol");
    let mut child = Command::new(BIN)
        .arg("mount")
        .arg("--credentials")
        .arg(e.samba.credentials_file())
        .arg("--state-dir")
        .arg(&state_dir)
        .arg(format!("{}/{}", e.samba.unc(), e.dir))
        .arg(mp.path())
        .env_remove("SMB_USERNAME")
        .env_remove("SMB_PASSWORD")
        .stdout(smb3_testkit::run_log::stdio("plugin"))
        .stderr(smb3_testkit::run_log::stdio("plugin"))
        .spawn()
        .unwrap();
    wait_mounted(mp.path());
    let device = dup_fuse_fd(child.id());

    // No pause between chunks: the server is busy with a request of each when it is killed.
    let load = start_load(mp.path(), written.clone(), Duration::ZERO);
    load.wait_progress(10);
    child.kill().unwrap(); // SIGKILL: nothing flushed, answered or unmounted
    let killed = Instant::now();
    child.wait().unwrap();
    let waiting = connection_waiting(mp.path());
    assert!(FuseMount::connection_alive(mp.path()).unwrap(), "our dup keeps the connection alive");
    let journal = fs::read(state_dir.join(smb3_csi::fs::journal::JOURNAL_FILE)).unwrap();
    let password = e.samba.password().expose().as_bytes();
    assert!(!journal.windows(password.len()).any(|w| w == password), "no secret in the journal");

    let _guard = e.rt.enter();
    let opts = MountOptions::default();
    let m = FuseMount::adopt(e.tree.clone(), &e.dir, mp.path(), &opts, device, &state_dir).expect("adopt");
    let adopted = killed.elapsed();
    let (hash, read_wait, write_wait) = load.finish();
    eprintln!(
        "takeover after SIGKILL: {waiting:?} requests waiting in the kernel after the kill; adopted {adopted:?} \
         after the kill; longest wait seen by the reader {read_wait:?}, by the writer {write_wait:?}"
    );
    assert_eq!(hash, sha256(&big), "the reader saw other bytes");
    assert_eq!(e.smbclient_sha256("out"), sha256(&written), "the writer's file differs on the server");
    // The adopted mount serves new work too: a new file, a listing, the journal's nodes.
    fs::write(mp.path().join("after"), b"after takeover").unwrap();
    let mut names: Vec<String> =
        fs::read_dir(mp.path()).unwrap().map(|d| d.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["after", "big", "out"]);
    assert!(m.is_healthy());
    m.unmount().unwrap();
    assert_eq!(mount::mount_state(mp.path()).unwrap(), MountState::NotMounted);
}

#[test]
fn a_graceful_detach_hands_the_mount_over_while_io_runs() {
    let Some(e) = env("detach") else { return };
    let big = random(CHUNKS * CHUNK);
    e.put("big", &big);
    let written = Arc::new(random(CHUNKS * CHUNK + 777));
    let mp = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let _guard = e.rt.enter();
    let opts = MountOptions::default();
    let first = FuseMount::mount_with_state(e.tree.clone(), &e.dir, mp.path(), &opts, Some(state.path())).unwrap();
    let load = start_load(mp.path(), written.clone(), Duration::from_millis(25));
    load.wait_progress(10);

    let device = first.device().try_clone_to_owned().unwrap();
    let t = Instant::now();
    first.detach().expect("detach");
    let detached = t.elapsed();
    assert!(FuseMount::connection_alive(mp.path()).unwrap(), "detach leaves the mount in place");
    let second = FuseMount::adopt(e.tree.clone(), &e.dir, mp.path(), &opts, device, state.path()).expect("adopt");
    let pause = t.elapsed();
    let (hash, read_wait, write_wait) = load.finish();
    eprintln!(
        "graceful handover: detach {detached:?}, detach+adopt {pause:?}; longest wait seen by the reader \
         {read_wait:?}, by the writer {write_wait:?}"
    );
    assert_eq!(hash, sha256(&big));
    assert_eq!(e.smbclient_sha256("out"), sha256(&written));
    assert!(pause < Duration::from_secs(5), "handover took {pause:?}");
    second.unmount().unwrap();
    assert!(!FuseMount::connection_alive(mp.path()).unwrap());
}
