//! `cargo bench --bench compare` (add `-- --quick` for a run under a minute): our client and FUSE mount
//! next to smbclient, like for like, against the test kit's private Samba with encryption required
//! (AES-128-GCM pinned on the server). Prints one table (medians of the runs; wall seconds and client CPU
//! seconds, the latter from getrusage of waited-for children), then the node-side figures (CreateVolume
//! latency, node plugin resident memory per staged volume).
//!
//! Like for like: smbclient runs as a user runs it (`-m SMB3_11 --client-protection=encrypt`, a client-only
//! smb.conf, downloads to /dev/null, uploads of a file in the page cache); ours is run as child processes
//! (`smb3-csi smb`, `smb3-csi mount` plus the reader or writer) so their CPU time is counted the same way,
//! connect and logon included on both sides. Before every read the kernel's caches are dropped and the
//! server's copy is read back into the page cache, so both clients start cold and the server serves
//! from memory. Every row checks that both sides moved the same bytes. SMB3_BENCH_MIB sets the big file's size.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use nix::sys::resource::{getrusage, UsageWho};
use smb3_csi::csi::proto::controller_client::ControllerClient;
use smb3_csi::csi::proto::node_client::NodeClient;
use smb3_csi::csi::proto::{
    volume_capability, CreateVolumeRequest, NodeStageVolumeRequest, NodeUnstageVolumeRequest, VolumeCapability,
};
use smb3_csi::mount::{self, MountState};
use smb3_testkit::samba::{Samba, SambaProfile};
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_smb3-csi");
const CIPHER: &str = "AES-128-GCM";

/// Sizes of one run of the benchmark.
#[derive(Clone, Copy, Debug)]
struct Plan {
    big_mib: u64,
    runs: usize,
    small_files: usize,
    small_size: usize,
    listing: usize,
    random_reads: usize,
    create_calls: usize,
    staged: &'static [usize],
}

const FULL: Plan = Plan {
    big_mib: 1024,
    runs: 3,
    small_files: 1000,
    small_size: 4096,
    listing: 10_000,
    random_reads: 20_000,
    create_calls: 200,
    staged: &[1, 100, 1000],
};

const QUICK: Plan = Plan {
    big_mib: 64,
    runs: 1,
    small_files: 100,
    small_size: 4096,
    listing: 500,
    random_reads: 1000,
    create_calls: 20,
    staged: &[1, 10],
};

/// Wall, client CPU and server CPU seconds of one measured piece of work.
#[derive(Clone, Copy, Debug, Default)]
struct Cost {
    wall: f64,
    cpu: f64,
    /// What the private Samba spent on it (all its processes).
    server: f64,
}

/// The CPU seconds (user + system) the private Samba has used so far, and how many processes it has: its
/// live processes, and the children they reaped (a client's connection process ends with the client).
fn samba_cpu(samba: &Samba) -> (f64, usize) {
    // /proc reports times in USER_HZ, which is 100 on Linux whatever the kernel's own tick.
    const USER_HZ: f64 = 100.0;
    let pids = samba.processes();
    let mut ticks = 0i64;
    for pid in &pids {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // Fields from the third (state) on follow the command name, which may hold spaces.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime, stime, cutime, cstime: fields 14 to 17.
        ticks += (14..=17).filter_map(|f| fields.get(f - 3)?.parse::<i64>().ok()).sum::<i64>();
    }
    (ticks as f64 / USER_HZ, pids.len())
}

/// Server CPU since `before` (taken with [`samba_cpu`]), once the connection processes of the clients that
/// finished are gone and reaped, so that their time is counted.
fn samba_cpu_since(samba: &Samba, before: (f64, usize)) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    while samba.processes().len() > before.1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // A process that just ended is a zombie until smbd reaps it, and is counted once it has been.
    std::thread::sleep(Duration::from_millis(100));
    samba_cpu(samba).0 - before.0
}

