//! A private Samba Active Directory domain controller with its KDC, for the
//! Kerberos tests (issue #16).
//!
//! Each instance runs `samba` (smbd, the KDC and winbindd in one tree) on its
//! own loopback address 127.0.0.N (N in 20..=59, one machine-wide lock file
//! per address, because the KDC needs port 88 and smbd port 445 there),
//! from its own temp directory with its own smb.conf and a generated
//! krb5.conf. `ntlm auth = disabled` (NTLM gets NT_STATUS_NTLM_BLOCKED, so a
//! test cannot pass by falling back to NTLM) and `server smb encrypt = required`.
//!
//! Provisioning a domain takes 5-10 s, so it happens once per machine and
//! Samba version into a template directory (under a lock), which each start
//! copies; a start then costs about 1.5 s (copy, a user with a random
//! password, the server up and answering Kerberos).
//!
//! The DC's smbd finds winbindd only at `/run/samba/winbindd`, so samba runs
//! in a private mount namespace (`unshare --mount`) with the instance's own
//! directory bound over `/run/samba`; the host's /run/samba is never touched.
//!
//! No orphans, as with [`crate::Samba`]: samba runs under a `sh` watchdog
//! whose stdin is a pipe from this process; at EOF (stop, drop, or this
//! process dying in any way) it stops samba by PID, then anything still
//! naming this instance's smb.conf, and removes the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use rand::distributions::Alphanumeric;
use rand::Rng;

use super::running_in_ci;
use crate::samba::{find_program, make_instance_dir, pid_alive, run, tail_file, wait_with_timeout};
use crate::{live_processes_using, SambaError};
use smb3::Secret;

/// The Kerberos realm (and DNS domain, upper-cased) of every instance.
pub const REALM: &str = "SMB3TEST.TEST";
/// The NetBIOS domain name.
pub const NETBIOS_DOMAIN: &str = "SMB3TEST";
/// The DC's host name: the SPN the client asks a ticket for is `cifs/dc1.smb3test.test`.
pub const DC_HOST: &str = "dc1";
/// The domain user the tests log on as.
pub const DC_USER: &str = "alice";
const DNS_DOMAIN: &str = "smb3test.test";
const SHARE: &str = "share";
/// Loopback addresses tried in order; each is held through a lock file.
const FIRST_ADDR: u8 = 20;
const LAST_ADDR: u8 = 59;
const ADDR_LOCK_PREFIX: &str = "/tmp/smb3-csi-testkit-addc-";
const TEMPLATE_LOCK: &str = "/tmp/smb3-csi-testkit-addc-template.lock";
const PROVISION_TIMEOUT: Duration = Duration::from_secs(180);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const ADDR_LOCK_TIMEOUT: Duration = Duration::from_secs(300);

/// A running private AD DC. Stopped by [`AdDc::stop`] or on drop.
pub struct AdDc {
    dir: PathBuf,
    ip: Ipv4Addr,
    conf: PathBuf,
    krb5_conf: PathBuf,
    password: Secret,
    samba_pid: u32,
    watchdog: Option<Child>,
    _watchdog_out: Option<BufReader<ChildStdout>>,
    _addr_lock: Option<Flock<File>>,
    stopped: bool,
}

impl std::fmt::Debug for AdDc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdDc")
            .field("ip", &self.ip)
            .field("dir", &self.dir)
            .field("samba_pid", &self.samba_pid)
            .field("password", &self.password)
            .finish()
    }
}

impl AdDc {
    /// Checks for the AD DC packages (samba with samba-ad-dc and
    /// samba-ad-provision, samba-tool, kinit from krb5-user, smbclient,
    /// unshare) and root.
    pub fn check_available() -> Result<(), SambaError> {
        for program in ["samba", "samba-tool", "kinit", "smbclient", "unshare"] {
            if find_program(program).is_none() {
                return Err(SambaError::Unavailable(format!(
                    "{program} not found (install samba-ad-dc samba-ad-provision samba-dsdb-modules winbind \
                     krb5-user smbclient, e.g. with scripts/setup.sh)"
                )));
            }
        }
        if !Path::new("/usr/share/samba/setup/provision.ldif").exists() {
            return Err(SambaError::Unavailable("samba-ad-provision is not installed".into()));
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(SambaError::Unavailable("the private AD DC must run as root".into()));
        }
        Ok(())
    }

