//! Mounts that never go stale: the SMB client against a private Samba whose
//! connections are cut (through a proxy) and whose smbd is stopped and
//! started again, with transfers and open files in flight. Each test
//! reports how long callers were blocked (`--nocapture` shows the numbers).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use smb3::{
    Backoff, Client, ClientOptions, ConnectionState, Credentials, CredentialsSource, Error, Observer, ObserverHandle,
    OpenOptions, Recovery, Secret, Tree,
};
use smb3_testkit::proxy::CorruptingProxy;
use smb3_testkit::samba::{Samba, SambaProfile};

/// A private Samba of this test's own (it gets restarted or re-keyed).
macro_rules! own_samba {
    () => {
        match Samba::start(SambaProfile::EncryptRequired) {
            Ok(s) => s,
            Err(e) if e.is_unavailable() => {
                eprintln!("skipped: {e}");
                return;
            }
            Err(e) => panic!("starting Samba: {e}"),
        }
    };
}

fn logs() {
    crate::common::init_tracing();
}

fn creds(samba: &Samba) -> Credentials {
    Credentials::user(samba.user(), "", samba.password().clone())
}

/// Quick reconnects, so that tests measure the client, not a long backoff.
fn options(observer: &Arc<Events>) -> ClientOptions {
    ClientOptions {
        observer: ObserverHandle::new(observer.clone()),
        echo_interval: Duration::from_secs(2),
        backoff: Backoff { initial: Duration::from_millis(100), max: Duration::from_millis(500) },
        timeout: Duration::from_secs(20),
        ..Default::default()
    }
}

/// Counts the connection events the client reports.
#[derive(Default)]
struct Events {
    disconnected: AtomicU64,
    reconnected: AtomicU64,
    longest_outage_ms: AtomicU64,
}

