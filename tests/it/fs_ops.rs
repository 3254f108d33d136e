//! The filesystem operations called directly, without a FUSE mount, against a private Samba (encryption
//! required): what a mount would do for create/write/read, rename, unlink of an open file, directory listings,
//! statfs, read-only mounts and the errno of each failure. A FUSE mount adds only argument conversion on top
//! (tests/it/fuse.rs covers that path). Outside CI a missing Samba skips; under CI=true it fails.

use crate::common::connect;
use std::ffi::OsStr;

use nix::fcntl::OFlag;
use rand::RngCore;
use smb3::{Client, Tree};
use smb3_csi::fs::{
    Attr, CacheMode, DirItem, Errno, FileKind, FsConfig, SetAttr, SmbFs, NAME_MAX, RENAME_NOREPLACE, ROOT_INO,
};
use smb3_testkit::samba::{Samba, SambaProfile};
use tokio::runtime::Handle;

fn config() -> FsConfig {
    FsConfig { uid: 1000, gid: 2000, file_mode: 0o640, dir_mode: 0o750, ..FsConfig::default() }
}

/// A filesystem whose root is a fresh directory of the share (its own per test).
async fn fs_at(samba: &Samba, test: &str, cfg: FsConfig) -> (Client, Tree, String, SmbFs) {
    let (client, tree) = connect(samba).await;
    let dir = format!("fsops-{test}-{}", rand::thread_rng().next_u32());
    tree.mkdir_all(&dir).await.unwrap();
    let fs = SmbFs::new(tree.clone(), &dir, cfg, Handle::current());
    (client, tree, dir, fs)
}

fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

const CREATE_RW: i32 = OFlag::O_RDWR.bits() | OFlag::O_CREAT.bits();
const CREATE_EXCL: i32 = CREATE_RW | OFlag::O_EXCL.bits();

async fn create(fs: &SmbFs, parent: u64, n: &str) -> (Attr, u64) {
    fs.create(parent, name(n), CREATE_EXCL).await.unwrap_or_else(|e| panic!("create {n}: {e}"))
}

/// Writes `data` at `offset` and waits for it to reach the server.
async fn write(fs: &SmbFs, fh: u64, offset: u64, data: &[u8]) {
    let w = fs.write(fh, offset, data.to_vec()).await.unwrap();
    assert_eq!(w.len(), data.len());
    w.complete().await;
}

async fn read_all(fs: &SmbFs, fh: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < len {
        let part = fs.read(fh, out.len() as u64, 256 * 1024).await.unwrap();
        if part.is_empty() {
            break;
        }
        out.extend_from_slice(&part);
    }
    out
}

