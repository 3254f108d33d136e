//! CreateVolume decided before any SMB traffic: the [`CreatePlan`] says
//! which volume a request makes (id, directory, capacity, clone source,
//! credentials), and whether a volume recorded under the same name is
//! compatible with it. Pure functions of the request, tested on crafted
//! requests; [`super::provision`] carries a plan out.

use std::collections::HashMap;

use tonic::Status;

use super::credentials::ShareKey;
use super::validate::{capacity_of, check_capabilities, check_not_reserved, parse_volume_id, MAX_NAME_LEN};
use super::{VolumeRecord, CONTEXT_ENCRYPTION, CONTEXT_SOURCE, CONTEXT_SUBDIR};
use crate::csi::proto::{
    volume_capability, volume_content_source, CreateVolumeRequest, Volume, VolumeCapability, VolumeContentSource,
};
use crate::mount::{ConnectTarget, MountOptions};
use crate::volume::params::encryption_name;
use crate::volume::{compact, SharePath, StorageClassParams, VolumeId};
use smb3::Credentials;

/// A validated CreateVolume request: everything decided before any SMB traffic.
pub(super) struct CreatePlan {
    pub(super) name: String,
    pub(super) id: VolumeId,
    pub(super) volume_id: String,
    pub(super) capacity: i64,
    pub(super) required: i64,
    pub(super) limit: i64,
    /// The explicit capacity range was absent: a clone takes its source's size.
    pub(super) capacity_unspecified: bool,
    /// The source volume's id as requested, and parsed.
    pub(super) clone_from: Option<(String, VolumeId)>,
    pub(super) creds: Credentials,
    /// Where CreateVolume connects: the StorageClass `source` with its `mountOptions` (`port=`, `ip=`, `sec=`).
    pub(super) connect: ConnectTarget,
}

impl CreatePlan {
    pub(super) fn from_request(req: &CreateVolumeRequest) -> Result<Self, Status> {
        let name = req.name.as_str();
        if name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(Status::invalid_argument(format!(
                "name is {} bytes; CSI allows at most {MAX_NAME_LEN}",
                name.len()
            )));
        }
        check_capabilities(&req.volume_capabilities).map_err(Status::invalid_argument)?;
        if !req.mutable_parameters.is_empty() {
            return Err(Status::invalid_argument(
                "mutable_parameters are not supported (this driver does not offer MODIFY_VOLUME)",
            ));
        }
        let (capacity, required, limit) = capacity_of(req.capacity_range.as_ref())?;
        let params = StorageClassParams::parse(&req.parameters).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let sub_dir = params.sub_dir_for(name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if params.sub_dir.is_none() && sub_dir.components().len() != 1 {
            return Err(Status::invalid_argument(format!(
                "name {name:?} is used as the volume's directory and must be a single path component"
            )));
        }
        check_not_reserved(&sub_dir)?;
        let options = mount_options(&req.volume_capabilities)?;
        // The port and address go into the id: DeleteVolume, which carries no mount options, connects as
        // CreateVolume did.
        let connect = ConnectTarget::new(&params.source, &options);
        let id = VolumeId {
            share: connect.share.clone(),
            sub_dir,
            on_delete: Some(params.on_delete),
            encryption: params.encryption,
            address: connect.address,
        };
        // Every valid name gets an id: a directory named after the request (the name, or a template) that is
        // too long to spell out in the id gets a shorter name. A literal subDir is the administrator's
        // choice of directory and is never renamed: too long is INVALID_ARGUMENT.
        let named_by_request = params.sub_dir.as_ref().is_none_or(|t| t.as_str().contains("${"));
        let fitted = if named_by_request { compact::fit(id) } else { id.encode().map(|encoded| (id, encoded)) };
        let (id, volume_id) = fitted.map_err(|e| Status::invalid_argument(e.to_string()))?;

        let clone_from = match req.volume_content_source.as_ref().and_then(|s| s.r#type.as_ref()) {
            None => None,
            Some(volume_content_source::Type::Snapshot(_)) => {
                return Err(Status::invalid_argument(
                    "volume_content_source: snapshots are not supported by this driver (clone from a volume instead)",
                ))
            }
            Some(volume_content_source::Type::Volume(source)) => {
                let source_id = source.volume_id.as_str();
                let parsed = match parse_volume_id(source_id)? {
                    Some(parsed) => parsed,
                    None => {
                        return Err(Status::not_found(format!(
                            "volume_content_source: source volume {source_id:?} does not exist (not a volume id of this driver)"
                        )))
                    }
                };
                if ShareKey::of(&parsed.share) != ShareKey::of(&id.share) {
                    return Err(Status::invalid_argument(format!(
                        "volume_content_source: source volume is on {}, the new volume on {}; \
                         clones are copied server-side and must be on the same share",
                        parsed.share.share_root(),
                        id.share.share_root()
                    )));
                }
                if parsed.sub_dir.is_root() {
                    return Err(Status::invalid_argument(
                        "volume_content_source: the source volume is a whole share; clone a volume with a subdir",
                    ));
                }
                let (src, dst) = (parsed.path_in_share(), id.path_in_share());
                if is_within(&dst, &src) || is_within(&src, &dst) {
                    return Err(Status::invalid_argument(format!(
                        "volume_content_source: the new volume's directory /{dst} and the source's /{src} overlap"
                    )));
                }
                Some((source_id.to_string(), parsed))
            }
        };

        let creds = crate::csi::credentials_from_secrets_for(&req.secrets, options.cruid)?.ok_or_else(|| {
            Status::invalid_argument(
                "a provisioner secret is required: set csi.storage.k8s.io/provisioner-secret-name and \
                 csi.storage.k8s.io/provisioner-secret-namespace in the StorageClass to a Secret with \
                 username, password and optionally domain (volumes are never created with guest access)",
            )
        })?;
        Ok(CreatePlan {
            name: name.to_string(),
            id,
            volume_id,
            capacity,
            required,
            limit,
            capacity_unspecified: req.capacity_range.is_none(),
            clone_from,
            creds,
            connect,
        })
    }

