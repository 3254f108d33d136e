//! The `smb3-csi smb` debug client against a private Samba: dialects,
//! ciphers, transfers checked with smbclient, trees, and clear failures.

use std::path::Path;
use std::process::{Command, Output};

use rand::RngCore;
use sha2::{Digest, Sha256};
use smb3_testkit::samba::{Samba, SambaProfile};

const BIN: &str = env!("CARGO_BIN_EXE_smb3-csi");

fn smb(samba: &Samba, args: &[&str]) -> Output {
    smb_at(samba, &samba.unc(), args)
}

fn smb_at(samba: &Samba, target: &str, args: &[&str]) -> Output {
    let creds = samba.credentials_file();
    let mut cmd = Command::new(BIN);
    cmd.arg("smb").arg("--credentials").arg(&creds);
    let (opts, rest): (Vec<&str>, Vec<&str>) = split_opts(args);
    cmd.args(opts).arg(target).args(rest);
    cmd.env_remove("SMB_USERNAME").env_remove("SMB_PASSWORD");
    recorded(cmd.output().expect("run smb3-csi"))
}

/// `out`, kept for the secret scan (`smb3_testkit::run_log`).
fn recorded(out: Output) -> Output {
    smb3_testkit::run_log::record_output("cli", &out);
    out
}