    /// Starts a DC on a free loopback address and waits until a Kerberos
    /// logon to its share works. Under `CI=true` a missing Samba panics
    /// instead of returning [`SambaError::Unavailable`].
    pub fn start() -> Result<AdDc, SambaError> {
        if let Err(e) = Self::check_available() {
            if running_in_ci() {
                panic!("CI=true but {e}; scripts/setup.sh installs it");
            }
            return Err(e);
        }
        let template = ensure_template()?;
        let (ip, addr_lock) = lock_free_address(ADDR_LOCK_TIMEOUT)?;
        let dir = make_instance_dir()?;
        let result = Self::start_in(&template, ip, &dir);
        match result {
            Ok(mut dc) => {
                dc._addr_lock = Some(addr_lock);
                Ok(dc)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// One instance per process, started on first use and never dropped
    /// (its watchdog stops it when the process exits). `None` means the AD
    /// DC packages are unavailable outside CI: skip the test.
    pub fn shared() -> Option<&'static AdDc> {
        static SHARED: OnceLock<Option<&'static AdDc>> = OnceLock::new();
        *SHARED.get_or_init(|| match AdDc::start() {
            Ok(dc) => Some(&*Box::leak(Box::new(dc))),
            Err(SambaError::Unavailable(why)) => {
                eprintln!("private AD DC unavailable: {why}");
                None
            }
            Err(e) => panic!("starting the shared private AD DC failed: {e}"),
        })
    }

    fn start_in(template: &Path, ip: Ipv4Addr, dir: &Path) -> Result<AdDc, SambaError> {
        copy_dir(template, dir)?;
        let layout = DcLayout::new(dir);
        for d in layout.dirs() {
            fs::create_dir_all(&d).map_err(|e| SambaError::io(format!("creating {}", d.display()), e))?;
        }
        fs::set_permissions(&layout.share, fs::Permissions::from_mode(0o777))
            .map_err(|e| SambaError::io(format!("chmod {}", layout.share.display()), e))?;
        write_file(&layout.conf, &render_dc_smb_conf(&layout, ip))?;
        write_file(&layout.krb5_conf, &render_krb5_conf(ip))?;

        let password = random_password();
        let samba_tool = || {
            let mut cmd = Command::new(find_program("samba-tool").unwrap_or_else(|| "samba-tool".into()));
            cmd.env("KRB5_CONFIG", &layout.krb5_conf);
            cmd
        };
        // Password on stdin (`--random-password` would hide it from us; the
        // prompt reads it twice), never in argv.
        let mut create = samba_tool();
        create.args(["user", "create", DC_USER, "-s"]).arg(&layout.conf);
        let input = format!("{0}\n{0}\n", password.expose());
        run(create, Some(input.as_bytes()), COMMAND_TIMEOUT, format!("samba-tool user create {DC_USER}"))?;
        let mut expiry = samba_tool();
        expiry.args(["user", "setexpiry", DC_USER, "--noexpiry", "-s"]).arg(&layout.conf);
        run(expiry, None, COMMAND_TIMEOUT, format!("samba-tool user setexpiry {DC_USER}"))?;

        let (watchdog, watchdog_out, samba_pid) = spawn_dc_watchdog(&layout)?;
        let mut dc = AdDc {
            dir: dir.to_path_buf(),
            ip,
            conf: layout.conf.clone(),
            krb5_conf: layout.krb5_conf.clone(),
            password,
            samba_pid,
            watchdog: Some(watchdog),
            _watchdog_out: Some(watchdog_out),
            _addr_lock: None,
            stopped: false,
        };
        if let Err(why) = dc.wait_ready() {
            let log_tail = dc.log_tail(40);
            dc.stop();
            return Err(SambaError::DcStartFailed { why, log_tail });
        }
        Ok(dc)
    }

    /// Polls until the KDC and smbd accept TCP and a Kerberos logon with a
    /// fresh ticket lists the share.
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_error = String::from("never accepted a TCP connection");
        let ccache = self.dir.join("ready.ccache");
        while Instant::now() < deadline {
            if !pid_alive(self.samba_pid) {
                return Err(format!("samba (pid {}) exited", self.samba_pid));
            }
            let up = [self.kdc_addr(), self.addr()]
                .iter()
                .all(|a| TcpStream::connect_timeout(a, Duration::from_millis(500)).is_ok());
            if up {
                match self.kinit(&ccache, DC_USER, &self.password).and_then(|()| self.smbclient_krb5(&ccache, "ls")) {
                    Ok(_) => {
                        let _ = fs::remove_file(&ccache);
                        return Ok(());
                    }
                    Err(e) => last_error = e.to_string(),
                }
            }
            thread::sleep(Duration::from_millis(200));
        }
        Err(format!("not ready after {READY_TIMEOUT:?}; last error: {last_error}"))
    }

    /// The loopback address the DC (KDC and smbd) listens on.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// smbd's address (port 445 on [`AdDc::ip`]).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), 445)
    }

