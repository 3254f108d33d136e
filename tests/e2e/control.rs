//! The harness's control channel: run.sh injects faults into the private Samba by writing one request
//! file, `$E2E_STATE/run/control.request`, and waits for `$E2E_STATE/run/control.reply`.
//!
//! Requests (one line): `restart SECONDS` stops smbd, waits, and starts it again on the same port (the
//! test kit's `restart`); `password NEW` changes the test user's password on the server (`change_password`).
//! The reply is `ok MILLISECONDS` (how long the action took) or `error WHY`. The request file is removed
//! before the action, so every request is acted on once.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use smb3::Secret;
use smb3_testkit::samba::Samba;

/// A fault run.sh asked for.
#[derive(Debug, PartialEq)]
pub enum Request {
    RestartSamba { down: Duration },
    ChangePassword(String),
}

/// Parses one request line; the error says what is accepted.
pub fn parse(line: &str) -> Result<Request, String> {
    let line = line.trim();
    let (verb, arg) = line.split_once(' ').map(|(v, a)| (v, a.trim())).unwrap_or((line, ""));
    match verb {
        "restart" => {
            let secs: f64 = arg.parse().map_err(|_| format!("restart needs seconds, got {arg:?}"))?;
            if !(0.0..=120.0).contains(&secs) {
                return Err(format!("restart: {secs}s is not within 0..=120"));
            }
            Ok(Request::RestartSamba { down: Duration::from_secs_f64(secs) })
        }
        "password" if !arg.is_empty() && !arg.contains(char::is_whitespace) => {
            Ok(Request::ChangePassword(arg.to_string()))
        }
        "password" => Err("password needs one word".to_string()),
        _ => Err(format!("unknown request {verb:?} (restart SECONDS | password NEW)")),
    }
}

/// The request and reply files under `run_dir`.
pub struct Channel {
    request: PathBuf,
    reply: PathBuf,
}

impl Channel {
    pub fn new(run_dir: &Path) -> Channel {
        Channel { request: run_dir.join("control.request"), reply: run_dir.join("control.reply") }
    }

    /// Acts on a pending request, if any (blocking: Samba is restarted in place).
    pub fn serve_once(&self, samba: &mut Samba) {
        let Ok(line) = std::fs::read_to_string(&self.request) else { return };
        let _ = std::fs::remove_file(&self.request);
        let started = Instant::now();
        let outcome = parse(&line).and_then(|request| {
            eprintln!("harness: control: {}", describe(&request));
            match request {
                Request::RestartSamba { down } => samba.restart(down).map_err(|e| e.to_string()),
                Request::ChangePassword(new) => samba.change_password(Secret::new(new)).map_err(|e| e.to_string()),
            }
        });
        let reply = match outcome {
            Ok(()) => format!("ok {}\n", started.elapsed().as_millis()),
            Err(why) => format!("error {why}\n"),
        };
        eprintln!("harness: control reply: {}", reply.trim());
        let tmp = self.reply.with_extension("tmp");
        if std::fs::write(&tmp, reply).and_then(|()| std::fs::rename(&tmp, &self.reply)).is_err() {
            eprintln!("harness: cannot write {}", self.reply.display());
        }
    }
}

/// The request for the log, without the password.
fn describe(request: &Request) -> String {
    match request {
        Request::RestartSamba { down } => format!("restart Samba, down for {down:?}"),
        Request::ChangePassword(_) => "change the test user's password".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_are_named() {
        assert_eq!(parse("restart 3\n"), Ok(Request::RestartSamba { down: Duration::from_secs(3) }));
        assert_eq!(parse("restart 0.5"), Ok(Request::RestartSamba { down: Duration::from_millis(500) }));
        assert_eq!(parse("password N3w-pw\n"), Ok(Request::ChangePassword("N3w-pw".into())));
        assert!(parse("restart").unwrap_err().contains("seconds"));
        assert!(parse("restart -1").unwrap_err().contains("within"));
        assert!(parse("restart 1000").unwrap_err().contains("within"));
        assert!(parse("password").unwrap_err().contains("one word"));
        assert!(parse("password a b").unwrap_err().contains("one word"));
        assert!(parse("reboot").unwrap_err().contains("unknown request"));
        assert!(!describe(&Request::ChangePassword("s3cret".into())).contains("s3cret"));
    }
}