/// Leading `--flag value` pairs go before the target.
fn split_opts<'a>(args: &[&'a str]) -> (Vec<&'a str>, Vec<&'a str>) {
    let mut i = 0;
    while i < args.len() && args[i].starts_with("--") {
        i += 2;
    }
    (args[..i].to_vec(), args[i..].to_vec())
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The single stderr line of a failed command.
fn fails(out: &Output) -> String {
    smb3_testkit::run_log::record_output("cli", out);
    assert!(!out.status.success(), "expected failure, got: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "expected one line on stderr, got: {err}");
    err
}

fn field(info: &str, name: &str) -> String {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {name} in {info}"))
}

fn random_file(dir: &Path, name: &str, len: usize) -> (std::path::PathBuf, String) {
    let mut data = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut data);
    let p = dir.join(name);
    std::fs::write(&p, &data).unwrap();
    (p, hex(&Sha256::digest(&data)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256_file(p: &Path) -> String {
    hex(&Sha256::digest(std::fs::read(p).unwrap()))
}

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

#[test]
fn info_reports_smb311_encrypted_by_default() {
    let samba = samba!(SambaProfile::EncryptRequired);
    let info = ok(&smb(samba, &["info"]));
    assert_eq!(field(&info, "dialect"), "3.1.1");
    assert_eq!(field(&info, "encrypted"), "yes");
    assert!(field(&info, "cipher").starts_with("AES-"), "{info}");
    assert!(field(&info, "max read").parse::<u32>().unwrap() >= 65536);
}

#[test]
fn every_smb3_dialect_negotiates_with_encryption() {
    let samba = samba!(SambaProfile::EncryptRequired);
    for (max, expect_dialect, expect_cipher) in
        [("3.1.1", "3.1.1", None), ("3.0.2", "3.0.2", Some("AES-128-CCM")), ("3.0", "3.0", Some("AES-128-CCM"))]
    {
        let info = ok(&smb(samba, &["--max-dialect", max, "info"]));
        assert_eq!(field(&info, "dialect"), expect_dialect);
        assert_eq!(field(&info, "encrypted"), "yes");
        if let Some(c) = expect_cipher {
            assert_eq!(field(&info, "cipher"), c);
        }
        // And real I/O works on that dialect.
        let dir = format!("dialect-{max}");
        ok(&smb(samba, &["--max-dialect", max, "mkdir", &dir]));
        ok(&smb(samba, &["--max-dialect", max, "rmdir", &dir]));
    }
}

#[test]
fn smb21_works_with_encryption_off_and_signing() {
    let samba = samba!(SambaProfile::SigningOnly);
    let info = ok(&smb(samba, &["--max-dialect", "2.1", "--encryption", "off", "info"]));
    assert_eq!(field(&info, "dialect"), "2.1");
    assert_eq!(field(&info, "encrypted"), "no");
    assert_eq!(field(&info, "signing"), "HMAC-SHA256");
    let tmp = tempfile::tempdir().unwrap();
    let (local, sum) = random_file(tmp.path(), "a.bin", 3 << 20);
    ok(&smb(samba, &["--max-dialect", "2.1", "--encryption", "off", "put", local.to_str().unwrap(), "smb21.bin"]));
    let back = tmp.path().join("back.bin");
    ok(&smb(samba, &["--max-dialect", "2.1", "--encryption", "off", "get", "smb21.bin", back.to_str().unwrap()]));
    assert_eq!(sha256_file(&back), sum);
    ok(&smb(samba, &["--max-dialect", "2.1", "--encryption", "off", "rm", "smb21.bin"]));
}

#[test]
fn signing_only_server_with_if_supported_still_encrypts_smb3() {
    let samba = samba!(SambaProfile::SigningOnly);
    let info = ok(&smb(samba, &["--encryption", "if-supported", "info"]));
    assert_eq!(field(&info, "dialect"), "3.1.1");
    assert_eq!(field(&info, "encrypted"), "yes");
    let info = ok(&smb(samba, &["--encryption", "off", "info"]));
    assert_eq!(field(&info, "encrypted"), "no");
    assert_ne!(field(&info, "signing"), "none");
}

#[test]
fn each_pinned_cipher_is_negotiated_and_moves_data() {
    let tmp = tempfile::tempdir().unwrap();
    for (samba_name, shown) in [
        ("AES-128-GCM", "AES-128-GCM"),
        ("AES-256-GCM", "AES-256-GCM"),
        ("AES-128-CCM", "AES-128-CCM"),
        ("AES-256-CCM", "AES-256-CCM"),
    ] {
        let samba = samba!(SambaProfile::Cipher(samba_name));
        let info = ok(&smb(samba, &["info"]));
        assert_eq!(field(&info, "cipher"), shown, "{info}");
        let (local, sum) = random_file(tmp.path(), "c.bin", (5 << 20) + 17);
        ok(&smb(samba, &["put", local.to_str().unwrap(), "cipher.bin"]));
        let back = tmp.path().join("c-back.bin");
        ok(&smb(samba, &["get", "cipher.bin", back.to_str().unwrap()]));
        assert_eq!(sha256_file(&back), sum, "{shown}");
        // The server's own view of a live session agrees on the cipher.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let creds = smb3::Credentials::user(samba.user(), "", samba.password().clone());
            let opts = smb3::ClientOptions::default();
            let client = smb3::Client::connect(samba.host(), samba.port(), &creds, &opts).await.unwrap();
            let status = samba.smbstatus().unwrap();
            assert!(status.contains(samba_name) && status.contains("SMB3_11"), "smbstatus: {status}");
            drop(client);
        });
    }
}

#[test]
fn put_get_64mib_is_byte_identical_and_smbclient_agrees() {
    let samba = samba!(SambaProfile::EncryptRequired);
    let tmp = tempfile::tempdir().unwrap();
    let (local, sum) = random_file(tmp.path(), "big.bin", 64 << 20);
    ok(&smb(samba, &["mkdir", "-p", "big/dir"]));
    ok(&smb(samba, &["put", local.to_str().unwrap(), "big/dir/big.bin"]));
    let back = tmp.path().join("back.bin");
    ok(&smb(samba, &["get", "big/dir/big.bin", back.to_str().unwrap()]));
    assert_eq!(sha256_file(&back), sum);
    // Independently: smbclient fetches what we wrote, and the server's disk holds it.
    let via_smbclient = tmp.path().join("smbclient.bin");
    samba.smbclient(&format!("get big/dir/big.bin {}", via_smbclient.display())).unwrap();
    assert_eq!(sha256_file(&via_smbclient), sum);
    assert_eq!(sha256_file(&samba.share_path().join("big/dir/big.bin")), sum);
    let stat = ok(&smb(samba, &["stat", "big/dir/big.bin"]));
    assert_eq!(field(&stat, "size"), (64u64 << 20).to_string());
    ok(&smb(samba, &["rm", "-r", "big"]));
    assert!(!samba.share_path().join("big").exists());
}

#[test]
fn tree_operations_mkdir_ls_mv_rm() {
    let samba = samba!(SambaProfile::EncryptRequired);
    let tmp = tempfile::tempdir().unwrap();
    let (small, _) = random_file(tmp.path(), "s.txt", 1000);
    ok(&smb(samba, &["mkdir", "-p", "tree/a/b/c"]));
    ok(&smb(samba, &["mkdir", "tree/d"]));
    ok(&smb(samba, &["put", small.to_str().unwrap(), "tree/a/b/c/f1"]));
    ok(&smb(samba, &["put", small.to_str().unwrap(), "tree/d/f2"]));
    let ls = ok(&smb(samba, &["ls", "tree"]));
    assert!(ls.contains(" a/") && ls.contains(" d/"), "{ls}");
    let ls = ok(&smb(samba, &["ls", "tree/a/b/c"]));
    assert!(ls.contains(" 1000 ") && ls.contains("f1"), "{ls}");
    ok(&smb(samba, &["mv", "tree/d/f2", "tree/a/f2-renamed"]));
    assert!(samba.share_path().join("tree/a/f2-renamed").exists());
    assert!(!samba.share_path().join("tree/d/f2").exists());
    // mv replaces an existing file.
    ok(&smb(samba, &["put", small.to_str().unwrap(), "tree/d/f3"]));
    ok(&smb(samba, &["mv", "tree/d/f3", "tree/a/f2-renamed"]));
    // A subdirectory as target path works too.
    let ls = ok(&smb_at(samba, &format!("{}/tree/a", samba.unc()), &["ls"]));
    assert!(ls.contains("f2-renamed") && ls.contains(" b/"), "{ls}");
    // rmdir on a non-empty directory fails clearly.
    let err = fails(&smb(samba, &["rmdir", "tree/a"]));
    assert!(err.contains("STATUS_DIRECTORY_NOT_EMPTY"), "{err}");
    ok(&smb(samba, &["rm", "tree/a/f2-renamed"]));
    // smbclient sees the same tree.
    let listing = samba.smbclient("ls tree/a/b/c/*").unwrap();
    assert!(listing.contains("f1"), "{listing}");
    ok(&smb(samba, &["rm", "-r", "tree"]));
    assert!(!samba.share_path().join("tree").exists());
    let df = ok(&smb(samba, &["df"]));
    assert!(field(&df, "total").parse::<u64>().unwrap() > 0);
}

#[test]
fn read_only_files_are_removed_by_recursive_delete() {
    let samba = samba!(SambaProfile::EncryptRequired);
    let tmp = tempfile::tempdir().unwrap();
    let (small, _) = random_file(tmp.path(), "ro.txt", 10);
    ok(&smb(samba, &["mkdir", "-p", "rotree/x"]));
    ok(&smb(samba, &["put", small.to_str().unwrap(), "rotree/x/ro.txt"]));
    samba.smbclient("setmode rotree/x/ro.txt +r").unwrap();
    ok(&smb(samba, &["rm", "-r", "rotree"]));
    assert!(!samba.share_path().join("rotree").exists());
}

#[test]
fn wrong_password_is_one_clear_line() {
    let samba = samba!(SambaProfile::EncryptRequired);
    let tmp = tempfile::tempdir().unwrap();
    let creds = tmp.path().join("bad");
    let wrong = smb3_testkit::run_log::test_password("definitely-wrong-pw");
    std::fs::write(&creds, format!("username={}\npassword={}\n", samba.user(), wrong.expose())).unwrap();
    let out = recorded(
        Command::new(BIN).args(["smb", "--credentials"]).arg(&creds).arg(samba.unc()).arg("info").output().unwrap(),
    );
    let err = fails(&out);
    assert!(err.contains("STATUS_LOGON_FAILURE"), "{err}");
    assert!(err.contains(&samba.unc()) || err.contains("127.0.0.1"), "{err}");
    assert!(!err.contains("definitely-wrong-pw"));
}

#[test]
fn credentials_from_environment() {
    let samba = samba!(SambaProfile::EncryptRequired);
    let out = Command::new(BIN)
        .args(["smb", &samba.unc(), "info"])
        .env("SMB_USERNAME", samba.user())
        .env("SMB_PASSWORD", samba.password().expose())
        .output()
        .unwrap();
    let out = recorded(out);
    ok(&out);
    let out = Command::new(BIN).args(["smb", &samba.unc(), "info"]).env_remove("SMB_USERNAME").output().unwrap();
    assert!(fails(&out).contains("no credentials"));
}

#[test]
fn unknown_share_and_path_fail_clearly() {
    let samba = samba!(SambaProfile::EncryptRequired);
    let unc = format!("//127.0.0.1:{}/nosuchshare", samba.port());
    let err = fails(&smb_at(samba, &unc, &["ls"]));
    assert!(err.contains("STATUS_BAD_NETWORK_NAME"), "{err}");
    let err = fails(&smb(samba, &["ls", "no/such/dir"]));
    assert!(err.contains("STATUS_OBJECT_PATH_NOT_FOUND") || err.contains("STATUS_OBJECT_NAME_NOT_FOUND"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let err = fails(&smb(samba, &["get", "missing.bin", tmp.path().join("x").to_str().unwrap()]));
    assert!(err.contains("STATUS_OBJECT_NAME_NOT_FOUND") && err.contains("missing.bin"), "{err}");
}

#[test]
fn encryption_required_client_refuses_smb2_only_server() {
    let samba = samba!(SambaProfile::MaxProtocol("SMB2_10"));
    let err = fails(&smb(samba, &["info"]));
    assert!(err.contains("encryption required") && err.contains("2.1"), "{err}");
    // The same server is fine when the user relaxes the policy.
    let info = ok(&smb(samba, &["--encryption", "off", "info"]));
    assert_eq!(field(&info, "dialect"), "2.1");
}

#[test]
fn netbios_port_139_framing() {
    // A private instance, stopped when this test ends: port 139 is one per
    // machine, and a shared instance would hold it for the whole test binary.
    let samba = match Samba::start(SambaProfile::NetbiosPort139) {
        Ok(samba) => samba,
        Err(smb3_testkit::SambaError::Unavailable(why)) => {
            assert!(!smb3_testkit::running_in_ci(), "CI=true: {why}");
            eprintln!("skipped: {why}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let samba = &samba;
    let info = ok(&smb(samba, &["info"]));
    assert_eq!(field(&info, "dialect"), "3.1.1");
    assert_eq!(field(&info, "encrypted"), "yes");
    let tmp = tempfile::tempdir().unwrap();
    let (local, sum) = random_file(tmp.path(), "nb.bin", 2 << 20);
    ok(&smb(samba, &["put", local.to_str().unwrap(), "nb.bin"]));
    assert_eq!(sha256_file(&samba.share_path().join("nb.bin")), sum);
    ok(&smb(samba, &["rm", "nb.bin"]));
}

#[test]
fn bad_arguments_are_rejected_before_connecting() {
    let out = Command::new(BIN).args(["smb", "not-a-target", "info"]).env("SMB_USERNAME", "x").output().unwrap();
    assert!(fails(&out).contains("invalid target"));
    let out = Command::new(BIN).args(["smb", "--ciphers", "des", "//h/s", "info"]).output().unwrap();
    assert!(!out.status.success());
}
