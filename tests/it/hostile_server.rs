//! A malicious server, one scripted case per test: each ends within the
//! client's deadlines with an error that names what was wrong, while a good
//! connection to the real Samba in the same process keeps working (the
//! `Witness`). Cases that need real session keys rewrite Samba's replies
//! through the test kit's proxy.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smb3::wire::header::HEADER_LEN;
use smb3::wire::{Command, NtStatus};
use smb3::{Client, ClientOptions, Credentials, Dialect, EncryptionPolicy, Error};
use smb3_testkit::hostile::{self, Act, HostileServer, Incoming};
use smb3_testkit::proxy::{CorruptingProxy, Emit};
use smb3_testkit::samba::{Samba, SambaProfile};
use smb3_testkit::sealed;

/// SMB2_GLOBAL_CAP_ENCRYPTION (MS-SMB2 2.2.4).
const CAP_ENCRYPTION: u32 = 0x40;
/// Transform header: SessionId at bytes 44..52 (MS-SMB2 2.2.41).
const TRANSFORM_SESSION_ID: std::ops::Range<usize> = 44..52;

/// Tight deadlines so that every case ends in seconds.
fn tight() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(3),
        pending_timeout: Duration::from_secs(3),
        ..ClientOptions::default()
    }
}

fn somebody() -> Credentials {
    Credentials::user("victim", "", smb3_testkit::run_log::test_password("hostile"))
}

