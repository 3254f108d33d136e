//! A private Samba server (smbd) for tests and the local demo.
//!
//! Each instance gets its own temp directory with its own smb.conf, passdb,
//! lock/state/cache/pid/log dirs and two shares, listens on 127.0.0.1 only,
//! and never touches the system's Samba configuration.
//!
//! No orphans: smbd runs under a tiny `sh` watchdog whose stdin is a pipe
//! from this process. When the pipe reaches EOF (`stop`, `Drop`, or this
//! process exiting in any way, including `exit()` with statics alive, a
//! panic or SIGKILL) the watchdog stops smbd and then every process whose
//! command line names this instance's smb.conf (smbd children,
//! samba-dcerpcd and its rpcd_* workers, which are reparented away from
//! smbd), and removes the temp directory. PR_SET_PDEATHSIG was not used:
//! it fires when the spawning *thread* exits, and libtest runs every test
//! on its own thread.
//!
//! All calls block (they run smbd/smbclient and wait); from async code use
//! `tokio::task::spawn_blocking`.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};
use rand::distributions::Alphanumeric;
use rand::Rng;

use super::running_in_ci;
use smb3::Secret;

/// The unix (and SMB) user the shares belong to.
pub const TEST_USER: &str = "smb3test";
const WORKGROUP: &str = "WORKGROUP";
const SHARE: &str = "share";
const OTHER_SHARE: &str = "other";
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Machine-wide lock serializing port-139 instances across test binaries.
const PORT_139_LOCK: &str = "/tmp/smb3-csi-testkit-port139.lock";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const PORT_139_LOCK_TIMEOUT: Duration = Duration::from_secs(300);
/// Attempts when another process grabs our free port before smbd binds it.
const START_ATTEMPTS: usize = 3;

/// How the private server is configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SambaProfile {
    /// Encryption required, signing mandatory, SMB2_10..SMB3_11.
    #[default]
    EncryptRequired,
    /// Signing mandatory, encryption only when the client asks
    /// (`if_required`: on 4.17 `required` encrypts every SMB3 session).
    SigningOnly,
    /// `server max protocol` pinned (e.g. "SMB3_00", "SMB2_10"), encryption
    /// if_required. SMB 2.x cannot encrypt: use "SMB2_10" to test a client
    /// that requires encryption against a server that cannot provide it.
    MaxProtocol(&'static str),
    /// `server smb3 encryption algorithms` pinned (e.g. "AES-128-GCM"),
    /// encryption required.
    Cipher(&'static str),
    /// NetBIOS session service on 127.0.0.1:139, encryption required.
    /// Serialized machine-wide with a lock file held while it runs.
    NetbiosPort139,
    /// Encryption required with AES-128-GCM only, and `debug encryption =
    /// yes`: smbd logs each session's keys, so a test can forge encrypted
    /// server messages that a client authenticates (see [`Samba::server_out_key`]).
    KeysInLog,
}

impl SambaProfile {
    /// False for SMB 2.x-only servers: encryption exists only in the 3.x
    /// dialects (MS-SMB2 2.2.3, SMB2_GLOBAL_CAP_ENCRYPTION).
    pub fn can_encrypt(&self) -> bool {
        match self {
            SambaProfile::MaxProtocol(max) => max.to_ascii_uppercase().starts_with("SMB3"),
            _ => true,
        }
    }

    /// True when the server refuses unencrypted sessions.
    pub fn requires_encryption(&self) -> bool {
        matches!(
            self,
            SambaProfile::EncryptRequired
                | SambaProfile::Cipher(_)
                | SambaProfile::NetbiosPort139
                | SambaProfile::KeysInLog
        )
    }

    fn validate(&self) -> Result<(), SambaError> {
        let invalid = |why: &str| Err(SambaError::InvalidProfile { profile: *self, why: why.to_string() });
        match self {
            // Only charset checks: the values go into smb.conf and a newline
            // would inject settings. Samba itself rejects unknown names.
            SambaProfile::MaxProtocol(p)
                if p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                invalid("protocol names look like SMB3_00")
            }
            SambaProfile::Cipher(c)
                if c.is_empty() || !c.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ',' | ' ')) =>
            {
                invalid("cipher lists look like \"AES-128-GCM, AES-256-CCM\"")
            }
            _ => Ok(()),
        }
    }
}

/// Why the private Samba could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum SambaError {
    /// Samba is not installed or cannot run here; tests skip on this
    /// (outside CI, where it is a panic instead).
    #[error("private Samba unavailable: {0}")]
    Unavailable(String),
    #[error("invalid Samba profile {profile:?}: {why}")]
    InvalidProfile { profile: SambaProfile, why: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("smbd ({profile:?}) did not start: {why}\n--- smbd log tail ---\n{log_tail}")]
    StartFailed { profile: SambaProfile, why: String, log_tail: String },
    #[error("the private AD DC did not start: {why}\n--- samba log tail ---\n{log_tail}")]
    DcStartFailed { why: String, log_tail: String },
    #[error("`{command}` failed ({status}):\n{output}")]
    CommandFailed { command: String, status: String, output: String },
    #[error("`{command}` did not finish within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
}

impl SambaError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, SambaError::Unavailable(_))
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        SambaError::Io { context: context.into(), source }
    }
}

