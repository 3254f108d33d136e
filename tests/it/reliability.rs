//! Mounts that never go stale, seen from an application: `dd` and `cat` through a real FUSE mount while the
//! test kit cuts the TCP connection (through its proxy) or stops smbd and starts it again on the same port.
//! The application sees no error, the file is byte-identical (sha256 against what `smbclient` reads), and
//! the reconnect is counted in the driver's metrics. A `soft` mount fails with EIO within its bound while
//! the server is down and works again once it is back; a password rotated on the server and in the
//! `--credentials` file of `smb3-csi mount` is picked up at the next reconnect.
//!
//! Each test prints the longest pause the application saw (`--nocapture`): the longest time the process's
//! I/O counter (`/proc/PID/io`) stood still, the time to its exit included (where `conv=fsync` waits).
//! The transfer size is `SMB3_RELIABILITY_MIB` (default 1536, the 1.5 GiB).
//! Needs root, /dev/fuse and Samba; outside CI a missing piece skips, under CI=true it fails.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use smb3::{Backoff, Client, ClientOptions, Credentials, ObserverHandle, Tree};
use smb3_csi::metrics::Metrics;
use smb3_csi::mount::{self, FuseMount, MountOptions, MountState};
use smb3_testkit::proxy::CorruptingProxy;
use smb3_testkit::running_in_ci;
use smb3_testkit::samba::{Samba, SambaProfile};
use tokio::runtime::Runtime;

const BIN: &str = env!("CARGO_BIN_EXE_smb3-csi");

/// A private Samba of the test's own (it is restarted or re-keyed), or `None` to skip.
fn own_samba() -> Option<Samba> {
    if !(Path::new("/dev/fuse").exists() && nix::unistd::geteuid().is_root()) {
        assert!(!running_in_ci(), "CI=true: /dev/fuse and root are required");
        eprintln!("skipped: needs root and /dev/fuse");
        return None;
    }
    match Samba::start(SambaProfile::EncryptRequired) {
        Ok(s) => Some(s),
        Err(e) if e.is_unavailable() && !running_in_ci() => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("starting Samba: {e}"),
    }
}

fn size_mib() -> usize {
    std::env::var("SMB3_RELIABILITY_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1536)
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// What the driver builds for a volume with these mount options: quick reconnect attempts so that the
/// numbers measure the client, and the driver's metrics as the observer.
fn client_options(opts: &MountOptions, metrics: &Arc<Metrics>) -> ClientOptions {
    let base = ClientOptions {
        observer: ObserverHandle::new(metrics.clone()),
        backoff: Backoff { initial: Duration::from_millis(100), max: Duration::from_millis(500) },
        timeout: Duration::from_secs(20),
        ..Default::default()
    };
    opts.client_options(&base)
}

fn parse(flags: &str) -> MountOptions {
    MountOptions::parse(&[flags.to_string()]).unwrap().0
}

async fn connect(samba: &Samba, port: u16, opts: &ClientOptions) -> (Client, Tree) {
    let creds = Credentials::user(samba.user(), "", samba.password().clone());
    let client = Client::connect(samba.host(), port, &creds, opts).await.expect("connect");
    let tree = client.tree(samba.share_name()).await.expect("tree");
    (client, tree)
}

fn mount(rt: &Runtime, tree: &Tree, dir: &str, opts: &MountOptions) -> (tempfile::TempDir, FuseMount) {
    let mp = tempfile::tempdir().unwrap();
    let _guard = rt.enter();
    let m = FuseMount::mount(tree.clone(), dir, mp.path(), opts).expect("mount");
    (mp, m)
}

/// A local file of `mib` MiB of seeded random bytes, and its sha256.
fn source_file(dir: &Path, mib: usize, seed: u64) -> (PathBuf, String) {
    let path = dir.join("source.bin");
    let mut out = std::io::BufWriter::new(fs::File::create(&path).unwrap());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut hash = Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        rng.fill_bytes(&mut block);
        hash.update(&block);
        out.write_all(&block).unwrap();
    }
    out.flush().unwrap();
    (path, hex::encode(hash.finalize()))
}

fn sha256_file(p: &Path) -> String {
    let mut f = fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// What `smbclient` (another SMB implementation, its own connection) reads of `rel` on the share.
fn smbclient_sha256(samba: &Samba, rel: &str, scratch: &Path) -> String {
    let local = scratch.join("smbclient-copy.bin");
    let remote = rel.replace('/', "\\");
    samba.smbclient(&format!("get \"{remote}\" \"{}\"", local.display())).expect("smbclient get");
    let sum = sha256_file(&local);
    fs::remove_file(&local).unwrap();
    sum
}

/// Bytes the process has read and written so far (`rchar` + `wchar` of /proc/PID/io).
fn io_chars(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0)
    };
    Some(field("rchar:") + field("wchar:"))
}

