//! Sessions shared across callers: one connection and session per
//! (server, port, user, domain, password, session settings), its trees reused, and
//! idle or dead sessions dropped. A changed password is a different key, so
//! it gets a new session while the old one ages out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::client::Client;
use super::error::Result;
use super::options::{ClientOptions, Credentials, SessionSettings};
use super::target::ShareTarget;
use super::tree::Tree;

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    host: String,
    port: u16,
    who: String,
    /// SHA-256 of the password: the key never holds the password itself.
    password_digest: [u8; 32],
    settings: SessionSettings,
}

#[derive(Default)]
struct Slot {
    client: Option<Client>,
    trees: HashMap<String, Tree>,
}

struct Entry {
    slot: Arc<tokio::sync::Mutex<Slot>>,
    last_used: Instant,
}

/// A cache of authenticated sessions. Cheap to clone.
#[derive(Clone)]
pub struct SessionPool {
    entries: Arc<Mutex<HashMap<PoolKey, Entry>>>,
    opts: ClientOptions,
    idle: Duration,
}

impl SessionPool {
    /// `idle`: how long an unused session is kept.
    pub fn new(opts: ClientOptions, idle: Duration) -> SessionPool {
        SessionPool { entries: Arc::new(Mutex::new(HashMap::new())), opts, idle }
    }

    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    fn key(target: &ShareTarget, creds: &Credentials, opts: &ClientOptions) -> PoolKey {
        let mut h = Sha256::new();
        if let Credentials::User { password, .. } = creds {
            h.update(password.expose().as_bytes());
        }
        PoolKey {
            host: target.host.to_ascii_lowercase(),
            port: target.port,
            who: creds.display_name(),
            password_digest: h.finalize().into(),
            settings: opts.session_settings(),
        }
    }

    /// A connected tree for the target's share, reusing a live session.
    pub async fn tree(&self, target: &ShareTarget, creds: &Credentials) -> Result<Tree> {
        self.tree_with(target, creds, &self.opts).await
    }

    /// As [`tree`](Self::tree) with other client options (e.g. a per-volume encryption policy).
    pub async fn tree_with(&self, target: &ShareTarget, creds: &Credentials, opts: &ClientOptions) -> Result<Tree> {
        let key = Self::key(target, creds, opts);
        let slot = {
            let mut entries = self.entries.lock().unwrap();
            let e = entries.entry(key).or_insert_with(|| Entry {
                slot: Arc::new(tokio::sync::Mutex::new(Slot::default())),
                last_used: Instant::now(),
            });
            e.last_used = Instant::now();
            e.slot.clone()
        };
        // One connect at a time per key; other callers wait and then reuse it.
        let mut slot = slot.lock().await;
        if let Some(c) = &slot.client {
            // A reconnecting client is still the one to use; only one that
            // gave up (logged off, or closed after tampering) is replaced.
            if !c.is_usable() {
                slot.client = None;
                slot.trees.clear();
                opts.observer.reconnect();
            }
        }
        let share = target.share.to_ascii_lowercase();
        if let (Some(_), Some(t)) = (&slot.client, slot.trees.get(&share)) {
            if t.is_usable() {
                return Ok(t.clone());
            }
        }
        let client = match &slot.client {
            Some(c) => c.clone(),
            None => {
                let c = Client::connect(&target.host, target.port, creds, opts).await?;
                slot.client = Some(c.clone());
                c
            }
        };
        let tree = client.tree(&target.share).await?;
        slot.trees.insert(share, tree.clone());
        Ok(tree)
    }

    /// Forgets the session for these credentials (after an auth or session error).
    pub fn invalidate(&self, target: &ShareTarget, creds: &Credentials) {
        self.invalidate_with(target, creds, &self.opts);
    }

    /// As [`invalidate`](Self::invalidate) for a session made by [`tree_with`](Self::tree_with).
    pub fn invalidate_with(&self, target: &ShareTarget, creds: &Credentials, opts: &ClientOptions) {
        let key = Self::key(target, creds, opts);
        self.entries.lock().unwrap().remove(&key);
    }

    /// Drops sessions unused for longer than the idle time, and dead ones.
    /// Returns how many sessions remain.
    pub fn evict_idle(&self) -> usize {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap();
        entries.retain(|_, e| {
            let dead = e.slot.try_lock().map(|s| s.client.as_ref().is_some_and(|c| !c.is_usable())).unwrap_or(false);
            !dead && now.duration_since(e.last_used) < self.idle
        });
        entries.len()
    }

    /// Number of sessions currently cached.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `evict_idle` every `every` until the pool's last clone is dropped.
    pub fn spawn_evictor(&self, every: Duration) {
        let weak = Arc::downgrade(&self.entries);
        let (opts, idle) = (self.opts.clone(), self.idle);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(entries) = weak.upgrade() else { break };
                SessionPool { entries, opts: opts.clone(), idle }.evict_idle();
            }
        });
    }
}