/// A running private smbd. Stopped by [`Samba::stop`] or on drop.
pub struct Samba {
    profile: SambaProfile,
    dir: PathBuf,
    conf: PathBuf,
    share: PathBuf,
    port: u16,
    password: Secret,
    smbd_pid: u32,
    /// The watchdog; closing its stdin makes it stop smbd, and it obeys
    /// `stop`/`start` lines (server restarts).
    watchdog: Option<Child>,
    /// The watchdog's answers (smbd's pid after `start`, `stopped`).
    watchdog_out: Option<BufReader<ChildStdout>>,
    /// Held while a port-139 instance runs.
    _port_lock: Option<Flock<File>>,
    stopped: bool,
}

impl std::fmt::Debug for Samba {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Samba")
            .field("profile", &self.profile)
            .field("addr", &self.addr())
            .field("dir", &self.dir)
            .field("smbd_pid", &self.smbd_pid)
            .field("password", &self.password)
            .finish()
    }
}

impl Samba {
    /// Checks that smbd, smbclient, smbpasswd and smbstatus are installed
    /// and that this process is root (smbd and useradd need it).
    pub fn check_available() -> Result<(), SambaError> {
        for program in ["smbd", "smbclient", "smbpasswd", "smbstatus"] {
            if find_program(program).is_none() {
                return Err(SambaError::Unavailable(format!(
                    "{program} not found (install samba and smbclient, e.g. with scripts/setup.sh)"
                )));
            }
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(SambaError::Unavailable("the private smbd must run as root".into()));
        }
        Ok(())
    }

