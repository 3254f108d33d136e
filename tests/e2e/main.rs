//! End-to-end harness helpers for `tests/e2e/k8s/run.sh` (test target `e2e`).
//!
//! - [`provisioner`]: a small stand-in for external-provisioner. It watches (polls) the claims of
//!   StorageClasses whose provisioner is our driver, calls CreateVolume with the class parameters,
//!   the `--extra-create-metadata` keys and the provisioner Secret, creates the PV pre-bound to the
//!   claim, and calls DeleteVolume then deletes the PV once a `Delete` PV is released. It talks to
//!   the API server through kubectl (go-templates in, JSON out), so it needs no Kubernetes crate.
//! - `harness` (ignored; run.sh starts the compiled test binary with `--ignored --exact harness`):
//!   starts the private Samba from the test kit, writes its coordinates to
//!   `$E2E_STATE/samba.env`, then runs the provisioner until `$E2E_STATE/run/harness.stop`
//!   appears (or the process is killed, which also stops Samba through the kit's watchdog). Meanwhile it
//!   acts on fault requests from run.sh ([`control`]: restart Samba, change the user's password).
//!
//! - `ad_dc_harness` (ignored; run.sh starts it the same way): the test kit's AD DC (Samba with its KDC) for the
//!   Kerberos scenario, its coordinates in `$E2E_STATE/addc.env`, until `$E2E_STATE/run/addc.stop` appears.
//!
//! The remaining tests check the provisioner's pure parts and run everywhere.

mod control;
mod provisioner;

use std::path::{Path, PathBuf};
use std::time::Duration;

use smb3_testkit::samba::{Samba, SambaProfile};

