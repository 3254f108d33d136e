//! Which Secret a staged volume's credentials come from: the `spec.csi.nodeStageSecretRef` of the
//! PersistentVolume whose `spec.csi.driver` is ours and whose `spec.csi.volumeHandle` is the volume id.
//!
//! The kubelet hands the node that Secret's data in NodeStageVolume and never again. After a password
//! rotation the node finds the Secret again here (no field selector covers `volumeHandle`, so the PVs are
//! listed and picked by [`pick_stage_secret`]).

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::ListParams;
use kube::Api;

use super::{SecretError, SecretReader};

/// A Secret's namespace and name (never its data).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the PVs say about a volume's node-stage Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StageSecret {
    /// The PV of the volume names this Secret.
    Found(SecretRef),
    /// No PV of our driver has this volume handle (an inline volume, or the PV was deleted).
    NoVolume,
    /// The PV exists but names no node-stage Secret (or one without a name).
    NoSecretRef { persistent_volume: String },
}

/// The node-stage Secret of the PV whose CSI driver is `driver` and whose volume handle is `volume_handle`.
/// A `nodeStageSecretRef` without a namespace means `default`, as the kubelet reads it.
pub fn pick_stage_secret(pvs: &[PersistentVolume], driver: &str, volume_handle: &str) -> StageSecret {
    let Some((pv, csi)) = pvs.iter().find_map(|pv| {
        let csi = pv.spec.as_ref()?.csi.as_ref()?;
        (csi.driver == driver && csi.volume_handle == volume_handle).then_some((pv, csi))
    }) else {
        return StageSecret::NoVolume;
    };
    let persistent_volume = pv.metadata.name.clone().unwrap_or_default();
    match csi.node_stage_secret_ref.as_ref() {
        Some(r) if r.name.as_deref().is_some_and(|n| !n.is_empty()) => StageSecret::Found(SecretRef {
            namespace: r.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".to_string()),
            name: r.name.clone().unwrap_or_default(),
        }),
        _ => StageSecret::NoSecretRef { persistent_volume },
    }
}

impl SecretReader {
    /// Lists the PersistentVolumes and picks the node-stage Secret of `driver`'s volume `volume_handle`.
    /// Needs `list` on `persistentvolumes` (cluster-scoped, read-only).
    pub async fn stage_secret_of(&self, driver: &str, volume_handle: &str) -> Result<StageSecret, SecretError> {
        let api: Api<PersistentVolume> = Api::all(self.client().await?.clone());
        let pvs = match api.list(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(kube::Error::Api(status)) if status.code == 403 => {
                return Err(SecretError::PersistentVolumesForbidden { message: status.message.clone() })
            }
            Err(e) => return Err(SecretError::PersistentVolumes { message: e.to_string() }),
        };
        Ok(pick_stage_secret(&pvs, driver, volume_handle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(name: &str, driver: &str, handle: &str, secret_ref: serde_json::Value) -> PersistentVolume {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"csi": {"driver": driver, "volumeHandle": handle, "nodeStageSecretRef": secret_ref}}
        }))
        .unwrap()
    }

    fn found(namespace: &str, name: &str) -> StageSecret {
        StageSecret::Found(SecretRef { namespace: namespace.into(), name: name.into() })
    }

    #[test]
    fn picks_the_pv_by_driver_and_handle() {
        let pvs = vec![
            // Another driver with the same handle must not be taken.
            pv("other", "smb.csi.k8s.io", "h1", serde_json::json!({"name": "theirs", "namespace": "x"})),
            pv("mine", "smb3.csi.dev", "h1", serde_json::json!({"name": "smb-creds", "namespace": "team-a"})),
            pv("mine-2", "smb3.csi.dev", "h2", serde_json::json!({"name": "b", "namespace": "team-b"})),
        ];
        assert_eq!(pick_stage_secret(&pvs, "smb3.csi.dev", "h1"), found("team-a", "smb-creds"));
        assert_eq!(pick_stage_secret(&pvs, "smb3.csi.dev", "h2"), found("team-b", "b"));
        assert_eq!(pick_stage_secret(&pvs, "smb.csi.k8s.io", "h1"), found("x", "theirs"));
        assert_eq!(pick_stage_secret(&pvs, "smb3.csi.dev", "h3"), StageSecret::NoVolume);
        assert_eq!(pick_stage_secret(&[], "smb3.csi.dev", "h1"), StageSecret::NoVolume);
    }

    #[test]
    fn missing_namespace_is_default_and_missing_ref_is_said() {
        let pvs = vec![
            pv("no-ns", "d", "a", serde_json::json!({"name": "creds"})),
            pv("no-ref", "d", "b", serde_json::Value::Null),
            pv("no-name", "d", "c", serde_json::json!({"namespace": "x"})),
            // A PV of another kind (no csi section) is skipped, not a failure.
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "nfs"}, "spec": {"nfs": {"server": "s", "path": "/"}}}),
            )
            .unwrap(),
        ];
        assert_eq!(pick_stage_secret(&pvs, "d", "a"), found("default", "creds"));
        assert_eq!(pick_stage_secret(&pvs, "d", "b"), StageSecret::NoSecretRef { persistent_volume: "no-ref".into() });
        assert_eq!(pick_stage_secret(&pvs, "d", "c"), StageSecret::NoSecretRef { persistent_volume: "no-name".into() });
    }
}
