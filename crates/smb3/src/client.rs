//! The connected `Client`: connect, negotiate and authenticate, then open
//! trees. It sits at the top of the crate's layering (only `pool`, a cache of
//! clients, builds on it): where to connect lives in `target`, how and as
//! whom in `options`, so `conn`, `session` and `tree` never import from here.

use std::sync::Arc;

use super::conn::Outgoing;
use super::error::{Error, Result};
use super::link::Link;
use super::options::{ClientOptions, Credentials};
use super::recovery::{ConnectionState, CredentialsSource};
use super::session::SessionInfo;
use super::target::ShareTarget;
use super::tree::Tree;
use super::wire::simple::EchoRequest;
use super::wire::Command;

/// An authenticated SMB session. Cheap to clone; all clones share one
/// connection and session, and many requests can be in flight at once.
/// A lost connection is replaced behind it (see [`ClientOptions::recovery`]).
#[derive(Clone)]
pub struct Client {
    pub(crate) link: Arc<Link>,
}

impl Client {
    /// Connects, negotiates and authenticates.
    pub async fn connect(host: &str, port: u16, creds: &Credentials, opts: &ClientOptions) -> Result<Client> {
        Client::connect_with_source(host, port, Arc::new(creds.clone()), opts).await
    }

    /// As [`connect`](Self::connect), taking the credentials of every new
    /// session (the first and each reconnect) from `source`.
    pub async fn connect_with_source(
        host: &str,
        port: u16,
        source: Arc<dyn CredentialsSource>,
        opts: &ClientOptions,
    ) -> Result<Client> {
        Ok(Client { link: Link::connect(host, port, source, opts).await? })
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

    /// The first session's facts (a reconnect is never weaker than them).
    pub fn info(&self) -> &SessionInfo {
        &self.link.first
    }

    /// Traffic counters of the current connection.
    pub fn connection_stats(&self) -> super::conn::ConnectionStats {
        self.link.current().map(|(s, _)| s.conn.stats()).unwrap_or_default()
    }

    /// Whether the connection is up right now (false while reconnecting).
    pub fn is_alive(&self) -> bool {
        self.link.current().is_some_and(|(s, _)| s.conn.is_alive())
    }

    /// Whether the client can still be used: connected or reconnecting,
    /// not logged off or closed after tampering.
    pub fn is_usable(&self) -> bool {
        !matches!(self.link.state(), ConnectionState::Failed { .. })
    }

    /// Connected, reconnecting (why, since when) or failed for good.
    pub fn connection_state(&self) -> ConnectionState {
        self.link.state()
    }

    /// How many times the connection was re-established.
    pub fn reconnect_count(&self) -> u64 {
        self.link.reconnect_count()
    }

    /// How many times a session was re-authenticated in place (Kerberos
    /// ticket renewals, and sessions the server expired).
    pub fn reauth_count(&self) -> u64 {
        self.link.reauth_count()
    }

    /// When the Kerberos ticket of the current session ends (`None` for NTLM
    /// or while reconnecting).
    pub fn ticket_end(&self) -> Option<std::time::SystemTime> {
        self.link.current().and_then(|(s, _)| s.ticket_end())
    }

    /// Re-authenticates the current session in place now (as a renewal does).
    pub async fn reauthenticate(&self) -> Result<()> {
        let (session, _) = self
            .link
            .current()
            .ok_or_else(|| Error::Disconnected { addr: self.link.addr().to_string(), why: "reconnecting".into() })?;
        self.link.reauthenticate(&session).await
    }

    /// Drops the current connection as if the network had failed (the
    /// client reconnects). For tests and for an operator's "reconnect now".
    pub fn force_reconnect(&self, why: &str) {
        if let Some((s, _)) = self.link.current() {
            s.conn.abort(why.to_string());
        }
    }

    /// TREE_CONNECT to `share` on this session's server.
    pub async fn tree(&self, share: &str) -> Result<Tree> {
        Tree::connect(self.link.clone(), share).await
    }

    /// ECHO: a cheap liveness check of the current connection and session.
    pub async fn echo(&self) -> Result<()> {
        let (session, _) = self
            .link
            .current()
            .ok_or_else(|| Error::Disconnected { addr: self.link.addr().to_string(), why: "reconnecting".into() })?;
        let out = Outgoing::new(Command::Echo, 0, 0, |m| EchoRequest.encode(m));
        session.request(out, false).await?.ok(|| "echo".into()).map(|_| ())
    }

    /// LOGOFF, and no more reconnects. The connection closes when the last clone is dropped.
    pub async fn logoff(&self) -> Result<()> {
        let current = self.link.current();
        self.link.close("logged off");
        match current {
            Some((session, _)) => session.logoff().await,
            None => Ok(()),
        }
    }
}
