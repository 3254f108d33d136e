//! `smb3-csi controller|node|all`: run the CSI plugin on a unix socket until
//! SIGTERM or SIGINT, then let in-flight RPCs finish and remove the socket.
//!
//! - `controller`: Identity + Controller (the Deployment next to
//!   external-provisioner and external-resizer).
//! - `node`: Identity + Node (the DaemonSet next to
//!   node-driver-registrar).
//! - `all`: every service on one socket (single-binary setups, tests).
//!
//! With `--metrics-address`, Prometheus metrics are served on `/metrics`
//! (and a liveness answer on `/healthz`) over plain HTTP at that address.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};

use smb3::{ClientOptions, EncryptionPolicy, ObserverHandle, SessionPool};
use smb3_csi::csi::node::{NodeConfig, NodeService};
use smb3_csi::csi::{serve, ControllerService, Endpoint, IdentityService, Services};
use smb3_csi::metrics::{Metrics, MetricsAddress, MetricsServer};

/// Which CSI services this process serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Controller,
    Node,
    All,
}

impl Role {
    fn serves_controller(self) -> bool {
        matches!(self, Role::Controller | Role::All)
    }

    fn serves_node(self) -> bool {
        matches!(self, Role::Node | Role::All)
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// CSI endpoint: unix:///path/to/csi.sock (or an absolute path).
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// This node's id (NodeGetInfo); required by the node role. `--nodeid` is csi-driver-smb's spelling.
    #[arg(long, env = "NODE_ID", visible_alias = "nodeid")]
    node_id: Option<String>,
    /// Driver name reported by GetPluginInfo (the StorageClass `provisioner`). `--drivername` is
    /// csi-driver-smb's spelling.
    #[arg(long, env = "DRIVER_NAME", default_value = "smb3.csi.dev", visible_alias = "drivername")]
    driver_name: String,
    /// SMB encryption: required, if-supported or off (sign only).
    #[arg(long, default_value = "required", value_parser = parse_encryption)]
    smb_encryption: EncryptionPolicy,
    /// Per-request SMB timeout, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    smb_timeout_secs: u64,
    /// Pooled SMB sessions unused for this many seconds are closed.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86400))]
    session_idle_secs: u64,
    /// Serve Prometheus /metrics and /healthz over HTTP on [HOST]:PORT
    /// (e.g. :29744 for every interface, 127.0.0.1:9808); off when unset.
    #[arg(long, env = "METRICS_ADDRESS")]
    metrics_address: Option<MetricsAddress>,
    /// Kubeconfig for reading the Secrets of inline volumes and, after a password rotation, the Secrets named
    /// by the PVs of staged volumes (default: in-cluster config).
    #[arg(long)]
    kubeconfig: Option<std::path::PathBuf>,
}

/// Read by the parsing tests of `main.rs`.
#[cfg(test)]
impl ServeArgs {
    /// The CSI endpoint as given.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The node id, if given.
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    /// The driver name GetPluginInfo reports.
    pub fn driver_name(&self) -> &str {
        &self.driver_name
    }
}

fn parse_encryption(s: &str) -> Result<EncryptionPolicy, String> {
    s.parse()
}

/// Why the plugin could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeCliError {
    #[error(transparent)]
    Endpoint(#[from] smb3_csi::csi::EndpointError),
    #[error("--driver-name: {0}")]
    DriverName(#[from] smb3_csi::csi::identity::DriverNameError),
    #[error("--node-id (or NODE_ID) is required for the {0:?} role")]
    MissingNodeId(Role),
    #[error("installing the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("--metrics-address {address}: {source}")]
    Metrics {
        address: MetricsAddress,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Serve(#[from] smb3_csi::csi::ServeError),
}

/// Builds the services for `role`. Adding the Node service is one
/// `with_node` line in the `serves_node` branch.
fn services(role: Role, args: &ServeArgs, ready: Arc<AtomicBool>) -> Result<Services, ServeCliError> {
    let identity = IdentityService::new(&args.driver_name, role.serves_controller(), ready)?;
    let mut services = Services::new().with_identity(identity);
    if role.serves_controller() {
        services = services.with_controller(ControllerService::new(session_pool(args)));
    }
    if role.serves_node() {
        let node_id = args.node_id.as_deref().filter(|id| !id.trim().is_empty());
        let node_id = node_id.ok_or(ServeCliError::MissingNodeId(role))?;
        services = services.with_node(node_service(node_id, args));
    }
    Ok(services)
}

/// The Node service with its own session pool (volumes of one node share sessions among themselves).
fn node_service(node_id: &str, args: &ServeArgs) -> NodeService {
    let node = NodeService::new(
        NodeConfig {
            node_id: node_id.to_string(),
            kubeconfig: args.kubeconfig.clone(),
            driver_name: args.driver_name.clone(),
        },
        session_pool(args),
    );
    node.spawn_connection_watch(CONNECTION_WATCH_EVERY);
    node
}

/// How often the node looks at its volumes' SMB connections for the metrics (a look reads a few fields).
const CONNECTION_WATCH_EVERY: Duration = Duration::from_secs(1);

/// A session pool with the plugin's SMB settings, reporting to the process's metrics.
fn session_pool(args: &ServeArgs) -> SessionPool {
    let options = ClientOptions {
        encryption: args.smb_encryption,
        timeout: Duration::from_secs(args.smb_timeout_secs),
        observer: ObserverHandle::new(Arc::new(Metrics::global())),
        ..ClientOptions::default()
    };
    let idle = Duration::from_secs(args.session_idle_secs);
    let pool = SessionPool::new(options, idle);
    pool.spawn_evictor((idle / 4).max(Duration::from_secs(1)));
    pool
}

/// Resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, ServeCliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term =
        signal(SignalKind::terminate()).map_err(|source| ServeCliError::Signal { signal: "SIGTERM", source })?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|source| ServeCliError::Signal { signal: "SIGINT", source })?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down: finishing in-flight RPCs");
    })
}

pub async fn run(role: Role, args: ServeArgs) -> Result<(), ServeCliError> {
    let endpoint = Endpoint::parse(&args.endpoint)?;
    let ready = Arc::new(AtomicBool::new(true));
    let services = services(role, &args, ready.clone())?;
    let shutdown = shutdown_signal()?;
    // Bound before serving CSI, so a taken port fails the start instead of going unnoticed.
    let metrics = match args.metrics_address {
        Some(address) => {
            let server = MetricsServer::bind(address, Metrics::global(), ready)
                .await
                .map_err(|source| ServeCliError::Metrics { address, source })?;
            let local = server.local_addr().map_or_else(|_| address.to_string(), |a| a.to_string());
            tracing::info!(address = %local, "serving /metrics and /healthz");
            Some(tokio::spawn(server.run(std::future::pending())))
        }
        None => None,
    };
    tracing::info!(?role, driver = %args.driver_name, %endpoint, version = env!("CARGO_PKG_VERSION"), "starting");
    let result = serve(&endpoint, services, shutdown).await;
    // Metrics stay scrapeable while in-flight RPCs drain, and stop with them.
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    result?;
    Ok(())
}
