//! `smb3-csi demo` end to end: it must succeed and tell each step. Needs root, /dev/fuse and Samba; outside CI
//! a missing piece skips, under CI=true it fails.

#![cfg(feature = "demo")]

use std::path::Path;
use std::process::Command;

use smb3_testkit::running_in_ci;
use smb3_testkit::samba::Samba;

#[test]
fn demo_runs_the_whole_story() {
    let missing = if !nix::unistd::geteuid().is_root() || !Path::new("/dev/fuse").exists() {
        Some("root and /dev/fuse".to_string())
    } else {
        Samba::check_available().err().map(|e| e.to_string())
    };
    if let Some(what) = missing {
        assert!(!running_in_ci(), "CI=true: the demo needs {what}");
        eprintln!("skipped: the demo needs {what}");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_smb3-csi")).arg("demo").output().expect("run smb3-csi demo");
    smb3_testkit::run_log::record_output("cli", &out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    for step in [
        "private Samba server that requires SMB3 encryption",
        "CreateVolume",
        "NodeStageVolume",
        "NodePublishVolume",
        "fuse.smb3-csi",
        "Writing a file through the pod's mount",
        "smbclient got",
        "condition: normal",
        "NodeUnpublishVolume",
        "NodeUnstageVolume",
        "is gone from the share",
        "Demo finished: every step succeeded.",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
    // No password on the screen.
    assert!(!stdout.to_lowercase().contains("password="), "{stdout}");
}