    pub(super) fn content_source_id(&self) -> &str {
        self.clone_from.as_ref().map(|(id, _)| id.as_str()).unwrap_or("")
    }

    /// Why an existing record does not match this request, if it does not.
    pub(super) fn incompatibility(&self, existing: &VolumeRecord) -> Option<String> {
        if existing.volume_id != self.volume_id {
            return Some(format!(
                "volume {:?} already exists as {:?}; this request would make {:?} (different source, subDir, onDelete or encryption)",
                self.name, existing.volume_id, self.volume_id
            ));
        }
        if existing.content_source != self.content_source_id() {
            return Some(format!(
                "volume {:?} already exists with content source {:?}, not {:?}",
                self.name,
                existing.content_source,
                self.content_source_id()
            ));
        }
        let fits =
            existing.capacity_bytes >= self.required && (self.limit == 0 || existing.capacity_bytes <= self.limit);
        if !fits {
            return Some(format!(
                "volume {:?} already exists with capacity {} bytes, outside the requested range (required {}, limit {})",
                self.name, existing.capacity_bytes, self.required, self.limit
            ));
        }
        None
    }

    pub(super) fn volume(&self, capacity: i64) -> Volume {
        Volume {
            capacity_bytes: capacity,
            volume_id: self.volume_id.clone(),
            volume_context: volume_context(&self.id),
            content_source: self.clone_from.as_ref().map(|(source_id, _)| VolumeContentSource {
                r#type: Some(volume_content_source::Type::Volume(volume_content_source::VolumeSource {
                    volume_id: source_id.clone(),
                })),
            }),
            accessible_topology: Vec::new(),
        }
    }
}

/// The StorageClass `mountOptions` (the mount flags of the requested capabilities), parsed as the node
/// parses them: a flag the node would refuse is refused here, before a directory is made for it.
fn mount_options(capabilities: &[VolumeCapability]) -> Result<MountOptions, Status> {
    let flags: Vec<String> = capabilities
        .iter()
        .filter_map(|c| match &c.access_type {
            Some(volume_capability::AccessType::Mount(m)) => Some(m.mount_flags.iter().cloned()),
            _ => None,
        })
        .flatten()
        .collect();
    MountOptions::parse(&flags)
        .map(|(options, _ignored)| options)
        .map_err(|e| Status::invalid_argument(format!("volume_capabilities: mount options: {e}")))
}

/// Whether `inner` is `outer` or below it (case-insensitively).
fn is_within(inner: &SharePath, outer: &SharePath) -> bool {
    let (inner, outer) = (inner.components(), outer.components());
    inner.len() >= outer.len() && inner.iter().zip(outer).all(|(a, b)| a.eq_ignore_ascii_case(b))
}

