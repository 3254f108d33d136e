//! The FUSE filesystem through real mounts against a private Samba (encryption required): everyday tools
//! (`cp -a`, `tar`, `sha256sum`, `ls -l`, `df`, `rm -rf`), POSIX corner cases, options, and the mount lifecycle.
//! Needs root, /dev/fuse and Samba; outside CI a missing piece skips, under CI=true it fails.

use crate::common::connect;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::RngCore;
use sha2::{Digest, Sha256};
use smb3::{Client, Tree};
use smb3_csi::mount::{self, FuseMount, MountOptions, MountState};
use smb3_testkit::running_in_ci;
use smb3_testkit::samba::{Samba, SambaProfile};
use tokio::runtime::Runtime;

struct Env {
    samba: &'static Samba,
    rt: Runtime,
    client: Client,
    tree: Tree,
    /// This test's directory on the share.
    dir: String,
}

fn env(name: &str) -> Option<Env> {
    let fuse_ok = Path::new("/dev/fuse").exists() && nix::unistd::geteuid().is_root();
    if !fuse_ok {
        assert!(!running_in_ci(), "CI=true: /dev/fuse and root are required");
        eprintln!("skipped: needs root and /dev/fuse");
        return None;
    }
    let Some(samba) = Samba::shared(SambaProfile::EncryptRequired) else {
        eprintln!("skipped: Samba is not installed (CI=true makes this a failure)");
        return None;
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    let (client, tree) = rt.block_on(connect(samba));
    let dir = format!("fuse-{name}-{}", rand::thread_rng().next_u32());
    rt.block_on(tree.mkdir_all(&dir)).unwrap();
    Some(Env { samba, rt, client, tree, dir })
}

impl Env {
    fn mount(&self, flags: &[&str]) -> (tempfile::TempDir, FuseMount) {
        let (opts, _) = MountOptions::parse(&flags.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        self.mount_with(&opts, self.tree.clone())
    }

    fn mount_with(&self, opts: &MountOptions, tree: Tree) -> (tempfile::TempDir, FuseMount) {
        let mp = tempfile::tempdir().unwrap();
        let _guard = self.rt.enter();
        let m = FuseMount::mount(tree, &self.dir, mp.path(), opts).expect("mount");
        (mp, m)
    }

    /// A second, independent SMB connection (like another node).
    fn other_tree(&self) -> (Client, Tree) {
        self.rt.block_on(connect(self.samba))
    }

    fn smbclient_sha256(&self, rel: &str) -> String {
        let local = tempfile::NamedTempFile::new().unwrap();
        let remote = format!("{}/{rel}", self.dir).replace('/', "\\");
        self.samba.smbclient(&format!("get \"{remote}\" \"{}\"", local.path().display())).expect("smbclient get");
        sha256_file(local.path())
    }
}

fn sha256_file(p: &Path) -> String {
    let mut h = Sha256::new();
    h.update(fs::read(p).unwrap());
    hex::encode(h.finalize())
}

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

#[test]
fn mount_shows_fstype_and_source_and_unmounts() {
    let Some(e) = env("table") else { return };
    let (mp, m) = e.mount(&[]);
    match mount::mount_state(mp.path()).unwrap() {
        MountState::Mounted { fstype, source } => {
            assert_eq!(fstype, "fuse.smb3-csi");
            assert!(source.ends_with(&format!("/{}/{}", e.samba.share_name(), e.dir)), "{source}");
            assert!(!source.contains(e.samba.password().expose()));
        }
        other => panic!("{other:?}"),
    }
    assert!(m.is_healthy());
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo.lines().find(|l| l.contains(&mp.path().display().to_string())).unwrap();
    assert!(line.contains("allow_other") && line.contains("default_permissions"), "{line}");
    m.unmount().unwrap();
    assert_eq!(mount::mount_state(mp.path()).unwrap(), MountState::NotMounted);
    // A missing directory on the share is a clear error, not a mount.
    let _guard = e.rt.enter();
    let err = FuseMount::mount(e.tree.clone(), "no/such/dir", mp.path(), &MountOptions::default()).unwrap_err();
    assert!(err.to_string().contains("STATUS_OBJECT"), "{err}");
    let file_mp = tempfile::NamedTempFile::new().unwrap();
    assert!(FuseMount::mount(e.tree.clone(), &e.dir, file_mp.path(), &MountOptions::default()).is_err());
}

#[test]
fn everyday_tools_work_and_data_matches_everywhere() {
    let Some(e) = env("tools") else { return };
    let (mp, m) = e.mount(&[]);
    let root = mp.path();

    // cp -a of a local tree with nested directories and a large file.
    let src = tempfile::tempdir().unwrap();
    fs::create_dir_all(src.path().join("tree/a/b")).unwrap();
    fs::write(src.path().join("tree/a/b/big.bin"), random(5 << 20)).unwrap();
    fs::write(src.path().join("tree/a/small.txt"), b"hello\n").unwrap();
    fs::write(src.path().join("tree/empty"), b"").unwrap();
    sh(Command::new("cp").arg("-a").arg(src.path().join("tree")).arg(root));
    sh(Command::new("diff").arg("-r").arg(src.path().join("tree")).arg(root.join("tree")));
    let want = sha256_file(&src.path().join("tree/a/b/big.bin"));

    // The same bytes from a second mount (own connection) and from smbclient.
    let (_c2, tree2) = e.other_tree();
    let (mp2, m2) = e.mount_with(&MountOptions::default(), tree2);
    assert_eq!(sha256_file(&mp2.path().join("tree/a/b/big.bin")), want);
    assert_eq!(e.smbclient_sha256("tree/a/b/big.bin"), want);

    // tar x of an archive with thousands of files, then ls -l of the big directory.
    let archive_src = tempfile::tempdir().unwrap();
    let many = archive_src.path().join("many");
    fs::create_dir(&many).unwrap();
    for i in 0..2000 {
        fs::write(many.join(format!("f{i:04}.txt")), format!("file {i}\n")).unwrap();
    }
    let tarball = archive_src.path().join("many.tar");
    sh(Command::new("tar").arg("-C").arg(archive_src.path()).arg("-cf").arg(&tarball).arg("many"));
    sh(Command::new("tar").arg("-C").arg(root).arg("-xf").arg(&tarball));
    let listing = sh(Command::new("ls").arg("-l").arg(root.join("many")));
    assert_eq!(listing.lines().filter(|l| l.starts_with('-')).count(), 2000);
    assert_eq!(fs::read_to_string(mp2.path().join("many/f1999.txt")).unwrap(), "file 1999\n");
    let inos: std::collections::HashSet<u64> =
        fs::read_dir(root.join("many")).unwrap().map(|d| d.unwrap().metadata().unwrap().ino()).collect();
    assert_eq!(inos.len(), 2000, "inode numbers are distinct");
    // Stable inode numbers: the same file has the same number from both mounts (server file ids).
    assert_eq!(
        fs::metadata(root.join("many/f0001.txt")).unwrap().ino(),
        fs::metadata(mp2.path().join("many/f0001.txt")).unwrap().ino()
    );

    // Append.
    let log = root.join("log.txt");
    fs::write(&log, b"one\n").unwrap();
    fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"two\n").unwrap();
    assert_eq!(fs::read_to_string(mp2.path().join("log.txt")).unwrap(), "one\ntwo\n");

    // Truncate: shrink and extend, by path and by handle.
    let t = root.join("trunc.bin");
    fs::write(&t, random(100_000)).unwrap();
    fs::OpenOptions::new().write(true).open(&t).unwrap().set_len(10).unwrap();
    assert_eq!(fs::metadata(&t).unwrap().len(), 10);
    sh(Command::new("truncate").arg("-s").arg("5000").arg(&t));
    let data = fs::read(&t).unwrap();
    assert_eq!(data.len(), 5000);
    assert!(data[10..].iter().all(|b| *b == 0));

    // O_EXCL and O_TRUNC.
    assert_eq!(errno_of(fs::OpenOptions::new().write(true).create_new(true).open(&log)), nix::libc::EEXIST);
    fs::OpenOptions::new().write(true).truncate(true).open(&log).unwrap();
    assert_eq!(fs::metadata(&log).unwrap().len(), 0);

    // Rename over an existing file, and no-replace rename refusing.
    fs::write(root.join("new.txt"), b"new").unwrap();
    fs::write(root.join("old.txt"), b"old").unwrap();
    fs::rename(root.join("new.txt"), root.join("old.txt")).unwrap();
    assert_eq!(fs::read_to_string(root.join("old.txt")).unwrap(), "new");
    assert!(!root.join("new.txt").exists());
    fs::write(root.join("a.txt"), b"a").unwrap();
    let out =
        Command::new("mv").arg("--no-clobber").arg(root.join("a.txt")).arg(root.join("old.txt")).output().unwrap();
    let _ = out; // mv -n exits 0 either way; the file contents tell
    assert_eq!(fs::read_to_string(root.join("old.txt")).unwrap(), "new");
    fs::rename(root.join("tree"), root.join("tree2")).unwrap();
    assert_eq!(sha256_file(&root.join("tree2/a/b/big.bin")), want);

    // Errors applications rely on.
    assert_eq!(errno_of(fs::metadata(root.join("missing"))), nix::libc::ENOENT);
    assert_eq!(errno_of(fs::remove_dir(root.join("tree2"))), nix::libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::create_dir(root.join("tree2"))), nix::libc::EEXIST);
    assert_eq!(errno_of(std::os::unix::fs::symlink("x", root.join("link"))), nix::libc::EPERM);

    // chmod/chown: documented no-ops that succeed (cp -a and tar rely on it as root).
    fs::set_permissions(root.join("old.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(root.join("old.txt")).unwrap().mode() & 0o7777, 0o755);

    // utimens.
    sh(Command::new("touch").arg("-d").arg("2001-02-03 04:05:06 UTC").arg(root.join("old.txt")));
    assert_eq!(fs::metadata(root.join("old.txt")).unwrap().mtime(), 981_173_106);

    // Hard links where Samba allows them.
    match fs::hard_link(root.join("old.txt"), root.join("hard.txt")) {
        Ok(()) => assert_eq!(fs::read_to_string(root.join("hard.txt")).unwrap(), "new"),
        Err(err) => assert_eq!(err.raw_os_error(), Some(nix::libc::EPERM), "{err}"),
    }

    // statfs (df).
    let df = sh(Command::new("df").arg("-B1").arg("--output=size,avail").arg(root));
    let nums: Vec<u64> = df.lines().nth(1).unwrap().split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert!(nums[0] > 0 && nums[1] > 0 && nums[1] <= nums[0], "{df}");

    // rm -rf of everything.
    let out = Command::new("rm").arg("-rf").arg(root.join("many")).arg(root.join("tree2")).output().unwrap();
    if !out.status.success() {
        let left = fs::read_dir(root.join("many")).map(|d| d.map(|e| e.unwrap().file_name()).collect::<Vec<_>>());
        let server = e.samba.smbclient(&format!("ls {}\\many\\*", e.dir));
        panic!("rm -rf: {} left: {left:?} server: {server:?}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(!root.join("many").exists());
    assert!(!e.rt.block_on(e.tree.exists(&format!("{}/many", e.dir))).unwrap());

    m2.unmount().unwrap();
    m.unmount().unwrap();
}

#[test]
fn unlink_while_open_keeps_the_handle_working() {
    let Some(e) = env("unlink") else { return };
    let (mp, m) = e.mount(&[]);
    let path = mp.path().join("victim.bin");
    fs::write(&path, b"0123456789").unwrap();
    let mut f = fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    fs::remove_file(&path).unwrap();
    assert_eq!(errno_of(fs::metadata(&path)), nix::libc::ENOENT, "the name is gone");
    let mut buf = String::new();
    f.read_to_string(&mut buf).unwrap();
    assert_eq!(buf, "0123456789");
    f.write_all(b"abc").unwrap();
    f.seek(SeekFrom::Start(10)).unwrap();
    let mut tail = String::new();
    f.read_to_string(&mut tail).unwrap();
    assert_eq!(tail, "abc");
    assert_eq!(f.metadata().unwrap().len(), 13);
    drop(f);
    // After the last close the server removed it.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!e.rt.block_on(e.tree.exists(&format!("{}/victim.bin", e.dir))).unwrap());
    // And the name can be reused.
    fs::write(&path, b"again").unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "again");
    m.unmount().unwrap();
}

#[test]
fn two_mounts_write_different_files_in_one_directory_concurrently() {
    let Some(e) = env("concurrent") else { return };
    let (mp1, m1) = e.mount(&[]);
    let (_c2, tree2) = e.other_tree();
    let (mp2, m2) = e.mount_with(&MountOptions::default(), tree2);
    let writer = |root: PathBuf, tag: &'static str| {
        std::thread::spawn(move || {
            let mut sums = Vec::new();
            for i in 0..20 {
                let data = random(256 * 1024 + i * 1000);
                fs::write(root.join(format!("{tag}-{i}.bin")), &data).unwrap();
                sums.push(hex::encode(Sha256::digest(&data)));
            }
            sums
        })
    };
    let (a, b) = (writer(mp1.path().to_path_buf(), "a"), writer(mp2.path().to_path_buf(), "b"));
    let (sa, sb) = (a.join().unwrap(), b.join().unwrap());
    for (i, s) in sa.iter().enumerate() {
        assert_eq!(&sha256_file(&mp2.path().join(format!("a-{i}.bin"))), s);
    }
    for (i, s) in sb.iter().enumerate() {
        assert_eq!(&sha256_file(&mp1.path().join(format!("b-{i}.bin"))), s);
    }
    assert_eq!(fs::read_dir(mp1.path()).unwrap().count(), 40);
    m1.unmount().unwrap();
    m2.unmount().unwrap();
}

#[test]
fn read_only_mount_and_read_only_bind_refuse_writes() {
    let Some(e) = env("ro") else { return };
    let (rw_mp, rw) = e.mount(&[]);
    fs::write(rw_mp.path().join("data.txt"), b"data").unwrap();

    let (ro_mp, ro) = e.mount(&["ro"]);
    assert_eq!(fs::read_to_string(ro_mp.path().join("data.txt")).unwrap(), "data");
    assert_eq!(errno_of(fs::write(ro_mp.path().join("new.txt"), b"x")), nix::libc::EROFS);
    assert_eq!(errno_of(fs::OpenOptions::new().write(true).open(ro_mp.path().join("data.txt"))), nix::libc::EROFS);
    assert_eq!(errno_of(fs::remove_file(ro_mp.path().join("data.txt"))), nix::libc::EROFS);
    ro.unmount().unwrap();

    // Publishing: a read-only bind of the read-write staging mount.
    let target = tempfile::tempdir().unwrap();
    mount::bind_mount(rw_mp.path(), target.path(), true).unwrap();
    assert_eq!(fs::read_to_string(target.path().join("data.txt")).unwrap(), "data");
    assert_eq!(errno_of(fs::write(target.path().join("new.txt"), b"x")), nix::libc::EROFS);
    assert!(
        matches!(mount::mount_state(target.path()).unwrap(), MountState::Mounted { fstype, .. } if fstype == "fuse.smb3-csi")
    );
    // The staging mount stays writable.
    fs::write(rw_mp.path().join("new.txt"), b"x").unwrap();
    mount::unmount(target.path()).unwrap();
    mount::unmount(target.path()).unwrap();
    assert_eq!(mount::mount_state(target.path()).unwrap(), MountState::NotMounted);
    rw.unmount().unwrap();
}

#[test]
fn ownership_and_modes_follow_options_and_fs_group() {
    let Some(e) = env("owner") else { return };
    let (mp, m) = e.mount(&["uid=1001,gid=2002,file_mode=0640,dir_mode=0750"]);
    fs::write(mp.path().join("f"), b"x").unwrap();
    fs::create_dir(mp.path().join("d")).unwrap();
    let (f, d) = (fs::metadata(mp.path().join("f")).unwrap(), fs::metadata(mp.path().join("d")).unwrap());
    assert_eq!((f.uid(), f.gid(), f.mode() & 0o7777), (1001, 2002, 0o640));
    assert_eq!((d.uid(), d.gid(), d.mode() & 0o7777), (1001, 2002, 0o750));
    let root = fs::metadata(mp.path()).unwrap();
    assert_eq!((root.uid(), root.mode() & 0o7777), (1001, 0o750));
    m.unmount().unwrap();

    let (mut opts, _) = MountOptions::parse(&["file_mode=0600,dir_mode=0700".to_string()]).unwrap();
    opts.apply_fs_group(3003);
    let (mp, m) = e.mount_with(&opts, e.tree.clone());
    let (f, d) = (fs::metadata(mp.path().join("f")).unwrap(), fs::metadata(mp.path().join("d")).unwrap());
    assert_eq!((f.gid(), f.mode() & 0o7777), (3003, 0o660));
    assert_eq!((d.gid(), d.mode() & 0o7777), (3003, 0o770));
    // default_permissions: a user outside uid/gid cannot write a 0660 file.
    let out = Command::new("setpriv")
        .args(["--reuid=4444", "--regid=4444", "--clear-groups", "sh", "-c"])
        .arg(format!("echo x > {}", mp.path().join("f").display()))
        .output()
        .unwrap();
    assert!(!out.status.success(), "uid 4444 wrote a 0660 file of gid 3003");
    let out = Command::new("setpriv")
        .args(["--reuid=4444", "--regid=3003", "--clear-groups", "sh", "-c"])
        .arg(format!("echo y > {}", mp.path().join("f").display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "the fsGroup member could not write: {}", String::from_utf8_lossy(&out.stderr));
    m.unmount().unwrap();
}

#[test]
fn chown_of_the_root_makes_its_group_the_mounts_group() {
    // What a kubelet without VOLUME_MOUNT_GROUP delegation (< 1.22) does for fsGroup: chown every file to the
    // group, then add group rw (and setgid on directories).
    let Some(e) = env("rootgrp") else { return };
    let (mp, m) = e.mount(&[]);
    let root = mp.path();
    fs::write(root.join("before"), b"x").unwrap();
    let as_member = |cmd: &str| {
        Command::new("setpriv")
            .args(["--reuid=1000", "--regid=1000", "--groups=4321", "sh", "-c", cmd])
            .current_dir("/")
            .output()
            .unwrap()
    };
    let write_new = format!("echo z > {}", root.join("by-member").display());
    assert!(!as_member(&write_new).status.success(), "uid 1000 wrote into a 0755 root-owned mount");

    // The group of anything but the root stays the mount's.
    std::os::unix::fs::chown(root.join("before"), None, Some(4321)).unwrap();
    assert_eq!(fs::metadata(root.join("before")).unwrap().gid(), 0);

    std::os::unix::fs::chown(root, None, Some(4321)).unwrap();
    fs::set_permissions(root, fs::Permissions::from_mode(0o2775)).unwrap();
    let r = fs::metadata(root).unwrap();
    assert_eq!((r.uid(), r.gid(), r.mode() & 0o7777), (0, 4321, 0o775));
    // Attributes cached before the change expire with the attribute TTL (1 s).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let f = fs::metadata(root.join("before")).unwrap();
    assert_eq!((f.uid(), f.gid(), f.mode() & 0o7777), (0, 4321, 0o775));
    let out = as_member(&format!("{write_new} && mkdir {0}/d && echo y > {0}/d/f", root.display()));
    assert!(out.status.success(), "the group member could not write: {}", String::from_utf8_lossy(&out.stderr));
    let (f, d) = (fs::metadata(root.join("d/f")).unwrap(), fs::metadata(root.join("d")).unwrap());
    assert_eq!((f.gid(), f.mode() & 0o7777, d.gid(), d.mode() & 0o7777), (4321, 0o775, 4321, 0o775));
    m.unmount().unwrap();

    // Another mount of the same directory starts from its own options again.
    let (mp, m) = e.mount(&["gid=7"]);
    assert_eq!(fs::metadata(mp.path().join("by-member")).unwrap().gid(), 7);
    // A read-only mount keeps its group.
    m.unmount().unwrap();
    let (mp, m) = e.mount(&["ro"]);
    let _ = std::os::unix::fs::chown(mp.path(), None, Some(4321));
    assert_eq!(fs::metadata(mp.path()).unwrap().gid(), 0);
    m.unmount().unwrap();
}

#[test]
fn dead_mount_is_detected_and_cleaned() {
    let Some(e) = env("dead") else { return };
    let (mp, m) = e.mount(&[]);
    fs::write(mp.path().join("x"), b"x").unwrap();
    // Kill the session the way a crashed daemon does: abort the kernel connection.
    if fs::read_dir("/sys/fs/fuse/connections").map(|mut d| d.next().is_none()).unwrap_or(true) {
        sh(Command::new("mount").args(["-t", "fusectl", "fusectl", "/sys/fs/fuse/connections"]));
    }
    let dev = mount::mount_at(mp.path()).unwrap().unwrap().device;
    let minor = dev.split(':').nth(1).unwrap();
    fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), b"1").expect("abort FUSE connection (needs fusectl)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while m.is_healthy() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!m.is_healthy());
    assert_eq!(mount::mount_state(mp.path()).unwrap(), MountState::Dead);
    mount::unmount(mp.path()).unwrap();
    assert_eq!(mount::mount_state(mp.path()).unwrap(), MountState::NotMounted);
    // Dropping the handle afterwards is harmless; mounting again at the same place works.
    m.unmount().unwrap();
    let _guard = e.rt.enter();
    let again = FuseMount::mount(e.tree.clone(), &e.dir, mp.path(), &MountOptions::default()).unwrap();
    assert_eq!(fs::read_to_string(mp.path().join("x")).unwrap(), "x");
    again.unmount().unwrap();
    drop(e.client);
}

/// Runs `sh -c script` as `nobody` (uid and gid 65534, no supplementary groups).
fn as_nobody(script: &str) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", script])
        .output()
        .expect("run setpriv")
}

#[test]
fn noexec_refuses_to_run_files_and_exec_runs_them() {
    let Some(e) = env("noexec") else { return };
    let (mp, m) = e.mount(&["file_mode=0755"]);
    let script = mp.path().join("hello.sh");
    fs::write(&script, b"#!/bin/sh\necho hello\n").unwrap();
    let out = Command::new(&script).output().expect("an exec mount runs the script");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    m.unmount().unwrap();

    let (mp, m) = e.mount(&["file_mode=0755,noexec"]);
    let script = mp.path().join("hello.sh");
    assert_eq!(fs::metadata(&script).unwrap().mode() & 0o777, 0o755);
    assert_eq!(errno_of(Command::new(&script).output()), nix::libc::EACCES);
    // Reading it is still fine: only execution is refused.
    assert!(fs::read_to_string(&script).unwrap().contains("echo hello"));
    m.unmount().unwrap();
}

#[test]
fn noperm_lets_any_user_write_what_the_modes_forbid() {
    let Some(e) = env("noperm") else { return };
    let (mp, m) = e.mount(&["uid=0,gid=0,file_mode=0644,dir_mode=0755"]);
    let file = mp.path().join("owned-by-root");
    fs::write(&file, b"root\n").unwrap();
    let write = format!("echo nobody > {}", file.display());
    let out = as_nobody(&write);
    assert!(!out.status.success(), "nobody wrote a 0644 file of uid 0 without noperm");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{out:?}");
    m.unmount().unwrap();

    let (mp, m) = e.mount(&["uid=0,gid=0,file_mode=0644,dir_mode=0755,noperm"]);
    let file = mp.path().join("owned-by-root");
    let out = as_nobody(&format!("echo nobody > {}", file.display()));
    assert!(out.status.success(), "noperm: nobody could not write: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read_to_string(&file).unwrap(), "nobody\n");
    // The presented modes are unchanged; only the kernel's check is off.
    assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o644);
    m.unmount().unwrap();
}

/// An unmount waits for the FUSE session itself, not a fixed time: the kernel ends the connection with the
/// mount, the session finishes at once (its SMB handles closed), and `unmount` says so; files written just
/// before are on the server, as smbclient sees.
#[test]
fn unmount_ends_the_session_without_waiting_out_a_timeout() {
    let Some(e) = env("unmount") else { return };
    for round in 0..3 {
        let (mp, m) = e.mount(&[]);
        fs::write(mp.path().join(format!("f{round}")), b"written before the unmount").unwrap();
        let started = std::time::Instant::now();
        let outcome = m.unmount().unwrap();
        let took = started.elapsed();
        eprintln!("unmount {round}: {outcome:?} in {took:?}");
        assert_eq!(outcome, smb3_csi::mount::Unmounted::SessionEnded, "round {round}");
        assert!(took < smb3_csi::mount::SESSION_END_WAIT, "round {round}: {took:?}");
        assert_eq!(mount::mount_state(mp.path()).unwrap(), MountState::NotMounted);
        let got = e.samba.smbclient(&format!("get {}/f{round} -", e.dir)).unwrap();
        assert!(got.contains("written before the unmount"), "{got}");
    }
}

/// The mount's readahead window (`/sys/class/bdi/<dev>/read_ahead_kb`).
fn read_ahead_kb(mountpoint: &Path) -> u64 {
    let dev = fs::metadata(mountpoint).unwrap().dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let kb = fs::read_to_string(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb")).unwrap();
    kb.trim().parse().unwrap()
}

#[test]
fn readahead_is_rasize_and_outlasts_the_kernels_init() {
    let Some(e) = env("rasize") else { return };
    // The kernel lowers the window to INIT's max_readahead when it takes the INIT reply: a window set before
    // that is undone, so each mount is checked right after it returns and again once it has served a request.
    for (flags, kb) in [(&[][..], 16 * 1024), (&["rasize=4194304"][..], 4096), (&["rasize=0"][..], 128)] {
        for _ in 0..3 {
            let (mp, m) = e.mount(flags);
            assert_eq!(read_ahead_kb(mp.path()), kb, "{flags:?} right after mount");
            fs::write(mp.path().join("ra"), b"x").unwrap();
            assert_eq!(read_ahead_kb(mp.path()), kb, "{flags:?} after a request");
            m.unmount().unwrap();
        }
    }
}