impl Observer for Events {
    fn disconnected(&self, _reason: &str) {
        self.disconnected.fetch_add(1, Ordering::SeqCst);
    }
    fn reconnected(&self, outage: Duration) {
        self.reconnected.fetch_add(1, Ordering::SeqCst);
        self.longest_outage_ms.fetch_max(outage.as_millis() as u64, Ordering::SeqCst);
    }
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn file_sha256(path: &std::path::Path) -> String {
    sha256(&std::fs::read(path).expect("reading the file on the server side"))
}

/// Writes `data` in `step`-sized `write_at` calls; returns the longest call.
async fn write_timed(f: &smb3::File, data: &[u8], step: usize) -> Result<Duration, Error> {
    let mut longest = Duration::ZERO;
    for (i, part) in data.chunks(step).enumerate() {
        let t = Instant::now();
        f.write_at((i * step) as u64, part).await?;
        longest = longest.max(t.elapsed());
    }
    Ok(longest)
}

/// Reads `len` bytes in `step`-sized `read_at` calls; returns the data and the longest call.
async fn read_timed(f: &smb3::File, len: usize, step: usize) -> Result<(Vec<u8>, Duration), Error> {
    let mut out = Vec::with_capacity(len);
    let mut longest = Duration::ZERO;
    while out.len() < len {
        let t = Instant::now();
        let part = f.read_at(out.len() as u64, step.min(len - out.len())).await?;
        longest = longest.max(t.elapsed());
        if part.is_empty() {
            break;
        }
        out.extend_from_slice(&part);
    }
    Ok((out, longest))
}

/// Cuts the proxy's connections `times` times, `every` apart, once the
/// client has started moving data.
fn cutter(proxy: Arc<CorruptingProxy>, times: usize, every: Duration) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut cut = 0;
        for _ in 0..times {
            tokio::time::sleep(every).await;
            cut += proxy.cut_all();
        }
        cut
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_write_and_read_survive_cut_connections() {
    logs();
    let samba = own_samba!();
    let proxy = Arc::new(CorruptingProxy::start(samba.addr()).expect("proxy"));
    let events = Arc::new(Events::default());
    let client = Client::connect("127.0.0.1", proxy.addr().port(), &creds(&samba), &options(&events)).await.unwrap();
    let tree = client.tree(samba.share_name()).await.unwrap();
    const LEN: usize = 512 << 20;
    const STEP: usize = 16 << 20;
    let payload = data(LEN, 1);

    let f = tree.create("big.bin").await.unwrap();
    assert!(f.is_durable(), "Samba should grant a durable handle with an RH lease");
    let persistent = f.id().persistent;
    let started = Instant::now();
    let cuts = cutter(proxy.clone(), 3, Duration::from_millis(500));
    let longest_write = write_timed(&f, &payload, STEP).await.expect("write across cuts");
    let write_time = started.elapsed();
    let reconnects_in_write = client.reconnect_count();
    let cut = cuts.await.unwrap();
    f.flush().await.unwrap();
    assert!(cut >= 1, "the proxy cut nothing");
    assert!(reconnects_in_write >= 2, "only {reconnects_in_write} reconnects during the write (transfer too fast?)");
    // Each cut brings the open back by DH2C reclaim (same persistent id) or,
    // when Samba has not yet released the old connection's open within the
    // reclaim window (a loaded machine), by reopening the path: either way it
    // is durable again and the data below must be intact.
    assert!(f.is_durable(), "the open lost its durable handle across reconnects");
    eprintln!(
        "open came back {} (persistent id {})",
        if f.id().persistent == persistent { "by DH2C reclaim" } else { "by reopen after the last cut" },
        f.id().persistent
    );
    assert_eq!(file_sha256(&samba.share_path().join("big.bin")), sha256(&payload), "server copy differs");

    let started = Instant::now();
    let before_read = client.reconnect_count();
    let cuts = cutter(proxy.clone(), 3, Duration::from_millis(400));
    let (back, longest_read) = read_timed(&f, LEN, STEP).await.expect("read across cuts");
    let read_time = started.elapsed();
    let reconnects_in_read = client.reconnect_count() - before_read;
    let cut_during_read = cuts.await.unwrap();
    assert!(reconnects_in_read >= 1, "no reconnect during the read (transfer too fast?)");
    assert!(sha256(&back) == sha256(&payload), "read data differs");
    f.close().await.unwrap();
    tree.remove_file("big.bin").await.unwrap();
    assert!(client.connection_state().is_connected());
    assert_eq!(events.disconnected.load(Ordering::SeqCst), events.reconnected.load(Ordering::SeqCst));
    eprintln!(
        "PAUSES cut-connection: write 512 MiB in {write_time:?} (longest 16 MiB write_at {longest_write:?}, \
         {reconnects_in_write} reconnects), read in {read_time:?} (longest 16 MiB read_at {longest_read:?}, \
         {reconnects_in_read} reconnects); {cut}+{cut_during_read} cuts, longest outage {} ms",
        events.longest_outage_ms.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smbd_restart_mid_transfer_keeps_open_files_but_a_deleted_one() {
    logs();
    let mut samba = own_samba!();
    let events = Arc::new(Events::default());
    let client = Client::connect(samba.host(), samba.port(), &creds(&samba), &options(&events)).await.unwrap();
    let tree = client.tree(samba.share_name()).await.unwrap();
    const LEN: usize = 512 << 20;
    let payload = data(LEN, 2);
    let big = tree.create("restart-big.bin").await.unwrap();
    let keep = tree.create("keep.txt").await.unwrap();
    keep.write_at(0, b"before").await.unwrap();
    let doomed = tree.create("doomed.txt").await.unwrap();
    doomed.write_at(0, b"soon gone").await.unwrap();
    let dir = tree.open("", OpenOptions::directory()).await.unwrap();

    let writer = {
        let payload = payload.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let longest = write_timed(&big, &payload, 8 << 20).await;
            (big, longest, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let share = samba.share_path().to_path_buf();
    let down = Duration::from_secs(3);
    let restart_at = Instant::now();
    let samba = tokio::task::spawn_blocking(move || {
        samba.stop_server().expect("stop smbd");
        // While the server is away, someone deletes one of the open files.
        std::fs::remove_file(share.join("doomed.txt")).unwrap();
        std::thread::sleep(down);
        samba.start_server().expect("start smbd");
        samba
    })
    .await
    .unwrap();
    let server_back = restart_at.elapsed();
    let (big, longest, write_time) = writer.await.unwrap();
    let longest = longest.expect("the write goes on after the restart");
    assert!(write_time > down, "the write ({write_time:?}) was not in flight across the restart");
    big.flush().await.unwrap();
    assert_eq!(file_sha256(&samba.share_path().join("restart-big.bin")), sha256(&payload));
    assert!(client.reconnect_count() >= 1);

    // The other open files carry on; only the deleted one fails.
    keep.write_at(6, b" and after").await.expect("an open file survives the restart");
    assert_eq!(keep.read_at(0, 100).await.unwrap(), b"before and after");
    let e = doomed.read_at(0, 10).await.expect_err("its file was deleted while the server was down");
    assert!(matches!(e, Error::HandleLost { .. }), "{e}");
    assert!(tree.read_dir("").await.unwrap().iter().any(|e| e.name == "keep.txt"));
    drop(dir);
    doomed.close().await.expect("closing a lost handle is fine");
    keep.close().await.unwrap();
    big.close().await.unwrap();
    eprintln!(
        "PAUSES smbd restart: server down {down:?}, back after {server_back:?}; 512 MiB written in {write_time:?}, \
         longest 8 MiB write_at {longest:?}; longest outage {} ms",
        events.longest_outage_ms.load(Ordering::SeqCst)
    );
}

/// Credentials cached from a secret store, refreshed when the server rejects them.
struct RotatingSecret {
    user: String,
    store: Mutex<Secret>,
    cache: Mutex<Secret>,
    refreshes: AtomicU64,
}

impl CredentialsSource for RotatingSecret {
    fn current(&self) -> BoxFuture<'_, Result<Credentials, Error>> {
        let c = Credentials::user(&self.user, "", self.cache.lock().unwrap().clone());
        Box::pin(async move { Ok(c) })
    }
    fn refresh(&self) -> BoxFuture<'_, Result<Credentials, Error>> {
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        let fresh = self.store.lock().unwrap().clone();
        *self.cache.lock().unwrap() = fresh.clone();
        let c = Credentials::user(&self.user, "", fresh);
        Box::pin(async move { Ok(c) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_password_is_picked_up_on_reconnect() {
    logs();
    let mut samba = own_samba!();
    let source = Arc::new(RotatingSecret {
        user: samba.user().to_string(),
        store: Mutex::new(samba.password().clone()),
        cache: Mutex::new(samba.password().clone()),
        refreshes: AtomicU64::new(0),
    });
    let events = Arc::new(Events::default());
    let client =
        Client::connect_with_source(samba.host(), samba.port(), source.clone(), &options(&events)).await.unwrap();
    let tree = client.tree(samba.share_name()).await.unwrap();
    let f = tree.create("rotated.txt").await.unwrap();
    f.write_at(0, b"old password").await.unwrap();

    let new = smb3_testkit::run_log::test_password("N3w-pass");
    samba.change_password(new.clone()).unwrap();
    *source.store.lock().unwrap() = new;
    let t = Instant::now();
    client.force_reconnect("test: password rotated");
    f.write_at(12, b", new password").await.expect("I/O continues with the rotated password");
    let pause = t.elapsed();
    assert_eq!(f.read_at(0, 100).await.unwrap(), b"old password, new password");
    assert!(source.refreshes.load(Ordering::SeqCst) >= 1, "the rejected cached password was refreshed");
    assert_eq!(client.reconnect_count(), 1);
    f.close().await.unwrap();
    tree.remove_file("rotated.txt").await.unwrap();
    eprintln!("PAUSES password rotation: write blocked {pause:?} across the reconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_mode_fails_in_time_while_down_and_works_once_back() {
    logs();
    let mut samba = own_samba!();
    let events = Arc::new(Events::default());
    let soft = Duration::from_secs(3);
    let opts = ClientOptions { recovery: Recovery::Soft { timeout: soft }, ..options(&events) };
    let client = Client::connect(samba.host(), samba.port(), &creds(&samba), &opts).await.unwrap();
    let tree = client.tree(samba.share_name()).await.unwrap();
    let f = tree.create("soft.txt").await.unwrap();
    f.write_at(0, b"up").await.unwrap();

    let mut samba = tokio::task::spawn_blocking(move || {
        samba.stop_server().unwrap();
        samba
    })
    .await
    .unwrap();
    let t = Instant::now();
    let e = f.write_at(2, b" down").await.expect_err("soft mode fails while the server is down");
    let failed_after = t.elapsed();
    assert!(matches!(e, Error::Unavailable { .. }), "{e}");
    assert!(failed_after >= soft - Duration::from_millis(200), "failed too early: {failed_after:?}");
    assert!(failed_after < soft + Duration::from_secs(3), "failed too late: {failed_after:?}");
    let t = Instant::now();
    let e = tree.stat("soft.txt").await.expect_err("path operations fail too");
    assert!(matches!(e, Error::Unavailable { .. }), "{e}");
    let stat_failed_after = t.elapsed();
    assert!(matches!(client.connection_state(), ConnectionState::Reconnecting { .. }));

    let samba = tokio::task::spawn_blocking(move || {
        samba.start_server().unwrap();
        samba
    })
    .await
    .unwrap();
    // Back within the soft timeout of one operation (backoff is at most 0.5 s here).
    let t = Instant::now();
    f.write_at(2, b" again").await.expect("works again once the server is back");
    let recovered_in = t.elapsed();
    assert_eq!(f.read_at(0, 100).await.unwrap(), b"up again");
    assert!(client.connection_state().is_connected());
    f.close().await.unwrap();
    drop(samba);
    eprintln!(
        "PAUSES soft mode ({soft:?}): write failed after {failed_after:?}, stat after {stat_failed_after:?}; \
         first write after restart took {recovered_in:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_operations_and_new_opens_survive_a_cut() {
    logs();
    let samba = own_samba!();
    let proxy = Arc::new(CorruptingProxy::start(samba.addr()).expect("proxy"));
    let events = Arc::new(Events::default());
    let client = Client::connect("127.0.0.1", proxy.addr().port(), &creds(&samba), &options(&events)).await.unwrap();
    let tree: Tree = client.tree(samba.share_name()).await.unwrap();
    tree.mkdir_all("ops/sub").await.unwrap();
    let mut longest = Duration::ZERO;
    for i in 0..40 {
        if i % 10 == 5 {
            proxy.cut_all();
        }
        let t = Instant::now();
        let name = format!("ops/sub/f{i}.txt");
        let f = tree.create(&name).await.unwrap();
        f.write_at(0, name.as_bytes()).await.unwrap();
        f.close().await.unwrap();
        tree.rename(&name, &format!("ops/f{i}.txt"), false).await.unwrap();
        assert_eq!(tree.stat(&format!("ops/f{i}.txt")).await.unwrap().size, name.len() as u64);
        tree.remove_file(&format!("ops/f{i}.txt")).await.unwrap();
        longest = longest.max(t.elapsed());
    }
    assert!(client.reconnect_count() >= 3, "cuts: {}", client.reconnect_count());
    assert!(tree.read_dir("ops").await.unwrap().iter().all(|e| e.name == "sub"));
    tree.remove_tree("ops").await.unwrap();
    eprintln!(
        "PAUSES path operations: longest create+write+close+rename+stat+remove {longest:?} across {} reconnects",
        client.reconnect_count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_are_detected_and_replayed_operations_do_not_fail() {
    logs();
    let samba = own_samba!();
    let proxy = Arc::new(CorruptingProxy::start(samba.addr()).expect("proxy"));
    let events = Arc::new(Events::default());
    let client = Client::connect("127.0.0.1", proxy.addr().port(), &creds(&samba), &options(&events)).await.unwrap();
    let tree = client.tree(samba.share_name()).await.unwrap();
    let share = samba.share_path().to_path_buf();
    let mut pauses = Vec::new();
    let mut timed = |what: &'static str, t: Instant| pauses.push(format!("{what} {:?}", t.elapsed()));

    // Each operation reaches the server and is carried out, but its answer
    // is lost: only ECHO can tell, and the replay then meets its own work.
    // Files made through SMB (owned by the share's user, not root).
    for (name, content) in [("del.txt", &b"x"[..]), ("from.txt", b"moved")] {
        let f = tree.create(name).await.unwrap();
        f.write_at(0, content).await.unwrap();
        f.close().await.unwrap();
    }
    assert_eq!(proxy.silence_responses(), 1);
    let t = Instant::now();
    tree.remove_file("del.txt").await.expect("a replayed delete that finds the file gone is success");
    timed("delete", t);
    assert!(!share.join("del.txt").exists());
    assert_eq!(client.reconnect_count(), 1, "the silent connection was found dead");

    proxy.silence_responses();
    let t = Instant::now();
    tree.rename("from.txt", "to.txt", false).await.expect("a replayed rename whose source is gone and target exists");
    timed("rename", t);
    assert_eq!(std::fs::read(share.join("to.txt")).unwrap(), b"moved");

    proxy.silence_responses();
    let t = Instant::now();
    tree.mkdir("made").await.expect("a replayed mkdir that finds its directory");
    timed("mkdir", t);
    assert!(share.join("made").is_dir());

    proxy.silence_responses();
    let t = Instant::now();
    let f = tree
        .open("excl.txt", OpenOptions::new().read(true).write(true).create_new(true))
        .await
        .expect("a replayed exclusive create gets its file");
    timed("exclusive create", t);

    proxy.silence_responses();
    let t = Instant::now();
    f.write_at(0, b"written once").await.expect("a replayed write");
    timed("write", t);
    assert_eq!(f.read_at(0, 100).await.unwrap(), b"written once");
    f.close().await.unwrap();
    assert_eq!(client.reconnect_count(), 5);
    eprintln!("PAUSES lost answers (echo every 2 s): {}", pauses.join(", "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_breaks_are_acknowledged_at_once() {
    logs();
    let samba = own_samba!();
    let events = Arc::new(Events::default());
    let opts = options(&events);
    let a = Client::connect(samba.host(), samba.port(), &creds(&samba), &opts).await.unwrap();
    let b = Client::connect(samba.host(), samba.port(), &creds(&samba), &opts).await.unwrap();
    let (ta, tb) = (a.tree(samba.share_name()).await.unwrap(), b.tree(samba.share_name()).await.unwrap());
    let held = ta.create("leased.txt").await.unwrap();
    held.write_at(0, b"held open with a lease").await.unwrap();
    assert!(held.is_durable());
    // Another client's write breaks A's read caching, its rename A's handle
    // caching; Samba waits up to 35 s for an acknowledgment that is required.
    let t = Instant::now();
    let other = tb.open("leased.txt", OpenOptions::new().read(true).write(true)).await.unwrap();
    other.write_at(0, b"HELD").await.unwrap();
    other.close().await.unwrap();
    tb.rename("leased.txt", "moved.txt", false).await.unwrap();
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "lease breaks held the other client for {took:?}");
    assert_eq!(held.read_at(0, 4).await.unwrap(), b"HELD");
    held.close().await.unwrap();
    tb.remove_file("moved.txt").await.unwrap();
    eprintln!("PAUSES lease breaks: other client's open+write+close+rename took {took:?}");
}
