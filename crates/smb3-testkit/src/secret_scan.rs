//! The secret scan: searches everything a test run recorded (see
//! [`crate::run_log`]) for every secret it registered, in each form a leak
//! could take, and reports each hit. Pure functions over bytes and one walk
//! of the run directory; the `secret-scan` binary runs it after the suite.
//!
//! Forms searched: the bytes as they are, as UTF-16LE (how NTLM and Windows
//! APIs carry text), as lowercase hex (a `{:x?}`-style dump), and as base64 at
//! each of the three alignments it can have inside a longer base64 text (a
//! Kubernetes Secret's data, a logged request body): the secret's bytes from
//! the first 3-byte group boundary on, whole groups only.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use aho_corasick::AhoCorasick;

use crate::run_log::{LOGS_DIR, SECRETS_FILE};

/// Secrets shorter than this are not searched (they would match by chance);
/// [`crate::run_log::test_password`] makes 25 bytes and more.
pub const MIN_SECRET_LEN: usize = 12;

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [group[0], *group.get(1).unwrap_or(&0), *group.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(BASE64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); `None` on any other character.
pub fn unbase64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let v = BASE64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// How a secret can look in a log, each with what it is called in a report.
pub fn forms(secret: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = vec![("plain", secret.to_vec())];
    out.push(("utf-16le", secret.iter().flat_map(|&b| [b, 0]).collect()));
    out.push(("hex", secret.iter().flat_map(|b| format!("{b:02x}").into_bytes()).collect()));
    for skip in 0..3 {
        let rest = &secret[skip.min(secret.len())..];
        let whole = &rest[..rest.len() / 3 * 3];
        if whole.len() >= MIN_SECRET_LEN / 2 {
            out.push(("base64", base64(whole).into_bytes()));
        }
    }
    out
}

/// One secret found in one recorded file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub file: PathBuf,
    /// Index of the secret in the registry (never the secret itself: the report must not leak it).
    pub secret: usize,
    pub form: &'static str,
    pub offset: usize,
}

/// What one scan saw.
#[derive(Debug, Default)]
pub struct Report {
    pub secrets: usize,
    pub patterns: usize,
    pub files: usize,
    pub bytes: u64,
    /// Recorded files per component (the file name before `-<pid>-<n>.log`).
    pub components: BTreeMap<String, usize>,
    pub hits: Vec<Hit>,
}

/// Why a scan could not run.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: line {line} is not base64")]
    BadRegistry { path: PathBuf, line: usize },
    #[error("building the search: {0}")]
    Search(#[from] aho_corasick::BuildError),
}

/// The registered secrets of a run directory (duplicates and too-short ones dropped).
pub fn registered_secrets(run_dir: &Path) -> Result<Vec<Vec<u8>>, ScanError> {
    let path = run_dir.join(SECRETS_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(ScanError::Io { path, source }),
    };
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let secret = unbase64(line.trim()).ok_or_else(|| ScanError::BadRegistry { path: path.clone(), line: i + 1 })?;
        if secret.len() >= MIN_SECRET_LEN && !secrets.contains(&secret) {
            secrets.push(secret);
        }
    }
    Ok(secrets)
}

/// The component a recorded file belongs to: `plugin-123-4.log` -> `plugin`.
pub fn component_of(file_name: &str) -> &str {
    let stem = file_name.strip_suffix(".log").unwrap_or(file_name);
    let mut parts = stem.rsplitn(3, '-');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(n), Some(pid), Some(component))
            if n.bytes().all(|b| b.is_ascii_digit()) && pid.bytes().all(|b| b.is_ascii_digit()) =>
        {
            component
        }
        _ => stem,
    }
}