/// Every name of a directory listing, read in pages of at most `page` entries (as a small kernel buffer would).
async fn list(fs: &SmbFs, ino: u64, page: usize) -> Vec<(String, FileKind)> {
    let fh = fs.opendir(ino).unwrap();
    let (mut all, mut offset) = (Vec::new(), 0);
    loop {
        let mut got: Vec<(String, FileKind, u64)> = Vec::new();
        fs.readdir(ino, fh, offset, |e: DirItem<'_>| {
            if got.len() == page {
                return true;
            }
            got.push((e.name.to_string(), e.kind, e.offset));
            false
        })
        .await
        .unwrap();
        let Some(last) = got.last() else { break };
        offset = last.2;
        all.extend(got.into_iter().map(|(n, k, _)| (n, k)));
    }
    fs.releasedir(fh);
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_write_read_back_and_attributes() {
    let samba = samba!();
    let (_client, tree, dir, fs) = fs_at(samba, "rw", config()).await;
    let (attr, fh) = create(&fs, ROOT_INO, "data.bin").await;
    assert_eq!((attr.kind, attr.size, attr.perm, attr.uid, attr.gid), (FileKind::RegularFile, 0, 0o640, 1000, 2000));
    assert!(attr.ino > ROOT_INO);

    // Several writes in flight at once (as the FUSE adapter sends them), then close(2)'s flush.
    let data = random(3 << 20);
    for (i, chunk) in data.chunks(256 * 1024).enumerate() {
        let w = fs.write(fh, (i * 256 * 1024) as u64, chunk.to_vec()).await.unwrap();
        tokio::spawn(w.complete());
    }
    fs.flush(fh).await.unwrap();
    assert!(read_all(&fs, fh, data.len()).await == data, "data read back differs");
    assert_eq!(fs.getattr(attr.ino, Some(fh)).await.unwrap().size, data.len() as u64);
    fs.fsync(fh).await.unwrap();
    fs.release(fh).await;
    assert_eq!(fs.read(fh, 0, 1).await.unwrap_err(), Errno::EBADF);

    // What the server holds, through another handle.
    let f = tree.open(&format!("{dir}/data.bin"), smb3::OpenOptions::new().read(true)).await.unwrap();
    assert_eq!(f.metadata().await.unwrap().size, data.len() as u64);
    f.close().await.unwrap();

    // Truncate through setattr; chmod and chown of a file succeed and change nothing.
    let set = SetAttr { size: Some(10), mode: Some(0o777), uid: Some(0), ..SetAttr::default() };
    let a = fs.setattr(attr.ino, None, set).await.unwrap();
    assert_eq!((a.size, a.perm, a.uid), (10, 0o640, 1000));
    let fh = fs.open(attr.ino, OFlag::O_RDONLY.bits()).await.unwrap();
    assert!(fs.read(fh, 0, 100).await.unwrap() == data[..10]);
    // fsync(2) of a read-only descriptor (busybox `sync FILE`) succeeds although the server refuses FLUSH on it.
    fs.fsync(fh).await.expect("fsync of a read-only handle");
    fs.release(fh).await;

    // A lookup finds the same inode; opening a directory as a file is EISDIR.
    assert_eq!(fs.lookup(ROOT_INO, name("data.bin")).await.unwrap().ino, attr.ino);
    let d = fs.mkdir(ROOT_INO, name("sub")).await.unwrap();
    assert_eq!((d.kind, d.perm), (FileKind::Directory, 0o750));
    assert_eq!(fs.open(d.ino, OFlag::O_RDONLY.bits()).await.unwrap_err(), Errno::EISDIR);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_map_to_errno() {
    let samba = samba!();
    let (_client, _tree, _dir, fs) = fs_at(samba, "errno", config()).await;
    assert_eq!(fs.lookup(ROOT_INO, name("missing")).await.unwrap_err(), Errno::ENOENT);
    assert_eq!(fs.unlink(ROOT_INO, name("missing")).await.unwrap_err(), Errno::ENOENT);

    let (f, fh) = create(&fs, ROOT_INO, "f").await;
    fs.release(fh).await;
    assert_eq!(fs.create(ROOT_INO, name("f"), CREATE_EXCL).await.unwrap_err(), Errno::EEXIST);
    // Without O_EXCL an existing file is opened.
    let (again, fh) = fs.create(ROOT_INO, name("f"), CREATE_RW).await.unwrap();
    assert_eq!(again.ino, f.ino);
    fs.release(fh).await;

    let d = fs.mkdir(ROOT_INO, name("d")).await.unwrap();
    assert_eq!(fs.mkdir(ROOT_INO, name("d")).await.unwrap_err(), Errno::EEXIST);
    let (_, fh) = create(&fs, d.ino, "inner").await;
    fs.release(fh).await;
    assert_eq!(fs.rmdir(ROOT_INO, name("d")).await.unwrap_err(), Errno::ENOTEMPTY);
    fs.unlink(d.ino, name("inner")).await.unwrap();
    fs.rmdir(ROOT_INO, name("d")).await.unwrap();
    assert_eq!(fs.lookup(ROOT_INO, name("d")).await.unwrap_err(), Errno::ENOENT);

    // Names the share cannot hold, checked before any request.
    assert_eq!(fs.lookup(ROOT_INO, name("a\\b")).await.unwrap_err(), Errno::EINVAL);
    assert_eq!(fs.lookup(ROOT_INO, name("..")).await.unwrap_err(), Errno::EINVAL);
    let long = "x".repeat(NAME_MAX + 1);
    assert_eq!(fs.mkdir(ROOT_INO, name(&long)).await.unwrap_err(), Errno::ENAMETOOLONG);
    // An inode the kernel never looked up (or forgot) is stale.
    assert_eq!(fs.getattr(u64::MAX - 7, None).await.unwrap_err(), Errno::ESTALE);
    // No symlinks, no device nodes.
    assert_eq!(fs.symlink(ROOT_INO, name("l"), name("target")).await.unwrap_err(), Errno::EPERM);
    assert_eq!(fs.mknod(ROOT_INO, name("fifo"), 0o010644).await.unwrap_err(), Errno::EPERM);
    let n = fs.mknod(ROOT_INO, name("plain"), 0o100644).await.unwrap();
    assert_eq!((n.kind, n.size), (FileKind::RegularFile, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_moves_names_and_inodes() {
    let samba = samba!();
    let (_client, _tree, _dir, fs) = fs_at(samba, "rename", config()).await;
    let (a, fh) = create(&fs, ROOT_INO, "a").await;
    write(&fs, fh, 0, b"first").await;
    fs.release(fh).await;
    let d = fs.mkdir(ROOT_INO, name("d")).await.unwrap();

    fs.rename(ROOT_INO, name("a"), d.ino, name("b"), 0).await.unwrap();
    assert_eq!(fs.lookup(ROOT_INO, name("a")).await.unwrap_err(), Errno::ENOENT);
    assert_eq!(fs.lookup(d.ino, name("b")).await.unwrap().ino, a.ino);
    // The inode follows its new name.
    assert_eq!(fs.getattr(a.ino, None).await.unwrap().size, 5);

    // Replacing an existing file, unless RENAME_NOREPLACE.
    let (_, fh) = create(&fs, ROOT_INO, "c").await;
    fs.release(fh).await;
    assert_eq!(fs.rename(ROOT_INO, name("c"), d.ino, name("b"), RENAME_NOREPLACE).await.unwrap_err(), Errno::EEXIST);
    fs.rename(ROOT_INO, name("c"), d.ino, name("b"), 0).await.unwrap();
    assert_eq!(fs.lookup(d.ino, name("b")).await.unwrap().size, 0);
    // RENAME_EXCHANGE has no SMB equivalent.
    assert_eq!(fs.rename(d.ino, name("b"), ROOT_INO, name("x"), 2).await.unwrap_err(), Errno::EINVAL);
    assert_eq!(fs.rename(ROOT_INO, name("nope"), ROOT_INO, name("x"), 0).await.unwrap_err(), Errno::ENOENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlinked_open_file_keeps_working_until_closed() {
    let samba = samba!();
    let (_client, tree, dir, fs) = fs_at(samba, "unlink", config()).await;
    let (a, fh) = create(&fs, ROOT_INO, "open.txt").await;
    write(&fs, fh, 0, b"still here").await;
    fs.unlink(ROOT_INO, name("open.txt")).await.unwrap();
    assert_eq!(fs.lookup(ROOT_INO, name("open.txt")).await.unwrap_err(), Errno::ENOENT);
    // The handle still reads and writes; attributes come through it (no handle passed, as with fstat).
    assert_eq!(fs.read(fh, 0, 100).await.unwrap(), &b"still here"[..]);
    write(&fs, fh, 10, b", and more").await;
    assert_eq!(fs.getattr(a.ino, None).await.unwrap().size, 20);
    fs.flush(fh).await.unwrap();
    fs.release(fh).await;
    // Once closed the server has removed it.
    let gone = async {
        for _ in 0..100 {
            if tree.stat(&format!("{dir}/open.txt")).await.is_err() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        false
    };
    assert!(gone.await, "the file outlived its last handle");
    assert!(list(&fs, ROOT_INO, 100).await.iter().all(|(n, _)| n != "open.txt"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readdir_pages_and_readdirplus_references() {
    let samba = samba!();
    let (_client, _tree, _dir, fs) = fs_at(samba, "readdir", config()).await;
    let mut created = Vec::new();
    for n in ["one", "two", "three", "four", "five"] {
        let (attr, fh) = create(&fs, ROOT_INO, n).await;
        fs.release(fh).await;
        // Give the kernel's reference back, so only readdirplus holds one below.
        fs.forget(attr.ino, 1);
        created.push(attr.ino);
    }
    let sub = fs.mkdir(ROOT_INO, name("sub")).await.unwrap();
    fs.forget(sub.ino, 1);

    let mut want: Vec<(String, FileKind)> = [".", ".."].iter().map(|n| (n.to_string(), FileKind::Directory)).collect();
    want.extend(["one", "two", "three", "four", "five"].iter().map(|n| (n.to_string(), FileKind::RegularFile)));
    want.push(("sub".to_string(), FileKind::Directory));
    want.sort_by(|a, b| a.0.cmp(&b.0));
    // One listing whatever the page size.
    assert_eq!(list(&fs, ROOT_INO, 100).await, want);
    assert_eq!(list(&fs, ROOT_INO, 2).await, want);
    assert_eq!(list(&fs, ROOT_INO, 1).await, want);

    // readdirplus: entries that fit take a reference (their inode answers), the one that did not fit gives
    // it back (its inode is unknown again).
    let fh = fs.opendir(ROOT_INO).unwrap();
    let mut added: Vec<(u64, Attr)> = Vec::new();
    let mut refused = None;
    fs.readdirplus(ROOT_INO, fh, 0, |e, attr| {
        assert_eq!(e.ino, attr.ino);
        if added.len() == 4 {
            refused.get_or_insert(e.ino);
            return true;
        }
        added.push((e.ino, *attr));
        false
    })
    .await
    .unwrap();
    fs.releasedir(fh);
    let refused = refused.expect("an entry did not fit");
    assert_eq!(fs.getattr(refused, None).await.unwrap_err(), Errno::ESTALE);
    for (ino, attr) in &added[2..] {
        assert!(created.contains(ino) || attr.kind == FileKind::Directory);
        assert_eq!(fs.getattr(*ino, None).await.unwrap().ino, *ino);
    }
    assert_eq!(fs.readdir(ROOT_INO, fh, 0, |_| false).await.unwrap_err(), Errno::EBADF);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statfs_and_read_only() {
    let samba = samba!();
    let (_client, tree, dir, fs) = fs_at(samba, "statfs", config()).await;
    let st = fs.statfs().await.unwrap();
    assert!(st.blocks > 0 && st.bfree <= st.blocks && st.bavail <= st.blocks, "{st:?}");
    assert!(st.bsize >= 512);
    assert_eq!(st.namelen, NAME_MAX as u32);
    let (_, fh) = create(&fs, ROOT_INO, "kept").await;
    write(&fs, fh, 0, b"ro").await;
    fs.release(fh).await;

    let ro = SmbFs::new(
        tree.clone(),
        &dir,
        FsConfig { read_only: true, cache: CacheMode::None, ..config() },
        Handle::current(),
    );
    assert_eq!(ro.mkdir(ROOT_INO, name("x")).await.unwrap_err(), Errno::EROFS);
    assert_eq!(ro.create(ROOT_INO, name("x"), CREATE_RW).await.unwrap_err(), Errno::EROFS);
    assert_eq!(ro.unlink(ROOT_INO, name("kept")).await.unwrap_err(), Errno::EROFS);
    assert_eq!(ro.rename(ROOT_INO, name("kept"), ROOT_INO, name("y"), 0).await.unwrap_err(), Errno::EROFS);
    assert_eq!(ro.symlink(ROOT_INO, name("l"), name("t")).await.unwrap_err(), Errno::EROFS);
    let kept = ro.lookup(ROOT_INO, name("kept")).await.unwrap();
    assert_eq!(ro.open(kept.ino, OFlag::O_WRONLY.bits()).await.unwrap_err(), Errno::EROFS);
    let set = SetAttr { size: Some(0), ..SetAttr::default() };
    assert_eq!(ro.setattr(kept.ino, None, set).await.unwrap_err(), Errno::EROFS);
    let fh = ro.open(kept.ino, OFlag::O_RDONLY.bits()).await.unwrap();
    assert_eq!(ro.read(fh, 0, 10).await.unwrap(), &b"ro"[..]);
    ro.release(fh).await;
    // A chown of the root of a read-only mount keeps its group.
    let set = SetAttr { gid: Some(4242), ..SetAttr::default() };
    assert_eq!(ro.setattr(ROOT_INO, None, set).await.unwrap().gid, 2000);
    // On a writable mount it becomes the mount's group, with group read/write.
    let root = fs.setattr(ROOT_INO, None, set).await.unwrap();
    assert_eq!((root.gid, root.perm), (4242, 0o770));
    assert_eq!(fs.lookup(ROOT_INO, name("kept")).await.unwrap().perm, 0o660);
}
