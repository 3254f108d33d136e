//! A minimal external-provisioner for the e2e run (see `main.rs`).
//!
//! One reconcile pass: provision every Pending claim of our StorageClasses that has no PV yet, and
//! delete every Released PV of ours whose reclaim policy is Delete. Names, parameters and secret
//! handling follow external-provisioner: PV name `pvc-<claim uid>`, `csi.storage.k8s.io/*` keys
//! stripped from the parameters, the `--extra-create-metadata` keys added, provisioner and
//! node-stage Secret references resolved with `${pvc.namespace}`, `${pvc.name}`, `${pv.name}`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use smb3_csi::csi::proto::controller_client::ControllerClient;
use smb3_csi::csi::proto::volume_capability::access_mode::Mode;
use smb3_csi::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use smb3_csi::csi::proto::{CapacityRange, CreateVolumeRequest, DeleteVolumeRequest, VolumeCapability};

const PREFIX: &str = "csi.storage.k8s.io/";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const DELETION_SECRET_NAME: &str = "volume.kubernetes.io/provisioner-deletion-secret-name";
const DELETION_SECRET_NAMESPACE: &str = "volume.kubernetes.io/provisioner-deletion-secret-namespace";

/// Where the provisioner finds the API server and the controller.
pub struct Config {
    pub kubectl: PathBuf,
    pub kubeconfig: PathBuf,
    pub controller_socket: PathBuf,
    pub driver: String,
}

impl Config {
    /// From `KUBECTL`, `KUBECONFIG`, `E2E_CONTROLLER_SOCKET`, `E2E_DRIVER`.
    pub fn from_env() -> Result<Self, String> {
        let var = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
        Ok(Config {
            kubectl: var("KUBECTL")?.into(),
            kubeconfig: var("KUBECONFIG")?.into(),
            controller_socket: var("E2E_CONTROLLER_SOCKET")?.into(),
            driver: var("E2E_DRIVER")?,
        })
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        use std::io::Write;
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running kubectl: {e}"))?;
        if let Some(input) = stdin {
            child.stdin.take().expect("piped").write_all(input.as_bytes()).map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "kubectl {}: {}",
                args.first().unwrap_or(&""),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A claim as the provisioner needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub class: String,
    pub phase: String,
    pub volume_name: String,
    pub request: String,
    pub access_modes: Vec<String>,
}

const CLAIMS_TEMPLATE: &str = concat!(
    "{{range .items}}{{.metadata.namespace}}\t{{.metadata.name}}\t{{.metadata.uid}}\t",
    "{{with .spec.storageClassName}}{{.}}{{end}}\t{{.status.phase}}\t{{with .spec.volumeName}}{{.}}{{end}}\t",
    "{{index .spec.resources.requests \"storage\"}}\t{{range .spec.accessModes}}{{.}},{{end}}\n{{end}}"
);

/// Parses the output of [`CLAIMS_TEMPLATE`].
pub fn parse_claims(text: &str) -> Result<Vec<Claim>, String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 8 {
                return Err(format!("unexpected claim line {line:?}"));
            }
            Ok(Claim {
                namespace: f[0].into(),
                name: f[1].into(),
                uid: f[2].into(),
                class: f[3].into(),
                phase: f[4].into(),
                volume_name: f[5].into(),
                request: f[6].into(),
                access_modes: f[7].split(',').filter(|m| !m.is_empty()).map(String::from).collect(),
            })
        })
        .collect()
}

/// `key\tvalue` lines (go-template over a map) into a map; a value with a tab or newline is refused.
pub fn parse_map(text: &str) -> Result<BTreeMap<String, String>, String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| match line.split_once('\t') {
            Some((k, v)) if !v.contains('\t') => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("unexpected map line (values must not contain tabs or newlines): {line:?}")),
        })
        .collect()
}

/// A Kubernetes quantity (`1Gi`, `500M`, `1073741824`) in bytes, rounded up.
pub fn parse_quantity(q: &str) -> Result<i64, String> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("quantity {q:?}: unsupported suffix {suffix:?}")),
    };
    let n: f64 = num.parse().map_err(|_| format!("quantity {q:?}: not a number"))?;
    let bytes = (n * mult).ceil();
    if !(0.0..9.0e18).contains(&bytes) {
        return Err(format!("quantity {q:?} out of range"));
    }
    Ok(bytes as i64)
}