    /// Starts a private smbd and waits until it answers smbclient. Under
    /// `CI=true` a missing Samba panics instead of returning
    /// [`SambaError::Unavailable`].
    pub fn start(profile: SambaProfile) -> Result<Samba, SambaError> {
        if let Err(e) = Self::check_available() {
            if running_in_ci() {
                panic!("CI=true but {e}; scripts/setup.sh installs it");
            }
            return Err(e);
        }
        profile.validate()?;
        ensure_user(TEST_USER)?;
        let port_lock = match profile {
            SambaProfile::NetbiosPort139 => Some(lock_port_139(PORT_139_LOCK, PORT_139_LOCK_TIMEOUT)?),
            _ => None,
        };
        let mut attempt = 1;
        loop {
            let port = match profile {
                SambaProfile::NetbiosPort139 => 139,
                _ => free_port()?,
            };
            if port == 139 {
                // The previous holder of the lock may still be shutting its smbd down.
                wait_port_free(port, Duration::from_secs(20))?;
            }
            match Self::start_on(profile, port) {
                Err(SambaError::StartFailed { log_tail, .. })
                    if attempt < START_ATTEMPTS
                        && profile != SambaProfile::NetbiosPort139
                        && log_tail.contains("Address already in use") =>
                {
                    // Someone took the free port between our probe and smbd's bind.
                    attempt += 1;
                }
                Ok(mut samba) => {
                    samba._port_lock = port_lock;
                    return Ok(samba);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One instance per profile per process, started on first use and
    /// never dropped (the watchdog stops it when the process exits).
    /// `None` means Samba is unavailable outside CI: skip the test. Any
    /// other start failure panics with smbd's log.
    pub fn shared(profile: SambaProfile) -> Option<&'static Samba> {
        static SHARED: OnceLock<Mutex<HashMap<SambaProfile, Option<&'static Samba>>>> = OnceLock::new();
        let mut instances = SHARED.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(instance) = instances.get(&profile) {
            return *instance;
        }
        let instance = match Samba::start(profile) {
            Ok(samba) => Some(&*Box::leak(Box::new(samba))),
            Err(SambaError::Unavailable(why)) => {
                eprintln!("private Samba unavailable: {why}");
                None
            }
            Err(e) => panic!("starting the shared private Samba failed: {e}"),
        };
        instances.insert(profile, instance);
        instance
    }

    fn start_on(profile: SambaProfile, port: u16) -> Result<Samba, SambaError> {
        let dir = make_instance_dir()?;
        // From here on a failure must not leave the directory behind.
        let result = Self::start_in(profile, port, &dir);
        if result.is_err() {
            let _ = fs::remove_dir_all(&dir);
        }
        result
    }

    fn start_in(profile: SambaProfile, port: u16, dir: &Path) -> Result<Samba, SambaError> {
        let layout = Layout::new(dir);
        for d in layout.dirs() {
            fs::create_dir_all(&d).map_err(|e| SambaError::io(format!("creating {}", d.display()), e))?;
        }
        let user = User::from_name(TEST_USER)
            .map_err(|e| SambaError::io(format!("looking up user {TEST_USER}"), e.into()))?
            .ok_or_else(|| SambaError::Unavailable(format!("user {TEST_USER} vanished")))?;
        for share in [&layout.share, &layout.other] {
            std::os::unix::fs::chown(share, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .map_err(|e| SambaError::io(format!("chown {}", share.display()), e))?;
            fs::set_permissions(share, fs::Permissions::from_mode(0o755))
                .map_err(|e| SambaError::io(format!("chmod {}", share.display()), e))?;
        }
        fs::write(&layout.conf, render_smb_conf(&layout, profile, port, &samba_log_level()))
            .map_err(|e| SambaError::io(format!("writing {}", layout.conf.display()), e))?;

        let password = crate::run_log::test_password("samba");
        // Password on stdin (-s), never in argv.
        let mut smbpasswd = Command::new(find_program("smbpasswd").unwrap_or_else(|| "smbpasswd".into()));
        smbpasswd.arg("-c").arg(&layout.conf).args(["-a", "-s", TEST_USER]);
        let input = format!("{0}\n{0}\n", password.expose());
        run(
            smbpasswd,
            Some(input.as_bytes()),
            COMMAND_TIMEOUT,
            format!("smbpasswd -c {} -a -s {TEST_USER}", layout.conf.display()),
        )?;

        let (watchdog, watchdog_out, smbd_pid) = spawn_watchdog(&layout)?;
        let mut samba = Samba {
            profile,
            dir: dir.to_path_buf(),
            conf: layout.conf.clone(),
            share: layout.share.clone(),
            port,
            password,
            smbd_pid,
            watchdog: Some(watchdog),
            watchdog_out: Some(watchdog_out),
            _port_lock: None,
            stopped: false,
        };
        samba.write_credentials(&layout.credentials)?;
        if let Err(why) = samba.wait_ready() {
            let log_tail = samba.log_tail(40);
            samba.stop();
            return Err(SambaError::StartFailed { profile, why, log_tail });
        }
        Ok(samba)
    }

    /// Polls until smbd accepts TCP and answers smbclient.
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_error = String::from("never accepted a TCP connection");
        while Instant::now() < deadline {
            if !pid_alive(self.smbd_pid) {
                return Err(format!("smbd (pid {}) exited", self.smbd_pid));
            }
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(500)).is_ok() {
                match self.smbclient("ls") {
                    Ok(_) => return Ok(()),
                    Err(e) => last_error = e.to_string(),
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
        Err(format!("not ready after {READY_TIMEOUT:?}; last error: {last_error}"))
    }

    /// Stops smbd and every process of this instance (the directory, passdb
    /// and port stay), as a crash or `systemctl stop` would: clients see
    /// their connections closed and new connections refused.
    pub fn stop_server(&mut self) -> Result<(), SambaError> {
        let reply = self.watchdog_command("stop")?;
        if reply != "stopped" {
            return Err(SambaError::io("stopping smbd", std::io::Error::other(format!("watchdog said {reply:?}"))));
        }
        Ok(())
    }

    /// Starts smbd again on the same port after [`stop_server`](Self::stop_server)
    /// and waits until it answers. Durable handle state is gone (Samba keeps
    /// it only in memory without clustering).
    pub fn start_server(&mut self) -> Result<(), SambaError> {
        let reply = self.watchdog_command("start")?;
        self.smbd_pid = reply
            .parse()
            .map_err(|_| SambaError::io("starting smbd", std::io::Error::other(format!("watchdog said {reply:?}"))))?;
        self.wait_ready().map_err(|why| SambaError::StartFailed {
            profile: self.profile,
            why,
            log_tail: self.log_tail(40),
        })
    }

    /// Stops smbd, waits `down`, and starts it again on the same port.
    pub fn restart(&mut self, down: Duration) -> Result<(), SambaError> {
        self.stop_server()?;
        thread::sleep(down);
        self.start_server()
    }

    /// Changes the test user's password (as root: no old password needed)
    /// and rewrites the credentials file. Sessions already set up stay up.
    pub fn change_password(&mut self, new: Secret) -> Result<(), SambaError> {
        crate::run_log::register_secret(new.expose().as_bytes());
        let mut smbpasswd = Command::new(find_program("smbpasswd").unwrap_or_else(|| "smbpasswd".into()));
        smbpasswd.arg("-c").arg(&self.conf).args(["-s", TEST_USER]);
        let input = format!("{0}\n{0}\n", new.expose());
        run(
            smbpasswd,
            Some(input.as_bytes()),
            COMMAND_TIMEOUT,
            format!("smbpasswd -c {} -s {TEST_USER}", self.conf.display()),
        )?;
        self.password = new;
        self.write_credentials(&Layout::new(&self.dir).credentials)
    }

    /// Sends one line to the watchdog and reads its one-line answer.
    fn watchdog_command(&mut self, command: &str) -> Result<String, SambaError> {
        let (Some(watchdog), Some(out)) = (self.watchdog.as_mut(), self.watchdog_out.as_mut()) else {
            return Err(SambaError::io(command.to_string(), std::io::Error::other("the instance is stopped")));
        };
        let stdin = watchdog.stdin.as_mut().expect("watchdog stdin is piped");
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| SambaError::io(format!("asking the watchdog to {command}"), e))?;
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| SambaError::io(format!("watchdog answer to {command}"), e))?;
        Ok(line.trim().to_string())
    }

    pub fn profile(&self) -> SambaProfile {
        self.profile
    }

    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(LOOPBACK), self.port)
    }

    pub fn user(&self) -> &str {
        TEST_USER
    }

    pub fn domain(&self) -> &str {
        WORKGROUP
    }

    pub fn password(&self) -> &Secret {
        &self.password
    }

    /// The read/write share for the test user.
    pub fn share_name(&self) -> &str {
        SHARE
    }

    /// A second share, same user, separate directory.
    pub fn other_share_name(&self) -> &str {
        OTHER_SHARE
    }

    /// The local directory backing the share, to check files directly.
    /// Files created here as root are readable but not writable over SMB.
    pub fn share_path(&self) -> &Path {
        &self.share
    }

    /// "//127.0.0.1:PORT/share"
    pub fn unc(&self) -> String {
        format!("//{}:{}/{}", self.host(), self.port, SHARE)
    }

    pub fn conf_path(&self) -> &Path {
        &self.conf
    }

    /// The working directory of [`Samba::smbclient`]: relative local paths
    /// in `get`/`put` land here, outside the share.
    pub fn scratch_dir(&self) -> PathBuf {
        self.dir.join("client")
    }

    /// PID of the main smbd process.
    pub fn smbd_pid(&self) -> u32 {
        self.smbd_pid
    }

    /// Live processes belonging to this instance (smbd and its children,
    /// samba-dcerpcd and its workers): those whose command line names its
    /// smb.conf.
    pub fn processes(&self) -> Vec<u32> {
        live_processes_using(&self.conf)
    }

    /// A mount.cifs-style credentials file (username=, password=, domain=),
    /// mode 0600; smbclient's `-A` reads the same format.
    pub fn credentials_file(&self) -> PathBuf {
        let path = Layout::new(&self.dir).credentials;
        if let Err(e) = self.write_credentials(&path) {
            panic!("writing the credentials file {}: {e}", path.display());
        }
        path
    }

    /// Written to a private temp file and renamed into place, so tests running in
    /// parallel never read a half-written file.
    fn write_credentials(&self, path: &Path) -> Result<(), SambaError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
        let io = |e| SambaError::io(format!("writing {}", path.display()), e);
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io)?;
        write!(file, "username={TEST_USER}\npassword={}\ndomain={WORKGROUP}\n", self.password.expose()).map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Runs smbclient commands (`-c`, `;`-separated) on the share, forcing
    /// encryption unless the profile cannot encrypt (then signing). Returns
    /// stdout; a non-zero exit is an error carrying stdout and stderr.
    pub fn smbclient(&self, commands: &str) -> Result<String, SambaError> {
        self.smbclient_via(self.addr(), SHARE, commands)
    }

