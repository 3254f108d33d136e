//! The connected `Client`: connect, negotiate and authenticate, then open
//! trees. It sits at the top of the crate's layering (only `pool`, a cache of
//! clients, builds on it): where to connect lives in `target`, how and as
//! whom in `options`, so `conn`, `session` and `tree` never import from here.

use std::sync::Arc;

use super::conn::{Connection, Framing, Outgoing};
use super::error::Result;
use super::options::{ClientOptions, Credentials};
use super::session::{negotiate, Session, SessionInfo};
use super::target::{ShareTarget, NETBIOS_PORT};
use super::tree::Tree;
use super::wire::simple::EchoRequest;
use super::wire::Command;

/// An authenticated SMB session. Cheap to clone; all clones share one
/// connection and session, and many requests can be in flight at once.
#[derive(Clone)]
pub struct Client {
    pub(crate) session: Arc<Session>,
}

impl Client {
    /// Connects, negotiates and authenticates.
    pub async fn connect(host: &str, port: u16, creds: &Credentials, opts: &ClientOptions) -> Result<Client> {
        let framing = opts.framing.unwrap_or(if port == NETBIOS_PORT { Framing::Netbios } else { Framing::Direct });
        let conn = Arc::new(Connection::open(host, port, framing, opts.timeout, opts.observer.clone()).await?);
        let negotiated = negotiate(&conn, opts).await?;
        let session = Session::establish(conn, negotiated, host, creds, opts).await?;
        Ok(Client { session: Arc::new(session) })
    }

    /// Connects and opens the target's share in one step.
    pub async fn connect_share(
        target: &ShareTarget,
        creds: &Credentials,
        opts: &ClientOptions,
    ) -> Result<(Client, Tree)> {
        let client = Client::connect(&target.host, target.port, creds, opts).await?;
        let tree = client.tree(&target.share).await?;
        Ok((client, tree))
    }

    pub fn info(&self) -> &SessionInfo {
        &self.session.info
    }

    /// Traffic counters of the underlying connection.
    pub fn connection_stats(&self) -> super::conn::ConnectionStats {
        self.session.conn.stats()
    }

    /// Whether the connection is still up.
    pub fn is_alive(&self) -> bool {
        self.session.conn.is_alive()
    }

    /// TREE_CONNECT to `share` on this session's server.
    pub async fn tree(&self, share: &str) -> Result<Tree> {
        Tree::connect(self.session.clone(), share).await
    }

    /// ECHO: a cheap liveness check of connection and session.
    pub async fn echo(&self) -> Result<()> {
        let out = Outgoing::new(Command::Echo, 0, 0, |m| EchoRequest.encode(m));
        self.session.request(out, false).await?.ok(|| "echo".into()).map(|_| ())
    }

    /// LOGOFF. The connection closes when the last clone is dropped.
    pub async fn logoff(&self) -> Result<()> {
        self.session.logoff().await
    }
}
