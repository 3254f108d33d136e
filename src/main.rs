//! The `smb3-csi` command line.

#![forbid(unsafe_code)]

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "smb3-csi",
    version,
    about = "Kubernetes CSI driver for SMB shares, with its own SMB3 client (encryption and signing, no kernel cifs)"
)]
struct Cli {
    /// Log filter (e.g. info, debug, smb3_csi=trace); RUST_LOG overrides it. Default: from --v, else warn.
    #[arg(long, global = true, env = "SMB3_CSI_LOG_LEVEL")]
    log_level: Option<String>,
    /// klog verbosity, for manifests written for csi-driver-smb (`--v=5`): 0-2 info, 3-5 debug, 6 and
    /// more trace. --log-level wins when both are given.
    #[arg(long = "v", global = true, value_name = "N")]
    verbosity: Option<u8>,
    /// Log format: text or json.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Debug client: talk to an SMB share directly (info, ls, get, put, ...).
    Smb(cli::smb::SmbArgs),
    /// Serve the CSI Identity and Controller services (the provisioner side).
    Controller(cli::serve::ServeArgs),
    /// Serve the CSI services of a node (Identity + Node).
    Node(cli::serve::ServeArgs),
    /// Serve every CSI service on one socket.
    All(cli::serve::ServeArgs),
    /// Mount a share through FUSE and serve it until unmounted or signalled (a userspace mount.cifs).
    Mount(cli::mount::MountArgs),
    /// Run the whole story locally as root: private Samba, `smb3-csi all`, provision, stage, publish, write,
    /// read back through smbclient, then tear everything down. Built with the `demo` feature only.
    #[cfg(feature = "demo")]
    Demo(cli::demo::DemoArgs),
    /// Register the node plugin with the kubelet (plugin registration API v1).
    Registrar(cli::registrar::RegistrarArgs),
    /// Hold the node's live FUSE connections across node plugin restarts and upgrades.
    Keeper(cli::keeper::KeeperArgs),
}

impl Cli {
    /// The tracing filter: `--log-level`, else the level `--v` maps to, else `warn`.
    fn log_filter(&self) -> String {
        match (&self.log_level, self.verbosity) {
            (Some(level), _) => level.clone(),
            (None, Some(0..=2)) => "info".into(),
            (None, Some(3..=5)) => "debug".into(),
            (None, Some(_)) => "trace".into(),
            (None, None) => "warn".into(),
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cli::init_logging(&cli.log_filter(), &cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("smb3-csi: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Smb(args) => cli::smb::run(args).await,
            Command::Controller(args) => {
                cli::serve::run(cli::serve::Role::Controller, args).await.map_err(|e| e.to_string())
            }
            Command::Node(args) => cli::serve::run(cli::serve::Role::Node, args).await.map_err(|e| e.to_string()),
            Command::Registrar(args) => cli::registrar::run(args).await,
            Command::All(args) => cli::serve::run(cli::serve::Role::All, args).await.map_err(|e| e.to_string()),
            Command::Mount(args) => cli::mount::run(args).await,
            Command::Keeper(args) => cli::keeper::run(args).await,
            #[cfg(feature = "demo")]
            Command::Demo(args) => cli::demo::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smb3-csi: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// The flags of csi-driver-smb's controller and node manifests, on every serving subcommand.
    #[test]
    fn csi_driver_smb_flags_are_accepted() {
        for role in ["controller", "node", "all"] {
            let cli = parse(&[
                "smb3-csi",
                role,
                "--v=5",
                "--endpoint=unix:///csi/csi.sock",
                "--nodeid=worker-1",
                "--drivername=smb.csi.k8s.io",
            ]);
            let args = match &cli.command {
                Command::Controller(a) | Command::Node(a) | Command::All(a) => a,
                _ => panic!("{role}: parsed as another subcommand"),
            };
            assert_eq!(args.endpoint(), "unix:///csi/csi.sock");
            assert_eq!(args.node_id(), Some("worker-1"));
            assert_eq!(args.driver_name(), "smb.csi.k8s.io");
            assert_eq!(cli.log_filter(), "debug", "{role}");
        }
        // The separate-value forms too.
        let cli = parse(&["smb3-csi", "node", "--nodeid", "n2", "--drivername", "d.example", "--v", "2"]);
        let Command::Node(args) = &cli.command else { panic!("not node") };
        assert_eq!((args.node_id(), args.driver_name()), (Some("n2"), "d.example"));
        assert_eq!(cli.log_filter(), "info");
    }

    #[test]
    fn klog_verbosity_maps_to_levels_and_log_level_wins() {
        for (v, level) in
            [("0", "info"), ("2", "info"), ("3", "debug"), ("5", "debug"), ("6", "trace"), ("10", "trace")]
        {
            assert_eq!(parse(&["smb3-csi", "controller", &format!("--v={v}")]).log_filter(), level, "--v={v}");
        }
        // Before the subcommand as well (klog flags are global).
        assert_eq!(parse(&["smb3-csi", "--v=6", "controller"]).log_filter(), "trace");
        let both = parse(&["smb3-csi", "controller", "--v=6", "--log-level=smb3_csi=info"]);
        assert_eq!(both.log_filter(), "smb3_csi=info");
        assert!(Cli::try_parse_from(["smb3-csi", "controller", "--v=high"]).is_err());
        assert!(Cli::try_parse_from(["smb3-csi", "controller", "--v=-1"]).is_err());
    }

    #[test]
    fn default_level_is_warn() {
        if std::env::var_os("SMB3_CSI_LOG_LEVEL").is_none() {
            assert_eq!(parse(&["smb3-csi", "controller"]).log_filter(), "warn");
        }
    }
}
