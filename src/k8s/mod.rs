//! Reading Kubernetes Secrets through the API server: for inline ephemeral volumes (their credentials are
//! named by `secretName` in the pod spec, so no sidecar resolves them for us), and for re-reading a staged
//! volume's node-stage Secret after a password rotation ([`stage_secret`]: found through its PV).
//!
//! The client is created on the first lookup, not at startup: a node pod only has an API token when inline
//! volumes are enabled, and a plugin that needs none must not fail for lack of one.
//!
//! ```no_run
//! # async fn run() -> Result<(), smb3_csi::k8s::SecretError> {
//! use smb3_csi::k8s::SecretReader;
//! let reader = SecretReader::new(None); // in-cluster config, or $KUBECONFIG / ~/.kube/config
//! let data = reader.get("team-a", "smbcreds").await?;
//! assert!(data.contains_key("username"));
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Secret;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tokio::sync::OnceCell;

pub mod stage_secret;
pub use stage_secret::{pick_stage_secret, SecretRef, StageSecret};

/// Why a Secret could not be read. `Display` names the Secret, never its data.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("no Kubernetes API configuration: {0}")]
    Config(String),
    #[error("Secret {namespace}/{name} does not exist")]
    NotFound { namespace: String, name: String },
    #[error("reading Secret {namespace}/{name} is forbidden for the node plugin's service account: {message}")]
    Forbidden { namespace: String, name: String, message: String },
    #[error("reading Secret {namespace}/{name}: {message}")]
    Api { namespace: String, name: String, message: String },
    #[error("Secret {namespace}/{name}: the value of key {key:?} is not UTF-8 text")]
    NotUtf8 { namespace: String, name: String, key: String },
    #[error("Secret name {0:?} is not a valid Kubernetes object name")]
    BadName(String),
    #[error("listing PersistentVolumes is forbidden for the node plugin's service account: {message}")]
    PersistentVolumesForbidden { message: String },
    #[error("listing PersistentVolumes: {message}")]
    PersistentVolumes { message: String },
}

/// Reads Secrets (and the PersistentVolumes that name them) with a lazily created kube client (in-cluster config, or the given kubeconfig file).
pub struct SecretReader {
    kubeconfig: Option<PathBuf>,
    client: OnceCell<Client>,
}

impl std::fmt::Debug for SecretReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretReader").field("kubeconfig", &self.kubeconfig).finish()
    }
}

impl SecretReader {
    /// `kubeconfig`: a kubeconfig file to use; `None` infers the configuration (in-cluster service account,
    /// else `$KUBECONFIG` or `~/.kube/config`).
    pub fn new(kubeconfig: Option<PathBuf>) -> Self {
        SecretReader { kubeconfig, client: OnceCell::new() }
    }

    async fn client(&self) -> Result<&Client, SecretError> {
        self.client
            .get_or_try_init(|| async {
                let config = match &self.kubeconfig {
                    Some(path) => {
                        let kubeconfig = Kubeconfig::read_from(path)
                            .map_err(|e| SecretError::Config(format!("reading {}: {e}", path.display())))?;
                        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                            .await
                            .map_err(|e| SecretError::Config(format!("{}: {e}", path.display())))?
                    }
                    None => Config::infer().await.map_err(|e| SecretError::Config(e.to_string()))?,
                };
                Client::try_from(config).map_err(|e| SecretError::Config(e.to_string()))
            })
            .await
    }

    /// The Secret's `data` decoded (and `stringData`-style `string_data`, which an API server never returns but
    /// a hand-written fake might), keys as stored.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<HashMap<String, String>, SecretError> {
        validate_name(name)?;
        validate_name(namespace)?;
        let api: Api<Secret> = Api::namespaced(self.client().await?.clone(), namespace);
        let (ns, nm) = (namespace.to_string(), name.to_string());
        let secret = match api.get_opt(name).await {
            Ok(Some(secret)) => secret,
            Ok(None) => return Err(SecretError::NotFound { namespace: ns, name: nm }),
            Err(kube::Error::Api(status)) if status.code == 403 => {
                return Err(SecretError::Forbidden { namespace: ns, name: nm, message: status.message.clone() })
            }
            Err(e) => return Err(SecretError::Api { namespace: ns, name: nm, message: e.to_string() }),
        };
        let mut out = HashMap::new();
        for (key, value) in secret.data.unwrap_or_default() {
            let text = String::from_utf8(value.0).map_err(|_| SecretError::NotUtf8 {
                namespace: ns.clone(),
                name: nm.clone(),
                key: key.clone(),
            })?;
            out.insert(key, text);
        }
        for (key, value) in secret.string_data.unwrap_or_default() {
            out.entry(key).or_insert(value);
        }
        Ok(out)
    }
}

/// DNS-1123 subdomain rules (what the API server enforces for Secret and namespace names); checked here so a
/// name can never alter the request path.
fn validate_name(name: &str) -> Result<(), SecretError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(SecretError::BadName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["smbcreds", "a", "team-a.creds", "x1"] {
            validate_name(good).unwrap();
        }
        for bad in ["", "Upper", "-a", "a-", "a/b", "..", "a b", &"x".repeat(254)] {
            assert!(matches!(validate_name(bad), Err(SecretError::BadName(_))), "{bad}");
        }
    }

    #[tokio::test]
    async fn unreadable_kubeconfig_is_a_config_error() {
        let reader = SecretReader::new(Some(PathBuf::from("/nonexistent/kubeconfig")));
        let err = reader.get("default", "creds").await.unwrap_err();
        assert!(matches!(err, SecretError::Config(ref m) if m.contains("/nonexistent/kubeconfig")), "{err}");
    }
}
