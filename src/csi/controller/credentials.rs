//! The controller's memory of which credentials work for which share.
//!
//! ControllerGetVolume carries no secrets, and ControllerExpandVolume and
//! ValidateVolumeCapabilities carry them only when the StorageClass names a
//! secret for them; remembering, in memory only, the last credentials that
//! connected to each share lets those RPCs still reach the share. Nothing
//! is persisted: after a restart the next RPC with secrets fills it again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tonic::Status;

use super::ControllerService;
use crate::volume::ShareUrl;
use smb3::Credentials;

/// A share, compared as servers compare it (host and share name case-insensitively).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct ShareKey {
    pub(super) server: String,
    pub(super) port: u16,
    pub(super) share: String,
}

impl ShareKey {
    pub(super) fn of(url: &ShareUrl) -> Self {
        ShareKey { server: url.server().to_lowercase(), port: url.port(), share: url.share().to_lowercase() }
    }
}

/// The last credentials that connected to each share. Cheap to clone (shared).
#[derive(Clone, Default)]
pub(super) struct KnownCredentials(Arc<Mutex<HashMap<ShareKey, Credentials>>>);

impl KnownCredentials {
    /// Called after a successful connection, so only working credentials are kept.
    pub(super) fn remember(&self, share: &ShareUrl, creds: &Credentials) {
        self.0.lock().unwrap().insert(ShareKey::of(share), creds.clone());
    }

    pub(super) fn get(&self, share: &ShareUrl) -> Option<Credentials> {
        self.0.lock().unwrap().get(&ShareKey::of(share)).cloned()
    }
}

impl ControllerService {
    /// Request secrets, else remembered ones, else an INVALID_ARGUMENT that
    /// says which StorageClass key provides them.
    pub(super) fn credentials_or_known(
        &self,
        secrets: &HashMap<String, String>,
        share: &ShareUrl,
        secret_key: &str,
    ) -> Result<Credentials, Status> {
        if let Some(creds) = crate::csi::credentials_from_secrets(secrets)? {
            return Ok(creds);
        }
        self.known_credentials.get(share).ok_or_else(|| {
            Status::invalid_argument(format!(
                "no secrets in the request and none known for {} since the controller started; \
                 set csi.storage.k8s.io/{secret_key}-secret-name and -namespace in the StorageClass",
                share.share_root()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smb3::Secret;

    #[test]
    fn shares_match_as_servers_compare_them() {
        let known = KnownCredentials::default();
        let bob = Credentials::user("bob", "", Secret::new("pw"));
        known.remember(&ShareUrl::parse("//SRV.example.com/Team/a").unwrap(), &bob);
        // Same server and share, another base path and case: the same share.
        assert_eq!(known.get(&ShareUrl::parse(r"\\srv.EXAMPLE.com\team\b").unwrap()), Some(bob.clone()));
        assert_eq!(known.get(&ShareUrl::parse("//srv.example.com:1445/team").unwrap()), None);
        assert_eq!(known.get(&ShareUrl::parse("//srv.example.com/other").unwrap()), None);
        let alice = Credentials::user("alice", "", Secret::new("pw2"));
        known.remember(&ShareUrl::parse("//srv.example.com/team").unwrap(), &alice);
        assert_eq!(known.get(&ShareUrl::parse("//srv.example.com/team").unwrap()), Some(alice));
    }
}