    /// The KDC's address (port 88, TCP and UDP).
    pub fn kdc_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), 88)
    }

    pub fn realm(&self) -> &str {
        REALM
    }

    /// "dc1.smb3test.test": the name clients must use (the SPN is
    /// `cifs/<this>`). It does not resolve: connect to [`AdDc::addr`].
    pub fn server_name(&self) -> String {
        format!("{DC_HOST}.{DNS_DOMAIN}")
    }

    /// "cifs/dc1.smb3test.test@SMB3TEST.TEST"
    pub fn service_principal(&self) -> String {
        format!("cifs/{}@{REALM}", self.server_name())
    }

    pub fn user(&self) -> &str {
        DC_USER
    }

    /// "alice@SMB3TEST.TEST"
    pub fn user_principal(&self) -> String {
        format!("{DC_USER}@{REALM}")
    }

    pub fn password(&self) -> &Secret {
        &self.password
    }

    pub fn share_name(&self) -> &str {
        SHARE
    }

    /// The local directory backing the share.
    pub fn share_path(&self) -> PathBuf {
        DcLayout::new(&self.dir).share
    }

    /// The generated krb5.conf (realm, KDC at [`AdDc::kdc_addr`], no DNS
    /// lookups): point `KRB5_CONFIG` at it.
    pub fn krb5_conf(&self) -> &Path {
        &self.krb5_conf
    }

    pub fn conf_path(&self) -> &Path {
        &self.conf
    }

    pub fn samba_pid(&self) -> u32 {
        self.samba_pid
    }

    /// A fresh path in the instance directory for a ticket cache.
    pub fn scratch_path(&self, name: &str) -> PathBuf {
        self.dir.join("client").join(name)
    }

    /// MIT `kinit principal` into the FILE ccache `ccache` with the password
    /// on stdin, against this DC's KDC.
    pub fn kinit(&self, ccache: &Path, principal: &str, password: &Secret) -> Result<(), SambaError> {
        let mut cmd = Command::new(find_program("kinit").unwrap_or_else(|| "kinit".into()));
        cmd.env("KRB5_CONFIG", &self.krb5_conf).arg("-c").arg(format!("FILE:{}", ccache.display())).arg(principal);
        let input = format!("{}\n", password.expose());
        run(cmd, Some(input.as_bytes()), COMMAND_TIMEOUT, format!("kinit -c {} {principal}", ccache.display()))
            .map(drop)
    }

    /// smbclient with Kerberos required and encryption required, using the
    /// tickets in `ccache`, on the share by the DC's name at its address.
    /// Returns stdout; a non-zero exit is an error carrying the output.
    pub fn smbclient_krb5(&self, ccache: &Path, commands: &str) -> Result<String, SambaError> {
        let service = format!("//{}/{SHARE}", self.server_name());
        let ccache_name = format!("FILE:{}", ccache.display());
        let mut cmd = Command::new(find_program("smbclient").unwrap_or_else(|| "smbclient".into()));
        cmd.env("KRB5_CONFIG", &self.krb5_conf)
            .env("KRB5CCNAME", &ccache_name)
            .arg(&service)
            .arg("-I")
            .arg(self.ip.to_string())
            .arg("-s")
            .arg(&self.conf)
            .arg("--use-kerberos=required")
            .arg(format!("--use-krb5-ccache={ccache_name}"))
            .arg("--client-protection=encrypt")
            .arg("-c")
            .arg(commands)
            .current_dir(self.dir.join("client"));
        let shown = format!("smbclient {service} -I {} --use-kerberos=required -c {commands:?}", self.ip);
        let output = run(cmd, None, COMMAND_TIMEOUT, shown)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// smbclient with NTLM only (user and password): the DC must refuse it.
    pub fn smbclient_ntlm(&self, commands: &str) -> Result<String, SambaError> {
        let service = format!("//{}/{SHARE}", self.ip);
        let credentials = self.dir.join("client/ntlm-credentials");
        let io = |e| SambaError::io(format!("writing {}", credentials.display()), e);
        {
            use std::io::Write;
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&credentials)
                .map_err(io)?;
            write!(file, "username={DC_USER}\npassword={}\ndomain={NETBIOS_DOMAIN}\n", self.password.expose())
                .map_err(io)?;
        }
        let mut cmd = Command::new(find_program("smbclient").unwrap_or_else(|| "smbclient".into()));
        cmd.env("KRB5_CONFIG", &self.krb5_conf)
            .arg(&service)
            .arg("-s")
            .arg(&self.conf)
            .arg("-A")
            .arg(&credentials)
            .arg("--use-kerberos=off")
            .arg("--client-protection=encrypt")
            .arg("-c")
            .arg(commands)
            .current_dir(self.dir.join("client"));
        let output = run(cmd, None, COMMAND_TIMEOUT, format!("smbclient {service} --use-kerberos=off"))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The last `lines` lines of samba's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_file(&DcLayout::new(&self.dir).samba_log, lines)
    }

    /// Live processes of this instance: samba (whose title no longer names
    /// the smb.conf) and whatever names the smb.conf.
    pub fn processes(&self) -> Vec<u32> {
        let mut pids = live_processes_using(&self.conf);
        if pid_alive(self.samba_pid) && !pids.contains(&self.samba_pid) {
            pids.push(self.samba_pid);
        }
        pids.sort_unstable();
        pids
    }

    /// Stops samba (by its PID, through the watchdog) and removes the
    /// directory. Idempotent; also runs on drop.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self._watchdog_out = None;
        if let Some(mut watchdog) = self.watchdog.take() {
            drop(watchdog.stdin.take());
            if wait_with_timeout(&mut watchdog, Duration::from_secs(30)).is_none() {
                let _ = watchdog.kill();
                let _ = watchdog.wait();
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
        self._addr_lock = None;
    }
}