    /// Like [`Samba::smbclient`] but connecting to `addr` (e.g. a
    /// [`super::CorruptingProxy`] in front of this server) and to any share.
    pub fn smbclient_via(&self, addr: SocketAddr, share: &str, commands: &str) -> Result<String, SambaError> {
        let service = format!("//{}/{share}", addr.ip());
        let protection = if self.profile.can_encrypt() { "encrypt" } else { "sign" };
        let mut cmd = Command::new(find_program("smbclient").unwrap_or_else(|| "smbclient".into()));
        cmd.arg(&service)
            .arg("-p")
            .arg(addr.port().to_string())
            .arg("-s")
            .arg(&self.conf)
            .arg("-A")
            .arg(Layout::new(&self.dir).credentials)
            .arg(format!("--client-protection={protection}"))
            .arg("--use-kerberos=off")
            .arg("-c")
            .arg(commands)
            .current_dir(self.scratch_dir());
        let shown = format!("smbclient {service} -p {} --client-protection={protection} -c {commands:?}", addr.port());
        let output = run(cmd, None, COMMAND_TIMEOUT, shown)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `smbstatus -s CONF -b`: sessions with dialect, encryption and signing.
    pub fn smbstatus(&self) -> Result<String, SambaError> {
        let mut cmd = Command::new(find_program("smbstatus").unwrap_or_else(|| "smbstatus".into()));
        cmd.arg("-s").arg(&self.conf).arg("-b");
        let output = run(cmd, None, COMMAND_TIMEOUT, format!("smbstatus -s {} -b", self.conf.display()))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The last `lines` lines of smbd's log (read from at most its last
    /// 256 KiB).
    pub fn log_tail(&self, lines: usize) -> String {
        tail_file(&Layout::new(&self.dir).smbd_log, lines)
    }

    /// The key smbd encrypts `session_id`'s messages with (its "ServerOut"
    /// key: the client's decryption key), as a [`SambaProfile::KeysInLog`]
    /// instance logs it once the session is set up. `None` for other
    /// profiles or a session not (yet) logged.
    pub fn server_out_key(&self, session_id: u64) -> Option<Vec<u8>> {
        let logs = fs::read_dir(self.dir.join("log")).ok()?;
        logs.filter_map(|entry| fs::read_to_string(entry.ok()?.path()).ok())
            .find_map(|text| logged_server_out_key(&text, session_id))
    }

    /// Stops smbd (pid file), samba-dcerpcd (its own pid file) and every
    /// other process of this instance, then removes its directory.
    /// Idempotent; also runs on drop.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let layout = Layout::new(&self.dir);
        for pid_file in [&layout.smbd_pid_file, &layout.dcerpcd_pid_file] {
            if let Some(pid) = read_pid_file(pid_file) {
                // A stale pid file may name a recycled pid: only signal ours.
                if live_processes_using(&self.conf).contains(&pid) {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                }
            }
        }
        self.watchdog_out = None;
        if let Some(mut watchdog) = self.watchdog.take() {
            // EOF on its stdin: the watchdog stops and sweeps everything.
            drop(watchdog.stdin.take());
            if wait_with_timeout(&mut watchdog, Duration::from_secs(20)).is_none() {
                let _ = watchdog.kill();
                let _ = watchdog.wait();
            }
        }
        // Belt and braces in case the watchdog could not finish.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = live_processes_using(&self.conf);
            if left.is_empty() {
                break;
            }
            let signal = if Instant::now() < deadline { Signal::SIGTERM } else { Signal::SIGKILL };
            for pid in &left {
                let _ = kill(Pid::from_raw(*pid as i32), signal);
            }
            if Instant::now() > deadline + Duration::from_secs(2) {
                tracing::warn!("processes of private Samba {} survive SIGKILL: {left:?}", self.dir.display());
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = fs::remove_dir_all(&self.dir);
        self._port_lock = None;
    }
}

impl Drop for Samba {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Paths inside an instance directory.
struct Layout {
    root: PathBuf,
    conf: PathBuf,
    share: PathBuf,
    other: PathBuf,
    credentials: PathBuf,
    smbd_log: PathBuf,
    watchdog_log: PathBuf,
    smbd_pid_file: PathBuf,
    dcerpcd_pid_file: PathBuf,
}

impl Layout {
    fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
            conf: root.join("smb.conf"),
            share: root.join(SHARE),
            other: root.join(OTHER_SHARE),
            credentials: root.join("credentials"),
            smbd_log: root.join("log/smbd.log"),
            watchdog_log: root.join("log/watchdog.log"),
            smbd_pid_file: root.join("pid/smbd.pid"),
            dcerpcd_pid_file: root.join("pid/samba-dcerpcd.pid"),
        }
    }

    fn sub(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = ["private", "lock", "state", "cache", "pid", "log", "ncalrpc", "client"]
            .iter()
            .map(|d| self.sub(d))
            .collect();
        dirs.push(self.share.clone());
        dirs.push(self.other.clone());
        dirs
    }
}

/// Finds, in smbd's `debug encryption` dumps, the ServerOut key logged for
/// `session_id`. The dump prints the session id's 8 bytes little-endian and
/// each key as hex bytes after `[0000]`, 16 to a line (Samba 4.17
/// `smbd_smb2_auth_generic_return`).
fn logged_server_out_key(log: &str, session_id: u64) -> Option<Vec<u8>> {
    let hex_bytes = |line: &str| -> Vec<u8> {
        let Some((_, rest)) = line.split_once("[0000]") else { return Vec::new() };
        rest.split_whitespace()
            .map_while(|w| (w.len() == 2).then(|| u8::from_str_radix(w, 16).ok()).flatten())
            .collect()
    };
    let want = session_id.to_le_bytes();
    let mut in_session = false;
    let mut found = None;
    for line in log.lines() {
        let line = line.trim_start();
        if line.starts_with("Session Id") {
            in_session = hex_bytes(line) == want;
        } else if in_session && line.starts_with("ServerOut Key") {
            found = Some(hex_bytes(line));
            in_session = false;
        }
    }
    found
}

/// The smb.conf of one instance. Pure, so the profiles are unit-tested.
fn render_smb_conf(layout: &Layout, profile: SambaProfile, port: u16, log_level: &str) -> String {
    let d = |name: &str| layout.sub(name).display().to_string();
    let (encrypt, min_protocol, max_protocol) = match profile {
        SambaProfile::SigningOnly => ("if_required", "SMB2_10", "SMB3_11"),
        SambaProfile::MaxProtocol(max) => {
            let min = if max.eq_ignore_ascii_case("SMB2_02") { "SMB2_02" } else { "SMB2_10" };
            ("if_required", min, max)
        }
        SambaProfile::EncryptRequired
        | SambaProfile::Cipher(_)
        | SambaProfile::NetbiosPort139
        | SambaProfile::KeysInLog => ("required", "SMB2_10", "SMB3_11"),
    };
    let netbios = if profile == SambaProfile::NetbiosPort139 { "no" } else { "yes" };
    let mut conf = format!(
        "# Private test server written by smb3-testkit; profile {profile:?}.
[global]
  server role = standalone server
  workgroup = {WORKGROUP}
  netbios name = SMB3TEST
  interfaces = 127.0.0.1
  bind interfaces only = yes
  smb ports = {port}
  disable netbios = {netbios}
  private dir = {private}
  lock directory = {lock}
  state directory = {state}
  cache directory = {cache}
  pid directory = {pid}
  ncalrpc dir = {ncalrpc}
  passdb backend = tdbsam:{private}/passdb.tdb
  log file = {log}/log.%m
  max log size = 0
  log level = {log_level}
  # 'yes' breaks ordinary opens on this kernel (no flock(LOCK_MAND)).
  kernel share modes = no
  # Durable handles (reconnect tests) need these three as they are here:
  # Samba refuses durability with kernel oplocks, kernel share modes, or
  # POSIX locks held on the file.
  kernel oplocks = no
  posix locking = no
  durable handles = yes
  smb2 leases = yes
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  map to guest = never
  server signing = mandatory
  server smb encrypt = {encrypt}
  server min protocol = {min_protocol}
  server max protocol = {max_protocol}
",
        private = d("private"),
        lock = d("lock"),
        state = d("state"),
        cache = d("cache"),
        pid = d("pid"),
        ncalrpc = d("ncalrpc"),
        log = d("log"),
    );
    if let SambaProfile::Cipher(ciphers) = profile {
        conf.push_str(&format!("  server smb3 encryption algorithms = {ciphers}\n"));
    }
    if profile == SambaProfile::KeysInLog {
        conf.push_str("  server smb3 encryption algorithms = AES-128-GCM\n  debug encryption = yes\n");
    }
    for (name, path) in [(SHARE, &layout.share), (OTHER_SHARE, &layout.other)] {
        conf.push_str(&format!(
            "\n[{name}]\n  path = {}\n  read only = no\n  valid users = {TEST_USER}\n  create mask = 0644\n",
            path.display()
        ));
    }
    conf
}

/// Runs smbd under a watchdog that stops it (and everything naming this
/// smb.conf) once its stdin reaches EOF. Prints smbd's pid first.
/// smbd is started without --no-process-group on purpose: on SIGTERM it
/// signals its whole process group (seen on 4.17), which would take the
/// watchdog down before it cleans up; by default `-F` gives it its own.
const WATCHDOG_SCRIPT: &str = r#"
start_smbd() {
  "$SMB3_TESTKIT_SMBD" -F -s "$SMB3_TESTKIT_CONF" --debug-stdout \
      -d "$SMB3_TESTKIT_LOG_LEVEL" </dev/null >>"$SMB3_TESTKIT_LOG" 2>&1 &
  smbd=$!
  echo "$smbd"
}
alive() {
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  case "${stat##*) }" in Z*|X*) return 1 ;; esac
  return 0
}
# Live processes whose command line names this instance's smb.conf (this
# script's own command line holds only the variable's name).
instance_pids() {
  for p in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
    case "$cmd" in *"$SMB3_TESTKIT_CONF"*) alive "${p#/proc/}" && echo "${p#/proc/}" ;; esac
  done
}
stop_all() {
  kill -TERM "$smbd" 2>/dev/null
  i=0
  while [ $i -lt 50 ] && alive "$smbd"; do sleep 0.1; i=$((i+1)); done
  kill -KILL "$smbd" 2>/dev/null
  wait "$smbd" 2>/dev/null
  left=$(instance_pids)
  still=$left
  if [ -n "$left" ]; then
    kill -TERM $left 2>/dev/null
    i=0
    while [ $i -lt 30 ]; do
      still=""
      for pid in $left; do alive "$pid" && still="$still $pid"; done
      [ -z "$still" ] && break
      sleep 0.1; i=$((i+1))
    done
    [ -n "$still" ] && kill -KILL $still 2>/dev/null
  fi
}
start_smbd
# Until EOF (Samba::stop closed the pipe, or the test process is gone),
# obey "stop" and "start" lines: a server restart on the same port.
while read -r cmd; do
  case "$cmd" in
    stop) stop_all; echo stopped ;;
    start) start_smbd ;;
  esac