/// Kubernetes access modes to the CSI access mode of the capability.
pub fn access_mode(modes: &[String]) -> Result<Mode, String> {
    if modes.iter().any(|m| m == "ReadWriteMany") {
        Ok(Mode::MultiNodeMultiWriter)
    } else if modes.iter().any(|m| m == "ReadOnlyMany") {
        Ok(Mode::MultiNodeReaderOnly)
    } else if modes.iter().any(|m| m == "ReadWriteOnce") {
        Ok(Mode::SingleNodeWriter)
    } else {
        Err(format!("no supported access mode in {modes:?}"))
    }
}

/// external-provisioner's secret-reference templates.
pub fn resolve_template(template: &str, claim: &Claim, pv_name: &str) -> String {
    template
        .replace("${pvc.namespace}", &claim.namespace)
        .replace("${pvc.name}", &claim.name)
        .replace("${pv.name}", pv_name)
}

/// A Secret reference from the class parameters (`<prefix><kind>-secret-name|namespace`).
pub fn secret_ref(params: &BTreeMap<String, String>, kind: &str, claim: &Claim, pv: &str) -> Option<(String, String)> {
    let name = params.get(&format!("{PREFIX}{kind}-secret-name"))?;
    let namespace = params.get(&format!("{PREFIX}{kind}-secret-namespace")).map(String::as_str).unwrap_or("default");
    Some((resolve_template(name, claim, pv), resolve_template(namespace, claim, pv)))
}

/// The CreateVolume parameters: the class's own keys without the reserved prefix, plus the
/// `--extra-create-metadata` keys.
pub fn create_parameters(class_params: &BTreeMap<String, String>, claim: &Claim, pv: &str) -> BTreeMap<String, String> {
    let mut params: BTreeMap<String, String> =
        class_params.iter().filter(|(k, _)| !k.starts_with(PREFIX)).map(|(k, v)| (k.clone(), v.clone())).collect();
    params.insert(format!("{PREFIX}pvc/name"), claim.name.clone());
    params.insert(format!("{PREFIX}pvc/namespace"), claim.namespace.clone());
    params.insert(format!("{PREFIX}pv/name"), pv.to_string());
    params
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_map(m: &BTreeMap<String, String>) -> String {
    let fields: Vec<String> = m.iter().map(|(k, v)| format!("{}:{}", json_str(k), json_str(v))).collect();
    format!("{{{}}}", fields.join(","))
}

fn json_list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| json_str(s)).collect();
    format!("[{}]", items.join(","))
}

/// What goes into the PV besides the claim.
pub struct ProvisionedVolume {
    pub volume_id: String,
    pub capacity_bytes: i64,
    pub volume_context: BTreeMap<String, String>,
}

/// The PV object (JSON), pre-bound to `claim` like external-provisioner's.
#[allow(clippy::too_many_arguments)]
pub fn pv_json(
    driver: &str,
    pv: &str,
    claim: &Claim,
    reclaim: &str,
    mount_options: &[String],
    volume: &ProvisionedVolume,
    provisioner_secret: Option<&(String, String)>,
    node_stage_secret: Option<&(String, String)>,
) -> String {
    let mut annotations = BTreeMap::new();
    annotations.insert(PROVISIONED_BY.to_string(), driver.to_string());
    if let Some((name, namespace)) = provisioner_secret {
        annotations.insert(DELETION_SECRET_NAME.to_string(), name.clone());
        annotations.insert(DELETION_SECRET_NAMESPACE.to_string(), namespace.clone());
    }
    let stage = node_stage_secret
        .map(|(n, ns)| format!(",\"nodeStageSecretRef\":{{\"name\":{},\"namespace\":{}}}", json_str(n), json_str(ns)))
        .unwrap_or_default();
    format!(
        concat!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"PersistentVolume\",",
            "\"metadata\":{{\"name\":{pv},\"annotations\":{ann}}},",
            "\"spec\":{{\"capacity\":{{\"storage\":{cap}}},\"accessModes\":{modes},",
            "\"persistentVolumeReclaimPolicy\":{reclaim},\"storageClassName\":{class},\"mountOptions\":{opts},",
            "\"claimRef\":{{\"apiVersion\":\"v1\",\"kind\":\"PersistentVolumeClaim\",\"namespace\":{ns},",
            "\"name\":{name},\"uid\":{uid}}},",
            "\"csi\":{{\"driver\":{driver},\"volumeHandle\":{handle},\"volumeAttributes\":{ctx}{stage}}}}}}}"
        ),
        pv = json_str(pv),
        ann = json_map(&annotations),
        cap = json_str(&volume.capacity_bytes.to_string()),
        modes = json_list(&claim.access_modes),
        reclaim = json_str(reclaim),
        class = json_str(&claim.class),
        opts = json_list(mount_options),
        ns = json_str(&claim.namespace),
        name = json_str(&claim.name),
        uid = json_str(&claim.uid),
        driver = json_str(driver),
        handle = json_str(&volume.volume_id),
        ctx = json_map(&volume.volume_context),
        stage = stage,
    )
}