/// The volume context the node reads: where the volume is and how to connect.
pub(super) fn volume_context(id: &VolumeId) -> HashMap<String, String> {
    let mut context = HashMap::from([
        (CONTEXT_SOURCE.to_string(), id.share.to_string()),
        (CONTEXT_SUBDIR.to_string(), id.sub_dir.to_string()),
    ]);
    if let Some(policy) = id.encryption {
        context.insert(CONTEXT_ENCRYPTION.to_string(), encryption_name(policy).to_string());
    }
    context
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::controller::{RecordState, RECORD_DIR};
    use crate::csi::proto::{volume_capability, CapacityRange, VolumeCapability};
    use smb3::EncryptionPolicy;
    use tonic::Code;

    fn mount(mode: volume_capability::access_mode::Mode) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(Default::default())),
            access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }),
        }
    }

    fn request() -> CreateVolumeRequest {
        CreateVolumeRequest {
            name: "pvc-1".into(),
            capacity_range: Some(CapacityRange { required_bytes: 1 << 20, limit_bytes: 0 }),
            volume_capabilities: vec![mount(volume_capability::access_mode::Mode::MultiNodeMultiWriter)],
            parameters: HashMap::from([("source".into(), "//srv/share/k8s".into())]),
            secrets: HashMap::from([("username".into(), " bob ".into()), ("password".into(), "pw\n".into())]),
            ..Default::default()
        }
    }

    #[test]
    fn plan_from_a_good_request() {
        let plan = CreatePlan::from_request(&request()).unwrap();
        assert_eq!(plan.volume_id, "v1|srv||share|k8s|pvc-1|delete");
        assert_eq!(plan.capacity, 1 << 20);
        assert_eq!(plan.creds, Credentials::user("bob", "", smb3::Secret::new("pw")));
        let volume = plan.volume(plan.capacity);
        assert_eq!(volume.volume_context[CONTEXT_SOURCE], "//srv/share/k8s");
        assert_eq!(volume.volume_context[CONTEXT_SUBDIR], "pvc-1");
        assert_eq!(volume.volume_context.len(), 2);
    }

    #[test]
    fn mount_options_say_where_to_connect_and_the_id_keeps_it() {
        let with_flags = |flags: &[&str]| {
            let mut req = request();
            req.parameters.insert("source".into(), "//dc1.corp.example/share/k8s".into());
            req.volume_capabilities[0].access_type =
                Some(volume_capability::AccessType::Mount(volume_capability::MountVolume {
                    mount_flags: flags.iter().map(|f| f.to_string()).collect(),
                    ..Default::default()
                }));
            req.secrets = HashMap::from([("krb5cc_1000".into(), "bm90".into()), ("krb5cc_0".into(), "bm90".into())]);
            req
        };
        // cruid= picks the Secret key, as on the node (here a value that is no ccache, named by its key).
        let e = CreatePlan::from_request(&with_flags(&["sec=krb5,cruid=1000"])).err().unwrap();
        assert!(e.message().contains("krb5cc_1000"), "{e:?}");
        let mut req = with_flags(&["sec=krb5,ip=10.0.0.5", "port=1445"]);
        req.secrets = request().secrets;
        let plan = CreatePlan::from_request(&req).unwrap();
        assert_eq!(plan.volume_id, "v1|dc1.corp.example|1445|share|k8s|pvc-1|delete||10.0.0.5");
        assert_eq!(plan.connect.share.server(), "dc1.corp.example", "the name stays: it makes the SPN");
        assert_eq!(plan.connect.security, smb3::SecurityMechanism::Kerberos);
        assert_eq!(crate::mount::ConnectTarget::of_volume(&plan.id).address, plan.connect.address);
        assert_eq!(plan.volume(0).volume_context[CONTEXT_SOURCE], "//dc1.corp.example:1445/share/k8s");
        // A flag the node would refuse is refused here, named.
        let e = CreatePlan::from_request(&with_flags(&["ip=dc1"])).err().unwrap();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("mount option \"ip\": expected an IP address"), "{e:?}");
    }

    #[test]
    fn a_128_byte_name_gets_a_compact_id_the_same_on_every_retry() {
        let mut req = request();
        req.name = format!("pvc-{}", "0123456789abcdef".repeat(8)).chars().take(128).collect();
        req.parameters.insert("source".into(), "//smb-server.default.svc.cluster.local/share/k8s".into());
        let plan = CreatePlan::from_request(&req).unwrap();
        assert!(plan.volume_id.len() <= crate::volume::MAX_VOLUME_ID_LEN, "{}", plan.volume_id);
        assert_eq!(VolumeId::parse(&plan.volume_id).unwrap(), plan.id);
        let dir = plan.id.sub_dir.to_string();
        assert!(req.name.starts_with(dir.rsplit_once('-').unwrap().0), "{dir}");
        // The node finds the directory through the context as well as through the id.
        assert_eq!(plan.volume(0).volume_context[CONTEXT_SUBDIR], dir);
        assert_eq!(CreatePlan::from_request(&req).unwrap().volume_id, plan.volume_id);
        // A record of the same name with another id (here: the readable one) is an incompatible retry.
        let record = VolumeRecord {
            name: req.name.clone(),
            volume_id: format!("v1|srv||share|k8s|{}|delete", "x".repeat(40)),
            capacity_bytes: 1 << 20,
            content_source: String::new(),
            state: RecordState::Ready,
        };
        assert!(plan.incompatibility(&record).is_some());
        assert_eq!(plan.incompatibility(&VolumeRecord { volume_id: plan.volume_id.clone(), ..record }), None);
    }

    #[test]
    fn encryption_goes_into_the_id_and_the_context() {
        let mut req = request();
        req.parameters.insert("Encryption".into(), "Off".into());
        let plan = CreatePlan::from_request(&req).unwrap();
        assert_eq!(plan.volume_id, "v1|srv||share|k8s|pvc-1|delete|off");
        assert_eq!(plan.id.encryption, Some(EncryptionPolicy::Off));
        let volume = plan.volume(plan.capacity);
        assert_eq!(volume.volume_context[CONTEXT_ENCRYPTION], "off");
        assert_eq!(volume.volume_context.len(), 3);

        req.parameters.insert("Encryption".into(), "maybe".into());
        let refused = CreatePlan::from_request(&req).err().unwrap();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().contains("Encryption") && refused.message().contains("maybe"), "{refused:?}");
    }

    #[test]
    fn refusals() {
        let code = |f: &dyn Fn(&mut CreateVolumeRequest)| {
            let mut r = request();
            f(&mut r);
            CreatePlan::from_request(&r).err().map(|s| (s.code(), s.message().to_string()))
        };
        let (c, m) = code(&|r| r.secrets.clear()).unwrap();
        assert_eq!(c, Code::InvalidArgument);
        assert!(m.contains("a provisioner secret is required"), "{m}");
        let (c, m) = code(&|r| {
            r.secrets.remove("username");
        })
        .unwrap();
        assert_eq!(c, Code::InvalidArgument);
        assert!(m.contains("username") && !m.contains("pw"), "{m}");
        assert_eq!(code(&|r| r.name = "a/b".into()).unwrap().0, Code::InvalidArgument);
        assert_eq!(code(&|r| r.name = "x".repeat(129)).unwrap().0, Code::InvalidArgument);
        assert_eq!(code(&|r| r.name = RECORD_DIR.into()).unwrap().0, Code::InvalidArgument);
        assert_eq!(code(&|r| r.volume_capabilities[0].access_mode = None).unwrap().0, Code::InvalidArgument);
        assert_eq!(
            code(&|r| {
                r.mutable_parameters.insert("a".into(), "b".into());
            })
            .unwrap()
            .0,
            Code::InvalidArgument
        );
        let (c, m) = code(&|r| {
            r.volume_content_source = Some(VolumeContentSource {
                r#type: Some(volume_content_source::Type::Volume(volume_content_source::VolumeSource {
                    volume_id: "v1|srv||share|k8s|pvc-1/inner|delete".into(),
                })),
            });
            r.name = "pvc-1x".into();
            r.parameters.insert("subDir".into(), "pvc-1".into());
        })
        .unwrap();
        assert_eq!(c, Code::InvalidArgument, "{m}");
        assert!(m.contains("overlap"), "{m}");
        let (c, _) = code(&|r| {
            r.volume_content_source = Some(VolumeContentSource {
                r#type: Some(volume_content_source::Type::Volume(volume_content_source::VolumeSource {
                    volume_id: "v1|other||share|k8s|src|delete".into(),
                })),
            })
        })
        .unwrap();
        assert_eq!(c, Code::InvalidArgument);
        let (c, _) = code(&|r| {
            r.volume_content_source = Some(VolumeContentSource {
                r#type: Some(volume_content_source::Type::Volume(volume_content_source::VolumeSource {
                    volume_id: "no-such-volume".into(),
                })),
            })
        })
        .unwrap();
        assert_eq!(c, Code::NotFound);
    }

    #[test]
    fn incompatibility() {
        let plan = CreatePlan::from_request(&request()).unwrap();
        let record = VolumeRecord {
            name: "pvc-1".into(),
            volume_id: plan.volume_id.clone(),
            capacity_bytes: 1 << 20,
            content_source: String::new(),
            state: RecordState::Ready,
        };
        assert_eq!(plan.incompatibility(&record), None);
        let bigger = VolumeRecord { capacity_bytes: 2 << 20, ..record.clone() };
        assert_eq!(plan.incompatibility(&bigger), None, "expanded since: still satisfies required");
        let smaller = VolumeRecord { capacity_bytes: 1, ..record.clone() };
        assert!(plan.incompatibility(&smaller).unwrap().contains("capacity"));
        let other = VolumeRecord { volume_id: "v1|srv||share|k8s|pvc-1|retain".into(), ..record };
        assert!(plan.incompatibility(&other).is_some());
    }
}
