//! Integration tests of the test kit itself: the private Samba profiles,
//! cleanup without orphans, and the corrupting proxy in front of smbclient.
//!
//! Without Samba (and outside CI) each test prints "skipped: ..." and passes;
//! under CI=true a missing Samba fails them.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use smb3_testkit::{live_processes_using, CorruptingProxy, Samba, SambaError, SambaProfile};

/// Starts a private instance, or None (after saying so) when unavailable.
fn start_or_skip(profile: SambaProfile) -> Option<Samba> {
    match Samba::start(profile) {
        Ok(samba) => Some(samba),
        Err(SambaError::Unavailable(why)) => {
            eprintln!("skipped: {why}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// Deterministic content that no byte flip leaves unchanged.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting until {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// put a local file, check it on disk, get it back, compare.
fn put_get_round_trip(samba: &Samba, name: &str, content: &[u8]) {
    let local = samba.scratch_dir().join(format!("{name}.local"));
    std::fs::write(&local, content).unwrap();
    samba.smbclient(&format!("put {} {name}", local.display())).unwrap();
    assert_eq!(std::fs::read(samba.share_path().join(name)).unwrap(), content, "file on the share's disk");
    let back = samba.scratch_dir().join(format!("{name}.back"));
    samba.smbclient(&format!("get {name} {}", back.display())).unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), content, "file read back over SMB");
}

/// Stops the instance and checks that none of its processes or files remain.
fn stop_and_check_clean(mut samba: Samba) {
    let smbd = samba.smbd_pid();
    let conf = samba.conf_path().to_path_buf();
    let dir = conf.parent().unwrap().to_path_buf();
    assert!(samba.processes().contains(&smbd), "smbd {smbd} is running before stop");
    samba.stop();
    assert!(live_processes_using(&conf).is_empty(), "processes left after stop: {:?}", live_processes_using(&conf));
    assert!(!is_running(smbd), "smbd {smbd} still runs");
    assert!(!dir.exists(), "{} was not removed", dir.display());
    samba.stop(); // idempotent
}

/// Not a zombie, and still ours (pid not reused for something else).
fn is_running(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit(')').next().unwrap_or("").trim_start().chars().next();
    !matches!(state, None | Some('Z') | Some('X'))
}

/// Holds an interactive smbclient session open and returns `smbstatus -b`
/// once it lists the session.
fn smbstatus_during_session(samba: &Samba) -> String {
    let protection = if samba.profile().can_encrypt() { "encrypt" } else { "sign" };
    let mut client = Command::new("smbclient")
        .arg(format!("//{}/{}", samba.host(), samba.share_name()))
        .args(["-p", &samba.port().to_string(), "--use-kerberos=off"])
        .arg("-s")
        .arg(samba.conf_path())
        .arg("-A")
        .arg(samba.credentials_file())
        .arg(format!("--client-protection={protection}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut status = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        status = samba.smbstatus().unwrap();
        if status.contains(samba.user()) {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _ = client.stdin.take().unwrap().write_all(b"quit\n");
    let _ = client.wait();
    status
}

#[test]
fn encrypt_required_round_trip_dialect_and_cleanup() {
    let Some(samba) = start_or_skip(SambaProfile::EncryptRequired) else { return };
    assert!(!format!("{samba:?}").contains(samba.password().expose()), "Debug must not show the password");
    assert_eq!(samba.unc(), format!("//127.0.0.1:{}/share", samba.port()));
    put_get_round_trip(&samba, "hello.txt", b"hello over SMB3\n");
    let empty = samba.scratch_dir().join("empty");
    std::fs::write(&empty, b"").unwrap();
    samba.smbclient(&format!("mkdir sub; put {} sub/empty", empty.display())).unwrap();
    assert!(samba.share_path().join("sub/empty").is_file());
    let listing = samba.smbclient_via(samba.addr(), "other", "ls").unwrap();
    assert!(!listing.contains("hello.txt"), "the other share is a different directory: {listing}");
    let status = smbstatus_during_session(&samba);
    assert!(status.contains("SMB3_11"), "dialect in smbstatus:\n{status}");
    assert!(status.contains("AES-128-GCM") || status.contains("AES-256-GCM"), "cipher in smbstatus:\n{status}");
    stop_and_check_clean(samba);
}

#[test]
fn signing_only_round_trip() {
    let Some(samba) = start_or_skip(SambaProfile::SigningOnly) else { return };
    put_get_round_trip(&samba, "signed.bin", &pattern(10_000));
    stop_and_check_clean(samba);
}

#[test]
fn max_protocol_smb3_00_uses_ccm() {
    let Some(samba) = start_or_skip(SambaProfile::MaxProtocol("SMB3_00")) else { return };
    put_get_round_trip(&samba, "three.bin", &pattern(5_000));
    let status = smbstatus_during_session(&samba);
    assert!(status.contains("SMB3_00"), "dialect in smbstatus:\n{status}");
    // SMB 3.0 has only AES-128-CCM (MS-SMB2 3.3.5.4).
    assert!(status.contains("AES-128-CCM"), "cipher in smbstatus:\n{status}");
    stop_and_check_clean(samba);
}

#[test]
fn max_protocol_smb2_10_cannot_encrypt() {
    let Some(samba) = start_or_skip(SambaProfile::MaxProtocol("SMB2_10")) else { return };
    assert!(!samba.profile().can_encrypt());
    put_get_round_trip(&samba, "two.bin", &pattern(3_000));
    let status = smbstatus_during_session(&samba);
    assert!(status.contains("SMB2_10"), "dialect in smbstatus:\n{status}");
    stop_and_check_clean(samba);
}

#[test]
fn pinned_cipher_is_used() {
    let Some(samba) = start_or_skip(SambaProfile::Cipher("AES-256-CCM")) else { return };
    put_get_round_trip(&samba, "cipher.bin", &pattern(70_000));
    let status = smbstatus_during_session(&samba);
    assert!(status.contains("AES-256-CCM"), "cipher in smbstatus:\n{status}");
    stop_and_check_clean(samba);
}

#[test]
fn netbios_port_139_round_trip() {
    // Serialized machine-wide by the kit's lock file.
    let Some(samba) = start_or_skip(SambaProfile::NetbiosPort139) else { return };
    assert_eq!(samba.port(), 139);
    put_get_round_trip(&samba, "netbios.txt", b"via port 139\n");
    stop_and_check_clean(samba);
}

#[test]
fn credentials_file_is_private_and_complete() {
    let Some(samba) = Samba::shared(SambaProfile::EncryptRequired) else {
        eprintln!("skipped: Samba unavailable");
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    let path = samba.credentials_file();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&format!("username={}\n", samba.user())));
    assert!(text.contains(&format!("password={}\n", samba.password().expose())));
    assert!(text.contains("domain="));
}

#[test]
fn wrong_password_is_refused() {
    let Some(samba) = Samba::shared(SambaProfile::EncryptRequired) else {
        eprintln!("skipped: Samba unavailable");
        return;
    };
    let bad = samba.scratch_dir().join("bad-credentials");
    std::fs::write(&bad, format!("username={}\npassword=not-the-password\n", samba.user())).unwrap();
    let out = Command::new("smbclient")
        .arg(format!("//127.0.0.1/{}", samba.share_name()))
        .args(["-p", &samba.port().to_string(), "--use-kerberos=off", "--client-protection=encrypt", "-c", "ls"])
        .arg("-s")
        .arg(samba.conf_path())
        .arg("-A")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("LOGON_FAILURE"), "{out:?}");
}

#[test]
fn proxy_forwards_smbclient_traffic_when_not_armed() {
    let Some(samba) = Samba::shared(SambaProfile::EncryptRequired) else {
        eprintln!("skipped: Samba unavailable");
        return;
    };
    let proxy = CorruptingProxy::start(samba.addr()).unwrap();
    let content = pattern(300_000);
    let local = samba.scratch_dir().join("proxied.local");
    std::fs::write(&local, &content).unwrap();
    let back = samba.scratch_dir().join("proxied.back");
    samba
        .smbclient_via(
            proxy.addr(),
            samba.share_name(),
            &format!("put {} proxied.bin; get proxied.bin {}", local.display(), back.display()),
        )
        .unwrap();
    assert_eq!(std::fs::read(samba.share_path().join("proxied.bin")).unwrap(), content);
    assert_eq!(std::fs::read(&back).unwrap(), content);
    assert_eq!(proxy.corrupted_count(), 0);
    assert!(proxy.connection_count() >= 1);
}

#[test]
fn armed_proxy_breaks_the_next_large_response() {
    let Some(samba) = Samba::shared(SambaProfile::EncryptRequired) else {
        eprintln!("skipped: Samba unavailable");
        return;
    };
    let content = pattern(256 * 1024);
    std::fs::write(samba.share_path().join("target.bin"), &content).unwrap();
    let proxy = CorruptingProxy::start(samba.addr()).unwrap();
    // Negotiate, session setup, tree connect and create responses are all far
    // shorter than 30000 bytes: the first frame this long is a READ response.
    proxy.corrupt_next_response(30_000);
    let back = samba.scratch_dir().join("target.corrupted");
    let _ = std::fs::remove_file(&back);
    let result = samba.smbclient_via(proxy.addr(), samba.share_name(), &format!("get target.bin {}", back.display()));
    assert_eq!(proxy.corrupted_count(), 1, "exactly one byte flipped");
    assert!(!proxy.is_armed());
    let got_intact_copy = std::fs::read(&back).is_ok_and(|b| b == content);
    assert!(result.is_err() || !got_intact_copy, "the tampered READ went unnoticed: {result:?}");
    assert!(!got_intact_copy, "smbclient must not produce an intact copy from a tampered response");

    // One shot: the next transfer through the same proxy is clean.
    let back = samba.scratch_dir().join("target.clean");
    samba.smbclient_via(proxy.addr(), samba.share_name(), &format!("get target.bin {}", back.display())).unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), content);
    assert_eq!(proxy.corrupted_count(), 1);
}

// ---- no orphans: a child test process starts the shared Samba and dies ----

const ORPHAN_CHILD_ENV: &str = "SMB3_TESTKIT_ORPHAN_CHILD";

/// Runs only as the child of the no-orphan tests (ignored otherwise).
#[test]
#[ignore = "helper process for the no_orphans_* tests"]
fn orphan_child() {
    let Ok(mode) = std::env::var(ORPHAN_CHILD_ENV) else { return };
    let profile = if mode == "exit139" { SambaProfile::NetbiosPort139 } else { SambaProfile::EncryptRequired };
    let samba = Samba::shared(profile).expect("Samba available in the parent");
    println!("ORPHAN_CHILD conf={} smbd={}", samba.conf_path().display(), samba.smbd_pid());
    std::io::stdout().flush().unwrap();
    match mode.as_str() {
        // exit() runs no destructors: the static instance is never dropped.
        "exit" | "exit139" => std::process::exit(0),
        "panic" => panic!("deliberate panic with a shared Samba running"),
        // The parent SIGKILLs us.
        _ => thread::sleep(Duration::from_secs(120)),
    }
}

/// Starts the child in `mode`, returns (conf path, smbd pid) and the child.
fn spawn_orphan_child(mode: &str) -> Option<(PathBuf, u32, std::process::Child)> {
    if let Err(e) = Samba::check_available() {
        eprintln!("skipped: {e}");
        return None;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["testkit::orphan_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(ORPHAN_CHILD_ENV, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines() {
        let line = line.unwrap();
        // libtest prints "test orphan_child ... " on the same line first.
        if let Some((_, rest)) = line.split_once("ORPHAN_CHILD conf=") {
            let (conf, smbd) = rest.split_once(" smbd=").unwrap();
            return Some((PathBuf::from(conf), smbd.parse().unwrap(), child));
        }
    }
    panic!("child exited without starting Samba: {:?}", child.wait());
}

fn assert_no_orphans(conf: &Path, smbd: u32) {
    wait_until("the dead test process's Samba is gone", Duration::from_secs(20), || {
        live_processes_using(conf).is_empty() && !is_running(smbd)
    });
    wait_until("its directory is removed", Duration::from_secs(5), || !conf.exists());
}

#[test]
fn no_orphans_when_the_test_process_exits_without_dropping_statics() {
    let Some((conf, smbd, mut child)) = spawn_orphan_child("exit") else { return };
    assert!(child.wait().unwrap().success());
    assert_no_orphans(&conf, smbd);
}

#[test]
fn no_orphans_when_the_test_process_panics() {
    let Some((conf, smbd, mut child)) = spawn_orphan_child("panic") else { return };
    assert!(!child.wait().unwrap().success());
    assert_no_orphans(&conf, smbd);
}

#[test]
fn no_orphans_when_the_test_process_is_killed() {
    let Some((conf, smbd, mut child)) = spawn_orphan_child("hang") else { return };
    assert!(is_running(smbd), "smbd runs while its test process lives");
    child.kill().unwrap(); // SIGKILL: nothing in the child gets to clean up
    child.wait().unwrap();
    assert_no_orphans(&conf, smbd);
}

#[test]
fn port_139_can_be_reused_right_after_a_process_holding_it_exits() {
    // The child's smbd is still shutting down when its lock is released:
    // the next start must wait for the port instead of failing to bind.
    let Some((conf, _smbd, mut child)) = spawn_orphan_child("exit139") else { return };
    assert!(child.wait().unwrap().success());
    let Some(samba) = start_or_skip(SambaProfile::NetbiosPort139) else { return };
    assert_ne!(samba.conf_path(), conf.as_path());
    samba.smbclient("ls").unwrap();
    stop_and_check_clean(samba);
}