done 2>/dev/null
exec >/dev/null
stop_all
rm -rf "$SMB3_TESTKIT_INSTANCE_DIR"
"#;

fn spawn_watchdog(layout: &Layout) -> Result<(Child, BufReader<ChildStdout>, u32), SambaError> {
    let smbd = find_program("smbd").ok_or_else(|| SambaError::Unavailable("smbd not found".into()))?;
    let watchdog_log = File::create(&layout.watchdog_log)
        .map_err(|e| SambaError::io(format!("creating {}", layout.watchdog_log.display()), e))?;
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .env("SMB3_TESTKIT_SMBD", smbd)
        .env("SMB3_TESTKIT_CONF", &layout.conf)
        .env("SMB3_TESTKIT_LOG", &layout.smbd_log)
        .env("SMB3_TESTKIT_LOG_LEVEL", samba_log_level())
        .env("SMB3_TESTKIT_INSTANCE_DIR", &layout.root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(watchdog_log)
        // Own process group: a Ctrl-C on the test run reaches the test
        // process, whose exit then makes the watchdog clean up in order.
        .process_group(0)
        .spawn()
        .map_err(|e| SambaError::io("starting the smbd watchdog (/bin/sh)", e))?;
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut out = BufReader::new(stdout);
    let read = out.read_line(&mut line);
    match (read, line.trim().parse::<u32>()) {
        (Ok(_), Ok(pid)) => Ok((child, out, pid)),
        (read, _) => {
            drop(child.stdin.take());
            let _ = child.wait();
            let why = match read {
                Err(e) => e.to_string(),
                Ok(_) => format!("watchdog printed {line:?} instead of a pid"),
            };
            Err(SambaError::io("starting smbd", std::io::Error::other(why)))
        }
    }
}

/// `SMB3_TESTKIT_SAMBA_LOG_LEVEL` (digits only, e.g. "10" to debug the
/// client against smbd's view), default 1.
fn samba_log_level() -> String {
    std::env::var("SMB3_TESTKIT_SAMBA_LOG_LEVEL")
        .ok()
        .filter(|l| !l.is_empty() && l.len() <= 3 && l.chars().all(|c| c.is_ascii_digit()))
        .unwrap_or_else(|| "1".into())
}

/// A fresh 0755 directory under /tmp (or `SMB3_TESTKIT_TMPDIR`), never under
/// /root: the share's unix user must be able to traverse it.
pub(crate) fn make_instance_dir() -> Result<PathBuf, SambaError> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let base = std::env::var_os("SMB3_TESTKIT_TMPDIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    loop {
        let suffix: String = rand::thread_rng().sample_iter(&Alphanumeric).take(6).map(char::from).collect();
        let dir = base.join(format!(
            "smb3-csi-samba-{}-{}-{suffix}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        match fs::create_dir(&dir) {
            Ok(()) => {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                    .map_err(|e| SambaError::io(format!("chmod {}", dir.display()), e))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(SambaError::io(format!("creating {}", dir.display()), e)),
        }
    }
}

/// Creates the unix user if missing (no home, no login shell).
fn ensure_user(name: &str) -> Result<(), SambaError> {
    let exists = || User::from_name(name).ok().flatten().is_some();
    if exists() {
        return Ok(());
    }
    let useradd = find_program("useradd")
        .ok_or_else(|| SambaError::Unavailable(format!("user {name} is missing and useradd was not found")))?;
    let mut cmd = Command::new(useradd);
    cmd.args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]);
    let result = run(cmd, None, COMMAND_TIMEOUT, format!("useradd {name}"));
    // Another test binary may have created it concurrently.
    match result {
        Ok(_) => Ok(()),
        Err(_) if exists() => Ok(()),
        Err(e) => Err(e),
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<u16, SambaError> {
    let listener = TcpListener::bind((LOOPBACK, 0)).map_err(|e| SambaError::io("finding a free port", e))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| SambaError::io("finding a free port", e))
}

/// Waits until `port` can be bound on 127.0.0.1 (std sets SO_REUSEADDR, as
/// smbd does, so TIME_WAIT leftovers do not count).
fn wait_port_free(port: u16, timeout: Duration) -> Result<(), SambaError> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpListener::bind((LOOPBACK, port)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(SambaError::io(format!("port {port} on 127.0.0.1 stayed busy for {timeout:?}"), e));
            }
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Takes the machine-wide lock for port 139. flock is released by the
/// kernel when the holder dies, so there is no stale lock to detect.
fn lock_port_139(path: &str, timeout: Duration) -> Result<Flock<File>, SambaError> {
    let deadline = Instant::now() + timeout;
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o666)
            .open(path)
            .map_err(|e| SambaError::io(format!("opening {path}"), e))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(200));
            }
            Err((_, errno)) => {
                return Err(SambaError::io(
                    format!("locking {path} (another private Samba holds port 139?)"),
                    errno.into(),
                ));
            }
        }
    }
}

