//! `cargo bench --bench smb_transfer`: encrypted put/get of a large random file
//! through `smb3-csi smb` and through `smbclient`, against the same private
//! Samba, once per pinned cipher. Prints a table with our rate over smbclient's.
//!
//! SMB3_BENCH_MIB sets the file size (default 1024).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use sha2::{Digest, Sha256};
use smb3_testkit::samba::{Samba, SambaProfile};

const BIN: &str = env!("CARGO_BIN_EXE_smb3-csi");

fn timed(what: &str, cmd: &mut Command) -> f64 {
    let start = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let secs = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    secs
}

fn sha256(p: &Path) -> Vec<u8> {
    let mut f = std::fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    h.finalize().to_vec()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it: nothing to do then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("smb_transfer: a benchmark; run it with `cargo bench --bench smb_transfer`");
        return;
    }
    let mib: u64 = std::env::var("SMB3_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.bin");
    {
        use rand::RngCore;
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..mib {
            rand::thread_rng().fill_bytes(&mut buf);
            f.write_all(&buf).unwrap();
        }
    }
    let want = sha256(&src);
    let mb = mib as f64;
    println!("{mib} MiB random file, encrypted SMB 3.1.1, Samba on loopback; MiB/s (higher is better)");
    println!(
        "{:<12} {:>9} {:>9} {:>6}   {:>9} {:>9} {:>6}   info reports",
        "cipher", "put ours", "smbclient", "ratio", "get ours", "smbclient", "ratio"
    );
    for cipher in ["AES-128-GCM", "AES-256-GCM", "AES-128-CCM", "AES-256-CCM"] {
        let samba = match Samba::start(SambaProfile::Cipher(cipher)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("skipped: {e}");
                return;
            }
        };
        let creds = samba.credentials_file();
        let ours = |args: &[&str]| {
            let mut c = Command::new(BIN);
            c.arg("smb").arg("--credentials").arg(&creds).arg(samba.unc()).args(args);
            c
        };
        let info = String::from_utf8(ours(&["info"]).output().unwrap().stdout).unwrap();
        let shown = info.lines().find_map(|l| l.strip_prefix("cipher:")).unwrap_or("?").trim().to_string();

        let put_ours = timed("put", &mut ours(&["put", src.to_str().unwrap(), "ours.bin"]));
        let back = tmp.path().join("back.bin");
        let get_ours = timed("get", &mut ours(&["get", "ours.bin", back.to_str().unwrap()]));
        assert_eq!(sha256(&back), want, "our get is not byte-identical");
        assert_eq!(sha256(&samba.share_path().join("ours.bin")), want, "our put is not byte-identical");

        let smbclient = |cmd: String| {
            let start = Instant::now();
            samba.smbclient(&cmd).unwrap();
            start.elapsed().as_secs_f64()
        };
        let put_theirs = smbclient(format!("put {} theirs.bin", src.display()));
        let get_theirs = smbclient(format!("get theirs.bin {}", back.display()));
        assert_eq!(sha256(&back), want);
        println!(
            "{:<12} {:>9.0} {:>9.0} {:>6.2}   {:>9.0} {:>9.0} {:>6.2}   {}",
            cipher,
            mb / put_ours,
            mb / put_theirs,
            put_theirs / put_ours,
            mb / get_ours,
            mb / get_theirs,
            get_theirs / get_ours,
            shown
        );
        drop(samba);
    }
}