/// CPU seconds (user + system) of every child process waited for so far.
fn children_cpu() -> f64 {
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(u.user_time()) + secs(u.system_time())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn median_cost(v: &[Cost]) -> Cost {
    Cost {
        wall: median(v.iter().map(|c| c.wall).collect()),
        cpu: median(v.iter().map(|c| c.cpu).collect()),
        server: median(v.iter().map(|c| c.server).collect()),
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// Runs `cmd` to completion, panicking with its output when it fails.
fn run(what: &str, cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sh(script: &str) -> Output {
    run(script, Command::new("sh").arg("-c").arg(script))
}

/// Drops the kernel's page, dentry and inode caches (root only), then reads `server_files` back so that
/// the server serves from memory: the clients start cold, the server does not.
fn cold_clients(server_files: &[&Path]) {
    sh("sync");
    if let Err(e) = fs::write("/proc/sys/vm/drop_caches", "3") {
        panic!("dropping caches needs root: {e}");
    }
    for p in server_files {
        if p.is_dir() {
            sh(&format!("cat {}/* > /dev/null", p.display()));
        } else {
            sh(&format!("cat {} > /dev/null", p.display()));
        }
    }
}

/// The peer: smbclient as a user runs it, with a client-only configuration.
struct Peer<'a> {
    samba: &'a Samba,
    conf: PathBuf,
    creds: PathBuf,
}

impl Peer<'_> {
    fn command(&self, commands: &str, cwd: &Path) -> Command {
        let mut c = Command::new("smbclient");
        c.arg(format!("//{}/{}", self.samba.host(), self.samba.share_name()))
            .args(["-p", &self.samba.port().to_string(), "-s"])
            .arg(&self.conf)
            .arg("-A")
            .arg(&self.creds)
            .args(["-m", "SMB3_11", "--client-protection=encrypt", "--use-kerberos=off", "-c", commands])
            .current_dir(cwd);
        c
    }

    /// Runs smbclient and returns its cost and standard output.
    fn timed(&self, commands: &str, cwd: &Path) -> (Cost, String) {
        let (cpu0, server0) = (children_cpu(), samba_cpu(self.samba));
        let t0 = Instant::now();
        let out = run(&format!("smbclient -c {commands:?}"), &mut self.command(commands, cwd));
        let wall = t0.elapsed().as_secs_f64();
        let server = samba_cpu_since(self.samba, server0);
        // smbclient reports transfers ("getting file ... of size N") on stderr, listings on stdout.
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (Cost { wall, cpu: children_cpu() - cpu0, server }, text)
    }
}

/// Ours: `smb3-csi smb` and `smb3-csi mount` as child processes.
struct Ours<'a> {
    samba: &'a Samba,
    creds: PathBuf,
}

/// A running `smb3-csi mount` child.
struct Mounted {
    child: Child,
    mountpoint: PathBuf,
}

impl Ours<'_> {
    fn smb(&self, args: &[&str]) -> Cost {
        let (cpu0, server0) = (children_cpu(), samba_cpu(self.samba));
        let t0 = Instant::now();
        run(
            "smb3-csi smb",
            Command::new(BIN).arg("smb").arg("--credentials").arg(&self.creds).arg(self.samba.unc()).args(args),
        );
        let wall = t0.elapsed().as_secs_f64();
        Cost { wall, cpu: children_cpu() - cpu0, server: samba_cpu_since(self.samba, server0) }
    }

    /// Starts `smb3-csi mount` on `mountpoint` and waits until the mount answers.
    fn mount(&self, mountpoint: &Path, options: &[&str]) -> Mounted {
        fs::create_dir_all(mountpoint).unwrap();
        let child = Command::new(BIN)
            .args(["--log-level", "warn", "mount", "--credentials"])
            .arg(&self.creds)
            .args(options.iter().flat_map(|o| ["-o", o]))
            .arg(self.samba.unc())
            .arg(mountpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start smb3-csi mount");
        let mut m = Mounted { child, mountpoint: mountpoint.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(MountState::Mounted { .. }) = mount::mount_state(mountpoint) {
                return m;
            }
            if let Ok(Some(status)) = m.child.try_wait() {
                panic!("smb3-csi mount exited early: {status}");
            }
            assert!(Instant::now() < deadline, "smb3-csi mount never mounted {}", mountpoint.display());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Mounts, runs `work` against the mount point, unmounts and waits for the mount process: the cost
    /// counts the mount process (connect and logon included) and the work's processes.
    fn through_mount(&self, mountpoint: &Path, work: impl FnOnce(&Path)) -> Cost {
        self.through_mount_with(mountpoint, &[], work)
    }

    /// [`Ours::through_mount`] with mount options (`-o`).
    fn through_mount_with(&self, mountpoint: &Path, options: &[&str], work: impl FnOnce(&Path)) -> Cost {
        let (cpu0, server0) = (children_cpu(), samba_cpu(self.samba));
        let t0 = Instant::now();
        let mut m = self.mount(mountpoint, options);
        work(&m.mountpoint);
        let wall = t0.elapsed().as_secs_f64();
        mount::unmount(&m.mountpoint).expect("unmount");
        let status = m.child.wait().expect("wait for smb3-csi mount");
        assert!(status.success(), "smb3-csi mount exited with {status}");
        Cost { wall, cpu: children_cpu() - cpu0, server: samba_cpu_since(self.samba, server0) }
    }
}

/// Bytes `dd` reports having copied (its last status line starts with the count).
fn dd_bytes(out: &Output) -> u64 {
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .find_map(|l| l.split_once(" bytes").and_then(|(n, _)| n.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no byte count in dd's output: {err}"))
}

/// Files and total bytes below `dir` (one level).
fn dir_bytes(dir: &Path) -> (usize, u64) {
    let mut n = 0;
    let mut bytes = 0;
    for e in fs::read_dir(dir).unwrap() {
        let m = e.unwrap().metadata().unwrap();
        if m.is_file() {
            n += 1;
            bytes += m.len();
        }
    }
    (n, bytes)
}

/// One line of the table.
struct Row {
    name: String,
    ours: String,
    peer: String,
    ratio: String,
    ours_cost: Option<Cost>,
    peer_cost: Option<Cost>,
}

impl Row {
    /// A row comparing the same work: the ratio is the peer's wall time over ours (above 1: we are faster).
    fn timed(name: &str, unit: impl Fn(Cost) -> String, ours: Cost, peer: Cost) -> Row {
        Row {
            name: name.into(),
            ours: unit(ours),
            peer: unit(peer),
            ratio: format!("{:.2}x", peer.wall / ours.wall),
            ours_cost: Some(ours),
            peer_cost: Some(peer),
        }
    }

    /// A row comparing CPU seconds per GiB (the ratio is ours over the peer's: below 1 we use less).
    fn cpu(name: &str, gib: f64, ours: Cost, peer: Cost) -> Row {
        Row {
            name: name.into(),
            ours: format!("{:.2} s/GiB", ours.cpu / gib),
            peer: format!("{:.2} s/GiB", peer.cpu / gib),
            ratio: format!("{:.2}x CPU", ours.cpu / peer.cpu),
            ours_cost: None,
            peer_cost: None,
        }
    }

    fn ours_only(name: &str, ours: String) -> Row {
        Row { name: name.into(), ours, peer: "-".into(), ratio: "-".into(), ours_cost: None, peer_cost: None }
    }
}

/// A row's markdown line, also printed to stderr as soon as it is measured (a long run is not lost to a
/// later failure).
fn row_line(r: &Row) -> String {
    let pair = |a: Option<Cost>, b: Option<Cost>, f: fn(Cost) -> f64| match (a, b) {
        (Some(a), Some(b)) => format!("{:.2} / {:.2}", f(a), f(b)),
        _ => "-".into(),
    };
    format!(
        "| {} | {} | {} | {} | {} | {} | {} |",
        r.name,
        r.ours,
        r.peer,
        r.ratio,
        pair(r.ours_cost, r.peer_cost, |c| c.wall),
        pair(r.ours_cost, r.peer_cost, |c| c.cpu),
        pair(r.ours_cost, r.peer_cost, |c| c.server)
    )
}

fn push(rows: &mut Vec<Row>, row: Row) {
    eprintln!("{}", row_line(&row));
    rows.push(row);
}

fn print_table(plan: &Plan, rows: &[Row]) {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpu_model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let samba =
        String::from_utf8_lossy(&Command::new("smbd").arg("--version").output().map(|o| o.stdout).unwrap_or_default())
            .trim()
            .to_string();
    println!();
    println!(
        "machine: {cores} cores ({cpu_model}), Linux {}, {samba}, loopback, {CIPHER} required; medians of {} run(s)",
        kernel.trim(),
        plan.runs
    );
    println!(
        "| work | ours | smbclient | ratio | wall s ours / peer | client CPU s ours / peer | smbd CPU s ours / peer |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{}", row_line(r));
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary with neither flag: nothing to do.
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    if !quick && !args.iter().any(|a| a == "--bench") {
        println!("compare: a benchmark; run it with `cargo bench --bench compare` (or `-- --quick`)");
        return;
    }
    let mut plan = if quick { QUICK } else { FULL };
    // SMB3_BENCH_MIB: the big file's size (e.g. a quick run with 1 GiB reads under `perf record`).
    if let Some(mib) = std::env::var("SMB3_BENCH_MIB").ok().and_then(|v| v.parse().ok()) {
        plan.big_mib = mib;
    }
    let samba = match Samba::start(SambaProfile::Cipher(CIPHER)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let work = tempfile::Builder::new().prefix("smb3-csi-bench-").tempdir().unwrap();
    let rows = transfers(&plan, &samba, work.path());
    let mut rows = rows;
    rows.extend(node_costs(&plan, &samba, work.path()));
    print_table(&plan, &rows);
}

/// The client-side rows: the same work through smbclient, `smb3-csi smb` and the FUSE mount.
fn transfers(plan: &Plan, samba: &Samba, work: &Path) -> Vec<Row> {
    let conf = work.join("client.conf");
    fs::write(&conf, "[global]\n  client min protocol = SMB2_10\n").unwrap();
    let creds = samba.credentials_file();
    let peer = Peer { samba, conf, creds: creds.clone() };
    let ours = Ours { samba, creds };
    let share = samba.share_path();
    let info = run(
        "smb3-csi smb info",
        Command::new(BIN).arg("smb").arg("--credentials").arg(&ours.creds).arg(samba.unc()).arg("info"),
    );
    let cipher = String::from_utf8_lossy(&info.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("cipher:").map(|c| c.trim().to_string()));
    eprintln!("ours negotiates cipher {cipher:?}");

    // The big file, on the server and locally (in the page cache for the uploads).
    let size = plan.big_mib << 20;
    let gib = size as f64 / (1u64 << 30) as f64;
    let local_big = work.join("big.bin");
    sh(&format!("head -c {size} /dev/urandom > {}", local_big.display()));
    fs::copy(&local_big, share.join("big.bin")).unwrap();
    sh(&format!("chown {} {}", samba.user(), share.join("big.bin").display()));
    let server_big = share.join("big.bin");
    let mb_s = move |c: Cost| format!("{:.0} MiB/s", plan.big_mib as f64 / c.wall);
    let mut rows = Vec::new();

    // Sequential read through the mount vs get: each run cold on the client side.
    let mut mount_read = Vec::new();
    let mut api_read = Vec::new();
    let mut peer_get = Vec::new();
    for _ in 0..plan.runs {
        cold_clients(&[&server_big]);
        let (cost, out) = peer.timed("get big.bin /dev/null", work);
        assert!(out.contains(&format!("of size {size} as /dev/null")), "smbclient get: {out}");
        peer_get.push(cost);
        cold_clients(&[&server_big]);
        mount_read.push(ours.through_mount(&work.join("mnt"), |mp| {
            let out = run(
                "dd read",
                Command::new("dd").arg(format!("if={}", mp.join("big.bin").display())).args(["of=/dev/null", "bs=1M"]),
            );
            assert_eq!(dd_bytes(&out), size, "dd through the mount read a different size");
        }));
        cold_clients(&[&server_big]);
        api_read.push(ours.smb(&["get", "big.bin", "/dev/null"]));
    }
    let (mount_read, api_read, peer_get) = (median_cost(&mount_read), median_cost(&api_read), median_cost(&peer_get));
    push(
        &mut rows,
        Row::timed(
            &format!("sequential read, {} MiB: mount (dd bs=1M) vs get", plan.big_mib),
            mb_s,
            mount_read,
            peer_get,
        ),
    );
    push(
        &mut rows,
        Row::timed(
            &format!("sequential read, {} MiB: smb3-csi smb get vs get", plan.big_mib),
            mb_s,
            api_read,
            peer_get,
        ),
    );

    // Sequential write through the mount vs put, the source in the page cache. `dd conv=fsync` ends with an
    // SMB FLUSH, which Samba (strict sync) turns into an fsync of the file on the server's disk; `put` never
    // asks for one. So the peer is also measured with that fsync done on the server after its put (the same
    // durability), and ours without conv=fsync (close(2) still waits until the server has every byte: the
    // same guarantee as put's).
    let mut mount_write = Vec::new();
    let mut mount_write_close = Vec::new();
    let mut peer_put = Vec::new();
    let mut peer_put_synced = Vec::new();
    let dd_write = |mp: &Path, extra: &[&str]| {
        let out = run(
            "dd write",
            Command::new("dd")
                .arg(format!("if={}", local_big.display()))
                .arg(format!("of={}", mp.join("w.bin").display()))
                .arg("bs=1M")
                .args(extra),
        );
        assert_eq!(dd_bytes(&out), size);
    };
    for _ in 0..plan.runs {
        sh(&format!("cat {} > /dev/null", local_big.display()));
        let (cost, _) = peer.timed(&format!("put {} put.bin", local_big.display()), work);
        assert_eq!(fs::metadata(share.join("put.bin")).unwrap().len(), size, "smbclient put a different size");
        let t0 = Instant::now();
        fs::File::open(share.join("put.bin")).unwrap().sync_all().unwrap();
        let server_fsync = t0.elapsed().as_secs_f64();
        peer_put.push(cost);
        peer_put_synced.push(Cost { wall: cost.wall + server_fsync, ..cost });
        fs::remove_file(share.join("put.bin")).unwrap();
        for (costs, extra) in [(&mut mount_write, &["conv=fsync"][..]), (&mut mount_write_close, &[][..])] {
            sh(&format!("cat {} > /dev/null", local_big.display()));
            costs.push(ours.through_mount(&work.join("mnt"), |mp| dd_write(mp, extra)));
            assert_eq!(fs::metadata(share.join("w.bin")).unwrap().len(), size, "the mount wrote a different size");
            fs::remove_file(share.join("w.bin")).unwrap();
        }
    }
    let (mount_write, peer_put) = (median_cost(&mount_write), median_cost(&peer_put));
    let (mount_write_close, peer_put_synced) = (median_cost(&mount_write_close), median_cost(&peer_put_synced));
    push(
        &mut rows,
        Row::timed(
            &format!("sequential write, {} MiB: mount (dd bs=1M conv=fsync) vs put", plan.big_mib),
            mb_s,
            mount_write,
            peer_put,
        ),
    );
    push(
        &mut rows,
        Row::timed(
            &format!(
                "sequential write, {} MiB: mount (dd bs=1M conv=fsync) vs put, then fsync on the server",
                plan.big_mib
            ),
            mb_s,
            mount_write,
            peer_put_synced,
        ),
    );
    push(
        &mut rows,
        Row::timed(
            &format!(
                "sequential write, {} MiB: mount (dd bs=1M, no fsync; close waits for the server) vs put",
                plan.big_mib
            ),
            mb_s,
            mount_write_close,
            peer_put,
        ),
    );
    push(&mut rows, Row::cpu("client CPU per GiB read: mount (dd + FUSE server) vs get", gib, mount_read, peer_get));
    push(&mut rows, Row::cpu("client CPU per GiB read: smb3-csi smb get vs get", gib, api_read, peer_get));

    // Small files: the same files created (cp -r vs mput) and read back (cp -r vs mget) to a local directory.
    let small = work.join("small");
    fs::create_dir_all(&small).unwrap();
    for i in 0..plan.small_files {
        let mut data = vec![0u8; plan.small_size];
        rand::Rng::fill(&mut rand::thread_rng(), &mut data[..]);
        fs::write(small.join(format!("f{i:05}")), &data).unwrap();
    }
    let small_bytes = (plan.small_files, (plan.small_files * plan.small_size) as u64);
    let files_s = move |c: Cost| format!("{:.0} files/s", plan.small_files as f64 / c.wall);
    let (mut ours_create, mut peer_create, mut ours_read, mut peer_read) = (vec![], vec![], vec![], vec![]);
    // Deferred close (see src/fs/linger.rs) costs the server a guard's CREATE and a second CLOSE per released
    // file; the same creates without it show that part.
    let mut ours_create_no_linger = vec![];
    for _ in 0..plan.runs {
        let _ = fs::remove_dir_all(share.join("oc0"));
        sh(&format!("cat {}/* > /dev/null", small.display()));
        ours_create_no_linger.push(ours.through_mount_with(&work.join("mnt"), &["closetimeo=0"], |mp| {
            run("cp -r", Command::new("cp").arg("-r").arg(&small).arg(mp.join("oc0")));
        }));
        assert_eq!(dir_bytes(&share.join("oc0")), small_bytes, "cp -r to the mount (closetimeo=0)");
        for d in ["pc", "oc"] {
            let _ = fs::remove_dir_all(share.join(d));
        }
        sh(&format!("cat {}/* > /dev/null", small.display()));
        let (cost, _) = peer.timed("prompt off; mkdir pc; cd pc; mput f*", &small);
        assert_eq!(dir_bytes(&share.join("pc")), small_bytes, "smbclient mput");
        peer_create.push(cost);
        ours_create.push(ours.through_mount(&work.join("mnt"), |mp| {
            run("cp -r", Command::new("cp").arg("-r").arg(&small).arg(mp.join("oc")));
        }));
        assert_eq!(dir_bytes(&share.join("oc")), small_bytes, "cp -r to the mount");

        let (pdst, odst) = (work.join("mget"), work.join("cpback"));
        for d in [&pdst, &odst] {
            let _ = fs::remove_dir_all(d);
        }
        fs::create_dir_all(&pdst).unwrap();
        cold_clients(&[&share.join("pc")]);
        let (cost, _) = peer.timed("prompt off; cd pc; mget f*", &pdst);
        assert_eq!(dir_bytes(&pdst), small_bytes, "smbclient mget");
        peer_read.push(cost);
        cold_clients(&[&share.join("oc")]);
        ours_read.push(ours.through_mount(&work.join("mnt"), |mp| {
            run("cp -r back", Command::new("cp").arg("-r").arg(mp.join("oc")).arg(&odst));
        }));
        assert_eq!(dir_bytes(&odst), small_bytes, "cp -r from the mount");
    }
    let n = plan.small_files;
    push(
        &mut rows,
        Row::timed(
            &format!("{n} files of 4 KiB created: mount (cp -r) vs mput"),
            files_s,
            median_cost(&ours_create),
            median_cost(&peer_create),
        ),
    );
    push(
        &mut rows,
        Row::timed(
            &format!("{n} files of 4 KiB created: mount with closetimeo=0 (no deferred close) vs mput"),
            files_s,
            median_cost(&ours_create_no_linger),
            median_cost(&peer_create),
        ),
    );
    push(
        &mut rows,
        Row::timed(
            &format!("{n} files of 4 KiB read: mount (cp -r) vs mget"),
            files_s,
            median_cost(&ours_read),
            median_cost(&peer_read),
        ),
    );

    // A listing: ls -l of a directory of many entries vs smbclient's ls.
    let listing = share.join("many");
    fs::create_dir_all(&listing).unwrap();
    for i in 0..plan.listing {
        fs::File::create(listing.join(format!("entry-{i:06}"))).unwrap();
    }
    let (mut ours_ls, mut peer_ls) = (vec![], vec![]);
    for _ in 0..plan.runs {
        let (cost, out) = peer.timed("cd many; ls", work);
        assert_eq!(out.lines().filter(|l| l.contains("entry-")).count(), plan.listing, "smbclient ls");
        peer_ls.push(cost);
        ours_ls.push(ours.through_mount(&work.join("mnt"), |mp| {
            let out = run("ls -l", Command::new("ls").arg("-l").arg(mp.join("many")));
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("entry-")).count(),
                plan.listing
            );
        }));
    }
    let entries = plan.listing;
    push(
        &mut rows,
        Row::timed(
            &format!("ls -l of {entries} entries: mount vs ls"),
            |c| format!("{:.3} s", c.wall),
            median_cost(&ours_ls),
            median_cost(&peer_ls),
        ),
    );

    // Random 4 KiB reads through the mount (no smbclient equivalent).
    cold_clients(&[&server_big]);
    let mut iops = String::new();
    ours.through_mount(&work.join("mnt"), |mp| {
        let out = run(
            "fio",
            Command::new("fio")
                .args([
                    "--name=rand4k",
                    "--rw=randread",
                    "--bs=4k",
                    "--ioengine=psync",
                    "--readonly",
                    "--output-format=terse",
                    "--terse-version=3",
                ])
                .arg(format!("--filename={}", mp.join("big.bin").display()))
                .arg(format!("--number_ios={}", plan.random_reads))
                .arg(format!("--size={size}")),
        );
        // Terse v3: field 8 is read IOPS, field 40 the mean completion latency (usec).
        let text = String::from_utf8_lossy(&out.stdout);
        let f: Vec<&str> = text.trim().split(';').collect();
        iops = format!("{} IOPS, mean {} us", f[7], f[39].split('.').next().unwrap_or(f[39]));
    });
    push(
        &mut rows,
        Row::ours_only(&format!("random 4 KiB reads through the mount (fio psync, {} reads)", plan.random_reads), iops),
    );
    rows
}

const DRIVER: &str = "smb3.csi.dev";

/// CreateVolume latency and the node plugin's resident memory with volumes staged, through a
/// `smb3-csi all` child over its socket.
fn node_costs(plan: &Plan, samba: &Samba, work: &Path) -> Vec<Row> {
    let root = work.join("plugin");
    fs::create_dir_all(&root).unwrap();
    let socket = root.join("csi.sock");
    let log = fs::File::create(root.join("plugin.log")).unwrap();
    let mut plugin = Command::new(BIN)
        .args(["--log-level", "warn", "all", "--node-id", "bench", "--driver-name", DRIVER, "--endpoint"])
        .arg(format!("unix://{}", socket.display()))
        // The staging paths below live under `root`, which stands in for the kubelet's directory.
        .arg("--kubelet-dir")
        .arg(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start smb3-csi all");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let rows = rt.block_on(node_rows(plan, samba, &root, &socket, plugin.id()));
    // The channel's connection lives in the runtime: close it, or the plugin's graceful stop waits for it.
    drop(rt);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(plugin.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = plugin.wait();
    rows
}

fn vm_rss_mib(pid: u32) -> f64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

async fn node_rows(plan: &Plan, samba: &Samba, root: &Path, socket: &Path, pid: u32) -> Vec<Row> {
    eprintln!("compare: CreateVolume and NodeStageVolume through smb3-csi all (pid {pid})");
    let channel = connect(socket).await;
    let controller = ControllerClient::new(channel.clone());
    let mut node = NodeClient::new(channel);
    let secrets = HashMap::from([
        ("username".to_string(), samba.user().to_string()),
        ("password".to_string(), samba.password().expose().to_string()),
        ("domain".to_string(), samba.domain().to_string()),
    ]);
    let capability = VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(volume_capability::MountVolume::default())),
        access_mode: Some(volume_capability::AccessMode {
            mode: volume_capability::access_mode::Mode::SingleNodeMultiWriter as i32,
        }),
    };
    let source = format!("//{}:{}/{}/bench-volumes", samba.host(), samba.port(), samba.share_name());
    let create = |name: String| {
        let req = CreateVolumeRequest {
            name,
            volume_capabilities: vec![capability.clone()],
            parameters: HashMap::from([("source".to_string(), source.clone())]),
            secrets: secrets.clone(),
            ..Default::default()
        };
        let mut c = controller.clone();
        async move { c.create_volume(req).await.expect("CreateVolume").into_inner().volume.expect("a volume") }
    };
    // Warm: the first call opens the controller's session.
    create("pvc-warm".into()).await;
    eprintln!("compare: warm");
    let mut latencies = Vec::new();
    for i in 0..plan.create_calls {
        let t0 = Instant::now();
        create(format!("pvc-lat-{i}")).await;
        latencies.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let mut rows = Vec::new();
    push(
        &mut rows,
        Row::ours_only(
            &format!("CreateVolume, warm, {} calls over the socket", plan.create_calls),
            format!("p50 {:.1} ms, p99 {:.1} ms", percentile(&latencies, 0.5), percentile(&latencies, 0.99)),
        ),
    );

    let idle = vm_rss_mib(pid);
    let mut staged: Vec<(String, PathBuf)> = Vec::new();
    let mut figures = vec![format!("idle {idle:.1}")];
    for &target in plan.staged {
        while staged.len() < target {
            let i = staged.len();
            let volume = create(format!("pvc-stage-{i}")).await;
            let path = root.join(format!("staging/{i}/globalmount"));
            node.node_stage_volume(NodeStageVolumeRequest {
                volume_id: volume.volume_id.clone(),
                staging_target_path: path.display().to_string(),
                volume_capability: Some(capability.clone()),
                secrets: secrets.clone(),
                volume_context: volume.volume_context.clone(),
                ..Default::default()
            })
            .await
            .expect("NodeStageVolume");
            staged.push((volume.volume_id, path));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        eprintln!("compare: {target} staged");
        figures.push(format!("{target} staged {:.1}", vm_rss_mib(pid)));
    }
    // Unstaged 32 at a time, as a busy node's kubelet would.
    let count = staged.len();
    let t0 = Instant::now();
    futures_util::stream::iter(staged.drain(..))
        .map(|(volume_id, path)| {
            let mut node = node.clone();
            async move {
                let request = NodeUnstageVolumeRequest { volume_id, staging_target_path: path.display().to_string() };
                // ABORTED: another operation on the volume is in progress; a CO retries (CSI spec), so do we.
                loop {
                    match node.node_unstage_volume(request.clone()).await {
                        Ok(_) => break,
                        Err(s) if s.code() == tonic::Code::Aborted => {
                            tokio::time::sleep(Duration::from_millis(100)).await
                        }
                        Err(s) => panic!("NodeUnstageVolume: {s:?}"),
                    }
                }
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let unstage = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    figures.push(format!("all unstaged {:.1} ({count} unstages, 32 at a time, in {unstage:.0} s)", vm_rss_mib(pid)));
    push(&mut rows, Row::ours_only("node plugin RSS (MiB), volumes staged on one share", figures.join(", ")));
    rows
}

/// Connects to the plugin's unix socket, waiting for it to listen.
async fn connect(socket: &Path) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if socket.exists() {
            let path = socket.to_path_buf();
            let connector = tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            });
            let endpoint = tonic::transport::Endpoint::try_from("http://[::1]:50051").unwrap();
            if let Ok(channel) = endpoint.connect_with_connector(connector).await {
                return channel;
            }
        }
        assert!(Instant::now() < deadline, "the plugin never listened on {}", socket.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
