//! File semantics shared across nodes, at the filesystem layer without FUSE: two `SmbFs` over two separate SMB
//! connections to one share stand in for two nodes mounting the same volume. Locks (fcntl ranges and flock)
//! conflict across them through the server and are released on close; I/O of a node is not blocked by its own
//! locks held through another handle; a lock wait can be interrupted. Leases: a write-caching break flushes
//! write-behind before the other node's open returns; a re-open under read+handle caching makes no round
//! trip until a break. statfs agrees across nodes; a full share is ENOSPC. Outside CI a missing Samba skips;
//! under CI=true it fails.

use crate::common::connect;
use std::ffi::OsStr;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use rand::RngCore;
use smb3::{Client, Tree};
use smb3_csi::fs::{Errno, FsConfig, LockKind, LockOwner, SmbFs, ROOT_INO};
use smb3_testkit::samba::{Samba, SambaProfile};
use tokio::runtime::Handle;

/// End of file as FUSE sends it (OFFSET_MAX) for "to the end".
const EOF: u64 = i64::MAX as u64;
const RW: i32 = OFlag::O_RDWR.bits();
const CREATE_RW: i32 = OFlag::O_RDWR.bits() | OFlag::O_CREAT.bits();

/// Two "nodes": filesystems on separate connections with the same directory of the share as their root.
struct TwoNodes {
    a: SmbFs,
    b: SmbFs,
    dir: String,
    tree: Tree,
    _clients: (Client, Client),
}

async fn two_nodes(samba: &Samba, test: &str, cfg: FsConfig) -> TwoNodes {
    two_nodes_observed(samba, test, cfg, smb3::ObserverHandle::default()).await
}

/// Two nodes, the first one's SMB traffic seen by `observer`.
async fn two_nodes_observed(samba: &Samba, test: &str, cfg: FsConfig, observer: smb3::ObserverHandle) -> TwoNodes {
    let creds = smb3::Credentials::user(samba.user(), "", samba.password().clone());
    let opts = smb3::ClientOptions { observer, ..smb3::ClientOptions::default() };
    let ca = Client::connect(samba.host(), samba.port(), &creds, &opts).await.expect("connect");
    let ta = ca.tree(samba.share_name()).await.expect("tree");
    let (cb, tb) = connect(samba).await;
    let dir = format!("fssem-{test}-{}", rand::thread_rng().next_u32());
    ta.mkdir_all(&dir).await.unwrap();
    let a = SmbFs::new(ta.clone(), &dir, cfg.clone(), Handle::current());
    let b = SmbFs::new(tb, &dir, cfg, Handle::current());
    TwoNodes { a, b, dir, tree: ta, _clients: (ca, cb) }
}

fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Opens `n` on a node (creating it); returns (ino, fh).
async fn open(fs: &SmbFs, n: &str) -> (u64, u64) {
    match fs.lookup(ROOT_INO, name(n)).await {
        Ok(attr) => (attr.ino, fs.open(attr.ino, RW).await.unwrap()),
        Err(_) => {
            let (attr, fh) = fs.create(ROOT_INO, name(n), CREATE_RW).await.unwrap();
            (attr.ino, fh)
        }
    }
}

async fn setlk(
    fs: &SmbFs,
    (ino, fh): (u64, u64),
    owner: LockOwner,
    range: (u64, u64),
    kind: Option<LockKind>,
) -> Result<(), Errno> {
    fs.setlk(ino, fh, owner, 1, range, kind, false, std::future::pending()).await
}