/// Searches every file under `run_dir/logs` for every registered secret in every form.
pub fn scan(run_dir: &Path) -> Result<Report, ScanError> {
    let secrets = registered_secrets(run_dir)?;
    let mut patterns = Vec::new();
    let mut owners = Vec::new();
    for (i, secret) in secrets.iter().enumerate() {
        for (form, bytes) in forms(secret) {
            patterns.push(bytes);
            owners.push((i, form));
        }
    }
    let search = AhoCorasick::new(&patterns)?;
    let mut report = Report { secrets: secrets.len(), patterns: patterns.len(), ..Report::default() };
    let mut dirs = vec![run_dir.join(LOGS_DIR)];
    while let Some(dir) = dirs.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(ScanError::Io { path: dir, source }),
        };
        for entry in entries {
            let path = entry.map_err(|source| ScanError::Io { path: dir.clone(), source })?.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let bytes = fs::read(&path).map_err(|source| ScanError::Io { path: path.clone(), source })?;
            report.files += 1;
            report.bytes += bytes.len() as u64;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            *report.components.entry(component_of(&name).to_string()).or_default() += 1;
            if patterns.is_empty() {
                continue;
            }
            for m in search.find_overlapping_iter(&bytes) {
                let (secret, form) = owners[m.pattern().as_usize()];
                report.hits.push(Hit { file: path.clone(), secret, form, offset: m.start() });
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "planted-Zk3vQ9rTbW2mXy7LpA0sNd4e";

    fn run_dir_with(secret: &[u8], files: &[(&str, Vec<u8>)]) -> tempfile_dir::Dir {
        let dir = tempfile_dir::Dir::new();
        fs::write(dir.path().join(SECRETS_FILE), format!("{}\n", base64(secret))).unwrap();
        fs::create_dir_all(dir.path().join(LOGS_DIR)).unwrap();
        for (name, bytes) in files {
            fs::write(dir.path().join(LOGS_DIR).join(name), bytes).unwrap();
        }
        dir
    }

    #[test]
    fn base64_round_trips_and_matches_rfc4648() {
        for (plain, encoded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(plain.as_bytes()), encoded);
            assert_eq!(unbase64(encoded).unwrap(), plain.as_bytes());
        }
        assert_eq!(unbase64("not base64!"), None);
    }

    #[test]
    fn a_planted_password_is_found_in_every_form() {
        let p = PASSWORD.as_bytes();
        let utf16: Vec<u8> = p.iter().flat_map(|&b| [b, 0]).collect();
        let mut files = vec![
            ("tracing-1-0.log".to_string(), format!("INFO connecting password={PASSWORD} done").into_bytes()),
            ("grpc-error-1-1.log".to_string(), [b"NTLM: ".to_vec(), utf16, b" end".to_vec()].concat()),
            (
                "cli-1-2.log".to_string(),
                format!("key bytes {}", p.iter().map(|b| format!("{b:02x}")).collect::<String>()).into_bytes(),
            ),
        ];
        // Inside a longer base64 text, at each of the three alignments.
        for pad in 0..3 {
            let blob = [vec![b'x'; pad + 5], p.to_vec(), b"trailing bytes".to_vec()].concat();
            files.push((format!("metrics-1-{}.log", 3 + pad), format!("data: {}\n", base64(&blob)).into_bytes()));
        }
        let borrowed: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
        let dir = run_dir_with(p, &borrowed);
        let report = scan(dir.path()).unwrap();
        assert_eq!(report.files, 6);
        let hit_files: std::collections::BTreeSet<String> =
            report.hits.iter().map(|h| h.file.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(hit_files.len(), 6, "every planted copy is found: {:?}", report.hits);
        for form in ["plain", "utf-16le", "hex", "base64"] {
            assert!(report.hits.iter().any(|h| h.form == form), "{form} not found");
        }
        assert_eq!(report.components.get("metrics"), Some(&3));
        assert_eq!(report.components.get("grpc-error"), Some(&1));
    }

    #[test]
    fn clean_logs_and_near_misses_are_not_hits() {
        let near = &PASSWORD[..PASSWORD.len() - 1];
        let dir = run_dir_with(
            PASSWORD.as_bytes(),
            &[("tracing-1-0.log", format!("password=<redacted> {near}").into_bytes()), ("plugin-2-0.log", vec![])],
        );
        let report = scan(dir.path()).unwrap();
        assert!(report.hits.is_empty(), "{:?}", report.hits);
        assert_eq!((report.secrets, report.files), (1, 2));
    }

    #[test]
    fn short_and_duplicate_secrets_are_dropped_and_a_bad_registry_is_an_error() {
        let dir = tempfile_dir::Dir::new();
        let lines = [base64(b"short"), base64(PASSWORD.as_bytes()), base64(PASSWORD.as_bytes())].join("\n");
        fs::write(dir.path().join(SECRETS_FILE), lines).unwrap();
        assert_eq!(registered_secrets(dir.path()).unwrap(), vec![PASSWORD.as_bytes().to_vec()]);
        fs::write(dir.path().join(SECRETS_FILE), "not*base64\n").unwrap();
        assert!(matches!(registered_secrets(dir.path()), Err(ScanError::BadRegistry { line: 1, .. })));
    }

    #[test]
    fn components_come_from_file_names() {
        assert_eq!(component_of("plugin-123-4.log"), "plugin");
        assert_eq!(component_of("grpc-error-77-0.log"), "grpc-error");
        assert_eq!(component_of("odd.log"), "odd");
        assert_eq!(component_of("smbd-x-1.log"), "smbd-x-1");
    }

    /// A temporary directory removed on drop (the test kit has no tempfile dependency).
    mod tempfile_dir {
        use std::path::{Path, PathBuf};

        pub struct Dir(PathBuf);

        impl Dir {
            pub fn new() -> Dir {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = std::env::temp_dir().join(format!("smb3-secret-scan-test-{}-{n}", std::process::id()));
                let _ = std::fs::remove_dir_all(&path);
                std::fs::create_dir_all(&path).unwrap();
                Dir(path)
            }

            pub fn path(&self) -> &Path {
                &self.0
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