impl Drop for AdDc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Paths inside an instance (or template) directory.
struct DcLayout {
    root: PathBuf,
    conf: PathBuf,
    krb5_conf: PathBuf,
    share: PathBuf,
    run_samba: PathBuf,
    samba_log: PathBuf,
    watchdog_log: PathBuf,
}

impl DcLayout {
    fn new(root: &Path) -> DcLayout {
        DcLayout {
            root: root.to_path_buf(),
            conf: root.join("etc/smb.conf"),
            krb5_conf: root.join("etc/krb5.conf"),
            share: root.join(SHARE),
            run_samba: root.join("run"),
            samba_log: root.join("log/samba.log"),
            watchdog_log: root.join("log/watchdog.log"),
        }
    }

    fn sub(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> =
            ["etc", "private", "lock", "state", "cache", "pid", "log", "client"].iter().map(|d| self.sub(d)).collect();
        dirs.push(self.share.clone());
        dirs.push(self.run_samba.clone());
        dirs
    }
}

/// The DC's smb.conf. Pure, so it is unit-tested. Only `s3fs, kdc, winbindd`
/// run (no LDAP, DNS, NBT...): enough for SMB with Kerberos logons.
fn render_dc_smb_conf(layout: &DcLayout, ip: Ipv4Addr) -> String {
    let d = |name: &str| layout.sub(name).display().to_string();
    format!(
        "# Private AD DC written by smb3-testkit.
[global]
  server role = active directory domain controller
  realm = {REALM}
  workgroup = {NETBIOS_DOMAIN}
  netbios name = {netbios}
  # A bare address finds no interface: give the netmask.
  interfaces = {ip}/8
  bind interfaces only = yes
  server services = s3fs, kdc, winbindd
  private dir = {private}
  lock directory = {lock}
  state directory = {state}
  cache directory = {cache}
  pid directory = {pid}
  binddns dir = {binddns}
  log file = {log}/log.%m
  max log size = 0
  log level = 1
  # Kerberos only: an NTLM logon gets NT_STATUS_NTLM_BLOCKED.
  ntlm auth = disabled
  server smb encrypt = required
  server signing = mandatory
  server min protocol = SMB2_10
  server max protocol = SMB3_11
  kernel share modes = no
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes

[{SHARE}]
  path = {share}
  read only = no
  create mask = 0644
",
        netbios = DC_HOST.to_ascii_uppercase(),
        private = d("private"),
        lock = d("lock"),
        state = d("state"),
        cache = d("cache"),
        pid = d("pid"),
        binddns = d("bind-dns"),
        log = d("log"),
        share = layout.share.display(),
    )
}

