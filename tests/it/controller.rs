//! The Controller service against the private Samba, through the real gRPC
//! unix socket, driven the way external-provisioner drives it.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::csi::{create_request, delete, local_tree, provision, smb_ls, Claim, Plugin, StorageClass};
use sha2::{Digest, Sha256};
use smb3_csi::csi::proto::{
    controller_service_capability, volume_capability, CapacityRange, ControllerExpandVolumeRequest,
    ControllerGetCapabilitiesRequest, ControllerGetVolumeRequest, ControllerPublishVolumeRequest,
    CreateSnapshotRequest, CreateVolumeRequest, DeleteVolumeRequest, GetCapacityRequest, GetPluginCapabilitiesRequest,
    ListVolumesRequest, ValidateVolumeCapabilitiesRequest, VolumeCapability,
};
use smb3_testkit::{CorruptingProxy, Samba, SambaProfile};
use tonic::Code;

/// A fresh, empty base directory for one test, so tests sharing the Samba
/// never see each other's volumes.
fn base_dir(samba: &Samba, test: &str) -> String {
    let base = format!("ctl-{test}");
    let local = samba.share_path().join(&base);
    let _ = std::fs::remove_dir_all(&local);
    base
}

fn local(samba: &Samba, path: &str) -> std::path::PathBuf {
    samba.share_path().join(path)
}

