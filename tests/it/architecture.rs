//! The workspace's shape, checked: the SMB client crate depends on nothing
//! of CSI, Kubernetes, FUSE or HTTP; the release binary's dependency graph
//! has no test kit; `src/fs` does not import `src/mount`; and no module of
//! the client imports upward from its top-level `client` module.

use std::path::Path;
use std::process::Command;

fn cargo_tree(package: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-e", "normal", "--prefix", "none", "-p", package])
        .current_dir(root)
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree -p {package}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn crate_names(tree: &str) -> Vec<&str> {
    tree.lines().filter_map(|l| l.split_whitespace().next()).collect()
}

#[test]
fn smb3_depends_on_no_driver_layer() {
    let tree = cargo_tree("smb3");
    let names = crate_names(&tree);
    assert!(names.contains(&"smb3"), "{tree}");
    for banned in ["tonic", "kube", "k8s-openapi", "fuser", "hyper", "axum", "prost", "smb3-testkit"] {
        assert!(!names.contains(&banned), "smb3 depends on {banned}:\n{tree}");
    }
}

#[test]
fn release_binary_has_no_test_kit() {
    // Default features are what the image builds (`cargo build --release --bin smb3-csi`).
    let tree = cargo_tree("smb3-csi");
    let names = crate_names(&tree);
    assert!(names.contains(&"smb3"), "{tree}");
    assert!(!names.contains(&"smb3-testkit"), "the driver's normal dependencies include the test kit:\n{tree}");
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Lines of `use` statements (and paths) naming `needle`, outside comments.
fn files_naming(dir: &str, needle: &str) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir), &mut files);
    let mut hits = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if !code.starts_with("//") && code.contains(needle) {
                hits.push(format!("{}:{}: {}", file.display(), n + 1, code));
            }
        }
    }
    hits
}

#[test]
fn fs_does_not_import_mount() {
    let hits = files_naming("src/fs", "crate::mount");
    assert!(hits.is_empty(), "src/fs imports src/mount:\n{}", hits.join("\n"));
}

#[test]
fn client_layers_do_not_import_the_top_level_client() {
    // `lib.rs` re-exports it; the pool caches `Client`s and so sits above it.
    // Everything below (conn, session, tree, file, auth, wire, crypto) must not.
    let hits: Vec<String> = files_naming("crates/smb3/src", "client::")
        .into_iter()
        .filter(|hit| !hit.contains("/src/lib.rs:") && !hit.contains("/src/pool.rs:"))
        .collect();
    assert!(hits.is_empty(), "lower layers import the top-level client:\n{}", hits.join("\n"));
}