#[test]
#[ignore = "run by tests/e2e/k8s/run.sh against a live cluster"]
fn harness() {
    let state = PathBuf::from(std::env::var("E2E_STATE").expect("E2E_STATE is set by run.sh"));
    let mut samba = Samba::start(SambaProfile::EncryptRequired).expect("starting the private Samba");
    let env = format!(
        "SMB_HOST={}\nSMB_PORT={}\nSMB_USER={}\nSMB_PASSWORD={}\nSMB_SHARE={}\nSMB_SHARE_PATH={}\n",
        samba.host(),
        samba.port(),
        samba.user(),
        samba.password().expose(),
        samba.share_name(),
        samba.share_path().display()
    );
    let env_path = state.join("samba.env");
    write_env(&env_path, &env);
    eprintln!("harness: Samba on {}:{} share {}", samba.host(), samba.port(), samba.share_name());

    let config = provisioner::Config::from_env().expect("provisioner configuration");
    let stop_file = state.join("run/harness.stop");
    let control = control::Channel::new(&state.join("run"));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // Fault requests are looked at every 100 ms; the provisioner reconciles every 700 ms.
        let mut last_reconcile: Option<std::time::Instant> = None;
        loop {
            if stop_file.exists() {
                break;
            }
            tokio::task::block_in_place(|| control.serve_once(&mut samba));
            if last_reconcile.is_none_or(|t| t.elapsed() >= Duration::from_millis(700)) {
                if let Err(e) = provisioner::reconcile_once(&config).await {
                    eprintln!("provisioner: {e}");
                }
                last_reconcile = Some(std::time::Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let _ = std::fs::remove_file(&env_path);
    drop(samba);
}

/// `KEY=value` lines for run.sh to `source`, written whole (a temp file renamed into place, mode 0600: it
/// holds a password).
fn write_env(path: &Path, env: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp).unwrap();
    f.write_all(env.as_bytes()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The Kerberos scenario's Active Directory DC (Samba with its KDC, from the test kit, on a loopback address
/// 127.0.0.20-59; run.sh starts the compiled test binary with `--ignored --exact ad_dc_harness`): writes its
/// coordinates to `$E2E_STATE/addc.env` (`DC_KRB5_CONF` is the krb5.conf naming its KDC, for the driver's
/// `KRB5_CONFIG`), then waits until `$E2E_STATE/run/addc.stop` appears. However the process ends, the kit's
/// watchdog stops the DC and removes its directory.
#[test]
#[ignore = "run by tests/e2e/k8s/run.sh against a live cluster"]
fn ad_dc_harness() {
    use smb3_testkit::ad_dc::{AdDc, NETBIOS_DOMAIN};
    let state = PathBuf::from(std::env::var("E2E_STATE").expect("E2E_STATE is set by run.sh"));
    let dc = AdDc::start().expect("starting the private AD DC");
    let env = format!(
        "DC_IP={}\nDC_NAME={}\nDC_REALM={}\nDC_DOMAIN={NETBIOS_DOMAIN}\nDC_USER={}\nDC_PRINCIPAL={}\nDC_PASSWORD={}\n\
         DC_SHARE={}\nDC_SHARE_PATH={}\nDC_KRB5_CONF={}\nDC_SMB_CONF={}\n",
        dc.ip(),
        dc.server_name(),
        dc.realm(),
        dc.user(),
        dc.user_principal(),
        dc.password().expose(),
        dc.share_name(),
        dc.share_path().display(),
        dc.krb5_conf().display(),
        dc.conf_path().display(),
    );
    let env_path = state.join("addc.env");
    write_env(&env_path, &env);
    eprintln!("ad_dc_harness: AD DC {} at {} (realm {})", dc.server_name(), dc.ip(), dc.realm());
    let stop_file = state.join("run/addc.stop");
    while !stop_file.exists() {
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = std::fs::remove_file(&env_path);
    drop(dc);
}

/// A stand-in node plugin (Identity + NodeGetInfo only) on `$E2E_FAKE_NODE_SOCKET`, for checking
/// `smb3-csi registrar` against the real kubelet before the Node service exists: run.sh uses it
/// when `E2E_FAKE_NODE=1`. Runs until `$E2E_STATE/run/fake-node.stop` appears.
#[test]
#[ignore = "run by tests/e2e/k8s/run.sh (E2E_FAKE_NODE=1)"]
fn fake_node_plugin() {
    use smb3_csi::csi::proto::node_server::Node;
    use smb3_csi::csi::proto::{
        NodeGetCapabilitiesRequest, NodeGetCapabilitiesResponse, NodeGetInfoRequest, NodeGetInfoResponse,
    };
    use smb3_csi::csi::{serve, Endpoint, IdentityService, Services};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    struct InfoOnly(String);
    #[tonic::async_trait]
    impl Node for InfoOnly {
        async fn node_get_info(
            &self,
            _: tonic::Request<NodeGetInfoRequest>,
        ) -> Result<tonic::Response<NodeGetInfoResponse>, tonic::Status> {
            Ok(tonic::Response::new(NodeGetInfoResponse { node_id: self.0.clone(), ..Default::default() }))
        }
        async fn node_get_capabilities(
            &self,
            _: tonic::Request<NodeGetCapabilitiesRequest>,
        ) -> Result<tonic::Response<NodeGetCapabilitiesResponse>, tonic::Status> {
            Ok(tonic::Response::new(NodeGetCapabilitiesResponse::default()))
        }
    }

    let state = PathBuf::from(std::env::var("E2E_STATE").expect("E2E_STATE"));
    let socket = std::env::var("E2E_FAKE_NODE_SOCKET").expect("E2E_FAKE_NODE_SOCKET");
    let driver = std::env::var("E2E_DRIVER").expect("E2E_DRIVER");
    let node_id = std::env::var("E2E_NODE_NAME").expect("E2E_NODE_NAME");
    let stop_file = state.join("run/fake-node.stop");
    let identity = IdentityService::new(&driver, false, Arc::new(AtomicBool::new(true))).unwrap();
    let services = Services::new().with_identity(identity).with_node(InfoOnly(node_id));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        serve(&Endpoint::parse(&socket).unwrap(), services, async {
            while !stop_file.exists() {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
        .await
        .unwrap();
    });
}
