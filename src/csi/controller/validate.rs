//! Checks on request fields shared by several RPCs, done before any SMB
//! traffic so that a refused request touches nothing. Each refusal is
//! INVALID_ARGUMENT unless the spec asks for another code.

use tonic::Status;

use super::RECORD_DIR;
use crate::csi::proto::{volume_capability, CapacityRange, VolumeCapability};
use crate::volume::{SharePath, VolumeId, MAX_VOLUME_ID_LEN};

/// CSI "Size Limits": the longest string field, which bounds names and ids.
pub(super) const MAX_NAME_LEN: usize = 128;

/// Checks requested capabilities: mount access with an access mode.
pub(super) fn check_capabilities(capabilities: &[VolumeCapability]) -> Result<(), String> {
    if capabilities.is_empty() {
        return Err("volume_capabilities is required".into());
    }
    for (i, capability) in capabilities.iter().enumerate() {
        match capability.access_type {
            Some(volume_capability::AccessType::Mount(_)) => {}
            Some(volume_capability::AccessType::Block(_)) => {
                return Err(format!(
                    "volume_capabilities[{i}]: block access is not supported; SMB volumes are filesystems (volumeMode: Filesystem)"
                ))
            }
            None => return Err(format!("volume_capabilities[{i}]: access_type is required (mount)")),
        }
        let mode = capability.access_mode.as_ref().map(|m| m.mode).unwrap_or_default();
        let known = volume_capability::access_mode::Mode::try_from(mode)
            .ok()
            .filter(|m| *m != volume_capability::access_mode::Mode::Unknown);
        if known.is_none() {
            return Err(format!("volume_capabilities[{i}]: access_mode is required"));
        }
    }
    Ok(())
}

/// Checks a volume id's presence and size (INVALID_ARGUMENT), then parses
/// it; `Ok(None)` means it is not one of ours.
pub(super) fn parse_volume_id(volume_id: &str) -> Result<Option<VolumeId>, Status> {
    if volume_id.is_empty() {
        return Err(Status::invalid_argument("volume_id is required"));
    }
    if volume_id.len() > MAX_VOLUME_ID_LEN {
        return Err(Status::invalid_argument(format!(
            "volume_id is {} bytes; CSI allows at most {MAX_VOLUME_ID_LEN}",
            volume_id.len()
        )));
    }
    let id = match VolumeId::parse(volume_id) {
        Ok(id) => id,
        Err(e) => {
            tracing::debug!(error = %e, "volume id is not one of ours");
            return Ok(None);
        }
    };
    check_not_reserved(&id.sub_dir)?;
    Ok(Some(id))
}

/// Refuses a directory inside the record directory: a volume there could
/// overwrite or delete the records of other volumes.
pub(super) fn check_not_reserved(sub_dir: &SharePath) -> Result<(), Status> {
    if sub_dir.components().first().is_some_and(|c| c.eq_ignore_ascii_case(RECORD_DIR)) {
        return Err(Status::invalid_argument(format!(
            "subdir {sub_dir:?} is inside {RECORD_DIR}, where this driver keeps its volume records",
            sub_dir = sub_dir.to_string()
        )));
    }
    Ok(())
}

/// `required_bytes`, or `limit_bytes` when only that is set; 0 when neither.
pub(super) fn capacity_of(range: Option<&CapacityRange>) -> Result<(i64, i64, i64), Status> {
    let Some(range) = range else { return Ok((0, 0, 0)) };
    let (required, limit) = (range.required_bytes, range.limit_bytes);
    if required < 0 || limit < 0 {
        return Err(Status::invalid_argument("capacity_range: required_bytes and limit_bytes must not be negative"));
    }
    if limit > 0 && required > limit {
        return Err(Status::invalid_argument(format!(
            "capacity_range: required_bytes {required} is over limit_bytes {limit}"
        )));
    }
    let capacity = if required > 0 { required } else { limit };
    Ok((capacity, required, limit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use smb3::EncryptionPolicy;
    use tonic::Code;

    #[test]
    fn capacity_rules() {
        let range = |required_bytes, limit_bytes| CapacityRange { required_bytes, limit_bytes };
        assert_eq!(capacity_of(None).unwrap(), (0, 0, 0));
        assert_eq!(capacity_of(Some(&range(5, 10))).unwrap(), (5, 5, 10));
        assert_eq!(capacity_of(Some(&range(0, 10))).unwrap(), (10, 0, 10));
        assert_eq!(capacity_of(Some(&range(11, 10))).unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(capacity_of(Some(&range(-1, 0))).unwrap_err().code(), Code::InvalidArgument);
    }

    #[test]
    fn volume_ids() {
        assert_eq!(parse_volume_id("").unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(parse_volume_id(&"v".repeat(129)).unwrap_err().code(), Code::InvalidArgument);
        assert!(parse_volume_id("not-ours").unwrap().is_none());
        assert!(parse_volume_id("srv/share#pvc-1#pvc-1#retain").unwrap().is_some());
        assert_eq!(parse_volume_id("v1|srv||share||.smb3-csi|delete").unwrap_err().code(), Code::InvalidArgument);
        let relaxed = parse_volume_id("v1|srv||share||pvc-1|delete|if-supported").unwrap().unwrap();
        assert_eq!(relaxed.encryption, Some(EncryptionPolicy::IfSupported));
    }

    #[test]
    fn capabilities_need_mount_access_and_a_mode() {
        use volume_capability::access_mode::Mode;
        let capability = |access_type, mode: Option<Mode>| VolumeCapability {
            access_type,
            access_mode: mode.map(|m| volume_capability::AccessMode { mode: m as i32 }),
        };
        let mount = || Some(volume_capability::AccessType::Mount(Default::default()));
        let block = || Some(volume_capability::AccessType::Block(Default::default()));
        assert_eq!(check_capabilities(&[capability(mount(), Some(Mode::MultiNodeMultiWriter))]), Ok(()));
        assert!(check_capabilities(&[]).unwrap_err().contains("required"));
        let refused = check_capabilities(&[
            capability(mount(), Some(Mode::SingleNodeWriter)),
            capability(block(), Some(Mode::SingleNodeWriter)),
        ]);
        assert!(refused.unwrap_err().starts_with("volume_capabilities[1]: block access"));
        assert!(check_capabilities(&[capability(None, Some(Mode::SingleNodeWriter))]).is_err());
        assert!(check_capabilities(&[capability(mount(), Some(Mode::Unknown))]).is_err());
        assert!(check_capabilities(&[capability(mount(), None)]).is_err());
    }
}
