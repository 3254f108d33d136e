//! `proto/csi.proto` stays wire-compatible with CSI spec v1.12.0, checked by
//! the team's `check-csi-proto` tool (protoc descriptors compared field by
//! field against the official proto).

use std::path::Path;
use std::process::Command;

#[test]
fn csi_proto_matches_the_spec() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tool = root.join("../shared/tools/check-csi-proto");
    if !tool.exists() {
        assert!(std::env::var_os("CI").is_none(), "{} is missing in CI", tool.display());
        println!("skipped: {} not found", tool.display());
        return;
    }
    let output = Command::new(&tool)
        .arg(root.join("proto/csi.proto"))
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", tool.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "check-csi-proto failed ({}):\n{stdout}{stderr}", output.status);
    assert!(stdout.contains("definitions match CSI spec"), "{stdout}");
}
