//! `smb3-csi mount` as a user runs it: mounts, serves, and exits 0 on SIGTERM and on an external umount;
//! a killed process leaves a Dead mount that `unmount` cleans.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smb3_csi::mount::{self, MountState};
use smb3_testkit::running_in_ci;
use smb3_testkit::samba::{Samba, SambaProfile};

const BIN: &str = env!("CARGO_BIN_EXE_smb3-csi");

fn samba() -> Option<&'static Samba> {
    if !(Path::new("/dev/fuse").exists() && nix::unistd::geteuid().is_root()) {
        assert!(!running_in_ci(), "CI=true: /dev/fuse and root are required");
        eprintln!("skipped: needs root and /dev/fuse");
        return None;
    }
    let s = Samba::shared(SambaProfile::EncryptRequired);
    if s.is_none() {
        eprintln!("skipped: Samba is not installed (CI=true makes this a failure)");
    }
    s
}

fn start(samba: &Samba, mp: &Path, opts: &str) -> Child {
    let child = Command::new(BIN)
        .arg("mount")
        .arg("--credentials")
        .arg(samba.credentials_file())
        .args(["-o", opts])
        .arg(samba.unc())
        .arg(mp)
        .env_remove("SMB_USERNAME")
        .env_remove("SMB_PASSWORD")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(mount::mount_state(mp).unwrap(), MountState::Mounted { .. }) {
        assert!(Instant::now() < deadline, "not mounted in time");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn wait_exit(child: &mut Child) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            smb3_testkit::run_log::record("cli", &err);
            return (status, err);
        }
        assert!(Instant::now() < deadline, "smb3-csi mount did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serves_until_sigterm() {
    let Some(samba) = samba() else { return };
    let mp = tempfile::tempdir().unwrap();
    let mut child = start(samba, mp.path(), "uid=1234,file_mode=0600,noperm,noserverino");
    fs::write(mp.path().join("cli-sigterm.txt"), b"via the cli").unwrap();
    let meta = std::os::unix::fs::MetadataExt::uid(&fs::metadata(mp.path().join("cli-sigterm.txt")).unwrap());
    assert_eq!(meta, 1234);
    let got = samba.smbclient("get cli-sigterm.txt /dev/stdout").unwrap();
    assert!(got.contains("via the cli"), "{got}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let (status, err) = wait_exit(&mut child);
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("ignoring kernel-only cifs mount options"), "one warning for ignored flags: {err}");
    assert!(!err.contains(samba.password().expose()));
    assert_eq!(mount::mount_state(mp.path()).unwrap(), MountState::NotMounted);
}

#[test]
fn exits_cleanly_on_external_umount() {
    let Some(samba) = samba() else { return };
    let mp = tempfile::tempdir().unwrap();
    let mut child = start(samba, mp.path(), "rw");
    let out = Command::new("umount").arg(mp.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, err) = wait_exit(&mut child);
    assert!(status.success(), "{status}: {err}");
}

#[test]
fn a_killed_server_leaves_a_dead_mount_that_unmount_cleans() {
    let Some(samba) = samba() else { return };
    let mp = tempfile::tempdir().unwrap();
    let mut child = start(samba, mp.path(), "rw");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(mount::mount_state(mp.path()).unwrap(), MountState::Dead);
    mount::unmount(mp.path()).unwrap();
    assert_eq!(mount::mount_state(mp.path()).unwrap(), MountState::NotMounted);
}

#[test]
fn bad_options_and_credentials_in_flags_are_refused() {
    let Some(samba) = samba() else { return };
    let mp = tempfile::tempdir().unwrap();
    for (opts, want) in [("password=hunter2", "credentials never travel"), ("vers=1.0", "SMB1"), ("uid=x", "uid")] {
        let out = Command::new(BIN)
            .arg("mount")
            .arg("--credentials")
            .arg(samba.credentials_file())
            .args(["-o", opts])
            .arg(samba.unc())
            .arg(mp.path())
            .output()
            .unwrap();
        smb3_testkit::run_log::record_output("cli", &out);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{opts}: {err}");
        assert!(!err.contains("hunter2"));
    }
    assert_eq!(mount::mount_state(mp.path()).unwrap(), MountState::NotMounted);
}