/// Live (not zombie) processes other than this one whose command line
/// contains `needle`, e.g. an instance's smb.conf path.
pub fn live_processes_using(needle: &Path) -> Vec<u32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| !needle.is_empty() && cmdline.windows(needle.len()).any(|w| w == needle))
        })
        .filter(|&pid| pid_alive(pid))
        .collect();
    pids.sort_unstable();
    pids
}

/// True if the process exists and is not a zombie (PID 1 here may never
/// reap orphans, so zombies linger).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // Format: "pid (comm) S ...", and comm may itself contain ')'.
    match stat.rfind(')').and_then(|i| stat[i + 1..].trim_start().chars().next()) {
        Some(state) => !matches!(state, 'Z' | 'X' | 'x'),
        None => false,
    }
}

fn read_pid_file(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Looks in PATH and the sbin directories, which a non-login PATH may lack.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

pub(crate) fn tail_file(path: &Path, lines: usize) -> String {
    const MAX_TAIL_BYTES: u64 = 256 * 1024;
    let Ok(mut file) = File::open(path) else { return format!("(no log at {})", path.display()) };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(MAX_TAIL_BYTES)));
    let mut bytes = Vec::new();
    let _ = file.take(MAX_TAIL_BYTES).read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(crate) fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// Runs a command with optional stdin and a timeout; a non-zero exit is
