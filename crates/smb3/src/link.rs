//! A session that outlives its connections. The `Link` owns the current
//! (connection, session) pair and a generation number; trees and open files
//! register with it and hold *bindings* (tree id, file id) tagged with the
//! generation they belong to. A supervisor task watches the connection:
//! it sends ECHO when idle, acknowledges lease breaks, and when the
//! connection dies it reconnects with backoff, re-binds every registered
//! tree and open, and only then publishes the new generation. Callers whose
//! requests failed with a lost connection wait for that and send again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use rand::{Rng, RngCore};
use tokio::sync::{mpsc, watch};

use crate::conn::{Connection, Death, Framing, Outgoing};
use crate::error::{Error, Result};
use crate::file::OpenInner;
use crate::options::ClientOptions;
use crate::recovery::{check_not_weaker, credentials_rejected, ConnectionState, CredentialsSource, Recovery};
use crate::session::{negotiate, Session, SessionInfo};
use crate::target::{HostPort, NETBIOS_PORT};
use crate::tree::TreeInner;
use crate::wire::durable::{LeaseBreakAck, LeaseBreakNotification};
use crate::wire::simple::EchoRequest;
use crate::wire::Command;

/// How long DH2C is retried after a quick reconnect (see `reconnect_once`).
const RECLAIM_GRACE: Duration = Duration::from_secs(2);
const RECLAIM_RETRY: Duration = Duration::from_millis(200);

/// Where the link is, as its waiters see it.
#[derive(Clone)]
enum Phase {
    Up { session: Arc<Session>, generation: u64 },
    Down { reason: String },
    Failed { why: String },
}

/// Trees and opens to re-bind after a reconnect (weak: a dropped handle
/// is simply skipped).
#[derive(Default)]
struct Registry {
    trees: Vec<Weak<TreeInner>>,
    opens: Vec<Weak<OpenInner>>,
}

pub(crate) struct Link {
    pub host: String,
    pub port: u16,
    pub opts: ClientOptions,
    creds: Arc<dyn CredentialsSource>,
    /// Kept across connections: servers let only the same client reclaim
    /// a leased durable open.
    client_guid: [u8; 16],
    /// The first session's facts; reconnects may not be weaker.
    pub first: SessionInfo,
    phase: watch::Sender<Phase>,
    /// Shared by whoever creates a tree or an open (so that it is
    /// registered before a recovery pass looks), exclusive for a recovery pass.
    pub gate: tokio::sync::RwLock<()>,
    registry: Mutex<Registry>,
    state: Mutex<ConnectionState>,
    reconnects: AtomicU64,
    /// Sessions re-authenticated in place (ticket renewals, expiries healed).
    reauths: AtomicU64,
    /// Dropped with the link, which stops the supervisor.
    _stop: watch::Sender<()>,
}

