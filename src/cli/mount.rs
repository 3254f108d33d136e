//! `smb3-csi mount`: a userspace mount.cifs. Mounts a share (or a directory of it) through FUSE and serves it
//! in the foreground until it is unmounted (`umount MOUNTPOINT`) or the process is signalled (SIGINT/SIGTERM:
//! unmount and exit 0).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use smb3::{Client, ClientOptions, ConnectionState, Credentials, CredentialsSource, ShareTarget};
use smb3_csi::mount::{CcacheFile, CredentialsFile, FuseMount, MountOptions};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Args)]
#[command(after_help = "Credentials come from --credentials FILE (mount.cifs format: username=, password=, domain=), \
from the SMB_USERNAME, SMB_PASSWORD and SMB_DOMAIN environment variables, or (Kerberos) from the credential cache \
KRB5CCNAME names (FILE: caches; with -o sec=krb5 it is preferred, and read again for every renewal); never from -o. \
krb5.conf comes from KRB5_CONFIG or /etc/krb5.conf. A lost connection \
is re-established by itself; when the server then rejects the password, FILE is read again (rotate the password \
on the server and in FILE, no remount).\n\n\
Options (-o, comma-separated, repeatable): uid=, gid=, file_mode=, dir_mode=, ro, rw, port=, vers=, seal, actimeo=, \
cache=strict|loose|none, nosharesock, noexec, noperm, nobrl (locks stay on this node), mfsymlinks (symlinks as cifs' \
Minshall+French files), sec=krb5|krb5i|ntlmssp (unset: Kerberos when the server offers it and the credentials \
allow), ip=ADDR (connect there; the name in the source still makes the Kerberos principal cifs/NAME), \
echo_interval=SECS, hard (default: wait for the server as long as it \
takes), soft and retrans=N (fail with EIO after N x echo_interval without the server). Kernel-only cifs flags (noserverino, nounix, ...) are \
accepted with one warning.\n\n\
Example: smb3-csi mount --credentials /etc/smb-creds -o uid=1000,gid=1000 //fileserver/share/dir /mnt/dir")]
pub struct MountArgs {
    /// mount.cifs-style credentials file.
    #[arg(long, value_name = "FILE")]
    credentials: Option<PathBuf>,
    /// Mount options, mount.cifs style.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    #[command(flatten)]
    deadlines: super::deadlines::DeadlineArgs,
    /// Keep the FUSE takeover journal in DIR (node ids and open handles the kernel knows), so that another
    /// process holding a dup of the /dev/fuse connection can serve the mount if this one dies (queued writes
    /// are kept there with their data until the server has them).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
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
    // A file is read again when a reconnect's logon is refused (rotated password); the environment is fixed.
    let ccache = std::env::var("KRB5CCNAME").ok().filter(|n| !n.is_empty());
    let kerberos_first = opts.sec == smb3::SecurityMechanism::Kerberos;
    let (source, who): (Arc<dyn CredentialsSource>, String) = match (&args.credentials, ccache) {
        (_, Some(name)) if kerberos_first || (args.credentials.is_none() && Credentials::from_env().is_none()) => {
            let (file, creds) = CcacheFile::open(&name).map_err(|e| e.to_string())?;
            (Arc::new(file), creds.display_name())
        }
        (Some(file), _) => {
            let file = CredentialsFile::open(file).map_err(|e| e.to_string())?;
            let who = file.cached().display_name();
            (Arc::new(file), who)
        }
        (None, _) => {
            let creds = Credentials::from_env().ok_or(
                "no credentials: use --credentials FILE, set SMB_USERNAME and SMB_PASSWORD, or KRB5CCNAME for Kerberos",
            )?;
            let who = creds.display_name();
            (Arc::new(creds), who)
        }
    };
    let client_opts = opts.client_options(&args.deadlines.apply(ClientOptions::default()));
    let connect = async {
        let client = Client::connect_with_source(&target.host, target.port, source, &client_opts).await?;
        let tree = client.tree(&target.share).await?;
        Ok::<_, smb3::Error>((client, tree))
    };
    let (client, tree) = connect.await.map_err(|e| format!("connect {target} as {who}: {e}"))?;
    let soft = opts.soft_timeout(&client_opts);
    let mountpoint = args.mountpoint.clone();
    let subdir = target.path.clone();
    let state_dir = args.state_dir.clone();
    let mount = tokio::task::spawn_blocking(move || {
        FuseMount::mount_with_state(tree, &subdir, &mountpoint, &opts, state_dir.as_deref())
    })
    .await
    .map_err(|e| format!("mount thread: {e}"))?
    .map_err(|e| e.to_string())?;
    eprintln!("smb3-csi: {} mounted on {}", mount.source(), mount.mountpoint().display());

    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("installing SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("installing SIGINT handler: {e}"))?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut seen = Seen::default();
    let outcome = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = tick.tick() => {
                if !mount.is_session_running() {
                    break "unmounted";
                }
                report_connection(&client, soft, &mut seen);
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

/// What the last look at the connection found.
#[derive(Default)]
struct Seen {
    down: bool,
    reconnects: u64,
}

/// One line when the connection goes down (what the mount's users experience meanwhile) and one when it is
/// back with the reconnect count; an outage shorter than the look interval shows as the latter only.
fn report_connection(client: &Client, soft: Option<Duration>, seen: &mut Seen) {
    let reconnects = client.reconnect_count();
    match client.connection_state() {
        ConnectionState::Connected { .. } => {
            if seen.down || reconnects > seen.reconnects {
                eprintln!("smb3-csi: SMB connection re-established (reconnects so far: {reconnects})");
            }
            seen.down = false;
        }
        ConnectionState::Reconnecting { reason, .. } => {
            if !seen.down {
                let meanwhile = match soft {
                    None => "file operations wait (hard mount)".to_string(),
                    Some(t) => format!("file operations fail with EIO after {}s (soft mount)", t.as_secs()),
                };
                eprintln!("smb3-csi: SMB connection lost ({reason}); reconnecting, {meanwhile}");
            }
            seen.down = true;
        }
        ConnectionState::Failed { reason, .. } => {
            if !seen.down {
                eprintln!(
                    "smb3-csi: SMB connection closed for good ({reason}): requests fail with EIO until unmounted"
                );
            }
            seen.down = true;
        }
    }
    seen.reconnects = reconnects;
}
