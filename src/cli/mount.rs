//! `smb3-csi mount`: a userspace mount.cifs. Mounts a share (or a directory of it) through FUSE and serves it
//! in the foreground until it is unmounted (`umount MOUNTPOINT`) or the process is signalled (SIGINT/SIGTERM:
//! unmount and exit 0).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use smb3::{Client, ClientOptions, Credentials, ShareTarget};
use smb3_csi::mount::{FuseMount, MountOptions};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Args)]
#[command(after_help = "Credentials come from --credentials FILE (mount.cifs format: username=, password=, domain=) \
or from the SMB_USERNAME, SMB_PASSWORD and SMB_DOMAIN environment variables; never from -o.\n\n\
Options (-o, comma-separated, repeatable): uid=, gid=, file_mode=, dir_mode=, ro, rw, port=, vers=, seal, actimeo=, \
cache=strict|loose|none, nosharesock, noexec, noperm. Kernel-only cifs flags (mfsymlinks, noserverino, nobrl, ...) are \
accepted with one warning.\n\n\
Example: smb3-csi mount --credentials /etc/smb-creds -o uid=1000,gid=1000 //fileserver/share/dir /mnt/dir")]
pub struct MountArgs {
    /// mount.cifs-style credentials file.
    #[arg(long, value_name = "FILE")]
    credentials: Option<PathBuf>,
    /// Mount options, mount.cifs style.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// //HOST[:PORT]/SHARE[/PATH]
    source: String,
    /// An existing directory.
    mountpoint: PathBuf,
}

pub async fn run(args: MountArgs) -> Result<(), String> {
    let mut target = ShareTarget::parse(&args.source).map_err(|e| e.to_string())?;
    let (opts, ignored) = MountOptions::parse(&args.options).map_err(|e| e.to_string())?;
    if !ignored.is_empty() {
        tracing::warn!(options = %ignored.join(","), "ignoring kernel-only cifs mount options");
    }
    if let Some(port) = opts.port {
        target.port = port;
    }
    let creds = match &args.credentials {
        Some(file) => Credentials::from_file(file).map_err(|e| e.to_string())?,
        None => Credentials::from_env()
            .ok_or("no credentials: use --credentials FILE or set SMB_USERNAME and SMB_PASSWORD")?,
    };
    let client_opts =
        opts.client_options(&ClientOptions { timeout: Duration::from_secs(args.timeout.max(1)), ..Default::default() });
    let (client, tree) = Client::connect_share(&target, &creds, &client_opts)
        .await
        .map_err(|e| format!("connect {target} as {}: {e}", creds.display_name()))?;
    let mountpoint = args.mountpoint.clone();
    let subdir = target.path.clone();
    let mount = tokio::task::spawn_blocking(move || FuseMount::mount(tree, &subdir, &mountpoint, &opts))
        .await
        .map_err(|e| format!("mount thread: {e}"))?
        .map_err(|e| e.to_string())?;
    eprintln!("smb3-csi: {} mounted on {}", mount.source(), mount.mountpoint().display());

    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("installing SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("installing SIGINT handler: {e}"))?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut reported_down = false;
    let outcome = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = tick.tick() => {
                if !mount.is_session_running() {
                    break "unmounted";
                }
                if !client.is_alive() && !reported_down {
                    reported_down = true;
                    tracing::error!("the SMB connection is lost: requests fail with EIO until unmounted");
                }
            }
        }
    };
    let shown = mount.mountpoint().display().to_string();
    tokio::task::spawn_blocking(move || mount.unmount())
        .await
        .map_err(|e| format!("unmount thread: {e}"))?
        .map_err(|e| e.to_string())?;
    let _ = client.logoff().await;
    eprintln!("smb3-csi: {shown} unmounted ({outcome})");
    Ok(())
}