/// Writes a file locally on the share, owned by the share's user.
fn write_local(samba: &Samba, path: &str, data: &[u8]) {
    let path = local(samba, path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, data).unwrap();
    let owner = std::fs::metadata(samba.share_path()).unwrap();
    use std::os::unix::fs::MetadataExt;
    for p in [path.as_path(), path.parent().unwrap()] {
        std::os::unix::fs::chown(p, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
}

fn sha256_file(path: &Path) -> String {
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path).unwrap();
    std::io::copy(&mut file, &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_and_unimplemented_rpcs() {
    let mut plugin = Plugin::start().await;
    let caps = plugin.controller.controller_get_capabilities(ControllerGetCapabilitiesRequest {}).await.unwrap();
    use controller_service_capability::rpc::Type;
    let got: HashSet<i32> = caps
        .into_inner()
        .capabilities
        .into_iter()
        .map(|c| match c.r#type {
            Some(controller_service_capability::Type::Rpc(rpc)) => rpc.r#type,
            None => panic!("capability without a type"),
        })
        .collect();
    let want: HashSet<i32> = [
        Type::CreateDeleteVolume,
        Type::CloneVolume,
        Type::ExpandVolume,
        Type::SingleNodeMultiWriter,
        Type::GetVolume,
        Type::VolumeCondition,
    ]
    .into_iter()
    .map(|t| t as i32)
    .collect();
    assert_eq!(got, want);
    let plugin_caps = plugin.identity.get_plugin_capabilities(GetPluginCapabilitiesRequest {}).await.unwrap();
    assert_eq!(plugin_caps.into_inner().capabilities.len(), 1);

    let c = &mut plugin.controller;
    assert_eq!(c.list_volumes(ListVolumesRequest::default()).await.unwrap_err().code(), Code::Unimplemented);
    assert_eq!(c.get_capacity(GetCapacityRequest::default()).await.unwrap_err().code(), Code::Unimplemented);
    assert_eq!(c.create_snapshot(CreateSnapshotRequest::default()).await.unwrap_err().code(), Code::Unimplemented);
    assert_eq!(
        c.controller_publish_volume(ControllerPublishVolumeRequest::default()).await.unwrap_err().code(),
        Code::Unimplemented
    );
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_delete_retain_archive_seen_on_the_server() {
    let samba = samba!();
    let base = base_dir(samba, "lifecycle");
    let mut plugin = Plugin::start().await;
    let class = StorageClass::for_samba(samba, &base).with("subDir", "${pvc.metadata.namespace}-${pvc.metadata.name}");

    // delete (the default): the tree goes, read-only files included.
    let claim = Claim::new("shop", "web", 5 << 30);
    let volume = provision(&mut plugin.controller, create_request(&class, &claim)).await.unwrap();
    assert_eq!(volume.capacity_bytes, 5 << 30);
    assert_eq!(volume.volume_context.get("subdir").map(String::as_str), Some("shop-web"));
    assert_eq!(volume.volume_context.get("source"), Some(&format!("//127.0.0.1:{}/share/{base}", samba.port())));
    assert_eq!(volume.volume_context.len(), 2, "{:?}", volume.volume_context);
    assert_eq!(volume.volume_id, format!("v1|127.0.0.1|{}|share|{base}|shop-web|delete", samba.port()));
    assert!(smb_ls(samba, &base).await.contains(&"shop-web".to_string()));
    let s = samba.smbclient(&format!("mkdir {base}/shop-web/sub; put /etc/hostname {base}/shop-web/sub/ro.txt; setmode {base}/shop-web/sub/ro.txt +r"));
    s.unwrap();
    delete(&mut plugin.controller, &volume.volume_id, &class).await.unwrap();
    assert!(!smb_ls(samba, &base).await.contains(&"shop-web".to_string()));
    // Deleting again, or a volume that never existed, is success.
    delete(&mut plugin.controller, &volume.volume_id, &class).await.unwrap();
    delete(&mut plugin.controller, "no-such-volume", &class).await.unwrap();

    // retain: the directory stays.
    let retain = class.clone().with("onDelete", "retain");
    let claim = Claim::new("shop", "kept", 1 << 30);
    let volume = provision(&mut plugin.controller, create_request(&retain, &claim)).await.unwrap();
    assert!(volume.volume_id.ends_with("|shop-kept|retain"), "{}", volume.volume_id);
    delete(&mut plugin.controller, &volume.volume_id, &retain).await.unwrap();
    assert!(smb_ls(samba, &base).await.contains(&"shop-kept".to_string()));

    // archive: renamed to archived-<subdir>, then with a unique suffix.
    let archive = class.clone().with("onDelete", "archive");
    let claim = Claim::new("shop", "old", 1 << 30);
    for round in 0..2 {
        let volume = provision(&mut plugin.controller, create_request(&archive, &claim)).await.unwrap();
        samba.smbclient(&format!("put /etc/hostname {base}/shop-old/round{round}.txt")).unwrap();
        delete(&mut plugin.controller, &volume.volume_id, &archive).await.unwrap();
    }
    let names = smb_ls(samba, &base).await;
    assert!(!names.contains(&"shop-old".to_string()), "{names:?}");
    let archived: Vec<&String> = names.iter().filter(|n| n.starts_with("archived-shop-old")).collect();
    assert_eq!(archived.len(), 2, "{names:?}");
    assert!(archived.contains(&&"archived-shop-old".to_string()), "{names:?}");
    assert!(smb_ls(samba, &format!("{base}/archived-shop-old")).await.contains(&"round0.txt".to_string()));

    // An incumbent (csi-driver-smb) handle is deleted too.
    samba.smbclient(&format!("mkdir {base}/legacy")).unwrap();
    let legacy = format!("127.0.0.1:{}/share/{base}#legacy#pvc-legacy#delete", samba.port());
    delete(&mut plugin.controller, &legacy, &class).await.unwrap();
    assert!(!smb_ls(samba, &base).await.contains(&"legacy".to_string()));

    // No records left: a retained directory is user data, no longer a volume.
    let records = smb_ls(samba, &format!("{base}/.smb3-csi")).await;
    assert!(records.is_empty(), "{records:?}");
    plugin.stop().await;
}

/// CSI allows 128-byte names; such a name cannot be spelled out in a 128-byte id next to the share, so the
/// volume gets a compact directory name, and every RPC that only has the id still finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_128_byte_name_creates_finds_and_deletes_its_volume() {
    let samba = samba!();
    let base = base_dir(samba, "longname");
    let mut plugin = Plugin::start().await;
    let class = StorageClass::for_samba(samba, &base);
    let claim = Claim::new("default", "long", 1 << 20);
    let mut request = create_request(&class, &claim);
    request.name = format!("pvc-{}", "0123456789abcdef".repeat(8)).chars().take(128).collect();
    assert_eq!(request.name.len(), 128);
    let volume = provision(&mut plugin.controller, request.clone()).await.unwrap();
    assert!(volume.volume_id.len() <= 128, "{} bytes: {}", volume.volume_id.len(), volume.volume_id);
    let dir = volume.volume_context["subdir"].clone();
    assert!(volume.volume_id.contains(&format!("|{dir}|")), "{} lacks {dir}", volume.volume_id);
    assert!(request.name.starts_with(dir.rsplit_once('-').unwrap().0), "{dir}");
    assert_eq!(smb_ls(samba, &base).await, vec![".smb3-csi".to_string(), dir.clone()]);

    // Idempotent: the same name gives the same volume; an incompatible retry is ALREADY_EXISTS.
    assert_eq!(provision(&mut plugin.controller, request.clone()).await.unwrap(), volume);
    let mut bigger = request.clone();
    bigger.capacity_range.as_mut().unwrap().required_bytes = 2 << 20;
    let err = provision(&mut plugin.controller, bigger).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    // Another 128-byte name differing only in its last byte is another volume.
    let mut other = request.clone();
    other.name.replace_range(127.., "X");
    let second = provision(&mut plugin.controller, other).await.unwrap();
    assert_ne!(second.volume_id, volume.volume_id);

    let got = plugin
        .controller
        .controller_get_volume(ControllerGetVolumeRequest { volume_id: volume.volume_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.volume.unwrap().volume_id, volume.volume_id);
    for v in [&volume, &second] {
        delete(&mut plugin.controller, &v.volume_id, &class).await.unwrap();
    }
    assert_eq!(smb_ls(samba, &base).await, vec![".smb3-csi".to_string()]);
    assert!(smb_ls(samba, &format!("{base}/.smb3-csi")).await.is_empty());
    let err = plugin
        .controller
        .controller_get_volume(ControllerGetVolumeRequest { volume_id: volume.volume_id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_is_byte_identical() {
    let samba = samba!();
    let base = base_dir(samba, "clone");
    let mut plugin = Plugin::start().await;
    let class = StorageClass::for_samba(samba, &base);
    let source_claim = Claim::new("default", "source", 100 << 20);
    let source = provision(&mut plugin.controller, create_request(&class, &source_claim)).await.unwrap();
    let src_dir = format!("{base}/{}", source_claim.pv_name());
    let mut pattern = vec![0u8; (64 << 20) + 3];
    for (i, b) in pattern.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2654435761) >> 13) as u8;
    }
    write_local(samba, &format!("{src_dir}/empty"), &[]);
    write_local(samba, &format!("{src_dir}/one"), b"x");
    write_local(samba, &format!("{src_dir}/nested/mib-plus-one"), &pattern[..(1 << 20) + 1]);
    write_local(samba, &format!("{src_dir}/nested/deeper/sixty-four-mib"), &pattern[..64 << 20]);

    let mut claim = Claim::new("default", "copy", 100 << 20);
    claim.clone_of = Some(source.volume_id.clone());
    let started = Instant::now();
    let clone = provision(&mut plugin.controller, create_request(&class, &claim)).await.unwrap();
    eprintln!("clone of 65 MiB took {:?}", started.elapsed());
    assert_eq!(clone.capacity_bytes, 100 << 20);
    let content = clone.content_source.expect("content_source echoed");
    assert!(format!("{content:?}").contains(&source.volume_id));

    let src = local(samba, &src_dir);
    let dst = local(samba, &format!("{base}/{}", claim.pv_name()));
    let (src_tree, dst_tree) = (local_tree(&src), local_tree(&dst));
    assert_eq!(src_tree, dst_tree);
    assert_eq!(src_tree.len(), 6, "{src_tree:?}");
    for (path, _) in src_tree.iter().filter(|(p, _)| !p.ends_with('/')) {
        assert_eq!(sha256_file(&src.join(path)), sha256_file(&dst.join(path)), "{path}");
    }
    // Idempotent: the same clone request returns the same volume, no second copy.
    let again = provision(&mut plugin.controller, create_request(&class, &claim)).await.unwrap();
    assert_eq!(again.volume_id, clone.volume_id);

    // A smaller volume than the source is OUT_OF_RANGE; a missing source NOT_FOUND.
    let mut small = Claim::new("default", "small", 1 << 20);
    small.clone_of = Some(source.volume_id.clone());
    let err = provision(&mut plugin.controller, create_request(&class, &small)).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    let mut orphan = Claim::new("default", "orphan", 1 << 20);
    orphan.clone_of = Some(format!("v1|127.0.0.1|{}|share|{base}|never-existed|delete", samba.port()));
    let err = provision(&mut plugin.controller, create_request(&class, &orphan)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let names = smb_ls(samba, &base).await;
    assert!(!names.contains(&small.pv_name()) && !names.contains(&orphan.pv_name()), "{names:?}");

    delete(&mut plugin.controller, &clone.volume_id, &class).await.unwrap();
    delete(&mut plugin.controller, &source.volume_id, &class).await.unwrap();
    assert!(!dst.exists() && !src.exists());
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_survives_a_restart_and_conflicts_are_already_exists() {
    let samba = samba!();
    let base = base_dir(samba, "idem");
    let mut plugin = Plugin::start().await;
    let class = StorageClass::for_samba(samba, &base);
    let claim = Claim::new("default", "data", 1 << 30);
    let first = provision(&mut plugin.controller, create_request(&class, &claim)).await.unwrap();
    let second = provision(&mut plugin.controller, create_request(&class, &claim)).await.unwrap();
    assert_eq!(first, second);

    // Bigger capacity, other onDelete, other subDir: same name, incompatible.
    let mut bigger = claim.clone();
    bigger.storage = 2 << 30;
    let err = provision(&mut plugin.controller, create_request(&class, &bigger)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let err = provision(&mut plugin.controller, create_request(&class.clone().with("onDelete", "retain"), &claim))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let err = provision(&mut plugin.controller, create_request(&class.clone().with("subDir", "elsewhere"), &claim))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    // Another name for an existing volume's directory.
    let shared = class.clone().with("subDir", "${pvc.metadata.namespace}");
    let owner = Claim::new("team", "a", 1);
    let a = provision(&mut plugin.controller, create_request(&shared, &owner)).await.unwrap();
    let err =
        provision(&mut plugin.controller, create_request(&shared, &Claim::new("team", "b", 1))).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains(&owner.pv_name()), "{}", err.message());
    // A crash between the two record writes (they go out together) that lost the directories' records: the
    // external-provisioner's retries put them back, and the directory is refused to another name again.
    let records = local(samba, &format!("{base}/.smb3-csi"));
    let dir_records = || {
        let names = std::fs::read_dir(&records).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned());
        names.filter(|n| n.starts_with("dir-")).collect::<Vec<_>>()
    };
    assert_eq!(dir_records().len(), 2);
    for n in dir_records() {
        std::fs::remove_file(records.join(n)).unwrap();
    }
    assert_eq!(provision(&mut plugin.controller, create_request(&shared, &owner)).await.unwrap(), a);
    assert_eq!(provision(&mut plugin.controller, create_request(&class, &claim)).await.unwrap(), first);
    assert_eq!(dir_records().len(), 2, "the retries did not write the directories' records again");
    let err =
        provision(&mut plugin.controller, create_request(&shared, &Claim::new("team", "b", 1))).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    // A new controller process (no memory) gives the same answers.
    plugin.stop().await;
    let mut plugin = Plugin::start().await;
    let after_restart = provision(&mut plugin.controller, create_request(&class, &claim)).await.unwrap();
    assert_eq!(after_restart, first);
    let err = provision(&mut plugin.controller, create_request(&class, &bigger)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    delete(&mut plugin.controller, &first.volume_id, &class).await.unwrap();
    delete(&mut plugin.controller, &a.volume_id, &shared).await.unwrap();
    assert_eq!(smb_ls(samba, &base).await, vec![".smb3-csi".to_string()]);
    assert!(smb_ls(samba, &format!("{base}/.smb3-csi")).await.is_empty());
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_calls_for_twenty_five_names() {
    let samba = samba!();
    let base = base_dir(samba, "concurrent");
    let plugin = Plugin::start().await;
    let class = StorageClass::for_samba(samba, &base);
    let claims: Vec<Claim> = (0..25).map(|i| Claim::new("load", &format!("c{i}"), 1 << 20)).collect();

    let mut tasks = Vec::new();
    for claim in claims.iter().chain(claims.iter()) {
        let mut controller = plugin.controller.clone();
        let request = create_request(&class, claim);
        tasks.push(tokio::spawn(async move { provision(&mut controller, request).await }));
    }
    let mut ids = std::collections::HashMap::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let volume = task.await.unwrap().unwrap();
        let name = claims[i % 25].pv_name();
        let previous = ids.insert(name.clone(), volume.volume_id.clone());
        if let Some(previous) = previous {
            assert_eq!(previous, volume.volume_id, "{name}: two different volumes");
        }
    }
    assert_eq!(ids.len(), 25);
    let mut expected: Vec<String> = claims.iter().map(Claim::pv_name).collect();
    expected.push(".smb3-csi".into());
    expected.sort();
    assert_eq!(smb_ls(samba, &base).await, expected, "one directory per name");
    assert_eq!(smb_ls(samba, &format!("{base}/.smb3-csi")).await.len(), 50);

    let mut tasks = Vec::new();
    for id in ids.values().chain(ids.values()) {
        let mut controller = plugin.controller.clone();
        let (id, class) = (id.clone(), class.clone());
        tasks.push(tokio::spawn(async move { delete(&mut controller, &id, &class).await }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(smb_ls(samba, &base).await, vec![".smb3-csi".to_string()], "leftover volumes");
    assert!(smb_ls(samba, &format!("{base}/.smb3-csi")).await.is_empty(), "leftover records");
    plugin.stop().await;
}

fn mount_capability(mode: volume_capability::access_mode::Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(Default::default())),
        access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_their_code_and_touch_nothing() {
    // A Samba of its own: the whole share is compared before and after, and other
    // tests of this binary change the shared one concurrently.
    let own = match Samba::start(SambaProfile::EncryptRequired) {
        Ok(s) => s,
        Err(e) if e.is_unavailable() && !smb3_testkit::running_in_ci() => {
            eprintln!("skipped: {e}");
            return;
        }
        Err(e) => panic!("starting Samba: {e}"),
    };
    let samba = &own;
    let base = base_dir(samba, "malformed");
    std::fs::create_dir_all(local(samba, &base)).unwrap();
    let mut plugin = Plugin::start().await;
    let class = StorageClass::for_samba(samba, &base);
    let good = create_request(&class, &Claim::new("default", "good", 1 << 20));
    let before = local_tree(samba.share_path());

    type Edit = Box<dyn Fn(&mut CreateVolumeRequest)>;
    let cases: Vec<(&str, Edit, Code, &str)> = vec![
        ("missing name", Box::new(|r| r.name.clear()), Code::InvalidArgument, "name"),
        (
            "missing capabilities",
            Box::new(|r| r.volume_capabilities.clear()),
            Code::InvalidArgument,
            "volume_capabilities",
        ),
        (
            "block access",
            Box::new(|r| {
                r.volume_capabilities[0].access_type = Some(volume_capability::AccessType::Block(Default::default()))
            }),
            Code::InvalidArgument,
            "block",
        ),
        (
            "no access mode",
            Box::new(|r| r.volume_capabilities[0].access_mode = None),
            Code::InvalidArgument,
            "access_mode",
        ),
        (
            "unknown parameter",
            Box::new(|r| {
                r.parameters.insert("mountPermissions".into(), "0777".into());
            }),
            Code::InvalidArgument,
            "mountPermissions",
        ),
        ("missing secret", Box::new(|r| r.secrets.clear()), Code::InvalidArgument, "a provisioner secret is required"),
        (
            "secret without username",
            Box::new(|r| {
                r.secrets.remove("username");
            }),
            Code::InvalidArgument,
            "username",
        ),
        (
            "traversal subDir",
            Box::new(|r| {
                r.parameters.insert("subDir".into(), "../${pvc.metadata.name}".into());
            }),
            Code::InvalidArgument,
            "..",
        ),
        (
            "traversal in metadata",
            Box::new(|r| {
                r.parameters.insert("subDir".into(), "x/${pvc.metadata.name}".into());
                r.parameters.insert("csi.storage.k8s.io/pvc/name".into(), "..".into());
            }),
            Code::InvalidArgument,
            "..",
        ),
        (
            "absolute subDir",
            Box::new(|r| {
                r.parameters.insert("subDir".into(), "/etc".into());
            }),
            Code::InvalidArgument,
            "subDir",
        ),
        (
            "control character",
            Box::new(|r| {
                r.parameters.insert("subDir".into(), "a\u{1}b".into());
            }),
            Code::InvalidArgument,
            "control",
        ),
        (
            "component over 255 bytes",
            Box::new(|r| {
                r.parameters.insert("subDir".into(), "n".repeat(256));
            }),
            Code::InvalidArgument,
            "255",
        ),
        (
            "bad source",
            Box::new(|r| {
                r.parameters.insert("source".into(), "server/share".into());
            }),
            Code::InvalidArgument,
            "source",
        ),
        (
            "missing source",
            Box::new(|r| {
                r.parameters.remove("source");
            }),
            Code::InvalidArgument,
            "source",
        ),
        ("129-byte name", Box::new(|r| r.name = "n".repeat(129)), Code::InvalidArgument, "128"),
        (
            "volume id over 128 bytes",
            Box::new(|r| {
                r.parameters.insert("subDir".into(), "d".repeat(120));
            }),
            Code::InvalidArgument,
            "128",
        ),
        (
            "required over limit",
            Box::new(|r| r.capacity_range = Some(CapacityRange { required_bytes: 10, limit_bytes: 5 })),
            Code::InvalidArgument,
            "limit",
        ),
        (
            "records directory",
            Box::new(|r| {
                r.parameters.insert("subDir".into(), ".smb3-csi/x".into());
            }),
            Code::InvalidArgument,
            ".smb3-csi",
        ),
        (
            "snapshot source",
            Box::new(|r| {
                r.volume_content_source = Some(smb3_csi::csi::proto::VolumeContentSource {
                    r#type: Some(smb3_csi::csi::proto::volume_content_source::Type::Snapshot(Default::default())),
                })
            }),
            Code::InvalidArgument,
            "snapshot",
        ),
    ];
    for (what, edit, code, needle) in &cases {
        let mut request = good.clone();
        edit(&mut request);
        let err = plugin.controller.create_volume(request).await.expect_err(what);
        assert_eq!(err.code(), *code, "{what}: {err:?}");
        assert!(err.message().contains(needle), "{what}: {:?} lacks {needle:?}", err.message());
        assert!(!err.message().contains(samba.password().expose()), "{what}: secret in the message");
    }

    // Other RPCs: malformed ids and missing fields.
    let c = &mut plugin.controller;
    let long_id = "v".repeat(129);
    let err = c
        .delete_volume(DeleteVolumeRequest { volume_id: long_id.clone(), secrets: class.secrets() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err =
        c.delete_volume(DeleteVolumeRequest { volume_id: String::new(), secrets: class.secrets() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let forged = format!("v1|127.0.0.1|{}|share||.smb3-csi|delete", samba.port());
    let err = c.delete_volume(DeleteVolumeRequest { volume_id: forged, secrets: class.secrets() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .controller_expand_volume(ControllerExpandVolumeRequest { volume_id: long_id.clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c.controller_get_volume(ControllerGetVolumeRequest { volume_id: String::new() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
            volume_id: format!("v1|127.0.0.1|{}|share|{base}|x|delete", samba.port()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    assert_eq!(local_tree(samba.share_path()), before, "a refused request changed the share");
    plugin.stop().await;
}

type Call = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tonic::Status>> + Send>>;

/// One row per error case of the spec's tables for the Controller RPCs that take a volume id: a missing
/// required field is INVALID_ARGUMENT, a volume that does not exist is NOT_FOUND (DeleteVolume: OK, it is
/// idempotent), whether the id is another driver's or one of ours whose directory is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_error_codes_follow_the_spec_tables() {
    let samba = samba!();
    let base = base_dir(samba, "codes");
    let mut plugin = Plugin::start().await;
    let class = StorageClass::for_samba(samba, &base);
    // A volume that existed: created, then deleted.
    let gone = provision(&mut plugin.controller, create_request(&class, &Claim::new("default", "gone", 1 << 20)))
        .await
        .unwrap()
        .volume_id;
    delete(&mut plugin.controller, &gone, &class).await.unwrap();
    let foreign = "not-a-volume-of-this-driver".to_string();
    let caps = vec![mount_capability(volume_capability::access_mode::Mode::MultiNodeMultiWriter)];
    let range = Some(CapacityRange { required_bytes: 2 << 20, limit_bytes: 0 });
    let secrets = class.secrets();

    let c = plugin.controller.clone();
    let delete_call = |volume_id: &str| -> Call {
        let (mut c, request) =
            (c.clone(), DeleteVolumeRequest { volume_id: volume_id.into(), secrets: secrets.clone() });
        Box::pin(async move { c.delete_volume(request).await.map(drop) })
    };
    let validate = |volume_id: &str, volume_capabilities: Vec<VolumeCapability>| -> Call {
        let mut c = c.clone();
        let request = ValidateVolumeCapabilitiesRequest {
            volume_id: volume_id.into(),
            volume_capabilities,
            secrets: secrets.clone(),
            ..Default::default()
        };
        Box::pin(async move { c.validate_volume_capabilities(request).await.map(drop) })
    };
    let expand = |volume_id: &str, capacity_range: Option<CapacityRange>| -> Call {
        let mut c = c.clone();
        let request = ControllerExpandVolumeRequest {
            volume_id: volume_id.into(),
            capacity_range,
            secrets: secrets.clone(),
            ..Default::default()
        };
        Box::pin(async move { c.controller_expand_volume(request).await.map(drop) })
    };
    let get = |volume_id: &str| -> Call {
        let (mut c, request) = (c.clone(), ControllerGetVolumeRequest { volume_id: volume_id.into() });
        Box::pin(async move { c.controller_get_volume(request).await.map(drop) })
    };
    let cases: Vec<(&str, Call, Option<Code>)> = vec![
        ("DeleteVolume: no volume id", delete_call(""), Some(Code::InvalidArgument)),
        ("DeleteVolume: another driver's id", delete_call(&foreign), None),
        ("DeleteVolume: already deleted", delete_call(&gone), None),
        ("ValidateVolumeCapabilities: no volume id", validate("", caps.clone()), Some(Code::InvalidArgument)),
        ("ValidateVolumeCapabilities: no capabilities", validate(&gone, vec![]), Some(Code::InvalidArgument)),
        ("ValidateVolumeCapabilities: another driver's id", validate(&foreign, caps.clone()), Some(Code::NotFound)),
        ("ValidateVolumeCapabilities: deleted volume", validate(&gone, caps.clone()), Some(Code::NotFound)),
        ("ControllerExpandVolume: no volume id", expand("", range), Some(Code::InvalidArgument)),
        ("ControllerExpandVolume: no capacity range", expand(&gone, None), Some(Code::InvalidArgument)),
        ("ControllerExpandVolume: another driver's id", expand(&foreign, range), Some(Code::NotFound)),
        ("ControllerExpandVolume: deleted volume", expand(&gone, range), Some(Code::NotFound)),
        ("ControllerGetVolume: no volume id", get(""), Some(Code::InvalidArgument)),
        ("ControllerGetVolume: another driver's id", get(&foreign), Some(Code::NotFound)),
        ("ControllerGetVolume: deleted volume", get(&gone), Some(Code::NotFound)),
    ];
    for (name, call, want) in cases {
        let got = call.await.err().map(|status| status.code());
        assert_eq!(got, want, "{name}");
    }
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smb_failures_map_to_codes_without_secrets() {
    let samba = samba!();
    let base = base_dir(samba, "failures");
    let mut plugin = Plugin::start().await;
    let claim = Claim::new("default", "x", 1);

    let wrong_password = smb3_testkit::run_log::test_password("not-the-password-42");
    let wrong = StorageClass::for_samba(samba, &base).with_password(wrong_password.expose());
    let err = plugin.controller.create_volume(create_request(&wrong, &claim)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("STATUS_LOGON_FAILURE"), "{}", err.message());
    assert!(!err.message().contains("not-the-password-42"), "{}", err.message());
    assert!(!err.message().contains(samba.password().expose()));

    let no_share =
        StorageClass::for_samba(samba, &base).with("source", &format!("//127.0.0.1:{}/no-such-share", samba.port()));
    let err = plugin.controller.create_volume(create_request(&no_share, &claim)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("STATUS_BAD_NETWORK_NAME"), "{}", err.message());

    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let unreachable = StorageClass::for_samba(samba, &base).with("source", &format!("//127.0.0.1:{port}/share"));
    let err = plugin.controller.create_volume(create_request(&unreachable, &claim)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    // Access denied: a directory the share's user cannot write into.
    let locked = local(samba, &format!("{base}/locked"));
    std::fs::create_dir_all(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    let denied = StorageClass::for_samba(samba, &format!("{base}/locked"));
    let err = plugin.controller.create_volume(create_request(&denied, &claim)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("STATUS_ACCESS_DENIED"), "{}", err.message());
    plugin.stop().await;
}

/// The shared Samba of `profile`, or `None` (skip) when Samba is not installed outside CI.
fn shared_samba(profile: SambaProfile) -> Option<&'static Samba> {
    let samba = Samba::shared(profile);
    if samba.is_none() {
        eprintln!("skipped: Samba is not installed (CI=true makes this a failure)");
    }
    samba
}

/// `(protocol, encryption)` of each SMB session in `smbstatus -b`.
fn sessions(samba: &Samba) -> Vec<(String, String)> {
    let status = samba.smbstatus().unwrap();
    status
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let at = fields.iter().position(|f| f.starts_with("SMB2_") || f.starts_with("SMB3_"))?;
            Some((fields[at].to_string(), fields.get(at + 1)?.to_string()))
        })
        .collect()
}

/// The controller's default stays `required`; a StorageClass relaxes it for its own volumes only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encryption_off_per_storage_class() {
    let Some(signing) = shared_samba(SambaProfile::SigningOnly) else { return };
    let Some(smb2) = shared_samba(SambaProfile::MaxProtocol("SMB2_10")) else { return };
    let mut plugin = Plugin::start().await;

    // A server that encrypts only when asked: `off` gives signed-only sessions.
    let base = base_dir(signing, "enc-off");
    let class = StorageClass::for_samba(signing, &base).with("encryption", "off");
    let claim = Claim::new("lab", "plain", 1 << 30);
    let volume = provision(&mut plugin.controller, create_request(&class, &claim)).await.unwrap();
    let expected_id = format!("v1|127.0.0.1|{}|share|{base}|{}|delete|off", signing.port(), claim.pv_name());
    assert_eq!(volume.volume_id, expected_id);
    assert_eq!(volume.volume_context.get("encryption").map(String::as_str), Some("off"));
    assert!(smb_ls(signing, &base).await.contains(&claim.pv_name()));
    let ours = sessions(signing);
    assert!(!ours.is_empty(), "{}", signing.smbstatus().unwrap());
    assert!(ours.iter().all(|(_, encryption)| encryption == "-"), "sessions should be signed only: {ours:?}");
    delete(&mut plugin.controller, &volume.volume_id, &class).await.unwrap();
    assert!(!smb_ls(signing, &base).await.contains(&claim.pv_name()));

    // A server that cannot encrypt at all (SMB 2.1): the default policy refuses it before sending credentials.
    let base = base_dir(smb2, "enc-off");
    let strict = StorageClass::for_samba(smb2, &base);
    let claim = Claim::new("lab", "strict", 1 << 30);
    let err = plugin.controller.create_volume(create_request(&strict, &claim)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("encryption required"), "{}", err.message());
    assert!(err.message().contains("StorageClass parameter encryption"), "{}", err.message());
    assert!(!err.message().contains(smb2.password().expose()), "{}", err.message());
    assert!(!smb2.share_path().join(&base).exists(), "a refused volume left a directory");

    // The same StorageClass with `encryption: off` works, and every later RPC uses the volume's policy.
    let relaxed = strict.clone().with("encryption", "off");
    let volume = provision(&mut plugin.controller, create_request(&relaxed, &claim)).await.unwrap();
    assert!(volume.volume_id.ends_with("|delete|off"), "{}", volume.volume_id);
    let got = plugin
        .controller
        .controller_get_volume(ControllerGetVolumeRequest { volume_id: volume.volume_id.clone() })
        .await
        .unwrap()
        .into_inner();
    let condition = got.status.unwrap().volume_condition.unwrap();
    assert!(!condition.abnormal, "{condition:?}");
    assert_eq!(got.volume.unwrap().volume_context.get("encryption").map(String::as_str), Some("off"));
    let expanded = plugin
        .controller
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: volume.volume_id.clone(),
            capacity_range: Some(CapacityRange { required_bytes: 2 << 30, limit_bytes: 0 }),
            secrets: relaxed.secrets(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(expanded.into_inner().capacity_bytes, 2 << 30);
    assert!(sessions(smb2).iter().all(|(protocol, _)| protocol == "SMB2_10"), "{}", smb2.smbstatus().unwrap());
    delete(&mut plugin.controller, &volume.volume_id, &relaxed).await.unwrap();
    assert!(!smb_ls(smb2, &base).await.contains(&claim.pv_name()));
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expand_validate_and_volume_condition() {
    let samba = samba!();
    let base = base_dir(samba, "expand");
    let mut plugin = Plugin::start().await;
    let proxy = CorruptingProxy::start(samba.addr()).unwrap();
    let class = StorageClass::for_samba(samba, &base);
    let claim = Claim::new("default", "grow", 1 << 30);
    let volume = provision(&mut plugin.controller, create_request(&class, &claim)).await.unwrap();
    let c = &mut plugin.controller;

    let expand = |required: i64| ControllerExpandVolumeRequest {
        volume_id: volume.volume_id.clone(),
        capacity_range: Some(CapacityRange { required_bytes: required, limit_bytes: 0 }),
        secrets: Default::default(),
        volume_capability: Some(mount_capability(volume_capability::access_mode::Mode::MultiNodeMultiWriter)),
    };
    let grown = c.controller_expand_volume(expand(3 << 30)).await.unwrap().into_inner();
    assert_eq!(grown.capacity_bytes, 3 << 30);
    assert!(!grown.node_expansion_required);
    // No shrinking: a smaller request reports the current size.
    assert_eq!(c.controller_expand_volume(expand(2 << 30)).await.unwrap().into_inner().capacity_bytes, 3 << 30);

    let get = |id: &str| ControllerGetVolumeRequest { volume_id: id.to_string() };
    let got = c.controller_get_volume(get(&volume.volume_id)).await.unwrap().into_inner();
    assert_eq!(got.volume.as_ref().unwrap().capacity_bytes, 3 << 30);
    let condition = got.status.unwrap().volume_condition.unwrap();
    assert!(!condition.abnormal, "{condition:?}");
    // The record on the share carries the new size: a restarted controller agrees.
    let recreated = provision(c, create_request(&class, &claim)).await.unwrap();
    assert_eq!(recreated.capacity_bytes, 3 << 30);

    // ValidateVolumeCapabilities: mount in any mode is confirmed, block is not.
    let validate = |caps: Vec<VolumeCapability>| ValidateVolumeCapabilitiesRequest {
        volume_id: volume.volume_id.clone(),
        volume_capabilities: caps,
        ..Default::default()
    };
    use volume_capability::access_mode::Mode;
    for mode in
        [Mode::MultiNodeMultiWriter, Mode::SingleNodeMultiWriter, Mode::SingleNodeWriter, Mode::MultiNodeReaderOnly]
    {
        let r = c.validate_volume_capabilities(validate(vec![mount_capability(mode)])).await.unwrap().into_inner();
        assert!(r.confirmed.is_some(), "{mode:?}: {}", r.message);
    }
    let block = VolumeCapability {
        access_type: Some(volume_capability::AccessType::Block(Default::default())),
        access_mode: Some(volume_capability::AccessMode { mode: Mode::SingleNodeWriter as i32 }),
    };
    let r = c.validate_volume_capabilities(validate(vec![block])).await.unwrap().into_inner();
    assert!(r.confirmed.is_none() && r.message.contains("block"), "{r:?}");
    let missing = format!("v1|127.0.0.1|{}|share|{base}|never|delete", samba.port());
    let err = c
        .validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
            volume_id: missing.clone(),
            volume_capabilities: vec![mount_capability(Mode::MultiNodeMultiWriter)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Condition: the directory removed behind the driver's back.
    samba.smbclient(&format!("rmdir {base}/{}", claim.pv_name())).unwrap();
    let got = c.controller_get_volume(get(&volume.volume_id)).await.unwrap().into_inner();
    let condition = got.status.unwrap().volume_condition.unwrap();
    assert!(condition.abnormal && condition.message.contains("gone"), "{condition:?}");
    assert_eq!(c.controller_get_volume(get(&missing)).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(c.controller_get_volume(get("not-a-volume")).await.unwrap_err().code(), Code::NotFound);
    let err = c.controller_expand_volume(expand(4 << 30)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    delete(c, &volume.volume_id, &class).await.unwrap();

    // Condition: the share unreachable (a volume reached through a proxy that goes away).
    let via_proxy = class.clone().with("source", &format!("//127.0.0.1:{}/share/{base}", proxy.addr().port()));
    let far = Claim::new("default", "far", 1);
    let far_volume = provision(c, create_request(&via_proxy, &far)).await.unwrap();
    let got = c.controller_get_volume(get(&far_volume.volume_id)).await.unwrap().into_inner();
    assert!(!got.status.unwrap().volume_condition.unwrap().abnormal);
    drop(proxy);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = c.controller_get_volume(get(&far_volume.volume_id)).await.unwrap().into_inner();
    let condition = got.status.unwrap().volume_condition.unwrap();
    assert!(condition.abnormal && condition.message.contains("unreachable"), "{condition:?}");

    // A controller that has seen no secrets for the share cannot check it.
    plugin.stop().await;
    let mut fresh = Plugin::start().await;
    let got = fresh.controller.controller_get_volume(get(&far_volume.volume_id)).await.unwrap().into_inner();
    let condition = got.status.unwrap().volume_condition.unwrap();
    assert!(!condition.abnormal && condition.message.contains("credentials"), "{condition:?}");
    let _ = std::fs::remove_dir_all(local(samba, &base));
    fresh.stop().await;
}

/// Prints the p50 of a warm CreateVolume (session pooled, directory new);
/// run with `--nocapture` to see it. No timing is asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_create_volume_latency() {
    let samba = samba!();
    let base = base_dir(samba, "bench");
    let mut plugin = Plugin::start().await;
    let class = StorageClass::for_samba(samba, &base);
    let warmup = provision(&mut plugin.controller, create_request(&class, &Claim::new("b", "warm", 1))).await.unwrap();
    let mut times = Vec::new();
    let mut ids = vec![warmup.volume_id];
    for i in 0..200 {
        let request = create_request(&class, &Claim::new("b", &format!("v{i}"), 1 << 20));
        let started = Instant::now();
        let volume = plugin.controller.create_volume(request).await.unwrap().into_inner().volume.unwrap();
        times.push(started.elapsed());
        ids.push(volume.volume_id);
    }
    times.sort();
    eprintln!(
        "warm CreateVolume over {} calls: p50 {:?}, p90 {:?}, max {:?}",
        times.len(),
        times[times.len() / 2],
        times[times.len() * 9 / 10],
        times[times.len() - 1]
    );
    for id in &ids {
        delete(&mut plugin.controller, id, &class).await.unwrap();
    }
    assert_eq!(smb_ls(samba, &base).await, vec![".smb3-csi".to_string()]);
    plugin.stop().await;
}

/// The binary: `smb3-csi controller` serves Identity + Controller and
/// removes its socket on SIGTERM; `node` needs a node id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("csi.sock");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_smb3-csi"))
        .args(["controller", "--endpoint", &format!("unix://{}", socket.display()), "--driver-name", "smb3.csi.dev"])
        .stdout(smb3_testkit::run_log::stdio("plugin"))
        .stderr(smb3_testkit::run_log::stdio("plugin"))
        .spawn()
        .unwrap();
    let channel = crate::common::csi::connect(&socket).await;
    let mut identity = smb3_csi::csi::proto::identity_client::IdentityClient::new(channel.clone());
    let info = identity.get_plugin_info(smb3_csi::csi::proto::GetPluginInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.name, "smb3.csi.dev");
    let mut controller = smb3_csi::csi::proto::controller_client::ControllerClient::new(channel);
    let caps = controller.controller_get_capabilities(ControllerGetCapabilitiesRequest {}).await.unwrap();
    assert_eq!(caps.into_inner().capabilities.len(), 6);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "socket left behind");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smb3-csi"))
        .args(["node", "--endpoint", &format!("unix://{}", socket.display())])
        .env_remove("NODE_ID")
        .output()
        .unwrap();
    smb3_testkit::run_log::record_output("cli", &out);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--node-id"), "{out:?}");
}