/// Retries `op` while it fails with EAGAIN, for up to 3 s (an SMB handle closes in the background after its
/// release, and its locks go with that CLOSE).
async fn eventually<T, F: std::future::Future<Output = Result<T, Errno>>>(op: impl Fn() -> F) -> Result<T, Errno> {
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        match op().await {
            Err(Errno::EAGAIN) if Instant::now() < until => tokio::time::sleep(Duration::from_millis(50)).await,
            r => return r,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcntl_ranges_and_flock_conflict_across_nodes() {
    let samba = samba!();
    let n = two_nodes(samba, "locks", FsConfig::default()).await;
    let fa = open(&n.a, "db").await;
    let fb = open(&n.b, "db").await;
    let (pa, pb) = (LockOwner::Posix(11), LockOwner::Posix(22));

    // Exclusive range on A: B's overlapping lock of either kind is EAGAIN, a disjoint one is granted.
    setlk(&n.a, fa, pa, (0, 99), Some(LockKind::Exclusive)).await.unwrap();
    assert_eq!(setlk(&n.b, fb, pb, (50, 59), Some(LockKind::Shared)).await, Err(Errno::EAGAIN));
    setlk(&n.b, fb, pb, (100, 199), Some(LockKind::Exclusive)).await.unwrap();
    // F_GETLK on B sees A's lock through the server (pid 0: held elsewhere); on A, B's.
    let c = n.b.getlk(fb.0, fb.1, pb, (10, 10), LockKind::Shared).await.unwrap().expect("conflict");
    assert_eq!((c.kind, c.pid), (LockKind::Exclusive, 0));
    assert!(n.a.getlk(fa.0, fa.1, pa, (150, 150), LockKind::Shared).await.unwrap().is_some());
    assert_eq!(n.a.getlk(fa.0, fa.1, pa, (300, 400), LockKind::Exclusive).await.unwrap(), None);

    // POSIX unlock of the middle splits A's lock: B gets the hole, not the rest.
    setlk(&n.a, fa, pa, (40, 59), None).await.unwrap();
    setlk(&n.b, fb, pb, (45, 50), Some(LockKind::Exclusive)).await.unwrap();
    assert_eq!(setlk(&n.b, fb, pb, (30, 39), Some(LockKind::Shared)).await, Err(Errno::EAGAIN));
    assert_eq!(setlk(&n.b, fb, pb, (60, 61), Some(LockKind::Shared)).await, Err(Errno::EAGAIN));

    // Downgrade to shared: B may share, not take exclusively; then unlock everything.
    setlk(&n.a, fa, pa, (0, EOF), None).await.unwrap();
    setlk(&n.b, fb, pb, (0, EOF), None).await.unwrap();
    setlk(&n.a, fa, pa, (0, 99), Some(LockKind::Exclusive)).await.unwrap();
    setlk(&n.a, fa, pa, (0, 99), Some(LockKind::Shared)).await.unwrap();
    setlk(&n.b, fb, pb, (0, 9), Some(LockKind::Shared)).await.unwrap();
    assert_eq!(setlk(&n.b, fb, pb, (20, 29), Some(LockKind::Exclusive)).await, Err(Errno::EAGAIN));
    // Upgrade on A fails while B shares, and A keeps its shared lock.
    assert_eq!(setlk(&n.a, fa, pa, (0, 9), Some(LockKind::Exclusive)).await, Err(Errno::EAGAIN));
    assert_eq!(setlk(&n.b, fb, pb, (50, 59), Some(LockKind::Exclusive)).await, Err(Errno::EAGAIN));
    setlk(&n.b, fb, pb, (0, EOF), None).await.unwrap();
    setlk(&n.a, fa, pa, (0, EOF), None).await.unwrap();

    // flock: whole file, per open file description.
    let (fla, flb) = (LockOwner::Flock(fa.1), LockOwner::Flock(fb.1));
    setlk(&n.a, fa, fla, (0, EOF), Some(LockKind::Exclusive)).await.unwrap();
    assert_eq!(setlk(&n.b, fb, flb, (0, EOF), Some(LockKind::Exclusive)).await, Err(Errno::EAGAIN));
    assert_eq!(setlk(&n.b, fb, flb, (0, EOF), Some(LockKind::Shared)).await, Err(Errno::EAGAIN));
    setlk(&n.a, fa, fla, (0, EOF), Some(LockKind::Shared)).await.unwrap();
    setlk(&n.b, fb, flb, (0, EOF), Some(LockKind::Shared)).await.unwrap();
    setlk(&n.b, fb, flb, (0, EOF), None).await.unwrap();

    // Released on close: once A's handle is closed (in the background after release), B gets the lock.
    n.a.release(fa.1).await;
    eventually(|| setlk(&n.b, fb, flb, (0, EOF), Some(LockKind::Exclusive))).await.unwrap();
    n.b.release(fb.1).await;
    n.tree.remove_tree(&n.dir).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_waits_are_granted_on_release_and_interruptible() {
    let samba = samba!();
    let n = two_nodes(samba, "lockwait", FsConfig::default()).await;
    let fa = open(&n.a, "f").await;
    let fb = open(&n.b, "f").await;
    let (pa, pb) = (LockOwner::Posix(1), LockOwner::Posix(2));
    setlk(&n.a, fa, pa, (0, EOF), Some(LockKind::Exclusive)).await.unwrap();

    // F_SETLKW on B waits (a blocking SMB lock) until A closes its handle.
    let started = Instant::now();
    let wait_b = n.b.setlk(fb.0, fb.1, pb, 2, (0, 0), Some(LockKind::Exclusive), true, std::future::pending());
    let (got, ()) = tokio::join!(wait_b, async {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        n.a.release(fa.1).await;
    });
    got.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1100));

    // Interrupted (the FUSE INTERRUPT of a signal): EINTR, and nothing left waiting on the server.
    let fa = open(&n.a, "f").await;
    let started = Instant::now();
    let r = n
        .a
        .setlk(fa.0, fa.1, pa, 1, (0, 0), Some(LockKind::Shared), true, tokio::time::sleep(Duration::from_millis(600)))
        .await;
    assert_eq!(r, Err(Errno::EINTR));
    assert!(started.elapsed() < Duration::from_secs(5));
    setlk(&n.b, fb, pb, (0, EOF), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    setlk(&n.b, fb, pb, (0, EOF), Some(LockKind::Exclusive)).await.unwrap();

    // Two owners on one node: decided locally; the waiter is woken by the local unlock.
    let fb2 = open(&n.b, "f").await;
    let p3 = LockOwner::Posix(3);
    assert_eq!(setlk(&n.b, fb2, p3, (0, 0), Some(LockKind::Shared)).await, Err(Errno::EAGAIN));
    let wait_local = n.b.setlk(fb2.0, fb2.1, p3, 3, (0, 0), Some(LockKind::Shared), true, std::future::pending());
    let (got, ()) = tokio::join!(wait_local, async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        setlk(&n.b, fb, pb, (0, EOF), None).await.unwrap();
    });
    got.unwrap();
    n.b.release(fb2.1).await;
    n.b.release(fb.1).await;
    n.a.release(fa.1).await;
    n.tree.remove_tree(&n.dir).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_own_locks_do_not_block_its_io_and_nobrl_stays_local() {
    let samba = samba!();
    let n = two_nodes(samba, "lockio", FsConfig::default()).await;
    let f1 = open(&n.a, "data").await;
    let w = n.a.write(f1.1, 0, vec![b'x'; 100]).await.unwrap();
    w.complete().await;
    n.a.flush(f1.1).await.unwrap();
    setlk(&n.a, f1, LockOwner::Posix(1), (0, 99), Some(LockKind::Exclusive)).await.unwrap();
    // Another handle of the same node (another process) reads and writes the locked range: advisory locally.
    let f2 = n.a.open(f1.0, RW).await.unwrap();
    assert_eq!(n.a.read(f2, 0, 10).await.unwrap(), vec![b'x'; 10]);
    let w = n.a.write(f2, 0, b"yy".to_vec()).await.unwrap();
    w.complete().await;
    n.a.flush(f2).await.unwrap();
    assert_eq!(n.a.read(f2, 0, 3).await.unwrap(), &b"yyx"[..]);
    // The other node's I/O hits the server's mandatory lock.
    let fb = open(&n.b, "data").await;
    assert_eq!(n.b.read(fb.1, 0, 10).await, Err(Errno::EAGAIN));
    n.a.release(f2).await;
    n.a.release(f1.1).await;
    assert_eq!(eventually(|| n.b.read(fb.1, 0, 3)).await.unwrap(), &b"yyx"[..]);
    n.b.release(fb.1).await;

    // nobrl: locks stay on the node that took them.
    let cfg = FsConfig { byte_range_locks: false, ..FsConfig::default() };
    let m = two_nodes(samba, "nobrl", cfg).await;
    let fa = open(&m.a, "f").await;
    let fb = open(&m.b, "f").await;
    setlk(&m.a, fa, LockOwner::Posix(1), (0, EOF), Some(LockKind::Exclusive)).await.unwrap();
    setlk(&m.b, fb, LockOwner::Posix(2), (0, EOF), Some(LockKind::Exclusive)).await.unwrap();
    let fa2 = open(&m.a, "f").await;
    assert_eq!(setlk(&m.a, fa2, LockOwner::Posix(3), (0, 0), Some(LockKind::Shared)).await, Err(Errno::EAGAIN));
    for (fs, fh) in [(&m.a, fa.1), (&m.a, fa2.1), (&m.b, fb.1)] {
        fs.release(fh).await;
    }
    n.tree.remove_tree(&n.dir).await.unwrap();
    m.tree.remove_tree(&m.dir).await.unwrap();
}

/// Records the inodes whose caches a lease break told the FUSE layer to drop.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<u64>>);

impl smb3_csi::fs::Invalidator for Recorder {
    fn invalidate(&self, ino: u64) {
        self.0.lock().unwrap().push(ino);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_breaks_invalidate_before_the_ack() {
    let samba = samba!();
    let n = two_nodes(samba, "lease", FsConfig::default()).await;
    let recorder = std::sync::Arc::new(Recorder::default());
    n.b.set_invalidator(recorder.clone());

    // B's write reaches the server before A opens (A's open breaks B's write caching anyway: see
    // `write_behind_reaches_the_server_before_a_write_caching_break_is_acknowledged`), so A's open reads it.
    let fb = open(&n.b, "shared.txt").await;
    n.b.write(fb.1, 0, b"from B".to_vec()).await.unwrap().complete().await;
    let fa = open(&n.a, "shared.txt").await;
    assert_eq!(n.a.read(fa.1, 0, 100).await.unwrap(), &b"from B"[..]);

    // B has the file open (for reading, say) and A writes: the server breaks B's read caching, and B drops
    // what the kernel caches of that inode.
    recorder.0.lock().unwrap().clear();
    let w = n.a.write(fa.1, 0, b"from A".to_vec()).await.unwrap();
    w.complete().await;
    n.a.flush(fa.1).await.unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while !recorder.0.lock().unwrap().contains(&fb.0) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recorder.0.lock().unwrap().contains(&fb.0), "no invalidation of B's inode after A's write");
    assert_eq!(n.b.read(fb.1, 0, 100).await.unwrap(), &b"from A"[..]);
    n.a.release(fa.1).await;
    n.b.release(fb.1).await;
    n.tree.remove_tree(&n.dir).await.unwrap();
}

/// Write caching (the R+W+H lease every open asks for): the first node to open a file gets it, so its writes may
/// stay behind; another node's open breaks it, and the holder sends what it holds back before it acknowledges,
/// so the other node's open returns after the write and reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_reaches_the_server_before_a_write_caching_break_is_acknowledged() {
    let samba = samba!();
    let n = two_nodes(samba, "wlease", FsConfig::default()).await;
    let fa = open(&n.a, "data").await;
    let w = n.a.write(fa.1, 0, b"written on A".to_vec()).await.unwrap();
    // The write stays queued for 700 ms (the FUSE layer sends it at once; a slow link is what this stands for).
    let held = Duration::from_millis(700);
    let sent = tokio::spawn(async move {
        tokio::time::sleep(held).await;
        w.complete().await;
    });
    let started = Instant::now();
    let fb = open(&n.b, "data").await;
    let waited = started.elapsed();
    assert!(waited >= held - Duration::from_millis(200), "B's open did not wait for A's flush ({waited:?})");
    assert_eq!(n.b.read(fb.1, 0, 100).await.unwrap(), &b"written on A"[..]);
    sent.await.unwrap();

    // Now neither holds write caching: B's write is on the server when it completes, and A reads it.
    n.b.write(fb.1, 0, b"WRITTEN".to_vec()).await.unwrap().complete().await;
    assert_eq!(n.a.read(fa.1, 0, 100).await.unwrap(), &b"WRITTEN on A"[..]);
    n.a.release(fa.1).await;
    n.b.release(fb.1).await;
    n.tree.remove_tree(&n.dir).await.unwrap();
}

/// statfs is the server's answer for the share: the same on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statfs_is_the_same_on_every_node() {
    let samba = samba!();
    let n = two_nodes(samba, "statfs", FsConfig::default()).await;
    let (a, b) = (n.a.statfs().await.unwrap(), n.b.statfs().await.unwrap());
    assert_eq!((a.blocks, a.bsize, a.namelen), (b.blocks, b.bsize, b.namelen));
    // Free space moves with whatever else writes to that disk meanwhile: within 1% of its size.
    assert!(a.bfree.abs_diff(b.bfree) <= a.blocks / 100, "{a:?} / {b:?}");
    n.tree.remove_tree(&n.dir).await.unwrap();
}

/// A full share is ENOSPC (Samba answers STATUS_DISK_FULL), reported by the write or flush (close) that
/// follows the write-behind that hit it, not EIO. The full disk is a 256 KiB tmpfs mounted inside the share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_share_is_enospc() {
    let samba = samba!();
    if !nix::unistd::geteuid().is_root() {
        assert!(!smb3_testkit::running_in_ci(), "CI=true: root is required to mount the small disk");
        eprintln!("skipped: needs root");
        return;
    }
    let n = two_nodes(samba, "full", FsConfig::default()).await;
    let disk = samba.share_path().join(&n.dir).join("small");
    std::fs::create_dir(&disk).unwrap();
    nix::mount::mount(Some("tmpfs"), &disk, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=256k"))
        .expect("mount a tmpfs");
    let small = n.a.lookup(ROOT_INO, name("small")).await.unwrap();
    let (_, fh) = n.a.create(small.ino, name("big"), CREATE_RW).await.unwrap();
    let mut failed = None;
    for i in 0..8u64 {
        match n.a.write(fh, i * 65536, vec![7u8; 65536]).await {
            Ok(w) => w.complete().await,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let failed = failed.or(n.a.flush(fh).await.err());
    assert_eq!(failed, Some(Errno::ENOSPC), "512 KiB into a 256 KiB disk");
    n.a.release(fh).await;
    nix::mount::umount2(&disk, nix::mount::MntFlags::MNT_DETACH).unwrap();
    // The mount point is root's: removed on the disk.
    std::fs::remove_dir_all(samba.share_path().join(&n.dir)).unwrap();
}

/// Counts a client's CREATE round trips.
#[derive(Default)]
struct Creates(std::sync::atomic::AtomicU64);

impl smb3::Observer for Creates {
    fn round_trip(&self, command: smb3::wire::Command, _elapsed: Duration) {
        if command == smb3::wire::Command::Create {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// A re-open of a file the node has open, under a lease that still caches reads and handles, is served from
/// the open SMB handle (no CREATE); its locks are the server's and go when it is released though the SMB
/// handle stays open; once another node's write breaks read caching, the next open goes to the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopen_under_a_read_and_handle_lease_makes_no_round_trip_until_a_break() {
    let samba = samba!();
    let creates = std::sync::Arc::new(Creates::default());
    let n = two_nodes_observed(samba, "reopen", FsConfig::default(), smb3::ObserverHandle::new(creates.clone())).await;
    let count = || creates.0.load(std::sync::atomic::Ordering::SeqCst);
    let recorder = std::sync::Arc::new(Recorder::default());
    n.a.set_invalidator(recorder.clone());
    let fa = open(&n.a, "f").await;
    n.a.write(fa.1, 0, b"v1".to_vec()).await.unwrap().complete().await;

    let before = count();
    let r1 = n.a.open(fa.0, OFlag::O_RDONLY.bits()).await.unwrap();
    let r2 = n.a.open(fa.0, RW).await.unwrap();
    assert_eq!(count(), before, "re-opens under the lease went to the server");
    assert_eq!(n.a.read(r1, 0, 10).await.unwrap(), &b"v1"[..]);

    // B's open breaks only A's write caching: A keeps read and handle caching, and re-opens stay local.
    let fb = open(&n.b, "f").await;
    let before = count();
    let r3 = n.a.open(fa.0, OFlag::O_RDONLY.bits()).await.unwrap();
    assert_eq!(count(), before, "read and handle caching held: the re-open needs no round trip");
    n.a.release(r3).await;

    // B writes: the server breaks A's read caching (A invalidates), and A's next open goes to the server.
    n.b.write(fb.1, 0, b"v2".to_vec()).await.unwrap().complete().await;
    let until = Instant::now() + Duration::from_secs(5);
    while !recorder.0.lock().unwrap().contains(&fa.0) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recorder.0.lock().unwrap().contains(&fa.0), "no break of A's read caching after B's write");
    let before = count();
    let r4 = n.a.open(fa.0, OFlag::O_RDONLY.bits()).await.unwrap();
    assert_eq!(count(), before + 1, "a re-open after the break must go to the server");
    assert_eq!(n.a.read(r4, 0, 10).await.unwrap(), &b"v2"[..]);

    // A flock taken through a served re-open is on the server, and goes when that re-open is released,
    // though the SMB handle stays open for the others.
    let (fla, flb) = (LockOwner::Flock(r2), LockOwner::Flock(fb.1));
    setlk(&n.a, (fa.0, r2), fla, (0, EOF), Some(LockKind::Exclusive)).await.unwrap();
    assert_eq!(setlk(&n.b, fb, flb, (0, EOF), Some(LockKind::Exclusive)).await, Err(Errno::EAGAIN));
    n.a.release(r2).await;
    setlk(&n.b, fb, flb, (0, EOF), Some(LockKind::Exclusive)).await.unwrap();
    setlk(&n.b, fb, flb, (0, EOF), None).await.unwrap();
    assert_eq!(n.a.read(r1, 0, 10).await.unwrap(), &b"v2"[..]);
    for fh in [r1, r4, fa.1] {
        n.a.release(fh).await;
    }
    n.b.release(fb.1).await;
    n.tree.remove_tree(&n.dir).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o_append_writers_on_two_nodes_lose_no_line() {
    let samba = samba!();
    let n = two_nodes(samba, "append", FsConfig::default()).await;
    let append = OFlag::O_WRONLY.bits() | OFlag::O_APPEND.bits();
    let (attr, fh) = n.a.create(ROOT_INO, name("log"), CREATE_RW | OFlag::O_APPEND.bits()).await.unwrap();
    n.a.release(fh).await;
    let ino_b = n.b.lookup(ROOT_INO, name("log")).await.unwrap().ino;
    let (fa, fb) = (n.a.open(attr.ino, append).await.unwrap(), n.b.open(ino_b, append).await.unwrap());
    // Each node's kernel would compute the offset from its own (stale) idea of the size: here always 0.
    let writer = |fs: &'static SmbFs, fh: u64, tag: &'static str| async move {
        for i in 0..50 {
            let line = format!("{tag} {i:03}\n").into_bytes();
            fs.write(fh, 0, line).await.unwrap().complete().await;
        }
        fs.flush(fh).await.unwrap();
    };
    // 'static for the spawned writers: the nodes live until the end of the test anyway.
    let n: &'static TwoNodes = Box::leak(Box::new(n));
    let (ra, rb) = tokio::join!(tokio::spawn(writer(&n.a, fa, "A")), tokio::spawn(writer(&n.b, fb, "B")));
    ra.unwrap();
    rb.unwrap();
    let fr = n.a.open(attr.ino, OFlag::O_RDONLY.bits()).await.unwrap();
    let text = String::from_utf8(n.a.read(fr, 0, 1 << 20).await.unwrap().to_vec()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 100, "{text}");
    for tag in ["A", "B"] {
        let mine: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with(tag)).collect();
        let expected: Vec<String> = (0..50).map(|i| format!("{tag} {i:03}")).collect();
        assert_eq!(mine, expected, "{tag}'s lines lost or reordered");
    }
    for (fs, fh) in [(&n.a, fa), (&n.a, fr), (&n.b, fb)] {
        fs.release(fh).await;
    }
    n.tree.remove_tree(&n.dir).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_on_the_servers_disk_show_as_their_targets() {
    let samba = samba!();
    let cfg = FsConfig { mfsymlinks: true, ..FsConfig::default() };
    let n = two_nodes(samba, "srvlink", cfg).await;
    // What an administrator (or another protocol) leaves on the share's disk: a real symlink.
    let disk = samba.share_path().join(&n.dir);
    std::fs::write(disk.join("target.txt"), b"on disk").unwrap();
    std::fs::create_dir(disk.join("subdir")).unwrap();
    std::os::unix::fs::symlink("target.txt", disk.join("filelink")).unwrap();
    std::os::unix::fs::symlink("subdir", disk.join("dirlink")).unwrap();
    // Samba follows them (`follow symlinks = yes`, its default) and reports no reparse point: the link is
    // what it points to, for us as for any SMB client.
    let f = n.a.lookup(ROOT_INO, name("filelink")).await.unwrap();
    assert_eq!((f.kind, f.size), (smb3_csi::fs::FileKind::RegularFile, 7));
    let d = n.a.lookup(ROOT_INO, name("dirlink")).await.unwrap();
    assert_eq!(d.kind, smb3_csi::fs::FileKind::Directory);
    let m = n.tree.stat(&format!("{}/filelink", n.dir)).await.unwrap();
    assert_eq!(m.attributes & smb3::wire::create::attributes::REPARSE_POINT, 0);
    let fh = n.a.open(f.ino, OFlag::O_RDONLY.bits()).await.unwrap();
    assert_eq!(n.a.read(fh, 0, 100).await.unwrap(), &b"on disk"[..]);
    n.a.release(fh).await;

    // A Minshall+French link made through one node reads on the other; its server file is the XSym format.
    let l = n.a.symlink(ROOT_INO, name("mflink"), name("target.txt")).await.unwrap();
    assert_eq!((l.kind, l.size, l.perm), (smb3_csi::fs::FileKind::Symlink, 10, 0o777));
    let lb = n.b.lookup(ROOT_INO, name("mflink")).await.unwrap();
    assert_eq!(lb.kind, smb3_csi::fs::FileKind::Symlink);
    assert_eq!(n.b.readlink(lb.ino).await.unwrap(), b"target.txt");
    assert_eq!(n.b.getattr(lb.ino, None).await.unwrap().kind, smb3_csi::fs::FileKind::Symlink);
    let raw = std::fs::read(disk.join("mflink")).unwrap();
    assert!(raw.len() == 1067 && raw.starts_with(b"XSym\n0010\n"));
    let plain = n.b.lookup(ROOT_INO, name("filelink")).await.unwrap();
    assert_eq!(n.b.readlink(plain.ino).await, Err(Errno::EINVAL));
    assert_eq!(n.a.symlink(ROOT_INO, name("mflink"), name("x")).await.unwrap_err(), Errno::EEXIST);
    // Samba refuses to delete a link it follows: removed on the disk, once smbd has nothing open there (the
    // lingering handles closed). Removed under smbd's open files, another test's new file later showed in
    // `smbstatus -L` under this test's name "filelink".
    n.a.close_all();
    n.b.close_all();
    assert!(within(3, || open_on_server(samba, &n.dir).is_empty()).await, "{:?}", open_on_server(samba, &n.dir));
    std::fs::remove_dir_all(&disk).unwrap();
}

/// Counts a client's CREATE and CLOSE round trips.
#[derive(Default)]
struct OpensAndCloses {
    creates: std::sync::atomic::AtomicU64,
    closes: std::sync::atomic::AtomicU64,
}

impl smb3::Observer for OpensAndCloses {
    fn round_trip(&self, command: smb3::wire::Command, _elapsed: Duration) {
        use std::sync::atomic::Ordering::SeqCst;
        match command {
            smb3::wire::Command::Create => self.creates.fetch_add(1, SeqCst),
            smb3::wire::Command::Close => self.closes.fetch_add(1, SeqCst),
            _ => 0,
        };
    }
}

impl OpensAndCloses {
    fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::SeqCst;
        (self.creates.load(SeqCst), self.closes.load(SeqCst))
    }
}

/// The files Samba has open under `dir` (`smbstatus -L`), one line each.
fn open_on_server(samba: &Samba, dir: &str) -> Vec<String> {
    let out =
        std::process::Command::new("smbstatus").arg("-s").arg(samba.conf_path()).arg("-L").output().expect("smbstatus");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(dir)).map(str::to_string).collect()
}

/// Waits up to `secs` for `done`.
async fn within(secs: u64, done: impl Fn() -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(secs);
    while !done() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

/// Creates `n` under directory `parent` on a node, writes `data` and releases it; returns its inode.
async fn write_and_release(fs: &SmbFs, parent: u64, n: &str, data: &[u8]) -> u64 {
    let (attr, fh) = fs.create(parent, name(n), CREATE_RW | OFlag::O_TRUNC.bits()).await.unwrap();
    fs.write(fh, 0, data.to_vec()).await.unwrap().complete().await;
    fs.flush(fh).await.unwrap();
    fs.release(fh).await;
    attr.ino
}

/// Deferred close: after the last release the SMB handle lingers (the server still has the file open), a
/// re-open within closetimeo makes no CREATE and reads the data, and the handle closes by itself once
/// closetimeo has passed (a CLOSE, nothing open on the server); the next open goes to the server again.
/// closetimeo=0: every re-open goes to the server, and nothing stays open after a release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_last_release_a_reopen_within_closetimeo_makes_no_round_trip() {
    let samba = samba!();
    let counts = std::sync::Arc::new(OpensAndCloses::default());
    let n = two_nodes_observed(samba, "linger", FsConfig::default(), smb3::ObserverHandle::new(counts.clone())).await;
    let ino = write_and_release(&n.a, ROOT_INO, "f", b"lingering").await;
    assert_eq!(n.a.lingering_handles(), 1);
    // The handle and its guard.
    let lingering_on_server = || open_on_server(samba, &n.dir).len() == 2;
    assert!(within(3, lingering_on_server).await, "the lingering handle is not open on the server");
    for _ in 0..3 {
        let before = counts.counts();
        let started = Instant::now();
        let fh = n.a.open(ino, OFlag::O_RDONLY.bits()).await.unwrap();
        let reopen = started.elapsed();
        assert_eq!(counts.counts().0, before.0, "a re-open within closetimeo went to the server");
        assert_eq!(n.a.read(fh, 0, 100).await.unwrap(), &b"lingering"[..]);
        let started = Instant::now();
        n.a.release(fh).await;
        eprintln!(
            "re-open from the lingering handle: {reopen:?}; release (the guard's CREATE): {:?}",
            started.elapsed()
        );
        assert_eq!(n.a.lingering_handles(), 1);
    }
    // closetimeo (1 s) passes: the handle closes by itself.
    let closes = counts.counts().1;
    assert!(within(3, || n.a.lingering_handles() == 0).await, "the lingering handle outlived closetimeo");
    assert!(within(1, || counts.counts().1 > closes).await, "no CLOSE after closetimeo");
    assert!(open_on_server(samba, &n.dir).is_empty(), "{:?}", open_on_server(samba, &n.dir));
    let before = counts.counts().0;
    let fh = n.a.open(ino, OFlag::O_RDONLY.bits()).await.unwrap();
    assert_eq!(counts.counts().0, before + 1, "after closetimeo a re-open goes to the server");
    n.a.release(fh).await;
    n.a.close_all();

    // closetimeo=0: today's behaviour.
    let counts = std::sync::Arc::new(OpensAndCloses::default());
    let cfg = FsConfig { close_timeout: Duration::ZERO, ..FsConfig::default() };
    let m = two_nodes_observed(samba, "nolinger", cfg, smb3::ObserverHandle::new(counts.clone())).await;
    let ino = write_and_release(&m.a, ROOT_INO, "f", b"closed").await;
    assert_eq!(m.a.lingering_handles(), 0);
    assert!(open_on_server(samba, &m.dir).is_empty(), "closetimeo=0 keeps nothing open");
    for _ in 0..2 {
        let before = counts.counts().0;
        let fh = m.a.open(ino, OFlag::O_RDONLY.bits()).await.unwrap();
        assert_eq!(counts.counts().0, before + 1, "closetimeo=0: every re-open goes to the server");
        assert_eq!(m.a.read(fh, 0, 100).await.unwrap(), &b"closed"[..]);
        m.a.release(fh).await;
    }
    n.tree.remove_tree(&n.dir).await.unwrap();
    m.tree.remove_tree(&m.dir).await.unwrap();
}

/// A lock is gone at close(2) though the SMB handle lingers: the same node's next open, served by the
/// lingering handle, takes the lock at once (flock in a loop: the lock of the previous round must not stand in
/// its way on that handle), and so does another node right after the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_is_free_at_close_though_the_handle_lingers() {
    let samba = samba!();
    let n = two_nodes(samba, "lingerlock", FsConfig::default()).await;
    let ino = write_and_release(&n.a, ROOT_INO, "lock", b"").await;
    for round in 0..3 {
        let fh = n.a.open(ino, OFlag::O_RDWR.bits()).await.unwrap();
        assert_eq!(n.a.lingering_handles(), 0, "round {round}: the open was not served by the lingering handle");
        setlk(&n.a, (ino, fh), LockOwner::Flock(fh), (0, EOF), Some(LockKind::Exclusive)).await.unwrap();
        n.a.release(fh).await;
        assert_eq!(n.a.lingering_handles(), 1);
    }
    let fb = open(&n.b, "lock").await;
    setlk(&n.b, fb, LockOwner::Flock(fb.1), (0, EOF), Some(LockKind::Exclusive)).await.unwrap();
    n.b.release(fb.1).await;
    n.a.close_all();
    n.b.close_all();
    n.tree.remove_tree(&n.dir).await.unwrap();
}

/// At most `max_lingering` handles linger; a release beyond that closes its handle as without deferred close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_handles_linger_than_the_limit() {
    let samba = samba!();
    let cfg = FsConfig { max_lingering: 2, close_timeout: Duration::from_secs(60), ..FsConfig::default() };
    let n = two_nodes(samba, "lingermax", cfg).await;
    for (i, f) in ["a", "b", "c", "d"].into_iter().enumerate() {
        write_and_release(&n.a, ROOT_INO, f, b"data").await;
        assert_eq!(n.a.lingering_handles(), (i + 1).min(2), "after {f}");
    }
    // Two files, each with its guard.
    assert!(within(3, || open_on_server(samba, &n.dir).len() == 4).await, "{:?}", open_on_server(samba, &n.dir));
    n.a.close_all();
    n.tree.remove_tree(&n.dir).await.unwrap();
}

/// Another node's `rm` and `mv` right after this node's last release: the lingering handle's guard shares no
/// delete, so the server breaks their lease, both close, and the rm or mv goes through at once; the name is gone for
/// both nodes and for smbclient, and the other node can remove the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_nodes_rm_and_mv_right_after_the_last_release_go_through() {
    let samba = samba!();
    let n = two_nodes(samba, "lingerrm", FsConfig::default()).await;
    for (round, op) in ["rm", "mv"].into_iter().enumerate() {
        let sub = format!("sub{round}");
        let dir_a = n.a.mkdir(ROOT_INO, name(&sub)).await.unwrap().ino;
        write_and_release(&n.a, dir_a, "f", b"data").await;
        assert_eq!(n.a.lingering_handles(), 1);
        let dir_b = n.b.lookup(ROOT_INO, name(&sub)).await.unwrap().ino;
        n.b.lookup(dir_b, name("f")).await.unwrap();
        let started = Instant::now();
        match op {
            "rm" => n.b.unlink(dir_b, name("f")).await.unwrap(),
            _ => n.b.rename(dir_b, name("f"), ROOT_INO, name("moved"), 0).await.unwrap(),
        }
        let took = started.elapsed();
        eprintln!("another node's {op} right after the last release: {took:?}");
        assert!(took < Duration::from_millis(1500), "{op} waited {took:?}");
        assert_eq!(n.a.lingering_handles(), 0, "the break closed the lingering handle");
        assert_eq!(n.a.lookup(dir_a, name("f")).await.map(|_| ()), Err(Errno::ENOENT));
        assert_eq!(n.b.lookup(dir_b, name("f")).await.map(|_| ()), Err(Errno::ENOENT));
        let listing = samba.smbclient(&format!("ls {}/{sub}/*", n.dir)).unwrap_or_default();
        assert!(!listing.contains(" f "), "smbclient still lists f: {listing}");
        n.b.rmdir(ROOT_INO, name(&sub)).await.unwrap();
        if op == "mv" {
            let moved = n.a.lookup(ROOT_INO, name("moved")).await.unwrap();
            let fh = n.a.open(moved.ino, OFlag::O_RDONLY.bits()).await.unwrap();
            assert_eq!(n.a.read(fh, 0, 10).await.unwrap(), &b"data"[..]);
            n.a.release(fh).await;
        }
    }
    // A file created again under a removed name: no STATUS_DELETE_PENDING in the way.
    write_and_release(&n.a, ROOT_INO, "again", b"1").await;
    n.b.unlink(ROOT_INO, name("again")).await.unwrap();
    let started = Instant::now();
    write_and_release(&n.b, ROOT_INO, "again", b"2").await;
    assert!(started.elapsed() < Duration::from_secs(1));
    n.a.close_all();
    n.b.close_all();
    n.tree.remove_tree(&n.dir).await.unwrap();
}