/// A krb5.conf naming only this DC's KDC: no DNS lookups, no reverse
/// lookups (the DC's name does not resolve).
fn render_krb5_conf(ip: Ipv4Addr) -> String {
    format!(
        "[libdefaults]
  default_realm = {REALM}
  dns_lookup_kdc = false
  dns_lookup_realm = false
  rdns = false
  dns_canonicalize_hostname = false

[realms]
  {REALM} = {{
    kdc = {ip}:88
  }}

[domain_realm]
  .{DNS_DOMAIN} = {REALM}
  {DNS_DOMAIN} = {REALM}
"
    )
}

/// Runs samba in a private mount namespace with `run/` bound over
/// /run/samba, under a watchdog that stops it once its stdin reaches EOF.
/// Prints samba's pid first. samba gets its own process group (no
/// `--no-process-group`): on SIGTERM it signals its group, which must not
/// include the watchdog.
const DC_WATCHDOG_SCRIPT: &str = r#"
mkdir -p /run/samba
unshare --mount --propagation private /bin/sh -c \
  'mount --bind "$SMB3_TESTKIT_RUN" /run/samba && exec samba -M single --foreground -s "$SMB3_TESTKIT_CONF" --debug-stdout' \
  </dev/null >>"$SMB3_TESTKIT_LOG" 2>&1 &
samba=$!
echo "$samba"
alive() {
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  case "${stat##*) }" in Z*|X*) return 1 ;; esac
  return 0
}
instance_pids() {
  for p in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
    case "$cmd" in *"$SMB3_TESTKIT_CONF"*) alive "${p#/proc/}" && echo "${p#/proc/}" ;; esac
  done
}
while read -r _; do :; done 2>/dev/null
exec >/dev/null
kill -TERM "$samba" 2>/dev/null
i=0
while [ $i -lt 100 ] && alive "$samba"; do sleep 0.1; i=$((i+1)); done
kill -KILL "$samba" 2>/dev/null
wait "$samba" 2>/dev/null
left=$(instance_pids)
[ -n "$left" ] && kill -KILL $left 2>/dev/null
rm -rf "$SMB3_TESTKIT_INSTANCE_DIR"
"#;