async fn controller(config: &Config) -> Result<ControllerClient<tonic::transport::Channel>, String> {
    let uri = format!("unix://{}", config.controller_socket.display());
    let channel = tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connecting to the controller at {}: {e}", config.controller_socket.display()))?;
    Ok(ControllerClient::new(channel))
}

fn read_secret(config: &Config, (name, namespace): &(String, String)) -> Result<BTreeMap<String, String>, String> {
    let template = "{{range $k, $v := .data}}{{$k}}\t{{$v | base64decode}}\n{{end}}";
    let text =
        config.kubectl(&["get", "secret", "-n", namespace, name, "-o", &format!("go-template={template}")], None)?;
    parse_map(&text).map_err(|e| format!("secret {namespace}/{name}: {e}"))
}

/// One pass over claims and volumes.
pub async fn reconcile_once(config: &Config) -> Result<(), String> {
    let classes = config.kubectl(
        &["get", "storageclass", "-o", "go-template={{range .items}}{{.metadata.name}}\t{{.provisioner}}\n{{end}}"],
        None,
    )?;
    let ours: Vec<String> =
        parse_map(&classes)?.into_iter().filter(|(_, p)| *p == config.driver).map(|(name, _)| name).collect();
    let claims =
        parse_claims(&config.kubectl(&["get", "pvc", "-A", "-o", &format!("go-template={CLAIMS_TEMPLATE}")], None)?)?;
    for claim in claims.iter().filter(|c| c.phase == "Pending" && c.volume_name.is_empty() && ours.contains(&c.class)) {
        let pv = format!("pvc-{}", claim.uid);
        if config.kubectl(&["get", "pv", &pv, "-o", "name"], None).is_ok() {
            continue; // created in an earlier pass; the PV controller binds it
        }
        match provision(config, claim, &pv).await {
            Ok(()) => eprintln!("provisioner: {}/{} -> {pv}", claim.namespace, claim.name),
            Err(e) => {
                eprintln!("provisioner: {}/{}: {e}", claim.namespace, claim.name);
                let _ = config.kubectl(
                    &[
                        "annotate",
                        "--overwrite",
                        "pvc",
                        "-n",
                        &claim.namespace,
                        &claim.name,
                        &format!("e2e.smb3-csi/provisioning-error={e}"),
                    ],
                    None,
                );
            }
        }
    }
    let template = concat!(
        "{{range .items}}{{if .spec.csi}}{{.metadata.name}}\t{{.status.phase}}\t{{.spec.persistentVolumeReclaimPolicy}}\t",
        "{{.spec.csi.driver}}\t{{.spec.csi.volumeHandle}}\t",
        "{{index .metadata.annotations \"volume.kubernetes.io/provisioner-deletion-secret-name\"}}\t",
        "{{index .metadata.annotations \"volume.kubernetes.io/provisioner-deletion-secret-namespace\"}}\t",
        "{{index .metadata.annotations \"pv.kubernetes.io/provisioned-by\"}}\n{{end}}{{end}}"
    );
    let pvs = config.kubectl(&["get", "pv", "-o", &format!("go-template={template}")], None)?;
    for line in pvs.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 8 || f[1] != "Released" || f[2] != "Delete" || f[3] != config.driver || f[7] != config.driver {
            continue;
        }
        let secrets = if f[5].is_empty() || f[5] == "<no value>" {
            BTreeMap::new()
        } else {
            read_secret(config, &(f[5].to_string(), f[6].to_string()))?
        };
        let request = DeleteVolumeRequest { volume_id: f[4].to_string(), secrets: secrets.into_iter().collect() };
        match controller(config).await?.delete_volume(request).await {
            Ok(_) => {
                config.kubectl(&["delete", "pv", f[0], "--wait=false"], None)?;
                eprintln!("provisioner: deleted {} ({})", f[0], f[4]);
            }
            Err(s) => eprintln!("provisioner: DeleteVolume {}: {}: {}", f[4], s.code(), s.message()),
        }
    }
    Ok(())
}

