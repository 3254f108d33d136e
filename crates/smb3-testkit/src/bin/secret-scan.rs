//! `secret-scan RUN_DIR [COMPONENT...]`: after a recorded test run
//! (scripts/test.sh sets `SMB3_TESTKIT_RUN_LOG=RUN_DIR`), searches every
//! recorded log, error message and /metrics body for every registered test
//! secret (see `smb3_testkit::secret_scan`). Fails on any hit, and also when
//! the run recorded no secrets or nothing from one of the COMPONENTs
//! (default: the ones the integration suite records), so that a run that
//! silently stopped recording cannot pass.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use smb3_testkit::secret_scan;

/// What the integration suite records in a full run: its own tracing, the driver's
/// serving processes, the driver's CLI commands, gRPC error messages and /metrics bodies.
const SUITE_COMPONENTS: [&str; 5] = ["tracing", "plugin", "cli", "grpc-error", "metrics"];

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(run_dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: secret-scan RUN_DIR [COMPONENT...]");
        return ExitCode::from(2);
    };
    let mut required: Vec<String> = args.map(|a| a.to_string_lossy().into_owned()).collect();
    if required.is_empty() {
        required = SUITE_COMPONENTS.iter().map(|c| c.to_string()).collect();
    }
    let report = match secret_scan::scan(&run_dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("secret-scan: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "secret-scan: {} secrets ({} search patterns) in {} files, {} bytes, under {}",
        report.secrets,
        report.patterns,
        report.files,
        report.bytes,
        run_dir.display()
    );
    for (component, files) in &report.components {
        println!("  {component}: {files} files");
    }
    let mut failed = false;
    if report.secrets == 0 {
        eprintln!("secret-scan: FAILED: no secrets were registered (was SMB3_TESTKIT_RUN_LOG set for the tests?)");
        failed = true;
    }
    for component in &required {
        if !report.components.contains_key(component) {
            eprintln!("secret-scan: FAILED: nothing recorded from `{component}`");
            failed = true;
        }
    }
    for hit in &report.hits {
        // Which secret is said by its place in the registry, never by its value.
        eprintln!(
            "secret-scan: FAILED: secret #{} ({}) in {} at byte {}",
            hit.secret,
            hit.form,
            hit.file.display(),
            hit.offset
        );
        failed = true;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        println!("secret-scan: no secret found");
        ExitCode::SUCCESS
    }
}