/// This node's own unlink, rename and rmdir right after its last release work at once (the lingering handle is
/// closed first), and so does a truncating open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_own_unlink_rename_rmdir_and_truncate_after_release_work_at_once() {
    let samba = samba!();
    let n = two_nodes(samba, "lingerown", FsConfig::default()).await;
    let sub = n.a.mkdir(ROOT_INO, name("sub")).await.unwrap().ino;
    write_and_release(&n.a, sub, "f", b"x").await;
    n.a.unlink(sub, name("f")).await.unwrap();
    write_and_release(&n.a, sub, "g", b"y").await;
    n.a.rename(sub, name("g"), sub, name("h"), 0).await.unwrap();
    assert_eq!(n.a.lingering_handles(), 0);
    let h = write_and_release(&n.a, sub, "h2", b"zz").await;
    let fh = n.a.open(h, OFlag::O_RDWR.bits() | OFlag::O_TRUNC.bits()).await.unwrap();
    assert_eq!(n.a.getattr(h, Some(fh)).await.unwrap().size, 0, "O_TRUNC reached the server");
    n.a.release(fh).await;
    // The directory, with lingering handles of files in it: renamed, then emptied and removed.
    write_and_release(&n.a, sub, "k", b"k").await;
    n.a.rename(ROOT_INO, name("sub"), ROOT_INO, name("sub2"), 0).await.unwrap();
    let sub2 = n.a.lookup(ROOT_INO, name("sub2")).await.unwrap().ino;
    for f in ["h", "h2", "k"] {
        n.a.unlink(sub2, name(f)).await.unwrap();
    }
    n.a.rmdir(ROOT_INO, name("sub2")).await.unwrap();
    // A file re-opened from its lingering handle is unlinked and renamed while open (SQLite deletes its journal
    // so), here and by the other node: the handle taken back shares delete, as any open does.
    for (round, node) in [&n.a, &n.b].into_iter().enumerate() {
        let f = format!("open{round}");
        let ino = write_and_release(&n.a, ROOT_INO, &f, b"still readable").await;
        let fh = n.a.open(ino, OFlag::O_RDONLY.bits()).await.unwrap();
        node.rename(ROOT_INO, name(&f), ROOT_INO, name(&format!("{f}.moved")), 0).await.unwrap();
        node.unlink(ROOT_INO, name(&format!("{f}.moved"))).await.unwrap();
        assert_eq!(n.a.read(fh, 0, 100).await.unwrap(), &b"still readable"[..]);
        n.a.release(fh).await;
        assert_eq!(n.b.lookup(ROOT_INO, name(&format!("{f}.moved"))).await.map(|_| ()), Err(Errno::ENOENT));
    }
    assert!(within(3, || open_on_server(samba, &n.dir).is_empty()).await, "{:?}", open_on_server(samba, &n.dir));
    n.tree.remove_tree(&n.dir).await.unwrap();
}