fn spawn_dc_watchdog(layout: &DcLayout) -> Result<(Child, BufReader<ChildStdout>, u32), SambaError> {
    let watchdog_log = File::create(&layout.watchdog_log)
        .map_err(|e| SambaError::io(format!("creating {}", layout.watchdog_log.display()), e))?;
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(DC_WATCHDOG_SCRIPT)
        .env("SMB3_TESTKIT_CONF", &layout.conf)
        .env("SMB3_TESTKIT_RUN", &layout.run_samba)
        .env("SMB3_TESTKIT_LOG", &layout.samba_log)
        .env("SMB3_TESTKIT_INSTANCE_DIR", &layout.root)
        .env("KRB5_CONFIG", &layout.krb5_conf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(watchdog_log)
        .process_group(0)
        .spawn()
        .map_err(|e| SambaError::io("starting the AD DC watchdog (/bin/sh)", e))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut out = BufReader::new(stdout);
    let mut line = String::new();
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
            Err(SambaError::io("starting samba", std::io::Error::other(why)))
        }
    }
}

/// The provisioned domain, made once per machine and Samba version under a
/// lock: `samba-tool domain provision` into a temp directory renamed into
/// place when complete, so a crash never leaves a half template.
fn ensure_template() -> Result<PathBuf, SambaError> {
    let base = std::env::var_os("SMB3_TESTKIT_TMPDIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    let version = samba_version()?;
    let template = base.join(format!("smb3-csi-testkit-addc-template-{}", sanitize(&version)));
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(TEMPLATE_LOCK)
        .map_err(|e| SambaError::io(format!("opening {TEMPLATE_LOCK}"), e))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| SambaError::io(format!("locking {TEMPLATE_LOCK}"), errno.into()))?;
    if template.join("private/sam.ldb").exists() {
        return Ok(template);
    }
    let building = base.join(format!("smb3-csi-testkit-addc-building-{}", std::process::id()));
    let _ = fs::remove_dir_all(&building);
    fs::create_dir_all(&building).map_err(|e| SambaError::io(format!("creating {}", building.display()), e))?;
    let result = provision(&building).and_then(|()| {
        fs::rename(&building, &template)
            .map_err(|e| SambaError::io(format!("renaming {} into place", building.display()), e))
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&building);
    }
    result.map(|()| template)
}

fn provision(dir: &Path) -> Result<(), SambaError> {
    let admin = random_password();
    let mut cmd = Command::new(find_program("samba-tool").unwrap_or_else(|| "samba-tool".into()));
    cmd.args(["domain", "provision", "--server-role=dc", "--dns-backend=NONE", "--use-rfc2307"])
        .arg(format!("--realm={REALM}"))
        .arg(format!("--domain={NETBIOS_DOMAIN}"))
        .arg(format!("--host-name={DC_HOST}"))
        .arg("--host-ip=127.0.0.20")
        .arg(format!("--adminpass={}", admin.expose()))
        .arg(format!("--targetdir={}", dir.display()))
        // Never read the host's smb.conf.
        .arg("--option=interfaces=127.0.0.20/8")
        .arg("--option=bind interfaces only=yes");
    run(cmd, None, PROVISION_TIMEOUT, format!("samba-tool domain provision --targetdir={}", dir.display())).map(drop)
}

/// `samba --version`, e.g. "Version 4.17.12-Debian".
fn samba_version() -> Result<String, SambaError> {
    let mut cmd = Command::new(find_program("samba").unwrap_or_else(|| "samba".into()));
    cmd.arg("--version");
    let out = run(cmd, None, COMMAND_TIMEOUT, "samba --version".into())?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' }).collect()
}

