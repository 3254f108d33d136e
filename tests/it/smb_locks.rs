//! SMB2 byte-range locks between two clients (two connections, as two nodes would have) against the private
//! Samba: conflicts, shared locks, a blocking wait granted when the holder unlocks, a blocking wait cancelled
//! with SMB2 CANCEL, locks released when the holder closes, and the mandatory nature of SMB locks (a READ
//! through another open that hits an exclusive range fails with STATUS_FILE_LOCK_CONFLICT).

use crate::common::connect;
use std::time::{Duration, Instant};

use rand::RngCore;
use smb3::{Error, LockKind, NtStatus, OpenOptions};
use smb3_testkit::samba::{Samba, SambaProfile};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", rand::thread_rng().next_u32())
}

fn rw() -> OpenOptions {
    OpenOptions::new().read(true).write(true).create(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_conflict_across_connections_and_go_with_the_open() {
    let samba = samba!();
    let (_a, ta) = connect(samba).await;
    let (_b, tb) = connect(samba).await;
    let path = unique("locks");
    let fa = ta.open(&path, rw()).await.unwrap();
    fa.write_at(0, &[7u8; 4096]).await.unwrap();
    let fb = tb.open(&path, rw()).await.unwrap();

    fa.try_lock(0, 100, LockKind::Exclusive).await.unwrap();
    let e = fb.try_lock(50, 10, LockKind::Shared).await.unwrap_err();
    assert!(matches!(e, Error::LockConflict { .. }), "{e}");
    let e = fb.try_lock(99, 1, LockKind::Exclusive).await.unwrap_err();
    assert!(matches!(e, Error::LockConflict { .. }), "{e}");
    // Not overlapping: granted.
    fb.try_lock(100, 10, LockKind::Exclusive).await.unwrap();
    // Mandatory: B's read of A's exclusive range is refused by the server.
    let e = fb.read_at(10, 10).await.unwrap_err();
    assert_eq!(e.status(), Some(NtStatus::FILE_LOCK_CONFLICT), "{e}");
    assert_eq!(fb.read_at(200, 10).await.unwrap(), vec![7u8; 10]);
    fa.unlock(0, 100).await.unwrap();
    // Unlocking what is not locked is the server's RANGE_NOT_LOCKED.
    assert_eq!(fa.unlock(0, 100).await.unwrap_err().status(), Some(NtStatus::RANGE_NOT_LOCKED));

    // Shared locks coexist; an exclusive one then conflicts with both.
    fa.try_lock(0, 100, LockKind::Shared).await.unwrap();
    fb.try_lock(0, 100, LockKind::Shared).await.unwrap();
    let fa2 = ta.open(&path, rw()).await.unwrap();
    assert!(matches!(fa2.try_lock(0, 1, LockKind::Exclusive).await, Err(Error::LockConflict { .. })));
    fb.unlock(0, 100).await.unwrap();
    fb.unlock(100, 10).await.unwrap();

    // Closing the open releases its locks.
    fa.close().await.unwrap();
    fa2.try_lock(0, u64::MAX, LockKind::Exclusive).await.unwrap();
    assert!(matches!(fb.try_lock(5, 5, LockKind::Shared).await, Err(Error::LockConflict { .. })));
    fa2.close().await.unwrap();
    fb.try_lock(5, 5, LockKind::Exclusive).await.unwrap();
    fb.close().await.unwrap();
    tb.remove_file(&path).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_lock_waits_for_the_holder_and_can_be_cancelled() {
    let samba = samba!();
    let (_a, ta) = connect(samba).await;
    let (_b, tb) = connect(samba).await;
    let path = unique("lockwait");
    let fa = ta.open(&path, rw()).await.unwrap();
    let fb = tb.open(&path, rw()).await.unwrap();

    // Granted when the holder unlocks, well after the server said STATUS_PENDING.
    fa.try_lock(0, 10, LockKind::Exclusive).await.unwrap();
    let started = Instant::now();
    let (waited, ()) = tokio::join!(fb.lock_wait(0, 10, LockKind::Exclusive, std::future::pending()), async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        fa.unlock(0, 10).await.unwrap();
    });
    waited.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1400), "granted before the unlock");
    assert!(matches!(fa.try_lock(0, 1, LockKind::Shared).await, Err(Error::LockConflict { .. })));
    fb.unlock(0, 10).await.unwrap();

    // Cancelled: the waiter gets Cancelled, and the server forgot the waiting request (after A unlocks,
    // nothing is granted to B behind our back: A can lock again).
    fa.try_lock(0, 10, LockKind::Exclusive).await.unwrap();
    let started = Instant::now();
    let e = fb.lock_wait(0, 10, LockKind::Shared, tokio::time::sleep(Duration::from_millis(700))).await.unwrap_err();
    assert!(matches!(e, Error::Cancelled { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5), "cancel took {:?}", started.elapsed());
    fa.unlock(0, 10).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    fa.try_lock(0, 10, LockKind::Exclusive).await.unwrap();
    fa.unlock(0, 10).await.unwrap();
    // The connection is still fine after the cancel.
    fb.try_lock(0, 10, LockKind::Exclusive).await.unwrap();
    fb.close().await.unwrap();
    fa.close().await.unwrap();
    ta.remove_file(&path).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_from_two_connections_land_at_the_servers_end_of_file() {
    let samba = samba!();
    let (_a, ta) = connect(samba).await;
    let (_b, tb) = connect(samba).await;
    let path = unique("append");
    let fa = ta.open(&path, rw()).await.unwrap();
    let fb = tb.open(&path, rw()).await.unwrap();
    fa.append(b"a1\n").await.unwrap();
    fb.append(b"b1\n").await.unwrap();
    fa.append(b"a2\n").await.unwrap();
    fb.append(b"b2\n").await.unwrap();
    assert_eq!(fa.read_at(0, 100).await.unwrap(), b"a1\nb1\na2\nb2\n");
    fa.close().await.unwrap();
    fb.close().await.unwrap();
    let got = samba.smbclient(&format!("get {path} /dev/stdout")).unwrap();
    assert!(got.contains("a1\nb1\na2\nb2\n"), "{got}");
    ta.remove_file(&path).await.unwrap();
}
