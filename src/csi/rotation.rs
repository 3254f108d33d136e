//! Password rotation on the node: where a reconnecting session gets current credentials.
//!
//! The kubelet passes a volume's Secret in NodeStageVolume (and NodePublishVolume) only; after that the node
//! has no Secret of its own. When a reconnect's SESSION_SETUP is refused (LOGON_FAILURE, PASSWORD_EXPIRED...)
//! the SMB client asks its [`CredentialsSource`] to refresh, and [`NodeCredentials`] then reads the Secrets
//! again through the Kubernetes API:
//!
//! - a staged volume's Secret is the `nodeStageSecretRef` of its PersistentVolume (found by driver name and
//!   volume handle, remembered per volume: a PV's `spec.csi` cannot change);
//! - an inline volume's Secret is its `secretName` in the pod's namespace.
//!
//! **Shared sessions.** One source serves every volume of one user on one server (a session is shared by
//! volumes with the same server, user and settings). Its volumes are asked in the order they were mounted;
//! the first Secret that names the same user with another password than the refused one wins (all of them
//! name the same account, so any that has been updated holds the rotated password; one not updated yet is
//! skipped). When none has changed, the last credentials are kept and the reconnect tries again after its
//! backoff, reading the Secrets again then.
//!
//! **Without API access** (no in-cluster configuration and no kubeconfig, e.g. `smb3-csi all` on a laptop,
//! or RBAC that does not allow the reads) the source keeps the credentials the last NodeStage/NodePublish
//! brought, and says so in the log once. Secret data is never logged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use smb3::{Credentials, CredentialsSource, Error};

use crate::k8s::{SecretError, SecretReader, SecretRef, StageSecret};
use crate::mount::SharedCredentials;

/// Where a mounted volume's Secret is found again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SecretOrigin {
    /// Staged through NodeStageVolume: its PV's `nodeStageSecretRef`.
    StagedVolume,
    /// An inline ephemeral volume: `secretName` in the pod's namespace.
    Named(SecretRef),
}

/// The node-wide part: the API client, our driver name and what was learnt about PVs.
pub(crate) struct SecretLookup {
    reader: Arc<SecretReader>,
    driver: String,
    /// Volume id -> its PV's node-stage Secret (a PV's `spec.csi` is immutable, so this never goes stale).
    stage_secrets: Mutex<HashMap<String, SecretRef>>,
    /// The "no API access" line was logged.
    said_no_api: AtomicBool,
}

impl SecretLookup {
    pub(crate) fn new(reader: Arc<SecretReader>, driver: &str) -> Arc<SecretLookup> {
        Arc::new(SecretLookup {
            reader,
            driver: driver.to_string(),
            stage_secrets: Mutex::default(),
            said_no_api: AtomicBool::new(false),
        })
    }

    /// The Secret of `volume_id`, from the cache or the PVs.
    async fn secret_of(&self, volume_id: &str, origin: &SecretOrigin) -> Result<Option<SecretRef>, SecretError> {
        if let SecretOrigin::Named(secret) = origin {
            return Ok(Some(secret.clone()));
        }
        if let Some(known) = self.stage_secrets.lock().unwrap().get(volume_id) {
            return Ok(Some(known.clone()));
        }
        match self.reader.stage_secret_of(&self.driver, volume_id).await? {
            StageSecret::Found(secret) => {
                self.stage_secrets.lock().unwrap().insert(volume_id.to_string(), secret.clone());
                Ok(Some(secret))
            }
            StageSecret::NoVolume => {
                tracing::warn!(volume_id, driver = %self.driver, "no PersistentVolume of this driver has this volume handle: its Secret cannot be re-read");
                Ok(None)
            }
            StageSecret::NoSecretRef { persistent_volume } => {
                tracing::warn!(volume_id, %persistent_volume, "the PersistentVolume has no nodeStageSecretRef: its Secret cannot be re-read");
                Ok(None)
            }
        }
    }

    /// The credentials in `volume_id`'s Secret now, parsed as NodeStageVolume parses them.
    async fn read(
        &self,
        volume_id: &str,
        origin: &SecretOrigin,
    ) -> Result<Option<(SecretRef, Credentials)>, SecretError> {
        let Some(secret) = self.secret_of(volume_id, origin).await? else { return Ok(None) };
        let data = self.reader.get(&secret.namespace, &secret.name).await?;
        match super::credentials_from_secrets(&data) {
            Ok(Some(creds)) => Ok(Some((secret, creds))),
            Ok(None) => {
                tracing::warn!(volume_id, %secret, "the Secret is empty");
                Ok(None)
            }
            Err(status) => {
                tracing::warn!(volume_id, %secret, problem = status.message(), "the Secret holds no usable credentials");
                Ok(None)
            }
        }
    }
}

/// The credentials source of every session of one user on one server: the last credentials a CSI call
/// brought, re-read from the volumes' Secrets when the server refuses them.
pub(crate) struct NodeCredentials {
    /// `DOMAIN\user@server:port`, for the log.
    shown: String,
    last: Arc<SharedCredentials>,
    /// The mounted volumes of this user and server, in mount order: (volume id, where its Secret is).
    volumes: Mutex<Vec<(String, SecretOrigin)>>,
    lookup: Arc<SecretLookup>,
}

