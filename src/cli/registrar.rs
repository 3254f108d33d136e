//! `smb3-csi registrar`: kubelet plugin registration for the node plugin (see
//! [`smb3_csi::registrar`]). Same flags as the chart passes: `--csi-address`,
//! `--kubelet-registration-path`, `--registration-dir`, plus `--driver-name` to skip asking the
//! CSI socket.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use smb3_csi::csi::Endpoint;
use smb3_csi::registrar::{self, RegistrarConfig};

#[derive(Args, Debug)]
pub struct RegistrarArgs {
    /// The node plugin's CSI socket as this process sees it.
    #[arg(long, default_value = "/csi/csi.sock")]
    csi_address: String,
    /// The same CSI socket as the kubelet sees it on the host (what the kubelet will dial).
    #[arg(long)]
    kubelet_registration_path: PathBuf,
    /// The kubelet's plugins_registry directory, as this process sees it.
    #[arg(long, default_value = "/registration")]
    registration_dir: PathBuf,
    /// Driver name; by default it is asked from the CSI socket (GetPluginInfo).
    #[arg(long, env = "DRIVER_NAME")]
    driver_name: Option<String>,
    /// How long to wait for the CSI socket to answer, in seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86400))]
    csi_timeout_secs: u64,
}

/// Runs until SIGTERM/SIGINT, or fails if the kubelet rejects the plugin.
pub async fn run(args: RegistrarArgs) -> Result<(), String> {
    let csi_endpoint = Endpoint::parse(&args.csi_address).map_err(|e| format!("--csi-address: {e}"))?;
    let config = RegistrarConfig {
        csi_endpoint,
        kubelet_registration_path: args.kubelet_registration_path,
        registration_dir: args.registration_dir,
        driver_name: args.driver_name,
        csi_timeout: Duration::from_secs(args.csi_timeout_secs),
    };
    let shutdown = shutdown_signal()?;
    registrar::run(config, shutdown).await.map_err(|e| e.to_string())
}

/// Resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("installing the SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("installing the SIGINT handler: {e}"))?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "stopping the registrar");
    })
}
