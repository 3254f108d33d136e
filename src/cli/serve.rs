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

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};

use smb3::{ClientOptions, EncryptionPolicy, ObserverHandle, SessionPool};
use smb3_csi::csi::node::{KeeperConfig, KeeperSpawn, NodeConfig, NodeService, RestartConfig, StateError};
use smb3_csi::csi::{serve, ControllerService, Endpoint, IdentityService, Services};
use smb3_csi::keeper::handover::{self, HandoverListener};
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
    /// Deadline for connecting to an SMB server and logging on (TCP, NEGOTIATE, SESSION_SETUP), in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    smb_connect_timeout_secs: u64,
    /// Ceiling for an SMB request the server keeps answering STATUS_PENDING, in seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86400))]
    smb_pending_timeout_secs: u64,
    /// The kubelet's root directory (its --root-dir): node staging and target paths outside it are refused.
    #[arg(long, env = "KUBELET_DIR", default_value = smb3_csi::csi::node::DEFAULT_KUBELET_DIR)]
    kubelet_dir: PathBuf,
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
    /// Node roles: where stages and publishes are recorded (no secrets) so a restarted or upgraded plugin
    /// knows them. Default: `state` next to the CSI socket (the kubelet's plugin directory).
    #[arg(long, env = "STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Node roles: the keeper holding the mounts' FUSE connections across restarts.
    /// Default: `<state-dir>/keeper/keeper.sock`.
    #[arg(long, env = "KEEPER_SOCKET")]
    keeper_socket: Option<PathBuf>,
    /// Start a keeper (`smb3-csi keeper`, in its own process group) when none answers. The chart runs it
    /// as its own container instead and sets this to false.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    keeper_spawn: bool,
    /// A keeper started by the plugin exits after this many seconds holding no mount.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    keeper_idle_secs: u64,
    /// Node roles: keep no state and no keeper (mounts end with the process, as before).
    #[arg(long)]
    no_restart_survival: bool,
    /// After handing its mounts to a newer process, wait for SIGTERM instead of exiting (a container that
    /// exits is restarted, and would take the mounts back).
    #[arg(long)]
    linger_after_handover: bool,
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
    #[error(transparent)]
    State(#[from] StateError),
    #[error("taking over from the running plugin: {0}")]
    Handover(#[from] handover::HandoverError),
}

/// Builds the services for `role` (and hands back the Node service, which outlives serving).
fn services(
    role: Role,
    args: &ServeArgs,
    ready: Arc<AtomicBool>,
    restart: Option<RestartConfig>,
) -> Result<(Services, Option<NodeService>), ServeCliError> {
    let identity = IdentityService::new(&args.driver_name, role.serves_controller(), ready)?;
    let mut services = Services::new().with_identity(identity);
    if role.serves_controller() {
        services = services.with_controller(ControllerService::new(session_pool(args)));
    }
    let mut node = None;
    if role.serves_node() {
        let node_id = args.node_id.as_deref().filter(|id| !id.trim().is_empty());
        let node_id = node_id.ok_or(ServeCliError::MissingNodeId(role))?;
        let service = node_service(node_id, args, restart)?;
        services = services.with_node(service.clone());
        node = Some(service);
    }
    Ok((services, node))
}

/// The Node service with its own session pool (volumes of one node share sessions among themselves).
fn node_service(node_id: &str, args: &ServeArgs, restart: Option<RestartConfig>) -> Result<NodeService, StateError> {
    let config = NodeConfig {
        node_id: node_id.to_string(),
        kubeconfig: args.kubeconfig.clone(),
        driver_name: args.driver_name.clone(),
        kubelet_dir: args.kubelet_dir.clone(),
    };
    let node = match restart {
        Some(restart) => NodeService::with_restart(config, session_pool(args), restart)?,
        None => NodeService::new(config, session_pool(args)),
    };
    node.spawn_connection_watch(CONNECTION_WATCH_EVERY);
    Ok(node)
}

/// The handover socket in the state directory (one per node: old and new plugin share the directory).
const HANDOVER_SOCKET: &str = "handover.sock";

/// Restart survival for the node roles, from the flags (`None` with --no-restart-survival).
fn restart_config(args: &ServeArgs, endpoint: &Endpoint) -> Option<RestartConfig> {
    if args.no_restart_survival {
        return None;
    }
    let state_dir = args.state_dir.clone().unwrap_or_else(|| {
        endpoint.socket_path().parent().map_or_else(|| PathBuf::from("state"), |dir| dir.join("state"))
    });
    let socket = args.keeper_socket.clone().unwrap_or_else(|| state_dir.join("keeper/keeper.sock"));
    let spawn = match (args.keeper_spawn, std::env::current_exe()) {
        (true, Ok(exe)) => Some(KeeperSpawn {
            exe,
            idle: Duration::from_secs(args.keeper_idle_secs),
            log: state_dir.join("keeper.log"),
        }),
        (true, Err(e)) => {
            tracing::warn!(error = %e, "cannot find this binary to start a keeper");
            None
        }
        (false, _) => None,
    };
    Some(RestartConfig { state_dir, keeper: Some(KeeperConfig { socket, spawn }) })
}

/// How often the node looks at its volumes' SMB connections for the metrics (a look reads a few fields).
const CONNECTION_WATCH_EVERY: Duration = Duration::from_secs(1);

/// How often the node pings its keeper to notice that it restarted (a ping is one short local exchange);
/// the window in which a plugin crash right after a keeper restart would end mounts.
const KEEPER_WATCH_EVERY: Duration = Duration::from_millis(500);

/// A session pool with the plugin's SMB settings, reporting to the process's metrics.
fn session_pool(args: &ServeArgs) -> SessionPool {
    let options = ClientOptions {
        encryption: args.smb_encryption,
        timeout: Duration::from_secs(args.smb_timeout_secs),
        connect_timeout: Duration::from_secs(args.smb_connect_timeout_secs),
        pending_timeout: Duration::from_secs(args.smb_pending_timeout_secs),
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
    let restart = if role.serves_node() { restart_config(&args, &endpoint) } else { None };
    // A running predecessor hands its mounts over before anything here binds a socket.
    let handover_socket = restart.as_ref().map(|r| r.state_dir.join(HANDOVER_SOCKET));
    if let Some(socket) = handover_socket.clone() {
        if let Some(dir) = socket.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let started = std::time::Instant::now();
        let answer = tokio::task::spawn_blocking(move || handover::request(&socket))
            .await
            .map_err(|e| handover::HandoverError::Io { socket: PathBuf::new(), source: std::io::Error::other(e) })?;
        if let Some(mounts) = answer? {
            tracing::info!(mounts, millis = started.elapsed().as_millis() as u64, "the previous plugin handed over");
        }
    }
    let (services, node) = services(role, &args, ready.clone(), restart)?;
    if let Some(node) = &node {
        let report = node.recover().await;
        tracing::info!(staged = ?report.staged, published = ?report.published, "recovered the node's volumes");
        node.spawn_keeper_watch(KEEPER_WATCH_EVERY);
    }
    let mut listener = match &handover_socket {
        Some(socket) => Some(HandoverListener::bind(socket)?),
        None => None,
    };
    let handed_over = Arc::new(AtomicBool::new(false));
    let signal = shutdown_signal()?;
    let asked = listener.as_mut().map(|l| l.asked());
    let flag = handed_over.clone();
    let shutdown = async move {
        match asked {
            Some(asked) => tokio::select! {
                _ = signal => {}
                _ = asked => flag.store(true, Ordering::SeqCst),
            },
            None => signal.await,
        }
    };
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
    // Mounts outlive this process: detached, their connections stay with the keeper for the next one.
    if let Some(node) = &node {
        let detached = node.detach_all().await;
        if let Some(listener) = listener {
            listener.confirm(detached as u32);
        }
    }
    // Metrics stay scrapeable while in-flight RPCs drain, and stop with them.
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    result?;
    if handed_over.load(Ordering::SeqCst) && args.linger_after_handover {
        tracing::info!("handed over to a newer plugin: waiting for SIGTERM");
        shutdown_signal()?.await;
    }
    Ok(())
}