impl Link {
    /// Connects, authenticates and starts the supervisor.
    pub async fn connect(
        host: &str,
        port: u16,
        creds: Arc<dyn CredentialsSource>,
        opts: &ClientOptions,
    ) -> Result<Arc<Link>> {
        let mut client_guid = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut client_guid);
        let session = Arc::new(establish(host, port, &*creds, opts, client_guid).await?);
        let (stop, stop_rx) = watch::channel(());
        let link = Arc::new(Link {
            host: host.to_string(),
            port,
            opts: opts.clone(),
            creds,
            client_guid,
            first: session.info.clone(),
            phase: watch::channel(Phase::Up { session, generation: 0 }).0,
            gate: tokio::sync::RwLock::new(()),
            registry: Mutex::new(Registry::default()),
            state: Mutex::new(ConnectionState::Connected { since: SystemTime::now() }),
            reconnects: AtomicU64::new(0),
            reauths: AtomicU64::new(0),
            _stop: stop,
        });
        tokio::spawn(supervise(Arc::downgrade(&link), stop_rx));
        Ok(link)
    }

    pub fn addr(&self) -> &str {
        &self.first.server
    }

    pub fn state(&self) -> ConnectionState {
        self.state.lock().unwrap().clone()
    }

    pub fn reconnect_count(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// The current session if the link is up (no waiting).
    pub fn current(&self) -> Option<(Arc<Session>, u64)> {
        match &*self.phase.borrow() {
            Phase::Up { session, generation } => Some((session.clone(), *generation)),
            _ => None,
        }
    }

    /// Waits until the link is up with a generation newer than `after`.
    /// `deadline` is the soft-recovery deadline of the caller's operation,
    /// set on its first wait and kept across its retries.
    pub async fn up(&self, after: Option<u64>, deadline: &mut Option<Instant>) -> Result<(Arc<Session>, u64)> {
        let mut rx = self.phase.subscribe();
        loop {
            let reason = match &*rx.borrow_and_update() {
                Phase::Up { session, generation } if after.is_none_or(|a| *generation > a) => {
                    return Ok((session.clone(), *generation))
                }
                Phase::Up { .. } => "connection lost".to_string(),
                Phase::Down { reason } => reason.clone(),
                Phase::Failed { why } => return Err(Error::Closed { addr: self.addr().to_string(), why: why.clone() }),
            };
            match self.opts.recovery {
                Recovery::Hard => {
                    if rx.changed().await.is_err() {
                        return Err(Error::Closed { addr: self.addr().to_string(), why: "client dropped".into() });
                    }
                }
                Recovery::Soft { timeout } => {
                    let at = *deadline.get_or_insert_with(|| Instant::now() + timeout);
                    match tokio::time::timeout_at(at.into(), rx.changed()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => {
                            return Err(Error::Closed { addr: self.addr().to_string(), why: "client dropped".into() })
                        }
                        Err(_) => {
                            return Err(Error::Unavailable {
                                op: "waiting for the connection".into(),
                                addr: self.addr().to_string(),
                                secs: timeout.as_secs(),
                                why: reason,
                            })
                        }
                    }
                }
            }
        }
    }

    /// Reports that a request of `generation` found its connection gone:
    /// makes sure the connection is marked dead (the supervisor takes it
    /// from there). Returns the generation to wait past.
    pub fn lost(&self, session: &Session, generation: u64, why: &str) -> u64 {
        session.conn.abort(why.to_string());
        generation
    }

    /// What to do when the server answered a request of `generation` with a
    /// status saying the session is gone (`recovery::is_session_loss`).
    /// STATUS_NETWORK_SESSION_EXPIRED (the Kerberos ticket ended) is healed
    /// in place: the session is re-authenticated with fresh credentials and
    /// the request is sent again on it (`None`: no generation to wait past),
    /// with every handle kept. Anything else, or a failed re-authentication,
    /// is handled as a lost connection (returns the generation to wait past).
    pub async fn after_session_status(
        &self,
        session: &Arc<Session>,
        generation: u64,
        status: crate::wire::NtStatus,
    ) -> Option<u64> {
        if status == crate::wire::NtStatus::NETWORK_SESSION_EXPIRED {
            match self.reauthenticate(session).await {
                Ok(()) => return None,
                Err(e) => tracing::warn!(server = %self.addr(), error = %e, "re-authentication failed; reconnecting"),
            }
        }
        Some(self.lost(session, generation, &format!("server dropped the session ({status})")))
    }

    /// Re-authenticates `session` in place with the current credentials; when
    /// they are refused (or a ccache's tickets ended), once more with the ones
    /// the source fetches again (a rotated password or a fresh ccache Secret).
    pub async fn reauthenticate(&self, session: &Session) -> Result<()> {
        let creds = self.creds.current().await?;
        let result = match session.reauthenticate(&creds, &self.opts).await {
            Err(e) if credentials_rejected(&e) => {
                let fresh = self.creds.refresh().await?;
                if fresh == creds {
                    Err(e)
                } else {
                    session.reauthenticate(&fresh, &self.opts).await
                }
            }
            r => r,
        };
        if result.is_ok() {
            self.reauths.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    pub fn reauth_count(&self) -> u64 {
        self.reauths.load(Ordering::Relaxed)
    }

    /// Ends the link for good (logoff): no more reconnects.
    pub fn close(&self, why: &str) {
        self.phase.send_replace(Phase::Failed { why: why.to_string() });
        *self.state.lock().unwrap() = ConnectionState::Failed { reason: why.to_string(), since: SystemTime::now() };
    }

    pub fn register_tree(&self, tree: &Arc<TreeInner>) {
        let mut r = self.registry.lock().unwrap();
        r.trees.retain(|t| t.strong_count() > 0);
        r.trees.push(Arc::downgrade(tree));
    }

    pub fn register_open(&self, open: &Arc<OpenInner>) {
        let mut r = self.registry.lock().unwrap();
        r.opens.retain(|o| o.strong_count() > 0);
        r.opens.push(Arc::downgrade(open));
    }

    fn live(&self) -> (Vec<Arc<TreeInner>>, Vec<Arc<OpenInner>>) {
        let r = self.registry.lock().unwrap();
        (r.trees.iter().filter_map(Weak::upgrade).collect(), r.opens.iter().filter_map(Weak::upgrade).collect())
    }

    /// One reconnect attempt: a new connection and session, every live tree
    /// connected again, every live open reclaimed or reopened, then the new
    /// generation published. `quick`: the first attempt after the loss. A lost connection midway fails the attempt;
    /// a tree or open that cannot come back is marked lost on its own.
    async fn reconnect_once(&self, generation: u64, quick: bool) -> Result<()> {
        let _exclusive = self.gate.write().await;
        let session = Arc::new(establish(&self.host, self.port, &*self.creds, &self.opts, self.client_guid).await?);
        check_not_weaker(&self.first, &session.info)
            .map_err(|why| Error::EncryptionUnavailable(format!("reconnect refused: {why}")))?;
        if session.info.dialect.is_smb3() {
            session.channel_sequence.store(generation as u16, Ordering::Relaxed);
        }
        let (trees, opens) = self.live();
        for tree in &trees {
            tree.rebind(&session, generation).await?;
        }
        // Durable opens first. Samba answers DH2C with "not found" until the
        // process that served the lost connection has noticed the loss, so
        // after a quick reconnect (the server never went away) the ones not
        // reclaimed are tried again for a short while; after a server restart
        // (connections were refused first) their state is gone anyway.
        let grace_until = Instant::now() + if quick { RECLAIM_GRACE } else { Duration::ZERO };
        let (mut pending, mut reopen): (Vec<_>, Vec<_>) = opens.iter().cloned().partition(|o| o.is_reclaimable());
        while !pending.is_empty() {
            let mut again = Vec::new();
            for open in pending {
                if !open.reclaim(&session, generation).await? {
                    again.push(open);
                }
            }
            pending = again;
            if Instant::now() >= grace_until {
                reopen.append(&mut pending);
            } else if !pending.is_empty() {
                tokio::time::sleep(RECLAIM_RETRY).await;
            }
        }
        let reopened = reopen.len();
        for open in reopen {
            open.reopen(&session, generation).await?;
        }
        tracing::debug!(server = %self.addr(), trees = trees.len(), opens = opens.len(), reopened, "re-bound after reconnect");
        self.phase.send_replace(Phase::Up { session, generation });
        Ok(())
    }

    fn open_for_lease(&self, key: &[u8; 16]) -> Option<Arc<OpenInner>> {
        self.live().1.into_iter().find(|o| o.lease_key() == Some(*key))
    }
}

/// Connect, NEGOTIATE and SESSION_SETUP within `connect_timeout`; a logon
/// or password-expired failure asks the credentials source for fresh
/// credentials and tries once more (within the same deadline).
async fn establish(
    host: &str,
    port: u16,
    creds: &dyn CredentialsSource,
    opts: &ClientOptions,
    client_guid: [u8; 16],
) -> Result<Session> {
    let deadline = opts.connect_timeout;
    tokio::time::timeout(deadline, establish_unbounded(host, port, creds, opts, client_guid)).await.map_err(|_| {
        Error::Timeout {
            op: format!("connecting and logging on to {} (negotiate and session setup)", HostPort(host, Some(port))),
            secs: deadline.as_secs(),
        }
    })?
}

async fn establish_unbounded(
    host: &str,
    port: u16,
    creds: &dyn CredentialsSource,
    opts: &ClientOptions,
    client_guid: [u8; 16],
) -> Result<Session> {
    let framing = opts.framing.unwrap_or(if port == NETBIOS_PORT { Framing::Netbios } else { Framing::Direct });
    // `ip=`/`addr=`: reach the server at an address; `host` still names it (SPN, share paths).
    let address = opts.connect_address.as_deref().unwrap_or(host);
    let conn = Arc::new(
        Connection::open(address, port, framing, opts.connect_timeout, opts.wait_limits(), opts.observer.clone())
            .await?,
    );
    let negotiated = negotiate(&conn, opts, client_guid).await?;
    let first = creds.current().await?;
    match Session::establish(conn.clone(), negotiated.clone(), host, &first, opts).await {
        Err(e) if credentials_rejected(&e) => {
            // Only a source that now holds other credentials (a rotated
            // password) is worth a second try; the same ones would fail again.
            let fresh = creds.refresh().await?;
            if fresh == first {
                return Err(e);
            }
            tracing::info!(server = %conn.addr(), user = %fresh.display_name(), "credentials rejected; retrying with the updated ones");
            Session::establish(conn, negotiated, host, &fresh, opts).await
        }
        r => r,
    }
}

/// Watches the current connection until the link is dropped: ECHO when
/// idle, lease-break acknowledgments, Kerberos ticket renewal before the
/// ticket ends, and reconnecting when the connection dies.
async fn supervise(link: Weak<Link>, mut stop: watch::Receiver<()>) {
    loop {
        let Some((session, generation, echo_every)) =
            link.upgrade().and_then(|l| l.current().map(|(s, g)| (s, g, l.opts.echo_interval)))
        else {
            return;
        };
        let mut breaks = session.conn.take_lease_breaks();
        let echo_every = echo_every.max(Duration::from_millis(100));
        let renewal = link.upgrade().is_some_and(|l| l.opts.kerberos_renewal);
        let renewal_time = |s: &Session| if renewal { renewal_time(s) } else { None };
        let mut renew_at = renewal_time(&session);
        let death = loop {
            tokio::select! {
                _ = session.conn.closed() => break session.conn.death(),
                _ = stop.changed() => return,
                _ = sleep_until(renew_at) => {
                    renew(&link, &session).await;
                    renew_at = renewal_time(&session);
                }
                Some(b) = next_break(&mut breaks) => acknowledge(&link, &session, b),
                _ = tokio::time::sleep(echo_every / 2) => {
                    if session.conn.idle_for() >= echo_every {
                        echo(&session, echo_every).await;
                    }
                }
            }
        };
        let Some(strong) = link.upgrade() else { return };
        if matches!(&*strong.phase.borrow(), Phase::Failed { .. }) {
            return;
        }
        let reason = match death {
            Some(Death::Untrusted(why)) => {
                tracing::error!(server = %strong.addr(), %why, "SMB connection closed and not retried: its messages failed verification");
                strong.close(&why);
                return;
            }
            Some(Death::Network(why)) => why,
            None => "connection closed".into(),
        };
        drop(session);
        drop(strong);
        if !recover(&link, reason, generation + 1, &mut stop).await {
            return;
        }
    }
}

/// When to renew the session's Kerberos ticket (never for NTLM): see [`renewal_delay`].
fn renewal_time(session: &Session) -> Option<Instant> {
    let end = session.ticket_end()?;
    let left = end.duration_since(SystemTime::now()).unwrap_or_default();
    Some(Instant::now() + renewal_delay(left))
}

/// How long to wait before re-authenticating a session whose ticket has
/// `left` to live: a fifth of it is kept as margin, at least 5 s and at
/// most 5 min (a 10-hour AD ticket is renewed 5 min before its end, a
/// 1-minute one 12 s before), so the server never has to expire the session.
pub(crate) fn renewal_delay(left: Duration) -> Duration {
    let margin = (left / 5).clamp(Duration::from_secs(5), Duration::from_secs(300));
    left.saturating_sub(margin)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Renews the session's ticket by re-authenticating in place. A failure
/// is logged and retried shortly; if the ticket runs out meanwhile, the
/// server's STATUS_NETWORK_SESSION_EXPIRED takes the same path.
async fn renew(link: &Weak<Link>, session: &Arc<Session>) {
    let Some(link) = link.upgrade() else { return };
    match link.reauthenticate(session).await {
        Ok(()) => tracing::debug!(server = %link.addr(), "Kerberos ticket renewed"),
        Err(e) => {
            tracing::warn!(server = %link.addr(), error = %e, "renewing the Kerberos ticket failed; retrying in 5 s");
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }
}

async fn next_break(
    rx: &mut Option<mpsc::UnboundedReceiver<LeaseBreakNotification>>,
) -> Option<LeaseBreakNotification> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// ECHO with a deadline; no reply in time declares the connection lost.
async fn echo(session: &Arc<Session>, within: Duration) {
    let out = Outgoing::new(Command::Echo, 0, 0, |m| EchoRequest.encode(m));
    match tokio::time::timeout(within, session.request(out, false)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => session.conn.abort(format!("ECHO failed: {e}")),
        Err(_) => session.conn.abort(format!("no reply to ECHO within {}s", within.as_secs_f32())),
    }
}

/// Acknowledges a lease break with the state the server offers, after the
/// tree's lease break handler (if any) has flushed and invalidated what the
/// lease let its user cache (bounded by `lease::HANDLER_BOUND`). Runs in its
/// own task (the server may hold another request of ours until the ack arrives).
fn acknowledge(link: &Weak<Link>, session: &Arc<Session>, n: LeaseBreakNotification) {
    let Some(link) = link.upgrade() else { return };
    let open = link.open_for_lease(&n.key);
    let (tree_id, encrypt) = open.as_ref().map(|o| o.tree_route()).unwrap_or((0, false));
    let handler = open.as_ref().and_then(|o| o.lease_handler().map(|h| (h, o.share_path().to_string())));
    let session = session.clone();
    tokio::spawn(async move {
        if let Some((handler, path)) = handler {
            let event = crate::lease::LeaseBreak { path, key: n.key, current: n.current_state, new: n.new_state };
            tracing::debug!(path = %event.path, current = n.current_state, new = n.new_state, "lease break: flushing and invalidating before the acknowledgment");
            if tokio::time::timeout(crate::lease::HANDLER_BOUND, handler.lease_breaking(event)).await.is_err() {
                tracing::warn!("lease break handler took too long; acknowledging anyway");
            }
        }
        if !n.ack_required() {
            return;
        }
        let ack = LeaseBreakAck { key: n.key, state: n.new_state };
        let out = Outgoing::new(Command::OplockBreak, tree_id, 0, |m| ack.encode(m));
        match session.request(out, encrypt).await {
            Ok(r) => tracing::debug!(status = %r.header.status, new_state = n.new_state, "lease break acknowledged"),
            Err(e) => tracing::debug!(error = %e, "lease break acknowledgment failed"),
        }
    });
}

/// Reconnects until it works (or the link is dropped: `false`).
async fn recover(link: &Weak<Link>, reason: String, generation: u64, stop: &mut watch::Receiver<()>) -> bool {
    let started = Instant::now();
    {
        let Some(l) = link.upgrade() else { return false };
        l.phase.send_replace(Phase::Down { reason: reason.clone() });
        *l.state.lock().unwrap() = ConnectionState::Reconnecting {
            reason: reason.clone(),
            since: SystemTime::now(),
            attempts: 0,
            last_error: None,
        };
        l.opts.observer.disconnected(&reason);
        tracing::warn!(server = %l.addr(), %reason, "SMB connection lost; reconnecting");
    }
    let mut attempt = 0u32;
    loop {
        let Some(l) = link.upgrade() else { return false };
        match l.reconnect_once(generation, attempt == 0).await {
            Ok(()) => {
                let outage = started.elapsed();
                l.reconnects.fetch_add(1, Ordering::Relaxed);
                *l.state.lock().unwrap() = ConnectionState::Connected { since: SystemTime::now() };
                l.opts.observer.reconnect();
                l.opts.observer.reconnected(outage);
                tracing::info!(server = %l.addr(), outage_ms = outage.as_millis() as u64, attempts = attempt + 1, "SMB connection re-established");
                return true;
            }
            Err(e) => {
                attempt += 1;
                let delay = l.opts.backoff.delay(attempt, rand::thread_rng().gen::<f64>());
                if let ConnectionState::Reconnecting { attempts, last_error, .. } = &mut *l.state.lock().unwrap() {
                    *attempts = attempt;
                    *last_error = Some(e.to_string());
                }
                tracing::info!(server = %l.addr(), attempt, error = %e, retry_in_ms = delay.as_millis() as u64, "reconnect attempt failed");
                drop(l);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => return false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_renewed_with_a_margin() {
        let s = Duration::from_secs;
        assert_eq!(renewal_delay(s(36_000)), s(36_000 - 300), "10 h: 5 min before the end");
        assert_eq!(renewal_delay(s(60)), s(48), "1 min: 12 s before");
        assert_eq!(renewal_delay(s(20)), s(15), "at least 5 s of margin");
        assert_eq!(renewal_delay(s(3)), Duration::ZERO, "almost over: at once");
        assert_eq!(renewal_delay(Duration::ZERO), Duration::ZERO);
    }
}