/// Keeps a connection to the real Samba busy (write, read back, list) while a case runs.
struct Witness {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Witness {
    async fn start(samba: &'static Samba, name: &str) -> Witness {
        let (_client, tree) = crate::common::connect(samba).await;
        let (stop, rounds) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let (s, r, file) = (stop.clone(), rounds.clone(), format!("witness-{name}.txt"));
        let task = tokio::spawn(async move {
            let _client = _client;
            while !s.load(Ordering::SeqCst) {
                let data = format!("round {}", r.load(Ordering::SeqCst));
                let f = tree.create(&file).await.map_err(|e| format!("witness create: {e}"))?;
                f.write_at(0, data.as_bytes()).await.map_err(|e| format!("witness write: {e}"))?;
                let back = f.read_at(0, 64).await.map_err(|e| format!("witness read: {e}"))?;
                f.close().await.map_err(|e| format!("witness close: {e}"))?;
                if back != data.as_bytes() {
                    return Err("witness read back other data".into());
                }
                tree.read_dir("").await.map_err(|e| format!("witness list: {e}"))?;
                r.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tree.remove_file(&file).await.map_err(|e| format!("witness cleanup: {e}"))
        });
        let witness = Witness { stop, rounds, task };
        // The good connection works before the case starts (and its file exists for the cleanup).
        witness.wait_for_a_round_after(0).await;
        witness
    }

    /// Waits until the witness has done more than `seen` rounds (or its task ended: `finish` reports why).
    async fn wait_for_a_round_after(&self, seen: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.rounds.load(Ordering::SeqCst) <= seen && !self.task.is_finished() {
            assert!(Instant::now() < deadline, "the good connection did no work for 30 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the witness after one more whole round (the good connection still works once the case
    /// is over); fails the test if any of its operations failed.
    async fn finish(self) {
        self.wait_for_a_round_after(self.rounds.load(Ordering::SeqCst)).await;
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("witness task").expect("the good connection kept working");
    }
}

/// Runs `case` against a hostile server speaking `script`, with a witness; returns the error and time taken.
async fn against(samba: &'static Samba, name: &str, script: hostile::Script, opts: ClientOptions) -> (Error, Duration) {
    let witness = Witness::start(samba, name).await;
    let server = HostileServer::start(script).expect("hostile server");
    let started = Instant::now();
    let result = Client::connect("127.0.0.1", server.addr().port(), &somebody(), &opts).await;
    let took = started.elapsed();
    let e = result.err().unwrap_or_else(|| panic!("{name}: connecting to a hostile server succeeded"));
    witness.finish().await;
    eprintln!("{name}: {e} (after {took:?})");
    (e, took)
}

fn script(f: impl Fn(&Incoming) -> Vec<Act> + Send + Sync + 'static) -> hostile::Script {
    Arc::new(f)
}

fn assert_within(took: Duration, bound: Duration) {
    assert!(took <= bound + Duration::from_secs(2), "took {took:?}, bound {bound:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_pending_on_negotiate_is_refused() {
    let (e, took) = against(
        samba!(),
        "pending-negotiate",
        script(|r| vec![Act::Repeat { msg: hostile::interim_reply(&r.header), every: Duration::from_millis(50) }]),
        tight(),
    )
    .await;
    assert!(matches!(e, Error::Protocol(_)), "{e}");
    assert!(e.to_string().contains("STATUS_PENDING for NEGOTIATE"), "{e}");
    assert_within(took, Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_setup_that_never_finishes_ends_at_the_connect_deadline() {
    let opts = ClientOptions { pending_timeout: Duration::from_secs(30), ..tight() };
    let (e, took) = against(
        samba!(),
        "endless-session-setup",
        script(|r| match r.header.command {
            Command::Negotiate => vec![Act::Send(hostile::negotiate_reply(&r.header, CAP_ENCRYPTION, 64))],
            _ => vec![Act::Repeat { msg: hostile::interim_reply(&r.header), every: Duration::from_millis(200) }],
        }),
        opts,
    )
    .await;
    assert!(matches!(e, Error::Timeout { secs: 3, .. }), "{e}");
    assert!(e.to_string().contains("negotiate and session setup"), "{e}");
    assert_within(took, Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_for_a_message_id_never_sent_is_a_protocol_violation() {
    let (e, took) = against(
        samba!(),
        "unsent-id",
        script(|r| {
            let mut reply = hostile::negotiate_reply(&r.header, CAP_ENCRYPTION, 64);
            reply[24..32].copy_from_slice(&7u64.to_le_bytes()); // MessageId
            vec![Act::Send(reply)]
        }),
        tight(),
    )
    .await;
    assert!(e.to_string().contains("response for message id 7, which was never sent"), "{e}");
    assert_within(took, Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_response_is_a_protocol_violation() {
    let (e, took) = against(
        samba!(),
        "duplicate",
        script(|r| match r.header.command {
            Command::Negotiate => {
                let reply = hostile::negotiate_reply(&r.header, CAP_ENCRYPTION, 64);
                vec![Act::Send(reply.clone()), Act::Send(reply)]
            }
            _ => vec![],
        }),
        tight(),
    )
    .await;
    assert!(e.to_string().contains("second response for message id 0"), "{e}");
    assert_within(took, Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_buffer_pointing_outside_the_message_is_malformed() {
    let (e, took) = against(
        samba!(),
        "oversized-security-buffer",
        script(|r| {
            let mut reply = hostile::negotiate_reply(&r.header, CAP_ENCRYPTION, 64);
            let at = hostile::NEGOTIATE_SECURITY_BUFFER_OFFSET;
            reply[at..at + 2].copy_from_slice(&128u16.to_le_bytes());
            reply[at + 2..at + 4].copy_from_slice(&0xFFFFu16.to_le_bytes());
            vec![Act::Send(reply)]
        }),
        tight(),
    )
    .await;
    assert!(matches!(e, Error::Wire(_)), "{e}");
    assert!(e.to_string().contains("malformed message from server"), "{e}");
    assert_within(took, Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_command_pointing_outside_the_frame_is_a_protocol_violation() {
    let (e, took) = against(
        samba!(),
        "next-command-outside",
        script(|r| {
            let mut reply = hostile::negotiate_reply(&r.header, CAP_ENCRYPTION, 64);
            reply[20..24].copy_from_slice(&0x0010_0000u32.to_le_bytes()); // NextCommand
            vec![Act::Send(reply)]
        }),
        tight(),
    )
    .await;
    assert!(e.to_string().contains("NextCommand 1048576 outside"), "{e}");
    assert_within(took, Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_longer_than_what_follows_ends_at_the_request_deadline() {
    let (e, took) = against(
        samba!(),
        "short-frame",
        script(|_| vec![Act::Raw(vec![0, 0xFF, 0xFF, 0xFF, 0xFE, b'S', b'M', b'B'])]),
        tight(),
    )
    .await;
    assert!(e.to_string().contains("no response to NEGOTIATE request 0 within 2s"), "{e}");
    assert_within(took, Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_credit_grant_is_refused() {
    let (e, took) = against(
        samba!(),
        "zero-credits",
        script(|r| match r.header.command {
            Command::Negotiate => vec![Act::Send(hostile::negotiate_reply(&r.header, CAP_ENCRYPTION, 0))],
            _ => vec![],
        }),
        tight(),
    )
    .await;
    assert!(e.to_string().contains("server granted no credits"), "{e}");
    assert_within(took, Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_credit_grants_do_not_overflow() {
    let (e, took) = against(
        samba!(),
        "huge-credits",
        script(|r| match r.header.command {
            Command::Negotiate => vec![Act::Send(hostile::negotiate_reply(&r.header, CAP_ENCRYPTION, u16::MAX))],
            _ => vec![Act::Send(hostile::error_reply(&r.header, NtStatus::ACCESS_DENIED, u16::MAX))],
        }),
        tight(),
    )
    .await;
    assert_eq!(e.status(), Some(NtStatus::ACCESS_DENIED), "{e}");
    assert_within(took, Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_drip_ends_at_the_connect_deadline() {
    let (e, took) = against(
        samba!(),
        "slow-drip",
        script(|r| {
            let msg = hostile::negotiate_reply(&r.header, CAP_ENCRYPTION, 64);
            vec![Act::Drip { msg, every: Duration::from_millis(100) }]
        }),
        // The drip keeps the request window open only if it were per byte: it is per response.
        ClientOptions { timeout: Duration::from_secs(30), ..tight() },
    )
    .await;
    assert!(matches!(e, Error::Timeout { secs: 3, .. }), "{e}");
    assert_within(took, Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_smb2_are_refused() {
    let (e, took) = against(
        samba!(),
        "not-smb",
        script(|_| vec![Act::Send(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec())]),
        tight(),
    )
    .await;
    assert!(e.to_string().contains("frame is not an SMB2 message"), "{e}");
    assert_within(took, Duration::ZERO);
}

/// A client of `samba` through `proxy`, with `opts`.
async fn via_proxy(samba: &Samba, proxy: &CorruptingProxy, opts: &ClientOptions) -> (Client, smb3::Tree) {
    let creds = Credentials::user(samba.user(), "", samba.password().clone());
    let client = Client::connect("127.0.0.1", proxy.addr().port(), &creds, opts).await.expect("connect via proxy");
    let tree = client.tree(samba.share_name()).await.expect("tree via proxy");
    (client, tree)
}

/// Arms a one-shot rewrite of the next frame that `matches`; returns whether it fired.
fn rewrite_next(
    proxy: &CorruptingProxy,
    matches: impl Fn(&[u8]) -> bool + Send + 'static,
    rewrite: impl Fn(Vec<u8>) -> Vec<Vec<u8>> + Send + 'static,
) -> Arc<AtomicBool> {
    let fired = Arc::new(AtomicBool::new(false));
    let f = fired.clone();
    proxy.rewrite_responses(Box::new(move |_, payload| {
        if !f.load(Ordering::SeqCst) && matches(&payload) {
            f.store(true, Ordering::SeqCst);
            return rewrite(payload);
        }
        vec![payload]
    }));
    fired
}

fn is_encrypted(p: &[u8]) -> bool {
    p.starts_with(&[0xFD, b'S', b'M', b'B'])
}

fn command_of(p: &[u8]) -> Option<u16> {
    p.starts_with(&[0xFE, b'S', b'M', b'B']).then(|| u16::from_le_bytes([p[12], p[13]]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_message_for_another_session_is_refused() {
    let samba = samba!(SambaProfile::EncryptRequired);
    let witness = Witness::start(samba, "wrong-session").await;
    let proxy = CorruptingProxy::start(samba.addr()).expect("proxy");
    let (client, tree) = via_proxy(samba, &proxy, &tight()).await;
    tree.stat("").await.expect("stat before tampering");
    let fired = rewrite_next(&proxy, is_encrypted, |mut p| {
        p[TRANSFORM_SESSION_ID].copy_from_slice(&0xBAD5_E551_0000_0001u64.to_le_bytes());
        vec![p]
    });
    let started = Instant::now();
    let e = tree.stat("").await.unwrap_err();
    assert!(fired.load(Ordering::SeqCst));
    assert!(e.to_string().contains("encrypted message for unknown session 0xbad5e55100000001"), "{e}");
    assert_within(started.elapsed(), Duration::ZERO);
    assert!(!client.is_alive(), "a connection that delivered a forged frame must not be used again");
    witness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_encrypted_frame_is_refused() {
    // The same frame twice: the second copy decrypts, but under a nonce the session already
    // received (it would also answer a message id already answered).
    let samba = samba!(SambaProfile::EncryptRequired);
    let witness = Witness::start(samba, "replay").await;
    let proxy = CorruptingProxy::start(samba.addr()).expect("proxy");
    let (client, tree) = via_proxy(samba, &proxy, &tight()).await;
    tree.stat("").await.expect("stat before tampering");
    let fired = rewrite_next(&proxy, is_encrypted, |p| vec![p.clone(), p]);
    let started = Instant::now();
    // The first copy answers this request; the replay kills the connection under the next one.
    let _ = tree.stat("").await;
    let e = tree.stat("").await.unwrap_err();
    assert!(fired.load(Ordering::SeqCst));
    assert!(e.to_string().contains("server reused the nonce"), "{e}");
    assert_within(started.elapsed(), Duration::ZERO);
    assert!(!client.is_alive());
    witness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonce_reused_for_a_different_message_is_refused() {
    // Not a replay: Samba's next answer, a different message that authenticates, sealed again
    // with the key Samba logs (`debug encryption`) under the nonce of its previous answer.
    // It answers a request still waiting, so only the nonce gives it away.
    let samba = samba!(SambaProfile::KeysInLog);
    let witness = Witness::start(samba!(), "nonce-reuse").await;
    let proxy = CorruptingProxy::start(samba.addr()).expect("proxy");
    let (client, tree) = via_proxy(samba, &proxy, &tight()).await;
    tree.stat("").await.expect("stat before tampering");
    let forged = Arc::new(AtomicBool::new(false));
    let (f, mut previous) = (forged.clone(), None::<[u8; 16]>);
    proxy.rewrite_responses(Box::new(move |_, payload| {
        let (Some(nonce), Some(session)) = (sealed::nonce_of(&payload), sealed::session_of(&payload)) else {
            return vec![payload];
        };
        match previous {
            Some(used) if !f.load(Ordering::SeqCst) => {
                let key = samba.server_out_key(session).expect("smbd logged the session's ServerOut key");
                f.store(true, Ordering::SeqCst);
                vec![sealed::reseal_with_nonce(&payload, &key, used).expect("reseal Samba's frame")]
            }
            _ => {
                previous = Some(nonce);
                vec![payload]
            }
        }
    }));
    let started = Instant::now();
    tree.stat("").await.expect("the first answer is Samba's own");
    let e = tree.stat("").await.expect_err("an answer under a reused nonce must be refused");
    assert!(forged.load(Ordering::SeqCst));
    assert!(matches!(e, Error::Integrity(_)), "{e}");
    assert!(e.to_string().contains("server reused the nonce"), "{e}");
    assert_within(started.elapsed(), Duration::ZERO);
    assert!(!client.is_alive(), "a connection whose server reuses nonces must not be used again");
    witness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_that_does_not_verify_is_refused() {
    let samba = samba!(SambaProfile::SigningOnly);
    let witness = Witness::start(samba!(), "bad-signature").await;
    let proxy = CorruptingProxy::start(samba.addr()).expect("proxy");
    let opts = ClientOptions { encryption: EncryptionPolicy::Off, ..tight() };
    let (client, tree) = via_proxy(samba, &proxy, &opts).await;
    tree.stat("").await.expect("stat before tampering");
    let fired = rewrite_next(
        &proxy,
        |p| command_of(p).is_some(),
        |mut p| {
            let last = p.len() - 1;
            p[last] ^= 0x01;
            vec![p]
        },
    );
    let started = Instant::now();
    let e = tree.stat("").await.unwrap_err();
    assert!(fired.load(Ordering::SeqCst));
    assert!(matches!(e, Error::Integrity(_) | Error::Crypto(_)), "{e}");
    assert!(e.to_string().contains("integrity check failed"), "{e}");
    assert_within(started.elapsed(), Duration::ZERO);
    drop(client);
    witness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_kept_pending_past_the_ceiling_fails_alone() {
    // Samba's answer to one CREATE is swallowed and replaced by an (unsigned, as MS-SMB2
    // 3.3.4.2 allows) interim STATUS_PENDING: the CREATE fails at the ceiling with an SMB2
    // CANCEL, and the same connection goes on serving.
    let samba = samba!(SambaProfile::SigningOnly);
    let witness = Witness::start(samba!(), "pending-create").await;
    let proxy = CorruptingProxy::start(samba.addr()).expect("proxy");
    let opts = ClientOptions { encryption: EncryptionPolicy::Off, ..tight() };
    let (client, tree) = via_proxy(samba, &proxy, &opts).await;
    tree.stat("").await.expect("stat before tampering");
    let fired = rewrite_next(
        &proxy,
        |p| command_of(p) == Some(Command::Create.code()),
        |p| {
            let h = smb3::wire::Header::decode(&p).expect("header");
            vec![hostile::interim_reply(&h)]
        },
    );
    let started = Instant::now();
    let e = tree.create("pending-create.txt").await.expect_err("a CREATE kept pending must fail");
    assert!(fired.load(Ordering::SeqCst));
    assert!(matches!(e, Error::StillPending { secs: 3, .. }), "{e}");
    assert!(e.to_string().contains("server kept answering STATUS_PENDING for more than 3s"), "{e}");
    assert_within(started.elapsed(), Duration::from_secs(3));
    assert!(client.is_alive(), "one request given up on must not take the connection down");
    tree.stat("").await.expect("the same connection serves the next request");
    // Samba did create it; only its answer was swallowed.
    let _ = tree.remove_file("pending-create.txt").await;
    witness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripped_encryption_capability_on_302_is_caught_by_negotiate_validation() {
    // Capabilities: 4 bytes, 24 bytes into the NEGOTIATE response body.
    downgrade_on_302_is_caught("downgrade-encryption", "the encryption capability", 24, 4, CAP_ENCRYPTION).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripped_signing_on_302_is_caught_by_negotiate_validation() {
    // SecurityMode: 2 bytes, 2 bytes into the NEGOTIATE response body.
    downgrade_on_302_is_caught("downgrade-signing", "signing enabled", 2, 2, SIGNING_ENABLED).await;
}

/// SMB2_NEGOTIATE_SIGNING_ENABLED in the NEGOTIATE response's SecurityMode (MS-SMB2 2.2.4).
const SIGNING_ENABLED: u32 = 0x01;

/// A man in the middle clears `mask` in the `width`-byte field `at` bytes into Samba's 3.0.2 NEGOTIATE
/// response (a flag this Samba does set): the logon may go on, but the tree connect's
/// FSCTL_VALIDATE_NEGOTIATE_INFO sees what the server really said and refuses, at once.
async fn downgrade_on_302_is_caught(name: &str, what: &str, at: usize, width: usize, mask: u32) {
    let samba = samba!(SambaProfile::MaxProtocol("SMB3_02"));
    let witness = Witness::start(samba!(), name).await;
    let proxy = CorruptingProxy::start(samba.addr()).expect("proxy");
    let negotiate_seen = Arc::new(Mutex::new(None));
    let seen = negotiate_seen.clone();
    let fired = rewrite_next(
        &proxy,
        |p| command_of(p) == Some(Command::Negotiate.code()),
        move |mut p| {
            let at = HEADER_LEN + at;
            let mut field = [0u8; 4];
            field[..width].copy_from_slice(&p[at..at + width]);
            let value = u32::from_le_bytes(field);
            *seen.lock().unwrap() = Some(value);
            p[at..at + width].copy_from_slice(&(value & !mask).to_le_bytes()[..width]);
            vec![p]
        },
    );
    let opts = ClientOptions { encryption: EncryptionPolicy::IfSupported, max_dialect: Dialect::Smb302, ..tight() };
    let creds = Credentials::user(samba.user(), "", samba.password().clone());
    let started = Instant::now();
    let client = Client::connect("127.0.0.1", proxy.addr().port(), &creds, &opts).await.expect("logon");
    assert!(fired.load(Ordering::SeqCst));
    assert!(
        negotiate_seen.lock().unwrap().expect("negotiate seen") & mask != 0,
        "this Samba sets {what} on 3.0.2, so clearing it is a downgrade"
    );
    let e = client.tree(samba.share_name()).await.err().expect("tree connect after a downgrade must fail");
    assert!(e.to_string().contains("VALIDATE_NEGOTIATE_INFO mismatch"), "{what}: {e}");
    assert_within(started.elapsed(), Duration::ZERO);
    witness.finish().await;
}

/// After logon, Samba's answer to the first `command` is swallowed and replaced by an endless
/// stream of interim STATUS_PENDING answers (one every 200 ms, still going when the client gives
/// up). `op` runs on the same tree; returns its error, how long it took, and the client + tree to
/// check the connection afterwards, once the stream has ended.
async fn pending_stream_after_logon<T: std::fmt::Debug>(
    name: &str,
    command: Command,
    op: impl for<'a> FnOnce(
        &'a smb3::Tree,
        &'a Client,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, Error>> + Send + 'a>>,
) -> (Error, Duration, Client, smb3::Tree, CorruptingProxy) {
    const EVERY: Duration = Duration::from_millis(200);
    const STREAM: usize = 25; // 5 s: past the 3 s ceiling.
    let samba = Samba::shared(SambaProfile::SigningOnly).expect("Samba is installed: the witness started");
    let proxy = CorruptingProxy::start(samba.addr()).expect("proxy");
    let opts = ClientOptions { encryption: EncryptionPolicy::Off, ..tight() };
    let (client, tree) = via_proxy(samba, &proxy, &opts).await;
    tree.stat("").await.expect("stat before tampering");
    let streamed = Arc::new(AtomicBool::new(false));
    let (s, mut kept_pending) = (streamed.clone(), None::<u64>);
    proxy.rewrite_responses_paced(Box::new(move |_, payload| {
        let Some(h) = command_of(&payload).and_then(|_| smb3::wire::Header::decode(&payload).ok()) else {
            return vec![Emit::Frame(payload)];
        };
        match kept_pending {
            // Every answer Samba gives it (its own interim under load, then the final one) is swallowed.
            Some(id) if h.message_id == id => vec![],
            None if h.command == command => {
                kept_pending = Some(h.message_id);
                s.store(true, Ordering::SeqCst);
                vec![Emit::Stream { frame: hostile::interim_reply(&h), every: EVERY, times: STREAM }]
            }
            _ => vec![Emit::Frame(payload)],
        }
    }));
    let started = Instant::now();
    let e = op(&tree, &client).await.expect_err(&format!("{name}: a request kept pending must fail"));
    let took = started.elapsed();
    assert!(streamed.load(Ordering::SeqCst), "{name}: the stream never started");
    eprintln!("{name}: {e} (after {took:?})");
    (e, took, client, tree, proxy)
}

/// The same connection answers the next request, while the stream goes on (it began 5 s before
/// its end; the ceiling ended the request at 3 s): the late interim answers are dropped quietly.
async fn serves_after_the_stream(name: &str, tree: &smb3::Tree) {
    tree.stat("").await.unwrap_or_else(|e| panic!("{name}: the same connection serves the next request: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_pending_on_read_after_logon_ends_at_the_ceiling() {
    let witness = Witness::start(samba!(), "pending-read").await;
    let (e, took, client, tree, _proxy) = pending_stream_after_logon("pending-read", Command::Read, |tree, _| {
        Box::pin(async move {
            let f = tree.create("pending-read.txt").await?;
            f.write_at(0, b"data").await?;
            f.read_at(0, 4).await
        })
    })
    .await;
    assert!(matches!(e, Error::StillPending { secs: 3, .. }), "{e}");
    assert!(e.to_string().contains("server kept answering STATUS_PENDING for more than 3s"), "{e}");
    assert_within(took, Duration::from_secs(3));
    assert!(client.is_alive(), "one request given up on must not take the connection down");
    serves_after_the_stream("pending-read", &tree).await;
    let _ = tree.remove_file("pending-read.txt").await;
    witness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_pending_on_query_directory_after_logon_ends_at_the_ceiling() {
    let witness = Witness::start(samba!(), "pending-query-directory").await;
    let (e, took, client, tree, _proxy) =
        pending_stream_after_logon("pending-query-directory", Command::QueryDirectory, |tree, _| {
            Box::pin(async move { tree.read_dir("").await })
        })
        .await;
    assert!(matches!(e, Error::StillPending { secs: 3, .. }), "{e}");
    assert_within(took, Duration::from_secs(3));
    assert!(client.is_alive(), "one request given up on must not take the connection down");
    serves_after_the_stream("pending-query-directory", &tree).await;
    witness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_pending_on_echo_after_logon_is_a_protocol_violation() {
    // ECHO is never processed asynchronously (a liveness probe): no waiting for the ceiling.
    let witness = Witness::start(samba!(), "pending-echo").await;
    let (e, took, client, _tree, _proxy) = pending_stream_after_logon("pending-echo", Command::Echo, |_, client| {
        Box::pin(async move { client.echo().await })
    })
    .await;
    assert!(matches!(e, Error::Protocol(_)), "{e}");
    assert!(e.to_string().contains("STATUS_PENDING for ECHO request"), "{e}");
    assert!(e.to_string().contains("never processed asynchronously"), "{e}");
    assert_within(took, Duration::ZERO);
    assert!(!client.is_alive(), "a protocol violation closes the connection");
    witness.finish().await;
}