async fn provision(config: &Config, claim: &Claim, pv: &str) -> Result<(), String> {
    let class = &claim.class;
    let params = parse_map(&config.kubectl(
        &["get", "storageclass", class, "-o", "go-template={{range $k, $v := .parameters}}{{$k}}\t{{$v}}\n{{end}}"],
        None,
    )?)?;
    let reclaim = config.kubectl(&["get", "storageclass", class, "-o", "go-template={{.reclaimPolicy}}"], None)?;
    let mount_options: Vec<String> = config
        .kubectl(&["get", "storageclass", class, "-o", "go-template={{range .mountOptions}}{{.}}\n{{end}}"], None)?
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    let provisioner_secret = secret_ref(&params, "provisioner", claim, pv);
    let node_stage_secret = secret_ref(&params, "node-stage", claim, pv);
    let secrets = match &provisioner_secret {
        Some(r) => read_secret(config, r)?,
        None => BTreeMap::new(),
    };
    let capability = VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: String::new(),
            mount_flags: mount_options.clone(),
            volume_mount_group: String::new(),
        })),
        access_mode: Some(AccessMode { mode: access_mode(&claim.access_modes)? as i32 }),
    };
    let request = CreateVolumeRequest {
        name: pv.to_string(),
        capacity_range: Some(CapacityRange { required_bytes: parse_quantity(&claim.request)?, limit_bytes: 0 }),
        volume_capabilities: vec![capability],
        parameters: create_parameters(&params, claim, pv).into_iter().collect(),
        secrets: secrets.into_iter().collect(),
        ..Default::default()
    };
    let created = controller(config)
        .await?
        .create_volume(request)
        .await
        .map_err(|s| format!("CreateVolume: {}: {}", s.code(), s.message()))?
        .into_inner()
        .volume
        .ok_or("CreateVolume returned no volume")?;
    let volume = ProvisionedVolume {
        volume_id: created.volume_id,
        capacity_bytes: created.capacity_bytes.max(parse_quantity(&claim.request)?),
        volume_context: created.volume_context.into_iter().collect(),
    };
    let reclaim = if reclaim.trim().is_empty() { "Delete" } else { reclaim.trim() };
    let body = pv_json(
        &config.driver,
        pv,
        claim,
        reclaim,
        &mount_options,
        &volume,
        provisioner_secret.as_ref(),
        node_stage_secret.as_ref(),
    );
    config.kubectl(&["create", "-f", "-"], Some(&body)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> Claim {
        Claim {
            namespace: "team-a".into(),
            name: "data".into(),
            uid: "1234-abcd".into(),
            class: "smb3".into(),
            phase: "Pending".into(),
            volume_name: String::new(),
            request: "1Gi".into(),
            access_modes: vec!["ReadWriteMany".into()],
        }
    }

    #[test]
    fn claims_parse_from_the_template_output() {
        let text = "team-a\tdata\t1234-abcd\tsmb3\tPending\t\t1Gi\tReadWriteMany,\n\
                    default\tother\tff\t\tBound\tpv-1\t10Mi\tReadWriteOnce,ReadOnlyMany,\n";
        let claims = parse_claims(text).unwrap();
        assert_eq!(claims[0], claim());
        assert_eq!(claims[1].class, "");
        assert_eq!(claims[1].access_modes, vec!["ReadWriteOnce", "ReadOnlyMany"]);
        assert!(parse_claims("short\tline\n").unwrap_err().contains("unexpected claim line"));
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_quantity("100Mi").unwrap(), 100 << 20);
        assert_eq!(parse_quantity("5G").unwrap(), 5_000_000_000);
        assert_eq!(parse_quantity("1.5Ki").unwrap(), 1536);
        assert_eq!(parse_quantity("4096").unwrap(), 4096);
        assert!(parse_quantity("1Xi").is_err());
        assert!(parse_quantity("Gi").is_err());
        assert!(parse_quantity("99999999999Ti").is_err());
    }

    #[test]
    fn access_modes_map_to_csi() {
        assert_eq!(access_mode(&["ReadWriteOnce".into()]).unwrap(), Mode::SingleNodeWriter);
        assert_eq!(access_mode(&["ReadWriteOnce".into(), "ReadWriteMany".into()]).unwrap(), Mode::MultiNodeMultiWriter);
        assert_eq!(access_mode(&["ReadOnlyMany".into()]).unwrap(), Mode::MultiNodeReaderOnly);
        assert!(access_mode(&[]).is_err());
    }

    #[test]
    fn parameters_drop_reserved_keys_and_gain_extra_metadata() {
        let mut class = BTreeMap::new();
        class.insert("source".to_string(), "//127.0.0.1:4450/share".to_string());
        class.insert("onDelete".to_string(), "archive".to_string());
        class.insert(format!("{PREFIX}provisioner-secret-name"), "creds-${pvc.namespace}".to_string());
        class.insert(format!("{PREFIX}provisioner-secret-namespace"), "${pvc.namespace}".to_string());
        let params = create_parameters(&class, &claim(), "pvc-1234-abcd");
        assert_eq!(params.get("source").unwrap(), "//127.0.0.1:4450/share");
        assert_eq!(params.get("onDelete").unwrap(), "archive");
        assert_eq!(params.get("csi.storage.k8s.io/pvc/name").unwrap(), "data");
        assert_eq!(params.get("csi.storage.k8s.io/pvc/namespace").unwrap(), "team-a");
        assert_eq!(params.get("csi.storage.k8s.io/pv/name").unwrap(), "pvc-1234-abcd");
        assert!(!params.contains_key("csi.storage.k8s.io/provisioner-secret-name"));
        let secret = secret_ref(&class, "provisioner", &claim(), "pvc-1234-abcd").unwrap();
        assert_eq!(secret, ("creds-team-a".to_string(), "team-a".to_string()));
        assert!(secret_ref(&class, "node-stage", &claim(), "pvc-1").is_none());
    }

    #[test]
    fn maps_refuse_ambiguous_lines() {
        let m = parse_map("username\tsmb3test\npassword\tp@ss word\n").unwrap();
        assert_eq!(m.get("password").unwrap(), "p@ss word");
        assert!(parse_map("no-tab-here\n").is_err());
        assert!(parse_map("k\tv\twith tab\n").is_err());
    }

    #[test]
    fn pv_is_prebound_and_escaped() {
        let mut ctx = BTreeMap::new();
        ctx.insert("source".to_string(), "//h/s\"q".to_string());
        let volume = ProvisionedVolume { volume_id: "v1#h#s#pvc".into(), capacity_bytes: 1 << 30, volume_context: ctx };
        let stage = ("smb-creds".to_string(), "kube-system".to_string());
        let json = pv_json(
            "smb3.csi.dev",
            "pvc-1234-abcd",
            &claim(),
            "Delete",
            &["dir_mode=0777".into()],
            &volume,
            Some(&stage),
            Some(&stage),
        );
        assert!(json.contains(r#""claimRef":{"apiVersion":"v1","kind":"PersistentVolumeClaim","namespace":"team-a","name":"data","uid":"1234-abcd"}"#), "{json}");
        assert!(json.contains(r#""source":"//h/s\"q""#), "{json}");
        assert!(json.contains(r#""nodeStageSecretRef":{"name":"smb-creds","namespace":"kube-system"}"#), "{json}");
        assert!(json.contains(r#""volume.kubernetes.io/provisioner-deletion-secret-name":"smb-creds""#), "{json}");
        assert!(json.contains(r#""storage":"1073741824""#), "{json}");
        assert_eq!(json_str("a\nb\\"), r#""a\u000ab\\""#);
    }
}
