//! The SMB client library against a private Samba: pipelining, concurrency,
//! file semantics, and integrity failures injected by a corrupting proxy.

use std::sync::Arc;

use rand::RngCore;
use smb3::{Client, ClientOptions, Credentials, Error, NtStatus, OpenOptions, Tree};
use smb3_testkit::proxy::CorruptingProxy;
use smb3_testkit::samba::{Samba, SambaProfile};

macro_rules! samba {
    ($profile:expr) => {
        match Samba::shared($profile) {
            Some(s) => s,
            None => {
                eprintln!("skipped: Samba is not installed (CI=true makes this a failure)");
                return;
            }
        }
    };
}

fn creds(samba: &Samba) -> Credentials {
    Credentials::user(samba.user(), "", samba.password().clone())
}

async fn connect(samba: &Samba) -> (Client, Tree) {
    let client =
        Client::connect(samba.host(), samba.port(), &creds(samba), &ClientOptions::default()).await.expect("connect");
    let tree = client.tree(samba.share_name()).await.expect("tree");
    (client, tree)
}

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfers_keep_many_requests_in_flight() {
    let samba = samba!(SambaProfile::EncryptRequired);
    let (client, tree) = connect(samba).await;
    let data = random(24 << 20);
    let f = tree.create("pipelined.bin").await.unwrap();
    f.upload(&mut &data[..]).await.unwrap();
    f.close().await.unwrap();
    let after_put = client.connection_stats().max_in_flight;
    assert!(after_put >= 8, "upload kept only {after_put} requests in flight");
    let f = tree.open("pipelined.bin", OpenOptions::new().read(true)).await.unwrap();
    let mut back = Vec::new();
    f.download(&mut back).await.unwrap();
    f.close().await.unwrap();
    assert!(back == data, "downloaded data differs");
    assert!(client.connection_stats().max_in_flight >= 8);
    // read_at/write_at at odd offsets and lengths.
    let f = tree.open("pipelined.bin", OpenOptions::new().read(true).write(true)).await.unwrap();
    let part = f.read_at(12345, 3 << 20).await.unwrap();
    assert!(part == data[12345..12345 + (3 << 20)]);
    f.write_at(7, b"hello").await.unwrap();
    assert_eq!(f.read_at(5, 9).await.unwrap(), [&data[5..7], b"hello", &data[12..14]].concat());
    let tail = f.read_at((24 << 20) - 10, 100).await.unwrap();
    assert_eq!(tail.len(), 10, "short read at end of file");
    assert!(f.read_at(100 << 20, 10).await.unwrap().is_empty());
    f.set_len(100).await.unwrap();
    assert_eq!(f.metadata().await.unwrap().size, 100);
    f.flush().await.unwrap();
    f.close().await.unwrap();
    tree.remove_file("pipelined.bin").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_operations_share_one_session() {
    let samba = samba!(SambaProfile::EncryptRequired);
    let (client, tree) = connect(samba).await;
    tree.mkdir_all("conc").await.unwrap();
    let tree = Arc::new(tree);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let tree = tree.clone();
        tasks.push(tokio::spawn(async move {
            let path = format!("conc/d{i}/sub");
            tree.mkdir_all(&path).await.unwrap();
            let data = format!("file {i}").into_bytes();
            let f = tree.create(&format!("{path}/f")).await.unwrap();
            f.write_at(0, &data).await.unwrap();
            f.close().await.unwrap();
            let m = tree.stat(&format!("{path}/f")).await.unwrap();
            assert_eq!(m.size, data.len() as u64);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let entries = tree.read_dir("conc").await.unwrap();
    assert_eq!(entries.len(), 40);
    assert!(entries.iter().all(|e| e.metadata.is_dir() && e.metadata.file_id != 0));
    assert!(tree.remove_tree("conc").await.unwrap());
    assert!(!tree.exists("conc").await.unwrap());
    assert!(!tree.remove_tree("conc").await.unwrap(), "removing a missing tree reports false");
    assert!(client.connection_stats().requests > 200);
    client.echo().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_listing_spans_many_buffers() {
    let samba = samba!(SambaProfile::EncryptRequired);
    let (_client, tree) = connect(samba).await;
    let dir = samba.share_path().join("many");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..3000 {
        std::fs::write(dir.join(format!("a-rather-long-file-name-to-fill-buffers-{i:05}.txt")), b"x").unwrap();
    }
    // Made by root on the server's disk: hand them to the share's user so SMB may delete them.
    let chown = std::process::Command::new("chown").arg("-R").arg(samba.user()).arg(&dir).status().unwrap();
    assert!(chown.success());
    let entries = tree.read_dir("many").await.unwrap();
    assert_eq!(entries.len(), 3000);
    let matching = tree.read_dir_matching("many", "*-0001?.txt").await.unwrap();
    assert_eq!(matching.len(), 10);
    assert!(tree.remove_tree("many").await.unwrap());
    assert!(!dir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_semantics_and_errors() {
    let samba = samba!(SambaProfile::EncryptRequired);
    let (_client, tree) = connect(samba).await;
    let f = tree.open("excl.txt", OpenOptions::new().write(true).create_new(true)).await.unwrap();
    assert!(f.was_created());
    f.write_at(0, b"abc").await.unwrap();
    f.close().await.unwrap();
    let e = tree.open("excl.txt", OpenOptions::new().write(true).create_new(true)).await.unwrap_err();
    assert_eq!(e.status(), Some(NtStatus::OBJECT_NAME_COLLISION));
    let f = tree.open("excl.txt", OpenOptions::new().write(true).truncate(true)).await.unwrap();
    assert_eq!(f.metadata().await.unwrap().size, 0);
    f.close().await.unwrap();
    let e = tree.rename("nope.txt", "x.txt", false).await.unwrap_err();
    assert_eq!(e.status(), Some(NtStatus::OBJECT_NAME_NOT_FOUND));
    tree.create("other.txt").await.unwrap().close().await.unwrap();
    let e = tree.rename("other.txt", "excl.txt", false).await.unwrap_err();
    assert_eq!(e.status(), Some(NtStatus::OBJECT_NAME_COLLISION));
    tree.rename("other.txt", "excl.txt", true).await.unwrap();
    let e = tree.mkdir("excl.txt/sub").await.unwrap_err();
    assert!(e.status().is_some(), "{e}");
    let e = tree.remove_dir("excl.txt").await.unwrap_err();
    assert_eq!(e.status(), Some(NtStatus::NOT_A_DIRECTORY));
    tree.remove_file("excl.txt").await.unwrap();
    let stats = tree.statfs().await.unwrap();
    assert!(stats.total_bytes >= stats.free_bytes && stats.block_size > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_share() {
    let samba = samba!(SambaProfile::EncryptRequired);
    let bad = Credentials::user(samba.user(), "", "not-the-password".into());
    let e = Client::connect(samba.host(), samba.port(), &bad, &ClientOptions::default()).await.err().unwrap();
    assert_eq!(e.status(), Some(NtStatus::LOGON_FAILURE), "{e}");
    assert!(!format!("{e} {e:?}").contains("not-the-password"));
    let (client, _tree) = connect(samba).await;
    let e = client.tree("nosuch").await.err().unwrap();
    assert_eq!(e.status(), Some(NtStatus::BAD_NETWORK_NAME));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_encrypted_response_is_an_integrity_error() {
    let samba = samba!(SambaProfile::EncryptRequired);
    let proxy = CorruptingProxy::start(samba.addr()).expect("proxy");
    let client =
        Client::connect("127.0.0.1", proxy.addr().port(), &creds(samba), &ClientOptions::default()).await.unwrap();
    let tree = client.tree(samba.share_name()).await.unwrap();
    std::fs::write(samba.share_path().join("integrity.txt"), b"secret data").unwrap();
    let f = tree.open("integrity.txt", OpenOptions::new().read(true)).await.unwrap();
    assert_eq!(f.read_at(0, 100).await.unwrap(), b"secret data");
    // Flip a byte inside the ciphertext (after the 52-byte transform header).
    proxy.corrupt_next_response(70);
    let e = f.read_at(0, 100).await.unwrap_err();
    assert!(matches!(e, Error::Integrity(_)), "expected an integrity error, got {e}");
    assert!(e.to_string().contains("integrity"), "{e}");
    assert_eq!(proxy.corrupted_count(), 1);
    assert!(!client.is_alive(), "a tampered connection must not be used again");
    std::fs::remove_file(samba.share_path().join("integrity.txt")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_signed_response_is_an_integrity_error() {
    let samba = samba!(SambaProfile::SigningOnly);
    let proxy = CorruptingProxy::start(samba.addr()).expect("proxy");
    let opts = ClientOptions { encryption: smb3::EncryptionPolicy::Off, ..Default::default() };
    let client = Client::connect("127.0.0.1", proxy.addr().port(), &creds(samba), &opts).await.unwrap();
    assert!(!client.info().encrypted);
    let tree = client.tree(samba.share_name()).await.unwrap();
    tree.stat("").await.unwrap();
    // Flip a byte in the body of the next (signed) response.
    proxy.corrupt_next_response(80);
    let e = tree.stat("").await.unwrap_err();
    assert!(matches!(e, Error::Integrity(_) | Error::Crypto(_)), "expected an integrity error, got {e}");
}

/// Closes an open when its lease loses handle caching (a lingering handle of the filesystem, in miniature).
struct CloseOnHandleBreak(std::sync::Mutex<Vec<smb3::File>>, std::sync::Mutex<Vec<smb3::LeaseBreak>>);

impl smb3::LeaseBreakHandler for CloseOnHandleBreak {
    fn lease_breaking(&self, event: smb3::LeaseBreak) -> futures_util::future::BoxFuture<'static, ()> {
        use smb3::wire::durable::lease_state::HANDLE_CACHING as H;
        let loses_handle = event.current & H != 0 && event.new & H == 0;
        self.1.lock().unwrap().push(event);
        let files = if loses_handle { std::mem::take(&mut *self.0.lock().unwrap()) } else { Vec::new() };
        Box::pin(async move {
            for f in files {
                f.close().await.unwrap();
            }
        })
    }
}

/// What deferred close rests on (Samba 4.17): an open without FILE_SHARE_DELETE (the guard), made under the
/// lease key of an open of the same file that stays open, shares its lease (no break); another client's delete
/// of the file then conflicts on share mode, the server breaks our handle caching and holds the delete until
/// we answer, and when we close both opens on that break the delete goes through: the name is gone for
/// everyone. Without the close, the delete fails (sharing violation) instead of leaving a delete-pending name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_that_does_not_share_delete_gives_way_to_another_clients_delete_on_a_handle_break() {
    use smb3::wire::durable::lease_state::{HANDLE_CACHING as H, READ_CACHING as R};
    let samba = samba!(SambaProfile::EncryptRequired);
    let (_ca, ta) = connect(samba).await;
    let (_cb, tb) = connect(samba).await;
    let dir = format!("noshare-{}", rand::thread_rng().next_u32());
    ta.mkdir_all(&dir).await.unwrap();
    let handler = Arc::new(CloseOnHandleBreak(Default::default(), Default::default()));
    ta.set_lease_break_handler(handler.clone());
    for round in 0..2 {
        let path = format!("{dir}/f{round}");
        ta.write_whole_file(&path, b"data", smb3::WholeFile::CreateNew).await.unwrap();
        let first = ta.open(&path, OpenOptions::new().read(true)).await.unwrap();
        let key = first.lease_key().expect("a leased open");
        assert_eq!(first.granted_lease() & (R | H), R | H);
        let opts = OpenOptions::new().read(true).share_delete(false).lease_key(key);
        let guard = ta.open(&path, opts).await.unwrap();
        assert_eq!(guard.lease_key(), Some(key));
        assert_eq!(guard.granted_lease() & (R | H), R | H, "the guard shares the lease");
        assert_eq!(first.granted_lease() & (R | H), R | H);
        assert!(handler.1.lock().unwrap().is_empty(), "no break for an open under the same lease key");
        let close_on_break = round == 0;
        let kept = if close_on_break {
            handler.0.lock().unwrap().extend([first, guard]);
            None
        } else {
            Some((first, guard))
        };
        let started = std::time::Instant::now();
        let removed = tb.remove_file(&path).await;
        let took = started.elapsed();
        let breaks = std::mem::take(&mut *handler.1.lock().unwrap());
        eprintln!("round {round}: delete took {took:?}; breaks {breaks:?}");
        assert!(breaks.iter().any(|b| b.current & H != 0 && b.new & H == 0), "no break of handle caching: {breaks:?}");
        if close_on_break {
            removed.unwrap();
            assert!(took < std::time::Duration::from_secs(2), "the delete waited {took:?}");
            assert!(tb.stat(&path).await.is_err() && ta.stat(&path).await.is_err());
            let listing = samba.smbclient(&format!("ls {dir}/*")).unwrap_or_default();
            assert!(!listing.contains(&format!("f{round}")), "smbclient still lists it: {listing}");
        } else {
            let e = removed.unwrap_err();
            assert_eq!(e.status(), Some(NtStatus::SHARING_VIOLATION), "{e}");
            let (first, guard) = kept.unwrap();
            first.close().await.unwrap();
            guard.close().await.unwrap();
            tb.remove_file(&path).await.unwrap();
        }
    }
    tb.remove_dir(&dir).await.unwrap();
}
