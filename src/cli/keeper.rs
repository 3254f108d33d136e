//! `smb3-csi keeper --socket PATH`: hold the node's live FUSE connections for the node plugin (see
//! [`smb3_csi::keeper`]). In the chart it is its own container; outside Kubernetes the plugin starts one
//! when none answers.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Args;

use smb3_csi::keeper::{server, KeeperOptions};

#[derive(Args, Debug)]
pub struct KeeperArgs {
    /// The unix socket to listen on (its directory is made 0700, the socket 0600; only root may talk to it).
    #[arg(long, env = "KEEPER_SOCKET")]
    socket: PathBuf,
    /// Exit after this many seconds holding no mount and hearing from no plugin (0: never).
    #[arg(long, default_value_t = 0)]
    idle_exit_secs: u64,
}

pub async fn run(args: KeeperArgs) -> Result<(), String> {
    let options = KeeperOptions {
        socket: args.socket,
        idle_exit: (args.idle_exit_secs > 0).then(|| Duration::from_secs(args.idle_exit_secs)),
    };
    // Blocking by design (a thread per connection); SIGTERM/SIGINT end the process with their default action.
    tokio::task::spawn_blocking(move || server::run(&options, &AtomicBool::new(false)))
        .await
        .map_err(|e| format!("keeper task: {e}"))?
        .map_err(|e| e.to_string())
}
