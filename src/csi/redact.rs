//! Printing CSI requests without their credentials.
//!
//! The generated `Debug` of every message with a `secrets` map or a
//! `csi_secret` field uses these helpers (see `build.rs`), so formatting a
//! request with `{:?}` is the redacting formatter: there is no separate
//! function to forget to call.

use std::collections::HashMap;
use std::fmt;

/// A secret value's stand-in in formatted output.
pub struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A secrets map printed with its keys (which say what was supplied, e.g.
/// `username`) and every value replaced by `<redacted>`, sorted for stable
/// output.
pub struct RedactedMap<'a>(pub &'a HashMap<String, String>);

impl fmt::Debug for RedactedMap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&String> = self.0.keys().collect();
        keys.sort();
        f.debug_map().entries(keys.into_iter().map(|k| (k, Redacted))).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::proto::{
        volume_capability, CreateVolumeRequest, DeleteVolumeRequest, NodeStageVolumeRequest, VolumeCapability,
    };

    const PASSWORD: &str = "S3cr3t-P@ssw0rd";

    fn secrets() -> HashMap<String, String> {
        HashMap::from([("username".to_string(), "alice".to_string()), ("password".to_string(), PASSWORD.to_string())])
    }

    #[test]
    fn node_stage_request_hides_password_keeps_the_rest() {
        let request = NodeStageVolumeRequest {
            volume_id: "v1|srv|445|share||delete".into(),
            staging_target_path: "/var/lib/kubelet/staging".into(),
            volume_capability: Some(VolumeCapability {
                access_type: Some(volume_capability::AccessType::Mount(volume_capability::MountVolume {
                    fs_type: "cifs".into(),
                    mount_flags: vec!["vers=3.1.1".into()],
                    volume_mount_group: String::new(),
                })),
                access_mode: None,
            }),
            secrets: secrets(),
            volume_context: HashMap::from([("source".to_string(), "//srv/share".to_string())]),
            publish_context: HashMap::new(),
        };
        let printed = format!("{request:?}");
        let pretty = format!("{request:#?}");
        for out in [&printed, &pretty] {
            assert!(!out.contains(PASSWORD), "{out}");
            assert!(!out.contains("alice"), "{out}");
            assert!(out.contains("\"password\": <redacted>"), "{out}");
            assert!(out.contains("/var/lib/kubelet/staging"), "{out}");
            assert!(out.contains("vers=3.1.1"), "{out}");
            assert!(out.contains("//srv/share"), "{out}");
        }
        // And through tonic's Request wrapper, which is what handlers hold.
        let wrapped = format!("{:?}", tonic::Request::new(request));
        assert!(!wrapped.contains(PASSWORD), "{wrapped}");
    }

    #[test]
    fn create_volume_request_hides_password() {
        let request = CreateVolumeRequest {
            name: "pvc-1234".into(),
            secrets: secrets(),
            parameters: HashMap::from([("source".to_string(), "//srv/share".to_string())]),
            ..Default::default()
        };
        let printed = format!("{request:?}");
        assert!(!printed.contains(PASSWORD), "{printed}");
        assert!(printed.contains("pvc-1234"), "{printed}");
        assert!(printed.contains("\"username\": <redacted>"), "{printed}");
    }

    #[test]
    fn every_secret_bearing_request_is_covered() {
        let printed = format!("{:?}", DeleteVolumeRequest { volume_id: "x".into(), secrets: secrets() });
        assert!(!printed.contains(PASSWORD), "{printed}");
        assert_eq!(
            printed,
            r#"DeleteVolumeRequest { volume_id: "x", secrets: {"password": <redacted>, "username": <redacted>} }"#
        );
    }

    #[test]
    fn empty_map_prints_empty() {
        assert_eq!(format!("{:?}", RedactedMap(&HashMap::new())), "{}");
    }
}
