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
    /// Log filter (e.g. info, debug, smb3_csi=trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "warn", env = "SMB3_CSI_LOG_LEVEL")]
    log_level: String,
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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cli::init_logging(&cli.log_level, &cli.log_format);
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