/// Another node writes after this node's release: the write breaks the lingering handle's read caching, the
/// break closes it, and this node's re-open goes to the server and reads the new data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_nodes_write_after_the_release_is_what_a_reopen_reads() {
    let samba = samba!();
    let counts = std::sync::Arc::new(OpensAndCloses::default());
    let n = two_nodes_observed(samba, "lingerwr", FsConfig::default(), smb3::ObserverHandle::new(counts.clone())).await;
    let ino = write_and_release(&n.a, ROOT_INO, "f", b"old").await;
    assert_eq!(n.a.lingering_handles(), 1);
    let fb = open(&n.b, "f").await;
    n.b.write(fb.1, 0, b"new".to_vec()).await.unwrap().complete().await;
    n.b.release(fb.1).await;
    // The server tells of the write with a break that needs no answer: it may arrive after B's write returns.
    assert!(within(5, || n.a.lingering_handles() == 0).await, "B's write did not close A's lingering handle");
    let before = counts.counts().0;
    let fh = n.a.open(ino, OFlag::O_RDONLY.bits()).await.unwrap();
    assert_eq!(counts.counts().0, before + 1, "the re-open after the break went to the server");
    assert_eq!(n.a.read(fh, 0, 10).await.unwrap(), &b"new"[..]);
    n.a.release(fh).await;
    n.a.close_all();
    n.b.close_all();
    n.tree.remove_tree(&n.dir).await.unwrap();
}