impl NodeCredentials {
    pub(crate) fn new(host: &str, port: u16, creds: &Credentials, lookup: Arc<SecretLookup>) -> Arc<NodeCredentials> {
        Arc::new(NodeCredentials {
            shown: format!("{}@{host}:{port}", creds.display_name()),
            last: SharedCredentials::new(creds.clone()),
            volumes: Mutex::default(),
            lookup,
        })
    }

    /// Replaces the credentials for the next session (a CSI call brought the Secret as it is now); returns
    /// whether they differ from the previous ones.
    pub(crate) fn update(&self, creds: &Credentials) -> bool {
        self.last.update(creds)
    }

    /// A volume now mounted with these credentials: its Secret is one to re-read on a refusal.
    pub(crate) fn track(&self, volume_id: &str, origin: SecretOrigin) {
        let mut volumes = self.volumes.lock().unwrap();
        if !volumes.iter().any(|(id, o)| id == volume_id && *o == origin) {
            volumes.push((volume_id.to_string(), origin));
        }
    }

    /// The volume was unmounted.
    pub(crate) fn forget(&self, volume_id: &str) {
        self.volumes.lock().unwrap().retain(|(id, _)| id != volume_id);
    }

    async fn reread(&self) -> Credentials {
        let refused = self.last.get();
        let volumes = self.volumes.lock().unwrap().clone();
        let mut read = Vec::new();
        for (volume_id, origin) in &volumes {
            match self.lookup.read(volume_id, origin).await {
                Ok(Some((secret, creds))) => {
                    let changed = rotated(&refused, std::slice::from_ref(&creds)).is_some();
                    tracing::info!(session = %self.shown, volume_id, %secret, changed, "the server refused the credentials: re-read the volume's Secret");
                    read.push(creds);
                    if changed {
                        break;
                    }
                }
                Ok(None) => {}
                Err(SecretError::Config(why)) => {
                    if !self.lookup.said_no_api.swap(true, Ordering::Relaxed) {
                        tracing::warn!(reason = %why, "no Kubernetes API access: a rotated password reaches the node only with the next NodeStage/NodePublish secrets (see README, Reliability)");
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(session = %self.shown, volume_id, error = %e, "re-reading the volume's Secret failed")
                }
            }
        }
        match rotated(&refused, &read) {
            Some(fresh) => {
                self.last.update(fresh);
                fresh.clone()
            }
            None => refused,
        }
    }
}

/// The first of `candidates` for the same user as `refused` with other credentials (a rotated password):
/// the one to try next. `None`: nothing new, try the same again later.
pub(crate) fn rotated<'a>(refused: &Credentials, candidates: &'a [Credentials]) -> Option<&'a Credentials> {
    candidates.iter().find(|c| c.display_name() == refused.display_name() && *c != refused)
}

impl CredentialsSource for NodeCredentials {
    fn current(&self) -> BoxFuture<'_, Result<Credentials, Error>> {
        let creds = self.last.get();
        Box::pin(async move { Ok(creds) })
    }

    fn refresh(&self) -> BoxFuture<'_, Result<Credentials, Error>> {
        Box::pin(async move { Ok(self.reread().await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smb3::Secret;

    fn user(name: &str, password: &str) -> Credentials {
        Credentials::user(name, "WORKGROUP", Secret::new(password))
    }

    #[test]
    fn the_first_secret_with_another_password_for_the_same_user_wins() {
        let refused = user("bob", "old");
        assert_eq!(rotated(&refused, &[]), None);
        assert_eq!(rotated(&refused, &[user("bob", "old")]), None, "nothing new: try again later");
        let candidates = [user("bob", "old"), user("alice", "other"), user("bob", "new"), user("bob", "newer")];
        assert_eq!(rotated(&refused, &candidates), Some(&user("bob", "new")));
        // Another user's Secret never feeds this session.
        assert_eq!(rotated(&refused, &[user("alice", "x")]), None);
        assert_eq!(rotated(&refused, &[Credentials::user("bob", "OTHERDOMAIN", Secret::new("new"))]), None);
    }

    #[tokio::test]
    async fn without_api_access_the_last_credentials_stay() {
        let reader = Arc::new(SecretReader::new(Some("/nonexistent/kubeconfig".into())));
        let source = NodeCredentials::new("srv", 445, &user("bob", "one"), SecretLookup::new(reader, "smb3.csi.dev"));
        source.track("v1", SecretOrigin::StagedVolume);
        source.track("v1", SecretOrigin::StagedVolume);
        assert_eq!(source.volumes.lock().unwrap().len(), 1);
        assert!(source.update(&user("bob", "two")));
        assert_eq!(source.refresh().await.unwrap(), user("bob", "two"));
        assert!(source.lookup.said_no_api.load(Ordering::Relaxed));
        assert_eq!(source.current().await.unwrap(), user("bob", "two"));
        source.forget("v1");
        assert!(source.volumes.lock().unwrap().is_empty());
    }
}
