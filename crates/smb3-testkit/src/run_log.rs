//! The test run's record of everything the suite printed, for the secret
//! scan (`secret-scan`, run by scripts/test.sh after the tests): every test
//! password and other secret is registered here when it is made, and the
//! output that could leak one (the test binary's tracing, each child
//! process's stdout and stderr, the messages of gRPC errors, /metrics bodies)
//! is written under the same directory.
//!
//! The directory comes from [`RUN_LOG_ENV`]; without it nothing is written
//! (a developer's `cargo test` stays as it was) and passwords are still
//! random. Layout: `secrets` (one base64 line per registered secret, kept
//! out of the scan) and `logs/<component>-<pid>-<n>.log`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rand::distributions::Alphanumeric;
use rand::Rng;
use smb3::Secret;

/// Names the run's directory (scripts/test.sh sets it to a fresh one).
pub const RUN_LOG_ENV: &str = "SMB3_TESTKIT_RUN_LOG";
/// The registry of secrets inside the run directory.
pub const SECRETS_FILE: &str = "secrets";
/// Where recorded output goes inside the run directory.
pub const LOGS_DIR: &str = "logs";

/// The run directory, when this run is recorded.
pub fn dir() -> Option<PathBuf> {
    std::env::var_os(RUN_LOG_ENV).filter(|d| !d.is_empty()).map(PathBuf::from)
}

/// A fresh test password: `<label>-` and 24 random letters and digits, so it
/// is unique to the run and never appears by chance. Registered for the scan.
pub fn test_password(label: &str) -> Secret {
    let random: String = rand::thread_rng().sample_iter(&Alphanumeric).take(24).map(char::from).collect();
    let password = Secret::new(format!("{label}-{random}"));
    register_secret(password.expose().as_bytes());
    password
}

/// Adds `secret` (a password, a Kerberos credential cache, ...) to what the
/// scan looks for. Without a run directory, nothing happens.
pub fn register_secret(secret: &[u8]) {
    let Some(dir) = dir() else { return };
    static REGISTRY: Mutex<()> = Mutex::new(());
    let _one_writer = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    let line = format!("{}\n", crate::secret_scan::base64(secret));
    let written = fs::create_dir_all(&dir).and_then(|()| {
        OpenOptions::new().create(true).append(true).open(dir.join(SECRETS_FILE))?.write_all(line.as_bytes())
    });
    if let Err(e) = written {
        panic!("registering a test secret in {}: {e}", dir.display());
    }
}

/// Adds a Kerberos credential cache (the bytes of a `krb5cc_*` Secret) to
/// what the scan looks for: the whole cache, and each credential's session
/// key and ticket, which a leak of only a part would show.
pub fn register_ccache(ccache: &[u8]) {
    register_secret(ccache);
    if let Ok(cache) = smb3::auth::ccache::Ccache::decode(ccache) {
        for credential in &cache.credentials {
            register_secret(&credential.key);
            register_secret(&credential.ticket);
        }
    }
}

/// A new file for `component`'s output in the run's logs, or `None` when the run is not recorded.
pub fn log_path(component: &str) -> Option<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let logs = dir()?.join(LOGS_DIR);
    if let Err(e) = fs::create_dir_all(&logs) {
        panic!("creating {}: {e}", logs.display());
    }
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name: String = component.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    Some(logs.join(format!("{name}-{}-{n}.log", std::process::id())))
}

/// Where a child process writes `component`'s output: a file in the run's logs, else nowhere.
pub fn stdio(component: &str) -> Stdio {
    match log_path(component) {
        Some(path) => Stdio::from(create(&path)),
        None => Stdio::null(),
    }
}

/// A file in the run's logs for `component` (e.g. an in-process tracing writer), else `None`.
pub fn file(component: &str) -> Option<File> {
    log_path(component).map(|p| create(&p))
}

/// Keeps `text` (an error message, a /metrics body, a command's output) for the scan.
pub fn record(component: &str, text: impl AsRef<[u8]>) {
    if let Some(path) = log_path(component) {
        if let Err(e) = fs::write(&path, text.as_ref()) {
            panic!("writing {}: {e}", path.display());
        }
    }
}

/// Keeps a finished command's stdout and stderr.
pub fn record_output(component: &str, output: &Output) {
    let mut both = output.stdout.clone();
    both.extend_from_slice(&output.stderr);
    record(component, both);
}

/// Keeps a copy of a log file a test wrote elsewhere (e.g. a plugin's stderr it also reads).
pub fn record_file(component: &str, path: &Path) {
    if dir().is_some() {
        if let Ok(bytes) = fs::read(path) {
            record(component, bytes);
        }
    }
}

fn create(path: &Path) -> File {
    File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()))
}
