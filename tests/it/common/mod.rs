//! Helpers shared by integration tests.

pub mod csi;

/// Noisy dependencies stay at info when the suite's own tracing is recorded at debug.
const RECORDED_TRACING: &str =
    "debug,h2=info,hyper=info,hyper_util=info,tower=info,tonic=info,kube=info,kube_client=info,rustls=info";

/// The test binary's tracing (the in-process CSI services, SMB clients and
/// filesystems). In a recorded run (`smb3_testkit::run_log`) it goes, at
/// debug level, to the run's logs, which the secret scan searches; otherwise
/// warnings go to the test's output. Called by the `samba!` macro and by
/// tests that log without it; the first call sets it up.
pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let env = tracing_subscriber::EnvFilter::try_from_default_env().ok();
        let _ = match smb3_testkit::run_log::file("tracing") {
            Some(file) => tracing_subscriber::fmt()
                .with_env_filter(env.unwrap_or_else(|| RECORDED_TRACING.into()))
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .try_init(),
            None => tracing_subscriber::fmt()
                .with_env_filter(env.unwrap_or_else(|| "warn".into()))
                .with_test_writer()
                .try_init(),
        };
    });
}

/// A client logged on to the shared Samba, and a tree of its share.
pub async fn connect(samba: &smb3_testkit::samba::Samba) -> (smb3::Client, smb3::Tree) {
    let creds = smb3::Credentials::user(samba.user(), "", samba.password().clone());
    let client = smb3::Client::connect(samba.host(), samba.port(), &creds, &smb3::ClientOptions::default())
        .await
        .expect("connect");
    let tree = client.tree(samba.share_name()).await.expect("tree");
    (client, tree)
}
