//! Where a mount's credentials come from when its connection is re-established. The SMB client asks its
//! [`CredentialsSource`] for every new session and asks it to *refresh* when the server rejects what it got
//! (LOGON_FAILURE, PASSWORD_EXPIRED...): a password rotated on the server and in the place the credentials
//! are kept is then picked up without remounting.
//!
//! - [`CredentialsFile`]: `smb3-csi mount --credentials FILE` re-reads FILE on a refresh.
//! - [`CcacheFile`]: `KRB5CCNAME=FILE:...` is read again for every new session and re-authentication, so a
//!   cache kept fresh by kinit/k5start renews the mount's tickets.
//! - [`SharedCredentials`]: the node keeps the credentials it was given by NodeStageVolume; a later call
//!   that brings a newer secret for the same server and user replaces them for every volume using them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use smb3::{Credentials, CredentialsSource, Error};

/// A mount.cifs credentials file, read at mount time and again whenever the server rejects the cached
/// credentials. Never logs the password.
pub struct CredentialsFile {
    path: PathBuf,
    cached: Mutex<Credentials>,
}

impl CredentialsFile {
    /// Reads `path` once (a mount with an unreadable file fails at once, not at the first reconnect).
    pub fn open(path: &Path) -> Result<CredentialsFile, Error> {
        let creds = Credentials::from_file(path)?;
        Ok(CredentialsFile { path: path.to_path_buf(), cached: Mutex::new(creds) })
    }

    /// The credentials of the last successful read.
    pub fn cached(&self) -> Credentials {
        self.cached.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl CredentialsSource for CredentialsFile {
    fn current(&self) -> BoxFuture<'_, Result<Credentials, Error>> {
        let creds = self.cached();
        Box::pin(async move { Ok(creds) })
    }

    fn refresh(&self) -> BoxFuture<'_, Result<Credentials, Error>> {
        Box::pin(async move {
            let fresh = Credentials::from_file(&self.path)?;
            let changed = fresh != self.cached();
            tracing::info!(
                file = %self.path.display(),
                user = %fresh.display_name(),
                changed,
                "the server rejected the credentials: re-read the credentials file"
            );
            *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
            Ok(fresh)
        })
    }
}

/// A Kerberos credential cache file (`KRB5CCNAME`), read again whenever a session needs a ticket.
pub struct CcacheFile {
    name: String,
}

impl CcacheFile {
    /// Reads the cache named like `KRB5CCNAME` once (an unreadable cache fails the mount at once).
    pub fn open(name: &str) -> Result<(CcacheFile, Credentials), Error> {
        let creds = Credentials::Kerberos(smb3::KerberosCredentials::from_ccache_name(name)?);
        Ok((CcacheFile { name: name.to_string() }, creds))
    }
}

impl CredentialsSource for CcacheFile {
    fn current(&self) -> BoxFuture<'_, Result<Credentials, Error>> {
        Box::pin(async move { Ok(Credentials::Kerberos(smb3::KerberosCredentials::from_ccache_name(&self.name)?)) })
    }
}

/// Credentials held in memory and replaced from outside (the node service, when a CSI call brings a newer
/// secret). A refresh returns whatever was set last: the node has no other place to look.
pub struct SharedCredentials {
    current: Mutex<Credentials>,
}

impl SharedCredentials {
    pub fn new(creds: Credentials) -> Arc<SharedCredentials> {
        Arc::new(SharedCredentials { current: Mutex::new(creds) })
    }

    /// Replaces the credentials for the next session; returns whether they differ from the previous ones.
    pub fn update(&self, creds: &Credentials) -> bool {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let changed = *current != *creds;
        *current = creds.clone();
        changed
    }

    pub fn get(&self) -> Credentials {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl CredentialsSource for SharedCredentials {
    fn current(&self) -> BoxFuture<'_, Result<Credentials, Error>> {
        let creds = self.get();
        Box::pin(async move { Ok(creds) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smb3::Secret;

    fn password(c: &Credentials) -> String {
        match c {
            Credentials::User { password, .. } => password.expose().to_string(),
            _ => panic!("not a user"),
        }
    }

    #[tokio::test]
    async fn file_is_reread_only_on_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds");
        std::fs::write(&path, "username=bob\npassword=old\n").unwrap();
        let source = CredentialsFile::open(&path).unwrap();
        std::fs::write(&path, "username=bob\npassword=new\n").unwrap();
        assert_eq!(password(&source.current().await.unwrap()), "old", "current() is the cached copy");
        assert_eq!(password(&source.refresh().await.unwrap()), "new");
        assert_eq!(password(&source.current().await.unwrap()), "new", "the refresh is kept");
        // A broken file fails the refresh and keeps the last good credentials.
        std::fs::write(&path, "password=x\n").unwrap();
        let err = source.refresh().await.unwrap_err();
        assert!(!err.to_string().contains("password=x"), "{err}");
        assert_eq!(password(&source.current().await.unwrap()), "new");
        assert!(CredentialsFile::open(&dir.path().join("missing")).is_err());
    }

    #[tokio::test]
    async fn shared_credentials_follow_updates() {
        let shared = SharedCredentials::new(Credentials::user("bob", "", Secret::new("one")));
        assert!(!shared.update(&Credentials::user("bob", "", Secret::new("one"))));
        assert!(shared.update(&Credentials::user("bob", "", Secret::new("two"))));
        assert_eq!(password(&shared.refresh().await.unwrap()), "two");
    }
}