/// `CommandFailed` with stdout and stderr. `shown` is how errors name the
/// command (never containing a secret).
pub(crate) fn run(
    mut cmd: Command,
    input: Option<&[u8]>,
    timeout: Duration,
    shown: String,
) -> Result<std::process::Output, SambaError> {
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| SambaError::io(format!("running {shown}"), e))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input).map_err(|e| SambaError::io(format!("writing to {shown}"), e))?;
    }
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let Some(status) = wait_with_timeout(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(SambaError::Timeout { command: shown, timeout });
    };
    let output = std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    if !output.status.success() {
        return Err(SambaError::CommandFailed {
            command: shown,
            status: output.status.to_string(),
            output: format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
        });
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf_for(profile: SambaProfile) -> String {
        render_smb_conf(&Layout::new(Path::new("/tmp/smb3-csi-samba-x")), profile, 4455, "1")
    }

    fn setting<'a>(conf: &'a str, key: &str) -> Vec<&'a str> {
        conf.lines().filter_map(|l| l.trim().strip_prefix(key)?.trim().strip_prefix('=')).map(str::trim).collect()
    }

    #[test]
    fn encrypt_required_conf() {
        let conf = conf_for(SambaProfile::EncryptRequired);
        assert_eq!(setting(&conf, "server smb encrypt"), ["required"]);
        assert_eq!(setting(&conf, "server signing"), ["mandatory"]);
        assert_eq!(setting(&conf, "server min protocol"), ["SMB2_10"]);
        assert_eq!(setting(&conf, "server max protocol"), ["SMB3_11"]);
        assert_eq!(setting(&conf, "smb ports"), ["4455"]);
        assert_eq!(setting(&conf, "disable netbios"), ["yes"]);
        assert_eq!(setting(&conf, "kernel share modes"), ["no"]);
        assert_eq!(setting(&conf, "kernel oplocks"), ["no"]);
        assert_eq!(setting(&conf, "posix locking"), ["no"]);
        assert_eq!(setting(&conf, "durable handles"), ["yes"]);
        assert_eq!(setting(&conf, "smb2 leases"), ["yes"]);
        assert_eq!(setting(&conf, "interfaces"), ["127.0.0.1"]);
        assert_eq!(setting(&conf, "bind interfaces only"), ["yes"]);
        assert_eq!(setting(&conf, "pid directory"), ["/tmp/smb3-csi-samba-x/pid"]);
        assert_eq!(setting(&conf, "path"), ["/tmp/smb3-csi-samba-x/share", "/tmp/smb3-csi-samba-x/other"]);
        assert_eq!(setting(&conf, "valid users"), [TEST_USER, TEST_USER]);
        assert!(setting(&conf, "server smb3 encryption algorithms").is_empty());
    }

    #[test]
    fn other_profiles_conf() {
        let conf = conf_for(SambaProfile::SigningOnly);
        assert_eq!(setting(&conf, "server smb encrypt"), ["if_required"]);
        assert_eq!(setting(&conf, "server signing"), ["mandatory"]);

        let conf = conf_for(SambaProfile::MaxProtocol("SMB3_00"));
        assert_eq!(setting(&conf, "server max protocol"), ["SMB3_00"]);
        assert_eq!(setting(&conf, "server smb encrypt"), ["if_required"]);
        assert_eq!(setting(&conf, "server min protocol"), ["SMB2_10"]);
        assert_eq!(setting(&conf_for(SambaProfile::MaxProtocol("SMB2_02")), "server min protocol"), ["SMB2_02"]);

        let conf = conf_for(SambaProfile::Cipher("AES-256-GCM"));
        assert_eq!(setting(&conf, "server smb3 encryption algorithms"), ["AES-256-GCM"]);
        assert_eq!(setting(&conf, "server smb encrypt"), ["required"]);

        let conf = render_smb_conf(&Layout::new(Path::new("/d")), SambaProfile::NetbiosPort139, 139, "1");
        assert_eq!(setting(&conf, "smb ports"), ["139"]);
        assert_eq!(setting(&conf, "disable netbios"), ["no"]);
        assert_eq!(setting(&conf, "server smb encrypt"), ["required"]);
    }

    #[test]
    fn profile_capabilities() {
        assert!(SambaProfile::EncryptRequired.requires_encryption());
        assert!(!SambaProfile::SigningOnly.requires_encryption());
        assert!(SambaProfile::SigningOnly.can_encrypt());
        assert!(SambaProfile::MaxProtocol("SMB3_00").can_encrypt());
        assert!(!SambaProfile::MaxProtocol("SMB2_10").can_encrypt());
        assert_eq!(SambaProfile::default(), SambaProfile::EncryptRequired);
    }

    #[test]
    fn profiles_cannot_inject_settings() {
        assert!(SambaProfile::MaxProtocol("SMB3_00\n  guest ok = yes").validate().is_err());
        assert!(SambaProfile::MaxProtocol("").validate().is_err());
        assert!(SambaProfile::Cipher("AES-128-GCM\n[x]").validate().is_err());
        assert!(SambaProfile::Cipher("AES-128-GCM, AES-256-CCM").validate().is_ok());
        assert!(SambaProfile::MaxProtocol("SMB2_10").validate().is_ok());
    }

    #[test]
    fn pid_alive_and_process_scan() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX));
        let marker = format!("/tmp/smb3-csi-scan-marker-{}", std::process::id());
        let mut child = Command::new("/bin/sh").args(["-c", "sleep 30", &marker]).spawn().unwrap();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !live_processes_using(Path::new(&marker)).contains(&pid) {
            assert!(Instant::now() < deadline, "child {pid} not found by its command line");
            thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap();
        // Killed but not reaped: a zombie does not count as alive.
        let deadline = Instant::now() + Duration::from_secs(5);
        while pid_alive(pid) {
            assert!(Instant::now() < deadline, "killed child still alive");
            thread::sleep(Duration::from_millis(20));
        }
        assert!(!live_processes_using(Path::new(&marker)).contains(&pid));
        child.wait().unwrap();
    }

    #[test]
    fn port_lock_excludes_a_second_holder_until_released() {
        let path = format!("/tmp/smb3-csi-testkit-locktest-{}", std::process::id());
        let first = lock_port_139(&path, Duration::from_secs(1)).unwrap();
        let started = Instant::now();
        assert!(lock_port_139(&path, Duration::from_millis(300)).is_err());
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(first);
        let again = lock_port_139(&path, Duration::from_secs(1)).unwrap();
        drop(again);
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let path = std::env::temp_dir().join(format!("smb3-csi-tail-{}", std::process::id()));
        fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail_file(&path, 2), "c\nd");
        assert_eq!(tail_file(&path, 10), "a\nb\nc\nd");
        fs::remove_file(&path).unwrap();
        assert!(tail_file(&path, 2).starts_with("(no log"));
    }

    #[test]
    fn run_reports_failure_output_and_timeout() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "read x; echo got $x; echo oops >&2; exit 3"]);
        match run(cmd, Some(b"hi\n"), Duration::from_secs(10), "sh".into()) {
            Err(SambaError::CommandFailed { output, status, .. }) => {
                assert!(output.contains("got hi") && output.contains("oops"), "{output}");
                assert!(status.contains('3'), "{status}");
            }
            other => panic!("expected CommandFailed, got {other:?}"),
        }
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "sleep 30"]);
        assert!(matches!(run(cmd, None, Duration::from_millis(200), "sleep".into()), Err(SambaError::Timeout { .. })));
    }

    #[test]
    fn server_out_key_is_read_from_the_debug_encryption_dump() {
        // As smbd 4.17 logs it with `debug encryption = yes` (two sessions).
        let log =
            "[2026/12/02 07:54:26.626860,  0] ../../source3/smbd/smb2_sesssetup.c:376(smbd_smb2_auth_generic_return)
  debug encryption: dumping generated session keys
  Session Id    [0000] 7E FF BF 91 00 00 00 00                             ~.......
  Session Key   [0000] FE A2 E7 C1 C3 4A 75 EA   CE DC 33 B7 87 6A 96 11   .....Ju. ..3..j..
  Cipher Algo: 2
  ServerIn Key  [0000] 80 1D 36 F4 2C 11 21 BE   13 34 EA 4E 46 C7 48 E0   ..6.,.!. .4.NF.H.
  ServerOut Key [0000] 7C 57 30 3B 35 69 DD 04   1C 84 D9 EC 6B 1F 5A 7E   |W0;5i.. ....k.Z~
  Session Id    [0000] 01 00 00 00 00 00 00 00                             ........
  ServerOut Key [0000] 11 22 33 44 55 66 77 88   99 AA BB CC DD EE FF 00   ........ ........
";
        let key = logged_server_out_key(log, 0x91BF_FF7E).unwrap();
        assert_eq!(key[..4], [0x7C, 0x57, 0x30, 0x3B]);
        assert_eq!(key.len(), 16);
        assert_eq!(logged_server_out_key(log, 1).unwrap()[0], 0x11);
        assert_eq!(logged_server_out_key(log, 2), None);
        assert_eq!(logged_server_out_key("", 1), None);
    }
}
