//! Small files in fewer round trips, against the private Samba (encryption required), with smbclient as the
//! witness of what reached the server: the one-round-trip compounds of `smb3` (CREATE+WRITE+CLOSE,
//! CREATE+READ+CLOSE, open with a first READ), and the filesystem paths that use them (a create's LOOKUP
//! answered from what this node knows, a created file's attributes from its CREATE, a small file read with
//! its open). Round trips are counted by an [`Observer`] on the client: one per request or compound sent.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::OFlag;
use rand::RngCore;
use smb3::wire::Command;
use smb3::{ClientOptions, Credentials, NtStatus, Observer, ObserverHandle, Tree, WholeFile};
use smb3_csi::fs::{Errno, FsConfig, LockKind, LockOwner, SmbFs, RELIST_AFTER, ROOT_INO};
use smb3_testkit::samba::{Samba, SambaProfile};
use tokio::runtime::Handle;

/// The first command of every request or compound sent (the observer's `round_trip`).
#[derive(Default)]
struct Trips(Mutex<Vec<Command>>);

impl Observer for Trips {
    fn round_trip(&self, command: Command, _elapsed: Duration) {
        self.0.lock().unwrap().push(command);
    }
}

impl Trips {
    /// Round trips since the last call, leaving out CLOSEs (released handles close in the background).
    fn take(&self) -> Vec<Command> {
        std::mem::take(&mut *self.0.lock().unwrap()).into_iter().filter(|c| *c != Command::Close).collect()
    }
}

async fn counted_tree(samba: &Samba) -> (smb3::Client, Tree, Arc<Trips>) {
    let trips = Arc::new(Trips::default());
    let options = ClientOptions { observer: ObserverHandle::new(trips.clone()), ..ClientOptions::default() };
    let creds = Credentials::user(samba.user(), "", samba.password().clone());
    let client = smb3::Client::connect(samba.host(), samba.port(), &creds, &options).await.expect("connect");
    let tree = client.tree(samba.share_name()).await.expect("tree");
    (client, tree, trips)
}

fn test_dir(what: &str) -> String {
    format!("small-{what}-{}", rand::thread_rng().next_u32())
}

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

/// smbclient's copy of `path` on the share.
async fn smbclient_get(samba: &'static Samba, path: &str) -> Vec<u8> {
    let local = samba.scratch_dir().join(format!("got-{}", rand::thread_rng().next_u32()));
    let cmd = format!("get \"{path}\" \"{}\"", local.display());
    tokio::task::spawn_blocking(move || samba.smbclient(&cmd)).await.unwrap().expect("smbclient get");
    let data = std::fs::read(&local).unwrap();
    std::fs::remove_file(&local).unwrap();
    data
}