/// Unmount (close_all) leaves nothing open on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmount_closes_the_lingering_handles() {
    let samba = samba!();
    let cfg = FsConfig { close_timeout: Duration::from_secs(60), ..FsConfig::default() };
    let n = two_nodes(samba, "lingerumount", cfg).await;
    for f in ["a", "b", "c"] {
        write_and_release(&n.a, ROOT_INO, f, b"data").await;
    }
    assert_eq!(n.a.lingering_handles(), 3);
    // smbstatus reads Samba's share-mode database, which another test's opens may hold up for a moment.
    // Each with its guard.
    assert!(within(3, || open_on_server(samba, &n.dir).len() == 6).await, "{:?}", open_on_server(samba, &n.dir));
    n.a.close_all();
    assert_eq!(n.a.lingering_handles(), 0);
    assert!(within(3, || open_on_server(samba, &n.dir).is_empty()).await, "{:?}", open_on_server(samba, &n.dir));
    n.tree.remove_tree(&n.dir).await.unwrap();
}

/// A graceful handover: the predecessor closes its lingering handles (they are not kernel handles and not in
/// the journal), the successor reopens only the kernel's open files; nothing leaks and nothing closes twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_closes_the_lingering_handles_and_the_successor_reopens_only_kernel_handles() {
    let samba = samba!();
    let n = two_nodes(samba, "lingerhandover", FsConfig::default()).await;
    let state = tempfile::tempdir().unwrap();
    let (_c1, t1) = connect(samba).await;
    let old = SmbFs::with_journal(t1, &n.dir, FsConfig::default(), Handle::current(), state.path()).unwrap();
    let (attr, kept) = old.create(ROOT_INO, name("kept"), CREATE_RW).await.unwrap();
    old.write(kept, 0, b"kept".to_vec()).await.unwrap().complete().await;
    write_and_release(&old, ROOT_INO, "released", b"r").await;
    assert_eq!(old.lingering_handles(), 1);
    // "kept", and "released" with its guard.
    assert!(within(3, || open_on_server(samba, &n.dir).len() == 3).await, "{:?}", open_on_server(samba, &n.dir));
    old.drain_writes().await;
    assert_eq!(old.lingering_handles(), 0);
    let open = open_on_server(samba, &n.dir);
    assert!(open.len() == 1 && open[0].contains("kept"), "{open:?}");
    old.close_journal().unwrap();
    old.close_all();
    assert!(within(3, || open_on_server(samba, &n.dir).is_empty()).await, "{:?}", open_on_server(samba, &n.dir));
    let (_c2, t2) = connect(samba).await;
    let (new, _) = SmbFs::restore(t2, &n.dir, FsConfig::default(), Handle::current(), state.path()).await.unwrap();
    assert_eq!(new.lingering_handles(), 0);
    let open = open_on_server(samba, &n.dir);
    assert!(open.len() == 1 && open[0].contains("kept"), "{open:?}");
    assert_eq!(new.read(kept, 0, 10).await.unwrap(), &b"kept"[..]);
    new.release(kept).await;
    assert_eq!(new.lingering_handles(), 1, "the successor's own releases linger");
    let _ = attr;
    new.close_all();
    assert!(within(3, || open_on_server(samba, &n.dir).is_empty()).await, "{:?}", open_on_server(samba, &n.dir));
    n.tree.remove_tree(&n.dir).await.unwrap();
}