/// A password AD's complexity rules accept (upper, lower, digit, symbol).
fn random_password() -> Secret {
    let body: String = rand::thread_rng().sample_iter(&Alphanumeric).take(20).map(char::from).collect();
    let password = Secret::new(format!("{body}-Aa1"));
    crate::run_log::register_secret(password.expose().as_bytes());
    password
}

/// Takes the first loopback address 127.0.0.N whose lock file is free and
/// whose ports 88 and 445 can be bound (another program may hold them).
fn lock_free_address(timeout: Duration) -> Result<(Ipv4Addr, Flock<File>), SambaError> {
    let deadline = Instant::now() + timeout;
    loop {
        for n in FIRST_ADDR..=LAST_ADDR {
            let ip = Ipv4Addr::new(127, 0, 0, n);
            let path = format!("{ADDR_LOCK_PREFIX}{ip}.lock");
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o666)
                .open(&path)
                .map_err(|e| SambaError::io(format!("opening {path}"), e))?;
            let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else { continue };
            if [88, 445].iter().all(|&port| TcpListener::bind((ip, port)).is_ok()) {
                return Ok((ip, lock));
            }
        }
        if Instant::now() >= deadline {
            return Err(SambaError::io(
                "finding a free loopback address for the AD DC",
                std::io::Error::other(format!("127.0.0.{FIRST_ADDR}..{LAST_ADDR} all busy for {timeout:?}")),
            ));
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// `cp -a SRC/. DST`: the template holds tdb/ldb files and sockets-free
/// directories only; cp keeps modes and ownership.
fn copy_dir(src: &Path, dst: &Path) -> Result<(), SambaError> {
    let mut cmd = Command::new("cp");
    cmd.arg("-a").arg(src.join(".")).arg(dst);
    run(cmd, None, COMMAND_TIMEOUT, format!("cp -a {}/. {}", src.display(), dst.display())).map(drop)
}

fn write_file(path: &Path, contents: &str) -> Result<(), SambaError> {
    fs::write(path, contents).map_err(|e| SambaError::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting<'a>(conf: &'a str, key: &str) -> Vec<&'a str> {
        conf.lines().filter_map(|l| l.trim().strip_prefix(key)?.trim().strip_prefix('=')).map(str::trim).collect()
    }

    #[test]
    fn dc_conf_is_kerberos_only_and_encrypted() {
        let conf = render_dc_smb_conf(&DcLayout::new(Path::new("/tmp/dc")), Ipv4Addr::new(127, 0, 0, 21));
        assert_eq!(setting(&conf, "server role"), ["active directory domain controller"]);
        assert_eq!(setting(&conf, "interfaces"), ["127.0.0.21/8"]);
        assert_eq!(setting(&conf, "ntlm auth"), ["disabled"]);
        assert_eq!(setting(&conf, "server smb encrypt"), ["required"]);
        assert_eq!(setting(&conf, "server services"), ["s3fs, kdc, winbindd"]);
        assert_eq!(setting(&conf, "private dir"), ["/tmp/dc/private"]);
        assert_eq!(setting(&conf, "path"), ["/tmp/dc/share"]);
        assert_eq!(setting(&conf, "realm"), [REALM]);
    }

    #[test]
    fn krb5_conf_names_only_the_dc() {
        let conf = render_krb5_conf(Ipv4Addr::new(127, 0, 0, 22));
        assert_eq!(setting(&conf, "kdc"), ["127.0.0.22:88"]);
        assert_eq!(setting(&conf, "dns_lookup_kdc"), ["false"]);
        assert_eq!(setting(&conf, "default_realm"), [REALM]);
    }

    #[test]
    fn random_passwords_meet_ad_complexity() {
        let p = random_password();
        let p = p.expose();
        assert!(p.len() >= 8);
        assert!(p.chars().any(|c| c.is_ascii_uppercase()));
        assert!(p.chars().any(|c| c.is_ascii_lowercase()));
        assert!(p.chars().any(|c| c.is_ascii_digit()));
        assert_ne!(random_password().expose(), p);
    }
}