/// smbclient puts `data` at `path` on the share.
async fn smbclient_put(samba: &'static Samba, path: &str, data: &[u8]) {
    let local = samba.scratch_dir().join(format!("put-{}", rand::thread_rng().next_u32()));
    std::fs::write(&local, data).unwrap();
    let cmd = format!("put \"{}\" \"{path}\"", local.display());
    tokio::task::spawn_blocking(move || samba.smbclient(&cmd)).await.unwrap().expect("smbclient put");
    std::fs::remove_file(&local).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_files_move_in_one_round_trip() {
    let samba = samba!();
    let (_client, tree, trips) = counted_tree(samba).await;
    let dir = test_dir("api");
    tree.mkdir_all(&dir).await.unwrap();
    trips.take();

    // CREATE + WRITE + CLOSE: one round trip, and the attributes come back with it (the id the server's
    // FileInternalInformation reports, the size written).
    let data = random(5000);
    let path = format!("{dir}/a.bin");
    let m = tree.write_whole_file(&path, &data, WholeFile::CreateNew).await.unwrap();
    assert_eq!(trips.take(), [Command::Create], "one compound");
    assert_eq!(m.size, 5000);
    let stat = tree.stat(&path).await.unwrap();
    assert_eq!((m.file_id, m.size, m.modified), (stat.file_id, stat.size, stat.modified));
    assert_ne!(m.file_id, 0);
    assert_eq!(smbclient_get(samba, &path).await, data, "smbclient reads what was written");

    // Exclusive creates refuse an existing file; a replace rewrites it whole (shorter too).
    let e = tree.write_whole_file(&path, b"x", WholeFile::CreateNew).await.unwrap_err();
    assert_eq!(e.status(), Some(NtStatus::OBJECT_NAME_COLLISION));
    tree.write_whole_file(&path, b"short", WholeFile::Replace).await.unwrap();
    assert_eq!(smbclient_get(samba, &path).await, b"short");
    let empty = tree.write_whole_file(&format!("{dir}/empty"), b"", WholeFile::Replace).await.unwrap();
    assert_eq!(empty.size, 0);

    // CREATE + READ + CLOSE of what smbclient put.
    let theirs = random(20_000);
    let put = format!("{dir}/theirs.bin");
    smbclient_put(samba, &put, &theirs).await;
    trips.take();
    assert!(tree.read_small_file(&put, 65536).await.unwrap() == theirs);
    assert_eq!(trips.take(), [Command::Create], "one compound");
    assert!(tree.read_small_file(&put, 100).await.unwrap() == theirs[..100], "at most max_len bytes");
    assert!(tree.read_small_file(&format!("{dir}/empty"), 100).await.unwrap().is_empty());
    let missing = tree.read_small_file(&format!("{dir}/missing"), 100).await.unwrap_err();
    assert!(smb3::is_not_found(&missing), "{missing}");

    // An open that reads the start of the file with its CREATE; the handle then works as any other.
    trips.take();
    let (f, head) = tree.open_and_read(&put, smb3::OpenOptions::new().read(true), 4096).await.unwrap();
    assert_eq!(trips.take(), [Command::Create], "one compound");
    assert!(head.unwrap() == theirs[..4096]);
    assert_eq!(f.opened_metadata().file_id, tree.stat(&put).await.unwrap().file_id, "the id from QFid");
    assert!(f.read_at(19_000, 4096).await.unwrap() == theirs[19_000..]);
    f.close().await.unwrap();
}

fn config(ttl: Duration) -> FsConfig {
    FsConfig { attr_ttl: ttl, ..FsConfig::default() }
}

fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// The TTL of the filesystem tests below.
const TTL: Duration = Duration::from_millis(1500);

/// A filesystem with attribute TTL [`TTL`] on a new test directory, its tree, that directory and the counter of
/// its round trips.
async fn counted_fs(samba: &Samba, what: &str) -> (smb3::Client, Tree, String, SmbFs, Arc<Trips>) {
    let (client, tree, trips) = counted_tree(samba).await;
    let dir = test_dir(what);
    tree.mkdir_all(&dir).await.unwrap();
    let fs = SmbFs::new(tree.clone(), &dir, config(TTL), Handle::current());
    (client, tree, dir, fs, trips)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_into_a_new_directory_costs_no_failed_lookups() {
    let samba = samba!();
    let (_client, tree, dir, fs, trips) = counted_fs(samba, "create").await;

    let sub = fs.mkdir(ROOT_INO, name("new")).await.unwrap();
    trips.take();
    // What `cp -r` does for each file: LOOKUP (ENOENT), then CREATE. Only the CREATE reaches the server.
    assert_eq!(fs.lookup(sub.ino, name("f1")).await.unwrap_err(), Errno::ENOENT);
    assert_eq!(trips.take(), [], "the new directory is known empty");
    let flags = (OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL).bits();
    let (attr, fh) = fs.create(sub.ino, name("f1"), flags).await.unwrap();
    assert_eq!(trips.take(), [Command::Create], "attributes from the CREATE, no query after it");
    let w = fs.write(fh, 0, b"one".to_vec()).await.unwrap();
    w.complete().await;
    fs.flush(fh).await.unwrap();
    fs.release(fh).await;
    let on_server = tree.stat(&format!("{dir}/new/f1")).await.unwrap();
    assert_eq!(attr.ino, on_server.file_id, "the inode is the server's file id");
    assert_eq!(smbclient_get(samba, &format!("{dir}/new/f1")).await, b"one");

    // Names this node made exist are looked up on the server; case does not matter, as on the server.
    trips.take();
    assert_eq!(fs.lookup(sub.ino, name("F1")).await.unwrap().ino, attr.ino);
    assert_eq!(trips.take(), [Command::Create], "a positive lookup asks the server");
    // An unlink makes the name absent again, without asking.
    fs.unlink(sub.ino, name("f1")).await.unwrap();
    trips.take();
    assert_eq!(fs.lookup(sub.ino, name("f1")).await.unwrap_err(), Errno::ENOENT);
    assert_eq!(trips.take(), []);

    // Another client's file shows once the TTL has passed (as its attribute changes do).
    smbclient_put(samba, &format!("{dir}/new/theirs"), b"from smbclient").await;
    tokio::time::sleep(TTL).await;
    let theirs = fs.lookup(sub.ino, name("theirs")).await.expect("seen after the TTL");
    assert_eq!(theirs.size, 14);

    // A listing is complete knowledge too: after it, absent names cost nothing, present ones still ask.
    let dh = fs.opendir(sub.ino).unwrap();
    fs.readdir(sub.ino, dh, 0, |_| false).await.unwrap();
    fs.releasedir(dh);
    trips.take();
    assert_eq!(fs.lookup(sub.ino, name("nothing-here")).await.unwrap_err(), Errno::ENOENT);
    assert_eq!(trips.take(), []);
    // A rename moves the name: the old one is absent at once, the new one is asked for.
    fs.rename(sub.ino, name("theirs"), sub.ino, name("renamed"), 0).await.unwrap();
    trips.take();
    assert_eq!(fs.lookup(sub.ino, name("theirs")).await.unwrap_err(), Errno::ENOENT);
    assert_eq!(trips.take(), []);
    assert_eq!(fs.lookup(sub.ino, name("renamed")).await.unwrap().size, 14);

    // actimeo=0 keeps nothing: every lookup asks.
    let uncached = SmbFs::new(tree.clone(), &dir, config(Duration::ZERO), Handle::current());
    let sub0 = uncached.mkdir(ROOT_INO, name("new0")).await.unwrap();
    trips.take();
    assert_eq!(uncached.lookup(sub0.ino, name("x")).await.unwrap_err(), Errno::ENOENT);
    assert_eq!(trips.take(), [Command::Create]);
}

/// What `cp -r` of many files into one directory costs once the directory's knowledge has expired: one
/// listing per TTL, not one failed lookup per file (each of which costs the server a scan of the directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_directory_is_listed_again_when_what_is_known_expires() {
    let samba = samba!();
    let (_client, _tree, dir, fs, trips) = counted_fs(samba, "relist").await;
    let flags = (OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL).bits();

    let busy = fs.mkdir(ROOT_INO, name("busy")).await.unwrap();
    let quiet = fs.mkdir(ROOT_INO, name("quiet")).await.unwrap();
    for i in 0..RELIST_AFTER {
        let f = format!("f{i}");
        assert_eq!(fs.lookup(busy.ino, name(&f)).await.unwrap_err(), Errno::ENOENT);
        let (_, fh) = fs.create(busy.ino, name(&f), flags).await.unwrap();
        fs.release(fh).await;
    }
    assert_eq!(fs.lookup(quiet.ino, name("one")).await.unwrap_err(), Errno::ENOENT);
    // Another client's files, which only a listing or a lookup can show.
    smbclient_put(samba, &format!("{dir}/busy/theirs"), b"from smbclient").await;
    smbclient_put(samba, &format!("{dir}/quiet/theirs"), b"from smbclient").await;
    tokio::time::sleep(TTL).await;
    trips.take();

    // The busy directory is listed once, then answers for the TTL again: absent names without asking, and
    // another client's file is seen.
    assert_eq!(fs.lookup(busy.ino, name("next")).await.unwrap_err(), Errno::ENOENT);
    let listing = trips.take();
    assert!(listing.contains(&Command::QueryDirectory), "renewed by a listing: {listing:?}");
    for i in 0..3 {
        assert_eq!(fs.lookup(busy.ino, name(&format!("more{i}"))).await.unwrap_err(), Errno::ENOENT);
    }
    assert_eq!(trips.take(), [], "answered from the new listing");
    assert_eq!(fs.lookup(busy.ino, name("theirs")).await.unwrap().size, 14);
    assert_eq!(fs.lookup(busy.ino, name("F3")).await.unwrap().size, 0, "this node's own file, any case");

    // The quiet directory answered one lookup: a lookup there after the TTL asks for its one name.
    trips.take();
    assert_eq!(fs.lookup(quiet.ino, name("two")).await.unwrap_err(), Errno::ENOENT);
    assert_eq!(trips.take(), [Command::Create], "one failed open, no listing");
    assert_eq!(fs.lookup(quiet.ino, name("theirs")).await.unwrap().size, 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directorys_attributes_are_answered_within_the_ttl_with_this_nodes_changes() {
    let samba = samba!();
    let (_client, tree, dir, fs, trips) = counted_fs(samba, "dirattr").await;
    let sub = fs.mkdir(ROOT_INO, name("d")).await.unwrap();

    // What the kernel does for each file `cp -r` creates with default_permissions: GETATTR of the directory
    // (each create made it drop the directory's attributes), then CREATE. Only the CREATE reaches the server.
    let flags = (OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL).bits();
    let before = fs.getattr(sub.ino, None).await.unwrap();
    trips.take();
    let mut last = before.mtime;
    for i in 0..5 {
        let (_, fh) = fs.create(sub.ino, name(&format!("f{i}")), flags).await.unwrap();
        fs.release(fh).await;
        let now = fs.getattr(sub.ino, None).await.unwrap();
        // The file's CREATE, and at release the CREATE of its lingering handle's guard (closetimeo).
        let expected = [Command::Create, Command::Create];
        assert_eq!(trips.take(), expected, "file {i}: the directory's attributes were asked for");
        assert!(now.mtime >= last, "file {i}: this node's create moves the directory's mtime forward");
        last = now.mtime;
    }
    let on_server = tree.stat(&format!("{dir}/d")).await.unwrap().modified_time().unwrap();
    let served = fs.getattr(sub.ino, None).await.unwrap().mtime;
    let apart = served.duration_since(on_server).unwrap_or_else(|e| e.duration());
    assert!(apart < Duration::from_secs(2), "served mtime {served:?}, server's {on_server:?}");
    trips.take();

    // Another client's change shows once the TTL has passed: then the server is asked again.
    smbclient_put(samba, &format!("{dir}/d/theirs"), b"x").await;
    tokio::time::sleep(TTL).await;
    fs.getattr(sub.ino, None).await.unwrap();
    assert_eq!(trips.take(), [Command::Create], "expired: asked again");
    // Setting the directory's times forgets what was known.
    let set = smb3_csi::fs::SetAttr { mtime: Some(smb3_csi::fs::SetTime::Now), ..Default::default() };
    fs.setattr(sub.ino, None, set).await.unwrap();
    trips.take();
    fs.getattr(sub.ino, None).await.unwrap();
    assert_eq!(trips.take(), [], "the setattr's own answer is fresh");
    // Files are always asked for; actimeo=0 keeps nothing.
    let file = fs.lookup(sub.ino, name("f0")).await.unwrap();
    trips.take();
    fs.getattr(file.ino, None).await.unwrap();
    assert_eq!(trips.take(), [Command::Create]);
    let uncached = SmbFs::new(tree.clone(), &dir, config(Duration::ZERO), Handle::current());
    let d0 = uncached.lookup(ROOT_INO, name("d")).await.unwrap();
    trips.take();
    uncached.getattr(d0.ino, None).await.unwrap();
    assert_eq!(trips.take(), [Command::Create]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_file_is_read_with_its_open() {
    let samba = samba!();
    let (_client, tree, trips) = counted_tree(samba).await;
    let dir = test_dir("read");
    tree.mkdir_all(&dir).await.unwrap();
    let data = random(4096);
    smbclient_put(samba, &format!("{dir}/small"), &data).await;
    let big = random(200_000);
    smbclient_put(samba, &format!("{dir}/big"), &big).await;
    let fs = SmbFs::new(tree.clone(), &dir, config(Duration::from_secs(5)), Handle::current());
    let small = fs.lookup(ROOT_INO, name("small")).await.unwrap();
    let rdonly = OFlag::O_RDONLY.bits();

    // OPEN + the kernel's first READ: one round trip; what is past the end costs nothing either.
    trips.take();
    let fh = fs.open(small.ino, rdonly).await.unwrap();
    assert!(fs.read(fh, 0, 131_072).await.unwrap() == data);
    assert_eq!(trips.take(), [Command::Create], "the read came with the open");
    // The data is used once: a second read asks the server.
    assert!(fs.read(fh, 0, 10).await.unwrap() == data[..10]);
    assert_eq!(trips.take(), [Command::Read]);
    fs.release(fh).await;

    // A big file: a first read inside the first 64 KiB is served, a larger one goes to the server.
    let big_ino = fs.lookup(ROOT_INO, name("big")).await.unwrap().ino;
    let fh = fs.open(big_ino, rdonly).await.unwrap();
    trips.take();
    assert!(fs.read(fh, 4096, 4096).await.unwrap() == big[4096..8192]);
    assert_eq!(trips.take(), []);
    fs.release(fh).await;
    let fh = fs.open(big_ino, rdonly).await.unwrap();
    trips.take();
    assert!(fs.read(fh, 0, 131_072).await.unwrap() == big[..131_072]);
    assert_eq!(trips.take(), [Command::Read]);
    fs.release(fh).await;

    // A lock taken after the open: the reader must see what was written before it got the lock, so the
    // data read with the open is dropped (smbclient changes the file in between).
    let fh = fs.open(small.ino, rdonly).await.unwrap();
    let changed = random(4096);
    smbclient_put(samba, &format!("{dir}/small"), &changed).await;
    let never = std::future::pending::<()>();
    fs.setlk(small.ino, fh, LockOwner::Posix(7), 1, (0, 0), Some(LockKind::Shared), false, never).await.unwrap();
    assert!(fs.read(fh, 0, 4096).await.unwrap() == changed, "read after the lock sees the new data");
    fs.release(fh).await;

    // A second handle open on the file: opens read nothing ahead (another handle may write). The reader
    // is served from the writer's SMB handle, which holds a read+handle caching lease (no CREATE), and its
    // first read goes to the server.
    let writer = fs.open(small.ino, OFlag::O_RDWR.bits()).await.unwrap();
    trips.take();
    let fh = fs.open(small.ino, rdonly).await.unwrap();
    fs.read(fh, 0, 4096).await.unwrap();
    assert_eq!(trips.take(), [Command::Read]);
    fs.release(fh).await;
    fs.release(writer).await;
}