/// How an application run went: its exit, how long, and the longest time its I/O stood still.
struct Run {
    ok: bool,
    stderr: String,
    elapsed: Duration,
    longest_pause: Duration,
    /// What the process wrote to stdout, hashed (for `cat`).
    stdout_sha256: String,
}

/// Runs `cmd`, sampling its I/O counters every 10 ms; `running` is true while it runs.
fn run_measured(mut cmd: Command, running: &AtomicBool) -> Run {
    let started = Instant::now();
    let mut child: Child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    running.store(true, Ordering::SeqCst);
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let hasher = std::thread::spawn(move || {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => h.update(&buf[..n]),
            }
        }
        hex::encode(h.finalize())
    });
    let (mut last, mut last_change, mut longest) = (0u64, Instant::now(), Duration::ZERO);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            longest = longest.max(last_change.elapsed());
            break status;
        }
        if let Some(now) = io_chars(pid) {
            if now != last {
                longest = longest.max(last_change.elapsed());
                (last, last_change) = (now, Instant::now());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    running.store(false, Ordering::SeqCst);
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    Run {
        ok: status.success(),
        stderr,
        elapsed: started.elapsed(),
        longest_pause: longest,
        stdout_sha256: hasher.join().unwrap(),
    }
}

/// A fault injected while an application runs.
enum Fault {
    /// Cut every proxied connection, `times` times, `every` apart.
    Cut { proxy: Arc<CorruptingProxy>, times: usize, every: Duration },
    /// Stop smbd, wait `down`, start it again on the same port.
    Restart { samba: Samba, down: Duration },
}

/// What the fault thread did: how many connections it cut, and the Samba back (after a restart).
struct Injected {
    cut: usize,
    samba: Option<Samba>,
    server_down: Duration,
}

/// Injects `fault` once the application has run for `after` (and only while it still runs).
fn inject(fault: Fault, running: Arc<AtomicBool>, after: Duration) -> JoinHandle<Injected> {
    std::thread::spawn(move || {
        while !running.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(after);
        match fault {
            Fault::Cut { proxy, times, every } => {
                let mut cut = 0;
                for i in 0..times {
                    if i > 0 {
                        std::thread::sleep(every);
                    }
                    if !running.load(Ordering::SeqCst) {
                        break;
                    }
                    cut += proxy.cut_all();
                }
                Injected { cut, samba: None, server_down: Duration::ZERO }
            }
            Fault::Restart { mut samba, down } => {
                let t = Instant::now();
                samba.stop_server().expect("stop smbd");
                std::thread::sleep(down);
                samba.start_server().expect("start smbd");
                Injected { cut: 0, samba: Some(samba), server_down: t.elapsed() }
            }
        }
    })
}

fn metric(metrics: &Metrics, name: &str) -> f64 {
    let text = metrics.render();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from {text}"))
}

/// `dd bs=1M conv=fsync` of a large file into the mount, then `cat` of it from a fresh mount (so the data
/// comes from the server, not the page cache), each with a fault injected mid-transfer.
fn transfer_under(
    name: &str,
    make_fault: &mut dyn FnMut(&mut Option<Samba>) -> Fault,
    samba_port: u16,
    samba: &mut Option<Samba>,
) {
    let mib = size_mib();
    let rt = runtime();
    let metrics = Arc::new(Metrics::new());
    let opts = parse("echo_interval=2");
    let copts = client_options(&opts, &metrics);
    let s = samba.as_ref().unwrap();
    let (client, tree) = rt.block_on(connect(s, samba_port, &copts));
    let dir = format!("reliab-{name}");
    rt.block_on(tree.mkdir_all(&dir)).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let (source, source_sha) = source_file(scratch.path(), mib, 7);

    // The write.
    let (mp, m) = mount(&rt, &tree, &dir, &opts);
    let running = Arc::new(AtomicBool::new(false));
    let fault = inject(make_fault(samba), running.clone(), Duration::from_millis(1500));
    let mut dd = Command::new("dd");
    dd.arg(format!("if={}", source.display()))
        .arg(format!("of={}", mp.path().join("big.bin").display()))
        .args(["bs=1M", "conv=fsync"]);
    let write = run_measured(dd, &running);
    let injected = fault.join().unwrap();
    if let Some(back) = injected.samba {
        *samba = Some(back);
    }
    assert!(write.ok, "dd failed across the fault: {}", write.stderr);
    let reconnects_write = client.reconnect_count();
    assert!(reconnects_write >= 1, "no reconnect during the write (transfer too fast? {:?})", write.elapsed);
    let s = samba.as_ref().unwrap();
    assert_eq!(smbclient_sha256(s, &format!("{dir}/big.bin"), scratch.path()), source_sha, "server copy differs");
    m.unmount().unwrap();

    // The read, through a new mount: nothing of the file is in its page cache.
    let (mp, m) = mount(&rt, &tree, &dir, &opts);
    let running = Arc::new(AtomicBool::new(false));
    let fault = inject(make_fault(samba), running.clone(), Duration::from_millis(1000));
    let mut cat = Command::new("cat");
    cat.arg(mp.path().join("big.bin"));
    let read = run_measured(cat, &running);
    let injected_read = fault.join().unwrap();
    if let Some(back) = injected_read.samba {
        *samba = Some(back);
    }
    assert!(read.ok, "cat failed across the fault: {}", read.stderr);
    assert_eq!(read.stdout_sha256, source_sha, "cat read different bytes");
    let reconnects_read = client.reconnect_count() - reconnects_write;
    assert!(reconnects_read >= 1, "no reconnect during the read (transfer too fast? {:?})", read.elapsed);
    m.unmount().unwrap();
    assert_eq!(mount::mount_state(mp.path()).unwrap(), MountState::NotMounted);

    // The driver's metrics saw every outage end.
    let reconnects = reconnects_write + reconnects_read;
    assert_eq!(metric(&metrics, "smb3_csi_smb_reconnects_total"), reconnects as f64);
    assert_eq!(metric(&metrics, "smb3_csi_smb_disconnects_total"), reconnects as f64);
    assert_eq!(metric(&metrics, "smb3_csi_smb_outage_seconds_count"), reconnects as f64);
    let outage_sum = metric(&metrics, "smb3_csi_smb_outage_seconds_sum");
    rt.block_on(tree.remove_tree(&dir)).unwrap();
    let mibs = |r: &Run| mib as f64 / r.elapsed.as_secs_f64();
    eprintln!(
        "PAUSES {name} ({mib} MiB): dd bs=1M conv=fsync {:.1?} ({:.0} MiB/s), longest pause {:.2?}, \
         {reconnects_write} reconnects, {} cut, server down {:.1?}; cat {:.1?} ({:.0} MiB/s), longest pause {:.2?}, \
         {reconnects_read} reconnects, {} cut, server down {:.1?}; total outage {outage_sum:.2}s",
        write.elapsed,
        mibs(&write),
        write.longest_pause,
        injected.cut,
        injected.server_down,
        read.elapsed,
        mibs(&read),
        read.longest_pause,
        injected_read.cut,
        injected_read.server_down,
    );
}

#[test]
fn dd_and_cat_survive_cut_connections() {
    let Some(samba) = own_samba() else { return };
    let proxy = Arc::new(CorruptingProxy::start(samba.addr()).expect("proxy"));
    let port = proxy.addr().port();
    let mut make =
        |_: &mut Option<Samba>| Fault::Cut { proxy: proxy.clone(), times: 3, every: Duration::from_millis(1500) };
    transfer_under("cut", &mut make, port, &mut Some(samba));
}

#[test]
fn dd_and_cat_survive_an_smbd_restart() {
    let Some(samba) = own_samba() else { return };
    let port = samba.port();
    // The fault thread takes the Samba for the restart and hands it back when it is up again.
    let mut make = |samba: &mut Option<Samba>| Fault::Restart {
        samba: samba.take().expect("the Samba is back between faults"),
        down: Duration::from_secs(3),
    };
    transfer_under("restart", &mut make, port, &mut Some(samba));
}

#[test]
fn soft_mount_fails_with_eio_within_its_bound_and_recovers() {
    let Some(samba) = own_samba() else { return };
    let mut samba = Some(samba);
    let rt = runtime();
    let metrics = Arc::new(Metrics::new());
    // The bound: retrans x echo_interval = 2 x 2 s.
    let opts = parse("soft,retrans=2,echo_interval=2,actimeo=0");
    let copts = client_options(&opts, &metrics);
    let bound = opts.soft_timeout(&copts).unwrap();
    assert_eq!(bound, Duration::from_secs(4));
    let s = samba.as_ref().unwrap();
    let (client, tree) = rt.block_on(connect(s, s.port(), &copts));
    rt.block_on(tree.mkdir_all("reliab-soft")).unwrap();
    let (mp, m) = mount(&rt, &tree, "reliab-soft", &opts);
    fs::write(mp.path().join("before.txt"), b"written before").unwrap();
    let mut open =
        fs::OpenOptions::new().create(true).truncate(true).write(true).open(mp.path().join("log.txt")).unwrap();
    open.write_all(b"up\n").unwrap();
    open.sync_all().unwrap();

    samba.as_mut().unwrap().stop_server().expect("stop smbd");
    let started = Instant::now();
    // Write-behind accepts the write; fsync is where its failure is reported.
    open.write_all(b"down\n").unwrap();
    let e = open.sync_all().expect_err("a soft mount fails while the server is down");
    let fsync_failed_after = started.elapsed();
    assert_eq!(e.raw_os_error(), Some(libc_eio()), "{e}");
    let started = Instant::now();
    let e = fs::read(mp.path().join("before.txt")).expect_err("reads fail too");
    let read_failed_after = started.elapsed();
    assert_eq!(e.raw_os_error(), Some(libc_eio()), "{e}");
    // Each operation waits the bound on its own: fsync may wait it twice when
    // the kernel first sends the cached write (which fails after the bound)
    // and then the fsync itself (which waits again).
    for (what, after, waits) in [("fsync", fsync_failed_after, 2), ("read", read_failed_after, 1)] {
        assert!(after >= bound - Duration::from_millis(300), "{what} failed before the bound: {after:?}");
        assert!(after < bound * waits + Duration::from_secs(4), "{what} failed long after the bound: {after:?}");
    }
    assert!(!client.connection_state().is_connected());

    samba.as_mut().unwrap().start_server().expect("start smbd");
    let started = Instant::now();
    open.write_all(b"again\n").unwrap();
    open.sync_all().expect("works again once the server is back");
    let recovered_in = started.elapsed();
    assert_eq!(fs::read(mp.path().join("before.txt")).unwrap(), b"written before");
    drop(open);
    let log = fs::read_to_string(mp.path().join("log.txt")).unwrap();
    assert!(log.starts_with("up\n") && log.ends_with("again\n"), "{log:?}");
    assert!(client.connection_state().is_connected());
    assert!(metric(&metrics, "smb3_csi_smb_reconnects_total") >= 1.0);
    m.unmount().unwrap();
    rt.block_on(tree.remove_tree("reliab-soft")).unwrap();
    eprintln!(
        "PAUSES soft mount (bound {bound:?}): fsync failed with EIO after {fsync_failed_after:.2?}, read after \
         {read_failed_after:.2?}; first fsync after smbd was back took {recovered_in:.2?}"
    );
}

fn libc_eio() -> i32 {
    nix::errno::Errno::EIO as i32
}

#[test]
fn cli_mount_picks_up_a_rotated_password_from_its_credentials_file() {
    let Some(mut samba) = own_samba() else { return };
    let proxy = CorruptingProxy::start(samba.addr()).expect("proxy");
    let mp = tempfile::tempdir().unwrap();
    let creds = samba.credentials_file();
    let source = format!("//127.0.0.1:{}/{}", proxy.addr().port(), samba.share_name());
    let mut child = Command::new(BIN)
        .arg("mount")
        .arg("--credentials")
        .arg(&creds)
        .args(["-o", "echo_interval=2"])
        .arg(&source)
        .arg(mp.path())
        .env_remove("SMB_USERNAME")
        .env_remove("SMB_PASSWORD")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(mount::mount_state(mp.path()).unwrap(), MountState::Mounted { .. }) {
        assert!(Instant::now() < deadline, "not mounted in time");
        std::thread::sleep(Duration::from_millis(50));
    }
    let path = mp.path().join("rotation.txt");
    let mut f = fs::OpenOptions::new().create(true).truncate(true).write(true).open(&path).unwrap();
    f.write_all(b"old password\n").unwrap();
    f.sync_all().unwrap();

    // Rotate: the server and the file (the test kit rewrites the credentials file), then lose the connection.
    let old = samba.password().clone();
    let mut new = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut new);
    samba.change_password(smb3::Secret::new(format!("Rotated-{}", hex::encode(new)))).expect("change password");
    assert!(!fs::read_to_string(&creds).unwrap().contains(old.expose()), "the file holds the new password");
    let started = Instant::now();
    assert!(proxy.cut_all() >= 1, "nothing to cut");
    f.write_all(b"new password\n").unwrap();
    f.sync_all().expect("I/O continues with the rotated password");
    let pause = started.elapsed();
    drop(f);
    assert_eq!(fs::read_to_string(&path).unwrap(), "old password\nnew password\n");
    // Another SMB client with the new password sees the same.
    let got = samba.smbclient("get rotation.txt /dev/stdout").unwrap();
    assert!(got.contains("old password\nnew password"), "{got}");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    smb3_testkit::run_log::record("plugin", &err);
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("re-read the credentials file"), "{err}");
    assert!(err.contains("SMB connection re-established"), "{err}");
    for secret in [old.expose(), samba.password().expose()] {
        assert!(!err.contains(secret), "a password in the output: {err}");
    }
    eprintln!("PAUSES password rotation (smb3-csi mount --credentials): write + fsync blocked {pause:.2?} across the reconnect");
}
